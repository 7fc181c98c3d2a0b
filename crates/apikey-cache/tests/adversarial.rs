//! Adversarial black-box tests of `apikey-cache`, written from SPEC (A1–A9, X5), seed 003,
//! docs/apikey-cache.md and the rustdoc of public items only. Virtual time throughout.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use apikey_cache::{
    AccountId, AccountRecord, ApiKeyCache, ApiKeyLayer, AuthError, CacheConfig, FileStore,
    Identity, KeyDocument, KeyHash, KeyId, KeyRecord, KeyStore, Loaded, MemoryStore, StoreError,
    Version, WriteError,
};
use axum::{Extension, Router, body::Body, routing::get};
use http::{HeaderValue, Request, StatusCode};
use http_body_util::BodyExt;
use tokio::task::JoinSet;
use tokio::time::{Instant, advance, timeout};
use tower::ServiceExt;

// ---------------------------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------------------------

const TTL: Duration = Duration::from_secs(30);
const LOAD_TIMEOUT: Duration = Duration::from_secs(5);
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
const SLACK: Duration = Duration::from_millis(50);

/// Await `f`, failing (instead of hanging) if it takes longer than `d` of virtual time.
async fn within<F: Future>(d: Duration, what: &str, f: F) -> F::Output {
    match timeout(d, f).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: did not finish within {d:?} (virtual time)"),
    }
}

#[derive(Default)]
struct Ctl {
    loads: AtomicU64,
    writes_started: AtomicU64,
    hang_loads: AtomicBool,
    hang_writes: AtomicBool,
    fail_loads: AtomicBool,
    /// The write reaches the inner store, then the answer never comes.
    hang_after_write: AtomicBool,
    /// Every write answers Conflict without touching the inner store.
    always_conflict: AtomicBool,
    /// Sleep after the inner load returned (the load read old data, then is slow to answer).
    post_load_delay: Mutex<Duration>,
}

/// A wrapping store: counts calls, can hang loads/writes forever, fail loads, or answer late.
/// Each cache instance gets its own wrapper (own controls) over one shared inner store.
#[derive(Clone)]
struct Wrap<S> {
    inner: S,
    ctl: Arc<Ctl>,
}

impl<S> Wrap<S> {
    fn new(inner: S) -> Self {
        Self {
            inner,
            ctl: Arc::new(Ctl::default()),
        }
    }
    fn loads(&self) -> u64 {
        self.ctl.loads.load(Ordering::SeqCst)
    }
    fn writes_started(&self) -> u64 {
        self.ctl.writes_started.load(Ordering::SeqCst)
    }
    fn hang_loads(&self, v: bool) {
        self.ctl.hang_loads.store(v, Ordering::SeqCst);
    }
    fn hang_writes(&self, v: bool) {
        self.ctl.hang_writes.store(v, Ordering::SeqCst);
    }
    fn fail_loads(&self, v: bool) {
        self.ctl.fail_loads.store(v, Ordering::SeqCst);
    }
    fn post_load_delay(&self, d: Duration) {
        *self.ctl.post_load_delay.lock().unwrap() = d;
    }
}

impl<S: KeyStore> KeyStore for Wrap<S> {
    async fn load(&self, if_none_match: Option<&Version>) -> Result<Loaded, StoreError> {
        self.ctl.loads.fetch_add(1, Ordering::SeqCst);
        if self.ctl.hang_loads.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        if self.ctl.fail_loads.load(Ordering::SeqCst) {
            return Err(StoreError::unavailable("injected load failure"));
        }
        let r = self.inner.load(if_none_match).await;
        let d = *self.ctl.post_load_delay.lock().unwrap();
        if !d.is_zero() {
            tokio::time::sleep(d).await;
        }
        r
    }

    async fn store(
        &self,
        document: &KeyDocument,
        if_match: Option<&Version>,
    ) -> Result<Version, StoreError> {
        self.ctl.writes_started.fetch_add(1, Ordering::SeqCst);
        if self.ctl.hang_writes.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        if self.ctl.always_conflict.load(Ordering::SeqCst) {
            return Err(StoreError::Conflict);
        }
        let r = self.inner.store(document, if_match).await;
        if self.ctl.hang_after_write.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        r
    }

    fn describe(&self) -> String {
        format!("wrap({})", self.inner.describe())
    }
}

fn temp_file(tag: &str) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "apikey-adv-{}-{}-{}",
        std::process::id(),
        tag,
        N.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("keys.json")
}

/// Two caches (A, B) over one shared store, each through its own wrapper.
fn pair_memory(
    cfg: CacheConfig,
) -> (
    MemoryStore,
    ApiKeyCache<Wrap<MemoryStore>>,
    ApiKeyCache<Wrap<MemoryStore>>,
) {
    let store = MemoryStore::new();
    let a = ApiKeyCache::new(Wrap::new(store.clone()), cfg.clone());
    let b = ApiKeyCache::new(Wrap::new(store.clone()), cfg);
    (store, a, b)
}

/// Two caches over two *distinct* FileStore values on one path (two processes).
fn pair_file(
    tag: &str,
    cfg: CacheConfig,
) -> (
    PathBuf,
    ApiKeyCache<Wrap<FileStore>>,
    ApiKeyCache<Wrap<FileStore>>,
) {
    let path = temp_file(tag);
    let a = ApiKeyCache::new(Wrap::new(FileStore::new(&path)), cfg.clone());
    let b = ApiKeyCache::new(Wrap::new(FileStore::new(&path)), cfg);
    (path, a, b)
}

fn doc_with_plain_key(account: &str, key_id: &str, plaintext: &str) -> KeyDocument {
    let mut doc = KeyDocument::empty();
    doc.accounts.insert(
        account.to_owned(),
        AccountRecord {
            name: account.to_owned(),
            created_unix: 1,
        },
    );
    doc.keys.insert(
        key_id.to_owned(),
        KeyRecord {
            account: account.to_owned(),
            sha256: KeyHash::of(plaintext).to_hex(),
            created_unix: 1,
            revoked_unix: None,
        },
    );
    doc
}

// ---------------------------------------------------------------------------------------------
// A1 / A2 / A3 / A7: two instances, memory and file
// ---------------------------------------------------------------------------------------------

async fn new_account_on_a_authenticates_on_b_first_try<S: KeyStore + Clone>(
    a: &ApiKeyCache<Wrap<S>>,
    b: &ApiKeyCache<Wrap<S>>,
) {
    // B is warm and holds the old (empty) table: the incident's situation.
    within(LOAD_TIMEOUT, "b.refresh", b.refresh())
        .await
        .unwrap();
    let account = a.create_account("acme", "Acme Ltd").await.unwrap();
    let issued = a.issue_key(&account).await.unwrap();
    // A sees its own write at once, without a load.
    let loads_a = a.store().loads();
    let id = a.authenticate(issued.secret.expose()).await.unwrap();
    assert_eq!(id.account.as_str(), "acme");
    assert_eq!(
        a.store().loads(),
        loads_a,
        "A3: local write visible without a reload"
    );
    // B: first try, via one miss reload.
    let before = b.store().loads();
    let t = Instant::now();
    let id = within(
        LOAD_TIMEOUT,
        "b.authenticate",
        b.authenticate(issued.secret.expose()),
    )
    .await
    .expect("A1: a key created on another instance is found on the first try");
    assert_eq!(id, issued.identity);
    assert_eq!(
        b.store().loads() - before,
        1,
        "A1: exactly one reload for the miss"
    );
    assert!(t.elapsed() < Duration::from_secs(1));
    // And again: now a hit, no load.
    b.authenticate(issued.secret.expose()).await.unwrap();
    assert_eq!(b.store().loads() - before, 1, "a hit needs no reload");
}

#[tokio::test(start_paused = true)]
async fn a1_memory_new_account_on_a_authenticates_on_b_first_try() {
    let (_s, a, b) = pair_memory(CacheConfig::default());
    new_account_on_a_authenticates_on_b_first_try(&a, &b).await;
}

#[tokio::test(start_paused = true)]
async fn a1_file_new_account_on_a_authenticates_on_b_first_try() {
    let (_p, a, b) = pair_file("a1", CacheConfig::default());
    new_account_on_a_authenticates_on_b_first_try(&a, &b).await;
}

/// B's miss reloads are spent (limiter empty): a key created on A must still be accepted on B
/// within one TTL (A2), via the TTL refresh.
#[tokio::test(start_paused = true)]
async fn a2_new_key_on_a_accepted_on_b_within_one_ttl_when_misses_are_limited() {
    let cfg = CacheConfig::default()
        .miss_reload_burst(1)
        .miss_reload_interval(Duration::from_secs(600));
    let (_s, a, b) = pair_memory(cfg);
    within(LOAD_TIMEOUT, "refresh", b.refresh()).await.unwrap();
    // spend B's only token
    assert!(matches!(
        b.authenticate("ak_spend_the_token").await,
        Err(AuthError::Unknown)
    ));
    let account = a.create_account("acme", "Acme").await.unwrap();
    let issued = a.issue_key(&account).await.unwrap();
    let first = b.authenticate(issued.secret.expose()).await;
    assert!(
        matches!(first, Ok(_) | Err(AuthError::Unknown)),
        "{first:?}"
    );
    // snapshot B confirmed at t=0; one TTL later it must be refreshed before use
    advance(TTL).await;
    let id = within(LOAD_TIMEOUT, "auth", b.authenticate(issued.secret.expose()))
        .await
        .expect("A2: within one TTL the other instance's key is accepted");
    assert_eq!(id.account.as_str(), "acme");
}

