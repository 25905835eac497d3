//! `[[checks]]`: one check's shared keys, its type's spec (`CheckSpec`), assertions and where
//! its instances come from; the defaults of check keys, their validation, and the secret files
//! a check names, read into its definition at every load. This is also the definition every
//! `CheckRequest` carries, so a runner needs no configuration of its own to run it.

use super::bounds::*;
use super::runner::location_name;
use super::{Entry, Problems};
use crate::checks::settings::IpProtocol;
use crate::checks::CheckType;
pub use crate::checks::{AssertionKey, CheckSpec, Relationship};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// `locations = ["*"]`: every location with a live runner.
pub const EVERY_LOCATION: &str = "*";

/// One `[[checks]]` entry. This is also the check definition every `CheckRequest` carries, so a
/// runner needs no configuration of its own to run it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CheckConfig {
    /// Unique name, `[a-z0-9_-]+`.
    pub name: String,
    /// A group to file the check under on the status page (`payments`, `edge`...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// How often the check runs; at least 1s.
    #[serde(with = "humantime_serde")]
    #[schemars(with = "super::json_schema::Humantime")]
    pub interval: Duration,
    /// How long one probe may take. Default: 10s, or nine tenths of the interval when that is less.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "Option<super::json_schema::Humantime>")]
    pub timeout: Option<Duration>,
    /// Addresses to probe (`ip` or `ip:port`) instead of every address the host resolves to.
    #[schemars(extend("default" = []))]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub instances: Vec<String>,
    /// Where the instances come from instead: `{ file = "/etc/bastion/targets/web.json" }`
    /// (Prometheus file_sd, watched) or `{ srv = "_http._tcp.web.internal" }` (DNS SRV,
    /// resolved on the runner). Not together with `instances`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instances_from: Option<InstancesFrom>,
    /// Labels added to the check's `probe_*` series and to each response of its results
    /// (`{ team = "payments" }`): Prometheus label names, none of bastion's own.
    #[schemars(extend("default" = {}))]
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// What a response must satisfy to pass. None: a 2xx status passes.
    #[schemars(extend("default" = []))]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub assertions: Vec<AssertionConfig>,
    /// Failing instances that make the check fail; fewer (but some) is a warning. Default: 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = 1))]
    pub min_failing_count: Option<usize>,
    /// How long the check must keep failing before it is FAIL, and keep passing before it is
    /// OK again. Default: 90s.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "Option<super::json_schema::Humantime>")]
    #[schemars(extend("default" = humantime::format_duration(DEFAULT_MIN_FAILING_TIME).to_string()))]
    pub min_failing_time: Option<Duration>,
    /// Notifiers to tell when this check fails and recovers. Default: every notifier with
    /// `default = true`; `[]` for none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify: Option<Vec<String>>,
    /// States that notify: `fail`, and `warn` too if listed. Default: `["fail"]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = [super::notify::NotifyOn::Fail]))]
    pub notify_on: Option<Vec<super::notify::NotifyOn>>,
    /// Which addresses the host resolves to are instances: `ip4`, `ip6` or `any`. Listed
    /// `instances` are kept as they are. Default: `any`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = IpProtocol::default()))]
    pub ip_protocol: Option<IpProtocol>,
    /// With `ip_protocol`, take the other family's addresses when the host has none of the
    /// one asked for. Default: true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = true))]
    pub ip_protocol_fallback: Option<bool>,
    /// Where the check runs from: each named location (a `runner.location`) runs it on every
    /// tick and is judged on its own, or `["*"]` for every location with a live runner.
    /// Default: none, and any one runner takes each run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locations: Option<Vec<String>>,
    /// With `locations`: how many must see the check failing for it to fail; fewer (but
    /// some) is a warning. Default: 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = 1))]
    pub min_failing_locations: Option<usize>,
    /// The type and its own settings.
    #[serde(flatten)]
    pub spec: CheckSpec,
}

impl CheckConfig {
    /// The probe timeout, with its default applied.
    pub fn timeout(&self) -> Duration {
        self.timeout
            .unwrap_or_else(|| DEFAULT_TIMEOUT.min(self.interval.mul_f64(0.9)))
    }

