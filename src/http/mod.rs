//! The agent's own HTTP endpoints: `/metrics`, `/probe` (blackbox_exporter's), `/healthz`, `/readyz`, `/api/v1/checks` and
//! `POST /-/reload`, over HTTP or HTTPS (`tls`), with optional basic auth (`auth`) on
//! everything but `/healthz` and `/readyz`. They only read shared state and ask the reloader
//! to reload; nothing here schedules or probes.

pub mod auth;
pub mod badge;
pub mod history_api;
pub mod html;
pub mod probe;
mod scrape;
pub mod status_page;
pub mod tls;

use crate::bus::Bus;
use crate::checks::CheckType;
use crate::config::{CheckConfig, StatusPageMode, WebConfig};
use crate::metrics::Metrics;
use crate::model::CheckState;
use crate::reload::Reloader;
use crate::results::{CheckStatus, ChecksWatch, ResultStore};
use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
pub use scrape::Scrapes;
use serde::Serialize;
use serde_json::value::RawValue;
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
    list: crate::config::CheckList,
    by_name: HashMap<String, usize>,
    /// Positions in `list`, in the order of the names: pages follow it, so a cursor (the
    /// last name of a page) stays meaningful across reloads.
    sorted: Vec<usize>,
    /// When this list was first seen: the `state_since` of a check with no state yet.
    loaded_at: SystemTime,
    /// Tells lists apart in ETags (a reload may change a check's group or interval).
    generation: u64,
}

/// The generation of the next list of checks.
static NEXT_GENERATION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl CheckIndex {
    fn new(list: crate::config::CheckList) -> CheckIndex {
        let mut by_name = HashMap::with_capacity(list.len());
        for (at, check) in list.iter().enumerate() {
            by_name.entry(check.name.clone()).or_insert(at);
        }
        let mut sorted: Vec<usize> = by_name.values().copied().collect();
        sorted.sort_unstable_by(|a, b| list[*a].name.cmp(&list[*b].name));
        CheckIndex {
            list,
            by_name,
            sorted,
            loaded_at: SystemTime::now(),
            generation: NEXT_GENERATION.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// The checks whose names come after `after`, in the order of the names.
    fn after<'a>(&'a self, after: &'a str) -> impl Iterator<Item = &'a CheckConfig> + 'a {
        let start = self
            .sorted
            .partition_point(|at| self.list[*at].name.as_str() <= after);
        self.sorted[start..].iter().map(|at| &*self.list[*at])
    }

    /// The check of that name.
    pub fn get(&self, name: &str) -> Option<&CheckConfig> {
        self.by_name
            .get(name)
            .and_then(|at| self.list.get(*at))
            .map(|check| &**check)
    }

    /// Every check, in the config's order.
    pub fn all(&self) -> &[Arc<CheckConfig>] {
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
    /// `/metrics` renders one at a time and shares the text among concurrent scrapes.
    pub scrapes: Arc<Scrapes>,
}

/// The endpoints; `auth` (when users are configured) guards all but the health checks.
pub fn router(state: ApiState, web: &WebConfig) -> Router {
    let mut protected = Router::new()
        .route("/metrics", get(scrape::metrics))
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
        .route("/api/v1/openapi.json", get(openapi))
        .merge(open)
        .merge(protected)
        // gzip when the client accepts it (Prometheus does for /metrics); small answers are
        // left as they are by the layer itself.
        .layer(tower_http::compression::CompressionLayer::new())
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

/// Answers smaller than this go as they are: gzip would save little and cost a header.
const GZIP_FROM: usize = 1024;

/// Whether the client takes gzip: `Accept-Encoding` names it (or `*`) with a q above 0.
/// gzip named explicitly decides; `*` only when gzip is not named (RFC 9110, 12.5.3).
pub(crate) fn accepts_gzip(headers: &HeaderMap) -> bool {
    let (mut gzip, mut any) = (None, None);
    for item in headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
    {
        let mut parts = item.split(';');
        let coding = parts.next().unwrap_or("").trim();
        let quality = parts
            .find_map(|part| part.trim().strip_prefix("q="))
            .map_or(1.0, |q| q.trim().parse::<f32>().unwrap_or(0.0));
        if coding.eq_ignore_ascii_case("gzip") {
            gzip = Some(quality);
        } else if coding == "*" {
            any = Some(quality);
        }
    }
    gzip.or(any).is_some_and(|quality| quality > 0.0)
}

/// An answer's body, gzipped or not.
pub(crate) struct Encoded {
    body: Vec<u8>,
    gzipped: bool,
}

/// `body` as the client takes it: gzipped (at the fastest level: the agent's CPU is for
/// probes) when it accepts gzip and the body is large enough to be worth it. Called on the
/// blocking pool for large bodies; the tower-http layer leaves an answer that already has a
/// `Content-Encoding` alone.
pub(crate) fn encode(body: Vec<u8>, gzip: bool) -> Encoded {
    if gzip && body.len() >= GZIP_FROM {
        use std::io::Write;
        let mut encoder = flate2::write::GzEncoder::new(
            Vec::with_capacity(body.len() / 8),
            flate2::Compression::fast(),
        );
        if encoder.write_all(&body).is_ok() {
            if let Ok(zipped) = encoder.finish() {
                return Encoded {
                    body: zipped,
                    gzipped: true,
                };
            }
        }
    }
    Encoded {
        body,
        gzipped: false,
    }
}

impl Encoded {
    fn respond(self, status: StatusCode, content_type: &str, mut headers: HeaderMap) -> Response {
        if let Ok(value) = HeaderValue::from_str(content_type) {
            headers.insert(header::CONTENT_TYPE, value);
        }
        headers.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
        if self.gzipped {
            headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        }
        (status, headers, self.body).into_response()
    }
}

/// The API's contract (docs/openapi.json, built into the binary).
pub const OPENAPI: &str = include_str!("../../docs/openapi.json");

async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI)
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

/// One check as the API shows it, borrowed from the config and the store: its latest result
/// is the JSON the store keeps encoded, copied as it is.
#[derive(Serialize)]
pub(crate) struct CheckSummary<'a> {
    name: &'a str,
    #[serde(rename = "type")]
    check_type: CheckType,
    #[serde(skip_serializing_if = "Option::is_none")]
    group: Option<&'a str>,
    interval: String,
    state: CheckState,
    #[serde(with = "crate::time_format")]
    state_since: SystemTime,
    latest: Option<&'a RawValue>,
    /// For a check with `locations`: each location's own state and latest result; `state`
    /// is then the judgement across them.
    #[serde(skip_serializing_if = "Option::is_none")]
    locations: Option<Vec<LocationSummary<'a>>>,
}

/// One location of a check with `locations`, as the API shows it.
#[derive(Serialize)]
pub(crate) struct LocationSummary<'a> {
    location: &'a str,
    state: CheckState,
    #[serde(with = "crate::time_format")]
    state_since: SystemTime,
    latest: Option<&'a RawValue>,
}

