//! Randomized schedules over virtual time: the real single-flight, keyed-pool and token-refresh
//! state machines run under many seeded schedules on a paused tokio runtime, with invariants
//! checked on every run (SPEC P1, P2, P5, P10, T1, T3, T5).
//!
//! This complements the shuttle models (`models/`), which enumerate interleavings but move
//! time only once and run no tokio timers. Here tokio itself schedules (a current-thread
//! runtime: deterministic, FIFO run queue, virtual clock) and a seed chooses everything that
//! decides an interleaving *and* the timing: task spawn order, how many times each task yields
//! before and inside each step, virtual delays of loads, failures, cancellations (aborted
//! leaders and waiters), invalidations, prunes, sweeps and clock jumps. A failing seed is
//! printed; replaying it repeats the same schedule (up to hash-map iteration order inside the
//! pool's shards, which is seeded per process).
//!
//! Limits: this explores many interleavings at await points (the only places a task can be
//! preempted on one thread), not every interleaving, and not the memory-ordering effects of a
//! multi-threaded runtime; it is randomized testing, not a proof.

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pool_core::{Created, KeyedPool, PoolConfig, Retire, SingleFlight};
use token_refresh::{Expiry, Fetched, RefreshConfig, TokenCache, TokenSource};
use tokio::time::Instant;

use support::Rng;

const SEEDS: u64 = 300;

/// Run `scenario(seed)` for every seed on a fresh paused current-thread runtime; a failure names
/// its seed.
fn for_each_seed<F, Fut>(scenario: F) -> u64
where
    F: Fn(u64) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for seed in 0..SEEDS {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            runtime.block_on(scenario(seed))
        }));
        if let Err(panic) = result {
            eprintln!("schedule seed {seed} failed; replay it with this seed");
            std::panic::resume_unwind(panic);
        }
    }
    SEEDS
}

async fn yields(n: u64) {
    for _ in 0..n {
        tokio::task::yield_now().await;
    }
}

// ---------------------------------------------------------------------------------------------
// SingleFlight (P10).

/// Decrements a per-key "loads running" count when a load ends or is dropped (cancelled).
struct Running(Arc<Mutex<HashMap<u8, usize>>>, u8);

impl Running {
    fn enter(running: &Arc<Mutex<HashMap<u8, usize>>>, key: u8) -> Self {
        let mut map = running.lock().unwrap();
        let n = map.entry(key).or_default();
        *n += 1;
        assert_eq!(*n, 1, "two loads of key {key} at once");
        Self(running.clone(), key)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        *self.0.lock().unwrap().get_mut(&self.1).unwrap() -= 1;
    }
}

/// Sums over all seeds: calls completed, calls cancelled.
static SF_TOTALS: [AtomicU64; 2] = [const { AtomicU64::new(0) }; 2];

// covers P10: at most one load per key at a time, cancelled leaders included; every caller that
// is not cancelled finishes (no stranded waiter, even when leaders are aborted); each caller
// gets the result of a load that ended after it called (never a stale one) for its own key.
#[test]
fn single_flight_under_random_schedules() {
    let runs = for_each_seed(|seed| async move {
        let mut rng = Rng::new(seed);
        let flight: Arc<SingleFlight<u8, (u8, u64)>> = Arc::new(SingleFlight::new());
        // A logical clock: every call and every load end takes the next tick.
        let tick = Arc::new(AtomicU64::new(0));
        let running: Arc<Mutex<HashMap<u8, usize>>> = Arc::default();
        let mut tasks = Vec::new();
        for _ in 0..(4 + rng.below(12)) {
            let key = rng.below(3) as u8;
            let (pre, inner, delay) = (rng.below(6), rng.below(4), rng.below(50));
            let (flight, tick, running) = (flight.clone(), tick.clone(), running.clone());
            tasks.push(tokio::spawn(async move {
                yields(pre).await;
                let called = tick.fetch_add(1, Ordering::SeqCst);
                let load = {
                    let tick = tick.clone();
                    async move {
                        let _running = Running::enter(&running, key);
                        yields(inner).await;
                        tokio::time::sleep(Duration::from_millis(delay)).await;
                        (key, tick.fetch_add(1, Ordering::SeqCst))
                    }
                };
                let (load_key, ended) = flight.run(key, load).await;
                assert_eq!(load_key, key, "a result from another key's load");
                assert!(ended > called, "stale result: load ended before the call");
            }));
        }
        // Cancel some tasks at a seeded moment (leaders or waiters alike).
        yields(rng.below(8)).await;
        let mut cancelled = vec![false; tasks.len()];
        for (i, task) in tasks.iter().enumerate() {
            if rng.below(5) == 0 {
                task.abort();
                cancelled[i] = true;
            }
        }
        for (i, task) in tasks.into_iter().enumerate() {
            let joined = tokio::time::timeout(Duration::from_secs(3600), task)
                .await
                .expect("no stranded caller");
            match joined {
                Ok(()) => SF_TOTALS[0].fetch_add(1, Ordering::Relaxed),
                Err(e) => {
                    assert!(e.is_cancelled() && cancelled[i], "task {i} failed: {e}");
                    SF_TOTALS[1].fetch_add(1, Ordering::Relaxed)
                }
            };
        }
        assert_eq!(flight.in_flight(), 0, "no flight left behind");
    });
    let [completed, cancelled] = SF_TOTALS.each_ref().map(|t| t.load(Ordering::Relaxed));
    assert!(cancelled > 0);
    println!(
        "single-flight: {runs} seeded schedules, {completed} calls completed, {cancelled} \
         cancelled (leaders and waiters)"
    );
}

