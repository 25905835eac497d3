//! What notifications keep across a restart, in the `deliveries` section of the agent's saved
//! state (`crate::saved_state`), by episode id: for an open episode, the receivers that
//! accepted its trigger (and those a trigger was on its way to, whose outcome a crash leaves
//! unknown); for an ended one, its resolve until every receiver it is due to accepted it. The
//! outcomes the deliveries report back (`Outcomes`) keep it up to date. At start, undelivered
//! resolves go out again, and open episodes wait for the sink to resume them (`resume`): a
//! receiver that had accepted the trigger is not told again, the others are.

use super::message::ResolveFacts;
use super::queue::{Outcome, Outcomes};
use super::routing::{Notifications, Open, Receiver, Resolving, Resumed, State, MAX_RESOLVING};
use super::{Event, Notification, Severity};
use crate::config::CheckConfig;
use crate::episode::Episode;
use crate::model::{CheckState, CheckType};
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

/// The saved entry of an open episode whose trigger `accepted` took: for an earlier
/// version's saved state, taken over at start.
pub fn open_delivery(
    check: &str,
    check_type: CheckType,
    accepted: BTreeMap<String, Severity>,
) -> serde_json::Value {
    serde_json::to_value(SavedDelivery::Open {
        check: check.to_string(),
        check_type,
        accepted,
        pending: BTreeSet::new(),
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
                    let notification = Arc::new(self.origin.resolve(&resolve, None));
                    tracing::info!(check = %resolve.episode.check, episode = %id, receivers = pending.len(), "resolve not delivered by the last run; sending it again");
                    self.saved.put(
                        SAVED_DELIVERIES,
                        &id,
                        &SavedDelivery::Resolving {
                            resolve: resolve.clone(),
                            pending: pending.clone(),
                        },
                    );
                    if state.leading {
                        for name in &pending {
                            if let Some(route) = self.routes.get(name) {
                                route.delivery.push(Arc::clone(&notification));
                            }
                        }
                    }
                    state.resolving_order.push_back(id.clone());
                    state.resolving.insert(
                        id,
                        Resolving {
                            resolve: notification,
                            saved: resolve,
                            pending,
                        },
                    );
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
        guard: &mut State,
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
    /// A receiver accepted (or will never get) a notification: remember it, and save it.
    fn outcome(&self, notifier: &str, notification: &Notification, outcome: Outcome) {
        let mut guard = self.lock();
        match (notification.event, outcome) {
            (Event::Firing, _) => {
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
                let mut first_reminder = None;
                if outcome == Outcome::Accepted && !notification.reminder {
                    receiver.accepted = Some(notification.severity);
                    if let (None, Some(route)) = (receiver.reminder_due, self.routes.get(notifier))
                    {
                        first_reminder = route.repeat.map(|every| Instant::now() + every);
                        receiver.reminder_due = first_reminder;
                    }
                }
                let check = open.episode.check.clone();
                self.save_open(open);
                if let Some(due) = first_reminder {
                    guard
                        .reminders
                        .push(Reverse((due, check, notifier.to_string())));
                }
            }
            (Event::Resolved, Outcome::Accepted | Outcome::Lost) => {
                let id = &notification.episode_id;
                let Some(resolving) = guard.resolving.get_mut(id) else {
                    return;
                };
                resolving.pending.remove(notifier);
                if resolving.pending.is_empty() {
                    guard.resolving.remove(id);
                    guard.resolving_order.retain(|other| other != id);
                    self.saved.remove(SAVED_DELIVERIES, id);
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
            // A resolve unsent at stop stays pending, and saved so, for the next start.
            _ => {}
        }
    }
}
