//! TLS certificate checks against real rustls servers with certificates made here by rcgen: one
//! valid, one expiring in 3 days, one expired, one from an unknown CA. Also failures (refused,
//! silence, a peer that speaks no TLS), assertions, and the `/metrics` series, including
//! `probe_ssl_earliest_cert_expiry` from an HTTPS check.

use crate::common;

use bastion_agent::messages::CheckResult;
use bastion_agent::model::ErrorKind;
use common::*;
use std::net::SocketAddr;
use std::time::SystemTime;
use time::OffsetDateTime;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

/// Serves TLS handshakes with `identity` (and, after one, an HTTP/1.1 `200 ok` to a request).
async fn serve_identity(ip: &str, identity: &TestIdentity) -> SocketAddr {
    let listener = TcpListener::bind((ip, 0)).await.unwrap();
    let address = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(identity.server_config(&[b"http/1.1"]));
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(stream).await else {
                    return;
                };
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    match tokio::io::AsyncReadExt::read(&mut tls, &mut byte).await {
                        Ok(1) => head.push(byte[0]),
                        _ => return,
                    }
                }
                let _ = tls
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                    )
                    .await;
                let _ = tls.shutdown().await;
            });
        }
    });
    address
}

fn days(n: i64) -> OffsetDateTime {
    OffsetDateTime::now_utc() + time::Duration::days(n)
}

fn tls_check(name: &str, address: SocketAddr, ca: &TestCa, extra: &str) -> String {
    format!(
        r#"
        [[checks]]
        name = "{name}"
        type = "tls"
        interval = "5s"
        timeout = "1s"
        address = "{address}"
        server_name = "svc.test"
        ca_file = "{}"
        {extra}
        "#,
        ca.ca_file.display()
    )
}

fn expiry_days(result: &CheckResult) -> f64 {
    let expiry = result.responses[0]
        .tls
        .as_ref()
        .unwrap()
        .earliest_cert_expiry
        .unwrap();
    match expiry.duration_since(SystemTime::now()) {
        Ok(left) => left.as_secs_f64() / 86_400.0,
        Err(past) => -past.duration().as_secs_f64() / 86_400.0,
    }
}

#[tokio::test]
async fn a_valid_chain_reports_its_certificate_and_passes() {
    let ca = TestCa::new("bastion test CA");
    let address = serve_identity(
        "127.0.0.2",
        &ca.leaf(&["svc.test", "api.svc.test"], days(90)),
    )
    .await;
    let config = config(&tls_check("valid", address, &ca, ""));
    let result = run_single(&config).await;
    let response = &result.responses[0];
    assert_eq!(response.target, address.to_string());
    assert!(response.error.is_none(), "{response:?}");
    let tls = response.tls.as_ref().unwrap();
    assert_eq!(tls.version, "TLSv1.3");
    let chain = tls.chain.as_ref().unwrap();
    assert!(chain.valid);
    assert_eq!(chain.error, None);
    assert_eq!(chain.certificates.len(), 1);
    let leaf = &chain.certificates[0];
    assert_eq!(leaf.subject, "CN=svc.test");
    assert_eq!(leaf.issuer, "CN=bastion test CA");
    assert_eq!(leaf.san, ["svc.test", "api.svc.test"]);
    assert_eq!(Some(leaf.not_after), tls.earliest_cert_expiry);
    let left = expiry_days(&result);
    assert!((89.0..=90.0).contains(&left), "{left}");
    assert!(response.timings.tls > 0.0);
    assert!(result.passing);
}

#[tokio::test]
async fn a_certificate_expiring_in_3_days_passes_unless_cert_expiry_is_asserted() {
    let ca = TestCa::new("bastion test CA");
    let address = serve_identity("127.0.0.3", &ca.leaf(&["svc.test"], days(3))).await;
    let assertion =
        "[[checks.assertions]]\nkey = \"cert_expiry\"\nrelationship = \"greaterThan\"\noperand = \"14d\"";
    let config = config(
        &[
            tls_check("soon", address, &ca, ""),
            tls_check("soon-asserted", address, &ca, assertion),
        ]
        .concat(),
    );
    let (dispatcher, _) = dispatcher(&config);
    let plain = run_check(&dispatcher, &config, "soon").await;
    assert!(plain.passing, "{plain:?}");
    let left = expiry_days(&plain);
    assert!((2.0..=3.0).contains(&left), "{left}");

    let asserted = run_check(&dispatcher, &config, "soon-asserted").await;
    assert!(!asserted.passing);
    let result = &asserted.responses[0].assertions[0];
    assert!(!result.passing);
    let message = result.message.as_deref().unwrap();
    assert!(
        message.starts_with("expected cert_expiry greaterThan 14d, got `2"),
        "{message}"
    );
}

