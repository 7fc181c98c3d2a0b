//! Unit tests of `KeyedPool`, in virtual time, each counting what it claims.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::{Instant, advance, sleep, timeout};

use super::*;
use crate::{BoxError, EvictionCause, PoolConfig, PoolError, Retire};

type Pool = KeyedPool<&'static str, Conn>;

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("factory failed: {0}")]
struct FactoryError(&'static str);

/// What a test value does when retired.
#[derive(Clone, Default)]
enum OnRetire {
    #[default]
    Succeed,
    Fail,
    Panic,
    Block(Arc<Notify>),
    /// Record whether any pool lock was held during retire.
    CheckLocks(Arc<Mutex<Option<Pool>>>, Arc<AtomicBool>),
}

#[derive(Clone, Default)]
struct Probe {
    retired: Arc<AtomicUsize>,
    created: Arc<AtomicUsize>,
}

struct Conn {
    name: &'static str,
    probe: Probe,
    on_retire: OnRetire,
}

impl Retire for Conn {
    async fn retire(&self) -> Result<(), BoxError> {
        match &self.on_retire {
            OnRetire::Succeed => {}
            OnRetire::Fail => return Err("close failed".into()),
            OnRetire::Panic => panic!("retire panicked (expected by the test)"),
            OnRetire::Block(gate) => gate.notified().await,
            OnRetire::CheckLocks(pool, saw_lock) => {
                let pool = pool.lock().expect("pool slot").clone().expect("pool set");
                if pool.is_locked() {
                    saw_lock.store(true, Ordering::SeqCst);
                }
            }
        }
        self.probe.retired.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

fn conn(name: &'static str, probe: &Probe) -> Conn {
    probe.created.fetch_add(1, Ordering::SeqCst);
    Conn {
        name,
        probe: probe.clone(),
        on_retire: OnRetire::Succeed,
    }
}

async fn make(pool: &Pool, key: &'static str, probe: &Probe) -> Pooled<Conn> {
    let probe = probe.clone();
    pool.get_or_create(&key, || async move {
        Ok::<_, FactoryError>(Created::new(conn(key, &probe)))
    })
    .await
    .expect("create")
}

/// Create `key` with a value that does `on_retire` when retired.
async fn make_retiring(
    pool: &Pool,
    key: &'static str,
    probe: &Probe,
    on_retire: OnRetire,
) -> Pooled<Conn> {
    let probe = probe.clone();
    pool.get_or_create(&key, || async move {
        let mut value = conn(key, &probe);
        value.on_retire = on_retire;
        Ok::<_, FactoryError>(Created::new(value))
    })
    .await
    .expect("create")
}

/// Let spawned background retires run.
async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

// covers P1: N concurrent misses on one key → exactly one factory call.
#[tokio::test(start_paused = true)]
async fn concurrent_misses_on_one_key_call_the_factory_once() {
    let pool = Pool::new(PoolConfig::default());
    let probe = Probe::default();
    let mut tasks = Vec::new();
    for _ in 0..200 {
        let (pool, probe) = (pool.clone(), probe.clone());
        tasks.push(tokio::spawn(async move {
            pool.get_or_create(&"a", || async {
                sleep(Duration::from_millis(50)).await;
                Ok::<_, FactoryError>(Created::new(conn("a", &probe)))
            })
            .await
            .map(|c| c.name)
        }));
    }
    for task in tasks {
        assert_eq!(task.await.expect("task").expect("created"), "a");
    }
    assert_eq!(probe.created.load(Ordering::SeqCst), 1);
    let stats = pool.stats();
    assert_eq!(stats.creations, 1);
    assert_eq!(stats.misses, 200);
    assert_eq!(stats.coalesced, 199);
    assert_eq!(stats.entries, 1);
}

// covers P1: a slow factory for key A does not delay key B.
#[tokio::test(start_paused = true)]
async fn slow_factory_for_one_key_does_not_delay_another() {
    let pool = Pool::new(PoolConfig::default());
    let probe = Probe::default();
    let slow = {
        let (pool, probe) = (pool.clone(), probe.clone());
        tokio::spawn(async move {
            pool.get_or_create(&"a", || async {
                sleep(Duration::from_secs(3600)).await;
                Ok::<_, FactoryError>(Created::new(conn("a", &probe)))
            })
            .await
            .map(|c| c.name)
        })
    };
    tokio::task::yield_now().await;
    let started = Instant::now();
    let b = make(&pool, "b", &probe).await;
    assert_eq!(b.name, "b");
    assert_eq!(started.elapsed(), Duration::ZERO, "B waited on A");
    assert!(!slow.is_finished());
    slow.abort();
}

// covers P1, P3: hits update last-used, so a used entry survives an idle prune.
#[tokio::test(start_paused = true)]
async fn hits_update_last_used_and_idle_prune_spares_used_entries() {
    let pool = Pool::new(PoolConfig::default());
    let probe = Probe::default();
    drop(make(&pool, "used", &probe).await);
    drop(make(&pool, "idle", &probe).await);
    advance(Duration::from_secs(20)).await;
    assert!(pool.get(&"used").is_some());
    advance(Duration::from_secs(20)).await;
    let report = pool.prune_idle(Duration::from_secs(30)).await;
    assert_eq!(report.retired, 1);
    assert!(pool.get(&"used").is_some());
    assert!(pool.get(&"idle").is_none());
    assert_eq!(pool.stats().evictions.idle, 1);
    assert_eq!(probe.retired.load(Ordering::SeqCst), 1);
}

// covers P2: an entry is never handed out after created + ttl.
#[tokio::test(start_paused = true)]
async fn expired_entries_are_never_handed_out() {
    let pool = Pool::new(PoolConfig::default().ttl(Duration::from_secs(300)));
    let probe = Probe::default();
    drop(make(&pool, "a", &probe).await);
    advance(Duration::from_secs(299)).await;
    assert!(pool.get(&"a").is_some());
    advance(Duration::from_secs(1)).await;
    assert!(pool.get(&"a").is_none(), "expired exactly at the deadline");
    settle().await;
    assert_eq!(probe.retired.load(Ordering::SeqCst), 1);
    assert_eq!(pool.stats().evictions.expired, 1);
    let fresh = make(&pool, "a", &probe).await;
    assert_eq!(probe.created.load(Ordering::SeqCst), 2);
    assert_eq!(
        fresh.deadline(),
        Some(Instant::now() + Duration::from_secs(300))
    );
}

// covers P2: the factory's own deadline clamps the pool TTL.
#[tokio::test(start_paused = true)]
async fn factory_deadline_clamps_the_ttl() {
    let pool = Pool::new(PoolConfig::default().ttl(Duration::from_secs(300)));
    let probe = Probe::default();
    let until = Instant::now() + Duration::from_secs(60);
    let handle = pool
        .get_or_create(&"a", || async {
            Ok::<_, FactoryError>(Created::until(conn("a", &probe), until))
        })
        .await
        .expect("create");
    assert_eq!(handle.deadline(), Some(until));
    advance(Duration::from_secs(60)).await;
    assert!(pool.get(&"a").is_none());
}

// covers P3: the background sweeper prunes idle entries and stops when the pool is dropped.
#[tokio::test(start_paused = true)]
async fn sweeper_prunes_idle_entries_and_stops_with_the_pool() {
    let pool = Pool::new(
        PoolConfig::default()
            .idle_ttl(Duration::from_secs(60))
            .sweep_interval(Duration::from_secs(10)),
    );
    let probe = Probe::default();
    drop(make(&pool, "a", &probe).await);
    advance(Duration::from_secs(50)).await;
    settle().await;
    assert_eq!(pool.len(), 1);
    advance(Duration::from_secs(20)).await;
    settle().await;
    assert_eq!(pool.len(), 0, "swept after the idle TTL");
    assert_eq!(probe.retired.load(Ordering::SeqCst), 1);

    drop(make(&pool, "b", &probe).await);
    let weak = Arc::downgrade(&pool.inner);
    drop(pool);
    advance(Duration::from_secs(10)).await;
    settle().await;
    assert!(
        weak.upgrade().is_none(),
        "the sweeper keeps no strong reference"
    );
}

// covers P4: overflow evicts the entry with the soonest deadline.
#[tokio::test(start_paused = true)]
async fn overflow_evicts_the_soonest_deadline() {
    let pool = Pool::new(PoolConfig::default().max_entries(3));
    let probe = Probe::default();
    let now = Instant::now();
    for (key, secs) in [("late", 900), ("soonest", 100), ("middle", 500)] {
        let probe = probe.clone();
        pool.get_or_create(&key, || async move {
            Ok::<_, FactoryError>(Created::until(
                conn(key, &probe),
                now + Duration::from_secs(secs),
            ))
        })
        .await
        .expect("create");
    }
    drop(make(&pool, "no-deadline", &probe).await);
    settle().await;
    assert_eq!(pool.len(), 3);
    assert!(pool.get(&"soonest").is_none());
    for key in ["late", "middle", "no-deadline"] {
        assert!(pool.get(&key).is_some(), "{key} kept");
    }
    assert_eq!(pool.stats().evictions.capacity, 1);
    assert_eq!(probe.retired.load(Ordering::SeqCst), 1);
}

// covers P5: retire runs with no pool lock held.
#[tokio::test(start_paused = true)]
async fn retire_runs_outside_every_pool_lock() {
    let pool = Pool::new(PoolConfig::default().max_entries(1));
    let cell = Arc::new(Mutex::new(Some(pool.clone())));
    let saw_lock = Arc::new(AtomicBool::new(false));
    let probe = Probe::default();
    for key in ["a", "b", "c"] {
        let (probe, cell, saw_lock) = (probe.clone(), cell.clone(), saw_lock.clone());
        pool.get_or_create(&key, || async move {
            let mut value = conn(key, &probe);
            value.on_retire = OnRetire::CheckLocks(cell, saw_lock);
            Ok::<_, FactoryError>(Created::new(value))
        })
        .await
        .expect("create");
    }
    settle().await;
    pool.reset().await;
    assert_eq!(probe.retired.load(Ordering::SeqCst), 3);
    assert!(
        !saw_lock.load(Ordering::SeqCst),
        "a retire ran under a pool lock"
    );
    cell.lock().expect("cell").take();
}

// covers P5: a retire that blocks does not block a concurrent get.
#[tokio::test(start_paused = true)]
async fn blocked_retire_does_not_block_gets() {
    let pool = Pool::new(PoolConfig::default());
    let gate = Arc::new(Notify::new());
    let probe = Probe::default();
    drop(make_retiring(&pool, "stuck", &probe, OnRetire::Block(gate.clone())).await);
    drop(make(&pool, "other", &probe).await);
    let invalidating = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.invalidate(&"stuck").await })
    };
    settle().await;
    assert!(!invalidating.is_finished(), "retire is blocked");
    let other = timeout(Duration::from_millis(1), async { pool.get(&"other") })
        .await
        .expect("get did not wait");
    assert!(other.is_some());
    drop(make(&pool, "new", &probe).await);
    gate.notify_one();
    assert!(invalidating.await.expect("task"));
}

