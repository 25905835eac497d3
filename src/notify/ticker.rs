//! What time brings to notifications, looked at once a second: leadership changes (a new
//! leader repeats open episodes and recent resolves; one that steps down forgets who it
//! told), the start and end of maintenance windows (a check still failing when the window
//! that held its notification back ends is notified then), reminders every `repeat_interval`
//! while an episode stays open, and old resolves aged out.
//!
//! A tick costs the same with one open episode or ten thousand: reminders wait in a heap of
//! due times and only the due ones are touched; the windows are evaluated once per tick, not
//! per check, and the checks held back by a window are looked at again only when the set of
//! windows in force changed.

use super::routing::{Notifications, RECENT_RESOLVES_FOR, RETRIGGER_AFTER};
use std::cmp::Reverse;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How often reminders, window ends and leadership are looked at.
const TICK: Duration = Duration::from_secs(1);

impl Notifications {
    /// Once a second until `stop`: leadership changes, window ends, reminders, old resolves.
    pub(super) async fn tick(self: Arc<Self>, stop: CancellationToken) {
        let mut leadership = self.leadership.clone();
        let mut windows = self.maintenance_updates.clone();
        let mut in_force = self.windows().in_force_at(SystemTime::now());
        loop {
            let mut replaced = false;
            tokio::select! {
                _ = stop.cancelled() => return,
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
                            replaced = true;
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
            let now_in_force = self.windows().in_force_at(SystemTime::now());
            let windows_changed = replaced || now_in_force != in_force;
            in_force = now_in_force;
            self.catch_up(leading, windows_changed);
        }
    }

    fn catch_up(&self, leading: bool, windows_changed: bool) {
        let mut guard = self.lock();
        if guard.leading && !leading {
            self.step_down(&mut guard);
        }
        let took_over = leading && !guard.leading;
        guard.leading = leading;
        while guard
            .recent
            .front()
            .is_some_and(|recent| recent.at.elapsed() >= RECENT_RESOLVES_FOR)
        {
            guard.recent.pop_front();
        }
        if took_over {
            self.take_over(&mut guard);
        }
        if !leading {
            return;
        }
        if windows_changed {
            // A window began or ended: what it held back may go now.
            let held: Vec<String> = guard.held.iter().cloned().collect();
            for check in held {
                if let Some(mut open) = guard.open.remove(&check) {
                    self.fire(&mut guard, &mut open);
                    guard.open.insert(check, open);
                }
            }
        }
        self.remind(&mut guard);
    }

    /// Sends what is due: reminders to the receivers that accepted an episode, the trigger
    /// again to those that never did (it was given up), each with its next time; and
    /// resolves given up, again. Stale entries (the episode ended, the receiver was told
    /// afresh) are dropped as they come due, and in one go once they outnumber live ones.
    fn remind(&self, guard: &mut super::routing::RoutingState) {
        let now = Instant::now();
        let windows = self.windows();
        let wall = SystemTime::now();
        while let Some(Reverse((due, _, _))) = guard.reminders.peek() {
            if *due > now {
                break;
            }
            let Some(Reverse((due, check, notifier))) = guard.reminders.pop() else {
                break;
            };
            let Some(route) = self.routes.get(&notifier) else {
                continue;
            };
            let Some(open) = guard.open.get_mut(&check) else {
                continue; // the episode ended
            };
            let Some(receiver) = open.receivers.get_mut(&notifier) else {
                continue;
            };
            if receiver.reminder_due != Some(due) {
                continue; // superseded: the receiver was told afresh since
            }
            // Told means told of the episode as it is now: a receiver that took the warning
            // but never the failure is sent the failure again, not reminded of the warning.
            let told = receiver.accepted == Some(open.episode.severity);
            let every = match (told, route.repeat) {
                (_, Some(every)) => every,
                (false, None) => RETRIGGER_AFTER,
                (true, None) => {
                    receiver.reminder_due = None;
                    continue;
                }
            };
            let next = now + every;
            receiver.reminder_due = Some(next);
            if let Some(window) = windows.in_force(&check, wall) {
                tracing::debug!(check = %check, notifier = %notifier, maintenance = window, "reminder suppressed by a maintenance window");
                self.metrics.count(&notifier, "suppressed");
            } else if told {
                let mut reminder = self.origin.firing(
                    &open.episode,
                    open.check_type,
                    open.state,
                    None,
                    open.latest.as_deref(),
                );
                reminder.reminder = true;
                reminder.at = wall;
                route.delivery.push(Arc::new(reminder));
            } else if receiver.queued.is_none() {
                // Never accepted (given up before): the trigger itself, once more.
                tracing::info!(check = %check, notifier = %notifier, episode = %open.episode.id, "sending the trigger again: the receiver never took it");
                let severity = open.episode.severity;
                receiver.queued = Some(severity);
                let previous = receiver.accepted.filter(|before| *before != severity);
                route.delivery.push(Arc::new(self.origin.firing(
                    &open.episode,
                    open.check_type,
                    open.state,
                    previous,
                    open.latest.as_deref(),
                )));
            }
            guard.reminders.push(Reverse((next, check, notifier)));
        }
        while let Some(Reverse((due, _, _))) = guard.resolve_retries.peek() {
            if *due > now {
                break;
            }
            let Some(Reverse((_, id, notifier))) = guard.resolve_retries.pop() else {
                break;
            };
            let (Some(resolving), Some(route)) =
                (guard.resolving.get(&id), self.routes.get(&notifier))
            else {
                continue;
            };
            if resolving.pending.contains(&notifier) {
                tracing::info!(check = %resolving.resolve.check, notifier = %notifier, episode = %id, "sending the resolve again: the receiver never took it");
                route.delivery.push(Arc::clone(&resolving.resolve));
            }
        }
        self.compact_reminders(guard);
    }

    /// Rebuilds the reminders heap from the live entries once stale ones outnumber them
    /// (episodes that ended, receivers told afresh), so it stays within twice the live
    /// count: amortised O(1) per entry.
    fn compact_reminders(&self, guard: &mut super::routing::RoutingState) {
        // At most one live entry per receiver of an open episode: below twice that, nothing to
        // do, and nothing is counted (a tick stays O(1) in the open episodes).
        let most = guard.open.len().saturating_mul(self.routes.len().max(1));
        if guard.reminders.len() <= 2 * most + 1024 {
            return;
        }
        let live: usize = guard
            .open
            .values()
            .map(|open| {
                open.receivers
                    .values()
                    .filter(|r| r.reminder_due.is_some())
                    .count()
            })
            .sum();
        if guard.reminders.len() <= 2 * live + 1024 {
            return;
        }
        let open = &guard.open;
        guard.reminders.retain(|Reverse((due, check, notifier))| {
            open.get(check)
                .and_then(|open| open.receivers.get(notifier))
                .is_some_and(|receiver| receiver.reminder_due == Some(*due))
        });
    }
}
