//! The messages that travel on the bus: `CheckRequest` (checker to runners), `CheckResult`
//! (runners to whoever listens), `TestRequest` (request/reply: run this check now) and
//! `Heartbeat` (every agent, every 10 s). Their JSON is a contract shared by the bus, the API and
//! `bastion once --json`; every message carries `"version": 1`. Decoding is strict and bounded:
//! a bad message is an error value, never a panic.

pub use crate::checks::response::{
    AssertionResult, CertificateDetails, ChainDetails, HttpDetails, Response, Timings, TlsDetails,
};
use crate::checks::CheckType;
use crate::config::CheckConfig;
use crate::model::ErrorKind;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::SystemTime;

/// The only message version this build reads and writes.
pub const MESSAGE_VERSION: u32 = 1;
/// Larger payloads are refused before parsing.
pub const MAX_MESSAGE_BYTES: usize = 1024 * 1024;

/// A check that is due, with its whole definition, so runners need no configuration of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckRequest {
    /// The message format, always `1` (`MESSAGE_VERSION`); a reader refuses any other.
    pub version: u32,
    /// Identifies this run; its result echoes it.
    pub run_id: u64,
    /// When the run was due.
    #[serde(with = "crate::time_format")]
    pub scheduled_at: SystemTime,
    /// The checker's `runner.dispatch_deadline`: no probe of this run starts later than this
    /// after `scheduled_at` (see `run_window.rs`). Absent from older checkers.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub dispatch_deadline: Option<std::time::Duration>,
    /// The whole check definition (a `[[checks]]` entry, its secret files already read), so
    /// the runner needs no configuration of its own.
    pub check: std::sync::Arc<CheckConfig>,
    /// For a check with `instances_from = { file }`: the target groups the checker read last
    /// (shared, never copied, in one process). Absent for other checks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discovered: Option<std::sync::Arc<Vec<TargetGroup>>>,
    /// For a check with `locations`: the location this run is for. Only runners of that
    /// location receive it (its subject says so too); its result carries it back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
}

/// One group of a Prometheus file_sd file: targets and the labels they share. A checker that
/// discovers a check's instances from a file sends the groups it last read with each run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetGroup {
    /// `ip`, `ip:port`, `[v6]:port` or `host:port`.
    pub targets: Vec<String>,
    /// The group's labels, added to its targets' responses and series. Absent when empty.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// Request/reply on `{prefix}.test.{type}`: run this check definition once, now, and reply
/// with its `CheckResult` (or a `TestFailure`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TestRequest {
    /// The message format, always `1` (`MESSAGE_VERSION`); a reader refuses any other.
    pub version: u32,
    /// The check definition to run, whole, as in a `CheckRequest`.
    pub check: CheckConfig,
}

/// The reply to a `TestRequest` that could not be run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TestFailure {
    /// The message format, always `1` (`MESSAGE_VERSION`); a reader refuses any other.
    pub version: u32,
    /// Why the check could not be run (an invalid definition, no worker for its type).
    pub error: String,
}

/// Published on `{prefix}.events.{check}` when a check changes state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StateEvent {
    /// The message format, always `1` (`MESSAGE_VERSION`); a reader refuses any other.
    pub version: u32,
    /// The check's `name`.
    pub check: String,
    /// The state it left: `OK`, `WARN`, `FAIL_WAIT`, `FAIL` or `PASS_WAIT`.
    pub from: crate::model::CheckState,
    /// The state it entered (same values as `from`).
    pub to: crate::model::CheckState,
    /// When the result that caused it was taken: RFC 3339, UTC, microseconds.
    #[serde(with = "crate::time_format")]
    pub at: SystemTime,
    /// Failing instances in that result (for a check with `locations`, in the latest run of
    /// every location).
    pub failing: usize,
    /// Instances in that result (likewise).
    pub responses: usize,
    /// For a check with `locations`: each location's own state, by name. Absent otherwise.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub locations: BTreeMap<String, crate::model::CheckState>,
}

