//! The notification every receiver is given: one event of one failure episode, with the words
//! people read in it (`summary`, `details`).

use crate::checks::CheckType;
use crate::model::{CheckState, EndReason, Severity};
use serde::Serialize;
use std::time::SystemTime;

/// What a notification tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Event {
    /// The check fails (or warns, with `notify_on = ["warn"]`); also reminders.
    Firing,
    /// The check is OK again.
    Resolved,
    /// `bastion notify test`.
    Test,
}

impl Event {
    pub fn as_str(self) -> &'static str {
        match self {
            Event::Firing => "firing",
            Event::Resolved => "resolved",
            Event::Test => "test",
        }
    }
}

/// What one location of a check with `locations` saw in its latest run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LocationLine {
    pub location: String,
    /// Its instances that failed.
    pub failing: usize,
    pub instances: usize,
}

/// One failing instance: where, and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FailingInstance {
    /// The address probed (`ip:port`).
    pub instance: String,
    /// The probe error's kind (`connect`, `timeout`, ...), when the transport failed.
    pub error_kind: Option<&'static str>,
    /// The probe error in words.
    pub error: Option<String>,
    /// The assertions that failed.
    pub assertions: Vec<FailedAssertion>,
}

/// One failing assertion, with what was expected and what was seen.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FailedAssertion {
    pub key: String,
    /// `value relationship operand`, such as `status_code equals 200`.
    pub expected: String,
    pub actual: String,
    pub message: Option<String>,
}

/// Failing instances a notification lists at most (the counts cover all).
pub const MAX_FAILURES_LISTED: usize = 20;

/// One event of one failure episode, as every receiver gets it.
#[derive(Debug, Clone, PartialEq)]
pub struct Notification {
    pub event: Event,
    /// A firing notification sent again while the check still fails.
    pub reminder: bool,
    /// The same for every notification of one episode, on every checker: the dedup key.
    pub episode_id: String,
    pub check: String,
    pub check_type: CheckType,
    pub severity: Severity,
    /// For a firing notification whose severity changed within the episode: the one before.
    pub previous_severity: Option<Severity>,
    /// The check's state when this was decided.
    pub state: CheckState,
    /// When the episode began (the first failing result).
    pub started_at: SystemTime,
    /// When this happened (the result that caused it, or now for reminders and tests).
    pub at: SystemTime,
    /// For a resolve: why the episode ended (`recovered`, or a reload changed or removed the
    /// check). None for other events.
    pub reason: Option<EndReason>,
    pub failing: usize,
    pub instances: usize,
    /// Up to `MAX_FAILURES_LISTED` failing instances of the latest result (for a check with
    /// `locations`, each named `location/ip:port`).
    pub failures: Vec<FailingInstance>,
    /// For a check with `locations`: what each location saw in its latest run, by name;
    /// empty otherwise.
    pub locations: Vec<LocationLine>,
    /// The agent's API for the check.
    pub link: String,
    /// The agent that sent it.
    pub agent: String,
}

