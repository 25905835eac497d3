//! Prometheus metrics, the framework: a registry that components register their own families
//! into, and the rendering of `/metrics`. Each component (the checker's schedule, the runner's
//! dispatch, the bus, history, notifications, ...) owns a small struct of its families with
//! methods, declared and registered in its own module (`Component`); this module names none of
//! them. blackbox_exporter's names for what probes saw (`probe_*`), `bastion_*` for the agent's
//! own work; seconds as units, true histograms, and label values only from bounded sets (check
//! names, instance addresses, types, phases, fixed reasons), never error text or a raw URL.
//! Rendered in the classic text format that every Prometheus reads.

mod chunked_text;

pub use chunked_text::ChunkedText;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::time::Instant;

pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// A histogram family whose histograms have `latency_histogram`'s buckets.
pub type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// A check, as the first (here the only) label of a per-check family.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CheckLabels {
    pub check: String,
}

/// A check type: `http`, `tcp`, ...
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabels {
    pub r#type: &'static str,
}

/// Why something was dropped, refused or forgotten, from a fixed set.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    version: &'static str,
    /// The git commit the binary was built from (build.rs), `unknown` outside git.
    commit: &'static str,
    /// The target triple it was built for.
    target: &'static str,
}

/// The upper bounds of every latency histogram but the last, `+Inf`: from half a millisecond
/// to a minute, since scheduling lag and dispatch waits are usually tiny and the interesting
/// tail is seconds long.
pub const LATENCY_BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

pub fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// A histogram with `LATENCY_BUCKETS` in 144 bytes of atomics, for a family with a series per
/// check that a component writes itself (`PerCheckFamilies`): prometheus-client's `Histogram`
/// takes about 720 bytes (a lock, a list of buckets, room for native buckets), 7 MB at 10,000
/// checks. Observing takes no lock; the text is the same as a `Histogram`'s.
#[derive(Debug, Default)]
pub struct LatencyCounts {
    /// How many observations fell in each bucket alone (not cumulative), `+Inf` last.
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    /// The sum of the observations, as the bits of an `f64`.
    sum: AtomicU64,
}

impl LatencyCounts {
    pub fn observe(&self, value: f64) {
        // The first bucket whose bound is at least the value, as prometheus-client counts (NaN
        // and anything past the last bound in `+Inf`).
        let bucket = LATENCY_BUCKETS
            .iter()
            .position(|bound| value <= *bound)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        // Runs of one check rarely end at the same moment: the loop almost never goes round.
        let _ = self
            .sum
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + value).to_bits())
            });
    }

    /// Writes the histogram's `_sum`, `_count` and `_bucket` lines under the series' labels.
    pub fn encode(
        &self,
        mut encoder: prometheus_client::encoding::MetricEncoder<'_>,
    ) -> Result<(), std::fmt::Error> {
        let mut buckets = [(f64::INFINITY, 0u64); LATENCY_BUCKETS.len() + 1];
        for (at, (bound, count)) in buckets.iter_mut().enumerate() {
            if let Some(upper) = LATENCY_BUCKETS.get(at) {
                *bound = *upper;
            }
            *count = self.buckets[at].load(Ordering::Relaxed);
        }
        let count = buckets.iter().map(|(_, count)| count).sum();
        let sum = f64::from_bits(self.sum.load(Ordering::Relaxed));
        encoder
            .encode_histogram::<prometheus_client::encoding::NoLabelSet>(sum, count, &buckets, None)
    }
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
/// a scrape can leave the per-check runs out without encoding them. A component registers its
/// families here once, in `Component::register`.
#[derive(Default)]
pub struct Registry {
    runs: Vec<Segment>,
    /// Run before each scrape, in registration order: a component's chance to bring its
    /// series up to date (remove expired ones, read a gauge).
    before_scrape: Vec<Arc<ScrapeHook>>,
}

type ScrapeHook = dyn Fn(Instant) + Send + Sync;

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("runs", &self.runs.len())
            .field("before_scrape", &self.before_scrape.len())
            .finish()
    }
}

