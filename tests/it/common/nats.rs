//! A real nats-server on a random port for one test, with JetStream on and its own store
//! directory. It can be stopped and started again on the same port (the store survives), and
//! it is killed on drop. The binary comes from `NATS_SERVER`, else `nats-server` on PATH, else
//! Debian's `/usr/sbin/nats-server`. `NatsCluster` starts several of them clustered (routes
//! between them, JetStream in each), each with an HTTP monitoring port.

use bastion_agent::bus::nats::NatsBus;
use bastion_agent::config::NatsConfig;
use bastion_agent::metrics::Metrics;
use std::net::TcpListener as StdListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct NatsServer {
    /// The address it listens on: 127.0.0.1 unless started with `start_on`.
    pub host: String,
    pub port: u16,
    pub dir: PathBuf,
    /// Its HTTP monitoring port (`/healthz`, `/jsz`, `/connz`), when it has one.
    pub monitor: Option<u16>,
    conf: PathBuf,
    child: Option<Child>,
}

fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("NATS_SERVER") {
        return PathBuf::from(path);
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let candidate = dir.join("nats-server");
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    PathBuf::from("/usr/sbin/nats-server")
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    free_port_on("127.0.0.1")
}

/// A port nobody listens on right now at `host`.
pub fn free_port_on(host: &str) -> u16 {
    StdListener::bind((host, 0))
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free port")
}

static NEXT: AtomicU32 = AtomicU32::new(0);

impl NatsServer {
    /// A server with JetStream and no auth.
    pub fn start() -> NatsServer {
        NatsServer::start_with("")
    }

    /// A server with `extra` appended to its config file (auth, TLS, limits).
    pub fn start_with(extra: &str) -> NatsServer {
        NatsServer::start_at("127.0.0.1", extra)
    }

    /// A server with JetStream and no auth that listens on `host` (an address this machine
    /// has, e.g. the bridge of a `netns::Topology`) instead of 127.0.0.1.
    pub fn start_on(host: &str) -> NatsServer {
        NatsServer::start_at(host, "")
    }

    fn start_at(host: &str, extra: &str) -> NatsServer {
        let port = free_port_on(host);
        let mut server = NatsServer::prepare(host, port, None, extra);
        server.resume();
        server
    }

