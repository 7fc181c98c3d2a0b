//! Metrics through the `metrics` facade (feature `metrics`): handles registered once per pool.
//!
//! Without the feature every type here is empty and every call compiles to nothing. With it,
//! nothing is recorded unless the application installed a recorder before building the pool.

use std::borrow::Cow;
use std::fmt;

use crate::EvictionCause;

/// A counter handle: `metrics::Counter`, or nothing without the feature.
#[derive(Clone)]
pub(crate) struct Counter(#[cfg(feature = "metrics")] metrics::Counter);

impl Counter {
    #[inline]
    pub(crate) fn add(&self, n: u64) {
        #[cfg(feature = "metrics")]
        self.0.increment(n);
        #[cfg(not(feature = "metrics"))]
        let _ = n;
    }
}

/// A gauge handle: `metrics::Gauge`, or nothing without the feature.
#[derive(Clone)]
pub(crate) struct Gauge(#[cfg(feature = "metrics")] metrics::Gauge);

impl Gauge {
    #[inline]
    pub(crate) fn add(&self, n: usize) {
        #[cfg(feature = "metrics")]
        self.0.increment(n as f64);
        #[cfg(not(feature = "metrics"))]
        let _ = n;
    }

    #[inline]
    pub(crate) fn sub(&self, n: usize) {
        #[cfg(feature = "metrics")]
        self.0.decrement(n as f64);
        #[cfg(not(feature = "metrics"))]
        let _ = n;
    }
}

/// A histogram handle: `metrics::Histogram`, or nothing without the feature.
#[derive(Clone)]
pub(crate) struct Histogram(#[cfg(feature = "metrics")] metrics::Histogram);

impl Histogram {
    #[inline]
    pub(crate) fn record(&self, seconds: f64) {
        #[cfg(feature = "metrics")]
        self.0.record(seconds);
        #[cfg(not(feature = "metrics"))]
        let _ = seconds;
    }
}

macro_rules! opaque_debug {
    ($($name:ident),*) => {$(
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(stringify!($name))
            }
        }
    )*};
}
opaque_debug!(Counter, Gauge, Histogram);

macro_rules! noop_default {
    ($($name:ident),*) => {$(
        impl Default for $name {
            fn default() -> Self {
                Self(#[cfg(feature = "metrics")] metrics::$name::noop())
            }
        }
    )*};
}
noop_default!(Counter, Gauge, Histogram);

/// Every series one pool records, all labelled `pool.name`.
#[derive(Debug, Default)]
pub(crate) struct PoolMetrics {
    pub(crate) entries: Gauge,
    pub(crate) hits: Counter,
    pub(crate) misses: Counter,
    pub(crate) coalesced: Counter,
    pub(crate) creations: Counter,
    pub(crate) creation_failures: Counter,
    pub(crate) one_shots: Counter,
    pub(crate) create_ok: Histogram,
    pub(crate) create_error: Histogram,
    pub(crate) retire_failures: Counter,
    pub(crate) thrashing: Counter,
    /// Indexed by [`cause_index`].
    pub(crate) evictions: [Counter; 6],
}

/// The position of a cause in [`PoolMetrics::evictions`].
pub(crate) fn cause_index(cause: EvictionCause) -> usize {
    match cause {
        EvictionCause::Idle => 0,
        EvictionCause::Expired => 1,
        EvictionCause::Capacity => 2,
        EvictionCause::OwnerGone => 3,
        EvictionCause::Reset => 4,
        EvictionCause::Invalidated => 5,
    }
}

/// The `cause` label values, in [`cause_index`] order.
#[cfg(feature = "metrics")]
const CAUSES: [&str; 6] = [
    "idle",
    "expired",
    "capacity",
    "owner_gone",
    "reset",
    "invalidated",
];

impl PoolMetrics {
    /// Register the pool's series with the installed recorder (none: no-op handles).
    #[cfg(feature = "metrics")]
    pub(crate) fn new(name: Cow<'static, str>) -> Self {
        use metrics::{counter, gauge, histogram};
        describe();
        let name = metrics::SharedString::from(name);
        let c = |metric: &'static str| Counter(counter!(metric, "pool.name" => name.clone()));
        let create = |outcome: &'static str| {
            Histogram(histogram!(
                "pool.create.duration",
                "pool.name" => name.clone(),
                "outcome" => outcome
            ))
        };
        Self {
            entries: Gauge(gauge!("pool.entries", "pool.name" => name.clone())),
            hits: c("pool.hits"),
            misses: c("pool.misses"),
            coalesced: c("pool.coalesced"),
            creations: c("pool.creations"),
            creation_failures: c("pool.creation_failures"),
            one_shots: c("pool.one_shots"),
            create_ok: create("ok"),
            create_error: create("error"),
            retire_failures: c("pool.retire_failures"),
            thrashing: c("pool.thrashing"),
            evictions: CAUSES.map(|cause| {
                Counter(counter!("pool.evictions", "pool.name" => name.clone(), "cause" => cause))
            }),
        }
    }

    /// Without the feature: nothing to register.
    #[cfg(not(feature = "metrics"))]
    pub(crate) fn new(_name: Cow<'static, str>) -> Self {
        Self::default()
    }
}

/// Describe every series to the current recorder, each time handles are registered (not once per
/// process: a recorder installed later, or a test's local one, gets the units too).
#[cfg(feature = "metrics")]
fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_gauge!("pool.entries", Unit::Count, "Entries in the pool now.");
    describe_counter!(
        "pool.hits",
        Unit::Count,
        "Lookups served from the pool (published in batches of at most 64 per thread, \
         exactly on every miss and stats read)."
    );
    describe_counter!(
        "pool.misses",
        Unit::Count,
        "Lookups that found nothing usable and went to single-flight creation."
    );
    describe_counter!(
        "pool.coalesced",
        Unit::Count,
        "Misses served by another caller's creation (single-flight waiters)."
    );
    describe_counter!(
        "pool.creations",
        Unit::Count,
        "Factory calls that produced a pooled value."
    );
    describe_counter!(
        "pool.creation_failures",
        Unit::Count,
        "Factory calls that failed."
    );
    describe_counter!(
        "pool.one_shots",
        Unit::Count,
        "Factory calls whose value could not be pooled (handed to one caller, then retired)."
    );
    describe_histogram!(
        "pool.create.duration",
        Unit::Seconds,
        "Time one factory call took, by outcome (ok, error)."
    );
    describe_counter!(
        "pool.evictions",
        Unit::Count,
        "Entries that left the pool, by cause (idle, expired, capacity, owner_gone, reset, \
         invalidated)."
    );
    describe_counter!(
        "pool.retire_failures",
        Unit::Count,
        "Retires that returned an error, panicked, timed out or could not run."
    );
    describe_counter!(
        "pool.thrashing",
        Unit::Count,
        "Misses on keys a capacity eviction removed recently: the working set does not fit."
    );
}
