//! gRPC health checks against a real tonic health server (tonic-health) whose statuses the tests
//! flip, over h2c and over TLS; every instance of an address; failures (refused, silence, an
//! HTTP/1 server, a server without the health service, an answer that is no health answer);
//! assertions; and the `/metrics` series.

use crate::common;

use bastion_agent::model::ErrorKind;
use bytes::Bytes;
use common::*;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tonic::transport::server::{Connected, TcpIncoming};
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

/// Starts a tonic health server on each listener, all sharing one reporter.
async fn health_servers(listeners: Vec<TcpListener>) -> HealthReporter {
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("bastion.Db", ServingStatus::Serving)
        .await;
    for listener in listeners {
        let service = service.clone();
        tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(TcpIncoming::from(listener))
                .await;
        });
    }
    reporter
}

fn grpc_check(name: &str, address: &str, service: &str, extra: &str) -> String {
    format!(
        r#"
        [[checks]]
        name = "{name}"
        type = "grpc"
        interval = "5s"
        timeout = "1s"
        address = "{address}"
        service = "{service}"
        {extra}
        "#
    )
}

#[tokio::test]
async fn the_serving_status_follows_the_server_on_every_instance() {
    let (port, listeners) = listeners_on_one_port(&["127.0.0.2", "127.0.0.3"]).await;
    let reporter = health_servers(listeners).await;
    let instances = "instances = [\"127.0.0.2\", \"127.0.0.3\"]";
    let address = format!("grpc.test:{port}");
    let config = config(
        &[
            grpc_check("db", &address, "bastion.Db", instances),
            grpc_check("whole", &address, "", instances),
            grpc_check("unknown", &address, "bastion.Nope", instances),
        ]
        .concat(),
    );
    let (dispatcher, _) = dispatcher(&config);

    let result = run_check(&dispatcher, &config, "db").await;
    assert_eq!(result.responses.len(), 2);
    for (response, last) in result.responses.iter().zip(2..) {
        assert_eq!(response.target, format!("127.0.0.{last}:{port}"));
        assert!(response.error.is_none(), "{response:?}");
        let grpc = response.sections.grpc.as_ref().unwrap();
        assert_eq!(grpc.status, "SERVING");
        assert_eq!(grpc.grpc_status, 0);
        assert!(response.timings.processing > 0.0, "{:?}", response.timings);
        assert!(response.tls.is_none());
    }
    assert!(result.passing);

    reporter
        .set_service_status("bastion.Db", ServingStatus::NotServing)
        .await;
    let result = run_check(&dispatcher, &config, "db").await;
    for response in &result.responses {
        assert!(response.error.is_none(), "{response:?}");
        assert_eq!(
            response.sections.grpc.as_ref().unwrap().status,
            "NOT_SERVING"
        );
        assert!(!response.passing);
    }
    assert!(!result.passing);

    reporter
        .set_service_status("bastion.Db", ServingStatus::Serving)
        .await;
    assert!(run_check(&dispatcher, &config, "db").await.passing);
    assert!(run_check(&dispatcher, &config, "whole").await.passing);

    // Health/Check answers NOT_FOUND for a service it does not know: SERVICE_UNKNOWN.
    let result = run_check(&dispatcher, &config, "unknown").await;
    let response = &result.responses[0];
    assert!(response.error.is_none(), "{response:?}");
    let grpc = response.sections.grpc.as_ref().unwrap();
    assert_eq!(grpc.status, "SERVICE_UNKNOWN");
    assert_eq!(grpc.grpc_status, 5);
    assert!(!result.passing);
}

/// A TLS connection that tonic can serve (it needs to know the peer for its request info).
struct TlsIo(tokio_rustls::server::TlsStream<TcpStream>);

impl Connected for TlsIo {
    type ConnectInfo = ();
    fn connect_info(&self) {}
}

impl AsyncRead for TlsIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

