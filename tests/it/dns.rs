//! DNS checks against a real responder started here, answering real wire messages on UDP and
//! TCP: record types, rcodes (NXDOMAIN, SERVFAIL), a server name behind several addresses,
//! failures (refused, silence, garbage), assertions, and the `/metrics` series.

use crate::common;

use bastion_agent::model::ErrorKind;
use common::dns::{dns_port, serve_dns, Seen};
use common::*;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::net::TcpListener;

async fn one_server() -> (SocketAddr, Arc<Seen>) {
    let seen = Arc::new(Seen::default());
    let port = dns_port(&["127.0.0.1"]).await;
    (serve_dns("127.0.0.1", port, Arc::clone(&seen)).await, seen)
}

fn dns_check(name: &str, server: SocketAddr, query: &str, extra: &str) -> String {
    format!(
        r#"
        [[checks]]
        name = "{name}"
        type = "dns"
        interval = "5s"
        timeout = "1s"
        server = "{server}"
        query = "{query}"
        {extra}
        "#
    )
}

#[tokio::test]
async fn records_of_each_type_come_back_in_presentation_form_over_udp_and_tcp() {
    let (server, seen) = one_server().await;
    let config = config(
        &[
            dns_check("a-udp", server, "svc.test", ""),
            dns_check(
                "mx-tcp",
                server,
                "svc.test.",
                "record_type = \"MX\"\ntransport = \"tcp\"",
            ),
            dns_check("txt", server, "svc.test", "record_type = \"TXT\""),
            dns_check("aaaa-none", server, "svc.test", "record_type = \"AAAA\""),
        ]
        .concat(),
    );
    let (dispatcher, _) = dispatcher(&config);

    let a = run_check(&dispatcher, &config, "a-udp").await;
    let response = &a.responses[0];
    assert_eq!(response.target, server.to_string());
    assert!(response.error.is_none(), "{response:?}");
    let dns = response.sections.dns.as_ref().unwrap();
    assert_eq!(dns.rcode, "NOERROR");
    assert_eq!(
        dns.answers,
        ["svc.test. 60 IN A 127.0.0.2", "svc.test. 60 IN A 127.0.0.3"]
    );
    assert!(dns.authoritative);
    assert!(response.timings.request > 0.0, "{:?}", response.timings);
    assert!(a.passing);
    assert_eq!(seen.udp.load(Ordering::SeqCst), 1);
    assert_eq!(seen.tcp.load(Ordering::SeqCst), 0);

    let mx = run_check(&dispatcher, &config, "mx-tcp").await;
    let dns = mx.responses[0].sections.dns.as_ref().unwrap();
    assert_eq!(dns.answers, ["svc.test. 300 IN MX 10 mail.svc.test."]);
    assert!(mx.passing);
    assert_eq!(seen.tcp.load(Ordering::SeqCst), 1, "transport tcp uses TCP");
    assert!(mx.responses[0].timings.connect > 0.0);

    let txt = run_check(&dispatcher, &config, "txt").await;
    let dns = txt.responses[0].sections.dns.as_ref().unwrap();
    assert_eq!(dns.answers, ["svc.test. 300 IN TXT v=spf1 -all"]);

    let none = run_check(&dispatcher, &config, "aaaa-none").await;
    let dns = none.responses[0].sections.dns.as_ref().unwrap();
    assert_eq!((dns.rcode.as_str(), dns.answers.len()), ("NOERROR", 0));
    assert!(none.passing, "NOERROR with no records is an answer");
}

#[tokio::test]
async fn nxdomain_and_servfail_fail_by_default_and_can_be_asserted() {
    let (server, _) = one_server().await;
    let expect_nxdomain =
        "[[checks.assertions]]\nkey = \"rcode\"\nrelationship = \"equal\"\noperand = \"NXDOMAIN\"";
    let config = config(
        &[
            dns_check("missing", server, "missing.test", ""),
            dns_check("missing-expected", server, "missing.test", expect_nxdomain),
            dns_check("broken", server, "broken.test", "transport = \"tcp\""),
        ]
        .concat(),
    );
    let (dispatcher, _) = dispatcher(&config);

    let missing = run_check(&dispatcher, &config, "missing").await;
    let response = &missing.responses[0];
    assert!(
        response.error.is_none(),
        "an rcode is an answer, not an error"
    );
    assert_eq!(response.sections.dns.as_ref().unwrap().rcode, "NXDOMAIN");
    assert!(!missing.passing);

    let expected = run_check(&dispatcher, &config, "missing-expected").await;
    assert!(expected.passing, "{expected:?}");
    assert_eq!(expected.responses[0].assertions[0].actual, "NXDOMAIN");

    let broken = run_check(&dispatcher, &config, "broken").await;
    assert_eq!(
        broken.responses[0].sections.dns.as_ref().unwrap().rcode,
        "SERVFAIL"
    );
    assert!(!broken.passing);
}

