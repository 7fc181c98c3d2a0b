//! Black-box tests of `apikey-cache` written from seed 003, SPEC (A1–A12, X) and
//! docs/apikey-cache.md only — public API, no knowledge of the implementation. Every test runs
//! in paused virtual time; every wait is bounded by `within`, so a regression fails instead of
//! hanging.

use std::collections::HashSet;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use apikey_cache::{
    AccountId, AccountRecord, ApiKeyCache, ApiKeyLayer, AuthError, CHECKED_KEY_LEN, CacheConfig,
    Condition, FeedBatch, FeedCursor, FileStore, Identity, IssuedKey, KEY_PREFIX, KeyDocument,
    KeyHash, KeyId, KeyRecord, KeyStore, Layout, Loaded, MAX_KEY_LEN, MemoryStore, Record,
    StoreError, Version, WriteError, has_valid_checksum,
};
use axum::Router;
use axum::body::Body;
use axum::extract::Extension;
use axum::routing::get;
use http::{HeaderMap, HeaderValue, Request, StatusCode};
use http_body_util::BodyExt as _;
use tokio::time::Instant;
use tower::ServiceExt as _;

const TTL: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_secs(2);
const LOAD_TIMEOUT: Duration = Duration::from_secs(5);
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
const NEGATIVE_TTL: Duration = Duration::from_secs(10);
const PROMPT: Duration = Duration::from_millis(1);

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

async fn within<T>(limit: Duration, what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(limit, fut).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: still waiting after {limit:?} (virtual time)"),
    }
}

fn inst<S: KeyStore + Clone>(store: &S) -> ApiKeyCache<S> {
    ApiKeyCache::new(store.clone(), CacheConfig::default())
}

fn scratch_dir(tag: &str) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "apikey-bbkeys-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                files_under(&p, out);
            } else {
                out.push(p);
            }
        }
    }
}

fn is_unauthorized(r: &Result<Identity, AuthError>) -> bool {
    matches!(r, Err(AuthError::Unknown | AuthError::Revoked))
}

/// Well-formed keys (valid checksum) that no store of the test knows: issued by a separate,
/// throw-away keyed store.
async fn foreign_keys(n: usize) -> Vec<String> {
    let other = MemoryStore::keyed();
    let cache = inst(&other);
    let account = cache.create_account("foreign", "F").await.expect("foreign");
    let mut keys = Vec::with_capacity(n);
    for _ in 0..n {
        keys.push(
            cache
                .issue_key(&account)
                .await
                .expect("foreign issue")
                .secret
                .expose()
                .to_string(),
        );
    }
    keys
}

/// A document with one account and one key whose plaintext the test chose (out-of-band write,
/// like another tool or a migration would do).
fn document_with_key(account: &str, key_id: &str, plaintext: &str) -> KeyDocument {
    let mut doc = KeyDocument::empty();
    doc.accounts.insert(
        account.to_string(),
        AccountRecord {
            name: "X".to_string(),
            created_unix: 1,
        },
    );
    doc.keys.insert(
        key_id.to_string(),
        KeyRecord {
            account: account.to_string(),
            sha256: KeyHash::of(plaintext).to_hex(),
            created_unix: 1,
            revoked_unix: None,
        },
    );
    doc
}

/// A keyed store over a `MemoryStore::keyed()` whose operations can be made to hang forever.
#[derive(Debug, Clone)]
struct HangStore {
    inner: MemoryStore,
    hang_points: Arc<AtomicBool>,
    hang_feed: Arc<AtomicBool>,
    hang_puts: Arc<AtomicBool>,
    hang_appends: Arc<AtomicBool>,
}

impl HangStore {
    fn new() -> Self {
        Self {
            inner: MemoryStore::keyed(),
            hang_points: Arc::default(),
            hang_feed: Arc::default(),
            hang_puts: Arc::default(),
            hang_appends: Arc::default(),
        }
    }
    fn hang_all(&self, on: bool) {
        for f in [
            &self.hang_points,
            &self.hang_feed,
            &self.hang_puts,
            &self.hang_appends,
        ] {
            f.store(on, Ordering::SeqCst);
        }
    }
}

async fn maybe_hang(flag: &AtomicBool) {
    if flag.load(Ordering::SeqCst) {
        std::future::pending::<()>().await;
    }
}

impl KeyStore for HangStore {
    async fn load(&self, if_none_match: Option<&Version>) -> Result<Loaded, StoreError> {
        self.inner.load(if_none_match).await
    }
    async fn store(
        &self,
        document: &KeyDocument,
        if_match: Option<&Version>,
    ) -> Result<Version, StoreError> {
        self.inner.store(document, if_match).await
    }
    fn describe(&self) -> String {
        "hang-store".to_string()
    }
    fn layout(&self) -> Layout {
        self.inner.layout()
    }
    async fn get_record(&self, name: &str) -> Result<Option<Record>, StoreError> {
        maybe_hang(&self.hang_points).await;
        self.inner.get_record(name).await
    }
    async fn put_record(
        &self,
        name: &str,
        bytes: &[u8],
        condition: Condition<'_>,
    ) -> Result<Version, StoreError> {
        maybe_hang(&self.hang_puts).await;
        self.inner.put_record(name, bytes, condition).await
    }
    async fn append_feed(&self, entry: &[u8]) -> Result<(), StoreError> {
        maybe_hang(&self.hang_appends).await;
        self.inner.append_feed(entry).await
    }
    async fn read_feed(&self, from: Option<&FeedCursor>) -> Result<FeedBatch, StoreError> {
        maybe_hang(&self.hang_feed).await;
        self.inner.read_feed(from).await
    }
}

async fn ok_handler(Extension(id): Extension<Identity>, headers: HeaderMap) -> String {
    format!(
        "{}|{}|header_present={}",
        id.account.as_str(),
        id.key.as_str(),
        headers.contains_key("x-api-key")
    )
}

fn app<S: KeyStore + Clone>(cache: ApiKeyCache<S>) -> Router {
    Router::new()
        .route("/", get(ok_handler))
        .layer(ApiKeyLayer::new(cache))
}

async fn call(router: &Router, values: &[HeaderValue]) -> (StatusCode, HeaderMap, Vec<u8>) {
    let mut req = Request::builder().uri("/");
    for v in values {
        req = req.header("x-api-key", v.clone());
    }
    let resp = router
        .clone()
        .oneshot(req.body(Body::empty()).expect("request"))
        .await
        .expect("infallible");
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes()
        .to_vec();
    (status, headers, body)
}

fn hv(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).expect("header value")
}

// ---------------------------------------------------------------------------------------------
// Seed 003 / A1 / A2 / A7: a fleet over one single-document store
// ---------------------------------------------------------------------------------------------

// Seed 003 with five instances that all loaded before the account existed: the new key is
// accepted on every one of them on the first try; a revocation is honoured by all within one TTL.
#[tokio::test(start_paused = true)]
async fn seed_fleet_of_five_document_first_try_and_revocation_within_ttl() {
    let store = MemoryStore::new();
    store.set_latency(Duration::from_millis(3));
    let fleet: Vec<_> = (0..5).map(|_| inst(&store)).collect();
    for c in &fleet {
        c.refresh().await.expect("warm");
    }
    let account = fleet[0]
        .create_account("acme", "Acme")
        .await
        .expect("create");
    let issued = fleet[0].issue_key(&account).await.expect("issue");
    for (i, c) in fleet.iter().enumerate() {
        let id = within(
            LOAD_TIMEOUT,
            "first try",
            c.authenticate(issued.secret.expose()),
        )
        .await
        .unwrap_or_else(|e| panic!("instance {i} rejected a key created on instance 0: {e:?}"));
        assert_eq!(id, issued.identity);
    }
    fleet[2]
        .revoke_key(&issued.identity.key)
        .await
        .expect("revoke");
    assert!(matches!(
        fleet[2].authenticate(issued.secret.expose()).await,
        Err(AuthError::Revoked)
    ));
    tokio::time::advance(TTL + PROMPT).await;
    for (i, c) in fleet.iter().enumerate() {
        let r = within(LOAD_TIMEOUT, "auth", c.authenticate(issued.secret.expose())).await;
        assert!(
            matches!(r, Err(AuthError::Revoked)),
            "instance {i} still accepts a key revoked one TTL ago: {r:?}"
        );
    }
}

