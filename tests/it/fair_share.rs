//! Worker pools seen from outside: fair share through the real binary (a check with many
//! instances that hang cannot make a healthy check of the same type miss its dispatch
//! deadline), what `bastion_dispatch_wait_seconds` measures, and that a task holds its worker
//! while its response is judged.

use crate::common;

use bastion_agent::bus::Bus;
use bastion_agent::compiled::CompiledCheck;
use bastion_agent::messages::CheckResult;
use bastion_agent::runner::dispatcher::RunOrder;
use common::nats::{free_port, observer, NatsServer};
use common::process::Bastion;
use common::*;
use hickory_proto::op::{Message, MessageType, OpCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{RData, Record, RecordType};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::net::{TcpListener, UdpSocket};

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
    assert!(bus.settle().await, "the subscription is in effect");

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
        let result: CheckResult = message.payload.decode().expect("a result");
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

/// A DNS server on UDP that answers every query after `delay`: `slow.test` has A records
/// 127.0.0.2 to 127.0.0.4, anything else no records.
async fn slow_dns_server(delay: Duration) -> SocketAddr {
    let socket = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind"));
    let address = socket.local_addr().expect("address");
    tokio::spawn(async move {
        let mut buffer = [0u8; 1500];
        while let Ok((length, peer)) = socket.recv_from(&mut buffer).await {
            let Ok(query) = Message::from_vec(&buffer[..length]) else {
                continue;
            };
            let socket = Arc::clone(&socket);
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let mut answer =
                    Message::new(query.metadata.id, MessageType::Response, OpCode::Query);
                answer.metadata.recursion_desired = query.metadata.recursion_desired;
                answer.metadata.recursion_available = true;
                answer.add_queries(query.queries.clone());
                if let Some(question) = query.queries.first() {
                    let name = question.name().to_ascii().to_lowercase();
                    if name == "slow.test." && question.query_type() == RecordType::A {
                        for last in 2..=4 {
                            answer.add_answer(Record::from_rdata(
                                question.name().clone(),
                                60,
                                RData::A(A(Ipv4Addr::new(127, 0, 0, last))),
                            ));
                        }
                    }
                }
                let _ = socket
                    .send_to(&answer.to_vec().expect("encode"), peer)
                    .await;
            });
        }
    });
    address
}

fn wait_seconds(text: &str) -> (f64, f64) {
    let sum = metric(text, "bastion_dispatch_wait_seconds_sum{type=\"http\"}").expect("sum");
    let count = metric(text, "bastion_dispatch_wait_seconds_count{type=\"http\"}").expect("count");
    (sum, count)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dispatch_wait_is_the_wait_for_a_worker_only() {
    // Resolving takes 1.5 s; three instances share one worker and each answers after 0.5 s.
    let dns = slow_dns_server(Duration::from_millis(1500)).await;
    let (port, listeners) = listeners_on_one_port(&["127.0.0.2", "127.0.0.3", "127.0.0.4"]).await;
    for listener in listeners {
        serve(listener, |mut request| async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            respond(&mut request.stream, "200 OK", &[], "fine").await;
        });
    }
    let config = config(&format!(
        "[runner]\ndns_servers = [\"{dns}\"]\ndispatch_deadline = \"20s\"\n\
         [runner.workers]\nhttp = 1\n\
         [[checks]]\nname = \"slow\"\ntype = \"http\"\ninterval = \"60s\"\ntimeout = \"20s\"\n\
         url = \"http://slow.test:{port}/\"\n"
    ));
    let (dispatcher, metrics) = dispatcher(&config);
    let result = run_check(&dispatcher, &config, "slow").await;
    assert!(result.passing, "{result:?}");
    assert_eq!(result.responses.len(), 3);
    assert!(result.responses[0].timings.resolve >= 1.4, "{result:?}");
    // The first instance found its worker free; the second waited for the first's probe and
    // the third for the second's: about 0 + 0.5 + 0.5 s. Counting the resolve in each wait,
    // or the instances before, would make it at least 1.5 + 2 + 2.5 s.
    let (sum, count) = wait_seconds(&metrics.render());
    assert_eq!(count, 3.0);
    assert!(
        sum >= 0.9,
        "the waits behind other probes are counted: {sum}"
    );
    assert!(
        sum < 4.5,
        "the dispatch wait counts more than the wait for a worker: {sum}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_holds_its_worker_while_its_response_is_judged() {
    // A 32 MiB body and a regular expression over all of it (it never matches): judging takes
    // a while. `late` waits for the one worker while `big` is probed and judged.
    const BODY: usize = 32 * 1024 * 1024;
    let big = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let big_address = big.local_addr().expect("address");
    serve(big, |mut request| async move {
        use tokio::io::AsyncWriteExt;
        // Answering after a second leaves time to see the worker taken.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let head =
            format!("HTTP/1.1 200 OK\r\ncontent-length: {BODY}\r\nconnection: close\r\n\r\n");
        let _ = request.stream.write_all(head.as_bytes()).await;
        let _ = request.stream.write_all(&vec![b'a'; BODY]).await;
    });
    let small = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let small_address = small.local_addr().expect("address");
    serve_ok(small, "fine");
    let config = config(&format!(
        "[runner]\nmax_body_bytes = {BODY}\ndispatch_deadline = \"60s\"\n[runner.workers]\nhttp = 1\n\
         [[checks]]\nname = \"big\"\ntype = \"http\"\ninterval = \"120s\"\ntimeout = \"60s\"\n\
         url = \"http://{big_address}/\"\n{assertion}\
         [[checks]]\nname = \"late\"\ntype = \"http\"\ninterval = \"60s\"\nurl = \"http://{small_address}/\"\n",
        assertion = assertion_toml("body", "regExp", r"\d\s\d\s\d"),
    ));
    let (dispatcher, metrics) = dispatcher(&config);
    let order = |name: &str| RunOrder {
        check: Arc::new(
            CompiledCheck::compile(
                config
                    .checks
                    .iter()
                    .find(|c| c.name == name)
                    .expect("check"),
            )
            .expect("compiles"),
        ),
        run_id: 1,
        scheduled_at: SystemTime::now(),
        discovered: None,
    };
    // Alone, a run of `big` lasts its probe plus its judging.
    let started = tokio::time::Instant::now();
    let alone = dispatcher.run(order("big")).await;
    let judging = started.elapsed().as_secs_f64() - alone.responses[0].timings.total;
    assert!(
        !alone.passing && alone.responses[0].error.is_none(),
        "{alone:?}"
    );
    assert!(
        judging > 0.2,
        "judging took only {judging} s: no time to watch the worker"
    );

    let (sum_before, _) = wait_seconds(&metrics.render());
    let first = Arc::clone(&dispatcher);
    let big_order = order("big");
    let big_run = tokio::spawn(async move {
        let result = first.run(big_order).await;
        (result, tokio::time::Instant::now())
    });
    eventually("big takes the worker", PATIENCE, || {
        dispatcher.usage().values().any(|usage| usage.busy == 1)
    })
    .await;
    let late_asked = tokio::time::Instant::now();
    let late = run_check(&dispatcher, &config, "late").await;
    assert!(late.passing, "{late:?}");
    let (_, big_done) = big_run.await.expect("big run");
    let (sum_after, _) = wait_seconds(&metrics.render());
    // `late` got its worker when `big` let go of it: after judging, at the end of big's run.
    let late_wait = sum_after - sum_before;
    let late_got_worker = late_asked + Duration::from_secs_f64(late_wait);
    let early = big_done
        .saturating_duration_since(late_got_worker)
        .as_secs_f64();
    assert!(
        early < judging / 2.0,
        "the worker was free {early} s before big's run ended (judging takes {judging} s)"
    );
}

/// A probe that panics on the instance at `port` and succeeds on any other.
#[derive(Debug)]
struct PanicsOnPort {
    port: u16,
}

impl bastion_agent::checks::Probe for PanicsOnPort {
    fn host_and_port(&self) -> (&str, u16) {
        ("127.0.0.1", self.port)
    }

    fn probe<'a>(
        &'a self,
        _context: &'a bastion_agent::checks::ProbeContext,
        target: SocketAddr,
        _deadline: tokio::time::Instant,
        _record: &'a mut bastion_agent::checks::ProbeRecord,
    ) -> bastion_agent::checks::ProbeFuture<'a> {
        Box::pin(async move {
            tokio::task::yield_now().await;
            assert_ne!(target.port(), self.port, "a probe bug");
            Ok(())
        })
    }
}