    /// Its directory and config file (JetStream in `<dir>/js`, then `extra`), not started.
    fn prepare(host: &str, port: u16, monitor: Option<u16>, extra: &str) -> NatsServer {
        let dir = std::env::temp_dir().join(format!(
            "bastion-nats-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("nats dir");
        let conf = dir.join("nats.conf");
        let http = monitor
            .map(|port| format!("http: {host}:{port}\n"))
            .unwrap_or_default();
        let text = format!(
            "host: {host}\nport: {port}\n{http}jetstream {{\n  store_dir: \"{}\"\n}}\n{extra}\n",
            dir.join("js").display()
        );
        std::fs::write(&conf, text).expect("nats conf");
        NatsServer {
            host: host.to_string(),
            port,
            dir,
            monitor,
            conf,
            child: None,
        }
    }

    /// A JSON document from its monitoring port (`/jsz`, `/connz`), or None while it does
    /// not answer.
    pub fn monitoring(&self, path: &str) -> Option<serde_json::Value> {
        let (status, body) = super::process::http_get_blocking(self.monitor?, path)?;
        if status != 200 {
            return None;
        }
        // nats-server (Go's net/http) sends a body past 2 KiB in chunks.
        serde_json::from_str(&body)
            .ok()
            .or_else(|| serde_json::from_str(&dechunk(&body)?).ok())
    }

    /// Whether the process is running (it may not accept connections yet).
    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    pub fn url(&self) -> String {
        format!("nats://{}:{}", self.host, self.port)
    }

    /// Starts the server (again) on its port and waits until it accepts connections.
    pub fn resume(&mut self) {
        assert!(self.child.is_none(), "already running");
        let log = std::fs::File::create(self.dir.join("server.log")).expect("log file");
        let child = Command::new(binary())
            .arg("-c")
            .arg(&self.conf)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|error| {
                panic!(
                    "cannot start {} ({error}); install nats-server or set NATS_SERVER",
                    binary().display()
                )
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect((self.host.as_str(), self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nats-server did not start; see {}",
                self.dir.join("server.log").display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the server; `resume` brings it back on the same port with the same store.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn restart(&mut self) {
        self.stop();
        self.resume();
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The body of a chunked HTTP/1.1 response, or None when it is not one.
fn dechunk(body: &str) -> Option<String> {
    let mut rest = body;
    let mut whole = String::new();
    loop {
        let (size, after) = rest.split_once("\r\n")?;
        let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        if size == 0 {
            return Some(whole);
        }
        whole.push_str(after.get(..size)?);
        rest = after.get(size..)?.strip_prefix("\r\n")?;
    }
}

/// Nodes of one NATS cluster on 127.0.0.1: each with JetStream (its own store), a
/// `server_name` (`n1`, `n2`, ...), a monitoring port, and routes to all the others. Each
/// node can be stopped and resumed on its ports, with its store; all are killed on drop.
pub struct NatsCluster {
    pub nodes: Vec<NatsServer>,
}

impl NatsCluster {
    /// `size` nodes, started, with a JetStream meta leader elected.
    pub fn start(size: usize) -> NatsCluster {
        let ports: Vec<(u16, u16, u16)> = (0..size)
            .map(|_| (free_port(), free_port(), free_port()))
            .collect();
        let nodes = (0..size)
            .map(|index| {
                let (client, route, monitor) = ports[index];
                let routes = ports
                    .iter()
                    .enumerate()
                    .filter(|(other, _)| *other != index)
                    .map(|(_, (_, route, _))| format!("nats-route://127.0.0.1:{route}"))
                    .collect::<Vec<_>>()
                    .join(", ");
                let extra = format!(
                    "server_name: {}\ncluster {{\n  name: bastion-test\n  host: 127.0.0.1\n  port: {route}\n  routes: [{routes}]\n}}\n",
                    NatsCluster::name(index)
                );
                NatsServer::prepare("127.0.0.1", client, Some(monitor), &extra)
            })
            .collect();
        let mut cluster = NatsCluster { nodes };
        for node in &mut cluster.nodes {
            node.resume();
        }
        cluster.wait_for_meta_leader(super::PATIENCE * 2);
        cluster
    }

    /// The `server_name` of node `index`.
    pub fn name(index: usize) -> String {
        format!("n{}", index + 1)
    }

    /// Every node's URL, starting with node `first` and going round: a client given this list
    /// knows them all.
    pub fn urls_from(&self, first: usize) -> Vec<String> {
        (0..self.nodes.len())
            .map(|offset| self.nodes[(first + offset) % self.nodes.len()].url())
            .collect()
    }

    /// The JetStream meta leader's name, as every running node reports it, once they agree.
    pub fn meta_leader(&self) -> Option<String> {
        let mut seen = None;
        for node in self.nodes.iter().filter(|node| node.running()) {
            let jsz = node.monitoring("/jsz")?;
            let leader = jsz["meta_cluster"]["leader"].as_str()?.to_string();
            if leader.is_empty() || seen.as_ref().is_some_and(|seen| *seen != leader) {
                return None;
            }
            seen = Some(leader);
        }
        seen
    }

    /// Waits until the running nodes agree on a JetStream meta leader: only then can streams be
    /// created. Polls instead of sleeping a fixed time.
    pub fn wait_for_meta_leader(&self, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            if let Some(leader) = self.meta_leader() {
                return leader;
            }
            assert!(
                Instant::now() < deadline,
                "the NATS cluster elected no JetStream meta leader; see the server.log files under {}",
                self.nodes[0].dir.parent().map(|p| p.display().to_string()).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The index of the node whose clients include one named `name` (async-nats sends the
    /// name bastion gives it, `bastion <agent id>`), from each running node's `/connz`.
    pub fn node_of_client(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|node| {
            node.running()
                && node.monitoring("/connz?limit=1024").is_some_and(|connz| {
                    connz["connections"].as_array().is_some_and(|connections| {
                        connections.iter().any(|c| c["name"].as_str() == Some(name))
                    })
                })
        })
    }
}

/// A NATS connection the test watches the bus through.
pub async fn observer(url: &str) -> Arc<NatsBus> {
    let config: NatsConfig = toml::from_str(&format!("url = \"{url}\"")).expect("nats config");
    let bus = NatsBus::connect(&config, "observer", &Metrics::new(), Some(super::PATIENCE))
        .await
        .expect("the observer connects");
    Arc::new(bus)
}
