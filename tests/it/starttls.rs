//! STARTTLS on `tls` and `tcp` checks: a real SMTP server (aiosmtpd, as the notifier tests
//! run it) upgraded and its certificate verified, a PostgreSQL-speaking peer that accepts or
//! refuses SSL, and an SMTP peer that does not offer STARTTLS; the `starttls` phase in the
//! timings and in `/metrics`.

use crate::common::process::scratch_dir;
use crate::common::*;
use bastion_agent::model::ErrorKind;
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

fn tls_check(address: SocketAddr, protocol: &str, ca_file: &std::path::Path) -> String {
    format!(
        "[[checks]]\nname = \"st\"\ntype = \"tls\"\ninterval = \"5s\"\ntimeout = \"3s\"\naddress = \"{address}\"\nstarttls = \"{protocol}\"\n[checks.tls]\nca_file = \"{}\"\n",
        ca_file.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_smtp_server_upgrades_and_its_certificate_is_checked() {
    let dir = scratch_dir("starttls-smtp");
    let (_smtp, port, ca_file) = crate::notify::smtp_server(&dir, "bastion", "pw", "starttls");
    let address: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let result = run_single(&config(&tls_check(address, "smtp", &ca_file))).await;
    let response = &result.responses[0];
    assert!(result.passing, "{result:?}");
    let chain = response.tls.as_ref().unwrap().chain.as_ref().unwrap();
    assert!(chain.valid, "{chain:?}");
    assert!(response.timings.starttls > 0.0 && response.timings.tls > 0.0);
    let timings = &response.timings;
    let sum = timings.resolve + timings.connect + timings.starttls + timings.tls;
    assert!((sum - timings.total).abs() < 1e-9, "{timings:?}");

    // The same server as a tcp check, which then speaks over the TLS session.
    let result = run_single(&config(&format!(
        "[[checks]]\nname = \"st\"\ntype = \"tcp\"\ninterval = \"5s\"\ntimeout = \"3s\"\naddress = \"{address}\"\nstarttls = \"smtp\"\ntls = {{ ca_file = \"{}\" }}\n\
         [[checks.steps]]\nsend = \"EHLO bastion.test\\r\\n\"\n[[checks.steps]]\nexpect = \"250[- ]AUTH\"\n",
        ca_file.display()
    )))
    .await;
    assert!(result.passing, "{result:?}");
}

/// A PostgreSQL-speaking peer: reads the SSLRequest, answers `answer`, and with `S` serves a
/// TLS handshake with a certificate of `ca` for 127.0.0.1.
async fn postgres_peer(answer: u8, ca: &TestCa) -> SocketAddr {
    let leaf = ca.leaf(
        &["127.0.0.1"],
        time::OffsetDateTime::now_utc() + time::Duration::days(30),
    );
    let acceptor = tokio_rustls::TlsAcceptor::from(leaf.server_config(&[]));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let mut request = [0u8; 8];
                if stream.read_exact(&mut request).await.is_err() {
                    return;
                }
                assert_eq!(
                    request,
                    [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f],
                    "an SSLRequest"
                );
                let _ = stream.write_all(&[answer]).await;
                if answer == b'S' {
                    if let Ok(mut tls) = acceptor.accept(stream).await {
                        let mut rest = Vec::new();
                        let _ = tls.read_to_end(&mut rest).await;
                    }
                }
            });
        }
    });
    address
}

#[tokio::test]
async fn postgres_sslrequest_is_accepted_or_refused() {
    let ca = TestCa::new("bastion test PG CA");
    let accepting = postgres_peer(b'S', &ca).await;
    let result = run_single(&config(&tls_check(accepting, "postgres", &ca.ca_file))).await;
    assert!(result.passing, "{result:?}");
    assert!(
        result.responses[0]
            .tls
            .as_ref()
            .unwrap()
            .chain
            .as_ref()
            .unwrap()
            .valid
    );

    let refusing = postgres_peer(b'N', &ca).await;
    let result = run_single(&config(&tls_check(refusing, "postgres", &ca.ca_file))).await;
    let error = result.responses[0].error.as_ref().unwrap();
    assert_eq!(error.kind, ErrorKind::Tls, "{error:?}");
    assert!(error.message.contains("does not accept SSL"), "{error:?}");
}

#[tokio::test]
async fn an_smtp_server_without_starttls_is_a_tls_error_that_says_so() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let _ = stream.write_all(b"220 plain.test ESMTP\r\n").await;
            let mut buffer = [0u8; 256];
            let _ = stream.read(&mut buffer).await;
            let _ = stream
                .write_all(b"250-plain.test\r\n250-SIZE 1000\r\n250 HELP\r\n")
                .await;
            let _ = stream.read(&mut buffer).await;
        }
    });
    let ca = TestCa::new("unused");
    let result = run_single(&config(&tls_check(address, "smtp", &ca.ca_file))).await;
    let error = result.responses[0].error.as_ref().unwrap();
    assert_eq!(error.kind, ErrorKind::Tls, "{error:?}");
    assert!(
        error
            .message
            .contains("refused STARTTLS (smtp): its EHLO answer does not offer STARTTLS"),
        "{error:?}"
    );
}

