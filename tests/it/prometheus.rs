//! bastion with Prometheus: `promtool` checks deploy/prometheus (the scrape config, the
//! alert rules and their unit tests), and a real Prometheus server scrapes a real agent and
//! answers queries about it, so the exposition format is proven against Prometheus's own
//! parser, not only ours.

use crate::common;

use common::nats::free_port;
use common::process::Bastion;
use common::prometheus::{percent_encode, Prometheus};
use common::tools::promtool;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const DEPLOY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/prometheus");

fn promtool_run(args: &[&str]) -> Output {
    let promtool = promtool();
    Command::new(&promtool)
        .args(args)
        .current_dir(DEPLOY)
        .output()
        .unwrap_or_else(|error| panic!("{} does not run: {error}", promtool.display()))
}

fn assert_success(what: &str, output: &Output) {
    assert!(
        output.status.success(),
        "{what} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The alert names of alerts.yml, in order.
fn alert_names() -> Vec<String> {
    let rules = std::fs::read_to_string(Path::new(DEPLOY).join("alerts.yml")).expect("alerts.yml");
    rules
        .lines()
        .filter_map(|line| line.trim().strip_prefix("- alert: "))
        .map(|name| name.trim().to_string())
        .collect()
}

#[test]
fn promtool_accepts_the_scrape_config_and_the_rules() {
    let config = promtool_run(&["check", "config", "prometheus.yml"]);
    assert_success("promtool check config prometheus.yml", &config);
    // The scrape example loads the alerts.
    assert!(
        String::from_utf8_lossy(&config.stdout).contains("1 rule files found"),
        "prometheus.yml does not load alerts.yml: {}",
        String::from_utf8_lossy(&config.stdout)
    );
    let rules = promtool_run(&["check", "rules", "alerts.yml"]);
    assert_success("promtool check rules alerts.yml", &rules);
    assert_eq!(
        alert_names(),
        [
            "BastionDown",
            "ProbeFailing",
            "CertificateExpiringSoon",
            "DispatchTimeouts",
            "LocationWithoutRunners",
            "ScheduleLagHigh",
            "ConfigReloadFailed"
        ]
    );
    assert!(
        String::from_utf8_lossy(&rules.stdout).contains("SUCCESS: 7 rules found"),
        "{}",
        String::from_utf8_lossy(&rules.stdout)
    );
}

#[test]
fn promtool_unit_tests_of_every_alert_pass() {
    let tests =
        std::fs::read_to_string(Path::new(DEPLOY).join("alerts_test.yml")).expect("tests file");
    for name in alert_names() {
        // Each alert is evaluated at least twice: once firing, once not.
        let evaluations = tests
            .lines()
            .filter(|line| line.trim() == format!("alertname: {name}"))
            .count();
        assert!(
            evaluations >= 2,
            "alerts_test.yml evaluates {name} {evaluations} time(s)"
        );
    }
    let output = promtool_run(&["test", "rules", "alerts_test.yml"]);
    assert_success("promtool test rules alerts_test.yml", &output);
}

#[test]
fn percent_encoding_of_a_query() {
    assert_eq!(
        percent_encode(r#"up{job="bastion",le="+Inf"}"#),
        "up%7Bjob%3D%22bastion%22%2Cle%3D%22%2BInf%22%7D"
    );
}

#[test]
fn a_real_prometheus_scrapes_bastion_and_evaluates_the_alert_rules() {
    let listen = free_port();
    let mut agent = Bastion::start(
        "scraped",
        listen,
        &format!(
            "[agent]\nlisten = \"127.0.0.1:{listen}\"\n\n\
             [[checks]]\nname = \"self-healthz\"\ntype = \"http\"\n\
             url = \"http://127.0.0.1:{listen}/healthz\"\ninterval = \"1s\"\n"
        ),
        &["run"],
    );
    agent.wait_ready();
    let mut prometheus = Prometheus::start(&format!(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
         rule_files:\n  - alerts.yml\n\
         scrape_configs:\n  - job_name: bastion\n    static_configs:\n\
         \x20     - targets: [\"127.0.0.1:{listen}\"]\n"
    ));

    // What a scrape of the agent must show once its check has run, each with its value.
    let expected = [
        (r#"up{job="bastion"}"#, 1.0),
        (r#"probe_success{job="bastion",check="self-healthz"}"#, 1.0),
        (
            r#"bastion_check_state{job="bastion",check="self-healthz",state="OK"}"#,
            1.0,
        ),
        // The +Inf bucket counts every observation, as _count does.
        (
            r#"bastion_dispatch_wait_seconds_bucket{job="bastion",type="http",le="+Inf"} - ignoring(le) bastion_dispatch_wait_seconds_count{job="bastion",type="http"}"#,
            0.0,
        ),
        // ... and the check has run at least once.
        (
            r#"bastion_dispatch_wait_seconds_bucket{job="bastion",type="http",le="+Inf"} > bool 0"#,
            1.0,
        ),
        (
            r#"bastion_config_last_reload_successful{job="bastion"}"#,
            1.0,
        ),
    ];
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        assert!(
            prometheus.alive(),
            "prometheus exited; its log:\n{}",
            prometheus.log()
        );
        assert!(agent.alive(), "bastion exited; its log:\n{}", agent.log());
        let seen: Vec<Option<f64>> = expected
            .iter()
            .map(|(query, _)| prometheus.query_one(query))
            .collect();
        let all = expected
            .iter()
            .zip(&seen)
            .all(|((_, want), got)| *got == Some(*want));
        if all {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "within 90s Prometheus did not report {expected:#?}; it reported {seen:?}\n\
             prometheus log:\n{}\nbastion log:\n{}",
            prometheus.log(),
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    // The alert rules evaluate against the real series without an error, and none fires.
    loop {
        let rules = prometheus.api("rules").unwrap_or_default();
        let rules: Vec<&serde_json::Value> = rules["data"]["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|group| group["rules"].as_array().into_iter().flatten())
            .collect();
        let evaluated = rules.len() == alert_names().len()
            && rules.iter().all(|rule| rule["health"] != "unknown");
        if evaluated {
            for rule in &rules {
                assert_eq!(rule["health"], "ok", "{rule}");
                assert_eq!(rule["state"], "inactive", "{rule}");
            }
            break;
        }
        assert!(
            Instant::now() < deadline,
            "within 90s Prometheus did not evaluate every rule: {rules:#?}\nlog:\n{}",
            prometheus.log()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}
