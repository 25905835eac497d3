//! HTTP checks through a real proxy (tinyproxy, started per test): https targets through a
//! CONNECT tunnel to each instance's address with the URL's name as SNI, timed as the `proxy`
//! phase; http targets forwarded in absolute form; `no_proxy` going direct; credentials from a
//! file; and the proxy's refusals (407, 403) and misbehaviour as `connect` errors that say why.

use crate::common;

use bastion_agent::messages::Response;
use bastion_agent::model::ErrorKind;
use common::proxy::Tinyproxy;
use common::tls_server::{plain_config, TlsServer};
use common::*;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

const PROXY_PASSWORD: &str = "pr0xy-SECRET-5";

fn days(n: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc() + time::Duration::days(n)
}

/// One http check named `h` with `keys`, run once; its responses.
async fn run(keys: &str) -> Vec<Response> {
    let config = config(&format!(
        "[[checks]]\nname = \"h\"\ntype = \"http\"\ninterval = \"5s\"\ntimeout = \"3s\"\n{keys}\n"
    ));
    run_single(&config).await.responses
}

fn phases_add_up(response: &Response) -> bool {
    let t = &response.timings;
    let sum = t.resolve + t.connect + t.proxy + t.tls + t.processing + t.transfer;
    (sum - t.total).abs() < 1e-6
}

/// An HTTP target that records each request head and answers `200 ok`.
async fn recording_target(ip: &str) -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind((ip, 0)).await.unwrap();
    let address = listener.local_addr().unwrap();
    let heads: Arc<Mutex<Vec<String>>> = Arc::default();
    let seen = Arc::clone(&heads);
    serve(listener, move |mut request| {
        seen.lock().unwrap().push(request.head.clone());
        async move { respond(&mut request.stream, "200 OK", &[], "ok").await }
    });
    (address, heads)
}

#[tokio::test]
async fn https_goes_through_a_connect_tunnel_to_each_instance() {
    let proxy = Tinyproxy::start("");
    let ca = TestCa::new("proxy test CA");
    let identity = ca.leaf(&["svc.test"], days(30));
    let config = plain_config(&identity, &[&rustls::version::TLS13]);
    let first = TlsServer::start_on("127.0.0.2", Arc::clone(&config)).await;
    let second = TlsServer::start_on("127.0.0.3", config).await;
    let responses = run(&format!(
        "url = \"https://svc.test:8443/health\"\ninstances = [\"{}\", \"{}\"]\nproxy_url = \"{}\"\ntls = {{ ca_file = \"{}\" }}",
        first.address,
        second.address,
        proxy.url(),
        ca.ca_file.display()
    ))
    .await;
    assert_eq!(responses.len(), 2);
    for (response, server) in responses.iter().zip([&first, &second]) {
        assert!(response.passing, "{response:?}\n{}", proxy.log());
        assert_eq!(response.target, server.address.to_string());
        // The certificate for svc.test verified: the URL's name was the SNI through the tunnel.
        assert!(response.tls.is_some(), "{response:?}");
        let t = &response.timings;
        assert!(t.proxy > 0.0 && t.connect > 0.0 && t.tls > 0.0, "{t:?}");
        assert!(phases_add_up(response), "{t:?}");
        println!(
            "through tinyproxy to {}: connect {:.6}s proxy {:.6}s tls {:.6}s processing {:.6}s transfer {:.6}s total {:.6}s",
            response.target, t.connect, t.proxy, t.tls, t.processing, t.transfer, t.total
        );
        assert_eq!(
            server.counts().0,
            1,
            "one handshake reached {}",
            server.address
        );
    }
    let log = proxy.log();
    for server in [&first, &second] {
        assert!(
            log.contains(&format!("CONNECT {} HTTP/1.1", server.address)),
            "the proxy was asked for each instance's address:\n{log}"
        );
    }
}

