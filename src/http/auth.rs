//! HTTP basic auth against bcrypt hashes, as Prometheus's exporter-toolkit does it. bcrypt is
//! slow on purpose (tens of milliseconds), so each verification runs off the async workers, at
//! most two at a time, and the last password that verified for each user is remembered so a
//! scraper that sends the same credentials every 15 s pays the cost once. Unknown users cost a
//! bcrypt too, so timing does not tell which user names exist. It never logs a password.

use base64::Engine;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use tokio::sync::Semaphore;

/// A hash of nothing anyone uses, verified for unknown users to keep timing even.
const DECOY_HASH: &str = "$2b$10$2sO5tKYLLtnWlQZ6kxrKPeuEjbtaPuy0D3qYuzP3H9k6.zN4cLdla";

#[derive(Debug)]
pub struct BasicAuth {
    users: BTreeMap<String, String>,
    /// Per user, the password that last verified.
    verified: Mutex<HashMap<String, Vec<u8>>>,
    bcrypt_slots: Arc<Semaphore>,
}

impl BasicAuth {
    pub fn new(users: BTreeMap<String, String>) -> BasicAuth {
        BasicAuth {
            users,
            verified: Mutex::new(HashMap::new()),
            bcrypt_slots: Arc::new(Semaphore::new(2)),
        }
    }

    /// Whether an `Authorization` header value carries a known user and its password.
    pub async fn allows(&self, authorization: Option<&[u8]>) -> bool {
        let Some((user, password)) = authorization.and_then(parse_basic) else {
            return false;
        };
        if let Some(known) = self.cache().get(&user) {
            if constant_time_eq(known, password.as_bytes()) {
                return true;
            }
        }
        let (hash, known_user) = match self.users.get(&user) {
            Some(hash) => (hash.clone(), true),
            None => (DECOY_HASH.to_string(), false),
        };
        let Ok(_slot) = Arc::clone(&self.bcrypt_slots).acquire_owned().await else {
            return false;
        };
        let candidate = password.clone();
        let verified = tokio::task::spawn_blocking(move || {
            bcrypt::verify(candidate.as_bytes(), &hash).unwrap_or(false)
        })
        .await
        .unwrap_or(false);
        if verified && known_user {
            self.cache().insert(user, password.into_bytes());
            return true;
        }
        false
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<u8>>> {
        // Entries are replaced whole; a poisoned map is still consistent.
        self.verified
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// `Basic base64(user:password)` into its parts.
fn parse_basic(header: &[u8]) -> Option<(String, String)> {
    let text = std::str::from_utf8(header).ok()?;
    let (scheme, encoded) = text.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(user: &str, password: &str) -> Vec<u8> {
        let encoded =
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        format!("Basic {encoded}").into_bytes()
    }

    #[tokio::test]
    async fn only_the_right_password_of_a_known_user_passes() {
        let hash = bcrypt::hash("s3cret", 4).unwrap();
        let auth = BasicAuth::new(BTreeMap::from([("prom".to_string(), hash)]));
        assert!(auth.allows(Some(&header("prom", "s3cret"))).await);
        assert!(auth.allows(Some(&header("prom", "s3cret"))).await, "cached");
        assert!(!auth.allows(Some(&header("prom", "s3cre"))).await);
        assert!(!auth.allows(Some(&header("other", "s3cret"))).await);
        assert!(!auth.allows(Some(b"Bearer abc")).await);
        assert!(!auth.allows(Some(b"Basic !!!")).await);
        assert!(!auth.allows(None).await);
    }

    #[test]
    fn hashes_are_checked_and_the_decoy_is_one() {
        assert!(crate::config::check_hash(DECOY_HASH).is_ok());
        assert!(crate::config::check_hash("plaintext").is_err());
    }
}
