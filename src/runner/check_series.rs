//! Which checks have `bastion_check_duration_seconds` series, decided at O(1) per observation.
//!
//! An agent that schedules (role `all`) knows its checks: their series follow the configured
//! list, with no cap, and one goes only when a reload removes its check or gives it another
//! type (a run of a type the configuration no longer has, still in flight, gets none). A
//! runner learns names from the bus: it keeps series for at most `runner.max_check_series`
//! checks, gives a new name past that none (refused and counted, never another check's series
//! forgotten to make room), and forgets a check only once it has not run here for
//! `forget_checks_after` and three of its intervals. Expiry goes through a heap of due times
//! holding one entry per check, popped only when due; a check that ran since is pushed back at
//! its new expiry. A runner does not know types: a check retyped elsewhere keeps its old
//! type's series there until the name expires as above.
//!
//! It must never scan every check on an observation or a scrape, and never forget a check that
//! still runs.

use crate::checks::CheckType;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// Why a run got no series.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refusal {
    /// A runner that already keeps series for `runner.max_check_series` checks.
    Capacity,
    /// An agent that schedules, and this check is not configured here with this type (a run
    /// of a check a reload removed or retyped, a test request, a request from another checker
    /// on the same bus).
    Unconfigured,
}

impl Refusal {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Refusal::Capacity => "capacity",
            Refusal::Unconfigured => "unconfigured",
        }
    }
}

/// Why a check's series go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Gone {
    /// Not run here for `forget_checks_after` and three of its intervals (counted).
    Expired,
    /// A reload removed it from the configuration, or gave it another type.
    Removed,
}

#[derive(Debug)]
pub(super) enum CheckSeries {
    Configured(Configured),
    Learned(Learned),
}

impl CheckSeries {
    pub(super) fn learned(limit: usize, forget_after: Duration) -> CheckSeries {
        CheckSeries::Learned(Learned {
            limit,
            forget_after,
            kept: HashMap::new(),
            due: BinaryHeap::new(),
            next_generation: 0,
        })
    }

    pub(super) fn configured(checks: watch::Receiver<crate::config::CheckList>) -> CheckSeries {
        CheckSeries::Configured(Configured {
            checks,
            list: Arc::new(Vec::new()),
            names: HashMap::new(),
        })
    }

    /// May a run of `check` of `check_type` (every `interval`) that ended `now` be recorded?
    /// `forget` is told of every check whose series go meanwhile.
    pub(super) fn admit(
        &mut self,
        check: &str,
        check_type: CheckType,
        interval: Duration,
        now: Instant,
        forget: &mut dyn FnMut(&str, Gone),
    ) -> Result<(), Refusal> {
        match self {
            CheckSeries::Configured(configured) => {
                configured.follow(forget);
                if configured.names.get(check) == Some(&check_type) {
                    Ok(())
                } else {
                    Err(Refusal::Unconfigured)
                }
            }
            CheckSeries::Learned(learned) => {
                learned.expire(now, forget);
                learned.admit(check, interval, now)
            }
        }
    }

    /// Lets go of every series due to go by `now` (at a scrape).
    pub(super) fn tidy(&mut self, now: Instant, forget: &mut dyn FnMut(&str, Gone)) {
        match self {
            CheckSeries::Configured(configured) => configured.follow(forget),
            CheckSeries::Learned(learned) => learned.expire(now, forget),
        }
    }

    /// The check list a reload sent and this has not taken up yet; prepare it without the
    /// lock, then `install` it.
    pub(super) fn reloaded(&self) -> Option<Reload> {
        match self {
            CheckSeries::Configured(configured) => configured.reloaded(),
            CheckSeries::Learned(_) => None,
        }
    }

    pub(super) fn install(&mut self, prepared: Prepared, forget: &mut dyn FnMut(&str, Gone)) {
        if let CheckSeries::Configured(configured) = self {
            configured.install(prepared, forget);
        }
    }

    /// `check`'s series were removed from outside (the sink forgot the check).
    pub(super) fn removed(&mut self, check: &str) {
        if let CheckSeries::Learned(learned) = self {
            learned.removed(check);
        }
    }

