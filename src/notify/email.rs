//! Email over SMTP with lettre: STARTTLS on a plain connection (`starttls = true`, port 587)
//! or TLS from the first byte (port 465), always with rustls (ring) and certificate
//! verification; authentication with `username` and the password from `password_file`. The
//! subject names the check and what happened; the body lists the failing instances and why.
//! A 4xx SMTP answer (transient) is retried, a 5xx one (permanent) is not.

use super::{read_secret, Answer, BuildContext, Notification, Notifier, NotifyError, SendError};
use crate::config::{EmailSpec, NotifierConfig};
use futures_util::future::BoxFuture;
use lettre::message::{header::ContentType, Mailbox};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, CertificateStore, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use std::sync::Arc;

struct Email {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    to: Vec<Mailbox>,
}

impl std::fmt::Debug for Email {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Email")
            .field("from", &self.from.to_string())
            .finish_non_exhaustive()
    }
}

fn invalid(config: &NotifierConfig, reason: String) -> NotifyError {
    NotifyError::Invalid {
        notifier: config.name.clone(),
        reason,
    }
}

/// Builds the notifier `config` describes, from its email section.
pub(super) fn build(
    config: &NotifierConfig,
    spec: &EmailSpec,
    _context: &BuildContext,
) -> Result<Arc<dyn Notifier>, NotifyError> {
    let mut tls = TlsParameters::builder(spec.smtp_host.clone());
    if let Some(ca_file) = &config.ca_file {
        let pem = std::fs::read(ca_file).map_err(|error| {
            invalid(
                config,
                format!("cannot read ca_file {}: {error}", ca_file.display()),
            )
        })?;
        let certificate = Certificate::from_pem(&pem).map_err(|_| {
            invalid(
                config,
                format!("ca_file {} holds no PEM certificates", ca_file.display()),
            )
        })?;
        tls = tls
            .certificate_store(CertificateStore::None)
            .add_root_certificate(certificate);
    }
    let tls = tls
        .build_rustls()
        .map_err(|error| invalid(config, format!("cannot set up TLS: {error}")))?;
    let tls = if spec.starttls {
        Tls::Required(tls)
    } else {
        Tls::Wrapper(tls)
    };
    let mut transport =
        AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(spec.smtp_host.clone())
            .port(spec.port())
            .tls(tls)
            .timeout(Some(config.timeout));
    if let (Some(user), Some(password_file)) = (&spec.username, &spec.password_file) {
        let password = read_secret(&config.name, password_file)?;
        transport = transport.credentials(Credentials::new(
            user.clone(),
            password.expose().to_string(),
        ));
    }
    let from: Mailbox = spec.from.parse().map_err(|error| {
        invalid(
            config,
            format!("from `{}` is not an address: {error}", spec.from),
        )
    })?;
    let to = spec
        .to
        .iter()
        .map(|address| {
            address.parse::<Mailbox>().map_err(|error| {
                invalid(config, format!("to `{address}` is not an address: {error}"))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Arc::new(Email {
        transport: transport.build(),
        from,
        to,
    }))
}

/// Longest subject line, in characters (RFC 5322 asks for lines under 998 bytes, and mail
/// clients show far fewer).
const SUBJECT_CHARS: usize = 200;

/// The subject line: `[bastion] FIRING web: ...`, on one line. The summary quotes the target
/// (an assertion's actual value may be part of its body), so control characters, line
/// breaks above all, become spaces: a hostile page cannot add headers to the message.
pub fn subject(notification: &Notification) -> String {
    format!("[bastion] {}", notification.summary())
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(SUBJECT_CHARS)
        .collect()
}

impl Notifier for Email {
    fn send<'a>(
        &'a self,
        notification: &'a Notification,
    ) -> BoxFuture<'a, Result<Answer, SendError>> {
        Box::pin(async move {
            let mut message = Message::builder()
                .from(self.from.clone())
                .subject(subject(notification))
                .header(ContentType::TEXT_PLAIN);
            for to in &self.to {
                message = message.to(to.clone());
            }
            let message = message
                .body(notification.details())
                .map_err(|error| SendError::Reject(format!("cannot build the message: {error}")))?;
            match self.transport.send(message).await {
                Ok(response) => Ok(Answer(format!(
                    "SMTP {}: {}",
                    response.code(),
                    response.message().collect::<Vec<_>>().join(" ")
                ))),
                Err(error) if error.is_permanent() => {
                    Err(SendError::Reject(format!("SMTP: {error}")))
                }
                Err(error) => Err(SendError::Retry {
                    reason: format!("SMTP: {error}"),
                    after: None,
                }),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A failing page that tries to add a header through the subject line.
    #[test]
    fn the_subject_is_one_line_however_hostile_the_target() {
        let notification = crate::notify::firing_with_assertion(
            &format!("x\r\nBcc: victim@example.com\r\n\r\n{}", "y".repeat(5000)),
            None,
        );
        let subject = subject(&notification);
        assert!(
            !subject.contains('\r') && !subject.contains('\n'),
            "{subject:?}"
        );
        assert!(subject.chars().count() <= SUBJECT_CHARS);
        assert!(subject.starts_with("[bastion] [FAILING] web"));
    }
}
