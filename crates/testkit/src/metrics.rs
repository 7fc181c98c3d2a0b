//! Reading back what a crate recorded through the `metrics` facade, for the crates'
//! `tests/metrics.rs` suites: run a test under a fresh `metrics_util` debugging recorder
//! installed for the current thread only, then look series up by kind, name and exact labels.
//!
//! ```
//! use testkit::metrics::{counter, recorded};
//!
//! let recorded = recorded(|| async {
//!     metrics::counter!("demo.calls", "outcome" => "ok").increment(2);
//! });
//! assert_eq!(counter(&recorded, "demo.calls", &[("outcome", "ok")]), 2);
//! ```

use std::future::Future;

use metrics::{SharedString, Unit};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use metrics_util::{CompositeKey, MetricKind};

/// Everything one test recorded: key, unit, description and value of each series (a debugging
/// snapshot resets the recorder, so a test takes it once, at its end).
pub type Recorded = Vec<(CompositeKey, Option<Unit>, Option<SharedString>, DebugValue)>;

/// Run `test` on a paused current-thread runtime (virtual time) under a fresh debugging
/// recorder for this thread only, and hand back what it recorded. What the test returns
/// (a pool, a client) stays alive until the snapshot is taken, so gauges it owns are still set.
pub fn recorded<F, Fut, T>(test: F) -> Recorded
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = T>,
{
    record(true, test)
}

/// [`recorded`] on a runtime with the real clock, for tests that talk to real sockets.
pub fn recorded_real_time<F, Fut, T>(test: F) -> Recorded
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = T>,
{
    record(false, test)
}

fn record<F, Fut, T>(paused: bool, test: F) -> Recorded
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = T>,
{
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _kept = metrics::with_local_recorder(&recorder, || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(paused)
            .build()
            .expect("a current-thread runtime")
            .block_on(test())
    });
    snapshotter.snapshot().into_vec()
}

/// The value of the series of `kind` named `name` with exactly `labels` (in any order), if
/// recorded.
pub fn series<'a>(
    recorded: &'a Recorded,
    kind: MetricKind,
    name: &str,
    labels: &[(&str, &str)],
) -> Option<&'a DebugValue> {
    let mut wanted = labels.to_vec();
    wanted.sort_unstable();
    recorded
        .iter()
        .find(|(key, ..)| {
            let mut found: Vec<(&str, &str)> =
                key.key().labels().map(|l| (l.key(), l.value())).collect();
            found.sort_unstable();
            key.kind() == kind && key.key().name() == name && found == wanted
        })
        .map(|(.., value)| value)
}

/// The counter `name` with exactly `labels`; panics (naming it) when it was not recorded.
pub fn counter(recorded: &Recorded, name: &str, labels: &[(&str, &str)]) -> u64 {
    match series(recorded, MetricKind::Counter, name, labels) {
        Some(DebugValue::Counter(value)) => *value,
        other => panic!("counter {name} {labels:?}: {other:?}"),
    }
}

/// The gauge `name` with exactly `labels`; panics (naming it) when it was not recorded.
pub fn gauge(recorded: &Recorded, name: &str, labels: &[(&str, &str)]) -> f64 {
    match series(recorded, MetricKind::Gauge, name, labels) {
        Some(DebugValue::Gauge(value)) => value.into_inner(),
        other => panic!("gauge {name} {labels:?}: {other:?}"),
    }
}

/// Every value the histogram `name` with exactly `labels` recorded, in order; panics (naming
/// it) when it was not recorded.
pub fn histogram(recorded: &Recorded, name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
    match series(recorded, MetricKind::Histogram, name, labels) {
        Some(DebugValue::Histogram(values)) => values.iter().map(|v| v.into_inner()).collect(),
        other => panic!("histogram {name} {labels:?}: {other:?}"),
    }
}

/// The unit described for the first series named `name`, whatever its labels.
pub fn unit(recorded: &Recorded, name: &str) -> Option<Unit> {
    recorded
        .iter()
        .find(|(key, ..)| key.key().name() == name)
        .and_then(|(_, unit, ..)| *unit)
}
