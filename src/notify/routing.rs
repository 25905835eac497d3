//! Routing: who is told what of each failure episode. `crate::episode` decides when an
//! episode opens, changes severity and ends; the sink hands each event here with the result
//! that caused it, and this file turns it into notifications for the check's notifiers.
//!
//! A receiver counts as told of an episode at a severity only once it *accepted* a firing
//! notification of it (`queue.rs` reports each outcome back). So a receiver that was down
//! when the trigger went out is told later: after a restart, with the first result that
//! shows the check still failing; after a maintenance window, when it ends; after an
//! escalation, of the new severity. A resolve goes to the receivers that accepted the
//! episode's trigger, and is saved until each accepted it, so a restart between the recovery
//! and its delivery still sends it. Who accepted what is kept in the agent's saved state
//! (`crate::saved_state`, section `deliveries`) beside the episodes themselves.
//!
//! Only the leader delivers. A standby follows the same episodes without telling anyone; on
//! taking the lease it sends the firing notification of every open episode again (same id)
//! and the resolves of episodes closed in the last `RECENT_RESOLVES_FOR`, so nothing the old
//! leader may not have delivered is lost. Time-driven work (reminders, the end of maintenance
//! windows, leadership changes) is in `ticker.rs`.
//!
//! The state sits behind one mutex, never held across an await; every call the sink makes
//! costs O(1) per result (plus the receivers of the check when an event happens).

use super::maintenance::Maintenance;
use super::message::{Origin, ResolveFacts};
use super::queue::{Delivery, Outcomes, RetryPolicy};
use super::NotifyMetrics;
use crate::checks::CheckType;
use crate::config::{CheckConfig, MaintenanceConfig};
use crate::episode::{Episode, EpisodeEvent};
use crate::messages::CheckResult;
use crate::metrics::Metrics;
use crate::model::{CheckState, EndReason, Severity};
use crate::receivers::Notification;
use crate::saved_state::SavedState;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long a closed episode's resolve is kept to send again on taking the lease.
pub const RECENT_RESOLVES_FOR: Duration = Duration::from_secs(600);
/// Resolves kept for that at most (the oldest go first).
const MAX_RECENT_RESOLVES: usize = 1024;
/// Ended episodes whose resolve still waits for a receiver, at most (the oldest go first,
/// logged): a receiver that stays down through thousands of episodes cannot grow this.
pub(super) const MAX_RESOLVING: usize = 16_384;
/// After a trigger or a resolve was given up (the receiver stayed down through every
/// attempt, or its queue overflowed), how long until it is sent again, for notifiers without
/// `repeat_interval` (those with one are told again at the next reminder).
pub(super) const RETRIGGER_AFTER: Duration = Duration::from_secs(300);
/// How long after its episode ended a resolve is still sent again to a receiver that has
/// not taken it (a trigger is sent again for as long as its episode stays open).
pub(super) const RESOLVE_FOR: Duration = Duration::from_secs(86_400);

/// What the notifications of an agent are built from.
pub struct NotificationsOptions {
    pub notifiers: Vec<super::Built>,
    pub maintenance: Maintenance,
    /// New `[[maintenance]]` windows from reloads, when they apply without a restart.
    pub maintenance_updates: Option<watch::Receiver<Arc<Vec<MaintenanceConfig>>>>,
    pub agent: String,
    /// The agent's API base for links (`http://host:port`).
    pub link_base: String,
    pub metrics: Arc<Metrics>,
    /// With HA checkers, whether this one leads; None: it always does.
    pub leadership: Option<watch::Receiver<bool>>,
    /// Where who accepted what is kept across restarts.
    pub saved: Arc<SavedState>,
    /// What the last run saved of it (the `deliveries` section).
    pub resumed: BTreeMap<String, serde_json::Value>,
}

/// One notifier as routing sees it.
#[derive(Debug)]
pub(super) struct Route {
    pub(super) delivery: Arc<Delivery>,
    default: bool,
    pub(super) repeat: Option<Duration>,
    pub(super) send_resolved: bool,
}

/// What one receiver knows of an open episode.
#[derive(Debug, Default)]
pub(super) struct Receiver {
    /// The severity of the last firing notification it accepted.
    pub(super) accepted: Option<Severity>,
    /// The severity of a firing notification on its way to it.
    pub(super) queued: Option<Severity>,
    /// Before the last restart a firing was on its way to it, with no outcome known (the
    /// agent crashed): it may have been told.
    pub(super) maybe_told: bool,
    /// A maintenance window held its firing notification back (counted once).
    pub(super) held_back: bool,
    /// When its next reminder is due.
    pub(super) reminder_due: Option<Instant>,
}

