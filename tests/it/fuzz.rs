//! Property-based fuzzing (proptest) of everything that reads untrusted input: the config
//! file (arbitrary text, and structured mutations of every file under `config/`), bus
//! messages (arbitrary bytes, and mutations of valid messages), assertions (arbitrary regexes,
//! JSON paths and bodies), TCP `expect` steps over arbitrary bytes, and DNS answers (arbitrary
//! and mutated datagrams and TCP streams). Each target must return a value or a typed error,
//! never panic, and keep the invariants stated beside it.
//!
//! Case counts are small by default so the file runs in seconds in CI; raise them locally with
//! `PROPTEST_CASES=20000 cargo nextest run --test it -E 'test(/^fuzz::/)'`. A failure prints the minimal input
//! that proptest shrank it to: make that a named regression test next to the code.

use crate::common;

mod extremes;

use bastion_agent::assertions::{evaluate_all, CompiledAssertion};
use bastion_agent::checks::CheckType;
use bastion_agent::checks::Observation;
use bastion_agent::compiled::CompiledCheck;
use bastion_agent::config::{AssertionConfig, AssertionKey, Config, Format, Relationship};
use bastion_agent::messages::{
    self, CheckRequest, CheckResult, Heartbeat, TestRequest, MESSAGE_VERSION,
};
use bastion_agent::model::ErrorKind;
use bastion_agent::runner::dispatcher::RunOrder;
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestRunner};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::io::AsyncWriteExt;

/// The assertion keys of an http check, as the registry declares them.
const HTTP_KEYS: &[bastion_agent::config::AssertionKey] =
    bastion_agent::checks::http::KIND.assertion_keys;

