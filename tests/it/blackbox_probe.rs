//! `/probe`, blackbox_exporter's endpoint, against real peers: a real Prometheus scraping it
//! with the relabelling of blackbox_exporter's README; Debian's blackbox_exporter side by side
//! for the same blackbox.yml, agreeing on `probe_success` and emitting every series name
//! bastion emits with the same type and label names, or one on the documented list of
//! differences (docs/blackbox.md); a burst of 200 concurrent `/probe` on 10 workers; a probe
//! that finds no worker; bad parameters; a reload of the module file.

use crate::common;
use common::nats::free_port;
use common::process::{http_get_blocking, scratch_dir, Bastion};
use common::prometheus::Prometheus;
use common::{eventually_blocking, http_request_blocking};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One family of an exposition: its type and each sample's labels and value.
#[derive(Debug, Default)]
struct Family {
    kind: String,
    samples: Vec<(BTreeMap<String, String>, f64)>,
}

impl Family {
    /// The sets of label names its samples carry.
    fn label_names(&self) -> BTreeSet<Vec<String>> {
        self.samples
            .iter()
            .map(|(labels, _)| labels.keys().cloned().collect())
            .collect()
    }
}

/// Parses `a{x="1",y="a,b"} 2` lines and `# TYPE` comments.
fn families(text: &str) -> BTreeMap<String, Family> {
    let mut out: BTreeMap<String, Family> = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            if let (Some(name), Some(kind)) = (parts.next(), parts.next()) {
                out.entry(name.to_string()).or_default().kind = kind.to_string();
            }
            continue;
        }
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (name, labels, rest) = match line.find('{') {
            Some(open) => {
                let close = line.rfind('}').expect("a closing brace");
                (
                    &line[..open],
                    parse_labels(&line[open + 1..close]),
                    &line[close + 1..],
                )
            }
            None => {
                let (name, rest) = line.split_once(' ').expect("a value");
                (name, BTreeMap::new(), rest)
            }
        };
        let value: f64 = rest
            .split_whitespace()
            .next()
            .and_then(|value| value.parse().ok())
            .unwrap_or(f64::NAN);
        out.entry(name.to_string())
            .or_default()
            .samples
            .push((labels, value));
    }
    out
}

fn parse_labels(text: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut rest = text;
    while let Some((key, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((at, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, escaped)) = chars.next() {
                        value.push(escaped);
                    }
                }
                '"' => {
                    end = at + 1;
                    break;
                }
                _ => value.push(c),
            }
        }
        labels.insert(key.trim_start_matches(',').trim().to_string(), value);
        rest = &after[end..];
    }
    labels
}

/// The unlabelled `probe_success` of an exposition.
fn probe_success(text: &str) -> Option<f64> {
    families(text)
        .get("probe_success")
        .and_then(|family| family.samples.first())
        .map(|(_, value)| *value)
}

/// The series names docs/blackbox.md lists as differing from blackbox_exporter.
fn documented_differences() -> BTreeSet<String> {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/blackbox.md"))
        .expect("docs/blackbox.md");
    let section = doc
        .split("\n## ")
        .find(|section| section.starts_with("Series that differ"))
        .expect("docs/blackbox.md has a section `Series that differ`");
    section
        .lines()
        .filter_map(|line| line.strip_prefix("| `"))
        .filter_map(|line| line.split('`').next())
        .filter(|name| name.starts_with("probe_"))
        .map(str::to_string)
        .collect()
}

/// Debian's blackbox_exporter on a free port, killed on drop.
struct BlackboxExporter {
    port: u16,
    child: Child,
    log: PathBuf,
}

