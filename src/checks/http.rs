//! The HTTP(S) probe, on hyper 1 + tokio-rustls so that every phase is awaited on its own and
//! timed honestly: connect, TLS, processing (request written to response head), transfer (body).
//! Every probe opens a fresh connection and makes one attempt; there are no hidden retries, no
//! pooling and no caches between probes. The body is read up to a cap and no further.

use super::net::{drive, error_chain, http_error};
use super::series::{self, SeriesOut, SeriesSpec};
use super::tls_client::{earliest_not_after, server_name, tls_setup_error, tls_version_text};
use super::{CheckDefinitionError, CheckKind, Probe, ProbeFuture};
use super::{Phase, ProbeContext, ProbeRecord};
use crate::assertions::Observation;
use crate::config::AssertionKey;
use crate::config::CheckSpec;
use crate::config::{HttpSpec, TlsSettings};
use crate::messages::Response;
use crate::messages::{HttpDetails, TlsDetails};
use crate::model::CheckType;
use crate::model::{ErrorKind, ProbeError};
use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, HOST, LOCATION, USER_AGENT};
use http::{HeaderMap, Method, Request, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};
use tokio::net::TcpStream;

/// Redirects followed at most, when `follow_redirects` is on.
pub const MAX_REDIRECTS: u32 = 10;

const DEFAULT_USER_AGENT: &str = concat!("bastion/", env!("CARGO_PKG_VERSION"));

#[derive(Debug, thiserror::Error)]
pub enum HttpDefinitionError {
    #[error("url `{url}` is not valid: {reason}")]
    Url { url: String, reason: String },
    #[error("method `{0}` is not a valid HTTP method")]
    Method(String),
    #[error("header `{name}` is not valid: {reason}")]
    Header { name: String, reason: String },
    #[error("tls.ca_file {0} cannot be read: {1}")]
    CaFile(String, String),
    #[error("tls.ca_file and tls.insecure_skip_verify contradict each other: a CA is only used to verify; keep one")]
    CaFileWithoutVerification,
}

/// Where one request goes: the URL's parts, parsed once.
#[derive(Debug, Clone)]
struct Endpoint {
    uri: Uri,
    https: bool,
    /// Host name or IP, without IPv6 brackets.
    host: String,
    port: u16,
    /// `host[:port]` as written in the URL: the Host header.
    authority: String,
}

impl Endpoint {
    fn parse(text: &str) -> Result<Endpoint, String> {
        if !text.contains("://") {
            return Err("it has no scheme; start it with http:// or https://".to_string());
        }
        let uri: Uri = text
            .parse()
            .map_err(|error: http::uri::InvalidUri| error.to_string())?;
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            Some(other) => return Err(format!("scheme `{other}` is not http or https")),
            None => return Err("it has no scheme; start it with http:// or https://".to_string()),
        };
        let authority = uri
            .authority()
            .ok_or_else(|| "it has no host".to_string())?
            .clone();
        if authority.as_str().contains('@') {
            return Err(
                "credentials in the URL are not supported; send an Authorization header instead"
                    .to_string(),
            );
        }
        let host = authority.host();
        let host = host
            .strip_prefix('[')
            .and_then(|rest| rest.strip_suffix(']'))
            .unwrap_or(host)
            .to_string();
        if host.is_empty() {
            return Err("it has no host".to_string());
        }
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        Ok(Endpoint {
            authority: authority.as_str().to_string(),
            uri,
            https,
            host,
            port,
        })
    }

    fn same_origin(&self, other: &Endpoint) -> bool {
        self.https == other.https
            && self.host.eq_ignore_ascii_case(&other.host)
            && self.port == other.port
    }

    fn path_and_query(&self) -> &str {
        self.uri.path_and_query().map_or("/", |pq| pq.as_str())
    }
}

/// A compiled HTTP check.
#[derive(Debug)]
pub struct HttpPlan {
    endpoint: Endpoint,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
    follow_redirects: bool,
    tls: TlsSettings,
}

