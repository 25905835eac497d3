//! The history endpoints: one check (`GET /api/v1/checks/{name}`, with its latest result and
//! uptime), its series (`/history?from=&to=&step=&by=instance&instance=`, and for a check with
//! `locations` one location's runs with `location=` or every location's with `by=location`)
//! and incidents
//! (`GET /api/v1/incidents?check=&from=&limit=`). Times are RFC 3339 or a duration meaning
//! "that long ago" (`from=24h`), measured from one "now" taken when the request arrives; a
//! bad parameter, or an answer past a bound, is a 400 saying what to send instead. They only
//! read, each read within a time limit: a slow or unreachable database is a quick 503, and the
//! live state of a check never waits for it.

use super::{summary, ApiPath, ApiQuery, ApiState};
use crate::config::CheckConfig;
use crate::history::query::{Instances, Series, SeriesQuery};
use crate::history::{HistoryError, HistoryReader};
use axum::body::Body;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use std::future::Future;
use std::time::{Duration, SystemTime};
use tokio::time::Instant;

/// Incidents one request returns at most.
const MAX_INCIDENTS: usize = 1000;

/// How long a page (the status page, a check's page, a badge, one check's summary) waits for
/// history before it renders the live state without it, with a notice.
pub(super) const PAGE_HISTORY_BUDGET: Duration = Duration::from_millis(750);

