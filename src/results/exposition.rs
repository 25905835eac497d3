//! The `probe_*` series and `bastion_check_state`, derived from the result store at each
//! scrape, and `bastion_check_info` from the configured checks (blackbox_exporter's names,
//! seconds as units). They are written straight to text at each render and never kept: a
//! probe never updates a metric, removed checks and vanished instances leave no series behind,
//! and memory holds each result once. The series every type has are declared here; each check
//! type declares and writes its own (`checks::CheckKind::series`). Label values come from
//! bounded sets only. The text is what prometheus-client wrote for the same series (a test
//! keeps it so), with the series of each family in the order of the check names.

use super::ResultStore;
use crate::checks::series::{SeriesOut, SeriesSpec};
use crate::checks::KINDS;
use crate::messages::Response;
use crate::metrics::{CheckSelection, Exposition};
use crate::model::{CheckState, CheckType};
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

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

const CHECK_STATE: SeriesSpec = SeriesSpec {
    name: "bastion_check_state",
    help: "Each check's state: 1 for the current one (OK, WARN, FAIL_WAIT, FAIL, PASS_WAIT), 0 for the others",
};

const CHECK_INFO: SeriesSpec = SeriesSpec {
    name: "bastion_check_info",
    help: "Each configured check's group (empty when none) and type; always 1. Join on check to filter by group",
};

/// Every family this module writes, in the order they are exposed: the common series, each
/// type's in the order of `KINDS` (so every family is described even before any check of its
/// type ran), then the check states and infos.
fn declared() -> &'static [SeriesSpec] {
    static DECLARED: OnceLock<Vec<SeriesSpec>> = OnceLock::new();
    DECLARED.get_or_init(|| {
        COMMON_SERIES
            .iter()
            .chain(KINDS.iter().flat_map(|kind| kind.series.iter()))
            .copied()
            .chain([CHECK_STATE, CHECK_INFO])
            .collect()
    })
}

/// Where each declared family is in `declared()`.
fn family_index() -> &'static HashMap<&'static str, usize> {
    static INDEX: OnceLock<HashMap<&'static str, usize>> = OnceLock::new();
    INDEX.get_or_init(|| {
        declared()
            .iter()
            .enumerate()
            .map(|(at, spec)| (spec.name, at))
            .collect()
    })
}

/// One scrape's derived series as text, a buffer per family: the checks are walked once, each
/// sample appended to its family's buffer, and the buffers joined in the declared order under
/// their HELP and TYPE lines. No label set is built or hashed per series.
struct ScrapeText {
    lines: Vec<String>,
}

impl ScrapeText {
    fn new() -> ScrapeText {
        ScrapeText {
            lines: vec![String::new(); declared().len()],
        }
    }

    fn family(&mut self, name: &str) -> Option<&mut String> {
        let at = *family_index().get(name)?;
        self.lines.get_mut(at)
    }

    /// Records the last probe of one instance: the common series, then the type's own.
    /// `location` is the location the response was seen from, for a check with `locations`.
    fn record_response(
        &mut self,
        check: &str,
        check_type: CheckType,
        response: &Response,
        location: Option<&str>,
    ) {
        // The labels after `check` and `target`, written once and copied into each sample.
        let mut extra = String::new();
        // A label from a result off the bus is checked again: one that breaks the rules (a
        // runner of another build, a hostile peer) is left out rather than break the page.
        for (name, value) in response.labels.iter() {
            if crate::model::label_problem(name, value).is_some() {
                continue;
            }
            // The location the response was seen from is bastion's to say.
            if location.is_some() && name.as_str() == crate::model::LOCATION_LABEL {
                continue;
            }
            push_label(&mut extra, name, value);
        }
        if let Some(location) = location {
            push_label(&mut extra, crate::model::LOCATION_LABEL, location);
        }
        let mut out = InstanceSeries {
            text: self,
            check,
            target: &response.target,
            extra: &extra,
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

    /// Writes `bastion_check_state` for `check`: 1 for `state`, 0 for the others.
    fn check_state(&mut self, check: &str, state: CheckState) {
        let Some(lines) = self.family(CHECK_STATE.name) else {
            return;
        };
        for each in CheckState::ALL {
            open_sample(lines, CHECK_STATE.name, check);
            push_label(lines, "state", each.as_str());
            lines.push_str(if each == state { "} 1\n" } else { "} 0\n" });
        }
    }

    /// Writes `bastion_check_info` for one configured check.
    fn check_info(&mut self, check: &str, group: &str, check_type: CheckType) {
        let Some(lines) = self.family(CHECK_INFO.name) else {
            return;
        };
        open_sample(lines, CHECK_INFO.name, check);
        push_label(lines, "group", group);
        push_label(lines, "type", check_type.as_str());
        lines.push_str("} 1\n");
    }

    /// Every family, described, with its samples, appended to `text`.
    fn finish(self, text: &mut String) {
        let size: usize = self.lines.iter().map(String::len).sum();
        text.reserve(size + declared().len() * 160);
        for (spec, lines) in declared().iter().zip(&self.lines) {
            text.push_str("# HELP ");
            text.push_str(spec.name);
            text.push(' ');
            push_escaped(text, spec.help, false);
            text.push_str("\n# TYPE ");
            text.push_str(spec.name);
            text.push_str(" gauge\n");
            text.push_str(lines);
        }
    }
}

/// Starts a sample of family `name`: `name{check="check"`.
fn open_sample(out: &mut String, name: &str, check: &str) {
    out.push_str(name);
    out.push_str("{check=\"");
    push_escaped(out, check, true);
    out.push('"');
}

/// Appends `,name="value"`, the value escaped as the text format asks.
fn push_label(out: &mut String, name: &str, value: &str) {
    out.push(',');
    out.push_str(name);
    out.push_str("=\"");
    push_escaped(out, value, true);
    out.push('"');
}

/// `value` with backslashes and newlines escaped, and double quotes too in a label value.
fn push_escaped(out: &mut String, value: &str, quotes: bool) {
    let special = |byte: u8| byte == b'\\' || byte == b'\n' || (quotes && byte == b'"');
    if !value.bytes().any(special) {
        out.push_str(value);
        return;
    }
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' if quotes => out.push_str("\\\""),
            other => out.push(other),
        }
    }
}

