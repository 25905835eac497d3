//! The configuration file: the root `Config`, loading, and the checks that span sections.
//! Each section is a file that owns its structs, their defaults and their validation
//! (`agent.rs`, `bus.rs`, `checker.rs`, `runner.rs`, `history.rs`, `check.rs`, `notify.rs`);
//! `probe.rs` the settings check types share, `bounds.rs` every range, `problem.rs` what a
//! validation problem is (a message and the path of its key). Sections import only those
//! three, `json_schema.rs` and this file, never each other (the architecture test keeps them
//! free of circles). Loading never panics: every problem becomes a `ConfigError` that names
//! the file, and the line and column where the parser knows them or the problem's path leads
//! (`locate.rs`). What needs the probe engine or the bus is checked a layer up, by
//! `validate`.

mod agent;
pub mod blackbox;
pub mod blackbox_import;
pub mod bounds;
mod bus;
mod check;
mod checker;
mod history;
pub mod json_schema;
mod locate;
mod notify;
mod runner;

pub use crate::checks::settings::*;
pub use crate::problem::{Entry, KeyPath, Problem, Problems, Segment};
pub use agent::*;
pub use bounds::{MAX_BODY_BYTES_LIMIT, MIN_INTERVAL};
pub use bus::*;
pub use check::*;
pub use checker::*;
pub use history::*;
pub use notify::*;
pub use runner::*;

use locate::{parse_toml_all, yaml_error};
use schemars::JsonSchema;
use serde::Deserialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The configured checks as an agent shares them: each definition once, behind its own `Arc`,
/// so the checker's schedule, the sink, the API and every run's request hold the same one
/// instead of copies (issue 20: a copy per check was a kilobyte at a million checks).
pub type CheckList = std::sync::Arc<Vec<std::sync::Arc<CheckConfig>>>;

/// `checks` as a `CheckList`: each moved into its `Arc`, none copied; the list exactly sized.
pub fn check_list(checks: Vec<CheckConfig>) -> CheckList {
    // Not `collect()`: that reuses the parsed list's buffer in place (a `CheckConfig` per
    // slot, with the parser's spare capacity) for the much smaller `Arc`s, and keeps all of it.
    let mut list = Vec::with_capacity(checks.len());
    list.extend(checks.into_iter().map(std::sync::Arc::new));
    std::sync::Arc::new(list)
}

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {message}")]
    Syntax {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{path}: {message}")]
    SyntaxNoLocation { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    /// A semantic mistake whose place in the file is known.
    #[error("{path}:{line}:{column}: {message}")]
    InvalidAt {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    /// More than one mistake, in file order; `bastion validate` prints one per line.
    #[error("{}", join(.0))]
    Several(Vec<ConfigError>),
}

fn join(errors: &[ConfigError]) -> String {
    let shown: Vec<String> = errors.iter().map(ToString::to_string).collect();
    shown.join("; ")
}

impl ConfigError {
    /// Each mistake on its own (one for every variant but `Several`).
    pub fn each(&self) -> Vec<&ConfigError> {
        match self {
            ConfigError::Several(errors) => errors.iter().flat_map(ConfigError::each).collect(),
            one => vec![one],
        }
    }

    /// `problem` about the config file at `path`, placed at its key's line and column when
    /// the file writes it (or at the nearest key above it that it does): for the checks that
    /// need more than the text, such as files the running agent must open.
    pub fn about_key(path: &Path, problem: Problem) -> ConfigError {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let place = locate::problem_place(&text, Format::for_path(path), None, &problem.path);
        ConfigError::placed(path, place, problem.message)
    }

    /// `message` about the file at `path`, at `place` (line, column) when known.
    fn placed(path: &Path, place: Option<(usize, usize)>, message: String) -> ConfigError {
        match place {
            Some((line, column)) => ConfigError::InvalidAt {
                path: path.to_path_buf(),
                line,
                column,
                message,
            },
            None => ConfigError::Invalid {
                path: path.to_path_buf(),
                message,
            },
        }
    }

    /// One error for a list: the error itself when there is one, `Several` otherwise, sorted
    /// by line and column (those without a place last), without repeats.
    pub fn from_list(mut errors: Vec<ConfigError>) -> ConfigError {
        errors.sort_by_key(|error| match error {
            ConfigError::Syntax { line, column, .. }
            | ConfigError::InvalidAt { line, column, .. } => (*line, *column),
            _ => (usize::MAX, usize::MAX),
        });
        let mut seen = std::collections::HashSet::new();
        errors.retain(|error| seen.insert(error.to_string()));
        if errors.len() == 1 {
            errors.remove(0)
        } else {
            ConfigError::Several(errors)
        }
    }
}

/// The whole configuration file.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// This agent's identity and its own HTTP endpoints.
    #[serde(default)]
    pub agent: AgentConfig,
    /// The message bus between the checker and the runners.
    #[serde(default)]
    pub bus: BusConfig,
    /// How the checker schedules.
    #[serde(default)]
    pub checker: CheckerConfig,
    /// How this agent runs probes.
    #[serde(default)]
    pub runner: RunnerConfig,
    /// The checks to schedule.
    #[serde(default)]
    pub checks: Vec<CheckConfig>,
    /// Receivers of failure and recovery notifications.
    #[serde(default)]
    pub notifiers: Vec<notify::NotifierConfig>,
    /// Windows during which notifications are held back.
    #[serde(default)]
    pub maintenance: Vec<notify::MaintenanceConfig>,
    /// Where the history of runs, state changes and incidents is kept.
    #[serde(default)]
    pub history: HistoryConfig,
    /// The modules of `agent.blackbox_modules`, read at every load; never written in a config.
    #[serde(skip)]
    pub blackbox: Option<std::sync::Arc<blackbox::BlackboxModules>>,
}

/// Which parser reads a file, chosen by its extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Toml,
    Yaml,
}

