//! The status page, rendered on the server: `/` (every check's state, uptime over 24 h / 7 d /
//! 30 d, a latency sparkline and the failing instances, paged and filtered by state, type,
//! group and name) and `/checks/{name}` (latency per phase over a chosen range, 90 daily
//! uptime bars, incidents, and each instance's last result). Charts are inline SVG; the CSS and
//! the small live-refresh script are embedded in the binary, so the page loads nothing from
//! the internet and works with JavaScript off. In public mode it never shows targets,
//! addresses, bodies or error messages: only states, error kinds, uptime and latency. Every
//! text from the config or a result is escaped by `esc`. The states and last runs come from
//! memory; history is read within `PAGE_HISTORY_BUDGET`, and a page whose history is slow or
//! unreachable is rendered without it, with a notice, never held up by the database.

use super::history_api::{for_page, parse_time, unavailable, PAGE_HISTORY_BUDGET};
pub use super::html::{esc, percent};
use super::{ApiState, CheckFilter};
use crate::config::{CheckConfig, HistoryConfig, StatusPageMode};
use crate::history::query::{DayBar, Incident, Instances, Point, SeriesQuery, Uptimes};
use crate::history::HistoryError;
use crate::model::CheckState;
use crate::results::CheckStatus;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use std::collections::{BTreeSet, HashMap};
use std::fmt::Write;
use std::time::{Duration, SystemTime};
use tokio::time::Instant;

const CSS: &str = include_str!("../../assets/status.css");
const JS: &str = include_str!("../../assets/status.js");
/// Checks per page unless `per` says otherwise, and the most it may say.
const PER_PAGE: usize = 50;
const MAX_PER_PAGE: usize = 500;
/// The phases the latency chart draws, with their colours.
const CHART_PHASES: [(&str, &str); 5] = [
    ("resolve", "#8250df"),
    ("connect", "#0969da"),
    ("tls", "#1a7f37"),
    ("processing", "#bc4c00"),
    ("transfer", "#cf222e"),
];

/// The page's routes (the router decides who may see them).
pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/", get(overview))
        .route("/checks/{name}", get(check_page))
        .route("/assets/status.css", get(css))
        .route("/assets/status.js", get(js))
        .route("/badge/{check}/status.svg", get(super::badge::status))
        .route("/badge/{check}/uptime/{window}", get(super::badge::uptime))
}

async fn css() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=3600"),
        ],
        CSS,
    )
        .into_response()
}

async fn js() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=3600"),
        ],
        JS,
    )
        .into_response()
}

/// Escapes a query-string value.
fn url_part(text: &str) -> String {
    let mut out = String::new();
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

fn millis_text(seconds: f64) -> String {
    if seconds >= 1.0 {
        format!("{seconds:.2} s")
    } else {
        format!("{:.1} ms", seconds * 1000.0)
    }
}

fn when(at: SystemTime) -> String {
    humantime::format_rfc3339_seconds(at)
        .to_string()
        .replace('T', " ")
        .replace('Z', " UTC")
}

fn span(seconds: f64) -> String {
    humantime::format_duration(Duration::from_secs(seconds.max(0.0) as u64)).to_string()
}

fn page(title: &str, body: &str) -> Response {
    let mut html = String::with_capacity(body.len() + 1024);
    let _ = write!(
        html,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{}</title><link rel=\"stylesheet\" href=\"/assets/status.css\"></head><body>\
         <header><h1><a href=\"/\">bastion status</a></h1>\
         <span class=\"muted\" id=\"refreshed\">refresh the page for news</span></header>\
         {body}<script src=\"/assets/status.js\" defer></script></body></html>",
        esc(title)
    );
    ([(header::CACHE_CONTROL, "no-store")], Html(html)).into_response()
}

fn not_found(what: &str) -> Response {
    let mut response = page("not found", &format!("<main><p>{}</p></main>", esc(what)));
    *response.status_mut() = StatusCode::NOT_FOUND;
    response
}

fn state_html(state: CheckState) -> String {
    format!(
        "<span class=\"state s-{0}\" data-state=\"{0}\">{0}</span>",
        state.as_str()
    )
}

#[derive(Debug, Default, serde::Deserialize)]
pub(super) struct OverviewParams {
    state: Option<String>,
    #[serde(rename = "type")]
    check_type: Option<String>,
    group: Option<String>,
    q: Option<String>,
    page: Option<usize>,
    per: Option<usize>,
}

impl OverviewParams {
    /// The query string for another page with the same filters.
    fn link(&self, page: usize) -> String {
        let mut parts = Vec::new();
        for (key, value) in [
            ("state", &self.state),
            ("type", &self.check_type),
            ("group", &self.group),
            ("q", &self.q),
        ] {
            if let Some(value) = value.as_deref().filter(|v| !v.is_empty()) {
                parts.push(format!("{key}={}", url_part(value)));
            }
        }
        if let Some(per) = self.per {
            parts.push(format!("per={per}"));
        }
        parts.push(format!("page={page}"));
        format!("/?{}", parts.join("&amp;"))
    }
}

fn status_of(state: &ApiState, check: &CheckConfig) -> (CheckState, Option<CheckStatus>) {
    let status = state.store.status(&check.name);
    (
        status
            .as_ref()
            .map_or(CheckState::Ok, |status| status.state),
        status,
    )
}

/// What the overview shows, gathered before any HTML is written: the counts over every check,
/// the groups to filter by, and the page of matching checks with their history.
struct Overview<'a> {
    total: usize,
    by_state: HashMap<CheckState, usize>,
    /// Sorted and without duplicates as they come: O(checks log groups).
    groups: BTreeSet<&'a str>,
    matching: usize,
    page: usize,
    pages: usize,
    /// The checks of this page: failing first, then by name.
    rows: Vec<OverviewRow<'a>>,
    /// Why history could not be read, when it could not.
    history_failure: Option<&'static str>,
}

