//! Seed 000 (and SPEC B1–B8, X5, issue #16) through the public API only: what the incident
//! and the upstream fix's own tests describe — a pooled `BlobServiceClient` must never serve
//! another credential (the recycled `id()`), a dropped credential's clients go (the
//! `weakref.finalize` eviction), every hit refreshes last-used and idle clients are pruned after
//! 1800 s (`BLOB_SERVICE_POOL_IDLE_TTL_SECONDS`), `reset` forgets registrations so the next
//! access registers afresh, one registration per credential, and the per-credential /
//! per-account pool semantics. Plus: the pooled clients' transport is bounded in time by
//! default (a black-hole peer ends in a timeout), and no duration setting panics.
//!
//! No backend: `client()` does no IO; the requests go to loopback servers from testkit.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use azure_core::credentials::{AccessToken, TokenCredential, TokenRequestOptions};
use azure_core::time::{Duration as AzDuration, OffsetDateTime};
use blob_pool::{BlobPool, BlobPoolConfig, Endpoint, IDLE_TTL_SECONDS, storage_transport};
use retry_transport::RetryPolicy;
use testkit::ratelimit::{Answer, RateLimitServer};
use testkit::tls::TestCa;

/// A credential whose tokens carry its serial; counts its calls.
#[derive(Debug)]
struct Cred {
    serial: u64,
    calls: AtomicU64,
}

fn cred(serial: u64) -> Arc<dyn TokenCredential> {
    Arc::new(Cred {
        serial,
        calls: AtomicU64::new(0),
    })
}

#[async_trait::async_trait]
impl TokenCredential for Cred {
    async fn get_token(
        &self,
        _scopes: &[&str],
        _options: Option<TokenRequestOptions<'_>>,
    ) -> azure_core::Result<AccessToken> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Ok(AccessToken::new(
            format!("token-{}", self.serial),
            OffsetDateTime::now_utc() + AzDuration::hours(1),
        ))
    }
}

fn account(n: u32) -> Endpoint {
    Endpoint::parse(&format!("https://127.0.0.1:10000/account{n}")).unwrap()
}

/// Defaults, no sweeper (the tests decide when maintenance runs), no environment.
fn pool() -> BlobPool {
    BlobPool::builder()
        .config(BlobPoolConfig::default().sweep_interval(None))
        .build()
        .unwrap()
}

fn address(credential: &Arc<dyn TokenCredential>) -> usize {
    Arc::as_ptr(credential).cast::<()>() as usize
}

// covers B1 (seed 000's per-credential / per-account semantics): one client per (credential,
// account), built once; the hot path returns the cached one.
#[tokio::test]
async fn b1_one_client_per_credential_and_account() {
    let pool = pool();
    let (a, b) = (cred(1), cred(2));
    for _ in 0..5 {
        for credential in [&a, &b] {
            for n in 0..2 {
                let client = pool.client(credential, &account(n)).await.unwrap();
                assert!(client.is_for(credential));
                assert_eq!(client.endpoint(), &account(n));
            }
        }
    }
    let stats = pool.stats();
    assert_eq!(stats.pool.creations, 4);
    assert_eq!(stats.pool.hits, 16);
    assert_eq!(pool.len(), 4);
    let x = pool.client(&a, &account(0)).await.unwrap();
    let y = pool.client(&b, &account(0)).await.unwrap();
    assert_ne!(x.credential_id(), y.credential_id());
}

// covers B2, seed 000's incident: credentials created and dropped in a loop, so allocations
// (the Rust analogue of Python's id()) are reused. A new credential at a dead one's address
// never gets the dead one's client: every client is for the asking credential, and no
// credential id is ever handed out twice.
#[tokio::test]
async fn b2_a_recycled_address_never_gets_the_dead_credentials_client() {
    let pool = pool();
    let endpoint = account(0);
    let mut addresses = HashSet::new();
    let mut ids = HashSet::new();
    let mut reused = 0;
    for serial in 0..500 {
        let credential = cred(serial);
        if !addresses.insert(address(&credential)) {
            reused += 1;
        }
        let client = pool.client(&credential, &endpoint).await.unwrap();
        assert!(client.is_for(&credential), "round {serial}");
        assert!(
            ids.insert(client.credential_id()),
            "round {serial}: id {} handed out twice",
            client.credential_id()
        );
        drop((client, credential));
        if serial % 2 == 0 {
            // Every other round the pool notices the drop before the next allocation, so the
            // allocation can be (and is) reused.
            pool.evict_dropped().await;
        }
    }
    assert!(reused > 10, "addresses reused only {reused} times");
}

