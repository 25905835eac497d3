//! The saved state of earlier versions, taken over once: `notifications.json` (version 1)
//! held the open notification episodes (id, start, severity, state, the notifiers told).
//! An upgrade in the middle of an outage must not trigger a second episode and leave the
//! first unresolved, so when `episodes.json` does not exist yet, its episodes become the
//! saved checks and deliveries the current version resumes. The old file is renamed
//! `notifications.json.migrated` by the first start that finds `episodes.json` written: a
//! crash before the taken-over state was saved anew must not lose it.

use crate::checks::CheckType;
use crate::config::CheckConfig;
use crate::episode::{Episode, RunTimes, SavedCheck, Track};
use crate::model::{CheckState, Severity};
use crate::saved_state::Loaded;
use serde::Deserialize;
use std::collections::BTreeSet;
use std::path::Path;
use std::time::SystemTime;

#[derive(Deserialize)]
struct Version1 {
    version: u32,
    episodes: Vec<Episode1>,
}

#[derive(Deserialize)]
struct Episode1 {
    check: String,
    id: String,
    #[serde(with = "humantime_serde")]
    started_at: SystemTime,
    severity: Severity,
    state: CheckState,
    check_type: CheckType,
    #[serde(default)]
    told: Vec<String>,
}

/// What `notifications.json` beside `episodes` holds, as the sections of today's saved
/// state; None when there is nothing to take over (or it cannot be read: logged).
pub(super) fn take_over(episodes: &Path, checks: &[std::sync::Arc<CheckConfig>]) -> Option<Loaded> {
    let old = episodes.with_file_name("notifications.json");
    let text = std::fs::read_to_string(&old).ok()?;
    let saved = match serde_json::from_str::<Version1>(&text) {
        Ok(saved) if saved.version == 1 => saved,
        Ok(_) | Err(_) => {
            tracing::warn!(path = %old.display(), "notifications.json of an earlier version is not readable; its open episodes are not resumed");
            return None;
        }
    };
    let mut loaded = Loaded::new();
    for episode in saved.episodes {
        let Some(config) = checks.iter().find(|check| check.name == episode.check) else {
            // Removed meanwhile: nothing resumes it, and its receivers were told by the
            // version that saved it only if they were; leave it to them.
            continue;
        };
        let first = RunTimes {
            scheduled_at: episode.started_at,
            finished_at: episode.started_at,
        };
        let open = Episode {
            id: episode.id.clone(),
            check: episode.check.clone(),
            started_at: episode.started_at,
            opened_at: episode.started_at,
            severity: episode.severity,
            peak: episode.severity,
        };
        let check = SavedCheck {
            check: episode.check.clone(),
            fingerprint: config.probe_fingerprint(),
            state: episode.state,
            since: episode.started_at,
            track: Track::resumed(open, first),
            locations: Default::default(),
        };
        if let Ok(value) = serde_json::to_value(&check) {
            loaded
                .entry(crate::results::SAVED_CHECKS.to_string())
                .or_default()
                .insert(episode.check.clone(), value);
        }
        // Version 1 counted a receiver told once the firing was queued for it, not when the
        // receiver accepted it: whether it got it is unknown, so it is told again (under the
        // same episode id, which receivers deduplicate) and counts as told for the resolve.
        let maybe_told: BTreeSet<String> = episode.told.into_iter().collect();
        loaded
            .entry(crate::notify::SAVED_DELIVERIES.to_string())
            .or_default()
            .insert(
                episode.id,
                crate::notify::open_delivery(&episode.check, episode.check_type, maybe_told),
            );
    }
    tracing::info!(path = %old.display(), "open episodes of an earlier version taken over");
    Some(loaded)
}

/// Renames `notifications.json` beside `episodes` out of the way, if it is still there: the
/// state it held was taken over by an earlier start and is now in `episodes`.
pub(super) fn retire(episodes: &Path) {
    let old = episodes.with_file_name("notifications.json");
    if !old.exists() {
        return;
    }
    let migrated = old.with_extension("json.migrated");
    match std::fs::rename(&old, &migrated) {
        Ok(()) => {
            tracing::info!(path = %migrated.display(), "notifications.json of an earlier version, taken over, renamed")
        }
        Err(error) => {
            tracing::warn!(path = %old.display(), %error, "cannot rename notifications.json after taking it over")
        }
    }
}
