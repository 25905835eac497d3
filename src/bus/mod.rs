//! The bus between the checker and the runners: subjects carrying byte payloads, with
//! NATS-style wildcards and queue groups. It is a trait so that the embedded bus (`memory`)
//! and a broker can stand behind the same calls. Check code never touches the bus; only the
//! checker, the runner and the result sink do. Publishing never blocks on a slow consumer:
//! every subscription is bounded, and what does not fit is refused and counted by the caller.

pub mod memory;
pub mod nats;

use bytes::Bytes;
use std::future::Future;
use std::pin::Pin;
use tokio::sync::mpsc;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One message as delivered to a subscriber.
#[derive(Debug, Clone)]
pub struct Message {
    pub subject: String,
    pub payload: Bytes,
    /// Where a request wants its reply, for request/reply subjects.
    pub reply: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("subject `{0}` is not valid: use dot-separated tokens, with `*` and a final `>` only in subscriptions")]
    Subject(String),
    #[error("a subscriber of `{0}` is full; the message was dropped")]
    Full(String),
    #[error("the bus is closed")]
    Closed,
    #[error("not connected to the bus; the message was dropped")]
    Disconnected,
    #[error("nobody serves `{0}` on this bus")]
    NoResponders(String),
    #[error("no reply on `{0}` in time")]
    TimedOut(String),
    #[error("cannot read {what} from {path}: {reason}")]
    Secret {
        what: &'static str,
        path: std::path::PathBuf,
        reason: String,
    },
    #[error("the NATS server at {servers} refused bastion's credentials ({reason}); check the token, user/password, creds or nkey file in [bus.nats]")]
    Auth { servers: String, reason: String },
    #[error("cannot connect to NATS at {servers}: {reason}")]
    Connect { servers: String, reason: String },
    #[error("no NATS server at {servers} answered within {waited}; start one, fix bus.nats.url, or raise the connect timeout")]
    ConnectTimeout { servers: String, waited: String },
    #[error("JetStream: {0}; JetStream must be enabled on the server (nats-server -js)")]
    JetStream(String),
    #[error("NATS: {0}")]
    Nats(String),
}

/// A stream of messages for one subscription. Dropping it unsubscribes.
#[derive(Debug)]
pub struct Subscription {
    receiver: mpsc::Receiver<Message>,
}

impl Subscription {
    pub fn new(receiver: mpsc::Receiver<Message>) -> Subscription {
        Subscription { receiver }
    }

    /// A message already delivered, without waiting.
    pub fn try_next(&mut self) -> Option<Message> {
        self.receiver.try_recv().ok()
    }

    /// The next message, or None once the bus is gone.
    pub async fn next(&mut self) -> Option<Message> {
        self.receiver.recv().await
    }
}

pub trait Bus: Send + Sync + std::fmt::Debug {
    /// Publishes without waiting for any consumer.
    fn publish(&self, subject: &str, payload: Bytes) -> BoxFuture<'_, Result<(), BusError>>;

    /// Subscribes to a subject pattern (`*` matches one token, a final `>` the rest). Within a
    /// queue group, each message goes to one member only.
    fn subscribe(
        &self,
        pattern: &str,
        queue_group: Option<&str>,
    ) -> BoxFuture<'_, Result<Subscription, BusError>>;

    /// Sends a request and waits up to `timeout` for the first reply.
    fn request(
        &self,
        subject: &str,
        payload: Bytes,
        timeout: std::time::Duration,
    ) -> BoxFuture<'_, Result<Bytes, BusError>>;

    /// Whether the bus can carry messages right now.
    fn is_connected(&self) -> bool;

    /// Waits, up to `within`, until what was accepted for publishing has left the process.
    fn flush(&self, within: std::time::Duration) -> BoxFuture<'_, ()> {
        let _ = within;
        Box::pin(async {})
    }
}

