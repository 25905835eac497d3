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
            "timeout.toml:5:1: check `web`: timeout 5s must be shorter than interval 5s",
        ),
        (
            "duplicate.toml",
            "[[checks]]\nname = \"web\"\ntype = \"http\"\ninterval = \"5s\"\nurl = \"http://x/\"\n[[checks]]\nname = \"web\"\ntype = \"http\"\ninterval = \"5s\"\nurl = \"http://y/\"\n",
            "duplicate.toml:7:1: check name `web` is used twice (checks #1 and #2); names must be unique",
        ),
        (
            "regex.toml",
            "[[checks]]\nname = \"web\"\ntype = \"http\"\ninterval = \"5s\"\nurl = \"http://x/\"\n[[checks.assertions]]\nkey = \"body\"\nrelationship = \"regExp\"\noperand = \"(\"\n",
            "regex.toml:7:1: check `web`: assertion #1: regExp operand `(` is not a valid regex",
        ),
        (
            "jsonpath.toml",
            "[[checks]]\nname = \"web\"\ntype = \"http\"\ninterval = \"5s\"\nurl = \"http://x/\"\n[[checks.assertions]]\nkey = \"json\"\nvalue = \"$[\"\nrelationship = \"equal\"\noperand = \"1\"\n",
            "jsonpath.toml:7:1: check `web`: assertion #1: `$[` is not a valid RFC 9535 JSON path",
        ),
        (
            "short.toml",
            "[[checks]]\nname = \"web\"\ntype = \"http\"\ninterval = \"500ms\"\ntimeout = \"100ms\"\nurl = \"http://x/\"\n",
            "short.toml:4:1: check `web`: interval 500ms is too short; the least is 1s",
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
            "tls.toml:6:38: check `web`: tls.ca_file and tls.insecure_skip_verify contradict each other",
        ),
        (
            "instance.toml",
            "[[checks]]\nname = \"web\"\ntype = \"http\"\ninterval = \"5s\"\nurl = \"http://x/\"\ninstances = [\"db.internal\"]\n",
            "instance.toml:6:1: check `web`: instance `db.internal` is not an address",
        ),
        (
            "bad.yaml",
            "agent:\n  id: a\n  nope: 1\n",
            "bad.yaml:3:3: unknown field `nope`",
        ),
        (
            "nats-missing.toml",
            "[bus]\nkind = \"nats\"\n",
            "nats-missing.toml:2:1: bus.kind is \"nats\" but [bus.nats] is missing",
        ),
        (
            "nats-unused.toml",
            "[bus.nats]\nurl = \"nats://127.0.0.1:4222\"\n",
            "nats-unused.toml:1:6: [bus.nats] is set but bus.kind is \"embedded\"",
        ),
        (
            "nats-auth.toml",
            "[bus]\nkind = \"nats\"\n[bus.nats]\nurl = \"nats://127.0.0.1:4222\"\ntoken_file = \"/t\"\ncreds_file = \"/c\"\n",
            "nats-auth.toml:3:6: bus.nats sets more than one way to authenticate",
        ),
        (
            "nats-user.toml",
            "[bus]\nkind = \"nats\"\n[bus.nats]\nurl = \"nats://127.0.0.1:4222\"\nuser = \"alice\"\n",
            "nats-user.toml:5:1: bus.nats.user and bus.nats.password_file go together",
        ),
        (
            "nats-url.toml",
            "[bus]\nkind = \"nats\"\n[bus.nats]\nurl = [\"nats://[::1\"]\n",
            "nats-url.toml:4:1: bus.nats.url: `nats://[::1` is not a NATS server URL",
        ),
        (
            "nats-prefix.toml",
            "[bus]\nkind = \"nats\"\n[bus.nats]\nurl = \"nats://127.0.0.1:4222\"\nsubject_prefix = \"a.*\"\n",
            "nats-prefix.toml:5:1: bus.nats.subject_prefix `a.*` is not a valid subject",
        ),
        (
            "nats-secret.toml",
            "[bus]\nkind = \"nats\"\n[bus.nats]\nurl = \"nats://alice:pw@10.0.0.7:4222\"\n",
            "nats-secret.toml:4:1: bus.nats.url: the URL of 10.0.0.7:4222 holds credentials",
        ),
        (
            "ha.toml",
            "[checker]\nha = true\n",
            "ha.toml:2:1: checker.ha needs a shared bus",
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
    // The TOTAL column is for people: `2.3ms`, `850µs`, `1.20s`, never `0.0023s`.
    let good_row = table.lines().find(|line| line.starts_with("good")).unwrap();
    let total = good_row.split_whitespace().nth(3).unwrap();
    let (number, unit) = total.split_at(
        total
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(total.len()),
    );
    assert!(
        ["ns", "µs", "ms", "s"].contains(&unit) && number.parse::<f64>().is_ok(),
        "{total} in {good_row}"
    );
    assert!(!number.starts_with("0.0"), "{total}");
    assert!(
        table.contains("FAIL") && table.contains("expected body contain goodbye, got `hello`"),
        "{table}"
    );

    let unknown = run(args(&["--check", "nope"])).await.unwrap();
    assert_eq!(unknown.status.code(), Some(2));
    assert!(stderr(&unknown).contains("no check is named `nope`"));
}