/// Cases per target: `PROPTEST_CASES`, else `default`.
fn runner(default: u32) -> TestRunner {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(default);
    TestRunner::new(ProptestConfig {
        cases,
        // Failures become named regression tests by hand; no files are written.
        failure_persistence: None,
        ..ProptestConfig::default()
    })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// A config error always names the file it came from.
fn assert_config_outcome(result: Result<Config, bastion_agent::config::ConfigError>) {
    match result {
        Err(error) => {
            let text = error.to_string();
            assert!(
                text.starts_with("fuzz.toml") || text.starts_with("fuzz.yaml"),
                "{text}"
            );
        }
        Ok(config) => {
            // What loads must run, and must survive the trip to a runner unchanged.
            for check in &config.checks {
                CompiledCheck::compile(check).expect("a loaded check compiles");
                let request = CheckRequest {
                    version: MESSAGE_VERSION,
                    run_id: 1,
                    location: None,
                    scheduled_at: SystemTime::UNIX_EPOCH,
                    dispatch_deadline: None,
                    check: std::sync::Arc::new(check.clone()),
                    discovered: None,
                };
                let bytes = messages::encode(&request).expect("encodes");
                let back: CheckRequest = messages::decode(&bytes).expect("decodes");
                assert_eq!(back, request);
            }
        }
    }
}

/// Text built from the tokens configs are made of, so the parser gets past its first byte.
fn config_like_text() -> impl Strategy<Value = String> {
    let token = prop_oneof![
        Just("\n".to_string()),
        Just("[[checks]]\n".to_string()),
        Just("[runner]\n".to_string()),
        Just("[runner.workers]\n".to_string()),
        Just("[agent]\n".to_string()),
        Just("[bus]\n".to_string()),
        Just("[bus.nats]\n".to_string()),
        Just("[[checks.assertions]]\n".to_string()),
        Just("[[checks.steps]]\n".to_string()),
        Just("name = \"web\"\n".to_string()),
        Just("interval = \"10s\"\n".to_string()),
        Just("timeout = \"1ns\"\n".to_string()),
        Just("type = \"http\"\n".to_string()),
        Just("type = \"tcp\"\n".to_string()),
        Just("type = \"dns\"\n".to_string()),
        Just("url = \"http://[::1]:80/\"\n".to_string()),
        Just("address = \"a:1\"\n".to_string()),
        Just("query = \"example.com\"\n".to_string()),
        Just("instances = [\"127.0.0.1\", \"::1\"]\n".to_string()),
        Just("key = \"json\"\n".to_string()),
        Just("value = \"$.a\"\n".to_string()),
        Just("relationship = \"regExp\"\n".to_string()),
        Just("operand = \"(a+)+\"\n".to_string()),
        Just("expect = \"^OK\"\n".to_string()),
        Just("max_body_bytes = 18446744073709551615\n".to_string()),
        Just("http = 0\n".to_string()),
        Just("kind = \"nats\"\n".to_string()),
        "[a-z_\\.]{1,12} = ".prop_map(|key| key),
        "\"[^\"\\\\]{0,12}\"".prop_map(|value| value),
        any::<i64>().prop_map(|n| n.to_string()),
        Just("[".to_string()),
        Just("{".to_string()),
        Just("'''".to_string()),
        Just("\\".to_string()),
        Just("é".to_string()),
    ];
    proptest::collection::vec(token, 0..40).prop_map(|tokens| tokens.concat())
}

#[test]
fn fuzz_config_text_never_panics() {
    let mut runner = runner(512);
    let text = prop_oneof![any::<String>(), config_like_text()];
    runner
        .run(&text, |text| {
            assert_config_outcome(bastion_agent::validate::parse(
                &text,
                Format::Toml,
                Path::new("fuzz.toml"),
            ));
            assert_config_outcome(bastion_agent::validate::parse(
                &text,
                Format::Yaml,
                Path::new("fuzz.yaml"),
            ));
            Ok(())
        })
        .unwrap();
}

/// One change to a config file, on line boundaries so the result stays mostly readable.
#[derive(Debug, Clone)]
enum Mutation {
    DeleteLine(usize),
    DuplicateLine(usize),
    SwapLines(usize, usize),
    TruncateLine(usize, usize),
    Insert(usize, usize, String),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let inserted = prop_oneof![
        Just("\"".to_string()),
        Just("0".to_string()),
        Just("-1".to_string()),
        Just("99999999999999999999".to_string()),
        Just("\"0s\"".to_string()),
        Just("\"1ns\"".to_string()),
        Just("\"584942417355y\"".to_string()),
        Just("[".to_string()),
        Just("]]".to_string()),
        Just("{".to_string()),
        Just("#".to_string()),
        Just("\u{0}".to_string()),
        Just(" = ".to_string()),
        Just("\n[[checks]]\n".to_string()),
        Just("\ninstances = [\"x\"]\n".to_string()),
        Just("\nfollow_redirects = true\n".to_string()),
        "[ -~]{0,8}",
    ];
    prop_oneof![
        any::<usize>().prop_map(Mutation::DeleteLine),
        any::<usize>().prop_map(Mutation::DuplicateLine),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Mutation::SwapLines(a, b)),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Mutation::TruncateLine(a, b)),
        (any::<usize>(), any::<usize>(), inserted)
            .prop_map(|(line, at, text)| Mutation::Insert(line, at, text)),
    ]
}

fn mutate(text: &str, mutations: &[Mutation]) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    for mutation in mutations {
        if lines.is_empty() {
            break;
        }
        let n = lines.len();
        match mutation {
            Mutation::DeleteLine(i) => {
                lines.remove(i % n);
            }
            Mutation::DuplicateLine(i) => {
                let line = lines[i % n].clone();
                lines.insert(i % n, line);
            }
            Mutation::SwapLines(a, b) => lines.swap(a % n, b % n),
            Mutation::TruncateLine(i, at) => {
                let line = &mut lines[i % n];
                let keep = at % (line.chars().count() + 1);
                *line = line.chars().take(keep).collect();
            }
            Mutation::Insert(i, at, inserted) => {
                let line = &mut lines[i % n];
                let at = at % (line.chars().count() + 1);
                let (head, tail): (String, String) = (
                    line.chars().take(at).collect(),
                    line.chars().skip(at).collect(),
                );
                *line = format!("{head}{inserted}{tail}");
            }
        }
    }
    lines.join("\n")
}

#[test]
fn fuzz_config_mutations_never_panic() {
    let mut seeds = Vec::new();
    for entry in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/config")).unwrap() {
        let path = entry.unwrap().path();
        let format = Format::for_path(&path);
        seeds.push((std::fs::read_to_string(&path).unwrap(), format));
    }
    assert!(seeds.len() >= 5, "the config/ files are the seeds");
    let mut runner = runner(512);
    let strategy = (0..seeds.len(), proptest::collection::vec(mutation(), 1..6));
    runner
        .run(&strategy, |(seed, mutations)| {
            let (text, format) = &seeds[seed];
            let mutated = mutate(text, &mutations);
            let name = match format {
                Format::Toml => "fuzz.toml",
                Format::Yaml => "fuzz.yaml",
            };
            assert_config_outcome(bastion_agent::validate::parse(
                &mutated,
                *format,
                Path::new(name),
            ));
            Ok(())
        })
        .unwrap();
}

