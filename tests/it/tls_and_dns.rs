//! HTTPS against a real rustls server (HTTP/2 by ALPN, SNI and Host kept on the URL's name,
//! verification on by default), and instances found through a real DNS server.

use crate::common;

use bastion_agent::model::ErrorKind;
use bytes::Bytes;
use common::dns::dns_server;
use common::*;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;
use tokio::net::TcpListener;

struct TestCert {
    ca_file: PathBuf,
    server_config: Arc<rustls::ServerConfig>,
}

fn test_cert(name: &str, alpn: &[&[u8]]) -> TestCert {
    let certified = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
    let ca_file = std::env::temp_dir().join(format!(
        "bastion-test-ca-{}-{}.pem",
        std::process::id(),
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::write(&ca_file, certified.cert.pem()).unwrap();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        certified.signing_key.serialize_der(),
    ));
    let mut server_config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![certified.cert.der().clone()], key)
    .unwrap();
    server_config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    TestCert {
        ca_file,
        server_config: Arc::new(server_config),
    }
}

/// An HTTPS server answering `sni|authority|version` to every request.
fn serve_tls(listener: TcpListener, server_config: Arc<rustls::ServerConfig>) {
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let server_config = Arc::clone(&server_config);
            tokio::spawn(async move {
                let acceptor = tokio_rustls::LazyConfigAcceptor::new(
                    rustls::server::Acceptor::default(),
                    stream,
                );
                let Ok(start) = acceptor.await else { return };
                let sni = start
                    .client_hello()
                    .server_name()
                    .unwrap_or("-")
                    .to_string();
                let Ok(tls) = start.into_stream(server_config).await else {
                    return;
                };
                let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                    let authority = request
                        .uri()
                        .authority()
                        .map(|a| a.to_string())
                        .or_else(|| {
                            request
                                .headers()
                                .get("host")
                                .and_then(|h| h.to_str().ok())
                                .map(str::to_string)
                        })
                        .unwrap_or_default();
                    let body = format!("{sni}|{authority}|{:?}", request.version());
                    async move {
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                            Bytes::from(body),
                        )))
                    }
                });
                let io = TokioIo::new(tls);
                if h2 {
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(io, service)
                        .await;
                } else {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, service)
                        .await;
                }
            });
        }
    });
}

