//! The bus between the checker and the runners: subjects carrying payloads, with
//! NATS-style wildcards and queue groups. It is a trait so that the embedded bus (`memory`)
//! and a broker can stand behind the same calls. Check code never touches the bus; only the
//! checker, the runner and the result sink do. Publishing never blocks on a slow consumer:
//! every subscription is bounded, and what does not fit is refused and counted by the caller.

pub mod memory;
mod metrics;
pub mod nats;

pub use metrics::BusMetrics;

use crate::messages::Payload;
use bytes::Bytes;
use std::future::Future;
use std::pin::Pin;
use tokio::sync::mpsc;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One message as delivered to a subscriber.
#[derive(Debug, Clone)]
pub struct Message {
    /// Shared: the embedded bus hands one message to several subscribers.
    pub subject: std::sync::Arc<str>,
    /// Bytes, or on the embedded bus the typed value itself.
    pub payload: Payload,
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
    #[error("JetStream: {0}{hint}", hint = jetstream_hint(.0))]
    JetStream(String),
    #[error("{what}: the NATS server refused {replicas} replicas ({reason}); set bus.nats.replicas to the number of JetStream servers in the cluster (3 or 5), or to 1 for a single server")]
    Replicas {
        what: String,
        replicas: usize,
        reason: String,
    },
    #[error("NATS: {0}")]
    Nats(String),
}

/// What to fix, for a JetStream error that says there is no JetStream to use: async-nats
/// words a server started without `-js` "jetstream unavailable" (no responders), and a server
/// with JetStream whose account has none "jetstream not enabled for account" (10039), which
/// the account's configuration fixes, not `-js`. Other JetStream errors (a lease renewal that
/// timed out, a stream still being created) say nothing of the kind, so they get no hint.
fn jetstream_hint(error: &str) -> &'static str {
    let error = error.to_ascii_lowercase();
    if error.contains("not enabled for account") || error.contains("error code 10039") {
        "; JetStream must be enabled for the account bastion connects as (`jetstream: enabled` in the account's block of the server's configuration)"
    } else if ["jetstream unavailable", "not enabled", "no responders"]
        .iter()
        .any(|sign| error.contains(sign))
    {
        "; JetStream must be enabled on the server (nats-server -js)"
    } else {
        ""
    }
}

/// A subscription whose bus is gone: nothing more will arrive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubscriptionClosed;

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

    /// A message already delivered, without waiting: `Ok(None)` when none waits, `Err` once
    /// the bus is gone and none is left.
    pub fn try_next_or_closed(&mut self) -> Result<Option<Message>, SubscriptionClosed> {
        match self.receiver.try_recv() {
            Ok(message) => Ok(Some(message)),
            Err(mpsc::error::TryRecvError::Empty) => Ok(None),
            Err(mpsc::error::TryRecvError::Disconnected) => Err(SubscriptionClosed),
        }
    }

    /// The next message, or None once the bus is gone.
    pub async fn next(&mut self) -> Option<Message> {
        self.receiver.recv().await
    }
}

pub trait Bus: Send + Sync + std::fmt::Debug {
    /// Publishes without waiting for any consumer. A bus that leaves the process encodes a
    /// typed payload to its JSON; the embedded bus hands it on as it is.
    fn publish(&self, subject: &str, payload: Payload) -> BoxFuture<'_, Result<(), BusError>>;

    /// Whether messages stay in this process, so typed payloads travel without encoding.
    fn in_process(&self) -> bool {
        false
    }

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

    /// Waits until every subscription made so far is in effect where messages are routed, so
    /// a message another process publishes from then on reaches them (on a NATS cluster: on
    /// this process's own server). Called once an agent has made its subscriptions, before it
    /// reports ready. True once they are; the embedded bus's take effect when made.
    fn settle(&self) -> BoxFuture<'_, bool> {
        Box::pin(async { true })
    }
}

/// Where the lease is kept. Each write returns the lease's new revision; writes are
/// compare-and-set on it, and the store forgets the lease once a TTL has passed since the
/// last write.
pub trait LeaseStore: Send + Sync {
    /// Takes the lease if nobody holds it. `None`: somebody does.
    fn acquire<'a>(&'a self, holder: &'a str) -> BoxFuture<'a, Result<Option<u64>, BusError>>;
    /// Extends the lease held at `revision`. `None`: it is no longer ours.
    fn renew<'a>(
        &'a self,
        holder: &'a str,
        revision: u64,
    ) -> BoxFuture<'a, Result<Option<u64>, BusError>>;
    /// Gives the lease up now, so a standby takes over without waiting for the TTL.
    fn release(&self, revision: u64) -> BoxFuture<'_, Result<(), BusError>>;
}