// covers P5, P7: one failing or panicking retire does not stop the others.
#[tokio::test(start_paused = true)]
async fn failing_and_panicking_retires_do_not_stop_the_others() {
    let pool = Pool::new(PoolConfig::default().retire_timeout(Duration::from_secs(5)));
    let probe = Probe::default();
    let gate = Arc::new(Notify::new());
    let behaviours = [
        ("ok1", OnRetire::Succeed),
        ("fail", OnRetire::Fail),
        ("panic", OnRetire::Panic),
        ("hang", OnRetire::Block(gate)),
        ("ok2", OnRetire::Succeed),
    ];
    for (key, on_retire) in behaviours {
        drop(make_retiring(&pool, key, &probe, on_retire).await);
    }
    let report = pool.reset().await;
    assert_eq!(report.retired, 2);
    assert_eq!(report.failed, 3);
    assert_eq!(probe.retired.load(Ordering::SeqCst), 2);
    let stats = pool.stats();
    assert_eq!(stats.retire_failures, 3);
    assert_eq!(stats.evictions.reset, 5);
    assert!(pool.is_empty());
    // The pool stays usable after a reset.
    drop(make(&pool, "again", &probe).await);
    assert_eq!(pool.len(), 1);
}

// covers P5: capacity victims evicted back to back are retired in the background together: the
// quick ones at once, a hanging one bounded by the timeout without delaying the others, two
// hanging ones cut at the same time (concurrently, not one timeout after the other).
#[tokio::test(start_paused = true)]
async fn a_batch_of_capacity_victims_retires_concurrently() {
    let pool = Pool::new(
        PoolConfig::default()
            .max_entries(1)
            .retire_timeout(Duration::from_secs(5)),
    );
    let probe = Probe::default();
    let gate = Arc::new(Notify::new());
    let behaviours = [
        ("hang1", OnRetire::Block(gate.clone())),
        ("fail", OnRetire::Fail),
        ("panic", OnRetire::Panic),
        ("ok", OnRetire::Succeed),
        ("hang2", OnRetire::Block(gate)),
        ("last", OnRetire::Succeed),
    ];
    // No yield between the inserts: the victims queue up for one background task.
    for (key, on_retire) in behaviours {
        drop(make_retiring(&pool, key, &probe, on_retire).await);
    }
    assert_eq!(pool.stats().evictions.capacity, 5);
    settle().await;
    assert_eq!(
        probe.retired.load(Ordering::SeqCst),
        1,
        "the quick one is done"
    );
    assert_eq!(
        pool.stats().retire_failures,
        2,
        "fail and panic counted at once"
    );
    advance(Duration::from_millis(4_999)).await;
    settle().await;
    assert_eq!(
        pool.stats().retire_failures,
        2,
        "the hanging ones still have time"
    );
    advance(Duration::from_millis(2)).await;
    settle().await;
    assert_eq!(
        pool.stats().retire_failures,
        4,
        "both hanging retires cut by one timeout"
    );
    assert_eq!(probe.retired.load(Ordering::SeqCst), 1);
}

