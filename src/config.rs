//! The configuration file: its shape, its defaults (all of them here, in one place), and its
//! validation. Loading never panics: every problem becomes a `ConfigError` that names the file,
//! and the line and column where the parser knows them.

use crate::checks::{CheckDefinitionError, CheckType};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The whole configuration file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// This agent's identity and its own HTTP endpoints.
    #[serde(default)]
    pub agent: AgentConfig,
    /// The message bus between the checker and the runners.
    #[serde(default)]
    pub bus: BusConfig,
    /// How the checker schedules.
    #[serde(default)]
    pub checker: CheckerConfig,
    /// How this agent runs probes.
    #[serde(default)]
    pub runner: RunnerConfig,
    /// The checks to schedule.
    #[serde(default)]
    pub checks: Vec<CheckConfig>,
}

/// `[agent]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// The name this agent puts in every result. Default: the host name.
    #[serde(default = "default_agent_id")]
    pub id: String,
    /// Address of the agent's own endpoints (`/metrics`, `/healthz`, `/readyz`, `/api/v1/checks`).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// How long in-flight probes may run on shutdown before they are abandoned.
    #[serde(default = "default_shutdown_grace", with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Protection of the agent's own endpoints.
    #[serde(default)]
    pub web: WebConfig,
}

/// `[agent.web]`: TLS and basic auth for `/metrics`, `/api` and `/-/reload`, the way
/// Prometheus exporters do it. `/healthz` and `/readyz` stay open for probes.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebConfig {
    /// PEM certificate (chain) to serve HTTPS with; goes with `tls_key_file`.
    #[serde(default)]
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of `tls_cert_file`.
    #[serde(default)]
    pub tls_key_file: Option<PathBuf>,
    /// User name to bcrypt hash (`htpasswd -nBC 10 user`). Empty: no authentication.
    #[serde(default)]
    pub basic_auth_users: BTreeMap<String, String>,
    /// Serve `POST /-/reload`. SIGHUP reloads either way.
    #[serde(default = "default_true")]
    pub reload_endpoint: bool,
}

/// `[bus]`
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BusConfig {
    /// Which bus carries check requests and results.
    #[serde(default)]
    pub kind: BusKind,
    /// The NATS connection; required when `kind = "nats"`.
    #[serde(default)]
    pub nats: Option<NatsConfig>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BusKind {
    /// In memory, inside this process: no broker needed.
    #[default]
    Embedded,
    /// A NATS server: a checker and any number of runners in separate processes.
    Nats,
}

/// `[bus.nats]`. Secrets are named by file, never written in the config itself.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsConfig {
    /// Server URL, or a list of them (`nats://host:4222`, `tls://host:4222`).
    pub url: OneOrMany,
    /// First token of every subject bastion uses.
    #[serde(default = "default_subject_prefix")]
    pub subject_prefix: String,
    /// File holding the server's auth token.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// User name; goes with `password_file`.
    #[serde(default)]
    pub user: Option<String>,
    /// File holding the user's password.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// A NATS `.creds` file (JWT and nkey seed).
    #[serde(default)]
    pub creds_file: Option<PathBuf>,
    /// File holding an nkey seed (`SU...`).
    #[serde(default)]
    pub nkey_seed_file: Option<PathBuf>,
    /// TLS to the server: a CA to trust, and a client certificate for mutual TLS.
    #[serde(default)]
    pub tls: Option<NatsTlsConfig>,
    /// Give up and exit when no server answers within this long at start-up. Default: keep
    /// trying forever (`--bus-connect-timeout` overrides it).
    #[serde(default, with = "humantime_serde")]
    pub connect_timeout: Option<Duration>,
    /// Publish results to the JetStream stream `BASTION_RESULTS`, acknowledged and retried.
    #[serde(default)]
    pub results_stream: bool,
    /// How long the results stream keeps a result.
    #[serde(default = "default_results_max_age", with = "humantime_serde")]
    pub results_max_age: Duration,
    /// Results waiting for the stream's acknowledgement at most; beyond it they are dropped
    /// and counted.
    #[serde(default = "default_results_buffer")]
    pub results_buffer: usize,
}

/// `[bus.nats.tls]`
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsTlsConfig {
    /// PEM file of the CA that signed the server's certificate. Default: the system roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate, for servers that verify clients; goes with `key_file`.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file`.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
}

