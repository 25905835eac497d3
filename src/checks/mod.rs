//! Check types. Each type is one file holding its spec (its keys of `[[checks]]`, which the
//! configuration takes from here), its plan, its probe and its `KIND`: everything bastion
//! knows about it (its assertion keys, how it judges a response, which `probe_*` series it
//! reports). `check_types!` below registers each type in one line and writes from that list
//! `CheckType`, `CheckSpec`, `KINDS`, the response's type `Sections` and the exhaustive
//! matches `kind()` and `compile_probe`; the dispatcher, the sink and validation go through
//! them and the `Probe` trait and never name a protocol. Check code never touches the bus,
//! the metrics or the scheduler: it gets a target and returns what it saw.

pub mod arrival;
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

use crate::model::ProbeError;
use crate::problem::KeyPath;
use crate::resolve::Resolver;
pub use observation::{AssertionKey, Observation, Observed, Relationship};
use response::{HttpDetails, Response, Section, TextBounds, Timings, TlsDetails};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use series::{SeriesOut, SeriesSpec};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Declares the check types from one line each: `CheckType`, `CheckSpec` (the `type` key
/// chooses the variant), `KINDS`, `kind()` and `compile_probe`. Each is an exhaustive match
/// the macro writes, so a type is never left out of one, and no type's code ever receives
/// another's spec. A line names the type as the file writes it, its variant, and its module's
/// spec, which implements `TypeSpec`; the module also declares `KIND`. A type whose response has
/// a section of its own names that section's struct last: the macro gives it its field of
/// `Sections`, named after the type (the module's name is the type's).
macro_rules! check_types {
    ($($name:literal => $variant:ident(
        $module:ident::$spec:ident $(, $section:ident)?
    ),)*) => {
        /// The kinds of check, each with its own worker pool and bus subject.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub enum CheckType {
            $(#[serde(rename = $name)] $variant,)*
        }

        // The module of a type is named as the type: its section's key is the module's name,
        // and must not be a key `Response` has of its own (serde would write it twice).
        $(
            const _: () = assert!(
                same_text(stringify!($module), $name),
                concat!("check type ", $name, " must live in src/checks/", $name, ".rs"),
            );
            $(const _: () = assert!(
                !response::is_own_key(stringify!($module)),
                concat!("the section of ", $name, " would share its key with a key of Response; ",
                    stringify!($section), " must be that key's"),
            );)?
        )*

        /// How many check types there are.
        pub const TYPE_COUNT: usize = [$($name),*].len();

        /// Each type's name, in the order of `CheckType::ALL`.
        pub const TYPE_NAMES: [&str; TYPE_COUNT] = [$($name),*];

        /// The key of each type's worker count, in the order of `CheckType::ALL`.
        pub const WORKER_KEYS: [&str; TYPE_COUNT] = [$(concat!("runner.workers.", $name)),*];

        impl CheckType {
            /// Every check type, in the order their series are registered.
            pub const ALL: [CheckType; TYPE_COUNT] = [$(CheckType::$variant),*];

            /// The type's place in `CheckType::ALL`.
            pub fn index(self) -> usize {
                self as usize
            }

            /// The type as the `type` key writes it.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(CheckType::$variant => $name,)*
                }
            }
        }

        /// The type-specific part of a check, chosen by its `type` key.
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
        #[serde(tag = "type")]
        // Each variant boxed: a check costs its own type's settings, not the largest type's
        // (an unboxed `CheckSpec` made every `CheckConfig` the size of an http check's, about a
        // kilobyte, in the config's list and in every copy of it; issue 20's million checks).
        pub enum CheckSpec {
            $(#[serde(rename = $name)] $variant(Box<$module::$spec>),)*
        }

        impl CheckSpec {
            pub fn check_type(&self) -> CheckType {
                match self {
                    $(CheckSpec::$variant(_) => CheckType::$variant,)*
                }
            }

            /// What the check probes, in the words of its own keys (its URL, `host:port`,
            /// the question it asks): what a private status page shows beside its name.
            pub fn target(&self) -> String {
                match self {
                    $(CheckSpec::$variant(spec) => spec.target(),)*
                }
            }
        }

        /// Every check type's kind, in the order of `CheckType::ALL`.
        pub const KINDS: [&CheckKind; TYPE_COUNT] = [$(&$module::KIND),*];

        /// The kind of `check_type`.
        pub fn kind(check_type: CheckType) -> &'static CheckKind {
            match check_type {
                $(CheckType::$variant => &$module::KIND,)*
            }
        }

        /// The sections of a response that each belong to one check type, named after it:
        /// what the probe saw, in its type's words. At most one is set, the check's own; a
        /// probe fills it in as it learns, so a probe cut short still reports what it saw.
        #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
        pub struct Sections {
            $($(
                #[doc = concat!($name, " checks: their own section. Absent for other types, and \
                    when the probe failed before it.")]
                #[serde(default, skip_serializing_if = "Option::is_none")]
                pub $module: Option<Box<$module::$section>>,
            )?)*
        }

        impl Sections {
            /// Cuts, in whichever section is set, what a server decided to `bounds`.
            pub fn bound(&mut self, bounds: &TextBounds) {
                $($(
                    if let Some(section) = self.$module.as_mut() {
                        <$module::$section as Section>::bound(section, bounds);
                    }
                )?)*
            }

            /// What the set section saw, in a few words (`bastion once`, incidents); None when
            /// none is set.
            pub fn seen(&self) -> Option<String> {
                $($(
                    if let Some(section) = self.$module.as_ref() {
                        return Some(<$module::$section as Section>::seen(section));
                    }
                )?)*
                None
            }

            /// Leaves out what the set section carried, keeping what it was, its texts cut to
            /// `text_bytes`: a response's `detail_dropped` form.
            pub fn drop_detail(&mut self, text_bytes: usize) {
                $($(
                    if let Some(section) = self.$module.as_mut() {
                        <$module::$section as Section>::drop_detail(section, text_bytes);
                    }
                )?)*
            }
        }

        /// Each type with a section of its own: its name (the section's key) and the section's
        /// struct, for the contract's test and tool.
        pub const SECTIONS: &[(&str, &str)] = &[$($(($name, stringify!($section)),)?)*];

        /// The probe of `spec`, compiled with the check's timeout by its own type.
        pub fn compile_probe(
            spec: &CheckSpec,
            timeout: Duration,
        ) -> Result<Box<dyn Probe>, Box<dyn SpecError>> {
            match spec {
                $(CheckSpec::$variant(spec) => boxed(spec.compile(timeout)),)*
            }
        }
    };
}

