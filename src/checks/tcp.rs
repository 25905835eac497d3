//! The TCP probe: connect, optionally TLS, then the check's send/expect steps, each phase timed
//! on its own. An `expect` is a regex over the bytes read since the previous match; reading
//! stops at the first match, when the peer closes, or at `runner.max_body_bytes`, and never
//! goes past that cap. One fresh connection per probe, one attempt.

use super::arrival::{Arrivals, StampedStream};
use super::net::{connect_tcp, is_tls_failure};
use super::response::{Body, Response, Section};
use super::series::{self, SeriesOut, SeriesSpec};
use super::settings::TlsOption;
use super::starttls::Starttls;
use super::tls_client::{
    await_client_auth_verdict, handshake, watch_client_auth, TlsKeys, TlsTarget, TlsTargetError,
};
use super::AssertionKey;
use super::Observation;
use super::Observed;
use super::{CheckKind, Probe, ProbeFuture};
use super::{Phase, ProbeContext, ProbeRecord};
use crate::checks::CheckType;
use crate::model::{split_host_port, ErrorKind, ProbeError};
use crate::problem::KeyPath;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

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

/// Compiled regexes may not grow beyond this, as for assertions.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum TcpDefinitionError {
    #[error("address `{address}` is not valid: {reason}")]
    Address { address: String, reason: String },
    #[error("step #{0} must have exactly one of `send` and `expect`")]
    Step(usize),
    #[error("step #{index}: expect `{pattern}` is not a valid regex: {reason}")]
    Regex {
        index: usize,
        pattern: String,
        reason: String,
    },
    #[error("{0}")]
    Tls(#[from] TlsTargetError),
}

impl super::SpecError for TcpDefinitionError {
    fn key(&self) -> KeyPath {
        match self {
            TcpDefinitionError::Address { .. } => KeyPath::dotted("address"),
            // Steps count from 1 in messages.
            TcpDefinitionError::Step(number) => {
                KeyPath::dotted("steps").index(number.saturating_sub(1))
            }
            TcpDefinitionError::Regex { index, .. } => KeyPath::dotted("steps")
                .index(index.saturating_sub(1))
                .key("expect"),
            TcpDefinitionError::Tls(error) => error.key(),
        }
    }
}

#[derive(Debug)]
enum Step {
    Send(Vec<u8>),
    Expect(regex::bytes::Regex),
}

/// Bytes sent by a check's steps past which it is worth keeping compiled: copying them at every
/// run would cost more than keeping them.
const KEPT_SENT_BYTES: usize = 1024;

/// A compiled TCP check.
#[derive(Debug)]
pub struct TcpPlan {
    host: String,
    port: u16,
    tls: Option<TlsTarget>,
    steps: Vec<Step>,
    source_ip: Option<std::net::IpAddr>,
    starttls: Option<super::starttls::Starttls>,
}

