//! Checker leadership for `[checker] ha = true`: several checkers run, one holds a lease and
//! schedules, the others stand by. The lease lives in a store with a TTL (a JetStream
//! key-value bucket, behind `LeaseStore`); this module holds the timing policy. A leader
//! renews every third of the TTL and stops leading two thirds of a TTL after its last
//! successful renewal, before the store can hand the lease to anyone else, so two checkers
//! never schedule at once. It never schedules anything itself.

use crate::bus::LeaseStore;
use crate::metrics::{Component, Metrics, Registry};
use prometheus_client::metrics::gauge::Gauge;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Whether this checker leads now; it changes as the lease is won and lost.
pub type Leadership = watch::Receiver<bool>;

/// `bastion_checker_leader`: whether this checker schedules now.
#[derive(Clone, Debug)]
pub struct LeaderMetrics {
    leader: Gauge,
}

impl Component for LeaderMetrics {
    fn register(registry: &mut Registry) -> LeaderMetrics {
        let leader = Gauge::default();
        registry.agent(
            "bastion_checker_leader",
            "Whether this checker schedules now (1) or stands by (0)",
            leader.clone(),
        );
        LeaderMetrics { leader }
    }
}

impl LeaderMetrics {
    /// This checker schedules now (true) or stands by.
    pub fn set_leading(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    /// Whether the gauge says this checker leads.
    pub fn leading(&self) -> bool {
        self.leader.get() == 1
    }
}

/// Holds the lease while `stop` is not cancelled, publishing leadership on the returned watch.
pub fn spawn(
    store: Arc<dyn LeaseStore>,
    holder: String,
    ttl: Duration,
    metrics: &Metrics,
    stop: CancellationToken,
) -> (Leadership, tokio::task::JoinHandle<()>) {
    let metrics: LeaderMetrics = metrics.component();
    let (leading, leadership) = watch::channel(false);
    let task = tokio::spawn(hold(store, holder, ttl, metrics, stop, leading));
    (leadership, task)
}

async fn hold(
    store: Arc<dyn LeaseStore>,
    holder: String,
    ttl: Duration,
    metrics: LeaderMetrics,
    stop: CancellationToken,
    leading: watch::Sender<bool>,
) {
    let timing = Timing::for_ttl(ttl);
    let mut held: Option<(u64, Instant)> = None;
    loop {
        let attempt_at = Instant::now();
        let outcome = match held {
            None => {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    outcome = tokio::time::timeout(timing.renew_every, store.acquire(&holder)) => outcome,
                }
            }
            Some((revision, since)) => {
                // One attempt may not use up the lease: a request lost with a dying NATS
                // server is never answered, and the next attempt must still come in time.
                let until = (attempt_at + timing.attempt_timeout).min(since + timing.valid_for);
                tokio::select! {
                    _ = stop.cancelled() => break,
                    outcome = tokio::time::timeout_at(until, store.renew(&holder, revision)) => outcome,
                }
            }
        };
        match (held, outcome) {
            (_, Ok(Ok(Some(revision)))) => {
                if held.is_none() {
                    tracing::info!(holder = %holder, "checker lease taken: this checker schedules now");
                    metrics.set_leading(true);
                    leading.send_replace(true);
                }
                held = Some((revision, attempt_at));
            }
            (Some(_), Ok(Ok(None))) => {
                tracing::warn!(holder = %holder, "checker lease lost to another checker; standing by");
                held = None;
                step_down(&leading, &metrics);
            }
            (None, Ok(Ok(None))) => {}
            (Some((revision, since)), Ok(Err(error))) => {
                if Instant::now() >= since + timing.valid_for {
                    tracing::warn!(%error, "cannot renew the checker lease in time; standing by");
                    held = None;
                    step_down(&leading, &metrics);
                } else {
                    tracing::warn!(%error, "cannot renew the checker lease; retrying");
                    held = Some((revision, since));
                }
            }
            (Some((revision, since)), Err(_)) => {
                if Instant::now() >= since + timing.valid_for {
                    tracing::warn!("checker lease renewal timed out; standing by");
                    held = None;
                    step_down(&leading, &metrics);
                } else {
                    tracing::warn!("checker lease renewal timed out; retrying");
                    held = Some((revision, since));
                }
            }
            (None, Ok(Err(error))) => {
                tracing::debug!(%error, "cannot reach the checker lease");
            }
            (None, Err(_)) => {}
        }
        let next = timing.next_attempt(held, attempt_at);
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep_until(next) => {}
        }
    }
    if let Some((revision, _)) = held {
        step_down(&leading, &metrics);
        release(&*store, revision).await;
    }
}

