//! `GET /probe?target=…&module=…`: blackbox_exporter's endpoint. The module (from
//! `agent.blackbox_modules`) and the target make a check that runs now, on the runner's
//! dispatcher: the same worker pools and dispatch deadline as scheduled checks, so a burst of
//! scrapes never exceeds the pools (a probe that finds no worker in time is `probe_success 0`,
//! its reason in `&debug=true`). The answer is blackbox_exporter's series for that one probe,
//! without bastion's `check` and `target` labels. Requests in flight are bounded; past the
//! bound, or on bad parameters, it answers at once with a status and what to fix. It never
//! panics on input, never records a result in the store, history or notifications.

use crate::checks::CheckType;
use crate::compiled::CompiledCheck;
use crate::config::blackbox::{BlackboxModule, BlackboxModules};
use crate::config::AssertionKey;
use crate::messages::{CheckResult, Response as ProbeResponse};
use crate::metrics::{Component, Metrics, Registry};
use crate::model::ErrorKind;
use crate::runner::dispatcher::{Dispatcher, OnDemand, RunOrder};
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::{watch, Semaphore};
use tokio::time::Instant;

/// What blackbox_exporter subtracts from Prometheus' scrape timeout by default
/// (`--timeout-offset`), so the answer arrives before Prometheus gives up.
pub const TIMEOUT_OFFSET: Duration = Duration::from_millis(500);

/// The scrape timeout assumed when Prometheus sends none (blackbox_exporter's 120 s).
const DEFAULT_SCRAPE_TIMEOUT: f64 = 120.0;

/// The module blackbox_exporter uses when a request names none.
const DEFAULT_MODULE: &str = "http_2xx";

/// `/probe` requests in flight at most: four per worker, at least 256. Each waits on the
/// pools or probes; beyond this many, a request is refused (503) and counted as `refused`.
pub fn request_limit(total_workers: usize) -> usize {
    total_workers.saturating_mul(4).max(256)
}

/// `outcome` of a `/probe` request: `probed`, `bad_request`, `refused` (too many at once).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProbeRequestLabels {
    outcome: &'static str,
}

/// `bastion_probe_requests_total`, by outcome.
#[derive(Clone, Debug)]
pub struct ProbeEndpointMetrics {
    requests: prometheus_client::metrics::family::Family<ProbeRequestLabels, Counter>,
}

impl Component for ProbeEndpointMetrics {
    fn register(registry: &mut Registry) -> ProbeEndpointMetrics {
        let requests = prometheus_client::metrics::family::Family::default();
        registry.agent(
            "bastion_probe_requests",
            "Requests to /probe (blackbox_exporter's endpoint) by outcome: probed, bad_request, refused (too many at once)",
            requests.clone(),
        );
        ProbeEndpointMetrics { requests }
    }
}

/// What `/probe` needs: the runner's dispatcher, the modules the reloads send, the bound.
#[derive(Debug)]
pub struct ProbeEndpoint {
    dispatcher: Arc<Dispatcher>,
    modules: watch::Receiver<Option<Arc<BlackboxModules>>>,
    permits: Arc<Semaphore>,
    limit: usize,
    metrics: ProbeEndpointMetrics,
}

impl ProbeEndpoint {
    pub fn new(
        dispatcher: Arc<Dispatcher>,
        modules: watch::Receiver<Option<Arc<BlackboxModules>>>,
        metrics: &Metrics,
    ) -> ProbeEndpoint {
        let workers = dispatcher.usage().values().map(|usage| usage.total).sum();
        let limit = request_limit(workers);
        ProbeEndpoint {
            dispatcher,
            modules,
            permits: Arc::new(Semaphore::new(limit)),
            limit,
            metrics: metrics.component(),
        }
    }

    fn count(&self, outcome: &'static str) {
        self.metrics
            .requests
            .get_or_create(&ProbeRequestLabels { outcome })
            .inc();
    }
}

fn plain(status: StatusCode, message: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{message}\n"),
    )
        .into_response()
}

