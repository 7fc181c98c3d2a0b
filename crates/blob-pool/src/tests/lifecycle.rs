//! B1, B3–B6: hits, last-used, eviction of dropped credentials, idle prune, sweeper, reset.

use std::sync::Arc;
use std::time::Duration;

use azure_core::credentials::TokenCredential;
use azure_core::http::StatusCode;

use super::{FakeCredential, config, endpoint, pool_with};
use crate::handle::Key;

// covers B1: one client per (credential, endpoint); the hot path returns the cached one.
#[tokio::test(start_paused = true)]
async fn one_client_per_credential_and_endpoint() {
    let (pool, _http) = pool_with(config(), StatusCode::Ok);
    let (a, _) = FakeCredential::make(1);
    let (b, _) = FakeCredential::make(2);
    for _ in 0..10 {
        for credential in [&a, &b] {
            for n in [1, 2] {
                let client = pool.client(credential, &endpoint(n)).await.unwrap();
                assert!(client.is_for(credential));
                assert_eq!(client.endpoint(), &endpoint(n));
                assert_eq!(client.url().as_str(), endpoint(n).as_str());
            }
        }
    }
    let stats = pool.stats();
    assert_eq!(stats.pool.creations, 4);
    assert_eq!(stats.pool.hits, 36);
    assert_eq!(stats.credentials, 2);
    assert_eq!(pool.len(), 4);
}

// covers B3, B5: every hit moves last-used, so a client used within the idle TTL survives a
// prune however old it is; an idle one goes, and its retire runs.
#[tokio::test(start_paused = true)]
async fn hits_update_last_used_and_idle_clients_are_pruned() {
    let (pool, _http) = pool_with(config(), StatusCode::Ok);
    assert_eq!(pool.config().idle_ttl_value(), Duration::from_secs(1800));
    let (a, _) = FakeCredential::make(1);
    let busy = endpoint(1);
    let idle = endpoint(2);
    drop(pool.client(&a, &busy).await.unwrap());
    drop(pool.client(&a, &idle).await.unwrap());

    tokio::time::advance(Duration::from_secs(1000)).await;
    drop(pool.client(&a, &busy).await.unwrap()); // a hit: last-used = now
    assert_eq!(
        pool.prune_idle().await.total(),
        0,
        "nothing idle for 1800 s yet"
    );

    // Both are 2000 s old; `busy` was used 1000 s ago, `idle` 2000 s ago.
    tokio::time::advance(Duration::from_secs(1000)).await;
    assert_eq!(pool.prune_idle().await.retired, 1);
    assert_eq!(pool.len(), 1);
    let stats = pool.stats();
    assert_eq!(stats.pool.evictions.idle, 1);
    assert_eq!(stats.clients_retired, 1, "the idle client's retire ran");
    assert!(pool.inner.pool.get(&key(&pool, &a, &busy)).is_some());
    assert!(pool.inner.pool.get(&key(&pool, &a, &idle)).is_none());

    tokio::time::advance(Duration::from_secs(1801)).await;
    assert_eq!(pool.prune_idle().await.retired, 1);
    assert!(pool.is_empty());
}

/// Let spawned tasks (the sweeper) run to completion at the current virtual instant.
async fn settle() {
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
}

fn key(
    pool: &crate::BlobPool,
    credential: &Arc<dyn TokenCredential>,
    endpoint: &crate::Endpoint,
) -> Key {
    Key {
        credential: pool.inner.registry.get(credential).unwrap().id,
        endpoint: endpoint.clone(),
    }
}

// covers B5: an explicit TTL overrides the configured one.
#[tokio::test(start_paused = true)]
async fn prune_with_an_explicit_ttl() {
    let (pool, _http) = pool_with(config().idle_ttl(Duration::from_secs(60)), StatusCode::Ok);
    let (a, _) = FakeCredential::make(1);
    drop(pool.client(&a, &endpoint(1)).await.unwrap());
    tokio::time::advance(Duration::from_secs(61)).await;
    assert_eq!(
        pool.prune_idle_with(Duration::from_secs(120)).await.total(),
        0
    );
    assert_eq!(pool.prune_idle().await.total(), 1);
}

