//! Scenario `pool_scale`: what a `KeyedPool` entry costs as the pool grows to 1k, 100k and 1M
//! entries, against `DashMap` and `moka::future::Cache` in the same run (issue #23, X4).
//!
//! Per size `N`, one thread, `u64` keys, a 64-byte value behind an `Arc` in every structure:
//! - hit latency: lookups of random resident keys (ours: `KeyedPool::get`; DashMap: `get` +
//!   `Arc::clone`; moka: `get`);
//! - miss-create latency: a new key into a structure below capacity (ours: `get_or_create`,
//!   i.e. the miss lookup, the single flight, the factory and the insert; DashMap: `insert`;
//!   moka: `get_with`);
//! - insert-with-eviction latency: a new key into a full structure (ours: `get_or_create`, which
//!   evicts one entry and hands it to a background retire; moka: `insert` + its pending
//!   maintenance). The goal row compares ours with our own insert that does not evict
//!   (goal: ratio ≥ 0.5, i.e. an evicting insert costs at most 2× one that does not);
//! - bytes per entry: resident-set growth of a child process that builds the structure alone
//!   (`/proc/self/statm`, 4 KiB pages; coarse at 1k entries), value and key included.
//!
//! Pools get a 1-hour TTL, so deadlines are distinct (as in k8s-session and blob-pool); rounds
//! interleave the variants so a change in machine load hits each alike.
//!
//! Run with `cargo xtask bench pool_scale`. Prints a human summary and one JSON line per
//! comparison (the format `cargo xtask bench` collects into docs/benchmarks.md).

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use pool_core::{Created, KeyedPool, PoolConfig, Retire};
use testkit::bench::{Comparison, emit, median};

const SIZES: [(usize, &str); 3] = [(1_000, "1k"), (100_000, "100k"), (1_000_000, "1M")];
const ROUNDS: usize = 7;
const HITS_PER_ROUND: usize = 200_000;
/// Inserts per timed chunk; the runtime runs background retires between chunks.
const CHUNK: usize = 250;