/// One check's line on the overview.
struct OverviewRow<'a> {
    check: &'a CheckConfig,
    state: CheckState,
    status: Option<CheckStatus>,
    uptime: Uptimes,
    sparkline: Option<Vec<Option<f64>>>,
}

async fn overview(State(state): State<ApiState>, Query(params): Query<OverviewParams>) -> Response {
    let filter = CheckFilter {
        state: params.state.clone().filter(|s| !s.is_empty()),
        check_type: params.check_type.clone().filter(|s| !s.is_empty()),
        group: params.group.clone().filter(|s| !s.is_empty()),
        check: None,
    };
    if let Err(message) = filter.validate() {
        let mut response = page(
            "bad filter",
            &format!("<main><p>{}</p></main>", esc(&message)),
        );
        *response.status_mut() = StatusCode::BAD_REQUEST;
        return response;
    }
    let checks = state.checks.current();
    let view = gather_overview(&state, &checks, &params, &filter).await;
    let public = state.status_page == StatusPageMode::Public;
    page("bastion status", &render_overview(&view, &params, public))
}

async fn gather_overview<'a>(
    state: &ApiState,
    checks: &'a super::CheckIndex,
    params: &OverviewParams,
    filter: &CheckFilter,
) -> Overview<'a> {
    let query = params.q.as_deref().unwrap_or("").trim().to_lowercase();
    let now = SystemTime::now();
    let deadline = Instant::now() + PAGE_HISTORY_BUDGET;
    let mut by_state: HashMap<CheckState, usize> = HashMap::new();
    let mut groups: BTreeSet<&str> = BTreeSet::new();
    let mut matching: Vec<(&CheckConfig, CheckState, Option<CheckStatus>)> = Vec::new();
    for check in checks.all() {
        let (current, status) = status_of(state, check);
        *by_state.entry(current).or_default() += 1;
        if let Some(group) = check.group.as_deref() {
            groups.insert(group);
        }
        if filter.matches(check, current)
            && (query.is_empty() || check.name.to_lowercase().contains(&query))
        {
            matching.push((check, current, status));
        }
    }
    matching.sort_by(|a, b| {
        severity(b.1)
            .cmp(&severity(a.1))
            .then_with(|| a.0.name.cmp(&b.0.name))
    });
    let per = params.per.unwrap_or(PER_PAGE).clamp(1, MAX_PER_PAGE);
    let pages = matching.len().div_ceil(per).max(1);
    let page = params.page.unwrap_or(1).clamp(1, pages);
    let count = matching.len();
    let shown: Vec<_> = matching
        .into_iter()
        .skip((page - 1) * per)
        .take(per)
        .collect();
    let names: Vec<String> = shown
        .iter()
        .map(|(check, _, _)| check.name.clone())
        .collect();
    let (mut uptimes, mut sparks, history_failure) = match &state.history {
        Some(history) if !names.is_empty() => {
            let (uptimes, sparks) = tokio::join!(
                for_page(deadline, history.uptimes(&names, now)),
                for_page(deadline, history.sparklines(&names, 24, now)),
            );
            let failure = first_failure([uptimes.as_ref().err(), sparks.as_ref().err()]);
            (
                uptimes.unwrap_or_default(),
                sparks.unwrap_or_default(),
                failure,
            )
        }
        _ => (HashMap::new(), HashMap::new(), None),
    };
    let rows = shown
        .into_iter()
        .map(|(check, state, status)| OverviewRow {
            uptime: uptimes.remove(&check.name).unwrap_or_default(),
            sparkline: sparks.remove(&check.name),
            check,
            state,
            status,
        })
        .collect();
    Overview {
        total: checks.all().len(),
        by_state,
        groups,
        matching: count,
        page,
        pages,
        rows,
        history_failure,
    }
}

fn render_overview(view: &Overview<'_>, params: &OverviewParams, public: bool) -> String {
    let mut body = String::with_capacity(4096 + view.rows.len() * 1024);
    body.push_str("<main>");
    if let Some(reason) = view.history_failure {
        history_notice(&mut body, reason);
    }
    state_counts(&mut body, view);
    filters_form(&mut body, params, &view.groups);
    let _ = write!(
        body,
        "<p class=\"muted\" id=\"matching\" data-matching=\"{0}\">{0} checks match; page {1} of {2}.</p>",
        view.matching, view.page, view.pages
    );
    checks_table(&mut body, &view.rows, public);
    page_links(&mut body, view, params);
    body.push_str("</main>");
    body
}

/// The links to every state, each with its number of checks.
fn state_counts(body: &mut String, view: &Overview<'_>) {
    body.push_str("<ul class=\"counts\" aria-label=\"checks by state\">");
    let _ = write!(body, "<li><a href=\"/\">all <b>{}</b></a></li>", view.total);
    for known in CheckState::ALL {
        let _ = write!(
            body,
            "<li><a href=\"/?state={0}\">{1} <b>{2}</b></a></li>",
            known.as_str(),
            state_html(known),
            view.by_state.get(&known).copied().unwrap_or(0)
        );
    }
    body.push_str("</ul>");
}

