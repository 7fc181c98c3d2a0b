//! Scenario `k8s_session`: latency of one pod-list call through a pooled session
//! (`SessionPool::session` hit + the call, on a kept-alive TLS connection) against a
//! `kube::Client` built per call (the seed-001 behaviour, minus its temp files: a new TCP + TLS
//! handshake each time), both against testkit's in-process HTTPS Kubernetes API server with
//! mTLS, in the same run.
//!
//! A second part (issue #23) drives a round-robin over one cluster more than the capacity (33
//! keys, capacity 32, every key served by the same test server) and reports the hit rate and the
//! time per call, against the same loop with the thrashing protection off (an expiry margin as
//! long as the TTL: soonest-deadline eviction alone, the policy before #23, which rebuilds a
//! session on every call) and against a round-robin within the capacity (32 clusters).
//!
//! A third part (issue #25) fires 1 000 concurrent pod lists at one cluster whose server answers
//! each in 20 ms, from a cold client: ours over HTTP/2 (the default: one TLS connection,
//! multiplexed up to the server's 100 streams), ours over HTTP/1.1 with the 32-request bound
//! (`http2(false)`, the stack before #25), and kube's default client (HTTP/1.1, unbounded).
//! TLS connections opened, wall time of the burst and per-call p50/p99, median of 3 rounds each,
//! interleaved.
//!
//! Run with `cargo xtask bench k8s_session`. Prints a human summary and one JSON line per
//! comparison (the format `cargo xtask bench` collects into docs/benchmarks.md).

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use k8s_session::{KubeconfigSource, SessionKey, SessionPool};
use kube::Api;
use testkit::bench::{Comparison, emit, median, percentile};
use testkit::k8s::{Fault, K8sServer, SAMPLE_NAMESPACE, kube_client};

const CALLS_PER_ROUND: usize = 50;
const ROUNDS: usize = 10;
const WARMUP_CALLS: usize = 20;
const CAPACITY: usize = 32;
const CYCLE_ROUNDS: usize = 8;
const BURST: usize = 1_000;
const BURST_ROUNDS: usize = 3;
const SERVER_LATENCY: Duration = Duration::from_millis(20);

async fn list(client: &kube::Client) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), SAMPLE_NAMESPACE);
    let list = pods.list(&Default::default()).await.expect("list pods");
    assert!(!list.items.is_empty(), "the sample namespace has pods");
}

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run());
}

async fn run() {
    let server = K8sServer::start().await.expect("k8s test server");
    let kubeconfig = server.kubeconfig_cert().expect("client certificate");
    let pool = SessionPool::builder(KubeconfigSource::from_kubeconfig(kubeconfig.clone()))
        .knobs_from(|_| None)
        .build();
    let key = SessionKey::new("bench-subscription", "bench-rg", "bench-cluster");

    let pooled = || async {
        let session = pool.session(&key).await.expect("session");
        list(&session).await;
    };
    let per_call = || async {
        let client = kube_client(kubeconfig.clone()).await.expect("client");
        list(&client).await;
    };

    for _ in 0..WARMUP_CALLS {
        pooled().await;
        per_call().await;
    }
    let connections_before = server.tls_connections();

    // Rounds interleave the two variants so load changes on the shared machine hit both alike.
    let (mut ours, mut baseline) = (Vec::new(), Vec::new());
    let mut ours_connections = 0;
    for _ in 0..ROUNDS {
        let before = server.tls_connections();
        for _ in 0..CALLS_PER_ROUND {
            let start = Instant::now();
            pooled().await;
            ours.push(start.elapsed().as_secs_f64() * 1e6);
        }
        ours_connections += server.tls_connections() - before;
        for _ in 0..CALLS_PER_ROUND {
            let start = Instant::now();
            per_call().await;
            baseline.push(start.elapsed().as_secs_f64() * 1e6);
        }
    }
    let baseline_connections = server.tls_connections() - connections_before - ours_connections;
    let stats = pool.stats();

    let mut comparisons = vec![
        Comparison::lower_is_better(
            "k8s_session",
            "kube::Client built per call",
            "pod list latency, median",
            "µs/call",
            median(&mut ours.clone()),
            median(&mut baseline.clone()),
        ),
        Comparison::lower_is_better(
            "k8s_session",
            "kube::Client built per call",
            "pod list latency, p99",
            "µs/call",
            percentile(&mut ours, 99.0),
            percentile(&mut baseline, 99.0),
        ),
        Comparison::lower_is_better(
            "k8s_session",
            "kube::Client built per call",
            "TLS handshakes per 100 calls",
            "handshakes",
            ours_connections as f64 * 100.0 / (ROUNDS * CALLS_PER_ROUND) as f64,
            baseline_connections as f64 * 100.0 / (ROUNDS * CALLS_PER_ROUND) as f64,
        ),
    ];
    comparisons.extend(round_robin(&server, &kubeconfig).await);
    comparisons.extend(bursts().await);
    println!(
        "k8s_session: {} calls per variant over mTLS on loopback; pool: {} build(s), {} hits",
        ROUNDS * CALLS_PER_ROUND,
        stats.creations,
        stats.hits
    );
    for c in &comparisons {
        println!(
            "  {:<32} pooled {:>10.1}  per-call {:>10.1} {}  ({:.1}x)",
            c.metric,
            c.ours,
            c.baseline,
            c.unit,
            c.ratio()
        );
    }
    emit(&comparisons);
}

