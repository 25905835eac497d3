//! Check types. Each type compiles its definition once per run (`CompiledCheck`) and probes one
//! target at a time. Check code never touches the bus, the metrics or the scheduler: it gets a
//! target and returns what it saw.

pub mod http;
pub mod tls_client;

use crate::assertions::{AssertionError, CompiledAssertion};
use crate::config::{CheckConfig, CheckSpec, MIN_INTERVAL};
use crate::messages::{Timings, TlsDetails};
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
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Resolve => "resolve",
            Phase::Connect => "connect",
            Phase::Tls => "tls",
            Phase::Processing => "processing",
            Phase::Transfer => "transfer",
        }
    }
}

/// What a probe has recorded so far. It lives outside the probe's future, so when the timeout
/// drops that future the phases it reached, and the one it was in, are still known.
#[derive(Debug, Default)]
pub struct ProbeRecord {
    pub timings: Timings,
    pub tls: Option<TlsDetails>,
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
}

impl CheckType {
    pub const ALL: [CheckType; 1] = [CheckType::Http];

    pub fn as_str(self) -> &'static str {
        match self {
            CheckType::Http => "http",
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
    pub timeout: Duration,
    pub instances: Vec<InstanceAddr>,
    pub assertions: Vec<CompiledAssertion>,
    pub plan: ProbePlan,
}

/// The type-specific, compiled part of a check.
#[derive(Debug)]
pub enum ProbePlan {
    Http(http::HttpPlan),
}

impl ProbePlan {
    pub fn check_type(&self) -> CheckType {
        match self {
            ProbePlan::Http(_) => CheckType::Http,
        }
    }

    /// The host name whose addresses are the instances when none are listed, and the port
    /// that instances without their own port use.
    pub fn host_and_port(&self) -> (&str, u16) {
        match self {
            ProbePlan::Http(plan) => (plan.host(), plan.port()),
        }
    }
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
        };
        Ok(CompiledCheck {
            name: check.name.clone(),
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
    fn check_names_are_restricted() {
        assert!(is_valid_check_name("web_1-a"));
        assert!(!is_valid_check_name("Web"));
        assert!(!is_valid_check_name(""));
        assert!(!is_valid_check_name("a b"));
    }
}