/// The table of the page's checks: state, uptimes, latency and what fails.
fn checks_table(body: &mut String, rows: &[OverviewRow<'_>], public: bool) {
    body.push_str(
        "<div class=\"table\"><table id=\"checks\"><thead><tr><th>check</th><th>state</th>\
         <th>24 h</th><th>7 d</th><th>30 d</th><th class=\"wide\">latency, 24 h</th>\
         <th class=\"wide\">failing</th></tr></thead><tbody>",
    );
    for row in rows {
        let check = row.check;
        let _ = write!(
            body,
            "<tr data-check=\"{name}\"><td><a href=\"/checks/{link}\">{name}</a>\
             <div class=\"muted\">{kind}{group}</div></td><td>{state}</td>",
            name = esc(&check.name),
            link = url_part(&check.name),
            kind = check.check_type(),
            group = check
                .group
                .as_deref()
                .map(|g| format!(" · {}", esc(g)))
                .unwrap_or_default(),
            state = state_html(row.state),
        );
        uptime_cells(body, &row.uptime);
        body.push_str("<td class=\"wide\">");
        if let Some(line) = &row.sparkline {
            sparkline(body, line);
        }
        body.push_str("</td><td class=\"wide failing\">");
        failing_instances(body, row.status.as_ref(), public);
        body.push_str("</td></tr>");
    }
    body.push_str("</tbody></table></div>");
}

/// Previous and next, keeping the filters.
fn page_links(body: &mut String, view: &Overview<'_>, params: &OverviewParams) {
    body.push_str("<nav class=\"pages\">");
    if view.page > 1 {
        let _ = write!(
            body,
            "<a href=\"{}\" rel=\"prev\">← previous</a>",
            params.link(view.page - 1)
        );
    }
    if view.page < view.pages {
        let _ = write!(
            body,
            "<a href=\"{}\" rel=\"next\">next →</a>",
            params.link(view.page + 1)
        );
    }
    body.push_str("</nav>");
}

fn severity(state: CheckState) -> u8 {
    match state {
        CheckState::Fail => 4,
        CheckState::PassWait => 3,
        CheckState::FailWait => 2,
        CheckState::Warn => 1,
        CheckState::Ok => 0,
    }
}

fn filters_form(body: &mut String, params: &OverviewParams, groups: &BTreeSet<&str>) {
    let selected = |value: &Option<String>, option: &str| {
        if value.as_deref() == Some(option) {
            " selected"
        } else {
            ""
        }
    };
    body.push_str("<form class=\"filters\" method=\"get\" action=\"/\"><label>state<select name=\"state\"><option value=\"\">any</option>");
    for known in CheckState::ALL {
        let _ = write!(
            body,
            "<option{}>{}</option>",
            selected(&params.state, known.as_str()),
            known.as_str()
        );
    }
    body.push_str(
        "</select></label><label>type<select name=\"type\"><option value=\"\">any</option>",
    );
    for known in crate::checks::CheckType::ALL {
        let _ = write!(
            body,
            "<option{}>{}</option>",
            selected(&params.check_type, known.as_str()),
            known.as_str()
        );
    }
    body.push_str(
        "</select></label><label>group<select name=\"group\"><option value=\"\">any</option>",
    );
    for group in groups {
        let _ = write!(
            body,
            "<option{}>{}</option>",
            selected(&params.group, group),
            esc(group)
        );
    }
    let _ = write!(
        body,
        "</select></label><label>name<input name=\"q\" value=\"{}\" size=\"14\"></label>\
         <button type=\"submit\">filter</button></form>",
        esc(params.q.as_deref().unwrap_or(""))
    );
}

/// The first of a page's history errors, as the sentence the page shows (logged once).
fn first_failure<const N: usize>(errors: [Option<&HistoryError>; N]) -> Option<&'static str> {
    errors.into_iter().flatten().next().map(unavailable)
}

/// What a page says when history cannot be read: a fixed sentence, never the database's own
/// text (it may name hosts and users, and a public page shows no error message).
fn history_notice(body: &mut String, reason: &str) {
    let _ = write!(
        body,
        "<p class=\"notice\" id=\"history-notice\" role=\"status\">History could not be read just now \
         ({reason}); the states and last runs shown are live.</p>"
    );
}

fn uptime_cells(body: &mut String, uptime: &Uptimes) {
    for (window, value) in uptime.windows() {
        let _ = write!(
            body,
            "<td class=\"num\" data-uptime-{window}=\"{}\">{}</td>",
            value.map_or_else(String::new, |v| format!("{v:.6}")),
            percent(value)
        );
    }
}

/// The latest run the page shows: the check's, or for a check with `locations` each
/// location's, with its name.
fn latest_runs(status: &CheckStatus) -> Vec<(Option<&str>, &crate::messages::CheckResult)> {
    match &status.locations {
        Some(locations) => locations
            .iter()
            .filter_map(|(name, seen)| Some((Some(name.as_str()), seen.latest.as_deref()?)))
            .collect(),
        None => status
            .latest
            .as_deref()
            .map(|latest| (None, latest))
            .into_iter()
            .collect(),
    }
}

