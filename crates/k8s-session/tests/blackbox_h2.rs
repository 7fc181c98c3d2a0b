//! Black-box suite for issue #25 (K8–K10) over HTTP/2, with K1–K7 checked on the same stack:
//! public API only, against testkit's in-process Kubernetes API server, counted at the server.
//! Network scenarios run in real time (the server is on real sockets); waits poll the server's
//! gauges with a bound, and every call that could hang is wrapped in a timeout.

mod h2_common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::join_all;
use k8s_session::{
    ClusterCredentials, ClusterMaterial, CredentialsError, KubeconfigSource, SessionError,
    SessionKey, SessionPool,
};
use kube::config::Kubeconfig;
use testkit::k8s::{Fault, K8sServer, KubeAuth};
use tokio::time::{Instant, timeout};

use h2_common::*;

fn versions(server: &K8sServer) -> Vec<http::Version> {
    server.requests().iter().map(|r| r.version).collect()
}

// K8/K9: a cold burst through one bearer session opens ONE TLS connection, negotiates h2,
// carries every request over HTTP/2, runs more than the HTTP/1.1 bound (32) at once and at most
// the server's 100 streams; connection_stats agrees with the server.
#[tokio::test]
async fn cold_burst_bearer_one_h2_connection() {
    let server = K8sServer::start().await.unwrap();
    server.inject(PODS, Fault::latency(ms(300)));
    let pool = token_pool(&server);
    let results = burst(&pool, &key("east"), 250).await;
    all_ok(&results);
    assert_eq!(
        server.tls_connections(),
        1,
        "one handshake for a cold burst"
    );
    assert_eq!(server.tcp_connections(), 1);
    assert_eq!(server.h2_connections(), 1);
    assert!(
        versions(&server)
            .iter()
            .all(|v| *v == http::Version::HTTP_2)
    );
    let peak = server.peak_in_flight();
    assert!(peak > 32 && peak <= 100, "peak in flight {peak}");
    let stats = pool.connection_stats();
    assert_eq!(
        (
            stats.http2_connections,
            stats.http1_connections,
            stats.http1_fallbacks
        ),
        (1, 0, 0),
        "{stats:?}"
    );
    assert_eq!(pool.stats().creations, 1);
}

// Same with a client-certificate session (mTLS).
#[tokio::test]
async fn cold_burst_client_cert_one_h2_connection() {
    let server = K8sServer::start().await.unwrap();
    server.inject(PODS, Fault::latency(ms(300)));
    let pool = SessionPool::builder(KubeconfigSource::from_kubeconfig(
        server.kubeconfig_cert().unwrap(),
    ))
    .knobs_from(|_| None)
    .build();
    let results = burst(&pool, &key("east").admin(true), 150).await;
    all_ok(&results);
    assert_eq!(server.tls_connections(), 1);
    assert_eq!(server.h2_connections(), 1);
    assert!(server.peak_in_flight() > 32);
    assert!(
        server
            .requests()
            .iter()
            .all(|r| r.version == http::Version::HTTP_2 && r.connection == 1)
    );
    assert_eq!(pool.connection_stats().http2_connections, 1);
}

// K1 over h2: user, admin and another cluster never share a connection; each is one connection,
// whatever the burst.
#[tokio::test]
async fn keys_get_one_connection_each() {
    let server = K8sServer::start().await.unwrap();
    server.inject(PODS, Fault::latency(ms(100)));
    let pool = token_pool(&server);
    let (a, b, c) = (key("east"), key("east").admin(true), key("west"));
    let (ra, rb, rc) = tokio::join!(
        burst(&pool, &a, 40),
        burst(&pool, &b, 40),
        burst(&pool, &c, 40)
    );
    all_ok(&ra);
    all_ok(&rb);
    all_ok(&rc);
    assert_eq!(server.tls_connections(), 3);
    assert_eq!(server.h2_connections(), 3);
    assert_eq!(pool.connection_stats().http2_connections, 3);
    assert_eq!(pool.stats().creations, 3);
    // Warm: a second burst on each opens nothing.
    let (ra, rb, rc) = tokio::join!(
        burst(&pool, &a, 40),
        burst(&pool, &b, 40),
        burst(&pool, &c, 40)
    );
    all_ok(&ra);
    all_ok(&rb);
    all_ok(&rc);
    assert_eq!(server.tls_connections(), 3);
}

// K10: max_streams_per_session lowers the streams in flight; calls beyond wait inside the one
// connection (never another connection, never an error).
#[tokio::test]
async fn max_streams_bound_counted_at_server() {
    let server = K8sServer::start().await.unwrap();
    server.inject(PODS, Fault::latency(ms(100)));
    let pool = SessionPool::builder(KubeconfigSource::from_kubeconfig(server.kubeconfig_token()))
        .knobs_from(|_| None)
        .max_streams_per_session(Some(5))
        .build();
    assert_eq!(pool.max_streams_per_session(), Some(5));
    let results = burst(&pool, &key("east"), 40).await;
    all_ok(&results);
    assert!(server.peak_in_flight() <= 5, "{}", server.peak_in_flight());
    assert!(server.peak_in_flight() >= 2, "the bound is not 1");
    assert_eq!(server.tls_connections(), 1);
}

// K10: a configured bound above the server's advertised limit: the server's 100 still applies,
// and the calls beyond it wait on the same connection instead of opening another.
#[tokio::test]
async fn bound_above_server_limit_stays_on_one_connection() {
    let server = K8sServer::start().await.unwrap();
    server.inject(PODS, Fault::latency(ms(300)));
    let pool = SessionPool::builder(KubeconfigSource::from_kubeconfig(server.kubeconfig_token()))
        .knobs_from(|_| None)
        .max_streams_per_session(Some(1000))
        .build();
    let results = burst(&pool, &key("east"), 250).await;
    all_ok(&results);
    assert!(
        server.peak_in_flight() <= 100,
        "{}",
        server.peak_in_flight()
    );
    assert_eq!(
        server.tls_connections(),
        1,
        "calls beyond the limit opened a connection"
    );
}

// K10: a caller that gives up (its future dropped mid-call) frees its stream; with a bound of
// one the next call still runs.
#[tokio::test]
async fn cancelled_call_frees_its_stream() {
    let server = K8sServer::start().await.unwrap();
    let pool = SessionPool::builder(KubeconfigSource::from_kubeconfig(server.kubeconfig_token()))
        .knobs_from(|_| None)
        .max_streams_per_session(Some(1))
        .build();
    let k = key("east");
    call(&pool, &k).await.unwrap();
    server.inject(PODS, Fault::latency(Duration::from_secs(5)).times(1));
    assert!(timeout(ms(200), call(&pool, &k)).await.is_err());
    let next = timeout(Duration::from_secs(3), call(&pool, &k)).await;
    assert!(matches!(next, Ok(Ok(_))), "stream not freed: {next:?}");
}

