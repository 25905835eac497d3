//! The gRPC health probe: one `grpc.health.v1.Health/Check` call on a fresh HTTP/2 connection
//! (h2c, or h2 over TLS), on hyper's client. The two messages involved are tiny, so they are
//! encoded and decoded here by hand (HealthCheckRequest: field 1, the service name;
//! HealthCheckResponse: field 1, the serving status) rather than through a protobuf stack.
//! The call's outcome is read from grpc-status in the trailers (or a trailers-only answer).

use super::arrival::{Arrivals, StampedStream};
use super::net::{connect_tcp, drive, error_chain, http_error};
use super::response::{cut, Body, Response, Section, TextBounds};
use super::series::{self, SeriesOut, SeriesSpec};
use super::settings::read_line_secret;
use super::settings::Secret;
use super::settings::TlsOption;
use super::tls_client::{handshake, TlsKeys, TlsTarget, TlsTargetError};
use super::AssertionKey;
use super::Observation;
use super::Observed;
use super::{CheckKind, Probe, ProbeFuture};
use super::{Phase, ProbeContext, ProbeRecord};
use crate::checks::CheckType;
use crate::model::{split_host_port, ErrorKind, ProbeError};
use crate::problem::Entry;
use crate::problem::KeyPath;
use crate::problem::Problem;
use crate::problem::Problems;
use bytes::{Bytes, BytesMut};
use http::header::{HeaderValue, CONTENT_TYPE, TE, USER_AGENT};
use http::{HeaderMap, Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

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

/// Reads a gRPC check's `metadata_from_files` into its `metadata_secrets`.
pub fn read_secrets(entry: &Entry, spec: &mut GrpcSpec, problems: &mut Problems) {
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

const HEALTH_CHECK_PATH: &str = "/grpc.health.v1.Health/Check";
/// A health answer is a few bytes; anything longer than this is not one.
const MAX_ANSWER_BYTES: usize = 64 * 1024;
const USER_AGENT_TEXT: &str = concat!("bastion/", env!("CARGO_PKG_VERSION"));
/// grpc-status NOT_FOUND: what Health/Check answers for a service it does not know.
const GRPC_NOT_FOUND: u32 = 5;

#[derive(Debug, thiserror::Error)]
pub enum GrpcDefinitionError {
    #[error("address `{address}` is not valid: {reason}")]
    Address { address: String, reason: String },
    #[error("{0}")]
    Tls(#[from] TlsTargetError),
    #[error("address `{0}` does not make a valid :authority")]
    Authority(String),
    #[error("metadata key `{0}` is not valid: use lowercase a-z, 0-9, `-`, `_` and `.` (binary `-bin` keys are not supported)")]
    MetadataKey(String),
    #[error("metadata key `{0}` is one bastion sets for the call; remove it")]
    MetadataReserved(String),
    #[error("metadata `{0}` has a value that is not printable ASCII")]
    MetadataValue(String),
    #[error("metadata key `{0}` is set twice (metadata and metadata_from_files)")]
    MetadataTwice(String),
}

impl super::SpecError for GrpcDefinitionError {
    fn key(&self) -> KeyPath {
        match self {
            GrpcDefinitionError::Address { .. } | GrpcDefinitionError::Authority(_) => {
                KeyPath::dotted("address")
            }
            GrpcDefinitionError::Tls(error) => error.key(),
            GrpcDefinitionError::MetadataKey(key)
            | GrpcDefinitionError::MetadataReserved(key)
            | GrpcDefinitionError::MetadataValue(key) => KeyPath::dotted("metadata").key(key),
            GrpcDefinitionError::MetadataTwice(key) => {
                KeyPath::dotted("metadata_from_files").key(key)
            }
        }
    }
}

/// A compiled gRPC health check.
#[derive(Debug)]
pub struct GrpcPlan {
    host: String,
    port: u16,
    service: String,
    tls: Option<TlsTarget>,
    uri: Uri,
    source_ip: Option<std::net::IpAddr>,
    /// Sent with each call; values from files are marked sensitive (kept out of HPACK tables).
    metadata: Vec<(http::HeaderName, HeaderValue)>,
    /// The values read from files, replaced by `[redacted]` wherever the answer echoes them.
    secrets: Vec<String>,
}

impl GrpcPlan {
    pub fn compile(spec: &GrpcSpec) -> Result<GrpcPlan, GrpcDefinitionError> {
        let (host, port) =
            split_host_port(&spec.address).map_err(|reason| GrpcDefinitionError::Address {
                address: spec.address.clone(),
                reason,
            })?;
        let tls = TlsTarget::compile(
            TlsKeys {
                table: spec.tls.settings(),
                server_name: spec.server_name.as_deref(),
                ca_file: spec.ca_file.as_deref(),
                insecure_skip_verify: spec.insecure_skip_verify,
            },
            &host,
        )?;
        let authority_host = tls
            .as_ref()
            .and_then(|tls| tls.settings().server_name.as_deref())
            .unwrap_or(&host);
        let authority = if authority_host.contains(':') {
            format!("[{authority_host}]:{port}")
        } else {
            format!("{authority_host}:{port}")
        };
        let scheme = if tls.is_some() { "https" } else { "http" };
        let uri: Uri = format!("{scheme}://{authority}{HEALTH_CHECK_PATH}")
            .parse()
            .map_err(|_| GrpcDefinitionError::Authority(spec.address.clone()))?;
        let mut metadata = Vec::new();
        let from_files = spec
            .metadata_secrets
            .iter()
            .map(|(key, secret)| (key, secret.expose(), true));
        for (key, value, sensitive) in spec
            .metadata
            .iter()
            .map(|(key, value)| (key, value.as_str(), false))
            .chain(from_files)
        {
            let valid = !key.is_empty()
                && !key.ends_with("-bin")
                && key.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.')
                });
            if !valid {
                return Err(GrpcDefinitionError::MetadataKey(key.clone()));
            }
            if key.starts_with("grpc-")
                || ["content-type", "te", "user-agent"].contains(&key.as_str())
            {
                return Err(GrpcDefinitionError::MetadataReserved(key.clone()));
            }
            if metadata
                .iter()
                .any(|(name, _): &(http::HeaderName, HeaderValue)| name.as_str() == key)
            {
                return Err(GrpcDefinitionError::MetadataTwice(key.clone()));
            }
            let name = http::HeaderName::from_bytes(key.as_bytes())
                .map_err(|_| GrpcDefinitionError::MetadataKey(key.clone()))?;
            let mut value = HeaderValue::from_str(value)
                .map_err(|_| GrpcDefinitionError::MetadataValue(key.clone()))?;
            value.set_sensitive(sensitive);
            metadata.push((name, value));
        }
        let secrets = spec
            .metadata_secrets
            .values()
            .map(|secret| secret.expose().to_string())
            .filter(|secret| !secret.is_empty())
            .collect();
        Ok(GrpcPlan {
            host,
            port,
            service: spec.service.clone(),
            tls,
            uri,
            source_ip: spec.source_ip,
            metadata,
            secrets,
        })
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn port(&self) -> u16 {
        self.port
    }
}

/// Calls Health/Check on `target`, recording phases and the answer in `record`.
pub async fn probe(
    ctx: &ProbeContext,
    plan: &GrpcPlan,
    target: SocketAddr,
    record: &mut ProbeRecord,
) -> Result<(), ProbeError> {
    let tls = match &plan.tls {
        Some(tls) => Some(tls.client_config(ctx, &[b"h2"])?),
        None => None,
    };
    let request = build_request(plan)?;
    let tcp = connect_tcp(target, plan.source_ip, record).await?;
    let (tcp, arrivals) = StampedStream::new(tcp, ctx.max_arrival_correction);
    let answer = match tls {
        Some((config, server_name)) => {
            let stream = handshake(config, server_name, tcp, target, record).await?;
            call(TokioIo::new(stream), request, record, &arrivals)
                .await
                .map_err(|error| with_hint(error, target))?
        }
        None => call(TokioIo::new(tcp), request, record, &arrivals)
            .await
            .map_err(|error| with_hint(error, target))?,
    };
    let details = interpret(answer)?;
    record.sections.grpc = Some(Box::new(details));
    Ok(())
}

/// An HTTP/2 failure on a gRPC call usually means the peer is no gRPC server; say so.
fn with_hint(error: ProbeError, target: SocketAddr) -> ProbeError {
    if error.kind == ErrorKind::Http {
        ProbeError::new(
            error.kind,
            format!(
                "HTTP/2 call failed: {}; is {target} a gRPC server? (without tls = true, gRPC is spoken as h2c)",
                error.message
            ),
        )
    } else {
        error
    }
}

fn build_request(plan: &GrpcPlan) -> Result<Request<Full<Bytes>>, ProbeError> {
    let mut request = Request::builder()
        .method(Method::POST)
        .uri(plan.uri.clone())
        .body(Full::new(encode_request(&plan.service)))
        .map_err(|error| {
            ProbeError::new(ErrorKind::Grpc, format!("building the request: {error}"))
        })?;
    let headers = request.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    headers.insert(TE, HeaderValue::from_static("trailers"));
    headers.insert(USER_AGENT, HeaderValue::from_static(USER_AGENT_TEXT));
    for (name, value) in &plan.metadata {
        headers.insert(name.clone(), value.clone());
    }
    Ok(request)
}

/// What came back from one call: the HTTP status, headers, message bytes and trailers.
struct Answer {
    status: http::StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
    trailers: Option<HeaderMap>,
}

/// One Health/Check call; processing ends when the last of the answer (its trailers) arrived,
/// as `arrivals` has it from the kernel, not when this task got to it.
async fn call<IO>(
    io: IO,
    request: Request<Full<Bytes>>,
    record: &mut ProbeRecord,
    arrivals: &Arrivals,
) -> Result<Answer, ProbeError>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    // The HTTP/2 connection preface and SETTINGS count in processing, as for an http probe.
    record.begin(Phase::Processing);
    let (mut sender, connection) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
        .await
        .map_err(http_error)?;
    drive(connection, async move {
        let response = sender.send_request(request).await.map_err(http_error)?;
        let (head, mut body) = response.into_parts();
        let mut bytes = Vec::new();
        let mut trailers = None;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|error| {
                ProbeError::new(
                    ErrorKind::Grpc,
                    format!("reading the answer: {}", error_chain(&error)),
                )
            })?;
            match frame.into_data() {
                Ok(data) => {
                    if bytes.len() + data.len() > MAX_ANSWER_BYTES {
                        return Err(ProbeError::new(
                            ErrorKind::Grpc,
                            format!("the answer is longer than {MAX_ANSWER_BYTES} bytes; it is not a health answer"),
                        ));
                    }
                    bytes.extend_from_slice(&data);
                }
                Err(frame) => {
                    if let Ok(map) = frame.into_trailers() {
                        trailers = Some(map);
                    }
                }
            }
        }
        record.end_at(arrivals.latest());
        Ok(Answer {
            status: head.status,
            headers: head.headers,
            body: bytes,
            trailers,
        })
    })
    .await
}

