//! The range of every numeric and duration key of the configuration file, named by the key's
//! path in `config/reference.toml`: one table (`BOUNDS`), the ranges receiver types declare
//! for their own keys (`receivers::BOUNDS`), and one range per check type's worker count
//! (`WORKERS`, from the check types' list), all reached through `all_bounds()` and
//! `bound()`; a range is a `problem::Bound`. Validation refuses a value
//! outside its range with a message that names the key; the code that uses a value caps it
//! to the same range (`cap_duration`, `clamp_count`) where arithmetic on it could overflow,
//! so a value that slipped past validation (a library caller, a definition from the bus)
//! never panics. The ranges are far beyond what an operator needs and far below what
//! overflows anything: no duration past ten years, no queue past a million entries.
//! `tests/it/fuzz.rs` reads every range and the reference, and fails on a numeric key without
//! a range.

use crate::checks::{TYPE_COUNT, WORKER_KEYS};
use crate::problem::{Bound, POSITIVE};
use std::time::Duration;

pub const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// The most `runner.max_check_series` may be: each series is about 17 lines of `/metrics`.
pub const MAX_CHECK_SERIES_LIMIT: usize = 1_000_000;
/// Larger bodies would let one check hold this much memory per worker.
pub const MAX_BODY_BYTES_LIMIT: usize = 64 * 1024 * 1024;

const MS: Duration = Duration::from_millis(1);
const SECOND: Duration = Duration::from_secs(1);
const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86_400);
/// humantime's year (365.25 days), so that the bound prints as `10years`.
const YEAR: Duration = Duration::from_secs(31_557_600);

pub const SHUTDOWN_GRACE: Bound = Bound::duration(
    "agent.shutdown_grace",
    Duration::ZERO,
    MINUTE.saturating_mul(10),
);
pub const CONNECT_TIMEOUT: Bound = Bound::duration("bus.nats.connect_timeout", SECOND, DAY);
pub const RESULTS_MAX_AGE: Bound =
    Bound::duration("bus.nats.results_max_age", SECOND, DAY.saturating_mul(30));
pub const RESULTS_BUFFER: Bound = Bound::count("bus.nats.results_buffer", 1, 1 << 20);
/// JetStream allows 1 to 5 replicas of a stream.
pub const REPLICAS: Bound = Bound::count("bus.nats.replicas", 1, 5);
pub const LEASE_TTL: Bound = Bound::duration(
    "checker.lease_ttl",
    Duration::from_secs(3),
    MINUTE.saturating_mul(10),
);
pub const FLUSH_INTERVAL: Bound = Bound::duration(
    "history.flush_interval",
    MS.saturating_mul(10),
    MINUTE.saturating_mul(10),
);
pub const HISTORY_BUFFER: Bound = Bound::count("history.buffer", 1, 1 << 20);
pub const RAW_RETENTION: Bound =
    Bound::duration("history.raw_retention", HOUR, YEAR.saturating_mul(10));
pub const HOURLY_RETENTION: Bound = Bound::duration(
    "history.hourly_retention",
    HOUR.saturating_mul(2),
    YEAR.saturating_mul(10),
);
pub const DAILY_RETENTION: Bound = Bound::duration(
    "history.daily_retention",
    DAY.saturating_mul(2),
    YEAR.saturating_mul(10),
);
pub const EVENT_RETENTION: Bound =
    Bound::duration("history.event_retention", HOUR, YEAR.saturating_mul(10));
pub const DISPATCH_DEADLINE: Bound = Bound::duration("runner.dispatch_deadline", POSITIVE, HOUR);
pub const HEARTBEAT_INTERVAL: Bound =
    Bound::duration("agent.heartbeat_interval", SECOND, MINUTE.saturating_mul(5));
pub const MAX_BODY_BYTES: Bound =
    Bound::count("runner.max_body_bytes", 0, MAX_BODY_BYTES_LIMIT as u64);
pub const MAX_ARRIVAL_CORRECTION: Bound = Bound::duration(
    "runner.max_arrival_correction",
    Duration::ZERO,
    SECOND.saturating_mul(10),
);
pub const FORGET_CHECKS_AFTER: Bound = Bound::duration(
    "runner.forget_checks_after",
    POSITIVE,
    DAY.saturating_mul(30),
);
pub const MAX_CHECK_SERIES: Bound =
    Bound::count("runner.max_check_series", 0, MAX_CHECK_SERIES_LIMIT as u64);
