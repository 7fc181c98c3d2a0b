//! Tailing the change feed (A11): every `poll`, a ranged read from the last cursor; named
//! keys are updated or dropped, a gap drops every cached key (each is re-read on next use).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use super::records::{FeedEntry, from_json};
use super::{Cached, bounded};
use crate::cache::{ApiKeyCache, Counters};
use crate::key::KeyHash;
use crate::store::{FeedCursor, KeyStore};

/// Where this instance is in the feed. The request path reads only atomics (no lock).
#[derive(Debug)]
pub(crate) struct FeedState {
    /// The origin of the two clocks below.
    base: Instant,
    /// When the feed was last read, successfully or not: nanoseconds since `base`, plus one
    /// (0: never).
    polled_at: AtomicU64,
    /// When the feed was last read successfully, the same way.
    ok_at: AtomicU64,
    /// One poll at a time; holds the cursor (`None` until the first read found the end).
    cursor: tokio::sync::Mutex<Option<FeedCursor>>,
    /// A background retry of a failed read is spawned or running (one at a time).
    retrying: pool_core::TaskFlag,
}

impl Default for FeedState {
    fn default() -> Self {
        Self {
            base: Instant::now(),
            polled_at: AtomicU64::new(0),
            ok_at: AtomicU64::new(0),
            cursor: tokio::sync::Mutex::new(None),
            retrying: pool_core::TaskFlag::default(),
        }
    }
}

impl FeedState {
    fn load(&self, clock: &AtomicU64) -> Option<Instant> {
        match clock.load(Ordering::Acquire) {
            0 => None,
            n => self.base.checked_add(Duration::from_nanos(n - 1)),
        }
    }

    fn store(&self, clock: &AtomicU64, at: Instant) {
        let nanos = at.saturating_duration_since(self.base).as_nanos();
        let nanos = u64::try_from(nanos).unwrap_or(u64::MAX - 1);
        clock.store(nanos + 1, Ordering::Release);
    }

    fn polled_at(&self) -> Option<Instant> {
        self.load(&self.polled_at)
    }

    /// When the feed was last read successfully (`None`: never).
    pub(crate) fn ok_at(&self) -> Option<Instant> {
        self.load(&self.ok_at)
    }

    /// Whether the latest feed read failed (or timed out).
    fn failing(&self) -> bool {
        self.polled_at.load(Ordering::Acquire) > self.ok_at.load(Ordering::Acquire)
    }

    /// Whether the feed was read successfully less than `within` ago.
    pub(crate) fn healthy(&self, now: Instant, within: Duration) -> bool {
        self.ok_at()
            .is_some_and(|at| now.saturating_duration_since(at) < within)
    }
}

impl<S: KeyStore> ApiKeyCache<S> {
    /// Whether the feed was last read `poll` ago or longer (or never).
    pub(crate) fn feed_due(&self, now: Instant) -> bool {
        let poll = self.inner.config.poll;
        self.keyed()
            .feed
            .polled_at()
            .is_none_or(|at| now.saturating_duration_since(at) >= poll)
    }

    /// The request path's feed read, when one is due. One request pays it: a request that
    /// finds a read in flight (another request's, the watcher's, a background retry) goes on
    /// with the view it has, at most one `poll` plus that read old. After a failed read the
    /// next ones run in the background, so a down or hung feed costs one request one
    /// `load_timeout`, once (A9); cached keys stay trusted for the TTL after the last good read.
    pub(crate) async fn poll_feed_if_due(&self, now: Instant) {
        let feed = &self.keyed().feed;
        if !self.feed_due(now) {
            return;
        }
        let Ok(mut cursor) = feed.cursor.try_lock() else {
            return; // a read is in flight
        };
        if !self.feed_due(now) {
            return; // another caller polled since
        }
        if feed.failing() {
            drop(cursor);
            self.poll_feed_in_background();
            return;
        }
        // Logged and counted inside; the cursor stays for the next poll.
        let _ = self.poll_feed_locked(&mut cursor).await;
    }

    /// After a failed read: retry in a task of its own, every `poll` until a read succeeds
    /// (this task's, a request's or the watcher's), so the feed is caught up within one `poll`
    /// of the store answering again even when no request comes due. One such task at a time;
    /// it holds the cache only while it reads (at most one `load_timeout`) and ends when the
    /// cache is dropped. Needs a tokio runtime; without one the next due request tries again.
    fn poll_feed_in_background(&self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let Some(running) = self.keyed().feed.retrying.start() else {
            return;
        };
        let weak = Arc::downgrade(&self.inner);
        let poll = self.inner.config.poll;
        runtime.spawn(async move {
            let _running = running;
            loop {
                let Some(inner) = weak.upgrade() else { return };
                let cache = ApiKeyCache { inner };
                let feed = &cache.keyed().feed;
                let mut caught_up = !feed.failing();
                if !caught_up && let Ok(mut cursor) = feed.cursor.try_lock() {
                    caught_up = cache.poll_feed_locked(&mut cursor).await.is_ok();
                }
                if caught_up {
                    return;
                }
                drop(cache);
                tokio::time::sleep(poll).await;
            }
        });
    }

