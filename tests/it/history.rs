//! History: the same suite on a real SQLite file and on the machine's real PostgreSQL (a
//! throwaway database per test, dropped at the end). A scripted target fails a known stretch
//! of requests; every result the agent produced is read off its bus, and the history API must
//! give exactly the uptime, run counts and incident those results imply. Also: history
//! survives a restart of the real binary, and a database that cannot be written never stops
//! probing or /metrics, and counts what it drops.

use crate::common::process::{scratch_dir, Bastion};
use crate::common::{config, http_get, metric, serve};
use bastion_agent::agent::Agent;
use bastion_agent::messages::CheckResult;
use serde_json::Value;
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const PATIENCE: Duration = Duration::from_secs(60);

/// Where a test keeps its history.
pub enum Backend {
    Sqlite(PathBuf),
    /// `state` is the test's own directory for `episodes.json` (beside `history.path`).
    Postgres {
        url: String,
        name: String,
        state: PathBuf,
    },
}

impl Backend {
    pub fn sqlite() -> Backend {
        Backend::Sqlite(scratch_dir("history").join("history.db"))
    }

    /// A fresh database on the machine's PostgreSQL (127.0.0.1:5432, trust auth).
    pub async fn postgres() -> Backend {
        let name = format!(
            "bastion_test_{}_{}",
            std::process::id(),
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .subsec_nanos()
        );
        let admin = admin().await;
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&admin)
            .await
            .expect("PostgreSQL on 127.0.0.1:5432 (user postgres, trust auth) creates a database");
        admin.close().await;
        Backend::Postgres {
            url: format!("postgres://postgres@127.0.0.1:5432/{name}"),
            name,
            state: scratch_dir("history-pg"),
        }
    }

    pub fn toml(&self) -> String {
        match self {
            Backend::Sqlite(path) => format!("[history]\npath = \"{}\"\n", path.display()),
            Backend::Postgres { url, state, .. } => format!(
                "[history]\nurl = \"{url}\"\npath = \"{}\"\n",
                state.join("history.db").display()
            ),
        }
    }

    /// The agent's saved state (`episodes.json`, beside `history.path`).
    pub fn episodes_file(&self) -> PathBuf {
        match self {
            Backend::Sqlite(path) => path.with_file_name("episodes.json"),
            Backend::Postgres { state, .. } => state.join("episodes.json"),
        }
    }

    pub async fn drop_database(&self) {
        if let Backend::Postgres { name, .. } = self {
            let admin = admin().await;
            let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .execute(&admin)
                .await;
            admin.close().await;
        }
    }
}

/// A throwaway PostgreSQL database for tests that run the binary without an async runtime
/// of their own; dropped with it.
pub struct TestDatabase(Backend);

impl TestDatabase {
    pub fn create() -> TestDatabase {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        TestDatabase(runtime.block_on(Backend::postgres()))
    }

    pub fn url(&self) -> String {
        match &self.0 {
            Backend::Postgres { url, .. } => url.clone(),
            Backend::Sqlite(_) => unreachable!("a PostgreSQL backend"),
        }
    }
}

/// A test that panics still drops its database.
impl Drop for Backend {
    fn drop(&mut self) {
        if let Backend::Postgres { name, .. } = self {
            let name = name.clone();
            let _ = std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                runtime.block_on(async {
                    if let Ok(admin) = sqlx::postgres::PgPoolOptions::new()
                        .max_connections(1)
                        .connect("postgres://postgres@127.0.0.1:5432/postgres")
                        .await
                    {
                        let _ =
                            sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                                .execute(&admin)
                                .await;
                        admin.close().await;
                    }
                });
            })
            .join();
        }
    }
}

async fn admin() -> sqlx::PgPool {
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect("postgres://postgres@127.0.0.1:5432/postgres")
        .await
        .expect("PostgreSQL answers on 127.0.0.1:5432 as user postgres")
}

/// An HTTP target that answers 503 to the requests whose number (from 1) is in `failing`,
/// 200 to the others.
pub async fn scripted_target(failing: RangeInclusive<usize>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    serve(listener, move |mut request| {
        let number = count.fetch_add(1, Ordering::SeqCst) + 1;
        let failing = failing.contains(&number);
        async move {
            let status = if failing {
                "503 Service Unavailable"
            } else {
                "200 OK"
            };
            crate::common::respond(&mut request.stream, status, &[], "scripted").await;
        }
    });
    address
}

/// A running in-process agent and every result it produced, as its bus carried them.
pub struct Running {
    pub api: SocketAddr,
    pub results: Arc<Mutex<Vec<Arc<CheckResult>>>>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), bastion_agent::agent::AgentError>>,
}

impl Running {
    pub async fn start(toml: &str) -> Running {
        let config = config(&format!(
            "[agent]\nid = \"history-test\"\nlisten = \"127.0.0.1:0\"\n{toml}"
        ));
        let agent = Agent::build(config).await.expect("agent builds");
        let api = agent.local_addr().unwrap();
        let mut subscription = agent
            .bus()
            .subscribe("bastion.results.>", None)
            .await
            .unwrap();
        // In effect before the test publishes anything (the agent's own are, once built).
        assert!(agent.bus().settle().await, "the subscription is in effect");
        let results = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&results);
        tokio::spawn(async move {
            while let Some(message) = subscription.next().await {
                if let Ok(result) = message.payload.result() {
                    seen.lock().unwrap().push(result);
                }
            }
        });
        let stop = CancellationToken::new();
        let task = tokio::spawn(agent.run(stop.clone()));
        Running {
            api,
            results,
            stop,
            task,
        }
    }

    pub fn results_of(&self, check: &str) -> Vec<Arc<CheckResult>> {
        let mut all: Vec<_> = self
            .results
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.check == check)
            .cloned()
            .collect();
        all.sort_by_key(|r| r.scheduled_at);
        all
    }

    pub async fn wait_results(&self, check: &str, count: usize) -> Vec<Arc<CheckResult>> {
        let started = tokio::time::Instant::now();
        loop {
            let results = self.results_of(check);
            if results.len() >= count {
                return results;
            }
            assert!(
                started.elapsed() < PATIENCE,
                "{} results of {check} in time",
                results.len()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        let (status, body) = http_get(self.api, path).await;
        (status, serde_json::from_str(&body).unwrap_or(Value::Null))
    }

    pub async fn stop(self) {
        self.stop.cancel();
        let _ = tokio::time::timeout(PATIENCE, self.task).await;
    }
}

fn rfc3339(at: SystemTime) -> String {
    humantime::format_rfc3339_millis(at).to_string()
}

/// Milliseconds, as history stores times.
fn ms(at: SystemTime) -> u128 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis()
}

