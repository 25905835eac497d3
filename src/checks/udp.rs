//! The UDP probe: one datagram to the instance on a connected socket, and one reply read back
//! (phase `request`). A connected socket takes datagrams from that address only and reports
//! its ICMP errors, so a port-unreachable answer is a `connect` error; no reply at all ends in
//! the check's timeout. `expect`, when set, is a regex over the reply (a reply that does not
//! match is an `expect` error). It never reads more than one datagram, and keeps at most
//! `runner.max_body_bytes` of it.

use super::response::{Body, Response, Section};
use super::series::{self, SeriesOut, SeriesSpec};
use super::AssertionKey;
use super::Observation;
use super::{CheckKind, Phase, Probe, ProbeContext, ProbeFuture, ProbeRecord};
use crate::checks::CheckType;
use crate::model::{split_host_port, ErrorKind, ProbeError};
use crate::problem::KeyPath;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use tokio::net::UdpSocket;

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

/// Compiled regexes may not grow beyond this, as for assertions.
const REGEX_SIZE_LIMIT: usize = 1 << 20;
/// The largest datagram UDP carries.
const MAX_DATAGRAM: usize = 65_535;

#[derive(Debug, thiserror::Error)]
pub enum UdpDefinitionError {
    #[error("address `{address}` is not valid: {reason}")]
    Address { address: String, reason: String },
    #[error("set exactly one of `send` and `send_hex`: the datagram to send")]
    Payload,
    #[error("send_hex `{0}` is not hex: write pairs of 0-9 and a-f (`\"0a ff\"`)")]
    Hex(String),
    #[error("the datagram is {0} bytes; the most UDP carries is 65507")]
    TooLarge(usize),
    #[error("expect `{pattern}` is not a valid regex: {reason}")]
    Regex { pattern: String, reason: String },
}

impl super::SpecError for UdpDefinitionError {
    fn key(&self) -> KeyPath {
        KeyPath::dotted(match self {
            UdpDefinitionError::Address { .. } => "address",
            UdpDefinitionError::Payload | UdpDefinitionError::TooLarge(_) => "send",
            UdpDefinitionError::Hex(_) => "send_hex",
            UdpDefinitionError::Regex { .. } => "expect",
        })
    }
}

/// A compiled UDP check.
#[derive(Debug)]
pub struct UdpPlan {
    host: String,
    port: u16,
    payload: Vec<u8>,
    expect: Option<regex::bytes::Regex>,
    source_ip: Option<IpAddr>,
}

/// Hex digits into bytes; whitespace between pairs is allowed.
fn decode_hex(text: &str) -> Option<Vec<u8>> {
    let digits: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    if !digits.len().is_multiple_of(2) {
        return None;
    }
    digits
        .chunks(2)
        .map(|pair| {
            let text = std::str::from_utf8(pair).ok()?;
            u8::from_str_radix(text, 16).ok()
        })
        .collect()
}

impl UdpPlan {
    pub fn compile(spec: &UdpSpec) -> Result<UdpPlan, UdpDefinitionError> {
        let (host, port) =
            split_host_port(&spec.address).map_err(|reason| UdpDefinitionError::Address {
                address: spec.address.clone(),
                reason,
            })?;
        let payload = match (&spec.send, &spec.send_hex) {
            (Some(text), None) => text.as_bytes().to_vec(),
            (None, Some(hex)) => {
                decode_hex(hex).ok_or_else(|| UdpDefinitionError::Hex(hex.clone()))?
            }
            _ => return Err(UdpDefinitionError::Payload),
        };
        // 65,535 less the IPv4 and UDP headers.
        if payload.len() > 65_507 {
            return Err(UdpDefinitionError::TooLarge(payload.len()));
        }
        let expect = spec
            .expect
            .as_ref()
            .map(|pattern| {
                regex::bytes::RegexBuilder::new(pattern)
                    .size_limit(REGEX_SIZE_LIMIT)
                    .dfa_size_limit(REGEX_SIZE_LIMIT)
                    .build()
                    .map_err(|error| UdpDefinitionError::Regex {
                        pattern: pattern.clone(),
                        reason: error.to_string(),
                    })
            })
            .transpose()?;
        Ok(UdpPlan {
            host,
            port,
            payload,
            expect,
            source_ip: spec.source_ip,
        })
    }
}

