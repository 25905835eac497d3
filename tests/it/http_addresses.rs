//! Which addresses a check probes and from where: `ip_protocol` keeps the resolved addresses
//! of one family (with `ip_protocol_fallback` taking the other when there are none), and
//! `source_ip` binds the probe's connection to a local address, each against real servers
//! where it changes the outcome. Names come from the test DNS responder (`dual.test` has an
//! A and an AAAA record, `svc.test` only A records) through `runner.dns_servers`.

use crate::common;

use bastion_agent::messages::CheckResult;
use bastion_agent::model::ErrorKind;
use common::dns::dns_server;
use common::dns::SVC_TEST;
use common::*;
use tokio::io::AsyncWriteExt;

/// A line server on `ips` (one port for all) that tells each peer its own address.
async fn telling_peers(ips: &[&str]) -> u16 {
    let (port, listeners) = listeners_on_one_port(ips).await;
    for listener in listeners {
        tokio::spawn(async move {
            while let Ok((mut stream, peer)) = listener.accept().await {
                let _ = stream
                    .write_all(format!("from {}\n", peer.ip()).as_bytes())
                    .await;
                let _ = stream.shutdown().await;
            }
        });
    }
    port
}

async fn tcp_check(dns: std::net::SocketAddr, address: &str, keys: &str) -> CheckResult {
    let config = config(&format!(
        "[runner]\ndns_servers = [\"{dns}\"]\n[[checks]]\nname = \"t\"\ntype = \"tcp\"\ninterval = \"5s\"\ntimeout = \"2s\"\naddress = \"{address}\"\n{keys}\n[[checks.steps]]\nexpect = \"from\"\n"
    ));
    run_single(&config).await
}

fn targets(result: &CheckResult) -> Vec<String> {
    result
        .responses
        .iter()
        .map(|response| response.target.clone())
        .collect()
}

#[tokio::test]
async fn ip_protocol_keeps_the_addresses_of_one_family() {
    let dns = dns_server(&SVC_TEST).await;
    let port = telling_peers(&["127.0.0.1", "::1", "127.0.0.2", "127.0.0.3"]).await;
    let dual = format!("dual.test:{port}");
    let v4 = format!("127.0.0.1:{port}");
    let v6 = format!("[::1]:{port}");
    let mut every = targets(&tcp_check(dns, &dual, "").await);
    every.sort();
    assert_eq!(every, vec![v4.clone(), v6.clone()]);
    let result = tcp_check(dns, &dual, "ip_protocol = \"ip4\"").await;
    assert_eq!(targets(&result), vec![v4.clone()]);
    assert!(result.passing, "{result:?}");
    let result = tcp_check(dns, &dual, "ip_protocol = \"ip6\"").await;
    assert_eq!(targets(&result), vec![v6.clone()]);
    assert!(result.passing, "{result:?}");
    assert_eq!(
        result.responses[0]
            .sections
            .tcp
            .as_ref()
            .map(|tcp| tcp.body.as_str()),
        Some("from ::1\n")
    );

    // svc.test has no AAAA record: ip6 falls back to its IPv4 addresses, unless told not to.
    let svc = format!("svc.test:{port}");
    let result = tcp_check(dns, &svc, "ip_protocol = \"ip6\"").await;
    assert_eq!(
        targets(&result),
        vec![format!("127.0.0.2:{port}"), format!("127.0.0.3:{port}")]
    );
    let result = tcp_check(
        dns,
        &svc,
        "ip_protocol = \"ip6\"\nip_protocol_fallback = false",
    )
    .await;
    assert_eq!(targets(&result), vec![svc.clone()]);
    let error = result.responses[0].error.as_ref().expect("no address left");
    assert_eq!(error.kind, ErrorKind::Resolve);
    assert!(
        error
            .message
            .contains("no address of the IP version asked for"),
        "{}",
        error.message
    );

    // Listed instances are kept as they are.
    let result = tcp_check(
        dns,
        &dual,
        "ip_protocol = \"ip6\"\ninstances = [\"127.0.0.1\"]",
    )
    .await;
    assert_eq!(targets(&result), vec![v4]);
}

