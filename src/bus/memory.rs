//! The embedded bus: subjects and queue groups inside one process, no broker. Each subscription
//! is a bounded channel; a publish that finds one full drops the message for that subscriber
//! and reports it, so a stuck consumer can never stall the checker or grow memory.

use super::{BoxFuture, Bus, BusError, Message, Subscription};
use crate::messages::Payload;
use crate::subjects::{tokens_match, valid_subject};
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

/// Messages a subscription may hold before publishes to it are refused.
pub const DEFAULT_SUBSCRIPTION_CAPACITY: usize = 4096;

#[derive(Debug)]
struct Subscriber {
    /// The subscription's subject pattern, split into its tokens once.
    pattern: Vec<Box<str>>,
    queue_group: Option<String>,
    sender: mpsc::Sender<Message>,
}

#[derive(Debug, Default)]
struct Inner {
    subscribers: Vec<Subscriber>,
    /// Round-robin position per queue group.
    next_in_group: HashMap<String, usize>,
    /// Scratch for `deliver`, kept for its room: the subscribers in a queue group that a
    /// message's subject matches.
    in_groups: Vec<usize>,
}

#[derive(Debug)]
pub struct MemoryBus {
    inner: Mutex<Inner>,
    capacity: usize,
    next_inbox: AtomicU64,
}

impl Default for MemoryBus {
    fn default() -> Self {
        MemoryBus::new(DEFAULT_SUBSCRIPTION_CAPACITY)
    }
}

impl MemoryBus {
    pub fn new(capacity: usize) -> MemoryBus {
        MemoryBus {
            inner: Mutex::new(Inner::default()),
            capacity: capacity.max(1),
            next_inbox: AtomicU64::new(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // The state stays consistent between statements, so a poisoned lock is still usable.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn deliver(
        &self,
        subject: &str,
        payload: Payload,
        reply: Option<String>,
    ) -> Result<(), BusError> {
        let mut inner = self.lock();
        inner
            .subscribers
            .retain(|subscriber| !subscriber.sender.is_closed());
        // One subject for every copy: a message is delivered to several subscribers.
        let message = Message {
            subject: Arc::from(subject),
            payload,
            reply,
        };
        let mut delivered_to_any = false;
        let mut full = false;
        let Inner {
            subscribers,
            next_in_group,
            in_groups,
        } = &mut *inner;
        in_groups.clear();
        for (index, subscriber) in subscribers.iter().enumerate() {
            let pattern = subscriber.pattern.iter().map(|token| &**token);
            if !tokens_match(pattern, subject.split('.')) {
                continue;
            }
            match &subscriber.queue_group {
                Some(_) => in_groups.push(index),
                None => {
                    delivered_to_any = true;
                    full |= subscriber.sender.try_send(message.clone()).is_err();
                }
            }
        }
        delivered_to_any |= !in_groups.is_empty();
        // Each queue group the subject reaches, once, with its members in subscription order
        // (a handful: a quadratic walk costs less than a list per group per message).
        let group_of = |index: usize| subscribers[index].queue_group.as_deref();
        for (position, &first) in in_groups.iter().enumerate() {
            let group = group_of(first);
            if in_groups[..position]
                .iter()
                .any(|&earlier| group_of(earlier) == group)
            {
                continue;
            }
            let Some(group) = group else { continue };
            let members = || {
                in_groups[position..]
                    .iter()
                    .filter(|&&index| group_of(index) == Some(group))
                    .map(|&index| &subscribers[index].sender)
            };
            let count = members().count();
            let start = next_in_group.get(group).copied().unwrap_or(0);
            // One member gets it: the next in turn that has room.
            let delivered = (0..count).find(|offset| {
                members()
                    .nth((start + offset) % count)
                    .is_some_and(|member| member.try_send(message.clone()).is_ok())
            });
            match (delivered, next_in_group.get_mut(group)) {
                (Some(offset), Some(next)) => *next = start + offset + 1,
                (Some(offset), None) => {
                    next_in_group.insert(group.to_string(), start + offset + 1);
                }
                (None, _) => full = true,
            }
        }
        if full {
            return Err(BusError::Full(subject.to_string()));
        }
        if !delivered_to_any && message.reply.is_some() {
            return Err(BusError::NoResponders(subject.to_string()));
        }
        Ok(())
    }

    fn subscribe_now(
        &self,
        pattern: &str,
        queue_group: Option<&str>,
    ) -> Result<Subscription, BusError> {
        if !valid_subject(pattern, true) {
            return Err(BusError::Subject(pattern.to_string()));
        }
        let (sender, receiver) = mpsc::channel(self.capacity);
        self.lock().subscribers.push(Subscriber {
            pattern: pattern.split('.').map(Box::from).collect(),
            queue_group: queue_group.map(str::to_string),
            sender,
        });
        Ok(Subscription::new(receiver))
    }
}

impl Bus for MemoryBus {
    fn in_process(&self) -> bool {
        true
    }

    fn publish(&self, subject: &str, payload: Payload) -> BoxFuture<'_, Result<(), BusError>> {
        let result = if valid_subject(subject, false) {
            self.deliver(subject, payload, None)
        } else {
            Err(BusError::Subject(subject.to_string()))
        };
        Box::pin(async move { result })
    }

    fn subscribe(
        &self,
        pattern: &str,
        queue_group: Option<&str>,
    ) -> BoxFuture<'_, Result<Subscription, BusError>> {
        let result = self.subscribe_now(pattern, queue_group);
        Box::pin(async move { result })
    }

