//! Network locations for one test, made of Linux network namespaces on this machine: each
//! location is a namespace with a path to the bus (a bridge in the root namespace, where the
//! test's nats-server listens) and a separate path to the test's target servers, reached
//! through a relay that holds every chunk for the location's one-way delay (the kernel here has
//! no netem, so the delay is added in user space by `delay_relay.py`).
//!
//! Per topology `N` (claimed by creating the bridge `bbN`, so parallel test processes never
//! share one), with location `i`:
//!
//! | what                | root namespace             | namespace `bN_i`             |
//! |---------------------|----------------------------|------------------------------|
//! | bus path            | bridge `bbN`, 10.N.0.1/24  | `bus`, 10.N.0.(10+i)/24      |
//! | target path         | `btN_i`, 10.N.(100+i).1/24 | `target`, 10.N.(100+i).2/24  |
//! | service (the relay) |                            | `lo`, 10.N.250.1/32          |
//!
//! It never uses an address outside 10.N.0.0/16 and loopback, never routes anything off this
//! machine, and removes all it made on drop, even after a panic. Without root or without
//! `ip netns` it makes nothing and says why, and the test skips.

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;
use tokio::net::TcpListener;

/// The subnets a topology may claim: 10.N.0.0/16 for N in this range.
const SUBNETS: std::ops::RangeInclusive<u8> = 64..=191;
/// What the bridge's alias says, so that a leftover of a crashed run can be recognised.
const OWNER: &str = "bastion-netns pid=";

pub struct Topology {
    n: u8,
    locations: Vec<Location>,
    /// (service port, target port) once `start_relays` ran.
    relay_ports: Option<(u16, u16)>,
    dir: PathBuf,
}

struct Location {
    name: String,
    delay: Duration,
    namespace: String,
    relay: Option<Child>,
}

