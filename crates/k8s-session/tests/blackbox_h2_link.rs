//! Black-box suite for the session's own HTTP/2 connection (K8–K10 after the session stopped
//! using hyper-util's pool for it): one shared attempt opens the connection while the rest of a
//! burst waits; a closed connection is replaced by the next request, once; a request the closed
//! connection never started goes out on the new one; a connection that carried no stream for
//! 90 s (counted from the end of its last response body) is let go; a reconnect answered with
//! HTTP/1.1 sends the requests waiting on it over HTTP/1.1, none failing.
//!
//! Public API only, against testkit's in-process Kubernetes API server, counted at the server.
//! A small loopback TCP proxy in front of the server lets a test refuse, black-hole, delay or cut
//! the session's connections. Every call that could hang is wrapped in a timeout.

mod h2_common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::join_all;
use k8s_session::{KubeconfigSource, SessionPool};
use kube::config::Kubeconfig;
use testkit::k8s::{Fault, K8sServer};
use tokio::io::AsyncReadExt as _;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout};

use h2_common::*;

fn redirect(mut kubeconfig: Kubeconfig, port: u16) -> Kubeconfig {
    for c in &mut kubeconfig.clusters {
        if let Some(cluster) = c.cluster.as_mut() {
            cluster.server = Some(format!("https://127.0.0.1:{port}"));
        }
    }
    kubeconfig
}

/// Let tasks run (I/O included) without moving virtual time.
async fn settle() {
    for _ in 0..200 {
        tokio::task::yield_now().await;
    }
}

// ---------------------------------------------------------------------------------------------
// A loopback TCP proxy in front of the server.

#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    /// Forward bytes both ways.
    Forward,
    /// Accept, then close at once (EOF during the TLS handshake).
    Refuse,
    /// Accept, then hold the socket silent forever.
    Silent,
    /// Accept, wait this long, then forward.
    Delay(Duration),
}

struct Proxy {
    port: u16,
    mode: Arc<Mutex<Mode>>,
    accepted: Arc<AtomicU64>,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
    held: Arc<Mutex<Vec<TcpStream>>>,
    task: JoinHandle<()>,
}

