//! Receivers: the services a notification is delivered to. Each type is one file holding its
//! settings (its keys of `[[notifiers]]`, which the configuration takes from here, and their
//! validation), how it is built (secrets read from files) and its `Notifier`: one delivery
//! attempt, formatted for its API. `receiver_types!` below registers each type in one line
//! and writes from that list `NotifierSpec` and its exhaustive matches. This file also holds
//! what every receiver shares: the `Notification` they are given, the `Notifier` trait, the
//! HTTP client and secrets; `post` is the request every HTTP receiver makes.
//!
//! Receivers sit below the configuration and know nothing of episodes, routing, queues or the
//! bus (`notify/` decides what to send, and retries): a receiver formats one notification and
//! reports how its one attempt went. A secret never appears in a log line, an error, the API
//! or a metric: it is read from a file and kept in a type that does not print it.

pub mod alertmanager;
pub mod email;
mod notification;
pub mod pagerduty;
mod post;
pub mod slack;
pub mod webhook;

#[cfg(test)]
pub(crate) use notification::firing_with_assertion;
pub use notification::{
    rfc3339, Event, FailedAssertion, FailingInstance, LocationLine, Notification,
    MAX_FAILURES_LISTED,
};

use crate::checks::settings::TlsSettings;
use crate::problem::{Bound, Entry, Problem};
use futures_util::future::BoxFuture;
use schemars::JsonSchema;
use serde::Deserialize;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Declares the receiver types from one line each: `NotifierSpec` (the `type` key chooses the
/// variant) and its exhaustive matches `kind()`, `validate()` and `build()`, and `BOUNDS`. A
/// line names the type as the file writes it, its variant, and its module's spec, which
/// implements `ReceiverSpec`; the module also declares `BOUNDS`, the ranges of its own keys.
macro_rules! receiver_types {
    ($($name:literal => $variant:ident($module:ident::$spec:ident),)*) => {
        /// The receiver-specific part of a notifier, chosen by its `type` key.
        #[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
        #[serde(tag = "type")]
        pub enum NotifierSpec {
            $(#[serde(rename = $name)] $variant($module::$spec),)*
        }

        /// Each receiver type's name, as the `type` key writes it.
        pub const RECEIVER_NAMES: &[&str] = &[$($name),*];

        /// The ranges of each receiver type's own numeric and duration keys, as its module
        /// declares them (`BOUNDS`); the configuration's table of ranges lists them.
        pub const BOUNDS: &[&[Bound]] = &[$($module::BOUNDS),*];

        impl NotifierSpec {
            /// The `type` key's value.
            pub fn kind(&self) -> &'static str {
                match self {
                    $(NotifierSpec::$variant(_) => $name,)*
                }
            }

            /// What the schema cannot say about the settings (`entry` is the notifier's).
            pub fn validate(&self, entry: &Entry) -> Result<(), Problem> {
                match self {
                    $(NotifierSpec::$variant(spec) => spec.validate(entry),)*
                }
            }

            /// The notifier these settings describe, its secrets read.
            pub fn build(
                &self,
                context: &BuildContext,
            ) -> Result<Arc<dyn Notifier>, ReceiverError> {
                match self {
                    $(NotifierSpec::$variant(spec) => spec.build(context),)*
                }
            }
        }
    };
}

// Every receiver type bastion has: a new type is its file under `src/receivers/` and its line
// here (ARCHITECTURE.md, "Adding a notifier").
receiver_types! {
    "alertmanager" => Alertmanager(alertmanager::AlertmanagerSpec),
    "webhook" => Webhook(webhook::WebhookSpec),
    "slack" => Slack(slack::SlackSpec),
    "pagerduty" => Pagerduty(pagerduty::PagerdutySpec),
    "email" => Email(email::EmailSpec),
}

/// What a receiver type's settings give the engine: their checks and their notifier.
pub trait ReceiverSpec {
    /// Refuses settings the schema admits but the receiver cannot use (two URLs, an empty
    /// recipient list), as a problem at the key it is about. Reads no file.
    fn validate(&self, entry: &Entry) -> Result<(), Problem>;
    /// Builds the notifier, reading its secret files.
    fn build(&self, context: &BuildContext) -> Result<Arc<dyn Notifier>, ReceiverError>;
}

/// What the receiver answered to a delivered notification, for logs and `bastion notify test`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer(pub String);

/// Why a delivery attempt failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendError {
    /// Worth another attempt: a network error, a timeout, 429 or 5xx; `after` is the
    /// receiver's `Retry-After`.
    Retry {
        reason: String,
        after: Option<Duration>,
    },
    /// Not worth retrying: the receiver refused it (another 4xx). The config is wrong.
    Reject(String),
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendError::Retry { reason, .. } => f.write_str(reason),
            SendError::Reject(reason) => write!(f, "refused: {reason}"),
        }
    }
}

/// A receiver type: formats a notification for its API and makes one delivery attempt.
/// Retries, timeouts around it and counting are the queue's.
pub trait Notifier: Send + Sync + fmt::Debug {
    fn send<'a>(
        &'a self,
        notification: &'a Notification,
    ) -> BoxFuture<'a, Result<Answer, SendError>>;

    /// How often a firing notification must be re-sent when `repeat_interval` is not set
    /// (Alertmanager forgets alerts that are not).
    fn default_repeat(&self) -> Option<Duration> {
        None
    }
}

