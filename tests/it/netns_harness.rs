//! The network-namespace harness (`common::netns`) tested on its own: each location reaches
//! the target through a path with its own delay, a cut path fails while the others work, and
//! a real runner inside a location reaches NATS on the bridge. Every test skips, saying why,
//! where namespaces cannot be made (not root, no `ip netns`).

use crate::common;

use bastion_agent::bus::Bus;
use bastion_agent::messages::Heartbeat;
use common::nats::{free_port, observer, NatsServer};
use common::netns::Topology;
use common::process::Bastion;
use common::*;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const DELAYS_MS: [u64; 3] = [5, 40, 120];
/// What a request may take beyond its two held chunks on a busy machine.
const MARGIN: Duration = Duration::from_millis(250);

fn three_locations() -> Option<Topology> {
    let names = ["near", "far", "farther"];
    let locations: Vec<(&str, Duration)> = names
        .iter()
        .zip(DELAYS_MS)
        .map(|(name, ms)| (*name, Duration::from_millis(ms)))
        .collect();
    Topology::create(&locations)
}

/// A target answering "ok" on every location's target path, and a relay to it in each.
async fn serve_through_relays(topology: &mut Topology) -> u16 {
    let (port, listeners) = topology.bind_targets().await;
    for listener in listeners {
        serve_ok(listener, "ok");
    }
    topology.start_relays(port, port);
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn netns_each_location_reaches_the_target_through_its_own_delay() {
    let Some(mut topology) = three_locations() else {
        return;
    };
    let port = serve_through_relays(&mut topology).await;
    for i in 0..topology.len() {
        let (status, body, took) = topology
            .http_get_from(i, port, PATIENCE)
            .await
            .unwrap_or_else(|error| panic!("location {i}: {error}"));
        assert_eq!((status, body.as_str()), (200, "ok"), "location {i}");
        eprintln!(
            "location {i}: one-way {:?}, request {took:?}",
            topology.delay(i)
        );
        // The request and the response are each held once for the one-way delay.
        let floor = topology.delay(i) * 2;
        assert!(
            took >= floor && took < floor + MARGIN,
            "location {i} ({}): {took:?}, expected {floor:?} to {:?}",
            topology.name(i),
            floor + MARGIN
        );
    }
}

/// Whether each location gets "200 ok" within 3 s.
async fn answers(topology: &Topology, port: u16) -> Vec<bool> {
    let mut answered = Vec::new();
    for i in 0..topology.len() {
        let result = topology
            .http_get_from(i, port, Duration::from_secs(3))
            .await;
        answered.push(matches!(result, Ok((200, ref body, _)) if body == "ok"));
    }
    answered
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn netns_a_cut_path_fails_while_the_others_work_and_a_restore_brings_it_back() {
    let Some(mut topology) = three_locations() else {
        return;
    };
    let port = serve_through_relays(&mut topology).await;
    assert_eq!(answers(&topology, port).await, [true, true, true]);

    topology.cut(1);
    let failure = topology
        .http_get_from(1, port, Duration::from_secs(3))
        .await;
    assert!(failure.is_err(), "a cut path answered: {failure:?}");
    eprintln!("through the cut path: {}", failure.unwrap_err());
    assert_eq!(answers(&topology, port).await, [true, false, true]);

    topology.restore(1);
    let mut back = false;
    for _ in 0..50 {
        if answers(&topology, port).await == [true, true, true] {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(back, "location 1 answers again after restore");

    // A stopped relay refuses; a started one answers again.
    topology.stop_relay(2);
    assert_eq!(answers(&topology, port).await, [true, true, false]);
    topology.start_relay(2);
    assert_eq!(answers(&topology, port).await, [true, true, true]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn netns_a_runner_in_a_location_reaches_nats_on_the_bridge() {
    let Some(topology) = three_locations() else {
        return;
    };
    let server = NatsServer::start_on(&topology.bus_host().to_string());
    assert_eq!(
        server.url(),
        format!("nats://{}:{}", topology.bus_host(), server.port)
    );
    let bus = observer(&server.url()).await;
    let beats: Arc<Mutex<Vec<Heartbeat>>> = Arc::default();
    let mut subscription = bus.subscribe("bastion.heartbeat.>", None).await.unwrap();
    let sink = Arc::clone(&beats);
    tokio::spawn(async move {
        while let Some(message) = subscription.next().await {
            if let Ok(beat) = serde_json::from_slice(&message.payload.to_bytes().unwrap()) {
                sink.lock().unwrap().push(beat);
            }
        }
    });
    assert!(bus.settle().await, "the subscription is in effect");

    // Its own endpoints listen on 127.0.0.1 inside the namespace, out of the root's reach.
    let listen = free_port();
    let config = format!(
        "[agent]\nid = \"runner-in-near\"\nlisten = \"127.0.0.1:{listen}\"\n\
         [bus]\nkind = \"nats\"\n[bus.nats]\nurl = \"{}\"\n",
        server.url()
    );
    let prefix = topology.exec_prefix(0);
    let prefix: Vec<&str> = prefix.iter().map(String::as_str).collect();
    let mut runner = Bastion::start_under(
        &prefix,
        "runner-in-near",
        listen,
        &config,
        &["run", "--role", "runner"],
        &[],
    );
    // `ip netns exec` enters the namespace, then becomes bastion (same process id).
    let pid = runner.pid().expect("the runner runs");
    eventually(
        &format!("the runner in {}", topology.namespace(0)),
        PATIENCE,
        || topology.pids(0).contains(&pid),
    )
    .await;
    let arrived = {
        let deadline = std::time::Instant::now() + PATIENCE;
        loop {
            if !beats.lock().unwrap().is_empty() {
                break true;
            }
            if std::time::Instant::now() > deadline || !runner.alive() {
                break false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    assert!(arrived, "no heartbeat; the runner's log:\n{}", runner.log());
    let beat = beats.lock().unwrap().remove(0);
    assert_eq!(beat.agent, "runner-in-near");
    assert_eq!(beat.role, "runner");
}

#[test]
fn netns_skips_cleanly_where_namespaces_cannot_be_made() {
    let create = || Topology::create(&[("near", Duration::from_millis(5))]);
    let Some(topology) = create() else {
        // Not root here: this None is the skip under test.
        return;
    };
    drop(topology);
    // As root, run a topology test of this binary again as nobody (setpriv, util-linux):
    // it must print why and pass, having made nothing.
    let output = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(std::env::current_exe().expect("the test binary"))
        .args([
            "--exact",
            "netns_harness::netns_each_location_reaches_the_target_through_its_own_delay",
            "--nocapture",
        ])
        .output()
        .expect("setpriv runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{text}");
    assert!(
        text.contains("skipping: network namespaces need root") && text.contains("1 passed"),
        "{text}"
    );
}
