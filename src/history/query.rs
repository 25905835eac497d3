//! Reading history for the API and the status page: a check's series (uptime, run counts and
//! p50/p90/p99 per phase per step, optionally per instance), uptime over 24 h / 7 d / 30 d for
//! many checks at once, daily uptime bars, latency sparklines and incidents. The SQL only
//! selects rows by key ranges; sums and percentiles are computed here, so both backends run
//! the same statements. Steps under an hour read the raw runs (exact percentiles); longer
//! steps read the hourly or daily rollups (percentiles from their buckets, within 25 %).

use super::db::{on_pool, Db};
use super::histogram::{exact_quantile, Histograms, Reader};
use super::writer::{tier_seconds, DAILY, HOURLY};
use super::{from_millis, millis, HistoryConfig, HistoryError, Outcome, ERROR_KINDS, PHASES};
use futures_util::TryStreamExt;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// The most points one series may have.
pub const MAX_POINTS: u64 = 2_000;

/// The most points the instance series of one answer may hold together (instances × points
/// per series): about 12 MB of JSON. Past it a `by=instance` request is refused with what to
/// ask instead.
pub const MAX_INSTANCE_POINTS: u64 = 20_000;

/// The most bytes of raw runs (their compact per-instance detail) one series reads: about two
/// million instance results, a few hundred milliseconds of decoding. Past it a request without
/// a step is served from the hourly rollups, and one with a step under an hour is refused.
pub const MAX_RAW_BYTES: i64 = 16 * 1024 * 1024;

/// Latency samples held at once for exact percentiles (six phases of 8 bytes each: 12 MB).
/// A step that would need more reads its percentiles from buckets instead (within 25 %).
const MAX_EXACT_SAMPLES: usize = 250_000;

/// The longest step a query may ask for: ten years, beyond any retention.
const MAX_STEP_SECONDS: u64 = 10 * 366 * 86_400;

pub use super::db::READ_TIME_LIMIT;

/// Read access to history; cheap to clone.
#[derive(Debug, Clone)]
pub struct HistoryReader {
    db: Db,
    config: HistoryConfig,
    ready: Arc<AtomicBool>,
}

/// p50, p90 and p99 of one phase, in seconds, and how many samples they come from.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub samples: u64,
}

/// One step of a series.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Point {
    #[serde(with = "crate::time_format")]
    pub start: SystemTime,
    /// Measured runs (up or down).
    pub runs: u64,
    pub down: u64,
    /// Runs in which nothing was measured (every instance hit `dispatch_timeout`).
    pub unmeasured: u64,
    /// (runs - down) / runs; null without runs.
    pub uptime: Option<f64>,
    /// Per phase, over passing instances.
    pub latency: Latency,
}

/// The percentiles of each phase that had samples, in `PHASES` order, held inline (an answer
/// holds tens of thousands of points); it reads and serializes as a map from phase name.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Latency([Option<Percentiles>; PHASES.len()]);

impl Latency {
    /// The figures of one phase (`connect`, `total`, ...), when it had samples.
    pub fn get(&self, phase: &str) -> Option<&Percentiles> {
        let at = PHASES.iter().position(|known| *known == phase)?;
        self.0.get(at)?.as_ref()
    }

    fn set(&mut self, phase: usize, figures: Percentiles) {
        if let Some(slot) = self.0.get_mut(phase) {
            *slot = Some(figures);
        }
    }
}

impl Serialize for Latency {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        // By name, as the map it used to be: connect, processing, resolve, tls, total, transfer.
        let mut phases: Vec<(&str, &Percentiles)> = PHASES
            .iter()
            .zip(&self.0)
            .filter_map(|(name, figures)| Some((*name, figures.as_ref()?)))
            .collect();
        phases.sort_unstable_by_key(|(name, _)| *name);
        let mut map = serializer.serialize_map(Some(phases.len()))?;
        for (name, figures) in phases {
            map.serialize_entry(name, figures)?;
        }
        map.end()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InstanceSeries {
    pub instance: String,
    pub points: Vec<Point>,
}

/// One location's series of a check with `locations` (`by=location`): that location's own
/// runs, judged over its instances.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LocationSeries {
    pub location: String,
    pub points: Vec<Point>,
}

/// A check's history over a range.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Series {
    pub check: String,
    /// Set when the series is one location's runs (`location=`); absent for the check's own
    /// (combined) runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    #[serde(with = "crate::time_format")]
    pub from: SystemTime,
    #[serde(with = "crate::time_format")]
    pub to: SystemTime,
    pub step_seconds: u64,
    /// `runs`, `hourly` or `daily`: where the figures come from.
    pub source: &'static str,
    pub points: Vec<Point>,
    /// With `by=location`: one series per location, beside the combined `points`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub locations: Option<Vec<LocationSeries>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instances: Option<Vec<InstanceSeries>>,
}

/// Uptime over the status page's three windows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Uptimes {
    #[serde(rename = "24h")]
    pub day: Option<f64>,
    #[serde(rename = "7d")]
    pub week: Option<f64>,
    #[serde(rename = "30d")]
    pub month: Option<f64>,
}

impl Uptimes {
    /// Each window with its name as the API spells it, shortest first.
    pub fn windows(&self) -> [(&'static str, Option<f64>); 3] {
        [("24h", self.day), ("7d", self.week), ("30d", self.month)]
    }
}

/// One day's bar.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct DayBar {
    #[serde(with = "crate::time_format")]
    pub day: SystemTime,
    pub runs: u64,
    pub down: u64,
    pub uptime: Option<f64>,
}

/// One incident, as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Incident {
    pub id: i64,
    pub check: String,
    #[serde(with = "crate::time_format")]
    pub started_at: SystemTime,
    /// When the check entered `FAIL` (after `min_failing_time`).
    #[serde(with = "crate::time_format")]
    pub confirmed_at: SystemTime,
    #[serde(with = "crate::time_format::optional")]
    pub ended_at: Option<SystemTime>,
    /// Until `ended_at`, or until now while it is open.
    pub duration_seconds: f64,
    pub open: bool,
    /// Not ended by the check's recovery: see `end_reason`.
    pub interrupted: bool,
    /// Why it ended: `recovered`, `check_changed` (a reload changed what the check probes),
    /// `check_removed`, or `interrupted` (nobody followed it any more: the agent's saved
    /// state was lost, or it predates saved episodes); null while open.
    pub end_reason: Option<String>,
    /// The worst it got: `critical` (FAIL) or `warning` (WARN, with `notify_on` warn).
    pub severity: String,
    /// The failure episode's id, the one its notifications carry (null for incidents
    /// recorded before episodes had ids).
    pub episode_id: Option<String>,
    pub cause: Vec<super::episodes::Cause>,
}

/// Which instances a series covers beside the whole check.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Instances {
    /// The whole check only.
    #[default]
    None,
    /// Every instance with history in the range.
    All,
    /// These instances, by address as results name them (`10.0.0.7:443`).
    Only(Vec<String>),
}

/// What a series asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesQuery {
    pub from: SystemTime,
    pub to: SystemTime,
    /// None picks about 60 points, on the finest tier whose retention still reaches `from`.
    pub step: Option<Duration>,
    pub instances: Instances,
    /// The request's time, taken once per request: retention horizons are measured from it,
    /// so a range that starts exactly at a horizon (`from=24h` with a day of raw runs) is in.
    pub now: SystemTime,
}

/// Where a series reads from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Runs,
    Rollup(i64),
}

impl Source {
    /// The tier a step reads: under an hour the raw runs, under a day the hourly rollups.
    fn for_step(step: u64) -> Source {
        if step < 3_600 {
            Source::Runs
        } else if step < 86_400 {
            Source::Rollup(HOURLY)
        } else {
            Source::Rollup(DAILY)
        }
    }

    /// Seconds per row of the tier; its steps are whole multiples of it.
    fn span(self) -> u64 {
        match self {
            Source::Runs => 1,
            Source::Rollup(tier) => u64::try_from(tier_seconds(tier)).unwrap_or(86_400),
        }
    }

