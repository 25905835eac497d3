//! Where a validation problem is: the path of the key it is about (`checks[3].tls.ca_file`),
//! said by the code that finds it, so nothing has to read a message's text to place it.

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_shows_keys_indexes_and_names() {
        let path = KeyPath::check(3).key("tls").key("ca_file");
        assert_eq!(path.to_string(), "checks[3].tls.ca_file");
        let path = KeyPath::dotted("maintenance").named("night").key("at");
        assert_eq!(path.to_string(), "maintenance[\"night\"].at");
    }
}
