//! Maintenance windows: when they are in force and which checks they cover. A one-off window
//! runs from `start` to `end`; a recurring one starts at `at` (local time in `time_zone`) on
//! each of `days` and lasts `duration`. Local times that a DST change skips move forward, and
//! ambiguous ones take the earlier instant (jiff's "compatible" rule, as RFC 5545 does). Pure:
//! the caller passes the time in; it never suppresses anything itself.

use crate::config::{parse_time_of_day, parse_timestamp, MaintenanceConfig, WEEKDAYS};
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};
use std::time::SystemTime;

/// The configured windows, compiled.
#[derive(Debug, Clone, Default)]
pub struct Maintenance {
    windows: Vec<Window>,
}

#[derive(Debug, Clone)]
struct Window {
    name: String,
    checks: Vec<String>,
    when: When,
}

#[derive(Debug, Clone)]
enum When {
    Once {
        start: Timestamp,
        end: Timestamp,
    },
    Recurring {
        hour: i8,
        minute: i8,
        length: SignedDuration,
        /// Monday first; all true when `days` was empty.
        days: [bool; 7],
        zone: TimeZone,
    },
}

impl Maintenance {
    /// Compiles the windows; the config was validated, so an error here names the window.
    pub fn compile(configs: &[MaintenanceConfig]) -> Result<Maintenance, String> {
        let windows = configs
            .iter()
            .map(compile_window)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Maintenance { windows })
    }

    /// The name of a window that covers `check` at `now`, if any.
    pub fn in_force(&self, check: &str, now: SystemTime) -> Option<&str> {
        let now = Timestamp::try_from(now).ok()?;
        self.windows
            .iter()
            .find(|window| {
                window.checks.iter().any(|pattern| glob(pattern, check)) && window.when.covers(now)
            })
            .map(|window| window.name.as_str())
    }

    /// Which windows are in force at `now`, in their order. Compared from one second to the
    /// next, it says when any window began or ended, without looking at any check.
    pub fn in_force_at(&self, now: SystemTime) -> Vec<bool> {
        match Timestamp::try_from(now) {
            Ok(now) => self.windows.iter().map(|w| w.when.covers(now)).collect(),
            Err(_) => vec![false; self.windows.len()],
        }
    }

    pub fn is_empty(&self) -> bool {
        self.windows.is_empty()
    }
}

fn compile_window(config: &MaintenanceConfig) -> Result<Window, String> {
    let name = &config.name;
    let when = match (&config.start, &config.end, &config.at, config.duration) {
        (Some(start), Some(end), None, None) => When::Once {
            start: parse_timestamp(name, "start", start)?,
            end: parse_timestamp(name, "end", end)?,
        },
        (None, None, Some(at), Some(duration)) => {
            let (hour, minute) = parse_time_of_day(at)
                .ok_or_else(|| format!("maintenance `{name}`: at `{at}` is not a time HH:MM"))?;
            let mut days = [config.days.is_empty(); 7];
            for day in &config.days {
                if let Some(index) = WEEKDAYS.iter().position(|known| known == day) {
                    days[index] = true;
                }
            }
            When::Recurring {
                hour,
                minute,
                length: SignedDuration::try_from(duration)
                    .map_err(|_| format!("maintenance `{name}`: duration is too long"))?,
                days,
                zone: TimeZone::get(&config.time_zone).map_err(|_| {
                    format!(
                        "maintenance `{name}`: unknown time_zone `{}`",
                        config.time_zone
                    )
                })?,
            }
        }
        _ => {
            return Err(format!(
                "maintenance `{name}`: give start and end, or at and duration"
            ))
        }
    };
    Ok(Window {
        name: name.clone(),
        checks: config.checks.clone(),
        when,
    })
}

impl When {
    fn covers(&self, now: Timestamp) -> bool {
        match self {
            When::Once { start, end } => *start <= now && now < *end,
            When::Recurring {
                hour,
                minute,
                length,
                days,
                zone,
            } => {
                let today = now.to_zoned_datetime(zone.clone()).date();
                // A window of up to 7 days may have started on any of the last 8 local days.
                (0..=7).any(|back| {
                    let Ok(day) = today.checked_sub(jiff::Span::new().days(back)) else {
                        return false;
                    };
                    let weekday = day.weekday().to_monday_zero_offset() as usize;
                    if !days[weekday] {
                        return false;
                    }
                    let Ok(start) = day.at(*hour, *minute, 0, 0).to_zoned_datetime(zone.clone())
                    else {
                        return false;
                    };
                    let start = start.timestamp();
                    match start.checked_add(*length) {
                        Ok(end) => start <= now && now < end,
                        Err(_) => false,
                    }
                })
            }
        }
    }
}

