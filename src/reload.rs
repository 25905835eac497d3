//! Config reload, on SIGHUP or `POST /-/reload`, atomic: the new file is read and validated in
//! full first. An invalid file changes nothing (the old config keeps running, the error is
//! logged, `bastion_config_last_reload_successful` reads 0). A valid one replaces the list of
//! checks, which the checker and the result sink apply check by check: unchanged checks keep
//! their phase, state and latest result; removed ones stop and their series go; added ones
//! start; changed ones restart. Runs in flight finish normally. `[[maintenance]]` windows
//! apply too, when the agent notifies. Other changes outside `[[checks]]` (listen address,
//! bus, workers, notifiers) need a restart; a reload says so and keeps them as they are.
//! Reloads never overlap.

use crate::config::blackbox::BlackboxModules;
use crate::config::{CheckConfig, Config, ConfigError, MaintenanceConfig};
use crate::metrics::{Component, Metrics, Registry};
use crate::systemd::ServiceManager;
use prometheus_client::metrics::gauge::Gauge;
use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use tokio::sync::{watch, Mutex};

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("the config was not reloaded, the running one stays: {0}")]
    Invalid(#[from] ConfigError),
    #[error("the config was not reloaded, the running one stays: reading it stopped unexpectedly ({0}); try the reload again")]
    Interrupted(String),
}

/// What a reload changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadSummary {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
    pub unchanged: usize,
    /// Sections that differ from the running config but apply only on restart.
    pub needs_restart: Vec<&'static str>,
}

impl fmt::Display for ReloadSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "config reloaded: {} added, {} removed, {} changed, {} unchanged",
            self.added.len(),
            self.removed.len(),
            self.changed.len(),
            self.unchanged
        )?;
        if !self.needs_restart.is_empty() {
            write!(
                f,
                "; changes to {} apply only after a restart",
                self.needs_restart.join(", ")
            )?;
        }
        Ok(())
    }
}

/// Whether the last config load worked, and when one last did.
#[derive(Clone, Debug)]
pub struct ReloadMetrics {
    successful: Gauge,
    success_timestamp_seconds: Gauge<f64, AtomicU64>,
}

impl Component for ReloadMetrics {
    fn register(registry: &mut Registry) -> ReloadMetrics {
        let metrics = ReloadMetrics {
            successful: Gauge::default(),
            success_timestamp_seconds: Gauge::default(),
        };
        registry.agent(
            "bastion_config_last_reload_successful",
            "Whether the last config load or reload succeeded (1) or not (0)",
            metrics.successful.clone(),
        );
        registry.agent(
            "bastion_config_last_reload_success_timestamp_seconds",
            "When the config was last loaded or reloaded successfully, in Unix seconds",
            metrics.success_timestamp_seconds.clone(),
        );
        metrics
    }
}

impl ReloadMetrics {
    /// Records the outcome of a config load or reload.
    pub fn record(&self, success: bool) {
        self.successful.set(i64::from(success));
        if success {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |since| since.as_secs_f64());
            self.success_timestamp_seconds.set(now);
        }
    }
}

/// Reloads the config file and hands the new checks to whoever follows them.
#[derive(Debug)]
pub struct Reloader {
    path: PathBuf,
    /// The running config's sections other than the checks (those are in `checks`); the lock
    /// also keeps reloads from overlapping.
    running: Mutex<Config>,
    checks: watch::Sender<crate::config::CheckList>,
    metrics: ReloadMetrics,
    service_manager: Option<Arc<ServiceManager>>,
    /// Where new maintenance windows go, when notifications follow them.
    maintenance: Option<watch::Sender<Arc<Vec<MaintenanceConfig>>>>,
    /// Where the modules of `agent.blackbox_modules` go, read again at every reload.
    blackbox: Option<watch::Sender<Option<Arc<BlackboxModules>>>>,
}

impl Reloader {
    pub fn new(
        path: PathBuf,
        running: Config,
        checks: watch::Sender<crate::config::CheckList>,
        metrics: &Metrics,
        service_manager: Option<Arc<ServiceManager>>,
    ) -> Reloader {
        Reloader {
            path,
            running: Mutex::new(Config {
                checks: Vec::new(),
                ..running
            }),
            checks,
            metrics: metrics.component(),
            service_manager,
            maintenance: None,
            blackbox: None,
        }
    }

    /// Sends the blackbox_exporter modules of each reloaded file through `modules`, so that
    /// `/probe` takes up an edited `blackbox.yml` (or a new `agent.blackbox_modules`).
    pub fn follow_blackbox(
        mut self,
        modules: watch::Sender<Option<Arc<BlackboxModules>>>,
    ) -> Reloader {
        self.blackbox = Some(modules);
        self
    }

    /// Sends the `[[maintenance]]` windows of each reloaded file through `windows`, so that
    /// they apply without a restart.
    pub fn follow_maintenance(
        mut self,
        windows: watch::Sender<Arc<Vec<MaintenanceConfig>>>,
    ) -> Reloader {
        self.maintenance = Some(windows);
        self
    }

