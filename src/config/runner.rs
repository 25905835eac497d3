//! `[runner]` and `[runner.workers]`: how this agent probes, from which location; defaults
//! and validation.

use super::bounds::*;
use super::{Problem, Problems};
use crate::model::CheckType;
use schemars::JsonSchema;
use serde::Deserialize;
use std::time::Duration;

/// `[runner]`
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunnerConfig {
    /// The longest a task may wait for a free worker before it is cancelled, unrun.
    #[serde(default = "default_dispatch_deadline", with = "humantime_serde")]
    #[schemars(with = "super::json_schema::Humantime")]
    pub dispatch_deadline: Duration,
    /// How many bytes of a response body a probe reads at most.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Workers per check type: how many probes of that type run at once.
    #[serde(default)]
    pub workers: WorkersConfig,
    /// DNS servers (`ip` or `ip:port`) used to resolve targets. Empty: the system resolver.
    #[serde(default)]
    pub dns_servers: Vec<String>,
    /// How long a check's series (`bastion_check_duration_seconds`) stay after its last run
    /// here, and at least three of its intervals: a runner learns check names from the bus,
    /// so it forgets those that stop arriving.
    #[serde(default = "default_forget_checks_after", with = "humantime_serde")]
    #[schemars(with = "super::json_schema::Humantime")]
    pub forget_checks_after: Duration,
    /// The most checks a runner (`--role runner`, which learns check names from the bus) keeps
    /// `bastion_check_duration_seconds` series for; a new name past it gets none (counted in
    /// `bastion_check_series_refused_total{reason="capacity"}`) until others expire. An agent
    /// that schedules (roles `all`, `checker`) keeps a series for every configured check.
    #[serde(default = "default_max_check_series")]
    pub max_check_series: usize,
    /// Where this runner probes from: it takes the runs of checks whose `locations` name it
    /// (and, as every runner does, the runs of checks without `locations`). Letters, digits,
    /// `-` and `_`.
    #[serde(default = "default_location")]
    pub location: String,
}

/// `[runner.workers]`
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkersConfig {
    /// Concurrent HTTP probes.
    #[serde(default = "default_workers")]
    pub http: usize,
    /// Concurrent TCP probes.
    #[serde(default = "default_workers")]
    pub tcp: usize,
    /// Concurrent DNS probes.
    #[serde(default = "default_workers")]
    pub dns: usize,
    /// Concurrent TLS certificate probes.
    #[serde(default = "default_workers")]
    pub tls: usize,
    /// Concurrent ICMP echo probes.
    #[serde(default = "default_workers")]
    pub icmp: usize,
    /// Concurrent gRPC health probes.
    #[serde(default = "default_workers")]
    pub grpc: usize,
    /// Concurrent UDP probes.
    #[serde(default = "default_workers")]
    pub udp: usize,
    /// Concurrent WebSocket probes.
    #[serde(default = "default_workers")]
    pub websocket: usize,
}

impl WorkersConfig {
    pub fn for_type(&self, check_type: CheckType) -> usize {
        match check_type {
            CheckType::Http => self.http,
            CheckType::Tcp => self.tcp,
            CheckType::Dns => self.dns,
            CheckType::Tls => self.tls,
            CheckType::Icmp => self.icmp,
            CheckType::Grpc => self.grpc,
            CheckType::Udp => self.udp,
            CheckType::Websocket => self.websocket,
        }
    }
}

/// `runner.forget_checks_after` unless configured.
pub const DEFAULT_FORGET_CHECKS_AFTER: Duration = Duration::from_secs(600);
/// `runner.max_check_series` unless configured.
pub const DEFAULT_MAX_CHECK_SERIES: usize = 10_000;

pub(super) fn default_dispatch_deadline() -> Duration {
    Duration::from_secs(30)
}
pub(super) fn default_forget_checks_after() -> Duration {
    DEFAULT_FORGET_CHECKS_AFTER
}
pub(super) fn default_location() -> String {
    "default".to_string()
}
pub(super) fn default_max_check_series() -> usize {
    DEFAULT_MAX_CHECK_SERIES
}
pub(super) fn default_max_body_bytes() -> usize {
    128 * 1024
}
pub(super) fn default_workers() -> usize {
    10
}

impl Default for RunnerConfig {
    fn default() -> Self {
        RunnerConfig {
            dispatch_deadline: default_dispatch_deadline(),
            max_body_bytes: default_max_body_bytes(),
            workers: WorkersConfig::default(),
            dns_servers: Vec::new(),
            forget_checks_after: default_forget_checks_after(),
            max_check_series: default_max_check_series(),
            location: default_location(),
        }
    }
}

impl Default for WorkersConfig {
    fn default() -> Self {
        WorkersConfig {
            http: default_workers(),
            tcp: default_workers(),
            dns: default_workers(),
            tls: default_workers(),
            icmp: default_workers(),
            grpc: default_workers(),
            udp: default_workers(),
            websocket: default_workers(),
        }
    }
}

impl RunnerConfig {
    /// Its numbers and durations against their ranges (`bounds.rs`), and its location's name.
    pub(super) fn validate(&self) -> Problems {
        let mut problems = Problems::default();
        problems.check(DISPATCH_DEADLINE.check_duration(None, self.dispatch_deadline));
        problems.check(FORGET_CHECKS_AFTER.check_duration(None, self.forget_checks_after));
        problems.check(MAX_BODY_BYTES.check_count(None, self.max_body_bytes as u64));
        problems.check(MAX_CHECK_SERIES.check_count(None, self.max_check_series as u64));
        for check_type in CheckType::ALL {
            if let Some(bound) = bound(&format!("runner.workers.{check_type}")) {
                problems.check(bound.check_count(None, self.workers.for_type(check_type) as u64));
            }
        }
        if let Err(message) = location_name(&self.location) {
            problems.push(Problem::key(
                "runner.location",
                format!("runner.location {message}"),
            ));
        }
        problems
    }
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
