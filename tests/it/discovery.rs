//! Labels and discovered instances: a check's `labels` on its series and results, and
//! `instances_from` (a file_sd file changed while the daemon runs, DNS SRV from a responder the
//! test starts), each read back from `/api/v1/checks` and `/metrics`.

use crate::common::nats::free_port;
use crate::common::process::{scratch_dir, Bastion};
use crate::common::{agent_scrape, assert_config_errors, eventually_blocking, metric, PATIENCE};
use tokio::net::TcpListener;

/// Accepts and closes every connection: a tcp check with no steps passes.
fn serve_accepting(listener: TcpListener) {
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            drop(stream);
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_labels_reach_series_and_results() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    serve_accepting(listener);
    let (checks, text) = agent_scrape(&format!(
        r#"
        [[checks]]
        name = "labelled"
        type = "tcp"
        interval = "1s"
        timeout = "900ms"
        address = "{address}"
        labels = {{ team = "payments", env = "prod" }}
        "#
    ))
    .await;
    let response = &checks[0]["latest"]["responses"][0];
    assert_eq!(response["labels"]["team"], "payments", "{checks}");
    assert_eq!(response["labels"]["env"], "prod", "{checks}");
    let labels = format!("check=\"labelled\",target=\"{address}\",env=\"prod\",team=\"payments\"");
    assert_eq!(
        metric(&text, &format!("probe_success{{{labels}}}")),
        Some(1.0),
        "{text}"
    );
    let phase = format!("probe_tcp_duration_seconds{{{labels},phase=\"connect\"}}");
    assert!(metric(&text, &phase).is_some(), "{phase} missing\n{text}");
}

#[test]
fn bad_labels_are_refused_with_the_rule_they_break() {
    let base = r#"
        [[checks]]
        name = "web"
        type = "tcp"
        interval = "10s"
        address = "127.0.0.1:80"
    "#;
    assert_config_errors(
        base,
        &[
            (
                "labels = { \"2team\" = \"x\" }",
                "check `web`: labels: label name `2team` is not a Prometheus label name",
            ),
            (
                "labels = { \"a-b\" = \"x\" }",
                "label name `a-b` is not a Prometheus label name",
            ),
            (
                "labels = { __meta = \"x\" }",
                "label name `__meta` starts with `__`",
            ),
            (
                "labels = { target = \"x\" }",
                "label name `target` is one bastion sets itself",
            ),
            (
                "labels = { check = \"x\" }",
                "label name `check` is one bastion sets itself",
            ),
        ],
    );
}

/// A listener on `ip` that accepts and closes every connection, on a thread of its own.
fn accepting(ip: &str) -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind((ip, 0)).unwrap();
    let address = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            drop(stream);
        }
    });
    address
}

/// Writes `text` to `path` in one step (a rename), as config management tools do.
fn replace_file(path: &std::path::Path, text: &str) {
    let next = path.with_extension("next");
    std::fs::write(&next, text).unwrap();
    std::fs::rename(&next, path).unwrap();
}

/// The `probe_success` samples of check `disc`, one line each.
fn disc_series(agent: &Bastion) -> Vec<String> {
    agent
        .metrics()
        .unwrap_or_default()
        .lines()
        .filter(|line| line.starts_with("probe_success{check=\"disc\""))
        .map(str::to_string)
        .collect()
}

fn success_line(target: std::net::SocketAddr, zone: &str) -> String {
    format!("probe_success{{check=\"disc\",target=\"{target}\",team=\"web\",zone=\"{zone}\"}} 1.0")
}

