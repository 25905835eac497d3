//! Where a configuration error stands: turns the TOML and YAML parsers' errors into
//! `ConfigError`s with file, line and column, pointing at the offending key itself even where
//! `serde(flatten)` hides its position from the parser. It also finds every mistake it can in
//! one pass (`parse_toml_all`), and where a validation problem's key stands (`problem_place`,
//! which walks the document along the problem's path and never reads its message), so
//! `bastion validate` lists them all, each with its line and column.

use super::{Config, ConfigError, Format, KeyPath, Segment};
use serde::Deserialize;
use std::path::Path;
use toml::de::{DeArray, DeString, DeTable, DeValue};
use toml::Spanned;

pub(super) fn toml_error(text: &str, path: &Path, error: &toml::de::Error) -> ConfigError {
    let message = error.message().trim_end().to_string();
    match error.span() {
        Some(span) => {
            let offset = unknown_key_offset(text, span.start, &message)
                .or_else(|| bad_value_offset(text, span.start, &message))
                .unwrap_or(span.start);
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

/// Where a bad value of a check or notifier really stands. Their type's keys are read
/// through `serde(flatten)`, so for `invalid value: integer `65536`, expected u16` the parser
/// blames the whole entry; this finds the key of that entry (or of a table nested in it)
/// holding the value the message quotes.
fn bad_value_offset(text: &str, blamed: usize, message: &str) -> Option<usize> {
    let quoted = message
        .strip_prefix("invalid value: ")
        .or_else(|| message.strip_prefix("invalid type: "))?;
    let (kind, rest) = quoted.split_once(' ')?;
    let literal = match kind {
        "integer" => rest.strip_prefix('`')?.split('`').next()?.to_string(),
        "string" => rest
            .strip_prefix('"')?
            .split("\", expected")
            .next()?
            .to_string(),
        _ => return None,
    };
    let document = DeTable::parse(text).ok()?;
    let entry = ["checks", "notifiers"]
        .iter()
        .filter_map(|section| document.get_ref().get(*section))
        .filter_map(|entries| match entries.get_ref() {
            DeValue::Array(entries) => Some(entries),
            _ => None,
        })
        .flat_map(|entries| entries.iter())
        .find(|entry| entry.span().contains(&blamed))?;
    let DeValue::Table(table) = entry.get_ref() else {
        return None;
    };
    let holds = |value: &DeValue<'_>| match value {
        DeValue::Integer(integer) => kind == "integer" && integer.as_str() == literal,
        DeValue::String(string) => kind == "string" && string.as_ref() == literal,
        _ => false,
    };
    let nested = table.values().filter_map(|value| match value.get_ref() {
        DeValue::Table(inner) => Some(inner),
        _ => None,
    });
    std::iter::once(table)
        .chain(nested)
        .flat_map(|table| table.iter())
        .find(|(_, value)| holds(value.get_ref()))
        .map(|(key, _)| key.span().start)
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

/// A TOML document read as far as it goes: every mistake found, the config made of the
/// sections and checks that have none (to validate further), and the document it was made
/// from (to place validation messages).
pub(super) struct TomlParse<'i> {
    pub config: Option<Config>,
    pub errors: Vec<ConfigError>,
    pub document: Option<Spanned<DeTable<'i>>>,
    /// For each check in `config`, its 0-based position in the file (they differ when an
    /// earlier check did not parse).
    pub check_positions: Vec<usize>,
}

/// Parses a TOML document and deserializes it, reporting every mistake found rather than the
/// first: all syntax errors the parser recovers from, then, when the whole document does not
/// deserialize, each top-level section and each `[[checks]]` entry on its own (every section
/// has a default, so each one alone is a complete config). Within one section serde still
/// stops at the first mistake. The sections and checks without mistakes make up `config`.
pub(super) fn parse_toml_all<'i>(text: &'i str, path: &Path) -> TomlParse<'i> {
    let (document, syntax) = DeTable::parse_recoverable(text);
    if !syntax.is_empty() {
        return TomlParse {
            config: None,
            errors: syntax
                .iter()
                .map(|error| toml_error(text, path, error))
                .collect(),
            document: None,
            check_positions: Vec::new(),
        };
    }
    let first = match Config::deserialize(toml::de::Deserializer::from(document.clone())) {
        Ok(config) => {
            return TomlParse {
                check_positions: (0..config.checks.len()).collect(),
                config: Some(config),
                errors: Vec::new(),
                document: Some(document),
            }
        }
        Err(error) => error,
    };
    let span = document.span();
    let as_document = |table: DeTable<'i>| Spanned::new(span.clone(), table);
    let mut errors: Vec<toml::de::Error> = Vec::new();
    let mut good = DeTable::new();
    let mut check_positions = Vec::new();
    let mut try_part = |key: &Spanned<DeString<'i>>, value: Spanned<DeValue<'i>>| {
        let mut part = DeTable::new();
        part.insert(key.clone(), value);
        match Config::deserialize(toml::de::Deserializer::from(as_document(part))) {
            Ok(_) => true,
            Err(error) => {
                errors.push(error);
                false
            }
        }
    };
    for (key, value) in document.get_ref().iter() {
        match value.get_ref() {
            DeValue::Array(checks) if key.get_ref() == "checks" => {
                let mut kept = DeArray::new();
                for (position, check) in checks.iter().enumerate() {
                    let mut one = DeArray::new();
                    one.push(check.clone());
                    if try_part(key, Spanned::new(value.span(), DeValue::Array(one))) {
                        kept.push(check.clone());
                        check_positions.push(position);
                    }
                }
                good.insert(
                    key.clone(),
                    Spanned::new(value.span(), DeValue::Array(kept)),
                );
            }
            _ => {
                if try_part(key, value.clone()) {
                    good.insert(key.clone(), value.clone());
                }
            }
        }
    }
    if errors.is_empty() {
        errors.push(first);
    }
    let good = as_document(good);
    TomlParse {
        config: Config::deserialize(toml::de::Deserializer::from(good.clone())).ok(),
        errors: errors
            .iter()
            .map(|error| toml_error(text, path, error))
            .collect(),
        document: Some(good),
        check_positions,
    }
}

