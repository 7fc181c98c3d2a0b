//! Unit tests of the cache against a counting in-memory store, in virtual time.

use std::time::Duration;

use super::*;
use crate::document::{AccountRecord, KeyDocument, KeyRecord};
use crate::error::WriteError;
use crate::key::{AccountId, KeyId};
use crate::store::MemoryStore;

const TTL: Duration = Duration::from_secs(30);

fn key(i: usize) -> String {
    format!("ak_test_{i:06}_0123456789abcdefghij")
}

/// A document with account `acme` holding keys `key(0..n)`.
fn document(n: usize) -> KeyDocument {
    let mut doc = KeyDocument::empty();
    doc.accounts.insert(
        "acme".into(),
        AccountRecord {
            name: "Acme".into(),
            created_unix: 0,
        },
    );
    for i in 0..n {
        add_key(&mut doc, i);
    }
    doc
}

fn add_key(doc: &mut KeyDocument, i: usize) {
    doc.keys.insert(
        format!("key_{i:06}"),
        KeyRecord {
            account: "acme".into(),
            sha256: KeyHash::of(&key(i)).to_hex(),
            created_unix: 0,
            revoked_unix: None,
        },
    );
}

async fn warm(keys: usize) -> (MemoryStore, ApiKeyCache<MemoryStore>) {
    let store = MemoryStore::with_document(document(keys));
    let cache = ApiKeyCache::new(store.clone(), CacheConfig::default());
    cache.refresh().await.expect("warm-up load");
    assert_eq!(store.loads(), 1);
    (store, cache)
}

// covers A1: an unknown key causes exactly one reload before it is rejected; a key written by
// another instance is found by that reload; a repeated unknown key costs nothing.
#[tokio::test(start_paused = true)]
async fn unknown_key_triggers_one_reload_before_rejection() {
    let (store, cache) = warm(1).await;
    assert!(cache.authenticate(&key(0)).await.is_ok());
    assert_eq!(store.loads(), 1, "a hit never reads the store");

    store.set_document(document(2)); // "another instance" adds key 1
    let identity = cache
        .authenticate(&key(1))
        .await
        .expect("found by the reload");
    assert_eq!(identity.key.as_str(), "key_000001");
    assert_eq!(store.loads(), 2, "exactly one reload");

    let bad = key(999);
    assert!(matches!(
        cache.authenticate(&bad).await,
        Err(AuthError::Unknown)
    ));
    assert_eq!(store.loads(), 3, "one reload for the unknown key");
    assert!(matches!(
        cache.authenticate(&bad).await,
        Err(AuthError::Unknown)
    ));
    assert_eq!(store.loads(), 3, "negatively cached: no second reload");
    assert_eq!(cache.stats().negative_hits, 1);
}

// covers A4: 1 000 concurrent misses for one new key share one store read.
#[tokio::test(start_paused = true)]
async fn thousand_concurrent_misses_share_one_store_read() {
    let (store, cache) = warm(1).await;
    store.set_latency(Duration::from_millis(20));
    store.set_document(document(2));
    let tasks: Vec<_> = (0..1000)
        .map(|_| {
            let cache = cache.clone();
            tokio::spawn(async move { cache.authenticate(&key(1)).await })
        })
        .collect();
    for task in tasks {
        assert!(task.await.expect("task").is_ok());
    }
    assert_eq!(store.loads(), 2, "warm-up + one shared reload");
}

// covers A4 + A2: 1 000 concurrent requests on a stale snapshot share one refresh.
#[tokio::test(start_paused = true)]
async fn concurrent_requests_on_a_stale_snapshot_share_one_refresh() {
    let (store, cache) = warm(1).await;
    store.set_latency(Duration::from_millis(20));
    tokio::time::advance(TTL).await;
    let tasks: Vec<_> = (0..1000)
        .map(|_| {
            let cache = cache.clone();
            tokio::spawn(async move { cache.authenticate(&key(0)).await })
        })
        .collect();
    for task in tasks {
        assert!(task.await.expect("task").is_ok());
    }
    assert_eq!(store.loads(), 2);
    assert_eq!(
        store.counts().not_modified,
        1,
        "unchanged: a conditional load"
    );
}

