//! Assertions on what a probe saw: keys (code, header, body, json, latency, and each check
//! type's own) compared with an operand by a relationship. Compiled with their check (a check
//! with a regex or a JSON path is kept compiled between runs) and evaluated in process. Every result carries the expected and the actual value, and a failing one
//! says why in words; evaluation never panics, whatever the body holds.

use crate::checks::{CheckType, Observation, Observed};
use crate::config::{AssertionConfig, AssertionKey, Relationship};
use crate::messages::AssertionResult;

use serde_json_path::JsonPath;

/// Compiled regexes may not grow beyond this, so a hostile pattern cannot eat the memory.
const REGEX_SIZE_LIMIT: usize = 1 << 20;
/// Longest `actual` reported in a result; the whole body is in the response already.
const MAX_ACTUAL_CHARS: usize = 1024;
/// Longest JSON path compiled. Real paths are a few dozen bytes.
pub const MAX_JSON_PATH_BYTES: usize = 1024;
/// Deepest nesting of brackets and parentheses in a JSON path. serde_json_path parses
/// recursively, with a cost that doubles with every level of nested filters: a few hundred
/// levels overflow the stack (the whole process aborts) and twenty take seconds of CPU.
/// Compiling happens on every run, on the runner, from a definition that may have come over
/// the bus, so paths are bounded before they reach the parser.
pub const MAX_JSON_PATH_NESTING: usize = 10;

#[derive(Debug, thiserror::Error)]
pub enum AssertionError {
    #[error("key `{key}` needs a `value` ({what})")]
    MissingValue {
        key: &'static str,
        what: &'static str,
    },
    #[error("key `{0}` takes no `value`; remove it")]
    UnexpectedValue(&'static str),
    #[error("`{value}` is not a valid RFC 9535 JSON path: {reason}")]
    JsonPath { value: String, reason: String },
    #[error("regExp operand `{operand}` is not a valid regex: {reason}")]
    Regex { operand: String, reason: String },
    #[error("{relationship} needs a numeric operand, not `{operand}`")]
    NotNumeric {
        relationship: &'static str,
        operand: String,
    },
    #[error(
        "{key} operand `{operand}` is not a duration (write e.g. `500ms`, `2s` or `14d`): {reason}"
    )]
    NotDuration {
        key: &'static str,
        operand: String,
        reason: String,
    },
    #[error("relationship {relationship} does not apply to {key}; use equal, notEqual, greaterThan or lessThan")]
    LatencyRelationship {
        relationship: &'static str,
        key: &'static str,
    },
    #[error("key `{key}` does not apply to {check_type} checks")]
    KeyNotForType {
        key: &'static str,
        check_type: CheckType,
    },
}

pub fn key_name(key: AssertionKey) -> &'static str {
    match key {
        AssertionKey::Code => "code",
        AssertionKey::Header => "header",
        AssertionKey::Body => "body",
        AssertionKey::Json => "json",
        AssertionKey::Latency => "latency",
        AssertionKey::Connected => "connected",
        AssertionKey::Rcode => "rcode",
        AssertionKey::Answer => "answer",
        AssertionKey::AnswerCount => "answer_count",
        AssertionKey::CertExpiry => "cert_expiry",
        AssertionKey::Issuer => "issuer",
        AssertionKey::Subject => "subject",
        AssertionKey::San => "san",
        AssertionKey::TlsVersion => "tls_version",
        AssertionKey::ChainValid => "chain_valid",
        AssertionKey::Loss => "loss",
        AssertionKey::RttAvg => "rtt_avg",
        AssertionKey::RttMax => "rtt_max",
        AssertionKey::Status => "status",
    }
}

pub fn relationship_name(relationship: Relationship) -> &'static str {
    match relationship {
        Relationship::Equal => "equal",
        Relationship::NotEqual => "notEqual",
        Relationship::Empty => "empty",
        Relationship::NotEmpty => "notEmpty",
        Relationship::Contain => "contain",
        Relationship::NotContain => "notContain",
        Relationship::RegExp => "regExp",
        Relationship::NotRegExp => "notRegExp",
        Relationship::GreaterThan => "greaterThan",
        Relationship::LessThan => "lessThan",
    }
}

