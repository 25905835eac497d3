//! The agent: the components one process runs for its role, wired together. `all` runs a
//! checker, a runner and the result sink on one bus (the embedded one by default); `checker`
//! and `runner` split them across processes over NATS. Start-up goes in phases: `Config`
//! (validated) -> `Agent::build` (binds, connects, subscribes) -> `Agent::run(shutdown)`.
//! Shutdown stops scheduling first, lets runs in flight finish for up to `shutdown_grace` so
//! their results are still published and recorded, then stops the rest.

use crate::bus::memory::MemoryBus;
use crate::bus::nats::NatsBus;
use crate::bus::LeaseStore;
use crate::bus::{Bus, BusError};
use crate::checker::Checker;
use crate::checks::CompiledCheck;
use crate::config::{BusKind, Config};
use crate::heartbeat::Heartbeats;
use crate::http::ApiState;
use crate::messages::{self, CheckResult, TestFailure, TestRequest, MESSAGE_VERSION};
use crate::metrics::Metrics;
use crate::reload::Reloader;
use crate::results::ResultStore;
use crate::results::{EventOutlet, SinkContext};
use crate::runner::dispatcher::RunOrder;
use crate::runner::{build_dispatcher, Runner, RunnerError};
use crate::subjects::Subjects;
use crate::systemd::Notifier;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::time::Instant;
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

/// How long `bastion once --remote` waits for NATS when neither the flag nor the config says.
const REMOTE_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Beyond the dispatch deadline and the check's timeout, how long a test reply may take.
const REPLY_GRACE: Duration = Duration::from_secs(5);

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
}

