//! `[bus]` and `[bus.nats]`: which bus carries runs and results, and how to reach NATS; their
//! defaults and their validation.

use super::bounds::*;
use super::{Problem, Problems};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

/// `[bus]`
#[derive(Debug, Clone, Default, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BusConfig {
    /// Which bus carries check requests and results.
    #[serde(default)]
    pub kind: BusKind,
    /// The NATS connection; required when `kind = "nats"`.
    #[serde(default)]
    pub nats: Option<NatsConfig>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum BusKind {
    /// In memory, inside this process: no broker needed.
    #[default]
    Embedded,
    /// A NATS server: a checker and any number of runners in separate processes.
    Nats,
}

/// `[bus.nats]`. Secrets are named by file, never written in the config itself.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NatsConfig {
    /// Server URL, or a list of them (`nats://host:4222`, `tls://host:4222`).
    pub url: OneOrMany,
    /// First token of every subject bastion uses.
    #[serde(default = "default_subject_prefix")]
    pub subject_prefix: String,
    /// File holding the server's auth token.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// User name; goes with `password_file`.
    #[serde(default)]
    pub user: Option<String>,
    /// File holding the user's password.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// A NATS `.creds` file (JWT and nkey seed).
    #[serde(default)]
    pub creds_file: Option<PathBuf>,
    /// File holding an nkey seed (`SU...`).
    #[serde(default)]
    pub nkey_seed_file: Option<PathBuf>,
    /// TLS to the server: a CA to trust, and a client certificate for mutual TLS.
    #[serde(default)]
    pub tls: Option<NatsTlsConfig>,
    /// Give up and exit when no server answers within this long at start-up. Default: keep
    /// trying forever (`--bus-connect-timeout` overrides it).
    #[serde(default, with = "humantime_serde")]
    #[schemars(with = "Option<super::json_schema::Humantime>")]
    pub connect_timeout: Option<Duration>,
    /// Publish results to the JetStream stream `BASTION_RESULTS`, acknowledged and retried.
    #[serde(default)]
    pub results_stream: bool,
    /// How long the results stream keeps a result.
    #[serde(default = "default_results_max_age", with = "humantime_serde")]
    #[schemars(with = "super::json_schema::Humantime")]
    pub results_max_age: Duration,
    /// Results waiting for the stream's acknowledgement at most; beyond it they are dropped
    /// and counted.
    #[serde(default = "default_results_buffer")]
    pub results_buffer: usize,
    /// JetStream replicas of the results stream and of the checker lease bucket: 1 for a
    /// single server, the cluster's size (3 or 5) for a clustered one.
    #[serde(default = "default_replicas")]
    pub replicas: usize,
}

/// `[bus.nats.tls]`
#[derive(Debug, Clone, Default, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NatsTlsConfig {
    /// PEM file of the CA that signed the server's certificate. Default: the system roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate, for servers that verify clients; goes with `key_file`.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file`.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
}

/// A value that may be written once or as a list.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn to_vec(&self) -> Vec<String> {
        match self {
            OneOrMany::One(one) => vec![one.clone()],
            OneOrMany::Many(many) => many.clone(),
        }
    }
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

impl BusConfig {
    pub(super) fn validate(&self, checker_ha: bool) -> Result<(), Problem> {
        let nats = match (self.kind, &self.nats) {
            (BusKind::Embedded, None) => {
                if checker_ha {
                    return Err(Problem::key("checker.ha", "checker.ha needs a shared bus: set [bus] kind = \"nats\" and [bus.nats] url"));
                }
                return Ok(());
            }
            (BusKind::Embedded, Some(_)) => {
                return Err(Problem::key("bus.nats", "[bus.nats] is set but bus.kind is \"embedded\"; set kind = \"nats\" to use it, or remove [bus.nats]"));
            }
            (BusKind::Nats, None) => {
                return Err(Problem::key(
                    "bus.kind",
                    "bus.kind is \"nats\" but [bus.nats] is missing; give at least its url",
                ));
            }
            (BusKind::Nats, Some(nats)) => nats,
        };
        let urls = nats.url.to_vec();
        if urls.is_empty() {
            return Err(Problem::key(
                "bus.nats.url",
                "bus.nats.url is an empty list; give at least one server",
            ));
        }
        let methods = [
            nats.token_file.is_some(),
            nats.user.is_some() || nats.password_file.is_some(),
            nats.creds_file.is_some(),
            nats.nkey_seed_file.is_some(),
        ];
        if methods.iter().filter(|set| **set).count() > 1 {
            return Err(Problem::key("bus.nats", "bus.nats sets more than one way to authenticate; use at most one of token_file, user + password_file, creds_file and nkey_seed_file"));
        }
        if nats.user.is_some() != nats.password_file.is_some() {
            return Err(Problem::key(
                "bus.nats.user",
                "bus.nats.user and bus.nats.password_file go together; set both or neither",
            ));
        }
        if let Some(tls) = &nats.tls {
            if tls.cert_file.is_some() != tls.key_file.is_some() {
                return Err(Problem::key(
                    "bus.nats.tls.cert_file",
                    "bus.nats.tls.cert_file and key_file go together; set both or neither",
                ));
            }
        }
        Ok(())
    }

    /// Its numbers and durations against their ranges (`bounds.rs`).
    pub(super) fn validate_ranges(&self) -> Problems {
        let mut problems = Problems::default();
        if let Some(nats) = &self.nats {
            problems.check(RESULTS_MAX_AGE.check_duration(None, nats.results_max_age));
            if let Some(timeout) = nats.connect_timeout {
                problems.check(CONNECT_TIMEOUT.check_duration(None, timeout));
            }
            problems.check(RESULTS_BUFFER.check_count(None, nats.results_buffer as u64));
            problems.check(REPLICAS.check_count(None, nats.replicas as u64));
        }
        problems
    }
}