    pub fn check_type(&self) -> CheckType {
        self.spec.check_type()
    }

    /// Failing instances that make the check fail, with its default applied.
    pub fn min_failing_count(&self) -> usize {
        self.min_failing_count.unwrap_or(1)
    }

    /// Locations that must see the check failing for it to fail, with its default applied.
    pub fn min_failing_locations(&self) -> usize {
        self.min_failing_locations.unwrap_or(1)
    }

    /// Whether the check runs in every location with a live runner (`locations = ["*"]`).
    pub fn every_location(&self) -> bool {
        self.locations
            .as_deref()
            .is_some_and(|locations| locations.iter().any(|location| location == EVERY_LOCATION))
    }

    /// How long the check must keep failing (or passing) to change state, with its default.
    pub fn min_failing_time(&self) -> Duration {
        self.min_failing_time.unwrap_or(DEFAULT_MIN_FAILING_TIME)
    }

    /// The definition without what does not change what is probed or how a response is
    /// judged: where it is filed (`group`), its `labels`, who is told (`notify`, `notify_on`),
    /// how often it runs, its state thresholds, and the contents of its secret files (a
    /// rotated token or password is the same probe; the files' names still count). A reload
    /// that changes only those keeps the check's state and failure episode. Leaving the
    /// secrets out also keeps them out of `probe_fingerprint`, which is saved to disk.
    fn probed(&self) -> CheckConfig {
        let mut spec = self.spec.clone();
        if let CheckSpec::Http(http) = &mut spec {
            http.secrets = None;
        }
        CheckConfig {
            group: None,
            interval: Duration::ZERO,
            min_failing_count: None,
            // A threshold across locations, like the others: where it runs from is kept.
            min_failing_locations: None,
            min_failing_time: None,
            notify: None,
            notify_on: None,
            spec,
            labels: BTreeMap::new(),
            ..self.clone()
        }
    }

    /// Whether `other` probes the same thing the same way (see `probed`).
    pub fn same_probe(&self, other: &CheckConfig) -> bool {
        self.probed() == other.probed()
    }

    /// A short digest of what `same_probe` compares, saved with a check's state so that a
    /// check changed while the agent was down starts afresh.
    pub fn probe_fingerprint(&self) -> String {
        let text = serde_json::to_string(&self.probed()).unwrap_or_default();
        let digest = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
        digest.as_ref()[..12]
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect()
    }
}

/// Where a check's instances are discovered.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase", try_from = "InstancesFromTable")]
pub enum InstancesFrom {
    /// A Prometheus file_sd file (JSON, or YAML for `.yaml`/`.yml`): a list of
    /// `{ targets = [...], labels = {...} }`. The checker watches it and sends the current
    /// targets with each run.
    File(PathBuf),
    /// A DNS SRV name: each target and port it lists is an instance, resolved to addresses
    /// on the runner that probes.
    Srv(String),
}

/// `instances_from` as written: a table with one of its keys.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(extend("minProperties" = 1, "maxProperties" = 1))]
struct InstancesFromTable {
    /// A Prometheus file_sd file (JSON, or YAML for `.yaml`/`.yml`), watched by the checker.
    file: Option<PathBuf>,
    /// A DNS SRV name, resolved on the runner that probes.
    srv: Option<String>,
}

impl TryFrom<InstancesFromTable> for InstancesFrom {
    type Error = String;

    fn try_from(table: InstancesFromTable) -> Result<InstancesFrom, String> {
        match (table.file, table.srv) {
            (Some(file), None) => Ok(InstancesFrom::File(file)),
            (None, Some(srv)) => Ok(InstancesFrom::Srv(srv)),
            _ => Err("instances_from takes exactly one of `file` and `srv`: { file = \"/etc/bastion/targets/web.json\" } or { srv = \"_http._tcp.web.internal\" }".to_string()),
        }
    }
}

/// One `[[checks.assertions]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AssertionConfig {
    /// What to look at: code, header, body, json or latency.
    pub key: AssertionKey,
    /// The header name for `header`, the RFC 9535 path for `json`; empty otherwise.
    #[serde(default)]
    pub value: String,
    /// How the actual value must relate to the operand.
    pub relationship: Relationship,
    /// The expected value. A humantime duration for `latency`.
    #[serde(default)]
    pub operand: String,
}

