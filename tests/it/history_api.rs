//! The history API and the pages that read history, as a user meets them: the default views
//! through the real binary (every range the check's page offers, the API with no parameters,
//! each tier's retention at its horizon and just past it), the bounds of one answer (points,
//! instances × points) on both sides, and pages that still answer at once with the live state
//! when the database is slow or gone (SQLite whose WAL read locks another process holds,
//! PostgreSQL behind a path that stopped answering), while `/api/v1/checks` and `/metrics`
//! never touch it.

use crate::common::process::Bastion;
use crate::common::tcp_relay::FreezableProxy;
use crate::common::{http_get, serve_ok};
use crate::history::{poll, Backend, Running};
use serde_json::Value;
use sqlx::ConnectOptions;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime};
use tokio::net::TcpListener;
use tokio::time::Instant;

const DAY: Duration = Duration::from_secs(86_400);

/// Every range the check's page offers, and the source the API reads it from by default.
const RANGES: [(&str, &str); 6] = [
    ("15m", "runs"),
    ("1h", "runs"),
    ("6h", "runs"),
    ("24h", "runs"),
    ("7d", "hourly"),
    ("30d", "daily"),
];

/// The start of an answer, for failure messages (some answers are megabytes).
fn short(body: &impl std::fmt::Display) -> String {
    body.to_string().chars().take(600).collect()
}

fn rfc3339(at: SystemTime) -> String {
    humantime::format_rfc3339_millis(at).to_string()
}

async fn get_json(api: SocketAddr, path: &str) -> (u16, Value) {
    let (status, body) = http_get(api, path).await;
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

async fn passing_target() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    serve_ok(listener, "fine");
    address
}

fn web_check(target: SocketAddr) -> String {
    format!(
        "[[checks]]\nname = \"web\"\ntype = \"http\"\nurl = \"http://{target}/\"\ninterval = \"1s\"\ntimeout = \"900ms\"\n"
    )
}