// covers B4: dropping the credential evicts its clients on the next access (cause OwnerGone),
// their retire runs, the registration and token cache go, and the pool never kept the
// credential alive.
#[tokio::test(start_paused = true)]
async fn dropping_a_credential_evicts_its_clients_on_the_next_access() {
    let (pool, _http) = pool_with(config(), StatusCode::Ok);
    let (gone, _) = FakeCredential::make(1);
    let (stays, _) = FakeCredential::make(2);
    for n in 1..=3 {
        drop(pool.client(&gone, &endpoint(n)).await.unwrap());
    }
    drop(pool.client(&stays, &endpoint(1)).await.unwrap());
    assert_eq!(
        Arc::strong_count(&gone),
        1,
        "the pool holds no strong reference"
    );
    assert!(Arc::weak_count(&gone) > 0, "… only weak ones");
    let watch = Arc::downgrade(&gone);
    drop(gone);
    assert!(watch.upgrade().is_none(), "dropped at once, not kept alive");
    assert_eq!(pool.len(), 4, "nothing noticed yet");

    drop(pool.client(&stays, &endpoint(1)).await.unwrap());
    assert_eq!(pool.len(), 1);
    let stats = pool.stats();
    assert_eq!(stats.pool.evictions.owner_gone, 3);
    assert_eq!(stats.clients_retired, 3);
    assert_eq!(stats.credentials, 1);
    assert_eq!(stats.credentials_dropped, 1);
    assert_eq!(
        watch.weak_count(),
        0,
        "the pool let go of the allocation too"
    );
}

// covers B4: with more credentials than one access checks, every dropped one is found within a
// bounded number of accesses; the sweeper finds them all without any access.
#[tokio::test(start_paused = true)]
async fn many_dropped_credentials_are_found_by_accesses_and_by_the_sweeper() {
    let (pool, _http) = pool_with(config(), StatusCode::Ok);
    let (stays, _) = FakeCredential::make(0);
    let mut creds: Vec<_> = (1..=20).map(|s| FakeCredential::make(s).0).collect();
    for c in creds.iter().chain([&stays]) {
        drop(pool.client(c, &endpoint(1)).await.unwrap());
    }
    creds.truncate(10); // drop 10 of 20
    // 21 registrations, 4 checked per access: 6 accesses cover all of them.
    for _ in 0..6 {
        drop(pool.client(&stays, &endpoint(1)).await.unwrap());
    }
    assert_eq!(pool.len(), 11);
    assert_eq!(pool.stats().pool.evictions.owner_gone, 10);

    // The sweeper (no access at all).
    let (pool, _http) = pool_with(
        config().sweep_interval(Some(Duration::from_secs(60))),
        StatusCode::Ok,
    );
    for c in &creds {
        drop(pool.client(c, &endpoint(1)).await.unwrap());
    }
    creds.clear();
    assert_eq!(pool.len(), 10);
    tokio::time::advance(Duration::from_secs(59)).await;
    assert_eq!(pool.len(), 10);
    tokio::time::advance(Duration::from_secs(2)).await;
    settle().await;
    assert!(pool.is_empty(), "{:?}", pool.stats());
    assert_eq!(pool.stats().credentials, 0);
}

