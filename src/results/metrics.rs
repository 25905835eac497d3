//! The sink's series: `bastion_check_transitions_total`, per check and the state entered. The
//! `probe_*` series and `bastion_check_state` are derived from the store at each scrape
//! (`exposition.rs`), not kept here.

use crate::metrics::{Component, Registry};
use crate::model::CheckState;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use std::sync::Arc;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CheckToLabels {
    check: String,
    to: &'static str,
}

fn check_to_labels(check: &str) -> Vec<CheckToLabels> {
    CheckState::ALL
        .iter()
        .map(|state| CheckToLabels {
            check: check.to_string(),
            to: state.as_str(),
        })
        .collect()
}

/// The sink's families (see the module doc).
#[derive(Clone, Debug)]
pub struct SinkMetrics {
    transitions: Family<CheckToLabels, Counter>,
}

impl Component for SinkMetrics {
    fn register(registry: &mut Registry) -> SinkMetrics {
        let metrics = SinkMetrics {
            transitions: Family::default(),
        };
        registry.per_check(
            "bastion_check_transitions",
            "Changes of check state, by the state entered",
            &metrics.transitions,
            Some(Arc::new(check_to_labels)),
            Counter::default,
        );
        metrics
    }
}

impl SinkMetrics {
    /// `check` entered state `to`.
    pub fn count_transition(&self, check: &str, to: CheckState) {
        self.transitions
            .get_or_create(&CheckToLabels {
                check: check.to_string(),
                to: to.as_str(),
            })
            .inc();
    }

    /// Removes a check's transition series.
    pub fn forget(&self, check: &str) {
        for labels in check_to_labels(check) {
            self.transitions.remove(&labels);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{CheckSelection, Metrics};

    #[test]
    fn a_scrape_of_some_checks_finds_their_transitions_and_forgetting_removes_them() {
        let registry = Metrics::new();
        let metrics: SinkMetrics = registry.component();
        for check in ["a", "b"] {
            metrics.count_transition(check, CheckState::Fail);
            metrics.count_transition(check, CheckState::Ok);
        }
        let chosen: std::collections::BTreeSet<String> = ["b".to_string()].into();
        let some = registry.render_selected(&CheckSelection::Only(Arc::new(chosen)));
        assert!(
            some.contains("bastion_check_transitions_total{check=\"b\",to=\"FAIL\"} 1"),
            "{some}"
        );
        assert!(
            some.contains("bastion_check_transitions_total{check=\"b\",to=\"OK\"} 1"),
            "{some}"
        );
        assert!(!some.contains("check=\"a\""), "{some}");
        metrics.forget("b");
        let full = registry.render();
        assert!(!full.contains("check=\"b\""), "{full}");
        assert!(full.contains("check=\"a\""), "{full}");
    }
}
