//! The ICMP echo probe: `count` echo requests, `packet_interval` apart, and the replies that
//! come back before the probe's time is up. It uses an unprivileged ICMP datagram socket where
//! `net.ipv4.ping_group_range` admits this process's group, and a raw socket (CAP_NET_RAW)
//! otherwise; where neither opens, configs with icmp checks are refused at start-up. No unsafe
//! code: the socket is made by socket2 and driven by tokio as a datagram socket.

use super::settings::Humantime;
use super::{Phase, ProbeRecord};
use crate::problem::KeyPath;

use super::response::{Body, Response, Section};
use super::series::{self, SeriesOut, SeriesSpec};
use super::AssertionKey;
use super::Observation;
use super::Observed;
use super::ProbeContext;
use super::{CheckKind, Probe, ProbeFuture};
use crate::checks::CheckType;
use crate::model::{ErrorKind, ProbeError};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use socket2::{Domain, Protocol, Socket, Type};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::time::Instant;

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
    #[schemars(with = "Humantime")]
    pub packet_interval: Duration,
    /// Bytes of payload per echo request, 0 to 65000. Default: 56.
    #[serde(default = "default_payload_size")]
    pub payload_size: u16,
    /// 4 or 6: probe only the addresses of that family. Default: every address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_version: Option<u8>,
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

/// Echo requests per probe at most.
pub const MAX_COUNT: u16 = 100;
/// Payload bytes per echo request at most (an IPv4 datagram holds 65,507 bytes of ICMP data).
pub const MAX_PAYLOAD: u16 = 65_000;
/// Echo requests must be at least this far apart.
pub const MIN_PACKET_INTERVAL: Duration = Duration::from_millis(1);

const ECHO_REQUEST_V4: u8 = 8;
const ECHO_REPLY_V4: u8 = 0;
const ECHO_REQUEST_V6: u8 = 128;
const ECHO_REPLY_V6: u8 = 129;
const ICMP_HEADER: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum IcmpDefinitionError {
    #[error("host must not be empty")]
    Host,
    #[error("count {0} is out of range; send 1 to {MAX_COUNT} echo requests")]
    Count(u16),
    #[error("payload_size {0} is too large; the most is {MAX_PAYLOAD}")]
    PayloadSize(u16),
    #[error("packet_interval must be at least 1ms")]
    PacketInterval,
    #[error("ip_version {0} is not 4 or 6")]
    IpVersion(u8),
    #[error("host {host} is an IPv{actual} address, but ip_version is {wanted}")]
    IpVersionMismatch {
        host: String,
        actual: u8,
        wanted: u8,
    },
    #[error("count {count} at packet_interval {} takes {} to send, which leaves no time for replies within the timeout of {}; lower count or packet_interval, or raise the timeout", humantime::format_duration(*.interval), humantime::format_duration(*.sending), humantime::format_duration(*.timeout))]
    TooSlow {
        count: u16,
        interval: Duration,
        sending: Duration,
        timeout: Duration,
    },
}

impl super::SpecError for IcmpDefinitionError {
    fn key(&self) -> KeyPath {
        KeyPath::dotted(match self {
            IcmpDefinitionError::Host => "host",
            IcmpDefinitionError::Count(_) | IcmpDefinitionError::TooSlow { .. } => "count",
            IcmpDefinitionError::PayloadSize(_) => "payload_size",
            IcmpDefinitionError::PacketInterval => "packet_interval",
            IcmpDefinitionError::IpVersion(_) | IcmpDefinitionError::IpVersionMismatch { .. } => {
                "ip_version"
            }
        })
    }
}

