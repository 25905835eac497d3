//! OAuth2 client credentials (RFC 6749 section 4.4) for HTTP probes: a token fetched from the
//! token endpoint, cached per check definition until shortly before it expires, and sent as
//! `Authorization: Bearer`. Fetching happens before the probe's first phase, so it is timed in
//! no phase and not in the total; it is bounded by half the check's timeout, and one fetch
//! serves every probe waiting for it. A failure is the `auth` error kind. The token and the
//! client secret are never logged, never put in an error message, and never cached beyond
//! their lifetime.

use super::net::{drive, error_chain};
use super::settings::{OAuth2Config, Secret, TlsSettings};
use super::tls_client::server_name;
use super::ProbeContext;
use crate::model::{ErrorKind, ProbeError};
use crate::problem::KeyPath;
use bytes::Bytes;
use http::header::{HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE, HOST, USER_AGENT};
use http::{Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::OnceCell;
use tokio::time::Instant;

/// The most of a token endpoint's answer that is read.
const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// How long a token that comes without `expires_in` is used.
pub const LIFETIME_WITHOUT_EXPIRY: Duration = Duration::from_secs(300);
/// The longest a token is used, whatever its `expires_in` says: a server that answers with a
/// huge number (or a hostile one) still sees a new token asked for daily.
pub const LONGEST_LIFETIME: Duration = Duration::from_secs(86_400);
const USER_AGENT_TEXT: &str = concat!("bastion/", env!("CARGO_PKG_VERSION"));

#[derive(Debug, thiserror::Error)]
pub enum OAuth2DefinitionError {
    #[error("oauth2.token_url `{url}` is not valid: {reason}")]
    TokenUrl { url: String, reason: String },
    #[error(
        "oauth2.token_url holds credentials; give the client's in client_id and client_secret_file"
    )]
    Credentials,
    #[error("oauth2.client_id or the client secret holds characters a header cannot carry")]
    Credential,
}

impl OAuth2DefinitionError {
    /// The key of the check this error is about.
    pub fn key(&self) -> KeyPath {
        KeyPath::dotted(match self {
            OAuth2DefinitionError::TokenUrl { .. } | OAuth2DefinitionError::Credentials => {
                "oauth2.token_url"
            }
            OAuth2DefinitionError::Credential => "oauth2.client_id",
        })
    }
}

/// A token in use: its `Authorization` value and until when it may be sent.
#[derive(Clone)]
pub struct AccessToken {
    /// `Bearer <token>`, marked sensitive.
    pub header: HeaderValue,
    /// The token alone, so that a server echoing it can be redacted from results.
    pub token: Secret,
    expires: Instant,
}

impl std::fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AccessToken(..)")
    }
}

type Fetch = Arc<OnceCell<Result<Arc<AccessToken>, ProbeError>>>;

#[derive(Debug, Default)]
struct TokenState {
    current: Option<Arc<AccessToken>>,
    /// The fetch in progress: every probe that needs a token meanwhile waits for this one.
    pending: Option<Fetch>,
}

/// The token endpoint of one check and the token it last gave.
#[derive(Debug)]
pub struct TokenSource {
    uri: Uri,
    https: bool,
    host: String,
    port: u16,
    /// What messages call the endpoint: `host:port/path`, never the query.
    shown: String,
    /// `Basic base64(client_id:client_secret)` (client_secret_basic), marked sensitive.
    client_authorization: HeaderValue,
    /// The form sent: grant_type, scope, audience (no secret in it).
    form: String,
    /// Trust for an https endpoint: the check's CA and client certificate, not its SNI name
    /// or versions, which are the target's.
    tls: TlsSettings,
    state: Mutex<TokenState>,
}

