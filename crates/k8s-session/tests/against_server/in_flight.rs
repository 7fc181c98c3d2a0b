//! The per-session in-flight bound against testkit's Kubernetes API server: requests and connections counted.

use std::time::Duration;

use anyhow::{Context, ensure};
use k8s_session::{KubeconfigSource, SessionPool};
use testkit::k8s::{Fault, K8sServer, SAMPLE_NAMESPACE};

use crate::support::{key, list_pods, remember};

const CALLS: usize = 200;
const BOUND: usize = 4;

/// A guard against a leaked slot hanging the suite (never reached when the code is right).
const HANG: Duration = Duration::from_secs(30);

fn pods_path() -> String {
    format!("/api/v1/namespaces/{SAMPLE_NAMESPACE}/pods")
}

// 200 concurrent calls through ONE pooled session bounded to 4 over HTTP/1.1: the server never
// sees more than 4 requests at once, the client never has more than 4 connections open (without
// the bound: ~200 of each, since HTTP/1.1 needs one connection per concurrent request), and every
// call succeeds (calls beyond the bound wait, they do not fail). Twice: through kube's default
// stack (`http2(false)`), and through the session's own stack against a server that only speaks
// HTTP/1.1 (the K9 fallback keeps the bound).
pub(crate) async fn concurrent_calls_stay_within_the_in_flight_bound() -> anyhow::Result<()> {
    for fallback in [false, true] {
        calls_within_the_bound(fallback)
            .await
            .with_context(|| format!("fallback {fallback}"))?;
    }
    Ok(())
}

async fn calls_within_the_bound(fallback: bool) -> anyhow::Result<()> {
    let server = K8sServer::start().await?;
    server.serve_http2(!fallback);
    // Real-time latency at the server, so that calls overlap there.
    server.inject(
        pods_path().as_str(),
        Fault::latency(Duration::from_millis(10)),
    );
    let kubeconfig = server.kubeconfig_token();
    remember(&kubeconfig);
    let pool = SessionPool::builder(KubeconfigSource::from_kubeconfig(kubeconfig))
        .knobs_from(|_| None)
        .max_in_flight_per_session(BOUND)
        .http2(fallback)
        .build();
    ensure!(pool.max_in_flight_per_session() == BOUND);
    let calls = futures::future::join_all((0..CALLS).map(|_| {
        let pool = pool.clone();
        async move {
            let session = pool.session(&key("east")).await?;
            list_pods(&session).await
        }
    }));
    let results = tokio::time::timeout(HANG, calls)
        .await
        .context("the calls hung")?;
    let failed: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    ensure!(failed.is_empty(), "every call succeeds: {failed:?}");
    ensure!(pool.stats().creations == 1, "one session");
    ensure!(
        server.count(&pods_path()) == CALLS,
        "every call reached the server"
    );
    let (peak, open, opened) = (
        server.peak_in_flight(),
        server.peak_open_connections(),
        server.tls_connections(),
    );
    println!(
        "in-flight bound {BOUND}: {CALLS} calls, server peak {peak} in flight, \
         peak {open} connections open, {opened} opened"
    );
    ensure!(peak <= BOUND as u64, "server saw {peak} requests at once");
    ensure!(peak >= 2, "the calls did overlap ({peak} at once)");
    ensure!(open <= BOUND as u64, "{open} connections open at once");
    ensure!(opened <= BOUND as u64, "{opened} connections opened");
    let fallbacks = pool.connection_stats().http1_fallbacks;
    ensure!(fallbacks == u64::from(fallback), "{fallbacks} fallbacks");
    Ok(())
}

// Callers that read a response body some time after its headers (here: after yielding to the
// runtime a few times) keep that connection busy meanwhile, so their slot is held until the body
// is read: 100 such calls, bound 4, still use at most 4 connections. The body (256 KiB) is larger
// than hyper buffers without a reader, so its connection cannot go idle before it is read: a slot
// released with the headers would let the next request in on a new connection.
pub(crate) async fn slow_readers_hold_their_slots_until_their_bodies_are_read() -> anyhow::Result<()>
{
    let server = K8sServer::start().await?;
    let blob = "x".repeat(256 * 1024);
    server.update_fixtures(|fixtures| {
        fixtures.configmap(SAMPLE_NAMESPACE, "big", &[("blob", blob.as_str())]);
    });
    let path = format!("/api/v1/namespaces/{SAMPLE_NAMESPACE}/configmaps/big");
    let kubeconfig = server.kubeconfig_token();
    remember(&kubeconfig);
    let pool = SessionPool::builder(KubeconfigSource::from_kubeconfig(kubeconfig))
        .knobs_from(|_| None)
        .max_in_flight_per_session(BOUND)
        .http2(false)
        .build();
    let session = pool.session(&key("east")).await?;
    let calls = futures::future::join_all((0..CALLS / 2).map(|_| {
        let (client, path) = (session.client().clone(), path.as_str());
        async move {
            let request = http::Request::get(path).body(kube::client::Body::empty())?;
            let response = client.send(request).await?;
            for _ in 0..5 {
                tokio::task::yield_now().await;
            }
            let body = response.into_body().collect_bytes().await?;
            ensure!(body.len() > 256 * 1024, "the whole config map");
            anyhow::Ok(())
        }
    }));
    let results = tokio::time::timeout(HANG, calls)
        .await
        .context("the calls hung")?;
    let failed: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    ensure!(failed.is_empty(), "every call succeeds: {failed:?}");
    let (open, opened) = (server.peak_open_connections(), server.tls_connections());
    println!(
        "in-flight bound {BOUND}, slow readers: {} calls, peak {open} connections open, \
         {opened} opened",
        CALLS / 2
    );
    ensure!(open <= BOUND as u64, "{open} connections open at once");
    ensure!(opened <= BOUND as u64, "{opened} connections opened");
    Ok(())
}

// A response body dropped unread frees its slot: with a bound of 1, a raw request whose body is
// never read must not block the next call. Over HTTP/1.1 (kube's stack) and over HTTP/2 (the
// session's stack with one stream per session).
pub(crate) async fn a_dropped_unread_body_frees_its_slot() -> anyhow::Result<()> {
    for http2 in [false, true] {
        dropped_body_frees_its_slot(http2)
            .await
            .with_context(|| format!("http2 {http2}"))?;
    }
    Ok(())
}

async fn dropped_body_frees_its_slot(http2: bool) -> anyhow::Result<()> {
    let server = K8sServer::start().await?;
    let kubeconfig = server.kubeconfig_token();
    remember(&kubeconfig);
    let pool = SessionPool::builder(KubeconfigSource::from_kubeconfig(kubeconfig))
        .knobs_from(|_| None)
        .max_in_flight_per_session(1)
        .max_streams_per_session(Some(1))
        .http2(http2)
        .build();
    let session = pool.session(&key("east")).await?;
    let request = http::Request::get(pods_path()).body(kube::client::Body::empty())?;
    let response = session.client().send(request).await?;
    ensure!(response.status().is_success(), "{}", response.status());
    drop(response); // headers in, body never read
    let pods = tokio::time::timeout(HANG, list_pods(&session))
        .await
        .context("the slot of the dropped body was never released")??;
    ensure!(pods > 0);
    ensure!(server.count(&pods_path()) == 2);
    Ok(())
}
