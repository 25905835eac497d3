//! `bastion_check_duration_seconds`, the one family the runner keeps per check, and the
//! series it forgot or refused. Which checks may have a series is `check_series.rs`'s policy:
//! the configured checks where the agent schedules, at most `runner.max_check_series` learned
//! ones on a runner. O(1) per observation, whatever the number of checks.

use super::check_series::{CheckSeries, Gone};
use crate::checks::CheckType;
use crate::metrics::{Component, LatencyCounts, PerCheckFamilies, ReasonLabels, Registry};
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::MetricType;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;
use tokio::time::Instant;

/// A series' labels, borrowed from the table at each scrape.
struct CheckTypeLabels<'a> {
    check: &'a str,
    r#type: &'static str,
}

impl EncodeLabelSet for CheckTypeLabels<'_> {
    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::LabelSetEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeLabel;
        ("check", self.check).encode(encoder.encode_label())?;
        ("type", self.r#type).encode(encoder.encode_label())
    }
}

/// One series: the check's type (a label) and its run durations.
#[derive(Debug)]
struct RunDurations {
    check_type: CheckType,
    seconds: LatencyCounts,
}

/// A check's series: one per type its runs had, almost always one (on a runner, a check
/// retyped elsewhere, or one name that two checkers or a remote test run as different types,
/// has a series for each, as the type is a label; where the agent schedules, only the
/// configured type has one).
type CheckRuns = Vec<RunDurations>;

/// The run durations of every check with a series, by name: a name and about 200 bytes a
/// check, where a `Family` of histograms took about 800.
#[derive(Debug, Default)]
struct DurationTable {
    checks: RwLock<HashMap<Box<str>, CheckRuns>>,
}

