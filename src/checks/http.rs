//! The HTTP(S) probe, on hyper 1 + tokio-rustls so that every phase is awaited on its own and
//! timed honestly: connect, proxy (the CONNECT tunnel, through a proxy), TLS, processing
//! (request written to response head), transfer (body). Every probe opens a fresh connection
//! and makes one attempt; there are no hidden retries, no pooling and no caches between probes
//! (an OAuth2 token, fetched before the first phase, is the one thing kept). The body is read
//! up to a cap and no further. Credentials (from files, OAuth2) go only to the URL's own
//! origin, and what the server echoes of them is redacted from the result.

use super::arrival::{Arrivals, StampedStream};
use super::net::{connect_tcp, drive, error_chain, http_error};
use super::oauth2::{AccessToken, OAuth2DefinitionError, TokenSource};
use super::proxy::{basic_authorization, ProxyDefinitionError, ProxyPlan};
use super::response::Response;
use super::response::{Headers, HttpDetails};
use super::series::{self, SeriesOut, SeriesSpec};
use super::settings::default_true;
use super::settings::is_true;
use super::settings::read_line_secret;
use super::settings::read_text;
use super::settings::BasicAuth;
use super::settings::HttpSecrets;
use super::settings::OAuth2Config;
use super::settings::TlsSettings;
use super::settings::{Compression, Secret};
use super::tls_client::{
    handshake, server_name, tls_setup_error, TlsKeys, TlsTarget, TlsTargetError,
};
use super::AssertionKey;
use super::Observation;
use super::{CheckKind, Probe, ProbeFuture};
use super::{Phase, ProbeContext, ProbeRecord};
use crate::checks::CheckType;
use crate::model::{ErrorKind, ProbeError};
use crate::problem::Entry;
use crate::problem::KeyPath;
use crate::problem::Problem;
use crate::problem::Problems;
use bytes::Bytes;
use http::header::{
    HeaderName, HeaderValue, ACCEPT_ENCODING, AUTHORIZATION, CONTENT_ENCODING, HOST, LOCATION,
    PROXY_AUTHORIZATION, USER_AGENT,
};
use http::{HeaderMap, Method, Request, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tokio::time::Instant;

/// Settings of a `type = "http"` check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpSpec {
    /// `http://` or `https://` URL. Its host is resolved, and sent as Host and TLS SNI.
    pub url: String,
    /// Request method. Default: GET.
    #[serde(default = "default_method")]
    pub method: String,
    /// Extra request headers.
    #[schemars(extend("default" = {}))]
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Request body.
    #[schemars(extend("default" = ""))]
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub body: String,
    /// Follow up to 10 redirects. Default: false, so a 3xx is reported as it is.
    #[serde(default)]
    pub follow_redirects: bool,
    /// TLS settings for https URLs (`[checks.tls]`).
    #[schemars(extend("default" = {}))]
    #[serde(default, skip_serializing_if = "TlsSettings::is_default")]
    pub tls: TlsSettings,
    /// The local address the probe's connections leave from (`10.0.0.7`, `::1`). Default: the
    /// system's choice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_ip: Option<std::net::IpAddr>,
    /// Request headers whose values are read from files at load and reload, by header name
    /// (`{ Authorization = "/etc/bastion/token" }`): each file's first line.
    #[schemars(extend("default" = {}))]
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers_from_files: BTreeMap<String, PathBuf>,
    /// File whose content is the request body, read at load and reload; instead of `body`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_file: Option<PathBuf>,
    /// File holding a token sent as `Authorization: Bearer <token>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bearer_token_file: Option<PathBuf>,
    /// HTTP basic auth, the password read from a file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basic_auth: Option<Box<BasicAuth>>,
    /// OAuth2 client credentials: a token fetched (and cached) before the probe, sent as
    /// `Authorization: Bearer <token>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oauth2: Option<Box<OAuth2Config>>,
    /// An `http://host:port` proxy: https targets are reached through a CONNECT tunnel,
    /// http targets by forwarding. Default: none (connect directly).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_url: Option<String>,
    /// Hosts reached directly instead of through `proxy_url`: a name (and its subdomains),
    /// `.domain`, an IP, a CIDR block (matched against the instance), or `*`.
    #[schemars(extend("default" = []))]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub no_proxy: Vec<String>,
    /// Credentials for `proxy_url`, sent as `Proxy-Authorization: Basic`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_basic_auth: Option<Box<BasicAuth>>,
    /// Status codes that pass (`[200, 204, 404]`) instead of any 2xx; a status outside the
    /// list is an `http` error, whatever the assertions say. Default: any 2xx.
    #[schemars(extend("default" = []))]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub valid_status_codes: Vec<u16>,
    /// HTTP versions the final response may come over (`HTTP/1.0`, `HTTP/1.1`, `HTTP/2`);
    /// another is an `http` error. Default: any.
    #[schemars(extend("default" = []))]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub valid_http_versions: Vec<String>,
    /// Fail when the final response (after redirects) came over TLS. Default: false.
    #[schemars(extend("default" = false))]
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fail_if_ssl: bool,
    /// Fail when the final response (after redirects) did not come over TLS. Default: false.
    #[schemars(extend("default" = false))]
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fail_if_not_ssl: bool,
    /// Ask for this content coding (`gzip`, `deflate`, `br`, `zstd`) and decode the body
    /// before judging it, up to `runner.max_body_bytes` decoded. Default: none (the body is
    /// judged as it comes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression: Option<Compression>,
    /// Offer HTTP/2 by ALPN to https URLs. false: HTTP/1.1 only. Default: true.
    #[schemars(extend("default" = default_true()))]
    #[serde(default = "default_true", skip_serializing_if = "is_true")]
    pub enable_http2: bool,
    /// What the `*_file` keys held when the config was loaded; filled in by bastion, never
    /// written in a config file. None when there are none, as for most checks: the set takes
    /// 144 bytes, and every check definition is kept for as long as the check exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(skip)]
    pub secrets: Option<Box<HttpSecrets>>,
}

