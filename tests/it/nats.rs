//! Distributed mode against a real nats-server (started per test on a random port): the real
//! binary as checker and runners, work shared through the queue group, runner loss, server
//! restarts, bad messages, auth and TLS, checker failover, durable results, heartbeats and
//! `once --remote`. Run against another server build with `NATS_SERVER=/path/to/nats-server`.

use crate::common;

use bastion_agent::bus::nats::NatsBus;
use bastion_agent::bus::{Bus, BusError};
use bastion_agent::messages::{CheckRequest, CheckResult, Heartbeat};
use bytes::Bytes;
use common::nats::{free_port, observer, NatsServer};
use common::process::{http_get_blocking, scratch_dir, Bastion};
use common::*;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

fn nats_section(url: &str, extra: &str) -> String {
    format!("[bus]\nkind = \"nats\"\n[bus.nats]\nurl = \"{url}\"\n{extra}\n")
}

fn agent_section(id: &str, listen: u16) -> String {
    format!("[agent]\nid = \"{id}\"\nlisten = \"127.0.0.1:{listen}\"\nshutdown_grace = \"5s\"\n")
}

/// `count` HTTP checks against `target`, every `interval`.
fn checks(count: usize, target: std::net::SocketAddr, interval: &str) -> String {
    (0..count)
        .map(|n| {
            format!(
                "[[checks]]\nname = \"web-{n}\"\ntype = \"http\"\nurl = \"http://{target}/{n}\"\ninterval = \"{interval}\"\ntimeout = \"900ms\"\n"
            )
        })
        .collect()
}

async fn target() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    serve_ok(listener, "ok");
    address
}

/// Everything seen on a subject pattern, with when it arrived.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<(Instant, Bytes)>>>);

impl Seen {
    async fn watch(bus: &Arc<NatsBus>, pattern: &str) -> Seen {
        let seen = Seen::default();
        let mut subscription = bus.subscribe(pattern, None).await.unwrap();
        let sink = seen.clone();
        tokio::spawn(async move {
            while let Some(message) = subscription.next().await {
                sink.0
                    .lock()
                    .unwrap()
                    .push((Instant::now(), message.payload.to_bytes().unwrap()));
            }
        });
        // A round trip, so the subscription is in effect on the server before anything is sent.
        assert!(bus.settle().await, "the subscription is in effect");
        seen
    }

    fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    fn decoded<T: serde::de::DeserializeOwned>(&self) -> Vec<(Instant, T)> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|(at, payload)| (*at, serde_json::from_slice(payload).unwrap()))
            .collect()
    }
}

/// Every request answered by exactly one result: returns results per request key.
fn results_per_run(results: &[(Instant, CheckResult)]) -> HashMap<(String, u64), Vec<String>> {
    let mut per_run: HashMap<(String, u64), Vec<String>> = HashMap::new();
    for (_, result) in results {
        per_run
            .entry((result.check.clone(), result.run_id))
            .or_default()
            .push(result.agent.clone());
    }
    per_run
}