    /// Checks with series now (a runner), or checks configured (an agent that schedules).
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        match self {
            CheckSeries::Configured(configured) => configured.names.len(),
            CheckSeries::Learned(learned) => learned.kept.len(),
        }
    }
}

/// The configured checks, followed through the reload watch.
#[derive(Debug)]
pub(super) struct Configured {
    checks: watch::Receiver<crate::config::CheckList>,
    /// The list `names` was made from.
    list: crate::config::CheckList,
    /// Each configured check's type (a `Box<str>` key: a bucket as small as a set's was).
    names: HashMap<Box<str>, CheckType>,
}

/// A check list a reload sent that `Configured` has not taken up yet.
pub(super) struct Reload {
    old: crate::config::CheckList,
    new: crate::config::CheckList,
}

/// A reload's names, made without holding the lock: O(n) once per reload.
pub(super) struct Prepared {
    old: crate::config::CheckList,
    new: crate::config::CheckList,
    names: HashMap<Box<str>, CheckType>,
    /// Checks whose series go: removed, or configured with another type.
    gone: Vec<String>,
}

impl Reload {
    pub(super) fn prepare(self) -> Prepared {
        let names: HashMap<Box<str>, CheckType> = self
            .new
            .iter()
            .map(|check| (Box::from(check.name.as_str()), check.check_type()))
            .collect();
        let gone = self
            .old
            .iter()
            .filter(|check| names.get(check.name.as_str()) != Some(&check.check_type()))
            .map(|check| check.name.clone())
            .collect();
        Prepared {
            old: self.old,
            new: self.new,
            names,
            gone,
        }
    }
}

impl Configured {
    /// The list a reload sent, if it is not the one taken up (a pointer comparison). The
    /// reloader sends it before the checker can schedule a check it adds, so no run of a new
    /// check finds the old list.
    fn reloaded(&self) -> Option<Reload> {
        let current = Arc::clone(&self.checks.borrow());
        (!Arc::ptr_eq(&current, &self.list)).then(|| Reload {
            old: Arc::clone(&self.list),
            new: current,
        })
    }

    /// Takes up `prepared`, unless another list was taken up since it was made (then the
    /// next run or scrape prepares again). O(checks removed or retyped).
    fn install(&mut self, prepared: Prepared, forget: &mut dyn FnMut(&str, Gone)) {
        if !Arc::ptr_eq(&prepared.old, &self.list) {
            return;
        }
        for gone in &prepared.gone {
            forget(gone, Gone::Removed);
        }
        self.names = prepared.names;
        self.list = prepared.new;
    }

    fn follow(&mut self, forget: &mut dyn FnMut(&str, Gone)) {
        if let Some(reload) = self.reloaded() {
            self.install(reload.prepare(), forget);
        }
    }
}

/// The names a runner learned, each until it expires.
#[derive(Debug)]
pub(super) struct Learned {
    limit: usize,
    forget_after: Duration,
    kept: HashMap<Arc<str>, Kept>,
    /// One live entry per kept check, due no later than its expiry; entries of checks removed
    /// meanwhile are stale (another generation) and dropped when they come up.
    due: BinaryHeap<Reverse<(Instant, u64, Arc<str>)>>,
    next_generation: u64,
}

#[derive(Debug)]
struct Kept {
    expires: Instant,
    generation: u64,
}

impl Learned {
    fn admit(&mut self, check: &str, interval: Duration, now: Instant) -> Result<(), Refusal> {
        // Capped as validation caps them: a definition from the bus was never validated here.
        let keep = crate::config::bounds::FORGET_CHECKS_AFTER.cap_duration(self.forget_after);
        let interval = crate::config::bounds::CHECK_INTERVAL.cap_duration(interval);
        let expires = now + keep.max(interval.saturating_mul(3));
        if let Some(kept) = self.kept.get_mut(check) {
            // Never earlier: the heap entry must not come after the expiry it stands for.
            kept.expires = kept.expires.max(expires);
            return Ok(());
        }
        if self.kept.len() >= self.limit {
            return Err(Refusal::Capacity);
        }
        let name: Arc<str> = Arc::from(check);
        let generation = self.next_generation;
        self.next_generation += 1;
        self.kept.insert(
            Arc::clone(&name),
            Kept {
                expires,
                generation,
            },
        );
        self.due.push(Reverse((expires, generation, name)));
        Ok(())
    }

