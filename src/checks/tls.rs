//! The TLS certificate probe: connect, handshake, read the chain the server sent. The chain is
//! verified against the trusted roots for the server name, but its verdict is recorded rather
//! than allowed to abort the handshake, so an expired or untrusted chain still reports its
//! subject, issuer, names and expiry beside a clear error. Handshake signatures are always
//! checked. One fresh connection per probe, one attempt.

use super::net::connect_tcp;
use super::response::Response;
use super::response::{ChainDetails, TlsDetails};
use super::series::{self, SeriesOut, SeriesSpec};
use super::settings::TlsSettings;
use super::starttls::Starttls;
use super::tls_client::{
    await_client_auth_verdict, certificate_details, handshake, tls_setup_error, watch_client_auth,
    TlsKeys, TlsTarget, TlsTargetError,
};
use super::AssertionKey;
use super::Observation;
use super::Observed;
use super::{CheckKind, Probe, ProbeFuture};
use super::{ProbeContext, ProbeRecord};
use crate::checks::CheckType;
use crate::model::{split_host_port, ErrorKind, ProbeError};
use crate::problem::KeyPath;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// Settings of a `type = "tls"` check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TlsSpec {
    /// `host:port` (`[v6]:port`). The host is resolved unless instances are listed.
    pub address: String,
    /// TLS settings (`[checks.tls]`).
    #[schemars(extend("default" = {}))]
    #[serde(default, skip_serializing_if = "TlsSettings::is_default")]
    pub tls: TlsSettings,
    /// Older spelling of `tls.server_name`, still accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// Older spelling of `tls.ca_file`, still accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// The local address the probe's connection leaves from. Default: the system's choice.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_ip: Option<std::net::IpAddr>,
    /// Ask for TLS in this protocol's plaintext first: `smtp`, `imap`, `pop3`, `ftp`,
    /// `postgres` or `ldap`. Default: TLS from the first byte.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub starttls: Option<Starttls>,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsDefinitionError {
    #[error("address `{address}` is not valid: {reason}")]
    Address { address: String, reason: String },
    #[error("{0}")]
    Tls(#[from] TlsTargetError),
}

impl super::SpecError for TlsDefinitionError {
    fn key(&self) -> KeyPath {
        match self {
            TlsDefinitionError::Address { .. } => KeyPath::dotted("address"),
            TlsDefinitionError::Tls(error) => error.key(),
        }
    }
}

/// A compiled TLS certificate check.
#[derive(Debug)]
pub struct TlsPlan {
    host: String,
    port: u16,
    tls: TlsTarget,
    source_ip: Option<std::net::IpAddr>,
    starttls: Option<super::starttls::Starttls>,
}

