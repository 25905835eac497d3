//! Notifications: telling people when a check fails and when it recovers. The receivers
//! themselves (`receivers/`: each type's settings, build and delivery attempt) sit below the
//! configuration; this module decides and delivers: `routing` turns episode events into
//! notifications for the notifiers a check names, `ticker` sends reminders and catches up
//! after maintenance, `queue` delivers (one bounded queue per notifier, retries with
//! backoff), `maintenance` says which windows are in force, `saved` keeps who was told
//! across restarts, `message` writes a notification from a check's latest result. This file
//! builds the configured notifiers and sends `bastion notify test`.
//!
//! A notifier never delays a probe or the schedule (the sink only pushes onto a queue), and a
//! secret (routing key, webhook URL, SMTP password, HMAC key) never appears in a log line, an
//! error, the API or a metric: the receivers read secrets from files and keep them in types
//! that do not print them.

mod maintenance;
mod message;
mod metrics;
mod queue;
mod routing;
mod saved;
mod ticker;

pub use maintenance::Maintenance;
pub use metrics::NotifyMetrics;
pub use routing::{Notifications, NotificationsOptions};
pub use saved::{open_delivery, SAVED_DELIVERIES};

use crate::checks::CheckType;
use crate::config::{Config, NotifierConfig};
use crate::model::{CheckState, Severity};
use crate::receivers::{
    http_client, Answer, BuildContext, Event, Notification, Notifier, ReceiverError,
};
use std::sync::Arc;
use std::time::SystemTime;

/// A configured notifier and what its config built.
pub type Built = (NotifierConfig, Arc<dyn Notifier>);

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error(transparent)]
    Receiver(#[from] ReceiverError),
    #[error("no notifier is named `{0}`; the config's [[notifiers]] names are the ones to use")]
    NoSuchNotifier(String),
    #[error("notifier `{notifier}`: the receiver did not take the test notification: {reason}")]
    TestFailed { notifier: String, reason: String },
}

/// Builds one notifier: its receiver type's build, with the settings every notifier has.
pub fn build(
    config: &NotifierConfig,
    http: &reqwest::Client,
) -> Result<Arc<dyn Notifier>, NotifyError> {
    let context = BuildContext {
        notifier: &config.name,
        timeout: config.timeout,
        repeat_interval: config.repeat_interval,
        ca_file: config.ca_file.as_deref(),
        http,
    };
    Ok(config.spec.build(&context)?)
}

/// Builds every configured notifier, reading their secret files: what `bastion validate` and
/// start-up run, so a missing file is found before the first outage.
pub fn build_all(config: &Config) -> Result<Vec<Built>, NotifyError> {
    if config.notifiers.is_empty() {
        return Ok(Vec::new());
    }
    let http = http_client()?;
    config
        .notifiers
        .iter()
        .map(|notifier| Ok((notifier.clone(), build(notifier, &http)?)))
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
    let notifier = build(notifier_config, &http_client()?)?;
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