// covers A2: a snapshot older than the TTL is refreshed before use, so a revocation written
// elsewhere is honoured within one TTL; an unchanged document costs a "not modified".
#[tokio::test(start_paused = true)]
async fn snapshot_older_than_ttl_is_refreshed_before_use() {
    let (store, cache) = warm(2).await;
    let mut revoked = document(2);
    revoked
        .keys
        .get_mut("key_000000")
        .expect("key")
        .revoked_unix = Some(1);
    store.set_document(revoked);

    tokio::time::advance(TTL - Duration::from_millis(1)).await;
    assert!(cache.authenticate(&key(0)).await.is_ok(), "within the TTL");
    assert_eq!(store.loads(), 1);

    tokio::time::advance(Duration::from_millis(1)).await;
    assert!(matches!(
        cache.authenticate(&key(0)).await,
        Err(AuthError::Revoked)
    ));
    assert_eq!(store.loads(), 2);

    tokio::time::advance(TTL).await;
    assert!(cache.authenticate(&key(1)).await.is_ok());
    assert_eq!(store.loads(), 3);
    assert_eq!(store.counts().not_modified, 1);
    assert_eq!(cache.stats().not_modified, 1);
}

// covers A3 + A6: local writes go to the store and are visible here at once; the store holds
// the key's hash, never the key.
#[tokio::test(start_paused = true)]
async fn local_writes_are_visible_at_once() {
    let store = MemoryStore::new();
    let cache = ApiKeyCache::new(store.clone(), CacheConfig::default());
    let account = cache.create_account("acme", "Acme").await.expect("create");
    let issued = cache.issue_key(&account).await.expect("issue");
    let loads = store.loads();
    let identity = cache
        .authenticate(issued.secret.expose())
        .await
        .expect("visible at once");
    assert_eq!(identity, issued.identity);
    cache
        .revoke_key(&issued.identity.key)
        .await
        .expect("revoke");
    assert!(matches!(
        cache.authenticate(issued.secret.expose()).await,
        Err(AuthError::Revoked)
    ));
    assert_eq!(store.loads(), loads, "no reload needed for local writes");
    assert_eq!(store.counts().writes, 3);

    let stored = String::from_utf8(store.document().expect("written").to_json()).expect("utf8");
    assert!(!stored.contains(issued.secret.expose()));
    assert!(stored.contains(&issued.secret.hash().to_hex()));

    assert!(matches!(
        cache.create_account("acme", "again").await,
        Err(WriteError::AccountExists)
    ));
    assert!(matches!(
        cache.issue_key(&AccountId::new("nobody")).await,
        Err(WriteError::NoSuchAccount)
    ));
    assert!(matches!(
        cache.revoke_key(&KeyId::new("key_nope")).await,
        Err(WriteError::NoSuchKey)
    ));
    assert!(matches!(
        cache.create_account("bad id", "x").await,
        Err(WriteError::InvalidAccountId)
    ));
}

fn spawn_flood(
    cache: &ApiKeyCache<MemoryStore>,
    range: std::ops::Range<usize>,
) -> Vec<tokio::task::JoinHandle<Result<Identity, AuthError>>> {
    range
        .map(|i| {
            let cache = cache.clone();
            tokio::spawn(async move { cache.authenticate(&key(1_000_000 + i)).await })
        })
        .collect()
}

// covers A5: a burst of 10 000 distinct bad keys costs at most 2 store reads (the miss reload
// and one follow-up), a second burst at once costs none, memory stays bounded, and valid keys
// keep working throughout.
#[tokio::test(start_paused = true)]
async fn flood_of_distinct_bad_keys_costs_at_most_two_store_reads() {
    let (store, cache) = warm(10).await;
    store.set_latency(Duration::from_millis(20));
    let mut tasks = spawn_flood(&cache, 0..10_000);
    let good: Vec<_> = (0..10)
        .map(|i| {
            let cache = cache.clone();
            tokio::spawn(async move { cache.authenticate(&key(i)).await })
        })
        .collect();
    tasks.extend(spawn_flood(&cache, 10_000..20_000));
    for task in tasks {
        assert!(matches!(task.await.expect("task"), Err(AuthError::Unknown)));
    }
    for task in good {
        assert!(task.await.expect("task").is_ok());
    }
    assert!(store.loads() - 1 <= 2, "flood reads: {}", store.loads() - 1);
    let stats = cache.stats();
    assert!(stats.negative_entries <= 10_000, "bounded negative cache");
    assert_eq!(stats.rejected_unknown, 20_000);

    // Sustained: one more miss reload per interval, however many keys.
    tokio::time::advance(Duration::from_secs(1)).await;
    let before = store.loads();
    for task in spawn_flood(&cache, 20_000..30_000) {
        assert!(task.await.expect("task").is_err());
    }
    assert!(store.loads() - before <= 1);
}

