//! The agent's own HTTP endpoints: `/metrics`, `/probe` (blackbox_exporter's), `/healthz`, `/readyz`, `/api/v1/checks` and
//! `POST /-/reload`, over HTTP or HTTPS (`tls`), with optional basic auth (`auth`) on
//! everything but `/healthz` and `/readyz`. They only read shared state and ask the reloader
//! to reload; nothing here schedules or probes.

pub mod auth;
pub mod badge;
pub mod history_api;
pub mod html;
pub mod probe;
pub mod status_page;
pub mod tls;

use crate::bus::Bus;
use crate::config::{CheckConfig, StatusPageMode, WebConfig};
use crate::messages::CheckResult;
use crate::metrics::Metrics;
use crate::model::CheckState;
use crate::model::CheckType;
use crate::reload::Reloader;
use crate::results::{ChecksWatch, ResultStore};
use axum::extract::{Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

/// The configured checks as the endpoints see them: the list the reloads send, and an index
/// of it by name, rebuilt once per new list (on the first request after a reload), so a
/// lookup by name is a hash lookup and never a scan of every check.
#[derive(Debug, Clone)]
pub struct Checks {
    watch: ChecksWatch,
    index: Arc<RwLock<Arc<CheckIndex>>>,
}

/// One list of checks and where each name is in it.
#[derive(Debug)]
pub struct CheckIndex {
    list: Arc<Vec<CheckConfig>>,
    by_name: HashMap<String, usize>,
}

impl CheckIndex {
    fn new(list: Arc<Vec<CheckConfig>>) -> CheckIndex {
        let mut by_name = HashMap::with_capacity(list.len());
        for (at, check) in list.iter().enumerate() {
            by_name.entry(check.name.clone()).or_insert(at);
        }
        CheckIndex { list, by_name }
    }

    /// The check of that name.
    pub fn get(&self, name: &str) -> Option<&CheckConfig> {
        self.by_name.get(name).and_then(|at| self.list.get(*at))
    }

    /// Every check, in the config's order.
    pub fn all(&self) -> &[CheckConfig] {
        &self.list
    }
}

impl Checks {
    pub fn new(watch: ChecksWatch) -> Checks {
        let index = CheckIndex::new(Arc::clone(&watch.borrow()));
        Checks {
            watch,
            index: Arc::new(RwLock::new(Arc::new(index))),
        }
    }

    /// The current checks and their index.
    pub fn current(&self) -> Arc<CheckIndex> {
        let list = Arc::clone(&self.watch.borrow());
        {
            let cached = self
                .index
                .read()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if Arc::ptr_eq(&cached.list, &list) {
                return Arc::clone(&cached);
            }
        }
        // A reload sent a new list. Two requests may both rebuild; either result is right.
        let fresh = Arc::new(CheckIndex::new(list));
        *self
            .index
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::clone(&fresh);
        fresh
    }
}

/// What the endpoints read.
#[derive(Debug, Clone)]
pub struct ApiState {
    pub metrics: Arc<Metrics>,
    pub store: Arc<ResultStore>,
    /// The configured checks (empty for a runner).
    pub checks: Checks,
    pub bus: Arc<dyn Bus>,
    /// Set once the config is loaded and every component has started.
    pub started: Arc<AtomicBool>,
    /// None when the agent was built without a config file to reload.
    pub reloader: Option<Arc<Reloader>>,
    pub reload_endpoint: bool,
    /// History, when this agent keeps it.
    pub history: Option<crate::history::HistoryReader>,
    /// Who may see the status page and the badges.
    pub status_page: StatusPageMode,
    /// `/probe` (blackbox_exporter's endpoint), on agents that probe.
    pub probe: Option<Arc<probe::ProbeEndpoint>>,
}

/// The endpoints; `auth` (when users are configured) guards all but the health checks.
pub fn router(state: ApiState, web: &WebConfig) -> Router {
    let mut protected = Router::new()
        .route("/metrics", get(metrics))
        .route("/probe", get(probe::probe))
        .route("/api/v1/checks", get(checks))
        .route("/api/v1/checks/{name}", get(history_api::check))
        .route("/api/v1/checks/{name}/history", get(history_api::history))
        .route("/api/v1/incidents", get(history_api::incidents))
        .route("/-/reload", post(reload));
    let mut open = Router::new();
    match web.status_page {
        StatusPageMode::Private => protected = protected.merge(status_page::routes()),
        StatusPageMode::Public => open = open.merge(status_page::routes()),
        StatusPageMode::Off => {}
    }
    if !web.basic_auth_users.is_empty() {
        let auth = Arc::new(auth::BasicAuth::new(web.basic_auth_users.clone()));
        protected = protected.layer(axum::middleware::from_fn_with_state(auth, require_auth));
    }
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .merge(open)
        .merge(protected)
        .with_state(state)
}

async fn require_auth(
    State(auth): State<Arc<auth::BasicAuth>>,
    request: Request,
    next: Next,
) -> Response {
    let header = request
        .headers()
        .get(header::AUTHORIZATION)
        .map(|value| value.as_bytes().to_vec());
    if auth.allows(header.as_deref()).await {
        next.run(request).await
    } else {
        (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Basic realm=\"bastion\"")],
            "unauthorized\n",
        )
            .into_response()
    }
}

