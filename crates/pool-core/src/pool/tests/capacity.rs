//! Capacity eviction through the deadline index: order, bounded work, the thrashing policy.

use std::time::Duration;

use tokio::time::{Instant, advance};

use super::super::*;
use crate::PoolConfig;

struct Plain;
impl Retire for Plain {}

type Ints = KeyedPool<u32, Plain>;

#[derive(Debug, thiserror::Error)]
#[error("never fails")]
struct Never;

/// One lookup: a hit, or a miss that creates. Returns whether it was a hit.
async fn call(pool: &Ints, key: u32) -> bool {
    if pool.get(&key).is_some() {
        return true;
    }
    pool.get_or_create(&key, || async { Ok::<_, Never>(Created::new(Plain)) })
        .await
        .expect("create");
    false
}

async fn call_until(pool: &Ints, key: u32, deadline: Instant) {
    pool.get_or_create(&key, || async move {
        Ok::<_, Never>(Created::until(Plain, deadline))
    })
    .await
    .expect("create");
}

fn index_len(pool: &Ints) -> usize {
    pool.inner.lock_index().len()
}

// covers P4 (tie-break): equal deadlines go least recently used first, though hits never touch
// the index (the rank is refreshed lazily). Fails if the stale rank is trusted: "a" is oldest.
#[tokio::test(start_paused = true)]
async fn equal_deadlines_evict_the_least_recently_used() {
    let pool = Ints::new(PoolConfig::default().max_entries(3));
    for key in [1, 2, 3] {
        call(&pool, key).await;
    }
    advance(Duration::from_millis(5)).await;
    assert!(pool.get(&1).is_some());
    call(&pool, 4).await;
    assert!(pool.get(&2).is_none(), "2 was least recently used");
    for key in [1, 3, 4] {
        assert!(pool.get(&key).is_some(), "{key} kept");
    }
}

// covers X4: one capacity eviction looks at a bounded number of entries, however large the
// pool and however many entries were hit since they were indexed (the old scan looked at all).
#[tokio::test(start_paused = true)]
async fn eviction_work_is_bounded_not_a_scan() {
    const N: u32 = 5_000;
    let pool = Ints::new(PoolConfig::default().max_entries(N as usize));
    for key in 0..N {
        call(&pool, key).await;
    }
    // Every entry hit at a later millisecond than it was indexed at: every rank is stale.
    advance(Duration::from_millis(1)).await;
    for key in 0..N {
        assert!(pool.get(&key).is_some());
    }
    pool.inner.lock_index().steps = 0;
    for key in N..N + 100 {
        call(&pool, key).await;
    }
    let steps = pool.inner.lock_index().steps;
    assert_eq!(pool.stats().evictions.capacity, 100);
    assert!(
        steps <= 100 * 10,
        "{steps} entries examined for 100 evictions"
    );
    assert_eq!(index_len(&pool), pool.len());
}

// covers X4 (no cliff): a cycle of capacity + 1 keys under a uniform TTL keeps ≥ 90 % hits.
// Soonest-deadline (FIFO) eviction alone gives 0 %: each key evicts the next one needed.
#[tokio::test(start_paused = true)]
async fn a_cycle_one_key_past_capacity_keeps_most_hits() {
    let pool = Ints::new(
        PoolConfig::default()
            .max_entries(32)
            .ttl(Duration::from_secs(300)),
    );
    let (mut hits, mut calls) = (0, 0);
    for round in 0..20 {
        for key in 0..33 {
            advance(Duration::from_millis(10)).await;
            let hit = call(&pool, key).await;
            if round >= 2 {
                calls += 1;
                hits += usize::from(hit);
            }
        }
    }
    let rate = hits as f64 / calls as f64;
    assert!(rate >= 0.9, "hit rate {rate:.3}");
    let stats = pool.stats();
    assert!(stats.thrashing > 0, "thrashing counted: {stats:?}");
    assert_eq!(stats.entries, 32);
    assert_eq!(index_len(&pool), 32);
    let protected = pool.inner.lock_index().protected();
    assert!(
        (1..=31).contains(&protected),
        "returning keys protected, one place always open: {protected}"
    );
}

// Longer cycles keep a stable subset too (close to the optimum capacity / cycle).
#[tokio::test(start_paused = true)]
async fn a_cycle_of_twice_the_capacity_keeps_a_stable_subset() {
    let pool = Ints::new(PoolConfig::default().max_entries(32));
    let (mut hits, mut calls) = (0, 0);
    for round in 0..10 {
        for key in 0..64 {
            advance(Duration::from_millis(1)).await;
            let hit = call(&pool, key).await;
            if round >= 2 {
                calls += 1;
                hits += usize::from(hit);
            }
        }
    }
    let rate = hits as f64 / calls as f64;
    assert!(rate >= 0.4, "hit rate {rate:.3}");
}

