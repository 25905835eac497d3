//! Combined runs of checks with `locations`. Each location's result of a tick is a run of its
//! own (stored under `check@location`, see `location_check`); uptime, the status page and
//! incidents read one combined run per tick under the check's own name, judged across the
//! locations: down when at least `min_failing_locations` of them were down, unmeasured when
//! none measured anything, else up. The locations of one tick arrive separately, so the writer
//! gathers them here: one open tick per check, completed once every expected location
//! answered, or with what it has when a newer tick of the check arrives or when it has waited
//! two intervals and the timeout. A location delivered twice counts once; a late result of an
//! older tick joins nothing. At most `MAX_OPEN_TICKS` checks are gathered at once; past it a
//! new check's tick is not combined (the caller counts it). Pure: the caller passes the clock
//! in; nothing here reads or writes the database.

use super::{Outcome, RunRecord, Sample};
use crate::model::ErrorKind;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::time::Instant;

/// Checks whose tick is gathered at once, at most: one open tick per check with `locations`,
/// so only a configuration of more located checks than this (or a stream of results of
/// checks removed since) reaches it.
pub const MAX_OPEN_TICKS: usize = 100_000;

/// How one location's run joins its check's combined run; the recorder sets it.
#[derive(Debug, Clone, PartialEq)]
pub struct LocationRun {
    /// The check's own name (the run itself is stored under `check@location`).
    pub check: Arc<str>,
    pub location: Arc<str>,
    /// Location results that complete a tick: the named locations, or for `["*"]` the
    /// locations the sink follows for the check.
    pub expected: usize,
    /// `["*"]`: a location answering `no_runner` has just left, it is not one of those
    /// expected (its result still joins the tick, unmeasured).
    pub every_location: bool,
    pub min_failing_locations: usize,
    /// How long a tick waits for its last locations: two intervals and the timeout.
    pub wait: Duration,
}

/// One check's tick being gathered.
#[derive(Debug)]
struct Tick {
    check: Arc<str>,
    scheduled_at: SystemTime,
    finished_at: SystemTime,
    /// When its first location arrived.
    opened: Instant,
    wait: Duration,
    expected: usize,
    min_failing_locations: usize,
    /// The locations arrived, each once.
    arrived: BTreeSet<Arc<str>>,
    /// Arrivals that count toward `expected`.
    counted: usize,
    measured: usize,
    down: usize,
    samples: Vec<Sample>,
    /// Completed and handed out; kept until it has waited its time or a newer tick comes,
    /// so that a late copy of one of its locations does not open it again.
    done: bool,
}

impl Tick {
    fn new(run: &RunRecord, place: &LocationRun, now: Instant) -> Tick {
        Tick {
            check: Arc::clone(&place.check),
            scheduled_at: run.scheduled_at,
            finished_at: run.finished_at,
            opened: now,
            wait: place.wait,
            expected: place.expected,
            min_failing_locations: place.min_failing_locations,
            arrived: BTreeSet::new(),
            counted: 0,
            measured: 0,
            down: 0,
            samples: Vec::new(),
            done: false,
        }
    }

    /// Adds one location's run (once per location).
    fn add(&mut self, run: &RunRecord, place: &LocationRun) {
        if self.done
            || self.arrived.contains(&place.location)
            || self.arrived.len() >= crate::config::bounds::MAX_LOCATIONS
        {
            return;
        }
        self.arrived.insert(Arc::clone(&place.location));
        let left = !run.samples.is_empty()
            && run
                .samples
                .iter()
                .all(|sample| sample.error == Some(ErrorKind::NoRunner));
        if !(place.every_location && left) {
            self.counted += 1;
        }
        // The latest word on what completes the tick and how it is judged.
        self.expected = place.expected;
        self.min_failing_locations = place.min_failing_locations;
        self.wait = place.wait;
        match run.outcome {
            Outcome::Up => self.measured += 1,
            Outcome::Down => {
                self.measured += 1;
                self.down += 1;
            }
            Outcome::Unmeasured => {}
        }
        self.finished_at = self.finished_at.max(run.finished_at);
        self.samples.extend(run.samples.iter().map(|sample| Sample {
            instance: format!("{}/{}", place.location, sample.instance),
            ..sample.clone()
        }));
    }