/// A probe that panics is a bug; it costs its own instance the answer (an `internal` error
/// naming the panic) and nothing else: not the other instances of its run, not its worker, and
/// not a run of one instance, whose task runs in the run's own future.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_probe_fails_its_own_instance_and_returns_its_worker() {
    let config = config(
        "[runner.workers]\ntcp = 1\n\
         [[checks]]\nname = \"both\"\ntype = \"tcp\"\ninterval = \"60s\"\naddress = \"127.0.0.1:7\"\n\
         instances = [\"127.0.0.1:7\", \"127.0.0.1:8\"]\n\
         [[checks]]\nname = \"one\"\ntype = \"tcp\"\ninterval = \"60s\"\naddress = \"127.0.0.1:7\"\n",
    );
    let (dispatcher, _metrics) = dispatcher(&config);
    let order = |name: &str| {
        let mut check = CompiledCheck::compile(
            config
                .checks
                .iter()
                .find(|c| c.name == name)
                .expect("check"),
        )
        .expect("compiles");
        check.probe = Box::new(PanicsOnPort { port: 7 });
        RunOrder {
            check: Arc::new(check),
            run_id: 1,
            scheduled_at: SystemTime::now(),
            discovered: None,
        }
    };
    for _ in 0..2 {
        let both = dispatcher.run(order("both")).await;
        assert_eq!(both.responses.len(), 2, "{both:?}");
        let panicked = &both.responses[0];
        assert_eq!(panicked.target, "127.0.0.1:7");
        let error = panicked
            .error
            .as_ref()
            .expect("the panicking instance fails");
        assert_eq!(error.kind.as_str(), "internal", "{error:?}");
        assert!(error.message.contains("a probe bug"), "{}", error.message);
        assert_eq!(both.responses[1].target, "127.0.0.1:8");
        // Its neighbour was probed (this probe records nothing, so it is judged not passing).
        assert!(both.responses[1].error.is_none(), "{both:?}");

        let one = dispatcher.run(order("one")).await;
        assert_eq!(one.responses.len(), 1, "{one:?}");
        let error = one.responses[0].error.as_ref().expect("it fails");
        assert!(error.message.contains("a probe bug"), "{}", error.message);
        // The one worker came back each time: the next run did not wait out the deadline.
        assert!(
            dispatcher.usage().values().all(|usage| usage.busy == 0),
            "{:?}",
            dispatcher.usage()
        );
    }
}
