//! Every run is delivered or counted. Large bodies travel cut to their first 4 KiB (assertions
//! still see the whole body), and a result of thousands of instances still reaches the API
//! and `/metrics`, in a degraded form that is counted (a whole agent in process, on the
//! embedded bus, whose sink applies the same 1 MiB limit as NATS). And over a real
//! nats-server, with the real binary as checker and runner, a runner held up by SIGSTOP
//! around the deadlines never leaves two runs of one check in flight, and every scheduled run
//! ends as a result or a counted loss.

use crate::common;

use bastion_agent::bus::Bus;
use common::nats::{free_port, observer, NatsServer};
use common::process::Bastion;
use common::*;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// Runs a whole agent on `toml` until `done` has seen enough of `/api/v1/checks` and
/// `/metrics` (it returns true), failing after `within`.
async fn watch_agent(
    toml: &str,
    within: Duration,
    mut done: impl FnMut(&serde_json::Value, &str) -> bool,
) {
    let config = config(&format!(
        "[agent]\nid = \"agent-under-test\"\nlisten = \"127.0.0.1:0\"\n{toml}"
    ));
    let agent = bastion_agent::agent::Agent::build(config)
        .await
        .expect("agent builds");
    let api = agent.local_addr().expect("agent listens");
    let shutdown = tokio_util::sync::CancellationToken::new();
    let running = tokio::spawn(agent.run(shutdown.clone()));
    let started = tokio::time::Instant::now();
    let mut last = String::new();
    loop {
        let (status, body) = http_get(api, "/api/v1/checks").await;
        assert_eq!(status, 200);
        let checks: serde_json::Value = serde_json::from_str(&body).expect("checks JSON");
        let (status, metrics) = http_get(api, "/metrics").await;
        assert_eq!(status, 200);
        if done(&checks, &metrics) {
            break;
        }
        last = metrics;
        assert!(
            started.elapsed() < within,
            "not done in time; last /metrics:\n{}",
            last.lines()
                .filter(
                    |line| line.starts_with("bastion_bus") || line.starts_with("bastion_results")
                )
                .collect::<Vec<_>>()
                .join("\n")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(last);
    shutdown.cancel();
    let _ = tokio::time::timeout(PATIENCE, running).await;
}

/// Eight instances with 300 KiB bodies: 2.4 MiB of bodies, more than the bus carries in one
/// message. Every run reaches the API and `/metrics`, each body is judged whole (the string
/// the assertion looks for is at its very end), and what travels is its first 4 KiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_instances_with_300_kib_bodies_reach_the_api_and_metrics_on_every_run() {
    const BODY_BYTES: usize = 300 * 1024;
    let ips: Vec<String> = (2..10).map(|n| format!("127.0.0.{n}")).collect();
    let ip_refs: Vec<&str> = ips.iter().map(String::as_str).collect();
    let (port, listeners) = listeners_on_one_port(&ip_refs).await;
    let mut body = "x".repeat(BODY_BYTES - "END-OF-BODY".len());
    body.push_str("END-OF-BODY");
    let body: &'static str = Box::leak(body.into_boxed_str());
    for listener in listeners {
        serve_ok(listener, body);
    }
    let instances = ips
        .iter()
        .map(|ip| format!("\"{ip}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let toml = format!(
        r#"
        [runner]
        max_body_bytes = 400000
        [[checks]]
        name = "big"
        type = "http"
        interval = "3s"
        timeout = "2s"
        url = "http://svc.internal:{port}/"
        instances = [{instances}]
        [[checks.assertions]]
        key = "body"
        relationship = "contain"
        operand = "END-OF-BODY"
        "#
    );
    let mut runs = BTreeSet::new();
    watch_agent(&toml, Duration::from_secs(60), |checks, metrics| {
        let latest = &checks[0]["latest"];
        if latest.is_null() {
            return false;
        }
        let responses = latest["responses"].as_array().expect("responses");
        assert_eq!(responses.len(), 8, "{latest}");
        for response in responses {
            assert_eq!(
                response["passing"], true,
                "the whole body was judged: {response}"
            );
            let http = &response["http"];
            assert_eq!(http["body_bytes"], BODY_BYTES, "{http}");
            assert_eq!(http["truncated"], true);
            let carried = http["body"].as_str().expect("body");
            assert_eq!(carried.len(), 4096);
            assert!(body.starts_with(carried));
            let target = response["target"].as_str().expect("target");
            let series = format!("probe_success{{check=\"big\",target=\"{target}\"}}");
            assert_eq!(metric(metrics, &series), Some(1.0), "{series}");
        }
        assert_eq!(latest["passing"], true);
        assert!(latest.get("degraded").is_none(), "{latest}");
        runs.insert(latest["run_id"].as_u64().expect("run id"));
        runs.len() >= 3
    })
    .await;
}

/// A tcp check of five thousand instances where nothing listens (connections refused at once).
fn wide_check(port: u16) -> String {
    let instances = (0..5000)
        .map(|n| format!("\"127.0.{}.{}:{port}\"", 20 + n / 250, 1 + n % 250))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        r#"
        [runner.workers]
        tcp = 100
        [[checks]]
        name = "wide"
        type = "tcp"
        interval = "10s"
        timeout = "5s"
        address = "svc.internal:{port}"
        instances = [{instances}]
        "#
    )
}

/// On the embedded bus a result never becomes bytes, so no size limit applies: the result of
/// five thousand instances reaches the API whole, every response carried, nothing reduced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_check_with_5000_instances_reaches_the_api_whole_in_one_process() {
    let toml = wide_check(free_port());
    watch_agent(&toml, Duration::from_secs(120), |checks, metrics| {
        let latest = &checks[0]["latest"];
        if latest.is_null() {
            return false;
        }
        assert_eq!(latest["passing"], false);
        assert!(
            latest.get("degraded").is_none(),
            "nothing reduced in process"
        );
        let responses = latest["responses"].as_array().expect("responses");
        assert_eq!(responses.len(), 5000);
        for response in responses {
            assert_eq!(response["error"]["kind"], "connect", "{response}");
        }
        for form in ["detail_dropped", "summarised"] {
            let counted = format!("bastion_results_degraded_total{{form=\"{form}\"}}");
            assert_eq!(metric(metrics, &counted).unwrap_or(0.0), 0.0, "{counted}");
        }
        assert_ne!(checks[0]["state"], "OK", "{}", checks[0]["state"]);
        true
    })
    .await;
}

