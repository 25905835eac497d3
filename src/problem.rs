//! A validation problem as a value: what is wrong (the message the user reads) and where (the
//! path of the key it is about, `checks[3].tls.ca_file`), said by the code that finds it.
//! `locate.rs` walks the parsed document along the path to give it a line and column; nothing
//! here or there ever reads a message's text to learn where it belongs. And a key's range
//! (`Bound`): what a count or a duration may hold, the problem a value outside it is, and the
//! cap where a value is used; the configuration's table lists every range.

use std::fmt;
use std::time::Duration;

/// The least "longer than 0s", as a bound's minimum.
pub const POSITIVE: Duration = Duration::from_nanos(1);

/// One step of a [`KeyPath`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// A key of a table (`agent`, `timeout`).
    Key(String),
    /// The entry at this 0-based position of an array (`checks[3]`).
    Index(usize),
    /// The entry of an array of tables whose `name` is this (`maintenance["night"]`), for
    /// code that knows an entry by its name only.
    Named(String),
}

/// Where in the file a problem is: the keys and entries from the top, in the document's own
/// shape (a check's type-specific keys sit in the check itself, as the file writes them).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyPath(pub Vec<Segment>);

impl KeyPath {
    /// A dotted key as the code names it (`agent.web.tls_cert_file`, `tls.ca_file`): one key
    /// segment per part. Only for keys written in the source, never for message text.
    pub fn dotted(key: &str) -> KeyPath {
        KeyPath(
            key.split('.')
                .filter(|part| !part.is_empty())
                .map(|part| Segment::Key(part.to_string()))
                .collect(),
        )
    }

    /// The check at `index` of `[[checks]]`.
    pub fn check(index: usize) -> KeyPath {
        KeyPath::dotted("checks").index(index)
    }

    /// This path and then `key`.
    pub fn key(mut self, key: impl Into<String>) -> KeyPath {
        self.0.push(Segment::Key(key.into()));
        self
    }

    /// This path and then the entry at `index`.
    pub fn index(mut self, index: usize) -> KeyPath {
        self.0.push(Segment::Index(index));
        self
    }

    /// This path and then the entry named `name`.
    pub fn named(mut self, name: impl Into<String>) -> KeyPath {
        self.0.push(Segment::Named(name.into()));
        self
    }

    /// This path and then every segment of `rest`.
    pub fn join(mut self, rest: KeyPath) -> KeyPath {
        self.0.extend(rest.0);
        self
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (position, segment) in self.0.iter().enumerate() {
            match segment {
                Segment::Key(key) if position == 0 => write!(f, "{key}")?,
                Segment::Key(key) => write!(f, ".{key}")?,
                Segment::Index(index) => write!(f, "[{index}]")?,
                Segment::Named(name) => write!(f, "[{name:?}]")?,
            }
        }
        Ok(())
    }
}

/// One mistake in a config: the message shown (which names its subject first, as
/// ``check `web`: timeout ...`` does) and the path of the key it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: KeyPath,
    pub message: String,
}

impl Problem {
    /// `message` about the key at `path`.
    pub fn at(path: KeyPath, message: impl Into<String>) -> Problem {
        Problem {
            path,
            message: message.into(),
        }
    }

    /// `message` about the dotted key `key` of a section (`agent.id`, `bus.nats.url`).
    pub fn key(key: &str, message: impl Into<String>) -> Problem {
        Problem::at(KeyPath::dotted(key), message)
    }
}

/// An entry of an array of tables whose keys problems are about: how its messages name it
/// (``check `web` ``, ``notifier `ops` ``) and where it stands (`checks[3]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub subject: String,
    pub path: KeyPath,
}

impl Entry {
    /// The check `name` at `index` of `[[checks]]`.
    pub fn check(index: usize, name: &str) -> Entry {
        Entry {
            subject: format!("check `{name}`"),
            path: KeyPath::check(index),
        }
    }

    /// ``{subject}: {detail}`` about the entry's `key` (a dotted key inside the entry; "" for
    /// the entry itself).
    pub fn problem(&self, key: &str, detail: impl fmt::Display) -> Problem {
        Problem::at(
            self.path.clone().join(KeyPath::dotted(key)),
            format!("{}: {detail}", self.subject),
        )
    }
}

/// Every validation problem found, in the order found. A function returning
/// `Result<(), String>` adds its message at a path with [`Problems::check_at`]; one returning
/// `Result<(), Problem>` with [`Problems::check`]; both go on to the next.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Problems(pub Vec<Problem>);

impl From<Problem> for Problems {
    fn from(problem: Problem) -> Problems {
        Problems(vec![problem])
    }
}

impl Problems {
    /// Keeps the problem of a failed check and goes on.
    pub fn check(&mut self, outcome: Result<(), Problem>) {
        if let Err(problem) = outcome {
            self.0.push(problem);
        }
    }

    /// Keeps the message of a failed check, about the key at `path`, and goes on.
    pub fn check_at(&mut self, path: KeyPath, outcome: Result<(), String>) {
        if let Err(message) = outcome {
            self.0.push(Problem::at(path, message));
        }
    }

    pub fn push(&mut self, problem: Problem) {
        self.0.push(problem);
    }

    pub fn extend(&mut self, other: Problems) {
        self.0.extend(other.0);
    }

    pub fn into_result(self) -> Result<(), Problems> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(self)
        }
    }
}

