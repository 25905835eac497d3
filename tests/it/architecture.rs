//! The architecture test: reads the crate's sources and fails when a `crate::` edge between
//! top-level modules points up the layer table below (which also rules out every cycle), when
//! two sibling modules inside a folder import each other in a circle, or when an invariant of
//! ARCHITECTURE.md is broken. It parses nothing but text, so it stays fast and needs no tool.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every top-level module of `src/` and its layer: a module may import only modules of a
/// strictly lower layer. ARCHITECTURE.md shows the same table; a new module gets a row here.
const LAYERS: &[(&str, u8)] = &[
    // Foundation: the shared vocabulary and leaf utilities. They import nothing from the crate.
    ("model", 0),
    ("time_format", 0),
    ("systemd", 0),
    ("telemetry", 0),
    ("run_window", 0),
    ("saved_state", 0),
    ("problem", 0),
    // Name resolution, which check types use.
    ("resolve", 1),
    // The check types: each one's settings, probe and series in its file, and what they share.
    ("checks", 2),
    // The receiver types: each one's settings, build and delivery attempt in its file.
    ("receivers", 3),
    // The configuration file's schema, defaults and loading.
    ("config", 4),
    // The wire contract (messages, subject names) and config-derived facts.
    ("messages", 5),
    ("subjects", 5),
    ("limits", 5),
    // The probe engine's parts, the agent's own metrics and pure policies.
    ("assertions", 6),
    ("discovery", 6),
    ("state", 6),
    ("locations", 6),
    ("episode", 6),
    ("metrics", 6),
    ("report", 6),
    ("message_bounds", 6),
    // A check definition compiled, ready to run.
    ("compiled", 7),
    // History: the store, its writer and queries (below the sink that feeds it).
    ("history", 7),
    // The pipeline.
    ("bus", 8),
    // Notifications: routing of episode events, delivery queues, maintenance windows.
    ("notify", 8),
    ("lease", 9),
    ("runner", 9),
    ("validate", 9),
    ("checker", 10),
    ("results", 10),
    ("heartbeat", 10),
    // The agent: reload, endpoints, wiring.
    ("reload", 11),
    ("http", 12),
    ("agent", 13),
];

/// Folders whose files must not import each other in a circle (a file may use its parent's
/// `mod.rs`, which declares it).
const FOLDERS: &[&str] = &[
    "agent",
    "bus",
    "checker",
    "checks",
    "config",
    "discovery",
    "history",
    "http",
    "metrics",
    "notify",
    "receivers",
    "results",
    "runner",
];

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// A source file with its test modules and comments removed: tests may import anything.
struct Source {
    /// Path below `src/`, with `/` separators, e.g. `checks/http.rs`.
    path: String,
    code: String,
}

fn sources() -> Vec<Source> {
    let mut found = Vec::new();
    let mut folders = vec![src_dir()];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).expect("src/ is readable") {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                folders.push(path);
            } else if path.extension().is_some_and(|ext| ext == "rs") {
                let text = std::fs::read_to_string(&path).expect("a source file is readable");
                let relative = path
                    .strip_prefix(src_dir())
                    .expect("below src/")
                    .to_string_lossy()
                    .replace('\\', "/");
                found.push(Source {
                    path: relative,
                    code: without_tests_and_comments(&text),
                });
            }
        }
    }
    found.sort_by(|a, b| a.path.cmp(&b.path));
    found
}

fn without_tests_and_comments(text: &str) -> String {
    let code = match text.find("#[cfg(test)]\nmod tests") {
        Some(start) => &text[..start],
        None => text,
    };
    code.lines()
        .map(|line| match line.find("//") {
            // `//` inside a string literal (a URL) is rare in `use` lines; cutting it loses
            // nothing this test reads.
            Some(at) => &line[..at],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The top-level module a file belongs to (`checks/http.rs` -> `checks`), or None for the
/// crate roots.
fn top_module(path: &str) -> Option<&str> {
    let first = path.split('/').next()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (name != "lib" && name != "main").then_some(name)
}

/// Every `crate::NAME` this code names, with `use crate::{a, b::c}` groups expanded.
fn crate_references(code: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        let after = &rest[at + "crate::".len()..];
        if let Some(group) = after.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            // Only the first path segment of each item names a module.
            for item in group[..end].split(',') {
                let name: String = item
                    .trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    names.insert(name);
                }
            }
        } else {
            let name: String = after
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                names.insert(name);
            }
        }
        rest = after;
    }
    names
}

