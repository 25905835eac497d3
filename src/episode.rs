//! Failure episodes: the one engine that turns a check's states into episode events, which
//! history stores as incidents and notifications route to receivers. An episode is a stretch
//! of trouble: it *opens* when the check enters a state that notifies (`FAIL`, or `WARN` when
//! the check's `notify_on` lists `warn`), may *escalate* (warning to critical) and
//! *de-escalate* (critical to warning) while it lasts, and *closes* when the check is calm
//! again (`OK`, or `WARN` when warnings do not notify), or when it ends for another reason:
//! a reload changed what the check probes, a reload (or the config read at start) removed
//! the check, or the agent can no longer follow it (`interrupted`).
//!
//! Its id is derived from the check's name and the scheduled time of the first failing run
//! since the check was last calm, so every checker that saw the same results (HA standbys
//! follow states too) computes the same id, and a failover repeats an event rather than
//! contradicting it. Open episodes are saved across restarts (`saved_state.rs`), so a restart
//! continues an episode under its id instead of starting another.
//!
//! Times: an episode starts when its first failing run finished, opens when the run that
//! entered the notifying state finished, and ends when the first passing run of the stretch
//! that led back to calm finished (a return to `FAIL` from `PASS_WAIT` continues it).
//!
//! Pure: callers pass the states and times in; it publishes, records and sends nothing.

use crate::model::{CheckState, EndReason, Severity};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::SystemTime;

/// The id of the episode of `check` whose first failing run was scheduled at `first_run`.
pub fn episode_id(check: &str, first_run: SystemTime) -> String {
    // Microseconds, as results carry on the bus, so every checker hashes the same text.
    let text = format!("{check}\n{}", humantime::format_rfc3339_micros(first_run));
    let digest = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
    digest.as_ref()[..16]
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// One episode, open or just closed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Episode {
    pub id: String,
    pub check: String,
    /// When its first failing run finished.
    #[serde(with = "humantime_serde")]
    pub started_at: SystemTime,
    /// When the run that made it notify finished.
    #[serde(with = "humantime_serde")]
    pub opened_at: SystemTime,
    /// How bad it is now.
    pub severity: Severity,
    /// The worst it has been.
    pub peak: Severity,
}

/// What happened to a check's episode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EpisodeEvent {
    Opened(Episode),
    /// Warning to critical.
    Escalated(Episode),
    /// Critical to warning.
    DeEscalated(Episode),
    Closed {
        episode: Episode,
        reason: EndReason,
        /// When it ended (see the module's note on times).
        at: SystemTime,
    },
}

impl EpisodeEvent {
    pub fn episode(&self) -> &Episode {
        match self {
            EpisodeEvent::Opened(episode)
            | EpisodeEvent::Escalated(episode)
            | EpisodeEvent::DeEscalated(episode)
            | EpisodeEvent::Closed { episode, .. } => episode,
        }
    }
}

/// The run a state was observed with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunTimes {
    #[serde(with = "humantime_serde")]
    pub scheduled_at: SystemTime,
    #[serde(with = "humantime_serde")]
    pub finished_at: SystemTime,
}

/// One check's place in its episodes; saved across restarts with the check's state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Track {
    /// The first failing run since the check was last calm.
    #[serde(default)]
    failing_since: Option<RunTimes>,
    /// When the first passing run since the check last failed finished (`PASS_WAIT`).
    #[serde(default, with = "humantime_serde")]
    recovering_since: Option<SystemTime>,
    /// Boxed: most checks never have one, and every configured check has a track.
    #[serde(default)]
    open: Option<Box<Episode>>,
}

impl Track {
    /// A track with `episode` open since `first_run` (an earlier version's saved episode).
    pub fn resumed(episode: Episode, first_run: RunTimes) -> Track {
        Track {
            failing_since: Some(first_run),
            recovering_since: None,
            open: Some(Box::new(episode)),
        }
    }

    /// The open episode, if any.
    pub fn open(&self) -> Option<&Episode> {
        self.open.as_deref()
    }

    /// Nothing to remember: calm, no episode.
    pub fn is_calm(&self) -> bool {
        self.failing_since.is_none() && self.open.is_none()
    }

