//! K8–K10 against testkit's Kubernetes API server (HTTP/2 and HTTP/1.1, ALPN both, 100 streams
//! per connection): TLS connections, HTTP versions and in-flight requests counted at the server.

use std::time::Duration;

use anyhow::{Context, ensure};
use http::Version;
use k8s_session::{ConnectionStats, KubeconfigSource, SessionPool};
use kube::config::Kubeconfig;
use testkit::k8s::{Fault, K8sServer, SAMPLE_NAMESPACE};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{key, list_pods, remember};

/// A guard against a hang (never reached when the code is right).
const HANG: Duration = Duration::from_secs(30);

fn pods_path() -> String {
    format!("/api/v1/namespaces/{SAMPLE_NAMESPACE}/pods")
}

fn pool_for(kubeconfig: Kubeconfig) -> SessionPool {
    remember(&kubeconfig);
    SessionPool::builder(KubeconfigSource::from_kubeconfig(kubeconfig))
        .knobs_from(|_| None)
        .build()
}

/// `calls` concurrent pod lists through the pool's session for `cluster`; the errors.
async fn burst(pool: &SessionPool, calls: usize) -> anyhow::Result<Vec<String>> {
    let session = pool.session(&key("east")).await?;
    let results = tokio::time::timeout(
        HANG,
        futures::future::join_all((0..calls).map(|_| list_pods(&session))),
    )
    .await
    .context("the burst hung")?;
    Ok(results
        .into_iter()
        .filter_map(|r| r.err().map(|e| format!("{e:#}")))
        .collect())
}

fn stats(h2: u64, http1: u64, fallbacks: u64) -> ConnectionStats {
    let mut stats = ConnectionStats::default();
    stats.http2_connections = h2;
    stats.http1_connections = http1;
    stats.http1_fallbacks = fallbacks;
    stats
}

// covers K8, K9: 300 concurrent calls through one cold session, bearer and client-certificate
// sessions alike, use exactly ONE TLS connection (one handshake while the burst waits, then
// multiplexed over HTTP/2), with more requests in flight at the server than the HTTP/1.1 bound
// allowed and no more than its 100-stream limit. (Without the probe, hyper-util's ALPN path takes
// no connecting lock: each request of a cold burst would start its own handshake.)
pub(crate) async fn concurrent_calls_share_one_tls_connection() -> anyhow::Result<()> {
    for cert in [false, true] {
        let server = K8sServer::start().await?;
        server.inject(
            pods_path().as_str(),
            Fault::latency(Duration::from_millis(20)),
        );
        let kubeconfig = if cert {
            server.kubeconfig_cert()?
        } else {
            server.kubeconfig_token()
        };
        let pool = pool_for(kubeconfig);
        let failed = burst(&pool, 300).await?;
        ensure!(
            failed.is_empty(),
            "cert {cert}: every call succeeds: {failed:?}"
        );
        let (tls, h2, peak) = (
            server.tls_connections(),
            server.h2_connections(),
            server.peak_in_flight(),
        );
        println!("cert {cert}: 300 calls, {tls} TLS connection(s), {h2} h2, peak {peak} in flight");
        ensure!(tls == 1, "cert {cert}: {tls} TLS connections");
        ensure!(h2 == 1, "cert {cert}: the connection negotiated h2");
        ensure!(
            server
                .requests()
                .iter()
                .all(|r| r.version == Version::HTTP_2),
            "every request over HTTP/2"
        );
        ensure!(peak > 32, "more in flight than the HTTP/1.1 bound: {peak}");
        ensure!(peak <= 100, "the server's stream limit holds: {peak}");
        ensure!(
            pool.connection_stats() == stats(1, 0, 0),
            "{:?}",
            pool.connection_stats()
        );
    }
    Ok(())
}