/// What each agent publishes on `{prefix}.heartbeat.{agent}` every 10 s.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// The message format, always `1` (`MESSAGE_VERSION`); a reader refuses any other.
    pub version: u32,
    /// The sending agent's `agent.id`, also the last token of the subject.
    pub agent: String,
    /// `all`, `checker` or `runner`.
    pub role: String,
    /// bastion's own version.
    pub bastion_version: String,
    /// When it was sent: RFC 3339, UTC, microseconds.
    #[serde(with = "crate::time_format")]
    pub sent_at: SystemTime,
    /// Seconds since the agent started.
    pub uptime_seconds: f64,
    /// For a checker with `ha = true`: whether it schedules now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<bool>,
    /// Per check type (`http`, `tcp`...), for agents that run probes; empty (`{}`) for a
    /// checker that probes nothing.
    #[serde(default)]
    pub workers: BTreeMap<CheckType, WorkerUsage>,
    /// For agents that run probes: the location they probe from (`runner.location`).
    /// Absent from older agents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// The agent's last heartbeat: it is shutting down, so checkers stop counting on it now
    /// instead of when its heartbeats stop.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub leaving: bool,
    /// How often the agent sends heartbeats (`agent.heartbeat_interval`), so a checker knows
    /// when one is overdue. Absent from older agents (the checker then assumes its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval_seconds: Option<f64>,
}

/// One check type's worker pool in a heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerUsage {
    /// Workers probing when the heartbeat was sent.
    pub busy: usize,
    /// The pool's size (`runner.workers.<type>`).
    pub total: usize,
}

/// Every instance's response to one run of one check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckResult {
    /// The message format, always `1` (`MESSAGE_VERSION`); a reader refuses any other.
    pub version: u32,
    /// The check's `name`.
    pub check: String,
    /// The check's type (`http`, `tcp`, `dns`, `tls`, `icmp`, `grpc`, `udp`, `websocket`),
    /// in JSON as `type`.
    #[serde(rename = "type")]
    pub check_type: CheckType,
    /// The agent that ran the probes (the checker itself for a `no_runner` result).
    pub agent: String,
    /// For a check with `locations`: the location the run was for, whose runner ran it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// The run's id, from its `CheckRequest`: increasing per checker (it starts from the
    /// clock in microseconds, so a restarted checker does not reuse one).
    pub run_id: u64,
    /// When the run was due: RFC 3339, UTC, microseconds.
    #[serde(with = "crate::time_format")]
    pub scheduled_at: SystemTime,
    /// When its last probe ended: RFC 3339, UTC, microseconds.
    #[serde(with = "crate::time_format")]
    pub finished_at: SystemTime,
    /// True when every response passes.
    pub passing: bool,
    /// One per instance; fewer only when `degraded` says some were left out.
    pub responses: Vec<Response>,
    /// Present when the result was too large for the bus and was published reduced (see
    /// `message_bounds.rs`); it then holds the counts the state machine needs. Boxed, as
    /// almost no result has it: every check's latest result is kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub degraded: Option<Box<Degraded>>,
}

/// How a result too large for the bus was reduced, and the counts over every instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Degraded {
    /// `detail_dropped` (every response, without details) or `summarised` (only those that
    /// fit, failing ones first).
    pub form: DegradedForm,
    /// Instances probed in the run.
    pub instances: usize,
    /// Of those, how many failed.
    pub failing: usize,
    /// Responses left out of `responses`.
    pub omitted: usize,
    /// Of the instances, how many never ran for want of a worker (`dispatch_timeout`);
    /// they are among `failing`. Absent from runners of older builds (read as 0).
    #[serde(default)]
    pub unmeasured: usize,
    /// In the combined view of a check with `locations` (the sink's, which incidents and
    /// notifications describe): the same counts for each location, since its responses alone
    /// no longer say them. Absent from a runner's result.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub locations: Vec<LocationCounts>,
}

/// One location's counts over every instance of its latest run, in a combined view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocationCounts {
    /// The location's name, as in the check's `locations`.
    pub location: String,
    /// Instances probed from there.
    pub instances: usize,
    /// Of those, how many failed, including those that never ran (`unmeasured`).
    pub failing: usize,
    /// Of the instances, how many never ran for want of a worker.
    pub unmeasured: usize,
}

/// How the instances of one run count: the one rule the state machine and history share.
/// An instance that never ran for want of a worker (`dispatch_timeout`) measured nothing
/// about the target, so it is neither failing nor passing; a run where no instance was
/// measured moves no state and is `unmeasured` in history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunCounts {
    /// Instances in the run, measured or not.
    pub instances: usize,
    /// Instances that ran and failed.
    pub failing: usize,
    /// Instances that never ran (`dispatch_timeout`).
    pub unmeasured: usize,
}

impl RunCounts {
    /// No instance was measured (or there were none).
    pub fn nothing_measured(&self) -> bool {
        self.instances == 0 || self.unmeasured >= self.instances
    }
}

/// The reduced forms of a result, mildest first. Also the `form` label of
/// `bastion_results_degraded_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DegradedForm {
    /// Every response is there, without bodies, headers, certificate chains or DNS answers,
    /// and with texts cut short.
    DetailDropped,
    /// As `DetailDropped`, but only the responses that fit, failing ones first.
    Summarised,
}

