//! Delivery: one bounded queue and one task per notifier, so a slow or broken receiver delays
//! only its own notifications, never a probe, the schedule or another receiver. Notifications
//! leave in order. A full queue drops its oldest notification (counted as `dropped`). Each
//! notification gets up to `max_attempts` attempts, each bounded by the notifier's `timeout`;
//! network errors, timeouts, 408, 429 and 5xx are retried after an exponential backoff with
//! jitter (or the receiver's `Retry-After`, whichever is longer, capped at
//! `retry_backoff_max`); any other refusal is not retried (counted as `rejected`, logged as a
//! config problem).
//!
//! Each outcome goes back to routing (`Outcomes`): a receiver counts as told of an event only
//! once it accepted it, so one that never did is told again after a restart. Nothing is sent
//! before the agent's saved state holds what made it (the generation the notification was
//! queued at, waited for at most `WRITE_AHEAD_LIMIT`): a crash right after a first trigger
//! then still resumes that episode, instead of triggering a second one. At stop, what is
//! still queued or being retried is logged and counted (`unsent`); routing has kept it as not
//! yet accepted, so the next start sends it again.

use super::NotifyMetrics;
use crate::receivers::{Notification, Notifier, SendError};
use crate::saved_state::SavedState;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How long a notification waits for the saved state to hold what made it; past it, it is
/// sent anyway (a slow disk must not hold an alert back).
pub const WRITE_AHEAD_LIMIT: Duration = Duration::from_secs(2);

/// What became of one notification at one receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The receiver accepted it.
    Accepted,
    /// The receiver refused it (a 4xx other than 408 and 429): the notifier's settings are
    /// wrong, and sending it again would be refused again.
    Refused,
    /// Given up after its attempts, or dropped from a full queue: the receiver may take it
    /// later (routing sends it again).
    GaveUp,
    /// Still queued or being retried when the agent stopped.
    Unsent,
}

/// Where outcomes go: routing, which remembers who accepted what.
pub trait Outcomes: Send + Sync + std::fmt::Debug {
    fn outcome(&self, notifier: &str, notification: &Notification, outcome: Outcome);
}

/// A notification waiting for delivery, and the generation of the saved state it waits for.
#[derive(Debug)]
struct Queued {
    notification: Arc<Notification>,
    generation: u64,
}

/// How deliveries to one notifier are retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub timeout: Duration,
    pub backoff: Duration,
    pub backoff_max: Duration,
}

impl RetryPolicy {
    /// The wait after failed attempt number `attempt` (1-based): `backoff * 2^(attempt-1)`,
    /// capped, then jittered into its upper half; never shorter than `retry_after`, but capped
    /// at `backoff_max` even then.
    pub fn wait(&self, attempt: u32, retry_after: Option<Duration>, jitter: f64) -> Duration {
        let exponent = attempt.saturating_sub(1).min(30);
        let base = self
            .backoff
            .saturating_mul(1u32 << exponent)
            .min(self.backoff_max);
        let jittered = base.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0));
        jittered
            .max(retry_after.unwrap_or(Duration::ZERO))
            .min(self.backoff_max)
    }
}

/// One notifier's queue and the task that empties it.
#[derive(Debug)]
pub struct Delivery {
    name: String,
    notifier: Arc<dyn Notifier>,
    policy: RetryPolicy,
    capacity: usize,
    pending: Mutex<VecDeque<Queued>>,
    /// Dropped from the full queue, to report from the delivery task: `push` is called
    /// with routing's state locked, so it must never call back into routing itself.
    dropped: Mutex<Vec<Arc<Notification>>>,
    wake: Notify,
    /// A notification is being delivered (it left the queue).
    busy: AtomicBool,
    metrics: NotifyMetrics,
    saved: Arc<SavedState>,
    outcomes: Weak<dyn Outcomes>,
}

impl Delivery {
    pub fn new(
        name: String,
        notifier: Arc<dyn Notifier>,
        policy: RetryPolicy,
        capacity: usize,
        metrics: NotifyMetrics,
        saved: Arc<SavedState>,
        outcomes: Weak<dyn Outcomes>,
    ) -> Delivery {
        metrics.register_notifier(&name);
        Delivery {
            name,
            notifier,
            policy,
            capacity: capacity.max(1),
            pending: Mutex::new(VecDeque::new()),
            dropped: Mutex::new(Vec::new()),
            wake: Notify::new(),
            busy: AtomicBool::new(false),
            metrics,
            saved,
            outcomes,
        }
    }