/// Rewrites the check numbers in a validation message about a config whose checks are a
/// subset of the file's (`check #2: ...`, `(checks #1 and #2)`), so they count in the file.
pub(super) fn renumber_checks(message: &str, positions: &[usize]) -> String {
    let numbered = message.starts_with("check #") || message.starts_with("check name `");
    let Some(start) = message
        .find("check #")
        .or_else(|| message.find("(checks #"))
    else {
        return message.to_string();
    };
    if !numbered {
        return message.to_string();
    }
    // Only the numbers of the leading "check #N" or the "(checks #A and #B)" part.
    let end = message[start..]
        .find([':', ')'])
        .map_or(message.len(), |offset| start + offset);
    let mut out = message[..start].to_string();
    let mut rest = &message[start..end];
    while let Some(hash) = rest.find('#') {
        out.push_str(&rest[..=hash]);
        rest = &rest[hash + 1..];
        let digits = rest.chars().take_while(char::is_ascii_digit).count();
        let renumbered = rest[..digits]
            .parse::<usize>()
            .ok()
            .and_then(|number| positions.get(number.checked_sub(1)?))
            .map(|position| (position + 1).to_string());
        out.push_str(renumbered.as_deref().unwrap_or(&rest[..digits]));
        rest = &rest[digits..];
    }
    out.push_str(rest);
    out.push_str(&message[end..]);
    out
}

/// Where the key at `path` stands in a config file, as (line, column): found by walking the
/// parsed TOML document (`document` when the caller has it, else `text` parsed anew) or, for
/// YAML, the text's block structure, along the path. Where the file does not write the whole
/// path (a default left out), the deepest part it does write: the key's table, the check's
/// `name`, the section's header. None when it writes not even the first key.
pub(super) fn problem_place(
    text: &str,
    format: Format,
    document: Option<&Spanned<DeTable<'_>>>,
    path: &KeyPath,
) -> Option<(usize, usize)> {
    match format {
        Format::Toml => {
            let parsed;
            let root = match document {
                Some(document) => document.get_ref(),
                None => {
                    parsed = DeTable::parse(text).ok()?;
                    parsed.get_ref()
                }
            };
            toml_path_offset(root, path).map(|offset| line_and_column(text, offset))
        }
        Format::Yaml => yaml_path_place(text, path),
    }
}

