//! The history writer: one task that owns the database's write side. It takes records from
//! the bounded channel the sink fills, and every `flush_interval` writes what it holds in one
//! transaction (a backlog in parts of `RUNS_PER_TRANSACTION` runs, each committed on its own):
//! the runs (with their compact per-instance detail), the hourly and daily
//! rollups they change (merged with the stored row, kept in a cache of open buckets), the
//! state changes and the incidents they open or close. Runs and rollup rows go a thousand to a
//! statement (`RUNS_PER_STATEMENT`): one statement per row was most of the writer's cost
//! at high rates (issue 20). A batch that fails is kept and retried
//! with a backoff (1 s doubling to 30 s) while new records wait in the channel; once both are
//! full, new records are dropped and counted. So a crash loses at most the last
//! `flush_interval` of history plus what waited while the database could not be written.
//! Between batches it deletes expired rows, a few hundred checks at a time, so no statement
//! holds the database for long. It never runs on the probe path and never panics on a
//! database error.

use super::db::{on_pool, Db};
use super::episodes::IncidentOp;
use super::histogram::{varint, Histograms};
use super::ids::IdCache;
use super::ticks::{Offered, Ticks};
use super::HistoryMetrics;
use super::{millis, HistoryConfig, Lanes, Outcome, RunRecord, TransitionRecord, ERROR_KINDS};
use crate::episode::Episode;
use crate::model::EndReason;
use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::mpsc::error::TryRecvError;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The hourly rollup tier.
pub const HOURLY: i64 = 1;
/// The daily rollup tier.
pub const DAILY: i64 = 2;
/// How long the rows of a closed bucket stay cached, in seconds: a run due before its bucket
/// closed reports within its timeout and a flush; a later one (a location's tick that waited,
/// a batch kept through a database outage) reads its row from the database instead. Kept an
/// hour, the previous hour's rows doubled the cache (about 5 MB at 10,000 checks).
const CLOSED_BUCKET_GRACE: i64 = 300;

/// Whether a rollup row stays in the writer's cache at `now` (seconds): its bucket is open
/// (or ahead of the clock), or it closed less than `CLOSED_BUCKET_GRACE` ago.
fn cached_at(key: &RollupKey, now: i64) -> bool {
    let span = tier_seconds(key.tier);
    let current = now - now.rem_euclid(span);
    key.bucket >= current || (key.bucket >= current - span && now - current < CLOSED_BUCKET_GRACE)
}

/// Seconds per bucket of each tier.
pub fn tier_seconds(tier: i64) -> i64 {
    if tier == DAILY {
        86_400
    } else {
        3_600
    }
}

/// How often expired rows are deleted.
const EXPIRE_EVERY: Duration = Duration::from_secs(600);
/// Checks whose expired rows one step deletes.
const EXPIRE_STEP: usize = 200;
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long the last batch may take at shutdown.
pub const FINAL_FLUSH: Duration = Duration::from_secs(5);
/// How long one attempt may take before it is given up (and retried): a database that
/// hangs must not hold the batch, or the shutdown, for ever.
const ATTEMPT_LIMIT: Duration = Duration::from_secs(30);
/// Runs written in one transaction at most. A backlog (the database was away, or runs come
/// faster than it takes them) is written in parts of this size, each committed on its own,
/// so every attempt makes progress: one transaction of the whole 65,536-record buffer could
/// outlast `ATTEMPT_LIMIT`, be rolled back, and be tried again whole, writing nothing ever.
const RUNS_PER_TRANSACTION: usize = 8_192;
/// Runs inserted by one statement (4 values each), and rollup rows read or written by one
/// (4 and 8 values): a statement's round trip and parse are paid per thousand rows, not per
/// row, and its values stay well under SQLite's limit of 32,766 and PostgreSQL's 65,535.
const RUNS_PER_STATEMENT: usize = 1_000;
const ROLLUPS_PER_STATEMENT: usize = 1_000;

/// Whether a statement of `rows` rows is kept prepared: only a full one (`rows == full`),
/// whose text is always the same. A statement's text grows with its rows, so one of any other
/// size is prepared, run and forgotten: sqlx keeps up to 100 prepared statements per
/// connection, a prepared insert of 1,000 rows is about 150 KB of SQLite program, and kept
/// they took 56 MiB at 10,000 checks, most of history's memory (bench/RESULTS.md, "What
/// history's memory was").
fn kept_prepared(rows: usize, full: usize) -> bool {
    rows == full
}

/// After this long an attempt commits no further part: the rest waits for the next attempt,
/// a flush interval later, so the writer takes in what waits in the lanes meanwhile.
const ATTEMPT_BUDGET: Duration = Duration::from_secs(10);

/// A rollup row as read: tier, check id, instance id, bucket, runs, down, unmeasured, hist.
type StoredRollup = (i16, i64, i64, i64, i64, i64, i64, Vec<u8>);

