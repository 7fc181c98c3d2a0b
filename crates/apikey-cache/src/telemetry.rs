//! Metrics through the `metrics` facade (feature `metrics`, issue 19): handles registered once
//! per cache, so the hit path never looks a metric up by name.
//!
//! Without the feature every type here is empty and every call compiles to nothing. With it,
//! nothing is recorded unless the application installed a recorder before building the cache.

use std::time::Duration;

use crate::error::AuthError;
use crate::key::Identity;

#[cfg(feature = "metrics")]
mod handles {
    pub(super) use metrics::{Counter, Gauge, Histogram};
}

#[cfg(not(feature = "metrics"))]
mod handles {
    #[derive(Clone, Default)]
    pub(super) struct Counter;
    #[derive(Clone, Default)]
    pub(super) struct Gauge;
    #[derive(Clone, Default)]
    pub(super) struct Histogram;

    impl Counter {
        #[inline]
        pub(super) fn increment(&self, _: u64) {}
    }
    impl Gauge {
        #[inline]
        pub(super) fn set(&self, _: f64) {}
    }
    impl Histogram {
        #[inline]
        pub(super) fn record(&self, _: f64) {}
    }
}

use handles::{Counter, Gauge, Histogram};

/// `authenticate` outcomes, store-read operations: the only label values used.
const OUTCOMES: [&str; 5] = ["ok", "unknown", "revoked", "unavailable", "malformed"];
/// A document load, a keyed point read, a change-feed read.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Read {
    Load = 0,
    Point = 1,
    Feed = 2,
}
const READS: [&str; 3] = ["load", "get_record", "read_feed"];

/// A gauge of how many entries something holds.
#[derive(Clone)]
pub(crate) struct EntriesGauge(Gauge);

impl Default for EntriesGauge {
    fn default() -> Self {
        #[cfg(feature = "metrics")]
        return Self(Gauge::noop());
        #[cfg(not(feature = "metrics"))]
        Self(Gauge)
    }
}

impl EntriesGauge {
    #[inline]
    pub(crate) fn set(&self, entries: usize) {
        self.0.set(entries as f64);
    }
}

impl std::fmt::Debug for EntriesGauge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EntriesGauge")
    }
}

/// The cache's metric handles.
pub(crate) struct Telemetry {
    authentications: [Counter; 5],
    reads: [Counter; 3],
    read_errors: [Counter; 3],
    read_duration: [Histogram; 3],
    reload_failures: Counter,
    snapshot_age: Gauge,
    negative_entries: Gauge,
    feed_entries: Counter,
    feed_gaps: Counter,
    idle_evictions: Counter,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Telemetry")
    }
}

#[cfg(feature = "metrics")]
fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "apikey.authentications",
        Unit::Count,
        "authenticate calls by outcome (ok, unknown, revoked, unavailable, malformed)"
    );
    describe_counter!(
        "apikey.store.reads",
        Unit::Count,
        "store reads by operation (load, get_record, read_feed) and outcome (ok, error)"
    );
    describe_histogram!(
        "apikey.store.read.duration",
        Unit::Seconds,
        "duration of one store read, by operation"
    );
    describe_counter!(
        "apikey.reload.failures",
        Unit::Count,
        "failed document loads, point reads and feed reads (the previous state stays)"
    );
    describe_gauge!(
        "apikey.snapshot.age",
        Unit::Seconds,
        "time since the store last confirmed this instance's view (document: the snapshot; keyed: the change feed), as of the last read"
    );
    describe_gauge!(
        "apikey.negative_cache.entries",
        Unit::Count,
        "unknown keys remembered as unknown"
    );
    describe_counter!(
        "apikey.feed.entries",
        Unit::Count,
        "change-feed entries applied"
    );
    describe_counter!(
        "apikey.feed.gaps",
        Unit::Count,
        "change-feed gaps met (each dropped every cached key)"
    );
    describe_counter!(
        "apikey.cache.idle_evictions",
        Unit::Count,
        "cached keys freed by the idle sweep (unused for key_idle)"
    );
}

impl Telemetry {
    pub(crate) fn new() -> Self {
        #[cfg(feature = "metrics")]
        {
            describe();
            let auth = |outcome: &'static str| metrics::counter!("apikey.authentications", "outcome" => outcome);
            let reads = |op: &'static str, outcome: &'static str| metrics::counter!("apikey.store.reads", "operation" => op, "outcome" => outcome);
            let duration = |op: &'static str| metrics::histogram!("apikey.store.read.duration", "operation" => op);
            Self {
                authentications: OUTCOMES.map(auth),
                reads: READS.map(|op| reads(op, "ok")),
                read_errors: READS.map(|op| reads(op, "error")),
                read_duration: READS.map(duration),
                reload_failures: metrics::counter!("apikey.reload.failures"),
                snapshot_age: metrics::gauge!("apikey.snapshot.age"),
                negative_entries: metrics::gauge!("apikey.negative_cache.entries"),
                feed_entries: metrics::counter!("apikey.feed.entries"),
                feed_gaps: metrics::counter!("apikey.feed.gaps"),
                idle_evictions: metrics::counter!("apikey.cache.idle_evictions"),
            }
        }
        #[cfg(not(feature = "metrics"))]
        {
            let _ = (OUTCOMES, READS);
            Self {
                authentications: Default::default(),
                reads: Default::default(),
                read_errors: Default::default(),
                read_duration: Default::default(),
                reload_failures: Counter,
                snapshot_age: Gauge,
                negative_entries: Gauge,
                feed_entries: Counter,
                feed_gaps: Counter,
                idle_evictions: Counter,
            }
        }
    }

    /// `freed` cached keys dropped by the idle sweep.
    pub(crate) fn idle_evictions(&self, freed: u64) {
        self.idle_evictions.increment(freed);
    }

    /// One `authenticate` answered.
    #[inline]
    pub(crate) fn authenticated(&self, result: &Result<Identity, AuthError>) {
        let index = match result {
            Ok(_) => 0,
            Err(AuthError::Unknown | AuthError::Missing) => 1,
            Err(AuthError::Revoked) => 2,
            Err(AuthError::Unavailable { .. }) => 3,
            Err(AuthError::Malformed) => 4,
        };
        self.authentications[index].increment(1);
    }

    /// One store read of kind `read` took `took`; `ok` is whether it succeeded.
    pub(crate) fn store_read(&self, read: Read, took: Duration, ok: bool) {
        let i = read as usize;
        if ok {
            self.reads[i].increment(1);
        } else {
            self.read_errors[i].increment(1);
            self.reload_failures.increment(1);
        }
        self.read_duration[i].record(took.as_secs_f64());
    }

    /// The view's age as of now (`None`: never confirmed; recorded as 0 is wrong, so skip).
    pub(crate) fn snapshot_age(&self, age: Option<Duration>) {
        if let Some(age) = age {
            self.snapshot_age.set(age.as_secs_f64());
        }
    }

    /// The negative cache's gauge, for the cache to keep current.
    pub(crate) fn negative_gauge(&self) -> EntriesGauge {
        EntriesGauge(self.negative_entries.clone())
    }

    pub(crate) fn feed_entries(&self, n: u64) {
        self.feed_entries.increment(n);
    }

    pub(crate) fn feed_gap(&self) {
        self.feed_gaps.increment(1);
    }
}
