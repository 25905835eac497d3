//! TLS client configurations for probes, built once per distinct setting and shared: loading the
//! system's roots costs milliseconds, a probe must not pay it. Verification is on by default;
//! `insecure_skip_verify` still checks handshake signatures, it only stops trusting the chain.
//! Every configuration a probe uses is made by `client_config`, which turns session resumption
//! off: a shared configuration must never carry one probe's session into the next.

use super::{Phase, ProbeContext, ProbeRecord};
use crate::problem::KeyPath;

use super::response::{CertificateDetails, TlsDetails};
use super::settings::{TlsSettings, TlsVersion};
use crate::model::{ErrorKind, ProbeError};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, Resumption, WebPkiServerVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("cannot read ca_file {path}: {reason}")]
    CaFile { path: String, reason: String },
    #[error("ca_file {0} holds no PEM certificates")]
    CaFileEmpty(String),
    #[error("no trusted root certificates: the system store is empty or unreadable ({0}); install ca-certificates or set tls.ca_file")]
    NoRoots(String),
    #[error("cannot read tls.cert_file {path}: {reason}")]
    CertFile { path: String, reason: String },
    #[error("tls.cert_file {0} holds no PEM certificates")]
    CertFileEmpty(String),
    #[error("cannot read tls.key_file {path}: {reason}; give a PEM private key (PKCS#8, PKCS#1 or SEC1)")]
    KeyFile { path: String, reason: String },
    #[error(
        "tls.key_file {key} does not belong to the certificate in tls.cert_file {cert}: {reason}"
    )]
    KeyMismatch {
        key: String,
        cert: String,
        reason: String,
    },
    #[error("tls.min_version is newer than tls.max_version; no TLS version is left to offer")]
    NoVersions,
    #[error("TLS setup failed: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("cannot build a certificate verifier: {0}")]
    Verifier(String),
}

impl TlsSetupError {
    /// The key of the check this error is about.
    pub fn key(&self) -> KeyPath {
        KeyPath::dotted(match self {
            TlsSetupError::CaFile { .. } | TlsSetupError::CaFileEmpty(_) => "tls.ca_file",
            TlsSetupError::CertFile { .. } | TlsSetupError::CertFileEmpty(_) => "tls.cert_file",
            TlsSetupError::KeyFile { .. } | TlsSetupError::KeyMismatch { .. } => "tls.key_file",
            TlsSetupError::NoVersions => "tls.min_version",
            TlsSetupError::NoRoots(_) | TlsSetupError::Rustls(_) | TlsSetupError::Verifier(_) => {
                "tls"
            }
        })
    }
}

/// What a file looked like when a configuration was built from it: a changed file (a renewed
/// client certificate, a new CA bundle) makes the next probe build the configuration again.
type FileStamps = Vec<Option<(SystemTime, u64)>>;

/// The files `settings` reads, in a fixed order.
fn files_of(settings: &TlsSettings) -> impl Iterator<Item = &std::path::Path> {
    [&settings.ca_file, &settings.cert_file, &settings.key_file]
        .into_iter()
        .filter_map(|path| path.as_deref())
}

fn stamps(settings: &TlsSettings) -> FileStamps {
    files_of(settings)
        .map(|path| {
            std::fs::metadata(path).ok().map(|meta| {
                (
                    meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                    meta.len(),
                )
            })
        })
        .collect()
}

/// A verifier over the roots of one `ca_file` (or the system's), and what its file was like.
type Verifier = (FileStamps, Arc<WebPkiServerVerifier>);

/// Distinct client configurations kept at most: a few ALPN lists (h2 and http/1.1, one of
/// them, `dot`, none) for each distinct setting.
const MAX_CLIENT_CONFIGS: usize = 4096;

/// The protocols offered by ALPN when none are named: h2, then http/1.1.
const DEFAULT_ALPN: &[&[u8]] = &[b"h2", b"http/1.1"];

/// `alpn` as rustls holds it.
fn alpn_list(alpn: &[&[u8]]) -> Vec<Vec<u8>> {
    alpn.iter().map(|protocol| protocol.to_vec()).collect()
}

