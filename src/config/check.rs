//! `[[checks]]`: one check's shared keys, its type's spec (`CheckSpec`), assertions and where
//! its instances come from; the defaults of check keys, their validation, and the secret files
//! a check names, read into its definition at every load. This is also the definition every
//! `CheckRequest` carries, so a runner needs no configuration of its own to run it.

use super::bounds::*;
use super::runner::location_name;
use super::{default_true, is_true, Entry, KeyPath, Problem, Problems};
pub use crate::checks::dns::{DnsRecordType, DnsTransport};
use crate::checks::settings::{
    BasicAuth, Compression, HttpSecrets, IpProtocol, OAuth2Config, Secret, TlsOption, TlsSettings,
};
pub use crate::checks::starttls::Starttls;
pub use crate::checks::{AssertionKey, Relationship};
use crate::model::CheckType;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use std::path::PathBuf;
use std::time::Duration;

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
// Each variant boxed: a check costs its own type's settings, not the largest type's (an
// unboxed `CheckSpec` made every `CheckConfig` the size of an http check's, about a kilobyte,
// in the config's list and in every copy of it; issue 20's million checks).
pub enum CheckSpec {
    Http(Box<HttpSpec>),
    Tcp(Box<TcpSpec>),
    Dns(Box<DnsSpec>),
    Tls(Box<TlsSpec>),
    Icmp(Box<IcmpSpec>),
    Grpc(Box<GrpcSpec>),
    Udp(Box<UdpSpec>),
    Websocket(Box<WebsocketSpec>),
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
    pub metadata_secrets: BTreeMap<String, crate::checks::settings::Secret>,
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

pub(super) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
pub(super) const DEFAULT_MIN_FAILING_TIME: Duration = Duration::from_secs(90);

pub(super) fn default_method() -> String {
    "GET".to_string()
}
pub(super) fn default_icmp_count() -> u16 {
    3
}
pub(super) fn default_packet_interval() -> Duration {
    Duration::from_millis(100)
}
pub(super) fn default_payload_size() -> u16 {
    56
}

impl CheckConfig {
    /// A check's numeric and duration keys against their ranges (`bounds.rs`). The least
    /// interval, timeout and the ICMP keys' lower ends are the check compiler's to refuse (it
    /// also refuses definitions from the bus), so only the side it leaves is checked here.
    pub(super) fn validate_ranges(&self, entry: &Entry) -> Problems {
        let check = self;
        let owner = Some(entry);
        let mut problems = Problems::default();
        if check.interval >= MIN_INTERVAL {
            problems.check(CHECK_INTERVAL.check_duration(owner, check.interval));
        }
        if let Some(timeout) = check
            .timeout
            .filter(|t| !t.is_zero() && *t < check.interval)
        {
            problems.check(CHECK_TIMEOUT.check_duration(owner, timeout));
        }
        if let Some(count) = check.min_failing_count {
            problems.check(MIN_FAILING_COUNT.check_count(owner, count as u64));
        }
        if let Some(time) = check.min_failing_time {
            problems.check(MIN_FAILING_TIME.check_duration(owner, time));
        }
        if let CheckSpec::Icmp(icmp) = &check.spec {
            if icmp.packet_interval > PACKET_INTERVAL.cap_duration(icmp.packet_interval) {
                problems.check(PACKET_INTERVAL.check_duration(owner, icmp.packet_interval));
            }
        }
        problems
    }