/// Sibling files a file inside a folder names through `super::NAME` or `crate::folder::NAME`.
fn sibling_references(code: &str, folder: &str, siblings: &BTreeSet<String>) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for prefix in ["super::".to_string(), format!("crate::{folder}::")] {
        let mut rest = code;
        while let Some(at) = rest.find(&prefix) {
            let after = &rest[at + prefix.len()..];
            let items: Vec<&str> = match after.strip_prefix('{') {
                Some(group) => group[..group.find('}').unwrap_or(group.len())]
                    .split(',')
                    .collect(),
                None => vec![after],
            };
            for item in items {
                let name: String = item
                    .trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if siblings.contains(&name) {
                    names.insert(name);
                }
            }
            rest = after;
        }
    }
    names
}

/// Module-level edges: (from, to) -> the files that make the edge.
fn module_edges(sources: &[Source]) -> BTreeMap<(String, String), BTreeSet<String>> {
    let layers: BTreeMap<&str, u8> = LAYERS.iter().copied().collect();
    let mut edges: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for source in sources {
        let Some(from) = top_module(&source.path) else {
            continue;
        };
        for to in crate_references(&source.code) {
            if to != from && layers.contains_key(to.as_str()) {
                edges
                    .entry((from.to_string(), to))
                    .or_default()
                    .insert(source.path.clone());
            }
        }
    }
    edges
}

/// The layer violations in `edges`, as readable lines.
fn violations(edges: &BTreeMap<(String, String), BTreeSet<String>>) -> Vec<String> {
    let layers: BTreeMap<&str, u8> = LAYERS.iter().copied().collect();
    edges
        .iter()
        .filter(|((from, to), _)| layers[from.as_str()] <= layers[to.as_str()])
        .map(|((from, to), files)| {
            format!(
                "{from} (layer {}) imports {to} (layer {}) in {}",
                layers[from.as_str()],
                layers[to.as_str()],
                files.iter().cloned().collect::<Vec<_>>().join(", ")
            )
        })
        .collect()
}

/// A cycle in a directed graph, if there is one, as the list of nodes around it.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        on_path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = on_path.iter().position(|n| n == node) {
            let mut cycle = on_path[at..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        on_path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, on_path, done) {
                return Some(cycle);
            }
        }
        on_path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|node| visit(node, graph, &mut Vec::new(), &mut done))
}

