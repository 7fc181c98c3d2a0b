//! `CacheConfig`: TTL, miss-reload rate limit, negative cache, store timeouts and write retries,
//! with env knobs. Every duration a builder method accepts is clamped into a documented range
//! (X5), so no value, `Duration::MAX` included, can overflow an `Instant` later.

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
/// `APIKEY_CACHE_LOAD_TIMEOUT_MS`: the longest one store load may take (A9). A load still
/// running then fails as [`StoreError::TimedOut`](crate::StoreError::TimedOut).
pub const LOAD_TIMEOUT_MS: Knob<u64> =
    Knob::new("APIKEY_CACHE_LOAD_TIMEOUT_MS", 5_000, 10, 600_000);
/// `APIKEY_CACHE_WRITE_TIMEOUT_MS`: the longest one store write may take (A9). The write's
/// outcome is then unknown; it fails as [`WriteError::Store`](crate::WriteError::Store).
pub const WRITE_TIMEOUT_MS: Knob<u64> =
    Knob::new("APIKEY_CACHE_WRITE_TIMEOUT_MS", 10_000, 10, 600_000);

/// `APIKEY_CACHE_POLL_MS`: keyed layout — how often the change feed is tailed (A11); a
/// revocation reaches every instance within one poll.
pub const POLL_MS: Knob<u64> = Knob::new("APIKEY_CACHE_POLL_MS", 2_000, 10, 600_000);
/// `APIKEY_CACHE_REVALIDATE_SECONDS`: keyed layout — while the change feed is read
/// successfully, a cached key is re-read from the store at least this often anyway (spread over
/// the last quarter of the interval), the safety net for a write whose feed append was lost.
pub const REVALIDATE_SECONDS: Knob<u64> =
    Knob::new("APIKEY_CACHE_REVALIDATE_SECONDS", 300, 1, 86_400);
/// `APIKEY_CACHE_KEY_CAPACITY`: keyed layout — most verified keys held per instance (A12).
pub const KEY_CAPACITY: Knob<u64> = Knob::new("APIKEY_CACHE_KEY_CAPACITY", 100_000, 1, 100_000_000);
/// `APIKEY_CACHE_KEY_IDLE_SECONDS`: keyed layout — a cached key unused this long is dropped
/// (A12).
pub const KEY_IDLE_SECONDS: Knob<u64> = Knob::new("APIKEY_CACHE_KEY_IDLE_SECONDS", 600, 1, 86_400);
/// `APIKEY_CACHE_POINT_READS_PER_SECOND`: keyed layout — sustained point reads that find no
/// key, process-wide (A5 with point lookups; bursts of the same size are allowed). Reads that
/// find a key are not limited.
pub const POINT_READS_PER_SECOND: Knob<u64> =
    Knob::new("APIKEY_CACHE_POINT_READS_PER_SECOND", 1_000, 1, 1_000_000);

