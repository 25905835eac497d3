//! What one instance answered (`Response`): the part of a result each check type fills, with
//! its phases (`Timings`), its type's section and each assertion's verdict. It travels on the
//! bus inside a `CheckResult` (`messages`), so its JSON is part of that contract.

use super::{AssertionKey, Relationship, Sections};
use crate::model::{ErrorKind, ProbeError};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::time::SystemTime;

/// What one instance answered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    /// The `ip:port` actually probed (or `host:port` when the host did not resolve).
    pub target: String,
    /// True when the probe succeeded, every assertion held, and (http) the status was valid.
    pub passing: bool,
    /// Null when the transport succeeded. Boxed: most kept responses have none, and without
    /// its 24 bytes a response fits the allocator's 256-byte class rather than 320.
    pub error: Option<Box<ProbeError>>,
    /// Null when no HTTP response arrived.
    pub http: Option<Box<HttpDetails>>,
    /// Null on plain connections.
    #[serde(default)]
    pub tls: Option<Box<TlsDetails>>,
    /// The check type's own section (`tcp`, `dns`, `udp`...), under the type's name; absent
    /// for the types that have none.
    #[serde(flatten)]
    pub sections: Sections,
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
    pub headers: Headers,
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

/// The headers of a response as a probe saw them: lowercase names in order, a repeated
/// header's values joined with ", ". Packed into one string (`name NUL value NUL` each), since
/// every check keeps its latest response for as long as it exists: a `BTreeMap` of `String`s
/// took about 750 bytes and eleven allocations for the five headers of a plain answer, this
/// takes one allocation of about 150 bytes. A JSON object on the bus and in the API, as the
/// map was. HTTP cannot carry a NUL in a header; one read from JSON becomes U+FFFD.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Headers {
    packed: String,
}

const HEADER_END: char = '\0';

impl Headers {
    /// Headers from (lowercase name, value) pairs in any order: sorted by name, the values
    /// of a repeated name joined in the order given.
    pub fn collect<'a>(pairs: impl IntoIterator<Item = (&'a str, Cow<'a, str>)>) -> Headers {
        // Names made clean before they are sorted and compared, so that the order and the
        // joining hold for the names as kept.
        let mut pairs: Vec<(Cow<'_, str>, Cow<'_, str>)> = pairs
            .into_iter()
            .map(|(name, value)| (clean(Cow::Borrowed(name)), clean(value)))
            .collect();
        // Stable: a repeated header's values keep their order.
        pairs.sort_by(|(one, _), (other, _)| one.cmp(other));
        let size: usize = pairs
            .iter()
            .map(|(name, value)| name.len() + value.len() + 4)
            .sum();
        let mut headers = Headers {
            packed: String::with_capacity(size),
        };
        let mut last: Option<&str> = None;
        for (name, value) in &pairs {
            if last == Some(name.as_ref()) {
                // Joined onto the value just written: drop its end, add this one.
                headers.packed.pop();
                headers.packed.push_str(", ");
                headers.packed.push_str(value);
                headers.packed.push(HEADER_END);
            } else {
                headers.push(name, value);
            }
            last = Some(name.as_ref());
        }
        headers.packed.shrink_to_fit();
        headers
    }

    /// Adds a header after the others: `name` sorts after every name already here.
    fn push(&mut self, name: &str, value: &str) {
        push_clean(&mut self.packed, name);
        self.packed.push(HEADER_END);
        push_clean(&mut self.packed, value);
        self.packed.push(HEADER_END);
    }

    /// The value of `name` (lowercase), if the response had it.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.iter()
            .find(|(found, _)| *found == name)
            .map(|(_, value)| value)
    }

    /// Each header's name and value, in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        let mut parts = self.packed.split_terminator(HEADER_END);
        std::iter::from_fn(move || Some((parts.next()?, parts.next()?)))
    }

    pub fn is_empty(&self) -> bool {
        self.packed.is_empty()
    }

    pub fn clear(&mut self) {
        self.packed = String::new();
    }

    /// The same headers with each value `change`d (cut, redacted), and only as many, in name
    /// order, as `keep` lets in; returns whether any was left out. Headers that `change` and
    /// `keep` leave as they are (a plain answer's, almost always) are not copied.
    pub fn rewrite(
        &mut self,
        mut change: impl FnMut(&str) -> Cow<'_, str>,
        mut keep: impl FnMut(&str, &str) -> bool,
    ) -> bool {
        let mut rewritten: Option<Headers> = None;
        let mut left_out = false;
        // Bytes of `packed` taken by the headers before this one.
        let mut before = 0;
        for (name, original) in self.iter() {
            let length = name.len() + original.len() + 2 * HEADER_END.len_utf8();
            let value = change(original);
            let kept = keep(name, &value);
            left_out |= !kept;
            if rewritten.is_none() && !(kept && value == original) {
                // The first header that differs: those before it are taken as they are.
                // Sized for all of it, so the headers after are pushed without growing.
                let mut packed = String::with_capacity(self.packed.len());
                packed.push_str(&self.packed[..before]);
                rewritten = Some(Headers { packed });
            }
            before += length;
            if let Some(rewritten) = rewritten.as_mut().filter(|_| kept) {
                rewritten.push(name, &value);
            }
        }
        if let Some(mut rewritten) = rewritten {
            rewritten.packed.shrink_to_fit();
            *self = rewritten;
        }
        left_out
    }
}

