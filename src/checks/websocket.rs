//! The WebSocket probe: connect, TLS for `wss://`, the HTTP/1.1 upgrade (phase `processing`,
//! from the request written to the `101` read and its `Sec-WebSocket-Accept` checked), then
//! with `send` one text message and the first data message back, matched by `expect` (phase
//! `exchange`), and a close frame. Frames are built and read here (RFC 6455: client frames
//! masked, control frames skipped, fragments joined), never more than
//! `runner.max_body_bytes` of a message and 16 KiB of the upgrade's head. One fresh
//! connection per probe; it never leaves a task behind.

use super::arrival::{Arrivals, StampedStream};
use super::net::connect_tcp;
use super::response::{Body, Response, Section};
use super::series::{self, SeriesOut, SeriesSpec};
use super::settings::TlsSettings;
use super::tls_client::{handshake, TlsKeys, TlsTarget, TlsTargetError};
use super::AssertionKey;
use super::Observation;
use super::{CheckKind, Phase, Probe, ProbeContext, ProbeFuture, ProbeRecord};
use crate::checks::CheckType;
use crate::model::{ErrorKind, ProbeError};
use crate::problem::KeyPath;
use base64::Engine;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

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

/// Compiled regexes may not grow beyond this, as for assertions.
const REGEX_SIZE_LIMIT: usize = 1 << 20;
/// The upgrade's answer head is read up to this.
const MAX_HEAD_BYTES: usize = 16 * 1024;
/// RFC 6455's GUID for `Sec-WebSocket-Accept`.
const ACCEPT_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