/// The byte offset of the deepest part of `path` that `root` holds: a key at its name, an
/// array's entry at [`entry_offset`].
fn toml_path_offset(root: &DeTable<'_>, path: &KeyPath) -> Option<usize> {
    let mut found = None;
    let mut here: Option<&DeValue<'_>> = None;
    for segment in &path.0 {
        let table = match here {
            None => Some(root),
            Some(DeValue::Table(table)) => Some(table),
            _ => None,
        };
        let items = match here {
            Some(DeValue::Array(items)) => Some(items),
            _ => None,
        };
        let next = match segment {
            Segment::Key(name) => table.and_then(|table| {
                table
                    .iter()
                    .find(|(key, _)| key.get_ref() == name)
                    .map(|(key, value)| (key.span().start, value))
            }),
            Segment::Index(index) => items
                .and_then(|items| items.get(*index))
                .map(|item| (entry_offset(item), item)),
            Segment::Named(name) => items
                .and_then(|items| {
                    items.iter().find(|item| {
                        item.get_ref()
                            .as_table()
                            .and_then(|table| table.get("name"))
                            .and_then(|value| value.get_ref().as_str())
                            == Some(name.as_str())
                    })
                })
                .map(|item| (entry_offset(item), item)),
        };
        let Some((offset, value)) = next else {
            break;
        };
        found = Some(offset);
        here = Some(value.get_ref());
    }
    found
}

/// Where an array's entry stands: a table at its `name` key when it has one (a check, a
/// notifier), else at its first key (an assertion); anything else at its value.
fn entry_offset(item: &Spanned<DeValue<'_>>) -> usize {
    let Some(table) = item.get_ref().as_table() else {
        return item.span().start;
    };
    table
        .iter()
        .find(|(key, _)| key.get_ref() == "name")
        .map(|(key, _)| key.span().start)
        .or_else(|| table.iter().map(|(key, _)| key.span().start).min())
        .unwrap_or(item.span().start)
}

/// Where the key at `path` stands in a YAML file, as (line, column), found by reading the
/// lines (serde-saphyr keeps no positions in a deserialized value): block-style YAML, a
/// mapping's keys as `key:` lines at one indent, a list's entries as `- ` items. The deepest
/// part found, as for TOML; a flow collection (`[a, b]`, `{a: 1}`) is not entered.
fn yaml_path_place(text: &str, path: &KeyPath) -> Option<(usize, usize)> {
    let lines: Vec<&str> = text.lines().collect();
    let place = |line: usize| {
        let column = lines[line].len() - lines[line].trim_start_matches([' ', '-']).len() + 1;
        (line + 1, column)
    };
    let mut found = None;
    let (mut start, mut end) = (0, lines.len());
    for segment in &path.0 {
        let next = match segment {
            Segment::Key(key) => yaml_key(&lines, start, end, key).map(|line| {
                let column = yaml_body_column(lines[line]);
                let block_end = (line + 1..end)
                    .find(|&next| {
                        let own = yaml_indent(lines[next]);
                        !yaml_blank(lines[next])
                            && (own < column
                                || (own == column && !lines[next].trim_start().starts_with('-')))
                    })
                    .unwrap_or(end);
                (line, (line + 1, block_end))
            }),
            Segment::Index(index) => yaml_items(&lines, start, end)
                .get(*index)
                .map(|&item| (yaml_entry_line(&lines, item), item)),
            Segment::Named(name) => yaml_items(&lines, start, end)
                .into_iter()
                .find(|&(item_start, item_end)| {
                    yaml_key(&lines, item_start, item_end, "name").is_some_and(|line| {
                        let value = lines[line].split_once(':').map(|(_, value)| value.trim());
                        value.map(|value| value.trim_matches(['"', '\''])) == Some(name.as_str())
                    })
                })
                .map(|item| (yaml_entry_line(&lines, item), item)),
        };
        let Some((line, (body_start, body_end))) = next else {
            break;
        };
        found = Some(line);
        (start, end) = (body_start, body_end);
    }
    found.map(place)
}

