//! Prometheus metrics: blackbox_exporter's names for what probes saw (`probe_*`), `bastion_*`
//! for the agent's own work. Seconds as units, true histograms, and label values only from
//! bounded sets (check names, instance addresses, types, phases, fixed reasons); never error
//! text or a raw URL. Rendered in the classic text format that every Prometheus reads.

use crate::checks::{CheckType, ErrorKind};
use crate::messages::Response;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

type GaugeF64 = Gauge<f64, AtomicU64>;
type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CheckTargetLabels {
    pub check: String,
    pub target: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CheckTargetPhaseLabels {
    pub check: String,
    pub target: String,
    pub phase: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CheckTargetVersionLabels {
    pub check: String,
    pub target: String,
    pub version: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CheckTargetServingLabels {
    pub check: String,
    pub target: String,
    pub serving_status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CheckLabels {
    pub check: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabels {
    pub r#type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CheckTypeLabels {
    pub check: String,
    pub r#type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeKindLabels {
    pub r#type: &'static str,
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FormLabels {
    pub form: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SubjectLabels {
    pub subject: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CheckStateLabels {
    pub check: String,
    pub state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CheckToLabels {
    pub check: String,
    pub to: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    version: &'static str,
}

/// The phases an HTTP probe reports, as metric label values.
pub const HTTP_PHASES: [&str; 5] = ["resolve", "connect", "tls", "processing", "transfer"];
/// The phases of a TCP probe.
pub const TCP_PHASES: [&str; 4] = ["resolve", "connect", "tls", "exchange"];
/// The phases of a DNS probe.
pub const DNS_PHASES: [&str; 3] = ["resolve", "connect", "request"];
/// The phases of a TLS certificate probe.
pub const TLS_PHASES: [&str; 3] = ["resolve", "connect", "tls"];
/// The phases of an ICMP probe.
pub const ICMP_PHASES: [&str; 2] = ["resolve", "rtt"];
/// The phases of a gRPC health probe.
pub const GRPC_PHASES: [&str; 4] = ["resolve", "connect", "tls", "processing"];
/// Every value of `probe_tls_version_info`'s `version` label.
pub const TLS_VERSIONS: [&str; 2] = ["TLSv1.2", "TLSv1.3"];
/// Every value of `probe_grpc_healthcheck_response`'s `serving_status` label.
pub const GRPC_SERVING_STATUSES: [&str; 4] =
    ["UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN"];

fn latency_histogram() -> Histogram {
    // From half a millisecond to a minute: scheduling lag and dispatch waits are usually tiny,
    // and the interesting tail is seconds long.
    Histogram::new([
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
        60.0,
    ])
}

/// Every metric the agent exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub checks_scheduled: Family<CheckLabels, Counter>,
    pub schedule_skipped: Family<CheckLabels, Counter>,
    pub runs_lost: Family<CheckLabels, Counter>,
    pub schedule_lag_seconds: Histogram,
    pub dispatch_wait_seconds: HistogramFamily<TypeLabels>,
    pub dispatch_timeouts: Family<TypeLabels, Counter>,
    pub task_timeouts: Family<TypeLabels, Counter>,
    pub probe_errors: Family<TypeKindLabels, Counter>,
    pub check_duration_seconds: HistogramFamily<CheckTypeLabels>,
    pub workers_busy: Family<TypeLabels, Gauge>,
    pub workers: Family<TypeLabels, Gauge>,
    pub bus_decode_errors: Family<ReasonLabels, Counter>,
    pub bus_publish_errors: Family<SubjectLabels, Counter>,
    pub bus_connected: Gauge,
    pub bus_reconnects: Counter,
    pub bus_dropped: Family<ReasonLabels, Counter>,
    pub bus_publish_retries: Counter,
    pub requests_expired: Family<TypeLabels, Counter>,
    pub results_degraded: Family<FormLabels, Counter>,
    pub results_expired: Family<TypeLabels, Counter>,
    pub checker_leader: Gauge,
    pub check_transitions: Family<CheckToLabels, Counter>,
    pub config_last_reload_successful: Gauge,
    pub config_last_reload_success_timestamp_seconds: GaugeF64,
    pub runtime_tasks_alive: Gauge,
    /// Where the `probe_*` series come from.
    results: std::sync::OnceLock<Arc<crate::results::ResultStore>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let metrics = Metrics {
            checks_scheduled: Family::default(),
            schedule_skipped: Family::default(),
            runs_lost: Family::default(),
            schedule_lag_seconds: latency_histogram(),
            dispatch_wait_seconds: Family::new_with_constructor(latency_histogram),
            dispatch_timeouts: Family::default(),
            task_timeouts: Family::default(),
            probe_errors: Family::default(),
            check_duration_seconds: Family::new_with_constructor(latency_histogram),
            workers_busy: Family::default(),
            workers: Family::default(),
            bus_decode_errors: Family::default(),
            bus_publish_errors: Family::default(),
            bus_connected: Gauge::default(),
            bus_reconnects: Counter::default(),
            bus_dropped: Family::default(),
            bus_publish_retries: Counter::default(),
            requests_expired: Family::default(),
            results_degraded: Family::default(),
            results_expired: Family::default(),
            checker_leader: Gauge::default(),
            check_transitions: Family::default(),
            config_last_reload_successful: Gauge::default(),
            config_last_reload_success_timestamp_seconds: GaugeF64::default(),
            runtime_tasks_alive: Gauge::default(),
            results: std::sync::OnceLock::new(),
            registry: Registry::default(),
        };
        registry.register(
            "bastion_checks_scheduled",
            "Check runs published by the checker",
            metrics.checks_scheduled.clone(),
        );
        registry.register(
            "bastion_schedule_skipped",
            "Ticks skipped because the previous run of the check was still in flight",
            metrics.schedule_skipped.clone(),
        );
        registry.register(
            "bastion_runs_lost",
            "Check runs whose result never arrived before the run could no longer be in flight",
            metrics.runs_lost.clone(),
        );
        registry.register(
            "bastion_schedule_lag_seconds",
            "How late a check run was published against when it was due",
            metrics.schedule_lag_seconds.clone(),
        );
        registry.register(
            "bastion_dispatch_wait_seconds",
            "How long tasks waited for a free worker",
            metrics.dispatch_wait_seconds.clone(),
        );
        registry.register(
            "bastion_dispatch_timeouts",
            "Tasks cancelled unrun because no worker was free within the dispatch deadline",
            metrics.dispatch_timeouts.clone(),
        );
        registry.register(
            "bastion_task_timeouts",
            "Probes cancelled because they ran past the check's timeout",
            metrics.task_timeouts.clone(),
        );
        registry.register(
            "bastion_probe_errors",
            "Probes that failed at the transport, by error kind",
            metrics.probe_errors.clone(),
        );
        registry.register(
            "bastion_check_duration_seconds",
            "How long a whole check run took, from dispatch to its last response",
            metrics.check_duration_seconds.clone(),
        );
        registry.register(
            "bastion_workers_busy",
            "Workers running a probe now",
            metrics.workers_busy.clone(),
        );
        registry.register(
            "bastion_workers",
            "Workers in the pool of each check type",
            metrics.workers.clone(),
        );
        registry.register(
            "bastion_bus_decode_errors",
            "Bus messages dropped because they could not be decoded",
            metrics.bus_decode_errors.clone(),
        );
        registry.register(
            "bastion_bus_publish_errors",
            "Bus messages that could not be published",
            metrics.bus_publish_errors.clone(),
        );
        registry.register(
            "bastion_bus_connected",
            "Whether the bus is connected now (1) or not (0)",
            metrics.bus_connected.clone(),
        );
        registry.register(
            "bastion_bus_reconnects",
            "Times the bus connection was re-established after a loss",
            metrics.bus_reconnects.clone(),
        );
        registry.register(
            "bastion_bus_dropped",
            "Bus messages dropped inside bastion, by reason",
            metrics.bus_dropped.clone(),
        );
        registry.register(
            "bastion_bus_publish_retries",
            "Durable result publishes retried because the stream did not acknowledge them",
            metrics.bus_publish_retries.clone(),
        );
        registry.register(
            "bastion_requests_expired",
            "Check requests that reached the runner after their dispatch deadline and were not run",
            metrics.requests_expired.clone(),
        );
        registry.register(
            "bastion_results_degraded",
            "Results too large for the bus, published reduced, by the form they took",
            metrics.results_degraded.clone(),
        );
        registry.register(
            "bastion_results_expired",
            "Results finished after their run's window, which the checker had counted lost; not published",
            metrics.results_expired.clone(),
        );
        registry.register(
            "bastion_checker_leader",
            "Whether this checker schedules now (1) or stands by (0)",
            metrics.checker_leader.clone(),
        );
        registry.register(
            "bastion_check_transitions",
            "Changes of check state, by the state entered",
            metrics.check_transitions.clone(),
        );
        registry.register(
            "bastion_config_last_reload_successful",
            "Whether the last config load or reload succeeded (1) or not (0)",
            metrics.config_last_reload_successful.clone(),
        );
        registry.register(
            "bastion_config_last_reload_success_timestamp_seconds",
            "When the config was last loaded or reloaded successfully, in Unix seconds",
            metrics.config_last_reload_success_timestamp_seconds.clone(),
        );
        registry.register(
            "bastion_runtime_tasks_alive",
            "Tasks alive in the async runtime when /metrics was read; it follows the work in flight, not the number of checks",
            metrics.runtime_tasks_alive.clone(),
        );
        let build_info: Family<VersionLabels, Gauge> = Family::default();
        build_info
            .get_or_create(&VersionLabels {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        registry.register(
            "bastion_build_info",
            "The running bastion version, as a label; always 1",
            build_info,
        );
        for reason in ["json", "version", "too_large", "invalid"] {
            // Present at zero from the start, so rate() sees the first error.
            let _ = metrics
                .bus_decode_errors
                .get_or_create(&ReasonLabels { reason });
        }
        for reason in ["slow_consumer", "results_buffer_full", "results_rejected"] {
            let _ = metrics.bus_dropped.get_or_create(&ReasonLabels { reason });
        }
        Metrics {
            registry,
            ..metrics
        }
    }

    /// The exposition text.
    pub fn render(&self) -> String {
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let alive = runtime.metrics().num_alive_tasks();
            self.runtime_tasks_alive
                .set(i64::try_from(alive).unwrap_or(i64::MAX));
        }
        let mut text = String::with_capacity(16 * 1024);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry);
        if let Some(store) = self.results.get() {
            let families = ResultFamilies::new();
            for (check, status) in store.snapshot() {
                families.set_check_state(&check, status.state);
                if let Some(latest) = &status.latest {
                    for response in &latest.responses {
                        families.record_response(&check, latest.check_type, response);
                    }
                }
            }
            let _ =
                prometheus_client::encoding::prometheus_text::encode(&mut text, &families.registry);
        }
        text
    }

    /// Serves `probe_*` and `bastion_check_state` from `store` at every scrape. Set once, by
    /// the result sink; a process without one (a runner) has no such series.
    pub fn attach_results(&self, store: Arc<crate::results::ResultStore>) {
        let _ = self.results.set(store);
    }

    /// Declares a pool so its series exist (at zero) before the first probe.
    pub fn register_pool(&self, check_type: CheckType, workers: usize) {
        let labels = TypeLabels {
            r#type: check_type.as_str(),
        };
        self.workers
            .get_or_create(&labels)
            .set(i64::try_from(workers).unwrap_or(i64::MAX));
        let _ = self.workers_busy.get_or_create(&labels);
        let _ = self.dispatch_timeouts.get_or_create(&labels);
        let _ = self.task_timeouts.get_or_create(&labels);
        let _ = self.requests_expired.get_or_create(&labels);
        let _ = self.results_expired.get_or_create(&labels);
    }

    pub fn count_probe_error(&self, check_type: CheckType, kind: ErrorKind) {
        self.probe_errors
            .get_or_create(&TypeKindLabels {
                r#type: check_type.as_str(),
                kind: kind.as_str(),
            })
            .inc();
    }

    /// Removes the series the result sink (and the runner) keep per check: its state, its
    /// transitions and its run durations. The `probe_*` series go by target (`forget_target`).
    pub fn forget_check_results(&self, check: &str) {
        for state in crate::state::CheckState::ALL {
            self.check_transitions.remove(&CheckToLabels {
                check: check.to_string(),
                to: state.as_str(),
            });
        }
        for check_type in CheckType::ALL {
            self.check_duration_seconds.remove(&CheckTypeLabels {
                check: check.to_string(),
                r#type: check_type.as_str(),
            });
        }
    }

    /// Removes the series the checker keeps per check.
    pub fn forget_check_schedule(&self, check: &str) {
        let labels = CheckLabels {
            check: check.to_string(),
        };
        self.checks_scheduled.remove(&labels);
        self.schedule_skipped.remove(&labels);
        self.runs_lost.remove(&labels);
    }

    /// Records the outcome of a config load or reload.
    pub fn record_config_load(&self, success: bool) {
        self.config_last_reload_successful.set(i64::from(success));
        if success {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |since| since.as_secs_f64());
            self.config_last_reload_success_timestamp_seconds.set(now);
        }
    }
}

/// The series derived from each check's latest result and state (`probe_*` and
/// `bastion_check_state`). They are built afresh from the result store at every scrape and
/// dropped after it: a probe never updates a metric, removed checks and vanished instances
/// leave no series behind, and memory holds each result once, not once more per series.
#[derive(Debug)]
struct ResultFamilies {
    registry: Registry,
    pub probe_success: Family<CheckTargetLabels, GaugeF64>,
    pub probe_duration_seconds: Family<CheckTargetLabels, GaugeF64>,
    pub probe_http_status_code: Family<CheckTargetLabels, GaugeF64>,
    pub probe_http_duration_seconds: Family<CheckTargetPhaseLabels, GaugeF64>,
    pub probe_ssl_earliest_cert_expiry: Family<CheckTargetLabels, GaugeF64>,
    pub probe_tls_version_info: Family<CheckTargetVersionLabels, GaugeF64>,
    pub probe_tcp_duration_seconds: Family<CheckTargetPhaseLabels, GaugeF64>,
    pub probe_dns_duration_seconds: Family<CheckTargetPhaseLabels, GaugeF64>,
    pub probe_dns_answer_rrs: Family<CheckTargetLabels, GaugeF64>,
    pub probe_tls_duration_seconds: Family<CheckTargetPhaseLabels, GaugeF64>,
    pub probe_icmp_duration_seconds: Family<CheckTargetPhaseLabels, GaugeF64>,
    pub probe_icmp_packet_loss_ratio: Family<CheckTargetLabels, GaugeF64>,
    pub probe_grpc_duration_seconds: Family<CheckTargetPhaseLabels, GaugeF64>,
    pub probe_grpc_healthcheck_response: Family<CheckTargetServingLabels, GaugeF64>,
    pub check_state: Family<CheckStateLabels, Gauge>,
}

impl ResultFamilies {
    fn new() -> ResultFamilies {
        let mut registry = Registry::default();
        let metrics = ResultFamilies {
            registry: Registry::default(),
            probe_success: Family::default(),
            probe_duration_seconds: Family::default(),
            probe_http_status_code: Family::default(),
            probe_http_duration_seconds: Family::default(),
            probe_ssl_earliest_cert_expiry: Family::default(),
            probe_tls_version_info: Family::default(),
            probe_tcp_duration_seconds: Family::default(),
            probe_dns_duration_seconds: Family::default(),
            probe_dns_answer_rrs: Family::default(),
            probe_tls_duration_seconds: Family::default(),
            probe_icmp_duration_seconds: Family::default(),
            probe_icmp_packet_loss_ratio: Family::default(),
            probe_grpc_duration_seconds: Family::default(),
            probe_grpc_healthcheck_response: Family::default(),
            check_state: Family::default(),
        };
        registry.register(
            "probe_success",
            "Whether the last probe of the instance passed (1) or failed (0)",
            metrics.probe_success.clone(),
        );
        registry.register(
            "probe_duration_seconds",
            "How long the last probe of the instance took, resolve included",
            metrics.probe_duration_seconds.clone(),
        );
        registry.register(
            "probe_http_status_code",
            "Status code of the last HTTP response of the instance (0 when none arrived)",
            metrics.probe_http_status_code.clone(),
        );
        registry.register(
            "probe_http_duration_seconds",
            "Duration of each phase of the last HTTP probe of the instance",
            metrics.probe_http_duration_seconds.clone(),
        );
        registry.register(
            "probe_ssl_earliest_cert_expiry",
            "Earliest not-after of the certificates the instance sent, in Unix seconds",
            metrics.probe_ssl_earliest_cert_expiry.clone(),
        );
        registry.register(
            "probe_tls_version_info",
            "The TLS version the instance negotiated, as the version label; always 1",
            metrics.probe_tls_version_info.clone(),
        );
        registry.register(
            "probe_tcp_duration_seconds",
            "Duration of each phase of the last TCP probe of the instance",
            metrics.probe_tcp_duration_seconds.clone(),
        );
        registry.register(
            "probe_dns_duration_seconds",
            "Duration of each phase of the last DNS probe of the instance",
            metrics.probe_dns_duration_seconds.clone(),
        );
        registry.register(
            "probe_dns_answer_rrs",
            "Records in the answer section of the last DNS response of the instance",
            metrics.probe_dns_answer_rrs.clone(),
        );
        registry.register(
            "probe_tls_duration_seconds",
            "Duration of each phase of the last TLS certificate probe of the instance",
            metrics.probe_tls_duration_seconds.clone(),
        );
        registry.register(
            "probe_icmp_duration_seconds",
            "Duration of each phase of the last ICMP probe of the instance (rtt: mean round trip)",
            metrics.probe_icmp_duration_seconds.clone(),
        );
        registry.register(
            "probe_icmp_packet_loss_ratio",
            "Share of the echo requests of the last ICMP probe left unanswered, 0 to 1",
            metrics.probe_icmp_packet_loss_ratio.clone(),
        );
        registry.register(
            "probe_grpc_duration_seconds",
            "Duration of each phase of the last gRPC health probe of the instance",
            metrics.probe_grpc_duration_seconds.clone(),
        );
        registry.register(
            "probe_grpc_healthcheck_response",
            "The serving status the instance last reported: 1 on its serving_status, 0 on the others",
            metrics.probe_grpc_healthcheck_response.clone(),
        );
        registry.register(
            "bastion_check_state",
            "Each check's state: 1 for the current one (OK, WARN, FAIL_WAIT, FAIL, PASS_WAIT), 0 for the others",
            metrics.check_state.clone(),
        );
        ResultFamilies {
            registry,
            ..metrics
        }
    }

    /// Records the last probe of one instance.
    pub fn record_response(&self, check: &str, check_type: CheckType, response: &Response) {
        let labels = CheckTargetLabels {
            check: check.to_string(),
            target: response.target.clone(),
        };
        self.probe_success
            .get_or_create(&labels)
            .set(if response.passing { 1.0 } else { 0.0 });
        self.probe_duration_seconds
            .get_or_create(&labels)
            .set(response.timings.total);
        match response
            .tls
            .as_ref()
            .and_then(|tls| tls.earliest_cert_expiry)
        {
            Some(expiry) => {
                self.probe_ssl_earliest_cert_expiry
                    .get_or_create(&labels)
                    .set(crate::time_format::unix_seconds(expiry));
            }
            None => {
                self.probe_ssl_earliest_cert_expiry.remove(&labels);
            }
        }
        let negotiated = response.tls.as_ref().map(|tls| tls.version.as_str());
        for version in TLS_VERSIONS {
            let version_labels = CheckTargetVersionLabels {
                check: check.to_string(),
                target: response.target.clone(),
                version,
            };
            if negotiated == Some(version) {
                self.probe_tls_version_info
                    .get_or_create(&version_labels)
                    .set(1.0);
            } else {
                self.probe_tls_version_info.remove(&version_labels);
            }
        }
        let timings = &response.timings;
        match check_type {
            CheckType::Http => {
                self.probe_http_status_code.get_or_create(&labels).set(
                    response
                        .http
                        .as_ref()
                        .map_or(0.0, |http| f64::from(http.status)),
                );
                let values = [
                    timings.resolve,
                    timings.connect,
                    timings.tls,
                    timings.processing,
                    timings.transfer,
                ];
                set_phases(
                    &self.probe_http_duration_seconds,
                    check,
                    &response.target,
                    &HTTP_PHASES,
                    &values,
                );
            }
            CheckType::Tcp => {
                let values = [
                    timings.resolve,
                    timings.connect,
                    timings.tls,
                    timings.exchange,
                ];
                set_phases(
                    &self.probe_tcp_duration_seconds,
                    check,
                    &response.target,
                    &TCP_PHASES,
                    &values,
                );
            }
            CheckType::Dns => {
                let values = [timings.resolve, timings.connect, timings.request];
                set_phases(
                    &self.probe_dns_duration_seconds,
                    check,
                    &response.target,
                    &DNS_PHASES,
                    &values,
                );
                match &response.dns {
                    Some(dns) => {
                        self.probe_dns_answer_rrs
                            .get_or_create(&labels)
                            .set(dns.answers.len() as f64);
                    }
                    None => {
                        self.probe_dns_answer_rrs.remove(&labels);
                    }
                }
            }
            CheckType::Tls => {
                let values = [timings.resolve, timings.connect, timings.tls];
                set_phases(
                    &self.probe_tls_duration_seconds,
                    check,
                    &response.target,
                    &TLS_PHASES,
                    &values,
                );
            }
            CheckType::Icmp => {
                let values = [timings.resolve, timings.rtt];
                set_phases(
                    &self.probe_icmp_duration_seconds,
                    check,
                    &response.target,
                    &ICMP_PHASES,
                    &values,
                );
                match &response.icmp {
                    Some(icmp) => {
                        self.probe_icmp_packet_loss_ratio
                            .get_or_create(&labels)
                            .set(icmp.loss / 100.0);
                    }
                    None => {
                        self.probe_icmp_packet_loss_ratio.remove(&labels);
                    }
                }
            }
            CheckType::Grpc => {
                let values = [
                    timings.resolve,
                    timings.connect,
                    timings.tls,
                    timings.processing,
                ];
                set_phases(
                    &self.probe_grpc_duration_seconds,
                    check,
                    &response.target,
                    &GRPC_PHASES,
                    &values,
                );
                let current = response.grpc.as_ref().map(|grpc| grpc.status.as_str());
                for serving_status in GRPC_SERVING_STATUSES {
                    let serving_labels = CheckTargetServingLabels {
                        check: check.to_string(),
                        target: response.target.clone(),
                        serving_status,
                    };
                    match current {
                        Some(status) => {
                            self.probe_grpc_healthcheck_response
                                .get_or_create(&serving_labels)
                                .set(if status == serving_status { 1.0 } else { 0.0 });
                        }
                        None => {
                            self.probe_grpc_healthcheck_response.remove(&serving_labels);
                        }
                    }
                }
            }
        }
    }

    /// Sets `bastion_check_state` for `check`: 1 for `state`, 0 for the others.
    pub fn set_check_state(&self, check: &str, state: crate::state::CheckState) {
        for each in crate::state::CheckState::ALL {
            self.check_state
                .get_or_create(&CheckStateLabels {
                    check: check.to_string(),
                    state: each.as_str(),
                })
                .set(i64::from(each == state));
        }
    }
}

/// Sets one gauge per phase of one instance.
fn set_phases(
    family: &Family<CheckTargetPhaseLabels, GaugeF64>,
    check: &str,
    target: &str,
    phases: &[&'static str],
    values: &[f64],
) {
    for (&phase, &value) in phases.iter().zip(values) {
        family
            .get_or_create(&CheckTargetPhaseLabels {
                check: check.to_string(),
                target: target.to_string(),
                phase,
            })
            .set(value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_classic_text_with_build_info_and_histograms() {
        let metrics = Metrics::new();
        metrics.schedule_lag_seconds.observe(0.003);
        metrics.register_pool(CheckType::Http, 4);
        let text = metrics.render();
        assert!(text.contains("bastion_build_info{version=\""), "{text}");
        assert!(
            text.contains("# TYPE bastion_schedule_lag_seconds histogram"),
            "{text}"
        );
        assert!(
            text.contains("bastion_schedule_lag_seconds_bucket{le=\"0.005\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("bastion_schedule_lag_seconds_bucket{le=\"0.0025\"} 0"),
            "{text}"
        );
        assert!(text.contains("bastion_workers{type=\"http\"} 4"), "{text}");
        assert!(
            text.contains("bastion_dispatch_timeouts_total{type=\"http\"} 0"),
            "{text}"
        );
    }
}
