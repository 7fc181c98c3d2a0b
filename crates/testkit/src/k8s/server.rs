//! The server: TLS accept loop (connection counting, resets), per-request auth, faults and log.
//!
//! Each connection speaks HTTP/2 or HTTP/1.1 (hyper-util's auto server; ALPN offers `h2` and
//! `http/1.1`, at most 100 concurrent streams per HTTP/2 connection, as kube-apiserver) unless
//! [`K8sServer::serve_http2`](super::K8sServer::serve_http2) turned HTTP/2 off: then ALPN
//! offers `http/1.1` only and the connection is served as HTTP/1.1.

use std::collections::HashSet;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use http::{HeaderValue, Method, Request, header};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;

use super::arm;
use super::faults::{AuthMethod, Fault, Faults, RequestRecord};
use super::fixtures::Fixtures;
use super::kubeconfig::{KubeAuth, build_kubeconfig, kubeconfig_text};
use super::log::RequestLog;
use super::resources;
use super::respond::{Resp, arm_error, garbage, json, status};
use crate::tls::{TestCa, TlsError};

/// State shared by the server handle, the accept loop and every connection.
pub(crate) struct Shared {
    pub(crate) ca: TestCa,
    pub(crate) url: String,
    pub(crate) default_token: String,
    pub(crate) tokens: Mutex<HashSet<String>>,
    pub(crate) fixtures: RwLock<Fixtures>,
    pub(crate) faults: Faults,
    pub(crate) log: Mutex<RequestLog>,
    pub(crate) tcp_accepted: AtomicU64,
    pub(crate) tls_accepted: AtomicU64,
    pub(crate) tls_failed: AtomicU64,
    /// Requests being answered now, and the most at once.
    pub(crate) in_flight: Gauge,
    /// TLS connections open now, and the most at once.
    pub(crate) open_connections: Gauge,
    /// New connections are served HTTP/1.1 only (ALPN `http/1.1`, no HTTP/2 preface accepted).
    pub(crate) http1_only: AtomicBool,
    /// TLS connections that negotiated `h2` by ALPN.
    pub(crate) h2_accepted: AtomicU64,
}

/// Concurrent streams per HTTP/2 connection, kube-apiserver's default.
pub(crate) const MAX_CONCURRENT_STREAMS: u32 = 100;

/// A count of things in progress and its high-water mark.
#[derive(Default)]
pub(crate) struct Gauge {
    now: AtomicU64,
    peak: AtomicU64,
}

impl Gauge {
    /// Count one more until the returned guard is dropped.
    fn enter(&self) -> GaugeGuard<'_> {
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
        GaugeGuard(self)
    }

    pub(crate) fn now(&self) -> u64 {
        self.now.load(Ordering::SeqCst)
    }

    pub(crate) fn peak(&self) -> u64 {
        self.peak.load(Ordering::SeqCst)
    }
}

struct GaugeGuard<'a>(&'a Gauge);

impl Drop for GaugeGuard<'_> {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A token nobody can guess across test runs (not a secret anyone relies on).
pub(crate) fn random_token(prefix: &str) -> String {
    let mut h = RandomState::new().build_hasher();
    h.write_u64(0x7e57);
    let a = h.finish();
    let mut h = RandomState::new().build_hasher();
    h.write_u64(a);
    format!("{prefix}-{a:016x}{:016x}", h.finish())
}

/// What one TLS connection knows about itself.
#[derive(Clone)]
struct Conn {
    id: u64,
    client_cert: bool,
    reset: Arc<Notify>,
    stall: Arc<Notify>,
}

/// The error a handler returns to reset its stream (hyper sends `RST_STREAM` over HTTP/2 and
/// closes an HTTP/1.1 connection).
#[derive(Debug)]
struct StreamReset;

impl std::fmt::Display for StreamReset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("testkit: stream reset injected")
    }
}

impl std::error::Error for StreamReset {}

/// Bind, then serve until the returned task is aborted (which also aborts every connection).
pub(crate) async fn spawn(
    shared_for: impl FnOnce(SocketAddr) -> Arc<Shared>,
    acceptor: TlsAcceptor,
) -> std::io::Result<(Arc<Shared>, SocketAddr, JoinHandle<()>)> {
    // The same certificates and client auth, two ALPN lists: h2 + http/1.1, or http/1.1 only.
    let alpn = |protocols: &[&[u8]]| {
        let mut config = (**acceptor.config()).clone();
        config.alpn_protocols = protocols.iter().map(|p| p.to_vec()).collect();
        TlsAcceptor::from(Arc::new(config))
    };
    let acceptors = (alpn(&[b"h2", b"http/1.1"]), alpn(&[b"http/1.1"]));
    let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
    let addr = listener.local_addr()?;
    let shared = shared_for(addr);
    let task_shared = shared.clone();
    let task = tokio::spawn(async move {
        let mut conns = JoinSet::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    if let Ok((tcp, _)) = accepted {
                        task_shared.tcp_accepted.fetch_add(1, Ordering::SeqCst);
                        let acceptor = if task_shared.http1_only.load(Ordering::SeqCst) {
                            acceptors.1.clone()
                        } else {
                            acceptors.0.clone()
                        };
                        conns.spawn(serve(tcp, acceptor, task_shared.clone()));
                    }
                }
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        }
    });
    Ok((shared, addr, task))
}

