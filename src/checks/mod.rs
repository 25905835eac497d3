//! Check types. Each type is one module that declares, in its `KIND`, everything bastion knows
//! about it: its assertion keys, how it judges a response and which `probe_*` series it
//! reports; its plan's `compile` turns its spec into a `Probe`. `kind()` and `compile_probe`
//! below reach every type by an exhaustive match (`KINDS` lists them for iteration); the
//! dispatcher, the sink and validation go through them and the `Probe` trait and never name a
//! protocol.
//! Check code never touches the bus, the metrics or the scheduler: it gets a target and
//! returns what it saw.

pub mod dns;
pub mod grpc;
pub mod http;
pub mod icmp;
pub mod net;
pub mod oauth2;
mod observation;
pub mod proxy;
pub mod response;
pub mod series;
pub mod settings;
pub mod starttls;
pub mod tcp;
pub mod tls;
pub mod tls_client;
pub mod udp;
pub mod websocket;

use crate::assertions::{AssertionError, CompiledAssertion};
use crate::config::{CheckConfig, CheckSpec, InstancesFrom, MIN_INTERVAL};
use crate::model::{is_valid_check_name, labels_problem, CheckType, InstanceAddr, ProbeError};
use crate::problem::KeyPath;
use crate::resolve::Resolver;
pub use observation::{AssertionKey, Observation, Observed, Relationship};
use response::{
    DnsDetails, GrpcDetails, HttpDetails, IcmpDetails, Response, TcpDetails, Timings, TlsDetails,
    UdpDetails, WebsocketDetails,
};
use series::{SeriesOut, SeriesSpec};
use settings::IpProtocol;
use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Every check type bastion has, in the order their series are registered. A new type is one
/// module with its `KIND`, a line here and one in each match below, and its spec in
/// `config/check.rs` (the schema stays below the engine, so configs load alone).
pub const KINDS: [&CheckKind; 8] = [
    &http::KIND,
    &tcp::KIND,
    &dns::KIND,
    &tls::KIND,
    &icmp::KIND,
    &grpc::KIND,
    &udp::KIND,
    &websocket::KIND,
];

/// The kind of `check_type`. Exhaustive: a new `CheckType` without its line here does not
/// compile.
pub fn kind(check_type: CheckType) -> &'static CheckKind {
    match check_type {
        CheckType::Http => &http::KIND,
        CheckType::Tcp => &tcp::KIND,
        CheckType::Dns => &dns::KIND,
        CheckType::Tls => &tls::KIND,
        CheckType::Icmp => &icmp::KIND,
        CheckType::Grpc => &grpc::KIND,
        CheckType::Udp => &udp::KIND,
        CheckType::Websocket => &websocket::KIND,
    }
}

/// The probe of `spec`, compiled with the check's timeout. Exhaustive over the specs: each
/// type's plan is built from its own spec, and no type ever sees another's.
fn compile_probe(
    spec: &CheckSpec,
    timeout: Duration,
) -> Result<Box<dyn Probe>, CheckDefinitionError> {
    fn boxed<P: Probe + 'static, E: SpecError>(
        plan: Result<P, E>,
    ) -> Result<Box<dyn Probe>, CheckDefinitionError> {
        Ok(Box::new(plan.map_err(CheckDefinitionError::spec)?))
    }
    match spec {
        CheckSpec::Http(spec) => boxed(http::HttpPlan::compile(spec, timeout)),
        CheckSpec::Tcp(spec) => boxed(tcp::TcpPlan::compile(spec)),
        CheckSpec::Dns(spec) => boxed(dns::DnsPlan::compile(spec)),
        CheckSpec::Tls(spec) => boxed(tls::TlsPlan::compile(spec)),
        CheckSpec::Icmp(spec) => boxed(icmp::IcmpPlan::compile(spec, timeout)),
        CheckSpec::Grpc(spec) => boxed(grpc::GrpcPlan::compile(spec)),
        CheckSpec::Udp(spec) => boxed(udp::UdpPlan::compile(spec)),
        CheckSpec::Websocket(spec) => boxed(websocket::WebsocketPlan::compile(spec)),
    }
}