/// The probe's timeout, as blackbox_exporter computes it: the scrape timeout (header, else
/// 120 s) minus the offset, or the module's timeout when that is shorter.
pub fn probe_timeout(
    scrape_header: Option<&str>,
    module: Option<Duration>,
) -> Result<Duration, String> {
    let scrape = match scrape_header {
        None => DEFAULT_SCRAPE_TIMEOUT,
        Some(text) => match text.trim().parse::<f64>() {
            Ok(seconds) if seconds.is_finite() && seconds >= 0.0 => seconds,
            _ => {
                return Err(format!(
                    "X-Prometheus-Scrape-Timeout-Seconds `{text}` is not a number of seconds"
                ))
            }
        },
    };
    let scrape = if scrape == 0.0 {
        DEFAULT_SCRAPE_TIMEOUT
    } else {
        scrape
    };
    let most = scrape - TIMEOUT_OFFSET.as_secs_f64();
    let seconds = match module {
        Some(module) if module.as_secs_f64() < most || most <= 0.0 => module.as_secs_f64(),
        _ => most,
    };
    if seconds <= 0.0 {
        return Err(format!(
            "the scrape timeout of {scrape}s leaves no time to probe once the offset of {}s is taken; raise scrape_timeout or set the module's timeout",
            TIMEOUT_OFFSET.as_secs_f64()
        ));
    }
    // Capped at the longest timeout a check compiles with (10 minutes): a longer scrape
    // timeout is honoured up to it rather than refused.
    let most = crate::config::bounds::CHECK_TIMEOUT.cap_duration(Duration::MAX);
    Ok(Duration::from_secs_f64(seconds.min(most.as_secs_f64())))
}

/// `GET /probe`.
pub async fn probe(
    State(state): State<super::ApiState>,
    headers: HeaderMap,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let Some(endpoint) = state.probe else {
        return plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "this agent runs no probes (role checker): send /probe to an agent with role all or runner".to_string(),
        );
    };
    let prepared = match prepare(&endpoint, &headers, &params) {
        Ok(prepared) => prepared,
        Err(message) => {
            endpoint.count("bad_request");
            return plain(StatusCode::BAD_REQUEST, message);
        }
    };
    let Ok(permit) = Arc::clone(&endpoint.permits).try_acquire_owned() else {
        endpoint.count("refused");
        return plain(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "too many /probe requests at once (the limit is {}, four per worker); scrape less often or add runner.workers",
                endpoint.limit
            ),
        );
    };
    endpoint.count("probed");
    let started = Instant::now();
    let finish_by = started + prepared.timeout;
    let start_probes_by = started + endpoint.dispatcher.deadline().min(prepared.timeout);
    let order = RunOrder {
        check: Arc::clone(&prepared.check),
        run_id: 0,
        scheduled_at: SystemTime::now(),
        discovered: None,
    };
    let result = endpoint
        .dispatcher
        .run_on_demand(
            order,
            start_probes_by,
            OnDemand {
                finish_by: Some(finish_by),
                first_only: !prepared.all_instances,
            },
        )
        .await;
    drop(permit);
    let metrics = render(&prepared, &result);
    if prepared.debug {
        return plain(StatusCode::OK, debug_output(&prepared, &result, &metrics));
    }
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        metrics,
    )
        .into_response()
}

/// A request made ready to run.
struct Prepared {
    module_name: String,
    module: BlackboxModule,
    target: String,
    timeout: Duration,
    scrape_header: Option<String>,
    check: Arc<CompiledCheck>,
    definition: crate::config::CheckConfig,
    debug: bool,
    all_instances: bool,
}

fn prepare(
    endpoint: &ProbeEndpoint,
    headers: &HeaderMap,
    params: &HashMap<String, String>,
) -> Result<Prepared, String> {
    let target = params
        .get("target")
        .map(|target| target.trim().to_string())
        .filter(|target| !target.is_empty())
        .ok_or("the target parameter is missing: ask /probe?target=…&module=…")?;
    let module_name = params
        .get("module")
        .map(String::as_str)
        .filter(|name| !name.is_empty())
        .unwrap_or(DEFAULT_MODULE)
        .to_string();
    let debug = match params.get("debug").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => return Err(format!("debug `{other}` is not true or false")),
    };
    let all_instances = match params.get("instances").map(String::as_str) {
        None | Some("first") => false,
        Some("all") => true,
        Some(other) => {
            return Err(format!(
                "instances `{other}` is not `all` (every address behind the name) or `first`"
            ))
        }
    };
    if params.contains_key("hostname") {
        return Err(
            "the hostname parameter is not supported: set a Host header or tls_config.server_name in the module".to_string(),
        );
    }
    let modules = endpoint.modules.borrow().clone();
    let Some(modules) = modules else {
        return Err(format!(
            "unknown module `{module_name}`: no modules are loaded; set agent.blackbox_modules to a blackbox.yml"
        ));
    };
    let Some(module) = modules.modules.get(&module_name).cloned() else {
        let known: Vec<&str> = modules.modules.keys().map(String::as_str).collect();
        return Err(format!(
            "unknown module `{module_name}`: {} has {}",
            modules.path.display(),
            if known.is_empty() {
                "no modules".to_string()
            } else {
                known.join(", ")
            }
        ));
    };
    let scrape_header = headers
        .get("x-prometheus-scrape-timeout-seconds")
        .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned());
    let timeout = probe_timeout(scrape_header.as_deref(), module.timeout)?;
    let mut definition = module
        .check_for(&target, timeout)
        .map_err(|reason| format!("module `{module_name}`: {reason}"))?;
    if all_instances {
        // Every address behind the name, of both families.
        definition.ip_protocol = None;
        definition.ip_protocol_fallback = None;
    }
    let check = CompiledCheck::compile(&definition)
        .map_err(|error| format!("target `{target}` with module `{module_name}`: {error}"))?;
    Ok(Prepared {
        module_name,
        module,
        target,
        timeout,
        scrape_header,
        check: Arc::new(check),
        definition,
        debug,
        all_instances,
    })
}

