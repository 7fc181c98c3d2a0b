//! B7, B8: one token fetch per credential however many clients, one shared transport, the
//! SDK's own retry off, the API version pinned.

use std::sync::atomic::Ordering;

use azure_core::http::StatusCode;
use retry_transport::RetryPolicy;

use super::{FakeCredential, config, endpoint, pool_with};
use crate::{BlobPool, storage_transport};

// covers B8: many tasks, two credentials, three endpoints → six clients and one token fetch
// per credential (one cache per credential, shared by all its clients).
#[tokio::test(start_paused = true)]
async fn one_token_fetch_per_credential_however_many_clients() {
    let (pool, http) = pool_with(config(), StatusCode::Forbidden);
    let (a, a_calls) = FakeCredential::make(1);
    let (b, b_calls) = FakeCredential::make(2);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..120u32 {
        let pool = pool.clone();
        let credential = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.spawn(async move {
            let client = pool.client(&credential, &endpoint(i % 3)).await.unwrap();
            let _ = client.get_properties(None).await;
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    assert_eq!(pool.stats().pool.creations, 6);
    assert_eq!(a_calls.load(Ordering::SeqCst), 1);
    assert_eq!(b_calls.load(Ordering::SeqCst), 1);
    assert_eq!(pool.token_stats(&a).unwrap().fetches(), 1);
    let seen = http.seen();
    assert_eq!(seen.len(), 120);
    for s in &seen {
        let auth = s.authorization.as_deref().unwrap();
        assert!(
            auth == "Bearer token-1" || auth == "Bearer token-2",
            "{auth}"
        );
    }
}

// covers B8: the SDK's retry policy is off — a 503 reaches the caller after one request
// (retries are retry-transport's job, which releases the response before sleeping).
#[tokio::test(start_paused = true)]
async fn the_sdk_does_not_retry_on_its_own() {
    let (pool, http) = pool_with(config(), StatusCode::ServiceUnavailable);
    let (a, _) = FakeCredential::make(1);
    let client = pool.client(&a, &endpoint(1)).await.unwrap();
    let error = client.get_properties(None).await.unwrap_err();
    assert_eq!(error.http_status(), Some(StatusCode::ServiceUnavailable));
    assert_eq!(http.seen().len(), 1);
}

// covers B7: the API version is configurable (Azurite lags the SDK); the default is the SDK's.
#[tokio::test(start_paused = true)]
async fn the_api_version_can_be_pinned() {
    let (pool, http) = pool_with(config().api_version("2025-01-05"), StatusCode::Forbidden);
    let (a, _) = FakeCredential::make(1);
    let _ = pool
        .client(&a, &endpoint(1))
        .await
        .unwrap()
        .get_properties(None)
        .await;
    assert_eq!(http.last().version.as_deref(), Some("2025-01-05"));
    assert_eq!(
        http.last().url,
        "https://127.0.0.1:10000/account1?comp=properties&restype=service"
    );

    let (pool, http) = pool_with(config(), StatusCode::Forbidden);
    let _ = pool
        .client(&a, &endpoint(1))
        .await
        .unwrap()
        .get_properties(None)
        .await;
    let default = http.last().version.unwrap();
    assert_ne!(default, "2025-01-05");
    assert!(
        default.len() == 10 && default.starts_with("20"),
        "{default}"
    );
}

// covers B8: every client of every credential sends through the one retry-transport client,
// and the SDK adds no attempts of its own (a refused connection is an IO error the SDK's
// policy would retry). Real loopback IO (a refused port), so real time — no sleeps.
#[tokio::test]
async fn every_client_sends_through_the_one_shared_transport() {
    let transport = storage_transport()
        .policy(RetryPolicy::never())
        .build()
        .unwrap();
    let pool = BlobPool::builder()
        .config(config())
        .transport(transport)
        .build()
        .unwrap();
    let refused = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    }; // closed again: connecting is refused
    let (a, _) = FakeCredential::make(1);
    let (b, _) = FakeCredential::make(2);
    let mut calls = 0;
    for credential in [&a, &b] {
        for account in ["one", "two"] {
            let there =
                crate::Endpoint::parse(&format!("https://127.0.0.1:{refused}/{account}")).unwrap();
            let client = pool.client(credential, &there).await.unwrap();
            for _ in 0..3 {
                assert!(client.get_properties(None).await.is_err());
                calls += 1;
            }
        }
    }
    let stats = pool.stats();
    assert_eq!(stats.pool.creations, 4);
    assert_eq!(stats.transport.requests, calls);
    assert_eq!(stats.transport.attempts, calls);
    assert_eq!(stats.transport.permits_in_use, 0);
}