/// The reason `messages::decode::<T>` must give for `payload`, worked out from the wire
/// contract without it: the size first, then JSON carrying a whole-number `version`, then that
/// version, then the message's shape. None when the payload is a valid `T` of this version.
/// (JSON as serde_json reads it: strings in fields a message ignores are skipped unchecked.)
fn expected_decode_reason<T: serde::de::DeserializeOwned>(payload: &[u8]) -> Option<&'static str> {
    #[derive(serde::Deserialize)]
    struct Versioned {
        version: u64,
    }
    if payload.len() > messages::MAX_MESSAGE_BYTES {
        return Some("too_large");
    }
    match serde_json::from_slice::<Versioned>(payload) {
        Err(_) => Some("json"),
        Ok(Versioned { version }) if version != u64::from(MESSAGE_VERSION) => Some("version"),
        Ok(_) => serde_json::from_slice::<T>(payload).err().map(|_| "json"),
    }
}

/// `decode` accepts exactly the valid messages and names the first defect of the others.
fn assert_decode_outcome<T: serde::de::DeserializeOwned>(payload: &[u8]) {
    let expected = expected_decode_reason::<T>(payload);
    match messages::decode::<T>(payload) {
        Ok(_) => assert_eq!(expected, None, "decoded although {expected:?}"),
        Err(error) => assert_eq!(Some(error.reason()), expected, "{error}"),
    }
}

fn decode_all(payload: &[u8]) {
    assert_decode_outcome::<CheckRequest>(payload);
    assert_decode_outcome::<CheckResult>(payload);
    assert_decode_outcome::<TestRequest>(payload);
    assert_decode_outcome::<Heartbeat>(payload);
}

#[test]
fn fuzz_bus_messages_from_arbitrary_bytes_never_panic() {
    let mut runner = runner(1024);
    let bytes = proptest::collection::vec(any::<u8>(), 0..2048);
    runner
        .run(&bytes, |payload| {
            decode_all(&payload);
            Ok(())
        })
        .unwrap();
}

/// Valid messages of every kind, as a runner and a checker send them.
fn valid_messages() -> Vec<Vec<u8>> {
    let config = common::config(
        r#"
        [[checks]]
        name = "web"
        type = "http"
        interval = "10s"
        url = "http://svc.internal:8080/health"
        instances = ["127.0.0.2", "127.0.0.3:81"]
        headers = { x-token = "abc" }
        [[checks.assertions]]
        key = "json"
        value = "$.status"
        relationship = "equal"
        operand = "UP"
        [[checks]]
        name = "smtp"
        type = "tcp"
        interval = "10s"
        address = "mail.internal:25"
        [[checks.steps]]
        expect = "^220 "
        "#,
    );
    let mut messages = Vec::new();
    for check in &config.checks {
        let request = CheckRequest {
            version: MESSAGE_VERSION,
            run_id: 42,
            location: None,
            scheduled_at: SystemTime::UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456),
            dispatch_deadline: None,
            check: std::sync::Arc::new(check.clone()),
            discovered: None,
        };
        messages.push(messages::encode(&request).unwrap().to_vec());
    }
    let result = serde_json::json!({
        "version": 1, "check": "web", "type": "http", "agent": "a1", "run_id": 42,
        "scheduled_at": "2024-01-01T00:00:00.000001Z", "finished_at": "2024-01-01T00:00:01Z",
        "passing": false,
        "responses": [{
            "target": "127.0.0.2:8080", "passing": false,
            "error": {"kind": "timeout", "message": "no complete answer within 1s"},
            "http": {"status": 200, "version": "HTTP/1.1", "headers": {"a": "b"},
                     "body": "{}", "truncated": false, "redirects": 0},
            "tls": null, "assertions": [],
            "timings": {"resolve": 0.0, "connect": 0.001, "tls": 0.0, "processing": 0.999,
                        "transfer": 0.0, "total": 1.0}
        }]
    });
    messages.push(serde_json::to_vec(&result).unwrap());
    let heartbeat = serde_json::json!({
        "version": 1, "agent": "a1", "role": "runner", "bastion_version": "0.1.0",
        "sent_at": "2024-01-01T00:00:00Z", "uptime_seconds": 1.5,
        "workers": {"http": {"busy": 1, "total": 10}}
    });
    messages.push(serde_json::to_vec(&heartbeat).unwrap());
    messages
}

