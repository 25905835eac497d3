//! Prometheus metrics: blackbox_exporter's names for what probes saw (`probe_*`), `bastion_*`
//! for the agent's own work. Seconds as units, true histograms, and label values only from
//! bounded sets (check names, instance addresses, types, phases, fixed reasons); never error
//! text or a raw URL. Rendered in the classic text format that every Prometheus reads.

mod check_series;
mod chunked_text;

use crate::checks::CheckType;
use crate::model::ErrorKind;
use check_series::{CheckSeries, Gone};
pub use chunked_text::ChunkedText;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

type GaugeF64 = Gauge<f64, AtomicU64>;
type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CheckLabels {
    pub check: String,
}

/// A check's place in the schedule: the check, and its location when it has `locations`.
/// Without one the series carries no `location` label at all (not an empty one), so a check
/// without locations has the same series it always had.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct CheckPlaceLabels {
    pub check: String,
    pub location: Option<String>,
}

impl EncodeLabelSet for CheckPlaceLabels {
    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::LabelSetEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeLabel;
        ("check", self.check.as_str()).encode(encoder.encode_label())?;
        if let Some(location) = &self.location {
            ("location", location.as_str()).encode(encoder.encode_label())?;
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CheckLocationLabels {
    pub check: String,
    pub location: String,
}

/// `outcome` of a `/probe` request: `probed`, `bad_request`, `refused` (too many at once).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProbeRequestLabels {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabels {
    pub r#type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CheckTypeLabels {
    pub check: String,
    pub r#type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeKindLabels {
    pub r#type: &'static str,
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FormLabels {
    pub form: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SubjectLabels {
    pub subject: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CheckToLabels {
    pub check: String,
    pub to: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NotifierLabels {
    pub notifier: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NotifierOutcomeLabels {
    pub notifier: String,
    pub outcome: &'static str,
}

/// The outcomes `bastion_notifications_total` counts per notifier.
pub const NOTIFICATION_OUTCOMES: [&str; 6] = [
    "sent",
    "failed",
    "rejected",
    "dropped",
    "suppressed",
    "unsent",
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    version: &'static str,
    /// The git commit the binary was built from (build.rs), `unknown` outside git.
    commit: &'static str,
    /// The target triple it was built for.
    target: &'static str,
}

fn latency_histogram() -> Histogram {
    // From half a millisecond to a minute: scheduling lag and dispatch waits are usually tiny,
    // and the interesting tail is seconds long.
    Histogram::new([
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
        60.0,
    ])
}

/// Series derived afresh at each scrape instead of kept (the `probe_*` series, derived from
/// the result store). The sink implements it; this module never learns where they come from.
pub trait Exposition: Send + Sync + std::fmt::Debug {
    /// Appends the series of the checks `selection` includes, in the classic text format, to
    /// `text`. Never called with `CheckSelection::None`.
    fn encode(&self, text: &mut ChunkedText, selection: &CheckSelection);
}

/// Which checks' series one scrape of `/metrics` carries (`?checks=` and `?group=`); the
/// agent-wide series (those with no `check` label) are in every scrape.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum CheckSelection {
    /// Every check's series: the full text.
    #[default]
    All,
    /// No per-check series at all (`?checks=none`).
    None,
    /// The series of these checks only (those of the groups asked for), by name.
    Only(Arc<std::collections::BTreeSet<String>>),
}

impl CheckSelection {
    /// Whether `check`'s series are in.
    pub fn includes(&self, check: &str) -> bool {
        match self {
            CheckSelection::All => true,
            CheckSelection::None => false,
            CheckSelection::Only(checks) => checks.contains(check),
        }
    }
}

/// The registered families in the order they are exposed, as runs of agent-wide families and
/// of per-check ones (every one labelled `check`, which comes first in their label sets), so
/// a scrape can leave the per-check runs out without encoding them.
#[derive(Debug, Default)]
struct Segments {
    runs: Vec<Segment>,
}

#[derive(Debug)]
struct Segment {
    per_check: bool,
    registry: Registry,
    /// For a per-check run: how each of its families writes the chosen checks' series.
    chosen: Vec<Chosen>,
}

/// Writes one per-check family's series of the chosen checks, in the text format.
type ChosenFn = dyn Fn(&std::collections::BTreeSet<String>, &mut ChunkedText) + Send + Sync;

struct Chosen(Box<ChosenFn>);

impl std::fmt::Debug for Chosen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Chosen")
    }
}

/// Hands a per-scrape family, at each `get_or_create`, the metric put in `slot`: a clone of
/// a chosen check's series, which shares its values.
#[derive(Debug, Clone)]
struct Given<M> {
    slot: Arc<std::sync::Mutex<Option<M>>>,
    fallback: fn() -> M,
}

impl<M> prometheus_client::metrics::family::MetricConstructor<M> for Given<M> {
    fn new_metric(&self) -> M {
        self.slot
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take()
            .unwrap_or_else(self.fallback)
    }
}

/// The label sets a check has in a per-check family, for looking its series up by name.
type LabelsOf<L> = Arc<dyn Fn(&str) -> Vec<L> + Send + Sync>;

fn check_labels(check: &str) -> Vec<CheckLabels> {
    vec![CheckLabels {
        check: check.to_string(),
    }]
}

fn check_type_labels(check: &str) -> Vec<CheckTypeLabels> {
    CheckType::ALL
        .iter()
        .map(|check_type| CheckTypeLabels {
            check: check.to_string(),
            r#type: check_type.as_str(),
        })
        .collect()
}

fn check_to_labels(check: &str) -> Vec<CheckToLabels> {
    crate::model::CheckState::ALL
        .iter()
        .map(|state| CheckToLabels {
            check: check.to_string(),
            to: state.as_str(),
        })
        .collect()
}

impl Segments {
    /// Registers a family with no `check` label.
    fn agent(&mut self, name: &str, help: &str, metric: impl prometheus_client::registry::Metric) {
        self.run(false).register(name, help, metric);
    }

    /// Registers a family whose first label is `check`. A scrape of some checks looks their
    /// series up by name (`labels`: every label set a check can have) and encodes clones of
    /// them; without `labels` (label values the agent cannot list, such as a check's
    /// locations), it encodes the family and keeps the chosen checks' lines.
    fn per_check<L, M, C>(
        &mut self,
        name: &'static str,
        help: &'static str,
        family: &Family<L, M, C>,
        labels: Option<LabelsOf<L>>,
        fallback: fn() -> M,
    ) where
        L: Clone + std::hash::Hash + Eq + EncodeLabelSet + std::fmt::Debug + Send + Sync + 'static,
        M: Clone
            + prometheus_client::encoding::EncodeMetric
            + prometheus_client::metrics::TypedMetric
            + std::fmt::Debug
            + Send
            + Sync
            + 'static,
        C: prometheus_client::metrics::family::MetricConstructor<M>
            + Clone
            + std::fmt::Debug
            + Send
            + Sync
            + 'static,
    {
        self.run(true).register(name, help, family.clone());
        let family = family.clone();
        let chosen: Box<ChosenFn> = match labels {
            Some(labels) => Box::new(move |checks, out| {
                let slot = Arc::new(std::sync::Mutex::new(None));
                let given = Given {
                    slot: Arc::clone(&slot),
                    fallback,
                };
                let picked = Family::<L, M, Given<M>>::new_with_constructor(given);
                for check in checks {
                    for label_set in labels(check) {
                        let Some(metric) = family.get(&label_set).map(|metric| metric.clone())
                        else {
                            continue;
                        };
                        *slot.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) =
                            Some(metric);
                        let _ = picked.get_or_create(&label_set);
                    }
                }
                let mut registry = Registry::default();
                registry.register(name, help, picked);
                // Writing into a ChunkedText cannot fail.
                let _ = prometheus_client::encoding::prometheus_text::encode(out, &registry);
            }),
            None => Box::new(move |checks, out| {
                let mut registry = Registry::default();
                registry.register(name, help, family.clone());
                let mut all = String::new();
                let _ = prometheus_client::encoding::prometheus_text::encode(&mut all, &registry);
                keep_lines_of(&all, checks, out);
            }),
        };
        if let Some(last) = self.runs.last_mut() {
            last.chosen.push(Chosen(chosen));
        }
    }

    fn run(&mut self, per_check: bool) -> &mut Registry {
        let same = self
            .runs
            .last()
            .is_some_and(|last| last.per_check == per_check);
        if !same {
            self.runs.push(Segment {
                per_check,
                registry: Registry::default(),
                chosen: Vec::new(),
            });
        }
        let at = self.runs.len() - 1;
        &mut self.runs[at].registry
    }
}

/// Appends to `out` the samples of `text` (per-check families) whose `check` label is one of
/// `checks`, each family's HELP and TYPE lines before its first kept sample (a family with none
/// kept is left out, as prometheus-client leaves out an empty family): one pass, borrowing each
/// line, allocating only for a label value that was escaped.
fn keep_lines_of(text: &str, checks: &std::collections::BTreeSet<String>, out: &mut ChunkedText) {
    // The current family's description, written with its first kept sample.
    let mut description: Option<(usize, usize)> = None;
    let mut unescaped = String::new();
    for line in text.split_inclusive('\n') {
        let at = line.as_ptr() as usize - text.as_ptr() as usize;
        if line.starts_with("# HELP ") {
            description = Some((at, at + line.len()));
            continue;
        }
        if line.starts_with('#') {
            if let Some((_, end)) = description.as_mut() {
                *end = at + line.len();
            }
            continue;
        }
        let Some(start) = line.find("{check=\"").map(|at| at + "{check=\"".len()) else {
            continue;
        };
        let value = &line.as_bytes()[start..];
        let (mut at, mut escaped) = (0, false);
        let end = loop {
            match value.get(at) {
                None => break None,
                Some(b'\\') => {
                    escaped = true;
                    at += 2;
                }
                Some(b'"') => break Some(at),
                Some(_) => at += 1,
            }
        };
        let Some(end) = end else { continue };
        let raw = &line[start..start + end];
        let name = if escaped {
            unescaped.clear();
            let mut chars = raw.chars();
            while let Some(c) = chars.next() {
                if c != '\\' {
                    unescaped.push(c);
                } else if let Some(next) = chars.next() {
                    unescaped.push(if next == 'n' { '\n' } else { next });
                }
            }
            unescaped.as_str()
        } else {
            raw
        };
        if checks.contains(name) {
            if let Some((start, end)) = description.take() {
                out.push_str(&text[start..end]);
            }
            out.push_str(line);
        }
    }
}

/// Every metric the agent exports.
#[derive(Debug)]
pub struct Metrics {
    /// The families in the order they are exposed, in runs of agent-wide and per-check ones.
    registry: Segments,
    pub checks_scheduled: Family<CheckLabels, Counter>,
    /// The locations each check with `locations` has schedule series in, so that a scrape of
    /// some checks (`?group=`) finds their series without encoding every check's.
    place_locations: Arc<std::sync::RwLock<HashMap<String, BTreeSet<String>>>>,
    pub schedule_skipped: Family<CheckPlaceLabels, Counter>,
    pub runs_lost: Family<CheckPlaceLabels, Counter>,
    /// Runs of a check with `locations` not made in a location with no live runner.
    pub runs_no_runner: Family<CheckLocationLabels, Counter>,
    /// Discovery sources of a check that could not be used (a broken file_sd file).
    pub discovery_errors: Family<CheckLabels, Counter>,
    pub schedule_lag_seconds: Histogram,
    pub dispatch_wait_seconds: HistogramFamily<TypeLabels>,
    pub dispatch_timeouts: Family<TypeLabels, Counter>,
    /// `/probe` requests by outcome.
    pub probe_requests: Family<ProbeRequestLabels, Counter>,
    pub task_timeouts: Family<TypeLabels, Counter>,
    pub probe_errors: Family<TypeKindLabels, Counter>,
    pub check_duration_seconds: HistogramFamily<CheckTypeLabels>,
    pub workers_busy: Family<TypeLabels, Gauge>,
    pub workers: Family<TypeLabels, Gauge>,
    pub bus_decode_errors: Family<ReasonLabels, Counter>,
    pub bus_publish_errors: Family<SubjectLabels, Counter>,
    pub bus_connected: Gauge,
    pub bus_reconnects: Counter,
    pub bus_dropped: Family<ReasonLabels, Counter>,
    pub bus_publish_retries: Counter,
    pub requests_expired: Family<TypeLabels, Counter>,
    pub results_degraded: Family<FormLabels, Counter>,
    pub results_expired: Family<TypeLabels, Counter>,
    pub checker_leader: Gauge,
    pub check_transitions: Family<CheckToLabels, Counter>,
    pub config_last_reload_successful: Gauge,
    pub config_last_reload_success_timestamp_seconds: GaugeF64,
    pub runtime_tasks_alive: Gauge,
    /// Notifications by notifier and outcome (`NOTIFICATION_OUTCOMES`).
    pub notifications: Family<NotifierOutcomeLabels, Counter>,
    /// Time of each delivery attempt, by notifier.
    pub notification_duration_seconds: HistogramFamily<NotifierLabels>,
    /// Notifications waiting, by notifier.
    pub notification_queue: Family<NotifierLabels, Gauge>,
    /// Check names whose series a runner removed because they stopped running (`expired`).
    pub check_series_forgotten: Family<ReasonLabels, Counter>,
    /// Runs that got no duration series, by why: `capacity` (a runner at
    /// `runner.max_check_series`) or `unconfigured` (an agent that schedules, for a check it
    /// does not have).
    pub check_series_refused: Family<ReasonLabels, Counter>,
    /// History records dropped, by why: `buffer_full` (runs or state changes: the writer is
    /// behind or the database cannot be written), `incidents_full` (incident changes, whose
    /// lane holds at least 16,384) or `stopped`.
    pub history_dropped: Family<ReasonLabels, Counter>,
    /// History records (runs and state changes) written to the database.
    pub history_written: Counter,
    /// Failed attempts to write a batch of history (retried).
    pub history_write_errors: Counter,
    /// History records waiting to be written.
    pub history_buffered: Gauge,
    /// How long writing one batch of history took.
    pub history_write_seconds: Histogram,
    /// Which checks `check_duration_seconds` has series for (`check_series.rs`).
    check_series: std::sync::Mutex<CheckSeries>,
    /// Where the `probe_*` series come from.
    exposition: std::sync::OnceLock<Arc<dyn Exposition>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Segments::default();
        let metrics = Metrics {
            checks_scheduled: Family::default(),
            schedule_skipped: Family::default(),
            discovery_errors: Family::default(),
            runs_lost: Family::default(),
            runs_no_runner: Family::default(),
            place_locations: Arc::default(),
            schedule_lag_seconds: latency_histogram(),
            dispatch_wait_seconds: Family::new_with_constructor(latency_histogram),
            dispatch_timeouts: Family::default(),
            probe_requests: Family::default(),
            task_timeouts: Family::default(),
            probe_errors: Family::default(),
            check_duration_seconds: Family::new_with_constructor(latency_histogram),
            workers_busy: Family::default(),
            workers: Family::default(),
            bus_decode_errors: Family::default(),
            bus_publish_errors: Family::default(),
            bus_connected: Gauge::default(),
            bus_reconnects: Counter::default(),
            bus_dropped: Family::default(),
            bus_publish_retries: Counter::default(),
            requests_expired: Family::default(),
            results_degraded: Family::default(),
            results_expired: Family::default(),
            checker_leader: Gauge::default(),
            check_transitions: Family::default(),
            config_last_reload_successful: Gauge::default(),
            config_last_reload_success_timestamp_seconds: GaugeF64::default(),
            runtime_tasks_alive: Gauge::default(),
            exposition: std::sync::OnceLock::new(),
            notifications: Family::default(),
            notification_duration_seconds: Family::new_with_constructor(latency_histogram),
            notification_queue: Family::default(),
            check_series_forgotten: Family::default(),
            check_series_refused: Family::default(),
            history_dropped: Family::default(),
            history_written: Counter::default(),
            history_write_errors: Counter::default(),
            history_buffered: Gauge::default(),
            history_write_seconds: latency_histogram(),
            check_series: std::sync::Mutex::new(CheckSeries::learned(
                crate::config::DEFAULT_MAX_CHECK_SERIES,
                crate::config::DEFAULT_FORGET_CHECKS_AFTER,
            )),
            registry: Segments::default(),
        };
        metrics.register_scheduling(&mut registry);
        metrics.register_dispatch(&mut registry);
        metrics.register_bus(&mut registry);
        metrics.register_dropped(&mut registry);
        metrics.register_agent_state(&mut registry);
        metrics.register_notifications(&mut registry);
        metrics.register_history(&mut registry);
        metrics.preset_error_series();
        Metrics {
            registry,
            ..metrics
        }
    }

    /// Registers the checker's scheduling: runs published, skipped and lost, and their lag.
    fn register_scheduling(&self, registry: &mut Segments) {
        registry.per_check(
            "bastion_checks_scheduled",
            "Check runs published by the checker",
            &self.checks_scheduled,
            Some(Arc::new(check_labels)),
            Counter::default,
        );
        registry.per_check(
            "bastion_schedule_skipped",
            "Ticks skipped because the previous run of the check was still in flight",
            &self.schedule_skipped,
            Some(self.place_labels()),
            Counter::default,
        );
        registry.per_check(
            "bastion_runs_lost",
            "Check runs whose result never arrived before the run could no longer be in flight",
            &self.runs_lost,
            Some(self.place_labels()),
            Counter::default,
        );
        registry.per_check(
            "bastion_runs_no_runner",
            "Runs of a check with locations that a location could not take: no runner of it was alive when the run was due (the result says no_runner)",
            &self.runs_no_runner,
            None,
            Counter::default,
        );
        registry.per_check(
            "bastion_discovery_errors",
            "Times a check's discovery source could not be used (each distinct problem once); the last good instances stay",
            &self.discovery_errors,
            Some(Arc::new(check_labels)),
            Counter::default,
        );
        registry.agent(
            "bastion_schedule_lag_seconds",
            "How late a check run was published against when it was due",
            self.schedule_lag_seconds.clone(),
        );
    }

    /// Registers the runner's dispatch and worker pools: waits, timeouts, probe errors, run durations.
    fn register_dispatch(&self, registry: &mut Segments) {
        registry.agent(
            "bastion_dispatch_wait_seconds",
            "How long tasks waited for a free worker",
            self.dispatch_wait_seconds.clone(),
        );
        registry.agent(
            "bastion_dispatch_timeouts",
            "Tasks cancelled unrun because no worker was free within the dispatch deadline",
            self.dispatch_timeouts.clone(),
        );
        registry.agent(
            "bastion_probe_requests",
            "Requests to /probe (blackbox_exporter's endpoint) by outcome: probed, bad_request, refused (too many at once)",
            self.probe_requests.clone(),
        );
        registry.agent(
            "bastion_task_timeouts",
            "Probes cancelled because they ran past the check's timeout",
            self.task_timeouts.clone(),
        );
        registry.agent(
            "bastion_probe_errors",
            "Probes that failed at the transport, by error kind",
            self.probe_errors.clone(),
        );
        registry.per_check(
            "bastion_check_duration_seconds",
            "How long a whole check run took, from dispatch to its last response",
            &self.check_duration_seconds,
            Some(Arc::new(check_type_labels)),
            latency_histogram,
        );
        registry.agent(
            "bastion_workers_busy",
            "Workers running a probe now",
            self.workers_busy.clone(),
        );
        registry.agent(
            "bastion_workers",
            "Workers in the pool of each check type",
            self.workers.clone(),
        );
    }

    /// Registers the bus: decoding, publishing, the connection and what was dropped.
    fn register_bus(&self, registry: &mut Segments) {
        registry.agent(
            "bastion_bus_decode_errors",
            "Bus messages dropped because they could not be decoded",
            self.bus_decode_errors.clone(),
        );
        registry.agent(
            "bastion_bus_publish_errors",
            "Bus messages that could not be published",
            self.bus_publish_errors.clone(),
        );
        registry.agent(
            "bastion_bus_connected",
            "Whether the bus is connected now (1) or not (0)",
            self.bus_connected.clone(),
        );
        registry.agent(
            "bastion_bus_reconnects",
            "Times the bus connection was re-established after a loss",
            self.bus_reconnects.clone(),
        );
        registry.agent(
            "bastion_bus_dropped",
            "Bus messages dropped inside bastion, by reason",
            self.bus_dropped.clone(),
        );
        registry.agent(
            "bastion_bus_publish_retries",
            "Durable result publishes retried because the stream did not acknowledge them",
            self.bus_publish_retries.clone(),
        );
    }

    /// Registers series, requests and results the agent forgot, refused or reduced.
    fn register_dropped(&self, registry: &mut Segments) {
        registry.agent(
            "bastion_check_series_forgotten",
            "Checks whose bastion_check_duration_seconds series this runner removed: not run here for forget_checks_after and three intervals (expired)",
            self.check_series_forgotten.clone(),
        );
        registry.agent(
            "bastion_check_series_refused",
            "Check runs that got no bastion_check_duration_seconds series: a runner already keeping runner.max_check_series checks (capacity), or a check this scheduling agent does not have configured (unconfigured)",
            self.check_series_refused.clone(),
        );
        registry.agent(
            "bastion_requests_expired",
            "Check requests that reached the runner after their dispatch deadline and were not run",
            self.requests_expired.clone(),
        );
        registry.agent(
            "bastion_results_degraded",
            "Results too large for the bus, published reduced, by the form they took",
            self.results_degraded.clone(),
        );
        registry.agent(
            "bastion_results_expired",
            "Results finished after their run's window, which the checker had counted lost; not published",
            self.results_expired.clone(),
        );
    }

    /// Registers the notifiers' deliveries.
    fn register_notifications(&self, registry: &mut Segments) {
        registry.agent(
            "bastion_notifications",
            "Notifications by notifier and outcome: sent, failed (retries exhausted), rejected (a 4xx answer: fix the config), dropped (queue full, oldest first), suppressed (maintenance)",
            self.notifications.clone(),
        );
        registry.agent(
            "bastion_notification_duration_seconds",
            "Time of each attempt to deliver a notification, by notifier",
            self.notification_duration_seconds.clone(),
        );
        registry.agent(
            "bastion_notification_queue",
            "Notifications waiting for delivery, by notifier",
            self.notification_queue.clone(),
        );
    }

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
        let _ = self.notification_duration_seconds.get_or_create(&labels);
        let _ = self.notification_queue.get_or_create(&labels);
    }

