//! The `probe_*` series and `bastion_check_state`, derived from the result store at each
//! scrape, and `bastion_check_info` from the configured checks (blackbox_exporter's names, seconds as units). They are built afresh and dropped after
//! each render: a probe never updates a metric, removed checks and vanished instances leave no
//! series behind, and memory holds each result once. The series every type has are declared
//! here; each check type declares and writes its own (`checks::CheckKind::series`). Label values
//! come from bounded sets only.

use super::ResultStore;
use crate::checks::series::{SeriesOut, SeriesSpec};
use crate::checks::KINDS;
use crate::messages::Response;
use crate::metrics::Exposition;
use crate::model::{CheckState, CheckType};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

type GaugeF64 = Gauge<f64, AtomicU64>;

/// `check`, `target`, the response's `labels` (the check's and its instance's, names checked
/// when they were configured or discovered), then at most one label of the series' own
/// (`phase`, `version`, ...), whose key and value come from the fixed lists the check types
/// declare.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct SeriesLabels {
    check: String,
    target: String,
    extra: Arc<Vec<(String, String)>>,
    own: Option<(&'static str, &'static str)>,
}

impl EncodeLabelSet for SeriesLabels {
    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::LabelSetEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeLabel;
        ("check", self.check.as_str()).encode(encoder.encode_label())?;
        ("target", self.target.as_str()).encode(encoder.encode_label())?;
        for (name, value) in self.extra.iter() {
            (name.as_str(), value.as_str()).encode(encoder.encode_label())?;
        }
        if let Some(own) = self.own {
            own.encode(encoder.encode_label())?;
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CheckInfoLabels {
    check: String,
    group: String,
    r#type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CheckStateLabels {
    check: String,
    state: &'static str,
}

/// The series every check type reports.
const COMMON_SERIES: [SeriesSpec; 4] = [
    SeriesSpec {
        name: "probe_success",
        help: "Whether the last probe of the instance passed (1) or failed (0)",
    },
    SeriesSpec {
        name: "probe_duration_seconds",
        help: "How long the last probe of the instance took, resolve included",
    },
    SeriesSpec {
        name: "probe_ssl_earliest_cert_expiry",
        help: "Earliest not-after of the certificates the instance sent, in Unix seconds",
    },
    SeriesSpec {
        name: "probe_tls_version_info",
        help: "The TLS version the instance negotiated, as the version label; always 1",
    },
];

/// Every value of `probe_tls_version_info`'s `version` label.
const TLS_VERSIONS: [&str; 2] = ["TLSv1.2", "TLSv1.3"];

/// One scrape's derived series: a family per declared series, and the check states.
#[derive(Debug)]
struct ScrapeFamilies {
    registry: Registry,
    gauges: HashMap<&'static str, Family<SeriesLabels, GaugeF64>>,
    check_state: Family<CheckStateLabels, Gauge>,
    check_info: Family<CheckInfoLabels, Gauge>,
}

impl ScrapeFamilies {
    /// Registers the common series, then each type's in the order of `KINDS`, so every family
    /// is described even before any check of its type ran.
    fn new() -> ScrapeFamilies {
        let mut registry = Registry::default();
        let mut gauges = HashMap::new();
        let declared = COMMON_SERIES
            .iter()
            .chain(KINDS.iter().flat_map(|kind| kind.series.iter()));
        for spec in declared {
            let family = Family::<SeriesLabels, GaugeF64>::default();
            registry.register(spec.name, spec.help, family.clone());
            gauges.insert(spec.name, family);
        }
        let check_state = Family::<CheckStateLabels, Gauge>::default();
        registry.register(
            "bastion_check_state",
            "Each check's state: 1 for the current one (OK, WARN, FAIL_WAIT, FAIL, PASS_WAIT), 0 for the others",
            check_state.clone(),
        );
        let check_info = Family::<CheckInfoLabels, Gauge>::default();
        registry.register(
            "bastion_check_info",
            "Each configured check's group (empty when none) and type; always 1. Join on check to filter by group",
            check_info.clone(),
        );
        ScrapeFamilies {
            registry,
            gauges,
            check_state,
            check_info,
        }
    }

    /// Records the last probe of one instance: the common series, then the type's own.
    /// `location` is the location the response was seen from, for a check with `locations`.
    fn record_response(
        &self,
        check: &str,
        check_type: CheckType,
        response: &Response,
        location: Option<&str>,
    ) {
        // A label from a result off the bus is checked again: one that breaks the rules (a
        // runner of another build, a hostile peer) is left out rather than break the page.
        let extra = response
            .labels
            .iter()
            .filter(|(name, value)| crate::model::label_problem(name, value).is_none())
            // The location the response was seen from is bastion's to say.
            .filter(|(name, _)| location.is_none() || name.as_str() != crate::model::LOCATION_LABEL)
            .map(|(name, value)| (name.clone(), value.clone()))
            .chain(location.map(|location| {
                (
                    crate::model::LOCATION_LABEL.to_string(),
                    location.to_string(),
                )
            }))
            .collect();
        let mut out = InstanceSeries {
            families: self,
            check,
            target: &response.target,
            extra: Arc::new(extra),
        };
        out.gauge(
            "probe_success",
            None,
            if response.passing { 1.0 } else { 0.0 },
        );
        out.gauge("probe_duration_seconds", None, response.timings.total);
        if let Some(tls) = &response.tls {
            if let Some(expiry) = tls.earliest_cert_expiry {
                let seconds = crate::time_format::unix_seconds(expiry);
                out.gauge("probe_ssl_earliest_cert_expiry", None, seconds);
            }
            if let Some(version) = TLS_VERSIONS.iter().find(|known| **known == tls.version) {
                out.gauge("probe_tls_version_info", Some(("version", version)), 1.0);
            }
        }
        (crate::checks::kind(check_type).write_series)(response, &mut out);
    }

    /// Sets `bastion_check_state` for `check`: 1 for `state`, 0 for the others.
    fn set_check_state(&self, check: &str, state: CheckState) {
        for each in CheckState::ALL {
            self.check_state
                .get_or_create(&CheckStateLabels {
                    check: check.to_string(),
                    state: each.as_str(),
                })
                .set(i64::from(each == state));
        }
    }
}

/// The series of one check's one target, as a check type writes them.
struct InstanceSeries<'a> {
    families: &'a ScrapeFamilies,
    check: &'a str,
    target: &'a str,
    extra: Arc<Vec<(String, String)>>,
}

impl SeriesOut for InstanceSeries<'_> {
    fn gauge(
        &mut self,
        name: &'static str,
        label: Option<(&'static str, &'static str)>,
        value: f64,
    ) {
        // A series a type did not declare is a bug in that type; it is left out, not invented.
        let Some(family) = self.families.gauges.get(name) else {
            tracing::warn!(
                series = name,
                "a check type wrote a series it did not declare"
            );
            return;
        };
        let labels = SeriesLabels {
            check: self.check.to_string(),
            target: self.target.to_string(),
            extra: Arc::clone(&self.extra),
            own: label,
        };
        family.get_or_create(&labels).set(value);
    }
}

