//! The keyed layout's engine (A10–A12): point reads into a bounded cache of verified keys,
//! conditional O(1) writes, and a change feed tailed every `poll`.

mod feed;
mod records;
mod write;

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use pool_core::SingleFlight;
use tokio::time::Instant;

pub(crate) use self::feed::FeedState;
pub(crate) use self::records::{
    FeedEntry, IdEntry, KeyEntry, RECORD_FORMAT, account_name, from_json, id_name, key_name,
    to_json,
};
use crate::cache::{ApiKeyCache, Counters};
use crate::config::CacheConfig;
use crate::error::{AuthError, StoreError};
use crate::key::{AccountId, Identity, KeyHash, KeyId, PrefixHasher, has_valid_checksum};
use crate::store::KeyStore;

/// A verified key as cached: who it is, whether it is revoked, when the store confirmed it
/// and until when the change feed alone keeps it fresh.
#[derive(Debug)]
pub(crate) struct Cached {
    pub(crate) identity: Identity,
    pub(crate) revoked: bool,
    pub(crate) checked_at: Instant,
    /// `checked_at` + the safety revalidation, less up to a quarter of it picked by the key's
    /// hash: revalidations of keys cached together spread out instead of coming due at once.
    pub(crate) trust_until: Instant,
    /// Milliseconds from `checked_at` to the key's latest use, on the runtime's clock, so
    /// `key_idle` follows tokio time (paused tests included) like every other expiry of the
    /// crate. The idle sweep on the feed poll reads it to free idle entries.
    last_use_ms: AtomicU64,
    /// Revalidations of this entry that failed in a row (the store failed or timed out). While
    /// non-zero, requests are answered from this entry at once and the retry runs in the
    /// background: a down or hung store costs a known key one `load_timeout`, once.
    failures: AtomicU32,
    /// Milliseconds from `checked_at` before which no retry starts (exponential back-off from
    /// `retry_backoff`, at most the TTL), so a down store is not hammered.
    retry_at_ms: AtomicU64,
}

/// Whole milliseconds of `d` in u64 arithmetic (no u128 `as_millis` on the request path).
fn millis(d: Duration) -> u64 {
    d.as_secs()
        .saturating_mul(1000)
        .saturating_add(u64::from(d.subsec_millis()))
}

impl Cached {
    /// Whether the latest revalidation of this entry failed.
    fn revalidation_failed(&self) -> bool {
        self.failures.load(Ordering::Relaxed) > 0
    }

