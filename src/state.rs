//! Check state: the ancestor system's state machine, so that one failed probe does not page
//! anyone. Each check is in one of `OK`, `WARN`, `FAIL_WAIT`, `FAIL` and `PASS_WAIT`; each new
//! result moves it according to how many of its instances failed (`failing`), the check's
//! `min_failing_count`, and how long it has been in the waiting states (`min_failing_time`).
//! This module is pure: it decides transitions and never publishes or records anything.

use crate::config::CheckConfig;
use crate::model::CheckState;
use std::time::{Duration, SystemTime};
use tokio::time::Instant;

/// A check's thresholds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatePolicy {
    /// Failing instances that make the check fail; fewer (but some) is a warning.
    pub min_failing_count: usize,
    /// How long it must keep failing before `FAIL`, and keep passing before it is `OK` again.
    pub min_failing_time: Duration,
}

impl StatePolicy {
    /// The thresholds a check's configuration sets, defaults applied.
    pub fn for_check(check: &CheckConfig) -> StatePolicy {
        StatePolicy {
            min_failing_count: check.min_failing_count(),
            min_failing_time: check.min_failing_time(),
        }
    }
}

/// One change of state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    pub from: CheckState,
    pub to: CheckState,
}

/// Where one check is, and since when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateTracker {
    state: CheckState,
    entered: Instant,
    since: SystemTime,
}

impl StateTracker {
    /// A check starts `OK`.
    pub fn new(now: Instant, wall: SystemTime) -> StateTracker {
        StateTracker {
            state: CheckState::Ok,
            entered: now,
            since: wall,
        }
    }

    /// A check resumed in `state`, entered at `wall` by the wall clock as a previous run of
    /// the agent saved it; its time in state counts from `now` (the monotonic clock of the
    /// last run is gone), so a waiting state waits its full time again.
    pub fn resume(state: CheckState, now: Instant, wall: SystemTime) -> StateTracker {
        StateTracker {
            state,
            entered: now,
            since: wall,
        }
    }

    pub fn state(&self) -> CheckState {
        self.state
    }

    /// When the current state was entered (wall clock).
    pub fn since(&self) -> SystemTime {
        self.since
    }

    /// Takes one result with `failing` failing instances, observed at `now`; returns the
    /// transition it caused, if any.
    pub fn observe(
        &mut self,
        failing: usize,
        policy: StatePolicy,
        now: Instant,
        wall: SystemTime,
    ) -> Option<Transition> {
        let fails = failing >= policy.min_failing_count.max(1);
        // Below the threshold: a warning when anything failed, else fine.
        let calm = if failing > 0 && !fails {
            CheckState::Warn
        } else {
            CheckState::Ok
        };
        let waited = now.saturating_duration_since(self.entered) >= policy.min_failing_time;
        let next = match self.state {
            CheckState::Ok | CheckState::Warn if fails => {
                // With no time to wait, failing is failed.
                if policy.min_failing_time.is_zero() {
                    CheckState::Fail
                } else {
                    CheckState::FailWait
                }
            }
            CheckState::Ok | CheckState::Warn => calm,
            CheckState::FailWait if fails && waited => CheckState::Fail,
            CheckState::FailWait if fails => CheckState::FailWait,
            CheckState::FailWait => calm,
            CheckState::Fail if fails => CheckState::Fail,
            CheckState::Fail if policy.min_failing_time.is_zero() => calm,
            CheckState::Fail => CheckState::PassWait,
            CheckState::PassWait if fails => CheckState::Fail,
            CheckState::PassWait if waited => calm,
            CheckState::PassWait => CheckState::PassWait,
        };
        self.set(next, now, wall)
    }

