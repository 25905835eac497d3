//! Every numeric and duration key of the config at its extremes, through the real binary.
//! The keys come from `config/reference.toml` (its commented-out keys included) and must be
//! exactly the keys of `config::bounds::all_bounds()`, so a new key without a range fails here. Each
//! key gets a fixed set of values: 0, 1, -1, both ends of its range and one step past each,
//! i64::MAX, u64::MAX and the longest durations humantime reads. Keys of a check are tried on
//! every check type that has them, keys of a notifier on the first type that has them.
//! `bastion validate` must answer 0 for a value in range and 2 for any other, naming the
//! file and the key's line; every config it accepts is started with `bastion run`, given a
//! second, and stopped with SIGINT: it must exit 0 and log no panic. The binary runs are
//! made in parallel, so the whole takes tens of seconds.

use crate::common::nats::NatsServer;
use crate::common::process::scratch_dir;
use bastion_agent::checks::CheckType;
use bastion_agent::config::bounds::all_bounds;
use bastion_agent::config::{Config, Format};
use bastion_agent::problem::{Bound, Range};
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// String keys whose values may look like durations but are not duration keys.
const NOT_DURATION_KEYS: &[&str] = &["checks[].assertions[].operand"];

/// What a numeric or duration leaf of the reference holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Count,
    Duration,
}

/// A commented-out line of the reference that is config, with its `#` marks removed (the
/// rule `tests/it/docs.rs` reads the reference by).
fn commented_config(line: &str) -> Option<&str> {
    let trimmed = line.trim_start();
    if !trimmed.starts_with('#') {
        return None;
    }
    let candidate = trimmed.trim_start_matches(|c: char| c == '#' || c.is_whitespace());
    let table: toml::Table = toml::from_str(candidate).ok()?;
    (table.len() == 1).then_some(candidate)
}

fn walk(prefix: &str, table: &toml::Table, found: &mut BTreeMap<String, Kind>) {
    for (key, value) in table {
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        match value {
            toml::Value::Table(inner) => walk(&path, inner, found),
            toml::Value::Array(items) if items.iter().all(toml::Value::is_table) => {
                for item in items {
                    if let Some(inner) = item.as_table() {
                        walk(&format!("{path}[]"), inner, found);
                    }
                }
            }
            toml::Value::Integer(_) => {
                found.insert(path, Kind::Count);
            }
            toml::Value::String(text)
                if !NOT_DURATION_KEYS.contains(&path.as_str())
                    && humantime::parse_duration(text).is_ok() =>
            {
                found.insert(path, Kind::Duration);
            }
            _ => {}
        }
    }
}

/// The numeric and duration keys `config/reference.toml` sets or describes.
fn reference_keys() -> BTreeMap<String, Kind> {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/reference.toml"
    ))
    .expect("the reference");
    let uncommented: Vec<&str> = text
        .lines()
        .map(|line| commented_config(line).unwrap_or(line))
        .collect();
    let table: toml::Table =
        toml::from_str(&uncommented.join("\n")).expect("the reference, uncommented, is TOML");
    let mut found = BTreeMap::new();
    walk("", &table, &mut found);
    found
}

fn kind(bound: &Bound) -> Kind {
    match bound.range {
        Range::Count { .. } => Kind::Count,
        Range::Duration { .. } => Kind::Duration,
    }
}

#[test]
fn fuzz_every_numeric_key_of_the_reference_has_a_range() {
    let reference = reference_keys();
    assert!(
        reference.len() >= 30,
        "found only {} numeric keys in the reference: {reference:?}",
        reference.len()
    );
    let bounded: BTreeMap<String, Kind> = all_bounds()
        .map(|bound| (bound.key.to_string(), kind(bound)))
        .collect();
    let missing: Vec<&String> = reference
        .keys()
        .filter(|key| !bounded.contains_key(*key))
        .collect();
    assert!(
        missing.is_empty(),
        "numeric or duration keys of config/reference.toml without a range in \
         src/config/bounds.rs (add one, and validate it): {missing:?}"
    );
    let unknown: Vec<&String> = bounded
        .keys()
        .filter(|key| !reference.contains_key(*key))
        .collect();
    assert!(
        unknown.is_empty(),
        "ranges of keys config/reference.toml neither sets nor describes: {unknown:?}"
    );
    for (key, kind) in &reference {
        assert_eq!(
            bounded[key], *kind,
            "{key}: the reference and bounds.rs disagree on its kind"
        );
    }
}

