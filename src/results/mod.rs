//! The result sink: consumes every `CheckResult` on the bus, keeps each check's latest result
//! and state in the `ResultStore` (which the API and the `probe_*` series of `/metrics` are
//! derived from at each request), and moves each check through its state machine
//! (`state.rs`), publishing an event on `<prefix>.events.<check>` for every transition. It
//! follows the configured checks: a result for a check that is not configured (removed by a
//! reload, or sent by a stranger) is dropped, and a removed or changed check's series, state
//! and result are forgotten. Since the series come from the latest result, an instance that
//! disappears from a check's results (its address left DNS, say) disappears from `/metrics`
//! with it, never shown as if it were still probed.

pub mod exposition;
mod metrics;

pub use metrics::SinkMetrics;

use crate::bus::{Bus, BusMetrics, Message, Subscription};

use crate::checks::response::{cut, TextBounds};
use crate::config::{CheckConfig, NotifyOn};
use crate::episode::{EpisodeEvent, RunTimes, SavedCheck, SavedLocation, Track};
use crate::history::{IncidentOp, Recorder, TransitionRecord};
use crate::lease::Leadership;
use crate::locations::{across_locations, LocationCounts};
use crate::messages::{self, CheckResult, Payload, StateEvent, MESSAGE_VERSION};
use crate::metrics::Metrics;
use crate::model::{CheckState, EndReason};
use crate::notify::Notifications;
use crate::runner::CheckDurations;
use crate::saved_state::SavedState;
use crate::state::{StatePolicy, StateTracker, Transition};
use crate::subjects::Subjects;
use serde_json::value::RawValue;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::SystemTime;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Bytes of each response body kept with a check's latest result. Runners publish the first
/// `message_bounds::BUS_BODY_BYTES` of each body; the store cuts again so that a result from a
/// runner of another build cannot make many checks with large pages fill memory.
pub const STORED_BODY_BYTES: usize = crate::message_bounds::BUS_BODY_BYTES;
/// What a kept result's type section holds at most: a body of `STORED_BODY_BYTES`, and texts
/// and lists as the bus bounds them.
const STORED_SECTION_BOUNDS: TextBounds = TextBounds {
    body_bytes: STORED_BODY_BYTES,
    ..crate::message_bounds::BUS_BOUNDS
};

/// The configured checks, as the current config says; reloads replace it.
pub type ChecksWatch = watch::Receiver<crate::config::CheckList>;

/// What the API shows of one check.
#[derive(Debug, Clone)]
pub struct CheckStatus {
    pub latest: Option<Arc<CheckResult>>,
    pub state: CheckState,
    pub since: SystemTime,
    /// Which update of the store this is (set by the store): it changes whenever anything
    /// above does, so a list of them tells whether an answer changed without encoding it.
    pub version: u64,
    /// `latest` as JSON, encoded by the first request that shows it and shared by every later
    /// one: a poll of every check copies bytes instead of encoding every result again.
    encoded: Arc<OnceLock<Option<Box<RawValue>>>>,
    /// For a check with `locations`: each location's own state and latest result, by name.
    /// `state` is then the judgement across them, and `latest` the last result of any.
    pub locations: Option<Arc<BTreeMap<String, LocationStatus>>>,
}

impl CheckStatus {
    pub fn new(latest: Option<Arc<CheckResult>>, state: CheckState, since: SystemTime) -> Self {
        CheckStatus {
            latest,
            state,
            since,
            version: 0,
            encoded: Arc::default(),
            locations: None,
        }
    }

    /// The latest result as JSON (None before the first result).
    pub fn latest_json(&self) -> Option<&RawValue> {
        encoded_once(&self.encoded, self.latest.as_deref())
    }
}

/// One location of a check with `locations`: its own state over its instances, and its
/// latest result.
#[derive(Debug, Clone)]
pub struct LocationStatus {
    pub latest: Option<Arc<CheckResult>>,
    pub state: CheckState,
    pub since: SystemTime,
    encoded: Arc<OnceLock<Option<Box<RawValue>>>>,
}

impl LocationStatus {
    fn new(latest: Option<Arc<CheckResult>>, state: CheckState, since: SystemTime) -> Self {
        LocationStatus {
            latest,
            state,
            since,
            encoded: Arc::default(),
        }
    }

    /// The location's latest result as JSON (None before its first result).
    pub fn latest_json(&self) -> Option<&RawValue> {
        encoded_once(&self.encoded, self.latest.as_deref())
    }
}

