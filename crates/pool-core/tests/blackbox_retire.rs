//! Black-box tests of how `KeyedPool` retires the values it lets go of (SPEC P4, P5, P7, P9):
//! exactly once per value on every path, outside every lock, bounded by `retire_timeout` and
//! isolated from one another, counted in `PoolStats`, cheap under bursts of evictions, and
//! robust to runtimes shutting down. Public API only; written from the spec, the guide
//! (`docs/pool-core.md`) and the rustdoc, not from the implementation.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Once, PoisonError};
use std::time::Duration;

use pool_core::{
    BoxError, Created, EvictionCause, KeyedPool, PoolConfig, PoolError, Pooled, Retire,
};
use tokio::time::Instant;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Marker in the message of every panic these tests cause on purpose (the panic hook below
/// keeps them out of the output; every other panic is reported as usual).
const INTENTIONAL: &str = "blackbox-retire: intentional panic";

fn quiet_intentional_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let payload = info.payload();
            let message = payload
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| payload.downcast_ref::<&str>().copied())
                .unwrap_or("");
            if !message.starts_with(INTENTIONAL) {
                previous(info);
            }
        }));
    });
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What a value's `retire` does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Act {
    /// Returns `Ok` on its first poll.
    Ok,
    /// Yields once, then returns `Ok`.
    YieldOk,
    /// Sleeps (virtual time), then returns `Ok`.
    Sleep(Duration),
    /// Returns `Err` on its first poll.
    Err,
    /// Sleeps, then returns `Err`.
    ErrAfter(Duration),
    /// Panics in the synchronous part of `retire()`, before a future exists.
    PanicSync,
    /// Panics on the first poll of the retire future.
    PanicFirstPoll,
    /// Sleeps, then panics.
    PanicAfter(Duration),
    /// Never finishes.
    Hang,
    /// Calls back into the pool (get, get_or_create, invalidate, prune, stats) and returns `Ok`.
    Callback,
    /// Calls `reset()` on the pool from inside the retire and returns `Ok`.
    CallbackReset,
}

/// Everything the values observed, shared by all values of one test.
#[derive(Default)]
struct Log {
    next_id: AtomicU64,
    /// Ids of every value a factory built, in order.
    created: Mutex<Vec<u64>>,
    /// What each value's retire does.
    acts: Mutex<HashMap<u64, Act>>,
    /// Calls of `retire()` per value id.
    started: Mutex<HashMap<u64, u32>>,
    /// Virtual time at which each successful retire finished.
    ok_at: Mutex<HashMap<u64, Instant>>,
    /// Drops per value id.
    dropped: Mutex<HashMap<u64, u32>>,
    /// Values dropped before their retire was ever called.
    dropped_unretired: Mutex<Vec<u64>>,
    /// Hanging retires whose future was dropped (abandoned by the pool or the runtime).
    abandoned: Mutex<HashSet<u64>>,
    /// (value id, where) for every observation of `is_locked() == true` inside a retire.
    saw_lock: Mutex<Vec<(u64, &'static str)>>,
    /// Values whose `Act::Callback` retire completed all its calls into the pool.
    callbacks_done: Mutex<Vec<u64>>,
    /// Callbacks that did not complete in time (a deadlock on an async lock).
    callback_stuck: Mutex<Vec<u64>>,
    /// The pool, for `is_locked()` and callbacks from inside `retire`.
    pool: Mutex<Option<Pool>>,
}

type Pool = KeyedPool<u64, Val>;

impl Log {
    fn pool(&self) -> Option<Pool> {
        lock(&self.pool).clone()
    }

    fn check_lock(&self, id: u64, place: &'static str) {
        if self.pool().is_some_and(|pool| pool.is_locked()) {
            lock(&self.saw_lock).push((id, place));
        }
    }

    fn started(&self, id: u64) -> u32 {
        lock(&self.started).get(&id).copied().unwrap_or(0)
    }

    fn started_total(&self) -> u64 {
        lock(&self.started).values().map(|&n| u64::from(n)).sum()
    }

    fn ok_count(&self) -> u64 {
        lock(&self.ok_at).len() as u64
    }

    fn ok_at(&self, id: u64) -> Option<Instant> {
        lock(&self.ok_at).get(&id).copied()
    }

    fn dropped(&self, id: u64) -> u32 {
        lock(&self.dropped).get(&id).copied().unwrap_or(0)
    }

    fn act(&self, id: u64) -> Act {
        lock(&self.acts)[&id]
    }

    fn created(&self) -> Vec<u64> {
        lock(&self.created).clone()
    }

    fn abandoned(&self) -> HashSet<u64> {
        lock(&self.abandoned).clone()
    }

    /// Every retire called at most once.
    fn assert_no_double_retire(&self) {
        let twice: Vec<(u64, u32)> = lock(&self.started)
            .iter()
            .filter(|&(_, &n)| n > 1)
            .map(|(&id, &n)| (id, n))
            .collect();
        assert!(
            twice.is_empty(),
            "values retired more than once (id, times): {twice:?}"
        );
    }

    /// Every value ever created retired exactly once.
    fn assert_all_created_retired_once(&self) {
        self.assert_no_double_retire();
        let missing: Vec<u64> = self
            .created()
            .into_iter()
            .filter(|&id| self.started(id) != 1)
            .collect();
        assert!(
            missing.is_empty(),
            "created values not retired exactly once: {missing:?}"
        );
        assert_eq!(self.started_total(), self.created().len() as u64);
    }

    fn assert_never_locked(&self) {
        let seen = lock(&self.saw_lock).clone();
        assert!(
            seen.is_empty(),
            "is_locked() was true inside retire (id, where): {seen:?}"
        );
    }

    fn assert_no_drop_before_retire(&self) {
        let early = lock(&self.dropped_unretired).clone();
        assert!(
            early.is_empty(),
            "values dropped without ever being retired: {early:?}"
        );
    }

    /// Breaks the pool -> value -> log -> pool cycle so the pool can be dropped.
    fn detach(&self) {
        lock(&self.pool).take();
    }
}

struct Val {
    id: u64,
    act: Act,
    log: Arc<Log>,
}

impl std::fmt::Debug for Val {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Val")
            .field("id", &self.id)
            .field("act", &self.act)
            .finish()
    }
}

impl Drop for Val {
    fn drop(&mut self) {
        *lock(&self.log.dropped).entry(self.id).or_default() += 1;
        if self.log.started(self.id) == 0 {
            lock(&self.log.dropped_unretired).push(self.id);
        }
    }
}

/// Sets a flag when a hanging retire future is dropped.
struct AbandonGuard {
    id: u64,
    log: Arc<Log>,
}

impl Drop for AbandonGuard {
    fn drop(&mut self) {
        lock(&self.log.abandoned).insert(self.id);
    }
}

fn fail(id: u64) -> BoxError {
    format!("retire of {id} failed on purpose").into()
}

