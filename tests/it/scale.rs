//! Many checks in one process (issue 20): every configured check keeps its
//! `bastion_check_duration_seconds` series however many there are, nothing is forgotten or
//! skipped, and a reload moves the series with the configuration. TCP checks against a local
//! listener that accepts and closes, so the debug build on two cores keeps up.

use crate::common::*;
use bastion_agent::agent::{Agent, AgentOptions};
use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A listener that accepts every connection and closes it.
async fn accept_and_close() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            drop(stream);
        }
    });
    address
}

/// The whole config: `names` as tcp checks of `target` every `interval`.
fn many_checks(
    names: impl Iterator<Item = usize>,
    target: std::net::SocketAddr,
    interval: &str,
) -> String {
    let mut toml = String::from(
        "[agent]\nid = \"scale\"\nlisten = \"127.0.0.1:0\"\nshutdown_grace = \"2s\"\n\
         [history]\nenabled = false\n[runner.workers]\ntcp = 64\n",
    );
    for n in names {
        let _ = write!(
            toml,
            "[[checks]]\nname = \"c{n}\"\ntype = \"tcp\"\naddress = \"{target}\"\n\
             interval = \"{interval}\"\ntimeout = \"2s\"\n"
        );
    }
    toml
}

/// The checks that have a `bastion_check_duration_seconds` series in `text`.
fn with_duration_series(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|line| line.strip_prefix("bastion_check_duration_seconds_count{check=\""))
        .filter_map(|rest| rest.split('"').next())
        .map(str::to_string)
        .collect()
}

/// The sum of every series of `name` (`name{...} value` lines).
fn total(text: &str, name: &str) -> f64 {
    text.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            let value = if rest.starts_with('{') {
                rest.rsplit_once(' ')?.1
            } else {
                rest.strip_prefix(' ')?
            };
            value.parse::<f64>().ok()
        })
        .sum()
}

