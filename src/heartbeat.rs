//! Heartbeats: every agent says it is alive on `{prefix}.heartbeat.{agent}` every
//! `agent.heartbeat_interval` (10 s), with its role, version, uptime, whether it leads (HA
//! checkers), and for agents that probe their location and how busy their workers are; the
//! last one, as the agent stops taking work, says it is leaving. Checkers learn from them
//! which locations have live runners (`src/locations.rs`). It only reads shared state and
//! publishes; a refused publish is counted, never retried.

use crate::bus::{Bus, BusMetrics};

use crate::lease::Leadership;
use crate::messages::{self, Heartbeat, MESSAGE_VERSION};
use crate::runner::dispatcher::Dispatcher;
use crate::subjects::Subjects;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// What a heartbeat reports, and where it goes.
#[derive(Debug)]
pub struct Heartbeats {
    pub bus: Arc<dyn Bus>,
    pub subjects: Subjects,
    pub agent: String,
    pub role: &'static str,
    pub started: Instant,
    /// How often (`agent.heartbeat_interval`).
    pub interval: Duration,
    /// For agents that probe: their `runner.location`.
    pub location: Option<String>,
    pub dispatcher: Option<Arc<Dispatcher>>,
    pub leadership: Option<Leadership>,
    /// Where a heartbeat that could not be published is counted.
    pub metrics: BusMetrics,
}

impl Heartbeats {
    fn current(&self, leaving: bool) -> Heartbeat {
        Heartbeat {
            version: MESSAGE_VERSION,
            agent: self.agent.clone(),
            location: self.location.clone(),
            leaving,
            interval_seconds: Some(self.interval.as_secs_f64()),
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

    /// Publishes one now, then one every interval, until `stop`; then one that says the
    /// agent is leaving.
    pub async fn run(self, stop: CancellationToken) {
        let subject = self.subjects.heartbeat(&self.agent);
        let mut ticks = tokio::time::interval(self.interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let leaving = tokio::select! {
                _ = stop.cancelled() => true,
                _ = ticks.tick() => false,
            };
            self.publish(&subject, leaving).await;
            if leaving {
                break;
            }
        }
    }

    async fn publish(&self, subject: &str, leaving: bool) {
        let published = match messages::encode(&self.current(leaving)) {
            Ok(payload) => self
                .bus
                .publish(subject, payload.into())
                .await
                .map_err(|e| e.to_string()),
            Err(error) => Err(error.to_string()),
        };
        if let Err(error) = published {
            tracing::debug!(%error, "heartbeat not published");
            self.metrics.count_publish_error("heartbeat");
        }
    }
}