#[test]
fn file_discovery_follows_the_file_and_keeps_the_last_good_list() {
    let a = accepting("127.0.0.2");
    let b = accepting("127.0.0.3");
    let c = accepting("127.0.0.4");
    let dir = scratch_dir("file-sd");
    let targets = dir.join("web.json");
    replace_file(
        &targets,
        &format!(
            r#"[{{"targets": ["{a}"], "labels": {{"zone": "a"}}}},
                {{"targets": ["{b}"], "labels": {{"zone": "b"}}}}]"#
        ),
    );
    let listen = free_port();
    let config = format!(
        "[agent]\nid = \"disc\"\nlisten = \"127.0.0.1:{listen}\"\n\
         [[checks]]\nname = \"disc\"\ntype = \"tcp\"\ninterval = \"1s\"\ntimeout = \"900ms\"\n\
         address = \"127.0.0.1:9\"\nlabels = {{ team = \"web\" }}\n\
         instances_from = {{ file = \"{}\" }}\n",
        targets.display()
    );
    let mut agent = Bastion::start("file-sd", listen, &config, &["run"]);
    agent.wait_ready();
    let wanted = |agent: &Bastion, present: &[String]| {
        let series = disc_series(agent);
        present.iter().all(|line| series.contains(line)) && series.len() == present.len()
    };
    let first = [success_line(a, "a"), success_line(b, "b")];
    eventually_blocking("both instances of the file", PATIENCE, || {
        wanted(&agent, &first)
    });
    assert_eq!(
        agent.sample("bastion_discovery_errors_total{check=\"disc\"}"),
        Some(0.0)
    );

    // A changed file changes the instances: a's series vanish, c's appear.
    replace_file(
        &targets,
        &format!(r#"[{{"targets": ["{b}", "{c}"], "labels": {{"zone": "b"}}}}]"#),
    );
    let second = [success_line(b, "b"), success_line(c, "b")];
    eventually_blocking("the changed file's instances", PATIENCE, || {
        wanted(&agent, &second)
    });

    // A broken file keeps the last good list, says why and is counted once.
    replace_file(
        &targets,
        r#"[{"targets": ["10.0.0.1"], "labels": {"check": "x"}}]"#,
    );
    eventually_blocking("the broken file counted", PATIENCE, || {
        agent.sample("bastion_discovery_errors_total{check=\"disc\"}") == Some(1.0)
    });
    let scheduled = |agent: &Bastion| {
        agent
            .sample("bastion_checks_scheduled_total{check=\"disc\"}")
            .unwrap_or(0.0)
    };
    let before = scheduled(&agent);
    eventually_blocking("two more runs", PATIENCE, || {
        scheduled(&agent) >= before + 2.0
    });
    assert!(wanted(&agent, &second), "{:?}", disc_series(&agent));
    assert_eq!(
        agent.sample("bastion_discovery_errors_total{check=\"disc\"}"),
        Some(1.0),
        "a file that stays broken is counted once"
    );
    let log = agent.log();
    assert!(
        log.contains("discovery file not used")
            && log.contains("label name `check` is one bastion sets itself"),
        "{log}"
    );

    // A missing file is a second problem; the list still stays.
    std::fs::remove_file(&targets).unwrap();
    eventually_blocking("the missing file counted", PATIENCE, || {
        agent.sample("bastion_discovery_errors_total{check=\"disc\"}") == Some(2.0)
    });
    assert!(wanted(&agent, &second), "{:?}", disc_series(&agent));

    // Fixed again: the file's one instance, and nothing else.
    replace_file(
        &targets,
        &format!(r#"[{{"targets": ["{a}"], "labels": {{"zone": "a"}}}}]"#),
    );
    let last = [success_line(a, "a")];
    eventually_blocking("the fixed file's instance", PATIENCE, || {
        wanted(&agent, &last)
    });
}

/// What the SRV responder answers now: the SRV targets of `_web._tcp.srv.test.` (each
/// `<name>.srv.test.` with a port), and the SRV queries it has seen.
#[derive(Default)]
struct SrvZone {
    targets: std::sync::Mutex<Vec<(&'static str, u16)>>,
    srv_queries: std::sync::atomic::AtomicUsize,
}

/// Answers SRV for `_web._tcp.srv.test.` (TTL 2s) from `zone`, and A for `a.srv.test.`
/// (127.0.0.2) and `b.srv.test.` (127.0.0.3); anything else NXDOMAIN. UDP only.
async fn serve_srv(zone: std::sync::Arc<SrvZone>) -> std::net::SocketAddr {
    use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
    use hickory_proto::rr::rdata::{A, SRV};
    use hickory_proto::rr::{Name, RData, Record, RecordType};
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let address = socket.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buffer = [0u8; 1500];
        while let Ok((length, peer)) = socket.recv_from(&mut buffer).await {
            let Ok(query) = Message::from_vec(&buffer[..length]) else {
                continue;
            };
            let Some(question) = query.queries.first().cloned() else {
                continue;
            };
            let mut answer = Message::new(query.metadata.id, MessageType::Response, OpCode::Query);
            answer.metadata.recursion_desired = query.metadata.recursion_desired;
            answer.metadata.authoritative = true;
            answer.add_query(question.clone());
            let owner = question.name().clone();
            let name = owner.to_ascii().to_lowercase();
            match (name.as_str(), question.query_type()) {
                ("_web._tcp.srv.test.", RecordType::SRV) => {
                    zone.srv_queries
                        .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    for (target, port) in zone.targets.lock().unwrap().iter() {
                        let target = Name::from_ascii(format!("{target}.srv.test.")).unwrap();
                        answer.add_answer(Record::from_rdata(
                            owner.clone(),
                            2,
                            RData::SRV(SRV::new(10, 5, *port, target)),
                        ));
                    }
                }
                ("a.srv.test.", RecordType::A) => {
                    answer.add_answer(Record::from_rdata(
                        owner,
                        60,
                        RData::A(A::new(127, 0, 0, 2)),
                    ));
                }
                ("b.srv.test.", RecordType::A) => {
                    answer.add_answer(Record::from_rdata(
                        owner,
                        60,
                        RData::A(A::new(127, 0, 0, 3)),
                    ));
                }
                ("a.srv.test." | "b.srv.test.", _) => {}
                _ => answer.metadata.response_code = ResponseCode::NXDomain,
            }
            if let Ok(bytes) = answer.to_vec() {
                let _ = socket.send_to(&bytes, peer).await;
            }
        }
    });
    address
}