impl DegradedForm {
    pub const ALL: [DegradedForm; 2] = [DegradedForm::DetailDropped, DegradedForm::Summarised];

    pub fn as_str(self) -> &'static str {
        match self {
            DegradedForm::DetailDropped => "detail_dropped",
            DegradedForm::Summarised => "summarised",
        }
    }
}

impl CheckResult {
    /// Instances probed in the run, including any left out of a degraded result.
    pub fn instances(&self) -> usize {
        self.degraded
            .as_ref()
            .map_or(self.responses.len(), |degraded| degraded.instances)
    }

    /// Failing instances in the run, including any left out of a degraded result, and
    /// including those that never ran (`dispatch_timeout`): what `passing` says.
    pub fn failing(&self) -> usize {
        match &self.degraded {
            Some(degraded) => degraded.failing,
            None => self.responses.iter().filter(|r| !r.passing).count(),
        }
    }

    /// Instances that never ran for want of a worker, including any left out of a degraded
    /// result.
    pub fn unmeasured(&self) -> usize {
        match &self.degraded {
            Some(degraded) => degraded.unmeasured,
            None => self
                .responses
                .iter()
                .filter(|r| r.error_kind().is_some_and(ErrorKind::is_unmeasured))
                .count(),
        }
    }

    /// How the run's instances count for its check's state and its history.
    pub fn counts(&self) -> RunCounts {
        let unmeasured = self.unmeasured();
        RunCounts {
            instances: self.instances(),
            failing: self.failing().saturating_sub(unmeasured),
            unmeasured,
        }
    }
}

/// Why a bus payload was refused. The reason is a bounded metric label.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("payload of {0} bytes is larger than the {MAX_MESSAGE_BYTES} allowed")]
    TooLarge(usize),
    #[error("payload is not a valid message: {0}")]
    Json(#[from] serde_json::Error),
    #[error("message version {0} is not supported; this build reads version {MESSAGE_VERSION}")]
    Version(u64),
    #[error("check definition is invalid: {0}")]
    Invalid(String),
    #[error("a {found} arrived where a {expected} was expected")]
    UnexpectedType {
        expected: &'static str,
        found: &'static str,
    },
}

impl DecodeError {
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::TooLarge(_) => "too_large",
            DecodeError::Json(_) => "json",
            DecodeError::Version(_) => "version",
            DecodeError::Invalid(_) => "invalid",
            DecodeError::UnexpectedType { .. } => "unexpected_type",
        }
    }
}

/// What a bus message carries. Between components of one process (the embedded bus) a request
/// or a result travels as the typed value itself, shared and never copied or encoded; JSON is
/// made only where bytes leave the process (NATS, the API, `once --json`). A consumer takes
/// either form through `request()` or `result()`, so it need not know which bus it is on.
#[derive(Debug, Clone)]
pub enum Payload {
    /// Bytes from outside the process, or a message that is bytes by nature.
    Bytes(bytes::Bytes),
    Request(std::sync::Arc<CheckRequest>),
    Result(std::sync::Arc<CheckResult>),
}

impl From<bytes::Bytes> for Payload {
    fn from(bytes: bytes::Bytes) -> Payload {
        Payload::Bytes(bytes)
    }
}

impl Payload {
    /// The request carried, decoded from bytes if it came as bytes.
    pub fn request(&self) -> Result<std::sync::Arc<CheckRequest>, DecodeError> {
        match self {
            Payload::Request(request) => Ok(std::sync::Arc::clone(request)),
            Payload::Bytes(bytes) => decode(bytes).map(std::sync::Arc::new),
            Payload::Result(_) => Err(self.unexpected("request")),
        }
    }

    /// The result carried, decoded from bytes if it came as bytes.
    pub fn result(&self) -> Result<std::sync::Arc<CheckResult>, DecodeError> {
        match self {
            Payload::Result(result) => Ok(std::sync::Arc::clone(result)),
            Payload::Bytes(bytes) => decode(bytes).map(std::sync::Arc::new),
            Payload::Request(_) => Err(self.unexpected("result")),
        }
    }

    /// Decodes a bytes payload as `T` (a typed payload is refused: it is not a `T`).
    pub fn decode<T: serde::de::DeserializeOwned>(&self) -> Result<T, DecodeError> {
        match self {
            Payload::Bytes(bytes) => decode(bytes),
            _ => Err(self.unexpected("message in bytes")),
        }
    }