async fn revocation_on_a<S: KeyStore + Clone>(a: &ApiKeyCache<Wrap<S>>, b: &ApiKeyCache<Wrap<S>>) {
    let account = a.create_account("acme", "Acme").await.unwrap();
    let k1 = a.issue_key(&account).await.unwrap();
    let k2 = a.issue_key(&account).await.unwrap();
    b.authenticate(k1.secret.expose()).await.unwrap();
    b.authenticate(k2.secret.expose()).await.unwrap();
    let t0 = Instant::now();
    a.revoke_key(&k1.identity.key).await.unwrap();
    // A: at once
    assert!(matches!(
        a.authenticate(k1.secret.expose()).await,
        Err(AuthError::Revoked)
    ));
    a.authenticate(k2.secret.expose()).await.unwrap();
    // revoking again is idempotent
    a.revoke_key(&k1.identity.key).await.unwrap();
    // B: within one TTL of the revocation
    advance(TTL.saturating_sub(t0.elapsed())).await;
    let r = within(LOAD_TIMEOUT, "b auth", b.authenticate(k1.secret.expose())).await;
    assert!(
        matches!(r, Err(AuthError::Revoked)),
        "A2: revoked on B within one TTL: {r:?}"
    );
    b.authenticate(k2.secret.expose())
        .await
        .expect("the other key still works on B");
}

#[tokio::test(start_paused = true)]
async fn a2_memory_revocation_on_a_at_once_on_a_within_ttl_on_b() {
    let (_s, a, b) = pair_memory(CacheConfig::default());
    revocation_on_a(&a, &b).await;
}

#[tokio::test(start_paused = true)]
async fn a2_file_revocation_on_a_at_once_on_a_within_ttl_on_b() {
    let (_p, a, b) = pair_file("a2rev", CacheConfig::default());
    revocation_on_a(&a, &b).await;
}

async fn cross_instance_writes<S: KeyStore + Clone>(
    a: &ApiKeyCache<Wrap<S>>,
    b: &ApiKeyCache<Wrap<S>>,
) {
    // B warm before the account exists, so its snapshot lacks it.
    within(LOAD_TIMEOUT, "refresh", b.refresh()).await.unwrap();
    let acme = a.create_account("acme", "Acme").await.unwrap();
    let ka = a.issue_key(&acme).await.unwrap();
    // B issues for A's account at once (its snapshot lacks the account)
    let kb = within(WRITE_TIMEOUT, "b.issue_key", b.issue_key(&acme))
        .await
        .expect("A3: B issues a key for an account created on A");
    assert_eq!(kb.identity.account.as_str(), "acme");
    b.authenticate(kb.secret.expose()).await.unwrap();
    // B creating the same account: AccountExists even if its snapshot were stale
    let r = b.create_account("acme", "again").await;
    assert!(matches!(r, Err(WriteError::AccountExists)), "{r:?}");
    // A creates another key; B (stale) revokes it at once
    let ka2 = a.issue_key(&acme).await.unwrap();
    within(WRITE_TIMEOUT, "b.revoke", b.revoke_key(&ka2.identity.key))
        .await
        .expect("A3: B revokes a key issued on A");
    assert!(matches!(
        b.authenticate(ka2.secret.expose()).await,
        Err(AuthError::Revoked)
    ));
    // A's first key untouched everywhere; B's key valid on A
    b.authenticate(ka.secret.expose()).await.unwrap();
    a.authenticate(kb.secret.expose()).await.unwrap();
    // A sees B's revocation within one TTL
    advance(TTL).await;
    assert!(matches!(
        a.authenticate(ka2.secret.expose()).await,
        Err(AuthError::Revoked)
    ));
    // after two TTLs, still consistent
    advance(TTL).await;
    let c = a.create_account("beta", "Beta").await.unwrap();
    let kc = b.issue_key(&c).await.unwrap();
    a.authenticate(kc.secret.expose()).await.unwrap();
    b.revoke_key(&ka.identity.key).await.unwrap();
    assert!(matches!(
        b.authenticate(ka.secret.expose()).await,
        Err(AuthError::Revoked)
    ));
}

#[tokio::test(start_paused = true)]
async fn a3_memory_cross_instance_issue_and_revoke() {
    let (_s, a, b) = pair_memory(CacheConfig::default());
    cross_instance_writes(&a, &b).await;
}

#[tokio::test(start_paused = true)]
async fn a3_file_cross_instance_issue_and_revoke() {
    let (_p, a, b) = pair_file("a3x", CacheConfig::default());
    cross_instance_writes(&a, &b).await;
}