impl BlackboxExporter {
    fn start(config: &Path, dir: &Path) -> BlackboxExporter {
        let binary = common::tools::blackbox_exporter();
        let port = free_port();
        let log = dir.join("blackbox_exporter.log");
        let child = Command::new(&binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .unwrap_or_else(|error| panic!("{} does not start: {error}", binary.display()));
        let exporter = BlackboxExporter { port, child, log };
        eventually_blocking("blackbox_exporter answers", Duration::from_secs(20), || {
            http_get_blocking(port, "/metrics").is_some_and(|(status, _)| status == 200)
        });
        exporter
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for BlackboxExporter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn encode(text: &str) -> String {
    common::prometheus::percent_encode(text)
}

fn probe_path(target: &str, module: &str) -> String {
    format!("/probe?target={}&module={module}", encode(target))
}

/// A bastion agent whose config names `blackbox.yml` (its `file`, written from the modules),
/// in a directory removed on drop.
struct ProbeAgent {
    agent: Bastion,
    file: PathBuf,
    dir: PathBuf,
}

impl std::ops::Deref for ProbeAgent {
    type Target = Bastion;
    fn deref(&self) -> &Bastion {
        &self.agent
    }
}

impl std::ops::DerefMut for ProbeAgent {
    fn deref_mut(&mut self) -> &mut Bastion {
        &mut self.agent
    }
}

impl Drop for ProbeAgent {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Starts an agent with `modules` as its `blackbox.yml` and `extra` after its `[agent]`.
fn agent_with_modules(name: &str, modules: &str, extra: &str) -> ProbeAgent {
    let dir = scratch_dir(name);
    let file = dir.join("blackbox.yml");
    std::fs::write(&file, modules).expect("blackbox.yml");
    let listen = free_port();
    let mut agent = Bastion::start(
        name,
        listen,
        &format!(
            "[agent]\nlisten = \"127.0.0.1:{listen}\"\nblackbox_modules = \"{}\"\n{extra}",
            file.display()
        ),
        &["run"],
    );
    agent.wait_ready();
    ProbeAgent { agent, file, dir }
}

/// A TCP server that greets, answers PING with PONG (`greeting` "hello bastion"), or says bye.
async fn line_server(greeting: &'static str) -> u16 {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let _ = write.write_all(format!("{greeting}\n").as_bytes()).await;
                let mut lines = BufReader::new(read).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if line.trim() == "PING" {
                        let _ = write.write_all(b"PONG\n").await;
                    }
                }
            });
        }
    });
    port
}

/// A gRPC health server on 127.0.0.1 whose `bastion.Db` is SERVING.
async fn grpc_server() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("bastion.Db", tonic_health::ServingStatus::Serving)
        .await;
    tokio::spawn(async move {
        let _keep = reporter;
        let _ = tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
            .await;
    });
    port
}