// K9: the caller whose request opens the connection (the probe) gives up during the
// handshake; the calls waiting on it must not hang or fail because of that.
#[tokio::test]
async fn cancelled_probe_does_not_strand_the_burst() {
    let server = K8sServer::start().await.unwrap();
    let pool = token_pool(&server);
    let k = key("east");
    let session = pool.session(&k).await.unwrap(); // built, not connected (lazy)
    let probe = timeout(Duration::from_micros(1), list_pods(&session));
    let others = join_all((0..10).map(|_| list_pods(&session)));
    let (probe, others) = timeout(Duration::from_secs(10), async {
        tokio::join!(biased; probe, others)
    })
    .await
    .expect("calls waiting on a cancelled probe hung");
    let _ = probe;
    all_ok(&others);
    assert!(
        server.tls_connections() <= 2,
        "{}",
        server.tls_connections()
    );
}

// K9: an HTTP/1.1-only server still works: one fallback counted, every request HTTP/1.1,
// bounded by max_in_flight_per_session (in flight and connections, at the server).
#[tokio::test]
async fn http1_only_server_falls_back_bounded() {
    let server = K8sServer::start().await.unwrap();
    server.serve_http2(false);
    server.inject(PODS, Fault::latency(ms(100)));
    let pool = SessionPool::builder(KubeconfigSource::from_kubeconfig(server.kubeconfig_token()))
        .knobs_from(|_| None)
        .max_in_flight_per_session(4)
        .build();
    let results = burst(&pool, &key("east"), 30).await;
    all_ok(&results);
    assert_eq!(server.h2_connections(), 0);
    assert!(
        versions(&server)
            .iter()
            .all(|v| *v == http::Version::HTTP_11)
    );
    assert!(server.peak_in_flight() <= 4, "{}", server.peak_in_flight());
    assert!(
        server.tls_connections() <= 6,
        "{}",
        server.tls_connections()
    );
    let stats = pool.connection_stats();
    assert_eq!(stats.http1_fallbacks, 1, "{stats:?}");
    assert_eq!(stats.http2_connections, 0, "{stats:?}");
    assert_eq!(
        stats.http1_connections,
        server.tls_connections(),
        "connection_stats vs the server: {stats:?}"
    );
}

// K8: http2(false) really uses HTTP/1.1 (kube's stack, not counted in connection_stats).
#[tokio::test]
async fn http2_off_uses_http1() {
    let server = K8sServer::start().await.unwrap();
    let pool = SessionPool::builder(KubeconfigSource::from_kubeconfig(server.kubeconfig_token()))
        .knobs_from(|_| None)
        .http2(false)
        .build();
    assert!(!pool.http2());
    let results = burst(&pool, &key("east"), 10).await;
    all_ok(&results);
    assert_eq!(server.h2_connections(), 0);
    assert!(server.tls_connections() >= 1);
    assert!(
        versions(&server)
            .iter()
            .all(|v| *v == http::Version::HTTP_11)
    );
    assert_eq!(pool.connection_stats(), Default::default());
}

fn exec_request() -> http::Request<Vec<u8>> {
    http::Request::get(format!(
        "{PODS}/warmup-0-pod/exec?command=sh&stdin=true&stdout=true"
    ))
    .header(http::header::CONNECTION, "Upgrade")
    .header(http::header::UPGRADE, "websocket")
    .header("Sec-WebSocket-Version", "13")
    .header("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
    .header("Sec-WebSocket-Protocol", "v4.channel.k8s.io")
    .body(Vec::new())
    .unwrap()
}

// K8: exec (Upgrade) goes over HTTP/1.1 on a connection of its own while lists stay on the h2
// connection; the upgraded stream carries bytes both ways.
#[tokio::test]
async fn exec_upgrade_over_http1_beside_h2() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = K8sServer::start().await.unwrap();
    let pool = token_pool(&server);
    let k = key("east");
    all_ok(&burst(&pool, &k, 5).await);
    let session = pool.session(&k).await.unwrap();
    let resp = timeout(
        Duration::from_secs(10),
        session
            .client()
            .send(exec_request().map(kube::client::Body::from)),
    )
    .await
    .expect("exec hung")
    .expect("exec failed");
    assert_eq!(resp.status(), http::StatusCode::SWITCHING_PROTOCOLS);
    let upgraded = timeout(Duration::from_secs(10), hyper::upgrade::on(resp))
        .await
        .unwrap()
        .expect("no upgraded stream");
    let mut io = hyper_util::rt::TokioIo::new(upgraded);
    io.write_all(b"ping-bytes").await.unwrap();
    let mut buf = [0u8; 10];
    timeout(Duration::from_secs(5), io.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf, b"ping-bytes");
    // Lists during the exec stay on the h2 connection.
    all_ok(&burst(&pool, &k, 10).await);
    assert_eq!(server.tls_connections(), 2);
    assert_eq!(server.h2_connections(), 1);
    let exec = server
        .requests()
        .into_iter()
        .find(|r| r.path.ends_with("/exec"))
        .unwrap();
    assert_eq!(exec.version, http::Version::HTTP_11);
    assert!(
        server
            .requests()
            .iter()
            .filter(|r| r.path == PODS)
            .all(|r| r.version == http::Version::HTTP_2 && r.connection != exec.connection)
    );
    let stats = pool.connection_stats();
    assert_eq!(
        (stats.http2_connections, stats.http1_connections),
        (1, 1),
        "{stats:?}"
    );
    assert_eq!(
        stats.http1_fallbacks, 0,
        "an upgrade is not a fallback: {stats:?}"
    );
}

// K9: a stream reset (RST_STREAM) fails only its own call; the others on the connection
// succeed and no connection is added.
#[tokio::test]
async fn stream_reset_fails_only_its_call() {
    let server = K8sServer::start().await.unwrap();
    let pool = token_pool(&server);
    let k = key("east");
    call(&pool, &k).await.unwrap();
    server.inject(PODS, Fault::latency(ms(300)));
    server.inject(NODES, Fault::reset_stream().with_latency(ms(100)).times(1));
    let session = pool.session(&k).await.unwrap();
    let (lists, node) = timeout(Duration::from_secs(20), async {
        tokio::join!(
            join_all((0..19).map(|_| list_pods(&session))),
            list_nodes(&session)
        )
    })
    .await
    .unwrap();
    assert!(node.is_err(), "the reset stream's call succeeded");
    all_ok(&lists);
    assert_eq!(server.tls_connections(), 1);
    // The connection is still fine.
    assert!(list_nodes(&session).await.is_ok());
    assert_eq!(server.tls_connections(), 1);
}

// K9/K10: a connection reset mid-burst fails the streams it carried; the session stays pooled
// and the next calls succeed on a new connection, without a rebuild.
#[tokio::test]
async fn connection_reset_fails_its_streams_then_recovers() {
    let server = K8sServer::start().await.unwrap();
    let pool = token_pool(&server);
    let k = key("east");
    call(&pool, &k).await.unwrap();
    server.inject(PODS, Fault::latency(Duration::from_secs(2)).times(10));
    let session = pool.session(&k).await.unwrap();
    let (lists, node) = timeout(Duration::from_secs(20), async {
        tokio::join!(join_all((0..10).map(|_| list_pods(&session))), async {
            assert!(wait_until(Duration::from_secs(5), || server.in_flight() >= 10).await);
            server.inject(NODES, Fault::reset().times(1));
            list_nodes(&session).await
        })
    })
    .await
    .unwrap();
    assert!(node.is_err());
    assert!(lists.iter().all(|r| r.is_err()), "{lists:?}");
    drop(session);
    let results = burst(&pool, &k, 30).await;
    all_ok(&results);
    assert_eq!(server.tls_connections(), 2);
    assert_eq!(
        pool.stats().creations,
        1,
        "recovered by a rebuild, not a reconnect"
    );
    assert_eq!(pool.connection_stats().http2_connections, 2);
    assert!(
        server
            .requests()
            .iter()
            .rev()
            .take(30)
            .all(|r| r.connection == 2)
    );
}