/// A built agent, ready to run.
pub struct Agent {
    config: Config,
    role: Role,
    listener: TcpListener,
    bus: Arc<dyn Bus>,
    subjects: Subjects,
    metrics: Arc<Metrics>,
    store: Arc<ResultStore>,
    checker: Option<Checker>,
    lease: Option<Arc<dyn LeaseStore>>,
    runner: Option<Runner>,
    results: Option<crate::bus::Subscription>,
    /// The configured checks; reloads send new lists through it.
    checks: watch::Sender<Arc<Vec<crate::config::CheckConfig>>>,
    reloader: Option<Arc<Reloader>>,
    notifier: Option<Arc<Notifier>>,
    web_tls: Option<Arc<rustls::ServerConfig>>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("listen", &self.listener.local_addr().ok())
            .finish_non_exhaustive()
    }
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
                NatsBus::connect(nats, &config.agent.id, Arc::clone(metrics), timeout).await?,
            ))
        }
        _ => Ok(None),
    }
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
        let web_tls = match (
            &config.agent.web.tls_cert_file,
            &config.agent.web.tls_key_file,
        ) {
            (Some(cert), Some(key)) => Some(crate::http::tls::server_config(cert, key)?),
            _ => None,
        };
        let listener = TcpListener::bind(config.agent.listen)
            .await
            .map_err(|source| AgentError::Listen {
                address: config.agent.listen,
                source,
            })?;
        let metrics = Arc::new(Metrics::new());
        metrics.forget_checks_after(config.runner.forget_checks_after);
        metrics.record_config_load(true);
        let notifier = Notifier::from_env().map(Arc::new);
        // The check list lives in one place, the watch; `config` keeps the other sections.
        let (checks, _) = watch::channel(Arc::new(std::mem::take(&mut config.checks)));
        let initial_checks = Arc::clone(&checks.borrow());
        let reloader = options.config_path.clone().map(|path| {
            Arc::new(Reloader::new(
                path,
                config.clone(),
                checks.clone(),
                Arc::clone(&metrics),
                notifier.clone(),
            ))
        });
        let nats = connect_nats(&config, &metrics, options.bus_connect_timeout).await?;
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
                metrics.bus_connected.set(1);
                Arc::new(MemoryBus::default())
            }
        };
        let subjects = Subjects::new(config.subject_prefix());
        let results = if role.schedules() {
            Some(bus.subscribe(&subjects.all_results(), None).await?)
        } else {
            None
        };
        let runner = if role.probes() {
            let dispatcher = build_dispatcher(&config, Arc::clone(&metrics))?;
            Some(
                Runner::build(
                    Arc::clone(&bus),
                    subjects.clone(),
                    dispatcher,
                    Arc::clone(&metrics),
                )
                .await?,
            )
        } else {
            None
        };
        let checker = if role.schedules() {
            Some(
                Checker::build(
                    &initial_checks,
                    config.runner.dispatch_deadline,
                    Arc::clone(&bus),
                    &subjects,
                    Arc::clone(&metrics),
                )
                .await?
                .follow(checks.subscribe()),
            )
        } else {
            None
        };
        Ok(Agent {
            config,
            role,
            listener,
            bus,
            subjects,
            metrics,
            store: Arc::new(ResultStore::default()),
            checker,
            lease,
            runner,
            results,
            checks,
            reloader,
            notifier,
            web_tls,
        })
    }

    /// The bus this agent runs on, for embedding: watch results or events in process.
    pub fn bus(&self) -> Arc<dyn Bus> {
        Arc::clone(&self.bus)
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
        Arc::clone(&self.metrics)
    }

    pub fn store(&self) -> Arc<ResultStore> {
        Arc::clone(&self.store)
    }

    /// Runs until `shutdown` is cancelled, then shuts down gracefully.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), AgentError> {
        let Agent {
            config,
            role,
            listener,
            bus,
            subjects,
            metrics,
            store,
            checker,
            lease,
            runner,
            results,
            checks,
            reloader,
            notifier,
            web_tls,
        } = self;
        let intake = CancellationToken::new();
        let outlets = CancellationToken::new();
        let started = Arc::new(AtomicBool::new(false));
        // A runner schedules nothing: its API lists no checks.
        let api_checks = if role.schedules() {
            checks.subscribe()
        } else {
            watch::channel(Arc::new(Vec::new())).1
        };
        let state = ApiState {
            metrics: Arc::clone(&metrics),
            store: Arc::clone(&store),
            checks: api_checks,
            bus: Arc::clone(&bus),
            started: Arc::clone(&started),
            reloader,
            reload_endpoint: config.agent.web.reload_endpoint,
        };
        let router = crate::http::router(state, &config.agent.web);
        let server_stop = outlets.clone();
        let mut server = match web_tls {
            Some(tls) => {
                let listener =
                    crate::http::tls::TlsListener::new(listener, tls).map_err(AgentError::Serve)?;
                tokio::spawn(async move {
                    axum::serve(listener, router)
                        .with_graceful_shutdown(async move { server_stop.cancelled().await })
                        .await
                })
            }
            None => tokio::spawn(async move {
                axum::serve(listener, router)
                    .with_graceful_shutdown(async move { server_stop.cancelled().await })
                    .await
            }),
        };
        let events = EventOutlet {
            bus: Arc::clone(&bus),
            subjects: subjects.clone(),
            leadership: None,
        };
        let mut sink_parts = results.map(|results| (results, store.clone(), events));
        let runs = runner.as_ref().map(Runner::runs);
        let dispatcher = runner.as_ref().map(Runner::dispatcher);
        let runner_task = runner.map(|runner| tokio::spawn(runner.run(intake.clone())));
        let (leadership, lease_task) = match lease {
            Some(store) => {
                let (leadership, task) = crate::lease::spawn(
                    store,
                    config.agent.id.clone(),
                    config.checker.lease_ttl,
                    Arc::clone(&metrics),
                    intake.clone(),
                );
                (Some(leadership), Some(task))
            }
            None => {
                if role.schedules() {
                    metrics.checker_leader.set(1);
                }
                (None, None)
            }
        };
        let checker_task = checker.map(|checker| {
            spawn_on_own_thread(
                "bastion-checker",
                checker.run_while_leading(intake.clone(), leadership.clone()),
            )
        });
        let sink = sink_parts.take().map(|(results, store, mut events)| {
            events.leadership = leadership.clone();
            let context = SinkContext {
                store,
                metrics: Arc::clone(&metrics),
                checks: checks.subscribe(),
                events: Some(events),
            };
            tokio::spawn(crate::results::consume(results, context, outlets.clone()))
        });
        let systemd_task = notifier.clone().map(|notifier| {
            tokio::spawn(report_to_systemd(
                notifier,
                checks.subscribe(),
                Arc::clone(&store),
                role,
                outlets.clone(),
            ))
        });
        let heartbeats = Heartbeats {
            bus: Arc::clone(&bus),
            subjects,
            agent: config.agent.id.clone(),
            role: role.as_str(),
            started: Instant::now(),
            dispatcher,
            leadership,
            metrics: Arc::clone(&metrics),
        };
        let heartbeat_task = tokio::spawn(heartbeats.run(outlets.clone()));
        started.store(true, Ordering::Release);
        tracing::info!(
            agent = %config.agent.id,
            role = role.as_str(),
            listen = %config.agent.listen,
            checks = if role.schedules() { checks.borrow().len() } else { 0 },
            "bastion is running"
        );

        tokio::select! {
            _ = shutdown.cancelled() => {}
            served = &mut server => {
                intake.cancel();
                outlets.cancel();
                return match served {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(error)) => Err(AgentError::Serve(error)),
                    Err(join) => Err(AgentError::Serve(std::io::Error::other(join.to_string()))),
                };
            }
        }
        tracing::info!("shutting down: scheduling stopped, waiting for runs in flight");
        if let Some(notifier) = &notifier {
            notifier.stopping();
        }
        started.store(false, Ordering::Release);
        intake.cancel();
        if let Some(task) = checker_task {
            let _ = task.await;
        }
        if let Some(task) = lease_task {
            let _ = task.await;
        }
        if let Some(task) = runner_task {
            let _ = task.await;
        }
        let grace = config.agent.shutdown_grace;
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
        bus.flush(
            grace_ends
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(500)),
        )
        .await;
        outlets.cancel();
        if let Some(sink) = sink {
            let _ = sink.await;
        }
        let _ = heartbeat_task.await;
        if let Some(task) = systemd_task {
            let _ = task.await;
        }
        let _ = server.await;
        tracing::info!("bastion stopped");
        Ok(())
    }
}