pub(super) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
pub(super) const DEFAULT_MIN_FAILING_TIME: Duration = Duration::from_secs(90);

impl CheckConfig {
    /// A check's numeric and duration keys against their ranges (`bounds.rs`). The least
    /// interval, timeout and the ICMP keys' lower ends are the check compiler's to refuse (it
    /// also refuses definitions from the bus), so only the side it leaves is checked here.
    pub(super) fn validate_ranges(&self, entry: &Entry) -> Problems {
        let check = self;
        let owner = Some(entry);
        let mut problems = Problems::default();
        if check.interval >= MIN_INTERVAL {
            problems.check(CHECK_INTERVAL.check_duration(owner, check.interval));
        }
        if let Some(timeout) = check
            .timeout
            .filter(|t| !t.is_zero() && *t < check.interval)
        {
            problems.check(CHECK_TIMEOUT.check_duration(owner, timeout));
        }
        if let Some(count) = check.min_failing_count {
            problems.check(MIN_FAILING_COUNT.check_count(owner, count as u64));
        }
        if let Some(time) = check.min_failing_time {
            problems.check(MIN_FAILING_TIME.check_duration(owner, time));
        }
        if let CheckSpec::Icmp(icmp) = &check.spec {
            if icmp.packet_interval > PACKET_INTERVAL.cap_duration(icmp.packet_interval) {
                problems.check(PACKET_INTERVAL.check_duration(owner, icmp.packet_interval));
            }
        }
        problems
    }

