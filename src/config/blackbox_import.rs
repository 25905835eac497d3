//! `bastion import-blackbox`: blackbox_exporter's modules applied to the targets Prometheus
//! scrapes through `/probe` (from a scrape config's static targets, or a file_sd targets file),
//! made into bastion `[[checks]]`, so probing can move from Prometheus' schedule to bastion's.
//! It reads files and writes text; it never compiles a check (the caller validates the output).

use super::blackbox::{BlackboxError, BlackboxModules};
use super::check::CheckConfig;
use serde_json::Value;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Why an import cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error(transparent)]
    Modules(#[from] BlackboxError),
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Targets { path: PathBuf, reason: String },
    #[error(
        "target `{target}`: module `{module}` is not in the module file; its modules are {known}"
    )]
    UnknownModule {
        module: String,
        target: String,
        known: String,
    },
    #[error("target `{target}` with module `{module}`: {reason}")]
    Target {
        module: String,
        target: String,
        reason: String,
    },
    #[error(
        "{0} names no target to import: give a scrape config with a /probe job, or a targets file"
    )]
    NoTargets(PathBuf),
}

/// One target Prometheus probes through `/probe`, with its module and scrape interval.
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeTarget {
    pub module: String,
    pub target: String,
    /// The job's (or the global) scrape interval, when the file says.
    pub interval: Option<Duration>,
}

fn read(path: &Path) -> Result<Value, ImportError> {
    let text = std::fs::read_to_string(path).map_err(|source| ImportError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    serde_saphyr::from_str(&text).map_err(|error| ImportError::Targets {
        path: path.to_path_buf(),
        reason: format!("not YAML: {error}"),
    })
}

fn duration(value: &Value) -> Option<Duration> {
    value
        .as_str()
        .and_then(|text| humantime::parse_duration(text).ok())
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|item| item.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The targets of every job of a Prometheus config whose `metrics_path` is `/probe`.
pub fn targets_from_prometheus(path: &Path) -> Result<Vec<ProbeTarget>, ImportError> {
    let config = read(path)?;
    let global = duration(&config["global"]["scrape_interval"]);
    let mut targets = Vec::new();
    for job in config["scrape_configs"].as_array().into_iter().flatten() {
        if job["metrics_path"].as_str() != Some("/probe") {
            continue;
        }
        let name = job["job_name"].as_str().unwrap_or("?");
        if !job["file_sd_configs"].is_null() {
            return Err(ImportError::Targets {
                path: path.to_path_buf(),
                reason: format!(
                    "job `{name}` takes targets from file_sd_configs: import each file with --targets FILE --module NAME"
                ),
            });
        }
        let module = strings(&job["params"]["module"])
            .into_iter()
            .next()
            .unwrap_or_else(|| "http_2xx".to_string());
        let interval = duration(&job["scrape_interval"]).or(global);
        for group in job["static_configs"].as_array().into_iter().flatten() {
            for target in strings(&group["targets"]) {
                targets.push(ProbeTarget {
                    module: module.clone(),
                    target,
                    interval,
                });
            }
        }
    }
    Ok(targets)
}

/// The targets of a file_sd file (`- targets: [...]`, `labels: {module: ...}` optional), each
/// with `module` unless its group's `module` label says otherwise.
pub fn targets_from_file(path: &Path, module: &str) -> Result<Vec<ProbeTarget>, ImportError> {
    let groups = read(path)?;
    let Some(groups) = groups.as_array() else {
        return Err(ImportError::Targets {
            path: path.to_path_buf(),
            reason: "a targets file is a list of groups: `- targets: [host:port, ...]`".to_string(),
        });
    };
    let mut targets = Vec::new();
    for group in groups {
        let module = group["labels"]["module"]
            .as_str()
            .or_else(|| group["labels"]["__param_module"].as_str())
            .unwrap_or(module);
        for target in strings(&group["targets"]) {
            targets.push(ProbeTarget {
                module: module.to_string(),
                target,
                interval: None,
            });
        }
    }
    Ok(targets)
}

/// `module` and `target` as a check name: `[a-z0-9_-]`, unique among `taken`.
fn check_name(module: &str, target: &str, taken: &mut HashSet<String>) -> String {
    let bare = target
        .split_once("://")
        .map_or(target, |(_, rest)| rest)
        .trim_end_matches('/');
    let mut name = String::new();
    for c in format!("{module}-{bare}").chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' {
            name.push(c);
        } else if !name.ends_with('-') {
            name.push('-');
        }
    }
    let name = name.trim_matches('-').chars().take(80).collect::<String>();
    let mut unique = name.clone();
    let mut n = 2;
    while !taken.insert(unique.clone()) {
        unique = format!("{name}-{n}");
        n += 1;
    }
    unique
}