/// Reads history for a page, giving up at `deadline` (one deadline for every read of a page).
pub(super) async fn for_page<T>(
    deadline: Instant,
    read: impl Future<Output = Result<T, HistoryError>>,
) -> Result<T, HistoryError> {
    tokio::time::timeout_at(deadline, read)
        .await
        .unwrap_or(Err(HistoryError::TimedOut(PAGE_HISTORY_BUDGET)))
}

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
        HistoryError::TimedOut(limit) => {
            log_failure(&HistoryError::TimedOut(limit));
            error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "the history database did not answer within {}; it is slow or unreachable (see the agent's log), try again later",
                    humantime::format_duration(limit)
                ),
            )
        }
        other => {
            log_failure(&other);
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

/// Failed history reads logged at most once per this long: while the database is down, every
/// view of every page would log one otherwise.
const LOG_FAILURES_EVERY: Duration = Duration::from_secs(10);

/// When a failure was last logged, and how many went unlogged since.
static LAST_LOGGED: std::sync::Mutex<Option<(Instant, u64)>> = std::sync::Mutex::new(None);

/// Logs a failed history read (its text redacted: driver errors may quote the URL), at most
/// once per `LOG_FAILURES_EVERY`, with the count of those not logged in between.
fn log_failure(error: &HistoryError) {
    let now = Instant::now();
    let suppressed = {
        let mut last = LAST_LOGGED
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match last.as_mut() {
            Some((at, count)) if now.duration_since(*at) < LOG_FAILURES_EVERY => {
                *count += 1;
                return;
            }
            _ => last.replace((now, 0)).map_or(0, |(_, count)| count),
        }
    };
    tracing::warn!(
        error = %crate::history::db::redact(&error.to_string()),
        not_logged_since = suppressed,
        "a history read failed; pages show the live state without history meanwhile"
    );
}

pub(super) fn reader(state: &ApiState) -> Result<&HistoryReader, Box<Response>> {
    state.history.as_ref().ok_or_else(|| {
        Box::new(error(
            StatusCode::NOT_FOUND,
            "this agent keeps no history ([history] enabled = false, or a runner)",
        ))
    })
}

fn timestamp_to_system(at: &jiff::Timestamp) -> Option<SystemTime> {
    let seconds = at.as_second();
    let nanos = u32::try_from(at.subsec_nanosecond()).ok();
    let whole = Duration::from_secs(seconds.unsigned_abs());
    let base = if seconds >= 0 {
        SystemTime::UNIX_EPOCH.checked_add(whole)?
    } else {
        SystemTime::UNIX_EPOCH.checked_sub(whole)?
    };
    match nanos {
        Some(nanos) => base.checked_add(Duration::from_nanos(u64::from(nanos))),
        // A negative fraction (before 1970): subtract it.
        None => base.checked_sub(Duration::from_nanos(
            at.subsec_nanosecond().unsigned_abs().into(),
        )),
    }
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
    // RFC 3339 with an offset other than Z (`2026-01-02T04:04:05+01:00`).
    if let Some(at) = text
        .parse::<jiff::Timestamp>()
        .ok()
        .and_then(|at| timestamp_to_system(&at))
    {
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
#[serde(deny_unknown_fields)]
pub(super) struct HistoryParams {
    from: Option<String>,
    to: Option<String>,
    step: Option<String>,
    by: Option<String>,
    /// Comma-separated instance addresses: their series only (implies `by=instance`).
    instance: Option<String>,
    /// For a check with `locations`: that location's own runs instead of the combined ones.
    location: Option<String>,
}

/// Which runs of a check a series reads.
#[derive(Debug, Clone, PartialEq, Eq)]
enum View {
    /// The check's own runs: for a check with `locations`, the combined ones.
    Check,
    /// One location's runs (`location=`).
    Location(String),
    /// The combined runs and one series per location (`by=location`): these locations, or
    /// None for every location with history (`["*"]`).
    ByLocation(Option<Vec<String>>),
}

/// The view `location=` and `by=location` ask of `check`, or what to ask instead.
fn view(check: &CheckConfig, location: Option<&str>, by: Option<&str>) -> Result<View, String> {
    let by_location = by == Some("location");
    let name = &check.name;
    let location = location.map(str::trim);
    if location.is_none() && !by_location {
        return Ok(View::Check);
    }
    let Some(named) = &check.locations else {
        return Err(format!(
            "check `{name}` runs from no locations (it has no `locations`): leave {} out; by=instance gives one series per instance",
            if by_location { "by=location" } else { "location=" }
        ));
    };
    let Some(location) = location else {
        let every = check.every_location();
        return Ok(View::ByLocation((!every).then(|| named.clone())));
    };
    if by_location {
        return Err(
            "location= reads one location and by=location every one: use one or the other"
                .to_string(),
        );
    }
    crate::config::location_name(location).map_err(|message| format!("location={message}"))?;
    if !check.every_location() && !named.iter().any(|known| known == location) {
        return Err(format!(
            "check `{name}` does not run from `{location}`; ask for one of its locations ({}), or by=location for all of them",
            named.join(", ")
        ));
    }
    Ok(View::Location(location.to_string()))
}

impl HistoryParams {
    /// The query these parameters ask for, with every time measured from `now`.
    fn query(&self, now: SystemTime) -> Result<SeriesQuery, String> {
        let to = self.to.as_deref().map_or(Ok(now), |t| parse_time(t, now))?;
        let from = match self.from.as_deref() {
            Some(from) => parse_time(from, now)?,
            None => to.checked_sub(Duration::from_secs(86_400)).unwrap_or(to),
        };
        let step = self
            .step
            .as_deref()
            .map(|step| {
                humantime::parse_duration(step)
                    .map_err(|_| format!("step `{step}` is not a duration such as 5m or 1h"))
            })
            .transpose()?;
        let instances = match (self.by.as_deref(), self.instance.as_deref()) {
            (None | Some("instance"), Some(list)) => Instances::Only(
                list.split(',')
                    .map(str::trim)
                    .filter(|address| !address.is_empty())
                    .map(str::to_string)
                    .collect(),
            ),
            (Some("check"), Some(_)) => {
                return Err(
                    "instance= asks for instance series: use by=instance or leave by out"
                        .to_string(),
                )
            }
            (Some("location"), Some(_)) => {
                return Err(
                    "instance= asks for instance series and by=location for location series: use one or the other (with location=NAME, instance= reads that location's instances)"
                        .to_string(),
                )
            }
            (None | Some("check" | "location"), None) => Instances::None,
            (Some("instance"), None) => Instances::All,
            (Some(other), _) => {
                return Err(format!(
                    "by=`{other}`: use by=instance or by=location, or leave it out"
                ))
            }
        };
        if instances == Instances::Only(Vec::new()) {
            return Err("instance= names no instance: give addresses, comma-separated".to_string());
        }
        Ok(SeriesQuery {
            from,
            to,
            step,
            instances,
            now,
        })
    }
}

pub(super) async fn check(
    State(state): State<ApiState>,
    ApiPath(name): ApiPath<String>,
) -> Response {
    let now = SystemTime::now();
    let deadline = Instant::now() + PAGE_HISTORY_BUDGET;
    let checks = state.checks.current();
    let Some(check) = checks.get(&name) else {
        return error(StatusCode::NOT_FOUND, format!("no check is named `{name}`"));
    };
    let status = state.store.status(&name);
    let mut body = match serde_json::to_value(summary(&checks, check, status.as_ref())) {
        Ok(body) => body,
        Err(error) => return error_response(StatusCode::INTERNAL_SERVER_ERROR, error.to_string()),
    };
    if let Some(history) = &state.history {
        // The live state never waits for the database: past the page's budget the answer
        // goes without uptime, and says why.
        match for_page(deadline, history.uptimes(std::slice::from_ref(&name), now)).await {
            Ok(mut all) => {
                body["uptime"] = all
                    .remove(&name)
                    .and_then(|uptime| serde_json::to_value(uptime).ok())
                    .unwrap_or(serde_json::Value::Null);
            }
            Err(error) => {
                body["uptime"] = serde_json::Value::Null;
                body["history_error"] = serde_json::Value::from(unavailable(&error));
            }
        }
    }
    Json(body).into_response()
}

/// What a page or summary says when history could not be read: a fixed sentence (never the
/// database's own text, which may name hosts and users); the redacted error goes to the log.
pub(super) fn unavailable(error: &HistoryError) -> &'static str {
    match error {
        HistoryError::TimedOut(_) => {
            log_failure(error);
            "the history database did not answer in time"
        }
        HistoryError::NotReady => "the history database has not been opened yet",
        other => {
            log_failure(other);
            "the history database could not be read"
        }
    }
}

pub(super) async fn history(
    State(state): State<ApiState>,
    ApiPath(name): ApiPath<String>,
    ApiQuery(params): ApiQuery<HistoryParams>,
) -> Response {
    // One "now" for the whole request: parsing the range and the retention horizons alike.
    let now = SystemTime::now();
    let history = match reader(&state) {
        Ok(history) => history,
        Err(response) => return *response,
    };
    let checks = state.checks.current();
    let Some(check) = checks.get(&name) else {
        return error(StatusCode::NOT_FOUND, format!("no check is named `{name}`"));
    };
    let (query, view) = match params.query(now).and_then(|query| {
        view(check, params.location.as_deref(), params.by.as_deref()).map(|view| (query, view))
    }) {
        Ok(asked) => asked,
        Err(message) => return error(StatusCode::BAD_REQUEST, message),
    };
    let series = match &view {
        View::Check => history.series(&name, &query).await,
        View::Location(location) => history.location_series(&name, location, &query).await,
        View::ByLocation(locations) => {
            history
                .series_by_location(&name, locations.as_deref(), &query)
                .await
        }
    };
    match series {
        Ok(series) => series_response(series),
        Err(error) => history_error(error),
    }
}

/// Counts what is written to it.
#[derive(Default)]
struct Counter(usize);

impl std::io::Write for Counter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0 += bytes.len();
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A series as JSON, written as the client reads it: the whole check's part, then one
/// instance (or location) series at a time, so an answer of 20,000 instance points is never one buffer
/// in memory (nor the doublings of one). The text is the same as serializing the series at
/// once, and its length is counted first (without keeping it) for the Content-Length.
fn series_response(mut series: Series) -> Response {
    let instances = series.instances.take();
    // Never both in one answer (by=location reads no instances); were they, the locations
    // would stay in the head, before the instances, as serde orders them.
    let locations = match instances {
        None => series.locations.take(),
        Some(_) => None,
    };
    let head = match serde_json::to_vec(&series) {
        Ok(head) => head,
        Err(error) => return error_response(StatusCode::INTERNAL_SERVER_ERROR, error.to_string()),
    };
    match (instances, locations) {
        (Some(instances), _) => streamed(head, "instances", instances),
        (None, Some(locations)) => streamed(head, "locations", locations),
        (None, None) => ([(header::CONTENT_TYPE, "application/json")], head).into_response(),
    }
}

/// `head` (a JSON object) with `key: [items]` added last, written one item at a time.
fn streamed<T: serde::Serialize + Send + 'static>(
    mut head: Vec<u8>,
    key: &str,
    items: Vec<T>,
) -> Response {
    let json = [(header::CONTENT_TYPE, "application/json")];
    // `{..."points":[...]}`: the items go before the closing brace.
    head.pop();
    head.extend_from_slice(format!(",\"{key}\":[").as_bytes());
    let mut length = head.len() + items.len().saturating_sub(1) + 2;
    for item in &items {
        let mut counter = Counter::default();
        if let Err(error) = serde_json::to_writer(&mut counter, item) {
            return error_response(StatusCode::INTERNAL_SERVER_ERROR, error.to_string());
        }
        length += counter.0;
    }
    let chunks = std::iter::once(head)
        .chain(items.into_iter().enumerate().map(|(at, item)| {
            let mut chunk = Vec::with_capacity(16 * 1024);
            if at > 0 {
                chunk.push(b',');
            }
            // Counted above: it serializes.
            let _ = serde_json::to_writer(&mut chunk, &item);
            chunk
        }))
        .chain(std::iter::once(b"]}".to_vec()))
        .map(|chunk| Ok::<_, std::convert::Infallible>(bytes::Bytes::from(chunk)));
    (
        json,
        [(header::CONTENT_LENGTH, length.to_string())],
        Body::from_stream(futures_util::stream::iter(chunks)),
    )
        .into_response()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct IncidentParams {
    check: Option<String>,
    from: Option<String>,
    limit: Option<usize>,
}

pub(super) async fn incidents(
    State(state): State<ApiState>,
    ApiQuery(params): ApiQuery<IncidentParams>,
) -> Response {
    let now = SystemTime::now();
    let history = match reader(&state) {
        Ok(history) => history,
        Err(response) => return *response,
    };
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
        assert_eq!(
            parse_time("1970-01-01T01:00:10+01:00", now),
            Ok(SystemTime::UNIX_EPOCH + Duration::from_secs(10))
        );
        assert!(parse_time("yesterday", now).is_err());
    }

    /// The streamed answer is the text serde would write at once, with its exact length.
    #[tokio::test]
    async fn a_series_streams_the_same_json_with_its_length() {
        use crate::history::query::{InstanceSeries, LocationSeries, Point};
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(3_600);
        let point = |runs| Point {
            start,
            runs,
            down: 1,
            unmeasured: 0,
            uptime: Some(0.5),
            latency: Default::default(),
        };
        let mut series = Series {
            check: "web \"edge\"".into(),
            location: None,
            from: start,
            to: start + Duration::from_secs(60),
            step_seconds: 60,
            source: "runs",
            points: vec![point(2)],
            locations: None,
            instances: None,
        };
        let locations = |names: &[&str]| {
            names
                .iter()
                .map(|location| LocationSeries {
                    location: location.to_string(),
                    points: vec![point(3), point(4)],
                })
                .collect::<Vec<_>>()
        };
        for (places, instances) in [
            (None, None),
            (None, Some(vec![])),
            (None, Some(vec![1, 2, 3])),
            (Some(locations(&[])), None),
            (Some(locations(&["eu-west", "us-east"])), None),
            (Some(locations(&["eu-west"])), Some(vec![1])),
        ] {
            series.locations = places;
            series.location = series.locations.is_none().then(|| "eu-west".to_string());
            series.instances = instances.map(|all: Vec<u64>| {
                all.into_iter()
                    .map(|n| InstanceSeries {
                        instance: format!("10.0.0.{n}:80"),
                        points: vec![point(n), point(n + 1)],
                    })
                    .collect()
            });
            let expected = serde_json::to_vec(&series).unwrap();
            let streamed = series.instances.is_some() || series.locations.is_some();
            let response = series_response(series.clone());
            assert_eq!(response.status(), StatusCode::OK);
            let length = response
                .headers()
                .get(header::CONTENT_LENGTH)
                .map(|value| value.to_str().unwrap().to_string());
            let body = axum::body::to_bytes(response.into_body(), usize::MAX)
                .await
                .unwrap();
            assert_eq!(
                String::from_utf8_lossy(&body),
                String::from_utf8_lossy(&expected)
            );
            // A whole body gets its length from the server; a stream carries it here.
            if streamed {
                assert_eq!(length, Some(expected.len().to_string()));
            }
        }
    }

    fn params(by: Option<&str>, instance: Option<&str>) -> HistoryParams {
        HistoryParams {
            from: None,
            to: None,
            step: None,
            by: by.map(str::to_string),
            instance: instance.map(str::to_string),
            location: None,
        }
    }

    #[test]
    fn instances_are_asked_with_by_or_by_address() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let instances = |by, instance| params(by, instance).query(now).map(|q| q.instances);
        assert_eq!(instances(None, None), Ok(Instances::None));
        assert_eq!(instances(Some("check"), None), Ok(Instances::None));
        assert_eq!(instances(Some("instance"), None), Ok(Instances::All));
        let two = Instances::Only(vec!["10.0.0.1:80".into(), "[::1]:80".into()]);
        assert_eq!(
            instances(None, Some("10.0.0.1:80, [::1]:80,")),
            Ok(two.clone())
        );
        assert_eq!(
            instances(Some("instance"), Some("10.0.0.1:80,[::1]:80")),
            Ok(two)
        );
        assert!(instances(Some("check"), Some("10.0.0.1:80")).is_err());
        assert!(instances(None, Some(" , ")).is_err());
        assert!(instances(Some("host"), None).is_err());
        // One now for everything: the default range ends at it and starts a day before.
        let query = params(None, None).query(now).unwrap();
        assert_eq!((query.now, query.to), (now, now));
        assert_eq!(query.from, now - Duration::from_secs(86_400));
    }

    fn check(locations: &str) -> CheckConfig {
        let toml = format!(
            "[bus]\nkind = \"nats\"\n[bus.nats]\nurl = \"nats://127.0.0.1:4222\"\n[[checks]]\nname = \"web\"\ntype = \"tcp\"\naddress = \"127.0.0.1:1\"\ninterval = \"60s\"\n{locations}"
        );
        let config = crate::config::Config::parse(
            &toml,
            crate::config::Format::Toml,
            std::path::Path::new("t.toml"),
        )
        .unwrap_or_else(|error| panic!("{error}"));
        config.checks.into_iter().next().unwrap()
    }

    #[test]
    fn location_and_by_location_are_asked_of_checks_with_locations_only() {
        let plain = check("");
        let named = check("locations = [\"eu-west\", \"us-east\"]\n");
        let every = check("locations = [\"*\"]\n");
        assert_eq!(view(&plain, None, None), Ok(View::Check));
        assert_eq!(view(&named, None, Some("instance")), Ok(View::Check));
        assert_eq!(
            view(&named, Some("eu-west"), None),
            Ok(View::Location("eu-west".into()))
        );
        assert_eq!(
            view(&named, None, Some("location")),
            Ok(View::ByLocation(Some(vec![
                "eu-west".into(),
                "us-east".into()
            ])))
        );
        assert_eq!(
            view(&every, None, Some("location")),
            Ok(View::ByLocation(None))
        );
        assert_eq!(
            view(&every, Some("ap-south"), None),
            Ok(View::Location("ap-south".into()))
        );
        let refused = |check: &CheckConfig, location, by| view(check, location, by).unwrap_err();
        let message = refused(&plain, Some("eu-west"), None);
        assert!(
            message.contains("runs from no locations") && message.contains("location="),
            "{message}"
        );
        let message = refused(&plain, None, Some("location"));
        assert!(
            message.contains("by=location") && message.contains("by=instance"),
            "{message}"
        );
        let message = refused(&named, Some("ap-south"), None);
        assert!(message.contains("eu-west, us-east"), "{message}");
        let message = refused(&named, Some("eu west"), None);
        assert!(message.contains("not a location name"), "{message}");
        // The internal name of a location's runs is never a way in.
        assert!(refused(&every, Some("web@eu-west"), None).contains("not a location name"));
        assert!(refused(&named, Some("eu-west"), Some("location")).contains("one or the other"));
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(
            params(Some("location"), None)
                .query(now)
                .map(|q| q.instances),
            Ok(Instances::None)
        );
        assert!(params(Some("location"), Some("10.0.0.1:80"))
            .query(now)
            .is_err());
    }
}
