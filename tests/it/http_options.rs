//! The blackbox_exporter options of an http check, each against a real server where it changes
//! the outcome: `valid_status_codes`, `valid_http_versions`, `fail_if_ssl` and
//! `fail_if_not_ssl` (judged on the final response, after redirects) and `enable_http2`.

use crate::common;

use bastion_agent::messages::Response;
use bastion_agent::model::ErrorKind;
use common::tls_server::{plain_config, TlsServer};
use common::*;
use std::net::SocketAddr;
use tokio::net::TcpListener;

/// One http check of `url` with `keys`, run once.
async fn probe(url: &str, keys: &str) -> Response {
    let config = config(&format!(
        "[[checks]]\nname = \"h\"\ntype = \"http\"\ninterval = \"5s\"\ntimeout = \"3s\"\nurl = \"{url}\"\n{keys}\n"
    ));
    run_single(&config).await.responses.remove(0)
}

fn http_error(response: &Response) -> &str {
    match &response.error {
        Some(error) if error.kind == ErrorKind::Http => &error.message,
        other => panic!("expected an http error, got {other:?}"),
    }
}

async fn fixed(status: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.2:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    serve_fixed(listener, status, &[], "body");
    address
}

async fn tls_server() -> (TlsServer, String) {
    let ca = TestCa::new("options CA");
    let identity = ca.leaf(
        &["svc.test"],
        time::OffsetDateTime::now_utc() + time::Duration::days(30),
    );
    let server = TlsServer::start(plain_config(&identity, &[&rustls::version::TLS13])).await;
    let keys = format!(
        "instances = [\"127.0.0.1\"]\ntls = {{ ca_file = \"{}\" }}",
        ca.ca_file.display()
    );
    (server, keys)
}

#[tokio::test]
async fn valid_status_codes_decide_which_statuses_pass() {
    let not_found = fixed("404 Not Found").await;
    let ok = fixed("200 OK").await;
    let url = |address: SocketAddr| format!("http://{address}/");
    // By default a 404 fails on its verdict, without an error.
    let response = probe(&url(not_found), "").await;
    assert!(
        !response.passing && response.error.is_none(),
        "{response:?}"
    );
    // Listed, it passes.
    let response = probe(&url(not_found), "valid_status_codes = [404, 410]").await;
    assert!(response.passing, "{response:?}");
    // A status outside the list is an http error, and the response is still reported.
    let response = probe(&url(ok), "valid_status_codes = [204]").await;
    assert_eq!(
        http_error(&response),
        "the status 200 is not one of valid_status_codes [204]"
    );
    assert_eq!(response.http.as_ref().map(|http| http.status), Some(200));
    // ... whatever the assertions say.
    let response = probe(
        &url(ok),
        &format!(
            "valid_status_codes = [204]\n{}",
            assertion_toml("code", "equal", "200")
        ),
    )
    .await;
    assert!(
        !response.passing && response.assertions[0].passing,
        "{response:?}"
    );
}

#[tokio::test]
async fn valid_http_versions_and_enable_http2_choose_the_protocol() {
    let (server, keys) = tls_server().await;
    let url = format!("https://svc.test:{}/", server.address.port());
    let response = probe(&url, &keys).await;
    assert_eq!(
        response.http.as_ref().map(|http| http.version.as_str()),
        Some("HTTP/2")
    );
    let response = probe(&url, &format!("{keys}\nenable_http2 = false")).await;
    assert!(response.passing, "{response:?}");
    assert_eq!(
        response.http.as_ref().map(|http| http.version.as_str()),
        Some("HTTP/1.1")
    );
    assert_eq!(
        response.tls.as_ref().and_then(|tls| tls.alpn.as_deref()),
        Some("http/1.1")
    );
    let response = probe(
        &url,
        &format!("{keys}\nenable_http2 = false\nvalid_http_versions = [\"HTTP/2\", \"HTTP/1.0\"]"),
    )
    .await;
    assert_eq!(
        http_error(&response),
        "the response came over HTTP/1.1, not one of valid_http_versions [\"HTTP/2\", \"HTTP/1.0\"]"
    );
    let response = probe(
        &url,
        &format!("{keys}\nvalid_http_versions = [\"HTTP/2.0\"]"),
    )
    .await;
    assert!(response.passing, "{response:?}");
}

#[tokio::test]
async fn fail_if_ssl_and_fail_if_not_ssl_judge_the_final_response() {
    let (server, keys) = tls_server().await;
    let https = format!("https://svc.test:{}/", server.address.port());
    let response = probe(&https, &format!("{keys}\nfail_if_ssl = true")).await;
    assert_eq!(
        http_error(&response),
        "the final response came over TLS (fail_if_ssl)"
    );
    let response = probe(&https, &format!("{keys}\nfail_if_not_ssl = true")).await;
    assert!(response.passing, "{response:?}");

    let plain = fixed("200 OK").await;
    let response = probe(&format!("http://{plain}/"), "fail_if_not_ssl = true").await;
    assert_eq!(
        http_error(&response),
        "the final response did not come over TLS (fail_if_not_ssl)"
    );

    // A plain URL that redirects to https: judged after the redirect.
    let listener = TcpListener::bind("127.0.0.2:0").await.unwrap();
    let redirecting = listener.local_addr().unwrap();
    let location = format!("https://127.0.0.1:{}/", server.address.port());
    serve(listener, move |mut request| {
        let location = location.clone();
        async move {
            respond(
                &mut request.stream,
                "301 Moved Permanently",
                &[("location", &location)],
                "",
            )
            .await
        }
    });
    let keys =
        "follow_redirects = true\nfail_if_not_ssl = true\ntls = { insecure_skip_verify = true }";
    let response = probe(&format!("http://{redirecting}/"), keys).await;
    assert!(response.passing, "{response:?}");
    assert_eq!(response.http.as_ref().map(|http| http.redirects), Some(1));
    let response = probe(
        &format!("http://{redirecting}/"),
        "follow_redirects = true\nfail_if_ssl = true\ntls = { insecure_skip_verify = true }",
    )
    .await;
    assert_eq!(
        http_error(&response),
        "the final response came over TLS (fail_if_ssl)"
    );
}

#[test]
fn option_keys_are_checked_at_load() {
    let base = "[[checks]]\nname = \"h\"\ntype = \"http\"\ninterval = \"5s\"\nurl = \"https://svc.test/\"\n";
    assert_config_errors(
        base,
        &[
            (
                "valid_status_codes = [200, 999]\n",
                "check `h`: valid_status_codes: 999 is not a status code",
            ),
            (
                "valid_http_versions = [\"HTTP/3\"]\n",
                "check `h`: valid_http_versions: `HTTP/3` is not HTTP/1.0, HTTP/1.1 or HTTP/2",
            ),
            (
                "fail_if_ssl = true\nfail_if_not_ssl = true\n",
                "check `h`: fail_if_ssl and fail_if_not_ssl are both set",
            ),
            (
                "enable_http2 = false\nvalid_http_versions = [\"HTTP/2\"]\n",
                "check `h`: valid_http_versions lists only HTTP/2, but enable_http2 is false",
            ),
        ],
    );
}
