//! Helpers shared by the black-box HTTP/2 suites (`blackbox_h2.rs`, `blackbox_h2_link.rs`):
//! calls through a pool or a client, bursts of them, bounded waits on the server's gauges.
#![allow(
    dead_code,
    reason = "each test binary uses a different subset of the helpers"
)]

use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_session::{KubeconfigSource, SessionKey, SessionPool};
use kube::api::{Api, ListParams};
use testkit::k8s::{K8sServer, SAMPLE_NAMESPACE};
use tokio::time::{Instant, timeout};

pub(crate) const PODS: &str = "/api/v1/namespaces/testkit/pods";
pub(crate) const NODES: &str = "/api/v1/nodes";

pub(crate) fn key(cluster: &str) -> SessionKey {
    SessionKey::new("sub", "rg", cluster)
}

pub(crate) fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

pub(crate) async fn list_pods(client: &kube::Client) -> Result<usize, String> {
    Api::<Pod>::namespaced(client.clone(), SAMPLE_NAMESPACE)
        .list(&ListParams::default())
        .await
        .map(|l| l.items.len())
        .map_err(|e| format!("{e:?}"))
}

pub(crate) async fn list_nodes(client: &kube::Client) -> Result<usize, String> {
    Api::<Node>::all(client.clone())
        .list(&ListParams::default())
        .await
        .map(|l| l.items.len())
        .map_err(|e| format!("{e:?}"))
}

/// One call: a session from the pool, a pod list through it.
pub(crate) async fn call(pool: &SessionPool, key: &SessionKey) -> Result<usize, String> {
    let session = pool.session(key).await.map_err(|e| format!("{e:?}"))?;
    list_pods(&session).await
}

/// `n` concurrent calls (each takes its own session handle), bounded by 30 s overall.
pub(crate) async fn burst(
    pool: &SessionPool,
    key: &SessionKey,
    n: usize,
) -> Vec<Result<usize, String>> {
    timeout(
        Duration::from_secs(30),
        join_all((0..n).map(|_| call(pool, key))),
    )
    .await
    .expect("a burst hung")
}

/// `n` calls, each a task of its own (on a multi-threaded runtime, spread over its workers),
/// bounded by 30 s overall.
pub(crate) async fn spawned_burst(
    pool: &Arc<SessionPool>,
    key: &SessionKey,
    n: usize,
) -> Vec<Result<usize, String>> {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let (pool, key) = (Arc::clone(pool), key.clone());
            tokio::spawn(async move { call(&pool, &key).await })
        })
        .collect();
    timeout(Duration::from_secs(30), join_all(tasks))
        .await
        .expect("a burst hung")
        .into_iter()
        .map(|joined| joined.expect("a call panicked"))
        .collect()
}

/// `n` concurrent pod lists through one client, bounded by 20 s overall.
pub(crate) async fn lists(client: &kube::Client, n: usize) -> Vec<Result<usize, String>> {
    timeout(
        Duration::from_secs(20),
        join_all((0..n).map(|_| list_pods(client))),
    )
    .await
    .expect("a burst hung")
}

/// Poll `cond` (real time) until it holds or `max` passes.
pub(crate) async fn wait_until(max: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + max;
    while Instant::now() < end {
        if cond() {
            return true;
        }
        tokio::time::sleep(ms(5)).await;
    }
    cond()
}

pub(crate) fn token_pool(server: &K8sServer) -> SessionPool {
    SessionPool::builder(KubeconfigSource::from_kubeconfig(server.kubeconfig_token()))
        .knobs_from(|_| None)
        .build()
}

pub(crate) fn all_ok(results: &[Result<usize, String>]) {
    for r in results {
        assert!(r.is_ok(), "a call failed: {r:?}");
    }
}

pub(crate) fn failures(results: &[Result<usize, String>]) -> usize {
    results.iter().filter(|r| r.is_err()).count()
}
