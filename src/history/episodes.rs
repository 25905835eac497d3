//! Incidents from state changes. An incident is a `FAIL` episode: it starts at the first
//! failing run that led to `FAIL` (when the check entered `FAIL_WAIT`, or `FAIL` itself with
//! no `min_failing_time`), and ends at the first passing run that led back to `OK` or `WARN`
//! (when it entered `PASS_WAIT`, or the calm state itself). A return from `PASS_WAIT` to `FAIL`
//! continues the same incident; a `FAIL_WAIT` that recovers is no incident. The cause is the
//! failing instances (at most `CAUSE_INSTANCES`) and their error kinds and messages, from the
//! run that started the episode. Pure: it turns records into operations on the incidents table
//! and remembers nothing else.

use super::{Outcome, RunRecord, TransitionRecord, CAUSE_INSTANCES};
use crate::model::{CheckState, ErrorKind};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

/// One failing instance, as an incident's cause shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cause {
    pub instance: String,
    /// None when assertions failed on a response that arrived.
    pub error_kind: Option<ErrorKind>,
    pub message: Option<String>,
}

/// What to do to the incidents table.
#[derive(Debug, Clone, PartialEq)]
pub enum IncidentOp {
    Open {
        check: Arc<str>,
        started_at: SystemTime,
        confirmed_at: SystemTime,
        cause: Vec<Cause>,
    },
    Close {
        check: Arc<str>,
        ended_at: SystemTime,
        /// The check left the config while failing: how the incident would have ended is
        /// unknown.
        interrupted: bool,
    },
}

#[derive(Debug, Default)]
struct Episode {
    /// The failing instances of the check's latest run.
    last_failures: Vec<Cause>,
    /// Entered `FAIL_WAIT`: when, and why.
    pending: Option<(SystemTime, Vec<Cause>)>,
    /// Entered `PASS_WAIT` from `FAIL`: when.
    recovering_since: Option<SystemTime>,
}

/// Every check's episode in progress.
#[derive(Debug, Default)]
pub struct Episodes {
    checks: HashMap<Arc<str>, Episode>,
}

impl Episodes {
    pub fn on_run(&mut self, run: &RunRecord) {
        let mut failures: Vec<&super::Sample> = run
            .samples
            .iter()
            .filter(|sample| sample.outcome != Outcome::Up)
            .collect();
        // Instances that failed before those that never ran.
        failures.sort_by_key(|sample| sample.outcome != Outcome::Down);
        let episode = self.checks.entry(Arc::clone(&run.check)).or_default();
        episode.last_failures = failures
            .into_iter()
            .take(CAUSE_INSTANCES)
            .map(|sample| Cause {
                instance: sample.instance.clone(),
                error_kind: sample.error,
                message: sample.message.clone(),
            })
            .collect();
    }

    pub fn on_transition(&mut self, transition: &TransitionRecord) -> Option<IncidentOp> {
        use CheckState::*;
        let episode = self
            .checks
            .entry(Arc::clone(&transition.check))
            .or_default();
        match (transition.from, transition.to) {
            (_, FailWait) => {
                episode.pending = Some((transition.at, episode.last_failures.clone()));
                None
            }
            (PassWait, Fail) => {
                episode.recovering_since = None;
                None
            }
            (from, Fail) => {
                let pending = episode.pending.take();
                let (started_at, cause) = match pending {
                    Some(pending) if from == FailWait => pending,
                    _ => (transition.at, episode.last_failures.clone()),
                };
                episode.recovering_since = None;
                Some(IncidentOp::Open {
                    check: Arc::clone(&transition.check),
                    started_at,
                    confirmed_at: transition.at,
                    cause,
                })
            }
            (Fail, PassWait) => {
                episode.recovering_since = Some(transition.at);
                None
            }
            (Fail | PassWait, Ok | Warn) => Some(IncidentOp::Close {
                check: Arc::clone(&transition.check),
                ended_at: episode.recovering_since.take().unwrap_or(transition.at),
                interrupted: false,
            }),
            (FailWait, _) => {
                episode.pending = None;
                None
            }
            _ => None,
        }
    }