/// Round-robin over `clusters` keys through a pool of [`CAPACITY`] sessions: (hit rate in %,
/// ms per call) over [`CYCLE_ROUNDS`] rounds after one warm-up round.
async fn cycle(
    kubeconfig: &kube::config::Kubeconfig,
    clusters: usize,
    margin: Duration,
) -> (f64, f64) {
    let pool = SessionPool::builder(KubeconfigSource::from_kubeconfig(kubeconfig.clone()))
        .knobs_from(|_| None)
        .max_entries(CAPACITY)
        .expiry_margin(margin)
        .build();
    let keys: Vec<SessionKey> = (0..clusters)
        .map(|i| SessionKey::new("bench-subscription", "bench-rg", format!("cluster-{i}")))
        .collect();
    for key in &keys {
        list(&pool.session(key).await.expect("session")).await;
    }
    let before = pool.stats();
    let start = Instant::now();
    for _ in 0..CYCLE_ROUNDS {
        for key in &keys {
            list(&pool.session(key).await.expect("session")).await;
        }
    }
    let elapsed = start.elapsed();
    let calls = (CYCLE_ROUNDS * clusters) as f64;
    let after = pool.stats();
    let hits = (after.hits - before.hits) as f64;
    println!(
        "  round-robin over {clusters} clusters (capacity {CAPACITY}, margin {margin:?}): \
         {:.1} % hits, {:.3} ms/call, thrashing {}",
        100.0 * hits / calls,
        elapsed.as_secs_f64() * 1e3 / calls,
        after.thrashing
    );
    (100.0 * hits / calls, elapsed.as_secs_f64() * 1e3 / calls)
}

async fn round_robin(server: &K8sServer, kubeconfig: &kube::config::Kubeconfig) -> Vec<Comparison> {
    let connections = server.tls_connections();
    let over = CAPACITY + 1;
    let (hit_rate, ms) = cycle(kubeconfig, over, Duration::from_secs(60)).await;
    // Soonest-deadline alone: a margin as long as the pool TTL makes every session "about to
    // expire", which is what capacity eviction did before #23.
    let (fifo_rate, fifo_ms) = cycle(kubeconfig, over, Duration::from_secs(86_400)).await;
    let (_, within_ms) = cycle(kubeconfig, CAPACITY, Duration::from_secs(60)).await;
    println!(
        "  TLS connections opened by the round-robin runs: {}",
        server.tls_connections() - connections
    );
    let fifo = "soonest-deadline eviction alone (the pre-#23 policy)";
    vec![
        Comparison::higher_is_better(
            "k8s_session",
            fifo,
            "round-robin over capacity+1 (33) clusters: hit rate",
            "%",
            hit_rate,
            fifo_rate,
        ),
        Comparison::lower_is_better(
            "k8s_session",
            fifo,
            "round-robin over capacity+1 (33) clusters: time per call",
            "ms/call",
            ms,
            fifo_ms,
        ),
        Comparison::lower_is_better(
            "k8s_session",
            "ours, round-robin within capacity (32 clusters)",
            "round-robin over capacity+1 (33) clusters: time per call",
            "ms/call",
            ms,
            within_ms,
        ),
    ]
}

