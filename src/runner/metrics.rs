//! The runner's own series: its worker pools, what waited for them and what never ran, the
//! probes that failed or overran, and the results it could not publish whole. Every family is
//! labelled by check type (or result form), from fixed sets: the cost of a series never grows
//! with the number of checks. Run durations per check are `check_durations.rs`'s.

use crate::checks::CheckType;
use crate::metrics::{latency_histogram, Component, HistogramFamily, Registry, TypeLabels};
use crate::model::ErrorKind;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TypeKindLabels {
    r#type: &'static str,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FormLabels {
    form: &'static str,
}

/// The runner's families (see the module doc).
#[derive(Clone, Debug)]
pub struct RunnerMetrics {
    dispatch_wait_seconds: HistogramFamily<TypeLabels>,
    dispatch_timeouts: Family<TypeLabels, Counter>,
    task_timeouts: Family<TypeLabels, Counter>,
    probe_errors: Family<TypeKindLabels, Counter>,
    workers_busy: Family<TypeLabels, Gauge>,
    workers: Family<TypeLabels, Gauge>,
    requests_expired: Family<TypeLabels, Counter>,
    results_degraded: Family<FormLabels, Counter>,
    results_expired: Family<TypeLabels, Counter>,
}

/// The series one worker pool updates on every task, taken once when the pool is built.
#[derive(Debug)]
pub struct PoolSeries {
    pub busy: Gauge,
    pub wait_seconds: Histogram,
    pub dispatch_timeouts: Counter,
}

fn of(check_type: CheckType) -> TypeLabels {
    TypeLabels {
        r#type: check_type.as_str(),
    }
}

impl Component for RunnerMetrics {
    fn register(registry: &mut Registry) -> RunnerMetrics {
        let metrics = RunnerMetrics {
            dispatch_wait_seconds: Family::new_with_constructor(latency_histogram),
            dispatch_timeouts: Family::default(),
            task_timeouts: Family::default(),
            probe_errors: Family::default(),
            workers_busy: Family::default(),
            workers: Family::default(),
            requests_expired: Family::default(),
            results_degraded: Family::default(),
            results_expired: Family::default(),
        };
        registry.agent(
            "bastion_dispatch_wait_seconds",
            "How long tasks waited for a free worker",
            metrics.dispatch_wait_seconds.clone(),
        );
        registry.agent(
            "bastion_dispatch_timeouts",
            "Tasks cancelled unrun because no worker was free within the dispatch deadline",
            metrics.dispatch_timeouts.clone(),
        );
        registry.agent(
            "bastion_task_timeouts",
            "Probes cancelled because they ran past the check's timeout",
            metrics.task_timeouts.clone(),
        );
        registry.agent(
            "bastion_probe_errors",
            "Probes that failed at the transport, by error kind",
            metrics.probe_errors.clone(),
        );
        registry.agent(
            "bastion_workers_busy",
            "Workers running a probe now",
            metrics.workers_busy.clone(),
        );
        registry.agent(
            "bastion_workers",
            "Workers in the pool of each check type",
            metrics.workers.clone(),
        );
        registry.agent(
            "bastion_requests_expired",
            "Check requests that reached the runner after their dispatch deadline and were not run",
            metrics.requests_expired.clone(),
        );
        registry.agent(
            "bastion_results_degraded",
            "Results too large for the bus, published reduced, by the form they took",
            metrics.results_degraded.clone(),
        );
        registry.agent(
            "bastion_results_expired",
            "Results finished after their run's window, which the checker had counted lost; not published",
            metrics.results_expired.clone(),
        );
        metrics
    }
}

impl RunnerMetrics {
    /// Declares a pool, so its series exist (at zero) before its first task, and hands it the
    /// series it updates per task.
    pub fn pool(&self, check_type: CheckType, workers: usize) -> PoolSeries {
        let labels = of(check_type);
        self.workers
            .get_or_create(&labels)
            .set(i64::try_from(workers).unwrap_or(i64::MAX));
        let _ = self.task_timeouts.get_or_create(&labels);
        let _ = self.requests_expired.get_or_create(&labels);
        let _ = self.results_expired.get_or_create(&labels);
        PoolSeries {
            busy: self.workers_busy.get_or_create(&labels).clone(),
            wait_seconds: self.dispatch_wait_seconds.get_or_create(&labels).clone(),
            dispatch_timeouts: self.dispatch_timeouts.get_or_create(&labels).clone(),
        }
    }

    /// Declares that this process publishes results on the bus, so the forms a result can be
    /// reduced to have their series (at zero) before the first one: on agents that probe only.
    pub fn publishes_results(&self) {
        for form in crate::messages::DegradedForm::ALL {
            let _ = self.results_degraded.get_or_create(&FormLabels {
                form: form.as_str(),
            });
        }
    }

    /// A task of a type with no pool here, reported `dispatch_timeout`.
    pub fn count_dispatch_timeout(&self, check_type: CheckType) {
        self.dispatch_timeouts.get_or_create(&of(check_type)).inc();
    }

    /// A probe cancelled at its check's timeout.
    pub fn count_task_timeout(&self, check_type: CheckType) {
        self.task_timeouts.get_or_create(&of(check_type)).inc();
    }

    /// A probe that failed at the transport.
    pub fn count_probe_error(&self, check_type: CheckType, kind: ErrorKind) {
        self.probe_errors
            .get_or_create(&TypeKindLabels {
                r#type: check_type.as_str(),
                kind: kind.as_str(),
            })
            .inc();
    }

    /// A scheduled request that arrived after its dispatch deadline, not run.
    pub fn count_request_expired(&self, check_type: CheckType) {
        self.requests_expired.get_or_create(&of(check_type)).inc();
    }

    /// A result finished after its run's window, not published.
    pub fn count_result_expired(&self, check_type: CheckType) {
        self.results_expired.get_or_create(&of(check_type)).inc();
    }

    /// A result published reduced, in `form`.
    pub fn count_degraded(&self, form: crate::messages::DegradedForm) {
        self.results_degraded
            .get_or_create(&FormLabels {
                form: form.as_str(),
            })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    #[test]
    fn a_pool_has_its_series_at_zero_before_its_first_task() {
        let registry = Metrics::new();
        let metrics: RunnerMetrics = registry.component();
        let text = registry.render();
        assert!(!text.contains("bastion_results_degraded_total{"), "{text}");
        let series = metrics.pool(CheckType::Http, 4);
        metrics.publishes_results();
        series.dispatch_timeouts.inc();
        let text = registry.render();
        for line in [
            "bastion_workers{type=\"http\"} 4",
            "bastion_workers_busy{type=\"http\"} 0",
            "bastion_dispatch_timeouts_total{type=\"http\"} 1",
            "bastion_task_timeouts_total{type=\"http\"} 0",
            "bastion_requests_expired_total{type=\"http\"} 0",
            "bastion_results_expired_total{type=\"http\"} 0",
            "bastion_dispatch_wait_seconds_count{type=\"http\"} 0",
            "bastion_results_degraded_total{form=\"detail_dropped\"} 0",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
        // Only the pools this process has.
        assert!(!text.contains("type=\"dns\""), "{text}");
    }
}
