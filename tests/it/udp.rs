//! UDP checks against real datagram peers on 127.0.0.x: an echo server (text and hex
//! payloads, `expect` matched and not, a `body` assertion), a closed port (ICMP port
//! unreachable is `connect`), a peer that never answers (`timeout`), and the `/metrics`
//! series of a whole agent.

use crate::common::*;
use bastion_agent::model::ErrorKind;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;

/// An echo server: every datagram goes back to its sender, prefixed with `echo:`.
async fn echo_server(ip: &str) -> SocketAddr {
    let socket = UdpSocket::bind((ip, 0)).await.unwrap();
    let address = socket.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buffer = vec![0u8; 65_535];
        while let Ok((read, from)) = socket.recv_from(&mut buffer).await {
            let mut reply = b"echo:".to_vec();
            reply.extend_from_slice(&buffer[..read]);
            let _ = socket.send_to(&reply, from).await;
        }
    });
    address
}

/// A UDP port nothing listens on: the kernel answers ICMP port unreachable.
async fn closed_port() -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.local_addr().unwrap()
}

fn udp_check(address: SocketAddr, extra: &str) -> String {
    format!(
        "[[checks]]\nname = \"u\"\ntype = \"udp\"\ninterval = \"5s\"\ntimeout = \"1s\"\naddress = \"{address}\"\n{extra}\n"
    )
}

#[tokio::test]
async fn an_echo_server_answers_text_and_hex_payloads() {
    let address = echo_server("127.0.0.2").await;
    let result = run_single(&config(&udp_check(
        address,
        "send = \"ping\"\nexpect = '^echo:ping$'",
    )))
    .await;
    let response = &result.responses[0];
    assert!(result.passing, "{result:?}");
    assert_eq!(response.target, address.to_string());
    let udp = response.sections.udp.as_ref().unwrap();
    assert!(udp.replied);
    assert_eq!(udp.body, "echo:ping");
    assert_eq!(udp.sent_bytes, 4);
    assert!(response.timings.request > 0.0);
    assert_eq!(response.timings.total, response.timings.request);

    let result = run_single(&config(&udp_check(
        address,
        &format!(
            "send_hex = \"70 6f 6e 67\"\n{}",
            assertion_toml("body", "contain", "echo:pong")
        ),
    )))
    .await;
    assert!(result.passing, "{result:?}");
    assert_eq!(result.responses[0].assertions[0].actual, "echo:pong");
}

#[tokio::test]
async fn a_reply_that_does_not_match_is_an_expect_error() {
    let address = echo_server("127.0.0.2").await;
    let result = run_single(&config(&udp_check(
        address,
        "send = \"ping\"\nexpect = '^pong'",
    )))
    .await;
    let response = &result.responses[0];
    assert!(!result.passing);
    let error = response.error.as_ref().unwrap();
    assert_eq!(error.kind, ErrorKind::Expect, "{error:?}");
    assert!(
        error.message.contains("did not match the 9-byte reply"),
        "{error:?}"
    );
    assert_eq!(response.sections.udp.as_ref().unwrap().body, "echo:ping");
}

#[tokio::test]
async fn a_closed_port_is_a_connect_error() {
    let address = closed_port().await;
    let started = Instant::now();
    let result = run_single(&config(&udp_check(address, "send = \"ping\""))).await;
    let error = result.responses[0].error.as_ref().unwrap();
    assert_eq!(error.kind, ErrorKind::Connect, "{error:?}");
    assert!(error.message.contains("port unreachable"), "{error:?}");
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "not a timeout"
    );
    assert!(!result.responses[0].sections.udp.as_ref().unwrap().replied);
}

#[tokio::test]
async fn a_silent_peer_is_a_timeout_in_the_request_phase() {
    let silent = UdpSocket::bind("127.0.0.3:0").await.unwrap();
    let address = silent.local_addr().unwrap();
    let started = Instant::now();
    let result = run_single(&config(&udp_check(address, "send = \"ping\""))).await;
    let elapsed = started.elapsed();
    let error = result.responses[0].error.as_ref().unwrap();
    assert_eq!(error.kind, ErrorKind::Timeout, "{error:?}");
    assert!(error.message.contains("during request"), "{error:?}");
    assert!(elapsed >= Duration::from_millis(950) && elapsed < Duration::from_secs(3));
    drop(silent);
}

#[test]
fn udp_definitions_are_checked_at_load() {
    let base = "[[checks]]\nname = \"u\"\ntype = \"udp\"\ninterval = \"5s\"\n";
    assert_config_errors(
        base,
        &[
            (
                "address = \"127.0.0.1\"\nsend = \"x\"",
                "address `127.0.0.1` is not valid: it has no port",
            ),
            (
                "address = \"127.0.0.1:53\"",
                "set exactly one of `send` and `send_hex`",
            ),
            (
                "address = \"127.0.0.1:53\"\nsend_hex = \"0g\"",
                "send_hex `0g` is not hex",
            ),
            (
                "address = \"127.0.0.1:53\"\nsend = \"x\"\nexpect = \"(\"",
                "expect `(` is not a valid regex",
            ),
            (
                "address = \"127.0.0.1:53\"\nsend = \"x\"\n[[checks.assertions]]\nkey = \"code\"\nrelationship = \"equal\"\noperand = \"200\"",
                "code",
            ),
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_series_appear_in_metrics() {
    let address = echo_server("127.0.0.1").await;
    let (checks, text) = agent_scrape(&format!(
        "[[checks]]\nname = \"echo\"\ntype = \"udp\"\ninterval = \"1s\"\ntimeout = \"900ms\"\naddress = \"{address}\"\nsend = \"hi\"\nexpect = \"echo:hi\"\n"
    ))
    .await;
    assert_eq!(checks[0]["latest"]["type"], "udp");
    assert_eq!(checks[0]["latest"]["passing"], true, "{checks}");
    assert_eq!(
        checks[0]["latest"]["responses"][0]["udp"]["body"],
        "echo:hi"
    );
    let labels = format!("check=\"echo\",target=\"{address}\"");
    assert_eq!(
        metric(&text, &format!("probe_success{{{labels}}}")),
        Some(1.0),
        "{text}"
    );
    for phase in ["resolve", "request"] {
        let series = format!("probe_udp_duration_seconds{{{labels},phase=\"{phase}\"}}");
        assert!(metric(&text, &series).is_some(), "{series} missing\n{text}");
    }
    assert_eq!(
        metric(&text, "bastion_workers{type=\"udp\"}"),
        Some(10.0),
        "{text}"
    );
}