#[tokio::test]
async fn health_is_asked_over_tls_with_h2_by_alpn() {
    let ca = TestCa::new("bastion test CA");
    let identity = ca.leaf(
        &["grpc.test"],
        time::OffsetDateTime::now_utc() + time::Duration::days(30),
    );
    let acceptor = tokio_rustls::TlsAcceptor::from(identity.server_config(&[b"h2"]));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (sender, receiver) = tokio::sync::mpsc::channel::<std::io::Result<TlsIo>>(16);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let sender = sender.clone();
            tokio::spawn(async move {
                if let Ok(tls) = acceptor.accept(stream).await {
                    let _ = sender.send(Ok(TlsIo(tls))).await;
                }
            });
        }
    });
    let (_reporter, service) = tonic_health::server::health_reporter();
    tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::ReceiverStream::new(receiver))
            .await;
    });
    let tls = format!(
        "tls = true\nserver_name = \"grpc.test\"\nca_file = \"{}\"",
        ca.ca_file.display()
    );
    let config = config(&grpc_check("tls", &address.to_string(), "", &tls));
    let result = run_single(&config).await;
    let response = &result.responses[0];
    assert!(response.error.is_none(), "{response:?}");
    assert_eq!(response.sections.grpc.as_ref().unwrap().status, "SERVING");
    let tls = response.tls.as_ref().unwrap();
    assert_eq!(tls.alpn.as_deref(), Some("h2"));
    assert_eq!(tls.version, "TLSv1.3");
    assert!(response.timings.tls > 0.0);
    assert!(result.passing);
}

