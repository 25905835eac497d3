//! Locations: where runners probe from, which of them are alive, and how a check run from
//! several of them is judged. The checker keeps a `LiveLocations` fed by the heartbeats it
//! already receives, to know where a run can go; the sink judges a check with `locations`
//! first per location (the usual state machine over that location's instances) and then
//! across them with `across_locations`. Pure: the callers pass the clock in; nothing here
//! publishes, records or waits.

use crate::messages::Heartbeat;
use crate::model::CheckState;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Duration;
use tokio::time::Instant;

/// Agents followed at most; past it a new agent's heartbeats are not followed (counted by
/// the caller), until others go quiet and make room.
pub const MAX_AGENTS: usize = 10_000;

/// How often a full map of agents is swept for quiet ones at most.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// How long after its last heartbeat an agent still counts as alive, in heartbeat intervals.
/// One and a half: one late heartbeat is not a death, two missing ones are.
const ALIVE_FOR_INTERVALS: f64 = 1.5;

#[derive(Debug, Clone)]
struct HeardFrom {
    location: String,
    /// Until when it counts as alive.
    until: Instant,
}

/// The runners heard from, by agent id, and the locations they probe from.
#[derive(Debug)]
pub struct LiveLocations {
    agents: HashMap<String, HeardFrom>,
    /// Per location, until when its longest-lived runner counts as alive: what a tick asks,
    /// answered without walking the agents.
    until: HashMap<String, Instant>,
    /// The agent's own location when it runs its own runner (role `all`): alive as long as
    /// the process is, whatever the bus says.
    local: Option<String>,
    /// Until then, a location not heard from yet is presumed alive: a checker that just
    /// started has not heard a full round of heartbeats.
    presume_until: Instant,
    /// Locations heard from during that time: no longer presumed anything.
    heard_during_presumption: HashSet<String>,
    /// When the map, full, was last swept of quiet agents.
    swept: Option<Instant>,
    /// The interval assumed for heartbeats that do not say theirs.
    default_interval: Duration,
}

/// What a heartbeat did to the set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heard {
    /// Not from a runner (a checker's), or not followed: nothing changed.
    Ignored,
    /// Followed: the agent is alive (or, leaving, no longer).
    Followed,
    /// A new agent past `MAX_AGENTS`: not followed.
    Refused,
}

impl LiveLocations {
    /// Heartbeats are expected every `interval`; `local` is this process's own runner's
    /// location, if it has one.
    pub fn new(interval: Duration, local: Option<String>, now: Instant) -> LiveLocations {
        LiveLocations {
            agents: HashMap::new(),
            until: HashMap::new(),
            local,
            presume_until: now + interval.mul_f64(ALIVE_FOR_INTERVALS),
            heard_during_presumption: HashSet::new(),
            swept: None,
            default_interval: interval,
        }
    }

    /// Takes one heartbeat, received at `now`.
    pub fn heard(&mut self, heartbeat: &Heartbeat, now: Instant) -> Heard {
        let Some(location) = &heartbeat.location else {
            return Heard::Ignored;
        };
        // A name no runner could have been configured with (an agent of another build, a
        // hostile peer) is no location: it would become a subject, a key and a label.
        if crate::config::location_name(location).is_err() {
            return Heard::Ignored;
        }
        if now < self.presume_until
            && self.heard_during_presumption.len() < MAX_AGENTS
            && !self.heard_during_presumption.contains(location)
        {
            self.heard_during_presumption.insert(location.clone());
        }
        if heartbeat.leaving {
            if let Some(gone) = self.agents.remove(&heartbeat.agent) {
                self.recount(&gone.location);
            }
            return Heard::Followed;
        }
        let interval = heartbeat
            .interval_seconds
            .filter(|seconds| seconds.is_finite() && *seconds > 0.0)
            .map(|seconds| {
                crate::config::bounds::HEARTBEAT_INTERVAL
                    .cap_duration(Duration::from_secs_f64(seconds.min(1e6)))
            })
            .unwrap_or(self.default_interval);
        let until = now + interval.mul_f64(ALIVE_FOR_INTERVALS);
        if let Some(known) = self.agents.get_mut(&heartbeat.agent) {
            let moved = (known.location != *location).then(|| known.location.clone());
            known.location.clone_from(location);
            known.until = until;
            if let Some(before) = moved {
                self.recount(&before);
            }
            self.extend(location, until);
            return Heard::Followed;
        }
        if self.agents.len() >= MAX_AGENTS {
            // A sweep walks every agent: at most one a second, however many strangers beat.
            if self
                .swept
                .is_none_or(|at| now.saturating_duration_since(at) >= SWEEP_EVERY)
            {
                self.swept = Some(now);
                self.forget_quiet(now);
            }
            if self.agents.len() >= MAX_AGENTS {
                return Heard::Refused;
            }
        }
        self.agents.insert(
            heartbeat.agent.clone(),
            HeardFrom {
                location: location.clone(),
                until,
            },
        );
        self.extend(location, until);
        Heard::Followed
    }