/// A run as its row: what one `INSERT INTO runs` binds.
struct RunRow {
    check_id: i64,
    at_ms: i64,
    outcome: i16,
    detail: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct RollupKey {
    tier: i64,
    check_id: i64,
    instance_id: i64,
    bucket: i64,
}

impl RollupKey {
    /// The one order every writer takes rows in: the table's primary key.
    fn order(&self) -> (i64, i64, i64, i64) {
        (self.tier, self.check_id, self.instance_id, self.bucket)
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
struct Rollup {
    runs: i64,
    down: i64,
    unmeasured: i64,
    hist: Histograms,
}

/// A rollup row as the cache keeps it: its counts and its histograms as the database stores
/// them (varints), about a tenth of the decoded form. The cache holds a bucket of each tier
/// for every check and instance (4 rows for a check of one instance; 6 for the first minutes of
/// an hour, 8 of a day, while a closed bucket is kept), so the decoded form cost about 5 KB per check; a row is decoded
/// only when a run adds to it.
#[derive(Debug, Clone, PartialEq)]
struct CachedRollup {
    runs: i64,
    down: i64,
    unmeasured: i64,
    hist: Box<[u8]>,
}

impl CachedRollup {
    /// A row that holds nothing yet.
    fn empty() -> CachedRollup {
        CachedRollup {
            runs: 0,
            down: 0,
            unmeasured: 0,
            hist: Histograms::default().encode().into(),
        }
    }

    /// This row with `delta` added. `hist` and `bytes` are the caller's, reused from row to
    /// row of a flush: only the new row's bytes are allocated.
    fn plus(&self, delta: &Rollup, hist: &mut Histograms, bytes: &mut Vec<u8>) -> CachedRollup {
        hist.decode_into(&self.hist);
        hist.merge(&delta.hist);
        hist.encode_into(bytes);
        CachedRollup {
            runs: self.runs.saturating_add(delta.runs),
            down: self.down.saturating_add(delta.down),
            unmeasured: self.unmeasured.saturating_add(delta.unmeasured),
            hist: bytes.as_slice().into(),
        }
    }
}

impl Rollup {
    fn add(&mut self, outcome: Outcome, phases: &[f64; 6]) {
        match outcome {
            Outcome::Up => {
                self.runs += 1;
                self.hist.observe(phases);
            }
            Outcome::Down => {
                self.runs += 1;
                self.down += 1;
            }
            Outcome::Unmeasured => self.unmeasured += 1,
        }
    }
}

/// What waits to be written: each lane's records, bounded like the lane.
#[derive(Debug, Default)]
struct Batch {
    runs: Vec<RunRecord>,
    transitions: Vec<TransitionRecord>,
    incidents: Vec<IncidentOp>,
}

impl Batch {
    fn len(&self) -> usize {
        self.runs.len() + self.transitions.len() + self.incidents.len()
    }

    /// The next part to write: at most `RUNS_PER_TRANSACTION` runs, state changes and
    /// incident operations each, from the front. State changes and incidents go with the
    /// first parts, never behind a backlog of runs: they are few, and what an operator reads
    /// first (a steady backlog of runs must not starve them until their lanes overflow).
    fn next_part(&self) -> Part {
        Part {
            runs: self.runs.len().min(RUNS_PER_TRANSACTION),
            transitions: self.transitions.len().min(RUNS_PER_TRANSACTION),
            incidents: self.incidents.len().min(RUNS_PER_TRANSACTION),
        }
    }

    /// Removes a part once it is committed.
    fn remove(&mut self, part: Part) {
        self.runs.drain(..part.runs);
        self.transitions.drain(..part.transitions);
        self.incidents.drain(..part.incidents);
    }
}

/// How a backlog is written: resting between parts as long as each took (while the agent
/// probes), or part after part (the last attempt at shutdown).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pace {
    Rested,
    Flat,
}

/// How many records from the front of each list of the batch one transaction writes. The
/// records stay in the batch until it commits: an attempt given up halfway loses nothing.
#[derive(Debug, Clone, Copy)]
struct Part {
    runs: usize,
    transitions: usize,
    incidents: usize,
}

impl Part {
    fn len(self) -> usize {
        self.runs + self.transitions + self.incidents
    }
}

/// The writer task's state; `run` consumes it.
pub struct Writer {
    db: Db,
    config: HistoryConfig,
    lanes: Lanes,
    metrics: HistoryMetrics,
    ready: Arc<AtomicBool>,
    pending: Batch,
    ids: IdCache,
    rollups: HashMap<RollupKey, CachedRollup>,
    /// Check ids still to expire in the current expiry pass.
    expiring: Vec<i64>,
    next_expiry: Instant,
    failures: u32,
    /// No HA checkers: the rollup cache holds what is in the database.
    sole_writer: bool,
    /// The ticks of checks with `locations` being gathered into combined runs.
    ticks: Ticks,
}

impl Writer {
    pub(super) fn new(
        db: Db,
        config: HistoryConfig,
        lanes: Lanes,
        metrics: HistoryMetrics,
        ready: Arc<AtomicBool>,
        sole_writer: bool,
    ) -> Writer {
        Writer {
            db,
            // Capped as validation caps it, so `now + flush_interval` cannot overflow.
            config: HistoryConfig {
                flush_interval: crate::config::bounds::FLUSH_INTERVAL
                    .cap_duration(config.flush_interval),
                ..config
            },
            lanes,
            metrics,
            ready,
            pending: Batch::default(),
            ids: IdCache::new(Instant::now()),
            rollups: HashMap::new(),
            expiring: Vec::new(),
            next_expiry: Instant::now(),
            failures: 0,
            sole_writer,
            ticks: Ticks::default(),
        }
    }

    /// Writes until every `Recorder` is gone (the sink stopped), then writes what is left,
    /// trying for at most `FINAL_FLUSH`; whatever it cannot write then is counted as dropped
    /// (`stopped`) and logged, never lost silently.
    pub async fn run(mut self) {
        let closed = self.lanes.closed.clone();
        // Ensure the schema at once.
        let mut next_attempt = self.attempt_until_closed(&closed).await;
        while !closed.is_cancelled() {
            let buffer = self.config.buffer.max(1);
            let room_runs = self.pending.runs.len() < buffer;
            let room_transitions = self.pending.transitions.len() < buffer;
            let room_incidents =
                self.pending.incidents.len() < buffer.max(super::MIN_INCIDENT_LANE);
            // Runs are taken in at each flush (`take_waiting` below), or when the lane is a
            // quarter full: never one wake-up per run (`Lanes::runs_filling`).
            let runs_filling = Arc::clone(&self.lanes.runs_filling);
            tokio::select! {
                _ = runs_filling.notified(), if room_runs => {}
                Some(transition) = self.lanes.transitions.recv(), if room_transitions => {
                    self.pending.transitions.push(transition);
                }
                Some(op) = self.lanes.incidents.recv(), if room_incidents => {
                    self.pending.incidents.push(op);
                }
                _ = tokio::time::sleep_until(next_attempt) => {}
                _ = closed.cancelled() => {}
            }
            self.take_waiting(false);
            self.report_buffered();
            if !closed.is_cancelled() && Instant::now() >= next_attempt {
                next_attempt = self.attempt_until_closed(&closed).await;
                // What was written no longer waits: the gauge says so now, not at the next
                // wake-up (a flush interval away).
                self.report_buffered();
            }
        }
        // The sink is done: everything it sent is in the lanes now, and the ticks still
        // gathered are complete with what they have.
        self.take_waiting(true);
        self.ticks.drain(&mut self.pending.runs);
        if self.pending.len() > 0 {
            let written = tokio::time::timeout(FINAL_FLUSH, self.attempt(Pace::Flat))
                .await
                .unwrap_or(false);
            if !written {
                self.metrics
                    .count_dropped("stopped", self.pending.len() as u64);
                tracing::warn!(
                    records = self.pending.len(),
                    runs = self.pending.runs.len(),
                    state_changes = self.pending.transitions.len(),
                    incident_changes = self.pending.incidents.len(),
                    "history could not be written before shutdown; these records are lost"
                );
            }
        }
        self.metrics.set_batched(0);
        self.db.close().await;
    }

    /// One attempt, given up when the sink closes (the final attempt follows); returns when
    /// to try next.
    async fn attempt_until_closed(&mut self, closed: &CancellationToken) -> Instant {
        let written = tokio::select! {
            written = tokio::time::timeout(ATTEMPT_LIMIT, self.attempt(Pace::Rested)) => match written {
                Ok(written) => written,
                Err(_) => {
                    // The database did not answer in time: a failed attempt like any other,
                    // counted and logged; the parts committed before it stay written.
                    if self.count_failed_attempt() {
                        tracing::warn!(
                            backend = self.db.backend(),
                            attempts = self.failures,
                            records = self.pending.len(),
                            "writing history took longer than {}s; keeping the rest of the batch and retrying",
                            ATTEMPT_LIMIT.as_secs()
                        );
                    }
                    false
                }
            },
            _ = closed.cancelled() => {
                self.forget_cached_rollups();
                false
            }
        };
        if written && self.pending.len() > 0 {
            // A backlog the attempt's budget did not cover: on at once, after taking in
            // what waits in the lanes.
            Instant::now()
        } else if written {
            Instant::now() + self.config.flush_interval
        } else {
            Instant::now() + self.backoff()
        }
    }