struct Client(#[allow(dead_code, reason = "a payload the benchmark never reads")] [u8; 64]);
impl Retire for Client {}

type Pool = KeyedPool<u64, Client>;
type Moka = moka::future::Cache<u64, Arc<Client>>;

#[derive(Debug, thiserror::Error)]
#[error("never fails")]
struct Never;

fn pool(capacity: usize) -> Pool {
    KeyedPool::new(
        PoolConfig::default()
            .max_entries(capacity)
            .ttl(Duration::from_secs(3600)),
    )
}

async fn create(pool: &Pool, key: u64) {
    let value = pool
        .get_or_create(&key, || async {
            Ok::<_, Never>(Created::new(Client([0; 64])))
        })
        .await
        .expect("create");
    black_box(value);
}

/// A cheap deterministic sequence of keys in `0..n`.
fn scatter(i: usize, n: usize) -> u64 {
    (i.wrapping_mul(2_654_435_761) % n) as u64
}

fn per_op(elapsed: Duration, ops: usize) -> f64 {
    elapsed.as_nanos() as f64 / ops as f64
}

/// Nanoseconds per hit of each variant, median of interleaved rounds.
fn hits(n: usize, pool: &Pool, dash: &DashMap<u64, Arc<Client>>, moka: &Moka) -> [f64; 3] {
    let mut samples = [Vec::new(), Vec::new(), Vec::new()];
    for _ in 0..ROUNDS {
        let start = Instant::now();
        for i in 0..HITS_PER_ROUND {
            black_box(pool.get(&scatter(i, n)).expect("hit"));
        }
        samples[0].push(per_op(start.elapsed(), HITS_PER_ROUND));
        let start = Instant::now();
        for i in 0..HITS_PER_ROUND {
            black_box(
                dash.get(&scatter(i, n))
                    .map(|v| Arc::clone(v.value()))
                    .expect("hit"),
            );
        }
        samples[1].push(per_op(start.elapsed(), HITS_PER_ROUND));
        let start = Instant::now();
        for i in 0..HITS_PER_ROUND {
            black_box(futures::executor::block_on(moka.get(&scatter(i, n))).expect("hit"));
        }
        samples[2].push(per_op(start.elapsed(), HITS_PER_ROUND));
    }
    samples.map(|mut s| median(&mut s))
}

struct Inserts {
    ours_fresh: f64,
    ours_evicting: f64,
    dash_fresh: f64,
    moka_fresh: f64,
    moka_evicting: f64,
}

/// Each structure first loses [`CHUNK`] resident keys (untimed), so it holds `n - CHUNK`. Then,
/// chunk by chunk: `CHUNK` new keys (no eviction: the structure fills to `n`), `CHUNK` more new
/// keys into our pool and moka (every insert evicts one), and, untimed, the second chunk is
/// removed again (back to `n - CHUNK`; the DashMap loses the first chunk, it never evicts). The
/// evicting and non-evicting inserts alternate every few hundred operations, so a change in
/// machine load hits both alike. The background retires of a chunk's victims run (and are
/// timed) in a yield at the end of the chunk.
async fn inserts(n: usize, pool: &Pool, dash: &DashMap<u64, Arc<Client>>, moka: &Moka) -> Inserts {
    let per_round = (n / 2).min(20_000);
    for key in 0..CHUNK as u64 {
        pool.invalidate(&key).await;
        dash.remove(&key);
        moka.invalidate(&key).await;
    }
    moka.run_pending_tasks().await;
    let mut next = n as u64;
    let mut fresh_keys = |count: usize| {
        let keys: Vec<u64> = (next..next + count as u64).collect();
        next += count as u64;
        keys
    };
    let mut samples: [Vec<f64>; 5] = Default::default();
    for _ in 0..ROUNDS {
        let mut spent = [Duration::ZERO; 5];
        let evictions = pool.stats().evictions.capacity;
        for _ in 0..per_round / CHUNK {
            let first = fresh_keys(CHUNK);
            let second = fresh_keys(CHUNK);
            assert_eq!(pool.len(), n - CHUNK, "pool below capacity");

            let start = Instant::now();
            for key in &first {
                create(pool, *key).await;
            }
            tokio::task::yield_now().await;
            spent[0] += start.elapsed();

            let start = Instant::now();
            for key in &second {
                create(pool, *key).await;
            }
            tokio::task::yield_now().await;
            spent[1] += start.elapsed();
            for key in &second {
                pool.invalidate(key).await;
            }

            let start = Instant::now();
            for key in &first {
                dash.insert(*key, Arc::new(Client([0; 64])));
            }
            spent[2] += start.elapsed();
            for key in &first {
                dash.remove(key);
            }

            let start = Instant::now();
            for key in &first {
                black_box(
                    moka.get_with(*key, async { Arc::new(Client([0; 64])) })
                        .await,
                );
            }
            moka.run_pending_tasks().await;
            spent[3] += start.elapsed();

            let start = Instant::now();
            for key in &second {
                moka.insert(*key, Arc::new(Client([0; 64]))).await;
            }
            moka.run_pending_tasks().await;
            spent[4] += start.elapsed();
            for key in &second {
                moka.invalidate(key).await;
            }
            moka.run_pending_tasks().await;
        }
        let ops = per_round / CHUNK * CHUNK;
        assert_eq!(
            pool.stats().evictions.capacity - evictions,
            ops as u64,
            "every insert of a second chunk evicted one entry"
        );
        for (samples, spent) in samples.iter_mut().zip(spent) {
            samples.push(per_op(spent, ops));
        }
    }
    let [
        ours_fresh,
        ours_evicting,
        dash_fresh,
        moka_fresh,
        moka_evicting,
    ] = samples.map(|mut s| median(&mut s));
    Inserts {
        ours_fresh,
        ours_evicting,
        dash_fresh,
        moka_fresh,
        moka_evicting,
    }
}

fn rss_bytes() -> f64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    let pages: f64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("resident pages");
    pages * 4096.0
}

/// Child process: build one structure of `n` entries and print its resident bytes per entry.
fn memory_child(which: &str, n: usize) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let before = rss_bytes();
    let held: Box<dyn std::any::Any> = match which {
        "ours" => {
            let pool = pool(n);
            runtime.block_on(async {
                for key in 0..n as u64 {
                    create(&pool, key).await;
                }
            });
            Box::new(pool)
        }
        "dashmap" => {
            let dash: DashMap<u64, Arc<Client>> = DashMap::new();
            for key in 0..n as u64 {
                dash.insert(key, Arc::new(Client([0; 64])));
            }
            Box::new(dash)
        }
        _ => {
            let moka: Moka = moka::future::Cache::new(n as u64);
            runtime.block_on(async {
                for key in 0..n as u64 {
                    moka.insert(key, Arc::new(Client([0; 64]))).await;
                }
                moka.run_pending_tasks().await;
            });
            Box::new(moka)
        }
    };
    let after = rss_bytes();
    black_box(&held);
    println!("{}", (after - before) / n as f64);
}

