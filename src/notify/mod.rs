//! Notifications: telling people when a check fails and when it recovers. This file holds what
//! every receiver shares: the `Notification` (one event of one failure episode), the
//! `Notifier` trait each receiver type implements in its own file, and `build`, one
//! exhaustive match from a notifier's spec to its type's build function. Around them: `episodes` decides
//! what to send and when (episodes, reminders, leadership, maintenance), `queue` delivers
//! (one bounded queue per notifier, retries with backoff), `maintenance` says which windows
//! are in force, `post` is the HTTP request every HTTP receiver makes.
//!
//! A notifier never delays a probe or the schedule (the sink only pushes onto a queue), and a
//! secret (routing key, webhook URL, SMTP password, HMAC key) never appears in a log line, an
//! error, the API or a metric: secrets are read from files here and kept in types that do not
//! print them.

pub mod alertmanager;
pub mod email;
mod maintenance;
mod message;
pub mod pagerduty;
mod post;
mod queue;
mod routing;
mod saved;
pub mod slack;
mod ticker;
pub mod webhook;

pub use crate::episode::{EndReason, Severity};
pub use maintenance::Maintenance;
pub use routing::{Notifications, NotificationsOptions};
pub use saved::{open_delivery, SAVED_DELIVERIES};

use crate::checks::CheckType;
use crate::config::{Config, NotifierConfig, NotifierSpec};
use crate::model::CheckState;
use futures_util::future::BoxFuture;
use serde::Serialize;
use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

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

/// What the receiver answered to a delivered notification, for logs and `bastion notify test`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer(pub String);

/// Why a delivery attempt failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendError {
    /// Worth another attempt: a network error, a timeout, 429 or 5xx; `after` is the
    /// receiver's `Retry-After`.
    Retry {
        reason: String,
        after: Option<Duration>,
    },
    /// Not worth retrying: the receiver refused it (another 4xx). The config is wrong.
    Reject(String),
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendError::Retry { reason, .. } => f.write_str(reason),
            SendError::Reject(reason) => write!(f, "refused: {reason}"),
        }
    }
}

/// A receiver type: formats a notification for its API and makes one delivery attempt.
/// Retries, timeouts around it and counting are the queue's.
pub trait Notifier: Send + Sync + fmt::Debug {
    fn send<'a>(
        &'a self,
        notification: &'a Notification,
    ) -> BoxFuture<'a, Result<Answer, SendError>>;

    /// How often a firing notification must be re-sent when `repeat_interval` is not set
    /// (Alertmanager forgets alerts that are not).
    fn default_repeat(&self) -> Option<Duration> {
        None
    }
}

/// What building a notifier may need beyond its config.
#[derive(Debug, Clone)]
pub struct BuildContext {
    /// The HTTP client HTTP receivers share (rustls with ring, the system's roots).
    pub http: reqwest::Client,
}

impl BuildContext {
    /// The client for `config`: the shared one, or one of its own trusting its `ca_file`.
    pub fn client_for(&self, config: &NotifierConfig) -> Result<reqwest::Client, NotifyError> {
        match &config.ca_file {
            None => Ok(self.http.clone()),
            Some(ca_file) => {
                let settings = crate::config::TlsSettings {
                    ca_file: Some(ca_file.clone()),
                    ..crate::config::TlsSettings::default()
                };
                let tls = crate::checks::tls_client::TlsClientConfigs::default()
                    .get(&settings)
                    .map_err(|error| NotifyError::Invalid {
                        notifier: config.name.clone(),
                        reason: error.to_string(),
                    })?;
                client_with((*tls).clone())
            }
        }
    }
}

/// A configured notifier and what its config built.
pub type Built = (NotifierConfig, Arc<dyn Notifier>);

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("notifier `{notifier}`: cannot read {path}: {reason}")]
    SecretFile {
        notifier: String,
        path: String,
        reason: String,
    },
    #[error("notifier `{notifier}`: {path} is empty; put the secret on its first line")]
    EmptySecret { notifier: String, path: String },
    #[error("notifier `{notifier}`: {reason}")]
    Invalid { notifier: String, reason: String },
    #[error("cannot set up TLS for notifications: {0}")]
    Tls(String),
    #[error("no notifier is named `{0}`; the config's [[notifiers]] names are the ones to use")]
    NoSuchNotifier(String),
    #[error("notifier `{notifier}`: the receiver did not take the test notification: {reason}")]
    TestFailed { notifier: String, reason: String },
}

/// A secret read from a file: its first line, trimmed. Debug never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// The URL of a notifier that takes `url` or `url_file` (the config has exactly one), kept as
/// a secret either way: such URLs carry tokens.
pub fn url_or_file(
    config: &NotifierConfig,
    url: &Option<String>,
    file: &Option<std::path::PathBuf>,
) -> Result<Secret, NotifyError> {
    match (url, file) {
        (Some(url), _) => Ok(Secret(url.clone())),
        (None, Some(file)) => read_secret(&config.name, file),
        (None, None) => Err(NotifyError::Invalid {
            notifier: config.name.clone(),
            reason: "set url or url_file".to_string(),
        }),
    }
}