/// A value that may be written once or as a list.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn to_vec(&self) -> Vec<String> {
        match self {
            OneOrMany::One(one) => vec![one.clone()],
            OneOrMany::Many(many) => many.clone(),
        }
    }
}

/// `[checker]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckerConfig {
    /// Let several checkers run at once; one holds a lease in NATS and schedules, the others
    /// wait to take over. Needs `bus.kind = "nats"` with JetStream.
    #[serde(default)]
    pub ha: bool,
    /// How long the lease lasts unless renewed; it is renewed every third of it.
    #[serde(default = "default_lease_ttl", with = "humantime_serde")]
    pub lease_ttl: Duration,
    /// The JetStream key-value bucket holding the lease.
    #[serde(default = "default_lease_bucket")]
    pub lease_bucket: String,
}

/// `[runner]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunnerConfig {
    /// The longest a task may wait for a free worker before it is cancelled, unrun.
    #[serde(default = "default_dispatch_deadline", with = "humantime_serde")]
    pub dispatch_deadline: Duration,
    /// How many bytes of a response body a probe reads at most.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Workers per check type: how many probes of that type run at once.
    #[serde(default)]
    pub workers: WorkersConfig,
    /// DNS servers (`ip` or `ip:port`) used to resolve targets. Empty: the system resolver.
    #[serde(default)]
    pub dns_servers: Vec<String>,
    /// How long a check's series (`bastion_check_duration_seconds`) stay after its last run
    /// here, and at least three of its intervals: a runner learns check names from the bus,
    /// so it forgets those that stop arriving.
    #[serde(default = "default_forget_checks_after", with = "humantime_serde")]
    pub forget_checks_after: Duration,
}

/// `[runner.workers]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkersConfig {
    /// Concurrent HTTP probes.
    #[serde(default = "default_workers")]
    pub http: usize,
    /// Concurrent TCP probes.
    #[serde(default = "default_workers")]
    pub tcp: usize,
    /// Concurrent DNS probes.
    #[serde(default = "default_workers")]
    pub dns: usize,
    /// Concurrent TLS certificate probes.
    #[serde(default = "default_workers")]
    pub tls: usize,
    /// Concurrent ICMP echo probes.
    #[serde(default = "default_workers")]
    pub icmp: usize,
    /// Concurrent gRPC health probes.
    #[serde(default = "default_workers")]
    pub grpc: usize,
}

impl WorkersConfig {
    pub fn for_type(&self, check_type: CheckType) -> usize {
        match check_type {
            CheckType::Http => self.http,
            CheckType::Tcp => self.tcp,
            CheckType::Dns => self.dns,
            CheckType::Tls => self.tls,
            CheckType::Icmp => self.icmp,
            CheckType::Grpc => self.grpc,
        }
    }
}

/// One `[[checks]]` entry. This is also the check definition every `CheckRequest` carries, so a
/// runner needs no configuration of its own to run it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckConfig {
    /// Unique name, `[a-z0-9_-]+`.
    pub name: String,
    /// How often the check runs; at least 1s.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// How long one probe may take. Default: 10s, or nine tenths of the interval when that is less.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout: Option<Duration>,
    /// Addresses to probe (`ip` or `ip:port`) instead of every address the host resolves to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub instances: Vec<String>,
    /// What a response must satisfy to pass. None: a 2xx status passes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub assertions: Vec<AssertionConfig>,
    /// Failing instances that make the check fail; fewer (but some) is a warning. Default: 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_failing_count: Option<usize>,
    /// How long the check must keep failing before it is FAIL, and keep passing before it is
    /// OK again. Default: 90s.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub min_failing_time: Option<Duration>,
    /// The type and its own settings.
    #[serde(flatten)]
    pub spec: CheckSpec,
}

impl CheckConfig {
    /// The probe timeout, with its default applied.
    pub fn timeout(&self) -> Duration {
        self.timeout
            .unwrap_or_else(|| DEFAULT_TIMEOUT.min(self.interval.mul_f64(0.9)))
    }

    pub fn check_type(&self) -> CheckType {
        self.spec.check_type()
    }

