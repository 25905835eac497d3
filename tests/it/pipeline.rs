//! The dispatcher and the HTTP probe against real servers on 127.0.0.x: one response per
//! instance, the dispatch deadline, the probe timeout, honest phases, the body cap, HTTPS with
//! HTTP/2, and instances found by DNS.

use crate::common;

use bastion_agent::model::ErrorKind;
use common::*;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

/// The ancestor's bug: three instances must give three responses, each from itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_round_gives_one_response_per_instance_from_that_instance() {
    let ips = ["127.0.0.2", "127.0.0.3", "127.0.0.4"];
    let (port, listeners) = listeners_on_one_port(&ips).await;
    for (seed, listener) in listeners.into_iter().enumerate() {
        let rng = std::sync::Mutex::new(XorShift(0x9E37_79B9_7F4A_7C15 ^ (seed as u64 + 1)));
        serve(listener, move |mut request| {
            let delay = Duration::from_millis(rng.lock().unwrap().next() % 15);
            async move {
                tokio::time::sleep(delay).await;
                let own = request.local.to_string();
                respond(&mut request.stream, "200 OK", &[], &own).await;
            }
        });
    }
    let config = config(&format!(
        r#"
        [runner.workers]
        http = 2
        [[checks]]
        name = "lb"
        type = "http"
        interval = "10s"
        timeout = "5s"
        url = "http://svc.internal:{port}/"
        instances = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
        "#
    ));
    let (dispatcher, _metrics) = dispatcher(&config);
    let expected: BTreeSet<String> = ips.iter().map(|ip| format!("{ip}:{port}")).collect();
    let config = Arc::new(config);
    // 200 rounds, four at a time, so tasks of different rounds interleave on the two workers.
    let mut rounds = tokio::task::JoinSet::new();
    for round in 0..200 {
        if rounds.len() == 4 {
            rounds.join_next().await.unwrap().unwrap();
        }
        let dispatcher = Arc::clone(&dispatcher);
        let config = Arc::clone(&config);
        let expected = expected.clone();
        rounds.spawn(async move {
            let result = run_check(&dispatcher, &config, "lb").await;
            assert_eq!(result.responses.len(), 3, "round {round}: {result:?}");
            let targets: BTreeSet<String> =
                result.responses.iter().map(|r| r.target.clone()).collect();
            assert_eq!(
                targets, expected,
                "round {round}: one response per instance"
            );
            for response in &result.responses {
                assert!(response.error.is_none(), "round {round}: {response:?}");
                let http = response.http.as_ref().unwrap();
                assert_eq!(
                    http.body, response.target,
                    "round {round}: body names its own target"
                );
            }
            assert!(result.passing, "round {round}");
        });
    }
    while let Some(done) = rounds.join_next().await {
        done.unwrap();
    }
}

/// Accepts connections, counts them, and never answers.
fn hang_and_count(listener: TcpListener) -> Arc<AtomicUsize> {
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&accepted);
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            held.push(stream);
        }
    });
    accepted
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_without_a_worker_by_the_deadline_never_run() {
    let (port, listeners) = listeners_on_one_port(&["127.0.0.2", "127.0.0.3", "127.0.0.4"]).await;
    let accepted: Vec<_> = listeners.into_iter().map(hang_and_count).collect();
    let config = config(&format!(
        r#"
        [runner]
        dispatch_deadline = "1s"
        [runner.workers]
        http = 1
        [[checks]]
        name = "stuck"
        type = "http"
        interval = "10s"
        timeout = "3s"
        url = "http://127.0.0.1:{port}/"
        instances = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
        "#
    ));
    let (dispatcher, metrics) = dispatcher(&config);
    let started = std::time::Instant::now();
    let result = run_check(&dispatcher, &config, "stuck").await;
    let kinds: Vec<Option<ErrorKind>> = result.responses.iter().map(|r| r.error_kind()).collect();
    assert_eq!(
        kinds,
        [
            Some(ErrorKind::Timeout),
            Some(ErrorKind::DispatchTimeout),
            Some(ErrorKind::DispatchTimeout)
        ]
    );
    let targets: Vec<&str> = result.responses.iter().map(|r| r.target.as_str()).collect();
    assert_eq!(
        targets,
        [
            format!("127.0.0.2:{port}"),
            format!("127.0.0.3:{port}"),
            format!("127.0.0.4:{port}")
        ]
    );
    assert_eq!(
        result.responses[1].error.as_ref().unwrap().message,
        "no http worker free within 1s"
    );
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "the first task ran its full timeout"
    );
    assert_eq!(accepted[0].load(Ordering::SeqCst), 1);
    assert_eq!(
        accepted[1].load(Ordering::SeqCst),
        0,
        "a cancelled task never connects"
    );
    assert_eq!(
        accepted[2].load(Ordering::SeqCst),
        0,
        "a cancelled task never connects"
    );
    let text = metrics.render();
    assert!(
        text.contains("bastion_dispatch_timeouts_total{type=\"http\"} 2\n"),
        "{text}"
    );
    assert!(
        text.contains("bastion_task_timeouts_total{type=\"http\"} 1\n"),
        "{text}"
    );
    assert!(!result.passing);
}