/// A client configuration's key: the TLS settings (without `server_name`) and the protocols
/// it offers by ALPN.
type ConfigKey = (TlsSettings, &'static [&'static [u8]]);

/// Shared cache of client configurations, keyed by the check's TLS settings and ALPN.
#[derive(Debug, Default)]
pub struct TlsClientConfigs {
    cache: Mutex<HashMap<ConfigKey, (FileStamps, Arc<ClientConfig>)>>,
    /// Verifiers over the trusted roots, for probes that record the verdict on a chain
    /// instead of failing the handshake on it (the `tls` check type).
    verifiers: Mutex<HashMap<Option<std::path::PathBuf>, Verifier>>,
}

pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl TlsClientConfigs {
    /// The configuration for `settings`, offering h2 and http/1.1 by ALPN. Built the first
    /// time, and again only when one of its files changed (a stat of each, no read).
    pub fn get(&self, settings: &TlsSettings) -> Result<Arc<ClientConfig>, TlsSetupError> {
        self.get_with_alpn(settings, DEFAULT_ALPN)
    }

    /// The configuration for `settings`, offering `alpn` instead of h2 and http/1.1; cached
    /// as `get`'s, so an http, gRPC or DoT probe neither copies nor builds one. Another ALPN
    /// list is a copy of `get`'s configuration, so the roots are loaded once per settings.
    pub fn get_with_alpn(
        &self,
        settings: &TlsSettings,
        alpn: &'static [&'static [u8]],
    ) -> Result<Arc<ClientConfig>, TlsSetupError> {
        // The name sent as SNI is given per connection, not by the configuration: checks that
        // differ only in `server_name` share one configuration (and one load of the roots).
        let key = (
            TlsSettings {
                server_name: None,
                ..settings.clone()
            },
            alpn,
        );
        let current = stamps(&key.0);
        if let Some((built_from, config)) = self.lock().get(&key) {
            if *built_from == current {
                return Ok(config.clone());
            }
        }
        // Built outside the lock: reading files must not stall other probes. Two probes may build
        // the same config at once; the second insert wins and both are equivalent.
        let config = if alpn == DEFAULT_ALPN {
            Arc::new(build(&key.0)?)
        } else {
            let mut config = (*self.get(settings)?).clone();
            config.alpn_protocols = alpn_list(alpn);
            Arc::new(config)
        };
        let mut cache = self.lock();
        if cache.len() >= MAX_CLIENT_CONFIGS && !cache.contains_key(&key) {
            // More distinct TLS settings than any real configuration holds (each is a set of
            // files): start over rather than grow; the next probes rebuild what they use.
            cache.clear();
        }
        cache.insert(key, (current, config.clone()));
        Ok(config)
    }

    /// A verifier over the roots `settings` trust (the system's, or `ca_file`'s), built once.
    pub fn verifier(
        &self,
        settings: &TlsSettings,
    ) -> Result<Arc<WebPkiServerVerifier>, TlsSetupError> {
        let key = settings.ca_file.clone();
        let roots_only = TlsSettings {
            ca_file: key.clone(),
            ..TlsSettings::default()
        };
        let current = stamps(&roots_only);
        let cached = self
            .verifiers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(&key)
            .filter(|(built_from, _)| *built_from == current)
            .map(|(_, verifier)| Arc::clone(verifier));
        if let Some(verifier) = cached {
            return Ok(verifier);
        }
        let verifier =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots(settings)?), provider())
                .build()
                .map_err(|error| TlsSetupError::Verifier(error.to_string()))?;
        self.verifiers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(key, (current, Arc::clone(&verifier)));
        Ok(verifier)
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<ConfigKey, (FileStamps, Arc<ClientConfig>)>> {
        // A poisoned cache only means another thread panicked mid-insert; the map is still valid.
        self.cache
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn build(settings: &TlsSettings) -> Result<ClientConfig, TlsSetupError> {
    let trust = if settings.insecure_skip_verify {
        Trust::Verifier(Arc::new(AcceptAnyCertificate {
            provider: provider(),
        }))
    } else {
        Trust::Roots(roots(settings)?)
    };
    let mut config = client_config(trust, settings)?;
    config.alpn_protocols = alpn_list(DEFAULT_ALPN);
    Ok(config)
}

/// What a client configuration trusts.
pub enum Trust {
    /// Chains that lead to these roots, checked by webpki.
    Roots(RootCertStore),
    /// Whatever this verifier accepts (it still checks handshake signatures).
    Verifier(Arc<dyn ServerCertVerifier>),
}

/// The one place a probe's client configuration is made: the TLS versions and the client
/// certificate of `settings` (its trust comes in `trust`). Resumption is off, TLS 1.2 session
/// ids and tickets and TLS 1.3 tickets alike: configurations are cached and shared, and a
/// resumed handshake would time an abbreviated exchange as the `tls` phase and, on TLS 1.3,
/// report the certificates cached from an earlier probe instead of the ones the server holds
/// now. Every probe makes a full handshake, as a new client would.
pub fn client_config(trust: Trust, settings: &TlsSettings) -> Result<ClientConfig, TlsSetupError> {
    let versions = protocol_versions(settings)?;
    let builder =
        ClientConfig::builder_with_provider(provider()).with_protocol_versions(&versions)?;
    let builder = match trust {
        Trust::Roots(roots) => builder.with_root_certificates(roots),
        Trust::Verifier(verifier) => builder
            .dangerous()
            .with_custom_certificate_verifier(verifier),
    };
    let mut config = match client_identity(settings)? {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key).map_err(|error| {
            TlsSetupError::KeyMismatch {
                key: shown(&settings.key_file),
                cert: shown(&settings.cert_file),
                reason: error.to_string(),
            }
        })?,
        None => builder.with_no_client_auth(),
    };
    config.resumption = Resumption::disabled();
    Ok(config)
}