/// Sends the datagram to `target` and reads its reply, recording what it saw as it goes.
pub async fn probe(
    ctx: &ProbeContext,
    plan: &UdpPlan,
    target: SocketAddr,
    record: &mut ProbeRecord,
) -> Result<(), ProbeError> {
    record.sections.udp = Some(Box::new(UdpDetails {
        sent_bytes: plan.payload.len(),
        replied: false,
        body: String::new(),
        truncated: false,
        body_bytes: None,
    }));
    let local = match (plan.source_ip, target) {
        (Some(ip), _) => SocketAddr::new(ip, 0),
        (None, SocketAddr::V4(_)) => SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
        (None, SocketAddr::V6(_)) => SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0),
    };
    let socket = UdpSocket::bind(local).await.map_err(|error| {
        ProbeError::new(
            ErrorKind::Connect,
            format!("cannot open a UDP socket on {local}: {error}"),
        )
    })?;
    // Connected: only the target's datagrams arrive, and its ICMP errors are reported.
    socket.connect(target).await.map_err(|error| {
        ProbeError::new(ErrorKind::Connect, format!("connect to {target}: {error}"))
    })?;
    record.begin(Phase::Request);
    socket
        .send(&plan.payload)
        .await
        .map_err(|error| unreachable_or(error, target, "sending to"))?;
    let mut buffer = vec![0u8; MAX_DATAGRAM];
    let read = socket
        .recv(&mut buffer)
        .await
        .map_err(|error| unreachable_or(error, target, "reading from"))?;
    record.end();
    let reply = buffer.get(..read).unwrap_or_default();
    let kept = reply.get(..ctx.max_body_bytes).unwrap_or(reply);
    if let Some(details) = record.sections.udp.as_mut() {
        details.replied = true;
        details.body = String::from_utf8_lossy(kept).into_owned();
        details.truncated = kept.len() < reply.len();
    }
    if let Some(expect) = &plan.expect {
        if !expect.is_match(kept) {
            return Err(ProbeError::new(
                ErrorKind::Expect,
                format!(
                    "expect `{}` did not match the {read}-byte reply from {target}",
                    expect.as_str()
                ),
            ));
        }
    }
    Ok(())
}

/// A refused datagram (ICMP port unreachable) said plainly; other errors as they are.
fn unreachable_or(error: std::io::Error, target: SocketAddr, doing: &str) -> ProbeError {
    if error.kind() == std::io::ErrorKind::ConnectionRefused {
        ProbeError::new(
            ErrorKind::Connect,
            format!("{target} answered port unreachable (nothing listens on that UDP port)"),
        )
    } else {
        ProbeError::new(ErrorKind::Connect, format!("{doing} {target}: {error}"))
    }
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

impl Section for UdpDetails {
    fn body(&mut self) -> Option<Body<'_>> {
        Some(Body {
            text: &mut self.body,
            truncated: &mut self.truncated,
            bytes: &mut self.body_bytes,
        })
    }

    fn seen(&self) -> String {
        if self.replied {
            format!(
                "{} bytes sent, a reply of {} bytes",
                self.sent_bytes,
                self.body_bytes.unwrap_or(self.body.len())
            )
        } else {
            format!("{} bytes sent, no reply", self.sent_bytes)
        }
    }
}

/// The `udp` check type, listed in `checks::KINDS`.
pub const KIND: CheckKind = CheckKind {
    check_type: CheckType::Udp,
    assertion_keys: &[AssertionKey::Body],
    judge,
    series: &[SeriesSpec {
        name: "probe_udp_duration_seconds",
        help: "Duration of each phase of the last UDP probe of the instance",
    }],
    write_series,
    workers_help: "Concurrent UDP probes.",
};

impl Probe for UdpPlan {
    fn host_and_port(&self) -> (&str, u16) {
        (&self.host, self.port)
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

/// The reply, for assertions; without them, a reply (that matched `expect`) passes.
fn judge<'a>(response: &'a Response, observation: &mut Observation<'a>) -> Option<bool> {
    let udp = response.sections.udp.as_ref()?;
    observation.body = &udp.body;
    Some(udp.replied)
}

fn write_series(response: &Response, out: &mut dyn SeriesOut) {
    series::write_phases(
        out,
        "probe_udp_duration_seconds",
        &response.timings,
        &[
            ("resolve", series::resolve),
            ("request", |timings| timings.request),
        ],
    );
}

impl super::TypeSpec for UdpSpec {
    type Plan = UdpPlan;
    type Error = UdpDefinitionError;

    fn compile(&self, _timeout: std::time::Duration) -> Result<UdpPlan, UdpDefinitionError> {
        UdpPlan::compile(self)
    }

    fn target(&self) -> String {
        self.address.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(send: Option<&str>, send_hex: Option<&str>, expect: Option<&str>) -> UdpSpec {
        UdpSpec {
            address: "127.0.0.1:9".into(),
            send: send.map(str::to_string),
            send_hex: send_hex.map(str::to_string),
            expect: expect.map(str::to_string),
            source_ip: None,
        }
    }

    #[test]
    fn payloads_compile_from_text_or_hex_and_bad_ones_say_why() {
        let plan = UdpPlan::compile(&spec(None, Some("de ad BE ef"), None)).unwrap();
        assert_eq!(plan.payload, vec![0xde, 0xad, 0xbe, 0xef]);
        let plan = UdpPlan::compile(&spec(Some("ping\n"), None, Some("^pong"))).unwrap();
        assert_eq!(plan.payload, b"ping\n");
        let errors = [
            (
                spec(None, None, None),
                "exactly one of `send` and `send_hex`",
            ),
            (spec(Some("a"), Some("0a"), None), "exactly one"),
            (spec(None, Some("abc"), None), "is not hex"),
            (spec(None, Some("zz"), None), "is not hex"),
            (spec(Some("a"), None, Some("(")), "not a valid regex"),
        ];
        for (spec, expected) in errors {
            let error = UdpPlan::compile(&spec).unwrap_err().to_string();
            assert!(error.contains(expected), "{error}");
        }
    }
}