#[tokio::test]
async fn a_server_that_never_answers_times_out_close_to_the_timeout() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let _accepted = hang_and_count(listener);
    let config = config(&format!(
        r#"
        [[checks]]
        name = "silent"
        type = "http"
        interval = "5s"
        timeout = "800ms"
        url = "http://{address}/"
        "#
    ));
    let result = run_single(&config).await;
    let response = &result.responses[0];
    let error = response.error.as_ref().unwrap();
    assert_eq!(error.kind, ErrorKind::Timeout);
    assert_eq!(
        error.message,
        "no complete answer within 800ms during processing"
    );
    let total = response.timings.total;
    assert!((0.8..2.0).contains(&total), "total {total}");
    assert!(
        response.timings.processing >= 0.79,
        "{:?}",
        response.timings
    );
    assert!(response.timings.connect > 0.0);
}

#[tokio::test]
async fn processing_holds_the_servers_think_time_and_plain_http_has_no_tls() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    serve(listener, |mut request| async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        respond(&mut request.stream, "200 OK", &[], "slow").await;
    });
    let config = config(&format!(
        r#"
        [[checks]]
        name = "slow"
        type = "http"
        interval = "5s"
        url = "http://{address}/"
        "#
    ));
    let result = run_single(&config).await;
    let response = &result.responses[0];
    assert!(response.error.is_none(), "{response:?}");
    let timings = response.timings;
    assert!(timings.processing >= 0.1, "{timings:?}");
    assert!(timings.processing / timings.total > 0.5, "{timings:?}");
    assert_eq!(timings.tls, 0.0);
    assert_eq!(timings.resolve, 0.0, "an IP in the URL needs no resolving");
    assert!(response.tls.is_none());
    let sum = timings.connect + timings.processing + timings.transfer;
    assert!(
        sum <= timings.total + 1e-9,
        "phases fit in the total: {timings:?}"
    );
    assert_eq!(response.http.as_ref().unwrap().version, "HTTP/1.1");
}

/// A server on its own thread, so it answers on time while the probe's runtime is blocked:
/// each connection gets its response `delay` after the request's first bytes, and `asked` is
/// notified when they came.
fn answer_after_on_a_thread(
    delay: Duration,
    asked: Arc<tokio::sync::Notify>,
) -> std::net::SocketAddr {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let asked = Arc::clone(&asked);
            std::thread::spawn(move || {
                let mut request = [0u8; 4096];
                if stream.read(&mut request).is_ok() {
                    asked.notify_one();
                    std::thread::sleep(delay);
                    let _ = stream.write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                    );
                }
            });
        }
    });
    address
}

/// One http check of `address`, after the `runner` section given.
fn busy_check(address: std::net::SocketAddr, runner: &str) -> bastion_agent::config::Config {
    config(&format!(
        "{runner}\n[[checks]]\nname = \"busy\"\ntype = \"http\"\ninterval = \"10s\"\ntimeout = \"5s\"\nurl = \"http://{address}/\"\n"
    ))
}

/// Honest latency on a busy agent: the answer arrives 300 ms after the request while the
/// probe's worker is busy elsewhere for 800 ms. Processing is when the answer arrived (the
/// kernel's receive stamp), not when the worker got to it; the wait shows in the transfer.
#[tokio::test]
async fn processing_ends_when_the_answer_arrived_not_when_a_busy_worker_read_it() {
    let asked = Arc::new(tokio::sync::Notify::new());
    let address = answer_after_on_a_thread(Duration::from_millis(300), Arc::clone(&asked));
    let config = busy_check(address, "[runner]\nmax_arrival_correction = \"5s\"");
    let (result, _) = run_single_with_worker_held(&config, asked).await;
    let timings = result.responses[0].timings;
    assert!(
        (0.3..0.6).contains(&timings.processing),
        "processing is the server's 300 ms, not the hog's 800: {timings:?}"
    );
    assert!(
        timings.transfer >= 0.2,
        "the worker's wait falls in the transfer: {timings:?}"
    );
}

/// By default a stamp takes at most 50 ms (`runner.max_arrival_correction`) off a phase: with
/// the worker held 800 ms past the answer, processing keeps the rest of the wait.
#[tokio::test]
async fn by_default_a_stamp_takes_at_most_50ms_off_processing() {
    let asked = Arc::new(tokio::sync::Notify::new());
    let address = answer_after_on_a_thread(Duration::from_millis(300), Arc::clone(&asked));
    let config = busy_check(address, "");
    let (result, _) = run_single_with_worker_held(&config, asked).await;
    let timings = result.responses[0].timings;
    assert!(
        timings.processing >= 0.7,
        "only 50 ms of the 800 ms wait is taken off: {timings:?}"
    );
    assert!(
        timings.transfer >= 0.045,
        "the 50 ms taken off falls in the transfer: {timings:?}"
    );
}

