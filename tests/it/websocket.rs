//! WebSocket checks against a real WebSocket server written here (RFC 6455 framing by hand,
//! as the probe's peer must be independent of it): the upgrade alone, a message and its
//! echo, an echo that `expect` refuses, a server that will not upgrade or answers with the
//! wrong accept key, config errors, and the `/metrics` series of a whole agent.

use crate::common::*;
use base64::Engine;
use bastion_agent::model::ErrorKind;
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How the test server answers the upgrade.
#[derive(Clone, Copy)]
enum Upgrade {
    Proper,
    Refuse,
    WrongAccept,
}

async fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).await.unwrap_or(0) == 0 {
            break;
        }
        head.push(byte[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// The `Sec-WebSocket-Accept` a server answers an upgrade request's `head` with (RFC 6455).
fn accept_for(head: &str) -> String {
    let key = head
        .lines()
        .find_map(|line| line.strip_prefix("Sec-WebSocket-Key: "))
        .unwrap_or_default()
        .trim();
    base64::engine::general_purpose::STANDARD.encode(
        ring::digest::digest(
            &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
            format!("{key}258EAFA5-E914-47DA-95CA-C5AB0DC85B11").as_bytes(),
        )
        .as_ref(),
    )
}

/// One client frame: (opcode, unmasked payload).
async fn read_frame(stream: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    let mut header = [0u8; 2];
    stream.read_exact(&mut header).await.ok()?;
    assert!(header[1] & 0x80 != 0, "client frames are masked");
    let length = match header[1] & 0x7f {
        126 => {
            let mut bytes = [0u8; 2];
            stream.read_exact(&mut bytes).await.ok()?;
            usize::from(u16::from_be_bytes(bytes))
        }
        127 => return None,
        short => usize::from(short),
    };
    let mut mask = [0u8; 4];
    stream.read_exact(&mut mask).await.ok()?;
    let mut payload = vec![0u8; length];
    stream.read_exact(&mut payload).await.ok()?;
    for (index, byte) in payload.iter_mut().enumerate() {
        *byte ^= mask[index % 4];
    }
    Some((header[0] & 0x0f, payload))
}

/// A WebSocket echo server: each text message comes back as `echo:<message>`, after a ping
/// the probe must skip.
async fn ws_server(upgrade: Upgrade) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let head = read_head(&mut stream).await;
                let accept = match upgrade {
                    Upgrade::WrongAccept => "bm90IGl0".to_string(),
                    _ => accept_for(&head),
                };
                let answer = match upgrade {
                    Upgrade::Refuse => {
                        "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nno".to_string()
                    }
                    _ => format!(
                        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
                    ),
                };
                if stream.write_all(answer.as_bytes()).await.is_err() {
                    return;
                }
                while let Some((opcode, payload)) = read_frame(&mut stream).await {
                    match opcode {
                        0x1 => {
                            let mut reply = b"echo:".to_vec();
                            reply.extend_from_slice(&payload);
                            let mut frames = vec![0x89, 0x02, b'h', b'i'];
                            frames.extend_from_slice(&[0x81, reply.len() as u8]);
                            frames.extend_from_slice(&reply);
                            let _ = stream.write_all(&frames).await;
                        }
                        0x8 => {
                            let _ = stream.write_all(&[0x88, 0x02, 0x03, 0xe8]).await;
                            return;
                        }
                        _ => {}
                    }
                }
            });
        }
    });
    address
}

fn ws_check(address: SocketAddr, extra: &str) -> String {
    format!(
        "[[checks]]\nname = \"ws\"\ntype = \"websocket\"\ninterval = \"5s\"\ntimeout = \"2s\"\nurl = \"ws://{address}/chat?room=1\"\n{extra}\n"
    )
}

#[tokio::test]
async fn the_upgrade_alone_passes_and_a_message_comes_back() {
    let address = ws_server(Upgrade::Proper).await;
    let result = run_single(&config(&ws_check(address, ""))).await;
    assert!(result.passing, "{result:?}");
    let websocket = result.responses[0].sections.websocket.as_ref().unwrap();
    assert!(websocket.upgraded);
    assert_eq!(websocket.status, Some(101));
    assert!(result.responses[0].timings.processing > 0.0);

    let result = run_single(&config(&ws_check(
        address,
        &format!(
            "send = \"hello\"\nexpect = \"^echo:hello$\"\nheaders = {{ X-Probe = \"1\" }}\n{}",
            assertion_toml("body", "contain", "hello")
        ),
    )))
    .await;
    assert!(result.passing, "{result:?}");
    let response = &result.responses[0];
    assert_eq!(
        response.sections.websocket.as_ref().unwrap().body,
        "echo:hello"
    );
    assert!(response.timings.exchange > 0.0);
    let timings = &response.timings;
    let sum = timings.resolve + timings.connect + timings.processing + timings.exchange;
    assert!((sum - timings.total).abs() < 1e-9, "{timings:?}");
}