#[derive(Debug, thiserror::Error)]
pub enum WebsocketDefinitionError {
    #[error("url `{url}` is not a ws:// or wss:// URL: {reason}")]
    Url { url: String, reason: String },
    #[error("header `{0}` cannot be set: bastion sends it for the upgrade")]
    Header(String),
    #[error("header `{0}` is not a valid header name or value")]
    BadHeader(String),
    #[error("expect `{pattern}` is not a valid regex: {reason}")]
    Regex { pattern: String, reason: String },
    #[error("expect needs send: a server is only asked once a message is sent")]
    ExpectWithoutSend,
    #[error("tls settings apply to wss:// URLs only")]
    TlsWithoutWss,
    #[error("{0}")]
    Tls(#[from] TlsTargetError),
}

impl super::SpecError for WebsocketDefinitionError {
    fn key(&self) -> KeyPath {
        match self {
            WebsocketDefinitionError::Url { .. } => KeyPath::dotted("url"),
            WebsocketDefinitionError::Header(name) | WebsocketDefinitionError::BadHeader(name) => {
                KeyPath::dotted("headers").key(name)
            }
            WebsocketDefinitionError::Regex { .. }
            | WebsocketDefinitionError::ExpectWithoutSend => KeyPath::dotted("expect"),
            WebsocketDefinitionError::TlsWithoutWss => KeyPath::dotted("tls"),
            WebsocketDefinitionError::Tls(error) => error.key(),
        }
    }
}

/// A compiled WebSocket check.
#[derive(Debug)]
pub struct WebsocketPlan {
    host: String,
    port: u16,
    /// `Host` header value (`host` or `host:port` for a port not the scheme's).
    authority: String,
    path: String,
    headers: Vec<(String, String)>,
    send: Option<String>,
    expect: Option<regex::Regex>,
    tls: Option<TlsTarget>,
}

impl WebsocketPlan {
    pub fn compile(spec: &WebsocketSpec) -> Result<WebsocketPlan, WebsocketDefinitionError> {
        let bad = |reason: &str| WebsocketDefinitionError::Url {
            url: spec.url.clone(),
            reason: reason.to_string(),
        };
        let uri: http::Uri = spec.url.parse().map_err(|_| bad("it does not parse"))?;
        let secure = match uri.scheme_str() {
            Some("ws") => false,
            Some("wss") => true,
            _ => return Err(bad("the scheme must be ws or wss")),
        };
        let host = uri
            .host()
            .ok_or_else(|| bad("it has no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
            return Err(bad("credentials in the URL are refused; use headers"));
        }
        let default_port = if secure { 443 } else { 80 };
        let port = uri.port_u16().unwrap_or(default_port);
        let shown_host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.clone()
        };
        let authority = if port == default_port {
            shown_host
        } else {
            format!("{shown_host}:{port}")
        };
        let path = uri
            .path_and_query()
            .map_or("/".to_string(), |path| path.as_str().to_string());
        let path = if path.is_empty() {
            "/".to_string()
        } else {
            path
        };
        const OWN: [&str; 6] = [
            "host",
            "upgrade",
            "connection",
            "sec-websocket-key",
            "sec-websocket-version",
            "content-length",
        ];
        let mut headers = Vec::new();
        for (name, value) in &spec.headers {
            if OWN.contains(&name.to_ascii_lowercase().as_str()) {
                return Err(WebsocketDefinitionError::Header(name.clone()));
            }
            if http::HeaderName::from_bytes(name.as_bytes()).is_err()
                || http::HeaderValue::from_str(value).is_err()
            {
                return Err(WebsocketDefinitionError::BadHeader(name.clone()));
            }
            headers.push((name.clone(), value.clone()));
        }
        let expect = spec
            .expect
            .as_ref()
            .map(|pattern| {
                regex::RegexBuilder::new(pattern)
                    .size_limit(REGEX_SIZE_LIMIT)
                    .dfa_size_limit(REGEX_SIZE_LIMIT)
                    .build()
                    .map_err(|error| WebsocketDefinitionError::Regex {
                        pattern: pattern.clone(),
                        reason: error.to_string(),
                    })
            })
            .transpose()?;
        if expect.is_some() && spec.send.is_none() {
            return Err(WebsocketDefinitionError::ExpectWithoutSend);
        }
        let tls = if secure {
            TlsTarget::compile(
                TlsKeys {
                    table: Some(&spec.tls),
                    server_name: None,
                    ca_file: None,
                    insecure_skip_verify: false,
                },
                &host,
            )?
        } else {
            if !spec.tls.is_default() {
                return Err(WebsocketDefinitionError::TlsWithoutWss);
            }
            None
        };
        Ok(WebsocketPlan {
            host,
            port,
            authority,
            path,
            headers,
            send: spec.send.clone(),
            expect,
            tls,
        })
    }
}

/// Probes `target`: upgrade, then the optional message and its answer, then close.
pub async fn probe(
    ctx: &ProbeContext,
    plan: &WebsocketPlan,
    target: SocketAddr,
    record: &mut ProbeRecord,
) -> Result<(), ProbeError> {
    let tls = match &plan.tls {
        Some(tls) => Some(tls.client_config(ctx, &[b"http/1.1"])?),
        None => None,
    };
    record.sections.websocket = Some(Box::default());
    let tcp = connect_tcp(target, None, record).await?;
    let (tcp, arrivals) = StampedStream::new(tcp, ctx.max_arrival_correction);
    let max_bytes = ctx.max_body_bytes;
    match tls {
        Some((config, server_name)) => {
            let stream = handshake(config, server_name, tcp, target, record).await?;
            session(stream, plan, target, record, &arrivals, max_bytes).await
        }
        None => session(tcp, plan, target, record, &arrivals, max_bytes).await,
    }
}

fn details(record: &mut ProbeRecord, change: impl FnOnce(&mut WebsocketDetails)) {
    if let Some(details) = record.sections.websocket.as_mut() {
        change(details);
    }
}

/// The upgrade and the optional exchange. Each phase ends when the answer that ends it arrived
/// (`arrivals`, the kernel's receive stamps), not when this task got to it.
async fn session<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    plan: &WebsocketPlan,
    target: SocketAddr,
    record: &mut ProbeRecord,
    arrivals: &Arrivals,
    max_bytes: usize,
) -> Result<(), ProbeError> {
    let io = |doing: &str, error: std::io::Error| {
        ProbeError::new(ErrorKind::Connect, format!("{doing} {target}: {error}"))
    };
    record.begin(Phase::Processing);
    let key = base64::engine::general_purpose::STANDARD.encode(random_bytes::<16>()?);
    let mut request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nUser-Agent: bastion/{}\r\n",
        plan.path,
        plan.authority,
        env!("CARGO_PKG_VERSION")
    );
    for (name, value) in &plan.headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|error| io("sending the upgrade to", error))?;
    let head = read_head(&mut stream, target).await?;
    let head_arrived = arrivals.latest();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| {
            ProbeError::new(
                ErrorKind::Http,
                format!("{target} answered the upgrade with no HTTP status line"),
            )
        })?;
    details(record, |details| details.status = Some(status));
    if status != 101 {
        return Err(ProbeError::new(
            ErrorKind::Http,
            format!("{target} answered the upgrade with {status}, not 101 Switching Protocols"),
        ));
    }
    let accept = head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("sec-websocket-accept")
            .then(|| value.trim().to_string())
    });
    let digest = ring::digest::digest(
        &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
        format!("{key}{ACCEPT_GUID}").as_bytes(),
    );
    let expected = base64::engine::general_purpose::STANDARD.encode(digest.as_ref());
    if accept.as_deref() != Some(expected.as_str()) {
        return Err(ProbeError::new(
            ErrorKind::Http,
            format!("{target} upgraded without the right Sec-WebSocket-Accept; it is no WebSocket server"),
        ));
    }
    details(record, |details| details.upgraded = true);
    record.end_at(head_arrived);
    if let Some(message) = &plan.send {
        record.begin(Phase::Exchange);
        write_frame(&mut stream, 0x1, message.as_bytes())
            .await
            .map_err(|error| io("sending to", error))?;
        let reply = read_message(&mut stream, target, max_bytes).await?;
        record.end_at(arrivals.latest());
        let truncated = reply.len() >= max_bytes;
        let text = String::from_utf8_lossy(&reply).into_owned();
        details(record, |details| {
            details.body = text.clone();
            details.truncated = truncated;
        });
        if let Some(expect) = &plan.expect {
            if !expect.is_match(&text) {
                record.end();
                let _ = write_frame(&mut stream, 0x8, &1000u16.to_be_bytes()).await;
                return Err(ProbeError::new(
                    ErrorKind::Expect,
                    format!(
                        "expect `{}` did not match the message from {target}",
                        expect.as_str()
                    ),
                ));
            }
        }
    }
    record.end();
    // A polite close; the server's answer is not waited for.
    let _ = write_frame(&mut stream, 0x8, &1000u16.to_be_bytes()).await;
    let _ = stream.flush().await;
    Ok(())
}

