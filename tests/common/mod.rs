//! Helpers shared by the integration tests: configs from TOML text, real listeners on
//! 127.0.0.x, minimal HTTP/1.1 servers with chosen misbehaviour, and a TLS server.
#![allow(dead_code)]

pub mod nats;
pub mod process;

use bastion_agent::checks::CompiledCheck;
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
    match Config::parse(toml, Format::Toml, Path::new("test.toml")) {
        Ok(config) => config,
        Err(error) => panic!("test config is invalid: {error}\n{toml}"),
    }
}

pub fn dispatcher(config: &Config) -> (Arc<Dispatcher>, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::new());
    let dispatcher = build_dispatcher(config, Arc::clone(&metrics)).expect("dispatcher");
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
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .expect("status line");
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default();
    (status, body)
}