impl Topology {
    /// One namespace per `(name, one-way delay)`, with its bus and target paths, or None
    /// (after saying why on stderr) where network namespaces cannot be made: not root, no
    /// `ip`, or `ip netns add` refused.
    pub fn create(locations: &[(&str, Duration)]) -> Option<Topology> {
        assert!(
            (1..=50).contains(&locations.len()),
            "a topology has 1 to 50 locations"
        );
        if !is_root() {
            eprintln!("skipping: network namespaces need root, and this test is not root");
            return None;
        }
        if let Err(error) = Command::new("ip").arg("-V").output() {
            eprintln!("skipping: cannot run `ip` ({error}); install iproute2");
            return None;
        }
        let n = claim()?;
        let dir = std::env::temp_dir().join(format!("bastion-netns-{n}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("topology dir");
        let mut topology = Topology {
            n,
            locations: Vec::new(),
            relay_ports: None,
            dir,
        };
        let bridge = topology.bridge();
        ip(&["addr", "add", &format!("10.{n}.0.1/24"), "dev", &bridge]);
        ip(&["link", "set", &bridge, "up"]);
        for (i, (name, delay)) in locations.iter().enumerate() {
            let namespace = format!("b{n}_{i}");
            if let Err(error) = try_ip(&["netns", "add", &namespace]) {
                eprintln!("skipping: `ip netns add {namespace}` failed: {error}");
                return None;
            }
            topology.locations.push(Location {
                name: name.to_string(),
                delay: *delay,
                namespace,
                relay: None,
            });
            topology.wire(i);
        }
        Some(topology)
    }

    /// Loopback, the bus path and the target path of location `i`, whose namespace exists.
    fn wire(&self, i: usize) {
        let n = self.n;
        let namespace = self.namespace(i);
        let inside = |args: &[&str]| ip(&[&["-n", namespace][..], args].concat());
        inside(&["link", "set", "lo", "up"]);
        inside(&["addr", "add", &format!("10.{n}.250.1/32"), "dev", "lo"]);
        // The bus path: one leg on the bridge.
        let bus = format!("bv{n}_{i}");
        ip(&[
            "link", "add", &bus, "type", "veth", "peer", "name", "bus", "netns", namespace,
        ]);
        ip(&["link", "set", &bus, "master", &self.bridge(), "up"]);
        inside(&[
            "addr",
            "add",
            &format!("10.{n}.0.{}/24", 10 + i),
            "dev",
            "bus",
        ]);
        inside(&["link", "set", "bus", "up"]);
        // The target path: a pair of its own.
        let target = self.target_link(i);
        ip(&[
            "link", "add", &target, "type", "veth", "peer", "name", "target", "netns", namespace,
        ]);
        ip(&[
            "addr",
            "add",
            &format!("10.{n}.{}.1/24", 100 + i),
            "dev",
            &target,
        ]);
        ip(&["link", "set", &target, "up"]);
        inside(&[
            "addr",
            "add",
            &format!("10.{n}.{}.2/24", 100 + i),
            "dev",
            "target",
        ]);
        inside(&["link", "set", "target", "up"]);
        // While the target path is cut its route is ignored, so a connect fails at once
        // (network unreachable) instead of waiting out SYN retries.
        let status = Command::new("ip")
            .args(["netns", "exec", namespace, "sh", "-c"])
            .arg("echo 1 > /proc/sys/net/ipv4/conf/all/ignore_routes_with_linkdown")
            .status()
            .expect("ip netns exec runs");
        assert!(status.success(), "cannot set ignore_routes_with_linkdown");
    }

    /// N of 10.N.0.0/16.
    pub fn id(&self) -> u8 {
        self.n
    }

    pub fn len(&self) -> usize {
        self.locations.len()
    }

    pub fn is_empty(&self) -> bool {
        self.locations.is_empty()
    }

    /// The name the test gave location `i`.
    pub fn name(&self, i: usize) -> &str {
        &self.locations[i].name
    }

    /// The one-way delay of location `i`'s target path.
    pub fn delay(&self, i: usize) -> Duration {
        self.locations[i].delay
    }

    /// The network namespace of location `i` (`bN_i`).
    pub fn namespace(&self, i: usize) -> &str {
        &self.locations[i].namespace
    }

    /// `ip netns exec <namespace>`: put in front of a command to run it in location `i`
    /// (e.g. as `Bastion::start_under`'s wrapper).
    pub fn exec_prefix(&self, i: usize) -> Vec<String> {
        ["ip", "netns", "exec", self.namespace(i)]
            .map(String::from)
            .to_vec()
    }

    /// The bridge address in the root namespace (10.N.0.1): where the test's nats-server
    /// listens (`NatsServer::start_on`), reached from every location and from the root.
    pub fn bus_host(&self) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, self.n, 0, 1))
    }

    /// The root-side end of each location's target path (10.N.(100+i).1), in location order:
    /// the test's target servers listen on these.
    pub fn target_addresses(&self) -> Vec<IpAddr> {
        (0..self.len())
            .map(|i| IpAddr::V4(Ipv4Addr::new(10, self.n, 100 + i as u8, 1)))
            .collect()
    }

    /// One listener per location on the same free port, on every target address.
    pub async fn bind_targets(&self) -> (u16, Vec<TcpListener>) {
        let ips: Vec<String> = self
            .target_addresses()
            .iter()
            .map(IpAddr::to_string)
            .collect();
        let ips: Vec<&str> = ips.iter().map(String::as_str).collect();
        super::listeners_on_one_port(&ips).await
    }

    /// The service address (10.N.250.1): the same in every location, and in each one it
    /// reaches the target through that location's relay.
    pub fn service_ip(&self) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, self.n, 250, 1))
    }

    /// The service address with `port`, for URLs (`http://{}/`).
    pub fn service(&self, port: u16) -> SocketAddr {
        SocketAddr::new(self.service_ip(), port)
    }

    /// Starts a relay in every location, from the service address's `service_port` to
    /// `target_port` on its own target path, and waits until each one listens.
    pub fn start_relays(&mut self, service_port: u16, target_port: u16) {
        self.relay_ports = Some((service_port, target_port));
        let waits: Vec<_> = (0..self.len()).map(|i| self.spawn_relay(i)).collect();
        for (i, ready) in waits.into_iter().enumerate() {
            self.wait_relay(i, ready);
        }
    }

    /// Starts location `i`'s relay again after `stop_relay`, on the ports `start_relays` had.
    pub fn start_relay(&mut self, i: usize) {
        let ready = self.spawn_relay(i);
        self.wait_relay(i, ready);
    }

    /// Kills location `i`'s relay: connections to the service address there are refused.
    pub fn stop_relay(&mut self, i: usize) {
        if let Some(mut relay) = self.locations[i].relay.take() {
            let _ = relay.kill();
            let _ = relay.wait();
        }
    }

    fn spawn_relay(&mut self, i: usize) -> mpsc::Receiver<String> {
        assert!(self.locations[i].relay.is_none(), "relay {i} already runs");
        let (service_port, target_port) =
            self.relay_ports.expect("start_relays before start_relay");
        let n = self.n;
        let log = std::fs::File::create(self.relay_log(i)).expect("relay log");
        let mut child = Command::new("ip")
            .args(["netns", "exec", self.namespace(i), "python3"])
            .arg(relay_script())
            .arg("--listen")
            .arg(format!("10.{n}.250.1:{service_port}"))
            .arg("--upstream")
            .arg(format!("10.{n}.{}.1:{target_port}", 100 + i))
            .arg("--delay-ms")
            .arg((self.delay(i).as_secs_f64() * 1000.0).to_string())
            // The relay exits when this pipe closes, so it dies with the test process.
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("ip netns exec python3 starts");
        let stdout = child.stdout.take().expect("relay stdout");
        let (send, ready) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = send.send(line);
        });
        self.locations[i].relay = Some(child);
        ready
    }

    fn wait_relay(&mut self, i: usize, ready: mpsc::Receiver<String>) {
        let line = ready.recv_timeout(super::PATIENCE).unwrap_or_default();
        if line.trim() != "ready" {
            self.stop_relay(i);
            panic!(
                "the relay of location {i} did not start (is python3 on PATH?); its log:\n{}",
                std::fs::read_to_string(self.relay_log(i)).unwrap_or_default()
            );
        }
    }

    fn relay_log(&self, i: usize) -> PathBuf {
        self.dir.join(format!("relay-{i}.log"))
    }

    /// Cuts location `i`'s target path (its root-side link goes down): from there, requests
    /// to the service address fail at once while its bus path stays up.
    pub fn cut(&self, i: usize) {
        ip(&["link", "set", &self.target_link(i), "down"]);
    }

    /// Undoes `cut`.
    pub fn restore(&self, i: usize) {
        ip(&["link", "set", &self.target_link(i), "up"]);
    }

    /// The processes running in location `i`'s namespace.
    pub fn pids(&self, i: usize) -> Vec<u32> {
        namespace_pids(self.namespace(i))
    }

    /// One `GET /` from inside location `i` to the service address on `port`, over a fresh
    /// connection that the server closes: the status, the body and how long it took from
    /// connect to the last byte. Err says what went wrong (refused, reset, no answer within
    /// `within`, no HTTP).
    pub async fn http_get_from(
        &self,
        i: usize,
        port: u16,
        within: Duration,
    ) -> Result<(u16, String, Duration), String> {
        let mut command = Command::new("ip");
        command
            .args([
                "netns",
                "exec",
                self.namespace(i),
                "python3",
                "-c",
                HTTP_GET,
            ])
            .arg(self.service_ip().to_string())
            .arg(port.to_string())
            .arg(within.as_secs_f64().to_string());
        let output = tokio::task::spawn_blocking(move || command.output())
            .await
            .expect("the client task")
            .expect("ip netns exec python3 runs");
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        if !output.status.success() {
            return Err(format!(
                "{}{}",
                stdout.trim(),
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        let (seconds, response) = stdout.split_once('\n').ok_or("no output")?;
        let took = Duration::from_secs_f64(seconds.parse().map_err(|_| stdout.clone())?);
        let (status, body) = super::parse_response(response.as_bytes())
            .ok_or_else(|| format!("no HTTP response: {response:?}"))?;
        Ok((status, body, took))
    }

    fn bridge(&self) -> String {
        format!("bb{}", self.n)
    }

    fn target_link(&self, i: usize) -> String {
        format!("bt{}_{i}", self.n)
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for i in 0..self.len() {
            self.stop_relay(i);
        }
        remove(self.n);
    }
}

/// Times one request from connect to EOF; prints the seconds, a newline and the raw
/// response, or an error and exits 1.
const HTTP_GET: &str = r#"
import socket, sys, time
host, port, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
deadline = time.monotonic() + timeout
start = time.monotonic()
try:
    s = socket.create_connection((host, port), timeout=timeout)
    s.sendall(b"GET / HTTP/1.1\r\nhost: " + host.encode() + b"\r\nconnection: close\r\n\r\n")
    data = b""
    while True:
        s.settimeout(max(deadline - time.monotonic(), 0.001))
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
except OSError as error:
    print("error:", repr(error))
    sys.exit(1)
took = time.monotonic() - start
if not data:
    print("error: closed without an answer")
    sys.exit(1)
sys.stdout.write("%f\n" % took)
sys.stdout.write(data.decode("latin-1"))
"#;

fn relay_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/common/delay_relay.py")
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let uids = status.lines().find_map(|line| line.strip_prefix("Uid:"))?;
            uids.split_whitespace().nth(1).map(|euid| euid == "0")
        })
        .unwrap_or(false)
}