    /// The state machine's thresholds, with their defaults applied.
    pub fn state_policy(&self) -> crate::state::StatePolicy {
        crate::state::StatePolicy {
            min_failing_count: self.min_failing_count.unwrap_or(1),
            min_failing_time: self.min_failing_time.unwrap_or(DEFAULT_MIN_FAILING_TIME),
        }
    }
}

/// The type-specific part of a check, chosen by its `type` key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum CheckSpec {
    Http(HttpSpec),
    Tcp(TcpSpec),
    Dns(DnsSpec),
    Tls(TlsSpec),
    Icmp(IcmpSpec),
    Grpc(GrpcSpec),
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
        }
    }
}

/// Settings of a `type = "http"` check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSpec {
    /// `http://` or `https://` URL. Its host is resolved, and sent as Host and TLS SNI.
    pub url: String,
    /// Request method. Default: GET.
    #[serde(default = "default_method")]
    pub method: String,
    /// Extra request headers.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Request body.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub body: String,
    /// Follow up to 10 redirects. Default: false, so a 3xx is reported as it is.
    #[serde(default)]
    pub follow_redirects: bool,
    /// TLS verification settings for https URLs.
    #[serde(default)]
    pub tls: TlsSettings,
}

/// `tls = { ... }` of an HTTP check.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    /// Accept any certificate. For tests and broken internal services only.
    #[serde(default)]
    pub insecure_skip_verify: bool,
    /// PEM file of CA certificates to trust instead of the system's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
}

/// Settings of a `type = "tcp"` check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpSpec {
    /// `host:port` (`[v6]:port`). The host is resolved unless instances are listed.
    pub address: String,
    /// Speak TLS over the connection before the steps. Default: false.
    #[serde(default)]
    pub tls: bool,
    /// TLS server name (SNI and verification). Default: the address's host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// PEM file of CA certificates to trust instead of the system's (with `tls`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Accept any certificate chain (with `tls`). Default: false.
    #[serde(default)]
    pub insecure_skip_verify: bool,
    /// What to send and what to expect back, in order. Default: none (connecting is enough).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<TcpStep>,
}

/// One `[[checks.steps]]` entry of a TCP check: exactly one of `send` and `expect`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpStep {
    /// Bytes to write, as text (escapes such as `\r\n` are TOML's own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send: Option<String>,
    /// A regex (Rust syntax) that the bytes read since the last match must match; reading
    /// stops at the first match, when the peer closes, or at `runner.max_body_bytes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect: Option<String>,
}

/// Settings of a `type = "dns"` check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsSpec {
    /// The name to ask for.
    pub query: String,
    /// A, AAAA, CNAME, MX, TXT, NS, SOA, SRV, PTR or CAA. Default: A.
    #[serde(default)]
    pub record_type: DnsRecordType,
    /// The server to ask, `host`, `ip`, `host:port` or `ip:port` (port 53 by default); a host
    /// name is resolved and each address is an instance. Default: the name servers of
    /// /etc/resolv.conf, each an instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    /// `udp` or `tcp`. Default: udp.
    #[serde(default)]
    pub transport: DnsTransport,
    /// Ask the server to recurse (the RD flag). Default: true.
    #[serde(default = "default_true")]
    pub recursion_desired: bool,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum DnsRecordType {
    #[default]
    A,
    Aaaa,
    Cname,
    Mx,
    Txt,
    Ns,
    Soa,
    Srv,
    Ptr,
    Caa,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DnsTransport {
    #[default]
    Udp,
    Tcp,
}

/// Settings of a `type = "tls"` check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSpec {
    /// `host:port` (`[v6]:port`). The host is resolved unless instances are listed.
    pub address: String,
    /// The name sent as SNI and verified against the certificate. Default: the address's host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// PEM file of CA certificates to trust instead of the system's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
}

/// Settings of a `type = "icmp"` check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IcmpSpec {
    /// Host name or IP to ping. A name is resolved and each address is an instance.
    pub host: String,
    /// Echo requests sent per probe, 1 to 100. Default: 3.
    #[serde(default = "default_icmp_count")]
    pub count: u16,
    /// Time between two echo requests. Default: 100ms.
    #[serde(default = "default_packet_interval", with = "humantime_serde")]
    pub packet_interval: Duration,
    /// Bytes of payload per echo request, 0 to 65000. Default: 56.
    #[serde(default = "default_payload_size")]
    pub payload_size: u16,
    /// 4 or 6: probe only the addresses of that family. Default: every address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_version: Option<u8>,
}

