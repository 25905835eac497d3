//! The dispatcher turns one check run into one task per instance, hands each task to the
//! worker pool of its type, and assembles exactly one response per instance.
//!
//! Each task is moved, whole, into the future that runs it: target, check and context are owned
//! by that future, never borrowed from the loop that made it. The ancestor of this system once
//! reported three responses from one instance because its tasks shared a loop variable; here
//! each response is built from its own task's data and stored at its own task's index.

use super::pool::{Worker, WorkerPool};
use super::{CheckDurations, RunnerMetrics};
use crate::assertions;
use crate::checks::CheckType;
use crate::checks::Observation;
use crate::checks::{ProbeContext, ProbeRecord};
use crate::compiled::CompiledCheck;
use crate::config::InstancesFrom;
use crate::messages::{CheckResult, Response, TargetGroup, Timings, MESSAGE_VERSION};
use crate::metrics::Metrics;
use crate::model::{split_host_port, ErrorKind, InstanceAddr, ProbeError};
use crate::resolve::SrvCache;
use futures_util::FutureExt;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::task::JoinSet;
use tokio::time::Instant;

/// A run to dispatch: the compiled check and what identifies the run.
#[derive(Debug, Clone)]
pub struct RunOrder {
    pub check: Arc<CompiledCheck>,
    pub run_id: u64,
    pub scheduled_at: SystemTime,
    /// For a check with `instances_from = { file }`: the target groups its request carried.
    pub discovered: Option<Arc<Vec<TargetGroup>>>,
}

/// One instance to probe: its address, its labels (the check's and its own), and the time
/// the resolve that found it took.
#[derive(Debug)]
struct Instance {
    address: SocketAddr,
    labels: BTreeMap<String, String>,
    resolve_seconds: f64,
}

/// What the dispatcher found for one entry of a run: an instance to probe, or a response
/// already decided (a target that did not resolve).
#[derive(Debug)]
enum Planned {
    Probe(Instance),
    Done(Box<Response>),
}

/// How a run asked for on `/probe` differs from a scheduled one.
#[derive(Debug, Clone, Copy, Default)]
pub struct OnDemand {
    /// No probe runs past this, whatever the check's timeout (the scrape's deadline).
    pub finish_by: Option<Instant>,
    /// Probe only the first address found, as blackbox_exporter does.
    pub first_only: bool,
}

/// One probe of one instance, owning everything it uses.
#[derive(Debug)]
struct ProbeTask {
    finish_by: Option<Instant>,
    index: usize,
    target: SocketAddr,
    labels: BTreeMap<String, String>,
    resolve_seconds: f64,
    check: Arc<CompiledCheck>,
    context: Arc<ProbeContext>,
    metrics: Arc<RunnerMetrics>,
}

#[derive(Debug)]
pub struct Dispatcher {
    agent_id: String,
    deadline: Duration,
    pools: HashMap<CheckType, WorkerPool>,
    context: Arc<ProbeContext>,
    metrics: Arc<RunnerMetrics>,
    durations: CheckDurations,
    /// SRV answers of `instances_from = { srv }`, kept for their TTL.
    srv: SrvCache,
}

impl Dispatcher {
    pub fn new(
        agent_id: String,
        deadline: Duration,
        pools: Vec<WorkerPool>,
        context: Arc<ProbeContext>,
        metrics: &Metrics,
    ) -> Dispatcher {
        Dispatcher {
            agent_id,
            deadline: crate::config::bounds::DISPATCH_DEADLINE.cap_duration(deadline),
            pools: pools
                .into_iter()
                .map(|pool| (pool.check_type(), pool))
                .collect(),
            context,
            metrics: Arc::new(metrics.component()),
            durations: metrics.component(),
            srv: SrvCache::default(),
        }
    }

    /// Types this dispatcher has workers for.
    pub fn check_types(&self) -> Vec<CheckType> {
        let mut types: Vec<CheckType> = self
            .pools
            .iter()
            .filter(|(_, pool)| pool.size() > 0)
            .map(|(check_type, _)| *check_type)
            .collect();
        types.sort();
        types
    }

