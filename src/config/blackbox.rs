//! blackbox_exporter's module file (`blackbox.yml`), read for `[agent] blackbox_modules` and
//! translated into bastion check definitions that `/probe?target=…&module=…` runs. Only the
//! `http`, `tcp`, `dns`, `icmp` and `grpc` probers and the keys bastion can honour are taken;
//! a key blackbox_exporter knows but bastion cannot do is an error naming the module and the
//! key, and so is a key neither knows. It never compiles a check or opens a socket:
//! `validate.rs` compiles each module once at load.

use super::check::{CheckConfig, CheckSpec};
use crate::checks::CheckType;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Why a module file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum BlackboxError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a blackbox_exporter module file: {reason}")]
    Syntax { path: PathBuf, reason: String },
    /// Every module that cannot be used, each with why.
    #[error("{}", modules_text(.path, .problems))]
    Modules {
        path: PathBuf,
        problems: Vec<(String, String)>,
    },
}

fn modules_text(path: &Path, problems: &[(String, String)]) -> String {
    problems
        .iter()
        .map(|(module, reason)| format!("{}: module `{module}`: {reason}", path.display()))
        .collect::<Vec<_>>()
        .join("; ")
}

/// The modules of one file, by name.
#[derive(Debug, Clone, PartialEq)]
pub struct BlackboxModules {
    pub path: PathBuf,
    pub modules: BTreeMap<String, BlackboxModule>,
}

/// One module made into a bastion check whose target is filled in per request.
#[derive(Debug, Clone, PartialEq)]
pub struct BlackboxModule {
    pub prober: CheckType,
    /// The module's `timeout`; None: the scrape's timeout decides.
    pub timeout: Option<Duration>,
    /// Whether the module sets `preferred_ip_protocol` itself (else blackbox_exporter's
    /// default, ip6, stands in).
    pub explicit_ip_protocol: bool,
    /// The check, its target a placeholder (`SAMPLE_TARGET` of its type).
    template: CheckConfig,
}

/// The name /probe's checks carry.
pub const PROBE_CHECK_NAME: &str = "probe";

impl BlackboxModule {
    /// The check that probes `target` with this module, under `timeout`. `target` is what
    /// blackbox_exporter takes: a URL (`http://` added when it has no scheme) for http,
    /// `host:port` for tcp and grpc, the server for dns, the host for icmp.
    pub fn check_for(&self, target: &str, timeout: Duration) -> Result<CheckConfig, String> {
        let target = target.trim();
        if target.is_empty() {
            return Err("target is empty".to_string());
        }
        let mut check = self.template.clone();
        check.timeout = Some(timeout);
        check.interval = timeout
            .saturating_add(Duration::from_secs(1))
            .max(super::MIN_INTERVAL);
        match &mut check.spec {
            CheckSpec::Http(spec) => {
                spec.url = if target.contains("://") {
                    target.to_string()
                } else {
                    format!("http://{target}")
                };
            }
            CheckSpec::Tcp(spec) => spec.address = host_port(target, "tcp")?,
            CheckSpec::Grpc(spec) => {
                let bare = target.strip_prefix("grpc://").unwrap_or(target);
                spec.address = host_port(bare, "grpc")?;
            }
            CheckSpec::Dns(spec) => spec.server = Some(target.to_string()),
            CheckSpec::Icmp(spec) => spec.host = target.to_string(),
            // blackbox_exporter has no prober of any other type: no module compiles into one.
            _ => {}
        }
        Ok(check)
    }

    /// The check with its placeholder target, for validation and `import-blackbox`.
    pub fn template(&self) -> &CheckConfig {
        &self.template
    }
}