fn failing_instances(body: &mut String, status: Option<&CheckStatus>, public: bool) {
    let runs = status.map(latest_runs).unwrap_or_default();
    if runs.is_empty() {
        body.push_str("<span class=\"muted\">no result yet</span>");
        return;
    }
    let failing = failing_of(&runs);
    if failing.is_empty() {
        return;
    }
    if public {
        public_failures(body, &runs, &failing);
        return;
    }
    for (location, response) in failing.iter().take(3) {
        let (kind, message) = describe(response);
        let target = match location {
            Some(location) => format!("{location}/{}", response.target),
            None => response.target.clone(),
        };
        let _ = write!(
            body,
            "<div><code>{}</code> {}: {}</div>",
            esc(&target),
            esc(kind),
            esc(&message)
        );
    }
    if failing.len() > 3 {
        let _ = write!(
            body,
            "<div class=\"muted\">and {} more</div>",
            failing.len() - 3
        );
    }
}

/// The failing responses of `runs`, each with the location whose run it is.
fn failing_of<'a>(
    runs: &[(Option<&'a str>, &'a crate::messages::CheckResult)],
) -> Vec<(Option<&'a str>, &'a crate::messages::Response)> {
    runs.iter()
        .flat_map(|(location, run)| {
            run.responses
                .iter()
                .filter(|r| !r.passing)
                .map(move |response| (*location, response))
        })
        .collect()
}

/// The public page's summary of failures: how many instances failed and the kinds, with no
/// target or message. Instances that measured nothing (`no_runner`, `dispatch_timeout`) are
/// not counted as failing: they are said apart, as the check's state treats them.
fn public_failures(
    body: &mut String,
    runs: &[(Option<&str>, &crate::messages::CheckResult)],
    failing: &[(Option<&str>, &crate::messages::Response)],
) {
    let unmeasured_kind = |response: &crate::messages::Response| {
        response
            .error_kind()
            .is_some_and(crate::model::ErrorKind::is_unmeasured)
    };
    let kinds = |unmeasured: bool| {
        let mut kinds: Vec<&str> = failing
            .iter()
            .filter(|(_, response)| unmeasured_kind(response) == unmeasured)
            .map(|(_, response)| describe(response).0)
            .collect();
        kinds.sort_unstable();
        kinds.dedup();
        kinds.join(", ")
    };
    let counts = runs
        .iter()
        .fold((0, 0, 0), |(failing, unmeasured, measured), (_, run)| {
            let counts = run.counts();
            (
                failing + counts.failing,
                unmeasured + counts.unmeasured,
                measured + counts.instances.saturating_sub(counts.unmeasured),
            )
        });
    let (failing_count, unmeasured_count, measured_count) = counts;
    if failing_count > 0 {
        let _ = write!(
            body,
            "{failing_count} of {measured_count} instances: {}",
            esc(&kinds(false))
        );
    }
    if unmeasured_count > 0 {
        if failing_count > 0 {
            body.push_str("; ");
        }
        let _ = write!(
            body,
            "{unmeasured_count} not measured: {}",
            esc(&kinds(true))
        );
    }
}

/// An instance's error kind and message.
fn describe(response: &crate::messages::Response) -> (&'static str, String) {
    crate::history::failure(response)
}

/// A 120×24 line of hourly medians.
fn sparkline(body: &mut String, values: &[Option<f64>]) {
    let max = values.iter().flatten().fold(0.0f64, |a, b| a.max(*b));
    if max <= 0.0 {
        return;
    }
    let step = 120.0 / (values.len().max(2) - 1) as f64;
    let mut path = String::new();
    let mut pen_up = true;
    for (index, value) in values.iter().enumerate() {
        match value {
            Some(value) => {
                let x = index as f64 * step;
                let y = 22.0 - value / max * 20.0;
                let _ = write!(path, "{}{x:.1},{y:.1} ", if pen_up { "M" } else { "L" });
                pen_up = false;
            }
            None => pen_up = true,
        }
    }
    // An hour with no neighbour still shows, as a dot.
    let mut dots = String::new();
    for (index, value) in values.iter().enumerate() {
        let alone = |other: Option<usize>| {
            other
                .and_then(|o| values.get(o))
                .is_none_or(Option::is_none)
        };
        if let Some(value) = value {
            if alone(index.checked_sub(1)) && alone(Some(index + 1)) {
                let _ = write!(
                    dots,
                    "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"1.8\"/>",
                    index as f64 * step,
                    22.0 - value / max * 20.0
                );
            }
        }
    }
    let last = values.iter().rev().flatten().next().copied().unwrap_or(0.0);
    let _ = write!(
        body,
        "<svg width=\"124\" height=\"26\" viewBox=\"-2 -1 124 26\" role=\"img\" aria-label=\"median latency per hour, last {}\">\
         <path d=\"{path}\" fill=\"none\" stroke=\"currentColor\" stroke-width=\"1.5\"/><g fill=\"currentColor\">{dots}</g></svg> \
         <span class=\"muted\">{}</span>",
        millis_text(last),
        millis_text(last)
    );
}

#[derive(Debug, Default, serde::Deserialize)]
pub(super) struct CheckParams {
    range: Option<String>,
}

const RANGES: [&str; 6] = ["15m", "1h", "6h", "24h", "7d", "30d"];