/// Runs `work` on a thread of its own with a single-threaded runtime, so that its timers fire
/// on time however busy the probe workers are; the checker's schedule lag depends on it. The
/// returned task ends when `work` does. Without a thread (the system refused one) it runs on
/// the shared runtime instead.
fn spawn_on_own_thread<F>(name: &str, work: F) -> tokio::task::JoinHandle<()>
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    spawn_on_own_thread_with(name, work, |builder, body| builder.spawn(body).map(drop))
}

/// What runs on the checker's own thread.
type ThreadBody = Box<dyn FnOnce() + Send + 'static>;

/// `spawn_on_own_thread`, with the thread started by `start` (std's, or a refusal in tests).
fn spawn_on_own_thread_with<F, S>(name: &str, work: F, start: S) -> tokio::task::JoinHandle<()>
where
    F: std::future::Future<Output = ()> + Send + 'static,
    S: FnOnce(std::thread::Builder, ThreadBody) -> std::io::Result<()>,
{
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::warn!(%error, "cannot build a runtime for {name}; sharing the main one");
            return tokio::spawn(work);
        }
    };
    let (done, finished) = tokio::sync::oneshot::channel::<()>();
    // The runtime and the work reach the thread through this slot rather than inside the
    // closure: when the thread cannot start, std drops the closure right here, and dropping a
    // runtime inside an async context panics. From the slot both can be taken back.
    let slot = Arc::new(std::sync::Mutex::new(Some((runtime, work))));
    let on_thread = Arc::clone(&slot);
    let body: ThreadBody = Box::new(move || {
        let taken = on_thread
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some((runtime, work)) = taken {
            runtime.block_on(work);
        }
        let _ = done.send(());
    });
    match start(std::thread::Builder::new().name(name.to_string()), body) {
        Ok(()) => tokio::spawn(async move {
            let _ = finished.await;
        }),
        Err(error) => {
            tracing::warn!(%error, "cannot start a thread for {name}; sharing the main runtime");
            let taken = slot
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .take();
            match taken {
                Some((runtime, work)) => {
                    // Unlike a plain drop, this may be called from async code.
                    runtime.shutdown_background();
                    tokio::spawn(work)
                }
                None => tokio::spawn(async {}),
            }
        }
    }
}