// The thrashing policy only acts on keys that come back: a new working set replaces an old
// one (every old entry hit, no TTL) in deadline/LRU order, as before.
#[tokio::test(start_paused = true)]
async fn a_new_working_set_replaces_an_old_one() {
    let pool = Ints::new(PoolConfig::default().max_entries(8));
    for key in 0..8 {
        call(&pool, key).await;
    }
    advance(Duration::from_millis(1)).await;
    for key in 0..8 {
        assert!(pool.get(&key).is_some());
    }
    for round in 0..3 {
        for key in 100..108 {
            advance(Duration::from_millis(1)).await;
            let hit = call(&pool, key).await;
            assert_eq!(hit, round > 0, "key {key} round {round}");
        }
    }
    assert_eq!(pool.stats().thrashing, 0);
}

// An entry within its expiry margin goes first even while the pool thrashes.
#[tokio::test(start_paused = true)]
async fn an_entry_about_to_expire_goes_first_while_thrashing() {
    let pool = Ints::new(
        PoolConfig::default()
            .max_entries(3)
            .ttl(Duration::from_secs(300))
            .expiry_margin(Duration::from_secs(60)),
    );
    let now = Instant::now();
    call_until(&pool, 1, now + Duration::from_secs(200)).await;
    call(&pool, 2).await;
    call(&pool, 3).await;
    call(&pool, 4).await; // evicts 1 (soonest deadline): 1 is now a ghost
    assert!(pool.get(&1).is_none());
    for key in [2, 3, 4] {
        assert!(pool.get(&key).is_some());
    }
    // 5 expires within the margin once 150 s have passed.
    call(&pool, 5).await; // evicts 2 (soonest), 2 becomes a ghost
    advance(Duration::from_secs(150)).await;
    assert!(pool.get(&3).is_some());
    assert!(pool.get(&4).is_some());
    // 2 comes back: thrashing; it is protected (the pool has room for two protected entries).
    assert!(pool.get(&5).is_some());
    call(&pool, 2).await;
    assert_eq!(pool.stats().thrashing, 1);
    // Nothing is within the margin (3, 4 and 5 have 150 s left): room for a returning key comes
    // from the last open entry in capacity order, the newest (5), not the next one a cycle needs.
    assert!(pool.get(&5).is_none(), "the newest open entry went");
    assert!(pool.get(&3).is_some() && pool.get(&4).is_some());
    // Now let 3 and 4 come within the margin, then thrash again.
    advance(Duration::from_secs(100)).await; // 3 and 4: 50 s left; 2: 200 s left
    call(&pool, 5).await; // 5 is a ghost: thrashing; 3 is within the margin: 3 goes, not 4 or 2
    assert_eq!(pool.stats().thrashing, 2);
    assert!(pool.get(&3).is_none(), "about to expire went first");
    assert!(pool.get(&2).is_some(), "the protected entry stayed");
}

// The thrashing warning is rate-limited to one a minute.
#[tokio::test(start_paused = true)]
async fn thrashing_warns_once_a_minute() {
    let pool = Ints::new(
        PoolConfig::default()
            .max_entries(2)
            .capacity_knob("TEST_POOL_MAX_ENTRIES"),
    );
    for _ in 0..50 {
        for key in 0..3 {
            advance(Duration::from_millis(100)).await;
            call(&pool, key).await;
        }
    }
    assert!(pool.stats().thrashing >= 2);
    assert_eq!(pool.inner.warnings.load(Ordering::Relaxed), 1);
    advance(Duration::from_secs(61)).await;
    for _ in 0..5 {
        for key in 0..3 {
            call(&pool, key).await;
        }
    }
    assert_eq!(pool.inner.warnings.load(Ordering::Relaxed), 2);
}

// The index and the shards hold the same entries after every kind of removal.
#[tokio::test(start_paused = true)]
async fn the_index_follows_every_removal() {
    let pool = Ints::new(
        PoolConfig::default()
            .max_entries(10)
            .ttl(Duration::from_secs(10)),
    );
    for key in 0..15 {
        call(&pool, key).await;
    }
    assert_eq!(index_len(&pool), 10);
    assert!(pool.invalidate(&14).await);
    pool.evict_where(EvictionCause::OwnerGone, |key, _| key % 2 == 0)
        .await;
    assert_eq!(index_len(&pool), pool.len());
    advance(Duration::from_secs(11)).await;
    assert!(pool.get(&13).is_none()); // expired: removed on lookup
    assert_eq!(index_len(&pool), pool.len());
    pool.prune_expired().await;
    assert_eq!((pool.len(), index_len(&pool)), (0, 0));
    for key in 0..5 {
        call(&pool, key).await;
    }
    pool.reset().await;
    assert_eq!(index_len(&pool), 0);
    for key in 0..5 {
        call(&pool, key).await;
    }
    pool.shutdown().await;
    assert_eq!((pool.len(), index_len(&pool)), (0, 0));
}