    /// Busy and total workers of each type.
    pub fn usage(&self) -> std::collections::BTreeMap<CheckType, crate::messages::WorkerUsage> {
        self.pools
            .iter()
            .filter(|(_, pool)| pool.size() > 0)
            .map(|(check_type, pool)| {
                (
                    *check_type,
                    crate::messages::WorkerUsage {
                        busy: pool.busy(),
                        total: pool.size(),
                    },
                )
            })
            .collect()
    }

    /// How long a task may wait for a worker.
    pub fn deadline(&self) -> Duration {
        self.deadline
    }

    /// Runs every instance of one check and returns its result, one response per instance.
    /// Its probes start within the dispatch deadline from now.
    pub async fn run(&self, order: RunOrder) -> CheckResult {
        let start_probes_by = Instant::now() + self.deadline;
        self.run_by(order, start_probes_by).await
    }

    /// `run`, with no probe started after `start_probes_by`: the run's one deadline, whatever
    /// its tasks waited for (`run_window::start_probes_by`).
    pub async fn run_by(&self, order: RunOrder, start_probes_by: Instant) -> CheckResult {
        self.run_with(order, start_probes_by, None).await
    }

    /// A run asked for on `/probe`: the same pools and dispatch deadline as scheduled runs,
    /// and `on_demand`'s limits; it records no run duration (its check is not configured).
    pub async fn run_on_demand(
        &self,
        order: RunOrder,
        start_probes_by: Instant,
        on_demand: OnDemand,
    ) -> CheckResult {
        self.run_with(order, start_probes_by, Some(on_demand)).await
    }

    async fn run_with(
        &self,
        order: RunOrder,
        start_probes_by: Instant,
        on_demand: Option<OnDemand>,
    ) -> CheckResult {
        let dispatched = Instant::now();
        let check_type = order.check.check_type();
        let responses = match self.pools.get(&check_type) {
            Some(pool) => {
                let mut planned = self.plan(&order).await;
                let on_demand = on_demand.unwrap_or_default();
                if on_demand.first_only {
                    // As blackbox_exporter: the first address found, nothing more.
                    planned.truncate(1);
                }
                self.dispatch(&order.check, planned, pool, start_probes_by, on_demand)
                    .await
            }
            None => {
                self.metrics.count_dispatch_timeout(check_type);
                vec![Response {
                    labels: order.check.labels.clone(),
                    ..Response::failed(
                        order.check.probe.unresolved_label(),
                        ProbeError::new(
                            ErrorKind::DispatchTimeout,
                            format!("this runner has no {check_type} workers"),
                        ),
                        Timings::default(),
                    )
                }]
            }
        };
        if on_demand.is_none() {
            self.durations.observe(
                &order.check.name,
                check_type,
                order.check.interval,
                dispatched.elapsed().as_secs_f64(),
            );
        }
        CheckResult {
            version: MESSAGE_VERSION,
            check: order.check.name.clone(),
            check_type,
            agent: self.agent_id.clone(),
            location: None,
            run_id: order.run_id,
            scheduled_at: order.scheduled_at,
            finished_at: SystemTime::now(),
            passing: !responses.is_empty() && responses.iter().all(|response| response.passing),
            responses,
            degraded: None,
        }
    }

    /// The instances of one run: its discovered targets, or the listed instances, or what
    /// the host resolves to; each failed resolve a response of its own.
    async fn plan(&self, order: &RunOrder) -> Vec<Planned> {
        let check = &order.check;
        if let Some(InstancesFrom::File(path)) = &check.instances_from {
            return match &order.discovered {
                Some(groups) => self.plan_groups(check, groups).await,
                None => vec![Planned::Done(Box::new(Response {
                    labels: check.labels.clone(),
                    ..Response::failed(
                        check.probe.unresolved_label(),
                        ProbeError::new(
                            ErrorKind::Resolve,
                            format!(
                                "no targets came with this run from {}: run it from a checker, which reads the file",
                                path.display()
                            ),
                        ),
                        Timings::default(),
                    )
                }))],
            };
        }
        if let Some(InstancesFrom::Srv(name)) = &check.instances_from {
            return self.plan_srv(check, name).await;
        }
        match self.instances(check).await {
            Ok((targets, resolve_seconds)) => targets
                .into_iter()
                .map(|address| {
                    Planned::Probe(Instance {
                        address,
                        labels: check.labels.clone(),
                        resolve_seconds,
                    })
                })
                .collect(),
            Err((error, timings)) => {
                self.metrics
                    .count_probe_error(check.check_type(), error.kind);
                vec![Planned::Done(Box::new(Response {
                    labels: check.labels.clone(),
                    ..Response::failed(check.probe.unresolved_label(), error, timings)
                }))]
            }
        }
    }

