//! The vocabulary every layer shares: the fixed set of probe error kinds, probe errors, check
//! states, how bad a failure episode is and why it ended, instance addresses and `host:port`
//! parsing (the check types are declared by `checks`). It sits at the bottom of the crate and
//! must never import anything from it: everything else may import it.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::{IpAddr, SocketAddr};

/// The fixed set of ways a probe can fail. Each is both the JSON `error.kind` and a bounded
/// metric label, so the set stays small and never carries free text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The host name did not resolve.
    Resolve,
    /// The TCP connection could not be made.
    Connect,
    /// The TLS handshake failed, or the certificate was not trusted.
    Tls,
    /// The server broke the HTTP protocol, or closed before answering.
    Http,
    /// The response body could not be read to its end (or to the cap).
    Body,
    /// TCP: an `expect` step found no match before the peer closed or the read cap.
    Expect,
    /// DNS: the server's answer was not a valid DNS response to the query.
    Dns,
    /// ICMP: the echo socket could not be opened or used.
    Icmp,
    /// gRPC: the call failed (a grpc-status other than OK, or a malformed answer).
    Grpc,
    /// HTTP: no credentials to send: the OAuth2 token endpoint failed, refused the client or
    /// gave no usable token.
    Auth,
    /// The probe did not finish within the check's timeout.
    Timeout,
    /// No worker was free within the dispatch deadline; the probe never ran.
    DispatchTimeout,
    /// A check's location had no live runner when its run was due; nothing ran there.
    NoRunner,
    /// The probe task itself failed; a bug, reported rather than hidden.
    Internal,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Resolve => "resolve",
            ErrorKind::Connect => "connect",
            ErrorKind::Tls => "tls",
            ErrorKind::Http => "http",
            ErrorKind::Body => "body",
            ErrorKind::Expect => "expect",
            ErrorKind::Dns => "dns",
            ErrorKind::Icmp => "icmp",
            ErrorKind::Grpc => "grpc",
            ErrorKind::Auth => "auth",
            ErrorKind::Timeout => "timeout",
            ErrorKind::DispatchTimeout => "dispatch_timeout",
            ErrorKind::NoRunner => "no_runner",
            ErrorKind::Internal => "internal",
        }
    }

    /// Whether an instance with this error measured nothing about its target: the probe
    /// never ran (no worker in time, or no runner where the check asked to run).
    pub fn is_unmeasured(self) -> bool {
        matches!(self, ErrorKind::DispatchTimeout | ErrorKind::NoRunner)
    }
}

/// What went wrong in one probe: a kind from the fixed set, and a message for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{kind:?}: {message}")]
pub struct ProbeError {
    pub kind: ErrorKind,
    pub message: String,
}

impl ProbeError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ProbeError {
            kind,
            message: message.into(),
        }
    }
}

/// An IP with an optional port, as written in `instances` (and in `runner.dns_servers`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstanceAddr {
    /// An IP; the port comes from the check's URL or address.
    Ip(IpAddr),
    /// An IP and its own port.
    Socket(SocketAddr),
}

impl InstanceAddr {
    pub fn parse(text: &str) -> Option<InstanceAddr> {
        let text = text.trim();
        if let Ok(socket) = text.parse::<SocketAddr>() {
            return Some(InstanceAddr::Socket(socket));
        }
        let bare = text
            .strip_prefix('[')
            .and_then(|rest| rest.strip_suffix(']'))
            .unwrap_or(text);
        bare.parse::<IpAddr>().ok().map(InstanceAddr::Ip)
    }

    pub fn with_default_port(self, port: u16) -> SocketAddr {
        match self {
            InstanceAddr::Ip(ip) => SocketAddr::new(ip, port),
            InstanceAddr::Socket(socket) => socket,
        }
    }
}

