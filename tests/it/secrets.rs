//! Secrets never leak, through the real binary: the NATS token (read from a file), the basic
//! auth password and its bcrypt hash, and an HTTP check's Authorization header value must
//! appear in none of stderr, `/api/v1/checks`, `/metrics` or the answer to a failed reload,
//! and a refused NATS token is reported without its value. An HTTP check's secrets read from
//! files (headers, body, bearer token, basic auth password, OAuth2 client secret and token)
//! reach the target and nothing else, even when the target echoes them back.

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

const BEARER: &str = "bearer-SECRET-7";
const API_KEY: &str = "apikey-SECRET-8";
const BODY: &str = "body-SECRET-9";
const BASIC_PASSWORD: &str = "basic-SECRET-10";
const OAUTH_SECRET: &str = "oauth-client-SECRET-11";
const OAUTH_TOKEN: &str = "oauth-tok-SECRET-12";
const ROTATED: &str = "bearer-rotated-SECRET-13";

/// A target that echoes what it got, secrets included, in its body and in `x-echo`: the
/// agent must keep them out of the results it shows anyway. Records each request head.
async fn echoing_target() -> (std::net::SocketAddr, Arc<Mutex<Vec<String>>>) {
    use tokio::io::AsyncReadExt;
    let listener = TcpListener::bind("127.0.0.2:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let heads = Arc::clone(&seen);
    serve(listener, move |mut request| {
        let heads = Arc::clone(&heads);
        async move {
            let length: usize = header(&request.head, "content-length")
                .and_then(|length| length.parse().ok())
                .unwrap_or(0);
            let mut body = vec![0u8; length];
            let _ = request.stream.read_exact(&mut body).await;
            let body = String::from_utf8_lossy(&body).into_owned();
            let echo = header(&request.head, "authorization")
                .unwrap_or("")
                .to_string();
            heads
                .lock()
                .unwrap()
                .push(format!("{}{body}", request.head));
            let answer = format!("you sent:\n{}{body}", request.head);
            respond(&mut request.stream, "200 OK", &[("x-echo", &echo)], &answer).await;
        }
    });
    (address, seen)
}

/// Secrets read from files (headers_from_files, body_file, bearer_token_file, basic_auth, an
/// OAuth2 client secret and the token it gets) reach the target, appear in no log line, API
/// answer, metric or reload answer, even when the target echoes them back; a reload reads a
/// changed file again, and one that cannot read a file is refused, naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_from_files_reach_the_target_and_appear_nowhere_else() {
    let dir = scratch_dir("file-secrets");
    let write = |name: &str, content: &str| {
        let path = dir.join(name);
        std::fs::write(&path, content).unwrap();
        path
    };
    let token_file = write("token", &format!("{BEARER}\n"));
    let key_file = write("api-key", &format!("{API_KEY}\n"));
    let body_file = write("body.json", &format!("{{\"probe\":\"{BODY}\"}}"));
    let password_file = write("password", BASIC_PASSWORD);
    let client_secret_file = write("client-secret", OAUTH_SECRET);
    let (target, heads) = echoing_target().await;
    let token_endpoint = common::receiver::Receiver::start(
        common::receiver::Reply::new(
            200,
            &format!(
                r#"{{"access_token":"{OAUTH_TOKEN}","token_type":"Bearer","expires_in":3600}}"#
            ),
        )
        .header("content-type", "application/json"),
    );
    let listen = free_port();
    let config = format!(
        r#"
        [agent]
        listen = "127.0.0.1:{listen}"
        [[checks]]
        name = "files"
        type = "http"
        interval = "1s"
        method = "POST"
        url = "http://{target}/files"
        headers = {{ Content-Type = "application/json" }}
        headers_from_files = {{ X-Api-Key = "{key_file}" }}
        bearer_token_file = "{token_file}"
        body_file = "{body_file}"
        [[checks]]
        name = "basic"
        type = "http"
        interval = "1s"
        url = "http://{target}/basic"
        basic_auth = {{ username = "probe", password_file = "{password_file}" }}
        [[checks]]
        name = "oauth"
        type = "http"
        interval = "1s"
        url = "http://{target}/oauth"
        oauth2 = {{ token_url = "{token_url}/token", client_id = "probe", client_secret_file = "{client_secret_file}" }}
        "#,
        key_file = key_file.display(),
        token_file = token_file.display(),
        body_file = body_file.display(),
        password_file = password_file.display(),
        client_secret_file = client_secret_file.display(),
        token_url = token_endpoint.url(),
    );
    let mut agent = Bastion::start("file-secrets", listen, &config, &["run"]);
    let api = std::net::SocketAddr::from(([127, 0, 0, 1], listen));
    let mut answers: Vec<(String, String)> = Vec::new();
    let checks = loop {
        assert!(agent.alive(), "bastion exited:\n{}", agent.log());
        if std::net::TcpStream::connect(api).is_ok() {
            let (status, body) = http_get(api, "/api/v1/checks").await;
            let parsed: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            let all_passing = status == 200
                && parsed.as_array().is_some_and(|checks| {
                    checks.len() == 3
                        && checks
                            .iter()
                            .all(|check| check["latest"]["passing"] == true)
                });
            if all_passing {
                break body;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    answers.push(("/api/v1/checks".to_string(), checks.clone()));
    assert!(
        checks.contains("[redacted]"),
        "the echoed secrets are redacted:\n{checks}"
    );
    {
        let heads = heads.lock().unwrap();
        let sent = |path: &str| {
            heads
                .iter()
                .find(|head| head.contains(&format!(" /{path} ")))
                .cloned()
                .unwrap_or_default()
        };
        let files = sent("files");
        assert_eq!(
            header(&files, "authorization"),
            Some(format!("Bearer {BEARER}").as_str())
        );
        assert_eq!(header(&files, "x-api-key"), Some(API_KEY));
        assert!(
            files.ends_with(&format!("{{\"probe\":\"{BODY}\"}}")),
            "{files}"
        );
        use base64::Engine;
        let basic =
            base64::engine::general_purpose::STANDARD.encode(format!("probe:{BASIC_PASSWORD}"));
        assert_eq!(
            header(&sent("basic"), "authorization"),
            Some(format!("Basic {basic}").as_str())
        );
        assert_eq!(
            header(&sent("oauth"), "authorization"),
            Some(format!("Bearer {OAUTH_TOKEN}").as_str())
        );
    }
    for path in ["/api/v1/checks/files", "/metrics"] {
        let (status, body) = http_get(api, path).await;
        assert_eq!(status, 200, "{path}: {body}");
        answers.push((path.to_string(), body));
    }

    // A changed file is read again by a reload, and its new value is what goes out.
    std::fs::write(&token_file, format!("{ROTATED}\n")).unwrap();
    let reload = tokio::task::spawn_blocking(move || {
        raw_request_blocking(listen, "POST /-/reload HTTP/1.1\r\nhost: bastion\r\nconnection: close\r\ncontent-length: 0\r\n\r\n")
    })
    .await
    .unwrap()
    .expect("a reload answer");
    assert_eq!(reload.0, 200, "{}", reload.1);
    answers.push(("the reload".to_string(), reload.1));
    let rotated = format!("Bearer {ROTATED}");
    eventually("the rotated token goes out", PATIENCE, || {
        heads
            .lock()
            .unwrap()
            .iter()
            .any(|head| header(head, "authorization") == Some(rotated.as_str()))
    })
    .await;

    // A reload that cannot read a secret file is refused, naming the file; probing goes on.
    std::fs::remove_file(&key_file).unwrap();
    let refused = tokio::task::spawn_blocking(move || {
        raw_request_blocking(listen, "POST /-/reload HTTP/1.1\r\nhost: bastion\r\nconnection: close\r\ncontent-length: 0\r\n\r\n")
    })
    .await
    .unwrap()
    .expect("a reload answer");
    assert_eq!(refused.0, 500, "{}", refused.1);
    assert!(
        refused.1.contains(&format!(
            "headers_from_files.X-Api-Key: cannot read {}",
            key_file.display()
        )),
        "{}",
        refused.1
    );
    answers.push(("the refused reload".to_string(), refused.1));
    let before = heads.lock().unwrap().len();
    eventually("probes go on with the config in force", PATIENCE, || {
        heads.lock().unwrap().len() > before + 2
    })
    .await;
    let (_, checks) = http_get(api, "/api/v1/checks").await;
    answers.push((
        "/api/v1/checks after the refused reload".to_string(),
        checks,
    ));

    agent.terminate();
    answers.push(("stderr".to_string(), agent.log()));
    use base64::Engine;
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("probe:{BASIC_PASSWORD}"));
    let secrets = [
        BEARER,
        API_KEY,
        BODY,
        BASIC_PASSWORD,
        basic.as_str(),
        OAUTH_SECRET,
        OAUTH_TOKEN,
        ROTATED,
    ];
    for (place, text) in &answers {
        assert_no_secret(place, text, &secrets);
    }
}

/// Keys that read secrets from files are checked at load: a file that cannot be read is named
/// (never quoted), and two sources of one header or of the body are refused.
#[test]
fn secret_file_keys_are_checked_at_load() {
    let dir = scratch_dir("secret-keys");
    let present = dir.join("present");
    std::fs::write(&present, "s3cret-value\n").unwrap();
    let empty = dir.join("empty");
    std::fs::write(&empty, "\n").unwrap();
    let present = present.display().to_string();
    let empty = empty.display().to_string();
    let base = "[[checks]]\nname = \"h\"\ntype = \"http\"\ninterval = \"5s\"\nurl = \"https://svc.test/\"\n";
    let cases = [
        (
            "headers_from_files = { X-Api-Key = \"/no/such/key\" }\n".to_string(),
            "check `h`: headers_from_files.X-Api-Key: cannot read /no/such/key".to_string(),
        ),
        (
            format!("bearer_token_file = \"{empty}\"\n"),
            format!("check `h`: bearer_token_file: {empty} is empty"),
        ),
        (
            format!("body = \"x\"\nbody_file = \"{present}\"\n"),
            "check `h`: body and body_file are both set; keep one".to_string(),
        ),
        (
            format!("headers = {{ X-Api-Key = \"a\" }}\nheaders_from_files = {{ X-Api-Key = \"{present}\" }}\n"),
            "check `h`: headers_from_files.X-Api-Key is also in headers; keep one".to_string(),
        ),
        (
            format!("bearer_token_file = \"{present}\"\nbasic_auth = {{ username = \"u\", password_file = \"{present}\" }}\n"),
            "check `h`: bearer_token_file and basic_auth both set the Authorization header; keep one".to_string(),
        ),
        (
            format!("headers_from_files = {{ Authorization = \"{present}\" }}\nbearer_token_file = \"{present}\"\n"),
            "check `h`: headers_from_files.Authorization and bearer_token_file both set the Authorization header".to_string(),
        ),
        (
            "secrets = { bearer_token = \"typed-in\" }\n".to_string(),
            "check `h`: secrets is filled in by bastion from the *_file keys; remove it".to_string(),
        ),
    ];
    for (rest, expected) in cases {
        let error = config_error(&format!("{base}{rest}"));
        assert!(error.contains(&expected), "{error}\n !~ {expected}");
        assert!(
            !error.contains("s3cret-value") && !error.contains("typed-in"),
            "{error}"
        );
    }
}
