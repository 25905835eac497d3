//! Benchmark load driver for blackbox_exporter: requests `/probe` at a fixed rate, the way
//! Prometheus scrapes it (keep-alive connections, each request waiting for its answer), and
//! reports what the exporter measured. Used by `bench/run`; not part of bastion.
//!
//! Usage: bench_drive <exporter host:port> <rate per second> <seconds> <module> <target URL>...
//! Targets are used in turn. Prints one JSON object: requests sent, answered, failed probes,
//! late sends, and every `probe_http_duration_seconds{phase="processing"}` value seen.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

#[derive(Default)]
struct Tally {
    answered: u64,
    failed: u64,
    errors: u64,
    processing: Vec<f64>,
}

async fn connect(address: &str) -> Option<Sender> {
    let stream = TcpStream::connect(address).await.ok()?;
    stream.set_nodelay(true).ok()?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .ok()?;
    tokio::spawn(connection);
    Some(sender)
}

/// Counts a failed probe, or keeps the processing time of a successful one.
fn parse(body: &str, tally: &mut Tally) {
    let mut processing = None;
    let mut success = false;
    for line in body.lines() {
        if let Some(value) = line.strip_prefix("probe_http_duration_seconds{phase=\"processing\"} ")
        {
            processing = value.trim().parse::<f64>().ok();
        }
        if line.starts_with("probe_success ") {
            success = line.ends_with(" 1");
        }
    }
    match (success, processing) {
        (true, Some(value)) => tally.processing.push(value),
        _ => tally.failed += 1,
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 6 {
        eprintln!("usage: bench_drive <exporter host:port> <rate> <seconds> <module> <target>...");
        std::process::exit(2);
    }
    let exporter = args[1].clone();
    let rate: f64 = args[2].parse().unwrap_or(100.0);
    let seconds: f64 = args[3].parse().unwrap_or(10.0);
    let module = args[4].clone();
    let targets: Vec<String> = args[5..].to_vec();
    let idle: Arc<Mutex<Vec<Sender>>> = Arc::default();
    let tally: Arc<Mutex<Tally>> = Arc::default();
    let period = Duration::from_secs_f64(1.0 / rate);
    let total = (rate * seconds) as u64;
    let start = Instant::now();
    let mut late = 0u64;
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..total {
        let due = start + period.mul_f64(n as f64);
        let now = Instant::now();
        if due > now {
            tokio::time::sleep(due - now).await;
        } else if now - due > Duration::from_millis(10) {
            late += 1;
        }
        let target = &targets[(n as usize) % targets.len()];
        let path = format!("/probe?module={module}&target={target}");
        let idle = Arc::clone(&idle);
        let tally = Arc::clone(&tally);
        let exporter = exporter.clone();
        tasks.spawn(async move {
            let reused = idle.lock().unwrap().pop();
            let sender = match reused {
                Some(sender) if !sender.is_closed() => Some(sender),
                _ => connect(&exporter).await,
            };
            let Some(mut sender) = sender else {
                tally.lock().unwrap().errors += 1;
                return;
            };
            let request = hyper::Request::get(path)
                .header("host", exporter.as_str())
                .body(Empty::<Bytes>::new())
                .unwrap();
            let outcome = async {
                sender.ready().await.ok()?;
                let response = sender.send_request(request).await.ok()?;
                let body = response.into_body().collect().await.ok()?.to_bytes();
                Some(String::from_utf8_lossy(&body).into_owned())
            }
            .await;
            match outcome {
                Some(body) => {
                    let mut tally = tally.lock().unwrap();
                    tally.answered += 1;
                    parse(&body, &mut tally);
                    drop(tally);
                    idle.lock().unwrap().push(sender);
                }
                None => tally.lock().unwrap().errors += 1,
            }
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    let tally = tally.lock().unwrap();
    let values: Vec<String> = tally.processing.iter().map(|v| format!("{v}")).collect();
    println!(
        "{{\"sent\":{total},\"answered\":{},\"failed_probes\":{},\"errors\":{},\"late_sends\":{late},\"seconds\":{:.3},\"processing\":[{}]}}",
        tally.answered,
        tally.failed,
        tally.errors,
        start.elapsed().as_secs_f64(),
        values.join(",")
    );
}