async fn metrics(State(state): State<ApiState>) -> impl IntoResponse {
    // Rendering thousands of checks' series is CPU work of tens of milliseconds: on the
    // blocking pool it cannot hold up the probes that share the async workers.
    let metrics = Arc::clone(&state.metrics);
    match tokio::task::spawn_blocking(move || metrics.render()).await {
        Ok(text) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
            text,
        ),
        Err(error) => {
            tracing::warn!(%error, "rendering /metrics failed");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                "rendering the metrics failed; see the agent's log\n".to_string(),
            )
        }
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<ApiState>) -> (StatusCode, &'static str) {
    if !state.started.load(Ordering::Acquire) {
        // Not started yet, or shutting down.
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    } else if !state.bus.is_connected() {
        (StatusCode::SERVICE_UNAVAILABLE, "bus disconnected\n")
    } else {
        (StatusCode::OK, "ready\n")
    }
}

async fn reload(State(state): State<ApiState>) -> (StatusCode, String) {
    if !state.reload_endpoint {
        return (
            StatusCode::FORBIDDEN,
            "the reload endpoint is off (agent.web.reload_endpoint = false); send SIGHUP\n"
                .to_string(),
        );
    }
    let Some(reloader) = &state.reloader else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "this agent has no config file to reload\n".to_string(),
        );
    };
    match reloader.reload().await {
        Ok(summary) => (StatusCode::OK, format!("{summary}\n")),
        Err(error) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{error}\n")),
    }
}

#[derive(Serialize)]
pub(crate) struct CheckSummary {
    pub(crate) name: String,
    #[serde(rename = "type")]
    pub(crate) check_type: CheckType,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) group: Option<String>,
    pub(crate) interval: String,
    pub(crate) state: CheckState,
    #[serde(with = "crate::time_format")]
    pub(crate) state_since: SystemTime,
    pub(crate) latest: Option<Arc<CheckResult>>,
}

/// One check as the API shows it.
pub(crate) fn summary(state: &ApiState, check: &CheckConfig) -> CheckSummary {
    let status = state.store.status(&check.name);
    CheckSummary {
        name: check.name.clone(),
        check_type: check.check_type(),
        group: check.group.clone(),
        interval: humantime::format_duration(check.interval).to_string(),
        state: status
            .as_ref()
            .map_or(CheckState::Ok, |status| status.state),
        state_since: status
            .as_ref()
            .map_or_else(SystemTime::now, |status| status.since),
        latest: status.and_then(|status| status.latest),
    }
}

/// `?state=FAIL,WARN&type=http&group=edge`: each a comma-separated list; a check matches
/// when it matches every parameter given. `?check=NAME` keeps only that check (the link in
/// notifications).
#[derive(Debug, Default, serde::Deserialize)]
pub(crate) struct CheckFilter {
    pub(crate) state: Option<String>,
    #[serde(rename = "type")]
    pub(crate) check_type: Option<String>,
    pub(crate) group: Option<String>,
    pub(crate) check: Option<String>,
}