/// Runs `ip <args>`; Err holds what it said.
fn try_ip(args: &[&str]) -> Result<(), String> {
    let output = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|error| format!("cannot run ip: {error}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).trim().to_string())
    }
}

fn ip(args: &[&str]) {
    if let Err(error) = try_ip(args) {
        panic!("`ip {}` failed: {error}", args.join(" "));
    }
}

/// Claims a free N by creating the bridge `bbN` (creating a link is atomic: of two processes
/// only one succeeds), under a lock file so that telling a crashed run's leftover from a live
/// topology and removing it never races with another claim. Returns None, after saying why,
/// when no bridge can be made.
fn claim() -> Option<u8> {
    let lock =
        std::fs::File::create(std::env::temp_dir().join("bastion-netns.lock")).expect("lock file");
    lock.lock().expect("lock the lock file");
    // A crashed run's bridge still carries its addresses: remove those first.
    for n in SUBNETS {
        let bridge = format!("bb{n}");
        if Path::new("/sys/class/net").join(&bridge).exists() && is_leftover(&bridge) {
            remove(n);
        }
    }
    let taken = addresses_in_use();
    let span = (SUBNETS.end() - SUBNETS.start()) as usize + 1;
    let first = std::process::id() as usize % span;
    for step in 0..span {
        let n = SUBNETS.start() + ((first + step) % span) as u8;
        if taken
            .iter()
            .any(|address| address.starts_with(&format!("10.{n}.")))
        {
            continue;
        }
        let bridge = format!("bb{n}");
        match try_ip(&["link", "add", &bridge, "type", "bridge"]) {
            Ok(()) => {
                let alias = format!("{OWNER}{}", std::process::id());
                ip(&["link", "set", &bridge, "alias", &alias]);
                // Whatever else carries this N's names is a leftover now.
                remove_all_but_bridge(n);
                return Some(n);
            }
            Err(error) if error.contains("File exists") => continue,
            Err(error) => {
                eprintln!("skipping: `ip link add {bridge} type bridge` failed: {error}");
                return None;
            }
        }
    }
    eprintln!("skipping: every test subnet 10.{{64..191}}.0.0/16 is in use");
    None
}