/// Turns an answer into the serving status, or the reason it carries none.
fn interpret(answer: Answer) -> Result<GrpcDetails, ProbeError> {
    if answer.status != http::StatusCode::OK {
        return Err(ProbeError::new(
            ErrorKind::Grpc,
            format!(
                "HTTP status {} instead of 200; is this a gRPC server?",
                answer.status.as_u16()
            ),
        ));
    }
    // grpc-status is in the trailers, or in the headers of a trailers-only answer.
    let status_source = answer
        .trailers
        .as_ref()
        .filter(|trailers| trailers.contains_key("grpc-status"))
        .unwrap_or(&answer.headers);
    let grpc_status = status_source
        .get("grpc-status")
        .and_then(|value| value.to_str().ok())
        .and_then(|text| text.trim().parse::<u32>().ok())
        .ok_or_else(|| {
            ProbeError::new(
                ErrorKind::Grpc,
                "the answer carries no valid grpc-status; is this a gRPC server?",
            )
        })?;
    let grpc_message = status_source
        .get("grpc-message")
        .map(|value| percent_decode(value.as_bytes()));
    match grpc_status {
        0 => {
            let status = decode_response(&answer.body)?;
            Ok(GrpcDetails {
                status: serving_status_name(status).to_string(),
                grpc_status,
                grpc_message,
            })
        }
        GRPC_NOT_FOUND => Ok(GrpcDetails {
            status: "SERVICE_UNKNOWN".to_string(),
            grpc_status,
            grpc_message,
        }),
        other => Err(ProbeError::new(
            ErrorKind::Grpc,
            format!(
                "the call failed with grpc-status {other} ({}){}",
                grpc_status_name(other),
                grpc_message
                    .map(|message| format!(": {message}"))
                    .unwrap_or_default()
            ),
        )),
    }
}

