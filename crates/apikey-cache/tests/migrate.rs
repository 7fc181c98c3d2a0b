//! Migration of a v1 document into the keyed layout (#22): `migrate` and the `apikey-migrate`
//! binary. Idempotent (a second run creates nothing), resumable (a run killed half-way is
//! finished by the next), keys keep working on the document throughout, and revocations made
//! on the document later reach keyed instances through the change feed.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use apikey_cache::{
    ApiKeyCache, AuthError, CacheConfig, FileStore, IssuedKey, KeyStore, MemoryStore, MigrateError,
    MigrateOptions, MigrationReport, migrate,
};

const POLL: Duration = Duration::from_secs(2);

/// A v1 document store with `accounts` accounts of `per_account` keys each, issued through
/// the cache (so exactly what a v1 deployment holds).
async fn v1(accounts: usize, per_account: usize) -> (MemoryStore, Vec<IssuedKey>) {
    let store = MemoryStore::new();
    let cache = ApiKeyCache::new(store.clone(), CacheConfig::default());
    let mut keys = Vec::new();
    for a in 0..accounts {
        let account = cache
            .create_account(&format!("acct-{a}"), "Account")
            .await
            .expect("create");
        for _ in 0..per_account {
            keys.push(cache.issue_key(&account).await.expect("issue"));
        }
    }
    (store, keys)
}

fn created(report: &MigrationReport) -> u64 {
    report.accounts_created + report.keys_created + report.ids_created
}

// covers #22 migration: every account and key is copied; keys (valid and revoked) answer the
// same on a keyed instance; a second run creates nothing.
#[tokio::test(start_paused = true)]
async fn migration_copies_everything_and_is_idempotent() {
    let (from, keys) = v1(3, 4).await;
    let doc = ApiKeyCache::new(from.clone(), CacheConfig::default());
    doc.revoke_key(&keys[5].identity.key).await.expect("revoke");
    let to = MemoryStore::keyed();
    let report = migrate(&from, &to, &MigrateOptions::default())
        .await
        .expect("migrate");
    assert_eq!((report.accounts, report.accounts_created), (3, 3));
    assert_eq!(
        (report.keys, report.keys_created, report.ids_created),
        (12, 12, 12)
    );
    assert_eq!(report.skipped, 0);
    let keyed = ApiKeyCache::new(to.clone(), CacheConfig::default());
    for (i, key) in keys.iter().enumerate() {
        let answer = keyed.authenticate(key.secret.expose()).await;
        if i == 5 {
            assert!(matches!(answer, Err(AuthError::Revoked)), "{answer:?}");
        } else {
            assert_eq!(answer.expect("valid"), key.identity);
        }
    }
    // Keyed writes work on migrated data: revoke by id, issue for a migrated account.
    keyed
        .revoke_key(&keys[0].identity.key)
        .await
        .expect("revoke by id");
    keyed
        .issue_key(&keys[1].identity.account)
        .await
        .expect("issue for a migrated account");
    let writes = to.counts().record_writes;
    let again = migrate(&from, &to, &MigrateOptions::default())
        .await
        .expect("again");
    assert_eq!(created(&again), 0, "{again:?}");
    assert_eq!(again.revocations_applied, 0);
    assert_eq!(to.counts().record_writes, writes, "nothing rewritten");
    assert!(
        matches!(
            keyed.authenticate(keys[0].secret.expose()).await,
            Err(AuthError::Revoked)
        ),
        "a re-run never un-revokes a key revoked in the keyed store"
    );
}

// covers #22 migration: a run killed half-way (its task dropped mid-write) is finished by the
// next run, which creates exactly the records the first did not; the document instance keeps
// authenticating meanwhile and the document is never written.
#[tokio::test(start_paused = true)]
async fn migration_resumes_after_a_crash_and_keys_keep_working() {
    let (from, keys) = v1(2, 50).await;
    let doc = ApiKeyCache::new(from.clone(), CacheConfig::default());
    let doc_writes = from.counts().writes;
    let to = MemoryStore::keyed();
    to.set_latency(Duration::from_millis(10));
    let options = MigrateOptions::default().concurrency(4);
    let run = {
        let (from, to, options) = (from.clone(), to.clone(), options.clone());
        tokio::spawn(async move { migrate(&from, &to, &options).await })
    };
    // Part-way: about a third of the 2 + 200 records written; every key answers on the document.
    tokio::time::sleep(Duration::from_millis(200)).await;
    for key in &keys {
        assert!(doc.authenticate(key.secret.expose()).await.is_ok());
    }
    run.abort(); // the crash
    assert!(run.await.expect_err("aborted").is_cancelled());
    let first = to.counts().record_writes;
    assert!(
        first > 10 && first < 202,
        "killed half-way: {first} records"
    );
    to.set_latency(Duration::ZERO);
    let report = migrate(&from, &to, &options).await.expect("resume");
    assert_eq!(
        created(&report) + first,
        202,
        "the rest, nothing twice: {report:?}"
    );
    assert_eq!(
        from.counts().writes,
        doc_writes,
        "the document is only read"
    );
    let keyed = ApiKeyCache::new(to.clone(), CacheConfig::default());
    for key in &keys {
        assert_eq!(
            keyed
                .authenticate(key.secret.expose())
                .await
                .expect("valid"),
            key.identity
        );
    }
}