/// Settings of a `type = "grpc"` check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcSpec {
    /// `host:port` (`[v6]:port`). The host is resolved unless instances are listed.
    pub address: String,
    /// The service name asked about; "" asks about the server as a whole. Default: "".
    #[serde(default)]
    pub service: String,
    /// Call over TLS (h2 by ALPN). Default: false (h2c, HTTP/2 without TLS).
    #[serde(default)]
    pub tls: bool,
    /// TLS server name (SNI, verification, :authority). Default: the address's host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// PEM file of CA certificates to trust instead of the system's (with `tls`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Accept any certificate chain (with `tls`). Default: false.
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

/// One `[[checks.assertions]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssertionConfig {
    /// What to look at: code, header, body, json or latency.
    pub key: AssertionKey,
    /// The header name for `header`, the RFC 9535 path for `json`; empty otherwise.
    #[serde(default)]
    pub value: String,
    /// How the actual value must relate to the operand.
    pub relationship: Relationship,
    /// The expected value. A humantime duration for `latency`.
    #[serde(default)]
    pub operand: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AssertionKey {
    Code,
    Header,
    Body,
    Json,
    Latency,
    /// tcp: whether the connection (and TLS, when on) was made.
    Connected,
    /// dns: the response code (NOERROR, NXDOMAIN, SERVFAIL, ...).
    Rcode,
    /// dns: every answer record in presentation form, one per line.
    Answer,
    /// dns: how many answer records came back.
    AnswerCount,
    /// tls: time left before the earliest not-after of the chain.
    CertExpiry,
    /// tls: the leaf certificate's issuer.
    Issuer,
    /// tls: the leaf certificate's subject.
    Subject,
    /// tls: the leaf certificate's subject alternative names, one per line.
    San,
    /// tls: the negotiated version, e.g. TLSv1.3.
    TlsVersion,
    /// tls: whether the chain verified (true or false).
    ChainValid,
    /// icmp: the percentage of echo requests left unanswered.
    Loss,
    /// icmp: the mean round-trip time of the replies.
    RttAvg,
    /// icmp: the longest round-trip time of the replies.
    RttMax,
    /// grpc: the serving status (SERVING, NOT_SERVING, UNKNOWN, SERVICE_UNKNOWN).
    Status,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Relationship {
    Equal,
    NotEqual,
    Empty,
    NotEmpty,
    Contain,
    NotContain,
    RegExp,
    GreaterThan,
    LessThan,
}

// Every default, in one place.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_MIN_FAILING_TIME: Duration = Duration::from_secs(90);
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// `runner.forget_checks_after` unless configured.
pub const DEFAULT_FORGET_CHECKS_AFTER: Duration = Duration::from_secs(600);
/// Larger bodies would let one check hold this much memory per worker.
pub const MAX_BODY_BYTES_LIMIT: usize = 64 * 1024 * 1024;

fn default_agent_id() -> String {
    // The kernel's host name; the environment as a fallback for unusual sandboxes.
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|name| name.trim().to_string())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "bastion".to_string())
}
fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9464))
}
fn default_shutdown_grace() -> Duration {
    Duration::from_secs(10)
}
fn default_dispatch_deadline() -> Duration {
    Duration::from_secs(30)
}
fn default_forget_checks_after() -> Duration {
    DEFAULT_FORGET_CHECKS_AFTER
}
fn default_max_body_bytes() -> usize {
    128 * 1024
}
fn default_workers() -> usize {
    10
}
fn default_true() -> bool {
    true
}
fn default_subject_prefix() -> String {
    "bastion".to_string()
}
fn default_results_max_age() -> Duration {
    Duration::from_secs(24 * 3600)
}
fn default_results_buffer() -> usize {
    1024
}
fn default_lease_ttl() -> Duration {
    Duration::from_secs(10)
}
fn default_lease_bucket() -> String {
    "bastion_checker".to_string()
}
fn default_method() -> String {
    "GET".to_string()
}
fn default_icmp_count() -> u16 {
    3
}
fn default_packet_interval() -> Duration {
    Duration::from_millis(100)
}
fn default_payload_size() -> u16 {
    56
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            id: default_agent_id(),
            listen: default_listen(),
            shutdown_grace: default_shutdown_grace(),
            web: WebConfig::default(),
        }
    }
}
impl Default for WebConfig {
    fn default() -> Self {
        WebConfig {
            tls_cert_file: None,
            tls_key_file: None,
            basic_auth_users: BTreeMap::new(),
            reload_endpoint: true,
        }
    }
}
impl Default for CheckerConfig {
    fn default() -> Self {
        CheckerConfig {
            ha: false,
            lease_ttl: default_lease_ttl(),
            lease_bucket: default_lease_bucket(),
        }
    }
}
impl Default for RunnerConfig {
    fn default() -> Self {
        RunnerConfig {
            dispatch_deadline: default_dispatch_deadline(),
            max_body_bytes: default_max_body_bytes(),
            workers: WorkersConfig::default(),
            dns_servers: Vec::new(),
            forget_checks_after: default_forget_checks_after(),
        }
    }
}
impl Default for WorkersConfig {
    fn default() -> Self {
        WorkersConfig {
            http: default_workers(),
            tcp: default_workers(),
            dns: default_workers(),
            tls: default_workers(),
            icmp: default_workers(),
            grpc: default_workers(),
        }
    }
}

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {message}")]
    Syntax {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{path}: {message}")]
    SyntaxNoLocation { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// Which parser reads a file, chosen by its extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Toml,
    Yaml,
}

impl Format {
    pub fn for_path(path: &Path) -> Format {
        match path.extension().and_then(|ext| ext.to_str()) {
            Some(ext) if ext.eq_ignore_ascii_case("yaml") || ext.eq_ignore_ascii_case("yml") => {
                Format::Yaml
            }
            _ => Format::Toml,
        }
    }
}

impl Config {
    /// Reads, parses and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text, Format::for_path(path), path)
    }

    /// Parses and validates `text`; `path` only names the source in errors.
    pub fn parse(text: &str, format: Format, path: &Path) -> Result<Config, ConfigError> {
        let config: Config = match format {
            Format::Toml => toml::from_str(text).map_err(|error| toml_error(text, path, &error))?,
            Format::Yaml => {
                serde_saphyr::from_str(text).map_err(|error| yaml_error(path, &error))?
            }
        };
        config.validate().map_err(|message| ConfigError::Invalid {
            path: path.to_path_buf(),
            message,
        })?;
        Ok(config)
    }

    /// Checks what the types cannot: ranges, uniqueness, and that every check compiles.
    pub fn validate(&self) -> Result<(), String> {
        if self.agent.id.trim().is_empty() {
            return Err("agent.id must not be empty".to_string());
        }
        if self.runner.dispatch_deadline.is_zero() {
            return Err("runner.dispatch_deadline must be longer than 0s".to_string());
        }
        if self.runner.forget_checks_after.is_zero() {
            return Err("runner.forget_checks_after must be longer than 0s".to_string());
        }
        if self.runner.max_body_bytes > MAX_BODY_BYTES_LIMIT {
            return Err(format!(
                "runner.max_body_bytes is {}; the most allowed is {MAX_BODY_BYTES_LIMIT}",
                self.runner.max_body_bytes
            ));
        }
        self.validate_bus()?;
        self.validate_web()?;
        for server in &self.runner.dns_servers {
            crate::resolve::parse_dns_server(server)
                .map_err(|error| format!("runner.dns_servers: {error}"))?;
        }
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for (index, check) in self.checks.iter().enumerate() {
            if let Some(first) = seen.insert(check.name.as_str(), index) {
                return Err(format!(
                    "check name `{}` is used twice (checks #{} and #{}); names must be unique",
                    check.name,
                    first + 1,
                    index + 1
                ));
            }
            if check.min_failing_count == Some(0) {
                return Err(format!(
                    "check `{}`: min_failing_count must be at least 1",
                    check.name
                ));
            }
            crate::checks::CompiledCheck::compile(check).map_err(|error| match error {
                CheckDefinitionError::Name(_) => format!("check #{}: {error}", index + 1),
                _ => format!("check `{}`: {error}", check.name),
            })?;
            let check_type = check.check_type();
            if self.runner.workers.for_type(check_type) == 0 {
                return Err(format!(
                    "check `{}` is of type {check_type}, but runner.workers.{check_type} is 0; \
                     give that type at least one worker",
                    check.name
                ));
            }
        }
        // ICMP needs a socket this process may open; find out now, not at the first probe.
        if let Some(check) = self
            .checks
            .iter()
            .find(|check| check.check_type() == CheckType::Icmp)
        {
            crate::checks::icmp::ensure_sockets()
                .map_err(|error| format!("check `{}`: {error}", check.name))?;
        }
        Ok(())
    }
}