async fn no_such_only_when_store_lacks<S: KeyStore + Clone>(
    a: &ApiKeyCache<Wrap<S>>,
    b: &ApiKeyCache<Wrap<S>>,
) {
    let acme = a.create_account("acme", "Acme").await.unwrap();
    let _k = a.issue_key(&acme).await.unwrap();
    within(LOAD_TIMEOUT, "refresh", b.refresh()).await.unwrap();
    let r = b.issue_key(&AccountId::new("nope")).await;
    assert!(matches!(r, Err(WriteError::NoSuchAccount)), "{r:?}");
    let r = b.revoke_key(&KeyId::new("key_0000000000000000")).await;
    assert!(matches!(r, Err(WriteError::NoSuchKey)), "{r:?}");
    let r = a.issue_key(&AccountId::new("nope")).await;
    assert!(matches!(r, Err(WriteError::NoSuchAccount)), "{r:?}");
    let r = a.revoke_key(&KeyId::new("key_ffffffffffffffff")).await;
    assert!(matches!(r, Err(WriteError::NoSuchKey)), "{r:?}");
    // an invalid account id is refused without writing
    let w = a.store().writes_started() + b.store().writes_started();
    for bad in [
        "",
        " ",
        "a b",
        "é",
        "a/b",
        &"x".repeat(65),
        "acme\n",
        "ac:me",
    ] {
        let r = a.create_account(bad, "x").await;
        assert!(
            matches!(r, Err(WriteError::InvalidAccountId)),
            "{bad:?}: {r:?}"
        );
    }
    assert_eq!(a.store().writes_started() + b.store().writes_started(), w);
    // 64 chars of the allowed alphabet are fine
    let ok = "aZ0._-".repeat(11)[..64].to_owned();
    a.create_account(&ok, "long").await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a3_memory_no_such_only_when_store_lacks() {
    let (_s, a, b) = pair_memory(CacheConfig::default());
    no_such_only_when_store_lacks(&a, &b).await;
}

#[tokio::test(start_paused = true)]
async fn a3_file_no_such_only_when_store_lacks() {
    let (_p, a, b) = pair_file("nosuch", CacheConfig::default());
    no_such_only_when_store_lacks(&a, &b).await;
}

/// Concurrent writes from A and B: optimistic concurrency must lose nothing.
async fn concurrent_writes<S: KeyStore + Clone>(
    a: ApiKeyCache<Wrap<S>>,
    b: ApiKeyCache<Wrap<S>>,
    n: usize,
) {
    let acme = a.create_account("acme", "Acme").await.unwrap();
    within(LOAD_TIMEOUT, "refresh", b.refresh()).await.unwrap();
    // one on each, simultaneously: both must succeed (conflict → re-load, re-apply, re-write)
    let (ra, rb) = tokio::join!(a.issue_key(&acme), b.issue_key(&acme));
    let (ka, kb) = (ra.unwrap(), rb.unwrap());
    // many on each
    let mut set = JoinSet::new();
    for i in 0..n {
        let c = if i % 2 == 0 { a.clone() } else { b.clone() };
        let acc = acme.clone();
        set.spawn(async move { c.issue_key(&acc).await });
    }
    let mut issued = vec![ka, kb];
    let mut contended = 0;
    while let Some(r) = set.join_next().await {
        match r.unwrap() {
            Ok(k) => issued.push(k),
            Err(WriteError::Contended { .. }) => contended += 1,
            Err(e) => panic!("unexpected write error: {e:?}"),
        }
    }
    // also: both create distinct accounts concurrently
    let (x, y) = tokio::join!(a.create_account("x1", "X"), b.create_account("y1", "Y"));
    x.unwrap();
    y.unwrap();
    // every key that was reported stored authenticates on both instances after one TTL
    advance(TTL).await;
    for k in &issued {
        a.authenticate(k.secret.expose())
            .await
            .expect("lost update: key missing on A");
        b.authenticate(k.secret.expose())
            .await
            .expect("lost update: key missing on B");
    }
    assert!(b.issue_key(&AccountId::new("x1")).await.is_ok());
    assert!(a.issue_key(&AccountId::new("y1")).await.is_ok());
    assert_eq!(a.stats().keys as usize, issued.len() + 2);
    assert!(contended <= n / 2, "too many Contended: {contended}/{n}");
}

#[tokio::test(start_paused = true)]
async fn a7_memory_concurrent_writes_no_lost_update() {
    let (store, a, b) = pair_memory(CacheConfig::default());
    store.set_latency(Duration::from_millis(10));
    concurrent_writes(a, b, 20).await;
    let doc = store.document().unwrap();
    assert_eq!(doc.accounts.len(), 3);
}

#[tokio::test(start_paused = true)]
async fn a7_file_concurrent_writes_no_lost_update() {
    let (path, a, b) = pair_file("cw", CacheConfig::default());
    concurrent_writes(a, b, 10).await;
    let doc = KeyDocument::from_json(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(doc.accounts.len(), 3);
}

// ---------------------------------------------------------------------------------------------
// A4 / A5: single-flight and flood
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a4_concurrent_misses_of_one_new_key_share_one_read() {
    let (store, a, b) = pair_memory(CacheConfig::default());
    store.set_latency(Duration::from_millis(100));
    within(LOAD_TIMEOUT, "refresh", b.refresh()).await.unwrap();
    let acme = a.create_account("acme", "Acme").await.unwrap();
    let k = a.issue_key(&acme).await.unwrap();
    let before = b.store().loads();
    let mut set = JoinSet::new();
    for _ in 0..500 {
        let b = b.clone();
        let s = k.secret.clone();
        set.spawn(async move { b.authenticate(s.expose()).await });
    }
    while let Some(r) = set.join_next().await {
        r.unwrap()
            .expect("every concurrent miss of the new key is accepted");
    }
    assert_eq!(
        b.store().loads() - before,
        1,
        "A4: one store read for 500 concurrent misses"
    );
}

#[tokio::test(start_paused = true)]
async fn a4_concurrent_requests_on_stale_snapshot_share_one_read() {
    let (store, a, b) = pair_memory(CacheConfig::default());
    store.set_latency(Duration::from_millis(100));
    let acme = a.create_account("acme", "Acme").await.unwrap();
    let k = a.issue_key(&acme).await.unwrap();
    b.authenticate(k.secret.expose()).await.unwrap();
    advance(TTL + Duration::from_secs(1)).await;
    let before = b.store().loads();
    let mut set = JoinSet::new();
    for _ in 0..300 {
        let b = b.clone();
        let s = k.secret.clone();
        set.spawn(async move { b.authenticate(s.expose()).await });
    }
    while let Some(r) = set.join_next().await {
        r.unwrap().unwrap();
    }
    assert_eq!(
        b.store().loads() - before,
        1,
        "A4: one read for all stale requests"
    );
}

/// A cancelled leader hands over to a waiter (A4): aborting the first miss must not leave
/// the other waiters hanging or failing.
#[tokio::test(start_paused = true)]
async fn a4_cancelled_leader_hands_over() {
    let (store, a, b) = pair_memory(CacheConfig::default());
    within(LOAD_TIMEOUT, "refresh", b.refresh()).await.unwrap();
    let acme = a.create_account("acme", "Acme").await.unwrap();
    let k = a.issue_key(&acme).await.unwrap();
    store.set_latency(Duration::from_secs(1));
    let leader = {
        let b = b.clone();
        let s = k.secret.clone();
        tokio::spawn(async move { b.authenticate(s.expose()).await })
    };
    tokio::task::yield_now().await;
    let waiter = {
        let b = b.clone();
        let s = k.secret.clone();
        tokio::spawn(async move { b.authenticate(s.expose()).await })
    };
    tokio::task::yield_now().await;
    advance(Duration::from_millis(300)).await;
    leader.abort();
    let r = within(LOAD_TIMEOUT, "waiter", waiter).await.unwrap();
    assert!(r.is_ok(), "waiter after cancelled leader: {r:?}");
    // and the cache keeps working
    within(LOAD_TIMEOUT, "again", b.authenticate(k.secret.expose()))
        .await
        .unwrap();
}

#[tokio::test(start_paused = true)]
async fn a5_flood_of_random_unknown_keys_is_bounded_in_store_reads() {
    let (store, a, b) = pair_memory(CacheConfig::default());
    store.set_latency(Duration::from_millis(5));
    let acme = a.create_account("acme", "Acme").await.unwrap();
    let good = a.issue_key(&acme).await.unwrap();
    b.authenticate(good.secret.expose()).await.unwrap();
    let before = b.store().loads();
    let t0 = Instant::now();
    // 10 s: 1000 distinct unknown keys per second, in bursts of 100 concurrent requests
    for sec in 0..10u64 {
        for burst in 0..10u64 {
            let mut set = JoinSet::new();
            for i in 0..100u64 {
                let b = b.clone();
                let key = format!(
                    "ak_flood_{sec}_{burst}_{i}_{:016x}",
                    sec * 7919 + i * 104729
                );
                set.spawn(async move { b.authenticate(&key).await });
            }
            // a valid key among them, answered
            b.authenticate(good.secret.expose())
                .await
                .expect("valid key during the flood");
            while let Some(r) = set.join_next().await {
                let r = r.unwrap();
                assert!(matches!(r, Err(AuthError::Unknown)), "{r:?}");
            }
            advance(Duration::from_millis(100)).await;
        }
    }
    let secs = t0.elapsed().as_secs() + 1;
    let reads = b.store().loads() - before;
    assert!(
        reads <= 2 + secs,
        "A5: {reads} store reads for a 10 s flood (allowed {})",
        2 + secs
    );
    let st = b.stats();
    assert!(st.negative_entries <= 10_000);
}

/// Valid keys are never held behind a miss reload in flight (a hit needs no lock).
#[tokio::test(start_paused = true)]
async fn a5_hits_not_delayed_by_a_miss_reload_in_flight() {
    let (store, a, b) = pair_memory(CacheConfig::default());
    let acme = a.create_account("acme", "Acme").await.unwrap();
    let good = a.issue_key(&acme).await.unwrap();
    b.authenticate(good.secret.expose()).await.unwrap();
    store.set_latency(Duration::from_secs(2));
    let miss = {
        let b = b.clone();
        tokio::spawn(async move { b.authenticate("ak_not_a_key_at_all").await })
    };
    tokio::task::yield_now().await;
    advance(Duration::from_millis(10)).await;
    let t = Instant::now();
    b.authenticate(good.secret.expose()).await.unwrap();
    assert_eq!(t.elapsed(), Duration::ZERO, "hit waited for a miss reload");
    let r = within(LOAD_TIMEOUT, "miss", miss).await.unwrap();
    assert!(matches!(r, Err(AuthError::Unknown)), "{r:?}");
}

/// A key used before it existed is negatively cached; that must not shadow it once the
/// snapshot knows it (snapshot first), and not beyond negative_ttl.
#[tokio::test(start_paused = true)]
async fn a5_negative_cache_never_shadows_a_real_key() {
    let store = MemoryStore::new();
    let cfg = CacheConfig::default()
        .ttl(Duration::from_secs(5))
        .negative_ttl(Duration::from_secs(60));
    let b = ApiKeyCache::new(Wrap::new(store.clone()), cfg);
    let plain = "ak_preknown_key_used_before_it_was_created_0001";
    let r = b.authenticate(plain).await;
    assert!(matches!(r, Err(AuthError::Unknown)), "{r:?}");
    assert!(b.stats().negative_entries >= 1 || b.stats().miss_reloads_limited >= 1);
    // another instance creates it (out of band)
    store.set_document(doc_with_plain_key("acme", "key_00000000000000aa", plain));
    // after one TTL the refreshed snapshot knows it: the negative entry must not shadow it
    advance(Duration::from_secs(5)).await;
    let r = within(LOAD_TIMEOUT, "auth", b.authenticate(plain)).await;
    assert_eq!(
        r.expect("negative cache shadowed a key the snapshot knows")
            .key
            .as_str(),
        "key_00000000000000aa"
    );
}

#[tokio::test(start_paused = true)]
async fn a5_negative_entry_expires_after_negative_ttl() {
    let store = MemoryStore::new();
    let cfg = CacheConfig::default().negative_ttl(Duration::from_secs(10));
    let b = ApiKeyCache::new(Wrap::new(store.clone()), cfg);
    let plain = "ak_preknown_key_used_before_it_was_created_0002";
    assert!(matches!(
        b.authenticate(plain).await,
        Err(AuthError::Unknown)
    ));
    store.set_document(doc_with_plain_key("acme", "key_00000000000000ab", plain));
    advance(Duration::from_secs(11)).await;
    within(LOAD_TIMEOUT, "auth", b.authenticate(plain))
        .await
        .expect("unknown key remembered beyond negative_ttl");
}

/// Malformed input never reaches the store (A5) and is AuthError::Malformed.
#[tokio::test(start_paused = true)]
async fn a5_malformed_keys_never_reach_the_store() {
    let (_s, a, _b) = pair_memory(CacheConfig::default());
    let huge = "a".repeat(1 << 20);
    let over = "a".repeat(257);
    let cases: Vec<&str> = vec![
        "",
        " ",
        "\t",
        "ak_ has space",
        "ключ",
        "ak_\u{0}",
        "ak_\u{7f}",
        "ak_é",
        &over,
        &huge,
        "\r\n",
    ];
    for c in &cases {
        let r = a.authenticate(c).await;
        assert!(
            matches!(r, Err(AuthError::Malformed) | Err(AuthError::Missing)),
            "{:?}: {r:?}",
            &c[..c.len().min(20)]
        );
    }
    assert_eq!(a.store().loads(), 0, "malformed input caused a store read");
    assert!(a.stats().rejected_malformed >= cases.len() as u64 - 1);
    // exactly 256 visible-ASCII bytes is not malformed
    let max = "b".repeat(256);
    let r = a.authenticate(&max).await;
    assert!(matches!(r, Err(AuthError::Unknown)), "256-byte key: {r:?}");
}

// ---------------------------------------------------------------------------------------------
// A9: hung / failing store
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a9_hung_load_known_keys_answered_unknown_get_prompt_unavailable() {
    let (_s, a, b) = pair_memory(CacheConfig::default());
    let acme = a.create_account("acme", "Acme").await.unwrap();
    let k = a.issue_key(&acme).await.unwrap();
    b.authenticate(k.secret.expose()).await.unwrap();
    b.store().hang_loads(true);
    // unknown key with a fresh snapshot: miss reload hangs → Unavailable within load_timeout
    let t = Instant::now();
    let r = within(
        LOAD_TIMEOUT + SLACK,
        "unknown",
        b.authenticate("ak_unknown_while_hung_1"),
    )
    .await;
    assert!(matches!(r, Err(AuthError::Unavailable { .. })), "{r:?}");
    assert!(t.elapsed() <= LOAD_TIMEOUT);
    assert!(b.stats().store_timeouts >= 1);
    // known key at once
    let t = Instant::now();
    b.authenticate(k.secret.expose()).await.unwrap();
    assert_eq!(t.elapsed(), Duration::ZERO);
    // past the TTL: the first refresh may cost ≤ load_timeout, later ones nothing
    advance(TTL).await;
    let t = Instant::now();
    within(
        LOAD_TIMEOUT + SLACK,
        "known at ttl",
        b.authenticate(k.secret.expose()),
    )
    .await
    .expect("known key answered from the previous snapshot");
    assert!(t.elapsed() <= LOAD_TIMEOUT);
    for _ in 0..5 {
        let t = Instant::now();
        b.authenticate(k.secret.expose()).await.unwrap();
        assert_eq!(
            t.elapsed(),
            Duration::ZERO,
            "known key waited again for a hung store"
        );
        advance(Duration::from_secs(3)).await;
    }
    let st = b.stats();
    assert!(st.serving_previous_snapshot);
    assert!(st.stale_served >= 1);
    assert!(st.store_timeouts >= 2);
    // unknown keys, stale snapshot, hung store: still a prompt Unavailable (never a hang)
    let t = Instant::now();
    let r = within(
        LOAD_TIMEOUT + SLACK,
        "unknown2",
        b.authenticate("ak_unknown_while_hung_2"),
    )
    .await;
    assert!(
        matches!(
            r,
            Err(AuthError::Unavailable { .. }) | Err(AuthError::Unknown)
        ),
        "{r:?}"
    );
    assert!(t.elapsed() <= LOAD_TIMEOUT);
    // store comes back: fresh snapshot again
    b.store().hang_loads(false);
    advance(Duration::from_secs(2)).await;
    within(LOAD_TIMEOUT, "refresh", b.refresh()).await.unwrap();
    assert!(!b.stats().serving_previous_snapshot);
}

#[tokio::test(start_paused = true)]
async fn a9_hung_store_never_loaded_unavailable_and_503() {
    let store = Wrap::new(MemoryStore::new());
    store.hang_loads(true);
    let c = ApiKeyCache::new(store, CacheConfig::default());
    let t = Instant::now();
    let r = within(LOAD_TIMEOUT + SLACK, "auth", c.authenticate("ak_anything")).await;
    assert!(
        matches!(r, Err(AuthError::Unavailable { .. })),
        "never a false 401: {r:?}"
    );
    assert!(t.elapsed() <= LOAD_TIMEOUT);
    // layer: 503 + retry-after: 1
    let app = Router::new()
        .route("/", get(|| async { "ok" }))
        .layer(ApiKeyLayer::new(c.clone()));
    let req = Request::get("/")
        .header("x-api-key", "ak_other")
        .body(Body::empty())
        .unwrap();
    let t = Instant::now();
    let resp = within(LOAD_TIMEOUT + SLACK, "layer", app.oneshot(req))
        .await
        .unwrap();
    assert!(t.elapsed() <= LOAD_TIMEOUT);
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(resp.headers().get("retry-after").unwrap(), "1");
}

#[tokio::test(start_paused = true)]
async fn a9_hung_write_blocks_neither_hits_refreshes_nor_miss_reloads() {
    let (_s, a, b) = pair_memory(CacheConfig::default());
    let acme = a.create_account("acme", "Acme").await.unwrap();
    let k = a.issue_key(&acme).await.unwrap();
    a.store().hang_writes(true);
    let t0 = Instant::now();
    let write = {
        let a = a.clone();
        let acme = acme.clone();
        tokio::spawn(async move { a.issue_key(&acme).await })
    };
    tokio::task::yield_now().await;
    advance(Duration::from_millis(100)).await;
    // a second local write queues behind; spawn it too
    let write2 = {
        let a = a.clone();
        tokio::spawn(async move { a.create_account("queued", "Q").await })
    };
    // hits
    let t = Instant::now();
    a.authenticate(k.secret.expose()).await.unwrap();
    assert_eq!(t.elapsed(), Duration::ZERO);
    // explicit reload
    within(
        Duration::from_secs(1),
        "refresh during hung write",
        a.refresh(),
    )
    .await
    .unwrap();
    // miss reload: a key created on B meanwhile
    let kb = b.issue_key(&acme).await.unwrap();
    within(
        Duration::from_secs(1),
        "miss reload during hung write",
        a.authenticate(kb.secret.expose()),
    )
    .await
    .unwrap();
    // revocation from B seen via TTL refresh during the hung write
    b.revoke_key(&kb.identity.key).await.unwrap();
    advance(Duration::from_secs(5)).await; // t0 + ~5.1 s, write still hanging
    assert!(!write.is_finished());
    // the write ends at write_timeout with Store(TimedOut)
    let r = within(WRITE_TIMEOUT, "hung write", write).await.unwrap();
    let el = t0.elapsed();
    assert!(
        el >= WRITE_TIMEOUT && el <= WRITE_TIMEOUT + SLACK,
        "elapsed {el:?}"
    );
    match r {
        Err(WriteError::Store { source }) => {
            assert!(matches!(*source, StoreError::TimedOut { .. }), "{source:?}")
        }
        other => panic!("expected WriteError::Store(TimedOut), got {other:?}"),
    }
    assert!(a.stats().store_timeouts >= 1);
    a.store().hang_writes(false);
    // the queued write: it either timed out too or went through, but it finishes
    let r2 = within(WRITE_TIMEOUT + SLACK, "queued write", write2)
        .await
        .unwrap();
    assert!(
        matches!(r2, Ok(_) | Err(WriteError::Store { .. })),
        "{r2:?}"
    );
    // the cache still writes afterwards
    within(WRITE_TIMEOUT, "write after", a.issue_key(&acme))
        .await
        .unwrap();
}

#[tokio::test(start_paused = true)]
async fn a9_failing_store_keeps_previous_snapshot_and_says_so() {
    let (_s, a, b) = pair_memory(CacheConfig::default());
    let acme = a.create_account("acme", "Acme").await.unwrap();
    let k = a.issue_key(&acme).await.unwrap();
    b.authenticate(k.secret.expose()).await.unwrap();
    let keys_before = b.stats().keys;
    b.store().fail_loads(true);
    let r = b.refresh().await;
    assert!(r.is_err());
    let st = b.stats();
    assert!(st.reload_failures >= 1);
    assert!(st.serving_previous_snapshot);
    assert!(st.last_reload_error.is_some());
    assert_eq!(
        st.keys, keys_before,
        "A9: failed reload kept the previous table"
    );
    b.authenticate(k.secret.expose())
        .await
        .expect("A9: previous snapshot answers");
    // a miss during the failure: Unavailable (never a false Unknown from a failed reload)
    let r = b.authenticate("ak_unknown_during_failure").await;
    assert!(matches!(r, Err(AuthError::Unavailable { .. })), "{r:?}");
    // past TTL: stale served, counted
    advance(TTL + Duration::from_secs(1)).await;
    b.authenticate(k.secret.expose())
        .await
        .expect("stale snapshot answers");
    assert!(b.stats().stale_served >= 1);
    // recovery
    b.store().fail_loads(false);
    advance(Duration::from_secs(2)).await;
    b.refresh().await.unwrap();
    let st = b.stats();
    assert!(!st.serving_previous_snapshot);
    assert!(st.last_reload_error.is_none());
}

#[tokio::test(start_paused = true)]
async fn a9_corrupt_file_keeps_previous_snapshot() {
    let path = temp_file("corrupt");
    let c = ApiKeyCache::new(FileStore::new(&path), CacheConfig::default());
    let acme = c.create_account("acme", "Acme").await.unwrap();
    let k = c.issue_key(&acme).await.unwrap();
    std::fs::write(&path, b"{ this is not json").unwrap();
    let r = c.refresh().await;
    assert!(
        matches!(
            r.as_ref().map_err(|e| &**e),
            Err(StoreError::Corrupt { .. })
        ),
        "{r:?}"
    );
    c.authenticate(k.secret.expose()).await.unwrap();
    assert!(c.stats().serving_previous_snapshot);
    assert_eq!(c.stats().keys, 1);
    // a write over a corrupt document fails cleanly (no panic, no silent overwrite of nothing)
    let w = c.issue_key(&acme).await;
    assert!(w.is_err() || w.is_ok());
}

/// Snapshots never go backwards: a slow load that read the document *before* a local
/// revocation must not reinstate the revoked key after the revocation was installed.
#[tokio::test(start_paused = true)]
async fn a9_slow_overlapping_load_does_not_undo_local_revocation() {
    let (store, a, b) = pair_memory(CacheConfig::default());
    let acme = a.create_account("acme", "Acme").await.unwrap();
    let k = a.issue_key(&acme).await.unwrap();
    b.authenticate(k.secret.expose()).await.unwrap();
    // A changes the document so B's next load brings a new version (with k valid)
    let _other = a.issue_key(&acme).await.unwrap();
    // B's loads now read, then take 3 s to answer
    b.store().post_load_delay(Duration::from_secs(3));
    let load = {
        let b = b.clone();
        tokio::spawn(async move { b.refresh().await })
    };
    tokio::task::yield_now().await;
    advance(Duration::from_millis(100)).await;
    b.store().post_load_delay(Duration::ZERO);
    // B revokes k while the stale load is in flight
    within(WRITE_TIMEOUT, "revoke", b.revoke_key(&k.identity.key))
        .await
        .unwrap();
    let _ = within(LOAD_TIMEOUT, "load", load).await.unwrap();
    let r = b.authenticate(k.secret.expose()).await;
    assert!(
        matches!(r, Err(AuthError::Revoked)),
        "snapshot went backwards: {r:?}"
    );
    assert!(
        store.document().unwrap().keys[k.identity.key.as_str()]
            .revoked_unix
            .is_some()
    );
}

// ---------------------------------------------------------------------------------------------
// A6: no plaintext anywhere
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a6_plaintext_never_in_store_debug_or_errors() {
    let path = temp_file("a6");
    let fc = ApiKeyCache::new(FileStore::new(&path), CacheConfig::default());
    let (store, a, b) = pair_memory(CacheConfig::default());
    let acme = a.create_account("acme", "Acme").await.unwrap();
    let k = a.issue_key(&acme).await.unwrap();
    let facme = fc.create_account("acme", "Acme").await.unwrap();
    let fk = fc.issue_key(&facme).await.unwrap();
    let secret = k.secret.expose().to_owned();
    assert!(secret.starts_with("ak_"));
    assert!(format!("{:?}", k.secret).contains("<redacted>"));
    b.authenticate(&secret).await.unwrap();
    a.revoke_key(&k.identity.key).await.unwrap();
    let revoked = a.authenticate(&secret).await.unwrap_err();
    let doc_json = String::from_utf8(store.document().unwrap().to_json()).unwrap();
    assert!(doc_json.contains(&k.secret.hash().to_hex()));
    let file = std::fs::read_to_string(&path).unwrap();
    let fsecret = fk.secret.expose();
    // error paths with the key
    b.store().fail_loads(true);
    let unavailable = b
        .authenticate("ak_unknown_secret_value_123456")
        .await
        .unwrap_err();
    b.store().fail_loads(false);
    let texts = vec![
        doc_json.clone(),
        format!("{:?}", store.document()),
        format!("{k:?}"),
        format!("{:?}", k.identity),
        format!("{a:?}"),
        format!("{b:?}"),
        format!("{:?}", a.stats()),
        format!("{:?}", b.stats()),
        format!("{revoked:?} {revoked}"),
        format!("{unavailable:?} {unavailable}"),
        format!("{:?}", k.secret.hash()),
        format!("{:?}", fc),
        format!("{:?}", store),
    ];
    for t in &texts {
        assert!(!t.contains(&secret), "plaintext leaked: {t}");
        assert!(!t.contains(&secret[3..20]), "part of plaintext leaked: {t}");
        assert!(
            !t.contains("ak_unknown_secret_value_123456"),
            "presented key leaked: {t}"
        );
    }
    assert!(
        !file.contains(fsecret) && !file.contains(&fsecret[3..]),
        "plaintext in the key file"
    );
    assert!(file.contains(&fk.secret.hash().to_hex()));
    assert!(!format!("{:?}", fc.stats()).contains(fsecret));
    // keys are unique and long enough
    let k2 = a.issue_key(&acme).await.unwrap();
    assert_ne!(k2.secret.expose(), secret);
    assert_ne!(k2.identity.key, k.identity.key);
    assert!(
        secret.len() >= 3 + 43,
        "256-bit base64url: {}",
        secret.len()
    );
}

// ---------------------------------------------------------------------------------------------
// A8: the layer
// ---------------------------------------------------------------------------------------------

async fn call(
    app: &Router,
    headers: &[(&str, HeaderValue)],
) -> (StatusCode, http::HeaderMap, String) {
    let mut req = Request::get("/who");
    for (n, v) in headers {
        req = req.header(*n, v.clone());
    }
    let resp = within(
        LOAD_TIMEOUT + SLACK,
        "layer call",
        app.clone().oneshot(req.body(Body::empty()).unwrap()),
    )
    .await
    .unwrap();
    let status = resp.status();
    let h = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, h, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test(start_paused = true)]
async fn a8_layer_malformed_headers_clean_401_never_panic() {
    let (_s, a, b) = pair_memory(CacheConfig::default());
    let acme = a.create_account("acme", "Acme").await.unwrap();
    let k = a.issue_key(&acme).await.unwrap();
    let k2 = a.issue_key(&acme).await.unwrap();
    a.revoke_key(&k2.identity.key).await.unwrap();
    let app = Router::new()
        .route(
            "/who",
            get(
                |Extension(id): Extension<Identity>, req: Request<Body>| async move {
                    let leaked = req.headers().contains_key("x-api-key");
                    format!("{}:{}:{leaked}", id.account.as_str(), id.key.as_str())
                },
            ),
        )
        .layer(ApiKeyLayer::new(b.clone()));
    // accepted: identity and header stripped
    let v = HeaderValue::from_str(k.secret.expose()).unwrap();
    let (st, _, body) = call(&app, &[("x-api-key", v.clone())]).await;
    assert_eq!(st, StatusCode::OK, "{body}");
    assert_eq!(body, format!("acme:{}:false", k.identity.key.as_str()));
    // header name case-insensitive
    let (st, _, _) = call(&app, &[("X-API-KEY", v.clone())]).await;
    assert_eq!(st, StatusCode::OK);

    let huge = HeaderValue::from_str(&"k".repeat(64 * 1024)).unwrap();
    let cases: Vec<(&str, Vec<(&str, HeaderValue)>)> = vec![
        ("missing", vec![]),
        ("empty", vec![("x-api-key", HeaderValue::from_static(""))]),
        (
            "blank",
            vec![("x-api-key", HeaderValue::from_static("   "))],
        ),
        ("huge", vec![("x-api-key", huge)]),
        (
            "non-ascii utf8",
            vec![(
                "x-api-key",
                HeaderValue::from_bytes("ak_ключ".as_bytes()).unwrap(),
            )],
        ),
        (
            "non-utf8",
            vec![(
                "x-api-key",
                HeaderValue::from_bytes(&[b'a', b'k', 0xff, 0xfe]).unwrap(),
            )],
        ),
        (
            "tab inside",
            vec![("x-api-key", HeaderValue::from_bytes(b"ak_a\tb").unwrap())],
        ),
        (
            "repeated valid",
            vec![("x-api-key", v.clone()), ("x-api-key", v.clone())],
        ),
        (
            "repeated valid+bad",
            vec![
                ("x-api-key", v.clone()),
                ("x-api-key", HeaderValue::from_static("x")),
            ],
        ),
        (
            "repeated bad+valid",
            vec![
                ("x-api-key", HeaderValue::from_static("x")),
                ("x-api-key", v.clone()),
            ],
        ),
        (
            "repeated empty+valid",
            vec![
                ("x-api-key", HeaderValue::from_static("")),
                ("x-api-key", v.clone()),
            ],
        ),
        (
            "unknown",
            vec![(
                "x-api-key",
                HeaderValue::from_static("ak_definitely_unknown_0001"),
            )],
        ),
        (
            "revoked",
            vec![(
                "x-api-key",
                HeaderValue::from_str(k2.secret.expose()).unwrap(),
            )],
        ),
        ("authorization only", vec![("authorization", v.clone())]),
    ];
    let mut bodies = std::collections::HashMap::new();
    for (name, hs) in &cases {
        let (st, h, body) = call(&app, hs).await;
        assert_eq!(st, StatusCode::UNAUTHORIZED, "{name}: {body}");
        let ct = h
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        assert!(
            ct.starts_with("application/json"),
            "{name}: content-type {ct:?}"
        );
        let j: serde_json::Value =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("{name}: {e}: {body}"));
        assert!(
            j["error"].is_string() && j["message"].is_string(),
            "{name}: {body}"
        );
        assert!(!body.contains(k.secret.expose()), "{name}: key in body");
        assert!(
            !body.contains("ak_definitely_unknown_0001"),
            "{name}: presented key in body"
        );
        if name.starts_with("repeated") {
            assert_eq!(j["error"], "malformed_api_key", "{name}: {body}");
        }
        bodies.insert(*name, body);
    }
    assert_eq!(bodies.len(), cases.len());
}

/// ApiKeyLayer rustdoc: "Unknown and revoked keys share one code, so a response never tells
/// whether a guessed key existed." docs: the attacker "cannot learn whether a guessed key
/// exists: unknown and revoked keys share one response code".
#[tokio::test(start_paused = true)]

async fn a8_unknown_and_revoked_responses_indistinguishable() {
    let (_s, a, _b) = pair_memory(CacheConfig::default());
    let acme = a.create_account("acme", "Acme").await.unwrap();
    let k = a.issue_key(&acme).await.unwrap();
    a.revoke_key(&k.identity.key).await.unwrap();
    let app = Router::new()
        .route("/who", get(|| async { "ok" }))
        .layer(ApiKeyLayer::new(a.clone()));
    let (s1, h1, unknown) = call(
        &app,
        &[(
            "x-api-key",
            HeaderValue::from_static("ak_definitely_unknown_0001"),
        )],
    )
    .await;
    let (s2, h2, revoked) = call(
        &app,
        &[(
            "x-api-key",
            HeaderValue::from_str(k.secret.expose()).unwrap(),
        )],
    )
    .await;
    assert_eq!(
        (s1, s2),
        (StatusCode::UNAUTHORIZED, StatusCode::UNAUTHORIZED)
    );
    assert_eq!(h1.get("content-type"), h2.get("content-type"));
    assert_eq!(
        unknown, revoked,
        "a response tells whether a guessed key existed"
    );
}

// ---------------------------------------------------------------------------------------------
// X5: config extremes
// ---------------------------------------------------------------------------------------------

#[test]
fn x5_builders_clamp_to_documented_ranges() {
    let d = CacheConfig::default;
    let ms = Duration::from_millis;
    let s = Duration::from_secs;
    assert_eq!(d().ttl(Duration::ZERO), d().ttl(ms(1)));
    assert_eq!(d().ttl(Duration::MAX), d().ttl(s(3600)));
    assert_eq!(
        d().miss_reload_interval(Duration::ZERO),
        d().miss_reload_interval(ms(1))
    );
    assert_eq!(
        d().miss_reload_interval(Duration::MAX),
        d().miss_reload_interval(s(600))
    );
    assert_eq!(d().negative_ttl(Duration::MAX), d().negative_ttl(s(3600)));
    assert_eq!(d().load_timeout(Duration::ZERO), d().load_timeout(ms(1)));
    assert_eq!(d().load_timeout(Duration::MAX), d().load_timeout(s(600)));
    assert_eq!(d().write_timeout(Duration::ZERO), d().write_timeout(ms(1)));
    assert_eq!(d().write_timeout(Duration::MAX), d().write_timeout(s(600)));
    assert_eq!(d().retry_backoff(Duration::MAX), d().retry_backoff(s(600)));
    assert_eq!(d().miss_reload_burst(0), d().miss_reload_burst(1));
    assert_eq!(d().miss_reload_burst(u32::MAX), d().miss_reload_burst(1000));
    assert_eq!(d().write_attempts(0), d().write_attempts(1));
    assert_eq!(d().write_attempts(u32::MAX), d().write_attempts(1000));
    // defaults are the documented ones
    assert_eq!(
        d(),
        d().ttl(s(30))
            .miss_reload_interval(s(1))
            .negative_ttl(s(10))
            .negative_capacity(10_000)
            .load_timeout(s(5))
            .write_timeout(s(10))
            .miss_reload_burst(2)
            .retry_backoff(s(1))
            .write_attempts(5)
    );
}

#[test]
fn x5_from_lookup_clamps_and_ignores_garbage() {
    let cfg = |pairs: &'static [(&'static str, &'static str)]| {
        CacheConfig::from_lookup(move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| (*v).to_owned())
        })
    };
    assert_eq!(cfg(&[]), CacheConfig::default());
    let garbage: &'static [(&str, &str)] = &[
        ("APIKEY_CACHE_TTL_SECONDS", "abc"),
        ("APIKEY_CACHE_MISS_RELOAD_INTERVAL_MS", "-1"),
        ("APIKEY_CACHE_NEGATIVE_TTL_SECONDS", "1e3"),
        (
            "APIKEY_CACHE_NEGATIVE_CAPACITY",
            "99999999999999999999999999",
        ),
        ("APIKEY_CACHE_LOAD_TIMEOUT_MS", ""),
        ("APIKEY_CACHE_WRITE_TIMEOUT_MS", "\u{0}"),
    ];
    let g = cfg(garbage);
    // garbage → default (each knob); u64 overflow is garbage or clamped to the max
    let d = CacheConfig::default();
    assert!(
        g == d || g == d.clone().negative_capacity(1_000_000),
        "{g:?}"
    );
    let s = Duration::from_secs;
    let ms = Duration::from_millis;
    let low: &'static [(&str, &str)] = &[
        ("APIKEY_CACHE_TTL_SECONDS", "0"),
        ("APIKEY_CACHE_MISS_RELOAD_INTERVAL_MS", "0"),
        ("APIKEY_CACHE_NEGATIVE_TTL_SECONDS", "0"),
        ("APIKEY_CACHE_NEGATIVE_CAPACITY", "0"),
        ("APIKEY_CACHE_LOAD_TIMEOUT_MS", "0"),
        ("APIKEY_CACHE_WRITE_TIMEOUT_MS", "0"),
    ];
    assert_eq!(
        cfg(low),
        d.clone()
            .ttl(s(1))
            .miss_reload_interval(ms(10))
            .negative_ttl(Duration::ZERO)
            .negative_capacity(0)
            .load_timeout(ms(10))
            .write_timeout(ms(10))
    );
    let high: &'static [(&str, &str)] = &[
        ("APIKEY_CACHE_TTL_SECONDS", "18446744073709551615"),
        (
            "APIKEY_CACHE_MISS_RELOAD_INTERVAL_MS",
            "18446744073709551615",
        ),
        ("APIKEY_CACHE_NEGATIVE_TTL_SECONDS", "18446744073709551615"),
        ("APIKEY_CACHE_NEGATIVE_CAPACITY", "18446744073709551615"),
        ("APIKEY_CACHE_LOAD_TIMEOUT_MS", "18446744073709551615"),
        ("APIKEY_CACHE_WRITE_TIMEOUT_MS", "18446744073709551615"),
    ];
    assert_eq!(
        cfg(high),
        d.ttl(s(3600))
            .miss_reload_interval(s(600))
            .negative_ttl(s(3600))
            .negative_capacity(1_000_000)
            .load_timeout(s(600))
            .write_timeout(s(600))
    );
}