fn srv_line(target: std::net::SocketAddr) -> String {
    format!("probe_success{{check=\"srv\",target=\"{target}\"}} 1.0")
}

#[test]
fn srv_discovery_follows_the_record_within_its_ttl() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let zone = std::sync::Arc::new(SrvZone::default());
    let dns = runtime.block_on(serve_srv(std::sync::Arc::clone(&zone)));
    let a = accepting("127.0.0.2");
    let b = accepting("127.0.0.3");
    *zone.targets.lock().unwrap() = vec![("a", a.port())];
    let listen = free_port();
    let config = format!(
        "[agent]\nid = \"srv\"\nlisten = \"127.0.0.1:{listen}\"\n\
         [runner]\ndns_servers = [\"{dns}\"]\n\
         [[checks]]\nname = \"srv\"\ntype = \"tcp\"\ninterval = \"1s\"\ntimeout = \"900ms\"\n\
         address = \"srv.test:9\"\ninstances_from = {{ srv = \"_web._tcp.srv.test\" }}\n"
    );
    let mut agent = Bastion::start("srv-sd", listen, &config, &["run"]);
    agent.wait_ready();
    let series = |agent: &Bastion| -> Vec<String> {
        agent
            .metrics()
            .unwrap_or_default()
            .lines()
            .filter(|line| line.starts_with("probe_success{check=\"srv\""))
            .map(str::to_string)
            .collect()
    };
    eventually_blocking("the SRV record's one instance", PATIENCE, || {
        series(&agent) == vec![srv_line(a)]
    });

    // The record changes: the next lookup, once the 2s TTL has passed, has both.
    *zone.targets.lock().unwrap() = vec![("a", a.port()), ("b", b.port())];
    eventually_blocking("both SRV instances", PATIENCE, || {
        let now = series(&agent);
        now.len() == 2 && now.contains(&srv_line(a)) && now.contains(&srv_line(b))
    });
    // The TTL was honoured: fewer lookups than runs.
    let runs = agent
        .sample("bastion_checks_scheduled_total{check=\"srv\"}")
        .unwrap_or(0.0);
    let lookups = zone.srv_queries.load(std::sync::atomic::Ordering::SeqCst) as f64;
    assert!(
        lookups >= 2.0 && lookups < runs,
        "{lookups} SRV lookups in {runs} runs"
    );

    // b leaves the record: its series vanish.
    *zone.targets.lock().unwrap() = vec![("b", b.port())];
    eventually_blocking("only b", PATIENCE, || series(&agent) == vec![srv_line(b)]);
    drop(agent);
    drop(runtime);
}

