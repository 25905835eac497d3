//! The whole agent in one process, scraped over HTTP like Prometheus would: the checker
//! schedules, the runner probes, the sink records, and the endpoints show it.

use crate::common;

use bastion_agent::agent::Agent;
use common::*;
// Under the name its calls here use; one parser for every test.
use common::metric as sample;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_agent_exposes_results_metrics_and_health() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = listener.local_addr().unwrap();
    serve_ok(listener, "fine");
    let refused = refused_address().await;
    let config = config(&format!(
        r#"
        [agent]
        id = "agent-under-test"
        listen = "127.0.0.1:0"
        [[checks]]
        name = "web"
        type = "http"
        interval = "1s"
        timeout = "500ms"
        url = "http://{target}/health"
        [[checks.assertions]]
        key = "body"
        relationship = "equal"
        operand = "fine"
        [[checks]]
        name = "down"
        type = "http"
        interval = "1s"
        timeout = "500ms"
        url = "http://{refused}/"
        "#
    ));
    let agent = Agent::build(config).await.unwrap();
    let api = agent.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(agent.run(shutdown.clone()));

    // Both checks run within their first interval; wait (generously) until both have results.
    let mut checks = serde_json::Value::Null;
    for _ in 0..300 {
        let (status, body) = http_get(api, "/api/v1/checks").await;
        assert_eq!(status, 200);
        checks = serde_json::from_str(&body).unwrap();
        if checks
            .as_array()
            .unwrap()
            .iter()
            .all(|c| !c["latest"].is_null())
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let list = checks.as_array().unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["name"], "web");
    assert_eq!(list[0]["type"], "http");
    assert_eq!(list[0]["interval"], "1s");
    let latest = &list[0]["latest"];
    assert_eq!(latest["version"], 1);
    assert_eq!(latest["agent"], "agent-under-test");
    assert_eq!(latest["passing"], true);
    assert_eq!(latest["responses"][0]["target"], target.to_string());
    assert_eq!(latest["responses"][0]["http"]["body"], "fine");
    assert_eq!(list[1]["latest"]["passing"], false);
    assert_eq!(
        list[1]["latest"]["responses"][0]["error"]["kind"],
        "connect"
    );

    let (status, text) = http_get(api, "/metrics").await;
    assert_eq!(status, 200);
    let web = format!("check=\"web\",target=\"{target}\"");
    let down = format!("check=\"down\",target=\"{refused}\"");
    assert_eq!(
        sample(&text, &format!("probe_success{{{web}}}")),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, &format!("probe_success{{{down}}}")),
        Some(0.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, &format!("probe_http_status_code{{{web}}}")),
        Some(200.0)
    );
    assert_eq!(
        sample(&text, &format!("probe_http_status_code{{{down}}}")),
        Some(0.0)
    );
    let duration = sample(&text, &format!("probe_duration_seconds{{{web}}}")).unwrap();
    assert!(duration > 0.0 && duration < 0.5, "{duration}");
    for phase in ["resolve", "connect", "tls", "processing", "transfer"] {
        let series = format!("probe_http_duration_seconds{{{web},phase=\"{phase}\"}}");
        assert!(sample(&text, &series).is_some(), "{series} missing\n{text}");
    }
    assert!(sample(&text, "bastion_checks_scheduled_total{check=\"web\"}").unwrap() >= 1.0);
    assert_eq!(
        sample(&text, "bastion_schedule_skipped_total{check=\"web\"}"),
        Some(0.0)
    );
    assert!(sample(&text, "bastion_schedule_lag_seconds_count").unwrap() >= 2.0);
    assert!(sample(&text, "bastion_dispatch_wait_seconds_count{type=\"http\"}").unwrap() >= 2.0);
    assert_eq!(
        sample(&text, "bastion_dispatch_timeouts_total{type=\"http\"}"),
        Some(0.0)
    );
    assert_eq!(sample(&text, "bastion_workers{type=\"http\"}"), Some(10.0));
    assert!(
        sample(
            &text,
            "bastion_check_duration_seconds_count{check=\"web\",type=\"http\"}"
        )
        .unwrap()
            >= 1.0
    );
    assert_eq!(
        sample(&text, "bastion_bus_decode_errors_total{reason=\"json\"}"),
        Some(0.0)
    );
    assert!(text.contains(&format!(
        "bastion_build_info{{version=\"{}\",commit=\"",
        env!("CARGO_PKG_VERSION")
    )));
    assert!(text.contains(&format!("\",target=\"{}-", std::env::consts::ARCH)));
    assert!(text.contains("# TYPE bastion_schedule_lag_seconds histogram"));

    assert_eq!(http_get(api, "/healthz").await, (200, "ok\n".to_string()));
    assert_eq!(http_get(api, "/readyz").await, (200, "ready\n".to_string()));

    shutdown.cancel();
    tokio::time::timeout(PATIENCE, running)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        tokio::net::TcpStream::connect(api).await.is_err(),
        "endpoints closed on shutdown"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_runs_in_flight_finish_and_records_them() {
    // A target that answers after 700 ms; shutdown comes while the first run waits for it.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = listener.local_addr().unwrap();
    let requests = std::sync::Arc::new(tokio::sync::Notify::new());
    let seen = std::sync::Arc::clone(&requests);
    serve(listener, move |mut request| {
        seen.notify_one();
        async move {
            tokio::time::sleep(Duration::from_millis(700)).await;
            respond(&mut request.stream, "200 OK", &[], "late but fine").await;
        }
    });
    let config = config(&format!(
        r#"
        [agent]
        listen = "127.0.0.1:0"
        shutdown_grace = "10s"
        [[checks]]
        name = "slow"
        type = "http"
        interval = "2s"
        timeout = "1500ms"
        url = "http://{target}/"
        "#
    ));
    let agent = Agent::build(config).await.unwrap();
    let store = agent.store();
    let metrics = agent.metrics();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(agent.run(shutdown.clone()));
    tokio::time::timeout(PATIENCE, requests.notified())
        .await
        .unwrap();
    shutdown.cancel();
    tokio::time::timeout(PATIENCE, running)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let latest = store
        .latest("slow")
        .expect("the run in flight finished and was recorded");
    assert!(latest.passing, "{latest:?}");
    assert_eq!(
        latest.responses[0].http.as_ref().unwrap().body,
        "late but fine"
    );
    assert!(metrics.render().contains(&format!(
        "probe_success{{check=\"slow\",target=\"{target}\"}} 1"
    )));
}

