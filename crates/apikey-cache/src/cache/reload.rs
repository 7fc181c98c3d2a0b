//! Reloads: generations, single-flight, the store gate, the miss-reload rate limit and the swap.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::Duration;

use pool_core::SingleFlight;
use tokio::time::Instant;

use super::negative::NegativeCache;
use super::stats::Counters;
use crate::config::CacheConfig;
use crate::document::KeyDocument;
use crate::error::StoreError;
use crate::snapshot::{Snapshot, Table};
use crate::store::{KeyStore, Loaded, Version};

/// The shared outcome of one reload.
pub(crate) type Reloaded = Result<Arc<Snapshot>, Arc<StoreError>>;

/// State shared by every handle of one cache.
///
/// Loads are numbered (generations). A caller that needs "a load that starts after now" asks
/// for generation `started + 1`; everyone asking while that load has not started yet gets the
/// same number and shares it through [`SingleFlight`]. Loads run one at a time under `gate`, and
/// every install (a load's or a write's) happens under it, so installs happen in the order the
/// store was read and never go backwards. A write does its store I/O *outside* the gate (under
/// `writes`, which readers never take): a slow or hung write never blocks a reload (A9). Every
/// store call is bounded by the configured timeout.
#[derive(Debug)]
pub(crate) struct Inner<S> {
    pub(crate) store: S,
    pub(crate) config: CacheConfig,
    current: RwLock<Arc<Snapshot>>,
    flights: SingleFlight<u64, Reloaded>,
    pub(crate) gate: tokio::sync::Mutex<()>,
    /// Local writes, one at a time (held across the store write; no reader takes it).
    pub(crate) writes: tokio::sync::Mutex<()>,
    /// A background retry of a failed refresh is running.
    retrying: pool_core::TaskFlag,
    plan: Mutex<Plan>,
    pub(crate) negative: Mutex<NegativeCache>,
    pub(crate) counters: Counters,
    last_error: Mutex<Option<String>>,
    /// The keyed layout's state (A10–A12); `None` for a single-document store.
    pub(crate) keyed: Option<crate::keyed::KeyedState>,
    /// Metric handles (issue 19), registered once.
    pub(crate) telemetry: crate::telemetry::Telemetry,
}

#[derive(Debug, Default)]
struct Plan {
    /// Highest generation whose load has started.
    started: u64,
    /// Highest generation whose load has finished (successfully or not).
    completed: u64,
    /// Highest generation a miss-driven reload has been granted for.
    granted: u64,
    /// Miss-reload rate limiter (GCRA): theoretical arrival time of the next grant.
    tat: Option<Instant>,
    /// The latest failure, if no load has succeeded since.
    failure: Option<(Instant, Arc<StoreError>)>,
}

impl Plan {
    fn backing_off(&self, now: Instant, backoff: Duration) -> Option<Arc<StoreError>> {
        // `now - at < backoff`, written without an `Instant + Duration` that could overflow.
        self.failure
            .as_ref()
            .filter(|(at, _)| now.saturating_duration_since(*at) < backoff)
            .map(|(_, e)| e.clone())
    }