/// Why this process cannot send ICMP echo requests at all.
#[derive(Debug, thiserror::Error)]
#[error("icmp checks need an ICMP socket, and none can be opened: an unprivileged datagram socket failed ({datagram}; net.ipv4.ping_group_range is `{range}`, which must include one of this process's groups) and a raw socket failed ({raw}; it needs CAP_NET_RAW). Widen net.ipv4.ping_group_range, grant CAP_NET_RAW (e.g. AmbientCapabilities=CAP_NET_RAW under systemd), or remove the icmp checks")]
pub struct IcmpSetupError {
    datagram: String,
    raw: String,
    range: String,
}

/// The kind of socket that carries the echo requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketKind {
    /// `SOCK_DGRAM` with `IPPROTO_ICMP`: no privilege needed; the kernel owns the identifier.
    Datagram,
    /// `SOCK_RAW`: needs CAP_NET_RAW; sees every ICMP packet, IPv4 ones with their IP header.
    Raw,
}

impl SocketKind {
    fn as_str(self) -> &'static str {
        match self {
            SocketKind::Datagram => "datagram",
            SocketKind::Raw => "raw",
        }
    }
}

/// Opens an ICMP socket for `ip`'s family: a datagram socket if allowed, else a raw one.
fn open_socket(ipv6: bool) -> Result<(Socket, SocketKind), (std::io::Error, std::io::Error)> {
    let (domain, protocol) = if ipv6 {
        (Domain::IPV6, Protocol::ICMPV6)
    } else {
        (Domain::IPV4, Protocol::ICMPV4)
    };
    match Socket::new(domain, Type::DGRAM, Some(protocol)) {
        Ok(socket) => Ok((socket, SocketKind::Datagram)),
        Err(datagram) => match Socket::new(domain, Type::RAW, Some(protocol)) {
            Ok(socket) => Ok((socket, SocketKind::Raw)),
            Err(raw) => Err((datagram, raw)),
        },
    }
}

/// Checks, once at start-up, that this process can open an IPv4 ICMP socket of either kind.
pub fn ensure_sockets() -> Result<SocketKind, IcmpSetupError> {
    open_socket(false)
        .map(|(_, kind)| kind)
        .map_err(|(datagram, raw)| IcmpSetupError {
            datagram: datagram.to_string(),
            raw: raw.to_string(),
            range: std::fs::read_to_string("/proc/sys/net/ipv4/ping_group_range")
                .map(|text| text.split_whitespace().collect::<Vec<_>>().join(" "))
                .unwrap_or_else(|_| "unreadable".to_string()),
        })
}

/// A compiled ICMP check.
#[derive(Debug)]
pub struct IcmpPlan {
    host: String,
    count: u16,
    interval: Duration,
    payload_size: u16,
    ip_version: Option<u8>,
}

impl IcmpPlan {
    pub fn compile(spec: &IcmpSpec, timeout: Duration) -> Result<IcmpPlan, IcmpDefinitionError> {
        let host = spec.host.trim();
        let host = host
            .strip_prefix('[')
            .and_then(|rest| rest.strip_suffix(']'))
            .unwrap_or(host);
        if host.is_empty() {
            return Err(IcmpDefinitionError::Host);
        }
        if spec.count == 0 || spec.count > MAX_COUNT {
            return Err(IcmpDefinitionError::Count(spec.count));
        }
        if spec.payload_size > MAX_PAYLOAD {
            return Err(IcmpDefinitionError::PayloadSize(spec.payload_size));
        }
        if spec.packet_interval < MIN_PACKET_INTERVAL {
            return Err(IcmpDefinitionError::PacketInterval);
        }
        if let Some(version) = spec.ip_version {
            if version != 4 && version != 6 {
                return Err(IcmpDefinitionError::IpVersion(version));
            }
            if let Ok(ip) = host.parse::<IpAddr>() {
                let actual = if ip.is_ipv4() { 4 } else { 6 };
                if actual != version {
                    return Err(IcmpDefinitionError::IpVersionMismatch {
                        host: host.to_string(),
                        actual,
                        wanted: version,
                    });
                }
            }
        }
        let sending = spec
            .packet_interval
            .checked_mul(u32::from(spec.count - 1))
            .unwrap_or(Duration::MAX);
        if sending >= timeout {
            return Err(IcmpDefinitionError::TooSlow {
                count: spec.count,
                interval: spec.packet_interval,
                sending,
                timeout,
            });
        }
        Ok(IcmpPlan {
            host: host.to_string(),
            count: spec.count,
            interval: spec.packet_interval,
            payload_size: spec.payload_size,
            ip_version: spec.ip_version,
        })
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    /// Whether `ip` is of the family `ip_version` asks for (any, when unset).
    pub fn accepts(&self, ip: IpAddr) -> bool {
        match self.ip_version {
            Some(4) => ip.is_ipv4(),
            Some(6) => ip.is_ipv6(),
            _ => true,
        }
    }
}

/// Identifiers for raw sockets, which see every echo reply on the host: each probe uses its own.
fn next_identifier() -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed) ^ (std::process::id() as u16)
}

