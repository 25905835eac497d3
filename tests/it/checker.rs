//! The checker's schedule under paused time: stable first offsets, no drift, skipped ticks
//! while a run is in flight, lost runs given up after their horizon, and runs in flight when
//! the lease is lost still ending as a result or a counted loss.

use crate::common::metric;
use bastion_agent::bus::memory::MemoryBus;
use bastion_agent::bus::Bus;
use bastion_agent::checker::{first_wait, Checker};
use bastion_agent::config::{Config, Format};
use bastion_agent::messages::{self, CheckRequest, CheckResult, MESSAGE_VERSION};
use bastion_agent::metrics::Metrics;
use bastion_agent::subjects::Subjects;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio_util::sync::CancellationToken;

fn config(interval: &str, timeout: &str) -> Config {
    let text = format!(
        r#"
        [runner]
        dispatch_deadline = "2s"
        [[checks]]
        name = "tick"
        type = "http"
        interval = "{interval}"
        timeout = "{timeout}"
        url = "http://127.0.0.1:1/"
        "#
    );
    bastion_agent::validate::parse(&text, Format::Toml, Path::new("test.toml")).unwrap()
}

struct Harness {
    bus: Arc<MemoryBus>,
    metrics: Arc<Metrics>,
    requests: bastion_agent::bus::Subscription,
    stop: CancellationToken,
}

async fn start(config: &Config) -> Harness {
    start_leading(config, None).await
}

/// A checker that schedules only while `leadership` says so (always, without one).
async fn start_leading(
    config: &Config,
    leadership: Option<tokio::sync::watch::Receiver<bool>>,
) -> Harness {
    let bus = Arc::new(MemoryBus::default());
    let subjects = Subjects::default();
    let metrics = Arc::new(Metrics::new());
    let requests = bus.subscribe("bastion.checks.>", None).await.unwrap();
    let checker = Checker::build(
        &bastion_agent::config::check_list(config.checks.clone()),
        config.runner.dispatch_deadline,
        bus.clone(),
        &subjects,
        &metrics,
        bastion_agent::checker::Whereabouts {
            agent: "test".into(),
            heartbeat_interval: Duration::from_secs(10),
            local_location: Some("default".into()),
        },
    )
    .await
    .unwrap();
    let stop = CancellationToken::new();
    tokio::spawn(checker.run_while_leading(stop.clone(), leadership));
    Harness {
        bus,
        metrics,
        requests,
        stop,
    }
}

fn counter(metrics: &Metrics, series: &str) -> f64 {
    let text = metrics.render();
    metric(&text, series).unwrap_or_else(|| panic!("{series} missing\n{text}"))
}

async fn reply(bus: &MemoryBus, request: &CheckRequest) {
    let result = CheckResult {
        version: MESSAGE_VERSION,
        check: request.check.name.clone(),
        check_type: request.check.check_type(),
        agent: "test".into(),
        location: None,
        run_id: request.run_id,
        scheduled_at: request.scheduled_at,
        finished_at: SystemTime::now(),
        passing: true,
        responses: Vec::new(),
        degraded: None,
    };
    let payload = messages::encode(&result).unwrap();
    bus.publish("bastion.results.tick", payload.into())
        .await
        .unwrap();
}

#[tokio::test(start_paused = true)]
async fn runs_every_interval_without_drift_when_results_come_back() {
    let config = config("10s", "1s");
    let mut harness = start(&config).await;
    let started = tokio::time::Instant::now();
    let mut due_times = Vec::new();
    let mut previous_run = 0;
    for _ in 0..6 {
        let message = harness.requests.next().await.unwrap();
        due_times.push(started.elapsed());
        let request = message.payload.request().unwrap();
        assert!(request.run_id > previous_run, "run ids increase");
        previous_run = request.run_id;
        reply(&harness.bus, &request).await;
    }
    assert!(
        due_times[0] < Duration::from_secs(10),
        "first run inside the first interval"
    );
    for pair in due_times.windows(2) {
        assert_eq!(
            pair[1] - pair[0],
            Duration::from_secs(10),
            "no drift: {due_times:?}"
        );
    }
    assert_eq!(
        counter(
            &harness.metrics,
            "bastion_checks_scheduled_total{check=\"tick\"}"
        ),
        6.0
    );
    assert_eq!(
        counter(
            &harness.metrics,
            "bastion_schedule_skipped_total{check=\"tick\"}"
        ),
        0.0
    );
    assert_eq!(
        counter(&harness.metrics, "bastion_schedule_lag_seconds_count"),
        6.0
    );
    // tokio's timer has millisecond resolution: each wake-up may come up to 1 ms late.
    let lag = counter(&harness.metrics, "bastion_schedule_lag_seconds_sum");
    assert!(lag <= 0.006, "lag {lag}");
    harness.stop.cancel();
}

