//! The configuration file's shape: serde structs with `deny_unknown_fields`, a doc comment on
//! every field (it doubles as the reference in docs/configuration.md). Defaults live in
//! `defaults.rs`; this file never decides a value itself.

use super::defaults::*;
use super::probe::{
    BasicAuth, Compression, HttpSecrets, IpProtocol, OAuth2Config, TlsOption, TlsSettings,
};
use crate::model::CheckType;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// The whole configuration file.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
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
    /// Receivers of failure and recovery notifications.
    #[serde(default)]
    pub notifiers: Vec<super::notify::NotifierConfig>,
    /// Windows during which notifications are held back.
    #[serde(default)]
    pub maintenance: Vec<super::notify::MaintenanceConfig>,
    /// Where the history of runs, state changes and incidents is kept.
    #[serde(default)]
    pub history: HistoryConfig,
    /// The modules of `agent.blackbox_modules`, read at every load; never written in a config.
    #[serde(skip)]
    pub blackbox: Option<std::sync::Arc<super::blackbox::BlackboxModules>>,
}

/// `[history]`: every run's outcome for a recent window, rollups beyond it, state changes and
/// incidents; in SQLite (`path`) unless `url` names a PostgreSQL database.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HistoryConfig {
    /// Keep history. Only agents that record results keep it (roles `all` and `checker`).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// The SQLite database file. Default: `history.db` in `$STATE_DIRECTORY` (systemd's
    /// `StateDirectory=`), else in `/var/lib/bastion`. Its directory must exist and be
    /// writable when a scheduling agent starts, or it refuses to (`validate::history`).
    #[serde(default = "default_history_path")]
    #[schemars(transform = super::json_schema::machine_dependent)]
    pub path: PathBuf,
    /// A PostgreSQL URL (`postgres://user@host:5432/db`) to keep history there instead, shared
    /// by HA checkers. Put no password in it: use `password_file`.
    #[serde(default)]
    pub url: Option<String>,
    /// File holding the PostgreSQL password.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// How often buffered results are written, in one transaction: a crash loses at most
    /// this much history (plus what waits while the database cannot be written).
    #[serde(default = "default_history_flush_interval", with = "humantime_serde")]
    #[schemars(with = "super::json_schema::Humantime")]
    pub flush_interval: Duration,
    /// Records (runs and state changes) waiting to be written at most; beyond it new ones
    /// are dropped and counted in `bastion_history_dropped_total`.
    #[serde(default = "default_history_buffer")]
    pub buffer: usize,
    /// How long every run's outcome and phase latencies are kept.
    #[serde(default = "default_history_raw_retention", with = "humantime_serde")]
    #[schemars(with = "super::json_schema::Humantime")]
    pub raw_retention: Duration,
    /// How long the hourly rollups (runs, failures, latency buckets per phase) are kept.
    #[serde(default = "default_history_hourly_retention", with = "humantime_serde")]
    #[schemars(with = "super::json_schema::Humantime")]
    pub hourly_retention: Duration,
    /// How long the daily rollups are kept.
    #[serde(default = "default_history_daily_retention", with = "humantime_serde")]
    #[schemars(with = "super::json_schema::Humantime")]
    pub daily_retention: Duration,
    /// How long state changes and incidents are kept.
    #[serde(default = "default_history_event_retention", with = "humantime_serde")]
    #[schemars(with = "super::json_schema::Humantime")]
    pub event_retention: Duration,
}

/// `[agent]`
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// The name this agent puts in every result. Default: the host name.
    #[serde(default = "default_agent_id")]
    #[schemars(transform = super::json_schema::machine_dependent)]
    pub id: String,
    /// Address of the agent's own endpoints (`/metrics`, `/healthz`, `/readyz`, `/api/v1/checks`).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// How long in-flight probes may run on shutdown before they are abandoned.
    #[serde(default = "default_shutdown_grace", with = "humantime_serde")]
    #[schemars(with = "super::json_schema::Humantime")]
    pub shutdown_grace: Duration,
    /// Protection of the agent's own endpoints.
    #[serde(default)]
    pub web: WebConfig,
    /// The URL people reach this agent's API at, for links in notifications. Default:
    /// `http://` and `listen`.
    #[serde(default)]
    pub external_url: Option<String>,
    /// A blackbox_exporter module file (`blackbox.yml`) whose modules `GET /probe?target=…&module=…`
    /// runs, as blackbox_exporter would; read again at every reload. Default: none (`/probe`
    /// answers 404 for every module).
    #[serde(default)]
    pub blackbox_modules: Option<PathBuf>,
    /// How often the agent says it is alive on the bus. Checkers count a location as live
    /// while one of its runners was heard from within one and a half of these.
    #[serde(default = "default_heartbeat_interval", with = "humantime_serde")]
    #[schemars(with = "super::json_schema::Humantime")]
    pub heartbeat_interval: Duration,
}