impl HttpSpec {
    /// What the `*_file` keys held (see `secrets`), empty when none.
    pub fn secrets(&self) -> &HttpSecrets {
        static NONE: HttpSecrets = HttpSecrets::NONE;
        self.secrets.as_deref().unwrap_or(&NONE)
    }
}

fn default_method() -> String {
    "GET".to_string()
}

/// Reads every secret file of one HTTP check into its `secrets`, reporting each file that
/// cannot be read at the key naming it.
pub fn read_secrets(entry: &Entry, spec: &mut HttpSpec, problems: &mut Problems) {
    if !spec.secrets().is_empty() {
        problems.push(entry.problem(
            "secrets",
            "secrets is filled in by bastion from the *_file keys; remove it",
        ));
    }
    let mut secrets = HttpSecrets::default();
    // A file that cannot be read is reported here; an empty stand-in keeps the definition
    // whole, so compiling it adds no second message about the same file.
    let mut note = |key: KeyPath, outcome: Result<Secret, String>| -> Option<Secret> {
        Some(outcome.unwrap_or_else(|message| {
            problems.push(Problem::at(
                entry.path.clone().join(key),
                format!("{}: {message}", entry.subject),
            ));
            Secret::default()
        }))
    };
    for (header, path) in &spec.headers_from_files {
        let key = KeyPath::dotted("headers_from_files").key(header.as_str());
        if let Some(value) = note(
            key,
            read_line_secret(&format!("headers_from_files.{header}"), path),
        ) {
            secrets.headers.insert(header.clone(), value);
        }
    }
    if let Some(path) = &spec.body_file {
        // A body is sent exactly as the file holds it, final newline included.
        secrets.body = note(
            KeyPath::dotted("body_file"),
            read_text("body_file", path).map(Secret::new),
        );
    }
    if let Some(path) = &spec.bearer_token_file {
        secrets.bearer_token = note(
            KeyPath::dotted("bearer_token_file"),
            read_line_secret("bearer_token_file", path),
        );
    }
    if let Some(auth) = &spec.basic_auth {
        let key = "basic_auth.password_file";
        secrets.basic_password = note(
            KeyPath::dotted(key),
            read_line_secret(key, &auth.password_file),
        );
    }
    if let Some(auth) = &spec.proxy_basic_auth {
        let key = "proxy_basic_auth.password_file";
        secrets.proxy_password = note(
            KeyPath::dotted(key),
            read_line_secret(key, &auth.password_file),
        );
    }
    if let Some(oauth2) = &spec.oauth2 {
        let key = "oauth2.client_secret_file";
        secrets.oauth2_client_secret = note(
            KeyPath::dotted(key),
            read_line_secret(key, &oauth2.client_secret_file),
        );
    }
    spec.secrets = (!secrets.is_empty()).then(|| Box::new(secrets));
}

/// Redirects followed at most, when `follow_redirects` is on.
pub const MAX_REDIRECTS: u32 = 10;

const DEFAULT_USER_AGENT: &str = concat!("bastion/", env!("CARGO_PKG_VERSION"));

/// What stands in a result where a secret was.
const REDACTED: &str = "[redacted]";

/// The shortest `body_file` content searched for in results (credentials of any length are).
const MIN_REDACTED_BODY: usize = 8;

