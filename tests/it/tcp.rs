//! TCP checks against real line-protocol servers on 127.0.0.x: send/expect steps, TLS, every
//! instance of an address, failures (refused, a peer that closes, one that never answers, one
//! that talks past the cap), assertions, and the `/metrics` series.

use crate::common;

use bastion_agent::model::ErrorKind;
use common::*;
use std::sync::Arc;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// A line server: greets with `+OK <local address>`, answers `PING` with `PONG`, `QUIT` with
/// `BYE` and a close, and anything else with `-ERR`.
async fn line_session<S: AsyncRead + AsyncWrite + Unpin>(stream: S, local: String) {
    let (read, mut write) = tokio::io::split(stream);
    let mut lines = BufReader::new(read).lines();
    if write
        .write_all(format!("+OK {local}\r\n").as_bytes())
        .await
        .is_err()
    {
        return;
    }
    while let Ok(Some(line)) = lines.next_line().await {
        let reply = match line.trim() {
            "PING" => "PONG\r\n",
            "QUIT" => {
                let _ = write.write_all(b"BYE\r\n").await;
                let _ = write.shutdown().await;
                return;
            }
            _ => "-ERR unknown command\r\n",
        };
        if write.write_all(reply.as_bytes()).await.is_err() {
            return;
        }
    }
}

fn serve_lines(listener: TcpListener) {
    tokio::spawn(async move {
        let local = listener.local_addr().unwrap().to_string();
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(line_session(stream, local.clone()));
        }
    });
}

const PING_STEPS: &str = r#"
        [[checks.steps]]
        expect = '^\+OK'
        [[checks.steps]]
        send = "PING\r\n"
        [[checks.steps]]
        expect = "PONG"
"#;

#[tokio::test]
async fn send_and_expect_steps_run_on_every_instance() {
    let (port, listeners) = listeners_on_one_port(&["127.0.0.2", "127.0.0.3", "127.0.0.4"]).await;
    for listener in listeners {
        serve_lines(listener);
    }
    let config = config(&format!(
        r#"
        [[checks]]
        name = "lines"
        type = "tcp"
        interval = "5s"
        address = "lines.test:{port}"
        instances = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
        {PING_STEPS}
        "#
    ));
    let result = run_single(&config).await;
    assert_eq!(result.responses.len(), 3);
    for (response, last) in result.responses.iter().zip(2..) {
        let target = format!("127.0.0.{last}:{port}");
        assert_eq!(response.target, target);
        assert!(response.error.is_none(), "{response:?}");
        let tcp = response.sections.tcp.as_ref().unwrap();
        assert!(tcp.connected);
        // Each instance's own greeting: the response is built from its own connection.
        assert_eq!(tcp.body, format!("+OK {target}\r\nPONG\r\n"));
        assert_eq!(tcp.steps_done, 3);
        assert!(!tcp.truncated);
        assert!(response.timings.connect > 0.0, "{:?}", response.timings);
        assert!(response.timings.exchange > 0.0, "{:?}", response.timings);
        assert_eq!(response.timings.tls, 0.0);
        assert!(response.passing);
    }
    assert!(result.passing);
    let json = serde_json::to_value(&result).unwrap();
    assert_eq!(json["type"], "tcp");
    assert_eq!(json["responses"][0]["tcp"]["connected"], true);
    assert!(json["responses"][0].get("dns").is_none(), "{json}");
}

#[tokio::test]
async fn tls_is_spoken_before_the_steps() {
    let ca = TestCa::new("bastion test CA");
    let identity = ca.leaf(
        &["lines.test"],
        time::OffsetDateTime::now_utc() + time::Duration::days(90),
    );
    let server_config = identity.server_config(&[]);
    let listener = TcpListener::bind("127.0.0.2:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = tokio_rustls::TlsAcceptor::from(Arc::clone(&server_config));
            tokio::spawn(async move {
                if let Ok(tls) = acceptor.accept(stream).await {
                    line_session(tls, "tls".to_string()).await;
                }
            });
        }
    });
    let config = config(&format!(
        r#"
        [[checks]]
        name = "tls-lines"
        type = "tcp"
        interval = "5s"
        address = "{address}"
        tls = true
        server_name = "lines.test"
        ca_file = "{}"
        {PING_STEPS}
        [[checks]]
        name = "tls-wrong-name"
        type = "tcp"
        interval = "5s"
        address = "{address}"
        tls = true
        ca_file = "{}"
        "#,
        ca.ca_file.display(),
        ca.ca_file.display()
    ));
    let (dispatcher, _) = dispatcher(&config);
    let result = run_check(&dispatcher, &config, "tls-lines").await;
    let response = &result.responses[0];
    assert!(response.error.is_none(), "{response:?}");
    assert_eq!(
        response.sections.tcp.as_ref().unwrap().body,
        "+OK tls\r\nPONG\r\n"
    );
    let tls = response.tls.as_ref().unwrap();
    assert_eq!(tls.version, "TLSv1.3");
    assert!(tls.earliest_cert_expiry.is_some());
    assert!(response.timings.tls > 0.0);
    assert!(result.passing);

    // The certificate names lines.test, not the IP the address gives.
    let wrong = run_check(&dispatcher, &config, "tls-wrong-name").await;
    let error = wrong.responses[0].error.as_ref().unwrap();
    assert_eq!(error.kind, ErrorKind::Tls);
    assert!(
        error.message.contains("certificate not valid for name"),
        "{}",
        error.message
    );
    assert!(!wrong.responses[0].sections.tcp.as_ref().unwrap().connected);
}