fn shown(path: &Option<std::path::PathBuf>) -> String {
    path.as_deref()
        .map(|path| path.display().to_string())
        .unwrap_or_default()
}

/// The versions between `min_version` and `max_version` (TLS 1.2 and 1.3 by default).
fn protocol_versions(
    settings: &TlsSettings,
) -> Result<Vec<&'static rustls::SupportedProtocolVersion>, TlsSetupError> {
    let min = settings.min_version.unwrap_or(TlsVersion::Tls12);
    let max = settings.max_version.unwrap_or(TlsVersion::Tls13);
    let versions: Vec<&'static rustls::SupportedProtocolVersion> = [
        (TlsVersion::Tls12, &rustls::version::TLS12),
        (TlsVersion::Tls13, &rustls::version::TLS13),
    ]
    .into_iter()
    .filter(|(version, _)| (min..=max).contains(version))
    .map(|(_, supported)| supported)
    .collect();
    if versions.is_empty() {
        return Err(TlsSetupError::NoVersions);
    }
    Ok(versions)
}

/// The client certificate chain and key of `settings`, when it has them.
#[allow(clippy::type_complexity)]
fn client_identity(
    settings: &TlsSettings,
) -> Result<Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>, TlsSetupError> {
    let (Some(cert_file), Some(key_file)) = (&settings.cert_file, &settings.key_file) else {
        return Ok(None);
    };
    let cert_shown = cert_file.display().to_string();
    let pem = std::fs::read(cert_file).map_err(|error| TlsSetupError::CertFile {
        path: cert_shown.clone(),
        reason: error.to_string(),
    })?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| TlsSetupError::CertFile {
            path: cert_shown.clone(),
            reason: error.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsSetupError::CertFileEmpty(cert_shown));
    }
    // The key's own errors never quote the file: it holds a secret.
    let key_pem = std::fs::read(key_file).map_err(|error| TlsSetupError::KeyFile {
        path: key_file.display().to_string(),
        reason: error.kind().to_string(),
    })?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|_| TlsSetupError::KeyFile {
        path: key_file.display().to_string(),
        reason: "no PEM private key in it".to_string(),
    })?;
    Ok(Some((chain, key)))
}

