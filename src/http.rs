//! The agent's own HTTP endpoints: `/metrics`, `/healthz`, `/readyz` and `/api/v1/checks`.
//! They only read shared state; nothing here schedules or probes.

use crate::bus::Bus;
use crate::checks::CheckType;
use crate::config::CheckConfig;
use crate::messages::CheckResult;
use crate::metrics::Metrics;
use crate::results::ResultStore;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// What the endpoints read.
#[derive(Debug, Clone)]
pub struct ApiState {
    pub metrics: Arc<Metrics>,
    pub store: Arc<ResultStore>,
    pub checks: Arc<Vec<CheckConfig>>,
    pub bus: Arc<dyn Bus>,
    /// Set once the config is loaded and every component has started.
    pub started: Arc<AtomicBool>,
}

pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/api/v1/checks", get(checks))
        .with_state(state)
}

async fn metrics(State(state): State<ApiState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        state.metrics.render(),
    )
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

#[derive(Serialize)]
struct CheckSummary {
    name: String,
    #[serde(rename = "type")]
    check_type: CheckType,
    interval: String,
    latest: Option<Arc<CheckResult>>,
}

async fn checks(State(state): State<ApiState>) -> Json<Vec<CheckSummary>> {
    Json(
        state
            .checks
            .iter()
            .map(|check| CheckSummary {
                name: check.name.clone(),
                check_type: check.check_type(),
                interval: humantime::format_duration(check.interval).to_string(),
                latest: state.store.latest(&check.name),
            })
            .collect(),
    )
}
