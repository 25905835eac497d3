//! The status page in a real browser: Debian's chromium, headless, loads `/` and
//! `/checks/{name}` from a running agent with real history (a check that failed for a
//! scripted stretch and recovered, and one that always passes), and the test reads the DOM
//! it rendered: states, uptime figures equal to the API's, the incident. Screenshots at
//! desktop and phone width go to `target/screenshots/`. Also: public mode hides targets,
//! addresses and error messages, and the badges are SVG.

use crate::common::{http_get, serve_ok};
use crate::history::{poll, scripted_target, Backend, Running};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;
use tokio::net::TcpListener;

fn chromium() -> PathBuf {
    crate::common::tools::tool(
        "CHROMIUM",
        "chromium",
        "/usr/bin/chromium",
        "apt-get install chromium",
    )
}

/// Runs headless chromium with `args` on `url`; returns its stdout.
pub(crate) fn browse(args: &[&str], url: &str) -> String {
    let profile = crate::common::process::scratch_dir("chromium");
    let output = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            "--virtual-time-budget=3000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .output()
        .expect("chromium runs (apt-get install chromium)");
    assert!(
        output.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn screenshot(url: &str, file: &str, width: u32, height: u32) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(file);
    let _ = std::fs::remove_file(&path);
    browse(
        &[
            &format!("--screenshot={}", path.display()),
            &format!("--window-size={width},{height}"),
        ],
        url,
    );
    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    assert!(
        size > 10_000,
        "{} is a real picture ({size} bytes)",
        path.display()
    );
    path
}

/// The value of `attribute` on the element that `marker` opens, e.g. the `data-uptime-24h`
/// of the row of check `flaky`.
fn attribute_after<'a>(dom: &'a str, marker: &str, attribute: &str) -> &'a str {
    let start = dom
        .find(marker)
        .unwrap_or_else(|| panic!("{marker} in the DOM"));
    let rest = &dom[start..];
    let at = rest
        .find(&format!("{attribute}=\""))
        .unwrap_or_else(|| panic!("{attribute} after {marker}"));
    let value = &rest[at + attribute.len() + 2..];
    &value[..value.find('"').unwrap()]
}

const CHECKS: &str = r#"
[[checks]]
name = "flaky"
group = "edge"
type = "http"
url = "http://FLAKY/"
interval = "1s"
timeout = "900ms"
min_failing_time = "0s"

[[checks]]
name = "steady"
group = "core"
type = "http"
url = "http://STEADY/"
interval = "1s"
timeout = "900ms"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromium_shows_states_uptime_and_the_incident() {
    let flaky = scripted_target(3..=5).await;
    let steady_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let steady = steady_listener.local_addr().unwrap();
    serve_ok(steady_listener, "fine");
    let backend = Backend::sqlite();
    let toml = format!(
        "{}{}",
        backend.toml(),
        CHECKS
            .replace("FLAKY", &flaky.to_string())
            .replace("STEADY", &steady.to_string())
    );
    let running = Running::start(&toml).await;
    running.wait_results("flaky", 8).await;
    poll(&running, "/api/v1/incidents?check=flaky", |body| {
        body.as_array()
            .is_some_and(|all| all.len() == 1 && all[0]["open"] == false)
    })
    .await;
    let api = poll(&running, "/api/v1/checks/flaky", |body| {
        !body["uptime"]["24h"].is_null()
    })
    .await;
    let base = format!("http://{}", running.api);

    // The overview, as the browser rendered it.
    let dom = browse(&["--dump-dom"], &format!("{base}/"));
    assert!(
        dom.contains("data-check=\"flaky\"") && dom.contains("data-check=\"steady\""),
        "{dom}"
    );
    assert_eq!(
        attribute_after(&dom, "data-check=\"steady\"", "data-state"),
        "OK"
    );
    assert_eq!(
        attribute_after(&dom, "data-check=\"flaky\"", "data-state"),
        api["state"].as_str().unwrap()
    );
    // The page's figure is the API's, read at about the same time (runs go on between the
    // two reads, so allow for the ones in between).
    let shown: f64 = attribute_after(&dom, "data-check=\"flaky\"", "data-uptime-24h")
        .parse()
        .unwrap();
    let (_, again) = running.get_json("/api/v1/checks/flaky").await;
    let (low, high) = {
        let a = api["uptime"]["24h"].as_f64().unwrap();
        let b = again["uptime"]["24h"].as_f64().unwrap();
        (a.min(b), a.max(b))
    };
    assert!(
        shown >= low - 1e-6 && shown <= high + 1e-6,
        "page {shown}, API {low}..{high}"
    );
    assert!(shown < 1.0, "three failed runs show: {shown}");

    // The check's page: the incident, the charts, the instance with its address (private).
    let dom = browse(&["--dump-dom"], &format!("{base}/checks/flaky?range=1h"));
    assert!(
        dom.contains("data-incident="),
        "an incident is listed: {dom}"
    );
    assert!(dom.contains("id=\"latency\"") && dom.contains("id=\"daily\""));
    assert!(
        dom.contains(&flaky.to_string()),
        "private pages show the target"
    );
    let duration: f64 = attribute_after(&dom, "data-incident=", "data-duration")
        .parse()
        .unwrap();
    let (_, incidents) = running.get_json("/api/v1/incidents?check=flaky").await;
    assert_eq!(Some(duration), incidents[0]["duration_seconds"].as_f64());

    for (page, name) in [("/", "overview"), ("/checks/flaky?range=15m", "check")] {
        screenshot(
            &format!("{base}{page}"),
            &format!("{name}-desktop.png"),
            1280,
            900,
        );
        screenshot(
            &format!("{base}{page}"),
            &format!("{name}-phone.png"),
            390,
            844,
        );
    }

    // Badges.
    let (status, body) = http_get(running.api, "/badge/steady/status.svg").await;
    assert_eq!(status, 200);
    assert!(body.starts_with("<svg") && body.contains(">OK<"), "{body}");
    let (status, body) = http_get(running.api, "/badge/flaky/uptime/24h.svg").await;
    assert_eq!(status, 200);
    assert!(body.contains('%'), "{body}");
    let (status, _) = http_get(running.api, "/badge/flaky/uptime/1y.svg").await;
    assert_eq!(status, 404);
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_public_page_hides_targets_addresses_and_error_messages() {
    let flaky = scripted_target(1..=1000).await;
    let backend = Backend::sqlite();
    let hash = bcrypt::hash("secret", 4).unwrap();
    let toml = format!(
        "[agent.web]\nstatus_page = \"public\"\nbasic_auth_users = {{ admin = \"{hash}\" }}\n{}{}",
        backend.toml(),
        CHECKS
            .replace("FLAKY", &flaky.to_string())
            .replace("STEADY", &flaky.to_string())
    );
    let running = Running::start(&toml).await;
    running.wait_results("flaky", 3).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for page in ["/", "/checks/flaky", "/checks/flaky?range=1h"] {
        let (status, body) = http_get(running.api, page).await;
        assert_eq!(status, 200, "public pages need no password");
        assert!(
            !body.contains(&flaky.to_string()),
            "{page} leaks the address: {body}"
        );
        assert!(!body.contains("127.0.0.1"), "{page} leaks an address");
        assert!(!body.contains("503"), "{page} leaks an error message");
        assert!(body.contains("FAIL"), "{page} shows the state");
    }
    // The API stays behind the password.
    let (status, _) = http_get(running.api, "/api/v1/checks").await;
    assert_eq!(status, 401);
    running.stop().await;
}