const SIDE_BY_SIDE_MODULES: &str = r#"modules:
  https_ca:
    prober: http
    timeout: 5s
    http:
      preferred_ip_protocol: ip4
      fail_if_not_ssl: true
      tls_config:
        ca_file: CA_FILE
        server_name: svc.test
  http_2xx:
    prober: http
    timeout: 5s
    http:
      preferred_ip_protocol: ip4
  http_regex:
    prober: http
    timeout: 5s
    http:
      preferred_ip_protocol: ip4
      valid_status_codes: [200]
      fail_if_body_not_matches_regexp: ["^ok"]
  tcp_banner:
    prober: tcp
    timeout: 5s
    tcp:
      preferred_ip_protocol: ip4
      query_response:
        - expect: "^hello"
        - send: "PING"
        - expect: "^PONG"
  dns_a:
    prober: dns
    timeout: 5s
    dns:
      preferred_ip_protocol: ip4
      query_name: svc.test
      query_type: A
      transport_protocol: udp
  dns_nx:
    prober: dns
    timeout: 5s
    dns:
      preferred_ip_protocol: ip4
      query_name: missing.test
      query_type: A
  icmp:
    prober: icmp
    timeout: 5s
    icmp:
      preferred_ip_protocol: ip4
  grpc:
    prober: grpc
    timeout: 5s
    grpc:
      preferred_ip_protocol: ip4
      service: bastion.Db
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bastion_and_blackbox_exporter_agree_on_the_same_modules() {
    let dns = common::dns::dns_server(&common::dns::SVC_TEST).await;
    let tcp_ok = line_server("hello bastion").await;
    let tcp_bad = line_server("bye").await;
    let grpc = grpc_server().await;
    let refused = common::refused_address().await.port();
    let ca = common::TestCa::new("bastion test CA");
    let leaf = ca.leaf(
        &["svc.test"],
        time::OffsetDateTime::now_utc() + time::Duration::days(90),
    );
    let tls = common::tls_server::TlsServer::start(leaf.server_config(&[b"http/1.1"])).await;
    let modules = SIDE_BY_SIDE_MODULES.replace("CA_FILE", &ca.ca_file.display().to_string());
    let agent = agent_with_modules("side-by-side", &modules, "");
    let file = agent.file.clone();
    let exporter_dir = scratch_dir("blackbox-exporter");
    let exporter = tokio::task::block_in_place(|| BlackboxExporter::start(&file, &exporter_dir));
    let own = agent.listen;
    let mut cases: Vec<(&str, String, f64)> = vec![
        (
            "https_ca",
            format!("https://127.0.0.1:{}/", tls.address.port()),
            1.0,
        ),
        ("https_ca", format!("http://127.0.0.1:{own}/healthz"), 0.0),
        ("http_2xx", format!("http://127.0.0.1:{own}/healthz"), 1.0),
        ("http_2xx", format!("http://127.0.0.1:{refused}/"), 0.0),
        ("http_regex", format!("http://127.0.0.1:{own}/healthz"), 1.0),
        ("http_regex", format!("http://127.0.0.1:{own}/readyz"), 0.0),
        (
            "http_regex",
            format!("http://127.0.0.1:{own}/nothing-here"),
            0.0,
        ),
        ("tcp_banner", format!("127.0.0.1:{tcp_ok}"), 1.0),
        ("tcp_banner", format!("127.0.0.1:{tcp_bad}"), 0.0),
        ("dns_a", dns.to_string(), 1.0),
        ("dns_nx", dns.to_string(), 0.0),
        ("grpc", format!("127.0.0.1:{grpc}"), 1.0),
        ("grpc", format!("127.0.0.1:{refused}"), 0.0),
    ];
    // ICMP on loopback, where this process may open an ICMP socket (as icmp.rs skips).
    match bastion_agent::checks::icmp::ensure_sockets() {
        Ok(_) => cases.push(("icmp", "127.0.0.1".to_string(), 1.0)),
        Err(error) => eprintln!("skipping the icmp module: no ICMP socket opens here: {error}"),
    }
    let differences = documented_differences();
    let mut problems = Vec::new();
    for (module, target, expected) in &cases {
        let path = probe_path(target, module);
        let (theirs, ours) = tokio::task::block_in_place(|| {
            (
                // HTTP/1.0, so that Go's server sends the body unchunked.
                common::prometheus::http_get_1_0(exporter.port, &path),
                http_get_blocking(agent.listen, &path),
            )
        });
        let (their_status, theirs) = theirs.expect("blackbox_exporter answers");
        let (our_status, ours) = ours.expect("bastion answers");
        assert_eq!(their_status, 200, "blackbox_exporter {path}: {theirs}");
        assert_eq!(our_status, 200, "bastion {path}: {ours}");
        let what = format!("module {module}, target {target}");
        assert_eq!(
            probe_success(&theirs),
            Some(*expected),
            "blackbox_exporter, {what}:\n{theirs}\nits log:\n{}",
            exporter.log()
        );
        assert_eq!(
            probe_success(&ours),
            Some(*expected),
            "bastion, {what}:\n{ours}"
        );
        let (their_families, our_families) = (families(&theirs), families(&ours));
        for (name, family) in &their_families {
            if differences.contains(name) {
                continue;
            }
            match our_families.get(name) {
                None => problems.push(format!(
                    "{what}: bastion does not emit {name}, and docs/blackbox.md does not list it"
                )),
                Some(our) if our.kind != family.kind => problems.push(format!(
                    "{what}: {name} is a {} in blackbox_exporter, a {} in bastion",
                    family.kind, our.kind
                )),
                Some(our) if our.label_names() != family.label_names() => problems.push(format!(
                    "{what}: {name} has labels {:?} in blackbox_exporter, {:?} in bastion",
                    family.label_names(),
                    our.label_names()
                )),
                Some(_) => {}
            }
        }
        if *module == "https_ca" && *expected == 1.0 {
            // The same certificate: the same expiry, the same TLS version label.
            let expiry = |families: &BTreeMap<String, Family>| {
                families
                    .get("probe_ssl_earliest_cert_expiry")
                    .and_then(|family| family.samples.first().map(|(_, value)| *value))
            };
            let version = |families: &BTreeMap<String, Family>| {
                families
                    .get("probe_tls_version_info")
                    .and_then(|family| family.samples.first())
                    .and_then(|(labels, _)| labels.get("version").cloned())
            };
            assert!(expiry(&their_families).is_some(), "{theirs}");
            assert_eq!(expiry(&their_families), expiry(&our_families), "{what}");
            assert!(version(&their_families).is_some(), "{theirs}");
            assert_eq!(version(&their_families), version(&our_families), "{what}");
        }
        if *module == "http_regex" && target.ends_with("/readyz") {
            for (who, text) in [("blackbox_exporter", &theirs), ("bastion", &ours)] {
                let failed = families(text)
                    .get("probe_failed_due_to_regex")
                    .and_then(|family| family.samples.first().map(|(_, value)| *value));
                assert_eq!(failed, Some(1.0), "{who}, {what}:\n{text}");
            }
        }
    }
    assert!(
        problems.is_empty(),
        "series that differ from blackbox_exporter's:\n{}",
        problems.join("\n")
    );
    let _ = std::fs::remove_dir_all(&exporter_dir);
}