/// One family: its name, its help, and its samples (labels as written, value).
type Family = (&'static str, &'static str, Vec<(String, f64)>);

/// Families in the order first written, each with its samples.
#[derive(Default)]
struct Families {
    list: Vec<Family>,
}

impl Families {
    fn set(&mut self, name: &'static str, help: &'static str, labels: String, value: f64) {
        match self.list.iter_mut().find(|(known, _, _)| *known == name) {
            Some((_, _, samples)) => samples.push((labels, value)),
            None => self.list.push((name, help, vec![(labels, value)])),
        }
    }

    fn text(&self) -> String {
        let mut text = String::new();
        for (name, help, samples) in &self.list {
            let _ = writeln!(text, "# HELP {name} {help}");
            let _ = writeln!(text, "# TYPE {name} gauge");
            for (labels, value) in samples {
                let _ = writeln!(text, "{name}{labels} {}", number(*value));
            }
        }
        text
    }
}

fn number(value: f64) -> String {
    if value.is_nan() {
        "NaN".to_string()
    } else if value.is_infinite() {
        if value > 0.0 { "+Inf" } else { "-Inf" }.to_string()
    } else {
        format!("{value}")
    }
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Writes one response's series, each with `instance` (the `instance_address` label, with
/// `&instances=all`) before its own label.
struct Out<'a> {
    families: &'a mut Families,
    instance: Option<String>,
}

impl Out<'_> {
    fn gauge(&mut self, name: &'static str, help: &'static str, value: f64) {
        self.labelled(name, help, None, value);
    }

    fn labelled(
        &mut self,
        name: &'static str,
        help: &'static str,
        label: Option<(&str, &str)>,
        value: f64,
    ) {
        let mut pairs = Vec::new();
        if let Some(instance) = &self.instance {
            pairs.push(format!("instance_address=\"{}\"", escape(instance)));
        }
        if let Some((key, value)) = label {
            pairs.push(format!("{key}=\"{}\"", escape(value)));
        }
        let labels = if pairs.is_empty() {
            String::new()
        } else {
            format!("{{{}}}", pairs.join(","))
        };
        self.families.set(name, help, labels, value);
    }
}

/// The address a response is about, when it is one.
fn address_of(response: &ProbeResponse) -> Option<IpAddr> {
    response
        .target
        .parse::<SocketAddr>()
        .map(|socket| socket.ip())
        .or_else(|_| response.target.parse::<IpAddr>())
        .ok()
}

/// FNV-1a (32 bits) of the address as text: blackbox_exporter's `probe_ip_addr_hash`.
fn fnv32a(text: &str) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in text.bytes() {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash
}

fn flag(value: bool) -> f64 {
    if value {
        1.0
    } else {
        0.0
    }
}

/// blackbox_exporter's series for the run: one set, or one per instance with `instance_address`.
fn render(prepared: &Prepared, result: &CheckResult) -> String {
    let mut families = Families::default();
    for response in &result.responses {
        let instance = prepared
            .all_instances
            .then(|| address_of(response).map_or(response.target.clone(), |ip| ip.to_string()));
        let mut out = Out {
            families: &mut families,
            instance,
        };
        write_response(&mut out, prepared, result.check_type, response);
    }
    families.text()
}

