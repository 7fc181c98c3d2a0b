//! `CacheConfig`: TTL, miss-reload rate limit, negative cache and write retries, with env knobs.

use std::time::Duration;

use pool_core::Knob;

/// `APIKEY_CACHE_TTL_SECONDS`: snapshots older than this are refreshed before use (A2).
pub const TTL: Knob<u64> = Knob::new("APIKEY_CACHE_TTL_SECONDS", 30, 1, 3600);
/// `APIKEY_CACHE_MISS_RELOAD_INTERVAL_MS`: one miss-driven reload per interval, sustained (A5).
pub const MISS_RELOAD_INTERVAL_MS: Knob<u64> =
    Knob::new("APIKEY_CACHE_MISS_RELOAD_INTERVAL_MS", 1000, 10, 600_000);
/// `APIKEY_CACHE_NEGATIVE_TTL_SECONDS`: how long an unknown key is remembered as unknown (A5).
pub const NEGATIVE_TTL: Knob<u64> = Knob::new("APIKEY_CACHE_NEGATIVE_TTL_SECONDS", 10, 0, 3600);
/// `APIKEY_CACHE_NEGATIVE_CAPACITY`: most unknown keys remembered at once (bounded memory).
pub const NEGATIVE_CAPACITY: Knob<usize> =
    Knob::new("APIKEY_CACHE_NEGATIVE_CAPACITY", 10_000, 0, 1_000_000);

/// How an [`ApiKeyCache`](crate::ApiKeyCache) behaves. `Default` uses the documented defaults
/// without reading the environment; [`CacheConfig::from_env`] reads the knobs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheConfig {
    pub(crate) ttl: Duration,
    pub(crate) miss_reload_interval: Duration,
    pub(crate) miss_reload_burst: u32,
    pub(crate) negative_ttl: Duration,
    pub(crate) negative_capacity: usize,
    pub(crate) retry_backoff: Duration,
    pub(crate) write_attempts: u32,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self::from_lookup(|_| None)
    }
}

impl CacheConfig {
    /// Defaults overridden by the `APIKEY_CACHE_*` environment variables (clamped; garbage
    /// logs a warning and falls back to the default).
    pub fn from_env() -> Self {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// [`CacheConfig::from_env`] through an injected lookup (for tests).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Self {
        Self {
            ttl: TTL.read_secs_with(&lookup),
            miss_reload_interval: Duration::from_millis(MISS_RELOAD_INTERVAL_MS.read_with(&lookup)),
            miss_reload_burst: 2,
            negative_ttl: NEGATIVE_TTL.read_secs_with(&lookup),
            negative_capacity: NEGATIVE_CAPACITY.read_with(&lookup),
            retry_backoff: Duration::from_secs(1),
            write_attempts: 5,
        }
    }

    /// Maximum snapshot age before a request refreshes it first (default 30 s, at least 1 ms).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl.max(Duration::from_millis(1));
        self
    }

    /// Sustained rate of miss-driven reloads: one per `interval` (default 1 s, at least 1 ms).
    pub fn miss_reload_interval(mut self, interval: Duration) -> Self {
        self.miss_reload_interval = interval.max(Duration::from_millis(1));
        self
    }

    /// Miss-driven reloads allowed back to back before the rate applies (default 2, at least
    /// 1): one for the first miss, one follow-up for the misses that arrive during it.
    pub fn miss_reload_burst(mut self, burst: u32) -> Self {
        self.miss_reload_burst = burst.max(1);
        self
    }

    /// How long a key found unknown by a fresh reload is rejected without another reload
    /// (default 10 s; zero disables the negative cache).
    pub fn negative_ttl(mut self, ttl: Duration) -> Self {
        self.negative_ttl = ttl;
        self
    }

    /// Most unknown keys remembered (default 10 000, ~100 bytes each; zero disables). When
    /// full, the oldest entry goes first.
    pub fn negative_capacity(mut self, capacity: usize) -> Self {
        self.negative_capacity = capacity;
        self
    }

    /// After a failed reload, requests are answered from the previous snapshot for this long
    /// before a TTL refresh is tried again (default 1 s), so a down store is not hammered.
    pub fn retry_backoff(mut self, backoff: Duration) -> Self {
        self.retry_backoff = backoff;
        self
    }

    /// Attempts of one local write when other writers keep changing the document (default 5,
    /// at least 1).
    pub fn write_attempts(mut self, attempts: u32) -> Self {
        self.write_attempts = attempts.max(1);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // covers A2 (the 30 s default) and P8-style knob handling for this crate.
    #[test]
    fn config_reads_knobs_with_defaults_and_clamps() {
        let config = CacheConfig::default();
        assert_eq!(config.ttl, Duration::from_secs(30));
        assert_eq!(config.miss_reload_interval, Duration::from_secs(1));
        assert_eq!(config.negative_capacity, 10_000);
        let config = CacheConfig::from_lookup(|name| match name {
            "APIKEY_CACHE_TTL_SECONDS" => Some("0".into()),
            "APIKEY_CACHE_MISS_RELOAD_INTERVAL_MS" => Some("250".into()),
            "APIKEY_CACHE_NEGATIVE_CAPACITY" => Some("lots".into()),
            _ => None,
        });
        assert_eq!(config.ttl, Duration::from_secs(1), "clamped to the minimum");
        assert_eq!(config.miss_reload_interval, Duration::from_millis(250));
        assert_eq!(config.negative_capacity, 10_000, "garbage falls back");
    }
}
