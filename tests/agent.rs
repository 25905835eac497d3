//! The whole agent in one process, scraped over HTTP like Prometheus would: the checker
//! schedules, the runner probes, the sink records, and the endpoints show it.

mod common;

use bastion_agent::agent::Agent;
use common::*;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The value of one exposition line, found by its exact series name and labels.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_agent_exposes_results_metrics_and_health() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = listener.local_addr().unwrap();
    serve_ok(listener, "fine");
    let refused = {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap()
    };
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
        "bastion_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    )));
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
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let seen = std::sync::Arc::clone(&seen);
            tokio::spawn(async move {
                if read_head(&mut stream).await.is_some() {
                    seen.notify_one();
                    tokio::time::sleep(Duration::from_millis(700)).await;
                    respond(&mut stream, "200 OK", &[], "late but fine").await;
                }
            });
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