    /// Claim the next background retry if its back-off has passed at `age` (after
    /// `checked_at`): one caller wins, and the claim itself pushes the next retry past
    /// `hold` (the retry's own bound), so a retry that never reports does not stop retries.
    fn claim_retry(&self, age: Duration, hold: Duration) -> bool {
        let now = millis(age);
        let at = self.retry_at_ms.load(Ordering::Relaxed);
        at <= now
            && self
                .retry_at_ms
                .compare_exchange(
                    at,
                    now.saturating_add(millis(hold)),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
    }

    /// Record a failed revalidation at `age`: the next retry waits `backoff` doubled per
    /// failure in a row, at most `cap`.
    fn note_failure(&self, age: Duration, backoff: Duration, cap: Duration) {
        let failed = self.failures.fetch_add(1, Ordering::Relaxed).min(20);
        let wait = backoff.saturating_mul(1 << failed).min(cap.max(backoff));
        self.retry_at_ms
            .store(millis(age).saturating_add(millis(wait)), Ordering::Relaxed);
    }

    /// Whether the key went unused for longer than `idle` before this use, `age` after it was
    /// confirmed; records this use otherwise (one store per millisecond at most).
    fn idle_past(&self, age: Duration, idle: Duration) -> bool {
        let now_ms = millis(age);
        let last = self.last_use_ms.load(Ordering::Relaxed);
        if Duration::from_millis(now_ms.saturating_sub(last)) > idle {
            return true;
        }
        if last < now_ms {
            self.last_use_ms.store(now_ms, Ordering::Relaxed);
        }
        false
    }

    /// Whether the key's latest use (or its confirmation, if unused since) is more than
    /// `idle` before `now` (the idle sweep; records nothing).
    fn idle_at(&self, now: Instant, idle: Duration) -> bool {
        let last = Duration::from_millis(self.last_use_ms.load(Ordering::Relaxed));
        let age = now.saturating_duration_since(self.checked_at);
        age.saturating_sub(last) > idle
    }

    pub(crate) fn new(
        identity: Identity,
        revoked: bool,
        hash: &KeyHash,
        checked_at: Instant,
        revalidate: Duration,
    ) -> Self {
        let spread = revalidate / 4;
        let back = spread.mul_f64((hash.bucket() % 1024) as f64 / 1024.0);
        let trust_until = checked_at
            .checked_add(revalidate - back)
            .unwrap_or(checked_at);
        Self {
            identity,
            revoked,
            checked_at,
            trust_until,
            last_use_ms: AtomicU64::new(0),
            failures: AtomicU32::new(0),
            retry_at_ms: AtomicU64::new(0),
        }
    }
}

/// What one point read found.
#[derive(Debug, Clone)]
enum Found {
    Key(Arc<Cached>),
    /// No such record; `cacheable` is false when the feed changed something while the read
    /// ran (the 404 may predate an `issue` entry already applied: not negatively cached).
    Missing {
        cacheable: bool,
    },
}

type PointRead = Result<Found, Arc<StoreError>>;

/// The bounded cache of verified keys (A12): quick_cache's lock-sharded CLOCK-Pro. A hit is
/// one shard read lock, one probe of a SwissTable and an `Arc` clone: no allocation, no
/// housekeeping queue (moka's `get` records every read for its policy and cost ~9× this).
pub(crate) type KeyCache =
    quick_cache::sync::Cache<KeyHash, Arc<Cached>, quick_cache::UnitWeighter, PrefixHasher>;

/// Most lock shards of the key cache: enough that two to a few dozen cores rarely meet on one.
const KEY_SHARDS: u64 = 16;
/// Fewest entries per shard (below it, fewer shards: the bound is split evenly).
const MIN_PER_SHARD: u64 = 32;

/// A cache holding at most `capacity` keys. quick_cache splits the bound evenly over its
/// shards (each evicts on its own); the shard count divides the bound, so the total never
/// exceeds `capacity` (it is rounded down to a multiple of the shard count, at most 15 less).
pub(crate) fn key_cache(capacity: u64) -> KeyCache {
    let capacity = capacity.max(1);
    let mut shards = KEY_SHARDS;
    while shards > 1 && capacity / shards < MIN_PER_SHARD {
        shards /= 2;
    }
    let bound = capacity - capacity % shards;
    let options = quick_cache::OptionsBuilder::new()
        .shards(shards as usize)
        // Only sizes the "ghost" history of recently evicted hashes (half of it); the tables
        // themselves start empty and grow with the keys actually cached.
        .estimated_items_capacity(usize::try_from(bound).unwrap_or(usize::MAX))
        .weight_capacity(bound)
        .build();
    match options {
        Ok(options) => KeyCache::with_options(
            options,
            quick_cache::UnitWeighter,
            PrefixHasher::default(),
            quick_cache::sync::DefaultLifecycle::default(),
        ),
        // Unreachable: both required options are set above.
        Err(_) => KeyCache::with(
            1024,
            bound,
            quick_cache::UnitWeighter,
            PrefixHasher::default(),
            quick_cache::sync::DefaultLifecycle::default(),
        ),
    }
}

/// The keyed engine's state inside one cache.
pub(crate) struct KeyedState {
    /// Verified keys, bounded by `key_capacity`; entries idle for `key_idle` are answered as
    /// absent at once and freed by the next idle sweep (A12).
    pub(crate) keys: KeyCache,
    /// When the idle sweep last ran (`None`: never).
    swept_at: Mutex<Option<Instant>>,
    reads: SingleFlight<KeyHash, PointRead>,
    /// Bumped whenever the feed invalidates something: a point read that overlapped it is
    /// answered but not cached (it may predate the change).
    pub(crate) invalidations: AtomicU64,
    /// Point-read limiter (GCRA): theoretical arrival time of the next read.
    tat: Mutex<Option<Instant>>,
    pub(crate) feed: FeedState,
    /// Point reads of uncached keys in flight, at most `point_reads_per_second` (A5).
    in_flight: tokio::sync::Semaphore,
}

impl std::fmt::Debug for KeyedState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyedState")
            .field("cached_keys", &self.keys.len())
            .field("feed", &self.feed)
            .finish_non_exhaustive()
    }
}

