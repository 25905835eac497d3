//! Notifications' series, per notifier: outcomes, the time of each delivery attempt, and how
//! many wait. A notifier's series exist at zero from the start, so `rate()` sees the first.

use crate::metrics::{latency_histogram, Component, HistogramFamily, Registry};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NotifierLabels {
    notifier: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NotifierOutcomeLabels {
    notifier: String,
    outcome: &'static str,
}

/// The outcomes `bastion_notifications_total` counts per notifier.
const NOTIFICATION_OUTCOMES: [&str; 6] = [
    "sent",
    "failed",
    "rejected",
    "dropped",
    "suppressed",
    "unsent",
];

/// Notifications' families (see the module doc).
#[derive(Clone, Debug)]
pub struct NotifyMetrics {
    /// Notifications by notifier and outcome (`NOTIFICATION_OUTCOMES`).
    notifications: Family<NotifierOutcomeLabels, Counter>,
    /// Time of each delivery attempt, by notifier.
    duration_seconds: HistogramFamily<NotifierLabels>,
    /// Notifications waiting, by notifier.
    queue: Family<NotifierLabels, Gauge>,
}

impl Component for NotifyMetrics {
    fn register(registry: &mut Registry) -> NotifyMetrics {
        let metrics = NotifyMetrics {
            notifications: Family::default(),
            duration_seconds: Family::new_with_constructor(latency_histogram),
            queue: Family::default(),
        };
        registry.agent(
            "bastion_notifications",
            "Notifications by notifier and outcome: sent, failed (retries exhausted), rejected (a 4xx answer: fix the config), dropped (queue full, oldest first), suppressed (maintenance)",
            metrics.notifications.clone(),
        );
        registry.agent(
            "bastion_notification_duration_seconds",
            "Time of each attempt to deliver a notification, by notifier",
            metrics.duration_seconds.clone(),
        );
        registry.agent(
            "bastion_notification_queue",
            "Notifications waiting for delivery, by notifier",
            metrics.queue.clone(),
        );
        metrics
    }
}

impl NotifyMetrics {
    /// Creates a notifier's series at zero, so they exist before the first notification.
    pub fn register_notifier(&self, notifier: &str) {
        for outcome in NOTIFICATION_OUTCOMES {
            let _ = self.notifications.get_or_create(&NotifierOutcomeLabels {
                notifier: notifier.to_string(),
                outcome,
            });
        }
        let labels = NotifierLabels {
            notifier: notifier.to_string(),
        };
        let _ = self.duration_seconds.get_or_create(&labels);
        let _ = self.queue.get_or_create(&labels);
    }

    /// Counts one notification's outcome (`NOTIFICATION_OUTCOMES`).
    pub fn count(&self, notifier: &str, outcome: &'static str) {
        self.notifications
            .get_or_create(&NotifierOutcomeLabels {
                notifier: notifier.to_string(),
                outcome,
            })
            .inc();
    }

    /// The notifications of `notifier` counted with `outcome` so far.
    pub fn counted(&self, notifier: &str, outcome: &'static str) -> u64 {
        self.notifications
            .get_or_create(&NotifierOutcomeLabels {
                notifier: notifier.to_string(),
                outcome,
            })
            .get()
    }

    /// One delivery attempt of `notifier` that took `seconds`.
    pub fn observe_attempt(&self, notifier: &str, seconds: f64) {
        self.duration_seconds
            .get_or_create(&NotifierLabels {
                notifier: notifier.to_string(),
            })
            .observe(seconds);
    }

    /// Notifications of `notifier` waiting now.
    pub fn set_queue(&self, notifier: &str, waiting: usize) {
        self.queue
            .get_or_create(&NotifierLabels {
                notifier: notifier.to_string(),
            })
            .set(i64::try_from(waiting).unwrap_or(i64::MAX));
    }
}