    /// Pops the entries due by `now`: a check that has not run since goes, one that has is
    /// pushed back at its new expiry. Each check comes up at most once per
    /// `forget_checks_after`, so the cost per observation is O(log n) amortised.
    fn expire(&mut self, now: Instant, forget: &mut dyn FnMut(&str, Gone)) {
        while let Some(Reverse((at, _, _))) = self.due.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((_, generation, name))) = self.due.pop() else {
                break;
            };
            let Some(kept) = self.kept.get(&name) else {
                continue;
            };
            if kept.generation != generation {
                continue;
            }
            if kept.expires <= now {
                self.kept.remove(&name);
                forget(&name, Gone::Expired);
            } else {
                self.due.push(Reverse((kept.expires, generation, name)));
            }
        }
    }

    fn removed(&mut self, check: &str) {
        if self.kept.remove(check).is_none() {
            return;
        }
        // Its heap entry stays until it comes up; rebuild once stale entries outnumber live
        // ones, so the heap stays within twice the checks kept (amortised O(1) per removal).
        if self.due.len() > 2 * self.kept.len() + 64 {
            self.due = self
                .kept
                .iter()
                .map(|(name, kept)| Reverse((kept.expires, kept.generation, Arc::clone(name))))
                .collect();
        }
    }

    pub(super) fn set(&mut self, limit: usize, forget_after: Duration) {
        self.limit = limit;
        self.forget_after = forget_after;
    }
}