/// Reads the file `agent.blackbox_modules` names (relative to the config file's directory)
/// into `config.blackbox`, with the secret files its http modules name; a problem about the
/// key when it cannot.
pub(super) fn read_into(
    config: &mut super::Config,
    config_path: &Path,
) -> Result<(), super::Problem> {
    let key = "agent.blackbox_modules";
    let Some(named) = &config.agent.blackbox_modules else {
        return Ok(());
    };
    let path = match config_path.parent() {
        Some(directory) if named.is_relative() => directory.join(named),
        _ => named.clone(),
    };
    let mut modules = BlackboxModules::load(&path)
        .map_err(|error| super::Problem::key(key, format!("{key}: {error}")))?;
    let mut problems = super::Problems::default();
    for (name, module) in &mut modules.modules {
        if let CheckSpec::Http(spec) = &mut module.template.spec {
            // Its secret files are the module file's, not this file's: placed at the key.
            let entry = super::Entry {
                subject: format!("check `blackbox module {name}`"),
                path: super::KeyPath::dotted(key),
            };
            crate::checks::http::read_secrets(&entry, spec, &mut problems);
        }
    }
    if let Some(problem) = problems.0.into_iter().next() {
        return Err(super::Problem::key(
            key,
            format!("{key}: {}", problem.message),
        ));
    }
    config.blackbox = Some(std::sync::Arc::new(modules));
    Ok(())
}

fn host_port(target: &str, prober: &str) -> Result<String, String> {
    crate::model::split_host_port(target)
        .map(|_| target.to_string())
        .map_err(|_| {
            format!(
                "target `{target}` is not host:port, which the {prober} prober needs (`db.example:5432`, `[::1]:443`)"
            )
        })
}

/// The placeholder target a module's template probes.
fn sample_target(prober: CheckType) -> &'static str {
    match prober {
        CheckType::Http => "http://127.0.0.1/",
        CheckType::Icmp | CheckType::Dns => "127.0.0.1",
        _ => "127.0.0.1:1",
    }
}

