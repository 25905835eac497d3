//! The DNS probe: one query of one record type to one server over UDP or TCP, with hickory's
//! wire format and no resolver in between (so no cache, no retries, no search domains): the
//! time is the server's. Phases: connect (socket set up, or the TCP connection) and request
//! (query written to answer read). An answer that is not a DNS response to the query is an
//! error; NXDOMAIN or SERVFAIL is an answer, reported as its rcode.

use super::settings::default_true;
use super::settings::TlsSettings;
use super::{Phase, ProbeRecord};
use crate::problem::KeyPath;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::response::{cut, Body, Response, Section, TextBounds};
use super::series::{self, SeriesOut, SeriesSpec};
use super::AssertionKey;
use super::Observation;
use super::Observed;
use super::ProbeContext;
use super::{CheckKind, Probe, ProbeFuture};
use crate::checks::CheckType;
use crate::model::{split_host_port, ErrorKind, InstanceAddr, ProbeError};
use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RecordType};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU16, Ordering};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

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

/// The port of `server` when it names none.
const DNS_PORT: u16 = 53;
/// Where the system's name servers are listed.
const RESOLV_CONF: &str = "/etc/resolv.conf";

#[derive(Debug, thiserror::Error)]
pub enum DnsDefinitionError {
    #[error("query `{query}` is not a valid domain name: {reason}")]
    Query { query: String, reason: String },
    #[error("server `{server}` is not valid: {reason}")]
    Server { server: String, reason: String },
    #[error(
        "transport = \"tls\" or \"https\" needs a server (the name servers of /etc/resolv.conf speak plain DNS)"
    )]
    TlsWithoutServer,
    #[error("tls settings apply to transport = \"tls\" or \"https\" only")]
    TlsWithoutTransport,
    #[error("https_path `{0}` must start with `/`, and applies to transport = \"https\" only")]
    HttpsPath(String),
    #[error("{0}")]
    Tls(#[from] super::tls_client::TlsTargetError),
}

impl super::SpecError for DnsDefinitionError {
    fn key(&self) -> KeyPath {
        match self {
            DnsDefinitionError::Query { .. } => KeyPath::dotted("query"),
            DnsDefinitionError::Server { .. } => KeyPath::dotted("server"),
            DnsDefinitionError::TlsWithoutServer => KeyPath::dotted("transport"),
            DnsDefinitionError::TlsWithoutTransport => KeyPath::dotted("tls"),
            DnsDefinitionError::HttpsPath(_) => KeyPath::dotted("https_path"),
            DnsDefinitionError::Tls(error) => error.key(),
        }
    }
}

/// The port of a DNS over TLS server that names none (RFC 7858).
const DOT_PORT: u16 = 853;
/// An answer over HTTPS is read up to this (a DNS message is at most 64 KiB).
const MAX_DOH_ANSWER: usize = 65_535;

/// A compiled DNS check.
#[derive(Debug)]
pub struct DnsPlan {
    name: Name,
    record_type: RecordType,
    /// The server's host (name or IP) and port; None: the system's name servers.
    server: Option<(String, u16)>,
    transport: DnsTransport,
    recursion_desired: bool,
    /// DNS over TLS or HTTPS: the settings and the name the certificate must carry.
    tls: Option<super::tls_client::TlsTarget>,
    /// DNS over HTTPS: the request's URI (`https://host:port/path`).
    https_uri: Option<http::Uri>,
}

