//! B8 through the public API: pooled clients answered 429/503 by the server hold no connection
//! slot and no server request while they wait, and the SDK adds no retries of its own.
//!
//! The SDK only sends bearer tokens over HTTPS, so a small TLS terminator (testkit's test CA)
//! stands in front of testkit's rate-limiting server, which scripts the answers and counts
//! connections and requests in flight. The back-off sleep is a gate the test holds closed: the
//! "while waiting" state is observed by counting, never by timing.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use azure_core::credentials::TokenCredential;
use blob_pool::{BlobPool, BlobPoolConfig, Endpoint, storage_transport};
use futures_gate::Gate;
use retry_transport::{Limits, RetryPolicy};
use testkit::azurite::TestCredential;
use testkit::ratelimit::{Answer, RateLimitServer, RetryAfter};
use testkit::tls::TestCa;

mod futures_gate {
    //! A `Sleeper` that parks every back-off until the test opens the gate, counting sleepers.

    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use futures::future::BoxFuture;
    use tokio::sync::{Notify, watch};

    #[derive(Debug)]
    pub(crate) struct Gate {
        open: watch::Sender<bool>,
        pub(crate) sleeping: AtomicUsize,
        pub(crate) waits: std::sync::Mutex<Vec<Duration>>,
        pub(crate) changed: Notify,
    }

    impl Gate {
        pub(crate) fn new() -> Arc<Self> {
            Arc::new(Self {
                open: watch::channel(false).0,
                sleeping: AtomicUsize::new(0),
                waits: std::sync::Mutex::new(Vec::new()),
                changed: Notify::new(),
            })
        }

        pub(crate) fn open(&self) {
            self.open.send_replace(true);
        }

        pub(crate) async fn until_sleeping(&self, n: usize) {
            loop {
                let notified = self.changed.notified();
                if self.sleeping.load(Ordering::SeqCst) >= n {
                    return;
                }
                notified.await;
            }
        }
    }

    #[derive(Debug, Clone)]
    pub(crate) struct GateSleeper(pub(crate) Arc<Gate>);

    impl retry_transport::Sleeper for GateSleeper {
        fn sleep(&self, duration: Duration) -> BoxFuture<'static, ()> {
            let gate = self.0.clone();
            Box::pin(async move {
                gate.waits.lock().unwrap().push(duration);
                let mut open = gate.open.subscribe();
                gate.sleeping.fetch_add(1, Ordering::SeqCst);
                gate.changed.notify_waiters();
                let _ = open.wait_for(|open| *open).await;
                gate.sleeping.fetch_sub(1, Ordering::SeqCst);
            })
        }
    }
}

// covers B8 (and R1, R4 through the pool): 8 pooled-client calls share 2 connection slots; every
// first attempt is answered 429 or 503 with Retry-After; all 8 are then asleep at once, which
// is only possible because none of them holds a slot (or a server request) while it waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttled_calls_hold_no_connection_while_they_wait() {
    testkit::tls::install_crypto_provider();
    let server = RateLimitServer::start().await.unwrap();
    server.set_default(Answer::status(201));
    let ca = TestCa::new("blob-pool-throttling").unwrap();
    let front = ca.front(server.addr()).await.unwrap();

    let gate = Gate::new();
    let cert = reqwest::Certificate::from_der(&ca.cert_der()).unwrap();
    let transport = storage_transport()
        .tls_certs_only([cert])
        .limits(
            Limits::default()
                .max_in_use(2)
                .acquire_timeout(Duration::from_secs(20)),
        )
        .policy(RetryPolicy::default().max_attempts(3))
        .sleeper(Arc::new(futures_gate::GateSleeper(gate.clone())))
        .build()
        .unwrap();
    let pool = BlobPool::builder()
        .config(BlobPoolConfig::default().sweep_interval(None))
        .transport(transport)
        .build()
        .unwrap();
    let endpoint = Endpoint::parse(&format!(
        "https://127.0.0.1:{}/devstoreaccount1",
        front.port()
    ))
    .unwrap();
    let token_source = TestCredential::new();
    let credential: Arc<dyn TokenCredential> = Arc::new(token_source.clone());

    const CALLS: usize = 8;
    for i in 0..CALLS {
        let throttled = if i % 2 == 0 {
            Answer::too_many(1)
        } else {
            Answer::status(503).retry_after(RetryAfter::Seconds(1))
        };
        server.script(
            &format!("/devstoreaccount1/c{i}?restype=container"),
            [throttled],
        );
    }
    let done = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..CALLS {
        let (pool, credential, endpoint, done) = (
            pool.clone(),
            credential.clone(),
            endpoint.clone(),
            done.clone(),
        );
        tasks.spawn(async move {
            let client = pool.client(&credential, &endpoint).await?;
            client
                .blob_container_client(&format!("c{i}"))
                .create(None)
                .await?;
            done.fetch_add(1, Ordering::SeqCst);
            anyhow::Ok(())
        });
    }

    // Every call got its 429/503 and is now waiting: all 8 at once, with 2 slots.
    if tokio::time::timeout(Duration::from_secs(30), gate.until_sleeping(CALLS))
        .await
        .is_err()
    {
        let sleeping = gate.sleeping.load(Ordering::SeqCst);
        let (pool_stats, server_stats, seen) = (pool.stats(), server.stats(), server.requests());
        tasks.abort_all();
        let mut results = Vec::new();
        while let Some(r) = tasks.join_next().await {
            results.push(format!("{r:?}"));
        }
        panic!(
            "not all calls reached their back-off ({sleeping} did): {pool_stats:?} {server_stats:?} {seen:?} {results:?}"
        );
    }
    let transport = pool.stats().transport;
    assert_eq!(transport.permits_in_use, 0, "no slot held while waiting");
    assert_eq!(server.stats().in_flight, 0, "no request open at the server");
    assert_eq!(done.load(Ordering::SeqCst), 0);
    assert_eq!(
        transport.retries.throttled + transport.retries.unavailable,
        CALLS as u64
    );
    assert_eq!(transport.retries.throttled, (CALLS / 2) as u64);
    assert_eq!(
        transport.drained, CALLS as u64,
        "each throttled body was drained so its connection can be reused"
    );
    assert!(
        gate.waits
            .lock()
            .unwrap()
            .iter()
            .all(|w| *w == Duration::from_secs(1)),
        "Retry-After honoured"
    );

    gate.open();
    while let Some(result) = tasks.join_next().await {
        result.unwrap().unwrap();
    }
    let stats = pool.stats();
    let server_stats = server.stats();
    println!("pool: {stats:?}\nserver: {server_stats:?}");
    assert_eq!(done.load(Ordering::SeqCst), CALLS);
    assert_eq!(stats.pool.creations, 1, "one pooled client for all calls");
    assert_eq!(stats.transport.requests, CALLS as u64);
    assert_eq!(
        stats.transport.attempts,
        2 * CALLS as u64,
        "one retry each, none by the SDK"
    );
    assert_eq!(server_stats.requests_seen, 2 * CALLS as u64);
    assert!(server_stats.peak_in_flight <= 2, "{server_stats:?}");
    // Drained throttled responses give their keep-alive connection back: 16 requests ride on
    // a couple of connections (2 here, every run so far; 4 allows for a late pool return).
    assert!(server_stats.connections_opened <= 4, "{server_stats:?}");
    assert_eq!(stats.transport.permits_in_use, 0);
    assert_eq!(token_source.calls(), 1, "one token for every call");
}