/// Asks the agent at `url` whether it is alive: a single GET that must answer 200, through
/// the same probe the checks use.
pub async fn healthcheck(url: &str, insecure: bool, timeout: Duration) -> Result<(), AgentError> {
    let text = format!(
        "[[checks]]\nname = \"healthcheck\"\ntype = \"http\"\nurl = {url}\ninterval = \"1h\"\ntimeout = \"{timeout}\"\ntls = {{ insecure_skip_verify = {insecure} }}\n[[checks.assertions]]\nkey = \"code\"\nrelationship = \"equal\"\noperand = \"200\"\n",
        url = toml::Value::String(url.to_string()),
        timeout = humantime::format_duration(timeout),
    );
    let config = crate::validate::parse(
        &text,
        crate::config::Format::Toml,
        std::path::Path::new("--url"),
    )
    .map_err(|error| AgentError::InvalidCheck("healthcheck".to_string(), error.to_string()))?;
    let results = run_once(&config, None).await?;
    let response = results
        .first()
        .and_then(|result| result.responses.first())
        .ok_or_else(|| AgentError::RunFailed("no response".to_string()))?;
    if response.passing {
        return Ok(());
    }
    let reason = match (&response.error, &response.http) {
        (Some(error), _) => error.to_string(),
        (None, Some(http)) => format!("{url} answered {}", http.status),
        (None, None) => "no answer".to_string(),
    };
    Err(AgentError::RunFailed(reason))
}

/// Tells systemd the agent is ready, then keeps its status line current and, when systemd
/// watches, pets the watchdog at half its interval.
async fn report_to_systemd(
    notifier: Arc<Notifier>,
    checks: watch::Receiver<Arc<Vec<crate::config::CheckConfig>>>,
    store: Arc<ResultStore>,
    role: Role,
    stop: CancellationToken,
) {
    let summary = || {
        if !role.schedules() {
            return format!("{} runner", role.as_str());
        }
        let checks = Arc::clone(&checks.borrow());
        let failing = checks
            .iter()
            .filter(|check| {
                store
                    .latest(&check.name)
                    .is_some_and(|result| !result.passing)
            })
            .count();
        format!("{} checks, {failing} failing", checks.len())
    };
    notifier.ready(&summary());
    let watchdog = crate::systemd::watchdog_interval();
    let every = watchdog.map_or(Duration::from_secs(10), |half| {
        half.min(Duration::from_secs(10))
    });
    let mut ticks = tokio::time::interval(every);
    ticks.tick().await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = ticks.tick() => {}
        }
        if watchdog.is_some() {
            notifier.notify(&format!("WATCHDOG=1\nSTATUS={}", summary()));
        } else {
            notifier.status(&summary());
        }
    }
}

/// Runs each selected check once, now, in this process, and returns the results in config
/// order. `only` selects one check by name.
pub async fn run_once(config: &Config, only: Option<&str>) -> Result<Vec<CheckResult>, AgentError> {
    let checks: Vec<_> = config
        .checks
        .iter()
        .filter(|check| only.is_none_or(|name| check.name == name))
        .collect();
    if let Some(name) = only {
        if checks.is_empty() {
            return Err(AgentError::NoSuchCheck(name.to_string()));
        }
    }
    let dispatcher = Arc::new(build_dispatcher(config, Arc::new(Metrics::new()))?);
    let mut runs = tokio::task::JoinSet::new();
    for (position, check) in checks.into_iter().enumerate() {
        // Config::validate compiled every check already; a failure here is reported, not hidden.
        let compiled = CompiledCheck::compile(check)
            .map_err(|error| AgentError::InvalidCheck(check.name.clone(), error.to_string()))?;
        let order = RunOrder {
            check: Arc::new(compiled),
            run_id: u64::try_from(position).unwrap_or(u64::MAX),
            scheduled_at: SystemTime::now(),
        };
        let dispatcher = Arc::clone(&dispatcher);
        runs.spawn(async move { (position, dispatcher.run(order).await) });
    }
    let mut results: Vec<(usize, CheckResult)> = Vec::new();
    while let Some(joined) = runs.join_next().await {
        results.push(joined.map_err(|error| AgentError::RunFailed(error.to_string()))?);
    }
    results.sort_by_key(|(position, _)| *position);
    Ok(results.into_iter().map(|(_, result)| result).collect())
}