impl DnsPlan {
    pub fn compile(spec: &DnsSpec) -> Result<DnsPlan, DnsDefinitionError> {
        let query = spec.query.trim();
        let query_error = |reason: String| DnsDefinitionError::Query {
            query: spec.query.clone(),
            reason,
        };
        if query.is_empty() {
            return Err(query_error("it is empty".to_string()));
        }
        let mut name = Name::from_utf8(query).map_err(|error| query_error(error.to_string()))?;
        // The query is always absolute: no search domains apply.
        name.set_fqdn(true);
        let default_port = match spec.transport {
            DnsTransport::Tls => DOT_PORT,
            DnsTransport::Https => 443,
            DnsTransport::Udp | DnsTransport::Tcp => DNS_PORT,
        };
        let server = match &spec.server {
            None => None,
            Some(text) => Some(parse_server(text, default_port).map_err(|reason| {
                DnsDefinitionError::Server {
                    server: text.clone(),
                    reason,
                }
            })?),
        };
        let secure = matches!(spec.transport, DnsTransport::Tls | DnsTransport::Https);
        let tls = match (&server, secure) {
            (None, true) => return Err(DnsDefinitionError::TlsWithoutServer),
            (Some((host, _)), true) => super::tls_client::TlsTarget::compile(
                super::tls_client::TlsKeys {
                    table: Some(&spec.tls),
                    server_name: None,
                    ca_file: None,
                    insecure_skip_verify: false,
                },
                host,
            )?,
            _ if !spec.tls.is_default() => return Err(DnsDefinitionError::TlsWithoutTransport),
            _ => None,
        };
        let https_uri = match (&server, spec.transport, &spec.https_path) {
            (Some((host, port)), DnsTransport::Https, path) => {
                let path = path.as_deref().unwrap_or("/dns-query");
                if !path.starts_with('/') {
                    return Err(DnsDefinitionError::HttpsPath(path.to_string()));
                }
                let host = if host.contains(':') {
                    format!("[{host}]")
                } else {
                    host.clone()
                };
                Some(
                    format!("https://{host}:{port}{path}")
                        .parse::<http::Uri>()
                        .map_err(|_| DnsDefinitionError::HttpsPath(path.to_string()))?,
                )
            }
            (_, _, Some(path)) => return Err(DnsDefinitionError::HttpsPath(path.clone())),
            _ => None,
        };
        Ok(DnsPlan {
            name,
            record_type: record_type(spec.record_type),
            server,
            transport: spec.transport,
            recursion_desired: spec.recursion_desired,
            tls,
            https_uri,
        })
    }

    /// The server's host, resolved to find the instances; "" with the system's name servers.
    pub fn server_host(&self) -> &str {
        self.server.as_ref().map_or("", |(host, _)| host.as_str())
    }

    pub fn server_port(&self) -> u16 {
        self.server.as_ref().map_or(DNS_PORT, |(_, port)| *port)
    }

    pub fn uses_system_servers(&self) -> bool {
        self.server.is_none()
    }
}

/// `ip`, `ip:port`, `host` or `host:port`; port 53 unless given.
fn parse_server(text: &str, default_port: u16) -> Result<(String, u16), String> {
    if let Some(address) = InstanceAddr::parse(text) {
        let socket = address.with_default_port(default_port);
        return Ok((socket.ip().to_string(), socket.port()));
    }
    let text = text.trim();
    if text.contains(':') {
        return split_host_port(text);
    }
    if text.is_empty() || text.chars().any(|c| c.is_whitespace() || c == '/') {
        return Err("write an IP, a host name, or either with :port".to_string());
    }
    Ok((text.to_string(), default_port))
}

fn record_type(record_type: DnsRecordType) -> RecordType {
    match record_type {
        DnsRecordType::A => RecordType::A,
        DnsRecordType::Aaaa => RecordType::AAAA,
        DnsRecordType::Cname => RecordType::CNAME,
        DnsRecordType::Mx => RecordType::MX,
        DnsRecordType::Txt => RecordType::TXT,
        DnsRecordType::Ns => RecordType::NS,
        DnsRecordType::Soa => RecordType::SOA,
        DnsRecordType::Srv => RecordType::SRV,
        DnsRecordType::Ptr => RecordType::PTR,
        DnsRecordType::Caa => RecordType::CAA,
    }
}