/// The lease's timing, all derived from its TTL.
#[derive(Debug, Clone, Copy)]
struct Timing {
    renew_every: Duration,
    /// How long after the start of its last successful write a leader may go on leading. The
    /// store counts the TTL from when it received that write, which is later.
    valid_for: Duration,
    /// A standby looks for a free lease this often; it bounds the takeover delay after expiry.
    poll_every: Duration,
    /// The longest one renewal may take before it is tried again, so that a renewal lost on
    /// the way (a NATS server died under it) leaves time for more within `valid_for`.
    attempt_timeout: Duration,
}

impl Timing {
    fn for_ttl(ttl: Duration) -> Timing {
        let ttl = crate::config::bounds::LEASE_TTL.cap_duration(ttl);
        Timing {
            renew_every: ttl / 3,
            valid_for: ttl * 2 / 3,
            poll_every: (ttl / 10).clamp(Duration::from_millis(100), Duration::from_secs(1)),
            attempt_timeout: ttl / 9,
        }
    }

    /// When to try next, after the attempt begun at `attempt_at` left the lease `held`.
    fn next_attempt(&self, held: Option<(u64, Instant)>, attempt_at: Instant) -> Instant {
        match held {
            Some((_, since)) if since == attempt_at => since + self.renew_every,
            // A failed renewal is retried soon, but the lease still ends on time.
            Some((_, since)) => (Instant::now() + self.poll_every).min(since + self.valid_for),
            None => Instant::now() + self.poll_every,
        }
    }
}

/// Gives the lease back at shutdown, so a standby takes over without waiting for the TTL.
async fn release(store: &dyn LeaseStore, revision: u64) {
    match tokio::time::timeout(Duration::from_secs(2), store.release(revision)).await {
        Ok(Ok(())) => tracing::info!("checker lease released"),
        Ok(Err(error)) => {
            tracing::warn!(%error, "cannot release the checker lease; it expires by itself")
        }
        Err(_) => tracing::warn!("releasing the checker lease timed out; it expires by itself"),
    }
}

