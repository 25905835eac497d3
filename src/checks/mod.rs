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

use crate::model::{CheckType, ProbeError};
use crate::problem::KeyPath;
use crate::resolve::Resolver;
pub use observation::{AssertionKey, Observation, Observed, Relationship};
use response::{
    DnsDetails, GrpcDetails, HttpDetails, IcmpDetails, Response, TcpDetails, Timings, TlsDetails,
    UdpDetails, WebsocketDetails,
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use series::{SeriesOut, SeriesSpec};
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
pub fn compile_probe(
    spec: &CheckSpec,
    timeout: Duration,
) -> Result<Box<dyn Probe>, Box<dyn SpecError>> {
    fn boxed<P: Probe + 'static, E: SpecError>(
        plan: Result<P, E>,
    ) -> Result<Box<dyn Probe>, Box<dyn SpecError>> {
        match plan {
            Ok(plan) => Ok(Box::new(plan)),
            Err(error) => Err(Box::new(error)),
        }
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

/// The type-specific part of a check, chosen by its `type` key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "lowercase")]
// Each variant boxed: a check costs its own type's settings, not the largest type's (an
// unboxed `CheckSpec` made every `CheckConfig` the size of an http check's, about a kilobyte,
// in the config's list and in every copy of it; issue 20's million checks).
pub enum CheckSpec {
    Http(Box<http::HttpSpec>),
    Tcp(Box<tcp::TcpSpec>),
    Dns(Box<dns::DnsSpec>),
    Tls(Box<tls::TlsSpec>),
    Icmp(Box<icmp::IcmpSpec>),
    Grpc(Box<grpc::GrpcSpec>),
    Udp(Box<udp::UdpSpec>),
    Websocket(Box<websocket::WebsocketSpec>),
}

impl CheckSpec {
    pub fn check_type(&self) -> CheckType {
        match self {
            CheckSpec::Http(_) => CheckType::Http,
            CheckSpec::Tcp(_) => CheckType::Tcp,
            CheckSpec::Dns(_) => CheckType::Dns,
            CheckSpec::Tls(_) => CheckType::Tls,
            CheckSpec::Icmp(_) => CheckType::Icmp,
            CheckSpec::Grpc(_) => CheckType::Grpc,
            CheckSpec::Udp(_) => CheckType::Udp,
            CheckSpec::Websocket(_) => CheckType::Websocket,
        }
    }

    /// What the check probes, in the words of its own keys (its URL, `host:port`, the
    /// question it asks): what a private status page shows beside the check's name.
    pub fn target(&self) -> String {
        match self {
            CheckSpec::Http(spec) => spec.url.clone(),
            CheckSpec::Tcp(spec) => spec.address.clone(),
            CheckSpec::Dns(spec) => format!("{:?} {}", spec.record_type, spec.query),
            CheckSpec::Tls(spec) => spec.address.clone(),
            CheckSpec::Icmp(spec) => spec.host.clone(),
            CheckSpec::Grpc(spec) => spec.address.clone(),
            CheckSpec::Udp(spec) => spec.address.clone(),
            CheckSpec::Websocket(spec) => spec.url.clone(),
        }
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

/// A check type's own definition error, which knows the key of the check it is about.
pub trait SpecError: std::error::Error + Send + Sync + 'static {
    /// The key of the check this error is about, as the file writes it (`url`,
    /// `tls.ca_file`, `steps[1].expect`): where `bastion validate` places the message.
    fn key(&self) -> KeyPath;
}

#[cfg(test)]
mod tests {
    use super::*;

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