/// Every `runner.workers.<type>` key has this range; 0 is refused only for a type with checks.
pub const WORKERS: [Bound; TYPE_COUNT] = {
    let mut workers = [Bound::count("", 0, MAX_WORKERS); TYPE_COUNT];
    let mut index = 0;
    while index < TYPE_COUNT {
        workers[index] = Bound::count(WORKER_KEYS[index], 0, MAX_WORKERS);
        index += 1;
    }
    workers
};
const MAX_WORKERS: u64 = 100_000;
pub const CHECK_INTERVAL: Bound =
    Bound::duration("checks[].interval", MIN_INTERVAL, DAY.saturating_mul(30));
/// Also shorter than the check's interval.
pub const CHECK_TIMEOUT: Bound =
    Bound::duration("checks[].timeout", POSITIVE, MINUTE.saturating_mul(10));
pub const MIN_FAILING_COUNT: Bound = Bound::count("checks[].min_failing_count", 1, 100_000);
/// Also at most the number of locations the check names.
pub const MIN_FAILING_LOCATIONS: Bound =
    Bound::count("checks[].min_failing_locations", 1, MAX_LOCATIONS as u64);
/// Locations one check may name.
pub const MAX_LOCATIONS: usize = 100;
pub const MIN_FAILING_TIME: Bound = Bound::duration(
    "checks[].min_failing_time",
    Duration::ZERO,
    DAY.saturating_mul(7),
);
pub const ICMP_COUNT: Bound = Bound::count("checks[].count", 1, 100);
/// Also `(count - 1) × packet_interval` shorter than the timeout.
pub const PACKET_INTERVAL: Bound = Bound::duration("checks[].packet_interval", MS, MINUTE);
pub const PAYLOAD_SIZE: Bound = Bound::count("checks[].payload_size", 0, 65_000);
/// 4 or 6: 5 is refused too.
pub const IP_VERSION: Bound = Bound::count("checks[].ip_version", 4, 6);
pub const REPEAT_INTERVAL: Bound = Bound::duration(
    "notifiers[].repeat_interval",
    SECOND,
    DAY.saturating_mul(30),
);
pub const NOTIFY_TIMEOUT: Bound =
    Bound::duration("notifiers[].timeout", POSITIVE, MINUTE.saturating_mul(10));
pub const QUEUE_SIZE: Bound = Bound::count("notifiers[].queue_size", 1, 65_536);
pub const MAX_ATTEMPTS: Bound = Bound::count("notifiers[].max_attempts", 1, 1_000);
pub const RETRY_BACKOFF: Bound = Bound::duration("notifiers[].retry_backoff", Duration::ZERO, HOUR);
pub const RETRY_BACKOFF_MAX: Bound =
    Bound::duration("notifiers[].retry_backoff_max", Duration::ZERO, DAY);
pub const WINDOW_DURATION: Bound =
    Bound::duration("maintenance[].duration", POSITIVE, DAY.saturating_mul(7));

/// Every numeric and duration key of the configuration file but the worker counts; read it
/// through `all_bounds()`.
const BOUNDS: &[Bound] = &[
    SHUTDOWN_GRACE,
    CONNECT_TIMEOUT,
    RESULTS_MAX_AGE,
    RESULTS_BUFFER,
    REPLICAS,
    LEASE_TTL,
    FLUSH_INTERVAL,
    HISTORY_BUFFER,
    RAW_RETENTION,
    HOURLY_RETENTION,
    DAILY_RETENTION,
    EVENT_RETENTION,
    DISPATCH_DEADLINE,
    HEARTBEAT_INTERVAL,
    MAX_BODY_BYTES,
    MAX_ARRIVAL_CORRECTION,
    FORGET_CHECKS_AFTER,
    MAX_CHECK_SERIES,
    CHECK_INTERVAL,
    CHECK_TIMEOUT,
    MIN_FAILING_COUNT,
    MIN_FAILING_LOCATIONS,
    MIN_FAILING_TIME,
    ICMP_COUNT,
    PACKET_INTERVAL,
    PAYLOAD_SIZE,
    IP_VERSION,
    REPEAT_INTERVAL,
    NOTIFY_TIMEOUT,
    QUEUE_SIZE,
    MAX_ATTEMPTS,
    RETRY_BACKOFF,
    RETRY_BACKOFF_MAX,
    WINDOW_DURATION,
];