#[tokio::test]
async fn an_endless_body_is_truncated_at_the_cap() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    serve(listener, |mut request| async move {
        let stream = &mut request.stream;
        let _ = stream
            .write_all(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n")
            .await;
        let chunk = [b'x'; 8192];
        while stream.write_all(&chunk).await.is_ok() {}
    });
    let config = config(&format!(
        r#"
        [runner]
        max_body_bytes = 1000
        [[checks]]
        name = "endless"
        type = "http"
        interval = "30s"
        timeout = "20s"
        url = "http://{address}/"
        "#
    ));
    let result = run_single(&config).await;
    let response = &result.responses[0];
    assert!(response.error.is_none(), "{response:?}");
    let http = response.http.as_ref().unwrap();
    assert!(http.truncated);
    assert_eq!(http.body.len(), 1000);
    assert!(
        response.timings.total < 10.0,
        "stopped reading, did not wait for the timeout"
    );
}

#[tokio::test]
async fn a_body_exactly_at_the_cap_is_not_truncated() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    serve_ok(listener, "0123456789");
    let config = config(&format!(
        r#"
        [runner]
        max_body_bytes = 10
        [[checks]]
        name = "exact"
        type = "http"
        interval = "5s"
        url = "http://{address}/"
        "#
    ));
    let result = run_single(&config).await;
    let http = result.responses[0].http.as_ref().unwrap();
    assert_eq!((http.body.as_str(), http.truncated), ("0123456789", false));
}

#[tokio::test]
async fn a_refused_connection_is_a_connect_error() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    drop(listener);
    let config = config(&format!(
        r#"
        [[checks]]
        name = "closed"
        type = "http"
        interval = "5s"
        url = "http://{address}/"
        "#
    ));
    let (dispatcher, metrics) = dispatcher(&config);
    let result = run_check(&dispatcher, &config, "closed").await;
    let error = result.responses[0].error.as_ref().unwrap();
    assert_eq!(error.kind, ErrorKind::Connect);
    assert!(error.message.contains("refused"), "{}", error.message);
    assert!(metrics
        .render()
        .contains("bastion_probe_errors_total{type=\"http\",kind=\"connect\"} 1\n"));
}

#[tokio::test]
async fn assertions_decide_passing_and_report_actual_values() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    serve_fixed(
        listener,
        "503 Service Unavailable",
        &[("content-type", "application/json")],
        r#"{"status":"DOWN"}"#,
    );
    let config = config(&format!(
        r#"
        [[checks]]
        name = "api"
        type = "http"
        interval = "5s"
        url = "http://{address}/health"
        [[checks.assertions]]
        key = "code"
        relationship = "equal"
        operand = "503"
        [[checks.assertions]]
        key = "json"
        value = "$.status"
        relationship = "equal"
        operand = "UP"
        [[checks.assertions]]
        key = "header"
        value = "Content-Type"
        relationship = "contain"
        operand = "json"
        "#
    ));
    let result = run_single(&config).await;
    let response = &result.responses[0];
    let verdicts: Vec<(bool, &str)> = response
        .assertions
        .iter()
        .map(|a| (a.passing, a.actual.as_str()))
        .collect();
    assert_eq!(
        verdicts,
        [(true, "503"), (false, "DOWN"), (true, "application/json")]
    );
    assert_eq!(
        response.assertions[1].message.as_deref(),
        Some("expected json $.status equal UP, got `DOWN`")
    );
    assert!(!response.passing);
    assert!(!result.passing);
}

#[tokio::test]
async fn redirects_are_reported_as_they_are_unless_followed() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    serve(listener, |mut request| async move {
        let stream = &mut request.stream;
        if request.head.starts_with("GET /old ") {
            respond(stream, "302 Found", &[("location", "../new?x=1")], "").await;
        } else if request.head.starts_with("GET /new?x=1 ") {
            respond(stream, "200 OK", &[], "moved here").await;
        } else {
            respond(stream, "404 Not Found", &[], "").await;
        }
    });
    let config = config(&format!(
        r#"
        [[checks]]
        name = "as-is"
        type = "http"
        interval = "5s"
        url = "http://{address}/old"
        [[checks]]
        name = "followed"
        type = "http"
        interval = "5s"
        url = "http://{address}/old"
        follow_redirects = true
        "#
    ));
    let (dispatcher, _) = dispatcher(&config);
    let as_is = run_check(&dispatcher, &config, "as-is").await;
    let http = as_is.responses[0].http.as_ref().unwrap();
    assert_eq!((http.status, http.redirects), (302, 0));
    assert!(!as_is.passing, "a 3xx is not a 2xx");
    let followed = run_check(&dispatcher, &config, "followed").await;
    let http = followed.responses[0].http.as_ref().unwrap();
    assert_eq!(
        (http.status, http.redirects, http.body.as_str()),
        (200, 1, "moved here")
    );
    assert!(followed.passing);
}
