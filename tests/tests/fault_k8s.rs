//! Fault suite: testkit's Kubernetes API server answering 500s, 503s, timeouts, resets and
//! garbage, round after round (seed 001; SPEC W2, K2, K6, K7). `warmup_status` always returns
//! (bounded by its read timeouts), the pooled session survives and serves a complete status
//! once the faults stop, AKS credential fetches fail typed and recover, and afterwards open
//! connections to the server and live tokio tasks are back to their baseline.
//!
//! Real time: the server is on real sockets and its injected latency is real. "Minutes" of
//! faults are compressed into rounds: every round injects a fresh, seeded mix.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_session::{AksSource, KubeconfigSource, SessionError, SessionKey, SessionPool};
use testkit::azurite::TestCredential;
use testkit::k8s::{Fault, Fixtures, K8sServer, Route, SAMPLE_NAMESPACE};
use warmup_fanout::{WarmupOptions, warmup_status};

use support::{Rng, alive_tasks, open_connections, settle};

fn options() -> WarmupOptions {
    WarmupOptions::default()
        .selector("app=warmup")
        .daemonset("warmup-agent")
        .configmap("warmup-config")
        .read_timeout(Duration::from_millis(300))
}

/// The routes a warmup status reads.
const ROUTES: [&str; 7] = [
    "/apis/batch/v1/namespaces/testkit/jobs",
    "/api/v1/nodes",
    "/apis/apps/v1/namespaces/testkit/daemonsets",
    "/api/v1/namespaces/testkit/configmaps",
    "/api/v1/namespaces/testkit/events",
    "/api/v1/namespaces/testkit/pods",
    "/api/v1/namespaces/testkit/pods/",
];

/// One seeded fault for a round.
fn fault(rng: &mut Rng) -> Fault {
    match rng.below(6) {
        0 => Fault::status(500),
        1 => Fault::status(503).with_retry_after(1),
        2 => Fault::latency(Duration::from_secs(1)), // > the 300 ms read timeout
        3 => Fault::reset(),
        4 => Fault::garbage_body(),
        _ => Fault::status(429).with_retry_after(30),
    }
}

// covers W2, K6, K7: a fault storm never stops the status, and nothing leaks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warmup_status_survives_a_fault_storm_and_leaks_nothing() {
    let server = K8sServer::with_fixtures(Fixtures::sample()).await.unwrap();
    let port = server.addr().port();
    let (connections_before, tasks_before) = (open_connections(port), alive_tasks());

    let pool = SessionPool::builder(KubeconfigSource::from_kubeconfig(server.kubeconfig_token()))
        .knobs_from(|_| None)
        .build();
    let key = SessionKey::new("sub", "rg", "local");
    let opts = options();
    let healthy = warmup_status(
        pool.session(&key).await.unwrap().client().clone(),
        SAMPLE_NAMESPACE,
        &opts,
    )
    .await;
    assert!(healthy.complete, "{:?}", healthy.reads);

    let mut rng = Rng::new(12);
    let rounds = 40;
    let (mut degraded, mut slowest) = (0usize, Duration::ZERO);
    let (mut peak_connections, mut peak_tasks) = (0, 0);
    let started = Instant::now();
    for _ in 0..rounds {
        server.clear_faults();
        // 1–4 routes faulty this round, one of them sometimes for every request (`Any`).
        for _ in 0..=rng.below(4) {
            let route = ROUTES[rng.below(ROUTES.len() as u64) as usize];
            server.inject(Route::prefix(route), fault(&mut rng));
        }
        if rng.below(8) == 0 {
            server.inject(Route::Any, fault(&mut rng));
        }
        let session = pool
            .session(&key)
            .await
            .expect("the pooled session is served");
        let begun = Instant::now();
        // Two reads phases, each bounded by the read timeout (plus scheduling slack).
        let status = tokio::time::timeout(
            Duration::from_secs(10),
            warmup_status(session.client().clone(), SAMPLE_NAMESPACE, &opts),
        )
        .await
        .expect("warmup status always returns");
        slowest = slowest.max(begun.elapsed());
        degraded += status.reads.failures().count();
        assert_eq!(status.namespace, SAMPLE_NAMESPACE);
        peak_connections = peak_connections.max(open_connections(port));
        peak_tasks = peak_tasks.max(alive_tasks());
    }
    let storm = started.elapsed();
    assert!(degraded > 0, "the storm degraded reads");
    // The probes see the traffic (so "back to baseline" below is not vacuous).
    assert!(peak_connections > connections_before && peak_tasks > tasks_before);

    // Recovery: same pool, no rebuild, complete status.
    server.clear_faults();
    let session = pool.session(&key).await.unwrap();
    let recovered = warmup_status(session.client().clone(), SAMPLE_NAMESPACE, &opts).await;
    assert!(recovered.complete, "{:?}", recovered.reads);
    assert_eq!(recovered.jobs, healthy.jobs);
    assert_eq!(
        pool.stats().creations,
        1,
        "faults never poisoned the pooled session"
    );
    drop(session);

    // Nothing leaks: after shutdown, connections and tasks return to the baseline (slow
    // faulted answers still finishing on the server side included).
    pool.shutdown().await;
    drop(pool);
    let connections = settle(
        Duration::from_secs(10),
        || open_connections(port),
        |n| *n <= connections_before,
    )
    .await;
    let tasks = settle(Duration::from_secs(10), alive_tasks, |n| *n <= tasks_before).await;
    assert!(
        connections <= connections_before,
        "{connections} connections open, baseline {connections_before}"
    );
    assert!(
        tasks <= tasks_before,
        "{tasks} tasks alive, baseline {tasks_before}"
    );
    println!(
        "k8s fault storm: {rounds} rounds in {storm:?}, {degraded} reads degraded, slowest status \
         {slowest:?}, 1 session built; peak {peak_connections} connections and {peak_tasks} tasks; after shutdown \
         {connections} connections (baseline {connections_before}), {tasks} tasks (baseline \
         {tasks_before})"
    );
}

