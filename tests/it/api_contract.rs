//! The API as a contract, through the real binary: the OpenAPI document it serves is the one
//! in docs/, `/api/v1/checks` pages with a stable cursor, answers 304 to an ETag that still
//! holds, compresses for clients that accept it, and every kind of bad input is a 400 with
//! the JSON error body. `schemathesis` then fuzzes the document against a live agent with
//! checks in every state, on SQLite and on PostgreSQL.

use crate::common::nats::free_port;
use crate::common::process::Bastion;
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

/// A whole HTTP/1.1 exchange: status, headers (lowercase names) and the body as sent
/// (de-chunked, not decoded).
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) headers: BTreeMap<String, String>,
    pub(crate) body: Vec<u8>,
}

impl Answer {
    pub(crate) fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|_| panic!("JSON: {}", String::from_utf8_lossy(&self.body)))
    }

    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
}

pub(crate) fn request(port: u16, path: &str, headers: &[(&str, &str)]) -> Answer {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut text = format!("GET {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n");
    for (name, value) in headers {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    text.push_str("\r\n");
    stream.write_all(text.as_bytes()).unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let split = raw
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .expect("a complete head");
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok())
        .expect("a status line");
    let headers: BTreeMap<String, String> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_string()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    if headers.get("transfer-encoding").map(String::as_str) == Some("chunked") {
        body = dechunk(&body);
    }
    Answer {
        status,
        headers,
        body,
    }
}

fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    loop {
        let end = raw
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("chunk size");
        let size = usize::from_str_radix(
            String::from_utf8_lossy(&raw[..end])
                .split(';')
                .next()
                .unwrap()
                .trim(),
            16,
        )
        .expect("hex chunk size");
        if size == 0 {
            return body;
        }
        body.extend_from_slice(&raw[end + 2..end + 2 + size]);
        raw = &raw[end + 2 + size + 2..];
    }
}

/// `count` tcp checks against a closed port, named so that their order by name is not the
/// config's (c-007 … c-000 appear reversed in the file), run hourly so that nothing changes
/// while a test looks, plus whatever `extra` adds.
fn agent(count: usize, extra: &str) -> Bastion {
    let listen = free_port();
    let mut config =
        format!("[agent]\nid = \"contract\"\nlisten = \"127.0.0.1:{listen}\"\n{extra}");
    for index in (0..count).rev() {
        config.push_str(&format!(
            "[[checks]]\nname = \"c-{index:03}\"\ntype = \"tcp\"\naddress = \"127.0.0.1:1\"\ninterval = \"1h\"\ngroup = \"{}\"\n",
            if index % 2 == 0 { "even" } else { "odd" }
        ));
    }
    let mut agent = Bastion::start("api-contract", listen, &config, &["run"]);
    agent.wait_ready();
    agent
}

fn names(answer: &Answer) -> Vec<String> {
    answer
        .json()
        .as_array()
        .expect("an array")
        .iter()
        .map(|check| check["name"].as_str().unwrap().to_string())
        .collect()
}

/// The `after` of a `Link: </api/v1/checks?...>; rel="next"` header.
fn next_link(answer: &Answer) -> Option<String> {
    let link = answer.header("link")?;
    assert!(link.ends_with("; rel=\"next\""), "{link}");
    Some(
        link.trim_start_matches('<')
            .split_once('>')
            .expect("<url>")
            .0
            .to_string(),
    )
}