/// The views a new user opens first, through the real binary: the history API with no
/// parameters, `from=24h` and `step=10m`, and the check's page at every range it offers,
/// all answer, with history (the query once took "now" a second time, so `from` fell a few
/// microseconds before the raw runs' horizon and the default view was always a 400). Then
/// each tier at its retention's horizon and a second past it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_views_and_every_range_answer_through_the_binary() {
    let target = passing_target().await;
    let listen = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = crate::common::process::scratch_dir("history-defaults");
    let toml = format!(
        "[agent]\nlisten = \"127.0.0.1:{listen}\"\n[history]\npath = \"{}\"\n{}",
        dir.join("history.db").display(),
        web_check(target)
    );
    let mut agent = Bastion::start("history-defaults", listen, &toml, &["run"]);
    tokio::task::block_in_place(|| agent.wait_ready());
    let api: SocketAddr = format!("127.0.0.1:{listen}").parse().unwrap();
    // Some runs written (a short range of raw runs answered before the fix too).
    let started = Instant::now();
    loop {
        let (status, body) = get_json(api, "/api/v1/checks/web/history?from=10m&step=10m").await;
        if status == 200 && body["points"][0]["runs"].as_u64().unwrap_or(0) >= 3 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no history written: {status} {}\n{}",
            short(&body),
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    for path in [
        "/api/v1/checks/web/history",
        "/api/v1/checks/web/history?from=24h",
        "/api/v1/checks/web/history?step=10m",
        "/api/v1/checks/web/history?from=24h&to=now&step=10m",
    ] {
        let (status, body) = get_json(api, path).await;
        assert_eq!(status, 200, "{path}: {}", short(&body));
        assert_eq!(body["source"], "runs", "{path}");
        let runs: u64 = body["points"]
            .as_array()
            .unwrap()
            .iter()
            .map(|point| point["runs"].as_u64().unwrap())
            .sum();
        assert!(
            runs >= 3,
            "{path}: the runs are in the answer: {}",
            short(&body)
        );
    }
    let (_, default) = get_json(api, "/api/v1/checks/web/history").await;
    assert_eq!(default["step_seconds"], 1_440, "about 60 points over 24 h");
    assert_eq!(default["points"].as_array().unwrap().len(), 60);

    let mut pages = vec!["/checks/web".to_string()];
    pages.extend(
        RANGES
            .iter()
            .map(|(range, _)| format!("/checks/web?range={range}")),
    );
    for page in &pages {
        let (status, body) = http_get(api, page).await;
        assert_eq!(status, 200, "{page}");
        assert!(
            !body.contains("History could not be read") && !body.contains("history-notice"),
            "{page} reads its history: {}",
            short(&body)
        );
        assert!(body.contains("id=\"latency\""), "{page} draws the chart");
    }
    for (range, source) in RANGES {
        let path = format!("/api/v1/checks/web/history?from={range}");
        let (status, body) = get_json(api, &path).await;
        assert_eq!(status, 200, "{path}: {}", short(&body));
        assert_eq!(body["source"], source, "{path}");
    }

    // Each tier up to its horizon (with a few seconds for the request to arrive: the server's
    // "now" is later than this one), and a second past it, with the tier's step and without.
    let now = SystemTime::now();
    let margin = Duration::from_secs(5);
    let second = Duration::from_secs(1);
    for (retention, step, source, without_step) in [
        (DAY, "10m", "runs", Some("hourly")),
        (8 * DAY, "1h", "hourly", Some("daily")),
        (400 * DAY, "1d", "daily", None),
    ] {
        let inside = format!(
            "/api/v1/checks/web/history?from={}&step={step}",
            rfc3339(now - retention + margin)
        );
        let (status, body) = get_json(api, &inside).await;
        assert_eq!(status, 200, "{inside}: {}", short(&body));
        assert_eq!(body["source"], source, "{inside}");
        let from = rfc3339(now - retention - second);
        let past = format!("/api/v1/checks/web/history?from={from}&step={step}");
        let (status, body) = get_json(api, &past).await;
        assert_eq!(status, 400, "{past}: {}", short(&body));
        let message = body["error"].as_str().unwrap();
        assert!(
            message.contains("is kept for") && message.contains("ask from"),
            "{message}"
        );
        let auto = format!("/api/v1/checks/web/history?from={from}");
        let (status, body) = get_json(api, &auto).await;
        match without_step {
            Some(next) => {
                assert_eq!(status, 200, "{auto}: {}", short(&body));
                assert_eq!(body["source"], next, "{auto}");
            }
            None => assert_eq!(status, 400, "{auto}: {}", short(&body)),
        }
    }
    assert!(
        !agent.log().contains("a history read failed"),
        "no view logged a failed query:\n{}",
        agent.log()
    );
    agent.terminate();
}