/// A second handle on the socket, used to set SO_LINGER=0 just before a reset, so closing
/// sends an RST instead of a FIN.
fn control_handle(tcp: TcpStream) -> Option<(TcpStream, Option<TcpStream>)> {
    let std = tcp.into_std().ok()?;
    let control = std
        .try_clone()
        .ok()
        .and_then(|c| TcpStream::from_std(c).ok());
    Some((TcpStream::from_std(std).ok()?, control))
}

async fn serve(tcp: TcpStream, acceptor: TlsAcceptor, shared: Arc<Shared>) {
    let _ = tcp.set_nodelay(true);
    let Some((tcp, control)) = control_handle(tcp) else {
        shared.tls_failed.fetch_add(1, Ordering::SeqCst);
        return;
    };
    let tls = match acceptor.accept(tcp).await {
        Ok(tls) => tls,
        Err(_) => {
            shared.tls_failed.fetch_add(1, Ordering::SeqCst);
            return;
        }
    };
    let id = shared.tls_accepted.fetch_add(1, Ordering::SeqCst) + 1;
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    if h2 {
        shared.h2_accepted.fetch_add(1, Ordering::SeqCst);
    }
    let http1_only = shared.http1_only.load(Ordering::SeqCst) || !h2;
    let counted = shared.clone();
    let _open = counted.open_connections.enter();
    let client_cert = tls
        .get_ref()
        .1
        .peer_certificates()
        .is_some_and(|c| !c.is_empty());
    let (reset, stall) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let conn = Conn {
        id,
        client_cert,
        reset: reset.clone(),
        stall: stall.clone(),
    };
    let service = service_fn(move |req| handle(shared.clone(), conn.clone(), req));
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http2()
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .timer(hyper_util::rt::TokioTimer::new());
    // A client that negotiated http/1.1 (or nothing) by ALPN gets HTTP/1.1 without the preface
    // sniffing, like kube-apiserver.
    let builder = if http1_only {
        builder.http1_only()
    } else {
        builder
    };
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(tls), service);
    let mut connection = std::pin::pin!(connection);
    tokio::select! {
        _ = &mut connection => {}
        _ = reset.notified() => {
            if let Some(control) = &control {
                let _ = control.set_zero_linger();
            }
        }
        // Keep the socket open and never poll the connection again.
        _ = stall.notified() => std::future::pending::<()>().await,
    }
}

/// An exec/attach request asking to upgrade (the websocket handshake kube sends): over HTTP/1.1,
/// answered `101 Switching Protocols`, then every byte the client sends is echoed back until it
/// closes. Over HTTP/2 (no RFC 8441 here, as on kube-apiserver) answered 400.
fn is_upgrade(req: &Request<Incoming>) -> bool {
    req.headers().contains_key(header::UPGRADE)
        && (req.uri().path().ends_with("/exec") || req.uri().path().ends_with("/attach"))
}

fn upgrade(req: &mut Request<Incoming>) -> Resp {
    if req.version() != http::Version::HTTP_11 {
        return status(400, "upgrades need HTTP/1.1");
    }
    let on_upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let mut io = TokioIo::new(upgraded);
        let mut buf = [0u8; 4096];
        while let Ok(n) = io.read(&mut buf).await {
            if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
    });
    let mut resp = hyper::Response::new(http_body_util::Full::new(bytes::Bytes::new()));
    *resp.status_mut() = http::StatusCode::SWITCHING_PROTOCOLS;
    let headers = resp.headers_mut();
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    resp
}

/// The answer, or "reset the connection", "reset the stream", "stall the connection".
enum Outcome {
    Answer(Resp, AuthMethod),
    Reset,
    ResetStream,
    Stall,
}