    /// A check's `locations` and `min_failing_locations`: names a runner can have, each once,
    /// `*` alone, and a threshold the named locations can reach. On the embedded bus the one
    /// location is this agent's own runner's, `embedded_location`.
    pub(super) fn validate_locations(
        &self,
        entry: &Entry,
        embedded_location: Option<&str>,
    ) -> Problems {
        let check = self;
        let mut problems = Problems::default();
        let Some(locations) = &check.locations else {
            if check.min_failing_locations.is_some() {
                problems.push(entry.problem(
                    "min_failing_locations",
                    "min_failing_locations needs locations; name the locations the check runs \
                     from (locations = [\"eu-west\", \"us-east\"])",
                ));
            }
            return problems;
        };
        if check.labels.contains_key(crate::model::LOCATION_LABEL) {
            problems.push(entry.problem(
                "labels.location",
                "label name `location` is one bastion sets itself on a check with locations \
                 (the location each series was seen from); rename the label",
            ));
        }
        if locations.is_empty() {
            problems.push(entry.problem(
                "locations",
                "locations is empty; name at least one (a runner.location), [\"*\"] for every \
                 live location, or leave the key out",
            ));
        }
        if locations.len() > MAX_LOCATIONS {
            problems.push(entry.problem(
                "locations",
                format!(
                    "locations names {} locations; at most {} are allowed",
                    locations.len(),
                    MAX_LOCATIONS
                ),
            ));
        }
        let every = check.every_location();
        if every && locations.len() > 1 {
            problems.push(entry.problem(
                "locations",
                "locations = [\"*\"] already means every live location; give \"*\" alone or \
                 only names",
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for location in locations
            .iter()
            .filter(|location| *location != EVERY_LOCATION)
        {
            if let Err(message) = location_name(location) {
                problems.push(entry.problem("locations", format!("locations: {message}")));
            } else if !seen.insert(location.as_str()) {
                problems.push(
                    entry.problem("locations", format!("locations names `{location}` twice")),
                );
            }
        }
        if let Some(min) = check.min_failing_locations {
            problems.check(MIN_FAILING_LOCATIONS.check_count(Some(entry), min as u64));
            if !every && min > locations.len() && !locations.is_empty() {
                problems.push(entry.problem(
                    "min_failing_locations",
                    format!(
                        "min_failing_locations is {min} but the check runs from {} location(s), \
                         so it could never fail; lower it or add locations",
                        locations.len()
                    ),
                ));
            }
        }
        if let Some(own) = embedded_location {
            if let Some(other) = locations
                .iter()
                .find(|location| *location != EVERY_LOCATION && location.as_str() != own)
            {
                problems.push(entry.problem(
                    "locations",
                    format!(
                        "locations names `{other}`, but on the embedded bus the only location is \
                         this agent's runner.location `{own}`; run the check from several \
                         locations over NATS (docs/distributed.md#locations), or name `{own}`"
                    ),
                ));
            }
        }
        problems
    }
}

/// Reads the secret files of every check (`headers_from_files`, `body_file`,
/// `bearer_token_file`, `basic_auth`, `proxy_basic_auth`, `oauth2`) into the check's
/// definition: at load and at every reload, so a changed file is taken up by a reload.
/// Returns a problem for each file that cannot be read.
pub(super) fn read_secret_files(checks: &mut [CheckConfig]) -> Problems {
    let mut problems = Problems::default();
    for (index, check) in checks.iter_mut().enumerate() {
        let entry = Entry::check(index, &check.name);
        match &mut check.spec {
            CheckSpec::Http(spec) => crate::checks::http::read_secrets(&entry, spec, &mut problems),
            CheckSpec::Grpc(spec) => crate::checks::grpc::read_secrets(&entry, spec, &mut problems),
            _ => {}
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(toml: &str) -> CheckConfig {
        toml::from_str(toml).unwrap()
    }

    const WEB: &str = "name = \"web\"\ntype = \"http\"\nurl = \"http://10.0.0.1/\"\ninterval = \"10s\"\nbearer_token_file = \"/etc/bastion/token\"\n";

    /// Routing, schedule, thresholds and rotated secrets keep the probe; its target does not.
    #[test]
    fn only_a_change_to_what_is_probed_is_another_probe() {
        let before = check(WEB);
        let filed = check(&format!(
            "{WEB}group = \"edge\"\nnotify = []\nnotify_on = [\"fail\", \"warn\"]\nmin_failing_count = 2\nmin_failing_time = \"5m\"\n"
        ))
        .clone();
        let filed = CheckConfig {
            interval: Duration::from_secs(60),
            ..filed
        };
        assert!(before.same_probe(&filed));
        let moved = check(&WEB.replace("10.0.0.1", "10.0.0.2"));
        assert!(!before.same_probe(&moved));
        assert_ne!(before.probe_fingerprint(), moved.probe_fingerprint());
    }

    /// A rotated token is the same probe, and no secret enters the saved fingerprint.
    #[test]
    fn a_rotated_secret_is_the_same_probe_and_not_in_the_fingerprint() {
        let with = |token: &str| {
            let mut config = check(WEB);
            if let CheckSpec::Http(http) = &mut config.spec {
                http.secrets.get_or_insert_with(Box::default).bearer_token =
                    Some(crate::config::Secret::new(token));
            }
            config
        };
        let (old, new) = (with("hunter2"), with("correct horse"));
        assert!(old.same_probe(&new));
        assert_eq!(old.probe_fingerprint(), new.probe_fingerprint());
        assert_eq!(old.probe_fingerprint(), check(WEB).probe_fingerprint());
    }
}

#[cfg(test)]
mod size_tests {
    use super::*;

    /// A check costs its own type's settings (issue 20): `CheckSpec` is a tag and a box, so
    /// a `CheckConfig` stays a few hundred bytes whatever its type (an http spec inline made
    /// every check, tcp or dns too, over a kilobyte).
    #[test]
    fn a_check_definition_holds_its_type_settings_behind_one_box() {
        assert_eq!(std::mem::size_of::<CheckSpec>(), 16);
        let size = std::mem::size_of::<CheckConfig>();
        assert!(size <= 400, "CheckConfig is {size} bytes");
        let http = std::mem::size_of::<crate::checks::http::HttpSpec>();
        assert!(http > size, "the box is worth it");
        // Its rare settings (credentials, OAuth2, the secrets read from files) are boxed: it
        // was 752 bytes with them inline.
        assert!(http <= 432, "HttpSpec is {http} bytes");
    }
}
