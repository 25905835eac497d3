//! Labels and discovered instances: a check's `labels` on its series and results, and
//! `instances_from` (a file_sd file changed while the daemon runs, DNS SRV from a responder the
//! test starts), each read back from `/api/v1/checks` and `/metrics`.

use crate::common::nats::free_port;
use crate::common::process::{scratch_dir, Bastion};
use crate::common::{agent_scrape, assert_config_errors, eventually_blocking, metric, PATIENCE};
use tokio::net::TcpListener;

/// Accepts and closes every connection: a tcp check with no steps passes.
fn serve_accepting(listener: TcpListener) {
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            drop(stream);
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_labels_reach_series_and_results() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    serve_accepting(listener);
    let (checks, text) = agent_scrape(&format!(
        r#"
        [[checks]]
        name = "labelled"
        type = "tcp"
        interval = "1s"
        timeout = "900ms"
        address = "{address}"
        labels = {{ team = "payments", env = "prod" }}
        "#
    ))
    .await;
    let response = &checks[0]["latest"]["responses"][0];
    assert_eq!(response["labels"]["team"], "payments", "{checks}");
    assert_eq!(response["labels"]["env"], "prod", "{checks}");
    let labels = format!("check=\"labelled\",target=\"{address}\",env=\"prod\",team=\"payments\"");
    assert_eq!(
        metric(&text, &format!("probe_success{{{labels}}}")),
        Some(1.0),
        "{text}"
    );
    let phase = format!("probe_tcp_duration_seconds{{{labels},phase=\"connect\"}}");
    assert!(metric(&text, &phase).is_some(), "{phase} missing\n{text}");
}

#[test]
fn bad_labels_are_refused_with_the_rule_they_break() {
    let base = r#"
        [[checks]]
        name = "web"
        type = "tcp"
        interval = "10s"
        address = "127.0.0.1:80"
    "#;
    assert_config_errors(
        base,
        &[
            (
                "labels = { \"2team\" = \"x\" }",
                "check `web`: labels: label name `2team` is not a Prometheus label name",
            ),
            (
                "labels = { \"a-b\" = \"x\" }",
                "label name `a-b` is not a Prometheus label name",
            ),
            (
                "labels = { __meta = \"x\" }",
                "label name `__meta` starts with `__`",
            ),
            (
                "labels = { target = \"x\" }",
                "label name `target` is one bastion sets itself",
            ),
            (
                "labels = { check = \"x\" }",
                "label name `check` is one bastion sets itself",
            ),
        ],
    );
}

/// A listener on `ip` that accepts and closes every connection, on a thread of its own.
fn accepting(ip: &str) -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind((ip, 0)).unwrap();
    let address = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            drop(stream);
        }
    });
    address
}

/// Writes `text` to `path` in one step (a rename), as config management tools do.
fn replace_file(path: &std::path::Path, text: &str) {
    let next = path.with_extension("next");
    std::fs::write(&next, text).unwrap();
    std::fs::rename(&next, path).unwrap();
}

/// The `probe_success` samples of check `disc`, one line each.
fn disc_series(agent: &Bastion) -> Vec<String> {
    agent
        .metrics()
        .unwrap_or_default()
        .lines()
        .filter(|line| line.starts_with("probe_success{check=\"disc\""))
        .map(str::to_string)
        .collect()
}

fn success_line(target: std::net::SocketAddr, zone: &str) -> String {
    format!("probe_success{{check=\"disc\",target=\"{target}\",team=\"web\",zone=\"{zone}\"}} 1.0")
}

#[test]
fn file_discovery_follows_the_file_and_keeps_the_last_good_list() {
    let a = accepting("127.0.0.2");
    let b = accepting("127.0.0.3");
    let c = accepting("127.0.0.4");
    let dir = scratch_dir("file-sd");
    let targets = dir.join("web.json");
    replace_file(
        &targets,
        &format!(
            r#"[{{"targets": ["{a}"], "labels": {{"zone": "a"}}}},
                {{"targets": ["{b}"], "labels": {{"zone": "b"}}}}]"#
        ),
    );
    let listen = free_port();
    let config = format!(
        "[agent]\nid = \"disc\"\nlisten = \"127.0.0.1:{listen}\"\n\
         [[checks]]\nname = \"disc\"\ntype = \"tcp\"\ninterval = \"1s\"\ntimeout = \"900ms\"\n\
         address = \"127.0.0.1:9\"\nlabels = {{ team = \"web\" }}\n\
         instances_from = {{ file = \"{}\" }}\n",
        targets.display()
    );
    let mut agent = Bastion::start("file-sd", listen, &config, &["run"]);
    agent.wait_ready();
    let wanted = |agent: &Bastion, present: &[String]| {
        let series = disc_series(agent);
        present.iter().all(|line| series.contains(line)) && series.len() == present.len()
    };
    let first = [success_line(a, "a"), success_line(b, "b")];
    eventually_blocking("both instances of the file", PATIENCE, || {
        wanted(&agent, &first)
    });
    assert_eq!(
        agent.sample("bastion_discovery_errors_total{check=\"disc\"}"),
        Some(0.0)
    );

    // A changed file changes the instances: a's series vanish, c's appear.
    replace_file(
        &targets,
        &format!(r#"[{{"targets": ["{b}", "{c}"], "labels": {{"zone": "b"}}}}]"#),
    );
    let second = [success_line(b, "b"), success_line(c, "b")];
    eventually_blocking("the changed file's instances", PATIENCE, || {
        wanted(&agent, &second)
    });

    // A broken file keeps the last good list, says why and is counted once.
    replace_file(
        &targets,
        r#"[{"targets": ["10.0.0.1"], "labels": {"check": "x"}}]"#,
    );
    eventually_blocking("the broken file counted", PATIENCE, || {
        agent.sample("bastion_discovery_errors_total{check=\"disc\"}") == Some(1.0)
    });
    let scheduled = |agent: &Bastion| {
        agent
            .sample("bastion_checks_scheduled_total{check=\"disc\"}")
            .unwrap_or(0.0)
    };
    let before = scheduled(&agent);
    eventually_blocking("two more runs", PATIENCE, || {
        scheduled(&agent) >= before + 2.0
    });
    assert!(wanted(&agent, &second), "{:?}", disc_series(&agent));
    assert_eq!(
        agent.sample("bastion_discovery_errors_total{check=\"disc\"}"),
        Some(1.0),
        "a file that stays broken is counted once"
    );
    let log = agent.log();
    assert!(
        log.contains("discovery file not used")
            && log.contains("label name `check` is one bastion sets itself"),
        "{log}"
    );

    // A missing file is a second problem; the list still stays.
    std::fs::remove_file(&targets).unwrap();
    eventually_blocking("the missing file counted", PATIENCE, || {
        agent.sample("bastion_discovery_errors_total{check=\"disc\"}") == Some(2.0)
    });
    assert!(wanted(&agent, &second), "{:?}", disc_series(&agent));

    // Fixed again: the file's one instance, and nothing else.
    replace_file(
        &targets,
        &format!(r#"[{{"targets": ["{a}"], "labels": {{"zone": "a"}}}}]"#),
    );
    let last = [success_line(a, "a")];
    eventually_blocking("the fixed file's instance", PATIENCE, || {
        wanted(&agent, &last)
    });
}