/// One value to try: its TOML text, and whether it is in the key's range (a value not even
/// of the key's type, like `-1` for a count, is not).
#[derive(Debug, Clone)]
struct Value {
    text: String,
    in_range: bool,
}

fn shown(duration: Duration) -> String {
    humantime::format_duration(duration).to_string()
}

/// The fixed extremes of a key, and both sides of both ends of its range.
fn values(bound: &Bound) -> Vec<Value> {
    let mut values: Vec<Value> = Vec::new();
    match bound.range {
        Range::Count { min, max } => {
            let mut numbers: Vec<i128> = vec![
                0,
                1,
                -1,
                i128::from(min) - 1,
                i128::from(min),
                i128::from(max),
                i128::from(max) + 1,
                i128::from(u16::MAX) + 1,
                i128::from(u32::MAX) + 1,
                i128::from(i64::MAX),
                i128::from(u64::MAX),
            ];
            numbers.sort_unstable();
            numbers.dedup();
            for number in numbers {
                values.push(Value {
                    text: number.to_string(),
                    in_range: number >= i128::from(min) && number <= i128::from(max),
                });
            }
        }
        Range::Duration { min, max } => {
            let mut texts: Vec<String> = vec![
                "0s".into(),
                "1ns".into(),
                "1s".into(),
                "-1s".into(),
                shown(max),
                shown(max + Duration::from_nanos(1)),
                "18446744073709551615s".into(),
                "18446744073709551615s 999999999ns".into(),
                "600000000000years".into(),
            ];
            if !min.is_zero() {
                texts.push(shown(min));
                texts.push(shown(min - Duration::from_nanos(1)));
            }
            texts.sort();
            texts.dedup();
            for text in texts {
                let in_range = humantime::parse_duration(&text)
                    .is_ok_and(|duration| duration >= min && duration <= max);
                values.push(Value {
                    text: format!("\"{text}\""),
                    in_range,
                });
            }
        }
    }
    values
}

/// Where a key is tried: on its own, or in a check or notifier of a type.
#[derive(Debug, Clone)]
struct Place {
    bound: &'static Bound,
    check_type: Option<CheckType>,
    notifier_type: Option<&'static str>,
}

impl Place {
    fn describe(&self) -> String {
        match (self.check_type, self.notifier_type) {
            (Some(check_type), _) => format!("{} of a {check_type} check", self.bound.key),
            (_, Some(notifier)) => format!("{} of a {notifier} notifier", self.bound.key),
            _ => self.bound.key.to_string(),
        }
    }

    fn needs_nats(&self) -> bool {
        self.bound.key.starts_with("bus.nats.") || self.bound.key.starts_with("checker.")
    }
}

/// The addresses a config points at: one that answers 200 to anything, one that refuses.
#[derive(Debug, Clone)]
struct Targets {
    ok: u16,
    refused: u16,
}

/// An HTTP server that answers 200 to every request, for notifications that must be
/// delivered at once (so a stop does not wait for their retries).
fn serve_ok() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("address").port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            std::thread::spawn(move || {
                let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && head.len() < 65_536 {
                    match stream.read(&mut byte) {
                        Ok(1) => head.push(byte[0]),
                        _ => return,
                    }
                }
                let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
                let length: usize = text
                    .lines()
                    .find_map(|line| line.strip_prefix("content-length:"))
                    .and_then(|value| value.trim().parse().ok())
                    .unwrap_or(0);
                let mut body = vec![0u8; length.min(1 << 20)];
                let _ = stream.read_exact(&mut body);
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                );
            });
        }
    });
    port
}