#[derive(Debug)]
struct Segment {
    per_check: bool,
    /// Holds a collector (`PerCheckFamilies`) and takes no more families: prometheus-client
    /// writes a registry's collectors after its metrics, so a family registered after a
    /// collector in the same registry would be written before it.
    closed: bool,
    registry: prometheus_client::registry::Registry,
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

/// Per-check families a component writes itself at each scrape, from what it keeps per check
/// (a struct of counters a check, say, where a `Family` would keep a hash entry, a label
/// `String` and an `Arc` for every series): every check's series, or only the chosen ones'.
/// A family with no series is left out, HELP and TYPE too, as prometheus-client leaves out an
/// empty `Family`.
pub trait PerCheckFamilies: std::fmt::Debug + Send + Sync + 'static {
    /// Encodes the families with the series of every check (`chosen` None) or of the checks in
    /// `chosen` only.
    fn encode(
        &self,
        encoder: prometheus_client::encoding::DescriptorEncoder<'_>,
        chosen: Option<&std::collections::BTreeSet<String>>,
    ) -> Result<(), std::fmt::Error>;
}

/// Hands a `PerCheckFamilies` to prometheus-client's registry as a collector: every check, or
/// the chosen ones.
#[derive(Debug)]
struct Collected {
    families: Arc<dyn PerCheckFamilies>,
    chosen: Option<std::collections::BTreeSet<String>>,
}

impl prometheus_client::collector::Collector for Collected {
    fn encode(
        &self,
        encoder: prometheus_client::encoding::DescriptorEncoder<'_>,
    ) -> Result<(), std::fmt::Error> {
        self.families.encode(encoder, self.chosen.as_ref())
    }
}

/// The label sets a check has in a per-check family, for looking its series up by name.
pub type LabelsOf<L> = Arc<dyn Fn(&str) -> Vec<L> + Send + Sync>;

/// The one label set a check has in a family labelled by `check` alone.
pub fn check_labels(check: &str) -> Vec<CheckLabels> {
    vec![CheckLabels {
        check: check.to_string(),
    }]
}

impl Registry {
    /// Registers a family with no `check` label.
    pub fn agent(
        &mut self,
        name: &str,
        help: &str,
        metric: impl prometheus_client::registry::Metric,
    ) {
        self.run(false).register(name, help, metric);
    }

