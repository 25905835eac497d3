//! `[checker]`: how the checker schedules, and the lease of HA checkers; defaults and
//! validation.

use super::bounds::*;
use super::Problems;
use schemars::JsonSchema;
use serde::Deserialize;
use std::time::Duration;

/// `[checker]`
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckerConfig {
    /// Let several checkers run at once; one holds a lease in NATS and schedules, the others
    /// wait to take over. Needs `bus.kind = "nats"` with JetStream.
    #[serde(default)]
    pub ha: bool,
    /// How long the lease lasts unless renewed; it is renewed every third of it.
    #[serde(default = "default_lease_ttl", with = "humantime_serde")]
    #[schemars(with = "super::json_schema::Humantime")]
    pub lease_ttl: Duration,
    /// The JetStream key-value bucket holding the lease.
    #[serde(default = "default_lease_bucket")]
    pub lease_bucket: String,
}

pub(super) fn default_lease_ttl() -> Duration {
    Duration::from_secs(10)
}
pub(super) fn default_lease_bucket() -> String {
    "bastion_checker".to_string()
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

impl CheckerConfig {
    /// Its durations against their ranges (`bounds.rs`).
    pub(super) fn validate_ranges(&self) -> Problems {
        LEASE_TTL
            .check_duration(None, self.lease_ttl)
            .err()
            .map(Problems::from)
            .unwrap_or_default()
    }
}
