//! The result sink: consumes every `CheckResult` on the bus, keeps each check's latest in
//! memory for the API, and records the `probe_*` metrics. When an instance disappears from a
//! check's results (its address left DNS, say), its series are removed, so `/metrics` never
//! shows a stale instance as if it were still probed.

use crate::bus::{Message, Subscription};
use crate::messages::{self, CheckResult};
use crate::metrics::{Metrics, ReasonLabels};
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, RwLock};
use tokio_util::sync::CancellationToken;

/// The latest result of each check.
#[derive(Debug, Default)]
pub struct ResultStore {
    latest: RwLock<HashMap<String, Arc<CheckResult>>>,
}

impl ResultStore {
    pub fn latest(&self, check: &str) -> Option<Arc<CheckResult>> {
        self.read().get(check).cloned()
    }

    fn store(&self, result: Arc<CheckResult>) {
        self.latest
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(result.check.clone(), result);
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Arc<CheckResult>>> {
        // Readers only clone Arcs; a poisoned map is still consistent.
        self.latest
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Consumes results from `subscription` until `stop` is cancelled; results already delivered
/// by then are still recorded, so the last runs of a shutdown are not lost.
pub async fn consume(
    mut subscription: Subscription,
    store: Arc<ResultStore>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let mut sink = Sink {
        store,
        metrics,
        targets: HashMap::new(),
    };
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            message = subscription.next() => match message {
                Some(message) => sink.handle(&message),
                None => return,
            },
        }
    }
    while let Some(message) = subscription.try_next() {
        sink.handle(&message);
    }
}

struct Sink {
    store: Arc<ResultStore>,
    metrics: Arc<Metrics>,
    /// Targets last recorded per check, to remove the series of those that vanish.
    targets: HashMap<String, BTreeSet<String>>,
}

impl Sink {
    fn handle(&mut self, message: &Message) {
        let result: CheckResult = match messages::decode(&message.payload) {
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
        if let Some(current) = self.store.latest(&result.check) {
            if current.scheduled_at > result.scheduled_at {
                return; // an older run arriving late says nothing about now
            }
        }
        let now: BTreeSet<String> = result
            .responses
            .iter()
            .map(|response| response.target.clone())
            .collect();
        if let Some(before) = self.targets.get(&result.check) {
            for gone in before.difference(&now) {
                self.metrics.forget_target(&result.check, gone);
            }
        }
        for response in &result.responses {
            self.metrics
                .record_response(&result.check, result.check_type, response);
        }
        tracing::debug!(check = %result.check, passing = result.passing, responses = result.responses.len(), "result");
        self.targets.insert(result.check.clone(), now);
        self.store.store(Arc::new(result));
    }
}