#[tokio::test]
async fn an_answer_expect_refuses_is_an_expect_error() {
    let address = ws_server(Upgrade::Proper).await;
    let result = run_single(&config(&ws_check(
        address,
        "send = \"hello\"\nexpect = \"^pong\"",
    )))
    .await;
    let error = result.responses[0].error.as_ref().unwrap();
    assert_eq!(error.kind, ErrorKind::Expect, "{error:?}");
    assert_eq!(
        result.responses[0]
            .sections
            .websocket
            .as_ref()
            .unwrap()
            .body,
        "echo:hello"
    );
}

#[tokio::test]
async fn a_server_that_does_not_upgrade_properly_is_an_http_error() {
    let refusing = ws_server(Upgrade::Refuse).await;
    let result = run_single(&config(&ws_check(refusing, ""))).await;
    let error = result.responses[0].error.as_ref().unwrap();
    assert_eq!(error.kind, ErrorKind::Http, "{error:?}");
    assert!(error.message.contains("with 200, not 101"), "{error:?}");
    assert_eq!(
        result.responses[0]
            .sections
            .websocket
            .as_ref()
            .unwrap()
            .status,
        Some(200)
    );

    let wrong = ws_server(Upgrade::WrongAccept).await;
    let result = run_single(&config(&ws_check(wrong, ""))).await;
    let error = result.responses[0].error.as_ref().unwrap();
    assert_eq!(error.kind, ErrorKind::Http, "{error:?}");
    assert!(error.message.contains("Sec-WebSocket-Accept"), "{error:?}");

    let refused = refused_address().await;
    let result = run_single(&config(&ws_check(refused, ""))).await;
    assert_eq!(
        result.responses[0].error.as_ref().unwrap().kind,
        ErrorKind::Connect
    );
}

#[test]
fn websocket_definitions_are_checked_at_load() {
    let base = "[[checks]]\nname = \"ws\"\ntype = \"websocket\"\ninterval = \"5s\"\n";
    assert_config_errors(
        base,
        &[
            ("url = \"http://x/\"", "the scheme must be ws or wss"),
            ("url = \"ws://x/\"\nexpect = \"a\"", "expect needs send"),
            (
                "url = \"ws://x/\"\nsend = \"a\"\nexpect = \"(\"",
                "expect `(` is not a valid regex",
            ),
            (
                "url = \"ws://x/\"\nheaders = { Sec-WebSocket-Key = \"k\" }",
                "header `Sec-WebSocket-Key` cannot be set",
            ),
            (
                "url = \"ws://x/\"\ntls = { insecure_skip_verify = true }",
                "tls settings apply to wss:// URLs only",
            ),
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_series_appear_in_metrics() {
    let address = ws_server(Upgrade::Proper).await;
    let (checks, text) = agent_scrape(&format!(
        "[[checks]]\nname = \"chat\"\ntype = \"websocket\"\ninterval = \"1s\"\ntimeout = \"900ms\"\nurl = \"ws://{address}/\"\nsend = \"hi\"\nexpect = \"echo:hi\"\n"
    ))
    .await;
    assert_eq!(checks[0]["latest"]["type"], "websocket");
    assert_eq!(checks[0]["latest"]["passing"], true, "{checks}");
    let labels = format!("check=\"chat\",target=\"{address}\"");
    assert_eq!(
        metric(&text, &format!("probe_success{{{labels}}}")),
        Some(1.0),
        "{text}"
    );
    for phase in ["resolve", "connect", "tls", "processing", "exchange"] {
        let series = format!("probe_websocket_duration_seconds{{{labels},phase=\"{phase}\"}}");
        assert!(metric(&text, &series).is_some(), "{series} missing\n{text}");
    }
}

/// The upgrade's processing ends when the 101 arrived (the kernel's receive stamp), not when
/// a busy worker read it: the server answers 300 ms after the request while the probe's only
/// worker is held for 800 ms.
#[tokio::test]
async fn the_upgrade_ends_when_its_answer_arrived_not_when_a_busy_worker_read_it() {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let asked = std::sync::Arc::new(tokio::sync::Notify::new());
    let upgrade_read = std::sync::Arc::clone(&asked);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let upgrade_read = std::sync::Arc::clone(&upgrade_read);
            std::thread::spawn(move || {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if stream.read(&mut byte).unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let accept = accept_for(&String::from_utf8_lossy(&head));
                upgrade_read.notify_one();
                std::thread::sleep(std::time::Duration::from_millis(300));
                let _ = stream.write_all(format!(
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
                ).as_bytes());
                let _ = stream.read(&mut [0u8; 64]);
            });
        }
    });
    let config = config(&format!(
        "[runner]\nmax_arrival_correction = \"5s\"\n{}",
        ws_check(address, "").replace("timeout = \"2s\"", "timeout = \"4s\"")
    ));
    let (result, _) = run_single_with_worker_held(&config, asked).await;
    let timings = result.responses[0].timings;
    assert!(
        (0.3..0.6).contains(&timings.processing),
        "processing is the server's 300 ms, not the hog's 800: {timings:?}"
    );
}
