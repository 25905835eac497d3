//! Check types. Each type compiles its definition once per run (`CompiledCheck`) and probes one
//! target at a time. Check code never touches the bus, the metrics or the scheduler: it gets a
//! target and returns what it saw.

pub mod dns;
pub mod grpc;
pub mod http;
pub mod icmp;
pub mod tcp;
pub mod tls;
pub mod tls_client;

use crate::assertions::{AssertionError, CompiledAssertion};
use crate::config::{CheckConfig, CheckSpec, MIN_INTERVAL};
use crate::messages::{DnsDetails, GrpcDetails, IcmpDetails, TcpDetails, Timings, TlsDetails};
use crate::resolve::Resolver;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
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
}

impl ProbeRecord {
    /// Starts `phase`, ending the one in progress.
    pub fn begin(&mut self, phase: Phase) {
        self.end();
        self.current = Some((phase, Instant::now()));
    }

    /// The phase in progress, if any.
    pub fn current_phase(&self) -> Option<Phase> {
        self.current.map(|(phase, _)| phase)
    }

    /// Ends the phase in progress, adding its time (phases repeat across redirects).
    pub fn end(&mut self) {
        if let Some((phase, started)) = self.current.take() {
            let seconds = started.elapsed().as_secs_f64();
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
        }
    }
}

/// The kinds of check, each with its own worker pool and bus subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckType {
    Http,
    Tcp,
    Dns,
    Tls,
    Icmp,
    Grpc,
}

impl CheckType {
    pub const ALL: [CheckType; 6] = [
        CheckType::Http,
        CheckType::Tcp,
        CheckType::Dns,
        CheckType::Tls,
        CheckType::Icmp,
        CheckType::Grpc,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CheckType::Http => "http",
            CheckType::Tcp => "tcp",
            CheckType::Dns => "dns",
            CheckType::Tls => "tls",
            CheckType::Icmp => "icmp",
            CheckType::Grpc => "grpc",
        }
    }
}

impl fmt::Display for CheckType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The fixed set of ways a probe can fail. Each is both the JSON `error.kind` and a bounded
/// metric label, so the set stays small and never carries free text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The host name did not resolve.
    Resolve,
    /// The TCP connection could not be made.
    Connect,
    /// The TLS handshake failed, or the certificate was not trusted.
    Tls,
    /// The server broke the HTTP protocol, or closed before answering.
    Http,
    /// The response body could not be read to its end (or to the cap).
    Body,
    /// TCP: an `expect` step found no match before the peer closed or the read cap.
    Expect,
    /// DNS: the server's answer was not a valid DNS response to the query.
    Dns,
    /// ICMP: the echo socket could not be opened or used.
    Icmp,
    /// gRPC: the call failed (a grpc-status other than OK, or a malformed answer).
    Grpc,
    /// The probe did not finish within the check's timeout.
    Timeout,
    /// No worker was free within the dispatch deadline; the probe never ran.
    DispatchTimeout,
    /// The probe task itself failed; a bug, reported rather than hidden.
    Internal,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Resolve => "resolve",
            ErrorKind::Connect => "connect",
            ErrorKind::Tls => "tls",
            ErrorKind::Http => "http",
            ErrorKind::Body => "body",
            ErrorKind::Expect => "expect",
            ErrorKind::Dns => "dns",
            ErrorKind::Icmp => "icmp",
            ErrorKind::Grpc => "grpc",
            ErrorKind::Timeout => "timeout",
            ErrorKind::DispatchTimeout => "dispatch_timeout",
            ErrorKind::Internal => "internal",
        }
    }
}

/// What went wrong in one probe: a kind from the fixed set, and a message for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{kind:?}: {message}")]
pub struct ProbeError {
    pub kind: ErrorKind,
    pub message: String,
}

impl ProbeError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ProbeError {
            kind,
            message: message.into(),
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

/// An IP with an optional port, as written in `instances` (and in `runner.dns_servers`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstanceAddr {
    /// An IP; the port comes from the check's URL or address.
    Ip(IpAddr),
    /// An IP and its own port.
    Socket(SocketAddr),
}

