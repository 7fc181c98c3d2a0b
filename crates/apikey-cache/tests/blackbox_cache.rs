//! Black-box review of the keyed layout's bounded key cache and hit path (#22, A5, A10–A12),
//! written from docs/apikey-cache.md, SPEC.md, seed 003 and the rustdoc only.
//!
//! Store reads are counted through a wrapping `KeyStore` (`Probe`); time is virtual
//! (`start_paused`) except in the multi-thread race tests, which never sleep. The allocation
//! test uses a counting global allocator whose counts are process-wide, so every test takes
//! `SERIAL` for reading and the allocation test takes it for writing (it runs alone).

// The `SERIAL` guard is held across awaits on purpose: it only orders whole tests.
#![allow(clippy::await_holding_lock)]

use std::alloc::System;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use apikey_cache::{
    ApiKeyCache, AuthError, CacheConfig, Condition, FeedBatch, FeedCursor, Identity, KeyDocument,
    KeyHash, KeyStore, Layout, Loaded, MemoryStore, Record, StoreError, Version,
    has_valid_checksum,
};
use base64::Engine as _;
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use tokio::sync::{Notify, Semaphore};
use tokio::time::{advance, timeout};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

static SERIAL: RwLock<()> = RwLock::new(());

fn shared() -> RwLockReadGuard<'static, ()> {
    SERIAL.read().unwrap_or_else(|e| e.into_inner())
}

fn exclusive() -> RwLockWriteGuard<'static, ()> {
    SERIAL.write().unwrap_or_else(|e| e.into_inner())
}

// ---------------------------------------------------------------------------------------------
// A counting, stallable KeyStore wrapper.
// ---------------------------------------------------------------------------------------------

struct ProbeState {
    key_reads: AtomicU64,
    record_reads: AtomicU64,
    feed_reads: AtomicU64,
    writes: AtomicU64,
    /// A record name whose next read is held (after reading the inner store, so it answers
    /// what the store held then) until `release` gives a permit.
    stall: Mutex<Option<String>>,
    arrived: Notify,
    arrived_count: AtomicU64,
    release: Semaphore,
    /// While set, feed reads never answer (a hung store for the feed only).
    hang_feeds: AtomicBool,
    /// Record names whose reads fail at once (`StoreError::Unavailable`).
    fail_names: Mutex<Vec<String>>,
    /// Record names whose reads never answer (a hung store for those records).
    hang_names: Mutex<Vec<String>>,
    /// Milliseconds every feed read takes (virtual time).
    feed_latency_ms: AtomicU64,
}

#[derive(Clone)]
struct Probe {
    inner: MemoryStore,
    state: Arc<ProbeState>,
}

impl Probe {
    fn new(inner: MemoryStore) -> Self {
        Self {
            inner,
            state: Arc::new(ProbeState {
                key_reads: AtomicU64::new(0),
                record_reads: AtomicU64::new(0),
                feed_reads: AtomicU64::new(0),
                writes: AtomicU64::new(0),
                stall: Mutex::new(None),
                arrived: Notify::new(),
                arrived_count: AtomicU64::new(0),
                release: Semaphore::new(0),
                hang_feeds: AtomicBool::new(false),
                feed_latency_ms: AtomicU64::new(0),
                hang_names: Mutex::new(Vec::new()),
                fail_names: Mutex::new(Vec::new()),
            }),
        }
    }
    fn key_reads(&self) -> u64 {
        self.state.key_reads.load(Ordering::SeqCst)
    }
    fn record_reads(&self) -> u64 {
        self.state.record_reads.load(Ordering::SeqCst)
    }
    fn feed_reads(&self) -> u64 {
        self.state.feed_reads.load(Ordering::SeqCst)
    }
    fn all_ops(&self) -> u64 {
        self.record_reads() + self.feed_reads() + self.state.writes.load(Ordering::SeqCst)
    }
    fn stall_reads_of(&self, name: Option<String>) {
        *self.state.stall.lock().unwrap() = name;
    }
    fn release_one(&self) {
        self.state.release.add_permits(1);
    }
    async fn wait_arrivals(&self, n: u64) {
        loop {
            let notified = self.state.arrived.notified();
            if self.state.arrived_count.load(Ordering::SeqCst) >= n {
                return;
            }
            notified.await;
        }
    }
}

