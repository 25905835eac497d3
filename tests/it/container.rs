//! The Docker image, built and run for real: deploy/docker/Dockerfile's `prebuilt` target
//! with the binary under test, on a base image made here with debootstrap + `docker import`
//! (no registry is reachable), run hardened as the Dockerfile documents (`--read-only`,
//! `--cap-drop=ALL`, no-new-privileges, the ping_group_range sysctl for ICMP). Checked: uid
//! 10001, the image's HEALTHCHECK reaches `healthy`, /metrics answers through the published
//! port with an HTTP and an ICMP check passing, `docker stop` drains and exits 0, and the logs
//! are plain text. Skipped, saying why, only where dockerd cannot be started.

use crate::common::debian::{cached_tree, require_root, SUITE};
use crate::common::process::{http_get_blocking, scratch_dir};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const DOCKERFILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/docker/Dockerfile");

fn docker(args: &[&str]) -> Output {
    Command::new("docker")
        .args(args)
        // The classic builder stops at `--target prebuilt` without pulling the Rust image,
        // and needs no buildx plugin.
        .env("DOCKER_BUILDKIT", "0")
        .output()
        .expect("the docker CLI is not installed: apt-get install docker.io (.ci/test does)")
}

fn docker_ok(args: &[&str]) -> String {
    let output = docker(args);
    assert!(
        output.status.success(),
        "docker {args:?}: {}\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// A dockerd this test started because none answered; stopped on drop.
struct OwnDaemon(Child);

impl Drop for OwnDaemon {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg(self.0.id().to_string()).status();
        let _ = self.0.wait();
    }
}

/// A daemon that answers: the running one, or one started now. Err says why there is none.
fn daemon() -> Result<Option<OwnDaemon>, String> {
    if docker(&["info"]).status.success() {
        return Ok(None);
    }
    let child = Command::new("dockerd")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|error| format!("no daemon answers and dockerd does not start: {error}"))?;
    let mut own = OwnDaemon(child);
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if docker(&["info"]).status.success() {
            return Ok(Some(own));
        }
        if let Ok(Some(status)) = own.0.try_wait() {
            return Err(format!("dockerd exited at start with {status}"));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Err("dockerd did not answer within 60s".to_string())
}

/// The base image: the debootstrap tree of the Dockerfile's Debian release that the package
/// test uses too (its systemd is unused here), imported once.
fn base_image() -> String {
    let tag = format!("bastion-test-base:{SUITE}-systemd");
    if docker(&["image", "inspect", &tag]).status.success() {
        return tag;
    }
    let tree = cached_tree();
    let started = Instant::now();
    let import = format!("tar -C {} -c . | docker import - {tag}", tree.display());
    let status = Command::new("sh").args(["-c", &import]).status().unwrap();
    assert!(status.success(), "{import}");
    eprintln!(
        "docker import of the base took {:.1}s",
        started.elapsed().as_secs_f64()
    );
    tag
}

/// Removes the container and the image even when an assertion fails.
struct Cleanup {
    container: String,
    image: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = docker(&["rm", "-f", &self.container]);
        let _ = docker(&["rmi", "-f", &self.image]);
    }
}

