//! `KeyedPool`: get-or-create by key with deadlines, idle pruning, capacity and single-flight.

mod handle;
mod index;
mod shards;

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::hash::Hash;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, TryLockError, Weak};
use std::time::Duration;

use tokio::time::Instant;

use handle::OneShot;
pub use handle::{Created, Pooled};
use index::Index;
use shards::{Shards, TryDrain};

use crate::retire::{RetireQueue, retire_all};
use crate::stats::{Counters, EvictionCause, PoolStats};
use crate::{PoolConfig, Retire, RetireReport, SingleFlight};

/// One pooled value and its bookkeeping.
///
/// `repr(C)` with what a hit reads and writes first: right after the `Arc`'s counts, on the
/// cache line a hit touches anyway, so a hit costs one cache miss on a cold entry, not two.
#[repr(C)]
pub(crate) struct Slot<V> {
    pub(crate) deadline: Option<Instant>,
    /// Milliseconds since the pool's epoch.
    last_used: AtomicU64,
    pub(crate) id: u64,
    /// `last_used` as the capacity index last ranked it (written under the index lock only).
    indexed_use: AtomicU64,
    pub(crate) created: Instant,
    pub(crate) value: V,
}

impl<V> Slot<V> {
    fn is_expired(&self, now: Instant) -> bool {
        self.deadline.is_some_and(|deadline| deadline <= now)
    }

    pub(crate) fn last_used_ms(&self) -> u64 {
        self.last_used.load(Ordering::Relaxed)
    }

    /// Record a use. Stores only when the millisecond changed, so hits on many threads do not
    /// keep writing the same cache line.
    fn touch(&self, now_ms: u64) {
        if self.last_used.load(Ordering::Relaxed) < now_ms {
            self.last_used.store(now_ms, Ordering::Relaxed);
        }
    }

    fn new(value: V, id: u64, created: Instant, deadline: Option<Instant>, now_ms: u64) -> Self {
        Self {
            deadline,
            last_used: AtomicU64::new(now_ms),
            id,
            indexed_use: AtomicU64::new(now_ms),
            created,
            value,
        }
    }
}

/// Errors from [`KeyedPool::get_or_create`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PoolError<E> {
    /// The factory failed. Every caller that waited on the same creation gets the same error.
    #[error("creating the pooled value failed")]
    Create(#[source] Arc<E>),
    /// The pool was shut down with [`KeyedPool::shutdown`].
    #[error("the pool is shut down")]
    ShutDown,
}

impl<E> Clone for PoolError<E> {
    fn clone(&self) -> Self {
        match self {
            Self::Create(error) => Self::Create(error.clone()),
            Self::ShutDown => Self::ShutDown,
        }
    }
}

/// What [`KeyedPool::shutdown`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ShutdownReport {
    /// The retire results of every drained entry.
    pub retire: RetireReport,
    /// Shards skipped because their lock stayed contended; their entries are dropped with the
    /// pool instead of being retired.
    pub skipped_shards: usize,
}

/// The shared outcome of one creation, handed to every caller that waited on it.
enum Flight<V> {
    Pooled(Arc<Slot<V>>),
    /// The value could not be pooled; it went to the leader, followers build their own.
    OneShot,
    /// The factory's error, as `Arc<E>` behind `Any` (the error type is per call, not per pool).
    Failed(Arc<dyn Any + Send + Sync>),
}

impl<V> Clone for Flight<V> {
    fn clone(&self) -> Self {
        match self {
            Self::Pooled(slot) => Self::Pooled(slot.clone()),
            Self::OneShot => Self::OneShot,
            Self::Failed(error) => Self::Failed(error.clone()),
        }
    }
}

/// Either a slot in the pool or a value only the caller may use.
enum Installed<V> {
    Pooled(Arc<Slot<V>>),
    OneShot(V),
}

