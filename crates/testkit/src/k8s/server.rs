//! The server: TLS accept loop (connection counting, resets), per-request auth, faults and log.

use std::collections::HashSet;
use std::collections::hash_map::RandomState;
use std::convert::Infallible;
use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use http::{HeaderValue, Method, Request, header};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
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
}

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
}

/// Bind, then serve until the returned task is aborted (which also aborts every connection).
pub(crate) async fn spawn(
    shared_for: impl FnOnce(SocketAddr) -> Arc<Shared>,
    acceptor: TlsAcceptor,
) -> std::io::Result<(Arc<Shared>, SocketAddr, JoinHandle<()>)> {
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
                        conns.spawn(serve(tcp, acceptor.clone(), task_shared.clone()));
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
    let counted = shared.clone();
    let _open = counted.open_connections.enter();
    let client_cert = tls
        .get_ref()
        .1
        .peer_certificates()
        .is_some_and(|c| !c.is_empty());
    let reset = Arc::new(Notify::new());
    let conn = Conn {
        id,
        client_cert,
        reset: reset.clone(),
    };
    let service = service_fn(move |req| handle(shared.clone(), conn.clone(), req));
    let connection = http1::Builder::new().serve_connection(TokioIo::new(tls), service);
    tokio::select! {
        _ = connection => {}
        _ = reset.notified() => {
            if let Some(control) = &control {
                let _ = control.set_zero_linger();
            }
        }
    }
}

/// The answer, or "reset the connection".
enum Outcome {
    Answer(Resp, AuthMethod),
    Reset,
}

async fn handle(
    shared: Arc<Shared>,
    conn: Conn,
    req: Request<Incoming>,
) -> Result<Resp, Infallible> {
    let method = req.method().clone();
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
    let outcome = respond(
        &shared,
        &conn,
        &method,
        &path,
        query.as_deref(),
        bearer.as_deref(),
        fault,
    )
    .await;
    let (resp, auth) = match outcome {
        Outcome::Answer(resp, auth) => (Some(resp), auth),
        Outcome::Reset => (None, AuthMethod::None),
    };
    shared.log.lock().expect("request log").push(RequestRecord {
        method: method.to_string(),
        path,
        query,
        auth,
        status: resp.as_ref().map_or(0, |r| r.status().as_u16()),
        connection: conn.id,
    });
    match resp {
        Some(resp) => Ok(resp),
        None => {
            conn.reset.notify_one();
            std::future::pending().await
        }
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
    let auth = if conn.client_cert {
        AuthMethod::ClientCert
    } else if bearer.is_some_and(|t| shared.tokens.lock().expect("tokens").contains(t)) {
        AuthMethod::Bearer
    } else {
        return Outcome::Answer(status(401, "Unauthorized"), AuthMethod::None);
    };
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
