//! Where a configuration error stands: turns the TOML and YAML parsers' errors into
//! `ConfigError`s with file, line and column, pointing at the offending key itself even where
//! `serde(flatten)` hides its position from the parser. It also finds every mistake it can in
//! one pass (`parse_toml_all`), and where a validation message's subject stands
//! (`problem_offset`), so `bastion validate` lists them all, each with its line and column.

use super::{Config, ConfigError};
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

/// Where a validation message's subject stands in a TOML document, as a byte offset. The
/// message names its subject the way every validation message here does: a dotted key in
/// front (`agent.web.tls_cert_file ...`, `[bus.nats] is set ...`), a check by name
/// (``check `web`: timeout 5s ...``, pointing at `timeout` inside that check when it is one of
/// its keys), by position (`check #3: ...`), or a duplicated name (`(checks #1 and #2)`).
/// New config sections get locations for free when their messages start with their key.
pub(super) fn problem_offset(root: &DeTable<'_>, message: &str) -> Option<usize> {
    let checks: Vec<&DeTable<'_>> = match root.get("checks").map(|value| value.get_ref()) {
        Some(DeValue::Array(checks)) => checks
            .iter()
            .filter_map(|check| check.get_ref().as_table())
            .collect(),
        _ => Vec::new(),
    };
    let name_of = |table: &DeTable<'_>| {
        table
            .get("name")
            .and_then(|name| name.get_ref().as_str().map(str::to_string))
    };
    if message.starts_with("check name `") {
        // "check name `x` is used twice (checks #1 and #2)": the second one.
        let second = message.rsplit("and #").next()?.split(')').next()?;
        let check = checks.get(second.trim().parse::<usize>().ok()?.checked_sub(1)?)?;
        return key_offset(check, "name");
    }
    if let Some(rest) = message.strip_prefix("check `") {
        let (name, detail) = rest.split_once('`')?;
        let check = checks
            .iter()
            .find(|check| name_of(check).as_deref() == Some(name))?;
        let detail = detail.trim_start_matches(':').trim_start();
        // "instance `x` is not an address" is about the `instances` list.
        return assertion_offset(check, detail)
            .or_else(|| path_offset(check, leading_key(detail)))
            .or_else(|| key_offset(check, &format!("{}s", leading_key(detail))))
            .or_else(|| key_offset(check, "name"));
    }
    if let Some(rest) = message.strip_prefix("check #") {
        let (number, detail) = rest.split_once(':').unwrap_or((rest, ""));
        let check = checks.get(number.trim().parse::<usize>().ok()?.checked_sub(1)?)?;
        return path_offset(check, leading_key(detail.trim_start()))
            .or_else(|| key_offset(check, "name"));
    }
    // "notifier `x`: queue_size ..." and "maintenance `x`: duration ...": the key in that entry.
    for (prefix, section) in [
        ("notifier `", "notifiers"),
        ("maintenance `", "maintenance"),
    ] {
        if let Some(rest) = message.strip_prefix(prefix) {
            let (name, detail) = rest.split_once('`')?;
            let DeValue::Array(entries) = root.get(section)?.get_ref() else {
                return None;
            };
            let entry = entries
                .iter()
                .filter_map(|entry| entry.get_ref().as_table())
                .find(|entry| name_of(entry).as_deref() == Some(name))?;
            let detail = detail.trim_start_matches(':').trim_start();
            return path_offset(entry, leading_key(detail)).or_else(|| key_offset(entry, "name"));
        }
    }
    path_offset(root, leading_key(message))
}

/// "assertion #N: ...": the first key of the check's Nth assertion.
fn assertion_offset(check: &DeTable<'_>, detail: &str) -> Option<usize> {
    let number = detail.strip_prefix("assertion #")?.split(':').next()?;
    let index = number.trim().parse::<usize>().ok()?.checked_sub(1)?;
    let DeValue::Array(assertions) = check.get("assertions")?.get_ref() else {
        return None;
    };
    let assertion = assertions.get(index)?.get_ref().as_table()?;
    assertion.iter().map(|(key, _)| key.span().start).min()
}

/// The dotted key a message starts with (`[bus.nats]`, `agent.id`, `` `x` ``), or "".
fn leading_key(message: &str) -> &str {
    let word = message
        .split([' ', ':', ','])
        .next()
        .unwrap_or_default()
        .trim_matches(['[', ']', '`']);
    if word
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        word
    } else {
        ""
    }
}

/// The deepest key of `dotted` found in `table`, as the offset of that key.
fn path_offset(table: &DeTable<'_>, dotted: &str) -> Option<usize> {
    let mut table = table;
    let mut found = None;
    for segment in dotted.split('.').filter(|segment| !segment.is_empty()) {
        let Some((key, value)) = table.iter().find(|(key, _)| key.get_ref() == segment) else {
            break;
        };
        found = Some(key.span().start);
        match value.get_ref() {
            DeValue::Table(inner) => table = inner,
            _ => break,
        }
    }
    found
}

fn key_offset(table: &DeTable<'_>, name: &str) -> Option<usize> {
    table
        .iter()
        .find(|(key, _)| key.get_ref() == name)
        .map(|(key, _)| key.span().start)
}

