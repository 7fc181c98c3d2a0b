//! Model checking with shuttle (issue 12; SPEC P1, P2, P4–P7, P10, T1, T3–T5): the **real**
//! `SingleFlight`, `KeyedPool` and `TokenCache` run as tasks on shuttle's executor, which
//! chooses the interleaving — every schedule, depth-first, on reduced configurations (each
//! bounded, so a model that outgrows an exhaustive search fails instead of being cut short),
//! and 10 000 random schedules on larger ones.
//!
//! Why shuttle and not loom: loom explores the interleavings of *its own* primitives and needs
//! the code under test, and tokio, compiled against them (`--cfg loom`, a workspace-wide
//! RUSTFLAGS rebuild of everything). Shuttle ships an async executor that polls any future, so
//! the crates' own code — `std::sync` maps, tokio's runtime-independent `OnceCell` and
//! `Semaphore` inside `SingleFlight`, the pool's shards and deadlines — runs unmodified, and
//! shuttle decides which task runs at every point where one can switch: each spawn, abort and
//! join, each `Pending` (a waiter parked on a flight), and the yields the models place inside
//! loads, factories and fetches and while a handle is held.
//!
//! The token cache's background refresh is a tokio task (`Handle::spawn`), which shuttle does
//! not run. The models give it a *driver*: a shuttle task that polls the paused tokio runtime
//! one step at a time, so the scheduler decides where a background fetch starts and where it
//! finishes relative to the callers; and a *clock* task that moves virtual time past a token's
//! life once, at a point the scheduler picks. Nothing else moves time.
//!
//! Each model was checked against a planted bug (in a throw-away edit of the crate, reverted):
//! the single flight's cleanup removing a flight that still has waiters ("two loads of key 0 at
//! once"), the pool pooling an already-expired value ("expired entry handed out (P2)") or not
//! enforcing its capacity ("capacity bound (P4)"), and the token cache without its generation
//! guard ("token 2 older than 3 (T5)"). The random scheduler is used rather than PCT because
//! PCT (depths 3–5, 3 000 runs) missed the generation-guard bug that random schedules find in
//! their first runs. The token model also found a real bug, fixed in token-refresh: a slow
//! blocking refresh overwrote a newer token that a background refresh, started after it, had
//! installed meanwhile (`slow_blocking_refresh_does_not_overwrite_a_newer_background_token`).
//!
//! What this leaves out, said plainly: shuttle switches tasks only at those points, so code
//! between two of them runs atomically (a multi-threaded runtime can interleave inside a
//! lock-free section; `std` atomics and locks are not instrumented), and time moves only where
//! the clock task moves it. The randomized tokio harness (`schedules.rs`) covers time: jumps,
//! timeouts, sweeps, back-offs and cancellations under a virtual clock.
//!
//! Run: `cargo test -p integration-tests --test models -- --nocapture` (prints the number of
//! schedules explored per model).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use pool_core::{Created, KeyedPool, PoolConfig, Retire, SingleFlight};
use shuttle::future::{self, JoinError, JoinHandle, block_on, yield_now};
use shuttle::scheduler::{DfsScheduler, RandomScheduler};
use shuttle::{Config, Runner};
use token_refresh::{Expiry, Fetched, RefreshConfig, TokenCache, TokenSource};

/// Shuttle's configuration: task stacks large enough for the debug-build futures of a pool and
/// a token cache (the default 32 KiB overflows).
fn config() -> Config {
    let mut config = Config::new();
    config.stack_size = 1 << 20;
    config
}