    fn complete(&self) -> bool {
        !self.done && self.counted >= self.expected
    }

    /// The combined run, handed out once.
    fn combine(&mut self) -> RunRecord {
        self.done = true;
        let outcome = if self.measured == 0 {
            Outcome::Unmeasured
        } else if self.down >= self.min_failing_locations.max(1) {
            Outcome::Down
        } else {
            Outcome::Up
        };
        RunRecord {
            check: Arc::clone(&self.check),
            scheduled_at: self.scheduled_at,
            finished_at: self.finished_at,
            outcome,
            samples: std::mem::take(&mut self.samples),
            location: None,
        }
    }
}

/// What `Ticks::offer` did with a location's run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offered {
    /// It joined its tick (or was a copy, or late: nothing to add).
    Taken,
    /// Its check had no open tick and `MAX_OPEN_TICKS` were open: not combined.
    Full,
}

/// The ticks being gathered, one per check with `locations`.
#[derive(Debug)]
pub struct Ticks {
    open: HashMap<Arc<str>, Tick>,
    max: usize,
}

impl Default for Ticks {
    fn default() -> Ticks {
        Ticks::new(MAX_OPEN_TICKS)
    }
}

impl Ticks {
    /// At most `max` checks gathered at once.
    pub fn new(max: usize) -> Ticks {
        Ticks {
            open: HashMap::new(),
            max: max.max(1),
        }
    }

