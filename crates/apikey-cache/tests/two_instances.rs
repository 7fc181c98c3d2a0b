//! Two cache instances over one shared store (in-memory and file): A7, with A1–A3 across
//! instances. The same tests over one Azure blob are in `tests/azurite.rs`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use apikey_cache::{ApiKeyCache, AuthError, CacheConfig, FileStore, KeyStore, MemoryStore};

const TTL: Duration = Duration::from_secs(30);

fn pair<S: KeyStore + Clone>(store: &S) -> (ApiKeyCache<S>, ApiKeyCache<S>) {
    (
        ApiKeyCache::new(store.clone(), CacheConfig::default()),
        ApiKeyCache::new(store.clone(), CacheConfig::default()),
    )
}

fn scratch_file() -> (PathBuf, FileStore) {
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "apikey-cache-it-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let store = FileStore::new(dir.join("keys.json"));
    (dir, store)
}

async fn created_on_a_authenticates_on_b_first_try<S: KeyStore + Clone>(store: S) {
    let (a, b) = pair(&store);
    // B has loaded (an empty document) before A writes: the seed's situation.
    b.refresh().await.expect("b loads");
    let account = a.create_account("acme", "Acme").await.expect("create");
    let issued = a.issue_key(&account).await.expect("issue");
    let identity = b
        .authenticate(issued.secret.expose())
        .await
        .expect("B knows it on the first try");
    assert_eq!(identity, issued.identity);
    assert_eq!(b.stats().miss_reloads, 1);
}

async fn revoked_on_a_rejected_on_b_within_one_ttl<S: KeyStore + Clone>(store: S) {
    let (a, b) = pair(&store);
    let account = a.create_account("acme", "Acme").await.expect("create");
    let issued = a.issue_key(&account).await.expect("issue");
    assert!(b.authenticate(issued.secret.expose()).await.is_ok());
    a.revoke_key(&issued.identity.key).await.expect("revoke");
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

async fn concurrent_writes_from_a_and_b_both_survive<S: KeyStore + Clone>(store: S) {
    let (a, b) = pair(&store);
    a.refresh().await.expect("a loads");
    b.refresh().await.expect("b loads");
    // Both instances write from the same (now stale for one of them) version.
    let (x, y) = tokio::join!(
        a.create_account("alpha", "Alpha"),
        b.create_account("beta", "Beta")
    );
    let (alpha, beta) = (x.expect("a's write"), y.expect("b's write"));
    // And a run of interleaved key issues from both sides.
    let mut issued = Vec::new();
    for _ in 0..5 {
        let (ka, kb) = tokio::join!(a.issue_key(&alpha), b.issue_key(&beta));
        issued.push(ka.expect("a issues"));
        issued.push(kb.expect("b issues"));
    }
    assert!(
        a.stats().write_conflicts + b.stats().write_conflicts >= 1,
        "the writes really raced"
    );
    tokio::time::advance(TTL).await;
    for cache in [&a, &b] {
        for key in &issued {
            assert_eq!(
                cache
                    .authenticate(key.secret.expose())
                    .await
                    .expect("every key survives"),
                key.identity
            );
        }
        assert_eq!(cache.stats().accounts, Some(2));
    }
}

fn slow_memory_store() -> MemoryStore {
    let store = MemoryStore::new();
    store.set_latency(Duration::from_millis(5));
    store
}

// covers A7 + A1
#[tokio::test(start_paused = true)]
async fn memory_account_created_on_a_authenticates_on_b_first_try() {
    created_on_a_authenticates_on_b_first_try(slow_memory_store()).await;
}

// covers A7 + A2
#[tokio::test(start_paused = true)]
async fn memory_key_revoked_on_a_is_rejected_on_b_within_one_ttl() {
    revoked_on_a_rejected_on_b_within_one_ttl(slow_memory_store()).await;
}

// covers A7 + A3: optimistic writes with a version check; nothing is lost.
#[tokio::test(start_paused = true)]
async fn memory_concurrent_writes_from_a_and_b_both_survive() {
    concurrent_writes_from_a_and_b_both_survive(slow_memory_store()).await;
}

// covers A7 + A1 on the file store.
#[tokio::test(start_paused = true)]
async fn file_account_created_on_a_authenticates_on_b_first_try() {
    let (dir, store) = scratch_file();
    created_on_a_authenticates_on_b_first_try(store).await;
    let _ = std::fs::remove_dir_all(dir);
}

// covers A7 + A2 on the file store.
#[tokio::test(start_paused = true)]
async fn file_key_revoked_on_a_is_rejected_on_b_within_one_ttl() {
    let (dir, store) = scratch_file();
    revoked_on_a_rejected_on_b_within_one_ttl(store).await;
    let _ = std::fs::remove_dir_all(dir);
}

// covers A7 + A3 on the file store: compare-and-swap under the file lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_concurrent_writes_from_a_and_b_both_survive() {
    let (dir, store) = scratch_file();
    // Each failed attempt means the other instance's write landed: allow them all.
    let config = CacheConfig::default().write_attempts(16);
    let a = ApiKeyCache::new(store.clone(), config.clone());
    let b = ApiKeyCache::new(store.clone(), config);
    a.refresh().await.expect("a loads");
    b.refresh().await.expect("b loads");
    let mut tasks = Vec::new();
    for (i, cache) in [a.clone(), b.clone()]
        .into_iter()
        .cycle()
        .take(10)
        .enumerate()
    {
        tasks.push(tokio::spawn(async move {
            cache
                .create_account(&format!("acct-{i}"), "x")
                .await
                .expect("write survives contention")
        }));
    }
    for task in tasks {
        task.await.expect("task");
    }
    a.refresh().await.expect("reload");
    assert_eq!(a.stats().accounts, Some(10));
    let _ = std::fs::remove_dir_all(dir);
}