// Every check type bastion has: a new type is its file under `src/checks/` and its line here
// (ARCHITECTURE.md, "Adding a check type", lists what else names every type: docs, the API
// contract's tool and the tests that go through them all).
check_types! {
    "http" => Http(http::HttpSpec),
    "tcp" => Tcp(tcp::TcpSpec, TcpDetails),
    "dns" => Dns(dns::DnsSpec, DnsDetails),
    "tls" => Tls(tls::TlsSpec),
    "icmp" => Icmp(icmp::IcmpSpec, IcmpDetails),
    "grpc" => Grpc(grpc::GrpcSpec, GrpcDetails),
    "udp" => Udp(udp::UdpSpec, UdpDetails),
    "websocket" => Websocket(websocket::WebsocketSpec, WebsocketDetails),
}

impl std::fmt::Display for CheckType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `a == b`, where the compiler can evaluate it.
const fn same_text(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut index = 0;
    while index < a.len() {
        if a[index] != b[index] {
            return false;
        }
        index += 1;
    }
    true
}

/// What a check type's spec gives the engine: its compiled plan and what it probes.
pub trait TypeSpec {
    type Plan: Probe + 'static;
    type Error: SpecError;
    /// The plan of this spec, for a check with `timeout`.
    fn compile(&self, timeout: Duration) -> Result<Self::Plan, Self::Error>;
    /// What the check probes, in the words of its own keys (its URL, `host:port`, the
    /// question it asks).
    fn target(&self) -> String;
}

