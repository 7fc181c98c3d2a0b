//! Fault suite: Azurite killed and restarted in the middle of blob-pool traffic (seed 000/002;
//! SPEC B7, B8, R3, R4). During the outage every write fails with a typed error (no hang, no
//! panic); after the restart the *same* pooled client (no process restart, no pool rebuild, no
//! new token) succeeds again, and every write is accounted for.
//!
//! Set-up: the client talks to a TLS-terminating proxy on loopback (a stable address and CA,
//! like a load balancer), which forwards to the current Azurite. testkit's Azurite gets a new CA
//! at every start, so without the proxy a restarted Azurite could not be trusted by a client
//! built before it. Azurite itself is really killed (its process group, by dropping the fixture)
//! and a new one started, on the same port when the kernel allows it.
//!
//! Azurite keeps blobs in memory only (`--inMemoryPersistence`, testkit's choice), so blobs
//! acknowledged by the killed Azurite are gone with it: Azure's storage is durable, the emulator
//! is not. The ledger therefore checks that every write *sent after the restart* is stored, and
//! that every blob missing at the end was acknowledged by the killed instance — no write is
//! missing for any other reason.

mod support;
#[path = "support/tls_proxy.rs"]
mod tls_proxy;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use azure_core::credentials::TokenCredential;
use azure_core::http::RequestContent;
use blob_pool::{BlobPool, BlobPoolConfig, Endpoint, storage_transport};
use futures::TryStreamExt as _;
use retry_transport::RetryPolicy;
use testkit::azurite::{ACCOUNT, Azurite, AzuriteOptions, TestCredential};

use tls_proxy::TlsProxy;

const NEEDS: &str = "needs Azurite: cargo xtask it";
const CONTAINER: &str = "outage";

async fn start_azurite(port: Option<u16>) -> Result<Azurite, testkit::azurite::AzuriteError> {
    let mut options = AzuriteOptions::default();
    options.port = port;
    Azurite::start_with(options).await
}

#[derive(Debug, Default)]
struct Ledger {
    /// (blob name, epoch when its successful attempt was sent).
    acked: Mutex<Vec<(String, u8)>>,
    /// Error kinds seen, as text.
    errors: Mutex<Vec<String>>,
}

async fn list(service: &azure_storage_blob::BlobServiceClient) -> BTreeSet<String> {
    let mut pager = service
        .blob_container_client(CONTAINER)
        .list_blobs(None)
        .unwrap();
    let mut names = BTreeSet::new();
    while let Some(item) = pager.try_next().await.unwrap() {
        names.insert(item.name.unwrap_or_default());
    }
    names
}