/// What bastion knows about one check type, declared by its module.
#[derive(Debug)]
pub struct CheckKind {
    pub check_type: CheckType,
    /// The type's own assertion keys; `latency` applies to every type.
    pub assertion_keys: &'static [AssertionKey],
    /// Fills `observation` from the type's section of a response and returns the verdict
    /// without assertions; None when the section is missing (the probe failed before it).
    pub judge: for<'a> fn(&'a Response, &mut Observation<'a>) -> Option<bool>,
    /// The `probe_*` series the type reports beside those every type has.
    pub series: &'static [SeriesSpec],
    /// Writes those series for one response.
    pub write_series: fn(&Response, &mut dyn SeriesOut),
}

/// A boxed future that borrows what the probe uses.
pub type ProbeFuture<'a> = Pin<Box<dyn Future<Output = Result<(), ProbeError>> + Send + 'a>>;

/// A check's compiled, type-specific part: what the dispatcher calls. It records what it sees
/// in the `ProbeRecord`, so a probe cut short by its timeout still reports it.
pub trait Probe: Send + Sync + std::fmt::Debug {
    /// The host name whose addresses are the instances when none are listed, and the port
    /// that instances without their own port use. A DNS check without a `server` names no
    /// host: its instances are the system's name servers (`system_targets`).
    fn host_and_port(&self) -> (&str, u16);

    /// Instances that come from the system rather than from a host name.
    fn system_targets(&self) -> Option<Result<Vec<SocketAddr>, ProbeError>> {
        None
    }

    /// Whether an address found for the host may be probed.
    fn accepts(&self, _address: &SocketAddr) -> bool {
        true
    }

    /// The verdict without assertions, given the type's own (`type_verdict`): a check may
    /// widen it by its settings (an http check's `valid_status_codes`).
    fn passes_by_default(&self, type_verdict: bool) -> bool {
        type_verdict
    }

    /// How a probed address is shown as the response's `target` and the `target` label.
    fn target_label(&self, address: SocketAddr) -> String {
        address.to_string()
    }