/// A length-prefixed gRPC message holding HealthCheckRequest { service = 1 }.
fn encode_request(service: &str) -> Bytes {
    let mut message = Vec::with_capacity(service.len() + 6);
    if !service.is_empty() {
        message.push(0x0a); // field 1, length-delimited
        put_varint(&mut message, service.len() as u64);
        message.extend_from_slice(service.as_bytes());
    }
    let mut framed = BytesMut::with_capacity(message.len() + 5);
    framed.extend_from_slice(&[0]); // not compressed
    framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
    framed.extend_from_slice(&message);
    framed.freeze()
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn get_varint(bytes: &[u8], at: &mut usize) -> Option<u64> {
    let mut value: u64 = 0;
    for shift in (0..64).step_by(7) {
        let byte = *bytes.get(*at)?;
        *at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

/// Reads HealthCheckResponse { status = 1 } from one length-prefixed message. Unknown fields
/// are skipped; a missing status is 0 (UNKNOWN), as proto3 says.
fn decode_response(body: &[u8]) -> Result<u64, ProbeError> {
    let bad = |reason: &str| {
        ProbeError::new(
            ErrorKind::Grpc,
            format!("the answer is not a HealthCheckResponse: {reason}"),
        )
    };
    let [flag, a, b, c, d, rest @ ..] = body else {
        return Err(bad("it is shorter than a message header"));
    };
    if *flag != 0 {
        return Err(bad("it is compressed, though no compression was offered"));
    }
    let length = u32::from_be_bytes([*a, *b, *c, *d]) as usize;
    let message = rest
        .get(..length)
        .ok_or_else(|| bad("it is shorter than its length prefix"))?;
    let mut status = 0;
    let mut at = 0;
    while at < message.len() {
        let key = get_varint(message, &mut at).ok_or_else(|| bad("a field key is cut short"))?;
        let (field, wire_type) = (key >> 3, key & 7);
        match wire_type {
            0 => {
                let value =
                    get_varint(message, &mut at).ok_or_else(|| bad("a varint is cut short"))?;
                if field == 1 {
                    status = value;
                }
            }
            1 => at += 8,
            2 => {
                let length =
                    get_varint(message, &mut at).ok_or_else(|| bad("a length is cut short"))?;
                at = at.saturating_add(usize::try_from(length).unwrap_or(usize::MAX));
            }
            5 => at += 4,
            other => return Err(bad(&format!("wire type {other} is not valid here"))),
        }
        if at > message.len() {
            return Err(bad("a field runs past the end"));
        }
    }
    Ok(status)
}

fn serving_status_name(status: u64) -> &'static str {
    match status {
        1 => "SERVING",
        2 => "NOT_SERVING",
        3 => "SERVICE_UNKNOWN",
        _ => "UNKNOWN",
    }
}

fn grpc_status_name(code: u32) -> &'static str {
    match code {
        0 => "OK",
        1 => "CANCELLED",
        2 => "UNKNOWN",
        3 => "INVALID_ARGUMENT",
        4 => "DEADLINE_EXCEEDED",
        5 => "NOT_FOUND",
        6 => "ALREADY_EXISTS",
        7 => "PERMISSION_DENIED",
        8 => "RESOURCE_EXHAUSTED",
        9 => "FAILED_PRECONDITION",
        10 => "ABORTED",
        11 => "OUT_OF_RANGE",
        12 => "UNIMPLEMENTED",
        13 => "INTERNAL",
        14 => "UNAVAILABLE",
        15 => "DATA_LOSS",
        16 => "UNAUTHENTICATED",
        _ => "not a known code",
    }
}

/// grpc-message is percent-encoded UTF-8; undecodable bytes are kept as they are.
fn percent_decode(raw: &[u8]) -> String {
    let mut out = Vec::with_capacity(raw.len());
    let mut index = 0;
    while index < raw.len() {
        if raw[index] == b'%' && index + 2 < raw.len() {
            let hex = std::str::from_utf8(&raw[index + 1..index + 3]).ok();
            if let Some(byte) = hex.and_then(|hex| u8::from_str_radix(hex, 16).ok()) {
                out.push(byte);
                index += 3;
                continue;
            }
        }
        out.push(raw[index]);
        index += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
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

impl Section for GrpcDetails {
    fn body(&mut self) -> Option<Body<'_>> {
        None
    }

    fn bound(&mut self, bounds: &TextBounds) {
        if let Some(message) = self.grpc_message.as_mut() {
            cut(message, bounds.text_bytes);
        }
    }

    fn drop_detail(&mut self, text_bytes: usize) {
        if let Some(message) = self.grpc_message.as_mut() {
            cut(message, text_bytes);
        }
    }

    fn seen(&self) -> String {
        format!("health status {}", self.status)
    }
}

/// The `grpc` check type, listed in `checks::KINDS`.
pub const KIND: CheckKind = CheckKind {
    check_type: CheckType::Grpc,
    assertion_keys: &[AssertionKey::Status],
    judge,
    series: &[
        SeriesSpec {
            name: "probe_grpc_duration_seconds",
            help: "Duration of each phase of the last gRPC health probe of the instance",
        },
        SeriesSpec {
            name: "probe_grpc_healthcheck_response",
            help: "The serving status the instance last reported: 1 on its serving_status, 0 on the others",
        },
    ],
    write_series,
    workers_help: "Concurrent gRPC health probes.",
};

/// Every value of `probe_grpc_healthcheck_response`'s `serving_status` label.
const SERVING_STATUSES: [&str; 4] = ["UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN"];

impl Probe for GrpcPlan {
    fn host_and_port(&self) -> (&str, u16) {
        (self.host(), self.port())
    }

    fn probe<'a>(
        &'a self,
        context: &'a ProbeContext,
        target: SocketAddr,
        _deadline: tokio::time::Instant,
        record: &'a mut ProbeRecord,
    ) -> ProbeFuture<'a> {
        Box::pin(async move {
            let outcome = probe(context, self, target, record).await;
            // A server that echoes a secret sent as metadata never gets it into a result.
            let redact = |text: &mut String| {
                for secret in &self.secrets {
                    if text.contains(secret.as_str()) {
                        *text = text.replace(secret.as_str(), "[redacted]");
                    }
                }
            };
            if let Some(message) = record
                .sections
                .grpc
                .as_mut()
                .and_then(|grpc| grpc.grpc_message.as_mut())
            {
                redact(message);
            }
            outcome.map_err(|mut error| {
                redact(&mut error.message);
                error
            })
        })
    }
}