/// A runner on the embedded bus: garbage, a wrong version and an oversized payload are counted
/// and dropped, and the good request after them still runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runner_counts_and_drops_bad_messages_and_keeps_running() {
    use bastion_agent::bus::memory::MemoryBus;
    use bastion_agent::bus::Bus;
    use bastion_agent::messages::{self, CheckRequest, MAX_MESSAGE_BYTES};
    use bastion_agent::runner::{build_dispatcher, Runner};
    use bastion_agent::subjects::Subjects;
    use std::sync::Arc;

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = listener.local_addr().unwrap();
    serve_ok(listener, "fine");
    let config = config(&format!(
        r#"
        [[checks]]
        name = "web"
        type = "http"
        interval = "5s"
        url = "http://{target}/"
        "#
    ));
    let bus = Arc::new(MemoryBus::default());
    let subjects = Subjects::default();
    let metrics = Arc::new(bastion_agent::metrics::Metrics::new());
    let mut results = bus.subscribe("bastion.results.>", None).await.unwrap();
    let dispatcher = build_dispatcher(&config, &metrics).unwrap();
    let runner = Runner::build(bus.clone(), subjects, dispatcher, &metrics, "default")
        .await
        .unwrap();
    let stop = CancellationToken::new();
    let running = tokio::spawn(runner.run(stop.clone()));

    let good = CheckRequest {
        version: 1,
        run_id: 42,
        location: None,
        scheduled_at: std::time::SystemTime::now(),
        dispatch_deadline: None,
        check: std::sync::Arc::new(config.checks[0].clone()),
        discovered: None,
    };
    let mut wrong_version = serde_json::to_value(&good).unwrap();
    wrong_version["version"] = 2.into();
    let mut invalid = serde_json::to_value(&good).unwrap();
    invalid["check"]["interval"] = "10ms".into();
    let bad: Vec<Vec<u8>> = vec![
        b"{not json".to_vec(),
        serde_json::to_vec(&wrong_version).unwrap(),
        vec![b' '; MAX_MESSAGE_BYTES + 1],
        serde_json::to_vec(&invalid).unwrap(),
    ];
    for payload in bad {
        bus.publish("bastion.checks.http", bytes::Bytes::from(payload).into())
            .await
            .unwrap();
    }
    bus.publish(
        "bastion.checks.http",
        messages::encode(&good).unwrap().into(),
    )
    .await
    .unwrap();
    let message = tokio::time::timeout(PATIENCE, results.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&*message.subject, "bastion.results.web");
    let result = message.payload.result().unwrap();
    assert_eq!(result.run_id, 42);
    assert!(result.passing, "{result:?}");
    let text = metrics.render();
    for reason in ["json", "version", "too_large", "invalid"] {
        let series = format!("bastion_bus_decode_errors_total{{reason=\"{reason}\"}}");
        assert_eq!(sample(&text, &series), Some(1.0), "{series}\n{text}");
    }
    stop.cancel();
    tokio::time::timeout(PATIENCE, running)
        .await
        .unwrap()
        .unwrap();
}

