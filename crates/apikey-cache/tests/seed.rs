//! Seed 003's checklist, black-box: the incident ("accounts created on instance A got 401 on
//! instance B behind a load balancer; the api-keys cache was loaded once at start-up") and the
//! upstream fix's tests (refresh on miss, a 30 s TTL, local writes visible at once, concurrent
//! misses deduplicated into one reload), plus what the SPEC adds on top (A1–A9, X5). Public API
//! only; several instances are several caches over one store. Virtual time throughout: a test
//! that would hang fails at its `within` bound instead.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use apikey_cache::{
    ApiKeyCache, ApiKeyLayer, AuthError, CacheConfig, FileStore, KeyDocument, KeyStore, Loaded,
    MemoryStore, StoreError, Version, WriteError,
};
use axum::Router;
use axum::body::Body;
use axum::routing::get;
use http::{Request, StatusCode};
use tokio::time::Instant;
use tower::ServiceExt as _;

/// The default TTL (A2).
const TTL: Duration = Duration::from_secs(30);
/// The default store load timeout (A9): an unknown key is answered within it while the store
/// hangs.
const LOAD_TIMEOUT: Duration = Duration::from_secs(5);
/// "At once" for a request that needs no store call, or a store call that does not hang.
const PROMPT: Duration = Duration::from_millis(1);
/// The default store write timeout (A9).
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

fn instance<S: KeyStore + Clone>(store: &S) -> ApiKeyCache<S> {
    ApiKeyCache::new(store.clone(), CacheConfig::default())
}

/// `fut`, or a test failure if it takes longer than `limit` of (virtual) time — never a hang.
async fn within<T>(limit: Duration, what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(limit, fut).await {
        Ok(value) => value,
        Err(_) => panic!("{what}: still waiting after {limit:?}"),
    }
}

fn unknown_key(i: usize) -> String {
    format!("ak_never_issued_{i:08}_0123456789abcdef")
}

fn scratch_file() -> (PathBuf, FileStore) {
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "apikey-cache-seed-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let store = FileStore::new(dir.join("keys.json"));
    (dir, store)
}

/// A store over a [`MemoryStore`] whose loads and writes can be made to hang forever (a
/// network partition without a reset), counting the calls that reached it.
#[derive(Debug, Clone, Default)]
struct HangingStore {
    inner: MemoryStore,
    hang_loads: Arc<AtomicBool>,
    hang_writes: Arc<AtomicBool>,
    loads: Arc<AtomicU64>,
    writes: Arc<AtomicU64>,
}

impl HangingStore {
    fn hang_loads(&self, hang: bool) {
        self.hang_loads.store(hang, Ordering::SeqCst);
    }
    fn hang_writes(&self, hang: bool) {
        self.hang_writes.store(hang, Ordering::SeqCst);
    }
    fn loads(&self) -> u64 {
        self.loads.load(Ordering::SeqCst)
    }
    fn writes(&self) -> u64 {
        self.writes.load(Ordering::SeqCst)
    }
}

impl KeyStore for HangingStore {
    async fn load(&self, if_none_match: Option<&Version>) -> Result<Loaded, StoreError> {
        self.loads.fetch_add(1, Ordering::SeqCst);
        if self.hang_loads.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        self.inner.load(if_none_match).await
    }

    async fn store(
        &self,
        document: &KeyDocument,
        if_match: Option<&Version>,
    ) -> Result<Version, StoreError> {
        self.writes.fetch_add(1, Ordering::SeqCst);
        if self.hang_writes.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        self.inner.store(document, if_match).await
    }

    fn describe(&self) -> String {
        "hanging memory".to_string()
    }
}

// ---------------------------------------------------------------------------------------------
// The incident and the upstream fix's tests (seed 003).
// ---------------------------------------------------------------------------------------------