    /// Moves to `next`, a state decided elsewhere (a check judged across its locations,
    /// `locations.rs`); returns the transition, if it is one.
    pub fn set(&mut self, next: CheckState, now: Instant, wall: SystemTime) -> Option<Transition> {
        if next == self.state {
            return None;
        }
        let transition = Transition {
            from: self.state,
            to: next,
        };
        self.state = next;
        self.entered = now;
        self.since = wall;
        Some(transition)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use CheckState::*;

    const POLICY: StatePolicy = StatePolicy {
        min_failing_count: 2,
        min_failing_time: Duration::from_secs(90),
    };

    /// Feeds `steps` of (seconds to advance first, failing instances), under paused time, and
    /// returns the state after each.
    async fn walk(policy: StatePolicy, steps: &[(u64, usize)]) -> Vec<CheckState> {
        let mut tracker = StateTracker::new(Instant::now(), SystemTime::now());
        let mut states = Vec::new();
        for &(advance, failing) in steps {
            tokio::time::advance(Duration::from_secs(advance)).await;
            let before = tracker.state();
            let transition = tracker.observe(failing, policy, Instant::now(), SystemTime::now());
            match transition {
                Some(t) => {
                    assert_eq!(t.from, before);
                    assert_eq!(t.to, tracker.state());
                    assert_ne!(t.from, t.to);
                }
                None => assert_eq!(tracker.state(), before),
            }
            states.push(tracker.state());
        }
        states
    }

    #[tokio::test(start_paused = true)]
    async fn ok_goes_to_warn_below_the_count_and_to_fail_wait_at_it() {
        assert_eq!(walk(POLICY, &[(10, 0)]).await, [Ok]);
        assert_eq!(walk(POLICY, &[(10, 1)]).await, [Warn]);
        assert_eq!(walk(POLICY, &[(10, 2)]).await, [FailWait]);
        assert_eq!(walk(POLICY, &[(10, 3)]).await, [FailWait]);
    }

    #[tokio::test(start_paused = true)]
    async fn warn_recovers_or_escalates() {
        assert_eq!(walk(POLICY, &[(10, 1), (10, 0)]).await, [Warn, Ok]);
        assert_eq!(walk(POLICY, &[(10, 1), (10, 1)]).await, [Warn, Warn]);
        assert_eq!(walk(POLICY, &[(10, 1), (10, 2)]).await, [Warn, FailWait]);
    }

    #[tokio::test(start_paused = true)]
    async fn fail_wait_becomes_fail_only_after_min_failing_time() {
        // 89 s after entering FAIL_WAIT it still waits; at 90 s it fails.
        assert_eq!(
            walk(POLICY, &[(0, 2), (89, 2), (1, 2)]).await,
            [FailWait, FailWait, Fail]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn fail_wait_recovers_to_ok_or_warn_before_the_time() {
        assert_eq!(walk(POLICY, &[(0, 2), (30, 0)]).await, [FailWait, Ok]);
        assert_eq!(walk(POLICY, &[(0, 2), (30, 1)]).await, [FailWait, Warn]);
    }

    #[tokio::test(start_paused = true)]
    async fn fail_goes_to_pass_wait_when_below_the_count() {
        assert_eq!(
            walk(POLICY, &[(0, 2), (90, 2), (10, 2), (10, 1)]).await,
            [FailWait, Fail, Fail, PassWait]
        );
        assert_eq!(
            walk(POLICY, &[(0, 2), (90, 2), (10, 0)]).await,
            [FailWait, Fail, PassWait]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn pass_wait_returns_to_ok_or_warn_after_the_time_or_back_to_fail() {
        let to_fail = [(0, 2), (90, 2)];
        let mut steps = to_fail.to_vec();
        steps.extend([(10, 0), (89, 0), (1, 0)]);
        assert_eq!(
            walk(POLICY, &steps).await,
            [FailWait, Fail, PassWait, PassWait, Ok]
        );
        let mut steps = to_fail.to_vec();
        steps.extend([(10, 1), (90, 1)]);
        assert_eq!(walk(POLICY, &steps).await, [FailWait, Fail, PassWait, Warn]);
        let mut steps = to_fail.to_vec();
        steps.extend([(10, 0), (30, 2)]);
        assert_eq!(walk(POLICY, &steps).await, [FailWait, Fail, PassWait, Fail]);
    }

    #[tokio::test(start_paused = true)]
    async fn defaults_of_one_instance_never_warn() {
        let policy = StatePolicy {
            min_failing_count: 1,
            min_failing_time: Duration::from_secs(90),
        };
        assert_eq!(
            walk(policy, &[(0, 1), (90, 1), (10, 0), (90, 0)]).await,
            [FailWait, Fail, PassWait, Ok]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn zero_min_failing_time_fails_and_recovers_at_once() {
        let policy = StatePolicy {
            min_failing_count: 1,
            min_failing_time: Duration::ZERO,
        };
        assert_eq!(walk(policy, &[(0, 1), (10, 0)]).await, [Fail, Ok]);
    }

    #[tokio::test(start_paused = true)]
    async fn since_is_the_wall_time_of_the_last_transition() {
        let mut tracker = StateTracker::new(Instant::now(), SystemTime::UNIX_EPOCH);
        let wall = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        tracker.observe(2, POLICY, Instant::now(), wall);
        assert_eq!((tracker.state(), tracker.since()), (FailWait, wall));
        tokio::time::advance(Duration::from_secs(10)).await;
        tracker.observe(2, POLICY, Instant::now(), wall + Duration::from_secs(10));
        assert_eq!(tracker.since(), wall, "no transition, same since");
    }
}