#[tokio::test]
async fn refused_silent_and_garbage_answers_are_errors() {
    let (server, _) = one_server().await;
    let closed = {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap()
    };
    let config = config(
        &[
            dns_check("refused", closed, "svc.test", "transport = \"tcp\""),
            dns_check("silent-udp", server, "silent.test", ""),
            dns_check("silent-tcp", server, "silent.test", "transport = \"tcp\""),
            dns_check("garbage", server, "garbage.test", ""),
        ]
        .concat(),
    );
    let (dispatcher, _) = dispatcher(&config);

    let refused = run_check(&dispatcher, &config, "refused").await;
    let error = refused.responses[0].error.as_ref().unwrap();
    assert_eq!(error.kind, ErrorKind::Connect);
    assert!(refused.responses[0].sections.dns.is_none());

    for name in ["silent-udp", "silent-tcp"] {
        let silent = run_check(&dispatcher, &config, name).await;
        let error = silent.responses[0].error.as_ref().unwrap();
        assert_eq!(error.kind, ErrorKind::Timeout, "{name}");
        assert_eq!(
            error.message, "no complete answer within 1s during request",
            "{name}"
        );
    }

    let garbage = run_check(&dispatcher, &config, "garbage").await;
    let error = garbage.responses[0].error.as_ref().unwrap();
    assert_eq!(error.kind, ErrorKind::Dns);
    assert!(
        error
            .message
            .starts_with(&format!("the answer from {server} is not a DNS message")),
        "{}",
        error.message
    );
    assert!(!garbage.passing);
}

