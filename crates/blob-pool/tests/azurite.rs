//! The pool against Azurite over HTTPS + bearer tokens (B1, B2, B7, B8): real SDK calls, real
//! token path. Run with `cargo xtask it` (or `cargo test -p blob-pool -- --include-ignored`
//! after `cargo xtask setup`); a missing Azurite fails these tests, it never skips them.

use std::sync::Arc;

use azure_core::credentials::TokenCredential;
use azure_core::http::{RequestContent, StatusCode};
use blob_pool::{BlobPool, BlobPoolConfig, Endpoint, is_authentication_failed, storage_transport};
use futures::TryStreamExt as _;
use testkit::azurite::{ACCOUNT, Azurite, TestCredential, TokenMode};

const NEEDS: &str = "needs Azurite: cargo xtask it";

async fn azurite() -> Azurite {
    match Azurite::start().await {
        Ok(azurite) => azurite,
        Err(e) => panic!("{NEEDS}: {e}"),
    }
}

fn pool_for(azurite: &Azurite) -> BlobPool {
    let cert = reqwest::Certificate::from_der(&azurite.ca().cert_der()).unwrap();
    let transport = storage_transport().tls_certs_only([cert]).build().unwrap();
    BlobPool::builder()
        .config(BlobPoolConfig::default().sweep_interval(None))
        .transport(transport)
        .build()
        .unwrap()
}

/// Two endpoints for one Azurite: the same account through two host names (`127.0.0.1` and
/// `localhost`, both in its certificate) — two pool keys, as two accounts would be.
fn endpoints(azurite: &Azurite) -> [Endpoint; 2] {
    [
        Endpoint::parse(azurite.endpoint().as_str()).unwrap(),
        Endpoint::parse(&format!("https://localhost:{}/{ACCOUNT}", azurite.port())).unwrap(),
    ]
}

// covers B1, B7, B8: 60 tasks, 3 credentials, 2 endpoints, 2 containers → 6 clients, one token
// fetch per credential, every request through the one shared transport.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Azurite: cargo xtask it"]
async fn many_tasks_share_clients_and_one_token_per_credential() {
    let azurite = azurite().await;
    let pool = pool_for(&azurite);
    let endpoints = endpoints(&azurite);
    let sources: Vec<TestCredential> = (0..3)
        .map(|i| TestCredential::new().with_object_id(&format!("user-{i}")))
        .collect();
    let credentials: Vec<Arc<dyn TokenCredential>> = sources
        .iter()
        .map(|s| Arc::new(s.clone()) as Arc<dyn TokenCredential>)
        .collect();
    let containers = ["alpha", "beta"];
    let setup = pool.client(&credentials[0], &endpoints[0]).await.unwrap();
    for container in containers {
        setup
            .blob_container_client(container)
            .create(None)
            .await
            .unwrap();
    }

    const TASKS: usize = 60;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..TASKS {
        let pool = pool.clone();
        let credential = credentials[i % 3].clone();
        let endpoint = endpoints[(i / 3) % 2].clone();
        tasks.spawn(async move {
            let client = pool.client(&credential, &endpoint).await?;
            assert!(client.is_for(&credential));
            let blob = client
                .blob_container_client(containers[i % 2])
                .blob_client(&format!("blob-{i}"));
            blob.upload(
                RequestContent::from(format!("hello {i}").into_bytes()),
                None,
            )
            .await?;
            client.get_properties(None).await?;
            anyhow::Ok(())
        });
    }
    while let Some(result) = tasks.join_next().await {
        result.unwrap().unwrap();
    }

    let stats = pool.stats();
    assert_eq!(stats.pool.creations, 6, "3 credentials × 2 endpoints");
    assert_eq!(stats.credentials, 3);
    for (i, source) in sources.iter().enumerate() {
        assert_eq!(
            source.calls(),
            1,
            "credential {i}: one token for all its clients"
        );
        assert_eq!(pool.token_stats(&credentials[i]).unwrap().fetches(), 1);
    }
    assert_eq!(stats.transport.requests, 2 + 2 * TASKS as u64);
    assert_eq!(stats.transport.attempts, stats.transport.requests);
    assert_eq!(stats.transport.permits_in_use, 0);

    let mut names = Vec::new();
    for container in containers {
        let mut pager = setup
            .blob_container_client(container)
            .list_blobs(None)
            .unwrap();
        while let Some(item) = pager.try_next().await.unwrap() {
            names.push(item.name.unwrap_or_default());
        }
    }
    assert_eq!(names.len(), TASKS);
}