    /// Moves what waits in the lanes into the batch: as far as the batch has room, or all of
    /// it once the sink is done (the lanes are bounded, so the batch stays bounded too).
    fn take_waiting(&mut self, all: bool) {
        let buffer = self.config.buffer.max(1);
        let incident_room = buffer.max(super::MIN_INCIDENT_LANE);
        while all || self.pending.runs.len() < buffer {
            match self.lanes.runs.try_recv() {
                Ok(run) => self.take_run(run),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        while all || self.pending.transitions.len() < buffer {
            match self.lanes.transitions.try_recv() {
                Ok(transition) => self.pending.transitions.push(transition),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        while all || self.pending.incidents.len() < incident_room {
            match self.lanes.incidents.try_recv() {
                Ok(op) => self.pending.incidents.push(op),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
    }

    /// Takes one run into the batch; a location's run also joins its check's tick, and the
    /// combined runs that completes join the batch too (at most one per location run, so the
    /// batch stays within twice its bound). A tick's wait counts from when its first run is
    /// taken in, which is at most a flush interval after it arrived: with a `flush_interval`
    /// longer than a check's wait (two intervals and the timeout), a tick a location never
    /// answers is combined a flush later than its wait.
    fn take_run(&mut self, run: RunRecord) {
        if let Some(place) = &run.location {
            if self
                .ticks
                .offer(&run, place, Instant::now(), &mut self.pending.runs)
                == Offered::Full
            {
                self.metrics.count_dropped("ticks_full", 1);
            }
        }
        self.pending.runs.push(run);
    }

    /// After an attempt that failed or was cut short: a part may have committed without this
    /// writer knowing (its commit's answer lost with the attempt), so the cached rollup rows
    /// may be behind the database, and a later part would write over the increments it
    /// missed. The rows are read again instead.
    fn forget_cached_rollups(&mut self) {
        self.rollups.clear();
    }

    /// Counts an attempt that failed or timed out; true when it is to be logged: once, then
    /// every tenth attempt, so a database that stays down does not flood the log.
    fn count_failed_attempt(&mut self) -> bool {
        self.forget_cached_rollups();
        self.failures += 1;
        self.metrics.count_write_error();
        self.failures == 1 || self.failures.is_multiple_of(10)
    }

    fn backoff(&self) -> Duration {
        let exponent = self.failures.saturating_sub(1).min(5);
        Duration::from_secs(1u64 << exponent).min(MAX_BACKOFF)
    }

    /// Tells the metrics how many records the batch holds (the lanes are read at a scrape).
    fn report_buffered(&self) {
        self.metrics.set_batched(self.pending.len());
    }

    /// One attempt: open the schema if needed, write the batch, expire a step. True on
    /// success (or nothing to do).
    async fn attempt(&mut self, pace: Pace) -> bool {
        let started = Instant::now();
        // Ticks that waited their time go with this batch, with what they have.
        self.ticks.expire(started, &mut self.pending.runs);
        let outcome = self.write_pending(pace).await;
        match outcome {
            Ok(_) => {
                if self.failures > 0 {
                    tracing::info!(
                        backend = self.db.backend(),
                        "history is written again after {} failed attempts",
                        self.failures
                    );
                }
                self.failures = 0;
                if let Err(error) = self.expire_step().await {
                    tracing::warn!(%error, "deleting expired history failed; retried later");
                }
                true
            }
            Err(error) => {
                if self.count_failed_attempt() {
                    tracing::warn!(
                        backend = self.db.backend(),
                        attempts = self.failures,
                        records = self.pending.len(),
                        error = %super::db::redact(&error.to_string()),
                        "cannot write history; keeping the batch and retrying (probes and metrics go on). \
                         Check [history] path (its directory must exist and be writable) or url, \
                         or set [history] enabled = false"
                    );
                }
                false
            }
        }
    }

    async fn write_pending(&mut self, pace: Pace) -> Result<usize, super::HistoryError> {
        if !self.ready.load(Ordering::Acquire) {
            self.db.ensure_schema().await?;
            self.ready.store(true, Ordering::Release);
            tracing::info!(backend = self.db.backend(), "history database ready");
        }
        let started = Instant::now();
        let mut written = 0;
        while self.pending.len() > 0 {
            let part = self.pending.next_part();
            let part_started = Instant::now();
            self.resolve_ids(part).await?;
            let merged = self.write_part(part).await?;
            self.rollups.extend(merged);
            self.pending.remove(part);
            written += part.len();
            // Counted per part committed: an attempt that fails later keeps these written.
            self.metrics
                .observe_written(part.len(), part_started.elapsed().as_secs_f64());
            if started.elapsed() >= ATTEMPT_BUDGET {
                break;
            }
            if pace == Pace::Rested && self.pending.len() > 0 {
                // A backlog: rest as long as the part took before the next, so history takes
                // at most half of a core from the probes; past that its buffer fills and
                // what does not fit is dropped and counted, never the probing slowed.
                tokio::time::sleep(part_started.elapsed()).await;
            }
        }
        self.evict_closed_buckets();
        Ok(written)
    }

    /// Ids for the checks and instances of a part of the batch, created when new.
    async fn resolve_ids(&mut self, part: Part) -> Result<(), super::HistoryError> {
        let now = Instant::now();
        self.ids.sweep(now);
        let mut checks: Vec<Arc<str>> = Vec::new();
        let mut listed: HashSet<Arc<str>> = HashSet::new();
        for check in self.pending.runs[..part.runs]
            .iter()
            .map(|run| &run.check)
            .chain(
                self.pending.transitions[..part.transitions]
                    .iter()
                    .map(|t| &t.check),
            )
            .cloned()
            .chain(
                self.pending.incidents[..part.incidents]
                    .iter()
                    .flat_map(|op| match op {
                        IncidentOp::Reconcile { open } => open
                            .iter()
                            .map(|episode| Arc::from(episode.check.as_str()))
                            .collect::<Vec<Arc<str>>>(),
                        other => other.check().map(Arc::from).into_iter().collect(),
                    }),
            )
        {
            if !self.ids.touch_check(&check, now) && listed.insert(Arc::clone(&check)) {
                checks.push(check);
            }
        }
        // New names in one transaction: thousands of checks appear at once on a first start
        // or a reload, and a commit per name would be most of the first batch's time.
        if !checks.is_empty() {
            let ids: Vec<i64> = on_pool!(&self.db, pool => {
                let mut tx = pool.begin().await?;
                let mut ids = Vec::with_capacity(checks.len());
                for check in &checks {
                    sqlx::query("INSERT INTO checks (name) VALUES ($1) ON CONFLICT (name) DO NOTHING")
                        .bind(&**check)
                        .execute(&mut *tx)
                        .await?;
                    ids.push(
                        sqlx::query_scalar::<_, i64>("SELECT id FROM checks WHERE name = $1")
                            .bind(&**check)
                            .fetch_one(&mut *tx)
                            .await?,
                    );
                }
                tx.commit().await?;
                ids
            });
            for (check, id) in checks.into_iter().zip(ids) {
                self.ids.insert_check(check, id, now);
            }
        }
        let mut instances: Vec<(i64, &str)> = Vec::new();
        let mut seen: HashSet<(i64, &str)> = HashSet::new();
        for run in &self.pending.runs[..part.runs] {
            let check_id = self.ids.check(&run.check).unwrap_or_default();
            for sample in &run.samples {
                let address = sample.instance.as_str();
                if !self.ids.touch_instance(check_id, address, now)
                    && seen.insert((check_id, address))
                {
                    instances.push((check_id, address));
                }
            }
        }
        if !instances.is_empty() {
            let ids: Vec<i64> = on_pool!(&self.db, pool => {
                let mut tx = pool.begin().await?;
                let mut ids = Vec::with_capacity(instances.len());
                for (check_id, address) in &instances {
                    sqlx::query(
                        "INSERT INTO instances (check_id, address) VALUES ($1, $2) \
                         ON CONFLICT (check_id, address) DO NOTHING",
                    )
                    .bind(*check_id)
                    .bind(*address)
                    .execute(&mut *tx)
                    .await?;
                    ids.push(
                        sqlx::query_scalar::<_, i64>(
                            "SELECT id FROM instances WHERE check_id = $1 AND address = $2",
                        )
                        .bind(*check_id)
                        .bind(*address)
                        .fetch_one(&mut *tx)
                        .await?,
                    );
                }
                tx.commit().await?;
                ids
            });
            for ((check_id, address), id) in instances.into_iter().zip(ids) {
                self.ids.insert_instance(check_id, address, id, now);
            }
        }
        Ok(())
    }

    fn check_id(&self, check: &str) -> i64 {
        self.ids.check(check).unwrap_or_default()
    }

    fn instance_id(&self, check_id: i64, address: &str) -> i64 {
        self.ids.instance(check_id, address).unwrap_or_default()
    }

    /// What `runs` add to each rollup row: per tier, the whole check (instance 0) and each
    /// instance.
    fn rollup_deltas<'a>(
        &self,
        runs: impl Iterator<Item = &'a RunRecord>,
    ) -> HashMap<RollupKey, Rollup> {
        let mut deltas: HashMap<RollupKey, Rollup> = HashMap::new();
        for run in runs {
            let check_id = self.check_id(&run.check);
            let seconds = millis(run.scheduled_at) / 1000;
            for tier in [HOURLY, DAILY] {
                let span = tier_seconds(tier);
                let bucket = seconds - seconds.rem_euclid(span);
                let whole = deltas
                    .entry(RollupKey {
                        tier,
                        check_id,
                        instance_id: 0,
                        bucket,
                    })
                    .or_default();
                match run.outcome {
                    Outcome::Up => whole.runs += 1,
                    Outcome::Down => {
                        whole.runs += 1;
                        whole.down += 1;
                    }
                    Outcome::Unmeasured => whole.unmeasured += 1,
                }
                for sample in &run.samples {
                    if sample.outcome == Outcome::Up {
                        whole.hist.observe(&sample.phases);
                    }
                }
                for sample in &run.samples {
                    let instance_id = self.instance_id(check_id, &sample.instance);
                    deltas
                        .entry(RollupKey {
                            tier,
                            check_id,
                            instance_id,
                            bucket,
                        })
                        .or_default()
                        .add(sample.outcome, &sample.phases);
                }
            }
        }
        deltas
    }

    /// The runs as the rows `INSERT INTO runs` binds.
    fn run_rows(&self, runs: &[RunRecord]) -> Vec<RunRow> {
        runs.iter()
            .map(|run| {
                let check_id = self.check_id(&run.check);
                RunRow {
                    check_id,
                    at_ms: millis(run.scheduled_at),
                    outcome: run.outcome.code() as i16,
                    detail: self.detail(check_id, run),
                }
            })
            .collect()
    }

    /// The rollup rows to read before merging: those the cache cannot vouch for (all of them
    /// unless this is the only writer), in key order, the order every writer locks them in.
    fn rollups_to_read(&self, deltas: &HashMap<RollupKey, Rollup>) -> Vec<RollupKey> {
        let mut unread: Vec<RollupKey> = deltas
            .keys()
            .filter(|key| !(self.sole_writer && self.rollups.contains_key(key)))
            .copied()
            .collect();
        unread.sort_unstable_by_key(RollupKey::order);
        unread
    }

    /// Each rollup row with its delta added: to the row read, else the cached one (when this
    /// is the only writer), else a new one; in key order, with its histograms encoded.
    fn merged_rollups(
        &self,
        deltas: HashMap<RollupKey, Rollup>,
        stored: HashMap<RollupKey, CachedRollup>,
    ) -> Vec<(RollupKey, CachedRollup)> {
        let empty = CachedRollup::empty();
        let mut hist = Histograms::default();
        let mut bytes = Vec::new();
        let mut merged: Vec<(RollupKey, CachedRollup)> = deltas
            .iter()
            .map(|(key, delta)| {
                let base = match stored.get(key) {
                    Some(row) => row,
                    None if self.sole_writer => self.rollups.get(key).unwrap_or(&empty),
                    None => &empty,
                };
                (*key, base.plus(delta, &mut hist, &mut bytes))
            })
            .collect();
        merged.sort_unstable_by_key(|(key, _)| key.order());
        merged
    }

    /// What a part writes after its runs and rollups, in order: its state changes, then its
    /// incident operations. Made one at a time as they are written, borrowing what they bind,
    /// so a part's statements are never all held at once.
    fn later_steps(&self, part: Part) -> impl Iterator<Item = Step<'_>> + '_ {
        let transitions = self.pending.transitions[..part.transitions]
            .iter()
            .map(|transition| {
                Step::Statement(
                    "INSERT INTO transitions (check_id, at_ms, from_state, to_state, failing, instances) \
                     VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (check_id, at_ms) DO NOTHING",
                    vec![
                        Value::Int(self.check_id(&transition.check)),
                        Value::Int(millis(transition.at)),
                        Value::text(transition.from.as_str()),
                        Value::text(transition.to.as_str()),
                        Value::Int(i64::try_from(transition.failing).unwrap_or(i64::MAX)),
                        Value::Int(i64::try_from(transition.instances).unwrap_or(i64::MAX)),
                    ],
                )
            });
        let incidents = self.pending.incidents[..part.incidents]
            .iter()
            .flat_map(|op| incident_steps(op, |check| self.check_id(check)));
        transitions.chain(incidents)
    }

    /// Writes a part of the batch in one transaction; returns the merged rollups to cache.
    /// Only runs actually inserted are rolled up: a result delivered twice (a JetStream
    /// publish retried after a lost acknowledgement, or a part written again after its
    /// commit's answer was lost) is one run, in the runs and in the rollups; the rollup rows
    /// cached are dropped after such a loss (`forget_cached_rollups`), so they are read again.
    async fn write_part(
        &self,
        part: Part,
    ) -> Result<Vec<(RollupKey, CachedRollup)>, super::HistoryError> {
        let lock = match &self.db {
            super::db::Db::Postgres(_) if !self.sole_writer => " FOR UPDATE",
            _ => "",
        };
        let runs = &self.pending.runs[..part.runs];
        let run_rows = self.run_rows(runs);
        let merged = on_pool!(&self.db, pool => {
            let mut tx = pool.begin().await?;
            // Rollup rows, a statement's worth, inserted; `$conflict` says what an existing
            // row does.
            macro_rules! insert_rollups {
                ($rows:expr, $conflict:literal) => {{
                    let mut insert = sqlx::QueryBuilder::new(
                        "INSERT INTO rollups (tier, check_id, instance_id, bucket, runs, down, unmeasured, hist) ",
                    );
                    insert.push_values($rows, |mut values, (key, row)| {
                        values
                            .push_bind(key.tier as i16)
                            .push_bind(key.check_id)
                            .push_bind(key.instance_id)
                            .push_bind(key.bucket)
                            .push_bind(row.runs)
                            .push_bind(row.down)
                            .push_bind(row.unmeasured)
                            .push_bind(&row.hist[..]);
                    });
                    insert.push(concat!(" ON CONFLICT (tier, check_id, instance_id, bucket) ", $conflict));
                    insert
                        .build()
                        .persistent(kept_prepared($rows.len(), ROLLUPS_PER_STATEMENT))
                        .execute(&mut *tx)
                        .await?;
                }};
            }
            // The runs, many to a statement; the database answers which ones were new.
            let mut new_runs: HashSet<(i64, i64)> = HashSet::with_capacity(run_rows.len());
            for rows in run_rows.chunks(RUNS_PER_STATEMENT) {
                let mut insert =
                    sqlx::QueryBuilder::new("INSERT INTO runs (check_id, at_ms, outcome, detail) ");
                insert.push_values(rows, |mut values, row| {
                    values
                        .push_bind(row.check_id)
                        .push_bind(row.at_ms)
                        .push_bind(row.outcome)
                        .push_bind(row.detail.as_slice());
                });
                insert.push(" ON CONFLICT (check_id, at_ms) DO NOTHING RETURNING check_id, at_ms");
                let inserted: Vec<(i64, i64)> = insert
                    .build_query_as()
                    .persistent(kept_prepared(rows.len(), RUNS_PER_STATEMENT))
                    .fetch_all(&mut *tx)
                    .await?;
                new_runs.extend(inserted);
            }
            // A run delivered twice in one part matches its key once: it counts once.
            let inserted = runs
                .iter()
                .zip(&run_rows)
                .filter(|(_, row)| new_runs.remove(&(row.check_id, row.at_ms)))
                .map(|(run, _)| run);
            let deltas = self.rollup_deltas(inserted);
            // The cache holds what this writer wrote last. With HA checkers another one may
            // have written since (the lease moved there and back), so the rows are read
            // again, locked on PostgreSQL until the transaction ends: every writer locks them
            // in one order (by key), so two never wait on each other in a circle.
            let unread = self.rollups_to_read(&deltas);
            if !lock.is_empty() {
                // A row not yet written has nothing to lock, so two writers would both start
                // from zero and the later upsert would replace the other's counts: every row
                // is made first (an empty one, which the upsert below overwrites).
                let empty: Vec<(RollupKey, CachedRollup)> =
                    unread.iter().map(|key| (*key, CachedRollup::empty())).collect();
                for rows in empty.chunks(ROLLUPS_PER_STATEMENT) {
                    insert_rollups!(rows, "DO NOTHING");
                }
            }
            let mut stored: HashMap<RollupKey, CachedRollup> = HashMap::with_capacity(unread.len());
            for keys in unread.chunks(ROLLUPS_PER_STATEMENT) {
                let mut select = sqlx::QueryBuilder::new(
                    "SELECT tier, check_id, instance_id, bucket, runs, down, unmeasured, hist \
                     FROM rollups WHERE (tier, check_id, instance_id, bucket) IN (",
                );
                select.push_values(keys, |mut values, key| {
                    values
                        .push_bind(key.tier as i16)
                        .push_bind(key.check_id)
                        .push_bind(key.instance_id)
                        .push_bind(key.bucket);
                });
                select
                    .push(") ORDER BY tier, check_id, instance_id, bucket")
                    .push(lock);
                let rows: Vec<StoredRollup> =
                    select
                        .build_query_as()
                        .persistent(kept_prepared(keys.len(), ROLLUPS_PER_STATEMENT))
                        .fetch_all(&mut *tx)
                        .await?;
                for (tier, check_id, instance_id, bucket, runs, down, unmeasured, hist) in rows {
                    let key = RollupKey { tier: i64::from(tier), check_id, instance_id, bucket };
                    let row = CachedRollup { runs, down, unmeasured, hist: hist.into_boxed_slice() };
                    stored.insert(key, row);
                }
            }
            let merged = self.merged_rollups(deltas, stored);
            for rows in merged.chunks(ROLLUPS_PER_STATEMENT) {
                insert_rollups!(
                    rows,
                    "DO UPDATE SET runs = excluded.runs, down = excluded.down, \
                     unmeasured = excluded.unmeasured, hist = excluded.hist"
                );
            }
            for step in self.later_steps(part) {
                match step {
                    Step::Statement(sql, values) => {
                        bind_values(sqlx::query(sql), &values).execute(&mut *tx).await?;
                    }
                    Step::EndUnfollowed(followed) => {
                        let known: HashSet<&str> =
                            followed.iter().map(|episode| episode.id.as_str()).collect();
                        let still_open: Vec<(i64, Option<String>)> = sqlx::query_as(
                            "SELECT id, episode_id FROM incidents WHERE ended_ms IS NULL",
                        )
                        .fetch_all(&mut *tx)
                        .await?;
                        for (row, episode_id) in still_open {
                            if !episode_id.as_deref().is_some_and(|id| known.contains(id)) {
                                let values = [interrupted(), Value::Int(row)];
                                bind_values(sqlx::query(END_UNFOLLOWED), &values)
                                    .execute(&mut *tx)
                                    .await?;
                            }
                        }
                    }
                }
            }
            tx.commit().await?;
            merged
        });
        Ok(merged)
    }

    /// A run's per-instance detail: instance id, outcome code, phases in microseconds.
    fn detail(&self, check_id: i64, run: &RunRecord) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 * run.samples.len());
        for sample in &run.samples {
            varint(
                &mut out,
                u64::try_from(self.instance_id(check_id, &sample.instance)).unwrap_or(0),
            );
            out.push(sample_code(sample.outcome, sample.error));
            for value in sample.phases {
                let micros = (value.max(0.0) * 1e6).round();
                varint(&mut out, if micros.is_finite() { micros as u64 } else { 0 });
            }
        }
        out
    }

    /// Keeps in the cache the current bucket of each tier, and the previous one only for
    /// `CLOSED_BUCKET_GRACE` after it closed; a table that grew while both were kept is
    /// shrunk again, so the cache holds one bucket a row but for those minutes.
    fn evict_closed_buckets(&mut self) {
        let now = millis(SystemTime::now()) / 1000;
        self.rollups.retain(|key, _| cached_at(key, now));
        if self.rollups.capacity() > 2 * self.rollups.len() + 1024 {
            self.rollups.shrink_to_fit();
        }
    }

    /// Deletes expired rows for up to `EXPIRE_STEP` checks; starts a pass every
    /// `EXPIRE_EVERY`.
    async fn expire_step(&mut self) -> Result<(), super::HistoryError> {
        if self.expiring.is_empty() {
            if Instant::now() < self.next_expiry {
                return Ok(());
            }
            self.next_expiry = Instant::now() + EXPIRE_EVERY;
            self.expiring = on_pool!(&self.db, pool => {
                sqlx::query_scalar::<_, i64>("SELECT id FROM checks").fetch_all(pool).await?
            });
            if self.expiring.is_empty() {
                return Ok(());
            }
        }
        let now = millis(SystemTime::now());
        let ms =
            |retention: Duration| now - i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
        let raw = ms(self.config.raw_retention);
        let hourly = ms(self.config.hourly_retention) / 1000;
        let daily = ms(self.config.daily_retention) / 1000;
        let events = ms(self.config.event_retention);
        let take = self.expiring.len().min(EXPIRE_STEP);
        let step: Vec<i64> = self.expiring.drain(..take).collect();
        on_pool!(&self.db, pool => {
            for check_id in &step {
                sqlx::query("DELETE FROM runs WHERE check_id = $1 AND at_ms < $2")
                    .bind(check_id).bind(raw).execute(pool).await?;
                for (tier, before) in [(HOURLY, hourly), (DAILY, daily)] {
                    sqlx::query("DELETE FROM rollups WHERE tier = $1 AND check_id = $2 AND bucket < $3")
                        .bind(tier as i16).bind(check_id).bind(before).execute(pool).await?;
                }
                sqlx::query("DELETE FROM transitions WHERE check_id = $1 AND at_ms < $2")
                    .bind(check_id).bind(events).execute(pool).await?;
                sqlx::query("DELETE FROM incidents WHERE check_id = $1 AND ended_ms IS NOT NULL AND ended_ms < $2")
                    .bind(check_id).bind(events).execute(pool).await?;
            }
        });
        if self.expiring.is_empty() {
            if let Db::Sqlite(pool) = &self.db {
                // Give freed pages back to the file system (auto_vacuum = INCREMENTAL).
                sqlx::query("PRAGMA incremental_vacuum")
                    .execute(pool)
                    .await?;
            }
        }
        Ok(())
    }
}

/// An instance's outcome in one byte: 0 up, 1 down by assertions, 2 + kind for an error.
pub fn sample_code(outcome: Outcome, error: Option<crate::model::ErrorKind>) -> u8 {
    match (outcome, error) {
        (Outcome::Up, _) => 0,
        (_, Some(kind)) => ERROR_KINDS
            .iter()
            .position(|known| *known == kind)
            .map_or(1, |at| 2 + at as u8),
        (_, None) => 1,
    }
}

/// A value one of the writer's statements binds, borrowed from what is written where it can.
#[derive(Debug, Clone, PartialEq)]
enum Value<'a> {
    Int(i64),
    /// A SMALLINT column's (PostgreSQL takes no wider integer for it).
    Small(i16),
    Text(Cow<'a, str>),
}

impl<'a> Value<'a> {
    fn text(text: &'a str) -> Value<'a> {
        Value::Text(Cow::Borrowed(text))
    }
}

/// What a part writes after its runs and rollups, in order.
#[derive(Debug, Clone, PartialEq)]
enum Step<'a> {
    /// A statement and its values.
    Statement(&'static str, Vec<Value<'a>>),
    /// Every incident still open whose episode is none of these ends: nobody follows it any
    /// more. It reads the open ones first, so it is not one statement.
    EndUnfollowed(&'a [Episode]),
}

/// How an incident nobody follows ends: interrupted, at its check's last run (or where it was
/// confirmed, when no run came since).
const END_UNFOLLOWED: &str =
    "UPDATE incidents SET interrupted = 1, end_reason = $1, ended_ms = COALESCE(\
     (SELECT MAX(r.at_ms) FROM runs r WHERE r.check_id = incidents.check_id \
     AND r.at_ms >= incidents.started_ms), incidents.confirmed_ms) \
     WHERE id = $2";

fn interrupted() -> Value<'static> {
    Value::text(EndReason::Interrupted.as_str())
}

/// The statements of one incident operation, in order; `check_id` is the id of a check name.
fn incident_steps<'a>(op: &'a IncidentOp, check_id: impl Fn(&str) -> i64) -> Vec<Step<'a>> {
    let open = |episode: &'a Episode, cause: Cow<'a, str>| -> Step<'a> {
        Step::Statement(
            "INSERT INTO incidents (check_id, episode_id, started_ms, confirmed_ms, ended_ms, \
             interrupted, cause, severity, end_reason) \
             VALUES ($1, $2, $3, $4, NULL, 0, $5, $6, NULL) ON CONFLICT (episode_id) DO NOTHING",
            vec![
                Value::Int(check_id(&episode.check)),
                Value::text(&episode.id),
                Value::Int(millis(episode.started_at)),
                Value::Int(millis(episode.opened_at)),
                Value::Text(cause),
                Value::text(episode.peak.as_str()),
            ],
        )
    };
    match op {
        IncidentOp::Open { episode, cause } => {
            let cause = serde_json::to_string(cause).unwrap_or_else(|_| "[]".to_string());
            vec![
                // One open incident per check: another one left open (its end was lost) ends
                // where this one starts.
                Step::Statement(
                    "UPDATE incidents SET ended_ms = $1, interrupted = 1, end_reason = $2 \
                     WHERE check_id = $3 AND ended_ms IS NULL \
                     AND (episode_id IS NULL OR episode_id <> $4)",
                    vec![
                        Value::Int(millis(episode.started_at)),
                        interrupted(),
                        Value::Int(check_id(&episode.check)),
                        Value::text(&episode.id),
                    ],
                ),
                open(episode, Cow::Owned(cause)),
            ]
        }
        IncidentOp::Severity { episode } => vec![Step::Statement(
            "UPDATE incidents SET severity = $1 WHERE episode_id = $2",
            vec![Value::text(episode.peak.as_str()), Value::text(&episode.id)],
        )],
        IncidentOp::Close {
            episode,
            ended_at,
            reason,
        } => vec![Step::Statement(
            "UPDATE incidents SET ended_ms = $1, interrupted = $2, end_reason = $3, \
             severity = $4 WHERE episode_id = $5 AND ended_ms IS NULL",
            vec![
                Value::Int(millis(*ended_at)),
                Value::Small(i16::from(*reason != EndReason::Recovered)),
                Value::text(reason.as_str()),
                Value::text(episode.peak.as_str()),
                Value::text(&episode.id),
            ],
        )],
        IncidentOp::Reconcile { open: episodes } => episodes
            .iter()
            .map(|episode| open(episode, Cow::Borrowed("[]")))
            .chain([Step::EndUnfollowed(episodes)])
            .collect(),
    }
}

/// `query` with `values` bound in order, for either database.
fn bind_values<'q, DB>(
    mut query: sqlx::query::Query<'q, DB, <DB as sqlx::Database>::Arguments<'q>>,
    values: &'q [Value<'_>],
) -> sqlx::query::Query<'q, DB, <DB as sqlx::Database>::Arguments<'q>>
where
    DB: sqlx::Database,
    i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    i16: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    for value in values {
        query = match value {
            Value::Int(value) => query.bind(*value),
            Value::Small(value) => query.bind(*value),
            Value::Text(value) => query.bind(value.as_ref()),
        };
    }
    query
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_closed_buckets_rows_stay_cached_for_the_grace_and_not_a_second_more() {
        use super::{cached_at, RollupKey, CLOSED_BUCKET_GRACE, DAILY, HOURLY};
        let key = |tier, bucket| RollupKey {
            tier,
            check_id: 1,
            instance_id: 0,
            bucket,
        };
        let day = 20_000 * 86_400;
        let hour = day + 5 * 3600;
        for (now, previous_kept) in [
            (hour, true),
            (hour + CLOSED_BUCKET_GRACE - 1, true),
            (hour + CLOSED_BUCKET_GRACE, false),
            (hour + 3599, false),
        ] {
            assert!(
                cached_at(&key(HOURLY, hour), now),
                "the open bucket at {now}"
            );
            assert!(
                cached_at(&key(HOURLY, hour + 3600), now),
                "ahead of the clock"
            );
            assert_eq!(
                cached_at(&key(HOURLY, hour - 3600), now),
                previous_kept,
                "{now}"
            );
            assert!(!cached_at(&key(HOURLY, hour - 7200), now), "two hours back");
            // The previous day closed hours ago.
            assert!(cached_at(&key(DAILY, day), now));
            assert!(!cached_at(&key(DAILY, day - 86_400), now));
        }
        assert!(cached_at(
            &key(DAILY, day - 86_400),
            day + CLOSED_BUCKET_GRACE - 1
        ));
        assert!(!cached_at(
            &key(DAILY, day - 86_400),
            day + CLOSED_BUCKET_GRACE
        ));
    }

    use super::*;
    use crate::history::{Sample, TransitionRecord};
    use crate::metrics::Metrics;
    use crate::model::CheckState;
    use std::time::UNIX_EPOCH;

    fn episode(id: &str, check: &str) -> Episode {
        Episode {
            id: id.to_string(),
            check: check.to_string(),
            started_at: UNIX_EPOCH + Duration::from_secs(10),
            opened_at: UNIX_EPOCH + Duration::from_secs(20),
            severity: crate::model::Severity::Critical,
            peak: crate::model::Severity::Critical,
        }
    }

    fn sql_of(step: &Step<'_>) -> &'static str {
        match step {
            Step::Statement(sql, _) => sql,
            Step::EndUnfollowed(_) => "end unfollowed",
        }
    }

    /// `interrupted` is a SMALLINT, which PostgreSQL binds only from a 16-bit integer, and a
    /// close says whether the episode was interrupted by its reason.
    #[test]
    fn a_close_binds_interrupted_as_a_small_integer() {
        for (reason, flag) in [(EndReason::Recovered, 0), (EndReason::CheckRemoved, 1)] {
            let op = IncidentOp::Close {
                episode: episode("e1", "web"),
                ended_at: UNIX_EPOCH + Duration::from_secs(30),
                reason,
            };
            let steps = incident_steps(&op, |_| 7);
            let [Step::Statement(sql, values)] = steps.as_slice() else {
                panic!("one statement: {steps:?}");
            };
            assert!(sql.starts_with("UPDATE incidents SET ended_ms"), "{sql}");
            assert_eq!(values[0], Value::Int(30_000));
            assert_eq!(values[1], Value::Small(flag));
            assert_eq!(values[2], Value::text(reason.as_str()));
            assert_eq!(values[4], Value::text("e1"));
        }
    }

    /// An open first ends another incident left open for its check, then inserts its own; a
    /// reconcile inserts each episode it follows before it ends the ones nobody follows.
    #[test]
    fn incident_operations_write_their_statements_in_order() {
        let opened = IncidentOp::Open {
            episode: episode("e1", "web"),
            cause: Vec::new(),
        };
        let steps = incident_steps(&opened, |check| if check == "web" { 7 } else { 0 });
        assert_eq!(steps.len(), 2);
        assert!(
            sql_of(&steps[0]).starts_with("UPDATE incidents SET ended_ms = $1, interrupted = 1")
        );
        assert!(sql_of(&steps[1]).starts_with("INSERT INTO incidents"));
        let Step::Statement(_, values) = &steps[1] else {
            panic!("an insert");
        };
        assert_eq!(values[0], Value::Int(7));
        assert_eq!(values[4], Value::text("[]"));
        let followed = vec![episode("e1", "web"), episode("e2", "api")];
        let reconcile = IncidentOp::Reconcile {
            open: followed.clone(),
        };
        let steps = incident_steps(&reconcile, |_| 1);
        let order: Vec<&str> = steps.iter().map(sql_of).collect();
        assert_eq!(order.len(), 3);
        assert!(order[..2]
            .iter()
            .all(|sql| sql.starts_with("INSERT INTO incidents")));
        assert_eq!(steps[2], Step::EndUnfollowed(&followed));
    }

    fn run(check: usize) -> RunRecord {
        let at = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        RunRecord {
            check: Arc::from(format!("c{check}")),
            scheduled_at: at,
            finished_at: at,
            outcome: Outcome::Up,
            samples: vec![Sample {
                instance: "127.0.0.1:80".into(),
                outcome: Outcome::Up,
                error: None,
                phases: [0.001; 6],
                message: None,
            }],
            location: None,
        }
    }

    fn transition(check: usize) -> TransitionRecord {
        TransitionRecord {
            check: Arc::from(format!("c{check}")),
            from: CheckState::Ok,
            to: CheckState::Fail,
            at: UNIX_EPOCH + Duration::from_secs(1_800_000_000),
            failing: 1,
            instances: 1,
        }
    }

    /// The parts a batch of `runs` runs and `changes` state changes is written in: (runs,
    /// state changes) of each.
    fn parts(runs: usize, changes: usize) -> Vec<(usize, usize)> {
        let mut batch = Batch {
            runs: (0..runs).map(run).collect(),
            transitions: (0..changes).map(transition).collect(),
            incidents: Vec::new(),
        };
        let mut parts = Vec::new();
        while batch.len() > 0 {
            let part = batch.next_part();
            parts.push((part.runs, part.transitions));
            batch.remove(part);
        }
        parts
    }

    #[test]
    fn a_part_holds_at_most_a_transactions_runs_and_the_state_changes_go_first() {
        let most = RUNS_PER_TRANSACTION;
        assert_eq!(parts(0, 3), [(0, 3)]);
        assert_eq!(parts(most - 1, 3), [(most - 1, 3)]);
        assert_eq!(parts(most, 3), [(most, 3)]);
        // State changes never wait behind a backlog of runs.
        assert_eq!(parts(most + 1, 3), [(most, 3), (1, 0)]);
        assert_eq!(parts(2 * most + 1, 3), [(most, 3), (most, 0), (1, 0)]);
        // And are bounded per part like the runs.
        assert_eq!(parts(1, most + 1), [(1, most), (0, 1)]);
    }

    /// How many writes `bastion_history_write_seconds` observed, from the exposition.
    fn histogram_count(metrics: &Metrics) -> u64 {
        let text = metrics.render();
        text.lines()
            .find_map(|line| line.strip_prefix("bastion_history_write_seconds_count "))
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or(u64::MAX)
    }

    /// A directory of this test's own for a history database.
    fn scratch_dir(test: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "bastion-writer-{test}-{}-{}",
            std::process::id(),
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// How many runs were dropped for a full buffer, from the exposition.
    fn dropped_for_a_full_buffer(metrics: &Metrics) -> u64 {
        let text = metrics.render();
        text.lines()
            .find_map(|line| {
                line.strip_prefix(r#"bastion_history_dropped_total{reason="buffer_full"} "#)
            })
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or(u64::MAX)
    }

    /// `bastion_history_buffered` as a scrape reads it.
    fn buffered(metrics: &Metrics) -> u64 {
        let text = metrics.render();
        text.lines()
            .find_map(|line| line.strip_prefix("bastion_history_buffered "))
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or(u64::MAX)
    }

    /// Waits until the runs' lane has `free` places (the writer took runs in).
    async fn lane_frees(recorder: &crate::history::Recorder, free: usize) {
        let waited = Instant::now();
        while recorder.runs.capacity() < free {
            assert!(
                waited.elapsed() < Duration::from_secs(60),
                "the writer took no runs in for 60 s ({} free, {free} awaited)",
                recorder.runs.capacity()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// The writer is not woken by every run: with a flush every 10 minutes, one run waits in
    /// the lane. The second fills a quarter of the lane (8), and the writer takes both in at
    /// once, long before the flush. And the bound holds past it: 16 runs wait (8 taken in,
    /// 8 in the lane) and the 17th is dropped. Without the early take the lane alone would
    /// hold 8 and drop the 9th; with a wake-up per run the first would be taken in at once.
    #[tokio::test]
    async fn a_filling_lane_is_taken_in_before_the_flush_and_the_bound_holds_past_it() {
        let dir = scratch_dir("lane");
        let config = HistoryConfig {
            path: dir.join("history.db"),
            buffer: 8,
            flush_interval: Duration::from_secs(600),
            ..HistoryConfig::default()
        };
        let metrics = Metrics::new();
        let history = crate::history::History::open(&config, &metrics, true).unwrap();
        let recorder = history.recorder;
        let writer = tokio::spawn(history.writer.run());
        recorder.send_run(run(0));
        // The writer runs meanwhile (this test's runtime has one thread): a wake-up per run
        // would empty the lane.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(recorder.runs.capacity(), 7, "one run waits in the lane");
        assert_eq!(buffered(&metrics), 1, "a scrape counts the run in the lane");
        recorder.send_run(run(1));
        lane_frees(&recorder, 8).await;
        for check in 2..12 {
            lane_frees(&recorder, 1).await;
            recorder.send_run(run(check));
        }
        // The writer holds 8 (its buffer is full) and 4 wait in the lane.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            recorder.runs.capacity(),
            4,
            "8 runs taken in, 4 in the lane"
        );
        assert_eq!(dropped_for_a_full_buffer(&metrics), 0);
        for check in 12..16 {
            recorder.send_run(run(check));
        }
        assert_eq!(dropped_for_a_full_buffer(&metrics), 0, "16 runs wait");
        assert_eq!(buffered(&metrics), 16, "the batch and the lane, counted");
        recorder.send_run(run(16));
        assert_eq!(
            dropped_for_a_full_buffer(&metrics),
            1,
            "the 17th is dropped"
        );
        // Closing writes what waits, at once.
        drop(recorder);
        drop(history.reader);
        writer.await.unwrap();
        assert_eq!(metrics.component::<HistoryMetrics>().written(), 16);
        assert_eq!(buffered(&metrics), 0, "nothing waits once written");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_writer_is_woken_at_a_quarter_of_the_lane_and_for_every_run_of_a_lane_of_one() {
        use crate::history::filling_at;
        assert_eq!(filling_at(1), 1);
        assert_eq!(filling_at(3), 1);
        assert_eq!(filling_at(8), 2);
        assert_eq!(filling_at(65_536), 16_384);
        assert_eq!(filling_at(1 << 20), 1 << 18);
    }

    /// A backlog of more runs than one transaction holds, every run of another check (each
    /// new to the database): every attempt commits at least one part (an attempt past its
    /// budget leaves the rest to the next), and the whole backlog is written.
    #[tokio::test]
    async fn a_backlog_larger_than_a_transaction_is_written_whole_in_parts() {
        let dir = scratch_dir("parts");
        let config = HistoryConfig {
            path: dir.join("history.db"),
            ..HistoryConfig::default()
        };
        let metrics = Metrics::new();
        let history = crate::history::History::open(&config, &metrics, true).unwrap();
        let mut writer = history.writer;
        let runs = 2 * RUNS_PER_TRANSACTION + 1;
        writer.pending.runs = (0..runs).map(run).collect();
        writer.pending.transitions = vec![transition(0)];
        let mut attempts = 0;
        while writer.pending.len() > 0 {
            let before = writer.pending.len();
            assert!(writer.attempt(Pace::Rested).await, "the attempt wrote");
            assert!(
                before - writer.pending.len() >= RUNS_PER_TRANSACTION.min(before),
                "an attempt committed at least a part"
            );
            attempts += 1;
            assert!(attempts <= 3, "three parts, three attempts at most");
        }
        assert_eq!(
            metrics.component::<HistoryMetrics>().written(),
            runs as u64 + 1
        );
        // One observation per part committed.
        assert_eq!(histogram_count(&metrics), 3);
        let (stored, changes): (i64, i64) = on_pool!(&writer.db, pool => {
            (
                sqlx::query_scalar("SELECT COUNT(*) FROM runs").fetch_one(pool).await.unwrap(),
                sqlx::query_scalar("SELECT COUNT(*) FROM transitions").fetch_one(pool).await.unwrap(),
            )
        });
        assert_eq!((stored, changes), (runs as i64, 1));
        writer.db.close().await;
        let _ = std::fs::remove_dir_all(&dir);
    }
}
