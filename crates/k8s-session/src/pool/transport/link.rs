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
//! - a connection that carried no stream for [`IDLE_TIMEOUT`] (counted from the end of its last
//!   response body, so a long watch keeps it) is let go and closes;
//! - a reconnect that finds the server speaking HTTP/1.1 hands every request waiting on it back
//!   unsent, to go out over HTTP/1.1 ([`SendError::Http1`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures::future::{self, BoxFuture, Either, FutureExt as _, Shared};
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use kube::client::Body;
use tokio::time::Instant;

use super::{BoxError, ConnectError, NotHttp2, SessionState, StackOptions};

/// A connection that carried no stream for this long is let go (hyper-util's pool default).
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// Why [`H2Link::send`] did not get a response.
pub(super) enum SendError {
    /// The server now speaks HTTP/1.1: the request, unsent, for the HTTP/1.1 client.
    Http1(Box<Request<Body>>),
    Failed(BoxError),
}

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
    /// Dropped with the link: ends the idle watches at once (not at their next wake-up).
    dropped: tokio::sync::watch::Sender<()>,
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

/// A connection's streams in progress, and when its last one started or ended.
struct Usage {
    since: Instant,
    /// Milliseconds after `since`.
    last: AtomicU64,
    streams: AtomicU64,
}

