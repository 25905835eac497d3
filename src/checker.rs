//! The checker: one scheduler task for all checks, driven by a single timer over a heap of due
//! times (no task or timer per check). Each check runs first at a stable offset inside its
//! interval, derived from a hash of its name, so load spreads and the phase survives restarts;
//! then every interval, without drift. A tick whose previous run is still in flight is skipped
//! and counted, never queued. The checker never blocks on the bus: a refused publish is counted.
//! On a config reload it keeps each unchanged check's due time and run in flight, starts new
//! and changed checks at their phase, and drops removed ones.

use crate::bus::{Bus, BusError, Subscription};

use crate::config::CheckConfig;
use crate::messages::{CheckRequest, Payload, MESSAGE_VERSION};
use crate::metrics::{CheckLabels, Metrics, SubjectLabels};
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

/// Only what the checker needs from a result: which run it closes.
#[derive(Deserialize)]
struct ResultHeader {
    check: String,
    run_id: u64,
}

struct Scheduled {
    config: Arc<CheckConfig>,
    subject: String,
    /// The run waiting for its result, and when the checker stops waiting.
    in_flight: Option<(u64, Instant)>,
    /// How long after it was due a run can be in flight at most (`run_window::lost_after`).
    horizon: Duration,
    scheduled: Counter,
    skipped: Counter,
    lost: Counter,
    /// With `instances_from = { file }`: the target groups its watcher read last.
    discovered: Option<watch::Receiver<crate::discovery::TargetSet>>,
}

pub struct Checker {
    checks: Vec<Scheduled>,
    by_name: HashMap<String, usize>,
    dispatch_deadline: Duration,
    subjects: Subjects,
    /// New check lists from config reloads.
    updates: Option<watch::Receiver<Arc<Vec<CheckConfig>>>>,
    bus: Arc<dyn Bus>,
    results: Subscription,
    metrics: Arc<Metrics>,
    publish_errors: Counter,
    next_run_id: u64,
    /// Where discovery watchers run: the runtime the checker was built on, not the
    /// checker's own thread.
    discovery: tokio::runtime::Handle,
}

impl std::fmt::Debug for Checker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checker")
            .field("checks", &self.checks.len())
            .finish_non_exhaustive()
    }
}

impl Checker {
    /// Subscribes to results now, so that no result of a run it publishes is missed.
    pub async fn build(
        checks: &[CheckConfig],
        dispatch_deadline: Duration,
        bus: Arc<dyn Bus>,
        subjects: &Subjects,
        metrics: Arc<Metrics>,
    ) -> Result<Checker, BusError> {
        let results = bus.subscribe(&subjects.all_results(), None).await?;
        let discovery = tokio::runtime::Handle::current();
        let scheduled: Vec<Scheduled> = checks
            .iter()
            .map(|check| Scheduled::new(check, dispatch_deadline, subjects, &metrics, &discovery))
            .collect();
        let by_name = index_by_name(&scheduled);
        // Run ids start from the clock so that a restarted checker does not reuse recent ones.
        let next_run_id = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(1, |since| u64::try_from(since.as_micros()).unwrap_or(1));
        let publish_errors = metrics
            .bus_publish_errors
            .get_or_create(&SubjectLabels { subject: "checks" })
            .clone();
        Ok(Checker {
            checks: scheduled,
            by_name,
            dispatch_deadline,
            subjects: subjects.clone(),
            updates: None,
            bus,
            results,
            publish_errors,
            metrics,
            next_run_id,
            discovery,
        })
    }

    /// Follows the check lists sent on `updates` (config reloads).
    pub fn follow(mut self, updates: watch::Receiver<Arc<Vec<CheckConfig>>>) -> Checker {
        self.updates = Some(updates);
        self
    }