#[test]
fn fuzz_bus_messages_from_mutated_valid_json_never_panic() {
    let seeds = valid_messages();
    for seed in &seeds {
        // The seeds themselves decode as something.
        let ok = messages::decode::<CheckRequest>(seed).is_ok()
            || messages::decode::<CheckResult>(seed).is_ok()
            || messages::decode::<Heartbeat>(seed).is_ok();
        assert!(ok, "{}", String::from_utf8_lossy(seed));
        decode_all(seed);
        // The same message from a newer build is refused for its version, whatever its shape.
        let text = String::from_utf8_lossy(seed);
        let newer = text.replacen("\"version\":1", "\"version\":2", 1);
        assert_ne!(newer, text, "the seed carries its version");
        for reason in [
            messages::decode::<CheckRequest>(newer.as_bytes()).err(),
            messages::decode::<CheckResult>(newer.as_bytes()).err(),
            messages::decode::<Heartbeat>(newer.as_bytes()).err(),
        ] {
            assert_eq!(reason.map(|error| error.reason()), Some("version"));
        }
        decode_all(newer.as_bytes());
    }
    let mut runner = runner(1024);
    let edit = prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| (0u8, at, byte)),
        (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| (1u8, at, byte)),
        any::<usize>().prop_map(|at| (2u8, at, 0)),
        any::<usize>().prop_map(|at| (3u8, at, 0)),
    ];
    let strategy = (0..seeds.len(), proptest::collection::vec(edit, 1..8));
    runner
        .run(&strategy, |(seed, edits)| {
            let mut payload = seeds[seed].clone();
            for (op, at, byte) in edits {
                if payload.is_empty() {
                    break;
                }
                let at = at % payload.len();
                match op {
                    0 => payload[at] = byte,
                    1 => payload.insert(at, byte),
                    2 => {
                        payload.remove(at);
                    }
                    _ => payload.truncate(at),
                }
            }
            decode_all(&payload);
            // A request that decodes either compiles or is refused with a definition error;
            // the runner counts the refusal as `invalid`.
            if let Ok(request) = messages::decode::<CheckRequest>(&payload) {
                let _ = CompiledCheck::compile(&request.check);
            }
            Ok(())
        })
        .unwrap();
}

fn relationship() -> impl Strategy<Value = Relationship> {
    prop_oneof![
        Just(Relationship::Equal),
        Just(Relationship::NotEqual),
        Just(Relationship::Empty),
        Just(Relationship::NotEmpty),
        Just(Relationship::Contain),
        Just(Relationship::NotContain),
        Just(Relationship::RegExp),
        Just(Relationship::GreaterThan),
        Just(Relationship::LessThan),
    ]
}

/// Text made of regex and JSON path syntax, to get past the first character.
fn syntax_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[\\$@\\.\\[\\]\\(\\)\\?\\*\\+\\{\\}\\|\\^\\\\a-c0-9,:'\"=<>! ]{0,60}",
        "\\$(\\.[a-c]|\\[[0-9]\\]|\\[\\*\\]|\\[\\?@\\.[a-c] ?[=<>!]=? ?[0-9]\\]|\\.\\.[a-c]){0,6}",
    ]
}

/// A body: arbitrary text, or JSON of arbitrary shape.
fn body() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(serde_json::Value::from),
        "[a-c]{0,4}".prop_map(serde_json::Value::from),
    ];
    let json = leaf.prop_recursive(4, 32, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            proptest::collection::btree_map("[a-c]", inner, 0..4)
                .prop_map(|map| serde_json::Value::Object(map.into_iter().collect())),
        ]
    });
    prop_oneof![any::<String>(), json.prop_map(|value| value.to_string())]
}

