//! Serving the router with explicit limits: hyper's header-read timeout and header size, a cap
//! on open connections, graceful shutdown.
//!
//! `axum::serve` builds its hyper connection without a timer, so hyper's header-read timeout
//! never fires there, and it has no connection cap. This loop is the same shape with the knobs
//! hyper and hyper-util provide: `http1::Builder::timer` + `header_read_timeout` +
//! `max_header_size`, `TowerToHyperService`, `GracefulShutdown`; the connection cap is a tokio
//! semaphore permit held by each connection's task (no crate in the stack offers one).

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, oneshot};
use tower::ServiceExt;

/// The connection-level limits (the request-level ones are layers on the router).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnLimits {
    pub(crate) header_read_timeout: Duration,
    pub(crate) max_header_bytes: usize,
    pub(crate) max_connections: usize,
}

/// Connections: open now, accepted in all, and the most open at once.
#[derive(Debug, Default)]
pub(crate) struct ConnStats {
    pub(crate) open: AtomicU64,
    pub(crate) accepted: AtomicU64,
    pub(crate) peak: AtomicU64,
}

struct Open(Arc<ConnStats>);

impl Open {
    fn new(stats: &Arc<ConnStats>) -> Self {
        stats.accepted.fetch_add(1, Ordering::Relaxed);
        let now = stats.open.fetch_add(1, Ordering::Relaxed) + 1;
        stats.peak.fetch_max(now, Ordering::Relaxed);
        Self(Arc::clone(stats))
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Accept and serve until `stop` fires, then stop accepting and let open connections finish
/// their requests in flight.
pub(crate) async fn run(
    listener: TcpListener,
    router: Router,
    limits: ConnLimits,
    stats: Arc<ConnStats>,
    mut stop: oneshot::Receiver<()>,
) {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_header_size(limits.max_header_bytes)
        .keep_alive(true);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    loop {
        // Wait for a free slot before accepting: past the cap, new clients wait in the
        // kernel's backlog instead of costing a task, buffers and a file descriptor here.
        let permit = tokio::select! {
            permit = Arc::clone(&slots).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            _ = &mut stop => break,
        };
        let (stream, _peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut stop => break,
        };
        let _ = stream.set_nodelay(true);
        let open = Open::new(&stats);
        let service = router
            .clone()
            .map_request(|request: http::Request<Incoming>| request.map(Body::new));
        let service = TowerToHyperService::new(service.map_err(|e: Infallible| match e {}));
        let connection = builder.serve_connection(TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "connection ended with an error");
            }
            drop(open);
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}
