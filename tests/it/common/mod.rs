//! Helpers shared by the integration tests: configs from TOML text, real listeners on
//! 127.0.0.x, minimal HTTP/1.1 servers with chosen misbehaviour, and a TLS server.
#![allow(dead_code)]

pub mod debian;
pub mod dns;
pub mod nats;
pub mod netns;
pub mod process;
pub mod prometheus;
pub mod proxy;
pub mod receiver;
pub mod tcp_relay;
pub mod tls_server;
pub mod tools;

use bastion_agent::compiled::CompiledCheck;
use bastion_agent::config::{Config, Format};
use bastion_agent::messages::CheckResult;
use bastion_agent::metrics::Metrics;
use bastion_agent::runner::build_dispatcher;
use bastion_agent::runner::dispatcher::{Dispatcher, RunOrder};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Generous bound for anything that should take milliseconds, so busy machines never flake.
pub const PATIENCE: Duration = Duration::from_secs(30);

pub fn config(toml: &str) -> Config {
    match bastion_agent::validate::parse(toml, Format::Toml, Path::new("test.toml")) {
        Ok(config) => config,
        Err(error) => panic!("test config is invalid: {error}\n{toml}"),
    }
}

pub fn dispatcher(config: &Config) -> (Arc<Dispatcher>, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::new());
    let dispatcher = build_dispatcher(config, &metrics).expect("dispatcher");
    (Arc::new(dispatcher), metrics)
}

/// Runs the check named `name` of `config` once through `dispatcher`.
pub async fn run_check(dispatcher: &Dispatcher, config: &Config, name: &str) -> CheckResult {
    let check = config
        .checks
        .iter()
        .find(|check| check.name == name)
        .expect("check exists");
    let order = RunOrder {
        check: Arc::new(CompiledCheck::compile(check).expect("check compiles")),
        run_id: 1,
        scheduled_at: SystemTime::now(),
        discovered: None,
    };
    tokio::time::timeout(PATIENCE, dispatcher.run(order))
        .await
        .expect("a check run finishes")
}

/// Runs the one check of `config` once, on a dispatcher of its own.
pub async fn run_single(config: &Config) -> CheckResult {
    assert_eq!(
        config.checks.len(),
        1,
        "run_single takes a config with one check"
    );
    let (dispatcher, _) = dispatcher(config);
    run_check(&dispatcher, config, &config.checks[0].name).await
}

/// Binds the same free port on every given IP (127.0.0.2, 127.0.0.3, ...).
pub async fn listeners_on_one_port(ips: &[&str]) -> (u16, Vec<TcpListener>) {
    'attempt: for _ in 0..50 {
        let first = TcpListener::bind((ips[0], 0)).await.expect("bind");
        let port = first.local_addr().expect("addr").port();
        let mut listeners = vec![first];
        for ip in &ips[1..] {
            match TcpListener::bind((*ip, port)).await {
                Ok(listener) => listeners.push(listener),
                Err(_) => continue 'attempt,
            }
        }
        return (port, listeners);
    }
    panic!("no port free on all of {ips:?}");
}

/// Reads an HTTP/1 request head; None if the peer closed first.
pub async fn read_head(stream: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte).await {
            Ok(1) => head.push(byte[0]),
            _ => return None,
        }
        if head.len() > 64 * 1024 {
            return None;
        }
    }
    Some(String::from_utf8_lossy(&head).into_owned())
}

pub fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