/// What a check's page shows, gathered before any HTML is written.
struct CheckView<'a> {
    check: &'a CheckConfig,
    state: CheckState,
    status: Option<CheckStatus>,
    /// None on an agent that keeps no history.
    history: Option<CheckHistory>,
}

/// A check's history as its page shows it; a part that could not be read is None.
struct CheckHistory {
    range: &'static str,
    from: SystemTime,
    now: SystemTime,
    /// Why a part could not be read, when one could not.
    failure: Option<&'static str>,
    uptime: Uptimes,
    latency: Option<Vec<Point>>,
    bars: Option<Vec<DayBar>>,
    incidents: Option<Vec<Incident>>,
}

async fn check_page(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    Query(params): Query<CheckParams>,
) -> Response {
    let checks = state.checks.current();
    let Some(check) = checks.get(&name) else {
        return not_found(&format!("no check is named `{name}`"));
    };
    let range = RANGES
        .iter()
        .copied()
        .find(|known| params.range.as_deref() == Some(*known))
        .unwrap_or("24h");
    let (current, status) = status_of(&state, check);
    let history = match &state.history {
        Some(history) => Some(gather_check_history(history, &name, range).await),
        None => None,
    };
    let view = CheckView {
        check,
        state: current,
        status,
        history,
    };
    let public = state.status_page == StatusPageMode::Public;
    page(&check.name, &render_check(&view, public))
}

async fn gather_check_history(
    history: &crate::history::HistoryReader,
    name: &str,
    range: &'static str,
) -> CheckHistory {
    // One "now" for the whole page: the range, the retention horizons and every read.
    let now = SystemTime::now();
    let deadline = Instant::now() + PAGE_HISTORY_BUDGET;
    let from = range_start(range, now, history.config());
    let series_query = SeriesQuery {
        from,
        to: now,
        step: None,
        instances: Instances::None,
        now,
    };
    let since = now
        .checked_sub(Duration::from_secs(90 * 86_400))
        .unwrap_or(now);
    // Every read at once, all within the page's one deadline.
    let names = [name.to_string()];
    let (uptime, series, bars, incidents) = tokio::join!(
        for_page(deadline, history.uptimes(&names, now)),
        for_page(deadline, history.series(name, &series_query)),
        for_page(deadline, history.daily_bars(name, 90, now)),
        for_page(deadline, history.incidents(Some(name), since, 50, now)),
    );
    let failure = first_failure([
        uptime.as_ref().err(),
        series.as_ref().err(),
        bars.as_ref().err(),
        incidents.as_ref().err(),
    ]);
    CheckHistory {
        range,
        from,
        now,
        failure,
        uptime: uptime
            .ok()
            .and_then(|mut all| all.remove(name))
            .unwrap_or_default(),
        latency: series.ok().map(|series| series.points),
        bars: bars.ok(),
        incidents: incidents.ok(),
    }
}

fn render_check(view: &CheckView<'_>, public: bool) -> String {
    let check = view.check;
    let status = view.status.as_ref();
    let mut body = String::with_capacity(16 * 1024);
    let _ = write!(
        body,
        "<main><p><a href=\"/\">← all checks</a></p><h2 id=\"check\" data-check=\"{name}\">{name} {state}</h2>",
        name = esc(&check.name),
        state = state_html(view.state),
    );
    let Some(history) = &view.history else {
        facts(&mut body, check, status, public);
        body.push_str("</dl>");
        locations_table(&mut body, status);
        instances_table(&mut body, status, public);
        body.push_str("<p class=\"muted\">This agent keeps no history.</p></main>");
        return body;
    };
    if let Some(reason) = history.failure {
        history_notice(&mut body, reason);
    }
    facts(&mut body, check, status, public);
    for (window, value) in history.uptime.windows() {
        let _ = write!(
            body,
            "<dt>uptime {window}</dt><dd data-uptime-{window}=\"{}\">{}</dd>",
            value.map_or_else(String::new, |v| format!("{v:.6}")),
            percent(value)
        );
    }
    body.push_str("</dl>");
    locations_table(&mut body, status);
    latency_section(&mut body, &check.name, history);
    body.push_str("<section><h2>Uptime per day, last 90 days</h2>");
    match &history.bars {
        Some(bars) => uptime_bars(&mut body, bars),
        None => not_available(&mut body),
    }
    body.push_str("</section>");
    incidents_section(&mut body, history.incidents.as_deref(), public);
    instances_table(&mut body, status, public);
    body.push_str("</main>");
    body
}

/// The latency chart of the chosen range, with the links to the others.
fn latency_section(body: &mut String, name: &str, history: &CheckHistory) {
    body.push_str("<section><h2>Latency, median per phase</h2><p class=\"ranges\">");
    for option in RANGES {
        let _ = write!(
            body,
            "<a href=\"/checks/{}?range={option}\"{}>{option}</a>",
            url_part(name),
            if option == history.range {
                " class=\"on\""
            } else {
                ""
            }
        );
    }
    body.push_str("</p>");
    match &history.latency {
        Some(points) => latency_chart(body, points, history.from, history.now),
        None => not_available(body),
    }
    body.push_str("</section>");
}

/// The incidents of the last 90 days, newest first.
fn incidents_section(body: &mut String, incidents: Option<&[Incident]>, public: bool) {
    body.push_str("<section><h2>Incidents, last 90 days</h2>");
    match incidents {
        Some([]) => body.push_str("<p class=\"muted\">None.</p>"),
        Some(incidents) => {
            body.push_str("<div id=\"incidents\">");
            for incident in incidents {
                incident_html(body, incident, public);
            }
            body.push_str("</div>");
        }
        None => not_available(body),
    }
    body.push_str("</section>");
}

