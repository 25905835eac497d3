//! Subject names: every subject bastion uses, under one prefix, and NATS's rules for matching
//! and validating them. They are part of the wire contract (docs/bus.md), shared by the bus,
//! the checker, the runner and the sink; this module never sends anything.

use crate::checks::CheckType;

/// The subject names, all under one prefix.
#[derive(Debug, Clone)]
pub struct Subjects {
    prefix: String,
}

/// The queue group that runners share check requests through.
pub const RUNNER_QUEUE_GROUP: &str = "bastion-runners";

/// The queue group the runners of one location share that location's runs through.
pub fn location_queue_group(location: &str) -> String {
    format!("{RUNNER_QUEUE_GROUP}-{}", subject_token(location))
}

impl Subjects {
    pub fn new(prefix: &str) -> Subjects {
        Subjects {
            prefix: prefix.to_string(),
        }
    }

    pub fn checks(&self, check_type: CheckType) -> String {
        format!("{}.checks.{}", self.prefix, check_type.as_str())
    }

    /// Runs of checks with `locations`, for one location's runners only. A location name is
    /// one token (`config::location_name`), so this never meets `checks.<type>`.
    pub fn checks_at(&self, location: &str, check_type: CheckType) -> String {
        format!(
            "{}.checks.{}.{}",
            self.prefix,
            subject_token(location),
            check_type.as_str()
        )
    }

    pub fn results(&self, check: &str) -> String {
        format!("{}.results.{check}", self.prefix)
    }

    pub fn all_results(&self) -> String {
        format!("{}.results.>", self.prefix)
    }

    /// State transitions of one check.
    pub fn events(&self, check: &str) -> String {
        format!("{}.events.{check}", self.prefix)
    }

    /// Request/reply: run this check definition now and reply with its result.
    pub fn test(&self, check_type: CheckType) -> String {
        format!("{}.test.{}", self.prefix, check_type.as_str())
    }

    /// Where an agent says it is alive. The id is reduced to one subject token.
    pub fn heartbeat(&self, agent_id: &str) -> String {
        format!("{}.heartbeat.{}", self.prefix, subject_token(agent_id))
    }

    pub fn all_heartbeats(&self) -> String {
        format!("{}.heartbeat.>", self.prefix)
    }

    /// A process's own subject for the round trip that shows its subscriptions are in
    /// effect (`Bus::settle`); `process` is unique to it. Nothing else subscribes to it.
    pub fn settle(&self, process: &str) -> String {
        format!("{}.settle.{process}", self.prefix)
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }
}

/// `text` as one subject token: anything but letters, digits, `-` and `_` becomes `_`.
pub fn subject_token(text: &str) -> String {
    let token: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if token.is_empty() {
        "_".to_string()
    } else {
        token
    }
}

impl Default for Subjects {
    fn default() -> Self {
        Subjects::new("bastion")
    }
}

/// Whether `subject` (no wildcards) matches `pattern` (NATS rules).
pub fn subject_matches(pattern: &str, subject: &str) -> bool {
    tokens_match(pattern.split('.'), subject.split('.'))
}

/// `subject_matches` on subjects already split into tokens, for a publish matched against
/// many subscriptions: the subject is split once, not once per subscription.
pub fn tokens_match<'a, 'b>(
    pattern: impl IntoIterator<Item = &'a str>,
    subject: impl IntoIterator<Item = &'b str>,
) -> bool {
    let mut subject_tokens = subject.into_iter();
    for token in pattern {
        if token == ">" {
            return subject_tokens.next().is_some();
        }
        match subject_tokens.next() {
            Some(actual) if token == "*" || token == actual => {}
            _ => return false,
        }
    }
    subject_tokens.next().is_none()
}

/// Valid: non-empty dot-separated tokens without spaces; wildcards only where allowed.
pub fn valid_subject(subject: &str, wildcards: bool) -> bool {
    // Checked per message: no token list is built.
    let mut tokens = subject.split('.').peekable();
    while let Some(token) = tokens.next() {
        let last = tokens.peek().is_none();
        let valid = !token.is_empty()
            && !token.contains(char::is_whitespace)
            && match token {
                "*" => wildcards,
                ">" => wildcards && last,
                other => !other.contains(['*', '>']),
            };
        if !valid {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_like_nats() {
        assert!(subject_matches("bastion.results.>", "bastion.results.web"));
        assert!(subject_matches(
            "bastion.results.>",
            "bastion.results.web.x"
        ));
        assert!(!subject_matches("bastion.results.>", "bastion.results"));
        assert!(subject_matches("bastion.*.http", "bastion.checks.http"));
        assert!(!subject_matches("bastion.*.http", "bastion.checks.tcp"));
        assert!(subject_matches(
            "bastion.checks.http",
            "bastion.checks.http"
        ));
        assert!(!subject_matches(
            "bastion.checks.http",
            "bastion.checks.http.x"
        ));
        assert!(!subject_matches(
            "bastion.checks.http.x",
            "bastion.checks.http"
        ));
    }

    #[test]
    fn subjects_are_validated() {
        assert!(valid_subject("bastion.results.>", true));
        assert!(!valid_subject("bastion.results.>", false));
        assert!(!valid_subject("bastion.>.x", true));
        assert!(!valid_subject("bastion..x", false));
        assert!(!valid_subject("bastion.a b", false));
        assert!(!valid_subject("bastion.a*", true));
        assert!(valid_subject("bastion.*.http", true));
        assert!(valid_subject(">", true));
        assert!(!valid_subject("", false));
        assert!(!valid_subject("bastion.results.", false));
    }
}
