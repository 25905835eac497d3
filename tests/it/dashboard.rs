//! deploy/grafana/bastion.json, the Grafana dashboard: no Grafana server installs here, so what
//! is tested is its queries. A real Prometheus scrapes a real agent (checks passing and
//! failing in two groups, a tls check, a webhook notifier, history, a `/probe` request), and every panel's
//! PromQL, with the dashboard's variables set to "All", must parse and return data; every
//! variable's `label_values` must find values. The JSON's shape is checked against what
//! Grafana's dashboard schema needs to import it.

use crate::common;
use common::nats::free_port;
use common::process::{http_get_blocking, scratch_dir, Bastion};
use common::prometheus::{percent_encode, Prometheus};
use std::time::{Duration, Instant};

const DASHBOARD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/grafana/bastion.json");

fn dashboard() -> serde_json::Value {
    let text = std::fs::read_to_string(DASHBOARD).expect("deploy/grafana/bastion.json");
    serde_json::from_str(&text).expect("the dashboard is JSON")
}

/// The expression with the dashboard's variables as "All" and Grafana's interval.
fn substitute(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("$group", ".*")
        .replace("$check", ".*")
        .replace("$instance", ".*")
}

/// Every (panel title, expression) of the dashboard.
fn queries(dashboard: &serde_json::Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            out.push((
                panel["title"].as_str().unwrap_or("?").to_string(),
                target["expr"].as_str().expect("an expr").to_string(),
            ));
        }
    }
    out
}

#[test]
fn the_dashboard_has_the_shape_grafana_imports() {
    let dashboard = dashboard();
    assert_eq!(dashboard["uid"], "bastion-overview");
    assert!(dashboard["schemaVersion"].as_u64().is_some_and(|v| v >= 36));
    assert_eq!(dashboard["__inputs"][0]["pluginId"], "prometheus");
    let mut ids = std::collections::BTreeSet::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        let title = panel["title"].as_str().expect("a title");
        assert!(
            ids.insert(panel["id"].as_u64().expect("an id")),
            "{title}: id twice"
        );
        for key in ["x", "y", "w", "h"] {
            assert!(panel["gridPos"][key].is_u64(), "{title}: gridPos.{key}");
        }
        assert!(
            panel["gridPos"]["x"].as_u64().unwrap_or(99)
                + panel["gridPos"]["w"].as_u64().unwrap_or(99)
                <= 24,
            "{title}: wider than the grid"
        );
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "{title}");
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no query");
        for target in targets {
            assert_eq!(target["datasource"]["uid"], "${datasource}", "{title}");
            assert!(target["refId"].is_string(), "{title}: refId");
        }
    }
    let variables: Vec<&str> = dashboard["templating"]["list"]
        .as_array()
        .expect("templating")
        .iter()
        .filter_map(|variable| variable["name"].as_str())
        .collect();
    assert_eq!(variables, ["datasource", "group", "check", "instance"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_panel_query_returns_data_from_a_real_prometheus() {
    // A TLS server for a tls check, so the certificate panel has data.
    let ca = common::TestCa::new("bastion test CA");
    let leaf = ca.leaf(
        &["svc.test"],
        time::OffsetDateTime::now_utc() + time::Duration::days(90),
    );
    let tls = common::tls_server::TlsServer::start(leaf.server_config(&[b"http/1.1"])).await;
    let ca_file = ca.ca_file.clone();
    tokio::task::block_in_place(|| all_queries_return_data(tls.address, &ca_file));
}

fn all_queries_return_data(tls: std::net::SocketAddr, ca_file: &std::path::Path) {
    // A webhook receiver that takes everything, a refused port for the failing check.
    let receiver = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let receiver_port = receiver.local_addr().expect("address").port();
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for stream in receiver.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut buffer = [0u8; 65536];
            let _ = stream.read(&mut buffer);
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        }
    });
    let refused = free_port();
    let dir = scratch_dir("dashboard");
    let modules = dir.join("blackbox.yml");
    std::fs::write(&modules, "modules:\n  http_2xx:\n    prober: http\n").expect("blackbox.yml");
    let listen = free_port();
    let mut agent = Bastion::start(
        "dashboard",
        listen,
        &format!(
            r#"[agent]
listen = "127.0.0.1:{listen}"
blackbox_modules = "{modules}"

[[notifiers]]
name = "hook"
type = "webhook"
url = "http://127.0.0.1:{receiver_port}/"
default = true

[[checks]]
name = "self-healthz"
group = "edge"
type = "http"
url = "http://127.0.0.1:{listen}/healthz"
interval = "1s"

[[checks]]
name = "refused"
group = "core"
type = "http"
url = "http://127.0.0.1:{refused}/"
interval = "1s"
min_failing_time = "1s"

[[checks]]
name = "certificate"
group = "edge"
type = "tls"
address = "{tls}"
interval = "1s"
tls = {{ ca_file = "{ca_file}", server_name = "svc.test" }}
"#,
            modules = modules.display(),
            ca_file = ca_file.display()
        ),
        &["run"],
    );
    agent.wait_ready();
    let probe = format!(
        "/probe?target={}&module=http_2xx",
        percent_encode(&format!("http://127.0.0.1:{listen}/healthz"))
    );
    assert_eq!(
        http_get_blocking(listen, &probe).map(|(status, _)| status),
        Some(200)
    );
    let mut prometheus = Prometheus::start(&format!(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
         scrape_configs:\n  - job_name: bastion\n    static_configs:\n\
         \x20     - targets: [\"127.0.0.1:{listen}\"]\n"
    ));
    let dashboard = dashboard();
    let queries = queries(&dashboard);
    assert!(queries.len() >= 15, "{} queries", queries.len());
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        assert!(
            prometheus.alive(),
            "prometheus exited:\n{}",
            prometheus.log()
        );
        assert!(agent.alive(), "bastion exited:\n{}", agent.log());
        let mut empty = Vec::new();
        for (title, expr) in &queries {
            let expr = substitute(expr);
            let answer = prometheus.api(&format!("query?query={}", percent_encode(&expr)));
            match answer {
                Some(answer) => {
                    assert_eq!(answer["status"], "success", "{title}: {expr}: {answer}");
                    if answer["data"]["result"]
                        .as_array()
                        .is_none_or(Vec::is_empty)
                    {
                        empty.push(format!("{title}: {expr}"));
                    }
                }
                None => {
                    // A 400 is a query Prometheus cannot parse: say which.
                    let path = format!("/api/v1/query?query={}", percent_encode(&expr));
                    let said = common::prometheus::http_get_1_0(prometheus.port, &path);
                    if let Some((400, body)) = said {
                        panic!("{title}: Prometheus refuses {expr}: {body}");
                    }
                    empty.push(format!("{title}: {expr} (no answer)"));
                }
            }
        }
        // The variables find values.
        for (label, selector) in [
            ("group", "bastion_check_info"),
            ("check", "bastion_check_info"),
            ("target", "probe_success"),
        ] {
            let values = prometheus
                .api(&format!(
                    "label/{label}/values?match[]={}",
                    percent_encode(selector)
                ))
                .and_then(|answer| answer["data"].as_array().map(Vec::len))
                .unwrap_or(0);
            if values == 0 {
                empty.push(format!("variable: label_values({selector}, {label})"));
            }
        }
        if empty.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "queries that never returned data:\n{}\nbastion's /metrics:\n{}",
            empty.join("\n"),
            agent.metrics().unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let _ = std::fs::remove_dir_all(&dir);
}
