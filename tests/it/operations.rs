//! Operating bastion, through the real binary: check states and their events, config reload
//! (SIGHUP and `POST /-/reload`, valid and invalid), the systemd notify protocol on a socket
//! the test binds, and the protected endpoints (HTTPS and basic auth).

use crate::common;

use bastion_agent::bus::Bus;
use bastion_agent::messages::StateEvent;
use bastion_agent::model::CheckState;
use common::nats::{free_port, observer, NatsServer};
use common::process::{http_get_blocking, scratch_dir, Bastion};
use common::*;
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

/// An HTTP target whose status the test sets.
async fn switchable_target() -> (std::net::SocketAddr, Arc<AtomicU16>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let status = Arc::new(AtomicU16::new(200));
    let current = Arc::clone(&status);
    serve(listener, move |mut request| {
        let code = current.load(Ordering::SeqCst);
        async move {
            let line = if code == 200 {
                "200 OK"
            } else {
                "500 Internal Server Error"
            };
            respond(&mut request.stream, line, &[], "x").await;
        }
    });
    (address, status)
}

fn api_checks(agent: &Bastion) -> Vec<serde_json::Value> {
    let (status, body) = http_get_blocking(agent.listen, "/api/v1/checks").expect("api answers");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn check_named<'a>(checks: &'a [serde_json::Value], name: &str) -> Option<&'a serde_json::Value> {
    checks.iter().find(|check| check["name"] == name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_check_walks_the_states_and_publishes_each_transition() {
    let server = NatsServer::start();
    let (target, status) = switchable_target().await;
    status.store(500, Ordering::SeqCst);
    let observer = observer(&server.url()).await;
    let mut subscription = observer.subscribe("bastion.events.>", None).await.unwrap();
    assert!(observer.settle().await, "the subscription is in effect");
    let events: Arc<Mutex<Vec<StateEvent>>> = Arc::default();
    let sink = Arc::clone(&events);
    tokio::spawn(async move {
        while let Some(message) = subscription.next().await {
            assert_eq!(&*message.subject, "bastion.events.flappy");
            sink.lock()
                .unwrap()
                .push(serde_json::from_slice(&message.payload.to_bytes().unwrap()).unwrap());
        }
    });

    let listen = free_port();
    let config = format!(
        "[agent]\nid = \"a1\"\nlisten = \"127.0.0.1:{listen}\"\n\
         [bus]\nkind = \"nats\"\n[bus.nats]\nurl = \"{}\"\n\
         [[checks]]\nname = \"flappy\"\ntype = \"http\"\nurl = \"http://{target}/\"\ninterval = \"1s\"\n\
         timeout = \"900ms\"\nmin_failing_time = \"2s\"\n",
        server.url()
    );
    let mut agent = Bastion::start("flappy", listen, &config, &["run"]);
    agent.wait_ready();
    let transitions = |events: &Arc<Mutex<Vec<StateEvent>>>| -> Vec<(CheckState, CheckState)> {
        events
            .lock()
            .unwrap()
            .iter()
            .map(|event| (event.from, event.to))
            .collect()
    };
    eventually("FAIL", Duration::from_secs(60), || {
        transitions(&events).len() >= 2
    })
    .await;
    assert_eq!(
        transitions(&events),
        [
            (CheckState::Ok, CheckState::FailWait),
            (CheckState::FailWait, CheckState::Fail)
        ]
    );
    let checks = api_checks(&agent);
    assert_eq!(check_named(&checks, "flappy").unwrap()["state"], "FAIL");
    assert_eq!(
        agent.sample("bastion_check_state{check=\"flappy\",state=\"FAIL\"}"),
        Some(1.0)
    );
    assert_eq!(
        agent.sample("bastion_check_state{check=\"flappy\",state=\"OK\"}"),
        Some(0.0)
    );

    status.store(200, Ordering::SeqCst);
    eventually("OK again", Duration::from_secs(60), || {
        transitions(&events).len() >= 4
    })
    .await;
    assert_eq!(
        transitions(&events)[2..],
        [
            (CheckState::Fail, CheckState::PassWait),
            (CheckState::PassWait, CheckState::Ok)
        ]
    );
    let last = events.lock().unwrap().last().cloned().unwrap();
    assert_eq!(
        (last.check.as_str(), last.failing, last.responses),
        ("flappy", 0, 1)
    );
    for to in ["FAIL_WAIT", "FAIL", "PASS_WAIT", "OK"] {
        assert_eq!(
            agent.sample(&format!(
                "bastion_check_transitions_total{{check=\"flappy\",to=\"{to}\"}}"
            )),
            Some(1.0),
            "{to}"
        );
    }
    assert_eq!(agent.terminate().and_then(|s| s.code()), Some(0));
}

fn reload_config(listen: u16, checks: &str, web: &str) -> String {
    format!("[agent]\nid = \"a1\"\nlisten = \"127.0.0.1:{listen}\"\n{web}\n{checks}")
}

fn http_check(name: &str, target: std::net::SocketAddr, path: &str, extra: &str) -> String {
    format!(
        "[[checks]]\nname = \"{name}\"\ntype = \"http\"\nurl = \"http://{target}{path}\"\ninterval = \"1s\"\ntimeout = \"900ms\"\n{extra}\n"
    )
}

/// A blocking POST with no body.
fn post(port: u16, path: &str) -> (u16, String) {
    http_request_blocking(port, "POST", path, &[]).expect("an HTTP answer")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_applies_checks_one_by_one_and_an_invalid_file_changes_nothing() {
    let (healthy, _) = switchable_target().await;
    let (broken, broken_status) = switchable_target().await;
    broken_status.store(500, Ordering::SeqCst);
    let listen = free_port();
    // `keep` fails and reaches FAIL at once: a reload must not reset that.
    let keep = http_check("keep", broken, "/", "min_failing_time = \"0s\"");
    let first = format!(
        "{keep}{}{}",
        http_check("gone", healthy, "/gone", ""),
        http_check("change", healthy, "/v1", "")
    );
    let mut agent = Bastion::start(
        "reload",
        listen,
        &reload_config(listen, &first, ""),
        &["run"],
    );
    agent.wait_ready();
    let scheduled = |agent: &Bastion, check: &str| {
        agent
            .sample(&format!(
                "bastion_checks_scheduled_total{{check=\"{check}\"}}"
            ))
            .unwrap_or(0.0)
    };
    eventually("three runs of each", Duration::from_secs(60), || {
        ["keep", "gone", "change"]
            .iter()
            .all(|c| scheduled(&agent, c) >= 3.0)
            && api_checks(&agent)
                .iter()
                .all(|check| !check["latest"].is_null())
    })
    .await;
    let before = api_checks(&agent);
    let keep_before = check_named(&before, "keep").unwrap().clone();
    assert_eq!(keep_before["state"], "FAIL");
    let loaded_at = agent
        .sample("bastion_config_last_reload_success_timestamp_seconds")
        .unwrap();
    let change_runs = scheduled(&agent, "change");

    // Valid: one removed, one changed, one added, one kept; applied on SIGHUP.
    let second = format!(
        "{keep}{}{}",
        http_check("change", healthy, "/v2", ""),
        http_check("added", healthy, "/added", "")
    );
    std::fs::write(agent.config_path(), reload_config(listen, &second, "")).unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    agent.signal("HUP");
    eventually("the new check list", PATIENCE, || {
        let checks = api_checks(&agent);
        let names: Vec<&str> = checks.iter().map(|c| c["name"].as_str().unwrap()).collect();
        names == ["keep", "change", "added"]
    })
    .await;
    let text = agent.metrics().unwrap();
    assert!(
        !text.contains("check=\"gone\""),
        "a removed check's series go:\n{text}"
    );
    assert_eq!(
        agent.sample("bastion_config_last_reload_successful"),
        Some(1.0)
    );
    assert!(
        agent
            .sample("bastion_config_last_reload_success_timestamp_seconds")
            .unwrap()
            > loaded_at
    );
    let after = api_checks(&agent);
    let keep_after = check_named(&after, "keep").unwrap();
    assert_eq!(keep_after["state"], "FAIL", "state kept");
    assert_eq!(keep_after["state_since"], keep_before["state_since"]);
    assert!(
        scheduled(&agent, "change") < change_runs,
        "a changed check restarts"
    );
    eventually(
        "the added and changed checks to run",
        Duration::from_secs(60),
        || {
            let checks = api_checks(&agent);
            ["added", "change"].iter().all(|name| {
                check_named(&checks, name).is_some_and(|c| c["latest"]["passing"] == true)
            })
        },
    )
    .await;
    let checks = api_checks(&agent);
    let latest = &check_named(&checks, "change").unwrap()["latest"];
    assert!(
        latest["responses"][0]["target"].as_str().is_some(),
        "{latest}"
    );

    // Invalid: nothing changes, the endpoint says why, the gauge reads 0.
    std::fs::write(
        agent.config_path(),
        "[[checks]]\nname = \"broken\"\ninterval = \n",
    )
    .unwrap();
    let (status, body) = tokio::task::spawn_blocking(move || post(listen, "/-/reload"))
        .await
        .unwrap();
    assert_eq!(status, 500, "{body}");
    assert!(
        body.contains("the running one stays") && body.contains("bastion.toml:3"),
        "{body}"
    );
    assert_eq!(
        agent.sample("bastion_config_last_reload_successful"),
        Some(0.0)
    );
    let names: Vec<String> = api_checks(&agent)
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["keep", "change", "added"]);
    assert!(agent.alive());

    // Valid again, through the endpoint this time.
    std::fs::write(agent.config_path(), reload_config(listen, &keep, "")).unwrap();
    let (status, body) = tokio::task::spawn_blocking(move || post(listen, "/-/reload"))
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("0 added, 2 removed, 0 changed, 1 unchanged"),
        "{body}"
    );
    assert_eq!(
        agent.sample("bastion_config_last_reload_successful"),
        Some(1.0)
    );
    assert!(agent.log().contains("config reload failed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reload_endpoint_can_be_turned_off() {
    let listen = free_port();
    let config = reload_config(listen, "", "[agent.web]\nreload_endpoint = false\n");
    let mut agent = Bastion::start("noreload", listen, &config, &["run"]);
    agent.wait_ready();
    let (status, body) = tokio::task::spawn_blocking(move || post(listen, "/-/reload"))
        .await
        .unwrap();
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("send SIGHUP"));
}

/// Reads notifications until one contains `wanted`; returns everything read.
fn read_until(socket: &UnixDatagram, wanted: &str, seen: &mut Vec<String>) {
    let deadline = Instant::now() + PATIENCE;
    let mut buffer = [0u8; 4096];
    loop {
        assert!(Instant::now() < deadline, "no `{wanted}` in {seen:?}");
        if let Ok(length) = socket.recv(&mut buffer) {
            let message = String::from_utf8_lossy(&buffer[..length]).into_owned();
            let found = message.contains(wanted);
            seen.push(message);
            if found {
                return;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_hears_ready_status_watchdog_reloading_and_stopping() {
    let (target, _) = switchable_target().await;
    let dir = scratch_dir("notify");
    let socket_path = dir.join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let listen = free_port();
    let config = reload_config(listen, &http_check("web", target, "/", ""), "");
    let mut agent = Bastion::start_with_env(
        "notify",
        listen,
        &config,
        &["run"],
        &[
            ("NOTIFY_SOCKET", socket_path.to_str().unwrap()),
            ("WATCHDOG_USEC", "1000000"),
        ],
    );
    let mut seen = Vec::new();
    read_until(&socket, "READY=1", &mut seen);
    let ready = seen.last().unwrap().clone();
    assert!(ready.contains("STATUS=1 checks, 0 failing"), "{ready}");
    // Half of WATCHDOG_USEC: 500 ms.
    read_until(&socket, "WATCHDOG=1", &mut seen);
    read_until(&socket, "WATCHDOG=1", &mut seen);
    agent.signal("HUP");
    read_until(&socket, "RELOADING=1", &mut seen);
    read_until(&socket, "READY=1", &mut seen);
    agent.signal("TERM");
    read_until(&socket, "STOPPING=1", &mut seen);
    assert_eq!(
        agent.wait_exit(PATIENCE).and_then(|s| s.code()),
        Some(0),
        "{}",
        agent.log()
    );
}

/// An HTTPS GET trusting `ca`, with an optional `Authorization` header.
async fn https_get(
    port: u16,
    path: &str,
    ca: &rustls::pki_types::CertificateDer<'static>,
    authorization: Option<&str>,
) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    let auth = authorization
        .map(|value| format!("authorization: {value}\r\n"))
        .unwrap_or_default();
    tls.write_all(
        format!("GET {path} HTTP/1.1\r\nhost: localhost\r\n{auth}connection: close\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(PATIENCE, tls.read_to_end(&mut raw))
        .await
        .unwrap()
        .ok();
    parse_response(&raw).expect("an HTTP answer").0
}

fn basic(user: &str, password: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protected_endpoints_need_tls_and_the_right_password_but_healthz_stays_open() {
    let dir = scratch_dir("web");
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert = dir.join("web.pem");
    let key = dir.join("web.key");
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    let hash = bcrypt::hash("s3cret-pass", 4).unwrap();
    let listen = free_port();
    let web = format!(
        "[agent.web]\ntls_cert_file = \"{}\"\ntls_key_file = \"{}\"\nbasic_auth_users = {{ prom = \"{hash}\" }}\n",
        cert.display(),
        key.display()
    );
    let agent = Bastion::start("web", listen, &reload_config(listen, "", &web), &["run"]);
    let ca = certified.cert.der().clone();
    eventually("HTTPS", Duration::from_secs(60), || {
        std::net::TcpStream::connect(("127.0.0.1", listen)).is_ok()
    })
    .await;
    let right = basic("prom", "s3cret-pass");
    let wrong = basic("prom", "guess");
    assert_eq!(https_get(listen, "/healthz", &ca, None).await, 200);
    assert_eq!(https_get(listen, "/readyz", &ca, None).await, 200);
    for path in ["/metrics", "/api/v1/checks"] {
        assert_eq!(
            https_get(listen, path, &ca, Some(&right)).await,
            200,
            "{path}"
        );
        assert_eq!(
            https_get(listen, path, &ca, Some(&wrong)).await,
            401,
            "{path}"
        );
        assert_eq!(https_get(listen, path, &ca, None).await, 401, "{path}");
    }
    assert_eq!(
        https_get(
            listen,
            "/metrics",
            &ca,
            Some(&basic("nobody", "s3cret-pass"))
        )
        .await,
        401
    );
    // Plain HTTP on the TLS port gets no answer.
    assert_eq!(
        tokio::task::spawn_blocking(move || http_get_blocking(listen, "/healthz"))
            .await
            .unwrap(),
        None
    );
    assert!(!agent.log().contains("s3cret-pass"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_exits_at_once_even_with_runs_in_flight() {
    // Ten instances that accept and never answer, one worker: a run stays in flight for ten
    // probe timeouts back to back.
    let ips: Vec<String> = (2..12).map(|n| format!("127.0.0.{n}")).collect();
    let ip_refs: Vec<&str> = ips.iter().map(String::as_str).collect();
    let (port, listeners) = listeners_on_one_port(&ip_refs).await;
    for listener in listeners {
        serve_silent(listener);
    }
    let instances: Vec<String> = ips.iter().map(|ip| format!("\"{ip}\"")).collect();
    let listen = free_port();
    let config = format!(
        "[agent]\nid = \"a1\"\nlisten = \"127.0.0.1:{listen}\"\nshutdown_grace = \"60s\"\n\
         [runner.workers]\nhttp = 1\n\
         [[checks]]\nname = \"hang\"\ntype = \"http\"\nurl = \"http://lb.internal:{port}/\"\n\
         instances = [{}]\ninterval = \"2s\"\ntimeout = \"1900ms\"\n",
        instances.join(", ")
    );
    let mut agent = Bastion::start("twice", listen, &config, &["run"]);
    agent.wait_ready();
    eventually("a run in flight", PATIENCE, || {
        agent.sample("bastion_workers_busy{type=\"http\"}") == Some(1.0)
    })
    .await;
    agent.signal("TERM");
    eventually("the graceful shutdown to start", PATIENCE, || {
        agent.log().contains("shutting down")
    })
    .await;
    assert!(
        agent.alive(),
        "the first signal waits for the run in flight"
    );
    let second = Instant::now();
    agent.signal("TERM");
    let status = agent.wait_exit(PATIENCE).expect("exits");
    assert_eq!(status.code(), Some(130));
    assert!(
        second.elapsed() < Duration::from_secs(10),
        "at once, not after the run"
    );
}