/// A request body (or all its headers) longer than this makes its check worth keeping compiled:
/// copying it at every run would cost more than keeping it.
const KEPT_BODY_BYTES: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum HttpDefinitionError {
    #[error("url `{url}` is not valid: {reason}")]
    Url { url: String, reason: String },
    #[error("method `{0}` is not a valid HTTP method")]
    Method(String),
    #[error("header `{name}` is not valid: {reason}")]
    Header { name: String, reason: String },
    #[error("{0}")]
    Tls(#[from] TlsTargetError),
    #[error("{0}")]
    Proxy(#[from] ProxyDefinitionError),
    #[error("{0}")]
    OAuth2(#[from] OAuth2DefinitionError),
    #[error("{0} and {1} both set the Authorization header; keep one")]
    TwoAuthorizations(String, String),
    #[error("headers_from_files.{0} is also in headers; keep one")]
    HeaderTwice(String),
    #[error("body and body_file are both set; keep one")]
    TwoBodies,
    #[error("{0}: its file was not read into the check definition; the config loader reads it (is the agent that scheduled this check older than this runner?)")]
    SecretMissing(String),
    #[error("{0}: the file's first line is not a valid header value")]
    SecretHeader(String),
    #[error("{0}.username holds a `:`, which basic auth cannot carry in a user name")]
    UsernameColon(&'static str),
    #[error("valid_status_codes: {0} is not a status code (100 to 599)")]
    StatusCode(u16),
    #[error("valid_http_versions: `{0}` is not HTTP/1.0, HTTP/1.1 or HTTP/2")]
    HttpVersion(String),
    #[error("fail_if_ssl and fail_if_not_ssl are both set, so every response fails; keep one")]
    SslBothWays,
    #[error("valid_http_versions lists only HTTP/2, but enable_http2 is false; allow HTTP/1.1 or enable HTTP/2")]
    Http2Disabled,
}

impl super::SpecError for HttpDefinitionError {
    fn key(&self) -> KeyPath {
        match self {
            HttpDefinitionError::Url { .. } => KeyPath::dotted("url"),
            HttpDefinitionError::Method(_) => KeyPath::dotted("method"),
            HttpDefinitionError::Header { name, .. } => KeyPath::dotted("headers").key(name),
            HttpDefinitionError::Tls(error) => error.key(),
            HttpDefinitionError::Proxy(error) => error.key(),
            HttpDefinitionError::OAuth2(error) => error.key(),
            HttpDefinitionError::TwoAuthorizations(key, _)
            | HttpDefinitionError::SecretMissing(key)
            | HttpDefinitionError::SecretHeader(key) => KeyPath::dotted(key),
            HttpDefinitionError::UsernameColon(key) => KeyPath::dotted(key).key("username"),
            HttpDefinitionError::HeaderTwice(name) => {
                KeyPath::dotted("headers_from_files").key(name)
            }
            HttpDefinitionError::TwoBodies => KeyPath::dotted("body"),
            HttpDefinitionError::StatusCode(_) => KeyPath::dotted("valid_status_codes"),
            HttpDefinitionError::HttpVersion(_) | HttpDefinitionError::Http2Disabled => {
                KeyPath::dotted("valid_http_versions")
            }
            HttpDefinitionError::SslBothWays => KeyPath::dotted("fail_if_ssl"),
        }
    }
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
    /// `headers`: sent on every request, redirects included.
    headers: HeaderMap,
    /// Headers that carry credentials (`headers_from_files`, `bearer_token_file`,
    /// `basic_auth`), marked sensitive: sent only to the URL's own origin. None when there
    /// are none, as for most checks: a runner may keep thousands of compiled checks.
    credential_headers: Option<Box<HeaderMap>>,
    body: Bytes,
    follow_redirects: bool,
    /// TLS for the URL's origin (its `tls.server_name`, if any, applies to it alone).
    tls: TlsTarget,
    /// Boxed, as `oauth2`: most checks have neither, and a kept plan stays small (issue 20).
    proxy: Option<Box<ProxyPlan>>,
    oauth2: Option<Box<TokenSource>>,
    /// Secrets the check sends, which a result must never show (a server may echo them).
    secrets: Vec<String>,
    /// The check's timeout: a token must stay valid for this long to be sent.
    timeout: Duration,
    /// `valid_status_codes`; empty: any 2xx.
    valid_status_codes: Vec<u16>,
    /// `valid_http_versions`; empty: any.
    valid_http_versions: Vec<Version>,
    fail_if_ssl: bool,
    fail_if_not_ssl: bool,
    /// ALPN offered to https URLs: h2 and http/1.1, or http/1.1 alone.
    alpn: &'static [&'static [u8]],
    /// `compression`: the coding asked for and decoded.
    compression: Option<Compression>,
    /// `source_ip`: where the probe's connections leave from.
    source_ip: Option<std::net::IpAddr>,
}

impl HttpPlan {
    pub fn compile(spec: &HttpSpec, timeout: Duration) -> Result<HttpPlan, HttpDefinitionError> {
        let endpoint =
            Endpoint::parse(spec.url.trim()).map_err(|reason| HttpDefinitionError::Url {
                url: spec.url.clone(),
                reason,
            })?;
        let method = Method::from_bytes(spec.method.trim().to_ascii_uppercase().as_bytes())
            .map_err(|_| HttpDefinitionError::Method(spec.method.clone()))?;
        let mut headers = HeaderMap::new();
        for (name, value) in &spec.headers {
            let header_name = header_name(name)?;
            let header_value =
                HeaderValue::from_str(value).map_err(|error| HttpDefinitionError::Header {
                    name: name.clone(),
                    reason: error.to_string(),
                })?;
            headers.append(header_name, header_value);
        }
        let (credential_headers, secrets) = credentials(spec, &headers)?;
        let body = match (&spec.body_file, spec.body.is_empty()) {
            (Some(_), false) => return Err(HttpDefinitionError::TwoBodies),
            (Some(_), true) => Bytes::from(
                secret_of(&spec.secrets().body, "body_file")?
                    .expose()
                    .to_string(),
            ),
            (None, _) => Bytes::from(spec.body.clone()),
        };
        let tls = TlsTarget::compile(
            TlsKeys {
                table: Some(&spec.tls),
                ..TlsKeys::default()
            },
            &endpoint.host,
        )?
        .ok_or(TlsTargetError::TlsSettingWithoutTls("tls"))?;
        let proxy = match &spec.proxy_url {
            Some(url) => {
                let credentials = match &spec.proxy_basic_auth {
                    Some(auth) if auth.username.contains(':') => {
                        return Err(HttpDefinitionError::UsernameColon("proxy_basic_auth"))
                    }
                    Some(auth) => Some((
                        auth.username.as_str(),
                        secret_of(
                            &spec.secrets().proxy_password,
                            "proxy_basic_auth.password_file",
                        )?,
                    )),
                    None => None,
                };
                Some(Box::new(ProxyPlan::compile(
                    url,
                    &spec.no_proxy,
                    credentials,
                )?))
            }
            None => {
                if !spec.no_proxy.is_empty() {
                    return Err(ProxyDefinitionError::WithoutProxy("no_proxy").into());
                }
                if spec.proxy_basic_auth.is_some() {
                    return Err(ProxyDefinitionError::WithoutProxy("proxy_basic_auth").into());
                }
                None
            }
        };
        let oauth2 = match &spec.oauth2 {
            Some(config) => Some(Box::new(TokenSource::compile(
                config,
                secret_of(
                    &spec.secrets().oauth2_client_secret,
                    "oauth2.client_secret_file",
                )?,
                &spec.tls,
            )?)),
            None => None,
        };
        let mut secrets = secrets;
        if let Some(auth) = &spec.proxy_basic_auth {
            if let Some(password) = &spec.secrets().proxy_password {
                secrets.push(password.expose().to_string());
                if let Some(value) = basic_authorization(&auth.username, password.expose()) {
                    secrets.push(credential_of(&value));
                }
            }
        }
        if let Some(secret) = &spec.secrets().oauth2_client_secret {
            secrets.push(secret.expose().to_string());
        }
        // A body file is redacted where it is long enough to hold a secret: a short one (`{}`,
        // `ping`) would erase ordinary answers that happen to contain it.
        if let Some(body) = &spec.secrets().body {
            if body.expose().trim().len() >= MIN_REDACTED_BODY {
                secrets.push(body.expose().to_string());
            }
        }
        if let Some(code) = spec
            .valid_status_codes
            .iter()
            .find(|code| !(100..=599).contains(*code))
        {
            return Err(HttpDefinitionError::StatusCode(*code));
        }
        let valid_http_versions = spec
            .valid_http_versions
            .iter()
            .map(|text| match text.trim().to_ascii_uppercase().as_str() {
                "HTTP/1.0" => Ok(Version::HTTP_10),
                "HTTP/1.1" => Ok(Version::HTTP_11),
                "HTTP/2" | "HTTP/2.0" => Ok(Version::HTTP_2),
                _ => Err(HttpDefinitionError::HttpVersion(text.clone())),
            })
            .collect::<Result<Vec<_>, _>>()?;
        if spec.fail_if_ssl && spec.fail_if_not_ssl {
            return Err(HttpDefinitionError::SslBothWays);
        }
        if !spec.enable_http2
            && !valid_http_versions.is_empty()
            && valid_http_versions
                .iter()
                .all(|version| *version == Version::HTTP_2)
        {
            return Err(HttpDefinitionError::Http2Disabled);
        }
        secrets.retain(|secret| !secret.trim().is_empty());
        secrets.sort_by_key(|secret| std::cmp::Reverse(secret.len()));
        secrets.dedup();
        Ok(HttpPlan {
            endpoint,
            method,
            headers,
            credential_headers: (!credential_headers.is_empty())
                .then(|| Box::new(credential_headers)),
            body,
            follow_redirects: spec.follow_redirects,
            tls,
            proxy,
            oauth2,
            secrets,
            timeout,
            valid_status_codes: spec.valid_status_codes.clone(),
            valid_http_versions,
            fail_if_ssl: spec.fail_if_ssl,
            fail_if_not_ssl: spec.fail_if_not_ssl,
            alpn: if spec.enable_http2 {
                &[b"h2", b"http/1.1"]
            } else {
                &[b"http/1.1"]
            },
            compression: spec.compression,
            source_ip: spec.source_ip,
        })
    }

    /// What the final response broke of `valid_status_codes`, `valid_http_versions`,
    /// `fail_if_ssl` and `fail_if_not_ssl`, if anything.
    fn violation(
        &self,
        details: &HttpDetails,
        version: Version,
        https: bool,
    ) -> Option<ProbeError> {
        let broken = |message: String| Some(ProbeError::new(ErrorKind::Http, message));
        if !self.valid_status_codes.is_empty() && !self.valid_status_codes.contains(&details.status)
        {
            return broken(format!(
                "the status {} is not one of valid_status_codes {:?}",
                details.status, self.valid_status_codes
            ));
        }
        if !self.valid_http_versions.is_empty() && !self.valid_http_versions.contains(&version) {
            let valid: Vec<&str> = self
                .valid_http_versions
                .iter()
                .map(|version| version_text(*version))
                .collect();
            return broken(format!(
                "the response came over {}, not one of valid_http_versions {valid:?}",
                details.version
            ));
        }
        if self.fail_if_ssl && https {
            return broken("the final response came over TLS (fail_if_ssl)".to_string());
        }
        if self.fail_if_not_ssl && !https {
            return broken(
                "the final response did not come over TLS (fail_if_not_ssl)".to_string(),
            );
        }
        None
    }

    pub fn host(&self) -> &str {
        &self.endpoint.host
    }

    pub fn port(&self) -> u16 {
        self.endpoint.port
    }

    /// Replaces every secret this probe sent (and `token`) in `text` with `[redacted]`.
    fn redact(&self, text: &mut String, token: Option<&AccessToken>) {
        if let Cow::Owned(redacted) = self.redacted(text, token) {
            *text = redacted;
        }
    }

    /// `text` with every secret replaced, borrowed when it holds none.
    fn redacted<'t>(&self, text: &'t str, token: Option<&AccessToken>) -> Cow<'t, str> {
        let token = token.map(|token| token.token.expose());
        let mut text = Cow::Borrowed(text);
        for secret in self.secrets.iter().map(String::as_str).chain(token) {
            if !secret.is_empty() && text.contains(secret) {
                text = Cow::Owned(text.replace(secret, REDACTED));
            }
        }
        text
    }

    /// Whether a response may hold a secret of this check's (one it sends, or its token).
    fn has_secrets(&self, token: Option<&AccessToken>) -> bool {
        !self.secrets.is_empty() || token.is_some()
    }
}

fn header_name(name: &str) -> Result<HeaderName, HttpDefinitionError> {
    HeaderName::from_bytes(name.as_bytes()).map_err(|error| HttpDefinitionError::Header {
        name: name.to_string(),
        reason: error.to_string(),
    })
}

/// The secret a `*_file` key was read into at load.
fn secret_of<'a>(secret: &'a Option<Secret>, key: &str) -> Result<&'a Secret, HttpDefinitionError> {
    secret
        .as_ref()
        .ok_or_else(|| HttpDefinitionError::SecretMissing(key.to_string()))
}

