//! The checker: one scheduler task for all checks, driven by a single timer over a heap of due
//! times (no task or timer per check). Each check runs first at a stable offset inside its
//! interval, derived from a hash of its name, so load spreads and the phase survives restarts;
//! then every interval, without drift. A tick whose previous run is still in flight is skipped
//! and counted, never queued. The checker never blocks on the bus: a refused publish is counted.
//! On a config reload it keeps each unchanged check's due time and run in flight, starts new
//! and changed checks at their phase, and drops removed ones.
//!
//! A check with `locations` is run at each tick in every location it names (or, with `["*"]`,
//! in every location with a live runner), on that location's subject: each location has its
//! own run in flight, skips and losses, so a slow location never holds up another. The
//! checker follows the runners' heartbeats (`src/locations.rs`); a location with no live runner
//! gets no request but a `no_runner` result of its own, published as a runner would.

mod metrics;

pub use metrics::ScheduleMetrics;
use metrics::{PlaceTally, ScheduleCounts};

use crate::bus::{Bus, BusError, BusMetrics, Subscription};

use crate::checks::CheckType;
use crate::config::CheckConfig;
use crate::discovery::changes::DirectoryChanges;
use crate::locations::{Heard, LiveLocations};
use crate::messages::{
    CheckRequest, CheckResult, Heartbeat, Payload, Response, Timings, MESSAGE_VERSION,
};
use crate::metrics::Metrics;
use crate::model::{ErrorKind, ProbeError};
use crate::subjects::Subjects;
use prometheus_client::metrics::counter::Counter;
use serde::Deserialize;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// FNV-1a: stable across builds and platforms, unlike std's hasher.
fn stable_hash(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The check's offset inside its interval.
pub fn phase_offset(name: &str, interval: Duration) -> Duration {
    let interval_nanos = interval.as_nanos().max(1);
    let offset = u128::from(stable_hash(name)) % interval_nanos;
    Duration::from_nanos(u64::try_from(offset).unwrap_or(u64::MAX))
}

/// How long after `wall_now` the check is first due: the next wall-clock instant whose
/// position inside the interval equals the check's offset.
pub fn first_wait(name: &str, interval: Duration, wall_now: SystemTime) -> Duration {
    // Capped as validation caps it, so `now + first_wait(..)` cannot overflow.
    let interval = crate::config::bounds::CHECK_INTERVAL.cap_duration(interval);
    let interval_nanos = interval.as_nanos().max(1);
    let offset = phase_offset(name, interval).as_nanos();
    let since_epoch = wall_now
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let position = since_epoch % interval_nanos;
    let wait = (offset + interval_nanos - position) % interval_nanos;
    Duration::from_nanos(u64::try_from(wait).unwrap_or(u64::MAX))
}

/// Only what the checker needs from a result: which run it closes, and where it ran.
#[derive(Deserialize)]
struct DecodedHeader {
    check: String,
    run_id: u64,
    #[serde(default)]
    location: Option<String>,
}

/// A result's header: borrowed from the typed result in process (no copy per result), else
/// decoded as the sink decodes it.
enum ResultHeader<'a> {
    Typed(&'a crate::messages::CheckResult),
    Decoded(DecodedHeader),
}

impl ResultHeader<'_> {
    /// The header of a result: read from the typed result in process, else decoded as the
    /// sink decodes it (size, then version, then shape); None for a result the sink refuses.
    fn of(payload: &Payload) -> Option<ResultHeader<'_>> {
        match payload {
            Payload::Result(result) => Some(ResultHeader::Typed(result)),
            _ => payload
                .decode::<DecodedHeader>()
                .ok()
                .map(ResultHeader::Decoded),
        }
    }

    fn check(&self) -> &str {
        match self {
            ResultHeader::Typed(result) => &result.check,
            ResultHeader::Decoded(header) => &header.check,
        }
    }

    fn run_id(&self) -> u64 {
        match self {
            ResultHeader::Typed(result) => result.run_id,
            ResultHeader::Decoded(header) => header.run_id,
        }
    }

    fn location(&self) -> Option<&str> {
        match self {
            ResultHeader::Typed(result) => result.location.as_deref(),
            ResultHeader::Decoded(header) => header.location.as_deref(),
        }
    }
}