/// The start of a page's range: `range` before `now`, but never before the oldest history
/// kept (a `daily_retention` shorter than the range), so every range the page offers reads.
fn range_start(range: &str, now: SystemTime, config: &HistoryConfig) -> SystemTime {
    let from = parse_time(range, now).unwrap_or(now);
    let kept = config
        .raw_retention
        .max(config.hourly_retention)
        .max(config.daily_retention);
    from.max(now.checked_sub(kept).unwrap_or(SystemTime::UNIX_EPOCH))
}

/// The facts list of a check's page, left open for the uptime figures.
fn facts(body: &mut String, check: &CheckConfig, status: Option<&CheckStatus>, public: bool) {
    let _ = write!(
        body,
        "<dl class=\"facts\"><dt>type</dt><dd>{kind}</dd><dt>every</dt><dd>{every}</dd>\
         <dt>since</dt><dd>{since}</dd>",
        kind = check.check_type(),
        every = humantime::format_duration(check.interval),
        since = status.map_or_else(String::new, |s| when(s.since)),
    );
    if let Some(group) = &check.group {
        let _ = write!(body, "<dt>group</dt><dd>{}</dd>", esc(group));
    }
    if !public {
        let _ = write!(
            body,
            "<dt>target</dt><dd><code>{}</code></dd>",
            esc(&check.spec.target())
        );
    }
}

/// A section whose history did not come (the page's notice says why).
fn not_available(body: &mut String) {
    body.push_str("<p class=\"muted\">Not available right now.</p>");
}

/// A 720×220 chart of the p50 of each phase per step.
fn latency_chart(body: &mut String, points: &[Point], from: SystemTime, to: SystemTime) {
    let (width, height, left, bottom) = (720.0, 220.0, 56.0, 24.0);
    let plot_w = width - left - 8.0;
    let plot_h = height - bottom - 8.0;
    let max = points
        .iter()
        .flat_map(|p| {
            CHART_PHASES
                .iter()
                .filter_map(|(phase, _)| p.latency.get(phase))
        })
        .fold(0.0f64, |a, b| a.max(b.p50));
    if max <= 0.0 {
        body.push_str("<p class=\"muted\">No passing runs in this range.</p>");
        return;
    }
    let span = to
        .duration_since(from)
        .unwrap_or_default()
        .as_secs_f64()
        .max(1.0);
    let x_of = |at: SystemTime| {
        left + at.duration_since(from).unwrap_or_default().as_secs_f64() / span * plot_w
    };
    let _ = write!(
        body,
        "<svg class=\"chart\" id=\"latency\" viewBox=\"0 0 {width} {height}\" role=\"img\" aria-label=\"median latency per phase\">\
         <g stroke=\"currentColor\" stroke-opacity=\".2\">"
    );
    for tick in 0..=4 {
        let y = 8.0 + plot_h * f64::from(tick) / 4.0;
        let value = max * f64::from(4 - tick) / 4.0;
        let _ = write!(
            body,
            "<line x1=\"{left}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\"/>\
             <text x=\"{}\" y=\"{:.1}\" fill=\"currentColor\" fill-opacity=\"1\" stroke=\"none\" font-size=\"10\" text-anchor=\"end\">{}</text>",
            width - 8.0,
            left - 4.0,
            y + 3.0,
            millis_text(value)
        );
    }
    let _ = write!(
        body,
        "</g><text x=\"{left}\" y=\"{}\" font-size=\"10\" fill=\"currentColor\">{}</text>\
         <text x=\"{}\" y=\"{}\" font-size=\"10\" fill=\"currentColor\" text-anchor=\"end\">{}</text>",
        height - 6.0,
        when(from),
        width - 8.0,
        height - 6.0,
        when(to)
    );
    for (phase, colour) in CHART_PHASES {
        let mut path = String::new();
        let mut dots = String::new();
        let mut pen_up = true;
        for point in points {
            match point.latency.get(phase) {
                Some(figures) if figures.samples > 0 => {
                    let x = x_of(point.start);
                    let y = 8.0 + plot_h - figures.p50 / max * plot_h;
                    let _ = write!(path, "{}{x:.1},{y:.1} ", if pen_up { "M" } else { "L" });
                    let _ = write!(
                        dots,
                        "<circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"1.8\"><title>{phase} {}: p50 {}, p90 {}, p99 {}</title></circle>",
                        when(point.start),
                        millis_text(figures.p50),
                        millis_text(figures.p90),
                        millis_text(figures.p99)
                    );
                    pen_up = false;
                }
                _ => pen_up = true,
            }
        }
        if !path.is_empty() {
            let _ = write!(
                body,
                "<path d=\"{path}\" fill=\"none\" stroke=\"{colour}\" stroke-width=\"1.8\"><title>{phase}</title></path><g fill=\"{colour}\">{dots}</g>"
            );
        }
    }
    body.push_str("</svg><ul class=\"legend\">");
    for (phase, colour) in CHART_PHASES {
        let _ = write!(
            body,
            "<li><i style=\"background:{colour}\"></i>{phase}</li>"
        );
    }
    body.push_str("</ul>");
}

