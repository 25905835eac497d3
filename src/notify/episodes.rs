//! Failure episodes: what to send, to whom and when. An episode begins when a check enters a
//! notifying state (`FAIL`, or `WARN` with `notify_on = ["fail", "warn"]`) and ends when it is
//! calm again (`OK`, or `WARN` when warnings do not notify). Its id is derived from the check's
//! name and the scheduled time of the first failing result of the run that led to it, so every
//! checker that saw the same results (HA standbys track states too) computes the same id: a
//! failover repeats a trigger rather than contradicting it.
//!
//! Only the leader delivers. On taking the lease a checker sends the firing notification of
//! every open episode again (same id) and the resolves of episodes closed in the last
//! `RECENT_RESOLVES_FOR`, so neither a trigger nor a resolve that the old leader may not have
//! delivered is lost. While a maintenance window covers a check, its notifications are counted
//! as `suppressed`; if it still fails when the window ends, it notifies then. A reminder is
//! sent every `repeat_interval` while an episode stays open.
//!
//! The sink calls in for each result (it never waits: notifications go onto the queues), a
//! ticker once a second; the state is behind one mutex that is never held across an await.
//!
//! Open episodes outlive a restart: the ticker saves them (id, start, notifiers told) to
//! `notifications.json` beside the history database whenever they change, and at shutdown;
//! the next start resumes them, so a check still failing keeps its episode (no second
//! trigger) and one that recovered meanwhile is resolved under the id its trigger carried.

use super::maintenance::Maintenance;
use super::queue::{Delivery, RetryPolicy};
use super::{Event, FailedAssertion, Failure, Notification, Severity, MAX_FAILURES_LISTED};
use crate::config::{CheckConfig, MaintenanceConfig, NotifyOn};
use crate::messages::CheckResult;
use crate::metrics::Metrics;
use crate::model::{CheckState, CheckType};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long a closed episode's resolve is kept to send again on taking the lease.
pub const RECENT_RESOLVES_FOR: Duration = Duration::from_secs(600);
/// Resolves kept for that at most (the oldest go first).
const MAX_RECENT_RESOLVES: usize = 1024;
/// How often reminders, window ends and leadership are looked at.
const TICK: Duration = Duration::from_secs(1);

/// The id of the episode of `check` that began with the failing result scheduled at `started`.
pub fn episode_id(check: &str, started: SystemTime) -> String {
    // Microseconds, as results carry on the bus, so every checker hashes the same text.
    let text = format!("{check}\n{}", humantime::format_rfc3339_micros(started));
    let digest = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
    digest.as_ref()[..16]
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

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
    /// Where open episodes are saved across restarts; None: they are not.
    pub episodes_file: Option<PathBuf>,
    /// The configured checks: a saved episode of a check no longer configured is resolved.
    pub checks: Vec<String>,
}

/// What is kept of an open episode across a restart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct SavedEpisode {
    check: String,
    id: String,
    #[serde(with = "humantime_serde")]
    started_at: SystemTime,
    severity: Severity,
    state: CheckState,
    check_type: CheckType,
    failing: usize,
    instances: usize,
    /// The notifiers of the check when the episode opened.
    routes: Vec<String>,
    /// Those told of the firing.
    told: Vec<String>,
}

/// The file's content; `version` changes if its meaning does.
#[derive(Debug, Serialize, Deserialize)]
struct SavedEpisodes {
    version: u32,
    episodes: Vec<SavedEpisode>,
}

const SAVED_EPISODES_VERSION: u32 = 1;

/// One notifier as episodes see it.
#[derive(Debug)]
struct Route {
    delivery: Arc<Delivery>,
    default: bool,
    repeat: Option<Duration>,
    send_resolved: bool,
}

