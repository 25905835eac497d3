//! What a running agent holds: the parts its tasks share, the tasks it starts, and the order
//! in which shutdown stops them (scheduling first, runs in flight given `shutdown_grace`, the
//! bus flushed, then the outlets). It wires and waits; it must never drop a result that a
//! finished run published before the outlets stop.

use super::{AgentError, Role};
use crate::bus::Bus;
use crate::config::Config;
use crate::episode::SavedCheck;
use crate::heartbeat::Heartbeats;
use crate::http::ApiState;
use crate::lease::Leadership;
use crate::metrics::Metrics;
use crate::notify::{Notifications, NotificationsOptions};
use crate::reload::Reloader;
use crate::results::{EventOutlet, ResultStore, SinkContext};
use crate::runner::dispatcher::Dispatcher;
use crate::saved_state::SavedState;
use crate::subjects::Subjects;
use crate::systemd::ServiceManager;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The checks' states and episodes the last run saved; an entry that cannot be read is
/// logged and left out (that check starts afresh).
pub(super) fn saved_checks(
    section: std::collections::BTreeMap<String, serde_json::Value>,
) -> Vec<SavedCheck> {
    section
        .into_iter()
        .filter_map(
            |(check, value)| match serde_json::from_value::<SavedCheck>(value) {
                Ok(saved) => Some(saved),
                Err(error) => {
                    tracing::warn!(%check, %error, "a saved check state is not readable; the check starts afresh");
                    None
                }
            },
        )
        .collect()
}

/// The notifiers of a scheduling agent, built before it starts.
pub(super) struct NotifySetup {
    pub(super) notifiers: Vec<crate::notify::Built>,
    pub(super) maintenance: crate::notify::Maintenance,
    /// The windows of each reloaded config.
    pub(super) maintenance_updates: watch::Receiver<Arc<Vec<crate::config::MaintenanceConfig>>>,
}

/// What the agent's components share while it runs; each task gets its own clone of a part.
pub(super) struct Components {
    pub(super) config: Config,
    pub(super) role: Role,
    pub(super) bus: Arc<dyn Bus>,
    pub(super) subjects: Subjects,
    pub(super) metrics: Arc<Metrics>,
    pub(super) store: Arc<ResultStore>,
    /// The configured checks; reloads send new lists through it.
    pub(super) checks: watch::Sender<crate::config::CheckList>,
    pub(super) service_manager: Option<Arc<ServiceManager>>,
    /// Read access to history, for the endpoints.
    pub(super) history: Option<crate::history::HistoryReader>,
}

impl Components {
    /// What the endpoints read.
    pub(super) fn api_state(
        &self,
        started: &Arc<AtomicBool>,
        reloader: Option<Arc<Reloader>>,
        probe: Option<Arc<crate::http::probe::ProbeEndpoint>>,
    ) -> ApiState {
        // A runner schedules nothing: its API lists no checks.
        let api_checks = if self.role.schedules() {
            self.checks.subscribe()
        } else {
            watch::channel(Arc::new(Vec::new())).1
        };
        ApiState {
            metrics: Arc::clone(&self.metrics),
            store: Arc::clone(&self.store),
            checks: crate::http::Checks::new(api_checks),
            bus: Arc::clone(&self.bus),
            started: Arc::clone(started),
            reloader,
            reload_endpoint: self.config.agent.web.reload_endpoint,
            history: self.history.clone(),
            status_page: self.config.agent.web.status_page,
            probe,
            scrapes: Arc::default(),
        }
    }

    /// Holds the checker's lease when there is one; without one, a scheduling agent leads.
    pub(super) fn start_lease(
        &self,
        lease: Option<Arc<dyn crate::bus::LeaseStore>>,
        stop: &CancellationToken,
    ) -> (Option<Leadership>, Option<JoinHandle<()>>) {
        match lease {
            Some(store) => {
                let (leadership, task) = crate::lease::spawn(
                    store,
                    self.config.agent.id.clone(),
                    self.config.checker.lease_ttl,
                    &self.metrics,
                    stop.clone(),
                );
                (Some(leadership), Some(task))
            }
            None => {
                if self.role.schedules() {
                    self.metrics
                        .component::<crate::lease::LeaderMetrics>()
                        .set_leading(true);
                }
                (None, None)
            }
        }
    }

