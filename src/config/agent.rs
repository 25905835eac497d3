//! `[agent]` and `[agent.web]`: this agent's identity, its endpoints and who may read them;
//! their defaults and their validation.

use super::bounds::*;
use super::{default_true, KeyPath, Problem, Problems};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// `[agent]`
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// The name this agent puts in every result. Default: the host name.
    #[serde(default = "default_agent_id")]
    #[schemars(transform = super::json_schema::machine_dependent)]
    pub id: String,
    /// Address of the agent's own endpoints (`/metrics`, `/healthz`, `/readyz`, `/api/v1/checks`).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// How long in-flight probes may run on shutdown before they are abandoned.
    #[serde(default = "default_shutdown_grace", with = "humantime_serde")]
    #[schemars(with = "super::json_schema::Humantime")]
    pub shutdown_grace: Duration,
    /// Protection of the agent's own endpoints.
    #[serde(default)]
    pub web: WebConfig,
    /// The URL people reach this agent's API at, for links in notifications. Default:
    /// `http://` and `listen`.
    #[serde(default)]
    pub external_url: Option<String>,
    /// A blackbox_exporter module file (`blackbox.yml`) whose modules `GET /probe?target=…&module=…`
    /// runs, as blackbox_exporter would; read again at every reload. Default: none (`/probe`
    /// answers 404 for every module).
    #[serde(default)]
    pub blackbox_modules: Option<PathBuf>,
    /// How often the agent says it is alive on the bus. Checkers count a location as live
    /// while one of its runners was heard from within one and a half of these.
    #[serde(default = "default_heartbeat_interval", with = "humantime_serde")]
    #[schemars(with = "super::json_schema::Humantime")]
    pub heartbeat_interval: Duration,
}

/// `[agent.web]`: TLS and basic auth for `/metrics`, `/api` and `/-/reload`, the way
/// Prometheus exporters do it. `/healthz` and `/readyz` stay open for probes.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WebConfig {
    /// PEM certificate (chain) to serve HTTPS with; goes with `tls_key_file`.
    #[serde(default)]
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of `tls_cert_file`.
    #[serde(default)]
    pub tls_key_file: Option<PathBuf>,
    /// User name to bcrypt hash (`htpasswd -nBC 10 user`). Empty: no authentication.
    #[serde(default)]
    pub basic_auth_users: BTreeMap<String, String>,
    /// Serve `POST /-/reload`. SIGHUP reloads either way.
    #[serde(default = "default_true")]
    pub reload_endpoint: bool,
    /// The status page at `/` and the badges: `private` (behind `basic_auth_users`, like the
    /// API), `public` (open to all, without targets, addresses, bodies or error messages) or
    /// `off`.
    #[serde(default)]
    pub status_page: StatusPageMode,
}

/// Who may see the status page and the badges.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum StatusPageMode {
    /// Served with the API's protection (basic auth when users are configured).
    #[default]
    Private,
    /// Served to anyone, showing states, uptime and latency only.
    Public,
    /// Not served.
    Off,
}

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
pub(super) fn default_heartbeat_interval() -> Duration {
    Duration::from_secs(10)
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

impl AgentConfig {
    /// Its durations against their ranges (`bounds.rs`).
    pub(super) fn validate_ranges(&self) -> Problems {
        let mut problems = Problems::default();
        problems.check(SHUTDOWN_GRACE.check_duration(None, self.shutdown_grace));
        problems.check(HEARTBEAT_INTERVAL.check_duration(None, self.heartbeat_interval));
        problems
    }
}

impl WebConfig {
    pub(super) fn validate(&self) -> Result<(), Problem> {
        let web = self;
        let users = || KeyPath::dotted("agent.web.basic_auth_users");
        match (&web.tls_cert_file, &web.tls_key_file) {
            (Some(cert), Some(key)) => {
                for (what, path) in [("tls_cert_file", cert), ("tls_key_file", key)] {
                    if let Err(error) = std::fs::metadata(path) {
                        return Err(Problem::key(
                            &format!("agent.web.{what}"),
                            format!("agent.web.{what} {}: {error}", path.display()),
                        ));
                    }
                }
            }
            (None, None) => {}
            _ => {
                return Err(Problem::key(
                    "agent.web.tls_cert_file",
                    "agent.web.tls_cert_file and tls_key_file go together; set both or neither",
                ))
            }
        }
        for (user, hash) in &web.basic_auth_users {
            if user.is_empty() || user.contains(':') {
                return Err(Problem::at(
                    users().key(user),
                    format!(
                        "agent.web.basic_auth_users: user name `{user}` must be non-empty and without `:`"
                    ),
                ));
            }
            check_hash(hash).map_err(|error| {
                Problem::at(
                    users().key(user),
                    format!("agent.web.basic_auth_users.{user}: {error}"),
                )
            })?;
        }
        Ok(())
    }
}

/// Whether `hash` is a bcrypt hash bastion can verify against.
pub fn check_hash(hash: &str) -> Result<(), String> {
    hash.parse::<bcrypt::HashParts>().map(|_| ()).map_err(|_| {
        "is not a bcrypt hash; make one with `htpasswd -nBC 10 USER` and keep the part after the colon"
            .to_string()
    })
}
