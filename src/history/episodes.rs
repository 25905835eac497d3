//! Incidents: how history keeps the failure episodes of `crate::episode`. Each episode is one
//! row of the incidents table under the episode's id: opened when the episode opens (its
//! start, when it was confirmed, the worst severity so far, and its cause: the failing
//! instances, at most `CAUSE_INSTANCES`, with their error kinds and messages, from the run
//! that opened it), raised when it escalates, and closed with its end and the reason.
//! Writing by id makes each operation idempotent, so an HA checker that takes the lease can
//! write what it knows again without duplicating anything. This file only says what to do
//! to the table; `writer.rs` does it.

use super::{failure, CAUSE_INSTANCES, CAUSE_MESSAGE_BYTES};
use crate::episode::{Episode, EpisodeEvent};
use crate::messages::CheckResult;
use crate::model::{EndReason, ErrorKind};
use serde::{Deserialize, Serialize};
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
    /// Insert the episode's incident unless it is there already.
    Open { episode: Episode, cause: Vec<Cause> },
    /// The episode got worse (or better): its current and worst severity.
    Severity { episode: Episode },
    /// The episode ended.
    Close {
        episode: Episode,
        ended_at: SystemTime,
        reason: EndReason,
    },
    /// This writer leads now (it started, or took the lease): every incident still open that
    /// is none of `open` ends, interrupted (nobody will ever record its end), and each of
    /// `open` is written if it is missing.
    Reconcile { open: Vec<Episode> },
}

impl IncidentOp {
    /// The incident operation of an episode event; `result` is the run that caused it.
    pub fn of(event: &EpisodeEvent, result: &CheckResult) -> IncidentOp {
        match event {
            EpisodeEvent::Opened(episode) => IncidentOp::Open {
                episode: episode.clone(),
                cause: cause(result),
            },
            EpisodeEvent::Escalated(episode) | EpisodeEvent::DeEscalated(episode) => {
                IncidentOp::Severity {
                    episode: episode.clone(),
                }
            }
            EpisodeEvent::Closed {
                episode,
                reason,
                at,
            } => IncidentOp::Close {
                episode: episode.clone(),
                ended_at: *at,
                reason: *reason,
            },
        }
    }

    /// The check it is about, if one.
    pub fn check(&self) -> Option<&str> {
        match self {
            IncidentOp::Open { episode, .. }
            | IncidentOp::Severity { episode }
            | IncidentOp::Close { episode, .. } => Some(&episode.check),
            IncidentOp::Reconcile { .. } => None,
        }
    }
}

/// The failing instances of a run, those that failed before those that never ran.
pub fn cause(result: &CheckResult) -> Vec<Cause> {
    let mut failing: Vec<&crate::messages::Response> = result
        .responses
        .iter()
        .filter(|response| !response.passing)
        .collect();
    failing.sort_by_key(|response| response.error_kind().is_some_and(ErrorKind::is_unmeasured));
    failing
        .into_iter()
        .take(CAUSE_INSTANCES)
        .map(|response| Cause {
            instance: response.target.clone(),
            error_kind: response.error_kind(),
            message: Some(super::cut(failure(response).1, CAUSE_MESSAGE_BYTES)),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::{Response, Timings};
    use crate::model::ProbeError;

    #[test]
    fn the_cause_lists_failures_before_instances_that_never_ran() {
        let failed = |target: &str, kind: ErrorKind| {
            Response::failed(
                target.to_string(),
                ProbeError::new(kind, "boom"),
                Timings::default(),
            )
        };
        let result = CheckResult::of_web(vec![
            failed("10.0.0.1:80", ErrorKind::DispatchTimeout),
            failed("10.0.0.2:80", ErrorKind::Connect),
        ]);
        let cause = cause(&result);
        assert_eq!(cause[0].instance, "10.0.0.2:80");
        assert_eq!(cause[0].error_kind, Some(ErrorKind::Connect));
        assert_eq!(cause[0].message.as_deref(), Some("boom"));
        assert_eq!(cause[1].error_kind, Some(ErrorKind::DispatchTimeout));
    }
}