    fn coarser(self) -> Option<Source> {
        match self {
            Source::Runs => Some(Source::Rollup(HOURLY)),
            Source::Rollup(HOURLY) => Some(Source::Rollup(DAILY)),
            Source::Rollup(_) => None,
        }
    }

    fn retention(self, config: &HistoryConfig) -> Duration {
        match self {
            Source::Runs => config.raw_retention,
            Source::Rollup(HOURLY) => config.hourly_retention,
            Source::Rollup(_) => config.daily_retention,
        }
    }

    /// What the tier keeps, for messages.
    fn what(self) -> &'static str {
        match self {
            Source::Runs => "every run",
            Source::Rollup(HOURLY) => "the hourly rollups",
            Source::Rollup(_) => "the daily rollups",
        }
    }

    /// The `source` of a series.
    fn name(self) -> &'static str {
        match self {
            Source::Runs => "runs",
            Source::Rollup(HOURLY) => "hourly",
            Source::Rollup(_) => "daily",
        }
    }
}

/// How one series is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Plan {
    source: Source,
    /// Seconds, a whole multiple of the source's span.
    step: u64,
    /// `from`, rounded down to the source's span.
    start: SystemTime,
    to: SystemTime,
    /// Points of each series: the steps from `start` to `to`, the last one maybe partial.
    points: u64,
}

impl Plan {
    /// The shortest step (a multiple of the source's span) that gives at most `points`.
    fn step_for(&self, points: u64) -> Duration {
        let span_ms = u64::try_from(millis(self.to) - millis(self.start))
            .unwrap_or(0)
            .max(1);
        let step = span_ms.div_ceil(points.max(1) * 1000);
        let unit = self.source.span();
        Duration::from_secs(step.max(1).div_ceil(unit) * unit)
    }
}

fn bad(message: String) -> HistoryError {
    HistoryError::BadQuery(message)
}

fn duration_text(duration: Duration) -> String {
    humantime::format_duration(duration).to_string()
}

/// Picks the source, step and points of a series. An asked step under an hour reads the raw
/// runs, under a day the hourly rollups, else the daily ones; without a step, about 60
/// points, on the finest tier whose retention still reaches `from` (with `coarse`, no finer
/// than the hourly rollups). A range that starts before what its tier keeps (measured from
/// the request's `now`), or that would have more than `MAX_POINTS` points, is refused with
/// what to ask instead.
fn plan(config: &HistoryConfig, query: &SeriesQuery, coarse: bool) -> Result<Plan, HistoryError> {
    let range = query
        .to
        .duration_since(query.from)
        .map_err(|_| bad("`from` must be before `to`".to_string()))?
        .as_secs()
        .max(1);
    let asked = match query.step {
        Some(step) if step.as_secs() > MAX_STEP_SECONDS => {
            return Err(bad(format!(
                "a step of {} is longer than the {} history can span; use a shorter step",
                duration_text(step),
                duration_text(Duration::from_secs(MAX_STEP_SECONDS))
            )));
        }
        Some(step) => Some(step.as_secs().max(1)),
        None => None,
    };
    let wanted = asked.unwrap_or(match range {
        // About 60 points: 10 s steps and up, whole minutes past a minute.
        0..=3_600 => (range / 60).max(10).div_ceil(10) * 10,
        3_601..=172_800 => (range / 60).max(60).div_ceil(60) * 60,
        172_801..=1_209_600 => 3_600,
        _ => 86_400,
    });
    let mut source = Source::for_step(wanted);
    if coarse && source == Source::Runs {
        source = Source::Rollup(HOURLY);
    }
    loop {
        let retention = source.retention(config);
        let horizon = query
            .now
            .checked_sub(retention)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        if query.from >= horizon {
            break;
        }
        let kept = format!(
            "{} is kept for {} only; ask from {} on",
            source.what(),
            duration_text(retention),
            humantime::format_rfc3339_millis(horizon)
        );
        match source.coarser() {
            Some(next) if asked.is_none() => source = next,
            Some(next) => {
                return Err(bad(format!(
                    "{kept}, or use a step of at least {}",
                    duration_text(Duration::from_secs(next.span()))
                )))
            }
            None => return Err(bad(kept)),
        }
    }
    let unit = source.span();
    let step = wanted.max(unit).div_ceil(unit) * unit;
    let start = match source {
        Source::Runs => query.from,
        Source::Rollup(_) => {
            let seconds = millis(query.from) / 1000;
            let unit = i64::try_from(unit).unwrap_or(86_400);
            from_millis((seconds - seconds.rem_euclid(unit)) * 1000)
        }
    };
    let span_ms = u64::try_from(millis(query.to) - millis(start))
        .unwrap_or(0)
        .max(1);
    let points = span_ms.div_ceil(step.saturating_mul(1000));
    let plan = Plan {
        source,
        step,
        start,
        to: query.to,
        points,
    };
    if points > MAX_POINTS {
        return Err(bad(format!(
            "{points} steps of {} is more than the {MAX_POINTS} points a series may have; use a step of at least {} or a shorter range",
            duration_text(Duration::from_secs(step)),
            duration_text(plan.step_for(MAX_POINTS))
        )));
    }
    Ok(plan)
}

/// The refusal of a `by=instance` answer that would hold more than `MAX_INSTANCE_POINTS`
/// points, saying what would fit.
fn too_many_instance_points(plan: &Plan, instances: u64) -> HistoryError {
    let fit_points = MAX_INSTANCE_POINTS / instances.max(1);
    let fit_instances = MAX_INSTANCE_POINTS / plan.points.max(1);
    let fewer_points = if fit_points > 0 {
        format!(
            "a step of at least {} (or a shorter range), ",
            duration_text(plan.step_for(fit_points))
        )
    } else {
        String::new()
    };
    bad(format!(
        "by=instance: {instances} instances × {} points is more than the {MAX_INSTANCE_POINTS} points one answer may hold; ask for {fewer_points}or for at most {fit_instances} instances at this step with instance=ADDRESS,ADDRESS",
        plan.points,
    ))
}

/// The refusal of a `by=location` answer that would hold more than `MAX_INSTANCE_POINTS`
/// location points, saying what would fit.
fn too_many_location_points(plan: &Plan, locations: u64) -> HistoryError {
    let fit_points = MAX_INSTANCE_POINTS / locations.max(1);
    let step = if fit_points > 0 {
        format!(
            "a step of at least {} (or a shorter range), or ",
            duration_text(plan.step_for(fit_points))
        )
    } else {
        String::new()
    };
    bad(format!(
        "by=location: {locations} locations × {} points is more than the {MAX_INSTANCE_POINTS} points one answer may hold; ask for {step}for one location at a time with location=NAME",
        plan.points,
    ))
}

/// The refusal of raw runs past `MAX_RAW_BYTES` at an asked step.
fn too_many_raw_bytes(bytes: i64) -> HistoryError {
    bad(format!(
        "the runs in this range hold {} MiB, more than the {} MiB one series reads; use a step of at least 1h (the hourly rollups) or a shorter range",
        (bytes + (1 << 20) - 1) >> 20,
        MAX_RAW_BYTES >> 20
    ))
}

/// One step's accumulator: small (40 bytes) until samples arrive, since an answer allocates
/// one per point of every series before reading.
#[derive(Debug, Default, Clone)]
struct Acc {
    runs: u64,
    down: u64,
    unmeasured: u64,
    samples: Samples,
}

/// The latency samples of one step.
#[derive(Debug, Clone)]
enum Samples {
    /// Every passing sample's phases (raw runs), for exact percentiles; boxed at the first.
    Exact(Option<Box<[Vec<f64>; 6]>>),
    /// A bucketed distribution: rollups, or raw samples past `MAX_EXACT_SAMPLES`.
    Buckets(Option<Box<Histograms>>),
    /// Worked out once the step was complete (raw runs arrive in time order); None when the
    /// step had no passing sample.
    Settled(Option<Box<Latency>>),
}

impl Default for Samples {
    fn default() -> Samples {
        Samples::Buckets(None)
    }
}