/// The checks that probe `targets` with `modules`, each every `interval` (the target's own
/// scrape interval when known).
pub fn checks(
    modules: &BlackboxModules,
    targets: &[ProbeTarget],
    interval: Duration,
) -> Result<Vec<CheckConfig>, ImportError> {
    let mut taken = HashSet::new();
    let mut out = Vec::with_capacity(targets.len());
    for target in targets {
        let Some(module) = modules.modules.get(&target.module) else {
            return Err(ImportError::UnknownModule {
                module: target.module.clone(),
                target: target.target.clone(),
                known: modules
                    .modules
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        };
        let interval = target.interval.unwrap_or(interval);
        let mut check = module
            .check_for(&target.target, Duration::from_secs(1))
            .map_err(|reason| ImportError::Target {
                module: target.module.clone(),
                target: target.target.clone(),
                reason,
            })?;
        check.name = check_name(&target.module, &target.target, &mut taken);
        check.interval = interval;
        // The module's timeout when it fits the interval; else bastion's default.
        check.timeout = module.timeout.filter(|timeout| *timeout < interval);
        if !module.explicit_ip_protocol {
            // blackbox_exporter's default (one IPv6 address) gives way to bastion's: every
            // address behind the name.
            check.ip_protocol = None;
            check.ip_protocol_fallback = None;
        }
        out.push(check);
    }
    Ok(out)
}

/// The checks as `[[checks]]` TOML, under a comment saying where they came from.
pub fn to_toml(checks: &[CheckConfig], source: &str) -> String {
    #[derive(serde::Serialize)]
    struct File<'a> {
        checks: &'a [CheckConfig],
    }
    let body = toml::to_string(&File { checks }).unwrap_or_default();
    format!(
        "# {} check(s) imported by `bastion import-blackbox` from {source}.\n\
         # Paste them into bastion's config, then remove the targets from the Prometheus job.\n\n{body}",
        checks.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, text: &str) -> PathBuf {
        let path =
            std::env::temp_dir().join(format!("bastion-import-{}-{name}", std::process::id()));
        std::fs::write(&path, text).unwrap_or_else(|error| panic!("{error}"));
        path
    }

    #[test]
    fn targets_come_from_probe_jobs_and_file_sd_groups() {
        let prometheus = file(
            "prometheus.yml",
            "global:\n  scrape_interval: 20s\nscrape_configs:\n\
             - job_name: self\n  static_configs: [{targets: [a:1]}]\n\
             - job_name: web\n  metrics_path: /probe\n  static_configs: [{targets: [https://x.example]}]\n\
             - job_name: db\n  metrics_path: /probe\n  scrape_interval: 5s\n  params: {module: [tcp_connect]}\n  static_configs: [{targets: ['db:5432', 'db2:5432']}]\n",
        );
        let found = targets_from_prometheus(&prometheus).unwrap_or_else(|e| panic!("{e}"));
        let listed: Vec<(&str, &str, Option<u64>)> = found
            .iter()
            .map(|t| {
                (
                    t.module.as_str(),
                    t.target.as_str(),
                    t.interval.map(|i| i.as_secs()),
                )
            })
            .collect();
        assert_eq!(
            listed,
            [
                ("http_2xx", "https://x.example", Some(20)),
                ("tcp_connect", "db:5432", Some(5)),
                ("tcp_connect", "db2:5432", Some(5)),
            ]
        );
        let sd = file(
            "targets.yml",
            "- targets: [a.example, b.example]\n- targets: ['c:22']\n  labels: {module: ssh_banner}\n",
        );
        let found = targets_from_file(&sd, "http_2xx").unwrap_or_else(|e| panic!("{e}"));
        let modules: Vec<&str> = found.iter().map(|t| t.module.as_str()).collect();
        assert_eq!(modules, ["http_2xx", "http_2xx", "ssh_banner"]);
        let with_sd = file(
            "sd.yml",
            "scrape_configs:\n- job_name: x\n  metrics_path: /probe\n  file_sd_configs: [{files: [t.yml]}]\n",
        );
        let refused = targets_from_prometheus(&with_sd)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(refused.contains("--targets FILE"), "{refused}");
        for path in [prometheus, sd, with_sd] {
            let _ = std::fs::remove_file(path);
        }
    }

    #[test]
    fn names_are_check_names_and_unique() {
        let mut taken = HashSet::new();
        assert_eq!(
            check_name("http_2xx", "https://Example.com/health?x=1", &mut taken),
            "http_2xx-example-com-health-x-1"
        );
        assert_eq!(check_name("tcp", "db:5432", &mut taken), "tcp-db-5432");
        assert_eq!(check_name("tcp", "db:5432", &mut taken), "tcp-db-5432-2");
    }
}
