//! Every default of the configuration file, in one place: the constants, the functions serde
//! calls for missing keys, and the `Default` impls of the sections that may be left out.

use super::schema::*;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub(super) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
pub(super) const DEFAULT_MIN_FAILING_TIME: Duration = Duration::from_secs(90);
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// `runner.forget_checks_after` unless configured.
pub const DEFAULT_FORGET_CHECKS_AFTER: Duration = Duration::from_secs(600);
/// `runner.max_check_series` unless configured.
pub const DEFAULT_MAX_CHECK_SERIES: usize = 10_000;
/// The most `runner.max_check_series` may be: each series is about 17 lines of `/metrics`.
pub const MAX_CHECK_SERIES_LIMIT: usize = 1_000_000;
/// Larger bodies would let one check hold this much memory per worker.
pub const MAX_BODY_BYTES_LIMIT: usize = 64 * 1024 * 1024;

pub(super) fn default_agent_id() -> String {
    // The kernel's host name; the environment as a fallback for unusual sandboxes.
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|name| name.trim().to_string())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "bastion".to_string())
}
pub(super) fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9464))
}
pub(super) fn default_shutdown_grace() -> Duration {
    Duration::from_secs(10)
}
pub(super) fn default_dispatch_deadline() -> Duration {
    Duration::from_secs(30)
}
pub(super) fn default_forget_checks_after() -> Duration {
    DEFAULT_FORGET_CHECKS_AFTER
}
pub(super) fn default_heartbeat_interval() -> Duration {
    Duration::from_secs(10)
}

pub(super) fn default_location() -> String {
    "default".to_string()
}

pub(super) fn default_max_check_series() -> usize {
    DEFAULT_MAX_CHECK_SERIES
}
pub(super) fn default_max_body_bytes() -> usize {
    128 * 1024
}
pub(super) fn default_workers() -> usize {
    10
}
pub(super) fn default_true() -> bool {
    true
}
pub(super) fn is_true(value: &bool) -> bool {
    *value
}
pub(super) fn default_subject_prefix() -> String {
    "bastion".to_string()
}
pub(super) fn default_results_max_age() -> Duration {
    Duration::from_secs(24 * 3600)
}
pub(super) fn default_results_buffer() -> usize {
    1024
}
pub(super) fn default_replicas() -> usize {
    1
}
pub(super) fn default_lease_ttl() -> Duration {
    Duration::from_secs(10)
}
pub(super) fn default_lease_bucket() -> String {
    "bastion_checker".to_string()
}
pub(super) fn default_notify_timeout() -> Duration {
    Duration::from_secs(10)
}
pub(super) fn default_notify_queue_size() -> usize {
    256
}
pub(super) fn default_notify_max_attempts() -> u32 {
    12
}
pub(super) fn default_notify_retry_backoff() -> Duration {
    Duration::from_secs(1)
}
pub(super) fn default_notify_retry_backoff_max() -> Duration {
    Duration::from_secs(300)
}
pub(super) fn default_pagerduty_url() -> String {
    "https://events.pagerduty.com/v2/enqueue".to_string()
}
pub(super) fn default_time_zone() -> String {
    "UTC".to_string()
}
/// How often an `alertmanager` notifier re-sends a firing alert unless `repeat_interval` says.
pub const ALERTMANAGER_RESEND: Duration = Duration::from_secs(60);
pub(super) fn default_method() -> String {
    "GET".to_string()
}
pub(super) fn default_icmp_count() -> u16 {
    3
}
pub(super) fn default_packet_interval() -> Duration {
    Duration::from_millis(100)
}
pub(super) fn default_payload_size() -> u16 {
    56
}

/// `history.path` unless configured: `history.db` in systemd's `StateDirectory=` (an absolute
/// `$STATE_DIRECTORY`), else in `/var/lib/bastion`.
pub fn default_history_path() -> PathBuf {
    let directory = std::env::var_os("STATE_DIRECTORY")
        .map(PathBuf::from)
        .filter(|dir| dir.is_absolute())
        .unwrap_or_else(|| PathBuf::from("/var/lib/bastion"));
    directory.join("history.db")
}
pub(super) fn default_history_flush_interval() -> Duration {
    Duration::from_secs(1)
}
pub(super) fn default_history_buffer() -> usize {
    65_536
}
pub(super) fn default_history_raw_retention() -> Duration {
    Duration::from_secs(24 * 3600)
}
pub(super) fn default_history_hourly_retention() -> Duration {
    Duration::from_secs(8 * 24 * 3600)
}
pub(super) fn default_history_daily_retention() -> Duration {
    Duration::from_secs(400 * 24 * 3600)
}
pub(super) fn default_history_event_retention() -> Duration {
    Duration::from_secs(400 * 24 * 3600)
}

impl Default for HistoryConfig {
    fn default() -> Self {
        HistoryConfig {
            enabled: true,
            path: default_history_path(),
            url: None,
            password_file: None,
            flush_interval: default_history_flush_interval(),
            buffer: default_history_buffer(),
            raw_retention: default_history_raw_retention(),
            hourly_retention: default_history_hourly_retention(),
            daily_retention: default_history_daily_retention(),
            event_retention: default_history_event_retention(),
        }
    }
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            id: default_agent_id(),
            listen: default_listen(),
            shutdown_grace: default_shutdown_grace(),
            web: WebConfig::default(),
            external_url: None,
            blackbox_modules: None,
            heartbeat_interval: default_heartbeat_interval(),
        }
    }
}
impl Default for WebConfig {
    fn default() -> Self {
        WebConfig {
            tls_cert_file: None,
            tls_key_file: None,
            basic_auth_users: BTreeMap::new(),
            reload_endpoint: true,
            status_page: StatusPageMode::default(),
        }
    }
}
impl Default for CheckerConfig {
    fn default() -> Self {
        CheckerConfig {
            ha: false,
            lease_ttl: default_lease_ttl(),
            lease_bucket: default_lease_bucket(),
        }
    }
}
impl Default for RunnerConfig {
    fn default() -> Self {
        RunnerConfig {
            dispatch_deadline: default_dispatch_deadline(),
            max_body_bytes: default_max_body_bytes(),
            workers: WorkersConfig::default(),
            dns_servers: Vec::new(),
            forget_checks_after: default_forget_checks_after(),
            max_check_series: default_max_check_series(),
            location: default_location(),
        }
    }
}
impl Default for WorkersConfig {
    fn default() -> Self {
        WorkersConfig {
            http: default_workers(),
            tcp: default_workers(),
            dns: default_workers(),
            tls: default_workers(),
            icmp: default_workers(),
            grpc: default_workers(),
            udp: default_workers(),
            websocket: default_workers(),
        }
    }
}