/// The serving status, for assertions; without them, SERVING passes.
fn judge<'a>(response: &'a Response, observation: &mut Observation<'a>) -> Option<bool> {
    let grpc = response.sections.grpc.as_ref()?;
    observation.values = vec![(AssertionKey::Status, Observed::Text(grpc.status.clone()))];
    Some(grpc.status == "SERVING")
}

fn write_series(response: &Response, out: &mut dyn SeriesOut) {
    series::write_phases(
        out,
        "probe_grpc_duration_seconds",
        &response.timings,
        &[
            ("resolve", series::resolve),
            ("connect", series::connect),
            ("tls", series::tls),
            ("processing", series::processing),
        ],
    );
    if let Some(grpc) = &response.sections.grpc {
        for status in SERVING_STATUSES {
            let value = if grpc.status == status { 1.0 } else { 0.0 };
            out.gauge(
                "probe_grpc_healthcheck_response",
                Some(("serving_status", status)),
                value,
            );
        }
    }
}

impl super::TypeSpec for GrpcSpec {
    type Plan = GrpcPlan;
    type Error = GrpcDefinitionError;

    fn compile(&self, _timeout: std::time::Duration) -> Result<GrpcPlan, GrpcDefinitionError> {
        GrpcPlan::compile(self)
    }