// covers A9: a store failing during a reload leaves the previous snapshot answering, says so
// in stats, backs off instead of hammering the store, and recovers.
#[tokio::test(start_paused = true)]
async fn failing_store_during_reload_keeps_the_old_snapshot() {
    let (store, cache) = warm(1).await;
    store.fail_loads(true);
    tokio::time::advance(TTL).await;
    let identity = cache
        .authenticate(&key(0))
        .await
        .expect("old snapshot answers");
    assert_eq!(identity.account.as_str(), "acme");
    let stats = cache.stats();
    assert_eq!(stats.reload_failures, 1);
    assert!(stats.serving_previous_snapshot);
    assert!(
        stats
            .last_reload_error
            .as_deref()
            .is_some_and(|e| e.contains("injected load failure")),
        "{stats:?}"
    );
    assert_eq!(stats.keys, 1);

    // Within the back-off: no store call, still answered; an unknown key is "unavailable".
    assert!(cache.authenticate(&key(0)).await.is_ok());
    assert!(matches!(
        cache.authenticate(&key(5)).await,
        Err(AuthError::Unavailable { .. })
    ));
    assert_eq!(store.loads(), 2);
    assert_eq!(
        cache.stats().stale_served,
        3,
        "three requests answered from it"
    );

    // After the back-off, a request does not wait for the failing store again (A9): it is
    // answered from the previous snapshot at once and the retry runs in the background.
    store.fail_loads(false);
    tokio::time::advance(Duration::from_secs(1)).await;
    assert!(cache.authenticate(&key(0)).await.is_ok());
    assert_eq!(cache.stats().stale_served, 4);
    tokio::time::sleep(Duration::from_millis(1)).await; // lets the background retry run
    let stats = cache.stats();
    assert!(!stats.serving_previous_snapshot);
    assert_eq!(stats.last_reload_error, None);
    assert_eq!(store.loads(), 3);
    assert!(cache.authenticate(&key(0)).await.is_ok());
    assert_eq!(cache.stats().stale_served, 4, "fresh again");
}

// covers A9: before any successful load there is nothing to answer from: "unavailable", not
// a false 401.
#[tokio::test(start_paused = true)]
async fn never_loaded_and_failing_store_is_unavailable() {
    let store = MemoryStore::with_document(document(1));
    store.fail_loads(true);
    let cache = ApiKeyCache::new(store.clone(), CacheConfig::default());
    assert!(matches!(
        cache.authenticate(&key(0)).await,
        Err(AuthError::Unavailable { .. })
    ));
    assert!(cache.refresh().await.is_err());
}

// covers A9: while a reload is in progress (stalled in the store), readers keep hitting the
// complete previous table; the new one appears whole.
#[tokio::test(start_paused = true)]
async fn readers_never_see_an_empty_table_during_a_reload() {
    let (store, cache) = warm(100).await;
    store.set_document(document(200));
    store.stall_loads(true);
    let reload = {
        let cache = cache.clone();
        tokio::spawn(async move { cache.authenticate(&key(150)).await })
    };
    while store.loads() < 2 {
        tokio::task::yield_now().await;
    }
    for _ in 0..3 {
        for i in 0..100 {
            assert!(
                cache.authenticate(&key(i)).await.is_ok(),
                "key {i} during reload"
            );
        }
        assert_eq!(cache.stats().keys, 100, "the whole old table");
        tokio::task::yield_now().await;
    }
    assert!(!reload.is_finished());
    store.stall_loads(false);
    assert!(reload.await.expect("task").is_ok());
    assert_eq!(cache.stats().keys, 200, "the whole new table");
    assert_eq!(store.loads(), 2);
}

