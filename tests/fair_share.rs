//! Fair share inside a worker pool, through the real binary: a check with many instances that
//! hang cannot make a healthy check of the same type miss its dispatch deadline.

mod common;

use bastion_agent::bus::Bus;
use bastion_agent::messages::{self, CheckResult};
use common::nats::{free_port, observer, NatsServer};
use common::process::Bastion;
use common::*;
use std::time::Duration;
use tokio::net::TcpListener;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_check_with_hanging_instances_does_not_starve_a_healthy_one() {
    // 200 instances that accept and never answer, on 127.0.1.1 ... 127.0.1.200.
    let ips: Vec<String> = (1..=200).map(|n| format!("127.0.1.{n}")).collect();
    let ips: Vec<&str> = ips.iter().map(String::as_str).collect();
    let (hanging_port, listeners) = listeners_on_one_port(&ips).await;
    for listener in listeners {
        serve(listener, |request| async move {
            let _held = request.stream;
            tokio::time::sleep(Duration::from_secs(3600)).await;
        });
    }
    let healthy = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let healthy_address = healthy.local_addr().expect("address");
    serve_ok(healthy, "fine");

    let server = NatsServer::start();
    let bus = observer(&server.url()).await;
    let mut results = bus
        .subscribe("bastion.results.healthy", None)
        .await
        .expect("subscribe");
    bus.flush(PATIENCE).await;

    let instances: Vec<String> = ips.iter().map(|ip| format!("\"{ip}\"")).collect();
    let listen = free_port();
    let config = format!(
        "[agent]\nid = \"a1\"\nlisten = \"127.0.0.1:{listen}\"\nshutdown_grace = \"5s\"\n\
         [bus]\nkind = \"nats\"\n[bus.nats]\nurl = \"{url}\"\n\
         [runner]\ndispatch_deadline = \"1s\"\n[runner.workers]\nhttp = 10\n\
         [[checks]]\nname = \"hanging\"\ntype = \"http\"\nurl = \"http://pool.test:{hanging_port}/\"\n\
         interval = \"5s\"\ntimeout = \"2s\"\ninstances = [{instances}]\n\
         [[checks]]\nname = \"healthy\"\ntype = \"http\"\nurl = \"http://{healthy_address}/\"\n\
         interval = \"1s\"\ntimeout = \"900ms\"\n",
        url = server.url(),
        instances = instances.join(", "),
    );
    let mut agent = Bastion::start("fair", listen, &config, &["run"]);
    agent.wait_ready();

    let mut passed = 0;
    let mut failed = Vec::new();
    let watch = tokio::time::Instant::now() + Duration::from_secs(30);
    while let Ok(Some(message)) = tokio::time::timeout_at(watch, results.next()).await {
        let result: CheckResult = messages::decode(&message.payload).expect("a result");
        if result.passing {
            passed += 1;
        } else {
            failed.push(result.responses[0].error.clone());
        }
    }
    let runs = passed + failed.len();
    assert!(runs >= 20, "only {runs} runs of the healthy check in 30 s");
    assert!(
        passed * 10 >= runs * 9,
        "the healthy check passed {passed} of {runs} runs; failures: {failed:?}"
    );
    // The hanging check still fills the rest of the pool and has its overflow counted.
    let timeouts = agent
        .sample("bastion_dispatch_timeouts_total{type=\"http\"}")
        .expect("dispatch timeouts series");
    assert!(timeouts >= 150.0, "{timeouts} dispatch timeouts counted");
    eprintln!("healthy passed {passed} of {runs}; dispatch timeouts {timeouts}");
}
