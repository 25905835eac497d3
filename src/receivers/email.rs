//! Email over SMTP with lettre: STARTTLS on a plain connection (`starttls = true`, port 587)
//! or TLS from the first byte (port 465), always with rustls (ring) and certificate
//! verification; authentication with `username` and the password from `password_file`. The
//! subject names the check and what happened; the body lists the failing instances and why.
//! A 4xx SMTP answer (transient) is retried, a 5xx one (permanent) is not.

use super::{
    read_secret, Answer, BuildContext, Notification, Notifier, ReceiverError, ReceiverSpec,
    SendError,
};
use crate::problem::{Bound, Entry, Problem};
use futures_util::future::BoxFuture;
use lettre::message::{header::ContentType, Mailbox};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, CertificateStore, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use schemars::JsonSchema;
use serde::Deserialize;
use std::path::PathBuf;
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

/// Settings of a `type = "email"` notifier.
#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EmailSpec {
    /// The SMTP server's host name (also the name its certificate must carry).
    pub smtp_host: String,
    /// The SMTP server's port. Default: 587 with `starttls`, 465 without (TLS from the start).
    #[serde(default)]
    pub smtp_port: Option<u16>,
    /// Upgrade a plain connection with STARTTLS (true), or speak TLS from the first byte
    /// (false). Both require TLS: there is no clear-text mode. Default: true.
    #[serde(default = "crate::checks::settings::default_true")]
    pub starttls: bool,
    /// SMTP user name; goes with `password_file`.
    #[serde(default)]
    pub username: Option<String>,
    /// File holding the SMTP password.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// The sender address, such as `bastion <bastion@example.com>`.
    pub from: String,
    /// Recipient addresses.
    pub to: Vec<String>,
}

impl EmailSpec {
    /// The port, with its default applied.
    pub fn port(&self) -> u16 {
        self.smtp_port
            .unwrap_or(if self.starttls { 587 } else { 465 })
    }
}

/// The range of `smtp_port`.
pub const SMTP_PORT: Bound = Bound::count("notifiers[].smtp_port", 1, 65_535);

/// The ranges of its keys, which the configuration's table lists.
pub const BOUNDS: &[Bound] = &[SMTP_PORT];

impl ReceiverSpec for EmailSpec {
    fn validate(&self, entry: &Entry) -> Result<(), Problem> {
        if let Some(port) = self.smtp_port {
            SMTP_PORT.check_count(Some(entry), u64::from(port))?;
        }
        if self.to.is_empty() {
            return Err(entry.problem("to", "to needs at least one address"));
        }
        if self.username.is_some() != self.password_file.is_some() {
            return Err(entry.problem(
                "username",
                "username and password_file go together; set both or neither",
            ));
        }
        Ok(())
    }

    fn build(&self, context: &BuildContext) -> Result<Arc<dyn Notifier>, ReceiverError> {
        let mut tls = TlsParameters::builder(self.smtp_host.clone());
        if let Some(ca_file) = &context.ca_file {
            let pem = std::fs::read(ca_file).map_err(|error| {
                context.invalid(format!(
                    "cannot read ca_file {}: {error}",
                    ca_file.display()
                ))
            })?;
            let certificate = Certificate::from_pem(&pem).map_err(|_| {
                context.invalid(format!(
                    "ca_file {} holds no PEM certificates",
                    ca_file.display()
                ))
            })?;
            tls = tls
                .certificate_store(CertificateStore::None)
                .add_root_certificate(certificate);
        }
        let tls = tls
            .build_rustls()
            .map_err(|error| context.invalid(format!("cannot set up TLS: {error}")))?;
        let tls = if self.starttls {
            Tls::Required(tls)
        } else {
            Tls::Wrapper(tls)
        };
        let mut transport =
            AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(self.smtp_host.clone())
                .port(self.port())
                .tls(tls)
                .timeout(Some(context.timeout));
        if let (Some(user), Some(password_file)) = (&self.username, &self.password_file) {
            let password = read_secret(context.notifier, password_file)?;
            transport = transport.credentials(Credentials::new(
                user.clone(),
                password.expose().to_string(),
            ));
        }
        let from: Mailbox = self.from.parse().map_err(|error| {
            context.invalid(format!("from `{}` is not an address: {error}", self.from))
        })?;
        let to = self
            .to
            .iter()
            .map(|address| {
                address.parse::<Mailbox>().map_err(|error| {
                    context.invalid(format!("to `{address}` is not an address: {error}"))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Arc::new(Email {
            transport: transport.build(),
            from,
            to,
        }))
    }
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
        let notification = crate::receivers::firing_with_assertion(
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
