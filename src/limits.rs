//! The open-file budget, checked at start-up. Every probe holds one socket while it runs, so
//! the worker pools (`runner.workers.*`) are the cap on concurrent probe sockets; the listener,
//! the NATS connection, the API's clients and the process's own files need some more. When
//! the soft `RLIMIT_NOFILE` (read from `/proc/self/limits`, no unsafe code) is below that sum,
//! probes past the limit would fail with `connect` errors that blame the target for a limit of
//! this host: the agent says so at start-up, with the numbers and how to raise the limit.
//!
//! It warns rather than refuses: the pools are caps, not demand, and a config with many workers
//! and few checks runs fine under a low limit. It never changes the limit itself.

use crate::checks::CheckType;
use crate::config::WorkersConfig;

/// Descriptors beyond the worker pools: the listener and its clients (the API, scrapes),
/// the NATS connection, stdio, the runtime's own, certificate and config files being read.
pub const HEADROOM: u64 = 64;

/// Where Linux shows this process's limits.
const PROC_LIMITS: &str = "/proc/self/limits";

/// A soft or hard limit as `/proc/self/limits` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Unlimited,
    Files(u64),
}

/// The soft open-file limit of this process, from `/proc/self/limits`. None where that file
/// cannot be read or parsed (not Linux): nothing is checked then.
pub fn soft_open_files() -> Option<Limit> {
    let text = std::fs::read_to_string(PROC_LIMITS).ok()?;
    parse_soft_open_files(&text)
}

/// The soft limit on the `Max open files` line of a `/proc/<pid>/limits` text.
pub fn parse_soft_open_files(text: &str) -> Option<Limit> {
    let line = text
        .lines()
        .find(|line| line.starts_with("Max open files"))?;
    let soft = line
        .strip_prefix("Max open files")?
        .split_whitespace()
        .next()?;
    if soft == "unlimited" {
        return Some(Limit::Unlimited);
    }
    soft.parse().ok().map(Limit::Files)
}

/// Probes that may run at once: the sum of the worker pools.
pub fn probe_sockets(workers: &WorkersConfig) -> u64 {
    CheckType::ALL
        .iter()
        .map(|check_type| workers.for_type(*check_type) as u64)
        .fold(0, u64::saturating_add)
}

/// The warning to log when `limit` is too low for `sockets` probes plus the headroom; None
/// when it suffices.
pub fn shortfall(limit: Limit, sockets: u64) -> Option<String> {
    let needed = sockets.saturating_add(HEADROOM);
    match limit {
        Limit::Unlimited => None,
        Limit::Files(files) if files >= needed => None,
        Limit::Files(files) => Some(format!(
            "the open-file limit is {files}, but the worker pools may hold {sockets} probe \
             sockets at once (the sum of runner.workers) and the agent needs about {HEADROOM} \
             more: past the limit, probes fail as `connect` errors that blame their target. \
             Raise the limit to at least {needed} (LimitNOFILE={needed} in the systemd unit, \
             `ulimit -n {needed}` in the shell, `--ulimit nofile={needed}` for Docker), or \
             lower runner.workers"
        )),
    }
}

/// Logs a warning when this process's soft open-file limit is too low for `workers`.
/// Returns the warning, for callers that report it elsewhere too.
pub fn warn_if_too_low(workers: &WorkersConfig) -> Option<String> {
    let limit = soft_open_files()?;
    let sockets = probe_sockets(workers);
    let warning = shortfall(limit, sockets)?;
    tracing::warn!(
        open_files_limit = ?limit,
        probe_sockets = sockets,
        headroom = HEADROOM,
        "{warning}"
    );
    Some(warning)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: &str = "\
Limit                     Soft Limit           Hard Limit           Units
Max cpu time              unlimited            unlimited            seconds
Max open files            1024                 524288               files
Max locked memory         8388608              8388608              bytes
";

    #[test]
    fn the_soft_limit_is_read_from_proc_limits() {
        assert_eq!(parse_soft_open_files(LIMITS), Some(Limit::Files(1024)));
        let unlimited = LIMITS.replace(
            "Max open files            1024",
            "Max open files            unlimited",
        );
        assert_eq!(parse_soft_open_files(&unlimited), Some(Limit::Unlimited));
        assert_eq!(parse_soft_open_files("Max cpu time 1 1 seconds\n"), None);
        assert_eq!(
            parse_soft_open_files("Max open files  lots  1 files\n"),
            None
        );
        // This process runs on Linux: its own limits are readable.
        assert!(soft_open_files().is_some());
    }

    #[test]
    fn the_pools_plus_headroom_must_fit_under_the_limit() {
        let mut workers = WorkersConfig::default();
        assert_eq!(probe_sockets(&workers), 80);
        assert_eq!(shortfall(Limit::Files(144), 80), None);
        assert_eq!(shortfall(Limit::Unlimited, u64::MAX), None);
        workers.set(CheckType::Http, 500);
        let warning = shortfall(Limit::Files(64), probe_sockets(&workers)).unwrap();
        assert!(
            warning.starts_with(
                "the open-file limit is 64, but the worker pools may hold 570 probe sockets"
            ),
            "{warning}"
        );
        assert!(warning.contains("LimitNOFILE=634"), "{warning}");
        assert!(warning.contains("ulimit -n 634"), "{warning}");
        workers.set(CheckType::Tcp, usize::MAX);
        assert_eq!(probe_sockets(&workers), u64::MAX);
    }
}
