//! Where a configuration error stands: turns the TOML and YAML parsers' errors into
//! `ConfigError`s with file, line and column, pointing at the offending key itself even where
//! `serde(flatten)` hides its position from the parser.

use super::ConfigError;
use std::path::Path;

pub(super) fn toml_error(text: &str, path: &Path, error: &toml::de::Error) -> ConfigError {
    let message = error.message().trim_end().to_string();
    match error.span() {
        Some(span) => {
            let offset = unknown_key_offset(text, span.start, &message).unwrap_or(span.start);
            let (line, column) = line_and_column(text, offset);
            ConfigError::Syntax {
                path: path.to_path_buf(),
                line,
                column,
                message,
            }
        }
        None => ConfigError::SyntaxNoLocation {
            path: path.to_path_buf(),
            message,
        },
    }
}

pub(super) fn yaml_error(path: &Path, error: &serde_saphyr::Error) -> ConfigError {
    let message = error.to_string();
    // The message may carry a rendered snippet; its first line is the explanation.
    let mut message = message.lines().next().unwrap_or_default().trim();
    message = message
        .strip_prefix("error:")
        .unwrap_or(message)
        .trim_start();
    // serde-saphyr starts with "line L column C: "; the location is shown once, in front.
    if let Some(rest) = message.strip_prefix("line ") {
        if let Some((_, after)) = rest.split_once(": ") {
            message = after;
        }
    }
    let message = message.to_string();
    match error.location() {
        Some(location) if location.line() > 0 => ConfigError::Syntax {
            path: path.to_path_buf(),
            line: usize::try_from(location.line()).unwrap_or(usize::MAX),
            column: usize::try_from(location.column()).unwrap_or(usize::MAX),
            message,
        },
        _ => ConfigError::SyntaxNoLocation {
            path: path.to_path_buf(),
            message,
        },
    }
}

/// Where an unknown key really stands. A check's (or a notifier's) type-specific keys are read
/// through `serde(flatten)`, which hides positions: the parser then blames the whole table.
/// This finds the named key inside the table that starts at `blamed` (or in a table nested in
/// it, such as `tls` or a TCP step), so the error points at the key itself.
fn unknown_key_offset(text: &str, blamed: usize, message: &str) -> Option<usize> {
    let name = message.strip_prefix("unknown field `")?.split('`').next()?;
    let document = toml::de::DeTable::parse(text).ok()?;
    // Checks and notifiers both read their type's keys through `serde(flatten)`.
    let check = ["checks", "notifiers"]
        .iter()
        .filter_map(|section| document.get_ref().get(*section))
        .filter_map(|entries| match entries.get_ref() {
            toml::de::DeValue::Array(entries) => Some(entries),
            _ => None,
        })
        .flat_map(|entries| entries.iter())
        .find(|entry| entry.span().contains(&blamed))?;
    let toml::de::DeValue::Table(table) = check.get_ref() else {
        return None;
    };
    // Tables nested in the check (`tls`), and tables in its arrays (`[[checks.steps]]`).
    let nested = table.values().flat_map(|value| match value.get_ref() {
        toml::de::DeValue::Table(inner) => vec![inner],
        toml::de::DeValue::Array(items) => items
            .iter()
            .filter_map(|item| match item.get_ref() {
                toml::de::DeValue::Table(inner) => Some(inner),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    });
    std::iter::once(table)
        .chain(nested)
        .flat_map(|table| table.keys())
        .find(|key| key.get_ref() == name)
        .map(|key| key.span().start)
}

/// 1-based line and column (in characters) of a byte offset.
pub(super) fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |newline| newline + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}