/// An open episode as routing follows it.
#[derive(Debug)]
pub(super) struct Open {
    pub(super) episode: Episode,
    pub(super) check_type: CheckType,
    pub(super) state: CheckState,
    /// The check's `notify` that `routes` were made from.
    pub(super) notify: Option<Vec<String>>,
    /// The check's notifiers, sorted.
    pub(super) routes: Vec<String>,
    /// The latest result; None after a restart until the first one arrives.
    pub(super) latest: Option<Arc<CheckResult>>,
    pub(super) receivers: HashMap<String, Receiver>,
}

/// An ended episode whose resolve some receivers have yet to accept.
#[derive(Debug)]
pub(super) struct Resolving {
    pub(super) resolve: Arc<Notification>,
    pub(super) saved: ResolveFacts,
    pub(super) pending: BTreeSet<String>,
}

/// A resolve sent lately, for a checker that takes the lease.
#[derive(Debug)]
pub(super) struct Recent {
    pub(super) resolved: Arc<Notification>,
    pub(super) routes: Vec<String>,
    pub(super) at: Instant,
}

/// What the last run saved of an open episode's receivers.
#[derive(Debug, Clone)]
pub(super) struct Resumed {
    pub(super) check_type: CheckType,
    pub(super) accepted: BTreeMap<String, Severity>,
    pub(super) pending: BTreeSet<String>,
}

/// A reminder due: when, for which check and notifier.
pub(super) type Reminder = Reverse<(Instant, String, String)>;

#[derive(Debug)]
pub(super) struct RoutingState {
    /// Open episodes, by check.
    pub(super) open: HashMap<String, Open>,
    /// Ended episodes whose resolve waits for receivers, by episode id, oldest first.
    pub(super) resolving: HashMap<String, Resolving>,
    pub(super) resolving_order: VecDeque<String>,
    /// The receivers that accepted each open episode of the last run, by episode id, until
    /// the sink resumes (or ends) the episode.
    pub(super) resumed: HashMap<String, Resumed>,
    pub(super) recent: VecDeque<Recent>,
    pub(super) reminders: BinaryHeap<Reminder>,
    /// Resolves given up, to send again: when, the episode id and the notifier.
    pub(super) resolve_retries: BinaryHeap<Reminder>,
    /// Checks with a firing notification a maintenance window holds back.
    pub(super) held: HashSet<String>,
    pub(super) leading: bool,
}

/// The notifications of one agent: cheap to share, pushes onto the queues, never waits.
#[derive(Debug)]
pub struct Notifications {
    pub(super) routes: HashMap<String, Route>,
    /// The windows in force; a reload replaces them.
    maintenance: Mutex<Arc<Maintenance>>,
    pub(super) maintenance_updates: Option<watch::Receiver<Arc<Vec<MaintenanceConfig>>>>,
    pub(super) origin: Origin,
    pub(super) metrics: NotifyMetrics,
    pub(super) leadership: Option<watch::Receiver<bool>>,
    pub(super) saved: Arc<SavedState>,
    state: Mutex<RoutingState>,
}