/// One check as the API shows it, from its status in the store (None: not followed yet).
pub(crate) fn summary<'a>(
    checks: &CheckIndex,
    check: &'a CheckConfig,
    status: Option<&'a CheckStatus>,
) -> CheckSummary<'a> {
    CheckSummary {
        name: &check.name,
        check_type: check.check_type(),
        group: check.group.as_deref(),
        interval: humantime::format_duration(check.interval).to_string(),
        state: status.map_or(CheckState::Ok, |status| status.state),
        state_since: status.map_or(checks.loaded_at, |status| status.since),
        latest: status.and_then(CheckStatus::latest_json),
        locations: check.locations.as_ref().map(|_| {
            status
                .and_then(|status| status.locations.as_deref())
                .into_iter()
                .flatten()
                .map(|(location, seen)| LocationSummary {
                    location,
                    state: seen.state,
                    state_since: seen.since,
                    latest: seen.latest_json(),
                })
                .collect()
        }),
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
                let known: Vec<&str> = CheckType::ALL.iter().map(|t| t.as_str()).collect();
                return Err(format!(
                    "type `{check_type}` is not one of {}",
                    known.join(", ")
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

/// The most checks one page of `/api/v1/checks` holds.
pub const MAX_PAGE: usize = 1000;

/// `GET /api/v1/checks`'s parameters: the filters, and paging.
#[derive(Debug, Default, serde::Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct ChecksParams {
    #[serde(skip_serializing_if = "Option::is_none")]
    state: Option<String>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    check_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    group: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    check: Option<String>,
    /// At most this many checks, in the order of their names (1 to `MAX_PAGE`).
    #[serde(skip_serializing_if = "Option::is_none")]
    limit: Option<u32>,
    /// Only checks whose names come after this one (the last name of the previous page).
    #[serde(skip_serializing_if = "Option::is_none")]
    after: Option<String>,
}

async fn checks(
    State(state): State<ApiState>,
    headers: HeaderMap,
    ApiQuery(params): ApiQuery<ChecksParams>,
) -> Response {
    let filter = CheckFilter {
        state: params.state.clone(),
        check_type: params.check_type.clone(),
        group: params.group.clone(),
        check: params.check.clone(),
    };
    let states: Vec<&str> = CheckState::ALL.iter().map(|state| state.as_str()).collect();
    let types: Vec<&str> = CheckType::ALL.iter().map(|kind| kind.as_str()).collect();
    for (name, value, known) in [
        ("state", &params.state, &states),
        ("type", &params.check_type, &types),
    ] {
        if let Err(message) = exact_list(name, value.as_deref(), known) {
            return history_api::error(StatusCode::BAD_REQUEST, message);
        }
    }
    if let Err(message) = filter.validate() {
        return history_api::error(StatusCode::BAD_REQUEST, message);
    }
    let limit = match params.limit {
        None if params.after.is_none() => None,
        None => Some(MAX_PAGE),
        Some(limit) if (1..=MAX_PAGE as u32).contains(&limit) => Some(limit as usize),
        Some(limit) => {
            return history_api::error(
                StatusCode::BAD_REQUEST,
                format!("limit is {limit}; ask for 1 to {MAX_PAGE} checks a page and follow the Link header for the next"),
            )
        }
    };
    let checks = state.checks.current();
    let store = Arc::clone(&state.store);
    let gzip = accepts_gzip(&headers);
    // Choosing, tagging and encoding ten thousand checks is milliseconds of CPU: off the async
    // workers, which time the probes.
    let answer = tokio::task::spawn_blocking(move || {
        list_checks(&checks, &store, &filter, params, limit, &headers, gzip)
    })
    .await;
    match answer {
        Ok(response) => response,
        Err(error) => history_api::error(StatusCode::INTERNAL_SERVER_ERROR, error.to_string()),
    }
}

/// The answer of `GET /api/v1/checks` once its parameters are known to be good.
fn list_checks(
    checks: &CheckIndex,
    store: &ResultStore,
    filter: &CheckFilter,
    params: ChecksParams,
    limit: Option<usize>,
    request: &HeaderMap,
    gzip: bool,
) -> Response {
    // `?check=NAME` (the link in every notification) looks the one check up by name; a page
    // goes in the order of the names from its cursor; otherwise every check, in the
    // config's order.
    let candidates: Box<dyn Iterator<Item = &CheckConfig>> = match filter.check.as_deref() {
        Some(name) => Box::new(checks.get(name).into_iter()),
        None if limit.is_some() => Box::new(checks.after(params.after.as_deref().unwrap_or(""))),
        None => Box::new(checks.all().iter().map(|check| &**check)),
    };
    let mut chosen: Vec<(&CheckConfig, Option<CheckStatus>)> = Vec::new();
    let mut more = false;
    for check in candidates {
        let status = store.status(&check.name);
        let now = status
            .as_ref()
            .map_or(CheckState::Ok, |status| status.state);
        if !filter.matches(check, now) {
            continue;
        }
        if limit.is_some_and(|limit| chosen.len() == limit) {
            more = true;
            break;
        }
        chosen.push((check, status));
    }
    let tag = etag(checks, &chosen);
    let mut headers = HeaderMap::new();
    if let Ok(value) = HeaderValue::from_str(&tag) {
        headers.insert(header::ETAG, value);
    }
    // Cached answers are asked about again each time: the ETag makes that cheap.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if more {
        let last = chosen.last().map(|(check, _)| check.name.clone());
        let next = ChecksParams {
            limit: limit.and_then(|limit| u32::try_from(limit).ok()),
            after: last,
            ..params
        };
        if let Ok(query) = serde_urlencoded::to_string(&next) {
            if let Ok(value) =
                HeaderValue::from_str(&format!("</api/v1/checks?{query}>; rel=\"next\""))
            {
                headers.insert(header::LINK, value);
            }
        }
    }
    if not_modified(request, &tag) {
        headers.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
        return (StatusCode::NOT_MODIFIED, headers).into_response();
    }
    let summaries: Vec<CheckSummary> = chosen
        .iter()
        .map(|(check, status)| summary(checks, check, status.as_ref()))
        .collect();
    match serde_json::to_vec(&summaries) {
        Ok(body) => encode(body, gzip).respond(StatusCode::OK, "application/json", headers),
        Err(error) => history_api::error(StatusCode::INTERNAL_SERVER_ERROR, error.to_string()),
    }
}

/// The API reads `state=` and `type=` as its contract spells them: comma-separated values,
/// each one of `known` in any case, none empty and none padded. (The status page's form is
/// more forgiving: it sends empty fields.)
fn exact_list(name: &str, value: Option<&str>, known: &[&str]) -> Result<(), String> {
    let Some(value) = value else {
        return Ok(());
    };
    let listed = known.join(", ");
    for item in value.split(',') {
        let fits = known.iter().any(|known| item.eq_ignore_ascii_case(known));
        if !fits {
            let shown: String = item.chars().take(40).collect();
            return Err(if item.is_empty() {
                format!("{name}= has an empty value: name one or more of {listed}, comma-separated, or leave {name} out")
            } else {
                format!("{name} `{shown}` is not one of {listed}")
            });
        }
    }
    Ok(())
}

/// A weak ETag of an answer made of `chosen`: from the list of checks it came from and
/// each check's version in the store, so it is known without encoding the answer. Equal
/// tags mean equal answers within one run of the agent; the process's start is part of it
/// so that a tag from before a restart never matches.
fn etag(checks: &CheckIndex, chosen: &[(&CheckConfig, Option<CheckStatus>)]) -> String {
    use std::hash::{Hash, Hasher};
    static STARTED: std::sync::OnceLock<u128> = std::sync::OnceLock::new();
    let started = STARTED.get_or_init(|| {
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |since| since.as_nanos())
    });
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    started.hash(&mut hasher);
    checks.generation.hash(&mut hasher);
    for (check, status) in chosen {
        check.name.hash(&mut hasher);
        status
            .as_ref()
            .map_or(0, |status| status.version)
            .hash(&mut hasher);
    }
    format!("W/\"{:016x}\"", hasher.finish())
}

