//! TLS client configurations for probes, built once per distinct setting and shared: loading the
//! system's roots costs milliseconds, a probe must not pay it. Verification is on by default;
//! `insecure_skip_verify` still checks handshake signatures, it only stops trusting the chain.
//! Every configuration a probe uses is made by `client_config`, which turns session resumption
//! off: a shared configuration must never carry one probe's session into the next.

use super::{Phase, ProbeContext, ProbeRecord};

use crate::config::TlsSettings;
use crate::messages::{CertificateDetails, TlsDetails};
use crate::model::{ErrorKind, ProbeError};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{Resumption, WebPkiServerVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::collections::HashMap;
use std::net::IpAddr;
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
    #[error("TLS setup failed: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("cannot build a certificate verifier: {0}")]
    Verifier(String),
}

/// Shared cache of client configurations, keyed by the check's TLS settings.
#[derive(Debug, Default)]
pub struct TlsClientConfigs {
    cache: Mutex<HashMap<TlsSettings, Arc<ClientConfig>>>,
    /// Verifiers over the trusted roots, for probes that record the verdict on a chain
    /// instead of failing the handshake on it (the `tls` check type).
    verifiers: Mutex<HashMap<TlsSettings, Arc<WebPkiServerVerifier>>>,
}

pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl TlsClientConfigs {
    pub fn get(&self, settings: &TlsSettings) -> Result<Arc<ClientConfig>, TlsSetupError> {
        if let Some(config) = self.lock().get(settings) {
            return Ok(config.clone());
        }
        // Built outside the lock: reading files must not stall other probes. Two probes may build
        // the same config at once; the second insert wins and both are equivalent.
        let config = Arc::new(build(settings)?);
        self.lock().insert(settings.clone(), config.clone());
        Ok(config)
    }

    /// The configuration for `settings`, offering `alpn` instead of h2 and http/1.1.
    pub fn get_with_alpn(
        &self,
        settings: &TlsSettings,
        alpn: &[&[u8]],
    ) -> Result<Arc<ClientConfig>, TlsSetupError> {
        let mut config = (*self.get(settings)?).clone();
        config.alpn_protocols = alpn.iter().map(|protocol| protocol.to_vec()).collect();
        Ok(Arc::new(config))
    }

    /// A verifier over the roots `settings` trust (the system's, or `ca_file`'s), built once.
    pub fn verifier(
        &self,
        settings: &TlsSettings,
    ) -> Result<Arc<WebPkiServerVerifier>, TlsSetupError> {
        let cached = self
            .verifiers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(settings)
            .cloned();
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
            .insert(settings.clone(), Arc::clone(&verifier));
        Ok(verifier)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<TlsSettings, Arc<ClientConfig>>> {
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
    let mut config = client_config(trust)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// What a client configuration trusts.
pub enum Trust {
    /// Chains that lead to these roots, checked by webpki.
    Roots(RootCertStore),
    /// Whatever this verifier accepts (it still checks handshake signatures).
    Verifier(Arc<dyn ServerCertVerifier>),
}

/// The one place a probe's client configuration is made. Resumption is off, TLS 1.2 session
/// ids and tickets and TLS 1.3 tickets alike: configurations are cached and shared, and a
/// resumed handshake would time an abbreviated exchange as the `tls` phase and, on TLS 1.3,
/// report the certificates cached from an earlier probe instead of the ones the server holds
/// now. Every probe makes a full handshake, as a new client would.
pub fn client_config(trust: Trust) -> Result<ClientConfig, TlsSetupError> {
    let builder =
        ClientConfig::builder_with_provider(provider()).with_safe_default_protocol_versions()?;
    let mut config = match trust {
        Trust::Roots(roots) => builder.with_root_certificates(roots).with_no_client_auth(),
        Trust::Verifier(verifier) => builder
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth(),
    };
    config.resumption = Resumption::disabled();
    Ok(config)
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
pub async fn handshake(
    config: Arc<ClientConfig>,
    server_name: ServerName<'static>,
    tcp: tokio::net::TcpStream,
    target: std::net::SocketAddr,
    record: &mut ProbeRecord,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, ProbeError> {
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

/// Why the TLS keys of a `tcp` or `grpc` check cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsTargetError {
    #[error("{0} only applies with tls = true; set tls = true or remove it")]
    TlsSettingWithoutTls(&'static str),
    #[error("ca_file and insecure_skip_verify contradict each other: a CA is only used to verify; keep one")]
    CaFileWithoutVerification,
    #[error("ca_file {0} cannot be read: {1}")]
    CaFile(String, String),
    #[error("server_name `{0}` is not a valid TLS server name")]
    ServerName(String),
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

/// TLS on a TCP-based check: the verification settings and the name to present.
#[derive(Debug, Clone)]
pub struct TlsTarget {
    pub settings: TlsSettings,
    pub server_name: ServerName<'static>,
}

impl TlsTarget {
    /// Validates the TLS keys shared by `tcp` and `grpc` checks.
    pub fn compile(
        tls: bool,
        host: &str,
        server_name_key: Option<&str>,
        ca_file: Option<&std::path::Path>,
        insecure_skip_verify: bool,
    ) -> Result<Option<TlsTarget>, TlsTargetError> {
        if !tls {
            for (set, key) in [
                (server_name_key.is_some(), "server_name"),
                (ca_file.is_some(), "ca_file"),
                (insecure_skip_verify, "insecure_skip_verify"),
            ] {
                if set {
                    return Err(TlsTargetError::TlsSettingWithoutTls(key));
                }
            }
            return Ok(None);
        }
        if ca_file.is_some() && insecure_skip_verify {
            return Err(TlsTargetError::CaFileWithoutVerification);
        }
        if let Some(path) = ca_file {
            std::fs::metadata(path).map_err(|error| {
                TlsTargetError::CaFile(path.display().to_string(), error.to_string())
            })?;
        }
        let name = server_name_key.unwrap_or(host);
        let server_name =
            server_name(name).map_err(|_| TlsTargetError::ServerName(name.to_string()))?;
        Ok(Some(TlsTarget {
            settings: TlsSettings {
                insecure_skip_verify,
                ca_file: ca_file.map(std::path::Path::to_path_buf),
            },
            server_name,
        }))
    }

    /// The client configuration (offering `alpn`) and the name to present. Called before
    /// connecting, so a bad CA file fails without touching the target.
    pub fn client_config(
        &self,
        ctx: &ProbeContext,
        alpn: &[&[u8]],
    ) -> Result<(Arc<ClientConfig>, ServerName<'static>), ProbeError> {
        let config = ctx
            .tls
            .get_with_alpn(&self.settings, alpn)
            .map_err(tls_setup_error)?;
        Ok((config, self.server_name.clone()))
    }
}

#[cfg(test)]
mod tests {
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
