//! Notifications against real receivers: the real binary checks a local target whose health
//! the test flips, and notifies a real Alertmanager, a real SMTP server (aiosmtpd with STARTTLS
//! and AUTH), and local HTTP receivers standing in for Slack, PagerDuty and webhooks that check
//! each request against the provider's documented shape and answer as scripted (500s, 429 with
//! Retry-After, 400). Where a test must show that nothing more arrived, it waits for a later
//! notification (the resolve) as the end marker: deliveries to one notifier keep their order.

use crate::common::nats::{free_port, NatsServer};
use crate::common::process::{scratch_dir, Bastion};
use crate::common::receiver::{Received, Receiver, Reply};
use crate::common::{metric, TestCa};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub(crate) const WAIT: Duration = Duration::from_secs(60);

/// A check target: 200 while healthy, 503 while failing.
pub(crate) fn target() -> Receiver {
    Receiver::start(Reply::new(200, "ok"))
}

pub(crate) fn fail(target: &Receiver) {
    target.set_default(Reply::new(503, "down"));
}

pub(crate) fn recover(target: &Receiver) {
    target.set_default(Reply::new(200, "ok"));
}

/// `[agent]` and one http check `web` on `target`, every second, FAIL at the first failure.
pub(crate) fn base(listen: u16, target: &Receiver) -> String {
    format!(
        "[agent]\nid = \"notify-agent\"\nlisten = \"127.0.0.1:{listen}\"\nshutdown_grace = \"3s\"\n\
         [[checks]]\nname = \"web\"\ntype = \"http\"\nurl = \"{}/health\"\ninterval = \"1s\"\nmin_failing_time = \"0s\"\n",
        target.url()
    )
}

fn write(dir: &Path, name: &str, content: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, content).expect("write a test file");
    path
}

pub(crate) fn start(listen: u16, config: &str) -> Bastion {
    let mut agent = Bastion::start("notify", listen, config, &["run"]);
    agent.wait_ready();
    agent
}

pub(crate) fn sample(agent: &Bastion, series: &str) -> f64 {
    agent
        .metrics()
        .and_then(|text| metric(&text, series))
        .unwrap_or(-1.0)
}

pub(crate) fn outcome(notifier: &str, outcome: &str) -> String {
    format!("bastion_notifications_total{{notifier=\"{notifier}\",outcome=\"{outcome}\"}}")
}

pub(crate) fn events(received: &[Received], field: &str) -> Vec<String> {
    received
        .iter()
        .filter(|r| (200..300).contains(&r.status))
        .map(|r| r.json()[field].as_str().unwrap_or("").to_string())
        .collect()
}

pub(crate) fn has_event(received: &[Received], event: &str) -> bool {
    events(received, "event").iter().any(|e| e == event)
}

/// Checks a webhook body against the documented version-1 schema.
fn assert_webhook_v1(body: &serde_json::Value) {
    assert_eq!(body["version"], 1, "{body}");
    assert!(["firing", "resolved", "test"].contains(&body["event"].as_str().unwrap()));
    assert!(body["reminder"].is_boolean());
    assert_eq!(body["episode_id"].as_str().unwrap().len(), 32);
    assert_eq!(body["check"]["name"], "web");
    assert_eq!(body["check"]["type"], "http");
    let name = body["check"]["name"].as_str().unwrap();
    assert!(body["check"]["link"]
        .as_str()
        .unwrap()
        .ends_with(&format!("/api/v1/checks/{name}")));
    assert!(["critical", "warning"].contains(&body["severity"].as_str().unwrap()));
    for time in ["started_at", "at", "sent_at"] {
        humantime::parse_rfc3339(body[time].as_str().unwrap())
            .unwrap_or_else(|_| panic!("{time} is RFC 3339: {body}"));
    }
    assert!(body["failing"].is_u64() && body["instances"].is_u64());
    assert!(body["summary"].as_str().unwrap().contains("web"));
    assert_eq!(body["agent"], "notify-agent");
    for failure in body["failures"].as_array().unwrap() {
        assert!(failure["instance"].is_string());
        assert!(failure["assertions"].is_array());
    }
}

fn hmac_hex(key: &[u8], body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key);
    ring::hmac::sign(&key, body)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn a_webhook_gets_one_signed_firing_and_one_resolve_per_episode() {
    let target = target();
    let hook = Receiver::start(Reply::new(202, "accepted"));
    let dir = scratch_dir("notify-webhook");
    let secret = write(&dir, "hmac.key", "s3cret-hmac-key\n");
    let listen = free_port();
    let config = format!(
        "{}[[notifiers]]\nname = \"hook\"\ntype = \"webhook\"\ndefault = true\nurl = \"{}/hook\"\nsecret_file = \"{}\"\n",
        base(listen, &target),
        hook.url(),
        secret.display()
    );
    let agent = start(listen, &config);
    fail(&target);
    let started = Instant::now();
    let firing = hook.wait_for("the firing notification", WAIT, |r| has_event(r, "firing"));
    let latency = started.elapsed();
    recover(&target);
    let received = hook.wait_for("the resolve", WAIT, |r| has_event(r, "resolved"));
    eprintln!("firing arrived {latency:?} after the target began failing (1 s interval)");

    assert_eq!(
        events(&received, "event"),
        ["firing", "resolved"],
        "exactly one firing, then one resolve"
    );
    let ids: BTreeSet<String> = events(&received, "episode_id").into_iter().collect();
    assert_eq!(ids.len(), 1, "one episode id: {ids:?}");
    for request in &received {
        assert_eq!(request.method, "POST");
        assert_eq!(request.path, "/hook");
        assert_eq!(request.headers["content-type"], "application/json");
        let signature = &request.headers["x-bastion-signature"];
        assert_eq!(
            *signature,
            format!("sha256={}", hmac_hex(b"s3cret-hmac-key", &request.body)),
            "the signature is the HMAC-SHA256 of the raw body"
        );
        assert_ne!(
            *signature,
            format!("sha256={}", hmac_hex(b"another key", &request.body))
        );
        assert_webhook_v1(&request.json());
    }
    for request in &received {
        let result_at = humantime::parse_rfc3339(request.json()["at"].as_str().unwrap()).unwrap();
        let delivered = request.wall.duration_since(result_at).unwrap_or_default();
        eprintln!(
            "{} delivered {delivered:?} after the result that caused it",
            request.json()["event"]
        );
    }
    let firing = firing[0].json();
    assert_eq!(firing["state"], "FAIL");
    assert_eq!(firing["failing"], 1);
    let failure = &firing["failures"][0];
    assert!(
        failure["assertions"][0]["actual"] == "503",
        "the failing assertion with its actual value: {firing}"
    );
    assert_eq!(received[1].json()["state"], "OK");
    // The link answers with this check alone.
    let link = firing["check"]["link"].as_str().unwrap().to_string();
    let path = link.split_once(&format!("127.0.0.1:{listen}")).unwrap().1;
    let (status, body) = crate::common::http_request_blocking(listen, "GET", path, &[]).unwrap();
    assert_eq!(status, 200);
    let linked: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(linked["name"], "web", "{linked}");
    assert_eq!(linked["state"], "OK", "{linked}");
    assert_eq!(sample(&agent, &outcome("hook", "sent")), 2.0);
    assert_eq!(sample(&agent, &outcome("hook", "failed")), 0.0);
    assert_eq!(
        sample(&agent, "bastion_notification_queue{notifier=\"hook\"}"),
        0.0
    );
}