// ---------------------------------------------------------------------------------------------
// KeyedPool (P1, P2, P5, P6).

/// A pooled value that knows its own deadline and checks, when retired, that no pool lock is
/// held and that it is retired once.
struct Value {
    deadline: Option<Instant>,
    retired: Arc<AtomicUsize>,
    pool: Arc<Mutex<Option<KeyedPool<u8, Value>>>>,
    once: AtomicU64,
}

impl std::fmt::Debug for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Value")
            .field("deadline", &self.deadline)
            .finish()
    }
}

impl Retire for Value {
    async fn retire(&self) -> Result<(), pool_core::BoxError> {
        let pool = self.pool.lock().unwrap().clone();
        if let Some(pool) = pool {
            assert!(!pool.is_locked(), "retire under a pool lock (P5)");
        }
        assert_eq!(self.once.fetch_add(1, Ordering::SeqCst), 0, "retired twice");
        self.retired.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// Sums over all seeds: creations, one-shots, coalesced misses, evictions.
static POOL_TOTALS: [AtomicU64; 4] = [const { AtomicU64::new(0) }; 4];

// covers P1, P2, P5, P6: one factory call per key at a time; no expired entry handed out; the
// capacity bound holds; every value is retired exactly once, never under a lock.
#[test]
fn keyed_pool_under_random_schedules() {
    let runs = for_each_seed(|seed| async move {
        let mut rng = Rng::new(seed ^ 0xABCD);
        let max_entries = 1 + rng.below(3) as usize;
        let pool: KeyedPool<u8, Value> = KeyedPool::new(
            PoolConfig::default()
                .ttl(Duration::from_secs(60))
                .max_entries(max_entries),
        );
        let shared_pool = Arc::new(Mutex::new(Some(pool.clone())));
        let (created, retired) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let building: Arc<Mutex<HashMap<u8, usize>>> = Arc::default();
        // Keys whose factory has produced a one-shot value: their waiters each build their own
        // (P6), so only for them may factory calls overlap.
        let one_shot: Arc<Mutex<std::collections::HashSet<u8>>> = Arc::default();
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..(6 + rng.below(14)) {
            let key = rng.below(4) as u8;
            let (pre, delay, hold) = (rng.below(5), rng.below(40), rng.below(30));
            // Deadlines: none, a soon one, a far one, or already passed (→ one-shot, P6).
            let lifetime = match rng.below(4) {
                0 => None,
                1 => Some(Duration::from_secs(1 + rng.below(20))),
                2 => Some(Duration::from_secs(3600)),
                _ => Some(Duration::ZERO),
            };
            let fail = rng.below(10) == 0;
            let (pool, shared_pool) = (pool.clone(), shared_pool.clone());
            let (created, retired, building) = (created.clone(), retired.clone(), building.clone());
            let one_shot = one_shot.clone();
            tasks.spawn(async move {
                yields(pre).await;
                let got = pool
                    .get_or_create(&key, || async move {
                        {
                            let mut building = building.lock().unwrap();
                            let n = building.entry(key).or_default();
                            *n += 1;
                            assert!(
                                *n == 1 || one_shot.lock().unwrap().contains(&key),
                                "two factory calls for key {key} at once (P1)"
                            );
                        }
                        tokio::time::sleep(Duration::from_millis(delay)).await;
                        *building.lock().unwrap().get_mut(&key).unwrap() -= 1;
                        if fail {
                            return Err(std::io::Error::other("factory failed"));
                        }
                        created.fetch_add(1, Ordering::SeqCst);
                        if lifetime == Some(Duration::ZERO) {
                            one_shot.lock().unwrap().insert(key);
                        }
                        let deadline = lifetime.map(|d| Instant::now() + d);
                        let value = Value {
                            deadline,
                            retired,
                            pool: shared_pool,
                            once: AtomicU64::new(0),
                        };
                        Ok(match deadline {
                            Some(at) => Created::until(value, at),
                            None => Created::new(value),
                        })
                    })
                    .await;
                if let Ok(handle) = got {
                    let now = Instant::now();
                    if handle.is_pooled() {
                        // P2: an entry at or past its deadline is never handed out.
                        if let Some(deadline) = handle.deadline() {
                            assert!(deadline > now, "expired entry handed out");
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(hold)).await;
                }
            });
        }
        // Meanwhile: jump the clock, prune, invalidate, at seeded moments.
        for _ in 0..rng.below(6) {
            yields(rng.below(6)).await;
            match rng.below(3) {
                0 => tokio::time::advance(Duration::from_secs(rng.below(30))).await,
                1 => drop(pool.prune_idle(Duration::from_secs(5)).await),
                _ => drop(pool.invalidate(&(rng.below(4) as u8)).await),
            }
            assert!(pool.len() <= max_entries, "capacity bound (P4)");
        }
        while let Some(joined) = tokio::time::timeout(Duration::from_secs(3600), tasks.join_next())
            .await
            .expect("no stranded caller")
        {
            joined.unwrap();
        }
        assert!(pool.len() <= max_entries, "capacity bound (P4)");
        let stats = pool.stats();
        for (total, value) in POOL_TOTALS.iter().zip([
            stats.creations,
            stats.one_shots,
            stats.coalesced,
            stats.evictions.expired + stats.evictions.capacity + stats.evictions.idle,
        ]) {
            total.fetch_add(value, Ordering::Relaxed);
        }
        let report = pool.reset().await;
        assert_eq!(report.failed, 0);
        // Background retires (expired, one-shot drops) finish in virtual time.
        for _ in 0..50 {
            if retired.load(Ordering::SeqCst) == created.load(Ordering::SeqCst) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        shared_pool.lock().unwrap().take();
        assert_eq!(
            retired.load(Ordering::SeqCst),
            created.load(Ordering::SeqCst),
            "every value retired exactly once"
        );
    });
    let [creations, one_shots, coalesced, evictions] =
        POOL_TOTALS.each_ref().map(|t| t.load(Ordering::Relaxed));
    assert!(one_shots > 0 && coalesced > 0 && evictions > 0);
    println!(
        "keyed pool: {runs} seeded schedules, {creations} creations, {one_shots} one-shots, \
         {coalesced} coalesced misses, {evictions} evictions (expired, capacity, idle)"
    );
}

// ---------------------------------------------------------------------------------------------
// TokenCache (T1, T3, T5).

/// Issues tokens numbered 1, 2, … *in the order their fetches started* (so a fetch that started
/// earlier carries a smaller number, whenever it finishes), with seeded lifetimes, delays and
/// failures; remembers each token's expiry and the highest number issued, and counts fetches in
/// flight.
#[derive(Debug)]
struct ScriptedSource {
    rng: Mutex<Rng>,
    started: AtomicU64,
    highest_issued: AtomicU64,
    expiries: Mutex<HashMap<u64, Instant>>,
    in_flight: AtomicUsize,
    peak_in_flight: AtomicUsize,
}

impl TokenSource for ScriptedSource {
    type Token = u64;
    type Error = std::io::Error;

    async fn fetch(&self) -> Result<Fetched<u64>, std::io::Error> {
        let now_in_flight = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak_in_flight
            .fetch_max(now_in_flight, Ordering::SeqCst);
        // Counted down when the fetch ends or is dropped (an aborted background refresh).
        struct Done<'a>(&'a AtomicUsize);
        impl Drop for Done<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        let _done = Done(&self.in_flight);
        let n = self.started.fetch_add(1, Ordering::SeqCst) + 1;
        let (delay, fail, lifetime) = {
            let mut rng = self.rng.lock().unwrap();
            // Bimodal delays (quick, or slow enough to straddle an expiry or hit the 30 s load
            // timeout) and short lifetimes, so background and blocking refreshes overlap.
            let delay = if rng.below(2) == 0 {
                rng.below(1_000)
            } else {
                10_000 + rng.below(25_000)
            };
            (
                delay,
                rng.below(5) == 0,
                Duration::from_secs(80 + rng.below(220)),
            )
        };
        tokio::time::sleep(Duration::from_millis(delay)).await;
        if fail {
            return Err(std::io::Error::other("identity endpoint down"));
        }
        let expiry = Instant::now() + lifetime;
        self.expiries.lock().unwrap().insert(n, expiry);
        self.highest_issued.fetch_max(n, Ordering::SeqCst);
        Ok(Fetched::new(n, Expiry::At(expiry)))
    }
}

/// Sums over all seeds: calls, blocking fetches, background refreshes started, failed and
/// discarded, blocking failures.
static TOKEN_TOTALS: [AtomicU64; 6] = [const { AtomicU64::new(0) }; 6];

// covers T1, T3, T5: no token is served past its expiry minus skew; once a caller has seen
// token n, no call that starts afterwards gets an older one (the generation guard: a late
// background result never overwrites a newer token); at most one background refresh plus one
// blocking refresh at a time; every caller finishes (no stranded waiter).
#[test]
fn token_cache_under_random_schedules() {
    let runs = for_each_seed(|seed| async move {
        let mut rng = Rng::new(seed ^ 0x7777);
        let skew = Duration::from_secs(40);
        let source = Arc::new(ScriptedSource {
            rng: Mutex::new(Rng::new(seed)),
            started: AtomicU64::new(0),
            highest_issued: AtomicU64::new(0),
            expiries: Mutex::default(),
            in_flight: AtomicUsize::new(0),
            peak_in_flight: AtomicUsize::new(0),
        });
        let cache = TokenCache::from_arc(
            source.clone(),
            RefreshConfig::default()
                .skew(skew)
                .backoff(Duration::from_secs(5))
                .jitter(0.0),
        );
        // The oldest token a call starting now may get: the newest any completed call has
        // seen (tokens are numbered by fetch start, so a late result of an older fetch that
        // overwrote a newer token would go backwards: T5), or newer than every token issued
        // before the last invalidation.
        let floor = Arc::new(AtomicU64::new(0));
        for _round in 0..(6 + rng.below(10)) {
            let mut tasks = tokio::task::JoinSet::new();
            for _ in 0..(2 + rng.below(8)) {
                let (cache, source, floor) = (cache.clone(), source.clone(), floor.clone());
                let (pre, wait) = (rng.below(4), rng.below(40_000));
                tasks.spawn(async move {
                    yields(pre).await;
                    // Calls spread over 40 virtual seconds, overlapping refreshes in flight.
                    tokio::time::sleep(Duration::from_millis(wait)).await;
                    let at_least = floor.load(Ordering::SeqCst);
                    let Ok(token) = cache.token().await else {
                        return; // a failed blocking refresh reaches its waiters: allowed (T1)
                    };
                    // Paused time moves only when every task is idle, so `now` is the moment
                    // the cache handed the token over.
                    let now = Instant::now();
                    let expiry = source.expiries.lock().unwrap()[&token];
                    assert!(
                        now + skew < expiry,
                        "token {token} served past expiry − skew"
                    );
                    assert!(
                        token >= at_least,
                        "token {token} older than {at_least} (T5)"
                    );
                    floor.fetch_max(token, Ordering::SeqCst);
                });
            }
            // An invalidation at a seeded point while callers run: later calls need a token
            // newer than any issued before it (the invalidated one included).
            yields(rng.below(5)).await;
            if rng.below(4) == 0 {
                cache.invalidate();
                let issued = source.highest_issued.load(Ordering::SeqCst);
                floor.fetch_max(issued + 1, Ordering::SeqCst);
            }
            while let Some(joined) =
                tokio::time::timeout(Duration::from_secs(3600), tasks.join_next())
                    .await
                    .expect("no stranded caller")
            {
                joined.unwrap();
            }
            // Between rounds: a clock jump into the fresh, stale or expired region.
            let jump = match rng.below(4) {
                0 => Duration::ZERO,
                1 => Duration::from_millis(rng.below(30_000)),
                2 => Duration::from_secs(rng.below(120)),
                _ => Duration::from_secs(300 + rng.below(400)),
            };
            tokio::time::advance(jump).await;
        }
        let stats = cache.stats();
        for (total, value) in TOKEN_TOTALS.iter().zip([
            stats.fresh_hits + stats.stale_hits + stats.waits,
            stats.blocking_fetches,
            stats.background_started,
            stats.background_failed,
            stats.background_discarded,
            stats.blocking_failures,
        ]) {
            total.fetch_add(value, Ordering::Relaxed);
        }
        let peak = source.peak_in_flight.load(Ordering::SeqCst);
        assert!(
            peak <= 2,
            "{peak} fetches at once (one background + one blocking at most)"
        );
    });
    let [
        calls,
        blocking,
        background,
        bg_failed,
        discarded,
        blocking_failed,
    ] = TOKEN_TOTALS.each_ref().map(|t| t.load(Ordering::Relaxed));
    let summary = format!(
        "token cache: {runs} seeded schedules, {calls} calls, {blocking} blocking fetches \
         ({blocking_failed} failed), {background} background refreshes ({bg_failed} failed, \
         {discarded} discarded by the generation guard)"
    );
    // The schedules reach every path the invariants are about.
    assert!(
        background > 0 && bg_failed > 0 && discarded > 0 && blocking_failed > 0,
        "{summary}"
    );
    println!("{summary}");
}