impl Proxy {
    async fn start(upstream: std::net::SocketAddr, mode: Mode) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let mode = Arc::new(Mutex::new(mode));
        let accepted = Arc::new(AtomicU64::new(0));
        let conns: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let held: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let task = {
            let (mode, accepted, conns, held) =
                (mode.clone(), accepted.clone(), conns.clone(), held.clone());
            tokio::spawn(async move {
                while let Ok((mut sock, _)) = listener.accept().await {
                    accepted.fetch_add(1, Ordering::SeqCst);
                    let m = *mode.lock().unwrap();
                    match m {
                        Mode::Refuse => drop(sock),
                        Mode::Silent => held.lock().unwrap().push(sock),
                        Mode::Forward | Mode::Delay(_) => {
                            let conn = tokio::spawn(async move {
                                if let Mode::Delay(d) = m {
                                    tokio::time::sleep(d).await;
                                }
                                let Ok(mut up) = TcpStream::connect(upstream).await else {
                                    return;
                                };
                                let _ = sock.set_nodelay(true);
                                let _ = up.set_nodelay(true);
                                let _ = tokio::io::copy_bidirectional(&mut sock, &mut up).await;
                            });
                            conns.lock().unwrap().push(conn);
                        }
                    }
                }
            })
        };
        Proxy {
            port,
            mode,
            accepted,
            conns,
            held,
            task,
        }
    }

    fn set(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Cut every connection forwarded so far (both sockets closed).
    fn cut_all(&self) {
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
        self.held.lock().unwrap().clear();
    }

    fn kubeconfig(&self, server: &K8sServer) -> Kubeconfig {
        redirect(server.kubeconfig_token(), self.port)
    }

    /// Whether the client closed every socket held silent so far within `within` (each read to
    /// its end: the client's TLS hello, then EOF).
    async fn held_closed_by_client(&self, within: Duration) -> bool {
        let held: Vec<TcpStream> = self.held.lock().unwrap().drain(..).collect();
        assert!(!held.is_empty(), "no socket was held");
        let closed = join_all(held.into_iter().map(|mut sock| async move {
            let mut buf = [0u8; 4096];
            loop {
                match sock.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        }));
        timeout(within, closed).await.is_ok()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        self.cut_all();
    }
}

/// A pool through `proxy` with `connect_timeout`, and a session of it: cold, or warm (one call
/// made, then its connection cut, so the next call reconnects).
async fn proxied_session(
    proxy: &Proxy,
    server: &K8sServer,
    connect_timeout: Duration,
    warm: bool,
) -> (SessionPool, k8s_session::Session) {
    let pool = SessionPool::builder(KubeconfigSource::from_kubeconfig(proxy.kubeconfig(server)))
        .knobs_from(|_| None)
        .connect_timeout(Some(connect_timeout))
        .build();
    let session = pool.session(&key("east")).await.unwrap();
    if warm {
        assert!(list_pods(&session).await.is_ok());
        proxy.cut_all();
    }
    (pool, session)
}

fn proxied_pool(proxy: &Proxy, server: &K8sServer) -> SessionPool {
    SessionPool::builder(KubeconfigSource::from_kubeconfig(proxy.kubeconfig(server)))
        .knobs_from(|_| None)
        .build()
}

// ---------------------------------------------------------------------------------------------
// Opening the connection: cancellation, failures, timeouts.

// K9: callers cancelled while the connection is being opened (the probe among them) do not
// strand the others, and no extra connection is opened for them.
#[tokio::test]
async fn callers_cancelled_during_open_leave_one_connection() {
    let server = K8sServer::start().await.unwrap();
    let proxy = Proxy::start(server.addr(), Mode::Delay(ms(600))).await;
    let pool = proxied_pool(&proxy, &server);
    let session = pool.session(&key("east")).await.unwrap();
    let cancelled = join_all((0..10).map(|_| timeout(ms(150), list_pods(&session))));
    let others = join_all((0..10).map(|_| list_pods(&session)));
    let (cancelled, others) = timeout(Duration::from_secs(10), async {
        tokio::join!(biased; cancelled, others)
    })
    .await
    .expect("calls waiting on a cancelled opener hung");
    assert!(cancelled.iter().all(|r| r.is_err()), "{cancelled:?}");
    all_ok(&others);
    assert_eq!(proxy.accepted(), 1, "connect attempts for one cold burst");
    assert_eq!(server.tls_connections(), 1);
    assert_eq!(pool.connection_stats().http2_connections, 1);
}

// K9: EVERY caller of a cold burst gives up during the open; the next burst gets through, on one
// connection, and no half-opened connection is left behind.
#[tokio::test]
async fn all_callers_cancelled_during_open_then_burst() {
    let server = K8sServer::start().await.unwrap();
    let proxy = Proxy::start(server.addr(), Mode::Delay(ms(500))).await;
    let pool = proxied_pool(&proxy, &server);
    let session = pool.session(&key("east")).await.unwrap();
    let cancelled = timeout(
        Duration::from_secs(10),
        join_all((0..10).map(|_| timeout(ms(150), list_pods(&session)))),
    )
    .await
    .unwrap();
    assert!(cancelled.iter().all(|r| r.is_err()), "{cancelled:?}");
    all_ok(&lists(&session, 20).await);
    assert!(
        proxy.accepted() <= 2,
        "{} connect attempts",
        proxy.accepted()
    );
    // Past every proxy delay: only the connection in use is open.
    tokio::time::sleep(ms(700)).await;
    assert!(
        wait_until(Duration::from_secs(3), || server.open_connections() == 1).await,
        "open connections: {}",
        server.open_connections()
    );
    let conns: Vec<u64> = server.requests().iter().map(|r| r.connection).collect();
    assert!(
        conns.windows(2).all(|w| w[0] == w[1]),
        "the burst was spread over connections {conns:?}"
    );
}

// K9: the server is gone (connections refused) for a cold burst: one connect attempt, every
// call fails, no hang; once it is back, the next burst opens exactly ONE connection.
#[tokio::test]
async fn refused_then_back_opens_one_connection() {
    let server = K8sServer::start().await.unwrap();
    let proxy = Proxy::start(server.addr(), Mode::Refuse).await;
    let pool = proxied_pool(&proxy, &server);
    let k = key("east");
    let failed = burst(&pool, &k, 20).await;
    assert_eq!(failures(&failed), 20, "{failed:?}");
    assert_eq!(proxy.accepted(), 1, "connect attempts for a refused burst");
    proxy.set(Mode::Forward);
    all_ok(&burst(&pool, &k, 30).await);
    assert_eq!(proxy.accepted(), 2);
    assert_eq!(server.tls_connections(), 1);
    assert_eq!(pool.stats().creations, 1);
}

// K9 + connect timeout: a black-holed cold burst fails at the connect timeout (one attempt);
// once the server answers again, one connection serves the next burst.
#[tokio::test]
async fn connect_timeout_then_back_opens_one_connection() {
    let server = K8sServer::start().await.unwrap();
    let proxy = Proxy::start(server.addr(), Mode::Silent).await;
    let pool = SessionPool::builder(KubeconfigSource::from_kubeconfig(proxy.kubeconfig(&server)))
        .knobs_from(|_| None)
        .connect_timeout(Some(ms(300)))
        .build();
    let k = key("east");
    let started = Instant::now();
    let failed = burst(&pool, &k, 10).await;
    assert_eq!(failures(&failed), 10, "{failed:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(proxy.accepted(), 1);
    proxy.set(Mode::Forward);
    all_ok(&burst(&pool, &k, 30).await);
    assert_eq!(proxy.accepted(), 2);
    assert_eq!(server.tls_connections(), 1);
}

// A warm connection is lost while the server is down: the next burst fails (one attempt, no
// hang); when the server is back, exactly one new connection.
#[tokio::test]
async fn warm_connection_lost_server_down_then_back() {
    let server = K8sServer::start().await.unwrap();
    let proxy = Proxy::start(server.addr(), Mode::Forward).await;
    let pool = proxied_pool(&proxy, &server);
    let k = key("east");
    all_ok(&burst(&pool, &k, 10).await);
    proxy.set(Mode::Refuse);
    proxy.cut_all();
    assert!(wait_until(Duration::from_secs(3), || server.open_connections() == 0).await);
    tokio::time::sleep(ms(100)).await;
    let failed = burst(&pool, &k, 20).await;
    assert_eq!(failures(&failed), 20, "{failed:?}");
    assert_eq!(
        proxy.accepted(),
        2,
        "connect attempts for one burst while down"
    );
    proxy.set(Mode::Forward);
    all_ok(&burst(&pool, &k, 30).await);
    assert_eq!(server.tls_connections(), 2);
    assert_eq!(proxy.accepted(), 3);
    assert_eq!(pool.stats().creations, 1);
}

// K9: a connection the peer closed while idle (hyper reports it closed) is replaced by the next
// request; no call of the following burst fails and only one new connection is opened.
#[tokio::test]
async fn idle_connection_closed_by_peer_is_replaced_silently() {
    let server = K8sServer::start().await.unwrap();
    let proxy = Proxy::start(server.addr(), Mode::Forward).await;
    let pool = proxied_pool(&proxy, &server);
    let k = key("east");
    all_ok(&burst(&pool, &k, 10).await);
    for round in 0..3u64 {
        proxy.cut_all();
        assert!(wait_until(Duration::from_secs(3), || server.open_connections() == 0).await);
        tokio::time::sleep(ms(100)).await;
        all_ok(&burst(&pool, &k, 30).await);
        assert_eq!(server.tls_connections(), round + 2, "round {round}");
    }
    assert_eq!(pool.connection_stats().http2_connections, 4);
}

// The read timeout is about answers, not the handshake: a slow handshake (within the connect
// timeout) must not fail the calls waiting for it with a read timeout.
#[tokio::test]
async fn slow_handshake_within_connect_timeout_beats_read_timeout() {
    let server = K8sServer::start().await.unwrap();
    let proxy = Proxy::start(server.addr(), Mode::Delay(ms(700))).await;
    let pool = SessionPool::builder(KubeconfigSource::from_kubeconfig(proxy.kubeconfig(&server)))
        .knobs_from(|_| None)
        .read_timeout(Some(ms(300)))
        .connect_timeout(Some(Duration::from_secs(5)))
        .build();
    let session = pool.session(&key("east")).await.unwrap();
    let results = lists(&session, 10).await;
    assert!(
        results.iter().all(|r| r.is_ok()) || results.iter().all(|r| r.is_err()),
        "the opener and its waiters got different outcomes: {results:?}"
    );
    all_ok(&results);
    assert_eq!(server.tls_connections(), 1);
}

// A cancelled opener on a RECONNECT (not a cold session): the waiters still get through on one
// new connection.
#[tokio::test]
async fn cancelled_opener_on_reconnect() {
    let server = K8sServer::start().await.unwrap();
    let proxy = Proxy::start(server.addr(), Mode::Forward).await;
    let pool = proxied_pool(&proxy, &server);
    let session = pool.session(&key("east")).await.unwrap();
    all_ok(&lists(&session, 5).await);
    proxy.set(Mode::Delay(ms(500)));
    proxy.cut_all();
    assert!(wait_until(Duration::from_secs(3), || server.open_connections() == 0).await);
    tokio::time::sleep(ms(100)).await;
    let (opener, others) = timeout(Duration::from_secs(10), async {
        tokio::join!(biased; timeout(ms(150), list_pods(&session)), join_all((0..10).map(|_| list_pods(&session))))
    })
    .await
    .expect("hung");
    assert!(opener.is_err());
    all_ok(&others);
    assert_eq!(server.tls_connections(), 2);
    assert_eq!(proxy.accepted(), 2);
}

// Dropping the pool (and every handle) while the connection is being opened: no hang, and no
// connection is left open at the server once the attempt would have completed.
#[tokio::test]
async fn pool_dropped_during_open_leaks_no_connection() {
    let server = K8sServer::start().await.unwrap();
    let proxy = Proxy::start(server.addr(), Mode::Delay(ms(400))).await;
    let pool = Arc::new(proxied_pool(&proxy, &server));
    let task = {
        let pool = pool.clone();
        tokio::spawn(async move { burst(&pool, &key("east"), 10).await })
    };
    assert!(wait_until(Duration::from_secs(3), || proxy.accepted() >= 1).await);
    task.abort();
    let _ = task.await;
    drop(pool);
    tokio::time::sleep(ms(800)).await;
    assert!(
        wait_until(Duration::from_secs(5), || server.open_connections() == 0).await,
        "a connection opened for a dropped pool stays open: {} (TLS {})",
        server.open_connections(),
        server.tls_connections()
    );
}

// A session dropped while its connection attempt is stalled (the server accepted TCP and never
// answers the TLS hello; the connect timeout is an hour) closes that socket at once: the
// attempt, abandoned by its caller, must not keep the session (and the socket) alive. Both the
// first attempt (the probe) and a reconnect of the HTTP/2 connection.
#[tokio::test]
async fn dropped_session_closes_its_stalled_attempt() {
    let server = K8sServer::start().await.unwrap();
    for warm in [false, true] {
        let proxy = Proxy::start(server.addr(), Mode::Forward).await;
        let (pool, session) =
            proxied_session(&proxy, &server, Duration::from_secs(3600), warm).await;
        proxy.set(Mode::Silent);
        assert!(
            timeout(ms(300), list_pods(&session)).await.is_err(),
            "a call through a silent server returned"
        );
        drop(session);
        pool.shutdown().await;
        drop(pool);
        assert!(
            proxy.held_closed_by_client(Duration::from_secs(5)).await,
            "the stalled attempt of a dropped session (warm: {warm}) keeps its socket open"
        );
    }
}

// A connection attempt every caller abandoned serves the next request, even one made after the
// attempt's connect timeout has passed (the server answered in time; the attempt was only
// waiting to be polled): no failure, no second connection. The first attempt (the probe) and a
// reconnect of the HTTP/2 connection.
#[tokio::test]
async fn abandoned_attempt_serves_the_next_request() {
    let server = K8sServer::start().await.unwrap();
    for warm in [false, true] {
        let proxy = Proxy::start(server.addr(), Mode::Forward).await;
        let (_pool, session) = proxied_session(&proxy, &server, ms(500), warm).await;
        proxy.set(Mode::Delay(ms(300)));
        assert!(
            timeout(ms(100), list_pods(&session)).await.is_err(),
            "the call returned before the delayed connection"
        );
        tokio::time::sleep(ms(800)).await;
        proxy.set(Mode::Refuse);
        let next = timeout(Duration::from_secs(5), list_pods(&session))
            .await
            .expect("hung");
        assert!(
            next.is_ok(),
            "the call after an abandoned attempt (warm: {warm}) failed: {next:?}"
        );
        assert_eq!(proxy.accepted(), if warm { 2 } else { 1 });
    }
}

// reset() during the open with the callers still waiting: they get through (they hold the
// session), and the retired session's connection closes once they are gone.
#[tokio::test]
async fn reset_during_open_then_connection_closes() {
    let server = K8sServer::start().await.unwrap();
    let proxy = Proxy::start(server.addr(), Mode::Delay(ms(400))).await;
    let pool = proxied_pool(&proxy, &server);
    let k = key("east");
    let session = pool.session(&k).await.unwrap();
    let (results, report) = tokio::join!(lists(&session, 10), async {
        assert!(wait_until(Duration::from_secs(3), || proxy.accepted() >= 1).await);
        pool.reset().await
    });
    all_ok(&results);
    assert_eq!(report.retired, 1, "{report:?}");
    drop(session);
    assert!(
        wait_until(Duration::from_secs(5), || server.open_connections() == 0).await,
        "a retired session's connection stays open: {}",
        server.open_connections()
    );
    proxy.set(Mode::Forward);
    all_ok(&burst(&pool, &k, 5).await);
    assert_eq!(pool.stats().creations, 2);
}

// ---------------------------------------------------------------------------------------------
// Losing the connection with requests queued: those it never started go out on the new one.

// K10: with a stream bound of one, the calls waiting for the stream when the connection is reset
// never started on it: only the reset stream's call fails.
#[tokio::test]
async fn reset_with_calls_queued_on_the_stream_bound() {
    let server = K8sServer::start().await.unwrap();
    let pool = SessionPool::builder(KubeconfigSource::from_kubeconfig(server.kubeconfig_token()))
        .knobs_from(|_| None)
        .max_streams_per_session(Some(1))
        .build();
    let k = key("east");
    let session = pool.session(&k).await.unwrap();
    assert!(list_pods(&session).await.is_ok());
    server.inject(NODES, Fault::reset().with_latency(ms(300)).times(1));
    let (node, queued) = timeout(Duration::from_secs(10), async {
        tokio::join!(biased; list_nodes(&session), async {
            assert!(wait_until(Duration::from_secs(3), || server.in_flight() >= 1).await);
            join_all((0..5).map(|_| list_pods(&session))).await
        })
    })
    .await
    .expect("hung");
    assert!(node.is_err());
    all_ok(&queued);
    assert_eq!(server.tls_connections(), 2);
}

/// 99 pod lists the server holds for `hold` and a node list that meets `fault`, which takes the
/// connection down with 100 streams open; 50 more calls wait beyond the server's stream limit.
/// The 100 fail; the 50 the connection never started go out on ONE new connection.
async fn lose_connection_beyond_the_stream_limit(
    server: &K8sServer,
    pool: &SessionPool,
    hold: Duration,
    fault: Fault,
) {
    let session = pool.session(&key("east")).await.unwrap();
    all_ok(&lists(&session, 5).await);
    server.inject(PODS, Fault::latency(hold).times(99));
    server.inject(NODES, fault);
    let (first, (node, extra)) = timeout(Duration::from_secs(15), async {
        tokio::join!(join_all((0..99).map(|_| list_pods(&session))), async {
            assert!(wait_until(Duration::from_secs(3), || server.in_flight() >= 99).await);
            tokio::join!(list_nodes(&session), async {
                assert!(wait_until(Duration::from_secs(3), || server.in_flight() >= 100).await);
                join_all((0..50).map(|_| list_pods(&session))).await
            })
        })
    })
    .await
    .expect("the lost connection hung its calls");
    assert!(node.is_err());
    assert_eq!(failures(&first), 99);
    assert!(
        failures(&extra) <= 1,
        "{} of 50 calls the lost connection never started failed: {:?}",
        failures(&extra),
        extra.iter().find(|r| r.is_err())
    );
    assert_eq!(server.tls_connections(), 2);
}

// K10: calls beyond the server's 100 streams wait for a stream; when the connection is reset
// with 100 streams open, the calls it never started go out on the new connection.
#[tokio::test]
async fn reset_with_calls_beyond_the_server_stream_limit() {
    let server = K8sServer::start().await.unwrap();
    let fault = Fault::reset().with_latency(ms(500)).times(1);
    lose_connection_beyond_the_stream_limit(
        &server,
        &token_pool(&server),
        Duration::from_secs(2),
        fault,
    )
    .await;
}

// K10 under load: a stalled connection with calls queued beyond the server's stream limit:
// keep-alive closes it, its 100 streams fail, the queued calls succeed on ONE new connection.
#[tokio::test]
async fn stall_with_calls_beyond_the_server_stream_limit() {
    let server = K8sServer::start().await.unwrap();
    let pool = SessionPool::builder(KubeconfigSource::from_kubeconfig(server.kubeconfig_token()))
        .knobs_from(|_| None)
        .http2_keep_alive(ms(100), ms(200))
        .build();
    let fault = Fault::stall_connection().times(1);
    lose_connection_beyond_the_stream_limit(&server, &pool, Duration::from_secs(3), fault).await;
}

// K10: the same with the session's own bound: calls waiting for the one stream when keep-alive
// closes the stalled connection succeed on the new one.
#[tokio::test]
async fn stall_with_calls_queued_on_the_stream_bound() {
    let server = K8sServer::start().await.unwrap();
    let pool = SessionPool::builder(KubeconfigSource::from_kubeconfig(server.kubeconfig_token()))
        .knobs_from(|_| None)
        .max_streams_per_session(Some(1))
        .http2_keep_alive(ms(100), ms(200))
        .build();
    let k = key("east");
    let session = pool.session(&k).await.unwrap();
    assert!(list_pods(&session).await.is_ok());
    server.inject(NODES, Fault::stall_connection().times(1));
    let (node, queued) = timeout(Duration::from_secs(10), async {
        tokio::join!(biased; list_nodes(&session), async {
            assert!(wait_until(Duration::from_secs(3), || server.in_flight() >= 1).await);
            join_all((0..5).map(|_| list_pods(&session))).await
        })
    })
    .await
    .expect("hung");
    assert!(node.is_err());
    all_ok(&queued);
    assert_eq!(server.tls_connections(), 2);
}

// K9: a server that spoke HTTP/2 answers the reconnect with HTTP/1.1 while a whole burst waits
// for the new connection: the burst goes over HTTP/1.1 and no call fails (every one of the 30
// failed with NotHttp2 when the waiters got the reconnect's error).
#[tokio::test]
async fn reconnect_to_http1_under_a_burst() {
    let server = K8sServer::start().await.unwrap();
    let pool = token_pool(&server);
    let k = key("east");
    let session = pool.session(&k).await.unwrap();
    all_ok(&lists(&session, 5).await);
    server.serve_http2(false);
    server.inject(NODES, Fault::reset().times(1));
    assert!(list_nodes(&session).await.is_err());
    assert!(wait_until(Duration::from_secs(3), || server.open_connections() == 0).await);
    let results = lists(&session, 30).await;
    assert!(
        failures(&results) == 0,
        "{} of 30 calls failed: {:?}",
        failures(&results),
        results.iter().find(|r| r.is_err())
    );
    server.clear_requests();
    all_ok(&lists(&session, 10).await);
    assert!(
        server
            .requests()
            .iter()
            .all(|r| r.version == http::Version::HTTP_11)
    );
    assert_eq!(pool.connection_stats().http1_fallbacks, 1);
    assert_eq!(server.h2_connections(), 1);
    assert_eq!(pool.stats().creations, 1);
}

// ---------------------------------------------------------------------------------------------
// Idle: a connection that carried no stream for 90 s is let go; a stream in progress keeps it.

/// What a session does around one long stream: a warm connection; a pod list the server holds
/// for `latency` (virtual time); at `mark` after it started, if any (virtual time moved only while
/// that one stream waits at the server), a node list; then the stream's answer; then a burst.
/// Returns (the long stream, the call at the mark, (TLS, open) connections at the mark, TLS
/// connections after the burst, connections still open after it (waited for down to one)).
async fn long_stream_then_call(
    latency: u64,
    mark: Option<u64>,
) -> (
    Result<usize, String>,
    Result<usize, String>,
    (u64, u64),
    u64,
    u64,
) {
    let server = K8sServer::start().await.unwrap();
    let pool = SessionPool::builder(KubeconfigSource::from_kubeconfig(server.kubeconfig_token()))
        .knobs_from(|_| None)
        .ttl(Duration::from_secs(3600))
        .http2_keep_alive(Duration::from_secs(3600), Duration::from_secs(3600))
        .build();
    let session = pool.session(&key("east")).await.unwrap();
    assert!(list_pods(&session).await.is_ok());
    server.inject(PODS, Fault::latency(Duration::from_secs(latency)).times(1));
    let (long, (during, at_mark)) = tokio::join!(list_pods(&session), async {
        assert!(wait_until(Duration::from_secs(3), || server.in_flight() >= 1).await);
        let mut during = Ok(0);
        let mut at_mark = (0, 0);
        if let Some(mark) = mark {
            tokio::time::pause();
            tokio::time::advance(Duration::from_secs(mark)).await;
            settle().await;
            tokio::time::resume();
            during = timeout(Duration::from_secs(5), list_nodes(&session))
                .await
                .unwrap_or_else(|_| Err("the call at the mark hung".into()));
            at_mark = (server.tls_connections(), server.open_connections());
        }
        tokio::time::pause();
        tokio::time::advance(Duration::from_secs(latency - mark.unwrap_or(0) + 1)).await;
        settle().await;
        tokio::time::resume();
        (during, at_mark)
    });
    all_ok(&lists(&session, 20).await);
    wait_until(Duration::from_secs(3), || server.open_connections() <= 1).await;
    (
        long,
        during,
        at_mark,
        server.tls_connections(),
        server.open_connections(),
    )
}

// Control: below the 90 s idle mark, a call made while a long stream runs shares its
// connection, and so does the burst after it.
#[tokio::test]
async fn long_stream_below_the_idle_mark_shares_its_connection() {
    let (long, during, at_mark, after, _) = long_stream_then_call(85, Some(80)).await;
    assert!(long.is_ok(), "{long:?}");
    assert!(during.is_ok(), "{during:?}");
    assert_eq!(at_mark, (1, 1));
    assert_eq!(after, 1);
}

// A stream that runs past the 90 s idle mark must not fail, and a call made while it is still
// running must not open a second connection: the connection is in use (K8: ONE connection per
// cluster; a watch or a followed log is such a stream).
#[tokio::test]
async fn idle_mark_passes_during_a_long_stream() {
    let (long, during, at_mark, _, _) = long_stream_then_call(100, Some(91)).await;
    assert!(
        long.is_ok(),
        "a stream in progress failed when the idle mark passed: {long:?}"
    );
    assert!(during.is_ok(), "{during:?}");
    assert_eq!(
        at_mark,
        (1, 1),
        "(TLS connections, open connections) at 91 s, while a stream still ran on the first one"
    );
}

// Idle let-go with a stream in progress: whatever opened beside it, the let-go connection closes
// once its stream has finished (no socket left behind), and the stream succeeded.
#[tokio::test]
async fn let_go_connection_closes_after_its_stream() {
    let (long, during, _, _, open_after) = long_stream_then_call(100, Some(91)).await;
    assert!(long.is_ok(), "{long:?}");
    assert!(during.is_ok(), "{during:?}");
    assert_eq!(open_after, 1, "connections open once the long stream ended");
}

// A call made right at the 90 s idle mark (just before, at, just after; the let-go may be running
// at that very moment) succeeds.
#[tokio::test]
async fn call_at_the_idle_mark_succeeds() {
    for mark in [89_999u64, 90_000, 90_001, 90_050] {
        let server = K8sServer::start().await.unwrap();
        let pool =
            SessionPool::builder(KubeconfigSource::from_kubeconfig(server.kubeconfig_token()))
                .knobs_from(|_| None)
                .ttl(Duration::from_secs(3600))
                .http2_keep_alive(Duration::from_secs(3600), Duration::from_secs(3600))
                .build();
        let session = pool.session(&key("east")).await.unwrap();
        assert!(list_pods(&session).await.is_ok());
        tokio::time::pause();
        tokio::time::advance(ms(mark)).await;
        tokio::time::resume();
        let r = timeout(Duration::from_secs(5), lists(&session, 5)).await;
        let r = r.unwrap_or_else(|_| panic!("calls at {mark} ms hung"));
        assert_eq!(failures(&r), 0, "calls at {mark} ms: {r:?}");
        assert!(server.tls_connections() <= 2);
    }
}

// A connection whose long stream has just ended was in use until then: the burst right after
// reuses it (it was not idle for 90 s).
#[tokio::test]
async fn connection_used_by_a_long_stream_is_not_idle() {
    let (long, _, _, after, _) = long_stream_then_call(100, None).await;
    assert!(long.is_ok(), "{long:?}");
    assert_eq!(
        after, 1,
        "a connection used until a moment ago (by a 100 s stream) was let go as idle"
    );
}

// K10 + idle: with a bound of ONE stream per session, a call made past the 90 s idle mark while
// the one stream still runs must wait for it, not run beside it on a second connection.
#[tokio::test]
async fn stream_bound_holds_across_the_idle_mark() {
    let server = K8sServer::start().await.unwrap();
    let pool = SessionPool::builder(KubeconfigSource::from_kubeconfig(server.kubeconfig_token()))
        .knobs_from(|_| None)
        .ttl(Duration::from_secs(3600))
        .http2_keep_alive(Duration::from_secs(3600), Duration::from_secs(3600))
        .max_streams_per_session(Some(1))
        .build();
    let session = pool.session(&key("east")).await.unwrap();
    assert!(list_pods(&session).await.is_ok());
    server.inject(PODS, Fault::latency(Duration::from_secs(100)).times(1));
    let (long, early) = tokio::join!(list_pods(&session), async {
        assert!(wait_until(Duration::from_secs(3), || server.in_flight() >= 1).await);
        tokio::time::pause();
        tokio::time::advance(Duration::from_secs(91)).await;
        settle().await;
        tokio::time::resume();
        let early = timeout(ms(300), list_nodes(&session)).await;
        tokio::time::pause();
        tokio::time::advance(Duration::from_secs(10)).await;
        settle().await;
        tokio::time::resume();
        early
    });
    assert!(long.is_ok(), "{long:?}");
    assert!(
        early.is_err(),
        "a second call ran while the only stream was taken ({:?}); server peak in flight {}, \
         TLS connections {}",
        early,
        server.peak_in_flight(),
        server.tls_connections()
    );
    assert_eq!(server.peak_in_flight(), 1);
}

// ---------------------------------------------------------------------------------------------
// Stream permits survive failed opens.

// K10: failed opens (refused) and callers cancelled while waiting for the open never leak a
// stream of the session's bound: once the server is back, calls run, bounded, none hangs.
#[tokio::test]
async fn failed_and_cancelled_opens_leak_no_stream() {
    let server = K8sServer::start().await.unwrap();
    server.inject(PODS, Fault::latency(ms(50)));
    let proxy = Proxy::start(server.addr(), Mode::Refuse).await;
    let pool = SessionPool::builder(KubeconfigSource::from_kubeconfig(proxy.kubeconfig(&server)))
        .knobs_from(|_| None)
        .max_streams_per_session(Some(2))
        .build();
    let session = pool.session(&key("east")).await.unwrap();
    for _ in 0..3 {
        let failed = lists(&session, 10).await;
        assert_eq!(failures(&failed), 10);
    }
    proxy.set(Mode::Delay(ms(400)));
    let cancelled = timeout(
        Duration::from_secs(10),
        join_all((0..10).map(|_| timeout(ms(100), list_pods(&session)))),
    )
    .await
    .unwrap();
    assert!(cancelled.iter().all(|r| r.is_err()));
    proxy.set(Mode::Forward);
    let results = timeout(Duration::from_secs(10), lists(&session, 20))
        .await
        .expect("stream permits leaked: calls hang");
    all_ok(&results);
    assert_eq!(server.peak_in_flight(), 2, "bound of 2");
}

// ---------------------------------------------------------------------------------------------
// Multi-threaded runtimes.

// Cold bursts on many sessions at once (different keys, two worker threads): exactly one TLS
// connection per session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_thread_concurrent_cold_bursts_across_keys() {
    let server = K8sServer::start().await.unwrap();
    server.inject(PODS, Fault::latency(ms(10)));
    let pool = Arc::new(token_pool(&server));
    const KEYS: u64 = 8;
    for round in 0..3u64 {
        let tasks: Vec<_> = (0..KEYS)
            .flat_map(|n| {
                let k = key(&format!("r{round}-c{n}"));
                let pool = pool.clone();
                (0..30).map(move |_| {
                    let (pool, k) = (pool.clone(), k.clone());
                    tokio::spawn(async move { call(&pool, &k).await })
                })
            })
            .collect();
        let results = timeout(Duration::from_secs(20), join_all(tasks))
            .await
            .expect("bursts hung");
        all_ok(&results.into_iter().map(|r| r.unwrap()).collect::<Vec<_>>());
        assert_eq!(
            server.tls_connections(),
            (round + 1) * KEYS,
            "round {round}: a session opened more than one connection"
        );
    }
    assert_eq!(pool.connection_stats().http2_connections, 3 * KEYS);
    assert_eq!(pool.stats().creations, 3 * KEYS);
}

// After the connection is reset (and known closed), a burst on two worker threads replaces it
// with exactly ONE new connection, round after round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_thread_burst_after_reset_opens_one_connection() {
    let server = K8sServer::start().await.unwrap();
    server.inject(PODS, Fault::latency(ms(10)));
    let pool = Arc::new(token_pool(&server));
    let k = key("east");
    call(&pool, &k).await.unwrap();
    for round in 0..8u64 {
        server.inject(NODES, Fault::reset().times(1));
        let session = pool.session(&k).await.unwrap();
        let reset = timeout(Duration::from_secs(5), list_nodes(&session))
            .await
            .unwrap();
        assert!(reset.is_err());
        drop(session);
        assert!(wait_until(Duration::from_secs(3), || server.open_connections() == 0).await);
        tokio::time::sleep(ms(20)).await;
        all_ok(&spawned_burst(&pool, &k, 60).await);
        assert_eq!(
            server.tls_connections(),
            round + 2,
            "round {round}: the closed connection was replaced more than once"
        );
    }
    assert_eq!(pool.stats().creations, 1);
}

