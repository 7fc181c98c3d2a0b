//! `cargo xtask bench warmup_fanout`: `warmup_status` against the in-process Kubernetes API
//! server with 40 ms injected on every request (6 top-level reads + 12 log tails), compared in
//! the same run with the same 18 requests made one after another (the seed's code) and with the
//! ideal (dependent phases × 40 ms). Goal (issue 8): ≥ 5× faster than serial, ≤ 1.2× the ideal.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Event, Node, Pod};
use kube::Api;
use kube::api::{ListParams, LogParams};
use testkit::bench::{Comparison, emit, median};
use testkit::k8s::{Fault, K8sServer, Route};
use warmup_fanout::{WarmupOptions, warmup_status};

use support::{NS, WARMUP, fixtures};

const SCENARIO: &str = "warmup_fanout";
const LATENCY: Duration = Duration::from_millis(40);
const PODS: usize = 12;
const ROUNDS: usize = 10;

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The seed's shape: the same reads, one after another, same client.
async fn serial(client: &kube::Client) -> Result<usize, kube::Error> {
    let warmup = ListParams::default().labels(WARMUP);
    let mut requests = 0;
    Api::<Job>::namespaced(client.clone(), NS)
        .list(&warmup)
        .await?;
    Api::<Node>::all(client.clone())
        .list(&ListParams::default())
        .await?;
    Api::<DaemonSet>::namespaced(client.clone(), NS)
        .get("warmup")
        .await?;
    Api::<ConfigMap>::namespaced(client.clone(), NS)
        .get("warmup")
        .await?;
    let warnings = ListParams::default().fields("type=Warning");
    Api::<Event>::namespaced(client.clone(), NS)
        .list(&warnings)
        .await?;
    let pods_api = Api::<Pod>::namespaced(client.clone(), NS);
    let pods = pods_api.list(&warmup).await?;
    requests += 6;
    let params = LogParams {
        tail_lines: Some(50),
        ..LogParams::default()
    };
    for pod in pods.items.iter().take(12) {
        let name = pod.metadata.name.as_deref().unwrap_or_default();
        pods_api.logs(name, &params).await?;
        requests += 1;
    }
    Ok(requests)
}

async fn run() -> Result<Vec<Comparison>, Box<dyn std::error::Error>> {
    let server = K8sServer::with_fixtures(fixtures(PODS)).await?;
    let client = server.client_cert().await?;
    let options = WarmupOptions::default();

    // Warm up without latency: open the connections both sides reuse.
    let warm = warmup_status(client.clone(), NS, &options).await;
    assert!(warm.complete, "warm-up failed: {:?}", warm.reads);
    serial(&client).await?;
    server.inject(Route::Any, Fault::latency(LATENCY));

    let (mut ours, mut baseline) = (Vec::new(), Vec::new());
    let mut phases = 0;
    for _ in 0..ROUNDS {
        let started = Instant::now();
        let status = warmup_status(client.clone(), NS, &options).await;
        ours.push(ms(started.elapsed()));
        assert!(status.complete, "a read failed: {:?}", status.reads);
        assert_eq!(status.logs.requested, 12);
        phases = status.reads.phases();

        let started = Instant::now();
        let requests = serial(&client).await?;
        baseline.push(ms(started.elapsed()));
        assert_eq!(requests, 18);
    }
    let ours = median(&mut ours);
    let serial = median(&mut baseline);
    let ideal = f64::from(phases) * ms(LATENCY);
    println!(
        "warmup_status, 18 requests, {} ms injected each, median of {ROUNDS}: ours {ours:.1} ms, \
         serial {serial:.1} ms ({:.1}x faster; goal >= 5x), ideal {phases} phases x {} ms = \
         {ideal:.0} ms (ours is {:.2}x the ideal; goal <= 1.2x)",
        LATENCY.as_millis(),
        serial / ours,
        LATENCY.as_millis(),
        ours / ideal,
    );
    let metric = "warmup_status wall time, 40 ms per request (median)";
    Ok(vec![
        Comparison::lower_is_better(
            SCENARIO,
            "serial: the same 18 requests one after another",
            metric,
            "ms",
            ours,
            serial,
        ),
        Comparison::lower_is_better(
            SCENARIO,
            format!("ideal: {phases} dependent phases x 40 ms"),
            metric,
            "ms",
            ours,
            ideal,
        ),
    ])
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let comparisons = runtime.block_on(run())?;
    emit(&comparisons);
    Ok(())
}