    /// Takes the state a run left `check` in; `warn_opens` says whether `WARN` notifies.
    pub fn observe(
        &mut self,
        check: &str,
        warn_opens: bool,
        state: CheckState,
        run: RunTimes,
    ) -> Option<EpisodeEvent> {
        let severity = match state {
            CheckState::Fail | CheckState::PassWait => Some(Severity::Critical),
            CheckState::Warn if warn_opens => Some(Severity::Warning),
            CheckState::Warn | CheckState::Ok => {
                let ended = self.recovering_since.take().unwrap_or(run.finished_at);
                self.failing_since = None;
                return self.open.take().map(|episode| EpisodeEvent::Closed {
                    episode: *episode,
                    reason: EndReason::Recovered,
                    at: ended,
                });
            }
            // Failing, not yet for long enough: an open episode goes on as it is.
            CheckState::FailWait => None,
        };
        let first = *self.failing_since.get_or_insert(run);
        if state == CheckState::PassWait {
            self.recovering_since.get_or_insert(run.finished_at);
        } else {
            self.recovering_since = None;
        }
        let severity = severity?;
        match &mut self.open {
            None => {
                let episode = Episode {
                    id: episode_id(check, first.scheduled_at),
                    check: check.to_string(),
                    started_at: first.finished_at,
                    opened_at: run.finished_at,
                    severity,
                    peak: severity,
                };
                self.open = Some(Box::new(episode.clone()));
                Some(EpisodeEvent::Opened(episode))
            }
            Some(episode) if episode.severity != severity => {
                episode.severity = severity;
                episode.peak = episode.peak.worst(severity);
                Some(match severity {
                    Severity::Critical => EpisodeEvent::Escalated((**episode).clone()),
                    Severity::Warning => EpisodeEvent::DeEscalated((**episode).clone()),
                })
            }
            Some(_) => None,
        }
    }

    /// Ends the open episode for a reason other than recovery, and forgets the stretch.
    pub fn end(&mut self, reason: EndReason, at: SystemTime) -> Option<EpisodeEvent> {
        self.failing_since = None;
        self.recovering_since = None;
        self.open.take().map(|episode| EpisodeEvent::Closed {
            episode: *episode,
            reason,
            at,
        })
    }
}

/// What is saved of one check across a restart: its state, its episode, and what it
/// probed, so that a check changed while the agent was down starts afresh.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedCheck {
    pub check: String,
    /// `CheckConfig::probe_fingerprint` of the definition the state belongs to.
    pub fingerprint: String,
    pub state: CheckState,
    /// When the state was entered (wall clock).
    #[serde(with = "humantime_serde")]
    pub since: SystemTime,
    pub track: Track,
    /// For a check with `locations`: each location's own state, and since when.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub locations: BTreeMap<String, SavedLocation>,
}