    /// Counts one notification's outcome.
    pub fn count_notification(&self, notifier: &str, outcome: &'static str) {
        self.notifications
            .get_or_create(&NotifierOutcomeLabels {
                notifier: notifier.to_string(),
                outcome,
            })
            .inc();
    }

    /// Registers the history writer's work: records written, dropped and buffered.
    fn register_history(&self, registry: &mut Segments) {
        registry.agent(
            "bastion_history_dropped",
            "History records (runs, state changes, incident changes) dropped: their lane was full (the database is slow or cannot be written) or the writer had stopped",
            self.history_dropped.clone(),
        );
        registry.agent(
            "bastion_history_written",
            "History records (runs, state changes) written to the history database",
            self.history_written.clone(),
        );
        registry.agent(
            "bastion_history_write_errors",
            "Failed attempts to write a batch of history; the batch is kept and retried",
            self.history_write_errors.clone(),
        );
        registry.agent(
            "bastion_history_buffered",
            "History records waiting to be written",
            self.history_buffered.clone(),
        );
        registry.agent(
            "bastion_history_write_seconds",
            "Time to write one transaction of history (a batch, or one part of at most 8192 runs of a backlog)",
            self.history_write_seconds.clone(),
        );
    }

    /// Registers the agent's own state: leadership, check states, config loads, the runtime
    /// and the version.
    fn register_agent_state(&self, registry: &mut Segments) {
        registry.agent(
            "bastion_checker_leader",
            "Whether this checker schedules now (1) or stands by (0)",
            self.checker_leader.clone(),
        );
        registry.per_check(
            "bastion_check_transitions",
            "Changes of check state, by the state entered",
            &self.check_transitions,
            Some(Arc::new(check_to_labels)),
            Counter::default,
        );
        registry.agent(
            "bastion_config_last_reload_successful",
            "Whether the last config load or reload succeeded (1) or not (0)",
            self.config_last_reload_successful.clone(),
        );
        registry.agent(
            "bastion_config_last_reload_success_timestamp_seconds",
            "When the config was last loaded or reloaded successfully, in Unix seconds",
            self.config_last_reload_success_timestamp_seconds.clone(),
        );
        registry.agent(
            "bastion_runtime_tasks_alive",
            "Tasks alive in the async runtime when /metrics was read; it follows the work in flight, not the number of checks",
            self.runtime_tasks_alive.clone(),
        );
        let build_info: Family<VersionLabels, Gauge> = Family::default();
        build_info
            .get_or_create(&VersionLabels {
                version: env!("CARGO_PKG_VERSION"),
                commit: env!("BASTION_GIT_COMMIT"),
                target: env!("BASTION_TARGET"),
            })
            .set(1);
        registry.agent(
            "bastion_build_info",
            "The running bastion version, git commit and target, as labels; always 1",
            build_info,
        );
    }