impl Usage {
    fn touch(&self) {
        let now = u64::try_from(self.since.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(now, Ordering::Relaxed);
    }

    fn begin(self: &Arc<Self>) -> Stream {
        self.streams.fetch_add(1, Ordering::Relaxed);
        self.touch();
        Stream(Arc::clone(self))
    }

    /// When the connection will have been idle for [`IDLE_TIMEOUT`]: never sooner than that
    /// from now while a stream is in progress.
    fn idle_until(&self) -> Instant {
        if self.streams.load(Ordering::Relaxed) > 0 {
            return Instant::now() + IDLE_TIMEOUT;
        }
        self.since + Duration::from_millis(self.last.load(Ordering::Relaxed)) + IDLE_TIMEOUT
    }
}

/// A request's stream on the session's connection, from its send until its response body ends,
/// fails or is dropped: the connection is not idle while one is held.
pub(crate) struct Stream(Arc<Usage>);

impl Drop for Stream {
    fn drop(&mut self) {
        self.0.touch();
        self.0.streams.fetch_sub(1, Ordering::Relaxed);
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
                dropped: tokio::sync::watch::Sender::new(()),
            }),
        }
    }

    /// Send `request` over the session's connection, opening it first when there is none. The
    /// [`Stream`] goes with the response body.
    pub(super) async fn send(
        &self,
        mut request: Request<Body>,
    ) -> Result<(Response<Incoming>, Stream), SendError> {
        loop {
            let (mut open, reused) = match self.connection(request.uri()).await {
                Ok(connection) => connection,
                Err(error) if error.0.is::<NotHttp2>() => {
                    return Err(SendError::Http1(Box::new(request)));
                }
                Err(error) => return Err(SendError::Failed(error.into())),
            };
            let stream = open.usage.begin();
            let id = open.id;
            let sending = open.sender.try_send_request(request);
            // The connection's `SendRequest` is not held while the response is awaited (see
            // [`forget_when_closed`]): a request queued just as the connection closed is handed
            // back once the last one is dropped.
            drop(open);
            match sending.await {
                Ok(response) => return Ok((response, stream)),
                Err(mut error) => match error.take_message() {
                    // The connection closed before this request started: it goes out on the
                    // next one. A fresh connection failing so is not retried (no loop).
                    Some(unsent) if reused => {
                        self.inner.forget(id);
                        request = unsent;
                    }
                    _ => return Err(SendError::Failed(error.into_error().into())),
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
                    let opening = open(
                        Arc::downgrade(&self.inner),
                        Arc::clone(&self.inner.state),
                        self.inner.builder.clone(),
                        id,
                        uri.clone(),
                    )
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
}

/// Open connection `id` (the probe's, when it waits for us), and make it the link's current one.
/// Holds the link weakly: an attempt its callers abandoned stays in the link's slot (the next
/// request resumes it) and must not keep the link, or its socket, alive once the session is
/// dropped.
async fn open(
    link: Weak<Inner>,
    state: Arc<SessionState>,
    builder: http2::Builder<TokioExecutor>,
    id: u64,
    uri: Uri,
) -> Result<Open, ConnectError> {
    let result = handshake(&state, &builder, uri, forget_when_closed(link.clone(), id))
        .await
        .map(|sender| Open {
            id,
            sender,
            usage: Arc::new(Usage {
                since: Instant::now(),
                last: AtomicU64::new(0),
                streams: AtomicU64::new(0),
            }),
        });
    let Some(link) = link.upgrade() else {
        return result;
    };
    let mut slot = link.lock();
    if matches!(&*slot, Slot::Opening(_)) {
        *slot = match &result {
            Ok(open) if !open.sender.is_closed() => Slot::Open(open.clone()),
            // The next request tries again (also when the new connection is already gone:
            // its end has been seen, and must not leave it in the slot).
            Ok(_) | Err(_) => Slot::Closed,
        };
    }
    drop(slot);
    if let Ok(open) = &result {
        tokio::spawn(watch_idle(
            Arc::downgrade(&link),
            link.dropped.subscribe(),
            id,
            Arc::clone(&open.usage),
        ));
    }
    result
}

/// What the task driving connection `id` does when the connection ends: the link lets it go at
/// once, so that its last `SendRequest` is dropped.
///
/// hyper queues a request for the connection's task in a channel; a request queued in the
/// instant the task ends (the channel's receiver closing between the sender's check and its
/// push) stays in the channel, unanswered, until the channel's last sender is dropped, and is
/// then handed back unsent. The link's slot held that sender until the next request noticed the
/// closed connection, and each request held one while awaiting its response: under a loaded
/// multi-threaded runtime a request sent as its connection was cut waited for the read timeout
/// (`blackbox_h2_link::multi_thread_repeated_cuts_under_load_replaced_once_each` caught it, a
/// call waiting more than 5 s in about one run of 200). Now the request is handed back as soon
/// as the connection ends, and goes out on the next one.
fn forget_when_closed(link: Weak<Inner>, id: u64) -> impl FnOnce() + Send + 'static {
    move || {
        if let Some(link) = link.upgrade() {
            link.forget(id);
        }
    }
}

/// A connection for the HTTP/2 client, its handshake done and its task spawned; `on_close`
/// runs when the connection ends.
async fn handshake(
    state: &SessionState,
    builder: &http2::Builder<TokioExecutor>,
    uri: Uri,
    on_close: impl FnOnce() + Send + 'static,
) -> Result<http2::SendRequest<Body>, ConnectError> {
    let connect = async {
        let io = state.h2_io(uri).await?;
        let (mut sender, connection) = builder.handshake(io).await?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "HTTP/2 connection to the Kubernetes API server ended");
            }
            on_close();
        });
        sender.ready().await?;
        Ok::<_, BoxError>(sender)
    };
    connect.await.map_err(|e| ConnectError(Arc::new(e)))
}

/// Let connection `id` go once it has carried no stream for [`IDLE_TIMEOUT`]. Holds the link
/// weakly and ends when the link is dropped, or when `id` is no longer its connection.
async fn watch_idle(
    link: Weak<Inner>,
    mut dropped: tokio::sync::watch::Receiver<()>,
    id: u64,
    usage: Arc<Usage>,
) {
    loop {
        let wake = std::pin::pin!(tokio::time::sleep_until(usage.idle_until()));
        // Ends (with `Err`) when the link's sender is dropped: nothing is ever sent.
        let gone = std::pin::pin!(dropped.changed());
        if let Either::Right(_) = future::select(wake, gone).await {
            return;
        }
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
