//! Slack incoming webhooks: `POST` of `{"text": ..., "blocks": [...]}` to the webhook URL
//! (which embeds a token, so it is best read from `url_file`). `text` is the fallback shown in
//! notifications; the blocks carry the summary, the failing instances and the link. Slack
//! answers `ok`, or 4xx with a reason such as `invalid_payload`, or 429 with `Retry-After`.

use super::post::post_json;
use super::{
    one_url, url_or_file, Answer, BuildContext, Event, Notification, Notifier, ReceiverError,
    ReceiverSpec, Secret, SendError,
};
use crate::problem::{Bound, Entry, Problem};
use futures_util::future::BoxFuture;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::json;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Slack cuts a section's text at 3000 characters.
const SECTION_CHARS: usize = 2900;

#[derive(Debug)]
struct Slack {
    client: reqwest::Client,
    url: Secret,
    timeout: Duration,
}

/// Settings of a `type = "slack"` notifier.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SlackSpec {
    /// The incoming-webhook URL. It embeds a token: prefer `url_file`.
    #[serde(default)]
    pub url: Option<String>,
    /// File holding the incoming-webhook URL (one line).
    #[serde(default)]
    pub url_file: Option<PathBuf>,
}

/// Its keys hold no number or duration.
pub const BOUNDS: &[Bound] = &[];

impl ReceiverSpec for SlackSpec {
    fn validate(&self, entry: &Entry) -> Result<(), Problem> {
        one_url(entry, &self.url, &self.url_file)
    }

    fn build(&self, context: &BuildContext) -> Result<Arc<dyn Notifier>, ReceiverError> {
        let url = url_or_file(context, &self.url, &self.url_file)?;
        Ok(Arc::new(Slack {
            client: context.client()?,
            url,
            timeout: context.timeout,
        }))
    }
}

/// Text as Slack shows it literally: `&`, `<` and `>` are Slack's control characters
/// (`<!channel>` pings a channel, `<https://x|text>` makes a link), so every text that is not
/// bastion's own markup is escaped. Failure reasons quote the target, up to its body.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c => out.push(c),
        }
    }
    out
}

/// The message body.
pub fn message(notification: &Notification) -> serde_json::Value {
    let emoji = match notification.event {
        Event::Firing => ":red_circle:",
        Event::Resolved => ":large_green_circle:",
        Event::Test => ":white_check_mark:",
    };
    let summary = format!("{emoji} {}", escape(&notification.summary()));
    let mut detail: String = notification
        .failures
        .iter()
        .map(|failure| {
            format!(
                "• `{}` {}\n",
                escape(&failure.instance).replace('`', "'"),
                escape(&failure.reason())
            )
        })
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
                escape(&notification.link))
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A failing page that holds Slack markup: none of it may reach Slack as markup.
    #[test]
    fn text_from_the_target_is_escaped() {
        let hostile = "<!channel> <https://evil.example|Reset password> & <@U123>";
        let notification = crate::receivers::firing_with_assertion(hostile, Some(hostile));
        let text = message(&notification).to_string();
        assert!(!text.contains("<!channel>"), "{text}");
        assert!(!text.contains("<https://evil"), "{text}");
        assert!(!text.contains("<@U123>"), "{text}");
        assert!(text.contains("&lt;!channel&gt;"), "{text}");
        assert!(text.contains("&amp;"), "{text}");
        // bastion's own link stays a link.
        assert!(
            text.contains("<http://127.0.0.1:9464/api/v1/checks/web|API>"),
            "{text}"
        );
    }
}