fn roots(settings: &TlsSettings) -> Result<RootCertStore, TlsSetupError> {
    let mut store = RootCertStore::empty();
    if let Some(path) = &settings.ca_file {
        let shown = path.display().to_string();
        let pem = std::fs::read(path).map_err(|error| TlsSetupError::CaFile {
            path: shown.clone(),
            reason: error.to_string(),
        })?;
        let certs = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| TlsSetupError::CaFile {
                path: shown.clone(),
                reason: error.to_string(),
            })?;
        if certs.is_empty() {
            return Err(TlsSetupError::CaFileEmpty(shown));
        }
        for cert in certs {
            store.add(cert)?;
        }
    } else {
        let loaded = rustls_native_certs::load_native_certs();
        let (added, _ignored) = store.add_parsable_certificates(loaded.certs);
        if added == 0 {
            let reasons: Vec<String> = loaded.errors.iter().map(|e| e.to_string()).collect();
            return Err(TlsSetupError::NoRoots(if reasons.is_empty() {
                "no certificates found".to_string()
            } else {
                reasons.join("; ")
            }));
        }
    }
    Ok(store)
}

/// Trusts any chain, but still verifies that the server holds the key it presented.
#[derive(Debug)]
struct AcceptAnyCertificate {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The earliest not-after among the certificates a server sent, as Unix seconds.
pub fn earliest_not_after(certs: &[CertificateDer<'_>]) -> Option<i64> {
    certs
        .iter()
        .filter_map(|der| {
            x509_parser::parse_x509_certificate(der.as_ref())
                .ok()
                .map(|(_, cert)| cert.validity().not_after.timestamp())
        })
        .min()
}

/// The TLS handshake over a probe's connection, timed as the tls phase; the session's details
/// go into `record.tls` as soon as it succeeds.
pub async fn handshake<IO>(
    config: Arc<ClientConfig>,
    server_name: ServerName<'static>,
    tcp: IO,
    target: std::net::SocketAddr,
    record: &mut ProbeRecord,
) -> Result<tokio_rustls::client::TlsStream<IO>, ProbeError>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    record.begin(Phase::Tls);
    let stream = tokio_rustls::TlsConnector::from(config)
        .connect(server_name, tcp)
        .await
        .map_err(|error| {
            ProbeError::new(
                ErrorKind::Tls,
                format!(
                    "TLS handshake with {target}: {}",
                    super::net::error_chain(&error)
                ),
            )
        })?;
    record.end();
    record.tls = Some(session_details(stream.get_ref().1));
    Ok(stream)
}

/// What happened to client authentication in one handshake.
#[derive(Debug, Default)]
pub struct ClientAuthWatch {
    /// The server asked for a client certificate.
    asked: AtomicBool,
    /// One was offered.
    offered: AtomicBool,
}

/// Records whether the server asked for a client certificate during a handshake.
#[derive(Debug)]
struct WatchClientAuth {
    inner: Arc<dyn ResolvesClientCert>,
    watch: Arc<ClientAuthWatch>,
}

impl ResolvesClientCert for WatchClientAuth {
    fn resolve(
        &self,
        root_hint_subjects: &[&[u8]],
        sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.watch.asked.store(true, Ordering::Relaxed);
        let found = self.inner.resolve(root_hint_subjects, sigschemes);
        self.watch.offered.store(found.is_some(), Ordering::Relaxed);
        found
    }

    fn only_raw_public_keys(&self) -> bool {
        self.inner.only_raw_public_keys()
    }