fn bar_colour(uptime: Option<f64>) -> &'static str {
    match uptime {
        None => "var(--none)",
        Some(u) if u >= 0.999 => "var(--ok)",
        Some(u) if u >= 0.99 => "var(--warn)",
        Some(_) => "var(--fail)",
    }
}

fn uptime_bars(body: &mut String, bars: &[DayBar]) {
    let width = bars.len() as f64 * 8.0;
    let _ = write!(
        body,
        "<svg class=\"chart\" id=\"daily\" viewBox=\"0 0 {width} 34\" role=\"img\" aria-label=\"uptime per day\">"
    );
    for (index, bar) in bars.iter().enumerate() {
        let day = humantime::format_rfc3339_seconds(bar.day).to_string();
        let _ = write!(
            body,
            "<rect x=\"{}\" y=\"2\" width=\"6\" height=\"30\" rx=\"1\" style=\"fill:{}\"><title>{}: {} ({} runs, {} down)</title></rect>",
            index as f64 * 8.0,
            bar_colour(bar.uptime),
            &day[..10.min(day.len())],
            percent(bar.uptime),
            bar.runs,
            bar.down
        );
    }
    body.push_str("</svg><p class=\"muted\">Green: at least 99.9 %; amber: at least 99 %; red: less; grey: no runs.</p>");
}

fn incident_html(body: &mut String, incident: &Incident, public: bool) {
    let _ = write!(
        body,
        "<div class=\"incident{}\" data-incident=\"{}\" data-duration=\"{}\"><b>{}</b> from {} {}, {}",
        if incident.open { "" } else { " ended" },
        incident.id,
        incident.duration_seconds,
        if incident.open { "ongoing" } else { "ended" },
        when(incident.started_at),
        incident
            .ended_at
            .map(|end| format!("to {}", when(end)))
            .unwrap_or_default(),
        span(incident.duration_seconds),
    );
    if incident.interrupted {
        body.push_str(" <span class=\"muted\">(closed by a restart of the agent)</span>");
    }
    body.push_str("<div class=\"failing\">");
    for cause in &incident.cause {
        let kind = cause
            .error_kind
            .map_or("status or assertion", |kind| kind.as_str());
        if public {
            let _ = write!(body, "<div>{}</div>", esc(kind));
        } else {
            let _ = write!(
                body,
                "<div><code>{}</code> {}: {}</div>",
                esc(&cause.instance),
                esc(kind),
                esc(cause.message.as_deref().unwrap_or(""))
            );
        }
    }
    body.push_str("</div></div>");
}

/// For a check with `locations`: each location's own state, since when, and the median
/// total time of its latest run's instances, beside the combined state in the heading. Shows
/// no address or message, so public pages have it too.
fn locations_table(body: &mut String, status: Option<&CheckStatus>) {
    let Some(locations) = status.and_then(|status| status.locations.as_deref()) else {
        return;
    };
    body.push_str(
        "<section><h2>Locations</h2><div class=\"table\"><table id=\"locations\"><thead><tr>\
         <th>location</th><th>state</th><th>since</th><th>latency, last run</th>\
         <th>failing</th></tr></thead><tbody>",
    );
    if locations.is_empty() {
        body.push_str(
            "<tr><td colspan=\"5\" class=\"muted\">No location has reported yet.</td></tr>",
        );
    }
    for (location, seen) in locations.iter() {
        let (latency, failing) = match &seen.latest {
            Some(latest) => {
                let mut totals: Vec<f64> = latest
                    .responses
                    .iter()
                    .filter(|response| response.error.is_none())
                    .map(|response| response.timings.total)
                    .collect();
                totals.sort_by(f64::total_cmp);
                let median = totals.get(totals.len() / 2).copied();
                (
                    median.map_or_else(|| "—".to_string(), millis_text),
                    format!("{} of {}", latest.counts().failing, latest.instances()),
                )
            }
            None => ("—".to_string(), "—".to_string()),
        };
        let _ = write!(
            body,
            "<tr data-location=\"{name}\" data-state=\"{state_name}\"><td>{name}</td><td>{state}</td>\
             <td>{since}</td><td class=\"num\">{latency}</td><td class=\"num\">{failing}</td></tr>",
            name = esc(location),
            state_name = seen.state,
            state = state_html(seen.state),
            since = when(seen.since),
        );
    }
    body.push_str("</tbody></table></div></section>");
}

