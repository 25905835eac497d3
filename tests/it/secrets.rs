//! Secrets never leak, through the real binary: the NATS token (read from a file), the basic
//! auth password and its bcrypt hash, and an HTTP check's Authorization header value must
//! appear in none of stderr, `/api/v1/checks`, `/metrics` or the answer to a failed reload,
//! and a refused NATS token is reported without its value.

use crate::common;

use common::nats::{free_port, NatsServer};
use common::process::{scratch_dir, Bastion};
use common::*;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

const NATS_TOKEN: &str = "nats-t0ken-SECRET-1";
const WEB_PASSWORD: &str = "web-pa55-SECRET-2";
const HEADER_VALUE: &str = "Bearer hdr-SECRET-3";
const WRONG_TOKEN: &str = "wrong-t0ken-SECRET-4";

/// A blocking request with basic auth; returns status and body.
fn request(port: u16, method: &str, path: &str, password: &str) -> (u16, String) {
    use base64::Engine;
    let credentials = base64::engine::general_purpose::STANDARD.encode(format!("prom:{password}"));
    let authorization = format!("Basic {credentials}");
    http_request_blocking(port, method, path, &[("authorization", &authorization)])
        .expect("an HTTP answer")
}

fn assert_no_secret(place: &str, text: &str, secrets: &[&str]) {
    for secret in secrets {
        assert!(
            !text.contains(secret),
            "{place} shows the secret `{secret}`:\n{text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_appear_in_no_log_api_metrics_or_error() {
    let server =
        NatsServer::start_with(&format!("authorization {{\n  token: \"{NATS_TOKEN}\"\n}}"));
    let dir = scratch_dir("secrets");
    let token_file = dir.join("nats-token");
    std::fs::write(&token_file, format!("{NATS_TOKEN}\n")).unwrap();
    let hash = bcrypt::hash(WEB_PASSWORD, 4).unwrap();
    // The target records the Authorization header it gets, to prove it was sent.
    let target = TcpListener::bind("127.0.0.2:0").await.unwrap();
    let target_address = target.local_addr().unwrap();
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    {
        let seen = Arc::clone(&seen);
        serve(target, move |mut request| {
            if let Some(value) = header(&request.head, "authorization") {
                seen.lock().unwrap().push(value.to_string());
            }
            async move { respond(&mut request.stream, "200 OK", &[], "ok").await }
        });
    }
    let listen = free_port();
    let config = |header_value: &str| {
        format!(
            r#"
            [agent]
            listen = "127.0.0.1:{listen}"
            [agent.web]
            basic_auth_users = {{ prom = "{hash}" }}
            [bus]
            kind = "nats"
            [bus.nats]
            url = "{url}"
            token_file = "{token_file}"
            [[checks]]
            name = "private"
            type = "http"
            interval = "1s"
            url = "http://{target_address}/"
            headers = {{ Authorization = "{header_value}" }}
            "#,
            url = server.url(),
            token_file = token_file.display(),
        )
    };
    let mut agent = Bastion::start("secrets", listen, &config(HEADER_VALUE), &["run"]);
    let secrets = [NATS_TOKEN, WEB_PASSWORD, hash.as_str(), "hdr-SECRET-3"];
    // Wait for a result of the check, read through the protected API.
    let deadline = Instant::now() + Duration::from_secs(60);
    let checks = loop {
        assert!(agent.alive(), "bastion exited:\n{}", agent.log());
        let answer = tokio::task::spawn_blocking(move || {
            std::net::TcpStream::connect(("127.0.0.1", listen))
                .ok()
                .map(|_| request(listen, "GET", "/api/v1/checks", WEB_PASSWORD))
        })
        .await
        .unwrap();
        if let Some((200, body)) = answer {
            let parsed: serde_json::Value = serde_json::from_str(&body).unwrap();
            if parsed[0]["latest"]["passing"] == true {
                break body;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no passing result:\n{}",
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(seen.lock().unwrap()[0], HEADER_VALUE, "the header was sent");
    let (status, metrics) =
        tokio::task::spawn_blocking(move || request(listen, "GET", "/metrics", WEB_PASSWORD))
            .await
            .unwrap();
    assert_eq!(status, 200);
    // A wrong password is refused without echoing anything.
    let (status, refused) =
        tokio::task::spawn_blocking(move || request(listen, "GET", "/metrics", "guess"))
            .await
            .unwrap();
    assert_eq!(status, 401);
    // A reload whose header value is invalid fails, and says so without the value.
    std::fs::write(agent.config_path(), config("Bearer hdr-SECRET-3\\u0001")).unwrap();
    let (status, reload) =
        tokio::task::spawn_blocking(move || request(listen, "POST", "/-/reload", WEB_PASSWORD))
            .await
            .unwrap();
    assert_eq!(status, 500, "{reload}");
    assert!(
        reload.contains("header `Authorization` is not valid"),
        "{reload}"
    );
    assert_no_secret("/api/v1/checks", &checks, &secrets);
    assert_no_secret("/metrics", &metrics, &secrets);
    assert_no_secret("the 401 answer", &refused, &secrets);
    assert_no_secret("the failed reload", &reload, &secrets);
    agent.terminate();
    let log = agent.log();
    assert!(log.contains("config reload failed"), "{log}");
    assert_no_secret("stderr", &log, &secrets);

    // A refused token is reported as refused, without its value.
    std::fs::write(&token_file, WRONG_TOKEN).unwrap();
    let listen = free_port();
    let wrong = config(HEADER_VALUE).replace(
        &format!("listen = \"127.0.0.1:{}\"", agent.listen),
        &format!("listen = \"127.0.0.1:{listen}\""),
    );
    let mut refused_agent = Bastion::start("secrets-wrong", listen, &wrong, &["run"]);
    let status = refused_agent
        .wait_exit(Duration::from_secs(60))
        .expect("a refused token ends the start-up");
    assert!(!status.success());
    let log = refused_agent.log();
    assert!(log.to_lowercase().contains("authorization"), "{log}");
    assert_no_secret(
        "stderr of the refused start",
        &log,
        &[WRONG_TOKEN, NATS_TOKEN, "SECRET"],
    );
}