impl HttpPlan {
    pub fn compile(spec: &HttpSpec) -> Result<HttpPlan, HttpDefinitionError> {
        let endpoint =
            Endpoint::parse(spec.url.trim()).map_err(|reason| HttpDefinitionError::Url {
                url: spec.url.clone(),
                reason,
            })?;
        let method = Method::from_bytes(spec.method.trim().to_ascii_uppercase().as_bytes())
            .map_err(|_| HttpDefinitionError::Method(spec.method.clone()))?;
        let mut headers = HeaderMap::new();
        for (name, value) in &spec.headers {
            let header_name = HeaderName::from_bytes(name.as_bytes()).map_err(|error| {
                HttpDefinitionError::Header {
                    name: name.clone(),
                    reason: error.to_string(),
                }
            })?;
            let header_value =
                HeaderValue::from_str(value).map_err(|error| HttpDefinitionError::Header {
                    name: name.clone(),
                    reason: error.to_string(),
                })?;
            headers.append(header_name, header_value);
        }
        if spec.tls.ca_file.is_some() && spec.tls.insecure_skip_verify {
            return Err(HttpDefinitionError::CaFileWithoutVerification);
        }
        if let Some(path) = &spec.tls.ca_file {
            std::fs::metadata(path).map_err(|error| {
                HttpDefinitionError::CaFile(path.display().to_string(), error.to_string())
            })?;
        }
        Ok(HttpPlan {
            endpoint,
            method,
            headers,
            body: Bytes::from(spec.body.clone()),
            follow_redirects: spec.follow_redirects,
            tls: spec.tls.clone(),
        })
    }

    pub fn host(&self) -> &str {
        &self.endpoint.host
    }

    pub fn port(&self) -> u16 {
        self.endpoint.port
    }
}

/// What a successful HTTP probe saw.
#[derive(Debug)]
pub struct HttpOutcome {
    pub details: HttpDetails,
}

/// Probes `target` (the instance) for `plan`, recording phases in `record` as they pass, so
/// that a probe cut short by its timeout still shows where the time went.
pub async fn probe(
    ctx: &ProbeContext,
    plan: &HttpPlan,
    target: SocketAddr,
    record: &mut ProbeRecord,
) -> Result<HttpOutcome, ProbeError> {
    let mut endpoint = plan.endpoint.clone();
    let mut address = target;
    let mut method = plan.method.clone();
    let mut body = plan.body.clone();
    let mut redirects = 0;
    loop {
        let (head, body_bytes, truncated) =
            exchange_once(ctx, plan, &endpoint, address, &method, &body, record).await?;
        let status = head.status;
        if plan.follow_redirects && status.is_redirection() {
            if let Some(next) = redirect_target(&endpoint, &head.headers) {
                if redirects >= MAX_REDIRECTS {
                    return Err(ProbeError::new(
                        ErrorKind::Http,
                        format!(
                            "stopped after {MAX_REDIRECTS} redirects; the last pointed to {}",
                            next.uri
                        ),
                    ));
                }
                redirects += 1;
                if !next.same_origin(&endpoint) {
                    // A redirect to another origin leaves the instance: resolve its host anew.
                    record.begin(Phase::Resolve);
                    let addresses = ctx.resolver.lookup(&next.host, next.port).await;
                    record.end();
                    address = *addresses?.first().ok_or_else(|| {
                        ProbeError::new(
                            ErrorKind::Resolve,
                            format!("{} has no addresses", next.host),
                        )
                    })?;
                }
                if status == StatusCode::SEE_OTHER
                    || (method == Method::POST
                        && (status == StatusCode::MOVED_PERMANENTLY || status == StatusCode::FOUND))
                {
                    method = Method::GET;
                    body = Bytes::new();
                }
                endpoint = next;
                continue;
            }
        }
        return Ok(HttpOutcome {
            details: HttpDetails {
                status: status.as_u16(),
                version: version_text(head.version).to_string(),
                headers: header_map_text(&head.headers),
                body: String::from_utf8_lossy(&body_bytes).into_owned(),
                truncated,
                body_bytes: None,
                headers_truncated: false,
                redirects,
            },
        });
    }
}