impl Notification {
    /// One line for people: which check, what state, how many instances, the first reason.
    pub fn summary(&self) -> String {
        match self.event {
            Event::Test => format!(
                "bastion test notification from {}: notifications reach this receiver",
                self.agent
            ),
            Event::Resolved => match self.reason {
                Some(EndReason::CheckChanged) => format!(
                    "[RESOLVED] {}: a reload changed what the check probes, so its episode (failing since {}) ends; the new definition is judged afresh",
                    self.check,
                    rfc3339(self.started_at)
                ),
                Some(EndReason::CheckRemoved) => format!(
                    "[RESOLVED] {}: the check was removed from the configuration, so its episode (failing since {}) ends",
                    self.check,
                    rfc3339(self.started_at)
                ),
                Some(EndReason::Interrupted) => format!(
                    "[RESOLVED] {}: no longer followed, so its episode (failing since {}) ends",
                    self.check,
                    rfc3339(self.started_at)
                ),
                Some(EndReason::Recovered) | None if self.state == CheckState::Ok => format!(
                    "[RESOLVED] {} is OK again (was failing since {})",
                    self.check,
                    rfc3339(self.started_at)
                ),
                // Recovered below the episode's threshold, not to OK: say what it is now.
                Some(EndReason::Recovered) | None => format!(
                    "[RESOLVED] {} is no longer failing, now {} (was failing since {})",
                    self.check,
                    self.state,
                    rfc3339(self.started_at)
                ),
            },
            Event::Firing => {
                let what = match self.severity {
                    Severity::Critical => "FAILING",
                    Severity::Warning => "WARNING",
                };
                let mut line = format!("[{what}] {}: ", self.check);
                if !self.locations.is_empty() {
                    let seeing: Vec<&str> = self
                        .locations
                        .iter()
                        .filter(|location| location.failing > 0)
                        .map(|location| location.location.as_str())
                        .collect();
                    line.push_str(&format!(
                        "failing from {} of {} locations ({}); ",
                        seeing.len(),
                        self.locations.len(),
                        seeing.join(", ")
                    ));
                }
                line.push_str(&format!(
                    "{} of {} instances failing",
                    self.failing, self.instances
                ));
                if let Some(reason) = self.failures.first().map(FailingInstance::reason) {
                    line.push_str(&format!(" ({reason})"));
                }
                line
            }
        }
    }

    /// Several lines for people: the summary, since when, each failing instance and why, the link.
    pub fn details(&self) -> String {
        let mut text = self.summary();
        text.push('\n');
        if self.event != Event::Test {
            text.push_str(&format!(
                "\ncheck: {} ({})\nstate: {}\nfailing since: {}\nepisode: {}\n",
                self.check,
                self.check_type,
                self.state,
                rfc3339(self.started_at),
                self.episode_id
            ));
        }
        for location in &self.locations {
            text.push_str(&format!(
                "location {}: {} of {} instances failing\n",
                location.location, location.failing, location.instances
            ));
        }
        for failure in &self.failures {
            text.push_str(&format!("- {}: {}\n", failure.instance, failure.reason()));
        }
        if self.failing > self.failures.len() {
            text.push_str(&format!(
                "- and {} more\n",
                self.failing - self.failures.len()
            ));
        }
        text.push_str(&format!("\n{}\n", self.link));
        text
    }
}

impl FailingInstance {
    /// Why, in one line: the error, or the failed assertions with expected and actual values.
    pub fn reason(&self) -> String {
        if let Some(error) = &self.error {
            return format!("{}: {error}", self.error_kind.unwrap_or("error"));
        }
        let parts: Vec<String> = self
            .assertions
            .iter()
            .map(|a| format!("{} expected {}, got {}", a.key, a.expected, a.actual))
            .collect();
        if parts.is_empty() {
            "failing".to_string()
        } else {
            parts.join("; ")
        }
    }
}

/// A wall-clock time as RFC 3339 in UTC, to the millisecond.
pub fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_millis(time).to_string()
}

/// A firing notification of check `web` whose one failing assertion saw `actual` (with
/// `message`), for the receivers' tests of hostile text from a target.
#[cfg(test)]
pub(crate) fn firing_with_assertion(actual: &str, message: Option<&str>) -> Notification {
    let now = SystemTime::now();
    Notification {
        event: Event::Firing,
        reminder: false,
        episode_id: "e".to_string(),
        check: "web".to_string(),
        check_type: CheckType::Http,
        severity: Severity::Critical,
        previous_severity: None,
        state: CheckState::Fail,
        started_at: now,
        at: now,
        reason: None,
        failing: 1,
        instances: 1,
        failures: vec![FailingInstance {
            instance: "10.0.0.1:80".to_string(),
            error_kind: None,
            error: None,
            assertions: vec![FailedAssertion {
                key: "body".to_string(),
                expected: "body contain ok".to_string(),
                actual: actual.to_string(),
                message: message.map(str::to_string),
            }],
        }],
        locations: Vec::new(),
        link: "http://127.0.0.1:9464/api/v1/checks/web".to_string(),
        agent: "a".to_string(),
    }
}
