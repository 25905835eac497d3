//! Labels and discovered instances: a check's `labels` on its series and results, and
//! `instances_from` (a file_sd file changed while the daemon runs, DNS SRV from a responder the
//! test starts), each read back from `/api/v1/checks` and `/metrics`.

use crate::common::{agent_scrape, assert_config_errors, metric};
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