#[tokio::test(start_paused = true)]
async fn ticks_are_skipped_while_a_run_is_in_flight_and_lost_runs_are_given_up() {
    // Interval 1s; a run can be in flight for deadline 2s + timeout 500ms + 5s grace = 7.5s.
    let config = config("1s", "500ms");
    let mut harness = start(&config).await;
    let first = harness.requests.next().await.unwrap();
    let first_at = tokio::time::Instant::now();
    let _ = first.payload.request().unwrap();
    // No result ever comes back: the next request only comes once the run is given up.
    let second = harness.requests.next().await.unwrap();
    let waited = tokio::time::Instant::now() - first_at;
    assert_eq!(
        waited,
        Duration::from_secs(8),
        "first tick after the 7.5s horizon"
    );
    let second = second.payload.request().unwrap();
    assert_eq!(
        counter(
            &harness.metrics,
            "bastion_schedule_skipped_total{check=\"tick\"}"
        ),
        7.0
    );
    assert_eq!(
        counter(&harness.metrics, "bastion_runs_lost_total{check=\"tick\"}"),
        1.0
    );
    // Once a result closes the run, the very next tick runs again.
    reply(&harness.bus, &second).await;
    let _third = harness.requests.next().await.unwrap();
    assert_eq!(
        tokio::time::Instant::now() - first_at,
        Duration::from_secs(9)
    );
    assert_eq!(
        counter(
            &harness.metrics,
            "bastion_checks_scheduled_total{check=\"tick\"}"
        ),
        3.0
    );
    harness.stop.cancel();
}

#[tokio::test(start_paused = true)]
async fn runs_in_flight_when_the_lease_is_lost_end_as_results_or_counted_losses() {
    // Two checks: one's run gets its result while the checker stands by, the other's never
    // does (its request died with a NATS server). Seen on a cluster: the second was neither
    // a result nor a counted loss, since a checker that lost the lease forgot its runs.
    let mut config = config("1s", "500ms");
    let mut second = config.checks[0].clone();
    second.name = "tock".into();
    config.checks.push(second);
    let (leading, leadership) = tokio::sync::watch::channel(true);
    let mut harness = start_leading(&config, Some(leadership)).await;
    let mut sent = Vec::new();
    while sent.len() < 2 {
        let request = harness.requests.next().await.unwrap();
        sent.push(request.payload.request().unwrap());
    }
    leading.send_replace(false);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let answered = sent.iter().find(|r| r.check.name == "tick").unwrap();
    reply(&harness.bus, answered).await;
    // Past the 7.5s horizon of both runs, still standing by.
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(
        counter(&harness.metrics, "bastion_runs_lost_total{check=\"tock\"}"),
        1.0,
        "the unanswered run is counted lost"
    );
    let tick_lost = harness
        .metrics
        .render()
        .lines()
        .any(|line| line.starts_with("bastion_runs_lost_total{check=\"tick\"} 1"));
    assert!(!tick_lost, "the answered run is not lost");
    assert!(
        harness.requests.try_next().is_none(),
        "a standby sends nothing"
    );
    harness.stop.cancel();
}

#[tokio::test(start_paused = true)]
async fn the_first_run_waits_for_the_names_phase_of_the_wall_clock() {
    let config = config("10s", "1s");
    let wall_before = SystemTime::now();
    let virtual_start = tokio::time::Instant::now();
    let mut harness = start(&config).await;
    let _first = harness.requests.next().await.unwrap();
    let waited = tokio::time::Instant::now() - virtual_start;
    // The checker read the wall clock a little after `wall_before` (real time passes while
    // virtual time is paused), so it waits that little less; tokio's timer rounds up to 1 ms.
    let mut expected = first_wait("tick", Duration::from_secs(10), wall_before);
    if expected < Duration::from_millis(100) && waited > Duration::from_secs(5) {
        // The phase passed between the two clock reads; the checker rightly took the next one.
        expected += Duration::from_secs(10);
    }
    let real_elapsed = wall_before.elapsed().unwrap();
    assert!(
        waited <= expected + Duration::from_millis(1)
            && waited + real_elapsed + Duration::from_millis(1) >= expected,
        "waited {waited:?}, expected about {expected:?}"
    );
    assert!(waited < Duration::from_secs(10));
    harness.stop.cancel();
}