// covers B3, B5 (seed 000: last_used updated on every hit; idle clients pruned after 1800 s):
// a client used at +1000 s survives a prune at +2000 s; the one idle since 0 goes.
#[tokio::test(start_paused = true)]
async fn b3_b5_every_hit_refreshes_last_used_and_idle_clients_are_pruned() {
    let pool = pool();
    let credential = cred(1);
    pool.client(&credential, &account(0)).await.unwrap();
    pool.client(&credential, &account(1)).await.unwrap();
    tokio::time::advance(Duration::from_secs(1000)).await;
    pool.client(&credential, &account(0)).await.unwrap(); // a hit
    tokio::time::advance(Duration::from_secs(1000)).await;
    let report = pool.prune_idle().await;
    assert_eq!(report.total(), 1);
    assert_eq!(pool.len(), 1);
    assert_eq!(pool.stats().pool.evictions.idle, 1);
    let stats = pool.stats();
    pool.client(&credential, &account(0)).await.unwrap();
    assert_eq!(
        pool.stats().pool.hits,
        stats.pool.hits + 1,
        "the used one is still pooled"
    );
}

// covers B5: default idle TTL 1800 s, overridable by BLOB_SERVICE_POOL_IDLE_TTL_SECONDS.
#[test]
fn b5_idle_ttl_defaults_to_1800_seconds_and_reads_its_knob() {
    assert_eq!(
        BlobPoolConfig::default().idle_ttl_value(),
        Duration::from_secs(1800)
    );
    assert_eq!(
        IDLE_TTL_SECONDS.name(),
        "BLOB_SERVICE_POOL_IDLE_TTL_SECONDS"
    );
    let from_env = BlobPoolConfig::from_env_with(|name| {
        (name == "BLOB_SERVICE_POOL_IDLE_TTL_SECONDS").then(|| "600".to_string())
    });
    assert_eq!(from_env.idle_ttl_value(), Duration::from_secs(600));
}

// covers B4 (seed 000's weakref.finalize): when a credential is dropped its clients are
// evicted on the next access, and the pool never kept the credential alive.
#[tokio::test]
async fn b4_a_dropped_credentials_clients_are_evicted_without_keeping_it_alive() {
    let pool = pool();
    let credential = cred(1);
    let weak = Arc::downgrade(&credential);
    for n in 0..3 {
        drop(pool.client(&credential, &account(n)).await.unwrap());
    }
    assert_eq!(pool.len(), 3);
    drop(credential);
    assert!(
        weak.upgrade().is_none(),
        "the pool held the credential alive"
    );

    let other = cred(2);
    pool.client(&other, &account(0)).await.unwrap(); // the next access
    let stats = pool.stats();
    assert_eq!(stats.pool.evictions.owner_gone, 3);
    assert_eq!(stats.credentials_dropped, 1);
    assert_eq!(stats.credentials, 1);
    assert_eq!(pool.len(), 1);
}

// covers seed 000's double-registration guard: however many calls and endpoints, one
// registration (one token cache) per credential.
#[tokio::test]
async fn one_registration_per_credential() {
    let pool = pool();
    let credential = cred(1);
    for _ in 0..10 {
        for n in 0..3 {
            pool.client(&credential, &account(n)).await.unwrap();
        }
    }
    assert_eq!(pool.stats().registrations, 1);
    assert_eq!(pool.stats().credentials, 1);
}

// covers B6 (seed 000: reset clears the registrations so the next access registers the
// current credential afresh): every client retired, a new id for the same credential.
#[tokio::test]
async fn b6_reset_forgets_clients_and_registrations() {
    let pool = pool();
    let credential = cred(1);
    let before = pool.client(&credential, &account(0)).await.unwrap();
    let report = pool.reset().await.unwrap();
    assert_eq!(report.total(), 1);
    assert!(pool.is_empty());
    assert_eq!(pool.stats().credentials, 0);
    let after = pool.client(&credential, &account(0)).await.unwrap();
    assert_ne!(after.credential_id(), before.credential_id());
    assert!(after.is_for(&credential));
    assert_eq!(pool.stats().registrations, 2);
    assert_eq!(pool.stats().transport.resets, 1);
}

// covers B8 + issue #16: the pool's own transport (and storage_transport(), which every custom
// one starts from) carries retry-transport's finite default read timeout — the same bound
// apikey-cache's Blob store inherits through blob-pool.
#[test]
fn b8_the_pools_transport_has_a_finite_read_timeout_by_default() {
    let expected = retry_transport::Limits::from_env().read_timeout;
    assert!(expected <= retry_transport::MAX_TIMEOUT);
    let pool = BlobPool::new().unwrap();
    assert_eq!(pool.transport().limits().read_timeout, expected);
    let custom = storage_transport().build().unwrap();
    assert_eq!(custom.limits().read_timeout, expected);
    assert_eq!(
        retry_transport::Limits::default().read_timeout,
        Duration::from_secs(60)
    );
}