/// Appends `text` with any NUL (which would end it early) as U+FFFD.
fn push_clean(packed: &mut String, text: &str) {
    packed.push_str(&clean(Cow::Borrowed(text)));
}

/// `text` with any NUL as U+FFFD.
fn clean(text: Cow<'_, str>) -> Cow<'_, str> {
    if text.contains(HEADER_END) {
        Cow::Owned(text.replace(HEADER_END, "\u{fffd}"))
    } else {
        text
    }
}

impl<'a> FromIterator<(&'a str, &'a str)> for Headers {
    fn from_iter<I: IntoIterator<Item = (&'a str, &'a str)>>(pairs: I) -> Headers {
        Headers::collect(
            pairs
                .into_iter()
                .map(|(name, value)| (name, Cow::Borrowed(value))),
        )
    }
}

impl std::fmt::Debug for Headers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl Serialize for Headers {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.iter())
    }
}

impl<'de> Deserialize<'de> for Headers {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Headers, D::Error> {
        let map = BTreeMap::<String, String>::deserialize(deserializer)?;
        Ok(Headers::collect(map.iter().map(|(name, value)| {
            (name.as_str(), Cow::Borrowed(value.as_str()))
        })))
    }
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
            error: Some(Box::new(error)),
            http: None,
            tls: None,
            sections: Sections::default(),
            timings,
            assertions: Vec::new(),
            labels: BTreeMap::new(),
        }
    }

    pub fn error_kind(&self) -> Option<ErrorKind> {
        self.error.as_ref().map(|error| error.kind)
    }
}

/// The keys a response has of its own, beside its type's section.
pub const OWN_KEYS: [&str; 8] = [
    "target",
    "passing",
    "error",
    "http",
    "tls",
    "timings",
    "assertions",
    "labels",
];

/// `key` is one of `OWN_KEYS`, where the compiler can tell: a type's section may not take it.
pub(super) const fn is_own_key(key: &str) -> bool {
    let mut index = 0;
    while index < OWN_KEYS.len() {
        if super::same_text(OWN_KEYS[index], key) {
            return true;
        }
        index += 1;
    }
    false
}

/// How much of what a server decided a response keeps: on the bus, and in the API.
#[derive(Debug, Clone, Copy)]
pub struct TextBounds {
    /// Bytes of a body (what a connection, a datagram or a message carried).
    pub body_bytes: usize,
    /// Bytes of any other text a server decides: messages, names, answers.
    pub text_bytes: usize,
    /// Entries of any list a server decides: answers, certificates.
    pub list_items: usize,
}

/// A check type's own section of a response. Its type's file says how it is bounded, so the
/// bounds on the bus (`message_bounds`) hold for a new type without a line there.
pub trait Section {
    /// What the probe saw, in a few words: `bastion once` shows it, and an incident says it
    /// when the type's own verdict failed without an error or an assertion.
    fn seen(&self) -> String;
    /// The section's body, when it has one (what a connection, a datagram or a message
    /// carried): the two methods below bound it and leave it out unless a type says more.
    /// Required, so that every type says whether it carries one; a type with other text a
    /// server decides (answers, messages) bounds it in its own `bound` and `drop_detail`.
    fn body(&mut self) -> Option<Body<'_>>;
    /// Cuts what a server decided to `bounds`; a cut body sets `truncated` and keeps the
    /// length it had in `body_bytes`.
    fn bound(&mut self, bounds: &TextBounds) {
        if let Some(body) = self.body() {
            body.bound(bounds.body_bytes);
        }
    }
    /// Leaves out what the section carried (bodies, lists), keeping what it was; other texts
    /// are cut to `text_bytes`.
    fn drop_detail(&mut self, _text_bytes: usize) {
        if let Some(body) = self.body() {
            body.text.clear();
            *body.truncated = true;
        }
    }
}

/// A body in a section: its text, whether it is cut, and its length before any cut.
#[derive(Debug)]
pub struct Body<'a> {
    /// The section's `body`.
    pub text: &'a mut String,
    /// Its `truncated`.
    pub truncated: &'a mut bool,
    /// Its `body_bytes`.
    pub bytes: &'a mut Option<usize>,
}

impl Body<'_> {
    /// Cut to `limit` bytes (then `truncated`), the length before any cut kept in `bytes`.
    pub fn bound(self, limit: usize) {
        self.bytes.get_or_insert(self.text.len());
        if self.text.len() > limit {
            cut(self.text, limit);
            *self.truncated = true;
        }
    }
}