    /// Reads the file again and applies it, or keeps everything as it is.
    pub async fn reload(&self) -> Result<ReloadSummary, ReloadError> {
        let mut running = self.running.lock().await;
        if let Some(service_manager) = &self.service_manager {
            service_manager.reloading();
        }
        // Reading the file and validating it (every check compiled, its regexes and JSON paths
        // included) is blocking work: it must not hold one of the async workers.
        let path = self.path.clone();
        let loaded = match tokio::task::spawn_blocking(move || crate::validate::load(&path)).await {
            Ok(loaded) => loaded.map_err(ReloadError::Invalid),
            Err(error) => Err(ReloadError::Interrupted(error.to_string())),
        };
        let outcome = match loaded {
            Ok(next) => {
                let current = Arc::clone(&self.checks.borrow());
                let summary = diff(&running, &current, &next, self.maintenance.is_some());
                if let Some(windows) = &self.maintenance {
                    if running.maintenance != next.maintenance {
                        tracing::info!(
                            windows = next.maintenance.len(),
                            "maintenance windows reloaded"
                        );
                        windows.send_replace(Arc::new(next.maintenance.clone()));
                        running.maintenance = next.maintenance.clone();
                    }
                }
                if let Some(modules) = &self.blackbox {
                    if *modules.borrow() != next.blackbox {
                        tracing::info!(
                            modules = next.blackbox.as_ref().map_or(0, |m| m.modules.len()),
                            "blackbox modules reloaded"
                        );
                    }
                    modules.send_replace(next.blackbox.clone());
                    running.agent.blackbox_modules = next.agent.blackbox_modules.clone();
                }
                self.checks
                    .send_replace(crate::config::check_list(next.checks));
                self.metrics.record(true);
                tracing::info!(
                    added = summary.added.len(),
                    removed = summary.removed.len(),
                    changed = summary.changed.len(),
                    unchanged = summary.unchanged,
                    "config reloaded"
                );
                if !summary.needs_restart.is_empty() {
                    tracing::warn!(sections = ?summary.needs_restart, "these config sections changed; they apply only after a restart");
                }
                Ok(summary)
            }
            Err(error) => {
                self.metrics.record(false);
                tracing::error!(%error, "config reload failed; the running config stays");
                Err(error)
            }
        };
        if let Some(service_manager) = &self.service_manager {
            service_manager.ready(&format!("{} checks", self.checks.borrow().len()));
        }
        outcome
    }
}

/// What changed; `maintenance_follows`: maintenance windows apply on reload.
fn diff(
    running: &Config,
    current: &[Arc<CheckConfig>],
    next: &Config,
    maintenance_follows: bool,
) -> ReloadSummary {
    let mut summary = ReloadSummary::default();
    let before: std::collections::HashMap<&str, &CheckConfig> = current
        .iter()
        .map(|check| (check.name.as_str(), &**check))
        .collect();
    let after: std::collections::HashSet<&str> = next
        .checks
        .iter()
        .map(|check| check.name.as_str())
        .collect();
    for check in &next.checks {
        match before.get(check.name.as_str()) {
            None => summary.added.push(check.name.clone()),
            Some(old) if *old == check => summary.unchanged += 1,
            Some(_) => summary.changed.push(check.name.clone()),
        }
    }
    for old in current {
        if !after.contains(old.name.as_str()) {
            summary.removed.push(old.name.clone());
        }
    }
    let sections = [
        // agent.blackbox_modules is read again at every reload.
        (
            "[agent]",
            crate::config::AgentConfig {
                blackbox_modules: None,
                ..running.agent.clone()
            } != crate::config::AgentConfig {
                blackbox_modules: None,
                ..next.agent.clone()
            },
        ),
        ("[bus]", running.bus != next.bus),
        ("[checker]", running.checker != next.checker),
        ("[runner]", running.runner != next.runner),
        ("[[notifiers]]", running.notifiers != next.notifiers),
        (
            "[[maintenance]]",
            !maintenance_follows && running.maintenance != next.maintenance,
        ),
        ("[history]", running.history != next.history),
    ];
    summary.needs_restart = sections
        .into_iter()
        .filter(|(_, changed)| *changed)
        .map(|(name, _)| name)
        .collect();
    summary
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const CONFIG: &str = "[[checks]]\nname = \"web\"\ntype = \"tcp\"\naddress = \"127.0.0.1:9\"\ninterval = \"1m\"\n";

    /// The file is a FIFO, so reading it blocks until a writer comes: on a single-threaded
    /// runtime, a reload that read it on the async worker would stop every other task (the
    /// timer below included) until then.
    #[tokio::test]
    async fn a_reload_reads_the_file_off_the_async_workers() {
        let dir = std::env::temp_dir().join(format!("bastion-reload-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bastion.toml");
        let made = std::process::Command::new("mkfifo")
            .arg(&path)
            .status()
            .expect("mkfifo runs");
        assert!(made.success());
        let running = Config::parse(CONFIG, crate::config::Format::Toml, &path).unwrap();
        let (checks, _) = watch::channel(crate::config::check_list(running.checks.clone()));
        let reloader = Arc::new(Reloader::new(
            path.clone(),
            running,
            checks,
            &Metrics::new(),
            None,
        ));

        // The writer waits for the async side to show it is alive, or 20 s, then writes.
        let (alive, seen) = std::sync::mpsc::channel::<()>();
        let writer = std::thread::spawn({
            let path = path.clone();
            move || {
                let in_time = seen.recv_timeout(Duration::from_secs(20)).is_ok();
                std::fs::write(&path, CONFIG).unwrap();
                in_time
            }
        });
        let reload = tokio::spawn({
            let reloader = Arc::clone(&reloader);
            async move { reloader.reload().await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let _ = alive.send(());
        let summary = tokio::time::timeout(Duration::from_secs(60), reload)
            .await
            .expect("the reload ends once the file is written")
            .unwrap()
            .unwrap();
        assert_eq!(summary.unchanged, 1);
        assert!(
            writer.join().unwrap(),
            "the runtime stood still while the reload waited for the file"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