impl Retire for Val {
    fn retire(&self) -> impl Future<Output = Result<(), BoxError>> + Send {
        let log = Arc::clone(&self.log);
        let (id, act) = (self.id, self.act);
        *lock(&log.started).entry(id).or_default() += 1;
        log.check_lock(id, "retire() sync part");
        if act == Act::PanicSync {
            panic!("{INTENTIONAL} (sync part of retire {id})");
        }
        async move {
            log.check_lock(id, "retire future, first poll");
            let result = match act {
                Act::Ok => Ok(()),
                Act::YieldOk => {
                    tokio::task::yield_now().await;
                    Ok(())
                }
                Act::Sleep(d) => {
                    tokio::time::sleep(d).await;
                    Ok(())
                }
                Act::Err => Err(fail(id)),
                Act::ErrAfter(d) => {
                    tokio::time::sleep(d).await;
                    Err(fail(id))
                }
                Act::PanicSync | Act::PanicFirstPoll => {
                    panic!("{INTENTIONAL} (first poll of {id})")
                }
                Act::PanicAfter(d) => {
                    tokio::time::sleep(d).await;
                    panic!("{INTENTIONAL} (retire {id} after {d:?})")
                }
                Act::Hang => {
                    let _guard = AbandonGuard {
                        id,
                        log: Arc::clone(&log),
                    };
                    std::future::pending::<()>().await;
                    Ok(())
                }
                Act::CallbackReset => {
                    if let Some(pool) = log.pool() {
                        let reset: std::pin::Pin<Box<dyn Future<Output = _> + Send>> =
                            Box::pin(async move {
                                tokio::time::timeout(Duration::from_secs(5), pool.reset()).await
                            });
                        match reset.await {
                            Ok(_) => lock(&log.callbacks_done).push(id),
                            Err(_) => lock(&log.callback_stuck).push(id),
                        }
                    }
                    Ok(())
                }
                Act::Callback => {
                    // Boxed: the callback's own inserts and invalidations retire values too.
                    let callback: std::pin::Pin<Box<dyn Future<Output = ()> + Send>> =
                        Box::pin(callback_into_pool(Arc::clone(&log), id));
                    callback.await;
                    Ok(())
                }
            };
            log.check_lock(id, "retire future, end");
            if result.is_ok() {
                lock(&log.ok_at).insert(id, Instant::now());
            }
            result
        }
    }
}

/// Keys the callbacks create; well away from the keys the tests use.
const CALLBACK_KEYS: u64 = 1_000_000;

async fn callback_into_pool(log: Arc<Log>, id: u64) {
    let log = &log;
    let Some(pool) = log.pool() else { return };
    let work = async {
        let _ = pool.get(&0);
        let _ = pool.get(&1);
        // A new key: an insert into a possibly full pool (capacity eviction from inside retire).
        let created = pool
            .get_or_create(&(CALLBACK_KEYS + id), || {
                let v = make(log, Act::Ok);
                async move { Ok::<_, Infallible>(Created::new(v)) }
            })
            .await;
        drop(created);
        // Invalidate another key (an inline retire from inside a retire).
        pool.invalidate(&(CALLBACK_KEYS + id)).await;
        pool.invalidate(&2).await;
        let _ = pool.prune_expired().await;
        let _ = pool.stats();
        let _ = pool.len();
        let _ = pool.is_locked();
    };
    // Shorter than the retire timeouts the callback tests configure.
    match tokio::time::timeout(Duration::from_secs(5), work).await {
        Ok(()) => lock(&log.callbacks_done).push(id),
        Err(_) => lock(&log.callback_stuck).push(id),
    }
}

/// Whether a retire doing `act` returns `Ok` (within the timeouts the tests configure).
fn succeeds(act: Act) -> bool {
    matches!(
        act,
        Act::Ok | Act::YieldOk | Act::Sleep(_) | Act::Callback | Act::CallbackReset
    )
}

fn make(log: &Arc<Log>, act: Act) -> Val {
    let id = log.next_id.fetch_add(1, Ordering::Relaxed);
    lock(&log.created).push(id);
    lock(&log.acts).insert(id, act);
    Val {
        id,
        act,
        log: Arc::clone(log),
    }
}

fn setup(config: PoolConfig) -> (Pool, Arc<Log>) {
    quiet_intentional_panics();
    let pool = KeyedPool::new(config);
    let log = Arc::new(Log::default());
    *lock(&log.pool) = Some(pool.clone());
    (pool, log)
}

async fn put(pool: &Pool, key: u64, log: &Arc<Log>, act: Act) -> Pooled<Val> {
    put_created(pool, key, log, act, Created::new).await
}

async fn put_created(
    pool: &Pool,
    key: u64,
    log: &Arc<Log>,
    act: Act,
    wrap: impl FnOnce(Val) -> Created<Val>,
) -> Pooled<Val> {
    pool.get_or_create(&key, || {
        let created = wrap(make(log, act));
        async move { Ok::<_, Infallible>(created) }
    })
    .await
    .expect("the factory never fails")
}

/// Lets every background task run until the runtime is idle (paused time: the 1 ms sleep only
/// completes once nothing else can run).
async fn settle() {
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Sleeps (virtual time) until `t0 + at`.
async fn sleep_until(t0: Instant, at: Duration) {
    tokio::time::sleep_until(t0 + at).await;
}

fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("runtime")
}

/// Runs `body` on its own thread and fails if it does not finish within `limit` (real time):
/// a guard against a synchronous deadlock, which no `tokio::time::timeout` can cut.
fn run_bounded(limit: Duration, body: impl FnOnce() + Send + 'static) {
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let handle = std::thread::spawn(move || {
        body();
        let _ = done_tx.send(());
    });
    match done_rx.recv_timeout(limit) {
        Ok(()) => handle.join().expect("body finished"),
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => match handle.join() {
            Ok(()) => {}
            Err(panic) => std::panic::resume_unwind(panic),
        },
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            panic!("deadlock: the scenario did not finish within {limit:?} (real time)")
        }
    }
}

/// What the pool and the log read, for a failed wait.
fn state(pool: &Pool, log: &Log) -> String {
    let stats = pool.stats();
    format!(
        "created {}, evicted {}, retires started {}, ok {}, retire failures {}, resident {}",
        log.created().len(),
        stats.evictions.total(),
        log.started_total(),
        log.ok_count(),
        stats.retire_failures,
        pool.len()
    )
}

