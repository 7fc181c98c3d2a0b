//! The metrics a pool records (issue 19), read back from `metrics`' debugging recorder: series
//! names, the `pool.name` label, and values, driven through the public API in virtual time.

use std::time::Duration;

use pool_core::{BoxError, Created, EvictionCause, KeyedPool, PoolConfig, Retire};
use testkit::metrics::{counter, gauge, histogram, recorded};

#[derive(Debug, thiserror::Error)]
#[error("backend unavailable")]
struct Unavailable;

#[derive(Debug)]
struct Client {
    fail_retire: bool,
}

impl Retire for Client {
    async fn retire(&self) -> Result<(), BoxError> {
        if self.fail_retire {
            Err("close failed".into())
        } else {
            Ok(())
        }
    }
}

fn client() -> Created<Client> {
    Created::new(Client { fail_retire: false })
}

const POOL: (&str, &str) = ("pool.name", "clusters");

// covers P1, P9 and issue 19: 1 000 concurrent cold lookups of one key are one creation and
// 999 coalesced waits, all 1 000 misses, one entry, one create time of the factory's 250 ms.
#[test]
fn thousand_cold_lookups_record_one_creation_and_999_coalesced() {
    let recorded = recorded(|| async {
        let pool: KeyedPool<&str, Client> = KeyedPool::new(PoolConfig::default().name("clusters"));
        let lookups = (0..1000).map(|_| {
            pool.get_or_create(&"east", || async {
                tokio::time::sleep(Duration::from_millis(250)).await;
                Ok::<_, Unavailable>(client())
            })
        });
        let results = futures::future::join_all(lookups).await;
        assert!(results.iter().all(Result::is_ok));
        assert_eq!(pool.stats().creations, 1);
        pool
    });
    assert_eq!(counter(&recorded, "pool.creations", &[POOL]), 1);
    assert_eq!(counter(&recorded, "pool.coalesced", &[POOL]), 999);
    assert_eq!(counter(&recorded, "pool.misses", &[POOL]), 1000);
    assert_eq!(counter(&recorded, "pool.hits", &[POOL]), 0);
    assert_eq!(gauge(&recorded, "pool.entries", &[POOL]), 1.0);
    assert_eq!(
        histogram(
            &recorded,
            "pool.create.duration",
            &[POOL, ("outcome", "ok")]
        ),
        [0.25]
    );
}

// covers P9 and issue 19: hits reach the metric in batches without a shared write on the hit
// path, and exactly on a stats read or a miss.
#[test]
fn hits_are_published_exactly_on_stats_reads_and_misses() {
    let recorded = recorded(|| async {
        let pool: KeyedPool<&str, Client> = KeyedPool::new(PoolConfig::default().name("clusters"));
        pool.get_or_create(&"east", || async { Ok::<_, Unavailable>(client()) })
            .await
            .expect("create");
        for _ in 0..200 {
            pool.get(&"east").expect("hit");
        }
        // Published every 64 hits of a thread: 192 so far.
        let _ = pool.get(&"missing");
        pool.get_or_create(&"west", || async { Ok::<_, Unavailable>(client()) })
            .await
            .expect("create");
        for _ in 0..5 {
            pool.get(&"west").expect("hit");
        }
        assert_eq!(pool.stats().hits, 205);
        pool
    });
    assert_eq!(counter(&recorded, "pool.hits", &[POOL]), 205);
    assert_eq!(counter(&recorded, "pool.misses", &[POOL]), 2);
    assert_eq!(gauge(&recorded, "pool.entries", &[POOL]), 2.0);
}

// Between publications the metric lags the pool by less than a batch per thread.
#[test]
fn hits_between_publications_lag_by_less_than_a_batch() {
    let recorded = recorded(|| async {
        let pool: KeyedPool<&str, Client> = KeyedPool::new(PoolConfig::default().name("clusters"));
        pool.get_or_create(&"east", || async { Ok::<_, Unavailable>(client()) })
            .await
            .expect("create");
        for _ in 0..130 {
            pool.get(&"east").expect("hit");
        }
        pool
    });
    // Two full batches of 64 are published; the last 2 wait for the next publication.
    assert_eq!(counter(&recorded, "pool.hits", &[POOL]), 128);
}

// A dropped pool publishes the hits it had not published yet.
#[test]
fn dropped_pool_publishes_its_last_hits() {
    let recorded = recorded(|| async {
        let pool: KeyedPool<&str, Client> = KeyedPool::new(PoolConfig::default().name("clusters"));
        pool.get_or_create(&"east", || async { Ok::<_, Unavailable>(client()) })
            .await
            .expect("create");
        for _ in 0..130 {
            pool.get(&"east").expect("hit");
        }
    });
    assert_eq!(counter(&recorded, "pool.hits", &[POOL]), 130);
}

