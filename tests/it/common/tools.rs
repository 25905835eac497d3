//! External programs the deployment tests drive (systemd-analyze, promtool, prometheus,
//! blackbox_exporter):
//! found through an environment variable, else PATH, else their Debian location. A missing
//! one fails the test with what to install; it is never skipped.

use std::path::PathBuf;

/// The program `name`: `$env_var`, else `name` on PATH, else `fallback`. Panics with
/// `install` (what provides it) when none exists.
pub fn tool(env_var: &str, name: &str, fallback: &str, install: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(env_var) {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "${env_var} is {}, which is not a file",
            path.display()
        );
        return path;
    }
    let on_path = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|dir| dir.join(name))
        .find(|path| path.is_file());
    if let Some(path) = on_path {
        return path;
    }
    let fallback = PathBuf::from(fallback);
    assert!(
        fallback.is_file(),
        "{name} not found (not in ${env_var}, on PATH or at {}): {install}, or run .ci/test, \
         which installs it",
        fallback.display()
    );
    fallback
}

pub fn systemd_analyze() -> PathBuf {
    tool(
        "SYSTEMD_ANALYZE",
        "systemd-analyze",
        "/usr/bin/systemd-analyze",
        "install systemd (apt-get install systemd)",
    )
}

pub fn promtool() -> PathBuf {
    tool(
        "PROMTOOL",
        "promtool",
        "/usr/bin/promtool",
        "install Prometheus, which ships promtool (apt-get install prometheus)",
    )
}

pub fn prometheus() -> PathBuf {
    tool(
        "PROMETHEUS",
        "prometheus",
        "/usr/bin/prometheus",
        "install Prometheus (apt-get install prometheus)",
    )
}

/// Debian's blackbox_exporter, for the side-by-side tests of `/probe`.
pub fn blackbox_exporter() -> PathBuf {
    tool(
        "BLACKBOX_EXPORTER",
        "prometheus-blackbox-exporter",
        "/usr/bin/prometheus-blackbox-exporter",
        "install blackbox_exporter (apt-get install prometheus-blackbox-exporter)",
    )
}
