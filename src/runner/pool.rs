//! A worker pool for one check type: a fixed number of workers shared fairly between checks.
//! A task either gets a worker before its dispatch deadline or never runs; waiting longer would
//! report a probe of a moment that has already passed.
//!
//! Fair share, so that one check with many slow instances cannot turn a healthy check red:
//! - waiting tasks are queued per check (first come, first served within a check), and a freed
//!   worker goes to the next check in rotation among those with waiters, so a check waits for
//!   at most one hand-off per other waiting check, however many tasks those checks queue;
//! - while more than one check has used the pool within `RESERVE_MEMORY`, the last
//!   `RESERVED_WORKERS` free workers go only to a check that holds none: a check that arrives
//!   while another holds the rest finds one free instead of waiting for probes that may run
//!   until their timeout, longer than any dispatch deadline. A check alone in its pool uses
//!   every worker.
//!
//! It must never hand out a worker after a task's deadline, never lose one (a worker handed to
//! a waiter that has just given up goes to the next waiter or back to the pool), and never hold
//! its lock across an `.await`. Its state is bounded: a check's entry exists only while the
//! check holds or waits for a worker, and the rotation holds at most twice the checks waiting
//! (plus a few). No step scans every check: a check whose last waiter gives up leaves its place
//! in the rotation behind, stale (its ticket no longer matches), to be dropped when it comes up
//! or when stale places outnumber live ones; so a mass of waiters timing out costs O(1) each,
//! not a scan of the rotation each.

use super::RunnerMetrics;
use crate::checks::CheckType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::time::Instant;

/// Free workers of a pool kept for checks that hold none of its workers (fewer in a pool too
/// small to keep them: a pool of one worker keeps none).
pub const RESERVED_WORKERS: usize = 1;

/// How long a check that used the pool counts as one that may come back for a worker. Long
/// enough to cover the intervals of the checks a reserve protects (a check every 15 minutes
/// or more often).
pub const RESERVE_MEMORY: Duration = Duration::from_secs(15 * 60);

#[derive(Debug)]
pub struct WorkerPool {
    check_type: CheckType,
    size: usize,
    shared: Arc<PoolInner>,
    wait_seconds: Histogram,
    dispatch_timeouts: Counter,
}

#[derive(Debug)]
struct PoolInner {
    state: Mutex<Ledger>,
    busy: Gauge,
}

#[derive(Debug)]
struct Ledger {
    free: usize,
    reserved: usize,
    /// Checks that hold or wait for a worker; an entry goes when it does neither.
    checks: HashMap<Arc<str>, Share>,
    /// Checks with waiters, in the order they are served, each with the ticket it queued under:
    /// a place whose ticket is not its check's `Share::ticket` any more is stale.
    rotation: VecDeque<(u64, Arc<str>)>,
    /// Places in `rotation` that are not stale: the checks with a ticket.
    queued: usize,
    next_waiter: u64,
    /// The check that took a worker last, and when.
    latest: Option<(Arc<str>, Instant)>,
    /// When a check other than the latest one last took a worker.
    other_since: Option<Instant>,
}

#[derive(Debug, Default)]
struct Share {
    held: usize,
    /// Ordered by id: ids only grow.
    waiters: VecDeque<Waiter>,
    /// The check's place in the rotation, while it has waiters (a waiter's id, unique).
    ticket: Option<u64>,
}

#[derive(Debug)]
struct Waiter {
    id: u64,
    grant: oneshot::Sender<()>,
}

/// A worker, held while one probe runs and its response is judged. Dropping it frees the
/// worker for the next check in rotation.
#[derive(Debug)]
pub struct Worker {
    shared: Arc<PoolInner>,
    check: Arc<str>,
}

impl Drop for Worker {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.give_back(&self.check, Instant::now());
        drop(state);
        self.shared.busy.dec();
    }
}

