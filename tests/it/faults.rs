//! Faults around the daemon, through the real binary: its config file deleted or replaced by
//! something unreadable before a reload (logged, counted, nothing changes, it keeps running),
//! and its stderr closed under it (logging fails silently; it keeps serving and probing).

use crate::common;

use common::nats::free_port;
use common::process::{http_get_blocking, Bastion};
use common::{eventually_blocking, metric};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn config(listen: u16) -> String {
    format!(
        r#"
        [agent]
        listen = "127.0.0.1:{listen}"
        [[checks]]
        name = "self"
        type = "http"
        interval = "1s"
        url = "http://127.0.0.1:{listen}/healthz"
        "#
    )
}

/// One sample of `/metrics` on `port` by its full series text.
fn sample(port: u16, series: &str) -> Option<f64> {
    let (_, text) = http_get_blocking(port, "/metrics")?;
    metric(&text, series)
}

/// `eventually_blocking` with this file's bound.
fn eventually(what: &str, condition: impl FnMut() -> bool) {
    eventually_blocking(what, Duration::from_secs(60), condition);
}

const SCHEDULED: &str = "bastion_checks_scheduled_total{check=\"self\"}";

#[test]
fn a_deleted_or_unreadable_config_on_reload_is_logged_and_changes_nothing() {
    let listen = free_port();
    let mut agent = Bastion::start("unreadable", listen, &config(listen), &["run"]);
    agent.wait_ready();
    let path = agent.config_path();
    // Deleted.
    std::fs::remove_file(&path).unwrap();
    agent.signal("HUP");
    eventually("the failed reload", || {
        agent.log().matches("config reload failed").count() == 1
    });
    assert!(
        agent.log().contains("cannot read config file"),
        "{}",
        agent.log()
    );
    assert_eq!(
        sample(listen, "bastion_config_last_reload_successful"),
        Some(0.0)
    );
    // Unreadable: a directory where the file was (root reads any file, so no chmod).
    std::fs::create_dir(&path).unwrap();
    agent.signal("HUP");
    eventually("the second failed reload", || {
        agent.log().matches("config reload failed").count() == 2
    });
    // Still running the old checks, still probing, still answering.
    let before = sample(listen, SCHEDULED).unwrap_or(0.0);
    eventually("another scheduled run", || {
        sample(listen, SCHEDULED).is_some_and(|now| now > before)
    });
    assert_eq!(
        http_get_blocking(listen, "/healthz").map(|(status, _)| status),
        Some(200)
    );
    assert!(agent.alive());
    std::fs::remove_dir(&path).unwrap();
    assert!(agent.terminate().is_some_and(|status| status.success()));
}

#[test]
fn a_closed_stderr_does_not_stop_the_daemon() {
    let listen = free_port();
    let dir = common::process::scratch_dir("stderr");
    let path = dir.join("bastion.toml");
    std::fs::write(&path, config(listen)).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_bastion"))
        .args(["run", "--config"])
        .arg(&path)
        .env("RUST_LOG", "debug")
        .env("STATE_DIRECTORY", &dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary starts");
    // Close the only reader: every log line from now on is a write to a broken pipe.
    drop(child.stderr.take());
    eventually("/healthz", || {
        http_get_blocking(listen, "/healthz").is_some()
    });
    let before = sample(listen, SCHEDULED).unwrap_or(0.0);
    // A reload logs too.
    let status = Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    eventually("two more scheduled runs", || {
        sample(listen, SCHEDULED).is_some_and(|now| now >= before + 2.0)
    });
    assert_eq!(
        sample(listen, "bastion_config_last_reload_successful"),
        Some(1.0)
    );
    assert!(child.try_wait().unwrap().is_none(), "bastion died");
    assert_eq!(
        http_get_blocking(listen, "/healthz").map(|(status, _)| status),
        Some(200)
    );
    // It still shuts down cleanly when asked.
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "no exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
    let _ = std::fs::remove_dir_all(dir);
}

/// Exit codes stay the contract when nobody reads the output: a config error is still 2 with
/// stderr closed, and a valid config is still 0 with stdout closed (not a panic's 101).
#[test]
fn closed_output_pipes_keep_the_exit_codes() {
    let dir = common::process::scratch_dir("pipes");
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "[[checks]]\nname = 1\n").unwrap();
    let good = dir.join("good.toml");
    std::fs::write(&good, config(free_port())).unwrap();
    for (command, path, closed_stdout, expected) in [
        ("run", &bad, false, 2),
        ("validate", &bad, false, 2),
        ("validate", &good, true, 0),
    ] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_bastion"))
            .args([command, "--config"])
            .arg(path)
            .stdout(if closed_stdout {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stderr(Stdio::piped())
            .spawn()
            .expect("the binary starts");
        drop(child.stdout.take());
        drop(child.stderr.take());
        let status = child.wait().unwrap();
        assert_eq!(
            status.code(),
            Some(expected),
            "{command} {}",
            path.display()
        );
    }
    let _ = std::fs::remove_dir_all(dir);
}