fn wait_until(what: &str, mut done: impl FnMut() -> Option<String>) -> String {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(value) = done() {
            return value;
        }
        assert!(Instant::now() < deadline, "{what} within 120s");
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn the_image_runs_hardened_healthy_and_stops_cleanly() {
    require_root("the container test");
    let _daemon = match daemon() {
        Ok(daemon) => daemon,
        Err(reason) => {
            eprintln!("SKIPPED container test: {reason}");
            return;
        }
    };
    let base = base_image();
    let scratch = scratch_dir("container");
    let id = std::process::id();
    let cleanup = Cleanup {
        container: format!("bastion-it-{id}"),
        image: format!("bastion-it:{id}"),
    };

    // The build context: the binary under test alone, without its debug info.
    let context = scratch.join("context");
    std::fs::create_dir_all(&context).unwrap();
    let status = Command::new("objcopy")
        .arg("--strip-debug")
        .arg(env!("CARGO_BIN_EXE_bastion"))
        .arg(context.join("bastion"))
        .status()
        .unwrap();
    assert!(status.success(), "objcopy");
    let started = Instant::now();
    docker_ok(&[
        "build",
        "-q",
        "-f",
        DOCKERFILE,
        "--target",
        "prebuilt",
        "--build-arg",
        &format!("BASE_IMAGE={base}"),
        "-t",
        &cleanup.image,
        context.to_str().unwrap(),
    ]);
    eprintln!("docker build took {:.1}s", started.elapsed().as_secs_f64());
    let size: u64 = docker_ok(&["image", "inspect", "-f", "{{.Size}}", &cleanup.image])
        .parse()
        .unwrap();
    eprintln!("image size {:.0} MB", size as f64 / 1e6);

    // The config, readable by uid 10001: an HTTP check on the agent itself and an ICMP
    // check on the container's loopback (unprivileged ICMP sockets, no capability).
    let config = scratch.join("etc");
    write_config(&config);
    let health = docker_ok(&[
        "image",
        "inspect",
        "-f",
        "{{json .Config.Healthcheck.Test}}",
        &cleanup.image,
    ]);
    assert!(health.contains("\"healthcheck\""), "{health}");

    let started = Instant::now();
    docker_ok(&[
        "run",
        "-d",
        "--name",
        &cleanup.container,
        "--read-only",
        "--cap-drop=ALL",
        "--security-opt",
        "no-new-privileges",
        "--sysctl",
        "net.ipv4.ping_group_range=0 2147483647",
        "-p",
        "127.0.0.1::9464",
        "-v",
        &format!("{}:/etc/bastion:ro", config.display()),
        // The image's own HEALTHCHECK command, asked every second instead of every 30.
        "--health-interval=1s",
        &cleanup.image,
    ]);
    let inspect = |format: &str| docker_ok(&["inspect", "-f", format, &cleanup.container]);
    wait_until("healthy", || {
        let status = inspect("{{.State.Status}} {{.State.Health.Status}}");
        assert!(
            status.starts_with("running"),
            "{status}: {}",
            docker_ok(&["logs", &cleanup.container])
        );
        (status == "running healthy").then_some(status)
    });
    eprintln!(
        "healthy {:.1}s after docker run",
        started.elapsed().as_secs_f64()
    );

    // Non-root: bastion is PID 1 and runs as 10001 with no capabilities.
    let status = docker_ok(&["exec", &cleanup.container, "cat", "/proc/1/status"]);
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .map(str::trim)
            .unwrap_or_else(|| panic!("{name} in {status}"))
            .to_string()
    };
    assert!(field("Uid:").starts_with("10001"), "{status}");
    assert!(field("Gid:").starts_with("10001"), "{status}");
    assert_eq!(field("CapEff:"), "0000000000000000");
    assert_eq!(field("CapBnd:"), "0000000000000000");
    assert_eq!(field("NoNewPrivs:"), "1");
    // A read-only root.
    let write = docker(&["exec", &cleanup.container, "touch", "/usr/local/bin/x"]);
    assert!(!write.status.success(), "the root file system is writable");
    assert!(String::from_utf8_lossy(&write.stderr).contains("Read-only file system"));

    // /metrics through the published port, with both checks passing.
    let published = docker_ok(&["port", &cleanup.container, "9464/tcp"]);
    let port: u16 = published
        .lines()
        .next()
        .and_then(|line| line.rsplit(':').next())
        .and_then(|port| port.parse().ok())
        .unwrap_or_else(|| panic!("published port: {published}"));
    let metrics = wait_until("both checks passing in /metrics", || {
        let (_, body) = http_get_blocking(port, "/metrics")?;
        let passing = [
            "probe_success{check=\"self\",target=\"127.0.0.1:9464\"} 1",
            "probe_success{check=\"loopback-icmp\",target=\"127.0.0.1\"} 1",
        ];
        passing
            .iter()
            .all(|series| body.contains(series))
            .then_some(body)
    });
    assert!(
        metrics.contains("bastion_build_info{version=\""),
        "{metrics}"
    );
    // History is written into the image's /var/lib/bastion volume under a read-only root.
    wait_until("history written in the volume", || {
        let (_, body) = http_get_blocking(port, "/metrics")?;
        body.lines()
            .find_map(|line| line.strip_prefix("bastion_history_written_total "))
            .and_then(|value| value.trim().parse::<f64>().ok())
            .filter(|written| *written >= 1.0)
            .map(|_| body.clone())
    });

    // SIGTERM drains and exits 0, well within docker stop's 10s.
    let started = Instant::now();
    docker_ok(&["stop", &cleanup.container]);
    let stopped = started.elapsed();
    eprintln!("docker stop took {:.2}s", stopped.as_secs_f64());
    assert_eq!(inspect("{{.State.ExitCode}}"), "0");
    assert_eq!(inspect("{{.State.OOMKilled}}"), "false");

    // Plain text: no terminal colours, one timestamped line per event.
    let logs = docker(&["logs", &cleanup.container]);
    let logs = format!(
        "{}{}",
        String::from_utf8_lossy(&logs.stdout),
        String::from_utf8_lossy(&logs.stderr)
    );
    assert!(!logs.contains('\x1b'), "{logs:?}");
    assert!(
        logs.contains(" INFO bastion_agent::agent: bastion is running"),
        "{logs}"
    );
    assert!(logs.contains("bastion stopped"), "{logs}");
    for line in logs.lines() {
        assert!(line.starts_with("20"), "not a timestamped line: {line:?}");
    }

    drop(cleanup);
    let _ = std::fs::remove_dir_all(scratch);
}

fn write_config(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = dir.join("bastion.toml");
    std::fs::write(
        &path,
        r#"[agent]
# Inside a container the agent listens on all interfaces, or the published port reaches nothing.
listen = "0.0.0.0:9464"

[[checks]]
name = "self"
type = "http"
url = "http://127.0.0.1:9464/healthz"
interval = "2s"

[[checks]]
name = "loopback-icmp"
type = "icmp"
host = "127.0.0.1"
interval = "2s"
"#,
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
}
