//! Scenario `blob_pool`: `get_properties` against Azurite (HTTPS + bearer tokens) through a
//! pooled client, against a client built per call, in one run; token fetches per 1 000 calls;
//! and the pool's hit path against pool-core's bare `KeyedPool::get`.
//!
//! Baselines, both measured in the same run with interleaved rounds:
//! - `client_per_call`: a new `BlobServiceClient` per call with its own reqwest client (a new
//!   connection pool and TLS handshake) and the credential itself (a new token per call) —
//!   what code without a pool does.
//! - `client_per_call_shared_http`: a new `BlobServiceClient` per call over one shared reqwest
//!   client: no new connection, but still a token fetch per call.
//!
//! Needs Azurite (`cargo xtask setup`). Run with `cargo xtask bench blob_pool`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use azure_core::credentials::TokenCredential;
use azure_core::http::ClientOptions;
use azure_storage_blob::{BlobServiceClient, BlobServiceClientOptions};
use blob_pool::{BlobPool, BlobPoolConfig, Endpoint, storage_transport};
use pool_core::{Created, KeyedPool, PoolConfig, Retire};
use testkit::azurite::{Azurite, TestCredential};
use testkit::bench::{Comparison, emit, median};

const SCENARIO: &str = "blob_pool";
const CONCURRENCY: usize = 8;
const CALLS_PER_ROUND: usize = 240;
const ROUNDS: usize = 5;
const HITS: usize = 200_000;

#[derive(Clone, Copy)]
enum Variant {
    Pooled,
    PerCall,
    PerCallSharedHttp,
}

struct Setup {
    azurite: Azurite,
    pool: BlobPool,
    endpoint: Endpoint,
    shared_http: ClientOptions,
}

/// One credential per variant for the whole run (steady state), counting its token fetches.
struct Identity {
    source: TestCredential,
    credential: Arc<dyn TokenCredential>,
}

impl Identity {
    fn new() -> Self {
        let source = TestCredential::new();
        let credential: Arc<dyn TokenCredential> = Arc::new(source.clone());
        Self { source, credential }
    }
}

