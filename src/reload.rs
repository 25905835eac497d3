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
    /// The running config's sections other than the checks (those are in `checks`); the lock
    /// also keeps reloads from overlapping.
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
            running: Mutex::new(Config {
                checks: Vec::new(),
                ..running
            }),
            checks,
            metrics,
            notifier,
        }
    }

    /// Reads the file again and applies it, or keeps everything as it is.
    pub async fn reload(&self) -> Result<ReloadSummary, ReloadError> {
        let running = self.running.lock().await;
        if let Some(notifier) = &self.notifier {
            notifier.reloading();
        }
        let outcome = match crate::validate::load(&self.path) {
            Ok(next) => {
                let current = Arc::clone(&self.checks.borrow());
                let summary = diff(&running, &current, &next);
                self.checks.send_replace(Arc::new(next.checks));
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
            notifier.ready(&format!("{} checks", self.checks.borrow().len()));
        }
        outcome
    }
}

fn diff(running: &Config, current: &[CheckConfig], next: &Config) -> ReloadSummary {
    let mut summary = ReloadSummary::default();
    let before: std::collections::HashMap<&str, &CheckConfig> = current
        .iter()
        .map(|check| (check.name.as_str(), check))
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