// covers seed 003 + A1 + A7: B had loaded before A created the account (the incident); B
// knows the new key at once, through one miss-driven reload — no 401, no waiting for a TTL.
#[tokio::test(start_paused = true)]
async fn seed003_a1_new_account_on_a_authenticates_on_b_at_once_via_miss_reload() {
    let store = MemoryStore::new();
    let (a, b) = (instance(&store), instance(&store));
    b.refresh().await.expect("B loads at start-up");
    let account = a.create_account("acme", "Acme").await.expect("create on A");
    let issued = a.issue_key(&account).await.expect("issue on A");
    let before = store.loads();
    let started = Instant::now();
    let identity = b
        .authenticate(issued.secret.expose())
        .await
        .expect("B accepts A's new key on the first try");
    assert_eq!(identity, issued.identity);
    assert_eq!(store.loads() - before, 1, "exactly one reload on the miss");
    assert_eq!(started.elapsed(), Duration::ZERO, "no TTL wait");
    // Known now: no further reads.
    b.authenticate(issued.secret.expose()).await.expect("hit");
    assert_eq!(store.loads() - before, 1);
}

// covers seed 003 + A2: even when B may not reload on a miss (its miss-reload budget is spent
// by a flood), A's new account authenticates on B within one TTL through the TTL refresh.
#[tokio::test(start_paused = true)]
async fn seed003_a2_new_account_on_a_authenticates_on_b_within_one_ttl() {
    let store = MemoryStore::new();
    let a = instance(&store);
    let b = ApiKeyCache::new(
        store.clone(),
        CacheConfig::default().miss_reload_interval(Duration::from_secs(600)),
    );
    b.refresh().await.expect("B loads");
    for i in 0..10 {
        let _ = b.authenticate(&unknown_key(i)).await; // spends B's miss-reload burst
    }
    let account = a.create_account("acme", "Acme").await.expect("create on A");
    let issued = a.issue_key(&account).await.expect("issue on A");
    tokio::time::advance(TTL).await;
    let identity = b
        .authenticate(issued.secret.expose())
        .await
        .expect("within one TTL, without a miss reload");
    assert_eq!(identity, issued.identity);
}

// covers seed 003 + A2 + A3: a revocation on A is rejected on A at once (local invalidation)
// and on B within one TTL.
#[tokio::test(start_paused = true)]
async fn seed003_a2_a3_revocation_on_a_is_rejected_at_once_on_a_and_within_one_ttl_on_b() {
    let store = MemoryStore::new();
    let (a, b) = (instance(&store), instance(&store));
    let account = a.create_account("acme", "Acme").await.expect("create");
    let issued = a.issue_key(&account).await.expect("issue");
    b.authenticate(issued.secret.expose())
        .await
        .expect("B knows it");
    tokio::time::advance(Duration::from_secs(1)).await;
    a.revoke_key(&issued.identity.key)
        .await
        .expect("revoke on A");
    assert!(matches!(
        a.authenticate(issued.secret.expose()).await,
        Err(AuthError::Revoked)
    ));
    tokio::time::advance(TTL).await;
    assert!(matches!(
        b.authenticate(issued.secret.expose()).await,
        Err(AuthError::Revoked)
    ));
}

// covers seed 003 + A4: the thundering herd after a fresh account creation — 1 000 concurrent
// requests with the new key on B share one store read, and all succeed.
#[tokio::test(start_paused = true)]
async fn seed003_a4_concurrent_misses_share_one_store_read() {
    let store = MemoryStore::new();
    store.set_latency(Duration::from_millis(20));
    let (a, b) = (instance(&store), instance(&store));
    b.refresh().await.expect("B loads");
    let account = a.create_account("acme", "Acme").await.expect("create");
    let issued = a.issue_key(&account).await.expect("issue");
    let before = store.loads();
    let secret: Arc<str> = issued.secret.expose().into();
    let tasks: Vec<_> = (0..1_000)
        .map(|_| {
            let (b, secret) = (b.clone(), secret.clone());
            tokio::spawn(async move { b.authenticate(&secret).await })
        })
        .collect();
    for task in tasks {
        assert_eq!(
            task.await.expect("task").expect("accepted"),
            issued.identity
        );
    }
    assert_eq!(store.loads() - before, 1, "one shared read");
}

