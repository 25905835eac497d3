//! The one rule for how long a scheduled run may be in flight, used by both ends: the checker,
//! to know when a run's result can no longer come (and the check may fire again), and the
//! runner, to know until when it may still start a probe of that run. Both derive their window
//! from the same numbers here, so a run the runner may still execute is never declared lost
//! and two runs of one check are never in flight at once.
//!
//! The rule: a run scheduled at `S` with dispatch deadline `D` and timeout `T` starts no probe
//! after `S + D` (one absolute deadline per run, not per task or per receipt), and no probe
//! runs longer than `T` (the resolve included), so its last response is in by `S + D + T`.
//! The checker declares it lost only after `S + D + T + RESULT_GRACE`.
//!
//! `S` is the checker's wall clock, and the runner reads its own to see how much of `D` is
//! left. The request carries `D`, so both use the checker's number. A runner never allows
//! itself more than `D` from receipt, so a runner clock running behind cannot stretch the
//! window by more than the request's time on the bus; one running ahead only refuses requests
//! early (counted in `bastion_requests_expired_total`, and lost at the checker). Clocks synced
//! to well within `RESULT_GRACE` (NTP) keep the rule exact. This module never reads a clock
//! itself: callers pass the times in, so it is the same pure function on both sides.

use std::time::{Duration, SystemTime};
use tokio::time::Instant;

/// Beyond the dispatch deadline and the timeout, how long a run's result may take to reach
/// the checker (encoding, the bus, clock differences between hosts).
pub const RESULT_GRACE: Duration = Duration::from_secs(5);

/// Checker side: how long after a run was due its result can still arrive. Past this, the run
/// is counted lost and the check may fire again.
pub fn lost_after(dispatch_deadline: Duration, timeout: Duration) -> Duration {
    dispatch_deadline
        .saturating_add(timeout)
        .saturating_add(RESULT_GRACE)
}

/// Runner side: the instant (on the runner's monotonic clock) after which no probe of a run
/// scheduled at `scheduled_at` may start, or None when it has passed and the run must not
/// start at all. `dispatch_deadline` is the request's (the checker's), capped by the runner's
/// own; `wall_now` and `now` are the runner's clocks read together at receipt.
pub fn start_probes_by(
    scheduled_at: SystemTime,
    dispatch_deadline: Duration,
    wall_now: SystemTime,
    now: Instant,
) -> Option<Instant> {
    let deadline = scheduled_at.checked_add(dispatch_deadline)?;
    let left = deadline.duration_since(wall_now).ok()?;
    if left.is_zero() {
        return None;
    }
    // A deadline past what the clock holds (never from a validated config) waits 30 years.
    let wait = left.min(dispatch_deadline);
    Some(
        now.checked_add(wait)
            .unwrap_or_else(|| now + Duration::from_secs(30 * 365 * 86_400)),
    )
}

/// Runner side: until when a result of a run whose probes had to start by `start_probes_by`
/// may be published. Later, the checker has counted the run lost (the runner was held up:
/// stopped, swapped out), so the result is dropped and counted instead: the checker and the
/// sink then agree that the run did not end.
pub fn publish_by(start_probes_by: Instant, timeout: Duration) -> Instant {
    start_probes_by + timeout + RESULT_GRACE
}

/// The dispatch deadline a runner applies to a request: the checker's when the request
/// carries one (requests from older checkers do not), never more than the runner's own.
pub fn effective_deadline(requested: Option<Duration>, own: Duration) -> Duration {
    requested.map_or(own, |requested| requested.min(own))
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: Duration = Duration::from_secs(8);
    const T: Duration = Duration::from_secs(2);

    #[tokio::test(start_paused = true)]
    async fn probes_start_by_the_run_deadline_whenever_the_request_arrives() {
        let scheduled = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let now = Instant::now();
        for age in [0u64, 1, 5, 7] {
            let wall = scheduled + Duration::from_secs(age);
            let by = start_probes_by(scheduled, D, wall, now).unwrap();
            assert_eq!(by - now, D - Duration::from_secs(age), "age {age}s");
        }
        assert_eq!(start_probes_by(scheduled, D, scheduled + D, now), None);
        assert_eq!(
            start_probes_by(scheduled, D, scheduled + D + Duration::from_secs(1), now),
            None
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_runner_clock_behind_never_gets_more_than_the_deadline() {
        let scheduled = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let now = Instant::now();
        // The runner's clock reads 30 s before the checker's.
        let wall = scheduled - Duration::from_secs(30);
        assert_eq!(start_probes_by(scheduled, D, wall, now), Some(now + D));
    }

    #[test]
    fn the_lost_window_covers_every_probe_the_runner_may_run() {
        // The last probe starts at the deadline at the latest and runs for the timeout.
        let latest_end = D + T;
        assert!(lost_after(D, T) > latest_end);
        assert_eq!(lost_after(D, T) - latest_end, RESULT_GRACE);
        assert_eq!(effective_deadline(Some(D), Duration::from_secs(30)), D);
        assert_eq!(
            effective_deadline(Some(D), Duration::from_secs(3)),
            Duration::from_secs(3)
        );
        assert_eq!(effective_deadline(None, D), D);
        let start = Instant::now();
        assert_eq!(publish_by(start + D, T), start + lost_after(D, T));
    }
}
