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

/// Which Azurite a write was sent to: 1 = the first, 0 = none (outage), 2 = the restarted one.
static EPOCH: AtomicU8 = AtomicU8::new(1);

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
    let ledger = Arc::new(Ledger::default());
    let attempts = Arc::new(AtomicUsize::new(0));
    let mut writers = tokio::task::JoinSet::new();
    for w in 0..WRITERS {
        let (pool, credential, endpoint) = (pool.clone(), credential.clone(), endpoint.clone());
        let (ledger, attempts) = (ledger.clone(), attempts.clone());
        writers.spawn(async move {
            for i in 0..ITEMS {
                let name = format!("w{w}-{i:03}");
                loop {
                    attempts.fetch_add(1, Ordering::Relaxed);
                    let epoch = EPOCH.load(Ordering::SeqCst);
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
                            ledger.acked.lock().unwrap().push((name, epoch));
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
    EPOCH.store(0, Ordering::SeqCst);
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
    EPOCH.store(2, Ordering::SeqCst);
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