/// Pings `target`, recording sends, replies and round trips in `record` as they happen. Stops
/// when every reply is in, or at `deadline` (the end of the probe's time), whichever is first;
/// unanswered requests count as lost, not as an error.
pub async fn probe(
    plan: &IcmpPlan,
    target: SocketAddr,
    deadline: Instant,
    record: &mut ProbeRecord,
) -> Result<(), ProbeError> {
    let ip = target.ip();
    let ipv6 = ip.is_ipv6();
    let (socket, kind) = open(ipv6)?;
    let identifier = next_identifier();
    let payload: Vec<u8> = (0..plan.payload_size).map(|i| (i % 251) as u8).collect();
    let destination = SocketAddr::new(ip, 0);
    let count = usize::from(plan.count);
    let mut sent_at: Vec<Option<Instant>> = vec![None; count];
    let mut rtts: Vec<Option<f64>> = vec![None; count];
    let stop = stop_waiting_at(deadline);
    let started = Instant::now();
    let mut buffer = vec![0u8; usize::from(plan.payload_size) + 128];
    let mut next = 0usize;
    update(record, kind, &sent_at, &rtts);
    record.begin(Phase::Rtt);
    loop {
        // Deadlines and sends are handled here, before waiting, so a socket that is never
        // quiet (a raw socket sees every ICMP packet of the host) cannot hold them back.
        let now = Instant::now();
        if now >= stop {
            break;
        }
        let answered = rtts.iter().filter(|rtt| rtt.is_some()).count();
        if next == count && answered == count {
            break;
        }
        let next_send = (next < count).then(|| started + plan.interval * next as u32);
        if next_send.is_some_and(|due| due <= now) {
            let packet = echo_request(ipv6, identifier, next as u16, &payload);
            socket
                .send_to(&packet, destination)
                .await
                .map_err(|error| {
                    ProbeError::new(
                        ErrorKind::Icmp,
                        format!("sending an echo request to {ip}: {error}"),
                    )
                })?;
            sent_at[next] = Some(Instant::now());
            next += 1;
            update(record, kind, &sent_at, &rtts);
            continue;
        }
        let wake = next_send.map_or(stop, |at| at.min(stop));
        let received = tokio::select! {
            received = socket.recv_from(&mut buffer) => received,
            _ = tokio::time::sleep_until(wake) => continue,
        };
        let arrived = Instant::now();
        let (length, from) = received.map_err(|error| {
            ProbeError::new(ErrorKind::Icmp, format!("receiving from {ip}: {error}"))
        })?;
        if from.ip() != ip {
            continue;
        }
        let Some(sequence) = reply_sequence(&buffer[..length], kind, ipv6, identifier, &payload)
        else {
            continue;
        };
        let slot = usize::from(sequence);
        if let (Some(Some(sent)), Some(rtt @ None)) = (sent_at.get(slot), rtts.get_mut(slot)) {
            *rtt = Some(arrived.duration_since(*sent).as_secs_f64());
            update(record, kind, &sent_at, &rtts);
        }
    }
    record.end();
    let average = record
        .sections
        .icmp
        .as_ref()
        .map_or(0.0, |icmp| icmp.rtt_avg);
    record.timings.rtt = average;
    Ok(())
}