    /// How the check's target is named when no instance address is known (it did not
    /// resolve): `host:port`.
    fn unresolved_label(&self) -> String {
        let (host, port) = self.host_and_port();
        if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        }
    }

    /// Probes one instance. `deadline` is when the probe's timeout ends (ICMP stops sending
    /// before it, so unanswered requests are loss rather than a timeout).
    fn probe<'a>(
        &'a self,
        context: &'a ProbeContext,
        target: SocketAddr,
        deadline: Instant,
        record: &'a mut ProbeRecord,
    ) -> ProbeFuture<'a>;
}

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
    /// HTTP through a proxy: the CONNECT request and the proxy's answer (the tunnel).
    Proxy,
    Tls,
    Processing,
    Transfer,
    /// TCP: the send/expect steps.
    Exchange,
    /// DNS and UDP: the query (datagram) sent and its answer read.
    Request,
    /// ICMP: echo requests out, replies in.
    Rtt,
    /// TCP and TLS with `starttls`: the plaintext exchange before the handshake.
    Starttls,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Resolve => "resolve",
            Phase::Connect => "connect",
            Phase::Proxy => "proxy",
            Phase::Tls => "tls",
            Phase::Processing => "processing",
            Phase::Transfer => "transfer",
            Phase::Exchange => "exchange",
            Phase::Request => "request",
            Phase::Rtt => "rtt",
            Phase::Starttls => "starttls",
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
    /// HTTP: the response, set once it was read.
    pub http: Option<HttpDetails>,
    pub tls: Option<TlsDetails>,
    /// The type-specific sections, filled in as the probe learns them, so a probe that fails
    /// (or times out) part-way still reports what it saw.
    pub tcp: Option<TcpDetails>,
    pub dns: Option<DnsDetails>,
    pub icmp: Option<IcmpDetails>,
    pub grpc: Option<GrpcDetails>,
    pub udp: Option<UdpDetails>,
    pub websocket: Option<WebsocketDetails>,
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
                Phase::Proxy => &mut self.timings.proxy,
                Phase::Tls => &mut self.timings.tls,
                Phase::Processing => &mut self.timings.processing,
                Phase::Transfer => &mut self.timings.transfer,
                Phase::Exchange => &mut self.timings.exchange,
                Phase::Request => &mut self.timings.request,
                Phase::Rtt => &mut self.timings.rtt,
                Phase::Starttls => &mut self.timings.starttls,
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
    /// The interval or timeout (the key named first) is beyond its range (a message from the
    /// bus).
    #[error("{1}")]
    OutOfRange(&'static str, String),
    #[error("timeout {} must be shorter than interval {}", humantime::format_duration(*.timeout), humantime::format_duration(*.interval))]
    TimeoutNotBelowInterval {
        timeout: Duration,
        interval: Duration,
    },
    #[error("instance `{0}` is not an address: write an IP (`10.0.0.5`, `::1`) or IP and port (`10.0.0.5:8443`, `[::1]:8443`)")]
    Instance(String),
    /// The type's own definition error, as its module words it.
    #[error("{0}")]
    Spec(Box<dyn SpecError>),
    #[error("ip_protocol_fallback only applies with ip_protocol = \"ip4\" or \"ip6\"; set one or remove it")]
    FallbackWithoutProtocol,
    #[error("labels: {0}")]
    Labels(String),
    #[error("instances and instances_from both name the instances; keep one")]
    InstancesTwice,
    #[error("instances_from: {0}")]
    InstancesFrom(String),
    #[error("assertion #{index}: {source}")]
    Assertion {
        index: usize,
        source: AssertionError,
    },
}

/// A check type's own definition error, which knows the key of the check it is about.
pub trait SpecError: std::error::Error + Send + Sync + 'static {
    /// The key of the check this error is about, as the file writes it (`url`,
    /// `tls.ca_file`, `steps[1].expect`): where `bastion validate` places the message.
    fn key(&self) -> KeyPath;
}

impl CheckDefinitionError {
    /// Wraps a type's own definition error.
    pub fn spec(error: impl SpecError) -> CheckDefinitionError {
        CheckDefinitionError::Spec(Box::new(error))
    }

