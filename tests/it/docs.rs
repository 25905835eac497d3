//! The documentation holds together: every relative link in README.md, ARCHITECTURE.md and
//! docs/*.md reaches a file (and, with `#anchor`, a heading of it), and every config key the
//! docs name is a real key.
//!
//! Config keys are held to `config/reference.toml`, which `tests/it/cli.rs` loads against the
//! real schema. Its commented-out keys are uncommented here and deserialized into `Config`
//! (every table has `deny_unknown_fields`), so they are schema keys too. The convention for
//! the docs, stated again at the top of docs/configuration.md:
//! - in docs/configuration.md, the first column of every `| Key | Default | Meaning |` table
//!   holds full key paths in backticks (`agent.listen`, `checks[].url`,
//!   `checks[].assertions[].key`); each must be a key of the reference, and every key the
//!   reference sets or describes must have such a row;
//! - anywhere in the docs (outside code blocks), a span in backticks shaped like a key path
//!   under `agent`, `bus`, `checker`, `runner` or `checks` (optionally followed by ` = value`),
//!   or a TOML table header such as `[bus.nats]` or `[[checks.assertions]]`, must name a key
//!   or table of the reference. File names such as `agent.rs` are not keys.

use bastion_agent::config::Config;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Tables whose keys are the user's (header names, user names), not the schema's: they are
/// documented as one key and their entries are not walked.
const MAP_KEYS: &[&str] = &[
    "agent.web.basic_auth_users",
    "checks[].headers",
    "checks[].headers_from_files",
    "checks[].labels",
    "checks[].metadata",
    "checks[].metadata_from_files",
    "notifiers[].labels",
];

/// The first segment of every config key.
const KEY_ROOTS: &[&str] = &[
    "agent",
    "bus",
    "checker",
    "runner",
    "checks",
    "notifiers",
    "maintenance",
];

/// Spans ending like this are file names (`agent.rs`, `checker.toml`), not keys.
const FILE_SUFFIXES: &[&str] = &[".rs", ".toml", ".yaml", ".yml", ".md", ".json"];

const CONFIG_TABLE_HEADER: &str = "| Key | Default | Meaning |";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// README.md, ARCHITECTURE.md and every docs/*.md, as paths relative to the repository root.
fn doc_files() -> Vec<PathBuf> {
    let mut files = vec![PathBuf::from("README.md"), PathBuf::from("ARCHITECTURE.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root().join("docs"))
        .expect("docs/ exists")
        .map(|entry| entry.expect("docs/ is readable").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "md"))
        .map(|path| PathBuf::from("docs").join(path.file_name().expect("a file name")))
        .collect();
    docs.sort();
    assert!(
        docs.len() >= 5,
        "docs/ should hold the reference pages, found {docs:?}"
    );
    files.extend(docs);
    files
}

fn read(relative: &Path) -> String {
    std::fs::read_to_string(root().join(relative))
        .unwrap_or_else(|error| panic!("{}: {error}", relative.display()))
}

/// The lines outside fenced code blocks, with their 1-based numbers.
fn prose_lines(text: &str) -> Vec<(usize, &str)> {
    let mut fence: Option<&str> = None;
    let mut lines = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        let marker = ["```", "~~~"]
            .into_iter()
            .find(|marker| trimmed.starts_with(marker));
        match (fence, marker) {
            (None, Some(marker)) => fence = Some(marker),
            (Some(open), Some(marker)) if open == marker => fence = None,
            (None, None) => lines.push((index + 1, line)),
            _ => {}
        }
    }
    lines
}

