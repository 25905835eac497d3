//! What notifications keep across a restart, in the `deliveries` section of the agent's saved
//! state (`crate::saved_state`), by episode id: for an open episode, the receivers that
//! accepted its trigger (and those a trigger was on its way to, whose outcome a crash leaves
//! unknown); for an ended one, its resolve until every receiver it is due to accepted it. The
//! outcomes the deliveries report back (`Outcomes`) keep it up to date. At start, undelivered
//! resolves go out again, and open episodes wait for the sink to resume them (`resume`): a
//! receiver that had accepted the trigger is not told again, the others are.

use super::message::ResolveFacts;
use super::queue::{Outcome, Outcomes};
use super::routing::{
    Notifications, Open, Receiver, Resolving, Resumed, RoutingState, MAX_RESOLVING, RESOLVE_FOR,
    RETRIGGER_AFTER,
};
use crate::checks::CheckType;
use crate::config::CheckConfig;
use crate::episode::Episode;
use crate::model::{CheckState, Severity};
use crate::receivers::{Event, Notification};
use serde::{Deserialize, Serialize};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use tokio::time::Instant;

/// The section of the saved state that holds who accepted what.
pub const SAVED_DELIVERIES: &str = "deliveries";

/// One entry of the `deliveries` section, by episode id.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(super) enum SavedDelivery {
    /// An open episode: the receivers that accepted its firing, and at which severity.
    Open {
        check: String,
        check_type: CheckType,
        accepted: BTreeMap<String, Severity>,
        /// Receivers a firing notification was on its way to: whether they got it is
        /// unknown after a crash, so they count as told for the resolve, and are told again.
        #[serde(default)]
        pending: BTreeSet<String>,
    },
    /// An ended episode whose resolve these receivers have yet to accept.
    Resolving {
        resolve: ResolveFacts,
        pending: BTreeSet<String>,
    },
}

/// The saved entry of an open episode whose trigger was on its way to `maybe_told`: for an
/// earlier version's saved state, taken over at start.
pub fn open_delivery(
    check: &str,
    check_type: CheckType,
    maybe_told: BTreeSet<String>,
) -> serde_json::Value {
    serde_json::to_value(SavedDelivery::Open {
        check: check.to_string(),
        check_type,
        accepted: BTreeMap::new(),
        pending: maybe_told,
    })
    .unwrap_or(serde_json::Value::Null)
}

impl Notifications {
    /// Forgets what was saved of an episode's deliveries.
    pub(super) fn unsave(&self, episode_id: &str) {
        self.saved.remove(SAVED_DELIVERIES, episode_id);
    }

    /// Takes back what the last run saved; undelivered resolves go out now when leading
    /// (else on taking the lease).
    pub(super) fn take_back(&self, resumed: BTreeMap<String, serde_json::Value>) {
        let mut state = self.lock();
        for (id, value) in resumed {
            match serde_json::from_value::<SavedDelivery>(value) {
                Ok(SavedDelivery::Open {
                    check_type,
                    accepted,
                    pending,
                    ..
                }) => {
                    state.resumed.insert(
                        id,
                        Resumed {
                            check_type,
                            accepted,
                            pending,
                        },
                    );
                }
                Ok(SavedDelivery::Resolving { resolve, pending }) => {
                    let pending = self.resolvable(pending);
                    if pending.is_empty() {
                        continue;
                    }
                    let notification = Arc::new(self.origin.resolve(&resolve, None));
                    tracing::info!(check = %resolve.episode.check, episode = %id, receivers = pending.len(), "resolve not delivered by the last run; sending it again");
                    if state.leading {
                        for name in &pending {
                            if let Some(route) = self.routes.get(name) {
                                route.delivery.push(Arc::clone(&notification));
                            }
                        }
                    }
                    self.keep_resolving(&mut state, notification, resolve, pending);
                }
                Err(error) => {
                    tracing::warn!(episode = %id, %error, "a saved notification entry is not readable and is ignored");
                }
            }
        }
    }

    /// The sink resumed `episode` of `check` from the last run, the check being in `state`:
    /// its receivers are those that had accepted it, and the rest are told with the first
    /// result that shows it still open.
    pub fn resume(&self, check: &CheckConfig, episode: &Episode, state: CheckState) {
        if self.routes.is_empty() {
            return;
        }
        let mut guard = self.lock();
        let resumed = guard.resumed.remove(&episode.id);
        let now = Instant::now();
        let mut receivers = HashMap::new();
        for name in resumed.iter().flat_map(|r| r.pending.iter()) {
            receivers.insert(
                name.clone(),
                Receiver {
                    maybe_told: true,
                    ..Receiver::default()
                },
            );
        }
        for (name, severity) in resumed.map(|r| r.accepted).unwrap_or_default() {
            let Some(route) = self.routes.get(&name) else {
                continue;
            };
            let due = route.repeat.map(|every| now + every);
            if let Some(due) = due {
                guard
                    .reminders
                    .push(Reverse((due, check.name.clone(), name.clone())));
            }
            receivers.insert(
                name,
                Receiver {
                    accepted: Some(severity),
                    reminder_due: due,
                    ..Receiver::default()
                },
            );
        }
        let open = Open {
            episode: episode.clone(),
            check_type: check.check_type(),
            state,
            notify: check.notify.clone(),
            routes: self.routes_of(check),
            latest: None,
            receivers,
        };
        self.save_open(&open);
        guard.open.insert(check.name.clone(), open);
    }