/// Whether `If-None-Match` names `tag` (weak comparison, as RFC 9110 asks for GET).
pub(crate) fn not_modified(headers: &HeaderMap, tag: &str) -> bool {
    let opaque = |candidate: &str| candidate.trim().trim_start_matches("W/").to_string();
    let ours = opaque(tag);
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|candidate| candidate.trim() == "*" || opaque(candidate) == ours)
}

/// `Query`, refusing what it cannot read with the API's error body (a 400 that says which
/// parameter is wrong), not axum's plain text.
pub(crate) struct ApiQuery<T>(pub T);

impl<T, S> axum::extract::FromRequestParts<S> for ApiQuery<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Response> {
        // serde_urlencoded would read bytes that are not UTF-8 as U+FFFD, so `after=%FF`
        // would quietly mean another name: refuse it instead.
        if parts
            .uri
            .query()
            .is_some_and(|query| !decodes_to_utf8(query))
        {
            return Err(history_api::error(
                StatusCode::BAD_REQUEST,
                "the query string is not UTF-8 once percent-decoded; encode parameters as UTF-8"
                    .to_string(),
            ));
        }
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(value)) => Ok(ApiQuery(value)),
            Err(rejection) => Err(history_api::error(
                StatusCode::BAD_REQUEST,
                rejection.body_text(),
            )),
        }
    }
}