// covers K2: ARM answering 500, garbage, resets and timeouts makes `session()` fail with a
// typed error, never a panic or a hang, caches nothing, and the next healthy call succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aks_credential_faults_are_typed_and_sessions_recover() {
    let server = K8sServer::start().await.unwrap();
    let port = server.addr().port();
    let (connections_before, tasks_before) = (open_connections(port), alive_tasks());
    let http = reqwest::Client::builder()
        .tls_certs_only([
            reqwest::Certificate::from_pem(server.ca().cert_pem().as_bytes()).unwrap(),
        ])
        .timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let source = AksSource::builder(Arc::new(TestCredential::new()))
        .base_url(server.url().parse().unwrap())
        .http_client(http)
        .build()
        .unwrap();
    let pool = SessionPool::builder(source).knobs_from(|_| None).build();
    let key = SessionKey::new("sub", "rg", "aks-east");
    let faults = [
        Fault::status(500),
        Fault::status(503).with_retry_after(5),
        Fault::garbage_body(),
        Fault::reset(),
        Fault::latency(Duration::from_secs(2)),
        Fault::status(404),
        Fault::status(401),
    ];
    let mut failures = 0;
    for round in 0..3 {
        for fault in &faults {
            server.clear_faults();
            server.inject(Route::prefix("/subscriptions/"), fault.clone());
            let result = tokio::time::timeout(Duration::from_secs(10), pool.session(&key))
                .await
                .expect("a faulty ARM never hangs session()");
            match result {
                Err(SessionError::Build { .. }) => failures += 1,
                Err(other) => panic!("round {round}, {fault:?}: untyped failure {other:?}"),
                Ok(_) => panic!("round {round}, {fault:?}: a session from a faulty ARM"),
            }
            assert!(pool.is_empty(), "a failure is never cached");
        }
    }
    server.clear_faults();
    let session = pool.session(&key).await.expect("recovered");
    kube::Api::<k8s_openapi::api::core::v1::Pod>::namespaced(
        session.client().clone(),
        SAMPLE_NAMESPACE,
    )
    .list(&Default::default())
    .await
    .expect("the recovered session works");
    drop(session);
    pool.shutdown().await;
    drop(pool);
    let connections = settle(
        Duration::from_secs(10),
        || open_connections(port),
        |n| *n <= connections_before,
    )
    .await;
    let tasks = settle(Duration::from_secs(10), alive_tasks, |n| *n <= tasks_before).await;
    assert!(
        connections <= connections_before,
        "{connections} open, baseline {connections_before}"
    );
    assert!(
        tasks <= tasks_before,
        "{tasks} tasks, baseline {tasks_before}"
    );
    println!(
        "aks faults: {failures} typed failures out of {} faulted fetches, then recovered; \
         {connections} connections and {tasks} tasks after shutdown",
        faults.len() * 3
    );
}