fn start_runner(name: &str, url: &str, workers: usize) -> Bastion {
    let listen = free_port();
    let config = format!(
        // HTTP workers only: a runner subscribes to the types it has workers for.
        "{}{}[runner.workers]\nhttp = {workers}\ntcp = 0\ndns = 0\ntls = 0\nicmp = 0\ngrpc = 0\nudp = 0\nwebsocket = 0\n",
        agent_section(name, listen),
        nats_section(url, "")
    );
    let mut runner = Bastion::start(name, listen, &config, &["run", "--role", "runner"]);
    runner.wait_ready();
    runner
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_nats_bus_carries_messages_queue_groups_and_requests() {
    let server = NatsServer::start();
    let bus = observer(&server.url()).await;
    let mut plain = bus.subscribe("t.results.>", None).await.unwrap();
    let mut first = bus.subscribe("t.checks.http", Some("g")).await.unwrap();
    let mut second = bus.subscribe("t.checks.http", Some("g")).await.unwrap();
    assert!(bus.settle().await, "the subscriptions are in effect");
    for n in 0..20u8 {
        bus.publish("t.checks.http", Bytes::from(vec![n]).into())
            .await
            .unwrap();
    }
    bus.publish("t.results.web", Bytes::from_static(b"r").into())
        .await
        .unwrap();
    let result = tokio::time::timeout(PATIENCE, plain.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&*result.subject, "t.results.web");
    let mut got = Vec::new();
    tokio::time::timeout(PATIENCE, async {
        while got.len() < 20 {
            tokio::select! {
                Some(message) = first.next() => got.push(message.payload.to_bytes().unwrap()[0]),
                Some(message) = second.next() => got.push(message.payload.to_bytes().unwrap()[0]),
            }
        }
    })
    .await
    .unwrap();
    got.sort_unstable();
    assert_eq!(got, (0..20).collect::<Vec<u8>>(), "each exactly once");
    // End markers instead of a pause: NATS keeps one publisher's order on each subscription,
    // so once a member has received a marker published after the 20, any second copy of them
    // for that member arrived before it. Each marker goes to one member, at random: publish
    // them one at a time until both members have had one.
    const END: u8 = u8::MAX;
    let mut ended = [false, false];
    let mut extra = Vec::new();
    tokio::time::timeout(PATIENCE, async {
        while ended != [true, true] {
            bus.publish("t.checks.http", Bytes::from_static(&[END]).into())
                .await
                .unwrap();
            loop {
                let (member, message) = tokio::select! {
                    Some(message) = first.next() => (0, message),
                    Some(message) = second.next() => (1, message),
                };
                if message.payload.to_bytes().unwrap()[..] == [END] {
                    ended[member] = true;
                    break;
                }
                extra.push(message.payload.to_bytes().unwrap()[0]);
            }
        }
    })
    .await
    .expect("both members get an end marker");
    assert_eq!(extra, Vec::<u8>::new(), "nothing more after the 20");

    let error = bus
        .request("t.test.http", Bytes::new(), Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(matches!(error, BusError::NoResponders(_)), "{error}");
    let mut responder = bus.subscribe("t.test.http", Some("g")).await.unwrap();
    let replier = Arc::clone(&bus);
    tokio::spawn(async move {
        let request = responder.next().await.unwrap();
        replier
            .publish(&request.reply.unwrap(), Bytes::from_static(b"pong").into())
            .await
            .unwrap();
    });
    assert!(bus.settle().await, "the subscriptions are in effect");
    let reply = bus
        .request("t.test.http", Bytes::from_static(b"ping"), PATIENCE)
        .await
        .unwrap();
    assert_eq!(&reply[..], b"pong");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checker_and_two_runners_share_the_work_exactly_once() {
    let server = NatsServer::start();
    let target = target().await;
    let bus = observer(&server.url()).await;
    let requests = Seen::watch(&bus, "bastion.checks.>").await;
    let results = Seen::watch(&bus, "bastion.results.>").await;
    let _r1 = start_runner("r1", &server.url(), 4);
    let _r2 = start_runner("r2", &server.url(), 4);
    let listen = free_port();
    let config = format!(
        "{}{}{}",
        agent_section("c1", listen),
        nats_section(&server.url(), ""),
        checks(6, target, "1s")
    );
    let mut checker = Bastion::start("c1", listen, &config, &["run", "--role", "checker"]);
    // Serving (its port was free) before anything is awaited of it; if its runs never come,
    // its log says why.
    checker.wait_ready();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while requests.len() < 40 {
        assert!(
            std::time::Instant::now() < deadline,
            "{} of 40 scheduled runs; the checker's log:\n{}",
            requests.len(),
            checker.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(checker.terminate().map(|s| s.code()), Some(Some(0)));
    let scheduled = requests.decoded::<CheckRequest>();
    eventually("a result for every run", PATIENCE, || {
        results.len() >= scheduled.len()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let per_run = results_per_run(&results.decoded::<CheckResult>());
    for (_, request) in &scheduled {
        let key = (request.check.name.clone(), request.run_id);
        assert_eq!(
            per_run.get(&key).map(Vec::len),
            Some(1),
            "run {key:?} has exactly one result"
        );
    }
    assert_eq!(
        per_run.len(),
        scheduled.len(),
        "no result without a request"
    );
    let mut per_runner: BTreeMap<&str, usize> = BTreeMap::new();
    for agents in per_run.values() {
        *per_runner.entry(agents[0].as_str()).or_default() += 1;
    }
    assert_eq!(
        per_runner.keys().copied().collect::<Vec<_>>(),
        ["r1", "r2"],
        "both runners got work: {per_runner:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_a_runner_dies_the_other_carries_on_and_no_check_goes_missing() {
    let server = NatsServer::start();
    let target = target().await;
    let bus = observer(&server.url()).await;
    let requests = Seen::watch(&bus, "bastion.checks.>").await;
    let results = Seen::watch(&bus, "bastion.results.>").await;
    let mut r1 = start_runner("r1", &server.url(), 4);
    let mut r2 = start_runner("r2", &server.url(), 4);
    let listen = free_port();
    let config = format!(
        "{}{}{}",
        agent_section("c1", listen),
        nats_section(&server.url(), ""),
        checks(4, target, "1s")
    );
    let mut checker = Bastion::start("c1", listen, &config, &["run", "--role", "checker"]);
    eventually("some runs", Duration::from_secs(60), || {
        requests.len() >= 12
    })
    .await;
    r1.kill();
    let killed = Instant::now();
    let before = requests.len();
    eventually("runs after the loss", Duration::from_secs(60), || {
        requests.len() >= before + 16
    })
    .await;
    assert_eq!(checker.terminate().map(|s| s.code()), Some(Some(0)));
    assert!(r2.alive(), "the surviving runner is still running");
    let scheduled = requests.decoded::<CheckRequest>();
    // Requests sent a moment after the kill reach only the survivor; the server has dropped
    // the dead connection by then.
    let after: Vec<_> = scheduled
        .iter()
        .filter(|(at, _)| *at > killed + Duration::from_secs(1))
        .collect();
    assert!(after.len() >= 8, "{} runs after the loss", after.len());
    eventually("results of the runs after the loss", PATIENCE, || {
        let per_run = results_per_run(&results.decoded::<CheckResult>());
        after
            .iter()
            .all(|(_, r)| per_run.contains_key(&(r.check.name.clone(), r.run_id)))
    })
    .await;
    let per_run = results_per_run(&results.decoded::<CheckResult>());
    for (_, request) in &after {
        let agents = &per_run[&(request.check.name.clone(), request.run_id)];
        assert_eq!(agents, &vec!["r2".to_string()], "exactly one, from r2");
    }
    assert!(
        per_run.values().all(|agents| agents.len() == 1),
        "no run answered twice"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_restart_is_survived_and_results_resume() {
    let mut server = NatsServer::start();
    let target = target().await;
    let bus = observer(&server.url()).await;
    let results = Seen::watch(&bus, "bastion.results.>").await;
    let runner = start_runner("r1", &server.url(), 4);
    let listen = free_port();
    let config = format!(
        "{}{}{}",
        agent_section("c1", listen),
        nats_section(&server.url(), ""),
        checks(2, target, "1s")
    );
    let mut checker = Bastion::start("c1", listen, &config, &["run", "--role", "checker"]);
    checker.wait_ready();
    eventually("first results", Duration::from_secs(60), || {
        results.len() >= 2
    })
    .await;

    server.stop();
    eventually("readyz to report the lost bus", PATIENCE, || {
        http_get_blocking(runner.listen, "/readyz").map(|(status, _)| status) == Some(503)
    })
    .await;
    assert_eq!(checker.sample("bastion_bus_connected"), Some(0.0));
    // The schedule goes on; requests that cannot be sent are counted, not queued.
    eventually("refused publishes to be counted", PATIENCE, || {
        checker
            .sample("bastion_bus_publish_errors_total{subject=\"checks\"}")
            .unwrap_or(0.0)
            >= 1.0
    })
    .await;

    server.resume();
    let resumed = Instant::now();
    // Every client reconnects by itself, the watching one included.
    eventually("results after the restart", PATIENCE, || {
        results
            .decoded::<CheckResult>()
            .iter()
            .any(|(at, _)| *at > resumed)
    })
    .await;
    let succeeded = format!("probe_success{{check=\"web-0\",target=\"{target}\"}}");
    eventually("the checker to record them", PATIENCE, || {
        checker.sample(&succeeded) == Some(1.0)
    })
    .await;
    assert_eq!(
        http_get_blocking(runner.listen, "/readyz").map(|(s, _)| s),
        Some(200)
    );
    for process in [&checker, &runner] {
        assert!(
            process
                .sample("bastion_bus_reconnects_total")
                .unwrap_or(0.0)
                >= 1.0,
            "{} counted its reconnect",
            process.name
        );
        assert_eq!(process.sample("bastion_bus_connected"), Some(1.0));
    }
    assert!(checker.alive());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_messages_are_counted_and_dropped_and_good_ones_still_run() {
    // The server must carry a payload larger than bastion accepts.
    let server = NatsServer::start_with("max_payload: 4MB");
    let target = target().await;
    let mut runner = start_runner("r1", &server.url(), 2);
    let bus = observer(&server.url()).await;
    let results = Seen::watch(&bus, "bastion.results.>").await;
    let good = CheckRequest {
        version: 1,
        run_id: 7,
        location: None,
        scheduled_at: std::time::SystemTime::now(),
        dispatch_deadline: None,
        check: std::sync::Arc::new(config(&checks(1, target, "10s")).checks[0].clone()),
        discovered: None,
    };
    let good_json = serde_json::to_vec(&good).unwrap();
    let wrong_version =
        String::from_utf8(good_json.clone())
            .unwrap()
            .replacen("\"version\":1", "\"version\":2", 1);
    let mut too_large = good_json.clone();
    too_large.truncate(good_json.len() - 1);
    too_large.extend(std::iter::repeat_n(b' ', 1024 * 1024 + 10));
    too_large.push(b'}');
    for payload in [
        Bytes::from_static(b"\x00\xffnot json"),
        Bytes::from(wrong_version),
        Bytes::from(too_large),
        Bytes::from(good_json),
    ] {
        bus.publish("bastion.checks.http", payload.into())
            .await
            .unwrap();
    }
    eventually("the good request's result", PATIENCE, || results.len() == 1).await;
    let result = &results.decoded::<CheckResult>()[0].1;
    assert_eq!((result.run_id, result.passing), (7, true));
    for reason in ["json", "version", "too_large"] {
        assert_eq!(
            runner.sample(&format!(
                "bastion_bus_decode_errors_total{{reason=\"{reason}\"}}"
            )),
            Some(1.0),
            "{reason}"
        );
    }
    assert!(runner.alive());
    assert!(runner.log().contains("dropping a bad check request"));
}

fn secret_file(dir: &std::path::Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_auth_works_and_a_wrong_token_fails_clearly() {
    let server = NatsServer::start_with("authorization {\n  token: \"t0ken-s3cret\"\n}");
    let target = target().await;
    let dir = scratch_dir("token");
    let good = secret_file(&dir, "good", "t0ken-s3cret\n");
    let bad = secret_file(&dir, "bad", "wr0ng-t0ken-value\n");

    let listen = free_port();
    let config = format!(
        "{}{}{}",
        agent_section("a1", listen),
        nats_section(&server.url(), &format!("token_file = \"{good}\"")),
        checks(1, target, "1s")
    );
    let mut agent = Bastion::start("a1", listen, &config, &["run"]);
    agent.wait_ready();
    let succeeded = format!("probe_success{{check=\"web-0\",target=\"{target}\"}}");
    eventually(
        "a result over the authenticated bus",
        Duration::from_secs(60),
        || agent.sample(&succeeded) == Some(1.0),
    )
    .await;

    let listen = free_port();
    let config = format!(
        "{}{}{}",
        agent_section("a2", listen),
        nats_section(&server.url(), &format!("token_file = \"{bad}\"")),
        checks(1, target, "1s")
    );
    let mut refused = Bastion::start("a2", listen, &config, &["run"]);
    let status = refused
        .wait_exit(PATIENCE)
        .expect("a wrong token ends the process");
    assert_eq!(status.code(), Some(1));
    let log = refused.log();
    assert!(log.contains("refused bastion's credentials"), "{log}");
    assert!(
        !log.contains("wr0ng-t0ken-value"),
        "the secret is never logged: {log}"
    );
    assert!(
        !agent.log().contains("t0ken-s3cret"),
        "the secret is never logged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_nkey_seed_file_authenticates_and_an_unknown_nkey_is_refused() {
    let user = nkeys::KeyPair::new_user();
    let stranger = nkeys::KeyPair::new_user();
    let server = NatsServer::start_with(&format!(
        "authorization {{\n  users = [ {{ nkey: {} }} ]\n}}",
        user.public_key()
    ));
    let target = target().await;
    let dir = scratch_dir("nkey");
    let seed = secret_file(&dir, "user.nk", &user.seed().unwrap());
    let wrong_seed = stranger.seed().unwrap();
    let wrong = secret_file(&dir, "stranger.nk", &wrong_seed);

    let listen = free_port();
    let config = format!(
        "{}{}{}",
        agent_section("a1", listen),
        nats_section(&server.url(), &format!("nkey_seed_file = \"{seed}\"")),
        checks(1, target, "1s")
    );
    let mut agent = Bastion::start("a1", listen, &config, &["run"]);
    agent.wait_ready();
    let succeeded = format!("probe_success{{check=\"web-0\",target=\"{target}\"}}");
    eventually(
        "a result over the nkey-authenticated bus",
        Duration::from_secs(60),
        || agent.sample(&succeeded) == Some(1.0),
    )
    .await;

    let listen = free_port();
    let config = format!(
        "{}{}",
        agent_section("a2", listen),
        nats_section(&server.url(), &format!("nkey_seed_file = \"{wrong}\""))
    );
    let mut refused = Bastion::start("a2", listen, &config, &["run"]);
    let status = refused
        .wait_exit(PATIENCE)
        .expect("an unknown nkey ends the process");
    assert_eq!(status.code(), Some(1));
    let log = refused.log();
    assert!(log.contains("refused bastion's credentials"), "{log}");
    assert!(!log.contains(&wrong_seed), "the seed is never logged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_and_password_over_tls_work_and_a_wrong_password_fails_clearly() {
    let dir = scratch_dir("tls");
    let certified =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .unwrap();
    let cert = secret_file(&dir, "server.pem", &certified.cert.pem());
    let key = secret_file(&dir, "server.key", &certified.signing_key.serialize_pem());
    let server = NatsServer::start_with(&format!(
        "tls {{\n  cert_file: \"{cert}\"\n  key_file: \"{key}\"\n}}\nauthorization {{\n  user: alice\n  password: \"pa55-w0rd\"\n}}"
    ));
    let url = format!("tls://127.0.0.1:{}", server.port);
    let target = target().await;
    let password = secret_file(&dir, "password", "pa55-w0rd");
    let wrong = secret_file(&dir, "wrong", "not-the-pa55");

    let listen = free_port();
    let tls = format!(
        "user = \"alice\"\npassword_file = \"{password}\"\ntls = {{ ca_file = \"{cert}\" }}"
    );
    let config = format!(
        "{}{}{}",
        agent_section("a1", listen),
        nats_section(&url, &tls),
        checks(1, target, "1s")
    );
    let mut agent = Bastion::start("a1", listen, &config, &["run"]);
    agent.wait_ready();
    let succeeded = format!("probe_success{{check=\"web-0\",target=\"{target}\"}}");
    eventually("a result over TLS", Duration::from_secs(60), || {
        agent.sample(&succeeded) == Some(1.0)
    })
    .await;

    let listen = free_port();
    let config = format!(
        "{}{}{}",
        agent_section("a2", listen),
        nats_section(
            &url,
            &format!(
                "user = \"alice\"\npassword_file = \"{wrong}\"\ntls = {{ ca_file = \"{cert}\" }}"
            )
        ),
        checks(1, target, "1s")
    );
    let mut refused = Bastion::start("a2", listen, &config, &["run"]);
    let status = refused
        .wait_exit(PATIENCE)
        .expect("a wrong password ends the process");
    assert_eq!(status.code(), Some(1));
    let log = refused.log();
    assert!(log.contains("refused bastion's credentials"), "{log}");
    assert!(!log.contains("not-the-pa55") && !agent.log().contains("pa55-w0rd"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_server_it_retries_until_one_appears_or_the_connect_timeout() {
    let mut server = NatsServer::start();
    server.stop();
    let listen = free_port();
    let config = format!(
        "{}{}",
        agent_section("a1", listen),
        nats_section(&server.url(), "")
    );
    let mut impatient = Bastion::start(
        "impatient",
        listen,
        &config,
        &["run", "--bus-connect-timeout", "1s"],
    );
    let status = impatient.wait_exit(PATIENCE).expect("gives up");
    assert_eq!(status.code(), Some(1));
    assert!(
        impatient.log().contains("answered within 1s"),
        "{}",
        impatient.log()
    );

    let mut patient = Bastion::start("patient", listen, &config, &["run"]);
    // The daemon's own word that it tried again, three times, rather than a pause.
    eventually("three retries", PATIENCE, || {
        patient
            .log()
            .matches("NATS is not reachable yet; retrying")
            .count()
            >= 3
    })
    .await;
    assert!(patient.alive(), "keeps trying: {}", patient.log());
    server.resume();
    patient.wait_ready();
    eventually("ready once connected", PATIENCE, || {
        http_get_blocking(listen, "/readyz").map(|(s, _)| s) == Some(200)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ha_checkers_schedule_once_and_the_standby_takes_over_within_the_ttl() {
    let server = NatsServer::start();
    let target = target().await;
    let bus = observer(&server.url()).await;
    let requests = Seen::watch(&bus, "bastion.checks.>").await;
    let _runner = start_runner("r1", &server.url(), 4);
    let ttl = Duration::from_secs(3);
    let mut checkers: Vec<Bastion> = ["c1", "c2"]
        .iter()
        .map(|name| {
            let listen = free_port();
            let config = format!(
                "{}{}[checker]\nha = true\nlease_ttl = \"3s\"\n{}",
                agent_section(name, listen),
                nats_section(&server.url(), ""),
                checks(3, target, "1s")
            );
            Bastion::start(name, listen, &config, &["run", "--role", "checker"])
        })
        .collect();
    for checker in &mut checkers {
        checker.wait_ready();
    }
    eventually("steady scheduling", Duration::from_secs(60), || {
        requests.len() >= 15
    })
    .await;
    let leaders: Vec<f64> = checkers
        .iter()
        .map(|c| c.sample("bastion_checker_leader").unwrap_or(-1.0))
        .collect();
    assert!(
        leaders == [1.0, 0.0] || leaders == [0.0, 1.0],
        "exactly one leader: {leaders:?}"
    );
    let leader = leaders.iter().position(|l| *l == 1.0).unwrap();
    checkers[leader].kill();
    let killed = Instant::now();
    let before = requests.len();
    eventually("the standby to take over", Duration::from_secs(60), || {
        requests.len() > before + 3
    })
    .await;
    let standby = &checkers[1 - leader];
    assert_eq!(standby.sample("bastion_checker_leader"), Some(1.0));
    eventually(
        "steady scheduling by the new leader",
        Duration::from_secs(60),
        || requests.len() >= before + 15,
    )
    .await;

    let seen = requests.decoded::<CheckRequest>();
    let first_after = seen
        .iter()
        .map(|(at, _)| *at)
        .find(|at| *at > killed)
        .unwrap();
    let gap = first_after - killed;
    assert!(
        gap <= ttl + Duration::from_secs(2),
        "took over in {gap:?}, the TTL is {ttl:?}"
    );
    // No check was ever scheduled twice: per check, due times a full interval apart.
    let mut per_check: BTreeMap<String, Vec<std::time::SystemTime>> = BTreeMap::new();
    for (_, request) in &seen {
        per_check
            .entry(request.check.name.clone())
            .or_default()
            .push(request.scheduled_at);
    }
    for (check, mut times) in per_check {
        times.sort();
        for pair in times.windows(2) {
            let apart = pair[1].duration_since(pair[0]).unwrap();
            assert!(
                apart >= Duration::from_millis(900),
                "{check} scheduled twice within {apart:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_results_are_kept_in_the_stream_for_a_late_consumer() {
    let mut server = NatsServer::start();
    let target = target().await;
    let listen = free_port();
    let config = format!(
        "{}{}{}",
        agent_section("a1", listen),
        nats_section(
            &server.url(),
            "results_stream = true\nresults_max_age = \"1h\""
        ),
        checks(2, target, "1s")
    );
    let mut agent = Bastion::start("a1", listen, &config, &["run"]);
    agent.wait_ready();
    eventually("three runs of each check", Duration::from_secs(60), || {
        ["web-0", "web-1"].iter().all(|check| {
            agent
                .sample(&format!(
                    "bastion_check_duration_seconds_count{{check=\"{check}\",type=\"http\"}}"
                ))
                .unwrap_or(0.0)
                >= 3.0
        })
    })
    .await;
    assert_eq!(agent.terminate().map(|s| s.code()), Some(Some(0)));
    // The stream is on disk: it outlives the server too.
    server.restart();

    let client = async_nats::connect(server.url()).await.unwrap();
    let jetstream = async_nats::jetstream::new(client);
    let stream = jetstream.get_stream("BASTION_RESULTS").await.unwrap();
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            deliver_policy: async_nats::jetstream::consumer::DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut batch = consumer
        .fetch()
        .max_messages(1000)
        .expires(Duration::from_secs(2))
        .messages()
        .await
        .unwrap();
    let mut stored: Vec<CheckResult> = Vec::new();
    use futures_util::StreamExt;
    while let Some(message) = batch.next().await {
        let message = message.unwrap();
        stored.push(serde_json::from_slice(&message.payload).unwrap());
    }
    let mut per_check: BTreeMap<&str, usize> = BTreeMap::new();
    for result in &stored {
        *per_check.entry(result.check.as_str()).or_default() += 1;
    }
    assert!(
        per_check.get("web-0").copied().unwrap_or(0) >= 3
            && per_check.get("web-1").copied().unwrap_or(0) >= 3,
        "{per_check:?}"
    );
    let mut runs: Vec<(&str, u64)> = stored
        .iter()
        .map(|r| (r.check.as_str(), r.run_id))
        .collect();
    let total = runs.len();
    runs.sort_unstable();
    runs.dedup();
    assert_eq!(runs.len(), total, "each result stored once");
    assert!(stored.iter().all(|r| r.passing && r.agent == "a1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runners_send_heartbeats_and_once_remote_runs_on_them() {
    let server = NatsServer::start();
    let target = target().await;
    let bus = observer(&server.url()).await;
    let heartbeats = Seen::watch(&bus, "bastion.heartbeat.>").await;

    let dir = scratch_dir("remote");
    let config_path = dir.join("checks.toml");
    std::fs::write(
        &config_path,
        format!(
            "{}{}",
            nats_section(&server.url(), ""),
            checks(2, target, "1m")
        ),
    )
    .unwrap();
    let once_remote = |path: std::path::PathBuf| {
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_bastion"))
                .args(["once", "--remote", "--json", "--config"])
                .arg(path)
                .env_remove("BASTION_CONFIG")
                .output()
                .unwrap()
        })
    };
    let nobody = once_remote(config_path.clone()).await.unwrap();
    assert_eq!(nobody.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&nobody.stderr);
    assert!(
        stderr.contains("no runner answers `http` checks"),
        "{stderr}"
    );

    let _runner = start_runner("runner-7.example", &server.url(), 3);
    eventually("a heartbeat", PATIENCE, || heartbeats.len() >= 1).await;
    let (_, beat) = heartbeats.decoded::<Heartbeat>().remove(0);
    assert_eq!(beat.agent, "runner-7.example");
    assert_eq!(beat.role, "runner");
    assert_eq!(beat.workers.len(), 1);
    let usage = beat.workers.values().next().unwrap();
    assert_eq!((usage.busy, usage.total), (0, 3));

    let output = once_remote(config_path).await.unwrap();
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let results: Vec<CheckResult> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(
        results.iter().map(|r| r.check.as_str()).collect::<Vec<_>>(),
        ["web-0", "web-1"]
    );
    assert!(results
        .iter()
        .all(|r| r.agent == "runner-7.example" && r.passing));
}

/// The NATS bus of a test, its metrics at hand.
async fn bus_with_metrics(
    url: &str,
    extra: &str,
) -> (NatsBus, Arc<bastion_agent::metrics::Metrics>) {
    let config: bastion_agent::config::NatsConfig =
        toml::from_str(&format!("url = \"{url}\"\n{extra}")).expect("nats config");
    let metrics = Arc::new(bastion_agent::metrics::Metrics::new());
    let bus = NatsBus::connect(&config, "t", &metrics, Some(PATIENCE))
        .await
        .expect("the bus connects");
    (bus, metrics)
}

fn dropped(metrics: &bastion_agent::metrics::Metrics, reason: &str) -> f64 {
    let line = format!("bastion_bus_dropped_total{{reason=\"{reason}\"}} ");
    metrics
        .render()
        .lines()
        .find_map(|l| l.strip_prefix(line.as_str()).map(|v| v.parse().unwrap()))
        .unwrap_or(0.0)
}

/// Creates `BASTION_RESULTS` with bastion's name and subjects and `limits` before bastion
/// starts, as an operator would; returns a JetStream context to read it back with.
async fn results_stream_made_before(
    server: &NatsServer,
    limits: async_nats::jetstream::stream::Config,
) -> async_nats::jetstream::Context {
    let client = async_nats::connect(server.url()).await.unwrap();
    let jetstream = async_nats::jetstream::new(client);
    jetstream
        .create_stream(async_nats::jetstream::stream::Config {
            name: "BASTION_RESULTS".to_string(),
            subjects: vec!["bastion.results.>".to_string()],
            ..limits
        })
        .await
        .unwrap();
    jetstream
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_the_stream_keeps_refusing_holds_back_no_later_result() {
    let server = NatsServer::start();
    // The stream exists before bastion starts, with bastion's subjects and age but a message
    // size limit that one result exceeds; bastion keeps an existing stream's other limits.
    let jetstream = results_stream_made_before(
        &server,
        async_nats::jetstream::stream::Config {
            max_age: Duration::from_secs(3600),
            max_message_size: 4096,
            ..Default::default()
        },
    )
    .await;
    let (bus, metrics) = bus_with_metrics(
        &server.url(),
        "results_stream = true\nresults_max_age = \"1h\"",
    )
    .await;
    bus.publish("bastion.results.big", Bytes::from(vec![b'x'; 8192]).into())
        .await
        .unwrap();
    for n in 0..20 {
        bus.publish(
            &format!("bastion.results.small-{n}"),
            Bytes::from(format!("{{\"n\":{n}}}")).into(),
        )
        .await
        .unwrap();
    }
    // Every later result is acknowledged while the big one is still being retried.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let mut stream = jetstream.get_stream("BASTION_RESULTS").await.unwrap();
        let stored = stream.info().await.unwrap().state.messages;
        if stored == 20 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {stored} of the 20 later results reached the stream"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The refused one is dropped in the end, and counted.
    eventually(
        "the refused result counted",
        Duration::from_secs(60),
        || dropped(&metrics, "results_rejected") == 1.0,
    )
    .await;
    let mut stream = jetstream.get_stream("BASTION_RESULTS").await.unwrap();
    assert_eq!(stream.info().await.unwrap().state.messages, 20);
}

/// A stream whose age bastion changes keeps the limits an operator set on it: the update
/// starts from the stream's own configuration, not from bastion's defaults.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_updated_results_stream_keeps_the_operators_own_limits() {
    let server = NatsServer::start();
    let jetstream = results_stream_made_before(
        &server,
        async_nats::jetstream::stream::Config {
            max_age: Duration::from_secs(7200),
            max_message_size: 65_536,
            max_bytes: 64 * 1024 * 1024,
            ..Default::default()
        },
    )
    .await;
    let (_bus, _metrics) = bus_with_metrics(
        &server.url(),
        "results_stream = true\nresults_max_age = \"1h\"",
    )
    .await;
    let mut stream = jetstream.get_stream("BASTION_RESULTS").await.unwrap();
    let config = stream.info().await.unwrap().config.clone();
    assert_eq!(
        config.max_age,
        Duration::from_secs(3600),
        "bastion's age applied"
    );
    assert_eq!(
        config.max_message_size, 65_536,
        "the operator's message limit kept"
    );
    assert_eq!(
        config.max_bytes,
        64 * 1024 * 1024,
        "the operator's size limit kept"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_the_client_refuses_after_the_outbox_is_counted() {
    let server = NatsServer::start_with("max_payload: 4096");
    let (bus, metrics) = bus_with_metrics(&server.url(), "").await;
    let watcher = observer(&server.url()).await;
    let seen = Seen::watch(&watcher, "bastion.checks.>").await;
    // Accepted into the outbox; the connection refuses it only later.
    bus.publish("bastion.checks.http", Bytes::from(vec![b'x'; 8192]).into())
        .await
        .unwrap();
    eventually("the refused publish counted", PATIENCE, || {
        dropped(&metrics, "outbox_too_large") == 1.0
    })
    .await;
    // The bus goes on after the refusal. Core NATS delivers at most once (CI saw one small
    // message published right behind the refused one lost once against nats-server 2.15), so
    // the later message is published again until it arrives: what this asserts is that the
    // publisher still delivers, not that no core message is ever lost.
    let deadline = Instant::now() + PATIENCE;
    loop {
        bus.publish("bastion.checks.http", Bytes::from_static(b"small").into())
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        if seen
            .0
            .lock()
            .unwrap()
            .iter()
            .any(|(_, p)| p.as_ref() == b"small")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no message delivered after the refused one"
        );
    }
    assert_eq!(dropped(&metrics, "outbox_too_large"), 1.0);
}

/// The checks a `/metrics` text has `bastion_check_duration_seconds` series for.
fn checks_with_durations(text: &str) -> std::collections::BTreeSet<String> {
    text.lines()
        .filter_map(|line| line.strip_prefix("bastion_check_duration_seconds_count{check=\""))
        .filter_map(|rest| rest.split('"').next())
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_forgets_the_series_of_checks_that_stop_arriving() {
    let server = NatsServer::start();
    let target = target().await;
    let bus = observer(&server.url()).await;
    let listen = free_port();
    // Checks every second: their series go 3 s (three intervals) after their last run.
    let config_text = format!(
        "{}{}[runner]\nforget_checks_after = \"2s\"\n",
        agent_section("r1", listen),
        nats_section(&server.url(), "")
    );
    let mut runner = Bastion::start("r1", listen, &config_text, &["run", "--role", "runner"]);
    runner.wait_ready();
    let definitions = config(&checks(1000, target, "1s")).checks;
    let send = |check: &bastion_agent::config::CheckConfig| {
        let request = CheckRequest {
            version: 1,
            run_id: 1,
            location: None,
            scheduled_at: std::time::SystemTime::now(),
            dispatch_deadline: None,
            check: std::sync::Arc::new(check.clone()),
            discovered: None,
        };
        Bytes::from(serde_json::to_vec(&request).unwrap())
    };
    for check in &definitions {
        bus.publish("bastion.checks.http", send(check).into())
            .await
            .unwrap();
    }
    eventually("series for 1,000 checks", Duration::from_secs(60), || {
        runner
            .metrics()
            .is_some_and(|text| checks_with_durations(&text).len() == 1000)
    })
    .await;
    // From now on only ten of them arrive, each second, for longer than the expiry.
    let kept: std::collections::BTreeSet<String> =
        definitions[..10].iter().map(|c| c.name.clone()).collect();
    let until = Instant::now() + Duration::from_secs(6);
    while Instant::now() < until {
        for check in &definitions[..10] {
            bus.publish("bastion.checks.http", send(check).into())
                .await
                .unwrap();
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let text = runner.metrics().expect("the runner serves /metrics");
    assert_eq!(checks_with_durations(&text), kept);
    assert!(
        text.contains("bastion_check_series_forgotten_total{reason=\"expired\"} 990"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settle_goes_through_the_server_and_a_message_published_after_it_arrives() {
    let server = NatsServer::start();
    // Another client sees the settle message pass: the round trip went through the server.
    let watcher = observer(&server.url()).await;
    let mut passing = watcher.subscribe("bastion.settle.>", None).await.unwrap();
    assert!(watcher.settle().await, "the watcher's own round trip");
    let _ = tokio::time::timeout(PATIENCE, passing.next()).await;
    let bus = observer(&server.url()).await;
    let mut results = bus.subscribe("bastion.results.>", None).await.unwrap();
    assert!(bus.settle().await, "the round trip came back");
    let seen = tokio::time::timeout(PATIENCE, passing.next())
        .await
        .expect("the settle message passed through the server")
        .expect("a message");
    assert!(
        seen.subject.starts_with("bastion.settle."),
        "{}",
        seen.subject
    );
    assert!(seen.payload.to_bytes().unwrap().is_empty());
    // A message another client publishes at once reaches the settled subscription.
    let publisher = observer(&server.url()).await;
    publisher
        .publish("bastion.results.web", Bytes::from_static(b"r").into())
        .await
        .unwrap();
    let result = tokio::time::timeout(PATIENCE, results.next())
        .await
        .expect("the result arrives")
        .expect("a message");
    assert_eq!(&*result.subject, "bastion.results.web");
}
