//! Floods: 10 000 distinct bad API keys (seed 003; SPEC A5) and 1 000 concurrent cold-cache
//! requests to every pool (SPEC P1, P10, T1, A4, K1, R4). Each test counts what the flood could
//! multiply — store reads, factory calls, source calls, connections — and the structures that
//! could grow (negative-cache entries, pool entries); resident memory is reported.
//!
//! Virtual time where the code allows (pool-core, token-refresh, apikey-cache); real time over
//! loopback sockets otherwise (k8s-session, retry-transport).

mod support;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use apikey_cache::{API_KEY_HEADER, ApiKeyCache, ApiKeyLayer, CacheConfig, MemoryStore};
use http::{Request, Response, StatusCode};
use k8s_session::{
    ClusterCredentials, ClusterMaterial, CredentialsError, KubeconfigSource, SessionKey,
    SessionPool,
};
use pool_core::{Created, KeyedPool, PoolConfig, Retire};
use retry_transport::{Builder, Limits, RetryPolicy};
use testkit::k8s::{Fault, K8sServer, SAMPLE_NAMESPACE};
use testkit::ratelimit::{Answer, RateLimitServer};
use token_refresh::{Expiry, Fetched, RefreshConfig, TokenCache, TokenSource};
use tower::{Layer as _, ServiceExt as _};

use support::{Rng, rss_kib};

const FLOOD: usize = 1_000;

// covers A5, A6, A8: 10 000 distinct bad keys through the axum layer, over 10 virtual seconds,
// with valid keys mixed in: store reads stay at burst + one per second, the negative cache
// stays within its capacity, and every valid key is served.
#[tokio::test(start_paused = true)]
async fn ten_thousand_distinct_bad_keys_cost_a_bounded_number_of_store_reads() {
    let store = MemoryStore::new();
    store.set_latency(Duration::from_millis(5));
    let capacity = 2_000;
    let cache = ApiKeyCache::new(
        store.clone(),
        CacheConfig::default().negative_capacity(capacity),
    );
    let account = cache.create_account("acme", "Acme").await.unwrap();
    let valid = cache.issue_key(&account).await.unwrap();
    let valid = valid.secret.expose().to_string();
    let reads_before = store.loads();
    let rss_before = rss_kib();

    let inner = tower::service_fn(|_request: Request<()>| async {
        Ok::<_, Infallible>(Response::new(http_body_util::Empty::<bytes::Bytes>::new()))
    });
    let service = ApiKeyLayer::new(cache.clone()).layer(inner);
    let mut rng = Rng::new(3);
    // 100 waves of 100 distinct bad keys and 4 valid ones: 10 000 bad keys in all.
    let (waves, per_wave) = (100, 104);
    let (mut rejected, mut served) = (0usize, 0usize);
    for _ in 0..waves {
        let requests = (0..per_wave).map(|i| {
            let key = if i % 26 == 0 {
                valid.clone()
            } else {
                format!("ak_{:016x}{:016x}", rng.next(), rng.next())
            };
            let request = Request::builder()
                .uri("/")
                .header(API_KEY_HEADER, key)
                .body(())
                .unwrap();
            service.clone().oneshot(request)
        });
        for response in futures::future::join_all(requests).await {
            match response.unwrap().status() {
                StatusCode::OK => served += 1,
                StatusCode::UNAUTHORIZED => rejected += 1,
                other => panic!("unexpected {other}"),
            }
        }
        tokio::time::advance(Duration::from_millis(100)).await;
    }
    let bad = waves * 100;
    assert_eq!(served, waves * 4, "every valid key was served");
    assert_eq!(rejected, bad);
    let reads = store.loads() - reads_before;
    // Burst 2, then one per second, over ~10 virtual seconds (+1 for the TTL refresh).
    assert!(
        reads <= 2 + 10 + 1,
        "{reads} store reads for {bad} bad keys"
    );
    let stats = cache.stats();
    assert!(stats.negative_entries <= capacity as u64, "{stats:?}");
    println!(
        "bad-key flood: {bad} distinct bad keys + {served} valid, {reads} store reads, {} \
         negative entries (capacity {capacity}), RSS {} -> {} KiB",
        stats.negative_entries,
        rss_before,
        rss_kib()
    );
}