    /// Replaces the checks with `configs`. Unchanged checks keep their state and, in `due`,
    /// their next due time; new and changed ones are due at their phase from now.
    fn apply(
        &mut self,
        configs: &[CheckConfig],
        due: Option<&mut BinaryHeap<Reverse<(Instant, usize)>>>,
    ) {
        let mut due_at: HashMap<String, Instant> = HashMap::new();
        if let Some(due) = &due {
            for Reverse((at, index)) in due.iter() {
                if let Some(check) = self.checks.get(*index) {
                    due_at.insert(check.config.name.clone(), *at);
                }
            }
        }
        let mut old: HashMap<String, Scheduled> = self
            .checks
            .drain(..)
            .map(|check| (check.config.name.clone(), check))
            .collect();
        let now = Instant::now();
        let wall = SystemTime::now();
        let mut next = Vec::with_capacity(configs.len());
        let mut heap = BinaryHeap::with_capacity(configs.len());
        for config in configs {
            let kept = old
                .remove(&config.name)
                .filter(|scheduled| *scheduled.config == *config);
            let (scheduled, at) = match kept {
                Some(scheduled) => {
                    let at = due_at.get(&config.name).copied();
                    (scheduled, at)
                }
                None => {
                    // A changed check starts over: its counters too.
                    self.metrics.forget_check_schedule(&config.name);
                    let scheduled = Scheduled::new(
                        config,
                        self.dispatch_deadline,
                        &self.subjects,
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
        for removed in old.keys() {
            self.metrics.forget_check_schedule(removed);
        }
        tracing::info!(
            checks = next.len(),
            removed = old.len(),
            "checker applied a new check list"
        );
        self.checks = next;
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
        loop {
            if let Some(leadership) = leadership.as_mut() {
                tracing::info!("checker standing by for the lease");
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        leading = leadership.wait_for(|leading| *leading) => match leading {
                            Ok(_) => break,
                            Err(_) => return,
                        },
                        Some(configs) = next_update(self.updates.as_mut()) => self.apply(&configs, None),
                        // Results keep arriving from the leader's runs; a standby reads and
                        // drops them so its subscription never backs up.
                        message = self.results.next() => if message.is_none() { return },
                    }
                }
            }
            if !self.schedule(&stop, leadership.as_mut()).await {
                break;
            }
            // Leadership lost: whatever was in flight belongs to the past leader's term.
            for check in &mut self.checks {
                check.in_flight = None;
            }
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
            tokio::select! {
                _ = stop.cancelled() => return false,
                _ = until_lost(leadership.as_deref_mut()) => return true,
                Some(configs) = next_update(self.updates.as_mut()) => self.apply(&configs, Some(&mut due)),
                _ = sleep_until_or_forever(next) => {
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
                message = self.results.next() => match message {
                    Some(message) => self.close_run(&message.payload),
                    None => return false,
                },
            }
        }
    }

    /// Publishes one run of check `index`, due at `at`; returns when the check is next due.
    async fn fire(&mut self, index: usize, at: Instant, now: Instant) -> Instant {
        let lag = now.saturating_duration_since(at);
        self.metrics.schedule_lag_seconds.observe(lag.as_secs_f64());
        let run_id = self.next_run_id;
        self.next_run_id += 1;
        let check = &mut self.checks[index];
        let interval = crate::config::bounds::CHECK_INTERVAL.cap_duration(check.config.interval);
        // Ticks missed entirely (the process was stopped, the machine slept) are skipped, not
        // fired in a burst.
        let mut next_at = at + interval;
        while next_at <= now {
            check.skipped.inc();
            next_at += interval;
        }
        if let Some((_, expires)) = check.in_flight {
            if expires > now {
                check.skipped.inc();
                tracing::debug!(check = %check.config.name, "previous run still in flight; tick skipped");
                return next_at;
            }
            check.lost.inc();
            tracing::warn!(check = %check.config.name, "a run's result never arrived");
            check.in_flight = None;
        }
        let request = CheckRequest {
            version: MESSAGE_VERSION,
            run_id,
            scheduled_at: SystemTime::now()
                .checked_sub(lag)
                .unwrap_or_else(SystemTime::now),
            dispatch_deadline: Some(self.dispatch_deadline),
            // Shared, not copied: on the embedded bus the runner reads this very definition.
            check: Arc::clone(&check.config),
            // The set the watcher handed over last: a clone of an Arc, never a wait.
            discovered: check
                .discovered
                .as_ref()
                .map(|set| Arc::clone(&set.borrow())),
        };
        let published = self
            .bus
            .publish(&check.subject, Payload::Request(Arc::new(request)))
            .await
            .map_err(|error| error.to_string());
        match published {
            Ok(()) => {
                check.scheduled.inc();
                // The window runs from when the run was due, as `scheduled_at` says.
                check.in_flight = Some((run_id, at + check.horizon));
            }
            Err(error) => {
                self.publish_errors.inc();
                tracing::warn!(check = %check.config.name, %error, "could not publish a check request");
            }
        }
        next_at
    }

    fn close_run(&mut self, payload: &Payload) {
        // The same decoding the sink applies (size, then version, then shape), so a result
        // the sink refuses does not end the run here either: the checker and the sink agree on
        // which runs ended, and a refused one is counted lost. The sink counts why. A result
        // from this process is typed already.
        let header = match payload {
            Payload::Result(result) => ResultHeader {
                check: result.check.clone(),
                run_id: result.run_id,
            },
            _ => match payload.decode::<ResultHeader>() {
                Ok(header) => header,
                Err(_) => return,
            },
        };
        if let Some(&index) = self.by_name.get(&header.check) {
            let check = &mut self.checks[index];
            if check
                .in_flight
                .is_some_and(|(run_id, _)| run_id == header.run_id)
            {
                check.in_flight = None;
            }
        }
    }
}

/// The next check list sent on `updates`; never, without updates or once their sender is gone.
async fn next_update(
    updates: Option<&mut watch::Receiver<Arc<Vec<CheckConfig>>>>,
) -> Option<Arc<Vec<CheckConfig>>> {
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
        check: &CheckConfig,
        dispatch_deadline: Duration,
        subjects: &Subjects,
        metrics: &Metrics,
        discovery: &tokio::runtime::Handle,
    ) -> Scheduled {
        let labels = CheckLabels {
            check: check.name.clone(),
        };
        let discovered = match &check.instances_from {
            Some(crate::config::InstancesFrom::File(path)) => Some(crate::discovery::file::watch(
                discovery,
                &check.name,
                path.clone(),
                metrics.discovery_errors.get_or_create(&labels).clone(),
            )),
            _ => None,
        };
        Scheduled {
            discovered,
            subject: subjects.checks(check.check_type()),
            in_flight: None,
            // Capped as validation caps them, so `at + horizon` cannot overflow.
            horizon: crate::run_window::lost_after(
                crate::config::bounds::DISPATCH_DEADLINE.cap_duration(dispatch_deadline),
                crate::config::bounds::CHECK_TIMEOUT.cap_duration(check.timeout()),
            ),
            scheduled: metrics.checks_scheduled.get_or_create(&labels).clone(),
            skipped: metrics.schedule_skipped.get_or_create(&labels).clone(),
            lost: metrics.runs_lost.get_or_create(&labels).clone(),
            config: Arc::new(check.clone()),
        }
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
