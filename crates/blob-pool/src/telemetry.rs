//! Metrics through the `metrics` facade (feature `metrics`): blob-pool's own counters, beside
//! the pool-core series its keyed pool records as `pool.name = "blob-pool"`.
//!
//! Without the feature every type here is empty and every call compiles to nothing.

use std::fmt;

/// The `pool.name` of blob-pool's keyed pool and of its own series.
pub(crate) const POOL_NAME: &str = "blob-pool";

/// blob-pool's own series, registered once per pool.
pub(crate) struct BlobMetrics {
    #[cfg(feature = "metrics")]
    tokens_rejected: metrics::Counter,
    #[cfg(feature = "metrics")]
    credentials_dropped: metrics::Counter,
}

impl fmt::Debug for BlobMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BlobMetrics")
    }
}

impl BlobMetrics {
    pub(crate) fn new() -> Self {
        #[cfg(feature = "metrics")]
        {
            use metrics::{Unit, counter, describe_counter};
            describe_counter!(
                "blob_pool.tokens_rejected",
                Unit::Count,
                "Cached tokens Azure Storage rejected (401, 403 AuthenticationFailed), each \
                 invalidated in its credential's token cache (T11)."
            );
            describe_counter!(
                "blob_pool.credentials_dropped",
                Unit::Count,
                "Registrations removed because their credential was dropped (B4)."
            );

            Self {
                tokens_rejected: counter!("blob_pool.tokens_rejected", "pool.name" => POOL_NAME),
                credentials_dropped: counter!(
                    "blob_pool.credentials_dropped",
                    "pool.name" => POOL_NAME
                ),
            }
        }
        #[cfg(not(feature = "metrics"))]
        Self {}
    }

    /// Storage rejected a token that was still cached.
    pub(crate) fn token_rejected(&self) {
        #[cfg(feature = "metrics")]
        self.tokens_rejected.increment(1);
    }

    /// `n` credentials were found dropped.
    pub(crate) fn credentials_dropped(&self, n: usize) {
        #[cfg(feature = "metrics")]
        self.credentials_dropped.increment(n as u64);
        let _ = n;
    }
}