#[test]
fn prometheus_scrapes_probe_through_the_readme_relabelling() {
    let refused = free_port();
    let modules =
        "modules:\n  http_2xx:\n    prober: http\n    http:\n      preferred_ip_protocol: ip4\n";
    let mut agent = agent_with_modules("relabelled", modules, "");
    let listen = agent.listen;
    let passing = format!("http://127.0.0.1:{listen}/healthz");
    let failing = format!("http://127.0.0.1:{refused}/");
    // blackbox_exporter's README, with bastion's address in place of 127.0.0.1:9115.
    let mut prometheus = Prometheus::start(&format!(
        r#"global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: blackbox
    metrics_path: /probe
    params:
      module: [http_2xx]
    static_configs:
      - targets:
        - {passing}
        - {failing}
    relabel_configs:
      - source_labels: [__address__]
        target_label: __param_target
      - source_labels: [__param_target]
        target_label: instance
      - target_label: __address__
        replacement: 127.0.0.1:{listen}
"#
    ));
    let expected = [
        (format!(r#"probe_success{{instance="{passing}"}}"#), 1.0),
        (format!(r#"probe_success{{instance="{failing}"}}"#), 0.0),
        (format!(r#"up{{instance="{failing}"}}"#), 1.0),
        // The module has no timeout: the scrape's 1 s minus blackbox_exporter's offset.
        (
            format!(r#"probe_timeout_seconds{{instance="{passing}"}}"#),
            0.5,
        ),
        (
            format!(r#"probe_http_status_code{{instance="{passing}"}}"#),
            200.0,
        ),
    ];
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(
            prometheus.alive(),
            "prometheus exited:\n{}",
            prometheus.log()
        );
        assert!(agent.alive(), "bastion exited:\n{}", agent.log());
        let seen: Vec<Option<f64>> = expected
            .iter()
            .map(|(query, _)| prometheus.query_one(query))
            .collect();
        if expected
            .iter()
            .zip(&seen)
            .all(|((_, want), got)| *got == Some(*want))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus never showed {expected:?}; it shows {seen:?}\nits log:\n{}",
            prometheus.log()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// An HTTP server on 127.0.0.1 that answers 200 `ok` after `delay`, a thread per connection.
fn slow_server(delay: Duration) -> u16 {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("address").port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            std::thread::spawn(move || {
                let mut buffer = [0u8; 4096];
                let _ = stream.read(&mut buffer);
                std::thread::sleep(delay);
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\nconnection: close\r\n\r\nok\n",
                );
            });
        }
    });
    port
}

#[test]
fn a_burst_of_200_probes_on_10_workers_ends_within_the_scrape_timeout() {
    let slow = slow_server(Duration::from_millis(300));
    let modules =
        "modules:\n  http_2xx:\n    prober: http\n    http:\n      preferred_ip_protocol: ip4\n";
    // A scheduled check shares the pool with the burst and must keep its schedule.
    let agent = agent_with_modules(
        "burst",
        modules,
        &format!(
            "\n[runner]\ndispatch_deadline = \"1s\"\n[runner.workers]\nhttp = 10\n\n\
             [[checks]]\nname = \"steady\"\ntype = \"http\"\nurl = \"http://127.0.0.1:{slow}/\"\n\
             interval = \"1s\"\ntimeout = \"900ms\"\n"
        ),
    );
    let port = agent.listen;
    let scheduled_before = agent
        .sample(r#"bastion_checks_scheduled_total{check="steady"}"#)
        .unwrap_or(0.0);
    let path = Arc::new(probe_path(&format!("http://127.0.0.1:{slow}/"), "http_2xx"));
    let scrape_timeout = Duration::from_secs(3);
    let started = Instant::now();
    let requests: Vec<_> = (0..200)
        .map(|_| {
            let path = Arc::clone(&path);
            std::thread::spawn(move || {
                let answer = http_request_blocking(
                    port,
                    "GET",
                    &path,
                    &[("X-Prometheus-Scrape-Timeout-Seconds", "3")],
                );
                (answer, started.elapsed())
            })
        })
        .collect();
    let mut passed = 0;
    let mut failed = 0;
    let mut slowest = Duration::ZERO;
    for request in requests {
        let (answer, took) = request.join().expect("request thread");
        let (status, body) = answer.expect("bastion answers every /probe");
        assert_eq!(status, 200, "{body}");
        slowest = slowest.max(took);
        match probe_success(&body) {
            Some(1.0) => passed += 1,
            Some(0.0) => failed += 1,
            other => panic!("probe_success {other:?} in:\n{body}"),
        }
    }
    assert!(
        slowest <= scrape_timeout,
        "the slowest /probe of the burst took {slowest:?}, past the scrape timeout"
    );
    assert_eq!(passed + failed, 200);
    // 10 workers for 1 s of dispatch deadline, 300 ms a probe: about 30 get a worker.
    assert!(passed >= 10, "only {passed} probes passed");
    assert!(
        failed > 0,
        "10 workers ran 200 probes of 300 ms within 1 s?"
    );
    let metrics = agent.metrics().expect("metrics");
    let timeouts =
        common::metric(&metrics, r#"bastion_dispatch_timeouts_total{type="http"}"#).unwrap_or(0.0);
    assert!(
        timeouts >= f64::from(failed),
        "{failed} probes failed but {timeouts} dispatch timeouts were counted"
    );
    assert_eq!(
        common::metric(
            &metrics,
            r#"bastion_probe_requests_total{outcome="probed"}"#
        ),
        Some(200.0)
    );
    // The scheduled check kept its schedule through the burst: nothing skipped, and it runs on.
    eventually_blocking(
        "steady runs after the burst",
        Duration::from_secs(5),
        || {
            agent
                .sample(r#"bastion_checks_scheduled_total{check="steady"}"#)
                .is_some_and(|runs| runs >= scheduled_before + 2.0)
        },
    );
    let metrics = agent.metrics().expect("metrics");
    assert_eq!(
        common::metric(
            &metrics,
            r#"bastion_schedule_skipped_total{check="steady"}"#
        )
        .unwrap_or(0.0),
        0.0,
        "{metrics}"
    );
}

#[test]
fn a_probe_that_finds_no_worker_fails_with_the_reason_in_its_debug_output() {
    let slow = slow_server(Duration::from_secs(3));
    let modules = "modules:\n  http_2xx:\n    prober: http\n    timeout: 4s\n    http:\n      preferred_ip_protocol: ip4\n";
    let agent = agent_with_modules(
        "no-worker",
        modules,
        "\n[runner]\ndispatch_deadline = \"200ms\"\n[runner.workers]\nhttp = 1\n",
    );
    let port = agent.listen;
    let path = probe_path(&format!("http://127.0.0.1:{slow}/"), "http_2xx");
    let holder = {
        let path = path.clone();
        std::thread::spawn(move || http_get_blocking(port, &path))
    };
    eventually_blocking("the one worker is busy", Duration::from_secs(5), || {
        agent
            .sample(r#"bastion_workers_busy{type="http"}"#)
            .is_some_and(|busy| busy >= 1.0)
    });
    let (status, body) = http_get_blocking(port, &format!("{path}&debug=true")).expect("an answer");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("probe_success 0"), "{body}");
    assert!(
        body.contains("error kind=dispatch_timeout"),
        "the debug output does not say why:\n{body}"
    );
    assert!(body.contains("\"kind\": \"dispatch_timeout\""), "{body}");
    let (_, held) = holder.join().expect("holder").expect("an answer");
    assert_eq!(probe_success(&held), Some(1.0), "{held}");
}

#[test]
fn bad_parameters_are_400s_that_say_what_to_fix_and_a_reload_reads_the_modules_again() {
    let modules = "modules:\n  tcp_connect:\n    prober: tcp\n";
    let agent = agent_with_modules("bad-params", modules, "");
    let file = agent.file.clone();
    let port = agent.listen;
    let cases = [
        (
            "/probe?module=tcp_connect",
            "the target parameter is missing",
        ),
        ("/probe?target=a:1&module=nope", "unknown module `nope`"),
        (
            "/probe?target=no-port&module=tcp_connect",
            "is not host:port",
        ),
        (
            "/probe?target=a:1&module=tcp_connect&instances=some",
            "instances `some`",
        ),
        (
            "/probe?target=a:1&module=tcp_connect&debug=yes",
            "debug `yes`",
        ),
    ];
    for (path, says) in cases {
        let (status, body) = http_get_blocking(port, path).expect("an answer");
        assert_eq!(status, 400, "{path}: {body}");
        assert!(body.contains(says), "{path}: {body}");
    }
    let (status, body) = http_request_blocking(
        port,
        "GET",
        "/probe?target=127.0.0.1:1&module=tcp_connect",
        &[("X-Prometheus-Scrape-Timeout-Seconds", "soon")],
    )
    .expect("an answer");
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("X-Prometheus-Scrape-Timeout-Seconds"),
        "{body}"
    );
    // An edited blackbox.yml is taken up by a reload.
    let own = format!("127.0.0.1:{port}");
    let path = probe_path(&own, "tcp_again");
    assert_eq!(http_get_blocking(port, &path).map(|(s, _)| s), Some(400));
    std::fs::write(
        &file,
        format!(
            "{modules}  tcp_again:\n    prober: tcp\n    tcp:\n      preferred_ip_protocol: ip4\n"
        ),
    )
    .expect("rewrite");
    agent.signal("HUP");
    eventually_blocking("the new module is served", Duration::from_secs(10), || {
        http_get_blocking(port, &path)
            .is_some_and(|(status, body)| status == 200 && probe_success(&body) == Some(1.0))
    });
    // A broken file is refused and the running modules stay.
    std::fs::write(
        &file,
        "modules:\n  x:\n    prober: tcp\n    tcp:\n      typo: 1\n",
    )
    .expect("rewrite");
    agent.signal("HUP");
    eventually_blocking("the reload is refused", Duration::from_secs(10), || {
        agent
            .sample("bastion_config_last_reload_successful")
            .is_some_and(|ok| ok == 0.0)
    });
    assert_eq!(http_get_blocking(port, &path).map(|(s, _)| s), Some(200));
    assert!(
        agent.log().contains("unknown key `tcp.typo`"),
        "{}",
        agent.log()
    );
}

#[test]
fn import_blackbox_writes_checks_that_run() {
    let server = slow_server(Duration::ZERO);
    let dir = scratch_dir("import-blackbox");
    let modules = dir.join("blackbox.yml");
    std::fs::write(
        &modules,
        "modules:\n  http_2xx:\n    prober: http\n    timeout: 2s\n  tcp_connect:\n    prober: tcp\n    tcp:\n      preferred_ip_protocol: ip4\n",
    )
    .expect("blackbox.yml");
    let prometheus = dir.join("prometheus.yml");
    std::fs::write(
        &prometheus,
        format!(
            "global:\n  scrape_interval: 15s\nscrape_configs:\n\
             \x20 - job_name: self\n    static_configs: [{{targets: [\"127.0.0.1:9\"]}}]\n\
             \x20 - job_name: blackbox\n    metrics_path: /probe\n    params:\n      module: [http_2xx]\n\
             \x20   static_configs:\n      - targets: [\"http://127.0.0.1:{server}/\"]\n\
             \x20 - job_name: blackbox-tcp\n    metrics_path: /probe\n    scrape_interval: 5s\n\
             \x20   params:\n      module: [tcp_connect]\n\
             \x20   static_configs:\n      - targets: [\"127.0.0.1:{server}\"]\n"
        ),
    )
    .expect("prometheus.yml");
    let bastion = env!("CARGO_BIN_EXE_bastion");
    let output = Command::new(bastion)
        .arg("import-blackbox")
        .arg(&modules)
        .arg("--prometheus")
        .arg(&prometheus)
        .output()
        .expect("bastion runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("name = \"http_2xx-127-0-0-1"), "{stdout}");
    assert!(stdout.contains("interval = \"15s\""), "{stdout}");
    assert!(stdout.contains("interval = \"5s\""), "{stdout}");
    assert!(stdout.contains("ip_protocol = \"ip4\""), "{stdout}");
    // The http module named no preferred_ip_protocol: its check probes every address.
    assert_eq!(stdout.matches("ip_protocol = ").count(), 1, "{stdout}");
    // What it printed runs: both checks pass.
    let config = dir.join("imported.toml");
    std::fs::write(&config, &stdout).expect("imported.toml");
    let once = Command::new(bastion)
        .args(["once", "--config"])
        .arg(&config)
        .output()
        .expect("bastion runs");
    assert!(
        once.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&once.stdout),
        String::from_utf8_lossy(&once.stderr)
    );
    // A module it cannot translate is an error naming it, and nothing is printed.
    std::fs::write(
        &modules,
        "modules:\n  http_2xx:\n    prober: http\n    http:\n      enable_http3: true\n",
    )
    .expect("blackbox.yml");
    let refused = Command::new(bastion)
        .arg("import-blackbox")
        .arg(&modules)
        .arg("--prometheus")
        .arg(&prometheus)
        .output()
        .expect("bastion runs");
    assert_eq!(refused.status.code(), Some(2));
    assert!(refused.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("module `http_2xx`: `http.enable_http3`"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_modules_secrets_reach_the_target_and_never_the_debug_output() {
    use std::io::{Read, Write};
    const TOKEN: &str = "probe-t0ken-SECRET-5";
    // The target echoes the request it got, Authorization header included.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let target = listener.local_addr().expect("address").port();
    let seen = Arc::new(std::sync::Mutex::new(String::new()));
    let record = Arc::clone(&seen);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut buffer = [0u8; 4096];
            let read = stream.read(&mut buffer).unwrap_or(0);
            let request = String::from_utf8_lossy(&buffer[..read]).into_owned();
            record.lock().expect("lock").push_str(&request);
            let _ = stream.write_all(
                format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{request}",
                    request.len()
                )
                .as_bytes(),
            );
        }
    });
    let dir = scratch_dir("probe-secrets");
    let token_file = dir.join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).expect("token");
    let modules = format!(
        "modules:\n  with_token:\n    prober: http\n    http:\n      preferred_ip_protocol: ip4\n      bearer_token_file: {}\n",
        token_file.display()
    );
    let agent = agent_with_modules("probe-secrets", &modules, "");
    let path = format!(
        "{}&debug=true",
        probe_path(&format!("http://127.0.0.1:{target}/"), "with_token")
    );
    let (status, body) = http_get_blocking(agent.listen, &path).expect("an answer");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("probe_success 1"), "{body}");
    assert!(
        seen.lock()
            .expect("lock")
            .contains(&format!("Bearer {TOKEN}")),
        "the target never got the token"
    );
    assert!(
        !body.contains(TOKEN),
        "the debug output shows the token:\n{body}"
    );
    assert!(!agent.log().contains(TOKEN), "the log shows the token");
    let _ = std::fs::remove_dir_all(&dir);
}

/// An HTTP server on 127.0.0.1 that holds every answer until the gate opens, then answers 200.
fn gated_server() -> (u16, Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>) {
    use std::io::{Read, Write};
    let gate = Arc::new((std::sync::Mutex::new(false), std::sync::Condvar::new()));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("address").port();
    let shared = Arc::clone(&gate);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let gate = Arc::clone(&shared);
            std::thread::spawn(move || {
                let mut buffer = [0u8; 4096];
                let _ = stream.read(&mut buffer);
                let (open, changed) = &*gate;
                let mut is_open = open.lock().expect("gate");
                while !*is_open {
                    is_open = changed.wait(is_open).expect("gate");
                }
                drop(is_open);
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\nconnection: close\r\n\r\nok\n",
                );
            });
        }
    });
    (port, gate)
}