// K10: a stalled connection (open, silent, no PING acks) is detected by keep-alive and closed;
// its streams fail (bounded, not a hang), the session stays pooled and the next call succeeds
// on a new connection.
#[tokio::test]
async fn stalled_connection_detected_by_keep_alive() {
    let server = K8sServer::start().await.unwrap();
    let pool = SessionPool::builder(KubeconfigSource::from_kubeconfig(server.kubeconfig_token()))
        .knobs_from(|_| None)
        .http2_keep_alive(ms(100), ms(200))
        .build();
    let k = key("east");
    call(&pool, &k).await.unwrap();
    server.inject(PODS, Fault::latency(ms(500)).times(5));
    server.inject(NODES, Fault::stall_connection().times(1));
    let session = pool.session(&k).await.unwrap();
    let started = Instant::now();
    let (lists, node) = timeout(Duration::from_secs(20), async {
        tokio::join!(
            join_all((0..5).map(|_| list_pods(&session))),
            list_nodes(&session)
        )
    })
    .await
    .expect("a stalled connection hung its calls");
    assert!(node.is_err());
    assert!(lists.iter().all(|r| r.is_err()), "{lists:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    drop(session);
    all_ok(&burst(&pool, &k, 10).await);
    assert_eq!(server.tls_connections(), 2);
    assert_eq!(pool.stats().creations, 1);
}

// Timeouts over h2: a hung answer fails at the read timeout even while PINGs keep the connection
// busy; the other streams are unaffected and the next call succeeds.
#[tokio::test]
async fn hung_answer_fails_at_read_timeout_over_h2() {
    let server = K8sServer::start().await.unwrap();
    let pool = SessionPool::builder(KubeconfigSource::from_kubeconfig(server.kubeconfig_token()))
        .knobs_from(|_| None)
        .read_timeout(Some(ms(300)))
        .http2_keep_alive(ms(50), Duration::from_secs(5))
        .build();
    let k = key("east");
    call(&pool, &k).await.unwrap();
    server.inject(PODS, Fault::latency(Duration::from_secs(4)).times(1));
    let session = pool.session(&k).await.unwrap();
    let started = Instant::now();
    let (hung, node) = timeout(Duration::from_secs(10), async {
        tokio::join!(list_pods(&session), list_nodes(&session))
    })
    .await
    .expect("never hangs");
    assert!(hung.is_err(), "a 4 s answer beat a 300 ms read timeout");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(node.is_ok(), "{node:?}");
    assert!(list_pods(&session).await.is_ok());
    assert_eq!(server.tls_connections(), 1);
}

// Timeouts over h2: a server that accepts TCP and then never speaks TLS fails the cold burst
// at the connect timeout (one connect for the burst), never hangs.
#[tokio::test]
async fn silent_server_fails_at_connect_timeout() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicU64::new(0));
    let held = Arc::new(Mutex::new(Vec::new()));
    {
        let (accepted, held) = (accepted.clone(), held.clone());
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                accepted.fetch_add(1, Ordering::SeqCst);
                held.lock().unwrap().push(sock);
            }
        });
    }
    let server = K8sServer::start().await.unwrap();
    let kubeconfig = redirect(server.kubeconfig_token(), port);
    let pool = SessionPool::builder(KubeconfigSource::from_kubeconfig(kubeconfig))
        .knobs_from(|_| None)
        .connect_timeout(Some(ms(300)))
        .read_timeout(None)
        .build();
    let started = Instant::now();
    let results = timeout(Duration::from_secs(10), burst(&pool, &key("east"), 10))
        .await
        .expect("a silent server hung the burst");
    assert!(results.iter().all(|r| r.is_err()), "{results:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "one connect attempt per burst"
    );
}

fn redirect(mut kubeconfig: Kubeconfig, port: u16) -> Kubeconfig {
    for c in &mut kubeconfig.clusters {
        if let Some(cluster) = c.cluster.as_mut() {
            cluster.server = Some(format!("https://127.0.0.1:{port}"));
        }
    }
    kubeconfig
}

// K9: a failed probe fails the requests waiting on it with one connect attempt; the next
// request probes again.
#[tokio::test]
async fn failed_probe_one_attempt_per_burst() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicU64::new(0));
    {
        let accepted = accepted.clone();
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                accepted.fetch_add(1, Ordering::SeqCst);
                drop(sock); // EOF during the TLS handshake
            }
        });
    }
    let server = K8sServer::start().await.unwrap();
    let pool = SessionPool::builder(KubeconfigSource::from_kubeconfig(redirect(
        server.kubeconfig_token(),
        port,
    )))
    .knobs_from(|_| None)
    .build();
    let k = key("east");
    let session = pool.session(&k).await.unwrap();
    let results = timeout(
        Duration::from_secs(10),
        join_all((0..20).map(|_| list_pods(&session))),
    )
    .await
    .unwrap();
    assert!(results.iter().all(|r| r.is_err()));
    assert!(wait_until(ms(200), || accepted.load(Ordering::SeqCst) >= 1).await);
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "connect attempts for one burst"
    );
    assert!(list_pods(&session).await.is_err());
    assert!(wait_until(ms(500), || accepted.load(Ordering::SeqCst) >= 2).await);
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        2,
        "the next request probes again"
    );
}

// K9: a server that spoke HTTP/2 answers a reconnect with HTTP/1.1: at most one call fails,
// later calls go over HTTP/1.1, counted as a fallback.
#[tokio::test]
async fn reconnect_to_http1_server_falls_back() {
    let server = K8sServer::start().await.unwrap();
    let pool = token_pool(&server);
    let k = key("east");
    all_ok(&burst(&pool, &k, 5).await);
    server.serve_http2(false);
    server.inject(NODES, Fault::reset().times(1));
    let session = pool.session(&k).await.unwrap();
    assert!(list_nodes(&session).await.is_err());
    let mut failures = 0;
    for _ in 0..3 {
        if timeout(Duration::from_secs(10), list_pods(&session))
            .await
            .unwrap()
            .is_err()
        {
            failures += 1;
        }
    }
    assert!(failures <= 1, "{failures} calls failed after the switch");
    server.clear_requests();
    let results = timeout(
        Duration::from_secs(10),
        join_all((0..10).map(|_| list_pods(&session))),
    )
    .await
    .unwrap();
    all_ok(&results);
    assert!(
        versions(&server)
            .iter()
            .all(|v| *v == http::Version::HTTP_11)
    );
    assert!(pool.connection_stats().http1_fallbacks >= 1);
    assert_eq!(pool.stats().creations, 1);
}

/// A source whose kubeconfig the test swaps (credential rotation).
#[derive(Debug)]
struct Rotating(Mutex<Kubeconfig>, AtomicU64);

#[async_trait::async_trait]
impl ClusterCredentials for Rotating {
    async fn credentials(&self, _key: &SessionKey) -> Result<ClusterMaterial, CredentialsError> {
        self.1.fetch_add(1, Ordering::SeqCst);
        Ok(ClusterMaterial::new(self.0.lock().unwrap().clone()))
    }
}