/// Keys whose values are durations: their operands are humantime durations.
fn is_duration_key(key: AssertionKey) -> bool {
    matches!(
        key,
        AssertionKey::Latency
            | AssertionKey::CertExpiry
            | AssertionKey::RttAvg
            | AssertionKey::RttMax
    )
}

/// The operand, prepared for the relationship that uses it.
#[derive(Debug)]
enum Operand {
    Text(String),
    Number(f64),
    Regex(regex::Regex),
}

/// What an assertion reads, prepared for its key.
#[derive(Debug)]
enum Selector {
    Code,
    Header(String),
    Body,
    Json(JsonPath),
    Latency,
    /// A type-specific key, read from `Observation::values`.
    Typed(AssertionKey),
}

#[derive(Debug)]
pub struct CompiledAssertion {
    config: AssertionConfig,
    selector: Selector,
    operand: Operand,
}

impl CompiledAssertion {
    /// Compiles one assertion of a `check_type` check, whose own keys are `type_keys`
    /// (`latency` applies to every type).
    pub fn compile(
        config: &AssertionConfig,
        check_type: CheckType,
        type_keys: &[AssertionKey],
    ) -> Result<CompiledAssertion, AssertionError> {
        let key = key_name(config.key);
        if config.key != AssertionKey::Latency && !type_keys.contains(&config.key) {
            return Err(AssertionError::KeyNotForType { key, check_type });
        }
        let selector = compile_selector(config, key)?;
        let operand = compile_operand(config, key)?;
        Ok(CompiledAssertion {
            config: config.clone(),
            selector,
            operand,
        })
    }

    pub fn config(&self) -> &AssertionConfig {
        &self.config
    }

    /// Whether compiling it again would cost more than keeping it: a regex or a JSON path
    /// takes tens of microseconds to compile, a plain comparison next to nothing.
    pub fn worth_keeping(&self) -> bool {
        matches!(self.operand, Operand::Regex(_)) || matches!(self.selector, Selector::Json(_))
    }
}

/// What an assertion reads: the key, with its value (a header name, a JSON path) checked.
fn compile_selector(
    config: &AssertionConfig,
    key: &'static str,
) -> Result<Selector, AssertionError> {
    Ok(match config.key {
        AssertionKey::Header => {
            if config.value.trim().is_empty() {
                return Err(AssertionError::MissingValue {
                    key,
                    what: "the header name",
                });
            }
            Selector::Header(config.value.trim().to_ascii_lowercase())
        }
        AssertionKey::Json => {
            if config.value.trim().is_empty() {
                return Err(AssertionError::MissingValue {
                    key,
                    what: "an RFC 9535 JSON path such as `$.status`",
                });
            }
            check_json_path_bounds(&config.value).map_err(|reason| AssertionError::JsonPath {
                value: config.value.clone(),
                reason,
            })?;
            let path =
                JsonPath::parse(&config.value).map_err(|error| AssertionError::JsonPath {
                    value: config.value.clone(),
                    reason: error.to_string(),
                })?;
            Selector::Json(path)
        }
        other => {
            if !config.value.is_empty() {
                return Err(AssertionError::UnexpectedValue(key));
            }
            match other {
                AssertionKey::Code => Selector::Code,
                AssertionKey::Body => Selector::Body,
                AssertionKey::Latency => Selector::Latency,
                typed => Selector::Typed(typed),
            }
        }
    })
}