impl BlackboxModules {
    /// Reads and translates the module file at `path`.
    pub fn load(path: &Path) -> Result<BlackboxModules, BlackboxError> {
        let text = std::fs::read_to_string(path).map_err(|source| BlackboxError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        BlackboxModules::parse(&text, path)
    }

    /// Translates the text of a module file; `path` names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<BlackboxModules, BlackboxError> {
        let syntax = |reason: String| BlackboxError::Syntax {
            path: path.to_path_buf(),
            reason,
        };
        let file: FileShape = serde_saphyr::from_str(text).map_err(|e| syntax(e.to_string()))?;
        let mut modules = BTreeMap::new();
        let mut problems = Vec::new();
        for (name, raw) in file.modules {
            match translate(&raw) {
                Ok(module) => {
                    modules.insert(name, module);
                }
                Err(reason) => problems.push((name, reason)),
            }
        }
        if !problems.is_empty() {
            return Err(BlackboxError::Modules {
                path: path.to_path_buf(),
                problems,
            });
        }
        Ok(BlackboxModules {
            path: path.to_path_buf(),
            modules,
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileShape {
    #[serde(default)]
    modules: BTreeMap<String, Value>,
}

/// Keys blackbox_exporter knows that bastion cannot honour, with what to do instead.
const UNSUPPORTED: &[(&str, &str)] = &[
    ("unix", "bastion has no unix socket prober"),
    ("websocket", "bastion has no websocket prober"),
    (
        "http.fail_if_body_json_matches_cel",
        "use a `json` assertion in a bastion check",
    ),
    (
        "http.fail_if_body_json_not_matches_cel",
        "use a `json` assertion in a bastion check",
    ),
    (
        "http.body_size_limit",
        "bastion reads up to runner.max_body_bytes",
    ),
    ("http.enable_http3", "bastion speaks HTTP/1.1 and HTTP/2"),
    (
        "http.skip_resolve_phase_with_proxy",
        "bastion always resolves the target",
    ),
    ("http.proxy_from_environment", "set proxy_url"),
    (
        "http.proxy_connect_header",
        "bastion sends only Proxy-Authorization",
    ),
    (
        "http.bearer_token",
        "put the token in a file and use bearer_token_file",
    ),
    ("http.authorization", "use bearer_token_file or headers"),
    ("http.http_headers", "use headers"),
    (
        "http.basic_auth.password",
        "put the password in a file and use password_file",
    ),
    (
        "http.oauth2.client_secret",
        "put the secret in a file and use client_secret_file",
    ),
    (
        "http.oauth2.endpoint_params",
        "bastion sends only scope and audience",
    ),
    ("http.oauth2.proxy_url", "the token request goes direct"),
    (
        "http.oauth2.tls_config",
        "the token request uses the system roots",
    ),
    (
        "tcp.source_ip_address",
        "not supported by the blackbox translation yet",
    ),
    (
        "tcp.query_response.starttls",
        "bastion's tcp checks cannot switch to TLS mid-way",
    ),
    (
        "tcp.query_response.expect_bytes",
        "write the bytes as an escaped regex in expect",
    ),
    (
        "tcp.query_response.labels",
        "bastion adds no labels from a match",
    ),
    (
        "dns.source_ip_address",
        "bastion's dns checks use the system's source address",
    ),
    ("dns.dns_over_tls", "bastion's dns checks speak udp and tcp"),
    ("dns.tls_config", "bastion's dns checks speak udp and tcp"),
    (
        "dns.validate_authority_rrs",
        "bastion judges the answer section only",
    ),
    (
        "dns.validate_additional_rrs",
        "bastion judges the answer section only",
    ),
    (
        "dns.validate_answer_rrs.fail_if_all_match_regexp",
        "use fail_if_matches_regexp",
    ),
    (
        "dns.validate_answer_rrs.fail_if_not_matches_regexp",
        "use fail_if_none_matches_regexp",
    ),
    (
        "icmp.source_ip_address",
        "bastion's icmp checks use the system's source address",
    ),
    ("icmp.dont_fragment", "bastion's icmp checks cannot set DF"),
    ("icmp.ttl", "bastion's icmp checks use the system's TTL"),
    ("grpc.metadata", "bastion's grpc checks send no metadata"),
];

/// Takes the keys of an object one by one, so that what is left is what nobody read.
struct Keys {
    at: String,
    map: Map<String, Value>,
}

impl Keys {
    fn new(at: &str, value: &Value) -> Result<Keys, String> {
        match value {
            Value::Object(map) => Ok(Keys {
                at: at.to_string(),
                map: map.clone(),
            }),
            Value::Null => Ok(Keys {
                at: at.to_string(),
                map: Map::new(),
            }),
            _ => Err(format!("`{at}` must be a mapping")),
        }
    }

    fn key(&self, name: &str) -> String {
        if self.at.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.at)
        }
    }

    /// The value of `name`, if set (null counts as unset).
    fn take(&mut self, name: &str) -> Option<Value> {
        self.map.remove(name).filter(|value| !value.is_null())
    }

    fn string(&mut self, name: &str) -> Result<Option<String>, String> {
        match self.take(name) {
            None => Ok(None),
            Some(Value::String(text)) => Ok(Some(text)),
            Some(Value::Number(number)) => Ok(Some(number.to_string())),
            Some(_) => Err(format!("`{}` must be a string", self.key(name))),
        }
    }

    fn boolean(&mut self, name: &str) -> Result<Option<bool>, String> {
        match self.take(name) {
            None => Ok(None),
            Some(Value::Bool(flag)) => Ok(Some(flag)),
            Some(_) => Err(format!("`{}` must be true or false", self.key(name))),
        }
    }

    fn strings(&mut self, name: &str) -> Result<Vec<String>, String> {
        match self.take(name) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .into_iter()
                .map(|item| match item {
                    Value::String(text) => Ok(text),
                    Value::Number(number) => Ok(number.to_string()),
                    _ => Err(format!("`{}` must be a list of strings", self.key(name))),
                })
                .collect(),
            Some(_) => Err(format!("`{}` must be a list", self.key(name))),
        }
    }

    fn list(&mut self, name: &str) -> Result<Vec<Value>, String> {
        match self.take(name) {
            None => Ok(Vec::new()),
            Some(Value::Array(items)) => Ok(items),
            Some(_) => Err(format!("`{}` must be a list", self.key(name))),
        }
    }

    /// Refuses what is left: a key bastion cannot honour, or one nobody knows.
    fn finish(self) -> Result<(), String> {
        if let Some(name) = self.map.keys().next() {
            let key = self.key(name);
            let generic = strip_indices(&key);
            return Err(
                match UNSUPPORTED.iter().find(|(known, _)| {
                    generic == *known
                        || generic
                            .strip_prefix(known)
                            .is_some_and(|rest| rest.starts_with('.'))
                }) {
                    Some((_, instead)) => {
                        format!("`{key}` is a blackbox_exporter key bastion does not support: {instead}")
                    }
                    None => format!(
                        "unknown key `{key}`: it is not a blackbox_exporter key bastion knows; check its spelling"
                    ),
                },
            );
        }
        Ok(())
    }
}

/// `tcp.query_response[2].send` -> `tcp.query_response.send`.
fn strip_indices(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    let mut skipping = false;
    for c in key.chars() {
        match c {
            '[' => skipping = true,
            ']' => skipping = false,
            _ if !skipping => out.push(c),
            _ => {}
        }
    }
    out
}

/// One module's YAML as a bastion check with a placeholder target.
fn translate(raw: &Value) -> Result<BlackboxModule, String> {
    let mut keys = Keys::new("", raw)?;
    let prober_name = keys
        .string("prober")?
        .ok_or("`prober` is missing: set http, tcp, dns, icmp or grpc")?;
    let prober = match prober_name.as_str() {
        "http" => CheckType::Http,
        "tcp" => CheckType::Tcp,
        "dns" => CheckType::Dns,
        "icmp" => CheckType::Icmp,
        "grpc" => CheckType::Grpc,
        other => {
            return Err(format!(
                "prober `{other}` is not one bastion has: use http, tcp, dns, icmp or grpc"
            ))
        }
    };
    let timeout = match keys.string("timeout")? {
        None => None,
        Some(text) => Some(parse_duration(&text).map_err(|reason| format!("`timeout`: {reason}"))?),
    }
    .filter(|timeout| !timeout.is_zero());
    let section = keys.take(prober.as_str()).unwrap_or(Value::Null);
    // blackbox_exporter ignores the sections of other probers; bastion does too, but refuses
    // a misspelt one through `finish`.
    for other in ["http", "tcp", "dns", "icmp", "grpc"] {
        keys.take(other);
    }
    keys.finish()?;
    let mut inner = Keys::new(prober.as_str(), &section)?;
    let mut check = Map::new();
    check.insert("name".into(), json!(PROBE_CHECK_NAME));
    check.insert("interval".into(), json!("1h"));
    check.insert("type".into(), json!(prober.as_str()));
    let target = sample_target(prober);
    match prober {
        CheckType::Http => http(&mut inner, &mut check, target)?,
        CheckType::Tcp => tcp(&mut inner, &mut check, target)?,
        CheckType::Dns => dns(&mut inner, &mut check, target)?,
        CheckType::Icmp => icmp(&mut inner, &mut check, target)?,
        CheckType::Grpc => grpc(&mut inner, &mut check, target)?,
        // Not a blackbox_exporter prober: `Prober` never names another type.
        _ => {}
    }
    let explicit_ip_protocol = inner.map.contains_key("preferred_ip_protocol");
    ip_protocol(&mut inner, &mut check)?;
    inner.finish()?;
    let template: CheckConfig = serde_json::from_value(Value::Object(check))
        .map_err(|error| format!("cannot be made into a bastion check: {error}"))?;
    Ok(BlackboxModule {
        prober,
        timeout,
        explicit_ip_protocol,
        template,
    })
}

/// blackbox_exporter's durations (`5s`, `1m30s`, `500ms`).
fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|error| format!("`{text}` is not a duration like 5s or 1m30s: {error}"))
}