    /// One token of a bucket of `burst` refilled one per `interval`. Saturating arithmetic
    /// (X5): at the end of `Instant`'s range no token is granted rather than a panic.
    fn take_token(&mut self, now: Instant, interval: Duration, burst: u32) -> bool {
        let tat = self.tat.unwrap_or(now).max(now);
        let allowance = interval
            .checked_mul(burst.saturating_sub(1))
            .unwrap_or(Duration::MAX);
        if tat.saturating_duration_since(now) > allowance {
            return false;
        }
        let Some(next) = tat.checked_add(interval) else {
            return false;
        };
        self.tat = Some(next);
        true
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Only plain assignments happen under these locks: poisoning leaves nothing half-done.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// An error and its sources on one line (no key material is ever part of a store error).
pub(crate) fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

impl<S: KeyStore> Inner<S> {
    pub(crate) fn new(store: S, config: CacheConfig) -> Self {
        let telemetry = crate::telemetry::Telemetry::new();
        let negative = NegativeCache::new(config.negative_ttl, config.negative_capacity)
            .with_gauge(telemetry.negative_gauge());
        let keyed = (store.layout() == crate::store::Layout::Keyed)
            .then(|| crate::keyed::KeyedState::new(&config));
        Self {
            keyed,
            store,
            config,
            current: RwLock::new(Arc::new(Snapshot::unloaded())),
            flights: SingleFlight::new(),
            gate: tokio::sync::Mutex::new(()),
            writes: tokio::sync::Mutex::new(()),
            retrying: pool_core::TaskFlag::default(),
            plan: Mutex::new(Plan::default()),
            negative: Mutex::new(negative),
            counters: Counters::default(),
            last_error: Mutex::new(None),
            telemetry,
        }
    }

    /// The current snapshot (the read lock is held only to clone the pointer).
    pub(crate) fn current(&self) -> Arc<Snapshot> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Swap in a fully built snapshot (the write lock is held only for the pointer store).
    pub(crate) fn install(&self, snapshot: Snapshot) -> Arc<Snapshot> {
        let snapshot = Arc::new(snapshot);
        let old = std::mem::replace(
            &mut *self.current.write().unwrap_or_else(PoisonError::into_inner),
            snapshot.clone(),
        );
        drop(old); // the previous table is freed outside the lock (if no reader holds it)
        snapshot
    }

    pub(crate) fn last_error(&self) -> Option<String> {
        lock(&self.last_error).clone()
    }

    pub(crate) fn started(&self) -> u64 {
        lock(&self.plan).started
    }

    pub(crate) fn negative(&self) -> MutexGuard<'_, NegativeCache> {
        lock(&self.negative)
    }

    /// For a snapshot older than the TTL: join the load in flight or start one. During the
    /// back-off after a failure, answers that failure without calling the store.
    ///
    /// If the last load failed (the store is down or hanging) and there is a snapshot to answer
    /// from (`loaded`), the request does not wait for the store again: the retry runs in the
    /// background and the caller gets the failure at once (and serves the previous snapshot).
    pub(crate) async fn refresh_stale(self: &Arc<Self>, now: Instant, loaded: bool) -> Reloaded {
        let target = {
            let plan = lock(&self.plan);
            if let Some(error) = plan.backing_off(now, self.config.retry_backoff) {
                return Err(error);
            }
            match &plan.failure {
                Some((_, error)) if loaded => {
                    let error = error.clone();
                    drop(plan);
                    self.retry_in_background();
                    return Err(error);
                }
                _ => plan.completed + 1,
            }
        };
        self.load_generation(target).await
    }

    /// Start one background refresh unless one is running (needs a tokio runtime; without one
    /// the next request that is not backing off tries again). The task holds the cache for at
    /// most one load timeout (plus the wait for a load already in flight).
    fn retry_in_background(self: &Arc<Self>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let Some(running) = self.retrying.start() else {
            return;
        };
        let inner = self.clone();
        runtime.spawn(async move {
            let _running = running;
            let target = lock(&inner.plan).completed + 1;
            // Logged and counted inside; the previous snapshot stays on failure.
            let _ = inner.load_generation(target).await;
        });
    }

    /// A load that starts after this call (explicit refresh, watcher). Not rate-limited.
    pub(crate) async fn reload_fresh(&self) -> Reloaded {
        let target = lock(&self.plan).started + 1;
        self.load_generation(target).await
    }

    /// A miss seen when `seen` loads had started. Returns the snapshot of a shared load and
    /// whether that load started after `seen` (so it could not have missed a key created
    /// before the request), or `None` when the rate limit allows no new load.
    ///
    /// - A load already in flight is joined for free (1 000 concurrent misses of one new key
    ///   share one read), but it may have started before the key was created: not fresh.
    /// - Else a load that started after `seen` is joined if there is one (free, fresh).
    /// - Else a new load is needed: the first caller takes a token from the rate limiter and
    ///   everyone arriving before that load starts shares it.
    pub(crate) async fn miss_reload(&self, now: Instant, seen: u64) -> Option<(Reloaded, bool)> {
        let (target, fresh) = {
            let mut plan = lock(&self.plan);
            if let Some(error) = plan.backing_off(now, self.config.retry_backoff) {
                return Some((Err(error), false));
            }
            if plan.started > plan.completed && plan.started <= seen {
                (plan.started, false)
            } else {
                let target = plan.started.max(seen + 1);
                if target > plan.started && target > plan.granted {
                    let (interval, burst) = (
                        self.config.miss_reload_interval,
                        self.config.miss_reload_burst,
                    );
                    if !plan.take_token(now, interval, burst) {
                        return None;
                    }
                    plan.granted = target;
                }
                (target, true)
            }
        };
        Counters::bump(&self.counters.miss_reloads);
        Some((self.load_generation(target).await, fresh))
    }

    async fn load_generation(&self, target: u64) -> Reloaded {
        self.flights
            .run(target, async {
                let _gate = self.gate.lock().await;
                {
                    let mut plan = lock(&self.plan);
                    if plan.completed >= target {
                        // A load numbered `target` (or later) already ran for us.
                        return Ok(self.current());
                    }
                    plan.started = plan.started.max(target);
                }
                let result = self.load_and_install(target).await;
                let mut plan = lock(&self.plan);
                plan.completed = plan.completed.max(target);
                plan.failure = match &result {
                    Ok(_) => None,
                    Err(error) => Some((Instant::now(), error.clone())),
                };
                result
            })
            .await
    }

    /// Load (conditionally, by version) and install. Call only while holding `gate`.
    pub(crate) async fn load_and_install(&self, load_gen: u64) -> Reloaded {
        let old = self.current();
        Counters::bump(&self.counters.store_loads);
        let timeout = self.config.load_timeout;
        let started = Instant::now();
        let loaded =
            match tokio::time::timeout(timeout, self.store.load(old.version.as_ref())).await {
                Ok(loaded) => loaded,
                Err(_) => {
                    Counters::bump(&self.counters.store_timeouts);
                    Err(StoreError::TimedOut { after: timeout })
                }
            };
        let now = Instant::now();
        self.telemetry.store_read(
            crate::telemetry::Read::Load,
            now.saturating_duration_since(started),
            loaded.is_ok(),
        );
        self.telemetry.snapshot_age(if loaded.is_ok() {
            Some(std::time::Duration::ZERO)
        } else {
            old.checked_at.map(|at| now.saturating_duration_since(at))
        });
        let snapshot = match loaded {
            Ok(Loaded::NotModified) => {
                Counters::bump(&self.counters.not_modified);
                Snapshot {
                    table: old.table.clone(),
                    version: old.version.clone(),
                    checked_at: Some(now),
                    generation: old.generation + 1,
                    load_gen,
                }
            }
            Ok(Loaded::Document { document, version }) => Snapshot {
                table: Arc::new(Table::build(document)),
                version,
                checked_at: Some(now),
                generation: old.generation + 1,
                load_gen,
            },
            Err(error) => {
                Counters::bump(&self.counters.reload_failures);
                let text = chain(&error);
                tracing::warn!(
                    store = %self.store.describe(),
                    error = %text,
                    previous_snapshot_age = ?old.checked_at.map(|at| now.saturating_duration_since(at)),
                    "API key reload failed; keeping the previous snapshot"
                );
                *lock(&self.last_error) = Some(text);
                return Err(Arc::new(error));
            }
        };
        *lock(&self.last_error) = None;
        tracing::debug!(
            store = %self.store.describe(),
            keys = snapshot.table.keys,
            generation = snapshot.generation,
            "API key snapshot installed"
        );
        Ok(self.install(snapshot))
    }

    /// Install the result of a successful local write: `document`, stored as `version` on top
    /// of `base`. Takes the gate (waiting at most for a load in flight, itself bounded by the
    /// load timeout), so it never races a load's install:
    ///
    /// - nothing installed since `base`, or only a re-confirmation of `base`'s version: the
    ///   written document is the newest this instance knows — install it;
    /// - a load already installed `version`: nothing to do;
    /// - a load that overlapped the write installed some other version: which of the two is
    ///   newer cannot be told from opaque versions, so load once more (this load starts after
    ///   the write finished, so it holds the write or something newer). If that load fails,
    ///   the written document is installed (it was the store's state a moment ago).
    pub(crate) async fn install_write(
        &self,
        base: &Snapshot,
        document: KeyDocument,
        version: Version,
    ) {
        let _gate = self.gate.lock().await;
        let current = self.current();
        if current.version.as_ref() == Some(&version) {
            return;
        }
        let unchanged = current.generation == base.generation || current.version == base.version;
        if !unchanged && self.load_and_install(current.load_gen).await.is_ok() {
            return;
        }
        let current = self.current();
        self.install(Snapshot {
            table: Arc::new(Table::build(document)),
            version: Some(version),
            checked_at: Some(Instant::now()),
            generation: current.generation + 1,
            load_gen: current.load_gen,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // covers A5: the limiter grants a burst of 2, then one per interval.
    #[tokio::test(start_paused = true)]
    async fn miss_reload_limiter_allows_a_burst_then_one_per_interval() {
        let mut plan = Plan::default();
        let interval = Duration::from_secs(1);
        let t0 = Instant::now();
        assert!(plan.take_token(t0, interval, 2));
        assert!(plan.take_token(t0, interval, 2));
        assert!(!plan.take_token(t0, interval, 2));
        assert!(!plan.take_token(t0 + Duration::from_millis(999), interval, 2));
        assert!(plan.take_token(t0 + interval, interval, 2));
        assert!(!plan.take_token(t0 + interval, interval, 2));
        // Idle time refills the burst but never beyond it.
        let later = t0 + Duration::from_secs(100);
        assert!(plan.take_token(later, interval, 2));
        assert!(plan.take_token(later, interval, 2));
        assert!(!plan.take_token(later, interval, 2));
    }
}
