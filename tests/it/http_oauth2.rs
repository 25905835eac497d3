//! OAuth2 client credentials against a local token endpoint (the scriptable receiver) whose
//! tokens expire within seconds: the token is fetched once, sent as a Bearer token, reused by
//! later runs of the same compiled check, and fetched again shortly before it expires; its
//! fetch is in no phase and not in the total. A token endpoint that refuses, answers garbage,
//! hangs or is not there is an `auth` error that quotes neither the secret nor the token.

use crate::common;

use bastion_agent::compiled::CompiledCheck;
use bastion_agent::config::Config;
use bastion_agent::messages::Response;
use bastion_agent::model::ErrorKind;
use bastion_agent::runner::dispatcher::{Dispatcher, RunOrder};
use common::receiver::{Receiver, Reply};
use common::*;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

const CLIENT_SECRET: &str = "cl1ent-SECRET-6";

fn token_reply(token: &str, expires_in: u64) -> Reply {
    Reply::new(
        200,
        &format!(r#"{{"access_token":"{token}","token_type":"Bearer","expires_in":{expires_in}}}"#),
    )
    .header("content-type", "application/json")
}

fn oauth2_config(target: &str, token_url: &str, timeout: &str) -> Config {
    let secret_file = temp_path("client-secret", "txt");
    std::fs::write(&secret_file, format!("{CLIENT_SECRET}\n")).unwrap();
    config(&format!(
        r#"
        [[checks]]
        name = "api"
        type = "http"
        interval = "10s"
        timeout = "{timeout}"
        url = "{target}/health"
        oauth2 = {{ token_url = "{token_url}", client_id = "probe", client_secret_file = "{}", scopes = ["health", "read"], audience = "api.test" }}
        "#,
        secret_file.display()
    ))
}

/// Runs the same compiled check again (a runner keeps one per definition): its token cache is
/// that of the check.
async fn run_compiled(dispatcher: &Dispatcher, check: &Arc<CompiledCheck>) -> Response {
    let order = RunOrder {
        check: Arc::clone(check),
        run_id: 1,
        scheduled_at: SystemTime::now(),
        discovered: None,
    };
    let mut result = tokio::time::timeout(PATIENCE, dispatcher.run(order))
        .await
        .expect("a run ends");
    result.responses.remove(0)
}

fn bearer_seen(target: &Receiver) -> Vec<String> {
    target
        .received()
        .iter()
        .map(|request| {
            request
                .headers
                .get("authorization")
                .cloned()
                .unwrap_or_default()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_is_fetched_once_reused_and_refreshed_before_it_expires() {
    let endpoint = Arc::new(Receiver::start(token_reply("tok-later", 2)));
    endpoint.then(vec![token_reply("tok-first", 2)]);
    let target = Receiver::start(Reply::new(200, "ok"));
    let config = oauth2_config(
        &target.url(),
        &format!("{}/oauth/token", endpoint.url()),
        "1s",
    );
    let (dispatcher, _) = dispatcher(&config);
    let check = Arc::new(CompiledCheck::compile(&config.checks[0]).unwrap());

    for _ in 0..3 {
        let response = run_compiled(&dispatcher, &check).await;
        assert!(response.passing, "{response:?}");
    }
    assert_eq!(endpoint.received().len(), 1, "one token for three runs");
    assert_eq!(bearer_seen(&target), vec!["Bearer tok-first"; 3]);
    let request = &endpoint.received()[0];
    assert_eq!(
        (request.method.as_str(), request.path.as_str()),
        ("POST", "/oauth/token")
    );
    assert_eq!(
        request.headers.get("content-type").map(String::as_str),
        Some("application/x-www-form-urlencoded")
    );
    use base64::Engine;
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("probe:{CLIENT_SECRET}"));
    assert_eq!(
        request.headers.get("authorization"),
        Some(&format!("Basic {basic}"))
    );
    assert_eq!(
        String::from_utf8_lossy(&request.body),
        "grant_type=client_credentials&scope=health%20read&audience=api.test"
    );

    // The token lives 2s and a probe may take 1s (the timeout): past 1s it is not sent again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let response = run_compiled(&dispatcher, &check).await;
    assert!(response.passing, "{response:?}");
    assert_eq!(endpoint.received().len(), 2, "refreshed before it expired");
    assert_eq!(
        bearer_seen(&target).last().map(String::as_str),
        Some("Bearer tok-later")
    );

    // A slow token endpoint makes the run slower, never the probe's phases or total.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    endpoint.hold();
    let releaser = {
        let endpoint = Arc::clone(&endpoint);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            endpoint.release();
        })
    };
    let started = Instant::now();
    let response = run_compiled(&dispatcher, &check).await;
    releaser.await.unwrap();
    let took = started.elapsed();
    assert!(response.passing, "{response:?}");
    assert_eq!(endpoint.received().len(), 3);
    assert!(took >= Duration::from_millis(300), "{took:?}");
    let t = &response.timings;
    assert!(t.total < 0.2, "the token fetch is not in the total: {t:?}");
    let sum = t.resolve + t.connect + t.tls + t.processing + t.transfer;
    assert!((sum - t.total).abs() < 1e-6, "{t:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_endpoint_that_fails_is_an_auth_error() {
    let target = Receiver::start(Reply::new(200, "ok"));
    let huge = format!(
        r#"{{"access_token":"tok-huge","padding":"{}"}}"#,
        "x".repeat(100_000)
    );
    let cases: [(Reply, &str); 6] = [
        (
            Reply::new(200, &huge),
            "the answer is longer than 65536 bytes",
        ),
        (
            Reply::new(302, "").header("location", "https://elsewhere.test/token"),
            "answered 302",
        ),
        (
            Reply::new(
                401,
                r#"{"error":"invalid_client","error_description":"secret cl1ent-SECRET-6 is wrong"}"#,
            ),
            "answered 401 (invalid_client)",
        ),
        (
            Reply::new(200, "<html>tok-garbage</html>"),
            "its answer is not a JSON token response",
        ),
        (
            Reply::new(200, r#"{"access_token":"tok-mac","token_type":"mac"}"#),
            "only Bearer tokens",
        ),
        (
            Reply::new(200, r#"{"token_type":"Bearer"}"#),
            "its answer has no access_token",
        ),
    ];
    for (reply, expected) in cases {
        let endpoint = Receiver::start(reply);
        let config = oauth2_config(&target.url(), &format!("{}/token", endpoint.url()), "2s");
        let response = run_single(&config).await.responses.remove(0);
        let error = response.error.as_ref().expect("an error");
        assert_eq!(error.kind, ErrorKind::Auth, "{error:?}");
        assert!(
            error.message.contains(expected),
            "{expected}: {}",
            error.message
        );
        let json = serde_json::to_string(&response).unwrap();
        for secret in [CLIENT_SECRET, "tok-garbage", "tok-mac", "tok-huge"] {
            assert!(!json.contains(secret), "{json}");
        }
        assert!(response.http.is_none());
    }
    assert!(
        target.received().is_empty(),
        "no probe went out without a token"
    );

    // A token endpoint that never answers: the fetch gives up at half the timeout.
    let endpoint = Receiver::start(token_reply("tok-never", 60));
    endpoint.hold();
    let config = oauth2_config(&target.url(), &format!("{}/token", endpoint.url()), "1s");
    let started = Instant::now();
    let response = run_single(&config).await.responses.remove(0);
    let error = response.error.expect("an error");
    assert_eq!(error.kind, ErrorKind::Auth, "{error:?}");
    assert!(
        error.message.contains("gave no token in time"),
        "{}",
        error.message
    );
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
    endpoint.release();

    // And one that is not there at all.
    let gone = refused_address().await;
    let config = oauth2_config(&target.url(), &format!("http://{gone}/token"), "1s");
    let response = run_single(&config).await.responses.remove(0);
    let error = response.error.expect("an error");
    assert_eq!(error.kind, ErrorKind::Auth, "{error:?}");
    assert!(
        error.message.contains(&format!("connect to {gone}")),
        "{}",
        error.message
    );
    assert!(target.received().is_empty());
}

#[test]
fn oauth2_keys_are_checked_at_load() {
    let base = "[[checks]]\nname = \"h\"\ntype = \"http\"\ninterval = \"5s\"\nurl = \"https://svc.test/\"\n";
    assert_config_errors(
        base,
        &[
            (
                "oauth2 = { token_url = \"https://auth.test/token\", client_id = \"p\", client_secret_file = \"/no/such/secret\" }\n",
                "check `h`: oauth2.client_secret_file: cannot read /no/such/secret",
            ),
            (
                "oauth2 = { token_url = \"ftp://auth.test/token\", client_id = \"p\", client_secret_file = \"/etc/hostname\" }\n",
                "check `h`: oauth2.token_url `ftp://auth.test/token` is not valid",
            ),
            (
                "oauth2 = { token_url = \"https://auth.test/token\", client_id = \"p\", client_secret_file = \"/etc/hostname\" }\nheaders = { Authorization = \"Bearer x\" }\n",
                "check `h`: headers.Authorization and oauth2 both set the Authorization header; keep one",
            ),
        ],
    );
}
