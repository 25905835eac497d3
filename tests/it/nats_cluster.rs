//! A real NATS cluster (issue 20): three nats-server nodes with JetStream, routes between
//! them, the results stream and the lease bucket with 3 replicas; a checker pair with `ha`
//! and two runners, each given the nodes in another order. One node is killed while checks
//! run every second, then brought back. The test asserts that the clients on that node move
//! to the others, that the lease stays or changes holder at most once, that nothing a runner
//! had acknowledged is missing from the stream, and that every run the checkers scheduled
//! ends as a result in the stream or a counted loss. Run it against another server build with
//! `NATS_SERVER=/path/to/nats-server`.

use crate::common;

use async_nats::jetstream;
use bastion_agent::messages::CheckResult;
use common::nats::{free_port, NatsCluster};
use common::process::{http_get_blocking, Bastion};
use common::*;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// Cheap checks: a TCP connect to a listener the test owns, every second.
const CHECKS: usize = 6;

fn agent_config(id: &str, listen: u16, urls: &[String], checks: &str, extra: &str) -> String {
    let urls = urls
        .iter()
        .map(|url| format!("\"{url}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "[agent]\nid = \"{id}\"\nlisten = \"127.0.0.1:{listen}\"\nshutdown_grace = \"5s\"\n\
         [bus]\nkind = \"nats\"\n[bus.nats]\nurl = [{urls}]\nresults_stream = true\nreplicas = 3\n\
         [runner]\ndispatch_deadline = \"2s\"\n{extra}{checks}"
    )
}

fn tcp_checks(target: std::net::SocketAddr) -> String {
    (0..CHECKS)
        .map(|n| {
            format!(
                "[[checks]]\nname = \"tcp-{n}\"\ntype = \"tcp\"\naddress = \"{target}\"\ninterval = \"1s\"\ntimeout = \"500ms\"\n"
            )
        })
        .collect()
}

/// Accepts and closes connections until the test ends.
async fn tcp_target() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            drop(stream);
        }
    });
    address
}

/// When the lease holder changed, and to which checker (`None`: no checker leads).
type Holders = Vec<(Instant, Option<usize>)>;

/// Which checker leads, sampled from their `/metrics` every 200 ms on a thread of its own,
/// as changes of holder.
struct LeaseWatch {
    stop: Arc<AtomicBool>,
    holders: Arc<Mutex<Holders>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LeaseWatch {
    fn start(ports: Vec<u16>) -> LeaseWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let holders = Arc::new(Mutex::new(Vec::new()));
        let thread = {
            let (stop, holders) = (Arc::clone(&stop), Arc::clone(&holders));
            std::thread::spawn(move || {
                while !stop.load(Ordering::Acquire) {
                    let leading: Vec<usize> = ports
                        .iter()
                        .enumerate()
                        .filter(|(_, port)| {
                            http_get_blocking(**port, "/metrics?checks=none")
                                .and_then(|(_, text)| metric(&text, "bastion_checker_leader"))
                                == Some(1.0)
                        })
                        .map(|(index, _)| index)
                        .collect();
                    assert!(leading.len() <= 1, "two checkers lead at once: {leading:?}");
                    let now = leading.first().copied();
                    let mut holders = holders.lock().unwrap();
                    if holders.last().map(|(_, holder)| *holder) != Some(now) {
                        holders.push((Instant::now(), now));
                    }
                    drop(holders);
                    std::thread::sleep(Duration::from_millis(200));
                }
            })
        };
        LeaseWatch {
            stop,
            holders,
            thread: Some(thread),
        }
    }

    fn current(&self) -> Option<usize> {
        self.holders.lock().unwrap().last().and_then(|(_, h)| *h)
    }

    fn finish(mut self) -> Holders {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            thread.join().expect("the lease watch never fails");
        }
        self.holders.lock().unwrap().clone()
    }
}

impl Drop for LeaseWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

/// A JetStream connection to the given nodes, for the test's own look at the stream.
async fn jetstream_to(urls: &[String]) -> jetstream::Context {
    let servers: Vec<async_nats::ServerAddr> = urls.iter().map(|u| u.parse().unwrap()).collect();
    let client = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(5))
        .connect(servers)
        .await
        .expect("the test connects to the cluster");
    jetstream::new(client)
}

/// Every result in the stream, read one by one by sequence (no consumer to wait on), each
/// read bounded by a timeout so a stuck server fails the test instead of hanging it.
async fn stored_results(jetstream: &jetstream::Context) -> Vec<CheckResult> {
    let mut stream = tokio::time::timeout(PATIENCE, jetstream.get_stream("BASTION_RESULTS"))
        .await
        .expect("the stream's info in time")
        .expect("the results stream exists");
    let state = tokio::time::timeout(PATIENCE, stream.info())
        .await
        .expect("the stream's info in time")
        .expect("the stream's info")
        .state
        .clone();
    let mut stored = Vec::new();
    for sequence in state.first_sequence..=state.last_sequence {
        let message = tokio::time::timeout(PATIENCE, stream.get_raw_message(sequence))
            .await
            .expect("a stored message in time")
            .expect("a stored message");
        stored.push(serde_json::from_slice(&message.payload).expect("a CheckResult"));
    }
    assert_eq!(stored.len() as u64, state.messages, "no gap in the stream");
    stored
}

