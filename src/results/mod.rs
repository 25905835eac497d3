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

use crate::bus::{Bus, Message, Subscription};

use crate::config::CheckConfig;
use crate::delivery::cut;
use crate::history::{Recorder, TransitionRecord};
use crate::lease::Leadership;
use crate::messages::{self, CheckResult, Payload, StateEvent, MESSAGE_VERSION};
use crate::metrics::{CheckToLabels, Metrics, ReasonLabels, SubjectLabels};
use crate::model::CheckState;
use crate::notify::Notifications;
use crate::state::{StatePolicy, StateTracker, Transition};
use crate::subjects::Subjects;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::SystemTime;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Bytes of each response body kept with a check's latest result. Runners publish the first
/// `delivery::BUS_BODY_BYTES` of each body; the store cuts again so that a result from a
/// runner of another build cannot make many checks with large pages fill memory.
pub const STORED_BODY_BYTES: usize = crate::delivery::BUS_BODY_BYTES;

/// The configured checks, as the current config says; reloads replace it.
pub type ChecksWatch = watch::Receiver<Arc<Vec<CheckConfig>>>;

/// What the API shows of one check.
#[derive(Debug, Clone)]
pub struct CheckStatus {
    pub latest: Option<Arc<CheckResult>>,
    pub state: CheckState,
    pub since: SystemTime,
}

/// The latest result and state of each check.
#[derive(Debug, Default)]
pub struct ResultStore {
    checks: RwLock<HashMap<String, CheckStatus>>,
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

    fn update(&self, check: &str, status: CheckStatus) {
        self.write().insert(check.to_string(), status);
    }