#[test]
fn past_256_requests_in_flight_a_probe_is_refused_at_once() {
    let (gated, gate) = gated_server();
    let modules = "modules:\n  http_2xx:\n    prober: http\n    timeout: 20s\n    http:\n      preferred_ip_protocol: ip4\n";
    // One http worker: the first request holds it until the gate opens, the others wait.
    // One of each other type too, so that the bound is its floor of 256 (four per worker).
    let agent = agent_with_modules(
        "request-bound",
        modules,
        "\n[runner]\ndispatch_deadline = \"20s\"\n[runner.workers]\nhttp = 1\ntcp = 1\ndns = 1\ntls = 1\nicmp = 1\ngrpc = 1\nudp = 1\nwebsocket = 1\n",
    );
    let port = agent.listen;
    let path = Arc::new(probe_path(
        &format!("http://127.0.0.1:{gated}/"),
        "http_2xx",
    ));
    let held: Vec<_> = (0..256)
        .map(|_| {
            let path = Arc::clone(&path);
            std::thread::spawn(move || http_get_blocking(port, &path))
        })
        .collect();
    eventually_blocking("256 requests in flight", Duration::from_secs(15), || {
        agent.sample(r#"bastion_probe_requests_total{outcome="probed"}"#) == Some(256.0)
    });
    let started = Instant::now();
    let (status, body) = http_get_blocking(port, &path).expect("an answer");
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("too many /probe requests at once (the limit is 256"),
        "{body}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "the refusal waited"
    );
    assert_eq!(
        agent.sample(r#"bastion_probe_requests_total{outcome="refused"}"#),
        Some(1.0)
    );
    // The gate opens: the one worker runs the 256 probes one after another, each passing.
    *gate.0.lock().expect("gate") = true;
    gate.1.notify_all();
    for request in held {
        let (status, body) = request.join().expect("thread").expect("an answer");
        assert_eq!(status, 200, "{body}");
        assert_eq!(probe_success(&body), Some(1.0), "{body}");
    }
    // Once they are done, /probe takes requests again.
    let (status, body) = http_get_blocking(port, &path).expect("an answer");
    assert_eq!((status, probe_success(&body)), (200, Some(1.0)), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_all_probes_every_address_behind_the_name() {
    // svc.test resolves to 127.0.0.2 and 127.0.0.3; only .2 listens on the port.
    let dns = common::dns::dns_server(&common::dns::SVC_TEST).await;
    let (port, mut listeners) = common::listeners_on_one_port(&["127.0.0.2", "127.0.0.3"]).await;
    drop(listeners.pop());
    let listener = listeners.pop().expect("the listener on 127.0.0.2");
    tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            open.push(stream);
        }
    });
    let modules =
        "modules:\n  tcp_connect:\n    prober: tcp\n    tcp:\n      preferred_ip_protocol: ip4\n";
    let agent = agent_with_modules(
        "instances-all",
        modules,
        &format!("\n[runner]\ndns_servers = [\"{dns}\"]\n"),
    );
    let path = probe_path(&format!("svc.test:{port}"), "tcp_connect");
    let (one, all) = tokio::task::block_in_place(|| {
        (
            http_get_blocking(agent.listen, &path),
            http_get_blocking(agent.listen, &format!("{path}&instances=all")),
        )
    });
    // blackbox_exporter's way: one address, the first the name resolves to.
    let (status, one) = one.expect("an answer");
    assert_eq!(status, 200, "{one}");
    assert_eq!(probe_success(&one), Some(1.0), "{one}");
    assert!(!one.contains("instance_address"), "{one}");
    // Every address, each labelled.
    let (status, all) = all.expect("an answer");
    assert_eq!(status, 200, "{all}");
    let success = families(&all);
    let by_address: BTreeMap<String, f64> = success["probe_success"]
        .samples
        .iter()
        .map(|(labels, value)| (labels["instance_address"].clone(), *value))
        .collect();
    assert_eq!(
        by_address,
        BTreeMap::from([
            ("127.0.0.2".to_string(), 1.0),
            ("127.0.0.3".to_string(), 0.0)
        ]),
        "{all}"
    );
    for (name, family) in &success {
        for (labels, _) in &family.samples {
            assert!(
                labels.contains_key("instance_address"),
                "{name} without instance_address:\n{all}"
            );
        }
    }
}
