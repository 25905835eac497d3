//! Every probe is measured afresh. Against a rustls server that keeps sessions and issues
//! tickets (so a client could resume), every probe of every TLS-speaking type (http, tcp with
//! tls, tls, grpc), run through one dispatcher so client configurations are shared as in
//! production, makes a full handshake, on TLS 1.3 and 1.2; a certificate swapped between two
//! probes is the one reported on the very next probe. And over every type, the phases of a
//! successful probe add up to its total.

use crate::common;

use bastion_agent::config::Config;
use bastion_agent::messages::{CheckResult, Response};
use bastion_agent::runner::dispatcher::Dispatcher;
use common::tls_server::TlsServer;
use common::*;
use hickory_proto::op::{Message, MessageType, OpCode};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};

/// Probes of each type against the counting servers; enough that any resumption would show.
const PROBES: usize = 6;

/// A server configuration for `identity` that keeps sessions (the default cache) and issues
/// tickets, on the given TLS versions: everything a client needs to resume.
fn resuming_config(
    identity: &TestIdentity,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> rustls::ServerConfig {
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(versions)
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(identity.chain.clone(), identity.key.clone_key())
    .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config.ticketer = rustls::crypto::ring::Ticketer::new().unwrap();
    config
}

/// One check of each TLS-speaking type, each against its own server, all trusting `ca_file`.
fn tls_checks(ca_file: &std::path::Path, servers: &[(&str, SocketAddr)]) -> Config {
    config(&tls_checks_toml(ca_file, servers))
}

fn tls_checks_toml(ca_file: &std::path::Path, servers: &[(&str, SocketAddr)]) -> String {
    let ca = ca_file.display();
    let mut toml = String::new();
    for (check_type, address) in servers {
        let port = address.port();
        let body = match *check_type {
            "http" => format!(
                "url = \"https://svc.test:{port}/\"\ninstances = [\"{}\"]\ntls = {{ ca_file = \"{ca}\" }}",
                address.ip()
            ),
            "tcp" => format!(
                "address = \"{address}\"\ntls = true\nserver_name = \"svc.test\"\nca_file = \"{ca}\"\n[[checks.steps]]\nexpect = \"hello\""
            ),
            "tls" => format!("address = \"{address}\"\nserver_name = \"svc.test\"\nca_file = \"{ca}\""),
            "grpc" => format!(
                "address = \"{address}\"\ntls = true\nserver_name = \"svc.test\"\nca_file = \"{ca}\"\nservice = \"\""
            ),
            other => panic!("no TLS check of type {other}"),
        };
        toml.push_str(&format!(
            "[[checks]]\nname = \"{check_type}\"\ntype = \"{check_type}\"\ninterval = \"5s\"\ntimeout = \"3s\"\n{body}\n"
        ));
    }
    toml
}

fn the_response(result: &CheckResult) -> &Response {
    assert_eq!(result.responses.len(), 1, "{result:?}");
    let response = &result.responses[0];
    assert!(response.error.is_none(), "{response:?}");
    assert!(result.passing, "{result:?}");
    response
}

const TYPES: [&str; 4] = ["http", "tcp", "tls", "grpc"];

async fn only_full_handshakes_on(versions: &[&'static rustls::SupportedProtocolVersion]) {
    let ca = TestCa::new("bastion test CA");
    let identity = ca.leaf(
        &["svc.test"],
        time::OffsetDateTime::now_utc() + time::Duration::days(30),
    );
    let server_config = Arc::new(resuming_config(&identity, versions));
    let mut servers = Vec::new();
    for check_type in TYPES {
        servers.push((
            check_type,
            TlsServer::start(Arc::clone(&server_config)).await,
        ));
    }
    let addresses: Vec<(&str, SocketAddr)> = servers
        .iter()
        .map(|(check_type, server)| (*check_type, server.address))
        .collect();
    let config = tls_checks(&ca.ca_file, &addresses);
    // One dispatcher for every probe: client configurations are cached and shared, as in an agent.
    let (dispatcher, _) = dispatcher(&config);
    for _ in 0..PROBES {
        for check_type in TYPES {
            let result = run_check(&dispatcher, &config, check_type).await;
            let response = the_response(&result);
            let tls = response.tls.as_ref().expect("TLS details");
            let expected = if versions == [&rustls::version::TLS12] {
                "TLSv1.2"
            } else {
                "TLSv1.3"
            };
            assert_eq!(tls.version, expected, "{check_type}");
        }
    }
    let counts: Vec<(&str, (usize, usize))> = servers
        .iter()
        .map(|(check_type, server)| (*check_type, server.counts()))
        .collect();
    let expected: Vec<(&str, (usize, usize))> = TYPES
        .iter()
        .map(|check_type| (*check_type, (PROBES, 0)))
        .collect();
    assert_eq!(
        counts, expected,
        "(full, resumed) handshakes over {PROBES} probes of each type"
    );
}

#[tokio::test]
async fn every_probe_of_every_tls_type_makes_a_full_tls13_handshake() {
    only_full_handshakes_on(&[&rustls::version::TLS13]).await;
}

#[tokio::test]
async fn every_probe_of_every_tls_type_makes_a_full_tls12_handshake() {
    only_full_handshakes_on(&[&rustls::version::TLS12]).await;
}

fn unix_seconds(time: SystemTime) -> i64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// The server's certificate is replaced between two probes (keeping its session cache and
/// ticket keys, so a client could still resume); the next probe of each type reports the new
/// certificate's expiry, and the tls check its subject.
#[tokio::test]
async fn a_replaced_certificate_is_reported_on_the_very_next_probe() {
    let ca = TestCa::new("bastion test CA");
    let old_expiry = time::OffsetDateTime::now_utc() + time::Duration::days(30);
    let new_expiry = time::OffsetDateTime::now_utc() + time::Duration::days(300);
    let old = ca.leaf(&["svc.test"], old_expiry);
    // The common name is the first name: the new leaf's subject differs, svc.test still matches.
    let new = ca.leaf(&["renewed.svc.test", "svc.test"], new_expiry);
    let old_config = resuming_config(&old, &[&rustls::version::TLS13]);
    let mut new_config = resuming_config(&new, &[&rustls::version::TLS13]);
    new_config.session_storage = Arc::clone(&old_config.session_storage);
    new_config.ticketer = Arc::clone(&old_config.ticketer);
    let (old_config, new_config) = (Arc::new(old_config), Arc::new(new_config));
    let mut servers = Vec::new();
    for check_type in TYPES {
        servers.push((check_type, TlsServer::start(Arc::clone(&old_config)).await));
    }
    let addresses: Vec<(&str, SocketAddr)> = servers
        .iter()
        .map(|(check_type, server)| (*check_type, server.address))
        .collect();
    let config = tls_checks(&ca.ca_file, &addresses);
    let (dispatcher, _) = dispatcher(&config);
    let expiry_of = |result: &CheckResult| {
        let tls = the_response(result).tls.clone().expect("TLS details");
        (
            unix_seconds(tls.earliest_cert_expiry.expect("an expiry")),
            tls.chain
                .and_then(|chain| chain.certificates.first().map(|leaf| leaf.subject.clone())),
        )
    };
    // Twice before the swap, so a client that keeps sessions has one to offer.
    for check_type in TYPES {
        for _ in 0..2 {
            let (expiry, _) = expiry_of(&run_check(&dispatcher, &config, check_type).await);
            assert!(
                (expiry - old_expiry.unix_timestamp()).abs() <= 1,
                "{check_type}"
            );
        }
    }
    for (_, server) in &servers {
        server.swap(Arc::clone(&new_config));
    }
    let mut stale = Vec::new();
    for check_type in TYPES {
        let (expiry, subject) = expiry_of(&run_check(&dispatcher, &config, check_type).await);
        if (expiry - new_expiry.unix_timestamp()).abs() > 1 {
            stale.push(format!("{check_type} reported expiry {expiry}"));
        }
        if check_type == "tls" && subject.as_deref() != Some("CN=renewed.svc.test") {
            stale.push(format!("tls reported subject {subject:?}"));
        }
    }
    assert!(
        stale.is_empty(),
        "the new certificate expires at {}: {stale:?}",
        new_expiry.unix_timestamp()
    );
}

/// The phases of a response and its total.
fn phases_and_total(response: &Response) -> (f64, f64) {
    let t = &response.timings;
    let sum = t.resolve
        + t.connect
        + t.proxy
        + t.tls
        + t.processing
        + t.transfer
        + t.exchange
        + t.request
        + t.rtt;
    (sum, t.total)
}

/// A DNS server that answers every query with an empty NOERROR answer.
async fn dns_server() -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let address = socket.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buffer = [0u8; 1500];
        while let Ok((length, peer)) = socket.recv_from(&mut buffer).await {
            let Ok(query) = Message::from_vec(&buffer[..length]) else {
                continue;
            };
            let mut answer = Message::new(query.metadata.id, MessageType::Response, OpCode::Query);
            answer.add_queries(query.queries.clone());
            let _ = socket.send_to(&answer.to_vec().unwrap(), peer).await;
        }
    });
    address
}