/// `[agent.web]`: TLS and basic auth for `/metrics`, `/api` and `/-/reload`, the way
/// Prometheus exporters do it. `/healthz` and `/readyz` stay open for probes.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
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
    /// The status page at `/` and the badges: `private` (behind `basic_auth_users`, like the
    /// API), `public` (open to all, without targets, addresses, bodies or error messages) or
    /// `off`.
    #[serde(default)]
    pub status_page: StatusPageMode,
}

/// Who may see the status page and the badges.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum StatusPageMode {
    /// Served with the API's protection (basic auth when users are configured).
    #[default]
    Private,
    /// Served to anyone, showing states, uptime and latency only.
    Public,
    /// Not served.
    Off,
}

/// `[bus]`
#[derive(Debug, Clone, Default, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BusConfig {
    /// Which bus carries check requests and results.
    #[serde(default)]
    pub kind: BusKind,
    /// The NATS connection; required when `kind = "nats"`.
    #[serde(default)]
    pub nats: Option<NatsConfig>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum BusKind {
    /// In memory, inside this process: no broker needed.
    #[default]
    Embedded,
    /// A NATS server: a checker and any number of runners in separate processes.
    Nats,
}

/// `[bus.nats]`. Secrets are named by file, never written in the config itself.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
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
    #[schemars(with = "Option<super::json_schema::Humantime>")]
    pub connect_timeout: Option<Duration>,
    /// Publish results to the JetStream stream `BASTION_RESULTS`, acknowledged and retried.
    #[serde(default)]
    pub results_stream: bool,
    /// How long the results stream keeps a result.
    #[serde(default = "default_results_max_age", with = "humantime_serde")]
    #[schemars(with = "super::json_schema::Humantime")]
    pub results_max_age: Duration,
    /// Results waiting for the stream's acknowledgement at most; beyond it they are dropped
    /// and counted.
    #[serde(default = "default_results_buffer")]
    pub results_buffer: usize,
    /// JetStream replicas of the results stream and of the checker lease bucket: 1 for a
    /// single server, the cluster's size (3 or 5) for a clustered one.
    #[serde(default = "default_replicas")]
    pub replicas: usize,
}

/// `[bus.nats.tls]`
#[derive(Debug, Clone, Default, PartialEq, Deserialize, JsonSchema)]
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
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
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
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckerConfig {
    /// Let several checkers run at once; one holds a lease in NATS and schedules, the others
    /// wait to take over. Needs `bus.kind = "nats"` with JetStream.
    #[serde(default)]
    pub ha: bool,
    /// How long the lease lasts unless renewed; it is renewed every third of it.
    #[serde(default = "default_lease_ttl", with = "humantime_serde")]
    #[schemars(with = "super::json_schema::Humantime")]
    pub lease_ttl: Duration,
    /// The JetStream key-value bucket holding the lease.
    #[serde(default = "default_lease_bucket")]
    pub lease_bucket: String,
}

/// `[runner]`
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunnerConfig {
    /// The longest a task may wait for a free worker before it is cancelled, unrun.
    #[serde(default = "default_dispatch_deadline", with = "humantime_serde")]
    #[schemars(with = "super::json_schema::Humantime")]
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
    #[schemars(with = "super::json_schema::Humantime")]
    pub forget_checks_after: Duration,
    /// The most checks a runner (`--role runner`, which learns check names from the bus) keeps
    /// `bastion_check_duration_seconds` series for; a new name past it gets none (counted in
    /// `bastion_check_series_refused_total{reason="capacity"}`) until others expire. An agent
    /// that schedules (roles `all`, `checker`) keeps a series for every configured check.
    #[serde(default = "default_max_check_series")]
    pub max_check_series: usize,
    /// Where this runner probes from: it takes the runs of checks whose `locations` name it
    /// (and, as every runner does, the runs of checks without `locations`). Letters, digits,
    /// `-` and `_`.
    #[serde(default = "default_location")]
    pub location: String,
}