    fn has_certs(&self) -> bool {
        self.inner.has_certs()
    }
}

/// Makes `config` (a probe's own copy) note whether the server asks for a client certificate.
pub fn watch_client_auth(config: &mut ClientConfig) -> Arc<ClientAuthWatch> {
    let watch = Arc::new(ClientAuthWatch::default());
    config.client_auth_cert_resolver = Arc::new(WatchClientAuth {
        inner: Arc::clone(&config.client_auth_cert_resolver),
        watch: Arc::clone(&watch),
    });
    watch
}

/// The least a probe waits for a TLS 1.3 server's verdict on its client certificate.
const LEAST_VERDICT_WAIT: Duration = Duration::from_millis(100);

/// On TLS 1.3 a server that asked for a client certificate judges it after the client's side
/// of the handshake is over, and a refusal arrives as an alert just after. A probe that reads
/// nothing after its handshake (a `tls` check, a `tcp` check without `expect`) would miss it,
/// so once its phases are over it waits for that verdict: for as long as the handshake took
/// (at least 100ms, never past `deadline`). The wait is in no phase and not in the total: a
/// server that takes the certificate says nothing. An alert or reset is a `tls` error;
/// silence, data or a clean close mean the certificate was taken.
pub async fn await_client_auth_verdict<S>(
    stream: &mut tokio_rustls::client::TlsStream<S>,
    watch: &ClientAuthWatch,
    target: std::net::SocketAddr,
    handshake_seconds: f64,
    deadline: tokio::time::Instant,
) -> Result<(), ProbeError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::AsyncReadExt;
    let tls13 = stream.get_ref().1.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3);
    if !tls13 || !watch.asked.load(Ordering::Relaxed) {
        return Ok(());
    }
    let sent_certificate = watch.offered.load(Ordering::Relaxed);
    let wait = Duration::from_secs_f64(handshake_seconds.max(0.0)).max(LEAST_VERDICT_WAIT);
    let until = (tokio::time::Instant::now() + wait).min(deadline);
    let mut buffer = vec![0u8; 4096];
    match tokio::time::timeout_at(until, stream.read(&mut buffer)).await {
        Err(_) | Ok(Ok(_)) => Ok(()),
        Ok(Err(error)) if error.kind() == std::io::ErrorKind::UnexpectedEof => Ok(()),
        Ok(Err(error)) => {
            let what = if sent_certificate {
                "refused the client certificate of tls.cert_file"
            } else {
                "asked for a client certificate and ended the connection without one (set tls.cert_file and tls.key_file)"
            };
            Err(ProbeError::new(
                ErrorKind::Tls,
                format!(
                    "TLS handshake with {target}: the server {what}: {}",
                    super::net::error_chain(&error)
                ),
            ))
        }
    }
}

/// Unix seconds as a wall-clock time (before 1970 too).
pub fn unix_time(seconds: i64) -> SystemTime {
    if seconds >= 0 {
        SystemTime::UNIX_EPOCH + Duration::from_secs(seconds.unsigned_abs())
    } else {
        SystemTime::UNIX_EPOCH - Duration::from_secs(seconds.unsigned_abs())
    }
}

/// What a finished handshake tells: version, ALPN, earliest expiry of the chain sent.
pub fn session_details(session: &rustls::ClientConnection) -> TlsDetails {
    TlsDetails {
        version: session
            .protocol_version()
            .map(tls_version_text)
            .unwrap_or_default(),
        alpn: session
            .alpn_protocol()
            .map(|protocol| String::from_utf8_lossy(protocol).into_owned()),
        earliest_cert_expiry: session
            .peer_certificates()
            .and_then(earliest_not_after)
            .map(unix_time),
        chain: None,
    }
}

