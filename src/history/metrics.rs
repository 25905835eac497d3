//! History's series: records written, dropped (by lane and reason), waiting, and the time and
//! failures of writing them.

use crate::metrics::{latency_histogram, Component, ReasonLabels, Registry};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Why history records were dropped: `buffer_full` (runs or state changes: the writer is
/// behind or the database cannot be written), `incidents_full` (incident changes, whose lane
/// holds at least 16,384), `ticks_full` (a run of a check with `locations` whose tick could not
/// be gathered: `MAX_OPEN_TICKS` ticks were being gathered already) or `stopped` (unwritten at
/// shutdown).
pub const DROP_REASONS: [&str; 4] = ["buffer_full", "incidents_full", "ticks_full", "stopped"];

/// History's families (see the module doc).
#[derive(Clone, Debug)]
pub struct HistoryMetrics {
    dropped: Family<ReasonLabels, Counter>,
    written: Counter,
    write_errors: Counter,
    buffered: Gauge,
    /// Records in the writer's batch, as the writer last said. With what waits in the lanes,
    /// read at each scrape, it is `bastion_history_buffered`: the writer takes the lanes in
    /// only at its flushes, so a gauge it set itself would miss what arrived since.
    batched: Arc<AtomicUsize>,
    lanes: Arc<Mutex<Option<LaneDepth>>>,
    write_seconds: Histogram,
}

/// How many records wait in the lanes now.
pub struct LaneDepth(pub Box<dyn Fn() -> usize + Send + Sync>);

impl std::fmt::Debug for LaneDepth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LaneDepth")
    }
}

impl Component for HistoryMetrics {
    fn register(registry: &mut Registry) -> HistoryMetrics {
        let metrics = HistoryMetrics {
            dropped: Family::default(),
            written: Counter::default(),
            write_errors: Counter::default(),
            buffered: Gauge::default(),
            batched: Arc::default(),
            lanes: Arc::default(),
            write_seconds: latency_histogram(),
        };
        registry.agent(
            "bastion_history_dropped",
            "History records (runs, state changes, incident changes) dropped: their lane was full (the database is slow or cannot be written) or the writer had stopped",
            metrics.dropped.clone(),
        );
        registry.agent(
            "bastion_history_written",
            "History records (runs, state changes) written to the history database",
            metrics.written.clone(),
        );
        registry.agent(
            "bastion_history_write_errors",
            "Failed attempts to write a batch of history; the batch is kept and retried",
            metrics.write_errors.clone(),
        );
        registry.agent(
            "bastion_history_buffered",
            "History records waiting to be written",
            metrics.buffered.clone(),
        );
        registry.agent(
            "bastion_history_write_seconds",
            "Time to write one transaction of history (a batch, or one part of at most 8192 runs of a backlog)",
            metrics.write_seconds.clone(),
        );
        let gauge = metrics.clone();
        registry.before_scrape(move |_| gauge.report_buffered());
        for reason in DROP_REASONS {
            // Present at zero from the start, so rate() sees the first one.
            let _ = metrics.dropped.get_or_create(&ReasonLabels { reason });
        }
        metrics
    }
}

impl HistoryMetrics {
    /// `records` dropped for `reason` (`DROP_REASONS`).
    pub fn count_dropped(&self, reason: &'static str, records: u64) {
        self.dropped
            .get_or_create(&ReasonLabels { reason })
            .inc_by(records);
    }

    /// Records in the writer's batch now.
    pub fn set_batched(&self, records: usize) {
        self.batched.store(records, Ordering::Relaxed);
    }

    /// Where the records waiting in the lanes are counted from (the recorder's lanes).
    pub fn watch_lanes(&self, depth: LaneDepth) {
        *self
            .lanes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(depth);
    }

    /// `bastion_history_buffered`: the batch and the lanes, now.
    fn report_buffered(&self) {
        let in_lanes = self
            .lanes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .as_ref()
            .map_or(0, |depth| (depth.0)());
        let records = self
            .batched
            .load(Ordering::Relaxed)
            .saturating_add(in_lanes);
        self.buffered
            .set(i64::try_from(records).unwrap_or(i64::MAX));
    }

    /// A failed attempt to write a batch.
    pub fn count_write_error(&self) {
        self.write_errors.inc();
    }

    /// One transaction of `records` written, in `seconds`.
    pub fn observe_written(&self, records: usize, seconds: f64) {
        self.write_seconds.observe(seconds);
        self.written.inc_by(records as u64);
    }

    /// Records written so far.
    pub fn written(&self) -> u64 {
        self.written.get()
    }
}