/// A tcp check of `count` instances on 127.0.0.x where nothing listens (refused at once).
fn wide_check(count: u8, port: u16) -> String {
    let instances = (1..=count)
        .map(|n| format!("\"127.0.0.{n}:{port}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "[[checks]]\nname = \"wide\"\ntype = \"tcp\"\naddress = \"svc.internal:{port}\"\ninstances = [{instances}]\ninterval = \"1s\"\ntimeout = \"900ms\"\n"
    )
}

/// One answer holds at most 2,000 points a series and 20,000 instance points: exactly at
/// each limit it answers, one point or one instance past it is a 400 that says what to ask
/// instead, and what it suggests answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_answer_is_bounded_in_points_and_instances_on_both_sides() {
    let port = crate::common::refused_address().await.port();
    let backend = Backend::sqlite();
    let toml = format!("{}{}", backend.toml(), wide_check(20, port));
    let running = Running::start(&toml).await;
    poll(
        &running,
        "/api/v1/checks/wide/history?from=5m&step=5m&by=instance",
        |body| {
            body["points"][0]["runs"].as_u64().unwrap_or(0) >= 1
                && body["instances"]
                    .as_array()
                    .is_some_and(|all| all.len() == 20)
        },
    )
    .await;
    let to = SystemTime::now();
    let range = |seconds: u64, rest: &str| {
        format!(
            "/api/v1/checks/wide/history?from={}&to={}&{rest}",
            rfc3339(to - Duration::from_secs(seconds)),
            rfc3339(to)
        )
    };

    // 20 instances × 1,000 points: the limit.
    let (status, body) = running.get_json(&range(1_000, "step=1s&by=instance")).await;
    assert_eq!(status, 200, "{}", short(&body));
    let instances = body["instances"].as_array().unwrap();
    assert_eq!(instances.len(), 20);
    assert!(instances
        .iter()
        .all(|i| i["points"].as_array().unwrap().len() == 1_000));
    let names: Vec<String> = instances
        .iter()
        .map(|i| i["instance"].as_str().unwrap().to_string())
        .collect();

    // 20 × 1,001: refused, with a step that fits and how many instances would.
    let (status, body) = running.get_json(&range(1_001, "step=1s&by=instance")).await;
    assert_eq!(status, 400, "{}", short(&body));
    let message = body["error"].as_str().unwrap();
    assert!(
        message.contains("20 instances × 1001 points")
            && message.contains("a step of at least 2s")
            && message.contains("at most 19 instances")
            && message.contains("instance="),
        "{message}"
    );
    // What it suggests answers: the longer step, or fewer instances by name.
    let (status, body) = running.get_json(&range(1_001, "step=2s&by=instance")).await;
    assert_eq!(status, 200, "{}", short(&body));
    assert_eq!(body["instances"].as_array().unwrap().len(), 20);
    let two = format!("step=1s&instance={},{}", names[3], names[7]);
    let (status, body) = running.get_json(&range(1_001, &two)).await;
    assert_eq!(status, 200, "{}", short(&body));
    let picked = body["instances"].as_array().unwrap();
    assert_eq!(picked.len(), 2);
    assert_eq!(picked[0]["instance"], names[3].as_str());
    assert_eq!(picked[1]["points"].as_array().unwrap().len(), 1_001);
    // Naming every instance is no way around the bound, nor is a list of a thousand names.
    let all = format!("step=1s&instance={}", names.join(","));
    let (status, _) = running.get_json(&range(1_001, &all)).await;
    assert_eq!(status, 400);
    let many: Vec<String> = (0..1_000)
        .map(|n| format!("10.0.{}.{}:1", n / 250, n % 250))
        .collect();
    let (status, _) = running
        .get_json(&range(
            1_001,
            &format!("step=1s&instance={}", many.join(",")),
        ))
        .await;
    assert_eq!(status, 400);
    let (status, body) = running.get_json(&range(60, "instance=192.0.2.1:80")).await;
    assert_eq!(status, 400, "{}", short(&body));
    assert!(body["error"].as_str().unwrap().contains("192.0.2.1:80"));
    let (status, _) = running.get_json(&range(60, "by=check&instance=x")).await;
    assert_eq!(status, 400);

    // The whole check's series: 2,000 points answer, 2,001 do not.
    let (status, body) = running.get_json(&range(2_000, "step=1s")).await;
    assert_eq!(status, 200, "{}", short(&body));
    assert_eq!(body["points"].as_array().unwrap().len(), 2_000);
    assert!(body.get("instances").is_none());
    let (status, body) = running.get_json(&range(2_001, "step=1s")).await;
    assert_eq!(status, 400, "{}", short(&body));
    running.stop().await;
}

/// Holds SQLite's WAL read locks on a database from another process (a stuck backup tool or
/// `sqlite3` shell would): every reader then waits, about ten seconds, for a lock. A writer's
/// transaction, even `BEGIN EXCLUSIVE`, blocks no reader in WAL mode; only these locks do.
/// They are the bytes `WAL_READ_LOCK(0..5)` of the `-shm` file (offset 120 + 3, five bytes,
/// in SQLite's unix VFS); POSIX locks bind per process, hence the child.
struct WalReadLocks(Child);

impl WalReadLocks {
    fn hold(database: &Path) -> WalReadLocks {
        let script = "import fcntl, sys\n\
                      f = open(sys.argv[1], 'r+b')\n\
                      fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB, 5, 123)\n\
                      print('locked', flush=True)\n\
                      sys.stdin.read()\n";
        let mut child = Command::new("python3")
            .args(["-c", script])
            .arg(format!("{}-shm", database.display()))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 runs");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "locked", "the WAL read locks are held");
        WalReadLocks(child)
    }
}