/// How near the next tick must be for results to wait for it rather than wake the checker
/// each: a subscription holds 4,096 messages, so results up to 400,000 a second fit.
const RESULTS_WAIT: Duration = Duration::from_millis(10);

/// Results taken in at one wake-up at most: as many as a subscription holds.
const RESULTS_TAKEN_AT_ONCE: usize = 4096;

/// The target a `no_runner` result names: nothing was resolved or probed.
pub const NO_RUNNER_TARGET: &str = "(no runner)";

/// Where one check's runs go: to any runner (a check without `locations`), or to the runners
/// of one location.
struct Place {
    location: Option<Arc<str>>,
    /// Shared by every place with the same subject (`CheckSubjects`): cloned per run, never
    /// copied.
    subject: Arc<str>,
    /// The run waiting for its result, and when the checker stops waiting.
    in_flight: Option<(u64, Instant)>,
    /// This place's `bastion_schedule_skipped_total` and `bastion_runs_lost_total`, with its
    /// `location` label when it has one.
    tally: PlaceTally,
}

impl Place {
    fn new(
        location: Option<&str>,
        check: &CheckConfig,
        subjects: &mut CheckSubjects,
        counts: &Arc<ScheduleCounts>,
    ) -> Place {
        Place {
            location: location.map(Arc::from),
            subject: subjects.of(location, check.check_type()),
            in_flight: None,
            tally: ScheduleMetrics::place_tally(counts, location),
        }
    }
}

/// The subjects runs are published on, each made once and shared by every place with it.
struct CheckSubjects {
    subjects: Subjects,
    made: HashMap<(Option<String>, CheckType), Arc<str>>,
}

impl CheckSubjects {
    fn new(subjects: Subjects) -> CheckSubjects {
        CheckSubjects {
            subjects,
            made: HashMap::new(),
        }
    }

    /// The subject of `check_type`'s runs, for any runner or for one location's.
    fn of(&mut self, location: Option<&str>, check_type: CheckType) -> Arc<str> {
        let key = (location.map(str::to_string), check_type);
        if let Some(subject) = self.made.get(&key) {
            return Arc::clone(subject);
        }
        let subject: Arc<str> = Arc::from(match location {
            Some(location) => self.subjects.checks_at(location, check_type),
            None => self.subjects.checks(check_type),
        });
        self.made.insert(key, Arc::clone(&subject));
        subject
    }

    /// Drops the subjects no place holds any more (checks a reload removed, locations that
    /// left a `["*"]` check): the cache holds what is in use, not every subject ever made.
    fn forget_unused(&mut self) {
        self.made
            .retain(|_, subject| Arc::strong_count(subject) > 1);
    }
}

/// A run in flight when the lease was lost.
struct InFlight {
    check: String,
    location: Option<Arc<str>>,
    run_id: u64,
    expires: Instant,
}

struct Scheduled {
    /// The definition, shared with the config's list and every request (never a copy).
    config: Arc<CheckConfig>,
    /// One place without `locations`; one per location with them (with `["*"]`, one per
    /// location that had a live runner at the last tick).
    places: Vec<Place>,
    /// Locations told to have no live runner (logged once each), at most `MAX_LOCATIONS`.
    no_runner_seen: std::collections::BTreeSet<String>,
    /// How long after it was due a run can be in flight at most (`run_window::lost_after`).
    horizon: Duration,
    /// Runs published, and each place's skipped and lost (its places hold theirs).
    counts: Arc<ScheduleCounts>,
    /// With `instances_from = { file }`: the target groups its watcher read last.
    discovered: Option<watch::Receiver<crate::discovery::TargetSet>>,
}

/// What the checker knows of where it runs.
#[derive(Debug, Clone)]
pub struct Whereabouts {
    /// This agent's id.
    pub agent: String,
    /// How often agents send heartbeats (`agent.heartbeat_interval`), unless theirs say.
    pub heartbeat_interval: Duration,
    /// The location of the runner in this very process (role `all`): always live.
    pub local_location: Option<String>,
}