/// What an assertion compares against: a duration for the duration keys, else a regex, a
/// number or text by relationship.
fn compile_operand(config: &AssertionConfig, key: &'static str) -> Result<Operand, AssertionError> {
    let relationship = relationship_name(config.relationship);
    Ok(if is_duration_key(config.key) {
        match config.relationship {
            Relationship::Equal
            | Relationship::NotEqual
            | Relationship::GreaterThan
            | Relationship::LessThan => {
                let duration =
                    humantime::parse_duration(config.operand.trim()).map_err(|error| {
                        AssertionError::NotDuration {
                            key,
                            operand: config.operand.clone(),
                            reason: error.to_string(),
                        }
                    })?;
                Operand::Number(duration.as_secs_f64())
            }
            _ => return Err(AssertionError::LatencyRelationship { relationship, key }),
        }
    } else {
        match config.relationship {
            Relationship::RegExp | Relationship::NotRegExp => {
                let regex = regex::RegexBuilder::new(&config.operand)
                    .size_limit(REGEX_SIZE_LIMIT)
                    .dfa_size_limit(REGEX_SIZE_LIMIT)
                    .build()
                    .map_err(|error| AssertionError::Regex {
                        operand: config.operand.clone(),
                        reason: error.to_string(),
                    })?;
                Operand::Regex(regex)
            }
            Relationship::GreaterThan | Relationship::LessThan => {
                let number =
                    parse_number(&config.operand).ok_or_else(|| AssertionError::NotNumeric {
                        relationship,
                        operand: config.operand.clone(),
                    })?;
                Operand::Number(number)
            }
            _ => Operand::Text(config.operand.clone()),
        }
    })
}

