//! A check definition compiled (`CompiledCheck`): checked as a definition from the bus is
//! never checked otherwise (name, interval and timeout within their ranges, instances,
//! labels, `instances_from`), its assertions compiled against its type's keys and its probe
//! built by its type (`checks::compile_probe`). Shared by a run's tasks; a runner keeps the
//! ones worth keeping (`worth_keeping`) between runs and builds the others for each run;
//! `CheckDefinitionError` says why a definition cannot run, and at which key.

use crate::assertions::{AssertionError, CompiledAssertion};
use crate::checks::CheckType;
use crate::checks::{compile_probe, kind, Probe, SpecError};
use crate::config::bounds::{CHECK_INTERVAL, CHECK_TIMEOUT};
use crate::config::{CheckConfig, InstancesFrom, IpProtocol, MIN_INTERVAL};
use crate::model::{is_valid_check_name, labels_problem, InstanceAddr};
use crate::problem::KeyPath;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

/// Why a check definition cannot run.
#[derive(Debug, thiserror::Error)]
pub enum CheckDefinitionError {
    #[error("check name `{0}` is invalid: use only a-z, 0-9, `_` and `-`")]
    Name(String),
    #[error("interval {} is too short; the least is {}", humantime::format_duration(*.0), humantime::format_duration(MIN_INTERVAL))]
    IntervalTooShort(Duration),
    #[error("timeout must be longer than 0s")]
    TimeoutZero,
    /// The interval or timeout (the key named first) is beyond its range (a message from the
    /// bus).
    #[error("{1}")]
    OutOfRange(&'static str, String),
    #[error("timeout {} must be shorter than interval {}", humantime::format_duration(*.timeout), humantime::format_duration(*.interval))]
    TimeoutNotBelowInterval {
        timeout: Duration,
        interval: Duration,
    },
    #[error("instance `{0}` is not an address: write an IP (`10.0.0.5`, `::1`) or IP and port (`10.0.0.5:8443`, `[::1]:8443`)")]
    Instance(String),
    /// The type's own definition error, as its module words it.
    #[error("{0}")]
    Spec(Box<dyn SpecError>),
    #[error("ip_protocol_fallback only applies with ip_protocol = \"ip4\" or \"ip6\"; set one or remove it")]
    FallbackWithoutProtocol,
    #[error("labels: {0}")]
    Labels(String),
    #[error("instances and instances_from both name the instances; keep one")]
    InstancesTwice,
    #[error("instances_from: {0}")]
    InstancesFrom(String),
    #[error("assertion #{index}: {source}")]
    Assertion {
        index: usize,
        source: AssertionError,
    },
}

impl CheckDefinitionError {
    /// The key of the check this error is about (`timeout`, `assertions[0]`, `url`).
    pub fn key(&self) -> KeyPath {
        match self {
            CheckDefinitionError::Name(_) => KeyPath::dotted("name"),
            CheckDefinitionError::IntervalTooShort(_) => KeyPath::dotted("interval"),
            CheckDefinitionError::TimeoutZero
            | CheckDefinitionError::TimeoutNotBelowInterval { .. } => KeyPath::dotted("timeout"),
            CheckDefinitionError::OutOfRange(key, _) => KeyPath::dotted(key),
            CheckDefinitionError::Instance(_) | CheckDefinitionError::InstancesTwice => {
                KeyPath::dotted("instances")
            }
            CheckDefinitionError::Spec(error) => error.key(),
            CheckDefinitionError::FallbackWithoutProtocol => {
                KeyPath::dotted("ip_protocol_fallback")
            }
            CheckDefinitionError::Labels(_) => KeyPath::dotted("labels"),
            CheckDefinitionError::InstancesFrom(_) => KeyPath::dotted("instances_from"),
            // Assertions count from 1 in messages.
            CheckDefinitionError::Assertion { index, .. } => {
                KeyPath::dotted("assertions").index(index.saturating_sub(1))
            }
        }
    }
}

/// A check definition made ready to run: parsed, validated, regexes and paths compiled.
/// Shared by a run's tasks, and kept between runs when `worth_keeping` says so.
#[derive(Debug)]
pub struct CompiledCheck {
    pub name: String,
    /// How often the check runs; a runner forgets a check's series a few intervals after
    /// its last run.
    pub interval: Duration,
    pub timeout: Duration,
    pub instances: Vec<InstanceAddr>,
    pub assertions: Vec<CompiledAssertion>,
    pub check_type: CheckType,
    pub probe: Box<dyn Probe>,
    /// Which resolved addresses are instances (`ip_protocol`), and whether the other family
    /// stands in when the host has none of it (`ip_protocol_fallback`).
    pub ip_protocol: IpProtocol,
    pub ip_protocol_fallback: bool,
    /// The check's own labels, on every response and `probe_*` series.
    pub labels: BTreeMap<String, String>,
    /// Where the instances are discovered, if not from `instances` or the host.
    pub instances_from: Option<InstancesFrom>,
}

impl CompiledCheck {
    pub fn compile(check: &CheckConfig) -> Result<CompiledCheck, CheckDefinitionError> {
        if !is_valid_check_name(&check.name) {
            return Err(CheckDefinitionError::Name(check.name.clone()));
        }
        if check.interval < MIN_INTERVAL {
            return Err(CheckDefinitionError::IntervalTooShort(check.interval));
        }
        // Checked here too, not only when the file is read: a check from the bus was never
        // read from a file, and deadlines are computed from these.
        for (bound, value) in [
            (&CHECK_INTERVAL, check.interval),
            (&CHECK_TIMEOUT, check.timeout()),
        ] {
            if value > bound.cap_duration(value) {
                return Err(CheckDefinitionError::OutOfRange(
                    bound.name(),
                    bound.check_entry_duration(value).err().unwrap_or_default(),
                ));
            }
        }
        let timeout = check.timeout();
        if timeout.is_zero() {
            return Err(CheckDefinitionError::TimeoutZero);
        }
        if timeout >= check.interval {
            return Err(CheckDefinitionError::TimeoutNotBelowInterval {
                timeout,
                interval: check.interval,
            });
        }
        let instances = check
            .instances
            .iter()
            .map(|text| {
                InstanceAddr::parse(text)
                    .ok_or_else(|| CheckDefinitionError::Instance(text.clone()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(problem) = labels_problem(check.labels.iter()) {
            return Err(CheckDefinitionError::Labels(problem));
        }
        if let Some(source) = &check.instances_from {
            if !check.instances.is_empty() {
                return Err(CheckDefinitionError::InstancesTwice);
            }
            instances_from_problem(source).map_err(CheckDefinitionError::InstancesFrom)?;
        }
        let check_type = check.check_type();
        let kind = kind(check_type);
        let assertions = check
            .assertions
            .iter()
            .enumerate()
            .map(|(index, assertion)| {
                CompiledAssertion::compile(assertion, check_type, kind.assertion_keys).map_err(
                    |source| CheckDefinitionError::Assertion {
                        index: index + 1,
                        source,
                    },
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        let probe = compile_probe(&check.spec, timeout).map_err(CheckDefinitionError::Spec)?;
        let ip_protocol = check.ip_protocol.unwrap_or_default();
        if check.ip_protocol_fallback.is_some() && ip_protocol == IpProtocol::Any {
            return Err(CheckDefinitionError::FallbackWithoutProtocol);
        }
        Ok(CompiledCheck {
            ip_protocol,
            ip_protocol_fallback: check.ip_protocol_fallback.unwrap_or(true),
            name: check.name.clone(),
            labels: check.labels.clone(),
            instances_from: check.instances_from.clone(),
            interval: check.interval,
            timeout,
            instances,
            assertions,
            check_type,
            probe,
        })
    }

    pub fn check_type(&self) -> CheckType {
        self.check_type
    }

    /// Whether a runner keeps it between runs: when its probe (`Probe::worth_keeping`), an
    /// assertion, or its lists of instances, assertions or labels would cost more to compile
    /// again than to keep. A plain http or tcp check is compiled for each run instead: about
    /// a microsecond a run against about 860 bytes kept for every check (bench/RESULTS.md,
    /// "A plain check compiled for each run").
    pub fn worth_keeping(&self) -> bool {
        self.probe.worth_keeping()
            || self.instances.len() > crate::checks::KEPT_ENTRIES
            || self.assertions.len() > crate::checks::KEPT_ENTRIES
            || self.labels.len() > crate::checks::KEPT_ENTRIES
            || self.assertions.iter().any(CompiledAssertion::worth_keeping)
    }

    /// The labels of one instance's response: the check's, then the instance's own (from
    /// discovery), which win where both name the same label.
    pub fn labels_with(&self, instance: &BTreeMap<String, String>) -> BTreeMap<String, String> {
        let mut labels = self.labels.clone();
        labels.extend(
            instance
                .iter()
                .map(|(name, value)| (name.clone(), value.clone())),
        );
        labels
    }

    /// The addresses of `found` that `ip_protocol` keeps: those of the family asked for, or,
    /// when there are none and `ip_protocol_fallback` allows, those of the other.
    pub fn select_family(&self, found: Vec<SocketAddr>) -> Vec<SocketAddr> {
        let wanted = |address: &SocketAddr| match self.ip_protocol {
            IpProtocol::Ip4 => address.is_ipv4(),
            IpProtocol::Ip6 => address.is_ipv6(),
            IpProtocol::Any => true,
        };
        if found.iter().any(wanted) || !self.ip_protocol_fallback {
            found
                .into_iter()
                .filter(|address| wanted(address))
                .collect()
        } else {
            found
        }
    }
}

/// What makes an `instances_from` unusable, said as what to fix.
fn instances_from_problem(source: &InstancesFrom) -> Result<(), String> {
    match source {
        InstancesFrom::File(path) if path.as_os_str().is_empty() => {
            Err("file is empty; name a Prometheus file_sd file (JSON or YAML)".to_string())
        }
        InstancesFrom::File(_) => Ok(()),
        InstancesFrom::Srv(name) => {
            let name = name.trim_end_matches('.');
            let valid = !name.is_empty()
                && name.len() <= 253
                && name.split('.').all(|part| {
                    !part.is_empty()
                        && part.len() <= 63
                        && part
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                });
            if valid {
                Ok(())
            } else {
                Err(format!(
                    "srv `{name}` is not a DNS name; write one like `_http._tcp.web.service.internal`"
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A definition error names the key of the check it is about, the type's own ones too.
    #[test]
    fn a_definition_error_names_its_key() {
        let key = |toml: &str| {
            let check: CheckConfig = toml::from_str(toml).expect("parses");
            CompiledCheck::compile(&check)
                .expect_err("does not compile")
                .key()
                .to_string()
        };
        let tcp = "name = \"t\"\ntype = \"tcp\"\ninterval = \"10s\"\naddress = \"h:1\"\n";
        assert_eq!(key(&format!("{tcp}timeout = \"10s\"\n")), "timeout");
        assert_eq!(
            key(&format!(
                "{tcp}[[steps]]\nsend = \"x\"\n[[steps]]\nexpect = \"(\"\n"
            )),
            "steps[1].expect"
        );
        assert_eq!(
            key(&format!(
                "{tcp}[[assertions]]\nkey = \"latency\"\nrelationship = \"regExp\"\noperand = \"(\"\n"
            )),
            "assertions[0]"
        );
        assert_eq!(
            key(&format!(
                "{tcp}tls = {{ ca_file = \"/x\", insecure_skip_verify = true }}\n"
            )),
            "tls.ca_file"
        );
        let http = "name = \"w\"\ntype = \"http\"\ninterval = \"10s\"\nurl = \"http://x/\"\n";
        assert_eq!(
            key(&format!("{http}valid_status_codes = [99]\n")),
            "valid_status_codes"
        );
    }

    /// A check from the bus was never range-checked as a file is: one with a timeout that
    /// would overflow the probe's deadline is refused, not run.
    #[test]
    fn a_check_beyond_the_ranges_is_refused_at_compile() {
        let check: CheckConfig = toml::from_str(
            r#"
            name = "web"
            type = "tcp"
            address = "127.0.0.1:80"
            interval = "10s"
            timeout = "2s"
        "#,
        )
        .unwrap();
        assert!(CompiledCheck::compile(&check).is_ok());
        let endless = CheckConfig {
            interval: Duration::from_secs(u64::MAX / 2),
            timeout: Some(Duration::from_secs(u64::MAX / 4)),
            ..check.clone()
        };
        let error = CompiledCheck::compile(&endless).unwrap_err().to_string();
        assert!(error.contains("the most allowed is 30days"), "{error}");
        let long_timeout = CheckConfig {
            interval: Duration::from_secs(3600),
            timeout: Some(Duration::from_secs(601)),
            ..check
        };
        let error = CompiledCheck::compile(&long_timeout)
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with("timeout is 10m 1s; the most allowed is 10m"),
            "{error}"
        );
    }
}
