//! Whole-config validation: what the schema alone cannot check. A config is accepted only if
//! every check compiles, every ICMP check can open a socket, every NATS URL, subject prefix and
//! bucket name is one the bus accepts, every DNS server is an address and every maintenance
//! window compiles; `notifiers`, apart because runners need no secret files, builds every
//! notifier. It sits above the probe engine and the bus so that `config` needs neither; it
//! never starts anything and never keeps what it built.

use crate::checks::CheckType;
use crate::compiled::{CheckDefinitionError, CompiledCheck};
use crate::config::{BusKind, Config, ConfigError, Entry, Format, KeyPath, Problem, Problems};
use std::path::Path;

/// Reads, parses and validates the file at `path`: what a daemon, a reload or `bastion
/// validate` accepts. Every mistake found is reported, not only the first.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text, Format::for_path(path), path)
}

/// Parses and validates `text`; `path` only names the source in errors. The schema's own
/// checks and the ones below run together, so one run lists every problem.
pub fn parse(text: &str, format: Format, path: &Path) -> Result<Config, ConfigError> {
    Config::parse_with(text, format, path, validate)
}

/// Checks what needs the probe engine, the bus and the endpoints, and reports all that fail.
/// The schema-level checks (`Config::validate`) are separate.
pub fn validate(config: &Config) -> Result<(), Problems> {
    let mut problems = Problems::default();
    for (index, server) in config.runner.dns_servers.iter().enumerate() {
        problems.check_at(
            KeyPath::dotted("runner.dns_servers").index(index),
            crate::resolve::parse_dns_server(server)
                .map(|_| ())
                .map_err(|error| format!("runner.dns_servers: {error}")),
        );
    }
    problems.check(validate_bus(config));
    for (index, check) in config.checks.iter().enumerate() {
        problems.check(CompiledCheck::compile(check).map(|_| ()).map_err(|error| {
            let entry = match error {
                // A name it cannot show is counted instead.
                CheckDefinitionError::Name(_) => Entry {
                    subject: format!("check #{}", index + 1),
                    path: KeyPath::check(index),
                },
                _ => Entry::check(index, &check.name),
            };
            Problem::at(
                entry.path.join(error.key()),
                format!("{}: {error}", entry.subject),
            )
        }));
    }
    if let Some(blackbox) = &config.blackbox {
        for (name, module) in &blackbox.modules {
            problems.check_at(
                KeyPath::dotted("agent.blackbox_modules"),
                CompiledCheck::compile(module.template())
                    .map(|_| ())
                    .map_err(|error| {
                        format!(
                            "agent.blackbox_modules: {}: module `{name}`: {error}",
                            blackbox.path.display()
                        )
                    }),
            );
        }
    }
    for (index, window) in config.maintenance.iter().enumerate() {
        problems.check_at(
            KeyPath::dotted("maintenance").index(index),
            crate::notify::Maintenance::compile(std::slice::from_ref(window)).map(|_| ()),
        );
    }
    // ICMP needs a socket this process may open; find out now, not at the first probe.
    if let Some((index, check)) = config
        .checks
        .iter()
        .enumerate()
        .find(|(_, check)| check.check_type() == CheckType::Icmp)
    {
        problems.check_at(
            KeyPath::check(index),
            crate::checks::icmp::ensure_sockets()
                .map(|_| ())
                .map_err(|error| format!("check `{}`: {error}", check.name)),
        );
    }
    problems.into_result()
}

/// Builds every notifier, reading its secret files: what `bastion validate` and a scheduling
/// agent's start-up check, so a missing file is found before the first outage. Runners never
/// notify and need none of these files.
pub fn notifiers(path: &Path, config: &Config) -> Result<(), ConfigError> {
    crate::notify::build_all(config)
        .map(|_| ())
        .map_err(|error| ConfigError::Invalid {
            path: path.to_path_buf(),
            message: error.to_string(),
        })
}

/// The SQLite file a scheduling agent keeps history in can be opened: its directory exists
/// and it (or, for a new file, its directory) can be written. What a scheduling agent's
/// start checks, so a history that could never be written is a config error (exit 2)
/// rather than records piling up in memory until the buffer drops them. Not checked with
/// `history.enabled = false`, with PostgreSQL (a server down at start is retried), by
/// `bastion validate` (the default file depends on the service's `$STATE_DIRECTORY`, which
/// an operator's shell does not have) or by runners (which keep no history). A database
/// that fails later, a full disk say, is the writer's to retry and count.
pub fn history(path: &Path, config: &Config) -> Result<(), ConfigError> {
    let history = &config.history;
    if !history.enabled || history.url.is_some() {
        return Ok(());
    }
    match sqlite_file_problem(&history.path) {
        None => Ok(()),
        Some(problem) => {
            let default = if history.path == crate::config::default_history_path() {
                " (the default: history.db in $STATE_DIRECTORY, else in /var/lib/bastion)"
            } else {
                ""
            };
            Err(ConfigError::about_key(
                path,
                Problem::key(
                    "history.path",
                    format!(
                        "history.path {}{default}: {problem}; point history.path at a file in \
                     a directory bastion can write (create it first), or set \
                     history.enabled = false",
                        history.path.display()
                    ),
                ),
            ))
        }
    }
}

/// Why SQLite could not keep a database at `file`, or None when it can: the directory
/// must exist and take new files (the database, its -wal and -shm files), and an existing
/// file must be a file this process can write.
fn sqlite_file_problem(file: &Path) -> Option<String> {
    let directory = match file.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    match std::fs::metadata(directory) {
        Err(error) => {
            return Some(format!(
                "its directory {} cannot be used: {error}",
                directory.display()
            ))
        }
        Ok(metadata) if !metadata.is_dir() => {
            return Some(format!("{} is not a directory", directory.display()))
        }
        Ok(_) => {}
    }
    match std::fs::metadata(file) {
        Ok(metadata) if metadata.is_dir() => return Some("is a directory, not a file".to_string()),
        Ok(_) => {
            if let Err(error) = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(file)
            {
                return Some(format!("cannot be opened for writing: {error}"));
            }
        }
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
            return Some(format!("cannot be read: {error}"));
        }
        Err(_) => {}
    }
    // Whether new files can be made there: one, removed at once.
    let name = file
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    let probe = directory.join(format!(".{name}.bastion-{}", std::process::id()));
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
    {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            None
        }
        Err(error) => Some(format!(
            "no file can be created in {}: {error}",
            directory.display()
        )),
    }
}

fn validate_bus(config: &Config) -> Result<(), Problem> {
    let Some(nats) = config
        .bus
        .nats
        .as_ref()
        .filter(|_| config.bus.kind == BusKind::Nats)
    else {
        return Ok(());
    };
    for url in &nats.url.to_vec() {
        crate::bus::nats::check_url(url)
            .map_err(|error| Problem::key("bus.nats.url", format!("bus.nats.url: {error}")))?;
    }
    if !crate::subjects::valid_subject(&nats.subject_prefix, false) {
        return Err(Problem::key(
            "bus.nats.subject_prefix",
            format!(
                "bus.nats.subject_prefix `{}` is not a valid subject: use dot-separated tokens without spaces or wildcards",
                nats.subject_prefix
            ),
        ));
    }
    if !crate::bus::nats::valid_bucket_name(&config.checker.lease_bucket) {
        return Err(Problem::key(
            "checker.lease_bucket",
            format!(
                "checker.lease_bucket `{}` is not a valid bucket name: use letters, digits, `-` and `_`",
                config.checker.lease_bucket
            ),
        ));
    }
    Ok(())
}