fn step_down(leading: &watch::Sender<bool>, metrics: &LeaderMetrics) {
    metrics.set_leading(false);
    leading.send_replace(false);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::{BoxFuture, BusError};
    use std::sync::Mutex;

    /// A lease store kept in memory with the same rules as the key-value bucket: writes are
    /// compare-and-set, and the lease vanishes one TTL after its last write.
    #[derive(Default)]
    struct MemoryLease {
        state: Mutex<LeaseState>,
    }

    #[derive(Default)]
    struct LeaseState {
        holder: Option<(String, u64, Instant)>,
        next_revision: u64,
        ttl: Duration,
        /// While set, every call fails, as when the server is unreachable.
        unreachable: bool,
        /// Renewals that never get an answer, as one sent just before a server dies.
        renewals_lost: usize,
    }

    impl MemoryLease {
        fn new(ttl: Duration) -> MemoryLease {
            MemoryLease {
                state: Mutex::new(LeaseState {
                    ttl,
                    next_revision: 1,
                    ..LeaseState::default()
                }),
            }
        }

        fn holder(&self) -> Option<String> {
            let mut state = self.state.lock().unwrap();
            expire(&mut state);
            state.holder.as_ref().map(|(holder, _, _)| holder.clone())
        }
    }

    fn expire(state: &mut LeaseState) {
        if let Some((_, _, written)) = &state.holder {
            if written.elapsed() >= state.ttl {
                state.holder = None;
            }
        }
    }

    impl LeaseStore for MemoryLease {
        fn acquire<'a>(&'a self, holder: &'a str) -> BoxFuture<'a, Result<Option<u64>, BusError>> {
            Box::pin(async move {
                let mut state = self.state.lock().unwrap();
                if state.unreachable {
                    return Err(BusError::Disconnected);
                }
                expire(&mut state);
                if state.holder.is_some() {
                    return Ok(None);
                }
                let revision = state.next_revision;
                state.next_revision += 1;
                state.holder = Some((holder.to_string(), revision, Instant::now()));
                Ok(Some(revision))
            })
        }

        fn renew<'a>(
            &'a self,
            holder: &'a str,
            revision: u64,
        ) -> BoxFuture<'a, Result<Option<u64>, BusError>> {
            Box::pin(async move {
                let lost = {
                    let mut state = self.state.lock().unwrap();
                    let lost = state.renewals_lost > 0;
                    state.renewals_lost = state.renewals_lost.saturating_sub(1);
                    lost
                };
                if lost {
                    std::future::pending::<()>().await;
                }
                let mut state = self.state.lock().unwrap();
                if state.unreachable {
                    return Err(BusError::Disconnected);
                }
                expire(&mut state);
                match &state.holder {
                    Some((_, current, _)) if *current == revision => {
                        let next = state.next_revision;
                        state.next_revision += 1;
                        state.holder = Some((holder.to_string(), next, Instant::now()));
                        Ok(Some(next))
                    }
                    _ => Ok(None),
                }
            })
        }

        fn release(&self, revision: u64) -> BoxFuture<'_, Result<(), BusError>> {
            Box::pin(async move {
                let mut state = self.state.lock().unwrap();
                if matches!(&state.holder, Some((_, current, _)) if *current == revision) {
                    state.holder = None;
                }
                Ok(())
            })
        }
    }

    const TTL: Duration = Duration::from_secs(9);

    #[tokio::test(start_paused = true)]
    async fn one_leader_at_a_time_and_a_standby_takes_over_after_expiry() {
        let store = Arc::new(MemoryLease::new(TTL));
        let stop_a = CancellationToken::new();
        let stop_b = CancellationToken::new();
        let metrics = Metrics::new();
        let (a, task_a) = spawn(store.clone(), "a".into(), TTL, &metrics, stop_a.clone());
        tokio::time::sleep(Duration::from_millis(10)).await;
        let (b, task_b) = spawn(
            store.clone(),
            "b".into(),
            TTL,
            &Metrics::new(),
            stop_b.clone(),
        );
        // Over many renewals, exactly one leads at every instant.
        for _ in 0..300 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            assert!(*a.borrow() ^ *b.borrow(), "exactly one leader");
        }
        assert!(*a.borrow(), "the first to ask keeps the lease");
        assert_eq!(store.holder().as_deref(), Some("a"));
        assert!(metrics.component::<LeaderMetrics>().leading());

        // The leader vanishes without releasing (killed): b waits for the TTL, then leads.
        task_a.abort();
        let died = Instant::now();
        let mut b_changes = b.clone();
        b_changes.wait_for(|leading| *leading).await.unwrap();
        let takeover = died.elapsed();
        assert!(takeover <= TTL + Duration::from_secs(1), "{takeover:?}");
        assert!(
            takeover >= TTL - TTL / 3,
            "not before a's lease ran out: {takeover:?}"
        );
        stop_b.cancel();
        task_b.await.unwrap();
        assert_eq!(store.holder(), None, "a stopping leader releases the lease");
        drop(stop_a);
    }

    #[tokio::test(start_paused = true)]
    async fn a_renewal_lost_on_the_way_is_tried_again_and_the_lease_holds() {
        // Seen on a NATS cluster: the renewal sent just before the leader's server died got
        // no answer, the leader waited for it until its lease ran out and stood down.
        let store = Arc::new(MemoryLease::new(TTL));
        let stop = CancellationToken::new();
        let metrics = Metrics::new();
        let (mut leading, task) = spawn(store.clone(), "a".into(), TTL, &metrics, stop.clone());
        leading.wait_for(|leading| *leading).await.unwrap();
        store.state.lock().unwrap().renewals_lost = 1;
        let mut changes = leading.clone();
        changes.mark_unchanged();
        // Several renewals later it still leads and never stood down in between.
        tokio::time::sleep(TTL * 3).await;
        assert!(*leading.borrow(), "still leading");
        assert!(!changes.has_changed().unwrap(), "never stood down");
        assert_eq!(store.state.lock().unwrap().renewals_lost, 0, "one was lost");
        assert_eq!(store.holder().as_deref(), Some("a"));
        stop.cancel();
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_leader_that_cannot_renew_steps_down_before_its_lease_expires() {
        let store = Arc::new(MemoryLease::new(TTL));
        let stop = CancellationToken::new();
        let metrics = Metrics::new();
        let (mut leading, task) = spawn(store.clone(), "a".into(), TTL, &metrics, stop.clone());
        leading.wait_for(|leading| *leading).await.unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        store.state.lock().unwrap().unreachable = true;
        let cut = Instant::now();
        leading.wait_for(|leading| !*leading).await.unwrap();
        // Its last write was at most a third of a TTL before the cut; the store keeps the
        // lease a full TTL after that write, so stepping down now leaves no overlap.
        let last_write = store.state.lock().unwrap().holder.as_ref().unwrap().2;
        assert!(
            Instant::now() < last_write + TTL,
            "stepped down before expiry"
        );
        assert!(cut.elapsed() <= TTL * 2 / 3);
        assert!(!metrics.component::<LeaderMetrics>().leading());
        // Once the store is back and the old lease has expired, it leads again.
        store.state.lock().unwrap().unreachable = false;
        leading.wait_for(|leading| *leading).await.unwrap();
        stop.cancel();
        task.await.unwrap();
    }
}