    fn extend(&mut self, location: &str, until: Instant) {
        match self.until.get_mut(location) {
            Some(known) => *known = (*known).max(until),
            None => {
                self.until.insert(location.to_string(), until);
            }
        }
    }

    /// Recomputes how long `location` lives after one of its runners left it (rare: a
    /// runner stopping or moving), from the runners it still has.
    fn recount(&mut self, location: &str) {
        let until = self
            .agents
            .values()
            .filter(|agent| agent.location == location)
            .map(|agent| agent.until)
            .max();
        match until {
            Some(until) => {
                self.until.insert(location.to_string(), until);
            }
            None => {
                self.until.remove(location);
            }
        }
    }

    /// Whether a run for `location` has a runner to go to at `now`.
    pub fn is_live(&self, location: &str, now: Instant) -> bool {
        self.local.as_deref() == Some(location)
            || self.until.get(location).is_some_and(|until| *until > now)
            || (now < self.presume_until && !self.heard_during_presumption.contains(location))
    }

    /// Every location with a live runner at `now`, in order (for `locations = ["*"]`).
    pub fn live(&self, now: Instant) -> BTreeSet<String> {
        self.until
            .iter()
            .filter(|(_, until)| **until > now)
            .map(|(location, _)| location.clone())
            .chain(self.local.clone())
            .collect()
    }

    /// Forgets agents that went quiet, so the map holds only the living.
    pub fn forget_quiet(&mut self, now: Instant) {
        self.agents.retain(|_, agent| agent.until > now);
        self.until.retain(|_, until| *until > now);
    }

    /// Runners followed now.
    pub fn agents(&self) -> usize {
        self.agents.len()
    }
}

/// How many locations see the check in each kind of trouble.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LocationCounts {
    /// In `FAIL` or `PASS_WAIT`: failing, and not yet confirmed recovered.
    pub failing: usize,
    /// In `FAIL_WAIT`: failing, not yet for `min_failing_time`.
    pub pending: usize,
    /// In `WARN`: some instances failing, fewer than `min_failing_count`.
    pub warning: usize,
}

impl LocationCounts {
    /// Counts the states of the locations that measured something last.
    pub fn of(states: impl IntoIterator<Item = CheckState>) -> LocationCounts {
        let mut counts = LocationCounts::default();
        for state in states {
            match state {
                CheckState::Fail | CheckState::PassWait => counts.failing += 1,
                CheckState::FailWait => counts.pending += 1,
                CheckState::Warn => counts.warning += 1,
                CheckState::Ok => {}
            }
        }
        counts
    }
}