fn memory(which: &str, n: usize) -> f64 {
    let exe = std::env::current_exe().expect("current exe");
    let out = std::process::Command::new(exe)
        .args(["--memory", which, &n.to_string()])
        .output()
        .expect("memory child");
    assert!(out.status.success(), "memory child failed: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("bytes per entry")
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(at) = args.iter().position(|a| a == "--memory") {
        memory_child(&args[at + 1], args[at + 2].parse().expect("size"));
        return;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let mut results = Vec::new();
    // `POOL_SCALE_ONLY=<label>` (1k, 100k or 1M) measures that size's latencies alone, without
    // the memory rows and without writing results (for profiling).
    let only = std::env::var("POOL_SCALE_ONLY").ok();
    for (n, label) in SIZES {
        if only.as_deref().is_some_and(|only| only != label) {
            continue;
        }
        let pool = pool(n);
        let dash: DashMap<u64, Arc<Client>> = DashMap::new();
        let moka: Moka = moka::future::Cache::new(n as u64);
        runtime.block_on(async {
            for key in 0..n as u64 {
                create(&pool, key).await;
                dash.insert(key, Arc::new(Client([0; 64])));
                moka.insert(key, Arc::new(Client([0; 64]))).await;
            }
            moka.run_pending_tasks().await;
        });
        let [hit, dash_hit, moka_hit] = hits(n, &pool, &dash, &moka);
        let ins = runtime.block_on(inserts(n, &pool, &dash, &moka));
        drop((pool, dash, moka));
        if only.is_some() {
            println!(
                "pool_scale {label}: hit {hit:.0} ns; miss-create {:.0} ns; \
                 insert-with-eviction {:.0} ns (moka {:.0}); evicting/non-evicting {:.2}x",
                ins.ours_fresh,
                ins.ours_evicting,
                ins.moka_evicting,
                ins.ours_evicting / ins.ours_fresh,
            );
            continue;
        }
        let [mem, dash_mem, moka_mem] = ["ours", "dashmap", "moka"].map(|w| memory(w, n));
        println!(
            "pool_scale {label}: hit {hit:.0} ns (DashMap {dash_hit:.0}, moka {moka_hit:.0}); \
             miss-create {:.0} ns (DashMap insert {:.0}, moka get_with {:.0}); \
             insert-with-eviction {:.0} ns (moka {:.0}); evicting/non-evicting {:.2}x; \
             bytes/entry {mem:.0} (DashMap {dash_mem:.0}, moka {moka_mem:.0})",
            ins.ours_fresh,
            ins.dash_fresh,
            ins.moka_fresh,
            ins.ours_evicting,
            ins.moka_evicting,
            ins.ours_evicting / ins.ours_fresh,
        );
        let row = |baseline: &str, metric: &'static str, unit: &'static str, ours, other| {
            Comparison::lower_is_better(
                "pool_scale",
                format!("{baseline} ({label} entries)"),
                metric,
                unit,
                ours,
                other,
            )
        };
        results.extend([
            row(
                "DashMap get + Arc clone",
                "hit latency",
                "ns/op",
                hit,
                dash_hit,
            ),
            row(
                "moka::future::Cache::get",
                "hit latency",
                "ns/op",
                hit,
                moka_hit,
            ),
            row(
                "DashMap insert",
                "miss-create latency (new key, below capacity)",
                "ns/op",
                ins.ours_fresh,
                ins.dash_fresh,
            ),
            row(
                "moka get_with",
                "miss-create latency (new key, below capacity)",
                "ns/op",
                ins.ours_fresh,
                ins.moka_fresh,
            ),
            row(
                "moka insert + pending maintenance",
                "insert-with-eviction latency (new key, full)",
                "ns/op",
                ins.ours_evicting,
                ins.moka_evicting,
            ),
            row(
                "ours, insert without eviction (goal: ratio >= 0.5)",
                "insert-with-eviction latency (new key, full)",
                "ns/op",
                ins.ours_evicting,
                ins.ours_fresh,
            ),
            row(
                "DashMap<u64, Arc<V>>",
                "bytes per entry (RSS)",
                "bytes",
                mem,
                dash_mem,
            ),
            row(
                "moka::future::Cache",
                "bytes per entry (RSS)",
                "bytes",
                mem,
                moka_mem,
            ),
        ]);
    }
    if only.is_none() {
        emit(&results);
    }
}
