//! The keyed hit path is allocation-free (A12, #22): a counting global allocator sees no
//! allocation across thousands of `authenticate` hits of cached keys.

//!
//! The allocator's counts are process-wide, so this binary has one `#[test]`, on a
//! current-thread runtime, with no spawned task.

use std::alloc::System;

use apikey_cache::{ApiKeyCache, CacheConfig, MemoryStore};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

// covers A12 (#22 item 4): 5 000 hits over 100 cached keys allocate nothing // (the miss path's boxed future and point reads happen only while warming up).
#[test]
fn keyed_hits_allocate_nothing() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let store = MemoryStore::keyed();
        let writer = ApiKeyCache::new(store.clone(), CacheConfig::default());
        let account = writer.create_account("acme", "Acme").await.expect("create");
        let mut keys = Vec::new();
        for _ in 0..100 {
            keys.push(writer.issue_key(&account).await.expect("issue").secret);
        }
        let reader = ApiKeyCache::new(store, CacheConfig::default());
        for key in &keys {
            assert!(reader.authenticate(key.expose()).await.is_ok(), "warm");
        }
        // One round of hits first: the cache's one-off lazy set-up (its housekeeping's first
        // run sizes internal buffers once) is not the per-hit cost.
        for key in &keys {
            assert!(reader.authenticate(key.expose()).await.is_ok(), "hit");
        }
        let region = Region::new(GLOBAL);
        for round in 0..50 {
            for key in &keys {
                let answer = reader.authenticate(key.expose()).await;
                assert!(answer.is_ok(), "round {round}");
            }
        }
        let change = region.change();
        assert_eq!(
            (change.allocations, change.reallocations),
            (0, 0),
            "allocations on 5 000 hits"
        );
    });
}