/// `preferred_ip_protocol` (default ip6, as blackbox_exporter) and `ip_protocol_fallback`
/// (default true).
fn ip_protocol(keys: &mut Keys, check: &mut Map<String, Value>) -> Result<(), String> {
    let preferred = keys.string("preferred_ip_protocol")?;
    let protocol = match preferred.as_deref() {
        None | Some("ip6") | Some("ipv6") => "ip6",
        Some("ip4") | Some("ipv4") => "ip4",
        Some(other) => {
            return Err(format!(
                "`{}`: `{other}` is not ip4 or ip6",
                keys.key("preferred_ip_protocol")
            ))
        }
    };
    check.insert("ip_protocol".into(), json!(protocol));
    let fallback = keys.boolean("ip_protocol_fallback")?.unwrap_or(true);
    check.insert("ip_protocol_fallback".into(), json!(fallback));
    Ok(())
}

/// An assertion as JSON.
fn assertion(key: &str, value: &str, relationship: &str, operand: &str) -> Value {
    json!({ "key": key, "value": value, "relationship": relationship, "operand": operand })
}

/// `tls_config`, checked key by key, as bastion's `[checks.tls]`.
fn tls_config(keys: &mut Keys) -> Result<Option<Value>, String> {
    let Some(raw) = keys.take("tls_config") else {
        return Ok(None);
    };
    let mut tls = Keys::new(&keys.key("tls_config"), &raw)?;
    let mut out = Map::new();
    for name in [
        "ca_file",
        "cert_file",
        "key_file",
        "server_name",
        "min_version",
        "max_version",
    ] {
        if let Some(value) = tls.string(name)? {
            out.insert(name.into(), json!(value));
        }
    }
    if let Some(flag) = tls.boolean("insecure_skip_verify")? {
        out.insert("insecure_skip_verify".into(), json!(flag));
    }
    tls.finish()?;
    Ok(Some(Value::Object(out)))
}