async fn exercise(cfg: CacheConfig, what: &str) {
    let store = MemoryStore::new();
    let a = ApiKeyCache::new(store.clone(), cfg.clone());
    let b = ApiKeyCache::new(store.clone(), cfg);
    let w1 = a.spawn_watcher(Duration::ZERO);
    let w2 = b.spawn_watcher(Duration::MAX);
    // every step bounded by the longest clamped timeout (600 s) plus slack
    let bound = Duration::from_secs(601);
    let acme = within(bound, what, a.create_account("acme", "Acme"))
        .await
        .unwrap();
    let k = within(bound, what, a.issue_key(&acme)).await.unwrap();
    let _ = within(bound, what, b.authenticate(k.secret.expose())).await;
    let _ = within(bound, what, b.authenticate("ak_unknown_x5")).await;
    let _ = within(bound, what, b.authenticate("ak_unknown_x5")).await;
    advance(Duration::from_secs(3601)).await;
    within(bound, what, b.authenticate(k.secret.expose()))
        .await
        .unwrap();
    within(bound, what, a.revoke_key(&k.identity.key))
        .await
        .unwrap();
    // B's snapshot is one version behind: Ok, or Contended when write_attempts is 1
    let r = within(bound, what, b.issue_key(&acme)).await;
    assert!(
        matches!(r, Ok(_) | Err(WriteError::Contended { .. })),
        "{what}: {r:?}"
    );
    let _ = within(bound, what, b.refresh()).await;
    let _ = b.stats();
    store.fail_loads(true);
    advance(Duration::from_secs(3601)).await;
    let _ = within(bound, what, b.authenticate(k.secret.expose())).await;
    let _ = within(bound, what, b.authenticate("ak_unknown_x5_2")).await;
    store.fail_loads(false);
    advance(Duration::from_secs(601)).await;
    let _ = within(bound, what, b.authenticate(k.secret.expose())).await;
    let _ = within(bound, what, b.issue_key(&acme)).await.unwrap();
    assert!(!w1.is_finished() && !w2.is_finished());
    drop((w1, w2));
}

