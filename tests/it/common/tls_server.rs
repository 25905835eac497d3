//! A rustls test server for every TLS-speaking check type: by ALPN it serves HTTP/2 (plain
//! requests and gRPC health calls, answered SERVING) or HTTP/1.1 (`200 ok`), and without ALPN
//! a `hello` line for a tcp check. It counts full and resumed handshakes, and its configuration
//! can be swapped between connections. Also the configurations that require a client
//! certificate signed by a test CA, and PEM files for identities.

use super::{TestCa, TestIdentity};
use bytes::Bytes;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::HandshakeKind;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// The answer to Health/Check: SERVING (field 1 = 1), as one length-prefixed message.
pub const SERVING: &[u8] = &[0, 0, 0, 0, 2, 0x08, 1];

pub struct TlsServer {
    pub address: SocketAddr,
    config: Arc<Mutex<Arc<rustls::ServerConfig>>>,
    full: Arc<AtomicUsize>,
    resumed: Arc<AtomicUsize>,
}

impl TlsServer {
    pub async fn start(config: Arc<rustls::ServerConfig>) -> TlsServer {
        TlsServer::start_on("127.0.0.1", config).await
    }

    /// Listens on `ip` (`127.0.0.1`, `::1`) at a free port.
    pub async fn start_on(ip: &str, config: Arc<rustls::ServerConfig>) -> TlsServer {
        let listener = TcpListener::bind((ip, 0)).await.unwrap();
        let server = TlsServer {
            address: listener.local_addr().unwrap(),
            config: Arc::new(Mutex::new(config)),
            full: Arc::new(AtomicUsize::new(0)),
            resumed: Arc::new(AtomicUsize::new(0)),
        };
        let (config, full, resumed) = (
            Arc::clone(&server.config),
            Arc::clone(&server.full),
            Arc::clone(&server.resumed),
        );
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let acceptor = tokio_rustls::TlsAcceptor::from(config.lock().unwrap().clone());
                let (full, resumed) = (Arc::clone(&full), Arc::clone(&resumed));
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    let session = tls.get_ref().1;
                    match session.handshake_kind() {
                        Some(HandshakeKind::Resumed) => resumed.fetch_add(1, Ordering::SeqCst),
                        _ => full.fetch_add(1, Ordering::SeqCst),
                    };
                    match session.alpn_protocol() {
                        Some(b"h2") => {
                            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                                .serve_connection(TokioIo::new(tls), service_fn(answer))
                                .await;
                        }
                        Some(_) => {
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(TokioIo::new(tls), service_fn(answer))
                                .await;
                        }
                        None => {
                            let _ = tls.write_all(b"hello\n").await;
                            let _ = tls.flush().await;
                            let mut rest = Vec::new();
                            let _ = tls.read_to_end(&mut rest).await;
                        }
                    }
                });
            }
        });
        server
    }

    /// Serves `config` to every later connection.
    pub fn swap(&self, config: Arc<rustls::ServerConfig>) {
        *self.config.lock().unwrap() = config;
    }

    /// (full, resumed) handshakes so far.
    pub fn counts(&self) -> (usize, usize) {
        (
            self.full.load(Ordering::SeqCst),
            self.resumed.load(Ordering::SeqCst),
        )
    }
}

type AnswerBody = http_body_util::StreamBody<
    tokio_stream::Iter<std::vec::IntoIter<Result<hyper::body::Frame<Bytes>, std::io::Error>>>,
>;

/// A gRPC health answer (SERVING) to a gRPC call, `ok` to anything else.
async fn answer(
    request: hyper::Request<hyper::body::Incoming>,
) -> Result<hyper::Response<AnswerBody>, std::io::Error> {
    let grpc = request
        .headers()
        .get("content-type")
        .is_some_and(|value| value.as_bytes().starts_with(b"application/grpc"));
    let mut frames = Vec::new();
    let mut response = hyper::Response::builder();
    if grpc {
        frames.push(Ok(hyper::body::Frame::data(Bytes::from_static(SERVING))));
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
        frames.push(Ok(hyper::body::Frame::trailers(trailers)));
        response = response.header("content-type", "application/grpc");
    } else {
        frames.push(Ok(hyper::body::Frame::data(Bytes::from_static(b"ok"))));
    }
    Ok(response
        .body(http_body_util::StreamBody::new(tokio_stream::iter(frames)))
        .unwrap())
}

/// A server configuration for `identity` on `versions` that requires a client certificate
/// signed by `client_ca` and refuses a handshake without one. ALPN h2 and http/1.1.
pub fn mtls_config(
    identity: &TestIdentity,
    client_ca: &TestCa,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(&client_ca.ca_file).unwrap();
    for cert in rustls::pki_types::pem::PemObject::pem_slice_iter(&pem) {
        roots.add(cert.unwrap()).unwrap();
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::clone(&provider),
    )
    .build()
    .unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(identity.chain.clone(), identity.key.clone_key())
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(config)
}

/// A server configuration for `identity` on `versions`, without client authentication.
pub fn plain_config(
    identity: &TestIdentity,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<rustls::ServerConfig> {
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(versions)
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(identity.chain.clone(), identity.key.clone_key())
    .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(config)
}

fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let encoded = base64::engine::general_purpose::STANDARD.encode(der);
    let mut text = format!("-----BEGIN {label}-----\n");
    for line in encoded.as_bytes().chunks(64) {
        text.push_str(std::str::from_utf8(line).unwrap());
        text.push('\n');
    }
    text.push_str(&format!("-----END {label}-----\n"));
    text
}

/// Writes `identity` as a PEM certificate chain and a PEM PKCS#8 key; returns their paths.
pub fn write_identity(identity: &TestIdentity) -> (std::path::PathBuf, std::path::PathBuf) {
    let cert_file = super::temp_path("cert", "pem");
    let key_file = super::temp_path("key", "pem");
    let chain: String = identity
        .chain
        .iter()
        .map(|cert| pem("CERTIFICATE", cert.as_ref()))
        .collect();
    std::fs::write(&cert_file, chain).unwrap();
    std::fs::write(&key_file, pem("PRIVATE KEY", identity.key.secret_der())).unwrap();
    (cert_file, key_file)
}