/// `[runner.workers]`
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
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
    /// Concurrent UDP probes.
    #[serde(default = "default_workers")]
    pub udp: usize,
    /// Concurrent WebSocket probes.
    #[serde(default = "default_workers")]
    pub websocket: usize,
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
            CheckType::Udp => self.udp,
            CheckType::Websocket => self.websocket,
        }
    }
}

/// `locations = ["*"]`: every location with a live runner.
pub const EVERY_LOCATION: &str = "*";

/// One `[[checks]]` entry. This is also the check definition every `CheckRequest` carries, so a
/// runner needs no configuration of its own to run it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CheckConfig {
    /// Unique name, `[a-z0-9_-]+`.
    pub name: String,
    /// A group to file the check under on the status page (`payments`, `edge`...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// How often the check runs; at least 1s.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "super::json_schema::Humantime")]
    pub interval: Duration,
    /// How long one probe may take. Default: 10s, or nine tenths of the interval when that is less.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "Option<super::json_schema::Humantime>")]
    pub timeout: Option<Duration>,
    /// Addresses to probe (`ip` or `ip:port`) instead of every address the host resolves to.
    #[schemars(extend("default" = []))]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub instances: Vec<String>,
    /// Where the instances come from instead: `{ file = "/etc/bastion/targets/web.json" }`
    /// (Prometheus file_sd, watched) or `{ srv = "_http._tcp.web.internal" }` (DNS SRV,
    /// resolved on the runner). Not together with `instances`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instances_from: Option<InstancesFrom>,
    /// Labels added to the check's `probe_*` series and to each response of its results
    /// (`{ team = "payments" }`): Prometheus label names, none of bastion's own.
    #[schemars(extend("default" = {}))]
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// What a response must satisfy to pass. None: a 2xx status passes.
    #[schemars(extend("default" = []))]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub assertions: Vec<AssertionConfig>,
    /// Failing instances that make the check fail; fewer (but some) is a warning. Default: 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = 1))]
    pub min_failing_count: Option<usize>,
    /// How long the check must keep failing before it is FAIL, and keep passing before it is
    /// OK again. Default: 90s.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "Option<super::json_schema::Humantime>")]
    #[schemars(extend("default" = humantime::format_duration(DEFAULT_MIN_FAILING_TIME).to_string()))]
    pub min_failing_time: Option<Duration>,
    /// Notifiers to tell when this check fails and recovers. Default: every notifier with
    /// `default = true`; `[]` for none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify: Option<Vec<String>>,
    /// States that notify: `fail`, and `warn` too if listed. Default: `["fail"]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = [super::notify::NotifyOn::Fail]))]
    pub notify_on: Option<Vec<super::notify::NotifyOn>>,
    /// Which addresses the host resolves to are instances: `ip4`, `ip6` or `any`. Listed
    /// `instances` are kept as they are. Default: `any`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = IpProtocol::default()))]
    pub ip_protocol: Option<IpProtocol>,
    /// With `ip_protocol`, take the other family's addresses when the host has none of the
    /// one asked for. Default: true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = true))]
    pub ip_protocol_fallback: Option<bool>,
    /// Where the check runs from: each named location (a `runner.location`) runs it on every
    /// tick and is judged on its own, or `["*"]` for every location with a live runner.
    /// Default: none, and any one runner takes each run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locations: Option<Vec<String>>,
    /// With `locations`: how many must see the check failing for it to fail; fewer (but
    /// some) is a warning. Default: 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = 1))]
    pub min_failing_locations: Option<usize>,
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

    /// Failing instances that make the check fail, with its default applied.
    pub fn min_failing_count(&self) -> usize {
        self.min_failing_count.unwrap_or(1)
    }

    /// Locations that must see the check failing for it to fail, with its default applied.
    pub fn min_failing_locations(&self) -> usize {
        self.min_failing_locations.unwrap_or(1)
    }

    /// Whether the check runs in every location with a live runner (`locations = ["*"]`).
    pub fn every_location(&self) -> bool {
        self.locations
            .as_deref()
            .is_some_and(|locations| locations.iter().any(|location| location == EVERY_LOCATION))
    }

    /// How long the check must keep failing (or passing) to change state, with its default.
    pub fn min_failing_time(&self) -> Duration {
        self.min_failing_time.unwrap_or(DEFAULT_MIN_FAILING_TIME)
    }

    /// The definition without what does not change what is probed or how a response is
    /// judged: where it is filed (`group`), its `labels`, who is told (`notify`, `notify_on`),
    /// how often it runs, its state thresholds, and the contents of its secret files (a
    /// rotated token or password is the same probe; the files' names still count). A reload
    /// that changes only those keeps the check's state and failure episode. Leaving the
    /// secrets out also keeps them out of `probe_fingerprint`, which is saved to disk.
    fn probed(&self) -> CheckConfig {
        let mut spec = self.spec.clone();
        if let CheckSpec::Http(http) = &mut spec {
            http.secrets = HttpSecrets::default();
        }
        CheckConfig {
            group: None,
            interval: Duration::ZERO,
            min_failing_count: None,
            // A threshold across locations, like the others: where it runs from is kept.
            min_failing_locations: None,
            min_failing_time: None,
            notify: None,
            notify_on: None,
            spec,
            labels: BTreeMap::new(),
            ..self.clone()
        }
    }

    /// Whether `other` probes the same thing the same way (see `probed`).
    pub fn same_probe(&self, other: &CheckConfig) -> bool {
        self.probed() == other.probed()
    }

    /// A short digest of what `same_probe` compares, saved with a check's state so that a
    /// check changed while the agent was down starts afresh.
    pub fn probe_fingerprint(&self) -> String {
        let text = serde_json::to_string(&self.probed()).unwrap_or_default();
        let digest = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
        digest.as_ref()[..12]
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect()
    }
}