/// The part of `Basic xxx` or `Bearer xxx` after the scheme: what a result must not show.
fn credential_of(value: &HeaderValue) -> String {
    let text = String::from_utf8_lossy(value.as_bytes());
    text.split_once(' ')
        .map_or(text.as_ref(), |(_, credential)| credential)
        .to_string()
}

/// The headers made from secret files, and every secret text a result must not show. At
/// most one source sets Authorization.
fn credentials(
    spec: &HttpSpec,
    headers: &HeaderMap,
) -> Result<(HeaderMap, Vec<String>), HttpDefinitionError> {
    let mut credential_headers = HeaderMap::new();
    let mut secrets: Vec<String> = Vec::new();
    let mut authorization: Vec<String> = Vec::new();
    if headers.contains_key(AUTHORIZATION) {
        authorization.push("headers.Authorization".to_string());
    }
    for (name, path_key) in spec.headers_from_files.keys().map(|name| {
        let key = format!("headers_from_files.{name}");
        (name, key)
    }) {
        let header_name = header_name(name)?;
        if headers.contains_key(&header_name) {
            return Err(HttpDefinitionError::HeaderTwice(name.clone()));
        }
        if header_name == AUTHORIZATION {
            authorization.push(path_key.clone());
        }
        let secret = spec
            .secrets()
            .headers
            .get(name)
            .ok_or_else(|| HttpDefinitionError::SecretMissing(path_key.clone()))?;
        let mut value = HeaderValue::from_str(secret.expose())
            .map_err(|_| HttpDefinitionError::SecretHeader(path_key.clone()))?;
        value.set_sensitive(true);
        secrets.push(secret.expose().to_string());
        if header_name == AUTHORIZATION {
            secrets.push(credential_of(&value));
        }
        credential_headers.append(header_name, value);
    }
    if spec.bearer_token_file.is_some() {
        authorization.push("bearer_token_file".to_string());
        let token = secret_of(&spec.secrets().bearer_token, "bearer_token_file")?;
        let mut value = HeaderValue::from_str(&format!("Bearer {}", token.expose()))
            .map_err(|_| HttpDefinitionError::SecretHeader("bearer_token_file".to_string()))?;
        value.set_sensitive(true);
        secrets.push(token.expose().to_string());
        credential_headers.insert(AUTHORIZATION, value);
    }
    if let Some(auth) = &spec.basic_auth {
        if auth.username.contains(':') {
            return Err(HttpDefinitionError::UsernameColon("basic_auth"));
        }
        authorization.push("basic_auth".to_string());
        let password = secret_of(&spec.secrets().basic_password, "basic_auth.password_file")?;
        let value = basic_authorization(&auth.username, password.expose())
            .ok_or_else(|| HttpDefinitionError::SecretHeader("basic_auth".to_string()))?;
        secrets.push(password.expose().to_string());
        secrets.push(credential_of(&value));
        credential_headers.insert(AUTHORIZATION, value);
    }
    if spec.oauth2.is_some() {
        authorization.push("oauth2".to_string());
    }
    if authorization.len() > 1 {
        return Err(HttpDefinitionError::TwoAuthorizations(
            authorization[0].clone(),
            authorization[1].clone(),
        ));
    }
    Ok((credential_headers, secrets))
}

