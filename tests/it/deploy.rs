//! The deployment artefacts as an operator meets them: the systemd unit, checked by the real
//! `systemd-analyze` (verify, and a sandboxing exposure of at most 2.9), and the `bastion
//! healthcheck` subcommand that the Docker image's HEALTHCHECK runs, against a real agent,
//! a closed port and a server answering 503; and the stop timeouts (the unit's, the Debian
//! unit's, Docker's) against the stop sequence docs/operations.md states and a real agent
//! stopped with every step slow.

use crate::common;

use common::nats::free_port;
use common::process::{scratch_dir, Bastion};
use common::tools::systemd_analyze;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

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

/// The worst stop beyond `agent.shutdown_grace` (docs/operations.md, "Stopping"): 2 s to
/// release an HA lease, 0.5 s of bus flush, 2 s of notifications, 2 s for the notifiers'
/// tasks and 10 s for the history writer (`agent/tasks.rs`, `Running::shut_down`).
const STOP_BEYOND_GRACE: Duration = Duration::from_millis(16_500);
/// `agent.shutdown_grace` unless configured.
const DEFAULT_GRACE: Duration = Duration::from_secs(10);

fn repo_file(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path))
        .unwrap_or_else(|error| panic!("{path}: {error}"))
}

/// Every number that follows `marker` in `text` (`--stop-timeout 30`, `stop -t 30`).
fn numbers_after(text: &str, marker: &str) -> Vec<u64> {
    text.match_indices(marker)
        .filter_map(|(at, _)| {
            let rest = &text[at + marker.len()..];
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
        .collect()
}

#[test]
fn the_stop_timeouts_cover_the_documented_stop_sequence() {
    let unit = repo_file("deploy/systemd/bastion.service");
    let timeout = unit
        .lines()
        .find_map(|line| line.strip_prefix("TimeoutStopSec="))
        .expect("the unit sets TimeoutStopSec");
    let timeout = humantime::parse_duration(timeout).expect("TimeoutStopSec is a duration");
    assert!(
        timeout >= DEFAULT_GRACE + STOP_BEYOND_GRACE,
        "TimeoutStopSec={timeout:?} is shorter than the worst stop with the default grace, \
         {:?}",
        DEFAULT_GRACE + STOP_BEYOND_GRACE
    );
    // The Debian package's unit is this one, with only the binary's path and the user changed.
    let build_deb = repo_file("deploy/debian/build-deb");
    let sed = build_deb
        .lines()
        .skip_while(|line| !line.starts_with("sed "))
        .take_while(|line| !line.starts_with("grep "))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        sed.contains("\"$repo/deploy/systemd/bastion.service\"") && !sed.contains("Timeout"),
        "build-deb should install deploy/systemd/bastion.service with its stop timeout: {sed}"
    );
    // The docs state the same figures, and Docker is told the same timeout.
    let seconds = timeout.as_secs();
    let operations = repo_file("docs/operations.md");
    for figure in [
        "`agent.shutdown_grace` + 16.5 s".to_string(),
        format!("`TimeoutStopSec={seconds}s`"),
        format!("`--stop-timeout {seconds}`"),
    ] {
        assert!(
            operations.contains(&figure),
            "docs/operations.md should say {figure}"
        );
    }
    for (file, marker) in [
        ("README.md", "--stop-timeout "),
        ("docs/operations.md", "--stop-timeout "),
        ("deploy/docker/Dockerfile", "--stop-timeout "),
        ("deploy/docker/Dockerfile", "docker stop -t "),
    ] {
        let found = numbers_after(&repo_file(file), marker);
        assert!(!found.is_empty(), "{file}: no `{marker}N`");
        assert!(
            found.iter().all(|found| *found == seconds),
            "{file}: `{marker}{found:?}` should be the unit's {seconds}"
        );
    }
}

/// A stop with every step as slow as it may be (a run hanging past the grace, a notification
/// being retried, the history database locked by another writer) ends within the grace plus
/// the documented figure, with exit status 0.
#[test]
fn a_stop_with_every_step_slow_ends_within_the_grace_plus_the_documented_figure() {
    // A target that accepts and never answers, so a run is always in flight.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let silent_port = silent.local_addr().expect("address").port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in silent.incoming().flatten() {
            held.push(stream);
        }
    });
    let refused = free_port();
    let listen = free_port();
    let dir = scratch_dir("slow-stop");
    let database = dir.join("history.db");
    let grace = Duration::from_secs(1);
    let config = format!(
        r#"
        [agent]
        listen = "127.0.0.1:{listen}"
        shutdown_grace = "1s"
        [history]
        path = "{}"
        [[checks]]
        name = "hanging"
        type = "http"
        url = "http://127.0.0.1:{silent_port}/"
        interval = "2s"
        timeout = "1800ms"
        min_failing_time = "0s"
        [[notifiers]]
        name = "hook"
        type = "webhook"
        default = true
        url = "http://127.0.0.1:{refused}/"
        retry_backoff = "100ms"
        "#,
        database.display()
    );
    let mut agent = Bastion::start("slow-stop", listen, &config, &["run"]);
    agent.wait_ready();
    common::eventually_blocking(
        "history written and a notification retried",
        common::PATIENCE,
        || {
            let log = agent.log();
            log.contains("history database ready") && log.contains("notification not delivered yet")
        },
    );
    // Another writer holds the database: every batch waits for SQLite's busy timeout.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let _lock = runtime.block_on(async {
        use sqlx::Connection;
        let mut connection =
            sqlx::SqliteConnection::connect(&format!("sqlite://{}", database.display()))
                .await
                .expect("the history database opens");
        sqlx::query("BEGIN EXCLUSIVE")
            .execute(&mut connection)
            .await
            .expect("the lock is taken");
        connection
    });
    std::thread::sleep(Duration::from_secs(2));
    let stopping = std::time::Instant::now();
    let status = agent.terminate();
    let took = stopping.elapsed();
    let log = agent.log();
    assert_eq!(status.and_then(|status| status.code()), Some(0), "{log}");
    assert!(
        took <= grace + STOP_BEYOND_GRACE + Duration::from_secs(1),
        "the stop took {took:?}, past the grace + {STOP_BEYOND_GRACE:?}:\n{log}"
    );
    assert!(log.contains("bastion stopped"), "{log}");
    eprintln!("a stop with every step slow took {took:?}");
}