// covers seed 003 review + A5: a flood of distinct unknown keys (plus a retry of each) cannot
// turn into a flood of store reads: a burst of 2, then at most one per second.
#[tokio::test(start_paused = true)]
async fn seed003_a5_flood_of_unknown_keys_is_bounded_in_store_reads() {
    let store = MemoryStore::new();
    store.set_latency(Duration::from_millis(2));
    let cache = instance(&store);
    let account = cache.create_account("acme", "Acme").await.expect("create");
    let issued = cache.issue_key(&account).await.expect("issue");
    let before = store.loads();
    let started = Instant::now();
    for second in 0..10 {
        let tasks: Vec<_> = (0..1_000)
            .map(|i| {
                let cache = cache.clone();
                let bad = unknown_key(second * 1_000 + i);
                tokio::spawn(async move { cache.authenticate(&bad).await })
            })
            .collect();
        for task in tasks {
            assert!(matches!(task.await.expect("task"), Err(AuthError::Unknown)));
        }
        // Valid keys are unaffected throughout.
        cache
            .authenticate(issued.secret.expose())
            .await
            .expect("valid key during the flood");
        tokio::time::advance(Duration::from_secs(1)).await;
    }
    let seconds = started.elapsed().as_secs();
    let reads = store.loads() - before;
    assert!(
        reads <= 2 + seconds + 1,
        "10 000 unknown keys over {seconds} s cost {reads} store reads"
    );
}

// ---------------------------------------------------------------------------------------------
// Writes agree across instances (A3, A7; issue #16 item 1).
// ---------------------------------------------------------------------------------------------

async fn writes_agree_across_instances<S: KeyStore + Clone>(store: S) {
    let (a, b) = (instance(&store), instance(&store));
    b.refresh().await.expect("B loads before A writes");
    let account = a.create_account("acme", "Acme").await.expect("create on A");
    // B has a (fresh) snapshot without the account: it must ask the store, not answer from it.
    let on_b = b
        .issue_key(&account)
        .await
        .expect("B issues a key for the account A created");
    a.authenticate(on_b.secret.expose())
        .await
        .expect("A accepts the key B issued");

    // A key issued on A, revoked on B.
    let on_a = a.issue_key(&account).await.expect("issue on A");
    b.revoke_key(&on_a.identity.key)
        .await
        .expect("B revokes the key A issued");
    assert!(matches!(
        b.authenticate(on_a.secret.expose()).await,
        Err(AuthError::Revoked)
    ));
    tokio::time::advance(TTL).await;
    assert!(matches!(
        a.authenticate(on_a.secret.expose()).await,
        Err(AuthError::Revoked)
    ));

    // Failures only when the store really lacks them.
    assert!(matches!(
        b.issue_key(&apikey_cache::AccountId::new("nobody")).await,
        Err(WriteError::NoSuchAccount)
    ));
    assert!(matches!(
        b.revoke_key(&apikey_cache::KeyId::new("key_nobody")).await,
        Err(WriteError::NoSuchKey)
    ));
}

async fn writes_agree_after_two_ttls<S: KeyStore + Clone>(store: S) {
    let (a, b) = (instance(&store), instance(&store));
    b.refresh().await.expect("B loads before A writes");
    let account = a.create_account("acme", "Acme").await.expect("create on A");
    // The incident's shape: B sees no traffic for two TTLs, then an admin call lands on it.
    tokio::time::advance(TTL * 2).await;
    let issued = b
        .issue_key(&account)
        .await
        .expect("B issues a key for A's account after two TTLs");
    a.authenticate(issued.secret.expose())
        .await
        .expect("A accepts it");
}

// covers A3 + A7 (issue #16 item 1): over one MemoryStore.
#[tokio::test(start_paused = true)]
async fn a3_a7_memory_writes_on_b_see_accounts_and_keys_created_on_a() {
    writes_agree_across_instances(MemoryStore::new()).await;
}

