//! One TLS settings shape for http, tcp, tls and grpc checks: every form of the TLS keys that
//! loaded before still loads and compiles to the same probe as its `[checks.tls]` spelling;
//! client certificates are presented to a server that requires one (and refused without one,
//! or with one it does not trust, on TLS 1.3 and 1.2, for every type); keys that do not fit
//! together are config errors; and `min_version`, `max_version` and `server_name` change the
//! outcome against real servers.

use crate::common;

use bastion_agent::compiled::CompiledCheck;
use bastion_agent::messages::Response;
use bastion_agent::model::ErrorKind;
use common::tls_server::{mtls_config, plain_config, write_identity, TlsServer};
use common::*;
use std::net::SocketAddr;
use std::path::Path;

fn days(n: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc() + time::Duration::days(n)
}

/// The compiled probe of the one check in `body` (keys after name, type and interval).
fn compiled(check_type: &str, body: &str) -> String {
    let toml =
        format!("[[checks]]\nname = \"c\"\ntype = \"{check_type}\"\ninterval = \"5s\"\n{body}\n");
    let config = config(&toml);
    let check = CompiledCheck::compile(&config.checks[0]).expect("compiles");
    format!("{:?}", check.probe)
}

#[test]
fn every_tls_form_that_loaded_before_still_loads_and_means_the_same() {
    let ca = TestCa::new("forms CA");
    let ca = ca.ca_file.display();
    // (type, the older spelling, the same in [checks.tls]); the address and URL come first.
    let forms = [
        (
            "http",
            "tls = { insecure_skip_verify = true }".to_string(),
            "[checks.tls]\ninsecure_skip_verify = true".to_string(),
        ),
        (
            "http",
            format!("tls = {{ ca_file = \"{ca}\" }}"),
            format!("[checks.tls]\nca_file = \"{ca}\""),
        ),
        ("http", String::new(), "tls = {}".to_string()),
        ("tcp", "tls = true".to_string(), "tls = {}".to_string()),
        ("tcp", "tls = false".to_string(), String::new()),
        (
            "tcp",
            format!("tls = true\nserver_name = \"db.test\"\nca_file = \"{ca}\""),
            format!("tls = {{ server_name = \"db.test\", ca_file = \"{ca}\" }}"),
        ),
        (
            "tcp",
            "tls = true\ninsecure_skip_verify = true".to_string(),
            "[checks.tls]\ninsecure_skip_verify = true".to_string(),
        ),
        ("grpc", "tls = true".to_string(), "[checks.tls]".to_string()),
        (
            "grpc",
            format!("tls = true\nserver_name = \"grpc.test\"\nca_file = \"{ca}\""),
            format!("[checks.tls]\nserver_name = \"grpc.test\"\nca_file = \"{ca}\""),
        ),
        (
            "grpc",
            "tls = true\ninsecure_skip_verify = true".to_string(),
            "tls = { insecure_skip_verify = true }".to_string(),
        ),
        (
            "tls",
            format!("server_name = \"svc.test\"\nca_file = \"{ca}\""),
            format!("tls = {{ server_name = \"svc.test\", ca_file = \"{ca}\" }}"),
        ),
        ("tls", String::new(), "[checks.tls]".to_string()),
    ];
    for (check_type, old, new) in forms {
        let target = match check_type {
            "http" => "url = \"https://svc.test:8443/\"",
            _ => "address = \"svc.test:8443\"",
        };
        let old_probe = compiled(check_type, &format!("{target}\n{old}"));
        let new_probe = compiled(check_type, &format!("{target}\n{new}"));
        assert_eq!(old_probe, new_probe, "{check_type}: `{old}` and `{new}`");
    }
}

