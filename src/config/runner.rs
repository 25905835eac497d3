//! `[runner]` and `[runner.workers]`: how this agent probes, from which location; defaults
//! and validation.

use super::bounds::*;
use super::{Problem, Problems};
use crate::checks::{CheckType, KINDS, TYPE_COUNT, TYPE_NAMES};
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
    /// The most a phase that ends on an answer may end before the read that saw it: the
    /// kernel's receive stamp takes a busy worker's lateness out of the phase up to this much.
    /// It is also the most such a phase can be short by when a segment of the answer was lost
    /// and a later one arrived first (the kernel then stamps the later one). `0s`: no stamps,
    /// every phase ends when the probe read its answer.
    #[serde(default = "default_max_arrival_correction", with = "humantime_serde")]
    #[schemars(with = "super::json_schema::Humantime")]
    pub max_arrival_correction: Duration,
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

/// `[runner.workers]`: how many probes of each check type run at once, one key per type
/// (`http = 64`), each 10 unless set. Its keys are the check types `checks` declares, so a new
/// type has its key here without a line of its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkersConfig {
    /// Indexed by `CheckType::index`.
    counts: [usize; TYPE_COUNT],
}

impl WorkersConfig {
    pub fn for_type(&self, check_type: CheckType) -> usize {
        self.counts[check_type.index()]
    }

    /// Sets the count of one type (as `[runner.workers]` would).
    pub fn set(&mut self, check_type: CheckType, count: usize) {
        self.counts[check_type.index()] = count;
    }
}

impl Default for WorkersConfig {
    fn default() -> Self {
        WorkersConfig {
            counts: [default_workers(); TYPE_COUNT],
        }
    }
}

impl<'de> Deserialize<'de> for WorkersConfig {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Counts;
        impl<'de> serde::de::Visitor<'de> for Counts {
            type Value = WorkersConfig;
            fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
                formatter.write_str("a table of worker counts by check type")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<WorkersConfig, A::Error> {
                let mut workers = WorkersConfig::default();
                let mut seen = [false; TYPE_COUNT];
                while let Some(TypeKey(index)) = map.next_key()? {
                    if std::mem::replace(&mut seen[index], true) {
                        return Err(serde::de::Error::duplicate_field(TYPE_NAMES[index]));
                    }
                    workers.counts[index] = map.next_value()?;
                }
                Ok(workers)
            }
        }
        deserializer.deserialize_map(Counts)
    }
}

/// A `[runner.workers]` key: the place of its type in `TYPE_NAMES`. Refused as the key is
/// read, so the parser's error points at the key itself.
struct TypeKey(usize);

impl<'de> Deserialize<'de> for TypeKey {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Name;
        impl serde::de::Visitor<'_> for Name {
            type Value = TypeKey;
            fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
                formatter.write_str("a check type")
            }
            fn visit_str<E: serde::de::Error>(self, key: &str) -> Result<TypeKey, E> {
                match TYPE_NAMES.iter().position(|name| *name == key) {
                    Some(index) => Ok(TypeKey(index)),
                    None => Err(E::unknown_field(key, &TYPE_NAMES)),
                }
            }
        }
        deserializer.deserialize_identifier(Name)
    }
}

impl JsonSchema for WorkersConfig {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "WorkersConfig".into()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let count = generator.subschema_for::<usize>();
        let properties: serde_json::Map<String, serde_json::Value> = KINDS
            .iter()
            .map(|kind| {
                let mut property = count.clone();
                property.insert("default".into(), default_workers().into());
                property.insert("description".into(), kind.workers_help.into());
                (kind.check_type.as_str().to_string(), property.to_value())
            })
            .collect();
        // Written here, not derived: the keys are the check types, which no struct lists.
        schemars::json_schema!({
            "description": "`[runner.workers]`",
            "type": "object",
            "properties": properties,
            "additionalProperties": false,
        })
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
pub(super) fn default_max_arrival_correction() -> Duration {
    Duration::from_millis(50)
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
            max_arrival_correction: default_max_arrival_correction(),
            workers: WorkersConfig::default(),
            dns_servers: Vec::new(),
            forget_checks_after: default_forget_checks_after(),
            max_check_series: default_max_check_series(),
            location: default_location(),
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
        problems.check(MAX_ARRIVAL_CORRECTION.check_duration(None, self.max_arrival_correction));
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