    /// The payload as bytes for the network: typed values are encoded to their JSON.
    pub fn to_bytes(&self) -> Result<bytes::Bytes, serde_json::Error> {
        match self {
            Payload::Bytes(bytes) => Ok(bytes.clone()),
            Payload::Request(request) => encode(&**request),
            Payload::Result(result) => encode(&**result),
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Payload::Bytes(_) => "message in bytes",
            Payload::Request(_) => "request",
            Payload::Result(_) => "result",
        }
    }

    fn unexpected(&self, expected: &'static str) -> DecodeError {
        DecodeError::UnexpectedType {
            expected,
            found: self.kind(),
        }
    }
}

#[derive(Deserialize)]
struct VersionProbe {
    version: u64,
}

/// Decodes a message: size first, then the version, then the body, so a message from a newer
/// build is reported as such instead of as a shape error.
pub fn decode<T: serde::de::DeserializeOwned>(payload: &[u8]) -> Result<T, DecodeError> {
    if payload.len() > MAX_MESSAGE_BYTES {
        return Err(DecodeError::TooLarge(payload.len()));
    }
    let probe: VersionProbe = serde_json::from_slice(payload)?;
    if probe.version != u64::from(MESSAGE_VERSION) {
        return Err(DecodeError::Version(probe.version));
    }
    Ok(serde_json::from_slice(payload)?)
}

pub fn encode<T: Serialize>(message: &T) -> Result<bytes::Bytes, serde_json::Error> {
    serde_json::to_vec(message).map(bytes::Bytes::from)
}