impl Format {
    pub fn for_path(path: &Path) -> Format {
        match path.extension().and_then(|ext| ext.to_str()) {
            Some(ext) if ext.eq_ignore_ascii_case("yaml") || ext.eq_ignore_ascii_case("yml") => {
                Format::Yaml
            }
            _ => Format::Toml,
        }
    }
}

impl Config {
    /// Reads and parses the file at `path`, and checks what the schema alone can check.
    /// `validate::load` also checks what needs the probe engine, the bus and the endpoints.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text, Format::for_path(path), path)
    }

    /// Parses `text` and checks what the schema alone can check, reporting every mistake
    /// found; `path` only names the source in errors. `validate::parse` does all of it.
    pub fn parse(text: &str, format: Format, path: &Path) -> Result<Config, ConfigError> {
        Config::parse_with(text, format, path, |_| Ok(()))
    }

    /// Parses `text`, runs [`Config::validate`] and `more` (the checks that need layers above
    /// this one), and reports every mistake found by any of them in one error, each placed at
    /// its line and column where known. When some sections or checks of a TOML file do not
    /// parse, the rest is still validated, so one run shows mistakes of both kinds.
    pub fn parse_with(
        text: &str,
        format: Format,
        path: &Path,
        more: impl FnOnce(&Config) -> Result<(), Problems>,
    ) -> Result<Config, ConfigError> {
        let (config, mut errors, document, positions) = match format {
            Format::Toml => {
                let parsed = parse_toml_all(text, path);
                let positions = parsed.check_positions;
                (parsed.config, parsed.errors, parsed.document, positions)
            }
            Format::Yaml => match serde_saphyr::from_str::<Config>(text) {
                Ok(config) => {
                    let positions = (0..config.checks.len()).collect();
                    (Some(config), Vec::new(), None, positions)
                }
                Err(error) => (None, vec![yaml_error(path, &error)], None, Vec::new()),
            },
        };
        let Some(mut config) = config else {
            return Err(ConfigError::from_list(errors));
        };
        let mut problems = check::read_secret_files(&mut config.checks);
        problems.check(blackbox::read_into(&mut config, path));
        problems.extend(config.validate().err().unwrap_or_default());
        problems.extend(more(&config).err().unwrap_or_default());
        for problem in problems.0 {
            // The TOML document holds exactly the checks that parsed, as the config does, so a
            // path's check index is the same in both.
            let place = locate::problem_place(text, format, document.as_ref(), &problem.path);
            let message = locate::renumber_checks(&problem.message, &positions);
            errors.push(ConfigError::placed(path, place, message));
        }
        if errors.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::from_list(errors))
        }
    }

    /// Checks what the types cannot but the schema alone can: ranges, uniqueness, settings that
    /// go together, and reports all that fail. What needs the probe engine (compiling checks,
    /// opening ICMP sockets), the bus (URLs, subjects) or the endpoints (password hashes) is
    /// checked by `validate`.
    pub fn validate(&self) -> Result<(), Problems> {
        let mut problems = Problems::default();
        if self.agent.id.trim().is_empty() {
            problems.push(Problem::key("agent.id", "agent.id must not be empty"));
        }
        problems.extend(self.agent.validate_ranges());
        problems.check(self.agent.web.validate());
        problems.extend(self.checker.validate_ranges());
        problems.extend(self.runner.validate());
        problems.extend(self.bus.validate_ranges());
        problems.check(self.bus.validate(self.checker.ha));
        problems.check(notify::validate(self));
        problems.extend(self.history.validate_ranges());
        problems.check(self.history.validate());
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for (index, check) in self.checks.iter().enumerate() {
            if let Some(first) = seen.insert(check.name.as_str(), index) {
                problems.push(Problem::at(
                    KeyPath::check(index).key("name"),
                    format!(
                        "check name `{}` is used twice (checks #{} and #{}); names must be unique",
                        check.name,
                        first + 1,
                        index + 1
                    ),
                ));
            }
            let entry = Entry::check(index, &check.name);
            problems.extend(check.validate_ranges(&entry));
            let embedded_location =
                (self.bus.kind == BusKind::Embedded).then_some(self.runner.location.as_str());
            problems.extend(check.validate_locations(&entry, embedded_location));
            let check_type = check.check_type();
            if self.runner.workers.for_type(check_type) == 0 {
                problems.push(Problem::at(
                    entry.path.clone(),
                    format!(
                        "check `{}` is of type {check_type}, but runner.workers.{check_type} is 0; \
                         give that type at least one worker",
                        check.name
                    ),
                ));
            }
        }
        problems.into_result()
    }
}

