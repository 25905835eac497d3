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
use crate::model::ErrorKind;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// The most points one series may have.
pub const MAX_POINTS: u64 = 2_000;

/// The longest step a query may ask for: ten years, beyond any retention.
const MAX_STEP_SECONDS: u64 = 10 * 366 * 86_400;

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
    pub latency: BTreeMap<&'static str, Percentiles>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InstanceSeries {
    pub instance: String,
    pub points: Vec<Point>,
}

/// A check's history over a range.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Series {
    pub check: String,
    #[serde(with = "crate::time_format")]
    pub from: SystemTime,
    #[serde(with = "crate::time_format")]
    pub to: SystemTime,
    pub step_seconds: u64,
    /// `runs`, `hourly` or `daily`: where the figures come from.
    pub source: &'static str,
    pub points: Vec<Point>,
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

/// Where a series reads from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Runs,
    Rollup(i64),
}

/// One step's accumulator.
#[derive(Debug, Default, Clone)]
struct Acc {
    runs: u64,
    down: u64,
    unmeasured: u64,
    exact: Option<[Vec<f64>; 6]>,
    hist: Histograms,
}

impl Acc {
    fn point(mut self, start: SystemTime) -> Point {
        let mut latency = BTreeMap::new();
        for (phase, name) in PHASES.iter().enumerate() {
            let figures = match self.exact.as_mut() {
                Some(values) => {
                    let values = &mut values[phase];
                    let samples = values.len() as u64;
                    exact_quantile(values, 0.5).map(|p50| Percentiles {
                        p50,
                        p90: exact_quantile(values, 0.9).unwrap_or(p50),
                        p99: exact_quantile(values, 0.99).unwrap_or(p50),
                        samples,
                    })
                }
                None => self.hist.quantile(phase, 0.5).map(|p50| Percentiles {
                    p50,
                    p90: self.hist.quantile(phase, 0.9).unwrap_or(p50),
                    p99: self.hist.quantile(phase, 0.99).unwrap_or(p50),
                    samples: self.hist.count(phase),
                }),
            };
            if let Some(figures) = figures {
                latency.insert(*name, figures);
            }
        }
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
}

fn ratio(runs: u64, down: u64) -> Option<f64> {
    (runs > 0).then(|| (runs - down.min(runs)) as f64 / runs as f64)
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
        let dispatch = ERROR_KINDS
            .iter()
            .position(|kind| *kind == ErrorKind::DispatchTimeout)
            .map(|at| at as u8 + 2);
        let outcome = match code {
            0 => Outcome::Up,
            code if Some(code) == dispatch => Outcome::Unmeasured,
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

/// `$first`, `$first+1`, ... for an IN list of `count` values.
fn placeholders(first: usize, count: usize) -> String {
    (first..first + count)
        .map(|n| format!("${n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl HistoryReader {
    pub(super) fn new(db: Db, config: HistoryConfig) -> HistoryReader {
        HistoryReader {
            db,
            config,
            ready: Arc::new(AtomicBool::new(false)),
        }
    }

    pub(super) fn ready_flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.ready)
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
                let mut query = sqlx::query_as(&sql);
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

    /// Picks the step and the source for a range: under an hour, the raw runs (which must
    /// reach back to `from`); under a day, hourly rollups; else daily ones.
    fn plan(
        &self,
        from: SystemTime,
        to: SystemTime,
        step: Option<Duration>,
    ) -> Result<(Source, u64), HistoryError> {
        let range = to
            .duration_since(from)
            .map_err(|_| HistoryError::BadQuery("`from` must be before `to`".to_string()))?
            .as_secs()
            .max(1);
        let step = match step {
            Some(step) if step.as_secs() > MAX_STEP_SECONDS => {
                return Err(HistoryError::BadQuery(format!(
                    "a step of {} is longer than the {} history can span; use a shorter step",
                    humantime::format_duration(step),
                    humantime::format_duration(Duration::from_secs(MAX_STEP_SECONDS))
                )));
            }
            Some(step) => step.as_secs().max(1),
            // About 60 points: 10 s steps and up, whole minutes past a minute.
            None if range <= 3_600 => (range / 60).max(10).div_ceil(10) * 10,
            None if range <= 2 * 86_400 => (range / 60).max(60).div_ceil(60) * 60,
            None if range <= 14 * 86_400 => 3_600,
            None => 86_400,
        };
        let raw_horizon = SystemTime::now()
            .checked_sub(self.config.raw_retention)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let (source, step) = if step < 3_600 {
            if from < raw_horizon {
                return Err(HistoryError::BadQuery(format!(
                    "every run is kept for {} only; ask from {} on, or use a step of at least 1h",
                    humantime::format_duration(self.config.raw_retention),
                    humantime::format_rfc3339_seconds(raw_horizon)
                )));
            }
            (Source::Runs, step)
        } else if step < 86_400 {
            (Source::Rollup(HOURLY), step.div_ceil(3_600) * 3_600)
        } else {
            (Source::Rollup(DAILY), step.div_ceil(86_400) * 86_400)
        };
        if range / step > MAX_POINTS {
            return Err(HistoryError::BadQuery(format!(
                "{} steps of {step}s is more than the {MAX_POINTS} points allowed; use a longer step",
                range / step
            )));
        }
        Ok((source, step))
    }

    /// A check's series from `from` to `to` (steps start at `from`, rounded down to the step
    /// for rollups), per instance as well with `by_instance`.
    pub async fn series(
        &self,
        check: &str,
        from: SystemTime,
        to: SystemTime,
        step: Option<Duration>,
        by_instance: bool,
    ) -> Result<Series, HistoryError> {
        self.check_ready()?;
        let (source, step) = self.plan(from, to, step)?;
        let from = match source {
            Source::Runs => from,
            Source::Rollup(tier) => {
                let seconds = millis(from) / 1000;
                from_millis((seconds - seconds.rem_euclid(tier_seconds(tier))) * 1000)
            }
        };
        let start_ms = millis(from);
        let step_ms = i64::try_from(step).unwrap_or(i64::MAX / 1000) * 1000;
        // `plan` bounds the count; the clamp keeps a mistake there from becoming an allocation
        // the size of the request's numbers.
        let steps = usize::try_from(((millis(to) - start_ms).max(1) + step_ms - 1) / step_ms)
            .unwrap_or(1)
            .min(MAX_POINTS as usize + 1);
        let mut whole: Vec<Acc> = vec![Acc::default(); steps];
        let mut per_instance: BTreeMap<i64, Vec<Acc>> = BTreeMap::new();
        let exact = source == Source::Runs;
        if exact {
            for acc in whole.iter_mut() {
                acc.exact = Some(Default::default());
            }
        }
        let Some(check_id) = self.check_id(check).await? else {
            return Ok(self.finish(check, from, to, step, source, whole, None));
        };
        let empty = || {
            let mut accs = vec![Acc::default(); steps];
            if exact {
                for acc in accs.iter_mut() {
                    acc.exact = Some(Default::default());
                }
            }
            accs
        };
        match source {
            Source::Runs => {
                let rows: Vec<(i64, i16, Vec<u8>)> = on_pool!(&self.db, pool => {
                    sqlx::query_as(
                        "SELECT at_ms, outcome, detail FROM runs \
                         WHERE check_id = $1 AND at_ms >= $2 AND at_ms < $3 ORDER BY at_ms",
                    )
                    .bind(check_id)
                    .bind(start_ms)
                    .bind(millis(to))
                    .fetch_all(pool)
                    .await?
                });
                for (at, outcome, detail) in rows {
                    let Ok(index) = usize::try_from((at - start_ms) / step_ms) else {
                        continue;
                    };
                    let Some(acc) = whole.get_mut(index) else {
                        continue;
                    };
                    acc.count(Outcome::from_code(i64::from(outcome)));
                    for sample in decode_detail(&detail) {
                        if sample.outcome == Outcome::Up {
                            if let Some(values) = acc.exact.as_mut() {
                                for (phase, value) in sample.phases.iter().enumerate() {
                                    values[phase].push(*value);
                                }
                            }
                        }
                        if by_instance {
                            let accs = per_instance.entry(sample.instance_id).or_insert_with(empty);
                            let instance = &mut accs[index];
                            instance.count(sample.outcome);
                            if sample.outcome == Outcome::Up {
                                if let Some(values) = instance.exact.as_mut() {
                                    for (phase, value) in sample.phases.iter().enumerate() {
                                        values[phase].push(*value);
                                    }
                                }
                            }
                        }
                    }
                }
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
                let rows: Vec<(i64, i64, i64, i64, i64, Vec<u8>)> = on_pool!(&self.db, pool => {
                    sqlx::query_as(&sql)
                        .bind(tier as i16)
                        .bind(check_id)
                        .bind(start_ms / 1000)
                        .bind(millis(to) / 1000)
                        .fetch_all(pool)
                        .await?
                });
                for (instance_id, bucket, runs, down, unmeasured, hist) in rows {
                    let Ok(index) = usize::try_from((bucket * 1000 - start_ms) / step_ms) else {
                        continue;
                    };
                    let acc = if instance_id == 0 {
                        whole.get_mut(index)
                    } else {
                        per_instance
                            .entry(instance_id)
                            .or_insert_with(empty)
                            .get_mut(index)
                    };
                    if let Some(acc) = acc {
                        acc.runs += u64::try_from(runs).unwrap_or(0);
                        acc.down += u64::try_from(down).unwrap_or(0);
                        acc.unmeasured += u64::try_from(unmeasured).unwrap_or(0);
                        acc.hist.merge(&Histograms::decode(&hist));
                    }
                }
            }
        }
        let instances = if by_instance {
            let names: HashMap<i64, String> = on_pool!(&self.db, pool => {
                sqlx::query_as::<_, (i64, String)>(
                    "SELECT id, address FROM instances WHERE check_id = $1",
                )
                .bind(check_id)
                .fetch_all(pool)
                .await?
                .into_iter()
                .collect()
            });
            let mut list: Vec<InstanceSeries> = per_instance
                .into_iter()
                .map(|(id, accs)| InstanceSeries {
                    instance: names.get(&id).cloned().unwrap_or_else(|| format!("#{id}")),
                    points: points(accs, from, step),
                })
                .collect();
            list.sort_by(|a, b| a.instance.cmp(&b.instance));
            Some(list)
        } else {
            None
        };
        Ok(self.finish(check, from, to, step, source, whole, instances))
    }

    #[allow(clippy::too_many_arguments)]
    fn finish(
        &self,
        check: &str,
        from: SystemTime,
        to: SystemTime,
        step: u64,
        source: Source,
        whole: Vec<Acc>,
        instances: Option<Vec<InstanceSeries>>,
    ) -> Series {
        Series {
            check: check.to_string(),
            from,
            to,
            step_seconds: step,
            source: match source {
                Source::Runs => "runs",
                Source::Rollup(HOURLY) => "hourly",
                Source::Rollup(_) => "daily",
            },
            points: points(whole, from, step),
            instances,
        }
    }

    /// Uptime over 24 h and 7 d (from the hourly rollups of the hours that overlap the
    /// window) and 30 d (from the daily rollups of the days that overlap it), per check.
    pub async fn uptimes(
        &self,
        checks: &[String],
        now: SystemTime,
    ) -> Result<HashMap<String, Uptimes>, HistoryError> {
        self.check_ready()?;
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
            let mut query = sqlx::query_as(&sql).bind(day_from).bind(week_from).bind(month_from);
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
            let mut query = sqlx::query_as(&sql).bind(first);
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
