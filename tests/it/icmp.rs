//! ICMP echo checks on loopback, with whichever socket this process may open (an unprivileged
//! datagram socket, or a raw one as root). Each test skips, saying why, only where neither kind
//! can be opened; CI runs as root, so it runs them.

use crate::common;

use bastion_agent::checks::icmp;
use bastion_agent::model::ErrorKind;
use common::*;

/// False (after saying why) where this process can open no ICMP socket at all.
fn icmp_available() -> bool {
    match icmp::ensure_sockets() {
        Ok(_) => true,
        Err(error) => {
            println!("skipped: {error}");
            false
        }
    }
}

fn icmp_check(name: &str, host: &str, extra: &str) -> String {
    format!(
        r#"
        [[checks]]
        name = "{name}"
        type = "icmp"
        interval = "5s"
        timeout = "2s"
        host = "{host}"
        count = 3
        packet_interval = "20ms"
        {extra}
        "#
    )
}

#[tokio::test]
async fn loopback_answers_every_echo_request_on_every_instance() {
    if !icmp_available() {
        return;
    }
    let config = config(&icmp_check(
        "loopback",
        "loopback.test",
        "payload_size = 100\ninstances = [\"127.0.0.1\", \"127.0.0.2\", \"127.0.0.3\"]",
    ));
    let result = run_single(&config).await;
    let targets: Vec<&str> = result.responses.iter().map(|r| r.target.as_str()).collect();
    assert_eq!(targets, ["127.0.0.1", "127.0.0.2", "127.0.0.3"]);
    for response in &result.responses {
        assert!(response.error.is_none(), "{response:?}");
        let icmp = response.sections.icmp.as_ref().unwrap();
        assert_eq!((icmp.sent, icmp.received), (3, 3), "{icmp:?}");
        assert_eq!(icmp.loss, 0.0);
        assert!(icmp.rtt_avg > 0.0 && icmp.rtt_min <= icmp.rtt_avg && icmp.rtt_avg <= icmp.rtt_max);
        assert!(["datagram", "raw"].contains(&icmp.socket.as_str()));
        assert_eq!(response.timings.rtt, icmp.rtt_avg);
        assert!(response.passing);
    }
    assert!(result.passing);
}

#[tokio::test]
async fn a_host_name_resolves_and_ip_version_keeps_one_family() {
    if !icmp_available() {
        return;
    }
    // A DNS server that answers svc.test with 127.0.0.2 (A) and nothing for AAAA.
    let dns_address = common::dns::dns_server(&[std::net::Ipv4Addr::new(127, 0, 0, 2)]).await;
    let config = config(&format!(
        "[runner]\ndns_servers = [\"{dns_address}\"]\n{}{}{}",
        icmp_check("by-name", "svc.test", "ip_version = 4"),
        icmp_check("v6-only", "svc.test", "ip_version = 6"),
        icmp_check("missing", "missing.test", ""),
    ));
    let (dispatcher, _) = dispatcher(&config);

    let result = run_check(&dispatcher, &config, "by-name").await;
    assert_eq!(result.responses.len(), 1);
    assert_eq!(result.responses[0].target, "127.0.0.2");
    assert!(result.responses[0].timings.resolve > 0.0);
    assert!(result.passing, "{result:?}");

    let result = run_check(&dispatcher, &config, "v6-only").await;
    let response = &result.responses[0];
    assert_eq!(response.target, "svc.test");
    let error = response.error.as_ref().unwrap();
    assert_eq!(error.kind, ErrorKind::Resolve);
    assert_eq!(
        error.message,
        "resolving svc.test: no address of the IP version asked for"
    );

    let result = run_check(&dispatcher, &config, "missing").await;
    assert_eq!(result.responses[0].target, "missing.test");
    assert_eq!(
        result.responses[0].error.as_ref().unwrap().kind,
        ErrorKind::Resolve
    );
    assert!(!result.passing);
}

#[tokio::test]
async fn assertions_read_loss_and_round_trips() {
    if !icmp_available() {
        return;
    }
    let rows: &[AssertionRow] = &[
        ("loss", "equal", "0", true, "0"),
        ("loss", "lessThan", "50", true, "0"),
        ("loss", "greaterThan", "0", false, "0"),
        ("rtt_avg", "lessThan", "5s", true, ""),
        ("rtt_max", "lessThan", "5s", true, ""),
        ("rtt_max", "greaterThan", "5s", false, ""),
        ("latency", "greaterThan", "40ms", true, ""),
    ];
    assert_assertion_table(rows, |assertion| {
        icmp_check("asserted", "127.0.0.1", assertion)
    })
    .await;
}