/// Reads a notifier's secret file. The error names the file, never its content.
pub fn read_secret(notifier: &str, path: &Path) -> Result<Secret, NotifyError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|error| NotifyError::SecretFile {
        notifier: notifier.to_string(),
        path: shown.clone(),
        reason: error.kind().to_string(),
    })?;
    let line = text.lines().next().unwrap_or("").trim().to_string();
    if line.is_empty() {
        return Err(NotifyError::EmptySecret {
            notifier: notifier.to_string(),
            path: shown,
        });
    }
    Ok(Secret(line))
}

/// The HTTP client of every HTTP receiver: rustls with ring and the system's roots, HTTP/1.1,
/// no redirects (a receiver that redirects is misconfigured, and a redirect could carry a
/// signed body elsewhere). Without a readable system store it still builds, with a warning:
/// `http://` receivers work, and `https://` ones fail with a TLS error that says why.
pub fn http_client() -> Result<reqwest::Client, NotifyError> {
    use crate::checks::tls_client::{client_config, TlsClientConfigs, Trust};
    let configs = TlsClientConfigs::default();
    let tls = match configs.get(&crate::config::TlsSettings::default()) {
        Ok(tls) => (*tls).clone(),
        Err(error) => {
            tracing::warn!(%error, "no system root certificates: https:// notifiers will fail; install ca-certificates");
            client_config(
                Trust::Roots(rustls::RootCertStore::empty()),
                &crate::config::TlsSettings::default(),
            )
            .map_err(|error| NotifyError::Tls(error.to_string()))?
        }
    };
    client_with(tls)
}

/// A reqwest client over `tls`, HTTP/1.1, no redirects.
fn client_with(mut tls: rustls::ClientConfig) -> Result<reqwest::Client, NotifyError> {
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("bastion/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|error| NotifyError::Tls(error.without_url().to_string()))
}

/// Builds one notifier from its type's section. Exhaustive: a new receiver type without its
/// line here does not compile.
pub fn build(
    config: &NotifierConfig,
    context: &BuildContext,
) -> Result<Arc<dyn Notifier>, NotifyError> {
    match &config.spec {
        NotifierSpec::Alertmanager(spec) => alertmanager::build(config, spec, context),
        NotifierSpec::Webhook(spec) => webhook::build(config, spec, context),
        NotifierSpec::Slack(spec) => slack::build(config, spec, context),
        NotifierSpec::Pagerduty(spec) => pagerduty::build(config, spec, context),
        NotifierSpec::Email(spec) => email::build(config, spec, context),
    }
}

/// Builds every configured notifier, reading their secret files: what `bastion validate` and
/// start-up run, so a missing file is found before the first outage.
pub fn build_all(config: &Config) -> Result<Vec<Built>, NotifyError> {
    if config.notifiers.is_empty() {
        return Ok(Vec::new());
    }
    let context = BuildContext {
        http: http_client()?,
    };
    config
        .notifiers
        .iter()
        .map(|notifier| Ok((notifier.clone(), build(notifier, &context)?)))
        .collect()
}

/// Where people reach this agent's API: `agent.external_url`, else `http://` and `listen`.
pub fn api_base(config: &Config) -> String {
    config
        .agent
        .external_url
        .clone()
        .unwrap_or_else(|| format!("http://{}", config.agent.listen))
        .trim_end_matches('/')
        .to_string()
}

/// The link to the agent's API for a check: the one-check endpoint (check names are made of
/// `a-z0-9_-`, so they need no escaping in a path).
pub fn check_link(api_base: &str, check: &str) -> String {
    format!("{api_base}/api/v1/checks/{check}")
}

/// `bastion notify test`: sends one test notification to the named notifier, once, without
/// retries, and returns the receiver's answer.
pub async fn send_test(config: &Config, name: &str) -> Result<Answer, NotifyError> {
    let Some(notifier_config) = config.notifiers.iter().find(|n| n.name == name) else {
        return Err(NotifyError::NoSuchNotifier(name.to_string()));
    };
    let context = BuildContext {
        http: http_client()?,
    };
    let notifier = build(notifier_config, &context)?;
    let now = SystemTime::now();
    let notification = Notification {
        event: Event::Test,
        reminder: false,
        episode_id: format!("test-{}", crate::episode::episode_id("bastion-test", now)),
        check: "bastion-test".to_string(),
        check_type: CheckType::Http,
        severity: Severity::Warning,
        previous_severity: None,
        state: CheckState::Ok,
        started_at: now,
        at: now,
        reason: None,
        failing: 0,
        instances: 0,
        failures: Vec::new(),
        locations: Vec::new(),
        link: check_link(&api_base(config), "bastion-test"),
        agent: config.agent.id.clone(),
    };
    let attempt = tokio::time::timeout(notifier_config.timeout, notifier.send(&notification)).await;
    match attempt {
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err(error)) => Err(NotifyError::TestFailed {
            notifier: name.to_string(),
            reason: error.to_string(),
        }),
        Err(_) => Err(NotifyError::TestFailed {
            notifier: name.to_string(),
            reason: format!(
                "no answer within {}",
                humantime::format_duration(notifier_config.timeout)
            ),
        }),
    }
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
