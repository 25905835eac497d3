//! Check types. Each type compiles its definition once per run (`CompiledCheck`) and probes one
//! target at a time. Check code never touches the bus, the metrics or the scheduler: it gets a
//! target and returns what it saw.

pub mod dns;
pub mod grpc;
pub mod http;
pub mod icmp;
pub mod net;
pub mod tcp;
pub mod tls;
pub mod tls_client;

use crate::assertions::{AssertionError, CompiledAssertion};
use crate::config::{CheckConfig, CheckSpec, MIN_INTERVAL};
use crate::messages::{DnsDetails, GrpcDetails, IcmpDetails, TcpDetails, Timings, TlsDetails};
use crate::model::{is_valid_check_name, CheckType, InstanceAddr, ProbeError};
use crate::resolve::Resolver;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// What every probe shares, built once per runner.
#[derive(Debug)]
pub struct ProbeContext {
    pub resolver: Arc<Resolver>,
    pub tls: Arc<tls_client::TlsClientConfigs>,
    pub max_body_bytes: usize,
}

/// The phases a probe passes through, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Resolve,
    Connect,
    Tls,
    Processing,
    Transfer,
    /// TCP: the send/expect steps.
    Exchange,
    /// DNS: the query sent and its answer read.
    Request,
    /// ICMP: echo requests out, replies in.
    Rtt,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Resolve => "resolve",
            Phase::Connect => "connect",
            Phase::Tls => "tls",
            Phase::Processing => "processing",
            Phase::Transfer => "transfer",
            Phase::Exchange => "exchange",
            Phase::Request => "request",
            Phase::Rtt => "rtt",
        }
    }
}

/// What a probe has recorded so far. It lives outside the probe's future, so when the timeout
/// drops that future the phases it reached, and the one it was in, are still known.
///
/// The phases tile the probe: each one begins where the previous one ended, so the work between
/// two phases (building a request, reading a session's certificates) counts in the later one
/// and no time falls between phases. `finish` returns the time from the start of the first
/// phase to the end of the last, so the phases add up to it exactly. Setup before the first
/// phase (a TLS configuration built, a CA file read) is no time spent with the target.
#[derive(Debug, Default)]
pub struct ProbeRecord {
    pub timings: Timings,
    pub tls: Option<TlsDetails>,
    /// The type-specific sections, filled in as the probe learns them, so a probe that fails
    /// (or times out) part-way still reports what it saw.
    pub tcp: Option<TcpDetails>,
    pub dns: Option<DnsDetails>,
    pub icmp: Option<IcmpDetails>,
    pub grpc: Option<GrpcDetails>,
    current: Option<(Phase, Instant)>,
    /// When the record started, if it was started with `start`.
    started: Option<Instant>,
    /// When the first phase began.
    first_begin: Option<Instant>,
    /// When the last phase ended: where the next one begins.
    last_end: Option<Instant>,
}

impl ProbeRecord {
    /// A record whose clock runs from now (what `finish` counts if no phase ever begins).
    pub fn start() -> ProbeRecord {
        ProbeRecord {
            started: Some(Instant::now()),
            ..ProbeRecord::default()
        }
    }

    /// Starts `phase`, ending the one in progress. It begins where the last phase ended.
    pub fn begin(&mut self, phase: Phase) {
        self.end();
        let began = self.last_end.unwrap_or_else(Instant::now);
        self.first_begin.get_or_insert(began);
        self.current = Some((phase, began));
    }

    /// The phase in progress, if any.
    pub fn current_phase(&self) -> Option<Phase> {
        self.current.map(|(phase, _)| phase)
    }

    /// Ends the phase in progress, adding its time (phases repeat across redirects).
    pub fn end(&mut self) {
        if let Some((phase, began)) = self.current.take() {
            let now = Instant::now();
            let seconds = now.saturating_duration_since(began).as_secs_f64();
            let slot = match phase {
                Phase::Resolve => &mut self.timings.resolve,
                Phase::Connect => &mut self.timings.connect,
                Phase::Tls => &mut self.timings.tls,
                Phase::Processing => &mut self.timings.processing,
                Phase::Transfer => &mut self.timings.transfer,
                Phase::Exchange => &mut self.timings.exchange,
                Phase::Request => &mut self.timings.request,
                Phase::Rtt => &mut self.timings.rtt,
            };
            *slot += seconds;
            self.last_end = Some(now);
        }
    }