/// A check's state across its locations: `FAIL` when at least `min_failing_locations` of them
/// see it failing, `FAIL_WAIT` when that many would with the ones still waiting, `WARN` when
/// any location sees trouble, else `OK`. Each location waited its own `min_failing_time`
/// already, so the combined state adds no wait of its own.
pub fn across_locations(counts: LocationCounts, min_failing_locations: usize) -> CheckState {
    let needed = min_failing_locations.max(1);
    if counts.failing >= needed {
        CheckState::Fail
    } else if counts.failing + counts.pending >= needed {
        CheckState::FailWait
    } else if counts.failing + counts.pending + counts.warning > 0 {
        CheckState::Warn
    } else {
        CheckState::Ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::MESSAGE_VERSION;
    use std::time::SystemTime;

    fn beat(agent: &str, location: Option<&str>, leaving: bool) -> Heartbeat {
        Heartbeat {
            version: MESSAGE_VERSION,
            agent: agent.into(),
            location: location.map(str::to_string),
            leaving,
            interval_seconds: Some(10.0),
            role: "runner".into(),
            bastion_version: "0".into(),
            sent_at: SystemTime::now(),
            uptime_seconds: 1.0,
            leader: None,
            workers: Default::default(),
        }
    }

    #[test]
    fn a_location_lives_while_one_of_its_runners_is_heard_from() {
        let start = Instant::now();
        let mut live = LiveLocations::new(Duration::from_secs(10), None, start);
        // Before a round of heartbeats, an unknown location is presumed alive.
        assert!(live.is_live("eu", start));
        assert!(!live.is_live("eu", start + Duration::from_secs(16)));
        assert_eq!(
            live.heard(&beat("a", Some("eu"), false), start),
            Heard::Followed
        );
        assert_eq!(
            live.heard(
                &beat("b", Some("eu"), false),
                start + Duration::from_secs(5)
            ),
            Heard::Followed
        );
        assert_eq!(
            live.heard(&beat("checker", None, false), start),
            Heard::Ignored
        );
        // A known location is judged by its runners, presumption or not.
        assert!(!live.is_live("us", start + Duration::from_secs(20)));
        assert!(live.is_live("eu", start + Duration::from_secs(14)));
        assert!(
            live.is_live("eu", start + Duration::from_secs(19)),
            "b is still alive"
        );
        assert!(
            !live.is_live("eu", start + Duration::from_secs(20)),
            "both went quiet"
        );
        // One that leaves is gone at once; the other keeps the location alive.
        live.heard(&beat("a", Some("eu"), true), start + Duration::from_secs(6));
        assert!(live.is_live("eu", start + Duration::from_secs(7)));
        live.heard(&beat("b", Some("eu"), true), start + Duration::from_secs(8));
        assert!(!live.is_live("eu", start + Duration::from_secs(8)));
        assert!(live.live(start + Duration::from_secs(8)).is_empty());
    }

    #[test]
    fn the_local_runner_is_always_live_and_the_map_is_bounded() {
        let start = Instant::now();
        let mut live = LiveLocations::new(Duration::from_secs(1), Some("here".into()), start);
        assert!(live.is_live("here", start + Duration::from_secs(3600)));
        for index in 0..MAX_AGENTS {
            live.heard(&beat(&format!("r{index}"), Some("x"), false), start);
        }
        assert_eq!(live.agents(), MAX_AGENTS);
        let refused = live.heard(&beat("one-more", Some("y"), false), start);
        assert_eq!(
            refused,
            Heard::Refused,
            "10,001st agent while all are alive"
        );
        // Once the others went quiet, a new one makes room.
        let later = start + Duration::from_secs(60);
        assert_eq!(
            live.heard(&beat("one-more", Some("y"), false), later),
            Heard::Followed
        );
        assert_eq!(live.agents(), 1);
        assert_eq!(
            live.live(later).into_iter().collect::<Vec<_>>(),
            vec!["here".to_string(), "y".to_string()]
        );
    }

    #[test]
    fn a_heartbeat_with_a_name_no_runner_could_have_is_not_followed() {
        let start = Instant::now();
        let mut live = LiveLocations::new(Duration::from_secs(10), None, start);
        let later = start + Duration::from_secs(20);
        for bad in ["eu.west", "", "a b", &"x".repeat(65), "eu-west.>"] {
            assert_eq!(
                live.heard(&beat("r", Some(bad), false), later),
                Heard::Ignored,
                "{bad:?}"
            );
        }
        assert!(live.live(later).is_empty());
        assert_eq!(live.agents(), 0);
    }

    #[test]
    fn the_check_is_judged_across_its_locations() {
        use CheckState::*;
        let judge = |states: &[CheckState], min: usize| {
            across_locations(LocationCounts::of(states.iter().copied()), min)
        };
        let table: &[(&[CheckState], usize, CheckState)] = &[
            (&[Ok, Ok, Ok], 2, Ok),
            (&[Fail, Ok, Ok], 2, Warn),
            (&[Fail, Fail, Ok], 2, Fail),
            (&[Fail, PassWait, Ok], 2, Fail),
            (&[Fail, FailWait, Ok], 2, FailWait),
            (&[Warn, Ok, Ok], 1, Warn),
            (&[FailWait, Ok, Ok], 1, FailWait),
            (&[Fail, Ok, Ok], 1, Fail),
            (&[Fail, Fail, Fail], 3, Fail),
            (&[Fail, Fail, Warn], 3, Warn),
            (&[], 1, Ok),
            (&[Fail], 0, Fail),
        ];
        for (states, min, expected) in table {
            assert_eq!(judge(states, *min), *expected, "{states:?} with {min}");
        }
    }
}