/// What is kept of one location of a troubled check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedLocation {
    pub state: CheckState,
    #[serde(with = "humantime_serde")]
    pub since: SystemTime,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};
    use CheckState::*;

    fn at(seconds: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(seconds)
    }

    /// A run scheduled at `seconds` that finished a second later.
    fn run(seconds: u64) -> RunTimes {
        RunTimes {
            scheduled_at: at(seconds),
            finished_at: at(seconds + 1),
        }
    }

    /// What each step produced, in short: `open`, `up`, `down`, `close:<reason>`, or `-`.
    fn walk(track: &mut Track, warn_opens: bool, steps: &[(u64, CheckState)]) -> Vec<String> {
        steps
            .iter()
            .map(
                |&(seconds, state)| match track.observe("web", warn_opens, state, run(seconds)) {
                    None => "-".to_string(),
                    Some(EpisodeEvent::Opened(_)) => "open".to_string(),
                    Some(EpisodeEvent::Escalated(_)) => "up".to_string(),
                    Some(EpisodeEvent::DeEscalated(_)) => "down".to_string(),
                    Some(EpisodeEvent::Closed { reason, .. }) => {
                        format!("close:{}", reason.as_str())
                    }
                },
            )
            .collect()
    }

    /// The table of (states → events): each row a sequence of states the check passes
    /// through, with and without warnings notifying, and the events expected.
    #[test]
    fn states_make_these_events() {
        type Row<'a> = (&'a str, bool, &'a [CheckState], &'a [&'a str]);
        let table: &[Row] = &[
            (
                "a fail_wait that recovers is no episode",
                false,
                &[FailWait, Ok],
                &["-", "-"],
            ),
            (
                "fail opens, pass_wait keeps, ok closes",
                false,
                &[FailWait, Fail, PassWait, Ok],
                &["-", "open", "-", "close:recovered"],
            ),
            (
                "pass_wait back to fail continues",
                false,
                &[Fail, PassWait, Fail, PassWait, Ok],
                &["open", "-", "-", "-", "close:recovered"],
            ),
            (
                "without warn, warn is calm",
                false,
                &[Warn, Fail, Warn],
                &["-", "open", "close:recovered"],
            ),
            (
                "with warn, warn opens and fail escalates",
                true,
                &[Warn, FailWait, Fail, PassWait, Ok],
                &["open", "-", "up", "-", "close:recovered"],
            ),
            (
                "with warn, fail then warn de-escalates",
                true,
                &[Fail, PassWait, Warn, Ok],
                &["open", "-", "down", "close:recovered"],
            ),
            (
                "straight to fail and back (min_failing_time 0)",
                false,
                &[Fail, Ok],
                &["open", "close:recovered"],
            ),
            ("ok stays quiet", false, &[Ok, Ok], &["-", "-"]),
        ];
        for (name, warn_opens, states, expected) in table {
            let steps: Vec<(u64, CheckState)> = states
                .iter()
                .enumerate()
                .map(|(i, state)| (10 * i as u64, *state))
                .collect();
            let mut track = Track::default();
            assert_eq!(walk(&mut track, *warn_opens, &steps), *expected, "{name}");
        }
    }

    #[test]
    fn an_episode_runs_from_its_first_failing_run_to_the_first_passing_one() {
        let mut track = Track::default();
        track.observe("web", false, Warn, run(0)); // calm without warn
        track.observe("web", false, FailWait, run(10));
        let Some(EpisodeEvent::Opened(opened)) = track.observe("web", false, Fail, run(100)) else {
            panic!("no episode")
        };
        assert_eq!(opened.id, episode_id("web", at(10)));
        assert_eq!((opened.started_at, opened.opened_at), (at(11), at(101)));
        track.observe("web", false, PassWait, run(200));
        track.observe("web", false, Fail, run(210));
        track.observe("web", false, PassWait, run(300));
        let Some(EpisodeEvent::Closed {
            episode,
            reason,
            at: ended,
        }) = track.observe("web", false, Ok, run(390))
        else {
            panic!("not closed")
        };
        assert_eq!(episode.id, opened.id);
        assert_eq!(reason, EndReason::Recovered);
        assert_eq!(ended, at(301), "the first passing run of the last stretch");
        assert!(track.is_calm());
    }

    #[test]
    fn the_peak_remembers_the_worst_severity() {
        let mut track = Track::default();
        track.observe("web", true, Warn, run(0));
        track.observe("web", true, Fail, run(10));
        let Some(EpisodeEvent::DeEscalated(episode)) = track.observe("web", true, Warn, run(20))
        else {
            panic!("not de-escalated")
        };
        assert_eq!(
            (episode.severity, episode.peak),
            (Severity::Warning, Severity::Critical)
        );
        assert_eq!(episode.id, episode_id("web", at(0)));
    }

    /// A restart resumes the saved track (and state): a check still failing keeps its
    /// episode; one that recovered meanwhile closes it under the same id.
    #[test]
    fn a_saved_track_continues_after_a_restart() {
        let mut track = Track::default();
        track.observe("web", false, Fail, run(0));
        let saved = serde_json::to_string(&track).unwrap();
        let mut resumed: Track = serde_json::from_str(&saved).unwrap();
        assert_eq!(resumed, track);
        assert_eq!(resumed.observe("web", false, Fail, run(500)), None);
        let Some(EpisodeEvent::Closed { episode, .. }) =
            resumed.observe("web", false, Ok, run(510))
        else {
            panic!("not closed")
        };
        assert_eq!(episode.id, episode_id("web", at(0)));
        // Resumed with the state reset (no saved state): FAIL_WAIT keeps it open too.
        let mut resumed: Track = serde_json::from_str(&saved).unwrap();
        assert_eq!(resumed.observe("web", false, FailWait, run(500)), None);
        assert!(resumed.open().is_some());
    }

    #[test]
    fn ending_for_another_reason_closes_and_forgets_the_stretch() {
        let mut track = Track::default();
        track.observe("web", false, FailWait, run(0));
        assert_eq!(
            track.end(EndReason::CheckChanged, at(5)),
            None,
            "nothing open"
        );
        assert!(track.is_calm());
        track.observe("web", false, Fail, run(10));
        let Some(EpisodeEvent::Closed {
            reason, at: ended, ..
        }) = track.end(EndReason::CheckRemoved, at(50))
        else {
            panic!("not closed")
        };
        assert_eq!((reason, ended), (EndReason::CheckRemoved, at(50)));
        // The next failure starts a new episode with a new id.
        let Some(EpisodeEvent::Opened(next)) = track.observe("web", false, Fail, run(60)) else {
            panic!("no new episode")
        };
        assert_eq!(next.id, episode_id("web", at(60)));
    }

    #[test]
    fn episode_ids_depend_on_the_check_and_the_first_run_only() {
        let start = UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456);
        let id = episode_id("web", start);
        assert_eq!(id.len(), 32);
        assert_eq!(id, episode_id("web", start));
        // Nanoseconds below the microsecond do not travel on the bus; they do not count.
        assert_eq!(id, episode_id("web", start + Duration::from_nanos(999)));
        assert_ne!(id, episode_id("api", start));
        assert_ne!(id, episode_id("web", start + Duration::from_micros(1)));
    }

    #[test]
    fn end_reasons_round_trip_their_names() {
        for reason in EndReason::ALL {
            assert_eq!(EndReason::parse(reason.as_str()), Some(reason));
        }
        assert_eq!(EndReason::parse("nope"), None);
    }
}