#[tokio::test]
async fn http_is_forwarded_through_the_proxy_and_no_proxy_goes_direct() {
    let proxy = Tinyproxy::start("");
    let (target, heads) = recording_target("127.0.0.2").await;
    let port = target.port();
    let keys = |extra: &str| {
        format!(
            "url = \"http://svc.test:{port}/health?full=1\"\ninstances = [\"127.0.0.2\"]\nproxy_url = \"{}\"\n{extra}",
            proxy.url()
        )
    };
    let response = run(&keys("")).await.remove(0);
    assert!(response.passing, "{response:?}\n{}", proxy.log());
    assert_eq!(response.timings.proxy, 0.0, "forwarding opens no tunnel");
    assert!(phases_add_up(&response), "{:?}", response.timings);
    let log = proxy.log();
    assert!(
        log.contains(&format!("GET http://{target}/health?full=1 HTTP/1.1")),
        "the proxy was asked for the instance's address in absolute form:\n{log}"
    );
    {
        let heads = heads.lock().unwrap();
        assert_eq!(heads.len(), 1);
        assert!(
            heads[0].starts_with("GET /health?full=1 HTTP/1.1"),
            "{}",
            heads[0]
        );
        // tinyproxy, as RFC 9112 allows, sends the request line's host as Host: through a
        // forwarding proxy the target sees the instance, not the URL's name (docs/checks.md).
        assert_eq!(header(&heads[0], "host"), Some(target.to_string().as_str()));
    }
    // no_proxy by name, by block: straight to the instance, with the URL's Host.
    for bypass in ["no_proxy = [\"svc.test\"]", "no_proxy = [\"127.0.0.0/8\"]"] {
        let response = run(&keys(bypass)).await.remove(0);
        assert!(response.passing, "{bypass}: {response:?}");
        let heads = heads.lock().unwrap();
        let last = heads.last().unwrap();
        assert_eq!(
            header(last, "host"),
            Some(format!("svc.test:{port}").as_str()),
            "{bypass}"
        );
    }
    assert_eq!(heads.lock().unwrap().len(), 3);
    assert_eq!(
        proxy.log().matches("GET http://").count(),
        1,
        "no_proxy skipped the proxy"
    );
}

#[tokio::test]
async fn proxy_credentials_come_from_a_file_and_refusals_say_why() {
    let proxy = Tinyproxy::start(&format!("BasicAuth probe {PROXY_PASSWORD}"));
    let ca = TestCa::new("proxy auth CA");
    let identity = ca.leaf(&["svc.test"], days(30));
    let server = TlsServer::start_on(
        "127.0.0.2",
        plain_config(&identity, &[&rustls::version::TLS13]),
    )
    .await;
    let (plain, heads) = recording_target("127.0.0.2").await;
    let good = temp_path("proxy-password", "txt");
    std::fs::write(&good, format!("{PROXY_PASSWORD}\n")).unwrap();
    let bad = temp_path("proxy-password", "txt");
    std::fs::write(&bad, "guess\n").unwrap();
    let https = |auth: &str| {
        format!(
            "url = \"https://svc.test/\"\ninstances = [\"{}\"]\nproxy_url = \"{}\"\ntls = {{ ca_file = \"{}\" }}\n{auth}",
            server.address,
            proxy.url(),
            ca.ca_file.display()
        )
    };
    let auth = |file: &std::path::Path| {
        format!(
            "proxy_basic_auth = {{ username = \"probe\", password_file = \"{}\" }}",
            file.display()
        )
    };
    let config_text = format!(
        "[[checks]]\nname = \"h\"\ntype = \"http\"\ninterval = \"5s\"\ntimeout = \"3s\"\n{}\n",
        https(&auth(&good))
    );
    let result = run_single(&config(&config_text)).await;
    assert!(result.passing, "{result:?}\n{}", proxy.log());
    let json = serde_json::to_string(&result).unwrap();
    assert!(!json.contains(PROXY_PASSWORD), "{json}");

    let missing = run(&https("")).await.remove(0);
    let error = missing.error.expect("refused without credentials");
    assert_eq!(error.kind, ErrorKind::Connect, "{error:?}");
    assert!(error.message.contains("407"), "{}", error.message);
    assert!(
        error.message.contains("set proxy_basic_auth"),
        "{}",
        error.message
    );

    let wrong = run(&https(&auth(&bad))).await.remove(0);
    let error = wrong.error.expect("refused with the wrong password");
    assert_eq!(error.kind, ErrorKind::Connect, "{error:?}");
    // tinyproxy answers wrong credentials with 401 rather than 407.
    assert!(
        error
            .message
            .contains(&format!("refused CONNECT {}: 401", server.address))
            && error
                .message
                .contains("refused the credentials of proxy_basic_auth"),
        "{}",
        error.message
    );

    // Forwarded http carries Proxy-Authorization to the proxy, which keeps it to itself.
    let forwarded = run(&format!(
        "url = \"http://{plain}/\"\nproxy_url = \"{}\"\n{}",
        proxy.url(),
        auth(&good)
    ))
    .await
    .remove(0);
    assert!(forwarded.passing, "{forwarded:?}");
    assert_eq!(
        header(&heads.lock().unwrap()[0], "proxy-authorization"),
        None
    );
    // Without credentials, the proxy's 407 is the answer the check gets.
    let refused = run(&format!(
        "url = \"http://{plain}/\"\nproxy_url = \"{}\"",
        proxy.url()
    ))
    .await
    .remove(0);
    assert_eq!(
        refused.http.as_ref().map(|http| http.status),
        Some(407),
        "{refused:?}"
    );
    assert!(!refused.passing);
}