/// Where a check's instances are discovered.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase", try_from = "InstancesFromTable")]
pub enum InstancesFrom {
    /// A Prometheus file_sd file (JSON, or YAML for `.yaml`/`.yml`): a list of
    /// `{ targets = [...], labels = {...} }`. The checker watches it and sends the current
    /// targets with each run.
    File(PathBuf),
    /// A DNS SRV name: each target and port it lists is an instance, resolved to addresses
    /// on the runner that probes.
    Srv(String),
}

/// `instances_from` as written: a table with one of its keys.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(extend("minProperties" = 1, "maxProperties" = 1))]
struct InstancesFromTable {
    /// A Prometheus file_sd file (JSON, or YAML for `.yaml`/`.yml`), watched by the checker.
    file: Option<PathBuf>,
    /// A DNS SRV name, resolved on the runner that probes.
    srv: Option<String>,
}

impl TryFrom<InstancesFromTable> for InstancesFrom {
    type Error = String;

    fn try_from(table: InstancesFromTable) -> Result<InstancesFrom, String> {
        match (table.file, table.srv) {
            (Some(file), None) => Ok(InstancesFrom::File(file)),
            (None, Some(srv)) => Ok(InstancesFrom::Srv(srv)),
            _ => Err("instances_from takes exactly one of `file` and `srv`: { file = \"/etc/bastion/targets/web.json\" } or { srv = \"_http._tcp.web.internal\" }".to_string()),
        }
    }
}

/// The type-specific part of a check, chosen by its `type` key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "lowercase")]
// A definition is made once per config load and shared behind an Arc: the size of its largest
// variant costs nothing per probe, and a box would only add an indirection to every match.
#[allow(clippy::large_enum_variant)]
pub enum CheckSpec {
    Http(HttpSpec),
    Tcp(TcpSpec),
    Dns(DnsSpec),
    Tls(TlsSpec),
    Icmp(IcmpSpec),
    Grpc(GrpcSpec),
    Udp(UdpSpec),
    Websocket(WebsocketSpec),
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
}

