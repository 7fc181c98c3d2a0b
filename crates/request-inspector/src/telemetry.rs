//! Metrics through the `metrics` facade (feature `metrics`): handles registered once per inspector.
//!
//! Without the feature every type here is empty and every call compiles to nothing. With it,
//! nothing is recorded unless the application installed a recorder before building the
//! [`Inspector`](crate::Inspector): the handles are looked up once, in `Inspector::new`, never on
//! a request's path.

use std::fmt;

/// A counter handle: `metrics::Counter`, or nothing without the feature.
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
pub(crate) struct Gauge(#[cfg(feature = "metrics")] metrics::Gauge);

impl Gauge {
    #[inline]
    pub(crate) fn increment(&self, by: usize) {
        #[cfg(feature = "metrics")]
        self.0.increment(by as f64);
        #[cfg(not(feature = "metrics"))]
        let _ = by;
    }

    /// Moves the gauge by `delta` (nothing when it is 0).
    #[inline]
    pub(crate) fn change(&self, delta: isize) {
        if delta > 0 {
            self.increment(delta.unsigned_abs());
        } else if delta < 0 {
            self.decrement(delta.unsigned_abs());
        }
    }

    #[inline]
    pub(crate) fn decrement(&self, by: usize) {
        #[cfg(feature = "metrics")]
        self.0.decrement(by as f64);
        #[cfg(not(feature = "metrics"))]
        let _ = by;
    }
}

impl fmt::Debug for Counter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Counter")
    }
}

impl fmt::Debug for Gauge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Gauge")
    }
}

/// Every series one inspector records (see the guide's Metrics section).
#[derive(Debug)]
pub(crate) struct Metrics {
    /// `inspector.requests{mode="streamed"}`: polling GETs passed through.
    pub(crate) streamed: Counter,
    /// `inspector.requests{mode="captured"}`: exchanges recorded into the ring.
    pub(crate) captured: Counter,
    /// `inspector.requests{mode="unowned"}`: would be captured, but no owner: counted only.
    pub(crate) unowned: Counter,
    /// `inspector.captured.bytes{body="request"}`.
    pub(crate) request_bytes: Counter,
    /// `inspector.captured.bytes{body="response"}`.
    pub(crate) response_bytes: Counter,
    /// `inspector.bodies.truncated`.
    pub(crate) truncated: Counter,
    /// `inspector.ring.evictions`.
    pub(crate) evictions: Counter,
    /// `inspector.ring.entries`.
    pub(crate) ring_entries: Gauge,
    /// `inspector.ring.bytes`.
    pub(crate) ring_bytes: Gauge,
}

impl Metrics {
    /// Register the series with the installed recorder (none: no-op handles).
    #[cfg(feature = "metrics")]
    pub(crate) fn new() -> Self {
        use metrics::{counter, gauge};
        describe();
        let requests = |mode: &'static str| Counter(counter!("inspector.requests", "mode" => mode));
        let bytes =
            |body: &'static str| Counter(counter!("inspector.captured.bytes", "body" => body));
        Self {
            streamed: requests("streamed"),
            captured: requests("captured"),
            unowned: requests("unowned"),
            request_bytes: bytes("request"),
            response_bytes: bytes("response"),
            truncated: Counter(counter!("inspector.bodies.truncated")),
            evictions: Counter(counter!("inspector.ring.evictions")),
            ring_entries: Gauge(gauge!("inspector.ring.entries")),
            ring_bytes: Gauge(gauge!("inspector.ring.bytes")),
        }
    }

    /// Without the feature: nothing to register.
    #[cfg(not(feature = "metrics"))]
    pub(crate) fn new() -> Self {
        Self {
            streamed: Counter(),
            captured: Counter(),
            unowned: Counter(),
            request_bytes: Counter(),
            response_bytes: Counter(),
            truncated: Counter(),
            evictions: Counter(),
            ring_entries: Gauge(),
            ring_bytes: Gauge(),
        }
    }
}

/// Describe every series to the current recorder, each time handles are registered (not once per
/// process: a recorder installed later, or a test's local one, gets the units too).
#[cfg(feature = "metrics")]
fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge};
    describe_counter!(
        "inspector.requests",
        Unit::Count,
        "Requests seen by the inspector layer, by mode: captured (recorded into the ring), \
         streamed (polling GET passed through untouched), unowned (no owner: counted, not \
         stored)."
    );
    describe_counter!(
        "inspector.captured.bytes",
        Unit::Bytes,
        "Body bytes copied into ring entries (at most the body limit per body), by body: \
         request or response."
    );
    describe_counter!(
        "inspector.bodies.truncated",
        Unit::Count,
        "Captured bodies cut at the body limit."
    );
    describe_counter!(
        "inspector.ring.evictions",
        Unit::Count,
        "Entries pushed out of the ring by newer ones."
    );
    describe_gauge!(
        "inspector.ring.entries",
        Unit::Count,
        "Entries in the ring now."
    );
    describe_gauge!(
        "inspector.ring.bytes",
        Unit::Bytes,
        "Bytes held by the ring's entries now (InspectorStats::ring_bytes)."
    );
}
