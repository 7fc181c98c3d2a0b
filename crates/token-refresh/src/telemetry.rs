//! Metrics through the `metrics` facade (feature `metrics`): handles registered once per cache.
//!
//! Without the feature every type here is empty and every call compiles to nothing. With it,
//! nothing is recorded unless the application installed a recorder before building the cache.

use std::fmt;
use std::time::Duration;

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

impl fmt::Debug for Counter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Counter")
    }
}

/// The counter `name` with `labels` (bounded, static values).
pub(crate) fn counter(name: &'static str, labels: &[(&'static str, &'static str)]) -> Counter {
    // Described by `CacheGauges::new`, which every set of counters makes.
    #[cfg(feature = "metrics")]
    {
        let labels: Vec<metrics::Label> = labels
            .iter()
            .map(|(k, v)| metrics::Label::new(*k, *v))
            .collect();
        Counter(metrics::counter!(name, labels))
    }
    #[cfg(not(feature = "metrics"))]
    {
        let _ = (name, labels);
        Counter()
    }
}

/// The cache's gauges and the wait histogram.
pub(crate) struct CacheGauges {
    #[cfg(feature = "metrics")]
    expires_in: metrics::Gauge,
    #[cfg(feature = "metrics")]
    backoff: metrics::Gauge,
    #[cfg(feature = "metrics")]
    wait: metrics::Histogram,
}

impl fmt::Debug for CacheGauges {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CacheGauges")
    }
}

impl CacheGauges {
    pub(crate) fn new() -> Self {
        #[cfg(feature = "metrics")]
        {
            describe();
            Self {
                expires_in: metrics::gauge!("token.expires_in"),
                backoff: metrics::gauge!("token.backoff.active"),
                wait: metrics::histogram!("token.wait.duration"),
            }
        }
        #[cfg(not(feature = "metrics"))]
        Self {}
    }

    /// A token was installed that expires in `left` (`None`: never).
    pub(crate) fn installed(&self, left: Option<Duration>) {
        #[cfg(feature = "metrics")]
        {
            if let Some(left) = left {
                self.expires_in.set(left.as_secs_f64());
            }
            self.backoff.set(0.0);
        }
        let _ = left;
    }

    /// The cached token expires in `left` (`None`: never), as a stale call saw it.
    pub(crate) fn expires_in(&self, left: Option<Duration>) {
        #[cfg(feature = "metrics")]
        if let Some(left) = left {
            self.expires_in.set(left.as_secs_f64());
        }
        let _ = left;
    }

    /// A back-off started: the source is not contacted until it ends.
    pub(crate) fn backing_off(&self) {
        #[cfg(feature = "metrics")]
        self.backoff.set(1.0);
    }

    /// A caller waited `waited` for a blocking refresh.
    pub(crate) fn waited(&self, waited: Duration) {
        #[cfg(feature = "metrics")]
        self.wait.record(waited.as_secs_f64());
        let _ = waited;
    }
}

/// Describe every series to the current recorder, each time handles are registered (not once per
/// process: a recorder installed later, or a test's local one, gets the units too).
#[cfg(feature = "metrics")]
fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "token.calls",
        Unit::Count,
        "Token calls by how they were served (fresh, stale, waited, served_during_backoff, \
         cached_error)."
    );
    describe_counter!(
        "token.refresh.started",
        Unit::Count,
        "Calls to the token source, by mode (blocking, background)."
    );
    describe_counter!(
        "token.refreshes",
        Unit::Count,
        "Refreshes that ended, by mode and outcome (ok, failed, superseded, discarded)."
    );
    describe_counter!(
        "token.refreshes.lost",
        Unit::Count,
        "Background refreshes that panicked or were cancelled (also counted failed)."
    );
    describe_counter!(
        "token.refreshes.unusable",
        Unit::Count,
        "Refreshed tokens already inside the mandatory window (static stability)."
    );
    describe_counter!(
        "token.refresh.timeouts",
        Unit::Count,
        "Refreshes abandoned at the load timeout."
    );
    describe_counter!(
        "token.refresh.non_recoverable",
        Unit::Count,
        "Non-recoverable errors from the token source (T10)."
    );
    describe_counter!(
        "token.backoffs",
        Unit::Count,
        "Back-offs started after a failed refresh (T4)."
    );
    describe_gauge!(
        "token.backoff.active",
        "1 while the last refresh failed and a back-off holds the source off, 0 once a token \
         is installed."
    );
    describe_gauge!(
        "token.expires_in",
        Unit::Seconds,
        "Seconds the cached token has left, as of its installation or the last stale call."
    );
    describe_histogram!(
        "token.wait.duration",
        Unit::Seconds,
        "Time a call waited for a blocking refresh."
    );
    describe_counter!(
        "token.served_past_expiry",
        Unit::Count,
        "Calls served a token past its expiry (static stability, T9)."
    );
    describe_counter!(
        "token.served_cached_after_failure",
        Unit::Count,
        "Blocking refreshes that failed and whose waiters got the cached token (T9)."
    );
    describe_counter!(
        "token.invalidations",
        Unit::Count,
        "Rejected-token reports, by outcome (matched, ignored) (T11)."
    );
    describe_counter!(
        "token.invalidated_refreshes",
        Unit::Count,
        "Blocking refreshes started because the cached token was invalidated (T11)."
    );
}
