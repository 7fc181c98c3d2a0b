//! `BlobPoolConfig` and its environment knobs (idle TTL, sweeper, capacity, API version).

use std::time::Duration;

use pool_core::Knob;
use token_refresh::RefreshConfig;

/// `BLOB_SERVICE_POOL_IDLE_TTL_SECONDS`: clients unused for longer are pruned (B5).
pub const IDLE_TTL_SECONDS: Knob<u64> =
    Knob::new("BLOB_SERVICE_POOL_IDLE_TTL_SECONDS", 1800, 1, 604_800);
/// `BLOB_SERVICE_POOL_SWEEP_SECONDS`: how often the background sweeper evicts the clients of
/// dropped credentials and idle clients; `0` turns the sweeper off.
pub const SWEEP_SECONDS: Knob<u64> = Knob::new("BLOB_SERVICE_POOL_SWEEP_SECONDS", 60, 0, 86_400);
/// `BLOB_SERVICE_POOL_MAX_ENTRIES`: pooled clients at most (credential × endpoint pairs).
pub const MAX_ENTRIES: Knob<usize> = Knob::new("BLOB_SERVICE_POOL_MAX_ENTRIES", 1024, 1, 65_536);

/// How a [`BlobPool`](crate::BlobPool) ages, sweeps and builds its clients.
///
/// ```
/// use std::time::Duration;
/// use blob_pool::BlobPoolConfig;
///
/// let config = BlobPoolConfig::from_env_with(|name| {
///     (name == "BLOB_SERVICE_POOL_IDLE_TTL_SECONDS").then(|| "600".to_string())
/// })
/// .api_version("2025-01-05"); // what Azurite 3.35 understands
/// assert_eq!(config.idle_ttl_value(), Duration::from_secs(600));
/// assert_eq!(config.sweep_interval_value(), Some(Duration::from_secs(60)));
/// ```
#[derive(Debug, Clone)]
pub struct BlobPoolConfig {
    pub(crate) idle_ttl: Duration,
    pub(crate) sweep_interval: Option<Duration>,
    pub(crate) max_entries: usize,
    pub(crate) api_version: Option<String>,
    pub(crate) refresh: RefreshConfig,
}

impl Default for BlobPoolConfig {
    /// Idle TTL 1800 s, sweeper every 60 s, 1024 entries, the SDK's own API version, token
    /// refresh defaults. Ignores the environment (see [`BlobPoolConfig::from_env`]).
    fn default() -> Self {
        Self::from_env_with(|_| None)
    }
}

impl BlobPoolConfig {
    /// The defaults, overridden by the `BLOB_SERVICE_POOL_*` and `TOKEN_REFRESH_*` environment
    /// variables (clamped into range; garbage logs a warning and keeps the default).
    pub fn from_env() -> Self {
        Self::from_env_with(|name| std::env::var(name).ok())
    }

    /// [`BlobPoolConfig::from_env`] through `lookup` (given a variable's name), for tests.
    pub fn from_env_with(lookup: impl Fn(&str) -> Option<String>) -> Self {
        let sweep = SWEEP_SECONDS.read_secs_with(&lookup);
        Self {
            idle_ttl: IDLE_TTL_SECONDS.read_secs_with(&lookup),
            sweep_interval: Some(sweep).filter(|d| !d.is_zero()),
            max_entries: MAX_ENTRIES.read_with(&lookup),
            api_version: None,
            refresh: RefreshConfig::from_env_with(&lookup),
        }
    }

    /// Clients unused for longer than this are retired by [`BlobPool::prune_idle`] and the
    /// sweeper (B5). Clamped into the knob's range, 1 s – 7 days (so even `Duration::MAX` is a
    /// valid TTL, never an overflow: X5).
    ///
    /// [`BlobPool::prune_idle`]: crate::BlobPool::prune_idle
    #[must_use]
    pub fn idle_ttl(mut self, idle_ttl: Duration) -> Self {
        self.idle_ttl = IDLE_TTL_SECONDS.clamp_secs(idle_ttl);
        self
    }

