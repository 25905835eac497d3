//! The JSON Schema (draft 2020-12) of the configuration file, derived from the serde structs
//! of the sections (`agent.rs` ... `check.rs`, `probe.rs`, `notify.rs`) with schemars: their doc
//! comments become the descriptions, their serde defaults the defaults, `bounds.rs` the ranges. `bastion config schema`
//! prints it, `config/bastion.schema.json` ships it for editors (Even Better TOML, the YAML
//! language server), and the docs test checks docs/configuration.md's tables against it.
//! It never holds a hand-written copy of a key: what it adds to schemars' output is how
//! editors need a `type`-tagged flattened spec, and the ranges of `bounds.rs`.

use super::bounds::all_bounds;
use crate::problem::Range;
use schemars::Schema;
use serde_json::{json, Map, Value};
use std::time::Duration;

pub use crate::checks::settings::{Humantime, DURATION_PATTERN};

/// For a key whose default depends on the machine (`agent.id`, the host name; `history.path`,
/// under `$STATE_DIRECTORY`): the schema states no default rather than the build machine's.
pub fn machine_dependent(schema: &mut Schema) {
    schema.remove("default");
}

/// The schema of the whole configuration file, as `bastion config schema` prints it.
pub fn json_schema() -> Value {
    let mut schema = schemars::generate::SchemaSettings::draft2020_12()
        .into_generator()
        .into_root_schema_for::<super::Config>()
        .to_value();
    if let Some(root) = schema.as_object_mut() {
        root.insert("title".into(), json!("bastion configuration"));
    }
    without_null(&mut schema);
    for tagged in ["CheckConfig", "NotifierConfig"] {
        if let Some(definition) = schema.pointer_mut(&format!("/$defs/{tagged}")) {
            self_contained_variants(definition);
        }
    }
    for bound in all_bounds() {
        for pointer in properties(&schema, bound.key) {
            if let Some(Value::Object(property)) = schema.pointer_mut(&pointer) {
                apply_range(property, bound.range);
            }
        }
    }
    schema
}

/// A struct with a flattened `type`-tagged enum (`[[checks]]`, `[[notifiers]]`) comes out of
/// schemars as its own keys beside a `oneOf` whose variants may not close the object (they
/// cannot see the struct's keys), so an unknown key would pass. Each variant gets the shared
/// keys too and is closed with `additionalProperties: false`, which every editor understands
/// (no `unevaluatedProperties`); the shared keys stay on the struct, with a `type` listing
/// the variants, so an editor completes them before the type is written.
fn self_contained_variants(definition: &mut Value) {
    let Some(object) = definition.as_object_mut() else {
        return;
    };
    let shared = object
        .get("properties")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let mut types = Vec::new();
    if let Some(Value::Array(variants)) = object.get_mut("oneOf") {
        for variant in variants.iter_mut().filter_map(Value::as_object_mut) {
            let tag = variant
                .get("properties")
                .and_then(|properties| properties.pointer("/type/const"))
                .cloned()
                .unwrap_or(Value::Null);
            if let Some(Value::Object(own)) = variant.get_mut("properties") {
                for (key, value) in &shared {
                    own.entry(key.clone()).or_insert_with(|| value.clone());
                }
            }
            variant.insert("additionalProperties".into(), Value::Bool(false));
            if let Value::String(tag) = &tag {
                variant.insert("title".into(), json!(format!("type = \"{tag}\"")));
            }
            types.push(tag);
        }
    }
    if let Some(Value::Object(properties)) = object.get_mut("properties") {
        properties.insert(
            "type".into(),
            json!({ "type": "string", "enum": types, "description": "The type, which decides the other keys." }),
        );
    }
    if let Some(Value::Array(required)) = object.get_mut("required") {
        required.push(json!("type"));
    }
}

