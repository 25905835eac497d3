//! The configuration file: its shape (`schema.rs`), its defaults (`defaults.rs`, all of them,
//! in one place), loading, and the checks the schema alone can make. Loading never panics: every
//! problem becomes a `ConfigError` that names the file, and the line and column where the
//! parser knows them (`locate.rs`). What needs the probe engine or the bus is checked a layer
//! up, by `validate`.

pub mod blackbox;
pub mod blackbox_import;
pub mod bounds;
mod defaults;
pub mod json_schema;
mod locate;
mod notify;
mod probe;
mod schema;

pub use defaults::{
    default_history_path, ALERTMANAGER_RESEND, DEFAULT_FORGET_CHECKS_AFTER,
    DEFAULT_MAX_CHECK_SERIES, MAX_BODY_BYTES_LIMIT, MIN_INTERVAL,
};
pub use notify::*;
pub use probe::*;
pub use schema::*;

use crate::model::CheckType;
use locate::{parse_toml_all, yaml_error};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

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

    /// `message` (which names its key first, as validation messages do) about the config
    /// file at `path`, placed at that key's line and column when the file writes it: for the
    /// checks that need more than the text, such as files the running agent must open.
    pub fn about_key(path: &Path, message: String) -> ConfigError {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let place = match Format::for_path(path) {
            Format::Toml => toml::de::DeTable::parse(&text).ok().and_then(|document| {
                locate::problem_offset(document.get_ref(), &message)
                    .map(|offset| locate::line_and_column(&text, offset))
            }),
            Format::Yaml => locate::yaml_problem_place(&text, &message),
        };
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

/// Every validation message found, each naming its subject first (a dotted key such as
/// `agent.id`, or ``check `name`:``), which is how `from_problems` finds its line. A function
/// returning `Result<(), String>` adds its message with `?` (that stops at it) or, better,
/// with [`Problems::check`] (which goes on to the next).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Problems(pub Vec<String>);

impl From<String> for Problems {
    fn from(message: String) -> Problems {
        Problems(vec![message])
    }
}

impl Problems {
    /// Keeps the message of a failed check and goes on.
    pub fn check(&mut self, outcome: Result<(), String>) {
        if let Err(message) = outcome {
            self.0.push(message);
        }
    }

    pub fn push(&mut self, message: String) {
        self.0.push(message);
    }

    pub fn extend(&mut self, other: Problems) {
        self.0.extend(other.0);
    }

    pub fn into_result(self) -> Result<(), Problems> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(self)
        }
    }
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
        let mut problems = Problems(config.read_secret_files());
        problems.check(blackbox::read_into(&mut config, path));
        problems.extend(config.validate().err().unwrap_or_default());
        problems.extend(more(&config).err().unwrap_or_default());
        for message in problems.0 {
            let place = match format {
                Format::Toml => document
                    .as_ref()
                    .and_then(|document| locate::problem_offset(document.get_ref(), &message))
                    .map(|offset| locate::line_and_column(text, offset)),
                Format::Yaml => locate::yaml_problem_place(text, &message),
            };
            let message = locate::renumber_checks(&message, &positions);
            errors.push(match place {
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
            });
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
            problems.push("agent.id must not be empty".to_string());
        }
        problems.extend(self.validate_ranges());
        problems.check(self.validate_bus());
        problems.check(self.validate_web());
        problems.check(notify::validate(self));
        problems.check(self.validate_history());
        if let Err(message) = location_name(&self.runner.location) {
            problems.push(format!("runner.location {message}"));
        }
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for (index, check) in self.checks.iter().enumerate() {
            if let Some(first) = seen.insert(check.name.as_str(), index) {
                problems.push(format!(
                    "check name `{}` is used twice (checks #{} and #{}); names must be unique",
                    check.name,
                    first + 1,
                    index + 1
                ));
            }
            problems.extend(check_ranges(check));
            problems.extend(self.check_locations(check));
            let check_type = check.check_type();
            if self.runner.workers.for_type(check_type) == 0 {
                problems.push(format!(
                    "check `{}` is of type {check_type}, but runner.workers.{check_type} is 0; \
                     give that type at least one worker",
                    check.name
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

    /// Every numeric and duration key of the sections against its range (`bounds.rs`); the
    /// keys of checks, notifiers and windows are checked with them.
    fn validate_ranges(&self) -> Problems {
        use bounds::*;
        let mut problems = Problems::default();
        let mut duration = |bound: &Bound, value: Duration| {
            problems.check(bound.check_duration(None, value));
        };
        duration(&SHUTDOWN_GRACE, self.agent.shutdown_grace);
        duration(&LEASE_TTL, self.checker.lease_ttl);
        duration(&FLUSH_INTERVAL, self.history.flush_interval);
        duration(&RAW_RETENTION, self.history.raw_retention);
        duration(&HOURLY_RETENTION, self.history.hourly_retention);
        duration(&DAILY_RETENTION, self.history.daily_retention);
        duration(&EVENT_RETENTION, self.history.event_retention);
        duration(&DISPATCH_DEADLINE, self.runner.dispatch_deadline);
        duration(&HEARTBEAT_INTERVAL, self.agent.heartbeat_interval);
        duration(&FORGET_CHECKS_AFTER, self.runner.forget_checks_after);
        if let Some(nats) = &self.bus.nats {
            duration(&RESULTS_MAX_AGE, nats.results_max_age);
            if let Some(timeout) = nats.connect_timeout {
                duration(&CONNECT_TIMEOUT, timeout);
            }
        }
        let mut count = |bound: &Bound, value: usize| {
            problems.check(bound.check_count(None, value as u64));
        };
        count(&HISTORY_BUFFER, self.history.buffer);
        count(&MAX_BODY_BYTES, self.runner.max_body_bytes);
        count(&MAX_CHECK_SERIES, self.runner.max_check_series);
        if let Some(nats) = &self.bus.nats {
            count(&RESULTS_BUFFER, nats.results_buffer);
            count(&REPLICAS, nats.replicas);
        }
        for check_type in CheckType::ALL {
            if let Some(bound) = bound(&format!("runner.workers.{check_type}")) {
                count(bound, self.runner.workers.for_type(check_type));
            }
        }
        problems
    }

    /// A check's `locations` and `min_failing_locations`: names a runner can have, each once,
    /// `*` alone, and a threshold the named locations can reach. On the embedded bus the one
    /// location is this agent's own runner's.
    fn check_locations(&self, check: &CheckConfig) -> Problems {
        let mut problems = Problems::default();
        let name = &check.name;
        let Some(locations) = &check.locations else {
            if check.min_failing_locations.is_some() {
                problems.push(format!(
                    "check `{name}`: min_failing_locations needs locations; name the locations \
                     the check runs from (locations = [\"eu-west\", \"us-east\"])"
                ));
            }
            return problems;
        };
        if check.labels.contains_key(crate::model::LOCATION_LABEL) {
            problems.push(format!(
                "check `{name}`: label name `location` is one bastion sets itself on a check \
                 with locations (the location each series was seen from); rename the label"
            ));
        }
        if locations.is_empty() {
            problems.push(format!(
                "check `{name}`: locations is empty; name at least one (a runner.location), \
                 [\"*\"] for every live location, or leave the key out"
            ));
        }
        if locations.len() > bounds::MAX_LOCATIONS {
            problems.push(format!(
                "check `{name}`: locations names {} locations; at most {} are allowed",
                locations.len(),
                bounds::MAX_LOCATIONS
            ));
        }
        let every = check.every_location();
        if every && locations.len() > 1 {
            problems.push(format!(
                "check `{name}`: locations = [\"*\"] already means every live location; \
                 give \"*\" alone or only names"
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for location in locations
            .iter()
            .filter(|location| *location != EVERY_LOCATION)
        {
            if let Err(message) = location_name(location) {
                problems.push(format!("check `{name}`: locations: {message}"));
            } else if !seen.insert(location.as_str()) {
                problems.push(format!(
                    "check `{name}`: locations names `{location}` twice"
                ));
            }
        }
        if let Some(min) = check.min_failing_locations {
            problems.check(
                bounds::MIN_FAILING_LOCATIONS
                    .check_count(Some(&format!("check `{name}`")), min as u64),
            );
            if !every && min > locations.len() && !locations.is_empty() {
                problems.push(format!(
                    "check `{name}`: min_failing_locations is {min} but the check runs from {} \
                     location(s), so it could never fail; lower it or add locations",
                    locations.len()
                ));
            }
        }
        if self.bus.kind == BusKind::Embedded {
            let own = &self.runner.location;
            if let Some(other) = locations
                .iter()
                .find(|location| *location != EVERY_LOCATION && *location != own)
            {
                problems.push(format!(
                    "check `{name}`: locations names `{other}`, but on the embedded bus the only \
                     location is this agent's runner.location `{own}`; run the check from \
                     several locations over NATS (docs/distributed.md#locations), or name `{own}`"
                ));
            }
        }
        problems
    }

    fn validate_web(&self) -> Result<(), String> {
        let web = &self.agent.web;
        match (&web.tls_cert_file, &web.tls_key_file) {
            (Some(cert), Some(key)) => {
                for (what, path) in [("tls_cert_file", cert), ("tls_key_file", key)] {
                    if let Err(error) = std::fs::metadata(path) {
                        return Err(format!("agent.web.{what} {}: {error}", path.display()));
                    }
                }
            }
            (None, None) => {}
            _ => {
                return Err(
                    "agent.web.tls_cert_file and tls_key_file go together; set both or neither"
                        .to_string(),
                )
            }
        }
        for (user, hash) in &web.basic_auth_users {
            if user.is_empty() || user.contains(':') {
                return Err(format!(
                    "agent.web.basic_auth_users: user name `{user}` must be non-empty and without `:`"
                ));
            }
            check_hash(hash)
                .map_err(|error| format!("agent.web.basic_auth_users.{user}: {error}"))?;
        }
        Ok(())
    }

    fn validate_history(&self) -> Result<(), String> {
        let history = &self.history;
        if let Some(url) = &history.url {
            if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                return Err(
                    "history.url must be a PostgreSQL URL (postgres://user@host:5432/db); leave it out to keep history in SQLite at history.path"
                        .to_string(),
                );
            }
            if url.split_once("://").is_some_and(|(_, rest)| {
                rest.split('/').next().is_some_and(|authority| {
                    authority.contains('@')
                        && authority
                            .split('@')
                            .next()
                            .is_some_and(|user| user.contains(':'))
                })
            }) || url.to_ascii_lowercase().contains("password=")
            {
                return Err(
                    "history.url holds a password; put it in a file named by history.password_file"
                        .to_string(),
                );
            }
        }
        Ok(())
    }

    fn validate_bus(&self) -> Result<(), String> {
        let nats = match (self.bus.kind, &self.bus.nats) {
            (BusKind::Embedded, None) => {
                if self.checker.ha {
                    return Err("checker.ha needs a shared bus: set [bus] kind = \"nats\" and [bus.nats] url".to_string());
                }
                return Ok(());
            }
            (BusKind::Embedded, Some(_)) => {
                return Err("[bus.nats] is set but bus.kind is \"embedded\"; set kind = \"nats\" to use it, or remove [bus.nats]".to_string());
            }
            (BusKind::Nats, None) => {
                return Err(
                    "bus.kind is \"nats\" but [bus.nats] is missing; give at least its url"
                        .to_string(),
                );
            }
            (BusKind::Nats, Some(nats)) => nats,
        };
        let urls = nats.url.to_vec();
        if urls.is_empty() {
            return Err("bus.nats.url is an empty list; give at least one server".to_string());
        }
        let methods = [
            nats.token_file.is_some(),
            nats.user.is_some() || nats.password_file.is_some(),
            nats.creds_file.is_some(),
            nats.nkey_seed_file.is_some(),
        ];
        if methods.iter().filter(|set| **set).count() > 1 {
            return Err("bus.nats sets more than one way to authenticate; use at most one of token_file, user + password_file, creds_file and nkey_seed_file".to_string());
        }
        if nats.user.is_some() != nats.password_file.is_some() {
            return Err(
                "bus.nats.user and bus.nats.password_file go together; set both or neither"
                    .to_string(),
            );
        }
        if let Some(tls) = &nats.tls {
            if tls.cert_file.is_some() != tls.key_file.is_some() {
                return Err(
                    "bus.nats.tls.cert_file and key_file go together; set both or neither"
                        .to_string(),
                );
            }
        }
        Ok(())
    }
}

/// A check's numeric and duration keys against their ranges (`bounds.rs`). The least
/// interval, timeout and the ICMP keys' lower ends are the check compiler's to refuse (it
/// also refuses definitions from the bus), so only the side it leaves is checked here.
fn check_ranges(check: &CheckConfig) -> Problems {
    use bounds::*;
    let owner = format!("check `{}`", check.name);
    let owner = Some(owner.as_str());
    let mut problems = Problems::default();
    if check.interval >= MIN_INTERVAL {
        problems.check(CHECK_INTERVAL.check_duration(owner, check.interval));
    }
    if let Some(timeout) = check
        .timeout
        .filter(|t| !t.is_zero() && *t < check.interval)
    {
        problems.check(CHECK_TIMEOUT.check_duration(owner, timeout));
    }
    if let Some(count) = check.min_failing_count {
        problems.check(MIN_FAILING_COUNT.check_count(owner, count as u64));
    }
    if let Some(time) = check.min_failing_time {
        problems.check(MIN_FAILING_TIME.check_duration(owner, time));
    }
    if let CheckSpec::Icmp(icmp) = &check.spec {
        if icmp.packet_interval > PACKET_INTERVAL.cap_duration(icmp.packet_interval) {
            problems.check(PACKET_INTERVAL.check_duration(owner, icmp.packet_interval));
        }
    }
    problems
}

/// Whether `name` can be a location: one NATS subject token of letters, digits, `-` and `_`,
/// at most 64 bytes. The error says why not, starting after the key.
pub fn location_name(name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_');
    if valid {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is not a location name; use 1 to 64 letters, digits, `-` and `_` (it is \
             part of NATS subjects)"
        ))
    }
}

/// Whether `hash` is a bcrypt hash bastion can verify against.
pub fn check_hash(hash: &str) -> Result<(), String> {
    hash.parse::<bcrypt::HashParts>().map(|_| ()).map_err(|_| {
        "is not a bcrypt hash; make one with `htpasswd -nBC 10 USER` and keep the part after the colon"
            .to_string()
    })
}

#[cfg(test)]
mod tests {
    use super::locate::line_and_column;
    use super::*;
    use crate::model::CheckType;
    use serde::Deserialize;

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
