//! The writer's cache of database ids: a check's by its name, an instance's by its check and
//! address. Every batch touches the names and addresses it writes, and entries no batch has
//! touched for `IDLE` leave at the next sweep. So a check a reload renamed or removed is
//! forgotten within about an hour, and every check still running keeps its ids however many
//! there are: the cache never falls over at a size and sends everything back to the
//! database (it used to be cleared whole past 100,000 checks).
//!
//! Cost: a lookup or a touch is a hash lookup with no allocation; a sweep walks every entry
//! once per `SWEEP_EVERY`, so its cost per probe does not grow with the number of checks.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// How long an entry stays without being used. Longer than any check's interval would make
/// rarely run checks pay nothing, but a check run less often than this pays only two queries
/// per run, and a shorter idle time keeps renamed checks from piling up.
const IDLE: Duration = Duration::from_secs(3600);
/// How often entries past `IDLE` are looked for.
const SWEEP_EVERY: Duration = Duration::from_secs(300);

#[derive(Clone, Copy)]
struct Cached {
    id: i64,
    used: Instant,
}

pub(super) struct IdCache {
    checks: HashMap<Arc<str>, Cached>,
    /// Instances by check id and address, in one table: a table per check took about 200
    /// bytes for a check's one instance. Looked up by `(i64, &str)` without building a key.
    instances: HashMap<InstanceKey, Cached>,
    next_sweep: Instant,
}

/// An instance's key: its check's id and its address.
struct InstanceKey {
    check_id: i64,
    address: Box<str>,
}

/// A key's parts, borrowed: what the table hashes and compares, so a lookup by a check id and
/// a `&str` finds an `InstanceKey` without building one.
trait InstanceParts {
    fn parts(&self) -> (i64, &str);
}

impl InstanceParts for InstanceKey {
    fn parts(&self) -> (i64, &str) {
        (self.check_id, &self.address)
    }
}

impl InstanceParts for (i64, &str) {
    fn parts(&self) -> (i64, &str) {
        (self.0, self.1)
    }
}

impl<'a> Borrow<dyn InstanceParts + 'a> for InstanceKey {
    fn borrow(&self) -> &(dyn InstanceParts + 'a) {
        self
    }
}

// The key and its borrowed form hash and compare by the same parts, as `Borrow` requires.
impl Hash for dyn InstanceParts + '_ {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.parts().hash(state);
    }
}

impl PartialEq for dyn InstanceParts + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.parts() == other.parts()
    }
}

impl Eq for dyn InstanceParts + '_ {}

impl Hash for InstanceKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.parts().hash(state);
    }
}

impl PartialEq for InstanceKey {
    fn eq(&self, other: &Self) -> bool {
        self.parts() == other.parts()
    }
}

impl Eq for InstanceKey {}

impl IdCache {
    pub(super) fn new(now: Instant) -> IdCache {
        IdCache {
            checks: HashMap::new(),
            instances: HashMap::new(),
            next_sweep: now + SWEEP_EVERY,
        }
    }

    /// The check's id, if cached.
    pub(super) fn check(&self, name: &str) -> Option<i64> {
        self.checks.get(name).map(|cached| cached.id)
    }

    /// The instance's id, if cached.
    pub(super) fn instance(&self, check_id: i64, address: &str) -> Option<i64> {
        self.instances
            .get(&(check_id, address) as &dyn InstanceParts)
            .map(|cached| cached.id)
    }

    /// Marks the check used at `now`; false when it is not cached.
    pub(super) fn touch_check(&mut self, name: &str, now: Instant) -> bool {
        match self.checks.get_mut(name) {
            Some(cached) => {
                cached.used = now;
                true
            }
            None => false,
        }
    }

    /// Marks the instance used at `now`; false when it is not cached.
    pub(super) fn touch_instance(&mut self, check_id: i64, address: &str, now: Instant) -> bool {
        match self
            .instances
            .get_mut(&(check_id, address) as &dyn InstanceParts)
        {
            Some(cached) => {
                cached.used = now;
                true
            }
            None => false,
        }
    }