// An instance started after the writes, and a clock that jumps a year: no panic, writes and
// revocations still honoured (A2, X5).
#[tokio::test(start_paused = true)]
async fn document_late_instance_and_year_long_clock_jump() {
    let store = MemoryStore::new();
    let a = inst(&store);
    let account = a.create_account("acme", "Acme").await.expect("create");
    let k1 = a.issue_key(&account).await.expect("issue");
    tokio::time::advance(Duration::from_secs(365 * 24 * 3600)).await;
    let late = inst(&store);
    assert_eq!(
        late.authenticate(k1.secret.expose()).await.expect("late"),
        k1.identity
    );
    assert!(a.authenticate(k1.secret.expose()).await.is_ok());
    a.revoke_key(&k1.identity.key).await.expect("revoke");
    tokio::time::advance(Duration::from_secs(10 * 365 * 24 * 3600)).await;
    assert!(matches!(
        late.authenticate(k1.secret.expose()).await,
        Err(AuthError::Revoked)
    ));
}

// A3: after A's revocation landed, B (one version behind) writes; the document B stores and
// installs contains A's revocation, so B rejects the key at once — and the key is not
// resurrected in the store.
#[tokio::test(start_paused = true)]
async fn document_write_from_stale_instance_never_resurrects_a_revoked_key() {
    let store = MemoryStore::new();
    let (a, b) = (inst(&store), inst(&store));
    let account = a.create_account("acme", "Acme").await.expect("create");
    let k1 = a.issue_key(&account).await.expect("issue");
    assert!(b.authenticate(k1.secret.expose()).await.is_ok());
    a.revoke_key(&k1.identity.key).await.expect("revoke on A");
    let k2 = b.issue_key(&account).await.expect("issue on stale B");
    let doc = store.document().expect("stored");
    assert!(
        doc.keys[k1.identity.key.as_str()].revoked_unix.is_some(),
        "B's write resurrected a key A revoked"
    );
    assert!(doc.keys.contains_key(k2.identity.key.as_str()));
    assert!(
        matches!(
            b.authenticate(k1.secret.expose()).await,
            Err(AuthError::Revoked)
        ),
        "B installed the document it stored (with A's revocation) and must reject at once"
    );
}

// A3/A7: revocations and issues racing from two instances (both from a stale version): nothing
// lost, nothing resurrected.
#[tokio::test(start_paused = true)]
async fn document_racing_revokes_and_issues_lose_nothing() {
    let store = MemoryStore::new();
    store.set_latency(Duration::from_millis(2));
    let cfg = CacheConfig::default().write_attempts(50);
    let a = ApiKeyCache::new(store.clone(), cfg.clone());
    let b = ApiKeyCache::new(store.clone(), cfg);
    let account = a.create_account("acme", "Acme").await.expect("create");
    let mut keys = Vec::new();
    for _ in 0..6 {
        keys.push(a.issue_key(&account).await.expect("issue"));
    }
    b.refresh().await.expect("b");
    a.refresh().await.expect("a");
    let mut new_keys = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        let (r, n) = tokio::join!(
            if i % 2 == 0 {
                a.revoke_key(&key.identity.key)
            } else {
                b.revoke_key(&key.identity.key)
            },
            if i % 2 == 0 {
                b.issue_key(&account)
            } else {
                a.issue_key(&account)
            }
        );
        r.expect("revoke");
        new_keys.push(n.expect("issue"));
    }
    let c = inst(&store);
    for k in &keys {
        assert!(
            matches!(
                c.authenticate(k.secret.expose()).await,
                Err(AuthError::Revoked)
            ),
            "a revocation was lost"
        );
    }
    for k in &new_keys {
        assert_eq!(
            c.authenticate(k.secret.expose()).await.expect("kept"),
            k.identity
        );
    }
}

// ---------------------------------------------------------------------------------------------
// A5: negative cache, limiter, flood (document layout)
// ---------------------------------------------------------------------------------------------

// A remembered bad key never shadows a real key: with a long negative TTL, a key added later
// (out of band) is accepted after the next TTL refresh.
#[tokio::test(start_paused = true)]
async fn document_negative_cache_never_shadows_a_key_added_later() {
    let store = MemoryStore::new();
    let b = ApiKeyCache::new(
        store.clone(),
        CacheConfig::default().negative_ttl(Duration::from_secs(3600)),
    );
    let plaintext = "legacy-key-imported-by-a-tool-0001";
    assert!(matches!(
        b.authenticate(plaintext).await,
        Err(AuthError::Unknown)
    ));
    store.set_document(document_with_key("acme", "key_00000000000000aa", plaintext));
    tokio::time::advance(TTL + PROMPT).await;
    let r = b.authenticate(plaintext).await;
    assert!(
        r.is_ok(),
        "a negatively cached key shadowed a real key after the TTL refresh: {r:?}"
    );
}

// A5: the negative entry lasts `negative_ttl` (10 s) — no store read for the same bad key
// meanwhile — and expires then.
#[tokio::test(start_paused = true)]
async fn document_negative_cache_holds_then_expires_at_negative_ttl() {
    let store = MemoryStore::new();
    let b = inst(&store);
    b.refresh().await.expect("warm");
    let plaintext = "legacy-key-imported-by-a-tool-0002";
    assert!(matches!(
        b.authenticate(plaintext).await,
        Err(AuthError::Unknown)
    ));
    let loads = store.loads();
    for _ in 0..50 {
        assert!(b.authenticate(plaintext).await.is_err());
        tokio::time::advance(Duration::from_millis(100)).await;
    }
    assert_eq!(
        store.loads(),
        loads,
        "negatively cached key caused store reads"
    );
    store.set_document(document_with_key("acme", "key_00000000000000bb", plaintext));
    tokio::time::advance(NEGATIVE_TTL).await;
    let r = b.authenticate(plaintext).await;
    assert!(r.is_ok(), "negative entry outlived negative_ttl: {r:?}");
}

// A4/A5: 2 000 distinct unknown keys at once over a slow store → at most `miss_reload_burst`
// (2) loads; the negative cache stays within `negative_capacity`.
#[tokio::test(start_paused = true)]
async fn document_concurrent_flood_of_distinct_keys_costs_at_most_two_loads() {
    let store = MemoryStore::new();
    store.set_latency(Duration::from_millis(20));
    let b = ApiKeyCache::new(store.clone(), CacheConfig::default().negative_capacity(100));
    b.refresh().await.expect("warm");
    let before = store.loads();
    let mut set = tokio::task::JoinSet::new();
    for i in 0..2000 {
        let b = b.clone();
        set.spawn(async move { b.authenticate(&format!("bad-key-{i:06}-xxxxxxxx")).await });
    }
    while let Some(r) = set.join_next().await {
        assert!(is_unauthorized(&r.expect("task")));
    }
    let loads = store.loads() - before;
    assert!(loads <= 2, "{loads} loads for one concurrent flood");
    assert!(b.stats().negative_entries <= 100);
}