// covers A3 + A7 (issue #16 item 1): over one FileStore.
#[tokio::test(start_paused = true)]
async fn a3_a7_file_writes_on_b_see_accounts_and_keys_created_on_a() {
    let (dir, store) = scratch_file();
    writes_agree_across_instances(store).await;
    let _ = std::fs::remove_dir_all(dir);
}

// covers A3 + A7 (issue #16 item 1): "even after two TTLs".
#[tokio::test(start_paused = true)]
async fn a3_a7_memory_issue_on_b_after_two_ttls_finds_the_account_created_on_a() {
    writes_agree_after_two_ttls(MemoryStore::new()).await;
}

// covers A3 + A7 (issue #16 item 1): "even after two TTLs", FileStore.
#[tokio::test(start_paused = true)]
async fn a3_a7_file_issue_on_b_after_two_ttls_finds_the_account_created_on_a() {
    let (dir, store) = scratch_file();
    writes_agree_after_two_ttls(store).await;
    let _ = std::fs::remove_dir_all(dir);
}

// ---------------------------------------------------------------------------------------------
// A hung store does not hang authentication (A9; issue #16 item 2).
// ---------------------------------------------------------------------------------------------

// covers A9: while a write hangs in the store, authentication goes on — hits, TTL refreshes
// and miss reloads (of a key another instance wrote) complete without waiting for the write;
// the write itself fails with a store error once its timeout passes.
#[tokio::test(start_paused = true)]
async fn a9_hung_write_blocks_neither_authentication_nor_reloads() {
    let store = HangingStore::default();
    let (a, other) = (instance(&store), instance(&store));
    let account = a.create_account("acme", "Acme").await.expect("create");
    let known = a.issue_key(&account).await.expect("issue");

    store.hang_writes(true);
    let writer = {
        let a = a.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            (a.create_account("stuck", "Stuck").await, started.elapsed())
        })
    };
    tokio::task::yield_now().await;
    assert_eq!(
        store.writes(),
        3,
        "the write reached the store and hangs there"
    );

    let mut completed = 0;
    for _ in 0..100 {
        within(PROMPT, "hit during a hung write", async {
            a.authenticate(known.secret.expose()).await.expect("hit")
        })
        .await;
        completed += 1;
    }
    assert_eq!(completed, 100);

    // A key written by another instance, read by a miss reload while the write hangs.
    store.hang_writes(false);
    let fresh = other
        .issue_key(&account)
        .await
        .expect("other instance issues");
    store.hang_writes(true);
    let loads = store.loads();
    within(PROMPT, "miss reload during a hung write", async {
        a.authenticate(fresh.secret.expose())
            .await
            .expect("found by a reload the write does not block")
    })
    .await;
    assert_eq!(store.loads(), loads + 1);

    // Past the TTL the snapshot is refreshed, still without waiting for the write.
    tokio::time::advance(Duration::from_secs(2)).await;
    assert!(!writer.is_finished(), "the write is still hung");
    tokio::time::advance(TTL).await;
    within(PROMPT, "TTL refresh during a hung write", async {
        a.authenticate(known.secret.expose()).await.expect("hit")
    })
    .await;

    // (The clock jumped past the write timeout above, so only the outcome is checked here.)
    let (outcome, _) = within(PROMPT, "the hung write", writer)
        .await
        .expect("task");
    assert!(
        matches!(&outcome, Err(WriteError::Store { source }) if matches!(**source, StoreError::TimedOut { .. })),
        "{outcome:?}"
    );

    // A hung write on its own ends at the write timeout.
    let started = Instant::now();
    let outcome = within(
        WRITE_TIMEOUT + PROMPT,
        "a hung write",
        a.issue_key(&account),
    )
    .await;
    assert!(
        matches!(outcome, Err(WriteError::Store { .. })),
        "{outcome:?}"
    );
    assert_eq!(
        started.elapsed(),
        WRITE_TIMEOUT,
        "bounded by the write timeout"
    );
    assert_eq!(a.stats().store_timeouts, 2);
}