fn random_bytes<const N: usize>() -> Result<[u8; N], ProbeError> {
    let mut bytes = [0u8; N];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| ProbeError::new(ErrorKind::Internal, "the system's random source failed"))?;
    Ok(bytes)
}

/// The answer's head, up to its blank line, at most `MAX_HEAD_BYTES`, read byte by byte so
/// nothing of the first frame is taken with it.
async fn read_head<S: AsyncRead + Unpin>(
    stream: &mut S,
    target: SocketAddr,
) -> Result<String, ProbeError> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() >= MAX_HEAD_BYTES {
            return Err(ProbeError::new(
                ErrorKind::Http,
                format!("{target} sent an upgrade answer head over {MAX_HEAD_BYTES} bytes"),
            ));
        }
        let read = stream.read(&mut byte).await.map_err(|error| {
            ProbeError::new(
                ErrorKind::Connect,
                format!("reading from {target}: {error}"),
            )
        })?;
        if read == 0 {
            return Err(ProbeError::new(
                ErrorKind::Http,
                format!("{target} closed the connection before answering the upgrade"),
            ));
        }
        head.push(byte[0]);
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}

/// Writes one client frame (FIN set, masked).
async fn write_frame<S: AsyncWrite + Unpin>(
    stream: &mut S,
    opcode: u8,
    payload: &[u8],
) -> std::io::Result<()> {
    let mask = random_bytes::<4>().map_err(|error| std::io::Error::other(error.message))?;
    let mut frame = vec![0x80 | opcode];
    let length = payload.len();
    if length < 126 {
        frame.push(0x80 | length as u8);
    } else if let Ok(short) = u16::try_from(length) {
        frame.push(0x80 | 126);
        frame.extend_from_slice(&short.to_be_bytes());
    } else {
        frame.push(0x80 | 127);
        frame.extend_from_slice(&(length as u64).to_be_bytes());
    }
    frame.extend_from_slice(&mask);
    frame.extend(
        payload
            .iter()
            .enumerate()
            .map(|(index, byte)| byte ^ mask[index % 4]),
    );
    stream.write_all(&frame).await?;
    stream.flush().await
}