/// Settings of a `type = "http"` check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpSpec {
    /// `http://` or `https://` URL. Its host is resolved, and sent as Host and TLS SNI.
    pub url: String,
    /// Request method. Default: GET.
    #[serde(default = "default_method")]
    pub method: String,
    /// Extra request headers.
    #[schemars(extend("default" = {}))]
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Request body.
    #[schemars(extend("default" = ""))]
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub body: String,
    /// Follow up to 10 redirects. Default: false, so a 3xx is reported as it is.
    #[serde(default)]
    pub follow_redirects: bool,
    /// TLS settings for https URLs (`[checks.tls]`).
    #[schemars(extend("default" = {}))]
    #[serde(default, skip_serializing_if = "TlsSettings::is_default")]
    pub tls: TlsSettings,
    /// The local address the probe's connections leave from (`10.0.0.7`, `::1`). Default: the
    /// system's choice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_ip: Option<std::net::IpAddr>,
    /// Request headers whose values are read from files at load and reload, by header name
    /// (`{ Authorization = "/etc/bastion/token" }`): each file's first line.
    #[schemars(extend("default" = {}))]
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers_from_files: BTreeMap<String, PathBuf>,
    /// File whose content is the request body, read at load and reload; instead of `body`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_file: Option<PathBuf>,
    /// File holding a token sent as `Authorization: Bearer <token>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bearer_token_file: Option<PathBuf>,
    /// HTTP basic auth, the password read from a file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basic_auth: Option<BasicAuth>,
    /// OAuth2 client credentials: a token fetched (and cached) before the probe, sent as
    /// `Authorization: Bearer <token>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oauth2: Option<OAuth2Config>,
    /// An `http://host:port` proxy: https targets are reached through a CONNECT tunnel,
    /// http targets by forwarding. Default: none (connect directly).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_url: Option<String>,
    /// Hosts reached directly instead of through `proxy_url`: a name (and its subdomains),
    /// `.domain`, an IP, a CIDR block (matched against the instance), or `*`.
    #[schemars(extend("default" = []))]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub no_proxy: Vec<String>,
    /// Credentials for `proxy_url`, sent as `Proxy-Authorization: Basic`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_basic_auth: Option<BasicAuth>,
    /// Status codes that pass (`[200, 204, 404]`) instead of any 2xx; a status outside the
    /// list is an `http` error, whatever the assertions say. Default: any 2xx.
    #[schemars(extend("default" = []))]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub valid_status_codes: Vec<u16>,
    /// HTTP versions the final response may come over (`HTTP/1.0`, `HTTP/1.1`, `HTTP/2`);
    /// another is an `http` error. Default: any.
    #[schemars(extend("default" = []))]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub valid_http_versions: Vec<String>,
    /// Fail when the final response (after redirects) came over TLS. Default: false.
    #[schemars(extend("default" = false))]
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fail_if_ssl: bool,
    /// Fail when the final response (after redirects) did not come over TLS. Default: false.
    #[schemars(extend("default" = false))]
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fail_if_not_ssl: bool,
    /// Ask for this content coding (`gzip`, `deflate`, `br`, `zstd`) and decode the body
    /// before judging it, up to `runner.max_body_bytes` decoded. Default: none (the body is
    /// judged as it comes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression: Option<Compression>,
    /// Offer HTTP/2 by ALPN to https URLs. false: HTTP/1.1 only. Default: true.
    #[schemars(extend("default" = default_true()))]
    #[serde(default = "default_true", skip_serializing_if = "is_true")]
    pub enable_http2: bool,
    /// What the `*_file` keys held when the config was loaded; filled in by bastion, never
    /// written in a config file.
    #[serde(default, skip_serializing_if = "HttpSecrets::is_empty")]
    #[schemars(skip)]
    pub secrets: HttpSecrets,
}

/// Settings of a `type = "tcp"` check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TcpSpec {
    /// `host:port` (`[v6]:port`). The host is resolved unless instances are listed.
    pub address: String,
    /// Speak TLS over the connection before the steps: `true`, or a `[checks.tls]` table.
    /// Default: false.
    #[schemars(extend("default" = false))]
    #[serde(default, skip_serializing_if = "TlsOption::is_off")]
    pub tls: TlsOption,
    /// Older spelling of `tls.server_name`, still accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// Older spelling of `tls.ca_file`, still accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Older spelling of `tls.insecure_skip_verify`, still accepted.
    #[schemars(extend("default" = false))]
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure_skip_verify: bool,
    /// The local address the probe's connection leaves from. Default: the system's choice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_ip: Option<std::net::IpAddr>,
    /// What to send and what to expect back, in order. Default: none (connecting is enough).
    #[schemars(extend("default" = []))]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<TcpStep>,
    /// Ask for TLS in this protocol's plaintext first (`smtp`, `imap`, `pop3`, `ftp`,
    /// `postgres`, `ldap`); turns TLS on. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub starttls: Option<Starttls>,
}