/// An open episode.
#[derive(Debug)]
struct Episode {
    id: String,
    started_at: SystemTime,
    severity: Severity,
    /// The latest firing notification, for reminders, window ends and takeovers.
    latest: Notification,
    /// The notifiers of the check when the episode opened.
    routes: Vec<String>,
    /// Per notifier told of the firing: when its next reminder is due (None: no reminders).
    told: HashMap<String, Option<Instant>>,
    /// Notifiers whose firing notification a maintenance window held back (counted once).
    held_back: HashSet<String>,
}

#[derive(Debug, Default)]
struct CheckEpisodes {
    /// Scheduled time of the first failing result since the check was last calm.
    failing_since: Option<SystemTime>,
    episode: Option<Episode>,
}

#[derive(Debug)]
struct Recent {
    resolved: Arc<Notification>,
    routes: Vec<String>,
    at: Instant,
}

#[derive(Debug)]
struct State {
    checks: HashMap<String, CheckEpisodes>,
    recent: Vec<Recent>,
    leading: bool,
}

/// The notifications of one agent: cheap to share, pushes onto the queues, never waits.
#[derive(Debug)]
pub struct Notifications {
    routes: HashMap<String, Route>,
    /// The windows in force; a reload replaces them.
    maintenance: Mutex<Arc<Maintenance>>,
    maintenance_updates: Option<watch::Receiver<Arc<Vec<MaintenanceConfig>>>>,
    agent: String,
    link_base: String,
    metrics: Arc<Metrics>,
    leadership: Option<watch::Receiver<bool>>,
    state: Mutex<State>,
    episodes_file: Option<PathBuf>,
}