/// A pooled value that does nothing.
#[derive(Debug)]
struct Conn;
impl Retire for Conn {}

// covers P1, P10: 1 000 concurrent cold misses on one key and on 10 keys.
#[tokio::test(start_paused = true)]
async fn keyed_pool_cold_flood_makes_one_factory_call_per_key() {
    let pool: KeyedPool<u32, Conn> = KeyedPool::new(PoolConfig::default());
    let calls = Arc::new(AtomicU64::new(0));
    let results = futures::future::join_all((0..FLOOD).map(|i| {
        let (pool, calls) = (pool.clone(), calls.clone());
        async move {
            pool.get_or_create(&((i % 10) as u32), || async move {
                calls.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(100)).await;
                Ok::<_, std::io::Error>(Created::new(Conn))
            })
            .await
            .map(|_| ())
        }
    }))
    .await;
    assert!(results.iter().all(Result::is_ok));
    assert_eq!(calls.load(Ordering::SeqCst), 10, "one factory call per key");
    let stats = pool.stats();
    assert_eq!((stats.creations, stats.entries), (10, 10));
    println!(
        "keyed pool cold flood: {FLOOD} requests on 10 keys, 10 factory calls, {} coalesced",
        stats.coalesced
    );
}

#[derive(Debug, Default)]
struct CountingSource(AtomicU64);

impl TokenSource for CountingSource {
    type Token = String;
    type Error = std::io::Error;
    async fn fetch(&self) -> Result<Fetched<String>, std::io::Error> {
        self.0.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(200)).await;
        Ok(Fetched::new(
            "token".into(),
            Expiry::In(Duration::from_secs(3600)),
        ))
    }
}

// covers T1: 1 000 concurrent callers on a cold token cache share one fetch.
#[tokio::test(start_paused = true)]
async fn token_cache_cold_flood_makes_one_fetch() {
    let source = Arc::new(CountingSource::default());
    let cache = TokenCache::from_arc(source.clone(), RefreshConfig::default());
    let tokens = futures::future::join_all((0..FLOOD).map(|_| cache.token())).await;
    assert!(tokens.iter().all(Result::is_ok));
    assert_eq!(source.0.load(Ordering::SeqCst), 1);
    assert_eq!(cache.stats().waits, FLOOD as u64);
}

// covers A4: 1 000 concurrent requests with a valid key on a cold cache make one store read.
#[tokio::test(start_paused = true)]
async fn apikey_cache_cold_flood_makes_one_store_read() {
    let store = MemoryStore::new();
    let writer = ApiKeyCache::new(store.clone(), CacheConfig::default());
    let account = writer.create_account("acme", "Acme").await.unwrap();
    let key = writer.issue_key(&account).await.unwrap();
    store.set_latency(Duration::from_millis(50));
    let cold = ApiKeyCache::new(store.clone(), CacheConfig::default());
    let before = store.loads();
    let secret = key.secret.expose();
    let verdicts = futures::future::join_all((0..FLOOD).map(|_| cold.authenticate(secret))).await;
    assert!(verdicts.iter().all(Result::is_ok));
    assert_eq!(
        store.loads() - before,
        1,
        "one store read for {FLOOD} cold requests"
    );
}

/// Counts calls to the kubeconfig source.
#[derive(Debug)]
struct CountingCluster {
    inner: KubeconfigSource,
    calls: AtomicU64,
}

#[async_trait::async_trait]
impl ClusterCredentials for CountingCluster {
    async fn credentials(&self, key: &SessionKey) -> Result<ClusterMaterial, CredentialsError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.inner.credentials(key).await
    }
}

