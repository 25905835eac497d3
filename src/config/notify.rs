//! The notification sections of the configuration file: `[[notifiers]]` (who is told, over
//! which receiver's API), `[[maintenance]]` (when nobody is told), and what a check adds
//! (`notify`, `notify_on`). Shapes and the checks the schema alone can make; each receiver
//! type's own settings, and their checks, are its file's in `receivers/`, which also reads
//! their secret files. This file never reads a secret.

use super::bounds::*;
use super::{default_true, Entry, KeyPath, Problem};
use crate::problem::Range;
use crate::receivers::NotifierSpec;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

/// One `[[notifiers]]` entry: a receiver and how deliveries to it are retried.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
pub struct NotifierConfig {
    /// Unique name, used in a check's `notify` list, in logs and as the `notifier` label.
    pub name: String,
    /// Checks without a `notify` list notify every notifier with `default = true`.
    #[serde(default)]
    pub default: bool,
    /// Send the firing notification again this often while the check stays failing (a
    /// reminder). Default: never, except `alertmanager`, which is re-sent every 1m as
    /// Alertmanager expects of its clients.
    #[serde(default, with = "humantime_serde")]
    #[schemars(with = "Option<super::json_schema::Humantime>")]
    pub repeat_interval: Option<Duration>,
    /// Also send a notification when the check recovers. Default: true.
    #[serde(default = "default_true")]
    pub send_resolved: bool,
    /// How long one request to the receiver may take. Default: 10s.
    #[serde(default = "default_notify_timeout", with = "humantime_serde")]
    #[schemars(with = "super::json_schema::Humantime")]
    pub timeout: Duration,
    /// Notifications waiting for this receiver; when full, the oldest is dropped and counted.
    /// Default: 256.
    #[serde(default = "default_notify_queue_size")]
    pub queue_size: usize,
    /// Attempts per notification (network errors, timeouts, 429 and 5xx are retried; other
    /// answers are not). Default: 12.
    #[serde(default = "default_notify_max_attempts")]
    pub max_attempts: u32,
    /// Wait before the first retry; it doubles at each retry, with jitter. Default: 1s.
    #[serde(default = "default_notify_retry_backoff", with = "humantime_serde")]
    #[schemars(with = "super::json_schema::Humantime")]
    pub retry_backoff: Duration,
    /// The longest wait between two attempts, a receiver's `Retry-After` included. Default: 5m.
    #[serde(default = "default_notify_retry_backoff_max", with = "humantime_serde")]
    #[schemars(with = "super::json_schema::Humantime")]
    pub retry_backoff_max: Duration,
    /// PEM file of CA certificates to trust for the receiver instead of the system's.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// The receiver's type and its own settings.
    #[serde(flatten)]
    pub spec: NotifierSpec,
}

/// Which states of a check notify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum NotifyOn {
    /// The check is `FAIL` (after `min_failing_time`).
    Fail,
    /// Some instances fail, fewer than `min_failing_count`.
    Warn,
}

/// One `[[maintenance]]` entry: a window during which the matching checks notify nobody.
/// Either a one-off window (`start` and `end`) or a recurring one (`at` and `duration`, on
/// `days`, in `time_zone`).
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MaintenanceConfig {
    /// A name for logs.
    pub name: String,
    /// Check names or globs (`*` any run of characters, `?` one) the window covers.
    pub checks: Vec<String>,
    /// Start of a one-off window, RFC 3339 with an offset (`2026-12-24T22:00:00+01:00`).
    #[serde(default)]
    pub start: Option<String>,
    /// End of a one-off window, RFC 3339 with an offset.
    #[serde(default)]
    pub end: Option<String>,
    /// Local start time of a recurring window, `HH:MM`.
    #[serde(default)]
    pub at: Option<String>,
    /// Length of a recurring window (at most 7 days).
    #[serde(default, with = "humantime_serde")]
    #[schemars(with = "Option<super::json_schema::Humantime>")]
    pub duration: Option<Duration>,
    /// Days a recurring window starts on (`mon` ... `sun`). Default: every day.
    #[serde(default)]
    pub days: Vec<String>,
    /// IANA time zone of `at` and `days`, such as `Europe/Berlin`. Default: `UTC`.
    #[serde(default = "default_time_zone")]
    pub time_zone: String,
}

