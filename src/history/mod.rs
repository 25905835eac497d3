//! History: every run's outcome for a recent window, hourly and daily rollups beyond it
//! (runs, down runs, latency buckets per phase), every state change and every incident (a
//! `FAIL` episode), in SQLite (`[history] path`) or PostgreSQL (`[history] url`) with the same
//! SQL. The result sink hands each run and transition to a `Recorder`, which only puts a small
//! record into a bounded channel (`try_send`, never awaiting the database); one writer task
//! (`writer.rs`) batches them into one transaction per `flush_interval`, retries a failed
//! batch while the channel fills, and expires old rows in the background. Queries for the API
//! and the status page are in `query.rs`.
//!
//! How uptime is computed (the README says the same): from runs, not from time in state. A
//! run is *down* when its failing instances, not counting those that never ran for want of a
//! worker (`dispatch_timeout`), reach the check's `min_failing_count`; fewer failing (a `WARN`)
//! is up. A run whose every instance hit `dispatch_timeout` measured nothing: it is counted as
//! `unmeasured`, neither up nor down. Skipped ticks and lost runs produce no result, so they
//! are not runs. Uptime = (runs - down) / runs over measured runs; none when there were none.
//! Latency percentiles come from passing instances only (a refused connection is fast).
//! A check with `locations` has each location's runs judged so, kept under `check@location`
//! (`location_check`), and one combined run per tick under its own name (`ticks.rs`), which
//! uptime reads: down when `min_failing_locations` locations were down.
//!
//! This module never touches the bus or the probe path, and never blocks a caller on the
//! database: a full buffer drops the record and counts it in `bastion_history_dropped_total`.

pub mod db;
pub mod episodes;
pub mod histogram;
mod ids;
mod metrics;
pub mod query;
pub mod ticks;
pub mod writer;

pub use metrics::HistoryMetrics;

use crate::config::{CheckConfig, HistoryConfig};
use crate::messages::CheckResult;
use crate::metrics::Metrics;
use crate::model::{CheckState, ErrorKind};
pub use episodes::{Cause, IncidentOp};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;

pub use db::Db;
pub use query::HistoryReader;
pub use ticks::LocationRun;

/// The phases kept, in this order everywhere (raw detail, histograms, API). Type-specific
/// waiting phases count as `processing`: tcp `exchange`, dns `request`, icmp `rtt`; an http
/// probe's `proxy` (the CONNECT exchange) counts as `connect`.
pub const PHASES: [&str; 6] = [
    "resolve",
    "connect",
    "tls",
    "processing",
    "transfer",
    "total",
];

/// Error kinds by code, for the compact raw detail. Append only: codes are stored.
pub const ERROR_KINDS: [ErrorKind; 14] = [
    ErrorKind::Resolve,
    ErrorKind::Connect,
    ErrorKind::Tls,
    ErrorKind::Http,
    ErrorKind::Body,
    ErrorKind::Expect,
    ErrorKind::Dns,
    ErrorKind::Icmp,
    ErrorKind::Grpc,
    ErrorKind::Timeout,
    ErrorKind::DispatchTimeout,
    ErrorKind::Internal,
    ErrorKind::Auth,
    ErrorKind::NoRunner,
];

/// Longest error message kept with an incident's cause.
pub const CAUSE_MESSAGE_BYTES: usize = 256;
/// Failing instances kept with an incident's cause.
pub const CAUSE_INSTANCES: usize = 10;

#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("history database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("history.password_file {path}: {source}")]
    PasswordFile {
        path: String,
        source: std::io::Error,
    },
    #[error("history.url is not a valid PostgreSQL URL: {0}")]
    Url(String),
    #[error("history is not available yet: the database has not been opened")]
    NotReady,
    /// A read took longer than `query::READ_TIME_LIMIT` (a slow or unreachable database).
    #[error("the history database did not answer within {}", humantime::format_duration(*.0))]
    TimedOut(Duration),
    #[error("{0}")]
    BadQuery(String),
}

/// How a run (or one instance of it) counts for uptime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Up,
    Down,
    /// Nothing was measured: the probe never ran (`dispatch_timeout`).
    Unmeasured,
}

impl Outcome {
    pub fn code(self) -> i64 {
        match self {
            Outcome::Up => 0,
            Outcome::Down => 1,
            Outcome::Unmeasured => 2,
        }
    }

    pub fn from_code(code: i64) -> Outcome {
        match code {
            0 => Outcome::Up,
            1 => Outcome::Down,
            _ => Outcome::Unmeasured,
        }
    }
}

