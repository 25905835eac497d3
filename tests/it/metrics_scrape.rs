//! Scraping less, through the real binary: `/metrics?group=` keeps the per-check series of
//! exactly the checks of those groups and every agent-wide series, `?checks=none` has no
//! `check` label at all, `?checks=all` (the default) is the full text, and bad parameters are
//! a 400 that says what is accepted.

use crate::api_contract::request;
use crate::common::nats::free_port;
use crate::common::process::Bastion;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

const CHECKS: [(&str, Option<&str>); 5] = [
    ("pay-a", Some("payments")),
    ("pay-b", Some("payments")),
    ("search-a", Some("search")),
    ("search-b", Some("search")),
    ("loner", None),
];

/// An agent whose five http checks probe its own `/healthz` every second.
fn agent() -> Bastion {
    let listen = free_port();
    let mut config = format!("[agent]\nid = \"scrape\"\nlisten = \"127.0.0.1:{listen}\"\n");
    for (name, group) in CHECKS {
        config.push_str(&format!(
            "[[checks]]\nname = \"{name}\"\ntype = \"http\"\nurl = \"http://127.0.0.1:{listen}/healthz\"\ninterval = \"1s\"\n"
        ));
        if let Some(group) = group {
            config.push_str(&format!("group = \"{group}\"\n"));
        }
    }
    let mut agent = Bastion::start("metrics-scrape", listen, &config, &["run"]);
    agent.wait_ready();
    agent
}

fn scrape(agent: &Bastion, query: &str) -> String {
    let answer = request(agent.listen, &format!("/metrics{query}"), &[]);
    let body = String::from_utf8(answer.body).expect("UTF-8");
    assert_eq!(answer.status, 200, "/metrics{query}: {body}");
    body
}

/// The series of a text (each sample's name and labels, without its value).
fn series(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| line.rsplit_once(' ').expect("name and value").0.to_string())
        .collect()
}

/// The check a series belongs to, if it has a `check` label.
fn check_of(series: &str) -> Option<&str> {
    let start = series.find("check=\"")? + "check=\"".len();
    series[start..].split('"').next()
}

/// The series of `text` that are agent-wide or of one of `checks`.
fn of_checks(text: &str, checks: &[&str]) -> BTreeSet<String> {
    series(text)
        .into_iter()
        .filter(|series| check_of(series).is_none_or(|check| checks.contains(&check)))
        .collect()
}

/// Waits until every check ran, and the series stop appearing (their first runs are in).
fn settled(agent: &Bastion) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = scrape(agent, "");
        let ran = CHECKS.iter().all(|(name, _)| {
            text.contains(&format!("probe_success{{check=\"{name}\""))
                && text.contains(&format!(
                    "bastion_check_duration_seconds_count{{check=\"{name}\""
                ))
        });
        if ran {
            std::thread::sleep(Duration::from_millis(1500));
            let again = scrape(agent, "");
            if series(&again) == series(&text) {
                return again;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the checks never all ran:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_scrape_chooses_its_checks_by_group_or_none_and_refuses_what_it_cannot_read() {
    let agent = agent();
    let full = settled(&agent);
    // Every kind of per-check series is there to be chosen from.
    for family in [
        "probe_http_duration_seconds{check=\"pay-a\"",
        "bastion_check_state{check=\"pay-a\"",
        "bastion_check_info{check=\"pay-a\",group=\"payments\"",
        "bastion_checks_scheduled_total{check=\"pay-a\"}",
    ] {
        assert!(full.contains(family), "{family} missing:\n{full}");
    }

    // The default is every check: the same series as ?checks=all, described the same way.
    let all = scrape(&agent, "?checks=all");
    assert_eq!(series(&all), series(&full));
    let descriptions = |text: &str| -> Vec<String> {
        text.lines()
            .filter(|line| line.starts_with('#'))
            .map(str::to_string)
            .collect()
    };
    assert_eq!(descriptions(&all), descriptions(&full));

    // One group: exactly its checks' series, and every agent-wide one.
    let payments = scrape(&agent, "?group=payments");
    assert_eq!(series(&payments), of_checks(&full, &["pay-a", "pay-b"]));
    assert!(!payments.contains("check=\"search-a\"") && !payments.contains("check=\"loner\""));
    assert!(payments.contains("bastion_build_info{"), "{payments}");

    // Two groups, repeated or comma-separated alike.
    let both = of_checks(&full, &["pay-a", "pay-b", "search-a", "search-b"]);
    assert_eq!(
        series(&scrape(&agent, "?group=payments&group=search")),
        both
    );
    assert_eq!(series(&scrape(&agent, "?group=search,payments")), both);

    // A group no check has selects nothing, and is no error.
    assert_eq!(
        series(&scrape(&agent, "?group=nobody")),
        of_checks(&full, &[])
    );

    // The agent's own series only: no check label anywhere, not even in a description.
    let none = scrape(&agent, "?checks=none");
    // With a group as well, none wins: no check's series.
    let both = scrape(&agent, "?checks=none&group=payments");
    assert!(!both.contains("check=\""), "{both}");
    assert!(!none.contains("check=\""), "{none}");
    assert!(!none.contains("probe_"), "{none}");
    assert_eq!(series(&none), of_checks(&full, &[]));
    assert!(
        none.contains("bastion_schedule_lag_seconds_count "),
        "{none}"
    );

    for bad in [
        "?grup=payments",
        "?group=",
        "?group=payments,",
        "?checks=some",
        "?checks=",
        "?checks=all&checks=none",
    ] {
        let answer = request(agent.listen, &format!("/metrics{bad}"), &[]);
        assert_eq!(answer.status, 400, "{bad}");
        let message = answer.json()["error"].as_str().unwrap_or("").to_string();
        assert!(
            message.contains("group=NAME") && message.contains("checks=all|none"),
            "{bad}: {message}"
        );
    }
}