/// Refuses a JSON path the parser could not handle safely: too long, or nested too deep.
/// Brackets and parentheses inside quoted names (`$['a(b']`) do not count.
fn check_json_path_bounds(path: &str) -> Result<(), String> {
    if path.len() > MAX_JSON_PATH_BYTES {
        return Err(format!(
            "it is {} bytes long; at most {MAX_JSON_PATH_BYTES} are allowed",
            path.len()
        ));
    }
    let mut depth: usize = 0;
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for c in path.chars() {
        if let Some(open) = quote {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == open {
                quote = None;
            }
            continue;
        }
        match c {
            '\'' | '"' => quote = Some(c),
            '[' | '(' => {
                depth += 1;
                if depth > MAX_JSON_PATH_NESTING {
                    return Err(format!(
                        "it nests brackets and parentheses more than {MAX_JSON_PATH_NESTING} deep; simplify it"
                    ));
                }
            }
            ']' | ')' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// Evaluates every assertion against one observation. The body is parsed as JSON at most once.
pub fn evaluate_all(
    assertions: &[CompiledAssertion],
    observation: &Observation<'_>,
) -> Vec<AssertionResult> {
    let mut json: Option<Result<serde_json::Value, String>> = None;
    assertions
        .iter()
        .map(|assertion| {
            let actual = match &assertion.selector {
                Selector::Code => Actual::Text(
                    observation
                        .status
                        .map(|status| status.to_string())
                        .unwrap_or_default(),
                ),
                Selector::Header(name) => Actual::Text(
                    observation
                        .headers
                        .and_then(|headers| headers.get(name))
                        .unwrap_or_default()
                        .to_string(),
                ),
                Selector::Body => Actual::Text(observation.body.to_string()),
                Selector::Latency => Actual::Seconds(observation.latency.as_secs_f64()),
                Selector::Typed(key) => match observation
                    .values
                    .iter()
                    .find(|(observed_key, _)| observed_key == key)
                {
                    Some((_, Observed::Text(text))) => Actual::Text(text.clone()),
                    Some((_, Observed::Seconds(seconds))) => Actual::Seconds(*seconds),
                    None => Actual::Unavailable(format!("no {} was observed", key_name(*key))),
                },
                Selector::Json(path) => {
                    let parsed = json.get_or_insert_with(|| {
                        serde_json::from_str::<serde_json::Value>(observation.body)
                            .map_err(|error| format!("body is not JSON: {error}"))
                    });
                    match parsed {
                        Ok(document) => Actual::Text(json_query_text(path, document)),
                        Err(reason) => Actual::Unavailable(reason.clone()),
                    }
                }
            };
            assertion.judge(actual)
        })
        .collect()
}

enum Actual {
    Text(String),
    Seconds(f64),
    /// The value could not be read at all; the assertion fails with this reason.
    Unavailable(String),
}

impl CompiledAssertion {
    fn judge(&self, actual: Actual) -> AssertionResult {
        let (passing, actual_text, reason) = match actual {
            Actual::Unavailable(reason) => (false, String::new(), Some(reason)),
            Actual::Seconds(seconds) => {
                let passing = match (&self.operand, self.config.relationship) {
                    (Operand::Number(limit), Relationship::Equal) => seconds == *limit,
                    (Operand::Number(limit), Relationship::NotEqual) => seconds != *limit,
                    (Operand::Number(limit), Relationship::GreaterThan) => seconds > *limit,
                    (Operand::Number(limit), Relationship::LessThan) => seconds < *limit,
                    _ => false,
                };
                (passing, format!("{seconds:.6}s"), None)
            }
            Actual::Text(text) => {
                let (passing, reason) = compare(self.config.relationship, &self.operand, &text);
                (passing, text, reason)
            }
        };
        let actual = truncate_chars(&actual_text, MAX_ACTUAL_CHARS);
        let message = (!passing).then(|| {
            let subject = match self.config.key {
                AssertionKey::Header | AssertionKey::Json => {
                    format!("{} {}", key_name(self.config.key), self.config.value)
                }
                key => key_name(key).to_string(),
            };
            let expectation = match self.config.relationship {
                Relationship::Empty | Relationship::NotEmpty => {
                    format!(
                        "expected {subject} {}",
                        relationship_name(self.config.relationship)
                    )
                }
                relationship => format!(
                    "expected {subject} {} {}",
                    relationship_name(relationship),
                    self.config.operand
                ),
            };
            match reason {
                Some(reason) => format!("{expectation}, but {reason}"),
                None => format!("{expectation}, got `{}`", truncate_chars(&actual, 200)),
            }
        });
        AssertionResult {
            key: self.config.key,
            value: self.config.value.clone(),
            relationship: self.config.relationship,
            operand: self.config.operand.clone(),
            passing,
            actual,
            message,
        }
    }
}

/// Applies a relationship to a textual actual value. Returns whether it holds and, when it
/// cannot even be decided, why.
fn compare(relationship: Relationship, operand: &Operand, actual: &str) -> (bool, Option<String>) {
    let operand_text = match operand {
        Operand::Text(text) => text.as_str(),
        _ => "",
    };
    match relationship {
        Relationship::Equal => (equal(actual, operand_text), None),
        Relationship::NotEqual => (!equal(actual, operand_text), None),
        Relationship::Empty => (actual.is_empty(), None),
        Relationship::NotEmpty => (!actual.is_empty(), None),
        Relationship::Contain => (contains_ignoring_case(actual, operand_text), None),
        Relationship::NotContain => (!contains_ignoring_case(actual, operand_text), None),
        Relationship::RegExp => match operand {
            Operand::Regex(regex) => (regex.is_match(actual), None),
            _ => (false, Some("the regex was not compiled".to_string())),
        },
        Relationship::NotRegExp => match operand {
            Operand::Regex(regex) => (!regex.is_match(actual), None),
            _ => (false, Some("the regex was not compiled".to_string())),
        },
        Relationship::GreaterThan | Relationship::LessThan => {
            let (Operand::Number(limit), Some(value)) = (operand, parse_number(actual)) else {
                return (
                    false,
                    Some(format!(
                        "actual value `{}` is not a number",
                        truncate_chars(actual, 200)
                    )),
                );
            };
            let holds = if relationship == Relationship::GreaterThan {
                value > *limit
            } else {
                value < *limit
            };
            (holds, None)
        }
    }
}

/// Numeric when both sides are numbers, so `200` equals `200.0`; textual otherwise.
fn equal(actual: &str, operand: &str) -> bool {
    match (parse_number(actual), parse_number(operand)) {
        (Some(a), Some(b)) => a == b,
        _ => actual == operand,
    }
}

fn parse_number(text: &str) -> Option<f64> {
    text.trim().parse::<f64>().ok().filter(|n| n.is_finite())
}

fn contains_ignoring_case(haystack: &str, needle: &str) -> bool {
    haystack.to_lowercase().contains(&needle.to_lowercase())
}

/// One node: a string as itself, anything else as JSON text. No node: empty. Several: a JSON
/// array of them.
fn json_query_text(path: &JsonPath, document: &serde_json::Value) -> String {
    let nodes = path.query(document).all();
    match nodes.as_slice() {
        [] => String::new(),
        [serde_json::Value::String(text)] => text.clone(),
        [single] => single.to_string(),
        many => {
            serde_json::Value::Array(many.iter().map(|&node| node.clone()).collect()).to_string()
        }
    }
}

fn truncate_chars(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Compiles as a check of `check_type` does, with that type's registered keys.
    fn compile_for(
        config: &AssertionConfig,
        check_type: CheckType,
    ) -> Result<CompiledAssertion, AssertionError> {
        let keys = crate::checks::kind(check_type).assertion_keys;
        CompiledAssertion::compile(config, check_type, keys)
    }

    fn assertion(key: &str, value: &str, relationship: &str, operand: &str) -> AssertionConfig {
        serde_json::from_value(serde_json::json!({
            "key": key, "value": value, "relationship": relationship, "operand": operand
        }))
        .unwrap()
    }

    fn evaluate(config: &AssertionConfig, observation: &Observation<'_>) -> AssertionResult {
        let compiled = compile_for(config, CheckType::Http).unwrap();
        evaluate_all(std::slice::from_ref(&compiled), observation).remove(0)
    }

    struct Case {
        key: &'static str,
        value: &'static str,
        relationship: &'static str,
        operand: &'static str,
        passing: bool,
        actual: &'static str,
        message: Option<&'static str>,
    }

    fn case(
        key: &'static str,
        value: &'static str,
        relationship: &'static str,
        operand: &'static str,
        passing: bool,
        actual: &'static str,
        message: Option<&'static str>,
    ) -> Case {
        Case {
            key,
            value,
            relationship,
            operand,
            passing,
            actual,
            message,
        }
    }

    // Long on purpose: one table of cases, read top to bottom; split, it would hide which
    // key and relationship pairs are covered.
    #[test]
    fn every_key_and_relationship() {
        let headers: crate::checks::response::Headers = [
            ("content-type", "application/json; charset=utf-8"),
            ("x-multi", "a, b"),
            ("x-empty", ""),
        ]
        .into_iter()
        .collect();
        let body = r#"{"status":"UP","checks":[{"name":"db","ok":true},{"name":"cache","ok":false}],"count":3,"ratio":0.5}"#;
        let observation = Observation {
            status: Some(200),
            headers: Some(&headers),
            body,
            latency: Duration::from_millis(250),
            values: Vec::new(),
        };
        let cases = [
            // code
            case("code", "", "equal", "200", true, "200", None),
            case("code", "", "equal", "200.0", true, "200", None),
            case("code", "", "equal", "201", false, "200", Some("expected code equal 201, got `200`")),
            case("code", "", "notEqual", "500", true, "200", None),
            case("code", "", "notEqual", "200", false, "200", Some("expected code notEqual 200, got `200`")),
            case("code", "", "greaterThan", "199", true, "200", None),
            case("code", "", "greaterThan", "200", false, "200", Some("expected code greaterThan 200, got `200`")),
            case("code", "", "lessThan", "300", true, "200", None),
            case("code", "", "lessThan", "200", false, "200", Some("expected code lessThan 200, got `200`")),
            case("code", "", "regExp", "^2\\d\\d$", true, "200", None),
            case("code", "", "regExp", "^5", false, "200", Some("expected code regExp ^5, got `200`")),
            case("code", "", "notEmpty", "", true, "200", None),
            case("code", "", "empty", "", false, "200", Some("expected code empty, got `200`")),
            // header, case-insensitive name, joined values
            case("header", "Content-Type", "contain", "JSON", true, "application/json; charset=utf-8", None),
            case("header", "content-type", "notContain", "xml", true, "application/json; charset=utf-8", None),
            case("header", "content-type", "notContain", "json", false, "application/json; charset=utf-8",
                Some("expected header content-type notContain json, got `application/json; charset=utf-8`")),
            case("header", "X-Multi", "equal", "a, b", true, "a, b", None),
            case("header", "x-missing", "empty", "", true, "", None),
            case("header", "x-missing", "notEmpty", "", false, "", Some("expected header x-missing notEmpty, got ``")),
            case("header", "x-empty", "empty", "", true, "", None),
            case("header", "content-type", "regExp", "^application/(json|xml)", true, "application/json; charset=utf-8", None),
            case("header", "content-type", "greaterThan", "1", false, "application/json; charset=utf-8",
                Some("expected header content-type greaterThan 1, but actual value `application/json; charset=utf-8` is not a number")),
            // body
            case("body", "", "contain", "\"up\"", true, body, None),
            case("body", "", "contain", "down", false, body, Some("expected body contain down, got `{\"status\":\"UP\",\"checks\":[{\"name\":\"db\",\"ok\":true},{\"name\":\"cache\",\"ok\":false}],\"count\":3,\"ratio\":0.5}`")),
            case("body", "", "notContain", "error", true, body, None),
            case("body", "", "equal", body, true, body, None),
            case("body", "", "notEmpty", "", true, body, None),
            case("body", "", "regExp", "\"count\":\\d+", true, body, None),
            // json: strings unquoted, other values as JSON, many nodes as an array, none as empty
            case("json", "$.status", "equal", "UP", true, "UP", None),
            case("json", "$.status", "notEqual", "UP", false, "UP", Some("expected json $.status notEqual UP, got `UP`")),
            case("json", "$.count", "equal", "3", true, "3", None),
            case("json", "$.count", "greaterThan", "2", true, "3", None),
            case("json", "$.ratio", "lessThan", "0.75", true, "0.5", None),
            case("json", "$.checks[0].ok", "equal", "true", true, "true", None),
            case("json", "$.checks[?@.ok == false].name", "equal", "cache", true, "cache", None),
            case("json", "$.checks[*].name", "equal", "[\"db\",\"cache\"]", true, "[\"db\",\"cache\"]", None),
            case("json", "$.checks[*].name", "contain", "CACHE", true, "[\"db\",\"cache\"]", None),
            case("json", "$.missing", "empty", "", true, "", None),
            case("json", "$.missing", "notEmpty", "", false, "", Some("expected json $.missing notEmpty, got ``")),
            // latency: durations against the total time
            case("latency", "", "lessThan", "500ms", true, "0.250000s", None),
            case("latency", "", "lessThan", "100ms", false, "0.250000s", Some("expected latency lessThan 100ms, got `0.250000s`")),
            case("latency", "", "greaterThan", "1ms", true, "0.250000s", None),
            case("latency", "", "equal", "250ms", true, "0.250000s", None),
            case("latency", "", "notEqual", "250ms", false, "0.250000s", Some("expected latency notEqual 250ms, got `0.250000s`")),
        ];
        for case in cases {
            let config = assertion(case.key, case.value, case.relationship, case.operand);
            let result = evaluate(&config, &observation);
            let label = format!(
                "{} {} {} {}",
                case.key, case.value, case.relationship, case.operand
            );
            assert_eq!(result.passing, case.passing, "{label}: {result:?}");
            assert_eq!(result.actual, case.actual, "{label}");
            assert_eq!(result.message.as_deref(), case.message, "{label}");
            assert_eq!(result.operand, case.operand, "{label}");
        }
    }

    // Long on purpose: one observation and a table of the assertions that read it.
    #[test]
    fn type_specific_keys_read_their_observed_values() {
        let observation = Observation {
            latency: Duration::from_millis(20),
            values: vec![
                (AssertionKey::Rcode, Observed::Text("NXDOMAIN".into())),
                (AssertionKey::AnswerCount, Observed::Text("0".into())),
                (AssertionKey::CertExpiry, Observed::Seconds(-3600.0)),
                (
                    AssertionKey::Loss,
                    Observed::Text("33.333333333333336".into()),
                ),
            ],
            ..Observation::default()
        };
        /// key, type, relationship, operand, passing, actual, message
        type Case = (
            &'static str,
            CheckType,
            &'static str,
            &'static str,
            bool,
            &'static str,
            Option<&'static str>,
        );
        let cases: [Case; 8] = [
            (
                "rcode",
                CheckType::Dns,
                "equal",
                "NXDOMAIN",
                true,
                "NXDOMAIN",
                None,
            ),
            (
                "rcode",
                CheckType::Dns,
                "equal",
                "NOERROR",
                false,
                "NXDOMAIN",
                Some("expected rcode equal NOERROR, got `NXDOMAIN`"),
            ),
            (
                "answer_count",
                CheckType::Dns,
                "lessThan",
                "1",
                true,
                "0",
                None,
            ),
            (
                "cert_expiry",
                CheckType::Tls,
                "lessThan",
                "14d",
                true,
                "-3600.000000s",
                None,
            ),
            (
                "cert_expiry",
                CheckType::Tls,
                "greaterThan",
                "0s",
                false,
                "-3600.000000s",
                Some("expected cert_expiry greaterThan 0s, got `-3600.000000s`"),
            ),
            (
                "loss",
                CheckType::Icmp,
                "lessThan",
                "50",
                true,
                "33.333333333333336",
                None,
            ),
            (
                "rtt_avg",
                CheckType::Icmp,
                "lessThan",
                "1s",
                false,
                "",
                Some("expected rtt_avg lessThan 1s, but no rtt_avg was observed"),
            ),
            (
                "latency",
                CheckType::Grpc,
                "lessThan",
                "1s",
                true,
                "0.020000s",
                None,
            ),
        ];
        for (key, check_type, relationship, operand, passing, actual, message) in cases {
            let config = assertion(key, "", relationship, operand);
            let compiled = compile_for(&config, check_type).unwrap();
            let result = evaluate_all(std::slice::from_ref(&compiled), &observation).remove(0);
            let label = format!("{key} {relationship} {operand}");
            assert_eq!(result.passing, passing, "{label}: {result:?}");
            assert_eq!(result.actual, actual, "{label}");
            assert_eq!(result.message.as_deref(), message, "{label}");
        }
    }

    #[test]
    fn each_type_takes_only_its_own_keys_and_latency() {
        let keys = [
            ("code", CheckType::Http),
            ("header", CheckType::Http),
            ("json", CheckType::Http),
            ("connected", CheckType::Tcp),
            ("body", CheckType::Tcp),
            ("rcode", CheckType::Dns),
            ("answer", CheckType::Dns),
            ("answer_count", CheckType::Dns),
            ("cert_expiry", CheckType::Tls),
            ("issuer", CheckType::Tls),
            ("subject", CheckType::Tls),
            ("san", CheckType::Tls),
            ("tls_version", CheckType::Tls),
            ("chain_valid", CheckType::Tls),
            ("loss", CheckType::Icmp),
            ("rtt_avg", CheckType::Icmp),
            ("rtt_max", CheckType::Icmp),
            ("status", CheckType::Grpc),
        ];
        for check_type in CheckType::ALL {
            let latency = assertion("latency", "", "lessThan", "1s");
            assert!(compile_for(&latency, check_type).is_ok(), "{check_type}");
            for (key, owner) in keys {
                let applies = owner == check_type
                    || (key == "body"
                        && matches!(
                            check_type,
                            CheckType::Http | CheckType::Udp | CheckType::Websocket
                        ));
                let value = match key {
                    "header" => "x",
                    "json" => "$.x",
                    _ => "",
                };
                // `equal` with a duration operand suits every key, durations included.
                let config = assertion(key, value, "equal", "1s");
                let compiled = compile_for(&config, check_type);
                match (applies, compiled) {
                    (true, result) => assert!(result.is_ok(), "{key} on {check_type}: {result:?}"),
                    (false, Err(error)) => assert_eq!(
                        error.to_string(),
                        format!("key `{key}` does not apply to {check_type} checks")
                    ),
                    (false, Ok(_)) => panic!("{key} should not apply to {check_type}"),
                }
            }
        }
    }

    #[test]
    fn json_on_a_body_that_is_not_json_fails_with_the_reason() {
        let config = assertion("json", "$.status", "equal", "UP");
        let result = evaluate(
            &config,
            &Observation {
                status: Some(200),
                body: "<html>",
                ..Observation::default()
            },
        );
        assert!(!result.passing);
        let message = result.message.unwrap();
        assert!(
            message.starts_with("expected json $.status equal UP, but body is not JSON: "),
            "{message}"
        );
    }

    #[test]
    fn bad_definitions_are_clear_errors() {
        let cases = [
            (
                assertion("json", "status", "equal", "UP"),
                "`status` is not a valid RFC 9535 JSON path",
            ),
            (
                assertion("body", "", "regExp", "(unclosed"),
                "regExp operand `(unclosed` is not a valid regex",
            ),
            (
                assertion("code", "", "greaterThan", "two hundred"),
                "greaterThan needs a numeric operand, not `two hundred`",
            ),
            (
                assertion("latency", "", "lessThan", "fast"),
                "latency operand `fast` is not a duration",
            ),
            (
                assertion("latency", "", "contain", "1s"),
                "relationship contain does not apply to latency",
            ),
            (
                assertion("header", "", "equal", "x"),
                "key `header` needs a `value` (the header name)",
            ),
            (
                assertion("code", "x", "equal", "200"),
                "key `code` takes no `value`; remove it",
            ),
            (
                assertion("json", "", "equal", "UP"),
                "key `json` needs a `value` (an RFC 9535 JSON path",
            ),
        ];
        for (config, expected) in cases {
            let error = compile_for(&config, CheckType::Http).unwrap_err();
            assert!(
                error.to_string().starts_with(expected),
                "{error} !~ {expected}"
            );
        }
    }

    #[test]
    fn huge_regexes_are_refused() {
        let config = assertion("body", "", "regExp", "(a{1000}){1000}");
        let error = compile_for(&config, CheckType::Http).unwrap_err();
        assert!(error.to_string().contains("not a valid regex"), "{error}");
    }

    #[test]
    fn long_actual_values_are_truncated_on_a_char_boundary() {
        let body = "é".repeat(5000);
        let config = assertion("body", "", "empty", "");
        let result = evaluate(
            &config,
            &Observation {
                body: &body,
                ..Observation::default()
            },
        );
        assert_eq!(result.actual.chars().count(), MAX_ACTUAL_CHARS + 1);
        assert!(result.actual.ends_with('…'));
    }

    /// Found while fuzzing (tests/fuzz.rs): serde_json_path 0.7 overflowed the stack on a few
    /// hundred nested parentheses (the process aborted), and took 90 s of CPU on 22 unclosed
    /// nested filters. Both are refused before the parser sees them, in well under a second.
    #[test]
    fn json_paths_nested_too_deep_are_refused_before_parsing() {
        let started = std::time::Instant::now();
        // 500 levels in 1007 bytes: under the length bound, over the stack's depth.
        let parentheses = format!("$[?{}@.a{}]", "(".repeat(500), ")".repeat(500));
        let filters = format!("$[?@{}]", "[?@".repeat(22));
        let long = format!("$.{}", "a".repeat(MAX_JSON_PATH_BYTES));
        for (path, expected) in [
            (parentheses.as_str(), "more than 10 deep"),
            (filters.as_str(), "more than 10 deep"),
            (long.as_str(), "at most 1024 are allowed"),
        ] {
            let config = assertion("json", path, "notEmpty", "");
            let error = compile_for(&config, CheckType::Http).unwrap_err();
            let AssertionError::JsonPath { reason, .. } = &error else {
                panic!(
                    "not a JSON path error: {}",
                    truncate_chars(&error.to_string(), 80)
                );
            };
            assert!(reason.contains(expected), "{reason}");
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }

    #[test]
    fn json_path_nesting_counts_only_brackets_outside_quotes() {
        let nested = "$.a[?@.b[?@.c[?@.d == 1]]]";
        let quoted = format!("$['{}']", "([".repeat(50));
        let escaped = format!("$[\"\\\"{}\"]", "(".repeat(50));
        for path in [nested, quoted.as_str(), escaped.as_str()] {
            let config = assertion("json", path, "notEmpty", "");
            assert!(compile_for(&config, CheckType::Http).is_ok(), "{path}");
        }
    }
}