/// The first data message, fragments joined, control frames (ping, pong) skipped; at most
/// `max_bytes` kept and read (the rest of a longer message is not read).
async fn read_message<S: AsyncRead + Unpin>(
    stream: &mut S,
    target: SocketAddr,
    max_bytes: usize,
) -> Result<Vec<u8>, ProbeError> {
    let fail = |message: String| ProbeError::new(ErrorKind::Http, message);
    let io = |error: std::io::Error| {
        ProbeError::new(
            ErrorKind::Connect,
            format!("reading from {target}: {error}"),
        )
    };
    let mut message = Vec::new();
    loop {
        let mut header = [0u8; 2];
        stream.read_exact(&mut header).await.map_err(io)?;
        let fin = header[0] & 0x80 != 0;
        let opcode = header[0] & 0x0f;
        let masked = header[1] & 0x80 != 0;
        let length = match header[1] & 0x7f {
            126 => {
                let mut bytes = [0u8; 2];
                stream.read_exact(&mut bytes).await.map_err(io)?;
                u64::from(u16::from_be_bytes(bytes))
            }
            127 => {
                let mut bytes = [0u8; 8];
                stream.read_exact(&mut bytes).await.map_err(io)?;
                u64::from_be_bytes(bytes)
            }
            short => u64::from(short),
        };
        let mut mask = [0u8; 4];
        if masked {
            stream.read_exact(&mut mask).await.map_err(io)?;
        }
        if opcode == 0x8 {
            return Err(fail(format!(
                "{target} closed the WebSocket before answering"
            )));
        }
        let room = max_bytes.saturating_sub(message.len()) as u64;
        let take = length.min(room);
        let mut payload = vec![0u8; usize::try_from(take).unwrap_or(0)];
        stream.read_exact(&mut payload).await.map_err(io)?;
        if masked {
            for (index, byte) in payload.iter_mut().enumerate() {
                *byte ^= mask[index % 4];
            }
        }
        match opcode {
            // ping and pong: not the answer.
            0x9 | 0xA => {
                if take < length {
                    return Err(fail(format!(
                        "{target} sent a control frame over {max_bytes} bytes"
                    )));
                }
                continue;
            }
            0x0..=0x2 => {
                message.extend_from_slice(&payload);
                if fin || take < length {
                    return Ok(message);
                }
            }
            other => {
                return Err(fail(format!(
                    "{target} sent a frame of unknown opcode {other}"
                )))
            }
        }
    }
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

impl Section for WebsocketDetails {
    fn body(&mut self) -> Option<Body<'_>> {
        Some(Body {
            text: &mut self.body,
            truncated: &mut self.truncated,
            bytes: &mut self.body_bytes,
        })
    }

    fn seen(&self) -> String {
        match (self.upgraded, self.status) {
            (true, _) if self.body.is_empty() => "upgraded".to_string(),
            (true, _) => format!(
                "upgraded, a message of {} bytes back",
                self.body_bytes.unwrap_or(self.body.len())
            ),
            (false, Some(status)) => format!("upgrade answered {status}"),
            (false, None) => "no answer to the upgrade".to_string(),
        }
    }
}

/// The `websocket` check type, listed in `checks::KINDS`.
pub const KIND: CheckKind = CheckKind {
    check_type: CheckType::Websocket,
    assertion_keys: &[AssertionKey::Body],
    judge,
    series: &[SeriesSpec {
        name: "probe_websocket_duration_seconds",
        help: "Duration of each phase of the last WebSocket probe of the instance",
    }],
    write_series,
    workers_help: "Concurrent WebSocket probes.",
};

impl Probe for WebsocketPlan {
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

/// The message, for assertions; without them, an upgrade (and an answer that matched
/// `expect`) passes.
fn judge<'a>(response: &'a Response, observation: &mut Observation<'a>) -> Option<bool> {
    let websocket = response.sections.websocket.as_ref()?;
    observation.body = &websocket.body;
    Some(websocket.upgraded)
}

fn write_series(response: &Response, out: &mut dyn SeriesOut) {
    series::write_phases(
        out,
        "probe_websocket_duration_seconds",
        &response.timings,
        &[
            ("resolve", series::resolve),
            ("connect", series::connect),
            ("tls", series::tls),
            ("processing", series::processing),
            ("exchange", |timings| timings.exchange),
        ],
    );
}

impl super::TypeSpec for WebsocketSpec {
    type Plan = WebsocketPlan;
    type Error = WebsocketDefinitionError;

    fn compile(
        &self,
        _timeout: std::time::Duration,
    ) -> Result<WebsocketPlan, WebsocketDefinitionError> {
        WebsocketPlan::compile(self)
    }

    fn target(&self) -> String {
        self.url.clone()
    }
}
