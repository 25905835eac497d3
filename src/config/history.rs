//! `[history]`: where runs, rollups, state changes and incidents are kept, and for how long;
//! defaults and validation.

use super::bounds::*;
use super::{default_true, Problem, Problems};
use schemars::JsonSchema;
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

/// `[history]`: every run's outcome for a recent window, rollups beyond it, state changes and
/// incidents; in SQLite (`path`) unless `url` names a PostgreSQL database.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HistoryConfig {
    /// Keep history. Only agents that record results keep it (roles `all` and `checker`).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// The SQLite database file. Default: `history.db` in `$STATE_DIRECTORY` (systemd's
    /// `StateDirectory=`), else in `/var/lib/bastion`. Its directory must exist and be
    /// writable when a scheduling agent starts, or it refuses to (`validate::history`).
    #[serde(default = "default_history_path")]
    #[schemars(transform = super::json_schema::machine_dependent)]
    pub path: PathBuf,
    /// A PostgreSQL URL (`postgres://user@host:5432/db`) to keep history there instead, shared
    /// by HA checkers. Put no password in it: use `password_file`.
    #[serde(default)]
    pub url: Option<String>,
    /// File holding the PostgreSQL password.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// How often buffered results are written, in one transaction: a crash loses at most
    /// this much history (plus what waits while the database cannot be written).
    #[serde(default = "default_history_flush_interval", with = "humantime_serde")]
    #[schemars(with = "super::json_schema::Humantime")]
    pub flush_interval: Duration,
    /// Records (runs and state changes) waiting to be written at most; beyond it new ones
    /// are dropped and counted in `bastion_history_dropped_total`.
    #[serde(default = "default_history_buffer")]
    pub buffer: usize,
    /// How long every run's outcome and phase latencies are kept.
    #[serde(default = "default_history_raw_retention", with = "humantime_serde")]
    #[schemars(with = "super::json_schema::Humantime")]
    pub raw_retention: Duration,
    /// How long the hourly rollups (runs, failures, latency buckets per phase) are kept.
    #[serde(default = "default_history_hourly_retention", with = "humantime_serde")]
    #[schemars(with = "super::json_schema::Humantime")]
    pub hourly_retention: Duration,
    /// How long the daily rollups are kept.
    #[serde(default = "default_history_daily_retention", with = "humantime_serde")]
    #[schemars(with = "super::json_schema::Humantime")]
    pub daily_retention: Duration,
    /// How long state changes and incidents are kept.
    #[serde(default = "default_history_event_retention", with = "humantime_serde")]
    #[schemars(with = "super::json_schema::Humantime")]
    pub event_retention: Duration,
}

/// `history.path` unless configured: `history.db` in systemd's `StateDirectory=` (an absolute
/// `$STATE_DIRECTORY`), else in `/var/lib/bastion`.
pub fn default_history_path() -> PathBuf {
    let directory = std::env::var_os("STATE_DIRECTORY")
        .map(PathBuf::from)
        .filter(|dir| dir.is_absolute())
        .unwrap_or_else(|| PathBuf::from("/var/lib/bastion"));
    directory.join("history.db")
}
pub(super) fn default_history_flush_interval() -> Duration {
    Duration::from_secs(1)
}
pub(super) fn default_history_buffer() -> usize {
    65_536
}
pub(super) fn default_history_raw_retention() -> Duration {
    Duration::from_secs(24 * 3600)
}
pub(super) fn default_history_hourly_retention() -> Duration {
    Duration::from_secs(8 * 24 * 3600)
}
pub(super) fn default_history_daily_retention() -> Duration {
    Duration::from_secs(400 * 24 * 3600)
}
pub(super) fn default_history_event_retention() -> Duration {
    Duration::from_secs(400 * 24 * 3600)
}

impl Default for HistoryConfig {
    fn default() -> Self {
        HistoryConfig {
            enabled: true,
            path: default_history_path(),
            url: None,
            password_file: None,
            flush_interval: default_history_flush_interval(),
            buffer: default_history_buffer(),
            raw_retention: default_history_raw_retention(),
            hourly_retention: default_history_hourly_retention(),
            daily_retention: default_history_daily_retention(),
            event_retention: default_history_event_retention(),
        }
    }
}

impl HistoryConfig {
    pub(super) fn validate(&self) -> Result<(), Problem> {
        let history = self;
        if let Some(url) = &history.url {
            if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                return Err(Problem::key(
                    "history.url",
                    "history.url must be a PostgreSQL URL (postgres://user@host:5432/db); leave it out to keep history in SQLite at history.path",
                ));
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
                return Err(Problem::key(
                    "history.url",
                    "history.url holds a password; put it in a file named by history.password_file",
                ));
            }
        }
        Ok(())
    }

    /// Its numbers and durations against their ranges (`bounds.rs`).
    pub(super) fn validate_ranges(&self) -> Problems {
        let mut problems = Problems::default();
        problems.check(FLUSH_INTERVAL.check_duration(None, self.flush_interval));
        problems.check(RAW_RETENTION.check_duration(None, self.raw_retention));
        problems.check(HOURLY_RETENTION.check_duration(None, self.hourly_retention));
        problems.check(DAILY_RETENTION.check_duration(None, self.daily_retention));
        problems.check(EVENT_RETENTION.check_duration(None, self.event_retention));
        problems.check(HISTORY_BUFFER.check_count(None, self.buffer as u64));
        problems
    }
}