/// Explore every schedule of `model` depth-first, and fail unless that took fewer than `bound`
/// schedules: the bound keeps `cargo xtask test` fast, and a change that grows the space past it
/// fails here (shrink the model) instead of silently exploring only part of it. Returns how many
/// schedules there were.
fn exhaustive(name: &str, bound: usize, model: impl Fn() + Send + Sync + 'static) -> usize {
    let started = std::time::Instant::now();
    let schedules = Runner::new(DfsScheduler::new(Some(bound), false), config()).run(model);
    assert!(
        schedules < bound,
        "{name}: more than {bound} schedules; the model no longer fits an exhaustive search"
    );
    println!(
        "{name}: all {schedules} schedules explored (DFS) in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    schedules
}

/// Run `model` under `iterations` uniformly random schedules (shuttle's random scheduler: at
/// each scheduling point, any runnable task). For configurations too large to enumerate. PCT
/// was tried first and is not used: on the token model it missed a planted generation-guard bug
/// in 3 000 runs at depths 3–5, which the random scheduler finds in its first runs.
fn random(name: &str, iterations: usize, model: impl Fn() + Send + Sync + 'static) {
    let started = std::time::Instant::now();
    let schedules = Runner::new(RandomScheduler::new(iterations), config()).run(model);
    println!(
        "{name}: {schedules} random schedules in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// A paused current-thread tokio runtime whose context is entered for one shuttle run: the
/// pool's and the cache's clock reads and their retire/fetch timeouts need one, and its clock
/// stands still, so a run is deterministic. Detached work (background retires) is queued on it
/// and run by [`drain`].
fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("runtime")
}

/// Run the tasks queued on `runtime` (background retires) to completion.
fn drain(runtime: &tokio::runtime::Runtime) {
    runtime.block_on(async {
        for _ in 0..8 {
            tokio::task::yield_now().await;
        }
    });
}

/// Counts loads (or factory calls) running per key; entering a second one for a key fails.
#[derive(Debug, Default, Clone)]
struct Exclusive(Arc<Mutex<HashMap<u8, usize>>>);

/// Leaves the [`Exclusive`] section when the load ends *or is dropped* (a cancelled leader).
struct Inside(Exclusive, u8);

impl Exclusive {
    fn enter(&self, key: u8, what: &str) -> Inside {
        let mut running = self.0.lock().unwrap();
        let n = running.entry(key).or_default();
        *n += 1;
        assert_eq!(*n, 1, "two {what}s of key {key} at once");
        Inside(self.clone(), key)
    }
}

impl Drop for Inside {
    fn drop(&mut self) {
        *self.0.0.lock().unwrap().get_mut(&self.1).unwrap() -= 1;
    }
}

// ---------------------------------------------------------------------------------------------
// SingleFlight (P10).

/// `callers` tasks call `run` on `keys` keys (caller i on key i % keys); caller 0 is aborted at
/// a point the scheduler picks (possibly before it starts, while it leads, or after it is done).
/// Every load yields inside, so waiters park on the flight.
fn single_flight_model(callers: usize, keys: usize) {
    let flights = Arc::new(SingleFlight::<u8, u64>::new());
    let exclusive = Exclusive::default();
    let loads = Arc::new(AtomicUsize::new(0));
    // A logical clock: ticks when a call starts and when a load ends.
    let clock = Arc::new(AtomicU64::new(0));
    let tasks: Vec<JoinHandle<(u8, u64, u64)>> = (0..callers)
        .map(|i| {
            let key = (i % keys) as u8;
            let (flights, exclusive, loads, clock) = (
                flights.clone(),
                exclusive.clone(),
                loads.clone(),
                clock.clone(),
            );
            future::spawn(async move {
                let called_at = clock.fetch_add(1, Ordering::SeqCst) + 1;
                let result = flights
                    .run(key, async {
                        let _inside = exclusive.enter(key, "load");
                        loads.fetch_add(1, Ordering::SeqCst);
                        yield_now().await;
                        // The value names its key and the tick it ended at.
                        u64::from(key) << 32 | (clock.fetch_add(1, Ordering::SeqCst) + 1)
                    })
                    .await;
                (key, called_at, result)
            })
        })
        .collect();
    tasks[0].abort();
    let mut finished = 0;
    for (i, task) in tasks.into_iter().enumerate() {
        match block_on(task) {
            Ok((key, called_at, result)) => {
                finished += 1;
                assert_eq!(result >> 32, u64::from(key), "a result from another key");
                assert!(
                    result & 0xffff_ffff > called_at,
                    "a result from a load that ended before the call began"
                );
            }
            Err(JoinError::Cancelled) => assert_eq!(i, 0, "only caller 0 is aborted"),
        }
    }
    assert!(
        finished >= callers - 1,
        "a caller that was not aborted did not finish"
    );
    assert_eq!(flights.in_flight(), 0, "a flight was left behind");
    if loads.load(Ordering::SeqCst) < finished {
        COALESCED_RUNS.fetch_add(1, Ordering::Relaxed);
    }
}

/// Schedules in which callers shared a load (fewer loads than finished callers): proof that
/// the models reach the coalescing path, not only callers that happen to run one after another.
static COALESCED_RUNS: AtomicUsize = AtomicUsize::new(0);

// covers P10: every schedule of three callers of one key, one of them aborted at any point —
// one load at a time, no stranded waiter, no stale or foreign result, no flight left behind.
#[test]
fn single_flight_every_schedule_of_three_callers_one_aborted() {
    let schedules = exhaustive(
        "single flight, 1 key x 3 callers, 1 aborted",
        50_000,
        || single_flight_model(3, 1),
    );
    assert!(schedules > 1_000, "the model explores real interleavings");
    assert!(
        COALESCED_RUNS.load(Ordering::Relaxed) > 0,
        "no schedule shared a load"
    );
}

// covers P10 on a larger configuration: two keys, six callers, random schedules.
#[test]
fn single_flight_two_keys_six_callers_random() {
    random(
        "single flight, 2 keys x 6 callers, 1 aborted",
        10_000,
        || single_flight_model(6, 2),
    );
}

// ---------------------------------------------------------------------------------------------
// KeyedPool (P1, P2, P4, P5, P6).

/// A pooled value that checks, when retired, that no pool lock is held and that it is retired
/// once.
struct Value {
    key: u8,
    retired: Arc<AtomicUsize>,
    pool: Arc<Mutex<Option<KeyedPool<u8, Value>>>>,
    once: AtomicUsize,
}

impl std::fmt::Debug for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Value").field("key", &self.key).finish()
    }
}