// T11/K7 over h2: a rotated (revoked) token gives the caller its 401, retires that session,
// and the next call gets a rebuilt session on a new connection with the new token; the old
// connection closes once its handles are gone.
#[tokio::test]
async fn rotated_token_over_h2() {
    let server = K8sServer::start().await.unwrap();
    server.add_token("token-one");
    let source = Arc::new(Rotating(
        Mutex::new(server.kubeconfig_with(KubeAuth::Token("token-one"))),
        AtomicU64::new(0),
    ));
    let pool = SessionPool::builder_arc(source.clone())
        .knobs_from(|_| None)
        .build();
    let k = key("east");
    all_ok(&burst(&pool, &k, 20).await);
    assert_eq!(server.tls_connections(), 1);
    server.revoke_token("token-one");
    server.add_token("token-two");
    *source.0.lock().unwrap() = server.kubeconfig_with(KubeAuth::Token("token-two"));
    let rejected = call(&pool, &k).await;
    assert!(rejected.is_err(), "{rejected:?}");
    assert_eq!(pool.rejections(), 1);
    all_ok(&burst(&pool, &k, 20).await);
    assert_eq!(source.1.load(Ordering::SeqCst), 2);
    assert_eq!(pool.stats().creations, 2);
    assert_eq!(server.tls_connections(), 2);
    assert_eq!(pool.connection_stats().http2_connections, 2);
    assert!(
        wait_until(Duration::from_secs(5), || server.open_connections() == 1).await,
        "the retired session's connection stays open: {}",
        server.open_connections()
    );
}

// K3/K6 over h2: past the pool TTL the next call builds a new session on a new connection; a
// handle kept from before still works until dropped.
#[tokio::test]
async fn ttl_expiry_over_h2_rebuilds_and_closes_old_connection() {
    let server = K8sServer::start().await.unwrap();
    let pool = SessionPool::builder(KubeconfigSource::from_kubeconfig(server.kubeconfig_token()))
        .knobs_from(|_| None)
        .ttl(Duration::from_secs(5))
        .http2_keep_alive(Duration::from_secs(3600), Duration::from_secs(3600))
        .build();
    let k = key("east");
    all_ok(&burst(&pool, &k, 10).await);
    let old = pool.session(&k).await.unwrap();
    tokio::time::pause();
    tokio::time::advance(Duration::from_secs(6)).await;
    tokio::time::resume();
    let fresh = pool.session(&k).await.unwrap();
    assert!(list_pods(&fresh).await.is_ok());
    assert!(
        list_pods(&old).await.is_ok(),
        "a handle kept past the TTL still works"
    );
    assert_eq!(pool.stats().creations, 2);
    assert_eq!(server.tls_connections(), 2);
    drop(old);
    drop(fresh);
    assert!(
        wait_until(Duration::from_secs(5), || server.open_connections() == 1).await,
        "{}",
        server.open_connections()
    );
}

// K7 over h2: reset() while streams are in flight: they complete; the next call builds anew.
// shutdown() then refuses sessions.
#[tokio::test]
async fn reset_with_streams_in_flight() {
    let server = K8sServer::start().await.unwrap();
    server.inject(PODS, Fault::latency(ms(300)).times(20));
    let pool = token_pool(&server);
    let k = key("east");
    let (results, report) = tokio::join!(burst(&pool, &k, 20), async {
        assert!(wait_until(Duration::from_secs(5), || server.in_flight() >= 20).await);
        pool.reset().await
    });
    all_ok(&results);
    assert_eq!(report.retired, 1, "{report:?}");
    all_ok(&burst(&pool, &k, 5).await);
    assert_eq!(pool.stats().creations, 2);
    pool.shutdown().await;
    assert!(matches!(
        pool.session(&k).await,
        Err(SessionError::ShutDown)
    ));
}

// K8/K9: the FIRST request of a cold session is an exec (Upgrade): it must not be sent as the
// HTTP/2 probe (the server answers upgrades over HTTP/2 with 400); it gets 101 over HTTP/1.1,
// and a burst of lists beside it still shares one h2 connection.
#[tokio::test]
async fn cold_session_exec_first() {
    let server = K8sServer::start().await.unwrap();
    let pool = token_pool(&server);
    let k = key("east");
    let session = pool.session(&k).await.unwrap();
    let (resp, lists) = timeout(Duration::from_secs(20), async {
        tokio::join!(
            session
                .client()
                .send(exec_request().map(kube::client::Body::from)),
            join_all((0..20).map(|_| list_pods(&session)))
        )
    })
    .await
    .expect("hung");
    let resp = resp.expect("exec failed");
    assert_eq!(resp.status(), http::StatusCode::SWITCHING_PROTOCOLS);
    all_ok(&lists);
    assert_eq!(server.h2_connections(), 1);
    assert!(
        server.tls_connections() <= 2,
        "{}",
        server.tls_connections()
    );
}

// K8: exec over a fallback (HTTP/1.1-only server) and over http2(false) still upgrades.
#[tokio::test]
async fn exec_over_fallback_and_http2_off() {
    let server = K8sServer::start().await.unwrap();
    server.serve_http2(false);
    for h2 in [true, false] {
        let pool =
            SessionPool::builder(KubeconfigSource::from_kubeconfig(server.kubeconfig_token()))
                .knobs_from(|_| None)
                .http2(h2)
                .build();
        let session = pool.session(&key("east")).await.unwrap();
        assert!(list_pods(&session).await.is_ok());
        let resp = timeout(
            Duration::from_secs(10),
            session
                .client()
                .send(exec_request().map(kube::client::Body::from)),
        )
        .await
        .expect("exec hung")
        .expect("exec failed");
        assert_eq!(
            resp.status(),
            http::StatusCode::SWITCHING_PROTOCOLS,
            "http2({h2})"
        );
    }
}

// K10 edge: max_streams_per_session(Some(0)) is clamped to 1, never a deadlock; huge
// keep-alive durations never panic.
#[tokio::test]
async fn extreme_bounds_still_serve() {
    let server = K8sServer::start().await.unwrap();
    server.inject(PODS, Fault::latency(ms(20)));
    let pool = SessionPool::builder(KubeconfigSource::from_kubeconfig(server.kubeconfig_token()))
        .knobs_from(|_| None)
        .max_streams_per_session(Some(0))
        .http2_keep_alive(Duration::MAX, Duration::MAX)
        .connect_timeout(Some(Duration::MAX))
        .read_timeout(Some(Duration::MAX))
        .max_in_flight_per_session(0)
        .build();
    assert_eq!(pool.max_streams_per_session(), Some(1));
    all_ok(&burst(&pool, &key("east"), 10).await);
    assert_eq!(server.peak_in_flight(), 1);
    assert_eq!(server.tls_connections(), 1);
}

