//! Config reload, on SIGHUP or `POST /-/reload`, atomic: the new file is read and validated in
//! full first. An invalid file changes nothing (the old config keeps running, the error is
//! logged, `bastion_config_last_reload_successful` reads 0). A valid one replaces the list of
//! checks, which the checker and the result sink apply check by check: unchanged checks keep
//! their phase, state and latest result; removed ones stop and their series go; added ones
//! start; changed ones restart. Runs in flight finish normally. Changes outside `[[checks]]`
//! (listen address, bus, workers) need a restart; a reload says so and keeps them as they are.
//! Reloads never overlap.

use crate::config::{CheckConfig, Config, ConfigError};
use crate::metrics::Metrics;
use crate::systemd::Notifier;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::{watch, Mutex};

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("the config was not reloaded, the running one stays: {0}")]
    Invalid(#[from] ConfigError),
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

/// Reloads the config file and hands the new checks to whoever follows them.
#[derive(Debug)]
pub struct Reloader {
    path: PathBuf,
    /// The running config; the lock also keeps reloads from overlapping.
    running: Mutex<Config>,
    checks: watch::Sender<Arc<Vec<CheckConfig>>>,
    metrics: Arc<Metrics>,
    notifier: Option<Arc<Notifier>>,
}

impl Reloader {
    pub fn new(
        path: PathBuf,
        running: Config,
        checks: watch::Sender<Arc<Vec<CheckConfig>>>,
        metrics: Arc<Metrics>,
        notifier: Option<Arc<Notifier>>,
    ) -> Reloader {
        Reloader {
            path,
            running: Mutex::new(running),
            checks,
            metrics,
            notifier,
        }
    }

    /// Reads the file again and applies it, or keeps everything as it is.
    pub async fn reload(&self) -> Result<ReloadSummary, ReloadError> {
        let mut running = self.running.lock().await;
        if let Some(notifier) = &self.notifier {
            notifier.reloading();
        }
        let outcome = match Config::load(&self.path) {
            Ok(next) => {
                let summary = diff(&running, &next);
                running.checks = next.checks;
                self.checks.send_replace(Arc::new(running.checks.clone()));
                self.metrics.record_config_load(true);
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
                self.metrics.record_config_load(false);
                tracing::error!(%error, "config reload failed; the running config stays");
                Err(ReloadError::Invalid(error))
            }
        };
        if let Some(notifier) = &self.notifier {
            notifier.ready(&format!("{} checks", running.checks.len()));
        }
        outcome
    }
}

fn diff(running: &Config, next: &Config) -> ReloadSummary {
    let mut summary = ReloadSummary::default();
    for check in &next.checks {
        match running.checks.iter().find(|old| old.name == check.name) {
            None => summary.added.push(check.name.clone()),
            Some(old) if old == check => summary.unchanged += 1,
            Some(_) => summary.changed.push(check.name.clone()),
        }
    }
    for old in &running.checks {
        if !next.checks.iter().any(|check| check.name == old.name) {
            summary.removed.push(old.name.clone());
        }
    }
    let sections = [
        ("[agent]", running.agent != next.agent),
        ("[bus]", running.bus != next.bus),
        ("[checker]", running.checker != next.checker),
        ("[runner]", running.runner != next.runner),
    ];
    summary.needs_restart = sections
        .into_iter()
        .filter(|(_, changed)| *changed)
        .map(|(name, _)| name)
        .collect();
    summary
}
