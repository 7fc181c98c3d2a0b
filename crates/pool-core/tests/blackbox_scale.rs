//! Black-box scale and eviction suite for pool-core (issue 23: O(log n) capacity eviction, no
//! 0 %-hit cliff one key past capacity, thrashing counted; SPEC P1–P10, X4, X5), through the
//! public API only. Virtual time wherever time matters; costs are checked by counting factory
//! calls and key operations, never by the wall clock.

use std::cell::Cell;
use std::collections::HashMap;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use pool_core::{
    BoxError, Created, EvictionCause, KeyedPool, PoolConfig, PoolError, PoolStats, Pooled, Retire,
};
use tokio::sync::Notify;
use tokio::time::{Instant, advance};

#[derive(Debug, thiserror::Error)]
#[error("factory failed on purpose")]
struct Boom;

/// What happened to every value a test built: factory calls, retires (per value) and drops.
#[derive(Default)]
struct Ledger {
    built: AtomicUsize,
    retired: AtomicUsize,
    dropped: AtomicUsize,
    /// serial → number of retire calls on that value.
    retires_per_value: Mutex<HashMap<u64, usize>>,
    /// Keys of retired values, in retire order.
    retired_keys: Mutex<Vec<u64>>,
    /// key → factory calls for that key.
    built_per_key: Mutex<HashMap<u64, usize>>,
}

impl Ledger {
    fn built(&self) -> usize {
        self.built.load(SeqCst)
    }
    fn retired(&self) -> usize {
        self.retired.load(SeqCst)
    }
    fn dropped(&self) -> usize {
        self.dropped.load(SeqCst)
    }
    fn built_for(&self, key: u64) -> usize {
        self.built_per_key
            .lock()
            .unwrap()
            .get(&key)
            .copied()
            .unwrap_or(0)
    }
    fn retired_keys(&self) -> Vec<u64> {
        self.retired_keys.lock().unwrap().clone()
    }
    fn max_retires_of_one_value(&self) -> usize {
        self.retires_per_value
            .lock()
            .unwrap()
            .values()
            .copied()
            .max()
            .unwrap_or(0)
    }
}

type Pool = KeyedPool<u64, Val>;
type Reentry = Arc<dyn Fn(Pool, u64) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// What a value's retire does besides recording itself.
#[derive(Clone, Default)]
enum Hook {
    #[default]
    Nothing,
    /// Call back into the pool from inside `retire` (must not deadlock: P5).
    Reenter(Arc<OnceLock<Pool>>, Reentry),
}

struct Val {
    key: u64,
    serial: u64,
    ledger: Arc<Ledger>,
    hook: Hook,
}

impl Val {
    fn new(key: u64, ledger: &Arc<Ledger>, hook: Hook) -> Self {
        let serial = ledger.built.fetch_add(1, SeqCst) as u64;
        *ledger.built_per_key.lock().unwrap().entry(key).or_default() += 1;
        Self {
            key,
            serial,
            ledger: ledger.clone(),
            hook,
        }
    }
}

impl Drop for Val {
    fn drop(&mut self) {
        self.ledger.dropped.fetch_add(1, SeqCst);
    }
}

impl Retire for Val {
    fn retire(&self) -> impl Future<Output = Result<(), BoxError>> + Send {
        let reentry: Option<Pin<Box<dyn Future<Output = ()> + Send>>> = match &self.hook {
            Hook::Nothing => None,
            Hook::Reenter(pool, f) => pool.get().map(|pool| f(pool.clone(), self.key)),
        };
        async move {
            if let Some(reentry) = reentry {
                reentry.await;
            }
            self.ledger.retired.fetch_add(1, SeqCst);
            *self
                .ledger
                .retires_per_value
                .lock()
                .unwrap()
                .entry(self.serial)
                .or_default() += 1;
            self.ledger.retired_keys.lock().unwrap().push(self.key);
            Ok(())
        }
    }
}

async fn fetch(pool: &Pool, key: u64, ledger: &Arc<Ledger>) -> Pooled<Val> {
    let handle = pool
        .get_or_create(&key, || async move {
            Ok::<_, Boom>(Created::new(Val::new(key, ledger, Hook::Nothing)))
        })
        .await
        .expect("created");
    assert_eq!(handle.key, key, "a lookup of {key} got another key's value");
    handle
}

async fn fetch_until(
    pool: &Pool,
    key: u64,
    ledger: &Arc<Ledger>,
    deadline: Instant,
) -> Pooled<Val> {
    let handle = pool
        .get_or_create(&key, || async move {
            Ok::<_, Boom>(Created::until(
                Val::new(key, ledger, Hook::Nothing),
                deadline,
            ))
        })
        .await
        .expect("created");
    assert_eq!(handle.key, key, "a lookup of {key} got another key's value");
    handle
}

/// Let background retires (spawned on the test's runtime) run.
async fn settle() {
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
}

/// Yield until `done` holds (background retires on a multi-thread runtime), without sleeping.
async fn settle_until(mut done: impl FnMut() -> bool) -> bool {
    for _ in 0..200_000 {
        if done() {
            return true;
        }
        tokio::task::yield_now().await;
    }
    done()
}

fn hits_and_misses(stats: &PoolStats) -> (u64, u64) {
    (stats.hits, stats.misses)
}

/// Run a scenario on its own thread with a paused current-thread runtime and fail (instead of
/// hanging the suite) if it does not finish: a deadlock on a pool lock would block that thread.
/// The bound is a watchdog for a hang, not a timing assertion.
fn run_or_report_deadlock<F, Fut>(what: &str, scenario: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + 'static,
{
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name(format!("deadlock-watch-{what}"))
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()
                .unwrap();
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                runtime.block_on(scenario())
            }));
            let _ = tx.send(outcome.map_err(|panic| {
                panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default()
            }));
        })
        .unwrap();
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(Ok(())) => {}
        Ok(Err(message)) => panic!("{what}: scenario failed: {message}"),
        Err(_) => {
            panic!("{what}: deadlock: the scenario did not finish (a retire re-entered the pool)")
        }
    }
}

// ---------------------------------------------------------------------------------------------
// P4: capacity is never exceeded, and the books balance, under concurrent inserts.
// ---------------------------------------------------------------------------------------------

/// `tasks` tasks on 4 worker threads make 500 lookups each over 300 keys in a pool of `cap`,
/// while a watcher samples `len()` and `stats().entries`. Returns the largest size seen. Checks
/// the books at the end: every created entry is in the pool or was evicted exactly once, every
/// eviction was retired exactly once, hits + misses equals the lookups.
async fn concurrent_inserts(cap: usize, tasks: u64) -> usize {
    const PER_TASK: u64 = 500;
    let ledger = Arc::new(Ledger::default());
    let pool = Pool::new(PoolConfig::default().max_entries(cap));
    let stop = Arc::new(AtomicBool::new(false));
    let max_seen = Arc::new(AtomicUsize::new(0));

    let watcher = {
        let (pool, stop, max_seen) = (pool.clone(), stop.clone(), max_seen.clone());
        tokio::spawn(async move {
            while !stop.load(SeqCst) {
                max_seen.fetch_max(pool.len(), SeqCst);
                max_seen.fetch_max(pool.stats().entries, SeqCst);
                tokio::task::yield_now().await;
            }
        })
    };
    let mut handles = Vec::new();
    for t in 0..tasks {
        let (pool, ledger, max_seen) = (pool.clone(), ledger.clone(), max_seen.clone());
        handles.push(tokio::spawn(async move {
            let mut x: u64 = 0x9E37_79B9_7F4A_7C15 ^ (t + 1);
            for _ in 0..PER_TASK {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let key = x % 300;
                let handle = fetch(&pool, key, &ledger).await;
                max_seen.fetch_max(pool.len(), SeqCst);
                drop(handle);
                if key.is_multiple_of(7) {
                    tokio::task::yield_now().await;
                }
            }
        }));
    }
    for handle in handles {
        handle.await.unwrap();
    }
    stop.store(true, SeqCst);
    watcher.await.unwrap();

    let stats = pool.stats();
    assert_eq!(stats.entries, pool.len());
    assert!(
        pool.len() <= cap,
        "at rest: {} entries over {cap}",
        pool.len()
    );
    assert_eq!(
        stats.hits + stats.misses,
        tasks * PER_TASK,
        "hits + misses must equal lookups: {stats:?}"
    );
    assert_eq!(
        stats.creations as usize,
        ledger.built(),
        "one creation per factory call"
    );
    assert_eq!(
        stats.creations,
        pool.len() as u64 + stats.evictions.total(),
        "every created entry is pooled or was evicted once: {stats:?}"
    );
    assert_eq!(stats.evictions.capacity, stats.evictions.total());
    let evicted = stats.evictions.total() as usize;
    assert!(
        settle_until(|| ledger.retired() >= evicted).await,
        "evicted {evicted} but retired {}",
        ledger.retired()
    );
    assert_eq!(ledger.retired(), evicted, "retired more than evicted");
    assert_eq!(
        ledger.max_retires_of_one_value(),
        1,
        "a value was retired twice"
    );
    assert_eq!(stats.retire_failures, 0);
    // Retired victims are not kept alive by the retire queue.
    assert!(settle_until(|| ledger.dropped() == evicted).await);
    assert_eq!(ledger.dropped(), evicted);
    max_seen.load(SeqCst)
}

// P4, P9, P5: 32 inserters on 4 threads over a pool of 2 (and 8 over 16). The books balance and
// the size never runs away with the number of concurrent inserters (no check-then-insert race):
// at most one over, transiently (see the ignored test below), and within capacity at rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn p4_capacity_holds_under_concurrent_inserts_and_the_books_balance() {
    for (cap, tasks) in [(2, 32), (16, 8)] {
        let max = concurrent_inserts(cap, tasks).await;
        assert!(
            max <= cap + 1,
            "{tasks} inserters: the pool reported {max} entries with max_entries {cap}"
        );
    }
}

// P4: "when inserting would exceed max_entries, the entry with the soonest deadline is evicted
// first"; PoolStats::entries is "entries in the pool now". Before 04c6793 len() and
// stats().entries were seen at max_entries + 1 under concurrent inserts (3 with max_entries 2,
// 17 with 16, every run): the insert came before the eviction.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn p4_len_never_reports_more_than_max_entries_under_concurrent_inserts() {
    for (cap, tasks) in [(2, 32), (16, 8)] {
        let max = concurrent_inserts(cap, tasks).await;
        assert!(
            max <= cap,
            "{tasks} inserters: the pool reported {max} entries with max_entries {cap}"
        );
    }
}