    /// Checks with a tick held (open, or done and waiting out its time).
    pub fn len(&self) -> usize {
        self.open.len()
    }

    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }

    /// Takes one location's run at `now`; pushes onto `out` the combined runs it completes:
    /// the previous tick of the check when this one is newer, and this tick when it is whole.
    pub fn offer(
        &mut self,
        run: &RunRecord,
        place: &LocationRun,
        now: Instant,
        out: &mut Vec<RunRecord>,
    ) -> Offered {
        if !self.open.contains_key(&place.check) && self.open.len() >= self.max {
            self.expire(now, out);
            if self.open.len() >= self.max {
                return Offered::Full;
            }
        }
        let tick = match self.open.get_mut(&place.check) {
            // A late result of an older tick: its own run is kept, the combined one is gone.
            Some(tick) if run.scheduled_at < tick.scheduled_at => return Offered::Taken,
            Some(tick) if run.scheduled_at == tick.scheduled_at => tick,
            Some(tick) => {
                if !tick.done {
                    out.push(tick.combine());
                }
                *tick = Tick::new(run, place, now);
                tick
            }
            None => self
                .open
                .entry(Arc::clone(&place.check))
                .or_insert_with(|| Tick::new(run, place, now)),
        };
        tick.add(run, place);
        if tick.complete() {
            out.push(tick.combine());
        }
        Offered::Taken
    }

    /// Completes, with what they have, the ticks that waited their time, and forgets those
    /// done. Called at each flush, never per result.
    pub fn expire(&mut self, now: Instant, out: &mut Vec<RunRecord>) {
        self.open.retain(|_, tick| {
            if now.saturating_duration_since(tick.opened) < tick.wait {
                return true;
            }
            if !tick.done {
                out.push(tick.combine());
            }
            false
        });
    }

    /// Completes every open tick with what it has (at shutdown).
    pub fn drain(&mut self, out: &mut Vec<RunRecord>) {
        for (_, mut tick) in self.open.drain() {
            if !tick.done {
                out.push(tick.combine());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    const WAIT: Duration = Duration::from_secs(130);

    fn sample(instance: &str, outcome: Outcome, error: Option<ErrorKind>) -> Sample {
        Sample {
            instance: instance.to_string(),
            outcome,
            error,
            phases: [0.0, 0.001, 0.0, 0.002, 0.0, 0.003],
            message: None,
        }
    }

    /// One location's run of tick `second` of check `web`, with one instance.
    fn run(location: &str, second: u64, outcome: Outcome) -> (RunRecord, LocationRun) {
        let error = match outcome {
            Outcome::Up => None,
            Outcome::Down => Some(ErrorKind::Connect),
            Outcome::Unmeasured => Some(ErrorKind::NoRunner),
        };
        let at = UNIX_EPOCH + Duration::from_secs(second);
        (
            RunRecord {
                check: Arc::from(super::super::location_check("web", location)),
                scheduled_at: at,
                finished_at: at + Duration::from_millis(5),
                outcome,
                samples: vec![sample("10.0.0.1:80", outcome, error)],
                location: None,
            },
            LocationRun {
                check: Arc::from("web"),
                location: Arc::from(location),
                expected: 3,
                every_location: false,
                min_failing_locations: 2,
                wait: WAIT,
            },
        )
    }

    fn offer(
        ticks: &mut Ticks,
        location: &str,
        second: u64,
        outcome: Outcome,
        now: Instant,
    ) -> Vec<RunRecord> {
        let (run, place) = run(location, second, outcome);
        let mut out = Vec::new();
        assert_eq!(ticks.offer(&run, &place, now, &mut out), Offered::Taken);
        out
    }

    #[test]
    fn a_tick_completes_when_every_location_answered_and_is_judged_across_them() {
        let now = Instant::now();
        let mut ticks = Ticks::default();
        assert!(offer(&mut ticks, "eu", 60, Outcome::Down, now).is_empty());
        assert!(offer(&mut ticks, "us", 60, Outcome::Up, now).is_empty());
        let done = offer(&mut ticks, "ap", 60, Outcome::Up, now);
        assert_eq!(done.len(), 1);
        let combined = &done[0];
        assert_eq!(&*combined.check, "web");
        // One of three down, two needed: up.
        assert_eq!(combined.outcome, Outcome::Up);
        assert_eq!(combined.scheduled_at, UNIX_EPOCH + Duration::from_secs(60));
        let mut names: Vec<&str> = combined
            .samples
            .iter()
            .map(|s| s.instance.as_str())
            .collect();
        names.sort_unstable();
        assert_eq!(
            names,
            ["ap/10.0.0.1:80", "eu/10.0.0.1:80", "us/10.0.0.1:80"]
        );
        assert_eq!(
            combined
                .samples
                .iter()
                .filter(|s| s.outcome == Outcome::Down)
                .count(),
            1
        );
        // Two of three down: down.
        offer(&mut ticks, "eu", 120, Outcome::Down, now);
        offer(&mut ticks, "us", 120, Outcome::Down, now);
        let done = offer(&mut ticks, "ap", 120, Outcome::Up, now);
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].outcome, Outcome::Down);
    }

    #[test]
    fn an_incomplete_tick_completes_with_what_it_has_when_a_newer_one_arrives_or_it_waited() {
        let now = Instant::now();
        let mut ticks = Ticks::default();
        offer(&mut ticks, "eu", 60, Outcome::Down, now);
        offer(&mut ticks, "us", 60, Outcome::Down, now);
        // The next tick's first location closes the previous one: two down of two arrived.
        let done = offer(&mut ticks, "eu", 120, Outcome::Up, now);
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].scheduled_at, UNIX_EPOCH + Duration::from_secs(60));
        assert_eq!(done[0].outcome, Outcome::Down);
        assert_eq!(done[0].samples.len(), 2);
        // A late location of the closed tick joins nothing.
        assert!(offer(&mut ticks, "ap", 60, Outcome::Down, now).is_empty());
        // Waiting: nothing before its time, then the tick as it is.
        let mut out = Vec::new();
        ticks.expire(now + WAIT - Duration::from_millis(1), &mut out);
        assert!(out.is_empty());
        assert_eq!(ticks.len(), 1);
        ticks.expire(now + WAIT, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].scheduled_at, UNIX_EPOCH + Duration::from_secs(120));
        assert_eq!(out[0].outcome, Outcome::Up);
        assert!(ticks.is_empty());
        // Shutdown completes what is open.
        offer(&mut ticks, "eu", 180, Outcome::Down, now);
        let mut out = Vec::new();
        ticks.drain(&mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].outcome, Outcome::Up, "one down of two needed");
        assert!(ticks.is_empty());
    }

    #[test]
    fn a_location_delivered_twice_counts_once() {
        let now = Instant::now();
        let mut ticks = Ticks::default();
        offer(&mut ticks, "eu", 60, Outcome::Down, now);
        // The copy neither completes the tick nor counts as a second location down.
        assert!(offer(&mut ticks, "eu", 60, Outcome::Down, now).is_empty());
        assert!(offer(&mut ticks, "us", 60, Outcome::Up, now).is_empty());
        let done = offer(&mut ticks, "ap", 60, Outcome::Up, now);
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].outcome, Outcome::Up);
        assert_eq!(done[0].samples.len(), 3);
        // A copy after completion opens nothing again.
        assert!(offer(&mut ticks, "us", 60, Outcome::Down, now).is_empty());
        let mut out = Vec::new();
        ticks.drain(&mut out);
        assert!(out.is_empty(), "{out:?}");
    }

    #[test]
    fn a_tick_of_no_runner_results_only_is_unmeasured() {
        let now = Instant::now();
        let mut ticks = Ticks::default();
        offer(&mut ticks, "eu", 60, Outcome::Unmeasured, now);
        offer(&mut ticks, "us", 60, Outcome::Unmeasured, now);
        let done = offer(&mut ticks, "ap", 60, Outcome::Unmeasured, now);
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].outcome, Outcome::Unmeasured);
        // One location measured: it alone judges (up, since two are needed for down).
        offer(&mut ticks, "eu", 120, Outcome::Unmeasured, now);
        offer(&mut ticks, "us", 120, Outcome::Unmeasured, now);
        let done = offer(&mut ticks, "ap", 120, Outcome::Down, now);
        assert_eq!(done[0].outcome, Outcome::Up);
    }

    #[test]
    fn with_every_location_a_location_that_left_is_not_waited_for() {
        let now = Instant::now();
        let mut ticks = Ticks::default();
        let every = |location: &str, outcome, expected| {
            let (run, mut place) = run(location, 60, outcome);
            place.every_location = true;
            place.expected = expected;
            place.min_failing_locations = 1;
            (run, place)
        };
        let mut out = Vec::new();
        // `us` lost its runner (the sink follows one location now): its no_runner result
        // arrives first and completes nothing.
        let (gone, place) = every("us", Outcome::Unmeasured, 1);
        ticks.offer(&gone, &place, now, &mut out);
        assert!(out.is_empty());
        let (eu, place) = every("eu", Outcome::Down, 1);
        ticks.offer(&eu, &place, now, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].outcome, Outcome::Down);
        assert_eq!(out[0].samples.len(), 2);
    }

    /// One open tick per check; past the bound a new check is refused (counted by the
    /// writer), until a tick that waited its time makes room.
    #[test]
    fn the_ticks_gathered_are_bounded() {
        let now = Instant::now();
        let mut ticks = Ticks::new(2);
        for (check, at) in [("a", 60), ("a", 120), ("b", 60)] {
            let (run, mut place) = run("eu", at, Outcome::Up);
            place.check = Arc::from(check);
            assert_eq!(
                ticks.offer(&run, &place, now, &mut Vec::new()),
                Offered::Taken
            );
        }
        assert_eq!(ticks.len(), 2);
        let (run, mut place) = run("eu", 60, Outcome::Up);
        place.check = Arc::from("c");
        let mut out = Vec::new();
        assert_eq!(ticks.offer(&run, &place, now, &mut out), Offered::Full);
        assert!(out.is_empty());
        assert_eq!(ticks.len(), 2);
        // Once the others waited their time, they complete and make room.
        assert_eq!(
            ticks.offer(&run, &place, now + WAIT, &mut out),
            Offered::Taken
        );
        assert_eq!(out.len(), 2);
        assert_eq!(ticks.len(), 1);
    }
}
