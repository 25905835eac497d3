//! What one instance answered (`Response`): the part of a result each check type fills, with
//! its phases (`Timings`), its type's section and each assertion's verdict. It travels on the
//! bus inside a `CheckResult` (`messages`), so its JSON is part of that contract.

use super::{AssertionKey, Relationship};
use crate::model::{ErrorKind, ProbeError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::SystemTime;

/// What one instance answered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    /// The `ip:port` actually probed (or `host:port` when the host did not resolve).
    pub target: String,
    /// True when the probe succeeded, every assertion held, and (http) the status was valid.
    pub passing: bool,
    /// Null when the transport succeeded.
    pub error: Option<ProbeError>,
    /// Null when no HTTP response arrived.
    pub http: Option<Box<HttpDetails>>,
    /// Null on plain connections.
    #[serde(default)]
    pub tls: Option<Box<TlsDetails>>,
    /// tcp checks: what the connection carried. Absent for other types.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<Box<TcpDetails>>,
    /// dns checks: the answer. Absent for other types, and when no answer arrived.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<Box<DnsDetails>>,
    /// icmp checks: echo requests and replies. Absent for other types.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmp: Option<Box<IcmpDetails>>,
    /// grpc checks: the health answer. Absent for other types, and when no answer arrived.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc: Option<Box<GrpcDetails>>,
    /// udp checks: the datagram sent and the reply. Absent for other types.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub udp: Option<Box<UdpDetails>>,
    /// websocket checks: the upgrade and the message back. Absent for other types.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub websocket: Option<Box<WebsocketDetails>>,
    /// How long each phase of the probe took, in seconds.
    pub timings: Timings,
    /// Each of the check's assertions with its verdict, in the order configured; empty
    /// when it has none, or when the probe failed before there was anything to judge.
    pub assertions: Vec<AssertionResult>,
    /// The check's `labels` and the instance's own (from discovery), as on its `probe_*`
    /// series. Absent when there are none.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// What an HTTP response carried (the last one, after any redirects).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HttpDetails {
    /// The status code, e.g. 200.
    pub status: u16,
    /// `HTTP/1.1` or `HTTP/2`.
    pub version: String,
    /// Lowercase names; repeated headers joined with ", ".
    pub headers: BTreeMap<String, String>,
    /// The body as text (invalid UTF-8 replaced): up to `max_body_bytes` as the probe read
    /// it and assertions judged it; on the bus, its first 4 KiB.
    pub body: String,
    /// True when `body` is not the whole body: reading stopped at `max_body_bytes`, or the
    /// body was cut for the bus.
    pub truncated: bool,
    /// On the bus: the length of the body the probe read (as text), before any cut.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_bytes: Option<usize>,
    /// On the bus: true when headers were left out or cut to fit.
    #[serde(default, skip_serializing_if = "is_false")]
    pub headers_truncated: bool,
    /// How many redirects were followed to get here.
    #[serde(default)]
    pub redirects: u32,
}

/// The TLS session of a response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TlsDetails {
    /// e.g. `TLSv1.3`.
    pub version: String,
    /// The protocol chosen by ALPN, e.g. `h2`; null when none was.
    pub alpn: Option<String>,
    /// The earliest not-after of the certificates the server sent; null if none could be read.
    #[serde(with = "crate::time_format::optional")]
    pub earliest_cert_expiry: Option<SystemTime>,
    /// tls checks: the certificate chain as the server sent it, and whether it verified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain: Option<ChainDetails>,
}

/// The chain a server presented, leaf first, and the verdict on it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChainDetails {
    /// True when the chain verified against the trusted roots for the server name.
    pub valid: bool,
    /// Why it did not verify; absent when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Leaf first, in the order sent.
    pub certificates: Vec<CertificateDetails>,
}

/// One certificate of a chain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CertificateDetails {
    /// RFC 4514 text, e.g. `CN=svc.test,O=Example`.
    pub subject: String,
    /// The issuer's name, RFC 4514 text like `subject`.
    pub issuer: String,
    /// Subject alternative names: DNS names and IPs.
    pub san: Vec<String>,
    /// Start of its validity: RFC 3339, UTC.
    #[serde(with = "crate::time_format")]
    pub not_before: SystemTime,
    /// End of its validity: RFC 3339, UTC.
    #[serde(with = "crate::time_format")]
    pub not_after: SystemTime,
}

/// What a tcp check's connection carried.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TcpDetails {
    /// True once the connection (and the TLS handshake, when on) succeeded.
    pub connected: bool,
    /// Every byte received during the steps, as text (invalid UTF-8 replaced); on the bus,
    /// the first 4 KiB of it.
    pub body: String,
    /// True when `body` is not all that was received: reading stopped at
    /// `runner.max_body_bytes`, or the text was cut for the bus.
    pub truncated: bool,
    /// On the bus: the length of what was received (as text), before any cut.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_bytes: Option<usize>,
    /// How many steps completed.
    pub steps_done: usize,
}