pub async fn respond(stream: &mut TcpStream, status: &str, headers: &[(&str, &str)], body: &str) {
    let mut text = format!(
        "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n",
        body.len()
    );
    for (name, value) in headers {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    text.push_str("\r\n");
    text.push_str(body);
    let _ = stream.write_all(text.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// One request as a test server sees it: the connection, the request head, and the address
/// the server listens on.
pub struct Incoming {
    pub stream: TcpStream,
    pub head: String,
    pub local: SocketAddr,
}

/// Accepts forever; each connection gets its own task, which reads the request head and hands
/// the connection to `handle`. Connections closed before a full head are dropped.
pub fn serve<F, Fut>(listener: TcpListener, handle: F)
where
    F: Fn(Incoming) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let handle = Arc::new(handle);
    tokio::spawn(async move {
        let local = listener.local_addr().expect("listener address");
        while let Ok((mut stream, _)) = listener.accept().await {
            let handle = Arc::clone(&handle);
            tokio::spawn(async move {
                if let Some(head) = read_head(&mut stream).await {
                    handle(Incoming {
                        stream,
                        head,
                        local,
                    })
                    .await;
                }
            });
        }
    });
}

/// Serves `200 OK` with `body` to every request, forever.
pub fn serve_ok(listener: TcpListener, body: &'static str) {
    serve_fixed(listener, "200 OK", &[("content-type", "text/plain")], body);
}

/// Serves the same response to every request, forever.
pub fn serve_fixed(
    listener: TcpListener,
    status: &'static str,
    headers: &'static [(&'static str, &'static str)],
    body: &'static str,
) {
    serve(listener, move |mut request| async move {
        respond(&mut request.stream, status, headers, body).await;
    });
}

/// An address on 127.0.0.1 where nothing listens: connecting is refused. The port stays
/// bound (a socket that never listens, kept for the test process's life), so no server a
/// test starts later can be given it: a port merely freed was once handed to the next
/// listener of the same test, which then answered where a refusal was expected.
pub async fn refused_address() -> SocketAddr {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind("127.0.0.1:0".parse().expect("address"))
        .expect("bind");
    let address = socket.local_addr().expect("socket address");
    // Never listened on and never closed: each test runs in a process of its own.
    std::mem::forget(socket);
    address
}

/// Accepts forever and never says a word: every connection stays open, unread and silent.
pub fn serve_silent(listener: TcpListener) {
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
}

/// A tiny deterministic generator for test delays (no dependency needed).
pub struct XorShift(pub u64);

impl XorShift {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Waits, without blocking the runtime, until `condition` holds; fails naming `what`.
pub async fn eventually(what: &str, within: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + within;
    while !condition() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `eventually` for tests that block (child processes, blocking sockets), outside a runtime.
pub fn eventually_blocking(what: &str, within: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + within;
    while !condition() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Plain HTTP GET over a fresh connection; returns status and body.
pub async fn http_get(address: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(address).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nhost: {address}\r\nconnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    tokio::time::timeout(PATIENCE, stream.read_to_end(&mut raw))
        .await
        .expect("response in time")
        .expect("read");
    parse_response(&raw).expect("a status line and a whole head")
}

/// One request over a fresh blocking connection to 127.0.0.1:`port`: `request` is the whole
/// request text, and the server must close the connection after its answer. Status and body;
/// None when nothing answers within `PATIENCE` or the answer is no HTTP response.
pub fn raw_request_blocking(port: u16, request: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(PATIENCE)).ok()?;
    stream.write_all(request.as_bytes()).ok()?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).ok()?;
    parse_response(&raw)
}

/// An HTTP/1.1 request with `headers` and no body, over a fresh blocking connection to
/// 127.0.0.1:`port` that closes after the answer; None when nothing answers.
pub fn http_request_blocking(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Option<(u16, String)> {
    let mut request = format!("{method} {path} HTTP/1.1\r\nhost: localhost\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    if method != "GET" {
        request.push_str("content-length: 0\r\n");
    }
    request.push_str("connection: close\r\n\r\n");
    raw_request_blocking(port, &request)
}

/// The status and body of a whole HTTP/1 response as read off the wire (the body as sent:
/// these servers answer with a length, not chunks). None without a status line and a
/// complete head.
pub fn parse_response(raw: &[u8]) -> Option<(u16, String)> {
    let text = String::from_utf8_lossy(raw);
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let (_, body) = text.split_once("\r\n\r\n")?;
    Some((status, body.to_string()))
}

/// The value of one exposition line, found by its exact series name and labels: the one
/// parser of `/metrics` text in the tests.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Runs a whole agent (checker, bus, runner, sink, endpoints) on `toml` until every check has
/// a result, then returns `/api/v1/checks` as JSON and the `/metrics` text, as a scraper sees
/// them. The config's `[agent]` table is added here.
pub async fn agent_scrape(toml: &str) -> (serde_json::Value, String) {
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
    let checks = loop {
        let (status, body) = http_get(api, "/api/v1/checks").await;
        assert_eq!(status, 200);
        let checks: serde_json::Value = serde_json::from_str(&body).expect("checks JSON");
        let all_ran = checks
            .as_array()
            .expect("an array")
            .iter()
            .all(|check| !check["latest"].is_null());
        if all_ran {
            break checks;
        }
        assert!(started.elapsed() < PATIENCE, "no results in time: {checks}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (status, text) = http_get(api, "/metrics").await;
    assert_eq!(status, 200);
    shutdown.cancel();
    let _ = tokio::time::timeout(PATIENCE, running).await;
    (checks, text)
}

/// A certificate and its key, for test TLS servers.
pub struct TestIdentity {
    pub chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    pub key: rustls::pki_types::PrivateKeyDer<'static>,
}

impl TestIdentity {
    pub fn server_config(&self, alpn: &[&[u8]]) -> Arc<rustls::ServerConfig> {
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(self.chain.clone(), self.key.clone_key())
        .expect("server certificate");
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }
}

/// A test certificate authority: its PEM file (to use as `ca_file`) and its issuer.
pub struct TestCa {
    pub ca_file: std::path::PathBuf,
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

impl TestCa {
    pub fn new(common_name: &str) -> TestCa {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, common_name);
        let key = rcgen::KeyPair::generate().expect("key");
        let issuer = rcgen::CertifiedIssuer::self_signed(params, key).expect("CA");
        let ca_file = temp_path("ca", "pem");
        std::fs::write(&ca_file, issuer.pem()).expect("write CA");
        TestCa { ca_file, issuer }
    }

    /// A leaf for `names`, valid from a day before `not_after` (or from a year ago, for
    /// long-lived ones) to `not_after`.
    pub fn leaf(&self, names: &[&str], not_after: time::OffsetDateTime) -> TestIdentity {
        let mut params = rcgen::CertificateParams::new(
            names
                .iter()
                .map(|name| name.to_string())
                .collect::<Vec<_>>(),
        )
        .expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, names[0]);
        params.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(365);
        params.not_after = not_after;
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("leaf");
        TestIdentity {
            chain: vec![cert.der().clone()],
            key: rustls::pki_types::PrivateKeyDer::Pkcs8(
                rustls::pki_types::PrivatePkcs8KeyDer::from(key.serialize_der()),
            ),
        }
    }
}

/// A fresh path in the temporary directory.
pub fn temp_path(stem: &str, extension: &str) -> std::path::PathBuf {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    std::env::temp_dir().join(format!(
        "bastion-test-{stem}-{}-{}.{extension}",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
    ))
}

/// The message of a config that must not load.
pub fn config_error(toml: &str) -> String {
    match bastion_agent::validate::parse(toml, Format::Toml, Path::new("test.toml")) {
        Ok(_) => panic!("config should be refused:\n{toml}"),
        Err(error) => error.to_string(),
    }
}

/// Asserts that each `base` + case text is refused with a message containing the case's
/// expected text.
pub fn assert_config_errors(base: &str, cases: &[(&str, &str)]) {
    for (rest, expected) in cases {
        let error = config_error(&format!("{base}{rest}"));
        assert!(error.contains(expected), "{error}\n !~ {expected}");
    }
}

/// One `[[checks.assertions]]` table.
pub fn assertion_toml(key: &str, relationship: &str, operand: &str) -> String {
    format!(
        "[[checks.assertions]]\nkey = \"{key}\"\nrelationship = \"{relationship}\"\noperand = '{operand}'\n"
    )
}

/// One row of an assertion table: key, relationship, operand, whether it passes, and the
/// `actual` it must report ("" when that varies from run to run, e.g. a latency).
pub type AssertionRow<'a> = (&'a str, &'a str, &'a str, bool, &'a str);

/// Runs, for each row, the single-check config that `config_for` makes around the row's
/// assertion, and checks the verdict, the `actual` and the message.
pub async fn assert_assertion_table(
    rows: &[AssertionRow<'_>],
    config_for: impl Fn(&str) -> String,
) {
    for &(key, relationship, operand, passing, actual) in rows {
        let config = config(&config_for(&assertion_toml(key, relationship, operand)));
        let result = run_single(&config).await;
        let label = format!("{key} {relationship} {operand}");
        let response = &result.responses[0];
        assert!(response.error.is_none(), "{label}: {response:?}");
        let assertion = &response.assertions[0];
        assert_eq!(assertion.passing, passing, "{label}: {assertion:?}");
        assert_eq!(
            assertion.message.is_none(),
            passing,
            "{label}: {assertion:?}"
        );
        assert_eq!(result.passing, passing, "{label}");
        if !actual.is_empty() {
            assert_eq!(assertion.actual, actual, "{label}");
        }
    }
}

/// Runs `config`'s one check while this test's runtime thread is held for 800 ms from the
/// moment `asked` is notified (the test's server has the probe's request, on a thread of its
/// own): the probe's worker is busy when the answer arrives. The test's runtime must have one
/// thread (plain `#[tokio::test]`). Returns the result, checked to be a success, and the
/// run's wall time, checked to cover the hold.
pub async fn run_single_with_worker_held(
    config: &Config,
    asked: Arc<tokio::sync::Notify>,
) -> (CheckResult, Duration) {
    let hold = Duration::from_millis(800);
    let hog = tokio::spawn(async move {
        asked.notified().await;
        std::thread::sleep(hold);
    });
    let started = std::time::Instant::now();
    let result = run_single(config).await;
    let elapsed = started.elapsed();
    hog.await.unwrap();
    let response = &result.responses[0];
    assert!(response.error.is_none(), "{response:?}");
    assert!(elapsed >= hold, "the hog held the worker: {elapsed:?}");
    (result, elapsed)
}