fn exact_latency(values: &mut [Vec<f64>; 6]) -> Latency {
    let mut latency = Latency::default();
    for (phase, values) in values.iter_mut().enumerate() {
        let samples = values.len() as u64;
        if let Some(p50) = exact_quantile(values, 0.5) {
            latency.set(
                phase,
                Percentiles {
                    p50,
                    p90: exact_quantile(values, 0.9).unwrap_or(p50),
                    p99: exact_quantile(values, 0.99).unwrap_or(p50),
                    samples,
                },
            );
        }
    }
    latency
}

fn bucket_latency(hist: &Histograms) -> Latency {
    let mut latency = Latency::default();
    for phase in 0..PHASES.len() {
        if let Some(p50) = hist.quantile(phase, 0.5) {
            latency.set(
                phase,
                Percentiles {
                    p50,
                    p90: hist.quantile(phase, 0.9).unwrap_or(p50),
                    p99: hist.quantile(phase, 0.99).unwrap_or(p50),
                    samples: hist.count(phase),
                },
            );
        }
    }
    latency
}

impl Acc {
    fn new(exact: bool) -> Acc {
        Acc {
            samples: if exact {
                Samples::Exact(None)
            } else {
                Samples::Buckets(None)
            },
            ..Acc::default()
        }
    }

    fn latency(&mut self) -> Latency {
        match &mut self.samples {
            Samples::Settled(latency) => latency.take().map(|latency| *latency),
            Samples::Exact(values) => values.as_deref_mut().map(exact_latency),
            Samples::Buckets(hist) => hist.as_deref().map(bucket_latency),
        }
        .unwrap_or_default()
    }

    fn point(mut self, start: SystemTime) -> Point {
        let latency = self.latency();
        Point {
            start,
            runs: self.runs,
            down: self.down,
            unmeasured: self.unmeasured,
            uptime: ratio(self.runs, self.down),
            latency,
        }
    }

    fn count(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Up => self.runs += 1,
            Outcome::Down => {
                self.runs += 1;
                self.down += 1;
            }
            Outcome::Unmeasured => self.unmeasured += 1,
        }
    }

    /// Adds a passing sample's phases; `live` counts the exact samples held by every
    /// accumulator of the series. Past `MAX_EXACT_SAMPLES` this step goes to buckets.
    fn observe(&mut self, phases: &[f64; 6], live: &mut usize) {
        if let Samples::Exact(values) = &mut self.samples {
            if *live < MAX_EXACT_SAMPLES {
                let values = values.get_or_insert_with(Default::default);
                for (values, value) in values.iter_mut().zip(phases) {
                    values.push(*value);
                }
                *live += 1;
                return;
            }
        }
        if let Some(hist) = self.buckets(live) {
            hist.observe(phases);
        }
    }

    /// The step's buckets, its exact samples moved into them first (and no longer counted
    /// in `live`); None once the step is settled.
    fn buckets(&mut self, live: &mut usize) -> Option<&mut Histograms> {
        let hist = match std::mem::take(&mut self.samples) {
            Samples::Buckets(hist) => hist.unwrap_or_default(),
            Samples::Exact(values) => {
                let mut hist = Box::<Histograms>::default();
                if let Some(values) = values {
                    let held = values[0].len();
                    for at in 0..held {
                        let mut phases = [0.0; 6];
                        for (phase, column) in phases.iter_mut().zip(values.iter()) {
                            *phase = column.get(at).copied().unwrap_or(0.0);
                        }
                        hist.observe(&phases);
                    }
                    *live = live.saturating_sub(held);
                }
                hist
            }
            settled @ Samples::Settled(_) => {
                self.samples = settled;
                return None;
            }
        };
        self.samples = Samples::Buckets(Some(hist));
        match &mut self.samples {
            Samples::Buckets(Some(hist)) => Some(hist),
            _ => None,
        }
    }

    /// Works out the percentiles of a complete step and frees its samples.
    fn settle(&mut self, live: &mut usize) {
        if matches!(self.samples, Samples::Settled(_)) {
            return;
        }
        let held = match &self.samples {
            Samples::Exact(Some(values)) => values[0].len(),
            _ => 0,
        };
        let latency = self.latency();
        self.samples = Samples::Settled((latency != Latency::default()).then(|| Box::new(latency)));
        *live = live.saturating_sub(held);
    }
}

fn ratio(runs: u64, down: u64) -> Option<f64> {
    (runs > 0).then(|| (runs - down.min(runs)) as f64 / runs as f64)
}

/// Folds the rows of one series into its points, holding at most `MAX_EXACT_SAMPLES` samples
/// and `MAX_INSTANCE_POINTS` instance points at any time. An answer found past the instance
/// bound drops what it built and only counts the instances to the end, so its refusal names
/// the real count and a step that fits.
struct Builder {
    plan: Plan,
    start_ms: i64,
    step_ms: i64,
    whole: Vec<Acc>,
    /// Per instance id, with `by=instance`.
    instances: Option<BTreeMap<i64, Vec<Acc>>>,
    /// Only the instances already in `instances` (they were asked for by address).
    only: bool,
    /// Set past the instance bound: every instance id seen.
    counting: Option<HashSet<i64>>,
    /// Raw runs arrive in time order: steps before this one are complete.
    open_step: usize,
    /// Exact samples held.
    live: usize,
}

impl Builder {
    fn new(plan: Plan, by_instance: bool, only: Option<&[(i64, String)]>) -> Builder {
        let points = usize::try_from(plan.points).unwrap_or(1);
        let exact = plan.source == Source::Runs;
        let instances = by_instance.then(|| {
            only.unwrap_or_default()
                .iter()
                .map(|(id, _)| (*id, vec![Acc::new(exact); points]))
                .collect()
        });
        Builder {
            plan,
            start_ms: millis(plan.start),
            step_ms: i64::try_from(plan.step.saturating_mul(1000)).unwrap_or(i64::MAX),
            whole: vec![Acc::new(exact); points],
            instances,
            only: only.is_some(),
            counting: None,
            open_step: 0,
            live: 0,
        }
    }

    fn index(&self, at_ms: i64) -> Option<usize> {
        usize::try_from(at_ms.checked_sub(self.start_ms)? / self.step_ms)
            .ok()
            .filter(|index| *index < self.whole.len())
    }

