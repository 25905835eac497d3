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
    Postgres { url: String, name: String },
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
        }
    }

    pub fn toml(&self) -> String {
        match self {
            Backend::Sqlite(path) => format!("[history]\npath = \"{}\"\n", path.display()),
            Backend::Postgres { url, .. } => format!("[history]\nurl = \"{url}\"\n"),
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
        assert!(
            started.elapsed() < PATIENCE,
            "{path} never gave the expected answer; last: {status} {body}"
        );
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
async fn an_incident_open_at_shutdown_is_closed_as_interrupted_at_the_next_start(backend: Backend) {
    let target = scripted_target(1..=100_000).await;
    let toml = format!(
        "{}{}",
        backend.toml(),
        FLAKY
            .replace("TARGET", &target.to_string())
            .replace("min_failing_time = \"2s\"", "min_failing_time = \"0s\"")
    );
    let first = Running::start(&toml).await;
    poll(&first, "/api/v1/incidents?check=flaky", |body| {
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
    let second = Running::start(&toml).await;
    let incidents = poll(&second, "/api/v1/incidents?check=flaky", |body| {
        body.as_array().is_some_and(|all| all.len() == 2)
    })
    .await;
    // Newest first: the new one is open, the old one was closed by the restart.
    assert_eq!(incidents[0]["open"], true);
    assert_eq!(incidents[1]["open"], false);
    assert_eq!(incidents[1]["interrupted"], true);
    let ended = api_ms(&incidents[1]["ended_at"]);
    assert!(
        ended >= ms(runs[0]) && ended <= ms(*runs.last().unwrap()),
        "{incidents}"
    );
    second.stop().await;
    backend.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_an_incident_open_at_shutdown_is_closed_as_interrupted_at_the_next_start() {
    an_incident_open_at_shutdown_is_closed_as_interrupted_at_the_next_start(Backend::sqlite())
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_an_incident_open_at_shutdown_is_closed_as_interrupted_at_the_next_start() {
    an_incident_open_at_shutdown_is_closed_as_interrupted_at_the_next_start(
        Backend::postgres().await,
    )
    .await;
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
    let a = History::open(&config.history, Arc::clone(&metrics), false).unwrap();
    let b = History::open(&config.history, Arc::clone(&metrics), false).unwrap();
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
            recorder.run(&run, &check);
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