impl Config {
    /// The subject prefix on the configured bus.
    pub fn subject_prefix(&self) -> &str {
        match &self.bus.nats {
            Some(nats) if self.bus.kind == BusKind::Nats => &nats.subject_prefix,
            _ => "bastion",
        }
    }

    fn validate_web(&self) -> Result<(), String> {
        let web = &self.agent.web;
        match (&web.tls_cert_file, &web.tls_key_file) {
            (Some(cert), Some(key)) => {
                for (what, path) in [("tls_cert_file", cert), ("tls_key_file", key)] {
                    if let Err(error) = std::fs::metadata(path) {
                        return Err(format!("agent.web.{what} {}: {error}", path.display()));
                    }
                }
            }
            (None, None) => {}
            _ => {
                return Err(
                    "agent.web.tls_cert_file and tls_key_file go together; set both or neither"
                        .to_string(),
                )
            }
        }
        for (user, hash) in &web.basic_auth_users {
            if user.is_empty() || user.contains(':') {
                return Err(format!(
                    "agent.web.basic_auth_users: user name `{user}` must be non-empty and without `:`"
                ));
            }
            crate::http::auth::check_hash(hash)
                .map_err(|error| format!("agent.web.basic_auth_users.{user}: {error}"))?;
        }
        Ok(())
    }