impl Drop for WalReadLocks {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// GETs `path` and returns the status, the body and how long the answer took.
/// `by=location` holds at most 20,000 location points: ten locations at 1,964 points answer,
/// eleven are a 400 that says what to ask instead, and what it suggests answers. For a check
/// with `locations = ["*"]`, `by=location` lists the locations with runs kept (never history's
/// internal names), and any location name may be asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_location_is_bounded_and_lists_the_locations_of_every_location_checks() {
    use bastion_agent::bus::Bus;
    use bastion_agent::checks::CheckType;
    use bastion_agent::messages::{CheckResult, Payload, Response, Timings};
    use bastion_agent::model::{ErrorKind, ProbeError};
    use std::sync::Arc;
    let nats = crate::common::nats::NatsServer::start();
    let backend = Backend::sqlite();
    let named = |count: usize| {
        (0..count)
            .map(|n| format!("\"l{n:02}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let check = |name: &str, locations: &str| {
        format!(
            "[[checks]]\nname = \"{name}\"\ntype = \"http\"\nurl = \"http://127.0.0.1:9/\"\ninterval = \"24h\"\nlocations = [{locations}]\n"
        )
    };
    let toml = format!(
        "{}flush_interval = \"200ms\"\n[bus]\nkind = \"nats\"\n[bus.nats]\nurl = \"{}\"\n{}{}{}",
        backend.toml(),
        nats.url(),
        check("ten", &named(10)),
        check("eleven", &named(11)),
        check("anywhere", "\"*\"")
    );
    let running = Running::start(&toml).await;
    // 24 h at 44 s: 1,964 points a series.
    // Once the database is open.
    let ten = poll(
        &running,
        "/api/v1/checks/ten/history?from=24h&step=44s&by=location",
        |body| body["locations"].is_array(),
    )
    .await;
    let locations = ten["locations"].as_array().unwrap();
    assert_eq!(locations.len(), 10);
    assert_eq!(locations[0]["location"], "l00");
    assert_eq!(locations[0]["points"].as_array().unwrap().len(), 1964);
    assert_eq!(ten["points"].as_array().unwrap().len(), 1964);
    let (status, eleven) = running
        .get_json("/api/v1/checks/eleven/history?from=24h&step=44s&by=location")
        .await;
    assert_eq!(status, 400, "{}", short(&eleven));
    let message = eleven["error"].as_str().unwrap();
    assert!(
        message.contains("11 locations × 1964 points") && message.contains("location=NAME"),
        "{message}"
    );
    // The step it suggests answers.
    let step = message
        .split("a step of at least ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .unwrap_or_else(|| panic!("{message}"));
    let (status, fits) = running
        .get_json(&format!(
            "/api/v1/checks/eleven/history?from=24h&step={step}&by=location"
        ))
        .await;
    assert_eq!(status, 200, "{step}: {}", short(&fits));
    // ["*"]: the locations with runs kept.
    let bus = crate::common::nats::observer(&nats.url()).await;
    let hour = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        / 3600
        * 3600
        - 2 * 3600;
    for tick in 1..=2u64 {
        for location in ["eu-west", "ap-south"] {
            let at = SystemTime::UNIX_EPOCH + Duration::from_secs(hour + 60 * tick);
            let result = CheckResult {
                version: 1,
                check: "anywhere".into(),
                check_type: CheckType::Http,
                agent: format!("runner-{location}"),
                location: Some(location.to_string()),
                run_id: tick,
                scheduled_at: at,
                finished_at: at,
                passing: false,
                responses: vec![Response::failed(
                    "10.0.0.1:80".to_string(),
                    ProbeError::new(ErrorKind::Connect, "refused"),
                    Timings::default(),
                )],
                degraded: None,
            };
            bus.publish(
                "bastion.results.anywhere",
                Payload::Result(Arc::new(result)),
            )
            .await
            .unwrap();
        }
    }
    let range = format!(
        "from={}&to={}&step=30m",
        rfc3339(SystemTime::UNIX_EPOCH + Duration::from_secs(hour)),
        rfc3339(SystemTime::UNIX_EPOCH + Duration::from_secs(hour + 3600))
    );
    let all = poll(
        &running,
        &format!("/api/v1/checks/anywhere/history?{range}&by=location"),
        |body| {
            body["locations"]
                .as_array()
                .is_some_and(|all| all.iter().filter(|l| l["points"][0]["runs"] == 2).count() == 2)
        },
    )
    .await;
    let names: Vec<&str> = all["locations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["location"].as_str().unwrap())
        .collect();
    // The agent's own runner may have run the check too, from its own location.
    assert!(
        names.contains(&"ap-south") && names.contains(&"eu-west"),
        "{names:?}"
    );
    assert!(names.iter().all(|name| !name.contains('@')), "{names:?}");
    let (status, nowhere) = running
        .get_json(&format!(
            "/api/v1/checks/anywhere/history?{range}&location=sa-east"
        ))
        .await;
    assert_eq!(status, 200, "{nowhere}");
    assert_eq!(nowhere["points"][0]["runs"], 0);
    running.stop().await;
}

async fn timed(api: SocketAddr, path: &str) -> (u16, String, Duration) {
    let started = Instant::now();
    let (status, body) = http_get(api, path).await;
    (status, body, started.elapsed())
}

/// With history unreadable, every page answers within the page's budget (asserted under
/// 2 s) with the live state and a notice, the history API answers 503 with an error body
/// once its 2 s read limit has passed, and `/api/v1/checks` and `/metrics` answer as usual.
async fn pages_answer_with_the_live_state(api: SocketAddr) {
    let quick = Duration::from_secs(2);
    let (status, body, took) = timed(api, "/checks/web").await;
    assert_eq!(status, 200, "{}", short(&body));
    assert!(took < quick, "the check's page took {took:?}");
    assert!(
        body.contains("id=\"history-notice\""),
        "a notice: {}",
        short(&body)
    );
    assert!(
        body.contains("data-state=\"OK\"") && body.contains("id=\"instances\""),
        "the live state and the last run: {}",
        short(&body)
    );
    let (status, body, took) = timed(api, "/").await;
    assert_eq!(status, 200);
    assert!(took < quick, "the overview took {took:?}");
    assert!(body.contains("id=\"history-notice\"") && body.contains("data-check=\"web\""));
    let (status, body, took) = timed(api, "/badge/web/uptime/24h.svg").await;
    assert_eq!(status, 200);
    assert!(took < quick, "the badge took {took:?}");
    assert!(body.contains("unavailable"), "{}", short(&body));
    let (status, body, took) = timed(api, "/api/v1/checks/web").await;
    assert_eq!(status, 200, "{}", short(&body));
    assert!(took < quick, "one check took {took:?}");
    let check: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(check["state"], "OK");
    assert!(check["latest"]["passing"].as_bool().unwrap(), "{check}");
    assert!(check["uptime"].is_null());
    assert_eq!(
        check["history_error"],
        "the history database did not answer in time"
    );
    let (status, body, took) = timed(api, "/api/v1/checks/web/history").await;
    assert_eq!(status, 503, "{}", short(&body));
    assert!(
        took < Duration::from_secs(4),
        "the history API took {took:?}"
    );
    let error: Value = serde_json::from_str(&body).unwrap();
    assert!(
        error["error"]
            .as_str()
            .unwrap()
            .starts_with("the history database did not answer within 2s"),
        "{error}"
    );
    for path in ["/api/v1/checks", "/metrics"] {
        let (status, body, took) = timed(api, path).await;
        assert_eq!(status, 200, "{path}");
        assert!(took < Duration::from_secs(1), "{path} took {took:?}");
        assert!(body.contains("web"), "{path}: {}", short(&body));
    }
}

/// After the database answers again, so do the pages, without a notice.
async fn pages_read_history_again(running: &Running) {
    let started = Instant::now();
    loop {
        let (status, body) = http_get(running.api, "/checks/web").await;
        if status == 200 && !body.contains("history-notice") && body.contains("id=\"latency\"") {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the page never read history again: {}",
            short(&body)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Waits until the check's page shows history.
async fn wait_for_history(running: &Running) {
    poll(running, "/api/v1/checks/web/history?from=10m", |body| {
        body["points"]
            .as_array()
            .is_some_and(|points| points.iter().any(|p| p["runs"].as_u64() >= Some(2)))
    })
    .await;
    pages_read_history_again(running).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_whose_readers_wait_on_a_lock_never_holds_up_a_page() {
    let target = passing_target().await;
    let backend = Backend::sqlite();
    let Backend::Sqlite(path) = &backend else {
        unreachable!()
    };
    let running = Running::start(&format!("{}{}", backend.toml(), web_check(target))).await;
    wait_for_history(&running).await;

    // A writer holding an exclusive transaction stops no reader (WAL): history still shows.
    let mut writer = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(path)
        .connect()
        .await
        .unwrap();
    sqlx::query("BEGIN EXCLUSIVE")
        .execute(&mut writer)
        .await
        .unwrap();
    sqlx::query("INSERT INTO meta (key, value) VALUES ('test_lock', 1)")
        .execute(&mut writer)
        .await
        .unwrap();
    let (status, body, took) = timed(running.api, "/checks/web").await;
    assert_eq!(status, 200);
    assert!(took < Duration::from_secs(2), "took {took:?}");
    assert!(!body.contains("history-notice"), "{}", short(&body));
    sqlx::query("ROLLBACK").execute(&mut writer).await.unwrap();
    drop(writer);

    let locks = WalReadLocks::hold(path);
    pages_answer_with_the_live_state(running.api).await;
    drop(locks);
    pages_read_history_again(&running).await;
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_that_stops_answering_never_holds_up_a_page() {
    let target = passing_target().await;
    let backend = Backend::postgres().await;
    let Backend::Postgres { name, .. } = &backend else {
        unreachable!()
    };
    let proxy = FreezableProxy::start("127.0.0.1:5432".parse().unwrap()).await;
    let toml = format!(
        "[history]\nurl = \"postgres://postgres@{}/{name}\"\n{}",
        proxy.address,
        web_check(target)
    );
    let running = Running::start(&toml).await;
    wait_for_history(&running).await;

    // Every connection the agent holds, and every new one, stops answering.
    proxy.freeze();
    pages_answer_with_the_live_state(running.api).await;
    // And again: the connections the first round gave up on are not waited for either.
    pages_answer_with_the_live_state(running.api).await;
    proxy.thaw();
    pages_read_history_again(&running).await;
    running.stop().await;
    backend.drop_database().await;
}

/// The readers' pool carries the limit to the database itself: PostgreSQL cancels a read
/// statement after 2 s (so the server stops working for a reader that gave up), and SQLite
/// waits at most 2 s for a lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_connections_carry_the_time_limit() {
    use bastion_agent::history::db::{Db, READ_TIME_LIMIT};
    assert_eq!(READ_TIME_LIMIT, Duration::from_secs(2));
    let backend = Backend::postgres().await;
    let Backend::Postgres { url, .. } = &backend else {
        unreachable!()
    };
    let config = bastion_agent::config::HistoryConfig {
        url: Some(url.clone()),
        ..Default::default()
    };
    let Db::Postgres(pool) = Db::lazy(&config).unwrap().for_reading() else {
        unreachable!()
    };
    let setting: String = sqlx::query_scalar("SHOW statement_timeout")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(setting, "2s");
    let started = Instant::now();
    let error = sqlx::query("SELECT pg_sleep(5)")
        .execute(&pool)
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(4));
    let code = error
        .as_database_error()
        .and_then(|e| e.code().map(|c| c.to_string()));
    assert_eq!(code.as_deref(), Some("57014"), "{error}");
    pool.close().await;
    backend.drop_database().await;

    let sqlite = Backend::sqlite();
    let Backend::Sqlite(path) = &sqlite else {
        unreachable!()
    };
    let config = bastion_agent::config::HistoryConfig {
        path: path.clone(),
        ..Default::default()
    };
    let writer = Db::lazy(&config).unwrap();
    writer.ensure_schema().await.unwrap();
    let Db::Sqlite(pool) = writer.for_reading() else {
        unreachable!()
    };
    let busy: i64 = sqlx::query_scalar("PRAGMA busy_timeout")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(busy, 2_000);
    // A read connection opened while a writer holds its transaction reads at once: opening
    // one takes no lock (the writer's `auto_vacuum` pragma would wait for the write lock).
    let mut holder = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(path)
        .connect()
        .await
        .unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut holder)
        .await
        .unwrap();
    sqlx::query("INSERT INTO meta (key, value) VALUES ('test_lock', 1)")
        .execute(&mut holder)
        .await
        .unwrap();
    let Db::Sqlite(fresh) = writer.for_reading() else {
        unreachable!()
    };
    let started = Instant::now();
    let version: i64 = sqlx::query_scalar("SELECT value FROM meta WHERE key = 'schema_version'")
        .fetch_one(&fresh)
        .await
        .unwrap();
    assert_eq!(version, bastion_agent::history::db::SCHEMA_VERSION);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "a new reader waited {:?} for the writer",
        started.elapsed()
    );
    sqlx::query("ROLLBACK").execute(&mut holder).await.unwrap();
}