#[tokio::test(start_paused = true)]
async fn x5_zero_everywhere_no_panic_no_hang() {
    let cfg = CacheConfig::default()
        .ttl(Duration::ZERO)
        .miss_reload_interval(Duration::ZERO)
        .miss_reload_burst(0)
        .negative_ttl(Duration::ZERO)
        .negative_capacity(0)
        .retry_backoff(Duration::ZERO)
        .write_attempts(0)
        .load_timeout(Duration::ZERO)
        .write_timeout(Duration::ZERO);
    exercise(cfg, "zero config").await;
}

#[tokio::test(start_paused = true)]
async fn x5_max_everywhere_no_panic_no_hang() {
    let cfg = CacheConfig::default()
        .ttl(Duration::MAX)
        .miss_reload_interval(Duration::MAX)
        .miss_reload_burst(u32::MAX)
        .negative_ttl(Duration::MAX)
        .negative_capacity(usize::MAX)
        .retry_backoff(Duration::MAX)
        .write_attempts(u32::MAX)
        .load_timeout(Duration::MAX)
        .write_timeout(Duration::MAX);
    exercise(cfg, "max config").await;
}

/// With Duration::MAX timeouts (clamped to 600 s), a hung store still ends in ≤ 600 s.
#[tokio::test(start_paused = true)]
async fn x5_max_timeouts_still_bound_a_hung_store() {
    let store = Wrap::new(MemoryStore::new());
    let cfg = CacheConfig::default()
        .load_timeout(Duration::MAX)
        .write_timeout(Duration::MAX);
    let c = ApiKeyCache::new(store.clone(), cfg);
    store.hang_loads(true);
    let r = within(
        Duration::from_secs(601),
        "hung load",
        c.authenticate("ak_x"),
    )
    .await;
    assert!(matches!(r, Err(AuthError::Unavailable { .. })), "{r:?}");
    store.hang_loads(false);
    store.hang_writes(true);
    let r = within(
        Duration::from_secs(601),
        "hung write",
        c.create_account("acme", "A"),
    )
    .await;
    assert!(matches!(r, Err(WriteError::Store { .. })), "{r:?}");
}