/// `text` cut to at most `limit` bytes, on a character boundary.
pub fn cut(text: &mut String, limit: usize) {
    if text.len() > limit {
        let mut end = limit;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ErrorKind;

    #[test]
    fn headers_are_a_json_object_in_name_order_as_the_map_was() {
        let pairs = [
            ("x-b", "2"),
            ("set-cookie", "a=1"),
            ("", ""),
            ("x-empty", ""),
            ("set-cookie", "b=2"),
        ];
        let headers = Headers::collect(pairs.iter().map(|(n, v)| (*n, Cow::Borrowed(*v))));
        let mut map: BTreeMap<String, String> = BTreeMap::new();
        for (name, value) in pairs {
            map.entry(name.to_string())
                .and_modify(|joined| *joined = format!("{joined}, {value}"))
                .or_insert_with(|| value.to_string());
        }
        let json = serde_json::to_string(&headers).unwrap();
        assert_eq!(json, serde_json::to_string(&map).unwrap());
        assert_eq!(headers.get("set-cookie"), Some("a=1, b=2"));
        assert_eq!(headers.get("x-empty"), Some(""));
        assert_eq!(headers.get(""), Some(""));
        assert_eq!(headers.get("x-missing"), None);
        let back: Headers = serde_json::from_str(&json).unwrap();
        assert_eq!(back, headers);
        assert_eq!(back.iter().count(), 4);
        assert!(Headers::default().is_empty());
        assert_eq!(serde_json::to_string(&Headers::default()).unwrap(), "{}");
    }

    #[test]
    fn a_nul_read_from_json_cannot_split_a_header() {
        let headers: Headers = serde_json::from_str(r#"{"a\u0000b":"c\u0000d","e":"f"}"#).unwrap();
        let pairs: Vec<(&str, &str)> = headers.iter().collect();
        assert_eq!(pairs, [("a\u{fffd}b", "c\u{fffd}d"), ("e", "f")]);
        // A name that becomes another once clean joins it, and the order holds for the names
        // as kept (a raw NUL sorts before "A", its stand-in after it).
        let headers: Headers =
            serde_json::from_str(r#"{"a\u0000b":"1","a\ufffdb":"2","aA":"3"}"#).unwrap();
        let pairs: Vec<(&str, &str)> = headers.iter().collect();
        assert_eq!(pairs, [("aA", "3"), ("a\u{fffd}b", "1, 2")]);
    }

    #[test]
    fn rewriting_headers_changes_values_and_leaves_out_what_does_not_fit() {
        let mut headers: Headers = [("a", "1"), ("b", "22"), ("c", "333")]
            .into_iter()
            .collect();
        let mut room = 5;
        let left_out = headers.rewrite(
            |value| Cow::Owned(value.repeat(2)),
            |name, value| {
                let fits = name.len() + value.len() <= room;
                if fits {
                    room -= name.len() + value.len();
                }
                fits
            },
        );
        assert!(left_out);
        let pairs: Vec<(&str, &str)> = headers.iter().collect();
        assert_eq!(pairs, [("a", "11")]);
    }

    #[test]
    fn rewriting_copies_only_from_the_first_header_that_differs() {
        let original: Headers = [("a", "1"), ("b", "secret"), ("c", "333"), ("d", "4")]
            .into_iter()
            .collect();
        // Nothing changes: the same text, no copy.
        let mut same = original.clone();
        let address = same.packed.as_ptr();
        assert!(!same.rewrite(|value| Cow::Borrowed(value), |_, _| true));
        assert_eq!((same.packed.as_ptr(), &same), (address, &original));
        // A value replaced by other borrowed text is still a change; so is one left out.
        let mut changed = original.clone();
        let left_out = changed.rewrite(
            |value| {
                if value == "secret" {
                    Cow::Borrowed("<redacted>")
                } else {
                    Cow::Borrowed(value)
                }
            },
            |name, _| name != "c",
        );
        assert!(left_out);
        let pairs: Vec<(&str, &str)> = changed.iter().collect();
        assert_eq!(pairs, [("a", "1"), ("b", "<redacted>"), ("d", "4")]);
        assert_eq!(changed.packed.len(), changed.packed.capacity());
        // Only the last differs.
        let mut last = original.clone();
        assert!(last.rewrite(|value| Cow::Borrowed(value), |name, _| name != "d"));
        let pairs: Vec<(&str, &str)> = last.iter().collect();
        assert_eq!(pairs, [("a", "1"), ("b", "secret"), ("c", "333")]);
    }

    /// `OWN_KEYS`, which the registration checks a section's key against, are the keys a
    /// response writes without a section.
    #[test]
    fn own_keys_are_the_keys_a_response_writes() {
        let mut response = Response::failed(
            "127.0.0.1:80".into(),
            ProbeError::new(ErrorKind::Connect, "refused"),
            Timings::default(),
        );
        response.labels.insert("team".into(), "web".into());
        let json = serde_json::to_value(&response).unwrap();
        let mut written: Vec<&str> = json
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        written.sort_unstable();
        let mut own = OWN_KEYS.to_vec();
        own.sort_unstable();
        assert_eq!(written, own);
    }
}