#[test]
fn pages_follow_the_names_and_their_links_reach_every_check_once() {
    let agent = agent(25, "");
    let all = request(agent.listen, "/api/v1/checks", &[]);
    assert_eq!(all.status, 200);
    let config_order = names(&all);
    assert_eq!(config_order.len(), 25);
    assert_eq!(config_order[0], "c-024", "unpaged: the config's order");
    assert!(all.header("link").is_none());

    // Pages of 10: in the order of the names, three of them, the links carrying the filters.
    let mut seen = Vec::new();
    let mut next = Some("/api/v1/checks?limit=10".to_string());
    let mut pages = 0;
    while let Some(path) = next {
        let page = request(agent.listen, &path, &[]);
        assert_eq!(page.status, 200, "{path}");
        let names = names(&page);
        assert!(names.len() <= 10);
        seen.extend(names);
        next = next_link(&page);
        pages += 1;
    }
    assert_eq!(pages, 3);
    let mut sorted = config_order.clone();
    sorted.sort();
    assert_eq!(seen, sorted, "every check once, in name order");

    // A filter is kept across pages.
    let first = request(agent.listen, "/api/v1/checks?group=odd&limit=5", &[]);
    let link = next_link(&first).expect("more odd checks");
    assert!(
        link.contains("group=odd") && link.contains("after=c-009"),
        "{link}"
    );
    let second = request(agent.listen, &link, &[]);
    assert_eq!(
        names(&second),
        ["c-011", "c-013", "c-015", "c-017", "c-019"]
    );
    // The bounds of limit, on both sides; after alone pages by the largest page.
    for (query, status) in [
        ("limit=1", 200),
        ("limit=1000", 200),
        ("limit=0", 400),
        ("limit=1001", 400),
        ("limit=-1", 400),
        ("limit=99999999999999999999", 400),
        ("limit=ten", 400),
        ("after=c-020", 200),
        // A name that is not UTF-8 is refused, not read as another one.
        ("after=%FF", 400),
        ("after=caf%C3%A9", 200),
    ] {
        let answer = request(agent.listen, &format!("/api/v1/checks?{query}"), &[]);
        assert_eq!(answer.status, status, "{query}");
        if status == 400 {
            let error = answer.json()["error"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            assert!(!error.is_empty(), "{query}: the error body");
        }
    }
    let after = request(agent.listen, "/api/v1/checks?after=c-020", &[]);
    assert_eq!(names(&after), ["c-021", "c-022", "c-023", "c-024"]);
    let past_the_end = request(agent.listen, "/api/v1/checks?after=zzz&limit=3", &[]);
    assert_eq!(past_the_end.json(), serde_json::json!([]));
}

#[test]
fn an_etag_that_still_holds_is_answered_304_and_a_reload_changes_it() {
    let agent = agent(3, "");
    let path = "/api/v1/checks?limit=2";
    // Runs are hourly, but one may land between two requests: then ask again.
    let mut not_modified = None;
    for _ in 0..5 {
        let first = request(agent.listen, path, &[]);
        let tag = first.header("etag").expect("an ETag").to_string();
        assert!(tag.starts_with("W/\""), "{tag}");
        assert_eq!(first.header("cache-control"), Some("no-cache"));
        let again = request(agent.listen, path, &[("if-none-match", &tag)]);
        if again.status == 304 {
            assert!(again.body.is_empty());
            assert_eq!(again.header("etag"), Some(tag.as_str()));
            not_modified = Some(tag);
            break;
        }
    }
    let tag = not_modified.expect("a 304 for an unchanged answer");
    // Another tag, or a list of tags without ours: the whole answer.
    let other = request(agent.listen, path, &[("if-none-match", "W/\"0\", \"1\"")]);
    assert_eq!(other.status, 200);
    let listed = request(
        agent.listen,
        path,
        &[("if-none-match", &format!("\"x\", {tag}"))],
    );
    assert!(matches!(listed.status, 200 | 304));
    // A reload that changes a check's group changes what the API shows: a new tag.
    let config = std::fs::read_to_string(agent.config_path()).unwrap();
    std::fs::write(
        agent.config_path(),
        config.replacen("group = \"even\"", "group = \"moved\"", 1),
    )
    .unwrap();
    agent.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let answer = request(agent.listen, path, &[("if-none-match", &tag)]);
        if answer.status == 200 {
            assert_ne!(answer.header("etag"), Some(tag.as_str()));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the reload never changed the ETag"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn answers_are_gzipped_for_clients_that_accept_it() {
    let agent = agent(50, "");
    let plain = request(agent.listen, "/api/v1/checks", &[]);
    assert_eq!(plain.header("content-encoding"), None);
    let zipped = request(
        agent.listen,
        "/api/v1/checks",
        &[("accept-encoding", "gzip")],
    );
    assert_eq!(zipped.status, 200);
    assert_eq!(zipped.header("content-encoding"), Some("gzip"));
    assert!(
        zipped.body.len() < plain.body.len() / 2,
        "{} vs {}",
        zipped.body.len(),
        plain.body.len()
    );
    let mut gunzip = std::process::Command::new("gzip")
        .arg("-dc")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("gzip");
    gunzip
        .stdin
        .take()
        .unwrap()
        .write_all(&zipped.body)
        .unwrap();
    let output = gunzip.wait_with_output().unwrap();
    let unzipped: Value = serde_json::from_slice(&output.stdout).expect("gzip of JSON");
    assert_eq!(unzipped.as_array().map(Vec::len), Some(50));
    let metrics = request(agent.listen, "/metrics", &[("accept-encoding", "gzip")]);
    assert_eq!(metrics.header("content-encoding"), Some("gzip"));
}

#[test]
fn bad_input_of_every_kind_is_a_400_with_the_error_body() {
    let agent = agent(1, "[history]\nenabled = true\n");
    let long = "x".repeat(10_000);
    let cases = [
        "/api/v1/checks?unknown=1".to_string(),
        "/api/v1/checks?state=BROKEN".to_string(),
        "/api/v1/checks?type=smtp".to_string(),
        "/api/v1/checks?limit=1e3".to_string(),
        "/api/v1/checks/%FF%FE".to_string(),
        "/api/v1/checks/c-000/history?unknown=1".to_string(),
        "/api/v1/checks/c-000/history?from=yesterday".to_string(),
        "/api/v1/checks/c-000/history?from=99999999999d".to_string(),
        "/api/v1/checks/c-000/history?from=9999-12-31T23:59:59Z&to=0001-01-01T00:00:00Z"
            .to_string(),
        "/api/v1/checks/c-000/history?step=0s".to_string(),
        "/api/v1/checks/c-000/history?step=18446744073709551615s".to_string(),
        "/api/v1/checks/c-000/history?by=location".to_string(),
        "/api/v1/checks/%FF/history".to_string(),
        "/api/v1/incidents?limit=-5".to_string(),
        "/api/v1/incidents?limit=184467440737095516150".to_string(),
        "/api/v1/incidents?from=1e99".to_string(),
        "/api/v1/incidents?sort=asc".to_string(),
        format!("/api/v1/checks?after={long}&limit={long}"),
    ];
    for path in &cases {
        let answer = request(agent.listen, path, &[]);
        let shown: String = path.chars().take(80).collect();
        assert_eq!(
            answer.status,
            400,
            "{shown}: {}",
            String::from_utf8_lossy(&answer.body)
        );
        let error = answer.json();
        assert!(
            error["error"].as_str().is_some_and(|text| !text.is_empty()),
            "{shown}: {error}"
        );
    }
    // A very long name that is not a check is a 404 with the body, not a failure.
    let unknown = request(agent.listen, &format!("/api/v1/checks/{long}"), &[]);
    assert_eq!(unknown.status, 404);
    assert!(unknown.json()["error"].is_string());
}

/// The document the agent serves is the one checked in.
#[test]
fn the_served_document_is_the_checked_in_one() {
    let agent = agent(1, "");
    let served = request(agent.listen, "/api/v1/openapi.json", &[]);
    assert_eq!(served.status, 200);
    assert_eq!(served.header("content-type"), Some("application/json"));
    let checked_in: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.json"))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(served.json(), checked_in);
    assert_eq!(checked_in["openapi"], "3.1.0");
}

/// Where schemathesis' `st` is: $SCHEMATHESIS, else the venv `.ci/test` installs it into.
pub(crate) fn schemathesis() -> std::path::PathBuf {
    if let Some(path) = std::env::var_os("SCHEMATHESIS") {
        return path.into();
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| std::path::Path::new(&home).join(".cache")))
        .expect("HOME or XDG_CACHE_HOME");
    let st = cache.join("bastion/schemathesis/bin/st");
    assert!(
        st.exists(),
        "schemathesis not found at {} (or $SCHEMATHESIS): run .ci/test, which installs it, or \
         python3 -m venv ~/.cache/bastion/schemathesis && ~/.cache/bastion/schemathesis/bin/pip install schemathesis",
        st.display()
    );
    st
}

/// Checks in every state but PASS_WAIT (which lasts one run): OK, WARN, FAIL_WAIT and FAIL,
/// across http, tcp and dns results, with history on `backend`.
async fn agent_in_every_state(backend: &crate::history::Backend) -> Bastion {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target = listener.local_addr().unwrap();
    crate::common::serve_ok(listener, "fine");
    let listen = free_port();
    let config = format!(
        "[agent]\nid = \"contract\"\nlisten = \"127.0.0.1:{listen}\"\n{history}\
         [[checks]]\nname = \"ok\"\ntype = \"http\"\nurl = \"http://{target}/\"\ninterval = \"1s\"\ngroup = \"edge\"\n\
         [[checks]]\nname = \"fail\"\ntype = \"tcp\"\naddress = \"127.0.0.1:1\"\ninterval = \"1s\"\nmin_failing_time = \"0s\"\n\
         [[checks]]\nname = \"waiting\"\ntype = \"tcp\"\naddress = \"127.0.0.1:1\"\ninterval = \"1s\"\nmin_failing_time = \"1h\"\n\
         [[checks]]\nname = \"warn\"\ntype = \"tcp\"\naddress = \"127.0.0.1:{port}\"\ninstances = [\"127.0.0.1\", \"127.0.0.2\"]\nmin_failing_count = 2\ninterval = \"1s\"\n\
         [[checks]]\nname = \"dns\"\ntype = \"dns\"\nserver = \"127.0.0.1:1\"\nquery = \"example.test\"\ninterval = \"2s\"\ntimeout = \"500ms\"\n",
        history = backend.toml(),
        port = target.port(),
    );
    let mut agent = Bastion::start("api-fuzz", listen, &config, &["run"]);
    agent.wait_ready();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let answer = request(agent.listen, "/api/v1/checks", &[]);
        let states: BTreeMap<String, String> = answer
            .json()
            .as_array()
            .unwrap()
            .iter()
            .filter(|check| !check["latest"].is_null())
            .map(|check| {
                (
                    check["name"].as_str().unwrap().to_string(),
                    check["state"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        let wanted = [
            ("fail", "FAIL"),
            ("ok", "OK"),
            ("waiting", "FAIL_WAIT"),
            ("warn", "WARN"),
        ];
        if wanted
            .iter()
            .all(|(name, state)| states.get(*name).map(String::as_str) == Some(*state))
            && states.contains_key("dns")
        {
            return agent;
        }
        assert!(
            Instant::now() < deadline,
            "states: {states:?}\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// schemathesis runs the served document against the agent: every phase (examples, coverage,
/// fuzzing, stateful), every check (no 5xx, status codes, content types, headers and bodies
/// as documented, schema-violating requests refused, valid ones accepted), no answer slower
/// than a second; and the agent's memory stays within a bound over the run.
async fn the_document_holds_under_fuzzing(backend: crate::history::Backend) {
    let agent = agent_in_every_state(&backend).await;
    let rss_before = agent.rss_kib().expect("the agent's RSS");
    let config = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/contract/schemathesis.toml"
    );
    let url = format!("http://127.0.0.1:{}/api/v1/openapi.json", agent.listen);
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(schemathesis())
            // It keeps a cache of what it found in its working directory: not in the repository.
            .current_dir(crate::common::process::scratch_dir("schemathesis"))
            .args(["--config-file", config, "run", &url])
            .args(["--checks", "all"])
            // /probe reaches out to whatever target it is given: fuzzed, it would probe
            // arbitrary hosts. tests/it/blackbox_probe.rs holds it to its contract instead.
            .args(["--exclude-path", "/probe"])
            .args(["--phases", "examples,coverage,fuzzing,stateful"])
            .args(["--max-examples", "60", "--workers", "2"])
            .args(["--request-timeout", "5", "--max-response-time", "1"])
            .args(["--seed", "20261206"])
            .env("NO_COLOR", "1")
            .output()
            .expect("schemathesis runs")
    })
    .await
    .unwrap();
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "schemathesis found problems:\n{report}\n{}\nagent log:\n{}",
        String::from_utf8_lossy(&output.stderr),
        agent.log()
    );
    assert!(report.contains("No issues found"), "{report}");
    let rss_after = agent.rss_kib().expect("the agent still runs");
    // Thousands of requests, none kept: the agent's memory stays within 64 MiB of where it was.
    assert!(
        rss_after < rss_before + 64 * 1024,
        "RSS grew from {rss_before} KiB to {rss_after} KiB over the run"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn schemathesis_finds_nothing_on_sqlite() {
    the_document_holds_under_fuzzing(crate::history::Backend::sqlite()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn schemathesis_finds_nothing_on_postgresql() {
    the_document_holds_under_fuzzing(crate::history::Backend::postgres().await).await;
}

/// docs/openapi.json is what tools/openapi.py writes: nobody edits one and forgets the other.
#[test]
fn the_document_is_what_its_generator_writes() {
    let root = env!("CARGO_MANIFEST_DIR");
    let written = crate::common::process::scratch_dir("openapi").join("openapi.json");
    let status = std::process::Command::new("python3")
        .arg(format!("{root}/tools/openapi.py"))
        .arg(&written)
        .status()
        .expect("python3 runs");
    assert!(status.success());
    assert_eq!(
        std::fs::read_to_string(&written).unwrap(),
        std::fs::read_to_string(format!("{root}/docs/openapi.json")).unwrap(),
        "regenerate: python3 tools/openapi.py docs/openapi.json"
    );
}