/// The line an entry of a list stands at: its `name:` key when it has one, else its first.
fn yaml_entry_line(lines: &[&str], (start, end): (usize, usize)) -> usize {
    yaml_key(lines, start, end, "name").unwrap_or(start)
}

fn yaml_indent(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

/// Where a line's content starts after its indent and any `- ` list markers.
fn yaml_body_column(line: &str) -> usize {
    let mut body = line.trim_start();
    while let Some(rest) = body.strip_prefix("- ") {
        body = rest.trim_start();
    }
    line.len() - body.len()
}

fn yaml_blank(line: &str) -> bool {
    let trimmed = line.trim();
    trimmed.is_empty() || trimmed.starts_with('#')
}

/// The line in `start..end` holding `key:` (plain or quoted) at the indent of the block's
/// keys: that of the first line's content, so a key of a nested block is not taken.
fn yaml_key(lines: &[&str], start: usize, end: usize, key: &str) -> Option<usize> {
    let end = end.min(lines.len());
    let first = (start..end).find(|&index| !yaml_blank(lines[index]))?;
    let column = yaml_body_column(lines[first]);
    let written = [
        format!("{key}:"),
        format!("\"{key}\":"),
        format!("'{key}':"),
    ];
    (first..end).find(|&index| {
        let line = lines[index];
        yaml_body_column(line) == column
            && written
                .iter()
                .any(|prefix| line[column..].starts_with(prefix.as_str()))
    })
}

/// The `- ` items of the block list that starts at the first line in `start..end`, as (first
/// line, end) ranges; none when that line is not an item.
fn yaml_items(lines: &[&str], start: usize, end: usize) -> Vec<(usize, usize)> {
    let end = end.min(lines.len());
    let Some(first) = (start..end).find(|&index| !yaml_blank(lines[index])) else {
        return Vec::new();
    };
    if !lines[first].trim_start().starts_with('-') {
        return Vec::new();
    }
    let indent = yaml_indent(lines[first]);
    let mut starts = Vec::new();
    let mut list_end = end;
    for (index, line) in lines.iter().enumerate().take(end).skip(first) {
        if yaml_blank(line) {
            continue;
        }
        let own = yaml_indent(line);
        if own < indent || (own == indent && !line.trim_start().starts_with('-')) {
            list_end = index;
            break;
        }
        if own == indent {
            starts.push(index);
        }
    }
    starts
        .iter()
        .enumerate()
        .map(|(i, &start)| (start, starts.get(i + 1).copied().unwrap_or(list_end)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::{problem_place, renumber_checks, Format, KeyPath};

    const TOML: &str = r#"[agent]
id = "a"

[agent.web]
status_page = "off"

[[checks]]
name = "web"
type = "http"
interval = "10s"
url = "http://x/"

[[checks]]
type = "tcp"
name = "db"
interval = "10s"
address = "db:5432"
tls = { ca_file = "/ca.pem", insecure_skip_verify = true }
[[checks.assertions]]
key = "latency"
relationship = "lessThan"
operand = "1"

[[maintenance]]
name = "night"
checks = ["*"]
at = "02:00"
duration = "1h"
"#;

    const YAML: &str = r#"agent:
  id: a
  web:
    status_page: "off"
checks:
- name: web
  type: http
  interval: 10s
  url: http://x/
- type: tcp
  name: db
  interval: 10s
  address: db:5432
  steps:
    - send: x
    - expect: "y"
  assertions:
    - key: latency
      relationship: lessThan
maintenance:
  - name: "night"
    checks: ["*"]
    at: "02:00"
"#;

    fn toml(path: KeyPath) -> Option<(usize, usize)> {
        problem_place(TOML, Format::Toml, None, &path)
    }

    fn yaml(path: KeyPath) -> Option<(usize, usize)> {
        problem_place(YAML, Format::Yaml, None, &path)
    }

    #[test]
    fn a_toml_path_is_walked_key_by_key() {
        // A nested key, and a key of a table inline in a check.
        assert_eq!(toml(KeyPath::dotted("agent.web.status_page")), Some((5, 1)));
        assert_eq!(
            toml(KeyPath::check(1).key("tls").key("insecure_skip_verify")),
            Some((18, 30))
        );
        // An entry by position: a check at its name, wherever the name is written.
        assert_eq!(toml(KeyPath::check(1).key("address")), Some((17, 1)));
        assert_eq!(toml(KeyPath::check(1)), Some((15, 1)));
        // An entry without a name at its first key.
        assert_eq!(
            toml(KeyPath::check(1).key("assertions").index(0)),
            Some((20, 1))
        );
        // An entry by name.
        assert_eq!(
            toml(KeyPath::dotted("maintenance").named("night").key("at")),
            Some((27, 1))
        );
    }

    #[test]
    fn a_toml_key_not_written_stands_at_the_nearest_one_above_it() {
        // `timeout` is left to its default: the check's name.
        assert_eq!(toml(KeyPath::check(0).key("timeout")), Some((8, 1)));
        // A check past the last, or a name nobody has: the `checks` key.
        assert_eq!(toml(KeyPath::check(7).key("url")), Some((7, 3)));
        assert_eq!(
            toml(KeyPath::dotted("maintenance").named("day")),
            Some((24, 3))
        );
        // A key below a value that is not a table.
        assert_eq!(toml(KeyPath::dotted("agent.id.x")), Some((2, 1)));
        // A section not written at all.
        assert_eq!(toml(KeyPath::dotted("history.path")), None);
    }

    #[test]
    fn a_yaml_path_is_walked_key_by_key() {
        assert_eq!(yaml(KeyPath::dotted("agent.web.status_page")), Some((4, 5)));
        assert_eq!(yaml(KeyPath::check(1).key("address")), Some((13, 3)));
        // A check at its name, even when it is not the item's first key.
        assert_eq!(yaml(KeyPath::check(1)), Some((11, 3)));
        assert_eq!(yaml(KeyPath::check(1).key("steps").index(1)), Some((16, 7)));
        assert_eq!(
            yaml(KeyPath::check(1).key("assertions").index(0)),
            Some((18, 7))
        );
        assert_eq!(
            yaml(KeyPath::dotted("maintenance").named("night").key("at")),
            Some((23, 5))
        );
        // `name` of the second check, not of the first: keys are looked for in their entry.
        assert_eq!(yaml(KeyPath::check(1).key("name")), Some((11, 3)));
    }

    #[test]
    fn a_yaml_key_not_written_stands_at_the_nearest_one_above_it() {
        assert_eq!(yaml(KeyPath::check(0).key("timeout")), Some((6, 3)));
        assert_eq!(yaml(KeyPath::check(9)), Some((5, 1)));
        // `id` is a key of `agent`, not of `agent.web`.
        assert_eq!(yaml(KeyPath::dotted("agent.web.id")), Some((3, 3)));
        assert_eq!(yaml(KeyPath::dotted("history.path")), None);
    }

    #[test]
    fn check_numbers_count_in_the_file() {
        // The file's checks 1 and 3 did not parse: the config holds its 2nd, 4th and 5th.
        let positions = [1, 3, 4];
        assert_eq!(
            renumber_checks(
                "check name `a` is used twice (checks #1 and #3); names must be unique",
                &positions
            ),
            "check name `a` is used twice (checks #2 and #5); names must be unique"
        );
        assert_eq!(
            renumber_checks("check #2: name must not be empty", &positions),
            "check #4: name must not be empty"
        );
        assert_eq!(
            renumber_checks("check `a`: assertion #1: bad", &positions),
            "check `a`: assertion #1: bad"
        );
    }
}