impl Retire for Value {
    async fn retire(&self) -> Result<(), pool_core::BoxError> {
        let pool = self.pool.lock().unwrap().clone();
        if let Some(pool) = pool {
            assert!(!pool.is_locked(), "retire under a pool lock (P5)");
        }
        assert_eq!(
            self.once.fetch_add(1, Ordering::SeqCst),
            0,
            "retired twice (P5)"
        );
        self.retired.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// What a model's factory makes for a key.
#[derive(Debug, Clone, Copy)]
enum Make {
    /// A pooled value.
    Pooled,
    /// A value whose deadline has already passed (P2: never pooled, the caller's alone).
    Expired,
    /// A one-shot value (P6).
    OneShot,
}

/// `callers` tasks call `get_or_create` on a pool of capacity 1; caller i asks for key
/// `keys[i]` and its factory makes `makes[i]`; one more task invalidates key 0. Checks, in every
/// schedule: one factory call per key at a time (unless a one-shot was made: P6 then lets each
/// waiter build its own); a pooled handle is never past its deadline; at most one entry at every
/// observation; each value retired exactly once (after shutdown and the background retires),
/// never under a lock; a handle's value is for its key.
fn keyed_pool_model(keys: &[u8], makes: &[Make], invalidate: bool) {
    let runtime = paused_runtime();
    let context = runtime.enter();
    let pool = KeyedPool::<u8, Value>::new(PoolConfig::default().max_entries(1));
    let shared_pool = Arc::new(Mutex::new(Some(pool.clone())));
    let created = Arc::new(AtomicUsize::new(0));
    let retired = Arc::new(AtomicUsize::new(0));
    let exclusive = Exclusive::default();
    let one_shots = makes.iter().any(|m| !matches!(m, Make::Pooled));
    let mut tasks = Vec::new();
    for (&key, &make) in keys.iter().zip(makes) {
        let (pool, shared_pool, created, retired, exclusive) = (
            pool.clone(),
            shared_pool.clone(),
            created.clone(),
            retired.clone(),
            exclusive.clone(),
        );
        tasks.push(future::spawn(async move {
            let got = pool
                .get_or_create(&key, || async {
                    let _inside = (!one_shots).then(|| exclusive.enter(key, "factory call"));
                    yield_now().await;
                    created.fetch_add(1, Ordering::SeqCst);
                    let value = Value {
                        key,
                        retired,
                        pool: shared_pool,
                        once: AtomicUsize::new(0),
                    };
                    Ok::<_, std::io::Error>(match make {
                        Make::Pooled => Created::new(value),
                        Make::Expired => Created::until(value, tokio::time::Instant::now()),
                        Make::OneShot => Created::one_shot(value),
                    })
                })
                .await
                .expect("factories do not fail");
            assert_eq!(got.key, key, "a value of another key");
            if got.is_pooled() {
                let now = tokio::time::Instant::now();
                assert!(
                    got.deadline().is_none_or(|d| d > now),
                    "expired entry handed out (P2)"
                );
            }
            assert!(pool.len() <= 1, "capacity bound (P4)");
            yield_now().await;
            drop(got);
            assert!(pool.len() <= 1, "capacity bound (P4)");
        }));
    }
    let invalidator = invalidate.then(|| {
        let pool = pool.clone();
        future::spawn(async move {
            pool.invalidate(&0).await;
            assert!(pool.len() <= 1, "capacity bound (P4)");
        })
    });
    for task in tasks {
        block_on(task).expect("caller finished");
    }
    if let Some(invalidator) = invalidator {
        block_on(invalidator).expect("invalidator finished");
    }
    let report = block_on(pool.shutdown());
    assert!(pool.is_empty());
    drain(&runtime);
    shared_pool.lock().unwrap().take();
    assert_eq!(
        retired.load(Ordering::SeqCst),
        created.load(Ordering::SeqCst),
        "every value retired exactly once (P5); shutdown: {report:?}"
    );
    drop(context);
}

// covers P1, P4, P5: every schedule of two callers of key 0 and one of key 1, which evicts
// key 0 from a pool of one, possibly while key 0's handles are still held.
#[test]
fn keyed_pool_every_schedule_of_a_capacity_eviction() {
    let schedules = exhaustive(
        "keyed pool, callers of keys 0, 0, 1, capacity 1",
        250_000,
        || keyed_pool_model(&[0, 0, 1], &[Make::Pooled; 3], false),
    );
    assert!(schedules > 1_000, "the model explores real interleavings");
}

// covers P1, P5, P7: every schedule of two callers of one key and an invalidation of it,
// racing the creation.
#[test]
fn keyed_pool_every_schedule_of_an_invalidation_racing_a_creation() {
    exhaustive(
        "keyed pool, callers of keys 0, 0 + invalidate",
        250_000,
        || keyed_pool_model(&[0, 0], &[Make::Pooled; 2], true),
    );
}

// covers P2, P6: every schedule of two callers of one key whose values expire at once or are
// one-shots, and an invalidation of the key.
#[test]
fn keyed_pool_every_schedule_of_expired_and_one_shot_values() {
    exhaustive(
        "keyed pool, expired + one-shot values + invalidate",
        250_000,
        || keyed_pool_model(&[0, 0], &[Make::Expired, Make::OneShot], true),
    );
}

// covers P1, P2, P4, P5, P6 on a larger configuration: five callers of three keys (pooled,
// one-shot and expired values) and an invalidation, random schedules.
#[test]
fn keyed_pool_five_callers_random() {
    random("keyed pool, 5 callers + invalidate", 10_000, || {
        keyed_pool_model(
            &[0, 1, 0, 2, 1],
            &[
                Make::Pooled,
                Make::Pooled,
                Make::OneShot,
                Make::Pooled,
                Make::Expired,
            ],
            true,
        )
    });
}

// ---------------------------------------------------------------------------------------------
// TokenCache (T1 and invalidation).

/// Issues tokens numbered by fetch start (1, 2, …), yielding inside each fetch; counts fetches
/// in flight and remembers the highest token whose fetch completed.
#[derive(Debug, Default)]
struct Numbered {
    started: AtomicU64,
    completed: AtomicU64,
    in_flight: AtomicUsize,
}

impl TokenSource for Numbered {
    type Token = u64;
    type Error = std::io::Error;

    async fn fetch(&self) -> Result<Fetched<u64>, std::io::Error> {
        let token = self.started.fetch_add(1, Ordering::SeqCst) + 1;
        assert_eq!(
            self.in_flight.fetch_add(1, Ordering::SeqCst),
            0,
            "two blocking fetches at once (T1)"
        );
        yield_now().await;
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.completed.fetch_max(token, Ordering::SeqCst);
        Ok(Fetched::new(token, Expiry::Never))
    }
}

/// `callers` tasks ask a cold cache for a token (each twice); one task invalidates it at a point
/// the scheduler picks (the 401 path). Checks: blocking fetches never overlap, and waiters share
/// them (T1: at most two fetches, one per generation); a caller never sees a token older than
/// one it saw before; a call that starts after `invalidate()` returned never gets a token that
/// was fetched (and installed) before it. The background refresh runs on `tokio::spawn`, which
/// shuttle does not drive, so tokens here never go stale: T3/T5 are `schedules.rs`'s.
fn token_cache_model(callers: usize) {
    let runtime = paused_runtime();
    let context = runtime.enter();
    let cache = TokenCache::new(Numbered::default(), RefreshConfig::default());
    let invalidated_after = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..callers {
        let (cache, invalidated_after) = (cache.clone(), invalidated_after.clone());
        tasks.push(future::spawn(async move {
            let mut seen = 0;
            for call in 0..2 {
                if call > 0 {
                    yield_now().await;
                }
                let floor = invalidated_after.load(Ordering::SeqCst);
                let token = cache.token().await.expect("the source never fails");
                assert!(token >= seen, "token {token} older than {seen}");
                assert!(
                    token > floor,
                    "token {token} was installed before an invalidation"
                );
                seen = token;
            }
        }));
    }
    let invalidator = {
        let (cache, invalidated_after) = (cache.clone(), invalidated_after.clone());
        future::spawn(async move {
            // Every token fetched so far is rejected from here on.
            let source = cache.source();
            invalidated_after.store(source.completed.load(Ordering::SeqCst), Ordering::SeqCst);
            cache.invalidate();
        })
    };
    for task in tasks {
        block_on(task).expect("caller finished");
    }
    block_on(invalidator).expect("invalidator finished");
    let fetches = cache.source().started.load(Ordering::SeqCst);
    assert!(
        (1..=2).contains(&fetches),
        "{fetches} fetches for one invalidation"
    );
    drop(context);
}

// covers T1: every schedule of two callers and an invalidation on a cold cache.
#[test]
fn token_cache_every_schedule_of_two_callers_and_an_invalidation() {
    exhaustive(
        "token cache, 2 callers x 2 calls + invalidate",
        50_000,
        || token_cache_model(2),
    );
}

// covers T1 on five callers, random schedules.
#[test]
fn token_cache_five_callers_random() {
    random(
        "token cache, 5 callers x 2 calls + invalidate",
        10_000,
        || token_cache_model(5),
    );
}

// ---------------------------------------------------------------------------------------------
// TokenCache with its background refresh (T1, T3, T4, T5).

/// A token lives 60 s and counts as expired 40 s (the default skew) before that: 20 s after it
/// is installed. A fixed stale window longer than the lifetime makes it stale at once, so every
/// call on a cached token wants a background refresh.
const LIFETIME: std::time::Duration = std::time::Duration::from_secs(60);
const USABLE: std::time::Duration = std::time::Duration::from_secs(20);

/// Issues tokens numbered by fetch start, yielding inside each fetch. Background fetches run
/// as tokio tasks (the model's driver steps the runtime they were spawned on); blocking
/// fetches run in the callers' shuttle tasks. Each kind is counted apart (T1: one blocking
/// fetch at a time; T3: one background fetch at a time); background fetches can be made to
/// fail (T4).
#[derive(Debug, Default)]
struct Stepped {
    started: AtomicU64,
    blocking: AtomicUsize,
    background: AtomicUsize,
    background_fetches: AtomicUsize,
    fail_background: bool,
    /// When each token was issued (and installed: nothing yields in between).
    issued: Mutex<HashMap<u64, tokio::time::Instant>>,
}

impl TokenSource for Stepped {
    type Token = u64;
    type Error = std::io::Error;

    async fn fetch(&self) -> Result<Fetched<u64>, std::io::Error> {
        let token = self.started.fetch_add(1, Ordering::SeqCst) + 1;
        let background = tokio::task::try_id().is_some();
        let (running, what) = if background {
            self.background_fetches.fetch_add(1, Ordering::SeqCst);
            (&self.background, "background fetches at once (T3)")
        } else {
            (&self.blocking, "blocking fetches at once (T1)")
        };
        assert_eq!(running.fetch_add(1, Ordering::SeqCst), 0, "two {what}");
        if background {
            // Deferred to the driver's next step (shuttle's own yield would wake the task at
            // once, and tokio would finish the fetch within the same step).
            tokio::task::yield_now().await;
        } else {
            yield_now().await;
        }
        running.fetch_sub(1, Ordering::SeqCst);
        if background && self.fail_background {
            return Err(std::io::Error::other("token endpoint down"));
        }
        let now = tokio::time::Instant::now();
        self.issued.lock().unwrap().insert(token, now);
        Ok(Fetched::new(token, Expiry::In(LIFETIME)))
    }
}

/// A shuttle task that steps the tokio `runtime` `steps` times (each step polls the spawned
/// background refresh once), yielding to the scheduler between steps, so the scheduler decides
/// where a background fetch starts and where it finishes.
fn spawn_driver(runtime: &Arc<tokio::runtime::Runtime>, steps: usize) -> JoinHandle<()> {
    let runtime = runtime.clone();
    future::spawn(async move {
        for step in 0..steps {
            if step > 0 {
                yield_now().await;
            }
            runtime.block_on(tokio::task::yield_now());
        }
    })
}

/// Runs in which a background result was discarded by the generation guard (T5 reached).
static GUARD_DISCARDS: AtomicUsize = AtomicUsize::new(0);
/// Runs in which a background refresh failed and callers kept the current token (T4 reached).
static BACKGROUND_FAILURES: AtomicUsize = AtomicUsize::new(0);

/// `callers` tasks make `calls` calls each on a cold cache whose tokens are stale as soon as
/// they are installed. Two more tasks, scheduled like the callers: a *driver* that steps the
/// tokio runtime `steps` times (each step polls the spawned background refresh once, so the
/// scheduler decides where a background fetch starts and where it finishes), and a *clock* that
/// moves virtual time past the token's usable life once (so a blocking refresh can overtake a
/// background one). Checks, in every schedule:
/// - no call fails (a failed background refresh keeps the current token: T4), and no call gets
///   a token that was already expired when the call began (T1);
/// - one blocking and one background fetch at most at a time (T1, T3);
/// - a call that begins after another returned token n never gets a token older than n: a
///   background result that finishes after a blocking refresh installed a newer token is
///   discarded (T5) — without the generation guard, such a result would go backwards;
/// - after a failed background refresh, no other background refresh starts for the same token
///   before the back-off (T4: virtual time moves only by the clock task, past the token's life,
///   so each token gets at most one background attempt).
fn token_background_model(callers: usize, calls: usize, steps: usize, fail_background: bool) {
    let runtime = Arc::new(paused_runtime());
    let context = runtime.enter();
    let source = Stepped {
        fail_background,
        ..Stepped::default()
    };
    let config = RefreshConfig::default()
        .stale_duration(2 * LIFETIME)
        .load_timeout(std::time::Duration::from_secs(3600));
    let cache = TokenCache::new(source, config);
    let max_returned = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..callers {
        let (cache, max_returned) = (cache.clone(), max_returned.clone());
        tasks.push(future::spawn(async move {
            for call in 0..calls {
                if call > 0 {
                    yield_now().await;
                }
                let began = tokio::time::Instant::now();
                let floor = max_returned.load(Ordering::SeqCst);
                let token = cache.token().await.expect("no call fails (T1, T4)");
                assert!(token >= floor, "token {token} older than {floor} (T5)");
                max_returned.fetch_max(token, Ordering::SeqCst);
                let issued = cache.source().issued.lock().unwrap()[&token];
                assert!(
                    issued + USABLE > began,
                    "token {token} was expired when the call began (T1)"
                );
            }
        }));
    }
    let driver = spawn_driver(&runtime, steps);
    let clock = {
        let runtime = runtime.clone();
        future::spawn(async move {
            runtime.block_on(tokio::time::advance(USABLE));
        })
    };
    for task in tasks {
        block_on(task).expect("caller finished");
    }
    block_on(driver).expect("driver finished");
    block_on(clock).expect("clock finished");
    let stats = cache.stats();
    let source = cache.source();
    let installed = source.issued.lock().unwrap().len();
    if fail_background {
        assert!(
            source.background_fetches.load(Ordering::SeqCst) <= installed,
            "more than one background attempt for a token inside its back-off (T4): {stats:?}"
        );
    }
    if stats.background_discarded > 0 {
        GUARD_DISCARDS.fetch_add(1, Ordering::Relaxed);
    }
    if stats.background_failed > 0 {
        BACKGROUND_FAILURES.fetch_add(1, Ordering::Relaxed);
    }
    drop(cache);
    drain(&runtime);
    drop(context);
}

// covers T1, T3, T5: every schedule of one caller making four calls while the driver steps the
// background refresh and the clock expires the token once — a background fetch started before
// the expiry can finish after the blocking refresh that followed it, and must be discarded.
#[test]
fn token_cache_every_schedule_of_a_background_refresh_racing_a_blocking_one() {
    exhaustive(
        "token cache, 1 caller x 4 calls, background + expiry",
        100_000,
        || token_background_model(1, 4, 3, false),
    );
    assert!(
        GUARD_DISCARDS.load(Ordering::Relaxed) > 0,
        "no schedule reached the generation guard (T5)"
    );
}

// covers T1, T4: every schedule of one caller making four calls while background refreshes
// fail — no call fails, the stale token keeps being served, one attempt per back-off.
#[test]
fn token_cache_every_schedule_of_failing_background_refreshes() {
    exhaustive(
        "token cache, 1 caller x 4 calls, failing background",
        100_000,
        || token_background_model(1, 4, 3, true),
    );
    assert!(
        BACKGROUND_FAILURES.load(Ordering::Relaxed) > 0,
        "no schedule reached a failed background refresh (T4)"
    );
}

// covers T1, T3, T4, T5 on a larger configuration: three callers making four calls each,
// six driver steps, succeeding and failing background refreshes, random schedules.
#[test]
fn token_cache_background_three_callers_random() {
    random(
        "token cache, 3 callers x 4 calls, background + expiry",
        10_000,
        || token_background_model(3, 4, 6, false),
    );
    random(
        "token cache, 3 callers x 4 calls, failing background",
        10_000,
        || token_background_model(3, 4, 6, true),
    );
}

mod invalidation;
