//! The keyed layout (A10) and its change feed (A11) through the public API, over the keyed
//! memory and file stores: point reads, O(1) conditional writes, several instances over one
//! store, revocation within one poll, gaps and a writer dying between record and feed.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use apikey_cache::{
    ApiKeyCache, AuthError, CacheConfig, FileStore, KeyStore, MemoryStore, WriteError,
};

const POLL: Duration = Duration::from_secs(2);
const TTL: Duration = Duration::from_secs(30);

fn instances<S: KeyStore + Clone>(store: &S, n: usize) -> Vec<ApiKeyCache<S>> {
    (0..n)
        .map(|_| ApiKeyCache::new(store.clone(), CacheConfig::default()))
        .collect()
}

fn scratch_dir() -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "apikey-cache-keyed-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

async fn created_on_a_authenticates_on_b_first_try<S: KeyStore + Clone>(store: S) {
    let [a, b] = <[_; 2]>::try_from(instances(&store, 2)).expect("two");
    b.refresh().await.expect("b starts tailing the feed");
    let account = a.create_account("acme", "Acme").await.expect("create");
    let issued = a.issue_key(&account).await.expect("issue");
    let identity = b
        .authenticate(issued.secret.expose())
        .await
        .expect("B knows it on the first try");
    assert_eq!(identity, issued.identity);
    assert_eq!(b.stats().point_reads, 1, "one point read, no table load");
    assert_eq!(b.stats().store_loads, 0);
    // Accounts and keys created on A are found by writes on B, and B's writes by A.
    let on_b = b
        .issue_key(&account)
        .await
        .expect("B issues for A's account");
    assert_eq!(
        a.authenticate(on_b.secret.expose())
            .await
            .expect("A knows it"),
        on_b.identity
    );
    b.revoke_key(&issued.identity.key)
        .await
        .expect("B revokes A's key");
    assert!(matches!(
        b.issue_key(&apikey_cache::AccountId::new("nobody")).await,
        Err(WriteError::NoSuchAccount)
    ));
    assert!(matches!(
        b.revoke_key(&apikey_cache::KeyId::new("key_nobody")).await,
        Err(WriteError::NoSuchKey)
    ));
    assert!(matches!(
        a.create_account("acme", "again").await,
        Err(WriteError::AccountExists)
    ));
}

async fn revoked_on_a_rejected_on_all_within_one_poll<S: KeyStore + Clone>(store: S) {
    let caches = instances(&store, 3);
    let account = caches[0]
        .create_account("acme", "Acme")
        .await
        .expect("create");
    let issued = caches[0].issue_key(&account).await.expect("issue");
    for cache in &caches {
        assert!(cache.authenticate(issued.secret.expose()).await.is_ok());
    }
    let reads_before: Vec<u64> = caches.iter().map(|c| c.stats().point_reads).collect();
    caches[0]
        .revoke_key(&issued.identity.key)
        .await
        .expect("revoke");
    assert!(matches!(
        caches[0].authenticate(issued.secret.expose()).await,
        Err(AuthError::Revoked)
    ));
    tokio::time::advance(POLL).await;
    for (cache, before) in caches.iter().zip(reads_before) {
        assert!(
            matches!(
                cache.authenticate(issued.secret.expose()).await,
                Err(AuthError::Revoked)
            ),
            "rejected within one poll, not one TTL"
        );
        assert_eq!(
            cache.stats().point_reads,
            before,
            "the feed entry itself revoked the cached key: no point read"
        );
    }
}

// covers A10 + A1 + A3 (memory): first try on B with one point read; writes cross instances.
#[tokio::test(start_paused = true)]
async fn keyed_memory_created_on_a_authenticates_on_b_first_try() {
    created_on_a_authenticates_on_b_first_try(MemoryStore::keyed()).await;
}

// covers A10 + A1 + A3 (file store).
#[tokio::test(start_paused = true)]
async fn keyed_file_created_on_a_authenticates_on_b_first_try() {
    let dir = scratch_dir();
    created_on_a_authenticates_on_b_first_try(FileStore::keyed(&dir)).await;
    let _ = std::fs::remove_dir_all(dir);
}

