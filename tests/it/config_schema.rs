//! config/bastion.schema.json, the JSON Schema editors use for bastion configs: it is what
//! `bastion config schema` prints, it takes every config bastion ships (and the reference
//! with its commented-out keys set), and it refuses the mistakes bastion refuses: an unknown
//! key (at the top, in a check, a key of another check type), a wrong type, a duration that
//! is not one, a missing or unknown `type`, a count out of range. Validation is jsonschema_rs
//! (draft 2020-12) in the Python venv `.ci/test` installs for schemathesis, so CI compiles
//! no validator.

use bastion_agent::config::Config;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The shipped schema, parsed.
fn shipped() -> Value {
    serde_json::from_str(
        &std::fs::read_to_string(root().join("config/bastion.schema.json")).unwrap(),
    )
    .unwrap()
}

/// A config file's text as the JSON document the schema describes.
fn as_json(name: &str, text: &str) -> Value {
    if name.ends_with(".yaml") || name.ends_with(".yml") {
        serde_saphyr::from_str(text).unwrap_or_else(|error| panic!("{name}: {error}"))
    } else {
        let table: toml::Table =
            toml::from_str(text).unwrap_or_else(|error| panic!("{name}: {error}"));
        serde_json::to_value(table).unwrap()
    }
}

/// Each document's validation errors under the shipped schema (empty: valid), by jsonschema_rs.
fn errors(documents: &[(String, Value)]) -> Vec<(String, Vec<String>)> {
    let scratch = crate::common::process::scratch_dir("config-schema");
    let mut paths = Vec::new();
    for (index, (_, document)) in documents.iter().enumerate() {
        let path = scratch.join(format!("{index}.json"));
        std::fs::write(&path, serde_json::to_vec(document).unwrap()).unwrap();
        paths.push(path);
    }
    let python = python();
    let output = Command::new(&python)
        .arg("-c")
        .arg(
            "import json, sys, jsonschema_rs\n\
             schema = json.load(open(sys.argv[1]))\n\
             jsonschema_rs.meta.validate(schema)\n\
             validator = jsonschema_rs.Draft202012Validator(schema)\n\
             print(json.dumps([[e.message for e in validator.iter_errors(json.load(open(p)))] for p in sys.argv[2:]]))",
        )
        .arg(root().join("config/bastion.schema.json"))
        .args(&paths)
        .output()
        .unwrap_or_else(|error| panic!("{}: {error}", python.display()));
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let found: Vec<Vec<String>> = serde_json::from_slice(&output.stdout).unwrap();
    documents
        .iter()
        .map(|(name, _)| name.clone())
        .zip(found)
        .collect()
}

/// The venv's python beside schemathesis' `st` (jsonschema_rs comes with schemathesis).
fn python() -> PathBuf {
    crate::api_contract::schemathesis().with_file_name("python")
}

/// config/bastion.schema.json is what the binary prints: regenerate it rather than edit it.
#[test]
fn the_shipped_schema_is_what_bastion_config_schema_prints() {
    let output = Command::new(env!("CARGO_BIN_EXE_bastion"))
        .args(["config", "schema"])
        .output()
        .unwrap();
    assert!(output.status.success());
    let printed = String::from_utf8(output.stdout).unwrap();
    let file = std::fs::read_to_string(root().join("config/bastion.schema.json")).unwrap();
    let differs = printed
        .lines()
        .zip(file.lines())
        .position(|(printed, file)| printed != file);
    assert!(
        printed == file,
        "config/bastion.schema.json differs from `bastion config schema` (first at line {}); \
         regenerate it: cargo run -q -- config schema > config/bastion.schema.json",
        differs.map_or(printed.lines().count().min(file.lines().count()), |index| {
            index
        }) + 1
    );
    let schema = shipped();
    assert_eq!(
        schema["$schema"],
        "https://json-schema.org/draft/2020-12/schema"
    );
    assert_eq!(schema["additionalProperties"], false);
}