async fn run_all(
    dispatcher: &Dispatcher,
    config: &Config,
    names: &[&str],
) -> Vec<(String, Response)> {
    let mut responses = Vec::new();
    for name in names {
        let result = run_check(dispatcher, config, name).await;
        responses.push((name.to_string(), the_response(&result).clone()));
    }
    responses
}

/// Over HTTP/1.1 (plain and over TLS), h2 (TLS with ALPN h2), tls, tcp (plain and with tls), dns,
/// grpc (over TLS) and http through a proxy (https in a CONNECT tunnel, http forwarded), the
/// phases of every successful probe add up to its total: the h2 handshake, the CONNECT
/// exchange, building requests and reading certificates all fall inside a phase.
#[tokio::test]
async fn the_phases_of_every_successful_probe_add_up_to_its_total() {
    let ca = TestCa::new("bastion test CA");
    let identity = ca.leaf(
        &["svc.test"],
        time::OffsetDateTime::now_utc() + time::Duration::days(30),
    );
    let mut h1_only = resuming_config(&identity, &[&rustls::version::TLS13]);
    h1_only.alpn_protocols = vec![b"http/1.1".to_vec()];
    let h1 = TlsServer::start(Arc::new(h1_only)).await;
    let mut tls_servers = Vec::new();
    for check_type in TYPES {
        let config = resuming_config(&identity, &[&rustls::version::TLS13]);
        tls_servers.push((check_type, TlsServer::start(Arc::new(config)).await));
    }
    let plain = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let plain_address = plain.local_addr().unwrap();
    serve_ok(plain, "ok");
    let lines = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let lines_address = lines.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = lines.accept().await {
            tokio::spawn(async move {
                let _ = stream.write_all(b"hello\n").await;
                let mut rest = Vec::new();
                let _ = stream.read_to_end(&mut rest).await;
            });
        }
    });
    let dns = dns_server().await;
    let proxy = common::proxy::Tinyproxy::start("");

    let addresses: Vec<(&str, SocketAddr)> = tls_servers
        .iter()
        .map(|(check_type, server)| (*check_type, server.address))
        .collect();
    let mut toml = tls_checks_toml(&ca.ca_file, &addresses);
    toml.push_str(&format!(
        r#"
        [[checks]]
        name = "http1-tls"
        type = "http"
        interval = "5s"
        timeout = "3s"
        url = "https://svc.test:{h1_port}/"
        instances = ["127.0.0.1"]
        tls = {{ ca_file = "{ca}" }}
        [[checks]]
        name = "http1"
        type = "http"
        interval = "5s"
        timeout = "3s"
        url = "http://{plain_address}/"
        [[checks]]
        name = "tcp-plain"
        type = "tcp"
        interval = "5s"
        timeout = "3s"
        address = "{lines_address}"
        [[checks.steps]]
        expect = "hello"
        [[checks]]
        name = "dns"
        type = "dns"
        interval = "5s"
        timeout = "3s"
        server = "{dns}"
        query = "svc.test"
        [[checks]]
        name = "https-proxy"
        type = "http"
        interval = "5s"
        timeout = "3s"
        url = "https://svc.test:{h1_port}/"
        instances = ["127.0.0.1"]
        proxy_url = "{proxy_url}"
        tls = {{ ca_file = "{ca}" }}
        [[checks]]
        name = "http-proxy"
        type = "http"
        interval = "5s"
        timeout = "3s"
        url = "http://{plain_address}/"
        proxy_url = "{proxy_url}"
        "#,
        h1_port = h1.address.port(),
        ca = ca.ca_file.display(),
        proxy_url = proxy.url(),
    ));
    let config = config(&toml);
    let (dispatcher, _) = dispatcher(&config);
    let names = [
        "http",
        "http1-tls",
        "http1",
        "tcp",
        "tcp-plain",
        "tls",
        "grpc",
        "dns",
        "https-proxy",
        "http-proxy",
    ];
    let mut checked = 0;
    let mut apart = Vec::new();
    for _ in 0..PROBES {
        for (name, response) in run_all(&dispatcher, &config, &names).await {
            let (sum, total) = phases_and_total(&response);
            assert!(total > 0.0, "{name}: {:?}", response.timings);
            if name == "https-proxy" {
                assert!(
                    response.timings.proxy > 0.0,
                    "{name}: {:?}",
                    response.timings
                );
            }
            // The phases tile the probe, so they add up exactly but for float rounding: far
            // inside the promised millisecond.
            if (sum - total).abs() >= 1e-6 {
                apart.push(format!("{name}: {:.6}s apart", total - sum));
            }
            checked += 1;
        }
    }
    assert_eq!(checked, PROBES * names.len());
    assert!(apart.is_empty(), "phases do not add up to total: {apart:?}");
    // The h2 probe really spoke h2, and the h1 ones HTTP/1.1.
    let responses = run_all(&dispatcher, &config, &names).await;
    let version = |name: &str| {
        responses
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, response)| response.http.as_ref())
            .map(|http| http.version.clone())
    };
    assert_eq!(version("http").as_deref(), Some("HTTP/2"));
    assert_eq!(version("http1-tls").as_deref(), Some("HTTP/1.1"));
    assert_eq!(version("http1").as_deref(), Some("HTTP/1.1"));
}