    /// Keeps a resolve (saved) until every receiver in `pending` accepted it or gave up.
    pub(super) fn keep_resolving(
        &self,
        guard: &mut RoutingState,
        resolve: Arc<Notification>,
        saved: ResolveFacts,
        pending: BTreeSet<String>,
    ) {
        let id = resolve.episode_id.clone();
        while guard.resolving.len() >= MAX_RESOLVING {
            let Some(oldest) = guard.resolving_order.pop_front() else {
                break;
            };
            if let Some(gone) = guard.resolving.remove(&oldest) {
                tracing::warn!(check = %gone.resolve.check, episode = %oldest, "too many resolves wait for receivers; the oldest is no longer kept across restarts");
                self.saved.remove(SAVED_DELIVERIES, &oldest);
            }
        }
        self.saved.put(
            SAVED_DELIVERIES,
            &id,
            &SavedDelivery::Resolving {
                resolve: saved.clone(),
                pending: pending.clone(),
            },
        );
        guard.resolving_order.push_back(id.clone());
        guard.resolving.insert(
            id,
            Resolving {
                resolve,
                saved,
                pending,
            },
        );
        // Ids of resolves delivered since stay in the order until met; drop them in one go
        // once they outnumber the live ones, so the order stays within twice the live count.
        if guard.resolving_order.len() > 2 * guard.resolving.len() + 1024 {
            let live = &guard.resolving;
            guard.resolving_order.retain(|id| live.contains_key(id));
        }
    }

    /// Saves who accepted `open`, and to whom a firing is on its way (nothing when neither).
    pub(super) fn save_open(&self, open: &Open) {
        let accepted: BTreeMap<String, Severity> = open
            .receivers
            .iter()
            .filter_map(|(name, receiver)| receiver.accepted.map(|s| (name.clone(), s)))
            .collect();
        let pending: BTreeSet<String> = open
            .receivers
            .iter()
            .filter(|(_, receiver)| receiver.queued.is_some() || receiver.maybe_told)
            .map(|(name, _)| name.clone())
            .collect();
        if accepted.is_empty() && pending.is_empty() {
            self.saved.remove(SAVED_DELIVERIES, &open.episode.id);
        } else {
            self.saved.put(
                SAVED_DELIVERIES,
                &open.episode.id,
                &SavedDelivery::Open {
                    check: open.episode.check.clone(),
                    check_type: open.check_type,
                    accepted,
                    pending,
                },
            );
        }
    }
}

impl Outcomes for Notifications {
    /// What became of a notification at a receiver: remembered, and saved. A trigger or a
    /// resolve given up (the receiver stayed down through every attempt, or its queue
    /// overflowed) is sent again later, while its episode lasts or its resolve is due; one
    /// refused (the receiver's settings are wrong) is not.
    fn outcome(&self, notifier: &str, notification: &Notification, outcome: Outcome) {
        let mut guard = self.lock();
        let guard = &mut *guard;
        match notification.event {
            Event::Firing => {
                let Some(open) = guard
                    .open
                    .get_mut(&notification.check)
                    .filter(|open| open.episode.id == notification.episode_id)
                else {
                    return;
                };
                let Some(receiver) = open.receivers.get_mut(notifier) else {
                    return;
                };
                if receiver.queued == Some(notification.severity) {
                    receiver.queued = None;
                }
                // The outcome is known now, whatever it was.
                receiver.maybe_told = false;
                let route = self.routes.get(notifier);
                let next = match outcome {
                    Outcome::Accepted if !notification.reminder => {
                        receiver.accepted = Some(notification.severity);
                        route.and_then(|route| route.repeat)
                    }
                    // Told again at the next reminder, or after `RETRIGGER_AFTER`.
                    Outcome::GaveUp if receiver.accepted != Some(notification.severity) => Some(
                        route
                            .and_then(|route| route.repeat)
                            .unwrap_or(RETRIGGER_AFTER),
                    ),
                    _ => None,
                };
                // A reminder already scheduled stays; otherwise schedule this one.
                let due = match (receiver.reminder_due, next) {
                    (None, Some(after)) => {
                        let due = Instant::now() + after;
                        receiver.reminder_due = Some(due);
                        Some(due)
                    }
                    _ => None,
                };
                let check = open.episode.check.clone();
                self.save_open(open);
                if let Some(due) = due {
                    guard
                        .reminders
                        .push(Reverse((due, check, notifier.to_string())));
                }
            }
            Event::Resolved => {
                let id = &notification.episode_id;
                let Some(resolving) = guard.resolving.get_mut(id) else {
                    return;
                };
                match outcome {
                    Outcome::Accepted | Outcome::Refused => {
                        resolving.pending.remove(notifier);
                    }
                    Outcome::GaveUp
                        if resolving
                            .saved
                            .at
                            .elapsed()
                            .is_ok_and(|age| age >= RESOLVE_FOR) =>
                    {
                        // A receiver down for a day will not want a day-old resolve any more
                        // than it can take it: stop, and say so.
                        tracing::error!(check = %resolving.saved.episode.check, episode = %id, notifier, "the resolve was never accepted in a day of trying; giving it up");
                        resolving.pending.remove(notifier);
                    }
                    Outcome::GaveUp => {
                        guard.resolve_retries.push(Reverse((
                            Instant::now() + RETRIGGER_AFTER,
                            id.clone(),
                            notifier.to_string(),
                        )));
                        return;
                    }
                    Outcome::Unsent => return,
                }
                if resolving.pending.is_empty() {
                    guard.resolving.remove(id);
                    self.unsave(id);
                } else {
                    self.saved.put(
                        SAVED_DELIVERIES,
                        id,
                        &SavedDelivery::Resolving {
                            resolve: resolving.saved.clone(),
                            pending: resolving.pending.clone(),
                        },
                    );
                }
            }
            Event::Test => {}
        }
    }
}
