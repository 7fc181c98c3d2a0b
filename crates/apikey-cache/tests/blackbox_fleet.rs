//! Black-box review of issue 22 (A10 keyed layout, A11 change feed, A12 bounded cache and
//! checksummed keys), plus A1–A9 in the keyed layout, written from docs/apikey-cache.md, the
//! SPEC, seed 003, the issue text and the rustdoc only (no implementation read).
//!
//! Several cache instances over one keyed `MemoryStore` / `FileStore`, each behind its own
//! `Probe` — a `KeyStore` wrapper over the public trait that counts every call, logs every
//! conditional write, and can fail, hang or stall any operation (a partitioned instance, a
//! writer "crashing" between its record write and its feed append, a point read overlapping a
//! feed invalidation). Virtual time throughout (`start_paused`), every wait bounded.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use apikey_cache::{
    AccountId, ApiKeyCache, ApiKeyLayer, AuthError, CacheConfig, Condition, FeedBatch, FeedCursor,
    FileStore, Identity, IssuedKey, KeyDocument, KeyHash, KeyStore, Layout, Loaded, MemoryStore,
    Record, StoreError, Version, WriteError, has_valid_checksum,
};
use base64::Engine as _;
use tokio::time::{Instant, advance, timeout};

const POLL: Duration = Duration::from_secs(2);
const TTL: Duration = Duration::from_secs(30);
const LOAD_TIMEOUT: Duration = Duration::from_secs(5);
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Every await in these tests is bounded by this (virtual) time, so a hang fails the test.
const BOUND: Duration = Duration::from_secs(120);