// covers P6: a value whose deadline already passed is one-shot: retired on drop, pool unchanged.
#[tokio::test(start_paused = true)]
async fn past_deadline_gives_a_one_shot_value_retired_on_drop() {
    let pool = Pool::new(PoolConfig::default());
    let probe = Probe::default();
    let handle = pool
        .get_or_create(&"a", || async {
            Ok::<_, FactoryError>(Created::until(conn("a", &probe), Instant::now()))
        })
        .await
        .expect("create");
    assert!(!handle.is_pooled());
    assert!(pool.is_empty());
    assert_eq!(probe.retired.load(Ordering::SeqCst), 0);
    drop(handle);
    settle().await;
    assert_eq!(probe.retired.load(Ordering::SeqCst), 1);
    let stats = pool.stats();
    assert_eq!((stats.one_shots, stats.creations), (1, 0));
}

// covers P6: concurrent callers of a one-shot key each get their own value.
#[tokio::test(start_paused = true)]
async fn concurrent_one_shot_callers_each_get_their_own_value() {
    let pool = Pool::new(PoolConfig::default());
    let probe = Probe::default();
    let mut tasks = Vec::new();
    for _ in 0..5 {
        let (pool, probe) = (pool.clone(), probe.clone());
        tasks.push(tokio::spawn(async move {
            let handle = pool
                .get_or_create(&"a", || async {
                    sleep(Duration::from_millis(5)).await;
                    Ok::<_, FactoryError>(Created::one_shot(conn("a", &probe)))
                })
                .await
                .expect("create");
            assert!(!handle.is_pooled());
        }));
    }
    for task in tasks {
        task.await.expect("task");
    }
    settle().await;
    assert_eq!(probe.created.load(Ordering::SeqCst), 5);
    assert_eq!(probe.retired.load(Ordering::SeqCst), 5);
    assert!(pool.is_empty());
}