/// A task in a check's queue. Dropped without being granted (timed out, or its run was
/// cancelled), it leaves the queue; if a worker was handed to it meanwhile, it passes it on.
struct Waiting {
    shared: Arc<PoolInner>,
    check: Arc<str>,
    id: u64,
    grant: oneshot::Receiver<()>,
    granted: bool,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if self.granted {
            return;
        }
        let mut state = self.shared.lock();
        if !state.leave_queue(&self.check, self.id) {
            // Not queued any more: a worker was handed over (under this same lock), so it is in
            // the channel. Pass it on rather than lose it.
            if self.grant.try_recv().is_ok() {
                state.give_back(&self.check, Instant::now());
            }
        }
    }
}

impl PoolInner {
    fn lock(&self) -> MutexGuard<'_, Ledger> {
        // A panic while holding this lock leaves the counts as consistent as they were before
        // the statement that panicked: carry on rather than stop every probe of the type.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Ledger {
    /// May `check` take a free worker now?
    fn may_take(&self, check: &str, now: Instant) -> bool {
        if self.free == 0 {
            return false;
        }
        let held = self.checks.get(check).map_or(0, |share| share.held);
        held == 0 || self.free > self.reserved || !self.others_active(check, now)
    }

    /// Does a check other than `check` hold or wait for a worker, or has one taken a worker
    /// within `RESERVE_MEMORY`?
    fn others_active(&self, check: &str, now: Instant) -> bool {
        let recent = |at: Instant| now.saturating_duration_since(at) < RESERVE_MEMORY;
        let others_here = match self.checks.len() {
            0 => false,
            1 => !self.checks.contains_key(check),
            _ => true,
        };
        others_here
            || match &self.latest {
                Some((latest, at)) if &**latest != check => recent(*at),
                Some(_) => self.other_since.is_some_and(recent),
                None => false,
            }
    }

    fn take(&mut self, check: &Arc<str>, now: Instant) {
        self.free -= 1;
        self.checks.entry(Arc::clone(check)).or_default().held += 1;
        match &mut self.latest {
            Some((latest, at)) if latest == check => *at = now,
            latest => {
                self.other_since = latest.as_ref().map(|(_, at)| *at);
                *latest = Some((Arc::clone(check), now));
            }
        }
    }

    /// A worker `check` held comes back: hand free workers to waiters while any may take one.
    fn give_back(&mut self, check: &str, now: Instant) {
        self.free += 1;
        if let Some(share) = self.checks.get_mut(check) {
            share.held = share.held.saturating_sub(1);
            if share.held == 0 && share.waiters.is_empty() {
                self.checks.remove(check);
            }
        }
        self.hand_out(now);
    }