impl TlsPlan {
    pub fn compile(spec: &TlsSpec) -> Result<TlsPlan, TlsDefinitionError> {
        let (host, port) =
            split_host_port(&spec.address).map_err(|reason| TlsDefinitionError::Address {
                address: spec.address.clone(),
                reason,
            })?;
        let tls = TlsTarget::compile(
            TlsKeys {
                table: Some(&spec.tls),
                server_name: spec.server_name.as_deref(),
                ca_file: spec.ca_file.as_deref(),
                insecure_skip_verify: false,
            },
            &host,
        )?
        .ok_or(TlsTargetError::TlsSettingWithoutTls("tls"))?;
        Ok(TlsPlan {
            host,
            port,
            tls,
            source_ip: spec.source_ip,
            starttls: spec.starttls,
        })
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn port(&self) -> u16 {
        self.port
    }
}

/// Verifies the chain with the real verifier, writes down the verdict, and lets the handshake
/// go on either way. Handshake signatures are verified for real.
#[derive(Debug)]
struct RecordingVerifier {
    inner: Arc<WebPkiServerVerifier>,
    verdict: Mutex<Option<Result<(), String>>>,
}

impl ServerCertVerifier for RecordingVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verdict = self
            .inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
            .map(|_| ())
            .map_err(|error| error.to_string());
        *self
            .verdict
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(verdict);
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Handshakes with `target` and records the chain and its verdict in `record.tls`.
pub async fn probe(
    ctx: &ProbeContext,
    plan: &TlsPlan,
    target: SocketAddr,
    deadline: tokio::time::Instant,
    record: &mut ProbeRecord,
) -> Result<(), ProbeError> {
    // The trusted roots are loaded (once) before connecting; the configuration around the
    // recording verifier is per probe, since the verdict is this probe's own. It is the
    // check's shared configuration (versions, client certificate, no resumption) with the
    // verifier swapped in and no ALPN.
    let settings = plan.tls.settings();
    let verifier = Arc::new(RecordingVerifier {
        inner: ctx.tls.verifier(settings).map_err(tls_setup_error)?,
        verdict: Mutex::new(None),
    });
    let mut config = Arc::unwrap_or_clone(
        ctx.tls
            .get_with_alpn(settings, &[])
            .map_err(tls_setup_error)?,
    );
    config
        .dangerous()
        .set_certificate_verifier(Arc::clone(&verifier) as Arc<dyn ServerCertVerifier>);
    let client_auth = watch_client_auth(&mut config);
    let mut tcp = connect_tcp(target, plan.source_ip, record).await?;
    if let Some(protocol) = plan.starttls {
        super::starttls::negotiate(&mut tcp, protocol, target, record).await?;
    }
    let mut stream = handshake(
        Arc::new(config),
        plan.tls.server_name.clone(),
        tcp,
        target,
        record,
    )
    .await?;
    let session = stream.get_ref().1;
    let certificates = session
        .peer_certificates()
        .map(certificate_details)
        .unwrap_or_default();
    let verdict = verifier
        .verdict
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .take()
        .unwrap_or_else(|| Err("the server sent no certificate to verify".to_string()));
    if let Some(details) = record.tls.as_mut() {
        details.chain = Some(ChainDetails {
            valid: verdict.is_ok(),
            error: verdict.as_ref().err().cloned(),
            certificates,
        });
    }
    // A TLS 1.3 server that asked for a client certificate says what it made of it only now.
    let handshake_seconds = record.timings.tls;
    record.end();
    await_client_auth_verdict(
        &mut stream,
        &client_auth,
        target,
        handshake_seconds,
        deadline,
    )
    .await?;
    match verdict {
        Ok(()) => Ok(()),
        // With insecure_skip_verify an untrusted chain is reported (chain_valid false), not
        // an error.
        Err(_) if settings.insecure_skip_verify => Ok(()),
        Err(reason) => Err(ProbeError::new(
            ErrorKind::Tls,
            format!("the certificate chain of {target} is not trusted: {reason}"),
        )),
    }
}

/// The values of the tls assertion keys, as of `now`.
pub fn observed(details: &TlsDetails, now: SystemTime) -> Vec<(AssertionKey, Observed)> {
    let mut values = vec![(
        AssertionKey::TlsVersion,
        Observed::Text(details.version.clone()),
    )];
    if let Some(expiry) = details.earliest_cert_expiry {
        let left = match expiry.duration_since(now) {
            Ok(left) => left.as_secs_f64(),
            Err(past) => -past.duration().as_secs_f64(),
        };
        values.push((AssertionKey::CertExpiry, Observed::Seconds(left)));
    }
    if let Some(chain) = &details.chain {
        values.push((
            AssertionKey::ChainValid,
            Observed::Text(chain.valid.to_string()),
        ));
        if let Some(leaf) = chain.certificates.first() {
            values.push((AssertionKey::Subject, Observed::Text(leaf.subject.clone())));
            values.push((AssertionKey::Issuer, Observed::Text(leaf.issuer.clone())));
            values.push((AssertionKey::San, Observed::Text(leaf.san.join("\n"))));
        }
    }
    values
}

/// The `tls` check type, listed in `checks::KINDS`.
pub const KIND: CheckKind = CheckKind {
    check_type: CheckType::Tls,
    assertion_keys: &[
        AssertionKey::CertExpiry,
        AssertionKey::Issuer,
        AssertionKey::Subject,
        AssertionKey::San,
        AssertionKey::TlsVersion,
        AssertionKey::ChainValid,
    ],
    judge,
    series: &[SeriesSpec {
        name: "probe_tls_duration_seconds",
        help: "Duration of each phase of the last TLS certificate probe of the instance",
    }],
    write_series,
    workers_help: "Concurrent TLS certificate probes.",
};

impl Probe for TlsPlan {
    fn host_and_port(&self) -> (&str, u16) {
        (self.host(), self.port())
    }

    fn probe<'a>(
        &'a self,
        context: &'a ProbeContext,
        target: SocketAddr,
        deadline: tokio::time::Instant,
        record: &'a mut ProbeRecord,
    ) -> ProbeFuture<'a> {
        Box::pin(probe(context, self, target, deadline, record))
    }
}

/// The certificate's facts, for assertions; without them, a chain that verified passes.
fn judge<'a>(response: &'a Response, observation: &mut Observation<'a>) -> Option<bool> {
    let details = response.tls.as_ref()?;
    observation.values = observed(details, SystemTime::now());
    // A chain that did not verify is an error unless insecure_skip_verify said otherwise.
    Some(details.chain.as_ref().is_some_and(|chain| chain.valid) || response.error.is_none())
}

fn write_series(response: &Response, out: &mut dyn SeriesOut) {
    series::write_phases(
        out,
        "probe_tls_duration_seconds",
        &response.timings,
        &[
            ("resolve", series::resolve),
            ("connect", series::connect),
            ("starttls", |timings| timings.starttls),
            ("tls", series::tls),
        ],
    );
}

impl super::TypeSpec for TlsSpec {
    type Plan = TlsPlan;
    type Error = TlsDefinitionError;

    fn compile(&self, _timeout: std::time::Duration) -> Result<TlsPlan, TlsDefinitionError> {
        TlsPlan::compile(self)
    }

    fn target(&self) -> String {
        self.address.clone()
    }
}