fn write_response(
    out: &mut Out,
    prepared: &Prepared,
    check_type: CheckType,
    response: &ProbeResponse,
) {
    let timings = &response.timings;
    out.gauge(
        "probe_success",
        "Displays whether or not the probe was a success",
        flag(response.passing),
    );
    out.gauge(
        "probe_duration_seconds",
        "Returns how long the probe took to complete in seconds",
        timings.total,
    );
    out.gauge(
        "probe_timeout_seconds",
        "Returns how long the probe timeout is in seconds",
        prepared.timeout.as_secs_f64(),
    );
    out.gauge(
        "probe_dns_lookup_time_seconds",
        "Returns the time taken for probe dns lookup in seconds",
        timings.resolve,
    );
    let address = address_of(response);
    out.gauge(
        "probe_ip_protocol",
        "Specifies whether probe ip protocol is IP4 or IP6",
        match address {
            Some(IpAddr::V4(_)) => 4.0,
            Some(IpAddr::V6(_)) => 6.0,
            None => 0.0,
        },
    );
    if let Some(address) = address {
        out.gauge(
            "probe_ip_addr_hash",
            "Specifies the hash of IP address. It's useful to detect if the IP address changes.",
            f64::from(fnv32a(&address.to_string())),
        );
    }
    match check_type {
        CheckType::Http => write_http(out, response),
        CheckType::Tcp => {
            out.gauge(
                "probe_failed_due_to_regex",
                "Indicates if probe failed due to regex",
                flag(
                    response
                        .error
                        .as_ref()
                        .is_some_and(|error| error.kind == ErrorKind::Expect),
                ),
            );
        }
        CheckType::Dns => write_dns(out, response),
        CheckType::Icmp => {
            let rtt = response
                .sections
                .icmp
                .as_ref()
                .filter(|icmp| icmp.received > 0)
                .map_or(timings.rtt, |icmp| icmp.rtt_avg);
            for (phase, seconds) in [
                ("resolve", timings.resolve),
                ("setup", timings.connect),
                ("rtt", rtt),
            ] {
                out.labelled(
                    "probe_icmp_duration_seconds",
                    "Duration of icmp request by phase",
                    Some(("phase", phase)),
                    seconds,
                );
            }
        }
        CheckType::Grpc => write_grpc(out, response),
        // Not blackbox_exporter probers: /probe never runs another type.
        _ => {}
    }
    write_tls(out, response);
}

fn write_tls(out: &mut Out, response: &ProbeResponse) {
    let Some(tls) = &response.tls else {
        return;
    };
    if let Some(expiry) = tls.earliest_cert_expiry {
        out.gauge(
            "probe_ssl_earliest_cert_expiry",
            "Returns last SSL chain expiry in unixtime",
            crate::time_format::unix_seconds(expiry),
        );
    }
    let version = match tls.version.as_str() {
        "TLSv1.2" => "TLS 1.2",
        "TLSv1.3" => "TLS 1.3",
        _ => "unknown",
    };
    out.labelled(
        "probe_tls_version_info",
        "Returns the TLS version used or NaN when unknown",
        Some(("version", version)),
        1.0,
    );
}

fn write_http(out: &mut Out, response: &ProbeResponse) {
    let timings = &response.timings;
    for (phase, seconds) in [
        ("resolve", timings.resolve),
        ("connect", timings.connect),
        ("tls", timings.tls),
        ("processing", timings.processing),
        ("transfer", timings.transfer),
    ] {
        out.labelled(
            "probe_http_duration_seconds",
            "Duration of http request by phase, summed over all redirects",
            Some(("phase", phase)),
            seconds,
        );
    }
    let http = response.http.as_ref();
    out.gauge(
        "probe_http_status_code",
        "Response HTTP status code",
        http.map_or(0.0, |http| f64::from(http.status)),
    );
    out.gauge(
        "probe_http_content_length",
        "Length of http content response",
        http.map_or(0.0, |http| {
            http.headers
                .get("content-length")
                .and_then(|length| length.trim().parse::<f64>().ok())
                .unwrap_or(-1.0)
        }),
    );
    out.gauge(
        "probe_http_uncompressed_body_length",
        "Length of uncompressed response body",
        http.map_or(0.0, |http| {
            http.body_bytes.unwrap_or(http.body.len()) as f64
        }),
    );
    out.gauge(
        "probe_http_redirects",
        "The number of redirects",
        http.map_or(0.0, |http| f64::from(http.redirects)),
    );
    out.gauge(
        "probe_http_ssl",
        "Indicates if SSL was used for the final redirect",
        flag(http.is_some() && response.tls.is_some()),
    );
    out.gauge(
        "probe_http_version",
        "Returns the version of HTTP of the probe response",
        http.map_or(0.0, |http| match http.version.as_str() {
            "HTTP/1.0" => 1.0,
            "HTTP/1.1" => 1.1,
            "HTTP/2" | "HTTP/2.0" => 2.0,
            _ => 0.0,
        }),
    );
    let regex_failed = response.assertions.iter().any(|assertion| {
        !assertion.passing && matches!(assertion.key, AssertionKey::Body | AssertionKey::Header)
    });
    out.gauge(
        "probe_failed_due_to_regex",
        "Indicates if probe failed due to regex",
        flag(regex_failed),
    );
}