/// Waits (real time, multi-thread runtime) until `done()` or fails after `limit`, saying what
/// `state()` reads then.
///
/// Checks every millisecond, not in a spin: a spinning check takes the log's locks over and over
/// and, on a loaded two-core machine, can keep the retires it waits for from taking them (a
/// clean-clone CI run once timed out after 5 s here; not reproduced in about 1 300 loaded runs).
async fn wait_real(
    limit: Duration,
    what: &str,
    mut done: impl FnMut() -> bool,
    state: impl Fn() -> String,
) {
    let deadline = std::time::Instant::now() + limit;
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting for: {what}; {}",
            state()
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

fn xorshift(mut x: u64) -> u64 {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    x
}

// ---------------------------------------------------------------------------------------------
// 1. Exactly once
// ---------------------------------------------------------------------------------------------

/// P5/P7/P9: every way a value leaves the pool (capacity, expiry found by `get`, an expired
/// entry replaced by `get_or_create`, prune_expired, prune_idle, evict_where, invalidate,
/// reset, shutdown, a dropped one-shot) retires it exactly once, with the matching cause.
#[tokio::test(start_paused = true)]
async fn every_exit_path_retires_each_value_exactly_once() {
    let (pool, log) = setup(
        PoolConfig::default()
            .ttl(Duration::from_secs(100))
            .max_entries(4),
    );
    let t0 = Instant::now();
    // Deadlines 100, 101, 102, 103 s.
    for k in 0..4 {
        sleep_until(t0, Duration::from_secs(k)).await;
        drop(put(&pool, k, &log, Act::Ok).await);
    }
    // Capacity: k0 has the soonest deadline.
    sleep_until(t0, Duration::from_secs(4)).await;
    drop(put(&pool, 4, &log, Act::Ok).await);
    settle().await;
    assert_eq!(
        log.started(0),
        1,
        "the capacity victim (k0, soonest deadline) is retired"
    );
    assert_eq!(pool.stats().evictions.capacity, 1);
    // Invalidate.
    assert!(pool.invalidate(&4).await);
    assert!(
        !pool.invalidate(&4).await,
        "a second invalidate finds nothing"
    );
    assert_eq!(log.started(4), 1);
    // Expired, found by a lookup.
    sleep_until(t0, Duration::from_millis(101_500)).await;
    assert!(pool.get(&1).is_none(), "k1 expired at 101 s");
    assert!(pool.get(&1).is_none());
    settle().await;
    assert_eq!(log.started(1), 1);
    // Expired entry replaced by a new one.
    sleep_until(t0, Duration::from_millis(102_500)).await;
    let replacement = put(&pool, 2, &log, Act::Ok).await;
    assert_eq!(replacement.id, 5, "k2 was rebuilt");
    drop(replacement);
    settle().await;
    assert_eq!(log.started(2), 1);
    // Expired, pruned.
    sleep_until(t0, Duration::from_millis(103_500)).await;
    let report = pool.prune_expired().await;
    assert_eq!((report.retired, report.failed), (1, 0));
    assert_eq!(log.started(3), 1);
    // Owner gone.
    drop(put(&pool, 5, &log, Act::Ok).await); // id 6
    let report = pool
        .evict_where(EvictionCause::OwnerGone, |key, _| *key == 5)
        .await;
    assert_eq!((report.retired, report.failed), (1, 0));
    assert_eq!(log.started(6), 1);
    // Idle (k2's replacement, id 5, unused since 102.5 s).
    sleep_until(t0, Duration::from_secs(110)).await;
    let report = pool.prune_idle(Duration::from_secs(1)).await;
    assert_eq!((report.retired, report.failed), (1, 0));
    assert_eq!(log.started(5), 1);
    assert!(pool.is_empty());
    // One-shot: retired when the caller drops it, not before.
    let one_shot = put_created(&pool, 6, &log, Act::Ok, Created::one_shot).await; // id 7
    assert!(!one_shot.is_pooled());
    settle().await;
    assert_eq!(
        log.started(7),
        0,
        "a one-shot value is not retired while the caller holds it"
    );
    drop(one_shot);
    settle().await;
    assert_eq!(log.started(7), 1);
    // Reset.
    drop(put(&pool, 7, &log, Act::Ok).await); // id 8
    drop(put(&pool, 8, &log, Act::Ok).await); // id 9
    let report = pool.reset().await;
    assert_eq!((report.retired, report.failed), (2, 0));
    // Shutdown.
    drop(put(&pool, 9, &log, Act::Ok).await); // id 10
    drop(put(&pool, 10, &log, Act::Ok).await); // id 11
    let report = pool.shutdown().await;
    assert_eq!(
        (
            report.retire.retired,
            report.retire.failed,
            report.skipped_shards
        ),
        (2, 0, 0)
    );
    assert!(matches!(
        pool.get_or_create(&11, || async {
            Ok::<_, Infallible>(Created::new(make(&log, Act::Ok)))
        })
        .await,
        Err(PoolError::ShutDown)
    ));
    settle().await;

    assert_eq!(log.created().len(), 12);
    log.assert_all_created_retired_once();
    log.assert_no_drop_before_retire();
    let stats = pool.stats();
    let e = stats.evictions;
    assert_eq!(
        (
            e.capacity,
            e.invalidated,
            e.expired,
            e.owner_gone,
            e.idle,
            e.reset
        ),
        (1, 1, 3, 1, 1, 4),
        "evictions by cause: {e:?}"
    );
    assert_eq!(stats.one_shots, 1);
    assert_eq!(stats.retire_failures, 0);
    log.detach();
}

/// P4/P5 (focus 5): a burst of thousands of capacity evictions with no yield between the
/// inserts queues every victim; a few yields later every one of the N-1 victims is retired
/// exactly once and the resident value is not.
#[tokio::test(start_paused = true)]
async fn burst_of_capacity_evictions_retires_every_victim_once_after_a_few_yields() {
    const N: u64 = 5_000;
    let (pool, log) = setup(PoolConfig::default().max_entries(1));
    for key in 0..N {
        drop(put(&pool, key, &log, Act::Ok).await);
    }
    let stats = pool.stats();
    assert_eq!(stats.evictions.capacity, N - 1);
    assert_eq!((pool.len(), stats.entries), (1, 1));
    let mut yields = 0;
    while log.started_total() < N - 1 && yields < 8 {
        tokio::task::yield_now().await;
        yields += 1;
    }
    assert_eq!(
        log.started_total(),
        N - 1,
        "all victims retired after {yields} yields"
    );
    assert_eq!(log.ok_count(), N - 1);
    settle().await;
    log.assert_no_double_retire();
    for id in 0..N - 1 {
        assert_eq!(log.started(id), 1, "victim {id}");
        assert_eq!(log.dropped(id), 1, "victim {id} is dropped once retired");
    }
    assert_eq!(log.started(N - 1), 0, "the resident value is not retired");
    assert_eq!(pool.get(&(N - 1)).map(|v| v.id), Some(N - 1));
    assert_eq!(pool.stats().retire_failures, 0);
    log.assert_no_drop_before_retire();
    log.detach();
}

/// P5: victims of one burst are retired concurrently: 1000 retires that each take 1 s (of
/// virtual time) are all done 1 s after the burst, not 1000 s.
#[tokio::test(start_paused = true)]
async fn slow_retires_of_one_burst_run_concurrently() {
    const N: u64 = 1_001;
    let (pool, log) = setup(
        PoolConfig::default()
            .max_entries(1)
            .retire_timeout(Duration::from_secs(30)),
    );
    let t0 = Instant::now();
    for key in 0..N {
        drop(put(&pool, key, &log, Act::Sleep(Duration::from_secs(1))).await);
    }
    sleep_until(t0, Duration::from_millis(1_010)).await;
    assert_eq!(
        log.ok_count(),
        N - 1,
        "every slow retire finished ~1 s after the burst"
    );
    for id in 0..N - 1 {
        let done = log.ok_at(id).expect("retired") - t0;
        assert!(
            done >= Duration::from_secs(1) && done < Duration::from_millis(1_010),
            "id {id} at {done:?}"
        );
    }
    log.assert_no_double_retire();
    assert_eq!(pool.stats().retire_failures, 0);
    log.detach();
}

/// P5 on a multi-thread runtime: 8 tasks insert (no yield between inserts), invalidate and
/// reset over 64 keys in a pool of 16; every value is retired at most once while the tasks run,
/// every evicted value is retired once the background work settles (no victim stranded in the
/// retire queue), no resident value has been retired, and after a final reset every value ever
/// created was retired exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_tasks_on_a_multi_thread_runtime_retire_each_value_exactly_once() {
    for round in 0..3u64 {
        let (pool, log) = setup(PoolConfig::default().max_entries(16));
        let mut tasks = Vec::new();
        for task in 0..8u64 {
            let (pool, log) = (pool.clone(), Arc::clone(&log));
            tasks.push(tokio::spawn(async move {
                let mut x = 0x9E37_79B9_7F4A_7C15 ^ ((task + 1) * 0x1000_0001) ^ round;
                for i in 0..1_000u32 {
                    x = xorshift(x);
                    let key = x % 64;
                    match x % 41 {
                        0 | 1 => {
                            pool.invalidate(&key).await;
                        }
                        _ if task == 0 && i % 100 == 50 => {
                            let _ = pool.reset().await;
                        }
                        _ => {
                            let act = if x % 3 == 0 { Act::YieldOk } else { Act::Ok };
                            // (Another task may evict it at once: a handle may outlive its entry.)
                            drop(put(&pool, key, &log, act).await);
                        }
                    }
                }
            }));
        }
        for task in tasks {
            task.await.expect("task");
        }
        // Well above a retire's 10 s timeout: a retire stranded or stuck until its timeout still
        // fails the wait (it is never `ok`), a slow machine does not.
        wait_real(
            Duration::from_secs(20),
            "every evicted value retired",
            || {
                log.started_total() == pool.stats().evictions.total()
                    && log.ok_count() == log.started_total()
            },
            || state(&pool, &log),
        )
        .await;
        log.assert_no_double_retire();
        let resident: Vec<u64> = (0..64).filter_map(|k| pool.get(&k).map(|v| v.id)).collect();
        assert_eq!(resident.len(), pool.len());
        for id in &resident {
            assert_eq!(log.started(*id), 0, "resident value {id} was retired");
        }
        assert_eq!(
            log.created().len() as u64,
            pool.stats().evictions.total() + resident.len() as u64,
            "every created value is either resident or was evicted"
        );
        let report = pool.reset().await;
        assert_eq!(report.total(), resident.len());
        wait_real(
            Duration::from_secs(20),
            "the final reset's retires",
            || log.started_total() == log.created().len() as u64,
            || state(&pool, &log),
        )
        .await;
        log.assert_all_created_retired_once();
        log.assert_no_drop_before_retire();
        assert_eq!(pool.stats().retire_failures, 0);
        log.detach();
    }
}