// covers P2-P4, P6, P9 and issue 19: evictions by cause, one-shots, failures, retire failures,
// the entries gauge following inserts and removals, under the default name "pool".
#[test]
fn evictions_one_shots_and_failures_are_counted_by_cause() {
    let recorded = recorded(|| async {
        let pool: KeyedPool<u32, Client> = KeyedPool::new(
            PoolConfig::default()
                .max_entries(3)
                .ttl(Duration::from_secs(600)),
        );
        assert_eq!(pool.config().name_value(), PoolConfig::DEFAULT_NAME);
        for key in 0..3 {
            pool.get_or_create(&key, || async { Ok::<_, Unavailable>(client()) })
                .await
                .expect("create");
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        // A factory failure after 2 s of virtual time.
        let failed = pool
            .get_or_create(&9, || async {
                tokio::time::sleep(Duration::from_secs(2)).await;
                Err::<Created<Client>, _>(Unavailable)
            })
            .await;
        assert!(failed.is_err());
        // A one-shot value: never pooled.
        pool.get_or_create(&8, || async {
            Ok::<_, Unavailable>(Created::one_shot(Client { fail_retire: false }))
        })
        .await
        .expect("one-shot");
        // A fourth key: capacity evicts key 0 (soonest deadline). Then an invalidation whose
        // retire fails.
        pool.get_or_create(&7, || async {
            Ok::<_, Unavailable>(Created::new(Client { fail_retire: true }))
        })
        .await
        .expect("create");
        assert!(pool.invalidate(&7).await);
        pool.evict_where(EvictionCause::OwnerGone, |key, _| *key == 2)
            .await;
        tokio::time::advance(Duration::from_secs(601)).await;
        let report = pool.prune_expired().await;
        assert_eq!(report.retired, 1);
        assert!(pool.is_empty());
    });
    let pool = ("pool.name", "pool");
    let evictions = |cause| counter(&recorded, "pool.evictions", &[pool, ("cause", cause)]);
    assert_eq!(evictions("capacity"), 1);
    assert_eq!(evictions("invalidated"), 1);
    assert_eq!(evictions("owner_gone"), 1);
    assert_eq!(evictions("expired"), 1);
    assert_eq!(evictions("idle"), 0);
    assert_eq!(counter(&recorded, "pool.creations", &[pool]), 4);
    assert_eq!(counter(&recorded, "pool.creation_failures", &[pool]), 1);
    assert_eq!(counter(&recorded, "pool.one_shots", &[pool]), 1);
    assert_eq!(counter(&recorded, "pool.retire_failures", &[pool]), 1);
    assert_eq!(gauge(&recorded, "pool.entries", &[pool]), 0.0);
    assert_eq!(
        histogram(
            &recorded,
            "pool.create.duration",
            &[pool, ("outcome", "error")]
        ),
        [2.0]
    );
}

// The entries gauge of pools sharing a name is their sum, and a dropped pool leaves it.
#[test]
fn entries_gauge_adds_pools_of_one_name_and_drops_with_the_pool() {
    let recorded = recorded(|| async {
        let a: KeyedPool<u32, Client> = KeyedPool::new(PoolConfig::default().name("shared"));
        let b: KeyedPool<u32, Client> = KeyedPool::new(PoolConfig::default().name("shared"));
        for key in 0..3 {
            a.get_or_create(&key, || async { Ok::<_, Unavailable>(client()) })
                .await
                .expect("create");
        }
        b.get_or_create(&0, || async { Ok::<_, Unavailable>(client()) })
            .await
            .expect("create");
        drop(a);
        b
    });
    assert_eq!(
        gauge(&recorded, "pool.entries", &[("pool.name", "shared")]),
        1.0
    );
}

// Thrashing: a cycle of keys one longer than the capacity counts misses on keys evicted for
// capacity.
#[test]
fn thrashing_is_counted() {
    let recorded = recorded(|| async {
        let pool: KeyedPool<u32, Client> = KeyedPool::new(PoolConfig::default().max_entries(2));
        for _ in 0..3 {
            for key in 0..3 {
                pool.get_or_create(&key, || async { Ok::<_, Unavailable>(client()) })
                    .await
                    .expect("create");
            }
        }
        assert!(pool.stats().thrashing > 0);
    });
    assert!(counter(&recorded, "pool.thrashing", &[("pool.name", "pool")]) > 0);
}