#[test]
fn fuzz_assertions_never_panic_and_always_explain_failures() {
    let mut runner = runner(1024);
    let key = prop_oneof![
        Just(AssertionKey::Code),
        Just(AssertionKey::Header),
        Just(AssertionKey::Body),
        Just(AssertionKey::Json),
        Just(AssertionKey::Latency),
    ];
    let strategy = (
        key,
        syntax_text(),
        relationship(),
        syntax_text(),
        body(),
        proptest::option::of(any::<u16>()),
    );
    let headers: bastion_agent::checks::response::Headers =
        [("content-type", "application/json")].into_iter().collect();
    runner
        .run(
            &strategy,
            |(key, value, relationship, operand, body, status)| {
                let config = AssertionConfig {
                    key,
                    value,
                    relationship,
                    operand,
                };
                let Ok(compiled) = CompiledAssertion::compile(&config, CheckType::Http, HTTP_KEYS)
                else {
                    return Ok(());
                };
                let observation = Observation {
                    status,
                    headers: Some(&headers),
                    body: &body,
                    latency: Duration::from_millis(5),
                    values: Vec::new(),
                };
                let results = evaluate_all(std::slice::from_ref(&compiled), &observation);
                prop_assert_eq!(results.len(), 1);
                let result = &results[0];
                prop_assert_eq!(result.message.is_none(), result.passing);
                prop_assert!(result.actual.chars().count() <= 1025);
                if key == AssertionKey::Body && relationship == Relationship::Contain {
                    prop_assert_eq!(
                        result.passing,
                        body.to_lowercase().contains(&config.operand.to_lowercase())
                    );
                }
                Ok(())
            },
        )
        .unwrap();
}

#[test]
fn fuzz_regex_operands_are_literal_when_escaped() {
    let mut runner = runner(512);
    let strategy = (any::<String>(), any::<String>(), any::<String>());
    runner
        .run(&strategy, |(before, needle, after)| {
            let config = AssertionConfig {
                key: AssertionKey::Body,
                value: String::new(),
                relationship: Relationship::RegExp,
                operand: regex::escape(&needle),
            };
            let compiled = CompiledAssertion::compile(&config, CheckType::Http, HTTP_KEYS)
                .map_err(|error| TestCaseError::fail(error.to_string()))?;
            let body = format!("{before}{needle}{after}");
            let observation = Observation {
                body: &body,
                ..Observation::default()
            };
            let results = evaluate_all(std::slice::from_ref(&compiled), &observation);
            prop_assert!(results[0].passing, "{:?}", results[0]);
            Ok(())
        })
        .unwrap();
}

/// Runs one TCP check whose only step is `expect = pattern` against a server that sends
/// `sent` and closes.
async fn tcp_expect(pattern: &str, sent: Vec<u8>) -> Option<bastion_agent::messages::Response> {
    let listener = tokio::net::TcpListener::bind("127.0.0.2:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        if let Ok((mut stream, _)) = listener.accept().await {
            let _ = stream.write_all(&sent).await;
            let _ = stream.shutdown().await;
        }
    });
    let check = bastion_agent::config::CheckConfig {
        name: "fuzz".into(),
        group: None,
        interval: Duration::from_secs(10),
        timeout: Some(Duration::from_secs(5)),
        instances: Vec::new(),
        instances_from: None,
        labels: Default::default(),
        assertions: Vec::new(),
        min_failing_count: None,
        min_failing_time: None,
        notify: None,
        notify_on: None,
        ip_protocol: None,
        ip_protocol_fallback: None,
        locations: None,
        min_failing_locations: None,
        spec: bastion_agent::config::CheckSpec::Tcp(Box::new(
            bastion_agent::checks::tcp::TcpSpec {
                address: address.to_string(),
                tls: bastion_agent::config::TlsOption::Off,
                server_name: None,
                ca_file: None,
                insecure_skip_verify: false,
                source_ip: None,
                steps: vec![bastion_agent::checks::tcp::TcpStep {
                    send: None,
                    expect: Some(pattern.to_string()),
                }],
                starttls: None,
            },
        )),
    };
    let compiled = CompiledCheck::compile(&check).ok();
    let response = match compiled {
        Some(compiled) => {
            let (dispatcher, _) =
                common::dispatcher(&common::config("[runner]\nmax_body_bytes = 1024\n"));
            let result = dispatcher
                .run(RunOrder {
                    check: Arc::new(compiled),
                    run_id: 1,
                    scheduled_at: SystemTime::now(),
                    discovered: None,
                })
                .await;
            Some(result.responses.into_iter().next().expect("one response"))
        }
        None => None,
    };
    server.abort();
    response
}

