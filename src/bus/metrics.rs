//! The bus's series: the connection, what could not be decoded or published, and what was
//! dropped inside bastion. The transport counts its own connection and drops; the parts that
//! publish and consume (the checker, the runner, the sink, the heartbeat) count what they
//! could not publish or decode here, by subject and reason from fixed sets.

use crate::metrics::{Component, ReasonLabels, Registry};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SubjectLabels {
    subject: &'static str,
}

/// The bus's families (see the module doc).
#[derive(Clone, Debug)]
pub struct BusMetrics {
    decode_errors: Family<ReasonLabels, Counter>,
    publish_errors: Family<SubjectLabels, Counter>,
    connected: Gauge,
    reconnects: Counter,
    dropped: Family<ReasonLabels, Counter>,
    publish_retries: Counter,
}

/// Why a message that reached bastion was not decoded: `DecodeError::reason`'s values.
const DECODE_REASONS: [&str; 4] = ["json", "version", "too_large", "invalid"];

/// Why a message was dropped inside bastion, the reasons preset at zero.
const DROP_REASONS: [&str; 3] = ["slow_consumer", "results_buffer_full", "results_rejected"];

impl Component for BusMetrics {
    fn register(registry: &mut Registry) -> BusMetrics {
        let metrics = BusMetrics {
            decode_errors: Family::default(),
            publish_errors: Family::default(),
            connected: Gauge::default(),
            reconnects: Counter::default(),
            dropped: Family::default(),
            publish_retries: Counter::default(),
        };
        registry.agent(
            "bastion_bus_decode_errors",
            "Bus messages dropped because they could not be decoded",
            metrics.decode_errors.clone(),
        );
        registry.agent(
            "bastion_bus_publish_errors",
            "Bus messages that could not be published",
            metrics.publish_errors.clone(),
        );
        registry.agent(
            "bastion_bus_connected",
            "Whether the bus is connected now (1) or not (0)",
            metrics.connected.clone(),
        );
        registry.agent(
            "bastion_bus_reconnects",
            "Times the bus connection was re-established after a loss",
            metrics.reconnects.clone(),
        );
        registry.agent(
            "bastion_bus_dropped",
            "Bus messages dropped inside bastion, by reason",
            metrics.dropped.clone(),
        );
        registry.agent(
            "bastion_bus_publish_retries",
            "Durable result publishes retried because the stream did not acknowledge them",
            metrics.publish_retries.clone(),
        );
        // Present at zero from the start, so rate() sees the first one.
        for reason in DECODE_REASONS {
            let _ = metrics
                .decode_errors
                .get_or_create(&ReasonLabels { reason });
        }
        for reason in DROP_REASONS {
            let _ = metrics.dropped.get_or_create(&ReasonLabels { reason });
        }
        metrics
    }
}

impl BusMetrics {
    /// A message dropped because it could not be decoded, by `DecodeError::reason`.
    pub fn count_decode_error(&self, reason: &'static str) {
        self.decode_errors
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// A message on `subject` (`checks`, `results`, `events`, `heartbeat`) that could not be
    /// published.
    pub fn count_publish_error(&self, subject: &'static str) {
        self.publish_errors
            .get_or_create(&SubjectLabels { subject })
            .inc();
    }

    /// The publish-error counter of `subject`, for a publisher that counts on every run.
    pub fn publish_errors(&self, subject: &'static str) -> Counter {
        self.publish_errors
            .get_or_create(&SubjectLabels { subject })
            .clone()
    }

    /// Whether the connection is up now.
    pub fn set_connected(&self, connected: bool) {
        self.connected.set(i64::from(connected));
    }

    /// The connection came back after a loss.
    pub fn count_reconnect(&self) {
        self.reconnects.inc();
    }

    /// A message dropped inside bastion, by `reason`: `DROP_REASONS` (preset at zero), or
    /// `outbox_too_large` and `outbox_failed` (NATS refused a publish from the outbox).
    pub fn count_dropped(&self, reason: &'static str) {
        self.dropped.get_or_create(&ReasonLabels { reason }).inc();
    }

    /// A durable publish retried.
    pub fn count_publish_retry(&self) {
        self.publish_retries.inc();
    }
}