/// The name servers of /etc/resolv.conf, each on port 53, in order.
pub fn system_name_servers() -> Result<Vec<SocketAddr>, ProbeError> {
    let text = std::fs::read_to_string(RESOLV_CONF).map_err(|error| {
        ProbeError::new(
            ErrorKind::Resolve,
            format!("cannot read {RESOLV_CONF} to find the system's name servers ({error}); set `server` in the check"),
        )
    })?;
    let servers = name_servers_in(&text);
    if servers.is_empty() {
        return Err(ProbeError::new(
            ErrorKind::Resolve,
            format!("{RESOLV_CONF} lists no usable nameserver; set `server` in the check"),
        ));
    }
    Ok(servers)
}

fn name_servers_in(text: &str) -> Vec<SocketAddr> {
    let mut servers = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if words.next() != Some("nameserver") {
            continue;
        }
        // A link-local IPv6 server may carry a zone (`fe80::1%eth0`), which SocketAddr cannot
        // hold; such servers are skipped.
        if let Some(Ok(ip)) = words.next().map(str::parse::<IpAddr>) {
            let address = SocketAddr::new(ip, DNS_PORT);
            if !servers.contains(&address) {
                servers.push(address);
            }
        }
    }
    servers
}

/// Query ids only need to differ between queries in flight; a counter seeded from the clock
/// does that without a random number generator.
fn next_query_id() -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.subsec_nanos());
    NEXT.fetch_add(1, Ordering::Relaxed) ^ (seed as u16)
}

/// Asks `target` the plan's question, recording phases and the answer in `record`.
pub async fn probe(
    ctx: &ProbeContext,
    plan: &DnsPlan,
    target: SocketAddr,
    record: &mut ProbeRecord,
) -> Result<(), ProbeError> {
    let id = next_query_id();
    let mut query = Message::new(id, MessageType::Query, OpCode::Query);
    query.metadata.recursion_desired = plan.recursion_desired;
    query.add_query(Query::query(plan.name.clone(), plan.record_type));
    let wire = query.to_vec().map_err(|error| {
        ProbeError::new(
            ErrorKind::Dns,
            format!("cannot encode the query for {}: {error}", plan.name),
        )
    })?;
    let answer = match plan.transport {
        DnsTransport::Udp => exchange_udp(&wire, id, target, record).await?,
        DnsTransport::Tcp => exchange_tcp(&wire, target, record).await?,
        DnsTransport::Tls => {
            let Some(tls) = &plan.tls else {
                return Err(ProbeError::new(
                    ErrorKind::Internal,
                    "a DNS over TLS check was compiled without its TLS settings",
                ));
            };
            // RFC 7858's ALPN name.
            let (config, server_name) = tls.client_config(ctx, &[b"dot"])?;
            let tcp = super::net::connect_tcp(target, None, record).await?;
            let stream =
                super::tls_client::handshake(config, server_name, tcp, target, record).await?;
            exchange_framed(stream, &wire, target, record).await?
        }
        DnsTransport::Https => {
            let (Some(tls), Some(uri)) = (&plan.tls, &plan.https_uri) else {
                return Err(ProbeError::new(
                    ErrorKind::Internal,
                    "a DNS over HTTPS check was compiled without its TLS settings",
                ));
            };
            let (config, server_name) = tls.client_config(ctx, &[b"http/1.1"])?;
            let tcp = super::net::connect_tcp(target, None, record).await?;
            let stream =
                super::tls_client::handshake(config, server_name, tcp, target, record).await?;
            exchange_https(stream, uri, wire.clone(), target, record).await?
        }
    };
    let message = Message::from_vec(&answer).map_err(|error| {
        ProbeError::new(
            ErrorKind::Dns,
            format!("the answer from {target} is not a DNS message: {error}"),
        )
    })?;
    if message.metadata.id != id || message.metadata.message_type != MessageType::Response {
        return Err(ProbeError::new(
            ErrorKind::Dns,
            format!("{target} answered with a message that is not the response to query id {id}"),
        ));
    }
    record.sections.dns = Some(Box::new(DnsDetails {
        rcode: rcode_text(u16::from(message.metadata.response_code)),
        answers: message.answers.iter().map(ToString::to_string).collect(),
        authorities: message.authorities.len(),
        additionals: message.additionals.len(),
        authoritative: message.metadata.authoritative,
        truncated: message.metadata.truncation,
    }));
    Ok(())
}