    /// A check's `locations` and `min_failing_locations`: names a runner can have, each once,
    /// `*` alone, and a threshold the named locations can reach. On the embedded bus the one
    /// location is this agent's own runner's, `embedded_location`.
    pub(super) fn validate_locations(
        &self,
        entry: &Entry,
        embedded_location: Option<&str>,
    ) -> Problems {
        let check = self;
        let mut problems = Problems::default();
        let Some(locations) = &check.locations else {
            if check.min_failing_locations.is_some() {
                problems.push(entry.problem(
                    "min_failing_locations",
                    "min_failing_locations needs locations; name the locations the check runs \
                     from (locations = [\"eu-west\", \"us-east\"])",
                ));
            }
            return problems;
        };
        if check.labels.contains_key(crate::model::LOCATION_LABEL) {
            problems.push(entry.problem(
                "labels.location",
                "label name `location` is one bastion sets itself on a check with locations \
                 (the location each series was seen from); rename the label",
            ));
        }
        if locations.is_empty() {
            problems.push(entry.problem(
                "locations",
                "locations is empty; name at least one (a runner.location), [\"*\"] for every \
                 live location, or leave the key out",
            ));
        }
        if locations.len() > MAX_LOCATIONS {
            problems.push(entry.problem(
                "locations",
                format!(
                    "locations names {} locations; at most {} are allowed",
                    locations.len(),
                    MAX_LOCATIONS
                ),
            ));
        }
        let every = check.every_location();
        if every && locations.len() > 1 {
            problems.push(entry.problem(
                "locations",
                "locations = [\"*\"] already means every live location; give \"*\" alone or \
                 only names",
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for location in locations
            .iter()
            .filter(|location| *location != EVERY_LOCATION)
        {
            if let Err(message) = location_name(location) {
                problems.push(entry.problem("locations", format!("locations: {message}")));
            } else if !seen.insert(location.as_str()) {
                problems.push(
                    entry.problem("locations", format!("locations names `{location}` twice")),
                );
            }
        }
        if let Some(min) = check.min_failing_locations {
            problems.check(MIN_FAILING_LOCATIONS.check_count(Some(entry), min as u64));
            if !every && min > locations.len() && !locations.is_empty() {
                problems.push(entry.problem(
                    "min_failing_locations",
                    format!(
                        "min_failing_locations is {min} but the check runs from {} location(s), \
                         so it could never fail; lower it or add locations",
                        locations.len()
                    ),
                ));
            }
        }
        if let Some(own) = embedded_location {
            if let Some(other) = locations
                .iter()
                .find(|location| *location != EVERY_LOCATION && location.as_str() != own)
            {
                problems.push(entry.problem(
                    "locations",
                    format!(
                        "locations names `{other}`, but on the embedded bus the only location is \
                         this agent's runner.location `{own}`; run the check from several \
                         locations over NATS (docs/distributed.md#locations), or name `{own}`"
                    ),
                ));
            }
        }
        problems
    }
}

/// Reads a one-line secret: the file's first line without surrounding whitespace. The error
/// names the key and the file, never what the file holds.
fn read_line_secret(key: &str, path: &Path) -> Result<Secret, String> {
    let text = read_text(key, path)?;
    let line = text.lines().next().unwrap_or("").trim();
    if line.is_empty() {
        return Err(format!(
            "{key}: {} is empty; put the secret on its first line",
            path.display()
        ));
    }
    Ok(Secret::new(line))
}

fn read_text(key: &str, path: &Path) -> Result<String, String> {
    let bytes = std::fs::read(path)
        .map_err(|error| format!("{key}: cannot read {}: {}", path.display(), error.kind()))?;
    String::from_utf8(bytes).map_err(|_| format!("{key}: {} is not UTF-8 text", path.display()))
}

/// Reads every secret file of one HTTP check into its `secrets`, reporting each file that
/// cannot be read at the key naming it.
pub(super) fn read_http_secrets(entry: &Entry, spec: &mut HttpSpec, problems: &mut Problems) {
    if !spec.secrets.is_empty() {
        problems.push(entry.problem(
            "secrets",
            "secrets is filled in by bastion from the *_file keys; remove it",
        ));
    }
    let mut secrets = HttpSecrets::default();
    // A file that cannot be read is reported here; an empty stand-in keeps the definition
    // whole, so compiling it adds no second message about the same file.
    let mut note = |key: KeyPath, outcome: Result<Secret, String>| -> Option<Secret> {
        Some(outcome.unwrap_or_else(|message| {
            problems.push(Problem::at(
                entry.path.clone().join(key),
                format!("{}: {message}", entry.subject),
            ));
            Secret::default()
        }))
    };
    for (header, path) in &spec.headers_from_files {
        let key = KeyPath::dotted("headers_from_files").key(header.as_str());
        if let Some(value) = note(
            key,
            read_line_secret(&format!("headers_from_files.{header}"), path),
        ) {
            secrets.headers.insert(header.clone(), value);
        }
    }
    if let Some(path) = &spec.body_file {
        // A body is sent exactly as the file holds it, final newline included.
        secrets.body = note(
            KeyPath::dotted("body_file"),
            read_text("body_file", path).map(Secret::new),
        );
    }
    if let Some(path) = &spec.bearer_token_file {
        secrets.bearer_token = note(
            KeyPath::dotted("bearer_token_file"),
            read_line_secret("bearer_token_file", path),
        );
    }
    if let Some(auth) = &spec.basic_auth {
        let key = "basic_auth.password_file";
        secrets.basic_password = note(
            KeyPath::dotted(key),
            read_line_secret(key, &auth.password_file),
        );
    }
    if let Some(auth) = &spec.proxy_basic_auth {
        let key = "proxy_basic_auth.password_file";
        secrets.proxy_password = note(
            KeyPath::dotted(key),
            read_line_secret(key, &auth.password_file),
        );
    }
    if let Some(oauth2) = &spec.oauth2 {
        let key = "oauth2.client_secret_file";
        secrets.oauth2_client_secret = note(
            KeyPath::dotted(key),
            read_line_secret(key, &oauth2.client_secret_file),
        );
    }
    spec.secrets = secrets;
}

/// Reads a gRPC check's `metadata_from_files` into its `metadata_secrets`.
fn read_grpc_secrets(entry: &Entry, spec: &mut GrpcSpec, problems: &mut Problems) {
    if !spec.metadata_secrets.is_empty() {
        problems.push(entry.problem(
            "metadata_secrets",
            "metadata_secrets is filled in by bastion from metadata_from_files; remove it",
        ));
    }
    let mut secrets = BTreeMap::new();
    for (key, path) in &spec.metadata_from_files {
        let value = read_line_secret(&format!("metadata_from_files.{key}"), path).unwrap_or_else(
            |message| {
                problems.push(Problem::at(
                    entry
                        .path
                        .clone()
                        .key("metadata_from_files")
                        .key(key.as_str()),
                    format!("{}: {message}", entry.subject),
                ));
                Secret::default()
            },
        );
        secrets.insert(key.clone(), value);
    }
    spec.metadata_secrets = secrets;
}

/// Reads the secret files of every check (`headers_from_files`, `body_file`,
/// `bearer_token_file`, `basic_auth`, `proxy_basic_auth`, `oauth2`) into the check's
/// definition: at load and at every reload, so a changed file is taken up by a reload.
/// Returns a problem for each file that cannot be read.
pub(super) fn read_secret_files(checks: &mut [CheckConfig]) -> Problems {
    let mut problems = Problems::default();
    for (index, check) in checks.iter_mut().enumerate() {
        let entry = Entry::check(index, &check.name);
        match &mut check.spec {
            CheckSpec::Http(spec) => read_http_secrets(&entry, spec, &mut problems),
            CheckSpec::Grpc(spec) => read_grpc_secrets(&entry, spec, &mut problems),
            _ => {}
        }
    }
    problems
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

#[cfg(test)]
mod size_tests {
    use super::*;

    /// A check costs its own type's settings (issue 20): `CheckSpec` is a tag and a box, so
    /// a `CheckConfig` stays a few hundred bytes whatever its type (an http spec inline made
    /// every check, tcp or dns too, over a kilobyte).
    #[test]
    fn a_check_definition_holds_its_type_settings_behind_one_box() {
        assert_eq!(std::mem::size_of::<CheckSpec>(), 16);
        let size = std::mem::size_of::<CheckConfig>();
        assert!(size <= 400, "CheckConfig is {size} bytes");
        assert!(
            std::mem::size_of::<HttpSpec>() > size,
            "the box is worth it"
        );
    }
}