impl TokenSource {
    pub fn compile(
        config: &OAuth2Config,
        client_secret: &Secret,
        check_tls: &TlsSettings,
    ) -> Result<TokenSource, OAuth2DefinitionError> {
        let text = config.token_url.trim();
        let invalid = |reason: &str| OAuth2DefinitionError::TokenUrl {
            url: config.token_url.clone(),
            reason: reason.to_string(),
        };
        let authority_part = text.split_once("://").map_or(text, |(_, rest)| rest);
        if authority_part.split('/').next().unwrap_or("").contains('@') {
            return Err(OAuth2DefinitionError::Credentials);
        }
        let uri: Uri = text
            .parse()
            .map_err(|error: http::uri::InvalidUri| invalid(&error.to_string()))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(invalid("start it with https:// or http://")),
        };
        let authority = uri.authority().ok_or_else(|| invalid("it has no host"))?;
        let host = authority.host();
        let host = host
            .strip_prefix('[')
            .and_then(|rest| rest.strip_suffix(']'))
            .unwrap_or(host)
            .to_string();
        if host.is_empty() {
            return Err(invalid("it has no host"));
        }
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        let shown = format!("{}{}", authority.as_str(), uri.path());
        // RFC 6749 2.3.1: the id and secret are form-encoded before they are joined.
        let client_authorization = super::proxy::basic_authorization(
            &form_encode(&config.client_id),
            &form_encode(client_secret.expose()),
        )
        .ok_or(OAuth2DefinitionError::Credential)?;
        let mut form = "grant_type=client_credentials".to_string();
        if !config.scopes.is_empty() {
            form.push_str("&scope=");
            form.push_str(&form_encode(&config.scopes.join(" ")));
        }
        if let Some(audience) = &config.audience {
            form.push_str("&audience=");
            form.push_str(&form_encode(audience));
        }
        Ok(TokenSource {
            uri,
            https,
            host,
            port,
            shown,
            client_authorization,
            form,
            tls: TlsSettings {
                insecure_skip_verify: check_tls.insecure_skip_verify,
                ca_file: check_tls.ca_file.clone(),
                cert_file: check_tls.cert_file.clone(),
                key_file: check_tls.key_file.clone(),
                ..TlsSettings::default()
            },
            state: Mutex::new(TokenState::default()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, TokenState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A token that stays valid for at least `margin` more (the check's timeout, so it
    /// outlives the probe that sends it): the cached one, or a new one fetched within `limit`.
    /// Probes that need a token while one is being fetched wait for that fetch.
    pub async fn token(
        &self,
        ctx: &ProbeContext,
        margin: Duration,
        limit: Instant,
    ) -> Result<Arc<AccessToken>, ProbeError> {
        let fetch = {
            let mut state = self.lock();
            if let Some(token) = &state.current {
                if Instant::now() + margin < token.expires {
                    return Ok(Arc::clone(token));
                }
            }
            Arc::clone(state.pending.get_or_insert_with(Fetch::default))
        };
        let outcome = tokio::time::timeout_at(
            limit,
            fetch.get_or_init(|| async { self.fetch(ctx).await.map(Arc::new) }),
        )
        .await;
        let result = match outcome {
            Ok(result) => result.clone(),
            Err(_) => Err(ProbeError::new(
                ErrorKind::Auth,
                format!(
                    "the token endpoint {} gave no token in time (a token fetch may take half the check's timeout)",
                    self.shown
                ),
            )),
        };
        if fetch.initialized() {
            let mut state = self.lock();
            if state
                .pending
                .as_ref()
                .is_some_and(|pending| Arc::ptr_eq(pending, &fetch))
            {
                state.pending = None;
                if let Ok(token) = &result {
                    state.current = Some(Arc::clone(token));
                }
            }
        }
        result
    }

    fn fail(&self, message: impl std::fmt::Display) -> ProbeError {
        ProbeError::new(
            ErrorKind::Auth,
            format!("the token endpoint {}: {message}", self.shown),
        )
    }

    /// One token request on a fresh connection.
    async fn fetch(&self, ctx: &ProbeContext) -> Result<AccessToken, ProbeError> {
        let sent = Instant::now();
        let address = match self.host.parse::<IpAddr>() {
            Ok(ip) => SocketAddr::new(ip, self.port),
            Err(_) => *ctx
                .resolver
                .lookup(&self.host, self.port)
                .await
                .map_err(|error| self.fail(error.message))?
                .first()
                .ok_or_else(|| self.fail("its host has no addresses"))?,
        };
        let tcp = TcpStream::connect(address)
            .await
            .map_err(|error| self.fail(format!("connect to {address}: {error}")))?;
        let _ = tcp.set_nodelay(true);
        let request = self.request()?;
        let (status, body) = if self.https {
            let config = ctx
                .tls
                .get_with_alpn(&self.tls, &[b"http/1.1"])
                .map_err(|error| self.fail(error))?;
            let name = server_name(&self.host).map_err(|error| self.fail(error.message))?;
            let stream = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await
                .map_err(|error| self.fail(format!("TLS handshake: {}", error_chain(&error))))?;
            exchange(TokioIo::new(stream), request).await
        } else {
            exchange(TokioIo::new(tcp), request).await
        }
        .map_err(|error| self.fail(error.message))?;
        self.read_token(status, &body, sent)
    }

    fn request(&self) -> Result<Request<Full<Bytes>>, ProbeError> {
        let path = self.uri.path_and_query().map_or("/", |pq| pq.as_str());
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(path)
            .body(Full::new(Bytes::from(self.form.clone())))
            .map_err(|error| self.fail(format!("building the request: {error}")))?;
        let headers = request.headers_mut();
        let host = self
            .uri
            .authority()
            .map_or("", |authority| authority.as_str());
        headers.insert(
            HOST,
            HeaderValue::from_str(host).map_err(|error| self.fail(error))?,
        );
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
        headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
        headers.insert(USER_AGENT, HeaderValue::from_static(USER_AGENT_TEXT));
        headers.insert(AUTHORIZATION, self.client_authorization.clone());
        Ok(request)
    }

    /// The token in a 2xx JSON answer; otherwise what went wrong, with the OAuth2 `error`
    /// code when the answer has one (never its free-text description, nor the body).
    fn read_token(
        &self,
        status: http::StatusCode,
        body: &[u8],
        sent: Instant,
    ) -> Result<AccessToken, ProbeError> {
        let parsed: Option<serde_json::Value> = serde_json::from_slice(body).ok();
        if !status.is_success() {
            let code = parsed
                .as_ref()
                .and_then(|json| json.get("error"))
                .and_then(|code| code.as_str())
                .filter(|code| {
                    code.len() <= 64
                        && code
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
                })
                .map(|code| format!(" ({code})"))
                .unwrap_or_default();
            return Err(self.fail(format!("answered {}{code}", status.as_u16())));
        }
        let Some(json) = parsed.filter(serde_json::Value::is_object) else {
            return Err(self.fail("its answer is not a JSON token response"));
        };
        let token = json
            .get("access_token")
            .and_then(|token| token.as_str())
            .filter(|token| !token.is_empty())
            .ok_or_else(|| self.fail("its answer has no access_token"))?;
        if let Some(kind) = json.get("token_type").and_then(|kind| kind.as_str()) {
            if !kind.eq_ignore_ascii_case("bearer") {
                let kind: String = kind
                    .chars()
                    .filter(|c| c.is_ascii_alphanumeric())
                    .take(32)
                    .collect();
                return Err(self.fail(format!(
                    "its token_type is `{kind}`; only Bearer tokens can be sent"
                )));
            }
        }
        let lifetime = match json.get("expires_in") {
            None | Some(serde_json::Value::Null) => LIFETIME_WITHOUT_EXPIRY,
            Some(value) => value
                .as_u64()
                .or_else(|| value.as_str().and_then(|text| text.trim().parse().ok()))
                .map(|seconds| Duration::from_secs(seconds).min(LONGEST_LIFETIME))
                .ok_or_else(|| self.fail("its expires_in is not a number of seconds"))?,
        };
        let mut header = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| self.fail("its access_token holds characters a header cannot carry"))?;
        header.set_sensitive(true);
        Ok(AccessToken {
            header,
            token: Secret::new(token),
            // From when the request was sent: the token may be a little older than its answer.
            expires: sent + lifetime,
        })
    }
}

/// HTTP/1.1 to the token endpoint; the answer's status and up to 64 KiB of its body.
async fn exchange<IO>(
    io: IO,
    request: Request<Full<Bytes>>,
) -> Result<(http::StatusCode, Vec<u8>), ProbeError>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(super::net::http_error)?;
    drive(connection, async move {
        let response = sender
            .send_request(request)
            .await
            .map_err(super::net::http_error)?;
        let (head, mut body) = response.into_parts();
        let mut bytes = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(super::net::http_error)?;
            if let Ok(data) = frame.into_data() {
                if bytes.len() + data.len() > MAX_ANSWER_BYTES {
                    return Err(ProbeError::new(
                        ErrorKind::Auth,
                        format!("the answer is longer than {MAX_ANSWER_BYTES} bytes"),
                    ));
                }
                bytes.extend_from_slice(&data);
            }
        }
        Ok((head.status, bytes))
    })
    .await
}

/// application/x-www-form-urlencoded: unreserved characters as they are, the rest as %XX.
fn form_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source() -> TokenSource {
        source_at("https://auth.test/oauth/token?tenant=1")
    }