/// An ICMP socket for the address family, datagram if the system allows, raw otherwise.
fn open(ipv6: bool) -> Result<(UdpSocket, SocketKind), ProbeError> {
    let (socket, kind) = open_socket(ipv6).map_err(|(datagram, raw)| {
        ProbeError::new(
            ErrorKind::Icmp,
            format!("cannot open an ICMP socket: datagram: {datagram}; raw: {raw}"),
        )
    })?;
    Ok((into_tokio(socket)?, kind))
}

/// When to stop waiting for replies: a little short of the deadline, so the probe ends on
/// its own terms (with its losses counted) rather than by the timeout.
fn stop_waiting_at(deadline: Instant) -> Instant {
    let margin = deadline
        .saturating_duration_since(Instant::now())
        .div_f64(20.0)
        .min(Duration::from_millis(100));
    deadline.checked_sub(margin).unwrap_or(deadline)
}

/// The sequence number of `received` when it is a reply to this probe's requests.
fn reply_sequence(
    received: &[u8],
    kind: SocketKind,
    ipv6: bool,
    identifier: u16,
    payload: &[u8],
) -> Option<u16> {
    let packet = match (kind, ipv6) {
        // A raw IPv4 socket hands over the IP header too.
        (SocketKind::Raw, false) => strip_ipv4_header(received),
        _ => Some(received),
    }?;
    let raw_identifier = (kind == SocketKind::Raw).then_some(identifier);
    parse_reply(packet, ipv6, raw_identifier, payload)
}

fn into_tokio(socket: Socket) -> Result<UdpSocket, ProbeError> {
    let setup = |error: std::io::Error| {
        ProbeError::new(
            ErrorKind::Icmp,
            format!("cannot set up the ICMP socket: {error}"),
        )
    };
    socket.set_nonblocking(true).map_err(setup)?;
    // tokio drives any datagram socket this way; it never looks at the protocol.
    UdpSocket::from_std(std::net::UdpSocket::from(socket)).map_err(setup)
}

/// Writes the running totals into the record, so a probe cut short still reports them.
fn update(
    record: &mut ProbeRecord,
    kind: SocketKind,
    sent_at: &[Option<Instant>],
    rtts: &[Option<f64>],
) {
    let sent = sent_at.iter().filter(|sent| sent.is_some()).count();
    let replies: Vec<f64> = rtts.iter().flatten().copied().collect();
    let received = replies.len();
    let loss = if sent == 0 {
        0.0
    } else {
        100.0 * (sent - received) as f64 / sent as f64
    };
    let (min, max, sum) = replies
        .iter()
        .fold((f64::INFINITY, 0.0f64, 0.0), |(min, max, sum), &rtt| {
            (min.min(rtt), max.max(rtt), sum + rtt)
        });
    record.sections.icmp = Some(Box::new(IcmpDetails {
        sent: u16::try_from(sent).unwrap_or(u16::MAX),
        received: u16::try_from(received).unwrap_or(u16::MAX),
        loss,
        rtt_avg: if received == 0 {
            0.0
        } else {
            sum / received as f64
        },
        rtt_min: if received == 0 { 0.0 } else { min },
        rtt_max: max,
        socket: kind.as_str().to_string(),
    }));
}