    /// The accumulators of one instance: None when the answer is not by instance, the
    /// instance was not asked for, or the answer went past the instance bound (then what was
    /// built is dropped and the instances are only counted).
    fn instance<'a>(
        instances: &'a mut Option<BTreeMap<i64, Vec<Acc>>>,
        counting: &mut Option<HashSet<i64>>,
        plan: &Plan,
        only: bool,
        id: i64,
    ) -> Option<&'a mut Vec<Acc>> {
        if let Some(seen) = counting.as_mut() {
            seen.insert(id);
            return None;
        }
        let known = instances.as_ref()?.contains_key(&id);
        if !known {
            if only {
                return None;
            }
            let count = instances.as_ref().map_or(0, BTreeMap::len) as u64 + 1;
            if count.saturating_mul(plan.points) > MAX_INSTANCE_POINTS {
                let mut seen: HashSet<i64> = instances
                    .take()
                    .map(|all| all.into_keys().collect())
                    .unwrap_or_default();
                seen.insert(id);
                *counting = Some(seen);
                return None;
            }
        }
        let points = usize::try_from(plan.points).unwrap_or(1);
        let exact = plan.source == Source::Runs;
        Some(
            instances
                .as_mut()?
                .entry(id)
                .or_insert_with(|| vec![Acc::new(exact); points]),
        )
    }

    /// One raw run (rows come in time order).
    fn run(&mut self, at_ms: i64, outcome: i16, detail: &[u8]) {
        let Some(index) = self.index(at_ms) else {
            return;
        };
        if let Some(seen) = self.counting.as_mut() {
            seen.extend(
                decode_detail(detail)
                    .iter()
                    .map(|sample| sample.instance_id),
            );
            return;
        }
        let Builder {
            plan,
            whole,
            instances,
            only,
            counting,
            open_step,
            live,
            ..
        } = self;
        // Steps before this one are complete: their samples become percentiles.
        while *open_step < index {
            if let Some(acc) = whole.get_mut(*open_step) {
                acc.settle(live);
            }
            for accs in instances.iter_mut().flat_map(|all| all.values_mut()) {
                if let Some(acc) = accs.get_mut(*open_step) {
                    acc.settle(live);
                }
            }
            *open_step += 1;
        }
        let Some(acc) = whole.get_mut(index) else {
            return;
        };
        acc.count(Outcome::from_code(i64::from(outcome)));
        for sample in decode_detail(detail) {
            if sample.outcome == Outcome::Up {
                acc.observe(&sample.phases, live);
            }
            let id = sample.instance_id;
            if let Some(accs) = Builder::instance(instances, counting, plan, *only, id) {
                if let Some(instance) = accs.get_mut(index) {
                    instance.count(sample.outcome);
                    if sample.outcome == Outcome::Up {
                        instance.observe(&sample.phases, live);
                    }
                }
            }
        }
    }

    /// One rollup row: instance 0 is the whole check.
    fn rollup(
        &mut self,
        instance_id: i64,
        bucket: i64,
        (runs, down, unmeasured): (i64, i64, i64),
        hist: &[u8],
    ) {
        let Some(index) = bucket.checked_mul(1000).and_then(|at| self.index(at)) else {
            return;
        };
        let acc = if instance_id == 0 {
            self.whole.get_mut(index)
        } else {
            Builder::instance(
                &mut self.instances,
                &mut self.counting,
                &self.plan,
                self.only,
                instance_id,
            )
            .and_then(|accs| accs.get_mut(index))
        };
        if let Some(acc) = acc {
            acc.runs += u64::try_from(runs).unwrap_or(0);
            acc.down += u64::try_from(down).unwrap_or(0);
            acc.unmeasured += u64::try_from(unmeasured).unwrap_or(0);
            let mut none = 0;
            if let Some(buckets) = acc.buckets(&mut none) {
                buckets.merge(&Histograms::decode(hist));
            }
        }
    }

    /// The series, or the refusal of an answer past the instance bound.
    fn finish(self, check: &str, names: &HashMap<i64, String>) -> Result<Series, HistoryError> {
        let Builder {
            plan,
            whole,
            instances,
            counting,
            ..
        } = self;
        if let Some(seen) = counting {
            return Err(too_many_instance_points(&plan, seen.len() as u64));
        }
        let instances = instances.map(|all| {
            let mut list: Vec<InstanceSeries> = all
                .into_iter()
                .map(|(id, accs)| InstanceSeries {
                    instance: names.get(&id).cloned().unwrap_or_else(|| format!("#{id}")),
                    points: points(accs, plan.start, plan.step),
                })
                .collect();
            list.sort_by(|a, b| a.instance.cmp(&b.instance));
            list
        });
        Ok(Series {
            check: check.to_string(),
            location: None,
            from: plan.start,
            to: plan.to,
            step_seconds: plan.step,
            source: plan.source.name(),
            points: points(whole, plan.start, plan.step),
            locations: None,
            instances,
        })
    }
}

/// A decoded sample of the raw detail.
struct RawSample {
    instance_id: i64,
    outcome: Outcome,
    phases: [f64; 6],
}

fn decode_detail(bytes: &[u8]) -> Vec<RawSample> {
    let mut reader = Reader { bytes, at: 0 };
    let mut samples = Vec::new();
    while reader.at < bytes.len() {
        let (Some(instance), Some(code)) = (reader.varint(), reader.byte()) else {
            break;
        };
        let mut phases = [0.0; 6];
        for phase in phases.iter_mut() {
            *phase = reader.varint().unwrap_or(0) as f64 / 1e6;
        }
        let unmeasured = code
            .checked_sub(2)
            .and_then(|at| ERROR_KINDS.get(usize::from(at)))
            .is_some_and(|kind| kind.is_unmeasured());
        let outcome = match code {
            0 => Outcome::Up,
            _ if unmeasured => Outcome::Unmeasured,
            _ => Outcome::Down,
        };
        samples.push(RawSample {
            instance_id: i64::try_from(instance).unwrap_or(0),
            outcome,
            phases,
        });
    }
    samples
}