impl InstanceAddr {
    pub fn parse(text: &str) -> Option<InstanceAddr> {
        let text = text.trim();
        if let Ok(socket) = text.parse::<SocketAddr>() {
            return Some(InstanceAddr::Socket(socket));
        }
        let bare = text
            .strip_prefix('[')
            .and_then(|rest| rest.strip_suffix(']'))
            .unwrap_or(text);
        bare.parse::<IpAddr>().ok().map(InstanceAddr::Ip)
    }

    pub fn with_default_port(self, port: u16) -> SocketAddr {
        match self {
            InstanceAddr::Ip(ip) => SocketAddr::new(ip, port),
            InstanceAddr::Socket(socket) => socket,
        }
    }
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

/// Opens a probe's fresh TCP connection, timed as the connect phase. Nagle is off: probes
/// write small requests and must not wait to send them.
pub async fn connect_tcp(
    target: SocketAddr,
    record: &mut ProbeRecord,
) -> Result<tokio::net::TcpStream, ProbeError> {
    record.begin(Phase::Connect);
    let tcp = tokio::net::TcpStream::connect(target)
        .await
        .map_err(|error| {
            ProbeError::new(ErrorKind::Connect, format!("connect to {target}: {error}"))
        })?;
    record.end();
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

/// Splits `host:port` (`[v6]:port` for IPv6 literals) as written in a check's `address`.
pub fn split_host_port(text: &str) -> Result<(String, u16), String> {
    let text = text.trim();
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| "an IPv6 address needs its closing `]`".to_string())?;
        let port = after
            .strip_prefix(':')
            .ok_or_else(|| "it has no port; write host:port".to_string())?;
        (host, port)
    } else {
        let (host, port) = text
            .rsplit_once(':')
            .ok_or_else(|| "it has no port; write host:port".to_string())?;
        if host.contains(':') {
            return Err("write an IPv6 address in brackets: [::1]:port".to_string());
        }
        (host, port)
    };
    if host.is_empty() {
        return Err("it has no host; write host:port".to_string());
    }
    if host
        .chars()
        .any(|c| c.is_whitespace() || c == '/' || c == '@')
    {
        return Err(format!("`{host}` is not a host name or IP"));
    }
    let port: u16 = port
        .parse()
        .map_err(|_| format!("port `{port}` is not a number from 1 to 65535"))?;
    if port == 0 {
        return Err("port 0 cannot be probed; use 1 to 65535".to_string());
    }
    Ok((host.to_string(), port))
}

pub fn is_valid_check_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
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

    #[test]
    fn instance_addresses_parse_with_and_without_port() {
        assert_eq!(
            InstanceAddr::parse("127.0.0.2"),
            Some(InstanceAddr::Ip("127.0.0.2".parse().unwrap()))
        );
        assert_eq!(
            InstanceAddr::parse("127.0.0.3:8443").map(|a| a.with_default_port(1)),
            Some("127.0.0.3:8443".parse().unwrap())
        );
        assert_eq!(
            InstanceAddr::parse("[::1]").map(|a| a.with_default_port(80)),
            Some("[::1]:80".parse().unwrap())
        );
        assert_eq!(InstanceAddr::parse("svc.internal"), None);
    }

    #[test]
    fn addresses_split_into_host_and_port() {
        assert_eq!(
            split_host_port("db.internal:5432"),
            Ok(("db.internal".to_string(), 5432))
        );
        assert_eq!(split_host_port("[::1]:53"), Ok(("::1".to_string(), 53)));
        for (bad, reason) in [
            ("db.internal", "it has no port"),
            ("::1:53", "in brackets"),
            (":80", "it has no host"),
            ("db:http", "is not a number"),
            ("db:0", "port 0"),
        ] {
            let error = split_host_port(bad).unwrap_err();
            assert!(error.contains(reason), "{bad}: {error}");
        }
    }

    #[test]
    fn check_names_are_restricted() {
        assert!(is_valid_check_name("web_1-a"));
        assert!(!is_valid_check_name("Web"));
        assert!(!is_valid_check_name(""));
        assert!(!is_valid_check_name("a b"));
    }
}