/// One `[[checks.steps]]` entry of a TCP check: exactly one of `send` and `expect`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
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

/// Settings of a `type = "udp"` check: one datagram out, one reply expected.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UdpSpec {
    /// `host:port` (`[v6]:port`). The host is resolved unless instances are listed.
    pub address: String,
    /// The datagram to send, as text. Exactly one of `send` and `send_hex`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send: Option<String>,
    /// The datagram to send, as hex digits (`"deadbeef"`; spaces allowed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send_hex: Option<String>,
    /// A regex (Rust syntax) the reply must match. Default: any reply passes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect: Option<String>,
    /// The local address the probe's datagram leaves from. Default: the system's choice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_ip: Option<std::net::IpAddr>,
}

/// Settings of a `type = "websocket"` check: the upgrade, then optionally one message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WebsocketSpec {
    /// `ws://` or `wss://` URL. Its host is resolved, and sent as Host and TLS SNI.
    pub url: String,
    /// A text message to send once upgraded. Default: none (the upgrade is enough).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send: Option<String>,
    /// A regex (Rust syntax) the first message back must match; needs `send`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect: Option<String>,
    /// Extra headers of the upgrade request.
    #[schemars(extend("default" = {}))]
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// TLS settings for wss URLs (`[checks.tls]`).
    #[schemars(extend("default" = {}))]
    #[serde(default, skip_serializing_if = "TlsSettings::is_default")]
    pub tls: TlsSettings,
}

/// Settings of a `type = "dns"` check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
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
    /// `udp`, `tcp`, `tls` (DNS over TLS, RFC 7858: port 853 unless the server names one)
    /// or `https` (DNS over HTTPS, RFC 8484: a POST to `https_path` on port 443 unless the
    /// server names one), the certificate verified as `[checks.tls]` says. Default: udp.
    #[serde(default)]
    pub transport: DnsTransport,
    /// Ask the server to recurse (the RD flag). Default: true.
    #[serde(default = "default_true")]
    pub recursion_desired: bool,
    /// DNS over HTTPS: the path queries are POSTed to. Default: `/dns-query`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = "/dns-query"))]
    pub https_path: Option<String>,
    /// TLS settings for `transport = "tls"` and `"https"` (`[checks.tls]`).
    #[schemars(extend("default" = {}))]
    #[serde(default, skip_serializing_if = "TlsSettings::is_default")]
    pub tls: TlsSettings,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
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

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DnsTransport {
    #[default]
    Udp,
    Tcp,
    Tls,
    Https,
}

/// Settings of a `type = "tls"` check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TlsSpec {
    /// `host:port` (`[v6]:port`). The host is resolved unless instances are listed.
    pub address: String,
    /// TLS settings (`[checks.tls]`).
    #[schemars(extend("default" = {}))]
    #[serde(default, skip_serializing_if = "TlsSettings::is_default")]
    pub tls: TlsSettings,
    /// Older spelling of `tls.server_name`, still accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// Older spelling of `tls.ca_file`, still accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// The local address the probe's connection leaves from. Default: the system's choice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_ip: Option<std::net::IpAddr>,
    /// Ask for TLS in this protocol's plaintext first: `smtp`, `imap`, `pop3`, `ftp`,
    /// `postgres` or `ldap`. Default: TLS from the first byte.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub starttls: Option<Starttls>,
}

/// The protocols whose STARTTLS a `tcp` or `tls` check speaks before its TLS handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Starttls {
    Smtp,
    Imap,
    Pop3,
    Ftp,
    Postgres,
    Ldap,
}

impl Starttls {
    pub fn as_str(self) -> &'static str {
        match self {
            Starttls::Smtp => "smtp",
            Starttls::Imap => "imap",
            Starttls::Pop3 => "pop3",
            Starttls::Ftp => "ftp",
            Starttls::Postgres => "postgres",
            Starttls::Ldap => "ldap",
        }
    }
}