const MS: Duration = Duration::from_millis(1);
/// Upper bound of the TTL, the negative-cache TTL and the watcher interval.
pub(crate) const MAX_TTL: Duration = Duration::from_secs(3600);
/// Upper bound of the miss-reload interval, the retry back-off and the store timeouts.
pub(crate) const MAX_INTERVAL: Duration = Duration::from_secs(600);
/// Upper bound of the miss-reload burst and of write attempts.
const MAX_COUNT: u32 = 1_000;

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
    pub(crate) load_timeout: Duration,
    pub(crate) write_timeout: Duration,
    pub(crate) poll: Duration,
    pub(crate) key_capacity: u64,
    pub(crate) key_idle: Duration,
    pub(crate) revalidate: Duration,
    pub(crate) point_reads_per_second: u32,
    pub(crate) legacy_keys: bool,
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
            load_timeout: Duration::from_millis(LOAD_TIMEOUT_MS.read_with(&lookup)),
            write_timeout: Duration::from_millis(WRITE_TIMEOUT_MS.read_with(&lookup)),
            poll: Duration::from_millis(POLL_MS.read_with(&lookup)),
            key_capacity: KEY_CAPACITY.read_with(&lookup),
            key_idle: KEY_IDLE_SECONDS.read_secs_with(&lookup),
            revalidate: REVALIDATE_SECONDS.read_secs_with(&lookup),
            point_reads_per_second: u32::try_from(POINT_READS_PER_SECOND.read_with(&lookup))
                .unwrap_or(u32::MAX),
            legacy_keys: false,
        }
    }

    /// Maximum snapshot age before a request refreshes it first (default 30 s; clamped to
    /// 1 ms – 1 h).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl.clamp(MS, MAX_TTL);
        self
    }

    /// Sustained rate of miss-driven reloads: one per `interval` (default 1 s; clamped to
    /// 1 ms – 600 s).
    pub fn miss_reload_interval(mut self, interval: Duration) -> Self {
        self.miss_reload_interval = interval.clamp(MS, MAX_INTERVAL);
        self
    }

    /// Miss-driven reloads allowed back to back before the rate applies (default 2; clamped to
    /// 1 – 1 000): one for the first miss, one follow-up for the misses that arrive during it.
    pub fn miss_reload_burst(mut self, burst: u32) -> Self {
        self.miss_reload_burst = burst.clamp(1, MAX_COUNT);
        self
    }

    /// How long a key found unknown by a fresh reload is rejected without another reload
    /// (default 10 s; zero disables the negative cache; at most 1 h).
    pub fn negative_ttl(mut self, ttl: Duration) -> Self {
        self.negative_ttl = ttl.min(MAX_TTL);
        self
    }

    /// Most unknown keys remembered (default 10 000, ~100 bytes each; zero disables). When
    /// full, the oldest entry goes first.
    pub fn negative_capacity(mut self, capacity: usize) -> Self {
        self.negative_capacity = capacity;
        self
    }

    /// After a failed reload, requests are answered from the previous snapshot for this long
    /// before a TTL refresh is tried again (default 1 s; at most 600 s), so a down store is not
    /// hammered.
    pub fn retry_backoff(mut self, backoff: Duration) -> Self {
        self.retry_backoff = backoff.min(MAX_INTERVAL);
        self
    }

    /// Attempts of one local write when other writers keep changing the document (default 5;
    /// clamped to 1 – 1 000).
    pub fn write_attempts(mut self, attempts: u32) -> Self {
        self.write_attempts = attempts.clamp(1, MAX_COUNT);
        self
    }

    /// The longest one store load may take (default 5 s; clamped to 1 ms – 600 s). A load
    /// still running then fails with [`StoreError::TimedOut`](crate::StoreError::TimedOut):
    /// known keys are answered from the previous snapshot, an unknown key gets
    /// [`AuthError::Unavailable`](crate::AuthError::Unavailable) (503 in the layer).
    pub fn load_timeout(mut self, timeout: Duration) -> Self {
        self.load_timeout = timeout.clamp(MS, MAX_INTERVAL);
        self
    }

    /// The longest one store write may take (default 10 s; clamped to 1 ms – 600 s). A write
    /// still running then fails with [`WriteError::Store`](crate::WriteError::Store) (its
    /// outcome in the store is unknown). Writes never hold a lock that authentication needs.
    pub fn write_timeout(mut self, timeout: Duration) -> Self {
        self.write_timeout = timeout.clamp(MS, MAX_INTERVAL);
        self
    }
}

impl CacheConfig {
    /// Keyed layout: how often the change feed is tailed (default 2 s; clamped to
    /// 1 ms – 1 h). A revocation or a new key written on any instance is seen here within
    /// one `poll` (A11).
    pub fn poll(mut self, poll: Duration) -> Self {
        self.poll = poll.clamp(MS, MAX_TTL);
        self
    }

    /// Keyed layout: the change-feed poll interval configured (see [`Self::poll`]); e.g. the
    /// interval to give [`ApiKeyCache::spawn_watcher`](crate::ApiKeyCache::spawn_watcher).
    pub fn poll_interval(&self) -> Duration {
        self.poll
    }

    /// Keyed layout: most verified keys (valid or revoked) held at once (default 100 000,
    /// ~0.4 KiB each; clamped to 1 – 10^8). Past it, keys used once go before keys used again
    /// (CLOCK-Pro, A12), not strictly the least recently used; the guide says how the bound is
    /// rounded per shard.
    pub fn key_capacity(mut self, capacity: u64) -> Self {
        self.key_capacity = capacity.clamp(1, 100_000_000);
        self
    }