/// Whether the bridge was made by a topology whose process is gone.
fn is_leftover(bridge: &str) -> bool {
    let alias = std::fs::read_to_string(Path::new("/sys/class/net").join(bridge).join("ifalias"))
        .unwrap_or_default();
    match alias.trim().strip_prefix(OWNER) {
        Some(pid) => !Path::new("/proc").join(pid).exists(),
        None => false,
    }
}

/// Every IPv4 address and route destination in the root namespace, so that no topology
/// shadows a network this machine really uses.
fn addresses_in_use() -> Vec<String> {
    let mut words = Vec::new();
    for args in [
        &["-4", "-o", "addr", "show"][..],
        &["-4", "route", "show", "table", "all"],
    ] {
        if let Ok(output) = Command::new("ip").args(args).output() {
            words.extend(
                String::from_utf8_lossy(&output.stdout)
                    .split_whitespace()
                    .map(String::from),
            );
        }
    }
    words
}

/// Removes everything topology N made: its namespaces (after killing what runs in them), its
/// root-side links, its relay logs and last its bridge, which releases N.
fn remove(n: u8) {
    remove_all_but_bridge(n);
    let _ = try_ip(&["link", "del", &format!("bb{n}")]);
}

fn remove_all_but_bridge(n: u8) {
    let prefix = format!("b{n}_");
    for namespace in namespaces() {
        if namespace.starts_with(&prefix) {
            for pid in namespace_pids(&namespace) {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
            let _ = try_ip(&["netns", "del", &namespace]);
        }
    }
    let own = [format!("bv{n}_"), format!("bt{n}_")];
    for link in links() {
        if own.iter().any(|prefix| link.starts_with(prefix)) {
            let _ = try_ip(&["link", "del", &link]);
        }
    }
    // The relay logs: `bastion-netns-N-<pid>` in the temporary directory.
    let logs = format!("bastion-netns-{n}-");
    for entry in std::fs::read_dir(std::env::temp_dir())
        .into_iter()
        .flatten()
    {
        let Ok(entry) = entry else { continue };
        if entry.file_name().to_string_lossy().starts_with(&logs) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fn namespaces() -> Vec<String> {
    let output = Command::new("ip").args(["netns", "list"]).output();
    let text = output
        .map(|output| String::from_utf8_lossy(&output.stdout).into_owned())
        .unwrap_or_default();
    text.lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(String::from)
        .collect()
}

fn namespace_pids(namespace: &str) -> Vec<u32> {
    let output = Command::new("ip")
        .args(["netns", "pids", namespace])
        .output();
    output
        .map(|output| {
            String::from_utf8_lossy(&output.stdout)
                .split_whitespace()
                .filter_map(|pid| pid.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The names of the links in the root namespace (`bv64_0`, not `bv64_0@if2`).
fn links() -> Vec<String> {
    let output = Command::new("ip").args(["-o", "link", "show"]).output();
    let text = output
        .map(|output| String::from_utf8_lossy(&output.stdout).into_owned())
        .unwrap_or_default();
    text.lines()
        .filter_map(|line| line.split(": ").nth(1))
        .map(|name| name.split('@').next().unwrap_or(name).to_string())
        .collect()
}