struct Inner<K, V> {
    map: Shards<K, V>,
    /// Capacity order beside the shards. Lock order: index, then a shard; hits take neither.
    index: Mutex<Index<K, V>>,
    flights: SingleFlight<K, Flight<V>>,
    counters: Arc<Counters>,
    /// Background retire of victims evicted on callers' paths.
    retired: Arc<RetireQueue<V>>,
    config: PoolConfig,
    epoch: Instant,
    next_id: AtomicU64,
    closed: AtomicBool,
    sweeper_started: crate::TaskFlag,
    /// Thrashing warnings logged (tests check the once-a-minute limit).
    warnings: AtomicU64,
}

/// A keyed pool of expensive values (P1–P7, P9).
///
/// Cloning a `KeyedPool` is cheap and shares the pool. See the [crate docs](crate) for an
/// example.
///
/// - [`get`](Self::get): the hit path. One hash, one shard read lock, no `.await`; expired
///   entries are never returned.
/// - [`get_or_create`](Self::get_or_create): on a miss, one factory call per key however many
///   callers miss at once; misses for other keys proceed in parallel.
/// - Values leave the pool through expiry, [`prune_idle`](Self::prune_idle), capacity
///   eviction, [`evict_where`](Self::evict_where), [`invalidate`](Self::invalidate),
///   [`reset`](Self::reset) and [`shutdown`](Self::shutdown); each is retired after every lock is
///   released.
pub struct KeyedPool<K, V> {
    inner: Arc<Inner<K, V>>,
}