fn instances_table(body: &mut String, status: Option<&CheckStatus>, public: bool) {
    body.push_str("<section><h2>Instances, last run</h2>");
    let Some(status) = status else {
        body.push_str("<p class=\"muted\">No result yet.</p></section>");
        return;
    };
    // For a check with locations, every location's latest run, each instance under its
    // location's name.
    let runs = latest_runs(status);
    let Some(last) = runs.iter().map(|(_, run)| run.finished_at).max() else {
        body.push_str("<p class=\"muted\">No result yet.</p></section>");
        return;
    };
    let _ = write!(
        body,
        "<p class=\"muted\">Run at {}.</p><div class=\"table\"><table id=\"instances\"><thead><tr>\
         <th>instance</th><th>result</th><th>total</th><th class=\"wide\">error</th></tr></thead><tbody>",
        when(last)
    );
    let responses = runs.iter().flat_map(|(location, run)| {
        run.responses
            .iter()
            .map(move |response| (*location, response))
    });
    for (index, (location, response)) in responses.enumerate() {
        let name = match (public, location) {
            (true, None) => format!("instance {}", index + 1),
            (true, Some(location)) => format!("{location}: instance {}", index + 1),
            (false, None) => response.target.clone(),
            (false, Some(location)) => format!("{location}/{}", response.target),
        };
        let result = if response.passing {
            "<span class=\"state s-OK\">pass</span>"
        } else {
            "<span class=\"state s-FAIL\">fail</span>"
        };
        let error = if response.passing {
            String::new()
        } else {
            let (kind, message) = describe(response);
            if public {
                esc(kind)
            } else {
                format!("{}: {}", esc(kind), esc(&message))
            }
        };
        let _ = write!(
            body,
            "<tr><td><code>{}</code></td><td>{result}</td><td class=\"num\">{}</td><td class=\"wide\">{error}</td></tr>",
            esc(&name),
            millis_text(response.timings.total)
        );
    }
    body.push_str("</tbody></table></div></section>");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped_for_html_and_urls() {
        assert_eq!(
            esc("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
        assert_eq!(url_part("a b/c"), "a%20b%2Fc");
        assert_eq!(percent(Some(0.99951)), "99.95%");
        assert_eq!(percent(None), "–");
    }

    fn run(responses: Vec<crate::messages::Response>) -> crate::messages::CheckResult {
        crate::messages::CheckResult::of_web(responses)
    }

    fn response(kind: Option<crate::model::ErrorKind>) -> crate::messages::Response {
        let mut response = crate::messages::Response::failed(
            "10.0.0.1:80".into(),
            crate::model::ProbeError::new(kind.unwrap_or(crate::model::ErrorKind::Connect), "x"),
            crate::messages::Timings::default(),
        );
        if kind.is_none() {
            response.passing = true;
            response.error = None;
        }
        response
    }

    fn public_text(runs: Vec<(Option<&str>, crate::messages::CheckResult)>) -> String {
        let runs: Vec<(Option<&str>, &crate::messages::CheckResult)> = runs
            .iter()
            .map(|(location, run)| (*location, run))
            .collect();
        let failing = failing_of(&runs);
        let mut body = String::new();
        public_failures(&mut body, &runs, &failing);
        body
    }

    /// A location without a runner, or an instance that got no worker, measured nothing: the
    /// public page says so apart and counts no failing instance for it.
    #[test]
    fn the_public_summary_counts_unmeasured_instances_apart_from_failing_ones() {
        use crate::model::ErrorKind;
        let no_runner = run(vec![response(Some(ErrorKind::NoRunner))]);
        let healthy = run(vec![response(None), response(None)]);
        assert_eq!(
            public_text(vec![
                (Some("eu"), healthy.clone()),
                (Some("us"), no_runner.clone())
            ]),
            "1 not measured: no_runner"
        );
        let down = run(vec![response(Some(ErrorKind::Connect)), response(None)]);
        assert_eq!(
            public_text(vec![(Some("eu"), down.clone()), (Some("us"), no_runner)]),
            "1 of 2 instances: connect; 1 not measured: no_runner"
        );
        let late = run(vec![
            response(Some(ErrorKind::Timeout)),
            response(Some(ErrorKind::DispatchTimeout)),
            response(None),
        ]);
        assert_eq!(
            public_text(vec![(None, late)]),
            "1 of 2 instances: timeout; 1 not measured: dispatch_timeout"
        );
        assert_eq!(public_text(vec![(None, healthy)]), "");
    }

    /// 9,000 checks in 4,500 groups: the filter lists each group once, sorted (the groups
    /// are collected in a set, not searched in a list per check).
    #[tokio::test]
    async fn the_overview_lists_every_group_once_and_sorted() {
        let toml: String = (0..9_000)
            .map(|i| {
                format!(
                    "[[checks]]\nname = \"c{i}\"\ngroup = \"g{:04}\"\ntype = \"tcp\"\naddress = \"127.0.0.1:1\"\ninterval = \"60s\"\n",
                    (i * 7) % 4_500
                )
            })
            .collect();
        let config = crate::config::Config::parse(
            &toml,
            crate::config::Format::Toml,
            std::path::Path::new("t.toml"),
        )
        .unwrap_or_else(|error| panic!("{error}"));
        let state = ApiState::for_test(crate::config::check_list(config.checks));
        let params = OverviewParams {
            group: Some("g0007".into()),
            ..OverviewParams::default()
        };
        let response = overview(State(state), Query(params)).await;
        assert_eq!(response.status(), StatusCode::OK);
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap_or_default();
        let html = String::from_utf8_lossy(&body);
        let select = &html[html.find("name=\"group\"").unwrap_or(0)..];
        let select = &select[..select.find("</select>").unwrap_or(0)];
        let options: Vec<&str> = select
            .split("<option")
            .skip(2)
            .filter_map(|option| option.split('>').nth(1)?.strip_suffix("</option"))
            .collect();
        let expected: Vec<String> = (0..4_500).map(|g| format!("g{g:04}")).collect();
        assert_eq!(options, expected);
        assert!(select.contains("<option selected>g0007</option>"));
        // Group g0007 holds checks 1 and 4501 (7 × 1 and 7 × 4501 mod 4500).
        assert!(
            html.contains("data-matching=\"2\""),
            "{}",
            &html[..html.len().min(2000)]
        );
    }
}
