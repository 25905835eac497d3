//! What a notification of an episode says: the firing notification (with the failing
//! instances of the latest result and why) and the resolve (with why the episode ended), as
//! this agent signs them (`Origin`: its name and the base of its links). Pure: it builds
//! notifications and sends nothing.

use crate::checks::CheckType;
use crate::episode::Episode;
use crate::messages::CheckResult;
use crate::model::{CheckState, EndReason, Severity};
use crate::receivers::{
    Event, FailedAssertion, FailingInstance, LocationLine, Notification, MAX_FAILURES_LISTED,
};
use serde::{Deserialize, Serialize};
use std::time::SystemTime;

/// Who sends: the agent's name, and the base of the links to its API.
#[derive(Debug, Clone)]
pub(super) struct Origin {
    pub(super) agent: String,
    pub(super) link_base: String,
}

/// What a resolve says, kept until every receiver accepted it (and saved so across a
/// restart: the failing instances are not, a resolve lists few or none).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct ResolveFacts {
    pub(super) episode: Episode,
    pub(super) check_type: CheckType,
    pub(super) state: CheckState,
    pub(super) reason: EndReason,
    #[serde(with = "humantime_serde")]
    pub(super) at: SystemTime,
    pub(super) failing: usize,
    pub(super) instances: usize,
}

impl Origin {
    /// The firing notification of `episode`, with the details of `latest` when known.
    pub(super) fn firing(
        &self,
        episode: &Episode,
        check_type: CheckType,
        state: CheckState,
        previous_severity: Option<Severity>,
        latest: Option<&CheckResult>,
    ) -> Notification {
        Notification {
            event: Event::Firing,
            reminder: false,
            episode_id: episode.id.clone(),
            check: episode.check.clone(),
            check_type,
            severity: episode.severity,
            previous_severity,
            state,
            started_at: episode.started_at,
            at: latest.map_or(episode.opened_at, |result| result.finished_at),
            reason: None,
            failing: latest.map_or(0, |result| result.counts().failing),
            instances: latest.map_or(0, |result| result.instances()),
            failures: latest.map(failures).unwrap_or_default(),
            locations: latest.map(locations).unwrap_or_default(),
            link: super::check_link(&self.link_base, &episode.check),
            agent: self.agent.clone(),
        }
    }

    /// The resolve `facts` describe, with the failing instances of `latest` when known.
    pub(super) fn resolve(
        &self,
        facts: &ResolveFacts,
        latest: Option<&CheckResult>,
    ) -> Notification {
        Notification {
            event: Event::Resolved,
            reminder: false,
            episode_id: facts.episode.id.clone(),
            check: facts.episode.check.clone(),
            check_type: facts.check_type,
            severity: facts.episode.severity,
            previous_severity: None,
            state: facts.state,
            started_at: facts.episode.started_at,
            at: facts.at,
            reason: Some(facts.reason),
            failing: facts.failing,
            instances: facts.instances,
            failures: latest.map(failures).unwrap_or_default(),
            locations: latest.map(locations).unwrap_or_default(),
            link: super::check_link(&self.link_base, &facts.episode.check),
            agent: self.agent.clone(),
        }
    }
}

/// For a check with `locations`: what each location saw, from the check's combined view (a
/// result whose responses carry a `location` label, made by the sink); empty otherwise. A view
/// reduced for the bus carries each location's counts over every instance: those are said,
/// not the responses that happened to fit.
fn locations(result: &CheckResult) -> Vec<LocationLine> {
    if let Some(counted) = result
        .degraded
        .as_ref()
        .map(|degraded| &degraded.locations)
        .filter(|counted| !counted.is_empty())
    {
        return counted
            .iter()
            .take(crate::config::bounds::MAX_LOCATIONS)
            .map(|counts| LocationLine {
                location: counts.location.clone(),
                // A location with no runner measured nothing: it is not seen failing.
                failing: counts.failing.saturating_sub(counts.unmeasured),
                instances: counts.instances,
            })
            .collect();
    }
    let mut lines: Vec<LocationLine> = Vec::new();
    for response in &result.responses {
        let Some(location) = response.labels.get(crate::model::LOCATION_LABEL) else {
            continue;
        };
        let line = match lines.iter_mut().find(|line| line.location == *location) {
            Some(line) => line,
            None => {
                if lines.len() >= crate::config::bounds::MAX_LOCATIONS {
                    continue;
                }
                lines.push(LocationLine {
                    location: location.clone(),
                    failing: 0,
                    instances: 0,
                });
                let last = lines.len() - 1;
                &mut lines[last]
            }
        };
        line.instances += 1;
        // A location with no runner measured nothing: it is not seen failing.
        let unmeasured = response
            .error_kind()
            .is_some_and(crate::model::ErrorKind::is_unmeasured);
        if !response.passing && !unmeasured {
            line.failing += 1;
        }
    }
    lines
}

