//! Slack incoming webhooks: `POST` of `{"text": ..., "blocks": [...]}` to the webhook URL
//! (which embeds a token, so it is best read from `url_file`). `text` is the fallback shown in
//! notifications; the blocks carry the summary, the failing instances and the link. Slack
//! answers `ok`, or 4xx with a reason such as `invalid_payload`, or 429 with `Retry-After`.

use super::post::post_json;
use super::{
    url_or_file, wrong_kind, Answer, BuildContext, Event, Notification, Notifier, NotifierKind,
    NotifyError, Secret, SendError,
};
use crate::config::{NotifierConfig, NotifierSpec};
use futures_util::future::BoxFuture;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

pub const KIND: NotifierKind = NotifierKind {
    name: "slack",
    build,
};

/// Slack cuts a section's text at 3000 characters.
const SECTION_CHARS: usize = 2900;

#[derive(Debug)]
struct Slack {
    client: reqwest::Client,
    url: Secret,
    timeout: Duration,
}

fn build(
    config: &NotifierConfig,
    context: &BuildContext,
) -> Result<Arc<dyn Notifier>, NotifyError> {
    let NotifierSpec::Slack(spec) = &config.spec else {
        return Err(wrong_kind(config, "slack"));
    };
    let url = url_or_file(config, &spec.url, &spec.url_file)?;
    Ok(Arc::new(Slack {
        client: context.client_for(config)?,
        url,
        timeout: config.timeout,
    }))
}

/// The message body.
pub fn message(notification: &Notification) -> serde_json::Value {
    let emoji = match notification.event {
        Event::Firing => ":red_circle:",
        Event::Resolved => ":large_green_circle:",
        Event::Test => ":white_check_mark:",
    };
    let summary = format!("{emoji} {}", notification.summary());
    let mut detail: String = notification
        .failures
        .iter()
        .map(|failure| format!("• `{}` {}\n", failure.instance, failure.reason()))
        .collect();
    if notification.failing > notification.failures.len() {
        detail.push_str(&format!(
            "• and {} more\n",
            notification.failing - notification.failures.len()
        ));
    }
    let detail: String = detail.chars().take(SECTION_CHARS).collect();
    let mut blocks = vec![json!({
        "type": "section",
        "text": {"type": "mrkdwn", "text": summary.chars().take(SECTION_CHARS).collect::<String>()}
    })];
    if !detail.is_empty() {
        blocks.push(json!({
            "type": "section",
            "text": {"type": "mrkdwn", "text": detail}
        }));
    }
    blocks.push(json!({
        "type": "context",
        "elements": [{
            "type": "mrkdwn",
            "text": format!("episode `{}` · since {} · <{}|API>",
                notification.episode_id,
                super::rfc3339(notification.started_at),
                notification.link)
        }]
    }));
    json!({ "text": summary, "blocks": blocks })
}

impl Notifier for Slack {
    fn send<'a>(
        &'a self,
        notification: &'a Notification,
    ) -> BoxFuture<'a, Result<Answer, SendError>> {
        Box::pin(async move {
            let body = serde_json::to_vec(&message(notification)).map_err(|error| {
                SendError::Reject(format!("cannot encode the message: {error}"))
            })?;
            post_json(&self.client, self.url.expose(), body, &[], self.timeout).await
        })
    }
}