impl CheckSeries {
    /// Sets a runner's bound and expiry; nothing for an agent that schedules.
    pub(super) fn set_learned(&mut self, limit: usize, forget_after: Duration) {
        if let CheckSeries::Learned(learned) = self {
            learned.set(limit, forget_after);
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    const MINUTE: Duration = Duration::from_secs(60);

    fn learned(limit: usize) -> CheckSeries {
        CheckSeries::learned(limit, Duration::from_secs(600))
    }

    fn admit(
        series: &mut CheckSeries,
        check: &str,
        now: Instant,
    ) -> (Result<(), Refusal>, Vec<String>) {
        let mut gone = Vec::new();
        let admitted = series.admit(check, CheckType::Tcp, MINUTE, now, &mut |name, _| {
            gone.push(name.to_string())
        });
        (admitted, gone)
    }

    #[test]
    fn a_runner_keeps_its_bound_and_refuses_past_it_without_forgetting_anyone() {
        let now = Instant::now();
        let mut series = learned(10_000);
        for n in 0..10_000 {
            assert_eq!(admit(&mut series, &format!("c{n}"), now), (Ok(()), vec![]));
        }
        assert_eq!(
            admit(&mut series, "c10000", now),
            (Err(Refusal::Capacity), vec![])
        );
        // Every kept check still records, and still has its place.
        assert_eq!(admit(&mut series, "c0", now), (Ok(()), vec![]));
        assert_eq!(admit(&mut series, "c9999", now), (Ok(()), vec![]));
        assert_eq!(series.len(), 10_000);
    }

    #[test]
    fn a_check_that_keeps_running_is_never_forgotten_and_one_that_stops_is() {
        let start = Instant::now();
        let mut series = learned(3);
        assert_eq!(admit(&mut series, "stays", start).0, Ok(()));
        assert_eq!(admit(&mut series, "stops", start).0, Ok(()));
        let mut gone = Vec::new();
        for minute in 1..=30 {
            let now = start + MINUTE * minute;
            let (admitted, forgotten) = admit(&mut series, "stays", now);
            assert_eq!(admitted, Ok(()));
            gone.extend(forgotten);
        }
        // `stops` went once ten minutes had passed without a run, `stays` never.
        assert_eq!(gone, ["stops"]);
        // Its place is free again.
        assert_eq!(admit(&mut series, "new", start + MINUTE * 31).0, Ok(()));
    }

    #[test]
    fn expiry_is_at_least_three_intervals() {
        let start = Instant::now();
        let mut series = learned(3);
        let hour = Duration::from_secs(3600);
        series
            .admit("hourly", CheckType::Tcp, hour, start, &mut |_, _| {})
            .unwrap();
        let mut gone = Vec::new();
        series.tidy(start + hour * 2, &mut |name, why| {
            gone.push((name.to_string(), why))
        });
        assert!(gone.is_empty());
        series.tidy(start + hour * 3, &mut |name, why| {
            gone.push((name.to_string(), why))
        });
        assert_eq!(gone, [("hourly".to_string(), Gone::Expired)]);
    }

    #[test]
    fn removed_checks_leave_no_entry_behind() {
        let now = Instant::now();
        let mut series = learned(100);
        for round in 0..1_000 {
            assert_eq!(admit(&mut series, &format!("c{round}"), now).0, Ok(()));
            series.removed(&format!("c{round}"));
        }
        let CheckSeries::Learned(learned) = &series else {
            unreachable!()
        };
        assert!(learned.kept.is_empty());
        assert!(
            learned.due.len() <= 64 + 1,
            "{} heap entries",
            learned.due.len()
        );
    }

    #[test]
    fn a_check_removed_and_learned_again_expires_once() {
        let start = Instant::now();
        let mut series = learned(10);
        assert_eq!(admit(&mut series, "a", start).0, Ok(()));
        series.removed("a");
        assert_eq!(admit(&mut series, "a", start + MINUTE).0, Ok(()));
        let mut gone = Vec::new();
        series.tidy(start + MINUTE * 60, &mut |name, _| {
            gone.push(name.to_string())
        });
        assert_eq!(gone, ["a"]);
    }

    /// A check list of tcp checks of these names.
    pub(in crate::runner) fn checks(names: &[&str]) -> crate::config::CheckList {
        let text: String = names
            .iter()
            .map(|name| {
                format!("[[checks]]\nname = \"{name}\"\ntype = \"tcp\"\naddress = \"127.0.0.1:1\"\ninterval = \"10s\"\n")
            })
            .collect();
        let config = crate::config::Config::parse(
            &text,
            crate::config::Format::Toml,
            std::path::Path::new("t.toml"),
        )
        .unwrap();
        crate::config::check_list(config.checks)
    }

    #[test]
    fn a_reload_prepared_from_an_older_list_is_not_taken_up() {
        let now = Instant::now();
        let (sender, receiver) = watch::channel(checks(&["a"]));
        let mut series = CheckSeries::configured(receiver);
        series.tidy(now, &mut |_, _| {});
        sender.send_replace(checks(&["a", "b"]));
        let slow = series.reloaded().expect("a reload").prepare();
        sender.send_replace(checks(&["c"]));
        let quick = series.reloaded().expect("a reload").prepare();
        let mut gone = Vec::new();
        series.install(quick, &mut |name, _| gone.push(name.to_string()));
        series.install(slow, &mut |name, _| gone.push(name.to_string()));
        assert_eq!(gone, ["a"]);
        assert!(series.reloaded().is_none());
        assert_eq!(admit(&mut series, "c", now), (Ok(()), vec![]));
        assert_eq!(admit(&mut series, "b", now).0, Err(Refusal::Unconfigured));
    }

    #[test]
    fn an_agent_that_schedules_keeps_exactly_its_configured_checks() {
        let now = Instant::now();
        let (sender, receiver) = watch::channel(checks(&["a", "b"]));
        let mut series = CheckSeries::configured(receiver);
        assert_eq!(admit(&mut series, "a", now), (Ok(()), vec![]));
        assert_eq!(admit(&mut series, "b", now), (Ok(()), vec![]));
        assert_eq!(
            admit(&mut series, "stranger", now).0,
            Err(Refusal::Unconfigured)
        );
        // A reload removes b and adds c: b's series go, c is admitted on its first run.
        sender.send_replace(checks(&["a", "c"]));
        assert_eq!(
            admit(&mut series, "c", now),
            (Ok(()), vec!["b".to_string()])
        );
        assert_eq!(admit(&mut series, "b", now).0, Err(Refusal::Unconfigured));
        // No expiry: a check that has not run for a day keeps its series.
        let mut gone = Vec::new();
        series.tidy(now + Duration::from_secs(86_400), &mut |name, _| {
            gone.push(name.to_string())
        });
        assert!(gone.is_empty());
        assert_eq!(series.len(), 2);
    }
}
