//! The checker's series: runs published, skipped and lost per check (and per location for a
//! check with `locations`), runs no location could take, discovery sources that could not be
//! used, and how late runs were published. A check's series are taken once when it is
//! scheduled and go when a reload removes or changes it; only a run no location could take
//! (`count_no_runner`) looks its series up.

use crate::metrics::{check_labels, latency_histogram, CheckLabels, Component, LabelsOf, Registry};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, RwLock};

/// A check's place in the schedule: the check, and its location when it has `locations`.
/// Without one the series carries no `location` label at all (not an empty one), so a check
/// without locations has the same series it always had.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct CheckPlaceLabels {
    check: String,
    location: Option<String>,
}

impl EncodeLabelSet for CheckPlaceLabels {
    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::LabelSetEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeLabel;
        ("check", self.check.as_str()).encode(encoder.encode_label())?;
        if let Some(location) = &self.location {
            ("location", location.as_str()).encode(encoder.encode_label())?;
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CheckLocationLabels {
    check: String,
    location: String,
}

/// The checker's families (see the module doc).
#[derive(Clone, Debug)]
pub struct ScheduleMetrics {
    checks_scheduled: Family<CheckLabels, Counter>,
    /// The locations each check with `locations` has schedule series in, so that a scrape of
    /// some checks (`?group=`) finds their series without encoding every check's.
    place_locations: Arc<RwLock<HashMap<String, BTreeSet<String>>>>,
    schedule_skipped: Family<CheckPlaceLabels, Counter>,
    runs_lost: Family<CheckPlaceLabels, Counter>,
    /// Runs of a check with `locations` not made in a location with no live runner.
    runs_no_runner: Family<CheckLocationLabels, Counter>,
    /// Discovery sources of a check that could not be used (a broken file_sd file).
    discovery_errors: Family<CheckLabels, Counter>,
    schedule_lag_seconds: Histogram,
}

impl Component for ScheduleMetrics {
    fn register(registry: &mut Registry) -> ScheduleMetrics {
        let metrics = ScheduleMetrics {
            checks_scheduled: Family::default(),
            place_locations: Arc::default(),
            schedule_skipped: Family::default(),
            runs_lost: Family::default(),
            runs_no_runner: Family::default(),
            discovery_errors: Family::default(),
            schedule_lag_seconds: latency_histogram(),
        };
        registry.per_check(
            "bastion_checks_scheduled",
            "Check runs published by the checker",
            &metrics.checks_scheduled,
            Some(Arc::new(check_labels)),
            Counter::default,
        );
        registry.per_check(
            "bastion_schedule_skipped",
            "Ticks skipped because the previous run of the check was still in flight",
            &metrics.schedule_skipped,
            Some(metrics.place_labels()),
            Counter::default,
        );
        registry.per_check(
            "bastion_runs_lost",
            "Check runs whose result never arrived before the run could no longer be in flight",
            &metrics.runs_lost,
            Some(metrics.place_labels()),
            Counter::default,
        );
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
    /// A check's `bastion_checks_scheduled_total`, taken when it is scheduled.
    pub fn scheduled(&self, check: &str) -> Counter {
        self.checks_scheduled
            .get_or_create(&CheckLabels {
                check: check.to_string(),
            })
            .clone()
    }

    /// A check's `bastion_discovery_errors_total`, handed to its discovery watcher.
    pub fn discovery_errors(&self, check: &str) -> Counter {
        self.discovery_errors
            .get_or_create(&CheckLabels {
                check: check.to_string(),
            })
            .clone()
    }

    /// The schedule series of a check's place, skipped and lost: `location` is None for a
    /// check without `locations`. Taken once per place, not per run.
    pub fn place_series(&self, check: &str, location: Option<&str>) -> (Counter, Counter) {
        if let Some(location) = location {
            self.place_locations
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .entry(check.to_string())
                .or_default()
                .insert(location.to_string());
        }
        let labels = CheckPlaceLabels {
            check: check.to_string(),
            location: location.map(str::to_string),
        };
        (
            self.schedule_skipped.get_or_create(&labels).clone(),
            self.runs_lost.get_or_create(&labels).clone(),
        )
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

    /// A check's place labels: the check's own, and one per location it has places in.
    fn place_labels(&self) -> LabelsOf<CheckPlaceLabels> {
        let table = Arc::clone(&self.place_locations);
        Arc::new(move |check: &str| {
            let mut labels = vec![CheckPlaceLabels {
                check: check.to_string(),
                location: None,
            }];
            let table = table
                .read()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if let Some(locations) = table.get(check) {
                labels.extend(locations.iter().map(|location| CheckPlaceLabels {
                    check: check.to_string(),
                    location: Some(location.clone()),
                }));
            }
            labels
        })
    }

    /// Removes the series the checker keeps per check: those of the check itself, of each
    /// location it had a place in, and `bastion_runs_no_runner_total` of `no_runner_locations`.
    pub fn forget<'a>(&self, check: &str, no_runner_locations: impl IntoIterator<Item = &'a str>) {
        let labels = CheckLabels {
            check: check.to_string(),
        };
        self.checks_scheduled.remove(&labels);
        self.discovery_errors.remove(&labels);
        let place = |location: Option<&str>| CheckPlaceLabels {
            check: check.to_string(),
            location: location.map(str::to_string),
        };
        self.schedule_skipped.remove(&place(None));
        self.runs_lost.remove(&place(None));
        let places = self
            .place_locations
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(check)
            .unwrap_or_default();
        for location in &places {
            self.schedule_skipped.remove(&place(Some(location)));
            self.runs_lost.remove(&place(Some(location)));
        }
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
            metrics.scheduled(check).inc();
            let (skipped, lost) = metrics.place_series(check, None);
            skipped.inc();
            lost.inc();
            let (skipped, lost) = metrics.place_series(check, Some("eu"));
            skipped.inc();
            lost.inc();
            metrics.count_no_runner(check, "us");
        }
        let chosen: BTreeSet<String> = ["b".to_string()].into();
        let some = registry.render_selected(&CheckSelection::Only(Arc::new(chosen)));
        for line in [
            "bastion_checks_scheduled_total{check=\"b\"} 1",
            "bastion_runs_lost_total{check=\"b\"} 1",
            "bastion_runs_lost_total{check=\"b\",location=\"eu\"} 1",
            "bastion_schedule_skipped_total{check=\"b\",location=\"eu\"} 1",
            "bastion_runs_no_runner_total{check=\"b\",location=\"us\"} 1",
        ] {
            assert!(some.contains(line), "{line} in {some}");
        }
        assert!(!some.contains("check=\"a\""), "{some}");
        // Forgetting a check removes every series of it, its places' in each location too.
        metrics.forget("b", ["us"]);
        let full = registry.render();
        assert!(!full.contains("check=\"b\""), "{full}");
        assert!(full.contains("bastion_runs_lost_total{check=\"a\",location=\"eu\"} 1"));
    }
}
