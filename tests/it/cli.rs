//! The real binary, where the command line is the contract: exit codes, error messages that
//! name file, line and column, `once` in table and JSON form; and every shipped config parses.

use crate::common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::Output;
use tokio::net::TcpListener;

fn bastion(args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_bastion"))
        .args(args)
        .env_remove("BASTION_CONFIG")
        .output()
        .expect("the binary runs")
}

fn write_config(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("bastion-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn every_shipped_config_file_is_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("toml" | "yaml" | "yml")
        ) {
            if let Err(error) = bastion_agent::validate::load(&path) {
                panic!("{error}");
            }
            let output = bastion(&["validate", "--config", path.to_str().unwrap()]);
            assert!(
                output.status.success(),
                "{}: {}",
                path.display(),
                stderr(&output)
            );
            seen += 1;
        }
    }
    assert!(seen >= 2, "config/ holds the example and the reference");
}

#[test]
fn bad_configs_are_clear_errors_with_exit_code_2() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "unknown.toml",
            "[agent]\nid = \"a\"\nlisen = \"127.0.0.1:1\"\n",
            "unknown.toml:3:1: unknown field `lisen`",
        ),
        (
            "duration.toml",
            "[[checks]]\nname = \"web\"\ntype = \"http\"\ninterval = \"10 parsecs\"\nurl = \"http://x/\"\n",
            "duration.toml:4:12: invalid value: string \"10 parsecs\", expected a duration",
        ),
        (
            "timeout.toml",
            "[[checks]]\nname = \"web\"\ntype = \"http\"\ninterval = \"5s\"\ntimeout = \"5s\"\nurl = \"http://x/\"\n",
            "timeout.toml: check `web`: timeout 5s must be shorter than interval 5s",
        ),
        (
            "duplicate.toml",
            "[[checks]]\nname = \"web\"\ntype = \"http\"\ninterval = \"5s\"\nurl = \"http://x/\"\n[[checks]]\nname = \"web\"\ntype = \"http\"\ninterval = \"5s\"\nurl = \"http://y/\"\n",
            "duplicate.toml: check name `web` is used twice (checks #1 and #2); names must be unique",
        ),
        (
            "regex.toml",
            "[[checks]]\nname = \"web\"\ntype = \"http\"\ninterval = \"5s\"\nurl = \"http://x/\"\n[[checks.assertions]]\nkey = \"body\"\nrelationship = \"regExp\"\noperand = \"(\"\n",
            "regex.toml: check `web`: assertion #1: regExp operand `(` is not a valid regex",
        ),
        (
            "jsonpath.toml",
            "[[checks]]\nname = \"web\"\ntype = \"http\"\ninterval = \"5s\"\nurl = \"http://x/\"\n[[checks.assertions]]\nkey = \"json\"\nvalue = \"$[\"\nrelationship = \"equal\"\noperand = \"1\"\n",
            "jsonpath.toml: check `web`: assertion #1: `$[` is not a valid RFC 9535 JSON path",
        ),
        (
            "short.toml",
            "[[checks]]\nname = \"web\"\ntype = \"http\"\ninterval = \"500ms\"\ntimeout = \"100ms\"\nurl = \"http://x/\"\n",
            "short.toml: check `web`: interval 500ms is too short; the least is 1s",
        ),
        (
            "type.toml",
            "[[checks]]\nname = \"web\"\ntype = \"carrier-pigeon\"\ninterval = \"5s\"\n",
            "type.toml:1:1: unknown variant `carrier-pigeon`",
        ),
        (
            "syntax.toml",
            "[agent\nid = 1\n",
            "syntax.toml:1:7:",
        ),
        (
            "tls.toml",
            "[[checks]]\nname = \"web\"\ntype = \"http\"\ninterval = \"5s\"\nurl = \"https://x/\"\ntls = { insecure_skip_verify = true, ca_file = \"/etc/hostname\" }\n",
            "tls.toml: check `web`: tls.ca_file and tls.insecure_skip_verify contradict each other",
        ),
        (
            "instance.toml",
            "[[checks]]\nname = \"web\"\ntype = \"http\"\ninterval = \"5s\"\nurl = \"http://x/\"\ninstances = [\"db.internal\"]\n",
            "instance.toml: check `web`: instance `db.internal` is not an address",
        ),
        (
            "bad.yaml",
            "agent:\n  id: a\n  nope: 1\n",
            "bad.yaml:3:3: unknown field `nope`",
        ),
        (
            "nats-missing.toml",
            "[bus]\nkind = \"nats\"\n",
            "nats-missing.toml: bus.kind is \"nats\" but [bus.nats] is missing",
        ),
        (
            "nats-unused.toml",
            "[bus.nats]\nurl = \"nats://127.0.0.1:4222\"\n",
            "nats-unused.toml: [bus.nats] is set but bus.kind is \"embedded\"",
        ),
        (
            "nats-auth.toml",
            "[bus]\nkind = \"nats\"\n[bus.nats]\nurl = \"nats://127.0.0.1:4222\"\ntoken_file = \"/t\"\ncreds_file = \"/c\"\n",
            "nats-auth.toml: bus.nats sets more than one way to authenticate",
        ),
        (
            "nats-user.toml",
            "[bus]\nkind = \"nats\"\n[bus.nats]\nurl = \"nats://127.0.0.1:4222\"\nuser = \"alice\"\n",
            "nats-user.toml: bus.nats.user and bus.nats.password_file go together",
        ),
        (
            "nats-url.toml",
            "[bus]\nkind = \"nats\"\n[bus.nats]\nurl = [\"nats://[::1\"]\n",
            "nats-url.toml: bus.nats.url: `nats://[::1` is not a NATS server URL",
        ),
        (
            "nats-prefix.toml",
            "[bus]\nkind = \"nats\"\n[bus.nats]\nurl = \"nats://127.0.0.1:4222\"\nsubject_prefix = \"a.*\"\n",
            "nats-prefix.toml: bus.nats.subject_prefix `a.*` is not a valid subject",
        ),
        (
            "nats-secret.toml",
            "[bus]\nkind = \"nats\"\n[bus.nats]\nurl = \"nats://alice:pw@10.0.0.7:4222\"\n",
            "nats-secret.toml: bus.nats.url: the URL of 10.0.0.7:4222 holds credentials",
        ),
        (
            "ha.toml",
            "[checker]\nha = true\n",
            "ha.toml: checker.ha needs a shared bus",
        ),
    ];
    for (name, text, expected) in cases {
        let path = write_config(name, text);
        let output = bastion(&["validate", "--config", path.to_str().unwrap()]);
        assert_eq!(output.status.code(), Some(2), "{name}: {}", stderr(&output));
        let message = stderr(&output);
        let shown = path.display().to_string();
        let expected = expected.replacen(name, &shown, 1);
        assert!(
            message.contains(&expected),
            "{name}: expected `{expected}` in\n{message}"
        );
        assert!(!message.contains("panicked"), "{message}");
    }
    // A split role needs a bus that reaches other processes.
    let embedded = write_config("embedded.toml", "[agent]\nlisten = \"127.0.0.1:0\"\n");
    let output = bastion(&[
        "run",
        "--role",
        "runner",
        "--config",
        embedded.to_str().unwrap(),
    ]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(stderr(&output).contains("role `runner` needs a shared bus"));
    let missing = bastion(&["validate", "--config", "/nonexistent/bastion.toml"]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(stderr(&missing).contains("cannot read config file /nonexistent/bastion.toml"));
}

#[test]
fn validate_reads_the_config_path_from_the_environment() {
    let path = write_config(
        "env.toml",
        "[[checks]]\nname = \"web\"\ntype = \"http\"\ninterval = \"5s\"\nurl = \"http://x/\"\n",
    );
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_bastion"))
        .arg("validate")
        .env("BASTION_CONFIG", &path)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(String::from_utf8_lossy(&output.stdout).contains("valid, 1 check(s)"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_exits_0_when_all_pass_1_when_any_fails_and_prints_json_lines() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = listener.local_addr().unwrap();
    serve_ok(listener, "hello");
    let path = write_config(
        "once.toml",
        &format!(
            r#"
            [[checks]]
            name = "good"
            type = "http"
            interval = "5s"
            url = "http://{target}/"
            [[checks]]
            name = "bad"
            type = "http"
            interval = "5s"
            url = "http://{target}/"
            [[checks.assertions]]
            key = "body"
            relationship = "contain"
            operand = "goodbye"
            "#
        ),
    );
    let path = path.to_str().unwrap().to_string();
    let run = |args: Vec<String>| {
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            bastion(&args)
        })
    };
    let args = |extra: &[&str]| {
        let mut all = vec!["once".to_string(), "--config".to_string(), path.clone()];
        all.extend(extra.iter().map(|s| s.to_string()));
        all
    };

    let good = run(args(&["--check", "good", "--json"])).await.unwrap();
    assert_eq!(good.status.code(), Some(0), "{}", stderr(&good));
    let stdout = String::from_utf8(good.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1);
    let result: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(result["version"], 1);
    assert_eq!(result["check"], "good");
    assert_eq!(result["passing"], true);
    assert_eq!(result["responses"][0]["target"], target.to_string());
    assert_eq!(result["responses"][0]["http"]["status"], 200);

    let all = run(args(&[])).await.unwrap();
    assert_eq!(all.status.code(), Some(1), "{}", stderr(&all));
    let table = String::from_utf8(all.stdout).unwrap();
    assert!(table.starts_with("CHECK"), "{table}");
    assert!(table.contains("good") && table.contains("PASS"), "{table}");
    assert!(
        table.contains("FAIL") && table.contains("expected body contain goodbye, got `hello`"),
        "{table}"
    );

    let unknown = run(args(&["--check", "nope"])).await.unwrap();
    assert_eq!(unknown.status.code(), Some(2));
    assert!(stderr(&unknown).contains("no check is named `nope`"));
}
