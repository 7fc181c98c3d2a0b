//! Black-box attack suite for pool-core, written from SPEC.md (P1–P10, X4, X5) and
//! docs/pool-core.md only, through the public API. Each test names the requirement it checks.
//! Virtual time (`start_paused`) wherever time matters; the multi-thread tests never sleep.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::time::Duration;

use pool_core::{
    BoxError, Created, EvictionCause, KeyedPool, Knob, PoolConfig, PoolError, Pooled, Retire,
    SingleFlight, TaskFlag,
};
use tokio::time::{Instant, advance, sleep, timeout};

// ---------------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------------

#[derive(Debug, thiserror::Error)]
#[error("factory failed (expected by the test)")]
struct Boom;

/// How a value behaves when the pool retires it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Ok,
    Fail,
    /// Panics inside the retire future.
    Panic,
    /// Panics before returning its future (the trait's `fn retire(&self) -> impl Future` allows it).
    PanicEarly,
    /// Never finishes.
    Hang,
    /// Calls back into the pool from inside `retire`.
    CallBack,
}

type Pool = KeyedPool<u64, Val>;

/// Counts what happens to every value.
#[derive(Default)]
struct Tracker {
    next_id: AtomicU64,
    dropped: AtomicU64,
    /// Retire calls per value id.
    retires: Mutex<HashMap<u64, u32>>,
    /// Set if a retire saw `is_locked()` true.
    saw_lock: AtomicBool,
    /// The pool, for retires that check locks or call back.
    pool: OnceLock<Pool>,
}

impl Tracker {
    fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn val(self: &Arc<Self>, key: u64, mode: Mode) -> Val {
        Val {
            id: self.next_id.fetch_add(1, Ordering::SeqCst),
            key,
            mode,
            t: Arc::clone(self),
        }
    }

    fn built(&self) -> u64 {
        self.next_id.load(Ordering::SeqCst)
    }

    fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::SeqCst)
    }

    fn retired_total(&self) -> u64 {
        self.retires
            .lock()
            .unwrap()
            .values()
            .map(|n| u64::from(*n))
            .sum()
    }

    fn retired(&self, id: u64) -> u32 {
        self.retires.lock().unwrap().get(&id).copied().unwrap_or(0)
    }

    fn max_retires_of_one_value(&self) -> u32 {
        self.retires
            .lock()
            .unwrap()
            .values()
            .copied()
            .max()
            .unwrap_or(0)
    }

    fn note_retire(&self, id: u64) {
        if self.pool.get().is_some_and(KeyedPool::is_locked) {
            self.saw_lock.store(true, Ordering::SeqCst);
        }
        *self.retires.lock().unwrap().entry(id).or_insert(0) += 1;
    }
}

struct Val {
    id: u64,
    key: u64,
    mode: Mode,
    t: Arc<Tracker>,
}

impl Drop for Val {
    fn drop(&mut self) {
        self.t.dropped.fetch_add(1, Ordering::SeqCst);
    }
}

fn call_back(t: Arc<Tracker>, key: u64) -> Pin<Box<dyn Future<Output = ()> + Send>> {
    Box::pin(async move {
        let Some(pool) = t.pool.get().cloned() else {
            return;
        };
        drop(pool.get(&key));
        let _ = (pool.len(), pool.stats(), pool.is_empty());
        let other = key + 1_000_000;
        let t2 = Arc::clone(&t);
        let made = pool
            .get_or_create(&other, move || async move {
                Ok::<_, Boom>(Created::new(t2.val(other, Mode::Ok)))
            })
            .await;
        drop(made);
        pool.invalidate(&other).await;
    })
}

impl Retire for Val {
    fn retire(&self) -> impl Future<Output = Result<(), BoxError>> + Send {
        assert!(
            self.mode != Mode::PanicEarly,
            "retire panicked before returning its future (expected by the test)"
        );
        let t = Arc::clone(&self.t);
        let (id, key, mode) = (self.id, self.key, self.mode);
        async move {
            t.note_retire(id);
            match mode {
                Mode::Ok | Mode::PanicEarly => Ok(()),
                Mode::Fail => Err("retire failed (expected by the test)".into()),
                Mode::Panic => panic!("retire panicked (expected by the test)"),
                Mode::Hang => {
                    std::future::pending::<()>().await;
                    Ok(())
                }
                Mode::CallBack => {
                    call_back(t, key).await;
                    Ok(())
                }
            }
        }
    }
}

async fn make(pool: &Pool, t: &Arc<Tracker>, key: u64, mode: Mode) -> Pooled<Val> {
    let t = Arc::clone(t);
    pool.get_or_create(&key, move || async move {
        Ok::<_, Boom>(Created::new(t.val(key, mode)))
    })
    .await
    .expect("factory succeeds")
}

async fn make_until(pool: &Pool, t: &Arc<Tracker>, key: u64, deadline: Instant) -> Pooled<Val> {
    let t = Arc::clone(t);
    pool.get_or_create(&key, move || async move {
        Ok::<_, Boom>(Created::until(t.val(key, Mode::Ok), deadline))
    })
    .await
    .expect("factory succeeds")
}

/// Let background retires run (virtual time does not move).
async fn settle() {
    for _ in 0..200 {
        tokio::task::yield_now().await;
    }
}

// ---------------------------------------------------------------------------------------------
// P1: single-flight creation
// ---------------------------------------------------------------------------------------------

// P1 / metrics doc: "1 000 cold callers of one key: 1 creation, 999 coalesced".
#[tokio::test(start_paused = true)]
async fn p1_concurrent_misses_make_one_factory_call_and_count_coalesced() {
    let t = Tracker::new();
    let pool = Pool::new(PoolConfig::default());
    let calls = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..200 {
        let (pool, t, calls) = (pool.clone(), Arc::clone(&t), Arc::clone(&calls));
        tasks.push(tokio::spawn(async move {
            pool.get_or_create(&7, move || async move {
                calls.fetch_add(1, Ordering::SeqCst);
                sleep(Duration::from_secs(1)).await;
                Ok::<_, Boom>(Created::new(t.val(7, Mode::Ok)))
            })
            .await
            .expect("shared value")
            .id
        }));
    }
    let mut ids = Vec::new();
    for task in tasks {
        ids.push(task.await.unwrap());
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1, "one factory call");
    assert!(
        ids.iter().all(|id| *id == ids[0]),
        "every caller shares the value"
    );
    let s = pool.stats();
    assert_eq!(
        (s.misses, s.coalesced, s.creations, s.hits, s.entries),
        (200, 199, 1, 0, 1),
        "{s:?}"
    );
}

// P1 on a multi-thread runtime: however callers interleave, one key is built once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn p1_multi_thread_misses_for_one_key_make_one_factory_call() {
    for round in 0..50u64 {
        let t = Tracker::new();
        let pool = Pool::new(PoolConfig::default());
        let calls = Arc::new(AtomicUsize::new(0));
        let barrier = Arc::new(tokio::sync::Barrier::new(16));
        let mut tasks = Vec::new();
        for _ in 0..16 {
            let (pool, t, calls, barrier) = (
                pool.clone(),
                Arc::clone(&t),
                Arc::clone(&calls),
                Arc::clone(&barrier),
            );
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                pool.get_or_create(&round, move || async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    for _ in 0..50 {
                        tokio::task::yield_now().await;
                    }
                    Ok::<_, Boom>(Created::new(t.val(round, Mode::Ok)))
                })
                .await
                .expect("value")
                .id
            }));
        }
        let mut ids = Vec::new();
        for task in tasks {
            ids.push(task.await.unwrap());
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1, "round {round}");
        assert!(ids.iter().all(|id| *id == ids[0]));
        let s = pool.stats();
        assert_eq!(s.hits + s.misses, 16, "{s:?}");
        assert!(s.misses >= s.coalesced + s.creations, "{s:?}");
    }
}

// P1 + guide: "Factory errors are shared between the callers that waited on one creation as
// PoolError::Create(Arc<E>) and are not cached: the next call tries again."
#[tokio::test(start_paused = true)]
async fn p1_factory_error_is_shared_by_waiters_and_not_cached() {
    let t = Tracker::new();
    let pool = Pool::new(PoolConfig::default());
    let calls = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let (pool, calls) = (pool.clone(), Arc::clone(&calls));
        tasks.push(tokio::spawn(async move {
            pool.get_or_create(&1, move || async move {
                calls.fetch_add(1, Ordering::SeqCst);
                sleep(Duration::from_secs(1)).await;
                Err::<Created<Val>, _>(Boom)
            })
            .await
        }));
    }
    let mut errors = Vec::new();
    for task in tasks {
        match task.await.unwrap() {
            Err(PoolError::Create(e)) => errors.push(e),
            Err(other) => panic!("unexpected error {other:?}"),
            Ok(_) => panic!("a failed creation handed out a value"),
        }
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert!(
        errors.iter().all(|e| Arc::ptr_eq(e, &errors[0])),
        "one shared error"
    );
    assert_eq!(pool.stats().creation_failures, 1);
    assert!(pool.is_empty());
    let v = make(&pool, &t, 1, Mode::Ok).await;
    assert!(v.is_pooled(), "the failure is not cached");
    assert_eq!(pool.stats().creations, 1);
}

// P1/P10: a leader whose factory panics strands no waiter and poisons nothing; the waiters
// share one new creation (one creation per key at a time).
#[tokio::test(start_paused = true)]
async fn p1_panicking_factory_strands_no_waiter_and_does_not_poison_the_key() {
    let t = Tracker::new();
    let pool = Pool::new(PoolConfig::default());
    let leader = {
        let pool = pool.clone();
        tokio::spawn(async move {
            pool.get_or_create(&1, || async {
                sleep(Duration::from_secs(1)).await;
                let explode = true;
                if explode {
                    panic!("factory panicked (expected by the test)");
                }
                Err::<Created<Val>, _>(Boom)
            })
            .await
            .map(|v| v.id)
        })
    };
    tokio::task::yield_now().await;
    let waiter_calls = Arc::new(AtomicUsize::new(0));
    let mut waiters = Vec::new();
    for _ in 0..5 {
        let (pool, t, calls) = (pool.clone(), Arc::clone(&t), Arc::clone(&waiter_calls));
        waiters.push(tokio::spawn(async move {
            pool.get_or_create(&1, move || async move {
                calls.fetch_add(1, Ordering::SeqCst);
                sleep(Duration::from_secs(1)).await;
                Ok::<_, Boom>(Created::new(t.val(1, Mode::Ok)))
            })
            .await
            .map(|v| v.id)
        }));
    }
    assert!(leader.await.unwrap_err().is_panic());
    let mut ids = Vec::new();
    for w in waiters {
        let got = timeout(Duration::from_secs(3600), w)
            .await
            .expect("a waiter was stranded by a panicking leader")
            .expect("waiter task did not panic");
        ids.push(got.expect("waiter got a value"));
    }
    assert!(
        ids.iter().all(|id| *id == ids[0]),
        "waiters share one creation"
    );
    assert_eq!(waiter_calls.load(Ordering::SeqCst), 1, "one factory call");
    // The key is usable: a hit now, and another key too.
    assert!(pool.get(&1).is_some());
    let other = timeout(Duration::from_secs(1), make(&pool, &t, 2, Mode::Ok))
        .await
        .expect("pool usable after a panicking factory");
    assert!(other.is_pooled());
}