impl DurationTable {
    fn read(&self) -> RwLockReadGuard<'_, HashMap<Box<str>, CheckRuns>> {
        // Entries are inserted and removed whole; a poisoned table is still consistent.
        self.checks
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, HashMap<Box<str>, CheckRuns>> {
        self.checks
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Adds a run of `check` to its series of `check_type`, made on its first such run.
    fn observe(&self, check: &str, check_type: CheckType, seconds: f64) {
        let of_type = |runs: &CheckRuns| {
            runs.iter()
                .position(|series| series.check_type == check_type)
        };
        if let Some(runs) = self.read().get(check) {
            if let Some(at) = of_type(runs) {
                runs[at].seconds.observe(seconds);
                return;
            }
        }
        let mut table = self.write();
        let runs = table.entry(check.into()).or_default();
        let at = of_type(runs).unwrap_or_else(|| {
            runs.push(RunDurations {
                check_type,
                seconds: LatencyCounts::default(),
            });
            runs.shrink_to_fit();
            runs.len() - 1
        });
        runs[at].seconds.observe(seconds);
    }

    /// Removes every series of `check`.
    fn remove(&self, check: &str) {
        self.write().remove(check);
    }
}

impl PerCheckFamilies for DurationTable {
    fn encode(
        &self,
        mut encoder: DescriptorEncoder<'_>,
        chosen: Option<&BTreeSet<String>>,
    ) -> Result<(), std::fmt::Error> {
        let table = self.read();
        let checks: Box<dyn Iterator<Item = (&str, &CheckRuns)>> = match chosen {
            None => Box::new(table.iter().map(|(name, runs)| (&**name, runs))),
            Some(chosen) => Box::new(
                chosen
                    .iter()
                    .filter_map(|name| table.get_key_value(name.as_str()))
                    .map(|(name, runs)| (&**name, runs)),
            ),
        };
        let mut series = checks.flat_map(|(name, runs)| runs.iter().map(move |run| (name, run)));
        // A family with no series is left out, HELP and TYPE too.
        let Some(first) = series.next() else {
            return Ok(());
        };
        let mut family = encoder.encode_descriptor(
            "bastion_check_duration_seconds",
            // Ended by a full stop, as prometheus-client ends every registered help.
            "How long a whole check run took, from dispatch to its last response.",
            None,
            MetricType::Histogram,
        )?;
        for (check, durations) in std::iter::once(first).chain(series) {
            let labels = CheckTypeLabels {
                check,
                r#type: durations.check_type.as_str(),
            };
            durations.seconds.encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

/// Run durations per check, and the policy deciding which checks have them.
#[derive(Clone, Debug)]
pub struct CheckDurations {
    seconds: Arc<DurationTable>,
    /// Check names whose series a runner removed because they stopped running (`expired`).
    forgotten: Family<ReasonLabels, Counter>,
    /// Runs that got no duration series, by why: `capacity` (a runner at
    /// `runner.max_check_series`) or `unconfigured` (an agent that schedules, for a check it
    /// does not have with that type).
    refused: Family<ReasonLabels, Counter>,
    /// Which checks have series (`check_series.rs`).
    series: Arc<Mutex<CheckSeries>>,
}

impl Component for CheckDurations {
    fn register(registry: &mut Registry) -> CheckDurations {
        let durations = CheckDurations {
            seconds: Arc::default(),
            forgotten: Family::default(),
            refused: Family::default(),
            series: Arc::new(Mutex::new(CheckSeries::learned(
                crate::config::DEFAULT_MAX_CHECK_SERIES,
                crate::config::DEFAULT_FORGET_CHECKS_AFTER,
            ))),
        };
        registry.per_check_families(Arc::clone(&durations.seconds) as Arc<dyn PerCheckFamilies>);
        registry.agent(
            "bastion_check_series_forgotten",
            "Checks whose bastion_check_duration_seconds series this runner removed: not run here for forget_checks_after and three intervals (expired)",
            durations.forgotten.clone(),
        );
        registry.agent(
            "bastion_check_series_refused",
            "Check runs that got no bastion_check_duration_seconds series: a runner already keeping runner.max_check_series checks (capacity), or a check this scheduling agent does not have configured with that type (unconfigured)",
            durations.refused.clone(),
        );
        // Present at zero from the start, so rate() sees the first one.
        let _ = durations
            .forgotten
            .get_or_create(&ReasonLabels { reason: "expired" });
        for reason in ["capacity", "unconfigured"] {
            let _ = durations.refused.get_or_create(&ReasonLabels { reason });
        }
        let tidied = durations.clone();
        registry.before_scrape(move |now| tidied.tidy(now));
        durations
    }
}

impl CheckDurations {
    /// A runner's bound on checks with run-duration series (`runner.max_check_series`) and how
    /// long a check's series stay after its last run here (`runner.forget_checks_after`).
    pub fn limit(&self, max_checks: usize, forget_after: Duration) {
        self.lock().set_learned(max_checks, forget_after);
    }

    /// Makes the run-duration series follow the configured checks (an agent that schedules and
    /// probes): every configured check gets one, of its configured type, with no bound and no
    /// expiry, and a check's go when a reload removes it or gives it another type. `checks`
    /// is the reload watch.
    pub fn follow_configured(
        &self,
        checks: tokio::sync::watch::Receiver<crate::config::CheckList>,
    ) {
        *self.lock() = CheckSeries::configured(checks);
    }

    /// Records a run of `check` that took `seconds`, if it may have a series (see
    /// `check_series.rs`); a run refused one is counted. O(1) (amortised) whatever the number
    /// of checks.
    pub fn observe(&self, check: &str, check_type: CheckType, interval: Duration, seconds: f64) {
        let now = Instant::now();
        // Held while the series is created, so a concurrent expiry cannot remove it unseen.
        let mut series = self.follow_reload(self.lock());
        let admitted = series.admit(check, check_type, interval, now, &mut |gone, why| {
            self.gone(gone, why)
        });
        match admitted {
            Ok(()) => self.seconds.observe(check, check_type, seconds),
            Err(refusal) => {
                self.refused
                    .get_or_create(&ReasonLabels {
                        reason: refusal.as_str(),
                    })
                    .inc();
            }
        }
    }

    /// Removes a check's series at once: the sink saw its check removed.
    pub fn forget(&self, check: &str) {
        let mut series = self.lock();
        series.removed(check);
        self.remove(check);
    }

    /// Removes the series that are due to go by `now`: those of checks that stopped running on
    /// a runner, or that a reload removed.
    pub fn tidy(&self, now: Instant) {
        let mut series = self.follow_reload(self.lock());
        series.tidy(now, &mut |gone, why| self.gone(gone, why));
    }

    /// Takes up a reloaded check list, building its names with the lock released: O(n) once
    /// per reload, never with every run waiting on it.
    fn follow_reload<'a>(
        &'a self,
        series: MutexGuard<'a, CheckSeries>,
    ) -> MutexGuard<'a, CheckSeries> {
        let Some(reload) = series.reloaded() else {
            return series;
        };
        drop(series);
        let prepared = reload.prepare();
        let mut series = self.lock();
        series.install(prepared, &mut |gone, why| self.gone(gone, why));
        series
    }

    fn gone(&self, check: &str, why: Gone) {
        self.remove(check);
        if why == Gone::Expired {
            self.forgotten
                .get_or_create(&ReasonLabels { reason: "expired" })
                .inc();
        }
    }

    fn remove(&self, check: &str) {
        self.seconds.remove(check);
    }

    fn lock(&self) -> MutexGuard<'_, CheckSeries> {
        // The state stays consistent whatever panicked while holding it.
        self.series
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    #[test]
    fn a_scrape_of_some_checks_finds_their_durations_of_any_type() {
        let registry = Metrics::new();
        let metrics: CheckDurations = registry.component();
        let minute = Duration::from_secs(60);
        metrics.observe("a", CheckType::Http, minute, 0.01);
        metrics.observe("b", CheckType::Dns, minute, 0.01);
        let chosen: std::collections::BTreeSet<String> = ["b".to_string()].into();
        let some =
            registry.render_selected(&crate::metrics::CheckSelection::Only(Arc::new(chosen)));
        assert!(
            some.contains("bastion_check_duration_seconds_count{check=\"b\",type=\"dns\"} 1"),
            "{some}"
        );
        assert!(!some.contains("check=\"a\""), "{some}");
        metrics.forget("b");
        assert_eq!(
            checks_with_durations(&registry.render()),
            ["a".to_string()].into()
        );
    }

    #[test]
    fn a_name_run_as_two_types_keeps_a_series_for_each() {
        let registry = Metrics::new();
        let metrics: CheckDurations = registry.component();
        let minute = Duration::from_secs(60);
        for _ in 0..3 {
            metrics.observe("api", CheckType::Http, minute, 0.01);
            metrics.observe("api", CheckType::Tcp, minute, 2.0);
        }
        for selection in [
            registry.render(),
            registry.render_selected(&crate::metrics::CheckSelection::Only(Arc::new(
                ["api".to_string()].into(),
            ))),
        ] {
            for (series, count) in [
                ("_count{check=\"api\",type=\"http\"}", "3"),
                ("_count{check=\"api\",type=\"tcp\"}", "3"),
                ("_bucket{check=\"api\",type=\"tcp\",le=\"2.5\"}", "3"),
                ("_bucket{check=\"api\",type=\"tcp\",le=\"1\"}", "0"),
                ("_bucket{check=\"api\",type=\"http\",le=\"0.01\"}", "3"),
            ] {
                let line = format!("bastion_check_duration_seconds{series} {count}");
                assert!(
                    selection.lines().any(|l| l == line),
                    "{line} in {selection}"
                );
            }
        }
        metrics.forget("api");
        assert!(checks_with_durations(&registry.render()).is_empty());
    }

    /// The checks that have a `bastion_check_duration_seconds` series in `text`.
    fn checks_with_durations(text: &str) -> std::collections::BTreeSet<String> {
        text.lines()
            .filter_map(|line| line.strip_prefix("bastion_check_duration_seconds_count{check=\""))
            .filter_map(|rest| rest.split('"').next())
            .map(str::to_string)
            .collect()
    }

    fn forgotten(text: &str, reason: &str) -> String {
        let prefix = format!("bastion_check_series_forgotten_total{{reason=\"{reason}\"}} ");
        text.lines()
            .find_map(|line| line.strip_prefix(prefix.as_str()))
            .unwrap_or("absent")
            .to_string()
    }

    #[tokio::test(start_paused = true)]
    async fn checks_that_stop_arriving_are_forgotten_after_the_expiry() {
        let registry = Metrics::new();
        let metrics: CheckDurations = registry.component();
        metrics.limit(10_000, Duration::from_secs(600));
        let minute = Duration::from_secs(60);
        for n in 0..1000 {
            metrics.observe(&format!("gone-{n}"), CheckType::Http, minute, 0.01);
        }
        assert_eq!(checks_with_durations(&registry.render()).len(), 1000);
        // From now on only ten checks arrive, once a minute.
        for _ in 0..10 {
            tokio::time::advance(minute).await;
            for n in 0..10 {
                metrics.observe(&format!("kept-{n}"), CheckType::Tcp, minute, 0.01);
            }
        }
        let text = registry.render();
        let expected: std::collections::BTreeSet<String> =
            (0..10).map(|n| format!("kept-{n}")).collect();
        assert_eq!(checks_with_durations(&text), expected);
        assert_eq!(forgotten(&text, "expired"), "1000");
    }

    #[tokio::test(start_paused = true)]
    async fn a_check_is_kept_for_three_of_its_intervals_at_least() {
        let registry = Metrics::new();
        let metrics: CheckDurations = registry.component();
        metrics.limit(10_000, Duration::from_secs(600));
        let hour = Duration::from_secs(3600);
        metrics.observe("hourly", CheckType::Dns, hour, 0.01);
        tokio::time::advance(2 * hour).await;
        assert!(checks_with_durations(&registry.render()).contains("hourly"));
        tokio::time::advance(hour).await;
        assert!(checks_with_durations(&registry.render()).is_empty());
    }

    fn refused(text: &str, reason: &str) -> String {
        let prefix = format!("bastion_check_series_refused_total{{reason=\"{reason}\"}} ");
        text.lines()
            .find_map(|line| line.strip_prefix(prefix.as_str()))
            .unwrap_or("absent")
            .to_string()
    }

    fn observe_all(metrics: &CheckDurations, names: impl Iterator<Item = String>) {
        for name in names {
            // The type of `configured`'s checks.
            metrics.observe(&name, CheckType::Tcp, Duration::from_secs(60), 0.01);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_runner_at_its_bound_keeps_every_series_and_refuses_new_names() {
        let registry = Metrics::new();
        let metrics: CheckDurations = registry.component();
        metrics.limit(10_000, Duration::from_secs(600));
        // Exactly the bound: every check has its series, nothing is refused.
        observe_all(&metrics, (0..10_000).map(|n| format!("c-{n}")));
        let text = registry.render();
        assert_eq!(checks_with_durations(&text).len(), 10_000);
        assert_eq!(refused(&text, "capacity"), "0");
        // One past it, run by run: the new name gets no series, and no kept check loses its.
        for _ in 0..3 {
            observe_all(&metrics, (0..10_001).map(|n| format!("c-{n}")));
        }
        let text = registry.render();
        let kept = checks_with_durations(&text);
        assert_eq!(kept.len(), 10_000);
        assert!(kept.contains("c-0") && !kept.contains("c-10000"));
        assert_eq!(refused(&text, "capacity"), "3");
        assert_eq!(forgotten(&text, "expired"), "0");
        assert!(text.contains("bastion_check_duration_seconds_count{check=\"c-0\",type=\"tcp\"} 4"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_runner_makes_room_only_as_checks_expire() {
        let registry = Metrics::new();
        let metrics: CheckDurations = registry.component();
        metrics.limit(2, Duration::from_secs(600));
        observe_all(&metrics, ["a", "b", "c"].map(String::from).into_iter());
        tokio::time::advance(Duration::from_secs(300)).await;
        observe_all(&metrics, ["a"].map(String::from).into_iter());
        tokio::time::advance(Duration::from_secs(301)).await;
        // b has not run for ten minutes and went; c takes its place, a stays.
        observe_all(&metrics, ["c"].map(String::from).into_iter());
        let text = registry.render();
        let expected: std::collections::BTreeSet<String> =
            ["a", "c"].map(String::from).into_iter().collect();
        assert_eq!(checks_with_durations(&text), expected);
        assert_eq!(forgotten(&text, "expired"), "1");
        assert_eq!(refused(&text, "capacity"), "1");
    }

    fn configured(names: std::ops::Range<usize>) -> crate::config::CheckList {
        let names: Vec<String> = names.map(|n| format!("c-{n}")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        super::super::check_series::tests::checks(&names)
    }

    #[tokio::test(start_paused = true)]
    async fn an_agent_that_schedules_keeps_a_series_for_every_configured_check() {
        let registry = Metrics::new();
        let metrics: CheckDurations = registry.component();
        let (checks, updates) = tokio::sync::watch::channel(configured(0..12_000));
        metrics.follow_configured(updates);
        observe_all(&metrics, (0..12_000).map(|n| format!("c-{n}")));
        observe_all(&metrics, (0..12_000).map(|n| format!("c-{n}")));
        observe_all(&metrics, ["stranger".to_string()].into_iter());
        // A day without runs forgets nothing.
        tokio::time::advance(Duration::from_secs(86_400)).await;
        let text = registry.render();
        assert_eq!(checks_with_durations(&text).len(), 12_000);
        assert_eq!(forgotten(&text, "expired"), "0");
        assert_eq!(refused(&text, "capacity"), "0");
        assert_eq!(refused(&text, "unconfigured"), "1");
        // A reload removes the first 2,000 and adds 8,000 more: the removed go at once (the
        // next scrape), the added get series on their first run.
        checks.send_replace(configured(2_000..20_000));
        assert_eq!(checks_with_durations(&registry.render()).len(), 10_000);
        observe_all(&metrics, (0..20_000).map(|n| format!("c-{n}")));
        let text = registry.render();
        let kept = checks_with_durations(&text);
        assert_eq!(kept.len(), 18_000);
        assert!(!kept.contains("c-1999") && kept.contains("c-2000") && kept.contains("c-19999"));
        assert_eq!(refused(&text, "unconfigured"), "2001");
        assert_eq!(forgotten(&text, "expired"), "0");
    }

    #[tokio::test(start_paused = true)]
    async fn a_reload_that_retypes_a_check_leaves_only_its_new_types_series() {
        let registry = Metrics::new();
        let metrics: CheckDurations = registry.component();
        let minute = Duration::from_secs(60);
        let (checks, updates) = tokio::sync::watch::channel(configured(0..2));
        metrics.follow_configured(updates);
        metrics.observe("c-0", CheckType::Tcp, minute, 0.01);
        metrics.observe("c-1", CheckType::Tcp, minute, 0.01);
        // A run of another type than configured (a stray request) gets no series.
        metrics.observe("c-0", CheckType::Http, minute, 0.01);
        let text = registry.render();
        assert!(!text.contains("type=\"http\""), "{text}");
        assert_eq!(refused(&text, "unconfigured"), "1");
        // c-0 becomes an http check: its tcp series goes at the next scrape, c-1 keeps its.
        let mut retyped: Vec<crate::config::CheckConfig> = configured(0..2)
            .iter()
            .map(|check| (**check).clone())
            .collect();
        retyped[0].spec = crate::checks::CheckSpec::Http(Box::new(
            serde_json::from_value(serde_json::json!({"url": "http://127.0.0.1:1/"}))
                .expect("an http spec"),
        ));
        checks.send_replace(crate::config::check_list(retyped));
        let text = registry.render();
        assert!(!text.contains("check=\"c-0\""), "{text}");
        assert!(
            text.contains("bastion_check_duration_seconds_count{check=\"c-1\",type=\"tcp\"} 1"),
            "{text}"
        );
        // A tcp run still in flight from before the reload gets none; the http runs do.
        metrics.observe("c-0", CheckType::Tcp, minute, 0.01);
        metrics.observe("c-0", CheckType::Http, minute, 0.02);
        let text = registry.render();
        assert!(
            text.contains("bastion_check_duration_seconds_count{check=\"c-0\",type=\"http\"} 1"),
            "{text}"
        );
        assert!(!text.contains("check=\"c-0\",type=\"tcp\""), "{text}");
        assert_eq!(refused(&text, "unconfigured"), "2");
        assert_eq!(forgotten(&text, "expired"), "0");
    }
}