/// Runs each selected check once, now, on the runners of the NATS bus (the test-check
/// request/reply), and returns the results in config order.
pub async fn run_remote(
    config: &Config,
    only: Option<&str>,
    connect_timeout: Option<Duration>,
) -> Result<Vec<CheckResult>, AgentError> {
    let checks: Vec<_> = config
        .checks
        .iter()
        .filter(|check| only.is_none_or(|name| check.name == name))
        .cloned()
        .collect();
    if let Some(name) = only {
        if checks.is_empty() {
            return Err(AgentError::NoSuchCheck(name.to_string()));
        }
    }
    let Some(nats_config) = config
        .bus
        .nats
        .as_ref()
        .filter(|_| config.bus.kind == BusKind::Nats)
    else {
        return Err(AgentError::RemoteNeedsNats);
    };
    let metrics = Arc::new(Metrics::new());
    let timeout = connect_timeout
        .or(nats_config.connect_timeout)
        .unwrap_or(REMOTE_CONNECT_TIMEOUT);
    let bus: Arc<dyn Bus> =
        Arc::new(NatsBus::connect(nats_config, &config.agent.id, metrics, Some(timeout)).await?);
    let subjects = Subjects::new(config.subject_prefix());
    let mut requests = tokio::task::JoinSet::new();
    for (position, check) in checks.into_iter().enumerate() {
        let bus = Arc::clone(&bus);
        let subject = subjects.test(check.check_type());
        let wait = config.runner.dispatch_deadline + check.timeout() + REPLY_GRACE;
        requests
            .spawn(async move { (position, test_remotely(&*bus, &subject, check, wait).await) });
    }
    let mut results = Vec::new();
    while let Some(joined) = requests.join_next().await {
        let (position, result) =
            joined.map_err(|error| AgentError::RunFailed(error.to_string()))?;
        results.push((position, result?));
    }
    results.sort_by_key(|(position, _)| *position);
    Ok(results.into_iter().map(|(_, result)| result).collect())
}

async fn test_remotely(
    bus: &dyn Bus,
    subject: &str,
    check: crate::config::CheckConfig,
    wait: Duration,
) -> Result<CheckResult, AgentError> {
    let name = check.name.clone();
    let check_type = check.check_type();
    let request = TestRequest {
        version: MESSAGE_VERSION,
        check,
    };
    let payload = messages::encode(&request)
        .map_err(|error| AgentError::RunFailed(format!("check `{name}`: {error}")))?;
    let reply = bus
        .request(subject, payload, wait)
        .await
        .map_err(|error| match error {
            BusError::NoResponders(_) => AgentError::NoRunner(check_type.as_str().to_string()),
            other => AgentError::RunFailed(format!("check `{name}`: {other}")),
        })?;
    if let Ok(result) = messages::decode::<CheckResult>(&reply) {
        return Ok(result);
    }
    match messages::decode::<TestFailure>(&reply) {
        Ok(failure) => Err(AgentError::InvalidCheck(name, failure.error)),
        Err(error) => Err(AgentError::RunFailed(format!(
            "check `{name}`: the runner's reply is not a result: {error}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_checker_thread_runs_the_work_on_a_thread_of_its_own() {
        let (sender, receiver) = tokio::sync::oneshot::channel();
        let task = spawn_on_own_thread("bastion-test-own", async move {
            let _ = sender.send(std::thread::current().name().map(str::to_string));
        });
        tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("the work ends")
            .expect("the task does not panic");
        assert_eq!(receiver.await.unwrap().as_deref(), Some("bastion-test-own"));
    }

    #[tokio::test]
    async fn without_a_thread_the_work_runs_on_the_shared_runtime_without_a_panic() {
        let (sender, receiver) = tokio::sync::oneshot::channel();
        let main_thread = std::thread::current().id();
        let task = spawn_on_own_thread_with(
            "bastion-test-refused",
            async move {
                let _ = sender.send(std::thread::current().id());
            },
            |_builder, body| {
                // What std does when the system refuses a thread: the closure is dropped.
                drop(body);
                Err(std::io::Error::from(std::io::ErrorKind::WouldBlock))
            },
        );
        tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("the work ends")
            .expect("the task does not panic");
        // A current-thread test runtime: the fallback ran the work on this very thread.
        assert_eq!(receiver.await.unwrap(), main_thread);
    }
}
