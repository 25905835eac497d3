//! STARTTLS on `tls` and `tcp` checks against real servers of every protocol: aiosmtpd (SMTP,
//! as the notifier tests run it), Debian's dovecot (IMAP, POP3), vsftpd (FTP), slapd (LDAP)
//! and the machine's PostgreSQL, each upgraded with its certificate verified and refused by
//! another CA; dovecot, vsftpd and slapd without TLS, an SMTP peer that does not offer
//! STARTTLS and a PostgreSQL-speaking peer that refuses SSL, each a `tls` error saying what
//! the server answered; the `starttls` phase in the timings and in `/metrics`.

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

/// A real server of a STARTTLS protocol, Debian's, in the foreground on a free port with a
/// config of its own and a certificate of `ca` (or none, `tls = false`); stopped (SIGTERM)
/// when dropped. IMAP and POP3: dovecot ($DOVECOT overrides /usr/sbin/dovecot). FTP: vsftpd
/// ($VSFTPD). LDAP: slapd ($SLAPD).
struct RealServer {
    child: std::process::Child,
    port: u16,
}

fn server_binary(variable: &str, default: &str, package: &str) -> String {
    let binary = std::env::var(variable).unwrap_or_else(|_| default.to_string());
    assert!(
        std::path::Path::new(&binary).exists(),
        "{binary} not found (${variable}): install {package}, or run .ci/test, which installs it"
    );
    binary
}

impl RealServer {
    fn start(protocol: &str, ca: &TestCa, tls: bool) -> RealServer {
        let dir = scratch_dir(&format!("starttls-{protocol}"));
        let (cert, key) =
            crate::common::tls_server::write_identity(&ca.leaf(&["127.0.0.1"], far_future()));
        let port = crate::common::nats::free_port();
        let d = dir.display();
        let (cert, key) = (cert.display(), key.display());
        let (binary, args, log) = match protocol {
            "imap" | "pop3" => {
                let binary = server_binary(
                    "DOVECOT",
                    "/usr/sbin/dovecot",
                    "dovecot-imapd and dovecot-pop3d",
                );
                for sub in ["run", "state", "home"] {
                    std::fs::create_dir_all(dir.join(sub)).unwrap();
                }
                let ssl = if tls {
                    format!("ssl = yes\nssl_cert = <{cert}\nssl_key = <{key}\n")
                } else {
                    "ssl = no\n".to_string()
                };
                let config = format!(
                    "base_dir = {d}/run\nstate_dir = {d}/state\nlog_path = {d}/server.log\n\
                     protocols = {protocol}\nlisten = 127.0.0.1\n{ssl}disable_plaintext_auth = yes\n\
                     mail_location = maildir:{d}/home/Maildir\n\
                     passdb {{\n  driver = static\n  args = password=unused\n}}\n\
                     userdb {{\n  driver = static\n  args = uid=65534 gid=65534 home={d}/home\n}}\n\
                     service {protocol}-login {{\n  chroot =\n  inet_listener {protocol} {{\n    port = {port}\n  }}\n  inet_listener {protocol}s {{\n    port = 0\n  }}\n}}\n\
                     service anvil {{\n  chroot =\n}}\n"
                );
                let path = dir.join("server.conf");
                std::fs::write(&path, config).unwrap();
                (
                    binary,
                    vec![
                        "-F".to_string(),
                        "-c".to_string(),
                        path.display().to_string(),
                    ],
                    dir.join("server.log"),
                )
            }
            "ftp" => {
                let binary = server_binary("VSFTPD", "/usr/sbin/vsftpd", "vsftpd");
                std::fs::create_dir_all(dir.join("empty")).unwrap();
                let ssl = if tls {
                    format!("ssl_enable=YES\nrsa_cert_file={cert}\nrsa_private_key_file={key}\n")
                } else {
                    "ssl_enable=NO\n".to_string()
                };
                // Standalone in the foreground; no data connections are ever opened.
                let config = format!(
                    "listen=YES\nlisten_address=127.0.0.1\nlisten_port={port}\nbackground=NO\n\
                     anonymous_enable=NO\nlocal_enable=YES\n{ssl}secure_chroot_dir={d}/empty\n\
                     pasv_enable=NO\nseccomp_sandbox=NO\nvsftpd_log_file={d}/server.log\n"
                );
                let path = dir.join("vsftpd.conf");
                std::fs::write(&path, config).unwrap();
                (
                    binary,
                    vec![path.display().to_string()],
                    dir.join("server.log"),
                )
            }
            "ldap" => {
                let binary = server_binary("SLAPD", "/usr/sbin/slapd", "slapd");
                std::fs::create_dir_all(dir.join("db")).unwrap();
                let ssl = if tls {
                    format!("TLSCertificateFile {cert}\nTLSCertificateKeyFile {key}\n")
                } else {
                    String::new()
                };
                let config = format!(
                    "include /etc/ldap/schema/core.schema\npidfile {d}/slapd.pid\n\
                     argsfile {d}/slapd.args\n{ssl}database ldif\ndirectory {d}/db\n\
                     suffix \"dc=example,dc=org\"\n"
                );
                let path = dir.join("slapd.conf");
                std::fs::write(&path, config).unwrap();
                let args = vec![
                    "-f".to_string(),
                    path.display().to_string(),
                    "-h".to_string(),
                    format!("ldap://127.0.0.1:{port}/"),
                    "-d".to_string(),
                    "0".to_string(),
                ];
                (binary, args, dir.join("server.log"))
            }
            other => panic!("no real server for {other}"),
        };
        let output = std::fs::File::create(dir.join("output.log")).unwrap();
        let child = std::process::Command::new(&binary)
            .args(&args)
            .stdout(output.try_clone().unwrap())
            .stderr(output)
            .spawn()
            .unwrap_or_else(|error| panic!("{binary} starts: {error}"));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "{binary} never listened on {port}: {}{}",
                std::fs::read_to_string(&log).unwrap_or_default(),
                std::fs::read_to_string(dir.join("output.log")).unwrap_or_default()
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        RealServer { child, port }
    }