#[tokio::test]
async fn failures_are_reported_with_their_kind() {
    // Refused: nothing listens on this port any more.
    let refused = refused_address().await;
    // A peer that says something else and closes.
    let closing = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let closing_address = closing.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = closing.accept().await {
            let _ = stream.write_all(b"HELLO\r\n").await;
            let _ = stream.shutdown().await;
        }
    });
    // A peer that accepts and never says anything.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_address = silent.local_addr().unwrap();
    serve_silent(silent);
    // A peer that talks forever without the expected word.
    let chatty = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let chatty_address = chatty.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = chatty.accept().await {
            tokio::spawn(async move {
                let chunk = [b'x'; 1024];
                while stream.write_all(&chunk).await.is_ok() {}
            });
        }
    });
    let config = config(&format!(
        r#"
        [runner]
        max_body_bytes = 4096
        [[checks]]
        name = "refused"
        type = "tcp"
        interval = "5s"
        address = "{refused}"
        [[checks]]
        name = "closing"
        type = "tcp"
        interval = "5s"
        address = "{closing_address}"
        [[checks.steps]]
        expect = "^\\+OK"
        [[checks]]
        name = "silent"
        type = "tcp"
        interval = "5s"
        timeout = "300ms"
        address = "{silent_address}"
        [[checks.steps]]
        expect = "^\\+OK"
        [[checks]]
        name = "chatty"
        type = "tcp"
        interval = "5s"
        address = "{chatty_address}"
        [[checks.steps]]
        expect = "OK"
        "#
    ));
    let (dispatcher, _) = dispatcher(&config);

    let refused = run_check(&dispatcher, &config, "refused").await;
    let response = &refused.responses[0];
    assert_eq!(response.error.as_ref().unwrap().kind, ErrorKind::Connect);
    assert!(!response.sections.tcp.as_ref().unwrap().connected);
    assert!(!refused.passing);

    let closing = run_check(&dispatcher, &config, "closing").await;
    let response = &closing.responses[0];
    let error = response.error.as_ref().unwrap();
    assert_eq!(error.kind, ErrorKind::Expect);
    assert_eq!(
        error.message,
        format!("step #1: expect `^\\+OK` found no match before {closing_address} closed the connection (7 bytes received)")
    );
    let tcp = response.sections.tcp.as_ref().unwrap();
    assert!(tcp.connected);
    assert_eq!(tcp.body, "HELLO\r\n");
    assert_eq!(tcp.steps_done, 0);
    assert!(!closing.passing);

    let silent = run_check(&dispatcher, &config, "silent").await;
    let response = &silent.responses[0];
    let error = response.error.as_ref().unwrap();
    assert_eq!(error.kind, ErrorKind::Timeout);
    assert_eq!(
        error.message,
        "no complete answer within 300ms during exchange"
    );
    assert!(response.sections.tcp.as_ref().unwrap().connected);

    let chatty = run_check(&dispatcher, &config, "chatty").await;
    let response = &chatty.responses[0];
    let error = response.error.as_ref().unwrap();
    assert_eq!(error.kind, ErrorKind::Expect);
    assert_eq!(
        error.message,
        "step #1: expect `OK` found no match in the first 4096 bytes (runner.max_body_bytes)"
    );
    let tcp = response.sections.tcp.as_ref().unwrap();
    assert!(tcp.truncated);
    assert_eq!(tcp.body.len(), 4096);
}