#[test]
fn tls_keys_that_do_not_fit_together_are_refused_at_load() {
    let ca = TestCa::new("refusals CA");
    let client_ca = TestCa::new("client CA");
    let (cert_file, key_file) = write_identity(&client_ca.leaf(&["probe"], days(30)));
    let (_, other_key) = write_identity(&client_ca.leaf(&["other"], days(30)));
    let (ca, cert, key, other_key) = (
        ca.ca_file.display().to_string(),
        cert_file.display().to_string(),
        key_file.display().to_string(),
        other_key.display().to_string(),
    );
    let base = "[[checks]]\nname = \"c\"\ninterval = \"5s\"\n";
    let cases = [
        (
            format!("type = \"tcp\"\naddress = \"db:1\"\nca_file = \"{ca}\"\ntls = {{ ca_file = \"{ca}\" }}\n"),
            "check `c`: ca_file is set twice, at the top of the check and as tls.ca_file; keep tls.ca_file".to_string(),
        ),
        (
            format!("type = \"http\"\nurl = \"https://x/\"\ntls = {{ cert_file = \"{cert}\" }}\n"),
            "check `c`: tls.cert_file and tls.key_file go together".to_string(),
        ),
        (
            format!("type = \"grpc\"\naddress = \"g:1\"\ntls = {{ cert_file = \"{cert}\", key_file = \"/no/such/key.pem\" }}\n"),
            "check `c`: tls.key_file /no/such/key.pem cannot be read".to_string(),
        ),
        (
            format!("type = \"tls\"\naddress = \"t:1\"\ntls = {{ cert_file = \"{cert}\", key_file = \"{other_key}\" }}\n"),
            format!("check `c`: tls.key_file {other_key} does not belong to the certificate in tls.cert_file {cert}"),
        ),
        (
            format!("type = \"tls\"\naddress = \"t:1\"\ntls = {{ cert_file = \"{key}\", key_file = \"{key}\" }}\n"),
            format!("check `c`: tls.cert_file {key} holds no PEM certificates"),
        ),
        (
            "type = \"http\"\nurl = \"https://x/\"\ntls = { min_version = \"TLS13\", max_version = \"TLS12\" }\n".to_string(),
            "check `c`: tls.min_version is newer than tls.max_version".to_string(),
        ),
        (
            "type = \"http\"\nurl = \"https://x/\"\ntls = { min_version = \"TLS10\" }\n".to_string(),
            "unknown variant `TLS10`".to_string(),
        ),
        (
            "type = \"tcp\"\naddress = \"db:1\"\ntls = { server_name = \"not a name\" }\n".to_string(),
            "check `c`: tls.server_name `not a name` is not a valid TLS server name".to_string(),
        ),
    ];
    for (rest, expected) in cases {
        let error = config_error(&format!("{base}{rest}"));
        assert!(error.contains(&expected), "{error}\n !~ {expected}");
    }
}

/// The four TLS-speaking checks against one server at `address` (name svc.test), each with
/// `client` (`cert_file` and `key_file` keys, or nothing). tcp has a connect-only twin: it
/// reads nothing, so it must wait for a TLS 1.3 server's verdict on the certificate.
fn four_checks(address: SocketAddr, ca_file: &Path, client: &str) -> String {
    let ca = ca_file.display();
    let tls = format!("tls = {{ server_name = \"svc.test\", ca_file = \"{ca}\"{client} }}");
    let port = address.port();
    let ip = address.ip();
    format!(
        r#"
        [[checks]]
        name = "http"
        type = "http"
        interval = "5s"
        timeout = "3s"
        url = "https://svc.test:{port}/"
        instances = ["{ip}"]
        tls = {{ ca_file = "{ca}"{client} }}
        [[checks]]
        name = "tcp"
        type = "tcp"
        interval = "5s"
        timeout = "3s"
        address = "{address}"
        {tls}
        [[checks.steps]]
        expect = "hello"
        [[checks]]
        name = "tcp-connect"
        type = "tcp"
        interval = "5s"
        timeout = "3s"
        address = "{address}"
        {tls}
        [[checks]]
        name = "tls"
        type = "tls"
        interval = "5s"
        timeout = "3s"
        address = "{address}"
        {tls}
        [[checks]]
        name = "grpc"
        type = "grpc"
        interval = "5s"
        timeout = "3s"
        address = "{address}"
        {tls}
        "#
    )
}

const FOUR: [&str; 5] = ["http", "tcp", "tcp-connect", "tls", "grpc"];

