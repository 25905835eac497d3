//! Settings that several check types share, and what is read from files for them: the one TLS
//! table (`[checks.tls]`, for http, tcp, tls and grpc), `tls = true` as its shorthand, and the
//! secrets of an HTTP check (header values, a body, tokens, passwords), read when the file is
//! loaded or reloaded. A secret read here travels with the check definition to the runner
//! that probes it (a runner needs no files of its own); its `Debug` never shows it, and no
//! message made here ever quotes it.

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::path::PathBuf;

/// `[checks.tls]`: the TLS settings of an http, tcp, tls or grpc check, one shape for all four.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    /// Accept any certificate chain (handshake signatures are still verified). For tests and
    /// broken internal services only; not with `ca_file`.
    #[serde(default)]
    pub insecure_skip_verify: bool,
    /// PEM file of CA certificates to trust instead of the system's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate (chain) presented to servers that ask for one; goes with
    /// `key_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file` (PKCS#8, PKCS#1 or SEC1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// The name sent as SNI and verified against the certificate. Default: the URL's or the
    /// address's host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// The oldest TLS version offered: `TLS12` or `TLS13`. Default: `TLS12`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = TlsVersion::Tls12))]
    pub min_version: Option<TlsVersion>,
    /// The newest TLS version offered: `TLS12` or `TLS13`. Default: `TLS13`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = TlsVersion::Tls13))]
    pub max_version: Option<TlsVersion>,
}

impl TlsSettings {
    /// Every key at its default.
    pub const DEFAULT: TlsSettings = TlsSettings {
        insecure_skip_verify: false,
        ca_file: None,
        cert_file: None,
        key_file: None,
        server_name: None,
        min_version: None,
        max_version: None,
    };

    pub fn is_default(&self) -> bool {
        *self == TlsSettings::DEFAULT
    }
}

/// A TLS version a probe may offer. bastion speaks TLS 1.2 and 1.3 only.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
pub enum TlsVersion {
    #[serde(rename = "TLS12", alias = "TLSv1.2")]
    Tls12,
    #[serde(rename = "TLS13", alias = "TLSv1.3")]
    Tls13,
}

/// `tls` of a tcp or grpc check: `false` (the default), `true` (TLS with the defaults), or a
/// `[checks.tls]` table (TLS with those settings).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub enum TlsOption {
    #[default]
    Off,
    On(TlsSettings),
}

impl TlsOption {
    pub fn is_off(&self) -> bool {
        *self == TlsOption::Off
    }

    /// The settings, when TLS is on.
    pub fn settings(&self) -> Option<&TlsSettings> {
        match self {
            TlsOption::Off => None,
            TlsOption::On(settings) => Some(settings),
        }
    }
}

impl Serialize for TlsOption {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            TlsOption::Off => serializer.serialize_bool(false),
            TlsOption::On(settings) if settings.is_default() => serializer.serialize_bool(true),
            TlsOption::On(settings) => settings.serialize(serializer),
        }
    }
}

impl<'de> Deserialize<'de> for TlsOption {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = TlsOption;

            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("true, false or a table of TLS settings")
            }

            fn visit_bool<E: serde::de::Error>(self, on: bool) -> Result<TlsOption, E> {
                Ok(if on {
                    TlsOption::On(TlsSettings::default())
                } else {
                    TlsOption::Off
                })
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<TlsOption, A::Error> {
                TlsSettings::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(TlsOption::On)
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// What `Deserialize` above takes: a boolean, or the settings table.
impl JsonSchema for TlsOption {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "TlsOption".into()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let settings = generator.subschema_for::<TlsSettings>();
        schemars::json_schema!({ "oneOf": [{ "type": "boolean" }, settings] })
    }
}

/// `ip_protocol` of a check: which of the addresses its host resolves to are instances.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum IpProtocol {
    /// IPv4 addresses only (the IPv6 ones with `ip_protocol_fallback` when there is none).
    Ip4,
    /// IPv6 addresses only (the IPv4 ones with `ip_protocol_fallback` when there is none).
    Ip6,
    /// Every address.
    #[default]
    Any,
}

/// `compression` of an http check: the content coding asked for (`Accept-Encoding`) and
/// decoded before the body is judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    Gzip,
    Deflate,
    Br,
    Zstd,
}

impl Compression {
    /// The content-coding name, as in `Accept-Encoding` and `Content-Encoding`.
    pub fn as_str(self) -> &'static str {
        match self {
            Compression::Gzip => "gzip",
            Compression::Deflate => "deflate",
            Compression::Br => "br",
            Compression::Zstd => "zstd",
        }
    }
}

/// `basic_auth = { username, password_file }` (and `proxy_basic_auth`): a user name and the
/// file holding its password.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BasicAuth {
    /// The user name, sent as it is.
    pub username: String,
    /// File holding the password (its first line, without surrounding whitespace).
    pub password_file: PathBuf,
}