// A5 threat model: during a sustained flood a key created on another instance may see a 401
// only until the next limiter token (≤ 1 s), then it is accepted.
#[tokio::test(start_paused = true)]
async fn document_flood_delays_a_new_key_from_another_instance_at_most_one_interval() {
    let store = MemoryStore::new();
    store.set_latency(Duration::from_millis(2));
    let (a, b) = (inst(&store), inst(&store));
    b.refresh().await.expect("warm");
    let stop = Arc::new(AtomicBool::new(false));
    let mut flood = tokio::task::JoinSet::new();
    for t in 0..8 {
        let (b, stop) = (b.clone(), stop.clone());
        flood.spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let _ = b.authenticate(&format!("flood-{t}-{i}-zzzzzzzzzzzz")).await;
                i += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let account = a.create_account("acme", "Acme").await.expect("create");
    let issued = a.issue_key(&account).await.expect("issue");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = within(LOAD_TIMEOUT, "auth", b.authenticate(issued.secret.expose())).await;
    stop.store(true, Ordering::SeqCst);
    while flood.join_next().await.is_some() {}
    assert!(
        r.is_ok(),
        "new key still rejected 1.1 s after creation during a flood: {r:?}"
    );
    let loads = store.loads();
    assert!(loads <= 2 + 6, "flood of ~4 s made {loads} loads");
}

// A5/A6: malformed input of every kind is rejected before any store read; the longest
// accepted shape is looked up.
#[tokio::test(start_paused = true)]
async fn document_malformed_inputs_never_reach_the_store() {
    let store = MemoryStore::new();
    let b = inst(&store);
    let long = "a".repeat(MAX_KEY_LEN + 1);
    let huge = "k".repeat(1 << 20);
    let bad: Vec<&str> = vec![
        "",
        " ",
        "   ",
        "ak_ abc",
        "tab\tkey",
        "nl\nkey",
        "nul\0key",
        "del\u{7f}key",
        "ünïcödé-key",
        "emoji-🔑",
        "\u{200b}zero-width",
        long.as_str(),
        huge.as_str(),
    ];
    for presented in &bad {
        let r = b.authenticate(presented).await;
        assert!(
            matches!(r, Err(AuthError::Malformed)),
            "{:?}… → {r:?}",
            presented.chars().take(12).collect::<String>()
        );
    }
    assert_eq!(store.loads(), 0, "malformed input reached the store");
    assert_eq!(b.stats().rejected_malformed, bad.len() as u64);
    let max = "b".repeat(MAX_KEY_LEN);
    assert!(matches!(
        b.authenticate(&max).await,
        Err(AuthError::Unknown)
    ));
    assert!(matches!(b.authenticate("!").await, Err(AuthError::Unknown)));
}

// ---------------------------------------------------------------------------------------------
// A3 / A9: local writes, failures, stalls (document layout)
// ---------------------------------------------------------------------------------------------

// A3: a local write is visible on the writing instance with no further store read.
#[tokio::test(start_paused = true)]
async fn document_local_writes_visible_without_a_load() {
    let store = MemoryStore::new();
    let a = inst(&store);
    a.refresh().await.expect("warm");
    let account = a.create_account("acme", "Acme").await.expect("create");
    let issued = a.issue_key(&account).await.expect("issue");
    store.fail_loads(true);
    let loads = store.loads();
    assert_eq!(
        a.authenticate(issued.secret.expose())
            .await
            .expect("own write"),
        issued.identity
    );
    a.revoke_key(&issued.identity.key).await.expect("revoke");
    assert!(matches!(
        a.authenticate(issued.secret.expose()).await,
        Err(AuthError::Revoked)
    ));
    assert_eq!(
        store.loads(),
        loads,
        "a local write needed a load to be visible"
    );
}

// A3: a write the store refused installs nothing locally.
#[tokio::test(start_paused = true)]
async fn document_failed_write_installs_nothing() {
    let store = MemoryStore::new();
    let a = inst(&store);
    a.refresh().await.expect("warm");
    let account = a.create_account("acme", "Acme").await.expect("create");
    store.fail_writes(true);
    assert!(matches!(
        a.create_account("beta", "B").await,
        Err(WriteError::Store { .. })
    ));
    assert!(matches!(
        a.issue_key(&account).await,
        Err(WriteError::Store { .. })
    ));
    store.fail_writes(false);
    assert!(matches!(
        a.issue_key(&AccountId::new("beta")).await,
        Err(WriteError::NoSuchAccount)
    ));
    assert_eq!(a.stats().keys, 0);
    assert!(a.create_account("beta", "B").await.is_ok());
}

// A3: `write_attempts(1)` works for an instance one version behind (documented explicitly),
// and a duplicate account created elsewhere is `AccountExists` (re-validated after re-load).
#[tokio::test(start_paused = true)]
async fn document_write_attempts_one_from_a_stale_instance() {
    let store = MemoryStore::new();
    let cfg = CacheConfig::default().write_attempts(1);
    let a = ApiKeyCache::new(store.clone(), cfg.clone());
    let b = ApiKeyCache::new(store.clone(), cfg);
    b.refresh().await.expect("warm");
    let account = a.create_account("acme", "Acme").await.expect("create");
    let k = b
        .issue_key(&account)
        .await
        .expect("B issues for A's account");
    assert!(a.authenticate(k.secret.expose()).await.is_ok());
    let c = ApiKeyCache::new(store.clone(), CacheConfig::default().write_attempts(1));
    c.refresh().await.expect("warm");
    a.create_account("dup", "D").await.expect("dup on A");
    assert!(matches!(
        c.create_account("dup", "D").await,
        Err(WriteError::AccountExists)
    ));
}

// A9: a failed reload keeps the previous snapshot, says so in stats, and clears once the store
// is back; `refresh` reports the failure.
#[tokio::test(start_paused = true)]
async fn document_failed_reload_keeps_snapshot_and_reports_it() {
    let store = MemoryStore::new();
    let a = inst(&store);
    let account = a.create_account("acme", "Acme").await.expect("create");
    let k = a.issue_key(&account).await.expect("issue");
    store.fail_loads(true);
    assert!(a.refresh().await.is_err());
    tokio::time::advance(TTL + PROMPT).await;
    for _ in 0..20 {
        assert_eq!(
            within(LOAD_TIMEOUT, "auth", a.authenticate(k.secret.expose()))
                .await
                .expect("previous snapshot answers"),
            k.identity
        );
        tokio::time::advance(Duration::from_millis(300)).await;
    }
    let s = a.stats();
    assert!(s.serving_previous_snapshot);
    assert!(s.reload_failures >= 1);
    assert!(s.last_reload_error.is_some());
    assert!(s.stale_served >= 1);
    assert!(
        s.store_loads < 20,
        "{} loads while failing: the down store was hammered",
        s.store_loads
    );
    store.fail_loads(false);
    a.refresh().await.expect("back");
    let s = a.stats();
    assert!(!s.serving_previous_snapshot);
    assert!(s.last_reload_error.is_none());
}

// A9 + timeouts: a store that stalls at the TTL refresh delays a known key at most one
// `load_timeout`, once; later requests are answered at once; readers never see an empty table.
#[tokio::test(start_paused = true)]
async fn document_stalled_refresh_costs_known_keys_one_load_timeout_once() {
    let store = MemoryStore::new();
    let a = inst(&store);
    let account = a.create_account("acme", "Acme").await.expect("create");
    let k = a.issue_key(&account).await.expect("issue");
    store.stall_loads(true);
    tokio::time::advance(TTL + PROMPT).await;
    let t = Instant::now();
    let mut first = tokio::task::JoinSet::new();
    for _ in 0..50 {
        let (a, s) = (a.clone(), k.secret.expose().to_string());
        first.spawn(async move { a.authenticate(&s).await });
    }
    while let Some(r) = within(LOAD_TIMEOUT + PROMPT, "first", first.join_next()).await {
        assert!(
            r.expect("task").is_ok(),
            "stalled refresh made a known key fail"
        );
    }
    assert!(t.elapsed() <= LOAD_TIMEOUT + PROMPT);
    for _ in 0..40 {
        tokio::time::advance(Duration::from_millis(750)).await;
        let r = within(
            PROMPT,
            "later request waited",
            a.authenticate(k.secret.expose()),
        )
        .await;
        assert!(r.is_ok());
    }
    store.stall_loads(false);
}

// A9: a corrupt file keeps the previous snapshot; nothing loaded + corrupt file is
// `Unavailable`, never a 401.
#[tokio::test(start_paused = true)]
async fn document_corrupt_file_keeps_previous_snapshot() {
    let dir = scratch_dir("corrupt");
    let path = dir.join("keys.json");
    let store = FileStore::new(&path);
    let a = inst(&store);
    let account = a.create_account("acme", "Acme").await.expect("create");
    let k = a.issue_key(&account).await.expect("issue");
    std::fs::write(&path, b"{ not json").expect("corrupt");
    assert!(a.refresh().await.is_err());
    assert!(a.authenticate(k.secret.expose()).await.is_ok());
    assert!(a.stats().serving_previous_snapshot);
    let fresh = inst(&store);
    let r = fresh.authenticate(k.secret.expose()).await;
    assert!(
        matches!(r, Err(AuthError::Unavailable { .. })),
        "never-loaded instance over a corrupt store: {r:?}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

// A2 + A9: the watcher keeps the snapshot fresh so the request after a revocation elsewhere
// needs no wait and sees it within two watcher intervals.
#[tokio::test(start_paused = true)]
async fn document_watcher_applies_remote_revocation_without_request_waiting() {
    let store = MemoryStore::new();
    store.set_latency(Duration::from_millis(50));
    let (a, b) = (inst(&store), inst(&store));
    let account = a.create_account("acme", "Acme").await.expect("create");
    let k = a.issue_key(&account).await.expect("issue");
    assert!(b.authenticate(k.secret.expose()).await.is_ok());
    let _w = b.spawn_watcher(Duration::from_secs(5));
    tokio::time::sleep(Duration::from_secs(1)).await;
    a.revoke_key(&k.identity.key).await.expect("revoke");
    tokio::time::sleep(Duration::from_secs(10) + Duration::from_millis(200)).await;
    let r = within(PROMPT, "request waited", b.authenticate(k.secret.expose())).await;
    assert!(matches!(r, Err(AuthError::Revoked)), "{r:?}");
}

// ---------------------------------------------------------------------------------------------
// Writes: ids, duplicates (both layouts)
// ---------------------------------------------------------------------------------------------

async fn five_instances_create_same_account<S: KeyStore + Clone>(store: S) {
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..5 {
        let c = inst(&store);
        set.spawn(async move { c.create_account("same", "Same").await });
    }
    let mut results = Vec::new();
    while let Some(r) = set.join_next().await {
        results.push(r.expect("task"));
    }
    let ok = results.iter().filter(|r| r.is_ok()).count();
    let exists = results
        .iter()
        .filter(|r| matches!(r, Err(WriteError::AccountExists)))
        .count();
    assert_eq!((ok, exists), (1, 4), "{results:?}");
}

#[tokio::test(start_paused = true)]
async fn document_five_instances_create_same_account_exactly_one_wins() {
    let store = MemoryStore::new();
    store.set_latency(Duration::from_millis(3));
    five_instances_create_same_account(store).await;
}

#[tokio::test(start_paused = true)]
async fn keyed_five_instances_create_same_account_exactly_one_wins() {
    let store = MemoryStore::keyed();
    store.set_latency(Duration::from_millis(3));
    five_instances_create_same_account(store).await;
}

async fn bad_ids_are_typed_errors<S: KeyStore + Clone>(store: S) {
    let a = inst(&store);
    let long = "x".repeat(65);
    for id in [
        "",
        " ",
        "a/b",
        "../x",
        "..\\x",
        "a b",
        "ü",
        "a\0b",
        long.as_str(),
        "a:b",
    ] {
        let r = a.create_account(id, "n").await;
        assert!(
            matches!(r, Err(WriteError::InvalidAccountId)),
            "create_account({id:?}) → {r:?}"
        );
    }
    let ok64 = "y".repeat(64);
    a.create_account(&ok64, "n")
        .await
        .expect("64 chars is valid");
    a.create_account("A-z_0.9", "n").await.expect("charset");
    for id in ["", "a/b", "../x", "../../etc/passwd", "nope", "/abs"] {
        let r = a.issue_key(&AccountId::new(id)).await;
        assert!(
            matches!(r, Err(WriteError::NoSuchAccount)),
            "issue_key({id:?}) → {r:?}"
        );
        let r = a.revoke_key(&KeyId::new(id)).await;
        assert!(
            matches!(r, Err(WriteError::NoSuchKey)),
            "revoke_key({id:?}) → {r:?}"
        );
    }
    let k = a
        .issue_key(&AccountId::new(ok64.as_str()))
        .await
        .expect("issue");
    a.revoke_key(&k.identity.key).await.expect("revoke");
    a.revoke_key(&k.identity.key)
        .await
        .expect("revoke is idempotent");
}

#[tokio::test(start_paused = true)]
async fn document_bad_ids_are_typed_errors() {
    bad_ids_are_typed_errors(MemoryStore::new()).await;
}

#[tokio::test(start_paused = true)]
async fn keyed_file_bad_ids_are_typed_errors_never_store_failures() {
    let dir = scratch_dir("ids");
    bad_ids_are_typed_errors(FileStore::keyed(dir.join("k")).durable(false)).await;
    // Nothing escaped the store's directory.
    let mut files = Vec::new();
    files_under(&dir, &mut files);
    assert!(
        files.iter().all(|f| f.starts_with(dir.join("k"))),
        "{files:?}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

// Issued keys: `ak_` + 48 characters, checksummed, unique; key ids `key_` + 16 hex.
#[tokio::test(start_paused = true)]
async fn issued_keys_have_the_documented_shape_and_are_unique() {
    for store in [MemoryStore::new(), MemoryStore::keyed()] {
        let a = inst(&store);
        let account = a.create_account("acme", "Acme").await.expect("create");
        let mut secrets = HashSet::new();
        let mut ids = HashSet::new();
        for _ in 0..200 {
            let k = a.issue_key(&account).await.expect("issue");
            let s = k.secret.expose();
            assert!(s.starts_with(KEY_PREFIX));
            assert_eq!(s.len(), CHECKED_KEY_LEN);
            assert!(has_valid_checksum(s));
            assert_eq!(k.secret.hash(), KeyHash::of(s));
            let id = k.identity.key.as_str();
            assert!(
                id.len() == 20
                    && id.starts_with("key_")
                    && id[4..].chars().all(|c| c.is_ascii_hexdigit()),
                "key id {id:?}"
            );
            assert!(secrets.insert(s.to_string()));
            assert!(ids.insert(id.to_string()));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A6: no plaintext anywhere
// ---------------------------------------------------------------------------------------------

fn assert_no_secret(what: &str, text: &str, secrets: &[IssuedKey]) {
    for k in secrets {
        let s = k.secret.expose();
        assert!(!text.contains(s), "{what} contains a plaintext key");
        // The random part alone, too.
        assert!(
            !text.contains(&s[KEY_PREFIX.len()..]),
            "{what} contains key material"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn plaintext_never_in_stores_debug_errors_or_stats() {
    let dir = scratch_dir("a6");
    let doc_store = FileStore::new(dir.join("keys.json"));
    let keyed_store = FileStore::keyed(dir.join("keyed")).durable(false);
    let mem_keyed = MemoryStore::keyed();
    let d = inst(&doc_store);
    let k = inst(&keyed_store);
    let m = inst(&mem_keyed);
    let mut issued = Vec::new();
    let acc = d.create_account("acme", "Acme").await.expect("d");
    for _ in 0..3 {
        issued.push(d.issue_key(&acc).await.expect("d"));
    }
    let acc = k.create_account("acme", "Acme").await.expect("k");
    for _ in 0..3 {
        issued.push(k.issue_key(&acc).await.expect("k"));
    }
    let acc = m.create_account("acme", "Acme").await.expect("m");
    for _ in 0..3 {
        issued.push(m.issue_key(&acc).await.expect("m"));
    }
    for key in &issued {
        let _ = d.authenticate(key.secret.expose()).await;
        let _ = k.authenticate(key.secret.expose()).await;
        let _ = m.authenticate(key.secret.expose()).await;
    }
    k.revoke_key(&issued[3].identity.key).await.expect("revoke");
    let mut files = Vec::new();
    files_under(&dir, &mut files);
    assert!(files.len() >= 3, "{files:?}");
    for f in &files {
        let bytes = std::fs::read(f).unwrap_or_default();
        assert_no_secret(
            &f.display().to_string(),
            &String::from_utf8_lossy(&bytes),
            &issued,
        );
    }
    let mut names = mem_keyed.record_names();
    for name in names.drain(..) {
        let rec = mem_keyed
            .get_record(&name)
            .await
            .expect("read")
            .expect("exists");
        assert_no_secret(&name, &String::from_utf8_lossy(&rec.bytes), &issued);
    }
    let feed = mem_keyed
        .read_feed(Some(&FeedCursor {
            segment: 0,
            offset: 0,
        }))
        .await;
    if let Ok(batch) = feed {
        for e in &batch.entries {
            assert_no_secret("feed", &String::from_utf8_lossy(e), &issued);
        }
    }
    let debug = format!(
        "{d:?}{k:?}{m:?}{:?}{:?}{:?}{:?}",
        d.stats(),
        k.stats(),
        m.stats(),
        issued
    );
    assert_no_secret("Debug output", &debug, &issued);
    assert!(format!("{:?}", issued[0].secret).contains("redacted"));
    // KeyHash's Debug shows only a prefix of the hash.
    let hex = issued[0].secret.hash().to_hex();
    assert!(!format!("{:?}", issued[0].secret.hash()).contains(&hex));
    // Errors for every presented shape carry nothing of it.
    for presented in [issued[0].secret.expose(), "ak_guess_guess_guess"] {
        for c in [&m] {
            if let Err(e) = c.authenticate(presented).await {
                assert!(!format!("{e} {e:?}").contains(presented));
            }
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}

// ---------------------------------------------------------------------------------------------
// A8: the layer
// ---------------------------------------------------------------------------------------------

async fn layer_contract<S: KeyStore + Clone>(store: S) {
    let cache = inst(&store);
    let account = cache.create_account("acme", "Acme").await.expect("create");
    let good = cache.issue_key(&account).await.expect("issue");
    let revoked = cache.issue_key(&account).await.expect("issue");
    cache
        .revoke_key(&revoked.identity.key)
        .await
        .expect("revoke");
    let unknown = foreign_keys(1).await.remove(0);
    let router = app(cache.clone());

    let (st, _, body) = call(&router, &[hv(good.secret.expose())]).await;
    assert_eq!(st, StatusCode::OK);
    let body = String::from_utf8(body).expect("utf8");
    assert_eq!(
        body,
        format!("acme|{}|header_present=false", good.identity.key.as_str()),
        "identity inserted and header removed"
    );

    let cases: Vec<(&str, Vec<HeaderValue>)> = vec![
        ("missing", vec![]),
        ("empty", vec![hv("")]),
        ("blank", vec![hv("   ")]),
        (
            "non-utf8",
            vec![HeaderValue::from_bytes(&[0xff, 0xfe, b'a']).expect("bytes")],
        ),
        ("oversized", vec![hv(&"a".repeat(5000))]),
        (
            "repeated",
            vec![hv(good.secret.expose()), hv(good.secret.expose())],
        ),
        ("unknown", vec![hv(&unknown)]),
        ("revoked", vec![hv(revoked.secret.expose())]),
    ];
    let mut bodies = std::collections::HashMap::new();
    for (name, values) in cases {
        let (st, headers, body) = call(&router, &values).await;
        assert_eq!(st, StatusCode::UNAUTHORIZED, "{name}");
        let ct = headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        assert!(
            ct.starts_with("application/json"),
            "{name}: content-type {ct:?}"
        );
        let json: serde_json::Value = serde_json::from_slice(&body).expect("JSON body");
        assert!(json["error"].is_string(), "{name}: {json}");
        assert!(json["message"].is_string(), "{name}: {json}");
        let text = String::from_utf8_lossy(&body).to_string();
        assert!(
            !text.contains(good.secret.expose()),
            "{name}: body echoes a key"
        );
        assert!(!text.contains(&unknown), "{name}: body echoes a key");
        bodies.insert(name, text);
    }
    assert_eq!(
        bodies["unknown"], bodies["revoked"],
        "unknown and revoked must be indistinguishable"
    );
    // The body of a well-formed request after rejections is still fine.
    let (st, _, _) = call(&router, &[hv(good.secret.expose())]).await;
    assert_eq!(st, StatusCode::OK);
}

#[tokio::test(start_paused = true)]
async fn layer_contract_document() {
    layer_contract(MemoryStore::new()).await;
}

#[tokio::test(start_paused = true)]
async fn layer_contract_keyed() {
    layer_contract(MemoryStore::keyed()).await;
}

// A8 + timeouts with the default config: a hung keyed store never hangs the layer: an uncached
// key is a 503 with `retry-after: 1` within `load_timeout`, a cached key a 200.
#[tokio::test(start_paused = true)]
async fn keyed_layer_hung_store_503_within_load_timeout_cached_key_200() {
    let store = HangStore::new();
    let a = inst(&store);
    let account = a.create_account("acme", "Acme").await.expect("create");
    let cached = a.issue_key(&account).await.expect("issue");
    let uncached = a.issue_key(&account).await.expect("issue");
    let b = inst(&store);
    assert!(b.authenticate(cached.secret.expose()).await.is_ok());
    let router = app(b.clone());
    store.hang_all(true);
    tokio::time::advance(POLL + PROMPT).await;
    let t = Instant::now();
    let (st, headers, _) = within(
        LOAD_TIMEOUT * 2 + PROMPT,
        "uncached key while hung",
        call(&router, &[hv(uncached.secret.expose())]),
    )
    .await;
    assert_eq!(st, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        headers.get("retry-after").and_then(|v| v.to_str().ok()),
        Some("1")
    );
    assert!(
        t.elapsed() <= LOAD_TIMEOUT + PROMPT,
        "503 took {:?}, more than one load_timeout",
        t.elapsed()
    );
    let t = Instant::now();
    let (st, _, _) = within(
        LOAD_TIMEOUT + PROMPT,
        "cached key while hung",
        call(&router, &[hv(cached.secret.expose())]),
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    assert!(t.elapsed() <= LOAD_TIMEOUT + PROMPT);
    // Past the TTL the cached key is revalidated: the guide's "a down or hung store costs a
    // known key one `load_timeout`, once" — one call may wait that long, no other call waits.
    let mut waits = 0;
    for _ in 0..30 {
        tokio::time::advance(Duration::from_millis(900)).await;
        let t = Instant::now();
        let (st, _, _) = within(
            LOAD_TIMEOUT + PROMPT,
            "cached key during the outage",
            call(&router, &[hv(cached.secret.expose())]),
        )
        .await;
        assert_eq!(st, StatusCode::OK);
        if t.elapsed() > PROMPT {
            waits += 1;
        }
    }
    assert!(waits <= 1, "the cached key waited {waits} times");
}

// Timeouts: with every store call hung, each write fails within `write_timeout` (default
// config), and authentication of a cached key is unaffected meanwhile.
#[tokio::test(start_paused = true)]
async fn keyed_hung_store_writes_fail_within_write_timeout() {
    let store = HangStore::new();
    let a = inst(&store);
    let account = a.create_account("acme", "Acme").await.expect("create");
    let k = a.issue_key(&account).await.expect("issue");
    // Warm: the first feed read and the key's cache entry happen before the store hangs
    // (the request that finds a feed read due may wait for it once; not what this tests).
    assert!(a.authenticate(k.secret.expose()).await.is_ok());
    store.hang_all(true);
    let t = Instant::now();
    let (c, i, r, auth) = tokio::join!(
        within(WRITE_TIMEOUT * 3, "create", a.create_account("beta", "B")),
        within(WRITE_TIMEOUT * 3, "issue", a.issue_key(&account)),
        within(WRITE_TIMEOUT * 3, "revoke", a.revoke_key(&k.identity.key)),
        within(
            PROMPT,
            "auth during hung writes",
            a.authenticate(k.secret.expose())
        ),
    );
    assert!(auth.is_ok(), "{auth:?}");
    assert!(matches!(c, Err(WriteError::Store { .. })), "{c:?}");
    assert!(matches!(i, Err(WriteError::Store { .. })), "{i:?}");
    assert!(matches!(r, Err(WriteError::Store { .. })), "{r:?}");
    assert!(
        t.elapsed() <= WRITE_TIMEOUT + PROMPT,
        "three concurrent writes against a hung store took {:?}",
        t.elapsed()
    );
}

// A11: a hung feed append after the record write — the write succeeds (the append is counted
// as failed) within `write_timeout`.
#[tokio::test(start_paused = true)]
async fn keyed_hung_feed_append_write_still_succeeds_within_write_timeout() {
    let store = HangStore::new();
    let a = inst(&store);
    let account = a.create_account("acme", "Acme").await.expect("create");
    store.hang_appends.store(true, Ordering::SeqCst);
    let t = Instant::now();
    let r = within(WRITE_TIMEOUT * 3, "issue", a.issue_key(&account)).await;
    let k = r.expect("record written: the write succeeds although the append hung");
    assert!(
        t.elapsed() <= WRITE_TIMEOUT + PROMPT,
        "took {:?}",
        t.elapsed()
    );
    assert_eq!(a.stats().feed_append_failures, 1);
    assert!(a.authenticate(k.secret.expose()).await.is_ok());
}

// ---------------------------------------------------------------------------------------------
// Keyed layout: fleet, feed, gaps, failures (A10–A12)
// ---------------------------------------------------------------------------------------------

// A11: five instances started at different times (some caching the key, one meeting it only
// after the revocation): a revocation on one is honoured on all within one poll (+ one small
// feed read).
#[tokio::test(start_paused = true)]
async fn keyed_fleet_of_five_revocation_within_one_poll() {
    let store = MemoryStore::keyed();
    store.set_latency(Duration::from_millis(5));
    let a = inst(&store);
    let account = a.create_account("acme", "Acme").await.expect("create");
    let k = a.issue_key(&account).await.expect("issue");
    let mut fleet = vec![a.clone()];
    for i in 0..3 {
        tokio::time::advance(Duration::from_millis(700 * i + 300)).await;
        let c = inst(&store);
        assert_eq!(
            c.authenticate(k.secret.expose()).await.expect("first try"),
            k.identity
        );
        fleet.push(c);
    }
    // Keep them warm for a while, each on its own rhythm.
    for step in 0..20u64 {
        tokio::time::advance(Duration::from_millis(250 + step * 7)).await;
        for c in &fleet {
            assert!(c.authenticate(k.secret.expose()).await.is_ok());
        }
    }
    let late = inst(&store);
    fleet[2].revoke_key(&k.identity.key).await.expect("revoke");
    let revoked_at = Instant::now();
    fleet.push(late);
    assert!(matches!(
        fleet[2].authenticate(k.secret.expose()).await,
        Err(AuthError::Revoked)
    ));
    tokio::time::advance(POLL).await;
    for (i, c) in fleet.iter().enumerate() {
        let r = within(LOAD_TIMEOUT, "auth", c.authenticate(k.secret.expose())).await;
        assert!(
            matches!(r, Err(AuthError::Revoked)),
            "instance {i} accepts a key revoked {:?} ago: {r:?}",
            revoked_at.elapsed()
        );
    }
}

// A4 (keyed): 200 concurrent requests for one uncached key share one point read.
#[tokio::test(start_paused = true)]
async fn keyed_concurrent_misses_of_one_key_share_one_point_read() {
    let store = MemoryStore::keyed();
    store.set_latency(Duration::from_millis(10));
    let a = inst(&store);
    let account = a.create_account("acme", "Acme").await.expect("create");
    let k = a.issue_key(&account).await.expect("issue");
    let b = inst(&store);
    // Let B start its feed tail first, so only the key's read remains.
    let warm = foreign_keys(1).await.remove(0);
    let _ = b.authenticate(&warm).await;
    tokio::time::advance(Duration::from_millis(100)).await;
    let reads = store.counts().record_reads;
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..200 {
        let (b, s) = (b.clone(), k.secret.expose().to_string());
        set.spawn(async move { b.authenticate(&s).await });
    }
    while let Some(r) = set.join_next().await {
        assert_eq!(r.expect("task").expect("valid"), k.identity);
    }
    let n = store.counts().record_reads - reads;
    assert_eq!(
        n, 1,
        "{n} point reads for 200 concurrent misses of one key (A4)"
    );
}

// A12: junk, typos and checksum-invalid keys cost zero store reads of any kind.
#[tokio::test(start_paused = true)]
async fn keyed_junk_and_typos_cost_zero_store_reads() {
    let store = MemoryStore::keyed();
    let a = inst(&store);
    let account = a.create_account("acme", "Acme").await.expect("create");
    let k = a.issue_key(&account).await.expect("issue");
    let b = inst(&store);
    let before = store.counts();
    let s = k.secret.expose();
    let mut junk: Vec<String> = Vec::new();
    // Every single-character typo of a real key.
    for i in KEY_PREFIX.len()..s.len() {
        let mut bytes = s.as_bytes().to_vec();
        bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
        junk.push(String::from_utf8(bytes).expect("ascii"));
    }
    junk.push(s[..s.len() - 1].to_string());
    junk.push(format!("{s}A"));
    junk.push(s.to_uppercase());
    junk.push(s.replacen("ak_", "AK_", 1));
    junk.push(s.replacen("ak_", "xk_", 1));
    for i in 0..2000 {
        junk.push(format!("ak_{i:048}"));
        junk.push(format!("random-junk-{i}"));
    }
    for j in &junk {
        tokio::time::advance(Duration::from_millis(3)).await;
        let r = b.authenticate(j).await;
        if has_valid_checksum(j) {
            continue;
        }
        assert!(matches!(r, Err(AuthError::Malformed)), "{r:?}");
    }
    let after = store.counts();
    assert_eq!(
        after.record_reads, before.record_reads,
        "point reads for junk"
    );
    assert_eq!(after.feed_reads, before.feed_reads, "feed reads for junk");
}

// A5 (keyed): an unknown well-formed key costs one point read, then the negative cache for
// `negative_ttl`, then one more read.
#[tokio::test(start_paused = true)]
async fn keyed_unknown_key_one_read_then_negative_cache_then_expiry() {
    let store = MemoryStore::keyed();
    let b = inst(&store);
    let unknown = foreign_keys(1).await.remove(0);
    assert!(matches!(
        b.authenticate(&unknown).await,
        Err(AuthError::Unknown)
    ));
    let reads = store.counts().record_reads;
    assert!(reads >= 1);
    for _ in 0..45 {
        tokio::time::advance(Duration::from_millis(200)).await;
        assert!(matches!(
            b.authenticate(&unknown).await,
            Err(AuthError::Unknown)
        ));
    }
    assert_eq!(
        store.counts().record_reads,
        reads,
        "negative cache not used"
    );
    tokio::time::advance(NEGATIVE_TTL).await;
    let _ = b.authenticate(&unknown).await;
    assert_eq!(
        store.counts().record_reads,
        reads + 1,
        "negative entry never expired"
    );
}

// A5/A12 (keyed): a concurrent burst of distinct well-formed unknown keys is held to the
// point-read budget.
#[tokio::test(start_paused = true)]
async fn keyed_concurrent_burst_of_unknown_keys_held_to_budget() {
    let store = MemoryStore::keyed();
    store.set_latency(Duration::from_millis(20));
    let b = ApiKeyCache::new(
        store.clone(),
        CacheConfig::default().point_reads_per_second(10),
    );
    let unknown = foreign_keys(300).await;
    let before = store.counts().record_reads;
    let mut set = tokio::task::JoinSet::new();
    for key in unknown {
        let b = b.clone();
        set.spawn(async move { b.authenticate(&key).await });
    }
    while let Some(r) = set.join_next().await {
        let r = r.expect("task");
        assert!(
            matches!(r, Err(AuthError::Unknown | AuthError::Unavailable { .. })),
            "{r:?}"
        );
    }
    let reads = store.counts().record_reads - before;
    let elapsed_budget = 10 + 10 * (LOAD_TIMEOUT.as_secs() + 1);
    assert!(
        reads <= elapsed_budget,
        "{reads} point reads for 300 unknown keys with a budget of 10/s"
    );
}

// A11: a gap in the feed (segments dropped) after a revocation → the revocation is still
// honoured by the next successful poll.
#[tokio::test(start_paused = true)]
async fn keyed_feed_gap_after_revocation_still_rejects_within_a_poll() {
    let store = MemoryStore::keyed();
    let (a, b) = (inst(&store), inst(&store));
    let account = a.create_account("acme", "Acme").await.expect("create");
    let k = a.issue_key(&account).await.expect("issue");
    assert!(b.authenticate(k.secret.expose()).await.is_ok());
    tokio::time::advance(POLL + PROMPT).await;
    assert!(b.authenticate(k.secret.expose()).await.is_ok());
    a.revoke_key(&k.identity.key).await.expect("revoke");
    store.drop_feed_segments();
    tokio::time::advance(POLL + PROMPT).await;
    let r = within(LOAD_TIMEOUT, "auth", b.authenticate(k.secret.expose())).await;
    assert!(
        matches!(r, Err(AuthError::Revoked)),
        "revocation lost in a feed gap: {r:?}"
    );
    assert!(b.stats().feed_gaps >= 1);
}

// A11: the feed rotates past a reader (segments of one entry): revocations still reach it.
#[tokio::test(start_paused = true)]
async fn keyed_feed_rotated_past_reader_revocations_still_seen() {
    let store = MemoryStore::keyed();
    store.set_feed_segment_entries(1);
    let (a, b) = (inst(&store), inst(&store));
    let account = a.create_account("acme", "Acme").await.expect("create");
    let mut keys = Vec::new();
    for _ in 0..3 {
        keys.push(a.issue_key(&account).await.expect("issue"));
    }
    for k in &keys {
        assert!(b.authenticate(k.secret.expose()).await.is_ok());
    }
    tokio::time::advance(POLL + PROMPT).await;
    for k in &keys {
        assert!(b.authenticate(k.secret.expose()).await.is_ok());
    }
    for k in &keys {
        a.revoke_key(&k.identity.key).await.expect("revoke");
    }
    for _ in 0..5 {
        a.issue_key(&account).await.expect("more writes");
    }
    tokio::time::advance(POLL + PROMPT).await;
    for (i, k) in keys.iter().enumerate() {
        let r = within(LOAD_TIMEOUT, "auth", b.authenticate(k.secret.expose())).await;
        assert!(matches!(r, Err(AuthError::Revoked)), "key {i}: {r:?}");
    }
}

// A11: feed reads failing — a revocation is honoured within `ttl` after the last good feed read
// (plus one point read), and requests do not wait on the feed every time.
#[tokio::test(start_paused = true)]
async fn keyed_feed_reads_failing_revocation_within_ttl() {
    let store = MemoryStore::keyed();
    let (a, b) = (inst(&store), inst(&store));
    let account = a.create_account("acme", "Acme").await.expect("create");
    let k = a.issue_key(&account).await.expect("issue");
    assert!(b.authenticate(k.secret.expose()).await.is_ok());
    tokio::time::advance(POLL + PROMPT).await;
    assert!(b.authenticate(k.secret.expose()).await.is_ok());
    let last_good = Instant::now();
    store.fail_feed_reads(true);
    tokio::time::advance(Duration::from_secs(1)).await;
    a.revoke_key(&k.identity.key).await.expect("revoke");
    let mut rejected_at = None;
    while last_good.elapsed() <= TTL + POLL + Duration::from_secs(1) {
        tokio::time::advance(Duration::from_millis(500)).await;
        let r = within(
            LOAD_TIMEOUT + PROMPT,
            "auth",
            b.authenticate(k.secret.expose()),
        )
        .await;
        if matches!(r, Err(AuthError::Revoked)) {
            rejected_at = Some(last_good.elapsed());
            break;
        }
    }
    let at = rejected_at.expect("revocation never honoured while feed reads fail");
    assert!(at <= TTL + Duration::from_secs(1), "honoured after {at:?}");
}

// A11 backstop: a writer whose feed append is lost — the revocation is seen at the safety
// revalidation (here 60 s).
#[tokio::test(start_paused = true)]
async fn keyed_lost_feed_append_caught_by_revalidation() {
    let store = MemoryStore::keyed();
    let cfg = CacheConfig::default().revalidate(Duration::from_secs(60));
    let a = ApiKeyCache::new(store.clone(), cfg.clone());
    let b = ApiKeyCache::new(store.clone(), cfg);
    let account = a.create_account("acme", "Acme").await.expect("create");
    let k = a.issue_key(&account).await.expect("issue");
    assert!(b.authenticate(k.secret.expose()).await.is_ok());
    let cached_at = Instant::now();
    store.fail_feed_appends(true);
    a.revoke_key(&k.identity.key)
        .await
        .expect("revoke succeeds without the feed");
    assert_eq!(a.stats().feed_append_failures, 1);
    let mut seen = None;
    while cached_at.elapsed() <= Duration::from_secs(70) {
        tokio::time::advance(Duration::from_secs(1)).await;
        if matches!(
            b.authenticate(k.secret.expose()).await,
            Err(AuthError::Revoked)
        ) {
            seen = Some(cached_at.elapsed());
            break;
        }
    }
    let at = seen.expect("lost revocation never caught");
    assert!(at <= Duration::from_secs(60) + POLL, "caught after {at:?}");
}

// A12: memory bounded by `key_capacity`, idle keys dropped after `key_idle` (virtual time),
// and an idle key's next use is a point read.
#[tokio::test(start_paused = true)]
async fn keyed_bounded_cache_and_idle_expiry() {
    let store = MemoryStore::keyed();
    let a = inst(&store);
    let account = a.create_account("acme", "Acme").await.expect("create");
    let mut keys = Vec::new();
    for _ in 0..300 {
        keys.push(a.issue_key(&account).await.expect("issue"));
    }
    let idle = Duration::from_secs(60);
    let b = ApiKeyCache::new(
        store.clone(),
        CacheConfig::default().key_capacity(64).key_idle(idle),
    );
    for k in &keys {
        assert!(b.authenticate(k.secret.expose()).await.is_ok());
        assert!(b.stats().keys <= 64, "{} keys cached", b.stats().keys);
    }
    let hot = &keys[299];
    let reads = store.counts().record_reads;
    assert!(b.authenticate(hot.secret.expose()).await.is_ok());
    assert_eq!(store.counts().record_reads, reads, "hot key not cached");
    tokio::time::advance(idle + PROMPT).await;
    assert!(b.authenticate(hot.secret.expose()).await.is_ok());
    assert_eq!(
        store.counts().record_reads,
        reads + 1,
        "a key idle for key_idle must be re-read"
    );
    // Sweep: after key_idle + key_idle/4 + a poll, only the key in use remains.
    for _ in 0..40 {
        tokio::time::advance(POLL).await;
        assert!(b.authenticate(hot.secret.expose()).await.is_ok());
    }
    assert!(
        b.stats().keys <= 1,
        "{} idle keys still held",
        b.stats().keys
    );
    assert!(b.stats().idle_evictions >= 1);
}

// A11 + clock jump: a day passes in one step; the cache recovers and a revocation made after
// the jump is honoured within one poll.
#[tokio::test(start_paused = true)]
async fn keyed_clock_jump_then_revocation_within_a_poll() {
    let store = MemoryStore::keyed();
    let (a, b) = (inst(&store), inst(&store));
    let account = a.create_account("acme", "Acme").await.expect("create");
    let k = a.issue_key(&account).await.expect("issue");
    assert!(b.authenticate(k.secret.expose()).await.is_ok());
    tokio::time::advance(Duration::from_secs(24 * 3600)).await;
    assert!(b.authenticate(k.secret.expose()).await.is_ok());
    a.revoke_key(&k.identity.key).await.expect("revoke");
    tokio::time::advance(POLL + PROMPT).await;
    assert!(matches!(
        within(LOAD_TIMEOUT, "auth", b.authenticate(k.secret.expose())).await,
        Err(AuthError::Revoked)
    ));
}

// A3 (keyed): B revokes a key A issued and B had cached — rejected on B at once, on A within a
// poll; concurrent revocations of one key from two instances both succeed.
#[tokio::test(start_paused = true)]
async fn keyed_cross_instance_revocations() {
    let store = MemoryStore::keyed();
    store.set_latency(Duration::from_millis(2));
    let (a, b) = (inst(&store), inst(&store));
    let account = a.create_account("acme", "Acme").await.expect("create");
    let k1 = a.issue_key(&account).await.expect("issue");
    let k2 = a.issue_key(&account).await.expect("issue");
    assert!(b.authenticate(k1.secret.expose()).await.is_ok());
    assert!(a.authenticate(k1.secret.expose()).await.is_ok());
    b.revoke_key(&k1.identity.key)
        .await
        .expect("B revokes A's key");
    assert!(matches!(
        b.authenticate(k1.secret.expose()).await,
        Err(AuthError::Revoked)
    ));
    tokio::time::advance(POLL + PROMPT).await;
    assert!(matches!(
        a.authenticate(k1.secret.expose()).await,
        Err(AuthError::Revoked)
    ));
    let (r1, r2) = tokio::join!(
        a.revoke_key(&k2.identity.key),
        b.revoke_key(&k2.identity.key)
    );
    r1.expect("revoke on A");
    r2.expect("revoke on B");
    let c = inst(&store);
    assert!(matches!(
        c.authenticate(k2.secret.expose()).await,
        Err(AuthError::Revoked)
    ));
}

// A10/A12: an instance does not hold the table — 500 keys in the store, 5 in use → ≤ 5 cached.
#[tokio::test(start_paused = true)]
async fn keyed_memory_follows_keys_in_use_not_the_table() {
    let store = MemoryStore::keyed();
    let a = inst(&store);
    let account = a.create_account("acme", "Acme").await.expect("create");
    let mut keys = Vec::new();
    for _ in 0..500 {
        keys.push(a.issue_key(&account).await.expect("issue"));
    }
    let b = inst(&store);
    for k in &keys[..5] {
        assert!(b.authenticate(k.secret.expose()).await.is_ok());
    }
    assert!(b.stats().keys <= 5, "{}", b.stats().keys);
    assert_eq!(b.stats().accounts, None);
    assert_eq!(b.stats().layout, Some(Layout::Keyed));
}

// ---------------------------------------------------------------------------------------------
// X5: configuration never panics; builder and env values clamp into the documented ranges
// ---------------------------------------------------------------------------------------------

#[test]
fn builder_values_clamp_to_documented_ranges() {
    let d = CacheConfig::default;
    let s = Duration::from_secs;
    let ms = Duration::from_millis;
    let cases: Vec<(&str, CacheConfig, CacheConfig)> = vec![
        ("ttl 0", d().ttl(Duration::ZERO), d().ttl(ms(1))),
        ("ttl max", d().ttl(Duration::MAX), d().ttl(s(3600))),
        (
            "miss 0",
            d().miss_reload_interval(Duration::ZERO),
            d().miss_reload_interval(ms(1)),
        ),
        (
            "miss max",
            d().miss_reload_interval(Duration::MAX),
            d().miss_reload_interval(s(600)),
        ),
        (
            "negative max",
            d().negative_ttl(Duration::MAX),
            d().negative_ttl(s(3600)),
        ),
        (
            "load 0",
            d().load_timeout(Duration::ZERO),
            d().load_timeout(ms(1)),
        ),
        (
            "load max",
            d().load_timeout(Duration::MAX),
            d().load_timeout(s(600)),
        ),
        (
            "write max",
            d().write_timeout(Duration::MAX),
            d().write_timeout(s(600)),
        ),
        (
            "backoff max",
            d().retry_backoff(Duration::MAX),
            d().retry_backoff(s(600)),
        ),
        (
            "burst 0",
            d().miss_reload_burst(0),
            d().miss_reload_burst(1),
        ),
        (
            "burst max",
            d().miss_reload_burst(u32::MAX),
            d().miss_reload_burst(1000),
        ),
        ("attempts 0", d().write_attempts(0), d().write_attempts(1)),
        (
            "attempts max",
            d().write_attempts(u32::MAX),
            d().write_attempts(1000),
        ),
        ("poll 0", d().poll(Duration::ZERO), d().poll(ms(1))),
        ("poll max", d().poll(Duration::MAX), d().poll(s(3600))),
        ("cap 0", d().key_capacity(0), d().key_capacity(1)),
        (
            "cap max",
            d().key_capacity(u64::MAX),
            d().key_capacity(100_000_000),
        ),
        ("idle 0", d().key_idle(Duration::ZERO), d().key_idle(ms(1))),
        (
            "idle max",
            d().key_idle(Duration::MAX),
            d().key_idle(s(86_400)),
        ),
        (
            "reval max",
            d().revalidate(Duration::MAX),
            d().revalidate(s(86_400)),
        ),
        (
            "prps 0",
            d().point_reads_per_second(0),
            d().point_reads_per_second(1),
        ),
        (
            "prps max",
            d().point_reads_per_second(u32::MAX),
            d().point_reads_per_second(1_000_000),
        ),
    ];
    for (name, got, want) in cases {
        assert_eq!(got, want, "{name}");
    }
    assert_eq!(d().poll(Duration::MAX).poll_interval(), s(3600));
    assert_eq!(d().poll_interval(), POLL);
}

#[test]
fn env_values_clamp_and_garbage_falls_back_to_defaults() {
    let from = |pairs: &[(&str, &str)]| {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        CacheConfig::from_lookup(move |k| {
            pairs
                .iter()
                .find(|(name, _)| name == k)
                .map(|(_, v)| v.clone())
        })
    };
    let d = CacheConfig::default;
    let s = Duration::from_secs;
    let ms = Duration::from_millis;
    assert_eq!(from(&[]), d());
    for garbage in [
        "",
        "abc",
        "1.5",
        "-5",
        "1e9",
        "0x10",
        "५",
        "99999999999999999999999",
    ] {
        for var in [
            "APIKEY_CACHE_TTL_SECONDS",
            "APIKEY_CACHE_MISS_RELOAD_INTERVAL_MS",
            "APIKEY_CACHE_NEGATIVE_TTL_SECONDS",
            "APIKEY_CACHE_NEGATIVE_CAPACITY",
            "APIKEY_CACHE_LOAD_TIMEOUT_MS",
            "APIKEY_CACHE_WRITE_TIMEOUT_MS",
            "APIKEY_CACHE_POLL_MS",
            "APIKEY_CACHE_KEY_CAPACITY",
            "APIKEY_CACHE_KEY_IDLE_SECONDS",
            "APIKEY_CACHE_POINT_READS_PER_SECOND",
            "APIKEY_CACHE_REVALIDATE_SECONDS",
        ] {
            // Never a panic; a non-number is the default (huge numbers may clamp instead).
            let c = from(&[(var, garbage)]);
            if garbage != "99999999999999999999999" {
                assert_eq!(c, d(), "{var}={garbage:?}");
            }
        }
    }
    let cases: Vec<(&str, &str, CacheConfig)> = vec![
        ("APIKEY_CACHE_TTL_SECONDS", "0", d().ttl(s(1))),
        ("APIKEY_CACHE_TTL_SECONDS", "100000", d().ttl(s(3600))),
        ("APIKEY_CACHE_TTL_SECONDS", "45", d().ttl(s(45))),
        (
            "APIKEY_CACHE_MISS_RELOAD_INTERVAL_MS",
            "1",
            d().miss_reload_interval(ms(10)),
        ),
        (
            "APIKEY_CACHE_MISS_RELOAD_INTERVAL_MS",
            "999999999",
            d().miss_reload_interval(s(600)),
        ),
        (
            "APIKEY_CACHE_NEGATIVE_TTL_SECONDS",
            "0",
            d().negative_ttl(Duration::ZERO),
        ),
        (
            "APIKEY_CACHE_NEGATIVE_TTL_SECONDS",
            "100000",
            d().negative_ttl(s(3600)),
        ),
        (
            "APIKEY_CACHE_NEGATIVE_CAPACITY",
            "5000000",
            d().negative_capacity(1_000_000),
        ),
        (
            "APIKEY_CACHE_LOAD_TIMEOUT_MS",
            "1",
            d().load_timeout(ms(10)),
        ),
        (
            "APIKEY_CACHE_WRITE_TIMEOUT_MS",
            "99999999",
            d().write_timeout(s(600)),
        ),
        ("APIKEY_CACHE_POLL_MS", "1", d().poll(ms(10))),
        ("APIKEY_CACHE_POLL_MS", "99999999", d().poll(s(600))),
        ("APIKEY_CACHE_KEY_CAPACITY", "0", d().key_capacity(1)),
        (
            "APIKEY_CACHE_KEY_CAPACITY",
            "999999999999",
            d().key_capacity(100_000_000),
        ),
        ("APIKEY_CACHE_KEY_IDLE_SECONDS", "0", d().key_idle(s(1))),
        (
            "APIKEY_CACHE_KEY_IDLE_SECONDS",
            "99999999",
            d().key_idle(s(86_400)),
        ),
        (
            "APIKEY_CACHE_POINT_READS_PER_SECOND",
            "0",
            d().point_reads_per_second(1),
        ),
        ("APIKEY_CACHE_REVALIDATE_SECONDS", "0", d().revalidate(s(1))),
    ];
    for (var, value, want) in cases {
        assert_eq!(from(&[(var, value)]), want, "{var}={value}");
    }
}

async fn exercise_extreme<S: KeyStore + Clone>(store: S, cfg: CacheConfig, watcher: Duration) {
    let a = ApiKeyCache::new(store.clone(), cfg.clone());
    let b = ApiKeyCache::new(store, cfg);
    let _w = b.spawn_watcher(watcher);
    let account = within(
        Duration::from_secs(3600),
        "create",
        a.create_account("x", "X"),
    )
    .await
    .expect("create");
    let k = within(Duration::from_secs(3600), "issue", a.issue_key(&account))
        .await
        .expect("issue");
    for _ in 0..3 {
        let _ = within(
            Duration::from_secs(3600),
            "auth",
            b.authenticate(k.secret.expose()),
        )
        .await;
        let _ = within(Duration::from_secs(3600), "junk", b.authenticate("ak_junk")).await;
        tokio::time::advance(Duration::from_secs(7200)).await;
    }
    within(
        Duration::from_secs(3600),
        "revoke",
        a.revoke_key(&k.identity.key),
    )
    .await
    .expect("revoke");
    let _ = b.stats();
}

#[tokio::test(start_paused = true)]
async fn extreme_configs_never_panic_in_either_layout() {
    let max = CacheConfig::default()
        .ttl(Duration::MAX)
        .miss_reload_interval(Duration::MAX)
        .negative_ttl(Duration::MAX)
        .negative_capacity(usize::MAX)
        .retry_backoff(Duration::MAX)
        .write_attempts(u32::MAX)
        .load_timeout(Duration::MAX)
        .write_timeout(Duration::MAX)
        .miss_reload_burst(u32::MAX)
        .poll(Duration::MAX)
        .key_capacity(u64::MAX)
        .key_idle(Duration::MAX)
        .revalidate(Duration::MAX)
        .point_reads_per_second(u32::MAX)
        .legacy_keys(true);
    let zero = CacheConfig::default()
        .ttl(Duration::ZERO)
        .miss_reload_interval(Duration::ZERO)
        .negative_ttl(Duration::ZERO)
        .negative_capacity(0)
        .retry_backoff(Duration::ZERO)
        .write_attempts(0)
        .load_timeout(Duration::ZERO)
        .write_timeout(Duration::ZERO)
        .miss_reload_burst(0)
        .poll(Duration::ZERO)
        .key_capacity(0)
        .key_idle(Duration::ZERO)
        .revalidate(Duration::ZERO)
        .point_reads_per_second(0);
    for (cfg, w) in [
        (max.clone(), Duration::MAX),
        (zero.clone(), Duration::ZERO),
        (max, Duration::ZERO),
        (zero, Duration::MAX),
    ] {
        exercise_extreme(MemoryStore::new(), cfg.clone(), w).await;
        exercise_extreme(MemoryStore::keyed(), cfg, w).await;
    }
}

// Failure table: "store fails or hangs and nothing was ever loaded → Unavailable (503) within
// `load_timeout`, never a false 401" — for a keyed instance started while the store hangs.
#[tokio::test(start_paused = true)]
async fn keyed_fresh_instance_over_hung_store_unavailable_within_load_timeout() {
    let store = HangStore::new();
    let a = inst(&store);
    let account = a.create_account("acme", "Acme").await.expect("create");
    let k = a.issue_key(&account).await.expect("issue");
    store.hang_all(true);
    let fresh = inst(&store);
    let t = Instant::now();
    let r = within(
        LOAD_TIMEOUT * 3,
        "fresh",
        fresh.authenticate(k.secret.expose()),
    )
    .await;
    assert!(matches!(r, Err(AuthError::Unavailable { .. })), "{r:?}");
    assert!(
        t.elapsed() <= LOAD_TIMEOUT + PROMPT,
        "fresh instance over a hung store answered Unavailable after {:?}, more than one \
         load_timeout",
        t.elapsed()
    );
}

// A5/A12 (keyed): the negative cache stays within `negative_capacity` under a sustained stream
// of distinct well-formed unknown keys.
#[tokio::test(start_paused = true)]
async fn keyed_negative_cache_bounded_by_capacity() {
    let store = MemoryStore::keyed();
    let b = ApiKeyCache::new(store.clone(), CacheConfig::default().negative_capacity(50));
    for key in foreign_keys(400).await {
        tokio::time::advance(Duration::from_millis(5)).await;
        assert!(is_unauthorized(&b.authenticate(&key).await));
        assert!(
            b.stats().negative_entries <= 50,
            "{} negative entries",
            b.stats().negative_entries
        );
    }
}