/// P2/P5 on a multi-thread runtime: many tasks find the same expired entries at once, through
/// `get` and through `get_or_create` (which replaces them); each expired value is evicted and
/// retired exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_lookups_of_expired_entries_retire_each_once() {
    const KEYS: u64 = 64;
    let (pool, log) = setup(PoolConfig::default().max_entries(1024));
    let mut expired = Vec::new();
    let mut latest = Instant::now();
    for key in 0..KEYS {
        let deadline = Instant::now() + Duration::from_micros(300);
        let handle = put_created(&pool, key, &log, Act::Ok, |v| Created::until(v, deadline)).await;
        if handle.is_pooled() {
            expired.push(handle.id);
            latest = latest.max(deadline);
        }
    }
    // Busy-wait (a few hundred microseconds) until every deadline has passed.
    while Instant::now() <= latest {
        std::hint::spin_loop();
    }
    let barrier = Arc::new(tokio::sync::Barrier::new(8));
    let mut tasks = Vec::new();
    for task in 0..8u64 {
        let (pool, log, barrier) = (pool.clone(), Arc::clone(&log), Arc::clone(&barrier));
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            for k in 0..KEYS {
                let key = (k + task * 8) % KEYS;
                if task % 2 == 0 {
                    if let Some(v) = pool.get(&key) {
                        assert!(!expired_id(&v), "an expired value was handed out");
                    }
                } else {
                    let v = put_created(&pool, key, &log, Act::Ok, |v| {
                        Created::until(v, Instant::now() + Duration::from_secs(3600))
                    })
                    .await;
                    assert!(!expired_id(&v), "an expired value was handed out");
                }
            }
        }));
    }
    fn expired_id(v: &Pooled<Val>) -> bool {
        v.deadline().is_some_and(|d| d <= Instant::now())
    }
    for task in tasks {
        task.await.expect("task");
    }
    wait_real(
        Duration::from_secs(20),
        "expired values retired",
        || expired.iter().all(|&id| log.started(id) >= 1),
        || state(&pool, &log),
    )
    .await;
    log.assert_no_double_retire();
    assert_eq!(pool.stats().evictions.expired, expired.len() as u64);
    let _ = pool.reset().await;
    wait_real(
        Duration::from_secs(20),
        "everything retired",
        || log.started_total() == log.created().len() as u64,
        || state(&pool, &log),
    )
    .await;
    log.assert_all_created_retired_once();
    log.detach();
}

// ---------------------------------------------------------------------------------------------
// 2. Outside locks
// ---------------------------------------------------------------------------------------------

/// P5: on every path, `retire()` — its synchronous part and every poll of its future — runs
/// with no pool lock held (`is_locked()` is false).
#[tokio::test(start_paused = true)]
async fn retire_runs_outside_every_lock_on_every_path() {
    let (pool, log) = setup(
        PoolConfig::default()
            .ttl(Duration::from_secs(100))
            .max_entries(2),
    );
    let t0 = Instant::now();
    let act = Act::YieldOk;
    // Capacity (background).
    drop(put(&pool, 0, &log, act).await);
    sleep_until(t0, Duration::from_secs(1)).await;
    drop(put(&pool, 1, &log, act).await);
    drop(put(&pool, 2, &log, act).await);
    settle().await;
    assert_eq!(log.started(0), 1);
    // Expired found by get (background) and by get_or_create (replaced).
    sleep_until(t0, Duration::from_secs(101)).await;
    assert!(pool.get(&1).is_none());
    drop(put(&pool, 2, &log, act).await);
    settle().await;
    assert_eq!((log.started(1), log.started(2)), (1, 1));
    // Invalidate, evict_where, prune_idle, prune_expired.
    drop(put(&pool, 3, &log, act).await);
    assert!(pool.invalidate(&3).await);
    drop(put(&pool, 4, &log, act).await);
    // Sanity check of the probe itself: `evict_where`'s predicate runs under shard read locks.
    let mut locked_in_pred = false;
    let probe = pool.clone();
    let _ = pool
        .evict_where(EvictionCause::OwnerGone, |k, _| {
            locked_in_pred |= probe.is_locked();
            *k == 4
        })
        .await;
    assert!(
        locked_in_pred,
        "is_locked() sees the locks evict_where's predicate runs under"
    );
    sleep_until(t0, Duration::from_secs(150)).await;
    let _ = pool.prune_idle(Duration::from_secs(10)).await; // the replacement of k2
    drop(
        put_created(&pool, 5, &log, act, |v| {
            Created::until(v, Instant::now() + Duration::from_secs(1))
        })
        .await,
    );
    sleep_until(t0, Duration::from_secs(152)).await;
    let _ = pool.prune_expired().await;
    // One-shot dropped.
    drop(put_created(&pool, 6, &log, act, Created::one_shot).await);
    // Reset and shutdown.
    drop(put(&pool, 7, &log, act).await);
    let _ = pool.reset().await;
    drop(put(&pool, 8, &log, act).await);
    let _ = pool.shutdown().await;
    settle().await;
    log.assert_all_created_retired_once();
    log.assert_never_locked();
    log.detach();
}