/// What a key may hold, both ends included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Range {
    /// A whole number.
    Count { min: u64, max: u64 },
    /// A duration; a `min` of 1ns reads "longer than 0s".
    Duration { min: Duration, max: Duration },
}

/// One key's range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bound {
    /// The key's path as `config/reference.toml` writes it: `history.buffer`,
    /// `checks[].timeout`, `notifiers[].queue_size`.
    pub key: &'static str,
    pub range: Range,
}

impl Bound {
    pub const fn count(key: &'static str, min: u64, max: u64) -> Bound {
        Bound {
            key,
            range: Range::Count { min, max },
        }
    }

    pub const fn duration(key: &'static str, min: Duration, max: Duration) -> Bound {
        Bound {
            key,
            range: Range::Duration { min, max },
        }
    }

    /// The key's own name (`timeout` for `checks[].timeout`), for messages about one entry.
    pub fn name(&self) -> &'static str {
        self.key.rsplit('.').next().unwrap_or(self.key)
    }

    /// How a message names the key: the dotted key for a section's key, ``check `web`:
    /// timeout`` for a key of an entry (`owner` is ``check `web` `` then).
    pub fn subject(&self, owner: Option<&Entry>) -> String {
        match owner {
            Some(owner) => format!("{}: {}", owner.subject, self.name()),
            None => self.key.to_string(),
        }
    }

    /// Where the key stands: its dotted key for a section's key, the entry's key otherwise.
    pub fn path(&self, owner: Option<&Entry>) -> KeyPath {
        match owner {
            Some(owner) => owner.path.clone().key(self.name()),
            None => KeyPath::dotted(self.key),
        }
    }

    /// Checks a count, naming it as [`Bound::subject`] does and placing it at the key.
    pub fn check_count(&self, owner: Option<&Entry>, value: u64) -> Result<(), Problem> {
        self.count_message(owner, value)
            .map_err(|message| Problem::at(self.path(owner), message))
    }

    fn count_message(&self, owner: Option<&Entry>, value: u64) -> Result<(), String> {
        let Range::Count { min, max } = self.range else {
            return Err(format!("{}: internal error: not a count", self.key));
        };
        if value < min {
            Err(format!("{} must be at least {min}", self.subject(owner)))
        } else if value > max {
            Err(format!(
                "{} is {value}; the most allowed is {max}",
                self.subject(owner)
            ))
        } else {
            Ok(())
        }
    }

    /// Checks a duration, naming it as [`Bound::subject`] does and placing it at the key.
    pub fn check_duration(&self, owner: Option<&Entry>, value: Duration) -> Result<(), Problem> {
        self.duration_message(owner, value)
            .map_err(|message| Problem::at(self.path(owner), message))
    }

    fn duration_message(&self, owner: Option<&Entry>, value: Duration) -> Result<(), String> {
        let Range::Duration { min, max } = self.range else {
            return Err(format!("{}: internal error: not a duration", self.key));
        };
        let shown = |duration: Duration| humantime::format_duration(duration).to_string();
        if value < min && min == POSITIVE {
            Err(format!("{} must be longer than 0s", self.subject(owner)))
        } else if value < min {
            Err(format!(
                "{} is {}; the least allowed is {}",
                self.subject(owner),
                shown(value),
                shown(min)
            ))
        } else if value > max {
            Err(format!(
                "{} is {}; the most allowed is {}",
                self.subject(owner),
                shown(value),
                shown(max)
            ))
        } else {
            Ok(())
        }
    }

    /// Checks a duration of an entry, naming it by its own name alone (`timeout is 11m; ...`),
    /// for a message its owner prefixes (``check `web`: ``), as the config's own are.
    pub fn check_entry_duration(&self, value: Duration) -> Result<(), String> {
        self.duration_message(None, value)
            .map_err(|message| message.replacen(self.key, self.name(), 1))
    }

    /// `value`, or the range's top when it is above it: where a duration is used, so one that
    /// was never validated cannot overflow the arithmetic done on it. (Below the range
    /// nothing overflows; the value is left as it is.)
    pub fn cap_duration(&self, value: Duration) -> Duration {
        match self.range {
            Range::Duration { max, .. } => value.min(max),
            Range::Count { .. } => value,
        }
    }

    /// `value` brought into the range: where a size is used, so that neither 0 nor a size
    /// no allocator can hold reaches a channel or a queue.
    pub fn clamp_count(&self, value: usize) -> usize {
        match self.range {
            Range::Count { min, max } => {
                let min = usize::try_from(min).unwrap_or(usize::MAX);
                let max = usize::try_from(max).unwrap_or(usize::MAX);
                value.clamp(min, max.max(min))
            }
            Range::Duration { .. } => value,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_shows_keys_indexes_and_names() {
        let path = KeyPath::check(3).key("tls").key("ca_file");
        assert_eq!(path.to_string(), "checks[3].tls.ca_file");
        let path = KeyPath::dotted("maintenance").named("night").key("at");
        assert_eq!(path.to_string(), "maintenance[\"night\"].at");
        let problem = Entry::check(0, "web").problem("timeout", "timeout must be longer than 0s");
        assert_eq!(
            problem.message,
            "check `web`: timeout must be longer than 0s"
        );
        assert_eq!(problem.path.to_string(), "checks[0].timeout");
        assert_eq!(
            Entry::check(1, "a").problem("", "x").path,
            KeyPath::check(1)
        );
    }
}