// covers P1, P10: a failed creation is shared by its waiters, not cached.
#[tokio::test(start_paused = true)]
async fn failed_creation_is_shared_and_not_cached() {
    let pool = Pool::new(PoolConfig::default());
    let calls = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let (pool, calls) = (pool.clone(), calls.clone());
        tasks.push(tokio::spawn(async move {
            pool.get_or_create(&"a", || async {
                calls.fetch_add(1, Ordering::SeqCst);
                sleep(Duration::from_millis(5)).await;
                Err::<Created<Conn>, _>(FactoryError("backend down"))
            })
            .await
            .map(|_| ())
        }));
    }
    for task in tasks {
        match task.await.expect("task") {
            Err(PoolError::Create(error)) => assert_eq!(*error, FactoryError("backend down")),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(pool.stats().creation_failures, 1);
    let probe = Probe::default();
    drop(make(&pool, "a", &probe).await);
    assert_eq!(pool.len(), 1, "the next call tried again");
}

// covers P10: a cancelled leader inside the pool does not strand its waiters.
#[tokio::test(start_paused = true)]
async fn cancelled_creation_leader_does_not_strand_waiters() {
    let pool = Pool::new(PoolConfig::default());
    let probe = Probe::default();
    let leader = {
        let pool = pool.clone();
        tokio::spawn(async move {
            pool.get_or_create(&"a", || {
                std::future::pending::<Result<Created<Conn>, FactoryError>>()
            })
            .await
            .map(|_| ())
        })
    };
    tokio::task::yield_now().await;
    let waiter = {
        let (pool, probe) = (pool.clone(), probe.clone());
        tokio::spawn(async move { make(&pool, "a", &probe).await.name })
    };
    tokio::task::yield_now().await;
    leader.abort();
    let name = timeout(Duration::from_secs(1), waiter)
        .await
        .expect("waiter not stranded")
        .expect("task");
    assert_eq!(name, "a");
    assert_eq!(pool.len(), 1);
}

// covers P7: shutdown drains without blocking on a contended lock, and closes the pool.
#[tokio::test(start_paused = true)]
#[allow(
    clippy::await_holding_lock,
    reason = "the test holds a shard lock across shutdown on purpose: that is the contention"
)]
async fn shutdown_skips_a_contended_shard_instead_of_blocking() {
    let pool = Pool::new(PoolConfig::default());
    let probe = Probe::default();
    drop(make(&pool, "held", &probe).await);
    drop(make(&pool, "b", &probe).await);
    let report = {
        let guard = pool.inner.map.read_shard_of(&"held");
        let report = timeout(Duration::from_secs(1), pool.shutdown())
            .await
            .expect("shutdown did not block");
        drop(guard);
        report
    };
    assert_eq!(report.skipped_shards, 1);
    assert!(report.retire.total() <= 1);
    let again = pool
        .get_or_create(&"c", || async {
            Ok::<_, FactoryError>(Created::new(conn("c", &probe)))
        })
        .await;
    assert!(matches!(again, Err(PoolError::ShutDown)));
}

