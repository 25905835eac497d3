//! The generic webhook: `POST` of a versioned JSON body (`"version": 1`, documented in
//! docs/notifications.md and the README) to `url` or the URL in `url_file`. With
//! `secret_file`, the body is signed: `X-Bastion-Signature: sha256=<hex HMAC-SHA256 of the
//! raw body under the key>`. Every notification of one episode carries the same
//! `episode_id`, so a receiver can drop repeats. A new field may be added within version 1;
//! renaming or removing one makes version 2.

use super::post::post_json;
use super::{
    one_url, read_secret, url_or_file, Answer, BuildContext, Event, FailingInstance, Notification,
    Notifier, ReceiverError, ReceiverSpec, Secret, SendError,
};
use crate::model::{EndReason, Severity};
use crate::problem::{Bound, Entry, Problem};
use futures_util::future::BoxFuture;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// The body's version.
pub const WEBHOOK_VERSION: u32 = 1;
/// The signature header.
pub const SIGNATURE_HEADER: &str = "x-bastion-signature";

#[derive(Debug)]
struct Webhook {
    client: reqwest::Client,
    url: Secret,
    key: Option<ring::hmac::Key>,
    timeout: Duration,
}

/// Settings of a `type = "webhook"` notifier.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookSpec {
    /// Where the JSON body is POSTed. Use `url_file` instead when the URL holds a token.
    #[serde(default)]
    pub url: Option<String>,
    /// File holding the URL (one line), kept out of the config and the logs.
    #[serde(default)]
    pub url_file: Option<PathBuf>,
    /// File holding the HMAC-SHA256 key; each body is then signed in `X-Bastion-Signature`.
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
}

/// Its keys hold no number or duration.
pub const BOUNDS: &[Bound] = &[];

impl ReceiverSpec for WebhookSpec {
    fn validate(&self, entry: &Entry) -> Result<(), Problem> {
        one_url(entry, &self.url, &self.url_file)
    }

    fn build(&self, context: &BuildContext) -> Result<Arc<dyn Notifier>, ReceiverError> {
        let url = url_or_file(context, &self.url, &self.url_file)?;
        let key = match &self.secret_file {
            Some(file) => {
                let secret = read_secret(context.notifier, file)?;
                Some(ring::hmac::Key::new(
                    ring::hmac::HMAC_SHA256,
                    secret.expose().as_bytes(),
                ))
            }
            None => None,
        };
        Ok(Arc::new(Webhook {
            client: context.client()?,
            url,
            key,
            timeout: context.timeout,
        }))
    }
}

/// The webhook body, version 1.
#[derive(Debug, Serialize)]
pub struct WebhookBody<'a> {
    pub version: u32,
    /// `firing`, `resolved` or `test`.
    pub event: Event,
    /// A firing notification sent again while the check still fails.
    pub reminder: bool,
    pub episode_id: &'a str,
    pub check: WebhookCheck<'a>,
    /// `critical` (FAIL) or `warning` (WARN).
    pub severity: Severity,
    /// The check's state: `OK`, `WARN`, `FAIL_WAIT`, `FAIL`, `PASS_WAIT`.
    pub state: String,
    pub summary: String,
    #[serde(with = "crate::time_format")]
    pub started_at: SystemTime,
    #[serde(with = "crate::time_format")]
    pub at: SystemTime,
    #[serde(with = "crate::time_format")]
    pub sent_at: SystemTime,
    /// For `resolved`: why the episode ended (`recovered`, `check_changed`, `check_removed`);
    /// null otherwise.
    pub end_reason: Option<EndReason>,
    pub failing: usize,
    pub instances: usize,
    pub failures: &'a [FailingInstance],
    /// For a check with `locations`: what each location saw in its latest run. Absent
    /// otherwise.
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    pub locations: &'a [super::LocationLine],
    pub agent: &'a str,
}

#[derive(Debug, Serialize)]
pub struct WebhookCheck<'a> {
    pub name: &'a str,
    pub r#type: String,
    pub link: &'a str,
}

/// The body of `notification`.
pub fn body(notification: &Notification) -> WebhookBody<'_> {
    WebhookBody {
        version: WEBHOOK_VERSION,
        event: notification.event,
        reminder: notification.reminder,
        episode_id: &notification.episode_id,
        check: WebhookCheck {
            name: &notification.check,
            r#type: notification.check_type.to_string(),
            link: &notification.link,
        },
        severity: notification.severity,
        state: notification.state.to_string(),
        summary: notification.summary(),
        started_at: notification.started_at,
        at: notification.at,
        sent_at: SystemTime::now(),
        end_reason: notification.reason,
        failing: notification.failing,
        instances: notification.instances,
        failures: &notification.failures,
        locations: &notification.locations,
        agent: &notification.agent,
    }
}

/// `sha256=` and the hex HMAC-SHA256 of `body` under `key`.
pub fn signature(key: &ring::hmac::Key, body: &[u8]) -> String {
    let tag = ring::hmac::sign(key, body);
    let hex: String = tag
        .as_ref()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    format!("sha256={hex}")
}

impl Notifier for Webhook {
    fn send<'a>(
        &'a self,
        notification: &'a Notification,
    ) -> BoxFuture<'a, Result<Answer, SendError>> {
        Box::pin(async move {
            let body = serde_json::to_vec(&body(notification))
                .map_err(|error| SendError::Reject(format!("cannot encode the body: {error}")))?;
            let mut headers = Vec::new();
            if let Some(key) = &self.key {
                headers.push((SIGNATURE_HEADER, signature(key, &body)));
            }
            post_json(
                &self.client,
                self.url.expose(),
                body,
                &headers,
                self.timeout,
            )
            .await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 4231 test case 2.
    #[test]
    fn signature_is_the_hmac_sha256_of_the_body() {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"Jefe");
        assert_eq!(
            signature(&key, b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