fn refused_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("address").port()
}

/// The spec lines of a check of each type, aimed at a port that refuses.
fn check_spec(check_type: CheckType, refused: u16) -> String {
    match check_type {
        CheckType::Http => format!("url = \"http://127.0.0.1:{refused}/\"\n"),
        CheckType::Tcp | CheckType::Tls | CheckType::Grpc => {
            format!("address = \"127.0.0.1:{refused}\"\n")
        }
        CheckType::Dns => format!("query = \"example.com\"\nserver = \"127.0.0.1:{refused}\"\n"),
        // A name, so that either ip_version is accepted.
        CheckType::Icmp => "host = \"localhost\"\n".to_string(),
        CheckType::Udp => format!("address = \"127.0.0.1:{refused}\"\nsend = \"ping\"\n"),
        CheckType::Websocket => format!("url = \"ws://127.0.0.1:{refused}/\"\n"),
    }
}

/// The keys of a notifier of each type; `url` is where its requests go.
fn notifier_spec(notifier_type: &str, url: &str, dir: &Path) -> String {
    match notifier_type {
        "pagerduty" => {
            let key = dir.join("pagerduty.key");
            std::fs::write(&key, "routing-key\n").expect("key file");
            format!("routing_key_file = \"{}\"\nurl = \"{url}\"\n", key.display())
        }
        "email" => "smtp_host = \"127.0.0.1\"\nfrom = \"bastion@example.com\"\nto = [\"oncall@example.com\"]\n"
            .to_string(),
        _ => format!("url = \"{url}\"\n"),
    }
}

/// Other keys a key is tried with, so that no other rule refuses the ends of its range:
/// a timeout of 10m needs a longer interval, 100 echo requests a long timeout.
fn companions(place: &Place) -> &'static str {
    match (place.bound.key, place.check_type) {
        // One echo request takes no time to send, so even a timeout of 1ns leaves room.
        ("checks[].timeout", Some(CheckType::Icmp)) => "interval = \"11m\"\ncount = 1\n",
        ("checks[].timeout", _) => "interval = \"11m\"\n",
        (
            "checks[].count"
            | "checks[].packet_interval"
            | "checks[].payload_size"
            | "checks[].ip_version",
            _,
        ) => "interval = \"11m\"\ntimeout = \"10m\"\n",
        // `["*"]`: any number of locations may be live, so every threshold can be met.
        ("checks[].min_failing_locations", _) => "interval = \"2s\"\nlocations = [\"*\"]\n",
        _ => "interval = \"2s\"\n",
    }
}