// P1/P10: "if that call is cancelled, a waiter runs its own factory": a leader whose factory
// hangs and whose caller is aborted does not strand the waiter.
#[tokio::test(start_paused = true)]
async fn p1_cancelled_leader_with_a_hanging_factory_hands_over_to_a_waiter() {
    let t = Tracker::new();
    let pool = Pool::new(PoolConfig::default());
    let leader = {
        let pool = pool.clone();
        tokio::spawn(async move {
            pool.get_or_create(&1, || async {
                std::future::pending::<()>().await;
                Err::<Created<Val>, _>(Boom)
            })
            .await
            .is_ok()
        })
    };
    tokio::task::yield_now().await;
    let waiter = {
        let (pool, t) = (pool.clone(), Arc::clone(&t));
        tokio::spawn(async move { make(&pool, &t, 1, Mode::Ok).await.id })
    };
    tokio::task::yield_now().await;
    sleep(Duration::from_secs(5)).await;
    leader.abort();
    let id = timeout(Duration::from_secs(60), waiter)
        .await
        .expect("the waiter was stranded by a cancelled leader")
        .unwrap();
    assert_eq!(pool.get(&1).expect("pooled").id, id);
}

// P1/P10: a flight abandoned by every caller (timeouts) is forgotten: the key is not poisoned.
#[tokio::test(start_paused = true)]
async fn p1_key_not_poisoned_after_every_caller_timed_out() {
    let t = Tracker::new();
    let pool = Pool::new(PoolConfig::default());
    for _ in 0..3 {
        let r = timeout(
            Duration::from_secs(1),
            pool.get_or_create(&1, || async {
                std::future::pending::<()>().await;
                Err::<Created<Val>, _>(Boom)
            }),
        )
        .await;
        assert!(r.is_err(), "hung factory times out");
    }
    let t0 = Instant::now();
    let v = timeout(Duration::from_secs(1), make(&pool, &t, 1, Mode::Ok))
        .await
        .expect("a new caller must not wait on an abandoned flight");
    assert!(v.is_pooled());
    assert_eq!(Instant::now(), t0);
}

// P1: "creations for different keys never wait on each other": with key 1's factory hung, key
// 2 is created, hit, invalidated, pruned and reset at virtual time zero; a factory may itself
// use the pool for another key, and may look its own key up.
#[tokio::test(start_paused = true)]
async fn p1_other_keys_and_maintenance_never_wait_on_a_hung_factory() {
    let t = Tracker::new();
    let pool = Pool::new(PoolConfig::default());
    let hung = {
        let pool = pool.clone();
        tokio::spawn(async move {
            let _ = pool
                .get_or_create(&1, || async {
                    std::future::pending::<()>().await;
                    Err::<Created<Val>, _>(Boom)
                })
                .await;
        })
    };
    tokio::task::yield_now().await;
    let t0 = Instant::now();
    let b = make(&pool, &t, 2, Mode::Ok).await;
    assert!(b.is_pooled());
    assert!(pool.get(&2).is_some());
    assert!(pool.invalidate(&2).await);
    make(&pool, &t, 2, Mode::Ok).await;
    pool.prune_idle(Duration::ZERO).await;
    pool.prune_expired().await;
    pool.reset().await;
    // A factory that calls back into the pool for another key and for its own key.
    let nested = {
        let (pool2, t2) = (pool.clone(), Arc::clone(&t));
        pool.get_or_create(&3, move || async move {
            assert!(pool2.get(&3).is_none());
            let inner = make(&pool2, &t2, 4, Mode::Ok).await;
            Ok::<_, Boom>(Created::new(t2.val(3 + inner.key, Mode::Ok)))
        })
    };
    let nested = timeout(Duration::from_secs(1), nested)
        .await
        .expect("a factory using the pool deadlocked")
        .unwrap();
    assert_eq!(nested.key, 7);
    assert_eq!(Instant::now(), t0, "nothing waited on key 1");
    hung.abort();
}

// ---------------------------------------------------------------------------------------------
// P2: deadlines, P6: one-shot values
// ---------------------------------------------------------------------------------------------

// P2: "An entry at or past its deadline is never returned; the lookup that finds it evicts it
// (cause Expired) and retires it in the background."
#[tokio::test(start_paused = true)]
async fn p2_entry_expires_exactly_at_its_deadline() {
    let t = Tracker::new();
    let pool = Pool::new(PoolConfig::default().ttl(Duration::from_secs(10)));
    let t0 = Instant::now();
    let v = make(&pool, &t, 1, Mode::Ok).await;
    assert_eq!(v.created(), t0);
    assert_eq!(v.deadline(), Some(t0 + Duration::from_secs(10)));
    let first = v.id;
    drop(v);
    advance(Duration::from_millis(9_999)).await;
    assert_eq!(pool.get(&1).expect("not yet expired").id, first);
    advance(Duration::from_millis(1)).await;
    assert!(pool.get(&1).is_none(), "handed out at its deadline");
    assert_eq!(pool.stats().evictions.expired, 1);
    settle().await;
    assert_eq!(
        t.retired(first),
        1,
        "expired entry retired in the background"
    );
    let again = make(&pool, &t, 1, Mode::Ok).await;
    assert_ne!(again.id, first);
    assert_eq!(pool.stats().creations, 2);
    assert_eq!(t.retired(first), 1, "retired exactly once");
}

// P2: the same through get_or_create, with concurrent callers on an expired key.
#[tokio::test(start_paused = true)]
async fn p2_expired_entry_replaced_once_under_concurrent_callers() {
    let t = Tracker::new();
    let pool = Pool::new(PoolConfig::default().ttl(Duration::from_secs(10)));
    let old = make(&pool, &t, 1, Mode::Ok).await.id;
    advance(Duration::from_secs(10)).await;
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let (pool, t) = (pool.clone(), Arc::clone(&t));
        tasks.push(tokio::spawn(async move {
            pool.get_or_create(&1, move || async move {
                sleep(Duration::from_millis(5)).await;
                Ok::<_, Boom>(Created::new(t.val(1, Mode::Ok)))
            })
            .await
            .unwrap()
            .id
        }));
    }
    for task in tasks {
        assert_ne!(task.await.unwrap(), old, "expired value handed out");
    }
    settle().await;
    assert_eq!(t.built(), 2, "one replacement");
    assert_eq!(t.retired(old), 1);
    let s = pool.stats();
    assert_eq!(s.evictions.expired, 1, "{s:?}");
    assert_eq!(s.entries, 1);
}

// P2: deadline = min(created + ttl, factory deadline).
#[tokio::test(start_paused = true)]
async fn p2_deadline_is_the_sooner_of_ttl_and_factory_deadline() {
    let t = Tracker::new();
    let pool = Pool::new(PoolConfig::default().ttl(Duration::from_secs(100)));
    let t0 = Instant::now();
    let soon = make_until(&pool, &t, 1, t0 + Duration::from_secs(5)).await;
    let late = make_until(&pool, &t, 2, t0 + Duration::from_secs(500)).await;
    assert_eq!(soon.deadline(), Some(t0 + Duration::from_secs(5)));
    assert_eq!(late.deadline(), Some(t0 + Duration::from_secs(100)));
    advance(Duration::from_secs(5)).await;
    assert!(pool.get(&1).is_none());
    assert!(pool.get(&2).is_some());
    advance(Duration::from_secs(95)).await;
    assert!(pool.get(&2).is_none());
    // No TTL: the factory deadline alone; Created::new alone: no deadline.
    let bare = Pool::new(PoolConfig::default());
    assert_eq!(make(&bare, &t, 1, Mode::Ok).await.deadline(), None);
}

// P6: a deadline already passed (or exactly now: "at or past its deadline is never returned")
// gives a one-shot value, retired when dropped; the pool is unchanged.
#[tokio::test(start_paused = true)]
async fn p6_past_deadline_gives_a_one_shot_value_retired_on_drop() {
    let t = Tracker::new();
    let pool = Pool::new(PoolConfig::default());
    let now = Instant::now();
    let past = now.checked_sub(Duration::from_secs(1)).unwrap_or(now);
    let v = make_until(&pool, &t, 1, past).await;
    assert!(!v.is_pooled());
    assert!(pool.is_empty());
    let id = v.id;
    drop(v);
    settle().await;
    assert_eq!(t.retired(id), 1);
    // Deadline == now.
    let v = make_until(&pool, &t, 2, Instant::now()).await;
    let id2 = v.id;
    assert!(
        pool.get(&2).is_none(),
        "a value at its deadline was handed out"
    );
    drop(v);
    settle().await;
    pool.prune_expired().await;
    settle().await;
    assert_eq!(t.retired(id2), 1);
    let s = pool.stats();
    assert!(s.one_shots >= 1, "{s:?}");
    assert_eq!(s.entries, 0);
}

// P6 + guide: "Concurrent callers of such a key each build their own."
#[tokio::test(start_paused = true)]
async fn p6_concurrent_one_shot_callers_each_build_their_own() {
    let t = Tracker::new();
    let pool = Pool::new(PoolConfig::default());
    let mut tasks = Vec::new();
    for _ in 0..5 {
        let (pool, t) = (pool.clone(), Arc::clone(&t));
        tasks.push(tokio::spawn(async move {
            let v = pool
                .get_or_create(&1, move || async move {
                    sleep(Duration::from_secs(1)).await;
                    Ok::<_, Boom>(Created::one_shot(t.val(1, Mode::Ok)))
                })
                .await
                .unwrap();
            assert!(!v.is_pooled());
            v.id
        }));
    }
    let mut ids = Vec::new();
    for task in tasks {
        ids.push(task.await.unwrap());
    }
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 5, "each caller its own value");
    settle().await;
    assert_eq!(pool.stats().one_shots, 5);
    assert!(pool.is_empty());
    assert_eq!(t.retired_total(), 5);
    assert_eq!(t.max_retires_of_one_value(), 1);
    assert_eq!(t.dropped(), 5);
}

// Guide: "ttl: 0 makes every value one-shot".
#[tokio::test(start_paused = true)]
async fn p6_zero_ttl_makes_every_value_one_shot() {
    let t = Tracker::new();
    let pool = Pool::new(PoolConfig::default().ttl(Duration::ZERO));
    for _ in 0..3 {
        let v = make(&pool, &t, 1, Mode::Ok).await;
        assert!(!v.is_pooled());
    }
    settle().await;
    assert!(pool.is_empty());
    assert_eq!(t.built(), 3);
    assert_eq!(t.retired_total(), 3);
    assert_eq!(pool.stats().one_shots, 3);
}

// ---------------------------------------------------------------------------------------------
// X5: extreme durations
// ---------------------------------------------------------------------------------------------