/// The names `days` accepts, Monday first.
pub const WEEKDAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// Checks the notification sections against themselves and the checks; stops at the first
/// problem.
pub(super) fn validate(config: &super::Config) -> Result<(), Problem> {
    let mut names = HashSet::new();
    for (index, notifier) in config.notifiers.iter().enumerate() {
        let name = &notifier.name;
        let entry = Entry {
            subject: format!("notifier `{name}`"),
            path: KeyPath::dotted("notifiers").index(index),
        };
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-".contains(c))
        {
            return Err(Problem::at(
                entry.path.key("name"),
                format!(
                    "notifier name `{name}` must be non-empty and made of letters, digits, `_` and `-`"
                ),
            ));
        }
        if !names.insert(name.as_str()) {
            return Err(Problem::at(
                entry.path.key("name"),
                format!("notifier name `{name}` is used twice; names must be unique"),
            ));
        }
        let owner = Some(&entry);
        QUEUE_SIZE.check_count(owner, notifier.queue_size as u64)?;
        MAX_ATTEMPTS.check_count(owner, u64::from(notifier.max_attempts))?;
        NOTIFY_TIMEOUT.check_duration(owner, notifier.timeout)?;
        RETRY_BACKOFF.check_duration(owner, notifier.retry_backoff)?;
        RETRY_BACKOFF_MAX.check_duration(owner, notifier.retry_backoff_max)?;
        if let (Some(every), Range::Duration { min, max }) =
            (notifier.repeat_interval, REPEAT_INTERVAL.range)
        {
            if every < min || every > max {
                return Err(entry.problem(
                    "repeat_interval",
                    format!(
                        "repeat_interval must be between {} and {}; leave it out to send no reminders",
                        humantime::format_duration(min),
                        humantime::format_duration(max),
                    ),
                ));
            }
        }
        notifier.spec.validate(&entry)?;
    }
    for (index, check) in config.checks.iter().enumerate() {
        let entry = Entry::check(index, &check.name);
        if let Some(states) = &check.notify_on {
            if !states.contains(&NotifyOn::Fail) {
                return Err(entry.problem(
                    "notify_on",
                    "notify_on must include \"fail\" (\"warn\" adds warnings to it)",
                ));
            }
        }
        for wanted in check.notify.iter().flatten() {
            if !names.contains(wanted.as_str()) {
                return Err(Problem::at(
                    entry.path.key("notify"),
                    format!(
                        "check `{}` notifies `{wanted}`, but no [[notifiers]] entry has that name",
                        check.name
                    ),
                ));
            }
        }
    }
    for (index, window) in config.maintenance.iter().enumerate() {
        let entry = Entry {
            subject: format!("maintenance `{}`", window.name),
            path: KeyPath::dotted("maintenance").index(index),
        };
        validate_window(&entry, window)?;
    }
    Ok(())
}

fn validate_window(entry: &Entry, window: &MaintenanceConfig) -> Result<(), Problem> {
    let name = &window.name;
    if window.checks.is_empty() {
        return Err(entry.problem(
            "checks",
            "checks is empty; list check names or globs (\"*\" for all)",
        ));
    }
    let one_off = window.start.is_some() || window.end.is_some();
    let recurring = window.at.is_some() || window.duration.is_some() || !window.days.is_empty();
    match (one_off, recurring) {
        (true, true) => Err(entry.problem(
            "",
            "give start and end (one-off) or at and duration (recurring), not both",
        )),
        (false, false) => Err(entry.problem(
            "",
            "give start and end (one-off) or at and duration (recurring)",
        )),
        (true, false) => {
            let (Some(start), Some(end)) = (&window.start, &window.end) else {
                return Err(entry.problem(
                    if window.start.is_some() {
                        "start"
                    } else {
                        "end"
                    },
                    "start and end go together",
                ));
            };
            let start = parse_timestamp(name, "start", start)
                .map_err(|message| Problem::at(entry.path.clone().key("start"), message))?;
            let end = parse_timestamp(name, "end", end)
                .map_err(|message| Problem::at(entry.path.clone().key("end"), message))?;
            if end <= start {
                return Err(entry.problem("end", "end must be after start"));
            }
            Ok(())
        }
        (false, true) => {
            let (Some(at), Some(duration)) = (&window.at, window.duration) else {
                return Err(entry.problem(
                    if window.at.is_some() {
                        "at"
                    } else {
                        "duration"
                    },
                    "at and duration go together",
                ));
            };
            parse_time_of_day(at)
                .ok_or_else(|| entry.problem("at", format!("at `{at}` is not a time HH:MM")))?;
            if WINDOW_DURATION.check_duration(None, duration).is_err() {
                return Err(
                    entry.problem("duration", "duration must be longer than 0s and at most 7d")
                );
            }
            for day in &window.days {
                if !WEEKDAYS.contains(&day.as_str()) {
                    return Err(entry.problem(
                        "days",
                        format!("day `{day}` is not one of mon, tue, wed, thu, fri, sat, sun"),
                    ));
                }
            }
            jiff::tz::TimeZone::get(&window.time_zone).map_err(|_| {
                entry.problem(
                    "time_zone",
                    format!(
                        "time_zone `{}` is not a known IANA time zone (such as Europe/Berlin or UTC)",
                        window.time_zone
                    ),
                )
            })?;
            Ok(())
        }
    }
}

/// An RFC 3339 timestamp with an offset.
pub fn parse_timestamp(name: &str, key: &str, text: &str) -> Result<jiff::Timestamp, String> {
    text.parse::<jiff::Timestamp>().map_err(|_| {
        format!("maintenance `{name}`: {key} `{text}` is not an RFC 3339 time with an offset, such as 2026-12-24T22:00:00+01:00")
    })
}

/// `HH:MM` as (hour, minute).
pub fn parse_time_of_day(text: &str) -> Option<(i8, i8)> {
    let (hour, minute) = text.split_once(':')?;
    if hour.len() != 2 || minute.len() != 2 {
        return None;
    }
    let hour: i8 = hour.parse().ok()?;
    let minute: i8 = minute.parse().ok()?;
    ((0..24).contains(&hour) && (0..60).contains(&minute)).then_some((hour, minute))
}

pub(super) fn default_notify_timeout() -> Duration {
    Duration::from_secs(10)
}
pub(super) fn default_notify_queue_size() -> usize {
    256
}
pub(super) fn default_notify_max_attempts() -> u32 {
    12
}
pub(super) fn default_notify_retry_backoff() -> Duration {
    Duration::from_secs(1)
}
pub(super) fn default_notify_retry_backoff_max() -> Duration {
    Duration::from_secs(300)
}
pub(super) fn default_time_zone() -> String {
    "UTC".to_string()
}