    /// Creates the error and drop series at zero, so `rate()` sees the first one.
    fn preset_error_series(&self) {
        for reason in ["json", "version", "too_large", "invalid"] {
            // Present at zero from the start, so rate() sees the first error.
            let _ = self
                .bus_decode_errors
                .get_or_create(&ReasonLabels { reason });
        }
        for reason in ["slow_consumer", "results_buffer_full", "results_rejected"] {
            let _ = self.bus_dropped.get_or_create(&ReasonLabels { reason });
        }
        for reason in ["buffer_full", "incidents_full", "ticks_full", "stopped"] {
            let _ = self.history_dropped.get_or_create(&ReasonLabels { reason });
        }
        let _ = self
            .check_series_forgotten
            .get_or_create(&ReasonLabels { reason: "expired" });
        for reason in ["capacity", "unconfigured"] {
            let _ = self
                .check_series_refused
                .get_or_create(&ReasonLabels { reason });
        }
    }

    /// The exposition text, every series.
    pub fn render(&self) -> String {
        self.render_selected(&CheckSelection::All)
    }

    /// The exposition text with the per-check series of the `selection` only, as one string.
    pub fn render_selected(&self, selection: &CheckSelection) -> String {
        self.render_chunks(selection).into_string()
    }

    /// The exposition text with the per-check series of the `selection` only; the agent-wide
    /// series are always there. Per-check families are not encoded at all for
    /// `CheckSelection::None`, and the store's series of checks left out are never built.
    /// In chunks: `/metrics` sends them as they are, never copying the text whole.
    pub fn render_chunks(&self, selection: &CheckSelection) -> ChunkedText {
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let alive = runtime.metrics().num_alive_tasks();
            self.runtime_tasks_alive
                .set(i64::try_from(alive).unwrap_or(i64::MAX));
        }
        self.tidy_check_series(Instant::now());
        let mut text = ChunkedText::new();
        for segment in &self.registry.runs {
            match (segment.per_check, selection) {
                (false, _) | (true, CheckSelection::All) => {
                    // Writing into a ChunkedText cannot fail.
                    let _ = prometheus_client::encoding::prometheus_text::encode(
                        &mut text,
                        &segment.registry,
                    );
                }
                (true, CheckSelection::None) => {}
                (true, CheckSelection::Only(checks)) => {
                    // Only the chosen checks' series are looked up and encoded.
                    for family in &segment.chosen {
                        (family.0)(checks, &mut text);
                    }
                }
            }
        }
        if let Some(exposition) = self.exposition.get() {
            if *selection != CheckSelection::None {
                exposition.encode(&mut text, selection);
            }
        }
        text
    }

    /// Serves `probe_*` and `bastion_check_state` from `exposition` at every scrape. Set once,
    /// by the result sink; a process without one (a runner) has no such series.
    pub fn attach_exposition(&self, exposition: Arc<dyn Exposition>) {
        let _ = self.exposition.set(exposition);
    }

    /// Declares a pool so its series exist (at zero) before the first probe.
    pub fn register_pool(&self, check_type: CheckType, workers: usize) {
        let labels = TypeLabels {
            r#type: check_type.as_str(),
        };
        self.workers
            .get_or_create(&labels)
            .set(i64::try_from(workers).unwrap_or(i64::MAX));
        let _ = self.workers_busy.get_or_create(&labels);
        let _ = self.dispatch_timeouts.get_or_create(&labels);
        let _ = self.task_timeouts.get_or_create(&labels);
        let _ = self.requests_expired.get_or_create(&labels);
        let _ = self.results_expired.get_or_create(&labels);
    }

    pub fn count_probe_error(&self, check_type: CheckType, kind: ErrorKind) {
        self.probe_errors
            .get_or_create(&TypeKindLabels {
                r#type: check_type.as_str(),
                kind: kind.as_str(),
            })
            .inc();
    }

    /// Removes the series the result sink (and the runner) keep per check: its state, its
    /// transitions and its run durations. The `probe_*` series go by target (`forget_target`).
    pub fn forget_check_results(&self, check: &str) {
        for state in crate::model::CheckState::ALL {
            self.check_transitions.remove(&CheckToLabels {
                check: check.to_string(),
                to: state.as_str(),
            });
        }
        let mut series = self.lock_check_series();
        series.removed(check);
        self.remove_check_duration(check);
    }

    /// A runner's bound on checks with run-duration series (`runner.max_check_series`) and how
    /// long a check's series stay after its last run here (`runner.forget_checks_after`).
    pub fn limit_check_series(&self, max_checks: usize, forget_after: Duration) {
        self.lock_check_series()
            .set_learned(max_checks, forget_after);
    }

    /// Makes the run-duration series follow the configured checks (an agent that schedules and
    /// probes): every configured check gets one, with no bound and no expiry, and a check's
    /// go when a reload removes it. `checks` is the reload watch.
    pub fn follow_configured_checks(
        &self,
        checks: tokio::sync::watch::Receiver<crate::config::CheckList>,
    ) {
        *self.lock_check_series() = CheckSeries::configured(checks);
    }

    /// Records a run of `check` that took `seconds`, if it may have a series (see
    /// `check_series.rs`); a run refused one is counted. O(1) (amortised) whatever the number
    /// of checks.
    pub fn observe_check_duration(
        &self,
        check: &str,
        check_type: CheckType,
        interval: Duration,
        seconds: f64,
    ) {
        let now = Instant::now();
        // Held while the series is created, so a concurrent expiry cannot remove it unseen.
        let mut series = self.follow_reload(self.lock_check_series());
        let admitted = series.admit(check, interval, now, &mut |gone, why| self.gone(gone, why));
        match admitted {
            Ok(()) => self
                .check_duration_seconds
                .get_or_create(&CheckTypeLabels {
                    check: check.to_string(),
                    r#type: check_type.as_str(),
                })
                .observe(seconds),
            Err(refusal) => {
                self.check_series_refused
                    .get_or_create(&ReasonLabels {
                        reason: refusal.as_str(),
                    })
                    .inc();
            }
        }
    }

    /// Removes the series that are due to go by `now`: those of checks that stopped running on
    /// a runner, or that a reload removed.
    pub fn tidy_check_series(&self, now: Instant) {
        let mut series = self.follow_reload(self.lock_check_series());
        series.tidy(now, &mut |gone, why| self.gone(gone, why));
    }

    /// Takes up a reloaded check list, building its names with the lock released: O(n) once
    /// per reload, never with every run waiting on it.
    fn follow_reload<'a>(
        &'a self,
        series: std::sync::MutexGuard<'a, CheckSeries>,
    ) -> std::sync::MutexGuard<'a, CheckSeries> {
        let Some(reload) = series.reloaded() else {
            return series;
        };
        drop(series);
        let prepared = reload.prepare();
        let mut series = self.lock_check_series();
        series.install(prepared, &mut |gone, why| self.gone(gone, why));
        series
    }

    fn gone(&self, check: &str, why: Gone) {
        self.remove_check_duration(check);
        if why == Gone::Expired {
            self.check_series_forgotten
                .get_or_create(&ReasonLabels { reason: "expired" })
                .inc();
        }
    }

    fn remove_check_duration(&self, check: &str) {
        for check_type in CheckType::ALL {
            self.check_duration_seconds.remove(&CheckTypeLabels {
                check: check.to_string(),
                r#type: check_type.as_str(),
            });
        }
    }

    fn lock_check_series(&self) -> std::sync::MutexGuard<'_, CheckSeries> {
        // The state stays consistent whatever panicked while holding it.
        self.check_series
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The schedule series of a check's place: `location` is None for a check without
    /// `locations`. Taken once per place, not per run.
    pub fn place_series(&self, check: &str, location: Option<&str>) -> (Counter, Counter) {
        if let Some(location) = location {
            self.place_locations
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .entry(check.to_string())
                .or_default()
                .insert(location.to_string());
        }
        let labels = CheckPlaceLabels {
            check: check.to_string(),
            location: location.map(str::to_string),
        };
        (
            self.schedule_skipped.get_or_create(&labels).clone(),
            self.runs_lost.get_or_create(&labels).clone(),
        )
    }

    /// A check's place labels: the check's own, and one per location it has places in.
    fn place_labels(&self) -> LabelsOf<CheckPlaceLabels> {
        let table = Arc::clone(&self.place_locations);
        Arc::new(move |check: &str| {
            let mut labels = vec![CheckPlaceLabels {
                check: check.to_string(),
                location: None,
            }];
            let table = table
                .read()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if let Some(locations) = table.get(check) {
                labels.extend(locations.iter().map(|location| CheckPlaceLabels {
                    check: check.to_string(),
                    location: Some(location.clone()),
                }));
            }
            labels
        })
    }

    /// Removes the series the checker keeps per check: those of the check itself, of each
    /// location it had a place in, and `bastion_runs_no_runner_total` of `no_runner_locations`.
    pub fn forget_check_schedule<'a>(
        &self,
        check: &str,
        no_runner_locations: impl IntoIterator<Item = &'a str>,
    ) {
        let labels = CheckLabels {
            check: check.to_string(),
        };
        self.checks_scheduled.remove(&labels);
        self.discovery_errors.remove(&labels);
        let place = |location: Option<&str>| CheckPlaceLabels {
            check: check.to_string(),
            location: location.map(str::to_string),
        };
        self.schedule_skipped.remove(&place(None));
        self.runs_lost.remove(&place(None));
        let places = self
            .place_locations
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(check)
            .unwrap_or_default();
        for location in &places {
            self.schedule_skipped.remove(&place(Some(location)));
            self.runs_lost.remove(&place(Some(location)));
        }
        for location in no_runner_locations {
            self.runs_no_runner.remove(&CheckLocationLabels {
                check: check.to_string(),
                location: location.to_string(),
            });
        }
    }

    /// Records the outcome of a config load or reload.
    pub fn record_config_load(&self, success: bool) {
        self.config_last_reload_successful.set(i64::from(success));
        if success {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |since| since.as_secs_f64());
            self.config_last_reload_success_timestamp_seconds.set(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_classic_text_with_build_info_and_histograms() {
        let metrics = Metrics::new();
        metrics.schedule_lag_seconds.observe(0.003);
        metrics.register_pool(CheckType::Http, 4);
        let text = metrics.render();
        assert!(text.contains("bastion_build_info{version=\""), "{text}");
        assert!(
            text.contains("# TYPE bastion_schedule_lag_seconds histogram"),
            "{text}"
        );
        assert!(
            text.contains("bastion_schedule_lag_seconds_bucket{le=\"0.005\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("bastion_schedule_lag_seconds_bucket{le=\"0.0025\"} 0"),
            "{text}"
        );
        assert!(text.contains("bastion_workers{type=\"http\"} 4"), "{text}");
        assert!(
            text.contains("bastion_dispatch_timeouts_total{type=\"http\"} 0"),
            "{text}"
        );
    }

    #[test]
    fn a_selection_keeps_the_per_check_series_of_its_checks_and_every_agent_wide_one() {
        let metrics = Metrics::new();
        metrics.register_pool(CheckType::Http, 4);
        let names = ["a", "b", "odd \"one\" \\ here", "bb"];
        for check in names {
            let labels = CheckLabels {
                check: check.to_string(),
            };
            metrics.checks_scheduled.get_or_create(&labels).inc();
            metrics
                .runs_lost
                .get_or_create(&CheckPlaceLabels {
                    check: check.to_string(),
                    location: None,
                })
                .inc();
            // A place in a location: its series is chosen with its check.
            let (skipped, lost) = metrics.place_series(check, Some("eu"));
            skipped.inc();
            lost.inc();
            metrics
                .runs_no_runner
                .get_or_create(&CheckLocationLabels {
                    check: check.to_string(),
                    location: "eu".to_string(),
                })
                .inc();
            metrics
                .check_transitions
                .get_or_create(&CheckToLabels {
                    check: check.to_string(),
                    to: "FAIL",
                })
                .inc();
            metrics
                .check_duration_seconds
                .get_or_create(&CheckTypeLabels {
                    check: check.to_string(),
                    r#type: "http",
                })
                .observe(0.2);
        }
        let full = metrics.render();
        assert_eq!(metrics.render_selected(&CheckSelection::All), full);
        let chosen: std::collections::BTreeSet<String> =
            ["b".to_string(), names[2].to_string()].into();
        let some = metrics.render_selected(&CheckSelection::Only(Arc::new(chosen)));
        let expected: String = full
            .split_inclusive('\n')
            .filter(|line| {
                line.starts_with('#')
                    || !line.contains("check=\"")
                    || line.contains("{check=\"b\"")
                    || line.contains("{check=\"odd \\\"one\\\" \\\\ here\"")
            })
            .collect();
        // A scrape of some checks writes each family's samples in an order of its own.
        assert_eq!(by_family(&some), by_family(&expected));
        // A family none of whose checks is chosen is left out, description and all.
        let nobody: std::collections::BTreeSet<String> = ["nobody".to_string()].into();
        let none_chosen = metrics.render_selected(&CheckSelection::Only(Arc::new(nobody)));
        assert!(
            !none_chosen.contains("bastion_checks_scheduled"),
            "{none_chosen}"
        );
        assert!(
            some.contains("bastion_runs_lost_total{check=\"b\"} 1"),
            "{some}"
        );
        let none = metrics.render_selected(&CheckSelection::None);
        assert!(!none.contains("check=\""), "{none}");
        assert!(!none.contains("bastion_checks_scheduled"), "{none}");
        let agent_wide: Vec<&str> = full
            .lines()
            .filter(|line| !line.starts_with('#') && !line.contains("check=\""))
            .collect();
        let kept: Vec<&str> = none.lines().filter(|line| !line.starts_with('#')).collect();
        assert_eq!(kept, agent_wide);
    }

    /// Each family's description and its sorted samples.
    fn by_family(text: &str) -> Vec<(Vec<&str>, Vec<&str>)> {
        let mut families: Vec<(Vec<&str>, Vec<&str>)> = Vec::new();
        for line in text.lines() {
            match families.last_mut() {
                Some(family) if !line.starts_with("# HELP") => {
                    if line.starts_with('#') {
                        family.0.push(line);
                    } else {
                        family.1.push(line);
                    }
                }
                _ => families.push((vec![line], Vec::new())),
            }
        }
        for family in &mut families {
            family.1.sort_unstable();
        }
        families
    }

    /// The checks that have a `bastion_check_duration_seconds` series in `text`.
    fn checks_with_durations(text: &str) -> std::collections::BTreeSet<String> {
        text.lines()
            .filter_map(|line| line.strip_prefix("bastion_check_duration_seconds_count{check=\""))
            .filter_map(|rest| rest.split('"').next())
            .map(str::to_string)
            .collect()
    }

    fn forgotten(text: &str, reason: &str) -> String {
        let prefix = format!("bastion_check_series_forgotten_total{{reason=\"{reason}\"}} ");
        text.lines()
            .find_map(|line| line.strip_prefix(prefix.as_str()))
            .unwrap_or("absent")
            .to_string()
    }

    #[tokio::test(start_paused = true)]
    async fn checks_that_stop_arriving_are_forgotten_after_the_expiry() {
        let metrics = Metrics::new();
        metrics.limit_check_series(10_000, Duration::from_secs(600));
        let minute = Duration::from_secs(60);
        for n in 0..1000 {
            metrics.observe_check_duration(&format!("gone-{n}"), CheckType::Http, minute, 0.01);
        }
        assert_eq!(checks_with_durations(&metrics.render()).len(), 1000);
        // From now on only ten checks arrive, once a minute.
        for _ in 0..10 {
            tokio::time::advance(minute).await;
            for n in 0..10 {
                metrics.observe_check_duration(&format!("kept-{n}"), CheckType::Tcp, minute, 0.01);
            }
        }
        let text = metrics.render();
        let expected: std::collections::BTreeSet<String> =
            (0..10).map(|n| format!("kept-{n}")).collect();
        assert_eq!(checks_with_durations(&text), expected);
        assert_eq!(forgotten(&text, "expired"), "1000");
    }

    #[tokio::test(start_paused = true)]
    async fn a_check_is_kept_for_three_of_its_intervals_at_least() {
        let metrics = Metrics::new();
        metrics.limit_check_series(10_000, Duration::from_secs(600));
        let hour = Duration::from_secs(3600);
        metrics.observe_check_duration("hourly", CheckType::Dns, hour, 0.01);
        tokio::time::advance(2 * hour).await;
        assert!(checks_with_durations(&metrics.render()).contains("hourly"));
        tokio::time::advance(hour).await;
        assert!(checks_with_durations(&metrics.render()).is_empty());
    }

    fn refused(text: &str, reason: &str) -> String {
        let prefix = format!("bastion_check_series_refused_total{{reason=\"{reason}\"}} ");
        text.lines()
            .find_map(|line| line.strip_prefix(prefix.as_str()))
            .unwrap_or("absent")
            .to_string()
    }

    fn observe_all(metrics: &Metrics, names: impl Iterator<Item = String>) {
        for name in names {
            metrics.observe_check_duration(&name, CheckType::Http, Duration::from_secs(60), 0.01);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_runner_at_its_bound_keeps_every_series_and_refuses_new_names() {
        let metrics = Metrics::new();
        metrics.limit_check_series(10_000, Duration::from_secs(600));
        // Exactly the bound: every check has its series, nothing is refused.
        observe_all(&metrics, (0..10_000).map(|n| format!("c-{n}")));
        let text = metrics.render();
        assert_eq!(checks_with_durations(&text).len(), 10_000);
        assert_eq!(refused(&text, "capacity"), "0");
        // One past it, run by run: the new name gets no series, and no kept check loses its.
        for _ in 0..3 {
            observe_all(&metrics, (0..10_001).map(|n| format!("c-{n}")));
        }
        let text = metrics.render();
        let kept = checks_with_durations(&text);
        assert_eq!(kept.len(), 10_000);
        assert!(kept.contains("c-0") && !kept.contains("c-10000"));
        assert_eq!(refused(&text, "capacity"), "3");
        assert_eq!(forgotten(&text, "expired"), "0");
        assert!(
            text.contains("bastion_check_duration_seconds_count{check=\"c-0\",type=\"http\"} 4")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_runner_makes_room_only_as_checks_expire() {
        let metrics = Metrics::new();
        metrics.limit_check_series(2, Duration::from_secs(600));
        observe_all(&metrics, ["a", "b", "c"].map(String::from).into_iter());
        tokio::time::advance(Duration::from_secs(300)).await;
        observe_all(&metrics, ["a"].map(String::from).into_iter());
        tokio::time::advance(Duration::from_secs(301)).await;
        // b has not run for ten minutes and went; c takes its place, a stays.
        observe_all(&metrics, ["c"].map(String::from).into_iter());
        let text = metrics.render();
        let expected: std::collections::BTreeSet<String> =
            ["a", "c"].map(String::from).into_iter().collect();
        assert_eq!(checks_with_durations(&text), expected);
        assert_eq!(forgotten(&text, "expired"), "1");
        assert_eq!(refused(&text, "capacity"), "1");
    }

    fn configured(names: std::ops::Range<usize>) -> crate::config::CheckList {
        let text: String = names
            .map(|n| {
                format!("[[checks]]\nname = \"c-{n}\"\ntype = \"http\"\nurl = \"http://127.0.0.1:1/\"\ninterval = \"10s\"\n")
            })
            .collect();
        let config = crate::config::Config::parse(
            &text,
            crate::config::Format::Toml,
            std::path::Path::new("t.toml"),
        )
        .unwrap();
        crate::config::check_list(config.checks)
    }

    #[tokio::test(start_paused = true)]
    async fn an_agent_that_schedules_keeps_a_series_for_every_configured_check() {
        let metrics = Metrics::new();
        let (checks, updates) = tokio::sync::watch::channel(configured(0..12_000));
        metrics.follow_configured_checks(updates);
        observe_all(&metrics, (0..12_000).map(|n| format!("c-{n}")));
        observe_all(&metrics, (0..12_000).map(|n| format!("c-{n}")));
        observe_all(&metrics, ["stranger".to_string()].into_iter());
        // A day without runs forgets nothing.
        tokio::time::advance(Duration::from_secs(86_400)).await;
        let text = metrics.render();
        assert_eq!(checks_with_durations(&text).len(), 12_000);
        assert_eq!(forgotten(&text, "expired"), "0");
        assert_eq!(refused(&text, "capacity"), "0");
        assert_eq!(refused(&text, "unconfigured"), "1");
        // A reload removes the first 2,000 and adds 8,000 more: the removed go at once (the
        // next scrape), the added get series on their first run.
        checks.send_replace(configured(2_000..20_000));
        assert_eq!(checks_with_durations(&metrics.render()).len(), 10_000);
        observe_all(&metrics, (0..20_000).map(|n| format!("c-{n}")));
        let text = metrics.render();
        let kept = checks_with_durations(&text);
        assert_eq!(kept.len(), 18_000);
        assert!(!kept.contains("c-1999") && kept.contains("c-2000") && kept.contains("c-19999"));
        assert_eq!(refused(&text, "unconfigured"), "2001");
        assert_eq!(forgotten(&text, "expired"), "0");
    }
}