impl Config {
    /// The warning to log at start when the status page is `private` but nothing guards it:
    /// no `basic_auth_users`, and a listener that other hosts may reach (not loopback). The
    /// page, the API and `/metrics` (targets, addresses, error messages) are then open to
    /// anyone who reaches `agent.listen`. None when that is not so.
    pub fn open_endpoints_warning(&self) -> Option<String> {
        let web = &self.agent.web;
        let listen = self.agent.listen;
        let loopback = listen.ip().to_canonical().is_loopback();
        (web.status_page == StatusPageMode::Private && web.basic_auth_users.is_empty() && !loopback)
            .then(|| {
                format!(
                    "agent.web.status_page is \"private\" but agent.web.basic_auth_users is empty, \
                     and agent.listen {listen} is not a loopback address: the status page, the API \
                     and /metrics (targets, addresses, error messages) are open to anyone who \
                     reaches it; add basic_auth_users, listen on 127.0.0.1, or set status_page = \
                     \"public\" (states, uptime and latency only) or \"off\""
                )
            })
    }

    /// The subject prefix on the configured bus.
    pub fn subject_prefix(&self) -> &str {
        match &self.bus.nats {
            Some(nats) if self.bus.kind == BusKind::Nats => &nats.subject_prefix,
            _ => "bastion",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::locate::line_and_column;
    use super::*;

    /// The shared list holds one pointer per check and no spare room, and every definition
    /// is the parsed one, moved, not copied.
    #[test]
    fn a_check_list_is_exactly_sized() {
        let text: String = (0..5)
            .map(|n| format!("[[checks]]\nname = \"c{n}\"\ntype = \"tcp\"\naddress = \"127.0.0.1:1\"\ninterval = \"10s\"\n"))
            .collect();
        let config = Config::parse(&text, Format::Toml, Path::new("t.toml")).unwrap();
        let expected = config.checks.clone();
        let list = check_list(config.checks);
        assert_eq!(list.capacity(), 5);
        let names: Vec<&str> = list.iter().map(|check| check.name.as_str()).collect();
        assert_eq!(names, ["c0", "c1", "c2", "c3", "c4"]);
        assert!(list.iter().zip(&expected).all(|(a, b)| **a == *b));
    }
    use crate::checks::CheckType;
    use serde::Deserialize;
    use std::time::Duration;

    #[test]
    fn a_history_url_with_a_password_is_refused_in_either_form() {
        for url in [
            "postgres://bastion:secret@db:5432/history",
            "postgres://bastion@db:5432/history?password=secret",
        ] {
            let text = format!("[history]\nurl = \"{url}\"\n");
            let error = Config::parse(&text, Format::Toml, Path::new("c.toml"))
                .expect_err("a password in the URL is refused");
            let shown = error.to_string();
            assert!(shown.contains("history.password_file"), "{shown}");
            assert!(!shown.contains("secret"), "{shown}");
        }
        let text = "[history]\nurl = \"postgres://bastion@db:5432/history\"\n";
        assert!(Config::parse(text, Format::Toml, Path::new("c.toml")).is_ok());
    }

    #[test]
    fn a_private_status_page_without_users_on_a_reachable_listener_is_warned_of() {
        let warned = |text: &str| {
            Config::parse(text, Format::Toml, Path::new("c.toml"))
                .expect("valid")
                .open_endpoints_warning()
        };
        let users = "[agent.web.basic_auth_users]\nprom = \"$2y$10$0oOq0i5DhG8hA2lT6aZ6d.wZ8B0M8n1J3tQ3Jm5sWq3cJ7fQf3l8a\"\n";
        for (listen, extra, expected) in [
            ("0.0.0.0:9464", "", true),
            ("[::]:9464", "", true),
            ("10.1.2.3:9464", "", true),
            ("127.0.0.1:9464", "", false),
            ("127.0.0.2:9464", "", false),
            ("[::1]:9464", "", false),
            ("[::ffff:127.0.0.1]:9464", "", false),
            (
                "0.0.0.0:9464",
                "[agent.web]\nstatus_page = \"public\"\n",
                false,
            ),
            (
                "0.0.0.0:9464",
                "[agent.web]\nstatus_page = \"off\"\n",
                false,
            ),
            ("0.0.0.0:9464", users, false),
        ] {
            let text = format!("[agent]\nlisten = \"{listen}\"\n{extra}");
            let warning = warned(&text);
            assert_eq!(warning.is_some(), expected, "{listen} {extra}: {warning:?}");
            if let Some(warning) = warning {
                assert!(
                    warning.starts_with("agent.web.status_page is \"private\""),
                    "{warning}"
                );
                assert!(warning.contains(listen), "{warning}");
            }
        }
    }

    #[test]
    fn line_and_column_counts_from_one() {
        let text = "a = 1\nbb = 2\n";
        assert_eq!(line_and_column(text, 0), (1, 1));
        assert_eq!(line_and_column(text, 6), (2, 1));
        assert_eq!(line_and_column(text, 9), (2, 4));
    }

    #[test]
    fn unknown_keys_inside_a_check_point_at_the_key() {
        let cases = [
            (
                "[agent]\nid = \"a\"\n\n[[checks]]\nname = \"web\"\ntype = \"http\"\ninterval = \"5s\"\nurl = \"http://x/\"\ncolour = \"red\"\n",
                (9, 1),
                "unknown field `colour`",
            ),
            (
                "[[checks]]\nname = \"a\"\ntype = \"http\"\ninterval = \"5s\"\nurl = \"http://x/\"\n\n[[checks]]\nname = \"b\"\ntype = \"http\"\ninterval = \"5s\"\nurl = \"http://x/\"\ntls = { insecure_skip_verify = true, ca_fil = \"x\" }\n",
                (12, 38),
                "unknown field `ca_fil`",
            ),
            (
                "[[checks]]\nname = \"t\"\ntype = \"tcp\"\ninterval = \"5s\"\naddress = \"h:1\"\n[[checks.steps]]\nsend = \"x\"\n[[checks.steps]]\nexpct = \"y\"\n",
                (9, 1),
                "unknown field `expct`",
            ),
        ];
        for (text, (line, column), message) in cases {
            match Config::parse(text, Format::Toml, Path::new("c.toml")) {
                Err(ConfigError::Syntax {
                    line: l,
                    column: c,
                    message: m,
                    ..
                }) => {
                    assert_eq!((l, c), (line, column), "{m}");
                    assert!(m.starts_with(message), "{m}");
                }
                other => panic!("expected a located error, got {other:?}"),
            }
        }
    }

    #[test]
    fn every_check_type_round_trips_through_json() {
        let toml = r#"
            [[checks]]
            name = "tcp"
            type = "tcp"
            interval = "10s"
            address = "db.internal:5432"
            tls = true
            server_name = "db"
            insecure_skip_verify = true
            [[checks.steps]]
            send = "PING\r\n"
            [[checks.steps]]
            expect = "PONG"
            [[checks]]
            name = "dns"
            type = "dns"
            interval = "10s"
            query = "svc.test"
            record_type = "AAAA"
            server = "10.0.0.53:5353"
            transport = "tcp"
            recursion_desired = false
            [[checks]]
            name = "tls"
            type = "tls"
            interval = "10s"
            address = "svc.test:443"
            server_name = "svc.test"
            [[checks]]
            name = "icmp"
            type = "icmp"
            interval = "10s"
            host = "10.0.0.1"
            count = 5
            packet_interval = "250ms"
            payload_size = 100
            ip_version = 4
            [[checks]]
            name = "grpc"
            type = "grpc"
            interval = "10s"
            address = "grpc.internal:50051"
            service = "my.Service"
            [[checks.assertions]]
            key = "status"
            relationship = "equal"
            operand = "SERVING"
            [[checks]]
            name = "udp"
            type = "udp"
            interval = "10s"
            address = "10.0.0.7:5140"
            send_hex = "70 69 6e 67"
            expect = "^pong"
            [[checks]]
            name = "websocket"
            type = "websocket"
            interval = "10s"
            url = "wss://chat.internal/socket"
            send = "ping"
            expect = "^pong"
            headers = { Origin = "https://chat.internal" }
            tls = { insecure_skip_verify = true }
        "#;
        #[derive(Deserialize)]
        struct Checks {
            checks: Vec<CheckConfig>,
        }
        let checks: Checks = toml::from_str(toml).unwrap();
        let types: Vec<CheckType> = checks.checks.iter().map(CheckConfig::check_type).collect();
        assert_eq!(types, CheckType::ALL[1..]);
        for check in checks.checks {
            let json = serde_json::to_string(&check).unwrap();
            let back: CheckConfig = serde_json::from_str(&json).unwrap();
            assert_eq!(back, check, "{json}");
        }
    }

    #[test]
    fn timeout_default_stays_below_short_intervals() {
        let toml = r#"
            name = "web"
            type = "http"
            interval = "5s"
            url = "http://127.0.0.1/"
        "#;
        let check: CheckConfig = toml::from_str(toml).unwrap();
        assert_eq!(check.timeout(), Duration::from_millis(4500));
        let long = CheckConfig {
            interval: Duration::from_secs(60),
            ..check
        };
        assert_eq!(long.timeout(), Duration::from_secs(10));
    }

    #[test]
    fn check_definition_round_trips_through_json() {
        let toml = r#"
            name = "web"
            type = "http"
            interval = "10s"
            timeout = "2s"
            url = "https://svc.internal:8443/health"
            headers = { Accept = "application/json" }
            tls = { insecure_skip_verify = true }
            instances = ["127.0.0.2"]
            [[assertions]]
            key = "code"
            relationship = "equal"
            operand = "200"
        "#;
        let check: CheckConfig = toml::from_str(toml).unwrap();
        let json = serde_json::to_string(&check).unwrap();
        let back: CheckConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(back, check);
        assert!(json.contains(r#""type":"http""#), "{json}");
    }
}