// covers A11 (memory): a revocation reaches three instances within one poll.
#[tokio::test(start_paused = true)]
async fn keyed_memory_revocation_reaches_three_instances_within_one_poll() {
    revoked_on_a_rejected_on_all_within_one_poll(MemoryStore::keyed()).await;
}

// covers A11 (file store): the same over the append-only feed files.
#[tokio::test(start_paused = true)]
async fn keyed_file_revocation_reaches_three_instances_within_one_poll() {
    let dir = scratch_dir();
    revoked_on_a_rejected_on_all_within_one_poll(FileStore::keyed(&dir)).await;
    let _ = std::fs::remove_dir_all(dir);
}

// covers A10 + A5: an unknown key costs one point read, then the negative cache answers.
#[tokio::test(start_paused = true)]
async fn keyed_unknown_key_costs_one_point_read_then_negative_cache() {
    let store = MemoryStore::keyed();
    let cache = ApiKeyCache::new(store.clone(), CacheConfig::default());
    // A well-formed key (valid checksum) that this store never saw: issued elsewhere.
    let elsewhere = ApiKeyCache::new(MemoryStore::keyed(), CacheConfig::default());
    let account = elsewhere.create_account("x", "X").await.expect("create");
    let stranger = elsewhere.issue_key(&account).await.expect("issue");
    let junk = stranger.secret.expose();
    for _ in 0..10 {
        assert!(matches!(
            cache.authenticate(junk).await,
            Err(AuthError::Unknown)
        ));
    }
    let counts = store.counts();
    assert_eq!(counts.record_reads, 1, "one point read for ten attempts");
    assert_eq!(counts.loads, 0, "never a table load");
    assert_eq!(cache.stats().negative_hits, 9);
}

// covers A10: a write touches O(1) records and bytes, whatever the table size.
#[tokio::test(start_paused = true)]
async fn keyed_issue_and_revoke_write_constant_bytes() {
    let store = MemoryStore::keyed();
    let cache = ApiKeyCache::new(store.clone(), CacheConfig::default());
    let account = cache.create_account("acme", "Acme").await.expect("create");
    let mut costs = Vec::new();
    for round in 0..3 {
        for _ in 0..(if round == 0 { 1 } else { 200 }) {
            cache.issue_key(&account).await.expect("issue");
        }
        let before = store.counts();
        let issued = cache.issue_key(&account).await.expect("issue");
        cache
            .revoke_key(&issued.identity.key)
            .await
            .expect("revoke");
        let after = store.counts();
        costs.push((
            after.record_writes - before.record_writes,
            after.bytes_written - before.bytes_written,
        ));
    }
    assert!(
        costs.iter().all(|&(writes, _)| writes == 3),
        "{costs:?}: id + key + revoke"
    );
    assert!(costs.iter().all(|&(_, bytes)| bytes < 1024), "{costs:?}");
    assert_eq!(costs[0], costs[2], "the cost does not grow with the table");
}

const REVALIDATE: Duration = Duration::from_secs(300);

// covers A11: a writer that dies between its record write and its feed append: the others
// see the revocation at their safety revalidation of the key (at most `revalidate`, default
// 5 min, after they last read it: the documented worst case), not within one poll.
#[tokio::test(start_paused = true)]
async fn keyed_writer_dying_before_the_feed_append_is_caught_by_revalidation() {
    let store = MemoryStore::keyed();
    let [a, b] = <[_; 2]>::try_from(instances(&store, 2)).expect("two");
    let account = a.create_account("acme", "Acme").await.expect("create");
    let issued = a.issue_key(&account).await.expect("issue");
    assert!(b.authenticate(issued.secret.expose()).await.is_ok());
    store.fail_feed_appends(true);
    a.revoke_key(&issued.identity.key)
        .await
        .expect("the record write is the truth");
    assert_eq!(a.stats().feed_append_failures, 1);
    store.fail_feed_appends(false);
    // Well past one TTL, with the feed healthy: B trusts its copy (no entry says otherwise).
    let mut waited = Duration::ZERO;
    while waited < REVALIDATE * 3 / 4 - POLL {
        tokio::time::advance(POLL).await;
        waited += POLL;
        assert!(
            b.authenticate(issued.secret.expose()).await.is_ok(),
            "no feed entry: B still trusts its cached copy at {waited:?}"
        );
    }
    tokio::time::advance(REVALIDATE / 4 + POLL).await;
    assert!(matches!(
        b.authenticate(issued.secret.expose()).await,
        Err(AuthError::Revoked)
    ));
}

