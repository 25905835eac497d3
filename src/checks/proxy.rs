//! HTTP proxies for probes: which targets go through one (`no_proxy`), the connection to the
//! proxy (its name resolved in the resolve phase, the connection timed as connect), and the
//! CONNECT exchange that opens a tunnel to one instance, timed as the proxy phase. The proxy is
//! asked for the instance's address, never for a name, so instances keep their meaning. It
//! never reads past the proxy's answer and never quotes the credentials it sends.

use super::net::connect_tcp;
use super::settings::Secret;
use super::{Phase, ProbeContext, ProbeRecord};
use crate::model::{ErrorKind, ProbeError};
use crate::problem::KeyPath;
use http::header::HeaderValue;
use http::Uri;
use std::net::{IpAddr, SocketAddr};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The longest answer head a proxy may send to CONNECT.
const MAX_ANSWER_HEAD: usize = 16 * 1024;
const USER_AGENT_TEXT: &str = concat!("bastion/", env!("CARGO_PKG_VERSION"));

#[derive(Debug, thiserror::Error)]
pub enum ProxyDefinitionError {
    #[error("proxy_url `{url}` is not valid: {reason}")]
    Url { url: String, reason: String },
    #[error("proxy_url holds credentials; put them in proxy_basic_auth (its password in a file)")]
    Credentials,
    #[error("no_proxy entry `{0}` is not a host name, .domain, IP, CIDR block or *")]
    NoProxy(String),
    #[error("{0} only applies with proxy_url; set proxy_url or remove it")]
    WithoutProxy(&'static str),
    #[error("proxy_basic_auth: the user name or password holds characters a header cannot carry")]
    Credential,
}

impl ProxyDefinitionError {
    /// The key of the check this error is about.
    pub fn key(&self) -> KeyPath {
        KeyPath::dotted(match self {
            ProxyDefinitionError::Url { .. } | ProxyDefinitionError::Credentials => "proxy_url",
            ProxyDefinitionError::NoProxy(_) => "no_proxy",
            ProxyDefinitionError::WithoutProxy(key) => key,
            ProxyDefinitionError::Credential => "proxy_basic_auth",
        })
    }
}

/// One `no_proxy` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Bypass {
    All,
    /// A name and its subdomains (lowercase, no leading dot).
    Domain(String),
    Ip(IpAddr),
    Block(IpAddr, u8),
}

impl Bypass {
    fn parse(entry: &str) -> Option<Bypass> {
        let entry = entry.trim();
        if entry == "*" {
            return Some(Bypass::All);
        }
        if let Some((ip, bits)) = entry.split_once('/') {
            let ip: IpAddr = ip.parse().ok()?;
            let bits: u8 = bits.parse().ok()?;
            let most = if ip.is_ipv4() { 32 } else { 128 };
            return (bits <= most).then_some(Bypass::Block(ip, bits));
        }
        let bare = entry
            .strip_prefix('[')
            .and_then(|rest| rest.strip_suffix(']'))
            .unwrap_or(entry);
        if let Ok(ip) = bare.parse::<IpAddr>() {
            return Some(Bypass::Ip(ip));
        }
        let domain = entry.trim_start_matches("*.").trim_start_matches('.');
        let valid = !domain.is_empty()
            && domain
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'));
        valid.then(|| Bypass::Domain(domain.to_ascii_lowercase()))
    }

    fn matches(&self, host: &str, target: IpAddr) -> bool {
        match self {
            Bypass::All => true,
            Bypass::Domain(domain) => {
                let host = host.to_ascii_lowercase();
                host == *domain
                    || host
                        .strip_suffix(domain.as_str())
                        .is_some_and(|rest| rest.ends_with('.'))
            }
            Bypass::Ip(ip) => *ip == target || host.parse::<IpAddr>().ok() == Some(*ip),
            Bypass::Block(network, bits) => in_block(target, *network, *bits),
        }
    }
}

fn in_block(ip: IpAddr, network: IpAddr, bits: u8) -> bool {
    match (ip, network) {
        (IpAddr::V4(ip), IpAddr::V4(network)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(bits)).unwrap_or(0);
            u32::from(ip) & mask == u32::from(network) & mask
        }
        (IpAddr::V6(ip), IpAddr::V6(network)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0);
            u128::from(ip) & mask == u128::from(network) & mask
        }
        _ => false,
    }
}

/// A compiled `proxy_url` with its `no_proxy` list and credentials.
#[derive(Debug)]
pub struct ProxyPlan {
    /// Host name or IP, without IPv6 brackets.
    host: String,
    port: u16,
    /// `host:port`, as messages show the proxy.
    shown: String,
    /// `Proxy-Authorization`, marked sensitive.
    authorization: Option<HeaderValue>,
    bypass: Vec<Bypass>,
}