/// One variant of the burst.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Burst {
    Http2,
    Http1Bounded,
    KubeDefault,
}

/// What one burst measured.
#[derive(Default)]
struct BurstRun {
    connections: Vec<f64>,
    wall_ms: Vec<f64>,
    latencies_ms: Vec<f64>,
}

/// [`BURST`] concurrent lists from a cold client of `variant` against a server answering in
/// [`SERVER_LATENCY`].
async fn burst(
    server: &K8sServer,
    kubeconfig: &kube::config::Kubeconfig,
    variant: Burst,
    run: &mut BurstRun,
) {
    let before = server.tls_connections();
    let client = match variant {
        Burst::KubeDefault => kube_client(kubeconfig.clone()).await.expect("client"),
        _ => {
            let pool = SessionPool::builder(KubeconfigSource::from_kubeconfig(kubeconfig.clone()))
                .knobs_from(|_| None)
                .http2(variant == Burst::Http2)
                .build();
            let key = SessionKey::new("bench-subscription", "bench-rg", "bench-burst");
            pool.session(&key).await.expect("session").client().clone()
        }
    };
    let start = Instant::now();
    let latencies = futures::future::join_all((0..BURST).map(|_| {
        let client = client.clone();
        async move {
            let start = Instant::now();
            list(&client).await;
            start.elapsed().as_secs_f64() * 1e3
        }
    }))
    .await;
    run.wall_ms.push(start.elapsed().as_secs_f64() * 1e3);
    run.latencies_ms.extend(latencies);
    run.connections
        .push((server.tls_connections() - before) as f64);
}

async fn bursts() -> Vec<Comparison> {
    // A server of its own, so the injected latency touches only this part.
    let server = K8sServer::start().await.expect("k8s test server");
    let kubeconfig = server.kubeconfig_cert().expect("client certificate");
    let pods = format!("/api/v1/namespaces/{SAMPLE_NAMESPACE}/pods");
    server.inject(pods.as_str(), Fault::latency(SERVER_LATENCY));
    let variants = [Burst::Http2, Burst::Http1Bounded, Burst::KubeDefault];
    let mut runs: Vec<BurstRun> = variants.iter().map(|_| BurstRun::default()).collect();
    for _ in 0..BURST_ROUNDS {
        for (variant, run) in variants.iter().zip(runs.iter_mut()) {
            burst(&server, &kubeconfig, *variant, run).await;
        }
    }
    let figures: Vec<[f64; 4]> = runs
        .iter_mut()
        .map(|run| {
            [
                median(&mut run.connections),
                median(&mut run.wall_ms),
                median(&mut run.latencies_ms),
                percentile(&mut run.latencies_ms, 99.0),
            ]
        })
        .collect();
    let names = [
        "ours over HTTP/2",
        "ours over HTTP/1.1, 32 in flight (before #25)",
        "kube's default client (HTTP/1.1)",
    ];
    for (name, f) in names.iter().zip(&figures) {
        println!(
            "  burst of {BURST}, {SERVER_LATENCY:?} server latency, {name}: {:.0} TLS connections, \
             wall {:.0} ms, p50 {:.1} ms, p99 {:.1} ms",
            f[0], f[1], f[2], f[3]
        );
    }
    let metrics: [(&'static str, &'static str); 4] = [
        (
            "1 000 concurrent lists, 20 ms latency: TLS connections",
            "connections",
        ),
        ("1 000 concurrent lists, 20 ms latency: wall time", "ms"),
        ("1 000 concurrent lists, 20 ms latency: p50", "ms/call"),
        ("1 000 concurrent lists, 20 ms latency: p99", "ms/call"),
    ];
    let mut comparisons = Vec::new();
    for baseline in 1..3 {
        for (i, (metric, unit)) in metrics.iter().enumerate() {
            comparisons.push(Comparison::lower_is_better(
                "k8s_session",
                names[baseline],
                metric,
                unit,
                figures[0][i],
                figures[baseline][i],
            ));
        }
    }
    comparisons
}