impl Notifications {
    /// Starts one delivery task per notifier and the ticker; all stop with `stop`, and
    /// `tasks` tracks them. Resolves the last run saved as undelivered go out at once (when
    /// leading); its open episodes wait for the sink to resume them.
    pub fn start(
        options: NotificationsOptions,
        stop: &CancellationToken,
        tasks: &TaskTracker,
    ) -> Arc<Notifications> {
        let leading = options
            .leadership
            .as_ref()
            .is_none_or(|leadership| *leadership.borrow());
        let NotificationsOptions {
            notifiers,
            maintenance,
            maintenance_updates,
            agent,
            link_base,
            metrics,
            leadership,
            saved,
            resumed,
        } = options;
        let metrics: NotifyMetrics = metrics.component();
        let notifications = Arc::new_cyclic(|weak: &Weak<Notifications>| {
            let outcomes: Weak<dyn Outcomes> = weak.clone();
            let mut routes = HashMap::new();
            for (config, notifier) in notifiers {
                let repeat = config
                    .repeat_interval
                    .or_else(|| notifier.default_repeat())
                    .map(|every| crate::config::bounds::REPEAT_INTERVAL.cap_duration(every));
                let policy = RetryPolicy {
                    max_attempts: config.max_attempts,
                    timeout: config.timeout,
                    backoff: config.retry_backoff,
                    backoff_max: config.retry_backoff_max,
                };
                let delivery = Arc::new(Delivery::new(
                    config.name.clone(),
                    notifier,
                    policy,
                    config.queue_size,
                    metrics.clone(),
                    Arc::clone(&saved),
                    outcomes.clone(),
                ));
                routes.insert(
                    config.name.clone(),
                    Route {
                        delivery,
                        default: config.default,
                        repeat,
                        send_resolved: config.send_resolved,
                    },
                );
            }
            Notifications {
                routes,
                maintenance: Mutex::new(Arc::new(maintenance)),
                maintenance_updates,
                origin: Origin { agent, link_base },
                metrics,
                leadership,
                saved,
                state: Mutex::new(RoutingState {
                    open: HashMap::new(),
                    resolving: HashMap::new(),
                    resolving_order: VecDeque::new(),
                    resumed: HashMap::new(),
                    recent: VecDeque::new(),
                    reminders: BinaryHeap::new(),
                    resolve_retries: BinaryHeap::new(),
                    held: HashSet::new(),
                    leading,
                }),
            }
        });
        for route in notifications.routes.values() {
            tasks.spawn(Arc::clone(&route.delivery).run(stop.clone()));
        }
        notifications.take_back(resumed);
        tasks.spawn(Arc::clone(&notifications).tick(stop.clone()));
        notifications
    }