    /// Starts the notifiers' queues and routing; they deliver only while this agent leads.
    pub(super) fn start_notifications(
        &self,
        setup: NotifySetup,
        leadership: Option<Leadership>,
        saved: Arc<SavedState>,
        resumed: std::collections::BTreeMap<String, serde_json::Value>,
        stop: &CancellationToken,
        tasks: &TaskTracker,
    ) -> Arc<Notifications> {
        Notifications::start(
            NotificationsOptions {
                notifiers: setup.notifiers,
                maintenance: setup.maintenance,
                maintenance_updates: Some(setup.maintenance_updates),
                agent: self.config.agent.id.clone(),
                link_base: crate::notify::api_base(&self.config),
                metrics: Arc::clone(&self.metrics),
                leadership,
                saved,
                resumed,
            },
            stop,
            tasks,
        )
    }

    /// Records the results arriving on `results`, publishes their events and tells the
    /// notifiers.
    pub(super) fn spawn_sink(
        &self,
        results: crate::bus::Subscription,
        leadership: Option<Leadership>,
        notifications: Option<Arc<Notifications>>,
        history: Option<crate::history::Recorder>,
        (saved, resumed): (Arc<SavedState>, Vec<SavedCheck>),
        stop: &CancellationToken,
    ) -> JoinHandle<()> {
        let events = EventOutlet {
            bus: Arc::clone(&self.bus),
            subjects: self.subjects.clone(),
            leadership,
        };
        let context = SinkContext {
            store: Arc::clone(&self.store),
            metrics: Arc::clone(&self.metrics),
            checks: self.checks.subscribe(),
            events: Some(events),
            notifications,
            history,
            saved,
            resumed,
        };
        tokio::spawn(crate::results::consume(results, context, stop.clone()))
    }

    /// Reports this agent to systemd, when systemd started it.
    pub(super) fn spawn_systemd_status(&self, stop: &CancellationToken) -> Option<JoinHandle<()>> {
        self.service_manager.clone().map(|service_manager| {
            tokio::spawn(super::status::report_to_systemd(
                service_manager,
                self.checks.subscribe(),
                Arc::clone(&self.store),
                self.role,
                stop.clone(),
            ))
        })
    }

    /// Publishes this agent's heartbeats on the bus.
    pub(super) fn spawn_heartbeats(
        &self,
        dispatcher: Option<Arc<Dispatcher>>,
        leadership: Option<Leadership>,
        stop: &CancellationToken,
    ) -> JoinHandle<()> {
        let heartbeats = Heartbeats {
            bus: Arc::clone(&self.bus),
            subjects: self.subjects.clone(),
            agent: self.config.agent.id.clone(),
            role: self.role.as_str(),
            started: Instant::now(),
            interval: crate::config::bounds::HEARTBEAT_INTERVAL
                .cap_duration(self.config.agent.heartbeat_interval),
            location: dispatcher
                .as_ref()
                .map(|_| self.config.runner.location.clone()),
            dispatcher,
            leadership,
            metrics: self.metrics.component(),
        };
        tokio::spawn(heartbeats.run(stop.clone()))
    }
}

/// Serves the agent's endpoints on `listener`, over TLS when `tls` is set, until `stop`.
pub(super) fn serve(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    router: axum::Router,
    stop: CancellationToken,
) -> Result<JoinHandle<std::io::Result<()>>, AgentError> {
    Ok(match tls {
        Some(tls) => {
            let listener =
                crate::http::tls::TlsListener::new(listener, tls).map_err(AgentError::Serve)?;
            tokio::spawn(async move {
                axum::serve(listener, router)
                    .with_graceful_shutdown(async move { stop.cancelled().await })
                    .await
            })
        }
        None => tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await
        }),
    })
}