    fn validate_bus(&self) -> Result<(), String> {
        let nats = match (self.bus.kind, &self.bus.nats) {
            (BusKind::Embedded, None) => {
                if self.checker.ha {
                    return Err("checker.ha needs a shared bus: set [bus] kind = \"nats\" and [bus.nats] url".to_string());
                }
                return Ok(());
            }
            (BusKind::Embedded, Some(_)) => {
                return Err("[bus.nats] is set but bus.kind is \"embedded\"; set kind = \"nats\" to use it, or remove [bus.nats]".to_string());
            }
            (BusKind::Nats, None) => {
                return Err(
                    "bus.kind is \"nats\" but [bus.nats] is missing; give at least its url"
                        .to_string(),
                );
            }
            (BusKind::Nats, Some(nats)) => nats,
        };
        let urls = nats.url.to_vec();
        if urls.is_empty() {
            return Err("bus.nats.url is an empty list; give at least one server".to_string());
        }
        for url in &urls {
            crate::bus::nats::check_url(url).map_err(|error| format!("bus.nats.url: {error}"))?;
        }
        if !crate::bus::valid_subject(&nats.subject_prefix, false) {
            return Err(format!(
                "bus.nats.subject_prefix `{}` is not a valid subject: use dot-separated tokens without spaces or wildcards",
                nats.subject_prefix
            ));
        }
        let methods = [
            nats.token_file.is_some(),
            nats.user.is_some() || nats.password_file.is_some(),
            nats.creds_file.is_some(),
            nats.nkey_seed_file.is_some(),
        ];
        if methods.iter().filter(|set| **set).count() > 1 {
            return Err("bus.nats sets more than one way to authenticate; use at most one of token_file, user + password_file, creds_file and nkey_seed_file".to_string());
        }
        if nats.user.is_some() != nats.password_file.is_some() {
            return Err(
                "bus.nats.user and bus.nats.password_file go together; set both or neither"
                    .to_string(),
            );
        }
        if let Some(tls) = &nats.tls {
            if tls.cert_file.is_some() != tls.key_file.is_some() {
                return Err(
                    "bus.nats.tls.cert_file and key_file go together; set both or neither"
                        .to_string(),
                );
            }
        }
        if nats.results_buffer == 0 {
            return Err("bus.nats.results_buffer must be at least 1".to_string());
        }
        if nats.results_max_age < Duration::from_secs(1) {
            return Err("bus.nats.results_max_age must be at least 1s".to_string());
        }
        if self.checker.lease_ttl < Duration::from_secs(3) {
            return Err(
                "checker.lease_ttl must be at least 3s: it is renewed every third of it"
                    .to_string(),
            );
        }
        if !crate::bus::nats::valid_bucket_name(&self.checker.lease_bucket) {
            return Err(format!(
                "checker.lease_bucket `{}` is not a valid bucket name: use letters, digits, `-` and `_`",
                self.checker.lease_bucket
            ));
        }
        Ok(())
    }
}