// covers A9: while a reload hangs in the store, known keys are answered from the previous
// snapshot (within the load timeout) and an unknown key gets `Unavailable` within the load
// timeout — never a hang and never a false 401.
#[tokio::test(start_paused = true)]
async fn a9_hung_reload_answers_known_keys_and_fails_unknown_keys_fast() {
    let store = HangingStore::default();
    let a = instance(&store);
    let account = a.create_account("acme", "Acme").await.expect("create");
    let known = a.issue_key(&account).await.expect("issue");

    store.hang_loads(true);
    // Fresh snapshot + unknown key: its miss reload hangs → Unavailable within the timeout,
    // while known keys keep hitting.
    let unknown = {
        let a = a.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            (a.authenticate(&unknown_key(1)).await, started.elapsed())
        })
    };
    tokio::task::yield_now().await;
    for _ in 0..10 {
        within(PROMPT, "hit during a hung reload", async {
            a.authenticate(known.secret.expose()).await.expect("hit")
        })
        .await;
    }
    let (outcome, took) = within(LOAD_TIMEOUT + PROMPT, "unknown key", unknown)
        .await
        .expect("task");
    assert!(
        matches!(outcome, Err(AuthError::Unavailable { .. })),
        "{outcome:?}"
    );
    assert!(took <= LOAD_TIMEOUT, "{took:?}");

    // Stale snapshot (past the TTL) + a store known to be failing: known keys are served from
    // the previous snapshot at once (the retry runs in the background); unknown keys get
    // Unavailable within the load timeout.
    tokio::time::advance(TTL).await;
    for i in 0..20 {
        let identity = within(PROMPT, "known key while the store stays hung", async {
            a.authenticate(known.secret.expose()).await
        })
        .await
        .expect("answered from the previous snapshot");
        assert_eq!(identity, known.identity);
        let outcome = within(
            LOAD_TIMEOUT + PROMPT,
            "unknown key while the store stays hung",
            async { a.authenticate(&unknown_key(100 + i)).await },
        )
        .await;
        assert!(
            matches!(outcome, Err(AuthError::Unavailable { .. })),
            "never a false 401 while the store cannot answer: {outcome:?}"
        );
        tokio::time::advance(Duration::from_millis(500)).await;
    }
    let stats = a.stats();
    assert!(stats.serving_previous_snapshot);
    assert!(stats.stale_served >= 20);
    assert!(stats.store_timeouts >= 2);

    // The store recovers: the background retry succeeds and the snapshot is fresh again.
    store.hang_loads(false);
    tokio::time::advance(TTL).await;
    a.authenticate(known.secret.expose()).await.expect("hit");
    tokio::time::sleep(LOAD_TIMEOUT + PROMPT).await; // the retry in flight, if any, ends
    a.authenticate(known.secret.expose()).await.expect("hit");
    tokio::time::sleep(PROMPT).await;
    assert!(!a.stats().serving_previous_snapshot, "{:?}", a.stats());
}

// covers A9: the store starts hanging while the snapshot is healthy. The first requests past
// the TTL wait for the refresh at most one load timeout and are then answered from the
// previous snapshot; after that, known keys never wait for the hung store, and the store is
// asked at most once per back-off + timeout (no pile-up of hung reads).
#[tokio::test(start_paused = true)]
async fn a9_store_hanging_at_the_ttl_refresh_delays_known_keys_at_most_one_load_timeout() {
    let store = HangingStore::default();
    let a = instance(&store);
    let account = a.create_account("acme", "Acme").await.expect("create");
    let known = a.issue_key(&account).await.expect("issue");
    tokio::time::advance(TTL).await;
    store.hang_loads(true);
    let loads = store.loads();
    let started = Instant::now();
    let waiting: Vec<_> = (0..100)
        .map(|_| {
            let (a, secret) = (a.clone(), known.secret.expose().to_string());
            tokio::spawn(async move { a.authenticate(&secret).await })
        })
        .collect();
    for task in waiting {
        let identity = within(LOAD_TIMEOUT + PROMPT, "known key at the TTL refresh", task)
            .await
            .expect("task")
            .expect("answered from the previous snapshot");
        assert_eq!(identity, known.identity);
    }
    assert!(started.elapsed() <= LOAD_TIMEOUT);
    assert_eq!(store.loads() - loads, 1, "one shared (hung) refresh");

    let mut answered = 0;
    for _ in 0..600 {
        within(PROMPT, "known key after the refresh timed out", async {
            a.authenticate(known.secret.expose()).await.expect("hit")
        })
        .await;
        answered += 1;
        tokio::time::advance(Duration::from_millis(100)).await;
    }
    assert_eq!(answered, 600);
    // 60 s of requests: at most one hung read per (1 s back-off + 5 s timeout), plus one.
    let reads = store.loads() - loads;
    assert!(reads <= 1 + 60 / 6 + 1, "{reads} store reads");
}