// A connection reset while calls keep arriving on two worker threads: the calls it carried may
// fail, but it is replaced once, and every call that starts after the replacement succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_thread_reset_mid_stream_of_calls_replaced_once() {
    let server = K8sServer::start().await.unwrap();
    let pool = Arc::new(token_pool(&server));
    let k = key("east");
    call(&pool, &k).await.unwrap();
    server.inject(PODS, Fault::latency(ms(300)).times(40));
    server.inject(NODES, Fault::reset().with_latency(ms(150)).times(1));
    let mut tasks = Vec::new();
    for _ in 0..40 {
        let (pool, k) = (pool.clone(), k.clone());
        tasks.push(tokio::spawn(async move { call(&pool, &k).await }));
    }
    {
        let (pool, k) = (pool.clone(), k.clone());
        tasks.push(tokio::spawn(async move {
            let session = pool.session(&k).await.map_err(|e| format!("{e:?}"))?;
            list_nodes(&session).await
        }));
    }
    for _ in 0..100 {
        tokio::time::sleep(ms(6)).await;
        let (pool, k) = (pool.clone(), k.clone());
        tasks.push(tokio::spawn(async move { call(&pool, &k).await }));
    }
    let results = timeout(Duration::from_secs(20), join_all(tasks))
        .await
        .expect("hung");
    let results: Vec<_> = results.into_iter().map(|r| r.unwrap()).collect();
    assert!(failures(&results) >= 1, "the reset failed nothing");
    assert_eq!(
        server.tls_connections(),
        2,
        "the reset connection was replaced more than once"
    );
    all_ok(&burst(&pool, &k, 20).await);
    assert_eq!(server.tls_connections(), 2);
}