/// A pool over `front`, trusting `ca`, with no sweeper.
fn pool_behind(ca: &TestCa) -> BlobPool {
    let cert = reqwest::Certificate::from_der(&ca.cert_der()).unwrap();
    let transport = storage_transport()
        .tls_certs_only([cert])
        .policy(RetryPolicy::default().max_attempts(1))
        .build()
        .unwrap();
    BlobPool::builder()
        .config(BlobPoolConfig::default().sweep_interval(None))
        .transport(transport)
        .build()
        .unwrap()
}

// covers T11 through the pool: Azure Storage rejects a token with 401, or with 403
// `AuthenticationFailed` (which the SDK's bearer policy does not treat as "get a new token").
// Either way the rejected token is invalidated in the credential's cache, so the next request
// carries a new token — one refresh per rejection, not a client stuck on a dead token until it
// expires an hour later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_token_is_replaced_on_the_next_request() {
    testkit::tls::install_crypto_provider();
    for (status, error_code) in [(401, None), (403, Some("AuthenticationFailed"))] {
        let server = RateLimitServer::start().await.unwrap();
        server.set_default(Answer::status(201));
        let ca = TestCa::new("blob-pool-rejection").unwrap();
        let front = ca.front(server.addr()).await.unwrap();
        let pool = pool_behind(&ca);
        let endpoint = Endpoint::parse(&format!(
            "https://127.0.0.1:{}/devstoreaccount1",
            front.port()
        ))
        .unwrap();
        let token_source = TestCredential::new();
        let credential: Arc<dyn TokenCredential> = Arc::new(token_source.clone());
        let mut rejection = Answer::status(status);
        if let Some(code) = error_code {
            rejection = rejection.header("x-ms-error-code", code);
        }
        server.script("/devstoreaccount1/first?restype=container", [rejection]);

        let client = pool.client(&credential, &endpoint).await.unwrap();
        let refused = client.blob_container_client("first").create(None).await;
        assert!(
            refused.is_err(),
            "{status}: the rejection reaches the caller"
        );
        drop(client);
        let client = pool.client(&credential, &endpoint).await.unwrap();
        client
            .blob_container_client("second")
            .create(None)
            .await
            .unwrap_or_else(|e| panic!("{status}: {e}"));

        let sent: Vec<_> = server
            .requests()
            .into_iter()
            .map(|r| r.authorization.unwrap_or_default())
            .collect();
        assert_eq!(sent.len(), 2, "{status}: {sent:?}");
        assert!(sent[0].starts_with("Bearer "), "{status}");
        // testkit's credential mints the same JWT within one second, so the refresh shows as a
        // second call to the credential (1 without the policy: the cache kept the token).
        assert_eq!(
            token_source.calls(),
            2,
            "{status}: one refresh for the rejection"
        );
        assert_eq!(pool.stats().tokens_rejected, 1, "{status}");
    }
}
