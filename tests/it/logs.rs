//! Log lines as whoever reads them gets them, through the real binary: plain text to a pipe or
//! a file, colour on a terminal (a pty from `script`) unless `NO_COLOR` is set, JSON never
//! coloured, and under systemd (`JOURNAL_STREAM` naming stderr) sd-daemon `<N>` priority
//! prefixes without timestamps, so `journalctl -p warning` selects by level.

use crate::common::nats::free_port;
use crate::common::process::scratch_dir;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_bastion");
const RUNNING: &str = "bastion is running";

fn config_file(dir: &Path, port: u16) -> PathBuf {
    let path = dir.join("bastion.toml");
    std::fs::write(
        &path,
        format!(
            "[agent]\nlisten = \"127.0.0.1:{port}\"\nshutdown_grace = \"1s\"\n[history]\npath = \"{}\"\n",
            dir.join("history.db").display()
        ),
    )
    .unwrap();
    path
}

/// The environment a test controls: none of the variables that change the output leak in
/// from the test runner's own.
fn command(program: &str) -> Command {
    let mut command = Command::new(program);
    command
        .env_remove("NO_COLOR")
        .env_remove("JOURNAL_STREAM")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("BASTION_CONFIG")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null());
    command
}

/// Collects what a reader yields, in the background.
fn collect(mut reader: impl Read + Send + 'static) -> Arc<Mutex<Vec<u8>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&seen);
    std::thread::spawn(move || {
        let mut buffer = [0u8; 4096];
        while let Ok(read) = reader.read(&mut buffer) {
            if read == 0 {
                break;
            }
            sink.lock().unwrap().extend_from_slice(&buffer[..read]);
        }
    });
    seen
}

fn text(seen: &Mutex<Vec<u8>>) -> String {
    String::from_utf8_lossy(&seen.lock().unwrap()).into_owned()
}

fn wait_for(what: &str, mut read: impl FnMut() -> String, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now = read();
        if now.contains(needle) {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: no `{needle}` within 60s in:\n{now}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success(), "kill -{name} {pid}");
}