// covers #22 migration + A11: a key revoked on the document after the first run is revoked by
// the next run, and a keyed instance that cached it as valid rejects it within one poll.
#[tokio::test(start_paused = true)]
async fn a_later_run_carries_document_revocations_to_keyed_instances() {
    let (from, keys) = v1(1, 3).await;
    let to = MemoryStore::keyed();
    migrate(&from, &to, &MigrateOptions::default())
        .await
        .expect("first run");
    let keyed = ApiKeyCache::new(to.clone(), CacheConfig::default());
    assert!(keyed.authenticate(keys[2].secret.expose()).await.is_ok());
    let doc = ApiKeyCache::new(from.clone(), CacheConfig::default());
    doc.revoke_key(&keys[2].identity.key).await.expect("revoke");
    let report = migrate(&from, &to, &MigrateOptions::default())
        .await
        .expect("second run");
    assert_eq!(report.revocations_applied, 1);
    assert_eq!(created(&report), 0);
    tokio::time::advance(POLL).await;
    assert!(matches!(
        keyed.authenticate(keys[2].secret.expose()).await,
        Err(AuthError::Revoked)
    ));
}

// covers #22 migration: wrong layouts and a failing target are typed errors, not panics.
#[tokio::test(start_paused = true)]
async fn migration_refuses_wrong_layouts_and_reports_store_errors() {
    let (from, _) = v1(1, 1).await;
    let keyed = MemoryStore::keyed();
    let options = MigrateOptions::default();
    assert!(matches!(
        migrate(&keyed, &keyed, &options).await,
        Err(MigrateError::SourceNotDocument { .. })
    ));
    assert!(matches!(
        migrate(&from, &MemoryStore::new(), &options).await,
        Err(MigrateError::TargetNotKeyed { .. })
    ));
    keyed.fail_writes(true);
    let failed = migrate(&from, &keyed, &options).await;
    assert!(
        matches!(failed, Err(MigrateError::Store { side: "target", .. })),
        "{failed:?}"
    );
    from.fail_loads(true);
    assert!(matches!(
        migrate(&from, &MemoryStore::keyed(), &options).await,
        Err(MigrateError::Store { side: "source", .. })
    ));
}

fn scratch_dir() -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "apikey-migrate-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch");
    dir
}

fn run_binary(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_apikey-migrate"))
        .args(args)
        .output()
        .expect("run apikey-migrate")
}

// covers #22 migration: the binary converts a v1 file into a keyed directory, twice (the
// second run creates nothing), prints counts and never a key; bad usage exits 2.
#[tokio::test]
async fn the_binary_migrates_a_file_store() {
    let dir = scratch_dir();
    let file = FileStore::new(dir.join("keys.json"));
    let cache = ApiKeyCache::new(file.clone(), CacheConfig::default());
    let account = cache.create_account("acme", "Acme").await.expect("create");
    let issued = cache.issue_key(&account).await.expect("issue");
    let from = format!("file:{}", dir.join("keys.json").display());
    let to = format!("dir:{}", dir.join("keyed").display());
    let out = run_binary(&[&from, &to]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("keys 1 (1 created"), "{stdout}");
    assert!(!stdout.contains(issued.secret.expose()));
    assert!(!stdout.contains(&issued.secret.hash().to_hex()));
    let keyed = ApiKeyCache::new(FileStore::keyed(dir.join("keyed")), CacheConfig::default());
    assert_eq!(keyed.store().layout(), apikey_cache::Layout::Keyed);
    assert_eq!(
        keyed
            .authenticate(issued.secret.expose())
            .await
            .expect("valid"),
        issued.identity
    );
    let again = run_binary(&["--concurrency", "2", &from, &to]);
    let stdout = String::from_utf8_lossy(&again.stdout);
    assert!(again.status.success());
    assert!(
        stdout.contains("keys 1 (0 created, 0 ids created)"),
        "{stdout}"
    );
    assert_eq!(run_binary(&[&from]).status.code(), Some(2));
    assert_eq!(run_binary(&["nfs:/x", &to]).status.code(), Some(2));
    let _ = std::fs::remove_dir_all(&dir);
}