// covers B5: the sweeper also prunes idle clients, and it stops (letting go of everything)
// when the pool is dropped.
#[tokio::test(start_paused = true)]
async fn the_sweeper_prunes_idle_clients_and_stops_with_the_pool() {
    let (pool, _http) = pool_with(
        config()
            .sweep_interval(Some(Duration::from_secs(60)))
            .idle_ttl(Duration::from_secs(120)),
        StatusCode::Ok,
    );
    let (a, _) = FakeCredential::make(1);
    drop(pool.client(&a, &endpoint(1)).await.unwrap());
    for tick in [60, 120] {
        tokio::time::advance(Duration::from_secs(60)).await;
        settle().await;
        assert_eq!(
            pool.len(),
            1,
            "tick at {tick} s: idle for {tick} s, not more than 120 s"
        );
    }
    tokio::time::advance(Duration::from_secs(60)).await;
    settle().await;
    assert!(pool.is_empty(), "tick at 180 s: idle for 180 s");
    assert_eq!(pool.stats().pool.evictions.idle, 1);

    drop(pool.client(&a, &endpoint(1)).await.unwrap());
    assert!(Arc::weak_count(&a) > 0);
    drop(pool);
    tokio::time::advance(Duration::from_secs(60)).await;
    settle().await;
    assert_eq!(
        Arc::weak_count(&a),
        0,
        "nothing (sweeper included) holds the pool"
    );
}

// covers B6: reset retires every client and forgets every registration; the next access
// registers again under a new id with a new token cache.
#[tokio::test(start_paused = true)]
async fn reset_forgets_clients_and_registrations() {
    let (pool, http) = pool_with(config(), StatusCode::Forbidden);
    let (a, calls) = FakeCredential::make(1);
    let before = pool.client(&a, &endpoint(1)).await.unwrap();
    let _ = before.get_properties(None).await;
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);

    let report = pool.reset().await.unwrap();
    assert_eq!(report.retired, 1);
    let stats = pool.stats();
    assert_eq!(stats.credentials, 0);
    assert_eq!(stats.pool.evictions.reset, 1);
    assert_eq!(stats.transport.resets, 1);
    assert!(pool.is_empty());

    let after = pool.client(&a, &endpoint(1)).await.unwrap();
    assert_ne!(after.credential_id(), before.credential_id());
    let _ = after.get_properties(None).await;
    assert_eq!(
        calls.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "a new token cache"
    );
    assert_eq!(http.seen().len(), 2);
}

// covers B6: a client built from a registration that reset removed meanwhile (a creation in
// flight on another thread) is never handed out and is swept.
#[tokio::test(start_paused = true)]
async fn a_client_built_across_a_reset_is_swept() {
    let (pool, _http) = pool_with(config(), StatusCode::Ok);
    let (a, _) = FakeCredential::make(1);
    let old = pool.inner.registry.register(&a);
    pool.reset().await.unwrap();
    // The in-flight creation lands after the reset.
    let key = Key {
        credential: old.id,
        endpoint: endpoint(1),
    };
    let entry = pool.build_entry(&old, &endpoint(1)).unwrap();
    drop(
        pool.inner
            .pool
            .get_or_create(&key, || async {
                Ok::<_, std::io::Error>(pool_core::Created::new(entry))
            })
            .await
            .unwrap(),
    );
    let fresh = pool.client(&a, &endpoint(1)).await.unwrap();
    assert_ne!(fresh.credential_id(), old.id);
    assert_eq!(pool.len(), 2);
    pool.sweep().await;
    assert_eq!(pool.len(), 1);
    assert_eq!(pool.stats().pool.evictions.reset, 1);
}

// invalidate_credential: what to do after a 403 for a token the credential still calls valid.
#[tokio::test(start_paused = true)]
async fn invalidating_a_credential_rebuilds_its_clients_and_token_cache() {
    let (pool, _http) = pool_with(config(), StatusCode::Forbidden);
    let (a, calls) = FakeCredential::make(1);
    let (b, _) = FakeCredential::make(2);
    let first = pool.client(&a, &endpoint(1)).await.unwrap();
    let _ = first.get_properties(None).await;
    drop(pool.client(&b, &endpoint(1)).await.unwrap());
    assert_eq!(pool.invalidate_credential(&a).await.retired, 1);
    assert_eq!(pool.len(), 1, "b's client stays");
    let second = pool.client(&a, &endpoint(1)).await.unwrap();
    assert_ne!(second.credential_id(), first.credential_id());
    let _ = second.get_properties(None).await;
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 2);
    assert_eq!(pool.stats().pool.evictions.invalidated, 1);
}