/// One request on one fresh connection.
async fn exchange_once(
    ctx: &ProbeContext,
    plan: &HttpPlan,
    endpoint: &Endpoint,
    address: SocketAddr,
    method: &Method,
    body: &Bytes,
    record: &mut ProbeRecord,
) -> Result<(http::response::Parts, Vec<u8>, bool), ProbeError> {
    // TLS settings are resolved before connecting: a bad CA file fails without touching the
    // target, and building the client config never counts as a phase.
    let tls = if endpoint.https {
        let config = ctx.tls.get(&plan.tls).map_err(tls_setup_error)?;
        Some((config, server_name(&endpoint.host)?))
    } else {
        None
    };
    record.begin(Phase::Connect);
    let tcp = TcpStream::connect(address).await.map_err(|error| {
        ProbeError::new(ErrorKind::Connect, format!("connect to {address}: {error}"))
    })?;
    record.end();
    // Requests are small; do not let Nagle hold them back and inflate `processing`.
    let _ = tcp.set_nodelay(true);
    let max_body = ctx.max_body_bytes;
    if let Some((config, server_name)) = tls {
        record.begin(Phase::Tls);
        let stream = tokio_rustls::TlsConnector::from(config)
            .connect(server_name, tcp)
            .await
            .map_err(|error| {
                ProbeError::new(
                    ErrorKind::Tls,
                    format!("TLS handshake with {address}: {}", error_chain(&error)),
                )
            })?;
        record.end();
        let session = stream.get_ref().1;
        let alpn = session
            .alpn_protocol()
            .map(|protocol| String::from_utf8_lossy(protocol).into_owned());
        let h2 = alpn.as_deref() == Some("h2");
        record.tls = Some(TlsDetails {
            version: session
                .protocol_version()
                .map(tls_version_text)
                .unwrap_or_default(),
            alpn,
            earliest_cert_expiry: session
                .peer_certificates()
                .and_then(earliest_not_after)
                .map(|secs| {
                    if secs >= 0 {
                        SystemTime::UNIX_EPOCH + Duration::from_secs(secs.unsigned_abs())
                    } else {
                        SystemTime::UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
                    }
                }),
            chain: None,
        });
        let request = build_request(plan, endpoint, method, body, h2)?;
        exchange(TokioIo::new(stream), h2, request, record, max_body).await
    } else {
        let request = build_request(plan, endpoint, method, body, false)?;
        exchange(TokioIo::new(tcp), false, request, record, max_body).await
    }
}

fn build_request(
    plan: &HttpPlan,
    endpoint: &Endpoint,
    method: &Method,
    body: &Bytes,
    h2: bool,
) -> Result<Request<Full<Bytes>>, ProbeError> {
    // HTTP/1 takes the origin form plus a Host header; HTTP/2 takes the absolute URI, from which
    // hyper sends :authority.
    let uri: Uri = if h2 {
        endpoint.uri.clone()
    } else {
        endpoint
            .path_and_query()
            .parse()
            .map_err(|error| ProbeError::new(ErrorKind::Http, format!("request target: {error}")))?
    };
    let mut request = Request::builder()
        .method(method.clone())
        .uri(uri)
        .body(Full::new(body.clone()))
        .map_err(|error| {
            ProbeError::new(ErrorKind::Http, format!("building the request: {error}"))
        })?;
    let headers = request.headers_mut();
    for (name, value) in &plan.headers {
        headers.append(name.clone(), value.clone());
    }
    if !h2 && !headers.contains_key(HOST) {
        let host = HeaderValue::from_str(&endpoint.authority)
            .map_err(|error| ProbeError::new(ErrorKind::Http, format!("Host header: {error}")))?;
        headers.insert(HOST, host);
    }
    if !headers.contains_key(USER_AGENT) {
        headers.insert(USER_AGENT, HeaderValue::from_static(DEFAULT_USER_AGENT));
    }
    Ok(request)
}

async fn exchange<IO>(
    io: IO,
    h2: bool,
    request: Request<Full<Bytes>>,
    record: &mut ProbeRecord,
    max_body: usize,
) -> Result<(http::response::Parts, Vec<u8>, bool), ProbeError>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    // Processing runs from the connection being ready (after TLS) to the response head, as in
    // blackbox_exporter; the HTTP/2 connection preface and SETTINGS are part of it.
    record.begin(Phase::Processing);
    if h2 {
        let (mut sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .map_err(http_error)?;
        drive(connection, async move {
            let response = sender.send_request(request).await.map_err(http_error)?;
            read_response(response, record, max_body).await
        })
        .await
    } else {
        let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(http_error)?;
        drive(connection, async move {
            let response = sender.send_request(request).await.map_err(http_error)?;
            read_response(response, record, max_body).await
        })
        .await
    }
}