impl CheckFilter {
    /// Refuses values that match nothing by construction (an unknown state or type).
    pub(crate) fn validate(&self) -> Result<(), String> {
        for state in list(&self.state) {
            if !CheckState::ALL
                .iter()
                .any(|known| known.as_str().eq_ignore_ascii_case(state))
            {
                return Err(format!(
                    "state `{state}` is not one of OK, WARN, FAIL_WAIT, FAIL, PASS_WAIT"
                ));
            }
        }
        for check_type in list(&self.check_type) {
            if !CheckType::ALL
                .iter()
                .any(|known| known.as_str().eq_ignore_ascii_case(check_type))
            {
                return Err(format!(
                    "type `{check_type}` is not one of http, tcp, dns, tls, icmp, grpc"
                ));
            }
        }
        Ok(())
    }

    pub(crate) fn matches(&self, check: &CheckConfig, state: CheckState) -> bool {
        // Each list is split where it is read: nothing is allocated per check.
        let any = |value: &Option<String>, accepts: &dyn Fn(&str) -> bool| {
            value.is_none() || {
                let mut items = list(value).peekable();
                items.peek().is_none() || items.any(accepts)
            }
        };
        self.check.as_deref().is_none_or(|name| check.name == name)
            && any(&self.state, &|s| s.eq_ignore_ascii_case(state.as_str()))
            && any(&self.check_type, &|t| {
                t.eq_ignore_ascii_case(check.check_type().as_str())
            })
            && any(&self.group, &|g| check.group.as_deref().unwrap_or("") == g)
    }
}

fn list(value: &Option<String>) -> impl Iterator<Item = &str> {
    value
        .as_deref()
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
}

async fn checks(State(state): State<ApiState>, Query(filter): Query<CheckFilter>) -> Response {
    if let Err(message) = filter.validate() {
        return history_api::error(StatusCode::BAD_REQUEST, message);
    }
    let checks = state.checks.current();
    let state_of = |check: &CheckConfig| {
        state
            .store
            .status(&check.name)
            .map_or(CheckState::Ok, |status| status.state)
    };
    // `?check=NAME` (the link in every notification) looks the one check up by name.
    let candidates: Vec<&CheckConfig> = match filter.check.as_deref() {
        Some(name) => checks.get(name).into_iter().collect(),
        None => checks.all().iter().collect(),
    };
    Json(
        candidates
            .into_iter()
            .filter(|check| filter.matches(check, state_of(check)))
            .map(|check| summary(&state, check))
            .collect::<Vec<_>>(),
    )
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Format};
    use tokio::sync::watch;

    fn checks(names: &[&str]) -> Arc<Vec<CheckConfig>> {
        let toml: String = names
            .iter()
            .map(|name| {
                format!("[[checks]]\nname = \"{name}\"\ntype = \"tcp\"\naddress = \"127.0.0.1:1\"\ninterval = \"60s\"\n")
            })
            .collect();
        let config = Config::parse(&toml, Format::Toml, std::path::Path::new("t.toml"))
            .unwrap_or_else(|error| panic!("{error}"));
        Arc::new(config.checks)
    }

    #[test]
    fn lookups_by_name_use_an_index_that_follows_reloads() {
        let (sender, receiver) = watch::channel(checks(&["a", "b"]));
        let configured = Checks::new(receiver);
        let first = configured.current();
        assert_eq!(first.get("b").map(|c| c.name.as_str()), Some("b"));
        assert!(first.get("c").is_none());
        assert!(
            Arc::ptr_eq(&first, &configured.current()),
            "the index is built once per list"
        );
        sender.send_replace(checks(&["b", "c"]));
        let next = configured.current();
        assert!(next.get("a").is_none());
        assert_eq!(next.get("c").map(|c| c.name.as_str()), Some("c"));
        assert_eq!(next.all().len(), 2);
    }
}