/// The largest UDP answer read; a bigger one is cut and parsing says so.
const MAX_UDP_ANSWER: usize = 65_535;

async fn exchange_udp(
    wire: &[u8],
    id: u16,
    target: SocketAddr,
    record: &mut ProbeRecord,
) -> Result<Vec<u8>, ProbeError> {
    record.begin(Phase::Connect);
    let local: SocketAddr = match target {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(local).await.map_err(|error| {
        ProbeError::new(
            ErrorKind::Connect,
            format!("cannot open a UDP socket: {error}"),
        )
    })?;
    // A connected socket only takes datagrams from the server, and reports its ICMP errors.
    socket.connect(target).await.map_err(|error| {
        ProbeError::new(ErrorKind::Connect, format!("connect to {target}: {error}"))
    })?;
    record.begin(Phase::Request);
    socket.send(wire).await.map_err(|error| {
        ProbeError::new(
            ErrorKind::Connect,
            format!("sending the query to {target}: {error}"),
        )
    })?;
    let mut buffer = vec![0u8; MAX_UDP_ANSWER];
    loop {
        let length = socket.recv(&mut buffer).await.map_err(|error| {
            ProbeError::new(
                ErrorKind::Connect,
                format!("no answer from {target}: {error}"),
            )
        })?;
        let answer = &buffer[..length];
        // A stray or late datagram for another id is not this query's answer: keep waiting
        // (the check's timeout bounds the wait).
        if answer.len() >= 2 && u16::from_be_bytes([answer[0], answer[1]]) != id {
            continue;
        }
        record.end();
        return Ok(answer.to_vec());
    }
}

async fn exchange_tcp(
    wire: &[u8],
    target: SocketAddr,
    record: &mut ProbeRecord,
) -> Result<Vec<u8>, ProbeError> {
    record.begin(Phase::Connect);
    let stream = TcpStream::connect(target).await.map_err(|error| {
        ProbeError::new(ErrorKind::Connect, format!("connect to {target}: {error}"))
    })?;
    let _ = stream.set_nodelay(true);
    exchange_framed(stream, wire, target, record).await
}

/// One query POSTed as `application/dns-message` (RFC 8484) over HTTP/1.1, and the answer's
/// body, timed as the request phase. Anything but a 200 with that content type is a `dns`
/// error; the body is read up to 64 KiB.
async fn exchange_https<S>(
    stream: S,
    uri: &http::Uri,
    wire: Vec<u8>,
    target: SocketAddr,
    record: &mut ProbeRecord,
) -> Result<Vec<u8>, ProbeError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use http_body_util::BodyExt;
    record.begin(Phase::Request);
    let request = http::Request::builder()
        .method(http::Method::POST)
        .uri(uri.path())
        .header(
            http::header::HOST,
            uri.authority().map_or("", |authority| authority.as_str()),
        )
        .header(http::header::CONTENT_TYPE, "application/dns-message")
        .header(http::header::ACCEPT, "application/dns-message")
        .header(
            http::header::USER_AGENT,
            concat!("bastion/", env!("CARGO_PKG_VERSION")),
        )
        .body(http_body_util::Full::new(bytes::Bytes::from(wire)))
        .map_err(|error| {
            ProbeError::new(ErrorKind::Dns, format!("building the request: {error}"))
        })?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(super::net::http_error)?;
    let answer = super::net::drive(connection, async move {
        let response = sender
            .send_request(request)
            .await
            .map_err(super::net::http_error)?;
        let status = response.status();
        let content_type = response
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .unwrap_or("")
            .to_string();
        if status != http::StatusCode::OK || !content_type.starts_with("application/dns-message")
        {
            let shown = if content_type.is_empty() {
                "no content type".to_string()
            } else {
                content_type.chars().take(100).collect()
            };
            return Err(ProbeError::new(
                ErrorKind::Dns,
                format!(
                    "{target} answered the DNS over HTTPS query with {status} ({shown}); expected 200 application/dns-message"
                ),
            ));
        }
        let body = http_body_util::Limited::new(response.into_body(), MAX_DOH_ANSWER)
            .collect()
            .await
            .map_err(|error| {
                ProbeError::new(
                    ErrorKind::Dns,
                    format!("reading the answer from {target}: {error}"),
                )
            })?;
        Ok(body.to_bytes().to_vec())
    })
    .await?;
    record.end();
    Ok(answer)
}