// Cold bursts on two worker threads where half the callers are aborted while the connection is
// being opened: the rest get through, and each session opens exactly one connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_thread_aborted_callers_during_open() {
    let server = K8sServer::start().await.unwrap();
    let proxy = Proxy::start(server.addr(), Mode::Delay(ms(200))).await;
    let pool = Arc::new(proxied_pool(&proxy, &server));
    for round in 0..4u64 {
        let k = key(&format!("c{round}"));
        let tasks: Vec<_> = (0..40)
            .map(|_| {
                let (pool, k) = (pool.clone(), k.clone());
                tokio::spawn(async move { call(&pool, &k).await })
            })
            .collect();
        tokio::time::sleep(ms(80)).await;
        for t in tasks.iter().step_by(2) {
            t.abort();
        }
        let results = timeout(Duration::from_secs(10), join_all(tasks))
            .await
            .expect("hung");
        let survivors: Vec<_> = results.into_iter().filter_map(|r| r.ok()).collect();
        assert!(survivors.len() >= 20, "{}", survivors.len());
        all_ok(&survivors);
        assert_eq!(
            server.tls_connections(),
            round + 1,
            "round {round}: aborted callers opened another connection"
        );
        assert_eq!(proxy.accepted(), round + 1);
    }
}

// The connection is cut (peer close) again and again while two worker threads keep calling:
// each loss is replaced by exactly one connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_thread_repeated_cuts_under_load_replaced_once_each() {
    let server = K8sServer::start().await.unwrap();
    server.inject(PODS, Fault::latency(ms(15)));
    let proxy = Proxy::start(server.addr(), Mode::Forward).await;
    let pool = Arc::new(proxied_pool(&proxy, &server));
    let k = key("east");
    all_ok(&burst(&pool, &k, 5).await);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Calls finished so far, ok and failed (for the failure messages).
    let done = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
    let workers: Vec<_> = (0..8)
        .map(|_| {
            let (pool, k, stop, done) = (pool.clone(), k.clone(), stop.clone(), done.clone());
            tokio::spawn(async move {
                let (mut ok, mut failed) = (0u64, 0u64);
                while !stop.load(Ordering::SeqCst) {
                    let outcome = match timeout(Duration::from_secs(5), call(&pool, &k)).await {
                        Ok(Ok(_)) => 0,
                        Ok(Err(_)) => 1,
                        Err(_) => panic!("a call hung"),
                    };
                    done[outcome].fetch_add(1, Ordering::Relaxed);
                    if outcome == 0 {
                        ok += 1;
                    } else {
                        failed += 1;
                    }
                }
                (ok, failed)
            })
        })
        .collect();
    const CUTS: u64 = 6;
    for cut in 0..CUTS {
        tokio::time::sleep(ms(100)).await;
        proxy.cut_all();
        assert!(
            wait_until(Duration::from_secs(3), || server.tls_connections()
                >= cut + 2
                && server.open_connections() == 1)
            .await,
            "cut {cut}: no single replacement (TLS {}, open {}; the proxy accepted {} TCP \
             connections; calls ok {}, failed {}; {:?})",
            server.tls_connections(),
            server.open_connections(),
            proxy.accepted(),
            done[0].load(Ordering::Relaxed),
            done[1].load(Ordering::Relaxed),
            pool.connection_stats()
        );
    }
    tokio::time::sleep(ms(100)).await;
    stop.store(true, Ordering::SeqCst);
    let counts = timeout(Duration::from_secs(10), join_all(workers))
        .await
        .expect("workers hung");
    let (ok, failed) = counts
        .into_iter()
        .map(|r| r.unwrap())
        .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
    assert!(ok > 50, "ok {ok}, failed {failed}");
    assert_eq!(
        server.tls_connections(),
        CUTS + 1,
        "connections opened for {CUTS} cuts (ok {ok}, failed {failed})"
    );
    assert_eq!(pool.stats().creations, 1);
}