/// `$first`, `$first+1`, ... for an IN list of `count` values. A statement with such a list is
/// run with `persistent(false)` when the list's length is not bounded small: its text changes
/// with the length, and sqlx would keep each length's prepared program per connection.
fn placeholders(first: usize, count: usize) -> String {
    (first..first + count)
        .map(|n| format!("${n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl HistoryReader {
    /// A reader on its own pool of `db`'s database (`Db::for_reading`).
    pub(super) fn new(db: Db, config: HistoryConfig) -> HistoryReader {
        HistoryReader {
            db: db.for_reading(),
            config,
            ready: Arc::new(AtomicBool::new(false)),
        }
    }

    pub(super) fn ready_flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.ready)
    }

    /// A query no database could answer is refused as such (a 400) whether or not the
    /// database is open yet; the same plan is made again when it is read.
    fn check_query(&self, query: &SeriesQuery) -> Result<(), HistoryError> {
        plan(&self.config, query, false).map(drop)
    }

    fn check_ready(&self) -> Result<(), HistoryError> {
        if self.ready.load(Ordering::Acquire) {
            Ok(())
        } else {
            Err(HistoryError::NotReady)
        }
    }

    /// How long each tier is kept.
    pub fn config(&self) -> &HistoryConfig {
        &self.config
    }

    async fn check_ids(&self, names: &[String]) -> Result<HashMap<i64, String>, HistoryError> {
        let mut ids = HashMap::new();
        for chunk in names.chunks(500) {
            let sql = format!(
                "SELECT id, name FROM checks WHERE name IN ({})",
                placeholders(1, chunk.len())
            );
            let rows: Vec<(i64, String)> = on_pool!(&self.db, pool => {
                let mut query = sqlx::query_as(&sql).persistent(false);
                for name in chunk {
                    query = query.bind(name);
                }
                query.fetch_all(pool).await?
            });
            ids.extend(rows);
        }
        Ok(ids)
    }

    async fn check_id(&self, name: &str) -> Result<Option<i64>, HistoryError> {
        Ok(on_pool!(&self.db, pool => {
            sqlx::query_scalar::<_, i64>("SELECT id FROM checks WHERE name = $1")
                .bind(name)
                .fetch_optional(pool)
                .await?
        }))
    }

    /// A check's series (steps start at `from`, rounded down to the hour or day for rollups),
    /// per instance as well when asked. Bounded: at most `MAX_POINTS` points a series,
    /// `MAX_INSTANCE_POINTS` instance points, `MAX_RAW_BYTES` of raw runs read, and
    /// `READ_TIME_LIMIT`; past a bound the answer is refused with what to ask instead.
    pub async fn series(&self, check: &str, query: &SeriesQuery) -> Result<Series, HistoryError> {
        self.check_query(query)?;
        self.check_ready()?;
        within(self.read_series(check, query)).await
    }

    /// One location's series of a check with `locations`: that location's own runs (stored
    /// under `check@location`), judged over its instances, named as the check with `location`
    /// set. Bounded as `series`; `by=instance` reads that location's instances.
    pub async fn location_series(
        &self,
        check: &str,
        location: &str,
        query: &SeriesQuery,
    ) -> Result<Series, HistoryError> {
        self.check_query(query)?;
        self.check_ready()?;
        within(async {
            let mut series = self
                .read_series(&super::location_check(check, location), query)
                .await?;
            series.check = check.to_string();
            series.location = Some(location.to_string());
            Ok(series)
        })
        .await
    }

    /// The check's combined series and, beside it, one series per location (`by=location`):
    /// the `locations` named, or with None every location with history (`["*"]`). One plan for
    /// them all: at most `MAX_INSTANCE_POINTS` location points, and at most `MAX_RAW_BYTES` of
    /// raw runs read together (past it, without a step, the hourly rollups, as for one
    /// series); past a bound the answer is refused with what to ask instead.
    pub async fn series_by_location(
        &self,
        check: &str,
        locations: Option<&[String]>,
        query: &SeriesQuery,
    ) -> Result<Series, HistoryError> {
        self.check_query(query)?;
        self.check_ready()?;
        within(self.read_by_location(check, locations, query)).await
    }

    async fn read_by_location(
        &self,
        check: &str,
        locations: Option<&[String]>,
        query: &SeriesQuery,
    ) -> Result<Series, HistoryError> {
        let mut plan = plan(&self.config, query, false)?;
        let mut names: Vec<String> = match locations {
            Some(named) => named.to_vec(),
            None => self.locations_with_history(check).await?,
        };
        names.sort_unstable();
        names.dedup();
        let count = names.len() as u64;
        if count.saturating_mul(plan.points) > MAX_INSTANCE_POINTS {
            return Err(too_many_location_points(&plan, count));
        }
        let stored: Vec<String> = names
            .iter()
            .map(|location| super::location_check(check, location))
            .chain(std::iter::once(check.to_string()))
            .collect();
        let ids: HashMap<String, i64> = self
            .check_ids(&stored)
            .await?
            .into_iter()
            .map(|(id, name)| (name, id))
            .collect();
        if plan.source == Source::Runs {
            let all: Vec<i64> = ids.values().copied().collect();
            let bytes = self.raw_bytes_of(&all, plan.start, plan.to).await?;
            if bytes > MAX_RAW_BYTES {
                if query.step.is_some() {
                    return Err(too_many_raw_bytes(bytes));
                }
                plan = self::plan(&self.config, query, true)?;
            }
        }
        let none = HashMap::new();
        let mut whole = Builder::new(plan, false, None);
        if let Some(id) = ids.get(check) {
            self.fill(&mut whole, *id, false).await?;
        }
        let mut series = whole.finish(check, &none)?;
        // One location at a time: each builder is done (its samples percentiles) before the
        // next one reads.
        let mut list = Vec::with_capacity(names.len());
        for (location, name) in names.into_iter().zip(&stored) {
            let mut builder = Builder::new(plan, false, None);
            if let Some(id) = ids.get(name) {
                self.fill(&mut builder, *id, false).await?;
            }
            list.push(LocationSeries {
                location,
                points: builder.finish(check, &none)?.points,
            });
        }
        series.locations = Some(list);
        Ok(series)
    }

    /// The locations of `check` with runs stored (`check@location`), by name; more than
    /// `MAX_INSTANCE_POINTS` are never needed (no answer could hold them).
    async fn locations_with_history(&self, check: &str) -> Result<Vec<String>, HistoryError> {
        let prefix = super::location_check(check, "");
        // `_` is a LIKE wildcard and occurs in names; `!` escapes it.
        let mut pattern = String::with_capacity(prefix.len() + 4);
        for c in prefix.chars() {
            if matches!(c, '%' | '_' | '!') {
                pattern.push('!');
            }
            pattern.push(c);
        }
        pattern.push('%');
        let names: Vec<String> = on_pool!(&self.db, pool => {
            sqlx::query_scalar::<_, String>(
                "SELECT name FROM checks WHERE name LIKE $1 ESCAPE '!' ORDER BY name LIMIT $2",
            )
            .bind(&pattern)
            .bind(i64::try_from(MAX_INSTANCE_POINTS).unwrap_or(i64::MAX) + 1)
            .fetch_all(pool)
            .await?
        });
        // SQLite's LIKE ignores ASCII case; the prefix itself must match exactly.
        Ok(names
            .into_iter()
            .filter_map(|name| name.strip_prefix(&prefix).map(str::to_string))
            .collect())
    }

    /// Bytes of raw detail the range holds over several stored checks.
    async fn raw_bytes_of(
        &self,
        check_ids: &[i64],
        from: SystemTime,
        to: SystemTime,
    ) -> Result<i64, HistoryError> {
        let mut total: i64 = 0;
        for chunk in check_ids.chunks(500) {
            let sql = format!(
                "SELECT CAST(COALESCE(SUM(LENGTH(detail)), 0) AS BIGINT) FROM runs \
                 WHERE at_ms >= $1 AND at_ms < $2 AND check_id IN ({})",
                placeholders(3, chunk.len())
            );
            let bytes = on_pool!(&self.db, pool => {
                let mut query = sqlx::query_scalar::<_, i64>(&sql)
                    .persistent(false)
                    .bind(millis(from))
                    .bind(millis(to));
                for id in chunk {
                    query = query.bind(*id);
                }
                query.fetch_one(pool).await?
            });
            total = total.saturating_add(bytes);
        }
        Ok(total)
    }

    async fn read_series(&self, check: &str, query: &SeriesQuery) -> Result<Series, HistoryError> {
        let mut plan = plan(&self.config, query, false)?;
        let wanted: Option<Vec<&str>> = match &query.instances {
            Instances::Only(addresses) => {
                let mut seen = HashSet::with_capacity(addresses.len());
                let unique: Vec<&str> = addresses
                    .iter()
                    .map(|address| address.trim())
                    .filter(|address| !address.is_empty() && seen.insert(*address))
                    .collect();
                Some(unique)
            }
            _ => None,
        };
        let by_instance = query.instances != Instances::None;
        let Some(check_id) = self.check_id(check).await? else {
            if let Some(address) = wanted.as_ref().and_then(|all| all.first()) {
                return Err(unknown_instance(address));
            }
            return Builder::new(plan, by_instance, None).finish(check, &HashMap::new());
        };
        if plan.source == Source::Runs {
            let bytes = self.raw_bytes(check_id, plan.start, plan.to).await?;
            if bytes > MAX_RAW_BYTES {
                if query.step.is_some() {
                    return Err(too_many_raw_bytes(bytes));
                }
                plan = self::plan(&self.config, query, true)?;
            }
        }
        if let Some(addresses) = &wanted {
            let count = addresses.len() as u64;
            if count.saturating_mul(plan.points) > MAX_INSTANCE_POINTS {
                return Err(too_many_instance_points(&plan, count));
            }
        }
        let names: HashMap<i64, String> = if by_instance {
            on_pool!(&self.db, pool => {
                sqlx::query_as::<_, (i64, String)>(
                    "SELECT id, address FROM instances WHERE check_id = $1",
                )
                .bind(check_id)
                .fetch_all(pool)
                .await?
                .into_iter()
                .collect()
            })
        } else {
            HashMap::new()
        };
        let only: Option<Vec<(i64, String)>> = match wanted {
            Some(addresses) => {
                let ids: HashMap<&str, i64> = names
                    .iter()
                    .map(|(id, address)| (address.as_str(), *id))
                    .collect();
                let mut only = Vec::with_capacity(addresses.len());
                for address in addresses {
                    let id = ids.get(address).ok_or_else(|| unknown_instance(address))?;
                    only.push((*id, address.to_string()));
                }
                Some(only)
            }
            None => None,
        };
        let mut builder = Builder::new(plan, by_instance, only.as_deref());
        self.fill(&mut builder, check_id, by_instance).await?;
        builder.finish(check, &names)
    }

    /// Reads one stored check's rows of the builder's range into it: the raw runs in time
    /// order, or the rollups (only the whole check's, unless `by_instance`).
    async fn fill(
        &self,
        builder: &mut Builder,
        check_id: i64,
        by_instance: bool,
    ) -> Result<(), HistoryError> {
        let plan = builder.plan;
        let to_ms = millis(plan.to);
        match plan.source {
            Source::Runs => {
                on_pool!(&self.db, pool => {
                    let mut rows = sqlx::query_as::<_, (i64, i16, Vec<u8>)>(
                        "SELECT at_ms, outcome, detail FROM runs \
                         WHERE check_id = $1 AND at_ms >= $2 AND at_ms < $3 ORDER BY at_ms",
                    )
                    .bind(check_id)
                    .bind(builder.start_ms)
                    .bind(to_ms)
                    .fetch(pool);
                    while let Some((at, outcome, detail)) = rows.try_next().await? {
                        builder.run(at, outcome, &detail);
                    }
                });
            }
            Source::Rollup(tier) => {
                let instance_filter = if by_instance {
                    ""
                } else {
                    " AND instance_id = 0"
                };
                let sql = format!(
                    "SELECT instance_id, bucket, runs, down, unmeasured, hist FROM rollups \
                     WHERE tier = $1 AND check_id = $2 AND bucket >= $3 AND bucket < $4{instance_filter}"
                );
                on_pool!(&self.db, pool => {
                    let mut rows = sqlx::query_as::<_, (i64, i64, i64, i64, i64, Vec<u8>)>(&sql)
                        .bind(tier as i16)
                        .bind(check_id)
                        .bind(builder.start_ms / 1000)
                        .bind(to_ms.div_euclid(1000) + i64::from(to_ms.rem_euclid(1000) > 0))
                        .fetch(pool);
                    while let Some((instance, bucket, runs, down, unmeasured, hist)) =
                        rows.try_next().await?
                    {
                        builder.rollup(instance, bucket, (runs, down, unmeasured), &hist);
                    }
                });
            }
        }
        Ok(())
    }

    /// Bytes of raw detail a range holds, read from the rows' lengths (the blobs themselves
    /// are not read).
    async fn raw_bytes(
        &self,
        check_id: i64,
        from: SystemTime,
        to: SystemTime,
    ) -> Result<i64, HistoryError> {
        Ok(on_pool!(&self.db, pool => {
            sqlx::query_scalar::<_, i64>(
                "SELECT CAST(COALESCE(SUM(LENGTH(detail)), 0) AS BIGINT) FROM runs \
                 WHERE check_id = $1 AND at_ms >= $2 AND at_ms < $3",
            )
            .bind(check_id)
            .bind(millis(from))
            .bind(millis(to))
            .fetch_one(pool)
            .await?
        }))
    }

    /// Uptime over 24 h and 7 d (from the hourly rollups of the hours that overlap the
    /// window) and 30 d (from the daily rollups of the days that overlap it), per check.
    pub async fn uptimes(
        &self,
        checks: &[String],
        now: SystemTime,
    ) -> Result<HashMap<String, Uptimes>, HistoryError> {
        self.check_ready()?;
        within(self.read_uptimes(checks, now)).await
    }

    async fn read_uptimes(
        &self,
        checks: &[String],
        now: SystemTime,
    ) -> Result<HashMap<String, Uptimes>, HistoryError> {
        let ids = self.check_ids(checks).await?;
        let mut out = HashMap::new();
        if ids.is_empty() {
            return Ok(out);
        }
        let seconds = millis(now) / 1000;
        let floor = |at: i64, span: i64| at - at.rem_euclid(span);
        let day_from = floor(seconds - 86_400, 3_600);
        let week_from = floor(seconds - 7 * 86_400, 3_600);
        let month_from = floor(seconds - 30 * 86_400, 86_400);
        let id_list: Vec<i64> = ids.keys().copied().collect();
        let sql = format!(
            "SELECT check_id, \
             CAST(SUM(CASE WHEN tier = 1 AND bucket >= $1 THEN runs ELSE 0 END) AS BIGINT), \
             CAST(SUM(CASE WHEN tier = 1 AND bucket >= $1 THEN down ELSE 0 END) AS BIGINT), \
             CAST(SUM(CASE WHEN tier = 1 THEN runs ELSE 0 END) AS BIGINT), \
             CAST(SUM(CASE WHEN tier = 1 THEN down ELSE 0 END) AS BIGINT), \
             CAST(SUM(CASE WHEN tier = 2 THEN runs ELSE 0 END) AS BIGINT), \
             CAST(SUM(CASE WHEN tier = 2 THEN down ELSE 0 END) AS BIGINT) \
             FROM rollups WHERE instance_id = 0 \
             AND ((tier = 1 AND bucket >= $2) OR (tier = 2 AND bucket >= $3)) \
             AND check_id IN ({}) GROUP BY check_id",
            placeholders(4, id_list.len())
        );
        type Row = (i64, i64, i64, i64, i64, i64, i64);
        let rows: Vec<Row> = on_pool!(&self.db, pool => {
            let mut query = sqlx::query_as(&sql).persistent(false).bind(day_from).bind(week_from).bind(month_from);
            for id in &id_list {
                query = query.bind(*id);
            }
            query.fetch_all(pool).await?
        });
        let count = |value: i64| u64::try_from(value).unwrap_or(0);
        for (id, day_runs, day_down, week_runs, week_down, month_runs, month_down) in rows {
            if let Some(name) = ids.get(&id) {
                out.insert(
                    name.clone(),
                    Uptimes {
                        day: ratio(count(day_runs), count(day_down)),
                        week: ratio(count(week_runs), count(week_down)),
                        month: ratio(count(month_runs), count(month_down)),
                    },
                );
            }
        }
        Ok(out)
    }

    /// The median total latency of each of the last `hours` hours, per check (None for an
    /// hour without passing runs), oldest first.
    pub async fn sparklines(
        &self,
        checks: &[String],
        hours: usize,
        now: SystemTime,
    ) -> Result<HashMap<String, Vec<Option<f64>>>, HistoryError> {
        self.check_ready()?;
        within(self.read_sparklines(checks, hours, now)).await
    }

    async fn read_sparklines(
        &self,
        checks: &[String],
        hours: usize,
        now: SystemTime,
    ) -> Result<HashMap<String, Vec<Option<f64>>>, HistoryError> {
        let ids = self.check_ids(checks).await?;
        let mut out: HashMap<String, Vec<Option<f64>>> = HashMap::new();
        if ids.is_empty() {
            return Ok(out);
        }
        let seconds = millis(now) / 1000;
        let current = seconds - seconds.rem_euclid(3_600);
        let first = current - 3_600 * (i64::try_from(hours).unwrap_or(24) - 1);
        let id_list: Vec<i64> = ids.keys().copied().collect();
        let sql = format!(
            "SELECT check_id, bucket, hist FROM rollups WHERE tier = 1 AND instance_id = 0 \
             AND bucket >= $1 AND check_id IN ({})",
            placeholders(2, id_list.len())
        );
        let rows: Vec<(i64, i64, Vec<u8>)> = on_pool!(&self.db, pool => {
            let mut query = sqlx::query_as(&sql).persistent(false).bind(first);
            for id in &id_list {
                query = query.bind(*id);
            }
            query.fetch_all(pool).await?
        });
        for (id, bucket, hist) in rows {
            let Some(name) = ids.get(&id) else { continue };
            let line = out.entry(name.clone()).or_insert_with(|| vec![None; hours]);
            if let Ok(index) = usize::try_from((bucket - first) / 3_600) {
                if let Some(slot) = line.get_mut(index) {
                    *slot = Histograms::decode(&hist).quantile(PHASES.len() - 1, 0.5);
                }
            }
        }
        Ok(out)
    }

    /// One bar per day for the last `days` days (UTC), oldest first.
    pub async fn daily_bars(
        &self,
        check: &str,
        days: usize,
        now: SystemTime,
    ) -> Result<Vec<DayBar>, HistoryError> {
        self.check_ready()?;
        within(self.read_daily_bars(check, days, now)).await
    }

    async fn read_daily_bars(
        &self,
        check: &str,
        days: usize,
        now: SystemTime,
    ) -> Result<Vec<DayBar>, HistoryError> {
        let seconds = millis(now) / 1000;
        let today = seconds - seconds.rem_euclid(86_400);
        let first = today - 86_400 * (i64::try_from(days).unwrap_or(90) - 1);
        let mut bars: Vec<DayBar> = (0..days)
            .map(|day| DayBar {
                day: from_millis((first + 86_400 * day as i64) * 1000),
                runs: 0,
                down: 0,
                uptime: None,
            })
            .collect();
        let Some(check_id) = self.check_id(check).await? else {
            return Ok(bars);
        };
        let rows: Vec<(i64, i64, i64)> = on_pool!(&self.db, pool => {
            sqlx::query_as(
                "SELECT bucket, runs, down FROM rollups WHERE tier = 2 AND instance_id = 0 \
                 AND check_id = $1 AND bucket >= $2",
            )
            .bind(check_id)
            .bind(first)
            .fetch_all(pool)
            .await?
        });
        for (bucket, runs, down) in rows {
            if let Some(bar) = usize::try_from((bucket - first) / 86_400)
                .ok()
                .and_then(|index| bars.get_mut(index))
            {
                bar.runs = u64::try_from(runs).unwrap_or(0);
                bar.down = u64::try_from(down).unwrap_or(0);
                bar.uptime = ratio(bar.runs, bar.down);
            }
        }
        Ok(bars)
    }

    /// Incidents that were open at some time after `from`, newest first, at most `limit`.
    pub async fn incidents(
        &self,
        check: Option<&str>,
        from: SystemTime,
        limit: usize,
        now: SystemTime,
    ) -> Result<Vec<Incident>, HistoryError> {
        self.check_ready()?;
        within(self.read_incidents(check, from, limit, now)).await
    }

    async fn read_incidents(
        &self,
        check: Option<&str>,
        from: SystemTime,
        limit: usize,
        now: SystemTime,
    ) -> Result<Vec<Incident>, HistoryError> {
        let filter = if check.is_some() {
            " AND c.name = $3"
        } else {
            ""
        };
        let sql = format!(
            "SELECT i.id, c.name, i.started_ms, i.confirmed_ms, i.ended_ms, i.interrupted, i.cause, \
             i.end_reason, i.severity, i.episode_id \
             FROM incidents i JOIN checks c ON c.id = i.check_id \
             WHERE (i.ended_ms IS NULL OR i.ended_ms >= $1){filter} \
             ORDER BY i.started_ms DESC, i.id DESC LIMIT $2"
        );
        type Row = (
            i64,
            String,
            i64,
            i64,
            Option<i64>,
            i16,
            String,
            Option<String>,
            Option<String>,
            Option<String>,
        );
        let limit = i64::try_from(limit).unwrap_or(1000);
        let rows: Vec<Row> = on_pool!(&self.db, pool => {
            let mut query = sqlx::query_as(&sql).bind(millis(from)).bind(limit);
            if let Some(check) = check {
                query = query.bind(check);
            }
            query.fetch_all(pool).await?
        });
        Ok(rows
            .into_iter()
            .map(
                |(
                    id,
                    check,
                    started,
                    confirmed,
                    ended,
                    interrupted,
                    cause,
                    end_reason,
                    severity,
                    episode_id,
                )| {
                    let end = ended.unwrap_or_else(|| millis(now));
                    Incident {
                        id,
                        check,
                        started_at: from_millis(started),
                        confirmed_at: from_millis(confirmed),
                        ended_at: ended.map(from_millis),
                        duration_seconds: (end - started).max(0) as f64 / 1000.0,
                        open: ended.is_none(),
                        interrupted: interrupted != 0,
                        // Rows from before reasons were kept: ended by a recovery, or not.
                        end_reason: end_reason.or_else(|| {
                            ended.map(|_| {
                                if interrupted != 0 {
                                    "interrupted"
                                } else {
                                    "recovered"
                                }
                                .to_string()
                            })
                        }),
                        severity: severity.unwrap_or_else(|| "critical".to_string()),
                        episode_id,
                        cause: serde_json::from_str(&cause).unwrap_or_default(),
                    }
                },
            )
            .collect())
    }
}