    /// The instances of an SRV name: each target and port it lists, resolved as a discovered
    /// `host:port` is; the SRV lookup's time (none while its answer is kept) is part of each
    /// instance's resolve. A failed lookup is one response named by the SRV name.
    async fn plan_srv(&self, check: &Arc<CompiledCheck>, name: &str) -> Vec<Planned> {
        let started = Instant::now();
        let lookup =
            tokio::time::timeout(check.timeout, self.srv.lookup(&self.context.resolver, name))
                .await;
        let seconds = started.elapsed().as_secs_f64();
        let targets = match lookup {
            Ok(Ok((targets, _cached))) => targets,
            outcome => {
                let error = match outcome {
                    Ok(Err(error)) => error,
                    _ => ProbeError::new(
                        ErrorKind::Timeout,
                        format!(
                            "SRV {name}: the lookup took longer than the timeout of {}",
                            humantime::format_duration(check.timeout)
                        ),
                    ),
                };
                self.metrics
                    .count_probe_error(check.check_type(), error.kind);
                return vec![Planned::Done(Box::new(Response {
                    labels: check.labels.clone(),
                    ..Response::failed(
                        name.to_string(),
                        error,
                        Timings {
                            resolve: seconds,
                            total: seconds,
                            ..Timings::default()
                        },
                    )
                }))];
            }
        };
        let group = TargetGroup {
            targets: targets
                .iter()
                .map(|(host, port)| {
                    if host.contains(':') {
                        format!("[{host}]:{port}")
                    } else {
                        format!("{host}:{port}")
                    }
                })
                .collect(),
            labels: BTreeMap::new(),
        };
        let mut planned = self.plan_groups(check, std::slice::from_ref(&group)).await;
        for entry in &mut planned {
            match entry {
                Planned::Probe(instance) => instance.resolve_seconds += seconds,
                Planned::Done(response) => {
                    response.timings.resolve += seconds;
                    response.timings.total += seconds;
                }
            }
        }
        planned
    }

    /// The instances of file_sd target groups: an IP target as it is (with the check's port
    /// when it has none), a `host:port` target every address its host resolves to (all
    /// resolved at once, each within the check's timeout), each with the group's labels.
    async fn plan_groups(
        &self,
        check: &Arc<CompiledCheck>,
        groups: &[TargetGroup],
    ) -> Vec<Planned> {
        let (_, default_port) = check.probe.host_and_port();
        let mut planned: Vec<Option<Planned>> = Vec::new();
        let mut lookups = JoinSet::new();
        for group in groups {
            let labels = check.labels_with(&group.labels);
            for target in &group.targets {
                if let Some(address) = InstanceAddr::parse(target) {
                    planned.push(Some(Planned::Probe(Instance {
                        address: address.with_default_port(default_port),
                        labels: labels.clone(),
                        resolve_seconds: 0.0,
                    })));
                    continue;
                }
                let slot = planned.len();
                planned.push(None);
                let resolver = Arc::clone(&self.context.resolver);
                let check = Arc::clone(check);
                let target = target.clone();
                let labels = labels.clone();
                lookups.spawn(async move {
                    let found = resolve_target(&resolver, &check, &target).await;
                    (slot, target, labels, found)
                });
            }
        }
        let mut resolved: Vec<Vec<Planned>> = (0..planned.len()).map(|_| Vec::new()).collect();
        while let Some(joined) = lookups.join_next().await {
            let Ok((slot, target, labels, found)) = joined else {
                continue;
            };
            let Some(entries) = resolved.get_mut(slot) else {
                continue;
            };
            match found {
                Ok((addresses, resolve_seconds)) => {
                    entries.extend(addresses.into_iter().map(|address| {
                        Planned::Probe(Instance {
                            address,
                            labels: labels.clone(),
                            resolve_seconds,
                        })
                    }));
                }
                Err((error, timings)) => {
                    self.metrics
                        .count_probe_error(check.check_type(), error.kind);
                    entries.push(Planned::Done(Box::new(Response {
                        labels,
                        ..Response::failed(target, error, timings)
                    })));
                }
            }
        }
        planned
            .into_iter()
            .zip(resolved)
            .flat_map(|(direct, found)| direct.into_iter().chain(found))
            .collect()
    }

