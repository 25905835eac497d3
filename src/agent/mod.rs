//! The agent: the components one process runs for its role, wired together. `all` runs a
//! checker, a runner and the result sink on one bus (the embedded one by default); `checker`
//! and `runner` split them across processes over NATS. Start-up goes in phases: `Config`
//! (validated) -> `Agent::build` (binds, connects, subscribes) -> `Agent::run(shutdown)`.
//! Shutdown stops scheduling first, lets runs in flight finish for up to `shutdown_grace` so
//! their results are still published and recorded, then stops the rest.
//!
//! This file holds the agent itself (roles, build, run); `tasks` what a running agent holds
//! and the order it stops in, `thread` the checker's own thread, `status` the systemd
//! reporting, `once` the one-shot commands. The agent wires components together: it must
//! never probe, schedule or judge anything itself.

mod legacy;
mod once;
mod status;
mod tasks;
mod thread;

pub use once::{healthcheck, run_once, run_remote};

use crate::bus::memory::MemoryBus;
use crate::bus::nats::NatsBus;
use crate::bus::LeaseStore;
use crate::bus::{Bus, BusError};
use crate::checker::Checker;
use crate::config::{BusKind, Config};
use crate::metrics::Metrics;
use crate::reload::Reloader;
use crate::results::ResultStore;
use crate::runner::{build_dispatcher, Runner, RunnerError};
use crate::subjects::Subjects;
use crate::systemd::ServiceManager;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tasks::{Components, Running};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Which components this process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Role {
    /// Checker, runner and result sink in one process.
    #[default]
    All,
    /// Schedules checks and records their results; probes nothing.
    Checker,
    /// Runs whatever checks arrive; needs no checks in its config.
    Runner,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::All => "all",
            Role::Checker => "checker",
            Role::Runner => "runner",
        }
    }

    fn schedules(self) -> bool {
        matches!(self, Role::All | Role::Checker)
    }

    fn probes(self) -> bool {
        matches!(self, Role::All | Role::Runner)
    }
}