#[test]
fn every_module_has_a_layer() {
    let layers: BTreeSet<&str> = LAYERS.iter().map(|(name, _)| *name).collect();
    let modules: BTreeSet<String> = sources()
        .iter()
        .filter_map(|source| top_module(&source.path).map(str::to_string))
        .collect();
    let missing: Vec<&String> = modules
        .iter()
        .filter(|module| !layers.contains(module.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "modules without a layer in tests/architecture.rs's LAYERS (and ARCHITECTURE.md): {missing:?}"
    );
    let stale: Vec<&&str> = layers
        .iter()
        .filter(|layer| !modules.contains(**layer))
        .collect();
    assert!(
        stale.is_empty(),
        "LAYERS names modules that no longer exist: {stale:?}"
    );
}

#[test]
fn imports_point_down_the_layers() {
    let edges = module_edges(&sources());
    assert!(
        !edges.is_empty(),
        "no crate:: edges found: the parser is broken"
    );
    let found = violations(&edges);
    assert!(
        found.is_empty(),
        "imports that point up or sideways (see ARCHITECTURE.md, Layers):\n{}",
        found.join("\n")
    );
}

#[test]
fn files_in_a_folder_import_each_other_without_circles() {
    // A new folder is checked from its first day: it must be listed.
    for entry in std::fs::read_dir(src_dir()).expect("src/ is readable") {
        let path = entry.expect("src/ is readable").path();
        if path.is_dir() {
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            assert!(
                FOLDERS.contains(&name),
                "src/{name}/ is not in FOLDERS: add it, so its files are checked for circles"
            );
        }
    }
    let sources = sources();
    for folder in FOLDERS {
        let prefix = format!("{folder}/");
        let files: Vec<&Source> = sources
            .iter()
            .filter(|source| source.path.starts_with(&prefix) && !source.path.ends_with("mod.rs"))
            .collect();
        let siblings: BTreeSet<String> = files
            .iter()
            .map(|source| {
                source.path[prefix.len()..]
                    .trim_end_matches(".rs")
                    .to_string()
            })
            .collect();
        let graph: BTreeMap<String, BTreeSet<String>> = files
            .iter()
            .map(|source| {
                let name = source.path[prefix.len()..]
                    .trim_end_matches(".rs")
                    .to_string();
                let mut targets = sibling_references(&source.code, folder, &siblings);
                targets.remove(&name);
                (name, targets)
            })
            .collect();
        if let Some(cycle) = find_cycle(&graph) {
            panic!(
                "src/{folder}/ has a circle of imports: {}",
                cycle.join(" -> ")
            );
        }
    }
}

#[test]
fn the_invariants_of_architecture_md_hold() {
    let sources = sources();
    let edges = module_edges(&sources);
    let imports = |from: &str, to: &str| edges.contains_key(&(from.to_string(), to.to_string()));
    for forbidden in ["bus", "metrics", "checker", "runner", "results"] {
        assert!(
            !imports("checks", forbidden),
            "check code must never touch {forbidden}"
        );
    }
    assert!(
        !imports("checker", "runner") && !imports("runner", "checker"),
        "the checker and the runner never import each other"
    );
    for forbidden in ["bus", "results", "checker", "runner"] {
        assert!(
            !imports("notify", forbidden),
            "notifiers never touch {forbidden}: the sink hands them results"
        );
    }
    for source in &sources {
        // The receivers speak to the outside; notify passes their shared client along.
        let clients: &[&str] = if source.path.starts_with("receivers/") {
            &[]
        } else if source.path.starts_with("notify/") {
            &["lettre::"]
        } else {
            &["reqwest::", "lettre::"]
        };
        for client in clients {
            assert!(
                !source.code.contains(client),
                "only src/receivers/ may use {client} (probes stay on hyper; notify only passes \
                 the receivers' reqwest client along), but {} does",
                source.path
            );
        }
        if source.path != "bus/nats.rs" {
            // A path, not a mention: telemetry names the crate in a log filter.
            assert!(
                !source.code.contains("async_nats::"),
                "only src/bus/nats.rs may use async_nats, but {} does",
                source.path
            );
        }
    }
    let model = sources
        .iter()
        .filter(|source| top_module(&source.path) == Some("model"))
        .flat_map(|source| crate_references(&source.code))
        .filter(|name| LAYERS.iter().any(|(module, _)| module == name))
        .collect::<Vec<_>>();
    assert!(
        model.is_empty(),
        "model imports {model:?}: it must import nothing from the crate"
    );
}

/// The checks above must be able to fail: a made-up upward edge and a made-up circle are found.
#[test]
fn the_checks_find_an_upward_edge_and_a_circle() {
    let mut edges = module_edges(&sources());
    edges.insert(
        ("config".to_string(), "runner".to_string()),
        BTreeSet::from(["config.rs".to_string()]),
    );
    let found = violations(&edges);
    assert!(
        found
            .iter()
            .any(|line| line.starts_with("config (layer 4) imports runner (layer 9)")),
        "{found:?}"
    );
    let graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::from([
        (
            "http".to_string(),
            BTreeSet::from(["tls_client".to_string()]),
        ),
        (
            "tls_client".to_string(),
            BTreeSet::from(["http".to_string()]),
        ),
        ("dns".to_string(), BTreeSet::new()),
    ]);
    assert!(find_cycle(&graph).is_some());
    let code = "use crate::{config::Config, model};\nfn f() { crate::bus::x(); }";
    assert_eq!(
        crate_references(code),
        BTreeSet::from(["bus".to_string(), "config".to_string(), "model".to_string()])
    );
}