/// The result store as the source of the derived series, and the configured checks for
/// `bastion_check_info`.
#[derive(Debug)]
pub struct ProbeSeries {
    store: Arc<ResultStore>,
    checks: super::ChecksWatch,
}

impl ProbeSeries {
    pub fn new(store: Arc<ResultStore>, checks: super::ChecksWatch) -> ProbeSeries {
        ProbeSeries { store, checks }
    }
}

impl Exposition for ProbeSeries {
    fn encode(&self, text: &mut String) {
        let families = ScrapeFamilies::new();
        let configured = std::sync::Arc::clone(&self.checks.borrow());
        for check in configured.iter() {
            families
                .check_info
                .get_or_create(&CheckInfoLabels {
                    check: check.name.clone(),
                    group: check.group.clone().unwrap_or_default(),
                    r#type: check.check_type().as_str(),
                })
                .set(1);
        }
        for (check, status) in self.store.snapshot() {
            families.set_check_state(&check, status.state);
            match &status.locations {
                // Each location's latest result, under its name.
                Some(locations) => {
                    for (location, seen) in locations.iter() {
                        let Some(latest) = &seen.latest else { continue };
                        for response in &latest.responses {
                            families.record_response(
                                &check,
                                latest.check_type,
                                response,
                                Some(location),
                            );
                        }
                    }
                }
                None => {
                    if let Some(latest) = &status.latest {
                        for response in &latest.responses {
                            families.record_response(&check, latest.check_type, response, None);
                        }
                    }
                }
            }
        }
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(text, &families.registry);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn every_declared_series_has_one_name() {
        let mut seen = HashSet::new();
        let declared = COMMON_SERIES
            .iter()
            .chain(KINDS.iter().flat_map(|kind| kind.series.iter()));
        for spec in declared {
            assert!(spec.name.starts_with("probe_"), "{}", spec.name);
            assert!(seen.insert(spec.name), "{} declared twice", spec.name);
        }
    }
}