    async fn dispatch(
        &self,
        check: &Arc<CompiledCheck>,
        mut planned: Vec<Planned>,
        pool: &WorkerPool,
        deadline: Instant,
        on_demand: OnDemand,
    ) -> Vec<Response> {
        if planned.len() == 1 {
            // One instance (most checks): its task runs in this run's own future, moved into
            // it all the same; a spawned task would cost an allocation and two wake-ups.
            let Some(entry) = planned.pop() else {
                return Vec::new();
            };
            let response = match self
                .task_for(check, 0, entry, pool, deadline, on_demand)
                .await
            {
                Ok((task, worker)) => run_task_caught(task, worker).await.1,
                Err(response) => response,
            };
            return vec![response];
        }
        let mut slots: Vec<Slot> = Vec::with_capacity(planned.len());
        let mut running = JoinSet::new();
        for (index, entry) in planned.into_iter().enumerate() {
            match self
                .task_for(check, index, entry, pool, deadline, on_demand)
                .await
            {
                Ok((task, worker)) => {
                    slots.push(Slot::Running(task.target));
                    running.spawn(run_task_caught(task, worker));
                }
                Err(response) => slots.push(Slot::Done(response)),
            }
        }
        while let Some(joined) = running.join_next().await {
            // A task that did not finish (never: none is aborted) leaves its slot running.
            if let Ok((index, response)) = joined {
                if let Some(slot) = slots.get_mut(index) {
                    *slot = Slot::Done(response);
                }
            }
        }
        slots
            .into_iter()
            .map(|slot| match slot {
                Slot::Done(response) => response,
                Slot::Running(target) => Response {
                    labels: check.labels.clone(),
                    ..Response::failed(
                        check.probe.target_label(target),
                        ProbeError::new(
                            ErrorKind::Internal,
                            "the probe task ended without an answer",
                        ),
                        Timings::default(),
                    )
                },
            })
            .collect()
    }

    /// The task that probes one planned entry, with the worker it runs on; or the entry's
    /// response when there is nothing to run (its target did not resolve) or no worker came
    /// free within the deadline.
    async fn task_for(
        &self,
        check: &Arc<CompiledCheck>,
        index: usize,
        entry: Planned,
        pool: &WorkerPool,
        deadline: Instant,
        on_demand: OnDemand,
    ) -> Result<(ProbeTask, Worker), Response> {
        let Instance {
            address: target,
            labels,
            resolve_seconds,
        } = match entry {
            Planned::Probe(instance) => instance,
            Planned::Done(response) => return Err(*response),
        };
        // The worker is taken before the task is made and moves into it with the task. The
        // wait for it starts here: not before the resolve, not shared with the instances
        // before this one (`bastion_dispatch_wait_seconds` measures only this wait).
        let Some(worker) = pool.acquire_until(&check.name, deadline).await else {
            let message = format!(
                "no {} worker free within {}",
                pool.check_type(),
                humantime::format_duration(self.deadline)
            );
            return Err(Response {
                labels,
                ..Response::failed(
                    check.probe.target_label(target),
                    ProbeError::new(ErrorKind::DispatchTimeout, message),
                    Timings {
                        resolve: resolve_seconds,
                        total: resolve_seconds,
                        ..Timings::default()
                    },
                )
            });
        };
        let task = ProbeTask {
            finish_by: on_demand.finish_by,
            index,
            target,
            labels,
            resolve_seconds,
            check: Arc::clone(check),
            context: Arc::clone(&self.context),
            metrics: Arc::clone(&self.metrics),
        };
        Ok((task, worker))
    }