/// Waits until every check of `agent`'s store has a result newer than `since`.
async fn every_check_ran_since(
    store: &bastion_agent::results::ResultStore,
    checks: usize,
    since: std::time::SystemTime,
    within: Duration,
) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let snapshot = store.snapshot();
        let ran = snapshot
            .iter()
            .filter(|(_, status)| {
                status
                    .latest
                    .as_ref()
                    .is_some_and(|latest| latest.scheduled_at >= since)
            })
            .count();
        if snapshot.len() == checks && ran == checks {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{ran} of {checks} checks ran in time ({} in the store)",
            snapshot.len()
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_thousand_checks_keep_every_series_and_skip_nothing() {
    const CHECKS: usize = 20_000;
    let target = accept_and_close().await;
    let config = config(&many_checks(0..CHECKS, target, "10s"));
    let agent = Agent::build(config).await.expect("agent builds");

    let api = agent.local_addr().expect("agent listens");
    let store = agent.store();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(agent.run(shutdown.clone()));

    // Every check runs once in its first interval, then once more: two runs each, so a
    // second tick finding the first still in flight would show as a skip.
    let started = std::time::SystemTime::now();
    every_check_ran_since(&store, CHECKS, started, Duration::from_secs(40)).await;
    let second = std::time::SystemTime::now();
    every_check_ran_since(&store, CHECKS, second, Duration::from_secs(40)).await;

    let (status, text) = http_get(api, "/metrics").await;
    assert_eq!(status, 200);
    shutdown.cancel();
    let _ = tokio::time::timeout(PATIENCE, running).await;

    let series = with_duration_series(&text);
    let missing: Vec<String> = (0..CHECKS)
        .map(|n| format!("c{n}"))
        .filter(|name| !series.contains(name))
        .take(5)
        .collect();
    assert_eq!(
        series.len(),
        CHECKS,
        "checks without a series, e.g. {missing:?}"
    );
    assert!(
        total(&text, "bastion_check_duration_seconds_count") >= (2 * CHECKS) as f64,
        "every run recorded"
    );
    assert_eq!(total(&text, "bastion_check_series_forgotten_total"), 0.0);
    assert_eq!(total(&text, "bastion_check_series_refused_total"), 0.0);
    assert_eq!(total(&text, "bastion_schedule_skipped_total"), 0.0);
    assert_eq!(total(&text, "bastion_runs_lost_total"), 0.0);
    assert_eq!(total(&text, "bastion_dispatch_timeouts_total"), 0.0);
    assert_eq!(total(&text, "bastion_bus_publish_errors_total"), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_moves_the_series_with_the_configuration() {
    // 10,001 checks (one past the old cap), then a reload that removes 1,000 of them and adds
    // 1,000 more: 10,001 series before, the removed ones gone after, the added ones present.
    let target = accept_and_close().await;
    let path = temp_path("scale-reload", "toml");
    std::fs::write(&path, many_checks(0..10_001, target, "5s")).expect("write config");
    let config = config(&std::fs::read_to_string(&path).expect("read config"));
    let options = AgentOptions {
        config_path: Some(path.clone()),
        ..AgentOptions::default()
    };
    let agent = Agent::build_with(config, options)
        .await
        .expect("agent builds");
    let api = agent.local_addr().expect("agent listens");
    let store = agent.store();
    let reloader = agent.reloader().expect("a reloader");
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(agent.run(shutdown.clone()));

    let started = std::time::SystemTime::now();
    every_check_ran_since(&store, 10_001, started, Duration::from_secs(30)).await;
    let (_, text) = http_get(api, "/metrics").await;
    let before = with_duration_series(&text);
    assert_eq!(before.len(), 10_001);

    std::fs::write(&path, many_checks(1_000..11_001, target, "5s")).expect("write config");
    reloader.reload().await.expect("the reload applies");
    let reloaded = std::time::SystemTime::now();
    every_check_ran_since(&store, 10_001, reloaded, Duration::from_secs(30)).await;
    let (_, text) = http_get(api, "/metrics").await;
    shutdown.cancel();
    let _ = tokio::time::timeout(PATIENCE, running).await;
    let _ = std::fs::remove_file(&path);

    let after = with_duration_series(&text);
    let expected: BTreeSet<String> = (1_000..11_001).map(|n| format!("c{n}")).collect();
    let unexpected: Vec<&String> = after.difference(&expected).take(5).collect();
    let missing: Vec<&String> = expected.difference(&after).take(5).collect();
    assert!(
        unexpected.is_empty() && missing.is_empty(),
        "left over: {unexpected:?}; missing: {missing:?}"
    );
    assert_eq!(total(&text, "bastion_check_series_forgotten_total"), 0.0);
    assert_eq!(
        total(
            &text,
            "bastion_check_series_refused_total{reason=\"capacity\"}"
        ),
        0.0
    );
    assert_eq!(total(&text, "bastion_schedule_skipped_total"), 0.0);
}

#[test]
fn a_runners_bound_on_check_series_is_itself_bounded() {
    let at_most = config("[runner]\nmax_check_series = 1000000\n");
    assert_eq!(at_most.runner.max_check_series, 1_000_000);
    assert_eq!(config("").runner.max_check_series, 10_000);
    let error = config_error("[runner]\nmax_check_series = 1000001\n");
    assert!(
        error.contains("runner.max_check_series is 1000001; the most allowed is 1000000"),
        "{error}"
    );
}

/// Sends one scheduled request for each of `checks` to a runner, as a checker would.
async fn request_runs(
    bus: &dyn bastion_agent::bus::Bus,
    checks: &[bastion_agent::config::CheckConfig],
) {
    for check in checks {
        let request = bastion_agent::messages::CheckRequest {
            version: 1,
            run_id: 1,
            location: None,
            scheduled_at: std::time::SystemTime::now(),
            dispatch_deadline: None,
            check: std::sync::Arc::new(check.clone()),
            discovered: None,
        };
        let payload = bytes::Bytes::from(serde_json::to_vec(&request).expect("encode"));
        bus.publish("bastion.checks.tcp", payload.into())
            .await
            .expect("publish");
    }
}

/// Waits (scraping every second) until `runner`'s `/metrics` satisfies `condition`.
async fn runner_metrics_until(
    runner: &crate::common::process::Bastion,
    what: &str,
    condition: impl Fn(&str) -> bool,
) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(text) = runner.metrics() {
            if condition(&text) {
                return text;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_at_its_bound_refuses_new_names_and_keeps_every_series() {
    use crate::common::nats::{free_port, observer, NatsServer};
    // The default bound, 10,000, met exactly and then passed by one name.
    let server = NatsServer::start();
    let target = accept_and_close().await;
    let bus = observer(&server.url()).await;
    let listen = free_port();
    let runner_config = format!(
        "[agent]\nid = \"r1\"\nlisten = \"127.0.0.1:{listen}\"\nshutdown_grace = \"2s\"\n\
         [bus]\nkind = \"nats\"\n[bus.nats]\nurl = \"{}\"\n[runner.workers]\ntcp = 64\n",
        server.url()
    );
    let mut runner = crate::common::process::Bastion::start(
        "scale-r1",
        listen,
        &runner_config,
        &["run", "--role", "runner"],
    );
    runner.wait_ready();
    let definitions = config(&many_checks(0..10_001, target, "10s")).checks;
    // In steps the runner's subscription holds, each waited for.
    for (step, chunk) in definitions[..10_000].chunks(2_000).enumerate() {
        request_runs(&*bus, chunk).await;
        let expected = (step + 1) * 2_000;
        runner_metrics_until(&runner, &format!("{expected} series"), |text| {
            with_duration_series(text).len() == expected
        })
        .await;
    }
    let text = runner.metrics().expect("metrics");
    assert_eq!(total(&text, "bastion_check_series_refused_total"), 0.0);
    // The 10,001st name, then every name again: the new one is refused each time, no kept
    // series goes, and every kept one records its second run.
    request_runs(&*bus, &definitions[10_000..]).await;
    runner_metrics_until(&runner, "the refusal", |text| {
        total(
            text,
            "bastion_check_series_refused_total{reason=\"capacity\"}",
        ) == 1.0
    })
    .await;
    let mut sent = 0;
    let mut text = String::new();
    for chunk in definitions.chunks(2_000) {
        request_runs(&*bus, chunk).await;
        sent += chunk.len();
        let recorded = (10_000 + sent.min(10_000)) as f64;
        let refused = if sent > 10_000 { 2.0 } else { 1.0 };
        text = runner_metrics_until(&runner, &format!("{recorded} runs recorded"), |text| {
            total(text, "bastion_check_duration_seconds_count") == recorded
                && total(text, "bastion_check_series_refused_total") == refused
        })
        .await;
    }
    let series = with_duration_series(&text);
    assert_eq!(series.len(), 10_000);
    assert!(series.contains("c0") && series.contains("c9999") && !series.contains("c10000"));
    assert_eq!(
        total(
            &text,
            "bastion_check_series_refused_total{reason=\"capacity\"}"
        ),
        2.0
    );
    assert_eq!(total(&text, "bastion_check_series_forgotten_total"), 0.0);
    runner.terminate();
}
