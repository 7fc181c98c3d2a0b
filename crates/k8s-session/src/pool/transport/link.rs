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
//! - a connection the server sends GOAWAY on is let go the moment the frame arrives (see
//!   [`goaway`](super::goaway)): new requests go out on the next connection while it finishes
//!   its streams in progress;
//! - a request the closed connection never started is sent again on the new one, as
//!   hyper-util does for a reused connection, and so is a request the server never processed:
//!   its stream was refused (`REFUSED_STREAM`) or came after a GOAWAY (RFC 9113 §6.8, §8.7),
//!   when its body can be sent again (kube buffers every request body it builds);
//! - with `max_streams_per_session(Some(n))`, each connection has `n` stream slots: a request
//!   waits for one of its connection's slots, not the session's, so requests waiting when a
//!   connection goes away move to the next connection instead of waiting for the old one's
//!   streams (watches) to end;
//! - a connection that carried no stream for [`IDLE_TIMEOUT`] (counted from the end of its last
//!   response body, so a long watch keeps it) is let go and closes;
//! - a reconnect that finds the server speaking HTTP/1.1 hands every request waiting on it back
//!   unsent, to go out over HTTP/1.1 ([`SendError::Http1`]).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures::future::{self, BoxFuture, Either, FutureExt as _, Shared};
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use kube::client::Body;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::goaway::GoAwayWatch;
use super::{BoxError, ConnectError, NotHttp2, SessionState, StackOptions, within_read_timeout};
use crate::telemetry::InUse;

/// A connection that carried no stream for this long is let go (hyper-util's pool default).
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// A request is sent again at most this many times in all when its connection closed or went
/// away before writing it, or the server refused it without processing it (every resend goes out
/// on a newer connection, except after `REFUSED_STREAM` on a connection still open). Bounded, so a
/// server that sends GOAWAY on every connection (draining) costs a call at most 4 connections.
const MAX_RESENDS: u32 = 3;

/// Why [`H2Link::send`] did not get a response.
pub(super) enum SendError {
    /// The server now speaks HTTP/1.1: the request, unsent, for the HTTP/1.1 client.
    Http1(Box<Request<Body>>),
    Failed(BoxError),
}

/// A response from [`H2Link::send`], with what its body holds until it ends.
pub(super) struct Sent {
    pub(super) response: Response<Incoming>,
    /// The request's stream on its connection.
    pub(super) stream: Stream,
    /// Its stream slot on that connection (`max_streams_per_session`; none without a bound).
    pub(super) slot: Option<OwnedSemaphorePermit>,
    /// Its place in the active-requests gauge, taken with its slot.
    pub(super) active: InUse,
}

/// The session's HTTP/2 connection (cheap to clone: one shared slot).
#[derive(Clone)]
pub(super) struct H2Link {
    inner: Arc<Inner>,
}

struct Inner {
    state: Arc<SessionState>,
    builder: http2::Builder<TokioExecutor>,
    /// Stream slots per connection (`max_streams_per_session`), if bounded.
    max_streams: Option<usize>,
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
    /// The connection's stream slots (never taken from without a bound), closed when it goes
    /// away or ends: the requests waiting for a slot then move to the next connection.
    slots: Arc<Semaphore>,
    /// Set when the server's GOAWAY arrives.
    went_away: Arc<AtomicBool>,
}