#[test]
fn the_schema_takes_every_shipped_config() {
    let mut documents = Vec::new();
    for entry in std::fs::read_dir(root().join("config")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.ends_with(".toml") || name.ends_with(".yaml") || name.ends_with(".yml") {
            let text = std::fs::read_to_string(&path).unwrap();
            documents.push((name.clone(), as_json(&name, &text)));
        }
    }
    assert!(documents.len() >= 6, "{documents:?}");
    let reference = crate::docs::uncommented_reference();
    documents.push((
        "reference.toml, uncommented".into(),
        as_json("reference.toml", &reference),
    ));
    let packaged = std::fs::read_to_string(root().join("deploy/debian/bastion.toml")).unwrap();
    documents.push((
        "deploy/debian/bastion.toml".into(),
        as_json("bastion.toml", &packaged),
    ));
    let refused: Vec<_> = errors(&documents)
        .into_iter()
        .filter(|(_, errors)| !errors.is_empty())
        .collect();
    assert!(refused.is_empty(), "{refused:#?}");
}

const CHECK: &str = "[[checks]]\nname = \"web\"\ntype = \"http\"\nurl = \"http://127.0.0.1:9464/healthz\"\ninterval = \"10s\"\n";

#[test]
fn the_schema_refuses_unknown_keys_wrong_types_and_values_out_of_range() {
    let icmp =
        "[[checks]]\nname = \"ping\"\ntype = \"icmp\"\nhost = \"127.0.0.1\"\ninterval = \"10s\"\n";
    let cases: Vec<(&str, String, bool)> = vec![
        // (what, config, also refused by serde: a shape rather than a range)
        ("an unknown key in [agent]", format!("[agent]\nlisen = \"127.0.0.1:9464\"\n{CHECK}"), true),
        ("an unknown top-level table", format!("[agnet]\nid = \"a\"\n{CHECK}"), true),
        ("an unknown key in a check", format!("{CHECK}colour = \"red\"\n"), true),
        ("a dns key in an http check", format!("{CHECK}query = \"example.com\"\n"), true),
        ("an unknown key in a notifier", format!("{CHECK}[[notifiers]]\nname = \"n\"\ntype = \"slack\"\nurl_file = \"/x\"\nchannel = \"#ops\"\n"), true),
        ("an interval that is a number", CHECK.replace("\"10s\"", "10"), true),
        ("a duration that is not one", CHECK.replace("\"10s\"", "\"10 parsecs\""), true),
        ("workers that are a string", format!("[runner.workers]\nhttp = \"ten\"\n{CHECK}"), true),
        ("a check without a type", CHECK.replace("type = \"http\"\n", ""), true),
        ("an unknown check type", CHECK.replace("\"http\"", "\"ftp\""), true),
        ("a bus kind that is not one", format!("[bus]\nkind = \"kafka\"\n{CHECK}"), true),
        ("both file and srv in instances_from", format!("{CHECK}instances_from = {{ file = \"/t.json\", srv = \"_http._tcp.web\" }}\n"), true),
        ("an icmp count out of range", format!("{icmp}count = 1000\n"), false),
        ("zero history buffer", format!("[history]\nbuffer = 0\n{CHECK}"), false),
    ];
    // The base is valid, so each refusal below is the mistake's.
    let mut documents = vec![("the base".to_string(), as_json("base.toml", CHECK))];
    for (what, text, shape) in &cases {
        if *shape {
            assert!(
                toml::from_str::<Config>(text).is_err(),
                "bastion takes {what}, so the schema must too:\n{text}"
            );
        }
        documents.push((what.to_string(), as_json("case.toml", text)));
    }
    documents.push(("an icmp check".into(), as_json("icmp.toml", icmp)));
    let found = errors(&documents);
    for (what, errors) in &found {
        let valid = what == "the base" || what == "an icmp check";
        assert_eq!(errors.is_empty(), valid, "{what}: {errors:?}");
    }
}