// covers P7: reset retires everything and counts it.
#[tokio::test(start_paused = true)]
async fn reset_retires_everything() {
    let pool = Pool::new(PoolConfig::default());
    let probe = Probe::default();
    for key in ["a", "b", "c", "d"] {
        drop(make(&pool, key, &probe).await);
    }
    let report = pool.reset().await;
    assert_eq!(report.retired, 4);
    assert_eq!(probe.retired.load(Ordering::SeqCst), 4);
    assert!(pool.is_empty());
}

// covers P9: counters for hits, misses, owner-gone and invalidation.
#[tokio::test(start_paused = true)]
async fn stats_count_every_path() {
    let pool = Pool::new(PoolConfig::default());
    let probe = Probe::default();
    drop(make(&pool, "a", &probe).await);
    drop(make(&pool, "b", &probe).await);
    for _ in 0..10 {
        assert!(pool.get(&"a").is_some());
    }
    assert!(pool.get(&"missing").is_none());
    let gone = pool
        .evict_where(EvictionCause::OwnerGone, |key, _| *key == "b")
        .await;
    assert_eq!(gone.retired, 1);
    assert!(pool.invalidate(&"a").await);
    assert!(!pool.invalidate(&"a").await);
    let stats = pool.stats();
    assert_eq!(stats.hits, 10);
    assert_eq!(stats.misses, 2);
    assert_eq!(stats.creations, 2);
    assert_eq!(stats.evictions.owner_gone, 1);
    assert_eq!(stats.evictions.invalidated, 1);
    assert_eq!(stats.evictions.total(), 2);
    assert_eq!(stats.entries, 0);
}

mod capacity;
mod durations;