pub struct Checker {
    checks: Vec<Scheduled>,
    by_name: HashMap<String, usize>,
    dispatch_deadline: Duration,
    subjects: Subjects,
    check_subjects: CheckSubjects,
    /// New check lists from config reloads.
    updates: Option<watch::Receiver<crate::config::CheckList>>,
    bus: Arc<dyn Bus>,
    results: Subscription,
    /// Every agent's heartbeats: which locations have live runners.
    heartbeats: Subscription,
    live: LiveLocations,
    /// This agent's id: the agent of its `no_runner` results.
    agent: String,
    metrics: ScheduleMetrics,
    publish_errors: Counter,
    next_run_id: u64,
    /// Where discovery watchers run (the runtime the checker was built on, not the checker's
    /// own thread) and the change notices they share.
    discovery: DirectoryChanges,
}

impl std::fmt::Debug for Checker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checker")
            .field("checks", &self.checks.len())
            .finish_non_exhaustive()
    }
}

impl Checker {
    /// Subscribes to results now, so that no result of a run it publishes is missed, and to
    /// heartbeats, to learn where runners are.
    pub async fn build(
        checks: &[Arc<CheckConfig>],
        dispatch_deadline: Duration,
        bus: Arc<dyn Bus>,
        subjects: &Subjects,
        metrics: &Metrics,
        whereabouts: Whereabouts,
    ) -> Result<Checker, BusError> {
        let bus_metrics: BusMetrics = metrics.component();
        let metrics: ScheduleMetrics = metrics.component();
        let results = bus.subscribe(&subjects.all_results(), None).await?;
        let heartbeats = bus.subscribe(&subjects.all_heartbeats(), None).await?;
        let discovery = DirectoryChanges::new(tokio::runtime::Handle::current());
        let mut check_subjects = CheckSubjects::new(subjects.clone());
        let scheduled: Vec<Scheduled> = checks
            .iter()
            .map(|check| {
                Scheduled::new(
                    check,
                    dispatch_deadline,
                    &mut check_subjects,
                    &metrics,
                    &discovery,
                )
            })
            .collect();
        let by_name = index_by_name(&scheduled);
        // Run ids start from the clock so that a restarted checker does not reuse recent ones.
        let next_run_id = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(1, |since| u64::try_from(since.as_micros()).unwrap_or(1));
        let publish_errors = bus_metrics.publish_errors("checks");
        Ok(Checker {
            checks: scheduled,
            by_name,
            dispatch_deadline,
            subjects: subjects.clone(),
            check_subjects,
            updates: None,
            bus,
            results,
            heartbeats,
            live: LiveLocations::new(
                whereabouts.heartbeat_interval,
                whereabouts.local_location,
                Instant::now(),
            ),
            agent: whereabouts.agent,
            publish_errors,
            metrics,
            next_run_id,
            discovery,
        })
    }

    /// Follows the check lists sent on `updates` (config reloads).
    pub fn follow(mut self, updates: watch::Receiver<crate::config::CheckList>) -> Checker {
        self.updates = Some(updates);
        self
    }

    /// Replaces the checks with `configs`. Unchanged checks keep their state and, in `due`,
    /// their next due time; new and changed ones are due at their phase from now.
    fn apply(
        &mut self,
        configs: &[Arc<CheckConfig>],
        due: Option<&mut BinaryHeap<Reverse<(Instant, usize)>>>,
    ) {
        // By the old position, found through `by_name`: a reload of a million checks builds
        // no map of a million copied names here.
        let mut due_at: Vec<Option<Instant>> = vec![None; self.checks.len()];
        if let Some(due) = &due {
            for Reverse((at, index)) in due.iter() {
                if let Some(slot) = due_at.get_mut(*index) {
                    *slot = Some(*at);
                }
            }
        }
        let mut old: Vec<Option<Scheduled>> = self.checks.drain(..).map(Some).collect();
        let now = Instant::now();
        let wall = SystemTime::now();
        let mut next = Vec::with_capacity(configs.len());
        let mut heap = BinaryHeap::with_capacity(configs.len());
        for config in configs {
            let before = self
                .by_name
                .get(&config.name)
                .and_then(|index| Some((*index, old.get_mut(*index)?.take()?)));
            let (scheduled, at) = match before {
                Some((index, mut scheduled)) if *scheduled.config == **config => {
                    // The same definition: hold the new list's, so the old list can go.
                    scheduled.config = Arc::clone(config);
                    (scheduled, due_at.get(index).copied().flatten())
                }
                before => {
                    // A changed check starts over: its counters too.
                    let seen = before.as_ref().map(|(_, before)| &before.no_runner_seen);
                    self.metrics
                        .forget(&config.name, seen.into_iter().flatten().map(String::as_str));
                    let scheduled = Scheduled::new(
                        config,
                        self.dispatch_deadline,
                        &mut self.check_subjects,
                        &self.metrics,
                        &self.discovery,
                    );
                    (scheduled, None)
                }
            };
            let at = at.unwrap_or_else(|| now + first_wait(&config.name, config.interval, wall));
            heap.push(Reverse((at, next.len())));
            next.push(scheduled);
        }
        let old: Vec<Scheduled> = old.into_iter().flatten().collect();
        for scheduled in &old {
            self.metrics.forget(
                &scheduled.config.name,
                scheduled.no_runner_seen.iter().map(String::as_str),
            );
        }
        tracing::info!(
            checks = next.len(),
            removed = old.len(),
            "checker applied a new check list"
        );
        drop(old);
        self.checks = next;
        self.check_subjects.forget_unused();
        self.by_name = index_by_name(&self.checks);
        if let Some(due) = due {
            *due = heap;
        }
    }