/// What building a notifier takes beyond its own settings: the settings every notifier has.
#[derive(Debug, Clone, Copy)]
pub struct BuildContext<'a> {
    /// The notifier's name, for errors.
    pub notifier: &'a str,
    /// How long one request may take.
    pub timeout: Duration,
    /// `repeat_interval`, when set.
    pub repeat_interval: Option<Duration>,
    /// `ca_file`: CA certificates to trust instead of the system's.
    pub ca_file: Option<&'a Path>,
    /// The HTTP client HTTP receivers share (rustls with ring, the system's roots).
    pub http: &'a reqwest::Client,
}

impl BuildContext<'_> {
    /// The HTTP client: the shared one, or one of its own trusting `ca_file`.
    pub fn client(&self) -> Result<reqwest::Client, ReceiverError> {
        match self.ca_file {
            None => Ok(self.http.clone()),
            Some(ca_file) => {
                let settings = TlsSettings {
                    ca_file: Some(ca_file.to_path_buf()),
                    ..TlsSettings::default()
                };
                let tls = crate::checks::tls_client::TlsClientConfigs::default()
                    .get(&settings)
                    .map_err(|error| self.invalid(error))?;
                client_with((*tls).clone())
            }
        }
    }

    /// The notifier's settings cannot be used, because of `reason`.
    pub fn invalid(&self, reason: impl fmt::Display) -> ReceiverError {
        ReceiverError::Invalid {
            notifier: self.notifier.to_string(),
            reason: reason.to_string(),
        }
    }
}

/// Why a notifier could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ReceiverError {
    #[error("notifier `{notifier}`: cannot read {path}: {reason}")]
    SecretFile {
        notifier: String,
        path: String,
        reason: String,
    },
    #[error("notifier `{notifier}`: {path} is empty; put the secret on its first line")]
    EmptySecret { notifier: String, path: String },
    #[error("notifier `{notifier}`: {reason}")]
    Invalid { notifier: String, reason: String },
    #[error("cannot set up TLS for notifications: {0}")]
    Tls(String),
}

/// Exactly one of `url` and `url_file` (`url` is the key either is reported at).
pub fn one_url(entry: &Entry, url: &Option<String>, file: &Option<PathBuf>) -> Result<(), Problem> {
    match (url, file) {
        (Some(url), None) => http_url(entry, url),
        (None, Some(_)) => Ok(()),
        _ => Err(entry.problem("url", "set exactly one of url and url_file")),
    }
}

/// An `http://` or `https://` URL; the text is not repeated in the error, it may hold a token.
pub fn http_url(entry: &Entry, url: &str) -> Result<(), Problem> {
    let lower = url.to_ascii_lowercase();
    if lower.starts_with("http://") || lower.starts_with("https://") {
        Ok(())
    } else {
        Err(entry.problem("url", "url must start with http:// or https://"))
    }
}

/// A secret read from a file: its first line, trimmed. Debug never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// The URL of a notifier that takes `url` or `url_file` (the config has exactly one), kept as
/// a secret either way: such URLs carry tokens.
pub fn url_or_file(
    context: &BuildContext,
    url: &Option<String>,
    file: &Option<PathBuf>,
) -> Result<Secret, ReceiverError> {
    match (url, file) {
        (Some(url), _) => Ok(Secret(url.clone())),
        (None, Some(file)) => read_secret(context.notifier, file),
        (None, None) => Err(context.invalid("set url or url_file")),
    }
}

/// Reads a notifier's secret file. The error names the file, never its content.
pub fn read_secret(notifier: &str, path: &Path) -> Result<Secret, ReceiverError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|error| ReceiverError::SecretFile {
        notifier: notifier.to_string(),
        path: shown.clone(),
        reason: error.kind().to_string(),
    })?;
    let line = text.lines().next().unwrap_or("").trim().to_string();
    if line.is_empty() {
        return Err(ReceiverError::EmptySecret {
            notifier: notifier.to_string(),
            path: shown,
        });
    }
    Ok(Secret(line))
}

/// The HTTP client of every HTTP receiver: rustls with ring and the system's roots, HTTP/1.1,
/// no redirects (a receiver that redirects is misconfigured, and a redirect could carry a
/// signed body elsewhere). Without a readable system store it still builds, with a warning:
/// `http://` receivers work, and `https://` ones fail with a TLS error that says why.
pub fn http_client() -> Result<reqwest::Client, ReceiverError> {
    use crate::checks::tls_client::{client_config, TlsClientConfigs, Trust};
    let configs = TlsClientConfigs::default();
    let tls = match configs.get(&TlsSettings::default()) {
        Ok(tls) => (*tls).clone(),
        Err(error) => {
            tracing::warn!(%error, "no system root certificates: https:// notifiers will fail; install ca-certificates");
            client_config(
                Trust::Roots(rustls::RootCertStore::empty()),
                &TlsSettings::default(),
            )
            .map_err(|error| ReceiverError::Tls(error.to_string()))?
        }
    };
    client_with(tls)
}

/// A reqwest client over `tls`, HTTP/1.1, no redirects.
fn client_with(mut tls: rustls::ClientConfig) -> Result<reqwest::Client, ReceiverError> {
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("bastion/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|error| ReceiverError::Tls(error.without_url().to_string()))
}