// covers A9 + A8: through the tower/axum layer, an unknown key during a hung store is a 503
// within the load timeout; a known key is a 200.
#[tokio::test(start_paused = true)]
async fn a8_a9_layer_answers_503_within_the_load_timeout_while_the_store_hangs() {
    async fn ok() -> &'static str {
        "ok"
    }
    let store = HangingStore::default();
    let cache = instance(&store);
    let account = cache.create_account("acme", "Acme").await.expect("create");
    let known = cache.issue_key(&account).await.expect("issue");
    let router = Router::new()
        .route("/", get(ok))
        .layer(ApiKeyLayer::new(cache));
    store.hang_loads(true);
    let status = |key: String| {
        let router = router.clone();
        async move {
            let request = Request::builder()
                .uri("/")
                .header("x-api-key", key)
                .body(Body::empty())
                .expect("request");
            router.oneshot(request).await.expect("infallible").status()
        }
    };
    let started = Instant::now();
    let unknown = within(LOAD_TIMEOUT + PROMPT, "503", status(unknown_key(7))).await;
    assert_eq!(unknown, StatusCode::SERVICE_UNAVAILABLE);
    assert!(started.elapsed() <= LOAD_TIMEOUT);
    let hit = within(PROMPT, "200", status(known.secret.expose().to_string())).await;
    assert_eq!(hit, StatusCode::OK);
}

// covers A9: a store that hangs before anything was ever loaded → Unavailable within the
// load timeout (not a hang, not a 401).
#[tokio::test(start_paused = true)]
async fn a9_hung_store_with_nothing_loaded_is_unavailable_within_the_load_timeout() {
    let store = HangingStore::default();
    store.hang_loads(true);
    let cache = instance(&store);
    let outcome = within(LOAD_TIMEOUT + PROMPT, "first authentication", async {
        cache.authenticate(&unknown_key(1)).await
    })
    .await;
    assert!(matches!(outcome, Err(AuthError::Unavailable { .. })));
    let refreshed = within(LOAD_TIMEOUT + PROMPT, "refresh", cache.refresh()).await;
    assert!(refreshed.is_err());
}

// ---------------------------------------------------------------------------------------------
// No configuration value panics (X5; issue #16 item 3).
// ---------------------------------------------------------------------------------------------

