//! Metrics through the `metrics` facade (feature `metrics`): reads by outcome and durations,
//! recorded from each fan-out's report when it is joined.
//!
//! Without the feature everything here is empty and compiles to nothing.

use std::fmt;

use super::report::FanOutReport;
#[cfg(feature = "metrics")]
use super::report::Outcome;

/// Phases labelled one by one; deeper ones share the label `"16+"`.
#[cfg(feature = "metrics")]
const MAX_PHASE_LABELS: u32 = 16;

/// Handles registered when a fan-out is built.
pub(crate) struct FanOutMetrics {
    #[cfg(feature = "metrics")]
    ok: metrics::Counter,
    /// By [`reason`]: error, timeout, panic, cancelled.
    #[cfg(feature = "metrics")]
    degraded: [metrics::Counter; 4],
    #[cfg(feature = "metrics")]
    read_duration: metrics::Histogram,
    #[cfg(feature = "metrics")]
    duration: metrics::Histogram,
}

impl fmt::Debug for FanOutMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FanOutMetrics")
    }
}

/// The bounded `reason` label of a degraded read (its text stays in the report only).
#[cfg(feature = "metrics")]
fn reason(outcome: &Outcome) -> Option<usize> {
    match outcome {
        Outcome::Ok => None,
        Outcome::TimedOut { .. } => Some(1),
        Outcome::Degraded { reason } if reason.starts_with("read panicked") => Some(2),
        Outcome::Degraded { reason } if reason.starts_with("read task ended") => Some(3),
        _ => Some(0),
    }
}

impl FanOutMetrics {
    pub(crate) fn new() -> Self {
        #[cfg(feature = "metrics")]
        {
            use metrics::{counter, histogram};
            describe();
            Self {
                ok: counter!("fanout.reads", "outcome" => "ok"),
                degraded: ["error", "timeout", "panic", "cancelled"].map(
                    |reason| counter!("fanout.reads", "outcome" => "degraded", "reason" => reason),
                ),
                read_duration: histogram!("fanout.read.duration"),
                duration: histogram!("fanout.duration"),
            }
        }
        #[cfg(not(feature = "metrics"))]
        Self {}
    }

    /// Record a joined fan-out: each read, each phase (first start to last end), the whole.
    pub(crate) fn joined(&self, report: &FanOutReport) {
        #[cfg(feature = "metrics")]
        {
            use std::collections::BTreeMap;
            use std::time::Duration;
            let mut phases: BTreeMap<u32, (Duration, Duration)> = BTreeMap::new();
            for read in &report.reads {
                match reason(&read.outcome) {
                    None => self.ok.increment(1),
                    Some(i) => self.degraded[i].increment(1),
                }
                self.read_duration.record(read.duration.as_secs_f64());
                let end = read.started_after.saturating_add(read.duration);
                let span = phases
                    .entry(read.phase)
                    .or_insert((read.started_after, end));
                span.0 = span.0.min(read.started_after);
                span.1 = span.1.max(end);
            }
            for (phase, (start, end)) in phases {
                let label = if phase < MAX_PHASE_LABELS {
                    phase.to_string()
                } else {
                    format!("{MAX_PHASE_LABELS}+")
                };
                metrics::histogram!("fanout.phase.duration", "phase" => label)
                    .record(end.saturating_sub(start).as_secs_f64());
            }
            self.duration.record(report.elapsed.as_secs_f64());
        }
        #[cfg(not(feature = "metrics"))]
        let _ = report;
    }
}

/// Describe every series to the current recorder, each time handles are registered (not once per
/// process: a recorder installed later, or a test's local one, gets the units too).
#[cfg(feature = "metrics")]
fn describe() {
    use metrics::{Unit, describe_counter, describe_histogram};
    describe_counter!(
        "fanout.reads",
        Unit::Count,
        "Reads by outcome: ok, or degraded to their default with a reason (error, timeout, \
         panic, cancelled)."
    );
    describe_histogram!(
        "fanout.read.duration",
        Unit::Seconds,
        "Time one read ran (after its permit)."
    );
    describe_histogram!(
        "fanout.phase.duration",
        Unit::Seconds,
        "From the first read of a phase starting to its last read ending, by phase."
    );
    describe_histogram!(
        "fanout.duration",
        Unit::Seconds,
        "From a fan-out's creation to its join."
    );
}