/// What an HTTP probe that got a response saw.
#[derive(Debug)]
pub struct HttpOutcome {
    pub details: HttpDetails,
    /// The response broke a condition of the check (`valid_status_codes`, ...): the probe
    /// fails with this error, and the response is still reported.
    pub violation: Option<ProbeError>,
}

/// Probes `target` (the instance) for `plan`, recording phases in `record` as they pass, so
/// that a probe cut short by its timeout still shows where the time went. `deadline` is when
/// the check's timeout ends. Nothing a result shows holds a secret the probe sent.
pub async fn probe(
    ctx: &ProbeContext,
    plan: &HttpPlan,
    target: SocketAddr,
    deadline: Instant,
    record: &mut ProbeRecord,
) -> Result<HttpOutcome, ProbeError> {
    // The OAuth2 token comes before the first phase: it is no time spent with the target, and
    // fetching it may take half the timeout at most.
    let token = match &plan.oauth2 {
        Some(source) => {
            let limit = (Instant::now() + plan.timeout / 2).min(deadline);
            Some(source.token(ctx, plan.timeout, limit).await?)
        }
        None => None,
    };
    let outcome = follow(ctx, plan, target, token.as_deref(), record).await;
    let token = token.as_deref();
    match outcome {
        Ok(mut outcome) => {
            let details = &mut outcome.details;
            plan.redact(&mut details.body, token);
            if plan.has_secrets(token) {
                details
                    .headers
                    .rewrite(|value| plan.redacted(value, token), |_, _| true);
            }
            if let Some(violation) = outcome.violation.as_mut() {
                plan.redact(&mut violation.message, token);
            }
            Ok(outcome)
        }
        Err(mut error) => {
            plan.redact(&mut error.message, token);
            Err(error)
        }
    }
}

async fn follow(
    ctx: &ProbeContext,
    plan: &HttpPlan,
    target: SocketAddr,
    token: Option<&AccessToken>,
    record: &mut ProbeRecord,
) -> Result<HttpOutcome, ProbeError> {
    let mut endpoint = plan.endpoint.clone();
    let mut address = target;
    let mut method = plan.method.clone();
    let mut body = plan.body.clone();
    let mut redirects = 0;
    loop {
        let request = RequestPlan {
            endpoint: &endpoint,
            address,
            method: &method,
            body: &body,
            token,
        };
        let (head, body_bytes, truncated) = exchange_once(ctx, plan, &request, record).await?;
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
        let details = HttpDetails {
            status: status.as_u16(),
            version: version_text(head.version).to_string(),
            headers: header_map_text(&head.headers),
            body: String::from_utf8_lossy(&body_bytes).into_owned(),
            truncated,
            body_bytes: None,
            headers_truncated: false,
            redirects,
        };
        let violation = plan.violation(&details, head.version, endpoint.https);
        return Ok(HttpOutcome { details, violation });
    }
}

/// One request of a probe: where it goes and what it carries.
struct RequestPlan<'a> {
    endpoint: &'a Endpoint,
    /// The instance (or, after a redirect to another origin, the address found for it).
    address: SocketAddr,
    method: &'a Method,
    body: &'a Bytes,
    token: Option<&'a AccessToken>,
}