/// P5: a retire may call back into the pool (get, get_or_create of another key — itself an
/// insert that evicts for capacity —, invalidate of other keys, prune, stats) on every path
/// without deadlocking, and is still outside every lock while it does.
#[test]
fn retire_calling_back_into_the_pool_does_not_deadlock() {
    run_bounded(Duration::from_secs(20), || {
        paused_runtime().block_on(async {
            let config = PoolConfig::default()
                .ttl(Duration::from_secs(100))
                .max_entries(3)
                .retire_timeout(Duration::from_secs(60));
            let (pool, log) = setup(config);
            let t0 = Instant::now();
            // Capacity victim (background retire) calling back.
            drop(put(&pool, 10, &log, Act::Callback).await); // id 0
            sleep_until(t0, Duration::from_secs(1)).await;
            drop(put(&pool, 1, &log, Act::Ok).await);
            drop(put(&pool, 2, &log, Act::Ok).await);
            drop(put(&pool, 3, &log, Act::Ok).await); // evicts k10
            settle().await;
            assert_eq!(lock(&log.callbacks_done).clone(), vec![0], "capacity path");
            // Expired found by a lookup (background retire) calling back.
            drop(
                put_created(&pool, 11, &log, Act::Callback, |v| {
                    Created::until(v, Instant::now() + Duration::from_secs(1))
                })
                .await,
            );
            let id = *log.created().last().expect("created");
            sleep_until(t0, Duration::from_secs(3)).await;
            assert!(pool.get(&11).is_none());
            settle().await;
            assert!(
                lock(&log.callbacks_done).contains(&id),
                "expired-by-get path"
            );
            // Invalidate (inline retire) calling back.
            drop(put(&pool, 12, &log, Act::Callback).await);
            let id = *log.created().last().expect("created");
            assert!(pool.invalidate(&12).await);
            assert!(lock(&log.callbacks_done).contains(&id), "invalidate path");
            // Reset (inline retires) calling back.
            drop(put(&pool, 13, &log, Act::Callback).await);
            let id = *log.created().last().expect("created");
            let _ = pool.reset().await;
            assert!(lock(&log.callbacks_done).contains(&id), "reset path");
            // A background retire resetting the pool while other victims are queued.
            drop(put(&pool, 15, &log, Act::CallbackReset).await);
            let id = *log.created().last().expect("created");
            drop(put(&pool, 16, &log, Act::Ok).await);
            drop(put(&pool, 17, &log, Act::Ok).await);
            drop(put(&pool, 18, &log, Act::Ok).await); // evicts k15 (and maybe more)
            drop(put(&pool, 19, &log, Act::Ok).await);
            settle().await;
            assert!(
                lock(&log.callbacks_done).contains(&id),
                "reset from a background retire"
            );
            // Shutdown (inline retires) calling back: get_or_create now fails, no deadlock.
            drop(put(&pool, 14, &log, Act::Callback).await);
            let id = *log.created().last().expect("created");
            let _ = pool.shutdown().await;
            settle().await;
            assert!(lock(&log.callbacks_done).contains(&id), "shutdown path");
            let stuck = lock(&log.callback_stuck).clone();
            assert!(stuck.is_empty(), "callbacks stuck on the pool: {stuck:?}");
            log.assert_never_locked();
            log.assert_no_double_retire();
            assert_eq!(pool.stats().retire_failures, 0);
            log.detach();
        });
    });
}

// ---------------------------------------------------------------------------------------------
// 3. Bounded and isolated
// ---------------------------------------------------------------------------------------------

/// P5: in one burst of capacity evictions, hanging retires are all cut after about ONE
/// `retire_timeout` (they run concurrently) and counted; Ok retires finish at once; failing and
/// panicking retires are counted at once, not after the hanging ones; a slow retire finishes on
/// its own schedule.
#[tokio::test(start_paused = true)]
async fn hanging_retires_in_a_burst_are_cut_after_one_timeout_and_delay_nobody() {
    let timeout = Duration::from_secs(10);
    let (pool, log) = setup(PoolConfig::default().max_entries(1).retire_timeout(timeout));
    let acts = [
        Act::Hang,
        Act::Ok,
        Act::Err,
        Act::Hang,
        Act::PanicFirstPoll,
        Act::Sleep(Duration::from_secs(2)),
        Act::Hang,
        Act::ErrAfter(Duration::from_secs(1)),
        Act::PanicAfter(Duration::from_secs(1)),
        Act::YieldOk,
        Act::Ok, // stays resident
    ];
    let t0 = Instant::now();
    for (key, act) in acts.iter().enumerate() {
        drop(put(&pool, key as u64, &log, *act).await);
    }
    let victims = acts.len() as u64 - 1;
    assert_eq!(pool.stats().evictions.capacity, victims);

    sleep_until(t0, Duration::from_millis(5)).await;
    assert_eq!(
        log.started_total(),
        victims,
        "every victim's retire started at once"
    );
    assert_eq!(
        log.ok_at(1).map(|t| t - t0),
        Some(Duration::ZERO),
        "Ok retire not delayed"
    );
    assert_eq!(
        log.ok_at(9).map(|t| t - t0),
        Some(Duration::ZERO),
        "YieldOk retire not delayed"
    );
    assert_eq!(
        pool.stats().retire_failures,
        2,
        "Err and first-poll panic counted promptly"
    );

    sleep_until(t0, Duration::from_millis(1_005)).await;
    assert_eq!(
        pool.stats().retire_failures,
        4,
        "late Err and late panic counted promptly"
    );
    sleep_until(t0, Duration::from_millis(2_005)).await;
    assert_eq!(
        log.ok_at(5).map(|t| t - t0),
        Some(Duration::from_secs(2)),
        "slow retire on its own schedule"
    );

    sleep_until(t0, Duration::from_millis(9_990)).await;
    assert_eq!(
        pool.stats().retire_failures,
        4,
        "hanging retires not cut before the timeout"
    );
    assert!(log.abandoned().is_empty());

    let mut cut_at = None;
    while Instant::now() - t0 < 4 * timeout {
        tokio::time::sleep(Duration::from_millis(10)).await;
        if pool.stats().retire_failures == 7 {
            cut_at = Some(Instant::now() - t0);
            break;
        }
    }
    let cut_at = cut_at.expect("all three hanging retires are cut and counted");
    assert!(
        cut_at <= timeout + Duration::from_millis(100),
        "three hanging retires of one burst were all cut after about one timeout, not {cut_at:?}"
    );
    assert_eq!(
        log.abandoned(),
        HashSet::from([0, 3, 6]),
        "the hanging futures are dropped"
    );
    settle().await;
    log.assert_no_double_retire();
    assert_eq!(log.started_total(), victims);
    assert_eq!(log.ok_count(), 3);
    assert_eq!(pool.stats().retire_failures, 7);
    log.detach();
}