    /// Schedules until `stop` is cancelled.
    pub async fn run(self, stop: CancellationToken) {
        self.run_while_leading(stop, None).await;
    }

    /// Schedules only while `leadership` says this checker leads (always, when None), until
    /// `stop` is cancelled. On taking over, each check's phase comes from the wall clock, so
    /// a new leader keeps the schedule of the old one.
    pub async fn run_while_leading(
        mut self,
        stop: CancellationToken,
        mut leadership: Option<crate::lease::Leadership>,
    ) {
        // Runs this checker sent while it led and that were still in flight when it lost the
        // lease: each still ends as a result or a counted loss.
        let mut last_term: Vec<InFlight> = Vec::new();
        loop {
            if let Some(leadership) = leadership.as_mut() {
                tracing::info!("checker standing by for the lease");
                let mut judge_at = last_term.iter().map(|run| run.expires).max();
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        leading = leadership.wait_for(|leading| *leading) => match leading {
                            Ok(_) => break,
                            Err(_) => return,
                        },
                        Some(configs) = next_update(self.updates.as_mut()) => self.apply(&configs, None),
                        // Results keep arriving from the leader's runs; a standby reads them
                        // so its subscription never backs up, and closes its own last runs.
                        message = self.results.next() => match message {
                            Some(message) => {
                                self.learn_from_result(&message.payload);
                                self.close_run(&message.payload);
                            }
                            None => return,
                        },
                        _ = sleep_until_or_forever(judge_at) => {
                            self.judge_last_term(&mut last_term);
                            judge_at = None;
                        }
                        // It follows the runners all the same, to know them when it leads.
                        message = self.heartbeats.next() => match message {
                            Some(message) => self.heard(&message.payload),
                            None => return,
                        },
                    }
                }
            }
            if !self.schedule(&stop, leadership.as_mut()).await {
                break;
            }
            // Leadership lost. What is in flight stays so (a result closes it, standing by as
            // when leading) and is judged once its window has passed: a run whose request
            // died with a NATS server is counted lost, never forgotten.
            last_term = self.in_flight_runs();
        }
        tracing::info!("checker stopped");
    }

    /// Schedules until stopped (returns false) or until leadership is lost (returns true).
    async fn schedule(
        &mut self,
        stop: &CancellationToken,
        mut leadership: Option<&mut crate::lease::Leadership>,
    ) -> bool {
        let start = Instant::now();
        let wall_start = SystemTime::now();
        let mut due: BinaryHeap<Reverse<(Instant, usize)>> = self
            .checks
            .iter()
            .enumerate()
            .map(|(index, check)| {
                let wait = first_wait(&check.config.name, check.config.interval, wall_start);
                Reverse((start + wait, index))
            })
            .collect();
        tracing::info!(checks = self.checks.len(), "checker scheduling");
        loop {
            let next = due.peek().map(|Reverse((at, _))| *at);
            // A receiver parked on the results' channel is woken by every result: a thread
            // wake-up per probe. While a tick is near, the results wait for it instead (taken
            // in before any tick fires, so a run's result always closes it before its next
            // tick), and a quiet schedule is woken by each result as it comes.
            let tick_near = next.is_some_and(|at| at <= Instant::now() + RESULTS_WAIT);
            tokio::select! {
                _ = stop.cancelled() => return false,
                _ = until_lost(leadership.as_deref_mut()) => return true,
                Some(configs) = next_update(self.updates.as_mut()) => self.apply(&configs, Some(&mut due)),
                _ = sleep_until_or_forever(next) => {
                    if !self.take_waiting_results() {
                        return false;
                    }
                    let now = Instant::now();
                    while let Some(&Reverse((at, index))) = due.peek() {
                        if at > now {
                            break;
                        }
                        due.pop();
                        let next_at = self.fire(index, at, now).await;
                        due.push(Reverse((next_at, index)));
                    }
                }
                message = self.results.next(), if !tick_near => match message {
                    Some(message) => self.close_run(&message.payload),
                    None => return false,
                },
                message = self.heartbeats.next() => match message {
                    Some(message) => self.heard(&message.payload),
                    None => return false,
                },
            }
        }
    }

    /// Closes the runs of the results waiting, at most a subscription's worth (so due ticks
    /// are not held up by a channel that keeps filling); false once the bus is gone.
    fn take_waiting_results(&mut self) -> bool {
        for _ in 0..RESULTS_TAKEN_AT_ONCE {
            match self.results.try_next_or_closed() {
                Ok(Some(message)) => self.close_run(&message.payload),
                Ok(None) => return true,
                Err(_) => return false,
            }
        }
        true
    }

    /// Takes one heartbeat into the live locations.
    fn heard(&mut self, payload: &Payload) {
        let heartbeat: Heartbeat = match payload.decode() {
            Ok(heartbeat) => heartbeat,
            Err(error) => {
                tracing::debug!(reason = error.reason(), %error, "dropping a bad heartbeat");
                return;
            }
        };
        if self.live.heard(&heartbeat, Instant::now()) == Heard::Refused {
            tracing::warn!(agent = %heartbeat.agent, followed = crate::locations::MAX_AGENTS, "too many runners to follow; this one's location is not counted as live until others go quiet");
        }
    }

    /// Publishes one run of check `index`, due at `at`, to each of its places; returns when
    /// the check is next due.
    async fn fire(&mut self, index: usize, at: Instant, now: Instant) -> Instant {
        let lag = now.saturating_duration_since(at);
        self.metrics.observe_lag(lag.as_secs_f64());
        let run_id = self.next_run_id;
        self.next_run_id += 1;
        let scheduled_at = SystemTime::now()
            .checked_sub(lag)
            .unwrap_or_else(SystemTime::now);
        let left = self.follow_every_location(index, now);
        let check = &mut self.checks[index];
        let interval = crate::config::bounds::CHECK_INTERVAL.cap_duration(check.config.interval);
        // Ticks missed entirely (the process was stopped, the machine slept) are skipped, not
        // fired in a burst.
        let mut next_at = at + interval;
        while next_at <= now {
            for place in &check.places {
                place.tally.counts().count_skipped();
            }
            next_at += interval;
        }
        let mut requests = Vec::with_capacity(check.places.len());
        let mut no_runner = left;
        for (place_index, place) in check.places.iter_mut().enumerate() {
            if let Some((_, expires)) = place.in_flight {
                if expires > now {
                    place.tally.counts().count_skipped();
                    tracing::debug!(check = %check.config.name, location = place.location.as_deref(), "previous run still in flight; tick skipped");
                    continue;
                }
                place.tally.counts().count_lost();
                tracing::warn!(check = %check.config.name, location = place.location.as_deref(), "a run's result never arrived");
                place.in_flight = None;
            }
            if let Some(location) = &place.location {
                if !self.live.is_live(location, now) {
                    no_runner.push(Arc::clone(location));
                    continue;
                }
            }
            let request = CheckRequest {
                version: MESSAGE_VERSION,
                run_id,
                location: place.location.as_deref().map(str::to_string),
                scheduled_at,
                dispatch_deadline: Some(self.dispatch_deadline),
                // Shared, not copied: on the embedded bus the runner reads this very
                // definition.
                check: Arc::clone(&check.config),
                // The set the watcher handed over last: a clone of an Arc, never a wait.
                discovered: check
                    .discovered
                    .as_ref()
                    .map(|set| Arc::clone(&set.borrow())),
            };
            requests.push((place_index, Arc::clone(&place.subject), request));
        }
        for (place_index, subject, request) in requests {
            let published = self
                .bus
                .publish(&subject, Payload::Request(Arc::new(request)))
                .await
                .map_err(|error| error.to_string());
            let check = &mut self.checks[index];
            match published {
                Ok(()) => {
                    check.counts.count_scheduled();
                    // The window runs from when the run was due, as `scheduled_at` says.
                    if let Some(place) = check.places.get_mut(place_index) {
                        place.in_flight = Some((run_id, at + check.horizon));
                    }
                }
                Err(error) => {
                    self.publish_errors.inc();
                    tracing::warn!(check = %check.config.name, %error, "could not publish a check request");
                }
            }
        }
        for location in no_runner {
            self.publish_no_runner(index, run_id, scheduled_at, &location)
                .await;
        }
        next_at
    }

    /// For a check with `locations = ["*"]`: a place for each location with a live runner
    /// now. Returns the locations that had a place and lost their last runner since, each to
    /// get one `no_runner` result, so the check stops counting what they saw last.
    fn follow_every_location(&mut self, index: usize, now: Instant) -> Vec<Arc<str>> {
        let Some(check) = self.checks.get_mut(index) else {
            return Vec::new();
        };
        if !check.config.every_location() {
            return Vec::new();
        }
        let live = self.live.live(now);
        let mut left = Vec::new();
        let locations = &self.live;
        // A place stays while its location is live, or presumed so (a checker that just
        // started has not heard every runner yet, and a place may come from the saved state).
        check.places.retain(|place| match &place.location {
            Some(location) if !locations.is_live(location, now) => {
                left.push(Arc::clone(location));
                false
            }
            _ => true,
        });
        if !left.is_empty() {
            self.check_subjects.forget_unused();
        }
        // At most `MAX_LOCATIONS`, as a check may name (the sink follows no more): the
        // locations followed already keep their places, and new ones join in name order while
        // there is room. The others are left out (policy `location_cap`), told once a tick.
        let known: std::collections::HashSet<Arc<str>> = check
            .places
            .iter()
            .filter_map(|place| place.location.clone())
            .collect();
        let mut left_out = 0usize;
        for location in live {
            if known.contains(location.as_str()) {
                continue;
            }
            if check.places.len() >= crate::config::bounds::MAX_LOCATIONS {
                left_out += 1;
                continue;
            }
            check.add_place(&location, &mut self.check_subjects);
        }
        if left_out > 0 {
            tracing::warn!(check = %check.config.name, left_out, followed = crate::config::bounds::MAX_LOCATIONS, "more live locations than a check follows; the others get no runs");
        }
        check
            .places
            .sort_by(|a, b| a.location.as_deref().cmp(&b.location.as_deref()));
        left
    }

    /// Publishes the result of a run that `location` could not take: one response, failing
    /// with `no_runner`, which measured nothing (it moves no state), as a runner would publish
    /// its result.
    async fn publish_no_runner(
        &mut self,
        index: usize,
        run_id: u64,
        scheduled_at: SystemTime,
        location: &str,
    ) {
        let check = &mut self.checks[index];
        let name = check.config.name.clone();
        if check.no_runner_seen.len() < crate::config::bounds::MAX_LOCATIONS
            || check.no_runner_seen.contains(location)
        {
            if check.no_runner_seen.insert(location.to_string()) {
                // Once per check and location (a typo in `locations` shows up here too);
                // then the counter and the results say it.
                tracing::warn!(check = %name, location, "no live runner in a location the check runs from; its runs there are reported as no_runner until one appears");
            }
            self.metrics.count_no_runner(&name, location);
        }
        tracing::debug!(check = %name, location, "no live runner in the location; run not made");
        let result = CheckResult {
            version: MESSAGE_VERSION,
            check: name.clone(),
            check_type: check.config.check_type(),
            agent: self.agent.clone(),
            location: Some(location.to_string()),
            run_id,
            scheduled_at,
            finished_at: SystemTime::now(),
            passing: false,
            responses: vec![Response {
                labels: check.config.labels.clone(),
                ..Response::failed(
                    NO_RUNNER_TARGET.to_string(),
                    ProbeError::new(
                        ErrorKind::NoRunner,
                        format!(
                            "no runner of location `{location}` was alive when the run was due: \
                             start one with runner.location = \"{location}\", or remove the \
                             location from the check"
                        ),
                    ),
                    Timings::default(),
                )
            }],
            degraded: None,
        };
        let payload = if self.bus.in_process() {
            Ok(Payload::Result(Arc::new(result)))
        } else {
            crate::messages::encode(&result).map(Payload::from)
        };
        let published = match payload {
            Ok(payload) => self
                .bus
                .publish(&self.subjects.results(&name), payload)
                .await
                .map_err(|error| error.to_string()),
            Err(error) => Err(error.to_string()),
        };
        if let Err(error) = published {
            self.publish_errors.inc();
            tracing::warn!(check = %name, location, %error, "could not publish a no_runner result");
        }
    }

    /// Gives each `["*"]` check a place for every location a saved state says it had (from
    /// the last run of the agent), so that a location gone meanwhile gets one `no_runner` at
    /// the first tick and leaves the check's judgement, as it would have without the restart.
    pub fn seed_locations(mut self, saved: &[crate::episode::SavedCheck]) -> Checker {
        for check in saved {
            for location in check.locations.keys() {
                self.learn_place(&check.check, location);
            }
        }
        self
    }

    /// A place for `location` in `check`, if it runs in every location and lacks one.
    fn learn_place(&mut self, check: &str, location: &str) {
        let Some(&index) = self.by_name.get(check) else {
            return;
        };
        let Some(scheduled) = self.checks.get_mut(index) else {
            return;
        };
        let known = scheduled
            .places
            .iter()
            .any(|place| place.location.as_deref() == Some(location));
        if !scheduled.config.every_location()
            || known
            || scheduled.places.len() >= crate::config::bounds::MAX_LOCATIONS
            || crate::config::location_name(location).is_err()
        {
            return;
        }
        scheduled.add_place(location, &mut self.check_subjects);
    }

    /// While standing by: the locations the leader's results come from become places of
    /// their `["*"]` checks, so on taking over a location gone meanwhile gets its
    /// `no_runner` rather than staying in the judgement for good.
    fn learn_from_result(&mut self, payload: &Payload) {
        let Some(header) = ResultHeader::of(payload) else {
            return;
        };
        if let Some(location) = header.location() {
            self.learn_place(header.check(), location);
        }
    }

    /// The runs in flight now (once per lost lease, not per probe).
    fn in_flight_runs(&self) -> Vec<InFlight> {
        self.checks
            .iter()
            .flat_map(|check| {
                check.places.iter().filter_map(|place| {
                    let (run_id, expires) = place.in_flight?;
                    Some(InFlight {
                        check: check.config.name.clone(),
                        location: place.location.clone(),
                        run_id,
                        expires,
                    })
                })
            })
            .collect()
    }

    /// Counts as lost the runs of `last_term` still in flight once their window has passed;
    /// a run that ended, or a check a reload removed, is left alone.
    fn judge_last_term(&mut self, last_term: &mut Vec<InFlight>) {
        let now = Instant::now();
        let mut lost = 0usize;
        for run in last_term.drain(..) {
            let Some(&index) = self.by_name.get(&run.check) else {
                continue;
            };
            let check = &mut self.checks[index];
            let Some(place) = check
                .places
                .iter_mut()
                .find(|place| place.location == run.location)
            else {
                continue;
            };
            if place
                .in_flight
                .is_some_and(|(run_id, expires)| run_id == run.run_id && expires <= now)
            {
                place.tally.counts().count_lost();
                lost += 1;
                place.in_flight = None;
            }
        }
        // One line for them all: after a lost lease they can be one per check.
        if lost > 0 {
            tracing::warn!(
                runs = lost,
                "results of runs sent before the lease was lost never arrived; counted lost"
            );
        }
    }

    fn close_run(&mut self, payload: &Payload) {
        // The same decoding the sink applies (size, then version, then shape), so a result
        // the sink refuses does not end the run here either: the checker and the sink agree on
        // which runs ended, and a refused one is counted lost. The sink counts why. A result
        // from this process is typed already.
        let Some(header) = ResultHeader::of(payload) else {
            return;
        };
        if let Some(&index) = self.by_name.get(header.check()) {
            let check = &mut self.checks[index];
            let place = check
                .places
                .iter_mut()
                .find(|place| place.location.as_deref() == header.location());
            if let Some(place) = place {
                if place
                    .in_flight
                    .is_some_and(|(run_id, _)| run_id == header.run_id())
                {
                    place.in_flight = None;
                }
            }
        }
    }
}