fn toml_error(text: &str, path: &Path, error: &toml::de::Error) -> ConfigError {
    let message = error.message().trim_end().to_string();
    match error.span() {
        Some(span) => {
            let offset = unknown_key_offset(text, span.start, &message).unwrap_or(span.start);
            let (line, column) = line_and_column(text, offset);
            ConfigError::Syntax {
                path: path.to_path_buf(),
                line,
                column,
                message,
            }
        }
        None => ConfigError::SyntaxNoLocation {
            path: path.to_path_buf(),
            message,
        },
    }
}

fn yaml_error(path: &Path, error: &serde_saphyr::Error) -> ConfigError {
    let message = error.to_string();
    // The message may carry a rendered snippet; its first line is the explanation.
    let mut message = message.lines().next().unwrap_or_default().trim();
    message = message
        .strip_prefix("error:")
        .unwrap_or(message)
        .trim_start();
    // serde-saphyr starts with "line L column C: "; the location is shown once, in front.
    if let Some(rest) = message.strip_prefix("line ") {
        if let Some((_, after)) = rest.split_once(": ") {
            message = after;
        }
    }
    let message = message.to_string();
    match error.location() {
        Some(location) if location.line() > 0 => ConfigError::Syntax {
            path: path.to_path_buf(),
            line: usize::try_from(location.line()).unwrap_or(usize::MAX),
            column: usize::try_from(location.column()).unwrap_or(usize::MAX),
            message,
        },
        _ => ConfigError::SyntaxNoLocation {
            path: path.to_path_buf(),
            message,
        },
    }
}