/// Over NATS the same result is larger than the bus allows even without bodies, so it travels
/// degraded, is counted, and the check's state and counts still come from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_check_with_5000_instances_reaches_the_api_degraded_and_counted_over_nats() {
    let server = NatsServer::start();
    let toml = format!(
        "[bus]\nkind = \"nats\"\n[bus.nats]\nurl = \"{}\"\n{}",
        server.url(),
        wide_check(free_port())
    );
    watch_agent(&toml, Duration::from_secs(120), |checks, metrics| {
        let latest = &checks[0]["latest"];
        if latest.is_null() {
            return false;
        }
        assert_eq!(latest["passing"], false);
        let degraded = &latest["degraded"];
        assert_eq!(degraded["instances"], 5000, "{degraded}");
        assert_eq!(degraded["failing"], 5000, "{degraded}");
        let form = degraded["form"].as_str().expect("a degraded form");
        let carried = latest["responses"].as_array().expect("responses").len();
        eprintln!("5000 instances: published {form}, {carried} responses carried");
        assert_eq!(
            carried + degraded["omitted"].as_u64().expect("omitted") as usize,
            5000
        );
        for response in latest["responses"].as_array().expect("responses") {
            assert_eq!(response["error"]["kind"], "connect", "{response}");
        }
        let counted = format!("bastion_results_degraded_total{{form=\"{form}\"}}");
        assert!(metric(metrics, &counted).unwrap_or(0.0) >= 1.0, "{counted}");
        assert_eq!(
            metric(
                metrics,
                "bastion_bus_decode_errors_total{reason=\"too_large\"}"
            )
            .unwrap_or(0.0),
            0.0,
            "nothing refused as too large"
        );
        // The state machine saw every failing instance, not only those carried.
        assert_ne!(checks[0]["state"], "OK", "{}", checks[0]["state"]);
        true
    })
    .await;
}

