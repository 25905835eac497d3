//! Locations over a real nats-server: one check run from several vantage points and judged
//! across them. The first tests cross a network: each location is a network namespace of its
//! own with a runner inside, reaching the target through a path with its own delay
//! (`common::netns`); they skip, saying why, where namespaces cannot be made. The others run
//! on loopback: where runs go, `no_runner`, `["*"]`, and the configuration's rules.

use crate::common;

use bastion_agent::bus::Bus;
use bastion_agent::messages::CheckResult;
use common::nats::{free_port, observer, NatsServer};
use common::netns::Topology;
use common::process::Bastion;
use common::receiver::{Receiver, Reply};
use common::*;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Every result published on the bus, as it arrived.
#[derive(Clone, Default)]
struct Results(Arc<Mutex<Vec<(Instant, CheckResult)>>>);

impl Results {
    async fn watch(url: &str) -> Results {
        let bus = observer(url).await;
        let results = Results::default();
        let mut subscription = bus.subscribe("bastion.results.>", None).await.unwrap();
        let sink = results.clone();
        tokio::spawn(async move {
            let _bus = bus;
            while let Some(message) = subscription.next().await {
                let bytes = message.payload.to_bytes().unwrap();
                let result: CheckResult = serde_json::from_slice(&bytes).unwrap();
                sink.0.lock().unwrap().push((Instant::now(), result));
            }
        });
        results
    }

    fn all(&self) -> Vec<(Instant, CheckResult)> {
        self.0.lock().unwrap().clone()
    }

    /// Results of `check` from `location` that arrived after `since`.
    fn of(&self, check: &str, location: Option<&str>, since: Instant) -> Vec<CheckResult> {
        self.all()
            .into_iter()
            .filter(|(at, result)| {
                *at >= since && result.check == check && result.location.as_deref() == location
            })
            .map(|(_, result)| result)
            .collect()
    }
}

fn runner_config(id: &str, listen: u16, url: &str, location: &str) -> String {
    format!(
        "[agent]\nid = \"{id}\"\nlisten = \"127.0.0.1:{listen}\"\nshutdown_grace = \"5s\"\n\
         heartbeat_interval = \"1s\"\n\
         [bus]\nkind = \"nats\"\n[bus.nats]\nurl = \"{url}\"\n\
         [runner]\nlocation = \"{location}\"\ndispatch_deadline = \"2s\"\n\
         [runner.workers]\nhttp = 8\ntcp = 0\ndns = 0\ntls = 0\nicmp = 0\ngrpc = 0\nudp = 0\nwebsocket = 0\n"
    )
}

fn checker_config(listen: u16, url: &str, checks: &str) -> String {
    format!(
        "[agent]\nid = \"checker\"\nlisten = \"127.0.0.1:{listen}\"\nshutdown_grace = \"5s\"\n\
         heartbeat_interval = \"1s\"\n\
         [bus]\nkind = \"nats\"\n[bus.nats]\nurl = \"{url}\"\n\
         [runner]\ndispatch_deadline = \"2s\"\n\
         [history]\nenabled = false\n{checks}"
    )
}