// X5 / guide "Failure behaviour with extreme values".
#[tokio::test(start_paused = true)]
async fn x5_extreme_durations_never_panic_and_are_clamped() {
    let t = Tracker::new();
    let max = PoolConfig::MAX_DURATION;
    assert_eq!(max, Duration::from_secs(30 * 365 * 86_400));
    let cfg = PoolConfig::default()
        .ttl(Duration::MAX)
        .idle_ttl(Duration::MAX)
        .sweep_interval(Duration::MAX)
        .retire_timeout(Duration::MAX)
        .expiry_margin(Duration::MAX)
        .max_entries(0);
    assert_eq!(cfg.ttl_value(), Some(max));
    assert_eq!(cfg.idle_ttl_value(), Some(max));
    assert_eq!(cfg.sweep_interval_value(), Some(max));
    assert_eq!(cfg.retire_timeout_value(), max);
    assert_eq!(cfg.expiry_margin_value(), max);
    assert_eq!(cfg.max_entries_value(), 1);
    let pool = Pool::new(cfg);
    let t0 = Instant::now();
    let v = make(&pool, &t, 1, Mode::Ok).await;
    assert!(v.is_pooled());
    assert_eq!(v.deadline(), Some(t0 + max));
    drop(v);
    // A far factory deadline.
    let far = t0
        .checked_add(Duration::from_secs(u64::MAX / 4))
        .or_else(|| t0.checked_add(Duration::from_secs(1 << 40)))
        .unwrap_or(t0 + max);
    let w = make_until(&pool, &t, 2, far).await;
    assert!(w.is_pooled());
    assert_eq!(pool.len(), 1, "max_entries(0) clamps to 1");
    drop(w);
    advance(Duration::from_secs(1000 * 86_400)).await;
    settle().await;
    assert!(pool.get(&2).is_some());
    advance(Duration::from_millis(1)).await;
    assert_eq!(pool.prune_idle(Duration::MAX).await.total(), 0);
    assert_eq!(
        pool.prune_idle(Duration::new(u64::MAX, 999_999_999))
            .await
            .total(),
        0
    );
    assert_eq!(
        pool.prune_idle(Duration::from_secs(18_446_744_073_709_552))
            .await
            .total(),
        0,
        "a huge idle TTL wrapped around to a short one"
    );
    assert_eq!(pool.prune_idle(Duration::ZERO).await.total(), 1);

    // Zero everywhere but ttl (zero sweep interval disables the sweeper).
    let zero = Pool::new(
        PoolConfig::default()
            .idle_ttl(Duration::ZERO)
            .sweep_interval(Duration::ZERO)
            .retire_timeout(Duration::ZERO)
            .expiry_margin(Duration::ZERO),
    );
    assert_eq!(zero.config().sweep_interval_value(), None);
    make(&zero, &t, 1, Mode::Ok).await;
    advance(Duration::from_secs(3600)).await;
    settle().await;
    assert_eq!(zero.len(), 1, "no sweeper with a zero interval");
    // Tiny TTL.
    let tiny = Pool::new(PoolConfig::default().ttl(Duration::from_nanos(1)));
    drop(make(&tiny, &t, 1, Mode::Ok).await);
    advance(Duration::from_millis(1)).await;
    assert!(tiny.get(&1).is_none());
}

// ---------------------------------------------------------------------------------------------
// P3: idle TTL and the sweeper
// ---------------------------------------------------------------------------------------------

// P3: "retires entries unused for longer than idle_ttl (and expired ones)"; a hit counts as a use.
#[tokio::test(start_paused = true)]
async fn p3_prune_idle_uses_last_use_and_also_takes_expired_entries() {
    let t = Tracker::new();
    let pool = Pool::new(PoolConfig::default());
    let a = make(&pool, &t, 1, Mode::Ok).await.id;
    let b = make(&pool, &t, 2, Mode::Ok).await.id;
    advance(Duration::from_secs(30)).await;
    assert!(pool.get(&1).is_some());
    advance(Duration::from_millis(29_999)).await;
    assert_eq!(pool.prune_idle(Duration::from_secs(60)).await.total(), 0);
    advance(Duration::from_millis(2)).await;
    let report = pool.prune_idle(Duration::from_secs(60)).await;
    assert_eq!((report.retired, report.failed), (1, 0));
    assert_eq!(t.retired(b), 1);
    assert_eq!(t.retired(a), 0, "a used entry was pruned");
    assert_eq!(pool.stats().evictions.idle, 1);
    // An expired entry goes too, counted as expired.
    let c = make_until(&pool, &t, 3, Instant::now() + Duration::from_secs(10))
        .await
        .id;
    advance(Duration::from_secs(11)).await;
    pool.get(&1);
    let report = pool.prune_idle(Duration::from_secs(3600)).await;
    assert_eq!(report.total(), 1);
    assert_eq!(t.retired(c), 1);
    let s = pool.stats();
    assert_eq!((s.evictions.idle, s.evictions.expired), (1, 1), "{s:?}");
}

// P3: the sweeper retires idle and expired entries, and a dropped pool lets go of its values
// (the sweeper holds only a Weak).
#[tokio::test(start_paused = true)]
async fn p3_sweeper_retires_idle_entries_and_dropped_pool_frees_values() {
    let t = Tracker::new();
    let pool = Pool::new(
        PoolConfig::default()
            .ttl(Duration::from_secs(300))
            .idle_ttl(Duration::from_secs(60))
            .sweep_interval(Duration::from_secs(10)),
    );
    let idle = make(&pool, &t, 1, Mode::Ok).await.id;
    let busy = make(&pool, &t, 2, Mode::Ok).await.id;
    for _ in 0..10 {
        advance(Duration::from_secs(10)).await;
        assert!(pool.get(&2).is_some());
        settle().await;
    }
    assert_eq!(t.retired(idle), 1, "idle entry swept");
    assert_eq!(t.retired(busy), 0);
    for _ in 0..25 {
        advance(Duration::from_secs(10)).await;
        assert!(pool.get(&2).is_none_or(|v| v.id == busy));
        settle().await;
    }
    let s = pool.stats();
    assert_eq!(t.retired(busy), 1, "expired entry swept {s:?}");
    assert_eq!(s.evictions.idle, 1);
    assert_eq!(s.evictions.expired, 1);

    // Drop a pool holding values: they are freed, the sweeper does not keep the pool alive.
    let t2 = Tracker::new();
    let p2 = Pool::new(
        PoolConfig::default()
            .idle_ttl(Duration::from_secs(60))
            .sweep_interval(Duration::from_secs(1)),
    );
    for k in 0..10 {
        make(&p2, &t2, k, Mode::Ok).await;
    }
    drop(p2);
    advance(Duration::from_secs(2)).await;
    settle().await;
    assert_eq!(t2.dropped(), 10, "values of a dropped pool leaked");
}

// ---------------------------------------------------------------------------------------------
// P4: capacity
// ---------------------------------------------------------------------------------------------

// P4: "evicts the entry with the soonest deadline (no deadline sorts last)".
#[tokio::test(start_paused = true)]
async fn p4_capacity_evicts_soonest_deadline_and_no_deadline_last() {
    let t = Tracker::new();
    let pool = Pool::new(PoolConfig::default().max_entries(3));
    let h = |n: u64| Instant::now() + Duration::from_secs(3600 * n);
    let k1 = make_until(&pool, &t, 1, h(3)).await.id;
    let k2 = make_until(&pool, &t, 2, h(1)).await.id;
    let k3 = make_until(&pool, &t, 3, h(2)).await.id;
    make_until(&pool, &t, 4, h(4)).await;
    settle().await;
    assert_eq!(t.retired(k2), 1, "soonest deadline (key 2) first");
    assert!(pool.get(&2).is_none());
    make(&pool, &t, 5, Mode::Ok).await; // no deadline
    settle().await;
    assert_eq!(t.retired(k3), 1, "then key 3");
    make_until(&pool, &t, 6, h(10)).await;
    settle().await;
    assert_eq!(t.retired(k1), 1, "then key 1");
    make_until(&pool, &t, 7, h(20)).await;
    settle().await;
    assert!(
        pool.get(&5).is_some(),
        "the entry with no deadline sorts last"
    );
    assert!(pool.get(&4).is_none());
    let s = pool.stats();
    assert_eq!((s.entries, s.evictions.capacity), (3, 4), "{s:?}");
    assert_eq!(t.retired_total(), 4);
}

// P4: "ties: least recently used, then oldest".
#[tokio::test(start_paused = true)]
async fn p4_equal_deadlines_evict_the_least_recently_used() {
    let t = Tracker::new();
    let pool = Pool::new(PoolConfig::default().max_entries(3));
    for k in 1..=3 {
        make(&pool, &t, k, Mode::Ok).await;
        advance(Duration::from_secs(1)).await;
    }
    assert!(pool.get(&1).is_some());
    advance(Duration::from_secs(1)).await;
    make(&pool, &t, 4, Mode::Ok).await;
    assert!(pool.get(&2).is_none(), "least recently used (2) goes");
    assert!(pool.get(&1).is_some() && pool.get(&3).is_some());
    advance(Duration::from_secs(1)).await;
    assert!(pool.get(&4).is_some());
    advance(Duration::from_secs(1)).await;
    // Last uses: 1 and 3 at t=4 s (the asserts above), 4 at t=5 s: a tie on last use between 1
    // and 3, and 1 is older, so "then oldest" makes 1 the victim.
    make(&pool, &t, 5, Mode::Ok).await;
    assert!(
        pool.get(&1).is_none(),
        "tie on last use: the oldest (1) goes"
    );
    assert!(pool.get(&3).is_some() && pool.get(&4).is_some() && pool.get(&5).is_some());
}

// Guide, "Eviction causes": an entry already past its deadline that no lookup found yet "is
// counted here [Capacity] when an insert evicts it to make room".
#[tokio::test(start_paused = true)]
async fn p4_unfound_expired_entry_evicted_for_room_counts_as_capacity() {
    let t = Tracker::new();
    let pool = Pool::new(PoolConfig::default().max_entries(2));
    let old = make_until(&pool, &t, 1, Instant::now() + Duration::from_secs(1))
        .await
        .id;
    make(&pool, &t, 2, Mode::Ok).await;
    advance(Duration::from_secs(2)).await;
    make(&pool, &t, 3, Mode::Ok).await;
    settle().await;
    let s = pool.stats();
    assert_eq!((s.evictions.capacity, s.evictions.expired), (1, 0), "{s:?}");
    assert_eq!(t.retired(old), 1);
}

// P4 config doc: "A margin at least the TTL makes every entry 'about to expire', i.e. plain
// soonest-deadline eviction with no thrashing protection."
#[tokio::test(start_paused = true)]
async fn p4_margin_at_least_ttl_is_plain_soonest_deadline_even_for_returning_keys() {
    let t = Tracker::new();
    let pool = Pool::new(
        PoolConfig::default()
            .ttl(Duration::from_secs(3600))
            .expiry_margin(Duration::from_secs(3600))
            .max_entries(3),
    );
    for k in 1..=4 {
        make(&pool, &t, k, Mode::Ok).await;
        advance(Duration::from_secs(1)).await;
    }
    // 1 was evicted (soonest). Now it returns: plain soonest-deadline evicts 2.
    make(&pool, &t, 1, Mode::Ok).await;
    assert!(pool.get(&2).is_none(), "soonest deadline (2) must go");
    assert!(pool.get(&4).is_some(), "newest entry must stay");
}