/// An echo request: type, code 0, checksum, identifier, sequence, payload.
fn echo_request(ipv6: bool, identifier: u16, sequence: u16, payload: &[u8]) -> Vec<u8> {
    let mut packet = Vec::with_capacity(ICMP_HEADER + payload.len());
    packet.push(if ipv6 {
        ECHO_REQUEST_V6
    } else {
        ECHO_REQUEST_V4
    });
    packet.push(0);
    packet.extend_from_slice(&[0, 0]);
    packet.extend_from_slice(&identifier.to_be_bytes());
    packet.extend_from_slice(&sequence.to_be_bytes());
    packet.extend_from_slice(payload);
    // ICMPv6 checksums cover a pseudo-header the kernel fills in and computes itself.
    if !ipv6 {
        let sum = checksum(&packet);
        packet[2..4].copy_from_slice(&sum.to_be_bytes());
    }
    packet
}

/// The Internet checksum (RFC 1071).
fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut chunks = bytes.chunks_exact(2);
    for pair in &mut chunks {
        sum += u32::from(u16::from_be_bytes([pair[0], pair[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn strip_ipv4_header(packet: &[u8]) -> Option<&[u8]> {
    let header = usize::from(packet.first()? & 0x0f) * 4;
    packet.get(header..)
}

/// The sequence number of an echo reply to this probe: the right type, the identifier when the
/// socket is raw (a datagram socket's kernel matches it), and the payload sent, echoed back.
fn parse_reply(packet: &[u8], ipv6: bool, identifier: Option<u16>, payload: &[u8]) -> Option<u16> {
    if packet.len() < ICMP_HEADER {
        return None;
    }
    let reply_type = if ipv6 { ECHO_REPLY_V6 } else { ECHO_REPLY_V4 };
    if packet[0] != reply_type || packet[1] != 0 {
        return None;
    }
    if let Some(identifier) = identifier {
        if u16::from_be_bytes([packet[4], packet[5]]) != identifier {
            return None;
        }
    }
    if &packet[ICMP_HEADER..] != payload {
        return None;
    }
    Some(u16::from_be_bytes([packet[6], packet[7]]))
}

/// The values of the icmp assertion keys.
pub fn observed(details: &IcmpDetails) -> Vec<(AssertionKey, Observed)> {
    let mut values = vec![(AssertionKey::Loss, Observed::Text(details.loss.to_string()))];
    // With no reply there is no round trip to judge: rtt assertions fail as unavailable.
    if details.received > 0 {
        values.push((AssertionKey::RttAvg, Observed::Seconds(details.rtt_avg)));
        values.push((AssertionKey::RttMax, Observed::Seconds(details.rtt_max)));
    }
    values
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

// Counts and times only: nothing a server decides the size of.
impl Section for IcmpDetails {
    fn body(&mut self) -> Option<Body<'_>> {
        None
    }

    fn seen(&self) -> String {
        format!(
            "{}/{} replies, rtt avg {:.3}ms",
            self.received,
            self.sent,
            self.rtt_avg * 1000.0
        )
    }
}

/// The `icmp` check type, listed in `checks::KINDS`.
pub const KIND: CheckKind = CheckKind {
    check_type: CheckType::Icmp,
    assertion_keys: &[AssertionKey::Loss, AssertionKey::RttAvg, AssertionKey::RttMax],
    judge,
    series: &[
        SeriesSpec {
            name: "probe_icmp_duration_seconds",
            help: "Duration of each phase of the last ICMP probe of the instance (rtt: mean round trip)",
        },
        SeriesSpec {
            name: "probe_icmp_packet_loss_ratio",
            help: "Share of the echo requests of the last ICMP probe left unanswered, 0 to 1",
        },
    ],
    write_series,
    workers_help: "Concurrent ICMP echo probes.",
};

impl Probe for IcmpPlan {
    fn host_and_port(&self) -> (&str, u16) {
        (self.host(), 0)
    }

    /// `ip_version` keeps one address family only.
    fn accepts(&self, address: &SocketAddr) -> bool {
        IcmpPlan::accepts(self, address.ip())
    }

    /// ICMP has no ports: the bare IP.
    fn target_label(&self, address: SocketAddr) -> String {
        address.ip().to_string()
    }

    fn unresolved_label(&self) -> String {
        self.host().to_string()
    }

    fn probe<'a>(
        &'a self,
        _context: &'a ProbeContext,
        target: SocketAddr,
        deadline: Instant,
        record: &'a mut ProbeRecord,
    ) -> ProbeFuture<'a> {
        Box::pin(probe(self, target, deadline, record))
    }
}

/// Loss and round trips, for assertions; without them, one reply passes.
fn judge<'a>(response: &'a Response, observation: &mut Observation<'a>) -> Option<bool> {
    let icmp = response.sections.icmp.as_ref()?;
    observation.values = observed(icmp);
    Some(icmp.received > 0)
}

fn write_series(response: &Response, out: &mut dyn SeriesOut) {
    series::write_phases(
        out,
        "probe_icmp_duration_seconds",
        &response.timings,
        &[("resolve", series::resolve), ("rtt", |timings| timings.rtt)],
    );
    if let Some(icmp) = &response.sections.icmp {
        out.gauge("probe_icmp_packet_loss_ratio", None, icmp.loss / 100.0);
    }
}

impl super::TypeSpec for IcmpSpec {
    type Plan = IcmpPlan;
    type Error = IcmpDefinitionError;

    fn compile(&self, timeout: Duration) -> Result<IcmpPlan, IcmpDefinitionError> {
        IcmpPlan::compile(self, timeout)
    }

    fn target(&self) -> String {
        self.host.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_requests_carry_a_valid_checksum() {
        let packet = echo_request(false, 0x1234, 7, b"abc");
        assert_eq!(&packet[..2], &[8, 0]);
        assert_eq!(&packet[4..8], &[0x12, 0x34, 0, 7]);
        // A packet with its checksum in place sums to zero.
        assert_eq!(checksum(&packet), 0);
    }

    #[test]
    fn loss_and_round_trips_count_only_requests_sent() {
        let now = Instant::now();
        let mut record = ProbeRecord::default();
        let sent = [Some(now), Some(now), Some(now), Some(now), None];
        let rtts = [Some(0.002), None, Some(0.004), None, None];
        update(&mut record, SocketKind::Raw, &sent, &rtts);
        let icmp = record.sections.icmp.unwrap();
        assert_eq!((icmp.sent, icmp.received), (4, 2));
        assert_eq!(icmp.loss, 50.0);
        assert_eq!(
            (icmp.rtt_min, icmp.rtt_avg, icmp.rtt_max),
            (0.002, 0.003, 0.004)
        );
        let values = observed(&icmp);
        assert_eq!(values[0], (AssertionKey::Loss, Observed::Text("50".into())));

        let mut record = ProbeRecord::default();
        update(&mut record, SocketKind::Datagram, &sent, &[None; 5]);
        let icmp = record.sections.icmp.unwrap();
        assert_eq!((icmp.loss, icmp.rtt_avg, icmp.rtt_min), (100.0, 0.0, 0.0));
        // No reply, no round trip to judge.
        assert_eq!(observed(&icmp).len(), 1);
    }

    #[test]
    fn replies_are_matched_by_type_identifier_and_payload() {
        let mut reply = echo_request(false, 9, 3, b"xyz");
        reply[0] = ECHO_REPLY_V4;
        assert_eq!(parse_reply(&reply, false, Some(9), b"xyz"), Some(3));
        assert_eq!(parse_reply(&reply, false, None, b"xyz"), Some(3));
        assert_eq!(parse_reply(&reply, false, Some(10), b"xyz"), None);
        assert_eq!(parse_reply(&reply, false, Some(9), b"xyw"), None);
        let request = echo_request(false, 9, 3, b"xyz");
        assert_eq!(parse_reply(&request, false, Some(9), b"xyz"), None);
        assert_eq!(parse_reply(&reply[..4], false, Some(9), b""), None);
    }
}