/// One request on one fresh connection: directly, or through the proxy (a CONNECT tunnel for
/// https, a forwarded request for http).
async fn exchange_once(
    ctx: &ProbeContext,
    plan: &HttpPlan,
    request: &RequestPlan<'_>,
    record: &mut ProbeRecord,
) -> Result<(http::response::Parts, Vec<u8>, bool), ProbeError> {
    let endpoint = request.endpoint;
    let address = request.address;
    let own_origin = endpoint.same_origin(&plan.endpoint);
    // TLS settings are resolved before connecting: a bad CA file fails without touching the
    // target, and building the client config never counts as a phase.
    let tls = if endpoint.https {
        let config = ctx
            .tls
            .get_with_alpn(plan.tls.settings(), plan.alpn)
            .map_err(tls_setup_error)?;
        let name = if own_origin {
            plan.tls.server_name.clone()
        } else {
            server_name(&endpoint.host)?
        };
        Some((config, name))
    } else {
        None
    };
    let proxy = plan
        .proxy
        .as_deref()
        .filter(|proxy| proxy.applies(&endpoint.host, address));
    let mut tcp = match proxy {
        Some(proxy) => proxy.connect(ctx, plan.source_ip, record).await?,
        None => connect_tcp(address, plan.source_ip, record).await?,
    };
    let limits = BodyLimits {
        max_body: ctx.max_body_bytes,
        compression: plan.compression,
    };
    if let Some((config, server_name)) = tls {
        if let Some(proxy) = proxy {
            proxy.tunnel(&mut tcp, address, record).await?;
        }
        let (tcp, arrivals) = StampedStream::new(tcp, ctx.max_arrival_correction);
        let stream = handshake(config, server_name, tcp, address, record).await?;
        let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
        let built = build_request(plan, request, own_origin, h2, None)?;
        exchange(TokioIo::new(stream), h2, built, record, &arrivals, limits).await
    } else {
        // Through a proxy, plain http is forwarded: the request names the instance.
        let built = build_request(plan, request, own_origin, false, proxy)?;
        let (tcp, arrivals) = StampedStream::new(tcp, ctx.max_arrival_correction);
        exchange(TokioIo::new(tcp), false, built, record, &arrivals, limits).await
    }
}

/// How a response's body is read: up to `runner.max_body_bytes`, decoded if the check asks.
#[derive(Clone, Copy)]
struct BodyLimits {
    max_body: usize,
    compression: Option<Compression>,
}

fn build_request(
    plan: &HttpPlan,
    request: &RequestPlan<'_>,
    own_origin: bool,
    h2: bool,
    forward_through: Option<&ProxyPlan>,
) -> Result<Request<Full<Bytes>>, ProbeError> {
    let endpoint = request.endpoint;
    // HTTP/1 takes the origin form plus a Host header; HTTP/2 takes the absolute URI, from which
    // hyper sends :authority. A forwarding proxy gets the absolute form with the instance's
    // address, and the URL's host in Host.
    let uri: Uri = if h2 {
        endpoint.uri.clone()
    } else if forward_through.is_some() {
        format!("http://{}{}", request.address, endpoint.path_and_query())
            .parse()
            .map_err(|error| ProbeError::new(ErrorKind::Http, format!("request target: {error}")))?
    } else {
        endpoint
            .path_and_query()
            .parse()
            .map_err(|error| ProbeError::new(ErrorKind::Http, format!("request target: {error}")))?
    };
    let mut built = Request::builder()
        .method(request.method.clone())
        .uri(uri)
        .body(Full::new(request.body.clone()))
        .map_err(|error| {
            ProbeError::new(ErrorKind::Http, format!("building the request: {error}"))
        })?;
    let headers = built.headers_mut();
    for (name, value) in &plan.headers {
        headers.append(name.clone(), value.clone());
    }
    // Credentials go to the URL's own origin only, never to where a redirect leads.
    if own_origin {
        for (name, value) in plan.credential_headers.iter().flat_map(|own| own.iter()) {
            headers.append(name.clone(), value.clone());
        }
        if let Some(token) = request.token {
            headers.insert(AUTHORIZATION, token.header.clone());
        }
    }
    if let Some(authorization) = forward_through.and_then(ProxyPlan::authorization) {
        headers.insert(PROXY_AUTHORIZATION, authorization.clone());
    }
    if !h2 && !headers.contains_key(HOST) {
        let host = HeaderValue::from_str(&endpoint.authority)
            .map_err(|error| ProbeError::new(ErrorKind::Http, format!("Host header: {error}")))?;
        headers.insert(HOST, host);
    }
    if !headers.contains_key(USER_AGENT) {
        headers.insert(USER_AGENT, HeaderValue::from_static(DEFAULT_USER_AGENT));
    }
    if let Some(compression) = plan.compression {
        if !headers.contains_key(ACCEPT_ENCODING) {
            headers.insert(
                ACCEPT_ENCODING,
                HeaderValue::from_static(compression.as_str()),
            );
        }
    }
    Ok(built)
}

async fn exchange<IO>(
    io: IO,
    h2: bool,
    request: Request<Full<Bytes>>,
    record: &mut ProbeRecord,
    arrivals: &Arrivals,
    limits: BodyLimits,
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
        // hyper reads an HTTP/2 connection in a task of its own, which goes on reading body
        // frames (up to the flow-control window) while this one waits: its latest read says
        // nothing of when the head came, so processing ends when this task has the head.
        drive(connection, async move {
            let response = sender.send_request(request).await.map_err(http_error)?;
            read_response(response, record, None, limits).await
        })
        .await
    } else {
        let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(http_error)?;
        // HTTP/1 is read in this task: the latest read when the head is handed over is the
        // one that completed it (or one of body bytes right behind it).
        drive(connection, async move {
            let response = sender.send_request(request).await.map_err(http_error)?;
            read_response(response, record, arrivals.latest(), limits).await
        })
        .await
    }
}