/// When an instance leaves a check's results (its address left DNS), its series go too.
#[tokio::test]
async fn the_result_sink_removes_series_of_vanished_instances() {
    use bastion_agent::bus::memory::MemoryBus;
    use bastion_agent::bus::Bus;
    use bastion_agent::checks::CheckType;
    use bastion_agent::messages::{self, CheckResult, Response, Timings};
    use bastion_agent::results::{consume, ResultStore, SinkContext};
    use std::sync::Arc;
    use std::time::{Duration, SystemTime};

    let bus = MemoryBus::default();
    let subscription = bus.subscribe("bastion.results.>", None).await.unwrap();
    let store = Arc::new(ResultStore::default());
    let metrics = Arc::new(bastion_agent::metrics::Metrics::new());
    let stop = CancellationToken::new();
    let checks = config(
        "[[checks]]\nname = \"lb\"\ntype = \"http\"\nurl = \"http://lb.internal/\"\ninterval = \"10s\"\n",
    )
    .checks;
    let (_checks, watched) = tokio::sync::watch::channel(bastion_agent::config::check_list(checks));
    let context = SinkContext {
        store: Arc::clone(&store),
        metrics: Arc::clone(&metrics),
        checks: watched,
        events: None,
        notifications: None,
        history: None,
        saved: bastion_agent::saved_state::SavedState::in_memory(),
        resumed: Vec::new(),
    };
    let sink = tokio::spawn(consume(subscription, context, stop.clone()));
    let result = |targets: &[&str], at: SystemTime| CheckResult {
        version: 1,
        check: "lb".into(),
        check_type: CheckType::Http,
        agent: "a".into(),
        location: None,
        run_id: 1,
        scheduled_at: at,
        finished_at: at,
        passing: true,
        responses: targets
            .iter()
            .map(|target| Response {
                passing: true,
                ..Response::failed(
                    target.to_string(),
                    bastion_agent::model::ProbeError::new(
                        bastion_agent::model::ErrorKind::Http,
                        "x",
                    ),
                    Timings::default(),
                )
            })
            .collect(),
        degraded: None,
    };
    let now = SystemTime::now();
    for (targets, at) in [
        (vec!["10.0.0.1:80", "10.0.0.2:80"], now),
        (vec!["10.0.0.2:80"], now + Duration::from_secs(10)),
        // A late result of an older run changes nothing.
        (vec!["10.0.0.1:80"], now + Duration::from_secs(5)),
    ] {
        let payload = messages::encode(&result(&targets, at)).unwrap();
        bus.publish("bastion.results.lb", payload.into())
            .await
            .unwrap();
    }
    stop.cancel();
    tokio::time::timeout(PATIENCE, sink).await.unwrap().unwrap();
    let text = metrics.render();
    assert!(
        text.contains("probe_success{check=\"lb\",target=\"10.0.0.2:80\"} 1"),
        "{text}"
    );
    assert!(!text.contains("10.0.0.1:80"), "{text}");
    let latest = store.latest("lb").unwrap();
    assert_eq!(latest.responses.len(), 1);
    assert_eq!(latest.responses[0].target, "10.0.0.2:80");
}

/// In one process, requests and results travel as typed values, shared rather than encoded:
/// what a subscriber of the embedded bus receives is the checker's request and the runner's
/// result themselves, and the request shares the check definition the checker holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_and_results_travel_typed_in_one_process() {
    use bastion_agent::messages::Payload;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = listener.local_addr().unwrap();
    serve_ok(listener, "ok");
    let config = config(&format!(
        "[agent]\nlisten = \"127.0.0.1:0\"\n[[checks]]\nname = \"typed\"\ntype = \"http\"\nurl = \"http://{target}/\"\ninterval = \"1s\"\n"
    ));
    let agent = Agent::build(config).await.unwrap();
    let bus = agent.bus();
    let mut requests = bus.subscribe("bastion.checks.>", None).await.unwrap();
    let mut results = bus.subscribe("bastion.results.>", None).await.unwrap();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(agent.run(shutdown.clone()));
    let within = Duration::from_secs(30);
    let request = tokio::time::timeout(within, requests.next())
        .await
        .expect("a request in time")
        .expect("a request");
    let Payload::Request(first) = &request.payload else {
        panic!("the request was not typed: {:?}", request.payload);
    };
    let result = tokio::time::timeout(within, results.next())
        .await
        .expect("a result in time")
        .expect("a result");
    let Payload::Result(finished) = &result.payload else {
        panic!("the result was not typed: {:?}", result.payload);
    };
    assert_eq!(finished.check, "typed");
    assert_eq!(finished.run_id, first.run_id);
    assert!(finished.passing, "{finished:?}");
    // The next run's request carries the very definition the first one did: not a copy.
    let next = tokio::time::timeout(within, requests.next())
        .await
        .expect("a second request in time")
        .expect("a second request");
    let Payload::Request(second) = &next.payload else {
        panic!("the request was not typed: {:?}", next.payload);
    };
    assert!(std::sync::Arc::ptr_eq(&first.check, &second.check));
    shutdown.cancel();
    running.await.unwrap().unwrap();
}