    /// The addresses to probe and the time it took to find them.
    async fn instances(
        &self,
        check: &CompiledCheck,
    ) -> Result<(Vec<SocketAddr>, f64), (ProbeError, Timings)> {
        let (host, port) = check.probe.host_and_port();
        if !check.instances.is_empty() {
            let targets = check
                .instances
                .iter()
                .map(|instance| instance.with_default_port(port))
                .collect();
            return Ok((targets, 0.0));
        }
        if let Some(found) = check.probe.system_targets() {
            return found
                .map(|targets| (targets, 0.0))
                .map_err(|error| (error, Timings::default()));
        }
        if let Ok(ip) = host.parse::<std::net::IpAddr>() {
            return Ok((vec![SocketAddr::new(ip, port)], 0.0));
        }
        let started = Instant::now();
        let lookup =
            tokio::time::timeout(check.timeout, self.context.resolver.lookup(host, port)).await;
        let seconds = started.elapsed().as_secs_f64();
        let timings = Timings {
            resolve: seconds,
            total: seconds,
            ..Timings::default()
        };
        match lookup {
            Ok(Ok(mut targets)) => {
                targets.retain(|target| check.probe.accepts(target));
                let targets = check.select_family(targets);
                if targets.is_empty() {
                    return Err((
                        ProbeError::new(
                            ErrorKind::Resolve,
                            format!("resolving {host}: no address of the IP version asked for"),
                        ),
                        timings,
                    ));
                }
                Ok((targets, seconds))
            }
            Ok(Err(error)) => Err((error, timings)),
            Err(_) => {
                self.metrics.count_task_timeout(check.check_type());
                Err((
                    ProbeError::new(
                        ErrorKind::Timeout,
                        format!(
                            "resolving {host} took longer than the timeout of {}",
                            humantime::format_duration(check.timeout)
                        ),
                    ),
                    timings,
                ))
            }
        }
    }
}

/// The addresses of one `host:port` target of a discovery file (those of the family
/// `ip_protocol` asks for), and the seconds the resolve took, within the check's timeout.
async fn resolve_target(
    resolver: &crate::resolve::Resolver,
    check: &CompiledCheck,
    target: &str,
) -> Result<(Vec<SocketAddr>, f64), (ProbeError, Timings)> {
    let started = Instant::now();
    let found = match split_host_port(target) {
        Ok((host, port)) => {
            match tokio::time::timeout(check.timeout, resolver.lookup(&host, port)).await {
                Ok(found) => found,
                Err(_) => Err(ProbeError::new(
                    ErrorKind::Timeout,
                    format!(
                        "resolving {host} took longer than the timeout of {}",
                        humantime::format_duration(check.timeout)
                    ),
                )),
            }
        }
        Err(problem) => Err(ProbeError::new(
            ErrorKind::Resolve,
            format!("target `{target}`: {problem}"),
        )),
    };
    let seconds = started.elapsed().as_secs_f64();
    let timings = Timings {
        resolve: seconds,
        total: seconds,
        ..Timings::default()
    };
    match found {
        Ok(mut addresses) => {
            addresses.retain(|address| check.probe.accepts(address));
            let addresses = check.select_family(addresses);
            if addresses.is_empty() {
                return Err((
                    ProbeError::new(
                        ErrorKind::Resolve,
                        format!("resolving {target}: no address of the IP version asked for"),
                    ),
                    timings,
                ));
            }
            Ok((addresses, seconds))
        }
        Err(error) => Err((error, timings)),
    }
}

/// Where one instance of a run stands while its task runs. Unboxed: every slot ends as a
/// response, in place, so a box would only add an allocation per instance.
#[allow(clippy::large_enum_variant)]
enum Slot {
    Running(SocketAddr),
    Done(Response),
}

