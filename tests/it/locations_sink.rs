//! The result sink's judgement of checks with `locations`, driven directly on the embedded
//! bus: results (and `no_runner` results) published by hand, in the orders a real bus can
//! deliver them, and the store's and the state events' answers read back.

use crate::common::*;

use bastion_agent::bus::memory::MemoryBus;
use bastion_agent::bus::Bus;
use bastion_agent::checks::CheckType;
use bastion_agent::messages::{self, CheckResult, Degraded, DegradedForm, Response, Timings};
use bastion_agent::model::{CheckState, ErrorKind, ProbeError};
use bastion_agent::results::{consume, EventOutlet, ResultStore, SinkContext};
use bastion_agent::subjects::Subjects;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio_util::sync::CancellationToken;

const NATS: &str = "[bus]\nkind = \"nats\"\n[bus.nats]\nurl = \"nats://127.0.0.1:4222\"\n";

fn response(target: &str, passing: bool, kind: ErrorKind) -> Response {
    Response {
        passing,
        ..Response::failed(
            target.to_string(),
            ProbeError::new(kind, "x"),
            Timings::default(),
        )
    }
}

fn result(location: &str, at: SystemTime, responses: Vec<Response>) -> CheckResult {
    CheckResult {
        version: 1,
        check: "web".into(),
        check_type: CheckType::Http,
        agent: format!("runner-{location}"),
        location: Some(location.into()),
        run_id: 1,
        scheduled_at: at,
        finished_at: at,
        passing: responses.iter().all(|r| r.passing),
        responses,
        degraded: None,
    }
}

struct Harness {
    bus: Arc<MemoryBus>,
    store: Arc<ResultStore>,
    stop: CancellationToken,
    sink: tokio::task::JoinHandle<()>,
    events: bastion_agent::bus::Subscription,
}

impl Harness {
    async fn start(toml: &str) -> Harness {
        Harness::resume(toml, Vec::new()).await
    }

    async fn resume(toml: &str, resumed: Vec<bastion_agent::episode::SavedCheck>) -> Harness {
        let bus = Arc::new(MemoryBus::default());
        let subscription = bus.subscribe("bastion.results.>", None).await.unwrap();
        let events = bus.subscribe("bastion.events.>", None).await.unwrap();
        let store = Arc::new(ResultStore::default());
        let stop = CancellationToken::new();
        let checks = config(toml).checks;
        let (checks_tx, watched) =
            tokio::sync::watch::channel(bastion_agent::config::check_list(checks));
        std::mem::forget(checks_tx);
        let context = SinkContext {
            store: Arc::clone(&store),
            metrics: Arc::new(bastion_agent::metrics::Metrics::new()),
            checks: watched,
            events: Some(EventOutlet {
                bus: Arc::clone(&bus) as Arc<dyn Bus>,
                subjects: Subjects::default(),
                leadership: None,
            }),
            notifications: None,
            history: None,
            saved: bastion_agent::saved_state::SavedState::in_memory(),
            resumed,
        };
        let sink = tokio::spawn(consume(subscription, context, stop.clone()));
        Harness {
            bus,
            store,
            stop,
            sink,
            events,
        }
    }

    async fn send(&self, result: CheckResult) {
        let payload = messages::encode(&result).unwrap();
        self.bus
            .publish("bastion.results.web", payload.into())
            .await
            .unwrap();
    }

    async fn finish(self) -> (Arc<ResultStore>, Vec<messages::StateEvent>) {
        self.stop.cancel();
        tokio::time::timeout(PATIENCE, self.sink)
            .await
            .unwrap()
            .unwrap();
        let mut events = self.events;
        let mut seen = Vec::new();
        while let Some(message) = events.try_next() {
            seen.push(message.payload.decode().unwrap());
        }
        (self.store, seen)
    }
}

/// With `["*"]`, a location whose last runner left gets one `no_runner` result and leaves the
/// judgement. A result of a run it took before leaving (a runner drains its runs as it stops,
/// and nothing orders its result before the checker's `no_runner`) says nothing about now: it
/// must not bring the location back, where no later `no_runner` would ever remove it again.
#[tokio::test]
async fn a_late_result_from_before_a_location_left_does_not_bring_it_back() {
    let harness = Harness::start(&format!(
        "{NATS}[[checks]]\nname = \"web\"\ntype = \"http\"\nurl = \"http://web.internal/\"\n\
         interval = \"10s\"\nlocations = [\"*\"]\n"
    ))
    .await;
    let t0 = SystemTime::now();
    let tick = Duration::from_secs(10);
    harness
        .send(result(
            "eu",
            t0,
            vec![response("10.0.0.1:80", true, ErrorKind::Http)],
        ))
        .await;
    harness
        .send(result(
            "us",
            t0,
            vec![response("10.0.0.1:80", true, ErrorKind::Http)],
        ))
        .await;
    // eu's runner leaves while running the tick at t0 + 10 s; the checker's next tick finds
    // no runner there.
    harness
        .send(result(
            "eu",
            t0 + 2 * tick,
            vec![response("(no runner)", false, ErrorKind::NoRunner)],
        ))
        .await;
    // The drained run of t0 + 10 s (it failed as the runner went down) arrives after.
    harness
        .send(result(
            "eu",
            t0 + tick,
            vec![response("10.0.0.1:80", false, ErrorKind::Connect)],
        ))
        .await;
    // us goes on passing.
    for n in 1..4 {
        harness
            .send(result(
                "us",
                t0 + n * tick,
                vec![response("10.0.0.1:80", true, ErrorKind::Http)],
            ))
            .await;
    }
    let (store, _) = harness.finish().await;
    let status = store.status("web").unwrap();
    let locations: Vec<&String> = status.locations.as_ref().unwrap().keys().collect();
    assert_eq!(locations, ["us"], "eu left the check's judgement");
    assert_eq!(status.state, CheckState::Ok);
}

/// A location's result reduced for the bus (summarised: only some responses, the counts
/// over every instance in `degraded`) counts with all its instances in the check's combined
/// view: the state event (and the notification, built from the same view) says how many
/// instances fail, not how many responses happened to fit.
#[tokio::test]
async fn a_summarised_location_result_counts_all_its_instances_in_the_combined_view() {
    let harness = Harness::start(&format!(
        "{NATS}[[checks]]\nname = \"web\"\ntype = \"http\"\nurl = \"http://web.internal/\"\n\
         interval = \"10s\"\nlocations = [\"eu\", \"us\"]\nmin_failing_time = \"0s\"\n"
    ))
    .await;
    let t0 = SystemTime::now();
    harness
        .send(result(
            "us",
            t0,
            vec![response("10.0.0.1:80", true, ErrorKind::Http)],
        ))
        .await;
    let mut summarised = result(
        "eu",
        t0,
        vec![
            response("10.0.0.1:80", false, ErrorKind::Connect),
            response("10.0.0.2:80", false, ErrorKind::Connect),
        ],
    );
    summarised.degraded = Some(Box::new(Degraded {
        form: DegradedForm::Summarised,
        instances: 500,
        failing: 300,
        omitted: 498,
        unmeasured: 0,
        locations: Vec::new(),
    }));
    harness.send(summarised).await;
    let (store, events) = harness.finish().await;
    assert_eq!(store.status("web").unwrap().state, CheckState::Fail);
    let event = events.last().expect("a transition to FAIL");
    assert_eq!(event.to, CheckState::Fail);
    assert_eq!(
        (event.failing, event.responses),
        (300, 501),
        "300 of eu's 500 instances and none of us's 1 fail"
    );
}