/// Run `CALLS_PER_ROUND` get_properties calls on `CONCURRENCY` tasks; ops/s and token fetches.
async fn round(setup: &Arc<Setup>, variant: Variant, identity: &Identity) -> (f64, u64) {
    let credential = &identity.credential;
    let fetches_before = identity.source.calls();
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..CONCURRENCY {
        let (setup, credential) = (setup.clone(), credential.clone());
        tasks.spawn(async move {
            for _ in 0..CALLS_PER_ROUND / CONCURRENCY {
                match variant {
                    Variant::Pooled => {
                        let client = setup.pool.client(&credential, &setup.endpoint).await?;
                        client.get_properties(None).await?;
                    }
                    Variant::PerCall => {
                        let client = setup.azurite.blob_service_client(credential.clone())?;
                        client.get_properties(None).await?;
                    }
                    Variant::PerCallSharedHttp => {
                        let options = BlobServiceClientOptions {
                            client_options: setup.shared_http.clone(),
                            ..BlobServiceClientOptions::default()
                        };
                        let client = BlobServiceClient::new(
                            setup.endpoint.url().clone(),
                            Some(credential.clone()),
                            Some(options),
                        )?;
                        client.get_properties(None).await?;
                    }
                }
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("task").expect("get_properties");
    }
    let ops = CALLS_PER_ROUND as f64 / started.elapsed().as_secs_f64();
    (ops, identity.source.calls() - fetches_before)
}

struct Plain;
impl Retire for Plain {}

/// ns per hit: `BlobPool::client` on a cached client, and `KeyedPool::get` on a key of the
/// same shape, interleaved. `others`: live credentials registered besides the one asking (each
/// access checks up to 16 registrations for a dropped credential).
async fn hit_path(setup: &Setup, others: usize) -> (f64, f64) {
    let pool = BlobPool::builder()
        .config(BlobPoolConfig::default().sweep_interval(None))
        .transport(setup.pool.transport().clone())
        .build()
        .expect("pool");
    let mut registered = Vec::new();
    for _ in 0..others {
        let other: Arc<dyn TokenCredential> = Arc::new(TestCredential::new());
        drop(pool.client(&other, &setup.endpoint).await.expect("client"));
        registered.push(other);
    }
    let credential: Arc<dyn TokenCredential> = Arc::new(TestCredential::new());
    let bare: KeyedPool<(u64, String), Plain> = KeyedPool::new(PoolConfig::default());
    let key = (1u64, setup.endpoint.as_str().to_owned());
    bare.get_or_create(&key, || async {
        Ok::<_, std::io::Error>(Created::new(Plain))
    })
    .await
    .expect("create");
    drop(
        pool.client(&credential, &setup.endpoint)
            .await
            .expect("client"),
    );
    let (mut ours, mut base) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let t = Instant::now();
        for _ in 0..HITS {
            black_box(
                pool.client(&credential, &setup.endpoint)
                    .await
                    .expect("hit"),
            );
        }
        ours.push(t.elapsed().as_nanos() as f64 / HITS as f64);
        let t = Instant::now();
        for _ in 0..HITS {
            black_box(bare.get(&key).expect("hit"));
        }
        base.push(t.elapsed().as_nanos() as f64 / HITS as f64);
    }
    assert_eq!(
        pool.stats().pool.creations,
        others as u64 + 1,
        "every call a hit"
    );
    (median(&mut ours), median(&mut base))
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let azurite = Azurite::start()
            .await
            .unwrap_or_else(|e| panic!("needs Azurite (cargo xtask setup): {e}"));
        let cert = reqwest::Certificate::from_der(&azurite.ca().cert_der()).expect("CA");
        let transport = storage_transport()
            .tls_certs_only([cert])
            .build()
            .expect("transport");
        let pool = BlobPool::builder()
            .config(BlobPoolConfig::default().sweep_interval(None))
            .transport(transport)
            .build()
            .expect("pool");
        let endpoint = Endpoint::parse(azurite.endpoint().as_str()).expect("endpoint");
        let shared_http = azurite.client_options().expect("options");
        let setup = Arc::new(Setup {
            azurite,
            pool,
            endpoint,
            shared_http,
        });

        let variants = [Variant::Pooled, Variant::PerCall, Variant::PerCallSharedHttp];
        let identities: Vec<Identity> = variants.iter().map(|_| Identity::new()).collect();
        // Warm-up: Azurite's JIT, the first TLS handshakes, the pooled client and its token.
        for (variant, identity) in variants.iter().zip(&identities) {
            round(&setup, *variant, identity).await;
        }
        let mut ops = vec![Vec::new(); variants.len()];
        let mut fetches = vec![0u64; variants.len()];
        for _ in 0..ROUNDS {
            for (i, variant) in variants.iter().enumerate() {
                let (o, f) = round(&setup, *variant, &identities[i]).await;
                ops[i].push(o);
                fetches[i] += f;
            }
        }
        let ops: Vec<f64> = ops.iter_mut().map(|s| median(s)).collect();
        let calls = (ROUNDS * CALLS_PER_ROUND) as f64;
        let per_1000: Vec<f64> = fetches.iter().map(|f| *f as f64 * 1000.0 / calls).collect();
        let (hit_ours, hit_bare) = hit_path(&setup, 0).await;
        let (hit16_ours, hit16_bare) = hit_path(&setup, 15).await;

        println!(
            "blob_pool: get_properties ops/s — pooled {:.0}, client per call {:.0}, client per call \
             (shared HTTP) {:.0}; token fetches per 1000 calls (after warm-up) — {:.1} / {:.1} / \
             {:.1}; hit path {hit_ours:.0} ns vs KeyedPool::get {hit_bare:.0} ns, with 16 \
             credentials {hit16_ours:.0} ns vs {hit16_bare:.0} ns; transport {:?}",
            ops[0],
            ops[1],
            ops[2],
            per_1000[0],
            per_1000[1],
            per_1000[2],
            setup.pool.stats().transport
        );
        let mut results = Vec::new();
        for (i, baseline) in [(1, "client_per_call"), (2, "client_per_call_shared_http")] {
            results.push(Comparison::higher_is_better(SCENARIO, baseline, "get_properties throughput (8 tasks, Azurite HTTPS + bearer)", "ops/s", ops[0], ops[i]));
            results.push(Comparison::lower_is_better(SCENARIO, baseline, "token fetches per 1000 calls", "fetches", per_1000[0], per_1000[i]));
        }
        results.push(Comparison::lower_is_better(SCENARIO, "pool_core_keyed_pool_get", "hit path (client() on a cached client, 1 task)", "ns/op", hit_ours, hit_bare));
        results.push(Comparison::lower_is_better(SCENARIO, "pool_core_keyed_pool_get", "hit path with 16 credentials registered (all 16 checked for a dropped one on every call)", "ns/op", hit16_ours, hit16_bare));
        emit(&results);
    });
    // Azurite was stopped (killed by its Drop) when `setup` went out of scope.
    drop(runtime);
}