/// An `Option` key is one that may be left out: TOML has no null, and a YAML `key: ~` means
/// the same as leaving the key out, so the `null` schemars adds to an `Option` (as a type, an
/// `anyOf` variant or a default) goes, and an editor offers only values that mean something.
fn without_null(schema: &mut Value) {
    match schema {
        Value::Object(object) => {
            if object.get("default") == Some(&Value::Null) {
                object.remove("default");
            }
            if let Some(Value::Array(types)) = object.get_mut("type") {
                types.retain(|kind| kind != "null");
                if let [only] = types.as_slice() {
                    let only = only.clone();
                    object.insert("type".into(), only);
                }
            }
            if let Some(Value::Array(variants)) = object.get_mut("anyOf") {
                variants.retain(|variant| *variant != json!({ "type": "null" }));
                if let [only] = variants.as_slice() {
                    let only = only.clone();
                    object.remove("anyOf");
                    if let Value::Object(only) = only {
                        for (key, value) in only {
                            object.entry(key).or_insert(value);
                        }
                    }
                }
            }
            object.values_mut().for_each(without_null);
        }
        Value::Array(items) => items.iter_mut().for_each(without_null),
        _ => {}
    }
}

/// JSON pointers to the property schemas a key path names (`history.buffer`, `checks[].count`,
/// as `bounds.rs` and docs/configuration.md write them), through `$ref`s, array items and the
/// variants of a tagged spec: one per variant that has the key.
pub fn properties(root: &Value, key: &str) -> Vec<String> {
    let mut at = vec![String::new()];
    for segment in key.split('.') {
        let (name, many) = match segment.strip_suffix("[]") {
            Some(name) => (name, true),
            None => (segment, false),
        };
        let mut next = Vec::new();
        for pointer in &at {
            for object in object_schemas(root, pointer) {
                let property = format!("{object}/properties/{name}");
                if root.pointer(&property).is_some() {
                    next.push(if many {
                        format!("{}/items", resolve(root, &property))
                    } else {
                        property
                    });
                }
            }
        }
        next.sort();
        next.dedup();
        at = next;
    }
    at
}

/// The schema at `pointer` with its `$ref` followed, and its `oneOf`/`anyOf` variants.
fn object_schemas(root: &Value, pointer: &str) -> Vec<String> {
    let pointer = resolve(root, pointer);
    let mut found = vec![pointer.clone()];
    for combinator in ["oneOf", "anyOf"] {
        if let Some(Value::Array(variants)) = root.pointer(&format!("{pointer}/{combinator}")) {
            for index in 0..variants.len() {
                found.push(resolve(root, &format!("{pointer}/{combinator}/{index}")));
            }
        }
    }
    found
}

/// `pointer`, or where its `$ref` (`#/$defs/Name`) points.
fn resolve(root: &Value, pointer: &str) -> String {
    match root
        .pointer(&format!("{pointer}/$ref"))
        .and_then(Value::as_str)
        .and_then(|reference| reference.strip_prefix('#'))
    {
        Some(target) => target.to_string(),
        None => pointer.to_string(),
    }
}