fn http(keys: &mut Keys, check: &mut Map<String, Value>, target: &str) -> Result<(), String> {
    check.insert("url".into(), json!(target));
    if let Some(method) = keys.string("method")? {
        check.insert("method".into(), json!(method));
    }
    if let Some(headers) = keys.take("headers") {
        check.insert("headers".into(), headers);
    }
    if let Some(body) = keys.string("body")? {
        check.insert("body".into(), json!(body));
    }
    if let Some(file) = keys.string("body_file")? {
        check.insert("body_file".into(), json!(file));
    }
    if let Some(compression) = keys.string("compression")?.filter(|c| !c.is_empty()) {
        check.insert("compression".into(), json!(compression));
    }
    // blackbox_exporter follows redirects unless told not to.
    let no_follow = keys.boolean("no_follow_redirects")?.unwrap_or(false);
    let follow = keys.boolean("follow_redirects")?.unwrap_or(true) && !no_follow;
    check.insert("follow_redirects".into(), json!(follow));
    if let Some(flag) = keys.boolean("enable_http2")? {
        check.insert("enable_http2".into(), json!(flag));
    }
    for flag in ["fail_if_ssl", "fail_if_not_ssl"] {
        if let Some(value) = keys.boolean(flag)? {
            check.insert(flag.into(), json!(value));
        }
    }
    let codes = keys.list("valid_status_codes")?;
    let codes: Vec<u16> = codes
        .iter()
        .map(|code| {
            code.as_u64()
                .and_then(|code| u16::try_from(code).ok())
                .ok_or_else(|| format!("`http.valid_status_codes`: `{code}` is not a status code"))
        })
        .collect::<Result<_, _>>()?;
    let versions: Vec<String> = keys
        .strings("valid_http_versions")?
        .into_iter()
        .map(|version| match version.as_str() {
            "HTTP/2.0" => "HTTP/2".to_string(),
            _ => version,
        })
        .collect();
    if !versions.is_empty() {
        check.insert("valid_http_versions".into(), json!(versions));
    }
    let mut assertions = Vec::new();
    for regex in keys.strings("fail_if_body_matches_regexp")? {
        assertions.push(assertion("body", "", "notRegExp", &regex));
    }
    for regex in keys.strings("fail_if_body_not_matches_regexp")? {
        assertions.push(assertion("body", "", "regExp", &regex));
    }
    for (list, relationship) in [
        ("fail_if_header_matches", "notRegExp"),
        ("fail_if_header_not_matches", "regExp"),
    ] {
        for (index, item) in keys.list(list)?.into_iter().enumerate() {
            let mut matcher = Keys::new(&format!("{}[{index}]", keys.key(list)), &item)?;
            let header = matcher
                .string("header")?
                .ok_or_else(|| format!("`{}`: header is missing", matcher.at))?;
            let regex = matcher.string("regexp")?.unwrap_or_default();
            if matcher.boolean("allow_missing")?.unwrap_or(false) {
                return Err(format!(
                    "`{}.allow_missing` is a blackbox_exporter key bastion does not support: a missing header is judged as empty",
                    matcher.at
                ));
            }
            matcher.finish()?;
            assertions.push(assertion(
                "header",
                &header.to_ascii_lowercase(),
                relationship,
                &regex,
            ));
        }
    }
    if !codes.is_empty() {
        check.insert("valid_status_codes".into(), json!(codes));
    } else if !assertions.is_empty() {
        // With assertions, bastion judges by them alone: keep blackbox_exporter's 2xx.
        assertions.push(assertion("code", "", "regExp", "^2[0-9][0-9]$"));
    }
    if !assertions.is_empty() {
        check.insert("assertions".into(), Value::Array(assertions));
    }
    if let Some(tls) = tls_config(keys)? {
        check.insert("tls".into(), tls);
    }
    if let Some(file) = keys.string("bearer_token_file")? {
        check.insert("bearer_token_file".into(), json!(file));
    }
    if let Some(raw) = keys.take("basic_auth") {
        let mut auth = Keys::new(&keys.key("basic_auth"), &raw)?;
        let username = auth.string("username")?.unwrap_or_default();
        let file = auth
            .string("password_file")?
            .ok_or_else(|| format!("`{}.password_file` is missing", auth.at));
        let file = match file {
            Ok(file) => file,
            Err(missing) => {
                auth.finish()?;
                return Err(missing);
            }
        };
        auth.finish()?;
        check.insert(
            "basic_auth".into(),
            json!({ "username": username, "password_file": file }),
        );
    }
    if let Some(raw) = keys.take("oauth2") {
        let mut oauth = Keys::new(&keys.key("oauth2"), &raw)?;
        let mut out = Map::new();
        for name in ["client_id", "client_secret_file", "token_url"] {
            if let Some(value) = oauth.string(name)? {
                out.insert(name.into(), json!(value));
            }
        }
        let scopes = oauth.strings("scopes")?;
        if !scopes.is_empty() {
            out.insert("scopes".into(), json!(scopes));
        }
        if let Some(raw) = oauth.take("endpoint_params") {
            let mut params = Keys::new(&oauth.key("endpoint_params"), &raw)?;
            if let Some(audience) = params.string("audience")? {
                out.insert("audience".into(), json!(audience));
            }
            params.finish()?;
        }
        oauth.finish()?;
        check.insert("oauth2".into(), Value::Object(out));
    }
    if let Some(proxy) = keys.string("proxy_url")? {
        check.insert("proxy_url".into(), json!(proxy));
    }
    if let Some(no_proxy) = keys.string("no_proxy")? {
        let hosts: Vec<&str> = no_proxy
            .split(',')
            .map(str::trim)
            .filter(|host| !host.is_empty())
            .collect();
        check.insert("no_proxy".into(), json!(hosts));
    }
    Ok(())
}

