//! Resource bounds at start-up, through the real binary: the worker pools are checked
//! against the open-file limit (`prlimit` from util-linux sets it for the child), and a limit
//! too low for them is a warning with the numbers and the fix, while the agent keeps running.

use crate::common;

use common::nats::free_port;
use common::process::{http_get_blocking, Bastion};
use std::time::{Duration, Instant};

fn config(listen: u16, http_workers: usize) -> String {
    format!(
        r#"
        [agent]
        listen = "127.0.0.1:{listen}"
        [runner.workers]
        http = {http_workers}
        [[checks]]
        name = "self"
        type = "http"
        interval = "1s"
        url = "http://127.0.0.1:{listen}/healthz"
        "#
    )
}

fn wait_for_log(agent: &Bastion, wanted: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let log = agent.log();
        if log.contains(wanted) {
            return log;
        }
        assert!(
            Instant::now() < deadline,
            "no `{wanted}` in the log:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn an_open_file_limit_below_the_pools_is_a_warning_with_the_fix() {
    let listen = free_port();
    let mut agent = Bastion::start_under(
        &["prlimit", "--nofile=64:64", "--"],
        "nofile",
        listen,
        &config(listen, 500),
        &["run"],
        &[],
    );
    agent.wait_ready();
    let log = wait_for_log(&agent, "the open-file limit is 64");
    // 500 http workers and 10 of each of the seven other types, plus the headroom.
    assert!(
        log.contains("the worker pools may hold 570 probe sockets at once"),
        "{log}"
    );
    assert!(log.contains("LimitNOFILE=634"), "{log}");
    assert!(log.contains("ulimit -n 634"), "{log}");
    // A warning, not a refusal: the agent serves and probes.
    assert_eq!(
        http_get_blocking(listen, "/healthz").map(|(status, _)| status),
        Some(200)
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let passing = |text: String| {
        text.lines()
            .filter(|line| line.starts_with("probe_success{") && line.contains("check=\"self\""))
            .any(|line| {
                line.rsplit_once(' ')
                    .and_then(|(_, value)| value.parse::<f64>().ok())
                    == Some(1.0)
            })
    };
    while !passing(agent.metrics().unwrap_or_default()) {
        assert!(
            Instant::now() < deadline,
            "no passing probe:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(agent.alive());
}

#[test]
fn a_sufficient_open_file_limit_says_nothing() {
    let listen = free_port();
    let mut agent = Bastion::start_under(
        &["prlimit", "--nofile=4096:4096", "--"],
        "nofile-ok",
        listen,
        &config(listen, 500),
        &["run"],
        &[],
    );
    agent.wait_ready();
    wait_for_log(&agent, "bastion is running");
    assert!(!agent.log().contains("open-file limit"), "{}", agent.log());
}