// covers B8 + issue #16, seed 002 through the pool: a Blob call to a peer that accepts the
// request and never answers ends with an error (retry-transport's typed timeout as its source)
// after the transport's read timeout (200 ms here, real IO), and the connection slot is free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b8_a_blob_call_to_a_black_hole_times_out_and_frees_its_slot() {
    testkit::tls::install_crypto_provider();
    let hole = RateLimitServer::start().await.unwrap();
    hole.set_default(Answer::hang());
    let ca = TestCa::new("blob-pool-seed").unwrap();
    let front = ca.front(hole.addr()).await.unwrap();
    let cert = reqwest::Certificate::from_der(&ca.cert_der()).unwrap();
    let transport = storage_transport()
        .tls_certs_only([cert])
        .read_timeout(Duration::from_millis(200))
        .policy(RetryPolicy::never())
        .build()
        .unwrap();
    let pool = BlobPool::builder()
        .config(BlobPoolConfig::default().sweep_interval(None))
        .transport(transport)
        .build()
        .unwrap();
    let credential = cred(1);
    let endpoint = Endpoint::parse(&format!("https://127.0.0.1:{}/acct", front.port())).unwrap();
    let client = pool.client(&credential, &endpoint).await.unwrap();
    let error = client
        .get_properties(None)
        .await
        .expect_err("a black hole cannot answer");
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&error);
    let mut timed_out = false;
    while let Some(e) = source {
        if let Some(e) = e.downcast_ref::<retry_transport::Error>() {
            timed_out = e.is_timeout();
            break;
        }
        source = e.source();
    }
    assert!(timed_out, "{error:?}");
    let stats = pool.stats().transport;
    assert_eq!((stats.timeouts, stats.permits_in_use), (1, 0));
    assert_eq!(hole.stats().requests_seen, 1);
}

// covers X5 (issue #16): Duration::MAX for every duration blob-pool accepts — idle TTL, sweeper
// interval, prune_idle_with — builds a pool, starts the sweeper, prunes, sweeps and sends a
// request without a panic.
#[tokio::test]
async fn x5_duration_max_settings_never_panic() {
    let config = BlobPoolConfig::default()
        .idle_ttl(Duration::MAX)
        .sweep_interval(Some(Duration::MAX));
    assert!(config.idle_ttl_value() <= Duration::from_secs(IDLE_TTL_SECONDS.range().1));
    let server = RateLimitServer::start().await.unwrap();
    let transport = storage_transport()
        .policy(RetryPolicy::never())
        .build()
        .unwrap();
    let pool = BlobPool::builder()
        .config(config)
        .transport(transport)
        .build()
        .unwrap();
    let credential = cred(1);
    // https to a plain-HTTP server: the TLS handshake fails at once (no retries) — after the
    // pool, the sweeper start and the client build ran.
    let endpoint = Endpoint::parse(&format!("https://{}/acct", server.addr())).unwrap();
    let client = pool.client(&credential, &endpoint).await.unwrap();
    let _ = client.get_properties(None).await; // TLS to a plain server: fails, must not panic
    assert_eq!(pool.prune_idle().await.total(), 0);
    assert_eq!(pool.prune_idle_with(Duration::MAX).await.total(), 0);
    assert_eq!(pool.sweep().await.idle, 0);
    assert_eq!(pool.len(), 1);
}

// seed 000 ("clients held forever") and "a background task disabled for good": a pool that
// outlives the runtime its sweeper ran on (a `static` pool used by tests with a runtime each,
// an application restarting its runtime) sweeps again on the next runtime.
#[test]
fn b3_sweeper_restarts_on_the_next_runtime() {
    let paused = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap()
    };
    let pool = BlobPool::builder()
        .config(
            BlobPoolConfig::default()
                .idle_ttl(Duration::from_secs(60))
                .sweep_interval(Some(Duration::from_secs(10))),
        )
        .build()
        .unwrap();
    let credential = cred(1);
    let first = paused();
    first.block_on(async {
        drop(pool.client(&credential, &account(0)).await.unwrap());
    });
    drop(first); // the sweeper task goes with its runtime
    paused().block_on(async {
        drop(pool.client(&credential, &account(1)).await.unwrap());
        for _ in 0..30 {
            tokio::time::advance(Duration::from_secs(10)).await;
            for _ in 0..20 {
                tokio::task::yield_now().await;
            }
        }
        assert_eq!(pool.len(), 0, "idle clients kept: {:?}", pool.stats());
    });
}