fn tcp(keys: &mut Keys, check: &mut Map<String, Value>, target: &str) -> Result<(), String> {
    check.insert("address".into(), json!(target));
    let tls = keys.boolean("tls")?.unwrap_or(false);
    let settings = tls_config(keys)?;
    if tls {
        check.insert("tls".into(), settings.unwrap_or(json!(true)));
    }
    let mut steps = Vec::new();
    for (index, item) in keys.list("query_response")?.into_iter().enumerate() {
        let mut step = Keys::new(&format!("{}[{index}]", keys.key("query_response")), &item)?;
        // blackbox_exporter waits for `expect` first, then writes `send` and a newline.
        // Its regexes match line by line, so `^` and `$` are line boundaries.
        if let Some(expect) = step.string("expect")? {
            steps.push(json!({ "expect": format!("(?m){expect}") }));
        }
        if let Some(send) = step.string("send")? {
            if send.contains("${") {
                return Err(format!(
                    "`{}.send` uses a match of expect (`${{1}}`), which bastion's tcp checks cannot send back",
                    step.at
                ));
            }
            steps.push(json!({ "send": format!("{send}\n") }));
        }
        // `starttls: false` is the default; true is left for `finish` to refuse.
        if step.map.get("starttls") == Some(&Value::Bool(false)) {
            step.take("starttls");
        }
        step.finish()?;
    }
    if !steps.is_empty() {
        check.insert("steps".into(), Value::Array(steps));
    }
    Ok(())
}