// covers A11 (#22 item 5): with a healthy feed, cached keys cost no store reads every TTL: a
// hundred active keys used every poll for four minutes cost feed reads only, then each is
// re-read once at its safety revalidation, spread over the last quarter of the interval.
#[tokio::test(start_paused = true)]
async fn keyed_revalidation_follows_the_feed_not_the_cached_keys() {
    let store = MemoryStore::keyed();
    let [a, b] = <[_; 2]>::try_from(instances(&store, 2)).expect("two");
    let account = a.create_account("acme", "Acme").await.expect("create");
    let mut keys = Vec::new();
    for _ in 0..100 {
        keys.push(a.issue_key(&account).await.expect("issue").secret);
    }
    for key in &keys {
        assert!(b.authenticate(key.expose()).await.is_ok());
    }
    let reads = b.stats().point_reads;
    assert_eq!(reads, 100, "one read per key to start");
    let mut due_times = Vec::new();
    let mut elapsed = Duration::ZERO;
    while elapsed < REVALIDATE + POLL {
        tokio::time::advance(POLL).await;
        elapsed += POLL;
        let before = b.stats().point_reads;
        for key in &keys {
            assert!(b.authenticate(key.expose()).await.is_ok());
        }
        for _ in before..b.stats().point_reads {
            due_times.push(elapsed);
        }
    }
    assert_eq!(
        due_times.len(),
        100,
        "each key re-read exactly once in 5 min"
    );
    assert!(
        due_times.iter().all(|&t| t >= REVALIDATE * 3 / 4),
        "none before 3/4 of the interval: {due_times:?}"
    );
    let distinct: std::collections::BTreeSet<_> = due_times.iter().collect();
    assert!(
        distinct.len() > 10,
        "spread over time, not one burst: {distinct:?}"
    );
    // The feed was read once per poll meanwhile: the instance's store reads follow the feed.
    assert!(b.stats().feed_polls >= (REVALIDATE.as_secs() / POLL.as_secs()));
}

// covers A11: when the feed cannot be read, cached keys fall back to revalidation every TTL
// (a revocation whose feed entry cannot be seen is still caught within one TTL of the
// feed's last successful read).
#[tokio::test(start_paused = true)]
async fn keyed_unreadable_feed_falls_back_to_the_ttl() {
    let store = MemoryStore::keyed();
    let [a, b] = <[_; 2]>::try_from(instances(&store, 2)).expect("two");
    let account = a.create_account("acme", "Acme").await.expect("create");
    let issued = a.issue_key(&account).await.expect("issue");
    assert!(b.authenticate(issued.secret.expose()).await.is_ok());
    store.fail_feed_reads(true);
    a.revoke_key(&issued.identity.key).await.expect("revoke");
    tokio::time::advance(POLL).await;
    assert!(
        b.authenticate(issued.secret.expose()).await.is_ok(),
        "within the TTL the cached copy answers"
    );
    tokio::time::advance(TTL).await;
    assert!(matches!(
        b.authenticate(issued.secret.expose()).await,
        Err(AuthError::Revoked)
    ));
    assert!(b.stats().reload_failures >= 1);
    let age = b.stats().snapshot_age.expect("read once");
    assert!(age >= TTL, "stats say how far behind the feed is: {age:?}");
}

// covers A11: a gap (the segment under B's cursor rotated away) drops B's cached keys, so a
// revocation carried only by the lost segment is still seen, at the cost of one point read.
#[tokio::test(start_paused = true)]
async fn keyed_feed_gap_falls_back_to_revalidation() {
    let store = MemoryStore::keyed();
    let [a, b] = <[_; 2]>::try_from(instances(&store, 2)).expect("two");
    let account = a.create_account("acme", "Acme").await.expect("create");
    let issued = a.issue_key(&account).await.expect("issue");
    assert!(b.authenticate(issued.secret.expose()).await.is_ok());
    a.revoke_key(&issued.identity.key).await.expect("revoke");
    store.drop_feed_segments(); // B never sees the revoke entry
    tokio::time::advance(POLL).await;
    let reads = b.stats().point_reads;
    assert!(matches!(
        b.authenticate(issued.secret.expose()).await,
        Err(AuthError::Revoked)
    ));
    assert_eq!(b.stats().feed_gaps, 1);
    assert_eq!(
        b.stats().point_reads,
        reads + 1,
        "revalidated by one point read"
    );
}