    /// Serves the rotation: the first check in it that may take a worker gets one for its
    /// oldest waiter and moves to the back. Checks that may not take one keep their place;
    /// stale places met on the way are dropped.
    fn hand_out(&mut self, now: Instant) {
        'worker: while self.free > 0 {
            let mut position = 0;
            while position < self.rotation.len() {
                if !self.live(&self.rotation[position]) {
                    self.rotation.remove(position);
                    continue;
                }
                let (ticket, check) = &self.rotation[position];
                let (ticket, check) = (*ticket, Arc::clone(check));
                if !self.may_take(&check, now) {
                    position += 1;
                    continue;
                }
                let Some(share) = self.checks.get_mut(&check) else {
                    self.rotation.remove(position);
                    continue;
                };
                let Some(waiter) = share.waiters.pop_front() else {
                    // A live place always has a waiter; were it not so, drop the place.
                    share.ticket = None;
                    self.queued -= 1;
                    self.rotation.remove(position);
                    continue 'worker;
                };
                self.rotation.remove(position);
                if share.waiters.is_empty() {
                    share.ticket = None;
                    self.queued -= 1;
                } else {
                    self.rotation.push_back((ticket, Arc::clone(&check)));
                }
                // The waiter leaves the queue and gets its worker under one lock, so a waiter
                // that is not queued any more always finds its worker in the channel.
                if waiter.grant.send(()).is_ok() {
                    self.take(&check, now);
                } else if let Some(share) = self.checks.get(&check) {
                    // Its receiver is gone (a cancelled run): try the next waiter.
                    if share.held == 0 && share.waiters.is_empty() {
                        self.checks.remove(&check);
                    }
                }
                continue 'worker;
            }
            return;
        }
    }

    fn enqueue(&mut self, check: &Arc<str>) -> (u64, oneshot::Receiver<()>) {
        let id = self.next_waiter;
        self.next_waiter += 1;
        let (grant, granted) = oneshot::channel();
        let share = self.checks.entry(Arc::clone(check)).or_default();
        if share.ticket.is_none() {
            share.ticket = Some(id);
            self.queued += 1;
            self.rotation.push_back((id, Arc::clone(check)));
        }
        share.waiters.push_back(Waiter { id, grant });
        (id, granted)
    }

    /// Removes waiter `id` of `check`; false if it was not queued (it was granted a worker).
    fn leave_queue(&mut self, check: &str, id: u64) -> bool {
        let Some(share) = self.checks.get_mut(check) else {
            return false;
        };
        let Ok(position) = share.waiters.binary_search_by_key(&id, |waiter| waiter.id) else {
            return false;
        };
        share.waiters.remove(position);
        if share.waiters.is_empty() {
            // Its place in the rotation goes stale, to be dropped when it comes up.
            share.ticket = None;
            self.queued -= 1;
            if share.held == 0 {
                self.checks.remove(check);
            }
            self.compact();
        }
        true
    }

    /// Is this place in the rotation still its check's?
    fn live(&self, (ticket, check): &(u64, Arc<str>)) -> bool {
        self.checks
            .get(check)
            .is_some_and(|share| share.ticket == Some(*ticket))
    }

    /// Drops stale places at either end of the rotation (each place is dropped once, so this
    /// is O(1) amortised), and all of them once they outnumber the live ones (and a few):
    /// O(places) once in every O(places) removals, so the rotation stays within twice the
    /// checks waiting.
    fn compact(&mut self) {
        while self.rotation.front().is_some_and(|place| !self.live(place)) {
            self.rotation.pop_front();
        }
        while self.rotation.back().is_some_and(|place| !self.live(place)) {
            self.rotation.pop_back();
        }
        if self.rotation.len() <= 2 * self.queued + 16 {
            return;
        }
        let mut rotation = std::mem::take(&mut self.rotation);
        rotation.retain(|place| self.live(place));
        self.rotation = rotation;
    }
}

impl WorkerPool {
    pub fn new(check_type: CheckType, size: usize, metrics: &RunnerMetrics) -> WorkerPool {
        let series = metrics.pool(check_type, size);
        WorkerPool {
            check_type,
            size,
            shared: Arc::new(PoolInner {
                state: Mutex::new(Ledger {
                    free: size,
                    reserved: RESERVED_WORKERS.min(size.saturating_sub(1)),
                    checks: HashMap::new(),
                    rotation: VecDeque::new(),
                    queued: 0,
                    next_waiter: 0,
                    latest: None,
                    other_since: None,
                }),
                busy: series.busy,
            }),
            wait_seconds: series.wait_seconds,
            dispatch_timeouts: series.dispatch_timeouts,
        }
    }

    pub fn check_type(&self) -> CheckType {
        self.check_type
    }

    pub fn size(&self) -> usize {
        self.size
    }

    /// Workers running a probe now.
    pub fn busy(&self) -> usize {
        self.size.saturating_sub(self.shared.lock().free)
    }