    /// Ends the phase in progress and returns the seconds from the start of the first phase
    /// to the end of the last: the sum of the phases. What a probe does before its first phase
    /// or after its last (turning a body into text, say) is bookkeeping, not time spent with
    /// the target. A probe that failed before any phase counts from `start` to now (0 for a
    /// record made without `start`).
    pub fn finish(&mut self) -> f64 {
        self.end();
        match (self.first_begin, self.last_end, self.started) {
            (Some(first), Some(last), _) => last.saturating_duration_since(first).as_secs_f64(),
            (_, _, Some(started)) => started.elapsed().as_secs_f64(),
            _ => 0.0,
        }
    }
}

/// Why a check definition cannot run.
#[derive(Debug, thiserror::Error)]
pub enum CheckDefinitionError {
    #[error("check name `{0}` is invalid: use only a-z, 0-9, `_` and `-`")]
    Name(String),
    #[error("interval {} is too short; the least is {}", humantime::format_duration(*.0), humantime::format_duration(MIN_INTERVAL))]
    IntervalTooShort(Duration),
    #[error("timeout must be longer than 0s")]
    TimeoutZero,
    #[error("timeout {} must be shorter than interval {}", humantime::format_duration(*.timeout), humantime::format_duration(*.interval))]
    TimeoutNotBelowInterval {
        timeout: Duration,
        interval: Duration,
    },
    #[error("instance `{0}` is not an address: write an IP (`10.0.0.5`, `::1`) or IP and port (`10.0.0.5:8443`, `[::1]:8443`)")]
    Instance(String),
    #[error("{0}")]
    Http(#[from] http::HttpDefinitionError),
    #[error("{0}")]
    Tcp(#[from] tcp::TcpDefinitionError),
    #[error("{0}")]
    Dns(#[from] dns::DnsDefinitionError),
    #[error("{0}")]
    Tls(#[from] tls::TlsDefinitionError),
    #[error("{0}")]
    Icmp(#[from] icmp::IcmpDefinitionError),
    #[error("{0}")]
    Grpc(#[from] grpc::GrpcDefinitionError),
    #[error("assertion #{index}: {source}")]
    Assertion {
        index: usize,
        source: AssertionError,
    },
}

/// A check definition made ready to run: parsed, validated, regexes and paths compiled.
/// Built once per run and shared by that run's tasks.
#[derive(Debug)]
pub struct CompiledCheck {
    pub name: String,
    /// How often the check runs; a runner forgets a check's series a few intervals after
    /// its last run.
    pub interval: Duration,
    pub timeout: Duration,
    pub instances: Vec<InstanceAddr>,
    pub assertions: Vec<CompiledAssertion>,
    pub plan: ProbePlan,
}

/// The type-specific, compiled part of a check.
#[derive(Debug)]
pub enum ProbePlan {
    Http(http::HttpPlan),
    Tcp(tcp::TcpPlan),
    Dns(dns::DnsPlan),
    Tls(tls::TlsPlan),
    Icmp(icmp::IcmpPlan),
    Grpc(grpc::GrpcPlan),
}

impl ProbePlan {
    pub fn check_type(&self) -> CheckType {
        match self {
            ProbePlan::Http(_) => CheckType::Http,
            ProbePlan::Tcp(_) => CheckType::Tcp,
            ProbePlan::Dns(_) => CheckType::Dns,
            ProbePlan::Tls(_) => CheckType::Tls,
            ProbePlan::Icmp(_) => CheckType::Icmp,
            ProbePlan::Grpc(_) => CheckType::Grpc,
        }
    }

    /// The host name whose addresses are the instances when none are listed, and the port
    /// that instances without their own port use. A DNS check without a `server` names no
    /// host: its instances are the system's name servers (`system_targets`).
    pub fn host_and_port(&self) -> (&str, u16) {
        match self {
            ProbePlan::Http(plan) => (plan.host(), plan.port()),
            ProbePlan::Tcp(plan) => (plan.host(), plan.port()),
            ProbePlan::Dns(plan) => (plan.server_host(), plan.server_port()),
            ProbePlan::Tls(plan) => (plan.host(), plan.port()),
            ProbePlan::Icmp(plan) => (plan.host(), 0),
            ProbePlan::Grpc(plan) => (plan.host(), plan.port()),
        }
    }

    /// Instances that come from the system rather than from a host name: the name servers of
    /// `/etc/resolv.conf` for a DNS check without a `server`. None for every other check.
    pub fn system_targets(&self) -> Option<Result<Vec<SocketAddr>, ProbeError>> {
        match self {
            ProbePlan::Dns(plan) if plan.uses_system_servers() => Some(dns::system_name_servers()),
            _ => None,
        }
    }

    /// Whether an address found for the host may be probed (ICMP's `ip_version` keeps one
    /// family only).
    pub fn accepts(&self, address: &SocketAddr) -> bool {
        match self {
            ProbePlan::Icmp(plan) => plan.accepts(address.ip()),
            _ => true,
        }
    }

    /// How a probed address is shown as the response's `target` and the `target` label:
    /// `ip:port`, or the bare IP for ICMP, which has no ports.
    pub fn target_label(&self, address: SocketAddr) -> String {
        match self {
            ProbePlan::Icmp(_) => address.ip().to_string(),
            _ => address.to_string(),
        }
    }
}

impl CompiledCheck {
    pub fn compile(check: &CheckConfig) -> Result<CompiledCheck, CheckDefinitionError> {
        if !is_valid_check_name(&check.name) {
            return Err(CheckDefinitionError::Name(check.name.clone()));
        }
        if check.interval < MIN_INTERVAL {
            return Err(CheckDefinitionError::IntervalTooShort(check.interval));
        }
        let timeout = check.timeout();
        if timeout.is_zero() {
            return Err(CheckDefinitionError::TimeoutZero);
        }
        if timeout >= check.interval {
            return Err(CheckDefinitionError::TimeoutNotBelowInterval {
                timeout,
                interval: check.interval,
            });
        }
        let instances = check
            .instances
            .iter()
            .map(|text| {
                InstanceAddr::parse(text)
                    .ok_or_else(|| CheckDefinitionError::Instance(text.clone()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let check_type = check.check_type();
        let assertions = check
            .assertions
            .iter()
            .enumerate()
            .map(|(index, assertion)| {
                CompiledAssertion::compile(assertion, check_type).map_err(|source| {
                    CheckDefinitionError::Assertion {
                        index: index + 1,
                        source,
                    }
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let plan = match &check.spec {
            CheckSpec::Http(spec) => ProbePlan::Http(http::HttpPlan::compile(spec)?),
            CheckSpec::Tcp(spec) => ProbePlan::Tcp(tcp::TcpPlan::compile(spec)?),
            CheckSpec::Dns(spec) => ProbePlan::Dns(dns::DnsPlan::compile(spec)?),
            CheckSpec::Tls(spec) => ProbePlan::Tls(tls::TlsPlan::compile(spec)?),
            CheckSpec::Icmp(spec) => ProbePlan::Icmp(icmp::IcmpPlan::compile(spec, timeout)?),
            CheckSpec::Grpc(spec) => ProbePlan::Grpc(grpc::GrpcPlan::compile(spec)?),
        };
        Ok(CompiledCheck {
            name: check.name.clone(),
            interval: check.interval,
            timeout,
            instances,
            assertions,
            plan,
        })
    }

    pub fn check_type(&self) -> CheckType {
        self.plan.check_type()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn phases_tile_the_probe_and_add_up_to_its_time() {
        let step = Duration::from_millis(7);
        let mut record = ProbeRecord::start();
        tokio::time::advance(step).await; // setup before the first phase: not the target's time
        record.begin(Phase::Connect);
        tokio::time::advance(step).await;
        record.end();
        tokio::time::advance(step).await; // between phases: counts in the next one
        record.begin(Phase::Tls);
        tokio::time::advance(step).await;
        record.begin(Phase::Processing);
        tokio::time::advance(step).await;
        record.end();
        tokio::time::advance(step).await; // after the last phase: not the target's time
        let total = record.finish();
        let timings = &record.timings;
        assert_eq!(timings.connect, 0.007);
        assert_eq!(timings.tls, 0.014);
        assert_eq!(timings.processing, 0.007);
        assert_eq!(total, 0.028);
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_that_failed_before_any_phase_counts_up_to_now() {
        let mut record = ProbeRecord::start();
        tokio::time::advance(Duration::from_millis(3)).await;
        assert_eq!(record.finish(), 0.003);
    }
}
