//! What a probe saw, as assertions read it (`Observation`), and the keys assertions can
//! read (`AssertionKey`): the interface between a check type, which fills the observation
//! from its response, and `assertions`, which judges it. Each type lists the keys it fills
//! in its `CheckKind`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use std::time::Duration;

/// What an assertion looks at: `code`, `header`, `body`, `json` and `latency` apply to the
/// types that have them; the rest each belong to one type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AssertionKey {
    Code,
    Header,
    Body,
    Json,
    Latency,
    /// tcp: whether the connection (and TLS, when on) was made.
    Connected,
    /// dns: the response code (NOERROR, NXDOMAIN, SERVFAIL, ...).
    Rcode,
    /// dns: every answer record in presentation form, one per line.
    Answer,
    /// dns: how many answer records came back.
    AnswerCount,
    /// tls: time left before the earliest not-after of the chain.
    CertExpiry,
    /// tls: the leaf certificate's issuer.
    Issuer,
    /// tls: the leaf certificate's subject.
    Subject,
    /// tls: the leaf certificate's subject alternative names, one per line.
    San,
    /// tls: the negotiated version, e.g. TLSv1.3.
    TlsVersion,
    /// tls: whether the chain verified (true or false).
    ChainValid,
    /// icmp: the percentage of echo requests left unanswered.
    Loss,
    /// icmp: the mean round-trip time of the replies.
    RttAvg,
    /// icmp: the longest round-trip time of the replies.
    RttMax,
    /// grpc: the serving status (SERVING, NOT_SERVING, UNKNOWN, SERVICE_UNKNOWN).
    Status,
}

/// What a probe saw, as assertions read it. Header names are lowercase; repeated headers are
/// joined with ", ".
#[derive(Debug, Default)]
pub struct Observation<'a> {
    pub status: Option<u16>,
    pub headers: Option<&'a super::response::Headers>,
    pub body: &'a str,
    pub latency: Duration,
    /// The values of the type-specific keys (everything but code, header, body, json and
    /// latency); a key missing here reads as unavailable.
    pub values: Vec<(AssertionKey, Observed)>,
}

/// A type-specific value as assertions read it.
#[derive(Debug, Clone, PartialEq)]
pub enum Observed {
    Text(String),
    /// A duration in seconds (may be negative: a certificate that expired).
    Seconds(f64),
}

/// How an assertion's actual value must relate to its operand.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Relationship {
    Equal,
    NotEqual,
    Empty,
    NotEmpty,
    Contain,
    NotContain,
    RegExp,
    /// The regex does not match anywhere in the value.
    NotRegExp,
    GreaterThan,
    LessThan,
}