/// One instance's part of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub instance: String,
    pub outcome: Outcome,
    /// None when passing, or failing by assertions with no transport error.
    pub error: Option<ErrorKind>,
    /// Seconds, in `PHASES` order.
    pub phases: [f64; 6],
    /// Why it failed (cut short); None when passing.
    pub message: Option<String>,
}

/// One run of one check, as history keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct RunRecord {
    pub check: Arc<str>,
    /// When the run was due (unique per check).
    pub scheduled_at: SystemTime,
    pub finished_at: SystemTime,
    pub outcome: Outcome,
    pub samples: Vec<Sample>,
    /// A location's run of a check with `locations` (`check` is then `check@location`): how
    /// it joins the check's combined run. None for every other run.
    pub location: Option<LocationRun>,
}

/// The name a location's own runs are stored under: `check@location`. `@` occurs in no check
/// name (`[a-z0-9_-]+`) nor location name, so it never meets a real check; it is history's
/// own, and the API never shows it.
pub fn location_check(check: &str, location: &str) -> String {
    format!("{check}@{location}")
}

/// One change of a check's state.
#[derive(Debug, Clone, PartialEq)]
pub struct TransitionRecord {
    pub check: Arc<str>,
    pub from: CheckState,
    pub to: CheckState,
    pub at: SystemTime,
    pub failing: usize,
    pub instances: usize,
}

/// Milliseconds since the Unix epoch (0 before it).
pub fn millis(at: SystemTime) -> i64 {
    at.duration_since(UNIX_EPOCH).map_or(0, |elapsed| {
        i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX)
    })
}