/// A started agent: its tasks, and the two tokens that stop them in two steps. `intake` stops
/// what takes new work (checker, lease, runner); `outlets` what carries results out.
pub(super) struct Running {
    pub(super) components: Components,
    pub(super) intake: CancellationToken,
    pub(super) outlets: CancellationToken,
    /// Set while every component runs; `/readyz` reads it.
    pub(super) started: Arc<AtomicBool>,
    pub(super) server: JoinHandle<std::io::Result<()>>,
    pub(super) checker: Option<JoinHandle<()>>,
    pub(super) lease: Option<JoinHandle<()>>,
    pub(super) runner: Option<JoinHandle<()>>,
    /// The runner's runs in flight.
    pub(super) runs: Option<TaskTracker>,
    pub(super) sink: Option<JoinHandle<()>>,
    /// The history writer; it ends once the sink has and its last batch is written.
    pub(super) history: Option<JoinHandle<()>>,
    pub(super) heartbeat: JoinHandle<()>,
    pub(super) systemd: Option<JoinHandle<()>>,
    pub(super) notifications: Option<Arc<Notifications>>,
    /// Stops the notifiers' deliveries, after they had a chance to drain.
    pub(super) notify_stop: CancellationToken,
    pub(super) notify_tasks: TaskTracker,
    /// Writes the saved state; stopped last, after everything that changes it.
    pub(super) saver: JoinHandle<()>,
    pub(super) saved_stop: CancellationToken,
}

impl Running {
    /// Stops scheduling, lets runs in flight finish for up to `shutdown_grace` and their
    /// results leave, then stops the outlets and the endpoints.
    pub(super) async fn shut_down(self) {
        let Running {
            components,
            intake,
            outlets,
            started,
            server,
            checker,
            lease,
            runner,
            runs,
            sink,
            history,
            heartbeat,
            systemd,
            notifications,
            notify_stop,
            notify_tasks,
            saver,
            saved_stop,
        } = self;
        tracing::info!("shutting down: scheduling stopped, waiting for runs in flight");
        if let Some(service_manager) = &components.service_manager {
            service_manager.stopping();
        }
        started.store(false, Ordering::Release);
        intake.cancel();
        for task in [checker, lease, runner].into_iter().flatten() {
            let _ = task.await;
        }
        let grace = crate::config::bounds::SHUTDOWN_GRACE
            .cap_duration(components.config.agent.shutdown_grace);
        let grace_ends = Instant::now() + grace;
        if let Some(runs) = runs {
            if tokio::time::timeout(grace, runs.wait()).await.is_err() {
                tracing::warn!(
                    runs = runs.len(),
                    grace = %humantime::format_duration(grace),
                    "runs still in flight when the shutdown grace expired; abandoning them"
                );
            }
        }
        // Results of the last runs may still be on their way to the server or the stream.
        components
            .bus
            .flush(
                grace_ends
                    .saturating_duration_since(Instant::now())
                    .max(Duration::from_millis(500)),
            )
            .await;
        outlets.cancel();
        if let Some(sink) = sink {
            let _ = sink.await;
        }
        // The last transitions' notifications get what is left of the grace, at least 2 s.
        if let Some(notifications) = &notifications {
            let until = grace_ends.max(Instant::now() + Duration::from_secs(2));
            notifications.drain(until).await;
        }
        notify_stop.cancel();
        notify_tasks.close();
        let _ = tokio::time::timeout(Duration::from_secs(2), notify_tasks.wait()).await;
        // Held until here: the deliveries report what they could not send as they stop.
        drop(notifications);
        if let Some(history) = history {
            // The writer writes its last batch (giving up after a few seconds).
            if tokio::time::timeout(Duration::from_secs(10), history)
                .await
                .is_err()
            {
                tracing::warn!("the history writer did not stop in time");
            }
        }
        // The last word on episodes and deliveries: written after all of them.
        saved_stop.cancel();
        let _ = saver.await;
        let _ = heartbeat.await;
        if let Some(task) = systemd {
            let _ = task.await;
        }
        let _ = server.await;
        tracing::info!("bastion stopped");
    }
}