    fn address(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }
}

impl Drop for RealServer {
    fn drop(&mut self) {
        // SIGTERM: dovecot's master stops its login and auth processes with it.
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

/// `protocol`'s STARTTLS against a real server: the upgrade, the handshake timed as `tls`,
/// the certificate verified against its CA; with another CA the same server is a `tls`
/// failure that names the certificate.
async fn upgrades_and_its_certificate_is_checked(protocol: &str) {
    let ca = TestCa::new(&format!("bastion test {protocol} CA"));
    let server = RealServer::start(protocol, &ca, true);
    let address = server.address();
    let result = run_single(&config(&tls_check(address, protocol, &ca.ca_file))).await;
    assert!(result.passing, "{protocol}: {result:?}");
    let response = &result.responses[0];
    let chain = response.tls.as_ref().unwrap().chain.as_ref().unwrap();
    assert!(chain.valid, "{protocol}: {chain:?}");
    assert!(
        response.timings.starttls > 0.0 && response.timings.tls > 0.0,
        "{protocol}: {:?}",
        response.timings
    );

    let stranger = TestCa::new("another CA");
    let result = run_single(&config(&tls_check(address, protocol, &stranger.ca_file))).await;
    assert!(!result.passing, "{protocol}: {result:?}");
    let chain = result.responses[0]
        .tls
        .as_ref()
        .unwrap()
        .chain
        .as_ref()
        .unwrap();
    assert!(!chain.valid, "{protocol}: {chain:?}");
    drop(server);
}

/// `protocol`'s STARTTLS against a real server that has no TLS configured: a `tls` error
/// whose message says the server refused STARTTLS and quotes what it answered.
async fn a_server_without_tls_refuses(protocol: &str, answer: &str) {
    let ca = TestCa::new(&format!("bastion test {protocol} CA"));
    let server = RealServer::start(protocol, &ca, false);
    let result = run_single(&config(&tls_check(server.address(), protocol, &ca.ca_file))).await;
    assert!(!result.passing, "{protocol}: {result:?}");
    let error = result.responses[0].error.as_ref().unwrap();
    assert_eq!(error.kind, ErrorKind::Tls, "{protocol}: {error:?}");
    assert!(
        error.message.contains("refused STARTTLS") && error.message.contains(answer),
        "{protocol}: {error:?}"
    );
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_imap_server_upgrades_and_its_certificate_is_checked() {
    upgrades_and_its_certificate_is_checked("imap").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_pop3_server_upgrades_and_its_certificate_is_checked() {
    upgrades_and_its_certificate_is_checked("pop3").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_ftp_server_upgrades_and_its_certificate_is_checked() {
    upgrades_and_its_certificate_is_checked("ftp").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_ldap_server_upgrades_and_its_certificate_is_checked() {
    upgrades_and_its_certificate_is_checked("ldap").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_servers_without_tls_refuse_starttls_and_the_error_says_how() {
    a_server_without_tls_refuses("pop3", "-ERR").await;
    a_server_without_tls_refuses("ftp", "530").await;
    a_server_without_tls_refuses("ldap", "resultCode").await;
}