// P4 guide: thrashing protection. A returning key takes room from the open set's last entry
// in capacity order (under a uniform TTL the newest), not from the next key a cycle needs.
#[tokio::test(start_paused = true)]
async fn p4_returning_key_evicts_the_newest_open_entry_under_uniform_ttl() {
    let t = Tracker::new();
    let pool = Pool::new(
        PoolConfig::default()
            .ttl(Duration::from_secs(3600))
            .max_entries(3),
    );
    for k in 1..=4 {
        make(&pool, &t, k, Mode::Ok).await;
        advance(Duration::from_secs(1)).await;
    }
    make(&pool, &t, 1, Mode::Ok).await;
    assert_eq!(pool.stats().thrashing, 1, "a miss on a returning key");
    assert!(
        pool.get(&2).is_some(),
        "the key a cycle needs next (2) stays"
    );
    assert!(pool.get(&4).is_none(), "the newest open entry (4) goes");
}

// P4 guide: "an entry within expiry_margin of its deadline (expired ones included) goes first
// in every case" — also when a returning key (thrashing) needs room.
#[tokio::test(start_paused = true)]
async fn p4_entry_within_expiry_margin_goes_first_for_a_returning_key() {
    let t = Tracker::new();
    let pool = Pool::new(
        PoolConfig::default()
            .ttl(Duration::from_secs(3600))
            .expiry_margin(Duration::from_secs(600))
            .max_entries(3),
    );
    let t0 = Instant::now();
    make_until(&pool, &t, 1, t0 + Duration::from_secs(1000)).await;
    advance(Duration::from_secs(1)).await;
    make_until(&pool, &t, 2, t0 + Duration::from_secs(2000)).await;
    advance(Duration::from_secs(1)).await;
    make(&pool, &t, 3, Mode::Ok).await;
    advance(Duration::from_secs(1)).await;
    make(&pool, &t, 4, Mode::Ok).await; // evicts 1 (soonest deadline)
    assert!(pool.get(&1).is_none());
    advance(Duration::from_secs(1500)).await; // 2 is now 500 s from its deadline: in its margin
    make(&pool, &t, 1, Mode::Ok).await; // a returning key
    assert_eq!(pool.stats().thrashing, 1);
    assert!(
        pool.get(&2).is_none(),
        "the entry within its expiry margin must go first"
    );
    assert!(pool.get(&3).is_some() && pool.get(&4).is_some());
}

// X4 / guide: "a cycle of 33 keys over a capacity of 32 misses about once a round (≥ 96 % hits
// ...), 64 over 32 about half" — no 0 %-hit cliff one key past capacity.
#[tokio::test(start_paused = true)]
async fn x4_cycle_one_key_past_capacity_keeps_hitting() {
    for (keys, min_hit_ratio) in [(33u64, 0.9), (64, 0.4)] {
        let t = Tracker::new();
        let pool = Pool::new(
            PoolConfig::default()
                .ttl(Duration::from_secs(3600))
                .max_entries(32),
        );
        let (mut hits, mut lookups) = (0u64, 0u64);
        for round in 0..30 {
            for k in 0..keys {
                let before = t.built();
                make(&pool, &t, k, Mode::Ok).await;
                advance(Duration::from_millis(10)).await;
                if round >= 3 {
                    lookups += 1;
                    if t.built() == before {
                        hits += 1;
                    }
                }
                assert!(pool.len() <= 32);
            }
        }
        let ratio = hits as f64 / lookups as f64;
        assert!(
            ratio >= min_hit_ratio,
            "{keys} keys over 32: hit ratio {ratio:.3} < {min_hit_ratio} ({:?})",
            pool.stats()
        );
        assert!(pool.stats().thrashing > 0);
    }
}

// P4: "the pool never holds more than max_entries", not even transiently, with 8 tasks on 4
// threads inserting; every victim retired exactly once; creations = entries + evictions.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn p4_never_over_capacity_under_concurrent_inserts_and_each_victim_retired_once() {
    let t = Tracker::new();
    let pool = Pool::new(PoolConfig::default().max_entries(16));
    let stop = Arc::new(AtomicBool::new(false));
    let over = Arc::new(AtomicUsize::new(0));
    let sampler = {
        let (pool, stop, over) = (pool.clone(), Arc::clone(&stop), Arc::clone(&over));
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let (len, entries) = (pool.len(), pool.stats().entries);
                over.fetch_max(len.max(entries), Ordering::SeqCst);
                tokio::task::yield_now().await;
            }
        })
    };
    let mut writers = Vec::new();
    for w in 0..8u64 {
        let (pool, t) = (pool.clone(), Arc::clone(&t));
        writers.push(tokio::spawn(async move {
            for i in 0..3_000u64 {
                // Some keys shared between writers, most distinct.
                let key = if i % 10 == 0 {
                    i % 40
                } else {
                    w * 1_000_000 + i
                };
                let v = make(&pool, &t, key, Mode::Ok).await;
                assert_eq!(v.key, key);
                if i % 500 == 0 {
                    pool.invalidate(&key).await;
                }
                if i % 1000 == 999 {
                    pool.prune_idle(Duration::from_secs(3600)).await;
                }
                assert!(pool.len() <= 16);
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    stop.store(true, Ordering::SeqCst);
    sampler.await.unwrap();
    assert!(
        over.load(Ordering::SeqCst) <= 16,
        "pool held {} > max_entries 16",
        over.load(Ordering::SeqCst)
    );
    let s = pool.stats();
    assert_eq!(
        s.creations,
        s.entries as u64 + s.evictions.total(),
        "creations = entries + evictions: {s:?}"
    );
    assert_eq!(s.creations, t.built(), "{s:?}");
    // Wait (without sleeping) for the background retires.
    let started = std::time::Instant::now();
    while t.retired_total() < s.evictions.total() && started.elapsed() < Duration::from_secs(10) {
        tokio::task::yield_now().await;
    }
    assert_eq!(
        t.retired_total(),
        s.evictions.total(),
        "every victim retired"
    );
    assert_eq!(t.max_retires_of_one_value(), 1, "a value retired twice");
    pool.reset().await;
    assert_eq!(t.retired_total(), t.built());
    assert_eq!(t.dropped(), t.built(), "values leaked");
}

// P4/P9: "thrashing counts misses on keys a capacity eviction had removed recently".
#[tokio::test(start_paused = true)]
async fn p9_thrashing_counts_misses_on_recent_capacity_victims_only() {
    let t = Tracker::new();
    let pool = Pool::new(PoolConfig::default().max_entries(2));
    for k in 1..=3 {
        make(&pool, &t, k, Mode::Ok).await;
        advance(Duration::from_secs(1)).await;
    }
    assert_eq!(pool.stats().thrashing, 0);
    assert!(pool.invalidate(&3).await);
    make(&pool, &t, 3, Mode::Ok).await; // invalidated, not a capacity victim
    assert_eq!(
        pool.stats().thrashing,
        0,
        "an invalidated key is not thrashing"
    );
    make(&pool, &t, 1, Mode::Ok).await; // capacity victim coming back
    assert_eq!(pool.stats().thrashing, 1);
}

// Memory: churn of many distinct keys over a small capacity stays bounded; no retired value
// leaks.
#[tokio::test(start_paused = true)]
async fn memory_churn_of_distinct_keys_stays_bounded_and_frees_victims() {
    let t = Tracker::new();
    let pool = Pool::new(
        PoolConfig::default()
            .ttl(Duration::from_secs(60))
            .max_entries(64),
    );
    for chunk in 0..30u64 {
        for i in 0..10_000u64 {
            let key = chunk * 10_000 + i;
            drop(make(&pool, &t, key, Mode::Ok).await);
        }
        advance(Duration::from_millis(7)).await;
        settle().await;
        assert!(pool.len() <= 64);
        let alive = t.built() - t.dropped();
        assert!(
            alive <= 64 + 10_000,
            "chunk {chunk}: {alive} values alive for 64 entries"
        );
    }
    settle().await;
    let s = pool.stats();
    assert_eq!(t.built() - t.dropped(), pool.len() as u64, "{s:?}");
    assert_eq!(t.retired_total(), s.evictions.total());
    assert_eq!(s.creations, 300_000);
}

// ---------------------------------------------------------------------------------------------
// P5: retire
// ---------------------------------------------------------------------------------------------

// P5: "retire runs only after every pool lock is released" — on every path, checked from
// inside retire with is_locked().
#[tokio::test(start_paused = true)]
async fn p5_retire_runs_outside_every_lock_on_every_path() {
    let t = Tracker::new();
    let pool = Pool::new(
        PoolConfig::default()
            .ttl(Duration::from_secs(100))
            .idle_ttl(Duration::from_secs(30))
            .sweep_interval(Duration::from_secs(5))
            .max_entries(4),
    );
    t.pool.set(pool.clone()).ok().unwrap();
    for k in 0..10 {
        make(&pool, &t, k, Mode::Ok).await; // capacity
    }
    settle().await;
    advance(Duration::from_secs(100)).await;
    pool.get(&9); // expiry found by get
    make(&pool, &t, 8, Mode::Ok).await; // expiry found by get_or_create
    settle().await;
    for k in 20..23 {
        make(&pool, &t, k, Mode::Ok).await;
    }
    pool.invalidate(&20).await;
    pool.evict_where(EvictionCause::OwnerGone, |k, _| *k == 21)
        .await;
    advance(Duration::from_secs(31)).await;
    pool.prune_idle(Duration::from_secs(30)).await;
    make(&pool, &t, 30, Mode::Ok).await;
    advance(Duration::from_secs(40)).await; // sweeper
    settle().await;
    make(&pool, &t, 31, Mode::Ok).await;
    pool.reset().await;
    make(&pool, &t, 32, Mode::Ok).await;
    let one_shot = pool
        .get_or_create(&33, || {
            let t = Arc::clone(&t);
            async move { Ok::<_, Boom>(Created::one_shot(t.val(33, Mode::Ok))) }
        })
        .await
        .unwrap();
    drop(one_shot);
    pool.shutdown().await;
    settle().await;
    assert!(t.retired_total() >= 15, "retired {}", t.retired_total());
    assert_eq!(t.max_retires_of_one_value(), 1);
    assert!(
        !t.saw_lock.load(Ordering::SeqCst),
        "a retire ran while a pool lock was held"
    );
}

// P5: a retire that calls back into the pool (get, get_or_create, invalidate) neither
// deadlocks nor sees a lock, on explicit and background paths. Run on its own thread with a
// watchdog so a deadlock fails instead of hanging.
#[test]
fn p5_retire_calling_back_into_the_pool_does_not_deadlock() {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap();
        let result = rt.block_on(async {
            let t = Tracker::new();
            let pool = Pool::new(PoolConfig::default().max_entries(2));
            t.pool.set(pool.clone()).ok().unwrap();
            for k in 0..5 {
                make(&pool, &t, k, Mode::CallBack).await; // capacity: background
            }
            settle().await;
            pool.invalidate(&4).await;
            make(&pool, &t, 10, Mode::CallBack).await;
            pool.reset().await;
            make(&pool, &t, 11, Mode::CallBack).await;
            pool.shutdown().await;
            settle().await;
            (t.saw_lock.load(Ordering::SeqCst), t.retired_total())
        });
        let _ = tx.send(result);
    });
    let (saw_lock, retired) = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("a retire calling back into the pool deadlocked (or panicked)");
    assert!(!saw_lock, "a retire saw a pool lock held");
    assert!(retired >= 7, "retired {retired}");
}

// P5 guide: "An entry evicted while handles are out is retired immediately, and the
// outstanding handles keep the value alive"; "Dropping a pooled handle does nothing".
#[tokio::test(start_paused = true)]
async fn p5_handles_keep_an_evicted_value_alive_and_dropping_them_retires_nothing() {
    let t = Tracker::new();
    let pool = Pool::new(PoolConfig::default().max_entries(1));
    let a = make(&pool, &t, 1, Mode::Ok).await;
    drop(pool.get(&1).unwrap());
    drop(make(&pool, &t, 1, Mode::Ok).await);
    settle().await;
    assert_eq!(
        t.retired_total(),
        0,
        "dropping pooled handles retired something"
    );
    assert!(pool.invalidate(&1).await);
    assert_eq!(t.retired(a.id), 1, "retired at eviction, handles still out");
    assert_eq!(t.dropped(), 0, "value freed while a handle holds it");
    assert_eq!(a.key, 1);
    let b = make(&pool, &t, 2, Mode::Ok).await;
    make(&pool, &t, 3, Mode::Ok).await; // capacity evicts 2 while `b` is held
    settle().await;
    assert_eq!(t.retired(b.id), 1);
    assert_eq!(t.dropped(), 0);
    drop(a);
    drop(b);
    assert_eq!(t.dropped(), 2);
    assert_eq!(t.max_retires_of_one_value(), 1);
}

// P5/P7 + guide: failing, panicking (also before the future exists) and hanging retires in
// one reset: each bounded by retire_timeout, isolated, counted; the reset still finishes.
#[tokio::test(start_paused = true)]
async fn p5_failing_panicking_hanging_retires_in_one_reset_are_isolated_and_bounded() {
    let t = Tracker::new();
    let pool = Pool::new(
        PoolConfig::default()
            .retire_timeout(Duration::from_secs(5))
            .max_entries(100),
    );
    let modes = [
        Mode::Ok,
        Mode::Fail,
        Mode::Panic,
        Mode::PanicEarly,
        Mode::Hang,
        Mode::Ok,
    ];
    for (k, mode) in modes.iter().enumerate() {
        make(&pool, &t, k as u64, *mode).await;
    }
    let t0 = Instant::now();
    let report = pool.reset().await;
    let took = Instant::now() - t0;
    assert_eq!((report.retired, report.failed), (2, 4), "{report:?}");
    assert!(
        took <= Duration::from_secs(6),
        "reset took {took:?} with one 5 s hang"
    );
    let s = pool.stats();
    assert_eq!(s.retire_failures, 4, "{s:?}");
    assert_eq!(s.evictions.reset, 6);
    assert!(pool.is_empty());
    // Still usable.
    assert!(make(&pool, &t, 100, Mode::Ok).await.is_pooled());
}

// P5 guide: background retires of one burst run concurrently, "two hanging retires of one
// batch are both cut after one timeout", failures counted when they happen.
#[tokio::test(start_paused = true)]
async fn p5_background_hanging_retires_are_cut_after_one_timeout_and_counted() {
    let t = Tracker::new();
    let pool = Pool::new(
        PoolConfig::default()
            .retire_timeout(Duration::from_secs(5))
            .max_entries(1),
    );
    for k in 0..4 {
        make(&pool, &t, k, Mode::Hang).await;
    }
    make(&pool, &t, 10, Mode::Fail).await;
    make(&pool, &t, 11, Mode::PanicEarly).await;
    make(&pool, &t, 12, Mode::Panic).await;
    make(&pool, &t, 13, Mode::Ok).await;
    settle().await;
    // 4 hang, then fail, panic-early and panic are victims: 3 failures counted right away.
    assert_eq!(pool.stats().retire_failures, 3, "{:?}", pool.stats());
    sleep(Duration::from_millis(5_001)).await;
    settle().await;
    assert_eq!(
        pool.stats().retire_failures,
        7,
        "hanging retires not all cut after one timeout"
    );
    assert_eq!(pool.stats().evictions.capacity, 7);
    // The pool still works and later victims still retire.
    make(&pool, &t, 14, Mode::Ok).await;
    settle().await;
    assert_eq!(
        t.retired(t.built() - 2),
        1,
        "the victim after the failures was retired"
    );
}

// P5 guide: "A value evicted on a thread with no tokio runtime ... is dropped without retire,
// with a warning, and counted in retire_failures." Nothing panics, also when a one-shot handle
// is dropped outside a runtime.
#[test]
fn p5_eviction_without_a_runtime_drops_the_value_and_counts_a_failure() {
    let t = Tracker::new();
    let pool = Pool::new(PoolConfig::default().max_entries(1));
    futures::executor::block_on(make(&pool, &t, 1, Mode::Ok));
    futures::executor::block_on(make(&pool, &t, 2, Mode::Ok));
    let s = pool.stats();
    assert_eq!(s.evictions.capacity, 1);
    assert_eq!(s.retire_failures, 1, "{s:?}");
    assert_eq!(t.retired_total(), 0);
    assert_eq!(t.dropped(), 1, "the victim is dropped");

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let one_shot = rt.block_on(pool.get_or_create(&3, || {
        let t = Arc::clone(&t);
        async move { Ok::<_, Boom>(Created::one_shot(t.val(3, Mode::Ok))) }
    }));
    let one_shot = one_shot.unwrap();
    drop(rt);
    let dropped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(one_shot)));
    assert!(
        dropped.is_ok(),
        "dropping a one-shot handle outside a runtime panicked"
    );
}