#[test]
fn an_https_receiver_is_reached_over_rustls_and_its_certificate_checked() {
    let ca = TestCa::new("bastion test receiver CA");
    let identity = ca.leaf(
        &["127.0.0.1"],
        time::OffsetDateTime::now_utc() + time::Duration::days(30),
    );
    let hook = Receiver::start_tls(
        Reply::new(202, "taken"),
        identity.server_config(&[b"http/1.1"]),
    );
    let dir = scratch_dir("notify-https");
    let config = |ca_file: Option<&Path>| {
        let ca = ca_file
            .map(|path| format!("ca_file = \"{}\"\n", path.display()))
            .unwrap_or_default();
        write(
            &dir,
            "https.toml",
            &format!(
                "[[notifiers]]\nname = \"hook\"\ntype = \"webhook\"\nurl = \"{}/in\"\n{ca}",
                hook.https_url()
            ),
        )
    };
    let run = |path: &Path| {
        Command::new(env!("CARGO_BIN_EXE_bastion"))
            .args(["notify", "test", "--notifier", "hook", "--config"])
            .arg(path)
            .output()
            .unwrap()
    };
    // Trusting the receiver's CA: delivered over TLS.
    let out = run(&config(Some(&ca.ca_file)));
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("HTTP 202: taken"));
    assert_eq!(hook.received().len(), 1);
    assert_eq!(hook.received()[0].json()["event"], "test");
    // With only the system's roots the certificate is refused, and nothing arrives.
    let out = run(&config(None));
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("certificate"), "{stderr}");
    assert!(
        !stderr.contains("/in"),
        "the URL is not in the error: {stderr}"
    );
    assert_eq!(hook.received().len(), 1);
}

/// Slack's incoming-webhook payload: `text`, and blocks of documented types.
fn assert_slack_shape(body: &serde_json::Value) {
    let object = body.as_object().expect("a JSON object");
    for key in object.keys() {
        assert!(
            ["text", "blocks"].contains(&key.as_str()),
            "unknown key {key}"
        );
    }
    assert!(!body["text"].as_str().unwrap().is_empty());
    let blocks = body["blocks"].as_array().unwrap();
    assert!(!blocks.is_empty() && blocks.len() <= 50);
    for block in blocks {
        match block["type"].as_str().unwrap() {
            "section" => {
                assert_eq!(block["text"]["type"], "mrkdwn");
                let text = block["text"]["text"].as_str().unwrap();
                assert!(!text.is_empty() && text.chars().count() <= 3000);
            }
            "context" => {
                let elements = block["elements"].as_array().unwrap();
                assert!(!elements.is_empty() && elements.len() <= 10);
                assert_eq!(elements[0]["type"], "mrkdwn");
            }
            other => panic!("unexpected block type {other}"),
        }
    }
}

#[test]
fn slack_is_retried_after_500s_and_delivered_exactly_once() {
    let target = target();
    let slack = Receiver::start(Reply::new(200, "ok"));
    slack.then(vec![
        Reply::new(500, "internal_error"),
        Reply::new(500, "internal_error"),
    ]);
    let dir = scratch_dir("notify-slack");
    let url = write(
        &dir,
        "slack.url",
        &format!("{}/services/T000/B000/XXXXXXXX\n", slack.url()),
    );
    let listen = free_port();
    let config = format!(
        "{}[[notifiers]]\nname = \"chat\"\ntype = \"slack\"\ndefault = true\nurl_file = \"{}\"\nretry_backoff = \"500ms\"\n",
        base(listen, &target),
        url.display()
    );
    let agent = start(listen, &config);
    fail(&target);
    let received = slack.wait_for("a delivered message", WAIT, |r| {
        r.iter().any(|r| r.status == 200)
    });
    assert_eq!(
        received.iter().map(|r| r.status).collect::<Vec<_>>(),
        [500, 500, 200],
        "two refusals, then the one delivery"
    );
    for request in &received {
        assert_eq!(request.path, "/services/T000/B000/XXXXXXXX");
        assert_eq!(request.body, received[0].body, "the same message each time");
        assert_slack_shape(&request.json());
    }
    let text = received[2].json()["text"].as_str().unwrap().to_string();
    assert!(
        text.contains("[FAILING] web: 1 of 1 instances failing"),
        "{text}"
    );
    let gaps: Vec<Duration> = received.windows(2).map(|w| w[1].at - w[0].at).collect();
    eprintln!("retry gaps with retry_backoff = 500ms: {gaps:?}");
    assert!(
        gaps[0] >= Duration::from_millis(250),
        "backoff waited: {gaps:?}"
    );
    assert!(
        gaps[1] >= Duration::from_millis(500),
        "and doubled: {gaps:?}"
    );
    recover(&target);
    let received = slack.wait_for("the resolve", WAIT, |r| {
        r.iter()
            .filter(|r| r.status == 200)
            .any(|r| r.json()["text"].as_str().unwrap().contains("RESOLVED"))
    });
    assert_eq!(
        received.iter().filter(|r| r.status == 200).count(),
        2,
        "one firing and one resolve delivered"
    );
    assert_eq!(sample(&agent, &outcome("chat", "sent")), 2.0);
    assert_eq!(sample(&agent, &outcome("chat", "failed")), 0.0);
    assert!(
        sample(
            &agent,
            "bastion_notification_duration_seconds_count{notifier=\"chat\"}"
        ) >= 4.0,
        "every attempt is timed"
    );
}

/// A PagerDuty Events API v2 event, as documented.
fn assert_pagerduty_event(event: &serde_json::Value, routing_key: &str) {
    assert_eq!(event["routing_key"], routing_key);
    let dedup = event["dedup_key"].as_str().unwrap();
    assert!(!dedup.is_empty() && dedup.len() <= 255);
    match event["event_action"].as_str().unwrap() {
        "trigger" => {
            let payload = &event["payload"];
            let summary = payload["summary"].as_str().unwrap();
            assert!(!summary.is_empty() && summary.chars().count() <= 1024);
            assert!(!payload["source"].as_str().unwrap().is_empty());
            assert!(["critical", "error", "warning", "info"]
                .contains(&payload["severity"].as_str().unwrap()));
            humantime::parse_rfc3339(payload["timestamp"].as_str().unwrap()).unwrap();
            assert!(payload["custom_details"].is_object());
            for link in event["links"].as_array().unwrap() {
                assert!(link["href"].as_str().unwrap().starts_with("http"));
            }
        }
        "resolve" => assert!(event.get("payload").is_none()),
        other => panic!("unexpected event_action {other}"),
    }
}