#[test]
fn fuzz_tcp_expect_over_arbitrary_bytes() {
    let rt = runtime();
    let mut runner = runner(128);
    let strategy = (
        syntax_text(),
        proptest::collection::vec(any::<u8>(), 0..3000),
    );
    runner
        .run(&strategy, |(pattern, sent)| {
            let Some(response) = rt.block_on(tcp_expect(&pattern, sent)) else {
                return Ok(());
            };
            let kind = response.error_kind();
            prop_assert!(
                kind.is_none() || kind == Some(ErrorKind::Expect),
                "{response:?}"
            );
            let tcp = response.sections.tcp.as_ref().expect("tcp details");
            prop_assert!(tcp.body.len() <= 3 * 1024, "read past the cap");
            Ok(())
        })
        .unwrap();
}

#[test]
fn fuzz_tcp_expect_finds_what_was_sent_within_the_cap() {
    let rt = runtime();
    let mut runner = runner(64);
    let strategy = ("[ -~]{0,900}", "[ -~]{1,50}", "[ -~]{0,50}");
    runner
        .run(&strategy, |(before, needle, after)| {
            let sent = format!("{before}{needle}{after}").into_bytes();
            let pattern = regex::escape(&needle);
            let response = rt
                .block_on(tcp_expect(&pattern, sent))
                .expect("an escaped literal compiles");
            prop_assert!(response.passing, "{response:?}");
            Ok(())
        })
        .unwrap();
}

/// A valid DNS response to `query` (for `svc.test`: two A records), from the tests' zone.
fn dns_answer(query: &[u8]) -> Vec<u8> {
    common::dns::answer(&common::dns::SVC_TEST, query).unwrap_or_default()
}

/// How a fuzzed server answers a DNS query.
#[derive(Debug, Clone)]
enum DnsReply {
    /// Arbitrary bytes, with the query's id put in front (so the probe parses them).
    Bytes(Vec<u8>),
    /// A valid answer with bytes overwritten after the id.
    Mutated(Vec<(usize, u8)>, Option<usize>),
}

fn dns_reply_bytes(reply: &DnsReply, query: &[u8]) -> Vec<u8> {
    let id = query.get(..2).unwrap_or(&[0, 0]).to_vec();
    match reply {
        DnsReply::Bytes(bytes) => [id, bytes.clone()].concat(),
        DnsReply::Mutated(edits, cut) => {
            let mut answer = dns_answer(query);
            for (at, byte) in edits {
                if answer.len() > 2 {
                    let at = 2 + at % (answer.len() - 2);
                    answer[at] = *byte;
                }
            }
            if let Some(cut) = cut {
                answer.truncate(2 + cut % answer.len().max(1));
            }
            answer
        }
    }
}

async fn dns_probe(reply: DnsReply, tcp: bool) -> bastion_agent::messages::Response {
    let address;
    let server = if tcp {
        let listener = tokio::net::TcpListener::bind("127.0.0.2:0").await.unwrap();
        address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            if let Ok((mut stream, _)) = listener.accept().await {
                let mut length = [0u8; 2];
                if stream.read_exact(&mut length).await.is_err() {
                    return;
                }
                let mut query = vec![0u8; usize::from(u16::from_be_bytes(length))];
                if stream.read_exact(&mut query).await.is_err() {
                    return;
                }
                let answer = dns_reply_bytes(&reply, &query);
                // The length prefix tells the truth for mutated answers, and whatever the
                // bytes say for arbitrary ones.
                let framed = match reply {
                    DnsReply::Bytes(_) => answer,
                    DnsReply::Mutated(..) => {
                        let length = u16::try_from(answer.len()).unwrap_or(u16::MAX);
                        [length.to_be_bytes().to_vec(), answer].concat()
                    }
                };
                let _ = stream.write_all(&framed).await;
                let _ = stream.shutdown().await;
            }
        })
    } else {
        let socket = tokio::net::UdpSocket::bind("127.0.0.2:0").await.unwrap();
        address = socket.local_addr().unwrap();
        tokio::spawn(async move {
            let mut query = vec![0u8; 4096];
            if let Ok((length, from)) = socket.recv_from(&mut query).await {
                let answer = dns_reply_bytes(&reply, &query[..length]);
                let _ = socket.send_to(&answer, from).await;
            }
        })
    };
    let transport = if tcp { "tcp" } else { "udp" };
    let config = common::config(&format!(
        r#"
        [[checks]]
        name = "fuzz"
        type = "dns"
        interval = "10s"
        timeout = "1s"
        query = "svc.test"
        server = "{address}"
        transport = "{transport}"
        [[checks.assertions]]
        key = "answer_count"
        relationship = "greaterThan"
        operand = "0"
        "#
    ));
    let result = common::run_single(&config).await;
    server.abort();
    result.responses.into_iter().next().expect("one response")
}

