//! B2/B4: a client is only ever handed to the credential it was built for, addresses reused or not.

use std::collections::HashMap;
use std::sync::Arc;

use azure_core::http::StatusCode;

use super::{FakeCredential, config, endpoint, pool_with};
use crate::identity::address;

// covers B2, B4: create and drop credentials thousands of times. Every other round the pool
// notices the drop (through an access with another credential) before the next credential is
// allocated, so the allocator hands the next credential the dead one's address — the seed-000
// situation. Every client returned must be for the credential asking, its requests must carry
// that credential's token, and an address seen before must come with a new credential id.
#[tokio::test(start_paused = true)]
async fn thousands_of_credentials_never_get_another_credentials_client() {
    const ROUNDS: u64 = 3000;
    let (pool, http) = pool_with(config(), StatusCode::Forbidden);
    let there = endpoint(1);
    let (anchor, _) = FakeCredential::make(u64::MAX);
    let mut id_at_address = HashMap::new();
    let mut reused_addresses = 0;

    for serial in 0..ROUNDS {
        let (credential, calls) = FakeCredential::make(serial);
        let client = pool.client(&credential, &there).await.unwrap();
        assert!(client.is_for(&credential), "round {serial}");
        assert!(!client.is_for(&anchor));
        if let Some(previous) = id_at_address.insert(address(&credential), client.credential_id()) {
            reused_addresses += 1;
            assert_ne!(previous, client.credential_id(), "round {serial}");
        }

        // The client authenticates as this credential and nobody else.
        let _ = client.get_properties(None).await;
        assert_eq!(
            http.last().authorization.as_deref(),
            Some(FakeCredential::token_for(serial).as_str()),
            "round {serial}"
        );
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);

        // The pool holds no strong reference to the credential.
        assert_eq!(Arc::strong_count(&credential), 1);
        drop(client);
        drop(credential);
        if serial % 2 == 0 {
            // The next access evicts the dropped credential's client and lets go of its
            // allocation: the next credential may be allocated at the same address.
            let anchor_client = pool.client(&anchor, &there).await.unwrap();
            assert!(anchor_client.is_for(&anchor));
            assert_eq!(
                pool.len(),
                1,
                "round {serial}: only the anchor's client is left"
            );
        }
    }
    pool.evict_dropped().await;
    let stats = pool.stats();
    assert_eq!(stats.pool.creations, ROUNDS + 1);
    assert_eq!(stats.pool.evictions.owner_gone, ROUNDS);
    assert_eq!(stats.credentials_dropped, ROUNDS);
    assert_eq!(stats.credentials, 1);
    assert_eq!(pool.len(), 1);
    // The test only proves something if addresses really were reused.
    assert!(
        reused_addresses > ROUNDS / 10,
        "only {reused_addresses} addresses were reused"
    );
}

// covers B2: while the pool (or a handle) still holds an entry for a dropped credential, its
// address is pinned, so a new credential cannot land there; once it lands elsewhere or later,
// it gets a new id and its own client.
#[tokio::test(start_paused = true)]
async fn a_dropped_credentials_address_is_pinned_while_its_client_exists() {
    let (pool, _http) = pool_with(config(), StatusCode::Ok);
    let there = endpoint(1);
    let (first, _) = FakeCredential::make(1);
    let old_address = address(&first);
    let old = pool.client(&first, &there).await.unwrap();
    drop(first);
    // The handle `old` (and the pool entry) pin the allocation.
    for serial in 2..200 {
        let (next, _) = FakeCredential::make(serial);
        assert_ne!(address(&next), old_address);
        let client = pool.client(&next, &there).await.unwrap();
        assert_ne!(client.credential_id(), old.credential_id());
        assert!(client.is_for(&next));
    }
}

// covers B2: one allocation seen through two vtables (`Arc<dyn TokenCredential>` clones) is
// one credential; two credentials with equal contents are two.
#[tokio::test(start_paused = true)]
async fn identity_is_the_allocation_not_the_contents() {
    let (pool, _http) = pool_with(config(), StatusCode::Ok);
    let there = endpoint(1);
    let (a, _) = FakeCredential::make(7);
    let (b, _) = FakeCredential::make(7);
    let a_again = a.clone();
    let ca = pool.client(&a, &there).await.unwrap();
    let ca2 = pool.client(&a_again, &there).await.unwrap();
    let cb = pool.client(&b, &there).await.unwrap();
    assert_eq!(ca.credential_id(), ca2.credential_id());
    assert_ne!(ca.credential_id(), cb.credential_id());
    assert!(!cb.is_for(&a));
    assert_eq!(pool.stats().pool.creations, 2);
    assert_eq!(pool.stats().pool.hits, 1);
}