impl KeyedState {
    pub(crate) fn new(config: &CacheConfig) -> Self {
        Self {
            keys: key_cache(config.key_capacity),
            swept_at: Mutex::new(None),
            reads: SingleFlight::new(),
            invalidations: AtomicU64::new(0),
            tat: Mutex::new(None),
            feed: FeedState::default(),
            in_flight: tokio::sync::Semaphore::new(config.point_reads_per_second as usize),
        }
    }

    /// Whether the miss budget (a bucket of `rate` refilled at `rate` per second) has a
    /// token left. Only reads that find nothing spend one ([`Self::charge_miss`]): a cold
    /// instance reading thousands of real keys is never limited, a flood of well-formed
    /// unknown keys is held to `rate` point reads per second (A5).
    fn miss_budget_left(&self, now: Instant, rate: u32) -> bool {
        let (interval, allowance) = Self::bucket(rate);
        let tat = self.tat.lock().unwrap_or_else(PoisonError::into_inner);
        let at = tat.unwrap_or(now).max(now);
        at.saturating_duration_since(now) <= allowance && at.checked_add(interval).is_some()
    }

    /// Spend one token of the miss budget (a point read found no such key).
    fn charge_miss(&self, now: Instant, rate: u32) {
        let (interval, _) = Self::bucket(rate);
        let mut tat = self.tat.lock().unwrap_or_else(PoisonError::into_inner);
        let at = tat.unwrap_or(now).max(now);
        if let Some(next) = at.checked_add(interval) {
            *tat = Some(next);
        }
    }

    /// Free the entries idle for longer than `idle` (memory follows the active keys, A12), at
    /// most once per `idle / 4`; called on each feed poll. Returns how many were freed. A hit
    /// never sees such an entry as fresh anyway ([`Cached::idle_past`]): the sweep only frees.
    pub(crate) fn sweep_idle(&self, now: Instant, idle: Duration) -> u64 {
        {
            let mut swept = self.swept_at.lock().unwrap_or_else(PoisonError::into_inner);
            match *swept {
                Some(at) if now.saturating_duration_since(at) < idle / 4 => return 0,
                _ => *swept = Some(now),
            }
        }
        let freed = std::cell::Cell::new(0u64);
        self.keys.retain(|_, entry| {
            let keep = !entry.idle_at(now, idle);
            freed.set(freed.get() + u64::from(!keep));
            keep
        });
        freed.get()
    }

    fn bucket(rate: u32) -> (Duration, Duration) {
        let interval = Duration::from_secs(1) / rate.max(1);
        (interval, interval.saturating_mul(rate.saturating_sub(1)))
    }
}

/// A store call bounded by `timeout` (A9).
pub(crate) async fn bounded<T>(
    counters: &Counters,
    timeout: Duration,
    call: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    tokio::time::timeout(timeout, call)
        .await
        .unwrap_or_else(|_| {
            Counters::bump(&counters.store_timeouts);
            Err(StoreError::TimedOut { after: timeout })
        })
}

impl<S: KeyStore> ApiKeyCache<S> {
    pub(crate) fn keyed(&self) -> &KeyedState {
        self.inner
            .keyed
            .as_ref()
            .expect("called only for a keyed store")
    }

    /// `authenticate` for the keyed layout past the hit path: checksum → feed tail if due →
    /// bounded cache → negative cache → one point read (single-flight per hash, rate-limited) → cache the answer.
    ///
    /// One `load_timeout` bounds the request's waits on the store (A9): an uncached key's point
    /// read runs beside a due feed read (the feed can tell it nothing its own read does not),
    /// and a cached key's revalidation, or any read before the feed's first, gets what is left
    /// after the feed read.
    pub(crate) async fn authenticate_keyed(
        &self,
        presented: &str,
        hash: KeyHash,
    ) -> Result<Identity, AuthError> {
        let inner = &*self.inner;
        let state = self.keyed();
        let now = Instant::now();
        if !inner.config.legacy_keys && !has_valid_checksum(presented) {
            // A12: junk and typos never reach the store, not even for a due feed read (the
            // checksum is offline). A key the hit path found cached was checked on its way in.
            Counters::bump(&inner.counters.rejected_malformed);
            return Err(AuthError::Malformed);
        }
        let deadline = now + inner.config.load_timeout;
        // Until the feed was read once, its first read goes first: it finds the feed's end and
        // drops what was cached before, so a point read beside it could not be cached.
        if state.keys.get(&hash).is_none() && state.feed.ok_at().is_some() {
            let (_, answer) = tokio::join!(
                self.poll_feed_if_due(now),
                self.read_key(hash, None, deadline)
            );
            return answer;
        }
        self.poll_feed_if_due(now).await;
        let cached = state.keys.get(&hash);
        if let Some(entry) = &cached
            && self.fresh(entry, now)
        {
            return self.keyed_answer(entry);
        }
        if let Some(entry) = &cached
            && entry.revalidation_failed()
        {
            // Its last revalidation failed: answered from the cache at once, the retry runs in
            // the background after its back-off (A9: a down or hung store costs a known key
            // one `load_timeout`, once, and is not re-read on every request).
            Counters::bump(&inner.counters.stale_served);
            self.revalidate_in_background(hash, entry, now);
            return self.keyed_answer(entry);
        }
        self.read_key(hash, cached, deadline).await
    }