/// One query and its answer with two-byte length framing (RFC 1035 over TCP, RFC 7858 over
/// TLS), timed as the request phase.
async fn exchange_framed<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut stream: S,
    wire: &[u8],
    target: SocketAddr,
    record: &mut ProbeRecord,
) -> Result<Vec<u8>, ProbeError> {
    let length = u16::try_from(wire.len())
        .map_err(|_| ProbeError::new(ErrorKind::Dns, "the query is longer than 65535 bytes"))?;
    record.begin(Phase::Request);
    let mut framed = Vec::with_capacity(wire.len() + 2);
    framed.extend_from_slice(&length.to_be_bytes());
    framed.extend_from_slice(wire);
    let io_error = |error: std::io::Error| {
        let message = if error.kind() == std::io::ErrorKind::UnexpectedEof {
            format!("{target} closed the connection before a complete answer")
        } else {
            format!("exchanging with {target}: {error}")
        };
        ProbeError::new(ErrorKind::Dns, message)
    };
    stream.write_all(&framed).await.map_err(io_error)?;
    let mut prefix = [0u8; 2];
    stream.read_exact(&mut prefix).await.map_err(io_error)?;
    let mut answer = vec![0u8; usize::from(u16::from_be_bytes(prefix))];
    stream.read_exact(&mut answer).await.map_err(io_error)?;
    record.end();
    Ok(answer)
}

/// The mnemonic of a response code (RFC 1035, 2136, 6895).
fn rcode_text(code: u16) -> String {
    match code {
        0 => "NOERROR",
        1 => "FORMERR",
        2 => "SERVFAIL",
        3 => "NXDOMAIN",
        4 => "NOTIMP",
        5 => "REFUSED",
        6 => "YXDOMAIN",
        7 => "YXRRSET",
        8 => "NXRRSET",
        9 => "NOTAUTH",
        10 => "NOTZONE",
        16 => "BADVERS",
        other => return format!("RCODE{other}"),
    }
    .to_string()
}

/// The values of the dns assertion keys.
pub fn observed(details: &DnsDetails) -> Vec<(AssertionKey, Observed)> {
    vec![
        (AssertionKey::Rcode, Observed::Text(details.rcode.clone())),
        (
            AssertionKey::Answer,
            Observed::Text(details.answers.join("\n")),
        ),
        (
            AssertionKey::AnswerCount,
            Observed::Text(details.answers.len().to_string()),
        ),
    ]
}

/// A dns check's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DnsDetails {
    /// NOERROR, NXDOMAIN, SERVFAIL, REFUSED, ...
    pub rcode: String,
    /// Every answer record in presentation form (`name ttl class type data`).
    pub answers: Vec<String>,
    /// How many records the authority section held.
    pub authorities: usize,
    /// How many records the additional section held.
    pub additionals: usize,
    /// The AA flag.
    pub authoritative: bool,
    /// The TC flag (a UDP answer cut short; try transport tcp).
    pub truncated: bool,
}

impl Section for DnsDetails {
    fn body(&mut self) -> Option<Body<'_>> {
        None
    }

    fn bound(&mut self, bounds: &TextBounds) {
        self.answers.truncate(bounds.list_items);
        for answer in &mut self.answers {
            cut(answer, bounds.text_bytes);
        }
    }

    fn drop_detail(&mut self, _text_bytes: usize) {
        self.answers.clear();
    }

    fn seen(&self) -> String {
        format!("{}, {} answers", self.rcode, self.answers.len())
    }
}

