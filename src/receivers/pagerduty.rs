//! PagerDuty Events API v2: `POST` of an event (`routing_key`, `event_action` `trigger` or
//! `resolve`, `dedup_key`, and for a trigger a `payload` with `summary`, `source`, `severity`,
//! `timestamp`, `component`, `class` and `custom_details`). The `dedup_key` is the episode's
//! id, so a retry, a reminder or a trigger from another checker after a failover joins the
//! same incident, and the resolve closes it. PagerDuty answers 202; 400 for an invalid event,
//! 429 when throttled. A test notification (`bastion notify test`) is an `info` trigger
//! resolved right after, so it leaves no incident open.

use super::post::post_json;
use super::{
    http_url, read_secret, Answer, BuildContext, Event, Notification, Notifier, ReceiverError,
    ReceiverSpec, Secret, SendError,
};
use crate::model::Severity;
use crate::problem::{Bound, Entry, Problem};
use futures_util::future::BoxFuture;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::json;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// PagerDuty's limit on `payload.summary`.
const SUMMARY_CHARS: usize = 1024;

#[derive(Debug)]
struct Pagerduty {
    client: reqwest::Client,
    url: String,
    routing_key: Secret,
    timeout: Duration,
}

/// Settings of a `type = "pagerduty"` notifier.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PagerdutySpec {
    /// File holding the integration's routing key (Events API v2).
    pub routing_key_file: PathBuf,
    /// The Events API v2 endpoint. Default: `https://events.pagerduty.com/v2/enqueue`.
    #[serde(default = "default_pagerduty_url")]
    pub url: String,
}

fn default_pagerduty_url() -> String {
    "https://events.pagerduty.com/v2/enqueue".to_string()
}

/// Its keys hold no number or duration.
pub const BOUNDS: &[Bound] = &[];

impl ReceiverSpec for PagerdutySpec {
    fn validate(&self, entry: &Entry) -> Result<(), Problem> {
        http_url(entry, &self.url)
    }

    fn build(&self, context: &BuildContext) -> Result<Arc<dyn Notifier>, ReceiverError> {
        Ok(Arc::new(Pagerduty {
            client: context.client()?,
            url: self.url.clone(),
            routing_key: read_secret(context.notifier, &self.routing_key_file)?,
            timeout: context.timeout,
        }))
    }
}

/// The event body for `routing_key`.
pub fn event(notification: &Notification, routing_key: &str) -> serde_json::Value {
    match notification.event {
        Event::Resolved => json!({
            "routing_key": routing_key,
            "event_action": "resolve",
            "dedup_key": notification.episode_id,
        }),
        Event::Firing | Event::Test => {
            let severity = match (notification.event, notification.severity) {
                (Event::Test, _) => "info",
                (_, Severity::Critical) => "critical",
                (_, Severity::Warning) => "warning",
            };
            json!({
                "routing_key": routing_key,
                "event_action": "trigger",
                "dedup_key": notification.episode_id,
                "payload": {
                    "summary": notification.summary().chars().take(SUMMARY_CHARS).collect::<String>(),
                    "source": notification.agent,
                    "severity": severity,
                    "timestamp": super::rfc3339(notification.at),
                    "component": notification.check,
                    "class": notification.check_type.to_string(),
                    "group": "bastion",
                    "custom_details": {
                        "check": notification.check,
                        "state": notification.state.to_string(),
                        "failing": notification.failing,
                        "instances": notification.instances,
                        "failing_since": super::rfc3339(notification.started_at),
                        "failures": notification.failures,
                    },
                },
                "client": "bastion",
                "client_url": notification.link,
                "links": [{"href": notification.link, "text": "bastion API for this check"}],
            })
        }
    }
}

impl Pagerduty {
    async fn post(&self, notification: &Notification) -> Result<Answer, SendError> {
        let body = serde_json::to_vec(&event(notification, self.routing_key.expose()))
            .map_err(|error| SendError::Reject(format!("cannot encode the event: {error}")))?;
        post_json(&self.client, &self.url, body, &[], self.timeout).await
    }
}

impl Notifier for Pagerduty {
    fn send<'a>(
        &'a self,
        notification: &'a Notification,
    ) -> BoxFuture<'a, Result<Answer, SendError>> {
        Box::pin(async move {
            let answer = self.post(notification).await?;
            if notification.event == Event::Test {
                // A test must not leave an incident open: resolve it at once.
                let mut resolve = notification.clone();
                resolve.event = Event::Resolved;
                self.post(&resolve).await?;
            }
            Ok(answer)
        })
    }
}