    /// Registers a family whose first label is `check`. A scrape of some checks looks their
    /// series up by name (`labels`: every label set a check can have) and encodes clones of
    /// them; without `labels` (label values the agent cannot list, such as a check's
    /// locations), it encodes the family and keeps the chosen checks' lines.
    pub fn per_check<L, M, C>(
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
                let mut registry = prometheus_client::registry::Registry::default();
                registry.register(name, help, picked);
                // Writing into a ChunkedText cannot fail.
                let _ = prometheus_client::encoding::prometheus_text::encode(out, &registry);
            }),
            None => Box::new(move |checks, out| {
                let mut registry = prometheus_client::registry::Registry::default();
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

    /// Registers families a component writes itself from what it keeps per check (see
    /// `PerCheckFamilies`); each is labelled `check` first, as every per-check family is.
    /// Its families are written where they are registered, in the full text and in a
    /// scrape of chosen checks alike: the collector gets a run of its own.
    pub fn per_check_families(&mut self, families: Arc<dyn PerCheckFamilies>) {
        if let Some(last) = self.runs.last_mut() {
            last.closed = true;
        }
        self.run(true).register_collector(Box::new(Collected {
            families: Arc::clone(&families),
            chosen: None,
        }));
        let chosen: Box<ChosenFn> = Box::new(move |checks, out| {
            let mut registry = prometheus_client::registry::Registry::default();
            registry.register_collector(Box::new(Collected {
                families: Arc::clone(&families),
                chosen: Some(checks.clone()),
            }));
            // Writing into a ChunkedText cannot fail.
            let _ = prometheus_client::encoding::prometheus_text::encode(out, &registry);
        });
        if let Some(last) = self.runs.last_mut() {
            last.chosen.push(Chosen(chosen));
            last.closed = true;
        }
    }

    /// Adds `other`'s families after this one's, and its hooks after this one's.
    fn append(&mut self, other: Registry) {
        self.runs.extend(other.runs);
        self.before_scrape.extend(other.before_scrape);
    }

    /// Runs `hook` before each scrape, with the scrape's time.
    pub fn before_scrape(&mut self, hook: impl Fn(Instant) + Send + Sync + 'static) {
        self.before_scrape.push(Arc::new(hook));
    }

    fn run(&mut self, per_check: bool) -> &mut prometheus_client::registry::Registry {
        let same = self
            .runs
            .last()
            .is_some_and(|last| last.per_check == per_check && !last.closed);
        if !same {
            self.runs.push(Segment {
                per_check,
                closed: false,
                registry: prometheus_client::registry::Registry::default(),
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

/// A component's own families: declared, built and registered in the component's module, and
/// changed only through its methods. One per process: every part of the agent that asks for a
/// component's metrics (`Metrics::component`) shares the families the first one registered.
pub trait Component: Clone + Send + Sync + 'static {
    /// Builds the families and registers them (and any before-scrape hook) in `registry`.
    fn register(registry: &mut Registry) -> Self;
}

/// A process's metrics: the registry every component's families are in, and `/metrics`'s
/// rendering of it. The agent-wide series of the process itself (its version, the runtime's
/// tasks) are registered here; everything else by the components.
#[derive(Debug)]
pub struct Metrics {
    registered: std::sync::RwLock<Registered>,
    runtime_tasks_alive: Gauge,
    /// Where the `probe_*` series come from.
    exposition: std::sync::OnceLock<Arc<dyn Exposition>>,
}

#[derive(Debug, Default)]
struct Registered {
    registry: Registry,
    /// Each registered component's families, by the component's type.
    components: HashMap<TypeId, Box<dyn Any + Send + Sync>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// A registry holding the process's own series; components add theirs as they are built.
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let runtime_tasks_alive = Gauge::default();
        registry.agent(
            "bastion_runtime_tasks_alive",
            "Tasks alive in the async runtime when /metrics was read; it follows the work in flight, not the number of checks",
            runtime_tasks_alive.clone(),
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
        Metrics {
            registered: std::sync::RwLock::new(Registered {
                registry,
                components: HashMap::new(),
            }),
            runtime_tasks_alive,
            exposition: std::sync::OnceLock::new(),
        }
    }

    /// The families of component `C`, registered on the first call and shared by every later
    /// one. Called when a part of the agent is built, never per run.
    pub fn component<C: Component>(&self) -> C {
        let key = TypeId::of::<C>();
        if let Some(found) = self.read().components.get(&key) {
            if let Some(component) = found.downcast_ref::<C>() {
                return component.clone();
            }
        }
        let mut registered = self
            .registered
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // Another thread may have registered it since the read.
        if let Some(component) = registered
            .components
            .get(&key)
            .and_then(|found| found.downcast_ref::<C>())
        {
            return component.clone();
        }
        // Registered apart, then taken whole: a `register` that panicked leaves nothing behind.
        let mut own = Registry::default();
        let component = C::register(&mut own);
        registered.registry.append(own);
        registered
            .components
            .insert(key, Box::new(component.clone()));
        component
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Registered> {
        // A component's families are added whole or not at all (`component`): whatever
        // panicked while the lock was held, the state is whole.
        self.registered
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
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
        // The hooks run with the registry unlocked: one may take a lock of its component's.
        let hooks = self.read().registry.before_scrape.clone();
        let now = Instant::now();
        for hook in hooks {
            hook(now);
        }
        let registered = self.read();
        let mut text = ChunkedText::new();
        for segment in &registered.registry.runs {
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
        drop(registered);
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;

    /// Writes `counts` as a per-check family of one check, `c`.
    #[derive(Debug)]
    struct OneCheck(LatencyCounts);

    impl PerCheckFamilies for OneCheck {
        fn encode(
            &self,
            mut encoder: prometheus_client::encoding::DescriptorEncoder<'_>,
            _chosen: Option<&std::collections::BTreeSet<String>>,
        ) -> Result<(), std::fmt::Error> {
            let mut family = encoder.encode_descriptor(
                "latency_seconds",
                "Latency.",
                None,
                prometheus_client::metrics::MetricType::Histogram,
            )?;
            let labels = CheckLabels {
                check: "c".to_string(),
            };
            self.0.encode(family.encode_family(&labels)?)
        }
    }

    #[test]
    fn latency_counts_write_what_a_histogram_writes() {
        let values = [
            0.0,
            0.0005,
            0.0006,
            0.05,
            0.049,
            1.0,
            59.9,
            60.0,
            60.1,
            1e9,
            -1.0,
            f64::NAN,
        ];
        let family: Family<CheckLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(latency_histogram);
        let counts = LatencyCounts::default();
        for value in values.into_iter().filter(|value| !value.is_nan()) {
            family
                .get_or_create(&CheckLabels {
                    check: "c".to_string(),
                })
                .observe(value);
            counts.observe(value);
        }
        let mut expected = prometheus_client::registry::Registry::default();
        expected.register("latency_seconds", "Latency", family);
        let mut ours = prometheus_client::registry::Registry::default();
        ours.register_collector(Box::new(Collected {
            families: Arc::new(OneCheck(counts)),
            chosen: None,
        }));
        // Through the classic text format `/metrics` writes, and through OpenMetrics.
        let classic = |registry: &prometheus_client::registry::Registry| {
            let mut text = String::new();
            prometheus_client::encoding::prometheus_text::encode(&mut text, registry).unwrap();
            text
        };
        let open_metrics = |registry: &prometheus_client::registry::Registry| {
            let mut text = String::new();
            prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
            text
        };
        assert_eq!(open_metrics(&ours), open_metrics(&expected));
        let ours = classic(&ours);
        assert_eq!(ours, classic(&expected));
        assert!(
            ours.contains("latency_seconds_bucket{check=\"c\",le=\"+Inf\"} 11"),
            "{ours}"
        );
        assert!(
            ours.contains("latency_seconds_bucket{check=\"c\",le=\"0.0005\"} 3"),
            "{ours}"
        );
        // NaN goes in +Inf, as prometheus-client counts it.
        let nan = LatencyCounts::default();
        nan.observe(f64::NAN);
        assert_eq!(
            nan.buckets[LATENCY_BUCKETS.len()].load(Ordering::Relaxed),
            1
        );
        // What it is for: a series per check in 144 bytes.
        assert_eq!(std::mem::size_of::<LatencyCounts>(), 144);
    }

    /// A component of two families: one agent-wide, one per check.
    #[derive(Clone, Debug)]
    struct Sample {
        lag: Histogram,
        runs: Family<CheckLabels, Counter>,
        hooked: Arc<std::sync::atomic::AtomicUsize>,
    }

    impl Component for Sample {
        fn register(registry: &mut Registry) -> Sample {
            let sample = Sample {
                lag: latency_histogram(),
                runs: Family::default(),
                hooked: Arc::default(),
            };
            registry.agent("bastion_sample_lag_seconds", "Lag", sample.lag.clone());
            registry.per_check(
                "bastion_sample_runs",
                "Runs",
                &sample.runs,
                Some(Arc::new(check_labels)),
                Counter::default,
            );
            let hooked = Arc::clone(&sample.hooked);
            registry.before_scrape(move |_| {
                hooked.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            });
            sample
        }
    }

    /// A second component, per check without listable labels.
    #[derive(Clone, Debug)]
    struct Located {
        runs: Family<CheckLabels, Counter>,
    }

    impl Component for Located {
        fn register(registry: &mut Registry) -> Located {
            let located = Located {
                runs: Family::default(),
            };
            registry.per_check(
                "bastion_located_runs",
                "Runs",
                &located.runs,
                None,
                Counter::default,
            );
            located
        }
    }

    #[test]
    fn renders_classic_text_with_build_info_and_histograms() {
        let metrics = Metrics::new();
        let sample: Sample = metrics.component();
        sample.lag.observe(0.003);
        let text = metrics.render();
        assert!(text.contains("bastion_build_info{version=\""), "{text}");
        assert!(text.contains("bastion_runtime_tasks_alive "), "{text}");
        assert!(
            text.contains("# TYPE bastion_sample_lag_seconds histogram"),
            "{text}"
        );
        assert!(
            text.contains("bastion_sample_lag_seconds_bucket{le=\"0.005\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("bastion_sample_lag_seconds_bucket{le=\"0.0025\"} 0"),
            "{text}"
        );
        assert_eq!(sample.hooked.load(std::sync::atomic::Ordering::Relaxed), 1);
    }

    #[test]
    fn a_component_registers_once_and_every_caller_shares_its_families() {
        let metrics = Metrics::new();
        let first: Sample = metrics.component();
        let second: Sample = metrics.component();
        first.lag.observe(0.003);
        second.lag.observe(0.003);
        let text = metrics.render();
        assert_eq!(
            text.matches("# TYPE bastion_sample_lag_seconds histogram")
                .count(),
            1,
            "{text}"
        );
        assert!(
            text.contains("bastion_sample_lag_seconds_count 2"),
            "{text}"
        );
    }

    /// A component whose registration panics half-way.
    #[derive(Clone, Debug)]
    struct Broken;

    impl Component for Broken {
        fn register(registry: &mut Registry) -> Broken {
            registry.agent("bastion_broken_half", "Half", Gauge::<i64>::default());
            panic!("registration failed half-way");
        }
    }

    #[test]
    fn a_registration_that_panics_leaves_no_family_behind() {
        let metrics = Metrics::new();
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _: Broken = metrics.component();
        }));
        assert!(caught.is_err());
        let _: Sample = metrics.component();
        let text = metrics.render();
        assert!(!text.contains("bastion_broken_half"), "{text}");
        assert!(text.contains("bastion_sample_lag_seconds"), "{text}");
    }

    #[test]
    fn a_selection_keeps_the_per_check_series_of_its_checks_and_every_agent_wide_one() {
        let metrics = Metrics::new();
        let sample: Sample = metrics.component();
        let located: Located = metrics.component();
        sample.lag.observe(0.2);
        let names = ["a", "b", "odd \"one\" \\ here", "bb"];
        for check in names {
            let labels = CheckLabels {
                check: check.to_string(),
            };
            sample.runs.get_or_create(&labels).inc();
            located.runs.get_or_create(&labels).inc();
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
        assert!(
            some.contains("bastion_located_runs_total{check=\"b\"} 1"),
            "{some}"
        );
        // A family none of whose checks is chosen is left out, description and all.
        let nobody: std::collections::BTreeSet<String> = ["nobody".to_string()].into();
        let none_chosen = metrics.render_selected(&CheckSelection::Only(Arc::new(nobody)));
        assert!(
            !none_chosen.contains("bastion_sample_runs"),
            "{none_chosen}"
        );
        assert!(
            !none_chosen.contains("bastion_located_runs"),
            "{none_chosen}"
        );
        let none = metrics.render_selected(&CheckSelection::None);
        assert!(!none.contains("check=\""), "{none}");
        assert!(!none.contains("bastion_sample_runs"), "{none}");
        let agent_wide: Vec<&str> = full
            .lines()
            .filter(|line| !line.starts_with('#') && !line.contains("check=\""))
            .filter(|line| !line.starts_with("bastion_runtime_tasks_alive"))
            .collect();
        let kept: Vec<&str> = none
            .lines()
            .filter(|line| !line.starts_with('#'))
            .filter(|line| !line.starts_with("bastion_runtime_tasks_alive"))
            .collect();
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
}