/// `run_task`, with a panic in the probe made that instance's response: a panic is a bug,
/// and it costs its own instance the answer, not the run its other instances.
async fn run_task_caught(task: ProbeTask, worker: Worker) -> (usize, Response) {
    let (index, target, check) = (task.index, task.target, Arc::clone(&task.check));
    // The instance's own labels, for its response if it panics (an empty map costs nothing).
    let labels = task.labels.clone();
    match std::panic::AssertUnwindSafe(run_task(task, worker))
        .catch_unwind()
        .await
    {
        Ok(done) => done,
        Err(panic) => {
            let reason = panic
                .downcast_ref::<&str>()
                .map(|text| (*text).to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "no message".to_string());
            tracing::error!(check = %check.name, %target, %reason, "probe task panicked");
            let response = Response {
                labels,
                ..Response::failed(
                    check.probe.target_label(target),
                    ProbeError::new(
                        ErrorKind::Internal,
                        format!("probe task failed: the probe panicked: {reason}"),
                    ),
                    Timings::default(),
                )
            };
            (index, response)
        }
    }
}

/// Runs one task on its worker, under the check's timeout, and judges the outcome.
async fn run_task(task: ProbeTask, worker: Worker) -> (usize, Response) {
    let ProbeTask {
        finish_by,
        index,
        target,
        labels,
        resolve_seconds,
        check,
        context,
        metrics,
    } = task;
    let mut record = ProbeRecord::start();
    let started = Instant::now();
    // The timeout bounds the whole probe, the resolve that found this instance included.
    // Capped as well as compile refuses it: an Instant must never overflow in a probe.
    let mut budget = crate::config::bounds::CHECK_TIMEOUT
        .cap_duration(check.timeout)
        .saturating_sub(Duration::from_secs_f64(resolve_seconds));
    if let Some(finish_by) = finish_by {
        budget = budget.min(finish_by.saturating_duration_since(started));
    }
    let deadline = started + budget;
    let probe = check.probe.probe(&context, target, deadline, &mut record);
    let outcome = tokio::time::timeout(budget, probe).await;
    let in_phase = record.current_phase();
    // The phases tile the probe, so they add up to its time (ICMP's rtt is a mean instead).
    let probe_seconds = record.finish();
    let mut timings = record.timings;
    timings.resolve += resolve_seconds;
    timings.total = resolve_seconds + probe_seconds;
    let check_type = check.check_type();
    let label = check.probe.target_label(target);
    let error = match outcome {
        Err(_elapsed) => {
            metrics.count_task_timeout(check_type);
            let during =
                in_phase.map_or(String::new(), |phase| format!(" during {}", phase.as_str()));
            let error = ProbeError::new(
                ErrorKind::Timeout,
                format!(
                    "no complete answer within {}{during}",
                    humantime::format_duration(check.timeout)
                ),
            );
            Some(error)
        }
        Ok(Err(error)) => Some(error),
        Ok(Ok(())) => None,
    };
    if let Some(error) = &error {
        metrics.count_probe_error(check_type, error.kind);
    }
    let mut response = Response {
        target: label,
        passing: false,
        error: error.map(Box::new),
        http: record.http.map(Box::new),
        tls: record.tls.map(Box::new),
        sections: record.sections,
        timings,
        assertions: Vec::new(),
        labels,
    };
    // Judging (a JSON parse, regexes over a body of up to 64 MiB) is work of this task too: the
    // worker is held until it is done, so a pool bounds the CPU its probes use, not only their
    // sockets.
    judge(&check, &mut response, &worker);
    drop(worker);
    (index, response)
}

/// Evaluates the assertions on what the probe saw and decides whether the instance passes.
/// Assertions run whenever the type's own section is there, even beside an error (a TLS chain
/// that did not verify still has an expiry to report); an error always fails the instance.
/// It takes the task's worker to say that judging runs while the worker is held.
fn judge(check: &CompiledCheck, response: &mut Response, _held: &Worker) {
    let latency = Duration::from_secs_f64(response.timings.total);
    let mut observation = Observation {
        latency,
        ..Observation::default()
    };
    let judge_type = crate::checks::kind(check.check_type()).judge;
    let Some(type_verdict) = judge_type(response, &mut observation) else {
        return;
    };
    let default_pass = check.probe.passes_by_default(type_verdict);
    let results = assertions::evaluate_all(&check.assertions, &observation);
    let passing = if results.is_empty() {
        default_pass
    } else {
        results.iter().all(|result| result.passing)
    };
    response.passing = response.error.is_none() && passing;
    response.assertions = results;
}