/// Whether every parameter name and value of `query` is UTF-8 once percent-decoded (a `%`
/// not followed by two hex digits stays as it is, as form decoding leaves it).
fn decodes_to_utf8(query: &str) -> bool {
    let hex = |byte: u8| char::from(byte).to_digit(16);
    query
        .split('&')
        .flat_map(|pair| pair.split('='))
        .all(|part| {
            let bytes = part.as_bytes();
            let mut decoded = Vec::with_capacity(bytes.len());
            let mut at = 0;
            while at < bytes.len() {
                match (
                    bytes[at],
                    bytes.get(at + 1).copied().and_then(hex),
                    bytes.get(at + 2).copied().and_then(hex),
                ) {
                    (b'%', Some(high), Some(low)) => {
                        decoded.push((high * 16 + low) as u8);
                        at += 3;
                    }
                    (byte, _, _) => {
                        decoded.push(byte);
                        at += 1;
                    }
                }
            }
            std::str::from_utf8(&decoded).is_ok()
        })
}

/// `Path`, refusing what it cannot read (a name that is not UTF-8, say) with the API's
/// error body.
pub(crate) struct ApiPath<T>(pub T);

impl<T, S> axum::extract::FromRequestParts<S> for ApiPath<T>
where
    T: serde::de::DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Response> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(ApiPath(value)),
            Err(rejection) => Err(history_api::error(
                StatusCode::BAD_REQUEST,
                rejection.body_text(),
            )),
        }
    }
}