    pub(super) fn insert_check(&mut self, name: Arc<str>, id: i64, now: Instant) {
        self.checks.insert(name, Cached { id, used: now });
    }

    pub(super) fn insert_instance(&mut self, check_id: i64, address: &str, id: i64, now: Instant) {
        let key = InstanceKey {
            check_id,
            address: Box::from(address),
        };
        self.instances.insert(key, Cached { id, used: now });
    }

    /// Forgets the entries no batch has used for `IDLE`, at most once per `SWEEP_EVERY`.
    /// Call it before touching a batch's entries, never between touching and looking up.
    pub(super) fn sweep(&mut self, now: Instant) {
        if now < self.next_sweep {
            return;
        }
        self.next_sweep = now + SWEEP_EVERY;
        let Some(cutoff) = now.checked_sub(IDLE) else {
            return;
        };
        self.checks.retain(|_, cached| cached.used >= cutoff);
        self.instances.retain(|_, cached| cached.used >= cutoff);
    }

    #[cfg(test)]
    fn len(&self) -> (usize, usize) {
        (self.checks.len(), self.instances.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_in_use_stay_however_many_and_idle_ones_leave() {
        let start = Instant::now();
        let mut cache = IdCache::new(start);
        // 120,000 checks: past the size at which the old cache was cleared whole.
        for id in 0..120_000_i64 {
            let name: Arc<str> = Arc::from(format!("check-{id}"));
            cache.insert_check(name, id, start);
            cache.insert_instance(id, "10.0.0.1:80", id + 1_000_000, start);
        }
        assert_eq!(cache.len(), (120_000, 120_000));
        // Half keep running; the other half (a reload removed them) are never touched again.
        let mut now = start;
        while now < start + IDLE + SWEEP_EVERY * 2 {
            now += SWEEP_EVERY;
            cache.sweep(now);
            for id in (0..120_000_i64).step_by(2) {
                assert!(cache.touch_check(&format!("check-{id}"), now));
                assert!(cache.touch_instance(id, "10.0.0.1:80", now));
            }
        }
        assert_eq!(cache.len(), (60_000, 60_000));
        assert_eq!(cache.check("check-119998"), Some(119_998));
        assert_eq!(cache.instance(119_998, "10.0.0.1:80"), Some(1_119_998));
        assert_eq!(cache.check("check-1"), None);
        assert_eq!(cache.instance(1, "10.0.0.1:80"), None);
    }

    #[test]
    fn an_entry_used_just_within_the_idle_time_stays_and_one_just_past_it_leaves() {
        let start = Instant::now();
        let mut cache = IdCache::new(start);
        cache.insert_check(Arc::from("kept"), 1, start + Duration::from_secs(1));
        cache.insert_check(Arc::from("gone"), 2, start);
        cache.insert_instance(1, "a", 3, start + Duration::from_secs(1));
        cache.insert_instance(1, "b", 4, start);
        // A sweep before SWEEP_EVERY is a no-op, whatever the ages.
        cache.sweep(start + SWEEP_EVERY - Duration::from_millis(1));
        assert_eq!(cache.len(), (2, 2));
        cache.sweep(start + IDLE + Duration::from_millis(500));
        assert_eq!(cache.check("kept"), Some(1));
        assert_eq!(cache.check("gone"), None);
        assert_eq!(cache.instance(1, "a"), Some(3));
        assert_eq!(cache.instance(1, "b"), None);
        // The next sweep waits SWEEP_EVERY again.
        cache.sweep(start + IDLE + Duration::from_secs(2));
        assert_eq!(cache.check("kept"), Some(1));
    }

    #[test]
    fn an_address_is_cached_per_check() {
        let now = Instant::now();
        let mut cache = IdCache::new(now);
        cache.insert_instance(1, "10.0.0.1:80", 11, now);
        cache.insert_instance(2, "10.0.0.1:80", 22, now);
        assert_eq!(cache.instance(1, "10.0.0.1:80"), Some(11));
        assert_eq!(cache.instance(2, "10.0.0.1:80"), Some(22));
        assert_eq!(cache.instance(3, "10.0.0.1:80"), None);
        assert!(!cache.touch_instance(3, "10.0.0.1:80", now));
    }
}