// ---------------------------------------------------------------------------------------------
// P7: reset / shutdown
// ---------------------------------------------------------------------------------------------

// P7: reset retires everything and the pool stays usable; shutdown closes it.
#[tokio::test(start_paused = true)]
async fn p7_reset_then_shutdown() {
    let t = Tracker::new();
    let pool = Pool::new(
        PoolConfig::default()
            .idle_ttl(Duration::from_secs(1))
            .sweep_interval(Duration::from_secs(1)),
    );
    for k in 0..10 {
        make(&pool, &t, k, Mode::Ok).await;
    }
    let r = pool.reset().await;
    assert_eq!((r.retired, r.failed, r.total()), (10, 0, 10));
    assert!(pool.is_empty());
    for k in 0..5 {
        make(&pool, &t, k, Mode::Ok).await;
    }
    let report = pool.shutdown().await;
    assert_eq!(report.retire.retired, 5);
    assert_eq!(report.skipped_shards, 0);
    let calls = AtomicUsize::new(0);
    let after = pool
        .get_or_create(&1, || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Ok::<_, Boom>(Created::new(t.val(1, Mode::Ok)))
        })
        .await;
    assert!(matches!(after, Err(PoolError::ShutDown)));
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    assert!(pool.get(&1).is_none());
    let again = pool.shutdown().await;
    assert_eq!(again.retire.total(), 0);
    advance(Duration::from_secs(10)).await;
    settle().await;
    let s = pool.stats();
    assert_eq!(s.evictions.reset, 15, "{s:?}");
    assert_eq!(t.retired_total(), 15);
    assert_eq!(t.max_retires_of_one_value(), 1);
}

// P7: "shutdown() drains without blocking on a contended lock": a shard held by evict_where's
// predicate (which "runs under shard read locks") on another thread is skipped and reported.
#[test]
fn p7_shutdown_never_blocks_on_a_shard_held_by_evict_where() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let t = Tracker::new();
    let pool = Pool::new(PoolConfig::default());
    rt.block_on(async {
        for k in 0..64 {
            make(&pool, &t, k, Mode::Ok).await;
        }
    });
    let (in_pred_tx, in_pred_rx) = mpsc::channel::<()>();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let holder = {
        let (pool, handle) = (pool.clone(), rt.handle().clone());
        std::thread::spawn(move || {
            let mut first = true;
            handle.block_on(pool.evict_where(EvictionCause::OwnerGone, |_, _| {
                if first {
                    first = false;
                    let _ = in_pred_tx.send(());
                    let _ = release_rx.recv_timeout(Duration::from_secs(20));
                }
                false
            }))
        })
    };
    in_pred_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("predicate ran");
    let (done_tx, done_rx) = mpsc::channel();
    {
        let (pool, handle) = (pool.clone(), rt.handle().clone());
        std::thread::spawn(move || {
            let report = handle.block_on(pool.shutdown());
            let _ = done_tx.send(report);
        });
    }
    let outcome = done_rx.recv_timeout(Duration::from_secs(10));
    let _ = release_tx.send(());
    let report = outcome.expect("shutdown blocked on a shard held by evict_where");
    let _ = holder.join();
    assert!(report.skipped_shards >= 1, "{report:?}");
    assert!(report.retire.retired < 64, "{report:?}");
}

// ---------------------------------------------------------------------------------------------
// P9: stats
// ---------------------------------------------------------------------------------------------

// P9: the counters add up over a mixed sequence.
#[tokio::test(start_paused = true)]
async fn p9_stats_add_up_over_a_mixed_sequence() {
    let t = Tracker::new();
    let pool = Pool::new(
        PoolConfig::default()
            .ttl(Duration::from_secs(10))
            .max_entries(3),
    );
    for k in 0..5 {
        make(&pool, &t, k, Mode::Ok).await; // 5 misses, 2 capacity evictions
    }
    for k in 2..5 {
        make(&pool, &t, k, Mode::Ok).await; // 3 hits
        assert!(pool.get(&k).is_some()); // 3 hits
    }
    let _ = pool
        .get_or_create(&9, || async { Err::<Created<Val>, _>(Boom) })
        .await; // miss + failure
    drop(
        pool.get_or_create(&8, || {
            let t = Arc::clone(&t);
            async move { Ok::<_, Boom>(Created::one_shot(t.val(8, Mode::Ok))) }
        })
        .await,
    ); // miss + one-shot
    pool.invalidate(&2).await;
    pool.evict_where(EvictionCause::OwnerGone, |k, _| *k == 3)
        .await;
    advance(Duration::from_secs(10)).await;
    pool.prune_expired().await; // 4 expired
    settle().await;
    let s = pool.stats();
    assert_eq!(s.hits, 6, "{s:?}");
    assert_eq!(s.misses, 7, "{s:?}");
    assert_eq!(s.coalesced, 0);
    assert_eq!((s.creations, s.creation_failures, s.one_shots), (5, 1, 1));
    assert_eq!(
        s.misses,
        s.creations + s.creation_failures + s.one_shots + s.coalesced
    );
    let e = s.evictions;
    assert_eq!(
        (
            e.capacity,
            e.invalidated,
            e.owner_gone,
            e.expired,
            e.idle,
            e.reset
        ),
        (2, 1, 1, 1, 0, 0),
        "{s:?}"
    );
    assert_eq!(s.creations, s.entries as u64 + e.total());
    assert_eq!(s.entries, 0);
    assert_eq!(s.retire_failures, 0);
}