    /// The point read of a key that is not cached (`cached` is `None`: negative cache, miss
    /// budget, a permit for reads in flight) or is due for revalidation, all by `deadline`.
    async fn read_key(
        &self,
        hash: KeyHash,
        cached: Option<Arc<Cached>>,
        deadline: Instant,
    ) -> Result<Identity, AuthError> {
        let inner = &*self.inner;
        let state = self.keyed();
        let now = Instant::now();
        let timed_out = || {
            Counters::bump(&inner.counters.store_timeouts);
            Arc::new(StoreError::TimedOut {
                after: inner.config.load_timeout,
            })
        };
        let mut _permit = None;
        if cached.is_none() {
            if inner.negative().contains(&hash, now) {
                Counters::bump(&inner.counters.negative_hits);
                Counters::bump(&inner.counters.rejected_unknown);
                return Err(AuthError::Unknown);
            }
            if !state.miss_budget_left(now, inner.config.point_reads_per_second) {
                Counters::bump(&inner.counters.miss_reloads_limited);
                Counters::bump(&inner.counters.rejected_unknown);
                return Err(AuthError::Unknown);
            }
            // Reads of uncached keys in flight are bounded by the budget too (A5): a burst of
            // distinct unknown keys waits here instead of all passing the check before any
            // read has found nothing; a waiter re-checks the budget the finished reads spent.
            // Real keys wait at most for reads in flight, never get a false Unknown.
            let acquire = state.in_flight.acquire();
            match tokio::time::timeout_at(deadline, acquire).await {
                Ok(Ok(permit)) => _permit = Some(permit),
                _ => {
                    return Err(AuthError::Unavailable {
                        source: timed_out(),
                    });
                }
            }
            let now = Instant::now();
            if inner.negative().contains(&hash, now) {
                Counters::bump(&inner.counters.negative_hits);
                Counters::bump(&inner.counters.rejected_unknown);
                return Err(AuthError::Unknown);
            }
            if !state.miss_budget_left(now, inner.config.point_reads_per_second) {
                Counters::bump(&inner.counters.miss_reloads_limited);
                Counters::bump(&inner.counters.rejected_unknown);
                return Err(AuthError::Unknown);
            }
            Counters::bump(&inner.counters.miss_reloads);
        }
        // The read itself is bounded by `load_timeout` too; the deadline also bounds a wait
        // for another caller's read of the same key.
        let read = tokio::time::timeout_at(deadline, state.reads.run(hash, self.point_read(hash)))
            .await
            .unwrap_or_else(|_| Err(timed_out()));
        match read {
            Ok(Found::Key(entry)) => self.keyed_answer(&entry),
            Ok(Found::Missing { cacheable }) => {
                let now = Instant::now();
                state.charge_miss(now, inner.config.point_reads_per_second);
                if cacheable {
                    inner.negative().insert(hash, now);
                }
                Counters::bump(&inner.counters.rejected_unknown);
                Err(AuthError::Unknown)
            }
            Err(source) => match cached {
                // The store failed: a key this instance verified before is answered from it,
                // and its next revalidations run in the background, backing off.
                Some(entry) => {
                    Counters::bump(&inner.counters.stale_served);
                    let age = Instant::now().saturating_duration_since(entry.checked_at);
                    entry.note_failure(age, inner.config.retry_backoff, inner.config.ttl);
                    self.keyed_answer(&entry)
                }
                None => Err(AuthError::Unavailable { source }),
            },
        }
    }

