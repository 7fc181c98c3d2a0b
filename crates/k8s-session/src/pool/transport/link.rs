//! K8: a session's one HTTP/2 connection, opened by one caller at a time and shared by every
//! request.
//!
//! hyper-util's pooling client also keeps one HTTP/2 connection per host, but its "one
//! connecting at a time" lock is released when the new connection enters the pool, and a
//! request on another worker thread that had just missed the pool can take the lock and open a
//! second TLS connection (a duplicate the pool then drops). Under a cold multi-threaded burst
//! that breaks K8's one connection per cluster, so the session keeps its connection itself:
//!
//! - the slot is `Closed`, `Opening` (one shared attempt every caller waits on) or `Open`;
//! - an open connection that hyper reports closed (GOAWAY, keep-alive timeout, reset) is
//!   replaced by the next request, through one new attempt;
//! - a request the closed connection never started is sent again on the new one, as
//!   hyper-util does for a reused connection;
//! - a connection unused for [`IDLE_TIMEOUT`] is let go: its streams still in progress finish,
//!   then it closes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures::future::{BoxFuture, FutureExt as _, Shared};
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use kube::client::Body;
use tokio::time::Instant;

use super::{BoxError, ConnectError, SessionState, StackOptions};

/// A connection no request has used for this long is let go (hyper-util's pool default).
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// The session's HTTP/2 connection (cheap to clone: one shared slot).
#[derive(Clone)]
pub(super) struct H2Link {
    inner: Arc<Inner>,
}

struct Inner {
    state: Arc<SessionState>,
    builder: http2::Builder<TokioExecutor>,
    slot: Mutex<Slot>,
    /// Numbers connections, so a late watchdog or failure never touches a newer one.
    opened: AtomicU64,
}

type Opening = Shared<BoxFuture<'static, Result<Open, ConnectError>>>;

enum Slot {
    Closed,
    Opening(Opening),
    Open(Open),
}

#[derive(Clone)]
struct Open {
    id: u64,
    sender: http2::SendRequest<Body>,
    usage: Arc<Usage>,
}

/// When a connection was last handed to a request.
struct Usage {
    since: Instant,
    /// Milliseconds after `since`.
    last: AtomicU64,
}

impl Usage {
    fn touch(&self) {
        let now = u64::try_from(self.since.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(now, Ordering::Relaxed);
    }

    fn idle_until(&self) -> Instant {
        self.since + Duration::from_millis(self.last.load(Ordering::Relaxed)) + IDLE_TIMEOUT
    }
}

impl H2Link {
    pub(super) fn new(state: Arc<SessionState>, options: &StackOptions) -> Self {
        let mut builder = http2::Builder::new(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .keep_alive_interval(options.keep_alive_interval)
            .keep_alive_timeout(options.keep_alive_timeout)
            .keep_alive_while_idle(true);
        Self {
            inner: Arc::new(Inner {
                state,
                builder,
                slot: Mutex::new(Slot::Closed),
                opened: AtomicU64::new(0),
            }),
        }
    }

    /// Send `request` over the session's connection, opening it first when there is none.
    pub(super) async fn send(
        &self,
        mut request: Request<Body>,
    ) -> Result<Response<Incoming>, BoxError> {
        loop {
            let (mut open, reused) = self.connection(request.uri()).await?;
            open.usage.touch();
            match open.sender.try_send_request(request).await {
                Ok(response) => return Ok(response),
                Err(mut error) => match error.take_message() {
                    // The connection closed before this request started: it goes out on the
                    // next one. A fresh connection failing so is not retried (no loop).
                    Some(unsent) if reused => {
                        self.inner.forget(open.id);
                        request = unsent;
                    }
                    _ => return Err(error.into_error().into()),
                },
            }
        }
    }

    /// The open connection (`true`: it served requests before), or the one attempt to open it.
    async fn connection(&self, uri: &Uri) -> Result<(Open, bool), ConnectError> {
        let opening = {
            let mut slot = self.inner.lock();
            match &*slot {
                Slot::Open(open) if !open.sender.is_closed() => return Ok((open.clone(), true)),
                Slot::Opening(opening) => opening.clone(),
                Slot::Open(_) | Slot::Closed => {
                    let id = self.inner.opened.fetch_add(1, Ordering::Relaxed) + 1;
                    let opening = Arc::clone(&self.inner)
                        .open(id, uri.clone())
                        .boxed()
                        .shared();
                    *slot = Slot::Opening(opening.clone());
                    opening
                }
            }
        };
        Ok((opening.await?, false))
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, Slot> {
        self.slot.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Let connection `id` go, if it is still the current one.
    fn forget(&self, id: u64) {
        let mut slot = self.lock();
        if matches!(&*slot, Slot::Open(open) if open.id == id) {
            *slot = Slot::Closed;
        }
    }

    /// Open connection `id` (the probe's, when it waits for us), and make it the current one.
    async fn open(self: Arc<Self>, id: u64, uri: Uri) -> Result<Open, ConnectError> {
        let result = self.handshake(id, uri).await;
        let mut slot = self.lock();
        if matches!(&*slot, Slot::Opening(_)) {
            *slot = match &result {
                Ok(open) => Slot::Open(open.clone()),
                // The next request tries again.
                Err(_) => Slot::Closed,
            };
        }
        drop(slot);
        if let Ok(open) = &result {
            tokio::spawn(watch_idle(
                Arc::downgrade(&self),
                open.id,
                Arc::clone(&open.usage),
            ));
        }
        result
    }

    async fn handshake(&self, id: u64, uri: Uri) -> Result<Open, ConnectError> {
        let connect = async {
            let io = self.state.h2_io(uri).await?;
            let (mut sender, connection) = self.builder.handshake(io).await?;
            tokio::spawn(async move {
                if let Err(error) = connection.await {
                    tracing::debug!(%error, "HTTP/2 connection to the Kubernetes API server ended");
                }
            });
            sender.ready().await?;
            Ok::<_, BoxError>(sender)
        };
        let sender = connect.await.map_err(|e| ConnectError(Arc::new(e)))?;
        Ok(Open {
            id,
            sender,
            usage: Arc::new(Usage {
                since: Instant::now(),
                last: AtomicU64::new(0),
            }),
        })
    }
}

/// Let `open` go once no request has used it for [`IDLE_TIMEOUT`]; its streams in progress keep
/// it alive until they end. Holds the link weakly: a dropped session ends the watch.
async fn watch_idle(link: Weak<Inner>, id: u64, usage: Arc<Usage>) {
    loop {
        tokio::time::sleep_until(usage.idle_until()).await;
        let Some(link) = link.upgrade() else { return };
        let mut slot = link.lock();
        match &*slot {
            Slot::Open(open) if open.id == id => {
                if Instant::now() >= usage.idle_until() {
                    *slot = Slot::Closed;
                    return;
                }
            }
            _ => return,
        }
    }
}