// covers B7, T11: a credential handing out expired tokens gets a clear 403 AuthenticationFailed;
// the rejection evicts the credential's clients and drops the token from its cache, so the next
// client works as soon as the credential does (no reset, no invalidate_credential).
#[tokio::test]
#[ignore = "needs Azurite: cargo xtask it"]
async fn expired_tokens_get_403_and_the_pool_recovers_with_the_credential() {
    let azurite = azurite().await;
    let pool = pool_for(&azurite);
    let [endpoint, _] = endpoints(&azurite);
    let source = TestCredential::new();
    source.set_mode(TokenMode::Expired);
    let credential: Arc<dyn TokenCredential> = Arc::new(source.clone());

    let client = pool.client(&credential, &endpoint).await.unwrap();
    let error = client.get_properties(None).await.unwrap_err();
    assert_eq!(error.http_status(), Some(StatusCode::Forbidden), "{error}");
    assert!(is_authentication_failed(&error), "{error:?}");

    source.set_mode(TokenMode::Valid);
    let client = pool.client(&credential, &endpoint).await.unwrap();
    client.get_properties(None).await.unwrap();
    client.get_properties(None).await.unwrap();
    let stats = pool.stats();
    assert_eq!(
        stats.pool.creations, 2,
        "the 403 evicted the client; one rebuilt client served both calls"
    );
    assert_eq!(stats.tokens_rejected, 1);
    assert_eq!(
        source.calls(),
        2,
        "one expired token, then one valid token for both calls"
    );
}

// covers B7, T11: a token the server rejects (403 AuthenticationFailed) while the credential
// still calls it valid (revoked, clock skew): the SDK re-fetches only after a 401, so before T11
// the client kept failing until `invalidate_credential`. Now the rejection drops the token from
// the credential's cache and evicts its clients, so the next `client()` works with a new token;
// a handle taken before keeps the SDK's copy until dropped; `invalidate_credential` still
// retires a credential's clients outright.
#[tokio::test]
#[ignore = "needs Azurite: cargo xtask it"]
async fn a_rejected_token_recovers_after_invalidate_credential() {
    let azurite = azurite().await;
    let pool = pool_for(&azurite);
    let [endpoint, _] = endpoints(&azurite);
    let source = TestCredential::new();
    source.set_mode(TokenMode::Rejected);
    let credential: Arc<dyn TokenCredential> = Arc::new(source.clone());

    let client = pool.client(&credential, &endpoint).await.unwrap();
    let error = client.get_properties(None).await.unwrap_err();
    assert!(is_authentication_failed(&error), "{error:?}");
    source.set_mode(TokenMode::Valid);
    let error = client.get_properties(None).await.unwrap_err();
    assert!(
        is_authentication_failed(&error),
        "the old handle keeps the SDK's copy of the token"
    );
    assert_eq!(source.calls(), 1);
    assert_eq!(pool.stats().pool.entries, 0, "the rejection evicted it");

    let fresh = pool.client(&credential, &endpoint).await.unwrap();
    fresh.get_properties(None).await.unwrap();
    assert_eq!(
        source.calls(),
        2,
        "the rebuilt client asked for a new token"
    );
    drop(client);

    assert_eq!(pool.invalidate_credential(&credential).await.retired, 1);
    let again = pool.client(&credential, &endpoint).await.unwrap();
    assert_ne!(again.credential_id(), fresh.credential_id());
    again.get_properties(None).await.unwrap();
    assert_eq!(source.calls(), 3);
}

// covers B2, B4 end to end: a dropped credential's client is evicted, and the next credential
// (whatever its address) authenticates as itself — Azurite sees its token, not the old one.
#[tokio::test]
#[ignore = "needs Azurite: cargo xtask it"]
async fn a_new_credential_never_inherits_a_dropped_ones_client() {
    let azurite = azurite().await;
    let pool = pool_for(&azurite);
    let [endpoint, _] = endpoints(&azurite);
    for round in 0..20 {
        let source = TestCredential::new().with_object_id(&format!("round-{round}"));
        let credential: Arc<dyn TokenCredential> = Arc::new(source.clone());
        let client = pool.client(&credential, &endpoint).await.unwrap();
        assert!(client.is_for(&credential));
        client.get_properties(None).await.unwrap();
        assert_eq!(source.calls(), 1, "round {round}: its own token");
        drop((client, credential));
        pool.evict_dropped().await;
        assert!(pool.is_empty(), "round {round}");
    }
    assert_eq!(pool.stats().pool.evictions.owner_gone, 20);
}