/// Every range: those listed in `BOUNDS`, those of receiver types' own keys (each declared in
/// its type's file), then one per check type's worker count.
pub fn all_bounds() -> impl Iterator<Item = &'static Bound> {
    BOUNDS
        .iter()
        .chain(
            crate::receivers::BOUNDS
                .iter()
                .flat_map(|bounds| bounds.iter()),
        )
        .chain(WORKERS.iter())
}

/// The range of `key` (a path as in [`Bound::key`]).
pub fn bound(key: &str) -> Option<&'static Bound> {
    all_bounds().find(|bound| bound.key == key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::problem::{Entry, KeyPath, Problem, Range};

    #[test]
    fn every_key_once_and_every_range_ordered() {
        let mut keys: Vec<&str> = all_bounds().map(|bound| bound.key).collect();
        keys.sort_unstable();
        keys.dedup();
        assert_eq!(keys.len(), all_bounds().count(), "a key is listed twice");
        for bound in all_bounds() {
            match bound.range {
                Range::Count { min, max } => assert!(min <= max, "{}", bound.key),
                Range::Duration { min, max } => {
                    assert!(min <= max, "{}", bound.key);
                    // Far below what any Instant or SystemTime addition overflows.
                    assert!(max <= YEAR.saturating_mul(10), "{}", bound.key);
                }
            }
        }
    }

    #[test]
    fn both_sides_of_a_bound() {
        let message = |outcome: Result<(), Problem>| outcome.map_err(|problem| problem.message);
        let web = Entry::check(2, "web");
        assert_eq!(message(HISTORY_BUFFER.check_count(None, 1 << 20)), Ok(()));
        assert_eq!(
            message(HISTORY_BUFFER.check_count(None, (1 << 20) + 1)),
            Err("history.buffer is 1048577; the most allowed is 1048576".to_string())
        );
        assert_eq!(
            message(HISTORY_BUFFER.check_count(None, 0)),
            Err("history.buffer must be at least 1".to_string())
        );
        assert_eq!(
            message(CHECK_TIMEOUT.check_duration(Some(&web), MINUTE * 10)),
            Ok(())
        );
        assert_eq!(
            message(CHECK_TIMEOUT.check_duration(Some(&web), MINUTE * 10 + POSITIVE)),
            Err("check `web`: timeout is 10m 1ns; the most allowed is 10m".to_string())
        );
        assert_eq!(
            message(CHECK_TIMEOUT.check_duration(Some(&web), Duration::ZERO)),
            Err("check `web`: timeout must be longer than 0s".to_string())
        );
        assert_eq!(
            message(LEASE_TTL.check_duration(None, SECOND)),
            Err("checker.lease_ttl is 1s; the least allowed is 3s".to_string())
        );
        assert_eq!(
            message(RAW_RETENTION.check_duration(None, Duration::MAX)),
            Err(format!(
                "history.raw_retention is {}; the most allowed is 10years",
                humantime::format_duration(Duration::MAX)
            ))
        );
    }

    /// A problem stands at its key: the dotted key of a section's, the entry's own key else.
    #[test]
    fn a_range_problem_names_its_key_path() {
        let path = |outcome: Result<(), Problem>| outcome.err().map(|problem| problem.path);
        assert_eq!(
            path(HISTORY_BUFFER.check_count(None, 0)),
            Some(KeyPath::dotted("history.buffer"))
        );
        assert_eq!(
            path(CHECK_TIMEOUT.check_duration(Some(&Entry::check(2, "web")), Duration::ZERO)),
            Some(KeyPath::check(2).key("timeout"))
        );
    }

    #[test]
    fn clamping_keeps_a_value_in_its_range() {
        assert_eq!(SHUTDOWN_GRACE.cap_duration(Duration::MAX), MINUTE * 10);
        assert_eq!(SHUTDOWN_GRACE.cap_duration(SECOND), SECOND);
        assert_eq!(
            DISPATCH_DEADLINE.cap_duration(Duration::ZERO),
            Duration::ZERO
        );
        assert_eq!(HISTORY_BUFFER.clamp_count(0), 1);
        assert_eq!(HISTORY_BUFFER.clamp_count(usize::MAX), 1 << 20);
    }
}