#[tokio::test]
async fn a_server_name_behind_several_addresses_gives_one_response_each() {
    let seen = Arc::new(Seen::default());
    let port = dns_port(&["127.0.0.2", "127.0.0.3"]).await;
    let first = serve_dns("127.0.0.2", port, Arc::clone(&seen)).await;
    serve_dns("127.0.0.3", port, Arc::clone(&seen)).await;
    // ns.test resolves (through the responder itself) to 127.0.0.2 and 127.0.0.3.
    let config = config(&format!(
        r#"
        [runner]
        dns_servers = ["{first}"]
        [[checks]]
        name = "by-name"
        type = "dns"
        interval = "5s"
        server = "ns.test:{port}"
        query = "svc.test"
        "#
    ));
    let result = run_single(&config).await;
    let targets: Vec<&str> = result.responses.iter().map(|r| r.target.as_str()).collect();
    assert_eq!(
        targets,
        [format!("127.0.0.2:{port}"), format!("127.0.0.3:{port}")]
    );
    for response in &result.responses {
        assert_eq!(response.sections.dns.as_ref().unwrap().answers.len(), 2);
        assert!(
            response.timings.resolve > 0.0,
            "the server's name was resolved"
        );
    }
    assert!(result.passing);
    // ns.test looked up (A and AAAA), then one query per instance.
    assert_eq!(seen.udp.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn assertions_read_rcode_answer_and_answer_count() {
    let (server, _) = one_server().await;
    let rows: &[AssertionRow] = &[
        ("rcode", "equal", "NOERROR", true, "NOERROR"),
        ("rcode", "notEqual", "NOERROR", false, "NOERROR"),
        ("answer_count", "equal", "2", true, "2"),
        ("answer_count", "greaterThan", "2", false, "2"),
        (
            "answer",
            "contain",
            "IN A 127.0.0.3",
            true,
            "svc.test. 60 IN A 127.0.0.2\nsvc.test. 60 IN A 127.0.0.3",
        ),
        (
            "answer",
            "regExp",
            "(?m)^svc\\.test\\. \\d+ IN A 127\\.0\\.0\\.2$",
            true,
            "svc.test. 60 IN A 127.0.0.2\nsvc.test. 60 IN A 127.0.0.3",
        ),
        (
            "answer",
            "notContain",
            "127.0.0.2",
            false,
            "svc.test. 60 IN A 127.0.0.2\nsvc.test. 60 IN A 127.0.0.3",
        ),
        ("latency", "lessThan", "30s", true, ""),
    ];
    assert_assertion_table(rows, |assertion| {
        dns_check("asserted", server, "svc.test", assertion)
    })
    .await;
}

#[tokio::test]
async fn bad_dns_definitions_are_refused_at_load() {
    let base = "[[checks]]\nname = \"d\"\ntype = \"dns\"\ninterval = \"5s\"\n";
    let cases = [
        (
            "query = \"svc.test\"\nrecord_type = \"AXFR\"\n",
            "unknown variant `AXFR`",
        ),
        (
            "query = \"svc.test\"\ntransport = \"quic\"\n",
            "unknown variant `quic`",
        ),
        ("query = \"\"\n", "check `d`: query `` is not a valid domain name: it is empty"),
        (
            "query = \"svc.test\"\nserver = \"dns server\"\n",
            "check `d`: server `dns server` is not valid",
        ),
        (
            "query = \"svc.test\"\n[[checks.assertions]]\nkey = \"status\"\nrelationship = \"equal\"\noperand = \"SERVING\"\n",
            "check `d`: assertion #1: key `status` does not apply to dns checks",
        ),
    ];
    assert_config_errors(base, &cases);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_series_appear_in_metrics() {
    let (server, _) = one_server().await;
    let (checks, text) = agent_scrape(&format!(
        r#"
        [[checks]]
        name = "svc"
        type = "dns"
        interval = "1s"
        timeout = "900ms"
        server = "{server}"
        query = "svc.test"
        [[checks]]
        name = "missing"
        type = "dns"
        interval = "1s"
        timeout = "900ms"
        server = "{server}"
        query = "missing.test"
        "#
    ))
    .await;
    assert_eq!(checks[0]["latest"]["passing"], true, "{checks}");
    assert_eq!(
        checks[0]["latest"]["responses"][0]["dns"]["rcode"],
        "NOERROR"
    );
    let svc = format!("check=\"svc\",target=\"{server}\"");
    let missing = format!("check=\"missing\",target=\"{server}\"");
    assert_eq!(
        metric(&text, &format!("probe_success{{{svc}}}")),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, &format!("probe_success{{{missing}}}")),
        Some(0.0)
    );
    assert_eq!(
        metric(&text, &format!("probe_dns_answer_rrs{{{svc}}}")),
        Some(2.0)
    );
    assert_eq!(
        metric(&text, &format!("probe_dns_answer_rrs{{{missing}}}")),
        Some(0.0)
    );
    for phase in ["resolve", "connect", "request"] {
        let series = format!("probe_dns_duration_seconds{{{svc},phase=\"{phase}\"}}");
        assert!(metric(&text, &series).is_some(), "{series} missing\n{text}");
    }
}

/// A DNS over TLS responder (RFC 7858): the test zone, two-byte framing inside TLS, with a
/// certificate of `ca` for 127.0.0.1, and ALPN `dot`.
async fn serve_dot(ca: &TestCa) -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let leaf = ca.leaf(
        &["127.0.0.1"],
        time::OffsetDateTime::now_utc() + time::Duration::days(30),
    );
    let acceptor = tokio_rustls::TlsAcceptor::from(leaf.server_config(&[b"dot"]));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(stream).await else {
                    return;
                };
                let mut prefix = [0u8; 2];
                if tls.read_exact(&mut prefix).await.is_err() {
                    return;
                }
                let mut query = vec![0u8; usize::from(u16::from_be_bytes(prefix))];
                if tls.read_exact(&mut query).await.is_err() {
                    return;
                }
                if let Some(bytes) = common::dns::answer(&common::dns::SVC_TEST, &query) {
                    let mut framed = (bytes.len() as u16).to_be_bytes().to_vec();
                    framed.extend_from_slice(&bytes);
                    let _ = tls.write_all(&framed).await;
                    let _ = tls.shutdown().await;
                }
            });
        }
    });
    address
}

#[tokio::test]
async fn dns_over_tls_verifies_the_server_and_answers() {
    let ca = TestCa::new("bastion test DoT CA");
    let server = serve_dot(&ca).await;
    let check = |ca_file: &std::path::Path| {
        format!(
            "[[checks]]\nname = \"dot\"\ntype = \"dns\"\ninterval = \"5s\"\ntimeout = \"2s\"\nquery = \"svc.test\"\nserver = \"{server}\"\ntransport = \"tls\"\n[checks.tls]\nca_file = \"{}\"\n",
            ca_file.display()
        )
    };
    let result = run_single(&config(&check(&ca.ca_file))).await;
    assert!(result.passing, "{result:?}");
    let response = &result.responses[0];
    assert_eq!(
        response.sections.dns.as_ref().unwrap().answers,
        ["svc.test. 60 IN A 127.0.0.2", "svc.test. 60 IN A 127.0.0.3"]
    );
    let tls = response.tls.as_ref().unwrap();
    assert_eq!(tls.alpn.as_deref(), Some("dot"));
    assert!(response.timings.tls > 0.0 && response.timings.request > 0.0);

    // A certificate from a CA the check does not trust is a tls error.
    let other = TestCa::new("another CA");
    let result = run_single(&config(&check(&other.ca_file))).await;
    let error = result.responses[0].error.as_ref().unwrap();
    assert_eq!(error.kind, ErrorKind::Tls, "{error:?}");
}