impl<K, V> Clone for KeyedPool<K, V> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<K, V> fmt::Debug for KeyedPool<K, V>
where
    K: Hash + Eq,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedPool")
            .field("entries", &self.inner.map.len())
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl<K, V> KeyedPool<K, V>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Retire,
{
    /// An empty pool.
    pub fn new(config: PoolConfig) -> Self {
        let counters = Arc::new(Counters::new(config.name.clone()));
        Self {
            inner: Arc::new(Inner {
                map: Shards::new(),
                index: Mutex::new(Index::new()),
                flights: SingleFlight::new(),
                retired: Arc::new(RetireQueue::new(config.retire_timeout, counters.clone())),
                counters,
                config,
                epoch: Instant::now(),
                next_id: AtomicU64::new(1),
                closed: AtomicBool::new(false),
                sweeper_started: crate::TaskFlag::default(),
                warnings: AtomicU64::new(0),
            }),
        }
    }

    /// The pool's configuration.
    pub fn config(&self) -> &PoolConfig {
        &self.inner.config
    }

    /// The cached value for `key`, if there is one that has not expired (P1, P2). Updates the
    /// entry's last-used time. An expired entry found here is evicted and retired in the
    /// background.
    pub fn get(&self, key: &K) -> Option<Pooled<V>> {
        let inner = &*self.inner;
        let hash = inner.map.hash(key);
        let now = Instant::now();
        let found = inner.map.with_slot(hash, key, |slot| {
            if slot.is_expired(now) {
                Err(slot.id)
            } else {
                slot.touch(inner.millis(now));
                Ok(slot.clone())
            }
        })?;
        match found {
            Ok(slot) => {
                inner.counters.hits.add(1);
                Some(Pooled {
                    slot,
                    one_shot: None,
                })
            }
            Err(id) => {
                if let Some(victim) = inner.remove(hash, key, id) {
                    inner.evicted(EvictionCause::Expired, vec![victim]);
                }
                None
            }
        }
    }

    /// The cached value for `key`, or a new one from `factory` (P1, P2, P6).
    ///
    /// Concurrent misses for the same key await a single factory call and share its value or
    /// error; if that call is cancelled, a waiter runs its own factory. The factory reports the
    /// value's own deadline through [`Created::until`]; a deadline that has already passed, or
    /// [`Created::one_shot`], hands the caller a one-shot value retired when dropped, and leaves
    /// the pool unchanged.
    pub async fn get_or_create<F, Fut, E>(
        &self,
        key: &K,
        factory: F,
    ) -> Result<Pooled<V>, PoolError<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Created<V>, E>>,
        E: std::error::Error + Send + Sync + 'static,
    {
        self.ensure_sweeper();
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(PoolError::ShutDown);
        }
        if let Some(hit) = self.get(key) {
            return Ok(hit);
        }
        let inner = &*self.inner;
        inner.counters.misses.add(1);
        inner.counters.hits.publish();

        let mut factory = Some(factory);
        let mut mine: Option<V> = None;
        let mut led = false;
        let mut found = false;
        let flight = inner
            .flights
            .run(key.clone(), async {
                led = true;
                // Another creation may have finished between our lookup and joining the flight.
                if let Some(slot) = self.live_slot(key) {
                    found = true;
                    return Flight::Pooled(slot);
                }
                let Some(factory) = factory.take() else {
                    return Flight::OneShot;
                };
                match self.create(key, factory).await {
                    Ok(Installed::Pooled(slot)) => Flight::Pooled(slot),
                    Ok(Installed::OneShot(value)) => {
                        mine = Some(value);
                        Flight::OneShot
                    }
                    Err(error) => Flight::Failed(Arc::new(error)),
                }
            })
            .await;
        // Served by another caller's creation: as a follower, or found by the re-check.
        if !led || found {
            inner.counters.coalesced.add(1);
        }

        match flight {
            Flight::Pooled(slot) => {
                slot.touch(inner.millis(Instant::now()));
                Ok(Pooled {
                    slot,
                    one_shot: None,
                })
            }
            Flight::Failed(error) => match error.downcast::<E>() {
                Ok(error) => Err(PoolError::Create(error)),
                // The leader's factory had another error type: build our own value.
                Err(_) => self.create_own(key, factory).await,
            },
            Flight::OneShot => match mine.take() {
                Some(value) => Ok(self.one_shot(value)),
                // Someone else's one-shot value: each caller gets its own.
                None => self.create_own(key, factory).await,
            },
        }
    }

    /// Retire entries unused for longer than `idle_ttl`, and expired ones (P3). Returns what was
    /// retired; the retires run after the locks are released.
    pub async fn prune_idle(&self, idle_ttl: Duration) -> RetireReport {
        self.inner.prune(Some(idle_ttl)).await
    }

    /// Retire expired entries.
    pub async fn prune_expired(&self) -> RetireReport {
        self.inner.prune(None).await
    }

    /// Retire every entry for which `pred` holds, counted under `cause` (for example
    /// [`EvictionCause::OwnerGone`] when what the entry was built for is gone). `pred` runs
    /// under shard read locks: keep it cheap and do not call back into the pool.
    pub async fn evict_where(
        &self,
        cause: EvictionCause,
        mut pred: impl FnMut(&K, &V) -> bool,
    ) -> RetireReport {
        let inner = &*self.inner;
        let selected = inner.map.select(|key, slot| pred(key, &slot.value));
        let victims: Vec<_> = selected
            .into_iter()
            .filter_map(|(key, hash, id)| inner.remove(hash, &key, id))
            .collect();
        inner.retire_now(cause, victims).await
    }

    /// Remove and retire the entry for `key`, if any. Returns whether there was one.
    pub async fn invalidate(&self, key: &K) -> bool {
        let inner = &*self.inner;
        let hash = inner.map.hash(key);
        let Some(id) = inner.map.with_slot(hash, key, |slot| slot.id) else {
            return false;
        };
        let Some(victim) = inner.remove(hash, key, id) else {
            return false;
        };
        inner
            .retire_now(EvictionCause::Invalidated, vec![victim])
            .await;
        true
    }

    /// Retire everything (P7). Each retire is isolated: one failure or panic does not stop the
    /// others. The pool stays usable.
    pub async fn reset(&self) -> RetireReport {
        let inner = &*self.inner;
        let victims = {
            let mut index = inner.lock_index();
            let victims = inner.map.drain_where(|_| true);
            index.clear();
            victims
        };
        inner.retire_now(EvictionCause::Reset, victims).await
    }

    /// Close the pool and retire what it holds without ever blocking on a contended lock (P7):
    /// a shard whose lock stays busy after a few yields is skipped and reported. Later
    /// [`get_or_create`](Self::get_or_create) calls fail with [`PoolError::ShutDown`] and the
    /// sweeper stops.
    pub async fn shutdown(&self) -> ShutdownReport {
        const ATTEMPTS: usize = 32;
        let inner = &*self.inner;
        inner.closed.store(true, Ordering::Release);
        let mut victims = Vec::new();
        let mut skipped_shards = 0;
        for index in 0..inner.map.shard_count() {
            let mut drained = false;
            for _ in 0..ATTEMPTS {
                if let Some(mut order) = inner.try_lock_index()
                    && let TryDrain::Drained(slots) = inner.map.try_drain(index)
                {
                    for slot in &slots {
                        order.remove(slot);
                    }
                    victims.extend(slots);
                    drained = true;
                    break;
                }
                tokio::task::yield_now().await;
            }
            if !drained {
                skipped_shards += 1;
                tracing::warn!(shard = index, "shutdown skipped a contended pool shard");
            }
        }
        let retire = inner.retire_now(EvictionCause::Reset, victims).await;
        ShutdownReport {
            retire,
            skipped_shards,
        }
    }

    /// A snapshot of the counters (P9).
    pub fn stats(&self) -> PoolStats {
        self.inner.counters.snapshot(self.inner.map.len())
    }

    /// Entries in the pool now.
    pub fn len(&self) -> usize {
        self.inner.map.len()
    }

    /// Whether the pool holds no entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether a shard lock is held at this instant. For tests of the "retire outside locks"
    /// rule (P5): call it from inside a [`Retire::retire`] implementation.
    pub fn is_locked(&self) -> bool {
        self.inner.map.any_locked() || self.inner.try_lock_index().is_none()
    }

    fn live_slot(&self, key: &K) -> Option<Arc<Slot<V>>> {
        let now = Instant::now();
        let hash = self.inner.map.hash(key);
        self.inner
            .map
            .with_slot(hash, key, |slot| {
                (!slot.is_expired(now)).then(|| slot.clone())
            })
            .flatten()
    }

    /// Call the factory and install its value (pooled or one-shot).
    async fn create<F, Fut, E>(&self, key: &K, factory: F) -> Result<Installed<V>, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Created<V>, E>>,
    {
        let inner = &*self.inner;
        let started = Instant::now();
        let created = match factory().await {
            Ok(created) => created,
            Err(error) => {
                inner.counters.creation_failures.add(1);
                inner
                    .counters
                    .create_error
                    .record(started.elapsed().as_secs_f64());
                return Err(error);
            }
        };
        let now = Instant::now();
        inner
            .counters
            .create_ok
            .record(now.saturating_duration_since(started).as_secs_f64());
        // The setters clamp the TTL to `PoolConfig::MAX_DURATION`; should `now + ttl` still not
        // fit in an `Instant`, the TTL is beyond anything representable: no TTL deadline.
        let ttl_deadline = inner.config.ttl.and_then(|ttl| now.checked_add(ttl));
        let deadline = match (ttl_deadline, created.deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let expired = deadline.is_some_and(|deadline| deadline <= now);
        if !created.poolable || expired || inner.closed.load(Ordering::Acquire) {
            inner.counters.one_shots.add(1);
            return Ok(Installed::OneShot(created.value));
        }
        let slot = Arc::new(Slot::new(
            created.value,
            inner.next_id.fetch_add(1, Ordering::Relaxed),
            now,
            deadline,
            inner.millis(now),
        ));
        inner.counters.creations.add(1);
        inner.counters.entries.add(1);
        inner.install(key, slot.clone(), now);
        Ok(Installed::Pooled(slot))
    }

    /// Build a value for this caller alone, outside the single flight.
    async fn create_own<F, Fut, E>(
        &self,
        key: &K,
        factory: Option<F>,
    ) -> Result<Pooled<V>, PoolError<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Created<V>, E>>,
        E: std::error::Error + Send + Sync + 'static,
    {
        let Some(factory) = factory else {
            // Unreachable: a caller that did not lead never gave its factory away.
            return Err(PoolError::ShutDown);
        };
        match self.create(key, factory).await {
            Ok(Installed::Pooled(slot)) => Ok(Pooled {
                slot,
                one_shot: None,
            }),
            Ok(Installed::OneShot(value)) => Ok(self.one_shot(value)),
            Err(error) => Err(PoolError::Create(Arc::new(error))),
        }
    }

    fn one_shot(&self, value: V) -> Pooled<V> {
        let now = Instant::now();
        Pooled {
            slot: Arc::new(Slot::new(value, 0, now, Some(now), self.inner.millis(now))),
            one_shot: Some(OneShot {
                counters: self.inner.counters.clone(),
                retire_timeout: self.inner.config.retire_timeout,
            }),
        }
    }

    /// Start the background sweeper on first use, if configured. It holds only a weak
    /// reference, so it stops when the last pool handle is dropped.
    fn ensure_sweeper(&self) {
        let Some(every) = self.inner.config.sweep_interval else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        // The token goes with the task: a pool outliving the runtime that ran its sweeper
        // starts a new one on its next use.
        let Some(running) = self.inner.sweeper_started.start() else {
            return;
        };
        let weak = Arc::downgrade(&self.inner);
        runtime.spawn(async move {
            let _running = running;
            sweep_loop(weak, every).await;
        });
    }
}