// covers K1, P1, K9, K10: 1 000 concurrent cold requests through the session pool against the
// test API server: one credentials call, one session, ONE TLS connection (HTTP/2: one handshake
// while the cold flood waits, then multiplexed; kube's HTTP/1.1 connector opened a connection per
// concurrent request, ~1 000 without a bound), and never more requests in flight than the
// server's 100-stream limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_pool_cold_flood_builds_one_session() {
    let server = K8sServer::start().await.unwrap();
    // A little server latency, so that requests overlap at the server and its in-flight peak
    // shows the bound (instant answers leave at most a couple in flight whatever the client does).
    let pods_path = format!("/api/v1/namespaces/{SAMPLE_NAMESPACE}/pods");
    server.inject(pods_path.as_str(), Fault::latency(Duration::from_millis(2)));
    let source = Arc::new(CountingCluster {
        inner: KubeconfigSource::from_kubeconfig(server.kubeconfig_token()),
        calls: AtomicU64::new(0),
    });
    let pool = SessionPool::builder_arc(source.clone())
        .knobs_from(|_| None)
        .build();
    let bound = pool.max_in_flight_per_session();
    assert_eq!(bound, 32, "the default bound");
    let key = SessionKey::new("sub", "rg", "local");
    let rss_before = rss_kib();
    let lists = futures::future::join_all((0..FLOOD).map(|_| {
        let (pool, key) = (pool.clone(), key.clone());
        async move {
            let session = pool.session(&key).await?;
            let pods: kube::Api<k8s_openapi::api::core::v1::Pod> =
                kube::Api::namespaced(session.client().clone(), SAMPLE_NAMESPACE);
            pods.list(&Default::default()).await?;
            anyhow::Ok(())
        }
    }))
    .await;
    for result in lists {
        result.unwrap();
    }
    assert_eq!(source.calls.load(Ordering::SeqCst), 1);
    let stats = pool.stats();
    assert_eq!(stats.creations, 1);
    assert_eq!(pool.len(), 1);
    let (peak, open, opened) = (
        server.peak_in_flight(),
        server.peak_open_connections(),
        server.tls_connections(),
    );
    println!(
        "session pool cold flood: {FLOOD} requests, 1 credentials call, 1 session, HTTP/1.1 \
         bound {bound} (unused over HTTP/2): {opened} TLS connections opened, peak {open} \
         open, server peak {peak} in flight, RSS {rss_before} -> {} KiB",
        rss_kib()
    );
    // HTTP/2: one connection, the server's stream limit (100) bounds the requests in flight;
    // the HTTP/1.1 bound (32) is not what limits them any more.
    assert!(peak <= 100, "{peak} requests in flight at once");
    assert_eq!(opened, 1, "{opened} TLS connections opened");
    assert_eq!(open, 1, "{open} connections open at once");
    assert_eq!(server.h2_connections(), 1);
    assert_eq!(pool.connection_stats().http2_connections, 1);
    pool.shutdown().await;
}

// covers R4: 1 000 concurrent requests on a cold retry-transport client never use more than its
// slot limit of connections, and none times out waiting for a slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_transport_cold_flood_stays_within_its_slots() {
    let server = RateLimitServer::start().await.unwrap();
    server.set_default(Answer::ok(512));
    let slots = 32;
    let client = Builder::with_limits(
        Limits::default()
            .max_in_use(slots)
            .max_idle_per_host(slots)
            .acquire_timeout(Duration::from_secs(30)),
    )
    .policy(RetryPolicy::never())
    .build()
    .unwrap();
    let results = futures::future::join_all((0..FLOOD).map(|i| {
        let client = client.clone();
        let url = server.url(&format!("/cold/{i}")).parse().unwrap();
        async move {
            let response = client.send(client.get(url)).await?;
            response.bytes().await?;
            anyhow::Ok(())
        }
    }))
    .await;
    for result in results {
        result.unwrap();
    }
    let stats = client.stats();
    // A connection the client closed (an idle one past max_idle_per_host) reaches the server's
    // count a moment later: wait, boundedly, for the closes in transit before reading it.
    let seen = tokio::time::timeout(
        Duration::from_secs(5),
        server.wait_until(|s| s.connections_open <= slots as u64),
    )
    .await
    .unwrap_or_else(|_| server.stats());
    assert_eq!(stats.pool_timeouts, 0);
    assert!(seen.peak_in_flight <= slots as u64, "{seen:?}");
    // Connections *open* stay within the limit. Connections *opened* over the flood may exceed
    // it: hyper finishes a connect it started even when a pooled connection freed up first and
    // served the request; the extra connection goes idle (capped by max_idle_per_host).
    assert!(seen.connections_open <= slots as u64, "{seen:?}");
    assert!(seen.connections_opened <= 2 * slots as u64, "{seen:?}");
    println!(
        "retry-transport cold flood: {FLOOD} requests, {} connections opened, {} open at the \
         end, peak {} in flight, {slots} slots, 0 pool timeouts",
        seen.connections_opened, seen.connections_open, seen.peak_in_flight
    );
}