#[tokio::test]
async fn assertions_read_connected_body_and_latency() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    serve_lines(listener);
    let body = format!("+OK {address}\r\nPONG\r\n");
    let rows: &[AssertionRow] = &[
        ("connected", "equal", "true", true, "true"),
        ("connected", "notEqual", "true", false, "true"),
        ("body", "contain", "pong", true, &body),
        ("body", "notContain", "ERR", true, &body),
        ("body", "regExp", "(?m)^PONG\\r$", true, &body),
        ("body", "equal", "PONG", false, &body),
        ("body", "notEmpty", "", true, &body),
        ("latency", "lessThan", "30s", true, ""),
        ("latency", "greaterThan", "30s", false, ""),
    ];
    assert_assertion_table(rows, |assertion| {
        format!(
            r#"
            [[checks]]
            name = "asserted"
            type = "tcp"
            interval = "5s"
            address = "{address}"
            {PING_STEPS}
            {assertion}
            "#
        )
    })
    .await;
}

#[tokio::test]
async fn bad_tcp_definitions_are_refused_at_load() {
    let base = "[[checks]]\nname = \"t\"\ntype = \"tcp\"\ninterval = \"5s\"\n";
    let cases = [
        (
            "address = \"db.internal\"\n",
            "check `t`: address `db.internal` is not valid: it has no port; write host:port",
        ),
        (
            "address = \"db:1\"\n[[checks.steps]]\nsend = \"a\"\nexpect = \"b\"\n",
            "check `t`: step #1 must have exactly one of `send` and `expect`",
        ),
        (
            "address = \"db:1\"\n[[checks.steps]]\nexpect = \"(\"\n",
            "check `t`: step #1: expect `(` is not a valid regex",
        ),
        (
            "address = \"db:1\"\nca_file = \"/x.pem\"\n",
            "check `t`: ca_file only applies with tls = true; set tls = true or remove it",
        ),
        (
            "address = \"db:1\"\n[[checks.assertions]]\nkey = \"code\"\nrelationship = \"equal\"\noperand = \"200\"\n",
            "check `t`: assertion #1: key `code` does not apply to tcp checks",
        ),
    ];
    assert_config_errors(base, &cases);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_series_appear_in_metrics() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    serve_lines(listener);
    let (checks, text) = agent_scrape(&format!(
        r#"
        [[checks]]
        name = "lines"
        type = "tcp"
        interval = "1s"
        timeout = "900ms"
        address = "{address}"
        {PING_STEPS}
        "#
    ))
    .await;
    assert_eq!(checks[0]["latest"]["type"], "tcp");
    assert_eq!(checks[0]["latest"]["passing"], true, "{checks}");
    let labels = format!("check=\"lines\",target=\"{address}\"");
    assert_eq!(
        metric(&text, &format!("probe_success{{{labels}}}")),
        Some(1.0),
        "{text}"
    );
    for phase in ["resolve", "connect", "tls", "exchange"] {
        let series = format!("probe_tcp_duration_seconds{{{labels},phase=\"{phase}\"}}");
        assert!(metric(&text, &series).is_some(), "{series} missing\n{text}");
    }
    assert_eq!(
        metric(&text, "bastion_workers{type=\"tcp\"}"),
        Some(10.0),
        "{text}"
    );
}

/// A last expect step ends the exchange when its match arrived (the kernel's receive stamp),
/// not when a busy worker read it: the server answers 300 ms after the probe's line while the
/// probe's only worker is held for 800 ms.
#[tokio::test]
async fn the_exchange_ends_when_the_expected_bytes_arrived_not_when_a_busy_worker_read_them() {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let asked = Arc::new(tokio::sync::Notify::new());
    let line_read = Arc::clone(&asked);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let line_read = Arc::clone(&line_read);
            std::thread::spawn(move || {
                if stream.read(&mut [0u8; 64]).unwrap_or(0) == 0 {
                    return;
                }
                line_read.notify_one();
                std::thread::sleep(std::time::Duration::from_millis(300));
                let _ = stream.write_all(b"+OK ready\r\n");
                std::thread::sleep(std::time::Duration::from_secs(2));
            });
        }
    });
    let config = config(&format!(
        r#"
        [runner]
        max_arrival_correction = "5s"
        [[checks]]
        name = "late-greeting"
        type = "tcp"
        interval = "10s"
        timeout = "5s"
        address = "{address}"
        [[checks.steps]]
        send = "HELLO\r\n"
        [[checks.steps]]
        expect = '^\+OK'
        "#
    ));
    let (result, _) = run_single_with_worker_held(&config, asked).await;
    let timings = result.responses[0].timings;
    assert!(
        (0.3..0.6).contains(&timings.exchange),
        "the exchange is the server's 300 ms, not the hog's 800: {timings:?}"
    );
}
