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
use crate::checks::CheckType;
use crate::checks::KINDS;
use crate::messages::Response;
use crate::metrics::{CheckSelection, ChunkedText, Exposition};
use crate::model::CheckState;
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
/// type's in the order of `KINDS`, then the check states and infos. A family with no series
/// is left out, HELP and TYPE too, as prometheus-client leaves out an empty family.
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
    lines: Vec<ChunkedText>,
}

impl ScrapeText {
    fn new() -> ScrapeText {
        ScrapeText {
            lines: declared().iter().map(|_| ChunkedText::new()).collect(),
        }
    }

    fn family(&mut self, name: &str) -> Option<&mut ChunkedText> {
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
        write_instance_series(&mut out, check_type, response);
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

    /// Every family with samples, described, appended to `text` (its chunks moved, not
    /// copied).
    fn finish(self, text: &mut ChunkedText) {
        for (spec, lines) in declared().iter().zip(self.lines) {
            if lines.is_empty() {
                continue;
            }
            text.push_str("# HELP ");
            text.push_str(spec.name);
            text.push(' ');
            push_escaped(text, spec.help, false);
            // prometheus-client ends every help text with a full stop.
            text.push_str(".\n# TYPE ");
            text.push_str(spec.name);
            text.push_str(" gauge\n");
            text.append(lines);
        }
    }
}

/// Where the text format's pieces are written: a family's chunks, or a short `String` (the
/// labels shared by an instance's samples).
trait TextOut {
    fn push_str(&mut self, text: &str);
    fn push(&mut self, c: char);
}

impl TextOut for String {
    fn push_str(&mut self, text: &str) {
        String::push_str(self, text);
    }
    fn push(&mut self, c: char) {
        String::push(self, c);
    }
}

impl TextOut for ChunkedText {
    fn push_str(&mut self, text: &str) {
        ChunkedText::push_str(self, text);
    }
    fn push(&mut self, c: char) {
        ChunkedText::push(self, c);
    }
}

/// Starts a sample of family `name`: `name{check="check"`.
fn open_sample(out: &mut impl TextOut, name: &str, check: &str) {
    out.push_str(name);
    out.push_str("{check=\"");
    push_escaped(out, check, true);
    out.push('"');
}

/// Appends `,name="value"`, the value escaped as the text format asks.
fn push_label(out: &mut impl TextOut, name: &str, value: &str) {
    out.push(',');
    out.push_str(name);
    out.push_str("=\"");
    push_escaped(out, value, true);
    out.push('"');
}

/// `value` with backslashes and newlines escaped, and double quotes too in a label value.
fn push_escaped(out: &mut impl TextOut, value: &str, quotes: bool) {
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
fn push_f64(out: &mut impl TextOut, value: f64) {
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
    fn encode(&self, text: &mut ChunkedText, selection: &CheckSelection) {
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

/// The series of one instance's last probe: the common ones (success, duration, the TLS
/// certificate and version), then its type's own.
fn write_instance_series(out: &mut dyn SeriesOut, check_type: CheckType, response: &Response) {
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
    (crate::checks::kind(check_type).write_series)(response, out);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    mod reference {
        //! The text as prometheus-client wrote it before the series were written straight to
        //! text: the reference the new writer must equal.
        use super::super::{write_instance_series, COMMON_SERIES};
        use crate::checks::series::SeriesOut;
        use crate::checks::CheckType;
        use crate::checks::KINDS;
        use crate::messages::Response;
        use crate::model::CheckState;
        use crate::results::ResultStore;
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
                    .filter(|(name, _)| {
                        location.is_none() || name.as_str() != crate::model::LOCATION_LABEL
                    })
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
                write_instance_series(&mut out, check_type, response);
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

        pub(super) fn encode(store: &ResultStore, checks: &crate::results::ChecksWatch) -> String {
            let mut text = String::new();
            let families = ScrapeFamilies::new();
            let configured = std::sync::Arc::clone(&checks.borrow());
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
            for (check, status) in store.snapshot() {
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
            let _ =
                prometheus_client::encoding::prometheus_text::encode(&mut text, &families.registry);
            text
        }
    }

    fn response(target: &str, passing: bool, total: f64) -> Response {
        let mut response = Response::failed(
            target.to_string(),
            crate::model::ProbeError::new(crate::model::ErrorKind::Connect, "refused"),
            crate::messages::Timings {
                resolve: 1e-7,
                connect: 0.000123,
                processing: 12_345_678.9,
                total,
                ..Default::default()
            },
        );
        response.passing = passing;
        response
    }

    fn result(
        check: &str,
        check_type: CheckType,
        responses: Vec<Response>,
    ) -> Arc<crate::messages::CheckResult> {
        Arc::new(crate::messages::CheckResult {
            version: crate::messages::MESSAGE_VERSION,
            check: check.to_string(),
            check_type,
            agent: "a".into(),
            location: None,
            run_id: 1,
            scheduled_at: std::time::SystemTime::UNIX_EPOCH,
            finished_at: std::time::SystemTime::UNIX_EPOCH,
            passing: true,
            responses,
            degraded: None,
        })
    }

    /// A store with a check of every shape: several instances with labels and TLS, the same
    /// target twice, a DNS check, a check with locations, one with no result yet.
    fn store_and_checks() -> (Arc<ResultStore>, crate::results::ChecksWatch) {
        let store = Arc::new(ResultStore::default());
        let since = std::time::SystemTime::UNIX_EPOCH;
        let mut tls = response("10.0.0.1:443", true, 0.25);
        tls.tls = Some(Box::new(crate::messages::TlsDetails {
            version: "TLSv1.3".into(),
            alpn: None,
            earliest_cert_expiry: Some(since + std::time::Duration::from_secs(1_900_000_000)),
            chain: None,
        }));
        tls.labels.insert("env".into(), "prod".into());
        tls.labels.insert("quoted".into(), "a\"b\\c".into());
        let web = result(
            "web",
            CheckType::Http,
            vec![
                tls,
                response("10.0.0.2:443", false, 5.0),
                response("10.0.0.2:443", true, 0.5),
            ],
        );
        store.update(
            "web",
            super::super::CheckStatus::new(Some(web), CheckState::Ok, since),
        );
        let dns = result(
            "dns",
            CheckType::Dns,
            vec![response("10.0.0.3:53", false, f64::NAN)],
        );
        store.update(
            "dns",
            super::super::CheckStatus::new(Some(dns), CheckState::Fail, since),
        );
        let mut located = super::super::CheckStatus::new(None, CheckState::Warn, since);
        let mut locations = std::collections::BTreeMap::new();
        for location in ["eu", "us"] {
            let mut answer = response("10.0.0.4:80", true, 0.1);
            answer
                .labels
                .insert(crate::model::LOCATION_LABEL.into(), "spoofed".into());
            let latest = result("spread", CheckType::Tcp, vec![answer]);
            locations.insert(
                location.to_string(),
                super::super::LocationStatus::new(Some(latest), CheckState::Ok, since),
            );
        }
        located.locations = Some(Arc::new(locations));
        store.update("spread", located);
        store.update(
            "waiting",
            super::super::CheckStatus::new(None, CheckState::Ok, since),
        );
        let toml = "[[checks]]\nname = \"web\"\ntype = \"http\"\nurl = \"http://127.0.0.1:1/\"\ninterval = \"10s\"\ngroup = \"front\"\n\
                    [[checks]]\nname = \"dns\"\ntype = \"tcp\"\naddress = \"127.0.0.1:1\"\ninterval = \"10s\"\n";
        let config = crate::config::Config::parse(
            toml,
            crate::config::Format::Toml,
            std::path::Path::new("t.toml"),
        )
        .unwrap();
        // A receiver keeps the last list after its sender is gone.
        let checks = tokio::sync::watch::channel(crate::config::check_list(config.checks)).1;
        (store, checks)
    }

    /// A text's families, each its HELP and TYPE lines and its samples in order of the text.
    fn families(text: &str) -> Vec<(Vec<&str>, Vec<&str>)> {
        let mut families: Vec<(Vec<&str>, Vec<&str>)> = Vec::new();
        for line in text.lines() {
            if line.starts_with("# HELP") {
                families.push((vec![line], Vec::new()));
            } else if line.starts_with('#') {
                families.last_mut().unwrap().0.push(line);
            } else {
                families.last_mut().unwrap().1.push(line);
            }
        }
        families
    }

    #[test]
    fn the_text_is_what_prometheus_client_wrote_with_samples_in_the_order_of_the_names() {
        let (store, checks) = store_and_checks();
        let reference = reference::encode(&store, &checks);
        let mut text = ChunkedText::new();
        ProbeSeries::new(Arc::clone(&store), checks.clone())
            .encode(&mut text, &CheckSelection::All);
        let text = text.into_string();
        assert!(text.contains("probe_success{check=\"web\",target=\"10.0.0.1:443\",env=\"prod\",quoted=\"a\\\"b\\\\c\"} 1.0"), "{text}");
        assert!(text.contains("location=\"eu\""), "{text}");
        assert!(!text.contains("spoofed"), "{text}");
        assert!(
            text.contains("probe_success{check=\"web\",target=\"10.0.0.2:443\"} 1.0\n"),
            "the later of two responses for one target: {text}"
        );
        assert!(
            !text.contains("probe_success{check=\"web\",target=\"10.0.0.2:443\"} 0.0"),
            "{text}"
        );
        let (ours, theirs) = (families(&text), families(&reference));
        assert_eq!(ours.len(), theirs.len());
        for ((our_head, our_samples), (their_head, their_samples)) in ours.iter().zip(&theirs) {
            assert_eq!(our_head, their_head);
            // prometheus-client wrote a family's samples in the order of a hash map.
            let mut sorted = our_samples.clone();
            sorted.sort_unstable();
            let mut expected = their_samples.clone();
            expected.sort_unstable();
            assert_eq!(sorted, expected, "{our_head:?}");
        }
        assert_eq!(text.len(), reference.len());
        // Within a family, the checks come in the order of their names.
        let states: Vec<&str> = text
            .lines()
            .filter_map(|line| line.strip_prefix("bastion_check_state{check=\""))
            .filter_map(|rest| rest.split('"').next())
            .collect();
        let mut sorted = states.clone();
        sorted.sort();
        assert_eq!(states, sorted);
    }

    #[test]
    fn a_selection_writes_only_its_checks_and_the_families_they_have() {
        let (store, checks) = store_and_checks();
        let mut full = ChunkedText::new();
        let series = ProbeSeries::new(store, checks);
        series.encode(&mut full, &CheckSelection::All);
        let full = full.into_string();
        let only: std::collections::BTreeSet<String> = ["web".to_string()].into();
        let mut text = ChunkedText::new();
        series.encode(&mut text, &CheckSelection::Only(Arc::new(only)));
        let text = text.into_string();
        let mut expected = Vec::new();
        for (head, samples) in families(&full) {
            let kept: Vec<&str> = samples
                .into_iter()
                .filter(|line| line.contains("{check=\"web\""))
                .collect();
            if !kept.is_empty() {
                expected.extend(head);
                expected.extend(kept);
            }
        }
        assert!(expected.len() > 10, "{full}");
        assert_eq!(text.lines().collect::<Vec<_>>(), expected);
    }

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
