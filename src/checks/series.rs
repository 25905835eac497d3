//! How a check type declares and writes its own `probe_*` series (blackbox_exporter's names,
//! seconds as units). A type lists its series in its `KIND` and writes one response's values
//! through `SeriesOut`; the results sink derives the series from the latest results at each
//! scrape and owns the registry. Label values come from bounded sets only: the check and
//! target labels are added by the sink, and the one extra label a series may have takes its
//! value from a fixed list the type declares.

use super::response::Timings;

/// A series a check type reports: its name and its help text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeriesSpec {
    pub name: &'static str,
    pub help: &'static str,
}

/// Where a check type writes the series of one response (of one check and target).
pub trait SeriesOut {
    /// Sets gauge `name` to `value`, with one extra label `(key, value)` when given.
    fn gauge(
        &mut self,
        name: &'static str,
        label: Option<(&'static str, &'static str)>,
        value: f64,
    );
}

/// A phase's label value and how to read its seconds from a response's timings.
pub type PhaseGauge = (&'static str, fn(&Timings) -> f64);

/// Writes one gauge per phase: `name{phase="..."}`, from `timings` through `pick`.
pub fn write_phases(
    out: &mut dyn SeriesOut,
    name: &'static str,
    timings: &Timings,
    phases: &[PhaseGauge],
) {
    for (phase, pick) in phases {
        out.gauge(name, Some(("phase", phase)), pick(timings));
    }
}

/// The `resolve` phase, which every type has.
pub fn resolve(timings: &Timings) -> f64 {
    timings.resolve
}

/// The `connect` phase.
pub fn connect(timings: &Timings) -> f64 {
    timings.connect
}

/// The `tls` phase.
pub fn tls(timings: &Timings) -> f64 {
    timings.tls
}

/// The `processing` phase.
pub fn processing(timings: &Timings) -> f64 {
    timings.processing
}