fn points(accs: Vec<Acc>, from: SystemTime, step: u64) -> Vec<Point> {
    accs.into_iter()
        .enumerate()
        .map(|(index, acc)| acc.point(from + Duration::from_secs(step * index as u64)))
        .collect()
}

/// Runs one read within `READ_TIME_LIMIT`. Whichever limit ends it (this one, the pool's
/// wait for a connection, PostgreSQL's `statement_timeout`, SQLite's busy timeout), the error
/// is the same `TimedOut`.
async fn within<T>(
    read: impl std::future::Future<Output = Result<T, HistoryError>>,
) -> Result<T, HistoryError> {
    match tokio::time::timeout(READ_TIME_LIMIT, read).await {
        Ok(Err(HistoryError::Database(error))) if timed_out(&error) => {
            Err(HistoryError::TimedOut(READ_TIME_LIMIT))
        }
        Ok(result) => result,
        Err(_) => Err(HistoryError::TimedOut(READ_TIME_LIMIT)),
    }
}

/// Whether a database error is one of the read limits running out.
fn timed_out(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::PoolTimedOut => true,
        sqlx::Error::Database(error) => {
            let code = error.code();
            if error
                .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
                .is_some()
            {
                // query_canceled: the statement_timeout.
                code.as_deref() == Some("57014")
            } else {
                // SQLITE_BUSY, in any of its extended forms.
                code.and_then(|code| code.parse::<i32>().ok())
                    .is_some_and(|code| code & 0xff == 5)
            }
        }
        _ => false,
    }
}