// covers B7, B8, R3: typed errors during the outage, recovery after it, every write accounted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Azurite: cargo xtask it"]
async fn blob_traffic_survives_azurite_killed_and_restarted() {
    let first = start_azurite(None)
        .await
        .unwrap_or_else(|e| panic!("{NEEDS}: {e}"));
    let azurite_port = first.port();
    let proxy = TlsProxy::start().await;
    proxy.set_upstream(azurite_port, first.ca());

    let source = TestCredential::new();
    let credential: Arc<dyn TokenCredential> = Arc::new(source.clone());
    let cert = reqwest::Certificate::from_der(&proxy.ca().cert_der()).unwrap();
    let transport = storage_transport()
        .tls_certs_only([cert])
        .policy(RetryPolicy::default().max_attempts(2).backoff(
            Duration::from_millis(20),
            2.0,
            Duration::from_millis(100),
        ))
        .build()
        .unwrap();
    let pool = BlobPool::builder()
        .config(BlobPoolConfig::default().sweep_interval(None))
        .transport(transport)
        .build()
        .unwrap();
    let endpoint =
        Endpoint::parse(&format!("https://127.0.0.1:{}/{ACCOUNT}", proxy.port())).unwrap();
    let setup = pool.client(&credential, &endpoint).await.unwrap();
    setup
        .blob_container_client(CONTAINER)
        .create(None)
        .await
        .unwrap();
    drop(setup);

    // Writers: each uploads its items in order; a failed upload is retried (after 50 ms) until
    // it is acknowledged, so every item ends acknowledged exactly once.
    const WRITERS: usize = 4;
    const ITEMS: usize = 60;
    // Which Azurite a write was sent to: 1 = the first, 0 = none (outage), 2 = the restarted one.
    let epoch = Arc::new(AtomicU8::new(1));
    let ledger = Arc::new(Ledger::default());
    let attempts = Arc::new(AtomicUsize::new(0));
    let mut writers = tokio::task::JoinSet::new();
    for w in 0..WRITERS {
        let (pool, credential, endpoint) = (pool.clone(), credential.clone(), endpoint.clone());
        let (ledger, attempts, epoch) = (ledger.clone(), attempts.clone(), epoch.clone());
        writers.spawn(async move {
            for i in 0..ITEMS {
                let name = format!("w{w}-{i:03}");
                loop {
                    attempts.fetch_add(1, Ordering::Relaxed);
                    let sent_to = epoch.load(Ordering::SeqCst);
                    let client = pool.client(&credential, &endpoint).await.expect("pooled");
                    let blob = client.blob_container_client(CONTAINER).blob_client(&name);
                    let put = tokio::time::timeout(
                        Duration::from_secs(30),
                        blob.upload(RequestContent::from(name.clone().into_bytes()), None),
                    )
                    .await
                    .expect("an upload never hangs, outage or not");
                    match put {
                        Ok(_) => {
                            ledger.acked.lock().unwrap().push((name, sent_to));
                            break;
                        }
                        Err(error) => {
                            ledger
                                .errors
                                .lock()
                                .unwrap()
                                .push(format!("{:?}", error.kind()));
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                }
            }
        });
    }

    // Let traffic run, then kill Azurite mid-stream.
    let wait_for = |n: usize| {
        let ledger = ledger.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            while ledger.acked.lock().unwrap().len() < n {
                assert!(Instant::now() < deadline, "traffic stalled");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    wait_for(WRITERS * ITEMS / 4).await;
    epoch.store(0, Ordering::SeqCst);
    let killed_at = Instant::now();
    drop(first); // kills the Azurite process (and its watchdog)

    // The outage: wait until every writer has failed at least twice.
    let deadline = Instant::now() + Duration::from_secs(30);
    while ledger.errors.lock().unwrap().len() < 2 * WRITERS {
        assert!(Instant::now() < deadline, "no errors during the outage");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let acked_during_outage = ledger.acked.lock().unwrap().len();

    // Restart: same port if the kernel lets us have it back, else a free one (the proxy hides
    // the difference from the client either way).
    let (second, same_port) = match start_azurite(Some(azurite_port)).await {
        Ok(azurite) => (azurite, true),
        Err(_) => (start_azurite(None).await.expect("restart"), false),
    };
    // Durable storage would still have the container; the in-memory emulator does not.
    let admin = second
        .blob_service_client(Arc::new(TestCredential::new()))
        .unwrap();
    admin
        .blob_container_client(CONTAINER)
        .create(None)
        .await
        .unwrap();
    proxy.set_upstream(second.port(), second.ca());
    epoch.store(2, Ordering::SeqCst);
    let outage = killed_at.elapsed();

    while let Some(done) = writers.join_next().await {
        done.unwrap();
    }
    let recovered_in = killed_at.elapsed() - outage;

    // The ledger.
    let acked = ledger.acked.lock().unwrap().clone();
    let errors = ledger.errors.lock().unwrap().clone();
    assert_eq!(
        acked.len(),
        WRITERS * ITEMS,
        "every item acknowledged exactly once"
    );
    let unique: BTreeSet<_> = acked.iter().map(|(n, _)| n.clone()).collect();
    assert_eq!(unique.len(), WRITERS * ITEMS);
    assert!(
        errors.iter().all(|k| k == "Connection" || k == "Io"),
        "typed transport errors only: {errors:?}"
    );
    let stored = list(&admin).await;
    let after_restart: BTreeSet<_> = acked
        .iter()
        .filter(|(_, e)| *e == 2)
        .map(|(n, _)| n.clone())
        .collect();
    let lost_with_emulator: BTreeSet<_> = acked
        .iter()
        .filter(|(_, e)| *e != 2)
        .map(|(n, _)| n.clone())
        .collect();
    assert!(
        after_restart.is_subset(&stored),
        "writes acknowledged after the restart are all stored"
    );
    // Hence a blob is missing at the end only if the killed Azurite acknowledged it.
    let missing = unique.difference(&stored).count();
    assert!(
        !after_restart.is_empty(),
        "traffic resumed after the restart"
    );

    // Recovery without restarting anything: one pooled client and one token throughout.
    let stats = pool.stats();
    assert_eq!(
        stats.pool.creations, 1,
        "the same pooled client served before and after"
    );
    assert_eq!(source.calls(), 1, "the cached token survived the outage");
    assert_eq!(stats.transport.permits_in_use, 0);
    assert_eq!(stats.transport.pool_timeouts, 0);
    println!(
        "azurite outage (blob-pool): {} writes acknowledged ({} before the kill, {} after the \
         restart), {} attempts, {} typed errors during the outage ({:?}), {acked_during_outage} \
         acked before the first errors settled; {missing} missing (all acknowledged by the killed \
         Azurite); outage {outage:?}, all writers done \
         {recovered_in:?} after the restart; same port: {same_port}; 1 client, 1 token; proxy \
         connections (accepted, refused) {:?}",
        acked.len(),
        lost_with_emulator.len(),
        after_restart.len(),
        attempts.load(Ordering::Relaxed),
        errors.len(),
        errors.iter().collect::<BTreeSet<_>>(),
        proxy.counts(),
    );
}

/// A blob pool sending through `retry`-limited transport that trusts only `ca`.
fn pool_trusting(ca: &testkit::tls::TestCa) -> BlobPool {
    let cert = reqwest::Certificate::from_der(&ca.cert_der()).unwrap();
    let transport = storage_transport()
        .tls_certs_only([cert])
        .policy(RetryPolicy::default().max_attempts(2).backoff(
            Duration::from_millis(20),
            2.0,
            Duration::from_millis(100),
        ))
        .build()
        .unwrap();
    BlobPool::builder()
        .config(BlobPoolConfig::default().sweep_interval(None))
        .transport(transport)
        .build()
        .unwrap()
}

// covers A2, A3, A7, A9: API-key traffic over the Blob store while Azurite is killed and
// restarted: known keys keep authenticating from the previous snapshot, writes fail with typed
// errors and are retried, and after the restart every acknowledged write is stored and
// authenticates — through the same cache, pool and token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Azurite: cargo xtask it"]
async fn apikey_traffic_survives_azurite_killed_and_restarted() {
    use apikey_cache::{ApiKeyCache, AuthError, BlobStore, CacheConfig, KeyStore, Loaded};

    let first = start_azurite(None)
        .await
        .unwrap_or_else(|e| panic!("{NEEDS}: {e}"));
    let azurite_port = first.port();
    let proxy = TlsProxy::start().await;
    proxy.set_upstream(azurite_port, first.ca());
    let source = TestCredential::new();
    let credential: Arc<dyn TokenCredential> = Arc::new(source.clone());
    let endpoint =
        Endpoint::parse(&format!("https://127.0.0.1:{}/{ACCOUNT}", proxy.port())).unwrap();
    let pool = pool_trusting(proxy.ca());
    let store = BlobStore::new(
        pool.clone(),
        credential.clone(),
        endpoint,
        "keys",
        "keys.json",
    );
    // A 1 s TTL so that TTL refreshes hit the outage; a short back-off after a failed reload.
    let cache = ApiKeyCache::new(
        store,
        CacheConfig::default()
            .ttl(Duration::from_secs(1))
            .retry_backoff(Duration::from_millis(200)),
    );
    let mut known = Vec::new();
    for i in 0..5 {
        let account = cache
            .create_account(&format!("acct{i}"), "Known")
            .await
            .unwrap();
        known.push(
            cache
                .issue_key(&account)
                .await
                .unwrap()
                .secret
                .expose()
                .to_string(),
        );
    }

    // Readers: known keys, as fast as the cache answers (from memory), every 5 ms.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (reads_ok, reads_failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let reader = {
        let (cache, known, stop) = (cache.clone(), known.clone(), stop.clone());
        let (ok, failed) = (reads_ok.clone(), reads_failed.clone());
        tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                match cache.authenticate(&known[i % known.len()]).await {
                    Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                    Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                };
                i += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    // Writer: new accounts and keys one after another; a failed write is retried until it is
    // acknowledged. `quiesce` lets the test take the store's snapshot between two writes.
    let quiesce = Arc::new(tokio::sync::Mutex::new(()));
    let written: Arc<Mutex<Vec<String>>> = Arc::default();
    let write_errors: Arc<Mutex<Vec<String>>> = Arc::default();
    let writer = {
        let (cache, stop, quiesce) = (cache.clone(), stop.clone(), quiesce.clone());
        let (written, write_errors) = (written.clone(), write_errors.clone());
        tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let _turn = quiesce.lock().await;
                let id = format!("new{n}");
                let outcome = async {
                    let account = match cache.create_account(&id, "New").await {
                        Ok(account) => account,
                        Err(apikey_cache::WriteError::AccountExists) => {
                            apikey_cache::AccountId::new(id.as_str())
                        }
                        Err(error) => return Err(error),
                    };
                    cache.issue_key(&account).await
                }
                .await;
                match outcome {
                    Ok(issued) => {
                        written
                            .lock()
                            .unwrap()
                            .push(issued.secret.expose().to_string());
                        n += 1;
                    }
                    Err(error) => write_errors.lock().unwrap().push(format!("{error:?}")),
                }
                drop(_turn);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let until = |what: &'static str, done: Box<dyn Fn() -> bool + Send>| async move {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    let w = written.clone();
    until(
        "writes before the kill",
        Box::new(move || w.lock().unwrap().len() >= 5),
    )
    .await;

    // Snapshot (standing in for durable storage: the emulator keeps data in memory only) and
    // kill, with no write in flight.
    let turn = quiesce.lock().await;
    let Loaded::Document { document, .. } = cache.store().load(None).await.unwrap() else {
        panic!("a document is stored");
    };
    let acked_before_kill = written.lock().unwrap().len();
    let killed_at = Instant::now();
    drop(first);
    drop(turn);

    // The outage: writes fail (typed), known keys still authenticate, an unknown key is
    // "unavailable" (503), never a false 401.
    let e = write_errors.clone();
    until(
        "write errors during the outage",
        Box::new(move || e.lock().unwrap().len() >= 3),
    )
    .await;
    let stale = tokio::time::timeout(Duration::from_secs(30), cache.authenticate("ak_unknown"))
        .await
        .expect("never hangs");
    assert!(
        matches!(stale, Err(AuthError::Unavailable { .. })),
        "an unknown key during the outage: {stale:?}"
    );
    let during = cache.stats();
    assert!(
        during.reload_failures > 0 && during.serving_previous_snapshot,
        "{during:?}"
    );

    // Restart and restore the snapshot into the new Azurite (a new ETag: the cache's next write
    // meets a conflict and re-applies).
    let (second, same_port) = match start_azurite(Some(azurite_port)).await {
        Ok(azurite) => (azurite, true),
        Err(_) => (start_azurite(None).await.expect("restart"), false),
    };
    let direct = BlobStore::new(
        pool_trusting(second.ca()),
        Arc::new(TestCredential::new()),
        Endpoint::parse(second.endpoint().as_str()).unwrap(),
        "keys",
        "keys.json",
    );
    direct.store(&document, None).await.unwrap();
    proxy.set_upstream(second.port(), second.ca());
    let outage = killed_at.elapsed();
    let acked_at_restart = written.lock().unwrap().len();
    let w = written.clone();
    until(
        "writes after the restart",
        Box::new(move || w.lock().unwrap().len() >= acked_at_restart + 5),
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    reader.await.unwrap();
    writer.await.unwrap();

    // The ledger: every acknowledged key authenticates now, on this cache and on a fresh one
    // reading the restarted store (so it is really stored).
    let written = written.lock().unwrap().clone();
    let errors = write_errors.lock().unwrap().clone();
    let fresh = ApiKeyCache::new(direct, CacheConfig::default());
    for key in known.iter().chain(&written) {
        cache
            .authenticate(key)
            .await
            .expect("acknowledged key on this cache");
        fresh
            .authenticate(key)
            .await
            .expect("acknowledged key in the store");
    }
    assert_eq!(
        reads_failed.load(Ordering::Relaxed),
        0,
        "known keys never failed"
    );
    assert!(
        errors
            .iter()
            .all(|e| e.starts_with("Store") || e.starts_with("Contended")),
        "typed write errors: {errors:?}"
    );
    assert!(!cache.stats().serving_previous_snapshot, "recovered");
    assert_eq!(
        pool.stats().pool.creations,
        1,
        "the same pooled client throughout"
    );
    assert_eq!(source.calls(), 1, "the same token throughout");
    println!(
        "azurite outage (apikey-cache): {} known-key reads ok, 0 failed; {} writes acknowledged \
         ({acked_before_kill} before the kill, {} after the restart), {} typed write errors \
         during the outage, unknown key → Unavailable; outage {outage:?}; same port: \
         {same_port}; every acknowledged key authenticates on this cache and from the store",
        reads_ok.load(Ordering::Relaxed),
        written.len(),
        written.len() - acked_at_restart,
        errors.len(),
    );
}