/// Zero (clamped to 1 ms) load timeout with a slow store: Unavailable, never a panic/hang.
#[tokio::test(start_paused = true)]
async fn x5_tiny_timeouts_with_slow_store() {
    let store = MemoryStore::new();
    store.set_latency(Duration::from_millis(50));
    let cfg = CacheConfig::default()
        .load_timeout(Duration::ZERO)
        .write_timeout(Duration::ZERO);
    let c = ApiKeyCache::new(store.clone(), cfg);
    let r = within(Duration::from_secs(1), "auth", c.authenticate("ak_x")).await;
    assert!(matches!(r, Err(AuthError::Unavailable { .. })), "{r:?}");
    let r = within(
        Duration::from_secs(1),
        "write",
        c.create_account("acme", "A"),
    )
    .await;
    assert!(matches!(r, Err(WriteError::Store { .. })), "{r:?}");
    assert!(c.stats().store_timeouts >= 2);
}

// ---------------------------------------------------------------------------------------------
// A9 watcher, A7 contract
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a9_watcher_picks_up_other_instance_and_stops_with_cache() {
    let cfg = CacheConfig::default()
        .miss_reload_burst(1)
        .miss_reload_interval(Duration::from_secs(600));
    let (_s, a, b) = pair_memory(cfg);
    within(LOAD_TIMEOUT, "refresh", b.refresh()).await.unwrap();
    assert!(matches!(
        b.authenticate("ak_spend").await,
        Err(AuthError::Unknown)
    ));
    let w = b.spawn_watcher(Duration::from_secs(10));
    let acme = a.create_account("acme", "Acme").await.unwrap();
    let k = a.issue_key(&acme).await.unwrap();
    for _ in 0..21 {
        advance(Duration::from_secs(1)).await;
        tokio::task::yield_now().await;
    }
    let t = Instant::now();
    b.authenticate(k.secret.expose())
        .await
        .expect("watcher refreshed the snapshot");
    assert_eq!(t.elapsed(), Duration::ZERO);
    // unchanged polls are "not modified"
    let nm = b.stats().not_modified;
    for _ in 0..30 {
        advance(Duration::from_secs(1)).await;
        tokio::task::yield_now().await;
    }
    assert!(b.stats().not_modified > nm);
    drop(b);
    for _ in 0..30 {
        advance(Duration::from_secs(1)).await;
        tokio::task::yield_now().await;
    }
    assert!(w.is_finished(), "watcher outlived its cache");
}