/// The stream's replicas, from its info: (leader, followers current, followers).
async fn stream_cluster(jetstream: &jetstream::Context) -> Option<(String, usize, usize)> {
    let mut stream = tokio::time::timeout(PATIENCE, jetstream.get_stream("BASTION_RESULTS"))
        .await
        .ok()?
        .ok()?;
    let info = tokio::time::timeout(PATIENCE, stream.info())
        .await
        .ok()?
        .ok()?;
    let cluster = info.cluster.as_ref()?;
    let followers = &cluster.replicas;
    Some((
        cluster.leader.clone().unwrap_or_default(),
        followers.iter().filter(|peer| peer.current).count(),
        followers.len(),
    ))
}

/// The sum of a counter over its series in several `/metrics` texts.
fn summed(texts: &[String], name: &str) -> f64 {
    texts
        .iter()
        .flat_map(|text| text.lines())
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_node_dies_and_returns_under_ha_checkers_and_nothing_goes_uncounted() {
    // Progress on stderr, shown when the test fails: where the time went.
    let started = Instant::now();
    let step = |what: &str| eprintln!("[{:>6.1}s] {what}", started.elapsed().as_secs_f64());
    let mut cluster = NatsCluster::start(3);
    step("cluster up");
    let target = tcp_target().await;
    let checks = tcp_checks(target);

    // Each process lists the nodes starting from another one (async-nats still picks among
    // them at random, so where each lands is read from the nodes' /connz below).
    let names = ["c1", "c2", "r1", "r2"];
    let mut processes: Vec<Bastion> = names
        .iter()
        .enumerate()
        .map(|(index, name)| {
            let listen = free_port();
            let urls = cluster.urls_from(index % 3);
            let config = if name.starts_with('c') {
                agent_config(name, listen, &urls, &checks, "[checker]\nha = true\n")
            } else {
                agent_config(name, listen, &urls, "", "")
            };
            let role = if name.starts_with('c') {
                "checker"
            } else {
                "runner"
            };
            Bastion::start(name, listen, &config, &["run", "--role", role])
        })
        .collect();
    for process in &mut processes {
        process.wait_ready();
    }
    step("processes ready");
    let lease = LeaseWatch::start(vec![processes[0].listen, processes[1].listen]);
    let jetstream = jetstream_to(&cluster.urls_from(0)).await;
    eventually("results in the stream", Duration::from_secs(90), || {
        stream_messages(&jetstream) >= 3 * CHECKS as u64
    })
    .await;
    step("results in the stream");
    eventually("a leading checker", Duration::from_secs(60), || {
        lease.current().is_some()
    })
    .await;
    let leader = lease.current().expect("a leader");

    // Kill the node the leading checker is connected to.
    let client_name = |index: usize| format!("bastion {}", names[index]);
    let deadline = Instant::now() + Duration::from_secs(30);
    let node_of = loop {
        let node_of: BTreeMap<&str, usize> = names
            .iter()
            .enumerate()
            .filter_map(|(index, name)| Some((*name, cluster.node_of_client(&client_name(index))?)))
            .collect();
        if node_of.len() == names.len() {
            break node_of;
        }
        assert!(
            Instant::now() < deadline,
            "not every process is seen on a node: {node_of:?}; the nodes' clients: {:?}",
            cluster
                .nodes
                .iter()
                .map(|node| node
                    .monitoring("/connz?limit=1024")
                    .map(|c| c["connections"].clone()))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let victim = node_of[names[leader]];
    let moved: Vec<usize> = (0..names.len())
        .filter(|index| node_of[names[*index]] == victim)
        .collect();
    let reconnects_before: Vec<f64> = processes
        .iter()
        .map(|p| p.sample("bastion_bus_reconnects_total").unwrap_or(0.0))
        .collect();
    step(&format!("killing n{} (holds {:?})", victim + 1, moved));
    cluster.nodes[victim].stop();
    let killed = Instant::now();

    // (a) Every client of the dead node is on a surviving one, as the nodes themselves see it.
    let mut moved_within = Duration::ZERO;
    eventually(
        "the dead node's clients on the surviving nodes",
        Duration::from_secs(60),
        || {
            let all =
                (0..names.len()).all(|index| cluster.node_of_client(&client_name(index)).is_some());
            moved_within = killed.elapsed();
            all
        },
    )
    .await;
    step("clients moved");
    for &index in &moved {
        let process = &processes[index];
        eventually(
            &format!("{} to count its reconnect", process.name),
            Duration::from_secs(30),
            || {
                process
                    .sample("bastion_bus_reconnects_total")
                    .unwrap_or(0.0)
                    >= reconnects_before[index] + 1.0
                    && process.sample("bastion_bus_connected") == Some(1.0)
            },
        )
        .await;
    }
    step("reconnects counted");
    // Work goes on while the node is down.
    let stored_before = stream_messages(&jetstream);
    eventually(
        "results while a node is down",
        Duration::from_secs(90),
        || stream_messages(&jetstream) >= stored_before + 3 * CHECKS as u64,
    )
    .await;

    step("results while down");
    // Bring it back: it rejoins, and the stream has all its replicas current again.
    cluster.nodes[victim].resume();
    cluster.wait_for_meta_leader(Duration::from_secs(90));
    step("node back, meta leader");
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if let Some((_, current, followers)) = stream_cluster(&jetstream).await {
            if followers == 2 && current == 2 {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the results stream never had its 3 replicas current again: {:?}",
            stream_cluster(&jetstream).await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    step("stream replicas current");
    // Long enough that a run lost around the kill is counted lost (dispatch deadline 2s +
    // timeout 0.5s + 5s after it was due), and steady runs follow.
    tokio::time::sleep(Duration::from_secs(10)).await;

    // (c) Accounting. Counters first, then (once every run counted there has had time to
    // land or be given up) the stream.
    let checker_texts = |processes: &[Bastion]| -> Vec<String> {
        processes[..2]
            .iter()
            .map(|p| p.metrics().expect("a checker serves /metrics"))
            .collect()
    };
    step("accounting");
    let before_scrape = SystemTime::now();
    let first = checker_texts(&processes);
    let after_scrape = SystemTime::now();
    let scheduled = summed(&first, "bastion_checks_scheduled_total");
    tokio::time::sleep(Duration::from_secs(10)).await;
    let second = checker_texts(&processes);
    let lost = summed(&second, "bastion_runs_lost_total");
    let runner_texts: Vec<String> = processes[2..]
        .iter()
        .map(|p| p.metrics().expect("a runner serves /metrics"))
        .collect();
    let dropped = summed(&runner_texts, "bastion_bus_dropped_total");
    let results = stored_results(&jetstream).await;
    step("stream read");
    let mut per_run: BTreeMap<(String, SystemTime), usize> = BTreeMap::new();
    for result in &results {
        *per_run
            .entry((result.check.clone(), result.scheduled_at))
            .or_default() += 1;
    }
    let twice: Vec<_> = per_run.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "runs stored or scheduled twice: {twice:?}"
    );
    // Runs due before the first scrape began were counted in it; those due during it may be.
    let surely_counted = per_run.keys().filter(|(_, at)| *at < before_scrape).count() as f64;
    let maybe_counted = per_run.keys().filter(|(_, at)| *at <= after_scrape).count() as f64;
    let holders = lease.finish();
    let summary = format!(
        "scheduled {scheduled}, results in the stream for them {surely_counted}..{maybe_counted}, \
         lost {lost}, dropped by runners {dropped}; node n{} killed, clients moved within \
         {moved_within:?}; lease holders {holders:?}",
        victim + 1
    );
    eprintln!("{summary}");
    for process in &processes {
        for line in process.log().lines().filter(|line| {
            line.contains("lease") || line.contains("NATS") || line.contains("stream")
        }) {
            eprintln!("{}: {line}", process.name);
        }
    }
    assert!(scheduled >= 40.0, "{summary}");
    // Every scheduled run is a result in the stream or a counted loss: no uncounted gap.
    assert!(
        maybe_counted + lost >= scheduled,
        "uncounted runs: {summary}"
    );
    // And no result without a scheduled run.
    assert!(surely_counted <= scheduled, "{summary}");
    // Losses, if any, are few: the runs in flight through the dead node.
    assert!(lost <= (2 * CHECKS) as f64, "{summary}");
    // Nothing a runner had accepted was dropped on the way to the stream.
    assert_eq!(dropped, 0.0, "{summary}");
    // (b) The lease stayed, or changed holder once.
    let held: Vec<usize> = holders.iter().filter_map(|(_, holder)| *holder).collect();
    let changes = held.windows(2).filter(|pair| pair[0] != pair[1]).count();
    assert!(changes <= 1, "{summary}");
    for process in &mut processes {
        assert!(process.alive(), "{} died: {}", process.name, process.log());
        assert!(
            !process.log().contains("panicked"),
            "{}: {}",
            process.name,
            process.log()
        );
    }
}

/// The stream's message count, or 0 while it cannot be read.
fn stream_messages(jetstream: &jetstream::Context) -> u64 {
    let jetstream = jetstream.clone();
    tokio::task::block_in_place(|| {
        tokio::runtime::Handle::current().block_on(async move {
            let read = async {
                let mut stream = jetstream.get_stream("BASTION_RESULTS").await.ok()?;
                stream.info().await.ok().map(|info| info.state.messages)
            };
            tokio::time::timeout(Duration::from_secs(10), read)
                .await
                .ok()
                .flatten()
                .unwrap_or(0)
        })
    })
}