    /// The key of the check this error is about (`timeout`, `assertions[0]`, `url`).
    pub fn key(&self) -> KeyPath {
        match self {
            CheckDefinitionError::Name(_) => KeyPath::dotted("name"),
            CheckDefinitionError::IntervalTooShort(_) => KeyPath::dotted("interval"),
            CheckDefinitionError::TimeoutZero
            | CheckDefinitionError::TimeoutNotBelowInterval { .. } => KeyPath::dotted("timeout"),
            CheckDefinitionError::OutOfRange(key, _) => KeyPath::dotted(key),
            CheckDefinitionError::Instance(_) | CheckDefinitionError::InstancesTwice => {
                KeyPath::dotted("instances")
            }
            CheckDefinitionError::Spec(error) => error.key(),
            CheckDefinitionError::FallbackWithoutProtocol => {
                KeyPath::dotted("ip_protocol_fallback")
            }
            CheckDefinitionError::Labels(_) => KeyPath::dotted("labels"),
            CheckDefinitionError::InstancesFrom(_) => KeyPath::dotted("instances_from"),
            // Assertions count from 1 in messages.
            CheckDefinitionError::Assertion { index, .. } => {
                KeyPath::dotted("assertions").index(index.saturating_sub(1))
            }
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
    pub check_type: CheckType,
    pub probe: Box<dyn Probe>,
    /// Which resolved addresses are instances (`ip_protocol`), and whether the other family
    /// stands in when the host has none of it (`ip_protocol_fallback`).
    pub ip_protocol: IpProtocol,
    pub ip_protocol_fallback: bool,
    /// The check's own labels, on every response and `probe_*` series.
    pub labels: BTreeMap<String, String>,
    /// Where the instances are discovered, if not from `instances` or the host.
    pub instances_from: Option<InstancesFrom>,
}

impl CompiledCheck {
    pub fn compile(check: &CheckConfig) -> Result<CompiledCheck, CheckDefinitionError> {
        if !is_valid_check_name(&check.name) {
            return Err(CheckDefinitionError::Name(check.name.clone()));
        }
        if check.interval < MIN_INTERVAL {
            return Err(CheckDefinitionError::IntervalTooShort(check.interval));
        }
        // Checked here too, not only when the file is read: a check from the bus was never
        // read from a file, and deadlines are computed from these.
        for (bound, value) in [
            (&crate::config::bounds::CHECK_INTERVAL, check.interval),
            (&crate::config::bounds::CHECK_TIMEOUT, check.timeout()),
        ] {
            if value > bound.cap_duration(value) {
                return Err(CheckDefinitionError::OutOfRange(
                    bound.name(),
                    bound.check_entry_duration(value).err().unwrap_or_default(),
                ));
            }
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
        if let Some(problem) = labels_problem(check.labels.iter()) {
            return Err(CheckDefinitionError::Labels(problem));
        }
        if let Some(source) = &check.instances_from {
            if !check.instances.is_empty() {
                return Err(CheckDefinitionError::InstancesTwice);
            }
            instances_from_problem(source).map_err(CheckDefinitionError::InstancesFrom)?;
        }
        let check_type = check.check_type();
        let kind = kind(check_type);
        let assertions = check
            .assertions
            .iter()
            .enumerate()
            .map(|(index, assertion)| {
                CompiledAssertion::compile(assertion, check_type, kind.assertion_keys).map_err(
                    |source| CheckDefinitionError::Assertion {
                        index: index + 1,
                        source,
                    },
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        let probe = compile_probe(&check.spec, timeout)?;
        let ip_protocol = check.ip_protocol.unwrap_or_default();
        if check.ip_protocol_fallback.is_some() && ip_protocol == IpProtocol::Any {
            return Err(CheckDefinitionError::FallbackWithoutProtocol);
        }
        Ok(CompiledCheck {
            ip_protocol,
            ip_protocol_fallback: check.ip_protocol_fallback.unwrap_or(true),
            name: check.name.clone(),
            labels: check.labels.clone(),
            instances_from: check.instances_from.clone(),
            interval: check.interval,
            timeout,
            instances,
            assertions,
            check_type,
            probe,
        })
    }

    pub fn check_type(&self) -> CheckType {
        self.check_type
    }

    /// The labels of one instance's response: the check's, then the instance's own (from
    /// discovery), which win where both name the same label.
    pub fn labels_with(&self, instance: &BTreeMap<String, String>) -> BTreeMap<String, String> {
        let mut labels = self.labels.clone();
        labels.extend(
            instance
                .iter()
                .map(|(name, value)| (name.clone(), value.clone())),
        );
        labels
    }

    /// The addresses of `found` that `ip_protocol` keeps: those of the family asked for, or,
    /// when there are none and `ip_protocol_fallback` allows, those of the other.
    pub fn select_family(&self, found: Vec<SocketAddr>) -> Vec<SocketAddr> {
        let wanted = |address: &SocketAddr| match self.ip_protocol {
            IpProtocol::Ip4 => address.is_ipv4(),
            IpProtocol::Ip6 => address.is_ipv6(),
            IpProtocol::Any => true,
        };
        if found.iter().any(wanted) || !self.ip_protocol_fallback {
            found
                .into_iter()
                .filter(|address| wanted(address))
                .collect()
        } else {
            found
        }
    }
}

/// What makes an `instances_from` unusable, said as what to fix.
fn instances_from_problem(source: &InstancesFrom) -> Result<(), String> {
    match source {
        InstancesFrom::File(path) if path.as_os_str().is_empty() => {
            Err("file is empty; name a Prometheus file_sd file (JSON or YAML)".to_string())
        }
        InstancesFrom::File(_) => Ok(()),
        InstancesFrom::Srv(name) => {
            let name = name.trim_end_matches('.');
            let valid = !name.is_empty()
                && name.len() <= 253
                && name.split('.').all(|part| {
                    !part.is_empty()
                        && part.len() <= 63
                        && part
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                });
            if valid {
                Ok(())
            } else {
                Err(format!(
                    "srv `{name}` is not a DNS name; write one like `_http._tcp.web.service.internal`"
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A definition error names the key of the check it is about, the type's own ones too.
    #[test]
    fn a_definition_error_names_its_key() {
        let key = |toml: &str| {
            let check: CheckConfig = toml::from_str(toml).expect("parses");
            CompiledCheck::compile(&check)
                .expect_err("does not compile")
                .key()
                .to_string()
        };
        let tcp = "name = \"t\"\ntype = \"tcp\"\ninterval = \"10s\"\naddress = \"h:1\"\n";
        assert_eq!(key(&format!("{tcp}timeout = \"10s\"\n")), "timeout");
        assert_eq!(
            key(&format!(
                "{tcp}[[steps]]\nsend = \"x\"\n[[steps]]\nexpect = \"(\"\n"
            )),
            "steps[1].expect"
        );
        assert_eq!(
            key(&format!(
                "{tcp}[[assertions]]\nkey = \"latency\"\nrelationship = \"regExp\"\noperand = \"(\"\n"
            )),
            "assertions[0]"
        );
        assert_eq!(
            key(&format!(
                "{tcp}tls = {{ ca_file = \"/x\", insecure_skip_verify = true }}\n"
            )),
            "tls.ca_file"
        );
        let http = "name = \"w\"\ntype = \"http\"\ninterval = \"10s\"\nurl = \"http://x/\"\n";
        assert_eq!(
            key(&format!("{http}valid_status_codes = [99]\n")),
            "valid_status_codes"
        );
    }

    #[test]
    fn every_check_type_has_one_kind() {
        for check_type in CheckType::ALL {
            let found = KINDS
                .iter()
                .filter(|kind| kind.check_type == check_type)
                .count();
            assert_eq!(found, 1, "{check_type}");
            assert_eq!(kind(check_type).check_type, check_type);
        }
    }

    /// A check from the bus was never range-checked as a file is: one with a timeout that
    /// would overflow the probe's deadline is refused, not run.
    #[test]
    fn a_check_beyond_the_ranges_is_refused_at_compile() {
        let check: CheckConfig = toml::from_str(
            r#"
            name = "web"
            type = "tcp"
            address = "127.0.0.1:80"
            interval = "10s"
            timeout = "2s"
        "#,
        )
        .unwrap();
        assert!(CompiledCheck::compile(&check).is_ok());
        let endless = CheckConfig {
            interval: Duration::from_secs(u64::MAX / 2),
            timeout: Some(Duration::from_secs(u64::MAX / 4)),
            ..check.clone()
        };
        let error = CompiledCheck::compile(&endless).unwrap_err().to_string();
        assert!(error.contains("the most allowed is 30days"), "{error}");
        let long_timeout = CheckConfig {
            interval: Duration::from_secs(3600),
            timeout: Some(Duration::from_secs(601)),
            ..check
        };
        let error = CompiledCheck::compile(&long_timeout)
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with("timeout is 10m 1s; the most allowed is 10m"),
            "{error}"
        );
    }

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