// covers A11 across a rotation: a reader one segment behind loses nothing (no gap).
#[tokio::test(start_paused = true)]
async fn keyed_feed_rotation_loses_nothing_for_a_reader_one_segment_behind() {
    let store = MemoryStore::keyed();
    store.set_feed_segment_entries(2);
    let [a, b] = <[_; 2]>::try_from(instances(&store, 2)).expect("two");
    let account = a.create_account("acme", "Acme").await.expect("create");
    let issued = a.issue_key(&account).await.expect("issue");
    assert!(b.authenticate(issued.secret.expose()).await.is_ok());
    a.revoke_key(&issued.identity.key).await.expect("revoke"); // rotates the feed
    tokio::time::advance(POLL).await;
    assert!(matches!(
        b.authenticate(issued.secret.expose()).await,
        Err(AuthError::Revoked)
    ));
    assert_eq!(b.stats().feed_gaps, 0);
}

// covers A11: with the watcher tailing the feed, the request path does not read the feed.
#[tokio::test(start_paused = true)]
async fn keyed_watcher_tails_the_feed_in_the_background() {
    let store = MemoryStore::keyed();
    let [a, b] = <[_; 2]>::try_from(instances(&store, 2)).expect("two");
    let account = a.create_account("acme", "Acme").await.expect("create");
    let issued = a.issue_key(&account).await.expect("issue");
    assert!(b.authenticate(issued.secret.expose()).await.is_ok());
    let _watcher = b.spawn_watcher(POLL);
    a.revoke_key(&issued.identity.key).await.expect("revoke");
    tokio::time::sleep(POLL + Duration::from_millis(1)).await;
    let polls = b.stats().feed_polls;
    assert!(polls >= 2, "the watcher polled");
    assert!(matches!(
        b.authenticate(issued.secret.expose()).await,
        Err(AuthError::Revoked)
    ));
    assert_eq!(
        b.stats().feed_polls,
        polls,
        "no feed read on the request path"
    );
}

fn random_junk(i: u64) -> String {
    // Visible ASCII of an issued key's length and prefix, but no valid checksum.
    let mut s = format!("ak_{i:016x}");
    while s.len() < apikey_cache::CHECKED_KEY_LEN {
        s.push(char::from(b'a' + (i % 26) as u8));
    }
    s
}

// covers A12 + A5: 10 000 distinct random bad keys cost zero store reads (checksum), and the
// key issued in between still answers.
#[tokio::test(start_paused = true)]
async fn keyed_checksum_rejects_ten_thousand_junk_keys_with_zero_reads() {
    let store = MemoryStore::keyed();
    let cache = ApiKeyCache::new(store.clone(), CacheConfig::default());
    let account = cache.create_account("acme", "Acme").await.expect("create");
    let issued = cache.issue_key(&account).await.expect("issue");
    let before = store.counts();
    for i in 0..10_000 {
        assert!(matches!(
            cache.authenticate(&random_junk(i)).await,
            Err(AuthError::Malformed)
        ));
    }
    let after = store.counts();
    assert_eq!(
        after.record_reads - before.record_reads,
        0,
        "zero point reads"
    );
    assert_eq!(after.feed_reads - before.feed_reads, 0, "zero feed reads");
    assert_eq!(cache.stats().rejected_malformed, 10_000);
    assert!(cache.authenticate(issued.secret.expose()).await.is_ok());
}