/// `latest` as JSON, encoded by the first caller and kept in `cell` for every later one.
fn encoded_once<'a>(
    cell: &'a OnceLock<Option<Box<RawValue>>>,
    latest: Option<&CheckResult>,
) -> Option<&'a RawValue> {
    cell.get_or_init(|| {
        // A result is plain data: encoding it cannot fail short of running out of memory; if
        // it ever did, the check shows no latest result rather than none.
        serde_json::value::to_raw_value(latest?).ok()
    })
    .as_deref()
}

/// The latest result and state of each check.
#[derive(Debug, Default)]
pub struct ResultStore {
    checks: RwLock<HashMap<String, CheckStatus>>,
    /// The version the next update gets.
    next_version: AtomicU64,
}

impl ResultStore {
    pub fn latest(&self, check: &str) -> Option<Arc<CheckResult>> {
        self.read()
            .get(check)
            .and_then(|status| status.latest.clone())
    }

    pub fn status(&self, check: &str) -> Option<CheckStatus> {
        self.read().get(check).cloned()
    }

    /// Every check's status, sorted by name (results are shared, not copied).
    pub fn snapshot(&self) -> Vec<(String, CheckStatus)> {
        let mut all: Vec<(String, CheckStatus)> = self
            .read()
            .iter()
            .map(|(name, status)| (name.clone(), status.clone()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    fn update(&self, check: &str, mut status: CheckStatus) {
        status.version = self.next_version.fetch_add(1, Ordering::Relaxed) + 1;
        let replaced = {
            let mut checks = self.write();
            match checks.get_mut(check) {
                // A check's every result after its first: no key to copy.
                Some(slot) => Some(std::mem::replace(slot, status)),
                None => checks.insert(check.to_string(), status),
            }
        };
        // The replaced status is dropped after the lock is released: when it held the last
        // reference to its result (responses, headers, body), freeing it never holds up the
        // store's readers.
        drop(replaced);
    }

    fn remove(&self, check: &str) {
        // Freed after the lock, as `update` frees what it replaced.
        let removed = self.write().remove(check);
        drop(removed);
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, CheckStatus>> {
        // Writers replace whole entries; a poisoned map is still consistent.
        self.checks
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, CheckStatus>> {
        self.checks
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The result as the store keeps it. A result from this process was bounded by its runner, as
/// the bus bounds them, and is kept as it came (shared with nobody else once the checker has
/// read it). One decoded from bytes is trimmed: decoding grows vectors by doubling, and what
/// is kept for every check should not carry the slack.
fn to_keep(result: Arc<CheckResult>, payload: &Payload) -> Arc<CheckResult> {
    match Arc::try_unwrap(result) {
        Ok(mut owned) if matches!(payload, Payload::Bytes(_)) => {
            trim(&mut owned);
            Arc::new(owned)
        }
        Ok(owned) => Arc::new(owned),
        Err(shared) => shared,
    }
}

/// Cuts what a decoded result keeps to what the API holds: the vectors' slack, bodies past
/// `STORED_BODY_BYTES` (each type's section as the bus bounds it), and per-location counts no runner makes.
fn trim(result: &mut CheckResult) {
    // Per-location counts belong to the sink's combined view: a peer's are not taken.
    if let Some(degraded) = result.degraded.as_mut() {
        degraded.locations = Vec::new();
    }
    result.responses.shrink_to_fit();
    for response in &mut result.responses {
        response.assertions.shrink_to_fit();
        if let Some(http) = response.http.as_mut() {
            cut(&mut http.body, STORED_BODY_BYTES);
        }
        response.sections.bound(&STORED_SECTION_BOUNDS);
    }
}

/// Where transition events go. With HA checkers only the leader publishes them, so each
/// transition is announced once; standbys track state all the same.
#[derive(Debug)]
pub struct EventOutlet {
    pub bus: Arc<dyn Bus>,
    pub subjects: Subjects,
    pub leadership: Option<Leadership>,
}

/// What the sink works with.
#[derive(Debug)]
pub struct SinkContext {
    pub store: Arc<ResultStore>,
    pub metrics: Arc<Metrics>,
    pub checks: ChecksWatch,
    pub events: Option<EventOutlet>,
    /// Where failures and recoveries are told, when notifiers are configured.
    pub notifications: Option<Arc<Notifications>>,
    /// Where runs and state changes go to be kept (only while leading, with HA).
    pub history: Option<Recorder>,
    /// Where troubled checks' states and episodes are kept across restarts.
    pub saved: Arc<SavedState>,
    /// What the last run saved of them (the `checks` section).
    pub resumed: Vec<SavedCheck>,
}

/// The section of the saved state that holds checks' states and episodes.
pub const SAVED_CHECKS: &str = "checks";

/// Consumes results from `subscription` until `stop` is cancelled; results already delivered
/// by then are still recorded, so the last runs of a shutdown are not lost. What the last run
/// saved is taken back before this returns the future, so the store (the API, `/metrics`)
/// shows resumed states from the moment the agent reports itself started, never a failing
/// check as `OK` in between.
pub fn consume(
    mut subscription: Subscription,
    context: SinkContext,
    stop: CancellationToken,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let SinkContext {
        store,
        metrics,
        mut checks,
        events,
        notifications,
        history,
        saved,
        resumed,
    } = context;
    let leadership = events.as_ref().and_then(|outlet| outlet.leadership.clone());
    // /metrics derives probe_* and bastion_check_state from the store at each scrape.
    metrics.attach_exposition(Arc::new(exposition::ProbeSeries::new(
        Arc::clone(&store),
        checks.clone(),
    )));
    let mut sink = Sink {
        store,
        metrics: SinkSeries {
            sink: metrics.component(),
            bus: metrics.component(),
            durations: metrics.component(),
        },
        events,
        notifications,
        history,
        saved,
        known: Arc::new(Vec::new()),
        followed: HashMap::new(),
        leading: false,
    };
    let current = Arc::clone(&checks.borrow_and_update());
    // Leading or not from the start, so that episodes the start ends reach history first;
    // then history learns which are open.
    sink.leading = sink.leads();
    sink.resume(&current, resumed);
    sink.apply_checks(&current);
    if sink.leading {
        sink.reconcile();
    }
    async move {
        sink.run(&mut subscription, &mut checks, leadership, &stop)
            .await
    }
}

impl Sink {
    async fn run(
        &mut self,
        subscription: &mut Subscription,
        checks: &mut ChecksWatch,
        mut leadership: Option<watch::Receiver<bool>>,
        stop: &CancellationToken,
    ) {
        let sink = self;
        // Without a config owner (it went away) the checks stay as they are.
        let mut watching = true;
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                changed = checks.changed(), if watching => {
                    if changed.is_err() {
                        watching = false;
                        continue;
                    }
                    let current = Arc::clone(&checks.borrow_and_update());
                    sink.apply_checks(&current);
                }
                changed = async {
                    match leadership.as_mut() {
                        Some(watch) => watch.changed().await,
                        None => std::future::pending().await,
                    }
                } => {
                    if changed.is_err() {
                        leadership = None;
                    }
                    sink.follow_leadership();
                }
                message = subscription.next() => match message {
                    Some(message) => sink.handle(&message).await,
                    None => return,
                },
            }
        }
        while let Some(message) = subscription.try_next() {
            sink.handle(&message).await;
        }
    }
}

/// A configured check as the sink follows it: its state and its failure episode.
#[derive(Debug)]
struct Followed {
    /// Where the check's definition is in the configured list (`Sink::known`): the sink's one
    /// index by name is `Sink::followed`.
    index: usize,
    tracker: StateTracker,
    track: Track,
    /// For a check with `locations` only, so every other check pays one pointer for it.
    located: Option<Box<Located>>,
}

/// What the sink follows of a check with `locations`.
#[derive(Debug, Default)]
struct Located {
    /// Each location's own state and latest result.
    locations: BTreeMap<String, Place>,
    /// For a check with `locations = ["*"]`: the locations that left its judgement (a
    /// `no_runner` result), each with when that run was due. A result of an earlier run (one
    /// a leaving runner drained, arriving after the `no_runner`) says nothing about now and
    /// must not bring the location back, where no later `no_runner` would remove it again.
    /// At most `MAX_LOCATIONS`: past it, the one that left longest ago is forgotten.
    left: BTreeMap<String, SystemTime>,
}

/// The locations of a check without any.
static NO_LOCATIONS: BTreeMap<String, Place> = BTreeMap::new();

impl Followed {
    fn new(index: usize, tracker: StateTracker, track: Track) -> Followed {
        Followed {
            index,
            tracker,
            track,
            located: None,
        }
    }

    /// Each location's state and latest result (none for a check without `locations`).
    fn locations(&self) -> &BTreeMap<String, Place> {
        self.located
            .as_ref()
            .map_or(&NO_LOCATIONS, |located| &located.locations)
    }

    /// When the run that made `location` leave the judgement was due, if it left.
    fn left_at(&self, location: &str) -> Option<SystemTime> {
        self.located.as_ref()?.left.get(location).copied()
    }

    /// The locations followed, made on a first result of a check with `locations`.
    fn located_mut(&mut self) -> &mut Located {
        self.located.get_or_insert_with(Box::default)
    }

    /// The episode event, if any, of the check's state after `result` (already judged).
    fn episode_after(
        &mut self,
        result: &CheckResult,
        config: &CheckConfig,
    ) -> Option<EpisodeEvent> {
        self.track.observe(
            &result.check,
            warn_opens(config),
            self.tracker.state(),
            RunTimes {
                scheduled_at: result.scheduled_at,
                finished_at: result.finished_at,
            },
        )
    }

    /// The locations as the store shows them; None for a check without `locations`.
    fn location_statuses(
        &self,
        config: &CheckConfig,
    ) -> Option<Arc<BTreeMap<String, LocationStatus>>> {
        config.locations.as_ref()?;
        Some(Arc::new(
            self.locations()
                .iter()
                .map(|(name, place)| (name.clone(), place.status.clone()))
                .collect(),
        ))
    }
}

/// One location of a check with `locations`, as the sink follows it.
#[derive(Debug)]
struct Place {
    tracker: StateTracker,
    status: LocationStatus,
}

/// The series the sink counts in: its own, the bus's, and the run durations it removes
/// with a check.
struct SinkSeries {
    sink: SinkMetrics,
    bus: BusMetrics,
    durations: CheckDurations,
}

impl SinkSeries {
    /// Removes the series kept per check by the sink (and the runner): its transitions and its
    /// run durations. The `probe_*` series go with the check's results in the store.
    fn forget(&self, check: &str) {
        self.sink.forget(check);
        self.durations.forget(check);
    }
}

struct Sink {
    store: Arc<ResultStore>,
    metrics: SinkSeries,
    events: Option<EventOutlet>,
    notifications: Option<Arc<Notifications>>,
    history: Option<Recorder>,
    saved: Arc<SavedState>,
    /// The configured checks.
    known: crate::config::CheckList,
    /// Every configured check, by name (with its place in `known`).
    followed: HashMap<String, Followed>,
    /// Whether this sink's checker led when last looked at (history written, events sent).
    leading: bool,
}

/// Takes one location's result of a check with `locations`: the location's own state moves
/// over its instances as a check's would, then the check's state is judged across its
/// locations (`locations::across_locations`). A run that measured nothing moves no state; a
/// location of `["*"]` that lost its last runner (a `no_runner` result) leaves the judgement.
fn observe_location(
    followed: &mut Followed,
    config: &CheckConfig,
    location: &str,
    result: &Arc<CheckResult>,
    policy: StatePolicy,
) -> (Option<Transition>, Option<EpisodeEvent>) {
    let now = Instant::now();
    let counts = result.counts();
    let no_runner = !result.responses.is_empty()
        && result
            .responses
            .iter()
            .all(|response| response.error_kind() == Some(crate::model::ErrorKind::NoRunner));
    let located = followed.located_mut();
    if no_runner && config.every_location() {
        located.locations.remove(location);
        if !located.left.contains_key(location)
            && located.left.len() >= crate::config::bounds::MAX_LOCATIONS
        {
            let oldest = located
                .left
                .iter()
                .min_by_key(|(_, at)| **at)
                .map(|(name, _)| name.clone());
            if let Some(oldest) = oldest {
                located.left.remove(&oldest);
            }
        }
        located
            .left
            .insert(location.to_string(), result.scheduled_at);
    } else {
        located.left.remove(location);
        if !located.locations.contains_key(location)
            && located.locations.len() >= crate::config::bounds::MAX_LOCATIONS
        {
            return (None, None);
        }
        let place = located
            .locations
            .entry(location.to_string())
            .or_insert_with(|| {
                let tracker = StateTracker::new(now, result.finished_at);
                Place {
                    tracker,
                    status: LocationStatus::new(None, tracker.state(), tracker.since()),
                }
            });
        if !counts.nothing_measured() {
            place
                .tracker
                .observe(counts.failing, policy, now, result.finished_at);
        }
        place.status = LocationStatus::new(
            Some(Arc::clone(result)),
            place.tracker.state(),
            place.tracker.since(),
        );
        if counts.nothing_measured() {
            return (None, None);
        }
    }
    let judged = across_locations(
        LocationCounts::of(
            located
                .locations
                .values()
                .map(|place| place.tracker.state()),
        ),
        config.min_failing_locations(),
    );
    let transition = followed.tracker.set(judged, now, result.finished_at);
    (transition, followed.episode_after(result, config))
}

/// A check with `locations` as every location saw it last: one result holding each
/// location's latest responses, each named `location/target` and labelled with its location,
/// so an incident's cause and a notification's failures say where each failure was seen.
fn combined_view(followed: &Followed, result: &CheckResult) -> Arc<CheckResult> {
    let mut responses = Vec::new();
    // A location's result reduced for the bus holds only some of its responses; its counts
    // over every instance are in `degraded`. The view keeps those counts, summed over the
    // locations, so that it says how many instances fail rather than how many responses fit.
    let mut form: Option<crate::messages::DegradedForm> = None;
    let mut totals = crate::messages::Degraded {
        form: crate::messages::DegradedForm::DetailDropped,
        instances: 0,
        failing: 0,
        omitted: 0,
        unmeasured: 0,
        locations: Vec::new(),
    };
    for (location, place) in followed.locations() {
        let Some(latest) = &place.status.latest else {
            continue;
        };
        let counts = crate::messages::LocationCounts {
            location: location.clone(),
            instances: latest.instances(),
            failing: latest.failing(),
            unmeasured: latest.unmeasured(),
        };
        totals.instances += counts.instances;
        totals.failing += counts.failing;
        totals.unmeasured += counts.unmeasured;
        totals.omitted += counts.instances.saturating_sub(latest.responses.len());
        // Each location's own counts too: a notification's line per location would count
        // only the responses that fit.
        totals.locations.push(counts);
        if let Some(reduced) = &latest.degraded {
            // The harsher form of any location's.
            form = Some(match (form, reduced.form) {
                (Some(crate::messages::DegradedForm::Summarised), _) => {
                    crate::messages::DegradedForm::Summarised
                }
                (_, seen) => seen,
            });
        }
        for response in &latest.responses {
            let mut response = response.clone();
            response.target = format!("{location}/{}", response.target);
            response
                .labels
                .insert(crate::model::LOCATION_LABEL.to_string(), location.clone());
            responses.push(response);
        }
    }
    Arc::new(CheckResult {
        version: result.version,
        check: result.check.clone(),
        check_type: result.check_type,
        agent: result.agent.clone(),
        location: None,
        run_id: result.run_id,
        scheduled_at: result.scheduled_at,
        finished_at: result.finished_at,
        passing: totals.failing == 0 && responses.iter().all(|response| response.passing),
        responses,
        degraded: form.map(|form| Box::new(crate::messages::Degraded { form, ..totals })),
    })
}

/// Whether `WARN` opens a failure episode for `check`.
fn warn_opens(check: &CheckConfig) -> bool {
    check
        .notify_on
        .as_deref()
        .is_some_and(|states| states.contains(&NotifyOn::Warn))
}

impl Sink {
    /// Takes back what the last run saved: a check still configured to probe the same thing
    /// continues in its state and episode; the episode of one removed or changed while the
    /// agent was down ends now, for that reason.
    fn resume(&mut self, checks: &[Arc<CheckConfig>], resumed: Vec<SavedCheck>) {
        let now = SystemTime::now();
        let by_name: HashMap<&str, (usize, &CheckConfig)> = checks
            .iter()
            .enumerate()
            .map(|(index, check)| (check.name.as_str(), (index, &**check)))
            .collect();
        for saved in resumed {
            let found = by_name.get(saved.check.as_str()).copied();
            let config = found.map(|(_, config)| config);
            let reason = match found {
                Some((index, config)) if config.probe_fingerprint() == saved.fingerprint => {
                    let tracker = StateTracker::resume(saved.state, Instant::now(), saved.since);
                    if let Some(episode) = saved.track.open() {
                        tracing::info!(check = %saved.check, episode = %episode.id, state = %saved.state, "failure episode resumed from the last run");
                        if let Some(notifications) = &self.notifications {
                            notifications.resume(config, episode, saved.state);
                        }
                    }
                    let mut followed = Followed::new(index, tracker, saved.track.clone());
                    for (location, kept) in &saved.locations {
                        followed.located_mut().locations.insert(
                            location.clone(),
                            Place {
                                tracker: StateTracker::resume(
                                    kept.state,
                                    Instant::now(),
                                    kept.since,
                                ),
                                status: LocationStatus::new(None, kept.state, kept.since),
                            },
                        );
                    }
                    let mut status = CheckStatus::new(None, tracker.state(), tracker.since());
                    status.locations = followed.location_statuses(config);
                    self.store.update(&saved.check, status);
                    self.saved.put(SAVED_CHECKS, &saved.check, &saved);
                    self.followed.insert(saved.check.clone(), followed);
                    continue;
                }
                Some(_) => EndReason::CheckChanged,
                None => EndReason::CheckRemoved,
            };
            let mut track = saved.track;
            if let Some(event) = track.end(reason, now) {
                tracing::info!(check = %saved.check, reason = reason.as_str(), "check removed or changed while the agent was down; its failure episode ends");
                self.episode_event(config, &event, None, CheckState::Ok, true);
            }
        }
    }

    /// Follows a new set of configured checks: removed checks and checks that now probe
    /// something else are forgotten (their episodes end, and a changed one starts over);
    /// a check whose only changes are where it is filed, who is told, how often it runs or
    /// its thresholds keeps its state and episode. New ones start `OK`.
    fn apply_checks(&mut self, checks: &crate::config::CheckList) {
        // Only for this reload: the new list by name.
        let next: HashMap<&str, usize> = checks
            .iter()
            .enumerate()
            .map(|(index, check)| (check.name.as_str(), index))
            .collect();
        let stale: Vec<(String, EndReason)> = self
            .followed
            .iter()
            .filter_map(|(name, followed)| {
                let before = self.known.get(followed.index);
                match next.get(name.as_str()).and_then(|index| checks.get(*index)) {
                    None => Some((name.clone(), EndReason::CheckRemoved)),
                    Some(after) if before.is_some_and(|before| !before.same_probe(after)) => {
                        Some((name.clone(), EndReason::CheckChanged))
                    }
                    Some(_) => None,
                }
            })
            .collect();
        for (name, reason) in stale {
            let config = self
                .followed
                .get(&name)
                .and_then(|followed| self.known.get(followed.index))
                .cloned();
            self.forget(&name, config.as_deref(), reason);
        }
        for (index, config) in checks.iter().enumerate() {
            if let Some(followed) = self.followed.get_mut(config.name.as_str()) {
                followed.index = index;
                continue;
            }
            let tracker = StateTracker::new(Instant::now(), SystemTime::now());
            let followed = Followed::new(index, tracker, Track::default());
            let mut status = CheckStatus::new(None, tracker.state(), tracker.since());
            status.locations = followed.location_statuses(config);
            self.store.update(&config.name, status);
            self.followed.insert(config.name.clone(), followed);
        }
        self.known = Arc::clone(checks);
    }

    /// A reload removed the check or changed what it probes: its series, state, result and
    /// saved state go, and its open episode ends for `reason`.
    fn forget(&mut self, check: &str, config: Option<&CheckConfig>, reason: EndReason) {
        self.metrics.forget(check);
        if let Some(mut followed) = self.followed.remove(check) {
            if let Some(event) = followed.track.end(reason, SystemTime::now()) {
                tracing::info!(
                    check,
                    reason = reason.as_str(),
                    "check removed or changed by a reload; its failure episode ends"
                );
                self.episode_event(config, &event, None, followed.tracker.state(), false);
            }
        }
        self.saved.remove(SAVED_CHECKS, check);
        self.store.remove(check);
    }

    /// Checks leadership: on taking it (or at start, leading), history learns which episodes
    /// are open, so it writes those it lacks and ends those nobody follows any more.
    fn follow_leadership(&mut self) {
        let leading = self.leads();
        let took_over = leading && !self.leading;
        self.leading = leading;
        if took_over {
            self.reconcile();
        }
    }

    /// Tells history which episodes are open, so it writes those it lacks and ends those
    /// nobody follows any more.
    fn reconcile(&self) {
        if let Some(history) = &self.history {
            let open = self
                .followed
                .values()
                .filter_map(|followed| followed.track.open().cloned())
                .collect();
            history.incident(IncidentOp::Reconcile { open });
        }
    }

    /// Hands an episode event to history (while leading) and to notifications; `result` is
    /// the run that caused it, None when a reload or the start ended it.
    fn episode_event(
        &self,
        config: Option<&CheckConfig>,
        event: &EpisodeEvent,
        result: Option<&Arc<CheckResult>>,
        state: CheckState,
        at_start: bool,
    ) {
        if let Some(history) = self.history.as_ref().filter(|_| self.leading) {
            let op = match (result, event) {
                (Some(result), event) => IncidentOp::of(event, result),
                (
                    None,
                    EpisodeEvent::Closed {
                        episode,
                        reason,
                        at,
                    },
                ) => IncidentOp::Close {
                    episode: episode.clone(),
                    ended_at: *at,
                    reason: *reason,
                },
                (None, other) => IncidentOp::Severity {
                    episode: other.episode().clone(),
                },
            };
            history.incident(op);
        }
        // With a result, `observe` tells notifications; without one, this is all they hear.
        if let (None, Some(notifications)) = (result, &self.notifications) {
            notifications.ended(config, event, state, at_start);
        }
    }

    /// Saves a check's state and episode when it is troubled, and forgets them once calm.
    fn save(&self, check: &str, config: &CheckConfig, followed: &Followed) {
        if followed.tracker.state() == CheckState::Ok && followed.track.is_calm() {
            self.saved.remove(SAVED_CHECKS, check);
        } else {
            self.saved.put(
                SAVED_CHECKS,
                check,
                &SavedCheck {
                    check: check.to_string(),
                    fingerprint: config.probe_fingerprint(),
                    state: followed.tracker.state(),
                    since: followed.tracker.since(),
                    track: followed.track.clone(),
                    locations: followed
                        .locations()
                        .iter()
                        .map(|(name, place)| {
                            let saved = SavedLocation {
                                state: place.tracker.state(),
                                since: place.tracker.since(),
                            };
                            (name.clone(), saved)
                        })
                        .collect(),
                },
            );
        }
    }

    async fn handle(&mut self, message: &Message) {
        let result = match message.payload.result() {
            Ok(result) => result,
            Err(error) => {
                tracing::warn!(subject = %message.subject, reason = error.reason(), %error, "dropping a bad result");
                self.metrics.bus.count_decode_error(error.reason());
                return;
            }
        };
        let known = Arc::clone(&self.known);
        let Some(config) = self
            .followed
            .get(&result.check)
            .and_then(|followed| known.get(followed.index))
        else {
            // A run that was in flight when its check was removed, or a check configured
            // elsewhere: its label values must not enter /metrics. The runner in this process
            // may have recorded the run's duration already; that goes too.
            tracing::debug!(check = %result.check, "result of a check that is not configured; dropped");
            self.metrics.forget(&result.check);
            return;
        };
        let policy = StatePolicy::for_check(config);
        // A result must be for where the check runs: a run of a check that has just gained or
        // lost `locations`, or one from a location it no longer names, says nothing about it.
        let location = match (&config.locations, result.location.as_deref()) {
            (None, None) => None,
            (Some(_), Some(location))
                if config.every_location()
                    || config
                        .locations
                        .iter()
                        .flatten()
                        .any(|named| named == location) =>
            {
                Some(location.to_string())
            }
            _ => {
                tracing::debug!(check = %result.check, location = result.location.as_deref(), "result for a location the check does not run from; dropped");
                return;
            }
        };
        let Some(followed) = self.followed.get(&result.check) else {
            return;
        };
        let last_scheduled = match &location {
            Some(location) => followed
                .locations()
                .get(location)
                .and_then(|place| place.status.latest.as_ref())
                .map(|latest| latest.scheduled_at)
                .or_else(|| followed.left_at(location)),
            None => self
                .store
                .latest(&result.check)
                .map(|latest| latest.scheduled_at),
        };
        if last_scheduled.is_some_and(|at| at > result.scheduled_at) {
            return; // an older run arriving late says nothing about now
        }
        tracing::debug!(check = %result.check, location = location.as_deref(), passing = result.passing, responses = result.responses.len(), "result");

        // One rule with history: instances that never ran (no worker, no runner) measured
        // nothing, and a run that measured nothing moves no state.
        let counts = result.counts();
        let result = to_keep(result, &message.payload);
        let Some(followed) = self.followed.get_mut(&result.check) else {
            return;
        };
        let mut moved = false;
        let (transition, event) = match &location {
            Some(location) => {
                let before = followed
                    .locations()
                    .get(location)
                    .map(|place| place.tracker.state());
                let judged = observe_location(followed, config, location, &result, policy);
                let after = followed
                    .locations()
                    .get(location)
                    .map(|place| place.tracker.state());
                moved = before != after;
                judged
            }
            None if counts.nothing_measured() => (None, None),
            None => {
                let transition = followed.tracker.observe(
                    counts.failing,
                    policy,
                    Instant::now(),
                    result.finished_at,
                );
                (transition, followed.episode_after(&result, config))
            }
        };
        let (state, since) = (followed.tracker.state(), followed.tracker.since());
        let mut status = CheckStatus::new(Some(Arc::clone(&result)), state, since);
        status.locations = followed.location_statuses(config);
        // What incidents, notifications and events describe: for a check with locations, the
        // latest run of every location (made only while there is something to tell).
        let troubled = state != CheckState::Ok || transition.is_some() || event.is_some();
        let (view, location_states) = match &location {
            Some(_) if troubled => (
                combined_view(followed, &result),
                followed
                    .locations()
                    .iter()
                    .map(|(name, place)| (name.clone(), place.tracker.state()))
                    .collect(),
            ),
            _ => (Arc::clone(&result), BTreeMap::new()),
        };
        if transition.is_some() || event.is_some() || moved {
            if let Some(followed) = self.followed.get(&result.check) {
                self.save(&result.check, config, followed);
            }
        }
        if let Some(history) = self.history.as_ref().filter(|_| self.leading) {
            history.run(
                &result,
                config,
                status.locations.as_ref().map_or(0, |all| all.len()),
            );
        }
        self.store.update(&result.check, status);
        if let Some(event) = &event {
            self.episode_event(Some(config), event, Some(&view), state, false);
        }
        if let Some(notifications) = &self.notifications {
            notifications.observe(config, state, &view, event.as_ref());
        }
        if let Some(transition) = transition {
            let failing = if location.is_some() {
                view.counts().failing
            } else {
                counts.failing
            };
            self.announce(&view, transition, failing, location_states)
                .await;
        }
    }

    /// Counts a change of state, logs it and publishes its event.
    async fn announce(
        &self,
        result: &CheckResult,
        transition: Transition,
        failing: usize,
        locations: BTreeMap<String, CheckState>,
    ) {
        self.metrics
            .sink
            .count_transition(&result.check, transition.to);
        tracing::info!(check = %result.check, from = %transition.from, to = %transition.to, failing, "check state changed");
        if let Some(history) = self.history.as_ref().filter(|_| self.leading) {
            history.transition(TransitionRecord {
                check: Arc::from(result.check.as_str()),
                from: transition.from,
                to: transition.to,
                at: result.finished_at,
                failing,
                instances: result.instances(),
            });
        }
        let event = StateEvent {
            version: MESSAGE_VERSION,
            check: result.check.clone(),
            from: transition.from,
            to: transition.to,
            at: result.finished_at,
            failing,
            responses: result.instances(),
            locations,
        };
        self.publish(&event).await;
    }

    /// Whether this sink's checker leads (always, without HA).
    fn leads(&self) -> bool {
        match self
            .events
            .as_ref()
            .and_then(|outlet| outlet.leadership.as_ref())
        {
            Some(leadership) => *leadership.borrow(),
            None => true,
        }
    }

    async fn publish(&self, event: &StateEvent) {
        let Some(outlet) = &self.events else {
            return;
        };
        if let Some(leadership) = &outlet.leadership {
            if !*leadership.borrow() {
                return;
            }
        }
        let published = match messages::encode(event) {
            Ok(payload) => outlet
                .bus
                .publish(&outlet.subjects.events(&event.check), payload.into())
                .await
                .map_err(|error| error.to_string()),
            Err(error) => Err(error.to_string()),
        };
        if let Err(error) = published {
            tracing::warn!(check = %event.check, %error, "could not publish a state event");
            self.metrics.bus.count_publish_error("events");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every configured check has a `Followed` in the sink's one map by name: what only a
    /// check with `locations` or an open episode needs is behind a box (issue 20: 224 bytes
    /// inline, and a second map for the index, before).
    #[test]
    fn a_followed_check_holds_its_rare_parts_behind_boxes() {
        let size = std::mem::size_of::<Followed>();
        assert!(size <= 112, "Followed is {size} bytes");
    }

    #[test]
    fn stored_bodies_are_cut_on_a_character_boundary() {
        let mut text = "é".repeat(STORED_BODY_BYTES); // two bytes each
        cut(&mut text, STORED_BODY_BYTES + 1);
        assert_eq!(text.len(), STORED_BODY_BYTES);
        let mut short = "ok".to_string();
        cut(&mut short, STORED_BODY_BYTES);
        assert_eq!(short, "ok");
    }

    /// A decoded result keeps no more of a body than the API holds, whichever type's section
    /// carries it (a peer of another build may send more than this one's bus allows).
    #[test]
    fn a_decoded_result_keeps_each_sections_body_to_the_stored_bound() {
        let mut response = messages::Response::failed(
            "127.0.0.1:9".into(),
            crate::model::ProbeError::new(crate::model::ErrorKind::Expect, "no match"),
            messages::Timings::default(),
        );
        let reply = "x".repeat(STORED_BODY_BYTES * 3);
        response.sections.udp = Some(Box::new(crate::checks::udp::UdpDetails {
            sent_bytes: 4,
            replied: true,
            body: reply.clone(),
            truncated: false,
            body_bytes: Some(reply.len()),
        }));
        let mut result = CheckResult::of_web(vec![response]);
        trim(&mut result);
        let udp = result.responses[0].sections.udp.as_deref().unwrap();
        assert_eq!(udp.body.len(), STORED_BODY_BYTES);
        assert!(udp.truncated);
        assert_eq!(udp.body_bytes, Some(reply.len()), "the length read is kept");
    }
}
