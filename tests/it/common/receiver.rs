//! A scriptable HTTP/1.1 server on 127.0.0.1:0, on a thread and runtime of its own (so tests
//! that block on child processes can use it too): it records every request (path, headers,
//! body, arrival time) and answers from a script (`then`), else with its default reply. It
//! stands in for Slack, PagerDuty and webhook receivers, and for a check's target whose health
//! a test flips. `hold` makes requests wait until `release`. Stopped on drop.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// What the server answers to one request.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn new(status: u16, body: &str) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: body.to_string(),
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }
}

/// One request as it arrived.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub path: String,
    /// Lowercase names.
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
    pub at: Instant,
    /// The same, on the wall clock.
    pub wall: std::time::SystemTime,
    /// The status it was answered with.
    pub status: u16,
}

impl Received {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|error| {
            panic!(
                "request body is not JSON ({error}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

struct Shared {
    received: Mutex<Vec<Received>>,
    script: Mutex<VecDeque<Reply>>,
    default: Mutex<Reply>,
}

pub struct Receiver {
    pub address: SocketAddr,
    shared: Arc<Shared>,
    open: watch::Sender<bool>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Receiver {
    /// Starts answering `default` to every request.
    pub fn start(default: Reply) -> Receiver {
        Receiver::start_on("127.0.0.1:0", default)
    }

    /// `start`, on a chosen address.
    pub fn start_on(bind: &str, default: Reply) -> Receiver {
        Receiver::start_with(bind, default, None)
    }

    /// `start`, speaking HTTPS with `tls`.
    pub fn start_tls(default: Reply, tls: Arc<rustls::ServerConfig>) -> Receiver {
        Receiver::start_with("127.0.0.1:0", default, Some(tls))
    }

    fn start_with(bind: &str, default: Reply, tls: Option<Arc<rustls::ServerConfig>>) -> Receiver {
        let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
        let shared = Arc::new(Shared {
            received: Mutex::new(Vec::new()),
            script: Mutex::new(VecDeque::new()),
            default: Mutex::new(default),
        });
        let (open, gate) = watch::channel(true);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let listener = std::net::TcpListener::bind(bind).expect("receiver binds");
        listener.set_nonblocking(true).expect("non-blocking");
        let address = listener.local_addr().expect("receiver address");
        let thread = std::thread::spawn({
            let shared = Arc::clone(&shared);
            move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("receiver runtime");
                runtime.block_on(async move {
                    let listener =
                        tokio::net::TcpListener::from_std(listener).expect("tokio listener");
                    let accept = async {
                        while let Ok((stream, _)) = listener.accept().await {
                            let shared = Arc::clone(&shared);
                            let gate = gate.clone();
                            let acceptor = acceptor.clone();
                            tokio::spawn(async move {
                                let service = hyper::service::service_fn(move |request| {
                                    answer(Arc::clone(&shared), gate.clone(), request)
                                });
                                let http = hyper::server::conn::http1::Builder::new();
                                match acceptor {
                                    Some(acceptor) => {
                                        if let Ok(stream) = acceptor.accept(stream).await {
                                            let io = hyper_util::rt::TokioIo::new(stream);
                                            let _ = http.serve_connection(io, service).await;
                                        }
                                    }
                                    None => {
                                        let io = hyper_util::rt::TokioIo::new(stream);
                                        let _ = http.serve_connection(io, service).await;
                                    }
                                }
                            });
                        }
                    };
                    tokio::select! {
                        _ = accept => {}
                        _ = stopped => {}
                    }
                });
            }
        });
        Receiver {
            address,
            shared,
            open,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:port`.
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// `https://127.0.0.1:port`, for a receiver started with `start_tls`.
    pub fn https_url(&self) -> String {
        format!("https://{}", self.address)
    }

    /// The next requests get these replies, in order; then the default again.
    pub fn then(&self, replies: Vec<Reply>) {
        self.shared.script.lock().unwrap().extend(replies);
    }

    /// Replaces the default reply (a target turning healthy or not).
    pub fn set_default(&self, reply: Reply) {
        *self.shared.default.lock().unwrap() = reply;
    }

    /// Requests wait before being answered until `release`.
    pub fn hold(&self) {
        self.open.send_replace(false);
    }

    pub fn release(&self) {
        self.open.send_replace(true);
    }

    pub fn received(&self) -> Vec<Received> {
        self.shared.received.lock().unwrap().clone()
    }

    /// The JSON bodies of the requests answered with a 2xx, in order.
    pub fn accepted_json(&self) -> Vec<serde_json::Value> {
        self.received()
            .iter()
            .filter(|r| (200..300).contains(&r.status))
            .map(Received::json)
            .collect()
    }

    /// Waits (blocking) until `condition` holds over the requests so far.
    pub fn wait_for(
        &self,
        what: &str,
        within: Duration,
        condition: impl Fn(&[Received]) -> bool,
    ) -> Vec<Received> {
        let deadline = Instant::now() + within;
        loop {
            let received = self.received();
            if condition(&received) {
                return received;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; received so far:\n{}",
                received
                    .iter()
                    .map(|r| format!(
                        "{} {} -> {}: {}",
                        r.method,
                        r.path,
                        r.status,
                        String::from_utf8_lossy(&r.body)
                    ))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.release();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn answer(
    shared: Arc<Shared>,
    mut gate: watch::Receiver<bool>,
    request: hyper::Request<hyper::body::Incoming>,
) -> Result<hyper::Response<Full<Bytes>>, std::convert::Infallible> {
    let at = Instant::now();
    let wall = std::time::SystemTime::now();
    let method = request.method().to_string();
    let path = request
        .uri()
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    let headers: BTreeMap<String, String> = request
        .headers()
        .iter()
        .map(|(name, value)| {
            (
                name.as_str().to_string(),
                value.to_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    let body = request
        .into_body()
        .collect()
        .await
        .map(|collected| collected.to_bytes().to_vec())
        .unwrap_or_default();
    let _ = gate.wait_for(|open| *open).await;
    let reply = {
        let next = shared.script.lock().unwrap().pop_front();
        next.unwrap_or_else(|| shared.default.lock().unwrap().clone())
    };
    shared.received.lock().unwrap().push(Received {
        method,
        path,
        headers,
        body,
        at,
        wall,
        status: reply.status,
    });
    let mut response = hyper::Response::builder().status(reply.status);
    for (name, value) in &reply.headers {
        response = response.header(name.as_str(), value.as_str());
    }
    Ok(response
        .body(Full::new(Bytes::from(reply.body)))
        .expect("a valid response"))
}