// covers B1, B8: 1 000 concurrent cold requests through the blob pool make one client and one
// token fetch, and never more requests in use than the shared transport's slots.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Azurite: cargo xtask it"]
async fn blob_pool_cold_flood_builds_one_client_and_fetches_one_token() {
    use azure_core::credentials::TokenCredential;
    use blob_pool::{BlobPool, BlobPoolConfig, Endpoint, storage_transport};
    use testkit::azurite::{Azurite, TestCredential};

    let azurite = Azurite::start()
        .await
        .unwrap_or_else(|e| panic!("needs Azurite: cargo xtask it: {e}"));
    let slots = 16;
    let cert = reqwest::Certificate::from_der(&azurite.ca().cert_der()).unwrap();
    let transport = storage_transport()
        .tls_certs_only([cert])
        .limits(
            Limits::default()
                .max_in_use(slots)
                .max_idle_per_host(slots)
                .acquire_timeout(Duration::from_secs(60)),
        )
        .build()
        .unwrap();
    let pool = BlobPool::builder()
        .config(BlobPoolConfig::default().sweep_interval(None))
        .transport(transport)
        .build()
        .unwrap();
    let source = TestCredential::new();
    let credential: Arc<dyn TokenCredential> = Arc::new(source.clone());
    let endpoint = Endpoint::parse(azurite.endpoint().as_str()).unwrap();
    let port = azurite.port();
    let peak = Arc::new(AtomicU64::new(0));
    let sampler = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                peak.fetch_max(
                    support::established_connections(port) as u64,
                    Ordering::Relaxed,
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let results = futures::future::join_all((0..FLOOD).map(|_| {
        let (pool, credential, endpoint) = (pool.clone(), credential.clone(), endpoint.clone());
        async move {
            let client = pool.client(&credential, &endpoint).await?;
            client.get_properties(None).await?;
            anyhow::Ok(())
        }
    }))
    .await;
    sampler.abort();
    for result in results {
        result.unwrap();
    }
    let stats = pool.stats();
    assert_eq!(stats.pool.creations, 1);
    assert_eq!(source.calls(), 1, "one token for {FLOOD} cold requests");
    assert_eq!(stats.transport.pool_timeouts, 0);
    assert_eq!(stats.transport.permits_in_use, 0);
    // Both ends of each connection are counted (client and Azurite are on this machine).
    let peak = peak.load(Ordering::Relaxed) / 2;
    // In use ≤ slots and idle ≤ slots: at most 2 × slots established. Connects still in
    // their handshake and closes in transit are not counted: counting every state but
    // LISTEN, TIME_WAIT and CLOSE, a run on a loaded machine read 36.
    assert!(peak <= 2 * slots as u64, "{peak} connections established");
    println!(
        "blob pool cold flood: {FLOOD} requests, 1 client, 1 token fetch, peak {peak} \
         connections established to Azurite on {slots} slots, 0 pool timeouts"
    );
}
