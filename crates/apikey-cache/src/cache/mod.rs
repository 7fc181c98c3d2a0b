//! `ApiKeyCache`: authenticate presented keys against an atomically swapped snapshot.

mod negative;
mod reload;
mod stats;
mod watcher;
mod write;

use std::fmt;
use std::sync::Arc;

use tokio::time::Instant;

pub(crate) use reload::chain;
pub use stats::CacheStats;
pub(crate) use stats::Counters;
pub use watcher::Watcher;
pub(crate) use write::valid_account_id;

use self::reload::Inner;
use crate::config::CacheConfig;
use crate::error::{AuthError, StoreError};
use crate::key::{Identity, KeyHash, well_formed};
use crate::snapshot::{Lookup, Snapshot};
use crate::store::KeyStore;

/// An API-key cache over a shared [`KeyStore`]. Cheap to clone (handles share one cache).
///
/// - [`authenticate`](Self::authenticate): the hit path takes a read lock only long enough to
///   clone an `Arc`, then does one SHA-256, one map lookup and a constant-time compare.
/// - A snapshot older than the TTL is refreshed (conditionally, by version) before use (A2).
/// - An unknown key triggers a reload (A1) shared by every concurrent miss (A4), limited by a
///   process-wide rate limit, and is then negatively cached (A5).
/// - Local writes go to the store with a compare-and-swap and are visible here at once (A3).
/// - A reload builds the new table on the side and swaps it in; a failed reload keeps the
///   previous one and says so in [`stats`](Self::stats) and a `warn` log (A9).
pub struct ApiKeyCache<S> {
    pub(crate) inner: Arc<Inner<S>>,
}

impl<S> Clone for ApiKeyCache<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<S: KeyStore> fmt::Debug for ApiKeyCache<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let snapshot = self.inner.current();
        f.debug_struct("ApiKeyCache")
            .field("store", &self.inner.store.describe())
            .field("keys", &snapshot.table.keys)
            .field("generation", &snapshot.generation)
            .field("config", &self.inner.config)
            .finish()
    }
}

impl<S: KeyStore> ApiKeyCache<S> {
    /// A cache over `store`. Nothing is loaded until the first call (or [`Self::refresh`]).
    pub fn new(store: S, config: CacheConfig) -> Self {
        Self {
            inner: Arc::new(Inner::new(store, config)),
        }
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.inner.store
    }

    /// Check a presented key. Never logs, stores or returns it.
    ///
    /// Order: shape check (malformed input is never hashed or reloaded for) → refresh the
    /// snapshot if older than the TTL → look up the hash → negative cache → a rate-limited,
    /// shared reload → negative-cache the key if that fresh reload does not know it either.
    ///
    /// Keyed layout: shape check → SHA-256 → the bounded cache (a fresh hit ends here) → the
    /// checksum (A12: a key without a valid one is [`AuthError::Malformed`] with zero store
    /// reads) → feed read if due → negative cache → one rate-limited point read.
    pub async fn authenticate(&self, presented: &str) -> Result<Identity, AuthError> {
        // The hit path: no await, no allocation. Everything else (refreshes, misses, store
        // reads) runs in a boxed future, which keeps this one small.
        let answer = match self.fast(presented) {
            Ok(answer) => answer,
            Err((hash, now)) => Box::pin(self.authenticate_slow(presented, hash, now)).await,
        };
        self.inner.telemetry.authenticated(&answer);
        answer
    }

    /// The shape check and the hit path; `Err` carries what the slow path needs.
    fn fast(&self, presented: &str) -> Result<Result<Identity, AuthError>, (KeyHash, Instant)> {
        if !well_formed(presented) {
            Counters::bump(&self.inner.counters.rejected_malformed);
            return Ok(Err(AuthError::Malformed));
        }
        let hash = KeyHash::of(presented);
        let now = Instant::now();
        self.hit(&hash, now).ok_or((hash, now))
    }

    /// A verified answer needing no store read and no wait: a fresh cached key (keyed layout,
    /// feed not due) or a key in a snapshot younger than the TTL. `None`: take the slow path.
    fn hit(&self, hash: &KeyHash, now: Instant) -> Option<Result<Identity, AuthError>> {
        let inner = &*self.inner;
        if inner.keyed.is_some() {
            return self.keyed_hit(hash, now);
        }
        let snapshot = inner.current();
        if snapshot.is_stale(now, inner.config.ttl) {
            return None;
        }
        self.answer(&snapshot, hash)
    }