    fn remove(&self, check: &str) {
        self.write().remove(check);
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

/// Cuts what a decoded result keeps to what the API holds: the vectors' slack, and bodies past
/// `STORED_BODY_BYTES`.
fn trim(result: &mut CheckResult) {
    result.responses.shrink_to_fit();
    for response in &mut result.responses {
        response.assertions.shrink_to_fit();
        if let Some(http) = response.http.as_mut() {
            cut(&mut http.body, STORED_BODY_BYTES);
        }
        if let Some(tcp) = response.tcp.as_mut() {
            cut(&mut tcp.body, STORED_BODY_BYTES);
        }
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
}

/// Consumes results from `subscription` until `stop` is cancelled; results already delivered
/// by then are still recorded, so the last runs of a shutdown are not lost.
pub async fn consume(
    mut subscription: Subscription,
    context: SinkContext,
    stop: CancellationToken,
) {
    let SinkContext {
        store,
        metrics,
        mut checks,
        events,
        notifications,
        history,
    } = context;
    let mut sink = Sink {
        store,
        metrics,
        events,
        notifications,
        history,
        known: Arc::new(Vec::new()),
        by_name: HashMap::new(),
        trackers: HashMap::new(),
    };
    // /metrics derives probe_* and bastion_check_state from the store at each scrape.
    sink.metrics
        .attach_exposition(Arc::new(exposition::ProbeSeries::new(Arc::clone(
            &sink.store,
        ))));
    let current = Arc::clone(&checks.borrow_and_update());
    sink.apply_checks(&current);
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

struct Sink {
    store: Arc<ResultStore>,
    metrics: Arc<Metrics>,
    events: Option<EventOutlet>,
    notifications: Option<Arc<Notifications>>,
    history: Option<Recorder>,
    /// The configured checks, by name.
    known: Arc<Vec<CheckConfig>>,
    /// Index of each configured check in `known`.
    by_name: HashMap<String, usize>,
    trackers: HashMap<String, StateTracker>,
}

impl Sink {
    /// Follows a new set of configured checks: removed and changed checks are forgotten (a
    /// changed check starts over), new ones start `OK`.
    fn apply_checks(&mut self, checks: &Arc<Vec<CheckConfig>>) {
        let next: HashMap<String, usize> = checks
            .iter()
            .enumerate()
            .map(|(index, check)| (check.name.clone(), index))
            .collect();
        let stale: Vec<String> = self
            .by_name
            .iter()
            .filter(|(name, index)| {
                let before = self.known.get(**index);
                let after = next.get(*name).and_then(|index| checks.get(*index));
                before != after
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in stale {
            self.forget(&name);
        }
        for name in next.keys() {
            if !self.trackers.contains_key(name) {
                let tracker = StateTracker::new(Instant::now(), SystemTime::now());
                self.store.update(
                    name,
                    CheckStatus {
                        latest: None,
                        state: tracker.state(),
                        since: tracker.since(),
                    },
                );
                self.trackers.insert(name.clone(), tracker);
            }
        }
        self.known = Arc::clone(checks);
        self.by_name = next;
    }

    fn forget(&mut self, check: &str) {
        self.metrics.forget_check_results(check);
        let tracker = self.trackers.remove(check);
        // An incident open for a check that a reload removed or changed would otherwise
        // stay open: nothing will ever record its recovery.
        let incident_open = tracker.is_some_and(|tracker| {
            matches!(tracker.state(), CheckState::Fail | CheckState::PassWait)
        });
        if let Some(history) = self.history.as_ref().filter(|_| self.leads()) {
            history.forget(check, incident_open, SystemTime::now());
        }
        self.store.remove(check);
        if let Some(notifications) = &self.notifications {
            notifications.forget(check);
        }
    }

    async fn handle(&mut self, message: &Message) {
        let result = match message.payload.result() {
            Ok(result) => result,
            Err(error) => {
                tracing::warn!(subject = %message.subject, reason = error.reason(), %error, "dropping a bad result");
                self.metrics
                    .bus_decode_errors
                    .get_or_create(&ReasonLabels {
                        reason: error.reason(),
                    })
                    .inc();
                return;
            }
        };
        let known = Arc::clone(&self.known);
        let Some(config) = self
            .by_name
            .get(&result.check)
            .and_then(|index| known.get(*index))
        else {
            // A run that was in flight when its check was removed, or a check configured
            // elsewhere: its label values must not enter /metrics. The runner in this process
            // may have recorded the run's duration already; that goes too.
            tracing::debug!(check = %result.check, "result of a check that is not configured; dropped");
            self.metrics.forget_check_results(&result.check);
            return;
        };
        let policy = StatePolicy::for_check(config);
        let current = self.store.status(&result.check);
        if let Some(latest) = current.as_ref().and_then(|status| status.latest.as_ref()) {
            if latest.scheduled_at > result.scheduled_at {
                return; // an older run arriving late says nothing about now
            }
        }
        tracing::debug!(check = %result.check, passing = result.passing, responses = result.responses.len(), "result");

        // A degraded result counts the instances it left out too.
        let failing = result.failing();
        let tracker = self
            .trackers
            .entry(result.check.clone())
            .or_insert_with(|| StateTracker::new(Instant::now(), SystemTime::now()));
        let transition = tracker.observe(failing, policy, Instant::now(), result.finished_at);
        let status = CheckStatus {
            latest: None,
            state: tracker.state(),
            since: tracker.since(),
        };
        if let Some(history) = self.history.as_ref().filter(|_| self.leads()) {
            history.run(&result, config);
        }
        let result = to_keep(result, &message.payload);
        self.store.update(
            &result.check,
            CheckStatus {
                latest: Some(Arc::clone(&result)),
                ..status
            },
        );
        if let Some(notifications) = &self.notifications {
            notifications.observe(config, status.state, &result);
        }
        if let Some(transition) = transition {
            self.announce(&result, transition, failing).await;
        }
    }

    /// Counts a change of state, logs it and publishes its event.
    async fn announce(&self, result: &CheckResult, transition: Transition, failing: usize) {
        self.metrics
            .check_transitions
            .get_or_create(&CheckToLabels {
                check: result.check.clone(),
                to: transition.to.as_str(),
            })
            .inc();
        tracing::info!(check = %result.check, from = %transition.from, to = %transition.to, failing, "check state changed");
        if let Some(history) = self.history.as_ref().filter(|_| self.leads()) {
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
            self.metrics
                .bus_publish_errors
                .get_or_create(&SubjectLabels { subject: "events" })
                .inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_bodies_are_cut_on_a_character_boundary() {
        let mut text = "é".repeat(STORED_BODY_BYTES); // two bytes each
        cut(&mut text, STORED_BODY_BYTES + 1);
        assert_eq!(text.len(), STORED_BODY_BYTES);
        let mut short = "ok".to_string();
        cut(&mut short, STORED_BODY_BYTES);
        assert_eq!(short, "ok");
    }
}