impl Notifications {
    /// Starts one delivery task per notifier and the ticker; all stop with `stop`, and
    /// `tasks` tracks them.
    pub fn start(
        options: NotificationsOptions,
        stop: &CancellationToken,
        tasks: &TaskTracker,
    ) -> Arc<Notifications> {
        let mut routes = HashMap::new();
        for (config, notifier) in options.notifiers {
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
                Arc::clone(&options.metrics),
            ));
            tasks.spawn(Arc::clone(&delivery).run(stop.clone()));
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
        let leading = options
            .leadership
            .as_ref()
            .is_none_or(|leadership| *leadership.borrow());
        let notifications = Arc::new(Notifications {
            routes,
            maintenance: Mutex::new(Arc::new(options.maintenance)),
            maintenance_updates: options.maintenance_updates,
            agent: options.agent,
            link_base: options.link_base,
            metrics: options.metrics,
            leadership: options.leadership,
            state: Mutex::new(State {
                checks: HashMap::new(),
                recent: Vec::new(),
                leading,
            }),
            episodes_file: options.episodes_file,
        });
        if let Some(path) = &notifications.episodes_file {
            notifications.resume(path, &options.checks);
        }
        tasks.spawn(Arc::clone(&notifications).tick(stop.clone()));
        notifications
    }

    /// Takes back the episodes a previous run saved. Runs once, before the first result.
    fn resume(&self, path: &std::path::Path, checks: &[String]) {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return,
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "cannot read the saved failure episodes; open episodes of the last run will not be resolved");
                return;
            }
        };
        let saved = match serde_json::from_str::<SavedEpisodes>(&text) {
            Ok(saved) if saved.version == SAVED_EPISODES_VERSION => saved,
            Ok(saved) => {
                tracing::warn!(path = %path.display(), version = saved.version, "saved failure episodes of another version are ignored");
                return;
            }
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "saved failure episodes are not readable and are ignored");
                return;
            }
        };
        let mut gone: Vec<String> = Vec::new();
        {
            let mut state = self.lock();
            for saved in saved.episodes {
                if !checks.contains(&saved.check) {
                    gone.push(saved.check.clone());
                }
                tracing::info!(check = %saved.check, episode = %saved.id, "failure episode resumed from the last run");
                let now = Instant::now();
                let told = saved
                    .told
                    .iter()
                    .filter_map(|name| {
                        let route = self.routes.get(name)?;
                        Some((name.clone(), route.repeat.map(|every| now + every)))
                    })
                    .collect();
                let latest = Notification {
                    event: Event::Firing,
                    reminder: false,
                    episode_id: saved.id.clone(),
                    check: saved.check.clone(),
                    check_type: saved.check_type,
                    severity: saved.severity,
                    previous_severity: None,
                    state: saved.state,
                    started_at: saved.started_at,
                    at: saved.started_at,
                    failing: saved.failing,
                    instances: saved.instances,
                    failures: Vec::new(),
                    link: super::check_link(&self.link_base, &saved.check),
                    agent: self.agent.clone(),
                };
                state.checks.insert(
                    saved.check.clone(),
                    CheckEpisodes {
                        failing_since: Some(saved.started_at),
                        episode: Some(Episode {
                            id: saved.id,
                            started_at: saved.started_at,
                            severity: saved.severity,
                            latest,
                            routes: saved.routes,
                            told,
                            held_back: HashSet::new(),
                        }),
                    },
                );
            }
        }
        // Removed while the agent was down: nothing will ever resolve them otherwise.
        for check in gone {
            self.forget(&check);
        }
    }

    /// The open episodes as the file keeps them.
    fn saved(&self) -> String {
        let state = self.lock();
        let mut episodes: Vec<SavedEpisode> = state
            .checks
            .values()
            .filter_map(|entry| entry.episode.as_ref())
            .map(|episode| {
                let mut told: Vec<String> = episode.told.keys().cloned().collect();
                told.sort();
                SavedEpisode {
                    check: episode.latest.check.clone(),
                    id: episode.id.clone(),
                    started_at: episode.started_at,
                    severity: episode.severity,
                    state: episode.latest.state,
                    check_type: episode.latest.check_type,
                    failing: episode.latest.failing,
                    instances: episode.latest.instances,
                    routes: episode.routes.clone(),
                    told,
                }
            })
            .collect();
        drop(state);
        episodes.sort_by(|a, b| a.check.cmp(&b.check));
        serde_json::to_string_pretty(&SavedEpisodes {
            version: SAVED_EPISODES_VERSION,
            episodes,
        })
        .unwrap_or_default()
    }

    /// Writes the open episodes when they changed since `last` (then updates it): to a
    /// temporary file renamed over the old one, so a crash leaves one or the other whole.
    async fn save(&self, last: &mut String, failed_before: &mut bool) {
        let Some(path) = &self.episodes_file else {
            return;
        };
        let text = self.saved();
        if text.is_empty() || text == *last {
            return;
        }
        let temporary = path.with_extension("json.tmp");
        let written = async {
            tokio::fs::write(&temporary, text.as_bytes()).await?;
            tokio::fs::rename(&temporary, path).await
        }
        .await;
        match written {
            Ok(()) => {
                *last = text;
                *failed_before = false;
            }
            Err(error) => {
                // Once per failing stretch: a missing directory must not flood the log.
                if !*failed_before {
                    tracing::warn!(path = %path.display(), %error, "cannot save open failure episodes; a restart will not resume them");
                }
                *failed_before = true;
            }
        }
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

    /// Takes one result of `check`, which left the check in `state`.
    pub fn observe(&self, check: &CheckConfig, state: CheckState, result: &CheckResult) {
        if self.routes.is_empty() {
            return;
        }
        let notify_on = check.notify_on.as_deref().unwrap_or(&[NotifyOn::Fail]);
        let warn_notifies = notify_on.contains(&NotifyOn::Warn);
        let calm = |s: CheckState| s == CheckState::Ok || (s == CheckState::Warn && !warn_notifies);
        let mut state_lock = self.lock();
        let leading = state_lock.leading;
        let entry = state_lock.checks.entry(check.name.clone()).or_default();
        if calm(state) {
            entry.failing_since = None;
            if let Some(episode) = entry.episode.take() {
                let resolved = self.resolved(&episode, state, result);
                let routes = episode.routes.clone();
                self.deliver_resolve(&episode, &resolved, leading);
                if state_lock.recent.len() >= MAX_RECENT_RESOLVES {
                    state_lock.recent.remove(0);
                }
                state_lock.recent.push(Recent {
                    resolved: Arc::new(resolved),
                    routes,
                    at: Instant::now(),
                });
            }
            return;
        }
        entry.failing_since.get_or_insert(result.scheduled_at);
        let severity = match state {
            CheckState::Fail | CheckState::PassWait => Some(Severity::Critical),
            CheckState::Warn => Some(Severity::Warning),
            _ => None,
        };
        match (&mut entry.episode, severity) {
            (None, Some(severity)) => {
                let started_at = entry.failing_since.unwrap_or(result.scheduled_at);
                let id = episode_id(&check.name, started_at);
                let routes = self.routes_of(check);
                let latest = self.firing(check, &id, started_at, severity, None, state, result);
                let mut episode = Episode {
                    id,
                    started_at,
                    severity,
                    latest,
                    routes,
                    told: HashMap::new(),
                    held_back: HashSet::new(),
                };
                tracing::info!(check = %check.name, episode = %episode.id, severity = severity.as_str(), "failure episode begins");
                if leading {
                    self.deliver_firing(&mut episode, false);
                }
                entry.episode = Some(episode);
            }
            (Some(episode), Some(severity)) if severity != episode.severity => {
                let previous = episode.severity;
                episode.severity = severity;
                episode.latest = self.firing(
                    check,
                    &episode.id,
                    episode.started_at,
                    severity,
                    Some(previous),
                    state,
                    result,
                );
                if leading {
                    self.deliver_firing(episode, true);
                }
            }
            (Some(episode), _) => {
                // Same episode, same severity: keep the latest details for reminders.
                episode.latest = self.firing(
                    check,
                    &episode.id,
                    episode.started_at,
                    episode.severity,
                    None,
                    state,
                    result,
                );
            }
            (None, None) => {}
        }
    }

    /// A check was removed or changed by a reload: its open episode is resolved (nobody
    /// would ever close it otherwise) and its state forgotten.
    pub fn forget(&self, check: &str) {
        let mut state = self.lock();
        let leading = state.leading;
        let Some(entry) = state.checks.remove(check) else {
            return;
        };
        if let Some(episode) = entry.episode {
            let mut resolved = episode.latest.clone();
            resolved.event = Event::Resolved;
            resolved.reminder = false;
            resolved.previous_severity = None;
            resolved.at = SystemTime::now();
            tracing::info!(check, episode = %episode.id, "check removed or changed by a reload; its failure episode is resolved");
            self.deliver_resolve(&episode, &resolved, leading);
        }
    }

    /// The notifiers of `check` that exist.
    fn routes_of(&self, check: &CheckConfig) -> Vec<String> {
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

    #[allow(clippy::too_many_arguments)]
    fn firing(
        &self,
        check: &CheckConfig,
        id: &str,
        started_at: SystemTime,
        severity: Severity,
        previous_severity: Option<Severity>,
        state: CheckState,
        result: &CheckResult,
    ) -> Notification {
        Notification {
            event: Event::Firing,
            reminder: false,
            episode_id: id.to_string(),
            check: check.name.clone(),
            check_type: check.check_type(),
            severity,
            previous_severity,
            state,
            started_at,
            at: result.finished_at,
            failing: result.failing(),
            instances: result.instances(),
            failures: failures(result),
            link: super::check_link(&self.link_base, &check.name),
            agent: self.agent.clone(),
        }
    }

    fn resolved(&self, episode: &Episode, state: CheckState, result: &CheckResult) -> Notification {
        let mut resolved = episode.latest.clone();
        resolved.event = Event::Resolved;
        resolved.reminder = false;
        resolved.previous_severity = None;
        resolved.state = state;
        resolved.at = result.finished_at;
        resolved.failing = result.failing();
        resolved.instances = result.instances();
        resolved.failures = failures(result);
        resolved
    }

    /// Queues the episode's firing notification for each of its notifiers not told yet (all
    /// of them with `again`), except while a maintenance window covers the check: then it is
    /// held back, counted `suppressed` once, and sent when the window ends.
    fn deliver_firing(&self, episode: &mut Episode, again: bool) {
        let windows = self.windows();
        let window = windows.in_force(&episode.latest.check, SystemTime::now());
        let shared = Arc::new(episode.latest.clone());
        for name in &episode.routes {
            if !again && episode.told.contains_key(name) {
                continue;
            }
            let Some(route) = self.routes.get(name) else {
                continue;
            };
            if let Some(window) = window {
                if episode.held_back.insert(name.clone()) {
                    tracing::info!(check = %shared.check, notifier = %name, maintenance = window, "notification suppressed by a maintenance window");
                    self.metrics.count_notification(name, "suppressed");
                }
                continue;
            }
            if episode.held_back.remove(name) {
                tracing::info!(check = %shared.check, notifier = %name, "maintenance over and the check still fails: notifying now");
            }
            route.delivery.push(Arc::clone(&shared));
            episode.told.insert(
                name.clone(),
                route.repeat.map(|every| Instant::now() + every),
            );
        }
    }

    /// Queues the resolve for each notifier told of the firing (or, on a standby, nobody).
    fn deliver_resolve(&self, episode: &Episode, resolved: &Notification, leading: bool) {
        tracing::info!(check = %resolved.check, episode = %episode.id, "failure episode ends");
        if !leading {
            return;
        }
        let shared = Arc::new(resolved.clone());
        for name in &episode.routes {
            let Some(route) = self.routes.get(name) else {
                continue;
            };
            if !route.send_resolved {
                continue;
            }
            if episode.told.contains_key(name) {
                route.delivery.push(Arc::clone(&shared));
            } else {
                // Never told of the firing (a maintenance window held it back): nothing to resolve.
                self.metrics.count_notification(name, "suppressed");
            }
        }
    }

    /// The maintenance windows in force now.
    fn windows(&self) -> Arc<Maintenance> {
        Arc::clone(
            &self
                .maintenance
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        )
    }

    /// Takes the windows of a reloaded config (validated already, so they compile).
    fn replace_windows(&self, configs: &[MaintenanceConfig]) {
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

    /// Once a second: leadership changes, window ends, reminders, old resolves.
    async fn tick(self: Arc<Self>, stop: CancellationToken) {
        let mut leadership = self.leadership.clone();
        let mut windows = self.maintenance_updates.clone();
        // What the file holds now as far as this run knows: nothing is written until the
        // episodes differ from what was resumed (no empty file where none was needed).
        let mut last_saved = self.saved();
        let mut save_failed = false;
        loop {
            tokio::select! {
                _ = stop.cancelled() => {
                    self.save(&mut last_saved, &mut save_failed).await;
                    return;
                }
                _ = tokio::time::sleep(TICK) => {}
                changed = async {
                    match windows.as_mut() {
                        Some(w) => w.changed().await,
                        None => std::future::pending().await,
                    }
                } => match changed {
                    Ok(()) => {
                        let configs = windows.as_mut().map(|w| Arc::clone(&w.borrow_and_update()));
                        if let Some(configs) = configs {
                            self.replace_windows(&configs);
                        }
                    }
                    Err(_) => windows = None,
                },
                changed = async {
                    match leadership.as_mut() {
                        Some(l) => l.changed().await,
                        None => std::future::pending().await,
                    }
                } => {
                    if changed.is_err() {
                        leadership = None;
                    }
                }
            }
            let leading = leadership.as_ref().is_none_or(|l| *l.borrow());
            self.catch_up(leading);
            self.save(&mut last_saved, &mut save_failed).await;
        }
    }

    fn catch_up(&self, leading: bool) {
        let mut state = self.lock();
        let took_over = leading && !state.leading;
        if state.leading && !leading {
            tracing::info!("no longer leading: notifications are left to the new leader");
            for entry in state.checks.values_mut() {
                if let Some(episode) = entry.episode.as_mut() {
                    episode.told.clear();
                }
            }
        }
        state.leading = leading;
        state
            .recent
            .retain(|recent| recent.at.elapsed() < RECENT_RESOLVES_FOR);
        if took_over {
            self.take_over(&mut state);
        }
        if !leading {
            return;
        }
        let now = Instant::now();
        for entry in state.checks.values_mut() {
            let Some(episode) = entry.episode.as_mut() else {
                continue;
            };
            // A window that ended with the check still failing: notify now.
            self.deliver_firing(episode, false);
            let windows = self.windows();
            let window = windows.in_force(&episode.latest.check, SystemTime::now());
            let mut reminder = episode.latest.clone();
            reminder.reminder = true;
            reminder.previous_severity = None;
            reminder.at = SystemTime::now();
            let reminder = Arc::new(reminder);
            for (name, due) in episode.told.iter_mut() {
                let (Some(when), Some(route)) = (*due, self.routes.get(name)) else {
                    continue;
                };
                if when > now {
                    continue;
                }
                *due = route.repeat.map(|every| now + every);
                if let Some(window) = window {
                    tracing::debug!(check = %reminder.check, notifier = %name, maintenance = window, "reminder suppressed by a maintenance window");
                    self.metrics.count_notification(name, "suppressed");
                } else {
                    route.delivery.push(Arc::clone(&reminder));
                }
            }
        }
    }

    /// This checker just took the lease: repeat what the old leader may not have delivered.
    fn take_over(&self, state: &mut State) {
        let open = state
            .checks
            .values()
            .filter(|e| e.episode.is_some())
            .count();
        tracing::info!(
            open_episodes = open,
            recent_resolves = state.recent.len(),
            "leading now: sending open episodes and recent resolves again"
        );
        for recent in &state.recent {
            for name in &recent.routes {
                if let Some(route) = self.routes.get(name) {
                    if route.send_resolved {
                        route.delivery.push(Arc::clone(&recent.resolved));
                    }
                }
            }
        }
        for entry in state.checks.values_mut() {
            if let Some(episode) = entry.episode.as_mut() {
                episode.told.clear();
            }
        }
        // The firing notifications themselves go out in `catch_up`, right after.
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Every update leaves the state consistent; a poisoned one is still usable.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The failing instances of a result and why, at most `MAX_FAILURES_LISTED`.
fn failures(result: &CheckResult) -> Vec<Failure> {
    result
        .responses
        .iter()
        .filter(|response| !response.passing)
        .take(MAX_FAILURES_LISTED)
        .map(|response| {
            let mut assertions: Vec<FailedAssertion> = response
                .assertions
                .iter()
                .filter(|assertion| !assertion.passing)
                .map(|assertion| FailedAssertion {
                    key: crate::assertions::key_name(assertion.key).to_string(),
                    expected: format!(
                        "{} {} {}",
                        assertion.value,
                        crate::assertions::relationship_name(assertion.relationship),
                        assertion.operand
                    )
                    .trim()
                    .to_string(),
                    actual: assertion.actual.clone(),
                    message: assertion.message.clone(),
                })
                .collect();
            // Without assertions an HTTP check passes on a 2xx status: say that one failed.
            if let (None, true, Some(http)) =
                (&response.error, assertions.is_empty(), &response.http)
            {
                assertions.push(FailedAssertion {
                    key: "status_code".to_string(),
                    expected: "2xx".to_string(),
                    actual: http.status.to_string(),
                    message: Some(format!("status {} is not a 2xx", http.status)),
                });
            }
            Failure {
                instance: response.target.clone(),
                error_kind: response.error.as_ref().map(|error| error.kind.as_str()),
                error: response.error.as_ref().map(|error| error.message.clone()),
                assertions,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notify::{Answer, Notifier, SendError};
    use futures_util::future::BoxFuture;

    /// A receiver that takes everything and remembers it.
    #[derive(Debug, Default)]
    struct Recorder(Mutex<Vec<Notification>>);

    impl Notifier for Recorder {
        fn send<'a>(
            &'a self,
            notification: &'a Notification,
        ) -> BoxFuture<'a, Result<Answer, SendError>> {
            self.0.lock().unwrap().push(notification.clone());
            Box::pin(async { Ok(Answer("ok".to_string())) })
        }
    }

    impl Recorder {
        fn taken(&self) -> Vec<Notification> {
            self.0.lock().unwrap().clone()
        }

        async fn wait_for(&self, count: usize) -> Vec<Notification> {
            for _ in 0..500 {
                if self.taken().len() >= count {
                    return self.taken();
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            panic!("expected {count} notifications, got {:?}", self.taken());
        }
    }

    fn setup(
        check_toml: &str,
        leadership: Option<watch::Receiver<bool>>,
    ) -> (
        Arc<Notifications>,
        Arc<Recorder>,
        CheckConfig,
        CancellationToken,
    ) {
        let notifier: crate::config::NotifierConfig = toml::from_str(
            "name = \"rec\"\ntype = \"webhook\"\nurl = \"http://x/\"\ndefault = true",
        )
        .unwrap();
        let recorder = Arc::new(Recorder::default());
        let stop = CancellationToken::new();
        let notifications = Notifications::start(
            NotificationsOptions {
                notifiers: vec![(notifier, Arc::clone(&recorder) as Arc<dyn Notifier>)],
                maintenance: Maintenance::default(),
                maintenance_updates: None,
                agent: "test".to_string(),
                link_base: "http://127.0.0.1:9464".to_string(),
                metrics: Arc::new(Metrics::new()),
                leadership,
                episodes_file: None,
                checks: vec!["web".to_string()],
            },
            &stop,
            &TaskTracker::new(),
        );
        let check: CheckConfig = toml::from_str(check_toml).unwrap();
        (notifications, recorder, check, stop)
    }

    const CHECK: &str =
        "name = \"web\"\ntype = \"http\"\nurl = \"http://127.0.0.1/\"\ninterval = \"1s\"\n";

    /// A result of run `run` (scheduled `run` seconds after the epoch) with `failing` of two
    /// instances failing.
    fn result(run: u64, failing: usize) -> CheckResult {
        let at =
            humantime::format_rfc3339_micros(SystemTime::UNIX_EPOCH + Duration::from_secs(run));
        serde_json::from_value(serde_json::json!({
            "version": 1, "check": "web", "type": "http", "agent": "runner", "run_id": run,
            "scheduled_at": at.to_string(), "finished_at": at.to_string(),
            "passing": failing == 0, "responses": [],
            "degraded": {"form": "summarised", "instances": 2, "failing": failing, "omitted": 2}
        }))
        .unwrap()
    }

    fn start_of(run: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(run)
    }

    #[tokio::test]
    async fn a_standby_tells_nobody_and_on_taking_over_repeats_open_episodes_and_recent_resolves() {
        let (leading, leadership) = watch::channel(false);
        let (notifications, recorder, check, stop) = setup(CHECK, Some(leadership));
        // Episode A fails and recovers, episode B fails: all while standing by.
        notifications.observe(&check, CheckState::FailWait, &result(10, 2));
        notifications.observe(&check, CheckState::Fail, &result(11, 2));
        notifications.observe(&check, CheckState::Ok, &result(12, 0));
        notifications.observe(&check, CheckState::Fail, &result(13, 2));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(recorder.taken().is_empty(), "a standby delivers nothing");
        leading.send_replace(true);
        let taken = recorder.wait_for(2).await;
        assert_eq!(
            taken
                .iter()
                .map(|n| (n.event, n.episode_id.clone()))
                .collect::<Vec<_>>(),
            [
                (Event::Resolved, episode_id("web", start_of(10))),
                (Event::Firing, episode_id("web", start_of(13))),
            ],
            "the recent resolve, then the open episode, under the ids every checker computes"
        );
        notifications.observe(&check, CheckState::Ok, &result(14, 0));
        let taken = recorder.wait_for(3).await;
        assert_eq!(taken[2].event, Event::Resolved);
        assert_eq!(taken[2].episode_id, episode_id("web", start_of(13)));
        assert_eq!(taken[2].started_at, start_of(13));
        stop.cancel();
    }

    #[tokio::test]
    async fn warnings_notify_when_asked_and_a_worse_state_keeps_the_episode() {
        let check = format!("{CHECK}notify_on = [\"fail\", \"warn\"]\n");
        let (notifications, recorder, check, stop) = setup(&check, None);
        notifications.observe(&check, CheckState::Warn, &result(20, 1));
        notifications.observe(&check, CheckState::FailWait, &result(21, 2));
        notifications.observe(&check, CheckState::Fail, &result(22, 2));
        notifications.observe(&check, CheckState::PassWait, &result(23, 0));
        notifications.observe(&check, CheckState::Ok, &result(24, 0));
        let taken = recorder.wait_for(3).await;
        let summary: Vec<(Event, Severity, Option<Severity>)> = taken
            .iter()
            .map(|n| (n.event, n.severity, n.previous_severity))
            .collect();
        assert_eq!(
            summary,
            [
                (Event::Firing, Severity::Warning, None),
                (Event::Firing, Severity::Critical, Some(Severity::Warning)),
                (Event::Resolved, Severity::Critical, None),
            ]
        );
        for notification in &taken {
            assert_eq!(notification.episode_id, episode_id("web", start_of(20)));
        }
        assert_eq!(taken[1].failing, 2);
        assert_eq!(taken[2].failing, 0);
        stop.cancel();
    }

    #[tokio::test]
    async fn without_warn_a_warning_is_calm_and_ends_nothing_it_did_not_start() {
        let (notifications, recorder, check, stop) = setup(CHECK, None);
        notifications.observe(&check, CheckState::Warn, &result(30, 1));
        notifications.observe(&check, CheckState::FailWait, &result(31, 2));
        notifications.observe(&check, CheckState::Warn, &result(32, 1));
        notifications.observe(&check, CheckState::FailWait, &result(33, 2));
        notifications.observe(&check, CheckState::Fail, &result(34, 2));
        notifications.observe(&check, CheckState::Warn, &result(35, 1));
        let taken = recorder.wait_for(2).await;
        assert_eq!(
            taken.iter().map(|n| n.event).collect::<Vec<_>>(),
            [Event::Firing, Event::Resolved]
        );
        // The episode began with the failing run after the last calm one.
        assert_eq!(taken[0].episode_id, episode_id("web", start_of(33)));
        assert_eq!(taken[1].state, CheckState::Warn);
        stop.cancel();
    }

    #[test]
    fn episode_ids_depend_on_the_check_and_the_start_only() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456);
        let id = episode_id("web", start);
        assert_eq!(id.len(), 32);
        assert_eq!(id, episode_id("web", start));
        // Nanoseconds below the microsecond do not travel on the bus; they do not count.
        assert_eq!(id, episode_id("web", start + Duration::from_nanos(999)));
        assert_ne!(id, episode_id("api", start));
        assert_ne!(id, episode_id("web", start + Duration::from_micros(1)));
    }
}