#[test]
fn fuzz_dns_answers_never_panic_and_fail_as_dns_errors() {
    let rt = runtime();
    let mut runner = runner(128);
    let reply = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..600).prop_map(DnsReply::Bytes),
        (
            proptest::collection::vec((any::<usize>(), any::<u8>()), 0..6),
            proptest::option::of(any::<usize>())
        )
            .prop_map(|(edits, cut)| DnsReply::Mutated(edits, cut)),
    ];
    let strategy = (reply, any::<bool>());
    runner
        .run(&strategy, |(reply, tcp)| {
            let unchanged = matches!(&reply, DnsReply::Mutated(edits, None) if edits.is_empty());
            let response = rt.block_on(dns_probe(reply, tcp));
            let kind = response.error_kind();
            // Whatever comes back carries the query's id, so it is read and judged: an
            // answer, or a dns error (a short TCP stream included), never a hang.
            prop_assert!(matches!(kind, None | Some(ErrorKind::Dns)), "{response:?}");
            if kind.is_none() {
                prop_assert!(response.sections.dns.is_some(), "{response:?}");
            }
            if unchanged {
                prop_assert!(response.passing, "{response:?}");
            }
            Ok(())
        })
        .unwrap();
}

/// Deep nesting is where recursive parsers break: the stack overflows (the process aborts)
/// or backtracking explodes. JSON path filters and regexes built as runs of up to 300
/// nested wrappers (closed or not) must compile or be refused, each well within the generous
/// bound here. Without the bounds of `assertions::check_json_path_bounds` this target aborts
/// the test process within its default cases.
#[test]
fn fuzz_deeply_nested_paths_and_regexes_compile_or_refuse_quickly() {
    let mut runner = runner(256);
    let path_wrapper = prop_oneof![
        Just(("(", ")")),
        Just(("!(", ")")),
        Just(("@[?", "]")),
        Just(("@.a[?", "]")),
        Just(("@[?", "")),
        Just(("(", "")),
    ];
    let regex_wrapper = prop_oneof![
        Just(("(", ")")),
        Just(("(?:", ")+")),
        Just(("(", "){2}")),
        Just(("(a|", ")")),
        Just(("[", "]")),
    ];
    // Runs of one wrapper, a few runs per case: homogeneous depth is what breaks parsers.
    let runs = |wrapper: BoxedStrategy<(&'static str, &'static str)>| {
        proptest::collection::vec((wrapper, 1usize..300), 1..4).prop_map(|runs| {
            runs.into_iter()
                .flat_map(|(wrapper, count)| std::iter::repeat_n(wrapper, count))
                .collect::<Vec<_>>()
        })
    };
    let strategy = prop_oneof![
        runs(path_wrapper.boxed()).prop_map(|wrappers| (false, wrappers)),
        runs(regex_wrapper.boxed()).prop_map(|wrappers| (true, wrappers)),
    ];
    runner
        .run(&strategy, |(regex, wrappers)| {
            let core = if regex { "a" } else { "@.a == 1" };
            let nested = wrappers
                .iter()
                .rev()
                .fold(core.to_string(), |inner, (open, close)| {
                    format!("{open}{inner}{close}")
                });
            let config = if regex {
                AssertionConfig {
                    key: AssertionKey::Body,
                    value: String::new(),
                    relationship: Relationship::RegExp,
                    operand: nested,
                }
            } else {
                AssertionConfig {
                    key: AssertionKey::Json,
                    value: format!("$[?{nested}]"),
                    relationship: Relationship::NotEmpty,
                    operand: String::new(),
                }
            };
            let started = std::time::Instant::now();
            let _ = CompiledAssertion::compile(&config, CheckType::Http, HTTP_KEYS);
            prop_assert!(
                started.elapsed() < Duration::from_secs(5),
                "compiling took {:?}",
                started.elapsed()
            );
            Ok(())
        })
        .unwrap();
}