/// The instant `ms` milliseconds after the Unix epoch.
pub fn from_millis(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

/// Turns a result into what history keeps of it: per instance the outcome, the error kind and
/// the phase latencies. `min_failing_count` is the check's (default applied).
pub fn run_record(result: &CheckResult, min_failing_count: usize) -> RunRecord {
    let samples: Vec<Sample> = result
        .responses
        .iter()
        .map(|response| {
            let kind = response.error_kind();
            let outcome = if kind.is_some_and(ErrorKind::is_unmeasured) {
                Outcome::Unmeasured
            } else if response.passing {
                Outcome::Up
            } else {
                Outcome::Down
            };
            let t = &response.timings;
            let message =
                (!response.passing).then(|| cut(failure(response).1, CAUSE_MESSAGE_BYTES));
            Sample {
                instance: response.target.clone(),
                outcome,
                error: kind,
                phases: [
                    t.resolve,
                    t.connect + t.proxy,
                    t.tls,
                    t.processing + t.exchange + t.request + t.rtt,
                    t.transfer,
                    t.total,
                ],
                message,
            }
        })
        .collect();
    // The one rule the state machine shares (`CheckResult::counts`); a degraded result
    // counts the instances it left out as well.
    let counts = result.counts();
    let outcome = if counts.nothing_measured() {
        Outcome::Unmeasured
    } else if counts.failing >= min_failing_count.max(1) {
        Outcome::Down
    } else {
        Outcome::Up
    };
    RunRecord {
        check: Arc::from(result.check.as_str()),
        scheduled_at: result.scheduled_at,
        finished_at: result.finished_at,
        outcome,
        samples,
        location: None,
    }
}

/// Why a failing response failed, as a label (`kind`: an error kind, `assertion` or `status`)
/// and a message for people: the error, the first failing assertion, or the status that the
/// type's default verdict refused (an HTTP status outside 2xx, a gRPC health other than
/// SERVING).
pub fn failure(response: &crate::messages::Response) -> (&'static str, String) {
    if let Some(error) = &response.error {
        return (error.kind.as_str(), error.message.clone());
    }
    if let Some(message) = response
        .assertions
        .iter()
        .find(|assertion| !assertion.passing)
        .map(|assertion| {
            assertion
                .message
                .clone()
                .unwrap_or_else(|| format!("{} was {}", assertion.value, assertion.actual))
        })
    {
        return ("assertion", message);
    }
    if let Some(http) = &response.http {
        return ("status", format!("HTTP status {}", http.status));
    }
    // The type's own verdict (a gRPC health other than SERVING): what its section saw.
    if let Some(seen) = response.sections.seen() {
        return ("status", seen);
    }
    (
        "assertion",
        "the check's default verdict failed".to_string(),
    )
}

pub(crate) fn cut(mut text: String, bytes: usize) -> String {
    if text.len() > bytes {
        let mut end = bytes;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

/// The sink's side: hands records to the writer without ever waiting for it. Runs, state
/// changes and incident operations travel in lanes of their own, so a database that stays
/// down fills the runs' lane first and loses runs (counted) while every state change and
/// incident still waits to be written: incidents match the state even after a long outage.
#[derive(Debug, Clone)]
pub struct Recorder {
    runs: mpsc::Sender<RunRecord>,
    transitions: mpsc::Sender<TransitionRecord>,
    incidents: mpsc::Sender<IncidentOp>,
    /// Notified when the runs' lane is a quarter full: the writer takes runs in at its
    /// flushes, not one by one (see `Lanes::runs_filling`).
    runs_filling: Arc<tokio::sync::Notify>,
    metrics: HistoryMetrics,
    /// Cancels `Lanes::closed` when the last clone is dropped.
    _closes: Arc<tokio_util::sync::DropGuard>,
}

/// The writer's side of the lanes.
#[derive(Debug)]
pub struct Lanes {
    pub runs: mpsc::Receiver<RunRecord>,
    pub transitions: mpsc::Receiver<TransitionRecord>,
    pub incidents: mpsc::Receiver<IncidentOp>,
    /// Notified when the runs' lane is at least a quarter full (`filling_at`). The writer does
    /// not wait on the runs' lane itself: a receiver parked on a channel is woken by every
    /// send, a thread wake-up per probe (about 3 % of the agent's CPU at 1,000 probes/s,
    /// bench/RESULTS.md). It takes the lane in at each flush, and early when this says the
    /// lane is filling: a long `flush_interval` at a high rate does not fill the lane between
    /// flushes, and a burst still finds three quarters of the lane free.
    pub runs_filling: Arc<tokio::sync::Notify>,
    /// Cancelled when the last `Recorder` is gone: nothing more will arrive.
    pub closed: tokio_util::sync::CancellationToken,
}

/// Runs waiting in a lane of `capacity` at which the writer is woken to take them in: a
/// quarter of the lane, at least one (a lane of one wakes it for every run, as it must).
fn filling_at(capacity: usize) -> usize {
    (capacity / 4).max(1)
}

/// Incident operations waiting at most, whatever `history.buffer` says: one open and one
/// close per episode, so this many episodes can open and end while the database is down
/// before the first is lost.
pub const MIN_INCIDENT_LANE: usize = 16_384;

impl Recorder {
    /// The recorder and the lanes it fills: `buffer` runs and `buffer` state changes, and at
    /// least `MIN_INCIDENT_LANE` incident operations.
    pub fn new(buffer: usize, metrics: HistoryMetrics) -> (Recorder, Lanes) {
        let buffer = buffer.max(1);
        let (runs, run_lane) = mpsc::channel(buffer);
        let (transitions, transition_lane) = mpsc::channel(buffer);
        let (incidents, incident_lane) = mpsc::channel(buffer.max(MIN_INCIDENT_LANE));
        let closed = tokio_util::sync::CancellationToken::new();
        let runs_filling = Arc::new(tokio::sync::Notify::new());
        let watched = (
            runs.downgrade(),
            transitions.downgrade(),
            incidents.downgrade(),
        );
        metrics.watch_lanes(metrics::LaneDepth(Box::new(move || {
            // A lane whose recorder is gone holds nothing more than the writer took in.
            let waiting =
                |capacity: Option<(usize, usize)>| capacity.map_or(0, |(max, free)| max - free);
            waiting(
                watched
                    .0
                    .upgrade()
                    .map(|s| (s.max_capacity(), s.capacity())),
            ) + waiting(
                watched
                    .1
                    .upgrade()
                    .map(|s| (s.max_capacity(), s.capacity())),
            ) + waiting(
                watched
                    .2
                    .upgrade()
                    .map(|s| (s.max_capacity(), s.capacity())),
            )
        })));
        (
            Recorder {
                runs,
                transitions,
                incidents,
                runs_filling: Arc::clone(&runs_filling),
                metrics,
                _closes: Arc::new(closed.clone().drop_guard()),
            },
            Lanes {
                runs: run_lane,
                transitions: transition_lane,
                incidents: incident_lane,
                runs_filling,
                closed,
            },
        )
    }

    /// Hands over one run. A location's result of a check with `locations` is kept as that
    /// location's run and joins the check's combined run of its tick (`ticks.rs`);
    /// `followed_locations` is how many locations the sink follows for the check, the
    /// locations a tick of `["*"]` waits for (a named list waits for every name).
    pub fn run(&self, result: &CheckResult, check: &CheckConfig, followed_locations: usize) {
        let mut record = run_record(result, check.min_failing_count());
        if let (Some(named), Some(location)) = (&check.locations, &result.location) {
            let every_location = check.every_location();
            record.location = Some(LocationRun {
                check: Arc::clone(&record.check),
                location: Arc::from(location.as_str()),
                expected: if every_location {
                    followed_locations
                } else {
                    named.len()
                },
                every_location,
                min_failing_locations: check.min_failing_locations(),
                wait: check
                    .interval
                    .saturating_mul(2)
                    .saturating_add(check.timeout()),
            });
            record.check = Arc::from(location_check(&result.check, location));
        }
        self.send_run(record);
    }

    /// Puts a run into its lane, or counts it dropped when the lane is full.
    fn send_run(&self, record: RunRecord) {
        let sent = self.runs.try_send(record);
        let waiting = self.runs.max_capacity() - self.runs.capacity();
        if waiting >= filling_at(self.runs.max_capacity()) {
            // The writer takes the lane in early; a stored permit makes this cheap while
            // the writer is busy writing.
            self.runs_filling.notify_one();
        }
        self.count(sent.err().map(|error| match error {
            mpsc::error::TrySendError::Full(_) => "buffer_full",
            mpsc::error::TrySendError::Closed(_) => "stopped",
        }));
    }

    pub fn transition(&self, record: TransitionRecord) {
        self.count(
            self.transitions
                .try_send(record)
                .err()
                .map(|error| match error {
                    mpsc::error::TrySendError::Full(_) => "buffer_full",
                    mpsc::error::TrySendError::Closed(_) => "stopped",
                }),
        );
    }

    pub fn incident(&self, op: IncidentOp) {
        self.count(self.incidents.try_send(op).err().map(|error| match error {
            mpsc::error::TrySendError::Full(_) => "incidents_full",
            mpsc::error::TrySendError::Closed(_) => "stopped",
        }));
    }

    fn count(&self, dropped: Option<&'static str>) {
        if let Some(reason) = dropped {
            self.metrics.count_dropped(reason, 1);
        }
    }
}

/// History for one agent: the recorder for the sink, the reader for the endpoints, and the
/// writer task to spawn.
pub struct History {
    pub recorder: Recorder,
    pub reader: HistoryReader,
    pub writer: writer::Writer,
}

impl std::fmt::Debug for History {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("History").finish_non_exhaustive()
    }
}

impl History {
    /// Prepares history as configured. The database is opened lazily: a database that is
    /// down or unwritable now is retried by the writer, never refused here. Only settings
    /// that can never work (an unreadable password file, a malformed URL) are errors.
    /// `sole_writer` (no HA checkers) lets the writer trust its cache of the rollup rows it
    /// wrote; with HA another checker may have written them since.
    pub fn open(
        config: &HistoryConfig,
        metrics: &Metrics,
        sole_writer: bool,
    ) -> Result<History, HistoryError> {
        let metrics: HistoryMetrics = metrics.component();
        let db = Db::lazy(config)?;
        let (recorder, lanes) = Recorder::new(
            crate::config::bounds::HISTORY_BUFFER.clamp_count(config.buffer),
            metrics.clone(),
        );
        let reader = HistoryReader::new(db.clone(), config.clone());
        let writer = writer::Writer::new(
            db,
            config.clone(),
            lanes,
            metrics,
            reader.ready_flag(),
            sole_writer,
        );
        Ok(History {
            recorder,
            reader,
            writer,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::{Response, Timings};
    use crate::model::ProbeError;

    fn result(responses: Vec<Response>) -> CheckResult {
        CheckResult::of_web(responses)
    }

    fn failed(kind: ErrorKind) -> Response {
        Response::failed(
            "127.0.0.1:1".into(),
            ProbeError::new(kind, "boom"),
            Timings::default(),
        )
    }

    fn passed() -> Response {
        let mut response = failed(ErrorKind::Connect);
        response.passing = true;
        response.error = None;
        response
    }

    #[test]
    fn a_run_is_down_at_the_failing_count_and_unmeasured_without_any_probe() {
        let two_of_three = result(vec![
            failed(ErrorKind::Connect),
            failed(ErrorKind::Timeout),
            passed(),
        ]);
        assert_eq!(run_record(&two_of_three, 2).outcome, Outcome::Down);
        assert_eq!(run_record(&two_of_three, 3).outcome, Outcome::Up);
        let dispatch = result(vec![
            failed(ErrorKind::DispatchTimeout),
            failed(ErrorKind::Connect),
        ]);
        // The dispatch timeout is not the target's failure.
        assert_eq!(run_record(&dispatch, 2).outcome, Outcome::Up);
        assert_eq!(run_record(&dispatch, 1).outcome, Outcome::Down);
        let none = result(vec![failed(ErrorKind::DispatchTimeout)]);
        assert_eq!(run_record(&none, 1).outcome, Outcome::Unmeasured);
        let record = run_record(&dispatch, 1);
        assert_eq!(record.samples[0].outcome, Outcome::Unmeasured);
        assert_eq!(record.samples[1].message.as_deref(), Some("boom"));
    }
}