#[cfg(test)]
impl ApiState {
    /// For unit tests: a started agent of `checks` on the embedded bus, without history,
    /// reloads or `/probe`, with a private status page.
    pub(crate) fn for_test(checks: crate::config::CheckList) -> ApiState {
        ApiState {
            metrics: Arc::new(Metrics::new()),
            store: Arc::new(ResultStore::default()),
            checks: Checks::new(tokio::sync::watch::channel(checks).1),
            bus: Arc::new(crate::bus::memory::MemoryBus::new(16)),
            started: Arc::new(AtomicBool::new(true)),
            reloader: None,
            reload_endpoint: false,
            history: None,
            status_page: StatusPageMode::Private,
            probe: None,
            scrapes: Arc::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::scrape::{metrics, RENDER_SLOTS};
    use super::*;
    use crate::config::{Config, Format};
    use tokio::sync::watch;

    #[test]
    fn a_query_is_utf8_only_when_every_decoded_part_is() {
        assert!(decodes_to_utf8("after=web-1&limit=10"));
        assert!(decodes_to_utf8("q=caf%C3%A9&x=%zz&y=%"));
        assert!(decodes_to_utf8(""));
        assert!(!decodes_to_utf8("after=%FF"));
        assert!(!decodes_to_utf8("limit=1&%C3=x"));
        assert!(!decodes_to_utf8("q=%C3%28"));
    }

    fn checks(names: &[&str]) -> crate::config::CheckList {
        let toml: String = names
            .iter()
            .map(|name| {
                format!("[[checks]]\nname = \"{name}\"\ntype = \"tcp\"\naddress = \"127.0.0.1:1\"\ninterval = \"60s\"\n")
            })
            .collect();
        let config = Config::parse(&toml, Format::Toml, std::path::Path::new("t.toml"))
            .unwrap_or_else(|error| panic!("{error}"));
        crate::config::check_list(config.checks)
    }

    /// docs/openapi.json names every route the agent serves, and its enums are the code's.
    #[test]
    fn the_openapi_document_matches_the_routes_and_the_enums() {
        let document: serde_json::Value = serde_json::from_str(OPENAPI).unwrap();
        let paths = document["paths"].as_object().unwrap();
        let mut routes = Vec::new();
        let folder = concat!(env!("CARGO_MANIFEST_DIR"), "/src/http");
        for entry in std::fs::read_dir(folder).unwrap() {
            let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
            for piece in text.split(".route(\"").skip(1) {
                routes.push(piece.split('"').next().unwrap().to_string());
            }
        }
        assert!(routes.len() >= 12, "{routes:?}");
        for route in &routes {
            assert!(
                paths.contains_key(route),
                "{route} is not in docs/openapi.json"
            );
        }
        for path in paths.keys() {
            assert!(
                routes.contains(path),
                "docs/openapi.json has {path}, the agent does not"
            );
        }
        let schemas = &document["components"]["schemas"];
        let listed = |name: &str| -> Vec<String> {
            schemas[name]["enum"]
                .as_array()
                .unwrap_or_else(|| panic!("{name} has an enum"))
                .iter()
                .map(|value| value.as_str().unwrap().to_string())
                .collect()
        };
        let mut kinds: Vec<String> = crate::history::ERROR_KINDS
            .iter()
            .map(|kind| kind.as_str().to_string())
            .collect();
        kinds.sort();
        let mut documented = listed("ErrorKind");
        documented.sort();
        assert_eq!(documented, kinds);
        let types: Vec<String> = CheckType::ALL
            .iter()
            .map(|t| t.as_str().to_string())
            .collect();
        assert_eq!(listed("CheckType"), types);
        let states: Vec<String> = CheckState::ALL
            .iter()
            .map(|s| s.as_str().to_string())
            .collect();
        assert_eq!(listed("CheckState"), states);
        // A response's keys: its own, and each type's section under the type's name, as the
        // struct the type registered.
        let properties = schemas["Response"]["properties"].as_object().unwrap();
        let mut keys: Vec<&str> = properties.keys().map(String::as_str).collect();
        keys.sort_unstable();
        let mut expected: Vec<&str> = crate::checks::response::OWN_KEYS.to_vec();
        expected.extend(crate::checks::SECTIONS.iter().map(|(name, _)| *name));
        expected.sort_unstable();
        assert_eq!(keys, expected);
        for (name, section) in crate::checks::SECTIONS {
            assert_eq!(
                properties[*name]["$ref"],
                format!("#/components/schemas/{section}"),
                "{name}"
            );
        }
    }

    fn state() -> ApiState {
        ApiState::for_test(checks(&["a"]))
    }

    async fn scrape(state: &ApiState, query: Option<&str>, within: u64) -> Option<Response> {
        let asked = metrics(
            State(state.clone()),
            HeaderMap::new(),
            axum::extract::RawQuery(query.map(str::to_string)),
        );
        tokio::time::timeout(std::time::Duration::from_millis(within), asked)
            .await
            .ok()
    }

    #[tokio::test]
    async fn a_full_render_runs_alone_and_the_health_scrape_never_waits_for_it() {
        let state = state();
        // A full render in progress holds every slot.
        let rendering = Arc::clone(&state.scrapes.permit)
            .acquire_many_owned(RENDER_SLOTS)
            .await
            .unwrap();
        let none = scrape(&state, Some("checks=none"), 5_000).await;
        assert_eq!(none.map(|answer| answer.status()), Some(StatusCode::OK));
        assert!(
            scrape(&state, None, 200).await.is_none(),
            "a second full render waited"
        );
        assert!(scrape(&state, Some("group=g"), 200).await.is_none());
        drop(rendering);
        let full = scrape(&state, None, 5_000).await;
        assert_eq!(full.map(|answer| answer.status()), Some(StatusCode::OK));
        // Groups share the slots: several render at once.
        let held = Arc::clone(&state.scrapes.permit)
            .acquire_many_owned(RENDER_SLOTS - 1)
            .await
            .unwrap();
        let group = scrape(&state, Some("group=g"), 5_000).await;
        assert_eq!(group.map(|answer| answer.status()), Some(StatusCode::OK));
        drop(held);
        let bad = scrape(&state, Some("checks=some"), 5_000).await;
        assert_eq!(
            bad.map(|answer| answer.status()),
            Some(StatusCode::BAD_REQUEST)
        );
    }

    #[test]
    fn an_etag_is_matched_weakly_in_a_list_or_by_star() {
        let ours = "W/\"00ff\"";
        let with = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::IF_NONE_MATCH, HeaderValue::from_str(value).unwrap());
            not_modified(&headers, ours)
        };
        assert!(with("W/\"00ff\""));
        assert!(with("\"00ff\""));
        assert!(with("\"a\", W/\"00ff\""));
        assert!(with("*"));
        assert!(!with("W/\"00fe\""));
        assert!(!not_modified(&HeaderMap::new(), ours));
    }