/// A gauge's value as prometheus-client writes an f64: shortest round-trip digits (`1.0`,
/// `0.05`), `NaN`, `+Inf`, `-Inf`.
fn push_f64(out: &mut String, value: f64) {
    if value.is_finite() {
        out.push_str(dtoa::Buffer::new().format_finite(value));
    } else if value.is_nan() {
        out.push_str("NaN");
    } else if value.is_sign_positive() {
        out.push_str("+Inf");
    } else {
        out.push_str("-Inf");
    }
}

/// The series of one check's one target, as a check type writes them.
struct InstanceSeries<'a> {
    text: &'a mut ScrapeText,
    check: &'a str,
    target: &'a str,
    /// The labels after `target`, already written (`,name="value"`...), or empty.
    extra: &'a str,
}

impl SeriesOut for InstanceSeries<'_> {
    fn gauge(
        &mut self,
        name: &'static str,
        label: Option<(&'static str, &'static str)>,
        value: f64,
    ) {
        // A series a type did not declare is a bug in that type; it is left out, not invented.
        let Some(lines) = self.text.family(name) else {
            tracing::warn!(
                series = name,
                "a check type wrote a series it did not declare"
            );
            return;
        };
        open_sample(lines, name, self.check);
        push_label(lines, "target", self.target);
        lines.push_str(self.extra);
        if let Some((key, value)) = label {
            push_label(lines, key, value);
        }
        lines.push_str("} ");
        push_f64(lines, value);
        lines.push('\n');
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

/// The responses of one check (or one location of it) whose series are written. Two that
/// carry the same target and labels would write the same series twice: the later one is kept
/// (a registry kept the later value of each series they shared).
fn distinct(responses: &[Response]) -> impl Iterator<Item = &Response> {
    let mut keep = vec![true; responses.len()];
    if responses.len() > 1 {
        // Most checks have one instance; only a check with several pays for the set.
        let mut seen = std::collections::HashSet::with_capacity(responses.len());
        for (at, response) in responses.iter().enumerate().rev() {
            keep[at] = seen.insert((response.target.as_str(), &response.labels));
        }
    }
    responses
        .iter()
        .zip(keep)
        .filter_map(|(response, kept)| kept.then_some(response))
}

impl ProbeSeries {
    /// Writes one check's series from its status in the store.
    fn record_check(families: &mut ScrapeText, check: &str, status: &super::CheckStatus) {
        families.check_state(check, status.state);
        match &status.locations {
            // Each location's latest result, under its name.
            Some(locations) => {
                for (location, seen) in locations.iter() {
                    let Some(latest) = &seen.latest else { continue };
                    for response in distinct(&latest.responses) {
                        families.record_response(
                            check,
                            latest.check_type,
                            response,
                            Some(location),
                        );
                    }
                }
            }
            None => {
                if let Some(latest) = &status.latest {
                    for response in distinct(&latest.responses) {
                        families.record_response(check, latest.check_type, response, None);
                    }
                }
            }
        }
    }
}

impl Exposition for ProbeSeries {
    fn encode(&self, text: &mut String, selection: &CheckSelection) {
        let mut families = ScrapeText::new();
        let configured = Arc::clone(&self.checks.borrow());
        // Names are unique in a configuration: one series each.
        for check in configured.iter() {
            if selection.includes(&check.name) {
                families.check_info(
                    &check.name,
                    check.group.as_deref().unwrap_or_default(),
                    check.check_type(),
                );
            }
        }
        match selection {
            CheckSelection::Only(checks) => {
                // Only the checks asked for are looked up; the others are never read.
                for check in checks.iter() {
                    if let Some(status) = self.store.status(check) {
                        ProbeSeries::record_check(&mut families, check, &status);
                    }
                }
            }
            CheckSelection::All => {
                for (check, status) in self.store.snapshot() {
                    ProbeSeries::record_check(&mut families, &check, &status);
                }
            }
            CheckSelection::None => {}
        }
        families.finish(text);
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
