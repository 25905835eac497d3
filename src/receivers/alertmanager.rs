//! Alertmanager API v2: `POST <url>/api/v2/alerts` with a list of postable alerts (labels,
//! annotations, `startsAt`, `endsAt`, `generatorURL`). The labels `alertname`, `check`, `type`
//! and `severity` (plus the configured extra labels) identify the alert, so the same check
//! always maps to the same alert whichever checker sends it. A firing alert is re-sent every
//! `repeat_interval` (default 1m) with `endsAt` four intervals ahead, as Prometheus does, so it
//! expires by itself if bastion goes away; a resolve sets `endsAt` to the recovery time.

use super::post::post_json;
use super::{
    http_url, Answer, BuildContext, Event, Notification, Notifier, ReceiverError, ReceiverSpec,
    SendError,
};
use crate::model::Severity;
use crate::problem::{Bound, Entry, Problem};
use futures_util::future::BoxFuture;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// The `alertname` of every alert bastion sends.
pub const ALERTNAME: &str = "BastionCheckFailing";

/// The `alertname` of the alert `bastion notify test` sends.
pub const TEST_ALERTNAME: &str = "BastionNotificationTest";

/// How long the test alert stays active in Alertmanager.
const TEST_ALERT_LASTS: Duration = Duration::from_secs(300);

#[derive(Debug)]
struct Alertmanager {
    client: reqwest::Client,
    endpoint: String,
    labels: BTreeMap<String, String>,
    timeout: Duration,
    /// How long a firing alert stays valid without being re-sent.
    valid_for: Duration,
}

/// Settings of a `type = "alertmanager"` notifier.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AlertmanagerSpec {
    /// Alertmanager's base URL, such as `http://127.0.0.1:9093`; alerts go to `/api/v2/alerts`.
    pub url: String,
    /// Extra labels on every alert (such as `team`); they cannot replace `alertname`, `check`,
    /// `type` or `severity`.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// How often an `alertmanager` notifier re-sends a firing alert unless `repeat_interval` says.
pub const ALERTMANAGER_RESEND: Duration = Duration::from_secs(60);

/// Its keys hold no number or duration.
pub const BOUNDS: &[Bound] = &[];

impl ReceiverSpec for AlertmanagerSpec {
    fn validate(&self, entry: &Entry) -> Result<(), Problem> {
        http_url(entry, &self.url)?;
        for reserved in ["alertname", "check", "type", "severity"] {
            if self.labels.contains_key(reserved) {
                return Err(entry.problem(
                    &format!("labels.{reserved}"),
                    format!("labels.{reserved} is set by bastion; choose another label name"),
                ));
            }
        }
        Ok(())
    }

    fn build(&self, context: &BuildContext) -> Result<Arc<dyn Notifier>, ReceiverError> {
        let resend = context.repeat_interval.unwrap_or(ALERTMANAGER_RESEND);
        Ok(Arc::new(Alertmanager {
            client: context.client()?,
            endpoint: format!("{}/api/v2/alerts", self.url.trim_end_matches('/')),
            labels: self.labels.clone(),
            timeout: context.timeout,
            valid_for: resend.saturating_mul(4),
        }))
    }
}

/// `now + after`, or now when that lies beyond what the clock can hold.
fn later(after: Duration) -> SystemTime {
    let now = SystemTime::now();
    now.checked_add(after).unwrap_or(now)
}

/// One postable alert of the v2 API.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct PostableAlert {
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
    starts_at: String,
    ends_at: String,
    #[serde(rename = "generatorURL")]
    generator_url: String,
}

impl Alertmanager {
    fn labels(&self, notification: &Notification, severity: Severity) -> BTreeMap<String, String> {
        let mut labels = self.labels.clone();
        // A test (`bastion notify test`) must reach Alertmanager's routes without paging
        // anyone as a failure would: its own alertname and an `info` severity.
        let (alertname, severity) = match notification.event {
            Event::Test => (TEST_ALERTNAME, "info"),
            Event::Firing | Event::Resolved => (ALERTNAME, severity.as_str()),
        };
        labels.insert("alertname".to_string(), alertname.to_string());
        labels.insert("check".to_string(), notification.check.clone());
        labels.insert("type".to_string(), notification.check_type.to_string());
        labels.insert("severity".to_string(), severity.to_string());
        labels
    }

    fn alerts(&self, notification: &Notification) -> Vec<PostableAlert> {
        let mut annotations = BTreeMap::new();
        annotations.insert("summary".to_string(), notification.summary());
        annotations.insert("description".to_string(), notification.details());
        annotations.insert("episode_id".to_string(), notification.episode_id.clone());
        if let Some(reason) = notification.reason {
            annotations.insert("end_reason".to_string(), reason.as_str().to_string());
        }
        annotations.insert(
            "failing_instances".to_string(),
            format!("{} of {}", notification.failing, notification.instances),
        );
        let starts_at = super::rfc3339(notification.started_at);
        let ends_at = match notification.event {
            Event::Resolved => notification.at,
            Event::Firing => later(self.valid_for),
            // A test alert ends by itself: nothing will resolve it.
            Event::Test => later(TEST_ALERT_LASTS),
        };
        let mut alerts = vec![PostableAlert {
            labels: self.labels(notification, notification.severity),
            annotations: annotations.clone(),
            starts_at: starts_at.clone(),
            ends_at: super::rfc3339(ends_at),
            generator_url: notification.link.clone(),
        }];
        // The severity label is part of the alert's identity: the alert of the old severity
        // ends now, or it would stay active beside the new one until it expired.
        if let Some(previous) = notification.previous_severity {
            if previous != notification.severity && notification.event == Event::Firing {
                alerts.push(PostableAlert {
                    labels: self.labels(notification, previous),
                    annotations,
                    starts_at,
                    ends_at: super::rfc3339(notification.at),
                    generator_url: notification.link.clone(),
                });
            }
        }
        alerts
    }
}

impl Notifier for Alertmanager {
    fn send<'a>(
        &'a self,
        notification: &'a Notification,
    ) -> BoxFuture<'a, Result<Answer, SendError>> {
        Box::pin(async move {
            let body = serde_json::to_vec(&self.alerts(notification))
                .map_err(|error| SendError::Reject(format!("cannot encode the alert: {error}")))?;
            post_json(&self.client, &self.endpoint, body, &[], self.timeout).await
        })
    }

    fn default_repeat(&self) -> Option<Duration> {
        Some(ALERTMANAGER_RESEND)
    }
}