/// Every message under `bastion.>` in the order the server delivered it, with the wall-clock
/// time it arrived. One subscription, so a result and a request keep their order.
#[derive(Clone, Default)]
struct Observed(Arc<Mutex<Vec<(SystemTime, String, serde_json::Value)>>>);

impl Observed {
    async fn watch(url: &str) -> Observed {
        let bus = observer(url).await;
        let seen = Observed::default();
        let mut subscription = bus.subscribe("bastion.>", None).await.unwrap();
        let sink = seen.clone();
        tokio::spawn(async move {
            let _bus = bus;
            while let Some(message) = subscription.next().await {
                let json = serde_json::from_slice(&message.payload.to_bytes().unwrap())
                    .unwrap_or_default();
                sink.0
                    .lock()
                    .unwrap()
                    .push((SystemTime::now(), message.subject.to_string(), json));
            }
        });
        seen
    }

    /// Requests and results of check `check`, in delivery order: (arrived, is_request, json).
    fn runs_of(&self, check: &str) -> Vec<(SystemTime, bool, serde_json::Value)> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter_map(|(at, subject, json)| {
                if subject.starts_with("bastion.checks.") && json["check"]["name"] == check {
                    Some((*at, true, json.clone()))
                } else if subject == &format!("bastion.results.{check}") {
                    Some((*at, false, json.clone()))
                } else {
                    None
                }
            })
            .collect()
    }
}

fn scheduled_at(request: &serde_json::Value) -> SystemTime {
    let text = request["scheduled_at"].as_str().expect("scheduled_at");
    humantime::parse_rfc3339(text).expect("RFC 3339")
}

/// A runner stopped (SIGSTOP) while a request waits, and let go shortly before the request's
/// dispatch deadline, must not probe past the window the checker allows the run; stopped for
/// longer than the window, it must not deliver the run at all, only count it. Throughout: no
/// request of a check is published while an earlier run of it may still deliver (no result
/// yet, window not passed), no result arrives after a later request (two runs in flight), and
/// every request ends as one result or as a loss counted by both the checker and the runner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_up_runner_never_leaves_two_runs_of_a_check_in_flight() {
    let server = NatsServer::start();
    let seen = Observed::watch(&server.url()).await;
    // Twelve instances that accept (the kernel's backlog does) and never answer, probed one
    // at a time: a run takes longer than its dispatch deadline allows.
    let hanging: Vec<std::net::TcpListener> = (0..12)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let instances = hanging
        .iter()
        .map(|listener| format!("\"{}\"", listener.local_addr().unwrap()))
        .collect::<Vec<_>>()
        .join(", ");
    let section = |id: &str, listen: u16, extra: &str| {
        format!(
            "[agent]\nid = \"{id}\"\nlisten = \"127.0.0.1:{listen}\"\nshutdown_grace = \"5s\"\n\
             [bus]\nkind = \"nats\"\n[bus.nats]\nurl = \"{}\"\n\
             [runner]\ndispatch_deadline = \"8s\"\n{extra}",
            server.url()
        )
    };
    let runner_listen = free_port();
    let mut runner = Bastion::start(
        "runner",
        runner_listen,
        &section(
            "runner",
            runner_listen,
            "[runner.workers]\nhttp = 1\ntcp = 0\ndns = 0\ntls = 0\nicmp = 0\ngrpc = 0\nudp = 0\nwebsocket = 0\n",
        ),
        &["run", "--role", "runner"],
    );
    runner.wait_ready();
    runner.signal("STOP");
    let checker_listen = free_port();
    let check = format!(
        "[[checks]]\nname = \"slow\"\ntype = \"http\"\nurl = \"http://hanging.test/\"\n\
         interval = \"1s\"\ntimeout = \"900ms\"\ninstances = [{instances}]\n"
    );
    let mut checker = Bastion::start(
        "checker",
        checker_listen,
        &section("checker", checker_listen, &check),
        &["run", "--role", "checker"],
    );
    checker.wait_ready();

    // Phase 1: the first request waits in the stopped runner until shortly before its
    // deadline.
    eventually("the first request", PATIENCE, || {
        seen.runs_of("slow").iter().any(|(_, request, _)| *request)
    })
    .await;
    let first = seen.runs_of("slow")[0].2.clone();
    let let_go = scheduled_at(&first) + Duration::from_millis(7300);
    tokio::time::sleep(let_go.duration_since(SystemTime::now()).unwrap_or_default()).await;
    runner.signal("CONT");
    tokio::time::sleep(Duration::from_secs(14)).await;
    assert_one_run_in_flight(&seen.runs_of("slow"));

    // Phase 2: stopped for longer than any run's window.
    runner.signal("STOP");
    tokio::time::sleep(Duration::from_secs(20)).await;
    runner.signal("CONT");
    tokio::time::sleep(Duration::from_secs(14)).await;

    assert_one_run_in_flight(&seen.runs_of("slow"));
    let lost_series = "bastion_runs_lost_total{check=\"slow\"}";
    let lost = checker
        .sample(lost_series)
        .expect("the checker counts lost runs");
    assert_eq!(
        checker.terminate().map(|status| status.code()),
        Some(Some(0))
    );
    let runs = seen.runs_of("slow");
    let requests: Vec<&serde_json::Value> = runs
        .iter()
        .filter(|(_, request, _)| *request)
        .map(|(_, _, json)| json)
        .collect();
    // The last run may still be going: wait for the results to settle.
    eventually("every request answered or counted lost", PATIENCE, || {
        let answered: BTreeSet<u64> = seen
            .runs_of("slow")
            .iter()
            .filter(|(_, request, _)| !*request)
            .map(|(_, _, json)| json["run_id"].as_u64().unwrap())
            .collect();
        requests.len() - answered.len() == lost as usize
    })
    .await;
    let runs = seen.runs_of("slow");

    let (runs_seen, answered) = assert_one_run_in_flight(&runs);
    assert!(answered.values().all(|count| *count == 1), "{answered:?}");
    assert!(runs_seen >= 4, "{runs_seen} runs");
    assert!(lost >= 1.0, "the long stop cost at least one run");
    // Every lost run is counted by the runner too: refused as late, or held up past its window.
    let expired = runner
        .sample("bastion_requests_expired_total{type=\"http\"}")
        .unwrap_or(0.0)
        + runner
            .sample("bastion_results_expired_total{type=\"http\"}")
            .unwrap_or(0.0);
    assert_eq!(expired, lost, "runner log:\n{}", runner.log());
    drop(hanging);
}