async fn read_response(
    response: hyper::Response<Incoming>,
    record: &mut ProbeRecord,
    max_body: usize,
) -> Result<(http::response::Parts, Vec<u8>, bool), ProbeError> {
    record.begin(Phase::Transfer);
    let (head, mut body) = response.into_parts();
    let mut bytes: Vec<u8> = Vec::with_capacity(max_body.min(16 * 1024));
    let mut truncated = false;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|error| {
            ProbeError::new(
                ErrorKind::Body,
                format!("reading the body: {}", error_chain(&error)),
            )
        })?;
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        let room = max_body - bytes.len();
        if data.len() > room {
            bytes.extend_from_slice(&data[..room]);
            truncated = true;
            break;
        }
        bytes.extend_from_slice(&data);
        if bytes.len() == max_body && hyper::body::Body::is_end_stream(&body) {
            break;
        }
    }
    record.end();
    Ok((head, bytes, truncated))
}

fn redirect_target(current: &Endpoint, headers: &HeaderMap) -> Option<Endpoint> {
    let location = headers.get(LOCATION)?.to_str().ok()?;
    let resolved = resolve_reference(&current.uri, location)?;
    Endpoint::parse(&resolved).ok()
}

/// Resolves a Location header against the URL it came from (RFC 3986 section 5.2).
fn resolve_reference(base: &Uri, reference: &str) -> Option<String> {
    let reference = reference.trim();
    let reference = reference.split('#').next().unwrap_or_default();
    if reference.contains("://") {
        return Some(reference.to_string());
    }
    let scheme = base.scheme_str()?;
    let authority = base.authority()?.as_str();
    if let Some(rest) = reference.strip_prefix("//") {
        return Some(format!("{scheme}://{rest}"));
    }
    let (reference_path, query) = match reference.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (reference, None),
    };
    let path = if reference_path.is_empty() {
        base.path().to_string()
    } else if reference_path.starts_with('/') {
        remove_dot_segments(reference_path)
    } else {
        let base_path = base.path();
        let directory = &base_path[..base_path.rfind('/').map_or(0, |slash| slash + 1)];
        remove_dot_segments(&format!("{directory}{reference_path}"))
    };
    let query = match (query, reference_path.is_empty()) {
        (Some(query), _) => Some(query.to_string()),
        (None, true) => base.query().map(str::to_string),
        (None, false) => None,
    };
    Some(match query {
        Some(query) => format!("{scheme}://{authority}{path}?{query}"),
        None => format!("{scheme}://{authority}{path}"),
    })
}

fn remove_dot_segments(path: &str) -> String {
    let mut output: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path.split('/').collect();
    let last = segments.len().saturating_sub(1);
    for (index, segment) in segments.iter().enumerate() {
        match *segment {
            "." => {
                if index == last {
                    output.push("");
                }
            }
            ".." => {
                if output.len() > 1 {
                    output.pop();
                }
                if index == last {
                    output.push("");
                }
            }
            other => output.push(other),
        }
    }
    let joined = output.join("/");
    if joined.starts_with('/') {
        joined
    } else {
        format!("/{joined}")
    }
}

fn version_text(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/?",
    }
}

fn header_map_text(headers: &HeaderMap) -> BTreeMap<String, String> {
    let mut map: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in headers {
        let value = String::from_utf8_lossy(value.as_bytes());
        map.entry(name.as_str().to_string())
            .and_modify(|joined| {
                joined.push_str(", ");
                joined.push_str(&value);
            })
            .or_insert_with(|| value.into_owned());
    }
    map
}

/// The `http` check type, registered in `checks::KINDS`.
pub const KIND: CheckKind = CheckKind {
    check_type: CheckType::Http,
    assertion_keys: &[
        AssertionKey::Code,
        AssertionKey::Header,
        AssertionKey::Body,
        AssertionKey::Json,
    ],
    compile: compile_spec,
    judge,
    series: &[
        SeriesSpec {
            name: "probe_http_status_code",
            help: "Status code of the last HTTP response of the instance (0 when none arrived)",
        },
        SeriesSpec {
            name: "probe_http_duration_seconds",
            help: "Duration of each phase of the last HTTP probe of the instance",
        },
    ],
    write_series,
};