async fn sweep_loop<K, V>(pool: Weak<Inner<K, V>>, every: Duration)
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Retire,
{
    // `every` is clamped to `PoolConfig::MAX_DURATION` by the setter; tokio's `Interval` adds
    // the period to each tick's deadline with a plain `+`, so keep it clamped here too.
    let every = every.min(PoolConfig::MAX_DURATION);
    let Some(first) = Instant::now().checked_add(every) else {
        tracing::warn!(
            ?every,
            "sweep interval beyond the clock's range; no sweeper"
        );
        return;
    };
    let mut ticks = tokio::time::interval_at(first, every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(inner) = pool.upgrade() else { return };
        if inner.closed.load(Ordering::Acquire) {
            return;
        }
        let idle_ttl = inner.config.idle_ttl;
        inner.prune(idle_ttl).await;
    }
}

/// Whole milliseconds in `duration`, saturating at `u64::MAX` (about 584 million years).
fn millis_saturating(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

impl<K, V> Inner<K, V>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Retire,
{
    fn millis(&self, now: Instant) -> u64 {
        millis_saturating(now.saturating_duration_since(self.epoch))
    }

    fn lock_index(&self) -> MutexGuard<'_, Index<K, V>> {
        // No pool code panics while holding the index lock: a poisoned lock breaks nothing.
        self.index.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn try_lock_index(&self) -> Option<MutexGuard<'_, Index<K, V>>> {
        match self.index.try_lock() {
            Ok(guard) => Some(guard),
            Err(TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        }
    }

    /// Remove the key's slot if it is still the one with `id`, from the shards and the index.
    fn remove(&self, hash: u64, key: &K, id: u64) -> Option<Arc<Slot<V>>> {
        let mut index = self.lock_index();
        let slot = self.map.remove_if_id(hash, key, id)?;
        index.remove(&slot);
        Some(slot)
    }

    /// Insert a new slot, then evict until the pool is within capacity (P4, and the thrashing
    /// policy of [`Index::victim`]). Victims are retired after the locks are released (P5).
    fn install(&self, key: &K, slot: Arc<Slot<V>>, now: Instant) {
        let hash = self.map.hash(key);
        let mut victims = Vec::new();
        let (replaced, thrashing, warn) = {
            let mut index = self.lock_index();
            let max = self.config.max_entries;
            let returned = index.returned(hash, max);
            let thrashing = returned.is_some();
            let protect = returned.is_some_and(|previous_use| index.admit(previous_use, max));
            let warn = thrashing && index.warning_due(now);
            // Room first, then the insert: the pool never holds more than `max` entries, not
            // even for the instant between the two (inserts are serialised by the index lock).
            if self.map.with_slot(hash, key, |_| ()).is_none() {
                while self.map.len() >= max {
                    let Some(victim) = index.victim(now, self.config.expiry_margin, returned, max)
                    else {
                        break;
                    };
                    if let Some(evicted) =
                        self.map.remove_if_id(victim.hash, &victim.key, victim.id)
                    {
                        victims.push(evicted);
                    }
                }
            }
            let replaced = self.map.insert(hash, key.clone(), slot.clone());
            if let Some(replaced) = &replaced {
                index.remove(replaced);
            }
            index.insert(key.clone(), hash, slot, protect);
            (replaced, thrashing, warn)
        };
        if let Some(replaced) = replaced {
            self.evicted(EvictionCause::Expired, vec![replaced]);
        }
        if thrashing {
            self.counters.thrashing.add(1);
        }
        if warn {
            self.warn_thrashing();
        }
        if !victims.is_empty() {
            self.evicted(EvictionCause::Capacity, victims);
        }
    }

    /// The once-a-minute thrashing warning, naming the capacity setting to raise.
    fn warn_thrashing(&self) {
        self.warnings.fetch_add(1, Ordering::Relaxed);
        let knob = self
            .config
            .capacity_knob
            .unwrap_or("PoolConfig::max_entries");
        let stats = self.counters.snapshot(self.map.len());
        tracing::warn!(
            max_entries = self.config.max_entries,
            thrashing = stats.thrashing,
            capacity_evictions = stats.evictions.capacity,
            "pool capacity too small for its working set: keys evicted for capacity keep coming \
             straight back (counted in PoolStats::thrashing); raise {knob}"
        );
    }

    /// Count evictions and retire the victims in the background (used on callers' paths).
    fn evicted(&self, cause: EvictionCause, victims: Vec<Arc<Slot<V>>>) {
        self.counters.evicted(cause, victims.len());
        self.retired.push(victims);
    }

    /// Count evictions and retire the victims now (used by explicit maintenance calls).
    async fn retire_now(&self, cause: EvictionCause, victims: Vec<Arc<Slot<V>>>) -> RetireReport {
        self.counters.evicted(cause, victims.len());
        retire_all(victims, self.config.retire_timeout, &self.counters).await
    }

    async fn prune(&self, idle_ttl: Option<Duration>) -> RetireReport {
        self.counters.hits.publish();
        let now = Instant::now();
        let now_ms = self.millis(now);
        // Saturating: `as u64` would wrap a huge TTL around to a short one.
        let idle_ms = idle_ttl.map(millis_saturating);
        let mut expired = Vec::new();
        let mut idle = Vec::new();
        let drained = {
            let mut index = self.lock_index();
            let drained = self.map.drain_where(|slot| {
                slot.is_expired(now)
                    || idle_ms.is_some_and(|ms| now_ms.saturating_sub(slot.last_used_ms()) > ms)
            });
            for slot in &drained {
                index.remove(slot);
            }
            drained
        };
        for victim in drained {
            if victim.is_expired(now) {
                expired.push(victim);
            } else {
                idle.push(victim);
            }
        }
        let a = self.retire_now(EvictionCause::Expired, expired).await;
        let b = self.retire_now(EvictionCause::Idle, idle).await;
        RetireReport {
            retired: a.retired + b.retired,
            failed: a.failed + b.failed,
        }
    }
}

impl<K, V> Drop for Inner<K, V> {
    fn drop(&mut self) {
        // Entries dropped with the pool (never drained) leave the `pool.entries` gauge too,
        // and hits not yet published reach `pool.hits`.
        self.counters.entries.sub(self.map.len());
        self.counters.hits.publish();
    }
}

#[cfg(test)]
mod tests;