    /// Waits for a worker for a task of `check` until `deadline`. None means the deadline
    /// passed first; that is counted as a dispatch timeout. The wait observed in
    /// `bastion_dispatch_wait_seconds` starts at this call.
    pub async fn acquire_until(&self, check: &str, deadline: Instant) -> Option<Worker> {
        let started = Instant::now();
        if started > deadline {
            self.dispatch_timeouts.inc();
            return None;
        }
        let check: Arc<str> = Arc::from(check);
        let (id, grant) = {
            let mut state = self.shared.lock();
            // A reserve kept for checks that have since gone quiet goes to the waiters first.
            state.hand_out(started);
            if state.may_take(&check, started) {
                state.take(&check, started);
                drop(state);
                return Some(self.hired(check, started));
            }
            state.enqueue(&check)
        };
        let mut waiting = Waiting {
            shared: Arc::clone(&self.shared),
            check,
            id,
            grant,
            granted: false,
        };
        // `timeout_at` polls the channel first, so a worker handed over by the deadline is taken.
        let granted = tokio::time::timeout_at(deadline, &mut waiting.grant).await;
        if matches!(granted, Ok(Ok(()))) && Instant::now() <= deadline {
            waiting.granted = true;
            return Some(self.hired(Arc::clone(&waiting.check), started));
        }
        if matches!(granted, Ok(Ok(()))) {
            // Handed over after the deadline (this task was not polled in time): pass it on.
            waiting.granted = true;
            self.shared.lock().give_back(&waiting.check, Instant::now());
        }
        drop(waiting);
        self.dispatch_timeouts.inc();
        None
    }