// covers A12 (the knob) + A5: with legacy (unchecked) keys accepted, the same flood is held
// to the point-read rate limit instead: what the checksum saves.
#[tokio::test(start_paused = true)]
async fn keyed_legacy_keys_fall_back_to_the_point_read_limit() {
    let store = MemoryStore::keyed();
    let config = CacheConfig::default()
        .legacy_keys(true)
        .point_reads_per_second(50);
    let cache = ApiKeyCache::new(store.clone(), config);
    for i in 0..10_000 {
        assert!(matches!(
            cache.authenticate(&random_junk(i)).await,
            Err(AuthError::Unknown)
        ));
    }
    let reads = store.counts().record_reads;
    assert!((1..=50).contains(&reads), "{reads} point reads");
}

// covers A12: memory follows the active keys, not the table, and is bounded by key_capacity.
#[tokio::test(start_paused = true)]
async fn keyed_memory_follows_active_keys_and_is_bounded() {
    let store = MemoryStore::keyed();
    let writer = ApiKeyCache::new(store.clone(), CacheConfig::default());
    let account = writer.create_account("acme", "Acme").await.expect("create");
    let mut keys = Vec::new();
    for _ in 0..500 {
        keys.push(writer.issue_key(&account).await.expect("issue"));
    }
    let reader = ApiKeyCache::new(store.clone(), CacheConfig::default().key_capacity(100));
    for key in &keys[..10] {
        assert!(reader.authenticate(key.secret.expose()).await.is_ok());
    }
    assert_eq!(
        reader.stats().keys,
        10,
        "ten active keys of 500 in the table"
    );
    for key in &keys {
        assert!(reader.authenticate(key.secret.expose()).await.is_ok());
    }
    let held = reader.stats().keys;
    assert!(held <= 100, "bounded by key_capacity: {held}");
}

// covers A5 with point lookups: only reads that find nothing spend the miss budget, so a
// cold instance meeting far more real keys than the budget in one burst answers them all.
#[tokio::test(start_paused = true)]
async fn keyed_cold_instance_is_not_limited_by_real_keys() {
    let store = MemoryStore::keyed();
    let writer = ApiKeyCache::new(store.clone(), CacheConfig::default());
    let account = writer.create_account("acme", "Acme").await.expect("create");
    let mut keys = Vec::new();
    for _ in 0..200 {
        keys.push(writer.issue_key(&account).await.expect("issue"));
    }
    let cold = ApiKeyCache::new(store, CacheConfig::default().point_reads_per_second(20));
    for key in &keys {
        assert_eq!(
            cold.authenticate(key.secret.expose())
                .await
                .expect("real key"),
            key.identity
        );
    }
    assert_eq!(cold.stats().miss_reloads_limited, 0);
}

// covers A12: memory follows the active keys in time too — a key unused for `key_idle` is freed
// by the idle sweep that runs with the feed poll (counted in `idle_evictions`), while the key
// in use stays. Without the sweep the cache would hold all 20 until evicted by capacity.
#[tokio::test(start_paused = true)]
async fn keyed_idle_keys_are_freed_by_the_sweep() {
    let store = MemoryStore::keyed();
    let writer = ApiKeyCache::new(store.clone(), CacheConfig::default());
    let account = writer.create_account("acme", "Acme").await.expect("create");
    let mut keys = Vec::new();
    for _ in 0..20 {
        keys.push(writer.issue_key(&account).await.expect("issue"));
    }
    let reader = ApiKeyCache::new(
        store,
        CacheConfig::default().key_idle(std::time::Duration::from_secs(60)),
    );
    for key in &keys {
        assert!(reader.authenticate(key.secret.expose()).await.is_ok());
    }
    assert_eq!(reader.stats().keys, 20);
    assert_eq!(reader.stats().idle_evictions, 0);
    // keys[0] is used every 5 s for 200 s (> 3 × key_idle); the others go idle.
    for _ in 0..40 {
        tokio::time::advance(std::time::Duration::from_secs(5)).await;
        assert!(reader.authenticate(keys[0].secret.expose()).await.is_ok());
    }
    let stats = reader.stats();
    assert_eq!(stats.keys, 1, "only the key in use is held");
    assert_eq!(stats.idle_evictions, 19);
    // A freed key still authenticates (one point read).
    assert!(reader.authenticate(keys[1].secret.expose()).await.is_ok());
    assert_eq!(reader.stats().keys, 2);
}