/// A websocket check's upgrade and the message back.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WebsocketDetails {
    /// The status the upgrade was answered with; absent before an answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// True once the server switched protocols with the right `Sec-WebSocket-Accept`.
    pub upgraded: bool,
    /// The first message back (as text), when a message was sent; on the bus, its first 4 KiB.
    pub body: String,
    /// True when `body` is not the whole message: cut at `runner.max_body_bytes` or for the bus.
    pub truncated: bool,
    /// On the bus: the length of the message (as text), before any cut.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_bytes: Option<usize>,
}

/// A udp check's datagram and the reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UdpDetails {
    /// Bytes of the datagram sent.
    pub sent_bytes: usize,
    /// True once a reply arrived.
    pub replied: bool,
    /// The reply as text (invalid UTF-8 replaced); on the bus, its first 4 KiB.
    pub body: String,
    /// True when `body` is not the whole reply: cut at `runner.max_body_bytes` or for the bus.
    pub truncated: bool,
    /// On the bus: the length of the reply (as text), before any cut.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_bytes: Option<usize>,
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

/// An icmp check's echo requests and replies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IcmpDetails {
    /// Echo requests sent (`count`, unless the probe was cut short).
    pub sent: u16,
    /// Echo replies received in time.
    pub received: u16,
    /// Percentage of echo requests left unanswered, 0 to 100.
    pub loss: f64,
    /// Seconds; 0 when no reply arrived.
    pub rtt_avg: f64,
    /// The shortest round-trip time, in seconds; 0 when no reply arrived.
    pub rtt_min: f64,
    /// The longest round-trip time, in seconds; 0 when no reply arrived.
    pub rtt_max: f64,
    /// `datagram` (unprivileged ICMP socket) or `raw` (CAP_NET_RAW).
    pub socket: String,
}

/// A grpc check's health answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GrpcDetails {
    /// SERVING, NOT_SERVING, UNKNOWN or SERVICE_UNKNOWN.
    pub status: String,
    /// The grpc-status of the call (0 is OK).
    pub grpc_status: u32,
    /// The grpc-message, when the server sent one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_message: Option<String>,
}

/// Phase durations in seconds. A phase not reached is 0; a phase cut short by the timeout
/// holds the time it ran for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Timings {
    /// Resolving the host to addresses; 0 when nothing was resolved (listed instances, IP
    /// literals).
    pub resolve: f64,
    /// Connecting to the instance; 0 when the probe makes no connection (udp, icmp).
    pub connect: f64,
    /// http through a proxy: the CONNECT request and the proxy's answer.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub proxy: f64,
    /// The TLS handshake; 0 on plain connections.
    pub tls: f64,
    /// From the request being written to the response head arriving.
    pub processing: f64,
    /// Reading the body.
    pub transfer: f64,
    /// tcp: the send/expect steps.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub exchange: f64,
    /// dns: from the query written to the answer read.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub request: f64,
    /// icmp: the mean round-trip time of the replies.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub rtt: f64,
    /// tcp and tls with `starttls`: the plaintext exchange that asked for TLS.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub starttls: f64,
    /// Resolve plus every phase of the probe.
    pub total: f64,
}

fn is_zero(value: &f64) -> bool {
    *value == 0.0
}

fn is_false(value: &bool) -> bool {
    !*value
}

impl Response {
    /// A response for an instance whose probe never produced anything but an error.
    pub fn failed(target: String, error: ProbeError, timings: Timings) -> Response {
        Response {
            target,
            passing: false,
            error: Some(error),
            http: None,
            tls: None,
            tcp: None,
            dns: None,
            icmp: None,
            grpc: None,
            udp: None,
            websocket: None,
            timings,
            assertions: Vec::new(),
            labels: BTreeMap::new(),
        }
    }

    pub fn error_kind(&self) -> Option<ErrorKind> {
        self.error.as_ref().map(|error| error.kind)
    }
}

/// One assertion's verdict, as it appears in results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AssertionResult {
    /// What was looked at, as configured (`code`, `header`, `json`, `latency`...).
    pub key: AssertionKey,
    /// The configured `value`: the header name, the JSONPath; `""` for other keys.
    pub value: String,
    /// The configured relationship (`equal`, `lessThan`...).
    pub relationship: Relationship,
    /// The configured operand; `""` when the relationship takes none.
    pub operand: String,
    /// True when the actual value satisfied the relationship.
    pub passing: bool,
    /// The value found, as text (durations as seconds with a unit, `0.012345s`), cut to
    /// 1024 characters; `""` when there was none (a missing header, a JSONPath that matched
    /// nothing, a probe that failed first).
    pub actual: String,
    /// Why it failed, in words; absent when it passed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}