    fn hired(&self, check: Arc<str>, started: Instant) -> Worker {
        self.wait_seconds.observe(started.elapsed().as_secs_f64());
        self.shared.busy.inc();
        Worker {
            shared: Arc::clone(&self.shared),
            check,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use std::sync::Mutex as StdMutex;

    const HOUR: Duration = Duration::from_secs(3600);

    fn pool(size: usize) -> (WorkerPool, Metrics) {
        let metrics = Metrics::new();
        (
            WorkerPool::new(CheckType::Http, size, &metrics.component()),
            metrics,
        )
    }

    /// Lets every spawned task run as far as it can (time is paused: sleeping advances it).
    async fn settle() {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_freed_worker_goes_to_the_next_check_in_rotation() {
        let (pool, _metrics) = pool(1);
        let pool = Arc::new(pool);
        let far = Instant::now() + HOUR;
        let holder = pool.acquire_until("a", far).await.expect("a free worker");
        let served = Arc::new(StdMutex::new(Vec::new()));
        // Check a queues three tasks before b and c queue one each.
        for task in ["a1", "a2", "a3", "b1", "c1"] {
            let (pool, served) = (Arc::clone(&pool), Arc::clone(&served));
            tokio::spawn(async move {
                let worker = pool.acquire_until(&task[..1], far).await;
                served.lock().unwrap().push(task);
                tokio::time::sleep(Duration::from_secs(1)).await;
                drop(worker);
            });
            settle().await;
        }
        assert!(served.lock().unwrap().is_empty());
        drop(holder);
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(*served.lock().unwrap(), ["a1", "b1", "c1", "a2", "a3"]);
        assert_eq!(pool.busy(), 0);
        let state = pool.shared.lock();
        assert!(state.checks.is_empty() && state.rotation.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_check_alone_uses_every_worker() {
        let (pool, _metrics) = pool(4);
        let deadline = Instant::now() + Duration::from_secs(1);
        let mut workers = Vec::new();
        for _ in 0..4 {
            workers.push(
                pool.acquire_until("many", deadline)
                    .await
                    .expect("a free worker"),
            );
        }
        assert_eq!(pool.busy(), 4);
        assert!(pool.acquire_until("many", deadline).await.is_none());
        let timeouts = pool.dispatch_timeouts.get();
        assert_eq!(timeouts, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn the_last_worker_is_kept_for_a_check_holding_none() {
        let (pool, _metrics) = pool(4);
        let deadline = Instant::now() + Duration::from_secs(1);
        // Another check used the pool a moment ago.
        drop(pool.acquire_until("healthy", deadline).await);
        let mut hog = Vec::new();
        for _ in 0..3 {
            hog.push(
                pool.acquire_until("hog", deadline)
                    .await
                    .expect("a free worker"),
            );
        }
        assert!(
            pool.acquire_until("hog", deadline).await.is_none(),
            "the hog took the reserved worker"
        );
        let healthy = pool.acquire_until("healthy", deadline).await;
        assert!(
            healthy.is_some(),
            "the reserved worker went to a check holding none"
        );
        drop(healthy);
        // Once the other check has been quiet for the reserve's memory, the hog may take all.
        tokio::time::sleep(RESERVE_MEMORY).await;
        let deadline = Instant::now() + Duration::from_secs(1);
        assert!(pool.acquire_until("hog", deadline).await.is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_that_gives_up_as_its_worker_arrives_passes_it_on() {
        let (pool, _metrics) = pool(1);
        let start = Instant::now();
        let holder = pool.acquire_until("a", start + HOUR).await.expect("free");
        // b waits until 1 s, c until an hour.
        let mut b = Box::pin(pool.acquire_until("b", start + Duration::from_secs(1)));
        assert!(futures_poll(&mut b).await.is_none());
        let mut c = Box::pin(pool.acquire_until("c", start + HOUR));
        assert!(futures_poll(&mut c).await.is_none());
        // The worker is handed to b just as b's deadline passes, before b runs again.
        tokio::time::advance(Duration::from_secs(2)).await;
        drop(holder);
        let b = b.await;
        assert!(b.is_none(), "b got a worker after its deadline");
        let c = tokio::time::timeout(Duration::from_secs(1), c)
            .await
            .expect("the worker b gave up went to c");
        assert!(c.is_some());
        assert_eq!(pool.busy(), 1);
        drop(c);
        assert_eq!(pool.busy(), 0);
        let timeouts = pool.dispatch_timeouts.get();
        assert_eq!(timeouts, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_waiter_handed_a_worker_passes_it_on() {
        let (pool, _metrics) = pool(1);
        let start = Instant::now();
        let holder = pool.acquire_until("a", start + HOUR).await.expect("free");
        let mut b = Box::pin(pool.acquire_until("b", start + HOUR));
        assert!(futures_poll(&mut b).await.is_none());
        let mut c = Box::pin(pool.acquire_until("c", start + HOUR));
        assert!(futures_poll(&mut c).await.is_none());
        drop(holder);
        // b's run is cancelled after its worker was handed over, before it could take it.
        drop(b);
        let c = futures_poll(&mut c).await;
        assert!(c.is_some(), "the worker handed to b went to c");
        drop(c);
        assert_eq!(pool.busy(), 0);
        let state = pool.shared.lock();
        assert_eq!(state.free, 1);
        assert!(state.checks.is_empty() && state.rotation.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_that_times_out_leaves_no_trace() {
        let (pool, _metrics) = pool(1);
        let start = Instant::now();
        let holder = pool.acquire_until("a", start + HOUR).await.expect("free");
        for check in ["b", "c", "b"] {
            assert!(pool
                .acquire_until(check, Instant::now() + Duration::from_secs(1))
                .await
                .is_none());
        }
        {
            let state = pool.shared.lock();
            assert_eq!(state.checks.len(), 1, "only the holder's entry remains");
            assert!(state.rotation.is_empty());
        }
        drop(holder);
        assert!(pool.shared.lock().checks.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_check_that_left_and_came_back_queues_at_the_back() {
        let (pool, _metrics) = pool(1);
        let pool = Arc::new(pool);
        let far = Instant::now() + HOUR;
        let holder = pool
            .acquire_until("busy", far)
            .await
            .expect("a free worker");
        let served = Arc::new(StdMutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for task in ["b1", "a1", "c1"] {
            let (pool, served) = (Arc::clone(&pool), Arc::clone(&served));
            tasks.push(tokio::spawn(async move {
                let worker = pool.acquire_until(&task[..1], far).await;
                served.lock().unwrap().push(task);
                tokio::time::sleep(Duration::from_secs(1)).await;
                drop(worker);
            }));
            settle().await;
        }
        // a gives up: its place between b and c goes stale. It comes back after c.
        tasks[1].abort();
        settle().await;
        {
            let state = pool.shared.lock();
            assert_eq!((state.queued, state.rotation.len()), (2, 3));
        }
        let (again, done) = (Arc::clone(&pool), Arc::clone(&served));
        tokio::spawn(async move {
            let worker = again.acquire_until("a", far).await;
            done.lock().unwrap().push("a2");
            drop(worker);
        });
        settle().await;
        drop(holder);
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(*served.lock().unwrap(), ["b1", "c1", "a2"]);
        let state = pool.shared.lock();
        assert!(state.checks.is_empty() && state.rotation.is_empty() && state.queued == 0);
    }

    #[tokio::test(start_paused = true)]
    async fn waiters_of_many_checks_give_up_at_constant_cost_each() {
        // 50,000 checks wait for the one busy worker, then give up in a scattered order (their
        // runs cancelled or timed out). Each leaving used to scan the whole rotation under the
        // pool's lock: 1.25e9 comparisons here, seconds even in a release build.
        const CHECKS: usize = 50_000;
        let (pool, _metrics) = pool(1);
        let holder = pool.acquire_until("busy", Instant::now() + HOUR).await;
        assert!(holder.is_some());
        let names: Vec<String> = (0..CHECKS).map(|n| format!("check-{n}")).collect();
        let mut waiting = Vec::with_capacity(CHECKS);
        for name in &names {
            let mut waiter = Box::pin(pool.acquire_until(name, Instant::now() + HOUR));
            assert!(futures_poll(&mut waiter).await.is_none());
            waiting.push(Some(waiter));
        }
        assert_eq!(pool.shared.lock().queued, CHECKS);
        let started = std::time::Instant::now();
        // A fixed scatter: every 7,919th (a prime, so each is visited once).
        for step in 0..CHECKS {
            drop(waiting[(step * 7_919) % CHECKS].take());
            let state = pool.shared.lock();
            assert!(state.rotation.len() <= 2 * state.queued + 16 + 2);
        }
        let elapsed = started.elapsed();
        assert!(waiting.iter().all(Option::is_none));
        {
            let state = pool.shared.lock();
            assert_eq!(state.queued, 0);
            assert!(
                state.rotation.is_empty(),
                "{} places left",
                state.rotation.len()
            );
            assert_eq!(state.checks.len(), 1, "only the holder's entry remains");
        }
        assert!(
            elapsed < Duration::from_secs(3),
            "50,000 waiters took {elapsed:?} to leave"
        );
        drop(holder);
        assert_eq!(pool.busy(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_wait_observed_is_this_tasks_wait_only() {
        let (pool, metrics) = pool(1);
        // A task that started being dispatched long ago (a slow resolve, earlier instances)
        // finds a free worker: it waited for nothing.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let first = pool
            .acquire_until("a", Instant::now() + HOUR)
            .await
            .expect("free");
        assert_eq!(wait_seconds(&metrics), (0.0, 1));
        let releaser = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(2)).await;
            drop(first);
        });
        let second = pool.acquire_until("a", Instant::now() + HOUR).await;
        assert!(second.is_some());
        releaser.await.expect("releaser");
        let (sum, count) = wait_seconds(&metrics);
        assert_eq!(count, 2);
        assert!((sum - 2.0).abs() < 0.01, "{sum}");
    }

    /// Sum and count of `bastion_dispatch_wait_seconds{type="http"}`, as a scraper sees them.
    fn wait_seconds(metrics: &Metrics) -> (f64, u64) {
        let text = metrics.render();
        let value = |series: &str| {
            text.lines()
                .find_map(|line| {
                    line.strip_prefix(series)?
                        .strip_prefix(' ')?
                        .parse::<f64>()
                        .ok()
                })
                .unwrap_or_else(|| panic!("no {series} in\n{text}"))
        };
        (
            value("bastion_dispatch_wait_seconds_sum{type=\"http\"}"),
            value("bastion_dispatch_wait_seconds_count{type=\"http\"}") as u64,
        )
    }

    /// Polls `future` once (after letting other tasks run): Some(output) if it finished.
    async fn futures_poll<F: std::future::Future + Unpin>(future: &mut F) -> Option<F::Output> {
        settle().await;
        std::future::poll_fn(
            |context| match std::pin::Pin::new(&mut *future).poll(context) {
                std::task::Poll::Ready(output) => std::task::Poll::Ready(Some(output)),
                std::task::Poll::Pending => std::task::Poll::Ready(None),
            },
        )
        .await
    }
}
