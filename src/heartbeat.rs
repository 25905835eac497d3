//! Heartbeats: every agent says it is alive on `{prefix}.heartbeat.{agent}` every 10 s, with
//! its role, version, uptime, whether it leads (HA checkers) and how busy its workers are. It
//! only reads shared state and publishes; a refused publish is counted, never retried.

use crate::bus::Bus;

use crate::lease::Leadership;
use crate::messages::{self, Heartbeat, MESSAGE_VERSION};
use crate::metrics::{Metrics, SubjectLabels};
use crate::runner::dispatcher::Dispatcher;
use crate::subjects::Subjects;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(10);

/// What a heartbeat reports, and where it goes.
#[derive(Debug)]
pub struct Heartbeats {
    pub bus: Arc<dyn Bus>,
    pub subjects: Subjects,
    pub agent: String,
    pub role: &'static str,
    pub started: Instant,
    pub dispatcher: Option<Arc<Dispatcher>>,
    pub leadership: Option<Leadership>,
    pub metrics: Arc<Metrics>,
}

impl Heartbeats {
    fn current(&self) -> Heartbeat {
        Heartbeat {
            version: MESSAGE_VERSION,
            agent: self.agent.clone(),
            role: self.role.to_string(),
            bastion_version: env!("CARGO_PKG_VERSION").to_string(),
            sent_at: SystemTime::now(),
            uptime_seconds: self.started.elapsed().as_secs_f64(),
            leader: self.leadership.as_ref().map(|leading| *leading.borrow()),
            workers: self
                .dispatcher
                .as_ref()
                .map(|dispatcher| dispatcher.usage())
                .unwrap_or_default(),
        }
    }

    /// Publishes one now, then one every interval, until `stop`.
    pub async fn run(self, stop: CancellationToken) {
        let subject = self.subjects.heartbeat(&self.agent);
        let mut ticks = tokio::time::interval(HEARTBEAT_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = ticks.tick() => {}
            }
            let published = match messages::encode(&self.current()) {
                Ok(payload) => self
                    .bus
                    .publish(&subject, payload.into())
                    .await
                    .map_err(|e| e.to_string()),
                Err(error) => Err(error.to_string()),
            };
            if let Err(error) = published {
                tracing::debug!(%error, "heartbeat not published");
                self.metrics
                    .bus_publish_errors
                    .get_or_create(&SubjectLabels {
                        subject: "heartbeat",
                    })
                    .inc();
            }
        }
    }
}