#[cfg(test)]
impl CheckResult {
    /// For unit tests: run 1 of the http check `web` by agent `a` at the epoch, passing when
    /// every response does.
    pub(crate) fn of_web(responses: Vec<Response>) -> CheckResult {
        CheckResult {
            version: MESSAGE_VERSION,
            check: "web".into(),
            check_type: CheckType::Http,
            agent: "a".into(),
            location: None,
            run_id: 1,
            scheduled_at: SystemTime::UNIX_EPOCH,
            finished_at: SystemTime::UNIX_EPOCH,
            passing: responses.iter().all(|r| r.passing),
            responses,
            degraded: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ProbeError;

    /// The sink keeps each check's latest result: a response holds one box per type's
    /// section it has, not room for every type's (issue 20; 768 bytes with the sections
    /// inline), and its error boxed, so that it takes jemalloc's 256-byte class, not 320; the
    /// result boxes the counts of a reduced one, which almost none has.
    #[test]
    fn a_response_holds_its_sections_behind_boxes() {
        let size = std::mem::size_of::<Response>();
        assert!(size <= 256, "Response is {size} bytes");
        let size = std::mem::size_of::<CheckResult>();
        assert!(size <= 160, "CheckResult is {size} bytes");
    }

    #[test]
    fn decode_refuses_bad_payloads_with_a_reason() {
        let too_large = vec![b' '; MAX_MESSAGE_BYTES + 1];
        let cases: [(&[u8], &str); 4] = [
            (b"not json", "json"),
            (br#"{"version":2,"run_id":1}"#, "version"),
            (br#"{"version":1,"run_id":1}"#, "json"),
            (&too_large, "too_large"),
        ];
        for (payload, reason) in cases {
            let error = decode::<CheckRequest>(payload).unwrap_err();
            assert_eq!(error.reason(), reason, "{error}");
        }
    }

    #[test]
    fn result_json_has_the_contract_shape() {
        let result = CheckResult {
            version: MESSAGE_VERSION,
            check: "web".into(),
            check_type: CheckType::Http,
            agent: "bastion-1".into(),
            location: None,
            run_id: 7,
            scheduled_at: SystemTime::UNIX_EPOCH,
            finished_at: SystemTime::UNIX_EPOCH + std::time::Duration::from_micros(1_500_001),
            passing: false,
            responses: vec![Response::failed(
                "127.0.0.2:8443".into(),
                ProbeError::new(ErrorKind::DispatchTimeout, "no http worker free within 30s"),
                Timings::default(),
            )],
            degraded: None,
        };
        let json: serde_json::Value = serde_json::to_value(&result).unwrap();
        assert_eq!(json["type"], "http");
        assert_eq!(json["finished_at"], "1970-01-01T00:00:01.500001Z");
        assert_eq!(json["responses"][0]["error"]["kind"], "dispatch_timeout");
        assert_eq!(json["responses"][0]["http"], serde_json::Value::Null);
        assert_eq!(json["responses"][0]["timings"]["total"], 0.0);
        let back: CheckResult = decode(&encode(&result).unwrap()).unwrap();
        assert_eq!(back, result);
    }

    /// A type's own section is a key of the response named after the type, beside `http` and
    /// `tls`, as before sections were registered with their type; a section of the wrong
    /// shape is refused, not dropped.
    #[test]
    fn a_types_section_is_a_key_of_the_response_named_after_it() {
        let mut response = Response::failed(
            "127.0.0.2:53".into(),
            ProbeError::new(ErrorKind::Expect, "no match"),
            Timings::default(),
        );
        response.sections.udp = Some(Box::new(crate::checks::udp::UdpDetails {
            sent_bytes: 4,
            replied: true,
            body: "pong".into(),
            truncated: false,
            body_bytes: Some(4),
        }));
        let json = serde_json::to_value(&response).unwrap();
        assert_eq!(json["udp"]["replied"], true);
        assert_eq!(json["udp"]["body_bytes"], 4);
        assert_eq!(json["http"], serde_json::Value::Null);
        let keys: Vec<&String> = json.as_object().unwrap().keys().collect();
        for absent in ["sections", "tcp", "dns", "icmp", "grpc", "websocket"] {
            assert!(!json.as_object().unwrap().contains_key(absent), "{keys:?}");
        }
        let back: Response = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(back, response);
        let mut wrong = json;
        wrong["udp"] = serde_json::Value::String("pong".into());
        let error = serde_json::from_value::<Response>(wrong).unwrap_err();
        assert!(error.to_string().contains("invalid type"), "{error}");
    }

    /// The JSON of these messages is a contract (the bus, the API, `bastion once --json`):
    /// every public field of every struct in these files says what it holds, its unit and when
    /// it is absent, in a doc comment read from the source.
    #[test]
    fn every_field_of_the_contract_is_documented() {
        // The contract's structs: these messages, what one instance answered, and each check
        // type's own section, read from its type's file.
        let mut sources = vec![
            include_str!("messages.rs").to_owned(),
            include_str!("checks/response.rs").to_owned(),
        ];
        for (name, section) in crate::checks::SECTIONS {
            let path = format!("{}/src/checks/{name}.rs", env!("CARGO_MANIFEST_DIR"));
            let source = std::fs::read_to_string(&path).unwrap();
            let start = source
                .find(&format!("pub struct {section} {{"))
                .unwrap_or_else(|| panic!("{path} declares no `pub struct {section}`"));
            // From the struct's doc comment to its closing brace.
            let start = source[..start].rfind("\n\n").map_or(0, |blank| blank + 2);
            let end = start + source[start..].find("\n}\n").unwrap() + 3;
            sources.push(source[start..end].to_owned());
        }
        let lines: Vec<&str> = sources
            .iter()
            .flat_map(|source| {
                let code = source
                    .find("#[cfg(test)]")
                    .map_or(source.as_str(), |end| &source[..end]);
                code.lines()
            })
            .collect();
        let mut structs = Vec::new();
        let mut current = "";
        let mut fields = 0;
        let mut undocumented = Vec::new();
        for (index, line) in lines.iter().enumerate() {
            if let Some(rest) = line.strip_prefix("pub struct ") {
                current = rest.split([' ', '{', '(']).next().unwrap();
                structs.push(current);
            }
            let Some(field) = line.strip_prefix("    pub ") else {
                continue;
            };
            let name: String = field
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if name.is_empty() || !field[name.len()..].starts_with(':') {
                continue;
            }
            fields += 1;
            // Above the field: its attributes (maybe over several lines), then its comment.
            let above = lines[..index].iter().rev().find(|above| {
                let trimmed = above.trim();
                !(trimmed.starts_with("#[")
                    || trimmed.starts_with(")]")
                    || above.starts_with("        "))
            });
            if !above.is_some_and(|above| above.trim().starts_with("///")) {
                undocumented.push(format!("{current}::{}", line.trim()));
            }
        }
        for name in [
            "CheckRequest",
            "TestRequest",
            "StateEvent",
            "Heartbeat",
            "CheckResult",
            "Degraded",
            "Response",
            "HttpDetails",
            "TlsDetails",
            "CertificateDetails",
            "Timings",
            "AssertionResult",
        ]
        .into_iter()
        .chain(crate::checks::SECTIONS.iter().map(|(_, section)| *section))
        {
            assert!(structs.contains(&name), "{name} is not read: {structs:?}");
        }
        assert!(fields > 100, "only {fields} fields found");
        assert!(
            undocumented.is_empty(),
            "fields without a doc comment:\n{}",
            undocumented.join("\n")
        );
    }
}