fn dns(keys: &mut Keys, check: &mut Map<String, Value>, target: &str) -> Result<(), String> {
    check.insert("server".into(), json!(target));
    let query = keys
        .string("query_name")?
        .ok_or("`dns.query_name` is missing: name the record to ask for")?;
    check.insert("query".into(), json!(query));
    let record_type = keys.string("query_type")?.ok_or(
        "`dns.query_type` is missing: blackbox_exporter's default, ANY, is not one bastion asks; set A, AAAA, MX, ...",
    )?;
    check.insert(
        "record_type".into(),
        json!(record_type.to_ascii_uppercase()),
    );
    if let Some(class) = keys.string("query_class")? {
        if !class.eq_ignore_ascii_case("IN") {
            return Err(format!(
                "`dns.query_class` `{class}` is not supported: bastion asks in class IN"
            ));
        }
    }
    if let Some(transport) = keys.string("transport_protocol")? {
        check.insert("transport".into(), json!(transport));
    }
    if let Some(flag) = keys.boolean("recursion_desired")? {
        check.insert("recursion_desired".into(), json!(flag));
    }
    let mut assertions = Vec::new();
    let rcodes = keys.strings("valid_rcodes")?;
    if !rcodes.is_empty() {
        let alternatives: Vec<String> = rcodes.iter().map(|code| regex::escape(code)).collect();
        assertions.push(assertion(
            "rcode",
            "",
            "regExp",
            &format!("^({})$", alternatives.join("|")),
        ));
    }
    if let Some(raw) = keys.take("validate_answer_rrs") {
        let mut rules = Keys::new(&keys.key("validate_answer_rrs"), &raw)?;
        for regex in rules.strings("fail_if_matches_regexp")? {
            assertions.push(assertion(
                "answer",
                "",
                "notRegExp",
                &format!("(?m){regex}"),
            ));
        }
        for regex in rules.strings("fail_if_none_matches_regexp")? {
            assertions.push(assertion("answer", "", "regExp", &format!("(?m){regex}")));
        }
        rules.finish()?;
    }
    if !assertions.is_empty() && rcodes.is_empty() {
        assertions.push(assertion("rcode", "", "equal", "NOERROR"));
    }
    if !assertions.is_empty() {
        check.insert("assertions".into(), Value::Array(assertions));
    }
    Ok(())
}