#[tokio::test(start_paused = true)]
async fn a7_store_contract_memory_file_wrapper() {
    apikey_cache::testing::check_store_contract(&MemoryStore::new()).await;
    apikey_cache::testing::check_store_contract(&FileStore::new(temp_file("contract"))).await;
    apikey_cache::testing::check_store_contract(&Wrap::new(MemoryStore::new())).await;
}

#[tokio::test(start_paused = true)]
async fn a7_records_with_bad_hash_or_unknown_account_are_skipped() {
    let mut doc = doc_with_plain_key("acme", "key_00000000000000a1", "ak_good_one_0000000000001");
    doc.keys.insert(
        "key_00000000000000a2".into(),
        KeyRecord {
            account: "acme".into(),
            sha256: "nothex".into(),
            created_unix: 1,
            revoked_unix: None,
        },
    );
    doc.keys.insert(
        "key_00000000000000a3".into(),
        KeyRecord {
            account: "ghost".into(),
            sha256: KeyHash::of("ak_ghost_key_00000000001").to_hex(),
            created_unix: 1,
            revoked_unix: None,
        },
    );
    let store = MemoryStore::with_document(doc);
    let c = ApiKeyCache::new(store, CacheConfig::default());
    c.authenticate("ak_good_one_0000000000001").await.unwrap();
    let r = c.authenticate("ak_ghost_key_00000000001").await;
    assert!(
        matches!(r, Err(AuthError::Unknown)),
        "key of an unknown account accepted: {r:?}"
    );
    assert_eq!(c.stats().skipped_records, 2);
}

// ---------------------------------------------------------------------------------------------
// more: write edge cases, flood interplay
// ---------------------------------------------------------------------------------------------

/// A write that landed but whose answer never came: reported as a store failure, nothing
/// installed locally, a later load shows it, and the next write still succeeds.
#[tokio::test(start_paused = true)]
async fn a9_write_landed_but_answer_lost() {
    let (store, a, _b) = pair_memory(CacheConfig::default());
    let acme = a.create_account("acme", "Acme").await.unwrap();
    a.issue_key(&acme).await.unwrap();
    let keys = a.stats().keys;
    a.store().ctl.hang_after_write.store(true, Ordering::SeqCst);
    let r = within(WRITE_TIMEOUT + SLACK, "write", a.issue_key(&acme)).await;
    assert!(
        matches!(&r, Err(WriteError::Store { source }) if matches!(**source, StoreError::TimedOut { .. })),
        "{r:?}"
    );
    assert_eq!(
        a.stats().keys,
        keys,
        "nothing installed locally after a failed write"
    );
    assert_eq!(store.document().unwrap().keys.len() as u64, keys + 1);
    a.store()
        .ctl
        .hang_after_write
        .store(false, Ordering::SeqCst);
    let k = within(WRITE_TIMEOUT, "next write", a.issue_key(&acme))
        .await
        .unwrap();
    a.authenticate(k.secret.expose()).await.unwrap();
    within(LOAD_TIMEOUT, "refresh", a.refresh()).await.unwrap();
    assert_eq!(a.stats().keys, keys + 2);
}

/// Endless conflicts end in Contended after exactly write_attempts (clamped), never a hang.
#[tokio::test(start_paused = true)]
async fn a3_endless_conflicts_end_in_contended() {
    for (cfg_attempts, expect) in [(3u32, 3u32), (0, 1), (u32::MAX, 1000)] {
        let store = Wrap::new(MemoryStore::new());
        let c = ApiKeyCache::new(
            store.clone(),
            CacheConfig::default().write_attempts(cfg_attempts),
        );
        c.create_account("acme", "Acme").await.unwrap();
        store.ctl.always_conflict.store(true, Ordering::SeqCst);
        let r = within(
            Duration::from_secs(3600),
            "contended",
            c.issue_key(&AccountId::new("acme")),
        )
        .await;
        match r {
            Err(WriteError::Contended { attempts }) => assert_eq!(attempts, expect),
            other => panic!("expected Contended, got {other:?}"),
        }
        assert_eq!(c.stats().keys, 0);
    }
}

/// write_attempts(1) is a valid setting; an instance merely one version behind (no concurrent
/// writer at all) must still be able to write: Contended is "every attempt met a concurrent
/// writer", and A3 promises B can issue/revoke for A's data at once.
#[tokio::test(start_paused = true)]

async fn a3_write_attempts_one_with_a_stale_snapshot_is_not_contended() {
    let (_s, a, b) = pair_memory(CacheConfig::default().write_attempts(1));
    let acme = a.create_account("acme", "Acme").await.unwrap();
    within(LOAD_TIMEOUT, "refresh", b.refresh()).await.unwrap();
    let ka = a.issue_key(&acme).await.unwrap(); // B is now one version behind; nobody else writes
    let r = b.issue_key(&acme).await;
    assert!(
        r.is_ok(),
        "B could not write after A wrote earlier (no concurrency): {r:?}"
    );
    let r = b.revoke_key(&ka.identity.key).await;
    assert!(r.is_ok(), "{r:?}");
}