    /// Run the background sweeper on this interval (`None` or zero: no sweeper). It starts
    /// with the first [`BlobPool::client`](crate::BlobPool::client) call and stops when the
    /// pool is dropped. At most the knob's maximum, 1 day (longer, `Duration::MAX` included, is
    /// clamped: X5).
    #[must_use]
    pub fn sweep_interval(mut self, every: Option<Duration>) -> Self {
        self.sweep_interval = every
            .filter(|d| !d.is_zero())
            .map(|d| SWEEP_SECONDS.clamp_secs(d));
        self
    }

    /// Pooled clients at most; past it the least recently used goes first (pool-core P4: the
    /// soonest deadline first, and a pooled client has none, so the tie-break, last use).
    /// Clamped into the knob's range, 1 – 65 536 (X5: `usize::MAX` is not "no limit").
    #[must_use]
    pub fn max_entries(mut self, max_entries: usize) -> Self {
        self.max_entries = MAX_ENTRIES.clamp(max_entries);
        self
    }

    /// The `x-ms-version` every client sends. Default: the SDK's own, which can be newer than
    /// an emulator knows (Azurite 3.35 answers 400 to it unless started with
    /// `--skipApiVersionCheck`).
    #[must_use]
    pub fn api_version(mut self, version: impl Into<String>) -> Self {
        self.api_version = Some(version.into());
        self
    }

    /// How the per-credential token caches refresh (token-refresh's stale window, back-off …).
    #[must_use]
    pub fn refresh(mut self, refresh: RefreshConfig) -> Self {
        self.refresh = refresh;
        self
    }

    /// The idle TTL.
    pub fn idle_ttl_value(&self) -> Duration {
        self.idle_ttl
    }

    /// The sweeper interval, if the sweeper is on.
    pub fn sweep_interval_value(&self) -> Option<Duration> {
        self.sweep_interval
    }

    /// The capacity.
    pub fn max_entries_value(&self) -> usize {
        self.max_entries
    }

    /// The pinned API version, if any.
    pub fn api_version_value(&self) -> Option<&str> {
        self.api_version.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // covers B5: default idle TTL 1800 s, overridable and clamped through the knob.
    #[test]
    fn idle_ttl_defaults_to_1800_seconds_and_reads_its_knob() {
        assert_eq!(
            BlobPoolConfig::default().idle_ttl_value(),
            Duration::from_secs(1800)
        );
        let read = |value: &'static str| {
            BlobPoolConfig::from_env_with(move |name| {
                (name == "BLOB_SERVICE_POOL_IDLE_TTL_SECONDS").then(|| value.to_string())
            })
            .idle_ttl_value()
        };
        assert_eq!(read("90"), Duration::from_secs(90));
        assert_eq!(read("0"), Duration::from_secs(1));
        assert_eq!(read("soon"), Duration::from_secs(1800));
        assert_eq!(
            IDLE_TTL_SECONDS.name(),
            "BLOB_SERVICE_POOL_IDLE_TTL_SECONDS"
        );
    }

    #[test]
    fn sweeper_knob_zero_turns_it_off() {
        let off = BlobPoolConfig::from_env_with(|name| {
            (name == "BLOB_SERVICE_POOL_SWEEP_SECONDS").then(|| "0".to_string())
        });
        assert_eq!(off.sweep_interval_value(), None);
        assert_eq!(
            BlobPoolConfig::default().sweep_interval_value(),
            Some(Duration::from_secs(60))
        );
        assert_eq!(BlobPoolConfig::default().max_entries_value(), 1024);
    }

    // covers X5: Duration::MAX is clamped into the knobs' ranges, never stored as is.
    #[test]
    fn duration_max_is_clamped_into_the_knob_ranges() {
        let config = BlobPoolConfig::default()
            .idle_ttl(Duration::MAX)
            .sweep_interval(Some(Duration::MAX));
        assert_eq!(config.idle_ttl_value(), Duration::from_secs(604_800));
        assert_eq!(
            config.sweep_interval_value(),
            Some(Duration::from_secs(86_400))
        );
        assert_eq!(
            BlobPoolConfig::default()
                .idle_ttl(Duration::ZERO)
                .idle_ttl_value(),
            Duration::from_secs(1)
        );
    }
}