/// The check as `GET /api/v1/checks/{name}` shows it.
async fn api_check(listen: u16, name: &str) -> serde_json::Value {
    let address = std::net::SocketAddr::from(([127, 0, 0, 1], listen));
    let (status, body) = http_get(address, &format!("/api/v1/checks/{name}")).await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// Each location's state as the API shows it, and the combined state.
async fn states(listen: u16, name: &str) -> (String, BTreeMap<String, String>) {
    let check = api_check(listen, name).await;
    let locations = check["locations"]
        .as_array()
        .map(|locations| {
            locations
                .iter()
                .map(|location| {
                    (
                        location["location"].as_str().unwrap().to_string(),
                        location["state"].as_str().unwrap().to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    (check["state"].as_str().unwrap().to_string(), locations)
}

/// Waits until the check's combined state and its locations' states are as expected.
async fn wait_for_states(listen: u16, name: &str, combined: &str, expected: &[(&str, &str)]) {
    let expected: BTreeMap<String, String> = expected
        .iter()
        .map(|(location, state)| (location.to_string(), state.to_string()))
        .collect();
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (now, locations) = states(listen, name).await;
        if now == combined && locations == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name}: wanted {combined} {expected:?}, still {now} {locations:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

const LOCATIONS: [(&str, u64); 3] = [("eu-west", 5), ("us-east", 40), ("ap-south", 120)];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn netns_a_check_is_judged_across_three_locations_with_their_own_paths() {
    let locations: Vec<(&str, Duration)> = LOCATIONS
        .iter()
        .map(|(name, ms)| (*name, Duration::from_millis(*ms)))
        .collect();
    let Some(mut topology) = Topology::create(&locations) else {
        return;
    };
    let (port, listeners) = topology.bind_targets().await;
    for listener in listeners {
        serve_ok(listener, "ok");
    }
    topology.start_relays(port, port);
    let server = NatsServer::start_on(&topology.bus_host().to_string());
    let url = server.url();
    let results = Results::watch(&url).await;

    // One runner inside each location.
    let mut runners = Vec::new();
    for (index, (location, _)) in LOCATIONS.iter().enumerate() {
        let id = format!("runner-{location}");
        let listen = free_port();
        let prefix = topology.exec_prefix(index);
        let prefix: Vec<&str> = prefix.iter().map(String::as_str).collect();
        runners.push(Bastion::start_under(
            &prefix,
            &id,
            listen,
            &runner_config(&id, listen, &url, location),
            &["run", "--role", "runner"],
            &[],
        ));
    }
    let service = topology.service(port);
    let listen = free_port();
    let hook = Receiver::start(Reply::new(200, "ok"));
    let check = format!(
        "[[checks]]\nname = \"web\"\ntype = \"http\"\nurl = \"http://{service}/\"\n\
         interval = \"1s\"\ntimeout = \"900ms\"\nmin_failing_time = \"0s\"\n\
         locations = [\"eu-west\", \"us-east\", \"ap-south\"]\nmin_failing_locations = 2\n\
         [[notifiers]]\nname = \"hook\"\ntype = \"webhook\"\ndefault = true\nurl = \"{}/hook\"\n",
        hook.url()
    );
    let mut checker = Bastion::start(
        "checker",
        listen,
        &checker_config(listen, &url, &check),
        &["run", "--role", "checker"],
    );
    checker.wait_ready();
    let ok = [("eu-west", "OK"), ("us-east", "OK"), ("ap-south", "OK")];
    wait_for_states(listen, "web", "OK", &ok).await;

    // Each location's latency reflects its path: the request and the answer are each held
    // once for the relay's one-way delay; the target itself answers at once.
    let since = Instant::now();
    eventually("five passing runs from every location", PATIENCE, || {
        LOCATIONS.iter().all(|(location, _)| {
            results
                .of("web", Some(location), since)
                .iter()
                .filter(|r| r.passing)
                .count()
                >= 5
        })
    })
    .await;
    for (location, delay_ms) in LOCATIONS {
        let mut totals: Vec<f64> = results
            .of("web", Some(location), since)
            .iter()
            .filter(|result| result.passing)
            .map(|result| result.responses[0].timings.total)
            .collect();
        totals.sort_by(f64::total_cmp);
        let median = totals[totals.len() / 2];
        let floor = 2.0 * delay_ms as f64 / 1000.0;
        eprintln!("{location}: one-way {delay_ms} ms, median total {median:.4} s");
        assert!(
            median >= floor * 0.98 && median < floor + 0.1,
            "{location}: median {median} s for a path holding {floor} s"
        );
    }
    // No run was made by a runner of another location.
    for (_, result) in results.all() {
        if let Some(location) = &result.location {
            assert_eq!(result.agent, format!("runner-{location}"), "{result:?}");
        }
    }

    // One location cut: it fails, the others pass, and the check warns.
    topology.cut(1);
    wait_for_states(
        listen,
        "web",
        "WARN",
        &[("eu-west", "OK"), ("us-east", "FAIL"), ("ap-south", "OK")],
    )
    .await;
    // A second one: two locations see it failing, so the check fails.
    topology.cut(2);
    wait_for_states(
        listen,
        "web",
        "FAIL",
        &[("eu-west", "OK"), ("us-east", "FAIL"), ("ap-south", "FAIL")],
    )
    .await;
    // The check's page, in a real browser, shows each location beside the combined state.
    let page = format!("http://127.0.0.1:{listen}/checks/web");
    let dom =
        tokio::task::spawn_blocking(move || crate::status_page::browse(&["--dump-dom"], &page))
            .await
            .unwrap();
    for (location, state) in [("ap-south", "FAIL"), ("eu-west", "OK"), ("us-east", "FAIL")] {
        let row = format!("data-location=\"{location}\" data-state=\"{state}\"");
        assert!(dom.contains(&row), "{row} in\n{dom}");
    }
    assert!(dom.contains("ap-south/"), "instances under their location");
    let metrics = checker.metrics().unwrap();
    for (location, success) in [("eu-west", 1.0), ("us-east", 0.0), ("ap-south", 0.0)] {
        let series =
            format!("probe_success{{check=\"web\",target=\"{service}\",location=\"{location}\"}}");
        assert_eq!(
            metric(&metrics, &series),
            Some(success),
            "{series}\n{metrics}"
        );
    }
    // The firing notification says which locations see the check failing, and where each
    // failure was seen; the one location that failed before warned nobody.
    let received = hook.wait_for("a firing notification", PATIENCE, |received| {
        !received.is_empty()
    });
    let firing = received[0].json();
    assert_eq!(firing["event"], "firing", "{firing}");
    assert_eq!(firing["severity"], "critical");
    let summary = firing["summary"].as_str().unwrap();
    assert!(
        summary.contains("failing from 2 of 3 locations (ap-south, us-east)"),
        "{summary}"
    );
    let seen: Vec<(String, u64)> = firing["locations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|line| {
            (
                line["location"].as_str().unwrap().to_string(),
                line["failing"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            ("ap-south".to_string(), 1),
            ("eu-west".to_string(), 0),
            ("us-east".to_string(), 1)
        ]
    );
    for failure in firing["failures"].as_array().unwrap() {
        let instance = failure["instance"].as_str().unwrap();
        assert!(
            instance.starts_with("ap-south/") || instance.starts_with("us-east/"),
            "{instance}"
        );
    }
    topology.restore(1);
    topology.restore(2);
    wait_for_states(listen, "web", "OK", &ok).await;
    let received = hook.wait_for("the resolve", PATIENCE, |received| received.len() >= 2);
    assert_eq!(received[1].json()["event"], "resolved");
    assert_eq!(received.len(), 2, "one firing, one resolve");

    // Every runner of one location stops: it is `no_runner` within one heartbeat interval
    // and the dispatch deadline (it says it is leaving as it stops), counted, and it moves
    // no state.
    let stopped = Instant::now();
    runners[2].terminate();
    let limit = Duration::from_secs(1) + Duration::from_secs(2);
    let deadline = stopped + limit + PATIENCE;
    let first_no_runner = loop {
        let found = results
            .of("web", Some("ap-south"), stopped)
            .into_iter()
            .find(|result| {
                result.responses[0]
                    .error
                    .as_ref()
                    .is_some_and(|e| e.kind.as_str() == "no_runner")
            });
        if found.is_some() {
            break Instant::now();
        }
        assert!(
            Instant::now() < deadline,
            "no no_runner result for ap-south"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let took = first_no_runner.duration_since(stopped);
    eprintln!("no_runner {took:?} after the last ap-south runner was told to stop");
    // Generous for a busy machine: the bound plus one interval and a second of slack.
    assert!(took < limit + Duration::from_secs(2), "{took:?}");
    let counted = checker
        .sample("bastion_runs_no_runner_total{check=\"web\",location=\"ap-south\"}")
        .unwrap_or(0.0);
    assert!(counted >= 1.0, "{}", checker.metrics().unwrap_or_default());
    let (state, _) = states(listen, "web").await;
    assert_eq!(state, "OK");
    let check = api_check(listen, "web").await;
    let ap_south = check["locations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|location| location["location"] == "ap-south")
        .unwrap()
        .clone();
    assert_eq!(
        ap_south["latest"]["responses"][0]["error"]["kind"],
        "no_runner"
    );
    assert_eq!(ap_south["latest"]["agent"], "checker");
}

fn loopback_runner(id: &str, url: &str, location: &str) -> Bastion {
    let listen = free_port();
    let mut runner = Bastion::start(
        id,
        listen,
        &runner_config(id, listen, url, location),
        &["run", "--role", "runner"],
    );
    runner.wait_ready();
    runner
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_go_only_where_they_belong_and_every_location_follows_the_live_runners() {
    let server = NatsServer::start();
    let url = server.url();
    let results = Results::watch(&url).await;
    let target = {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        serve_ok(listener, "ok");
        address
    };
    let _alpha = loopback_runner("runner-alpha", &url, "alpha");
    let mut beta = loopback_runner("runner-beta", &url, "beta");
    let listen = free_port();
    let checks = format!(
        "[[checks]]\nname = \"named\"\ntype = \"http\"\nurl = \"http://{target}/\"\ninterval = \"1s\"\n\
         locations = [\"alpha\", \"gamma\"]\n\
         [[checks]]\nname = \"everywhere\"\ntype = \"http\"\nurl = \"http://{target}/\"\ninterval = \"1s\"\n\
         locations = [\"*\"]\n\
         [[checks]]\nname = \"anywhere\"\ntype = \"http\"\nurl = \"http://{target}/\"\ninterval = \"1s\"\n"
    );
    let mut checker = Bastion::start(
        "checker",
        listen,
        &checker_config(listen, &url, &checks),
        &["run", "--role", "checker"],
    );
    checker.wait_ready();
    let start = Instant::now();
    eventually("runs everywhere", PATIENCE, || {
        results.of("named", Some("alpha"), start).len() >= 3
            && results.of("named", Some("gamma"), start).len() >= 3
            && results.of("everywhere", Some("alpha"), start).len() >= 3
            && results.of("everywhere", Some("beta"), start).len() >= 3
            && results.of("anywhere", None, start).len() >= 3
    })
    .await;
    // A named location without runners gets `no_runner` from the checker, every run.
    for result in results.of("named", Some("gamma"), start) {
        assert_eq!(result.agent, "checker");
        assert_eq!(result.responses.len(), 1);
        let error = result.responses[0].error.as_ref().unwrap();
        assert_eq!(error.kind.as_str(), "no_runner", "{error:?}");
        assert!(
            error.message.contains("runner.location = \"gamma\""),
            "{}",
            error.message
        );
    }
    // Every other result was made in its own location, each run once per location.
    let mut per_run: BTreeMap<(String, u64, Option<String>), usize> = BTreeMap::new();
    for (_, result) in results.all() {
        match result.location.as_deref() {
            Some("alpha") => assert_eq!(result.agent, "runner-alpha", "{result:?}"),
            Some("beta") => assert_eq!(result.agent, "runner-beta", "{result:?}"),
            Some("gamma") => assert_eq!(result.agent, "checker"),
            Some(other) => panic!("a result from location {other}"),
            None => assert_eq!(result.check, "anywhere"),
        }
        *per_run
            .entry((result.check.clone(), result.run_id, result.location.clone()))
            .or_default() += 1;
    }
    assert!(per_run.values().all(|count| *count == 1), "{per_run:?}");
    let (named, named_locations) = states(listen, "named").await;
    assert_eq!(named, "OK", "gamma measured nothing, alpha passes");
    assert_eq!(named_locations.len(), 2, "{named_locations:?}");

    // `["*"]` follows the runners: beta stops, says so, and leaves the check.
    beta.terminate();
    let stopped = Instant::now();
    eventually("everywhere drops beta", PATIENCE, || {
        results
            .of("everywhere", Some("beta"), stopped)
            .iter()
            .any(|result| result.agent == "checker")
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(results.of("everywhere", Some("beta"), after).is_empty());
    assert!(results.of("everywhere", Some("alpha"), after).len() >= 2);
    let (_, everywhere) = states(listen, "everywhere").await;
    assert_eq!(
        everywhere.keys().collect::<Vec<_>>(),
        vec!["alpha"],
        "beta left the judgement"
    );
    assert!(
        checker
            .sample("bastion_runs_no_runner_total{check=\"named\",location=\"gamma\"}")
            .is_some_and(|count| count >= 3.0),
        "{}",
        checker.metrics().unwrap_or_default()
    );
}

#[test]
fn location_settings_are_checked_with_clear_errors() {
    let check = "[[checks]]\nname = \"web\"\ntype = \"http\"\nurl = \"http://127.0.0.1/\"\ninterval = \"10s\"\n";
    let nats = "[bus]\nkind = \"nats\"\n[bus.nats]\nurl = \"nats://127.0.0.1:4222\"\n";
    assert_config_errors(
        &format!("{nats}{check}"),
        &[
            ("locations = []\n", "locations is empty"),
            (
                "locations = [\"eu west\"]\n",
                "`eu west` is not a location name",
            ),
            ("locations = [\"a.b\"]\n", "`a.b` is not a location name"),
            ("locations = [\"eu\", \"eu\"]\n", "names `eu` twice"),
            ("locations = [\"*\", \"eu\"]\n", "give \"*\" alone"),
            (
                "min_failing_locations = 2\n",
                "min_failing_locations needs locations",
            ),
            (
                "locations = [\"eu\", \"us\"]\nmin_failing_locations = 3\n",
                "could never fail",
            ),
            (
                "locations = [\"eu\"]\nmin_failing_locations = 0\n",
                "min_failing_locations",
            ),
            (
                "locations = [\"eu\"]\nlabels = { location = \"x\" }\n",
                "label name `location` is one bastion sets itself on a check with locations",
            ),
        ],
    );
    // A check without locations keeps a `location` label of its own.
    config(&format!(
        "{nats}{check}labels = {{ location = \"rack-4\" }}\n"
    ));
    // The bounds, on both sides.
    let many: Vec<String> = (0..101).map(|n| format!("\"l{n}\"")).collect();
    let error = config_error(&format!("{nats}{check}locations = [{}]\n", many.join(", ")));
    assert!(error.contains("at most 100"), "{error}");
    let hundred: Vec<String> = (0..100).map(|n| format!("\"l{n}\"")).collect();
    config(&format!(
        "{nats}{check}locations = [{}]\nmin_failing_locations = 100\n",
        hundred.join(", ")
    ));
    config(&format!(
        "{nats}{check}locations = [\"*\"]\nmin_failing_locations = 7\n"
    ));
    let long = "x".repeat(65);
    assert!(config_error(&format!("[runner]\nlocation = \"{long}\"\n")).contains("runner.location"));
    config(&format!("[runner]\nlocation = \"{}\"\n", "x".repeat(64)));
    for (interval, good) in [
        ("999ms", false),
        ("1s", true),
        ("5m", true),
        ("301s", false),
    ] {
        let text = format!("[agent]\nheartbeat_interval = \"{interval}\"\n");
        if good {
            config(&text);
        } else {
            assert!(
                config_error(&text).contains("agent.heartbeat_interval"),
                "{interval}"
            );
        }
    }
    // On the embedded bus the one location is the agent's own.
    let error = config_error(&format!("{check}locations = [\"eu-west\"]\n"));
    assert!(
        error.contains("on the embedded bus the only location"),
        "{error}"
    );
    config(&format!(
        "[runner]\nlocation = \"eu-west\"\n{check}locations = [\"eu-west\"]\n"
    ));
    config(&format!("{check}locations = [\"*\"]\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_process_runs_a_located_check_on_its_own_location() {
    let target = {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        serve_ok(listener, "ok");
        address
    };
    let listen = free_port();
    let text = format!(
        "[agent]\nlisten = \"127.0.0.1:{listen}\"\n[history]\nenabled = false\n\
         [runner]\nlocation = \"here\"\n\
         [[checks]]\nname = \"web\"\ntype = \"http\"\nurl = \"http://{target}/\"\ninterval = \"1s\"\n\
         locations = [\"here\"]\n"
    );
    let mut agent = Bastion::start("one", listen, &text, &["run"]);
    agent.wait_ready();
    let series = format!("probe_success{{check=\"web\",target=\"{target}\",location=\"here\"}}");
    eventually("the located series", PATIENCE, || {
        agent.sample(&series) == Some(1.0)
    })
    .await;
    let check = api_check(listen, "web").await;
    assert_eq!(check["locations"][0]["location"], "here");
    assert_eq!(check["locations"][0]["state"], "OK");
    assert_eq!(check["latest"]["location"], "here");
}

/// A located check failing when the agent restarts: its state and each location's come back
/// from the saved state, so the restart neither resolves the episode nor opens another; the
/// recovery after it resolves the one episode.
#[test]
fn a_restart_in_the_middle_of_an_episode_keeps_each_locations_state() {
    use crate::notify::{fail, recover, target, WAIT};
    let target = target();
    let hook = Receiver::start(Reply::new(200, "ok"));
    let dir = common::process::scratch_dir("locations-restart");
    let listen = free_port();
    let config = format!(
        "[agent]\nid = \"one\"\nlisten = \"127.0.0.1:{listen}\"\nshutdown_grace = \"3s\"\n\
         [runner]\nlocation = \"here\"\n\
         [history]\npath = \"{}\"\n\
         [[checks]]\nname = \"web\"\ntype = \"http\"\nurl = \"{}/health\"\ninterval = \"2s\"\n\
         min_failing_time = \"0s\"\nlocations = [\"here\"]\n\
         [[notifiers]]\nname = \"hook\"\ntype = \"webhook\"\ndefault = true\nurl = \"{}/hook\"\n",
        dir.join("history.db").display(),
        target.url(),
        hook.url()
    );
    let api = |listen: u16| -> serde_json::Value {
        let (_, body) = common::process::http_get_blocking(listen, "/api/v1/checks/web").unwrap();
        serde_json::from_str(&body).unwrap()
    };
    let mut first = Bastion::start("locations-restart-1", listen, &config, &["run"]);
    first.wait_ready();
    fail(&target);
    let fired = hook.wait_for("the firing", WAIT, |received| !received.is_empty());
    let episode = fired[0].json()["episode_id"].as_str().unwrap().to_string();
    let check = api(listen);
    assert_eq!(check["state"], "FAIL", "{check}");
    assert_eq!(check["locations"][0]["state"], "FAIL", "{check}");
    assert_eq!(first.terminate().and_then(|status| status.code()), Some(0));

    let mut second = Bastion::start("locations-restart-2", listen, &config, &["run"]);
    second.wait_ready();
    // Ready means started: what the last run saved is taken back by then.
    let deadline = Instant::now() + WAIT;
    while common::process::http_get_blocking(listen, "/readyz").map(|(status, _)| status)
        != Some(200)
    {
        assert!(Instant::now() < deadline, "never ready: {}", second.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    // Before its first run: resumed, not started afresh.
    let check = api(listen);
    assert_eq!(check["state"], "FAIL", "{check}");
    assert_eq!(check["locations"][0]["location"], "here", "{check}");
    assert_eq!(check["locations"][0]["state"], "FAIL", "{check}");
    recover(&target);
    let received = hook.wait_for("the resolve", WAIT, |received| {
        received.iter().any(|r| r.json()["event"] == "resolved")
    });
    let events: Vec<(String, String)> = received
        .iter()
        .map(|r| {
            let body = r.json();
            (
                body["event"].as_str().unwrap().to_string(),
                body["episode_id"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    // The restart re-sends nothing the receiver accepted, and the resolve ends the same one.
    assert_eq!(
        events,
        vec![
            ("firing".to_string(), episode.clone()),
            ("resolved".to_string(), episode)
        ],
        "{}",
        second.log()
    );
}