fn write_dns(out: &mut Out, response: &ProbeResponse) {
    let timings = &response.timings;
    for (phase, seconds) in [
        ("resolve", timings.resolve),
        ("connect", timings.connect),
        ("request", timings.request),
    ] {
        out.labelled(
            "probe_dns_duration_seconds",
            "Duration of DNS request by phase",
            Some(("phase", phase)),
            seconds,
        );
    }
    let dns = response.sections.dns.as_ref();
    out.gauge(
        "probe_dns_answer_rrs",
        "Returns number of entries in the answer resource record list",
        dns.map_or(0.0, |dns| dns.answers.len() as f64),
    );
    out.gauge(
        "probe_dns_authority_rrs",
        "Returns number of entries in the authority resource record list",
        dns.map_or(0.0, |dns| dns.authorities as f64),
    );
    out.gauge(
        "probe_dns_additional_rrs",
        "Returns number of entries in the additional resource record list",
        dns.map_or(0.0, |dns| dns.additionals as f64),
    );
    out.gauge(
        "probe_dns_query_succeeded",
        "Displays whether or not the query was executed successfully",
        flag(dns.is_some()),
    );
    // `name ttl class SOA mname rname serial refresh retry expire minimum`
    let serial = dns.and_then(|dns| {
        dns.answers.iter().find_map(|answer| {
            let fields: Vec<&str> = answer.split_whitespace().collect();
            (fields.get(3) == Some(&"SOA"))
                .then(|| fields.get(6).and_then(|serial| serial.parse::<f64>().ok()))
                .flatten()
        })
    });
    if let Some(serial) = serial {
        out.gauge(
            "probe_dns_serial",
            "Returns the serial number of the zone",
            serial,
        );
    }
}

/// grpc.health.v1's serving statuses, as blackbox_exporter labels them.
const SERVING_STATUSES: [&str; 4] = ["UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN"];

fn write_grpc(out: &mut Out, response: &ProbeResponse) {
    let timings = &response.timings;
    for (phase, seconds) in [
        ("resolve", timings.resolve),
        ("check", (timings.total - timings.resolve).max(0.0)),
    ] {
        out.labelled(
            "probe_grpc_duration_seconds",
            "Duration of gRPC request by phase",
            Some(("phase", phase)),
            seconds,
        );
    }
    let grpc = response.sections.grpc.as_ref();
    for status in SERVING_STATUSES {
        out.labelled(
            "probe_grpc_healthcheck_response",
            "Response HealthCheck response",
            Some(("serving_status", status)),
            flag(grpc.is_some_and(|grpc| grpc.status == status)),
        );
    }
    out.gauge(
        "probe_grpc_ssl",
        "Indicates if SSL was used for the connection",
        flag(grpc.is_some() && response.tls.is_some()),
    );
    out.gauge(
        "probe_grpc_status_code",
        "Response gRPC status code",
        grpc.map_or(0.0, |grpc| f64::from(grpc.grpc_status)),
    );
    if response.tls.is_none() {
        // blackbox_exporter's grpc prober always has it: 0 without TLS.
        out.gauge(
            "probe_ssl_earliest_cert_expiry",
            "Returns last SSL chain expiry in unixtime",
            0.0,
        );
    }
}