#[tokio::test]
async fn a_proxy_that_refuses_connect_is_a_connect_error() {
    // tinyproxy tunnels only to port 1 here: CONNECT to any other is refused with 403.
    let proxy = Tinyproxy::start("ConnectPort 1");
    let ca = TestCa::new("proxy 403 CA");
    let identity = ca.leaf(&["svc.test"], days(30));
    let server = TlsServer::start(plain_config(&identity, &[&rustls::version::TLS13])).await;
    let response = run(&format!(
        "url = \"https://svc.test/\"\ninstances = [\"{}\"]\nproxy_url = \"{}\"\ntls = {{ ca_file = \"{}\" }}",
        server.address,
        proxy.url(),
        ca.ca_file.display()
    ))
    .await
    .remove(0);
    let error = response.error.expect("refused");
    assert_eq!(error.kind, ErrorKind::Connect);
    assert!(
        error
            .message
            .contains(&format!("refused CONNECT {}: 403", server.address)),
        "{}",
        error.message
    );
    assert!(response.timings.proxy > 0.0, "{:?}", response.timings);
    assert_eq!(server.counts(), (0, 0), "nothing reached the target");
}

#[tokio::test]
async fn ipv6_instances_go_through_the_proxy_by_address() {
    let proxy = Tinyproxy::start("");
    let ca = TestCa::new("proxy v6 CA");
    let identity = ca.leaf(&["svc.test"], days(30));
    let server =
        TlsServer::start_on("::1", plain_config(&identity, &[&rustls::version::TLS13])).await;
    let response = run(&format!(
        "url = \"https://svc.test/\"\ninstances = [\"{}\"]\nproxy_url = \"{}\"\ntls = {{ ca_file = \"{}\" }}",
        server.address,
        proxy.url(),
        ca.ca_file.display()
    ))
    .await
    .remove(0);
    assert!(response.passing, "{response:?}\n{}", proxy.log());
    assert_eq!(response.target, server.address.to_string());
    assert!(
        proxy
            .log()
            .contains(&format!("CONNECT {} HTTP/1.1", server.address)),
        "{}",
        proxy.log()
    );
}

/// A fake proxy that answers every CONNECT with `answer` (then holds the connection open).
async fn fake_proxy(answer: &'static [u8]) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    serve(listener, move |mut request| async move {
        let _ = request.stream.write_all(answer).await;
        let _ = request.stream.flush().await;
        if !answer.is_empty() {
            tokio::time::sleep(std::time::Duration::from_secs(5)).await;
        }
    });
    address
}