    fn source_at(token_url: &str) -> TokenSource {
        let config = OAuth2Config {
            token_url: token_url.to_string(),
            client_id: "probe id".to_string(),
            client_secret_file: "/dev/null".into(),
            scopes: vec!["read".to_string(), "health:check".to_string()],
            audience: Some("https://api.test".to_string()),
        };
        TokenSource::compile(&config, &Secret::new("s3cret&"), &TlsSettings::default()).unwrap()
    }

    #[test]
    fn the_request_is_a_client_credentials_form_with_basic_client_auth() {
        let source = source();
        assert_eq!(
            source.form,
            "grant_type=client_credentials&scope=read%20health%3Acheck&audience=https%3A%2F%2Fapi.test"
        );
        assert_eq!(source.shown, "auth.test/oauth/token");
        assert!(source.client_authorization.is_sensitive());
        use base64::Engine;
        let expected = base64::engine::general_purpose::STANDARD.encode("probe%20id:s3cret%26");
        assert_eq!(
            source.client_authorization.to_str().unwrap(),
            format!("Basic {expected}")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn answers_become_tokens_or_auth_errors_that_never_quote_them() {
        let source = source();
        let sent = Instant::now();
        let ok = br#"{"access_token":"t0ken","token_type":"bearer","expires_in":60}"#;
        let token = source.read_token(http::StatusCode::OK, ok, sent).unwrap();
        assert_eq!(token.header.to_str().unwrap(), "Bearer t0ken");
        assert_eq!(token.expires, sent + Duration::from_secs(60));
        let lasting = br#"{"access_token":"t0ken"}"#;
        let token = source
            .read_token(http::StatusCode::OK, lasting, sent)
            .unwrap();
        assert_eq!(token.expires, sent + LIFETIME_WITHOUT_EXPIRY);
        // The largest number JSON may carry here would overflow an Instant: it is capped.
        let endless = br#"{"access_token":"t0ken","expires_in":18446744073709551615}"#;
        let token = source
            .read_token(http::StatusCode::OK, endless, sent)
            .unwrap();
        assert_eq!(token.expires, sent + LONGEST_LIFETIME);
        let cases: [(u16, &[u8], &str); 5] = [
            (
                401,
                br#"{"error":"invalid_client","error_description":"secret s3cret& is wrong"}"#,
                "answered 401 (invalid_client)",
            ),
            (200, b"<html>t0ken</html>", "not a JSON token response"),
            (200, br#"{"token":"t0ken"}"#, "has no access_token"),
            (
                200,
                br#"{"access_token":"t0ken","token_type":"mac"}"#,
                "`mac`",
            ),
            (
                200,
                br#"{"access_token":"t0ken","expires_in":"soon"}"#,
                "expires_in",
            ),
        ];
        for (status, body, expected) in cases {
            let error = source
                .read_token(http::StatusCode::from_u16(status).unwrap(), body, sent)
                .unwrap_err();
            assert_eq!(error.kind, ErrorKind::Auth);
            assert!(error.message.contains(expected), "{}", error.message);
            assert!(!error.message.contains("t0ken"), "{}", error.message);
            assert!(!error.message.contains("s3cret"), "{}", error.message);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_cached_token_is_used_until_it_would_expire_during_a_probe() {
        // Nothing listens on port 1: a fetch fails at once.
        let source = source_at("http://127.0.0.1:1/token");
        let context = ProbeContext {
            resolver: Arc::new(crate::resolve::Resolver::from_servers(&[]).unwrap()),
            tls: Arc::default(),
            max_body_bytes: 1024,
            max_arrival_correction: Duration::ZERO,
        };
        let token = source
            .read_token(
                http::StatusCode::OK,
                br#"{"access_token":"first","expires_in":10}"#,
                Instant::now(),
            )
            .unwrap();
        source.lock().current = Some(Arc::new(token));
        let margin = Duration::from_secs(2);
        let limit = Instant::now() + Duration::from_secs(1);
        let cached = source.token(&context, margin, limit).await.unwrap();
        assert_eq!(cached.token.expose(), "first");
        tokio::time::advance(Duration::from_secs(7)).await;
        let cached = source
            .token(&context, margin, Instant::now() + Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(
            cached.token.expose(),
            "first",
            "8s left, more than the margin"
        );
        tokio::time::advance(Duration::from_millis(1500)).await;
        // Now it would expire within the margin: a fetch starts (refused here, so it fails as
        // an auth error), and the old token is not used.
        let refused = source
            .token(&context, margin, Instant::now() + Duration::from_secs(1))
            .await
            .unwrap_err();
        assert_eq!(refused.kind, ErrorKind::Auth, "{refused:?}");
    }
}
