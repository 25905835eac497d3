//! Failure episodes on the worst days, through the real binary: a receiver that is down when
//! the agent restarts, a crash right after a trigger, a reload in the middle of an outage, a
//! hostile target, every HA checker restarting at once. Each test checks what a receiver (a
//! local webhook or Slack stand-in) got, and what history says, against what the check did.

use crate::common::nats::{free_port, NatsServer};
use crate::common::process::{scratch_dir, Bastion};
use crate::common::receiver::{Receiver, Reply};
use crate::notify::{base, events, fail, has_event, outcome, recover, sample, start, target, WAIT};
use std::time::{Duration, Instant};

fn webhook(url: &str, extra: &str) -> String {
    format!(
        "[[notifiers]]\nname = \"hook\"\ntype = \"webhook\"\ndefault = true\nurl = \"{url}/hook\"\n{extra}"
    )
}

fn history_in(dir: &std::path::Path) -> String {
    format!(
        "[history]\npath = \"{}\"\n",
        dir.join("history.db").display()
    )
}

fn wait_until(what: &str, agent: &Bastion, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: {}", agent.log());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The JSON of an endpoint of the agent.
fn api(agent: &Bastion, path: &str) -> serde_json::Value {
    let (_, body) = crate::common::process::http_get_blocking(agent.listen, path)
        .unwrap_or_else(|| panic!("{path} answers"));
    serde_json::from_str(&body).unwrap_or_else(|_| panic!("{path}: {body}"))
}

/// A receiver down (500) through a trigger's retries, the agent stopped meanwhile: the alert
/// in its retry loop is logged and counted as unsent, the saved state does not count the
/// receiver as told, and after the restart (receiver fixed, check still failing) the firing
/// arrives, then its resolve, under one id. Before: the receiver got only the resolve.
#[test]
fn an_alert_the_receiver_never_accepted_is_sent_after_a_restart() {
    let target = target();
    let hook = Receiver::start(Reply::new(500, "down for maintenance"));
    let dir = scratch_dir("episodes-unsent");
    let listen = free_port();
    let config = format!(
        "{}{}{}",
        base(listen, &target),
        webhook(
            &hook.url(),
            "retry_backoff = \"200ms\"\nretry_backoff_max = \"1s\"\n"
        ),
        history_in(&dir)
    );
    let mut first = start(listen, &config);
    fail(&target);
    hook.wait_for("four failed attempts", WAIT, |r| r.len() >= 4);
    assert_eq!(first.terminate().and_then(|s| s.code()), Some(0));
    let log = first.log();
    assert!(
        log.contains("stopping with notifications not delivered"),
        "the alert being retried at stop is logged: {log}"
    );
    let saved = std::fs::read_to_string(dir.join("episodes.json")).unwrap();
    assert!(
        !saved.contains("\"hook\""),
        "the hook never accepted: {saved}"
    );
    let id = hook.received()[0].json()["episode_id"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(saved.contains(&id), "the episode is saved: {saved}");

    hook.set_default(Reply::new(202, "accepted"));
    let second = start(listen, &config);
    let received = hook.wait_for("the firing after the restart", WAIT, |r| {
        has_event(r, "firing")
    });
    assert_eq!(events(&received, "episode_id"), std::slice::from_ref(&id));
    recover(&target);
    let received = hook.wait_for("the resolve", WAIT, |r| has_event(r, "resolved"));
    assert_eq!(events(&received, "event"), ["firing", "resolved"]);
    assert_eq!(events(&received, "episode_id"), [id.clone(), id]);
    assert!(
        sample(&second, &outcome("hook", "sent")) >= 2.0,
        "{:?}",
        second.metrics()
    );
}

/// SIGKILL right after the first trigger: the episode was saved before the trigger left, so
/// the restart continues it (never a trigger under a new id) and resolves it. Whether the
/// receiver's acceptance was saved before the kill is not known, so it may get the trigger
/// again: under the same id, which every receiver deduplicates.
#[test]
fn a_crash_right_after_the_first_trigger_resumes_the_same_episode() {
    let target = target();
    let hook = Receiver::start(Reply::new(202, "accepted"));
    let dir = scratch_dir("episodes-crash");
    let listen = free_port();
    let config = format!(
        "{}{}{}",
        base(listen, &target),
        webhook(&hook.url(), ""),
        history_in(&dir)
    );
    let mut first = start(listen, &config);
    fail(&target);
    let firing = hook.wait_for("the trigger", WAIT, |r| has_event(r, "firing"));
    first.kill();
    let id = events(&firing, "episode_id")[0].clone();

    let second = start(listen, &config);
    // A run after the restart, still failing.
    wait_until("web is probed again", &second, || {
        second
            .metrics()
            .is_some_and(|text| text.contains("probe_success{check=\"web\""))
    });
    assert_eq!(
        sample(&second, "bastion_check_state{check=\"web\",state=\"FAIL\"}"),
        1.0
    );
    recover(&target);
    let received = hook.wait_for("the resolve", WAIT, |r| has_event(r, "resolved"));
    let kinds = events(&received, "event");
    assert_eq!(kinds.last().map(String::as_str), Some("resolved"));
    assert!(
        kinds[..kinds.len() - 1].iter().all(|k| k == "firing"),
        "{kinds:?}"
    );
    assert!(
        events(&received, "episode_id")
            .iter()
            .all(|other| *other == id),
        "one episode across the crash: {}",
        second.log()
    );
}

/// A reload that changes only where a check is filed, how often it runs and its thresholds
/// keeps its episode and incident; one that changes what it probes ends them, saying so
/// ("check changed", never "OK again"), and the new definition starts its own.
#[test]
fn a_reload_keeps_the_episode_unless_it_changes_what_is_probed() {
    let target = target();
    let hook = Receiver::start(Reply::new(202, "accepted"));
    let dir = scratch_dir("episodes-reload");
    let listen = free_port();
    let rest = format!("{}{}", webhook(&hook.url(), ""), history_in(&dir));
    let config = format!("{}{rest}", base(listen, &target));
    let agent = start(listen, &config);
    fail(&target);
    let firing = hook.wait_for("the trigger", WAIT, |r| has_event(r, "firing"));
    let id = events(&firing, "episode_id")[0].clone();
    wait_until("the incident opens", &agent, || {
        api(&agent, "/api/v1/incidents?check=web")
            .as_array()
            .is_some_and(|all| all.len() == 1)
    });

    let reload = |config: String, count: usize| {
        std::fs::write(agent.config_path(), config).unwrap();
        agent.signal("HUP");
        wait_until("the reload", &agent, || {
            agent.log().matches("config reloaded").count() >= count
        });
    };
    let filed = format!("{}{rest}", base(listen, &target)).replace(
        "interval = \"1s\"",
        "interval = \"2s\"\ngroup = \"edge\"\nmin_failing_count = 1",
    );
    reload(filed.clone(), 1);
    let moved = filed.replace("/health", "/health2");
    reload(moved, 2);
    let received = hook.wait_for("the end and the new trigger", WAIT, |r| {
        events(r, "event").len() >= 3
    });
    let bodies: Vec<serde_json::Value> = received
        .iter()
        .filter(|r| r.status == 202)
        .map(|r| r.json())
        .collect();
    assert_eq!(
        bodies
            .iter()
            .map(|b| b["event"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["firing", "resolved", "firing"],
        "nothing between the trigger and the change of target: {}",
        agent.log()
    );
    assert_eq!(bodies[1]["episode_id"], id.as_str());
    assert_eq!(bodies[1]["end_reason"], "check_changed");
    let summary = bodies[1]["summary"].as_str().unwrap();
    assert!(!summary.contains("OK again"), "{summary}");
    assert!(summary.contains("changed"), "{summary}");
    assert_ne!(
        bodies[2]["episode_id"],
        id.as_str(),
        "the new definition's own"
    );

    wait_until("the new incident is written", &agent, || {
        api(&agent, "/api/v1/incidents?check=web")
            .as_array()
            .is_some_and(|all| all.len() == 2)
    });
    let incidents = api(&agent, "/api/v1/incidents?check=web");
    let incidents = incidents.as_array().unwrap();
    // Newest first.
    assert_eq!(incidents[1]["episode_id"], id.as_str());
    assert_eq!(incidents[1]["end_reason"], "check_changed");
    assert_eq!(incidents[0]["open"], true);
}

/// The target's own text in a failure (here its body, quoted by a failing assertion) holds
/// Slack markup: it reaches Slack escaped, so it pings nobody and plants no link.
#[test]
fn a_hostile_body_reaches_slack_escaped() {
    let target = Receiver::start(Reply::new(200, "ok"));
    let slack = Receiver::start(Reply::new(200, "ok"));
    let listen = free_port();
    let config = format!(
        "[agent]\nlisten = \"127.0.0.1:{listen}\"\n\
         [[checks]]\nname = \"web\"\ntype = \"http\"\nurl = \"{}/health\"\ninterval = \"1s\"\nmin_failing_time = \"0s\"\n\
         [[checks.assertions]]\nkey = \"body\"\nrelationship = \"contain\"\noperand = \"ok\"\n\
         [[notifiers]]\nname = \"chat\"\ntype = \"slack\"\ndefault = true\nurl = \"{}/services/T/B/X\"\n",
        target.url(),
        slack.url()
    );
    let _agent = start(listen, &config);
    target.set_default(Reply::new(
        200,
        "<!channel> <https://evil.example/reset|Reset your password> & <@U0123>",
    ));
    let received = slack.wait_for("the Slack message", WAIT, |r| !r.is_empty());
    let body = String::from_utf8_lossy(&received[0].body).to_string();
    assert!(body.contains("&lt;!channel&gt;"), "quoted, escaped: {body}");
    for markup in ["<!channel>", "<https://evil", "<@U0123>"] {
        assert!(!body.contains(markup), "{markup} reached Slack: {body}");
    }
}

/// Every HA checker restarts at once while an incident is open, and the check recovers
/// before they are back: the leader closes the incident (recovered) instead of leaving it
/// open for ever.
#[test]
fn an_incident_ends_when_every_ha_checker_restarts_and_the_check_recovered_meanwhile() {
    let server = NatsServer::start();
    let target = target();
    let database = crate::history::TestDatabase::create();
    let nats = format!(
        "[bus]\nkind = \"nats\"\n[bus.nats]\nurl = \"{}\"\n",
        server.url()
    );
    let runner_listen = free_port();
    let mut runner = Bastion::start(
        "ha-runner",
        runner_listen,
        &format!("[agent]\nid = \"runner\"\nlisten = \"127.0.0.1:{runner_listen}\"\n{nats}"),
        &["run", "--role", "runner"],
    );
    runner.wait_ready();
    let checker_configs: Vec<(u16, String)> = ["c1", "c2"]
        .iter()
        .map(|name| {
            let listen = free_port();
            let state = scratch_dir(&format!("ha-state-{name}"));
            let config = format!(
                "{}{nats}[checker]\nha = true\nlease_ttl = \"3s\"\n\
                 [history]\nurl = \"{}\"\npath = \"{}\"\n",
                base(listen, &target).replace("notify-agent", name),
                database.url(),
                state.join("history.db").display()
            );
            (listen, config)
        })
        .collect();
    let start_all = || -> Vec<Bastion> {
        checker_configs
            .iter()
            .enumerate()
            .map(|(index, (listen, config))| {
                let mut checker = Bastion::start(
                    &format!("ha-c{index}"),
                    *listen,
                    config,
                    &["run", "--role", "checker"],
                );
                checker.wait_ready();
                checker
            })
            .collect()
    };
    let incidents = |checker: &Bastion| api(checker, "/api/v1/incidents?check=web");
    let mut checkers = start_all();
    fail(&target);
    wait_until("an open incident", &checkers[0], || {
        incidents(&checkers[0])
            .as_array()
            .is_some_and(|all| all.len() == 1 && all[0]["open"] == true)
    });
    // Both follow the episode before they stop.
    for checker in &checkers {
        wait_until("FAIL on every checker", checker, || {
            sample(checker, "bastion_check_state{check=\"web\",state=\"FAIL\"}") == 1.0
        });
    }
    for checker in &mut checkers {
        assert_eq!(checker.terminate().and_then(|s| s.code()), Some(0));
    }
    recover(&target);
    let checkers = start_all();
    wait_until("the incident ends", &checkers[0], || {
        incidents(&checkers[0])
            .as_array()
            .is_some_and(|all| all.len() == 1 && all[0]["open"] == false)
    });
    let all = incidents(&checkers[1]);
    assert_eq!(all[0]["end_reason"], "recovered", "{all}");
    assert_eq!(all[0]["interrupted"], false);
    drop(checkers);
    drop(runner);
}

/// An upgrade in the middle of an outage: the open episode the previous version saved in
/// `notifications.json` is taken over, so the check still failing opens no second episode
/// under a new id, and its recovery resolves the episode its receivers know. Version 1 saved
/// a receiver as told once its trigger was queued, so the trigger may come again, under the
/// same id. The old file is renamed only by a start that finds the state saved anew.
#[test]
fn an_upgrade_takes_over_the_episodes_an_earlier_version_saved() {
    let target = target();
    let hook = Receiver::start(Reply::new(202, "accepted"));
    let dir = scratch_dir("episodes-upgrade");
    let started = std::time::SystemTime::now() - Duration::from_secs(600);
    let id = "0123456789abcdef0123456789abcdef";
    std::fs::write(
        dir.join("notifications.json"),
        serde_json::json!({
            "version": 1,
            "episodes": [{
                "check": "web", "id": id,
                "started_at": humantime::format_rfc3339_micros(started).to_string(),
                "severity": "critical", "state": "FAIL", "check_type": "http",
                "failing": 1, "instances": 1, "routes": ["hook"], "told": ["hook"]
            }]
        })
        .to_string(),
    )
    .unwrap();
    let listen = free_port();
    let config = format!(
        "{}{}{}",
        base(listen, &target),
        webhook(&hook.url(), ""),
        history_in(&dir)
    );
    fail(&target);
    let agent = start(listen, &config);
    wait_until("web is probed", &agent, || {
        agent
            .metrics()
            .is_some_and(|text| text.contains("probe_success{check=\"web\""))
    });
    recover(&target);
    let received = hook.wait_for("the resolve", WAIT, |r| has_event(r, "resolved"));
    let told = events(&received, "event");
    assert_eq!(
        told.last().map(String::as_str),
        Some("resolved"),
        "{told:?}"
    );
    assert!(
        told.iter().filter(|event| *event == "resolved").count() == 1 && told.len() <= 2,
        "one resolve, at most the trigger again before it: {told:?}\n{}",
        agent.log()
    );
    assert!(
        events(&received, "episode_id")
            .iter()
            .all(|episode| episode == id),
        "{received:?}"
    );
    wait_until("the taken-over state is saved anew", &agent, || {
        dir.join("episodes.json").exists()
    });
    assert!(dir.join("notifications.json").exists());
    // A clean stop: what was delivered is saved as delivered (after a crash the resolve
    // could come once more, at least once being the rule).
    let mut agent = agent;
    agent.terminate().expect("the agent stops");
    let agent = start(listen, &config);
    wait_until("web is probed again", &agent, || {
        agent
            .metrics()
            .is_some_and(|text| text.contains("probe_success{check=\"web\""))
    });
    assert!(dir.join("notifications.json.migrated").exists());
    assert!(!dir.join("notifications.json").exists());
    assert_eq!(
        hook.received().len(),
        received.len(),
        "nothing new after the restart"
    );
}

/// Two agents given one state directory would each overwrite what the other saved (and
/// both resume the same episodes): the second refuses to start, saying what to change,
/// and the first keeps running.
#[test]
fn a_second_agent_on_the_same_saved_state_refuses_to_start() {
    let target = target();
    let dir = scratch_dir("episodes-shared-state");
    let first_listen = free_port();
    let first = start(
        first_listen,
        &format!("{}{}", base(first_listen, &target), history_in(&dir)),
    );
    let second_listen = free_port();
    let mut second = Bastion::start(
        "episodes-second",
        second_listen,
        &format!("{}{}", base(second_listen, &target), history_in(&dir)),
        &["run"],
    );
    let status = second
        .wait_exit(WAIT)
        .unwrap_or_else(|| panic!("the second agent keeps running: {}", second.log()));
    assert_eq!(status.code(), Some(2), "{}", second.log());
    assert!(
        second
            .log()
            .contains("is in use by another bastion process"),
        "{}",
        second.log()
    );
    let (status, _) = crate::common::process::http_get_blocking(first.listen, "/healthz")
        .expect("the first agent answers");
    assert_eq!(status, 200);
    drop(first);
}