/// P5: a hanging retire from an earlier burst does not hold up the retires of later bursts.
#[tokio::test(start_paused = true)]
async fn hanging_retire_does_not_delay_later_bursts() {
    let timeout = Duration::from_secs(10);
    let (pool, log) = setup(PoolConfig::default().max_entries(1).retire_timeout(timeout));
    let t0 = Instant::now();
    drop(put(&pool, 0, &log, Act::Hang).await);
    drop(put(&pool, 1, &log, Act::Ok).await); // evicts k0
    sleep_until(t0, Duration::from_millis(1)).await;
    assert_eq!(log.started(0), 1, "the hanging retire is running");
    for (i, key) in (2..50u64).enumerate() {
        sleep_until(t0, Duration::from_millis(100 * (i as u64 + 1))).await;
        let before = Instant::now();
        drop(put(&pool, key, &log, Act::Ok).await); // evicts key - 1
        sleep_until(before, Duration::from_millis(1)).await;
        let done = log.ok_at(key - 1).map(|t| t - before);
        assert_eq!(
            done,
            Some(Duration::ZERO),
            "retire of k{} waited behind the hanging one",
            key - 1
        );
    }
    // A second hanging retire, evicted at 5 s, is cut on its own clock (at 15 s).
    sleep_until(t0, Duration::from_secs(5)).await;
    drop(put(&pool, 1_000, &log, Act::Hang).await); // evicts k49
    drop(put(&pool, 1_001, &log, Act::Ok).await); // evicts the hanging k1000
    let second = log.created().len() as u64 - 2;
    sleep_until(t0, timeout + Duration::from_millis(100)).await;
    assert_eq!(
        pool.stats().retire_failures,
        1,
        "the first hang is cut after one timeout"
    );
    assert!(log.abandoned().contains(&0) && !log.abandoned().contains(&second));
    sleep_until(
        t0,
        Duration::from_secs(5) + timeout - Duration::from_millis(10),
    )
    .await;
    assert_eq!(
        pool.stats().retire_failures,
        1,
        "the second hang is not cut early"
    );
    sleep_until(
        t0,
        Duration::from_secs(5) + timeout + Duration::from_millis(100),
    )
    .await;
    assert_eq!(
        pool.stats().retire_failures,
        2,
        "the second hang is cut one timeout after its eviction"
    );
    assert!(log.abandoned().contains(&second));
    log.assert_no_double_retire();
    log.detach();
}

/// P5: 500 hanging retires of one burst are all cut about one `retire_timeout` after the burst.
#[tokio::test(start_paused = true)]
async fn many_hanging_retires_of_one_burst_are_cut_together() {
    const N: u64 = 501;
    let timeout = Duration::from_secs(10);
    let (pool, log) = setup(PoolConfig::default().max_entries(1).retire_timeout(timeout));
    let t0 = Instant::now();
    for key in 0..N {
        drop(put(&pool, key, &log, Act::Hang).await);
    }
    sleep_until(t0, timeout - Duration::from_millis(10)).await;
    assert_eq!(pool.stats().retire_failures, 0);
    assert_eq!(log.started_total(), N - 1);
    sleep_until(t0, timeout + Duration::from_millis(100)).await;
    assert_eq!(
        pool.stats().retire_failures,
        N - 1,
        "all cut after one timeout"
    );
    assert_eq!(log.abandoned().len() as u64, N - 1);
    log.assert_no_double_retire();
    log.detach();
}

/// P5 / `Retire` docs ("a failing, panicking or hanging retire is counted ... and never stops
/// the others"): a retire that panics in its synchronous part (before it returns a future — the
/// trait's `fn retire(&self) -> impl Future` signature allows one) is a panicking retire like any
/// other. In a background burst it must be caught and counted, and the other victims of the same
/// burst must still be retired (not dropped unretired).
#[tokio::test(start_paused = true)]
async fn panic_in_sync_part_of_retire_does_not_stop_the_rest_of_a_background_burst() {
    let (pool, log) = setup(PoolConfig::default().max_entries(1));
    let acts = [
        Act::PanicSync,
        Act::Ok,
        Act::PanicSync,
        Act::YieldOk,
        Act::PanicFirstPoll,
        Act::Ok,
    ];
    for (key, act) in acts.iter().enumerate() {
        drop(put(&pool, key as u64, &log, *act).await);
    }
    settle().await;
    assert_eq!(
        (log.started(1), log.started(3)),
        (1, 1),
        "the others of the burst are retired"
    );
    assert!(log.ok_at(1).is_some() && log.ok_at(3).is_some());
    assert_eq!(log.started_total(), 5, "every victim's retire was called");
    log.assert_no_drop_before_retire();
    assert_eq!(
        pool.stats().retire_failures,
        3,
        "two sync panics and one first-poll panic"
    );
    // Later bursts still work.
    drop(put(&pool, 10, &log, Act::Ok).await); // evicts k5 (id 5)
    settle().await;
    assert!(log.ok_at(5).is_some(), "retires after the panics still run");
    log.assert_no_double_retire();
    log.detach();
}

/// P5 / guide ("retired ... with panics caught. Failures are counted, never propagated"): on
/// the inline paths a retire panicking in its synchronous part must not reach the caller of
/// `invalidate` / `reset`, must be counted, and must not stop the other victims of the reset.
#[tokio::test(start_paused = true)]
async fn panic_in_sync_part_of_retire_is_caught_on_inline_paths() {
    let (pool, log) = setup(PoolConfig::default().max_entries(16));
    drop(put(&pool, 0, &log, Act::PanicSync).await); // id 0
    let invalidated = tokio::spawn({
        let pool = pool.clone();
        async move { pool.invalidate(&0).await }
    })
    .await;
    assert!(
        matches!(invalidated, Ok(true)),
        "invalidate returned normally: {invalidated:?}"
    );
    assert_eq!(pool.stats().retire_failures, 1);
    // ids 1..=5
    for (key, act) in [
        Act::PanicSync,
        Act::Ok,
        Act::PanicFirstPoll,
        Act::Err,
        Act::YieldOk,
    ]
    .iter()
    .enumerate()
    {
        drop(put(&pool, key as u64 + 1, &log, *act).await);
    }
    let report = tokio::spawn({
        let pool = pool.clone();
        async move { pool.reset().await }
    })
    .await;
    let report = report.expect("reset returned normally");
    assert_eq!((report.retired, report.failed), (2, 3));
    assert_eq!(pool.stats().retire_failures, 4);
    for id in 0..6 {
        assert_eq!(log.started(id), 1, "value {id}");
    }
    log.assert_no_drop_before_retire();
    log.detach();
}

// ---------------------------------------------------------------------------------------------
// 4. Counts
// ---------------------------------------------------------------------------------------------

/// P9: after the background work settles, evictions by cause and retire_failures agree with
/// what the values observed, across capacity, expiry-by-lookup, invalidate and reset, with a
/// mix of Ok, failing, panicking and hanging retires.
#[tokio::test(start_paused = true)]
async fn stats_agree_with_what_the_retires_observed() {
    let timeout = Duration::from_secs(5);
    let (pool, log) = setup(
        PoolConfig::default()
            .ttl(Duration::from_secs(1_000))
            .max_entries(8)
            .retire_timeout(timeout),
    );
    let mix = [
        Act::Ok,
        Act::Err,
        Act::YieldOk,
        Act::PanicFirstPoll,
        Act::Hang,
        Act::PanicSync,
        Act::PanicAfter(Duration::from_millis(200)),
        Act::ErrAfter(Duration::from_millis(300)),
        Act::Sleep(Duration::from_millis(700)),
    ];
    let act = |i: u64| mix[(i as usize * 5 + 3) % mix.len()];
    let t0 = Instant::now();
    // 40 keys through a pool of 8: 32 capacity evictions.
    for key in 0..40u64 {
        sleep_until(t0, Duration::from_millis(key)).await;
        drop(put(&pool, key, &log, act(key)).await);
    }
    // The 8 residents expire; 5 are found by get, 3 replaced by get_or_create.
    sleep_until(t0, Duration::from_secs(1_100)).await;
    for key in 32..37 {
        assert!(pool.get(&key).is_none());
    }
    for key in 37..40 {
        drop(put(&pool, key, &log, act(key)).await);
    }
    // 2 more, invalidate 2, reset the remaining 3 (the replacements of k38, k39, and k101).
    drop(put(&pool, 100, &log, act(100)).await);
    drop(put(&pool, 101, &log, act(101)).await);
    assert!(pool.invalidate(&100).await);
    assert!(pool.invalidate(&37).await);
    let resident = pool.len();
    let report = pool.reset().await;
    assert_eq!(report.total(), resident);
    sleep_until(Instant::now(), 2 * timeout).await;

    let stats = pool.stats();
    let e = stats.evictions;
    assert_eq!(
        (
            e.capacity,
            e.expired,
            e.invalidated,
            e.reset,
            e.idle,
            e.owner_gone
        ),
        (32, 8, 2, resident as u64, 0, 0),
        "evictions by cause: {e:?}"
    );
    log.assert_all_created_retired_once();
    assert_eq!(
        e.total(),
        log.started_total(),
        "every eviction retired once"
    );
    let failures = log.started_total() - log.ok_count();
    assert_eq!(
        stats.retire_failures, failures,
        "retire_failures = retires that did not return Ok"
    );
    let expected_failures = log
        .created()
        .iter()
        .filter(|&&id| !succeeds(log.act(id)))
        .count() as u64;
    assert_eq!(
        stats.retire_failures, expected_failures,
        "retire_failures = values whose act fails"
    );
    let reset_ok = [38, 39, 101]
        .iter()
        .filter(|&&key| succeeds(act(key)))
        .count();
    assert_eq!(
        (report.retired, report.failed),
        (reset_ok, 3 - reset_ok),
        "reset report"
    );
    assert_eq!(stats.entries, 0);
    log.detach();
}