/// The next check list sent on `updates`; never, without updates or once their sender is gone.
async fn next_update(
    updates: Option<&mut watch::Receiver<crate::config::CheckList>>,
) -> Option<crate::config::CheckList> {
    if let Some(updates) = updates {
        if updates.changed().await.is_ok() {
            return Some(Arc::clone(&updates.borrow_and_update()));
        }
    }
    std::future::pending().await
}

fn index_by_name(checks: &[Scheduled]) -> HashMap<String, usize> {
    checks
        .iter()
        .enumerate()
        .map(|(index, check)| (check.config.name.clone(), index))
        .collect()
}

impl Scheduled {
    fn new(
        check: &Arc<CheckConfig>,
        dispatch_deadline: Duration,
        subjects: &mut CheckSubjects,
        metrics: &ScheduleMetrics,
        discovery: &DirectoryChanges,
    ) -> Scheduled {
        let discovered = match &check.instances_from {
            Some(crate::config::InstancesFrom::File(path)) => Some(crate::discovery::file::watch(
                discovery,
                &check.name,
                path.clone(),
                metrics.discovery_errors(&check.name),
            )),
            _ => None,
        };
        let mut scheduled = Scheduled {
            discovered,
            places: Vec::new(),
            no_runner_seen: std::collections::BTreeSet::new(),
            // Capped as validation caps them, so `at + horizon` cannot overflow.
            horizon: crate::run_window::lost_after(
                crate::config::bounds::DISPATCH_DEADLINE.cap_duration(dispatch_deadline),
                crate::config::bounds::CHECK_TIMEOUT.cap_duration(check.timeout()),
            ),
            counts: metrics.schedule_counts(&check.name, check.locations.is_some()),
            config: Arc::clone(check),
        };
        match check.locations.as_deref() {
            // Exactly one: a first `push` would reserve four (about 240 bytes a check unused).
            None => {
                scheduled.places = vec![Place::new(None, check, subjects, &scheduled.counts)];
            }
            // Filled at each tick from the live locations.
            Some(_) if check.every_location() => {}
            Some(locations) => {
                scheduled.places.reserve_exact(locations.len());
                for location in locations {
                    scheduled.add_place(location, subjects);
                }
            }
        }
        scheduled
    }