#[test]
fn starttls_takes_only_known_protocols() {
    let base = "[[checks]]\nname = \"st\"\ntype = \"tls\"\ninterval = \"5s\"\naddress = \"127.0.0.1:25\"\n";
    assert_config_errors(base, &[("starttls = \"xmpp\"", "unknown variant `xmpp`")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_starttls_phase_is_in_metrics() {
    let ca = TestCa::new("bastion test PG CA");
    let address = postgres_peer(b'S', &ca).await;
    let (_, text) = agent_scrape(
        &tls_check(address, "postgres", &ca.ca_file)
            .replace("5s", "1s")
            .replace("3s", "900ms"),
    )
    .await;
    let series = format!(
        "probe_tls_duration_seconds{{check=\"st\",target=\"{address}\",phase=\"starttls\"}}"
    );
    assert!(
        metric(&text, &series).is_some_and(|seconds| seconds > 0.0),
        "{text}"
    );
}

/// The machine's PostgreSQL (127.0.0.1:5432, as `history.rs` uses it), which CI runs with SSL
/// on (Debian's snakeoil certificate, hence `insecure_skip_verify`).
#[tokio::test]
async fn the_machines_postgresql_upgrades_to_tls() {
    let result = run_single(&config(
        "[[checks]]\nname = \"pg\"\ntype = \"tls\"\ninterval = \"5s\"\ntimeout = \"3s\"\naddress = \"127.0.0.1:5432\"\nstarttls = \"postgres\"\n[checks.tls]\ninsecure_skip_verify = true\n",
    ))
    .await;
    let response = &result.responses[0];
    assert!(
        result.passing,
        "is PostgreSQL running on 127.0.0.1:5432 with ssl = on? {result:?}"
    );
    let tls = response.tls.as_ref().unwrap();
    assert!(tls.version.starts_with("TLSv1."), "{tls:?}");
    assert!(!tls.chain.as_ref().unwrap().certificates.is_empty());
    assert!(response.timings.starttls > 0.0);
}

/// A real IMAP server (Debian's dovecot, $DOVECOT overrides it) on a free port with a
/// certificate of `ca`; stopped when dropped.
struct Dovecot {
    child: std::process::Child,
    port: u16,
}

impl Dovecot {
    fn start(ca: &TestCa) -> Dovecot {
        let binary = std::env::var("DOVECOT").unwrap_or_else(|_| "/usr/sbin/dovecot".to_string());
        assert!(
            std::path::Path::new(&binary).exists(),
            "dovecot not found at {binary} ($DOVECOT): install dovecot-imapd, or run .ci/test, which installs it"
        );
        let dir = scratch_dir("starttls-dovecot");
        for sub in ["run", "state", "home"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        let (cert, key) =
            crate::common::tls_server::write_identity(&ca.leaf(&["127.0.0.1"], far_future()));
        let port = crate::common::nats::free_port();
        let d = dir.display();
        let config = format!(
            "base_dir = {d}/run\nstate_dir = {d}/state\nlog_path = {d}/dovecot.log\n\
             protocols = imap\nlisten = 127.0.0.1\nssl = yes\n\
             ssl_cert = <{}\nssl_key = <{}\ndisable_plaintext_auth = yes\n\
             mail_location = maildir:{d}/home/Maildir\n\
             passdb {{\n  driver = static\n  args = password=unused\n}}\n\
             userdb {{\n  driver = static\n  args = uid=65534 gid=65534 home={d}/home\n}}\n\
             service imap-login {{\n  chroot =\n  inet_listener imap {{\n    port = {port}\n  }}\n  inet_listener imaps {{\n    port = 0\n  }}\n}}\n\
             service anvil {{\n  chroot =\n}}\n",
            cert.display(),
            key.display()
        );
        let path = dir.join("dovecot.conf");
        std::fs::write(&path, config).unwrap();
        let child = std::process::Command::new(&binary)
            .arg("-F")
            .arg("-c")
            .arg(&path)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("dovecot starts");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "dovecot never listened: {}",
                std::fs::read_to_string(dir.join("dovecot.log")).unwrap_or_default()
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Dovecot { child, port }
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        // SIGTERM: the master stops its login and auth processes with it.
        let _ = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

fn far_future() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc() + time::Duration::days(30)
}

/// IMAP STARTTLS against a real dovecot: the upgrade, the handshake timed as `tls`, the
/// certificate verified against its CA; with another CA the same server is a `tls` failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_imap_server_upgrades_and_its_certificate_is_checked() {
    let ca = TestCa::new("bastion test imap CA");
    let dovecot = Dovecot::start(&ca);
    let address: SocketAddr = format!("127.0.0.1:{}", dovecot.port).parse().unwrap();
    let result = run_single(&config(&tls_check(address, "imap", &ca.ca_file))).await;
    assert!(result.passing, "{result:?}");
    let response = &result.responses[0];
    let chain = response.tls.as_ref().unwrap().chain.as_ref().unwrap();
    assert!(chain.valid, "{chain:?}");
    assert!(response.timings.starttls > 0.0 && response.timings.tls > 0.0);

    let stranger = TestCa::new("another CA");
    let result = run_single(&config(&tls_check(address, "imap", &stranger.ca_file))).await;
    assert!(!result.passing, "{result:?}");
    let chain = result.responses[0]
        .tls
        .as_ref()
        .unwrap()
        .chain
        .as_ref()
        .unwrap();
    assert!(!chain.valid, "{chain:?}");
    drop(dovecot);
}