    async fn authenticate_slow(
        &self,
        presented: &str,
        hash: KeyHash,
        now: Instant,
    ) -> Result<Identity, AuthError> {
        let inner = &*self.inner;
        if inner.keyed.is_some() {
            // The checksum (A12) is checked only off the hit path: a hit is one SHA-256 and
            // one cache lookup; junk and typos still never reach the store.
            return self.authenticate_keyed(presented, hash).await;
        }
        let mut snapshot = inner.current();
        let mut fresh = false;
        if snapshot.is_stale(now, inner.config.ttl) {
            let seen = inner.started();
            match self
                .inner
                .refresh_stale(now, snapshot.checked_at.is_some())
                .await
            {
                Ok(refreshed) => {
                    fresh = refreshed.load_gen > seen;
                    snapshot = refreshed;
                }
                Err(source) if snapshot.checked_at.is_none() => {
                    return Err(AuthError::Unavailable { source });
                }
                Err(_) => Counters::bump(&inner.counters.stale_served),
            }
        }
        if let Some(answer) = self.answer(&snapshot, &hash) {
            return answer;
        }
        if fresh {
            // This call's own refresh already read the store after the request arrived.
            return self.unknown(hash, now);
        }
        if inner.negative().contains(&hash, now) {
            Counters::bump(&inner.counters.negative_hits);
            Counters::bump(&inner.counters.rejected_unknown);
            return Err(AuthError::Unknown);
        }
        let seen = inner.started();
        // At most: join the load in flight, then one that started after `seen`.
        for _ in 0..3 {
            match inner.miss_reload(now, seen).await {
                None => {
                    Counters::bump(&inner.counters.miss_reloads_limited);
                    break;
                }
                Some((Err(source), _)) => return Err(AuthError::Unavailable { source }),
                Some((Ok(reloaded), fresh)) => {
                    if let Some(answer) = self.answer(&reloaded, &hash) {
                        return answer;
                    }
                    if fresh {
                        return self.unknown(hash, now);
                    }
                }
            }
        }
        Counters::bump(&inner.counters.rejected_unknown);
        Err(AuthError::Unknown)
    }

    fn answer(&self, snapshot: &Snapshot, hash: &KeyHash) -> Option<Result<Identity, AuthError>> {
        let counters = &self.inner.counters;
        match snapshot.table.lookup(hash) {
            Lookup::Valid(identity) => {
                Counters::bump(&counters.hits);
                Some(Ok(identity))
            }
            Lookup::Revoked => {
                Counters::bump(&counters.rejected_revoked);
                Some(Err(AuthError::Revoked))
            }
            Lookup::Missing => None,
        }
    }

    fn unknown(&self, hash: KeyHash, now: Instant) -> Result<Identity, AuthError> {
        self.inner.negative().insert(hash, now);
        Counters::bump(&self.inner.counters.rejected_unknown);
        Err(AuthError::Unknown)
    }

    /// Reload now (a load that starts after this call; conditional on the current version).
    /// Use it to warm the cache at start-up. On failure the previous snapshot stays.
    pub async fn refresh(&self) -> Result<(), Arc<StoreError>> {
        if self.inner.keyed.is_some() {
            return self.poll_feed_now().await;
        }
        self.inner.reload_fresh().await.map(drop)
    }

    /// Counters and the state of the current snapshot.
    pub fn stats(&self) -> CacheStats {
        let inner = &*self.inner;
        let snapshot = inner.current();
        let mut stats = CacheStats::default();
        inner.counters.fill(&mut stats);
        stats.negative_entries = inner.negative().len() as u64;
        stats.snapshot_generation = snapshot.generation;
        stats.snapshot_age = snapshot
            .checked_at
            .map(|at| Instant::now().saturating_duration_since(at));
        stats.keys = snapshot.table.keys as u64;
        stats.accounts = Some(snapshot.table.document.accounts.len() as u64);
        stats.layout = Some(inner.store.layout());
        stats.skipped_records = snapshot.table.skipped as u64;
        stats.last_reload_error = inner.last_error();
        stats.serving_previous_snapshot = stats.last_reload_error.is_some();
        if let Some(keyed) = &inner.keyed {
            stats.keys = keyed.keys.len() as u64;
            stats.accounts = None;
            stats.skipped_records = stats::get(&inner.counters.corrupt_records);
            let now = Instant::now();
            stats.snapshot_age = keyed
                .feed
                .ok_at()
                .map(|at| now.saturating_duration_since(at));
        }
        stats
    }
}

#[cfg(test)]
mod tests;