/// A heartbeat from `agent` in `location`, which beats every 30 s.
async fn heartbeat(bus: &MemoryBus, agent: &str, location: &str) {
    let beat = messages::Heartbeat {
        version: MESSAGE_VERSION,
        agent: agent.into(),
        role: "runner".into(),
        bastion_version: "0".into(),
        sent_at: SystemTime::now(),
        uptime_seconds: 1.0,
        leader: None,
        workers: Default::default(),
        location: Some(location.into()),
        leaving: false,
        interval_seconds: Some(30.0),
    };
    let payload = messages::encode(&beat).unwrap();
    bus.publish(&format!("bastion.heartbeat.{agent}"), payload.into())
        .await
        .unwrap();
}

/// `locations = ["*"]` follows every live location, but no more than a check may name
/// (`MAX_LOCATIONS`): runners in 150 locations (a misconfigured fleet, each runner its own
/// location) get one tick 100 requests, not 151, and the sink, which follows at most 100
/// locations per check, is not sent runs whose results it must drop.
#[tokio::test(start_paused = true)]
async fn every_location_follows_at_most_max_locations() {
    let config = bastion_agent::validate::parse(
        "[[checks]]\nname = \"tick\"\ntype = \"http\"\ninterval = \"10s\"\n\
         url = \"http://127.0.0.1:1/\"\nlocations = [\"*\"]\n",
        Format::Toml,
        Path::new("test.toml"),
    )
    .unwrap();
    let mut harness = start(&config).await;
    for index in 0..150 {
        heartbeat(
            &harness.bus,
            &format!("r{index}"),
            &format!("loc{index:03}"),
        )
        .await;
        // The embedded bus's subscriptions are bounded: let the checker read as they come.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // The first tick may come before every heartbeat is in: count the next one's.
    while harness.requests.try_next().is_some() {}
    let first = harness.requests.next().await.unwrap();
    let run_id = first.payload.request().unwrap().run_id;
    tokio::time::sleep(Duration::from_millis(1)).await;
    let mut requests = 1;
    while let Some(message) = harness.requests.try_next() {
        assert_eq!(message.payload.request().unwrap().run_id, run_id);
        requests += 1;
    }
    assert_eq!(
        requests,
        bastion_agent::config::bounds::MAX_LOCATIONS,
        "one tick's requests"
    );
    harness.stop.cancel();
}

/// A restart while a `["*"]` location was failing, and that location's runners gone by the
/// time the checker is back: seeded from the saved state, the checker has a place there, so
/// once it has heard a round of heartbeats without that location (and the run it presumed it
/// could send there is lost), it sends the location one `no_runner`, which takes it out of the
/// check's judgement, and runs the others as usual. Without the seed it would never hear of
/// it again, and the saved FAIL would hold the check for good.
#[tokio::test(start_paused = true)]
async fn a_saved_every_location_place_gets_its_no_runner_after_a_restart() {
    use bastion_agent::episode::{SavedCheck, SavedLocation, Track};
    use bastion_agent::model::CheckState;
    let config = bastion_agent::validate::parse(
        "[[checks]]\nname = \"tick\"\ntype = \"http\"\ninterval = \"10s\"\n\
         url = \"http://127.0.0.1:1/\"\nlocations = [\"*\"]\n",
        Format::Toml,
        Path::new("test.toml"),
    )
    .unwrap();
    let saved = SavedCheck {
        check: "tick".into(),
        fingerprint: config.checks[0].probe_fingerprint(),
        state: CheckState::Fail,
        since: SystemTime::now(),
        track: Track::default(),
        locations: [(
            "gone".to_string(),
            SavedLocation {
                state: CheckState::Fail,
                since: SystemTime::now(),
            },
        )]
        .into(),
    };
    let bus = Arc::new(MemoryBus::default());
    let mut requests = bus.subscribe("bastion.checks.>", None).await.unwrap();
    let mut results = bus.subscribe("bastion.results.>", None).await.unwrap();
    let checker = Checker::build(
        &bastion_agent::config::check_list(config.checks.clone()),
        config.runner.dispatch_deadline,
        bus.clone(),
        &Subjects::default(),
        &Metrics::new(),
        bastion_agent::checker::Whereabouts {
            agent: "checker".into(),
            heartbeat_interval: Duration::from_secs(10),
            local_location: None,
        },
    )
    .await
    .unwrap()
    .seed_locations(&[saved]);
    let stop = CancellationToken::new();
    tokio::spawn(checker.run(stop.clone()));
    // Only `here` has a runner now, beating every 10 s.
    let beats = {
        let bus = Arc::clone(&bus);
        tokio::spawn(async move {
            loop {
                heartbeat(&bus, "runner-here", "here").await;
                tokio::time::sleep(Duration::from_secs(10)).await;
            }
        })
    };
    let mut no_runner = Vec::new();
    let mut here = 0;
    let mut gone = 0;
    let until = tokio::time::Instant::now() + Duration::from_secs(120);
    while tokio::time::Instant::now() < until {
        tokio::select! {
            Some(message) = requests.next() => {
                let request = message.payload.request().unwrap();
                match request.location.as_deref() {
                    Some("here") => here += 1,
                    // Presumed live until a round of heartbeats went by without it.
                    Some("gone") => gone += 1,
                    other => panic!("a run for {other:?}"),
                }
            }
            Some(message) = results.next() => {
                let result = message.payload.result().unwrap();
                no_runner.push(result.location.clone());
            }
            _ = tokio::time::sleep_until(until) => {}
        }
    }
    beats.abort();
    stop.cancel();
    assert_eq!(
        no_runner,
        vec![Some("gone".to_string())],
        "one no_runner for the saved location, none for the live one"
    );
    // Nobody answers here, so each run stays in flight until it is lost (about 44 s).
    assert!(here >= 2, "{here} runs in the live location");
    assert!(
        gone <= 1,
        "{gone} runs sent to the gone location: at most its first tick's"
    );
}

/// Skip-on-overlap is per location: a location whose runs never come back has its ticks
/// skipped (and its runs counted lost), while the other location runs at every tick.
#[tokio::test(start_paused = true)]
async fn a_slow_location_never_holds_up_another() {
    let config = bastion_agent::validate::parse(
        "[bus]\nkind = \"nats\"\n[bus.nats]\nurl = \"nats://127.0.0.1:4222\"\n\
         [[checks]]\nname = \"tick\"\ntype = \"http\"\ninterval = \"10s\"\ntimeout = \"1s\"\n\
         url = \"http://127.0.0.1:1/\"\nlocations = [\"fast\", \"slow\"]\n",
        Format::Toml,
        Path::new("test.toml"),
    )
    .unwrap();
    let mut harness = start(&config).await;
    let (mut fast, mut slow) = (0, 0);
    let until = tokio::time::Instant::now() + Duration::from_secs(200);
    while tokio::time::Instant::now() < until {
        heartbeat(&harness.bus, "runner-fast", "fast").await;
        heartbeat(&harness.bus, "runner-slow", "slow").await;
        tokio::select! {
            Some(message) = harness.requests.next() => {
                let request = message.payload.request().unwrap();
                match request.location.as_deref() {
                    Some("fast") => {
                        fast += 1;
                        let result = bastion_agent::messages::CheckResult {
                            version: MESSAGE_VERSION,
                            check: request.check.name.clone(),
                            check_type: request.check.check_type(),
                            agent: "runner-fast".into(),
                            location: Some("fast".into()),
                            run_id: request.run_id,
                            scheduled_at: request.scheduled_at,
                            finished_at: SystemTime::now(),
                            passing: true,
                            responses: Vec::new(),
                            degraded: None,
                        };
                        let payload = messages::encode(&result).unwrap();
                        harness.bus.publish("bastion.results.tick", payload.into()).await.unwrap();
                    }
                    // The slow location takes its runs and never answers.
                    Some("slow") => slow += 1,
                    other => panic!("a run for {other:?}"),
                }
            }
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
    }
    // 200 s at a 10 s interval: every tick ran in the fast location; in the slow one a run
    // stays in flight until it is lost (dispatch deadline 30 s + timeout 1 s + 5 s).
    assert!(fast >= 19, "{fast} runs in the fast location");
    assert!((4..=6).contains(&slow), "{slow} runs in the slow location");
    // Each location counts its own: the slow one's skipped and lost runs, none in the fast
    // one, and no series without a location for a check that has locations.
    let slow_lost = "bastion_runs_lost_total{check=\"tick\",location=\"slow\"}";
    let slow_skipped = "bastion_schedule_skipped_total{check=\"tick\",location=\"slow\"}";
    assert!(counter(&harness.metrics, slow_lost) >= 4.0);
    assert!(counter(&harness.metrics, slow_skipped) >= 10.0);
    assert_eq!(
        counter(
            &harness.metrics,
            "bastion_runs_lost_total{check=\"tick\",location=\"fast\"}"
        ),
        0.0
    );
    assert_eq!(
        counter(
            &harness.metrics,
            "bastion_schedule_skipped_total{check=\"tick\",location=\"fast\"}"
        ),
        0.0
    );
    let text = harness.metrics.render();
    assert!(
        !text.contains("bastion_runs_lost_total{check=\"tick\"}"),
        "{text}"
    );
    harness.stop.cancel();
}
