//! The `probe_*` series and `bastion_check_state`, derived from the result store at each
//! scrape (blackbox_exporter's names, seconds as units). They are built afresh and dropped after
//! each render: a probe never updates a metric, removed checks and vanished instances leave no
//! series behind, and memory holds each result once. Label values come from bounded sets only.

use super::ResultStore;
use crate::messages::Response;
use crate::metrics::Exposition;
use crate::model::CheckType;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

type GaugeF64 = Gauge<f64, AtomicU64>;

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
pub struct CheckStateLabels {
    pub check: String,
    pub state: &'static str,
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
    pub fn set_check_state(&self, check: &str, state: crate::model::CheckState) {
        for each in crate::model::CheckState::ALL {
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

/// The result store as the source of the derived series.
#[derive(Debug)]
pub struct ProbeSeries {
    store: Arc<ResultStore>,
}

impl ProbeSeries {
    pub fn new(store: Arc<ResultStore>) -> ProbeSeries {
        ProbeSeries { store }
    }
}

impl Exposition for ProbeSeries {
    fn encode(&self, text: &mut String) {
        let families = ResultFamilies::new();
        for (check, status) in self.store.snapshot() {
            families.set_check_state(&check, status.state);
            if let Some(latest) = &status.latest {
                for response in &latest.responses {
                    families.record_response(&check, latest.check_type, response);
                }
            }
        }
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(text, &families.registry);
    }
}