    /// A place for `location`, with its series.
    fn add_place(&mut self, location: &str, subjects: &mut CheckSubjects) {
        self.places.push(Place::new(
            Some(location),
            &self.config,
            subjects,
            &self.counts,
        ));
    }
}

/// Returns once `leadership` says this checker no longer leads; never without one.
async fn until_lost(leadership: Option<&mut crate::lease::Leadership>) {
    match leadership {
        Some(leadership) => {
            // A closed channel means the lease keeper is gone: stop scheduling too.
            let _ = leadership.wait_for(|leading| !*leading).await;
        }
        None => std::future::pending().await,
    }
}

async fn sleep_until_or_forever(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_are_stable_and_inside_the_interval() {
        let interval = Duration::from_secs(10);
        let offset = phase_offset("web", interval);
        assert!(offset < interval);
        assert_eq!(
            offset,
            phase_offset("web", interval),
            "same name, same offset"
        );
        assert_ne!(offset, phase_offset("api", interval), "names spread out");
        // The first run lands on the same wall-clock phase whenever the process starts.
        let epoch = SystemTime::UNIX_EPOCH;
        for start in [0u64, 3, 7_777, 1_700_000_123] {
            let wall = epoch + Duration::from_millis(start * 1000 + 123);
            let first = wall + first_wait("web", interval, wall);
            let position = first.duration_since(epoch).unwrap().as_nanos() % interval.as_nanos();
            assert_eq!(position, offset.as_nanos(), "start {start}");
            assert!(first_wait("web", interval, wall) < interval);
        }
    }
}