fn boxed<P: Probe + 'static, E: SpecError>(
    plan: Result<P, E>,
) -> Result<Box<dyn Probe>, Box<dyn SpecError>> {
    match plan {
        Ok(plan) => Ok(Box::new(plan)),
        Err(error) => Err(Box::new(error)),
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
    /// What its `runner.workers` count is, as the schema says it (`Concurrent HTTP probes.`).
    pub workers_help: &'static str,
}

/// A boxed future that borrows what the probe uses.
pub type ProbeFuture<'a> = Pin<Box<dyn Future<Output = Result<(), ProbeError>> + Send + 'a>>;

/// A check with more instances, assertions or labels than this (or, for its type, headers or
/// tcp steps) is worth keeping compiled: parsing and copying them at every run would cost more
/// than keeping them (`Probe::worth_keeping`, `CompiledCheck::worth_keeping`).
pub const KEPT_ENTRIES: usize = 16;

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

    /// Whether a runner keeps this compiled probe between runs rather than compiling its
    /// definition again for each run. Keeping costs memory for every check all the time;
    /// compiling again costs CPU at every run. A type answers false only where compiling is
    /// cheap (no regex, no file read: about a microsecond) and the probe keeps nothing from
    /// one run to the next (an OAuth2 token does). The default keeps it.
    fn worth_keeping(&self) -> bool {
        true
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
    /// `runner.max_arrival_correction`: how far before its read a receive stamp may end a
    /// phase (`arrival`); zero turns stamping off.
    pub max_arrival_correction: Duration,
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
    /// The type's own section, filled in as the probe learns it, so a probe that fails (or
    /// times out) part-way still reports what it saw.
    pub sections: Sections,
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
        self.end_at(None);
    }

    /// Ends the phase in progress at `at`, when the kernel says the answer that ends it
    /// arrived (see `arrival`), rather than now, when the probe got to it. An instant before
    /// the phase began (data read before it) or after now is not this phase's end: now is.
    pub fn end_at(&mut self, at: Option<Instant>) {
        if let Some((phase, began)) = self.current.take() {
            let now = Instant::now();
            let ended = at.filter(|at| *at >= began && *at <= now).unwrap_or(now);
            let seconds = ended.saturating_duration_since(began).as_secs_f64();
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
            self.last_end = Some(ended);
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

    /// A phase ended at an earlier instant (a receive stamp) still tiles: the next phase
    /// begins there and the phases add up to the total; an instant before the phase began or
    /// after now is not its end.
    #[tokio::test(start_paused = true)]
    async fn a_phase_ended_at_an_arrival_keeps_the_phases_tiled() {
        let mut record = ProbeRecord::start();
        record.begin(Phase::Connect);
        tokio::time::advance(Duration::from_millis(10)).await;
        record.end();
        record.begin(Phase::Processing);
        let began = Instant::now();
        tokio::time::advance(Duration::from_millis(100)).await;
        record.end_at(Some(began + Duration::from_millis(60)));
        record.begin(Phase::Transfer);
        tokio::time::advance(Duration::from_millis(5)).await;
        let total = record.finish();
        let timings = record.timings;
        assert!((timings.processing - 0.060).abs() < 1e-9, "{timings:?}");
        assert!((timings.transfer - 0.045).abs() < 1e-9, "{timings:?}");
        let sum = timings.connect + timings.processing + timings.transfer;
        assert!((sum - total).abs() < 1e-9, "{sum} against {total}");

        for outside in [
            began - Duration::from_millis(1),
            Instant::now() + Duration::from_secs(1),
        ] {
            let mut record = ProbeRecord::start();
            record.begin(Phase::Processing);
            tokio::time::advance(Duration::from_millis(20)).await;
            record.end_at(Some(outside));
            assert!(
                (record.timings.processing - 0.020).abs() < 1e-9,
                "{:?}",
                record.timings
            );
        }
    }

    /// The name a type has in files, messages, metrics and worker keys is one: its line's.
    #[test]
    fn every_check_type_has_one_name() {
        for (check_type, name) in CheckType::ALL.iter().zip(TYPE_NAMES) {
            assert_eq!(check_type.as_str(), name);
            assert_eq!(serde_json::to_value(check_type).unwrap(), name);
            let back: CheckType = serde_json::from_value(name.into()).unwrap();
            assert_eq!(back, *check_type);
            assert_eq!(
                WORKER_KEYS[check_type.index()],
                format!("runner.workers.{name}")
            );
        }
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