#[tokio::test]
async fn bad_icmp_definitions_are_refused_at_load() {
    let base = "[[checks]]\nname = \"p\"\ntype = \"icmp\"\ninterval = \"5s\"\ntimeout = \"1s\"\n";
    let cases = [
        ("host = \"127.0.0.1\"\ncount = 0\n", "check `p`: count 0 is out of range; send 1 to 100 echo requests"),
        ("host = \"127.0.0.1\"\nip_version = 5\n", "check `p`: ip_version 5 is not 4 or 6"),
        ("host = \"127.0.0.1\"\nip_version = 6\n", "check `p`: host 127.0.0.1 is an IPv4 address, but ip_version is 6"),
        ("host = \"127.0.0.1\"\npayload_size = 65001\n", "check `p`: payload_size 65001 is too large; the most is 65000"),
        (
            "host = \"127.0.0.1\"\ncount = 20\npacket_interval = \"100ms\"\n",
            "check `p`: count 20 at packet_interval 100ms takes 1s 900ms to send, which leaves no time for replies within the timeout of 1s",
        ),
        (
            "host = \"127.0.0.1\"\n[[checks.assertions]]\nkey = \"rtt_avg\"\nrelationship = \"contain\"\noperand = \"1ms\"\n",
            "check `p`: assertion #1: relationship contain does not apply to rtt_avg",
        ),
    ];
    assert_config_errors(base, &cases);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn icmp_series_appear_in_metrics() {
    if !icmp_available() {
        return;
    }
    let (checks, text) = agent_scrape(
        r#"
        [[checks]]
        name = "loopback"
        type = "icmp"
        interval = "1s"
        timeout = "900ms"
        host = "127.0.0.1"
        count = 2
        packet_interval = "10ms"
        "#,
    )
    .await;
    assert_eq!(checks[0]["latest"]["passing"], true, "{checks}");
    assert_eq!(checks[0]["latest"]["responses"][0]["icmp"]["received"], 2);
    let labels = "check=\"loopback\",target=\"127.0.0.1\"";
    assert_eq!(
        metric(&text, &format!("probe_success{{{labels}}}")),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, &format!("probe_icmp_packet_loss_ratio{{{labels}}}")),
        Some(0.0),
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            &format!("probe_icmp_duration_seconds{{{labels},phase=\"resolve\"}}")
        ),
        Some(0.0),
        "an IP is not resolved"
    );
    let rtt = metric(
        &text,
        &format!("probe_icmp_duration_seconds{{{labels},phase=\"rtt\"}}"),
    );
    assert!(rtt.is_some_and(|rtt| rtt > 0.0), "{text}");
}

/// Whether `net.ipv4.ping_group_range` admits group `gid` to unprivileged ICMP sockets.
fn ping_group_admits(gid: u32) -> bool {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ping_group_range").unwrap_or_default();
    let bounds: Vec<u32> = range
        .split_whitespace()
        .filter_map(|n| n.parse().ok())
        .collect();
    matches!(bounds.as_slice(), [low, high] if (*low..=*high).contains(&gid))
}

#[test]
fn without_any_icmp_socket_an_icmp_config_is_refused_at_start_up() {
    // Run the real binary as an unprivileged user with no capabilities at all.
    const NOBODY: u32 = 65534;
    let setpriv = std::path::Path::new("/usr/bin/setpriv");
    let is_root = std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .any(|line| line.starts_with("Uid:") && line.split_whitespace().nth(1) == Some("0"));
    if !is_root || !setpriv.exists() || ping_group_admits(NOBODY) {
        println!(
            "skipped: needs root and /usr/bin/setpriv to drop privileges, and a \
             net.ipv4.ping_group_range that excludes group {NOBODY}"
        );
        return;
    }
    // The user may not reach the build directory (a clone under /root, say): run a copy.
    let binary = temp_path("bastion", "bin");
    std::fs::copy(env!("CARGO_BIN_EXE_bastion"), &binary).unwrap();
    std::fs::set_permissions(&binary, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let config = temp_path("icmp", "toml");
    std::fs::write(
        &config,
        "[[checks]]\nname = \"ping\"\ntype = \"icmp\"\ninterval = \"5s\"\nhost = \"127.0.0.1\"\n",
    )
    .unwrap();
    let output = std::process::Command::new(setpriv)
        .args([
            &format!("--reuid={NOBODY}"),
            &format!("--regid={NOBODY}"),
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
            binary.to_str().unwrap(),
            "validate",
            "--config",
            config.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&binary);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{}:2:1: check `ping`: icmp checks need an ICMP socket, and none can be opened: an unprivileged datagram socket failed (Permission denied",
            config.display()
        )),
        "{stderr}"
    );
    assert!(stderr.contains("it needs CAP_NET_RAW"), "{stderr}");
}