// covers K9: an API server that only speaks HTTP/1.1 still answers; the session falls back once
// (counted) and keeps the HTTP/1.1 in-flight bound; `http2(false)` uses kube's own stack.
pub(crate) async fn an_http1_only_server_still_answers() -> anyhow::Result<()> {
    let server = K8sServer::start().await?;
    server.serve_http2(false);
    let pool = pool_for(server.kubeconfig_token());
    let failed = burst(&pool, 50).await?;
    ensure!(failed.is_empty(), "every call succeeds: {failed:?}");
    ensure!(server.h2_connections() == 0);
    ensure!(
        server
            .requests()
            .iter()
            .all(|r| r.version == Version::HTTP_11),
        "every request over HTTP/1.1"
    );
    let stats = pool.connection_stats();
    ensure!(stats.http1_fallbacks == 1, "one fallback: {stats:?}");
    ensure!(stats.http2_connections == 0, "{stats:?}");
    ensure!(
        stats.http1_connections == server.tls_connections(),
        "{stats:?}"
    );
    ensure!(server.peak_in_flight() <= 32, "the HTTP/1.1 bound holds");

    let off = K8sServer::start().await?;
    let kubeconfig = off.kubeconfig_token();
    remember(&kubeconfig);
    let pool = SessionPool::builder(KubeconfigSource::from_kubeconfig(kubeconfig))
        .knobs_from(|_| None)
        .http2(false)
        .build();
    ensure!(!pool.http2());
    ensure!(list_pods(&*pool.session(&key("east")).await?).await? > 0);
    ensure!(off.requests().iter().all(|r| r.version == Version::HTTP_11));
    ensure!(off.h2_connections() == 0, "no h2 offered");
    Ok(())
}

// covers K8: a request carrying `Upgrade` (exec, attach, port-forward) goes to the session's
// HTTP/1.1 client, on its own connection, while lists stay on the HTTP/2 connection; the
// upgraded stream carries bytes both ways.
pub(crate) async fn exec_upgrades_over_http1() -> anyhow::Result<()> {
    let server = K8sServer::start().await?;
    let pool = pool_for(server.kubeconfig_token());
    let session = pool.session(&key("east")).await?;
    ensure!(list_pods(&session).await? > 0);
    let exec = format!("/api/v1/namespaces/{SAMPLE_NAMESPACE}/pods/p/exec?command=sh");
    let request = http::Request::get(exec.as_str())
        .header(http::header::CONNECTION, "Upgrade")
        .header(http::header::UPGRADE, "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .body(kube::client::Body::empty())?;
    let response = session.client().send(request).await?;
    ensure!(
        response.status() == http::StatusCode::SWITCHING_PROTOCOLS,
        "{}",
        response.status()
    );
    let upgraded = tokio::time::timeout(HANG, hyper::upgrade::on(response))
        .await
        .context("upgrade hung")??;
    let mut io = hyper_util::rt::TokioIo::new(upgraded);
    io.write_all(b"echo k8s").await?;
    let mut echoed = [0u8; 8];
    tokio::time::timeout(HANG, io.read_exact(&mut echoed))
        .await
        .context("echo hung")??;
    ensure!(&echoed == b"echo k8s");
    ensure!(list_pods(&session).await? > 0);
    let requests = server.requests();
    let upgrade = requests
        .iter()
        .find(|r| r.path.ends_with("/exec"))
        .context("the exec request")?;
    ensure!(upgrade.version == Version::HTTP_11, "{:?}", upgrade.version);
    let lists: Vec<_> = requests.iter().filter(|r| r.path == pods_path()).collect();
    ensure!(lists.len() == 2);
    ensure!(lists.iter().all(|r| r.version == Version::HTTP_2));
    ensure!(
        lists[0].connection == lists[1].connection,
        "one h2 connection"
    );
    ensure!(upgrade.connection != lists[0].connection);
    ensure!(
        pool.connection_stats() == stats(1, 1, 0),
        "{:?}",
        pool.connection_stats()
    );
    Ok(())
}

// covers K10: a connection reset mid-burst fails only the streams it carried; the session is
// kept and its next calls succeed on a new connection. A per-stream reset fails only its own
// call: the connection and its other streams carry on.
pub(crate) async fn a_killed_connection_fails_only_its_streams() -> anyhow::Result<()> {
    let server = K8sServer::start().await?;
    let pool = pool_for(server.kubeconfig_token());
    let session = pool.session(&key("east")).await?;
    ensure!(list_pods(&session).await? > 0, "warm: one h2 connection");

    // 20 lists held at the server, then a request that resets the whole connection.
    server.inject(
        pods_path().as_str(),
        Fault::latency(Duration::from_millis(300)),
    );
    server.inject("/api/v1/nodes", Fault::reset().times(1));
    let lists = futures::future::join_all((0..20).map(|_| list_pods(&session)));
    let kill = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let nodes: kube::Api<k8s_openapi::api::core::v1::Node> =
            kube::Api::all(session.client().clone());
        nodes.list(&Default::default()).await
    };
    let (lists, killed) = tokio::time::timeout(HANG, futures::future::join(lists, kill))
        .await
        .context("the burst hung")?;
    ensure!(killed.is_err(), "the resetting request fails");
    // Every list still at the server on connection 1 (all of them, unless the machine delayed
    // some past the reset) fails; a list that succeeded did so on connection 2.
    let failed = lists.iter().filter(|r| r.is_err()).count();
    let ok_on_2 = server
        .requests()
        .iter()
        .filter(|r| r.path == pods_path() && r.status == 200 && r.connection == 2)
        .count();
    ensure!(failed >= 1, "the streams on the killed connection fail");
    ensure!(
        failed + ok_on_2 == 20,
        "only the killed connection's streams fail: {failed} failed, {ok_on_2} ok on conn 2"
    );

    // The same session recovers on a new connection.
    server.clear_faults();
    let after = burst(&pool, 50).await?;
    ensure!(after.is_empty(), "after the reset: {after:?}");
    ensure!(
        server.tls_connections() == 2,
        "{}",
        server.tls_connections()
    );
    ensure!(pool.stats().creations == 1, "the session was kept");

    // A stream reset fails its call only.
    server.inject(pods_path().as_str(), Fault::reset_stream().times(1));
    let results = futures::future::join_all((0..20).map(|_| list_pods(&session))).await;
    let failed = results.iter().filter(|r| r.is_err()).count();
    ensure!(failed == 1, "one stream reset, one failure: {failed}");
    ensure!(server.tls_connections() == 2, "the connection survived");
    Ok(())
}