    fn request(
        &self,
        subject: &str,
        payload: Bytes,
        timeout: Duration,
    ) -> BoxFuture<'_, Result<Bytes, BusError>> {
        let inbox = format!(
            "_INBOX.memory.{}",
            self.next_inbox.fetch_add(1, Ordering::Relaxed)
        );
        let subject = subject.to_string();
        Box::pin(async move {
            if !valid_subject(&subject, false) {
                return Err(BusError::Subject(subject));
            }
            let mut replies = self.subscribe_now(&inbox, None)?;
            self.deliver(&subject, Payload::Bytes(payload), Some(inbox))?;
            match tokio::time::timeout(timeout, replies.next()).await {
                Ok(Some(reply)) => reply.payload.to_bytes().map_err(|error| {
                    BusError::Nats(format!("a typed reply could not be encoded: {error}"))
                }),
                Ok(None) => Err(BusError::Closed),
                Err(_) => Err(BusError::TimedOut(subject)),
            }
        })
    }

    fn is_connected(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn plain_subscribers_all_receive_and_queue_groups_share() {
        let bus = MemoryBus::new(16);
        let mut plain = bus.subscribe("b.results.>", None).await.unwrap();
        let mut first = bus
            .subscribe("b.checks.http", Some("runners"))
            .await
            .unwrap();
        let mut second = bus
            .subscribe("b.checks.http", Some("runners"))
            .await
            .unwrap();
        for n in 0..4u8 {
            bus.publish("b.checks.http", Bytes::from(vec![n]).into())
                .await
                .unwrap();
        }
        bus.publish("b.results.web", Bytes::from_static(b"r").into())
            .await
            .unwrap();
        let mut got = Vec::new();
        for _ in 0..2 {
            got.push(first.next().await.unwrap().payload.to_bytes().unwrap()[0]);
            got.push(second.next().await.unwrap().payload.to_bytes().unwrap()[0]);
        }
        got.sort_unstable();
        assert_eq!(
            got,
            vec![0, 1, 2, 3],
            "each request reaches exactly one member"
        );
        let result = plain.next().await.unwrap();
        assert_eq!(&*result.subject, "b.results.web");
    }

    #[tokio::test]
    async fn a_full_subscriber_refuses_instead_of_blocking() {
        let bus = MemoryBus::new(2);
        let mut slow = bus.subscribe("x", None).await.unwrap();
        bus.publish("x", Bytes::from_static(b"1").into())
            .await
            .unwrap();
        bus.publish("x", Bytes::from_static(b"2").into())
            .await
            .unwrap();
        let error = bus
            .publish("x", Bytes::from_static(b"3").into())
            .await
            .unwrap_err();
        assert!(matches!(error, BusError::Full(_)), "{error}");
        assert_eq!(
            &slow.next().await.unwrap().payload.to_bytes().unwrap()[..],
            b"1"
        );
        assert_eq!(
            &slow.next().await.unwrap().payload.to_bytes().unwrap()[..],
            b"2"
        );
    }

    #[tokio::test]
    async fn dropped_subscriptions_stop_receiving_and_bad_subjects_are_refused() {
        let bus = MemoryBus::new(1);
        let dropped = bus.subscribe("x", None).await.unwrap();
        drop(dropped);
        bus.publish("x", Bytes::new().into()).await.unwrap();
        bus.publish("x", Bytes::new().into()).await.unwrap();
        assert!(bus.publish("x.*", Bytes::new().into()).await.is_err());
        assert!(bus.subscribe("a..b", None).await.is_err());
    }

    #[tokio::test]
    async fn requests_get_the_reply_or_a_clear_error() {
        let bus = std::sync::Arc::new(MemoryBus::new(4));
        let error = bus
            .request("t.http", Bytes::new(), Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(matches!(error, BusError::NoResponders(_)), "{error}");
        let mut server = bus.subscribe("t.http", Some("g")).await.unwrap();
        let responder = {
            let bus = std::sync::Arc::clone(&bus);
            tokio::spawn(async move {
                let request = server.next().await.unwrap();
                let mut answer = b"re:".to_vec();
                answer.extend_from_slice(&request.payload.to_bytes().unwrap());
                bus.publish(&request.reply.unwrap(), Bytes::from(answer).into())
                    .await
                    .unwrap();
            })
        };
        let reply = bus
            .request(
                "t.http",
                Bytes::from_static(b"ping"),
                Duration::from_secs(30),
            )
            .await
            .unwrap();
        assert_eq!(&reply[..], b"re:ping");
        responder.await.unwrap();
    }
}
