//! The history endpoints: one check (`GET /api/v1/checks/{name}`, with its latest result and
//! uptime), its series (`/history?from=&to=&step=&by=instance`) and incidents
//! (`GET /api/v1/incidents?check=&from=&limit=`). Times are RFC 3339 or a duration meaning
//! "that long ago" (`from=24h`); a bad parameter is a 400 saying what to send. They only read.

use super::{summary, ApiState};
use crate::history::{HistoryError, HistoryReader};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use std::time::{Duration, SystemTime};

/// Incidents one request returns at most.
const MAX_INCIDENTS: usize = 1000;

pub(super) fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({ "error": message.into() }))).into_response()
}

pub(super) fn history_error(error: HistoryError) -> Response {
    match error {
        HistoryError::BadQuery(message) => error_response(StatusCode::BAD_REQUEST, message),
        HistoryError::NotReady => error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "history is not available yet: the database has not been opened (see the agent's log)",
        ),
        other => {
            tracing::warn!(error = %crate::history::db::redact(&other.to_string()), "history query failed");
            error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "the history database could not be read; see the agent's log",
            )
        }
    }
}

fn error_response(status: StatusCode, message: impl Into<String>) -> Response {
    error(status, message)
}

pub(super) fn reader(state: &ApiState) -> Result<&HistoryReader, Box<Response>> {
    state.history.as_ref().ok_or_else(|| {
        Box::new(error(
            StatusCode::NOT_FOUND,
            "this agent keeps no history ([history] enabled = false, or a runner)",
        ))
    })
}

/// A time: RFC 3339, `now`, or a duration before now (`90m`, `7d`).
pub fn parse_time(text: &str, now: SystemTime) -> Result<SystemTime, String> {
    let text = text.trim();
    if text == "now" {
        return Ok(now);
    }
    if let Ok(at) = humantime::parse_rfc3339_weak(text) {
        return Ok(at);
    }
    humantime::parse_duration(text.trim_start_matches('-'))
        .ok()
        .and_then(|ago| now.checked_sub(ago))
        .ok_or_else(|| {
            format!("`{text}` is not a time: use RFC 3339 (2026-01-02T03:04:05Z), `now`, or a duration ago such as 24h")
        })
}

#[derive(Debug, Deserialize)]
pub(super) struct HistoryParams {
    from: Option<String>,
    to: Option<String>,
    step: Option<String>,
    by: Option<String>,
}

pub(super) async fn check(State(state): State<ApiState>, Path(name): Path<String>) -> Response {
    let checks = state.checks.current();
    let Some(check) = checks.get(&name) else {
        return error(StatusCode::NOT_FOUND, format!("no check is named `{name}`"));
    };
    let mut body = match serde_json::to_value(summary(&state, check)) {
        Ok(body) => body,
        Err(error) => return error_response(StatusCode::INTERNAL_SERVER_ERROR, error.to_string()),
    };
    if let Some(history) = &state.history {
        let uptime = history
            .uptimes(std::slice::from_ref(&name), SystemTime::now())
            .await
            .ok()
            .and_then(|mut all| all.remove(&name))
            .map(|uptime| serde_json::to_value(uptime).unwrap_or_default());
        body["uptime"] = uptime.unwrap_or(serde_json::Value::Null);
    }
    Json(body).into_response()
}

pub(super) async fn history(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    Query(params): Query<HistoryParams>,
) -> Response {
    let history = match reader(&state) {
        Ok(history) => history,
        Err(response) => return *response,
    };
    if state.checks.current().get(&name).is_none() {
        return error(StatusCode::NOT_FOUND, format!("no check is named `{name}`"));
    }
    let now = SystemTime::now();
    let parsed = (|| -> Result<(SystemTime, SystemTime, Option<Duration>, bool), String> {
        let to = params
            .to
            .as_deref()
            .map_or(Ok(now), |t| parse_time(t, now))?;
        let from = match params.from.as_deref() {
            Some(from) => parse_time(from, now)?,
            None => to.checked_sub(Duration::from_secs(86_400)).unwrap_or(to),
        };
        let step = params
            .step
            .as_deref()
            .map(|step| {
                humantime::parse_duration(step)
                    .map_err(|_| format!("step `{step}` is not a duration such as 5m or 1h"))
            })
            .transpose()?;
        let by_instance = match params.by.as_deref() {
            None | Some("check") => false,
            Some("instance") => true,
            Some(other) => return Err(format!("by=`{other}`: use by=instance, or leave it out")),
        };
        Ok((from, to, step, by_instance))
    })();
    let (from, to, step, by_instance) = match parsed {
        Ok(parsed) => parsed,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    match history.series(&name, from, to, step, by_instance).await {
        Ok(series) => Json(series).into_response(),
        Err(error) => history_error(error),
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct IncidentParams {
    check: Option<String>,
    from: Option<String>,
    limit: Option<usize>,
}

pub(super) async fn incidents(
    State(state): State<ApiState>,
    Query(params): Query<IncidentParams>,
) -> Response {
    let history = match reader(&state) {
        Ok(history) => history,
        Err(response) => return *response,
    };
    let now = SystemTime::now();
    let from = match params.from.as_deref() {
        Some(from) => match parse_time(from, now) {
            Ok(from) => from,
            Err(message) => return error(StatusCode::BAD_REQUEST, message),
        },
        None => now
            .checked_sub(Duration::from_secs(30 * 86_400))
            .unwrap_or(now),
    };
    let limit = params.limit.unwrap_or(100).min(MAX_INCIDENTS);
    match history
        .incidents(params.check.as_deref(), from, limit, now)
        .await
    {
        Ok(incidents) => Json(incidents).into_response(),
        Err(error) => history_error(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_now_or_a_duration_ago() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(parse_time("now", now), Ok(now));
        assert_eq!(parse_time("1h", now), Ok(now - Duration::from_secs(3600)));
        assert_eq!(
            parse_time("1970-01-01T00:00:10Z", now),
            Ok(SystemTime::UNIX_EPOCH + Duration::from_secs(10))
        );
        assert!(parse_time("yesterday", now).is_err());
    }
}