// ---------------------------------------------------------------------------------------------
// 6. Handles, shutdown, runtimes
// ---------------------------------------------------------------------------------------------

/// Guide, "Handles and retire": an entry evicted while a handle is out is retired at once (not
/// when the handle drops), the handle keeps the value alive and usable, and dropping the handle
/// afterwards does not retire it again.
#[tokio::test(start_paused = true)]
async fn handles_keep_evicted_values_alive_and_are_not_retired_twice() {
    let (pool, log) = setup(
        PoolConfig::default()
            .ttl(Duration::from_secs(100))
            .max_entries(1),
    );
    let held_capacity = put(&pool, 0, &log, Act::Ok).await; // id 0
    drop(put(&pool, 1, &log, Act::Ok).await); // id 1, evicts id 0
    settle().await;
    assert_eq!(log.started(0), 1, "evicted while held: retired immediately");
    assert_eq!(log.dropped(0), 0, "the handle keeps the value alive");
    assert_eq!(held_capacity.id, 0);

    let held_invalidated = pool.get(&1).expect("resident");
    assert!(pool.invalidate(&1).await);
    assert_eq!((log.started(1), log.dropped(1)), (1, 0));

    let held_expired = put(&pool, 2, &log, Act::Ok).await; // id 2
    tokio::time::sleep(Duration::from_secs(101)).await;
    assert!(pool.get(&2).is_none());
    settle().await;
    assert_eq!((log.started(2), log.dropped(2)), (1, 0));

    let held_reset = put(&pool, 3, &log, Act::Ok).await; // id 3
    let _ = pool.reset().await;
    assert_eq!((log.started(3), log.dropped(3)), (1, 0));

    // Re-creating an evicted key builds a new value; the old handle still sees the old one.
    let again = put(&pool, 0, &log, Act::Ok).await; // id 4
    assert_eq!((again.id, held_capacity.id), (4, 0));

    drop((held_capacity, held_invalidated, held_expired, held_reset));
    settle().await;
    for id in 0..4 {
        assert_eq!((log.started(id), log.dropped(id)), (1, 1), "value {id}");
    }
    assert_eq!(
        (log.started(4), log.dropped(4)),
        (0, 0),
        "the resident value is untouched"
    );
    log.assert_no_drop_before_retire();
    log.detach();
}

/// P7: victims of capacity evictions still queued for the background retire when the pool is
/// shut down (or reset) are retired exactly once, and not again by the shutdown.
#[tokio::test(start_paused = true)]
async fn shutdown_and_reset_right_after_a_burst_retire_everything_once() {
    let (pool, log) = setup(PoolConfig::default().max_entries(1));
    for key in 0..100 {
        drop(put(&pool, key, &log, Act::Ok).await);
    }
    let report = pool.reset().await; // no yield before: 99 victims still queued
    assert_eq!(report.total(), 1);
    for key in 100..200 {
        drop(put(&pool, key, &log, Act::YieldOk).await);
    }
    let report = pool.shutdown().await;
    assert_eq!(report.retire.total(), 1);
    settle().await;
    assert_eq!(log.created().len(), 200);
    log.assert_all_created_retired_once();
    let stats = pool.stats();
    assert_eq!((stats.evictions.capacity, stats.evictions.reset), (198, 2));
    assert_eq!(stats.retire_failures, 0);
    log.detach();
}

/// Guide, P4 row / "Handles and retire": victims queued when their runtime shuts down before
/// the retire task ever ran are retired exactly once by the next runtime's retire task.
#[test]
fn victims_queued_when_a_runtime_shuts_down_are_retired_on_the_next_runtime() {
    let (pool, log) = setup(PoolConfig::default().max_entries(1));
    paused_runtime().block_on(async {
        for key in 0..10 {
            drop(put(&pool, key, &log, Act::Ok).await);
        }
    }); // the runtime is dropped here, possibly before the retire task ran
    let before = log.started_total();
    paused_runtime().block_on(async {
        drop(put(&pool, 10, &log, Act::Ok).await); // evicts k9
        settle().await;
    });
    log.assert_no_double_retire();
    for id in 0..10 {
        assert_eq!(
            log.started(id),
            1,
            "value {id} (retired before the first runtime ended: {before})"
        );
    }
    assert_eq!(log.started(10), 0);
    assert_eq!(pool.stats().retire_failures, 0);
    log.detach();
}

/// P5: a retire cut off mid-way by its runtime shutting down is not started again on the next
/// runtime, and the retire queue keeps working there.
#[test]
fn retire_abandoned_by_a_runtime_shutdown_is_not_repeated() {
    let (pool, log) = setup(PoolConfig::default().max_entries(1));
    paused_runtime().block_on(async {
        drop(put(&pool, 0, &log, Act::Hang).await);
        drop(put(&pool, 1, &log, Act::Ok).await); // evicts the hanging k0
        settle().await;
        assert_eq!(log.started(0), 1);
    });
    assert!(
        log.abandoned().contains(&0),
        "the runtime dropped the hanging retire"
    );
    assert_eq!(
        pool.stats().retire_failures,
        1,
        "a retire cut off by its runtime is one that could not run"
    );
    paused_runtime().block_on(async {
        drop(put(&pool, 2, &log, Act::Ok).await); // evicts k1
        drop(put(&pool, 3, &log, Act::Ok).await); // evicts k2
        settle().await;
    });
    log.assert_no_double_retire();
    assert_eq!((log.started(0), log.started(1), log.started(2)), (1, 1, 1));
    log.detach();
}