/// Where an unknown key really stands. A check's type-specific keys are read through
/// `serde(flatten)`, which hides positions: the parser then blames the check's whole table.
/// This finds the named key inside the table that starts at `blamed` (or in a table nested in
/// it, such as `tls` or a TCP step), so the error points at the key itself.
fn unknown_key_offset(text: &str, blamed: usize, message: &str) -> Option<usize> {
    let name = message.strip_prefix("unknown field `")?.split('`').next()?;
    let document = toml::de::DeTable::parse(text).ok()?;
    let checks = document.get_ref().get("checks")?;
    let toml::de::DeValue::Array(checks) = checks.get_ref() else {
        return None;
    };
    let check = checks.iter().find(|check| check.span().contains(&blamed))?;
    let toml::de::DeValue::Table(table) = check.get_ref() else {
        return None;
    };
    // Tables nested in the check (`tls`), and tables in its arrays (`[[checks.steps]]`).
    let nested = table.values().flat_map(|value| match value.get_ref() {
        toml::de::DeValue::Table(inner) => vec![inner],
        toml::de::DeValue::Array(items) => items
            .iter()
            .filter_map(|item| match item.get_ref() {
                toml::de::DeValue::Table(inner) => Some(inner),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    });
    std::iter::once(table)
        .chain(nested)
        .flat_map(|table| table.keys())
        .find(|key| key.get_ref() == name)
        .map(|key| key.span().start)
}

/// 1-based line and column (in characters) of a byte offset.
fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |newline| newline + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_and_column_counts_from_one() {
        let text = "a = 1\nbb = 2\n";
        assert_eq!(line_and_column(text, 0), (1, 1));
        assert_eq!(line_and_column(text, 6), (2, 1));
        assert_eq!(line_and_column(text, 9), (2, 4));
    }

    #[test]
    fn unknown_keys_inside_a_check_point_at_the_key() {
        let cases = [
            (
                "[agent]\nid = \"a\"\n\n[[checks]]\nname = \"web\"\ntype = \"http\"\ninterval = \"5s\"\nurl = \"http://x/\"\ncolour = \"red\"\n",
                (9, 1),
                "unknown field `colour`",
            ),
            (
                "[[checks]]\nname = \"a\"\ntype = \"http\"\ninterval = \"5s\"\nurl = \"http://x/\"\n\n[[checks]]\nname = \"b\"\ntype = \"http\"\ninterval = \"5s\"\nurl = \"http://x/\"\ntls = { insecure_skip_verify = true, ca_fil = \"x\" }\n",
                (12, 38),
                "unknown field `ca_fil`",
            ),
            (
                "[[checks]]\nname = \"t\"\ntype = \"tcp\"\ninterval = \"5s\"\naddress = \"h:1\"\n[[checks.steps]]\nsend = \"x\"\n[[checks.steps]]\nexpct = \"y\"\n",
                (9, 1),
                "unknown field `expct`",
            ),
        ];
        for (text, (line, column), message) in cases {
            match Config::parse(text, Format::Toml, Path::new("c.toml")) {
                Err(ConfigError::Syntax {
                    line: l,
                    column: c,
                    message: m,
                    ..
                }) => {
                    assert_eq!((l, c), (line, column), "{m}");
                    assert!(m.starts_with(message), "{m}");
                }
                other => panic!("expected a located error, got {other:?}"),
            }
        }
    }

    #[test]
    fn every_check_type_round_trips_through_json() {
        let toml = r#"
            [[checks]]
            name = "tcp"
            type = "tcp"
            interval = "10s"
            address = "db.internal:5432"
            tls = true
            server_name = "db"
            insecure_skip_verify = true
            [[checks.steps]]
            send = "PING\r\n"
            [[checks.steps]]
            expect = "PONG"
            [[checks]]
            name = "dns"
            type = "dns"
            interval = "10s"
            query = "svc.test"
            record_type = "AAAA"
            server = "10.0.0.53:5353"
            transport = "tcp"
            recursion_desired = false
            [[checks]]
            name = "tls"
            type = "tls"
            interval = "10s"
            address = "svc.test:443"
            server_name = "svc.test"
            [[checks]]
            name = "icmp"
            type = "icmp"
            interval = "10s"
            host = "10.0.0.1"
            count = 5
            packet_interval = "250ms"
            payload_size = 100
            ip_version = 4
            [[checks]]
            name = "grpc"
            type = "grpc"
            interval = "10s"
            address = "grpc.internal:50051"
            service = "my.Service"
            [[checks.assertions]]
            key = "status"
            relationship = "equal"
            operand = "SERVING"
        "#;
        #[derive(Deserialize)]
        struct Checks {
            checks: Vec<CheckConfig>,
        }
        let checks: Checks = toml::from_str(toml).unwrap();
        let types: Vec<CheckType> = checks.checks.iter().map(CheckConfig::check_type).collect();
        assert_eq!(types, CheckType::ALL[1..]);
        for check in checks.checks {
            let json = serde_json::to_string(&check).unwrap();
            let back: CheckConfig = serde_json::from_str(&json).unwrap();
            assert_eq!(back, check, "{json}");
        }
    }

    #[test]
    fn timeout_default_stays_below_short_intervals() {
        let toml = r#"
            name = "web"
            type = "http"
            interval = "5s"
            url = "http://127.0.0.1/"
        "#;
        let check: CheckConfig = toml::from_str(toml).unwrap();
        assert_eq!(check.timeout(), Duration::from_millis(4500));
        let long = CheckConfig {
            interval: Duration::from_secs(60),
            ..check
        };
        assert_eq!(long.timeout(), Duration::from_secs(10));
    }

    #[test]
    fn check_definition_round_trips_through_json() {
        let toml = r#"
            name = "web"
            type = "http"
            interval = "10s"
            timeout = "2s"
            url = "https://svc.internal:8443/health"
            headers = { Accept = "application/json" }
            tls = { insecure_skip_verify = true }
            instances = ["127.0.0.2"]
            [[assertions]]
            key = "code"
            relationship = "equal"
            operand = "200"
        "#;
        let check: CheckConfig = toml::from_str(toml).unwrap();
        let json = serde_json::to_string(&check).unwrap();
        let back: CheckConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(back, check);
        assert!(json.contains(r#""type":"http""#), "{json}");
    }
}