// K10: the stream bound survives a reconnect (the new connection is bounded too).
#[tokio::test]
async fn stream_bound_holds_after_reconnect() {
    let server = K8sServer::start().await.unwrap();
    let pool = SessionPool::builder(KubeconfigSource::from_kubeconfig(server.kubeconfig_token()))
        .knobs_from(|_| None)
        .max_streams_per_session(Some(3))
        .build();
    let k = key("east");
    call(&pool, &k).await.unwrap();
    server.inject(NODES, Fault::reset().times(1));
    let session = pool.session(&k).await.unwrap();
    assert!(list_nodes(&session).await.is_err());
    drop(session);
    server.inject(PODS, Fault::latency(ms(100)));
    all_ok(&burst(&pool, &k, 30).await);
    assert!(server.peak_in_flight() <= 3, "{}", server.peak_in_flight());
    assert_eq!(server.tls_connections(), 2);
}

// K10 + timeouts: a hung answer holds its stream only until the read timeout; with one stream
// the next call then runs.
#[tokio::test]
async fn read_timeout_frees_the_only_stream() {
    let server = K8sServer::start().await.unwrap();
    let pool = SessionPool::builder(KubeconfigSource::from_kubeconfig(server.kubeconfig_token()))
        .knobs_from(|_| None)
        .max_streams_per_session(Some(1))
        .read_timeout(Some(ms(300)))
        .build();
    let k = key("east");
    call(&pool, &k).await.unwrap();
    server.inject(PODS, Fault::latency(Duration::from_secs(5)).times(1));
    let started = Instant::now();
    let (hung, next) = timeout(Duration::from_secs(10), async {
        tokio::join!(biased; call(&pool, &k), async {
            assert!(wait_until(Duration::from_secs(5), || server.in_flight() >= 1).await);
            list_nodes(&pool.session(&k).await.unwrap()).await
        })
    })
    .await
    .expect("hung");
    assert!(hung.is_err());
    assert!(next.is_ok(), "{next:?}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

// K10: a raw send whose body is held unread keeps its stream (the bound counts it); dropping
// the body frees it.
#[tokio::test]
async fn held_body_holds_the_stream_until_dropped() {
    let server = K8sServer::start().await.unwrap();
    let pool = SessionPool::builder(KubeconfigSource::from_kubeconfig(server.kubeconfig_token()))
        .knobs_from(|_| None)
        .max_streams_per_session(Some(1))
        .build();
    let k = key("east");
    let session = pool.session(&k).await.unwrap();
    let held = session
        .client()
        .send(
            http::Request::get(PODS)
                .body(kube::client::Body::from(Vec::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert!(
        timeout(ms(300), list_nodes(&session)).await.is_err(),
        "a second stream ran while the only one was held"
    );
    drop(held);
    let next = timeout(Duration::from_secs(3), list_nodes(&session)).await;
    assert!(matches!(next, Ok(Ok(_))), "{next:?}");
}

// T11/K1 over h2: 401s that arrive late on the OLD session (requests sent before the rotation)
// must not retire the session already rebuilt with the new token.
#[tokio::test]
async fn late_401s_do_not_retire_the_rebuilt_session() {
    let server = K8sServer::start().await.unwrap();
    server.add_token("token-one");
    let source = Arc::new(Rotating(
        Mutex::new(server.kubeconfig_with(KubeAuth::Token("token-one"))),
        AtomicU64::new(0),
    ));
    let pool = SessionPool::builder_arc(source.clone())
        .knobs_from(|_| None)
        .build();
    let k = key("east");
    let old = pool.session(&k).await.unwrap();
    assert!(list_pods(&old).await.is_ok());
    server.revoke_token("token-one");
    server.add_token("token-two");
    *source.0.lock().unwrap() = server.kubeconfig_with(KubeAuth::Token("token-two"));
    server.inject(PODS, Fault::latency(ms(600)).times(10));
    let (late, fresh) = timeout(Duration::from_secs(20), async {
        tokio::join!(join_all((0..10).map(|_| list_pods(&old))), async {
            assert!(wait_until(Duration::from_secs(5), || server.in_flight() >= 10).await);
            assert!(list_nodes(&old).await.is_err(), "revoked token accepted");
            let fresh = pool.session(&k).await.unwrap();
            let r = list_nodes(&fresh).await;
            (r, fresh)
        })
    })
    .await
    .unwrap();
    assert!(late.iter().all(|r| r.is_err()));
    assert!(fresh.0.is_ok(), "{:?}", fresh.0);
    drop(fresh.1);
    drop(old);
    assert!(call(&pool, &k).await.is_ok());
    assert_eq!(
        pool.stats().creations,
        2,
        "late 401s of the old session retired the rebuilt one"
    );
}

// K8/K9 under a multi-threaded flood with mTLS: one handshake, every request HTTP/2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_thread_cold_flood_cert() {
    let server = K8sServer::start().await.unwrap();
    server.inject(PODS, Fault::latency(ms(200)));
    let pool = Arc::new(
        SessionPool::builder(KubeconfigSource::from_kubeconfig(
            server.kubeconfig_cert().unwrap(),
        ))
        .knobs_from(|_| None)
        .build(),
    );
    all_ok(&spawned_burst(&pool, &key("east"), 400).await);
    assert_eq!(server.tls_connections(), 1);
    assert_eq!(server.tcp_connections(), 1);
    assert!(server.peak_in_flight() <= 100);
    assert_eq!(pool.connection_stats().http2_connections, 1);
    assert_eq!(pool.stats().creations, 1);
}

// K8 under a multi-threaded cold burst, many times over: every session opens exactly one TLS
// connection. (hyper-util's pooling client let a request on the other worker thread open a
// second one when it missed the pool just as the first connection entered it: about one cold
// burst in forty.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_cold_burst_opens_one_connection() {
    let server = K8sServer::start().await.unwrap();
    server.inject(PODS, Fault::latency(ms(20)));
    let pool = Arc::new(token_pool(&server));
    const SESSIONS: u64 = 30;
    for n in 0..SESSIONS {
        all_ok(&spawned_burst(&pool, &key(&format!("cluster-{n}")), 60).await);
        assert_eq!(
            server.tls_connections(),
            n + 1,
            "cold burst {n} opened a second connection"
        );
    }
    assert_eq!(pool.connection_stats().http2_connections, SESSIONS);
}

// K8: a connection no request has used for 90 s is let go (hyper-util's pool default), so an
// idle session does not hold a socket; the next request opens a new one. A request within the
// 90 s keeps it.
#[tokio::test]
async fn idle_connection_is_let_go_and_reopened() {
    let server = K8sServer::start().await.unwrap();
    let pool = SessionPool::builder(KubeconfigSource::from_kubeconfig(server.kubeconfig_token()))
        .knobs_from(|_| None)
        .ttl(Duration::from_secs(3600))
        .http2_keep_alive(Duration::from_secs(3600), Duration::from_secs(3600))
        .build();
    let k = key("east");
    let session = pool.session(&k).await.unwrap();
    assert!(list_pods(&session).await.is_ok());
    let idle = |secs| async move {
        tokio::time::pause();
        tokio::time::advance(Duration::from_secs(secs)).await;
        tokio::time::resume();
    };
    idle(80).await;
    assert!(list_pods(&session).await.is_ok());
    idle(80).await;
    assert!(list_pods(&session).await.is_ok());
    assert_eq!(server.tls_connections(), 1, "a used connection was let go");
    assert_eq!(server.open_connections(), 1);
    idle(91).await;
    assert!(
        wait_until(Duration::from_secs(5), || server.open_connections() == 0).await,
        "an idle connection stays open"
    );
    assert!(list_pods(&session).await.is_ok());
    assert_eq!(server.tls_connections(), 2);
    assert_eq!(pool.connection_stats().http2_connections, 2);
}

// Flow control: bodies well beyond the default 64 KiB stream window, many at once on one
// connection, all complete.
#[tokio::test]
async fn large_bodies_over_one_connection() {
    let server = K8sServer::with_fixtures(testkit::k8s::Fixtures::warmup_cluster(1500))
        .await
        .unwrap();
    let pool = token_pool(&server);
    let results = burst(&pool, &key("east"), 30).await;
    all_ok(&results);
    assert!(results.iter().all(|r| *r.as_ref().unwrap() > 1500));
    assert_eq!(server.tls_connections(), 1);
}

// K8/in-flight bound: an exec holds an HTTP/1.1 slot only while it is open: with a bound of
// one, lists over h2 are not blocked by an open exec, and a second exec runs once the first
// one's stream is dropped.
#[tokio::test]
async fn exec_slot_freed_when_upgrade_ends() {
    let server = K8sServer::start().await.unwrap();
    let pool = SessionPool::builder(KubeconfigSource::from_kubeconfig(server.kubeconfig_token()))
        .knobs_from(|_| None)
        .max_in_flight_per_session(1)
        .build();
    let session = pool.session(&key("east")).await.unwrap();
    assert!(list_pods(&session).await.is_ok());
    let exec = || async {
        let resp = session
            .client()
            .send(exec_request().map(kube::client::Body::from))
            .await
            .map_err(|e| format!("{e:?}"))?;
        assert_eq!(resp.status(), http::StatusCode::SWITCHING_PROTOCOLS);
        hyper::upgrade::on(resp).await.map_err(|e| format!("{e:?}"))
    };
    let first = timeout(Duration::from_secs(5), exec())
        .await
        .unwrap()
        .unwrap();
    let lists = timeout(
        Duration::from_secs(5),
        join_all((0..10).map(|_| list_pods(&session))),
    )
    .await
    .expect("an open exec blocked h2 lists");
    all_ok(&lists);
    drop(first);
    let second = timeout(Duration::from_secs(5), exec()).await;
    assert!(
        matches!(second, Ok(Ok(_))),
        "a second exec after the first ended: {:?}",
        second.map(|r| r.map(|_| ()))
    );
}

type Recorded = Vec<(
    metrics_util::CompositeKey,
    Option<metrics::Unit>,
    Option<metrics::SharedString>,
    metrics_util::debugging::DebugValue,
)>;

fn metric(recorded: &Recorded, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    use metrics_util::debugging::DebugValue;
    recorded.iter().find_map(|(key, _, _, value)| {
        let mut found: Vec<(String, String)> = key
            .key()
            .labels()
            .map(|l| (l.key().to_owned(), l.value().to_owned()))
            .collect();
        let mut wanted: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        found.sort();
        wanted.sort();
        (key.key().name() == name && found == wanted).then(|| match value {
            DebugValue::Counter(n) => *n as f64,
            DebugValue::Gauge(g) => g.into_inner(),
            DebugValue::Histogram(h) => h.len() as f64,
        })
    })
}

// Metrics consistent with the server after every failure path over h2: the active-requests
// gauge returns to 0 (no stream leaked by a connection reset, a stall, a cancelled call, a read
// timeout, a stream reset), and the connections counter matches connection_stats and the server.
#[test]
fn metrics_consistent_after_failures() {
    let recorder = metrics_util::debugging::DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let (stats, server_tls, server_h2) = metrics::with_local_recorder(&recorder, || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async {
                let server = K8sServer::start().await.unwrap();
                let pool = SessionPool::builder(KubeconfigSource::from_kubeconfig(
                    server.kubeconfig_token(),
                ))
                .knobs_from(|_| None)
                .http2_keep_alive(ms(100), ms(200))
                .read_timeout(Some(ms(300)))
                .build();
                let k = key("metered");
                all_ok(&burst(&pool, &k, 20).await);
                let session = pool.session(&k).await.unwrap();
                // Connection reset with streams in flight.
                server.inject(PODS, Fault::latency(ms(200)).times(5));
                server.inject(NODES, Fault::reset().with_latency(ms(50)).times(1));
                let _ = tokio::join!(
                    join_all((0..5).map(|_| list_pods(&session))),
                    list_nodes(&session)
                );
                // Stream reset.
                server.inject(NODES, Fault::reset_stream().times(1));
                let _ = list_nodes(&session).await;
                // Cancelled call.
                server.inject(PODS, Fault::latency(Duration::from_secs(1)).times(1));
                let _ = timeout(ms(50), list_pods(&session)).await;
                // Read timeout.
                server.inject(PODS, Fault::latency(Duration::from_secs(2)).times(1));
                let _ = list_pods(&session).await;
                // Stall.
                server.inject(NODES, Fault::stall_connection().times(1));
                let _ = timeout(Duration::from_secs(10), list_nodes(&session)).await;
                server.clear_faults();
                all_ok(&burst(&pool, &k, 5).await);
                drop(session);
                for _ in 0..50 {
                    tokio::task::yield_now().await;
                }
                (
                    pool.connection_stats(),
                    server.tls_connections(),
                    server.h2_connections(),
                )
            })
    });
    let recorded = snapshotter.snapshot().into_vec();
    let cluster = [("k8s.cluster.name", "metered")];
    assert_eq!(
        metric(&recorded, "k8s.session.active_requests", &cluster),
        Some(0.0),
        "leaked active requests"
    );
    assert_eq!(
        metric(&recorded, "k8s.session.sessions.in_use", &cluster),
        Some(0.0)
    );
    let h2 = metric(
        &recorded,
        "k8s.session.connections",
        &[
            ("k8s.cluster.name", "metered"),
            ("network.protocol.version", "2"),
        ],
    );
    assert_eq!(h2, Some(stats.http2_connections as f64), "{stats:?}");
    assert_eq!(stats.http2_connections, server_h2);
    assert_eq!(
        stats.http2_connections + stats.http1_connections,
        server_tls
    );
    assert!(stats.http2_connections >= 3, "{stats:?}");
}

fn fallback_pool(server: &K8sServer, bound: usize) -> SessionPool {
    fallback_pool_with(server, bound, ms(300))
}

/// [`fallback_pool`] with another read timeout. The flood, whose calls must all succeed, failed
/// once while other test processes kept both cores busy (load 7.6): 300 ms between two reads
/// is the one bound in it that load alone can reach.
fn fallback_pool_with(server: &K8sServer, bound: usize, read_timeout: Duration) -> SessionPool {
    server.serve_http2(false);
    SessionPool::builder(KubeconfigSource::from_kubeconfig(server.kubeconfig_token()))
        .knobs_from(|_| None)
        .max_in_flight_per_session(bound)
        .read_timeout(Some(read_timeout))
        .build()
}

// Over the fallback (HTTP/1.1): a hung answer and a stalled connection fail at the read timeout
// (no PINGs there), free their slot, and a stream reset fails only its own call.
#[tokio::test]
async fn fallback_failures_are_bounded_and_isolated() {
    let server = K8sServer::start().await.unwrap();
    let pool = fallback_pool(&server, 2);
    let k = key("east");
    call(&pool, &k).await.unwrap();
    let session = pool.session(&k).await.unwrap();
    // Hung answer and stall, with a bound of 2: both slots taken, then freed.
    server.inject(PODS, Fault::latency(Duration::from_secs(4)).times(1));
    server.inject(NODES, Fault::stall_connection().times(1));
    let started = Instant::now();
    let (hung, stalled) = timeout(Duration::from_secs(10), async {
        tokio::join!(list_pods(&session), list_nodes(&session))
    })
    .await
    .expect("fallback calls hung");
    assert!(hung.is_err() && stalled.is_err());
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let next = timeout(Duration::from_secs(3), list_pods(&session)).await;
    assert!(matches!(next, Ok(Ok(_))), "slots not freed: {next:?}");
    // Stream reset = that request's connection: only it fails.
    server.clear_faults();
    server.inject(PODS, Fault::latency(ms(100)).times(6));
    server.inject(NODES, Fault::reset_stream().times(1));
    let (lists, node) = timeout(Duration::from_secs(10), async {
        tokio::join!(
            join_all((0..6).map(|_| list_pods(&session))),
            list_nodes(&session)
        )
    })
    .await
    .unwrap();
    assert!(node.is_err());
    all_ok(&lists);
    assert_eq!(pool.connection_stats().http1_fallbacks, 1);
    assert_eq!(pool.stats().creations, 1);
}

// The API server goes away with streams in flight: they fail promptly (no hang), and later
// calls fail fast instead of waiting.
#[tokio::test]
async fn server_gone_fails_fast() {
    let server = K8sServer::start().await.unwrap();
    let pool = SessionPool::builder(KubeconfigSource::from_kubeconfig(server.kubeconfig_token()))
        .knobs_from(|_| None)
        .connect_timeout(Some(Duration::from_secs(2)))
        .build();
    let k = key("east");
    call(&pool, &k).await.unwrap();
    server.inject(PODS, Fault::latency(Duration::from_secs(30)));
    let session = pool.session(&k).await.unwrap();
    let started = Instant::now();
    let (lists, ()) = timeout(Duration::from_secs(10), async {
        tokio::join!(join_all((0..10).map(|_| list_pods(&session))), async {
            assert!(wait_until(Duration::from_secs(5), || server.in_flight() >= 10).await);
            drop(server);
        })
    })
    .await
    .expect("streams of a vanished server hung");
    assert!(lists.iter().all(|r| r.is_err()));
    let after = timeout(Duration::from_secs(5), list_pods(&session))
        .await
        .expect("a call after the server went away hung");
    assert!(after.is_err());
    assert!(started.elapsed() < Duration::from_secs(8));
}

// K4/K7 over h2: one-shot sessions (TTL 0) each use a connection of their own and close it when
// dropped; shutdown() closes the pooled sessions' connections once their handles are gone.
#[tokio::test]
async fn one_shot_and_shutdown_close_their_connections() {
    let server = K8sServer::start().await.unwrap();
    let one_shot =
        SessionPool::builder(KubeconfigSource::from_kubeconfig(server.kubeconfig_token()))
            .knobs_from(|_| None)
            .ttl(Duration::ZERO)
            .build();
    for _ in 0..5 {
        let session = one_shot.session(&key("east")).await.unwrap();
        assert!(!session.is_pooled());
        assert!(list_pods(&session).await.is_ok());
    }
    assert_eq!(server.tls_connections(), 5);
    assert!(
        wait_until(Duration::from_secs(5), || server.open_connections() == 0).await,
        "one-shot connections left open: {}",
        server.open_connections()
    );
    let pool = token_pool(&server);
    for name in ["a", "b", "c"] {
        all_ok(&burst(&pool, &key(name), 10).await);
    }
    assert!(wait_until(Duration::from_secs(2), || server.open_connections() == 3).await);
    pool.shutdown().await;
    assert!(
        wait_until(Duration::from_secs(5), || server.open_connections() == 0).await,
        "connections left open after shutdown: {}",
        server.open_connections()
    );
}

// K10: callers that give up while WAITING for a stream (the bound is full) leave the queue;
// the next caller runs as soon as the stream frees.
#[tokio::test]
async fn cancelled_waiters_leave_the_queue() {
    let server = K8sServer::start().await.unwrap();
    let pool = SessionPool::builder(KubeconfigSource::from_kubeconfig(server.kubeconfig_token()))
        .knobs_from(|_| None)
        .max_streams_per_session(Some(1))
        .build();
    let k = key("east");
    let session = pool.session(&k).await.unwrap();
    assert!(list_pods(&session).await.is_ok());
    server.inject(PODS, Fault::latency(ms(500)).times(1));
    let (long, waiters, next) = timeout(Duration::from_secs(10), async {
        tokio::join!(
            list_pods(&session),
            async {
                // the long call holds the only stream (tokio::join! rotates its first poll)
                assert!(wait_until(Duration::from_secs(5), || server.in_flight() >= 1).await);
                join_all((0..10).map(|_| timeout(ms(100), list_nodes(&session)))).await
            },
            async {
                tokio::time::sleep(ms(200)).await; // after the waiters gave up
                let started = Instant::now();
                let r = list_nodes(&session).await;
                (r, started.elapsed())
            }
        )
    })
    .await
    .expect("a cancelled waiter stranded the queue");
    assert!(long.is_ok());
    assert!(
        waiters.iter().all(|w| w.is_err()),
        "the bound let waiters through: {waiters:?} {:?} peak {}",
        server
            .requests()
            .iter()
            .map(|r| (r.path.clone(), r.connection))
            .collect::<Vec<_>>(),
        server.peak_in_flight()
    );
    assert!(next.0.is_ok(), "{:?}", next.0);
    assert!(next.1 < Duration::from_secs(1), "{:?}", next.1);
    assert!(server.peak_in_flight() <= 1);
}

// K8: the HTTP/1.1 (upgrade) side authenticates like the h2 side: a client certificate for an
// mTLS session, the bearer token for a token session.
#[tokio::test]
async fn exec_carries_the_sessions_credentials() {
    use testkit::k8s::AuthMethod;
    let server = K8sServer::start().await.unwrap();
    for (kubeconfig, want) in [
        (server.kubeconfig_cert().unwrap(), AuthMethod::ClientCert),
        (server.kubeconfig_token(), AuthMethod::Bearer),
    ] {
        server.clear_requests();
        let pool = SessionPool::builder(KubeconfigSource::from_kubeconfig(kubeconfig))
            .knobs_from(|_| None)
            .build();
        let session = pool.session(&key("east")).await.unwrap();
        assert!(list_pods(&session).await.is_ok());
        let resp = timeout(
            Duration::from_secs(10),
            session
                .client()
                .send(exec_request().map(kube::client::Body::from)),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(resp.status(), http::StatusCode::SWITCHING_PROTOCOLS);
        let records = server.requests();
        assert!(
            records.iter().all(|r| r.auth == want),
            "{want:?}: {records:?}"
        );
    }
}

// K3 over h2: a static JWT bearer token's session lives until exp − 60 s; past it the next call
// builds a new session on a new connection (virtual time moved only with no I/O in flight).
#[tokio::test]
async fn jwt_expiry_over_h2_rebuilds() {
    let server = K8sServer::start().await.unwrap();
    let jwt = testkit::k8s::unsigned_jwt("aud", 180, "oid");
    server.add_token(jwt.clone());
    let pool = SessionPool::builder(KubeconfigSource::from_kubeconfig(
        server.kubeconfig_with(KubeAuth::Token(&jwt)),
    ))
    .knobs_from(|_| None)
    .http2_keep_alive(Duration::from_secs(3600), Duration::from_secs(3600))
    .build();
    let k = key("east");
    all_ok(&burst(&pool, &k, 10).await);
    {
        let s = pool.session(&k).await.unwrap();
        let ttl = s.effective_ttl();
        assert!(ttl.is_poolable(), "{ttl:?}");
        let left = s.deadline().unwrap() - Instant::now();
        assert!(
            left <= Duration::from_secs(120) && left > Duration::from_secs(100),
            "{left:?}"
        );
    }
    tokio::time::pause();
    tokio::time::advance(Duration::from_secs(121)).await;
    tokio::time::resume();
    all_ok(&burst(&pool, &k, 10).await);
    assert_eq!(pool.stats().creations, 2);
    assert_eq!(server.tls_connections(), 2);
    assert_eq!(server.h2_connections(), 2);
}

// K9 under a multi-threaded cold flood against an HTTP/1.1-only server: every call succeeds,
// one fallback, the in-flight bound holds at the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_thread_cold_flood_fallback() {
    let server = K8sServer::start().await.unwrap();
    server.inject(PODS, Fault::latency(ms(20)));
    let pool = Arc::new(fallback_pool_with(&server, 8, Duration::from_secs(10)));
    all_ok(&spawned_burst(&pool, &key("east"), 200).await);
    assert!(server.peak_in_flight() <= 8, "{}", server.peak_in_flight());
    assert!(
        server.tls_connections() <= 12,
        "{}",
        server.tls_connections()
    );
    assert_eq!(server.h2_connections(), 0);
    let stats = pool.connection_stats();
    assert_eq!(stats.http1_fallbacks, 1, "{stats:?}");
    assert_eq!(
        stats.http1_connections,
        server.tls_connections(),
        "{stats:?}"
    );
}

// K9: the probe's own request is reset (RST_STREAM): only it fails; the burst waiting on the
// probe runs on that same connection.
#[tokio::test]
async fn probe_stream_reset_fails_only_the_probe_call() {
    let server = K8sServer::start().await.unwrap();
    server.inject(NODES, Fault::reset_stream().times(1));
    let pool = token_pool(&server);
    let session = pool.session(&key("east")).await.unwrap();
    let (node, lists) = timeout(Duration::from_secs(10), async {
        tokio::join!(biased; list_nodes(&session), join_all((0..20).map(|_| list_pods(&session))))
    })
    .await
    .expect("hung");
    assert!(node.is_err());
    all_ok(&lists);
    assert_eq!(server.tls_connections(), 1);
}

// K9 cold on an HTTP/1.1-only server, the first request an exec: 101, one fallback.
#[tokio::test]
async fn cold_exec_on_http1_only_server() {
    let server = K8sServer::start().await.unwrap();
    let pool = fallback_pool(&server, 4);
    let session = pool.session(&key("east")).await.unwrap();
    let (resp, lists) = timeout(Duration::from_secs(10), async {
        tokio::join!(
            biased;
            session.client().send(exec_request().map(kube::client::Body::from)),
            join_all((0..10).map(|_| list_pods(&session)))
        )
    })
    .await
    .expect("hung");
    assert_eq!(
        resp.unwrap().status(),
        http::StatusCode::SWITCHING_PROTOCOLS
    );
    all_ok(&lists);
    assert_eq!(server.h2_connections(), 0);
    assert_eq!(pool.connection_stats().http1_fallbacks, 1);
}

// kube_retry is off by default over h2: a 503 reaches the caller after ONE request.
#[tokio::test]
async fn no_hidden_retry_over_h2() {
    let server = K8sServer::start().await.unwrap();
    let pool = token_pool(&server);
    let k = key("east");
    call(&pool, &k).await.unwrap();
    server.clear_requests();
    server.inject(PODS, Fault::status(503).with_retry_after(0).times(3));
    assert!(call(&pool, &k).await.is_err());
    assert_eq!(server.count(PODS), 1);
}

// K10: a connection that stalls and then sits idle (its only caller gave up) is still detected
// by keep-alive; the session's next call opens a new connection and succeeds instead of being
// sent into the dead one.
#[tokio::test]
async fn idle_stalled_connection_is_replaced() {
    let server = K8sServer::start().await.unwrap();
    let pool = SessionPool::builder(KubeconfigSource::from_kubeconfig(server.kubeconfig_token()))
        .knobs_from(|_| None)
        .http2_keep_alive(ms(100), ms(200))
        .max_streams_per_session(Some(1))
        .build();
    let k = key("east");
    call(&pool, &k).await.unwrap();
    server.inject(NODES, Fault::stall_connection().times(1));
    let session = pool.session(&k).await.unwrap();
    assert!(timeout(ms(50), list_nodes(&session)).await.is_err());
    // Several keep-alive rounds (100 ms + 200 ms) with the connection idle.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let next = timeout(Duration::from_secs(5), list_pods(&session)).await;
    assert!(matches!(next, Ok(Ok(_))), "{next:?}");
    assert_eq!(server.tls_connections(), 2);
}

// Timeouts on the upgrade side: an exec to a server that accepts TCP and never speaks TLS fails
// at the connect timeout too (its connection is its own, not the probe's).
#[tokio::test]
async fn exec_to_silent_server_fails_at_connect_timeout() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let held = Arc::new(Mutex::new(Vec::new()));
    {
        let held = held.clone();
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                held.lock().unwrap().push(sock);
            }
        });
    }
    let server = K8sServer::start().await.unwrap();
    let pool = SessionPool::builder(KubeconfigSource::from_kubeconfig(redirect(
        server.kubeconfig_token(),
        port,
    )))
    .knobs_from(|_| None)
    .connect_timeout(Some(ms(300)))
    .read_timeout(None)
    .build();
    let session = pool.session(&key("east")).await.unwrap();
    let started = Instant::now();
    let resp = timeout(
        Duration::from_secs(10),
        session
            .client()
            .send(exec_request().map(kube::client::Body::from)),
    )
    .await
    .expect("an exec to a silent server hung");
    assert!(resp.is_err());
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

// Timeouts on the upgrade side: an exec whose answer hangs fails at the read timeout.
#[tokio::test]
async fn hung_exec_fails_at_read_timeout() {
    let server = K8sServer::start().await.unwrap();
    let pool = SessionPool::builder(KubeconfigSource::from_kubeconfig(server.kubeconfig_token()))
        .knobs_from(|_| None)
        .read_timeout(Some(ms(300)))
        .build();
    let session = pool.session(&key("east")).await.unwrap();
    assert!(list_pods(&session).await.is_ok());
    server.inject(
        format!("{PODS}/warmup-0-pod/exec").as_str(),
        Fault::latency(Duration::from_secs(5)),
    );
    let started = Instant::now();
    let resp = timeout(
        Duration::from_secs(10),
        session
            .client()
            .send(exec_request().map(kube::client::Body::from)),
    )
    .await
    .expect("a hung exec hung the caller");
    assert!(resp.is_err(), "{:?}", resp.map(|r| r.status()));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(list_pods(&session).await.is_ok());
}
