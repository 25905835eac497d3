//! Routing's unit tests: episodes driven through the engine, receivers that accept or refuse.

use super::*;
use crate::checks::CheckType;
use crate::episode::{episode_id, RunTimes, Track};
use crate::receivers::{Answer, Event, Notifier, SendError};
use futures_util::future::BoxFuture;
use std::collections::BTreeSet;

/// A receiver that remembers everything it is sent, and refuses while told to.
#[derive(Debug, Default)]
struct Recorder {
    taken: Mutex<Vec<Notification>>,
    refusing: std::sync::atomic::AtomicBool,
    /// Answers as a receiver that is down (worth another attempt, later).
    down: std::sync::atomic::AtomicBool,
}

impl Notifier for Recorder {
    fn send<'a>(
        &'a self,
        notification: &'a Notification,
    ) -> BoxFuture<'a, Result<Answer, SendError>> {
        self.taken.lock().unwrap().push(notification.clone());
        let refusing = self.refusing.load(std::sync::atomic::Ordering::SeqCst);
        let down = self.down.load(std::sync::atomic::Ordering::SeqCst);
        Box::pin(async move {
            if down {
                Err(SendError::Retry {
                    reason: "down".to_string(),
                    after: None,
                })
            } else if refusing {
                Err(SendError::Reject("no".to_string()))
            } else {
                Ok(Answer("ok".to_string()))
            }
        })
    }
}

impl Recorder {
    fn taken(&self) -> Vec<(Event, String, Severity)> {
        self.taken
            .lock()
            .unwrap()
            .iter()
            .map(|n| (n.event, n.episode_id.clone(), n.severity))
            .collect()
    }