#[tokio::test]
async fn source_ip_binds_the_connection_to_a_local_address() {
    let dns = dns_server(&SVC_TEST).await;
    let port = telling_peers(&["127.0.0.1", "::1"]).await;
    let v4 = format!("127.0.0.1:{port}");
    let result = tcp_check(dns, &v4, "source_ip = \"127.0.0.5\"").await;
    assert_eq!(
        result.responses[0]
            .sections
            .tcp
            .as_ref()
            .map(|tcp| tcp.body.as_str()),
        Some("from 127.0.0.5\n")
    );
    let result = tcp_check(dns, &v4, "").await;
    assert_eq!(
        result.responses[0]
            .sections
            .tcp
            .as_ref()
            .map(|tcp| tcp.body.as_str()),
        Some("from 127.0.0.1\n")
    );

    // An http check that its server lets in only from 127.0.0.6.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, peer)) = listener.accept().await {
            tokio::spawn(async move {
                if read_head(&mut stream).await.is_some() {
                    let status = if peer.ip().to_string() == "127.0.0.6" {
                        "200 OK"
                    } else {
                        "403 Forbidden"
                    };
                    respond(&mut stream, status, &[], "").await;
                }
            });
        }
    });
    let http = |keys: &str| {
        config(&format!(
            "[[checks]]\nname = \"h\"\ntype = \"http\"\ninterval = \"5s\"\ntimeout = \"2s\"\nurl = \"http://{address}/\"\n{keys}\n"
        ))
    };
    assert!(!run_single(&http("")).await.passing);
    assert!(run_single(&http("source_ip = \"127.0.0.6\"")).await.passing);

    // A source of the other family, or one that is no address of this host: connect errors.
    let cases = [
        ("::1", "source_ip ::1 and the instance"),
        ("192.0.2.1", "binding source_ip 192.0.2.1"),
    ];
    for (source, expected) in cases {
        let result = tcp_check(dns, &v4, &format!("source_ip = \"{source}\"")).await;
        let error = result.responses[0].error.as_ref().expect("an error");
        assert_eq!(error.kind, ErrorKind::Connect, "{error:?}");
        assert!(error.message.contains(expected), "{}", error.message);
    }
}

#[test]
fn ip_protocol_fallback_needs_ip_protocol() {
    assert_config_errors(
        "[[checks]]\nname = \"t\"\ntype = \"tcp\"\ninterval = \"5s\"\naddress = \"db:1\"\n",
        &[
            (
                "ip_protocol_fallback = false\n",
                "check `t`: ip_protocol_fallback only applies with ip_protocol",
            ),
            ("ip_protocol = \"ipv4\"\n", "unknown variant `ipv4`"),
        ],
    );
}

/// Every type probes an instance on ::1: http, tcp, tls, grpc (with TLS), dns (a server on
/// ::1) and icmp (where this process may open an ICMP socket).
#[tokio::test]
async fn every_type_probes_an_ipv6_instance() {
    use common::tls_server::{plain_config, TlsServer};
    let ca = TestCa::new("v6 CA");
    let identity = ca.leaf(
        &["svc.test"],
        time::OffsetDateTime::now_utc() + time::Duration::days(30),
    );
    let tls = TlsServer::start_on("::1", plain_config(&identity, &[&rustls::version::TLS13])).await;
    let http = tokio::net::TcpListener::bind("[::1]:0").await.unwrap();
    let http_address = http.local_addr().unwrap();
    serve_ok(http, "ok");
    let lines = telling_peers(&["::1"]).await;
    let dns = common::dns::serve_zone("::1", 0, &SVC_TEST, std::sync::Arc::default()).await;
    let ca = ca.ca_file.display();
    let mut toml = format!(
        r#"
        [[checks]]
        name = "http"
        type = "http"
        interval = "5s"
        timeout = "2s"
        url = "http://{http_address}/"
        [[checks]]
        name = "tcp"
        type = "tcp"
        interval = "5s"
        timeout = "2s"
        address = "[::1]:{lines}"
        [[checks.steps]]
        expect = "from ::1"
        [[checks]]
        name = "tls"
        type = "tls"
        interval = "5s"
        timeout = "2s"
        address = "{tls_address}"
        tls = {{ server_name = "svc.test", ca_file = "{ca}" }}
        [[checks]]
        name = "grpc"
        type = "grpc"
        interval = "5s"
        timeout = "2s"
        address = "{tls_address}"
        tls = {{ server_name = "svc.test", ca_file = "{ca}" }}
        [[checks]]
        name = "dns"
        type = "dns"
        interval = "5s"
        timeout = "2s"
        server = "{dns}"
        query = "svc.test"
        "#,
        tls_address = tls.address,
    );
    let mut names = vec!["http", "tcp", "tls", "grpc", "dns"];
    match bastion_agent::checks::icmp::ensure_sockets() {
        Ok(_) => {
            toml.push_str("[[checks]]\nname = \"icmp\"\ntype = \"icmp\"\ninterval = \"5s\"\ntimeout = \"2s\"\nhost = \"::1\"\ncount = 2\npacket_interval = \"20ms\"\n");
            names.push("icmp");
        }
        Err(error) => println!("icmp over ::1 skipped: {error}"),
    }
    let config = config(&toml);
    let (dispatcher, _) = dispatcher(&config);
    for name in names {
        let result = run_check(&dispatcher, &config, name).await;
        let response = &result.responses[0];
        assert!(response.passing, "{name}: {response:?}");
        assert!(
            response.target.starts_with("[::1]:") || response.target == "::1",
            "{name}: {}",
            response.target
        );
    }
}
