//! The agent's own HTTP endpoints: `/metrics`, `/healthz`, `/readyz`, `/api/v1/checks` and
//! `POST /-/reload`, over HTTP or HTTPS (`tls`), with optional basic auth (`auth`) on
//! everything but `/healthz` and `/readyz`. They only read shared state and ask the reloader
//! to reload; nothing here schedules or probes.

pub mod auth;
pub mod tls;

use crate::bus::Bus;
use crate::config::WebConfig;
use crate::messages::CheckResult;
use crate::metrics::Metrics;
use crate::model::CheckState;
use crate::model::CheckType;
use crate::reload::Reloader;
use crate::results::{ChecksWatch, ResultStore};
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

/// What the endpoints read.
#[derive(Debug, Clone)]
pub struct ApiState {
    pub metrics: Arc<Metrics>,
    pub store: Arc<ResultStore>,
    /// The configured checks (empty for a runner).
    pub checks: ChecksWatch,
    pub bus: Arc<dyn Bus>,
    /// Set once the config is loaded and every component has started.
    pub started: Arc<AtomicBool>,
    /// None when the agent was built without a config file to reload.
    pub reloader: Option<Arc<Reloader>>,
    pub reload_endpoint: bool,
}

/// The endpoints; `auth` (when users are configured) guards all but the health checks.
pub fn router(state: ApiState, web: &WebConfig) -> Router {
    let mut protected = Router::new()
        .route("/metrics", get(metrics))
        .route("/api/v1/checks", get(checks))
        .route("/-/reload", post(reload));
    if !web.basic_auth_users.is_empty() {
        let auth = Arc::new(auth::BasicAuth::new(web.basic_auth_users.clone()));
        protected = protected.layer(axum::middleware::from_fn_with_state(auth, require_auth));
    }
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
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
struct CheckSummary {
    name: String,
    #[serde(rename = "type")]
    check_type: CheckType,
    interval: String,
    state: CheckState,
    #[serde(with = "crate::time_format")]
    state_since: SystemTime,
    latest: Option<Arc<CheckResult>>,
}

/// `?check=NAME` keeps only that check (the link in notifications); other parameters are
/// ignored.
fn only_check(query: Option<&str>) -> Option<&str> {
    query?
        .split('&')
        .find_map(|pair| pair.strip_prefix("check="))
}

async fn checks(
    State(state): State<ApiState>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> Json<Vec<CheckSummary>> {
    let checks = Arc::clone(&state.checks.borrow());
    let only = only_check(query.as_deref());
    Json(
        checks
            .iter()
            .filter(|check| only.is_none_or(|name| check.name == name))
            .map(|check| {
                let status = state.store.status(&check.name);
                CheckSummary {
                    name: check.name.clone(),
                    check_type: check.check_type(),
                    interval: humantime::format_duration(check.interval).to_string(),
                    state: status
                        .as_ref()
                        .map_or(CheckState::Ok, |status| status.state),
                    state_since: status
                        .as_ref()
                        .map_or_else(SystemTime::now, |status| status.since),
                    latest: status.and_then(|status| status.latest),
                }
            })
            .collect(),
    )
}
