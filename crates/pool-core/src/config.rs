//! Pool configuration: TTLs, capacity, sweeper and retire bounds.

use std::borrow::Cow;
use std::time::Duration;

/// How a [`KeyedPool`](crate::KeyedPool) ages, bounds and sweeps its entries.
///
/// Built with [`PoolConfig::default`] and the chained setters:
///
/// ```
/// use std::time::Duration;
/// let config = pool_core::PoolConfig::default()
///     .ttl(Duration::from_secs(300))
///     .idle_ttl(Duration::from_secs(1800))
///     .max_entries(32)
///     .sweep_interval(Duration::from_secs(60));
/// assert_eq!(config.max_entries_value(), 32);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolConfig {
    pub(crate) ttl: Option<Duration>,
    pub(crate) idle_ttl: Option<Duration>,
    pub(crate) max_entries: usize,
    pub(crate) sweep_interval: Option<Duration>,
    pub(crate) retire_timeout: Duration,
    pub(crate) expiry_margin: Duration,
    pub(crate) capacity_knob: Option<&'static str>,
    pub(crate) name: Cow<'static, str>,
}

impl Default for PoolConfig {
    /// No TTL, no idle TTL, 1024 entries, no sweeper, retire bounded by 10 s, expiry margin
    /// 60 s, named [`DEFAULT_NAME`](Self::DEFAULT_NAME).
    fn default() -> Self {
        Self {
            ttl: None,
            idle_ttl: None,
            max_entries: 1024,
            sweep_interval: None,
            retire_timeout: Duration::from_secs(10),
            expiry_margin: Self::DEFAULT_EXPIRY_MARGIN,
            capacity_knob: None,
            name: Cow::Borrowed(Self::DEFAULT_NAME),
        }
    }
}

impl PoolConfig {
    /// The longest duration any setting keeps: 30 years (of 365 days). Longer values,
    /// `Duration::MAX` included, are clamped to it, so no deadline `now + setting` can overflow.
    /// For a pool that is "effectively never".
    pub const MAX_DURATION: Duration = Duration::from_secs(30 * 365 * 86_400);

    /// The default [`expiry_margin`](Self::expiry_margin): 60 s.
    pub const DEFAULT_EXPIRY_MARGIN: Duration = Duration::from_secs(60);

    /// The default [`name`](Self::name): `"pool"`.
    pub const DEFAULT_NAME: &'static str = "pool";

    /// The pool's name: the `pool.name` label of its metrics (feature `metrics`), so the pools
    /// of one process are told apart (blob-pool names its pool `"blob-pool"`, k8s-session
    /// `"k8s-session"`). Pools sharing a name add up in one series. Choose it in code, from a
    /// small fixed set: never from a key, a tenant or anything a request controls. Default
    /// [`DEFAULT_NAME`](Self::DEFAULT_NAME).
    #[must_use]
    pub fn name(mut self, name: impl Into<Cow<'static, str>>) -> Self {
        self.name = name.into();
        self
    }

    /// The pool's name (the `pool.name` metrics label).
    pub fn name_value(&self) -> &str {
        &self.name
    }

    /// Maximum age of an entry. The effective deadline is the sooner of `created + ttl` and the
    /// deadline the factory reports (P2). Clamped to [`MAX_DURATION`](Self::MAX_DURATION)
    /// (`Duration::MAX` means "effectively never"); zero makes every value one-shot.
    #[must_use]
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl.min(Self::MAX_DURATION));
        self
    }

    /// Entries unused for longer than this are retired by the sweeper (P3). Callers can also
    /// prune with an explicit TTL through [`KeyedPool::prune_idle`](crate::KeyedPool::prune_idle).
    /// Clamped to [`MAX_DURATION`](Self::MAX_DURATION).
    #[must_use]
    pub fn idle_ttl(mut self, idle_ttl: Duration) -> Self {
        self.idle_ttl = Some(idle_ttl.min(Self::MAX_DURATION));
        self
    }

    /// Capacity. Inserting beyond it evicts the entry with the soonest deadline (P4), except
    /// while the pool thrashes (keys evicted for capacity come straight back): then returning
    /// keys earn protection and evict only unprotected entries, so a stable subset of the
    /// working set stays resident (entries within their [`expiry_margin`](Self::expiry_margin)
    /// still go first). Room is made before the insert: the pool never holds more. Clamped to
    /// at least 1.
    #[must_use]
    pub fn max_entries(mut self, max_entries: usize) -> Self {
        self.max_entries = max_entries.max(1);
        self
    }

    /// Run a background sweeper on this interval: it retires expired entries and, when an idle
    /// TTL is set, idle ones. It starts with the first [`get_or_create`] and stops when the pool
    /// is dropped or shut down. Zero disables the sweeper; longer than
    /// [`MAX_DURATION`](Self::MAX_DURATION) is clamped to it.
    ///
    /// [`get_or_create`]: crate::KeyedPool::get_or_create
    #[must_use]
    pub fn sweep_interval(mut self, every: Duration) -> Self {
        self.sweep_interval = Some(every.min(Self::MAX_DURATION)).filter(|d| !d.is_zero());
        self
    }

    /// Upper bound on one [`Retire::retire`](crate::Retire::retire) call; a retire that takes
    /// longer is abandoned and counted as a failure. Clamped to
    /// [`MAX_DURATION`](Self::MAX_DURATION).
    #[must_use]
    pub fn retire_timeout(mut self, timeout: Duration) -> Self {
        self.retire_timeout = timeout.min(Self::MAX_DURATION);
        self
    }

    /// Entries whose deadline is at most this far away count as about to expire: capacity
    /// eviction takes them first (soonest deadline first), even while the pool thrashes.
    /// Default [`DEFAULT_EXPIRY_MARGIN`](Self::DEFAULT_EXPIRY_MARGIN); clamped to
    /// [`MAX_DURATION`](Self::MAX_DURATION). A margin at least the TTL makes every entry
    /// "about to expire", i.e. plain soonest-deadline eviction with no thrashing protection.
    #[must_use]
    pub fn expiry_margin(mut self, margin: Duration) -> Self {
        self.expiry_margin = margin.min(Self::MAX_DURATION);
        self
    }

    /// The setting an operator raises when the pool thrashes (for example an environment
    /// variable such as `K8S_SESSION_POOL_MAX_ENTRIES`), named in the once-a-minute thrashing
    /// warning. Default: `PoolConfig::max_entries`.
    #[must_use]
    pub fn capacity_knob(mut self, name: &'static str) -> Self {
        self.capacity_knob = Some(name);
        self
    }

    /// The configured expiry margin.
    pub fn expiry_margin_value(&self) -> Duration {
        self.expiry_margin
    }

    /// The configured capacity.
    pub fn max_entries_value(&self) -> usize {
        self.max_entries
    }

    /// The configured TTL, if any.
    pub fn ttl_value(&self) -> Option<Duration> {
        self.ttl
    }

    /// The configured idle TTL, if any.
    pub fn idle_ttl_value(&self) -> Option<Duration> {
        self.idle_ttl
    }

    /// The configured sweeper interval, if a sweeper is configured.
    pub fn sweep_interval_value(&self) -> Option<Duration> {
        self.sweep_interval
    }

    /// The configured bound on one retire.
    pub fn retire_timeout_value(&self) -> Duration {
        self.retire_timeout
    }
}