/// Subject, issuer, names and validity of each certificate that parses, in the order sent.
pub fn certificate_details(certs: &[CertificateDer<'_>]) -> Vec<CertificateDetails> {
    certs
        .iter()
        .filter_map(|der| {
            let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
            let san = match cert.subject_alternative_name() {
                Ok(Some(extension)) => extension
                    .value
                    .general_names
                    .iter()
                    .filter_map(general_name_text)
                    .collect(),
                _ => Vec::new(),
            };
            Some(CertificateDetails {
                subject: cert.subject().to_string(),
                issuer: cert.issuer().to_string(),
                san,
                not_before: unix_time(cert.validity().not_before.timestamp()),
                not_after: unix_time(cert.validity().not_after.timestamp()),
            })
        })
        .collect()
}

fn general_name_text(name: &x509_parser::extensions::GeneralName<'_>) -> Option<String> {
    use x509_parser::extensions::GeneralName;
    match name {
        GeneralName::DNSName(dns) => Some((*dns).to_string()),
        GeneralName::RFC822Name(mail) => Some((*mail).to_string()),
        GeneralName::URI(uri) => Some((*uri).to_string()),
        GeneralName::IPAddress(bytes) => match bytes.len() {
            4 => <[u8; 4]>::try_from(*bytes)
                .ok()
                .map(|octets| std::net::Ipv4Addr::from(octets).to_string()),
            16 => <[u8; 16]>::try_from(*bytes)
                .ok()
                .map(|octets| std::net::Ipv6Addr::from(octets).to_string()),
            _ => None,
        },
        _ => None,
    }
}

/// Why the TLS keys of a check cannot be used. Each message names the key as it was written:
/// `tls.ca_file` in the `[checks.tls]` table, `ca_file` at the top of the check.
#[derive(Debug, thiserror::Error)]
pub enum TlsTargetError {
    #[error("{0} only applies with tls = true; set tls = true or remove it")]
    TlsSettingWithoutTls(&'static str),
    #[error("{0} is set twice, at the top of the check and as tls.{0}; keep tls.{0}")]
    Twice(&'static str),
    #[error("{0} and {1} contradict each other: a CA is only used to verify; keep one")]
    CaFileWithoutVerification(String, String),
    #[error("{0} {1} cannot be read: {2}")]
    File(String, String, String),
    #[error("tls.cert_file and tls.key_file go together; set both or neither")]
    CertWithoutKey,
    #[error("{0} `{1}` is not a valid TLS server name")]
    ServerName(String, String),
    #[error("{0}")]
    Setup(#[from] TlsSetupError),
}

impl TlsTargetError {
    /// The key of the check this error is about, as it was written (`tls.ca_file` in the
    /// `[checks.tls]` table, `ca_file` at the top of the check).
    pub fn key(&self) -> KeyPath {
        match self {
            TlsTargetError::TlsSettingWithoutTls(key) | TlsTargetError::Twice(key) => {
                KeyPath::dotted(key)
            }
            TlsTargetError::CaFileWithoutVerification(key, _)
            | TlsTargetError::File(key, _, _)
            | TlsTargetError::ServerName(key, _) => KeyPath::dotted(key),
            TlsTargetError::CertWithoutKey => KeyPath::dotted("tls.cert_file"),
            TlsTargetError::Setup(error) => error.key(),
        }
    }
}

pub fn server_name(host: &str) -> Result<ServerName<'static>, ProbeError> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(ServerName::IpAddress(ip.into()));
    }
    ServerName::try_from(host.to_string()).map_err(|error| {
        ProbeError::new(
            ErrorKind::Tls,
            format!("`{host}` is not a valid TLS server name: {error}"),
        )
    })
}

pub fn tls_setup_error(error: TlsSetupError) -> ProbeError {
    ProbeError::new(ErrorKind::Tls, error.to_string())
}

pub fn tls_version_text(version: rustls::ProtocolVersion) -> String {
    match version {
        rustls::ProtocolVersion::TLSv1_2 => "TLSv1.2".to_string(),
        rustls::ProtocolVersion::TLSv1_3 => "TLSv1.3".to_string(),
        other => format!("{other:?}"),
    }
}

/// The TLS keys of a check as written: the `[checks.tls]` table (None when TLS is off) and
/// the older spellings at the top of a tcp, tls or grpc check, still accepted.
#[derive(Debug, Clone, Copy, Default)]
pub struct TlsKeys<'a> {
    pub table: Option<&'a TlsSettings>,
    pub server_name: Option<&'a str>,
    pub ca_file: Option<&'a std::path::Path>,
    pub insecure_skip_verify: bool,
}

/// TLS of a check: its settings (the cache key of its client configuration) and the name
/// to present.
#[derive(Debug, Clone)]
pub struct TlsTarget {
    /// None for the default settings, as most checks have: a runner may keep thousands of
    /// compiled checks, and the settings take 104 bytes.
    settings: Option<Box<TlsSettings>>,
    pub server_name: ServerName<'static>,
}

impl TlsTarget {
    /// The check's TLS settings (the cache key of its client configuration).
    pub fn settings(&self) -> &TlsSettings {
        static DEFAULT: TlsSettings = TlsSettings::DEFAULT;
        self.settings.as_deref().unwrap_or(&DEFAULT)
    }

    /// Whether the check uses the default settings (no files, versions, name or skipped
    /// verification of its own).
    pub fn has_default_settings(&self) -> bool {
        self.settings.is_none()
    }

    /// Validates a check's TLS keys, `host` being the name presented unless
    /// `tls.server_name` says otherwise. None when TLS is off. The client certificate and key
    /// are read and matched here, so a key that does not belong to its certificate is a config
    /// error, not a probe failure.
    pub fn compile(keys: TlsKeys<'_>, host: &str) -> Result<Option<TlsTarget>, TlsTargetError> {
        let top_level = [
            (keys.server_name.is_some(), "server_name"),
            (keys.ca_file.is_some(), "ca_file"),
            (keys.insecure_skip_verify, "insecure_skip_verify"),
        ];
        let Some(table) = keys.table else {
            if let Some((_, key)) = top_level.iter().find(|(set, _)| *set) {
                return Err(TlsTargetError::TlsSettingWithoutTls(key));
            }
            return Ok(None);
        };
        let mut settings = table.clone();
        let mut written_at_top: Vec<&'static str> = Vec::new();
        if let Some(name) = keys.server_name {
            if settings.server_name.is_some() {
                return Err(TlsTargetError::Twice("server_name"));
            }
            settings.server_name = Some(name.to_string());
            written_at_top.push("server_name");
        }
        if let Some(path) = keys.ca_file {
            if settings.ca_file.is_some() {
                return Err(TlsTargetError::Twice("ca_file"));
            }
            settings.ca_file = Some(path.to_path_buf());
            written_at_top.push("ca_file");
        }
        if keys.insecure_skip_verify {
            if settings.insecure_skip_verify {
                return Err(TlsTargetError::Twice("insecure_skip_verify"));
            }
            settings.insecure_skip_verify = true;
            written_at_top.push("insecure_skip_verify");
        }
        let key = |name: &'static str| {
            if written_at_top.contains(&name) {
                name.to_string()
            } else {
                format!("tls.{name}")
            }
        };
        if settings.ca_file.is_some() && settings.insecure_skip_verify {
            return Err(TlsTargetError::CaFileWithoutVerification(
                key("ca_file"),
                key("insecure_skip_verify"),
            ));
        }
        if settings.cert_file.is_some() != settings.key_file.is_some() {
            return Err(TlsTargetError::CertWithoutKey);
        }
        for (name, path) in [
            ("ca_file", &settings.ca_file),
            ("cert_file", &settings.cert_file),
            ("key_file", &settings.key_file),
        ] {
            if let Some(path) = path {
                std::fs::metadata(path).map_err(|error| {
                    TlsTargetError::File(key(name), path.display().to_string(), error.to_string())
                })?;
            }
        }
        let name = settings.server_name.as_deref().unwrap_or(host);
        let server_name = server_name(name)
            .map_err(|_| TlsTargetError::ServerName(key("server_name"), name.to_string()))?;
        // Versions and the client identity are checked by building a configuration that
        // trusts nothing: no roots are loaded for it. The defaults need no check, and a plain
        // check is compiled at every run.
        if !settings.is_default() {
            client_config(Trust::Roots(RootCertStore::empty()), &settings)?;
        }
        Ok(Some(TlsTarget {
            settings: (!settings.is_default()).then(|| Box::new(settings)),
            server_name,
        }))
    }

    /// The client configuration (offering `alpn`) and the name to present. Called before
    /// connecting, so a bad CA file fails without touching the target.
    pub fn client_config(
        &self,
        ctx: &ProbeContext,
        alpn: &'static [&'static [u8]],
    ) -> Result<(Arc<ClientConfig>, ServerName<'static>), ProbeError> {
        let config = ctx
            .tls
            .get_with_alpn(self.settings(), alpn)
            .map_err(tls_setup_error)?;
        Ok((config, self.server_name.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_settings_take_no_room_in_a_compiled_check_and_others_are_kept() {
        let compile = |table: &TlsSettings, keys: TlsKeys<'_>| {
            TlsTarget::compile(
                TlsKeys {
                    table: Some(table),
                    ..keys
                },
                "svc.example",
            )
            .unwrap()
            .unwrap()
        };
        let plain = compile(&TlsSettings::default(), TlsKeys::default());
        assert!(plain.settings.is_none());
        assert_eq!(plain.settings(), &TlsSettings::default());
        // Set in the table, or by a key of the check's own top level: kept, and read back.
        let skipping = TlsSettings {
            insecure_skip_verify: true,
            ..TlsSettings::default()
        };
        for target in [
            compile(&skipping, TlsKeys::default()),
            compile(
                &TlsSettings::default(),
                TlsKeys {
                    insecure_skip_verify: true,
                    ..TlsKeys::default()
                },
            ),
        ] {
            assert!(target.settings.is_some());
            assert_eq!(target.settings(), &skipping);
        }
    }

    #[test]
    fn checks_that_differ_only_in_server_name_share_one_configuration() {
        let configs = TlsClientConfigs::default();
        let settings = |name: &str| TlsSettings {
            insecure_skip_verify: true,
            server_name: Some(name.to_string()),
            ..TlsSettings::default()
        };
        let first = configs.get(&settings("a.example")).unwrap();
        for index in 0..3 * MAX_CLIENT_CONFIGS {
            let other = configs
                .get(&settings(&format!("host-{index}.example")))
                .unwrap();
            assert!(
                Arc::ptr_eq(&first, &other),
                "rebuilt for server name {index}"
            );
        }
        assert_eq!(configs.lock().len(), 1);
    }

    #[test]
    fn each_alpn_has_its_own_configuration_built_once() {
        let configs = TlsClientConfigs::default();
        // No system roots needed: the cache is what is tested.
        let settings = TlsSettings {
            insecure_skip_verify: true,
            ..TlsSettings::default()
        };
        let default = configs.get(&settings).unwrap();
        let h1 = configs.get_with_alpn(&settings, &[b"http/1.1"]).unwrap();
        let none = configs.get_with_alpn(&settings, &[]).unwrap();
        assert_eq!(
            default.alpn_protocols,
            [b"h2".to_vec(), b"http/1.1".to_vec()]
        );
        assert_eq!(h1.alpn_protocols, [b"http/1.1".to_vec()]);
        assert!(none.alpn_protocols.is_empty());
        for _ in 0..3 {
            let again = configs.get_with_alpn(&settings, &[b"http/1.1"]).unwrap();
            assert!(Arc::ptr_eq(&h1, &again), "built again");
            assert!(Arc::ptr_eq(&default, &configs.get(&settings).unwrap()));
            let h2_first = configs
                .get_with_alpn(&settings, &[b"h2", b"http/1.1"])
                .unwrap();
            assert!(Arc::ptr_eq(&default, &h2_first), "the same protocols");
        }
        assert_eq!(configs.lock().len(), 3);
    }

    /// Resumption is turned off in `client_config` only: a configuration built anywhere else
    /// would resume sessions again. This reads the sources so a new one cannot slip in.
    #[test]
    fn client_configurations_are_built_only_here() {
        let mut offenders = Vec::new();
        let mut folders = vec![std::path::PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/src"
        ))];
        while let Some(folder) = folders.pop() {
            for entry in std::fs::read_dir(&folder).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    folders.push(path);
                } else if path.extension().is_some_and(|extension| extension == "rs")
                    && !path.ends_with("checks/tls_client.rs")
                {
                    let text = std::fs::read_to_string(&path).unwrap();
                    if text.contains("ClientConfig::builder") || text.contains("ClientConfig {") {
                        offenders.push(path.display().to_string());
                    }
                }
            }
        }
        assert!(
            offenders.is_empty(),
            "build client configurations with tls_client::client_config: {offenders:?}"
        );
    }
}
