//! Scenario `pool_hit`: the hit path of `KeyedPool::get` against a bare `DashMap::get` +
//! `Arc::clone`, and against `moka::future::Cache::get`, on 1 and 2 threads, in one run.
//!
//! A third baseline adds one `tokio::time::Instant::now()` to the bare map: the clock read that
//! any strict "never hand out an expired entry" check needs, so the table shows how much of the
//! gap is the clock and how much is the pool.
//!
//! A fourth row compares the pool with a Prometheus recorder (metrics-exporter-prometheus) bound
//! to it against the same pool without one (issue 19: at most 1.25x on the hit path).
//!
//! Run with `cargo xtask bench pool_hit`. Prints a human summary and one JSON line per
//! comparison (the format `cargo xtask bench` collects into docs/benchmarks.md).

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use pool_core::{Created, KeyedPool, PoolConfig, Retire};
use testkit::bench::{Comparison, emit, median};

const KEYS: usize = 64;
const OPS_PER_THREAD: usize = 400_000;
const ROUNDS: usize = 9;

struct Client(#[allow(dead_code, reason = "a payload the benchmark never reads")] [u8; 64]);
impl Retire for Client {}

fn keys() -> Vec<String> {
    (0..KEYS)
        .map(|i| format!("subscription-{i}/cluster"))
        .collect()
}

/// Nanoseconds per operation of one round of `op` run on `threads` threads at once.
fn round(threads: usize, op: &(dyn Fn(usize) + Sync)) -> f64 {
    let start = Instant::now();
    std::thread::scope(|scope| {
        for t in 0..threads {
            scope.spawn(move || {
                for i in 0..OPS_PER_THREAD {
                    op(i.wrapping_mul(7).wrapping_add(t) % KEYS);
                }
            });
        }
    });
    let elapsed: Duration = start.elapsed();
    elapsed.as_nanos() as f64 / (OPS_PER_THREAD * threads) as f64
}

/// Median ns/op of each variant. Rounds are interleaved (one round of every variant, then the
/// next), so a change in machine load hits every variant alike and the ratios stay fair.
fn measure(threads: usize, variants: &[&(dyn Fn(usize) + Sync)]) -> Vec<f64> {
    let mut samples = vec![Vec::with_capacity(ROUNDS); variants.len()];
    for _ in 0..ROUNDS {
        for (variant, samples) in variants.iter().zip(&mut samples) {
            samples.push(round(threads, *variant));
        }
    }
    samples.iter_mut().map(|s| median(s)).collect()
}

fn main() {
    let keys = keys();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");

    let pool: KeyedPool<String, Client> = KeyedPool::new(PoolConfig::default().max_entries(KEYS));
    // The same pool with its metrics handles registered with a Prometheus recorder (handles
    // bind at construction, so a local recorder is enough: nothing process-wide is installed).
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let recorded: KeyedPool<String, Client> = metrics::with_local_recorder(&recorder, || {
        KeyedPool::new(PoolConfig::default().max_entries(KEYS).name("bench"))
    });
    let dash: DashMap<String, Arc<Client>> = DashMap::new();
    let moka: moka::future::Cache<String, Arc<Client>> = moka::future::Cache::new(KEYS as u64);
    runtime.block_on(async {
        for key in &keys {
            for pool in [&pool, &recorded] {
                pool.get_or_create(key, || async {
                    Ok::<_, std::io::Error>(Created::new(Client([0; 64])))
                })
                .await
                .expect("create");
            }
            dash.insert(key.clone(), Arc::new(Client([0; 64])));
            moka.insert(key.clone(), Arc::new(Client([0; 64]))).await;
        }
    });

    let mut results = Vec::new();
    for threads in [1, 2] {
        let ours = |i: usize| {
            black_box(pool.get(&keys[i]).expect("hit"));
        };
        let with_recorder = |i: usize| {
            black_box(recorded.get(&keys[i]).expect("hit"));
        };
        let bare = |i: usize| {
            black_box(
                dash.get(&keys[i])
                    .map(|v| Arc::clone(v.value()))
                    .expect("hit"),
            );
        };
        let clocked = |i: usize| {
            let now = tokio::time::Instant::now();
            let value = dash
                .get(&keys[i])
                .map(|v| Arc::clone(v.value()))
                .expect("hit");
            black_box((now, value));
        };
        let moka_get = |i: usize| {
            black_box(futures::executor::block_on(moka.get(&keys[i])).expect("hit"));
        };
        let [ours, bare, clocked, moka_ns, prometheus] = measure(
            threads,
            &[&ours, &bare, &clocked, &moka_get, &with_recorder],
        )[..] else {
            unreachable!("one median per variant")
        };
        println!(
            "pool_hit threads={threads}: KeyedPool::get {ours:.1} ns/op, DashMap+Arc {bare:.1} ns/op, \
             DashMap+Arc+clock {clocked:.1} ns/op, moka {moka_ns:.1} ns/op, \
             with a Prometheus recorder {prometheus:.1} ns/op (x{:.2})",
            prometheus / ours
        );
        for (baseline, value) in [
            ("dashmap_get_arc_clone", bare),
            ("dashmap_get_arc_clone_plus_clock_read", clocked),
            ("moka_future_get", moka_ns),
        ] {
            let plural = if threads == 1 { "" } else { "s" };
            results.push(Comparison::lower_is_better(
                "pool_hit",
                format!("{baseline} ({threads} thread{plural})"),
                "hit latency",
                "ns/op",
                ours,
                value,
            ));
        }
        let plural = if threads == 1 { "" } else { "s" };
        results.push(Comparison::lower_is_better("pool_hit", format!(
                "KeyedPool::get without a metrics recorder, ours with Prometheus ({threads} thread{plural})"
            ), "hit latency", "ns/op", prometheus, ours));
    }
    // Every hit reached the recorder (published in batches, exactly on a stats read).
    let hits = recorded.stats().hits;
    let scrape = handle.render();
    assert!(
        scrape.contains("pool_hits") && hits > 0,
        "the recorder saw the pool's hits"
    );
    emit(&results);
}
