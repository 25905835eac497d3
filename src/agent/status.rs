//! Keeps systemd informed while the agent runs: ready once, then a status line (checks,
//! failing) and, when systemd watches, the watchdog. It only reports: it must never change
//! what the agent does, and a failed notification never stops the agent.

use super::Role;
use crate::results::ResultStore;
use crate::systemd::ServiceManager;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Tells systemd the agent is ready, then keeps its status line current and, when systemd
/// watches, pets the watchdog at half its interval.
pub(super) async fn report_to_systemd(
    service_manager: Arc<ServiceManager>,
    checks: watch::Receiver<crate::config::CheckList>,
    store: Arc<ResultStore>,
    role: Role,
    stop: CancellationToken,
) {
    let summary = || {
        if !role.schedules() {
            return format!("{} runner", role.as_str());
        }
        let checks = Arc::clone(&checks.borrow());
        let failing = checks
            .iter()
            .filter(|check| {
                store
                    .latest(&check.name)
                    .is_some_and(|result| !result.passing)
            })
            .count();
        format!("{} checks, {failing} failing", checks.len())
    };
    service_manager.ready(&summary());
    let watchdog = crate::systemd::watchdog_interval();
    let every = watchdog.map_or(Duration::from_secs(10), |half| {
        half.min(Duration::from_secs(10))
    });
    let mut ticks = tokio::time::interval(every);
    ticks.tick().await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = ticks.tick() => {}
        }
        if watchdog.is_some() {
            service_manager.notify(&format!("WATCHDOG=1\nSTATUS={}", summary()));
        } else {
            service_manager.status(&summary());
        }
    }
}