/// The failing instances of a result and why, at most `MAX_FAILURES_LISTED`.
fn failures(result: &CheckResult) -> Vec<FailingInstance> {
    result
        .responses
        .iter()
        .filter(|response| !response.passing)
        .take(MAX_FAILURES_LISTED)
        .map(|response| {
            let mut assertions: Vec<FailedAssertion> = response
                .assertions
                .iter()
                .filter(|assertion| !assertion.passing)
                .map(|assertion| FailedAssertion {
                    key: crate::assertions::key_name(assertion.key).to_string(),
                    expected: format!(
                        "{} {} {}",
                        assertion.value,
                        crate::assertions::relationship_name(assertion.relationship),
                        assertion.operand
                    )
                    .trim()
                    .to_string(),
                    actual: assertion.actual.clone(),
                    message: assertion.message.clone(),
                })
                .collect();
            // Without assertions an HTTP check passes on a 2xx status: say that one failed.
            if let (None, true, Some(http)) =
                (&response.error, assertions.is_empty(), &response.http)
            {
                assertions.push(FailedAssertion {
                    key: "status_code".to_string(),
                    expected: "2xx".to_string(),
                    actual: http.status.to_string(),
                    message: Some(format!("status {} is not a 2xx", http.status)),
                });
            }
            FailingInstance {
                instance: response.target.clone(),
                error_kind: response.error.as_ref().map(|error| error.kind.as_str()),
                error: response.error.as_ref().map(|error| error.message.clone()),
                assertions,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A combined view as the sink makes it: `eu`'s result was summarised for the bus (two of
    /// its 500 instances carried, 300 failing, 20 of them unmeasured), `us` sent its one.
    fn combined(with_counts: bool) -> CheckResult {
        let response = |location: &str, target: &str, passing: bool| {
            let mut response = crate::messages::Response::failed(
                format!("{location}/{target}"),
                crate::model::ProbeError::new(crate::model::ErrorKind::Connect, "refused"),
                crate::messages::Timings::default(),
            );
            response.passing = passing;
            response.labels.insert(
                crate::model::LOCATION_LABEL.to_string(),
                location.to_string(),
            );
            response
        };
        let counts =
            |location: &str, instances, failing, unmeasured| crate::messages::LocationCounts {
                location: location.to_string(),
                instances,
                failing,
                unmeasured,
            };
        let mut result = CheckResult::of_web(vec![
            response("eu", "10.0.0.1:80", false),
            response("eu", "10.0.0.2:80", false),
            response("us", "10.0.0.1:80", true),
        ]);
        result.degraded = Some(Box::new(crate::messages::Degraded {
            form: crate::messages::DegradedForm::Summarised,
            instances: 501,
            failing: 300,
            omitted: 498,
            unmeasured: 20,
            locations: if with_counts {
                vec![counts("eu", 500, 300, 20), counts("us", 1, 0, 0)]
            } else {
                Vec::new()
            },
        }));
        result
    }

    #[test]
    fn a_location_line_says_every_instance_of_a_summarised_location_not_the_responses_kept() {
        let lines = locations(&combined(true));
        let said: Vec<(&str, usize, usize)> = lines
            .iter()
            .map(|line| (line.location.as_str(), line.failing, line.instances))
            .collect();
        assert_eq!(said, [("eu", 280, 500), ("us", 0, 1)]);
    }

    #[test]
    fn without_counts_the_lines_count_the_responses() {
        let lines = locations(&combined(false));
        let said: Vec<(&str, usize, usize)> = lines
            .iter()
            .map(|line| (line.location.as_str(), line.failing, line.instances))
            .collect();
        assert_eq!(said, [("eu", 2, 2), ("us", 0, 1)]);
    }
}