    /// Queues a notification, to be sent once the saved state holds its generation as it is
    /// now; when the queue is full, the oldest waiting one goes.
    pub fn push(&self, notification: Arc<Notification>) {
        let generation = self.saved.generation();
        let dropped = {
            let mut pending = self.lock();
            let dropped = if pending.len() >= self.capacity {
                pending.pop_front()
            } else {
                None
            };
            pending.push_back(Queued {
                notification,
                generation,
            });
            self.set_gauge(pending.len());
            dropped
        };
        if let Some(dropped) = dropped {
            tracing::warn!(notifier = %self.name, check = %dropped.notification.check, event = dropped.notification.event.as_str(), queue_size = self.capacity, "notification queue full; dropped the oldest notification");
            self.metrics.count(&self.name, "dropped");
            self.dropped
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .push(dropped.notification);
        }
        self.wake.notify_one();
    }

    /// Nothing waits and nothing is being delivered.
    pub fn idle(&self) -> bool {
        let pending = self.lock();
        pending.is_empty() && !self.busy.load(Ordering::Acquire)
    }

    /// Notifications waiting (not counting one being delivered).
    #[cfg(test)]
    pub fn waiting(&self) -> usize {
        self.lock().len()
    }

    /// Delivers queued notifications until `stop`; what is still queued or being retried
    /// then is logged and counted as `unsent` (routing sends it again after the next start).
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let mut interrupted: Option<Arc<Notification>> = None;
        loop {
            self.report_dropped();
            let next = {
                let mut pending = self.lock();
                let next = pending.pop_front();
                self.busy.store(next.is_some(), Ordering::Release);
                self.set_gauge(pending.len());
                next
            };
            match next {
                Some(queued) => {
                    let finished = self.deliver(&queued, &stop).await;
                    self.busy.store(false, Ordering::Release);
                    if !finished {
                        interrupted = Some(queued.notification);
                        break;
                    }
                }
                None => {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = self.wake.notified() => {}
                    }
                }
            }
        }
        self.report_dropped();
        let left: Vec<Arc<Notification>> = interrupted
            .into_iter()
            .chain(self.lock().drain(..).map(|queued| queued.notification))
            .collect();
        self.set_gauge(0);
        if !left.is_empty() {
            let firing = left
                .iter()
                .filter(|n| n.event == super::Event::Firing)
                .count();
            tracing::warn!(notifier = %self.name, unsent = left.len(), firing, resolved = left.len() - firing, "stopping with notifications not delivered; they are sent again after the next start");
            for notification in &left {
                self.metrics.count(&self.name, "unsent");
                self.report(notification, Outcome::Unsent);
            }
        }
    }

    /// Makes the attempts for one notification; false when `stop` interrupted them.
    async fn deliver(&self, queued: &Queued, stop: &CancellationToken) -> bool {
        let notification = &queued.notification;
        tokio::select! {
            _ = stop.cancelled() => return false,
            saved = self.saved.written(queued.generation, WRITE_AHEAD_LIMIT) => {
                if !saved {
                    tracing::warn!(notifier = %self.name, check = %notification.check, "the agent's state was not saved in time; notifying anyway");
                }
            }
        }
        for attempt in 1..=self.policy.max_attempts {
            let started = Instant::now();
            let outcome = tokio::select! {
                _ = stop.cancelled() => return false,
                outcome = tokio::time::timeout(self.policy.timeout, self.notifier.send(notification)) => outcome,
            };
            self.metrics
                .observe_attempt(&self.name, started.elapsed().as_secs_f64());
            let (reason, retry_after) = match outcome {
                Ok(Ok(answer)) => {
                    tracing::info!(notifier = %self.name, check = %notification.check, event = notification.event.as_str(), episode = %notification.episode_id, attempt, answer = %answer.0, "notification delivered");
                    self.metrics.count(&self.name, "sent");
                    self.report(notification, Outcome::Accepted);
                    return true;
                }
                Ok(Err(SendError::Reject(reason))) => {
                    tracing::error!(notifier = %self.name, check = %notification.check, event = notification.event.as_str(), %reason, "the receiver refused the notification; not retrying: check this notifier's settings");
                    self.metrics.count(&self.name, "rejected");
                    self.report(notification, Outcome::Refused);
                    return true;
                }
                Ok(Err(SendError::Retry { reason, after })) => (reason, after),
                Err(_) => (
                    format!(
                        "no answer within {}",
                        humantime::format_duration(self.policy.timeout)
                    ),
                    None,
                ),
            };
            if attempt == self.policy.max_attempts {
                tracing::error!(notifier = %self.name, check = %notification.check, event = notification.event.as_str(), attempts = attempt, %reason, "notification not delivered; giving up");
                self.metrics.count(&self.name, "failed");
                self.report(notification, Outcome::GaveUp);
                return true;
            }
            let wait = self.policy.wait(attempt, retry_after, jitter());
            tracing::warn!(notifier = %self.name, check = %notification.check, event = notification.event.as_str(), attempt, %reason, retry_in = %humantime::format_duration(wait), "notification not delivered yet; retrying");
            tokio::select! {
                _ = stop.cancelled() => return false,
                _ = tokio::time::sleep(wait) => {}
            }
        }
        true
    }

    /// Tells routing of the notifications dropped from the full queue since last time.
    fn report_dropped(&self) {
        let dropped = std::mem::take(
            &mut *self
                .dropped
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        );
        for notification in dropped {
            self.report(&notification, Outcome::GaveUp);
        }
    }

    fn report(&self, notification: &Notification, outcome: Outcome) {
        if let Some(outcomes) = self.outcomes.upgrade() {
            outcomes.outcome(&self.name, notification, outcome);
        }
    }

    fn set_gauge(&self, waiting: usize) {
        self.metrics.set_queue(&self.name, waiting);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Queued>> {
        // Pushes and pops leave the queue consistent; a poisoned one is still usable.
        self.pending
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A uniform number in [0, 1) from the system's random source (0.5 if it fails).
fn jitter() -> f64 {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 4];
    match ring::rand::SystemRandom::new().fill(&mut bytes) {
        Ok(()) => f64::from(u32::from_le_bytes(bytes)) / (f64::from(u32::MAX) + 1.0),
        Err(_) => 0.5,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    const POLICY: RetryPolicy = RetryPolicy {
        max_attempts: 8,
        timeout: Duration::from_secs(10),
        backoff: Duration::from_secs(1),
        backoff_max: Duration::from_secs(300),
    };

    #[test]
    fn backoff_doubles_with_jitter_in_its_upper_half_and_is_capped() {
        assert_eq!(POLICY.wait(1, None, 0.0), Duration::from_millis(500));
        let top = POLICY.wait(1, None, 0.999_999);
        assert!(top > Duration::from_millis(999) && top < Duration::from_secs(1));
        assert_eq!(POLICY.wait(3, None, 1.0), Duration::from_secs(4));
        assert_eq!(POLICY.wait(3, None, 0.0), Duration::from_secs(2));
        assert_eq!(POLICY.wait(20, None, 1.0), Duration::from_secs(300));
        assert_eq!(POLICY.wait(u32::MAX, None, 1.0), Duration::from_secs(300));
    }

    #[test]
    fn retry_after_lengthens_the_wait_up_to_the_cap() {
        assert_eq!(
            POLICY.wait(1, Some(Duration::from_secs(7)), 0.0),
            Duration::from_secs(7)
        );
        assert_eq!(
            POLICY.wait(1, Some(Duration::from_secs(3600)), 0.0),
            Duration::from_secs(300)
        );
        assert_eq!(
            POLICY.wait(4, Some(Duration::from_secs(1)), 1.0),
            Duration::from_secs(8)
        );
    }

    /// Takes notifications only when let through, and remembers their checks.
    #[derive(Debug)]
    struct Gate {
        open: tokio::sync::Semaphore,
        taken: Mutex<Vec<String>>,
    }

    impl Notifier for Gate {
        fn send<'a>(
            &'a self,
            notification: &'a Notification,
        ) -> futures_util::future::BoxFuture<'a, Result<super::super::Answer, SendError>> {
            Box::pin(async move {
                self.open.acquire().await.unwrap().forget();
                self.taken.lock().unwrap().push(notification.check.clone());
                Ok(super::super::Answer("ok".to_string()))
            })
        }
    }

    /// Remembers every outcome reported.
    #[derive(Debug, Default)]
    struct Recorded(Mutex<Vec<(String, Outcome)>>);

    impl Outcomes for Recorded {
        fn outcome(&self, _notifier: &str, notification: &Notification, outcome: Outcome) {
            self.0
                .lock()
                .unwrap()
                .push((notification.check.clone(), outcome));
        }
    }

    impl Recorded {
        fn taken(&self) -> Vec<(String, Outcome)> {
            self.0.lock().unwrap().clone()
        }
    }

    /// Never answers.
    #[derive(Debug)]
    struct Silent;

    impl Notifier for Silent {
        fn send<'a>(
            &'a self,
            _notification: &'a Notification,
        ) -> futures_util::future::BoxFuture<'a, Result<super::super::Answer, SendError>> {
            Box::pin(std::future::pending())
        }
    }

    fn count(metrics: &NotifyMetrics, outcome: &'static str) -> u64 {
        metrics.counted("gate", outcome)
    }

    /// The one being retried and those queued behind it are counted and reported `unsent`
    /// at stop, never dropped silently; dropped ones are reported `lost`.
    #[tokio::test]
    async fn at_stop_the_notification_being_retried_and_the_queued_ones_are_unsent() {
        let metrics: NotifyMetrics = Metrics::new().component();
        let outcomes = Arc::new(Recorded::default());
        let delivery = Arc::new(Delivery::new(
            "gate".to_string(),
            Arc::new(Silent) as Arc<dyn Notifier>,
            POLICY,
            8,
            metrics.clone(),
            SavedState::in_memory(),
            Arc::downgrade(&outcomes) as Weak<dyn Outcomes>,
        ));
        let stop = CancellationToken::new();
        let task = tokio::spawn(Arc::clone(&delivery).run(stop.clone()));
        delivery.push(notification("under-way"));
        while delivery.waiting() > 0 {
            tokio::task::yield_now().await;
        }
        delivery.push(notification("queued"));
        stop.cancel();
        task.await.unwrap();
        assert_eq!(
            outcomes.taken(),
            [
                ("under-way".to_string(), Outcome::Unsent),
                ("queued".to_string(), Outcome::Unsent)
            ]
        );
        assert_eq!(count(&metrics, "unsent"), 2);
    }

    /// Nothing leaves before the saved state holds the generation it was queued at.
    #[tokio::test]
    async fn a_notification_waits_until_the_saved_state_holds_what_made_it() {
        let dir = std::env::temp_dir().join(format!("bastion-write-ahead-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (saved, _) = SavedState::open(Some(dir.join("episodes.json"))).unwrap();
        let gate = Arc::new(Gate {
            open: tokio::sync::Semaphore::new(10),
            taken: Mutex::new(Vec::new()),
        });
        let outcomes = Arc::new(Recorded::default());
        let delivery = Arc::new(Delivery::new(
            "gate".to_string(),
            Arc::clone(&gate) as Arc<dyn Notifier>,
            POLICY,
            8,
            Metrics::new().component(),
            Arc::clone(&saved),
            Arc::downgrade(&outcomes) as Weak<dyn Outcomes>,
        ));
        let stop = CancellationToken::new();
        let task = tokio::spawn(Arc::clone(&delivery).run(stop.clone()));
        saved.put("checks", "web", &"failing");
        delivery.push(notification("web"));
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            gate.taken.lock().unwrap().is_empty(),
            "sent before it was saved"
        );
        saved.flush().await;
        while !delivery.idle() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(*gate.taken.lock().unwrap(), ["web"]);
        assert_eq!(outcomes.taken(), [("web".to_string(), Outcome::Accepted)]);
        assert!(dir.join("episodes.json").exists());
        stop.cancel();
        task.await.unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn notification(check: &str) -> Arc<Notification> {
        let now = std::time::SystemTime::now();
        Arc::new(Notification {
            event: super::super::Event::Firing,
            reminder: false,
            episode_id: "e".to_string(),
            check: check.to_string(),
            check_type: crate::checks::CheckType::Http,
            severity: super::super::Severity::Critical,
            previous_severity: None,
            state: crate::model::CheckState::Fail,
            started_at: now,
            at: now,
            reason: None,
            failing: 1,
            instances: 1,
            failures: Vec::new(),
            locations: Vec::new(),
            link: String::new(),
            agent: "a".to_string(),
        })
    }

    #[tokio::test]
    async fn a_full_queue_drops_the_oldest_waiting_notification() {
        let gate = Arc::new(Gate {
            open: tokio::sync::Semaphore::new(0),
            taken: Mutex::new(Vec::new()),
        });
        let metrics: NotifyMetrics = Metrics::new().component();
        let outcomes = Arc::new(Recorded::default());
        let delivery = Arc::new(Delivery::new(
            "gate".to_string(),
            Arc::clone(&gate) as Arc<dyn Notifier>,
            POLICY,
            2,
            metrics.clone(),
            SavedState::in_memory(),
            Arc::downgrade(&outcomes) as Weak<dyn Outcomes>,
        ));
        let stop = CancellationToken::new();
        let task = tokio::spawn(Arc::clone(&delivery).run(stop.clone()));
        delivery.push(notification("first"));
        while delivery.waiting() > 0 {
            tokio::task::yield_now().await;
        }
        // "first" is under way; of the next four, only the newest two stay.
        for check in ["second", "third", "fourth", "fifth"] {
            delivery.push(notification(check));
        }
        assert_eq!(delivery.waiting(), 2);
        assert_eq!(count(&metrics, "dropped"), 2);
        gate.open.add_permits(3);
        while !delivery.idle() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(*gate.taken.lock().unwrap(), ["first", "fourth", "fifth"]);
        let mut reported = outcomes.taken();
        reported.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            reported,
            [
                ("fifth".to_string(), Outcome::Accepted),
                ("first".to_string(), Outcome::Accepted),
                ("fourth".to_string(), Outcome::Accepted),
                ("second".to_string(), Outcome::GaveUp),
                ("third".to_string(), Outcome::GaveUp),
            ],
            "the dropped ones are reported given up, from the delivery task"
        );
        stop.cancel();
        task.await.unwrap();
    }

    #[test]
    fn jitter_stays_in_range() {
        for _ in 0..1000 {
            let j = jitter();
            assert!((0.0..1.0).contains(&j));
        }
    }
}
