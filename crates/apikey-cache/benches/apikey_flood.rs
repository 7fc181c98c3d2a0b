//! Scenario `apikey_flood`: a flood of random unknown API keys (with some valid ones mixed
//! in) against `ApiKeyCache` and against a naive reload-on-every-miss cache — the seed-003
//! proposal (a lock dedupes concurrent reloads, every miss still reloads) without its
//! clear-before-reload bug — in the same run, over identical in-memory stores with a fixed
//! per-read latency standing in for a Blob GET.
//!
//! Measured: store reads caused by the flood, and p99 `authenticate` latency for all requests
//! and for the valid keys alone. Run with `cargo xtask bench apikey_flood`; ends with one JSON
//! line per comparison (collected into docs/benchmarks.md).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use apikey_cache::{
    AccountRecord, ApiKeyCache, CacheConfig, KeyDocument, KeyHash, KeyRecord, KeyStore, Loaded,
    MemoryStore,
};
use testkit::bench::{Comparison, emit, median, percentile};

const VALID_KEYS: usize = 1_000;
const CLIENTS: usize = 32;
const REQUESTS_PER_CLIENT: usize = 50;
/// One request in this many presents a valid key; the rest are random unknown keys.
const VALID_EVERY: usize = 10;
const STORE_LATENCY: Duration = Duration::from_millis(1);
const ROUNDS: usize = 3;

fn valid_key(i: usize) -> String {
    format!("ak_bench_{i:06}_0123456789abcdefghijklmnopqrstu")
}

fn document() -> KeyDocument {
    let mut doc = KeyDocument::empty();
    doc.accounts.insert(
        "bench".into(),
        AccountRecord {
            name: "Bench".into(),
            created_unix: 0,
        },
    );
    for i in 0..VALID_KEYS {
        doc.keys.insert(
            format!("key_{i:06}"),
            KeyRecord {
                account: "bench".into(),
                sha256: KeyHash::of(&valid_key(i)).to_hex(),
                created_unix: 0,
                revoked_unix: None,
            },
        );
    }
    doc
}

fn store() -> MemoryStore {
    let store = MemoryStore::with_document(document());
    store.set_latency(STORE_LATENCY);
    store
}

/// The baseline: every miss reloads the whole table (deduplicated only by a lock, as in the
/// seed's proposal), then swaps it in.
struct Naive {
    store: MemoryStore,
    table: RwLock<Arc<HashMap<KeyHash, String>>>,
    reload: tokio::sync::Mutex<()>,
}

impl Naive {
    async fn new(store: MemoryStore) -> Self {
        let naive = Self {
            store,
            table: RwLock::new(Arc::new(HashMap::new())),
            reload: tokio::sync::Mutex::new(()),
        };
        naive.load().await;
        naive
    }

    fn lookup(&self, hash: &KeyHash) -> bool {
        self.table.read().expect("table").contains_key(hash)
    }

    async fn load(&self) {
        if let Ok(Loaded::Document { document, .. }) = self.store.load(None).await {
            let table = document
                .keys
                .iter()
                .filter_map(|(id, r)| Some((KeyHash::from_hex(&r.sha256)?, id.clone())))
                .collect();
            *self.table.write().expect("table") = Arc::new(table);
        }
    }

    async fn authenticate(&self, key: &str) -> bool {
        let hash = KeyHash::of(key);
        if self.lookup(&hash) {
            return true;
        }
        let _reloading = self.reload.lock().await;
        if self.lookup(&hash) {
            return true;
        }
        self.load().await;
        self.lookup(&hash)
    }
}

/// A metric's name, unit and how to read it from an outcome.
type Metric = (&'static str, &'static str, fn(&Outcome) -> f64);

struct Outcome {
    store_reads: f64,
    p99_all_us: f64,
    p99_valid_us: f64,
    elapsed: Duration,
}