    /// Tail the feed now (explicit refresh, watcher). Errors are logged and counted; the
    /// cursor stays, so nothing is skipped when the store answers again.
    pub(crate) async fn poll_feed_now(&self) -> Result<(), Arc<crate::StoreError>> {
        let mut cursor = self.keyed().feed.cursor.lock().await;
        self.poll_feed_locked(&mut cursor).await
    }

    async fn poll_feed_locked(
        &self,
        cursor: &mut Option<FeedCursor>,
    ) -> Result<(), Arc<crate::StoreError>> {
        let inner = &*self.inner;
        let state = self.keyed();
        Counters::bump(&inner.counters.feed_polls);
        let started = Instant::now();
        let read = bounded(
            &inner.counters,
            inner.config.load_timeout,
            inner.store.read_feed(cursor.as_ref()),
        )
        .await;
        let polled = Instant::now();
        inner.telemetry.store_read(
            crate::telemetry::Read::Feed,
            polled.saturating_duration_since(started),
            read.is_ok(),
        );
        inner.telemetry.snapshot_age(if read.is_ok() {
            Some(std::time::Duration::ZERO)
        } else {
            state
                .feed
                .ok_at()
                .map(|at| polled.saturating_duration_since(at))
        });
        state.feed.store(&state.feed.polled_at, polled);
        let batch = match read {
            Ok(batch) => batch,
            Err(error) => {
                Counters::bump(&inner.counters.reload_failures);
                self.sweep_idle(polled);
                let text = crate::cache::chain(&error);
                tracing::warn!(store = %inner.store.describe(), error = %text, "API key change feed read failed; cached keys are revalidated after the TTL");
                return Err(Arc::new(error));
            }
        };
        let mut gap = batch.gap && cursor.is_some();
        if cursor.is_none() {
            // The first successful read only finds the feed's end: anything cached before it
            // (while the feed could not be read) may predate a change the feed carried.
            state.invalidations.fetch_add(1, Ordering::SeqCst);
            state.keys.clear();
        }
        for line in &batch.entries {
            Counters::bump(&inner.counters.feed_entries);
            match from_json::<FeedEntry>(line) {
                Ok(FeedEntry::Revoke { sha256 }) => match KeyHash::from_hex(&sha256) {
                    Some(hash) => self.feed_revoke(hash),
                    None => gap = true,
                },
                Ok(FeedEntry::Issue { sha256 }) => match KeyHash::from_hex(&sha256) {
                    Some(hash) => {
                        state.invalidations.fetch_add(1, Ordering::SeqCst);
                        inner.negative().remove(&hash);
                    }
                    None => gap = true,
                },
                Ok(FeedEntry::Account { .. }) => {}
                // An entry this version cannot read: revalidate rather than guess.
                Err(_) => gap = true,
            }
        }
        if gap {
            Counters::bump(&inner.counters.feed_gaps);
            inner.telemetry.feed_gap();
            tracing::info!(store = %inner.store.describe(), "gap in the API key change feed; revalidating every cached key");
            state.invalidations.fetch_add(1, Ordering::SeqCst);
            state.keys.clear();
            inner.negative().clear();
        }
        inner.telemetry.feed_entries(batch.entries.len() as u64);
        *cursor = Some(batch.next);
        state.feed.store(&state.feed.ok_at, polled);
        self.sweep_idle(polled);
        Ok(())
    }

    /// The idle sweep (A12), counted.
    fn sweep_idle(&self, now: Instant) {
        let inner = &*self.inner;
        let freed = self.keyed().sweep_idle(now, inner.config.key_idle);
        if freed > 0 {
            inner
                .counters
                .idle_evictions
                .fetch_add(freed, Ordering::Relaxed);
            inner.telemetry.idle_evictions(freed);
        }
    }

    /// A revocation from the feed: a cached entry becomes revoked at once (no read needed);
    /// an uncached key is simply read on its next use.
    fn feed_revoke(&self, hash: KeyHash) {
        let state = self.keyed();
        state.invalidations.fetch_add(1, Ordering::SeqCst);
        if let Some(entry) = state.keys.get(&hash) {
            state.keys.insert(
                hash,
                Arc::new(Cached::new(
                    entry.identity.clone(),
                    true,
                    &hash,
                    Instant::now(),
                    self.inner.config.revalidate,
                )),
            );
        }
    }
}