    async fn wait_for(&self, count: usize) -> Vec<(Event, String, Severity)> {
        for _ in 0..500 {
            if self.taken().len() >= count {
                return self.taken();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("expected {count} notifications, got {:?}", self.taken());
    }
}

/// Notifications with one receiver `rec` (and, with `two`, a second one `other`).
struct Setup {
    notifications: Arc<Notifications>,
    receivers: Vec<Arc<Recorder>>,
    check: CheckConfig,
    track: Track,
    stop: CancellationToken,
}

fn setup(check_toml: &str, leadership: Option<watch::Receiver<bool>>, two: bool) -> Setup {
    setup_with(check_toml, leadership, two, Maintenance::default(), None)
}

fn setup_with(
    check_toml: &str,
    leadership: Option<watch::Receiver<bool>>,
    two: bool,
    maintenance: Maintenance,
    maintenance_updates: Option<watch::Receiver<Arc<Vec<MaintenanceConfig>>>>,
) -> Setup {
    let names: &[&str] = if two { &["other", "rec"] } else { &["rec"] };
    let receivers: Vec<Arc<Recorder>> = names
        .iter()
        .map(|_| Arc::new(Recorder::default()))
        .collect();
    let notifiers = names
        .iter()
        .zip(&receivers)
        .map(|(name, receiver)| {
            let config: crate::config::NotifierConfig = toml::from_str(&format!(
                "name = \"{name}\"\ntype = \"webhook\"\nurl = \"http://x/\"\ndefault = true\nmax_attempts = 1"
            ))
            .unwrap();
            (config, Arc::clone(receiver) as Arc<dyn Notifier>)
        })
        .collect();
    let stop = CancellationToken::new();
    let notifications = Notifications::start(
        NotificationsOptions {
            notifiers,
            maintenance,
            maintenance_updates,
            agent: "test".to_string(),
            link_base: "http://127.0.0.1:9464".to_string(),
            metrics: Arc::new(Metrics::new()),
            leadership,
            saved: SavedState::in_memory(),
            resumed: BTreeMap::new(),
        },
        &stop,
        &TaskTracker::new(),
    );
    Setup {
        notifications,
        receivers,
        check: toml::from_str(check_toml).unwrap(),
        track: Track::default(),
        stop,
    }
}

const CHECK: &str =
    "name = \"web\"\ntype = \"http\"\nurl = \"http://127.0.0.1/\"\ninterval = \"1s\"\n";

fn start_of(run: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(run)
}

/// A result of run `run` with `failing` of two instances failing.
fn result(run: u64, failing: usize) -> Arc<CheckResult> {
    let at = humantime::format_rfc3339_micros(start_of(run));
    Arc::new(
        serde_json::from_value(serde_json::json!({
            "version": 1, "check": "web", "type": "http", "agent": "runner", "run_id": run,
            "scheduled_at": at.to_string(), "finished_at": at.to_string(),
            "passing": failing == 0, "responses": [],
            "degraded": {"form": "summarised", "instances": 2, "failing": failing, "omitted": 2}
        }))
        .unwrap(),
    )
}

impl Setup {
    /// The check's state after run `run` is `state`: the engine decides the event.
    fn run(&mut self, run: u64, state: CheckState, failing: usize) {
        let warn_opens = self
            .check
            .notify_on
            .as_deref()
            .is_some_and(|on| on.contains(&crate::config::NotifyOn::Warn));
        let event = self.track.observe(
            "web",
            warn_opens,
            state,
            RunTimes {
                scheduled_at: start_of(run),
                finished_at: start_of(run),
            },
        );
        self.notifications
            .observe(&self.check, state, &result(run, failing), event.as_ref());
    }
}

#[tokio::test]
async fn a_standby_tells_nobody_and_on_taking_over_repeats_open_episodes_and_recent_resolves() {
    let (leading, leadership) = watch::channel(false);
    let mut s = setup(CHECK, Some(leadership), false);
    // Episode A fails and recovers, episode B fails: all while standing by.
    s.run(10, CheckState::FailWait, 2);
    s.run(11, CheckState::Fail, 2);
    s.run(12, CheckState::Ok, 0);
    s.run(13, CheckState::Fail, 2);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        s.receivers[0].taken().is_empty(),
        "a standby delivers nothing"
    );
    leading.send_replace(true);
    let taken = s.receivers[0].wait_for(2).await;
    assert_eq!(
        taken,
        [
            (
                Event::Resolved,
                episode_id("web", start_of(10)),
                Severity::Critical
            ),
            (
                Event::Firing,
                episode_id("web", start_of(13)),
                Severity::Critical
            ),
        ],
        "the recent resolve, then the open episode, under the ids every checker computes"
    );
    s.run(14, CheckState::Ok, 0);
    let taken = s.receivers[0].wait_for(3).await;
    assert_eq!(taken[2].0, Event::Resolved);
    assert_eq!(taken[2].1, episode_id("web", start_of(13)));
    s.stop.cancel();
}

#[tokio::test]
async fn warnings_notify_when_asked_and_a_worse_state_keeps_the_episode() {
    let check = format!("{CHECK}notify_on = [\"fail\", \"warn\"]\n");
    let mut s = setup(&check, None, false);
    s.run(20, CheckState::Warn, 1);
    s.receivers[0].wait_for(1).await;
    s.run(21, CheckState::FailWait, 2);
    s.run(22, CheckState::Fail, 2);
    s.receivers[0].wait_for(2).await;
    s.run(23, CheckState::PassWait, 0);
    s.run(24, CheckState::Ok, 0);
    let taken = s.receivers[0].wait_for(3).await;
    let id = episode_id("web", start_of(20));
    assert_eq!(
        taken,
        [
            (Event::Firing, id.clone(), Severity::Warning),
            (Event::Firing, id.clone(), Severity::Critical),
            (Event::Resolved, id, Severity::Critical),
        ]
    );
    let previous: Vec<Option<Severity>> = s.receivers[0]
        .taken
        .lock()
        .unwrap()
        .iter()
        .map(|n| n.previous_severity)
        .collect();
    assert_eq!(previous, [None, Some(Severity::Warning), None]);
    s.stop.cancel();
}

/// A receiver that never accepted the trigger gets no resolve; one that did, does.
#[tokio::test]
async fn a_resolve_goes_only_to_the_receivers_that_accepted_the_trigger() {
    let mut s = setup(CHECK, None, true);
    s.receivers[0]
        .refusing
        .store(true, std::sync::atomic::Ordering::SeqCst);
    s.run(30, CheckState::Fail, 2);
    s.receivers[0].wait_for(1).await;
    s.receivers[1].wait_for(1).await;
    // Let the refusal come back before the recovery.
    tokio::time::sleep(Duration::from_millis(50)).await;
    s.run(31, CheckState::Ok, 0);
    let accepted = s.receivers[1].wait_for(2).await;
    assert_eq!(accepted[1].0, Event::Resolved);
    // The next episode is the marker: anything queued for the refusing one comes first.
    s.receivers[0]
        .refusing
        .store(false, std::sync::atomic::Ordering::SeqCst);
    s.run(40, CheckState::Fail, 2);
    let refused = s.receivers[0].wait_for(2).await;
    assert_eq!(
        refused,
        [
            (
                Event::Firing,
                episode_id("web", start_of(30)),
                Severity::Critical
            ),
            (
                Event::Firing,
                episode_id("web", start_of(40)),
                Severity::Critical
            ),
        ]
    );
    s.stop.cancel();
}

/// A warning told before a window, escalated to a failure inside it: when the window
/// ends, the failure is sent (the receiver knew only of the warning).
#[tokio::test]
async fn an_escalation_held_back_by_a_window_is_sent_when_it_ends() {
    let check = format!("{CHECK}notify_on = [\"fail\", \"warn\"]\n");
    let window = |end: SystemTime| MaintenanceConfig {
        name: "upgrade".to_string(),
        checks: vec!["web".to_string()],
        start: Some(
            jiff::Timestamp::try_from(SystemTime::now() - Duration::from_secs(60))
                .unwrap()
                .to_string(),
        ),
        end: Some(jiff::Timestamp::try_from(end).unwrap().to_string()),
        at: None,
        duration: None,
        days: Vec::new(),
        time_zone: "UTC".to_string(),
    };
    let (windows, updates) = watch::channel(Arc::new(Vec::new()));
    let mut s = setup_with(&check, None, false, Maintenance::default(), Some(updates));
    s.run(50, CheckState::Warn, 1);
    s.receivers[0].wait_for(1).await;
    // A window begins (a reload); the check fails inside it.
    windows.send_replace(Arc::new(vec![window(
        SystemTime::now() + Duration::from_secs(3600),
    )]));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    s.run(51, CheckState::Fail, 2);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(s.receivers[0].taken().len(), 1, "held back by the window");
    // The window ends while it still fails: the failure goes out.
    windows.send_replace(Arc::new(Vec::new()));
    let taken = s.receivers[0].wait_for(2).await;
    assert_eq!(
        taken[1],
        (
            Event::Firing,
            episode_id("web", start_of(50)),
            Severity::Critical
        )
    );
    s.stop.cancel();
}

/// After a restart, a receiver that had accepted the episode is not told again; one that
/// had not is told with the first result that shows the check still failing.
#[tokio::test]
async fn a_resumed_episode_tells_only_the_receivers_that_had_not_accepted_it() {
    let mut s = setup(CHECK, None, true);
    let episode = Episode {
        id: episode_id("web", start_of(60)),
        check: "web".to_string(),
        started_at: start_of(60),
        opened_at: start_of(60),
        severity: Severity::Critical,
        peak: Severity::Critical,
    };
    s.notifications.lock().resumed.insert(
        episode.id.clone(),
        Resumed {
            check_type: CheckType::Http,
            accepted: BTreeMap::from([("rec".to_string(), Severity::Critical)]),
            pending: BTreeSet::new(),
        },
    );
    s.notifications.resume(&s.check, &episode, CheckState::Fail);
    s.track = serde_json::from_value(serde_json::json!({
        "failing_since": {"scheduled_at": "1970-01-01T00:01:00Z", "finished_at": "1970-01-01T00:01:00Z"},
        "open": episode,
    }))
    .unwrap();
    s.run(70, CheckState::Fail, 2);
    let other = s.receivers[0].wait_for(1).await;
    assert_eq!(
        other,
        [(Event::Firing, episode.id.clone(), Severity::Critical)]
    );
    s.run(71, CheckState::Ok, 0);
    let rec = s.receivers[1].wait_for(1).await;
    assert_eq!(
        rec,
        [(Event::Resolved, episode.id.clone(), Severity::Critical)]
    );
    let other = s.receivers[0].wait_for(2).await;
    assert_eq!(other[1].0, Event::Resolved);
    s.stop.cancel();
}

/// A receiver down through every attempt of a trigger gets it again later (not only the
/// next trigger), and one down through a resolve gets the resolve again; neither is lost.
#[tokio::test(start_paused = true)]
async fn triggers_and_resolves_given_up_are_sent_again() {
    use std::sync::atomic::Ordering::SeqCst;
    let mut s = setup(CHECK, None, false);
    let receiver = Arc::clone(&s.receivers[0]);
    // Runs of today: a resolve is sent again for a day after its episode ended.
    let today = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let id = episode_id("web", start_of(today));
    receiver.down.store(true, SeqCst);
    s.run(today, CheckState::Fail, 2);
    receiver.wait_for(1).await;
    tokio::time::sleep(RETRIGGER_AFTER - Duration::from_secs(10)).await;
    assert_eq!(receiver.taken().len(), 1, "not before its time");
    receiver.down.store(false, SeqCst);
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert_eq!(
        receiver.taken(),
        [
            (Event::Firing, id.clone(), Severity::Critical),
            (Event::Firing, id.clone(), Severity::Critical),
        ],
        "the trigger again, under the same id"
    );
    // Accepted now: no more triggers without `repeat_interval`.
    tokio::time::sleep(RETRIGGER_AFTER * 2).await;
    assert_eq!(receiver.taken().len(), 2);
    // Down again when the check recovers: the resolve is given up, then sent again.
    receiver.down.store(true, SeqCst);
    s.run(today + 1, CheckState::Ok, 0);
    receiver.wait_for(3).await;
    receiver.down.store(false, SeqCst);
    tokio::time::sleep(RETRIGGER_AFTER + Duration::from_secs(10)).await;
    let taken = receiver.taken();
    assert_eq!(
        taken[2..],
        [
            (Event::Resolved, id.clone(), Severity::Critical),
            (Event::Resolved, id.clone(), Severity::Critical),
        ]
    );
    assert!(
        s.notifications.lock().resolving.is_empty(),
        "delivered, forgotten"
    );
    tokio::time::sleep(RETRIGGER_AFTER * 2).await;
    assert_eq!(receiver.taken().len(), 4, "nothing after it was taken");
    s.stop.cancel();
}

/// A resolve the last run could not deliver goes out again at start, only to receivers still
/// configured with `send_resolved`; one whose notifier was removed is not kept waiting.
#[tokio::test]
async fn resolves_taken_back_go_only_to_receivers_that_still_exist() {
    let s = setup(CHECK, None, false);
    let episode = Episode {
        id: episode_id("web", start_of(90)),
        check: "web".to_string(),
        started_at: start_of(90),
        opened_at: start_of(90),
        severity: Severity::Critical,
        peak: Severity::Critical,
    };
    let resolve = ResolveFacts {
        episode: episode.clone(),
        check_type: CheckType::Http,
        state: CheckState::Ok,
        reason: crate::model::EndReason::Recovered,
        at: start_of(95),
        failing: 0,
        instances: 2,
    };
    let entry = |pending: &[&str]| {
        serde_json::to_value(crate::notify::saved::SavedDelivery::Resolving {
            resolve: resolve.clone(),
            pending: pending.iter().map(|name| name.to_string()).collect(),
        })
        .unwrap()
    };
    s.notifications.take_back(BTreeMap::from([
        ("gone".to_string(), entry(&["removed"])),
        (episode.id.clone(), entry(&["rec", "removed"])),
    ]));
    let taken = s.receivers[0].wait_for(1).await;
    assert_eq!(
        taken,
        [(Event::Resolved, episode.id.clone(), Severity::Critical)]
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    let state = s.notifications.lock();
    assert!(!state.resolving.contains_key("gone"), "nobody left to tell");
    assert!(
        state.resolving.is_empty(),
        "rec took it: {:?}",
        state.resolving.keys().collect::<Vec<_>>()
    );
    drop(state);
    s.stop.cancel();
}

/// A warning taken, then the failure given up (the receiver went down as it escalated): the
/// failure is sent again once the receiver is back, saying what it escalated from, even
/// without `repeat_interval`.
#[tokio::test(start_paused = true)]
async fn an_escalation_given_up_is_sent_again() {
    use std::sync::atomic::Ordering::SeqCst;
    let check = format!("{CHECK}notify_on = [\"fail\", \"warn\"]\n");
    let mut s = setup(&check, None, false);
    let receiver = Arc::clone(&s.receivers[0]);
    let id = episode_id("web", start_of(300));
    s.run(300, CheckState::Warn, 1);
    receiver.wait_for(1).await;
    receiver.down.store(true, SeqCst);
    s.run(301, CheckState::FailWait, 2);
    s.run(302, CheckState::Fail, 2);
    receiver.wait_for(2).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    receiver.down.store(false, SeqCst);
    for n in 0..20u64 {
        tokio::time::sleep(Duration::from_secs(30)).await;
        s.run(303 + n, CheckState::Fail, 2);
    }
    assert_eq!(
        receiver.taken(),
        [
            (Event::Firing, id.clone(), Severity::Warning),
            (Event::Firing, id.clone(), Severity::Critical),
            (Event::Firing, id.clone(), Severity::Critical),
        ]
    );
    let previous = receiver.taken.lock().unwrap()[2].previous_severity;
    assert_eq!(previous, Some(Severity::Warning));
    s.stop.cancel();
}

/// A resolve to a receiver that never takes it is sent again for a day after its episode
/// ended, then given up: a dead receiver is not sent every resolve for ever. (Here the episode
/// ended in 1970, so the first failure is the last.)
#[tokio::test(start_paused = true)]
async fn a_resolve_never_taken_is_given_up_a_day_after_its_episode_ended() {
    use std::sync::atomic::Ordering::SeqCst;
    let mut s = setup(CHECK, None, false);
    let receiver = Arc::clone(&s.receivers[0]);
    s.run(400, CheckState::Fail, 2);
    receiver.wait_for(1).await;
    receiver.down.store(true, SeqCst);
    s.run(401, CheckState::Ok, 0);
    receiver.wait_for(2).await;
    tokio::time::sleep(Duration::from_secs(7 * 24 * 3600)).await;
    assert_eq!(receiver.taken().len(), 2, "{:?}", receiver.taken());
    assert!(
        s.notifications.lock().resolving.is_empty(),
        "given up, forgotten"
    );
    s.stop.cancel();
}