/// A file with several mistakes of different kinds (an unknown key, a bad duration, a
/// timeout as long as its interval, a duplicated check name) lists them all in one run, in
/// file order, each with its line and column, and counts them.
#[test]
fn validate_reports_every_mistake_with_its_line_and_column() {
    let text = "\
[agent]
id = \"a\"
lisen = \"127.0.0.1:1\"

[[checks]]
name = \"web\"
type = \"http\"
interval = \"10 parsecs\"
url = \"http://x/\"

[[checks]]
name = \"db\"
type = \"tcp\"
interval = \"5s\"
timeout = \"5s\"
address = \"db.internal:5432\"

[[checks]]
name = \"db\"
type = \"http\"
interval = \"5s\"
url = \"http://y/\"
";
    let path = write_config("three.toml", text);
    let output = bastion(&["validate", "--config", path.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    let shown = path.display().to_string();
    let lines: Vec<String> = stderr(&output).lines().map(str::to_string).collect();
    let expected = [
        format!("error: {shown}:3:1: unknown field `lisen`"),
        format!("error: {shown}:8:12: invalid value: string \"10 parsecs\", expected a duration"),
        format!("error: {shown}:15:1: check `db`: timeout 5s must be shorter than interval 5s"),
        format!("error: {shown}:19:1: check name `db` is used twice (checks #2 and #3)"),
    ];
    assert_eq!(lines.len(), expected.len() + 1, "{lines:#?}");
    for (line, expected) in lines.iter().zip(&expected) {
        assert!(
            line.starts_with(expected.as_str()),
            "{line}\n !~ {expected}"
        );
    }
    assert_eq!(lines[expected.len()], "4 errors in the config");
    // YAML: the validation messages are placed too.
    let path = write_config(
        "three.yaml",
        "agent:\n  id: \" \"\nchecks:\n  - name: db\n    type: tcp\n    interval: 5s\n    timeout: 5s\n    address: \"db.internal:5432\"\n  - name: db\n    type: http\n    interval: 5s\n    url: http://y/\n",
    );
    let output = bastion(&["validate", "--config", path.to_str().unwrap()]);
    let message = stderr(&output);
    let shown = path.display().to_string();
    for expected in [
        format!("error: {shown}:2:3: agent.id must not be empty"),
        format!("error: {shown}:7:5: check `db`: timeout 5s must be shorter than interval 5s"),
        format!("error: {shown}:9:5: check name `db` is used twice (checks #1 and #2)"),
        "3 errors in the config".to_string(),
    ] {
        assert!(message.contains(&expected), "{expected}\n !~ {message}");
    }
    // Three syntax errors in one file: all three, located.
    let path = write_config("syntax3.toml", "[agent\nid = \"a\"\n[runner\n[checker\n");
    let output = bastion(&["validate", "--config", path.to_str().unwrap()]);
    let message = stderr(&output);
    for line in [1, 3, 4] {
        assert!(
            message.contains(&format!("syntax3.toml:{line}:")),
            "line {line}:\n{message}"
        );
    }
    assert!(message.contains("3 errors in the config"), "{message}");
}

/// A problem is placed by where its code says it is, not by its text: of two checks named
/// `web`, the messages about the second one (which name it `web` too, or start with other
/// words than their key) stand at its keys, and a check that did not parse before them does
/// not shift them.
#[test]
fn validate_places_a_problem_by_its_path_not_its_text() {
    let text = "\
[[checks]]
name = \"api\"
type = \"http\"
interval = \"10 parsecs\"
url = \"http://x/\"

[[checks]]
name = \"web\"
type = \"http\"
interval = \"5s\"
url = \"http://x/\"

[[checks]]
type = \"http\"
url = \"http://y/\"
interval = \"5s\"
timeout = \"5s\"
name = \"web\"
notify = [\"pager\"]
";
    let path = write_config("twice.toml", text);
    let output = bastion(&["validate", "--config", path.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    let shown = path.display().to_string();
    let lines: Vec<String> = stderr(&output).lines().map(str::to_string).collect();
    let expected = [
        format!("error: {shown}:4:12: invalid value: string \"10 parsecs\", expected a duration"),
        format!("error: {shown}:17:1: check `web`: timeout 5s must be shorter than interval 5s"),
        format!("error: {shown}:18:1: check name `web` is used twice (checks #2 and #3); names must be unique"),
        format!("error: {shown}:19:1: check `web` notifies `pager`, but no [[notifiers]] entry has that name"),
        "4 errors in the config".to_string(),
    ];
    assert_eq!(lines, expected);
    let path = write_config(
        "twice.yaml",
        "checks:\n  - name: web\n    type: http\n    interval: 5s\n    url: http://x/\n  - type: http\n    url: http://y/\n    interval: 5s\n    timeout: 5s\n    name: web\n    notify: [pager]\n",
    );
    let output = bastion(&["validate", "--config", path.to_str().unwrap()]);
    let shown = path.display().to_string();
    let lines: Vec<String> = stderr(&output).lines().map(str::to_string).collect();
    let expected = [
        format!("error: {shown}:9:5: check `web`: timeout 5s must be shorter than interval 5s"),
        format!("error: {shown}:10:5: check name `web` is used twice (checks #1 and #2); names must be unique"),
        format!("error: {shown}:11:5: check `web` notifies `pager`, but no [[notifiers]] entry has that name"),
        "3 errors in the config".to_string(),
    ];
    assert_eq!(lines, expected);
}

#[test]
fn version_names_the_commit_and_the_target() {
    let output = bastion(&["--version"]);
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some(format!("bastion {}", env!("CARGO_PKG_VERSION")).as_str())
    );
    let commit = lines.next().unwrap().strip_prefix("commit: ").unwrap();
    // Built from this git checkout: the commit git names for HEAD (or the override).
    let expected = std::env::var("BASTION_GIT_COMMIT").unwrap_or_else(|_| {
        let head = std::process::Command::new("git")
            .args(["rev-parse", "--short=12", "HEAD"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .unwrap();
        String::from_utf8(head.stdout).unwrap().trim().to_string()
    });
    assert_eq!(commit, expected);
    let target = lines.next().unwrap().strip_prefix("target: ").unwrap();
    assert!(
        target.starts_with(std::env::consts::ARCH) && target.contains("linux"),
        "{target}"
    );
}

#[test]
fn completions_and_the_man_page_come_from_the_command_line_definition() {
    for (shell, marker) in [
        ("bash", "complete -F _bastion"),
        ("zsh", "#compdef bastion"),
        ("fish", "complete -c bastion"),
    ] {
        let output = bastion(&["completions", shell]);
        assert!(output.status.success(), "{shell}: {}", stderr(&output));
        let script = String::from_utf8(output.stdout).unwrap();
        assert!(script.contains(marker), "{shell}:\n{script}");
        // Every subcommand and a long option are offered.
        for word in ["run", "validate", "once", "healthcheck", "log-format"] {
            assert!(script.contains(word), "{shell} lacks {word}");
        }
    }
    // bash accepts the script and completes `bastion va` to `validate`.
    let script = String::from_utf8(bastion(&["completions", "bash"]).stdout).unwrap();
    let dir = write_config("completion.bash", &script);
    let probe = format!(
        "source {}; COMP_WORDS=(bastion va); COMP_CWORD=1; _bastion bastion va bastion; echo \"${{COMPREPLY[@]}}\"",
        dir.display()
    );
    let completed = std::process::Command::new("bash")
        .args(["-c", &probe])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&completed.stdout).trim(),
        "validate",
        "{}",
        String::from_utf8_lossy(&completed.stderr)
    );
    let page = bastion(&["man"]);
    assert!(page.status.success());
    let page = String::from_utf8(page.stdout).unwrap();
    assert!(page.contains(".TH bastion 1"), "{page}");
    assert!(page.contains("validate"), "{page}");
    let dir = common::process::scratch_dir("man");
    let written = bastion(&["man", "--dir", dir.to_str().unwrap()]);
    assert!(written.status.success(), "{}", stderr(&written));
    for name in [
        "bastion.1",
        "bastion-run.1",
        "bastion-validate.1",
        "bastion-once.1",
    ] {
        let text = std::fs::read_to_string(dir.join(name)).unwrap();
        assert!(text.starts_with(".ie") || text.contains(".TH"), "{name}");
    }
    // man renders it without warnings where man is installed.
    if let Ok(output) = std::process::Command::new("man")
        .args(["--warnings", "-l", "-Tutf8"])
        .arg(dir.join("bastion-run.1"))
        .env("MANWIDTH", "80")
        .output()
    {
        // Without a terminal, man emboldens by overstriking (`c\x08c`): keep the last of each.
        let mut shown = String::new();
        for c in String::from_utf8_lossy(&output.stdout).chars() {
            if c == '\x08' {
                shown.pop();
            } else {
                shown.push(c);
            }
        }
        let warnings = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success() && warnings.is_empty(), "{warnings}");
        assert!(shown.contains("-c, --config <CONFIG>"), "{shown}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// A scheduling agent refuses to start (exit 2, naming `history.path` and its line) when its
/// SQLite history could never be written: a missing directory, a file where the directory
/// should be, a directory where the file should be; the default path too, when neither
/// `$STATE_DIRECTORY` nor `/var/lib/bastion` gives it a directory. `history.enabled = false`
/// runs all the same, and `bastion validate` does not look (the default depends on the
/// service's environment).
#[test]
fn run_refuses_a_history_database_it_could_never_write() {
    use crate::common::process::Bastion;
    let dir = crate::common::process::scratch_dir("history-path");
    let missing = dir.join("no-such-directory");
    let agent = |listen: u16| format!("[agent]\nlisten = \"127.0.0.1:{listen}\"\n");
    let cases = [
        (
            "missing directory",
            format!(
                "[history]\npath = \"{}\"\n",
                missing.join("history.db").display()
            ),
            None,
            format!(
                ":4:1: history.path {}: its directory {} cannot be used",
                missing.join("history.db").display(),
                missing.display()
            ),
        ),
        (
            "a directory",
            format!("[history]\npath = \"{}\"\n", dir.display()),
            None,
            ":4:1: history.path".to_string(),
        ),
        (
            "a file as the directory",
            "[history]\npath = \"/etc/hostname/history.db\"\n".to_string(),
            None,
            ":4:1: history.path /etc/hostname/history.db: /etc/hostname is not a directory"
                .to_string(),
        ),
        (
            "the default, with a state directory that does not exist",
            String::new(),
            Some(missing.display().to_string()),
            format!(
                "bastion.toml: history.path {}/history.db (the default",
                missing.display()
            ),
        ),
    ];
    for (what, history, state, expected) in cases {
        let listen = crate::common::nats::free_port();
        let config = format!("{}{history}", agent(listen));
        let env: Vec<(&str, &str)> = state
            .as_deref()
            .map(|state| vec![("STATE_DIRECTORY", state)])
            .unwrap_or_default();
        let mut agent_process =
            Bastion::start_with_env("history-path", listen, &config, &["run"], &env);
        let status = agent_process.wait_exit(std::time::Duration::from_secs(30));
        let log = agent_process.log();
        assert_eq!(
            status.and_then(|status| status.code()),
            Some(2),
            "{what}: {log}"
        );
        assert!(log.contains(&expected), "{what}: `{expected}` in\n{log}");
        assert!(log.contains("or set history.enabled = false"), "{log}");
        // `validate` leaves the database to the agent that opens it.
        let output = bastion(&[
            "validate",
            "--config",
            agent_process.config_path().to_str().unwrap(),
        ]);
        assert_eq!(output.status.code(), Some(0), "{what}: {}", stderr(&output));
    }
    // History off: nothing to open, so it runs and stops cleanly.
    let listen = crate::common::nats::free_port();
    let config = format!(
        "{}[history]\nenabled = false\npath = \"{}\"\n",
        agent(listen),
        missing.join("history.db").display()
    );
    let mut off = Bastion::start("history-off", listen, &config, &["run"]);
    off.wait_ready();
    off.signal("INT");
    let status = off.wait_exit(std::time::Duration::from_secs(30));
    assert_eq!(
        status.and_then(|status| status.code()),
        Some(0),
        "{}",
        off.log()
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// A `private` status page without `basic_auth_users` on a listener other hosts can reach is
/// open to all of them: the agent says so at start. On loopback it does not.
#[test]
fn a_private_status_page_open_to_other_hosts_is_warned_of_at_start() {
    use crate::common::process::Bastion;
    const WARNING: &str = "agent.web.status_page is \"private\" but agent.web.basic_auth_users \
                           is empty, and agent.listen 0.0.0.0:";
    for (address, warned) in [("0.0.0.0", true), ("127.0.0.1", false)] {
        let listen = crate::common::nats::free_port();
        let config = format!("[agent]\nlisten = \"{address}:{listen}\"\n");
        let mut agent = Bastion::start("open-page", listen, &config, &["run"]);
        agent.wait_ready();
        crate::common::eventually_blocking("bastion is running", crate::common::PATIENCE, || {
            agent.log().contains("bastion is running")
        });
        let log = agent.log();
        assert_eq!(log.contains(WARNING), warned, "{address}:\n{log}");
        assert_eq!(
            log.contains("open to anyone who reaches it"),
            warned,
            "{address}:\n{log}"
        );
        assert_eq!(agent.terminate().and_then(|status| status.code()), Some(0));
    }
}

/// What docs/results.md says basic auth guards: with users, a `public` status page, its
/// assets and badges, `/healthz` and `/readyz` stay open; `/metrics`, the API and any other
/// path ask for a password. A `private` page asks too.
#[test]
fn basic_auth_guards_what_the_docs_say_in_each_status_page_mode() {
    use crate::common::process::{http_get_blocking, Bastion};
    let hash = bcrypt::hash("s3cret-pass", 4).unwrap();
    for (mode, page_open) in [("public", true), ("private", false)] {
        let listen = crate::common::nats::free_port();
        let config = format!(
            "[agent]\nlisten = \"127.0.0.1:{listen}\"\n[agent.web]\nstatus_page = \"{mode}\"\n\
             basic_auth_users = {{ prom = \"{hash}\" }}\n"
        );
        let mut agent = Bastion::start("auth-paths", listen, &config, &["run"]);
        crate::common::eventually_blocking("/healthz", crate::common::PATIENCE, || {
            http_get_blocking(listen, "/healthz").is_some()
        });
        let status = |path: &str| http_get_blocking(listen, path).map(|(status, _)| status);
        for path in ["/healthz", "/readyz"] {
            assert_ne!(status(path), Some(401), "{mode}: {path}");
        }
        for path in ["/", "/assets/status.css", "/badge/nothing/status.svg"] {
            assert_eq!(status(path) != Some(401), page_open, "{mode}: {path}");
        }
        for path in [
            "/metrics",
            "/api/v1/checks",
            "/api/v1/incidents",
            "/no-such-path",
        ] {
            assert_eq!(status(path), Some(401), "{mode}: {path}");
        }
        assert_eq!(agent.terminate().and_then(|status| status.code()), Some(0));
    }
}