/// The subject names, all under one prefix.
#[derive(Debug, Clone)]
pub struct Subjects {
    prefix: String,
}

/// The queue group that runners share check requests through.
pub const RUNNER_QUEUE_GROUP: &str = "bastion-runners";

impl Subjects {
    pub fn new(prefix: &str) -> Subjects {
        Subjects {
            prefix: prefix.to_string(),
        }
    }

    pub fn checks(&self, check_type: crate::checks::CheckType) -> String {
        format!("{}.checks.{}", self.prefix, check_type.as_str())
    }

    pub fn results(&self, check: &str) -> String {
        format!("{}.results.{check}", self.prefix)
    }

    pub fn all_results(&self) -> String {
        format!("{}.results.>", self.prefix)
    }

    /// State transitions of one check.
    pub fn events(&self, check: &str) -> String {
        format!("{}.events.{check}", self.prefix)
    }

    /// Request/reply: run this check definition now and reply with its result.
    pub fn test(&self, check_type: crate::checks::CheckType) -> String {
        format!("{}.test.{}", self.prefix, check_type.as_str())
    }

    /// Where an agent says it is alive. The id is reduced to one subject token.
    pub fn heartbeat(&self, agent_id: &str) -> String {
        format!("{}.heartbeat.{}", self.prefix, subject_token(agent_id))
    }

    pub fn all_heartbeats(&self) -> String {
        format!("{}.heartbeat.>", self.prefix)
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }
}

/// `text` as one subject token: anything but letters, digits, `-` and `_` becomes `_`.
pub fn subject_token(text: &str) -> String {
    let token: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if token.is_empty() {
        "_".to_string()
    } else {
        token
    }
}

impl Default for Subjects {
    fn default() -> Self {
        Subjects::new("bastion")
    }
}

/// Whether `subject` (no wildcards) matches `pattern` (NATS rules).
pub fn subject_matches(pattern: &str, subject: &str) -> bool {
    let mut subject_tokens = subject.split('.');
    for token in pattern.split('.') {
        if token == ">" {
            return subject_tokens.next().is_some();
        }
        match subject_tokens.next() {
            Some(actual) if token == "*" || token == actual => {}
            _ => return false,
        }
    }
    subject_tokens.next().is_none()
}

/// Valid: non-empty dot-separated tokens without spaces; wildcards only where allowed.
pub fn valid_subject(subject: &str, wildcards: bool) -> bool {
    let tokens: Vec<&str> = subject.split('.').collect();
    tokens.iter().enumerate().all(|(index, token)| {
        !token.is_empty()
            && !token.contains(char::is_whitespace)
            && match *token {
                "*" => wildcards,
                ">" => wildcards && index == tokens.len() - 1,
                other => !other.contains(['*', '>']),
            }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_like_nats() {
        assert!(subject_matches("bastion.results.>", "bastion.results.web"));
        assert!(subject_matches(
            "bastion.results.>",
            "bastion.results.web.x"
        ));
        assert!(!subject_matches("bastion.results.>", "bastion.results"));
        assert!(subject_matches("bastion.*.http", "bastion.checks.http"));
        assert!(!subject_matches("bastion.*.http", "bastion.checks.tcp"));
        assert!(subject_matches(
            "bastion.checks.http",
            "bastion.checks.http"
        ));
        assert!(!subject_matches(
            "bastion.checks.http",
            "bastion.checks.http.x"
        ));
        assert!(!subject_matches(
            "bastion.checks.http.x",
            "bastion.checks.http"
        ));
    }

    #[test]
    fn subjects_are_validated() {
        assert!(valid_subject("bastion.results.>", true));
        assert!(!valid_subject("bastion.results.>", false));
        assert!(!valid_subject("bastion.>.x", true));
        assert!(!valid_subject("bastion..x", false));
        assert!(!valid_subject("bastion.a b", false));
        assert!(!valid_subject("bastion.a*", true));
    }
}