/// Checks, over requests and results in delivery order, that no request was published while
/// an earlier run could still deliver, and that no result came after a later run's request.
/// Returns how many runs were requested and the results per run.
fn assert_one_run_in_flight(
    runs: &[(SystemTime, bool, serde_json::Value)],
) -> (usize, HashMap<u64, usize>) {
    // The checker's window: dispatch deadline (8 s) + timeout (900 ms) + the 5 s grace.
    const LOST_AFTER: Duration = Duration::from_millis(8000 + 900 + 5000);
    let mut request_at: HashMap<u64, (SystemTime, SystemTime)> = HashMap::new();
    let mut open: Vec<u64> = Vec::new();
    let mut answered: HashMap<u64, usize> = HashMap::new();
    for (at, is_request, json) in runs {
        let run_id = json["run_id"].as_u64().expect("run id");
        if *is_request {
            let scheduled = scheduled_at(json);
            for earlier in &open {
                let (earlier_scheduled, _) = request_at[earlier];
                assert!(
                    *at + Duration::from_millis(50) >= earlier_scheduled + LOST_AFTER,
                    "run {run_id} was published while run {earlier} could still deliver"
                );
            }
            open.push(run_id);
            request_at.insert(run_id, (scheduled, *at));
        } else {
            *answered.entry(run_id).or_default() += 1;
            let later: Vec<u64> = request_at
                .keys()
                .copied()
                .filter(|other| *other > run_id)
                .collect();
            assert!(
                later.is_empty(),
                "run {run_id} delivered its result after run(s) {later:?} were published: \
                 two runs in flight"
            );
            open.retain(|id| *id != run_id);
        }
    }
    (request_at.len(), answered)
}