/// A config with `value` at `place`, and the line (1-based) the key is written on.
fn config_for(
    place: &Place,
    value: &str,
    dir: &Path,
    targets: &Targets,
    nats: Option<&str>,
) -> (String, usize) {
    let key = place.bound.key;
    let mut lines: Vec<String> = vec![
        "agent.listen = \"127.0.0.1:0\"".into(),
        format!("history.path = \"{}\"", dir.join("history.db").display()),
    ];
    if key != "agent.shutdown_grace" {
        lines.push("agent.shutdown_grace = \"1s\"".into());
    }
    if place.needs_nats() {
        let url = nats.unwrap_or("nats://127.0.0.1:4222");
        lines.push("bus.kind = \"nats\"".into());
        lines.push(format!("bus.nats.url = \"{url}\""));
        lines.push("bus.nats.results_stream = true".into());
        if key.starts_with("checker.") {
            lines.push("checker.ha = true".into());
        }
    }
    let mut key_line = 0;
    if !key.contains("[]") {
        lines.push(format!("{key} = {value}"));
        key_line = lines.len();
    }
    // A check that runs every second and fails at once, so that probes, state changes,
    // history and notifications all happen while the agent runs.
    let always_type = if key == "runner.workers.http" {
        CheckType::Tcp
    } else {
        CheckType::Http
    };
    lines.push(String::new());
    lines.push("[[checks]]".into());
    lines.push("name = \"always\"".into());
    lines.push(format!("type = \"{always_type}\""));
    lines.push("interval = \"1s\"".into());
    lines.push("min_failing_time = \"0s\"".into());
    lines.extend(
        check_spec(always_type, targets.refused)
            .lines()
            .map(String::from),
    );
    let leaf = place.bound.name();
    if let Some(check_type) = place.check_type {
        lines.push(String::new());
        lines.push("[[checks]]".into());
        lines.push("name = \"subject\"".into());
        lines.push(format!("type = \"{check_type}\""));
        lines.extend(
            check_spec(check_type, targets.refused)
                .lines()
                .map(String::from),
        );
        for companion in companions(place).lines() {
            if !companion.starts_with(&format!("{leaf} ")) {
                lines.push(companion.to_string());
            }
        }
        lines.push(format!("{leaf} = {value}"));
        key_line = lines.len();
    }
    // Notifications: delivered at once, unless a notifier's key is tried, whose notifier
    // then gets them and retries against a port that refuses.
    let delivered = format!("http://127.0.0.1:{}/", targets.ok);
    let refused = format!("http://127.0.0.1:{}/", targets.refused);
    lines.push(String::new());
    lines.push("[[notifiers]]".into());
    lines.push("name = \"hook\"".into());
    lines.push("type = \"webhook\"".into());
    lines.push(format!("default = {}", place.notifier_type.is_none()));
    lines.extend(
        notifier_spec("webhook", &delivered, dir)
            .lines()
            .map(String::from),
    );
    if let Some(notifier_type) = place.notifier_type {
        lines.push(String::new());
        lines.push("[[notifiers]]".into());
        lines.push("name = \"subject\"".into());
        lines.push(format!("type = \"{notifier_type}\""));
        lines.push("default = true".into());
        lines.extend(
            notifier_spec(notifier_type, &refused, dir)
                .lines()
                .map(String::from),
        );
        lines.push(format!("{leaf} = {value}"));
        key_line = lines.len();
    }
    if key.starts_with("maintenance[].") {
        lines.push(String::new());
        lines.push("[[maintenance]]".into());
        lines.push("name = \"window\"".into());
        lines.push("checks = [\"nothing-*\"]".into());
        lines.push("at = \"00:00\"".into());
        lines.push(format!("{leaf} = {value}"));
        key_line = lines.len();
    }
    assert!(key_line > 0, "{key}: no place to write it");
    (lines.join("\n") + "\n", key_line)
}

/// Every place each key is tried: a check's key on every type that has it (found by
/// parsing), a notifier's on the first type that has it.
fn places() -> Vec<Place> {
    let targets = Targets { ok: 1, refused: 1 };
    let dir = std::env::temp_dir();
    let parses = |place: &Place, value: &str| {
        let (text, _) = config_for(place, value, &dir, &targets, None);
        match Config::parse(&text, Format::Toml, Path::new("probe.toml")) {
            Ok(_) => true,
            Err(error) => !error.to_string().contains("unknown field"),
        }
    };
    let mut places = Vec::new();
    for bound in all_bounds() {
        let sample = values(bound)
            .into_iter()
            .find(|value| value.in_range)
            .expect("a value in range")
            .text;
        if bound.key.starts_with("checks[].") {
            for check_type in CheckType::ALL {
                let place = Place {
                    bound,
                    check_type: Some(check_type),
                    notifier_type: None,
                };
                if parses(&place, &sample) {
                    places.push(place);
                }
            }
        } else if bound.key.starts_with("notifiers[].") {
            // Tried on each receiver type in turn: the first that has the key.
            let place = bastion_agent::receivers::RECEIVER_NAMES
                .iter()
                .map(|notifier_type| Place {
                    bound,
                    check_type: None,
                    notifier_type: Some(notifier_type),
                })
                .find(|place| parses(place, &sample))
                .unwrap_or_else(|| panic!("{}: no notifier type takes it", bound.key));
            places.push(place);
        } else {
            places.push(Place {
                bound,
                check_type: None,
                notifier_type: None,
            });
        }
    }
    places
}