#[tokio::test]
async fn a_proxy_that_misbehaves_is_a_connect_error_that_says_how() {
    let cases: [(&'static [u8], &str); 4] = [
        (b"", "closed the connection before answering CONNECT"),
        (b"SSH-2.0-OpenSSH\r\n\r\n", "is not HTTP/1.x"),
        (
            b"HTTP/1.1 200 Connection established\r\n\r\nEXTRA",
            "sent 5 bytes after its answer",
        ),
        (
            b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n",
            "502 Bad Gateway",
        ),
    ];
    for (answer, expected) in cases {
        let proxy = fake_proxy(answer).await;
        let response = run(&format!(
            "url = \"https://svc.test/\"\ninstances = [\"127.0.0.1:1\"]\nproxy_url = \"http://{proxy}\"\ntls = {{ insecure_skip_verify = true }}"
        ))
        .await
        .remove(0);
        let error = response.error.expect("an error");
        assert_eq!(error.kind, ErrorKind::Connect, "{error:?}");
        assert!(
            error.message.contains(expected),
            "{expected}: {}",
            error.message
        );
        assert!(
            error.message.contains(&format!("proxy {proxy}")),
            "{}",
            error.message
        );
    }
}

#[test]
fn proxy_keys_are_checked_at_load() {
    let base = "[[checks]]\nname = \"h\"\ntype = \"http\"\ninterval = \"5s\"\nurl = \"https://svc.test/\"\n";
    assert_config_errors(
        base,
        &[
            ("proxy_url = \"https://proxy:3128\"\n", "check `h`: proxy_url `https://proxy:3128` is not valid: scheme `https` is not supported"),
            ("proxy_url = \"http://user:hunter2@proxy:3128\"\n", "check `h`: proxy_url holds credentials; put them in proxy_basic_auth"),
            ("no_proxy = [\"internal.test\"]\n", "check `h`: no_proxy only applies with proxy_url"),
            ("proxy_url = \"http://proxy:3128\"\nno_proxy = [\"10.0.0.0/99\"]\n", "check `h`: no_proxy entry `10.0.0.0/99`"),
            ("proxy_url = \"http://proxy:3128\"\nproxy_basic_auth = { username = \"u\", password_file = \"/no/such/file\" }\n", "check `h`: proxy_basic_auth.password_file: cannot read /no/such/file"),
        ],
    );
    let error = config_error(&format!(
        "{base}proxy_url = \"http://user:hunter2@proxy:3128\"\n"
    ));
    assert!(!error.contains("hunter2"), "{error}");
}

/// A proxy that takes the connection and never answers CONNECT: the probe ends at its timeout,
/// and says it was in the proxy phase.
#[tokio::test]
async fn a_silent_proxy_times_out_in_the_proxy_phase() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = listener.local_addr().unwrap();
    serve_silent(listener);
    let config = config(&format!(
        "[[checks]]\nname = \"h\"\ntype = \"http\"\ninterval = \"5s\"\ntimeout = \"500ms\"\nurl = \"https://svc.test/\"\ninstances = [\"127.0.0.1:1\"]\nproxy_url = \"http://{proxy}\"\ntls = {{ insecure_skip_verify = true }}\n"
    ));
    let started = std::time::Instant::now();
    let response = run_single(&config).await.responses.remove(0);
    let error = response.error.expect("a timeout");
    assert_eq!(error.kind, ErrorKind::Timeout, "{error:?}");
    assert!(error.message.ends_with("during proxy"), "{}", error.message);
    assert!(response.timings.proxy > 0.4, "{:?}", response.timings);
    assert!(started.elapsed() < std::time::Duration::from_secs(3));
}

#[test]
fn a_user_name_with_a_colon_is_refused() {
    let base = "[[checks]]\nname = \"h\"\ntype = \"http\"\ninterval = \"5s\"\nurl = \"https://svc.test/\"\n";
    assert_config_errors(
        base,
        &[
            (
                "basic_auth = { username = \"a:b\", password_file = \"/etc/hostname\" }\n",
                "check `h`: basic_auth.username holds a `:`",
            ),
            (
                "proxy_url = \"http://proxy:3128\"\nproxy_basic_auth = { username = \"a:b\", password_file = \"/etc/hostname\" }\n",
                "check `h`: proxy_basic_auth.username holds a `:`",
            ),
        ],
    );
}