/// Splits `host:port` (`[v6]:port` for IPv6 literals) as written in a check's `address`.
pub fn split_host_port(text: &str) -> Result<(String, u16), String> {
    let text = text.trim();
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| "an IPv6 address needs its closing `]`".to_string())?;
        let port = after
            .strip_prefix(':')
            .ok_or_else(|| "it has no port; write host:port".to_string())?;
        (host, port)
    } else {
        let (host, port) = text
            .rsplit_once(':')
            .ok_or_else(|| "it has no port; write host:port".to_string())?;
        if host.contains(':') {
            return Err("write an IPv6 address in brackets: [::1]:port".to_string());
        }
        (host, port)
    };
    if host.is_empty() {
        return Err("it has no host; write host:port".to_string());
    }
    if host
        .chars()
        .any(|c| c.is_whitespace() || c == '/' || c == '@')
    {
        return Err(format!("`{host}` is not a host name or IP"));
    }
    let port: u16 = port
        .parse()
        .map_err(|_| format!("port `{port}` is not a number from 1 to 65535"))?;
    if port == 0 {
        return Err("port 0 cannot be probed; use 1 to 65535".to_string());
    }
    Ok((host.to_string(), port))
}

/// The label bastion puts on the `probe_*` series of a check with `locations` (and on each
/// response of a check's combined view across them). Reserved for such checks only: a check
/// without `locations`, or a discovered target, may carry a `location` label of its own.
pub const LOCATION_LABEL: &str = "location";

/// The labels bastion itself puts on `probe_*` series (and Prometheus adds at scrape): a
/// check's or a discovered target's own labels may not use them.
pub const RESERVED_LABEL_NAMES: [&str; 7] = [
    "check",
    "target",
    "phase",
    "version",
    "serving_status",
    "instance",
    "job",
];

/// At most this many labels on one check, and on one discovered target.
pub const MAX_LABELS: usize = 32;
/// At most this many bytes in one label value.
pub const MAX_LABEL_VALUE_BYTES: usize = 1024;

/// Why a label cannot be put on a series; `None` when it can: a Prometheus label name
/// (`[a-zA-Z_][a-zA-Z0-9_]*`, not starting with `__`, which Prometheus reserves), none of
/// bastion's own (`RESERVED_LABEL_NAMES`), and a value of at most `MAX_LABEL_VALUE_BYTES`.
pub fn label_problem(name: &str, value: &str) -> Option<String> {
    let mut bytes = name.bytes();
    let valid = bytes
        .next()
        .is_some_and(|first| first.is_ascii_alphabetic() || first == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !valid {
        return Some(format!(
            "label name `{name}` is not a Prometheus label name: use a-z, A-Z, 0-9 and `_`, not starting with a digit"
        ));
    }
    if name.starts_with("__") {
        return Some(format!(
            "label name `{name}` starts with `__`, which Prometheus reserves; rename it"
        ));
    }
    if RESERVED_LABEL_NAMES.contains(&name) {
        return Some(format!(
            "label name `{name}` is one bastion sets itself ({}); rename it",
            RESERVED_LABEL_NAMES.join(", ")
        ));
    }
    if value.len() > MAX_LABEL_VALUE_BYTES {
        return Some(format!(
            "label `{name}` has a value of {} bytes; the most allowed is {MAX_LABEL_VALUE_BYTES}",
            value.len()
        ));
    }
    None
}

/// The first problem of a label set (`label_problem`, and at most `MAX_LABELS` labels).
pub fn labels_problem<'a>(
    labels: impl ExactSizeIterator<Item = (&'a String, &'a String)>,
) -> Option<String> {
    if labels.len() > MAX_LABELS {
        return Some(format!(
            "{} labels; the most allowed is {MAX_LABELS}",
            labels.len()
        ));
    }
    labels
        .into_iter()
        .find_map(|(name, value)| label_problem(name, value))
}

pub fn is_valid_check_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
/// Where a check stands; the state machine in `state.rs` moves it.
pub enum CheckState {
    #[serde(rename = "OK")]
    Ok,
    #[serde(rename = "WARN")]
    Warn,
    #[serde(rename = "FAIL_WAIT")]
    FailWait,
    #[serde(rename = "FAIL")]
    Fail,
    #[serde(rename = "PASS_WAIT")]
    PassWait,
}