/// `oauth2 = { ... }`: an access token from the client credentials grant (RFC 6749 4.4), sent
/// as `Authorization: Bearer`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OAuth2Config {
    /// The token endpoint, `https://` (or `http://`).
    pub token_url: String,
    /// The client id, sent with the secret as HTTP basic auth (client_secret_basic).
    pub client_id: String,
    /// File holding the client secret (its first line, without surrounding whitespace).
    pub client_secret_file: PathBuf,
    /// Scopes asked for, sent space-separated as `scope`. Default: none.
    #[schemars(extend("default" = []))]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    /// Sent as the `audience` parameter, for servers that want one. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
}

/// A secret read from a file. `Debug` never shows it; it serializes as its text, since the
/// check definition carries it to the runner that probes.
#[derive(Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(text: impl Into<String>) -> Secret {
        Secret(text.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// What an HTTP check's `*_file` keys held when the config was loaded: filled in by
/// `check::read_secret_files`, never written in a config file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpSecrets {
    /// `headers_from_files`, by header name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, Secret>,
    /// `body_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<Secret>,
    /// `bearer_token_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bearer_token: Option<Secret>,
    /// `basic_auth.password_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basic_password: Option<Secret>,
    /// `proxy_basic_auth.password_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_password: Option<Secret>,
    /// `oauth2.client_secret_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oauth2_client_secret: Option<Secret>,
}

impl HttpSecrets {
    /// No secrets at all.
    pub const NONE: HttpSecrets = HttpSecrets {
        headers: BTreeMap::new(),
        body: None,
        bearer_token: None,
        basic_password: None,
        proxy_password: None,
        oauth2_client_secret: None,
    };

    pub fn is_empty(&self) -> bool {
        *self == HttpSecrets::default()
    }
}

/// Reads a one-line secret: the file's first line without surrounding whitespace. The error
/// names the key and the file, never what the file holds.
pub fn read_line_secret(key: &str, path: &Path) -> Result<Secret, String> {
    let text = read_text(key, path)?;
    let line = text.lines().next().unwrap_or("").trim();
    if line.is_empty() {
        return Err(format!(
            "{key}: {} is empty; put the secret on its first line",
            path.display()
        ));
    }
    Ok(Secret::new(line))
}

pub fn read_text(key: &str, path: &Path) -> Result<String, String> {
    let bytes = std::fs::read(path)
        .map_err(|error| format!("{key}: cannot read {}: {}", path.display(), error.kind()))?;
    String::from_utf8(bytes).map_err(|_| format!("{key}: {} is not UTF-8 text", path.display()))
}

/// The default of boolean keys that are on unless turned off.
pub fn default_true() -> bool {
    true
}

/// Leaves a key at its default (`true`) out of the serialized definition.
pub fn is_true(value: &bool) -> bool {
    *value
}

/// A duration as humantime reads it (`humantime_serde` fields): `#[schemars(with = "Humantime")]`.
pub struct Humantime;

impl JsonSchema for Humantime {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": DURATION_PATTERN,
            "description": "A duration: numbers with units, such as `10s`, `1m 30s`, `250ms`, `2h` or `7days` (ns, us, ms, s, m, h, d, w, M, y and their long names)."
        })
    }
}

/// What humantime's `parse_duration` takes: one or more `<number><unit>`, spaces allowed.
pub const DURATION_PATTERN: &str = r"^\s*([0-9]+(\.[0-9]+)?\s*(nsec|ns|usec|us|µs|msec|ms|seconds|second|secs|sec|s|minutes|minute|mins|min|m|hours|hour|hrs|hr|h|days|day|d|weeks|week|w|months|month|M|years|year|y)\s*)+$";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_is_a_switch_or_a_table_and_round_trips() {
        #[derive(Debug, PartialEq, Serialize, Deserialize)]
        struct Holder {
            tls: TlsOption,
        }
        let cases = [
            ("tls = false", TlsOption::Off),
            ("tls = true", TlsOption::On(TlsSettings::default())),
            (
                "tls = { server_name = \"svc\", min_version = \"TLS13\" }",
                TlsOption::On(TlsSettings {
                    server_name: Some("svc".to_string()),
                    min_version: Some(TlsVersion::Tls13),
                    ..TlsSettings::default()
                }),
            ),
        ];
        for (text, expected) in cases {
            let holder: Holder = toml::from_str(text).unwrap();
            assert_eq!(holder.tls, expected, "{text}");
            let json = serde_json::to_string(&holder).unwrap();
            assert_eq!(serde_json::from_str::<Holder>(&json).unwrap(), holder);
        }
        let error = toml::from_str::<Holder>("tls = { ca_fil = \"x\" }").unwrap_err();
        assert!(
            error.to_string().contains("unknown field `ca_fil`"),
            "{error}"
        );
        let error = toml::from_str::<Holder>("tls = { min_version = \"TLS10\" }").unwrap_err();
        assert!(error.to_string().contains("TLS12"), "{error}");
    }

    #[test]
    fn a_secret_never_shows_in_debug() {
        let secret = Secret::new("hunter2");
        assert_eq!(format!("{secret:?}"), "Secret(..)");
        let secrets = HttpSecrets {
            bearer_token: Some(secret),
            ..HttpSecrets::default()
        };
        assert!(!format!("{secrets:?}").contains("hunter2"));
    }
}