/// `&debug=true`: what happened, the series, the result and the check that ran.
fn debug_output(prepared: &Prepared, result: &CheckResult, metrics: &str) -> String {
    let mut text = String::from("Logs for the probe:\n");
    let scrape = prepared
        .scrape_header
        .as_deref()
        .map_or("none sent".to_string(), |seconds| format!("{seconds}s"));
    let _ = writeln!(
        text,
        "module={} prober={} target={} timeout={:.3}s (module timeout {}, scrape timeout {scrape}, offset {}s)",
        prepared.module_name,
        prepared.module.prober,
        prepared.target,
        prepared.timeout.as_secs_f64(),
        prepared
            .module
            .timeout
            .map_or("none".to_string(), |t| humantime::format_duration(t).to_string()),
        TIMEOUT_OFFSET.as_secs_f64(),
    );
    let _ = writeln!(
        text,
        "instances={} probed={}",
        if prepared.all_instances {
            "all"
        } else {
            "first"
        },
        result.responses.len()
    );
    for response in &result.responses {
        let t = &response.timings;
        let _ = writeln!(
            text,
            "instance={} passing={} total={:.6}s resolve={:.6}s connect={:.6}s tls={:.6}s",
            response.target, response.passing, t.total, t.resolve, t.connect, t.tls
        );
        if let Some(error) = &response.error {
            let _ = writeln!(
                text,
                "instance={} error kind={} message={:?}",
                response.target,
                error.kind.as_str(),
                error.message
            );
        }
        for assertion in &response.assertions {
            let _ = writeln!(
                text,
                "instance={} assertion key={} passing={}{}",
                response.target,
                crate::assertions::key_name(assertion.key),
                assertion.passing,
                assertion
                    .message
                    .as_deref()
                    .map_or(String::new(), |message| format!(" message={message:?}"))
            );
        }
    }
    let _ = writeln!(
        text,
        "probe {}",
        if result.passing {
            "succeeded"
        } else {
            "failed"
        }
    );
    text.push_str("\n\nMetrics that would have been returned:\n");
    text.push_str(metrics);
    text.push_str("\n\nResult:\n");
    let json = serde_json::to_string_pretty(result).unwrap_or_default();
    text.push_str(&json);
    text.push_str("\n\n\nCheck that ran (bastion's definition of the module for this target):\n");
    // The definition carries the secrets its files held; the debug output never shows them.
    let mut definition = prepared.definition.clone();
    if let crate::config::CheckSpec::Http(spec) = &mut definition.spec {
        spec.secrets = None;
        // Credentials written into the module's headers are as secret as those in files.
        for (name, value) in spec.headers.iter_mut() {
            if is_sensitive_header(name) {
                *value = "[redacted]".to_string();
            }
        }
    }
    text.push_str(
        &toml::to_string(&Definition {
            checks: vec![&definition],
        })
        .unwrap_or_default(),
    );
    text
}

/// Header names whose values are credentials: never shown in debug output.
fn is_sensitive_header(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    [
        "authorization",
        "proxy-authorization",
        "cookie",
        "set-cookie",
    ]
    .contains(&name.as_str())
        || ["key", "token", "secret", "password", "auth"]
            .iter()
            .any(|word| name.contains(word))
}

#[derive(serde::Serialize)]
struct Definition<'a> {
    checks: Vec<&'a crate::config::CheckConfig>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scrape_timeout_past_the_longest_check_timeout_is_honoured_up_to_it() {
        assert_eq!(
            probe_timeout(Some("700"), None),
            Ok(Duration::from_secs(600))
        );
        assert_eq!(
            probe_timeout(Some("700"), Some(Duration::from_secs(30))),
            Ok(Duration::from_secs(30))
        );
    }

    #[test]
    fn credential_headers_are_recognised() {
        for name in [
            "Authorization",
            "cookie",
            "X-Api-Key",
            "X-Auth-Token",
            "Proxy-Authorization",
        ] {
            assert!(is_sensitive_header(name), "{name}");
        }
        for name in ["Accept", "User-Agent", "Host", "X-Request-Id"] {
            assert!(!is_sensitive_header(name), "{name}");
        }
    }

    #[test]
    fn the_timeout_follows_blackbox_exporter() {
        let five = Some(Duration::from_secs(5));
        assert_eq!(probe_timeout(Some("10"), five), Ok(Duration::from_secs(5)));
        assert_eq!(
            probe_timeout(Some("3"), five),
            Ok(Duration::from_millis(2500))
        );
        assert_eq!(
            probe_timeout(None, None),
            Ok(Duration::from_millis(119_500))
        );
        assert!(probe_timeout(Some("ten"), five).is_err());
        assert!(probe_timeout(Some("0.2"), None).is_err());
        assert_eq!(
            probe_timeout(Some("0.2"), Some(Duration::from_millis(100))),
            Ok(Duration::from_millis(100))
        );
    }

    #[test]
    fn the_address_hash_is_fnv1a() {
        // Go: fnv.New32a() over "127.0.0.1"
        assert_eq!(fnv32a(""), 0x811c_9dc5);
        assert_eq!(fnv32a("a"), 0xe40c_292c);
    }
}