impl Open {
    /// Whether new requests may go out on it.
    fn usable(&self) -> bool {
        !self.sender.is_closed() && !self.slots.is_closed()
    }
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
                max_streams: options.h2_in_flight.map(|n| n.max(1)),
                slot: Mutex::new(Slot::Closed),
                opened: AtomicU64::new(0),
                dropped: tokio::sync::watch::Sender::new(()),
            }),
        }
    }

    /// Send `request` over the session's connection, opening it first when there is none, and
    /// waiting for one of its stream slots when they are bounded. The wait for a slot is not
    /// bounded; connecting and the wait for the response headers are, by `read_timeout` (each
    /// attempt).
    pub(super) async fn send(
        &self,
        mut request: Request<Body>,
        read_timeout: Option<Duration>,
    ) -> Result<Sent, SendError> {
        let mut resends = 0;
        loop {
            let (mut open, reused, slot) = match self.slot(request.uri(), read_timeout).await {
                Ok(slotted) => slotted,
                Err(Unavailable::Http1) => return Err(SendError::Http1(Box::new(request))),
                // Never sent: it goes out on the next connection (a resend of the budget).
                Err(Unavailable::WentAway(_)) if resends < MAX_RESENDS => {
                    resends += 1;
                    continue;
                }
                Err(Unavailable::WentAway(error) | Unavailable::Failed(error)) => {
                    return Err(SendError::Failed(error));
                }
            };
            let copy = if resends < MAX_RESENDS {
                replayable(&request)
            } else {
                None
            };
            let active = self.inner.state.dial.metrics.request_active();
            let stream = open.usage.begin();
            let id = open.id;
            let went_away = Arc::clone(&open.went_away);
            let sending = open.sender.try_send_request(request);
            // The connection's `SendRequest` is not held while the response is awaited (see
            // [`Ending`]): a request queued just as the connection closed is handed
            // back once the last one is dropped.
            drop(open);
            let mut error = match within_read_timeout(read_timeout, sending).await {
                Ok(Ok(response)) => {
                    return Ok(Sent {
                        response,
                        stream,
                        slot,
                        active,
                    });
                }
                Ok(Err(error)) => error,
                Err(timeout) => return Err(SendError::Failed(timeout)),
            };
            let unsent = error.take_message();
            let error = error.into_error();
            let went_away = went_away.load(Ordering::Acquire);
            let unprocessed = unprocessed(&error, went_away);
            request = match (unsent, copy, unprocessed) {
                // The connection closed before this request started: it goes out on the next
                // one. A fresh connection failing so is not retried, unless the server said why
                // (a GOAWAY, even one that came with the connection's first frames).
                (Some(unsent), _, _) if (reused || went_away) && resends < MAX_RESENDS => {
                    self.inner.forget(id);
                    unsent
                }
                // The server never processed it: the same request again, on the next
                // connection after a GOAWAY.
                (_, Some(copy), Some(Unprocessed::GoneAway)) => {
                    self.inner.forget(id);
                    copy
                }
                (_, Some(copy), Some(Unprocessed::Refused)) => copy,
                _ => return Err(SendError::Failed(error.into())),
            };
            resends += 1;
        }
    }

    /// The connection to send on (`true`: it served requests before) and one of its stream
    /// slots when they are bounded, waited for without a time limit; a wait cut short by the
    /// connection going away goes on for the next connection's slots.
    async fn slot(
        &self,
        uri: &Uri,
        read_timeout: Option<Duration>,
    ) -> Result<(Open, bool, Option<OwnedSemaphorePermit>), Unavailable> {
        loop {
            let (open, reused) = self.connection_within(uri, read_timeout).await?;
            if self.inner.max_streams.is_none() {
                return Ok((open, reused, None));
            }
            let slots = Arc::clone(&open.slots);
            if let Ok(slot) = Arc::clone(&slots).try_acquire_owned() {
                return Ok((open, reused, Some(slot)));
            }
            // Not holding the connection while waiting (see [`Ending`]).
            drop(open);
            let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
                continue;
            };
            let (open, reused) = self.connection_within(uri, read_timeout).await?;
            if Arc::ptr_eq(&open.slots, &slots) {
                return Ok((open, reused, Some(slot)));
            }
        }
    }

    /// [`connection`](Self::connection) within the read timeout.
    async fn connection_within(
        &self,
        uri: &Uri,
        read_timeout: Option<Duration>,
    ) -> Result<(Open, bool), Unavailable> {
        match within_read_timeout(read_timeout, self.connection(uri)).await {
            Ok(Ok(connection)) => Ok(connection),
            Ok(Err(error)) if error.0.is::<NotHttp2>() => Err(Unavailable::Http1),
            Ok(Err(error)) if error.0.is::<WentAwayAtHandshake>() => {
                Err(Unavailable::WentAway(error.into()))
            }
            Ok(Err(error)) => Err(Unavailable::Failed(error.into())),
            Err(timeout) => Err(Unavailable::Failed(timeout)),
        }
    }

    /// The open connection (`true`: it served requests before), or the one attempt to open it.
    async fn connection(&self, uri: &Uri) -> Result<(Open, bool), ConnectError> {
        let opening = {
            let mut slot = self.inner.lock();
            match &*slot {
                Slot::Open(open) if open.usable() => return Ok((open.clone(), true)),
                Slot::Opening(opening) => opening.clone(),
                // The session moved to HTTP/1.1 (a reconnect was answered so) while this request
                // was on its way here: no second probe of the server.
                Slot::Open(_) | Slot::Closed if self.inner.state.speaks_http1() => {
                    return Err(ConnectError(Arc::new(NotHttp2.into())));
                }
                Slot::Open(_) | Slot::Closed => {
                    let id = self.inner.opened.fetch_add(1, Ordering::Relaxed) + 1;
                    let opening = open(
                        Arc::downgrade(&self.inner),
                        Arc::clone(&self.inner.state),
                        self.inner.builder.clone(),
                        self.inner.max_streams,
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

/// Why [`H2Link::slot`] has no connection to offer.
enum Unavailable {
    /// The server now speaks HTTP/1.1.
    Http1,
    /// The new connection ended with the server's GOAWAY before it could carry a request: the
    /// request can go out on the next one.
    WentAway(BoxError),
    Failed(BoxError),
}

/// A new connection the server sent GOAWAY on, and that ended, before it could carry a request.
#[derive(Debug)]
struct WentAwayAtHandshake;

impl std::fmt::Display for WentAwayAtHandshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(
            "the Kubernetes API server sent GOAWAY and closed the new HTTP/2 connection before \
             any request could go out on it",
        )
    }
}

impl std::error::Error for WentAwayAtHandshake {}

/// How the server let a request go without processing it: it can be sent again as it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unprocessed {
    /// The connection went away: its stream came after the server's GOAWAY (above its last
    /// stream id, or opened once it had arrived; RFC 9113 §6.8).
    GoneAway,
    /// The server reset its stream with `REFUSED_STREAM` (RFC 9113 §8.7).
    Refused,
}

/// Whether hyper's `error` says the server never processed the request, sent on a connection
/// that received GOAWAY (`went_away`) or not.
///
/// A request hyper had to hold back because the server's stream limit was reached fails with
/// `DispatchGone` ("runtime dropped the dispatch task") when a GOAWAY ends the connection's
/// dispatch: its stream, above the GOAWAY's last stream id, was never sent. That error (a
/// "user" error of hyper's) counts as unprocessed after a GOAWAY only.
fn unprocessed(error: &hyper::Error, went_away: bool) -> Option<Unprocessed> {
    let h2 = std::error::Error::source(error).and_then(|e| e.downcast_ref::<h2::Error>());
    let Some(h2) = h2 else {
        return (went_away && error.is_user()).then_some(Unprocessed::GoneAway);
    };
    if !h2.is_remote() {
        return None;
    }
    if h2.is_go_away() {
        Some(Unprocessed::GoneAway)
    } else if h2.is_reset() && h2.reason() == Some(h2::Reason::REFUSED_STREAM) {
        Some(Unprocessed::Refused)
    } else {
        None
    }
}

/// A copy of `request` to send again, when its body can be (kube buffers every request body it
/// builds).
fn replayable(request: &Request<Body>) -> Option<Request<Body>> {
    let mut copy = Request::new(request.body().try_clone()?);
    *copy.method_mut() = request.method().clone();
    *copy.uri_mut() = request.uri().clone();
    *copy.version_mut() = request.version();
    *copy.headers_mut() = request.headers().clone();
    *copy.extensions_mut() = request.extensions().clone();
    Some(copy)
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
    max_streams: Option<usize>,
    id: u64,
    uri: Uri,
) -> Result<Open, ConnectError> {
    let slots = Arc::new(Semaphore::new(max_streams.unwrap_or(0)));
    let went_away = Arc::new(AtomicBool::new(false));
    let ending = Ending {
        link: link.clone(),
        id,
        slots: Arc::clone(&slots),
    };
    let goaway = {
        let (ending, went_away) = (ending.clone(), Arc::clone(&went_away));
        move || {
            went_away.store(true, Ordering::Release);
            ending.run();
        }
    };
    let result = handshake(&state, &builder, uri, &went_away, goaway, ending)
        .await
        .map(|sender| Open {
            id,
            sender,
            usage: Arc::new(Usage {
                since: Instant::now(),
                last: AtomicU64::new(0),
                streams: AtomicU64::new(0),
            }),
            slots,
            went_away,
        });
    let Some(link) = link.upgrade() else {
        return result;
    };
    let mut slot = link.lock();
    if matches!(&*slot, Slot::Opening(_)) {
        *slot = match &result {
            Ok(open) if open.usable() => Slot::Open(open.clone()),
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

/// What connection `id` does when it goes away (the server's GOAWAY, seen as it arrives) or
/// ends (its task done): the link lets it go at once, and the requests waiting for one of its
/// stream slots move on to the next connection.
///
/// Letting it go as it ends also drops its last `SendRequest`. hyper queues a request for the
/// connection's task in a channel; a request queued in the instant the task ends (the channel's
/// receiver closing between the sender's check and its push) stays in the channel, unanswered,
/// until the channel's last sender is dropped, and is then handed back unsent. The link's slot
/// held that sender until the next request noticed the closed connection, and each request
/// held one while awaiting its response: under a loaded multi-threaded runtime a request sent
/// as its connection was cut waited for the read timeout
/// (`blackbox_h2_link::multi_thread_repeated_cuts_under_load_replaced_once_each` caught it, a
/// call waiting more than 5 s in about one run of 200). Now the request is handed back as soon
/// as the connection ends, and goes out on the next one.
#[derive(Clone)]
struct Ending {
    link: Weak<Inner>,
    id: u64,
    slots: Arc<Semaphore>,
}

impl Ending {
    fn run(self) {
        self.slots.close();
        if let Some(link) = self.link.upgrade() {
            link.forget(self.id);
        }
    }
}

/// A connection for the HTTP/2 client, its handshake done and its task spawned; `on_goaway`
/// runs when the server's GOAWAY arrives, `on_close` when the connection ends.
async fn handshake(
    state: &SessionState,
    builder: &http2::Builder<TokioExecutor>,
    uri: Uri,
    went_away: &AtomicBool,
    on_goaway: impl FnOnce() + Send + 'static,
    on_close: Ending,
) -> Result<http2::SendRequest<Body>, ConnectError> {
    let connect = async {
        let io = state.h2_io(uri).await?;
        let io = TokioIo::new(GoAwayWatch::new(TokioIo::new(io), move || {
            tracing::debug!("the Kubernetes API server sent GOAWAY: the next request reconnects");
            on_goaway();
        }));
        let (mut sender, connection) = builder.handshake(io).await?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "HTTP/2 connection to the Kubernetes API server ended");
            }
            on_close.run();
        });
        match sender.ready().await {
            Ok(()) => Ok::<_, BoxError>(sender),
            // Ended by the server's GOAWAY before any request could go out on it.
            Err(_) if went_away.load(Ordering::Acquire) => Err(WentAwayAtHandshake.into()),
            Err(error) => Err(error.into()),
        }
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
