//! The checker's series: runs published, skipped and lost per check (and per location for a
//! check with `locations`), runs no location could take, discovery sources that could not be
//! used, and how late runs were published. A check's series are taken once when it is
//! scheduled and go when a reload removes or changes it; only a run no location could take
//! (`count_no_runner`) looks its series up.
//!
//! Runs published, skipped and lost are every check's, so they are not `Family` entries (a
//! hash entry, a label `String` and an `Arc` for each of three series, about 360 bytes a check
//! at a million checks): each check has one `ScheduleCounts`, shared by its slot in the
//! checker and by the table the scrape writes the three families from (`ScheduleFamilies`).

use crate::metrics::{
    check_labels, latency_histogram, CheckLabels, Component, PerCheckFamilies, Registry,
};
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

/// A check's place in the schedule, as labels: the check, and its location when it has
/// `locations`. Without one the series carries no `location` label at all (not an empty one),
/// so a check without locations has the same series it always had.
struct PlaceLabels<'a> {
    check: &'a str,
    location: Option<&'a str>,
}

impl EncodeLabelSet for PlaceLabels<'_> {
    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::LabelSetEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeLabel;
        ("check", self.check).encode(encoder.encode_label())?;
        if let Some(location) = self.location {
            ("location", location).encode(encoder.encode_label())?;
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CheckLocationLabels {
    check: String,
    location: String,
}

/// One place's `bastion_schedule_skipped_total` and `bastion_runs_lost_total`.
#[derive(Debug, Default)]
pub struct PlaceCounts {
    skipped: AtomicU64,
    lost: AtomicU64,
}

impl PlaceCounts {
    /// A tick skipped: the previous run was still in flight, or the tick was missed.
    pub fn count_skipped(&self) {
        self.skipped.fetch_add(1, Ordering::Relaxed);
    }

    /// A run whose result never arrived.
    pub fn count_lost(&self) {
        self.lost.fetch_add(1, Ordering::Relaxed);
    }
}

/// One check's schedule counters: runs published (`bastion_checks_scheduled_total`), and
/// skipped and lost per place.
#[derive(Debug)]
pub struct ScheduleCounts {
    scheduled: AtomicU64,
    /// The one place of a check without `locations`.
    own: PlaceCounts,
    /// Whether the check has `locations`: then `own` has no series, and each location's
    /// place is in `located`, in the order the places were made.
    has_locations: bool,
    located: Mutex<Vec<(Arc<str>, Arc<PlaceCounts>)>>,
}

impl ScheduleCounts {
    /// A run published.
    pub fn count_scheduled(&self) {
        self.scheduled.fetch_add(1, Ordering::Relaxed);
    }

    fn located(&self) -> std::sync::MutexGuard<'_, Vec<(Arc<str>, Arc<PlaceCounts>)>> {
        // Places are only ever added whole; a poisoned list is still consistent.
        self.located
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Where one place counts its skipped ticks and lost runs.
#[derive(Debug)]
pub enum PlaceTally {
    /// The place of a check without `locations`: its check's own counts.
    Check(Arc<ScheduleCounts>),
    /// A location's place.
    Location(Arc<PlaceCounts>),
}

impl PlaceTally {
    pub fn counts(&self) -> &PlaceCounts {
        match self {
            PlaceTally::Check(check) => &check.own,
            PlaceTally::Location(place) => place,
        }
    }
}

/// Every scheduled check's counts, by name: what the three families are written from.
type CountsTable = RwLock<HashMap<Arc<str>, Arc<ScheduleCounts>>>;

/// Writes `bastion_checks_scheduled_total`, `bastion_schedule_skipped_total` and
/// `bastion_runs_lost_total` from the table at each scrape.
#[derive(Debug, Default)]
struct ScheduleFamilies {
    table: CountsTable,
}

impl ScheduleFamilies {
    fn table(&self) -> std::sync::RwLockReadGuard<'_, HashMap<Arc<str>, Arc<ScheduleCounts>>> {
        // Entries are inserted and removed whole; a poisoned table is still consistent.
        self.table
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn table_mut(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<Arc<str>, Arc<ScheduleCounts>>> {
        self.table
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// One place's counter of a family: skipped or lost.
type PlaceValue = fn(&PlaceCounts) -> &AtomicU64;

impl ScheduleFamilies {
    /// Calls `each` with every check's counts, or the chosen checks' (under the table's read
    /// lock, taken once a family: a reload waits for one family's text at most).
    fn each_check(
        &self,
        chosen: Option<&BTreeSet<String>>,
        mut each: impl FnMut(&str, &ScheduleCounts) -> Result<(), std::fmt::Error>,
    ) -> Result<(), std::fmt::Error> {
        let table = self.table();
        match chosen {
            None => {
                for (name, counts) in table.iter() {
                    each(name, counts)?;
                }
            }
            Some(chosen) => {
                for name in chosen {
                    if let Some(counts) = table.get(name.as_str()) {
                        each(name, counts)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Whether any of the checks has a series in a place family.
    fn any_place(&self, chosen: Option<&BTreeSet<String>>) -> bool {
        let mut any = false;
        let _ = self.each_check(chosen, |_, counts| {
            any = any || !counts.has_locations || !counts.located().is_empty();
            Ok(())
        });
        any
    }
}

impl PerCheckFamilies for ScheduleFamilies {
    fn encode(
        &self,
        mut encoder: DescriptorEncoder<'_>,
        chosen: Option<&BTreeSet<String>>,
    ) -> Result<(), std::fmt::Error> {
        let mut any_check = false;
        let _ = self.each_check(chosen, |_, _| {
            any_check = true;
            Ok(())
        });
        if !any_check {
            return Ok(());
        }
        {
            let mut family = encoder.encode_descriptor(
                "bastion_checks_scheduled",
                // Ended by a full stop, as prometheus-client ends every registered help.
                "Check runs published by the checker.",
                None,
                MetricType::Counter,
            )?;
            self.each_check(chosen, |check, counts| {
                ConstCounter::new(counts.scheduled.load(Ordering::Relaxed))
                    .encode(family.encode_family(&check_labels_of(check))?)
            })?;
        }
        let places: [(&str, &str, PlaceValue); 2] = [
            (
                "bastion_schedule_skipped",
                "Ticks skipped because the previous run of the check was still in flight.",
                |place| &place.skipped,
            ),
            (
                "bastion_runs_lost",
                "Check runs whose result never arrived before the run could no longer be in flight.",
                |place| &place.lost,
            ),
        ];
        for (name, help, value) in places {
            if !self.any_place(chosen) {
                continue;
            }
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            self.each_check(chosen, |check, counts| {
                if !counts.has_locations {
                    let labels = PlaceLabels {
                        check,
                        location: None,
                    };
                    return ConstCounter::new(value(&counts.own).load(Ordering::Relaxed))
                        .encode(family.encode_family(&labels)?);
                }
                for (location, place) in counts.located().iter() {
                    let labels = PlaceLabels {
                        check,
                        location: Some(location),
                    };
                    ConstCounter::new(value(place).load(Ordering::Relaxed))
                        .encode(family.encode_family(&labels)?)?;
                }
                Ok(())
            })?;
        }
        Ok(())
    }
}

/// The `check` label alone, borrowed.
fn check_labels_of(check: &str) -> PlaceLabels<'_> {
    PlaceLabels {
        check,
        location: None,
    }
}

/// The checker's families (see the module doc).
#[derive(Clone, Debug)]
pub struct ScheduleMetrics {
    schedule: Arc<ScheduleFamilies>,
    /// Runs of a check with `locations` not made in a location with no live runner.
    runs_no_runner: Family<CheckLocationLabels, Counter>,
    /// Discovery sources of a check that could not be used (a broken file_sd file).
    discovery_errors: Family<CheckLabels, Counter>,
    schedule_lag_seconds: Histogram,
}

impl Component for ScheduleMetrics {
    fn register(registry: &mut Registry) -> ScheduleMetrics {
        let metrics = ScheduleMetrics {
            schedule: Arc::default(),
            runs_no_runner: Family::default(),
            discovery_errors: Family::default(),
            schedule_lag_seconds: latency_histogram(),
        };
        registry.per_check_families(Arc::clone(&metrics.schedule) as Arc<dyn PerCheckFamilies>);
        registry.per_check(
            "bastion_runs_no_runner",
            "Runs of a check with locations that a location could not take: no runner of it was alive when the run was due (the result says no_runner)",
            &metrics.runs_no_runner,
            None,
            Counter::default,
        );
        registry.per_check(
            "bastion_discovery_errors",
            "Times a check's discovery source could not be used (each distinct problem once); the last good instances stay",
            &metrics.discovery_errors,
            Some(Arc::new(check_labels)),
            Counter::default,
        );
        registry.agent(
            "bastion_schedule_lag_seconds",
            "How late a check run was published against when it was due",
            metrics.schedule_lag_seconds.clone(),
        );
        metrics
    }
}

impl ScheduleMetrics {
    /// A check's schedule counts, taken when it is scheduled (shared with an earlier taking
    /// of the same name until `forget`). `has_locations`: whether its places are locations.
    pub fn schedule_counts(&self, check: &str, has_locations: bool) -> Arc<ScheduleCounts> {
        let mut table = self.schedule.table_mut();
        if let Some(counts) = table.get(check) {
            return Arc::clone(counts);
        }
        let counts = Arc::new(ScheduleCounts {
            scheduled: AtomicU64::new(0),
            own: PlaceCounts::default(),
            has_locations,
            located: Mutex::new(Vec::new()),
        });
        table.insert(Arc::from(check), Arc::clone(&counts));
        counts
    }

    /// Where a place of the check counts: the check's own counts without a location, else
    /// the location's (made on its first taking, kept until the check is forgotten).
    pub fn place_tally(counts: &Arc<ScheduleCounts>, location: Option<&str>) -> PlaceTally {
        let Some(location) = location else {
            return PlaceTally::Check(Arc::clone(counts));
        };
        let mut located = counts.located();
        if let Some((_, place)) = located.iter().find(|(name, _)| &**name == location) {
            return PlaceTally::Location(Arc::clone(place));
        }
        let place = Arc::new(PlaceCounts::default());
        located.push((Arc::from(location), Arc::clone(&place)));
        PlaceTally::Location(place)
    }

    /// A check's `bastion_discovery_errors_total`, handed to its discovery watcher.
    pub fn discovery_errors(&self, check: &str) -> Counter {
        self.discovery_errors
            .get_or_create(&CheckLabels {
                check: check.to_string(),
            })
            .clone()
    }

    /// A run of `check` not made in `location`: no runner of it was alive.
    pub fn count_no_runner(&self, check: &str, location: &str) {
        self.runs_no_runner
            .get_or_create(&CheckLocationLabels {
                check: check.to_string(),
                location: location.to_string(),
            })
            .inc();
    }

    /// How late a run was published against when it was due.
    pub fn observe_lag(&self, seconds: f64) {
        self.schedule_lag_seconds.observe(seconds);
    }

    /// Removes the series the checker keeps per check: its schedule counts (those of each
    /// location it had a place in with them), its discovery errors, and
    /// `bastion_runs_no_runner_total` of `no_runner_locations`.
    pub fn forget<'a>(&self, check: &str, no_runner_locations: impl IntoIterator<Item = &'a str>) {
        let removed = self.schedule.table_mut().remove(check);
        // Freed after the lock: the scrape's reader is not held up by it.
        drop(removed);
        self.discovery_errors.remove(&CheckLabels {
            check: check.to_string(),
        });
        for location in no_runner_locations {
            self.runs_no_runner.remove(&CheckLocationLabels {
                check: check.to_string(),
                location: location.to_string(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{CheckSelection, Metrics};

    #[test]
    fn a_scrape_of_some_checks_finds_their_places_in_every_location() {
        let registry = Metrics::new();
        let metrics: ScheduleMetrics = registry.component();
        for check in ["a", "b"] {
            let counts = metrics.schedule_counts(check, false);
            counts.count_scheduled();
            let own = ScheduleMetrics::place_tally(&counts, None);
            own.counts().count_skipped();
            own.counts().count_lost();
        }
        for check in ["la", "lb"] {
            let counts = metrics.schedule_counts(check, true);
            counts.count_scheduled();
            counts.count_scheduled();
            let eu = ScheduleMetrics::place_tally(&counts, Some("eu"));
            eu.counts().count_skipped();
            eu.counts().count_lost();
            // A second taking of the same location counts in the same series.
            ScheduleMetrics::place_tally(&counts, Some("eu"))
                .counts()
                .count_lost();
            let _ = ScheduleMetrics::place_tally(&counts, Some("us"));
            metrics.count_no_runner(check, "us");
        }
        let chosen: BTreeSet<String> = ["b".to_string(), "lb".to_string()].into();
        let some = registry.render_selected(&CheckSelection::Only(Arc::new(chosen)));
        for line in [
            "bastion_checks_scheduled_total{check=\"b\"} 1",
            "bastion_schedule_skipped_total{check=\"b\"} 1",
            "bastion_runs_lost_total{check=\"b\"} 1",
            "bastion_checks_scheduled_total{check=\"lb\"} 2",
            "bastion_runs_lost_total{check=\"lb\",location=\"eu\"} 2",
            "bastion_schedule_skipped_total{check=\"lb\",location=\"eu\"} 1",
            "bastion_schedule_skipped_total{check=\"lb\",location=\"us\"} 0",
            "bastion_runs_no_runner_total{check=\"lb\",location=\"us\"} 1",
        ] {
            assert!(some.contains(line), "{line} in {some}");
        }
        assert!(!some.contains("check=\"a\""), "{some}");
        assert!(!some.contains("check=\"la\""), "{some}");
        // A check with locations has no series without one.
        assert!(!some.contains("{check=\"lb\"} 0"), "{some}");
        assert!(
            !some.contains("bastion_runs_lost_total{check=\"lb\"}"),
            "{some}"
        );
        // Each family once, described once (as prometheus-client describes a registered one),
        // even with the series of two checks.
        assert!(
            some.contains("# HELP bastion_runs_lost_total Check runs whose result never arrived before the run could no longer be in flight.\n"),
            "{some}"
        );
        assert_eq!(
            some.matches("# TYPE bastion_runs_lost_total counter")
                .count(),
            1,
            "{some}"
        );
        // The families come in the order they were registered, in a full scrape as in a
        // scrape of some checks.
        let full = registry.render();
        for text in [&some, &full] {
            let at = |family: &str| {
                text.find(&format!("# TYPE {family} counter"))
                    .unwrap_or_else(|| panic!("{family} in {text}"))
            };
            assert!(at("bastion_checks_scheduled_total") < at("bastion_schedule_skipped_total"));
            assert!(at("bastion_schedule_skipped_total") < at("bastion_runs_lost_total"));
            assert!(at("bastion_runs_lost_total") < at("bastion_runs_no_runner_total"));
        }
        // Forgetting a check removes every series of it, its places' in each location too.
        metrics.forget("lb", ["us"]);
        let full = registry.render();
        assert!(!full.contains("check=\"lb\""), "{full}");
        assert!(full.contains("bastion_runs_lost_total{check=\"la\",location=\"eu\"} 2"));
        assert!(full.contains("bastion_checks_scheduled_total{check=\"a\"} 1"));
        // Taken again after it was forgotten, a check starts from zero.
        let again = metrics.schedule_counts("lb", false);
        assert_eq!(again.scheduled.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn no_scheduled_check_writes_no_schedule_families() {
        let registry = Metrics::new();
        let _: ScheduleMetrics = registry.component();
        let text = registry.render();
        assert!(!text.contains("bastion_checks_scheduled"), "{text}");
        assert!(!text.contains("bastion_runs_lost"), "{text}");
        // A check with locations and no place yet (`["*"]` before a runner is seen): its
        // runs published, and no place series.
        let metrics: ScheduleMetrics = registry.component();
        let _counts = metrics.schedule_counts("star", true);
        let text = registry.render();
        assert!(
            text.contains("bastion_checks_scheduled_total{check=\"star\"} 0"),
            "{text}"
        );
        assert!(!text.contains("bastion_schedule_skipped"), "{text}");
    }
}