fn icmp(keys: &mut Keys, check: &mut Map<String, Value>, target: &str) -> Result<(), String> {
    check.insert("host".into(), json!(target));
    // blackbox_exporter sends one echo request.
    check.insert("count".into(), json!(1));
    if let Some(size) = keys.take("payload_size") {
        check.insert("payload_size".into(), size);
    }
    Ok(())
}

fn grpc(keys: &mut Keys, check: &mut Map<String, Value>, target: &str) -> Result<(), String> {
    check.insert("address".into(), json!(target));
    if let Some(service) = keys.string("service")? {
        check.insert("service".into(), json!(service));
    }
    let tls = keys.boolean("tls")?.unwrap_or(false);
    let settings = tls_config(keys)?;
    if tls {
        check.insert("tls".into(), settings.unwrap_or(json!(true)));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<BlackboxModules, String> {
        BlackboxModules::parse(text, Path::new("blackbox.yml")).map_err(|e| e.to_string())
    }

    #[test]
    fn the_common_modules_translate() {
        let modules = parse(
            r#"
modules:
  http_2xx:
    prober: http
    timeout: 5s
    http:
      valid_status_codes: [200, 404]
      fail_if_body_not_matches_regexp: ["ok"]
      preferred_ip_protocol: ip4
  tcp_banner:
    prober: tcp
    tcp:
      query_response:
        - expect: "^hello"
        - send: "QUIT"
  dns_a:
    prober: dns
    dns:
      query_name: example.org
      query_type: A
      valid_rcodes: [NOERROR, NXDOMAIN]
  ping:
    prober: icmp
  health:
    prober: grpc
    grpc:
      service: api
"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(modules.modules.len(), 5);
        let http = &modules.modules["http_2xx"];
        assert_eq!(http.timeout, Some(Duration::from_secs(5)));
        let check = http
            .check_for("example.org:8080/health", Duration::from_secs(3))
            .unwrap_or_else(|e| panic!("{e}"));
        let CheckSpec::Http(spec) = &check.spec else {
            panic!("not http")
        };
        assert_eq!(spec.url, "http://example.org:8080/health");
        assert_eq!(spec.valid_status_codes, vec![200, 404]);
        assert!(spec.follow_redirects);
        assert_eq!(check.assertions.len(), 1);
        let tcp = modules.modules["tcp_banner"]
            .check_for("db:25", Duration::from_secs(1))
            .unwrap_or_else(|e| panic!("{e}"));
        let CheckSpec::Tcp(spec) = &tcp.spec else {
            panic!("not tcp")
        };
        assert_eq!(spec.steps.len(), 2);
        assert_eq!(spec.steps[1].send.as_deref(), Some("QUIT\n"));
        assert!(modules.modules["tcp_banner"]
            .check_for("no-port", Duration::from_secs(1))
            .is_err());
    }

    #[test]
    fn unknown_and_unsupported_keys_name_the_module_and_the_key() {
        let typo = parse(
            "modules:\n  web:\n    prober: http\n    http:\n      valid_status_code: [200]\n",
        )
        .err()
        .unwrap_or_default();
        assert!(typo.contains("module `web`"), "{typo}");
        assert!(
            typo.contains("unknown key `http.valid_status_code`"),
            "{typo}"
        );
        let cel = parse("modules:\n  web:\n    prober: http\n    http:\n      fail_if_body_json_matches_cel: 'x'\n")
            .err()
            .unwrap_or_default();
        assert!(
            cel.contains("`http.fail_if_body_json_matches_cel` is a blackbox_exporter key bastion does not support"),
            "{cel}"
        );
        let starttls = parse("modules:\n  t:\n    prober: tcp\n    tcp:\n      query_response:\n        - starttls: true\n")
            .err()
            .unwrap_or_default();
        assert!(
            starttls.contains("tcp.query_response[0].starttls"),
            "{starttls}"
        );
        let prober = parse("modules:\n  u:\n    prober: unix\n")
            .err()
            .unwrap_or_default();
        assert!(prober.contains("prober `unix`"), "{prober}");
    }
}