impl TcpPlan {
    pub fn compile(spec: &TcpSpec) -> Result<TcpPlan, TcpDefinitionError> {
        let (host, port) =
            split_host_port(&spec.address).map_err(|reason| TcpDefinitionError::Address {
                address: spec.address.clone(),
                reason,
            })?;
        // STARTTLS turns TLS on, with the default settings unless the table gives others.
        let default_settings = super::settings::TlsSettings::default();
        let table = match (spec.tls.settings(), spec.starttls) {
            (None, Some(_)) => Some(&default_settings),
            (table, _) => table,
        };
        let tls = TlsTarget::compile(
            TlsKeys {
                table,
                server_name: spec.server_name.as_deref(),
                ca_file: spec.ca_file.as_deref(),
                insecure_skip_verify: spec.insecure_skip_verify,
            },
            &host,
        )?;
        let steps = spec
            .steps
            .iter()
            .enumerate()
            .map(|(index, step)| match (&step.send, &step.expect) {
                (Some(send), None) => Ok(Step::Send(send.as_bytes().to_vec())),
                (None, Some(pattern)) => regex::bytes::RegexBuilder::new(pattern)
                    .size_limit(REGEX_SIZE_LIMIT)
                    .dfa_size_limit(REGEX_SIZE_LIMIT)
                    .build()
                    .map(Step::Expect)
                    .map_err(|error| TcpDefinitionError::Regex {
                        index: index + 1,
                        pattern: pattern.clone(),
                        reason: error.to_string(),
                    }),
                _ => Err(TcpDefinitionError::Step(index + 1)),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(TcpPlan {
            host,
            port,
            tls,
            steps,
            source_ip: spec.source_ip,
            starttls: spec.starttls,
        })
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn port(&self) -> u16 {
        self.port
    }
}

/// Probes `target`, recording phases and what was received in `record` as they happen.
pub async fn probe(
    ctx: &ProbeContext,
    plan: &TcpPlan,
    target: SocketAddr,
    deadline: tokio::time::Instant,
    record: &mut ProbeRecord,
) -> Result<(), ProbeError> {
    // Raw TCP services speak no ALPN protocol, so none is offered. The probe's own copy of the
    // configuration notes whether the server asks for a client certificate.
    let tls = match &plan.tls {
        Some(tls) => {
            let (config, server_name) = tls.client_config(ctx, &[])?;
            let mut config = Arc::unwrap_or_clone(config);
            let watch = watch_client_auth(&mut config);
            Some((Arc::new(config), server_name, watch))
        }
        None => None,
    };
    record.sections.tcp = Some(Box::new(TcpDetails {
        connected: false,
        body: String::new(),
        truncated: false,
        body_bytes: None,
        steps_done: 0,
    }));
    let mut tcp = connect_tcp(target, plan.source_ip, record).await?;
    if let Some(protocol) = plan.starttls {
        super::starttls::negotiate(&mut tcp, protocol, target, record).await?;
    }
    let max_bytes = ctx.max_body_bytes;
    let (tcp, arrivals) = StampedStream::new(tcp, ctx.max_arrival_correction);
    let setup = ExchangeSetup {
        plan,
        target,
        max_bytes,
        arrivals: &arrivals,
    };
    match tls {
        Some((config, server_name, watch)) => {
            let mut stream = handshake(config, server_name, tcp, target, record).await?;
            let handshake_seconds = record.timings.tls;
            exchange(&mut stream, setup, record).await?;
            // Without an expect step nothing was read: a TLS 1.3 server's refusal of the client
            // certificate would go unseen.
            if !plan
                .steps
                .iter()
                .any(|step| matches!(step, Step::Expect(_)))
            {
                await_client_auth_verdict(&mut stream, &watch, target, handshake_seconds, deadline)
                    .await?;
            }
            Ok(())
        }
        None => exchange(tcp, setup, record).await,
    }
}

/// What the send/expect steps run against.
#[derive(Clone, Copy)]
struct ExchangeSetup<'a> {
    plan: &'a TcpPlan,
    target: SocketAddr,
    max_bytes: usize,
    /// When the stream's reads arrived: a last expect step ends the exchange when the bytes it
    /// matched arrived, not when the probe got to them.
    arrivals: &'a Arrivals,
}

async fn exchange<S>(
    mut stream: S,
    ExchangeSetup {
        plan,
        target,
        max_bytes,
        arrivals,
    }: ExchangeSetup<'_>,
    record: &mut ProbeRecord,
) -> Result<(), ProbeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    set_details(record, |details| details.connected = true);
    record.begin(Phase::Exchange);
    let mut received: Vec<u8> = Vec::new();
    // Where the next expect starts looking: just past the previous match.
    let mut search_from = 0;
    let mut chunk = vec![0u8; 16 * 1024];
    let mut last_sent = None;
    for (index, step) in plan.steps.iter().enumerate() {
        match step {
            Step::Send(bytes) => {
                stream.write_all(bytes).await.map_err(|error| {
                    ProbeError::new(
                        ErrorKind::Connect,
                        format!("step #{}: sending to {target}: {error}", index + 1),
                    )
                })?;
                stream.flush().await.map_err(|error| {
                    ProbeError::new(
                        ErrorKind::Connect,
                        format!("step #{}: sending to {target}: {error}", index + 1),
                    )
                })?;
                last_sent = Some(Instant::now());
            }
            Step::Expect(regex) => loop {
                if let Some(found) = regex.find(&received[search_from..]) {
                    search_from += found.end();
                    break;
                }
                if received.len() >= max_bytes {
                    set_details(record, |details| details.truncated = true);
                    return Err(ProbeError::new(
                        ErrorKind::Expect,
                        format!(
                            "step #{}: expect `{}` found no match in the first {max_bytes} bytes (runner.max_body_bytes)",
                            index + 1,
                            regex.as_str()
                        ),
                    ));
                }
                let room = (max_bytes - received.len()).min(chunk.len());
                let read = stream.read(&mut chunk[..room]).await.map_err(|error| {
                    // A TLS alert here is the server refusing the session (on TLS 1.3, its
                    // verdict on the client certificate comes after the handshake).
                    let kind = if is_tls_failure(&error) {
                        ErrorKind::Tls
                    } else {
                        ErrorKind::Connect
                    };
                    ProbeError::new(
                        kind,
                        format!("step #{}: reading from {target}: {error}", index + 1),
                    )
                })?;
                if read == 0 {
                    return Err(ProbeError::new(
                        ErrorKind::Expect,
                        format!(
                            "step #{}: expect `{}` found no match before {target} closed the connection ({} bytes received)",
                            index + 1,
                            regex.as_str(),
                            received.len()
                        ),
                    ));
                }
                received.extend_from_slice(&chunk[..read]);
                let text = String::from_utf8_lossy(&received).into_owned();
                set_details(record, |details| details.body = text);
            },
        }
        set_details(record, |details| details.steps_done = index + 1);
    }
    // After a last send the exchange ends now; after a last expect, when its match arrived,
    // or when the last send went out if the match was already there.
    let ended = match plan.steps.last() {
        Some(Step::Expect(_)) => arrivals
            .latest()
            .map(|arrived| last_sent.map_or(arrived, |sent: Instant| arrived.max(sent))),
        _ => None,
    };
    record.end_at(ended);
    Ok(())
}

fn set_details(record: &mut ProbeRecord, change: impl FnOnce(&mut TcpDetails)) {
    if let Some(details) = record.sections.tcp.as_mut() {
        change(details);
    }
}

/// The values of the tcp assertion keys (`body` is read from the details directly).
pub fn observed(details: &TcpDetails) -> Vec<(AssertionKey, Observed)> {
    vec![(
        AssertionKey::Connected,
        Observed::Text(details.connected.to_string()),
    )]
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

impl Section for TcpDetails {
    fn body(&mut self) -> Option<Body<'_>> {
        Some(Body {
            text: &mut self.body,
            truncated: &mut self.truncated,
            bytes: &mut self.body_bytes,
        })
    }

    fn seen(&self) -> String {
        if self.connected {
            format!("connected, {} bytes received", self.body.len())
        } else {
            "not connected".to_string()
        }
    }
}

/// The `tcp` check type, listed in `checks::KINDS`.
pub const KIND: CheckKind = CheckKind {
    check_type: CheckType::Tcp,
    assertion_keys: &[AssertionKey::Connected, AssertionKey::Body],
    judge,
    series: &[SeriesSpec {
        name: "probe_tcp_duration_seconds",
        help: "Duration of each phase of the last TCP probe of the instance",
    }],
    write_series,
    workers_help: "Concurrent TCP probes.",
};

impl Probe for TcpPlan {
    fn host_and_port(&self) -> (&str, u16) {
        (self.host(), self.port())
    }