/// Settings of a `type = "icmp"` check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IcmpSpec {
    /// Host name or IP to ping. A name is resolved and each address is an instance.
    pub host: String,
    /// Echo requests sent per probe, 1 to 100. Default: 3.
    #[serde(default = "default_icmp_count")]
    pub count: u16,
    /// Time between two echo requests. Default: 100ms.
    #[serde(default = "default_packet_interval", with = "humantime_serde")]
    #[schemars(with = "super::json_schema::Humantime")]
    pub packet_interval: Duration,
    /// Bytes of payload per echo request, 0 to 65000. Default: 56.
    #[serde(default = "default_payload_size")]
    pub payload_size: u16,
    /// 4 or 6: probe only the addresses of that family. Default: every address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_version: Option<u8>,
}

/// Settings of a `type = "grpc"` check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GrpcSpec {
    /// `host:port` (`[v6]:port`). The host is resolved unless instances are listed.
    pub address: String,
    /// The service name asked about; "" asks about the server as a whole. Default: "".
    #[serde(default)]
    pub service: String,
    /// Call over TLS (h2 by ALPN): `true`, or a `[checks.tls]` table. Default: false (h2c,
    /// HTTP/2 without TLS). `tls.server_name` is also the call's `:authority`.
    #[schemars(extend("default" = false))]
    #[serde(default, skip_serializing_if = "TlsOption::is_off")]
    pub tls: TlsOption,
    /// Older spelling of `tls.server_name`, still accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// Older spelling of `tls.ca_file`, still accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Older spelling of `tls.insecure_skip_verify`, still accepted.
    #[schemars(extend("default" = false))]
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure_skip_verify: bool,
    /// The local address the probe's connection leaves from. Default: the system's choice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_ip: Option<std::net::IpAddr>,
    /// Metadata sent with the call (`{ "x-tenant" = "a" }`): lowercase gRPC metadata keys.
    #[schemars(extend("default" = {}))]
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    /// Metadata whose values are read from files at load and reload, by key
    /// (`{ authorization = "/etc/bastion/grpc-token" }`): each file's first line.
    #[schemars(extend("default" = {}))]
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata_from_files: BTreeMap<String, PathBuf>,
    /// What `metadata_from_files` held when the config was loaded; filled in by bastion,
    /// never written in a config file.
    #[schemars(extend("default" = {}))]
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(skip)]
    pub metadata_secrets: BTreeMap<String, super::probe::Secret>,
}

/// One `[[checks.assertions]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Relationship {
    Equal,
    NotEqual,
    Empty,
    NotEmpty,
    Contain,
    NotContain,
    RegExp,
    /// The regex does not match anywhere in the value.
    NotRegExp,
    GreaterThan,
    LessThan,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(toml: &str) -> CheckConfig {
        toml::from_str(toml).unwrap()
    }

    const WEB: &str = "name = \"web\"\ntype = \"http\"\nurl = \"http://10.0.0.1/\"\ninterval = \"10s\"\nbearer_token_file = \"/etc/bastion/token\"\n";

    /// Routing, schedule, thresholds and rotated secrets keep the probe; its target does not.
    #[test]
    fn only_a_change_to_what_is_probed_is_another_probe() {
        let before = check(WEB);
        let filed = check(&format!(
            "{WEB}group = \"edge\"\nnotify = []\nnotify_on = [\"fail\", \"warn\"]\nmin_failing_count = 2\nmin_failing_time = \"5m\"\n"
        ))
        .clone();
        let filed = CheckConfig {
            interval: Duration::from_secs(60),
            ..filed
        };
        assert!(before.same_probe(&filed));
        let moved = check(&WEB.replace("10.0.0.1", "10.0.0.2"));
        assert!(!before.same_probe(&moved));
        assert_ne!(before.probe_fingerprint(), moved.probe_fingerprint());
    }

    /// A rotated token is the same probe, and no secret enters the saved fingerprint.
    #[test]
    fn a_rotated_secret_is_the_same_probe_and_not_in_the_fingerprint() {
        let with = |token: &str| {
            let mut config = check(WEB);
            if let CheckSpec::Http(http) = &mut config.spec {
                http.secrets.bearer_token = Some(crate::config::Secret::new(token));
            }
            config
        };
        let (old, new) = (with("hunter2"), with("correct horse"));
        assert!(old.same_probe(&new));
        assert_eq!(old.probe_fingerprint(), new.probe_fingerprint());
        assert_eq!(old.probe_fingerprint(), check(WEB).probe_fingerprint());
    }
}