fn bastion() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_bastion"));
    command
        .env_remove("BASTION_CONFIG")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("STATE_DIRECTORY")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null());
    command
}

/// One key at one value.
struct Case {
    place: Place,
    value: Value,
}

/// Runs `work` over `items` on `threads` threads, collecting the failures it reports.
fn in_parallel<T: Send>(
    items: Vec<T>,
    threads: usize,
    work: impl Fn(T) -> Option<String> + Sync,
) -> Vec<String> {
    let queue = Mutex::new(items);
    let failures = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                let Some(item) = queue.lock().unwrap().pop() else {
                    break;
                };
                if let Some(failure) = work(item) {
                    failures.lock().unwrap().push(failure);
                }
            });
        }
    });
    failures.into_inner().unwrap()
}

/// `bastion run` with `config`: started, given a second after it says it runs, then SIGINT.
/// None when it stopped cleanly, else what went wrong.
fn run_and_stop(config: &Path, dir: &Path) -> Option<String> {
    let log_path = dir.join("run.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let mut child = bastion()
        .args(["run", "--config"])
        .arg(config)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("the binary starts");
    let read_log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let started = Instant::now();
    let mut running = false;
    while started.elapsed() < Duration::from_secs(60) {
        if read_log().contains("bastion is running") {
            running = true;
            break;
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Some(format!("exited by itself with {status}:\n{}", read_log()));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if !running {
        let _ = child.kill();
        let _ = child.wait();
        return Some(format!("never said it runs:\n{}", read_log()));
    }
    std::thread::sleep(Duration::from_secs(1));
    let _ = Command::new("kill")
        .arg("-INT")
        .arg(child.id().to_string())
        .status();
    let stopped = Instant::now();
    let status: Option<ExitStatus> = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break Some(status);
        }
        if stopped.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let log = read_log();
    match status {
        Some(status) if status.code() == Some(0) && !log.contains("panicked") => None,
        Some(status) => Some(format!("stopped with {status}:\n{log}")),
        None => Some(format!("did not stop within 60s of SIGINT:\n{log}")),
    }
}

#[test]
fn fuzz_every_numeric_key_at_its_extremes_through_the_binary() {
    let targets = Targets {
        ok: serve_ok(),
        refused: refused_port(),
    };
    let places = places();
    let cases: Vec<Case> = places
        .iter()
        .flat_map(|place| {
            values(place.bound).into_iter().map(|value| Case {
                place: place.clone(),
                value,
            })
        })
        .collect();
    let keys: BTreeSet<&str> = places.iter().map(|place| place.bound.key).collect();
    assert_eq!(keys.len(), all_bounds().count(), "every key has a place");
    let accepted = Mutex::new(Vec::new());
    let count = cases.len();
    let failures = in_parallel(cases, 4, |case| {
        let dir = scratch_dir("extremes");
        let (text, line) = config_for(&case.place, &case.value.text, &dir, &targets, None);
        let path = dir.join("case.toml");
        std::fs::write(&path, &text).expect("config file");
        let output = bastion()
            .args(["validate", "--config"])
            .arg(&path)
            .output()
            .expect("the binary runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        let what = format!("{} = {}", case.place.describe(), case.value.text);
        let place = format!("{}:{line}:", path.display());
        let outcome = match (case.value.in_range, output.status.code()) {
            (true, Some(0)) => {
                accepted.lock().unwrap().push((case, dir.clone()));
                return None;
            }
            (false, Some(2)) if stderr.contains(&place) => None,
            (false, Some(2)) => Some(format!(
                "{what}: refused, but no error names line {line} (the key):\n{stderr}"
            )),
            (in_range, code) => Some(format!(
                "{what}: in range: {in_range}, yet validate exited {code:?}:\n{stderr}"
            )),
        };
        let _ = std::fs::remove_dir_all(&dir);
        outcome
    });
    assert!(
        failures.is_empty(),
        "{} of {count} cases:\n{}",
        failures.len(),
        failures.join("\n\n")
    );
    let accepted = accepted.into_inner().unwrap();
    assert!(
        accepted.len() >= keys.len(),
        "every key has accepted values"
    );
    // Every accepted config runs and stops cleanly; NATS keys each get a server of their own.
    let runs = accepted.len();
    let failures = in_parallel(accepted, 12, |(case, dir)| {
        let server = case.place.needs_nats().then(NatsServer::start);
        let url = server.as_ref().map(NatsServer::url);
        let (text, _) = config_for(
            &case.place,
            &case.value.text,
            &dir,
            &targets,
            url.as_deref(),
        );
        let path = dir.join("case.toml");
        std::fs::write(&path, &text).expect("config file");
        let outcome = run_and_stop(&path, &dir);
        // More than one replica needs a JetStream cluster: against this single server, start-up
        // must stop with the message that says what to set (the cluster runs are in
        // tests/it/nats_cluster.rs).
        let outcome = if case.place.bound.key == "bus.nats.replicas" && case.value.text != "1" {
            match outcome {
                Some(why)
                    if why.contains("set bus.nats.replicas to the number of JetStream servers") =>
                {
                    None
                }
                Some(why) => Some(why),
                None => {
                    Some("ran on a single server; its replicas should have been refused".into())
                }
            }
        } else {
            outcome
        }
        .map(|why| format!("{} = {}: {why}", case.place.describe(), case.value.text));
        if outcome.is_none() {
            let _ = std::fs::remove_dir_all(&dir);
        }
        outcome
    });
    assert!(
        failures.is_empty(),
        "{} of {runs} runs:\n{}",
        failures.len(),
        failures.join("\n\n")
    );
    eprintln!(
        "{} keys in {} places, {count} values validated, {runs} configs run and stopped",
        keys.len(),
        places.len()
    );
}

/// Random values (any count, any duration, and text around the ends of the range) for every
/// key, in process: validation never panics, accepts exactly the values in range, and names
/// the key's line when it refuses.
#[test]
fn fuzz_numeric_keys_in_process_accept_exactly_their_range() {
    let targets = Targets { ok: 1, refused: 1 };
    let dir = std::env::temp_dir();
    let places = places();
    let value = prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        (0u64..=u64::MAX, 0u32..1_000_000_000)
            .prop_map(|(secs, nanos)| format!("\"{}\"", shown(Duration::new(secs, nanos)))),
        (0u64..4_000_000_000u64).prop_map(|ms| format!("\"{}\"", shown(Duration::from_millis(ms)))),
        (0u64..200_000u64).prop_map(|n| n.to_string()),
    ];
    let mut runner = super::runner(256);
    runner
        .run(&(0..places.len(), value), |(index, text)| {
            let place = &places[index];
            let (config, line) = config_for(place, &text, &dir, &targets, None);
            let outcome =
                bastion_agent::validate::parse(&config, Format::Toml, Path::new("x.toml"));
            let in_range = match place.bound.range {
                Range::Count { min, max } => {
                    text.parse::<u64>().is_ok_and(|n| n >= min && n <= max)
                }
                Range::Duration { min, max } => text
                    .strip_prefix('"')
                    .and_then(|text| text.strip_suffix('"'))
                    .and_then(|text| humantime::parse_duration(text).ok())
                    .is_some_and(|d| d >= min && d <= max),
            };
            match outcome {
                Ok(_) => prop_assert!(in_range, "{} = {text} was accepted", place.describe()),
                Err(error) => {
                    let shown = error.to_string();
                    prop_assert!(
                        !in_range,
                        "{} = {text} was refused: {shown}",
                        place.describe()
                    );
                    prop_assert!(
                        shown.contains(&format!("x.toml:{line}:")),
                        "{} = {text}: no error at line {line}: {shown}",
                        place.describe()
                    );
                }
            }
            Ok(())
        })
        .unwrap();
}

/// Both sides of each end of every range, in process, with the key's own words in the
/// message for the refused ones.
#[test]
fn fuzz_the_ends_of_every_range_are_accepted_and_one_step_past_refused() {
    let targets = Targets { ok: 1, refused: 1 };
    let dir = std::env::temp_dir();
    for place in places() {
        let name = place.bound.name();
        let edges: Vec<(String, bool)> = match place.bound.range {
            Range::Count { min, max } => {
                let mut edges = vec![(min.to_string(), true), (max.to_string(), true)];
                edges.push(((max + 1).to_string(), false));
                if min > 0 {
                    edges.push(((min - 1).to_string(), false));
                }
                edges
            }
            Range::Duration { min, max } => {
                let quoted = |d: Duration| format!("\"{}\"", shown(d));
                let mut edges = vec![(quoted(min), true), (quoted(max), true)];
                edges.push((quoted(max + Duration::from_nanos(1)), false));
                if !min.is_zero() {
                    edges.push((quoted(min - Duration::from_nanos(1)), false));
                }
                edges
            }
        };
        for (text, accepted) in edges {
            let (config, line) = config_for(&place, &text, &dir, &targets, None);
            let outcome =
                bastion_agent::validate::parse(&config, Format::Toml, Path::new("x.toml"));
            match (outcome, accepted) {
                (Ok(_), true) => {}
                (Err(error), false) => {
                    let shown = error.to_string();
                    assert!(
                        // Past what the key's type holds (smtp_port 65536), the parser's
                        // own message stands at the key's line.
                        shown.contains(&format!("x.toml:{line}:"))
                            && (shown.contains(name) || shown.contains("invalid value: integer")),
                        "{} = {text}: the error does not name the key at line {line}: {shown}",
                        place.describe()
                    );
                }
                (Ok(_), false) => panic!(
                    "{} = {text} is past the range, yet accepted",
                    place.describe()
                ),
                (Err(error), true) => panic!(
                    "{} = {text} is in the range, yet refused: {error}",
                    place.describe()
                ),
            }
        }
    }
}

/// Ranges the docs state match the table.
#[test]
fn fuzz_the_documented_ranges_are_the_enforced_ones() {
    let docs = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/configuration.md"
    ))
    .expect("the docs");
    // The rows of the table headed | Key | Least | Most |.
    let mut documented: BTreeMap<String, (String, String)> = BTreeMap::new();
    let rows = docs
        .lines()
        .skip_while(|line| !line.starts_with("| Key | Least | Most |"))
        .skip(2)
        .take_while(|line| line.starts_with('|'));
    for line in rows {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        assert_eq!(cells.len(), 5, "not a row of three cells: {line}");
        for key in cells[1].split(", ") {
            documented.insert(
                key.trim_matches('`').to_string(),
                (
                    cells[2].trim_matches('`').to_string(),
                    cells[3].trim_matches('`').to_string(),
                ),
            );
        }
    }
    assert_eq!(
        documented.len(),
        all_bounds().count(),
        "docs/configuration.md, Ranges: one row per key of src/config/bounds.rs"
    );
    for bound in all_bounds() {
        let expected = match bound.range {
            Range::Count { min, max } => (min.to_string(), max.to_string()),
            Range::Duration { min, max } => (
                if min == Duration::from_nanos(1) {
                    "> 0s".to_string()
                } else {
                    shown(min)
                },
                shown(max),
            ),
        };
        assert_eq!(
            documented.get(bound.key),
            Some(&expected),
            "docs/configuration.md, Ranges: the row of `{}` must read | {} | {} |",
            bound.key,
            expected.0,
            expected.1
        );
    }
}