#[test]
fn bad_discovery_sources_are_refused_with_the_fix() {
    let base = r#"
        [[checks]]
        name = "web"
        type = "tcp"
        interval = "10s"
        address = "127.0.0.1:80"
    "#;
    assert_config_errors(
        base,
        &[
            (
                "instances = [\"127.0.0.2\"]\ninstances_from = { file = \"/tmp/x.json\" }",
                "check `web`: instances and instances_from both name the instances; keep one",
            ),
            (
                "instances_from = { srv = \"bad name\" }",
                "instances_from: srv `bad name` is not a DNS name",
            ),
            (
                "instances_from = { file = \"\" }",
                "instances_from: file is empty",
            ),
            (
                "instances_from = { consul = \"web\" }",
                "unknown field `consul`, expected `file` or `srv`",
            ),
            (
                "instances_from = { file = \"a.json\", srv = \"_x._tcp.y\" }",
                "instances_from takes exactly one of `file` and `srv`",
            ),
            ("instances_from = {}", "instances_from takes exactly one"),
        ],
    );
}

#[test]
fn over_nats_the_discovered_targets_travel_in_the_request() {
    let server = crate::common::nats::NatsServer::start();
    let a = accepting("127.0.0.2");
    let b = accepting("127.0.0.3");
    // The file lives in the checker's own directory; the runner is told nothing about it.
    let dir = scratch_dir("file-sd-nats");
    let targets = dir.join("web.yaml");
    replace_file(
        &targets,
        &format!("- targets: ['{a}']\n  labels:\n    zone: a\n"),
    );
    let runner_listen = free_port();
    let runner_config = format!(
        "[agent]\nid = \"r1\"\nlisten = \"127.0.0.1:{runner_listen}\"\n\
         [bus]\nkind = \"nats\"\n[bus.nats]\nurl = \"{}\"\n",
        server.url()
    );
    let mut runner = Bastion::start(
        "sd-runner",
        runner_listen,
        &runner_config,
        &["run", "--role", "runner"],
    );
    runner.wait_ready();
    let listen = free_port();
    let config = format!(
        "[agent]\nid = \"c1\"\nlisten = \"127.0.0.1:{listen}\"\n\
         [bus]\nkind = \"nats\"\n[bus.nats]\nurl = \"{}\"\n\
         [[checks]]\nname = \"disc\"\ntype = \"tcp\"\ninterval = \"1s\"\ntimeout = \"900ms\"\n\
         address = \"127.0.0.1:9\"\nlabels = {{ team = \"web\" }}\n\
         instances_from = {{ file = \"{}\" }}\n",
        server.url(),
        targets.display()
    );
    let mut checker = Bastion::start("sd-checker", listen, &config, &["run", "--role", "checker"]);
    checker.wait_ready();
    let latest = |agent: &Bastion| -> serde_json::Value {
        crate::common::process::http_get_blocking(agent.listen, "/api/v1/checks")
            .and_then(|(_, body)| serde_json::from_str::<serde_json::Value>(&body).ok())
            .map(|checks| checks[0]["latest"].clone())
            .unwrap_or_default()
    };
    eventually_blocking(
        "a result of the file's instance from the runner",
        PATIENCE,
        || {
            let latest = latest(&checker);
            latest["agent"] == "r1"
                && latest["responses"][0]["target"] == a.to_string()
                && latest["responses"][0]["labels"]["zone"] == "a"
                && latest["responses"][0]["passing"] == true
        },
    );
    replace_file(
        &targets,
        &format!("- targets: ['{a}', '{b}']\n  labels:\n    zone: b\n"),
    );
    eventually_blocking(
        "the runner probes the changed file's instances",
        PATIENCE,
        || {
            let latest = latest(&checker);
            latest["agent"] == "r1"
                && latest["responses"].as_array().map(Vec::len) == Some(2)
                && latest["responses"][1]["target"] == b.to_string()
        },
    );
    assert_eq!(
        checker.sample(&format!(
            "probe_success{{check=\"disc\",target=\"{b}\",team=\"web\",zone=\"b\"}}"
        )),
        Some(1.0)
    );
    assert!(
        !runner.log().contains("web.yaml"),
        "the runner never reads the file: {}",
        runner.log()
    );
}