#[test]
fn dns_over_tls_and_https_need_a_server_and_take_their_ports() {
    let base =
        "[[checks]]\nname = \"dot\"\ntype = \"dns\"\ninterval = \"5s\"\nquery = \"svc.test\"\n";
    assert_config_errors(
        base,
        &[
            (
                "transport = \"tls\"",
                "transport = \"tls\" or \"https\" needs a server",
            ),
            (
                "transport = \"https\"",
                "transport = \"tls\" or \"https\" needs a server",
            ),
            (
                "server = \"127.0.0.1\"\ntls = { insecure_skip_verify = true }",
                "tls settings apply to transport = \"tls\" or \"https\" only",
            ),
            (
                "server = \"127.0.0.1\"\nhttps_path = \"/q\"",
                "https_path `/q` must start with `/`, and applies to transport = \"https\" only",
            ),
            (
                "server = \"127.0.0.1\"\ntransport = \"https\"\nhttps_path = \"q\"",
                "https_path `q` must start with `/`",
            ),
        ],
    );
    let compiled = bastion_agent::compiled::CompiledCheck::compile(
        &config(&format!(
            "{base}server = \"127.0.0.1\"\ntransport = \"tls\"\n"
        ))
        .checks[0],
    )
    .unwrap();
    assert_eq!(compiled.probe.host_and_port(), ("127.0.0.1", 853));
    let compiled = bastion_agent::compiled::CompiledCheck::compile(
        &config(&format!(
            "{base}server = \"127.0.0.1\"\ntransport = \"https\"\n"
        ))
        .checks[0],
    )
    .unwrap();
    assert_eq!(compiled.probe.host_and_port(), ("127.0.0.1", 443));
}

/// A DNS over HTTPS responder (RFC 8484): POSTs of `application/dns-message` to
/// `/dns-query` answered from the test zone over HTTP/1.1 in TLS; anything else 404.
async fn serve_doh(ca: &TestCa) -> SocketAddr {
    use http_body_util::BodyExt;
    let leaf = ca.leaf(
        &["127.0.0.1"],
        time::OffsetDateTime::now_utc() + time::Duration::days(30),
    );
    let acceptor = tokio_rustls::TlsAcceptor::from(leaf.server_config(&[b"http/1.1"]));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let service = hyper::service::service_fn(
                    |request: hyper::Request<hyper::body::Incoming>| async move {
                        let wanted = request.method() == hyper::Method::POST
                            && request.uri().path() == "/dns-query"
                            && request.headers().get("content-type").map(|v| v.as_bytes())
                                == Some(b"application/dns-message".as_slice());
                        let query = request
                            .into_body()
                            .collect()
                            .await
                            .map(|body| body.to_bytes())
                            .unwrap_or_default();
                        let answer = wanted
                            .then(|| common::dns::answer(&common::dns::SVC_TEST, &query))
                            .flatten();
                        let response = match answer {
                            Some(bytes) => hyper::Response::builder()
                                .header("content-type", "application/dns-message")
                                .body(http_body_util::Full::new(bytes::Bytes::from(bytes))),
                            None => hyper::Response::builder()
                                .status(404)
                                .header("content-type", "text/plain")
                                .body(http_body_util::Full::new(bytes::Bytes::from_static(b"no"))),
                        };
                        Ok::<_, std::convert::Infallible>(response.unwrap())
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    address
}

#[tokio::test]
async fn dns_over_https_posts_the_query_and_reads_the_answer() {
    let ca = TestCa::new("bastion test DoH CA");
    let server = serve_doh(&ca).await;
    let check = |extra: &str| {
        format!(
            "[[checks]]\nname = \"doh\"\ntype = \"dns\"\ninterval = \"5s\"\ntimeout = \"2s\"\nquery = \"svc.test\"\nserver = \"{server}\"\ntransport = \"https\"\n{extra}\n[checks.tls]\nca_file = \"{}\"\n",
            ca.ca_file.display()
        )
    };
    let result = run_single(&config(&check(""))).await;
    assert!(result.passing, "{result:?}");
    let response = &result.responses[0];
    assert_eq!(
        response.sections.dns.as_ref().unwrap().answers,
        ["svc.test. 60 IN A 127.0.0.2", "svc.test. 60 IN A 127.0.0.3"]
    );
    assert!(response.timings.tls > 0.0 && response.timings.request > 0.0);

    let result = run_single(&config(&check("https_path = \"/wrong\""))).await;
    let error = result.responses[0].error.as_ref().unwrap();
    assert_eq!(error.kind, ErrorKind::Dns, "{error:?}");
    assert!(
        error
            .message
            .contains("with 404 Not Found (text/plain); expected 200 application/dns-message"),
        "{error:?}"
    );
}