    fn target(&self) -> String {
        self.address.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_framed_protobuf() {
        assert_eq!(&encode_request("")[..], &[0, 0, 0, 0, 0]);
        assert_eq!(
            &encode_request("db")[..],
            &[0, 0, 0, 0, 4, 0x0a, 2, b'd', b'b']
        );
    }

    #[test]
    fn responses_decode_and_bad_ones_are_errors() {
        assert_eq!(decode_response(&[0, 0, 0, 0, 2, 0x08, 1]).unwrap(), 1);
        assert_eq!(decode_response(&[0, 0, 0, 0, 0]).unwrap(), 0);
        // An unknown length-delimited field before the status is skipped.
        assert_eq!(
            decode_response(&[0, 0, 0, 0, 6, 0x12, 2, b'x', b'y', 0x08, 2]).unwrap(),
            2
        );
        for bad in [
            &[0u8, 0, 0][..],
            &[1, 0, 0, 0, 2, 0x08, 1],
            &[0, 0, 0, 0, 9, 0x08, 1],
            &[0, 0, 0, 0, 2, 0x08, 0x80],
            &[0, 0, 0, 0, 3, 0x12, 9, 1],
        ] {
            assert!(decode_response(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn grpc_messages_are_percent_decoded() {
        assert_eq!(percent_decode(b"not%20found%"), "not found%");
        assert_eq!(percent_decode(b"%zz"), "%zz");
    }
}