/// The `dns` check type, listed in `checks::KINDS`.
pub const KIND: CheckKind = CheckKind {
    check_type: CheckType::Dns,
    assertion_keys: &[
        AssertionKey::Rcode,
        AssertionKey::Answer,
        AssertionKey::AnswerCount,
    ],
    judge,
    series: &[
        SeriesSpec {
            name: "probe_dns_duration_seconds",
            help: "Duration of each phase of the last DNS probe of the instance",
        },
        SeriesSpec {
            name: "probe_dns_answer_rrs",
            help: "Records in the answer section of the last DNS response of the instance",
        },
    ],
    write_series,
    workers_help: "Concurrent DNS probes.",
};

impl Probe for DnsPlan {
    fn host_and_port(&self) -> (&str, u16) {
        (self.server_host(), self.server_port())
    }

    /// The name servers of `/etc/resolv.conf`, for a check without a `server`.
    fn system_targets(&self) -> Option<Result<Vec<SocketAddr>, ProbeError>> {
        self.uses_system_servers().then(system_name_servers)
    }

    fn unresolved_label(&self) -> String {
        let (host, port) = self.host_and_port();
        if host.is_empty() {
            // The system's name servers, which could not be read.
            "/etc/resolv.conf".to_string()
        } else if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        }
    }

    fn probe<'a>(
        &'a self,
        context: &'a ProbeContext,
        target: SocketAddr,
        _deadline: tokio::time::Instant,
        record: &'a mut ProbeRecord,
    ) -> ProbeFuture<'a> {
        Box::pin(probe(context, self, target, record))
    }
}

/// The rcode and answers, for assertions; without them, NOERROR passes.
fn judge<'a>(response: &'a Response, observation: &mut Observation<'a>) -> Option<bool> {
    let dns = response.sections.dns.as_ref()?;
    observation.values = observed(dns);
    Some(dns.rcode == "NOERROR")
}

fn write_series(response: &Response, out: &mut dyn SeriesOut) {
    series::write_phases(
        out,
        "probe_dns_duration_seconds",
        &response.timings,
        &[
            ("resolve", series::resolve),
            ("connect", series::connect),
            ("tls", series::tls),
            ("request", |timings| timings.request),
        ],
    );
    if let Some(dns) = &response.sections.dns {
        out.gauge("probe_dns_answer_rrs", None, dns.answers.len() as f64);
    }
}

impl super::TypeSpec for DnsSpec {
    type Plan = DnsPlan;
    type Error = DnsDefinitionError;

    fn compile(&self, _timeout: std::time::Duration) -> Result<DnsPlan, DnsDefinitionError> {
        DnsPlan::compile(self)
    }

    fn target(&self) -> String {
        format!("{:?} {}", self.record_type, self.query)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_name_servers_are_read_in_order() {
        let text = "# comment\nsearch example.org\nnameserver 10.0.0.2\nnameserver ::1\nnameserver fe80::1%eth0\nnameserver 10.0.0.2\noptions ndots:2\n";
        assert_eq!(
            name_servers_in(text),
            vec![
                "10.0.0.2:53".parse::<SocketAddr>().unwrap(),
                "[::1]:53".parse().unwrap()
            ]
        );
    }

    #[test]
    fn servers_take_port_53_unless_given() {
        assert_eq!(parse_server("10.0.0.53", 53), Ok(("10.0.0.53".into(), 53)));
        assert_eq!(parse_server("[::1]:5353", 53), Ok(("::1".into(), 5353)));
        assert_eq!(
            parse_server("dns.internal", 53),
            Ok(("dns.internal".into(), 53))
        );
        assert_eq!(
            parse_server("dns.internal:5300", 53),
            Ok(("dns.internal".into(), 5300))
        );
        assert!(parse_server("dns internal", 53).is_err());
    }

    #[test]
    fn rcodes_have_their_mnemonics() {
        assert_eq!(rcode_text(0), "NOERROR");
        assert_eq!(rcode_text(3), "NXDOMAIN");
        assert_eq!(rcode_text(2), "SERVFAIL");
        assert_eq!(rcode_text(23), "RCODE23");
    }
}