    /// Forgets a check's episode (a reload removed or changed it); an incident still open is
    /// closed at `at`, marked interrupted.
    pub fn forget(
        &mut self,
        check: Arc<str>,
        incident_open: bool,
        at: SystemTime,
    ) -> Option<IncidentOp> {
        self.checks.remove(&check);
        incident_open.then_some(IncidentOp::Close {
            check,
            ended_at: at,
            interrupted: true,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::Sample;
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};
    use CheckState::*;

    fn at(seconds: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(seconds)
    }

    fn run(seconds: u64, failing: bool) -> RunRecord {
        RunRecord {
            check: Arc::from("web"),
            scheduled_at: at(seconds),
            finished_at: at(seconds),
            outcome: if failing { Outcome::Down } else { Outcome::Up },
            samples: vec![Sample {
                instance: "127.0.0.1:80".into(),
                outcome: if failing { Outcome::Down } else { Outcome::Up },
                error: failing.then_some(ErrorKind::Connect),
                phases: [0.0; 6],
                message: failing.then(|| "refused".to_string()),
            }],
        }
    }

    fn change(seconds: u64, from: CheckState, to: CheckState) -> TransitionRecord {
        TransitionRecord {
            check: Arc::from("web"),
            from,
            to,
            at: at(seconds),
            failing: 1,
            instances: 1,
        }
    }

    #[test]
    fn an_incident_runs_from_the_first_failure_to_the_first_success() {
        let mut episodes = Episodes::default();
        episodes.on_run(&run(10, true));
        assert_eq!(episodes.on_transition(&change(10, Ok, FailWait)), None);
        episodes.on_run(&run(20, true));
        let open = episodes
            .on_transition(&change(100, FailWait, Fail))
            .unwrap();
        let IncidentOp::Open {
            started_at,
            confirmed_at,
            cause,
            ..
        } = open
        else {
            panic!("{open:?}")
        };
        assert_eq!((started_at, confirmed_at), (at(10), at(100)));
        assert_eq!(cause[0].error_kind, Some(ErrorKind::Connect));
        assert_eq!(episodes.on_transition(&change(200, Fail, PassWait)), None);
        // Back to failing: the same incident goes on.
        assert_eq!(episodes.on_transition(&change(210, PassWait, Fail)), None);
        assert_eq!(episodes.on_transition(&change(300, Fail, PassWait)), None);
        let close = episodes.on_transition(&change(390, PassWait, Ok));
        assert_eq!(
            close,
            Some(IncidentOp::Close {
                check: Arc::from("web"),
                ended_at: at(300),
                interrupted: false,
            })
        );
    }

    #[test]
    fn forgetting_a_failing_check_closes_its_incident_as_interrupted() {
        let mut episodes = Episodes::default();
        assert!(matches!(
            episodes.on_transition(&change(10, Ok, Fail)),
            Some(IncidentOp::Open { .. })
        ));
        assert_eq!(
            episodes.forget(Arc::from("web"), true, at(50)),
            Some(IncidentOp::Close {
                check: Arc::from("web"),
                ended_at: at(50),
                interrupted: true,
            })
        );
        assert!(
            episodes.checks.is_empty(),
            "the episode is gone with the check"
        );
        assert_eq!(episodes.forget(Arc::from("web"), false, at(60)), None);
    }

    #[test]
    fn a_fail_wait_that_recovers_is_no_incident() {
        let mut episodes = Episodes::default();
        episodes.on_run(&run(10, true));
        assert_eq!(episodes.on_transition(&change(10, Ok, FailWait)), None);
        assert_eq!(episodes.on_transition(&change(20, FailWait, Ok)), None);
        // Without min_failing_time, straight to FAIL and back.
        episodes.on_run(&run(30, true));
        assert!(matches!(
            episodes.on_transition(&change(30, Ok, Fail)),
            Some(IncidentOp::Open { started_at, .. }) if started_at == at(30)
        ));
        assert!(matches!(
            episodes.on_transition(&change(40, Fail, Ok)),
            Some(IncidentOp::Close { ended_at, .. }) if ended_at == at(40)
        ));
    }
}