/// `get` is a plain (non-async) function: finding an expired entry from a thread with no tokio
/// runtime must not panic (nothing documents a runtime requirement), must not hand the value out,
/// and must not lead to the value being retired twice; on the next runtime the value is retired
/// (or, at worst, counted as a retire that could not run).
#[test]
fn expired_entry_found_by_get_outside_a_runtime() {
    let (pool, log) = setup(PoolConfig::default().ttl(Duration::from_micros(1)));
    let deadline = paused_runtime().block_on(async {
        let v = put(&pool, 0, &log, Act::Ok).await;
        assert!(v.is_pooled());
        v.deadline().expect("ttl deadline")
    });
    // Outside any runtime the clock is the real one: wait (microseconds) for the deadline.
    while Instant::now() <= deadline {
        std::hint::spin_loop();
    }
    let found = std::panic::catch_unwind(AssertUnwindSafe(|| pool.get(&0).map(|v| v.id)));
    assert!(
        matches!(found, Ok(None)),
        "get outside a runtime: {found:?}"
    );
    paused_runtime().block_on(async {
        let pool2 = pool.clone();
        drop(put(&pool2, 1, &log, Act::Ok).await);
        let _ = pool.reset().await;
        settle().await;
    });
    log.assert_no_double_retire();
    assert!(
        log.started(0) == 1 || pool.stats().retire_failures >= 1,
        "the expired value was neither retired nor counted as a failure"
    );
    log.detach();
}

/// P6 + Pooled docs: dropping a one-shot handle "retires the value in the background"; a
/// handle dropped on a thread with no runtime (e.g. after its runtime ended) must not panic in
/// `Drop`, and the value is retired at most once.
#[test]
fn one_shot_handle_dropped_outside_a_runtime() {
    let (pool, log) = setup(PoolConfig::default());
    let handle = paused_runtime().block_on(put_created(&pool, 0, &log, Act::Ok, Created::one_shot));
    assert!(!handle.is_pooled());
    let dropped = std::panic::catch_unwind(AssertUnwindSafe(move || drop(handle)));
    assert!(
        dropped.is_ok(),
        "dropping a one-shot handle outside a runtime panicked"
    );
    log.assert_no_double_retire();
    assert!(
        log.started(0) == 1 || pool.stats().retire_failures >= 1,
        "the one-shot value was neither retired nor counted as a failure"
    );
    log.detach();
}

/// P4 capacity eviction while the pool thrashes (returning keys, protected and open sets):
/// every victim of those eviction paths is retired exactly once too.
#[tokio::test(start_paused = true)]
async fn thrashing_cycle_retires_each_victim_once() {
    let (pool, log) = setup(
        PoolConfig::default()
            .ttl(Duration::from_secs(3_600))
            .max_entries(32),
    );
    for round in 0..6u64 {
        for key in 0..(33 + round * 4) {
            tokio::time::sleep(Duration::from_millis(2)).await;
            drop(put(&pool, key, &log, Act::YieldOk).await);
            let _ = pool.get(&key);
        }
    }
    settle().await;
    let stats = pool.stats();
    assert!(stats.thrashing > 0, "the cycle thrashes: {stats:?}");
    assert_eq!(stats.evictions.capacity, log.started_total());
    log.assert_no_double_retire();
    let _ = pool.reset().await;
    settle().await;
    log.assert_all_created_retired_once();
    log.assert_no_drop_before_retire();
    log.detach();
}

/// P3/P5: the sweeper and lookups racing for the same expired and idle entries retire each
/// value once, whichever finds it first.
#[tokio::test(start_paused = true)]
async fn sweeper_and_lookups_retire_each_value_once() {
    let (pool, log) = setup(
        PoolConfig::default()
            .ttl(Duration::from_secs(10))
            .idle_ttl(Duration::from_secs(4))
            .sweep_interval(Duration::from_secs(1)),
    );
    let t0 = Instant::now();
    for step in 0..600u64 {
        sleep_until(t0, Duration::from_millis(100 * step)).await;
        let key = step % 23;
        if step % 3 == 0 {
            drop(put(&pool, key, &log, Act::YieldOk).await);
        } else {
            let _ = pool.get(&key);
        }
    }
    sleep_until(t0, Duration::from_secs(80)).await;
    let stats = pool.stats();
    assert_eq!(pool.len(), 0, "everything expired or went idle");
    assert!(
        stats.evictions.idle > 0 && stats.evictions.expired > 0,
        "{stats:?}"
    );
    assert_eq!(stats.evictions.total(), log.created().len() as u64);
    log.assert_all_created_retired_once();
    log.assert_no_drop_before_retire();
    let _ = pool.shutdown().await;
    log.detach();
}

/// P6: with a zero TTL every value is one-shot; concurrent callers of one key each build their
/// own, and each value is retired exactly once, when its caller drops it.
#[tokio::test(start_paused = true)]
async fn concurrent_one_shot_values_are_each_retired_once_on_drop() {
    let (pool, log) = setup(PoolConfig::default().ttl(Duration::ZERO));
    let handles =
        futures::future::join_all((0..10).map(|_| put(&pool, 7, &log, Act::YieldOk))).await;
    assert!(handles.iter().all(|h| !h.is_pooled()));
    assert_eq!(log.created().len(), 10, "each caller built its own");
    settle().await;
    assert_eq!(
        log.started_total(),
        0,
        "nothing is retired while the callers hold the values"
    );
    drop(handles);
    settle().await;
    log.assert_all_created_retired_once();
    assert_eq!(pool.stats().one_shots, 10);
    assert_eq!(pool.stats().evictions.total(), 0);
    log.detach();
}

/// P5: victims queued for the background retire are retired even if the last handle on the
/// pool is dropped right after the burst (the pool evicted them: it owes them a retire).
#[tokio::test(start_paused = true)]
async fn victims_queued_when_the_pool_is_dropped_are_still_retired() {
    let (pool, log) = setup(PoolConfig::default().max_entries(1));
    log.detach(); // no pool clone inside the log: dropping `pool` drops the pool
    for key in 0..50 {
        drop(put(&pool, key, &log, Act::YieldOk).await);
    }
    drop(pool);
    settle().await;
    log.assert_no_double_retire();
    for id in 0..49 {
        assert_eq!(
            log.started(id),
            1,
            "victim {id} evicted before the pool was dropped"
        );
    }
}

/// P7: a creation in flight when the pool is shut down must not put its value into the closed
/// pool, where nothing would ever retire it: the value ends up retired exactly once (as a
/// one-shot when its caller drops it, or by the pool), and the pool stays empty.
#[tokio::test(start_paused = true)]
async fn creation_in_flight_during_shutdown_does_not_leak_into_the_closed_pool() {
    let (pool, log) = setup(PoolConfig::default());
    let gate = Arc::new(tokio::sync::Notify::new());
    let creating = tokio::spawn({
        let (pool, log, gate) = (pool.clone(), Arc::clone(&log), Arc::clone(&gate));
        async move {
            pool.get_or_create(&0, || async move {
                gate.notified().await;
                Ok::<_, Infallible>(Created::new(make(&log, Act::Ok)))
            })
            .await
        }
    });
    tokio::time::sleep(Duration::from_millis(1)).await; // the factory is waiting
    let report = pool.shutdown().await;
    assert_eq!(report.retire.total(), 0);
    gate.notify_one();
    let outcome = creating.await.expect("task");
    assert_eq!(
        pool.len(),
        0,
        "the closed pool holds the late value: it would never be retired"
    );
    drop(outcome);
    settle().await;
    assert_eq!(log.created().len(), 1);
    log.assert_no_double_retire();
    assert!(
        log.started(0) == 1 || pool.stats().retire_failures == 1,
        "the late value was neither retired nor counted"
    );
    log.detach();
}