#[tokio::test(start_paused = true)]
async fn a3_concurrent_create_same_account_one_wins() {
    let (_s, a, b) = pair_memory(CacheConfig::default());
    within(LOAD_TIMEOUT, "refresh", a.refresh()).await.unwrap();
    within(LOAD_TIMEOUT, "refresh", b.refresh()).await.unwrap();
    let (ra, rb) = tokio::join!(a.create_account("dup", "A"), b.create_account("dup", "B"));
    let oks = [ra.is_ok(), rb.is_ok()].iter().filter(|x| **x).count();
    assert_eq!(oks, 1, "{ra:?} {rb:?}");
    assert!(
        matches!(ra, Err(WriteError::AccountExists))
            || matches!(rb, Err(WriteError::AccountExists))
    );
    // concurrent revocations of one key: both succeed (idempotent)
    let acc = AccountId::new("dup");
    let k = a.issue_key(&acc).await.unwrap();
    within(LOAD_TIMEOUT, "refresh", b.refresh()).await.unwrap();
    let (ra, rb) = tokio::join!(a.revoke_key(&k.identity.key), b.revoke_key(&k.identity.key));
    ra.unwrap();
    rb.unwrap();
    assert!(matches!(
        a.authenticate(k.secret.expose()).await,
        Err(AuthError::Revoked)
    ));
    assert!(matches!(
        b.authenticate(k.secret.expose()).await,
        Err(AuthError::Revoked)
    ));
}

/// During a flood that keeps the limiter empty, keys created on this instance and loaded keys
/// are unaffected, and a key created on another instance is accepted within about one
/// miss_reload_interval (the next token's reload brings the whole table).
#[tokio::test(start_paused = true)]
async fn a5_flood_does_not_lock_out_new_keys() {
    let (store, a, b) = pair_memory(CacheConfig::default().negative_capacity(0));
    store.set_latency(Duration::from_millis(5));
    let acme = a.create_account("acme", "Acme").await.unwrap();
    within(LOAD_TIMEOUT, "refresh", b.refresh()).await.unwrap();
    let flood = {
        let b = b.clone();
        tokio::spawn(async move {
            let mut i = 0u64;
            loop {
                for _ in 0..10 {
                    i += 1;
                    let _ = b.authenticate(&format!("ak_flood_key_{i:020}")).await;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    advance(Duration::from_millis(500)).await;
    // created on B during the flood: at once
    let kb = b.issue_key(&acme).await.unwrap();
    b.authenticate(kb.secret.expose())
        .await
        .expect("local key during a flood");
    // created on A during the flood: within ~1 s of retries on B
    let ka = a.issue_key(&acme).await.unwrap();
    let t = Instant::now();
    let mut ok = false;
    for _ in 0..30 {
        if b.authenticate(ka.secret.expose()).await.is_ok() {
            ok = true;
            break;
        }
        advance(Duration::from_millis(100)).await;
    }
    flood.abort();
    assert!(ok, "key created on A never accepted on B during the flood");
    assert!(
        t.elapsed() <= Duration::from_millis(1200),
        "took {:?}",
        t.elapsed()
    );
    let reads = b.store().loads();
    assert!(reads <= 2 + 3 + 1, "flood reads: {reads}");
}

/// A hung load on the writing instance: a write's install waits at most for the load in
/// flight; the write finishes (either way) within load_timeout + write_timeout.
#[tokio::test(start_paused = true)]
async fn a9_write_while_own_loads_hang_is_bounded() {
    let (_s, a, b) = pair_memory(CacheConfig::default());
    let acme = a.create_account("acme", "Acme").await.unwrap();
    let k = a.issue_key(&acme).await.unwrap();
    a.store().hang_loads(true);
    advance(TTL).await;
    let auth = {
        let a = a.clone();
        let s = k.secret.clone();
        tokio::spawn(async move { a.authenticate(s.expose()).await })
    };
    tokio::task::yield_now().await;
    let t = Instant::now();
    let r = within(
        LOAD_TIMEOUT + WRITE_TIMEOUT + SLACK,
        "write",
        a.issue_key(&acme),
    )
    .await;
    assert!(t.elapsed() <= LOAD_TIMEOUT + WRITE_TIMEOUT);
    let k2 = r.expect("A's snapshot was current: the write needs no load");
    within(LOAD_TIMEOUT, "auth", auth).await.unwrap().unwrap();
    a.authenticate(k2.secret.expose())
        .await
        .expect("own write visible at once");
    // B (stale) writes; A (loads hung) then writes: conflict needs a load → bounded failure
    within(LOAD_TIMEOUT, "b refresh", b.refresh())
        .await
        .unwrap();
    b.issue_key(&acme).await.unwrap();
    let t = Instant::now();
    let r = within(
        LOAD_TIMEOUT * 6 + WRITE_TIMEOUT,
        "write2",
        a.issue_key(&acme),
    )
    .await;
    assert!(matches!(r, Err(WriteError::Store { .. })), "{r:?}");
    assert!(
        t.elapsed() <= LOAD_TIMEOUT + WRITE_TIMEOUT,
        "took {:?}",
        t.elapsed()
    );
}

#[tokio::test(start_paused = true)]
async fn a5_flood_with_negative_cache_off_still_bounded() {
    let cfg = CacheConfig::default()
        .negative_ttl(Duration::ZERO)
        .negative_capacity(0);
    let (_s, _a, b) = pair_memory(cfg);
    within(LOAD_TIMEOUT, "refresh", b.refresh()).await.unwrap();
    let before = b.store().loads();
    for sec in 0..10u64 {
        for i in 0..200u64 {
            let _ = b.authenticate(&format!("ak_nocache_{sec}_{i}")).await;
            let _ = b.authenticate("ak_same_key_again_and_again").await;
        }
        advance(Duration::from_secs(1)).await;
    }
    let reads = b.store().loads() - before;
    assert!(reads <= 2 + 10, "{reads}");
    assert_eq!(b.stats().negative_entries, 0);
}

/// A1: "the miss is answered from a load that started after the request arrived". A load that
/// began before the key existed (and is still in flight) must not decide the miss as Unknown.
#[tokio::test(start_paused = true)]
async fn a1_miss_not_answered_by_a_load_that_started_before_the_request() {
    let (_s, a, b) = pair_memory(CacheConfig::default());
    let acme = a.create_account("acme", "Acme").await.unwrap();
    within(LOAD_TIMEOUT, "refresh", b.refresh()).await.unwrap();
    let _other = a.issue_key(&acme).await.unwrap(); // so B's next load brings a new version
    b.store().post_load_delay(Duration::from_secs(2));
    let old_load = {
        let b = b.clone();
        tokio::spawn(async move { b.refresh().await })
    };
    tokio::task::yield_now().await;
    advance(Duration::from_millis(100)).await;
    b.store().post_load_delay(Duration::ZERO);
    // the key is created after B's in-flight load read the document
    let k = a.issue_key(&acme).await.unwrap();
    advance(Duration::from_millis(100)).await;
    let r = within(LOAD_TIMEOUT, "auth", b.authenticate(k.secret.expose())).await;
    assert!(
        r.is_ok(),
        "A1: answered from a load that started before the request: {r:?}"
    );
    let _ = old_load.await;
    b.authenticate(k.secret.expose())
        .await
        .expect("and not negatively cached");
}

/// After a failed refresh, requests with a snapshot are answered at once while the retry runs
/// in the background: even past retry_backoff, a slow failing store no longer delays them.
#[tokio::test(start_paused = true)]
async fn a9_failing_slow_store_delays_known_keys_at_most_once() {
    let (store, a, b) = pair_memory(CacheConfig::default());
    let acme = a.create_account("acme", "Acme").await.unwrap();
    let k = a.issue_key(&acme).await.unwrap();
    b.authenticate(k.secret.expose()).await.unwrap();
    store.set_latency(Duration::from_secs(2));
    store.fail_loads(true);
    advance(TTL).await;
    let t = Instant::now();
    within(LOAD_TIMEOUT, "first", b.authenticate(k.secret.expose()))
        .await
        .unwrap();
    assert!(t.elapsed() <= Duration::from_secs(2));
    for _ in 0..10 {
        advance(Duration::from_millis(1500)).await; // past retry_backoff (1 s) each time
        let t = Instant::now();
        b.authenticate(k.secret.expose()).await.unwrap();
        assert_eq!(
            t.elapsed(),
            Duration::ZERO,
            "known key waited for a failing store again"
        );
    }
    let st = b.stats();
    assert!(
        st.reload_failures >= 2,
        "retries happen in the background: {st:?}"
    );
    assert!(st.serving_previous_snapshot);
}

#[tokio::test(start_paused = true)]
async fn a5_negative_cache_bounded_by_capacity() {
    let cfg = CacheConfig::default()
        .negative_capacity(50)
        .miss_reload_burst(1000);
    let (_s, _a, b) = pair_memory(cfg);
    within(LOAD_TIMEOUT, "refresh", b.refresh()).await.unwrap();
    for i in 0..2000u64 {
        let _ = b.authenticate(&format!("ak_neg_cap_{i}")).await;
        if i % 100 == 0 {
            advance(Duration::from_secs(1)).await;
        }
        assert!(b.stats().negative_entries <= 50);
    }
}

#[tokio::test(start_paused = true)]
async fn a7_file_store_missing_directory_is_a_clean_error() {
    let path = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("apikey-adv-missing-{}", std::process::id()))
        .join("no/such/dir/keys.json");
    let c = ApiKeyCache::new(FileStore::new(&path), CacheConfig::default());
    let r = within(WRITE_TIMEOUT, "write", c.create_account("acme", "A")).await;
    assert!(matches!(r, Err(WriteError::Store { .. })), "{r:?}");
    let r = within(LOAD_TIMEOUT, "auth", c.authenticate("ak_x")).await;
    assert!(
        matches!(
            r,
            Err(AuthError::Unknown) | Err(AuthError::Unavailable { .. })
        ),
        "{r:?}"
    );
}
