//! Badges for READMEs and wikis: `/badge/{check}/status.svg` (the state, in words and colour)
//! and `/badge/{check}/uptime/{24h,7d,30d}.svg`, flat SVG in the usual two-part shape, drawn
//! here with no font or image to fetch. They show nothing a public status page would not. An
//! uptime badge waits for history at most `PAGE_HISTORY_BUDGET`, then says it is unavailable.

use super::history_api::{for_page, unavailable, PAGE_HISTORY_BUDGET};
use super::ApiState;
use crate::model::CheckState;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use std::time::SystemTime;
use tokio::time::Instant;

const GREEN: &str = "#2ea043";
const AMBER: &str = "#bf8700";
const RED: &str = "#cf222e";
const ORANGE: &str = "#db6d28";
const GREY: &str = "#6e7681";

/// Approximate width of Verdana 11px text, enough for a badge.
fn text_width(text: &str) -> f64 {
    text.chars()
        .map(|c| match c {
            'i' | 'l' | '.' | ':' | '|' | '!' | '\'' => 3.5,
            'm' | 'w' | 'M' | 'W' | '%' => 10.0,
            c if c.is_ascii_uppercase() => 8.0,
            _ => 6.8,
        })
        .sum()
}

/// A two-part badge: `label` on grey, `value` on `colour`.
pub fn svg(label: &str, value: &str, colour: &str) -> String {
    let label = super::html::esc(label);
    let value = super::html::esc(value);
    let left = text_width(&label) + 12.0;
    let right = text_width(&value) + 12.0;
    let total = left + right;
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{total:.0}\" height=\"20\" role=\"img\" aria-label=\"{label}: {value}\">\
<title>{label}: {value}</title>\
<rect width=\"{left:.0}\" height=\"20\" fill=\"#555\"/><rect x=\"{left:.0}\" width=\"{right:.0}\" height=\"20\" fill=\"{colour}\"/>\
<g fill=\"#fff\" text-anchor=\"middle\" font-family=\"Verdana,DejaVu Sans,sans-serif\" font-size=\"11\">\
<text x=\"{:.1}\" y=\"14\">{label}</text><text x=\"{:.1}\" y=\"14\">{value}</text></g></svg>",
        left / 2.0,
        left + right / 2.0
    )
}

fn respond(status: StatusCode, body: String) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "image/svg+xml; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=30"),
        ],
        body,
    )
        .into_response()
}

fn configured(state: &ApiState, check: &str) -> bool {
    state.checks.current().get(check).is_some()
}

pub(super) async fn status(State(state): State<ApiState>, Path(check): Path<String>) -> Response {
    if !configured(&state, &check) {
        return respond(StatusCode::NOT_FOUND, svg("status", "unknown check", GREY));
    }
    let current = state
        .store
        .status(&check)
        .map_or(CheckState::Ok, |status| status.state);
    let colour = match current {
        CheckState::Ok => GREEN,
        CheckState::Warn => AMBER,
        CheckState::FailWait | CheckState::PassWait => ORANGE,
        CheckState::Fail => RED,
    };
    respond(StatusCode::OK, svg(&check, current.as_str(), colour))
}

pub(super) async fn uptime(
    State(state): State<ApiState>,
    Path((check, window)): Path<(String, String)>,
) -> Response {
    let now = SystemTime::now();
    let deadline = Instant::now() + PAGE_HISTORY_BUDGET;
    let window = window.strip_suffix(".svg").unwrap_or(&window).to_string();
    if !["24h", "7d", "30d"].contains(&window.as_str()) {
        return respond(
            StatusCode::NOT_FOUND,
            svg("uptime", "use 24h, 7d or 30d", GREY),
        );
    }
    if !configured(&state, &check) {
        return respond(StatusCode::NOT_FOUND, svg("uptime", "unknown check", GREY));
    }
    let label = format!("uptime {window}");
    let Some(history) = &state.history else {
        return respond(StatusCode::OK, svg(&label, "no history", GREY));
    };
    let uptimes = match for_page(deadline, history.uptimes(std::slice::from_ref(&check), now)).await
    {
        Ok(mut all) => all.remove(&check).unwrap_or_default(),
        Err(error) => {
            unavailable(&error);
            return respond(StatusCode::OK, svg(&label, "unavailable", GREY));
        }
    };
    let value = match window.as_str() {
        "24h" => uptimes.day,
        "7d" => uptimes.week,
        _ => uptimes.month,
    };
    let colour = match value {
        None => GREY,
        Some(u) if u >= 0.999 => GREEN,
        Some(u) if u >= 0.99 => AMBER,
        Some(_) => RED,
    };
    respond(
        StatusCode::OK,
        svg(&label, &super::html::percent(value), colour),
    )
}
