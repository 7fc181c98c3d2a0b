//! Counters of the cache and the `CacheStats` view of them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Cheap atomic counters, bumped on the paths they name.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) hits: AtomicU64,
    pub(crate) rejected_unknown: AtomicU64,
    pub(crate) rejected_revoked: AtomicU64,
    pub(crate) rejected_malformed: AtomicU64,
    pub(crate) negative_hits: AtomicU64,
    pub(crate) miss_reloads: AtomicU64,
    pub(crate) miss_reloads_limited: AtomicU64,
    pub(crate) store_loads: AtomicU64,
    pub(crate) not_modified: AtomicU64,
    pub(crate) reload_failures: AtomicU64,
    pub(crate) stale_served: AtomicU64,
    pub(crate) store_timeouts: AtomicU64,
    pub(crate) writes: AtomicU64,
    pub(crate) write_conflicts: AtomicU64,
    pub(crate) point_reads: AtomicU64,
    pub(crate) corrupt_records: AtomicU64,
    pub(crate) feed_polls: AtomicU64,
    pub(crate) feed_entries: AtomicU64,
    pub(crate) feed_gaps: AtomicU64,
    pub(crate) feed_append_failures: AtomicU64,
    pub(crate) idle_evictions: AtomicU64,
}

impl Counters {
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

pub(crate) fn get(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

/// What an [`ApiKeyCache`](crate::ApiKeyCache) has done, from [`ApiKeyCache::stats`](crate::ApiKeyCache::stats).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CacheStats {
    /// Keys accepted.
    pub hits: u64,
    /// Keys rejected as unknown (after a reload, from the negative cache, or rate-limited).
    pub rejected_unknown: u64,
    /// Keys rejected as revoked.
    pub rejected_revoked: u64,
    /// Presented values rejected as malformed (never hashed, never reloaded for).
    pub rejected_malformed: u64,
    /// Unknown keys answered from the negative cache without a reload.
    pub negative_hits: u64,
    /// Misses that waited for a reload (several may share one store read).
    pub miss_reloads: u64,
    /// Misses rejected without a reload because the miss-reload rate limit was spent.
    pub miss_reloads_limited: u64,
    /// Load calls made to the store by this instance (TTL, miss, watcher, write conflicts).
    pub store_loads: u64,
    /// Of those, loads answered "not modified" (a 304 for the Blob store).
    pub not_modified: u64,
    /// Failed reloads; each kept the previous snapshot.
    pub reload_failures: u64,
    /// Requests answered from a snapshot older than the TTL because its refresh failed.
    pub stale_served: u64,
    /// Store loads and writes abandoned at their timeout (`load_timeout`, `write_timeout`).
    pub store_timeouts: u64,
    /// Local writes stored.
    pub writes: u64,
    /// Version conflicts met by local writes (each followed by re-load, re-apply, re-write).
    pub write_conflicts: u64,
    /// Unknown keys currently remembered.
    pub negative_entries: u64,
    /// Snapshots installed so far (0: never loaded).
    pub snapshot_generation: u64,
    /// Time since the store last confirmed the snapshot; `None` before the first load. Keyed
    /// layout: time since the change feed was last read successfully (how far behind the
    /// store this instance's cached keys may be, up to one `poll` when healthy).
    pub snapshot_age: Option<Duration>,
    /// Keys (valid or revoked) held in memory: single-document layout, every key of the
    /// current snapshot (the whole table); keyed layout, the verified keys cached now (the
    /// active ones; the table's size is not known without listing the store).
    pub keys: u64,
    /// Accounts in the current snapshot (single-document layout); `None` in the keyed layout,
    /// where accounts are records that only a listing of the store could count.
    pub accounts: Option<u64>,
    /// The store's layout.
    pub layout: Option<crate::Layout>,
    /// Malformed records skipped when the current snapshot was built.
    pub skipped_records: u64,
    /// `true` while the latest reload failed and the previous snapshot is being served.
    pub serving_previous_snapshot: bool,
    /// The latest reload failure (its error chain), cleared by the next successful reload.
    pub last_reload_error: Option<String>,
    /// Keyed layout: point reads of one key record (misses and revalidations).
    pub point_reads: u64,
    /// Keyed layout: change-feed reads.
    pub feed_polls: u64,
    /// Keyed layout: change-feed entries applied.
    pub feed_entries: u64,
    /// Keyed layout: gaps met in the change feed (each dropped every cached key).
    pub feed_gaps: u64,
    /// Keyed layout: local writes whose feed append failed (others see them at their safety
    /// revalidation of the key, within `revalidate`).
    pub feed_append_failures: u64,
    /// Keyed layout: cached keys freed by the idle sweep (unused for `key_idle`; A12).
    pub idle_evictions: u64,
}

impl Counters {
    pub(crate) fn fill(&self, stats: &mut CacheStats) {
        stats.hits = get(&self.hits);
        stats.rejected_unknown = get(&self.rejected_unknown);
        stats.rejected_revoked = get(&self.rejected_revoked);
        stats.rejected_malformed = get(&self.rejected_malformed);
        stats.negative_hits = get(&self.negative_hits);
        stats.miss_reloads = get(&self.miss_reloads);
        stats.miss_reloads_limited = get(&self.miss_reloads_limited);
        stats.store_loads = get(&self.store_loads);
        stats.not_modified = get(&self.not_modified);
        stats.reload_failures = get(&self.reload_failures);
        stats.stale_served = get(&self.stale_served);
        stats.store_timeouts = get(&self.store_timeouts);
        stats.writes = get(&self.writes);
        stats.write_conflicts = get(&self.write_conflicts);
        stats.point_reads = get(&self.point_reads);
        stats.feed_polls = get(&self.feed_polls);
        stats.feed_entries = get(&self.feed_entries);
        stats.feed_gaps = get(&self.feed_gaps);
        stats.feed_append_failures = get(&self.feed_append_failures);
        stats.idle_evictions = get(&self.idle_evictions);
    }
}