#[tokio::test]
async fn expired_and_unknown_ca_chains_fail_clearly_and_still_report_the_chain() {
    let ca = TestCa::new("bastion test CA");
    let stranger = TestCa::new("someone else's CA");
    let expired = serve_identity("127.0.0.1", &ca.leaf(&["svc.test"], days(-1))).await;
    let unknown = serve_identity("127.0.0.1", &stranger.leaf(&["svc.test"], days(90))).await;
    let wrong_name = serve_identity("127.0.0.1", &ca.leaf(&["other.test"], days(90))).await;
    let assertion =
        "[[checks.assertions]]\nkey = \"cert_expiry\"\nrelationship = \"lessThan\"\noperand = \"0s\"";
    let config = config(
        &[
            tls_check("expired", expired, &ca, assertion),
            tls_check("unknown", unknown, &ca, ""),
            tls_check("wrong-name", wrong_name, &ca, ""),
        ]
        .concat(),
    );
    let (dispatcher, _) = dispatcher(&config);

    let result = run_check(&dispatcher, &config, "expired").await;
    let response = &result.responses[0];
    let error = response.error.as_ref().unwrap();
    assert_eq!(error.kind, ErrorKind::Tls);
    assert!(
        error.message.starts_with(&format!(
            "the certificate chain of {expired} is not trusted: invalid peer certificate: certificate expired"
        )),
        "{}",
        error.message
    );
    let chain = response.tls.as_ref().unwrap().chain.as_ref().unwrap();
    assert!(!chain.valid);
    assert_eq!(chain.certificates[0].subject, "CN=svc.test");
    assert!(expiry_days(&result) < 0.0);
    // The expiry is still judged: it is in the past, as asserted; the error fails the instance.
    assert!(response.assertions[0].passing, "{:?}", response.assertions);
    assert!(!response.passing);

    let result = run_check(&dispatcher, &config, "unknown").await;
    let response = &result.responses[0];
    let error = response.error.as_ref().unwrap();
    assert_eq!(error.kind, ErrorKind::Tls);
    assert!(
        error
            .message
            .ends_with("invalid peer certificate: UnknownIssuer"),
        "{}",
        error.message
    );
    let chain = response.tls.as_ref().unwrap().chain.as_ref().unwrap();
    assert!(!chain.valid);
    assert_eq!(chain.certificates[0].issuer, "CN=someone else's CA");
    assert!(!result.passing);

    let result = run_check(&dispatcher, &config, "wrong-name").await;
    let error = result.responses[0].error.as_ref().unwrap();
    assert!(
        error
            .message
            .contains("certificate not valid for name \"svc.test\""),
        "{}",
        error.message
    );
}

#[tokio::test]
async fn refused_silent_and_plaintext_peers_are_errors() {
    let ca = TestCa::new("bastion test CA");
    let refused = refused_address().await;
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_address = silent.local_addr().unwrap();
    serve_silent(silent);
    let plaintext = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let plaintext_address = plaintext.local_addr().unwrap();
    // A peer that greets in plain text, as an SSH server would, and closes.
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = plaintext.accept().await {
            let _ = stream.write_all(b"SSH-2.0-OpenSSH_9.6\r\n").await;
            let _ = stream.shutdown().await;
        }
    });
    let config = config(
        &[
            tls_check("refused", refused, &ca, ""),
            tls_check("silent", silent_address, &ca, ""),
            tls_check("plaintext", plaintext_address, &ca, ""),
        ]
        .concat(),
    );
    let (dispatcher, _) = dispatcher(&config);
    let result = run_check(&dispatcher, &config, "refused").await;
    assert_eq!(
        result.responses[0].error.as_ref().unwrap().kind,
        ErrorKind::Connect
    );
    assert!(result.responses[0].tls.is_none());

    let result = run_check(&dispatcher, &config, "silent").await;
    let error = result.responses[0].error.as_ref().unwrap();
    assert_eq!(error.kind, ErrorKind::Timeout);
    assert_eq!(error.message, "no complete answer within 1s during tls");

    let result = run_check(&dispatcher, &config, "plaintext").await;
    let error = result.responses[0].error.as_ref().unwrap();
    assert_eq!(error.kind, ErrorKind::Tls);
    assert!(
        error
            .message
            .starts_with(&format!("TLS handshake with {plaintext_address}")),
        "{}",
        error.message
    );
}