fn api_ms(value: &Value) -> u128 {
    ms(humantime::parse_rfc3339_weak(value.as_str().expect("a timestamp")).unwrap())
}

/// Polls `path` until `done` accepts the answer.
pub async fn poll(running: &Running, path: &str, mut done: impl FnMut(&Value) -> bool) -> Value {
    let started = tokio::time::Instant::now();
    loop {
        let (status, body) = running.get_json(path).await;
        if status == 200 && done(&body) {
            return body;
        }
        if started.elapsed() >= PATIENCE {
            // What the agent's bus carried and what history did with it, to tell a lost
            // result from one history never wrote; read in a task of its own, so an agent
            // that no longer answers cannot hide the message above.
            let api = running.api;
            let metrics = tokio::time::timeout(
                Duration::from_secs(10),
                tokio::spawn(async move { http_get(api, "/metrics?checks=none").await.1 }),
            )
            .await;
            let counters: Vec<String> = match metrics {
                Ok(Ok(text)) => text
                    .lines()
                    .filter(|line| {
                        line.starts_with("bastion_history") || line.starts_with("bastion_bus")
                    })
                    .map(str::to_string)
                    .collect(),
                _ => vec!["(no answer from /metrics)".to_string()],
            };
            panic!(
                "{path} never gave the expected answer; last: {status} {body}\n\
                 results of any check the agent's bus carried: {}\n{}",
                running.results.lock().unwrap().len(),
                counters.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

const FLAKY: &str = r#"
[[checks]]
name = "flaky"
group = "edge"
type = "http"
url = "http://TARGET/"
interval = "1s"
timeout = "900ms"
min_failing_time = "2s"
"#;

/// Requests 4 to 8 fail; the check goes FAIL_WAIT, FAIL, PASS_WAIT and OK again.
async fn scripted_failures_give_exact_uptime_and_incident(backend: Backend) {
    let target = scripted_target(4..=8).await;
    let toml = format!(
        "{}{}",
        backend.toml(),
        FLAKY.replace("TARGET", &target.to_string())
    );
    let running = Running::start(&toml).await;
    let results = running.wait_results("flaky", 13).await;
    // The whole episode is in: the last failing run, and enough passing ones after it.
    let first_failing = results
        .iter()
        .position(|r| !r.passing)
        .expect("a failing run");
    let recovered = results[first_failing..]
        .iter()
        .position(|r| r.passing)
        .map(|at| at + first_failing)
        .expect("a passing run after the failures");
    assert_eq!(
        results.iter().filter(|r| !r.passing).count(),
        5,
        "the target fails exactly requests 4..=8"
    );
    let cutoff = results[12].scheduled_at + Duration::from_millis(1);
    let counted: Vec<_> = results.iter().filter(|r| r.scheduled_at < cutoff).collect();
    let down = counted.iter().filter(|r| !r.passing).count() as u64;
    let runs = counted.len() as u64;
    let from = results[0].scheduled_at - Duration::from_secs(1);

    // Raw runs: one step covering them all, per check and per instance.
    let path = format!(
        "/api/v1/checks/flaky/history?from={}&to={}&step=30m&by=instance",
        rfc3339(from),
        rfc3339(cutoff)
    );
    let series = poll(&running, &path, |body| body["points"][0]["runs"] == runs).await;
    assert_eq!(series["source"], "runs");
    let point = &series["points"][0];
    assert_eq!(point["down"], down);
    assert_eq!(point["unmeasured"], 0);
    let uptime = (runs - down) as f64 / runs as f64;
    assert_eq!(point["uptime"].as_f64(), Some(uptime));
    for phase in ["connect", "processing", "total"] {
        let figures = &point["latency"][phase];
        assert_eq!(figures["samples"], runs - down, "{phase}: {point}");
        assert!(figures["p50"].as_f64().unwrap() <= figures["p99"].as_f64().unwrap());
    }
    let instances = series["instances"].as_array().unwrap();
    assert_eq!(instances.len(), 1);
    assert_eq!(instances[0]["instance"], target.to_string());
    assert_eq!(instances[0]["points"][0]["runs"], runs);
    assert_eq!(instances[0]["points"][0]["down"], down);

    // The incident: from the first failing run to the first passing one after.
    let incidents = poll(&running, "/api/v1/incidents?check=flaky&from=1h", |body| {
        body.as_array()
            .is_some_and(|all| all.len() == 1 && all[0]["open"] == false)
    })
    .await;
    let incident = &incidents[0];
    let started = results[first_failing].finished_at;
    let ended = results[recovered].finished_at;
    assert_eq!(api_ms(&incident["started_at"]), ms(started));
    assert_eq!(api_ms(&incident["ended_at"]), ms(ended));
    assert_eq!(
        incident["duration_seconds"].as_f64(),
        Some((ms(ended) - ms(started)) as f64 / 1000.0)
    );
    assert_eq!(incident["cause"][0]["instance"], target.to_string());
    let kind = results[first_failing].responses[0]
        .error_kind()
        .map(|kind| kind.as_str());
    assert_eq!(incident["cause"][0]["error_kind"].as_str(), kind);

    // Hourly rollups hold the same counts (every run so far is in today's hours).
    let whole = poll(&running, "/api/v1/checks/flaky", |body| {
        !body["uptime"]["24h"].is_null()
    })
    .await;
    assert_eq!(whole["group"], "edge");
    let total: Vec<_> = running.results_of("flaky");
    let hourly = poll(
        &running,
        "/api/v1/checks/flaky/history?from=3h&step=1h",
        |body| {
            body["points"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["runs"].as_u64().unwrap())
                .sum::<u64>()
                >= total.len() as u64
        },
    )
    .await;
    assert_eq!(hourly["source"], "hourly");
    let hourly_down: u64 = hourly["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["down"].as_u64().unwrap())
        .sum();
    assert_eq!(hourly_down, 5);

    // Filters on the list.
    let (_, failing) = running.get_json("/api/v1/checks?state=FAIL").await;
    assert_eq!(failing, serde_json::json!([]));
    let (_, by_type) = running
        .get_json("/api/v1/checks?type=http&state=OK,WARN")
        .await;
    assert_eq!(by_type[0]["name"], "flaky");
    let (status, _) = running.get_json("/api/v1/checks?state=BROKEN").await;
    assert_eq!(status, 400);
    let (status, _) = running.get_json("/api/v1/checks/nope").await;
    assert_eq!(status, 404);
    // Hostile steps are refused before anything is allocated for them: a step whose
    // milliseconds overflow, one longer than any retention, and too many points.
    for path in [
        "/api/v1/checks/flaky/history?from=1970-01-01T00:00:00Z&step=8559289250201232000s",
        "/api/v1/checks/flaky/history?from=1970-01-01T00:00:00Z&to=9999-12-31T00:00:00Z&step=18446744073709551615s",
        "/api/v1/checks/flaky/history?from=1970-01-01T00:00:00Z&to=9999-12-31T00:00:00Z&step=1d",
    ] {
        let (status, body) = running.get_json(path).await;
        assert_eq!(status, 400, "{path}: {body}");
    }
    let (status, _) = running.get_json("/api/v1/checks/flaky").await;
    assert_eq!(status, 200, "the agent still answers");
    running.stop().await;
    backend.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_scripted_failures_give_exact_uptime_and_incident() {
    scripted_failures_give_exact_uptime_and_incident(Backend::sqlite()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_scripted_failures_give_exact_uptime_and_incident() {
    scripted_failures_give_exact_uptime_and_incident(Backend::postgres().await).await;
}

/// Every run and the incident survive a restart of the agent on the same database.
async fn history_survives_a_restart_of_the_binary(backend: Backend) {
    let target = scripted_target(2..=4).await;
    let port = free_port();
    let toml = format!(
        "[agent]\nlisten = \"127.0.0.1:{port}\"\n{}{}",
        backend.toml(),
        FLAKY
            .replace("TARGET", &target.to_string())
            .replace("min_failing_time = \"2s\"", "min_failing_time = \"0s\"")
    );
    let mut first = Bastion::start("history-restart", port, &toml, &["run"]);
    first.wait_ready();
    let path = "/api/v1/checks/flaky/history?from=50m&to=now&step=55m";
    let runs_of = |body: &Value| body["points"][0]["runs"].as_u64().unwrap_or(0);
    let before = wait_blocking(port, path, |body| runs_of(body) >= 7);
    let incidents = wait_blocking(port, "/api/v1/incidents?check=flaky", |body| {
        body.as_array()
            .is_some_and(|all| all.len() == 1 && all[0]["open"] == false)
    });
    assert_eq!(
        first.terminate().map(|status| status.success()),
        Some(true),
        "{}",
        first.log()
    );
    let mut second = Bastion::start("history-restart", port, &toml, &["run"]);
    second.wait_ready();
    // Right after the restart, the runs recorded before it are all there, and the incident.
    let after = wait_blocking(port, path, |body| runs_of(body) >= runs_of(&before));
    assert!(runs_of(&after) >= runs_of(&before));
    assert_eq!(after["points"][0]["down"], 3);
    let (_, again) =
        crate::common::process::http_get_blocking(port, "/api/v1/incidents?check=flaky").unwrap();
    let again: Value = serde_json::from_str(&again).unwrap();
    assert_eq!(again[0]["started_at"], incidents[0]["started_at"]);
    assert_eq!(again[0]["ended_at"], incidents[0]["ended_at"]);
    second.terminate();
    backend.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_history_survives_a_restart_of_the_binary() {
    history_survives_a_restart_of_the_binary(Backend::sqlite()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_history_survives_a_restart_of_the_binary() {
    history_survives_a_restart_of_the_binary(Backend::postgres().await).await;
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_blocking(port: u16, path: &str, mut done: impl FnMut(&Value) -> bool) -> Value {
    let started = std::time::Instant::now();
    loop {
        if let Some((200, body)) = crate::common::process::http_get_blocking(port, path) {
            let body: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
            if done(&body) {
                return body;
            }
        }
        assert!(
            started.elapsed() < PATIENCE,
            "{path} never gave the expected answer"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The database's directory does not exist: probing and /metrics go on, history is
/// unavailable (503), losses past the small buffer are counted; once the directory appears,
/// the buffered runs are written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unwritable_database_never_stops_probing_and_counts_what_it_drops() {
    let dir = scratch_dir("history-missing").join("not-yet");
    let target = scripted_target(0..=0).await;
    let toml = format!(
        "[history]\npath = \"{}\"\nbuffer = 3\n{}",
        dir.join("history.db").display(),
        FLAKY.replace("TARGET", &target.to_string())
    );
    let running = Running::start(&toml).await;
    running.wait_results("flaky", 8).await;
    let (status, text) = http_get(running.api, "/metrics").await;
    assert_eq!(status, 200);
    let dropped = metric(
        &text,
        "bastion_history_dropped_total{reason=\"buffer_full\"}",
    )
    .unwrap();
    assert!(dropped >= 1.0, "{text}");
    assert!(metric(&text, "bastion_history_write_errors_total").unwrap() >= 1.0);
    let (status, body) = running
        .get_json("/api/v1/checks/flaky/history?from=50m&step=55m")
        .await;
    assert_eq!(status, 503, "{body}");
    // Probing went on all along.
    let (_, check) = running.get_json("/api/v1/checks/flaky").await;
    assert_eq!(check["latest"]["passing"], true);

    std::fs::create_dir_all(&dir).unwrap();
    let created = SystemTime::now();
    let series = poll(
        &running,
        "/api/v1/checks/flaky/history?from=50m&step=55m",
        |body| body["points"][0]["runs"].as_u64().unwrap_or(0) >= 4,
    )
    .await;
    // The buffered runs from before the directory existed were written, not lost.
    let (_, text) = http_get(running.api, "/metrics").await;
    assert!(metric(&text, "bastion_history_written_total").unwrap() >= 3.0);
    let earliest = running.results_of("flaky")[0].scheduled_at;
    assert!(earliest < created);
    let path = format!(
        "/api/v1/checks/flaky/history?from={}&to={}&step=30m",
        rfc3339(earliest - Duration::from_secs(1)),
        rfc3339(created)
    );
    let (_, before) = running.get_json(&path).await;
    assert!(
        before["points"][0]["runs"].as_u64().unwrap() >= 1,
        "{before} / {series}"
    );
    running.stop().await;
}

/// An incident still open when the agent stops is closed at the next start, at the check's
/// last recorded run, and marked interrupted; the check, still failing, opens a new one.
async fn an_incident_open_at_shutdown_goes_on_after_a_restart(backend: Backend) {
    let target = scripted_target(1..=100_000).await;
    let toml = format!(
        "{}{}",
        backend.toml(),
        FLAKY
            .replace("TARGET", &target.to_string())
            .replace("min_failing_time = \"2s\"", "min_failing_time = \"0s\"")
    );
    let first = Running::start(&toml).await;
    let before = poll(&first, "/api/v1/incidents?check=flaky", |body| {
        body.as_array()
            .is_some_and(|all| all.len() == 1 && all[0]["open"] == true)
    })
    .await;
    first.wait_results("flaky", 3).await;
    let seen = Arc::clone(&first.results);
    first.stop().await;
    let mut runs: Vec<SystemTime> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|r| r.scheduled_at)
        .collect();
    runs.sort();

    // Still failing after the restart: the same incident goes on, no second one.
    let second = Running::start(&toml).await;
    second.wait_results("flaky", 3).await;
    let (_, during) = second.get_json("/api/v1/incidents?check=flaky").await;
    assert_eq!(during.as_array().map(Vec::len), Some(1), "{during}");
    assert_eq!(during[0]["open"], true);
    assert_eq!(during[0]["id"], before[0]["id"], "{during}");
    assert_eq!(during[0]["started_at"], before[0]["started_at"]);
    let (_, check) = second.get_json("/api/v1/checks/flaky").await;
    assert_eq!(check["state"], "FAIL", "the state resumed too: {check}");
    second.stop().await;

    // Without the saved state (deleted, or a disk replaced), nobody follows the old incident
    // any more: the next start closes it as interrupted at its last run, and the failing
    // check opens a new one.
    std::fs::remove_file(backend.episodes_file()).expect("the agent saved its episodes");
    let third = Running::start(&toml).await;
    let incidents = poll(&third, "/api/v1/incidents?check=flaky", |body| {
        body.as_array().is_some_and(|all| all.len() == 2)
    })
    .await;
    // Newest first: the new one is open, the old one was closed by the restart.
    assert_eq!(incidents[0]["open"], true);
    assert_eq!(incidents[1]["open"], false);
    assert_eq!(incidents[1]["interrupted"], true);
    assert_eq!(incidents[1]["end_reason"], "interrupted");
    let ended = api_ms(&incidents[1]["ended_at"]);
    assert!(ended >= ms(runs[0]), "{incidents}");
    third.stop().await;
    backend.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_an_incident_open_at_shutdown_goes_on_after_a_restart() {
    an_incident_open_at_shutdown_goes_on_after_a_restart(Backend::sqlite()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_an_incident_open_at_shutdown_goes_on_after_a_restart() {
    an_incident_open_at_shutdown_goes_on_after_a_restart(Backend::postgres().await).await;
}

/// A reload that removes (or changes) a failing check closes its open incident, marked
/// interrupted, at the reload: nothing would ever record its recovery.
async fn a_reload_that_removes_a_failing_check_closes_its_incident(backend: Backend) {
    let target = scripted_target(1..=100_000).await;
    let listen = free_port();
    let base = format!(
        "[agent]\nlisten = \"127.0.0.1:{listen}\"\n{}",
        backend.toml()
    );
    let flaky = FLAKY
        .replace("TARGET", &target.to_string())
        .replace("min_failing_time = \"2s\"", "min_failing_time = \"0s\"");
    let steady =
        "[[checks]]\nname = \"steady\"\ntype = \"tcp\"\naddress = \"TARGET\"\ninterval = \"1s\"\n"
            .replace("TARGET", &target.to_string());
    let mut agent = crate::common::process::Bastion::start(
        "history-reload",
        listen,
        &format!("{base}{flaky}{steady}"),
        &["run"],
    );
    agent.wait_ready();
    let open = tokio::task::spawn_blocking(move || {
        wait_blocking(listen, "/api/v1/incidents?check=flaky", |body| {
            body.as_array()
                .is_some_and(|all| all.len() == 1 && all[0]["open"] == true)
        })
    })
    .await
    .unwrap();
    assert_eq!(open[0]["interrupted"], false, "{open}");

    std::fs::write(agent.config_path(), format!("{base}{steady}")).unwrap();
    let before_reload = SystemTime::now();
    let (status, body) = tokio::task::spawn_blocking(move || {
        crate::common::http_request_blocking(listen, "POST", "/-/reload", &[])
    })
    .await
    .unwrap()
    .expect("the agent answers the reload");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("1 removed"), "{body}");
    let closed = tokio::task::spawn_blocking(move || {
        wait_blocking(listen, "/api/v1/incidents?check=flaky", |body| {
            body.as_array()
                .is_some_and(|all| all.len() == 1 && all[0]["open"] == false)
        })
    })
    .await
    .unwrap();
    assert_eq!(closed[0]["interrupted"], true, "{closed}");
    assert!(
        api_ms(&closed[0]["ended_at"]) + 1_000 >= ms(before_reload),
        "it ends at the reload: {closed}"
    );
    drop(agent);
    backend.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_reload_that_removes_a_failing_check_closes_its_incident() {
    a_reload_that_removes_a_failing_check_closes_its_incident(Backend::sqlite()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_reload_that_removes_a_failing_check_closes_its_incident() {
    a_reload_that_removes_a_failing_check_closes_its_incident(Backend::postgres().await).await;
}

/// HA checkers share one PostgreSQL history and take turns as the lease moves (A, then B,
/// then A again within the same hour): every run each wrote is counted in the rollups, none
/// overwritten by a writer's stale idea of the row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ha_writers_taking_turns_count_every_run_in_the_rollups() {
    use bastion_agent::history::query::{Instances, SeriesQuery};
    use bastion_agent::history::History;
    use bastion_agent::metrics::Metrics;
    let backend = Backend::postgres().await;
    let target = scripted_target(0..=0).await;
    let toml = format!(
        "{}flush_interval = \"100ms\"\n{}",
        backend.toml(),
        FLAKY.replace("TARGET", &target.to_string())
    );
    let config = config(&toml);
    let check = config.checks[0].clone();
    let sample = crate::common::run_single(&config).await;
    assert!(sample.passing, "{sample:?}");
    let metrics = Arc::new(Metrics::new());
    let a = History::open(&config.history, &metrics, false).unwrap();
    let b = History::open(&config.history, &metrics, false).unwrap();
    let reader = a.reader.clone();
    let writers = [tokio::spawn(a.writer.run()), tokio::spawn(b.writer.run())];
    // Whole seconds into the current hour, so that every run lands in one hourly bucket.
    let now = SystemTime::now();
    let hour_start = UNIX_EPOCH
        + Duration::from_secs(now.duration_since(UNIX_EPOCH).unwrap().as_secs() / 3600 * 3600);
    let mut written = 0u64;
    for recorder in [&a.recorder, &b.recorder, &a.recorder] {
        for _ in 0..5 {
            written += 1;
            let mut run = sample.clone();
            run.scheduled_at = hour_start + Duration::from_millis(written * 10);
            recorder.run(&run, &check, 0);
        }
        let started = std::time::Instant::now();
        loop {
            let runs: u64 = reader
                .series(
                    "flaky",
                    &SeriesQuery {
                        from: hour_start,
                        to: hour_start + Duration::from_secs(3600),
                        step: Some(Duration::from_secs(3600)),
                        instances: Instances::None,
                        now: SystemTime::now(),
                    },
                )
                .await
                .map(|series| series.points.iter().map(|p| p.runs).sum())
                .unwrap_or(0);
            if runs == written {
                break;
            }
            assert!(
                started.elapsed() < PATIENCE && runs < written,
                "the hourly rollup counts {runs} runs of the {written} written"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    drop((a.recorder, b.recorder));
    for writer in writers {
        let _ = tokio::time::timeout(PATIENCE, writer).await;
    }
    backend.drop_database().await;
}

/// A connection of the test's own that holds SQLite's write lock until dropped (or
/// `release`d): the agent's writer cannot write meanwhile, as with a database that is down.
pub struct SqliteLock(Option<sqlx::SqliteConnection>);

impl SqliteLock {
    pub async fn take(path: &std::path::Path) -> SqliteLock {
        use sqlx::Connection;
        let mut connection =
            sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display()))
                .await
                .expect("the history file opens");
        sqlx::query("BEGIN EXCLUSIVE")
            .execute(&mut connection)
            .await
            .expect("the write lock");
        SqliteLock(Some(connection))
    }

    pub async fn release(mut self) {
        use sqlx::Connection;
        if let Some(mut connection) = self.0.take() {
            sqlx::query("ROLLBACK")
                .execute(&mut connection)
                .await
                .unwrap();
            connection.close().await.unwrap();
        }
    }
}

/// A database outage long enough to fill every buffer (4 records): runs are lost, and
/// counted, but the state changes and the incident wait in their own lane, so once the
/// database is back the incident opens and closes as the check did. Before, the incident's
/// end was dropped with the runs and it stayed open for ever while the check was OK.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_database_outage_loses_runs_but_every_incident_opens_and_closes() {
    let target =
        crate::common::receiver::Receiver::start(crate::common::receiver::Reply::new(200, "ok"));
    let dir = scratch_dir("history-outage");
    let path = dir.join("history.db");
    let mut toml = format!(
        "[history]\npath = \"{}\"\nbuffer = 4\nflush_interval = \"200ms\"\n{}",
        path.display(),
        FLAKY
            .replace("http://TARGET/", &format!("{}/", target.url()))
            .replace("min_failing_time = \"2s\"", "min_failing_time = \"0s\"")
    );
    // Steady checks whose runs fill every buffer before the failure begins.
    let steady =
        crate::common::receiver::Receiver::start(crate::common::receiver::Reply::new(200, "ok"));
    for n in 0..10 {
        toml.push_str(&format!(
            "[[checks]]\nname = \"steady{n}\"\ntype = \"http\"\nurl = \"{}/\"\ninterval = \"1s\"\n",
            steady.url()
        ));
    }
    let running = Running::start(&toml).await;
    poll(&running, "/api/v1/checks/flaky/history?from=15m", |_| true).await;
    let lock = SqliteLock::take(&path).await;
    let filled = running.results_of("steady0").len();
    running.wait_results("steady0", filled + 3).await;
    let before = running.results_of("flaky").len();
    target.set_default(crate::common::receiver::Reply::new(503, "down"));
    running.wait_results("flaky", before + 3).await;
    target.set_default(crate::common::receiver::Reply::new(200, "ok"));
    // Enough passing runs after the recovery to overflow the runs' lane.
    running.wait_results("flaky", before + 12).await;
    let (_, metrics) = http_get(running.api, "/metrics").await;
    let dropped = metric(
        &metrics,
        "bastion_history_dropped_total{reason=\"buffer_full\"}",
    );
    assert!(
        dropped.is_some_and(|d| d > 0.0),
        "runs were dropped: {metrics}"
    );
    lock.release().await;
    let incidents = poll(&running, "/api/v1/incidents?check=flaky&from=1h", |body| {
        body.as_array()
            .is_some_and(|all| !all.is_empty() && all.iter().all(|i| i["open"] == false))
    })
    .await;
    assert_eq!(incidents.as_array().unwrap().len(), 1, "{incidents}");
    assert_eq!(incidents[0]["end_reason"], "recovered");
    let (_, check) = running.get_json("/api/v1/checks/flaky").await;
    assert_eq!(check["state"], "OK");
    running.stop().await;
}

/// One rule for the state machine and history: instances that never ran for want of a
/// worker (`dispatch_timeout`) measured nothing about the target. A check whose every
/// instance timed out in dispatch stays OK (before: FAIL, an incident, a page, while its
/// uptime read 100 %), its runs are unmeasured; and with `min_failing_count = 2`, one
/// real failure beside a dispatch timeout is a warning, not a failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dispatch_timeouts_count_the_same_for_the_state_and_for_uptime() {
    use bastion_agent::checks::CheckType;
    use bastion_agent::messages::{Payload, Response, Timings};
    use bastion_agent::model::{ErrorKind, ProbeError};
    let dir = scratch_dir("history-dispatch");
    let toml = format!(
        "[agent]\nid = \"history-test\"\nlisten = \"127.0.0.1:0\"\n\
         [history]\npath = \"{}\"\nflush_interval = \"200ms\"\n\
         [[checks]]\nname = \"overloaded\"\ntype = \"http\"\nurl = \"http://127.0.0.1:9/\"\n\
         interval = \"24h\"\nmin_failing_time = \"0s\"\nmin_failing_count = 2\n",
        dir.join("history.db").display()
    );
    let agent = Agent::build(config(&toml)).await.expect("agent builds");
    let api = agent.local_addr().unwrap();
    let bus = agent.bus();
    let stop = CancellationToken::new();
    let task = tokio::spawn(agent.run(stop.clone()));
    let running = Running {
        api,
        results: Arc::new(Mutex::new(Vec::new())),
        stop,
        task,
    };
    let response = |target: &str, kind: ErrorKind| {
        Response::failed(
            target.to_string(),
            ProbeError::new(kind, "no worker"),
            Timings::default(),
        )
    };
    let start = SystemTime::now() - Duration::from_secs(60);
    let runs: Vec<Vec<Response>> = vec![
        vec![
            response("10.0.0.1:80", ErrorKind::DispatchTimeout),
            response("10.0.0.2:80", ErrorKind::DispatchTimeout),
        ],
        vec![
            response("10.0.0.1:80", ErrorKind::DispatchTimeout),
            response("10.0.0.2:80", ErrorKind::DispatchTimeout),
        ],
        vec![
            response("10.0.0.1:80", ErrorKind::DispatchTimeout),
            response("10.0.0.2:80", ErrorKind::Connect),
        ],
    ];
    for (index, responses) in runs.into_iter().enumerate() {
        let at = start + Duration::from_secs(10 * index as u64);
        let result = CheckResult {
            version: 1,
            check: "overloaded".into(),
            check_type: CheckType::Http,
            agent: "runner".into(),
            location: None,
            run_id: index as u64,
            scheduled_at: at,
            finished_at: at,
            passing: false,
            responses,
            degraded: None,
        };
        bus.publish(
            "bastion.results.overloaded",
            Payload::Result(Arc::new(result)),
        )
        .await
        .unwrap();
    }
    let series = poll(
        &running,
        "/api/v1/checks/overloaded/history?from=15m&step=15m",
        |body| {
            body["points"]
                .as_array()
                .is_some_and(|points| points.iter().any(|p| p["unmeasured"] == 2))
        },
    )
    .await;
    let point = series["points"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["unmeasured"] == 2)
        .unwrap()
        .clone();
    assert_eq!(
        (point["runs"].as_u64(), point["down"].as_u64()),
        (Some(1), Some(0)),
        "{series}"
    );
    let (_, check) = running.get_json("/api/v1/checks/overloaded").await;
    assert_eq!(
        check["state"], "WARN",
        "one real failure of two is a warning: {check}"
    );
    let (_, incidents) = running.get_json("/api/v1/incidents?check=overloaded").await;
    assert_eq!(incidents, serde_json::json!([]), "no incident");
    let (_, metrics) = http_get(running.api, "/metrics").await;
    assert_eq!(
        metric(
            &metrics,
            "bastion_check_transitions_total{check=\"overloaded\",to=\"FAIL\"}"
        ),
        None,
        "never FAIL: {metrics}"
    );
    running.stop().await;
}

/// A result delivered twice (a JetStream publish retried after a lost acknowledgement) is
/// one run: in the raw runs, and in the hourly rollup (before: counted twice there).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_delivered_twice_is_one_run_in_the_rollups_too() {
    use bastion_agent::checks::CheckType;
    use bastion_agent::messages::{Payload, Response, Timings};
    use bastion_agent::model::{ErrorKind, ProbeError};
    let dir = scratch_dir("history-twice");
    let toml = format!(
        "[agent]\nid = \"history-test\"\nlisten = \"127.0.0.1:0\"\n\
         [history]\npath = \"{}\"\nflush_interval = \"200ms\"\n\
         [[checks]]\nname = \"twice\"\ntype = \"http\"\nurl = \"http://127.0.0.1:9/\"\ninterval = \"24h\"\n",
        dir.join("history.db").display()
    );
    let agent = Agent::build(config(&toml)).await.expect("agent builds");
    let api = agent.local_addr().unwrap();
    let bus = agent.bus();
    let stop = CancellationToken::new();
    let task = tokio::spawn(agent.run(stop.clone()));
    let running = Running {
        api,
        results: Arc::new(Mutex::new(Vec::new())),
        stop,
        task,
    };
    // Three hours ago: an hour of its own in the rollups, whatever runs now.
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let hour = now - now % 3600 - 3 * 3600;
    let at = UNIX_EPOCH + Duration::from_secs(hour + 60);
    let mut response = Response::failed(
        "10.0.0.1:80".to_string(),
        ProbeError::new(ErrorKind::Connect, "x"),
        Timings::default(),
    );
    response.passing = true;
    response.error = None;
    let result = Arc::new(CheckResult {
        version: 1,
        check: "twice".into(),
        check_type: CheckType::Http,
        agent: "runner".into(),
        location: None,
        run_id: 1,
        scheduled_at: at,
        finished_at: at,
        passing: true,
        responses: vec![response],
        degraded: None,
    });
    for _ in 0..2 {
        bus.publish(
            "bastion.results.twice",
            Payload::Result(Arc::clone(&result)),
        )
        .await
        .unwrap();
    }
    let from = rfc3339(UNIX_EPOCH + Duration::from_secs(hour));
    let to = rfc3339(UNIX_EPOCH + Duration::from_secs(hour + 3600));
    let raw = poll(
        &running,
        &format!("/api/v1/checks/twice/history?from={from}&to={to}&step=30m"),
        |body| body["points"][0]["runs"].as_u64().is_some_and(|r| r > 0),
    )
    .await;
    assert_eq!(raw["source"], "runs", "{raw}");
    assert_eq!(raw["points"][0]["runs"], 1);
    // The hourly rollup of that hour, read as the 7-day view does.
    let week = poll(
        &running,
        "/api/v1/checks/twice/history?from=7d&step=1h",
        |body| {
            body["points"]
                .as_array()
                .is_some_and(|points| points.iter().any(|p| p["runs"].as_u64() > Some(0)))
        },
    )
    .await;
    assert_eq!(week["source"], "hourly", "{week}");
    let runs: u64 = week["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["runs"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(runs, 1, "one run, not two: {week}");
    running.stop().await;
}

/// Stopped while its database is locked and every buffer is full, the checker still stops
/// in time, and what it could not write is counted and logged (before: the writer stopped
/// reading, missed the end of the sink, was cut off after 10 s, and counted nothing).
#[test]
fn a_checker_stopped_with_its_database_down_counts_what_it_could_not_write() {
    let target =
        crate::common::receiver::Receiver::start(crate::common::receiver::Reply::new(200, "ok"));
    let dir = scratch_dir("history-stop");
    let path = dir.join("history.db");
    let listen = crate::common::nats::free_port();
    let mut config = format!(
        "[agent]\nlisten = \"127.0.0.1:{listen}\"\nshutdown_grace = \"1s\"\n\
         [history]\npath = \"{}\"\nbuffer = 8\nflush_interval = \"200ms\"\n",
        path.display()
    );
    for n in 0..20 {
        config.push_str(&format!(
            "[[checks]]\nname = \"c{n}\"\ntype = \"http\"\nurl = \"{}/\"\ninterval = \"1s\"\n",
            target.url()
        ));
    }
    let mut agent =
        crate::common::process::Bastion::start("history-stop", listen, &config, &["run"]);
    agent.wait_ready();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    crate::common::eventually_blocking("history is ready", PATIENCE, || {
        crate::common::process::http_get_blocking(listen, "/api/v1/checks/c0/history?from=15m")
            .is_some_and(|(status, _)| status == 200)
    });
    let lock = runtime.block_on(SqliteLock::take(&path));
    crate::common::eventually_blocking("every buffer fills", PATIENCE, || {
        agent
            .sample("bastion_history_dropped_total{reason=\"buffer_full\"}")
            .is_some_and(|dropped| dropped > 0.0)
    });
    let stopping = std::time::Instant::now();
    assert_eq!(agent.terminate().and_then(|s| s.code()), Some(0));
    let took = stopping.elapsed();
    let log = agent.log();
    assert!(
        log.contains("history could not be written before shutdown; these records are lost"),
        "{log}"
    );
    assert!(!log.contains("did not stop in time"), "{log}");
    assert!(took < Duration::from_secs(30), "stopping took {took:?}");
    runtime.block_on(lock.release());
}

/// A check removed from the config while the agent was down: its incident ends at the next
/// start, saying so (`check_removed`), not as if nobody knew what became of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_incident_of_a_check_removed_while_the_agent_was_down_ends_at_start() {
    let target = scripted_target(1..=100_000).await;
    let backend = Backend::sqlite();
    let flaky = FLAKY
        .replace("TARGET", &target.to_string())
        .replace("min_failing_time = \"2s\"", "min_failing_time = \"0s\"");
    let first = Running::start(&format!("{}{flaky}", backend.toml())).await;
    poll(&first, "/api/v1/incidents?check=flaky", |body| {
        body.as_array()
            .is_some_and(|all| all.len() == 1 && all[0]["open"] == true)
    })
    .await;
    first.stop().await;
    let renamed = flaky.replace("name = \"flaky\"", "name = \"steady\"");
    let second = Running::start(&format!("{}{renamed}", backend.toml())).await;
    let incidents = poll(&second, "/api/v1/incidents?check=flaky", |body| {
        body.as_array()
            .is_some_and(|all| all.len() == 1 && all[0]["open"] == false)
    })
    .await;
    assert_eq!(incidents[0]["end_reason"], "check_removed", "{incidents}");
    second.stop().await;
}

/// A check run from two locations with `min_failing_locations = 2`: each location's results
/// are its own series (`location=`, `by=location`), and the check's uptime follows the
/// combined judgement, one run per tick: one location down is up, both down is down, no
/// runner anywhere is unmeasured; a location delivered twice counts once. A check without
/// `locations`, a location the check does not name, or history's internal name is a 400.
async fn locations_keep_their_own_runs_and_uptime_follows_them_combined(backend: Backend) {
    use bastion_agent::bus::Bus;
    use bastion_agent::checks::CheckType;
    use bastion_agent::messages::{Payload, Response, Timings};
    use bastion_agent::model::{ErrorKind, ProbeError};
    let nats = crate::common::nats::NatsServer::start();
    let toml = format!(
        "{}flush_interval = \"200ms\"\n[bus]\nkind = \"nats\"\n[bus.nats]\nurl = \"{}\"\n\
         [[checks]]\nname = \"edge\"\ntype = \"http\"\nurl = \"http://127.0.0.1:9/\"\n\
         interval = \"24h\"\nlocations = [\"eu-west\", \"us-east\"]\nmin_failing_locations = 2\n\
         [[checks]]\nname = \"plain\"\ntype = \"http\"\nurl = \"http://127.0.0.1:9/\"\ninterval = \"24h\"\n",
        backend.toml(),
        nats.url()
    );
    let running = Running::start(&toml).await;
    let bus = crate::common::nats::observer(&nats.url()).await;
    // Three hours ago: raw runs and an hourly rollup of their own.
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let hour = now - now % 3600 - 3 * 3600;
    let result = |tick: u64, location: &str, outcome: Option<ErrorKind>| {
        let at = UNIX_EPOCH + Duration::from_secs(hour + 60 * tick);
        let mut response = Response::failed(
            "10.0.0.1:80".to_string(),
            ProbeError::new(outcome.unwrap_or(ErrorKind::Connect), "refused"),
            Timings::default(),
        );
        if outcome.is_none() {
            response.passing = true;
            response.error = None;
        }
        Arc::new(CheckResult {
            version: 1,
            check: "edge".into(),
            check_type: CheckType::Http,
            agent: format!("runner-{location}"),
            location: Some(location.to_string()),
            run_id: tick,
            scheduled_at: at,
            finished_at: at + Duration::from_millis(20),
            passing: outcome.is_none(),
            responses: vec![response],
            degraded: None,
        })
    };
    let down = Some(ErrorKind::Connect);
    let no_runner = Some(ErrorKind::NoRunner);
    let ticks = [
        // Both up: up.
        (None, None),
        // One of two down, two needed: up.
        (down, None),
        // Both down: down.
        (down, down),
        // No runner anywhere: unmeasured.
        (no_runner, no_runner),
    ];
    for (tick, (eu, us)) in ticks.into_iter().enumerate() {
        let tick = tick as u64 + 1;
        let mut sent = vec![result(tick, "eu-west", eu), result(tick, "us-east", us)];
        if tick == 3 {
            // Delivered twice (a retried publish): still one location down.
            sent.insert(1, result(tick, "eu-west", eu));
        }
        for result in sent {
            bus.publish("bastion.results.edge", Payload::Result(result))
                .await
                .unwrap();
        }
    }
    let range = format!(
        "from={}&to={}&step=30m",
        rfc3339(UNIX_EPOCH + Duration::from_secs(hour)),
        rfc3339(UNIX_EPOCH + Duration::from_secs(hour + 3600))
    );
    let counts = |point: &Value| {
        (
            point["runs"].as_u64().unwrap(),
            point["down"].as_u64().unwrap(),
            point["unmeasured"].as_u64().unwrap(),
        )
    };
    let combined = poll(
        &running,
        &format!("/api/v1/checks/edge/history?{range}"),
        |body| {
            body["points"][0]["runs"].as_u64().unwrap_or(0)
                + body["points"][0]["unmeasured"].as_u64().unwrap_or(0)
                >= 4
        },
    )
    .await;
    assert_eq!(combined["source"], "runs", "{combined}");
    assert_eq!(counts(&combined["points"][0]), (3, 1, 1), "{combined}");
    assert_eq!(combined["points"][0]["uptime"].as_f64(), Some(2.0 / 3.0));
    assert!(combined.get("location").is_none(), "{combined}");
    // Each location judged on its own.
    let (status, eu) = running
        .get_json(&format!(
            "/api/v1/checks/edge/history?{range}&location=eu-west"
        ))
        .await;
    assert_eq!(status, 200, "{eu}");
    assert_eq!(
        (&eu["check"], &eu["location"]),
        (&Value::from("edge"), &Value::from("eu-west"))
    );
    assert_eq!(counts(&eu["points"][0]), (3, 2, 1), "{eu}");
    let (_, us) = running
        .get_json(&format!(
            "/api/v1/checks/edge/history?{range}&location=us-east"
        ))
        .await;
    assert_eq!(counts(&us["points"][0]), (3, 1, 1), "{us}");
    // A location's own instances.
    let (_, eu_instances) = running
        .get_json(&format!(
            "/api/v1/checks/edge/history?{range}&location=eu-west&by=instance"
        ))
        .await;
    assert_eq!(
        eu_instances["instances"][0]["instance"], "10.0.0.1:80",
        "{eu_instances}"
    );
    // by=location: the combined points and one series per location.
    let (status, all) = running
        .get_json(&format!("/api/v1/checks/edge/history?{range}&by=location"))
        .await;
    assert_eq!(status, 200, "{all}");
    assert_eq!(all["points"], combined["points"]);
    let locations = all["locations"].as_array().unwrap();
    let names: Vec<&str> = locations
        .iter()
        .map(|l| l["location"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["eu-west", "us-east"]);
    assert_eq!(locations[0]["points"], eu["points"]);
    assert_eq!(locations[1]["points"], us["points"]);
    // The combined runs' instances are named by location.
    let (_, by_instance) = running
        .get_json(&format!("/api/v1/checks/edge/history?{range}&by=instance"))
        .await;
    let instances: Vec<&str> = by_instance["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["instance"].as_str().unwrap())
        .collect();
    assert_eq!(instances, ["eu-west/10.0.0.1:80", "us-east/10.0.0.1:80"]);
    // The hourly rollup, which uptime reads, holds the combined runs.
    let week = poll(
        &running,
        "/api/v1/checks/edge/history?from=7d&step=1h",
        |body| {
            body["points"]
                .as_array()
                .is_some_and(|points| points.iter().any(|p| p["runs"].as_u64() > Some(0)))
        },
    )
    .await;
    let hourly: Vec<_> = week["points"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["runs"].as_u64() > Some(0) || p["unmeasured"].as_u64() > Some(0))
        .map(counts)
        .collect();
    assert_eq!(hourly, [(3, 1, 1)], "{week}");
    let check = poll(&running, "/api/v1/checks/edge", |body| {
        !body["uptime"]["24h"].is_null()
    })
    .await;
    assert_eq!(check["uptime"]["24h"].as_f64(), Some(2.0 / 3.0), "{check}");
    // What to ask instead.
    for (path, says) in [
        ("edge/history?location=ap-south", "eu-west, us-east"),
        ("edge/history?location=edge@eu-west", "not a location name"),
        (
            "edge/history?location=eu-west&by=location",
            "one or the other",
        ),
        ("plain/history?location=eu-west", "runs from no locations"),
        ("plain/history?by=location", "runs from no locations"),
    ] {
        let (status, body) = running.get_json(&format!("/api/v1/checks/{path}")).await;
        assert_eq!(status, 400, "{path}: {body}");
        let message = body["error"].as_str().unwrap_or_default();
        assert!(message.contains(says), "{path}: {message}");
    }
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_locations_keep_their_own_runs_and_uptime_follows_them_combined() {
    locations_keep_their_own_runs_and_uptime_follows_them_combined(Backend::sqlite()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_locations_keep_their_own_runs_and_uptime_follows_them_combined() {
    locations_keep_their_own_runs_and_uptime_follows_them_combined(Backend::postgres().await).await;
}