/// Reads the body of `response`, whose head was complete with the read whose data arrived at
/// `head_arrived`: processing ends there, and the transfer begins, however late this task got
/// to the head (on a busy agent, milliseconds).
async fn read_response(
    response: hyper::Response<Incoming>,
    record: &mut ProbeRecord,
    head_arrived: Option<Instant>,
    BodyLimits {
        max_body,
        compression,
    }: BodyLimits,
) -> Result<(http::response::Parts, Vec<u8>, bool), ProbeError> {
    record.end_at(head_arrived);
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
    // Decoding is part of the transfer: the body is not there until it is decoded.
    if let Some(compression) = compression {
        if let Some(encoding) = content_encoding(&head.headers) {
            if encoding != compression.as_str() {
                return Err(body_error(format!(
                    "the body came with Content-Encoding `{encoding}`, not the {} that compression asked for",
                    compression.as_str()
                )));
            }
            if truncated {
                return Err(body_error(format!(
                    "the {} body is longer than runner.max_body_bytes ({max_body} bytes) before it is even decoded",
                    compression.as_str()
                )));
            }
            bytes = decode(compression, &bytes, max_body)?;
        }
    }
    record.end();
    Ok((head, bytes, truncated))
}

fn body_error(message: String) -> ProbeError {
    ProbeError::new(ErrorKind::Body, message)
}

/// The response's content coding, lowercase; None for none or `identity`.
fn content_encoding(headers: &HeaderMap) -> Option<String> {
    let codings: Vec<String> = headers
        .get_all(CONTENT_ENCODING)
        .iter()
        .flat_map(|value| {
            String::from_utf8_lossy(value.as_bytes())
                .split(',')
                .map(|coding| coding.trim().to_ascii_lowercase())
                .collect::<Vec<_>>()
        })
        .filter(|coding| !coding.is_empty() && coding != "identity")
        .collect();
    if codings.is_empty() {
        None
    } else {
        Some(codings.join(", "))
    }
}

/// The largest zstd window accepted: what RFC 9659 asks HTTP decoders to support.
const MAX_ZSTD_WINDOW: u64 = 8 * 1024 * 1024;

/// Decodes `compressed`, never holding more than `max` decoded bytes (plus one, to know that
/// there was more): a body that decodes to more is refused as a decompression bomb.
fn decode(compression: Compression, compressed: &[u8], max: usize) -> Result<Vec<u8>, ProbeError> {
    use std::io::Read;
    let name = compression.as_str();
    let limit = u64::try_from(max).unwrap_or(u64::MAX).saturating_add(1);
    let mut decoded = Vec::new();
    let read = match compression {
        Compression::Gzip => flate2::read::GzDecoder::new(compressed)
            .take(limit)
            .read_to_end(&mut decoded),
        // RFC 9110's deflate is the zlib format; some servers send raw deflate.
        Compression::Deflate if has_zlib_header(compressed) => {
            flate2::read::ZlibDecoder::new(compressed)
                .take(limit)
                .read_to_end(&mut decoded)
        }
        Compression::Deflate => flate2::read::DeflateDecoder::new(compressed)
            .take(limit)
            .read_to_end(&mut decoded),
        Compression::Br => brotli_decompressor::Decompressor::new(compressed, 4096)
            .take(limit)
            .read_to_end(&mut decoded),
        Compression::Zstd => {
            // The decoder sets aside the window the frame asks for before decoding: refuse
            // one larger than HTTP allows, or than the body may be, first.
            if let Some((window, single_segment)) = zstd_window(compressed) {
                let most = if single_segment {
                    limit
                } else {
                    MAX_ZSTD_WINDOW
                };
                if window > most {
                    return Err(body_error(format!(
                        "the zstd body asks for a {window}-byte window, more than the {most} bytes allowed; refused as a decompression bomb"
                    )));
                }
            }
            match ruzstd::decoding::StreamingDecoder::new(compressed) {
                Ok(decoder) => decoder.take(limit).read_to_end(&mut decoded),
                Err(error) => {
                    return Err(body_error(format!("decoding the zstd body: {error}")));
                }
            }
        }
    };
    read.map_err(|error| body_error(format!("decoding the {name} body: {error}")))?;
    if decoded.len() > max {
        return Err(body_error(format!(
            "the {name} body decodes to more than runner.max_body_bytes ({max} bytes); refused as a decompression bomb"
        )));
    }
    Ok(decoded)
}

fn has_zlib_header(data: &[u8]) -> bool {
    match data {
        [first, second, ..] => {
            first & 0x0F == 8 && (u16::from(*first) << 8 | u16::from(*second)) % 31 == 0
        }
        _ => false,
    }
}