/// `*` matches any run of characters, `?` one; everything else itself.
pub fn glob(pattern: &str, text: &str) -> bool {
    let pattern: Vec<char> = pattern.chars().collect();
    let text: Vec<char> = text.chars().collect();
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && (pattern[p] == '?' || pattern[p] == text[t]) {
            p += 1;
            t += 1;
        } else if p < pattern.len() && pattern[p] == '*' {
            star = Some((p, t));
            p += 1;
        } else if let Some((star_p, star_t)) = star {
            p = star_p + 1;
            t = star_t + 1;
            star = Some((star_p, star_t + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(toml: &str) -> Maintenance {
        let config: MaintenanceConfig = toml::from_str(toml).unwrap();
        Maintenance::compile(&[config]).unwrap()
    }

    fn at(text: &str) -> SystemTime {
        let seconds = text.parse::<Timestamp>().unwrap().as_second();
        SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(seconds as u64)
    }

    #[test]
    fn globs_match_names() {
        assert!(glob("*", "web"));
        assert!(glob("db-*", "db-primary"));
        assert!(!glob("db-*", "web-db"));
        assert!(glob("web-?", "web-1"));
        assert!(!glob("web-?", "web-10"));
        assert!(glob("*-prod", "api-prod"));
        assert!(glob("a*b*c", "axxbyyc"));
        assert!(!glob("a*b*c", "axxbyy"));
        assert!(glob("web", "web"));
        assert!(!glob("web", "webs"));
    }

    #[test]
    fn one_off_windows_cover_start_to_end() {
        let m = window(
            r#"name = "upgrade"
               checks = ["db-*"]
               start = "2026-12-24T22:00:00+01:00"
               end = "2026-12-24T23:00:00+01:00""#,
        );
        assert_eq!(
            m.in_force("db-1", at("2026-12-24T21:00:00Z")),
            Some("upgrade")
        );
        assert_eq!(m.in_force("db-1", at("2026-12-24T20:59:59Z")), None);
        assert_eq!(
            m.in_force("db-1", at("2026-12-24T22:00:00Z")),
            None,
            "the end is outside"
        );
        assert_eq!(
            m.in_force("web", at("2026-12-24T21:30:00Z")),
            None,
            "other checks"
        );
    }

    #[test]
    fn recurring_windows_follow_the_time_zone_and_the_days() {
        let m = window(
            r#"name = "nightly"
               checks = ["*"]
               at = "23:30"
               duration = "1h"
               days = ["sat"]
               time_zone = "Europe/Berlin""#,
        );
        // Saturday 2026-07-04 23:30 in Berlin (CEST, +02:00) is 21:30 UTC; it runs past midnight.
        assert_eq!(m.in_force("web", at("2026-07-04T21:29:59Z")), None);
        assert_eq!(
            m.in_force("web", at("2026-07-04T21:30:00Z")),
            Some("nightly")
        );
        assert_eq!(
            m.in_force("web", at("2026-07-04T22:29:59Z")),
            Some("nightly")
        );
        assert_eq!(m.in_force("web", at("2026-07-04T22:30:00Z")), None);
        // In winter (CET, +01:00) the same local time is an hour later in UTC.
        assert_eq!(m.in_force("web", at("2026-12-05T21:30:00Z")), None);
        assert_eq!(
            m.in_force("web", at("2026-12-05T22:30:00Z")),
            Some("nightly")
        );
        // Not on Fridays.
        assert_eq!(m.in_force("web", at("2026-07-03T21:45:00Z")), None);
    }

    #[test]
    fn the_windows_in_force_change_at_their_boundaries_only() {
        let m = window(
            r#"name = "upgrade"
               checks = ["db-*"]
               start = "2026-12-24T22:00:00+01:00"
               end = "2026-12-24T23:00:00+01:00""#,
        );
        assert_eq!(m.in_force_at(at("2026-12-24T20:59:59Z")), [false]);
        assert_eq!(m.in_force_at(at("2026-12-24T21:00:00Z")), [true]);
        assert_eq!(m.in_force_at(at("2026-12-24T21:59:59Z")), [true]);
        assert_eq!(m.in_force_at(at("2026-12-24T22:00:00Z")), [false]);
        assert!(Maintenance::default()
            .in_force_at(at("2026-12-24T22:00:00Z"))
            .is_empty());
    }

    #[test]
    fn a_start_in_a_dst_gap_moves_forward() {
        // 2026-03-29 02:30 does not exist in Berlin: clocks jump from 02:00 to 03:00 (01:00 UTC).
        let m = window(
            r#"name = "gap"
               checks = ["*"]
               at = "02:30"
               duration = "30m"
               time_zone = "Europe/Berlin""#,
        );
        assert_eq!(m.in_force("web", at("2026-03-29T00:59:00Z")), None);
        assert_eq!(m.in_force("web", at("2026-03-29T01:30:00Z")), Some("gap"));
        assert_eq!(m.in_force("web", at("2026-03-29T02:00:00Z")), None);
    }
}