    #[test]
    fn gzip_is_taken_when_named_with_a_quality_above_zero() {
        let takes = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(
                header::ACCEPT_ENCODING,
                HeaderValue::from_str(value).unwrap(),
            );
            accepts_gzip(&headers)
        };
        assert!(takes("gzip"));
        assert!(takes("br;q=1.0, GZIP;q=0.5, identity"));
        assert!(takes("*"));
        assert!(!takes("gzip;q=0"));
        assert!(!takes("gzip;q=nonsense"));
        assert!(!takes("br, deflate"));
        assert!(
            !takes("gzip;q=0, *"),
            "named and refused beats the wildcard"
        );
        assert!(takes("*, br;q=0"));
        assert!(!accepts_gzip(&HeaderMap::new()));
        let small = encode(b"tiny".to_vec(), true);
        assert!(!small.gzipped, "below GZIP_FROM nothing is gained");
        let large = encode(vec![b'a'; 10 * GZIP_FROM], true);
        assert!(large.gzipped && large.body.len() < GZIP_FROM);
    }

    #[test]
    fn exact_lists_refuse_empty_items_and_other_cases() {
        let known = ["OK", "FAIL"];
        assert!(exact_list("state", None, &known).is_ok());
        assert!(exact_list("state", Some("OK,fail"), &known).is_ok());
        assert!(exact_list("state", Some("Ok,fAIL"), &known).is_ok());
        for bad in ["", ",", "OK,", " OK", "OK ", "BROKEN"] {
            assert!(exact_list("state", Some(bad), &known).is_err(), "{bad:?}");
        }
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