/// The window a zstd frame asks for (RFC 8878 3.1.1.1), and whether it is a single segment
/// (its window is then its whole content); None when it is no zstd frame.
fn zstd_window(data: &[u8]) -> Option<(u64, bool)> {
    if data.get(..4)? != [0x28, 0xB5, 0x2F, 0xFD] {
        return None;
    }
    let descriptor = *data.get(4)?;
    if descriptor & 0x20 == 0 {
        let window = *data.get(5)?;
        let base = 1u64 << (10 + u32::from(window >> 3));
        return Some((base + base / 8 * u64::from(window & 7), false));
    }
    let dictionary_bytes = [0usize, 1, 2, 4][usize::from(descriptor & 3)];
    let size_bytes = [1usize, 2, 4, 8][usize::from(descriptor >> 6)];
    let start = 5 + dictionary_bytes;
    let field = data.get(start..start + size_bytes)?;
    let mut size = field.iter().enumerate().fold(0u64, |size, (index, byte)| {
        size | u64::from(*byte) << (8 * index)
    });
    if size_bytes == 2 {
        size += 256;
    }
    Some((size, true))
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

fn header_map_text(headers: &HeaderMap) -> Headers {
    Headers::collect(
        headers
            .iter()
            .map(|(name, value)| (name.as_str(), String::from_utf8_lossy(value.as_bytes()))),
    )
}

/// The `http` check type, listed in `checks::KINDS`.
pub const KIND: CheckKind = CheckKind {
    check_type: CheckType::Http,
    assertion_keys: &[
        AssertionKey::Code,
        AssertionKey::Header,
        AssertionKey::Body,
        AssertionKey::Json,
    ],
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
    workers_help: "Concurrent HTTP probes.",
};

impl Probe for HttpPlan {
    fn host_and_port(&self) -> (&str, u16) {
        (self.host(), self.port())
    }

    /// A plain definition compiles again in about a microsecond. Kept: an OAuth2 token (held
    /// between runs), TLS settings of its own (files read and checked, a client configuration
    /// built), a proxy (its exceptions parsed), credentials (not copied again at every run)
    /// and a body or headers past `KEPT_BODY_BYTES` or `KEPT_ENTRIES` (not parsed and copied
    /// again either).
    fn worth_keeping(&self) -> bool {
        self.oauth2.is_some()
            || !self.tls.has_default_settings()
            || self.proxy.is_some()
            || !self.secrets.is_empty()
            || self.credential_headers.is_some()
            || self.body.len() > KEPT_BODY_BYTES
            || self.headers.len() > super::KEPT_ENTRIES
            || self
                .headers
                .iter()
                .map(|(name, value)| name.as_str().len() + value.len())
                .sum::<usize>()
                > KEPT_BODY_BYTES
    }

    fn probe<'a>(
        &'a self,
        context: &'a ProbeContext,
        target: SocketAddr,
        deadline: tokio::time::Instant,
        record: &'a mut ProbeRecord,
    ) -> ProbeFuture<'a> {
        Box::pin(async move {
            let outcome = probe(context, self, target, deadline, record).await?;
            record.http = Some(outcome.details);
            outcome.violation.map_or(Ok(()), Err)
        })
    }

    /// With `valid_status_codes`, any status that raised no error is one of them.
    fn passes_by_default(&self, type_verdict: bool) -> bool {
        type_verdict || !self.valid_status_codes.is_empty()
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
    // Only probes that went through a proxy's tunnel have this phase.
    if response.timings.proxy > 0.0 {
        series::write_phases(
            out,
            "probe_http_duration_seconds",
            &response.timings,
            &[("proxy", |timings| timings.proxy)],
        );
    }
}

impl super::TypeSpec for HttpSpec {
    type Plan = HttpPlan;
    type Error = HttpDefinitionError;

    fn compile(&self, timeout: Duration) -> Result<HttpPlan, HttpDefinitionError> {
        HttpPlan::compile(self, timeout)
    }

    fn target(&self) -> String {
        self.url.clone()
    }
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
    fn zstd_windows_are_read_from_the_frame_header() {
        // Window descriptor 0x58: exponent 11, mantissa 0: 2^21 bytes.
        assert_eq!(
            zstd_window(&[0x28, 0xB5, 0x2F, 0xFD, 0x00, 0x58, 0, 0]),
            Some((2 * 1024 * 1024, false))
        );
        // 0x88: exponent 17, 2^27 bytes: more than HTTP allows.
        assert_eq!(
            zstd_window(&[0x28, 0xB5, 0x2F, 0xFD, 0x00, 0x88]),
            Some((128 * 1024 * 1024, false))
        );
        // Single segment, a 2-byte content size (value + 256).
        assert_eq!(
            zstd_window(&[0x28, 0xB5, 0x2F, 0xFD, 0x60, 0x10, 0x00]),
            Some((0x10 + 256, true))
        );
        assert_eq!(zstd_window(b"not zstd"), None);
        assert!(has_zlib_header(&[0x78, 0x9C]));
        assert!(!has_zlib_header(&[0xCB, 0x48]));
    }

    #[test]
    fn content_codings_are_read_without_identity() {
        let mut headers = HeaderMap::new();
        assert_eq!(content_encoding(&headers), None);
        headers.insert(CONTENT_ENCODING, HeaderValue::from_static("identity"));
        assert_eq!(content_encoding(&headers), None);
        headers.insert(CONTENT_ENCODING, HeaderValue::from_static(" GZip "));
        assert_eq!(content_encoding(&headers).as_deref(), Some("gzip"));
        headers.append(CONTENT_ENCODING, HeaderValue::from_static("br"));
        assert_eq!(content_encoding(&headers).as_deref(), Some("gzip, br"));
    }

    /// A runner may keep thousands of compiled checks (issue 20): what most checks leave at
    /// its default (TLS settings, credential headers) takes a pointer, not its size.
    #[test]
    fn a_compiled_http_check_keeps_its_defaults_small() {
        let size = std::mem::size_of::<HttpPlan>();
        assert!(size <= 500, "HttpPlan is {size} bytes");
        assert_eq!(std::mem::size_of::<Headers>(), 24);
        let compile = |json: &str| {
            let spec: HttpSpec = serde_json::from_str(json).unwrap();
            HttpPlan::compile(&spec, Duration::from_secs(5)).unwrap()
        };
        let plain = compile(r#"{"url": "https://svc.example/"}"#);
        assert!(plain.credential_headers.is_none());
        // A header read from a file is a credential: kept, and sent.
        let with_token = compile(
            r#"{"url": "https://svc.example/", "headers_from_files": {"x-token": "/t"},
                "secrets": {"headers": {"x-token": "abc"}}}"#,
        );
        let credentials = with_token.credential_headers.as_deref().unwrap();
        assert_eq!(credentials.get("x-token").unwrap(), "abc");
    }

    #[test]
    fn repeated_headers_are_joined() {
        let mut headers = HeaderMap::new();
        headers.append("Set-Cookie", HeaderValue::from_static("a=1"));
        headers.append("set-cookie", HeaderValue::from_static("b=2"));
        headers.append("Content-Type", HeaderValue::from_static("text/plain"));
        let text = header_map_text(&headers);
        assert_eq!(text.get("set-cookie"), Some("a=1, b=2"));
        assert_eq!(text.get("content-type"), Some("text/plain"));
        let names: Vec<&str> = text.iter().map(|(name, _)| name).collect();
        assert_eq!(names, ["content-type", "set-cookie"]);
    }
}