/// Drive every timed path of a cache built from `config`: loads, misses (limiter, negative
/// cache), a failed reload (back-off), writes, a watcher, and time moving far ahead.
async fn exercise(config: CacheConfig, watcher_interval: Duration) {
    let store = MemoryStore::new();
    let cache = ApiKeyCache::new(store.clone(), config);
    let watcher = cache.spawn_watcher(watcher_interval);
    tokio::task::yield_now().await;
    assert!(!watcher.is_finished(), "the watcher task is alive");
    let account = cache.create_account("acme", "Acme").await.expect("create");
    let issued = cache.issue_key(&account).await.expect("issue");
    for i in 0..5 {
        let _ = cache.authenticate(&unknown_key(i)).await; // limiter + negative cache
        let _ = cache.authenticate(&unknown_key(i)).await;
    }
    cache
        .authenticate(issued.secret.expose())
        .await
        .expect("hit");
    store.fail_loads(true);
    let _ = cache.refresh().await; // a failure: back-off from now
    for i in 0..3 {
        let _ = cache.authenticate(issued.secret.expose()).await;
        let _ = cache.authenticate(&unknown_key(50 + i)).await;
        tokio::time::advance(Duration::from_secs(3600)).await;
    }
    store.fail_loads(false);
    tokio::time::advance(Duration::from_secs(86_400 * 365)).await;
    let _ = cache.authenticate(issued.secret.expose()).await;
    let _ = cache.authenticate(&unknown_key(99)).await;
    cache
        .revoke_key(&issued.identity.key)
        .await
        .expect("revoke");
    let _ = cache.stats();
    assert!(!watcher.is_finished(), "the watcher task survived");
}

// covers X5: Duration::MAX for the TTL.
#[tokio::test(start_paused = true)]
async fn x5_duration_max_ttl_does_not_panic() {
    exercise(
        CacheConfig::default().ttl(Duration::MAX),
        Duration::from_secs(10),
    )
    .await;
}

// covers X5: Duration::MAX for the negative-cache TTL.
#[tokio::test(start_paused = true)]
async fn x5_duration_max_negative_ttl_does_not_panic() {
    exercise(
        CacheConfig::default().negative_ttl(Duration::MAX),
        Duration::from_secs(10),
    )
    .await;
}

// covers X5: Duration::MAX for the miss-reload rate limit.
#[tokio::test(start_paused = true)]
async fn x5_duration_max_miss_reload_interval_does_not_panic() {
    exercise(
        CacheConfig::default()
            .miss_reload_interval(Duration::MAX)
            .miss_reload_burst(u32::MAX),
        Duration::from_secs(10),
    )
    .await;
    exercise(
        CacheConfig::default().miss_reload_interval(Duration::MAX),
        Duration::from_secs(10),
    )
    .await;
}

// covers X5: Duration::MAX for the back-off after a failed reload.
#[tokio::test(start_paused = true)]
async fn x5_duration_max_retry_backoff_does_not_panic() {
    exercise(
        CacheConfig::default().retry_backoff(Duration::MAX),
        Duration::from_secs(10),
    )
    .await;
}

// covers X5: Duration::MAX for the watcher interval.
#[tokio::test(start_paused = true)]
async fn x5_duration_max_watcher_interval_does_not_panic() {
    exercise(CacheConfig::default(), Duration::MAX).await;
}

// covers X5 + A9: Duration::MAX for the store load and write timeouts (clamped to 600 s).
#[tokio::test(start_paused = true)]
async fn x5_duration_max_store_timeouts_do_not_panic() {
    exercise(
        CacheConfig::default()
            .load_timeout(Duration::MAX)
            .write_timeout(Duration::MAX),
        Duration::from_secs(10),
    )
    .await;
    // And they still bound a hung store (at their 600 s maximum).
    let store = HangingStore::default();
    let cache = ApiKeyCache::new(
        store.clone(),
        CacheConfig::default()
            .load_timeout(Duration::MAX)
            .write_timeout(Duration::MAX),
    );
    store.hang_loads(true);
    let outcome = within(Duration::from_secs(601), "load", cache.refresh()).await;
    assert!(outcome.is_err());
}

// covers X5: every duration at once, including Duration::MAX for the watcher.
#[tokio::test(start_paused = true)]
async fn x5_duration_max_everywhere_at_once_does_not_panic() {
    exercise(
        CacheConfig::default()
            .ttl(Duration::MAX)
            .negative_ttl(Duration::MAX)
            .miss_reload_interval(Duration::MAX)
            .miss_reload_burst(u32::MAX)
            .retry_backoff(Duration::MAX)
            .write_attempts(u32::MAX)
            .load_timeout(Duration::MAX)
            .write_timeout(Duration::MAX),
        Duration::MAX,
    )
    .await;
}