/// The inline code spans of a line (``x`` and ``` ``x`y`` ```), and the line with them blanked.
fn code_spans(line: &str) -> (Vec<String>, String) {
    let chars: Vec<char> = line.chars().collect();
    let mut spans = Vec::new();
    let mut rest = String::new();
    let mut i = 0;
    while i < chars.len() {
        if chars[i] != '`' {
            rest.push(chars[i]);
            i += 1;
            continue;
        }
        let run = chars[i..].iter().take_while(|&&c| c == '`').count();
        let mut close = None;
        let mut j = i + run;
        while j < chars.len() {
            if chars[j] == '`' {
                let other = chars[j..].iter().take_while(|&&c| c == '`').count();
                if other == run {
                    close = Some(j);
                    break;
                }
                j += other;
            } else {
                j += 1;
            }
        }
        match close {
            Some(j) => {
                let span: String = chars[i + run..j].iter().collect();
                spans.push(span.trim().to_string());
                rest.push_str(&" ".repeat(j + run - i));
                i = j + run;
            }
            None => {
                rest.extend(&chars[i..i + run]);
                i += run;
            }
        }
    }
    (spans, rest)
}

/// The targets of the inline links `[text](target)` of a line whose code spans are blanked.
fn link_targets(line: &str) -> Vec<String> {
    let mut targets = Vec::new();
    let mut rest = line;
    while let Some(at) = rest.find("](") {
        let after = &rest[at + 2..];
        let Some(end) = after.find(')') else { break };
        let target = after[..end].split_whitespace().next().unwrap_or("");
        targets.push(target.to_string());
        rest = &after[end..];
    }
    targets
}

/// GitHub's anchor for a heading: lowercase, punctuation dropped (letters, digits, `_`, `-`
/// and spaces kept), spaces made hyphens; a repeated anchor gets `-1`, `-2`, ...
fn anchors(text: &str) -> BTreeSet<String> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut anchors = BTreeSet::new();
    for (_, line) in prose_lines(text) {
        let hashes = line.chars().take_while(|&c| c == '#').count();
        if hashes == 0 || hashes > 6 || !line[hashes..].starts_with(' ') {
            continue;
        }
        let heading = line[hashes..].trim().trim_end_matches('#').trim();
        // A link in a heading contributes its text only.
        let mut plain = String::new();
        let mut rest = heading;
        while let Some(at) = rest.find("](") {
            plain.push_str(&rest[..at]);
            rest = rest[at..].find(')').map_or("", |end| &rest[at + end + 1..]);
        }
        plain.push_str(rest);
        let slug: String = plain
            .to_lowercase()
            .chars()
            .filter(|&c| c.is_alphanumeric() || c == '_' || c == '-' || c == ' ')
            .map(|c| if c == ' ' { '-' } else { c })
            .collect();
        let count = seen.entry(slug.clone()).or_insert(0);
        let anchor = if *count == 0 {
            slug.clone()
        } else {
            format!("{slug}-{count}")
        };
        *count += 1;
        anchors.insert(anchor);
    }
    anchors
}