    /// A step's regex, TLS settings of its own (files read and checked), more than
    /// `KEPT_ENTRIES` steps or more than `KEPT_SENT_BYTES` to send cost more to compile again
    /// than to keep; a plain connection compiles in a fraction of a microsecond.
    fn worth_keeping(&self) -> bool {
        let mut sent = 0;
        for step in &self.steps {
            match step {
                Step::Expect(_) => return true,
                Step::Send(bytes) => sent += bytes.len(),
            }
        }
        sent > KEPT_SENT_BYTES
            || self.steps.len() > super::KEPT_ENTRIES
            || self
                .tls
                .as_ref()
                .is_some_and(|tls| !tls.has_default_settings())
    }

    fn probe<'a>(
        &'a self,
        context: &'a ProbeContext,
        target: SocketAddr,
        deadline: tokio::time::Instant,
        record: &'a mut ProbeRecord,
    ) -> ProbeFuture<'a> {
        Box::pin(probe(context, self, target, deadline, record))
    }
}

/// What arrived, for assertions; without them, a connection that opened passes.
fn judge<'a>(response: &'a Response, observation: &mut Observation<'a>) -> Option<bool> {
    let tcp = response.sections.tcp.as_ref()?;
    observation.body = &tcp.body;
    observation.values = observed(tcp);
    Some(tcp.connected)
}

fn write_series(response: &Response, out: &mut dyn SeriesOut) {
    series::write_phases(
        out,
        "probe_tcp_duration_seconds",
        &response.timings,
        &[
            ("resolve", series::resolve),
            ("connect", series::connect),
            ("starttls", |timings| timings.starttls),
            ("tls", series::tls),
            ("exchange", |timings| timings.exchange),
        ],
    );
}

impl super::TypeSpec for TcpSpec {
    type Plan = TcpPlan;
    type Error = TcpDefinitionError;

    fn compile(&self, _timeout: std::time::Duration) -> Result<TcpPlan, TcpDefinitionError> {
        TcpPlan::compile(self)
    }

    fn target(&self) -> String {
        self.address.clone()
    }
}