/// How to start, beyond the config file.
#[derive(Debug, Clone, Default)]
pub struct AgentOptions {
    pub role: Role,
    /// Overrides `bus.nats.connect_timeout`.
    pub bus_connect_timeout: Option<Duration>,
    /// The file the config came from, for reloads (SIGHUP, `POST /-/reload`).
    pub config_path: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot listen on {address}: {source}; set agent.listen to a free address")]
    Listen {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Runner(#[from] RunnerError),
    #[error("bus: {0}")]
    Bus(#[from] BusError),
    #[error("the HTTP server failed: {0}")]
    Serve(std::io::Error),
    #[error("no check is named `{0}`")]
    NoSuchCheck(String),
    #[error("check `{0}` cannot run: {1}")]
    InvalidCheck(String, String),
    #[error("a check run failed: {0}")]
    RunFailed(String),
    #[error("role `{0}` needs a shared bus: set [bus] kind = \"nats\" with [bus.nats] url, or run with --role all")]
    RoleNeedsNats(&'static str),
    #[error("--remote runs checks on the runners of a NATS bus: set [bus] kind = \"nats\" in the config")]
    RemoteNeedsNats,
    #[error(
        "no runner answers `{0}` checks on this bus; start one with `bastion run --role runner`"
    )]
    NoRunner(String),
    #[error(transparent)]
    WebTls(#[from] crate::http::tls::WebTlsError),
    #[error(transparent)]
    Notify(#[from] crate::notify::NotifyError),
    #[error("{0}")]
    Maintenance(String),
    #[error(transparent)]
    History(#[from] crate::history::HistoryError),
    #[error(transparent)]
    SavedState(#[from] crate::saved_state::SavedStateError),
}

/// A built agent, ready to run: what every role has, and the parts of the roles it runs.
pub struct Agent {
    components: Components,
    listener: TcpListener,
    web_tls: Option<Arc<rustls::ServerConfig>>,
    /// Reloads the config file on demand; None without a config path.
    reloader: Option<Arc<Reloader>>,
    /// The blackbox_exporter modules `/probe` runs, as the reloads send them.
    blackbox: watch::Receiver<Option<Arc<crate::config::blackbox::BlackboxModules>>>,
    /// What a scheduling role (`all`, `checker`) runs; None on a runner.
    scheduling: Option<Scheduling>,
    /// What a probing role (`all`, `runner`) runs; None on a checker.
    runner: Option<Runner>,
}

/// The parts of a scheduling role: the checker, and the sink's inputs and outlets.
struct Scheduling {
    checker: Checker,
    /// The lease HA checkers take turns on; None without `checker.ha`.
    lease: Option<Arc<dyn LeaseStore>>,
    /// Every result on the bus, for the sink.
    results: crate::bus::Subscription,
    /// The notifiers, built (secrets read), started with the sink; None without notifiers.
    notify: Option<tasks::NotifySetup>,
    /// History's two ends, None with history off: the recorder is moved into the sink, so
    /// the writer stops after it.
    history: Option<(crate::history::Recorder, crate::history::writer::Writer)>,
    /// What it keeps across restarts, and what the last run kept.
    saved: (
        Arc<crate::saved_state::SavedState>,
        crate::saved_state::Loaded,
    ),
}

/// Where a scheduling agent keeps its checks' states, failure episodes and who was told of
/// them across restarts: `episodes.json` beside the history database (the agent's state
/// directory by default), whether or not history is enabled.
pub fn episodes_file(config: &Config) -> std::path::PathBuf {
    config
        .history
        .path
        .parent()
        .unwrap_or_else(|| std::path::Path::new(""))
        .join("episodes.json")
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("listen", &self.listener.local_addr().ok())
            .finish_non_exhaustive()
    }
}

/// The TLS config of the agent's endpoints, when `agent.web` names a certificate and a key.
fn web_tls(config: &Config) -> Result<Option<Arc<rustls::ServerConfig>>, AgentError> {
    match (
        &config.agent.web.tls_cert_file,
        &config.agent.web.tls_key_file,
    ) {
        (Some(cert), Some(key)) => Ok(Some(crate::http::tls::server_config(cert, key)?)),
        _ => Ok(None),
    }
}

/// The process's metrics, with every component's families registered now, in this order: the
/// same families in the same order in every role. A family with no series yet is left out of
/// the text (prometheus-client writes no empty family); those a component presets at zero are
/// there from the start. Each component's own module declares its families
/// (`metrics::Component`).
pub fn register_metrics() -> Metrics {
    let metrics = Metrics::new();
    let _: crate::checker::ScheduleMetrics = metrics.component();
    let _: crate::runner::RunnerMetrics = metrics.component();
    let _: crate::runner::CheckDurations = metrics.component();
    let _: crate::http::probe::ProbeEndpointMetrics = metrics.component();
    let _: crate::bus::BusMetrics = metrics.component();
    let _: crate::lease::LeaderMetrics = metrics.component();
    let _: crate::results::SinkMetrics = metrics.component();
    let _: crate::reload::ReloadMetrics = metrics.component();
    let _: crate::notify::NotifyMetrics = metrics.component();
    let _: crate::history::HistoryMetrics = metrics.component();
    metrics
}

async fn bind(config: &Config) -> Result<TcpListener, AgentError> {
    TcpListener::bind(config.agent.listen)
        .await
        .map_err(|source| AgentError::Listen {
            address: config.agent.listen,
            source,
        })
}

/// Connects to NATS when the config says so.
async fn connect_nats(
    config: &Config,
    metrics: &Arc<Metrics>,
    connect_timeout: Option<Duration>,
) -> Result<Option<NatsBus>, AgentError> {
    match (&config.bus.kind, &config.bus.nats) {
        (BusKind::Nats, Some(nats)) => {
            let timeout = connect_timeout.or(nats.connect_timeout);
            Ok(Some(
                NatsBus::connect(nats, &config.agent.id, metrics, timeout).await?,
            ))
        }
        _ => Ok(None),
    }
}

/// The bus (NATS when configured, else the embedded one) and, for a scheduling role in HA
/// mode, the checker's lease store on the same connection.
async fn connect_bus(
    config: &Config,
    role: Role,
    metrics: &Arc<Metrics>,
    connect_timeout: Option<Duration>,
) -> Result<(Arc<dyn Bus>, Option<Arc<dyn LeaseStore>>), AgentError> {
    let nats = connect_nats(config, metrics, connect_timeout).await?;
    let lease: Option<Arc<dyn LeaseStore>> = match &nats {
        Some(nats) if role.schedules() && config.checker.ha => Some(Arc::new(
            nats.lease_store(
                &config.checker.lease_bucket,
                &config.agent.id,
                config.checker.lease_ttl,
            )
            .await?,
        )),
        _ => None,
    };
    let bus: Arc<dyn Bus> = match nats {
        Some(nats) => Arc::new(nats),
        None => {
            metrics
                .component::<crate::bus::BusMetrics>()
                .set_connected(true);
            Arc::new(MemoryBus::default())
        }
    };
    Ok((bus, lease))
}

async fn build_runner(
    config: &Config,
    bus: &Arc<dyn Bus>,
    subjects: &Subjects,
    metrics: &Arc<Metrics>,
) -> Result<Runner, AgentError> {
    let dispatcher = build_dispatcher(config, metrics)?;
    Ok(Runner::build(
        Arc::clone(bus),
        subjects.clone(),
        dispatcher,
        metrics,
        &config.runner.location,
    )
    .await?)
}

/// The checker, scheduling `checks` and following the reloads sent through the watch.
async fn build_checker(
    config: &Config,
    checks: &watch::Sender<crate::config::CheckList>,
    bus: &Arc<dyn Bus>,
    subjects: &Subjects,
    metrics: &Arc<Metrics>,
    role: Role,
) -> Result<Checker, AgentError> {
    let initial_checks = Arc::clone(&checks.borrow());
    let whereabouts = crate::checker::Whereabouts {
        agent: config.agent.id.clone(),
        heartbeat_interval: crate::config::bounds::HEARTBEAT_INTERVAL
            .cap_duration(config.agent.heartbeat_interval),
        local_location: role.probes().then(|| config.runner.location.clone()),
    };
    Ok(Checker::build(
        &initial_checks,
        config.runner.dispatch_deadline,
        Arc::clone(bus),
        subjects,
        metrics,
        whereabouts,
    )
    .await?
    .follow(checks.subscribe()))
}

impl Agent {
    /// Builds every component, in one process, on the configured bus.
    pub async fn build(config: Config) -> Result<Agent, AgentError> {
        Agent::build_with(config, AgentOptions::default()).await
    }

    /// Builds the components of `options.role`.
    pub async fn build_with(
        mut config: Config,
        options: AgentOptions,
    ) -> Result<Agent, AgentError> {
        let role = options.role;
        if role != Role::All && config.bus.kind == BusKind::Embedded {
            return Err(AgentError::RoleNeedsNats(role.as_str()));
        }
        if role.probes() {
            // Too low a limit would make probes fail as the targets' fault: say so now.
            crate::limits::warn_if_too_low(&config.runner.workers);
        }
        if let Some(warning) = config.open_endpoints_warning().filter(|_| role.schedules()) {
            tracing::warn!("{warning}");
        }
        let web_tls = web_tls(&config)?;
        let listener = bind(&config).await?;
        let metrics = Arc::new(register_metrics());
        let durations: crate::runner::CheckDurations = metrics.component();
        durations.limit(
            config.runner.max_check_series,
            config.runner.forget_checks_after,
        );
        metrics
            .component::<crate::reload::ReloadMetrics>()
            .record(true);
        let service_manager = ServiceManager::from_env().map(Arc::new);
        // The check list lives in one place, the watch; `config` keeps the other sections.
        let (checks, _) = watch::channel(crate::config::check_list(std::mem::take(
            &mut config.checks,
        )));
        if role == Role::All {
            // Run durations follow the configured checks here; a runner learns its from the bus.
            durations.follow_configured(checks.subscribe());
        }
        // Notifications follow reloaded maintenance windows (a scheduling role with notifiers).
        let notifies = role.schedules() && !config.notifiers.is_empty();
        let (windows, window_updates) = watch::channel(Arc::new(config.maintenance.clone()));
        let (blackbox_updates, blackbox) = watch::channel(config.blackbox.clone());
        let reloader = options.config_path.clone().map(|path| {
            let reloader = Reloader::new(
                path,
                config.clone(),
                checks.clone(),
                &metrics,
                service_manager.clone(),
            )
            .follow_blackbox(blackbox_updates);
            Arc::new(if notifies {
                reloader.follow_maintenance(windows)
            } else {
                reloader
            })
        });
        let (bus, lease) =
            connect_bus(&config, role, &metrics, options.bus_connect_timeout).await?;
        let subjects = Subjects::new(config.subject_prefix());
        let runner = if role.probes() {
            Some(build_runner(&config, &bus, &subjects, &metrics).await?)
        } else {
            None
        };
        let (scheduling, history_reader) = if role.schedules() {
            let results = bus.subscribe(&subjects.all_results(), None).await?;
            let checker = build_checker(&config, &checks, &bus, &subjects, &metrics, role).await?;
            // Runners never notify: the checker owns the states.
            let notify = if notifies {
                Some(tasks::NotifySetup {
                    notifiers: crate::notify::build_all(&config)?,
                    maintenance: crate::notify::Maintenance::compile(&config.maintenance)
                        .map_err(AgentError::Maintenance)?,
                    maintenance_updates: window_updates,
                })
            } else {
                None
            };
            // History is kept where results are recorded.
            let history = if config.history.enabled {
                Some(crate::history::History::open(
                    &config.history,
                    &metrics,
                    !config.checker.ha,
                )?)
            } else {
                None
            };
            let (history, history_reader) = match history {
                Some(history) => (
                    Some((history.recorder, history.writer)),
                    Some(history.reader),
                ),
                None => (None, None),
            };
            let path = episodes_file(&config);
            let fresh = !path.exists();
            let (saved, loaded) = crate::saved_state::SavedState::open(Some(path.clone()))?;
            let older = if fresh {
                legacy::take_over(&path, &checks.borrow())
            } else {
                legacy::retire(&path);
                None
            };
            let scheduling = Scheduling {
                checker,
                lease,
                results,
                notify,
                history,
                saved: (saved, older.unwrap_or(loaded)),
            };
            (Some(scheduling), history_reader)
        } else {
            (None, None)
        };
        // Every subscription is made: in effect before the agent reports ready.
        bus.settle().await;
        Ok(Agent {
            components: Components {
                config,
                role,
                bus,
                subjects,
                metrics,
                store: Arc::new(ResultStore::default()),
                checks,
                service_manager,
                history: history_reader,
            },
            listener,
            web_tls,
            reloader,
            blackbox,
            scheduling,
            runner,
        })
    }

    /// The bus this agent runs on, for embedding: watch results or events in process.
    pub fn bus(&self) -> Arc<dyn Bus> {
        Arc::clone(&self.components.bus)
    }

    /// Reloads the config file on demand (SIGHUP); None without a config path.
    pub fn reloader(&self) -> Option<Arc<Reloader>> {
        self.reloader.clone()
    }

    /// Where the endpoints listen (useful when `agent.listen` asked for port 0).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    pub fn metrics(&self) -> Arc<Metrics> {
        Arc::clone(&self.components.metrics)
    }

    pub fn store(&self) -> Arc<ResultStore> {
        Arc::clone(&self.components.store)
    }

    /// Runs until `shutdown` is cancelled, then shuts down gracefully.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), AgentError> {
        let mut running = self.start()?;
        tokio::select! {
            _ = shutdown.cancelled() => {}
            served = &mut running.server => {
                running.intake.cancel();
                running.outlets.cancel();
                return match served {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(error)) => Err(AgentError::Serve(error)),
                    Err(join) => Err(AgentError::Serve(std::io::Error::other(join.to_string()))),
                };
            }
        }
        running.shut_down().await;
        Ok(())
    }

    /// Serves the endpoints and starts every component's task, each after what it needs
    /// (the checker after the lease that lets it lead, the sink after the leadership its
    /// events carry); the agent reports itself started at the end.
    fn start(self) -> Result<Running, AgentError> {
        let Agent {
            components,
            listener,
            web_tls,
            reloader,
            blackbox,
            scheduling,
            runner,
        } = self;
        let (checker, lease, results, notify, history, saved) = match scheduling {
            Some(scheduling) => (
                Some(scheduling.checker),
                scheduling.lease,
                Some(scheduling.results),
                scheduling.notify,
                scheduling.history,
                Some(scheduling.saved),
            ),
            None => (None, None, None, None, None, None),
        };
        let (recorder, history_writer) = history.unzip();
        let intake = CancellationToken::new();
        let outlets = CancellationToken::new();
        let started = Arc::new(AtomicBool::new(false));
        let probe = runner.as_ref().map(|runner| {
            Arc::new(crate::http::probe::ProbeEndpoint::new(
                runner.dispatcher(),
                blackbox,
                &components.metrics,
            ))
        });
        let router = crate::http::router(
            components.api_state(&started, reloader, probe),
            &components.config.agent.web,
        );
        let server = tasks::serve(listener, web_tls, router, outlets.clone())?;
        let runs = runner.as_ref().map(Runner::runs);
        let dispatcher = runner.as_ref().map(Runner::dispatcher);
        let runner_task = runner.map(|runner| tokio::spawn(runner.run(intake.clone())));
        let (leadership, lease_task) = components.start_lease(lease, &intake);
        let notify_stop = CancellationToken::new();
        let notify_tasks = tokio_util::task::TaskTracker::new();
        // Without a scheduling role nothing is saved: the state lives in memory only.
        let (saved, mut loaded) = saved.unwrap_or_else(|| {
            (
                crate::saved_state::SavedState::in_memory(),
                crate::saved_state::Loaded::new(),
            )
        });
        let saved_stop = CancellationToken::new();
        let saver = tokio::spawn(Arc::clone(&saved).run(saved_stop.clone()));
        let notifications = notify.map(|setup| {
            components.start_notifications(
                setup,
                leadership.clone(),
                Arc::clone(&saved),
                loaded
                    .remove(crate::notify::SAVED_DELIVERIES)
                    .unwrap_or_default(),
                &notify_stop,
                &notify_tasks,
            )
        });
        // The writer on a thread of its own: each statement is a round trip to the database's
        // worker, and on runtime workers busy with probes every one waited its turn (at 8,000
        // probes/s the writer got through one part of 8,192 runs in 30 s).
        let history = history_writer
            .map(|writer| thread::spawn_on_own_thread("bastion-history", writer.run()));
        let resumed = tasks::saved_checks(
            loaded
                .remove(crate::results::SAVED_CHECKS)
                .unwrap_or_default(),
        );
        // A checker of `["*"]` checks starts with a place for each location the last run saw,
        // so a location that is gone by now gets its `no_runner` and leaves their judgement.
        let checker = checker.map(|checker| checker.seed_locations(&resumed));
        let checker_task = checker.map(|checker| {
            thread::spawn_on_own_thread(
                "bastion-checker",
                checker.run_while_leading(intake.clone(), leadership.clone()),
            )
        });
        let sink = results.map(|results| {
            components.spawn_sink(
                results,
                leadership.clone(),
                notifications.clone(),
                recorder,
                (Arc::clone(&saved), resumed),
                &outlets,
            )
        });
        let systemd = components.spawn_systemd_status(&outlets);
        // Heartbeats stop with the intake: the last one says the agent is leaving, so checkers
        // stop sending runs to its location at once, while its runs in flight finish.
        let heartbeat = components.spawn_heartbeats(dispatcher, leadership, &intake);
        started.store(true, Ordering::Release);
        let role = components.role;
        tracing::info!(
            agent = %components.config.agent.id,
            role = role.as_str(),
            listen = %components.config.agent.listen,
            checks = if role.schedules() { components.checks.borrow().len() } else { 0 },
            "bastion is running"
        );
        Ok(Running {
            components,
            intake,
            outlets,
            started,
            server,
            checker: checker_task,
            lease: lease_task,
            runner: runner_task,
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
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every series a component presets at zero is in the text of an agent of any role from
    /// the start, each family once.
    #[test]
    fn every_preset_series_is_there_from_the_start_and_every_family_once() {
        let text = register_metrics().render();
        for line in [
            "bastion_bus_decode_errors_total{reason=\"json\"} 0",
            "bastion_bus_dropped_total{reason=\"slow_consumer\"} 0",
            "bastion_history_dropped_total{reason=\"ticks_full\"} 0",
            "bastion_check_series_forgotten_total{reason=\"expired\"} 0",
            "bastion_check_series_refused_total{reason=\"unconfigured\"} 0",
            "bastion_checker_leader 0",
            "bastion_config_last_reload_successful 0",
            "bastion_history_written_total 0",
            "bastion_schedule_lag_seconds_count 0",
            "bastion_build_info{",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
        let mut families: Vec<&str> = text
            .lines()
            .filter_map(|line| line.strip_prefix("# TYPE "))
            .filter_map(|rest| rest.split(' ').next())
            .collect();
        let all = families.len();
        families.sort_unstable();
        families.dedup();
        assert_eq!(families.len(), all, "{text}");
    }
}