impl KeyStore for Probe {
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
        "probe".into()
    }
    fn layout(&self) -> Layout {
        self.inner.layout()
    }
    async fn get_record(&self, name: &str) -> Result<Option<Record>, StoreError> {
        self.state.record_reads.fetch_add(1, Ordering::SeqCst);
        if name.starts_with("keys/") {
            self.state.key_reads.fetch_add(1, Ordering::SeqCst);
        }
        let hung = self
            .state
            .hang_names
            .lock()
            .unwrap()
            .iter()
            .any(|n| n == name);
        if hung {
            std::future::pending::<()>().await;
        }
        if self
            .state
            .fail_names
            .lock()
            .unwrap()
            .iter()
            .any(|n| n == name)
        {
            return Err(StoreError::unavailable("injected point-read failure"));
        }
        let answer = self.inner.get_record(name).await;
        // One-shot: only the next read of the stalled name is held.
        let stalled = {
            let mut stall = self.state.stall.lock().unwrap();
            let hit = stall.as_deref() == Some(name);
            if hit {
                *stall = None;
            }
            hit
        };
        if stalled {
            self.state.arrived_count.fetch_add(1, Ordering::SeqCst);
            self.state.arrived.notify_waiters();
            self.state.release.acquire().await.expect("open").forget();
        }
        answer
    }
    async fn put_record(
        &self,
        name: &str,
        bytes: &[u8],
        condition: Condition<'_>,
    ) -> Result<Version, StoreError> {
        self.state.writes.fetch_add(1, Ordering::SeqCst);
        self.inner.put_record(name, bytes, condition).await
    }
    async fn append_feed(&self, entry: &[u8]) -> Result<(), StoreError> {
        self.state.writes.fetch_add(1, Ordering::SeqCst);
        self.inner.append_feed(entry).await
    }
    async fn read_feed(&self, from: Option<&FeedCursor>) -> Result<FeedBatch, StoreError> {
        self.state.feed_reads.fetch_add(1, Ordering::SeqCst);
        if self.state.hang_feeds.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        let latency = self.state.feed_latency_ms.load(Ordering::SeqCst);
        if latency > 0 {
            tokio::time::sleep(Duration::from_millis(latency)).await;
        }
        self.inner.read_feed(from).await
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers.
// ---------------------------------------------------------------------------------------------

const BOUND: Duration = Duration::from_secs(3600);

async fn bounded<F: std::future::Future>(what: &str, future: F) -> F::Output {
    timeout(BOUND, future)
        .await
        .unwrap_or_else(|_| panic!("{what}: did not finish within {BOUND:?} (hang)"))
}

struct Fleet {
    store: MemoryStore,
    writer: ApiKeyCache<MemoryStore>,
    /// (plaintext, key id, account id)
    keys: Vec<(String, String, String)>,
}

/// A keyed store with `n` keys issued for account "acme" (and one for "other", the last).
async fn fleet(n: usize) -> Fleet {
    let store = MemoryStore::keyed();
    let writer = ApiKeyCache::new(store.clone(), CacheConfig::default());
    let acme = writer.create_account("acme", "Acme").await.expect("acme");
    let other = writer
        .create_account("other", "Other")
        .await
        .expect("other");
    let mut keys = Vec::new();
    for i in 0..n {
        let account = if i + 1 == n { &other } else { &acme };
        let issued = writer.issue_key(account).await.expect("issue");
        keys.push((
            issued.secret.expose().to_owned(),
            issued.identity.key.as_str().to_owned(),
            issued.identity.account.as_str().to_owned(),
        ));
    }
    Fleet {
        store,
        writer,
        keys,
    }
}

fn record_of(key: &str) -> String {
    format!("keys/{}", KeyHash::of(key).to_hex())
}

fn assert_identity(answer: &Result<Identity, AuthError>, key: &(String, String, String)) {
    match answer {
        Ok(identity) => {
            assert_eq!(
                identity.key.as_str(),
                key.1,
                "answered with another key's identity"
            );
            assert_eq!(
                identity.account.as_str(),
                key.2,
                "answered with another account"
            );
        }
        Err(e) => panic!("valid key rejected: {e:?}"),
    }
}

fn is_revoked(answer: &Result<Identity, AuthError>) -> bool {
    matches!(answer, Err(AuthError::Revoked))
}

fn crc32(poly: u32, data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ poly
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A well-formed key with a valid checksum that was never issued (the format is public:
/// `ak_` + base64url(32 random bytes ‖ CRC-32)).
fn forge_key(seed: u64) -> String {
    let mut body = [0u8; 32];
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    for chunk in body.chunks_mut(8) {
        s ^= s >> 31;
        s = s.wrapping_mul(0xBF58_476D_1CE4_E5B9).wrapping_add(1);
        chunk.copy_from_slice(&s.to_le_bytes());
    }
    for poly in [0xEDB8_8320u32, 0x82F6_3B78] {
        let crc = crc32(poly, &body);
        for bytes in [crc.to_be_bytes(), crc.to_le_bytes()] {
            let mut raw = body.to_vec();
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
    panic!("could not forge a key with a valid checksum");
}

// ---------------------------------------------------------------------------------------------
// key_capacity: a hard bound, and keys beyond it still answer correctly.
// ---------------------------------------------------------------------------------------------

// A12: many tasks authenticating distinct keys at once on a multi-thread runtime never push
// `stats().keys` above `key_capacity` (sampled all along by a monitor thread), and every
// answer is the presented key's own identity.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a12_capacity_is_a_hard_bound_with_many_concurrent_distinct_keys() {
    let _serial = shared();
    let f = fleet(400).await;
    let capacity = 40u64;
    let reader = ApiKeyCache::new(
        f.store.clone(),
        CacheConfig::default()
            .key_capacity(capacity)
            .point_reads_per_second(1_000_000),
    );
    let done = Arc::new(AtomicBool::new(false));
    let max_seen = Arc::new(AtomicU64::new(0));
    let monitor = {
        let reader = reader.clone();
        let done = done.clone();
        let max_seen = max_seen.clone();
        std::thread::spawn(move || {
            while !done.load(Ordering::SeqCst) {
                max_seen.fetch_max(reader.stats().keys, Ordering::SeqCst);
                std::thread::yield_now();
            }
        })
    };
    let keys = Arc::new(f.keys.clone());
    let mut tasks = Vec::new();
    for t in 0..16usize {
        let reader = reader.clone();
        let keys = keys.clone();
        tasks.push(tokio::spawn(async move {
            for round in 0..3usize {
                for i in 0..keys.len() {
                    let key = &keys[(i * 7 + t * 13 + round * 31) % keys.len()];
                    let answer = reader.authenticate(&key.0).await;
                    assert_identity(&answer, key);
                }
            }
        }));
    }
    for task in tasks {
        bounded("hammer", task).await.expect("task");
    }
    done.store(true, Ordering::SeqCst);
    monitor.join().expect("monitor");
    let stats = reader.stats();
    assert!(stats.keys <= capacity, "keys after: {}", stats.keys);
    assert!(
        max_seen.load(Ordering::SeqCst) <= capacity,
        "stats().keys reached {} > key_capacity {capacity}",
        max_seen.load(Ordering::SeqCst)
    );
    assert!(stats.keys > 0, "nothing cached at all");
}

// A12 + A10: with a tiny capacity, keys beyond it are point reads (never a wrong answer, never
// a table load); a revoked key pushed out of the cache is still revoked when read back.
#[tokio::test(start_paused = true)]
async fn a12_keys_beyond_capacity_are_point_reads_with_correct_answers() {
    let _serial = shared();
    let f = fleet(6).await;
    f.writer
        .revoke_key(&apikey_cache::KeyId::new(f.keys[2].1.as_str()))
        .await
        .expect("revoke");
    let probe = Probe::new(f.store.clone());
    let reader = ApiKeyCache::new(
        probe.clone(),
        CacheConfig::default()
            .key_capacity(2)
            .revalidate(Duration::from_secs(24 * 3600)),
    );
    let loads_before = f.store.counts().loads;
    for round in 0..5 {
        for (i, key) in f.keys.iter().enumerate() {
            let reads = probe.key_reads();
            let answer = bounded("auth", reader.authenticate(&key.0)).await;
            if i == 2 {
                assert!(
                    is_revoked(&answer),
                    "round {round}: revoked key answered {answer:?}"
                );
            } else {
                assert_identity(&answer, key);
            }
            assert!(
                probe.key_reads() - reads <= 1,
                "more than one point read per request"
            );
            assert!(
                reader.stats().keys <= 2,
                "capacity 2 exceeded: {}",
                reader.stats().keys
            );
        }
    }
    assert_eq!(
        f.store.counts().loads,
        loads_before,
        "a keyed miss loaded a table"
    );
    // Six keys cycling through two slots: most requests must have been point reads.
    assert!(
        probe.key_reads() >= 20,
        "only {} point reads",
        probe.key_reads()
    );
}

// A12: the extreme capacities 0 and 1 (0 is clamped to 1 per the rustdoc) never panic or hang
// and never answer one key with another's identity, even when two keys alternate.
#[tokio::test(start_paused = true)]
async fn a12_capacity_zero_and_one_alternate_two_keys_correctly() {
    let _serial = shared();
    let f = fleet(3).await;
    for capacity in [0u64, 1] {
        let probe = Probe::new(f.store.clone());
        let reader = ApiKeyCache::new(probe.clone(), CacheConfig::default().key_capacity(capacity));
        for _ in 0..20 {
            for key in &f.keys {
                let answer = bounded("auth", reader.authenticate(&key.0)).await;
                assert_identity(&answer, key);
                assert!(
                    reader.stats().keys <= 1,
                    "capacity {capacity}: {}",
                    reader.stats().keys
                );
            }
        }
        // The same key twice in a row is a hit (one slot is enough for it).
        let reads = probe.key_reads();
        for _ in 0..10 {
            assert_identity(&reader.authenticate(&f.keys[0].0).await, &f.keys[0]);
        }
        assert!(
            probe.key_reads() - reads <= 1,
            "capacity {capacity}: a single key re-read"
        );
    }
}

// The hit path never answers a key it has not verified: keys that share a long prefix with a
// cached key (same first characters, same length, valid checksum or not) and forged keys with
// a valid checksum are never accepted, however hot the cache is.
#[tokio::test(start_paused = true)]
async fn a12_hit_path_never_accepts_an_unverified_key() {
    let _serial = shared();
    let f = fleet(8).await;
    let reader = ApiKeyCache::new(f.store.clone(), CacheConfig::default().key_capacity(4));
    for key in &f.keys {
        assert_identity(&reader.authenticate(&key.0).await, key);
    }
    for (n, key) in f.keys.iter().enumerate() {
        // Flip one character at each position; none may be accepted.
        let bytes = key.0.as_bytes();
        for pos in 3..bytes.len() {
            let mut v = bytes.to_vec();
            v[pos] = if v[pos] == b'A' { b'B' } else { b'A' };
            let typo = String::from_utf8(v).unwrap();
            let answer = reader.authenticate(&typo).await;
            assert!(
                answer.is_err(),
                "key {n} pos {pos}: typo accepted as {answer:?}"
            );
        }
        let forged = forge_key(n as u64);
        assert!(
            reader.authenticate(&forged).await.is_err(),
            "forged key accepted"
        );
        // The real key still answers.
        assert_identity(&reader.authenticate(&key.0).await, key);
    }
}

// ---------------------------------------------------------------------------------------------
// key_idle on virtual time.
// ---------------------------------------------------------------------------------------------

fn idle_config(idle: Duration) -> CacheConfig {
    CacheConfig::default()
        .key_idle(idle)
        .revalidate(Duration::from_secs(24 * 3600))
}

// A12: a key unused for longer than `key_idle` costs one point read on its next use; a key
// used within it costs none (feed reads aside), however long it keeps being used.
#[tokio::test(start_paused = true)]
async fn a12_key_idle_expiry_costs_one_point_read_and_use_within_it_costs_none() {
    let _serial = shared();
    let f = fleet(2).await;
    let probe = Probe::new(f.store.clone());
    // key_idle below the TTL, so the feed is never unread for a TTL between uses.
    let idle = Duration::from_secs(20);
    let reader = ApiKeyCache::new(probe.clone(), idle_config(idle));
    let (hot, cold) = (&f.keys[0], &f.keys[1]);
    assert_identity(&reader.authenticate(&hot.0).await, hot);
    assert_identity(&reader.authenticate(&cold.0).await, cold);
    assert_eq!(probe.key_reads(), 2, "one point read per key first seen");

    // hot: used every 19 s for 10 min: never re-read.
    for _ in 0..32 {
        advance(idle - Duration::from_secs(1)).await;
        assert_identity(&reader.authenticate(&hot.0).await, hot);
    }
    assert_eq!(
        probe.key_reads(),
        2,
        "a key used within key_idle was re-read"
    );

    // cold: unused for ~10 min: exactly one point read on its next use, then hits.
    assert_identity(&reader.authenticate(&cold.0).await, cold);
    assert_eq!(
        probe.key_reads(),
        3,
        "an idle key's next use must be one point read"
    );
    for _ in 0..5 {
        assert_identity(&reader.authenticate(&cold.0).await, cold);
    }
    assert_eq!(probe.key_reads(), 3, "the re-read key was not cached again");
}

// A12: the boundary: just inside `key_idle` is a hit, just past it a point read (1 s idle).
#[tokio::test(start_paused = true)]
async fn a12_key_idle_boundary_just_inside_and_just_past() {
    let _serial = shared();
    let f = fleet(1).await;
    let probe = Probe::new(f.store.clone());
    let idle = Duration::from_secs(1);
    let reader = ApiKeyCache::new(probe.clone(), idle_config(idle));
    let key = &f.keys[0];
    assert_identity(&reader.authenticate(&key.0).await, key);
    advance(idle - Duration::from_millis(5)).await;
    assert_identity(&reader.authenticate(&key.0).await, key);
    assert_eq!(probe.key_reads(), 1, "used within key_idle but re-read");
    advance(idle + Duration::from_millis(5)).await;
    assert_identity(&reader.authenticate(&key.0).await, key);
    assert_eq!(probe.key_reads(), 2, "unused past key_idle but not re-read");
}

// A12: the idle sweep (on the feed poll, driven here by the watcher) frees idle entries
// (`stats().keys` falls, `idle_evictions` counts them) and never drops the key in use.
#[tokio::test(start_paused = true)]
async fn a12_idle_sweep_frees_idle_entries_and_keeps_the_key_in_use() {
    let _serial = shared();
    let f = fleet(21).await;
    let probe = Probe::new(f.store.clone());
    let idle = Duration::from_secs(10);
    let config = idle_config(idle);
    let reader = ApiKeyCache::new(probe.clone(), config.clone());
    let _watcher = reader.spawn_watcher(config.poll_interval());
    for key in &f.keys {
        assert_identity(&reader.authenticate(&key.0).await, key);
    }
    assert_eq!(reader.stats().keys, 21);
    let hot = &f.keys[0];
    let reads = probe.key_reads();
    // Use the hot key every 500 ms for 60 s while the watcher polls and sweeps.
    for _ in 0..120 {
        advance(Duration::from_millis(500)).await;
        tokio::task::yield_now().await;
        assert_identity(&reader.authenticate(&hot.0).await, hot);
    }
    let stats = reader.stats();
    assert_eq!(
        probe.key_reads(),
        reads,
        "the key in use was dropped and re-read"
    );
    assert!(
        stats.idle_evictions >= 20,
        "idle_evictions = {}",
        stats.idle_evictions
    );
    assert_eq!(
        stats.keys, 1,
        "idle entries not freed: keys = {}",
        stats.keys
    );
}

// A12: without a watcher, the sweep runs on the request path's feed poll: a fleet of idle keys
// is freed by requests of one other key alone, and the swept keys still answer (point read).
#[tokio::test(start_paused = true)]
async fn a12_idle_sweep_runs_on_request_driven_polls() {
    let _serial = shared();
    let f = fleet(11).await;
    let probe = Probe::new(f.store.clone());
    let idle = Duration::from_secs(8);
    let reader = ApiKeyCache::new(probe.clone(), idle_config(idle));
    for key in &f.keys {
        assert_identity(&reader.authenticate(&key.0).await, key);
    }
    let hot = &f.keys[0];
    for _ in 0..30 {
        advance(Duration::from_secs(1)).await;
        assert_identity(&reader.authenticate(&hot.0).await, hot);
    }
    let stats = reader.stats();
    assert!(stats.feed_polls > 0, "no feed poll on the request path");
    assert!(
        stats.idle_evictions >= 10,
        "idle_evictions = {}",
        stats.idle_evictions
    );
    assert_eq!(stats.keys, 1, "keys = {}", stats.keys);
    let reads = probe.key_reads();
    for key in &f.keys[1..] {
        assert_identity(&reader.authenticate(&key.0).await, key);
    }
    assert_eq!(
        probe.key_reads() - reads,
        10,
        "each swept key: one point read"
    );
}

// A12 + A11: a revoked key that went idle (swept) is re-read as revoked, on the revoking
// instance and on another one; idle expiry never resurrects a revocation.
#[tokio::test(start_paused = true)]
async fn a12_idle_expiry_never_resurrects_a_revoked_key() {
    let _serial = shared();
    let f = fleet(2).await;
    let idle = Duration::from_secs(5);
    let a = ApiKeyCache::new(f.store.clone(), idle_config(idle));
    let b = ApiKeyCache::new(f.store.clone(), idle_config(idle));
    let key = &f.keys[0];
    assert_identity(&a.authenticate(&key.0).await, key);
    assert_identity(&b.authenticate(&key.0).await, key);
    a.revoke_key(&apikey_cache::KeyId::new(key.1.as_str()))
        .await
        .expect("revoke");
    assert!(is_revoked(&a.authenticate(&key.0).await));
    advance(Duration::from_secs(3)).await;
    assert!(
        is_revoked(&b.authenticate(&key.0).await),
        "B after one poll"
    );
    for step in 0..30 {
        advance(Duration::from_secs(1)).await;
        // Keep the other key busy so polls and sweeps happen.
        assert_identity(&a.authenticate(&f.keys[1].0).await, &f.keys[1]);
        assert_identity(&b.authenticate(&f.keys[1].0).await, &f.keys[1]);
        if step % 7 == 6 {
            assert!(is_revoked(&a.authenticate(&key.0).await), "A step {step}");
            assert!(is_revoked(&b.authenticate(&key.0).await), "B step {step}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Revocation under concurrency.
// ---------------------------------------------------------------------------------------------

// A3/A11: on a multi-thread runtime, 8 tasks hammer a cached key on A while A revokes it:
// no authentication that *started* after `revoke_key` returned is ever Ok.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a3_no_ok_after_revoke_returned_while_hits_race() {
    let _serial = shared();
    for trial in 0..5 {
        let f = fleet(3).await;
        let a = ApiKeyCache::new(f.store.clone(), CacheConfig::default());
        let key = f.keys[trial % 2].clone();
        assert_identity(&a.authenticate(&key.0).await, &key);
        let revoked = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let after_all = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let a = a.clone();
            let key = key.clone();
            let revoked = revoked.clone();
            let stop = stop.clone();
            let after_all = after_all.clone();
            tasks.push(tokio::spawn(async move {
                let mut violations = 0u64;
                let mut after = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    let started_after = revoked.load(Ordering::SeqCst);
                    let answer = a.authenticate(&key.0).await;
                    if started_after {
                        after += 1;
                        after_all.fetch_add(1, Ordering::SeqCst);
                        if answer.is_ok() {
                            violations += 1;
                        }
                    }
                    tokio::task::yield_now().await;
                }
                (violations, after)
            }));
        }
        tokio::task::yield_now().await;
        a.revoke_key(&apikey_cache::KeyId::new(key.1.as_str()))
            .await
            .expect("revoke");
        revoked.store(true, Ordering::SeqCst);
        // Let the hitters make 2 000 requests after the revocation (a hang guard, no sleep).
        let wait = async {
            while after_all.load(Ordering::SeqCst) < 2_000 {
                tokio::task::yield_now().await;
            }
        };
        timeout(Duration::from_secs(60), wait)
            .await
            .expect("hitters made no progress after the revocation");
        stop.store(true, Ordering::SeqCst);
        let mut violations = 0;
        let mut after = 0;
        for task in tasks {
            let (v, n) = bounded("hitter", task).await.expect("task");
            violations += v;
            after += n;
        }
        assert_eq!(
            violations, 0,
            "trial {trial}: {violations} Ok answers after revoke returned"
        );
        assert!(after > 0, "trial {trial}: no request after the revocation");
        assert!(is_revoked(&a.authenticate(&key.0).await));
    }
}

// A11: B rejects a key revoked on A within one poll (virtual time), although B had it cached
// and was hitting it, and B then stays revoked under continued use (including past key_idle).
#[tokio::test(start_paused = true)]
async fn a11_other_instance_rejects_within_one_poll_and_stays_rejected() {
    let _serial = shared();
    let f = fleet(2).await;
    let poll = Duration::from_secs(2);
    let a = ApiKeyCache::new(f.store.clone(), CacheConfig::default().poll(poll));
    let b = ApiKeyCache::new(
        f.store.clone(),
        CacheConfig::default()
            .poll(poll)
            .key_idle(Duration::from_secs(3)),
    );
    let key = &f.keys[0];
    assert_identity(&b.authenticate(&key.0).await, key);
    advance(Duration::from_millis(700)).await;
    assert_identity(&b.authenticate(&key.0).await, key);
    a.revoke_key(&apikey_cache::KeyId::new(key.1.as_str()))
        .await
        .expect("revoke");
    // Within one poll (+ a hair for the poll to be due) B must say Revoked.
    advance(poll + Duration::from_millis(1)).await;
    let answer = b.authenticate(&key.0).await;
    assert!(is_revoked(&answer), "B after one poll: {answer:?}");
    for _ in 0..20 {
        advance(Duration::from_millis(900)).await;
        assert!(
            is_revoked(&b.authenticate(&key.0).await),
            "B resurrected the key"
        );
    }
}

// A11: B revokes a key that 4 clients keep using on A (every 100 ms): once A has answered
// Revoked it never answers Ok again, and every request that starts one poll (+ one feed read)
// after `revoke_key` returned is Revoked.
#[tokio::test(start_paused = true)]
async fn a11_revocation_on_b_is_monotonic_on_a_and_within_one_poll() {
    let _serial = shared();
    let f = fleet(2).await;
    f.store.set_latency(Duration::from_millis(3));
    let poll = Duration::from_secs(2);
    let a = ApiKeyCache::new(f.store.clone(), CacheConfig::default().poll(poll));
    let b = ApiKeyCache::new(f.store.clone(), CacheConfig::default().poll(poll));
    let key = f.keys[0].clone();
    assert_identity(&a.authenticate(&key.0).await, &key);
    let origin = tokio::time::Instant::now();
    let revoked_at = Arc::new(Mutex::new(None::<tokio::time::Instant>));
    let mut clients = Vec::new();
    for c in 0..4u64 {
        let a = a.clone();
        let key = key.clone();
        clients.push(tokio::spawn(async move {
            let mut log = Vec::new();
            tokio::time::sleep(Duration::from_millis(25 * c)).await;
            while origin.elapsed() < Duration::from_secs(12) {
                let start = tokio::time::Instant::now();
                let answer = a.authenticate(&key.0).await;
                log.push((
                    start,
                    tokio::time::Instant::now(),
                    answer.is_ok(),
                    is_revoked(&answer),
                ));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            log
        }));
    }
    tokio::time::sleep(Duration::from_millis(3_333)).await;
    b.revoke_key(&apikey_cache::KeyId::new(key.1.as_str()))
        .await
        .expect("revoke");
    *revoked_at.lock().unwrap() = Some(tokio::time::Instant::now());
    let mut log = Vec::new();
    for c in clients {
        log.extend(bounded("client", c).await.expect("client"));
    }
    let revoked_at = revoked_at.lock().unwrap().expect("revoked");
    log.sort_by_key(|e| e.0);
    let first_revoked_end = log
        .iter()
        .filter(|e| e.3)
        .map(|e| e.1)
        .min()
        .expect("never revoked");
    for e in &log {
        assert!(e.2 || e.3, "an answer neither Ok nor Revoked");
        if e.0 >= first_revoked_end {
            assert!(
                !e.2,
                "Ok at {:?} after A had answered Revoked",
                e.0 - origin
            );
        }
        if e.0 >= revoked_at + poll + Duration::from_millis(50) {
            assert!(
                e.3,
                "not revoked {:?} after revoke_key returned",
                e.0 - revoked_at
            );
        }
    }
}

// A10/A12: a *re-read of an idle-expired key* on B that overlaps A's revocation (B reads the
// record before the revocation, B's feed poll sees the revocation before the read returns)
// must not re-cache the pre-revocation state: at most that one overlapping request may be Ok;
// the next request after it is Revoked.
#[tokio::test(start_paused = true)]
async fn a10_idle_reread_overlapping_a_revocation_is_not_recached() {
    let _serial = shared();
    let f = fleet(2).await;
    let probe = Probe::new(f.store.clone());
    let idle = Duration::from_secs(5);
    let b = ApiKeyCache::new(probe.clone(), idle_config(idle));
    let a = ApiKeyCache::new(f.store.clone(), CacheConfig::default());
    let (key, other) = (&f.keys[0], &f.keys[1]);
    assert_identity(&b.authenticate(&key.0).await, key);
    assert_identity(&b.authenticate(&other.0).await, other);
    // The key goes idle on B; the other key keeps B's feed tailed.
    for _ in 0..8 {
        advance(Duration::from_secs(1)).await;
        assert_identity(&b.authenticate(&other.0).await, other);
    }
    advance(Duration::from_millis(100)).await;
    // B's next use of the key is a point read: hold it after it read the record.
    probe.stall_reads_of(Some(record_of(&key.0)));
    let overlapping = tokio::spawn({
        let b = b.clone();
        let key = key.0.clone();
        async move { b.authenticate(&key).await }
    });
    bounded("stalled read", probe.wait_arrivals(1)).await;
    // Meanwhile A revokes, and B reads the feed (a request of the other key once poll is due).
    a.revoke_key(&apikey_cache::KeyId::new(key.1.as_str()))
        .await
        .expect("revoke");
    advance(Duration::from_secs(3)).await;
    let polls = b.stats().feed_polls;
    assert_identity(&b.authenticate(&other.0).await, other);
    assert!(
        b.stats().feed_polls > polls,
        "B did not read the feed during the stalled read"
    );
    probe.stall_reads_of(None);
    probe.release_one();
    let first = bounded("overlapping", overlapping).await.expect("task");
    let _ = first; // answered, either way (the read started before the revocation)
    let next = b.authenticate(&key.0).await;
    assert!(
        is_revoked(&next),
        "pre-revocation state re-cached: {next:?}"
    );
    advance(Duration::from_secs(1)).await;
    assert!(
        is_revoked(&b.authenticate(&key.0).await),
        "later: not revoked"
    );
}

// A10/A11: the *safety revalidation* of a cached key (the entry is present, unlike an idle
// re-read) overlapping a revocation: B's re-read reads the pre-revocation record, then the
// revocation reaches B (through the feed, or B's own `revoke_key`) while the re-read is held,
// then the re-read returns. It must not overwrite the revoked state with the stale one.
async fn revalidation_overlapping_revocation(revoke_on_b: bool) {
    let _serial = shared();
    let f = fleet(2).await;
    let probe = Probe::new(f.store.clone());
    let config = CacheConfig::default().revalidate(Duration::from_secs(40));
    let b = ApiKeyCache::new(probe.clone(), config);
    let a = ApiKeyCache::new(f.store.clone(), CacheConfig::default());
    let (key, other) = (&f.keys[0], &f.keys[1]);
    assert_identity(&b.authenticate(&key.0).await, key);
    assert_identity(&b.authenticate(&other.0).await, other);
    let base = probe.key_reads();
    probe.stall_reads_of(Some(record_of(&key.0)));
    let mut pending = Vec::new();
    let mut waited = 0;
    // Use both keys every 500 ms until B re-reads the key (between 30 and 40 s).
    while probe.state.arrived_count.load(Ordering::SeqCst) == 0 {
        advance(Duration::from_millis(500)).await;
        waited += 500;
        assert!(waited <= 60_000, "no revalidation within 60 s");
        assert_identity(&b.authenticate(&other.0).await, other);
        pending.push(tokio::spawn({
            let b = b.clone();
            let key = key.0.clone();
            async move { b.authenticate(&key).await }
        }));
        for _ in 0..5 {
            tokio::task::yield_now().await;
        }
    }
    assert!(waited >= 29_000, "revalidated after only {waited} ms");
    // (The other key may have been revalidated meanwhile too.)
    assert!(probe.key_reads() <= base + 2);
    let revoke = apikey_cache::KeyId::new(key.1.as_str());
    if revoke_on_b {
        bounded("revoke on B", b.revoke_key(&revoke))
            .await
            .expect("revoke");
    } else {
        a.revoke_key(&revoke).await.expect("revoke");
        advance(Duration::from_millis(2_100)).await;
        let polls = b.stats().feed_polls;
        assert_identity(&b.authenticate(&other.0).await, other);
        assert!(
            b.stats().feed_polls > polls,
            "B did not poll during the held re-read"
        );
    }
    let during = b.authenticate(&key.0).await;
    assert!(is_revoked(&during), "while the re-read is held: {during:?}");
    probe.release_one();
    for t in pending {
        let _ = bounded("pending", t).await.expect("task");
    }
    for step in 0..10 {
        let answer = b.authenticate(&key.0).await;
        assert!(
            is_revoked(&answer),
            "step {step}: the held pre-revocation re-read overwrote the revocation: {answer:?}"
        );
        advance(Duration::from_millis(300)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn a11_revalidation_overlapping_a_feed_revocation_is_not_recached() {
    revalidation_overlapping_revocation(false).await;
}

#[tokio::test(start_paused = true)]
async fn a3_revalidation_overlapping_own_revocation_is_not_recached() {
    revalidation_overlapping_revocation(true).await;
}

// A11: a point read that overlapped a *gap* (the revocation's feed entry was lost with a
// rotated segment) must not be cached either: the gap says "anything may have changed", and
// the read may predate the lost revocation. B's read of an uncached key is held after reading
// the pre-revocation record; A revokes; the feed segments are dropped; B polls and sees the
// gap; the read returns. B's next request must read the key again (Revoked).
#[tokio::test(start_paused = true)]
async fn a11_point_read_overlapping_a_gap_is_not_cached() {
    let _serial = shared();
    let f = fleet(2).await;
    let probe = Probe::new(f.store.clone());
    let b = ApiKeyCache::new(probe.clone(), CacheConfig::default());
    let a = ApiKeyCache::new(f.store.clone(), CacheConfig::default());
    let (key, other) = (&f.keys[0], &f.keys[1]);
    assert_identity(&b.authenticate(&other.0).await, other);
    advance(Duration::from_secs(3)).await;
    assert_identity(&b.authenticate(&other.0).await, other);
    probe.stall_reads_of(Some(record_of(&key.0)));
    let overlapping = tokio::spawn({
        let b = b.clone();
        let key = key.0.clone();
        async move { b.authenticate(&key).await }
    });
    bounded("stalled read", probe.wait_arrivals(1)).await;
    a.revoke_key(&apikey_cache::KeyId::new(key.1.as_str()))
        .await
        .expect("revoke");
    f.store.drop_feed_segments();
    advance(Duration::from_millis(2_100)).await;
    let gaps = b.stats().feed_gaps;
    assert_identity(&b.authenticate(&other.0).await, other);
    assert!(
        b.stats().feed_gaps > gaps,
        "B did not see the gap: {:?}",
        b.stats()
    );
    probe.release_one();
    let _ = bounded("overlapping", overlapping).await.expect("task");
    let next = b.authenticate(&key.0).await;
    assert!(
        is_revoked(&next),
        "a read overlapping a gap was cached: {next:?}"
    );
}

// Cache inserts racing with feed invalidations, many times over: B's point reads of a fresh
// key (readers started at staggered virtual offsets) race with A's revocation of it, every
// store operation taking 1 ms, so reads overlap each phase of the revocation (id read, record
// read, record replace, feed append) and B's feed polls (poll 1 ms). Once B has had two polls
// after the revocation returned, B answers Revoked, whatever the interleaving.
#[tokio::test(start_paused = true)]
async fn a11_inserts_racing_feed_invalidations_never_leave_a_revoked_key_cached() {
    let _serial = shared();
    let f = fleet(1).await;
    let poll = Duration::from_millis(1);
    let a = ApiKeyCache::new(f.store.clone(), CacheConfig::default());
    let b = ApiKeyCache::new(
        f.store.clone(),
        CacheConfig::default()
            .poll(poll)
            .revalidate(Duration::from_secs(24 * 3600)),
    );
    let account = apikey_cache::AccountId::new("acme");
    f.store.set_latency(Duration::from_millis(1));
    let mut failures = Vec::new();
    for round in 0..60u64 {
        let issued = a.issue_key(&account).await.expect("issue");
        let secret = issued.secret.expose().to_owned();
        let mut readers = Vec::new();
        for r in 0..4u64 {
            let b = b.clone();
            let secret = secret.clone();
            let offset = Duration::from_micros((round * 173 + r * 1_310) % 6_000);
            readers.push(tokio::spawn(async move {
                tokio::time::sleep(offset).await;
                for _ in 0..3 {
                    let _ = b.authenticate(&secret).await;
                    tokio::time::sleep(Duration::from_micros(700)).await;
                }
            }));
        }
        a.revoke_key(&issued.identity.key).await.expect("revoke");
        for r in readers {
            bounded("reader", r).await.expect("reader");
        }
        // Two polls of B after the revocation returned (request-driven).
        for _ in 0..3 {
            tokio::time::sleep(poll * 3).await;
            let _ = b.authenticate(&f.keys[0].0).await;
        }
        let answer = b.authenticate(&secret).await;
        if !is_revoked(&answer) {
            failures.push((round, format!("{answer:?}")));
        }
    }
    assert!(
        failures.is_empty(),
        "revoked keys still accepted on B: {failures:?}"
    );
}

// A3/A10: on the revoking instance itself, a point read of the key that started before
// `revoke_key` (it read the pre-revocation record) and returns after it must not re-cache the
// pre-revocation state: the overlapping request may be answered either way, every request
// that starts after `revoke_key` returned is Revoked (A's own poll is not due, so only the
// local write can tell it).
#[tokio::test(start_paused = true)]
async fn a3_own_point_read_overlapping_own_revocation_is_not_recached() {
    let _serial = shared();
    for prior_use in [false, true] {
        let f = fleet(2).await;
        let probe = Probe::new(f.store.clone());
        let idle = Duration::from_secs(5);
        let a = ApiKeyCache::new(probe.clone(), idle_config(idle));
        let (key, other) = (&f.keys[0], &f.keys[1]);
        assert_identity(&a.authenticate(&other.0).await, other);
        if prior_use {
            // The key was cached, then went idle: its next use is a re-read.
            assert_identity(&a.authenticate(&key.0).await, key);
            for _ in 0..7 {
                advance(Duration::from_secs(1)).await;
                assert_identity(&a.authenticate(&other.0).await, other);
            }
        }
        probe.stall_reads_of(Some(record_of(&key.0)));
        let overlapping = tokio::spawn({
            let a = a.clone();
            let key = key.0.clone();
            async move { a.authenticate(&key).await }
        });
        bounded("stalled read", probe.wait_arrivals(1)).await;
        bounded(
            "revoke",
            a.revoke_key(&apikey_cache::KeyId::new(key.1.as_str())),
        )
        .await
        .expect("revoke");
        let right_after = a.authenticate(&key.0).await;
        assert!(
            is_revoked(&right_after),
            "prior_use {prior_use}: right after revoke_key: {right_after:?}"
        );
        probe.release_one();
        let _ = bounded("overlapping", overlapping).await.expect("task");
        let polls = a.stats().feed_polls;
        let next = a.authenticate(&key.0).await;
        assert_eq!(
            a.stats().feed_polls,
            polls,
            "a poll was due; the test lost its point"
        );
        assert!(
            is_revoked(&next),
            "prior_use {prior_use}: pre-revocation state re-cached on the revoking instance: {next:?}"
        );
        for _ in 0..5 {
            advance(Duration::from_millis(700)).await;
            assert!(
                is_revoked(&a.authenticate(&key.0).await),
                "prior_use {prior_use}: later"
            );
        }
    }
}

// A12: the bound holds for every capacity from 1 to 70 (not only multiples of the shard
// count), also when all reads complete at once (1 ms store latency, 150 distinct keys
// authenticated concurrently, so 150 inserts race), and every answer is the key's own.
#[tokio::test(start_paused = true)]
async fn a12_capacity_bound_for_every_small_capacity_with_racing_inserts() {
    let _serial = shared();
    let f = fleet(150).await;
    f.store.set_latency(Duration::from_millis(1));
    let keys = Arc::new(f.keys.clone());
    for capacity in (1u64..=70).chain([100, 127, 128, 129, 149]) {
        let reader = ApiKeyCache::new(
            f.store.clone(),
            CacheConfig::default()
                .key_capacity(capacity)
                .point_reads_per_second(1_000_000),
        );
        for round in 0..2 {
            let mut tasks = Vec::new();
            for i in 0..keys.len() {
                let reader = reader.clone();
                let keys = keys.clone();
                tasks.push(tokio::spawn(async move {
                    let answer = reader.authenticate(&keys[i].0).await;
                    assert_identity(&answer, &keys[i]);
                    reader.stats().keys
                }));
            }
            for t in tasks {
                let seen = bounded("auth", t).await.expect("task");
                assert!(
                    seen <= capacity,
                    "capacity {capacity} round {round}: stats().keys = {seen}"
                );
            }
            let keys_now = reader.stats().keys;
            assert!(
                keys_now <= capacity,
                "capacity {capacity}: {keys_now} after"
            );
            assert!(keys_now > 0, "capacity {capacity}: nothing cached");
        }
    }
}

// A12 + metrics: `apikey.cache.idle_evictions` counts what the sweep freed, like the stats.
#[tokio::test(start_paused = true)]
async fn a12_idle_evictions_metric_matches_stats() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    let _serial = shared();
    let f = fleet(6).await;
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let idle = Duration::from_secs(4);
    let reader = metrics::with_local_recorder(&recorder, || {
        ApiKeyCache::new(f.store.clone(), idle_config(idle))
    });
    for key in &f.keys {
        assert_identity(&reader.authenticate(&key.0).await, key);
    }
    for _ in 0..20 {
        advance(Duration::from_secs(1)).await;
        assert_identity(&reader.authenticate(&f.keys[0].0).await, &f.keys[0]);
    }
    let stats = reader.stats();
    assert_eq!(stats.idle_evictions, 5, "stats: {stats:?}");
    assert_eq!(stats.keys, 1);
    let counter = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .find(|(key, ..)| key.key().name() == "apikey.cache.idle_evictions")
        .map(|(.., value)| value);
    match counter {
        Some(DebugValue::Counter(n)) => assert_eq!(n, 5, "idle_evictions metric"),
        other => panic!("apikey.cache.idle_evictions not recorded: {other:?}"),
    }
}

// A4 with point lookups: 200 concurrent first uses of one valid uncached key, and of one
// well-formed unknown key, each share a single point read.
#[tokio::test(start_paused = true)]
async fn a4_concurrent_first_uses_of_one_key_share_one_point_read() {
    let _serial = shared();
    let f = fleet(1).await;
    f.store.set_latency(Duration::from_millis(2));
    let probe = Probe::new(f.store.clone());
    let reader = ApiKeyCache::new(probe.clone(), CacheConfig::default());
    let unknown = forge_key(99);
    for (name, presented, valid) in [
        ("valid", f.keys[0].0.clone(), true),
        ("unknown", unknown, false),
    ] {
        let reads = probe.key_reads();
        let mut tasks = Vec::new();
        for _ in 0..200 {
            let reader = reader.clone();
            let presented = presented.clone();
            tasks.push(tokio::spawn(async move {
                reader.authenticate(&presented).await
            }));
        }
        for t in tasks {
            let answer = bounded(name, t).await.expect("task");
            if valid {
                assert_identity(&answer, &f.keys[0]);
            } else {
                assert!(matches!(answer, Err(AuthError::Unknown)), "{answer:?}");
            }
        }
        let n = probe.key_reads() - reads;
        assert_eq!(
            n, 1,
            "{name}: 200 concurrent first uses cost {n} point reads"
        );
    }
}

// A11: when the feed poll comes due, 200 concurrent requests of cached keys cost one feed
// read, not 200.
#[tokio::test(start_paused = true)]
async fn a11_due_poll_under_concurrent_hits_costs_one_feed_read() {
    let _serial = shared();
    let f = fleet(4).await;
    let probe = Probe::new(f.store.clone());
    let reader = ApiKeyCache::new(probe.clone(), CacheConfig::default());
    for key in &f.keys {
        assert_identity(&reader.authenticate(&key.0).await, key);
    }
    f.store.set_latency(Duration::from_millis(2));
    for round in 0..3 {
        advance(Duration::from_millis(2_100)).await;
        let feeds = probe.feed_reads();
        let mut tasks = Vec::new();
        for i in 0..200 {
            let reader = reader.clone();
            let key = f.keys[i % 4].clone();
            tasks.push(tokio::spawn(async move {
                let answer = reader.authenticate(&key.0).await;
                assert_identity(&answer, &key);
            }));
        }
        for t in tasks {
            bounded("hits", t).await.expect("task");
        }
        let n = probe.feed_reads() - feeds;
        assert!(n <= 1, "round {round}: one due poll cost {n} feed reads");
    }
}

// "A hung store never hangs authentication" (SPEC). With the feed read hung when the poll
// comes due, cached keys keep answering: the request that pays the read, and the requests
// arriving while that first stuck read runs, wait at most `load_timeout` (the guide's
// failure table allows waiting for the first stuck read), the ones after it not at all.
#[tokio::test(start_paused = true)]
async fn a11_first_hung_feed_read_delays_cached_hits_at_most_load_timeout() {
    let _serial = shared();
    let f = fleet(2).await;
    let probe = Probe::new(f.store.clone());
    let load_timeout = Duration::from_secs(5);
    let reader = ApiKeyCache::new(
        probe.clone(),
        CacheConfig::default().load_timeout(load_timeout),
    );
    for key in &f.keys {
        assert_identity(&reader.authenticate(&key.0).await, key);
    }
    advance(Duration::from_millis(2_100)).await;
    probe.state.hang_feeds.store(true, Ordering::SeqCst);
    let start = tokio::time::Instant::now();
    let payer = tokio::spawn({
        let reader = reader.clone();
        let key = f.keys[0].0.clone();
        async move {
            let answer = reader.authenticate(&key).await;
            (answer.is_ok(), tokio::time::Instant::now())
        }
    });
    // Let the payer start its feed read.
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert!(probe.feed_reads() >= 1, "no feed read started");
    // Requests arriving while the read hangs: answered without waiting for it.
    let mut waits = Vec::new();
    for i in 0..10 {
        let before = tokio::time::Instant::now();
        let key = &f.keys[i % 2];
        let answer = bounded("hit during hung feed", reader.authenticate(&key.0)).await;
        assert_identity(&answer, key);
        waits.push(before.elapsed());
    }
    let (ok, end) = bounded("payer", payer).await.expect("payer");
    assert!(ok, "the paying request was rejected");
    assert!(
        end - start <= load_timeout + Duration::from_millis(100),
        "the paying request waited {:?}",
        end - start
    );
    let worst = waits.iter().max().copied().unwrap_or_default();
    assert!(
        worst <= load_timeout + Duration::from_millis(100),
        "hits of cached keys waited for the hung feed read: {waits:?}"
    );
    assert!(
        waits[1..].iter().all(|w| *w < Duration::from_millis(100)),
        "hits after the first stuck read ended still waited: {waits:?}"
    );
}

// "A hung store never hangs authentication" (SPEC) and the guide's failure table: with the
// store hung, requests waiting for the *first* stuck read wait at most `load_timeout`, later
// ones not at all. With the feed read hung for a minute, requests of cached keys every 100 ms
// (from 4 concurrent clients): after the first stuck poll, none waits again.
#[tokio::test(start_paused = true)]
async fn a11_permanently_hung_feed_stalls_cached_hits_at_most_once() {
    hung_feed_stalls(false).await;
}

// The same with the background watcher tailing the feed (`spawn_watcher(poll)`): requests
// should then never wait for a feed read at all.
#[tokio::test(start_paused = true)]
async fn a11_permanently_hung_feed_with_watcher_stalls_cached_hits_at_most_once() {
    hung_feed_stalls(true).await;
}

async fn hung_feed_stalls(watcher: bool) {
    let _serial = shared();
    let f = fleet(2).await;
    let probe = Probe::new(f.store.clone());
    let load_timeout = Duration::from_secs(5);
    let config = CacheConfig::default().load_timeout(load_timeout);
    let reader = ApiKeyCache::new(probe.clone(), config.clone());
    let _watcher = watcher.then(|| reader.spawn_watcher(config.poll_interval()));
    for key in &f.keys {
        assert_identity(&reader.authenticate(&key.0).await, key);
    }
    probe.state.hang_feeds.store(true, Ordering::SeqCst);
    let origin = tokio::time::Instant::now();
    let mut clients = Vec::new();
    for c in 0..4u64 {
        let reader = reader.clone();
        let key = f.keys[(c % 2) as usize].clone();
        clients.push(tokio::spawn(async move {
            let mut stalls = Vec::new();
            tokio::time::sleep(Duration::from_millis(25 * c)).await;
            while origin.elapsed() < Duration::from_secs(60) {
                let before = tokio::time::Instant::now();
                let answer = reader.authenticate(&key.0).await;
                // Fail-open for known keys while the feed is unreadable is documented.
                assert_identity(&answer, &key);
                let waited = before.elapsed();
                if waited >= Duration::from_millis(100) {
                    stalls.push(((before - origin).as_secs_f32(), waited.as_secs_f32()));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            stalls
        }));
    }
    let mut stalls = Vec::new();
    for c in clients {
        stalls.extend(bounded("client", c).await.expect("client"));
    }
    stalls.sort_by(|a, b| a.0.total_cmp(&b.0));
    let worst = stalls.iter().map(|s| s.1).fold(0f32, f32::max);
    assert!(
        worst <= load_timeout.as_secs_f32() + 0.1,
        "a request waited {worst} s"
    );
    // Only requests that started before the first stuck poll ended may have waited.
    let late: Vec<_> = stalls
        .iter()
        .filter(|s| s.0 > load_timeout.as_secs_f32() + 2.5)
        .collect();
    assert!(
        late.is_empty(),
        "{} requests after the first stuck poll waited (start s, waited s): {late:?}",
        late.len()
    );
}

// The same root cause without any outage: a healthy but slow feed (each read 300 ms, e.g. a
// slow Blob GET). The guide: "one request pays one small read" per poll. Four clients hit
// cached keys every 50 ms for 30 s: per poll, at most one request should wait for the feed.
#[tokio::test(start_paused = true)]
async fn a11_slow_feed_read_is_paid_by_one_request_per_poll() {
    let _serial = shared();
    let f = fleet(2).await;
    let probe = Probe::new(f.store.clone());
    let reader = ApiKeyCache::new(probe.clone(), CacheConfig::default());
    for key in &f.keys {
        assert_identity(&reader.authenticate(&key.0).await, key);
    }
    probe.state.feed_latency_ms.store(300, Ordering::SeqCst);
    let origin = tokio::time::Instant::now();
    let feeds = probe.feed_reads();
    let mut clients = Vec::new();
    for c in 0..4u64 {
        let reader = reader.clone();
        let key = f.keys[(c % 2) as usize].clone();
        clients.push(tokio::spawn(async move {
            let mut waited = 0u64;
            tokio::time::sleep(Duration::from_millis(12 * c)).await;
            while origin.elapsed() < Duration::from_secs(30) {
                let before = tokio::time::Instant::now();
                assert_identity(&reader.authenticate(&key.0).await, &key);
                if before.elapsed() >= Duration::from_millis(50) {
                    waited += 1;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            waited
        }));
    }
    let mut waited = 0;
    for c in clients {
        waited += bounded("client", c).await.expect("client");
    }
    let polls = probe.feed_reads() - feeds;
    assert!(polls >= 5, "only {polls} feed reads in 30 s");
    assert!(
        waited <= polls,
        "{waited} requests waited for {polls} feed reads (one payer per poll expected)"
    );
}

// "A hung store never hangs authentication" for point reads: with one key's record hung, an
// uncached use of it gets `Unavailable` within `load_timeout`, and cached keys and other
// uncached keys answer meanwhile without waiting.
#[tokio::test(start_paused = true)]
async fn a10_hung_point_read_is_unavailable_in_time_and_blocks_no_one() {
    let _serial = shared();
    let f = fleet(3).await;
    let probe = Probe::new(f.store.clone());
    let load_timeout = Duration::from_secs(5);
    let reader = ApiKeyCache::new(
        probe.clone(),
        CacheConfig::default().load_timeout(load_timeout),
    );
    let (cached, hung, other) = (&f.keys[0], &f.keys[1], &f.keys[2]);
    assert_identity(&reader.authenticate(&cached.0).await, cached);
    probe
        .state
        .hang_names
        .lock()
        .unwrap()
        .push(record_of(&hung.0));
    let start = tokio::time::Instant::now();
    let stuck = tokio::spawn({
        let reader = reader.clone();
        let key = hung.0.clone();
        async move { reader.authenticate(&key).await }
    });
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    let t0 = tokio::time::Instant::now();
    assert_identity(&reader.authenticate(&cached.0).await, cached);
    assert_identity(&reader.authenticate(&other.0).await, other);
    assert!(
        t0.elapsed() < Duration::from_millis(100),
        "others waited {:?}",
        t0.elapsed()
    );
    let answer = bounded("stuck", stuck).await.expect("task");
    assert!(
        matches!(answer, Err(AuthError::Unavailable { .. })),
        "{answer:?}"
    );
    assert!(start.elapsed() <= load_timeout + Duration::from_millis(100));
}

// A cached key whose safety revalidation hangs (its record read never answers): the guide's
// failure table says a key cached before is answered from the cache (`stale_served`), and a
// hung store costs known keys at most one `load_timeout` "and nothing after that". Used every
// 250 ms for 90 s (revalidation due after 30-40 s), at most one request may wait.
#[tokio::test(start_paused = true)]
async fn a10_hung_revalidation_of_a_cached_key_stalls_at_most_once() {
    revalidation_failure_run(true).await;
}

// The same with the key's record reads failing at once (not hanging): the key is answered from
// the cache, and the failing store is not re-read on every request (the guide's retry back-off:
// "so a down store is not hammered"): at most one read per second of use here.
#[tokio::test(start_paused = true)]
async fn a10_failing_revalidation_of_a_cached_key_serves_stale_without_hammering() {
    revalidation_failure_run(false).await;
}

async fn revalidation_failure_run(hang: bool) {
    let _serial = shared();
    let f = fleet(1).await;
    let probe = Probe::new(f.store.clone());
    let load_timeout = Duration::from_secs(5);
    let reader = ApiKeyCache::new(
        probe.clone(),
        CacheConfig::default()
            .load_timeout(load_timeout)
            .revalidate(Duration::from_secs(40)),
    );
    let key = &f.keys[0];
    assert_identity(&reader.authenticate(&key.0).await, key);
    if hang {
        probe
            .state
            .hang_names
            .lock()
            .unwrap()
            .push(record_of(&key.0));
    } else {
        probe
            .state
            .fail_names
            .lock()
            .unwrap()
            .push(record_of(&key.0));
    }
    let reads = probe.key_reads();
    let origin = tokio::time::Instant::now();
    let mut stalls = Vec::new();
    let mut uses = 0u64;
    while origin.elapsed() < Duration::from_secs(90) {
        let before = tokio::time::Instant::now();
        let answer = reader.authenticate(&key.0).await;
        assert_identity(&answer, key);
        uses += 1;
        if before.elapsed() >= Duration::from_millis(100) {
            stalls.push((
                (before - origin).as_secs_f32(),
                before.elapsed().as_secs_f32(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let rereads = probe.key_reads() - reads;
    assert!(rereads >= 1, "never revalidated in 90 s");
    assert!(reader.stats().stale_served > 0, "{:?}", reader.stats());
    assert!(
        stalls.len() <= 1,
        "requests waited for the hung revalidation (start s, waited s): {stalls:?}"
    );
    assert!(
        rereads <= 60,
        "{rereads} re-reads of a failing record in {uses} uses over 90 s"
    );
}

// The guide: "CLOCK-Pro: a key used more than once outlives a scan of one-off keys".
#[tokio::test(start_paused = true)]
async fn a12_a_reused_key_outlives_a_scan_of_one_off_keys() {
    let _serial = shared();
    let f = fleet(301).await;
    let probe = Probe::new(f.store.clone());
    let reader = ApiKeyCache::new(
        probe.clone(),
        CacheConfig::default()
            .key_capacity(64)
            .point_reads_per_second(1_000_000),
    );
    let hot = &f.keys[0];
    for _ in 0..3 {
        assert_identity(&reader.authenticate(&hot.0).await, hot);
    }
    for key in &f.keys[1..] {
        assert_identity(&reader.authenticate(&key.0).await, key);
    }
    let reads = probe.key_reads();
    assert_identity(&reader.authenticate(&hot.0).await, hot);
    assert_eq!(
        probe.key_reads(),
        reads,
        "the reused key was pushed out by 300 one-off keys"
    );
}

// A12 timing edge: `key_idle` of 4 ms with the watcher polling (and sweeping) every 1 ms: a
// key used every 3 ms for 3 s (1 000 uses, ~750 sweeps) is never dropped, while a key left
// alone is swept and re-read.
#[tokio::test(start_paused = true)]
async fn a12_tight_key_idle_sweeps_never_drop_a_key_in_use() {
    let _serial = shared();
    let f = fleet(2).await;
    let probe = Probe::new(f.store.clone());
    let config = idle_config(Duration::from_millis(4)).poll(Duration::from_millis(1));
    let reader = ApiKeyCache::new(probe.clone(), config.clone());
    let _watcher = reader.spawn_watcher(config.poll_interval());
    let (hot, cold) = (&f.keys[0], &f.keys[1]);
    assert_identity(&reader.authenticate(&hot.0).await, hot);
    assert_identity(&reader.authenticate(&cold.0).await, cold);
    let reads = probe.key_reads();
    for _ in 0..1_000 {
        advance(Duration::from_millis(3)).await;
        assert_identity(&reader.authenticate(&hot.0).await, hot);
    }
    assert_eq!(
        probe.key_reads(),
        reads,
        "a key used every 3 ms with key_idle 4 ms was re-read"
    );
    let stats = reader.stats();
    assert!(stats.idle_evictions >= 1, "cold key never swept: {stats:?}");
    assert_eq!(stats.keys, 1);
    assert_identity(&reader.authenticate(&cold.0).await, cold);
    assert_eq!(probe.key_reads(), reads + 1);
}

// A11 + stats: a feed gap drops every cached key (the guide), so `stats().keys` falls and each
// key costs one point read on its next use, answered correctly (a revoked one still revoked).
#[tokio::test(start_paused = true)]
async fn a11_gap_drops_cached_keys_and_each_is_reread_once() {
    let _serial = shared();
    let f = fleet(6).await;
    f.writer
        .revoke_key(&apikey_cache::KeyId::new(f.keys[5].1.as_str()))
        .await
        .expect("revoke");
    let probe = Probe::new(f.store.clone());
    let reader = ApiKeyCache::new(probe.clone(), idle_config(Duration::from_secs(600)));
    for _ in 0..2 {
        for key in &f.keys[..5] {
            assert_identity(&reader.authenticate(&key.0).await, key);
        }
        assert!(is_revoked(&reader.authenticate(&f.keys[5].0).await));
        advance(Duration::from_secs(3)).await;
    }
    assert_eq!(reader.stats().keys, 6);
    f.store.drop_feed_segments();
    advance(Duration::from_secs(3)).await;
    let reads = probe.key_reads();
    assert_identity(&reader.authenticate(&f.keys[0].0).await, &f.keys[0]);
    let stats = reader.stats();
    assert!(stats.feed_gaps >= 1, "gap not seen: {stats:?}");
    assert!(stats.keys <= 1, "cached keys after a gap: {}", stats.keys);
    for key in &f.keys[1..5] {
        assert_identity(&reader.authenticate(&key.0).await, key);
    }
    assert!(is_revoked(&reader.authenticate(&f.keys[5].0).await));
    assert_eq!(
        probe.key_reads() - reads,
        6,
        "one point read per key after the gap"
    );
}

// X5 via the environment: garbage, zero and huge values for the keyed knobs are clamped or
// ignored (no panic), and the resulting cache bounds and answers correctly.
#[tokio::test(start_paused = true)]
async fn x5_env_knobs_garbage_zero_huge_are_sane() {
    let _serial = shared();
    let f = fleet(3).await;
    let tables: [&[(&str, &str)]; 3] = [
        &[
            ("APIKEY_CACHE_KEY_CAPACITY", "0"),
            ("APIKEY_CACHE_KEY_IDLE_SECONDS", "0"),
            ("APIKEY_CACHE_POLL_MS", "0"),
            ("APIKEY_CACHE_POINT_READS_PER_SECOND", "0"),
            ("APIKEY_CACHE_REVALIDATE_SECONDS", "0"),
            ("APIKEY_CACHE_TTL_SECONDS", "0"),
        ],
        &[
            ("APIKEY_CACHE_KEY_CAPACITY", "18446744073709551616"),
            ("APIKEY_CACHE_KEY_IDLE_SECONDS", "99999999999999999999"),
            ("APIKEY_CACHE_POLL_MS", "-5"),
            ("APIKEY_CACHE_POINT_READS_PER_SECOND", "1e9"),
            ("APIKEY_CACHE_REVALIDATE_SECONDS", "NaN"),
            ("APIKEY_CACHE_TTL_SECONDS", "\u{0}"),
        ],
        &[
            ("APIKEY_CACHE_KEY_CAPACITY", " 2 "),
            ("APIKEY_CACHE_KEY_IDLE_SECONDS", "1"),
            ("APIKEY_CACHE_POLL_MS", "10"),
        ],
    ];
    for (n, table) in tables.iter().enumerate() {
        let config = CacheConfig::from_lookup(|name| {
            table
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        });
        let reader = ApiKeyCache::new(f.store.clone(), config);
        for _ in 0..5 {
            for key in &f.keys {
                assert_identity(&bounded("env", reader.authenticate(&key.0)).await, key);
            }
            advance(Duration::from_millis(700)).await;
        }
        let keys = reader.stats().keys;
        if n == 0 {
            assert!(keys <= 1, "KEY_CAPACITY=0 must clamp to 1: {keys}");
        }
        assert!(keys <= 3, "table {n}: {keys}");
    }
}

// ---------------------------------------------------------------------------------------------
// A5 / junk.
// ---------------------------------------------------------------------------------------------

// A12: junk and typos cost zero store operations even when the tiny cache is full of other
// keys, idle entries are due for a sweep and a feed poll is due.
#[tokio::test(start_paused = true)]
async fn a12_junk_costs_zero_store_reads_with_a_full_cache_and_due_poll() {
    let _serial = shared();
    let f = fleet(3).await;
    let probe = Probe::new(f.store.clone());
    let reader = ApiKeyCache::new(
        probe.clone(),
        CacheConfig::default()
            .key_capacity(1)
            .key_idle(Duration::from_millis(1)),
    );
    for key in &f.keys {
        assert_identity(&reader.authenticate(&key.0).await, key);
    }
    advance(Duration::from_secs(60)).await;
    let ops = probe.all_ops();
    // The first key with its last character changed: never the key itself (a fixed `x` was the
    // key whenever the key ended in `x`, one run in 64).
    let changed_last = {
        let key = &f.keys[0].0;
        let other = if key.ends_with('x') { 'y' } else { 'x' };
        format!("{}{other}", &key[..key.len() - 1])
    };
    let junk: Vec<String> = (0..2_000)
        .map(|i| match i % 5 {
            0 => format!("ak_{:048}", i),
            1 => format!("ak_{}", "A".repeat(48)),
            2 => changed_last.clone(),
            3 => format!("x{}", &f.keys[0].0[1..]),
            _ => format!("junk-{i}"),
        })
        .collect();
    for j in &junk {
        let answer = bounded("junk", reader.authenticate(j)).await;
        assert!(matches!(answer, Err(AuthError::Malformed)), "{answer:?}");
    }
    assert_eq!(probe.all_ops() - ops, 0, "junk reached the store");
}

// A5: well-formed unknown keys: one point read each, then the negative cache (repeats cost
// nothing), and a burst of distinct ones is held to the `point_reads_per_second` budget —
// also with capacity 1 and key_idle 1 ms, where the key cache is useless.
#[tokio::test(start_paused = true)]
async fn a5_unknown_keys_negatively_cached_and_budgeted_with_extreme_cache_config() {
    let _serial = shared();
    let f = fleet(2).await;
    let probe = Probe::new(f.store.clone());
    let reader = ApiKeyCache::new(
        probe.clone(),
        CacheConfig::default()
            .key_capacity(0)
            .key_idle(Duration::ZERO)
            .point_reads_per_second(5),
    );
    let unknown = forge_key(7);
    let answer = reader.authenticate(&unknown).await;
    assert!(matches!(answer, Err(AuthError::Unknown)), "{answer:?}");
    let reads = probe.key_reads();
    assert_eq!(reads, 1);
    for _ in 0..50 {
        assert!(matches!(
            reader.authenticate(&unknown).await,
            Err(AuthError::Unknown)
        ));
    }
    assert_eq!(
        probe.key_reads(),
        reads,
        "a negatively cached key was re-read"
    );
    // 500 distinct forged keys at once: at most the budget's burst of reads (5, +1 slack).
    let mut tasks = Vec::new();
    for i in 0..500u64 {
        let reader = reader.clone();
        let k = forge_key(1_000 + i);
        tasks.push(tokio::spawn(async move { reader.authenticate(&k).await }));
    }
    for t in tasks {
        let answer = bounded("flood", t).await.expect("task");
        assert!(answer.is_err(), "forged key accepted");
    }
    let flood_reads = probe.key_reads() - reads;
    assert!(
        flood_reads <= 6,
        "500 unknown keys at once cost {flood_reads} point reads"
    );
    // While the budget is spent an uncached real key may be rejected as unknown (documented);
    // once it refills, real keys answer correctly.
    for key in &f.keys {
        let answer = reader.authenticate(&key.0).await;
        assert!(
            answer.is_ok() || matches!(answer, Err(AuthError::Unknown)),
            "during the flood: {answer:?}"
        );
        if answer.is_ok() {
            assert_identity(&answer, key);
        }
    }
    advance(Duration::from_millis(1_100)).await;
    for key in &f.keys {
        assert_identity(&bounded("real", reader.authenticate(&key.0)).await, key);
    }
}

// A5 + A12: a flood of well-formed unknown keys (valid checksums, no records) never pushes
// verified keys out of the key cache (unknown keys are not verified keys), and the negative
// cache stays within `negative_capacity`; afterwards the real keys are still hits.
#[tokio::test(start_paused = true)]
async fn a5_unknown_key_flood_does_not_evict_verified_keys() {
    let _serial = shared();
    let f = fleet(10).await;
    let probe = Probe::new(f.store.clone());
    let reader = ApiKeyCache::new(
        probe.clone(),
        CacheConfig::default()
            .key_capacity(10)
            .negative_capacity(100)
            .point_reads_per_second(1_000_000)
            .revalidate(Duration::from_secs(24 * 3600)),
    );
    for key in &f.keys {
        assert_identity(&reader.authenticate(&key.0).await, key);
    }
    let mut tasks = Vec::new();
    for i in 0..3_000u64 {
        let reader = reader.clone();
        let k = forge_key(50_000 + i);
        tasks.push(tokio::spawn(async move { reader.authenticate(&k).await }));
    }
    for t in tasks {
        let answer = bounded("flood", t).await.expect("task");
        assert!(matches!(answer, Err(AuthError::Unknown)), "{answer:?}");
        assert!(reader.stats().negative_entries <= 100);
    }
    let stats = reader.stats();
    assert!(stats.negative_entries <= 100, "{stats:?}");
    assert_eq!(
        stats.keys, 10,
        "verified keys pushed out by unknown keys: {stats:?}"
    );
    let reads = probe.key_reads();
    for key in &f.keys {
        assert_identity(&reader.authenticate(&key.0).await, key);
    }
    assert_eq!(
        probe.key_reads(),
        reads,
        "real keys re-read after an unknown-key flood"
    );
}

// ---------------------------------------------------------------------------------------------
// Extreme configurations: never panic, never hang.
// ---------------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn x5_extreme_cache_configs_behave_sanely() {
    let _serial = shared();
    let f = fleet(3).await;
    let configs: Vec<(&str, CacheConfig)> = vec![
        ("all zero", {
            CacheConfig::default()
                .key_capacity(0)
                .key_idle(Duration::ZERO)
                .ttl(Duration::ZERO)
                .poll(Duration::ZERO)
                .revalidate(Duration::ZERO)
                .point_reads_per_second(0)
                .negative_ttl(Duration::ZERO)
                .negative_capacity(0)
        }),
        ("all huge", {
            CacheConfig::default()
                .key_capacity(u64::MAX)
                .key_idle(Duration::MAX)
                .ttl(Duration::MAX)
                .poll(Duration::MAX)
                .revalidate(Duration::MAX)
                .point_reads_per_second(u32::MAX)
                .negative_ttl(Duration::MAX)
                .negative_capacity(usize::MAX)
        }),
        ("idle zero, ttl zero", {
            CacheConfig::default()
                .key_idle(Duration::ZERO)
                .ttl(Duration::ZERO)
        }),
        ("idle huge, capacity 1", {
            CacheConfig::default()
                .key_idle(Duration::MAX)
                .key_capacity(1)
        }),
    ];
    for (name, config) in configs {
        let b = ApiKeyCache::new(f.store.clone(), config.clone());
        let _watcher = b.spawn_watcher(config.poll_interval());
        for step in 0..10 {
            for key in &f.keys {
                let answer = bounded(name, b.authenticate(&key.0)).await;
                assert_identity(&answer, key);
            }
            advance(Duration::from_millis(if step % 2 == 0 { 1 } else { 1_500 })).await;
        }
        assert!(b.stats().keys <= 3, "{name}: keys {}", b.stats().keys);
        // Revocation still works under the extreme config, on this instance and via the feed.
        let fresh = f
            .writer
            .issue_key(&apikey_cache::AccountId::new("acme"))
            .await
            .unwrap();
        let secret = fresh.secret.expose().to_owned();
        assert!(
            bounded(name, b.authenticate(&secret)).await.is_ok(),
            "{name}: new key"
        );
        f.writer
            .revoke_key(&fresh.identity.key)
            .await
            .expect("revoke");
        advance(config.poll_interval().min(Duration::from_secs(3600)) + Duration::from_millis(5))
            .await;
        let answer = bounded(name, b.authenticate(&secret)).await;
        assert!(
            is_revoked(&answer),
            "{name}: revoked key answered {answer:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The hit path allocates nothing.
// ---------------------------------------------------------------------------------------------

// A12: after warm-up, hits allocate nothing, also with a small capacity that has been
// overflowed and after idle sweeps have evicted other keys.
#[test]
fn a12_hits_allocate_nothing_on_a_full_small_cache_after_sweeps() {
    let _serial = exclusive();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let f = fleet(40).await;
        let idle = Duration::from_secs(10);
        let reader = ApiKeyCache::new(f.store.clone(), idle_config(idle).key_capacity(32));
        // Cache all 40 (pushing some out), let them idle and be swept, then warm 16.
        for key in &f.keys {
            assert_identity(&reader.authenticate(&key.0).await, key);
        }
        for _ in 0..6 {
            advance(Duration::from_secs(5)).await;
            assert_identity(&reader.authenticate(&f.keys[0].0).await, &f.keys[0]);
        }
        let hot = &f.keys[..16];
        for key in hot {
            assert_identity(&reader.authenticate(&key.0).await, key);
        }
        for key in hot {
            assert_identity(&reader.authenticate(&key.0).await, key);
        }
        // The allocator's counts are process-wide and the test harness's own thread may still
        // be reporting the test that ran before this one: measure five rounds and require a
        // round with zero allocations (an allocating hit path allocates in every round).
        let mut rounds = Vec::new();
        for _ in 0..5 {
            let region = Region::new(GLOBAL);
            for _ in 0..100 {
                for key in hot {
                    let answer = reader.authenticate(&key.0).await;
                    assert!(answer.is_ok());
                }
            }
            let change = region.change();
            rounds.push((change.allocations, change.reallocations));
            if rounds.last() == Some(&(0, 0)) {
                break;
            }
        }
        assert_eq!(
            rounds.last(),
            Some(&(0, 0)),
            "(allocations, reallocations) per round of 1 600 hits: {rounds:?}"
        );
    });
}

// A12: rejecting a cached revoked key is a cache lookup too (verified keys, valid or revoked,
// are cached): measured like the hits above, it should not allocate either. (The guide
// promises allocation-free hits; a revoked key is "a fresh cached key, feed not due".)
#[test]
fn a12_cached_revoked_key_rejections_allocate_nothing() {
    let _serial = exclusive();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let f = fleet(4).await;
        let reader = ApiKeyCache::new(f.store.clone(), CacheConfig::default());
        for key in &f.keys[..2] {
            reader
                .revoke_key(&apikey_cache::KeyId::new(key.1.as_str()))
                .await
                .expect("revoke");
        }
        for _ in 0..2 {
            for key in &f.keys[..2] {
                assert!(is_revoked(&reader.authenticate(&key.0).await));
            }
        }
        let mut rounds = Vec::new();
        for _ in 0..5 {
            let region = Region::new(GLOBAL);
            for _ in 0..500 {
                for key in &f.keys[..2] {
                    let answer = reader.authenticate(&key.0).await;
                    assert!(is_revoked(&answer));
                }
            }
            let change = region.change();
            rounds.push((change.allocations, change.reallocations));
            if rounds.last() == Some(&(0, 0)) {
                break;
            }
        }
        assert_eq!(
            rounds.last(),
            Some(&(0, 0)),
            "(allocations, reallocations) per round of 1 000 revoked-key rejections: {rounds:?}"
        );
    });
}

// A12: hits stay allocation-free under real contention: four OS threads (each with its own
// current-thread runtime) hit the same 16 cached keys of one shared cache at once. (Real
// time, but with poll, TTL, key_idle and revalidate at an hour, nothing comes due.)
#[test]
fn a12_concurrent_hits_from_four_threads_allocate_nothing() {
    let _serial = exclusive();
    let hour = Duration::from_secs(3600);
    let setup = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (f, reader) = setup.block_on(async {
        let f = fleet(16).await;
        let reader = ApiKeyCache::new(
            f.store.clone(),
            CacheConfig::default()
                .poll(hour)
                .ttl(hour)
                .key_idle(hour)
                .revalidate(hour),
        );
        for key in &f.keys {
            assert_identity(&reader.authenticate(&key.0).await, key);
        }
        (f, reader)
    });
    let start = std::sync::Barrier::new(5);
    let end = std::sync::Barrier::new(5);
    let failures = AtomicU64::new(0);
    let mut rounds = Vec::new();
    std::thread::scope(|scope| {
        for t in 0..4usize {
            let (reader, keys, start, end, failures) = (&reader, &f.keys, &start, &end, &failures);
            scope.spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                runtime.block_on(async {
                    for _ in 0..3 {
                        for key in keys {
                            if reader.authenticate(&key.0).await.is_err() {
                                failures.fetch_add(1, Ordering::SeqCst);
                            }
                        }
                    }
                    for _ in 0..5 {
                        start.wait();
                        for round in 0..200 {
                            for i in 0..keys.len() {
                                let key = &keys[(i + t * 5 + round) % keys.len()];
                                if reader.authenticate(&key.0).await.is_err() {
                                    failures.fetch_add(1, Ordering::SeqCst);
                                }
                            }
                        }
                        end.wait();
                    }
                });
            });
        }
        for _ in 0..5 {
            start.wait();
            let region = Region::new(GLOBAL);
            end.wait();
            let change = region.change();
            rounds.push((change.allocations, change.reallocations));
        }
    });
    assert_eq!(failures.load(Ordering::SeqCst), 0, "hits failed");
    assert!(
        rounds.contains(&(0, 0)),
        "(allocations, reallocations) per round of 4 x 3 200 concurrent hits: {rounds:?}"
    );
    drop(setup);
}