/// A count's range as `minimum` and `maximum`; a duration's (a string, for JSON Schema) in
/// its description.
fn apply_range(property: &mut Map<String, Value>, range: Range) {
    match range {
        Range::Count { min, max } => {
            property.insert("minimum".into(), json!(min));
            property.insert("maximum".into(), json!(max));
        }
        Range::Duration { min, max } => {
            let low = if min == Duration::from_nanos(1) {
                "longer than 0s".to_string()
            } else {
                format!("at least {}", humantime::format_duration(min))
            };
            let text = format!("Range: {low}, at most {}.", humantime::format_duration(max));
            let description = match property.get("description").and_then(Value::as_str) {
                Some(description) => format!("{description}\n{text}"),
                None => text,
            };
            property.insert("description".into(), json!(description));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pattern takes what humantime takes, and refuses what it refuses.
    #[test]
    fn the_duration_pattern_agrees_with_humantime() {
        let pattern = regex::Regex::new(DURATION_PATTERN).unwrap();
        for text in [
            "10s",
            "1m 30s",
            "1m30s",
            "250ms",
            "2h",
            "7days",
            "1day",
            "30d",
            "10years",
            "1w",
            "100 ms",
            "5min",
            "3hrs",
            "1M",
            "0s",
            "1h 2m 3s 4ms",
            "10nsec",
            "7us",
            "1µs",
            "1.5s",
        ] {
            assert!(humantime::parse_duration(text).is_ok(), "{text}");
            assert!(pattern.is_match(text), "the pattern refuses {text}");
        }
        for text in ["", "10", "s", "10 parsecs", "-1s", "ten seconds", "10s,"] {
            assert!(humantime::parse_duration(text).is_err(), "{text}");
            assert!(!pattern.is_match(text), "the pattern takes {text}");
        }
    }

    /// Every range of `bounds.rs` lands on a key of the schema: a renamed key or a new
    /// section the walk does not reach fails here instead of silently losing its range.
    #[test]
    fn every_bound_reaches_its_key() {
        let schema = json_schema();
        for bound in all_bounds() {
            let found = properties(&schema, bound.key);
            assert!(!found.is_empty(), "{} is not in the schema", bound.key);
            for pointer in found {
                let property = schema.pointer(&pointer).unwrap();
                match bound.range {
                    Range::Count { min, max } => {
                        assert_eq!(property["minimum"], json!(min), "{}", bound.key);
                        assert_eq!(property["maximum"], json!(max), "{}", bound.key);
                    }
                    Range::Duration { .. } => assert!(
                        property["description"]
                            .as_str()
                            .unwrap()
                            .contains("Range: "),
                        "{}",
                        bound.key
                    ),
                }
            }
        }
        let counts = properties(&schema, "checks[].count");
        assert_eq!(counts.len(), 1, "only icmp has `count`: {counts:?}");
    }

    /// A check variant holds the shared keys and is closed; the machine's host name is no
    /// default; defaults are the real ones, durations as humantime writes them.
    #[test]
    fn variants_are_closed_and_defaults_are_the_real_ones() {
        let schema = json_schema();
        let http = &schema["$defs"]["CheckConfig"]["oneOf"][0];
        assert_eq!(http["properties"]["type"]["const"], "http");
        assert_eq!(http["additionalProperties"], false);
        assert!(http["properties"]["interval"].is_object());
        assert!(http["properties"].get("secrets").is_none());
        assert!(schema["$defs"]["AgentConfig"]["properties"]["id"]
            .get("default")
            .is_none());
        assert_eq!(
            schema["$defs"]["AgentConfig"]["properties"]["listen"]["default"],
            "127.0.0.1:9464"
        );
        assert_eq!(
            schema["$defs"]["NatsConfig"]["properties"]["results_max_age"]["default"],
            json!(
                humantime::format_duration(super::super::bus::default_results_max_age())
                    .to_string()
            )
        );
        assert_eq!(http["properties"]["enable_http2"]["default"], true);
        assert!(!serde_json::to_string(&schema).unwrap().contains("\"null\""));
    }

    /// The defaults a check applies in code (`CheckConfig::min_failing_count()`...) are the
    /// ones the schema states.
    #[test]
    fn defaults_applied_in_code_are_the_schemas() {
        let schema = json_schema();
        let check: super::super::CheckConfig = toml::from_str(
            "name = \"web\"\ntype = \"http\"\nurl = \"http://127.0.0.1/\"\ninterval = \"1m\"\n",
        )
        .unwrap();
        let shared = &schema["$defs"]["CheckConfig"]["properties"];
        assert_eq!(
            shared["min_failing_count"]["default"],
            json!(check.min_failing_count())
        );
        assert_eq!(
            shared["min_failing_locations"]["default"],
            json!(check.min_failing_locations())
        );
        let time = shared["min_failing_time"]["default"].as_str().unwrap();
        assert_eq!(
            humantime::parse_duration(time).unwrap(),
            check.min_failing_time()
        );
    }
}