impl CheckState {
    pub const ALL: [CheckState; 5] = [
        CheckState::Ok,
        CheckState::Warn,
        CheckState::FailWait,
        CheckState::Fail,
        CheckState::PassWait,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CheckState::Ok => "OK",
            CheckState::Warn => "WARN",
            CheckState::FailWait => "FAIL_WAIT",
            CheckState::Fail => "FAIL",
            CheckState::PassWait => "PASS_WAIT",
        }
    }
}

impl fmt::Display for CheckState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How bad an episode is: `critical` for `FAIL` (and `PASS_WAIT`), `warning` for `WARN`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Critical,
    Warning,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Critical => "critical",
            Severity::Warning => "warning",
        }
    }

    /// The worse of two.
    pub fn worst(self, other: Severity) -> Severity {
        if self == Severity::Critical || other == Severity::Critical {
            Severity::Critical
        } else {
            Severity::Warning
        }
    }
}

/// Why an episode ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// The check is calm again.
    Recovered,
    /// A reload changed what the check probes: how the old episode would have ended is
    /// unknown, and the new definition starts afresh.
    CheckChanged,
    /// The check left the configuration.
    CheckRemoved,
    /// The agent stopped following it (history from before episodes were saved, or an HA
    /// checker that took over without knowing it).
    Interrupted,
}

impl EndReason {
    pub const ALL: [EndReason; 4] = [
        EndReason::Recovered,
        EndReason::CheckChanged,
        EndReason::CheckRemoved,
        EndReason::Interrupted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Recovered => "recovered",
            EndReason::CheckChanged => "check_changed",
            EndReason::CheckRemoved => "check_removed",
            EndReason::Interrupted => "interrupted",
        }
    }

    pub fn parse(text: &str) -> Option<EndReason> {
        EndReason::ALL
            .into_iter()
            .find(|reason| reason.as_str() == text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_addresses_parse_with_and_without_port() {
        assert_eq!(
            InstanceAddr::parse("127.0.0.2"),
            Some(InstanceAddr::Ip("127.0.0.2".parse().unwrap()))
        );
        assert_eq!(
            InstanceAddr::parse("127.0.0.3:8443").map(|a| a.with_default_port(1)),
            Some("127.0.0.3:8443".parse().unwrap())
        );
        assert_eq!(
            InstanceAddr::parse("[::1]").map(|a| a.with_default_port(80)),
            Some("[::1]:80".parse().unwrap())
        );
        assert_eq!(InstanceAddr::parse("svc.internal"), None);
    }

    #[test]
    fn addresses_split_into_host_and_port() {
        assert_eq!(
            split_host_port("db.internal:5432"),
            Ok(("db.internal".to_string(), 5432))
        );
        assert_eq!(split_host_port("[::1]:53"), Ok(("::1".to_string(), 53)));
        for (bad, reason) in [
            ("db.internal", "it has no port"),
            ("::1:53", "in brackets"),
            (":80", "it has no host"),
            ("db:http", "is not a number"),
            ("db:0", "port 0"),
        ] {
            let error = split_host_port(bad).unwrap_err();
            assert!(error.contains(reason), "{bad}: {error}");
        }
    }

    #[test]
    fn check_names_are_restricted() {
        assert!(is_valid_check_name("web_1-a"));
        assert_eq!(label_problem("team", "payments"), None);
        assert_eq!(label_problem("_Env2", ""), None);
        for bad in ["2x", "a-b", "", "__meta", "check", "target", "phase", "é"] {
            assert!(label_problem(bad, "v").is_some(), "{bad}");
        }
        assert!(label_problem("team", &"x".repeat(MAX_LABEL_VALUE_BYTES + 1)).is_some());
        assert!(!is_valid_check_name("Web"));
        assert!(!is_valid_check_name(""));
        assert!(!is_valid_check_name("a b"));
    }
}
