//! The whole agent in one process: checker, embedded bus, runner, result sink and endpoints.
//! Start-up goes in phases: `Config` (validated) -> `Agent::build` (binds, subscribes) ->
//! `Agent::run(shutdown)`. Shutdown stops scheduling first, lets runs in flight finish for up
//! to `shutdown_grace` so their results are still published and recorded, then stops the rest.

use crate::bus::memory::MemoryBus;
use crate::bus::{Bus, BusError, Subjects};
use crate::checker::Checker;
use crate::checks::CompiledCheck;
use crate::config::{BusKind, Config};
use crate::http::ApiState;
use crate::messages::CheckResult;
use crate::metrics::Metrics;
use crate::results::ResultStore;
use crate::runner::dispatcher::RunOrder;
use crate::runner::{build_dispatcher, Runner, RunnerError};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::SystemTime;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

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
}

/// A built agent, ready to run.
pub struct Agent {
    config: Config,
    listener: TcpListener,
    bus: Arc<dyn Bus>,
    metrics: Arc<Metrics>,
    store: Arc<ResultStore>,
    checker: Checker,
    runner: Runner,
    results: crate::bus::Subscription,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("listen", &self.listener.local_addr().ok())
            .finish_non_exhaustive()
    }
}

fn build_bus(config: &Config) -> Arc<dyn Bus> {
    match config.bus.kind {
        BusKind::Embedded => Arc::new(MemoryBus::default()),
    }
}

impl Agent {
    pub async fn build(config: Config) -> Result<Agent, AgentError> {
        let listener = TcpListener::bind(config.agent.listen)
            .await
            .map_err(|source| AgentError::Listen {
                address: config.agent.listen,
                source,
            })?;
        let metrics = Arc::new(Metrics::new());
        let bus = build_bus(&config);
        let subjects = Subjects::default();
        let results = bus.subscribe(&subjects.all_results(), None).await?;
        let dispatcher = build_dispatcher(&config, Arc::clone(&metrics))?;
        let runner = Runner::build(
            Arc::clone(&bus),
            subjects.clone(),
            dispatcher,
            Arc::clone(&metrics),
        )
        .await?;
        let checker = Checker::build(
            &config.checks,
            config.runner.dispatch_deadline,
            Arc::clone(&bus),
            &subjects,
            Arc::clone(&metrics),
        )
        .await?;
        Ok(Agent {
            config,
            listener,
            bus,
            metrics,
            store: Arc::new(ResultStore::default()),
            checker,
            runner,
            results,
        })
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
            listener,
            bus,
            metrics,
            store,
            checker,
            runner,
            results,
        } = self;
        let intake = CancellationToken::new();
        let outlets = CancellationToken::new();
        let started = Arc::new(AtomicBool::new(false));
        let state = ApiState {
            metrics: Arc::clone(&metrics),
            store: Arc::clone(&store),
            checks: Arc::new(config.checks.clone()),
            bus,
            started: Arc::clone(&started),
        };
        let server_stop = outlets.clone();
        let mut server = tokio::spawn(async move {
            axum::serve(listener, crate::http::router(state))
                .with_graceful_shutdown(async move { server_stop.cancelled().await })
                .await
        });
        let sink = tokio::spawn(crate::results::consume(
            results,
            store,
            metrics,
            outlets.clone(),
        ));
        let runs = runner.runs();
        let runner_task = tokio::spawn(runner.run(intake.clone()));
        let checker_task = tokio::spawn(checker.run(intake.clone()));
        started.store(true, Ordering::Release);
        tracing::info!(
            agent = %config.agent.id,
            listen = %config.agent.listen,
            checks = config.checks.len(),
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
        started.store(false, Ordering::Release);
        intake.cancel();
        let _ = checker_task.await;
        let _ = runner_task.await;
        let grace = config.agent.shutdown_grace;
        if tokio::time::timeout(grace, runs.wait()).await.is_err() {
            tracing::warn!(
                runs = runs.len(),
                grace = %humantime::format_duration(grace),
                "runs still in flight when the shutdown grace expired; abandoning them"
            );
        }
        outlets.cancel();
        let _ = sink.await;
        let _ = server.await;
        tracing::info!("bastion stopped");
        Ok(())
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