#[tokio::test]
async fn https_negotiates_http2_and_keeps_the_url_name_for_sni_and_authority() {
    let cert = test_cert("svc.test", &[b"h2", b"http/1.1"]);
    let listener = TcpListener::bind("127.0.0.2:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    serve_tls(listener, Arc::clone(&cert.server_config));
    let config = config(&format!(
        r#"
        [[checks]]
        name = "tls"
        type = "http"
        interval = "5s"
        url = "https://svc.test:{port}/"
        instances = ["127.0.0.2"]
        tls = {{ ca_file = "{}" }}
        "#,
        cert.ca_file.display()
    ));
    let result = run_single(&config).await;
    let response = &result.responses[0];
    assert!(response.error.is_none(), "{response:?}");
    assert_eq!(response.target, format!("127.0.0.2:{port}"));
    let http = response.http.as_ref().unwrap();
    assert_eq!(http.version, "HTTP/2");
    assert_eq!(http.body, format!("svc.test|svc.test:{port}|HTTP/2.0"));
    let tls = response.tls.as_ref().unwrap();
    assert_eq!(tls.version, "TLSv1.3");
    assert_eq!(tls.alpn.as_deref(), Some("h2"));
    assert!(
        tls.earliest_cert_expiry.unwrap() > SystemTime::now(),
        "rcgen certificates are valid for years"
    );
    assert!(response.timings.tls > 0.0, "{:?}", response.timings);
    assert!(result.passing);
}

#[tokio::test]
async fn https_with_http1_only_sends_the_url_host_header() {
    let cert = test_cert("svc.test", &[b"http/1.1"]);
    let listener = TcpListener::bind("127.0.0.3:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    serve_tls(listener, Arc::clone(&cert.server_config));
    let config = config(&format!(
        r#"
        [[checks]]
        name = "tls1"
        type = "http"
        interval = "5s"
        url = "https://svc.test:{port}/"
        instances = ["127.0.0.3"]
        tls = {{ ca_file = "{}" }}
        "#,
        cert.ca_file.display()
    ));
    let result = run_single(&config).await;
    let http = result.responses[0].http.as_ref().expect("a response");
    assert_eq!(http.version, "HTTP/1.1");
    assert_eq!(http.body, format!("svc.test|svc.test:{port}|HTTP/1.1"));
}

#[tokio::test]
async fn an_untrusted_certificate_fails_unless_verification_is_skipped() {
    let cert = test_cert("svc.test", &[b"h2", b"http/1.1"]);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    serve_tls(listener, Arc::clone(&cert.server_config));
    let config = config(&format!(
        r#"
        [[checks]]
        name = "strict"
        type = "http"
        interval = "5s"
        url = "https://svc.test:{port}/"
        instances = ["127.0.0.1"]
        [[checks]]
        name = "wrong-name"
        type = "http"
        interval = "5s"
        url = "https://other.test:{port}/"
        instances = ["127.0.0.1"]
        tls = {{ ca_file = "{}" }}
        [[checks]]
        name = "lax"
        type = "http"
        interval = "5s"
        url = "https://svc.test:{port}/"
        instances = ["127.0.0.1"]
        tls = {{ insecure_skip_verify = true }}
        "#,
        cert.ca_file.display()
    ));
    let (dispatcher, _) = dispatcher(&config);
    let strict = run_check(&dispatcher, &config, "strict").await;
    let error = strict.responses[0].error.as_ref().unwrap();
    assert_eq!(error.kind, ErrorKind::Tls);
    assert!(
        error.message.contains("invalid peer certificate"),
        "{}",
        error.message
    );
    let wrong = run_check(&dispatcher, &config, "wrong-name").await;
    let error = wrong.responses[0].error.as_ref().unwrap();
    assert_eq!(error.kind, ErrorKind::Tls);
    assert!(
        error
            .message
            .contains("certificate not valid for name \"other.test\""),
        "{}",
        error.message
    );
    let lax = run_check(&dispatcher, &config, "lax").await;
    assert!(lax.passing, "{lax:?}");
}

#[tokio::test]
async fn every_address_of_the_name_is_probed_with_the_name_as_host() {
    // svc.test has three A records, anything else is NXDOMAIN.
    let dns = dns_server(&[2, 3, 4].map(|last| Ipv4Addr::new(127, 0, 0, last))).await;
    let (port, listeners) = listeners_on_one_port(&["127.0.0.2", "127.0.0.3", "127.0.0.4"]).await;
    for listener in listeners {
        serve(listener, |mut request| async move {
            let host = header(&request.head, "host").unwrap_or("-");
            let body = format!("{}|{host}", request.local);
            respond(&mut request.stream, "200 OK", &[], &body).await;
        });
    }
    let config = config(&format!(
        r#"
        [runner]
        dns_servers = ["{dns}"]
        [[checks]]
        name = "by-dns"
        type = "http"
        interval = "5s"
        url = "http://svc.test:{port}/"
        [[checks]]
        name = "missing"
        type = "http"
        interval = "5s"
        url = "http://missing.test:{port}/"
        "#
    ));
    let (dispatcher, _) = dispatcher(&config);
    let result = run_check(&dispatcher, &config, "by-dns").await;
    let targets: BTreeSet<&str> = result.responses.iter().map(|r| r.target.as_str()).collect();
    let expected: Vec<String> = (2..=4).map(|n| format!("127.0.0.{n}:{port}")).collect();
    assert_eq!(targets, expected.iter().map(String::as_str).collect());
    for response in &result.responses {
        let http = response.http.as_ref().unwrap();
        assert_eq!(http.body, format!("{}|svc.test:{port}", response.target));
        assert!(response.timings.resolve > 0.0, "the lookup is timed");
    }
    assert!(result.passing);

    let missing = run_check(&dispatcher, &config, "missing").await;
    assert_eq!(missing.responses.len(), 1);
    let response = &missing.responses[0];
    assert_eq!(response.target, format!("missing.test:{port}"));
    assert_eq!(response.error.as_ref().unwrap().kind, ErrorKind::Resolve);
}

#[tokio::test]
async fn a_ca_file_without_certificates_fails_before_connecting() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = Arc::clone(&accepted);
    tokio::spawn(async move {
        while listener.accept().await.is_ok() {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    });
    let not_pem = std::env::temp_dir().join(format!("bastion-not-pem-{}.txt", std::process::id()));
    std::fs::write(&not_pem, "this is not a certificate\n").unwrap();
    let config = config(&format!(
        r#"
        [[checks]]
        name = "bad-ca"
        type = "http"
        interval = "5s"
        url = "https://svc.test:{port}/"
        instances = ["127.0.0.1"]
        tls = {{ ca_file = "{}" }}
        "#,
        not_pem.display()
    ));
    let result = run_single(&config).await;
    let error = result.responses[0].error.as_ref().unwrap();
    assert_eq!(error.kind, ErrorKind::Tls);
    assert_eq!(
        error.message,
        format!("ca_file {} holds no PEM certificates", not_pem.display())
    );
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 0);
}