fn compile_spec(
    spec: &CheckSpec,
    _timeout: Duration,
) -> Result<Box<dyn Probe>, CheckDefinitionError> {
    let CheckSpec::Http(spec) = spec else {
        return Err(CheckDefinitionError::wrong_spec(CheckType::Http, spec));
    };
    let plan = HttpPlan::compile(spec).map_err(CheckDefinitionError::spec)?;
    Ok(Box::new(plan))
}

impl Probe for HttpPlan {
    fn host_and_port(&self) -> (&str, u16) {
        (self.host(), self.port())
    }

    fn probe<'a>(
        &'a self,
        context: &'a ProbeContext,
        target: SocketAddr,
        _deadline: tokio::time::Instant,
        record: &'a mut ProbeRecord,
    ) -> ProbeFuture<'a> {
        Box::pin(async move {
            let outcome = probe(context, self, target, record).await?;
            record.http = Some(outcome.details);
            Ok(())
        })
    }
}

/// The status, headers and body for assertions; without them, a 2xx status passes.
fn judge<'a>(response: &'a Response, observation: &mut Observation<'a>) -> Option<bool> {
    let http = response.http.as_ref()?;
    observation.status = Some(http.status);
    observation.headers = Some(&http.headers);
    observation.body = &http.body;
    Some((200..300).contains(&http.status))
}

fn write_series(response: &Response, out: &mut dyn SeriesOut) {
    let status = response
        .http
        .as_ref()
        .map_or(0.0, |http| f64::from(http.status));
    out.gauge("probe_http_status_code", None, status);
    series::write_phases(
        out,
        "probe_http_duration_seconds",
        &response.timings,
        &[
            ("resolve", series::resolve),
            ("connect", series::connect),
            ("tls", series::tls),
            ("processing", series::processing),
            ("transfer", |timings| timings.transfer),
        ],
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn location_resolution_follows_rfc_3986() {
        let base: Uri = "http://a/b/c/d;p?q".parse().unwrap();
        // The normal examples of RFC 3986 section 5.4.1 that apply to Location headers.
        let cases = [
            ("g", "http://a/b/c/g"),
            ("./g", "http://a/b/c/g"),
            ("g/", "http://a/b/c/g/"),
            ("/g", "http://a/g"),
            ("//g", "http://g"),
            ("?y", "http://a/b/c/d;p?y"),
            ("g?y", "http://a/b/c/g?y"),
            ("#s", "http://a/b/c/d;p?q"),
            ("", "http://a/b/c/d;p?q"),
            (".", "http://a/b/c/"),
            ("./", "http://a/b/c/"),
            ("..", "http://a/b/"),
            ("../", "http://a/b/"),
            ("../g", "http://a/b/g"),
            ("../..", "http://a/"),
            ("../../g", "http://a/g"),
            ("https://other:8443/x", "https://other:8443/x"),
        ];
        for (reference, expected) in cases {
            assert_eq!(
                resolve_reference(&base, reference).as_deref(),
                Some(expected),
                "{reference}"
            );
        }
    }

    #[test]
    fn urls_are_checked() {
        let bad = [
            ("ftp://host/", "scheme `ftp` is not http or https"),
            ("host/path", "it has no scheme"),
            (
                "http://user:pw@host/",
                "credentials in the URL are not supported",
            ),
        ];
        for (url, expected) in bad {
            let error = Endpoint::parse(url).unwrap_err();
            assert!(error.contains(expected), "{url}: {error}");
        }
        let endpoint = Endpoint::parse("https://[::1]:8443/x?y").unwrap();
        assert_eq!((endpoint.host.as_str(), endpoint.port), ("::1", 8443));
        assert_eq!(endpoint.authority, "[::1]:8443");
        assert_eq!(endpoint.path_and_query(), "/x?y");
        let endpoint = Endpoint::parse("http://svc.internal").unwrap();
        assert_eq!((endpoint.port, endpoint.path_and_query()), (80, "/"));
    }

    #[test]
    fn repeated_headers_are_joined() {
        let mut headers = HeaderMap::new();
        headers.append("Set-Cookie", HeaderValue::from_static("a=1"));
        headers.append("set-cookie", HeaderValue::from_static("b=2"));
        headers.append("Content-Type", HeaderValue::from_static("text/plain"));
        let text = header_map_text(&headers);
        assert_eq!(text["set-cookie"], "a=1, b=2");
        assert_eq!(text["content-type"], "text/plain");
    }
}
