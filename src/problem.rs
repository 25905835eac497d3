//! A validation problem as a value: what is wrong (the message the user reads) and where (the
//! path of the key it is about, `checks[3].tls.ca_file`), said by the code that finds it.
//! `locate.rs` walks the parsed document along the path to give it a line and column; nothing
//! here or there ever reads a message's text to learn where it belongs.

use std::fmt;

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
