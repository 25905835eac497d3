//! A real nats-server on a random port for one test, with JetStream on and its own store
//! directory. It can be stopped and started again on the same port (the store survives), and
//! it is killed on drop. The binary comes from `NATS_SERVER`, else `nats-server` on PATH, else
//! Debian's `/usr/sbin/nats-server`.

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
        let dir = std::env::temp_dir().join(format!(
            "bastion-nats-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("nats dir");
        let port = free_port_on(host);
        let conf = dir.join("nats.conf");
        let text = format!(
            "host: {host}\nport: {port}\njetstream {{\n  store_dir: \"{}\"\n}}\n{extra}\n",
            dir.join("js").display()
        );
        std::fs::write(&conf, text).expect("nats conf");
        let mut server = NatsServer {
            host: host.to_string(),
            port,
            dir,
            conf,
            child: None,
        };
        server.resume();
        server
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

/// A NATS connection the test watches the bus through.
pub async fn observer(url: &str) -> Arc<NatsBus> {
    let config: NatsConfig = toml::from_str(&format!("url = \"{url}\"")).expect("nats config");
    let bus = NatsBus::connect(
        &config,
        "observer",
        Arc::new(Metrics::new()),
        Some(super::PATIENCE),
    )
    .await
    .expect("the observer connects");
    Arc::new(bus)
}