// covers K10: a connection that stops answering (no data, no PING acknowledgements) is detected
// by HTTP/2 keep-alive and closed long before the read timeout; its streams fail, calls made
// afterwards succeed on a new connection.
pub(crate) async fn a_stalled_connection_is_replaced() -> anyhow::Result<()> {
    let server = K8sServer::start().await?;
    let kubeconfig = server.kubeconfig_token();
    remember(&kubeconfig);
    let pool = SessionPool::builder(KubeconfigSource::from_kubeconfig(kubeconfig))
        .knobs_from(|_| None)
        .http2_keep_alive(Duration::from_millis(100), Duration::from_millis(200))
        .build();
    let session = pool.session(&key("east")).await?;
    ensure!(list_pods(&session).await? > 0);
    server.inject(pods_path().as_str(), Fault::stall_connection().times(1));
    let started = std::time::Instant::now();
    let stalled = tokio::time::timeout(HANG, list_pods(&session))
        .await
        .context("keep-alive never detected the stall")?;
    let detected = started.elapsed();
    ensure!(stalled.is_err(), "the stalled call fails");
    ensure!(
        detected < Duration::from_secs(5),
        "detected by keep-alive, not the 295 s read timeout: {detected:?}"
    );
    ensure!(list_pods(&session).await? > 0, "the next call succeeds");
    ensure!(server.tls_connections() == 2);
    ensure!(pool.stats().creations == 1, "the session was kept");
    println!("stalled connection detected after {detected:?}");
    Ok(())
}

// The read timeout holds over HTTP/2, where kube's per-connection read timeout cannot (the
// connection keeps reading PING acknowledgements): a server that holds the answer longer than
// the read timeout fails that call with a timeout, and the session's next call succeeds.
pub(crate) async fn the_read_timeout_holds_over_http2() -> anyhow::Result<()> {
    let server = K8sServer::start().await?;
    let kubeconfig = server.kubeconfig_token();
    remember(&kubeconfig);
    let pool = SessionPool::builder(KubeconfigSource::from_kubeconfig(kubeconfig))
        .knobs_from(|_| None)
        .read_timeout(Some(Duration::from_millis(300)))
        .build();
    let session = pool.session(&key("east")).await?;
    server.inject(
        pods_path().as_str(),
        Fault::latency(Duration::from_secs(3)).times(1),
    );
    let started = std::time::Instant::now();
    let slow = list_pods(&session).await;
    let waited = started.elapsed();
    let error = format!("{:#}", slow.err().context("the held call fails")?);
    ensure!(error.contains("read timeout"), "{error}");
    ensure!(waited < Duration::from_secs(2), "{waited:?}");
    ensure!(list_pods(&session).await? > 0, "the next call succeeds");
    ensure!(
        server.h2_connections() == 1,
        "over HTTP/2, on one connection"
    );
    Ok(())
}