// covers A5 + A8 groundwork: malformed input is rejected before hashing and never reloads.
#[tokio::test(start_paused = true)]
async fn malformed_keys_never_reach_the_store() {
    let store = MemoryStore::with_document(document(1));
    let cache = ApiKeyCache::new(store.clone(), CacheConfig::default());
    let long = "a".repeat(10_000);
    for bad in ["", " ", "tab\there", "ключ", long.as_str()] {
        assert!(matches!(
            cache.authenticate(bad).await,
            Err(AuthError::Malformed)
        ));
    }
    assert_eq!(store.loads(), 0);
    assert_eq!(cache.stats().rejected_malformed, 5);
}

// covers A9: the watcher keeps the snapshot fresh with conditional loads, so requests do not
// wait; it stops when its handle is dropped.
#[tokio::test(start_paused = true)]
async fn watcher_refreshes_in_the_background_with_conditional_loads() {
    let (store, cache) = warm(1).await;
    let watcher = cache.spawn_watcher(Duration::from_secs(10));
    tokio::time::sleep(Duration::from_secs(10) + Duration::from_millis(1)).await;
    assert_eq!(store.loads(), 2);
    assert_eq!(store.counts().not_modified, 1);

    store.set_document(document(2));
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(store.loads(), 3);
    assert!(cache.authenticate(&key(1)).await.is_ok());
    assert_eq!(store.loads(), 3, "already in the snapshot: no miss reload");

    drop(watcher);
    tokio::time::sleep(Duration::from_secs(25)).await;
    assert_eq!(store.loads(), 3, "stopped");
}

// covers A9: the watcher holds only a weak reference: dropping the cache ends it.
#[tokio::test(start_paused = true)]
async fn watcher_ends_when_the_cache_is_dropped() {
    let (store, cache) = warm(1).await;
    let watcher = cache.spawn_watcher(Duration::from_secs(1));
    drop(cache);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(watcher.is_finished());
    assert_eq!(store.loads(), 1);
}

// covers A3 + A7: a write that meets a concurrent change re-loads, re-applies and re-writes.
#[tokio::test(start_paused = true)]
async fn write_conflict_is_retried_on_the_fresh_document() {
    let (store, cache) = warm(1).await;
    let mut other = document(1);
    other.accounts.insert(
        "globex".into(),
        AccountRecord {
            name: "Globex".into(),
            created_unix: 0,
        },
    );
    store.set_document(other); // written elsewhere since our load
    cache
        .create_account("initech", "Initech")
        .await
        .expect("retried");
    let stored = store.document().expect("doc");
    assert!(stored.accounts.contains_key("globex"), "theirs survives");
    assert!(stored.accounts.contains_key("initech"), "ours too");
    assert_eq!(cache.stats().write_conflicts, 1);
    assert_eq!(cache.stats().accounts, Some(3));
}

// covers A3: a store that keeps conflicting ends in a typed error, not a loop.
#[tokio::test(start_paused = true)]
async fn endless_conflicts_end_in_contended() {
    #[derive(Debug, Clone)]
    struct AlwaysConflict(MemoryStore);
    impl KeyStore for AlwaysConflict {
        async fn load(
            &self,
            if_none_match: Option<&crate::store::Version>,
        ) -> Result<crate::store::Loaded, StoreError> {
            self.0.load(if_none_match).await
        }
        async fn store(
            &self,
            _: &KeyDocument,
            _: Option<&crate::store::Version>,
        ) -> Result<crate::store::Version, StoreError> {
            Err(StoreError::Conflict)
        }
        fn describe(&self) -> String {
            "always-conflict".into()
        }
    }
    let store = AlwaysConflict(MemoryStore::with_document(document(0)));
    let cache = ApiKeyCache::new(store, CacheConfig::default().write_attempts(3));
    assert!(matches!(
        cache.create_account("x", "x").await,
        Err(WriteError::Contended { attempts: 3 })
    ));
}