#[tokio::test]
async fn assertions_read_every_tls_key() {
    let ca = TestCa::new("bastion test CA");
    let address = serve_identity("127.0.0.1", &ca.leaf(&["svc.test", "alt.test"], days(30))).await;
    let rows: &[AssertionRow] = &[
        ("cert_expiry", "greaterThan", "14d", true, ""),
        ("cert_expiry", "lessThan", "14d", false, ""),
        (
            "issuer",
            "equal",
            "CN=bastion test CA",
            true,
            "CN=bastion test CA",
        ),
        (
            "issuer",
            "contain",
            "letsencrypt",
            false,
            "CN=bastion test CA",
        ),
        ("subject", "equal", "CN=svc.test", true, "CN=svc.test"),
        (
            "san",
            "regExp",
            "(?m)^alt\\.test$",
            true,
            "svc.test\nalt.test",
        ),
        ("san", "notContain", "alt.test", false, "svc.test\nalt.test"),
        ("tls_version", "equal", "TLSv1.3", true, "TLSv1.3"),
        ("tls_version", "equal", "TLSv1.2", false, "TLSv1.3"),
        ("chain_valid", "equal", "true", true, "true"),
        ("latency", "lessThan", "30s", true, ""),
    ];
    assert_assertion_table(rows, |assertion| {
        tls_check("asserted", address, &ca, assertion)
    })
    .await;
}

#[tokio::test]
async fn bad_tls_definitions_are_refused_at_load() {
    let base = "[[checks]]\nname = \"c\"\ntype = \"tls\"\ninterval = \"5s\"\n";
    let cases = [
        (
            "address = \"svc.test\"\n",
            "check `c`: address `svc.test` is not valid: it has no port",
        ),
        (
            "address = \"svc.test:443\"\nca_file = \"/no/such/ca.pem\"\n",
            "check `c`: ca_file /no/such/ca.pem cannot be read",
        ),
        (
            "address = \"svc.test:443\"\n[[checks.assertions]]\nkey = \"cert_expiry\"\nrelationship = \"lessThan\"\noperand = \"two weeks\"\n",
            "check `c`: assertion #1: cert_expiry operand `two weeks` is not a duration",
        ),
    ];
    assert_config_errors(base, &cases);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_series_and_the_https_expiry_appear_in_metrics() {
    let ca = TestCa::new("bastion test CA");
    let not_after = days(30);
    let address = serve_identity("127.0.0.1", &ca.leaf(&["svc.test"], not_after)).await;
    let (checks, text) = agent_scrape(&format!(
        r#"
        [[checks]]
        name = "cert"
        type = "tls"
        interval = "1s"
        timeout = "900ms"
        address = "{address}"
        server_name = "svc.test"
        ca_file = "{ca}"
        [[checks]]
        name = "web"
        type = "http"
        interval = "1s"
        timeout = "900ms"
        url = "https://svc.test:{port}/"
        instances = ["{ip}"]
        tls = {{ ca_file = "{ca}" }}
        "#,
        ca = ca.ca_file.display(),
        port = address.port(),
        ip = address.ip(),
    ))
    .await;
    assert_eq!(checks[0]["latest"]["passing"], true, "{checks}");
    assert_eq!(checks[1]["latest"]["passing"], true, "{checks}");
    // rcgen writes whole seconds.
    let expected = not_after.unix_timestamp() as f64;
    for check in ["cert", "web"] {
        let labels = format!("check=\"{check}\",target=\"{address}\"");
        assert_eq!(
            metric(
                &text,
                &format!("probe_ssl_earliest_cert_expiry{{{labels}}}")
            ),
            Some(expected),
            "{text}"
        );
        assert_eq!(
            metric(
                &text,
                &format!("probe_tls_version_info{{{labels},version=\"TLSv1.3\"}}")
            ),
            Some(1.0),
            "{text}"
        );
    }
    let labels = format!("check=\"cert\",target=\"{address}\"");
    assert_eq!(
        metric(&text, &format!("probe_success{{{labels}}}")),
        Some(1.0)
    );
    for phase in ["resolve", "connect", "tls"] {
        let series = format!("probe_tls_duration_seconds{{{labels},phase=\"{phase}\"}}");
        assert!(metric(&text, &series).is_some(), "{series} missing\n{text}");
    }
}