fn unknown_instance(address: &str) -> HistoryError {
    bad(format!(
        "instance `{address}` has no history for this check; by=instance lists the instances that have"
    ))
}

#[cfg(test)]
mod tests {
    use super::super::histogram::varint;
    use super::*;

    const HOUR: u64 = 3_600;
    const DAY: u64 = 86_400;

    /// A whole hour, so that rollup steps start at `from` exactly.
    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(20_000 * DAY + 12 * HOUR)
    }

    fn query(ago: Duration, step: Option<u64>) -> SeriesQuery {
        SeriesQuery {
            from: now() - ago,
            to: now(),
            step: step.map(Duration::from_secs),
            instances: Instances::None,
            now: now(),
        }
    }

    fn source(result: &Result<Plan, HistoryError>) -> &'static str {
        match result {
            Ok(plan) => plan.source.name(),
            Err(error) => panic!("refused: {error}"),
        }
    }

    fn refusal(result: Result<Plan, HistoryError>) -> String {
        match result {
            Err(HistoryError::BadQuery(message)) => message,
            other => panic!("not refused as a bad query: {other:?}"),
        }
    }

    #[test]
    fn every_range_the_page_offers_is_read_from_the_finest_tier_that_holds_it() {
        let config = HistoryConfig::default();
        for (range, expected) in [
            ("15m", "runs"),
            ("1h", "runs"),
            ("6h", "runs"),
            ("24h", "runs"),
            ("7d", "hourly"),
            ("30d", "daily"),
        ] {
            let ago = humantime::parse_duration(range).unwrap();
            let planned = plan(&config, &query(ago, None), false);
            assert_eq!(source(&planned), expected, "{range}");
            let points = planned.unwrap().points;
            assert!(
                (7..=MAX_POINTS).contains(&points),
                "{range}: {points} points"
            );
        }
    }

    #[test]
    fn each_tier_is_read_up_to_its_retention_exactly_and_refused_a_millisecond_before() {
        let config = HistoryConfig::default();
        let ms = Duration::from_millis(1);
        for (retention, step, tier, coarser) in [
            (config.raw_retention, 600, "runs", Some("hourly")),
            (config.hourly_retention, HOUR, "hourly", Some("daily")),
            (config.daily_retention, DAY, "daily", None),
        ] {
            // At the horizon: in, with the step asked for and without one.
            assert_eq!(
                source(&plan(&config, &query(retention, Some(step)), false)),
                tier
            );
            // One millisecond older: a step of this tier is refused, saying what to ask.
            let message = refusal(plan(&config, &query(retention + ms, Some(step)), false));
            assert!(message.contains("is kept for"), "{message}");
            assert!(message.contains("ask from"), "{message}");
            // Without a step the next tier serves it, if there is one.
            let auto = plan(&config, &query(retention + ms, None), false);
            match coarser {
                Some(next) => assert_eq!(source(&auto), next, "{tier}"),
                None => assert!(refusal(auto).contains("daily rollups")),
            }
        }
        // Too many runs to read: without a step, the hourly rollups.
        let coarse = plan(&config, &query(Duration::from_secs(600), None), true).unwrap();
        assert_eq!((coarse.source.name(), coarse.step), ("hourly", HOUR));
    }

    #[test]
    fn the_request_now_is_the_only_now() {
        // A horizon measured at another instant than the range would refuse `from=24h`.
        let config = HistoryConfig::default();
        let mut asked = query(config.raw_retention, Some(600));
        assert!(plan(&config, &asked, false).is_ok());
        asked.now += Duration::from_micros(1);
        assert!(plan(&config, &asked, false).is_err());
    }

    #[test]
    fn a_series_has_at_most_max_points() {
        let config = HistoryConfig::default();
        let at_limit = plan(
            &config,
            &query(Duration::from_secs(MAX_POINTS), Some(1)),
            false,
        );
        assert_eq!(at_limit.unwrap().points, MAX_POINTS);
        let message = refusal(plan(
            &config,
            &query(Duration::from_secs(MAX_POINTS + 1), Some(1)),
            false,
        ));
        assert!(message.contains("use a step of at least 2s"), "{message}");
        // Rollup steps count from the hour the range starts in.
        let hourly = plan(
            &config,
            &query(Duration::from_secs(7 * DAY), Some(HOUR)),
            false,
        );
        assert_eq!(hourly.unwrap().points, 7 * 24);
        let bad_order = SeriesQuery {
            from: now(),
            to: now() - Duration::from_secs(1),
            ..query(Duration::ZERO, None)
        };
        assert!(refusal(plan(&config, &bad_order, false)).contains("before"));
    }

    /// A reader whose database is not open yet (the writer opens it) refuses a bad query as
    /// bad, not as unavailable: an API client learns what to fix at once. A good query waits
    /// for the database.
    #[tokio::test]
    async fn a_bad_query_is_refused_as_such_before_the_database_is_open() {
        let config = HistoryConfig {
            path: std::env::temp_dir()
                .join("bastion-never-opened")
                .join("history.db"),
            ..HistoryConfig::default()
        };
        let reader = HistoryReader::new(Db::lazy(&config).unwrap(), config);
        let backwards = SeriesQuery {
            from: now(),
            to: now() - Duration::from_secs(1),
            ..query(Duration::ZERO, None)
        };
        for answer in [
            reader.series("web", &backwards).await,
            reader.location_series("web", "eu", &backwards).await,
            reader.series_by_location("web", None, &backwards).await,
        ] {
            assert!(
                matches!(answer, Err(HistoryError::BadQuery(_))),
                "{answer:?}"
            );
        }
        let good = query(Duration::from_secs(HOUR), None);
        let answer = reader.series("web", &good).await;
        assert!(matches!(answer, Err(HistoryError::NotReady)), "{answer:?}");
    }

    #[test]
    fn latency_reads_and_serializes_as_a_map_of_the_phases_with_samples() {
        let mut latency = Latency::default();
        assert_eq!(serde_json::to_string(&latency).unwrap(), "{}");
        let figures = |p50| Percentiles {
            p50,
            p90: p50,
            p99: p50,
            samples: 1,
        };
        latency.set(5, figures(0.5));
        latency.set(1, figures(0.25));
        assert_eq!(latency.get("connect"), Some(&figures(0.25)));
        assert_eq!(latency.get("tls"), None);
        assert_eq!(latency.get("nonsense"), None);
        assert_eq!(
            serde_json::to_string(&latency).unwrap(),
            "{\"connect\":{\"p50\":0.25,\"p90\":0.25,\"p99\":0.25,\"samples\":1},\
             \"total\":{\"p50\":0.5,\"p90\":0.5,\"p99\":0.5,\"samples\":1}}"
        );
    }

    /// The raw detail of one run: `(instance id, passing)` each, 1 ms per phase.
    fn detail(instances: impl Iterator<Item = (u64, bool)>) -> Vec<u8> {
        let mut out = Vec::new();
        for (id, passing) in instances {
            varint(&mut out, id);
            out.push(if passing { 0 } else { 1 });
            for _ in 0..6 {
                varint(&mut out, 1_000);
            }
        }
        out
    }

    fn raw_plan(points: u64) -> Plan {
        plan(
            &HistoryConfig::default(),
            &query(Duration::from_secs(points), Some(1)),
            false,
        )
        .unwrap()
    }

    #[test]
    fn instance_points_are_bounded_on_both_sides_of_the_limit() {
        // Two runs: the first names `first` instances, the second `second`.
        let build = |plan: Plan, first: u64, second: u64| {
            let mut builder = Builder::new(plan, true, None);
            let start = millis(plan.start);
            builder.run(start, 0, &detail((1..=first).map(|id| (id, true))));
            builder.run(start + 1_000, 0, &detail((1..=second).map(|id| (id, true))));
            builder.finish("web", &HashMap::new())
        };
        // 20 instances × 1,000 points: exactly the limit.
        let series = build(raw_plan(1_000), 20, 20).unwrap();
        let instances = series.instances.unwrap();
        assert_eq!(instances.len(), 20);
        assert!(instances.iter().all(|i| i.points.len() == 1_000));
        assert_eq!(instances[0].points[0].runs, 1);
        // One point more: refused, saying what would fit.
        let Err(HistoryError::BadQuery(message)) = build(raw_plan(1_001), 20, 20) else {
            panic!("20 × 1,001 points answered");
        };
        assert!(
            message.contains("by=instance: 20 instances × 1001 points"),
            "{message}"
        );
        assert!(message.contains("a step of at least 2s"), "{message}");
        assert!(message.contains("at most 19 instances"), "{message}");
        // One instance more, met late: refused with the real count, not the first one over.
        let Err(HistoryError::BadQuery(message)) = build(raw_plan(1_000), 20, 1_000) else {
            panic!("1,000 × 1,000 points answered");
        };
        assert!(
            message.contains(": 1000 instances × 1000 points"),
            "{message}"
        );
        assert!(message.contains("a step of at least 50s"), "{message}");
        // Asked for by id, only those count.
        let only = [(3, "10.0.0.3:80".to_string())];
        let plan = raw_plan(1_001);
        let mut builder = Builder::new(plan, true, Some(&only));
        builder.run(
            millis(plan.start),
            0,
            &detail((1..=100).map(|id| (id, id != 3))),
        );
        let names = HashMap::from([(3, "10.0.0.3:80".to_string())]);
        let instances = builder.finish("web", &names).unwrap().instances.unwrap();
        assert_eq!(instances.len(), 1);
        assert_eq!(instances[0].instance, "10.0.0.3:80");
        assert_eq!(instances[0].points[0].down, 1);
    }

    #[test]
    fn an_accumulator_is_small_until_samples_arrive() {
        // One per point of every series is allocated before the rows are read.
        assert!(
            std::mem::size_of::<Acc>() <= 48,
            "{}",
            std::mem::size_of::<Acc>()
        );
    }

    #[test]
    fn exact_samples_are_bounded_and_past_the_bound_percentiles_come_from_buckets() {
        let plan = raw_plan(100);
        let start = millis(plan.start);
        let mut builder = Builder::new(plan, false, None);
        let wide = detail((1..=1_000).map(|id| (id, true)));
        // 300 runs of 1,000 instances in the first step: past MAX_EXACT_SAMPLES.
        for _ in 0..300 {
            builder.run(start, 0, &wide);
            assert!(builder.live <= MAX_EXACT_SAMPLES);
        }
        // Three runs in the second step: the first step is settled and its samples freed.
        for _ in 0..3 {
            builder.run(start + 1_000, 0, &wide);
        }
        assert_eq!(builder.live, 3_000);
        let series = builder.finish("web", &HashMap::new()).unwrap();
        let first = &series.points[0].latency.get("total").unwrap();
        assert_eq!(first.samples, 300_000);
        assert!(
            (first.p50 - 0.001).abs() < 0.00025,
            "within a bucket: {first:?}"
        );
        let second = &series.points[1].latency.get("total").unwrap();
        assert_eq!((second.samples, second.p50), (3_000, 0.001));
    }
}