/// An HTTP/2 server that answers every call with `status` and these headers, body and
/// trailers: a real peer with a wrong answer.
fn serve_h2(
    listener: TcpListener,
    headers: &'static [(&'static str, &'static str)],
    body: &'static [u8],
    trailers: &'static [(&'static str, &'static str)],
) {
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = service_fn(move |_request| async move {
                    let mut trailer_map = http::HeaderMap::new();
                    for (name, value) in trailers {
                        trailer_map.insert(*name, value.parse().unwrap());
                    }
                    let body = http_body_util::StreamBody::new(futures_stream(body, trailer_map));
                    let mut response = hyper::Response::new(body);
                    for (name, value) in headers {
                        response.headers_mut().insert(*name, value.parse().unwrap());
                    }
                    Ok::<_, std::convert::Infallible>(response)
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
}

/// The frames of a body: one data frame (unless empty), then the trailers (unless none).
fn futures_stream(
    body: &'static [u8],
    trailers: http::HeaderMap,
) -> tokio_stream::Iter<
    std::vec::IntoIter<Result<hyper::body::Frame<Bytes>, std::convert::Infallible>>,
> {
    let mut frames = Vec::new();
    if !body.is_empty() {
        frames.push(Ok(hyper::body::Frame::data(Bytes::from_static(body))));
    }
    if !trailers.is_empty() {
        frames.push(Ok(hyper::body::Frame::trailers(trailers)));
    }
    tokio_stream::iter(frames)
}

#[tokio::test]
async fn refused_silent_and_wrong_peers_are_errors() {
    let refused = refused_address().await;
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_address = silent.local_addr().unwrap();
    serve_silent(silent);
    let http1 = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http1_address = http1.local_addr().unwrap();
    serve_ok(http1, "I speak HTTP/1.1");
    let unimplemented = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let unimplemented_address = unimplemented.local_addr().unwrap();
    serve_h2(
        unimplemented,
        &[
            ("content-type", "application/grpc"),
            ("grpc-status", "12"),
            ("grpc-message", "unknown%20service%20grpc.health.v1.Health"),
        ],
        b"",
        &[],
    );
    let garbage = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let garbage_address = garbage.local_addr().unwrap();
    serve_h2(
        garbage,
        &[("content-type", "application/grpc")],
        b"\x00\x00\x00\x00\x09\x08\x01",
        &[("grpc-status", "0")],
    );
    let not_found = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let not_found_address = not_found.local_addr().unwrap();
    serve_h2(
        not_found,
        &[("content-type", "text/html")],
        b"<h1>404</h1>",
        &[],
    );
    let config = config(
        &[
            grpc_check("refused", &refused.to_string(), "", ""),
            grpc_check("silent", &silent_address.to_string(), "", ""),
            grpc_check("http1", &http1_address.to_string(), "", ""),
            grpc_check("unimplemented", &unimplemented_address.to_string(), "", ""),
            grpc_check("garbage", &garbage_address.to_string(), "", ""),
            grpc_check("no-status", &not_found_address.to_string(), "", ""),
        ]
        .concat(),
    );
    let (dispatcher, _) = dispatcher(&config);
    let expectations: &[(&str, ErrorKind, &str)] = &[
        ("refused", ErrorKind::Connect, "connect to "),
        ("silent", ErrorKind::Timeout, "no complete answer within 1s"),
        ("http1", ErrorKind::Http, "HTTP/2 call failed: "),
        (
            "unimplemented",
            ErrorKind::Grpc,
            "the call failed with grpc-status 12 (UNIMPLEMENTED): unknown service grpc.health.v1.Health",
        ),
        (
            "garbage",
            ErrorKind::Grpc,
            "the answer is not a HealthCheckResponse: it is shorter than its length prefix",
        ),
        (
            "no-status",
            ErrorKind::Grpc,
            "the answer carries no valid grpc-status; is this a gRPC server?",
        ),
    ];
    for &(name, kind, message) in expectations {
        let result = run_check(&dispatcher, &config, name).await;
        let response = &result.responses[0];
        let error = response
            .error
            .as_ref()
            .unwrap_or_else(|| panic!("{name}: {response:?}"));
        assert_eq!(error.kind, kind, "{name}: {error:?}");
        assert!(
            error.message.starts_with(message),
            "{name}: {}",
            error.message
        );
        if kind == ErrorKind::Http {
            assert!(
                error.message.ends_with(&format!(
                    "is {http1_address} a gRPC server? (without tls = true, gRPC is spoken as h2c)"
                )),
                "{}",
                error.message
            );
        }
        assert!(response.sections.grpc.is_none(), "{name}");
        assert!(!result.passing, "{name}");
    }
}

#[tokio::test]
async fn assertions_read_status_and_latency() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address: SocketAddr = listener.local_addr().unwrap();
    let reporter = health_servers(vec![listener]).await;
    reporter
        .set_service_status("bastion.Cache", ServingStatus::NotServing)
        .await;
    let cases: &[(&str, &str, &str, &str, bool)] = &[
        ("bastion.Db", "status", "equal", "SERVING", true),
        ("bastion.Db", "status", "notEqual", "SERVING", false),
        ("bastion.Cache", "status", "equal", "NOT_SERVING", true),
        ("bastion.Cache", "status", "regExp", "^SERVING$", false),
        ("bastion.Nope", "status", "equal", "SERVICE_UNKNOWN", true),
        ("bastion.Db", "latency", "lessThan", "30s", true),
        ("bastion.Db", "latency", "greaterThan", "30s", false),
    ];
    for &(service, key, relationship, operand, passing) in cases {
        let assertion = assertion_toml(key, relationship, operand);
        let config = config(&grpc_check(
            "asserted",
            &address.to_string(),
            service,
            &assertion,
        ));
        let result = run_single(&config).await;
        let label = format!("{service}: {key} {relationship} {operand}");
        let assertion = &result.responses[0].assertions[0];
        assert_eq!(assertion.passing, passing, "{label}: {assertion:?}");
        assert_eq!(result.passing, passing, "{label}");
    }
}

#[tokio::test]
async fn bad_grpc_definitions_are_refused_at_load() {
    let base = "[[checks]]\nname = \"g\"\ntype = \"grpc\"\ninterval = \"5s\"\n";
    let cases = [
        ("address = \"grpc.test\"\n", "check `g`: address `grpc.test` is not valid: it has no port"),
        (
            "address = \"grpc.test:50051\"\ninsecure_skip_verify = true\n",
            "check `g`: insecure_skip_verify only applies with tls = true",
        ),
        (
            "address = \"grpc.test:50051\"\n[[checks.assertions]]\nkey = \"code\"\nrelationship = \"equal\"\noperand = \"0\"\n",
            "check `g`: assertion #1: key `code` does not apply to grpc checks",
        ),
    ];
    assert_config_errors(base, &cases);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_series_appear_in_metrics() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let reporter = health_servers(vec![listener]).await;
    reporter
        .set_service_status("bastion.Cache", ServingStatus::NotServing)
        .await;
    let (checks, text) = agent_scrape(&format!(
        r#"
        [[checks]]
        name = "db"
        type = "grpc"
        interval = "1s"
        timeout = "900ms"
        address = "{address}"
        service = "bastion.Db"
        [[checks]]
        name = "cache"
        type = "grpc"
        interval = "1s"
        timeout = "900ms"
        address = "{address}"
        service = "bastion.Cache"
        "#
    ))
    .await;
    assert_eq!(checks[0]["latest"]["passing"], true, "{checks}");
    assert_eq!(checks[1]["latest"]["passing"], false, "{checks}");
    for (check, serving) in [("db", "SERVING"), ("cache", "NOT_SERVING")] {
        let labels = format!("check=\"{check}\",target=\"{address}\"");
        for status in ["UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN"] {
            let series =
                format!("probe_grpc_healthcheck_response{{{labels},serving_status=\"{status}\"}}");
            let expected = if status == serving { 1.0 } else { 0.0 };
            assert_eq!(metric(&text, &series), Some(expected), "{series}\n{text}");
        }
        for phase in ["resolve", "connect", "tls", "processing"] {
            let series = format!("probe_grpc_duration_seconds{{{labels},phase=\"{phase}\"}}");
            assert!(metric(&text, &series).is_some(), "{series} missing\n{text}");
        }
    }
}

/// A health server that answers only calls carrying `authorization: Bearer s3cret-token` and
/// `x-tenant: blue`; any other call is refused UNAUTHENTICATED with a message that echoes the
/// token it wanted.
async fn guarded_health_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("bastion.Db", ServingStatus::Serving)
        .await;
    let guarded = tonic::service::interceptor::InterceptedService::new(
        service,
        |request: tonic::Request<()>| {
            let value = |key: &str| {
                request
                    .metadata()
                    .get(key)
                    .and_then(|value| value.to_str().ok())
                    .map(str::to_string)
            };
            if value("authorization").as_deref() == Some("Bearer s3cret-token")
                && value("x-tenant").as_deref() == Some("blue")
            {
                Ok(request)
            } else {
                Err(tonic::Status::unauthenticated(
                    "wanted Bearer s3cret-token for tenant blue",
                ))
            }
        },
    );
    tokio::spawn(async move {
        let _reporter = reporter;
        let _ = tonic::transport::Server::builder()
            .add_service(guarded)
            .serve_with_incoming(TcpIncoming::from(listener))
            .await;
    });
    address
}