// P9: hits counted on several threads add up exactly (striped counters).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn p9_hits_on_several_threads_add_up_exactly() {
    let t = Tracker::new();
    let pool = Pool::new(PoolConfig::default());
    for k in 0..8 {
        make(&pool, &t, k, Mode::Ok).await;
    }
    let mut tasks = Vec::new();
    for w in 0..8u64 {
        let pool = pool.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..10_001u64 {
                assert!(pool.get(&((w + i) % 8)).is_some());
                if i % 97 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(pool.stats().hits, 8 * 10_001);
}

// ---------------------------------------------------------------------------------------------
// P8: Knob
// ---------------------------------------------------------------------------------------------

fn read<T>(knob: Knob<T>, raw: Option<&str>) -> T
where
    T: std::str::FromStr + PartialOrd + Copy + std::fmt::Debug,
{
    knob.read_with(|_| raw.map(str::to_owned))
}

// P8: unset / blank / whitespace / garbage / negative / overflow / out of range.
#[test]
fn p8_knob_integer_parsing_rules() {
    const K: Knob<usize> = Knob::new("POOL_CORE_BLACKBOX_MAX", 32, 1, 4096);
    assert_eq!(K.name(), "POOL_CORE_BLACKBOX_MAX");
    assert_eq!(K.default_value(), 32);
    assert_eq!(K.range(), (1, 4096));
    for (raw, want) in [
        (None, 32),
        (Some(""), 32),
        (Some("   "), 32),
        (Some("\t\n"), 32),
        (Some("64"), 64),
        (Some("  64  "), 64),
        (Some("\t64\n"), 64),
        (Some("lots"), 32),
        (Some("6 4"), 32),
        (Some("64s"), 32),
        (Some("0x40"), 32),
        (Some("64.0"), 32),
        (Some("-5"), 32),
        (Some("0"), 1),
        (Some("4096"), 4096),
        (Some("4097"), 4096),
        (Some("18446744073709551615"), 4096),
        (Some("18446744073709551616"), 32),
        (Some("99999999999999999999999999999999"), 32),
    ] {
        assert_eq!(read(K, raw), want, "{raw:?}");
    }
    // Signed: a negative value parses and is clamped.
    const S: Knob<i32> = Knob::new("POOL_CORE_BLACKBOX_SIGNED", 5, -10, 10);
    for (raw, want) in [
        (Some("-5"), -5),
        (Some("-11"), -10),
        (Some("11"), 10),
        (Some(" -3 "), -3),
        (Some("-2147483649"), 5),
        (Some("--1"), 5),
    ] {
        assert_eq!(read(S, raw), want, "{raw:?}");
    }
    // Durations in seconds.
    const TTL: Knob<u64> = Knob::new("POOL_CORE_BLACKBOX_TTL", 300, 0, 86_400);
    assert_eq!(TTL.read_secs_with(|_| None), Duration::from_secs(300));
    assert_eq!(
        TTL.read_secs_with(|_| Some("90000".into())),
        Duration::from_secs(86_400)
    );
    assert_eq!(
        TTL.read_secs_with(|_| Some("-1".into())),
        Duration::from_secs(300)
    );
    assert_eq!(
        TTL.read_secs_with(|_| Some("1.5".into())),
        Duration::from_secs(300)
    );
    // The process environment: an unset variable gives the default (no env mutation: the
    // workspace forbids unsafe code).
    const UNSET: Knob<u32> = Knob::new("POOL_CORE_BLACKBOX_SURELY_UNSET_9F3A", 9, 1, 10);
    assert_eq!(UNSET.read(), 9);
    const UNSET_SECS: Knob<u64> = Knob::new("POOL_CORE_BLACKBOX_SURELY_UNSET_9F3B", 7, 0, 10);
    assert_eq!(UNSET_SECS.read_secs(), Duration::from_secs(7));
}

// P8: the lookup is given the knob's name.
#[test]
fn p8_knob_lookup_receives_the_variable_name() {
    const K: Knob<u16> = Knob::new("POOL_CORE_BLACKBOX_NAMED", 3, 0, 100);
    let got = K.read_with(|name| (name == "POOL_CORE_BLACKBOX_NAMED").then(|| "42".to_string()));
    assert_eq!(got, 42);
}

// P8: floats: NaN is never returned (it is not inside [min, max]); infinities clamp.
#[test]
fn p8_knob_float_rejects_nan_and_clamps_infinities() {
    const R: Knob<f64> = Knob::new("POOL_CORE_BLACKBOX_RATIO", 0.5, 0.0, 1.0);
    for raw in ["NaN", "nan", "-NaN", " NaN "] {
        let v = read(R, Some(raw));
        assert!(
            !v.is_nan() && (0.0..=1.0).contains(&v),
            "{raw:?} gave {v} outside [0, 1]"
        );
    }
    assert_eq!(read(R, Some("inf")), 1.0);
    assert_eq!(read(R, Some("-inf")), 0.0);
    assert_eq!(read(R, Some("1e3")), 1.0);
    assert_eq!(read(R, Some("0.25")), 0.25);
    assert_eq!(read(R, Some("")), 0.5);
    assert_eq!(read(R, Some("half")), 0.5);
}

// P8: "Reading never panics" — also for a knob built with min > max or a default outside its
// range (the docs only say the default "should" lie within [min, max]).
#[test]
fn p8_knob_reading_never_panics_even_with_an_inverted_range() {
    const INVERTED: Knob<u32> = Knob::new("POOL_CORE_BLACKBOX_INVERTED", 5, 10, 1);
    for raw in [None, Some("7"), Some("0"), Some("100"), Some("junk")] {
        let r = std::panic::catch_unwind(|| read(INVERTED, raw));
        assert!(
            r.is_ok(),
            "reading {raw:?} from a knob with min > max panicked"
        );
    }
    const FLOAT_INV: Knob<f64> = Knob::new("POOL_CORE_BLACKBOX_FINV", 0.5, 1.0, 0.0);
    let r = std::panic::catch_unwind(|| read(FLOAT_INV, Some("0.7")));
    assert!(r.is_ok(), "reading a float knob with min > max panicked");
}

// ---------------------------------------------------------------------------------------------
// P10: SingleFlight, TaskFlag
// ---------------------------------------------------------------------------------------------

type Flights = SingleFlight<u32, Result<u32, String>>;

// P10: waiters get a clone of the leader's output, error included; nothing is cached.
#[tokio::test(start_paused = true)]
async fn p10_single_flight_shares_result_and_error_and_caches_nothing() {
    let sf = Arc::new(Flights::new());
    let calls = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let (sf, calls) = (Arc::clone(&sf), Arc::clone(&calls));
        tasks.push(tokio::spawn(async move {
            sf.run(1, async move {
                calls.fetch_add(1, Ordering::SeqCst);
                sleep(Duration::from_secs(1)).await;
                Err::<u32, _>("down".to_string())
            })
            .await
        }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap(), Err("down".to_string()));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(sf.in_flight(), 0);
    assert_eq!(
        sf.run(1, async { Ok(7) }).await,
        Ok(7),
        "the error was cached"
    );
    assert_eq!(
        sf.run(1, async { Ok(8) }).await,
        Ok(8),
        "the value was cached"
    );
    assert_eq!(sf.in_flight(), 0);
}

// P10: a cancelled or panicking leader hands over to a waiter; the waiters still share one
// load; an abandoned flight is forgotten; other keys never wait.
#[tokio::test(start_paused = true)]
async fn p10_single_flight_survives_cancelled_and_panicking_leaders() {
    for panics in [false, true] {
        let sf = Arc::new(Flights::new());
        let leader = {
            let sf = Arc::clone(&sf);
            tokio::spawn(async move {
                sf.run(1, async move {
                    sleep(Duration::from_secs(1)).await;
                    if panics {
                        panic!("leader panicked (expected by the test)");
                    }
                    std::future::pending::<()>().await;
                    Ok(0)
                })
                .await
            })
        };
        tokio::task::yield_now().await;
        let calls = Arc::new(AtomicUsize::new(0));
        let mut waiters = Vec::new();
        for i in 0..4u32 {
            let (sf, calls) = (Arc::clone(&sf), Arc::clone(&calls));
            waiters.push(tokio::spawn(async move {
                sf.run(1, async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    sleep(Duration::from_secs(1)).await;
                    Ok(100 + i)
                })
                .await
            }));
        }
        tokio::task::yield_now().await;
        // Other keys do not wait.
        let t0 = Instant::now();
        assert_eq!(sf.run(2, async { Ok(2) }).await, Ok(2));
        assert_eq!(Instant::now(), t0);
        if !panics {
            sleep(Duration::from_secs(2)).await;
            leader.abort();
        }
        let mut got = Vec::new();
        for w in waiters {
            got.push(
                timeout(Duration::from_secs(3600), w)
                    .await
                    .expect("waiter stranded")
                    .unwrap()
                    .unwrap(),
            );
        }
        assert!(got.iter().all(|v| *v == got[0]), "{got:?}");
        assert_eq!(calls.load(Ordering::SeqCst), 1, "panics={panics}");
        let _ = leader.await;
        assert_eq!(sf.in_flight(), 0, "finished flights forgotten");
    }
    // Abandoned by every caller.
    let sf = Flights::new();
    let r = timeout(
        Duration::from_secs(1),
        sf.run(3, std::future::pending::<Result<u32, String>>()),
    )
    .await;
    assert!(r.is_err());
    assert_eq!(sf.in_flight(), 0, "abandoned flight not forgotten");
    assert_eq!(sf.run(3, async { Ok(3) }).await, Ok(3));
}

// TaskFlag (guide): the flag is cleared when the token is dropped, including by a runtime
// shutting down before the task's first poll.
#[test]
fn task_flag_is_freed_when_the_runtime_drops_the_task_before_its_first_poll() {
    let flag = TaskFlag::default();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let running = flag.start().expect("free");
    assert!(flag.start().is_none());
    rt.spawn(async move {
        let _token = running;
        std::future::pending::<()>().await;
    });
    drop(rt);
    assert!(
        flag.start().is_some(),
        "flag stuck after the runtime dropped the task"
    );
}

// ---------------------------------------------------------------------------------------------
// More attacks
// ---------------------------------------------------------------------------------------------

// Sanity for the P5 tests: `is_locked()` really reports a held shard lock — inside evict_where's
// predicate, which "runs under shard read locks" — and nothing otherwise.
#[tokio::test(start_paused = true)]
async fn p5_is_locked_is_true_inside_evict_where_predicate() {
    let t = Tracker::new();
    let pool = Pool::new(PoolConfig::default());
    make(&pool, &t, 1, Mode::Ok).await;
    assert!(!pool.is_locked());
    let mut seen = Vec::new();
    let probe = pool.clone();
    pool.evict_where(EvictionCause::OwnerGone, |_, _| {
        seen.push(probe.is_locked());
        false
    })
    .await;
    assert_eq!(seen, vec![true]);
    assert!(!pool.is_locked());
}

// P5: "The pool calls retire exactly once per value it evicts": victims queued for the
// background retire are retired even when the last pool handle is dropped right after the
// evicting insert.
#[tokio::test(start_paused = true)]
async fn p5_victims_queued_for_background_retire_are_retired_after_the_pool_is_dropped() {
    let t = Tracker::new();
    let pool = Pool::new(PoolConfig::default().max_entries(1));
    let first = make(&pool, &t, 1, Mode::Ok).await.id;
    make(&pool, &t, 2, Mode::Ok).await;
    make(&pool, &t, 3, Mode::Ok).await;
    drop(pool);
    settle().await;
    assert_eq!(
        t.retired(first),
        1,
        "a queued capacity victim was never retired"
    );
    assert_eq!(
        t.retired(first + 1),
        1,
        "a queued capacity victim was never retired"
    );
    assert_eq!(t.dropped(), 3, "values leaked");
}

// P7: a creation in flight when the pool is shut down must not leave a value in the closed
// pool (nothing would ever retire it): after shutdown the pool holds nothing, and the value is
// retired exactly once.
#[tokio::test(start_paused = true)]
async fn p7_creation_in_flight_during_shutdown_does_not_land_in_the_closed_pool() {
    let t = Tracker::new();
    let pool = Pool::new(PoolConfig::default());
    let creating = {
        let (pool, t) = (pool.clone(), Arc::clone(&t));
        tokio::spawn(async move {
            pool.get_or_create(&1, move || async move {
                sleep(Duration::from_secs(1)).await;
                Ok::<_, Boom>(Created::new(t.val(1, Mode::Ok)))
            })
            .await
            .map(|v| (v.id, v.is_pooled()))
        })
    };
    tokio::task::yield_now().await;
    let report = pool.shutdown().await;
    assert_eq!(report.retire.total(), 0);
    let outcome = creating.await.unwrap();
    settle().await;
    assert_eq!(
        pool.len(),
        0,
        "a value created during shutdown sits in the closed pool ({outcome:?})"
    );
    assert!(pool.get(&1).is_none(), "a closed pool handed out a value");
    assert_eq!(t.retired_total(), t.built(), "{outcome:?}");
}

// P7: "reset() retires everything": a reset racing with a creation leaves no value unretired
// once the pool is reset again, and each value is retired once.
#[tokio::test(start_paused = true)]
async fn p7_reset_racing_creations_retires_each_value_once() {
    let t = Tracker::new();
    let pool = Pool::new(PoolConfig::default());
    let mut tasks = Vec::new();
    for k in 0..20u64 {
        let (p2, t) = (pool.clone(), Arc::clone(&t));
        tasks.push(tokio::spawn(async move {
            p2.get_or_create(&(k % 5), move || async move {
                sleep(Duration::from_millis(10 * k)).await;
                Ok::<_, Boom>(Created::new(t.val(k % 5, Mode::Ok)))
            })
            .await
            .is_ok()
        }));
        if k % 3 == 0 {
            pool.reset().await;
        }
    }
    for _ in 0..10 {
        sleep(Duration::from_millis(25)).await;
        pool.reset().await;
    }
    for task in tasks {
        assert!(task.await.unwrap());
    }
    pool.reset().await;
    settle().await;
    assert_eq!(t.retired_total(), t.built());
    assert_eq!(t.max_retires_of_one_value(), 1);
    assert_eq!(t.dropped(), t.built());
}

// P1/P4/P5 chaos on 4 threads: shared keys, small capacity, every removal path racing.
// Never two factory calls for one key at a time; never over capacity; every value retired
// exactly once and freed; the counters add up.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chaos_multi_thread_single_flight_capacity_and_exactly_once_retire() {
    let t = Tracker::new();
    let pool = Pool::new(PoolConfig::default().max_entries(4));
    let active: Arc<Vec<AtomicUsize>> = Arc::new((0..8).map(|_| AtomicUsize::new(0)).collect());
    let overlap = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for w in 0..8u64 {
        let (pool, t, active, overlap) = (
            pool.clone(),
            Arc::clone(&t),
            Arc::clone(&active),
            Arc::clone(&overlap),
        );
        tasks.push(tokio::spawn(async move {
            let mut x = w.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            for _ in 0..4_000 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let key = x % 8;
                match (x >> 8) % 20 {
                    0 => {
                        pool.invalidate(&key).await;
                    }
                    1 => {
                        pool.evict_where(EvictionCause::OwnerGone, |k, _| *k == key)
                            .await;
                    }
                    2 => {
                        pool.prune_idle(Duration::ZERO).await;
                    }
                    3 if x % 7 == 0 => {
                        pool.reset().await;
                    }
                    4..=8 => {
                        if let Some(v) = pool.get(&key) {
                            assert_eq!(v.key, key);
                        }
                    }
                    _ => {
                        let (t, active, overlap) =
                            (Arc::clone(&t), Arc::clone(&active), Arc::clone(&overlap));
                        let v = pool
                            .get_or_create(&key, move || async move {
                                let slot = &active[key as usize];
                                if slot.fetch_add(1, Ordering::SeqCst) != 0 {
                                    overlap.store(true, Ordering::SeqCst);
                                }
                                tokio::task::yield_now().await;
                                slot.fetch_sub(1, Ordering::SeqCst);
                                Ok::<_, Boom>(Created::new(t.val(key, Mode::Ok)))
                            })
                            .await
                            .unwrap();
                        assert_eq!(v.key, key);
                    }
                }
                assert!(pool.len() <= 4);
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert!(
        !overlap.load(Ordering::SeqCst),
        "two factory calls for one key ran at the same time"
    );
    let s = pool.stats();
    assert_eq!(s.creations, t.built(), "{s:?}");
    assert_eq!(s.creations, s.entries as u64 + s.evictions.total(), "{s:?}");
    // (Not asserted: misses == creations + coalesced. A leader that re-checks the map and finds
    // another caller's value is counted as a miss but neither as coalesced nor as a creation;
    // the docs do not define that identity, see the report.)
    pool.reset().await;
    let started = std::time::Instant::now();
    while t.retired_total() < t.built() && started.elapsed() < Duration::from_secs(10) {
        tokio::task::yield_now().await;
    }
    assert_eq!(t.retired_total(), t.built(), "values never retired");
    assert_eq!(t.max_retires_of_one_value(), 1, "a value retired twice");
    let started = std::time::Instant::now();
    while t.dropped() < t.built() && started.elapsed() < Duration::from_secs(10) {
        tokio::task::yield_now().await;
    }
    assert_eq!(t.dropped(), t.built(), "values leaked");
}

// P4 guide: "a key seen for the first time evicts the soonest deadline, protected or not, so a
// working set that moves on replaces the old one in one round", and "a working set that
// shrinks back under the capacity lets go of the key it left within a few rounds (33 keys over
// 32, then 32 of them: settled by the fourth round)".
#[tokio::test(start_paused = true)]
async fn p4_working_set_that_moves_on_or_shrinks_settles_quickly() {
    let t = Tracker::new();
    let pool = Pool::new(
        PoolConfig::default()
            .ttl(Duration::from_secs(3600))
            .max_entries(32),
    );
    let round = |keys: std::ops::Range<u64>| {
        let (pool, t) = (pool.clone(), Arc::clone(&t));
        async move {
            let before = t.built();
            for k in keys {
                make(&pool, &t, k, Mode::Ok).await;
                advance(Duration::from_millis(10)).await;
            }
            t.built() - before
        }
    };
    for _ in 0..10 {
        round(0..33).await;
    }
    // Shrinks to 32 keys.
    let mut misses = Vec::new();
    for _ in 0..6 {
        misses.push(round(0..32).await);
    }
    assert_eq!(
        &misses[4..],
        &[0, 0],
        "shrunk working set still missing: {misses:?}"
    );
    // Moves on to 32 new keys: the second round is all hits.
    let first = round(1000..1032).await;
    let second = round(1000..1032).await;
    assert_eq!((first, second), (32, 0), "the new working set was not kept");
}

// P9 doc of `thrashing`: "Misses on keys that a capacity eviction had removed recently (the
// pool remembers up to four victims per entry of capacity ...)". A key evicted 40 × max_entries
// capacity evictions ago is not "recent": the memory of 4 × 8 victims has long moved on.
// (The first version of this test read "among the last max_entries capacity evictions" in the
// rustdoc, which contradicted the guide's table of four per entry; the rustdoc was wrong.)
#[tokio::test(start_paused = true)]
async fn p9_thrashing_forgets_keys_evicted_long_ago() {
    let t = Tracker::new();
    let pool = Pool::new(PoolConfig::default().max_entries(8));
    make(&pool, &t, 0, Mode::Ok).await;
    for k in 1..=8 {
        advance(Duration::from_millis(10)).await;
        make(&pool, &t, k, Mode::Ok).await; // the last one evicts 0
    }
    assert!(pool.get(&0).is_none());
    for k in 100..420 {
        advance(Duration::from_millis(10)).await;
        make(&pool, &t, k, Mode::Ok).await; // 320 more capacity evictions
    }
    assert_eq!(pool.stats().evictions.capacity, 321);
    let before = pool.stats().thrashing;
    make(&pool, &t, 0, Mode::Ok).await;
    assert_eq!(
        pool.stats().thrashing,
        before,
        "key 0 was evicted 321 capacity evictions ago (40 x max_entries 8) but counted as \
         thrashing"
    );
}

// P9: PoolError is a proper error: the shared factory error is its source; ShutDown displays.
#[tokio::test(start_paused = true)]
async fn p9_pool_error_exposes_the_factory_error_as_source() {
    let pool = Pool::new(PoolConfig::default());
    let err = pool
        .get_or_create(&1, || async { Err::<Created<Val>, _>(Boom) })
        .await
        .unwrap_err();
    let source = std::error::Error::source(&err).expect("source");
    assert_eq!(source.to_string(), Boom.to_string());
    let cloned = err.clone();
    assert!(matches!(cloned, PoolError::Create(_)));
    pool.shutdown().await;
    let shut = pool
        .get_or_create(&1, || async { Err::<Created<Val>, _>(Boom) })
        .await
        .unwrap_err();
    assert!(matches!(shut, PoolError::ShutDown));
    assert!(!shut.to_string().is_empty());
    let _ = format!("{pool:?}");
}

// X1 / metrics table: every series carries `pool.name`; pools sharing a name add up and "a
// dropped pool takes its entries back"; counters agree with stats(); no label carries a key.
#[test]
fn x1_metrics_agree_with_stats_and_never_carry_a_key() {
    type SPool = KeyedPool<String, Val>;
    let t = Tracker::new();
    let t2 = Arc::clone(&t);
    let recorded = testkit::metrics::recorded(|| async move {
        let cfg = PoolConfig::default().name("blackbox").max_entries(3);
        let a = SPool::new(cfg.clone());
        let b = SPool::new(cfg);
        for i in 0..5 {
            let key = format!("tenant-secret-{i}");
            let t = Arc::clone(&t2);
            let k2 = key.clone();
            a.get_or_create(&key, move || async move {
                Ok::<_, Boom>(Created::new(t.val(i, Mode::Ok)))
            })
            .await
            .unwrap();
            assert!(a.get(&k2).is_some());
        }
        for i in 0..2 {
            let key = format!("tenant-secret-b{i}");
            let t = Arc::clone(&t2);
            b.get_or_create(&key, move || async move {
                Ok::<_, Boom>(Created::new(t.val(i, Mode::Ok)))
            })
            .await
            .unwrap();
        }
        a.invalidate(&"tenant-secret-4".to_string()).await;
        settle().await;
        let stats_a = a.stats();
        let stats_b = b.stats();
        drop(a);
        (b, stats_a, stats_b)
    });
    let labels = [("pool.name", "blackbox")];
    assert_eq!(
        testkit::metrics::gauge(&recorded, "pool.entries", &labels),
        2.0,
        "pool b holds 2; the dropped pool a must have taken its entries back"
    );
    assert_eq!(
        testkit::metrics::counter(&recorded, "pool.creations", &labels),
        7
    );
    assert_eq!(
        testkit::metrics::counter(&recorded, "pool.hits", &labels),
        5
    );
    assert_eq!(
        testkit::metrics::counter(
            &recorded,
            "pool.evictions",
            &[("pool.name", "blackbox"), ("cause", "capacity")]
        ),
        2
    );
    assert_eq!(
        testkit::metrics::counter(
            &recorded,
            "pool.evictions",
            &[("pool.name", "blackbox"), ("cause", "invalidated")]
        ),
        1
    );
    for (key, _, _, _) in &recorded {
        let key = key.key();
        if !key.name().starts_with("pool.") {
            continue;
        }
        let names: Vec<&str> = key.labels().map(|l| l.key()).collect();
        assert!(names.contains(&"pool.name"), "{key:?} lacks pool.name");
        for label in key.labels() {
            assert!(
                !label.value().contains("secret"),
                "a key leaked into a label: {key:?}"
            );
        }
    }
}

/// A minimal tracing subscriber that keeps every WARN event's fields as text.
#[derive(Clone, Default)]
struct Warnings(Arc<Mutex<Vec<String>>>);

impl Warnings {
    fn taken(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

struct FieldText(String);

impl tracing::field::Visit for FieldText {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.push_str(&format!("{}={:?} ", field.name(), value));
    }
}

impl tracing::Subscriber for Warnings {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        if *event.metadata().level() == tracing::Level::WARN {
            let mut text = FieldText(String::new());
            event.record(&mut text);
            self.0.lock().unwrap().push(text.0);
        }
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

// P8 (Knob rustdoc): "unset or blank → the default" (no warning); "unparseable → a warn event
// naming the variable, and the default"; "out of range → a warn event, and the value clamped".
#[test]
fn p8_knob_warns_naming_the_variable_for_garbage_and_out_of_range_only() {
    const K: Knob<usize> = Knob::new("POOL_CORE_BLACKBOX_WARNED", 32, 1, 4096);
    let warnings = Warnings::default();
    tracing::subscriber::with_default(warnings.clone(), || {
        for (raw, want_warn) in [
            (None, false),
            (Some(""), false),
            (Some("   "), false),
            (Some("64"), false),
            (Some(" 64 "), false),
            (Some("lots"), true),
            (Some("-5"), true),
            (Some("99999999999999999999999999"), true),
            (Some("0"), true),
            (Some("5000"), true),
        ] {
            let _ = read(K, raw);
            let got = warnings.taken();
            if want_warn {
                assert_eq!(got.len(), 1, "{raw:?}: {got:?}");
                assert!(
                    got[0].contains("POOL_CORE_BLACKBOX_WARNED"),
                    "{raw:?}: the warning does not name the variable: {got:?}"
                );
            } else {
                assert!(got.is_empty(), "{raw:?} warned: {got:?}");
            }
        }
    });
}

// P4 guide: "a warn at most once a minute names the capacity setting to raise
// (PoolConfig::capacity_knob)".
#[test]
fn p4_thrashing_warns_once_a_minute_naming_the_capacity_knob() {
    let warnings = Warnings::default();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    tracing::subscriber::with_default(warnings.clone(), || {
        rt.block_on(async {
            let t = Tracker::new();
            let pool = Pool::new(
                PoolConfig::default()
                    .ttl(Duration::from_secs(3600))
                    .max_entries(4)
                    .capacity_knob("BLACKBOX_POOL_MAX_ENTRIES"),
            );
            for _ in 0..20 {
                for k in 0..8 {
                    make(&pool, &t, k, Mode::Ok).await;
                    advance(Duration::from_millis(100)).await;
                }
            }
            // 16 s of thrashing: one warning.
            assert!(pool.stats().thrashing > 10);
            let first = warnings.taken();
            assert_eq!(first.len(), 1, "{first:?}");
            assert!(first[0].contains("BLACKBOX_POOL_MAX_ENTRIES"), "{first:?}");
            advance(Duration::from_secs(61)).await;
            for k in 0..8 {
                make(&pool, &t, k, Mode::Ok).await;
            }
            assert_eq!(warnings.taken().len(), 1, "one more after a minute");
        });
    });
}

// P5/P6: a one-shot value's retire, which runs in the background when its handle is dropped,
// is bounded by retire_timeout and its failures are counted in retire_failures ("Retires that
// returned an error, panicked, timed out or could not run").
#[tokio::test(start_paused = true)]
async fn p6_one_shot_retire_failures_and_hangs_are_counted() {
    let t = Tracker::new();
    let pool = Pool::new(PoolConfig::default().retire_timeout(Duration::from_secs(5)));
    for (k, mode) in [
        Mode::Fail,
        Mode::Panic,
        Mode::PanicEarly,
        Mode::Hang,
        Mode::Ok,
    ]
    .into_iter()
    .enumerate()
    {
        let t = Arc::clone(&t);
        let v = pool
            .get_or_create(&(k as u64), move || async move {
                Ok::<_, Boom>(Created::one_shot(t.val(k as u64, mode)))
            })
            .await
            .unwrap();
        assert!(!v.is_pooled());
        drop(v);
    }
    settle().await;
    assert_eq!(pool.stats().retire_failures, 3, "{:?}", pool.stats());
    sleep(Duration::from_millis(5_001)).await;
    settle().await;
    assert_eq!(
        pool.stats().retire_failures,
        4,
        "hanging one-shot retire not cut/counted"
    );
    assert_eq!(t.dropped(), 5);
}

// P5: explicit calls bound each retire by retire_timeout too (invalidate, prune, evict_where).
#[tokio::test(start_paused = true)]
async fn p5_explicit_removals_are_bounded_by_retire_timeout() {
    let t = Tracker::new();
    let pool = Pool::new(PoolConfig::default().retire_timeout(Duration::from_secs(3)));
    for k in 0..3 {
        make(&pool, &t, k, Mode::Hang).await;
    }
    let t0 = Instant::now();
    assert!(pool.invalidate(&0).await);
    assert_eq!(Instant::now() - t0, Duration::from_secs(3));
    let r = pool
        .evict_where(EvictionCause::OwnerGone, |k, _| *k == 1)
        .await;
    assert_eq!((r.retired, r.failed), (0, 1));
    advance(Duration::from_secs(1)).await;
    let r = pool.prune_idle(Duration::ZERO).await;
    assert_eq!((r.retired, r.failed), (0, 1));
    assert_eq!(Instant::now() - t0, Duration::from_secs(10));
    assert_eq!(pool.stats().retire_failures, 3);
}

/// A key whose hash is the same for every value: equality alone tells keys apart.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Colliding(u64);

impl std::hash::Hash for Colliding {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        0u8.hash(state);
    }
}

// Seed 000's lesson: a pool must never hand one key's value to another. With every key's hash
// equal, lookups, capacity eviction, invalidate and expiry still act on the right key.
#[tokio::test(start_paused = true)]
async fn seed000_colliding_hashes_never_serve_another_keys_value() {
    let t = Tracker::new();
    let pool: KeyedPool<Colliding, Val> = KeyedPool::new(
        PoolConfig::default()
            .ttl(Duration::from_secs(100))
            .max_entries(16),
    );
    let get = |k: u64| {
        let (pool, t) = (pool.clone(), Arc::clone(&t));
        async move {
            let v = pool
                .get_or_create(&Colliding(k), move || async move {
                    Ok::<_, Boom>(Created::new(t.val(k, Mode::Ok)))
                })
                .await
                .unwrap();
            assert_eq!(v.key, k, "key {k} was served key {}'s value", v.key);
            v.id
        }
    };
    for round in 0..5u64 {
        for k in 0..24 {
            get(k).await;
            advance(Duration::from_millis(10)).await;
            assert!(pool.len() <= 16);
        }
        for k in (0..24).step_by(5) {
            if let Some(v) = pool.get(&Colliding(k)) {
                assert_eq!(v.key, k);
            }
            if round % 2 == 0 {
                pool.invalidate(&Colliding(k)).await;
                assert!(pool.get(&Colliding(k)).is_none());
            }
        }
    }
    advance(Duration::from_secs(100)).await;
    for k in 0..24 {
        assert!(
            pool.get(&Colliding(k)).is_none(),
            "expired entry handed out"
        );
    }
    pool.reset().await;
    settle().await;
    assert_eq!(t.retired_total(), t.built());
    assert_eq!(t.max_retires_of_one_value(), 1);
    let s = pool.stats();
    assert_eq!(s.creations, s.entries as u64 + s.evictions.total(), "{s:?}");
}

// P2: "An entry at or past its deadline is never returned" — to the instant, not to the
// millisecond (deadlines are tokio Instants).
#[tokio::test(start_paused = true)]
async fn p2_sub_millisecond_deadlines_are_honoured_to_the_instant() {
    let t = Tracker::new();
    let pool = Pool::new(PoolConfig::default().ttl(Duration::from_micros(2_500)));
    let t0 = Instant::now();
    make_until(&pool, &t, 1, t0 + Duration::from_micros(1_500)).await;
    make(&pool, &t, 2, Mode::Ok).await;
    advance(Duration::from_micros(1_499)).await;
    assert!(pool.get(&1).is_some());
    advance(Duration::from_micros(1)).await;
    assert!(pool.get(&1).is_none(), "handed out at its sub-ms deadline");
    advance(Duration::from_micros(999)).await;
    assert!(pool.get(&2).is_some());
    advance(Duration::from_micros(1)).await;
    assert!(
        pool.get(&2).is_none(),
        "handed out at its sub-ms TTL deadline"
    );
    let s = pool.stats();
    assert_eq!(s.evictions.expired, 2, "{s:?}");
}

// P5/P7 without a runtime: an explicit reset driven by a plain executor (no tokio runtime)
// must not panic; a retire that has to wait is bounded or counted as one that could not run.
#[test]
fn p5_explicit_reset_without_a_runtime_does_not_panic() {
    let t = Tracker::new();
    let pool = Pool::new(PoolConfig::default().retire_timeout(Duration::from_secs(1)));
    futures::executor::block_on(make(&pool, &t, 1, Mode::Ok));
    futures::executor::block_on(make(&pool, &t, 2, Mode::Fail));
    let report = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        futures::executor::block_on(pool.reset())
    }));
    let report = report.expect("reset without a runtime panicked");
    assert_eq!(report.total(), 2);
    assert_eq!(report.failed, 1);
}

// Robustness: a predicate that panics under evict_where's shard read locks must not leave the
// pool unusable (poisoned or locked) for every later caller.
#[tokio::test(start_paused = true)]
async fn evict_where_with_a_panicking_predicate_leaves_the_pool_usable() {
    use futures::FutureExt;
    let t = Tracker::new();
    let pool = Pool::new(PoolConfig::default().max_entries(4));
    for k in 0..4 {
        make(&pool, &t, k, Mode::Ok).await;
    }
    let outcome =
        std::panic::AssertUnwindSafe(pool.evict_where(EvictionCause::OwnerGone, |k, _| {
            assert!(*k > 100, "predicate panicked (expected by the test)");
            false
        }))
        .catch_unwind()
        .await;
    assert!(outcome.is_err());
    assert!(!pool.is_locked(), "a shard lock stayed held");
    let usable = std::panic::AssertUnwindSafe(async {
        for k in 0..8 {
            make(&pool, &t, k, Mode::Ok).await;
            assert!(pool.get(&k).is_some());
        }
        pool.invalidate(&7).await;
        pool.reset().await
    })
    .catch_unwind()
    .await;
    let report = usable.expect("the pool panics after a predicate panicked");
    assert_eq!(report.total(), 3);
}