// ---------------------------------------------------------------------------------------------
// The probe: a KeyStore wrapper over the public trait.
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct ProbeState {
    get_record: AtomicU64,
    put_record: AtomicU64,
    append_feed: AtomicU64,
    read_feed: AtomicU64,
    load: AtomicU64,
    store: AtomicU64,
    /// Every operation fails with `Unavailable` (a partitioned instance / store down).
    fail_all: AtomicBool,
    /// `get_record` and `read_feed` never answer.
    hang_reads: AtomicBool,
    /// `read_feed` never answers.
    hang_feed_reads: AtomicBool,
    /// `append_feed` never answers (the writer dies between record write and feed append).
    hang_appends: AtomicBool,
    /// `put_record` of `keys/…` fails (a writer dying between `ids/` and `keys/`).
    fail_key_puts: AtomicBool,
    /// Before this many `IfMatch` writes of `keys/…`, another writer touches the record first.
    bump_before_if_match: AtomicU32,
    /// When set, `get_record` of `keys/…` reads the store, then waits for `release`.
    stall_key_reads: AtomicBool,
    stalled_now: AtomicU64,
    release: tokio::sync::Notify,
    released: AtomicBool,
    puts: Mutex<Vec<(String, &'static str)>>,
}

#[derive(Clone)]
struct Probe<S> {
    inner: S,
    state: Arc<ProbeState>,
}

impl<S> Probe<S> {
    fn new(inner: S) -> Self {
        Self {
            inner,
            state: Arc::new(ProbeState::default()),
        }
    }
    fn reads(&self) -> u64 {
        self.state.get_record.load(Ordering::SeqCst)
    }
    fn feed_reads(&self) -> u64 {
        self.state.read_feed.load(Ordering::SeqCst)
    }
    /// Every store call of any kind made through this probe.
    fn all_ops(&self) -> u64 {
        let s = &self.state;
        s.get_record.load(Ordering::SeqCst)
            + s.put_record.load(Ordering::SeqCst)
            + s.append_feed.load(Ordering::SeqCst)
            + s.read_feed.load(Ordering::SeqCst)
            + s.load.load(Ordering::SeqCst)
            + s.store.load(Ordering::SeqCst)
    }
    fn set(&self, flag: impl Fn(&ProbeState) -> &AtomicBool, on: bool) {
        flag(&self.state).store(on, Ordering::SeqCst);
    }
    fn release_stalled(&self) {
        self.state.stall_key_reads.store(false, Ordering::SeqCst);
        self.state.released.store(true, Ordering::SeqCst);
        self.state.release.notify_waiters();
    }
    fn puts(&self) -> Vec<(String, &'static str)> {
        self.state.puts.lock().expect("puts").clone()
    }
}

fn down() -> StoreError {
    StoreError::unavailable("probe: store down")
}

impl<S: KeyStore + Clone> KeyStore for Probe<S> {
    async fn load(&self, if_none_match: Option<&Version>) -> Result<Loaded, StoreError> {
        self.state.load.fetch_add(1, Ordering::SeqCst);
        if self.state.fail_all.load(Ordering::SeqCst) {
            return Err(down());
        }
        self.inner.load(if_none_match).await
    }

    async fn store(
        &self,
        document: &KeyDocument,
        if_match: Option<&Version>,
    ) -> Result<Version, StoreError> {
        self.state.store.fetch_add(1, Ordering::SeqCst);
        if self.state.fail_all.load(Ordering::SeqCst) {
            return Err(down());
        }
        self.inner.store(document, if_match).await
    }

    fn describe(&self) -> String {
        format!("probe({})", self.inner.describe())
    }

    fn layout(&self) -> Layout {
        self.inner.layout()
    }

    async fn get_record(&self, name: &str) -> Result<Option<Record>, StoreError> {
        self.state.get_record.fetch_add(1, Ordering::SeqCst);
        if self.state.fail_all.load(Ordering::SeqCst) {
            return Err(down());
        }
        if self.state.hang_reads.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        let stall = name.starts_with("keys/") && self.state.stall_key_reads.load(Ordering::SeqCst);
        let answer = self.inner.get_record(name).await;
        if stall {
            // The answer is what the store held when the read started; it arrives late.
            self.state.stalled_now.fetch_add(1, Ordering::SeqCst);
            loop {
                let notified = self.state.release.notified();
                if self.state.released.load(Ordering::SeqCst) {
                    break;
                }
                notified.await;
            }
        }
        answer
    }

    async fn put_record(
        &self,
        name: &str,
        bytes: &[u8],
        condition: Condition<'_>,
    ) -> Result<Version, StoreError> {
        self.state.put_record.fetch_add(1, Ordering::SeqCst);
        let kind = match condition {
            Condition::IfNoneMatch => "create",
            Condition::IfMatch(_) => "if-match",
            _ => "other",
        };
        self.state
            .puts
            .lock()
            .expect("puts")
            .push((name.to_owned(), kind));
        if self.state.fail_all.load(Ordering::SeqCst) {
            return Err(down());
        }
        if name.starts_with("keys/") && self.state.fail_key_puts.load(Ordering::SeqCst) {
            return Err(down());
        }
        if name.starts_with("keys/")
            && kind == "if-match"
            && self
                .state
                .bump_before_if_match
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
        {
            // Another writer replaces the record (same bytes, new version) just before us.
            let current = self
                .inner
                .get_record(name)
                .await?
                .expect("the record being replaced exists");
            self.inner
                .put_record(name, &current.bytes, Condition::IfMatch(&current.version))
                .await?;
        }
        self.inner.put_record(name, bytes, condition).await
    }

    async fn append_feed(&self, entry: &[u8]) -> Result<(), StoreError> {
        self.state.append_feed.fetch_add(1, Ordering::SeqCst);
        if self.state.fail_all.load(Ordering::SeqCst) {
            return Err(down());
        }
        if self.state.hang_appends.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        self.inner.append_feed(entry).await
    }

    async fn read_feed(&self, from: Option<&FeedCursor>) -> Result<FeedBatch, StoreError> {
        self.state.read_feed.fetch_add(1, Ordering::SeqCst);
        if self.state.fail_all.load(Ordering::SeqCst) {
            return Err(down());
        }
        if self.state.hang_reads.load(Ordering::SeqCst)
            || self.state.hang_feed_reads.load(Ordering::SeqCst)
        {
            std::future::pending::<()>().await;
        }
        self.inner.read_feed(from).await
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers.
// ---------------------------------------------------------------------------------------------

fn scratch_dir() -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "apikey-bb-fleet-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// `n` probes (one per instance) over one shared store.
fn probes<S: KeyStore + Clone>(store: &S, n: usize) -> Vec<Probe<S>> {
    (0..n).map(|_| Probe::new(store.clone())).collect()
}

fn cache<S: KeyStore + Clone>(probe: &Probe<S>, config: CacheConfig) -> ApiKeyCache<Probe<S>> {
    ApiKeyCache::new(probe.clone(), config)
}

async fn bounded<F: std::future::Future>(what: &str, future: F) -> F::Output {
    match timeout(BOUND, future).await {
        Ok(out) => out,
        Err(_) => panic!("{what}: still waiting after {BOUND:?} of virtual time"),
    }
}

async fn auth<S: KeyStore>(cache: &ApiKeyCache<S>, key: &str) -> Result<Identity, AuthError> {
    bounded("authenticate", cache.authenticate(key)).await
}

fn is_revoked(r: &Result<Identity, AuthError>) -> bool {
    matches!(r, Err(AuthError::Revoked))
}

fn is_unknown(r: &Result<Identity, AuthError>) -> bool {
    matches!(r, Err(AuthError::Unknown))
}

fn is_unavailable(r: &Result<Identity, AuthError>) -> bool {
    matches!(r, Err(AuthError::Unavailable { .. }))
}

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn crc32(poly: u32, data: &[u8]) -> u32 {
    let mut c = 0xFFFF_FFFFu32;
    for &b in data {
        c ^= u32::from(b);
        for _ in 0..8 {
            c = if c & 1 != 0 { (c >> 1) ^ poly } else { c >> 1 };
        }
    }
    !c
}

/// A well-formed key (valid checksum per the public `has_valid_checksum`) that no store knows:
/// `ak_` + base64url(32 pseudo-random bytes ‖ CRC-32). The CRC variant (polynomial, byte order,
/// whether the prefix is covered) is found by asking `has_valid_checksum`, not by reading code.
fn forge_key(seed: u64) -> String {
    let mut state = seed.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ 0xA5A5_5A5A;
    let mut payload = [0u8; 32];
    for chunk in payload.chunks_mut(8) {
        chunk.copy_from_slice(&splitmix(&mut state).to_le_bytes());
    }
    for poly in [0xEDB8_8320u32, 0x82F6_3B78] {
        for with_prefix in [false, true] {
            let crc = if with_prefix {
                let mut covered = b"ak_".to_vec();
                covered.extend_from_slice(&payload);
                crc32(poly, &covered)
            } else {
                crc32(poly, &payload)
            };
            for bytes in [crc.to_be_bytes(), crc.to_le_bytes()] {
                let mut raw = payload.to_vec();
                raw.extend_from_slice(&bytes);
                let key = format!(
                    "ak_{}",
                    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&raw)
                );
                if has_valid_checksum(&key) {
                    return key;
                }
            }
        }
    }
    panic!("no CRC-32 variant passes has_valid_checksum");
}

/// A writer on "another instance" that this test drives by hand: `issued` was issued into
/// `source` (an account of the same id exists in `target`); its `ids/` and `keys/` records and
/// its feed entries after `cursor` are copied into `target` exactly as a writer would write them.
async fn replay_issue<T: KeyStore>(
    source: &MemoryStore,
    cursor: &FeedCursor,
    target: &T,
    issued: &IssuedKey,
    with_feed: bool,
) {
    let hash = issued.secret.hash().to_hex();
    for name in [
        format!("ids/{}", issued.identity.key.as_str()),
        format!("keys/{hash}"),
    ] {
        let record = source
            .get_record(&name)
            .await
            .expect("source read")
            .unwrap_or_else(|| panic!("source has {name}"));
        target
            .put_record(&name, &record.bytes, Condition::IfNoneMatch)
            .await
            .expect("copy record");
    }
    if with_feed {
        let batch = source.read_feed(Some(cursor)).await.expect("source feed");
        let mut copied = 0;
        for entry in &batch.entries {
            if String::from_utf8_lossy(entry).contains(&hash) {
                target.append_feed(entry).await.expect("copy feed entry");
                copied += 1;
            }
        }
        assert_eq!(copied, 1, "one feed entry names the new key");
    }
}

/// A "side" store where keys are issued for `replay_issue` (same account id as the target).
async fn side_store(account: &str) -> (MemoryStore, ApiKeyCache<MemoryStore>, FeedCursor) {
    let side = MemoryStore::keyed();
    let writer = ApiKeyCache::new(side.clone(), CacheConfig::default());
    writer
        .create_account(account, "side")
        .await
        .expect("side account");
    let cursor = side.read_feed(None).await.expect("side feed end").next;
    (side, writer, cursor)
}

// ---------------------------------------------------------------------------------------------
// A11: revocations and new keys reach every instance within one poll.
// ---------------------------------------------------------------------------------------------

async fn revocation_reaches_every_instance<S: KeyStore + Clone>(store: S) {
    let p = probes(&store, 5);
    let caches: Vec<_> = p.iter().map(|p| cache(p, CacheConfig::default())).collect();
    let account = caches[0]
        .create_account("acme", "Acme")
        .await
        .expect("create");
    let victim = caches[0].issue_key(&account).await.expect("issue");
    let other = caches[1].issue_key(&account).await.expect("issue other");
    // Instances 0..3 have the victim cached; 3 has only the other key; 4 never saw either.
    for c in &caches[..3] {
        assert!(auth(c, victim.secret.expose()).await.is_ok());
    }
    assert!(auth(&caches[3], other.secret.expose()).await.is_ok());
    let _watcher = caches[2].spawn_watcher(POLL);
    // Let a poll go by so every instance's last feed read is as recent as can be.
    advance(POLL).await;
    for c in &caches[..4] {
        let _ = auth(c, other.secret.expose()).await;
    }
    caches[1]
        .revoke_key(&victim.identity.key)
        .await
        .expect("revoke from an instance that only read the key");
    assert!(is_revoked(&auth(&caches[1], victim.secret.expose()).await));
    advance(POLL).await;
    for (i, c) in caches.iter().enumerate() {
        let r = auth(c, victim.secret.expose()).await;
        assert!(
            is_revoked(&r),
            "instance {i}: {r:?} one poll after the revocation"
        );
        assert!(
            auth(c, other.secret.expose()).await.is_ok(),
            "instance {i}: the other key still works"
        );
    }
}

// covers A11 (memory, 5 instances, cached / uncached / watcher / writer that only read it).
#[tokio::test(start_paused = true)]
async fn a11_revocation_reaches_five_instances_within_one_poll_memory() {
    revocation_reaches_every_instance(MemoryStore::keyed()).await;
}

// covers A11 (file store, 5 instances).
#[tokio::test(start_paused = true)]
async fn a11_revocation_reaches_five_instances_within_one_poll_file() {
    let dir = scratch_dir();
    revocation_reaches_every_instance(FileStore::keyed(&dir).durable(false)).await;
    let _ = std::fs::remove_dir_all(dir);
}

// covers A10 + A11 + A1: keys issued concurrently on five instances (file store) are all found
// on the first try on every instance and on a fresh one; nothing clobbered (A3, A7).
#[tokio::test(start_paused = true)]
async fn a10_concurrent_issues_from_five_instances_all_found_everywhere() {
    let dir = scratch_dir();
    let store = FileStore::keyed(&dir).durable(false);
    let p = probes(&store, 5);
    let caches: Vec<_> = p.iter().map(|p| cache(p, CacheConfig::default())).collect();
    let account = caches[0]
        .create_account("acme", "Acme")
        .await
        .expect("create");
    let mut tasks = tokio::task::JoinSet::new();
    for c in &caches {
        for _ in 0..8 {
            let c = c.clone();
            let account = account.clone();
            tasks.spawn(async move { c.issue_key(&account).await });
        }
    }
    let mut issued = Vec::new();
    while let Some(r) = bounded("issues", tasks.join_next()).await {
        issued.push(r.expect("join").expect("issue never fails or contends"));
    }
    assert_eq!(issued.len(), 40);
    let fresh = cache(&Probe::new(store.clone()), CacheConfig::default());
    for c in caches.iter().chain(std::iter::once(&fresh)) {
        for k in &issued {
            assert_eq!(
                auth(c, k.secret.expose()).await.expect("first try"),
                k.identity
            );
        }
    }
    assert_eq!(fresh.stats().miss_reloads_limited, 0);
    let _ = std::fs::remove_dir_all(dir);
}

// covers A11 + A5: "an `issue` entry drops a negative-cache entry for that hash" — a key that
// B negatively cached (presented before it existed) is accepted within one poll once another
// writer creates it; also the write itself is seen on the first try by instances that never
// met the key.
#[tokio::test(start_paused = true)]
async fn a11_issue_entry_clears_negative_cache_within_one_poll() {
    let store = MemoryStore::keyed();
    let a = ApiKeyCache::new(store.clone(), CacheConfig::default());
    let b = ApiKeyCache::new(store.clone(), CacheConfig::default());
    a.create_account("acme", "Acme").await.expect("create");
    let warm = a.issue_key(&AccountId::new("acme")).await.expect("issue");
    assert!(auth(&b, warm.secret.expose()).await.is_ok()); // B is tailing the feed
    let (side, side_writer, cursor) = side_store("acme").await;
    let future_key = side_writer
        .issue_key(&AccountId::new("acme"))
        .await
        .expect("side issue");
    // A client presents the key before it exists here: B remembers it as unknown.
    assert!(is_unknown(&auth(&b, future_key.secret.expose()).await));
    assert!(is_unknown(&auth(&b, future_key.secret.expose()).await));
    assert!(b.stats().negative_hits >= 1, "{:?}", b.stats());
    // Now "another instance" issues it: records + one issue entry in the feed.
    replay_issue(&side, &cursor, &store, &future_key, true).await;
    advance(POLL).await;
    let r = auth(&b, future_key.secret.expose()).await;
    assert_eq!(
        r.expect("within one poll the issue entry dropped the negative entry"),
        future_key.identity
    );
}