#[tokio::test]
async fn metadata_is_sent_with_the_call_and_secrets_stay_out_of_results() {
    let address = guarded_health_server().await.to_string();
    let dir = crate::common::process::scratch_dir("grpc-metadata");
    let token = dir.join("token");
    std::fs::write(&token, "Bearer s3cret-token\n").unwrap();
    let with = |tenant: &str| {
        grpc_check(
            "g",
            &address,
            "bastion.Db",
            &format!(
                "metadata = {{ x-tenant = \"{tenant}\" }}\nmetadata_from_files = {{ authorization = \"{}\" }}",
                token.display()
            ),
        )
    };
    let result = run_single(&config(&with("blue"))).await;
    assert!(result.passing, "{result:?}");
    assert_eq!(
        result.responses[0].sections.grpc.as_ref().unwrap().status,
        "SERVING"
    );

    // Refused: the server's message echoes the secret, which the result must not carry.
    let result = run_single(&config(&with("green"))).await;
    let response = &result.responses[0];
    assert!(!result.passing);
    let text = serde_json::to_string(&result).unwrap();
    assert!(!text.contains("s3cret-token"), "{text}");
    assert!(text.contains("[redacted]"), "{text}");
    assert_eq!(
        response.error.as_ref().map(|error| error.kind),
        Some(ErrorKind::Grpc)
    );

    // Without the metadata the call is refused.
    let result = run_single(&config(&grpc_check("g", &address, "bastion.Db", ""))).await;
    assert!(!result.passing);
}

#[test]
fn bad_metadata_is_refused_at_load() {
    let base = "[[checks]]\nname = \"g\"\ntype = \"grpc\"\ninterval = \"5s\"\naddress = \"grpc.test:50051\"\n";
    assert_config_errors(
        base,
        &[
            (
                "metadata = { X-Tenant = \"a\" }",
                "metadata key `X-Tenant` is not valid",
            ),
            (
                "metadata = { te = \"a\" }",
                "metadata key `te` is one bastion sets",
            ),
            (
                "metadata = { grpc-timeout = \"1S\" }",
                "metadata key `grpc-timeout` is one bastion sets",
            ),
            (
                "metadata = { key-bin = \"a\" }",
                "metadata key `key-bin` is not valid",
            ),
            (
                "metadata_from_files = { authorization = \"/nonexistent/token\" }",
                "check `g`: metadata_from_files.authorization: cannot read /nonexistent/token",
            ),
        ],
    );
}