// P4, P5, P9: concurrent inserts mixed with every other removal path (invalidate, evict_where,
// prune_idle, reset) never retire one value twice, never lose one, and keep the books balanced.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn p4_concurrent_inserts_and_removals_retire_each_value_exactly_once() {
    const CAP: usize = 8;
    let ledger = Arc::new(Ledger::default());
    let pool = Pool::new(PoolConfig::default().max_entries(CAP));
    let mut tasks = Vec::new();
    for t in 0..6u64 {
        let (pool, ledger) = (pool.clone(), ledger.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..400u64 {
                let key = (i * 7 + t * 13) % 40;
                match (i + t) % 10 {
                    0 => {
                        pool.invalidate(&key).await;
                    }
                    1 if t == 0 => {
                        pool.evict_where(EvictionCause::OwnerGone, |k, _| k % 5 == 0)
                            .await;
                    }
                    2 if t == 1 => {
                        pool.prune_idle(Duration::ZERO).await;
                    }
                    3 if t == 2 && i % 100 == 3 => {
                        pool.reset().await;
                    }
                    _ => {
                        drop(fetch(&pool, key, &ledger).await);
                    }
                }
                assert!(pool.len() <= CAP + 1, "len {} > {CAP} + 1", pool.len());
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let stats = pool.stats();
    assert_eq!(
        stats.creations,
        pool.len() as u64 + stats.evictions.total(),
        "every created entry is pooled or was evicted once: {stats:?}"
    );
    pool.reset().await;
    let built = ledger.built();
    assert!(
        settle_until(|| ledger.retired() >= built).await,
        "built {built}, retired {} after reset",
        ledger.retired()
    );
    assert_eq!(ledger.retired(), built);
    assert_eq!(
        ledger.max_retires_of_one_value(),
        1,
        "a value was retired twice"
    );
    assert!(settle_until(|| ledger.dropped() == built).await);
    assert_eq!(pool.stats().creations as usize, built);
}

// ---------------------------------------------------------------------------------------------
// Issue 23 / X4: no 0 %-hit cliff one key past capacity.
// ---------------------------------------------------------------------------------------------

/// Cycle `keys` keys round-robin `rounds` times (advancing `step` of virtual time per lookup);
/// returns (hits, lookups, factory calls) over the rounds after the first two (steady state).
async fn cycle(
    pool: &Pool,
    ledger: &Arc<Ledger>,
    keys: u64,
    rounds: u64,
    step: Duration,
) -> (u64, u64, usize) {
    let mut before = (0, 0);
    let mut built_before = 0;
    for round in 0..rounds {
        if round == 2 {
            before = hits_and_misses(&pool.stats());
            built_before = ledger.built();
        }
        for key in 0..keys {
            drop(fetch(pool, key, ledger).await);
            if !step.is_zero() {
                advance(step).await;
            }
        }
        settle().await;
    }
    let after = hits_and_misses(&pool.stats());
    let hits = after.0 - before.0;
    let lookups = hits + after.1 - before.1;
    (hits, lookups, ledger.built() - built_before)
}

fn assert_hit_rate(what: &str, (hits, lookups, built): (u64, u64, usize), at_least: f64) {
    let rate = hits as f64 / lookups as f64;
    assert!(
        rate >= at_least,
        "{what}: {hits} hits of {lookups} lookups ({:.1} %), {built} rebuilds; want >= {:.0} %",
        rate * 100.0,
        at_least * 100.0
    );
}

// Issue 23: "a cycle of 33 over a capacity of 32 keeps >= 90 % hits", with the k8s-session
// shape (uniform 300 s TTL, 1 ms of virtual time between lookups). Cost counted in factory
// calls: at most 2 rebuilds per round of 33 (the issue's cliff was a rebuild on every call).
#[tokio::test(start_paused = true)]
async fn x4_cycle_of_capacity_plus_one_keeps_90_percent_hits_with_ttl() {
    let ledger = Arc::new(Ledger::default());
    let pool = Pool::new(
        PoolConfig::default()
            .max_entries(32)
            .ttl(Duration::from_secs(300)),
    );
    let steady = cycle(&pool, &ledger, 33, 12, Duration::from_millis(1)).await;
    assert_hit_rate("33 over 32, ttl 300 s", steady, 0.90);
    assert!(steady.2 <= 2 * 10, "{} rebuilds in 10 rounds", steady.2);
    assert!(pool.len() <= 32);
}

// The same without any deadline (no TTL, no factory deadline: ties broken by last use) and
// with the whole cycle at one virtual instant (every deadline equal).
#[tokio::test(start_paused = true)]
async fn x4_cycle_of_capacity_plus_one_keeps_90_percent_hits_without_deadlines() {
    let ledger = Arc::new(Ledger::default());
    let pool = Pool::new(PoolConfig::default().max_entries(32));
    let steady = cycle(&pool, &ledger, 33, 12, Duration::ZERO).await;
    assert_hit_rate("33 over 32, no ttl", steady, 0.90);

    let ledger = Arc::new(Ledger::default());
    let pool = Pool::new(
        PoolConfig::default()
            .max_entries(32)
            .ttl(Duration::from_secs(300)),
    );
    let steady = cycle(&pool, &ledger, 33, 12, Duration::ZERO).await;
    assert_hit_rate("33 over 32, equal deadlines", steady, 0.90);
}

// The same when the deadlines come from the factory (`Created::until`, e.g. a credential's
// expiry), not from the pool's TTL.
#[tokio::test(start_paused = true)]
async fn x4_cycle_of_capacity_plus_one_with_factory_deadlines() {
    let ledger = Arc::new(Ledger::default());
    let pool = Pool::new(PoolConfig::default().max_entries(32));
    let mut before = (0, 0);
    for round in 0..12 {
        if round == 2 {
            before = hits_and_misses(&pool.stats());
        }
        for key in 0..33 {
            let deadline = Instant::now() + Duration::from_secs(3600);
            drop(fetch_until(&pool, key, &ledger, deadline).await);
            advance(Duration::from_millis(1)).await;
        }
        settle().await;
    }
    let after = hits_and_misses(&pool.stats());
    let hits = after.0 - before.0;
    assert_hit_rate(
        "33 over 32, Created::until",
        (hits, hits + after.1 - before.1, 0),
        0.90,
    );
}

// k8s-session's maximum (4 096) and blob-pool's (65 536, beyond the 16 384 where the ghost
// table stops growing with the capacity): capacity + 1 still keeps >= 90 % hits.
#[tokio::test(start_paused = true)]
async fn x4_cycle_of_capacity_plus_one_at_the_crates_maximum_sizes() {
    for cap in [4096u64, 65_536] {
        let ledger = Arc::new(Ledger::default());
        let pool = Pool::new(
            PoolConfig::default()
                .max_entries(cap as usize)
                .ttl(Duration::from_secs(3600)),
        );
        let steady = cycle(&pool, &ledger, cap + 1, 5, Duration::ZERO).await;
        assert_hit_rate(&format!("{} over {cap}", cap + 1), steady, 0.90);
        assert!(pool.len() as u64 <= cap);
    }
}

// docs/pool-core.md: "64 over 32 >= 40 %" (no 0 % cliff at twice the capacity either).
#[tokio::test(start_paused = true)]
async fn x4_cycle_of_twice_the_capacity_is_not_a_zero_percent_cliff() {
    let ledger = Arc::new(Ledger::default());
    let pool = Pool::new(
        PoolConfig::default()
            .max_entries(32)
            .ttl(Duration::from_secs(300)),
    );
    let steady = cycle(&pool, &ledger, 64, 12, Duration::from_millis(1)).await;
    assert_hit_rate("64 over 32", steady, 0.40);
}

// Uniformly random lookups over capacity + 1 keys (not a strict cycle): >= 90 % hits.
#[tokio::test(start_paused = true)]
async fn x4_random_lookups_over_capacity_plus_one_keep_90_percent_hits() {
    let ledger = Arc::new(Ledger::default());
    let pool = Pool::new(
        PoolConfig::default()
            .max_entries(32)
            .ttl(Duration::from_secs(3600)),
    );
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    let mut before = (0, 0);
    for i in 0..5000u64 {
        if i == 500 {
            before = hits_and_misses(&pool.stats());
        }
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        drop(fetch(&pool, x % 33, &ledger).await);
        advance(Duration::from_millis(1)).await;
        if i % 64 == 0 {
            settle().await;
        }
    }
    let after = hits_and_misses(&pool.stats());
    let hits = after.0 - before.0;
    assert_hit_rate(
        "random over 33 keys, capacity 32",
        (hits, hits + after.1 - before.1, 0),
        0.90,
    );
}

// P9: thrashing means a *recent* capacity victim came back. A key evicted 1 000 capacity
// evictions ago (250 x the capacity) is a plain miss, and it evicts the soonest deadline.
#[tokio::test(start_paused = true)]
async fn p9_a_victim_returning_long_after_is_not_thrashing() {
    let ledger = Arc::new(Ledger::default());
    let pool = Pool::new(
        PoolConfig::default()
            .max_entries(4)
            .ttl(Duration::from_secs(3600)),
    );
    for key in 0..1005u64 {
        drop(fetch(&pool, key, &ledger).await);
        advance(Duration::from_millis(1)).await;
    }
    settle().await;
    let retired_before = ledger.retired_keys().len();
    drop(fetch(&pool, 0, &ledger).await);
    settle().await;
    assert_eq!(pool.stats().thrashing, 0, "{:?}", pool.stats());
    assert_eq!(
        ledger.retired_keys()[retired_before..],
        [1001],
        "the soonest deadline goes"
    );
}

// docs "Handles and retire": an entry evicted while a handle is out is retired at once; the
// handle keeps the value alive (and usable) until it is dropped, then the value is freed.
#[tokio::test(start_paused = true)]
async fn p5_capacity_victim_with_an_outstanding_handle_is_retired_then_freed() {
    let ledger = Arc::new(Ledger::default());
    let pool = Pool::new(PoolConfig::default().max_entries(1));
    let held = fetch(&pool, 1, &ledger).await;
    drop(fetch(&pool, 2, &ledger).await);
    settle().await;
    assert_eq!(ledger.retired_keys(), vec![1]);
    assert_eq!(ledger.dropped(), 0, "the handle keeps the value alive");
    assert_eq!(held.key, 1);
    assert!(held.is_pooled());
    drop(held);
    assert_eq!(ledger.dropped(), 1);
    assert_eq!(ledger.max_retires_of_one_value(), 1);
}

// X4: no cliff a few keys past capacity either: cycles of 33 to 40 keys over a capacity of 32
// keep a stable resident subset (here >= 70 % hits; FIFO gives 0 % for every one of them).
#[tokio::test(start_paused = true)]
async fn x4_cycles_a_few_keys_past_capacity_degrade_gracefully() {
    for keys in 33..=40u64 {
        let ledger = Arc::new(Ledger::default());
        let pool = Pool::new(
            PoolConfig::default()
                .max_entries(32)
                .ttl(Duration::from_secs(3600)),
        );
        let steady = cycle(&pool, &ledger, keys, 10, Duration::from_millis(1)).await;
        assert_hit_rate(&format!("{keys} over 32"), steady, 0.70);
    }
}

// A hot key looked up between every step of a cycle over 32 other keys (33 distinct keys,
// capacity 32): once the pool has settled the hot key is never rebuilt again, and the whole
// workload keeps >= 90 % hits. (The hot key may be evicted once while protection is being
// earned: a key that never left the pool has not yet shown it comes back.)
#[tokio::test(start_paused = true)]
async fn x4_hot_key_plus_a_cycle_of_capacity_keys() {
    const HOT: u64 = 999;
    let ledger = Arc::new(Ledger::default());
    let pool = Pool::new(
        PoolConfig::default()
            .max_entries(32)
            .ttl(Duration::from_secs(3600)),
    );
    let mut before = (0, 0);
    let mut hot_builds = 0;
    for round in 0..12 {
        if round == 3 {
            before = hits_and_misses(&pool.stats());
            hot_builds = ledger.built_for(HOT);
        }
        for key in 0..32 {
            drop(fetch(&pool, HOT, &ledger).await);
            drop(fetch(&pool, key, &ledger).await);
            advance(Duration::from_millis(1)).await;
        }
        settle().await;
    }
    assert!(
        hot_builds <= 2,
        "hot key built {hot_builds} times while settling"
    );
    assert_eq!(
        ledger.built_for(HOT),
        hot_builds,
        "the hot key was evicted after the pool settled"
    );
    let after = hits_and_misses(&pool.stats());
    let hits = after.0 - before.0;
    assert_hit_rate(
        "hot key + 32-key cycle over 32",
        (hits, hits + after.1 - before.1, 0),
        0.90,
    );
}

// After a long thrashing cycle (5 keys over a capacity of 4), the workload shrinks to two of
// those keys, alternating. They fit: whatever protection the old cycle earned must age out, and
// the pair settles to all hits.
#[tokio::test(start_paused = true)]
async fn x4_after_thrashing_a_smaller_working_set_settles_to_all_hits() {
    let ledger = Arc::new(Ledger::default());
    let pool = Pool::new(
        PoolConfig::default()
            .max_entries(4)
            .ttl(Duration::from_secs(3600)),
    );
    cycle(&pool, &ledger, 5, 20, Duration::from_millis(1)).await;
    for pair in [[0u64, 1], [2, 4], [3, 4]] {
        let mut before = 0;
        for i in 0..60u64 {
            if i == 20 {
                before = pool.stats().hits;
            }
            drop(fetch(&pool, pair[(i % 2) as usize], &ledger).await);
            advance(Duration::from_millis(1)).await;
            settle().await;
        }
        let hits = pool.stats().hits - before;
        assert!(hits >= 38, "pair {pair:?}: {hits} hits of 40 lookups");
    }
}

// After thrashing (33 keys over 32), one key leaves and the other 32 fit exactly. They must
// settle to all hits within four rounds, whichever key left (one the thrashing protection had
// protected or an open one) and however fast the rounds run; once settled, nothing more counts
// as thrashing. Found by k8s-session's black-box capacity suite: the pool kept rebuilding one
// key a round (and counting it as thrashing) until the protection had filled up, about 22
// rounds, or until the key that left came within its expiry margin.
#[tokio::test(start_paused = true)]
async fn x4_a_working_set_that_shrinks_to_the_capacity_settles_within_four_rounds() {
    for step in [Duration::from_millis(1), Duration::from_secs(1)] {
        for left in [0u64, 1, 16, 29, 31, 32] {
            let ledger = Arc::new(Ledger::default());
            let pool = Pool::new(
                PoolConfig::default()
                    .max_entries(32)
                    .ttl(Duration::from_secs(3600)),
            );
            cycle(&pool, &ledger, 33, 10, step).await;
            let mut misses = Vec::new();
            let mut thrashing = Vec::new();
            for _ in 0..8 {
                let before = pool.stats().misses;
                for key in (0..33).filter(|key| *key != left) {
                    drop(fetch(&pool, key, &ledger).await);
                    advance(step).await;
                }
                settle().await;
                misses.push(pool.stats().misses - before);
                thrashing.push(pool.stats().thrashing);
            }
            assert!(
                misses[4..].iter().all(|m| *m == 0)
                    && thrashing[3..].windows(2).all(|w| w[0] == w[1]),
                "step {step:?}, key {left} left: misses per round {misses:?}, thrashing {thrashing:?}"
            );
            assert_eq!(pool.len(), 32);
        }
    }
}

// Protection earned while thrashing must be given back when protected entries leave by any
// other path (invalidate, evict_where, prune_idle, expiry found by a lookup, the sweeper,
// reset): after each, a fresh 33-over-32 cycle keeps >= 90 % hits again (leaked protection
// would leave no open place and bring the cliff back), and capacity holds.
#[tokio::test(start_paused = true)]
async fn x4_thrash_protection_recovers_after_every_removal_path() {
    let ledger = Arc::new(Ledger::default());
    let pool = Pool::new(
        PoolConfig::default()
            .max_entries(32)
            .ttl(Duration::from_secs(600))
            .sweep_interval(Duration::from_secs(1000)),
    );
    for path in 0..7 {
        let steady = cycle(&pool, &ledger, 33, 8, Duration::from_millis(1)).await;
        assert_hit_rate(&format!("cycle before removal path {path}"), steady, 0.90);
        assert!(pool.len() <= 32);
        match path {
            0 => {
                for key in 0..33 {
                    pool.invalidate(&key).await;
                }
            }
            1 => {
                pool.evict_where(EvictionCause::OwnerGone, |_, _| true)
                    .await;
            }
            2 => {
                advance(Duration::from_secs(1)).await;
                pool.prune_idle(Duration::from_millis(500)).await;
            }
            3 => {
                advance(Duration::from_secs(601)).await;
                for key in 0..33 {
                    assert!(pool.get(&key).is_none());
                }
            }
            4 => {
                advance(Duration::from_secs(1001)).await;
                settle().await;
            }
            5 => {
                pool.reset().await;
            }
            _ => {
                // Half the protected entries leave, half stay.
                for key in (0..33).step_by(2) {
                    pool.invalidate(&key).await;
                }
            }
        }
        if path != 6 {
            assert_eq!(pool.len(), 0, "path {path}: {:?}", pool.stats());
        }
        settle().await;
    }
    // After a partial removal the cycle settles within a few rounds (one dip to about half a
    // round's hits on the way); measure once it has.
    cycle(&pool, &ledger, 33, 4, Duration::from_millis(1)).await;
    let steady = cycle(&pool, &ledger, 33, 8, Duration::from_millis(1)).await;
    assert_hit_rate("cycle after every removal path", steady, 0.90);
    settle().await;
    let stats = pool.stats();
    assert_eq!(stats.creations, pool.len() as u64 + stats.evictions.total());
    assert_eq!(ledger.retired() as u64, stats.evictions.total());
}

// The same after concurrent churn: 6 tasks on 4 threads mixing inserts of 40 keys with
// invalidate and evict_where on a pool of 8, then a 9-over-8 cycle must still keep its stable
// subset (>= (8 - 1) / 9 of lookups, less a margin) — protection accounting survives races.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn x4_thrash_protection_survives_concurrent_churn() {
    let ledger = Arc::new(Ledger::default());
    let pool = Pool::new(PoolConfig::default().max_entries(8));
    for _ in 0..3 {
        let mut tasks = Vec::new();
        for t in 0..6u64 {
            let (pool, ledger) = (pool.clone(), ledger.clone());
            tasks.push(tokio::spawn(async move {
                for i in 0..400u64 {
                    let key = (i * 7 + t * 13) % 40;
                    match (i + t) % 9 {
                        0 => {
                            pool.invalidate(&key).await;
                        }
                        1 if t == 0 => {
                            pool.evict_where(EvictionCause::OwnerGone, |k, _| k % 3 == 0)
                                .await;
                        }
                        _ => drop(fetch(&pool, key, &ledger).await),
                    }
                    assert!(pool.len() <= 8, "len {}", pool.len());
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        // Single task, strict cycle over 9 keys, one round per millisecond. The pool records
        // uses to the millisecond (a hit writes its entry at most once a millisecond), so an
        // entry protected during the churn and not used since can only be told apart from the
        // cycle's keys once the clock has moved on: run back to back, a whole cycle fits in
        // under a millisecond of real time and such an entry kept its place (6 of 9 hits, one
        // run in ten under load). The rounds run on a paused clock that moves 1 ms per round.
        let (cycle_pool, cycle_ledger) = (pool.clone(), ledger.clone());
        tokio::task::block_in_place(|| {
            run_or_report_deadlock("9 over 8 after concurrent churn", move || async move {
                let mut before = (0, 0);
                for round in 0..12 {
                    if round == 3 {
                        before = hits_and_misses(&cycle_pool.stats());
                    }
                    for key in 100..109 {
                        drop(fetch(&cycle_pool, key, &cycle_ledger).await);
                    }
                    advance(Duration::from_millis(1)).await;
                }
                let after = hits_and_misses(&cycle_pool.stats());
                let hits = after.0 - before.0;
                assert_hit_rate(
                    "9 over 8 after concurrent churn",
                    (hits, hits + after.1 - before.1, 0),
                    0.70,
                );
            });
        });
    }
    let stats = pool.stats();
    assert_eq!(stats.creations, pool.len() as u64 + stats.evictions.total());
}

// Long virtual time with a short TTL: 33 over 32, TTL 60 s (margin 10 s), a lookup every
// 100 ms for two virtual hours. Entries keep expiring (an inherent rebuild per key per TTL);
// protection must keep working across expiries rather than decay into the cliff.
#[tokio::test(start_paused = true)]
async fn x4_cycle_over_many_ttls_keeps_its_hit_rate() {
    let ledger = Arc::new(Ledger::default());
    let pool = Pool::new(
        PoolConfig::default()
            .max_entries(32)
            .ttl(Duration::from_secs(60))
            .expiry_margin(Duration::from_secs(10)),
    );
    let mut rates = Vec::new();
    for _hour_half in 0..4 {
        let before = hits_and_misses(&pool.stats());
        // 30 virtual minutes = 18 000 lookups.
        for i in 0..18_000u64 {
            drop(fetch(&pool, i % 33, &ledger).await);
            advance(Duration::from_millis(100)).await;
            if i % 500 == 0 {
                settle().await;
            }
        }
        let after = hits_and_misses(&pool.stats());
        let hits = after.0 - before.0;
        rates.push(hits as f64 / (hits + after.1 - before.1) as f64);
        assert!(pool.len() <= 32);
    }
    assert!(
        rates.iter().all(|r| *r >= 0.75),
        "hit rate per half hour: {rates:?}"
    );
}

// Capacity 2, three keys cycling: one place protected, one open; at least a third of the
// lookups hit (FIFO and LRU give none).
#[tokio::test(start_paused = true)]
async fn x4_capacity_two_cycle_of_three() {
    let ledger = Arc::new(Ledger::default());
    let pool = Pool::new(
        PoolConfig::default()
            .max_entries(2)
            .ttl(Duration::from_secs(3600)),
    );
    let steady = cycle(&pool, &ledger, 3, 30, Duration::from_millis(1)).await;
    assert_hit_rate("3 over 2", steady, 0.30);
}

// A working set that moves on still replaces the old one: after a long thrashing cycle over
// keys 0..33, a new set of 32 keys is fully resident after one round.
#[tokio::test(start_paused = true)]
async fn x4_new_working_set_replaces_a_thrashing_one() {
    let ledger = Arc::new(Ledger::default());
    let pool = Pool::new(
        PoolConfig::default()
            .max_entries(32)
            .ttl(Duration::from_secs(3600)),
    );
    cycle(&pool, &ledger, 33, 8, Duration::from_millis(1)).await;
    for round in 0..4 {
        let before = pool.stats().hits;
        for key in 1000..1032 {
            drop(fetch(&pool, key, &ledger).await);
            advance(Duration::from_millis(1)).await;
        }
        settle().await;
        if round >= 1 {
            assert_eq!(
                pool.stats().hits - before,
                32,
                "round {round} of the new working set missed"
            );
        }
    }
}

// X4 / P4 thrashing protection must not pin entries nobody uses any more. Four entries are
// hit once, then the workload becomes two keys alternating in a pool of capacity 4: the two
// fit, so once they are resident every lookup should hit. Protecting "hit since insertion"
// entries against returning capacity victims must not turn a working set half the capacity
// into a 0 %-hit loop until the stale entries' TTL runs out (without a TTL: forever), as it
// did before 04c6793 (0 hits of 180).
#[tokio::test(start_paused = true)]
async fn x4_small_working_set_is_not_starved_by_stale_protected_entries() {
    let ledger = Arc::new(Ledger::default());
    let pool = Pool::new(PoolConfig::default().max_entries(4));
    // a, b, c, d: inserted and used once each, then never again.
    for key in [1, 2, 3, 4] {
        drop(fetch(&pool, key, &ledger).await);
        advance(Duration::from_secs(1)).await;
        drop(fetch(&pool, key, &ledger).await);
    }
    // The new workload: 10 and 1 (a returning victim) alternate.
    let mut before = 0;
    for i in 0..200u64 {
        if i == 20 {
            before = pool.stats().hits;
        }
        let key = if i % 2 == 0 { 10 } else { 1 };
        drop(fetch(&pool, key, &ledger).await);
        advance(Duration::from_secs(1)).await;
        settle().await;
    }
    let hits = pool.stats().hits - before;
    assert!(
        hits >= 170,
        "two keys alternating in a pool of 4: {hits} hits of 180 lookups; factory called {} \
         times for key 10 and {} for key 1",
        ledger.built_for(10),
        ledger.built_for(1)
    );
}

// The same starvation with a TTL: the stale entries would go when they reach their margin,
// but until then (here 10 virtual minutes) the two-key working set must already hit.
#[tokio::test(start_paused = true)]
async fn x4_small_working_set_is_not_starved_with_a_ttl() {
    let ledger = Arc::new(Ledger::default());
    let pool = Pool::new(
        PoolConfig::default()
            .max_entries(4)
            .ttl(Duration::from_secs(3600)),
    );
    for key in [1, 2, 3, 4] {
        drop(fetch(&pool, key, &ledger).await);
        advance(Duration::from_secs(1)).await;
        drop(fetch(&pool, key, &ledger).await);
    }
    let mut before = 0;
    for i in 0..600u64 {
        if i == 20 {
            before = pool.stats().hits;
        }
        let key = if i % 2 == 0 { 10 } else { 1 };
        drop(fetch(&pool, key, &ledger).await);
        advance(Duration::from_secs(1)).await;
        settle().await;
    }
    let hits = pool.stats().hits - before;
    assert!(
        hits >= 500,
        "two keys alternating in a pool of 4 with a 1 h TTL: {hits} hits of 580 lookups"
    );
}

// Issue 23's motivating workload, k8s-session polling: each tick visits every cluster, and a
// visit looks its session up twice (two GETs per cluster, each through `get_or_create`). Over
// 33 clusters with capacity 32 this is still "a cycle of 33 over a capacity of 32", which must
// keep >= 90 % hits; here every entry is hit right after insertion, so "protect entries hit since
// insertion" protected all of them before 04c6793 and eviction fell back to FIFO: every visit's
// first lookup rebuilt (the issue's cliff: a rebuild and TLS handshake per cluster per tick;
// 50 % hits, 33 rebuilds per tick).
#[tokio::test(start_paused = true)]
async fn x4_cycle_of_capacity_plus_one_with_two_lookups_per_visit() {
    let ledger = Arc::new(Ledger::default());
    let pool = Pool::new(
        PoolConfig::default()
            .max_entries(32)
            .ttl(Duration::from_secs(300)),
    );
    let mut before = (0, 0);
    let mut built_before = 0;
    for tick in 0..12 {
        if tick == 2 {
            before = hits_and_misses(&pool.stats());
            built_before = ledger.built();
        }
        for cluster in 0..33 {
            drop(fetch(&pool, cluster, &ledger).await);
            drop(fetch(&pool, cluster, &ledger).await);
            advance(Duration::from_millis(1)).await;
        }
        settle().await;
    }
    let after = hits_and_misses(&pool.stats());
    let hits = after.0 - before.0;
    let lookups = hits + after.1 - before.1;
    assert_hit_rate(
        "33 clusters over 32, two lookups per visit",
        (hits, lookups, ledger.built() - built_before),
        0.90,
    );
}

// A working set that shifts but still fits: 32 keys in use, then half of them stay and 16 new
// ones join (32 keys, exactly the capacity). The new keys evict the oldest entries, which
// include the half still in use; when those come back they are "returning capacity victims", so
// they must not be locked out by the 16 entries nobody uses any more (hit long ago, hence
// protected). With plain soonest-deadline eviction this converges to 100 % hits in one round;
// before 04c6793 it stayed at 47 %.
#[tokio::test(start_paused = true)]
async fn x4_shifted_working_set_that_fits_converges_to_all_hits() {
    let ledger = Arc::new(Ledger::default());
    let pool = Pool::new(
        PoolConfig::default()
            .max_entries(32)
            .ttl(Duration::from_secs(3600)),
    );
    for _ in 0..3 {
        for key in 0..32 {
            drop(fetch(&pool, key, &ledger).await);
            advance(Duration::from_millis(1)).await;
        }
    }
    let working: Vec<u64> = (0..16).chain(100..116).collect();
    let mut before = 0;
    for round in 0..10 {
        if round == 3 {
            before = pool.stats().hits;
        }
        for &key in &working {
            drop(fetch(&pool, key, &ledger).await);
            advance(Duration::from_millis(1)).await;
        }
        settle().await;
    }
    let hits = pool.stats().hits - before;
    let lookups = 7 * 32;
    assert!(
        hits as f64 >= 0.9 * lookups as f64,
        "a working set of exactly the capacity: {hits} hits of {lookups} lookups"
    );
}

// ---------------------------------------------------------------------------------------------
// Eviction order: soonest deadline, and "an entry within its safety margin goes first" even
// while thrashing.
// ---------------------------------------------------------------------------------------------

// P4: without thrashing, the soonest deadline goes, whatever was hit; a factory deadline
// shorter than the TTL counts (P2: deadline = min(created + ttl, factory deadline)).
#[tokio::test(start_paused = true)]
async fn p4_soonest_deadline_goes_first_including_factory_deadlines() {
    let ledger = Arc::new(Ledger::default());
    let pool = Pool::new(
        PoolConfig::default()
            .max_entries(3)
            .ttl(Duration::from_secs(3600)),
    );
    drop(fetch(&pool, 1, &ledger).await); // deadline +3600
    advance(Duration::from_secs(1)).await;
    let short = Instant::now() + Duration::from_secs(600);
    drop(fetch_until(&pool, 2, &ledger, short).await); // deadline +601
    advance(Duration::from_secs(1)).await;
    drop(fetch(&pool, 3, &ledger).await); // deadline +3602
    for key in [1, 2, 3] {
        drop(pool.get(&key).expect("resident"));
    }
    drop(fetch(&pool, 4, &ledger).await);
    settle().await;
    assert_eq!(
        ledger.retired_keys(),
        vec![2],
        "key 2 has the soonest deadline"
    );
    drop(fetch(&pool, 5, &ledger).await);
    settle().await;
    assert_eq!(
        ledger.retired_keys(),
        vec![2, 1],
        "then key 1 (created first)"
    );
    assert_eq!(pool.stats().evictions.capacity, 2);
    assert_eq!(pool.stats().thrashing, 0, "new keys are not thrashing");
}

// Issue 23: "Keep 'an entry about to expire goes first' for entries within their safety
// margin." While the pool thrashes (a capacity victim comes straight back), an entry within
// `expiry_margin` of its deadline is evicted, not the newest entry that was never hit.
#[tokio::test(start_paused = true)]
async fn issue23_entry_within_margin_goes_first_while_thrashing() {
    let ledger = Arc::new(Ledger::default());
    let pool = Pool::new(
        PoolConfig::default()
            .max_entries(3)
            .ttl(Duration::from_secs(3600))
            .expiry_margin(Duration::from_secs(60)),
    );
    drop(fetch(&pool, 1, &ledger).await); // A
    advance(Duration::from_secs(1)).await;
    drop(fetch(&pool, 2, &ledger).await); // B
    advance(Duration::from_secs(1)).await;
    drop(fetch(&pool, 3, &ledger).await); // C: never hit
    advance(Duration::from_secs(1)).await;
    drop(fetch(&pool, 4, &ledger).await); // D (new): evicts A, the soonest deadline
    settle().await;
    assert_eq!(ledger.retired_keys(), vec![1]);
    assert!(pool.invalidate(&4).await);
    // S: a factory deadline 100 s out (outside the 60 s margin for now), hit since insertion.
    let s_deadline = Instant::now() + Duration::from_secs(100);
    drop(fetch_until(&pool, 5, &ledger, s_deadline).await);
    drop(pool.get(&5).expect("S resident"));
    drop(pool.get(&2).expect("B resident"));
    // 50 s later S is within its margin; C is the newest entry not hit since insertion.
    advance(Duration::from_secs(50)).await;
    let thrashing = pool.stats().thrashing;
    drop(fetch(&pool, 1, &ledger).await); // A comes straight back.
    settle().await;
    assert_eq!(
        pool.stats().thrashing,
        thrashing + 1,
        "A's return is a thrashing miss"
    );
    assert_eq!(
        ledger.retired_keys(),
        vec![1, 4, 5],
        "the entry within its margin (5) goes first, not the unhit newest entry (3)"
    );
    assert!(pool.get(&3).is_some() && pool.get(&2).is_some());
}

// docs: "a margin >= the TTL means plain soonest-deadline eviction (no thrashing protection)";
// SPEC X5: never a panic. TTL 10 s with a 1 h margin: every entry is always within its margin.
#[tokio::test(start_paused = true)]
async fn x5_expiry_margin_larger_than_ttl_is_plain_soonest_deadline() {
    let ledger = Arc::new(Ledger::default());
    let pool = Pool::new(
        PoolConfig::default()
            .max_entries(4)
            .ttl(Duration::from_secs(10))
            .expiry_margin(Duration::from_secs(3600)),
    );
    for key in 1..=4 {
        drop(fetch(&pool, key, &ledger).await);
        advance(Duration::from_millis(100)).await;
    }
    drop(pool.get(&1).expect("1 resident")); // a hit does not save the soonest deadline
    drop(fetch(&pool, 5, &ledger).await);
    settle().await;
    assert_eq!(ledger.retired_keys(), vec![1]);
    // 1 returns (thrashing): plain soonest deadline evicts 2, not the unhit newest entry 5.
    drop(fetch(&pool, 1, &ledger).await);
    settle().await;
    assert_eq!(ledger.retired_keys(), vec![1, 2]);
    assert_eq!(pool.stats().thrashing, 1);
    // And a long cycle: no panic, capacity kept, nothing expired handed out.
    for i in 0..200u64 {
        let handle = fetch(&pool, i % 5, &ledger).await;
        assert!(handle.deadline().is_none_or(|d| d > Instant::now()));
        advance(Duration::from_millis(300)).await;
        assert!(pool.len() <= 4);
    }
}

// ---------------------------------------------------------------------------------------------
// P9: thrashing is counted exactly, and only for returning capacity victims.
// ---------------------------------------------------------------------------------------------

// Every miss after the first round of a capacity + 1 cycle is a key a capacity eviction
// removed recently: thrashing = misses - (capacity + 1). A stream of new keys never thrashes;
// keys that left through invalidate or expiry and come back are not thrashing either.
#[tokio::test(start_paused = true)]
async fn p9_thrashing_counts_returning_capacity_victims_only() {
    let ledger = Arc::new(Ledger::default());
    let pool = Pool::new(
        PoolConfig::default()
            .max_entries(8)
            .ttl(Duration::from_secs(300)),
    );
    cycle(&pool, &ledger, 9, 10, Duration::from_millis(1)).await;
    let stats = pool.stats();
    assert!(stats.thrashing > 0, "{stats:?}");
    assert_eq!(stats.thrashing, stats.misses - 9, "{stats:?}");
    assert_eq!(stats.hits + stats.misses, 90);

    // A stream of new keys: many capacity evictions, no thrashing.
    let ledger = Arc::new(Ledger::default());
    let pool = Pool::new(
        PoolConfig::default()
            .max_entries(8)
            .ttl(Duration::from_secs(300)),
    );
    for key in 0..500 {
        drop(fetch(&pool, key, &ledger).await);
        advance(Duration::from_millis(1)).await;
    }
    let stats = pool.stats();
    assert_eq!(stats.evictions.capacity, 492);
    assert_eq!(stats.thrashing, 0, "{stats:?}");

    // Invalidated and expired keys that come back are plain misses.
    for key in 492..500 {
        assert!(pool.invalidate(&key).await);
        drop(fetch(&pool, key, &ledger).await);
    }
    advance(Duration::from_secs(301)).await;
    for key in 492..500 {
        drop(fetch(&pool, key, &ledger).await);
    }
    assert_eq!(pool.stats().thrashing, 0, "{:?}", pool.stats());
}

/// Captures WARN events (their fields, formatted) on the current thread.
#[derive(Clone, Default)]
struct WarnCapture(Arc<Mutex<Vec<String>>>);

impl tracing::Subscriber for WarnCapture {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        struct Fields(String);
        impl tracing::field::Visit for Fields {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                use std::fmt::Write;
                let _ = write!(self.0, "{}={:?} ", field.name(), value);
            }
        }
        if *event.metadata().level() == tracing::Level::WARN {
            let mut fields = Fields(String::new());
            event.record(&mut fields);
            self.0.lock().unwrap().push(fields.0);
        }
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

// Issue 23 / P9: while the pool thrashes, a warning names the setting to raise, at most once a
// minute; 5 virtual minutes of a 5-over-4 cycle give between 1 and 6 of them, each naming the
// configured knob. A stream of new keys (capacity evictions, no thrashing) warns nothing.
#[tokio::test(start_paused = true)]
async fn p9_thrashing_warns_at_most_once_a_minute_naming_the_knob() {
    let capture = WarnCapture::default();
    let _guard = tracing::subscriber::set_default(capture.clone());
    let ledger = Arc::new(Ledger::default());
    let pool = Pool::new(
        PoolConfig::default()
            .max_entries(4)
            .ttl(Duration::from_secs(3600))
            .capacity_knob("BLACKBOX_POOL_MAX_ENTRIES"),
    );
    for i in 0..300u64 {
        drop(fetch(&pool, i % 5, &ledger).await);
        advance(Duration::from_secs(1)).await;
    }
    settle().await;
    assert!(pool.stats().thrashing > 0);
    let warnings = capture.0.lock().unwrap().clone();
    let naming: Vec<_> = warnings
        .iter()
        .filter(|w| w.contains("BLACKBOX_POOL_MAX_ENTRIES"))
        .collect();
    assert!(
        (1..=6).contains(&naming.len()),
        "{} warnings naming the knob in 5 minutes of thrashing: {warnings:?}",
        naming.len()
    );

    capture.0.lock().unwrap().clear();
    let pool = Pool::new(
        PoolConfig::default()
            .max_entries(4)
            .ttl(Duration::from_secs(3600))
            .capacity_knob("BLACKBOX_POOL_MAX_ENTRIES"),
    );
    for key in 0..300u64 {
        drop(fetch(&pool, key, &ledger).await);
        advance(Duration::from_secs(1)).await;
    }
    settle().await;
    assert_eq!(pool.stats().thrashing, 0);
    let warnings = capture.0.lock().unwrap().clone();
    assert!(
        warnings.is_empty(),
        "warned without thrashing: {warnings:?}"
    );
}

// P4 and every other removal path: after invalidate, evict_where, prune_idle, expiry found by a
// lookup, the sweeper and reset, the freed slots are really free (the pool refills to exactly
// max_entries without a capacity eviction) and the next insert evicts exactly one entry, the
// one with the soonest deadline.
#[tokio::test(start_paused = true)]
async fn p4_every_removal_path_frees_its_slot_for_capacity() {
    let ledger = Arc::new(Ledger::default());
    let pool = Pool::new(
        PoolConfig::default()
            .max_entries(4)
            .ttl(Duration::from_secs(100))
            .sweep_interval(Duration::from_secs(1000)),
    );
    let mut next = 0u64;
    let mut fill = async |pool: &Pool, n: usize| {
        for _ in 0..n {
            drop(fetch(pool, next, &ledger).await);
            next += 1;
            advance(Duration::from_millis(10)).await;
        }
    };
    fill(&pool, 4).await; // 0 1 2 3
    assert!(pool.invalidate(&1).await);
    pool.evict_where(EvictionCause::OwnerGone, |k, _| *k == 2)
        .await;
    fill(&pool, 2).await; // 0 3 4 5
    assert_eq!(pool.stats().evictions.capacity, 0);
    advance(Duration::from_secs(1)).await;
    drop(pool.get(&0).unwrap());
    drop(pool.get(&3).unwrap());
    assert_eq!(pool.prune_idle(Duration::from_millis(500)).await.total(), 2); // 4, 5 idle
    fill(&pool, 2).await; // 0 3 6 7
    assert_eq!(pool.stats().evictions.capacity, 0, "{:?}", pool.stats());
    // Expiry found by a lookup: 0 expires first (created first).
    advance(Duration::from_secs(99)).await;
    assert!(pool.get(&0).is_none());
    fill(&pool, 1).await; // 3 6 7 8
    assert_eq!(pool.stats().evictions.capacity, 0, "{:?}", pool.stats());
    assert_eq!(pool.len(), 4);
    // Capacity: the soonest deadline (3) goes, and only it.
    fill(&pool, 1).await; // 6 7 8 9
    settle().await;
    assert_eq!(pool.stats().evictions.capacity, 1);
    assert!(pool.get(&3).is_none());
    for key in [6, 7, 8, 9] {
        assert!(pool.get(&key).is_some(), "{key}");
    }
    // The sweeper removes what expired (all of them, 1000 s later) and the pool refills.
    advance(Duration::from_secs(1000)).await;
    settle().await;
    assert_eq!(pool.len(), 0, "{:?}", pool.stats());
    fill(&pool, 4).await;
    assert_eq!(pool.stats().evictions.capacity, 1, "{:?}", pool.stats());
    pool.reset().await;
    fill(&pool, 4).await;
    assert_eq!(pool.stats().evictions.capacity, 1, "{:?}", pool.stats());
    fill(&pool, 1).await;
    assert_eq!(pool.stats().evictions.capacity, 2);
    settle().await;
    let stats = pool.stats();
    assert_eq!(stats.creations, pool.len() as u64 + stats.evictions.total());
    assert_eq!(ledger.retired() as u64, stats.evictions.total());
}

// P10/P4: a factory that panics, and a leader cancelled mid-creation, while the pool is full:
// no slot is lost or leaked, the other callers carry on, the pool still fills to capacity.
#[tokio::test(start_paused = true)]
async fn p10_panicking_and_cancelled_creations_at_capacity_leave_the_pool_consistent() {
    let ledger = Arc::new(Ledger::default());
    let pool = Pool::new(PoolConfig::default().max_entries(3));
    for key in 0..3 {
        drop(fetch(&pool, key, &ledger).await);
    }
    let panicking = {
        let pool = pool.clone();
        tokio::spawn(async move {
            let _ = pool
                .get_or_create(&50, || async {
                    tokio::task::yield_now().await;
                    panic!("factory panicked (expected by the test)");
                    #[allow(unreachable_code)]
                    Ok::<Created<Val>, Boom>(unreachable!())
                })
                .await;
        })
    };
    assert!(
        panicking.await.is_err(),
        "the factory's panic reaches its caller"
    );
    let gate = Arc::new(Notify::new());
    let cancelled = {
        let (pool, ledger, gate) = (pool.clone(), ledger.clone(), gate.clone());
        tokio::spawn(async move {
            let _ = pool
                .get_or_create(&60, || async move {
                    gate.notified().await;
                    Ok::<_, Boom>(Created::new(Val::new(60, &ledger, Hook::Nothing)))
                })
                .await;
        })
    };
    settle().await;
    cancelled.abort();
    let _ = cancelled.await;
    // Both keys can be created afterwards; capacity holds; nothing leaked.
    drop(fetch(&pool, 50, &ledger).await);
    drop(fetch(&pool, 60, &ledger).await);
    assert_eq!(pool.len(), 3);
    assert_eq!(ledger.built_for(60), 1, "the cancelled factory never built");
    settle().await;
    let stats = pool.stats();
    assert_eq!(stats.creations, pool.len() as u64 + stats.evictions.total());
    assert_eq!(ledger.retired() as u64, stats.evictions.capacity);
    assert_eq!(stats.evictions.capacity, 2);
}

// ---------------------------------------------------------------------------------------------
// P5: retire runs outside every lock: a retire hook that re-enters the pool never deadlocks.
// ---------------------------------------------------------------------------------------------

fn reentering_pool(config: PoolConfig, reentry: Reentry) -> (Pool, Arc<Ledger>, Hook) {
    let cell = Arc::new(OnceLock::new());
    let pool = Pool::new(config);
    cell.set(pool.clone()).ok().unwrap();
    (
        pool,
        Arc::new(Ledger::default()),
        Hook::Reenter(cell, reentry),
    )
}

async fn fetch_hooked(pool: &Pool, key: u64, ledger: &Arc<Ledger>, hook: &Hook) -> Pooled<Val> {
    let hook = hook.clone();
    pool.get_or_create(&key, || async move {
        Ok::<_, Boom>(Created::new(Val::new(key, ledger, hook)))
    })
    .await
    .expect("created")
}

// Every removal path (capacity, invalidate, evict_where, prune_idle, expiry found by a lookup,
// reset, shutdown) retires a value whose retire reads the pool (get, len, stats, is_locked),
// creates another entry (which may itself evict) and invalidates a third key.
#[test]
fn p5_retire_that_reenters_the_pool_never_deadlocks() {
    run_or_report_deadlock("reentrant-retire", || async {
        let reentered = Arc::new(AtomicUsize::new(0));
        let saw_lock = Arc::new(AtomicBool::new(false));
        let side = Arc::new(Ledger::default());
        let reentry: Reentry = {
            let (reentered, saw_lock, side) = (reentered.clone(), saw_lock.clone(), side.clone());
            Arc::new(move |pool: Pool, key: u64| {
                let (reentered, saw_lock, side) =
                    (reentered.clone(), saw_lock.clone(), side.clone());
                Box::pin(async move {
                    if pool.is_locked() {
                        saw_lock.store(true, SeqCst);
                    }
                    let _ = pool.get(&key);
                    let _ = pool.get(&(key + 1));
                    let _ = (pool.len(), pool.stats());
                    // Side entries use plain values (no hook), so this does not recurse forever.
                    if key < 1_000_000 {
                        let side_key = 1_000_000 + key;
                        let _ = pool
                            .get_or_create(&side_key, || async {
                                Ok::<_, Boom>(Created::new(Val::new(
                                    side_key,
                                    &side,
                                    Hook::Nothing,
                                )))
                            })
                            .await;
                        pool.invalidate(&(key + 2)).await;
                    }
                    reentered.fetch_add(1, SeqCst);
                })
            })
        };
        let (pool, ledger, hook) = reentering_pool(
            PoolConfig::default()
                .max_entries(4)
                .ttl(Duration::from_secs(60)),
            reentry,
        );
        // Capacity: 20 inserts into 4 slots.
        for key in 0..20 {
            drop(fetch_hooked(&pool, key, &ledger, &hook).await);
        }
        settle().await;
        // invalidate / evict_where / prune_idle.
        drop(fetch_hooked(&pool, 100, &ledger, &hook).await);
        pool.invalidate(&100).await;
        drop(fetch_hooked(&pool, 101, &ledger, &hook).await);
        pool.evict_where(EvictionCause::OwnerGone, |k, _| *k == 101)
            .await;
        drop(fetch_hooked(&pool, 102, &ledger, &hook).await);
        advance(Duration::from_secs(1)).await;
        pool.prune_idle(Duration::ZERO).await;
        // Expiry found by a lookup.
        drop(fetch_hooked(&pool, 103, &ledger, &hook).await);
        advance(Duration::from_secs(61)).await;
        drop(fetch_hooked(&pool, 103, &ledger, &hook).await);
        settle().await;
        // reset and shutdown.
        drop(fetch_hooked(&pool, 104, &ledger, &hook).await);
        pool.reset().await;
        drop(fetch_hooked(&pool, 105, &ledger, &hook).await);
        drop(fetch_hooked(&pool, 106, &ledger, &hook).await);
        pool.shutdown().await;
        settle().await;

        let built = ledger.built();
        assert_eq!(ledger.retired(), built, "every hooked value was retired");
        assert_eq!(
            reentered.load(SeqCst),
            built,
            "every hooked retire finished its re-entry"
        );
        assert!(
            !saw_lock.load(SeqCst),
            "a retire ran while a pool lock was held"
        );
        assert_eq!(pool.stats().retire_failures, 0, "{:?}", pool.stats());
    });
}

// P5/P7: a retire that calls reset() or shutdown() on its own pool (an operator tearing the
// pool down from a close handler) completes, on the capacity path and inside reset itself.
#[test]
fn p5_retire_that_resets_or_shuts_down_its_own_pool_never_deadlocks() {
    run_or_report_deadlock("retire-calls-reset", || async {
        let calls = Arc::new(AtomicUsize::new(0));
        let reentry: Reentry = {
            let calls = calls.clone();
            Arc::new(move |pool: Pool, key: u64| {
                let calls = calls.clone();
                Box::pin(async move {
                    if calls.fetch_add(1, SeqCst) < 3 {
                        if key.is_multiple_of(2) {
                            pool.reset().await;
                        } else {
                            pool.shutdown().await;
                        }
                    }
                })
            })
        };
        let (pool, ledger, hook) = reentering_pool(PoolConfig::default().max_entries(2), reentry);
        for key in [0, 2, 4] {
            drop(fetch_hooked(&pool, key, &ledger, &hook).await);
        }
        settle().await;
        drop(fetch_hooked(&pool, 6, &ledger, &hook).await);
        drop(fetch_hooked(&pool, 8, &ledger, &hook).await);
        pool.reset().await;
        drop(fetch_hooked(&pool, 9, &ledger, &hook).await);
        drop(fetch_hooked(&pool, 11, &ledger, &hook).await);
        pool.invalidate(&9).await;
        settle().await;
        pool.shutdown().await;
        settle().await;
        assert_eq!(ledger.retired(), ledger.built());
        assert_eq!(
            ledger.max_retires_of_one_value(),
            1,
            "a value was retired twice"
        );
        assert!(pool.is_empty());
    });
}

// P5: a retire that blocks forever (awaiting something that never comes) delays nobody: lookups,
// creations and evictions proceed, and the stuck retire is cut by retire_timeout and counted.
#[tokio::test(start_paused = true)]
async fn p5_hanging_retire_on_the_capacity_path_blocks_nobody() {
    let gate = Arc::new(Notify::new());
    let reentry: Reentry = {
        let gate = gate.clone();
        Arc::new(move |_pool: Pool, _key: u64| {
            let gate = gate.clone();
            Box::pin(async move { gate.notified().await })
        })
    };
    let (pool, ledger, hook) = reentering_pool(
        PoolConfig::default()
            .max_entries(2)
            .retire_timeout(Duration::from_secs(5)),
        reentry,
    );
    for key in 0..10 {
        drop(fetch_hooked(&pool, key, &ledger, &hook).await);
        settle().await;
        assert!(
            pool.get(&key).is_some(),
            "{key} resident despite stuck retires"
        );
    }
    assert_eq!(pool.stats().evictions.capacity, 8);
    advance(Duration::from_secs(6)).await;
    settle().await;
    assert_eq!(pool.stats().retire_failures, 8, "{:?}", pool.stats());
}

// ---------------------------------------------------------------------------------------------
// P1/P10: single-flight under eviction pressure.
// ---------------------------------------------------------------------------------------------

// 50 callers miss on one key while its factory is blocked and 200 other keys churn through a
// pool of 4. One factory call; every caller gets that value; the hot key is resident afterwards.
#[tokio::test(start_paused = true)]
async fn p1_single_flight_holds_under_eviction_pressure() {
    const HOT: u64 = 7_000;
    let ledger = Arc::new(Ledger::default());
    let pool = Pool::new(
        PoolConfig::default()
            .max_entries(4)
            .ttl(Duration::from_secs(300)),
    );
    let gate = Arc::new(Notify::new());
    let factory_calls = Arc::new(AtomicUsize::new(0));
    let mut callers = Vec::new();
    for _ in 0..50 {
        let (pool, ledger, gate, factory_calls) = (
            pool.clone(),
            ledger.clone(),
            gate.clone(),
            factory_calls.clone(),
        );
        callers.push(tokio::spawn(async move {
            let handle = pool
                .get_or_create(&HOT, || async move {
                    factory_calls.fetch_add(1, SeqCst);
                    gate.notified().await;
                    Ok::<_, Boom>(Created::new(Val::new(HOT, &ledger, Hook::Nothing)))
                })
                .await
                .expect("created");
            assert_eq!(handle.key, HOT);
            handle.serial
        }));
    }
    settle().await;
    assert_eq!(factory_calls.load(SeqCst), 1);
    for key in 0..200 {
        drop(fetch(&pool, key, &ledger).await);
        tokio::task::yield_now().await;
    }
    gate.notify_one();
    let mut serials = Vec::new();
    for caller in callers {
        serials.push(caller.await.unwrap());
    }
    serials.dedup();
    assert_eq!(
        serials.len(),
        1,
        "callers got different values: {serials:?}"
    );
    assert_eq!(factory_calls.load(SeqCst), 1);
    assert_eq!(ledger.built_for(HOT), 1);
    assert!(pool.get(&HOT).is_some(), "the hot key is resident");
    let stats = pool.stats();
    assert_eq!(stats.coalesced, 49, "{stats:?}");
    assert!(pool.len() <= 4);
}

// Capacity 1, the hot key evicted right after its creation while its followers are still
// waking up: the followers get the leader's value (P10: waiters share the leader's output), not
// a second factory call.
#[tokio::test(start_paused = true)]
async fn p10_followers_share_the_value_even_if_it_was_evicted_at_once() {
    const HOT: u64 = 42;
    let ledger = Arc::new(Ledger::default());
    let pool = Pool::new(PoolConfig::default().max_entries(1));
    let gate = Arc::new(Notify::new());
    let mut callers = Vec::new();
    for _ in 0..20 {
        let (pool, ledger, gate) = (pool.clone(), ledger.clone(), gate.clone());
        callers.push(tokio::spawn(async move {
            let handle = pool
                .get_or_create(&HOT, || async move {
                    gate.notified().await;
                    Ok::<_, Boom>(Created::new(Val::new(HOT, &ledger, Hook::Nothing)))
                })
                .await
                .expect("created");
            assert_eq!(handle.key, HOT);
            handle.serial
        }));
    }
    let churn = {
        let (pool, ledger) = (pool.clone(), ledger.clone());
        tokio::spawn(async move {
            for key in 0..200 {
                drop(fetch(&pool, key, &ledger).await);
                tokio::task::yield_now().await;
            }
        })
    };
    settle().await;
    gate.notify_one();
    let mut serials = Vec::new();
    for caller in callers {
        serials.push(caller.await.unwrap());
    }
    churn.await.unwrap();
    serials.dedup();
    assert_eq!(
        serials.len(),
        1,
        "callers got different values: {serials:?}"
    );
    assert_eq!(ledger.built_for(HOT), 1, "one factory call for the hot key");
    assert!(pool.len() <= 1);
}

// Capacity 1 with many concurrent keys on a multi-thread runtime: each caller gets its own
// key's value, one factory call per key per flight, never more entries than one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn p4_capacity_one_under_concurrency() {
    let ledger = Arc::new(Ledger::default());
    let pool = Pool::new(PoolConfig::default().max_entries(0)); // clamped to 1
    assert_eq!(pool.config().max_entries_value(), 1);
    let mut tasks = Vec::new();
    for t in 0..8u64 {
        let (pool, ledger) = (pool.clone(), ledger.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..300u64 {
                let key = (i + t) % 3;
                drop(fetch(&pool, key, &ledger).await);
                assert!(pool.len() <= 2, "len {}", pool.len());
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let stats = pool.stats();
    assert_eq!(stats.hits + stats.misses, 2400, "{stats:?}");
    assert_eq!(stats.creations as usize, ledger.built());
    assert_eq!(
        stats.creations,
        pool.len() as u64 + stats.evictions.capacity
    );
    let evicted = stats.evictions.capacity as usize;
    assert!(settle_until(|| ledger.retired() == evicted).await);
    assert_eq!(ledger.max_retires_of_one_value(), 1);
}

// Capacity 1, sequential: the second key evicts the first, which is retired; a key that is hit
// stays; two keys alternating never hand out the wrong value.
#[tokio::test(start_paused = true)]
async fn p4_capacity_one_sequential() {
    let ledger = Arc::new(Ledger::default());
    let pool = Pool::new(
        PoolConfig::default()
            .max_entries(1)
            .ttl(Duration::from_secs(300)),
    );
    drop(fetch(&pool, 1, &ledger).await);
    drop(fetch(&pool, 1, &ledger).await);
    assert_eq!(ledger.built(), 1);
    drop(fetch(&pool, 2, &ledger).await);
    settle().await;
    assert_eq!(ledger.retired_keys(), vec![1]);
    assert!(pool.get(&1).is_none());
    assert!(pool.get(&2).is_some());
    for i in 0..100u64 {
        drop(fetch(&pool, i % 2, &ledger).await);
        advance(Duration::from_millis(10)).await;
        assert_eq!(pool.len(), 1);
    }
    settle().await;
    let stats = pool.stats();
    assert_eq!(stats.creations, 1 + stats.evictions.capacity);
    assert_eq!(ledger.retired() as u64, stats.evictions.capacity);
}

// ---------------------------------------------------------------------------------------------
// P2, P6, X5: TTL edges in virtual time.
// ---------------------------------------------------------------------------------------------

// ttl(0): every value is one-shot, never pooled, retired on drop; capacity is never touched.
#[tokio::test(start_paused = true)]
async fn p6_zero_ttl_makes_every_value_one_shot() {
    let ledger = Arc::new(Ledger::default());
    let pool = Pool::new(PoolConfig::default().max_entries(2).ttl(Duration::ZERO));
    for i in 0..10u64 {
        let handle = fetch(&pool, i % 3, &ledger).await;
        assert!(!handle.is_pooled());
        assert!(pool.is_empty());
        drop(handle);
        settle().await;
    }
    let stats = pool.stats();
    assert_eq!(ledger.built(), 10);
    assert_eq!(ledger.retired(), 10, "one-shots are retired on drop");
    assert_eq!(ledger.dropped(), 10);
    assert_eq!(stats.one_shots, 10, "{stats:?}");
    assert_eq!(stats.creations, 0, "{stats:?}");
    assert_eq!(stats.evictions.total(), 0);
    assert_eq!(stats.thrashing, 0);
    assert_eq!(stats.hits + stats.misses, 10);
}

// An entry at its deadline is never handed out; one nanosecond before, it is. Created::until(now)
// is a one-shot, Created::until(now + 1 ns) is pooled for one nanosecond.
#[tokio::test(start_paused = true)]
async fn p2_deadline_edges_to_the_nanosecond() {
    let ledger = Arc::new(Ledger::default());
    let pool = Pool::new(PoolConfig::default().ttl(Duration::from_secs(10)));
    drop(fetch(&pool, 1, &ledger).await);
    advance(Duration::from_secs(10) - Duration::from_nanos(1)).await;
    assert!(pool.get(&1).is_some(), "1 ns before the deadline");
    advance(Duration::from_nanos(1)).await;
    assert!(pool.get(&1).is_none(), "at the deadline");
    let again = fetch(&pool, 1, &ledger).await;
    assert_eq!(ledger.built(), 2);
    assert!(again.is_pooled());
    drop(again);

    let now = Instant::now();
    let handle = fetch_until(&pool, 2, &ledger, now).await;
    assert!(!handle.is_pooled(), "a deadline of now is already passed");
    assert!(pool.get(&2).is_none());
    drop(handle);

    let handle = fetch_until(&pool, 3, &ledger, now + Duration::from_nanos(1)).await;
    assert!(handle.is_pooled());
    drop(handle);
    assert!(pool.get(&3).is_some());
    advance(Duration::from_nanos(1)).await;
    assert!(pool.get(&3).is_none());
    settle().await;
}

// ttl(Duration::MAX) and a margin of Duration::MAX: accepted, no panic; entries outlive a
// century of virtual time and capacity eviction still works.
#[tokio::test(start_paused = true)]
async fn x5_huge_ttl_and_margin_never_panic() {
    let ledger = Arc::new(Ledger::default());
    let pool = Pool::new(
        PoolConfig::default()
            .max_entries(3)
            .ttl(Duration::MAX)
            .expiry_margin(Duration::MAX)
            .retire_timeout(Duration::MAX),
    );
    for key in 0..3 {
        drop(fetch(&pool, key, &ledger).await);
    }
    advance(Duration::from_secs(100 * 365 * 86_400)).await;
    // 30 years (the clamp) have passed: the entries expired; nothing expired is handed out.
    for key in 0..3 {
        let handle = fetch(&pool, key, &ledger).await;
        assert!(handle.deadline().is_none_or(|d| d > Instant::now()));
    }
    for key in 3..20 {
        drop(fetch(&pool, key, &ledger).await);
        assert!(pool.len() <= 3);
    }
    for i in 0..40u64 {
        drop(fetch(&pool, i % 4, &ledger).await);
    }
    settle().await;
    let stats = pool.stats();
    assert_eq!(stats.creations, pool.len() as u64 + stats.evictions.total());

    let ledger = Arc::new(Ledger::default());
    let pool = Pool::new(
        PoolConfig::default()
            .max_entries(3)
            .ttl(Duration::from_secs(3600))
            .expiry_margin(Duration::ZERO),
    );
    let steady = {
        let mut before = (0, 0);
        for round in 0..10 {
            if round == 2 {
                before = hits_and_misses(&pool.stats());
            }
            for key in 0..4 {
                drop(fetch(&pool, key, &ledger).await);
                advance(Duration::from_millis(1)).await;
            }
        }
        let after = hits_and_misses(&pool.stats());
        (after.0 - before.0, after.0 - before.0 + after.1 - before.1)
    };
    // Capacity 3, 4 keys: at best 2 of 4 hit per round with one slot cycling.
    assert!(
        steady.0 > 0,
        "margin zero: no hits at all in a 4-over-3 cycle"
    );
}

// ---------------------------------------------------------------------------------------------
// P9: stats consistency.
// ---------------------------------------------------------------------------------------------

// Concurrent lookups with failing factories, one-shots and pooled values: hits + misses equals
// lookups; factory calls equal creations + failures + one-shots; coalesced never exceeds misses.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn p9_stats_add_up_under_concurrency() {
    let ledger = Arc::new(Ledger::default());
    let pool = Pool::new(PoolConfig::default().max_entries(10));
    let factory_calls = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(AtomicU64::new(0));
    let one_shots = Arc::new(AtomicU64::new(0));
    let lookups = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for t in 0..8u64 {
        let (pool, ledger) = (pool.clone(), ledger.clone());
        let (factory_calls, failures, one_shots, lookups) = (
            factory_calls.clone(),
            failures.clone(),
            one_shots.clone(),
            lookups.clone(),
        );
        tasks.push(tokio::spawn(async move {
            for i in 0..300u64 {
                let key = (i * 31 + t * 7) % 25;
                lookups.fetch_add(1, SeqCst);
                let (ledger, factory_calls, failures, one_shots) =
                    (&ledger, &factory_calls, &failures, &one_shots);
                let result = pool
                    .get_or_create(&key, || async move {
                        factory_calls.fetch_add(1, SeqCst);
                        tokio::task::yield_now().await;
                        match key % 5 {
                            0 => {
                                failures.fetch_add(1, SeqCst);
                                Err(Boom)
                            }
                            1 => {
                                one_shots.fetch_add(1, SeqCst);
                                Ok(Created::one_shot(Val::new(key, ledger, Hook::Nothing)))
                            }
                            _ => Ok(Created::new(Val::new(key, ledger, Hook::Nothing))),
                        }
                    })
                    .await;
                match result {
                    Ok(handle) => assert_eq!(handle.key, key),
                    Err(PoolError::Create(_)) => assert_eq!(key % 5, 0),
                    Err(other) => panic!("unexpected {other}"),
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let stats = pool.stats();
    let lookups = lookups.load(SeqCst);
    assert_eq!(stats.hits + stats.misses, lookups, "{stats:?}");
    assert_eq!(stats.creation_failures, failures.load(SeqCst), "{stats:?}");
    assert_eq!(stats.one_shots, one_shots.load(SeqCst), "{stats:?}");
    assert_eq!(
        stats.creations + stats.creation_failures + stats.one_shots,
        factory_calls.load(SeqCst),
        "{stats:?}"
    );
    assert!(stats.coalesced <= stats.misses);
    // A miss either leads a flight or follows one (coalesced); every pooled or failed flight
    // had one leader (followers of a one-shot flight build their own, so they are not counted).
    assert!(
        stats.misses - stats.coalesced >= stats.creations + stats.creation_failures,
        "more pooled/failed factory calls than flight leaders: {stats:?}"
    );
    assert_eq!(stats.creations, pool.len() as u64 + stats.evictions.total());
    assert_eq!(stats.entries, pool.len());
}

// ---------------------------------------------------------------------------------------------
// P3/P7: no leak after shutdown or drop.
// ---------------------------------------------------------------------------------------------

// Shutdown retires every pooled value once (outstanding handles included) and, after the
// handles go, every value is dropped. A pool dropped without shutdown (with a sweeper running)
// drops its values: neither the sweeper nor the retire queue keeps them alive.
#[tokio::test(start_paused = true)]
async fn p7_no_leak_after_shutdown_or_drop() {
    let ledger = Arc::new(Ledger::default());
    let pool = Pool::new(
        PoolConfig::default()
            .max_entries(8)
            .ttl(Duration::from_secs(60))
            .idle_ttl(Duration::from_secs(30))
            .sweep_interval(Duration::from_secs(10)),
    );
    for key in 0..20 {
        drop(fetch(&pool, key, &ledger).await);
    }
    let held = fetch(&pool, 19, &ledger).await;
    settle().await;
    let report = pool.shutdown().await;
    settle().await;
    assert_eq!(report.skipped_shards, 0);
    assert_eq!(ledger.retired(), ledger.built(), "every value retired");
    assert_eq!(ledger.max_retires_of_one_value(), 1);
    assert!(pool.is_empty());
    assert!(matches!(
        pool.get_or_create(&1, || async {
            Ok::<_, Boom>(Created::new(Val::new(1, &ledger, Hook::Nothing)))
        })
        .await,
        Err(PoolError::ShutDown)
    ));
    assert_eq!(held.key, 19, "an outstanding handle still derefs");
    assert_eq!(
        ledger.dropped(),
        ledger.built() - 1,
        "only the held value is alive"
    );
    drop(held);
    assert_eq!(ledger.dropped(), ledger.built());
    advance(Duration::from_secs(100)).await;
    settle().await;

    let ledger = Arc::new(Ledger::default());
    let pool = Pool::new(
        PoolConfig::default()
            .max_entries(8)
            .idle_ttl(Duration::from_secs(30))
            .sweep_interval(Duration::from_secs(10)),
    );
    for key in 0..20 {
        drop(fetch(&pool, key, &ledger).await);
    }
    settle().await;
    drop(pool);
    advance(Duration::from_secs(20)).await;
    settle().await;
    assert_eq!(
        ledger.dropped(),
        ledger.built(),
        "values leaked after the pool was dropped"
    );
}

// A creation in flight when shutdown() runs: its value must not land in the drained pool and be
// leaked unretired; whoever ends up with it, it is retired once the caller lets go.
#[tokio::test(start_paused = true)]
async fn p7_creation_in_flight_during_shutdown_is_retired() {
    let ledger = Arc::new(Ledger::default());
    let pool = Pool::new(PoolConfig::default().max_entries(4));
    drop(fetch(&pool, 1, &ledger).await);
    let gate = Arc::new(Notify::new());
    let inflight = {
        let (pool, ledger, gate) = (pool.clone(), ledger.clone(), gate.clone());
        tokio::spawn(async move {
            pool.get_or_create(&2, || async move {
                gate.notified().await;
                Ok::<_, Boom>(Created::new(Val::new(2, &ledger, Hook::Nothing)))
            })
            .await
            .map(|handle| handle.key)
        })
    };
    settle().await;
    pool.shutdown().await;
    gate.notify_one();
    let outcome = inflight.await.unwrap();
    settle().await;
    assert!(
        matches!(outcome, Ok(2) | Err(PoolError::ShutDown)),
        "{outcome:?}"
    );
    assert!(pool.is_empty(), "a value landed in a shut-down pool");
    assert_eq!(ledger.built(), 2);
    assert_eq!(
        ledger.retired(),
        2,
        "the value created during shutdown was never retired"
    );
    assert_eq!(ledger.dropped(), 2);
}

// ---------------------------------------------------------------------------------------------
// X4 cost checks without the wall clock: key operations per lookup and per evicting insert.
// ---------------------------------------------------------------------------------------------

thread_local! {
    static KEY_HASHES: Cell<u64> = const { Cell::new(0) };
    static KEY_EQS: Cell<u64> = const { Cell::new(0) };
    static KEY_CLONES: Cell<u64> = const { Cell::new(0) };
}

#[derive(Debug, PartialEq, Eq)]
struct CountingKey(u64);

impl Hash for CountingKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        KEY_HASHES.with(|c| c.set(c.get() + 1));
        self.0.hash(state);
    }
}

impl Clone for CountingKey {
    fn clone(&self) -> Self {
        KEY_CLONES.with(|c| c.set(c.get() + 1));
        Self(self.0)
    }
}

// Only `eq` is counted; derive PartialEq would not count, so compare through a wrapper.
#[derive(Debug, Clone, Copy)]
struct KeyOps {
    hashes: u64,
    eqs: u64,
    clones: u64,
}

fn key_ops() -> KeyOps {
    KeyOps {
        hashes: KEY_HASHES.with(Cell::get),
        eqs: KEY_EQS.with(Cell::get),
        clones: KEY_CLONES.with(Cell::get),
    }
}

#[derive(Debug, Clone)]
struct EqCountingKey(CountingKey);

impl PartialEq for EqCountingKey {
    fn eq(&self, other: &Self) -> bool {
        KEY_EQS.with(|c| c.set(c.get() + 1));
        self.0 == other.0
    }
}
impl Eq for EqCountingKey {}
impl Hash for EqCountingKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}

struct Plain;
impl Retire for Plain {}

/// Key operations per evicting insert, measured over `n` inserts into a full pool of `cap`.
async fn key_ops_per_evicting_insert(cap: u64, n: u64) -> (f64, f64, f64) {
    let pool: KeyedPool<EqCountingKey, Plain> = KeyedPool::new(
        PoolConfig::default()
            .max_entries(cap as usize)
            .ttl(Duration::from_secs(3600)),
    );
    let insert = |key: u64| {
        let pool = pool.clone();
        async move {
            pool.get_or_create(&EqCountingKey(CountingKey(key)), || async {
                Ok::<_, Boom>(Created::new(Plain))
            })
            .await
            .unwrap();
        }
    };
    for key in 0..cap {
        insert(key).await;
    }
    settle().await;
    let before = key_ops();
    for key in cap..cap + n {
        insert(key).await;
    }
    settle().await;
    let after = key_ops();
    assert_eq!(pool.stats().evictions.capacity, n);
    let per = |a: u64, b: u64| (a - b) as f64 / n as f64;
    (
        per(after.hashes, before.hashes),
        per(after.eqs, before.eqs),
        per(after.clones, before.clones),
    )
}

// Issue 23: eviction never scans. Counted in key operations (hash, eq, clone) per evicting
// insert: the same at 1 024 entries as at 65 536, and a small constant.
#[tokio::test(start_paused = true)]
async fn x4_evicting_insert_key_operations_do_not_grow_with_the_pool() {
    let small = key_ops_per_evicting_insert(1024, 2000).await;
    let large = key_ops_per_evicting_insert(65_536, 2000).await;
    for (name, s, l) in [
        ("hashes", small.0, large.0),
        ("eqs", small.1, large.1),
        ("clones", small.2, large.2),
    ] {
        assert!(l <= 16.0, "{name} per evicting insert at 65 536: {l}");
        assert!(
            l <= s * 1.5 + 2.0,
            "{name} per evicting insert grows with the pool: {s} at 1 024, {l} at 65 536"
        );
    }
}

// docs: "Hit: one hash, one shard read lock". Counted: a hit by `get` hashes the key once and
// clones it never.
#[tokio::test(start_paused = true)]
async fn x4_a_hit_hashes_the_key_once() {
    let pool: KeyedPool<EqCountingKey, Plain> = KeyedPool::new(PoolConfig::default());
    for key in 0..100 {
        pool.get_or_create(&EqCountingKey(CountingKey(key)), || async {
            Ok::<_, Boom>(Created::new(Plain))
        })
        .await
        .unwrap();
    }
    let keys: Vec<_> = (0..100).map(|k| EqCountingKey(CountingKey(k))).collect();
    let before = key_ops();
    for key in &keys {
        assert!(pool.get(key).is_some());
    }
    let after = key_ops();
    assert_eq!(after.hashes - before.hashes, 100, "hashes for 100 hits");
    assert_eq!(after.clones - before.clones, 0, "key clones for 100 hits");
    assert!(after.eqs - before.eqs <= 200, "eqs for 100 hits");
}