/// Where a validation message's subject stands in a YAML file, as (line, column), found by
/// reading the lines (serde-saphyr keeps no positions in a deserialized value): the same
/// subjects as [`problem_offset`], for block-style YAML (`key: value` lines, checks as `- `
/// items). None where the subject cannot be found that way.
pub(super) fn yaml_problem_place(text: &str, message: &str) -> Option<(usize, usize)> {
    let lines: Vec<&str> = text.lines().collect();
    let checks = yaml_find(&lines, 0, lines.len(), None, "checks")?;
    let items = yaml_items(&lines, checks + 1);
    let place = |line: usize| {
        let column = lines[line].len() - lines[line].trim_start_matches([' ', '-']).len() + 1;
        (line + 1, column)
    };
    let check_by_number = |number: &str| {
        let index = number.trim().parse::<usize>().ok()?.checked_sub(1)?;
        items.get(index).copied()
    };
    let within = |(start, end): (usize, usize), detail: &str| {
        let key = leading_key(detail);
        let first = key.split('.').next().unwrap_or_default();
        let fallback = format!("{first}s");
        let keys = [first, fallback.as_str()];
        let found = keys
            .into_iter()
            .filter(|key| !key.is_empty())
            .find_map(|key| yaml_find(&lines, start, end, None, key));
        found
            .or_else(|| yaml_find(&lines, start, end, None, "name"))
            .unwrap_or(start)
    };
    if message.starts_with("check name `") {
        let second = message.rsplit("and #").next()?.split(')').next()?;
        let item = check_by_number(second)?;
        return Some(place(
            yaml_find(&lines, item.0, item.1, None, "name").unwrap_or(item.0),
        ));
    }
    if let Some(rest) = message.strip_prefix("check `") {
        let (name, detail) = rest.split_once('`')?;
        let item = items.iter().copied().find(|&(start, end)| {
            yaml_find(&lines, start, end, None, "name").is_some_and(|line| {
                let value = lines[line].split_once(':').map(|(_, value)| value.trim());
                value.map(|value| value.trim_matches(['"', '\''])) == Some(name)
            })
        })?;
        let detail = detail.trim_start_matches(':').trim_start();
        return Some(place(within(item, detail)));
    }
    if let Some(rest) = message.strip_prefix("check #") {
        let (number, detail) = rest.split_once(':').unwrap_or((rest, ""));
        let item = check_by_number(number)?;
        return Some(place(within(item, detail.trim_start())));
    }
    // A dotted key from the top.
    let mut found = None;
    let (mut start, mut end, mut indent) = (0, lines.len(), Some(0));
    for segment in leading_key(message).split('.').filter(|s| !s.is_empty()) {
        let Some(line) = yaml_find(&lines, start, end, indent, segment) else {
            break;
        };
        found = Some(line);
        let own = yaml_indent(lines[line]);
        start = line + 1;
        end = (start..lines.len())
            .find(|&next| !yaml_blank(lines[next]) && yaml_indent(lines[next]) <= own)
            .unwrap_or(lines.len());
        indent = None;
    }
    found.map(place)
}

fn yaml_indent(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

fn yaml_blank(line: &str) -> bool {
    let trimmed = line.trim();
    trimmed.is_empty() || trimmed.starts_with('#')
}

/// The first line in `start..end` holding `key:` (after any `- `), at exactly `indent` when
/// given.
fn yaml_find(
    lines: &[&str],
    start: usize,
    end: usize,
    indent: Option<usize>,
    key: &str,
) -> Option<usize> {
    (start..end.min(lines.len())).find(|&index| {
        let line = lines[index];
        let body = line.trim_start().trim_start_matches("- ").trim_start();
        let at = line.len() - body.len();
        let quoted = [
            format!("{key}:"),
            format!("\"{key}\":"),
            format!("'{key}':"),
        ];
        quoted
            .iter()
            .any(|prefix| body.starts_with(prefix.as_str()))
            && indent.is_none_or(|indent| at == indent || yaml_indent(line) == indent)
    })
}

/// The `- ` items of the block list starting at `from`, as (first line, end) ranges.
fn yaml_items(lines: &[&str], from: usize) -> Vec<(usize, usize)> {
    let Some(first) = (from..lines.len()).find(|&index| !yaml_blank(lines[index])) else {
        return Vec::new();
    };
    if !lines[first].trim_start().starts_with('-') {
        return Vec::new();
    }
    let indent = yaml_indent(lines[first]);
    let mut starts = Vec::new();
    let mut end = lines.len();
    for (index, line) in lines.iter().enumerate().skip(first) {
        if yaml_blank(line) {
            continue;
        }
        let own = yaml_indent(line);
        if own < indent || (own == indent && !line.trim_start().starts_with('-')) {
            end = index;
            break;
        }
        if own == indent {
            starts.push(index);
        }
    }
    starts
        .iter()
        .enumerate()
        .map(|(i, &start)| (start, starts.get(i + 1).copied().unwrap_or(end)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::renumber_checks;

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