#[test]
fn pagerduty_waits_for_retry_after_and_resolves_with_the_same_dedup_key() {
    let target = target();
    let pd = Receiver::start(Reply::new(
        202,
        r#"{"status":"success","message":"Event processed"}"#,
    ));
    pd.then(vec![
        Reply::new(429, r#"{"status":"throttled"}"#).header("retry-after", "2")
    ]);
    let dir = scratch_dir("notify-pd");
    let key = write(&dir, "pd.key", "R0UTINGKEY0123456789abcdef012345\n");
    let listen = free_port();
    let config = format!(
        "{}[[notifiers]]\nname = \"oncall\"\ntype = \"pagerduty\"\ndefault = true\nrouting_key_file = \"{}\"\nurl = \"{}/v2/enqueue\"\nretry_backoff = \"100ms\"\n",
        base(listen, &target),
        key.display(),
        pd.url()
    );
    let agent = start(listen, &config);
    fail(&target);
    let received = pd.wait_for("the trigger after the 429", WAIT, |r| {
        r.iter().any(|r| r.status == 202)
    });
    assert_eq!(
        received.iter().map(|r| r.status).collect::<Vec<_>>(),
        [429, 202]
    );
    let waited = received[1].at - received[0].at;
    eprintln!(
        "after 429 with Retry-After: 2, the retry came {waited:?} later (backoff alone: 100ms)"
    );
    assert!(
        waited >= Duration::from_millis(1950),
        "Retry-After: 2 was honoured, not the 100ms backoff: {waited:?}"
    );
    recover(&target);
    let received = pd.wait_for("the resolve", WAIT, |r| {
        r.iter()
            .any(|r| r.status == 202 && r.json()["event_action"] == "resolve")
    });
    let accepted: Vec<serde_json::Value> = received
        .iter()
        .filter(|r| r.status == 202)
        .map(Received::json)
        .collect();
    for event in &accepted {
        assert_pagerduty_event(event, "R0UTINGKEY0123456789abcdef012345");
        assert_eq!(received[0].path, "/v2/enqueue");
    }
    assert_eq!(
        accepted
            .iter()
            .map(|e| e["event_action"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["trigger", "resolve"]
    );
    assert_eq!(accepted[0]["dedup_key"], accepted[1]["dedup_key"]);
    assert_eq!(accepted[0]["payload"]["severity"], "critical");
    assert_eq!(accepted[0]["payload"]["component"], "web");
    assert_eq!(sample(&agent, &outcome("oncall", "sent")), 2.0);
}

/// A refused firing is not retried, and since the receiver never accepted the episode, it
/// gets no resolve for it either: the next thing it hears of is the next episode.
#[test]
fn a_client_error_is_not_retried_and_is_counted_as_rejected() {
    let target = target();
    let hook = Receiver::start(Reply::new(202, ""));
    hook.then(vec![Reply::new(400, "bad payload")]);
    let listen = free_port();
    let config = format!(
        "{}[[notifiers]]\nname = \"hook\"\ntype = \"webhook\"\ndefault = true\nurl = \"{}/\"\nretry_backoff = \"100ms\"\n",
        base(listen, &target),
        hook.url()
    );
    let agent = start(listen, &config);
    fail(&target);
    hook.wait_for("the refused firing", WAIT, |r| !r.is_empty());
    recover(&target);
    let deadline = Instant::now() + WAIT;
    while sample(&agent, "bastion_check_state{check=\"web\",state=\"OK\"}") != 1.0 {
        assert!(
            Instant::now() < deadline,
            "web never recovered: {}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The next episode is the end marker: anything queued for the first would come before it.
    fail(&target);
    let received = hook.wait_for("the next firing", WAIT, |r| r.len() >= 2);
    assert_eq!(
        received
            .iter()
            .map(|r| (r.status, r.json()["event"].as_str().unwrap().to_string()))
            .collect::<Vec<_>>(),
        [(400, "firing".to_string()), (202, "firing".to_string())],
        "the refused firing was not sent again, and no resolve followed it"
    );
    let ids: Vec<String> = received
        .iter()
        .map(|r| r.json()["episode_id"].as_str().unwrap().to_string())
        .collect();
    assert_ne!(ids[0], ids[1], "two episodes");
    assert_eq!(sample(&agent, &outcome("hook", "rejected")), 1.0);
    assert!(agent
        .log()
        .contains("the receiver refused the notification; not retrying"));
}

#[test]
fn a_flapping_check_within_min_failing_time_notifies_nothing() {
    let target = target();
    let hook = Receiver::start(Reply::new(202, ""));
    let listen = free_port();
    let config = format!(
        "{}[[notifiers]]\nname = \"hook\"\ntype = \"webhook\"\ndefault = true\nurl = \"{}/\"\n",
        base(listen, &target).replace("min_failing_time = \"0s\"", "min_failing_time = \"3s\""),
        hook.url()
    );
    let agent = start(listen, &config);
    // Fails for about one run at a time, far less than the 3s it must keep failing.
    for _ in 0..2 {
        fail(&target);
        std::thread::sleep(Duration::from_millis(1200));
        recover(&target);
        std::thread::sleep(Duration::from_millis(2000));
    }
    let waits = sample(
        &agent,
        "bastion_check_transitions_total{check=\"web\",to=\"FAIL_WAIT\"}",
    );
    assert!(waits >= 1.0, "the check did flap into FAIL_WAIT: {waits}");
    // Then it fails for good: the first notification is that episode's firing.
    fail(&target);
    let received = hook.wait_for("the firing", WAIT, |r| !r.is_empty());
    assert_eq!(events(&received, "event"), ["firing"], "nothing before it");
}

#[test]
fn reminders_arrive_every_repeat_interval_with_the_same_episode() {
    let target = target();
    let hook = Receiver::start(Reply::new(202, ""));
    let listen = free_port();
    let config = format!(
        "{}[[notifiers]]\nname = \"hook\"\ntype = \"webhook\"\ndefault = true\nurl = \"{}/\"\nrepeat_interval = \"2s\"\n",
        base(listen, &target),
        hook.url()
    );
    let _agent = start(listen, &config);
    fail(&target);
    let received = hook.wait_for("two reminders", WAIT, |r| r.len() >= 3);
    let bodies: Vec<serde_json::Value> = received.iter().map(Received::json).collect();
    assert_eq!(bodies[0]["reminder"], false);
    assert_eq!(bodies[1]["reminder"], true);
    assert_eq!(bodies[2]["reminder"], true);
    for body in &bodies {
        assert_eq!(body["event"], "firing");
        assert_eq!(body["episode_id"], bodies[0]["episode_id"]);
    }
    let gaps: Vec<Duration> = received.windows(2).map(|w| w[1].at - w[0].at).collect();
    eprintln!("reminder gaps with repeat_interval = 2s: {gaps:?}");
    for gap in gaps.iter().take(2) {
        assert!(*gap >= Duration::from_millis(1500), "{gaps:?}");
    }
}

/// RFC 3339 for now plus `seconds` (negative for the past).
fn rfc3339_in(seconds: i64) -> String {
    let now = std::time::SystemTime::now();
    let at = if seconds >= 0 {
        now + Duration::from_secs(seconds as u64)
    } else {
        now - Duration::from_secs((-seconds) as u64)
    };
    humantime::format_rfc3339_seconds(at).to_string()
}

#[test]
fn a_maintenance_window_suppresses_and_the_check_notifies_when_it_ends() {
    let target = target();
    let hook = Receiver::start(Reply::new(202, ""));
    let listen = free_port();
    let config = format!(
        "{}[[notifiers]]\nname = \"hook\"\ntype = \"webhook\"\ndefault = true\nurl = \"{}/\"\n\
         [[maintenance]]\nname = \"deploy\"\nchecks = [\"w*\"]\nstart = \"{}\"\nend = \"{}\"\n",
        base(listen, &target),
        hook.url(),
        rfc3339_in(-60),
        rfc3339_in(8)
    );
    let window_ends = Instant::now() + Duration::from_secs(7);
    let agent = start(listen, &config);
    fail(&target);
    let mut suppressed_seen = false;
    let deadline = Instant::now() + WAIT;
    while !suppressed_seen {
        suppressed_seen = sample(&agent, &outcome("hook", "suppressed")) == 1.0;
        assert!(Instant::now() < deadline, "the firing was never suppressed");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        hook.received().is_empty(),
        "nothing is sent during the window"
    );
    assert_eq!(
        sample(&agent, "bastion_check_state{check=\"web\",state=\"FAIL\"}"),
        1.0,
        "the check still runs and its state moves"
    );
    let received = hook.wait_for("the firing at the window's end", WAIT, |r| !r.is_empty());
    assert!(
        received[0].at >= window_ends,
        "sent after the window ended, not during it"
    );
    assert_eq!(events(&received, "event"), ["firing"]);
    assert_eq!(sample(&agent, &outcome("hook", "suppressed")), 1.0);
    recover(&target);
    hook.wait_for("the resolve", WAIT, |r| has_event(r, "resolved"));
}

#[test]
fn a_maintenance_window_added_by_a_reload_applies_at_once_and_ends_when_removed() {
    let target = target();
    let hook = Receiver::start(Reply::new(202, ""));
    let listen = free_port();
    let config = format!(
        "{}[[notifiers]]\nname = \"hook\"\ntype = \"webhook\"\ndefault = true\nurl = \"{}/\"\n",
        base(listen, &target),
        hook.url()
    );
    let agent = start(listen, &config);
    let reload = |text: &str, count: usize| {
        std::fs::write(agent.config_path(), text).unwrap();
        agent.signal("HUP");
        let deadline = Instant::now() + WAIT;
        while agent.log().matches("config reloaded").count() < count {
            assert!(Instant::now() < deadline, "no reload:\n{}", agent.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let with_window = format!(
        "{config}[[maintenance]]\nname = \"ad-hoc\"\nchecks = [\"web\"]\nstart = \"{}\"\nend = \"{}\"\n",
        rfc3339_in(-60),
        rfc3339_in(3600)
    );
    reload(&with_window, 1);
    assert!(
        !agent.log().contains("apply only after a restart"),
        "maintenance applies on reload: {}",
        agent.log()
    );
    std::thread::sleep(Duration::from_millis(1500)); // the ticker takes the new windows
    fail(&target);
    let deadline = Instant::now() + WAIT;
    while sample(&agent, &outcome("hook", "suppressed")) < 1.0 {
        assert!(
            Instant::now() < deadline,
            "not suppressed:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(hook.received().is_empty());
    // The window goes with the next reload: the check, still failing, notifies.
    reload(&config, 2);
    let received = hook.wait_for("the firing once the window is gone", WAIT, |r| {
        !r.is_empty()
    });
    assert_eq!(events(&received, "event"), ["firing"]);
}

#[test]
fn a_full_queue_drops_the_oldest_notification_and_counts_it() {
    let target = target();
    let hook = Receiver::start(Reply::new(202, ""));
    hook.hold();
    let listen = free_port();
    let mut config = format!(
        "[agent]\nid = \"notify-agent\"\nlisten = \"127.0.0.1:{listen}\"\nshutdown_grace = \"1s\"\n\
         [[notifiers]]\nname = \"hook\"\ntype = \"webhook\"\ndefault = true\nurl = \"{}/\"\nqueue_size = 1\ntimeout = \"60s\"\n",
        hook.url()
    );
    for n in 0..4 {
        config.push_str(&format!(
            "[[checks]]\nname = \"web{n}\"\ntype = \"http\"\nurl = \"{}/health\"\ninterval = \"1s\"\nmin_failing_time = \"0s\"\n",
            target.url()
        ));
    }
    let agent = start(listen, &config);
    fail(&target);
    // Four firings: one is held at the receiver, one waits, two were dropped.
    let deadline = Instant::now() + WAIT;
    while sample(&agent, &outcome("hook", "dropped")) < 2.0 {
        assert!(Instant::now() < deadline, "no drops: {:?}", agent.metrics());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        sample(&agent, "bastion_notification_queue{notifier=\"hook\"}"),
        1.0
    );
    let log = agent.log();
    assert_eq!(
        log.matches("notification queue full; dropped the oldest notification")
            .count(),
        2,
        "{log}"
    );
    let dropped: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("dropped the oldest"))
        .collect();
    hook.release();
    let received = hook.wait_for("the kept notifications", WAIT, |r| r.len() >= 2);
    let delivered: BTreeSet<String> = received
        .iter()
        .map(|r| r.json()["check"]["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(delivered.len(), 2);
    for line in dropped {
        for check in &delivered {
            assert!(
                !line.contains(&format!("check={check} ")),
                "a delivered notification was the dropped one: {line}"
            );
        }
    }
    assert_eq!(sample(&agent, &outcome("hook", "dropped")), 2.0);
}

fn alertmanager_binary() -> PathBuf {
    crate::common::tools::tool(
        "ALERTMANAGER",
        "prometheus-alertmanager",
        "/usr/bin/prometheus-alertmanager",
        "install Alertmanager (apt-get install prometheus-alertmanager)",
    )
}

pub(crate) struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn get_json(port: u16, path: &str) -> Option<serde_json::Value> {
    let (status, body) =
        crate::common::http_request_blocking(port, "GET", path, &[("connection", "close")])?;
    (status == 200).then(|| serde_json::from_str(&body).ok())?
}

/// A real Alertmanager on a random port with a route to nowhere, answering its API.
fn start_alertmanager(name: &str) -> (Killed, u16) {
    let dir = scratch_dir(name);
    let am_config = write(
        &dir,
        "alertmanager.yml",
        "route:\n  receiver: nobody\nreceivers:\n  - name: nobody\n",
    );
    let am_port = free_port();
    let am = Killed(
        Command::new(alertmanager_binary())
            .arg(format!("--config.file={}", am_config.display()))
            .arg(format!("--storage.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{am_port}"))
            .arg("--cluster.listen-address=")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("alertmanager starts"),
    );
    let deadline = Instant::now() + WAIT;
    while get_json(am_port, "/api/v2/status").is_none() {
        assert!(Instant::now() < deadline, "alertmanager never answered");
        std::thread::sleep(Duration::from_millis(100));
    }
    (am, am_port)
}

#[test]
fn notify_test_reaches_alertmanager_as_an_info_alert_that_ends_by_itself() {
    let (_am, am_port) = start_alertmanager("notify-am-test");
    let dir = scratch_dir("notify-am-test-config");
    let path = write(
        &dir,
        "notify.toml",
        &format!("[[notifiers]]\nname = \"am\"\ntype = \"alertmanager\"\nurl = \"http://127.0.0.1:{am_port}\"\n"),
    );
    let out = Command::new(env!("CARGO_BIN_EXE_bastion"))
        .args(["notify", "test", "--notifier", "am", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let alerts = get_json(am_port, "/api/v2/alerts").expect("alertmanager answers");
    let alerts = alerts.as_array().unwrap();
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    let alert = &alerts[0];
    // Routed apart from failures: no `BastionCheckFailing`, no paging severity.
    assert_eq!(alert["labels"]["alertname"], "BastionNotificationTest");
    assert_eq!(alert["labels"]["severity"], "info");
    assert_eq!(alert["labels"]["check"], "bastion-test");
    assert_eq!(alert["status"]["state"], "active");
    let ends = humantime::parse_rfc3339_weak(alert["endsAt"].as_str().unwrap()).unwrap();
    let left = ends
        .duration_since(std::time::SystemTime::now())
        .unwrap_or_default();
    assert!(
        left > Duration::from_secs(60) && left <= Duration::from_secs(300),
        "the test alert ends by itself within 5 minutes: {left:?}"
    );
}

#[test]
fn alertmanager_shows_the_alert_while_failing_and_resolves_it_after_recovery() {
    let (am, am_port) = start_alertmanager("notify-am");
    let target = target();
    let listen = free_port();
    let config = format!(
        "{}[[notifiers]]\nname = \"am\"\ntype = \"alertmanager\"\ndefault = true\nurl = \"http://127.0.0.1:{am_port}\"\nlabels = {{ team = \"platform\" }}\n",
        base(listen, &target)
    );
    let agent = start(listen, &config);
    fail(&target);
    let failing_since = Instant::now();
    let alert = loop {
        let alerts = get_json(am_port, "/api/v2/alerts").unwrap_or_default();
        if let Some(alert) = alerts
            .as_array()
            .and_then(|a| a.iter().find(|a| a["status"]["state"] == "active"))
        {
            break alert.clone();
        }
        assert!(
            failing_since.elapsed() < WAIT,
            "no active alert: {alerts}\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    eprintln!(
        "alert active in Alertmanager {:?} after the target began failing",
        failing_since.elapsed()
    );
    let labels = &alert["labels"];
    assert_eq!(labels["alertname"], "BastionCheckFailing");
    assert_eq!(labels["check"], "web");
    assert_eq!(labels["type"], "http");
    assert_eq!(labels["severity"], "critical");
    assert_eq!(labels["team"], "platform");
    assert!(alert["annotations"]["summary"]
        .as_str()
        .unwrap()
        .contains("[FAILING] web"));
    assert_eq!(
        alert["annotations"]["episode_id"].as_str().unwrap().len(),
        32
    );
    let check = alert["labels"]["check"].as_str().unwrap();
    assert!(alert["generatorURL"]
        .as_str()
        .unwrap()
        .ends_with(&format!("/api/v1/checks/{check}")));
    // endsAt lies minutes ahead while firing: a resolve, not expiry, must end it quickly.
    let ends = humantime::parse_rfc3339_weak(alert["endsAt"].as_str().unwrap()).unwrap();
    assert!(ends > std::time::SystemTime::now() + Duration::from_secs(120));

    recover(&target);
    let recovered = Instant::now();
    loop {
        let alerts = get_json(am_port, "/api/v2/alerts").unwrap_or_default();
        let active = alerts
            .as_array()
            .map(|a| a.iter().any(|a| a["status"]["state"] == "active"))
            .unwrap_or(true);
        if !active {
            break;
        }
        assert!(
            recovered.elapsed() < WAIT,
            "the alert stayed active: {alerts}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "alert resolved in Alertmanager {:?} after recovery",
        recovered.elapsed()
    );
    assert_eq!(sample(&agent, &outcome("am", "failed")), 0.0);
    assert!(sample(&agent, &outcome("am", "sent")) >= 2.0);
    drop(am);
}

/// PEM of one DER block.
fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let text = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in text.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn smtp_python() -> PathBuf {
    if let Some(path) = std::env::var_os("AIOSMTPD_PYTHON") {
        return PathBuf::from(path);
    }
    let home = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .expect("HOME is set");
    let python = home.join("bastion/aiosmtpd/bin/python");
    assert!(
        python.is_file(),
        "aiosmtpd not found at {} and $AIOSMTPD_PYTHON unset: run .ci/test, which installs it",
        python.display()
    );
    python
}

/// A real SMTP server requiring STARTTLS (`mode` "starttls") or speaking TLS from the first
/// byte ("tls"), and AUTH; messages land in `dir/outbox/<n>.eml`.
pub(crate) fn smtp_server(
    dir: &Path,
    user: &str,
    password: &str,
    mode: &str,
) -> (Killed, u16, PathBuf) {
    let ca = TestCa::new("bastion test SMTP CA");
    let leaf = ca.leaf(
        &["127.0.0.1"],
        time::OffsetDateTime::now_utc() + time::Duration::days(30),
    );
    let cert = write(dir, "smtp.crt", &pem("CERTIFICATE", &leaf.chain[0]));
    let key = write(dir, "smtp.key", &pem("PRIVATE KEY", leaf.key.secret_der()));
    let outbox = dir.join("outbox");
    std::fs::create_dir_all(&outbox).unwrap();
    let port = free_port();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/common/smtp_server.py");
    let mut child = Command::new(smtp_python())
        .arg(script)
        .arg(port.to_string())
        .arg(&cert)
        .arg(&key)
        .arg(user)
        .arg(password)
        .arg(&outbox)
        .arg(mode)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("the SMTP server starts");
    let mut ready = String::new();
    use std::io::BufRead as _;
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut ready)
        .unwrap();
    assert_eq!(ready.trim(), "ready");
    (Killed(child), port, ca.ca_file.clone())
}

#[test]
fn email_arrives_over_starttls_with_authentication() {
    let dir = scratch_dir("notify-email");
    let (_smtp, port, ca_file) = smtp_server(&dir, "bastion", "Sm7p-pa55word", "starttls");
    let password = write(&dir, "smtp.password", "Sm7p-pa55word\n");
    let target = target();
    let listen = free_port();
    let config = format!(
        "{}[[notifiers]]\nname = \"mail\"\ntype = \"email\"\ndefault = true\nsmtp_host = \"127.0.0.1\"\nsmtp_port = {port}\n\
         starttls = true\nusername = \"bastion\"\npassword_file = \"{}\"\nfrom = \"bastion <bastion@example.com>\"\nto = [\"oncall@example.com\"]\nca_file = \"{}\"\n",
        base(listen, &target),
        password.display(),
        ca_file.display()
    );
    let agent = start(listen, &config);
    fail(&target);
    let outbox = dir.join("outbox");
    let first = outbox.join("1.eml");
    let deadline = Instant::now() + WAIT;
    while !first.exists() {
        assert!(
            Instant::now() < deadline,
            "no mail arrived:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let mail = std::fs::read_to_string(&first).unwrap();
    assert!(
        mail.contains("Subject: [bastion] [FAILING] web: 1 of 1 instances failing"),
        "{mail}"
    );
    assert!(mail.contains("To: oncall@example.com"), "{mail}");
    assert!(
        mail.contains("From: bastion <bastion@example.com>"),
        "{mail}"
    );
    assert!(mail.contains("/api/v1/checks/web"), "the link: {mail}");
    let auth = std::fs::read_to_string(outbox.join("auth.log")).unwrap();
    assert!(auth.lines().all(|l| l.ends_with("ok tls=True")), "{auth}");
    recover(&target);
    let second = outbox.join("2.eml");
    while !second.exists() {
        assert!(
            Instant::now() < deadline,
            "no resolve mail:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let mail = std::fs::read_to_string(&second).unwrap();
    assert!(
        mail.contains("Subject: [bastion] [RESOLVED] web is OK again"),
        "{mail}"
    );
    assert_eq!(sample(&agent, &outcome("mail", "sent")), 2.0);

    // A wrong password is an SMTP 535, a permanent refusal: not retried.
    std::fs::write(&password, "wrong\n").unwrap();
    let mut out = Command::new(env!("CARGO_BIN_EXE_bastion"))
        .args(["notify", "test", "--notifier", "mail", "--config"])
        .arg(write(&dir, "wrong.toml", &config))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&std::mem::take(&mut out.stderr)).to_string();
    assert!(stderr.contains("535"), "{stderr}");
    assert!(
        !stderr.contains("wrong"),
        "the password is not shown: {stderr}"
    );
}

#[test]
fn email_arrives_over_tls_from_the_first_byte() {
    let dir = scratch_dir("notify-smtps");
    let (_smtp, port, ca_file) = smtp_server(&dir, "bastion", "Sm7p-pa55word", "tls");
    let password = write(&dir, "smtp.password", "Sm7p-pa55word\n");
    let config = write(
        &dir,
        "smtps.toml",
        &format!(
            "[[notifiers]]\nname = \"mail\"\ntype = \"email\"\nsmtp_host = \"127.0.0.1\"\nsmtp_port = {port}\n\
             starttls = false\nusername = \"bastion\"\npassword_file = \"{}\"\nfrom = \"bastion@example.com\"\nto = [\"oncall@example.com\"]\nca_file = \"{}\"\n",
            password.display(),
            ca_file.display()
        ),
    );
    let out = Command::new(env!("CARGO_BIN_EXE_bastion"))
        .args(["notify", "test", "--notifier", "mail", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("SMTP 250"));
    let mail = std::fs::read_to_string(dir.join("outbox/1.eml")).unwrap();
    assert!(
        mail.contains("Subject: [bastion] bastion test notification"),
        "{mail}"
    );
    let auth = std::fs::read_to_string(dir.join("outbox/auth.log")).unwrap();
    assert_eq!(auth.trim(), "PLAIN ok tls=True");
}

#[test]
fn notify_test_exits_with_the_receivers_answer() {
    let hook = Receiver::start(Reply::new(202, "queued"));
    let dir = scratch_dir("notify-cli");
    let config = |url: &str| {
        write(
            &dir,
            "notify.toml",
            &format!("[[notifiers]]\nname = \"hook\"\ntype = \"webhook\"\nurl = \"{url}/in\"\n"),
        )
    };
    let run = |path: &Path, name: &str| {
        Command::new(env!("CARGO_BIN_EXE_bastion"))
            .args(["notify", "test", "--notifier", name, "--config"])
            .arg(path)
            .output()
            .unwrap()
    };
    let path = config(&hook.url());
    let out = run(&path, "hook");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("HTTP 202: queued"), "{stdout}");
    let body = hook.received()[0].json();
    assert_eq!(body["event"], "test");
    assert_eq!(body["version"], 1);

    hook.then(vec![Reply::new(403, "invalid token")]);
    let out = run(&path, "hook");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("HTTP 403: invalid token"), "{stderr}");

    let refused = format!("http://127.0.0.1:{}", free_port());
    let out = run(&config(&refused), "hook");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot connect"));

    // PagerDuty: an info trigger, resolved at once so that no incident stays open.
    let pd = Receiver::start(Reply::new(202, r#"{"status":"success"}"#));
    let key = write(&dir, "pd.key", "R0UTINGKEY0123456789abcdef012345");
    let pd_config = write(
        &dir,
        "pd.toml",
        &format!(
            "[[notifiers]]\nname = \"oncall\"\ntype = \"pagerduty\"\nrouting_key_file = \"{}\"\nurl = \"{}/v2/enqueue\"\n",
            key.display(),
            pd.url()
        ),
    );
    let out = run(&pd_config, "oncall");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let events: Vec<serde_json::Value> = pd.received().iter().map(Received::json).collect();
    assert_eq!(events.len(), 2);
    assert_eq!(events[0]["event_action"], "trigger");
    assert_eq!(events[0]["payload"]["severity"], "info");
    assert_eq!(events[1]["event_action"], "resolve");
    assert_eq!(events[0]["dedup_key"], events[1]["dedup_key"]);
    for event in &events {
        assert_pagerduty_event(event, "R0UTINGKEY0123456789abcdef012345");
    }

    let out = run(&path, "nobody");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no notifier is named `nobody`"));
}

#[test]
fn notifier_and_maintenance_mistakes_are_config_errors_that_say_what_to_fix() {
    let base = "[[checks]]\nname = \"web\"\ntype = \"http\"\nurl = \"http://127.0.0.1/\"\ninterval = \"10s\"\n";
    let hook = |extra: &str| {
        format!("[[notifiers]]\nname = \"hook\"\ntype = \"webhook\"\nurl = \"http://127.0.0.1/\"\n{extra}")
    };
    crate::common::assert_config_errors(
        base,
        &[
            (&hook("bogus = 1\n"), "test.toml:10:1: unknown field `bogus`"),
            (
                "[[notifiers]]\nname = \"x\"\ntype = \"sms\"\n",
                "unknown variant `sms`, expected one of `alertmanager`, `webhook`, `slack`, `pagerduty`, `email`",
            ),
            (&format!("{}{}", hook(""), hook("")), "notifier name `hook` is used twice"),
            (&hook("url_file = \"/x\"\n"), "set exactly one of url and url_file"),
            (&hook("queue_size = 0\n"), "queue_size must be at least 1"),
            (&hook("max_attempts = 0\n"), "max_attempts must be at least 1"),
            (
                "[[notifiers]]\nname = \"am\"\ntype = \"alertmanager\"\nurl = \"http://x\"\nrepeat_interval = \"200000000000y\"\n",
                "repeat_interval must be between 1s and 30days",
            ),
            (
                "[[notifiers]]\nname = \"am\"\ntype = \"alertmanager\"\nurl = \"ftp://x\"\n",
                "url must start with http:// or https://",
            ),
            (
                "[[notifiers]]\nname = \"am\"\ntype = \"alertmanager\"\nurl = \"http://x\"\nlabels = { severity = \"low\" }\n",
                "labels.severity is set by bastion",
            ),
            (
                "[[notifiers]]\nname = \"m\"\ntype = \"email\"\nsmtp_host = \"h\"\nfrom = \"a@b.c\"\nto = []\n",
                "to needs at least one address",
            ),
            (
                "[[notifiers]]\nname = \"m\"\ntype = \"email\"\nsmtp_host = \"h\"\nfrom = \"a@b.c\"\nto = [\"x\"]\nusername = \"u\"\n",
                "username and password_file go together",
            ),
            (
                "[[maintenance]]\nname = \"w\"\nchecks = [\"*\"]\nstart = \"2026-01-01T00:00:00Z\"\nat = \"02:00\"\nduration = \"1h\"\n",
                "not both",
            ),
            (
                "[[maintenance]]\nname = \"w\"\nchecks = [\"*\"]\nstart = \"2026-01-02T00:00:00Z\"\nend = \"2026-01-01T00:00:00Z\"\n",
                "end must be after start",
            ),
            (
                "[[maintenance]]\nname = \"w\"\nchecks = [\"*\"]\nstart = \"tomorrow\"\nend = \"2026-01-01T00:00:00Z\"\n",
                "is not an RFC 3339 time with an offset",
            ),
            (
                "[[maintenance]]\nname = \"w\"\nchecks = [\"*\"]\nat = \"02:00\"\nduration = \"1h\"\ndays = [\"someday\"]\n",
                "day `someday` is not one of mon",
            ),
            (
                "[[maintenance]]\nname = \"w\"\nchecks = [\"*\"]\nat = \"02:00\"\nduration = \"8d\"\n",
                "at most 7d",
            ),
            (
                "[[maintenance]]\nname = \"w\"\nchecks = [\"*\"]\nat = \"02:00\"\nduration = \"1h\"\ntime_zone = \"Mars/Olympus\"\n",
                "is not a known IANA time zone",
            ),
        ],
    );
    let notify = |line: &str| {
        base.replace(
            "interval = \"10s\"\n",
            &format!("interval = \"10s\"\n{line}"),
        )
    };
    let error = crate::common::config_error(&notify("notify = [\"nobody\"]\n"));
    assert!(
        error.contains("check `web` notifies `nobody`, but no [[notifiers]] entry has that name"),
        "{error}"
    );
    let error = crate::common::config_error(&notify("notify_on = [\"warn\"]\n"));
    assert!(error.contains("notify_on must include \"fail\""), "{error}");
}

#[test]
fn a_missing_secret_file_is_a_config_error_before_the_first_outage() {
    let dir = scratch_dir("notify-missing");
    let listen = free_port();
    let config = write(
        &dir,
        "bastion.toml",
        &format!(
            "[agent]\nlisten = \"127.0.0.1:{listen}\"\n\
             [[notifiers]]\nname = \"oncall\"\ntype = \"pagerduty\"\nrouting_key_file = \"{}\"\n",
            dir.join("absent.key").display()
        ),
    );
    for args in [&["validate"][..], &["run"][..]] {
        let out = Command::new(env!("CARGO_BIN_EXE_bastion"))
            .args(args)
            .arg("--config")
            .arg(&config)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("notifier `oncall`: cannot read") && stderr.contains("absent.key"),
            "{args:?}: {stderr}"
        );
    }
}

#[test]
fn secrets_appear_in_no_log_line_api_answer_metric_or_error() {
    let target = target();
    let dir = scratch_dir("notify-secrets");
    // Every receiver refuses connections, so errors are logged for each, at debug level.
    let refused = |path: &str| format!("http://127.0.0.1:{}{path}", free_port());
    let slack_token = "T0SECRET/B0SECRET/SLACKTOKENSECRET";
    let routing_key = "PDROUTINGKEYSECRET0123456789abcd";
    let hmac = "HMACKEYSECRET";
    let hook_token = "HOOKTOKENSECRET";
    let smtp_password = "SMTPPASSWORDSECRET";
    let files = [
        write(
            &dir,
            "slack.url",
            &refused(&format!("/services/{slack_token}")),
        ),
        write(&dir, "pd.key", routing_key),
        write(&dir, "hmac.key", hmac),
        write(
            &dir,
            "hook.url",
            &refused(&format!("/in?token={hook_token}")),
        ),
        write(&dir, "smtp.password", smtp_password),
    ];
    let listen = free_port();
    let config = format!(
        "{}[[notifiers]]\nname = \"chat\"\ntype = \"slack\"\ndefault = true\nurl_file = \"{}\"\nretry_backoff = \"100ms\"\nmax_attempts = 2\n\
         [[notifiers]]\nname = \"oncall\"\ntype = \"pagerduty\"\ndefault = true\nrouting_key_file = \"{}\"\nurl = \"{}\"\nretry_backoff = \"100ms\"\nmax_attempts = 2\n\
         [[notifiers]]\nname = \"hook\"\ntype = \"webhook\"\ndefault = true\nurl_file = \"{}\"\nsecret_file = \"{}\"\nretry_backoff = \"100ms\"\nmax_attempts = 2\n\
         [[notifiers]]\nname = \"mail\"\ntype = \"email\"\ndefault = true\nsmtp_host = \"127.0.0.1\"\nsmtp_port = {}\nusername = \"u\"\npassword_file = \"{}\"\nfrom = \"b@example.com\"\nto = [\"o@example.com\"]\nretry_backoff = \"100ms\"\nmax_attempts = 2\n",
        base(listen, &target),
        files[0].display(),
        files[1].display(),
        refused("/v2/enqueue"),
        files[3].display(),
        files[2].display(),
        free_port(),
        files[4].display()
    );
    let mut agent = Bastion::start_with_env(
        "notify-secrets",
        listen,
        &config,
        &["run"],
        &[("RUST_LOG", "debug")],
    );
    agent.wait_ready();
    fail(&target);
    let deadline = Instant::now() + WAIT;
    for notifier in ["chat", "oncall", "hook", "mail"] {
        while sample(&agent, &outcome(notifier, "failed")) < 1.0 {
            assert!(
                Instant::now() < deadline,
                "{notifier} never gave up:\n{}",
                agent.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let api = crate::common::http_request_blocking(listen, "GET", "/api/v1/checks", &[])
        .unwrap()
        .1;
    let metrics = agent.metrics().unwrap();
    let test_out = Command::new(env!("CARGO_BIN_EXE_bastion"))
        .args(["notify", "test", "--notifier", "chat", "--config"])
        .arg(agent.config_path())
        .env("RUST_LOG", "debug")
        .output()
        .unwrap();
    assert_eq!(test_out.status.code(), Some(1));
    agent.terminate();
    let log = agent.log();
    assert!(
        log.contains("notification not delivered; giving up"),
        "{log}"
    );
    let outputs = [
        ("the log", log),
        ("the API", api),
        ("/metrics", metrics),
        (
            "notify test",
            String::from_utf8_lossy(&test_out.stderr).to_string(),
        ),
    ];
    for (what, text) in &outputs {
        for secret in [
            "SLACKTOKENSECRET",
            "T0SECRET",
            routing_key,
            hmac,
            hook_token,
            smtp_password,
        ] {
            assert!(!text.contains(secret), "{what} shows {secret}:\n{text}");
        }
    }
}

#[test]
fn a_reload_keeps_pending_notifications_and_the_episode() {
    let target = target();
    let hook = Receiver::start(Reply::new(202, ""));
    let listen = free_port();
    let config = format!(
        "{}[[notifiers]]\nname = \"hook\"\ntype = \"webhook\"\ndefault = true\nurl = \"{}/\"\nretry_backoff = \"1s\"\nretry_backoff_max = \"1s\"\nmax_attempts = 100\n",
        base(listen, &target),
        hook.url()
    );
    let agent = start(listen, &config);
    // The receiver is down: the firing stays pending, retried every second.
    hook.set_default(Reply::new(503, "down"));
    fail(&target);
    hook.wait_for("a refused attempt", WAIT, |r| !r.is_empty());
    // Reload with another check added: `web` is unchanged.
    let reloaded = format!(
        "{config}[[checks]]\nname = \"other\"\ntype = \"http\"\nurl = \"{}/other\"\ninterval = \"1m\"\n",
        target.url()
    );
    std::fs::write(agent.config_path(), reloaded).unwrap();
    agent.signal("HUP");
    let deadline = Instant::now() + WAIT;
    while !agent.log().contains("config reloaded") {
        assert!(Instant::now() < deadline, "no reload:\n{}", agent.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    hook.set_default(Reply::new(202, ""));
    let received = hook.wait_for("the pending firing", WAIT, |r| has_event(r, "firing"));
    let firing_id = events(&received, "episode_id")[0].clone();
    recover(&target);
    let received = hook.wait_for("the resolve", WAIT, |r| has_event(r, "resolved"));
    assert_eq!(events(&received, "event"), ["firing", "resolved"]);
    assert_eq!(
        events(&received, "episode_id"),
        [firing_id.clone(), firing_id],
        "the same episode across the reload"
    );
}

#[test]
fn ha_failover_mid_episode_resolves_with_the_same_dedup_key() {
    let server = NatsServer::start();
    let target = target();
    let hook = Receiver::start(Reply::new(202, ""));
    let runner_listen = free_port();
    let nats = format!(
        "[bus]\nkind = \"nats\"\n[bus.nats]\nurl = \"{}\"\n",
        server.url()
    );
    let mut runner = Bastion::start(
        "ha-runner",
        runner_listen,
        &format!(
            "[agent]\nid = \"runner\"\nlisten = \"127.0.0.1:{runner_listen}\"\n{nats}\
             [[notifiers]]\nname = \"hook\"\ntype = \"webhook\"\ndefault = true\nurl = \"{}/\"\n\
             [[notifiers]]\nname = \"oncall\"\ntype = \"pagerduty\"\nrouting_key_file = \"/nonexistent/pd.key\"\n",
            hook.url()
        ),
        &["run", "--role", "runner"],
    );
    runner.wait_ready();
    let mut checkers: Vec<Bastion> = ["c1", "c2"]
        .iter()
        .map(|name| {
            let listen = free_port();
            let config = format!(
                "{}{nats}[checker]\nha = true\nlease_ttl = \"3s\"\n\
                 [[notifiers]]\nname = \"hook\"\ntype = \"webhook\"\ndefault = true\nurl = \"{}/\"\n",
                base(listen, &target).replace("notify-agent", name),
                hook.url()
            );
            let mut checker = Bastion::start(name, listen, &config, &["run", "--role", "checker"]);
            checker.wait_ready();
            checker
        })
        .collect();
    let deadline = Instant::now() + WAIT;
    let leader = loop {
        let leading: Vec<f64> = checkers
            .iter()
            .map(|c| c.sample("bastion_checker_leader").unwrap_or(0.0))
            .collect();
        if let Some(leader) = leading.iter().position(|l| *l == 1.0) {
            break leader;
        }
        assert!(Instant::now() < deadline, "no leader");
        std::thread::sleep(Duration::from_millis(100));
    };
    // Both checkers see results before the failure begins.
    let deadline = Instant::now() + WAIT;
    while checkers.iter().any(|c| {
        let api = crate::common::http_request_blocking(c.listen, "GET", "/api/v1/checks", &[]);
        !api.is_some_and(|(_, body)| body.contains("\"passing\":true"))
    }) {
        assert!(Instant::now() < deadline, "checkers not steady");
        std::thread::sleep(Duration::from_millis(100));
    }
    fail(&target);
    hook.wait_for("the firing from the leader", WAIT, |r| {
        has_event(r, "firing")
    });
    let standby = 1 - leader;
    let deadline = Instant::now() + WAIT;
    while checkers[standby].sample("bastion_check_state{check=\"web\",state=\"FAIL\"}") != Some(1.0)
    {
        assert!(Instant::now() < deadline, "the standby never saw FAIL");
        std::thread::sleep(Duration::from_millis(50));
    }
    checkers[leader].kill();
    let killed = Instant::now();
    let deadline = Instant::now() + WAIT;
    while checkers[standby].sample("bastion_checker_leader") != Some(1.0) {
        assert!(Instant::now() < deadline, "the standby never took over");
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "standby leads {:?} after the leader was killed",
        killed.elapsed()
    );
    recover(&target);
    let received = hook.wait_for("the resolve from the new leader", WAIT, |r| {
        has_event(r, "resolved")
    });
    let kinds = events(&received, "event");
    let ids: BTreeSet<String> = events(&received, "episode_id").into_iter().collect();
    assert_eq!(
        ids.len(),
        1,
        "one episode id across the failover: {kinds:?} {ids:?}"
    );
    assert_eq!(kinds.last().map(String::as_str), Some("resolved"));
    assert!(kinds.iter().all(|k| k == "firing" || k == "resolved"));
    let agents: BTreeSet<String> = events(&received, "agent").into_iter().collect();
    assert!(
        agents.len() == 2,
        "both checkers sent (before and after): {agents:?}"
    );
    assert_eq!(
        runner.sample(&outcome("hook", "sent")),
        None,
        "runners never notify"
    );
    assert!(!runner.log().contains("notification"), "{}", runner.log());
}

/// An episode open when the agent stops is resumed at the next start (saved beside the
/// history database): the check still failing sends no second trigger, and its recovery is
/// resolved under the id the trigger carried, so no receiver is left with an open incident.
#[test]
fn an_episode_open_across_a_restart_keeps_its_id_and_is_resolved() {
    let target = target();
    let hook = Receiver::start(Reply::new(202, "accepted"));
    let dir = scratch_dir("notify-restart");
    let listen = free_port();
    let config = format!(
        "{}[[notifiers]]\nname = \"hook\"\ntype = \"webhook\"\ndefault = true\nurl = \"{}/hook\"\n\
         [history]\npath = \"{}\"\n",
        base(listen, &target),
        hook.url(),
        dir.join("history.db").display()
    );
    let mut first = start(listen, &config);
    fail(&target);
    let firing = hook.wait_for("the firing notification", WAIT, |r| has_event(r, "firing"));
    assert_eq!(events(&firing, "event"), ["firing"]);
    let id = events(&firing, "episode_id")[0].clone();
    assert_eq!(
        first.terminate().and_then(|s| s.code()),
        Some(0),
        "{}",
        first.log()
    );
    let saved = std::fs::read_to_string(dir.join("episodes.json")).unwrap();
    assert!(saved.contains(&id), "{saved}");

    let second = start(listen, &config);
    // Still failing after the restart: the resumed episode goes on, no new trigger.
    let deadline = Instant::now() + WAIT;
    while sample(&second, "bastion_check_state{check=\"web\",state=\"FAIL\"}") != 1.0 {
        assert!(
            Instant::now() < deadline,
            "web never failed again: {}",
            second.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(2));
    recover(&target);
    let received = hook.wait_for("the resolve", WAIT, |r| has_event(r, "resolved"));
    assert_eq!(
        events(&received, "event"),
        ["firing", "resolved"],
        "one trigger before the restart, its resolve after: {}",
        second.log()
    );
    assert_eq!(events(&received, "episode_id"), [id.clone(), id]);
    assert!(second
        .log()
        .contains("failure episode resumed from the last run"));
}

/// A check removed while the agent was down has its saved episode resolved at the next start.
#[test]
fn an_episode_of_a_check_removed_while_down_is_resolved_at_start() {
    let target = target();
    let hook = Receiver::start(Reply::new(202, "accepted"));
    let dir = scratch_dir("notify-restart-removed");
    let listen = free_port();
    let rest = format!(
        "[[notifiers]]\nname = \"hook\"\ntype = \"webhook\"\ndefault = true\nurl = \"{}/hook\"\n\
         [history]\npath = \"{}\"\n",
        hook.url(),
        dir.join("history.db").display()
    );
    let config = format!("{}{rest}", base(listen, &target));
    let mut first = start(listen, &config);
    fail(&target);
    let firing = hook.wait_for("the firing notification", WAIT, |r| has_event(r, "firing"));
    let id = events(&firing, "episode_id")[0].clone();
    assert_eq!(first.terminate().and_then(|s| s.code()), Some(0));

    let renamed =
        format!("{}{rest}", base(listen, &target)).replace("name = \"web\"", "name = \"web2\"");
    let second = start(listen, &renamed);
    let received = hook.wait_for("the resolve", WAIT, |r| has_event(r, "resolved"));
    let resolved: Vec<_> = received
        .iter()
        .map(|r| r.json())
        .filter(|body| body["event"] == "resolved")
        .collect();
    assert_eq!(resolved.len(), 1, "{}", second.log());
    assert_eq!(resolved[0]["episode_id"], id.as_str());
    assert_eq!(resolved[0]["check"]["name"], "web");
}