impl ProxyPlan {
    /// Compiles `proxy_url` (an `http://host[:port]` URL, port 80 by default), its
    /// `no_proxy` entries, and the user name and password of `proxy_basic_auth`.
    pub fn compile(
        url: &str,
        no_proxy: &[String],
        credentials: Option<(&str, &Secret)>,
    ) -> Result<ProxyPlan, ProxyDefinitionError> {
        let invalid = |reason: &str| ProxyDefinitionError::Url {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        let text = url.trim();
        let authority_part = text.split_once("://").map_or(text, |(_, rest)| rest);
        if authority_part.split('/').next().unwrap_or("").contains('@') {
            // Never echo it: it holds a password.
            return Err(ProxyDefinitionError::Credentials);
        }
        let uri: Uri = text
            .parse()
            .map_err(|error: http::uri::InvalidUri| invalid(&error.to_string()))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some(other) => {
                return Err(invalid(&format!(
                    "scheme `{other}` is not supported; give an http:// proxy (it tunnels https targets with CONNECT)"
                )))
            }
            None => return Err(invalid("it has no scheme; start it with http://")),
        }
        if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
            return Err(invalid("give only http://host:port, without a path"));
        }
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
        let port = authority.port_u16().unwrap_or(80);
        let bypass = no_proxy
            .iter()
            .map(|entry| {
                Bypass::parse(entry).ok_or_else(|| ProxyDefinitionError::NoProxy(entry.clone()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let authorization = match credentials {
            Some((username, password)) => Some(
                basic_authorization(username, password.expose())
                    .ok_or(ProxyDefinitionError::Credential)?,
            ),
            None => None,
        };
        Ok(ProxyPlan {
            shown: if host.contains(':') {
                format!("[{host}]:{port}")
            } else {
                format!("{host}:{port}")
            },
            host,
            port,
            authorization,
            bypass,
        })
    }

    /// Whether a request to `host` (a URL's host), made on instance `target`, goes through
    /// the proxy: unless a `no_proxy` entry matches the host or the instance's address.
    pub fn applies(&self, host: &str, target: SocketAddr) -> bool {
        !self
            .bypass
            .iter()
            .any(|bypass| bypass.matches(host, target.ip()))
    }

    /// `Proxy-Authorization` for requests forwarded through the proxy.
    pub fn authorization(&self) -> Option<&HeaderValue> {
        self.authorization.as_ref()
    }

    /// Opens a fresh connection to the proxy: its name (if it has one) resolved in the resolve
    /// phase, the connection timed as the connect phase.
    pub async fn connect(
        &self,
        ctx: &ProbeContext,
        source: Option<IpAddr>,
        record: &mut ProbeRecord,
    ) -> Result<TcpStream, ProbeError> {
        let address = match self.host.parse::<IpAddr>() {
            Ok(ip) => SocketAddr::new(ip, self.port),
            Err(_) => {
                record.begin(Phase::Resolve);
                let found = ctx.resolver.lookup(&self.host, self.port).await;
                record.end();
                let found = found.map_err(|error| {
                    ProbeError::new(
                        error.kind,
                        format!("proxy {}: {}", self.shown, error.message),
                    )
                })?;
                *found.first().ok_or_else(|| {
                    ProbeError::new(
                        ErrorKind::Resolve,
                        format!("proxy {} has no addresses", self.shown),
                    )
                })?
            }
        };
        connect_tcp(address, source, record).await.map_err(|error| {
            ProbeError::new(
                error.kind,
                format!("proxy {}: {}", self.shown, error.message),
            )
        })
    }

    /// Asks the proxy for a tunnel to `target` (CONNECT with the instance's address), timed as
    /// the proxy phase. A 2xx answer opens it; any other is a `connect` error saying what the
    /// proxy answered. It reads the answer's head and nothing more: the TLS server behind the
    /// tunnel speaks only after the client.
    pub async fn tunnel(
        &self,
        stream: &mut TcpStream,
        target: SocketAddr,
        record: &mut ProbeRecord,
    ) -> Result<(), ProbeError> {
        record.begin(Phase::Proxy);
        let fail = |message: String| {
            ProbeError::new(
                ErrorKind::Connect,
                format!("proxy {}: {message}", self.shown),
            )
        };
        let mut request = format!(
            "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nUser-Agent: {USER_AGENT_TEXT}\r\n"
        )
        .into_bytes();
        if let Some(authorization) = &self.authorization {
            request.extend_from_slice(b"Proxy-Authorization: ");
            request.extend_from_slice(authorization.as_bytes());
            request.extend_from_slice(b"\r\n");
        }
        request.extend_from_slice(b"\r\n");
        stream
            .write_all(&request)
            .await
            .map_err(|error| fail(format!("sending CONNECT {target}: {error}")))?;
        let mut head: Vec<u8> = Vec::with_capacity(256);
        let mut chunk = [0u8; 1024];
        let end = loop {
            if let Some(at) = head.windows(4).position(|window| window == b"\r\n\r\n") {
                break at + 4;
            }
            if head.len() >= MAX_ANSWER_HEAD {
                return Err(fail(format!(
                    "its answer to CONNECT has no end within {MAX_ANSWER_HEAD} bytes"
                )));
            }
            let read = stream.read(&mut chunk).await.map_err(|error| {
                fail(format!("reading the answer to CONNECT {target}: {error}"))
            })?;
            if read == 0 {
                return Err(fail(format!(
                    "closed the connection before answering CONNECT {target}"
                )));
            }
            head.extend_from_slice(&chunk[..read]);
        };
        let status_line = head
            .split(|byte| *byte == b'\r')
            .next()
            .map(|line| String::from_utf8_lossy(line).into_owned())
            .unwrap_or_default();
        let mut words = status_line.splitn(3, ' ');
        let version = words.next().unwrap_or_default();
        let code = words.next().and_then(|code| code.parse::<u16>().ok());
        let reason: String = words
            .next()
            .unwrap_or_default()
            .chars()
            .filter(|c| !c.is_control())
            .take(64)
            .collect();
        let Some(code) = code.filter(|_| version.starts_with("HTTP/1.")) else {
            return Err(fail(format!(
                "its answer to CONNECT {target} is not HTTP/1.x"
            )));
        };
        if !(200..300).contains(&code) {
            // 407 is the standard answer; some proxies (tinyproxy) answer 401 to wrong ones.
            let hint = match (code, self.authorization.is_some()) {
                (407, false) => "; the proxy wants credentials: set proxy_basic_auth",
                (401 | 407, true) => "; it refused the credentials of proxy_basic_auth",
                _ => "",
            };
            return Err(fail(format!(
                "refused CONNECT {target}: {code} {reason}{hint}"
            )));
        }
        if head.len() > end {
            return Err(fail(format!(
                "sent {} bytes after its answer to CONNECT {target}, before the TLS handshake",
                head.len() - end
            )));
        }
        record.end();
        Ok(())
    }
}

/// `Basic base64(username:password)`, marked sensitive; None when it cannot be a header value.
pub fn basic_authorization(username: &str, password: &str) -> Option<HeaderValue> {
    use base64::Engine;
    let encoded =
        base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
    let mut value = HeaderValue::from_str(&format!("Basic {encoded}")).ok()?;
    value.set_sensitive(true);
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(no_proxy: &[&str]) -> ProxyPlan {
        let entries: Vec<String> = no_proxy.iter().map(|entry| entry.to_string()).collect();
        ProxyPlan::compile("http://proxy.test:3128", &entries, None).unwrap()
    }

    #[test]
    fn no_proxy_matches_names_subdomains_ips_and_blocks() {
        let target: SocketAddr = "10.1.2.3:443".parse().unwrap();
        let elsewhere: SocketAddr = "192.0.2.1:443".parse().unwrap();
        let cases = [
            (&["internal.test"][..], "internal.test", elsewhere, false),
            (&["internal.test"], "api.internal.test", elsewhere, false),
            (&[".internal.test"], "api.internal.test", elsewhere, false),
            (&["*.internal.test"], "api.internal.test", elsewhere, false),
            (&["internal.test"], "notinternal.test", elsewhere, true),
            (&["10.0.0.0/8"], "api.example.test", target, false),
            (&["10.0.0.0/8"], "api.example.test", elsewhere, true),
            (&["10.1.2.3"], "api.example.test", target, false),
            (&["*"], "anything.test", elsewhere, false),
            (&[], "anything.test", elsewhere, true),
        ];
        for (entries, host, address, proxied) in cases {
            assert_eq!(
                plan(entries).applies(host, address),
                proxied,
                "{entries:?} {host} {address}"
            );
        }
        let v6: SocketAddr = "[fd00::5]:443".parse().unwrap();
        assert!(!plan(&["fd00::/8"]).applies("v6.test", v6));
        assert!(plan(&["fd00::/8"]).applies("v6.test", target));
    }

    #[test]
    fn proxy_urls_are_checked_without_echoing_credentials() {
        let refused = [
            ("https://proxy.test:3128", "scheme `https` is not supported"),
            ("proxy.test:3128", "not valid"),
            ("http://proxy.test:3128/path", "without a path"),
            ("socks5://proxy.test:1080", "scheme `socks5`"),
        ];
        for (url, expected) in refused {
            let error = ProxyPlan::compile(url, &[], None).unwrap_err().to_string();
            assert!(error.contains(expected), "{url}: {error}");
        }
        let error = ProxyPlan::compile("http://probe:s3cret@proxy.test:3128", &[], None)
            .unwrap_err()
            .to_string();
        assert!(!error.contains("s3cret"), "{error}");
        assert!(error.contains("proxy_basic_auth"), "{error}");
        let error = ProxyPlan::compile("http://proxy.test", &["a b".to_string()], None)
            .unwrap_err()
            .to_string();
        assert!(error.contains("no_proxy entry `a b`"), "{error}");
        let plan = ProxyPlan::compile("http://[::1]", &[], None).unwrap();
        assert_eq!(
            (plan.host.as_str(), plan.port, plan.shown.as_str()),
            ("::1", 80, "[::1]:80")
        );
    }
}