fn wait_exit(child: &mut Child) -> ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("did not exit within 60s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `bastion run` with stderr to a pipe: until it is running, then SIGTERM; its stderr.
fn run_to_pipe(extra: &[&str]) -> String {
    let dir = scratch_dir("logs-pipe");
    let config = config_file(&dir, free_port());
    let mut child = command(BIN)
        .args(extra)
        .arg("run")
        .arg("--config")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let seen = collect(child.stderr.take().unwrap());
    wait_for("pipe", || text(&seen), RUNNING);
    signal(child.id(), "TERM");
    assert!(wait_exit(&mut child).success());
    let _ = std::fs::remove_dir_all(dir);
    // The reader thread has seen everything once the pipe closes with the exit.
    wait_for("pipe", || text(&seen), "bastion stopped");
    text(&seen)
}

#[test]
fn a_pipe_gets_plain_text_and_plain_json() {
    let plain = run_to_pipe(&[]);
    assert!(!plain.contains('\x1b'), "escape sequences in:\n{plain:?}");
    let running = plain.lines().find(|line| line.contains(RUNNING)).unwrap();
    // An RFC 3339 timestamp, the level, the target, the message, then the fields.
    assert!(running.starts_with("20"), "{running}");
    assert!(
        running.contains(" INFO bastion_agent::agent: bastion is running agent="),
        "{running}"
    );

    let json = run_to_pipe(&["--log-format", "json"]);
    assert!(!json.contains('\x1b'), "escape sequences in:\n{json:?}");
    for line in json.lines() {
        let value: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(value["level"].is_string(), "{line}");
    }
}

/// `bastion run` on a pty made by `script`: until it is running, then SIGTERM to bastion
/// (script's child); what the terminal showed.
fn run_on_pty(extra: &str, no_color: Option<&str>) -> String {
    let dir = scratch_dir("logs-pty");
    let config = config_file(&dir, free_port());
    let line = format!("exec {BIN} {extra} run --config {}", config.display());
    let mut script = command("script");
    script
        .args(["-qfec", &line, "/dev/null"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(value) = no_color {
        script.env("NO_COLOR", value);
    }
    let mut child = script.spawn().expect("script (util-linux) runs");
    let seen = collect(child.stdout.take().unwrap());
    let errors = collect(child.stderr.take().unwrap());
    wait_for("pty", || text(&seen), RUNNING);
    let children = format!("/proc/{0}/task/{0}/children", child.id());
    let bastion: u32 = std::fs::read_to_string(&children)
        .unwrap()
        .split_whitespace()
        .next()
        .expect("script has one child, bastion")
        .parse()
        .unwrap();
    signal(bastion, "TERM");
    let status = wait_exit(&mut child);
    assert!(status.success(), "{status}: {}", text(&errors));
    let _ = std::fs::remove_dir_all(dir);
    wait_for("pty", || text(&seen), "bastion stopped");
    text(&seen)
}

#[test]
fn a_terminal_gets_colour_unless_no_color_is_set_and_json_never() {
    let coloured = run_on_pty("", None);
    let running = coloured
        .lines()
        .find(|line| line.contains(RUNNING))
        .unwrap();
    // The level in green, as tracing-subscriber colours INFO.
    assert!(running.contains("\x1b[32m INFO\x1b[0m"), "{running:?}");

    let plain = run_on_pty("", Some("1"));
    assert!(plain.contains(RUNNING), "{plain:?}");
    assert!(
        !plain.contains('\x1b'),
        "NO_COLOR=1 still coloured:\n{plain:?}"
    );

    // An empty NO_COLOR does not turn colour off (no-color.org).
    let empty = run_on_pty("", Some(""));
    assert!(empty.contains("\x1b[32m INFO"), "{empty:?}");

    let json = run_on_pty("--log-format json", None);
    assert!(!json.contains('\x1b'), "JSON coloured:\n{json:?}");
    let line = json.lines().find(|line| line.contains(RUNNING)).unwrap();
    let value: serde_json::Value = serde_json::from_str(line.trim_end_matches('\r')).unwrap();
    assert_eq!(value["level"], "INFO");
}

/// What journald would get: stderr is a file whose device and inode `JOURNAL_STREAM` names,
/// as systemd sets it for a service whose output goes to the journal.
struct Journaled {
    child: Child,
    log: PathBuf,
    config: PathBuf,
    dir: PathBuf,
}

impl Journaled {
    fn start(extra: &[&str], stream: Option<&str>) -> Journaled {
        let dir = scratch_dir("logs-journal");
        let config = config_file(&dir, free_port());
        let log = dir.join("stderr.log");
        let file = std::fs::File::create(&log).unwrap();
        let metadata = file.metadata().unwrap();
        let named = format!("{}:{}", metadata.dev(), metadata.ino());
        let child = command(BIN)
            .args(extra)
            .arg("run")
            .arg("--config")
            .arg(&config)
            .env("JOURNAL_STREAM", stream.unwrap_or(&named))
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap();
        Journaled {
            child,
            log,
            config,
            dir,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_for(&self, needle: &str) -> String {
        wait_for("journal", || self.log(), needle)
    }

    fn stop(mut self) -> String {
        signal(self.child.id(), "TERM");
        assert!(wait_exit(&mut self.child).success(), "{}", self.log());
        let log = self.log();
        let _ = std::fs::remove_dir_all(&self.dir);
        log
    }
}

#[test]
fn under_systemd_each_line_carries_its_priority_and_no_timestamp() {
    let agent = Journaled::start(&[], None);
    agent.wait_for(&format!("<6>bastion_agent::agent: {RUNNING} agent="));
    // A config that does not parse: the reload fails, logged as an error (priority 3).
    std::fs::write(&agent.config, "[agent\n").unwrap();
    signal(agent.child.id(), "HUP");
    agent.wait_for("<3>bastion_agent::reload: config reload failed");
    // A valid config with another listen address: applies only after a restart, a warning.
    std::fs::write(
        &agent.config,
        format!("[agent]\nlisten = \"127.0.0.1:{}\"\n", free_port()),
    )
    .unwrap();
    signal(agent.child.id(), "HUP");
    agent.wait_for("<4>bastion_agent::reload: these config sections changed");
    let log = agent.stop();
    assert!(!log.contains('\x1b'), "{log:?}");
    for line in log.lines() {
        let priority = line
            .strip_prefix('<')
            .and_then(|rest| rest.split_once('>'))
            .map(|(digit, _)| digit);
        assert!(
            matches!(priority, Some("3" | "4" | "6" | "7")),
            "a line without a priority prefix: {line:?}\n{log}"
        );
        // journald stamps the time itself.
        assert!(!line[3..].starts_with("20"), "{line}");
    }

    // JSON lines keep the prefix, and after it are JSON.
    let agent = Journaled::start(&["--log-format", "json"], None);
    let log = agent.wait_for(RUNNING);
    let line = log.lines().find(|line| line.contains(RUNNING)).unwrap();
    let json = line.strip_prefix("<6>").unwrap_or_else(|| panic!("{line}"));
    let value: serde_json::Value = serde_json::from_str(json).unwrap();
    assert_eq!(value["message"], RUNNING);
    agent.stop();
}

#[test]
fn journal_stream_naming_another_file_changes_nothing() {
    // A shell started by a service inherits JOURNAL_STREAM; redirected to a file, its
    // bastion writes plain lines.
    let agent = Journaled::start(&[], Some("1:1"));
    let log = agent.wait_for(RUNNING);
    let line = log.lines().find(|line| line.contains(RUNNING)).unwrap();
    assert!(line.starts_with("20"), "{line}");
    assert!(!log.contains("<6>"), "{log}");
    agent.stop();
}