async fn responses(toml: &str) -> Vec<(String, Response)> {
    let config = config(toml);
    let (dispatcher, _) = dispatcher(&config);
    let mut all = Vec::new();
    for name in FOUR {
        let result = run_check(&dispatcher, &config, name).await;
        assert_eq!(result.responses.len(), 1, "{name}: {result:?}");
        all.push((name.to_string(), result.responses[0].clone()));
    }
    all
}

async fn client_certificates_on(versions: &[&'static rustls::SupportedProtocolVersion]) {
    let server_ca = TestCa::new("server CA");
    let identity = server_ca.leaf(&["svc.test"], days(30));
    let client_ca = TestCa::new("client CA");
    let (cert, key) = write_identity(&client_ca.leaf(&["probe.client"], days(30)));
    let stranger_ca = TestCa::new("stranger CA");
    let (stranger_cert, stranger_key) =
        write_identity(&stranger_ca.leaf(&["probe.client"], days(30)));
    let server = TlsServer::start(mtls_config(&identity, &client_ca, versions)).await;
    let with = |cert: &Path, key: &Path| {
        format!(
            ", cert_file = \"{}\", key_file = \"{}\"",
            cert.display(),
            key.display()
        )
    };
    // With the client certificate the server trusts, every type passes.
    for (name, response) in responses(&four_checks(
        server.address,
        &server_ca.ca_file,
        &with(&cert, &key),
    ))
    .await
    {
        assert!(
            response.error.is_none(),
            "{versions:?} {name}: {response:?}"
        );
        assert!(response.passing, "{versions:?} {name}: {response:?}");
    }
    // Without one, and with one from a CA it does not trust, the server refuses every type.
    for client in [String::new(), with(&stranger_cert, &stranger_key)] {
        for (name, response) in
            responses(&four_checks(server.address, &server_ca.ca_file, &client)).await
        {
            let error = response
                .error
                .as_ref()
                .unwrap_or_else(|| panic!("{versions:?} {name} `{client}` passed: {response:?}"));
            assert_eq!(
                error.kind,
                ErrorKind::Tls,
                "{versions:?} {name} `{client}`: {error:?}"
            );
            assert!(!response.passing);
        }
    }
}

#[tokio::test]
async fn client_certificates_are_presented_by_every_type_on_tls13() {
    client_certificates_on(&[&rustls::version::TLS13]).await;
}

#[tokio::test]
async fn client_certificates_are_presented_by_every_type_on_tls12() {
    client_certificates_on(&[&rustls::version::TLS12]).await;
}

/// Over IPv6 too: the four types with a client certificate against a server on [::1].
#[tokio::test]
async fn client_certificates_work_over_ipv6() {
    let server_ca = TestCa::new("server CA");
    let identity = server_ca.leaf(&["svc.test"], days(30));
    let client_ca = TestCa::new("client CA");
    let (cert, key) = write_identity(&client_ca.leaf(&["probe.client"], days(30)));
    let server = TlsServer::start_on(
        "::1",
        mtls_config(&identity, &client_ca, &[&rustls::version::TLS13]),
    )
    .await;
    let client = format!(
        ", cert_file = \"{}\", key_file = \"{}\"",
        cert.display(),
        key.display()
    );
    for (name, response) in
        responses(&four_checks(server.address, &server_ca.ca_file, &client)).await
    {
        assert!(response.passing, "{name}: {response:?}");
        assert!(
            response.target.starts_with("[::1]:"),
            "{name}: {}",
            response.target
        );
    }
}

/// One http check of `url` on `instance` with a `[checks.tls]` of `tls`.
async fn http_once(url: &str, instance: &str, tls: &str) -> Response {
    let config = config(&format!(
        "[[checks]]\nname = \"h\"\ntype = \"http\"\ninterval = \"5s\"\ntimeout = \"3s\"\nurl = \"{url}\"\ninstances = [\"{instance}\"]\ntls = {{ {tls} }}\n"
    ));
    run_single(&config).await.responses.remove(0)
}

#[tokio::test]
async fn tls_versions_and_the_server_name_change_the_outcome() {
    let ca = TestCa::new("versions CA");
    let identity = ca.leaf(&["svc.test"], days(30));
    let ca_key = format!("ca_file = \"{}\"", ca.ca_file.display());
    let tls12 = TlsServer::start(plain_config(&identity, &[&rustls::version::TLS12])).await;
    let tls13 = TlsServer::start(plain_config(&identity, &[&rustls::version::TLS13])).await;
    let url = |server: &TlsServer| format!("https://svc.test:{}/", server.address.port());

    let response = http_once(&url(&tls12), "127.0.0.1", &ca_key).await;
    assert_eq!(
        response.tls.as_ref().map(|tls| tls.version.as_str()),
        Some("TLSv1.2")
    );
    assert!(response.passing, "{response:?}");
    let response = http_once(
        &url(&tls12),
        "127.0.0.1",
        &format!("{ca_key}, min_version = \"TLS13\""),
    )
    .await;
    assert_eq!(
        response.error.as_ref().map(|error| error.kind),
        Some(ErrorKind::Tls),
        "{response:?}"
    );

    let response = http_once(
        &url(&tls13),
        "127.0.0.1",
        &format!("{ca_key}, max_version = \"TLS12\""),
    )
    .await;
    assert_eq!(
        response.error.as_ref().map(|error| error.kind),
        Some(ErrorKind::Tls),
        "{response:?}"
    );
    let response = http_once(
        &url(&tls13),
        "127.0.0.1",
        &format!("{ca_key}, max_version = \"TLS13\""),
    )
    .await;
    assert_eq!(
        response.tls.as_ref().map(|tls| tls.version.as_str()),
        Some("TLSv1.3")
    );

    // By IP the certificate's name does not match; tls.server_name presents and verifies
    // svc.test instead, without touching the URL.
    let by_ip = format!("https://127.0.0.1:{}/", tls13.address.port());
    let response = http_once(&by_ip, "127.0.0.1", &ca_key).await;
    assert_eq!(
        response.error.as_ref().map(|error| error.kind),
        Some(ErrorKind::Tls),
        "{response:?}"
    );
    let response = http_once(
        &by_ip,
        "127.0.0.1",
        &format!("{ca_key}, server_name = \"svc.test\""),
    )
    .await;
    assert!(response.passing, "{response:?}");
}

/// A client certificate replaced on disk is presented by the very next probe: the cached
/// configuration is built again when its files change. Here the trusted identity is replaced
/// by one the server does not trust, so the next probe is refused.
#[tokio::test]
async fn a_replaced_client_certificate_is_used_by_the_next_probe() {
    let server_ca = TestCa::new("server CA");
    let identity = server_ca.leaf(&["svc.test"], days(30));
    let client_ca = TestCa::new("client CA");
    let (cert, key) = write_identity(&client_ca.leaf(&["probe.client"], days(30)));
    let stranger_ca = TestCa::new("stranger CA");
    let (stranger_cert, stranger_key) =
        write_identity(&stranger_ca.leaf(&["probe.client"], days(30)));
    let server = TlsServer::start(mtls_config(
        &identity,
        &client_ca,
        &[&rustls::version::TLS12],
    ))
    .await;
    let config = config(&format!(
        "[[checks]]\nname = \"h\"\ntype = \"http\"\ninterval = \"5s\"\ntimeout = \"3s\"\nurl = \"https://svc.test:{}/\"\ninstances = [\"127.0.0.1\"]\ntls = {{ ca_file = \"{}\", cert_file = \"{}\", key_file = \"{}\" }}\n",
        server.address.port(),
        server_ca.ca_file.display(),
        cert.display(),
        key.display()
    ));
    let (dispatcher, _) = dispatcher(&config);
    assert!(run_check(&dispatcher, &config, "h").await.passing);
    std::fs::copy(&stranger_cert, &cert).unwrap();
    std::fs::copy(&stranger_key, &key).unwrap();
    let result = run_check(&dispatcher, &config, "h").await;
    let error = result.responses[0].error.as_ref().expect("refused");
    assert_eq!(error.kind, ErrorKind::Tls, "{error:?}");
}
