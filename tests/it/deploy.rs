//! The deployment artefacts as an operator meets them: the systemd unit, checked by the real
//! `systemd-analyze` (verify, and a sandboxing exposure of at most 2.9), and the `bastion
//! healthcheck` subcommand that the Docker image's HEALTHCHECK runs, against a real agent,
//! a closed port and a server answering 503.

use crate::common;

use common::nats::free_port;
use common::process::{scratch_dir, Bastion};
use common::tools::systemd_analyze;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const UNIT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/deploy/systemd/bastion.service"
);
const INSTALLED_BINARY: &str = "/usr/local/bin/bastion";

/// The shipped unit, with ExecStart pointing at the binary under test (verify requires the
/// executable to exist), written as `bastion.service` in a fresh directory.
fn unit_for_test() -> (PathBuf, PathBuf) {
    let text = std::fs::read_to_string(UNIT).expect("the unit file");
    let exec_start = format!("ExecStart={INSTALLED_BINARY} ");
    assert!(
        text.contains(&exec_start),
        "the unit should start {INSTALLED_BINARY}"
    );
    let dir = scratch_dir("unit");
    let path = dir.join("bastion.service");
    let text = text.replace(
        &exec_start,
        &format!("ExecStart={} ", env!("CARGO_BIN_EXE_bastion")),
    );
    std::fs::write(&path, text).expect("write the unit");
    (dir, path)
}

fn run(program: &Path, args: &[&str], unit: &Path) -> Output {
    Command::new(program)
        .args(args)
        .arg(unit)
        .env("SYSTEMD_PAGER", "")
        .output()
        .unwrap_or_else(|error| panic!("{} does not run: {error}", program.display()))
}

fn text(output: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn the_unit_declares_notify_watchdog_reload_and_the_required_sandbox() {
    let text = std::fs::read_to_string(UNIT).expect("the unit file");
    // Only active lines: a commented-out directive does not count.
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|line| !line.starts_with('#'))
        .collect();
    for required in [
        "Type=notify",
        "ExecStart=/usr/local/bin/bastion run --config /etc/bastion/bastion.toml",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "WatchdogSec=30s",
        "Restart=on-failure",
        "RestartPreventExitStatus=2",
        "DynamicUser=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "NoNewPrivileges=yes",
        "PrivateTmp=yes",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX AF_NETLINK",
        "SystemCallFilter=@system-service",
        "CapabilityBoundingSet=CAP_NET_RAW",
    ] {
        assert!(
            lines.contains(&required),
            "the unit lacks the line {required:?}"
        );
    }
    // CAP_NET_RAW is granted for ICMP only, by a line the operator uncomments.
    assert!(
        !lines
            .iter()
            .any(|line| line.starts_with("AmbientCapabilities=")),
        "the unit grants ambient capabilities by default"
    );
    assert!(text.contains("#AmbientCapabilities=CAP_NET_RAW"));
}

#[test]
fn systemd_analyze_verifies_the_unit() {
    let analyze = systemd_analyze();
    let (dir, unit) = unit_for_test();
    let output = run(&analyze, &["verify"], &unit);
    let report = text(&output);
    assert!(output.status.success(), "verify failed: {report}");
    // Warnings about other units of this machine are not ours; any about this one are.
    let ours: Vec<&str> = report
        .lines()
        .filter(|line| line.contains("bastion.service"))
        .collect();
    assert!(ours.is_empty(), "verify warns about the unit: {ours:#?}");
    let _ = std::fs::remove_dir_all(dir);
}

/// The last line of `systemd-analyze security`: "→ Overall exposure level for
/// bastion.service: 1.4 OK 🙂". Returns the exposure and the rating.
fn overall_exposure(report: &str) -> (f64, String) {
    let line = report
        .lines()
        .find(|line| line.contains("Overall exposure level for bastion.service:"))
        .unwrap_or_else(|| panic!("no overall exposure in: {report}"));
    let mut words = line
        .split_once("bastion.service:")
        .map(|(_, rest)| rest.split_whitespace())
        .expect("the unit's name");
    let exposure = words
        .next()
        .and_then(|number| number.parse().ok())
        .unwrap_or_else(|| panic!("no exposure number in {line:?}"));
    let rating = words.next().unwrap_or_default().to_string();
    (exposure, rating)
}

#[test]
fn systemd_analyze_security_rates_the_unit_ok_with_exposure_at_most_2_9() {
    let analyze = systemd_analyze();
    let (dir, unit) = unit_for_test();
    let output = run(&analyze, &["security", "--offline=yes"], &unit);
    let report = text(&output);
    assert!(
        output.status.success(),
        "systemd-analyze security failed (it needs systemd 250 or later for --offline): {report}"
    );
    let (exposure, rating) = overall_exposure(&report);
    assert!(
        exposure <= 2.9,
        "exposure {exposure} is above 2.9: {report}"
    );
    assert!(
        ["OK", "SAFE", "PERFECT"].contains(&rating.as_str()),
        "rated {rating:?}: {report}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn exposure_is_read_from_the_overall_line() {
    let report = "✗ PrivateNetwork=   Service has access to the host's network   0.5\n\
                  → Overall exposure level for bastion.service: 1.4 OK 🙂\n";
    assert_eq!(overall_exposure(report), (1.4, "OK".to_string()));
}

/// `bastion healthcheck --url URL`, as Docker's HEALTHCHECK runs it.
fn healthcheck(url: &str) -> (Option<i32>, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_bastion"))
        .args(["healthcheck", "--url", url, "--timeout", "10s"])
        .output()
        .expect("the binary runs");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn healthcheck_exits_0_when_the_agent_answers_healthz() {
    let port = free_port();
    let mut agent = Bastion::start(
        "healthcheck",
        port,
        &format!("[agent]\nlisten = \"127.0.0.1:{port}\"\n"),
        &["run"],
    );
    agent.wait_ready();
    let (code, stderr) = healthcheck(&format!("http://127.0.0.1:{port}/healthz"));
    assert_eq!(code, Some(0), "stderr: {stderr}");
    assert_eq!(stderr, "");
}

#[test]
fn healthcheck_exits_1_when_nothing_listens() {
    let port = free_port();
    let (code, stderr) = healthcheck(&format!("http://127.0.0.1:{port}/healthz"));
    assert_eq!(code, Some(1), "stderr: {stderr}");
    assert!(stderr.starts_with("unhealthy: "), "stderr: {stderr}");
    assert!(
        stderr.contains(&format!("connect to 127.0.0.1:{port}")) && stderr.contains("refused"),
        "stderr: {stderr}"
    );
}

#[test]
fn healthcheck_exits_1_when_the_answer_is_503() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("address").port();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).unwrap_or(0) == 1 {
                head.push(byte[0]);
            }
            let _ = stream.write_all(
                b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 10\r\nconnection: close\r\n\r\nnot ready\n",
            );
        }
    });
    let url = format!("http://127.0.0.1:{port}/readyz");
    let (code, stderr) = healthcheck(&url);
    assert_eq!(code, Some(1), "stderr: {stderr}");
    assert!(stderr.starts_with("unhealthy: "), "stderr: {stderr}");
    assert!(
        stderr.contains(&format!("{url} answered 503")),
        "stderr: {stderr}"
    );
}