    /// Waits until every queue is empty and no delivery is under way, or `until`.
    pub async fn drain(&self, until: Instant) {
        while Instant::now() < until {
            if self.routes.values().all(|route| route.delivery.idle()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Takes one result of `check`, which left it in `state`, and the episode event it
    /// caused, if any.
    pub fn observe(
        &self,
        check: &CheckConfig,
        state: CheckState,
        result: &Arc<CheckResult>,
        event: Option<&EpisodeEvent>,
    ) {
        if self.routes.is_empty() {
            return;
        }
        let mut guard = self.lock();
        let leading = guard.leading;
        match event {
            Some(EpisodeEvent::Opened(episode)) => {
                tracing::info!(check = %check.name, episode = %episode.id, severity = episode.severity.as_str(), "failure episode begins");
                let mut open = Open {
                    episode: episode.clone(),
                    check_type: check.check_type(),
                    state,
                    notify: check.notify.clone(),
                    routes: self.routes_of(check),
                    latest: Some(Arc::clone(result)),
                    receivers: HashMap::new(),
                };
                if leading {
                    self.fire(&mut guard, &mut open);
                }
                guard.open.insert(check.name.clone(), open);
            }
            Some(EpisodeEvent::Escalated(episode) | EpisodeEvent::DeEscalated(episode)) => {
                if let Some(mut open) = guard.open.remove(&check.name) {
                    open.episode = episode.clone();
                    open.state = state;
                    open.latest = Some(Arc::clone(result));
                    if leading {
                        self.fire(&mut guard, &mut open);
                    }
                    guard.open.insert(check.name.clone(), open);
                }
            }
            Some(EpisodeEvent::Closed {
                episode,
                reason,
                at,
            }) => {
                self.close(
                    &mut guard,
                    episode,
                    *reason,
                    *at,
                    state,
                    Some(result),
                    false,
                );
            }
            None => {
                let Some(open) = guard.open.get_mut(&check.name) else {
                    return;
                };
                let first = open.latest.is_none();
                open.latest = Some(Arc::clone(result));
                open.state = state;
                let rerouted = open.notify != check.notify;
                if rerouted {
                    // A reload changed who is told: new notifiers hear of the episode now.
                    open.notify = check.notify.clone();
                    open.routes = self.routes_of(check);
                }
                if leading && (first || rerouted) {
                    if let Some(mut open) = guard.open.remove(&check.name) {
                        self.fire(&mut guard, &mut open);
                        guard.open.insert(check.name.clone(), open);
                    }
                }
            }
        }
    }

    /// An episode ended without a result: a reload changed or removed its check, or the
    /// start found it changed or removed (`check` is the definition it had, if known).
    /// `at_start`: the start found it so (from the saved state of the last run); its
    /// resolve is then kept until delivered even by a checker that does not lead yet, since
    /// no other checker may know of it.
    pub fn ended(
        &self,
        check: Option<&CheckConfig>,
        event: &EpisodeEvent,
        state: CheckState,
        at_start: bool,
    ) {
        if self.routes.is_empty() {
            return;
        }
        if let EpisodeEvent::Closed {
            episode,
            reason,
            at,
        } = event
        {
            let mut guard = self.lock();
            tracing::debug!(check = ?check.map(|c| &c.name), episode = %episode.id, "episode ended without a result");
            self.close(&mut guard, episode, *reason, *at, state, None, at_start);
        }
    }

    /// Of `names`, the notifiers still configured that are sent resolves (`send_resolved`):
    /// one removed or renamed since will never answer.
    pub(super) fn resolvable(&self, names: impl IntoIterator<Item = String>) -> BTreeSet<String> {
        names
            .into_iter()
            .filter(|name| {
                self.routes
                    .get(name)
                    .is_some_and(|route| route.send_resolved)
            })
            .collect()
    }

    /// Ends `episode`: its resolve goes to each receiver that accepted its firing (kept by a
    /// standby too when `keep`, to send on taking the lease).
    #[allow(clippy::too_many_arguments)]
    fn close(
        &self,
        guard: &mut RoutingState,
        episode: &Episode,
        reason: EndReason,
        at: SystemTime,
        state: CheckState,
        result: Option<&Arc<CheckResult>>,
        keep: bool,
    ) {
        let (accepted, routes, check_type, latest): (Vec<String>, Vec<String>, CheckType, _) =
            match guard.open.remove(&episode.check) {
                Some(open) => {
                    let accepted = open
                        .receivers
                        .iter()
                        .filter(|(_, receiver)| receiver.accepted.is_some() || receiver.maybe_told)
                        .map(|(name, _)| name.clone())
                        .collect();
                    for (name, receiver) in &open.receivers {
                        if receiver.accepted.is_none() && !receiver.maybe_told && receiver.held_back
                        {
                            // Never told of the firing (a window held it back): nothing to resolve.
                            self.metrics.count(name, "suppressed");
                        }
                    }
                    guard.held.remove(&episode.check);
                    (accepted, open.routes, open.check_type, open.latest)
                }
                None => {
                    // Never resumed (its check was changed or removed while the agent was
                    // down): those that accepted its trigger in the last run.
                    let Some(resumed) = guard.resumed.remove(&episode.id) else {
                        return;
                    };
                    let accepted: Vec<String> = resumed
                        .accepted
                        .into_keys()
                        .chain(resumed.pending)
                        .collect();
                    (accepted.clone(), accepted, resumed.check_type, None)
                }
            };
        self.unsave(&episode.id);
        tracing::info!(check = %episode.check, episode = %episode.id, reason = reason.as_str(), "failure episode ends");
        let latest = result.cloned().or(latest);
        let saved = ResolveFacts {
            episode: episode.clone(),
            check_type,
            state,
            reason,
            at,
            failing: latest.as_ref().map_or(0, |r| r.counts().failing),
            instances: latest.as_ref().map_or(0, |r| r.instances()),
        };
        let resolve = Arc::new(self.origin.resolve(&saved, latest.as_deref()));
        if guard.recent.len() >= MAX_RECENT_RESOLVES {
            guard.recent.pop_front();
        }
        guard.recent.push_back(Recent {
            resolved: Arc::clone(&resolve),
            routes,
            at: Instant::now(),
        });
        if !guard.leading && !keep {
            return;
        }
        let pending = self.resolvable(accepted);
        if guard.leading {
            for name in &pending {
                if let Some(route) = self.routes.get(name) {
                    route.delivery.push(Arc::clone(&resolve));
                }
            }
        }
        if !pending.is_empty() {
            self.keep_resolving(guard, resolve, saved, pending);
        }
    }

    /// Queues the episode's firing notification for each of its receivers that has not
    /// accepted (and is not about to get) its current severity, except while a maintenance
    /// window covers the check: then it is held back, counted `suppressed` once, and sent
    /// when the window ends.
    pub(super) fn fire(&self, guard: &mut RoutingState, open: &mut Open) {
        let severity = open.episode.severity;
        let windows = self.windows();
        let window = windows.in_force(&open.episode.check, SystemTime::now());
        let mut built: HashMap<Option<Severity>, Arc<Notification>> = HashMap::new();
        let mut sends: Vec<(&Route, Arc<Notification>)> = Vec::new();
        let mut held = false;
        for name in &open.routes {
            let Some(route) = self.routes.get(name) else {
                continue;
            };
            let receiver = open.receivers.entry(name.clone()).or_default();
            if receiver.accepted == Some(severity) || receiver.queued == Some(severity) {
                continue;
            }
            if let Some(window) = window {
                if !receiver.held_back {
                    receiver.held_back = true;
                    tracing::info!(check = %open.episode.check, notifier = %name, maintenance = window, "notification suppressed by a maintenance window");
                    self.metrics.count(name, "suppressed");
                }
                held = true;
                continue;
            }
            if receiver.held_back {
                receiver.held_back = false;
                tracing::info!(check = %open.episode.check, notifier = %name, "maintenance over and the check still fails: notifying now");
            }
            // An escalation (or de-escalation) says what it was before, to this receiver.
            let previous = receiver.accepted.filter(|before| *before != severity);
            let notification = built.entry(previous).or_insert_with(|| {
                Arc::new(self.origin.firing(
                    &open.episode,
                    open.check_type,
                    open.state,
                    previous,
                    open.latest.as_deref(),
                ))
            });
            sends.push((route, Arc::clone(notification)));
            receiver.queued = Some(severity);
        }
        if !sends.is_empty() {
            // Saved before anything leaves: a crash after the send still knows it may have.
            self.save_open(open);
            for (route, notification) in sends {
                route.delivery.push(notification);
            }
        }
        if held {
            guard.held.insert(open.episode.check.clone());
        } else {
            guard.held.remove(&open.episode.check);
        }
    }

    /// The notifiers of `check` that exist.
    pub(super) fn routes_of(&self, check: &CheckConfig) -> Vec<String> {
        let mut names: Vec<String> = match &check.notify {
            Some(names) => names
                .iter()
                .filter(|n| self.routes.contains_key(*n))
                .cloned()
                .collect(),
            None => self
                .routes
                .iter()
                .filter(|(_, route)| route.default)
                .map(|(name, _)| name.clone())
                .collect(),
        };
        names.sort();
        names
    }

    /// This checker just took the lease: repeat what the old leader may not have delivered.
    pub(super) fn take_over(&self, guard: &mut RoutingState) {
        tracing::info!(
            open_episodes = guard.open.len(),
            recent_resolves = guard.recent.len(),
            "leading now: sending open episodes and recent resolves again"
        );
        for recent in &guard.recent {
            for name in &recent.routes {
                if let Some(route) = self.routes.get(name).filter(|r| r.send_resolved) {
                    route.delivery.push(Arc::clone(&recent.resolved));
                }
            }
        }
        for resolving in guard.resolving.values() {
            for name in &resolving.pending {
                if let Some(route) = self.routes.get(name) {
                    route.delivery.push(Arc::clone(&resolving.resolve));
                }
            }
        }
        let checks: Vec<String> = guard.open.keys().cloned().collect();
        for check in checks {
            if let Some(mut open) = guard.open.remove(&check) {
                for receiver in open.receivers.values_mut() {
                    *receiver = Receiver::default();
                }
                self.fire(guard, &mut open);
                guard.open.insert(check, open);
            }
        }
    }

    /// This checker no longer leads: the new leader tells everyone again.
    pub(super) fn step_down(&self, guard: &mut RoutingState) {
        tracing::info!("no longer leading: notifications are left to the new leader");
        for open in guard.open.values_mut() {
            for receiver in open.receivers.values_mut() {
                *receiver = Receiver::default();
            }
        }
        guard.held.clear();
    }

    /// The maintenance windows in force now.
    pub(super) fn windows(&self) -> Arc<Maintenance> {
        Arc::clone(
            &self
                .maintenance
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        )
    }

    /// Takes the windows of a reloaded config (validated already, so they compile).
    pub(super) fn replace_windows(&self, configs: &[MaintenanceConfig]) {
        match Maintenance::compile(configs) {
            Ok(compiled) => {
                *self
                    .maintenance
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(compiled);
            }
            Err(error) => tracing::error!(%error, "maintenance windows not replaced"),
        }
    }

    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, RoutingState> {
        // Every update leaves the state consistent; a poisoned one is still usable.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
#[path = "routing_tests.rs"]
mod tests;