/// Run the flood with `auth` (true = accepted); returns latencies of (all, valid) requests.
async fn flood<F, Fut>(auth: Arc<F>) -> (Vec<f64>, Vec<f64>)
where
    F: Fn(String) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let mut clients = Vec::new();
    for client in 0..CLIENTS {
        let auth = auth.clone();
        clients.push(tokio::spawn(async move {
            let (mut all, mut valid) = (Vec::new(), Vec::new());
            for i in 0..REQUESTS_PER_CLIENT {
                let is_valid = (client * REQUESTS_PER_CLIENT + i).is_multiple_of(VALID_EVERY);
                let key = if is_valid {
                    valid_key((client * 31 + i) % VALID_KEYS)
                } else {
                    format!("ak_flood_{:032x}", rand::random::<u128>())
                };
                let start = Instant::now();
                let accepted = auth(key).await;
                let micros = start.elapsed().as_secs_f64() * 1e6;
                assert_eq!(accepted, is_valid, "wrong answer under flood");
                all.push(micros);
                if is_valid {
                    valid.push(micros);
                }
            }
            (all, valid)
        }));
    }
    let (mut all, mut valid) = (Vec::new(), Vec::new());
    for client in clients {
        let (a, v) = client.await.expect("client");
        all.extend(a);
        valid.extend(v);
    }
    (all, valid)
}

fn outcome(
    store: &MemoryStore,
    before: u64,
    started: Instant,
    mut all: Vec<f64>,
    mut valid: Vec<f64>,
) -> Outcome {
    Outcome {
        store_reads: (store.loads() - before) as f64,
        p99_all_us: percentile(&mut all, 99.0),
        p99_valid_us: percentile(&mut valid, 99.0),
        elapsed: started.elapsed(),
    }
}

async fn run_ours() -> Outcome {
    let store = store();
    let cache = ApiKeyCache::new(store.clone(), CacheConfig::default());
    cache.refresh().await.expect("warm-up");
    let before = store.loads();
    let started = Instant::now();
    let (all, valid) = flood(Arc::new(move |key: String| {
        let cache = cache.clone();
        async move { cache.authenticate(&key).await.is_ok() }
    }))
    .await;
    outcome(&store, before, started, all, valid)
}

async fn run_naive() -> Outcome {
    let store = store();
    let naive = Arc::new(Naive::new(store.clone()).await);
    let before = store.loads();
    let started = Instant::now();
    let (all, valid) = flood(Arc::new(move |key: String| {
        let naive = naive.clone();
        async move { naive.authenticate(&key).await }
    }))
    .await;
    outcome(&store, before, started, all, valid)
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .expect("runtime");
    let (mut ours, mut naive) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        // Interleaved rounds: machine-load drift hits both alike.
        ours.push(runtime.block_on(run_ours()));
        naive.push(runtime.block_on(run_naive()));
    }
    let requests = CLIENTS * REQUESTS_PER_CLIENT;
    let med = |outcomes: &[Outcome], f: fn(&Outcome) -> f64| {
        median(&mut outcomes.iter().map(f).collect::<Vec<_>>())
    };
    let metrics: [Metric; 3] = [
        ("store reads during flood", "reads", |o| o.store_reads),
        ("p99 auth latency, all requests", "µs", |o| o.p99_all_us),
        ("p99 auth latency, valid keys", "µs", |o| o.p99_valid_us),
    ];
    for (name, outcomes) in [("ApiKeyCache", &ours), ("naive reload-on-miss", &naive)] {
        println!(
            "apikey_flood {name}: {requests} requests ({} clients, 1 in {VALID_EVERY} valid, store read {STORE_LATENCY:?}): \
             store reads {:.0}, p99 all {:.0} µs, p99 valid {:.0} µs, wall {:.2} s (medians of {ROUNDS})",
            CLIENTS,
            med(outcomes, |o| o.store_reads),
            med(outcomes, |o| o.p99_all_us),
            med(outcomes, |o| o.p99_valid_us),
            med(outcomes, |o| o.elapsed.as_secs_f64()),
        );
    }
    let results: Vec<Comparison> = metrics
        .iter()
        .map(|&(metric, unit, f)| {
            Comparison::lower_is_better(
                "apikey_flood",
                "naive reload-on-every-miss cache",
                metric,
                unit,
                med(&ours, f),
                med(&naive, f),
            )
        })
        .collect();
    emit(&results);
}