async fn handle(
    shared: Arc<Shared>,
    conn: Conn,
    mut req: Request<Incoming>,
) -> Result<Resp, StreamReset> {
    let method = req.method().clone();
    let version = req.version();
    let path = req.uri().path().to_owned();
    let query = req.uri().query().map(str::to_owned);
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    // Held until the answer is handed to hyper (or the connection is reset, dropping this future).
    let _in_flight = shared.in_flight.enter();
    let fault = shared.faults.take(&path);
    let outcome = if is_upgrade(&req) && fault.is_none() {
        let auth = authenticate(&shared, &conn, bearer.as_deref());
        if auth == AuthMethod::None {
            Outcome::Answer(status(401, "Unauthorized"), auth)
        } else {
            Outcome::Answer(upgrade(&mut req), auth)
        }
    } else {
        respond(
            &shared,
            &conn,
            &method,
            &path,
            query.as_deref(),
            bearer.as_deref(),
            fault,
        )
        .await
    };
    let (status_code, auth) = match &outcome {
        Outcome::Answer(resp, auth) => (resp.status().as_u16(), *auth),
        _ => (0, AuthMethod::None),
    };
    shared.log.lock().expect("request log").push(RequestRecord {
        method: method.to_string(),
        path,
        query,
        auth,
        status: status_code,
        connection: conn.id,
        version,
    });
    match outcome {
        Outcome::Answer(resp, _) => Ok(resp),
        Outcome::ResetStream => Err(StreamReset),
        Outcome::Reset => {
            conn.reset.notify_one();
            std::future::pending().await
        }
        Outcome::Stall => {
            conn.stall.notify_one();
            std::future::pending().await
        }
    }
}

/// How a Kubernetes API request authenticates: the connection's client certificate, or a
/// bearer token the server accepts.
fn authenticate(shared: &Shared, conn: &Conn, bearer: Option<&str>) -> AuthMethod {
    if conn.client_cert {
        AuthMethod::ClientCert
    } else if bearer.is_some_and(|t| shared.tokens.lock().expect("tokens").contains(t)) {
        AuthMethod::Bearer
    } else {
        AuthMethod::None
    }
}

async fn respond(
    shared: &Shared,
    conn: &Conn,
    method: &Method,
    path: &str,
    query: Option<&str>,
    bearer: Option<&str>,
    fault: Option<Fault>,
) -> Outcome {
    if let Some(fault) = fault {
        if let Some(latency) = fault.latency {
            tokio::time::sleep(latency).await;
        }
        if fault.reset {
            return Outcome::Reset;
        }
        if fault.reset_stream {
            return Outcome::ResetStream;
        }
        if fault.stall_connection {
            return Outcome::Stall;
        }
        if let Some(code) = fault.status {
            let mut resp = status(code, &format!("injected by testkit: status {code}"));
            if let Some(secs) = fault.retry_after_secs {
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(secs));
            }
            return Outcome::Answer(resp, AuthMethod::None);
        }
        if fault.garbage_body {
            return Outcome::Answer(garbage(), AuthMethod::None);
        }
    }
    if let Some(request) = arm::parse_path(path) {
        if let Some(resp) = arm::refusal(method, query, bearer) {
            return Outcome::Answer(resp, AuthMethod::None);
        }
        let resp = match aks_kubeconfig(shared, &request.cluster, request.admin) {
            Ok(kubeconfig) => {
                let text = kubeconfig_text(&kubeconfig);
                json(200, &arm::credential_results(request.admin, &text))
            }
            Err(e) => arm_error(500, "InternalServerError", &format!("testkit: {e}")),
        };
        return Outcome::Answer(resp, AuthMethod::Bearer);
    }
    let auth = authenticate(shared, conn, bearer);
    if auth == AuthMethod::None {
        return Outcome::Answer(status(401, "Unauthorized"), auth);
    }
    if method != Method::GET {
        let msg =
            format!("the testkit server only serves GET on the Kubernetes API (got {method})");
        return Outcome::Answer(status(405, &msg), auth);
    }
    let host = shared.url.trim_start_matches("https://");
    let fixtures = shared.fixtures.read().expect("fixtures");
    Outcome::Answer(resources::get_api(&fixtures, path, query, host), auth)
}

/// What AKS hands out: the user credential carries a bearer token, the admin credential a
/// client certificate (`CN=clusterAdmin`, `O=system:masters`).
fn aks_kubeconfig(
    shared: &Shared,
    cluster: &str,
    admin: bool,
) -> Result<kube::config::Kubeconfig, TlsError> {
    let ca = shared.ca.cert_pem();
    Ok(if admin {
        let leaf = shared.ca.client_leaf("clusterAdmin", &["system:masters"])?;
        build_kubeconfig(&shared.url, ca, cluster, KubeAuth::ClientCert(&leaf))
    } else {
        build_kubeconfig(
            &shared.url,
            ca,
            cluster,
            KubeAuth::Token(&shared.default_token),
        )
    })
}