    /// Re-read a cached key whose last revalidation failed, in the background, if its back-off
    /// has passed and no other request claimed the retry (needs a tokio runtime; without one
    /// a later request tries again). The task holds the cache for at most one `load_timeout`.
    fn revalidate_in_background(&self, hash: KeyHash, entry: &Arc<Cached>, now: Instant) {
        let config = &self.inner.config;
        let age = now.saturating_duration_since(entry.checked_at);
        if !entry.claim_retry(age, config.load_timeout) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let cache = self.clone();
        let entry = entry.clone();
        runtime.spawn(async move {
            let read = cache.keyed().reads.run(hash, cache.point_read(hash)).await;
            if read.is_err() {
                // Still failing: the entry stays and backs off further. On success the read
                // cached a fresh entry in its place (or dropped it: no such key any more).
                let config = &cache.inner.config;
                let age = Instant::now().saturating_duration_since(entry.checked_at);
                entry.note_failure(age, config.retry_backoff, config.ttl);
            }
        });
    }

    /// Whether a cached entry may answer without a store read: younger than the TTL, or,
    /// while the feed has been read successfully within the TTL (so every change announced
    /// since the entry was read has been applied to it), younger than its safety
    /// revalidation.
    fn fresh(&self, entry: &Cached, now: Instant) -> bool {
        let ttl = self.inner.config.ttl;
        let age = now.saturating_duration_since(entry.checked_at);
        if entry.idle_past(age, self.inner.config.key_idle) {
            // Unused for `key_idle`: as if dropped, the next use reads the store again (A12).
            return false;
        }
        age < ttl || (now < entry.trust_until && self.keyed().feed.healthy(now, ttl))
    }

    /// The keyed hit path: the feed is not due and the key is cached and fresh.
    pub(crate) fn keyed_hit(
        &self,
        hash: &KeyHash,
        now: Instant,
    ) -> Option<Result<Identity, AuthError>> {
        if self.feed_due(now) {
            return None;
        }
        let entry = self.keyed().keys.get(hash)?;
        self.fresh(&entry, now).then(|| self.keyed_answer(&entry))
    }

    fn keyed_answer(&self, entry: &Cached) -> Result<Identity, AuthError> {
        let counters = &self.inner.counters;
        if entry.revoked {
            Counters::bump(&counters.rejected_revoked);
            Err(AuthError::Revoked)
        } else {
            Counters::bump(&counters.hits);
            Ok(entry.identity.clone())
        }
    }

    /// One point read of `keys/<hash>`; the answer is cached unless the feed invalidated
    /// something while it ran.
    async fn point_read(&self, hash: KeyHash) -> PointRead {
        let inner = &*self.inner;
        let state = self.keyed();
        let before = state.invalidations.load(Ordering::SeqCst);
        Counters::bump(&inner.counters.point_reads);
        let started = Instant::now();
        let read = bounded(
            &inner.counters,
            inner.config.load_timeout,
            inner.store.get_record(&key_name(&hash)),
        )
        .await;
        inner.telemetry.store_read(
            crate::telemetry::Read::Point,
            started.elapsed(),
            read.is_ok(),
        );
        let record = match read {
            Ok(record) => record,
            Err(error) => {
                Counters::bump(&inner.counters.reload_failures);
                tracing::warn!(store = %inner.store.describe(), error = %crate::cache::chain(&error), "API key point read failed");
                return Err(Arc::new(error));
            }
        };
        let Some(record) = record else {
            state.keys.remove(&hash);
            let cacheable = state.invalidations.load(Ordering::SeqCst) == before;
            return Ok(Found::Missing { cacheable });
        };
        let entry: KeyEntry = match records::from_json(&record.bytes) {
            Ok(entry) => entry,
            Err(error) => {
                Counters::bump(&inner.counters.corrupt_records);
                tracing::warn!(store = %inner.store.describe(), "skipping a malformed key record");
                return Err(Arc::new(error));
            }
        };
        let cached = Arc::new(Cached::new(
            Identity {
                account: AccountId::new(entry.account),
                key: KeyId::new(entry.key_id),
            },
            entry.revoked_unix.is_some(),
            &hash,
            Instant::now(),
            inner.config.revalidate,
        ));
        if state.invalidations.load(Ordering::SeqCst) == before {
            state.keys.insert(hash, cached.clone());
        }
        Ok(Found::Key(cached))
    }
}