#[test]
fn every_relative_link_in_the_docs_resolves() {
    let mut broken = Vec::new();
    let mut checked = 0;
    for file in doc_files() {
        let text = read(&file);
        let dir = file.parent().unwrap_or(Path::new(""));
        for (number, line) in prose_lines(&text) {
            let (_, line) = code_spans(line);
            for target in link_targets(&line) {
                if target.contains("://") || target.starts_with("mailto:") {
                    continue;
                }
                checked += 1;
                let (path, anchor) = match target.split_once('#') {
                    Some((path, anchor)) => (path, Some(anchor)),
                    None => (target.as_str(), None),
                };
                let linked = if path.is_empty() {
                    file.clone()
                } else {
                    dir.join(path)
                };
                let where_ = format!("{}:{number}: link `{target}`", file.display());
                if !root().join(&linked).exists() {
                    broken.push(format!("{where_}: {} does not exist", linked.display()));
                    continue;
                }
                let Some(anchor) = anchor else { continue };
                if linked.extension().is_none_or(|ext| ext != "md") {
                    broken.push(format!(
                        "{where_}: an anchor into a file that is not Markdown"
                    ));
                    continue;
                }
                if !anchors(&read(&linked)).contains(anchor) {
                    broken.push(format!(
                        "{where_}: {} has no heading with the anchor #{anchor}",
                        linked.display()
                    ));
                }
            }
        }
    }
    assert!(checked > 20, "found only {checked} relative links");
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

/// The config keys of config/reference.toml, set or described (commented out).
struct ReferenceKeys {
    /// Every key and table path (`bus.nats`, `bus.nats.url`, `checks[].assertions[].key`).
    known: BTreeSet<String>,
    /// The paths that take a value rather than hold keys: each needs a documented row.
    leaves: BTreeSet<String>,
    /// Table paths as TOML headers write them (`bus.nats`, `checks.assertions`).
    headers: BTreeSet<String>,
}

/// A commented-out line of the reference that is config (a header or one key and its value),
/// with its `#` marks removed.
fn commented_config(line: &str) -> Option<&str> {
    let trimmed = line.trim_start();
    if !trimmed.starts_with('#') {
        return None;
    }
    let candidate = trimmed.trim_start_matches(|c: char| c == '#' || c.is_whitespace());
    let table: toml::Table = toml::from_str(candidate).ok()?;
    (table.len() == 1).then_some(candidate)
}

fn walk(prefix: &str, table: &toml::Table, keys: &mut ReferenceKeys) {
    for (key, value) in table {
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        keys.known.insert(path.clone());
        match value {
            toml::Value::Table(inner) if !MAP_KEYS.contains(&path.as_str()) => {
                keys.headers.insert(path.replace("[]", ""));
                walk(&path, inner, keys);
            }
            toml::Value::Array(items)
                if !items.is_empty() && items.iter().all(|item| item.is_table()) =>
            {
                keys.headers.insert(path.replace("[]", ""));
                for item in items {
                    walk(
                        &format!("{path}[]"),
                        item.as_table().expect("a table"),
                        keys,
                    );
                }
            }
            _ => {
                keys.leaves.insert(path);
            }
        }
    }
}

/// config/reference.toml with its commented-out config uncommented in place (so line numbers
/// stay those of the file): every key it describes, set.
pub(crate) fn uncommented_reference() -> String {
    let text = read(Path::new("config/reference.toml"));
    let uncommented: Vec<&str> = text
        .lines()
        .map(|line| commented_config(line).unwrap_or(line))
        .collect();
    uncommented.join("\n")
}

fn reference_keys() -> ReferenceKeys {
    let uncommented = uncommented_reference();
    let table: toml::Table = toml::from_str(&uncommented).unwrap_or_else(|error| {
        panic!(
            "config/reference.toml with its commented-out keys uncommented is not valid TOML \
             (write alternatives so that each key appears once per table): {error}"
        )
    });
    // The schema check: deserializing (not validating: alternatives may exclude each other)
    // fails on any key the config structs do not have.
    if let Err(error) = toml::from_str::<Config>(&uncommented) {
        panic!(
            "config/reference.toml, with its commented-out keys uncommented, does not fit the \
             config schema: {error}"
        );
    }
    let mut keys = ReferenceKeys {
        known: BTreeSet::new(),
        leaves: BTreeSet::new(),
        headers: BTreeSet::new(),
    };
    walk("", &table, &mut keys);
    keys
}

/// A span in backticks that names a key (`runner.max_body_bytes`, `bus.kind = "nats"`),
/// reduced to the key; None for anything else.
fn key_in_span(span: &str) -> Option<&str> {
    let key = span.split(" =").next().unwrap_or(span).trim();
    let first = key.split(['.', '[']).next().unwrap_or("");
    if !KEY_ROOTS.contains(&first)
        || key == first
        || FILE_SUFFIXES.iter().any(|suffix| key.ends_with(suffix))
    {
        return None;
    }
    let shaped = key
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_.[]".contains(c));
    shaped.then_some(key)
}

/// A span in backticks that is a TOML table header (`[bus.nats]`, `[[checks]]`), reduced to
/// its path; None for anything else.
fn header_in_span(span: &str) -> Option<&str> {
    let inner = span
        .strip_prefix("[[")
        .and_then(|s| s.strip_suffix("]]"))
        .or_else(|| span.strip_prefix('[').and_then(|s| s.strip_suffix(']')))?;
    let first = inner.split('.').next().unwrap_or("");
    let shaped = inner
        .chars()
        .all(|c| c.is_ascii_lowercase() || c == '_' || c == '.');
    (KEY_ROOTS.contains(&first) && shaped).then_some(inner)
}

#[test]
fn every_config_key_the_docs_name_exists_and_every_key_is_documented() {
    let reference = reference_keys();
    let mut problems = Vec::new();

    // The configuration reference tables.
    let configuration = Path::new("docs/configuration.md");
    let mut documented = BTreeSet::new();
    let mut in_table = false;
    for (number, line) in prose_lines(&read(configuration)) {
        if line.trim() == CONFIG_TABLE_HEADER {
            in_table = true;
            continue;
        }
        if !line.starts_with('|') {
            in_table = false;
        }
        if !in_table || line.starts_with("|---") {
            continue;
        }
        let first_cell = line
            .trim_start_matches('|')
            .split(" | ")
            .next()
            .unwrap_or("");
        let (spans, _) = code_spans(first_cell);
        if spans.is_empty() {
            problems.push(format!(
                "{}:{number}: a row of a key table names no key in backticks",
                configuration.display()
            ));
        }
        for span in spans {
            if !reference.known.contains(&span) {
                problems.push(format!(
                    "{}:{number}: `{span}` is documented but config/reference.toml neither sets \
                     nor describes it",
                    configuration.display()
                ));
            }
            documented.insert(span);
        }
    }
    for leaf in &reference.leaves {
        if !documented.contains(leaf) {
            problems.push(format!(
                "config/reference.toml sets or describes `{leaf}`, but no row of a key table \
                 in docs/configuration.md documents it"
            ));
        }
    }

    // Keys and table headers named anywhere in the docs.
    let mut named = 0;
    for file in doc_files() {
        for (number, line) in prose_lines(&read(&file)) {
            for span in code_spans(line).0 {
                if let Some(key) = key_in_span(&span) {
                    named += 1;
                    if !reference.known.contains(key) {
                        problems.push(format!(
                            "{}:{number}: `{span}` names a config key that config/reference.toml \
                             neither sets nor describes",
                            file.display()
                        ));
                    }
                } else if let Some(header) = header_in_span(&span) {
                    named += 1;
                    if !reference.headers.contains(header) {
                        problems.push(format!(
                            "{}:{number}: `{span}` names a config table that config/reference.toml \
                             does not have",
                            file.display()
                        ));
                    }
                }
            }
        }
    }

    assert!(
        documented.len() > 50,
        "found only {} documented keys in docs/configuration.md: is the table header still \
         `{CONFIG_TABLE_HEADER}`?",
        documented.len()
    );
    assert!(
        named > documented.len(),
        "found only {named} key names in the docs"
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn anchors_follow_github() {
    let text = "# Distributed mode (NATS)\n## `[[checks]]`\n## `type = \"http\"`\n\
                ```\n# not a heading\n```\n## Reload\n## Reload\n";
    let expected: BTreeSet<String> = [
        "distributed-mode-nats",
        "checks",
        "type--http",
        "reload",
        "reload-1",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(anchors(text), expected);
}

#[test]
fn key_names_are_told_from_file_names_and_prose() {
    assert_eq!(
        key_in_span("runner.max_body_bytes"),
        Some("runner.max_body_bytes")
    );
    assert_eq!(key_in_span("bus.kind = \"nats\""), Some("bus.kind"));
    assert_eq!(
        key_in_span("checks[].assertions[].key"),
        Some("checks[].assertions[].key")
    );
    assert_eq!(key_in_span("agent.rs"), None);
    assert_eq!(key_in_span("checker.toml"), None);
    assert_eq!(key_in_span("runner.workers.<type>"), None);
    assert_eq!(key_in_span("checks"), None);
    assert_eq!(
        header_in_span("[[checks.assertions]]"),
        Some("checks.assertions")
    );
    assert_eq!(header_in_span("[bus.nats]"), Some("bus.nats"));
    assert_eq!(header_in_span("[a-z0-9_-]+"), None);
}

/// A Default cell of docs/configuration.md, as far as it states a value.
#[derive(Debug)]
enum Documented {
    /// `required`, `required with ...`, `(one of the two)`, `unset ...`: no default.
    Nothing,
    /// One value in backticks, maybe with a remark: `10s`, `[]` (any 2xx), `10` each.
    Value(serde_json::Value),
    /// A default that depends on something else (the host name, the interval): prose.
    Prose,
}

fn documented_default(cell: &str) -> Documented {
    let cell = cell.trim();
    // "required for `alertmanager`; `https://...` for `pagerduty`" is a default per type.
    let per_type = cell.starts_with("required for");
    if !per_type
        && (cell.starts_with("required")
            || cell.starts_with("unset")
            || cell.starts_with("(one of"))
    {
        return Documented::Nothing;
    }
    let Some(rest) = cell.strip_prefix('`') else {
        return Documented::Prose;
    };
    let Some((value, remark)) = rest.split_once('`') else {
        return Documented::Prose;
    };
    let remark = remark.trim();
    if !(remark.is_empty() || remark.starts_with('(') || remark == "each") {
        return Documented::Prose;
    }
    // TOML's reading of the value (`[]`, `"fail"`, `true`, `10`), else the bare text (`10s`).
    let parsed = toml::from_str::<toml::Table>(&format!("v = {value}"))
        .ok()
        .and_then(|mut table| table.remove("v"));
    Documented::Value(match parsed {
        Some(value) => serde_json::to_value(value).unwrap(),
        None => serde_json::Value::String(value.to_string()),
    })
}

/// Whether a documented default is the schema's: durations compared as durations (`24h` is
/// humantime's `1day`), numbers as numbers.
fn same_default(documented: &serde_json::Value, schema: &serde_json::Value) -> bool {
    use serde_json::Value;
    match (documented, schema) {
        (Value::String(a), Value::String(b)) => {
            a == b
                || matches!(
                    (humantime::parse_duration(a), humantime::parse_duration(b)),
                    (Ok(a), Ok(b)) if a == b
                )
        }
        (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
        _ => documented == schema,
    }
}

/// The leaf keys of the schema (those that take a value), as docs/configuration.md writes
/// them: `agent.listen`, `checks[].tls.ca_file`, `checks[].assertions[].key`.
fn schema_leaves(
    root: &serde_json::Value,
    pointer: &str,
    path: &str,
    leaves: &mut BTreeSet<String>,
) {
    let resolve = |pointer: &str| -> String {
        match root
            .pointer(&format!("{pointer}/$ref"))
            .and_then(|reference| reference.as_str())
        {
            Some(reference) => reference.trim_start_matches('#').to_string(),
            None => pointer.to_string(),
        }
    };
    let at = resolve(pointer);
    let schema = root.pointer(&at).unwrap();
    // An array of tables is walked as `key[]`; a boolean-or-table (`tls`) as its table.
    if schema.get("type").and_then(|t| t.as_str()) == Some("array") {
        let items = resolve(&format!("{at}/items"));
        let variants = root
            .pointer(&format!("{items}/oneOf"))
            .and_then(|variants| variants.as_array())
            .map_or(0, Vec::len);
        let tables = root.pointer(&format!("{items}/properties")).is_some()
            || (0..variants).any(|i| {
                root.pointer(&format!(
                    "{}/properties",
                    resolve(&format!("{items}/oneOf/{i}"))
                ))
                .is_some()
            });
        if tables {
            return schema_leaves(root, &items, &format!("{path}[]"), leaves);
        }
    }
    let mut objects = vec![at.clone()];
    for combinator in ["oneOf", "anyOf"] {
        if let Some(variants) = schema.get(combinator).and_then(|v| v.as_array()) {
            objects.extend((0..variants.len()).map(|i| resolve(&format!("{at}/{combinator}/{i}"))));
        }
    }
    let mut table = false;
    for object in objects {
        if let Some(properties) = root
            .pointer(&format!("{object}/properties"))
            .and_then(|p| p.as_object())
        {
            table = true;
            for key in properties.keys() {
                let child = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                schema_leaves(root, &format!("{object}/properties/{key}"), &child, leaves);
            }
        }
    }
    if !table && !path.is_empty() {
        leaves.insert(path.to_string());
    }
}

/// docs/configuration.md's key tables say what the schema says (`bastion config schema`,
/// derived from the config structs and their serde defaults): every documented default is the
/// schema's, a key documented as unset or required has no default there, and every key of
/// the schema has a row. The tables stay hand-written (their prose, links and remarks read
/// better than generated text); this keeps their facts generated.
#[test]
fn the_key_tables_hold_the_schemas_keys_and_defaults() {
    let schema = bastion_agent::config::json_schema::json_schema();
    let configuration = Path::new("docs/configuration.md");
    let mut problems = Vec::new();
    let mut documented = BTreeSet::new();
    let mut in_table = false;
    let mut check_type: Option<String> = None;
    let mut checked = 0;
    for (number, line) in prose_lines(&read(configuration)) {
        if line.starts_with("## ") {
            check_type = None;
        }
        if let Some(heading) = line.strip_prefix("### ") {
            check_type = heading
                .strip_prefix("`type = \"")
                .and_then(|rest| rest.split('"').next())
                .map(str::to_string)
                .or(check_type.filter(|_| heading.contains("[checks.tls]")));
        }
        if line.trim() == CONFIG_TABLE_HEADER {
            in_table = true;
            continue;
        }
        if !line.starts_with('|') {
            in_table = false;
        }
        if !in_table || line.starts_with("|---") {
            continue;
        }
        let cells: Vec<&str> = line.trim_start_matches('|').split(" | ").collect();
        let default = documented_default(cells.get(1).copied().unwrap_or(""));
        for key in code_spans(cells[0]).0 {
            documented.insert(key.clone());
            let mut pointers = bastion_agent::config::json_schema::properties(&schema, &key);
            // Under `type = "tcp"`, `checks[].tls` is the tcp check's.
            if let Some(check_type) = &check_type {
                let variants = schema["$defs"]["CheckConfig"]["oneOf"].as_array().unwrap();
                if let Some(index) = variants.iter().position(|variant| {
                    variant["properties"]["type"]["const"] == check_type.as_str()
                }) {
                    let own = format!("/$defs/CheckConfig/oneOf/{index}/");
                    if pointers.iter().any(|pointer| pointer.starts_with(&own)) {
                        pointers.retain(|pointer| pointer.starts_with(&own));
                    }
                }
            }
            if pointers.is_empty() {
                if key != "checks[].type" && key != "notifiers[].type" {
                    problems.push(format!(
                        "{}:{number}: `{key}` is not in the schema",
                        configuration.display()
                    ));
                }
                continue;
            }
            for pointer in pointers {
                checked += 1;
                let schema_default = schema.pointer(&pointer).unwrap().get("default");
                let fine = match (&default, schema_default) {
                    (Documented::Value(doc), Some(schema_default)) => {
                        same_default(doc, schema_default)
                    }
                    (Documented::Value(_), None) | (Documented::Nothing, Some(_)) => false,
                    (Documented::Nothing, None) | (Documented::Prose, None) => true,
                    // A default in prose ("`10s`, or nine tenths of the interval") must still
                    // name the schema's value.
                    (Documented::Prose, Some(schema_default)) => {
                        let shown = match schema_default {
                            serde_json::Value::String(text) => text.clone(),
                            other => other.to_string(),
                        };
                        cells[1].contains(&format!("`{shown}`"))
                    }
                };
                if !fine {
                    problems.push(format!(
                        "{}:{number}: `{key}` is documented with default {:?} but the schema ({pointer}) says {}",
                        configuration.display(),
                        cells[1].trim(),
                        schema_default.map_or("none".to_string(), |value| value.to_string()),
                    ));
                }
            }
        }
    }
    let mut leaves = BTreeSet::new();
    schema_leaves(&schema, "", "", &mut leaves);
    for leaf in &leaves {
        if !documented.contains(leaf)
            && !MAP_KEYS
                .iter()
                .any(|map| leaf.starts_with(&format!("{map}.")))
        {
            problems.push(format!("the schema has `{leaf}`, but no row of a key table in docs/configuration.md documents it"));
        }
    }
    assert!(
        checked > 100,
        "only {checked} documented keys were found in the schema"
    );
    assert!(
        leaves.len() > 100,
        "only {} schema keys: {leaves:?}",
        leaves.len()
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