    /// Keyed layout: a cached key unused this long is dropped (default 10 min; clamped to
    /// 1 ms – 24 h).
    pub fn key_idle(mut self, idle: Duration) -> Self {
        self.key_idle = idle.clamp(MS, Duration::from_secs(86_400));
        self
    }

    /// Keyed layout: the safety revalidation (default 5 min; clamped to 1 ms – 24 h). While
    /// the change feed is read successfully, a cached key is trusted without a store read and
    /// re-read only this often (each key at a point spread over the last quarter of the
    /// interval, so a cold start's keys do not all come due together): the store reads of an
    /// instance follow the feed, not its cached keys × 1/TTL. It bounds how long a write whose
    /// feed append was lost (a writer dying in between) stays unseen. When the feed cannot be
    /// read for a TTL, keys fall back to per-key revalidation every TTL. Values below the TTL
    /// act as the TTL.
    pub fn revalidate(mut self, interval: Duration) -> Self {
        self.revalidate = interval.clamp(MS, Duration::from_secs(86_400));
        self
    }

    /// Keyed layout: point reads per second that find no key (default 1 000, also the burst;
    /// clamped to 1 – 10^6). Once spent, a key not cached is rejected as unknown without a
    /// read until the budget refills; reads that find a key spend nothing, so a cold instance
    /// is never limited by its real traffic.
    pub fn point_reads_per_second(mut self, rate: u32) -> Self {
        self.point_reads_per_second = rate.clamp(1, 1_000_000);
        self
    }

    /// Keyed layout: also look up keys without a valid checksum (keys issued before
    /// checksums, e.g. migrated from a v1 document). Default `false`: such input is
    /// [`AuthError::Malformed`](crate::AuthError::Malformed) with zero store reads (A12).
    /// With `true`, unknown legacy-shaped keys cost a point read each, still bounded by the
    /// negative cache and [`Self::point_reads_per_second`] (A5).
    pub fn legacy_keys(mut self, accept: bool) -> Self {
        self.legacy_keys = accept;
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

    // covers A9 + X5: the store timeouts have finite defaults and knobs.
    #[test]
    fn store_timeouts_have_finite_defaults_and_env_knobs() {
        let config = CacheConfig::default();
        assert_eq!(config.load_timeout, Duration::from_secs(5));
        assert_eq!(config.write_timeout, Duration::from_secs(10));
        let config = CacheConfig::from_lookup(|name| match name {
            "APIKEY_CACHE_LOAD_TIMEOUT_MS" => Some("250".into()),
            "APIKEY_CACHE_WRITE_TIMEOUT_MS" => Some("99999999999".into()),
            _ => None,
        });
        assert_eq!(config.load_timeout, Duration::from_millis(250));
        assert_eq!(config.write_timeout, Duration::from_secs(600), "clamped");
    }

    // covers X5: Duration::MAX (and zero) through every builder method lands in its range.
    #[test]
    fn every_duration_is_clamped_including_duration_max() {
        let max = CacheConfig::default()
            .ttl(Duration::MAX)
            .miss_reload_interval(Duration::MAX)
            .miss_reload_burst(u32::MAX)
            .negative_ttl(Duration::MAX)
            .retry_backoff(Duration::MAX)
            .write_attempts(u32::MAX)
            .load_timeout(Duration::MAX)
            .write_timeout(Duration::MAX);
        assert_eq!(max.ttl, MAX_TTL);
        assert_eq!(max.miss_reload_interval, MAX_INTERVAL);
        assert_eq!(max.miss_reload_burst, 1_000);
        assert_eq!(max.negative_ttl, MAX_TTL);
        assert_eq!(max.retry_backoff, MAX_INTERVAL);
        assert_eq!(max.write_attempts, 1_000);
        assert_eq!(max.load_timeout, MAX_INTERVAL);
        assert_eq!(max.write_timeout, MAX_INTERVAL);
        let zero = CacheConfig::default()
            .ttl(Duration::ZERO)
            .miss_reload_interval(Duration::ZERO)
            .load_timeout(Duration::ZERO)
            .write_timeout(Duration::ZERO);
        assert_eq!(zero.ttl, MS);
        assert_eq!(zero.miss_reload_interval, MS);
        assert_eq!(zero.load_timeout, MS);
        assert_eq!(zero.write_timeout, MS);
    }
}
