//! A kubeconfig's `tokenFile`, re-read asynchronously as it rotates.
//!
//! kube re-reads a token file with a blocking `read_to_string`, inside the request's future and
//! under a lock every request of the client waits on: a file on a hung mount would block a
//! runtime thread and every request of the session, with no timeout able to end either. Here
//! the file is read on tokio's blocking pool, one read at a time per session, once the last
//! read is 50 s old; the session's requests wait for it at most
//! [`token_file_timeout`](crate::SessionPoolBuilder::token_file_timeout), then go with the
//! last token read.

use std::fmt;
use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use futures::future::BoxFuture;
use http::{HeaderValue, Request, header::AUTHORIZATION};
use tokio::sync::watch;
use tokio::time::Instant;
use tower_layer::Layer;
use tower_service::Service;

use super::build::{MAX_FILE_BYTES, read_limited};

/// How old the last read may be before the file is read again: kube re-reads a token file when
/// its minute is within 10 s of running out.
pub(crate) const RELOAD_AFTER: Duration = Duration::from_secs(50);

/// What reads the file (the blocking pool in production; a test's own reader in unit tests).
type Reader = Arc<dyn Fn(PathBuf) -> BoxFuture<'static, io::Result<Vec<u8>>> + Send + Sync>;

/// The token file of one session, shared by its clients' clones.
pub(crate) struct TokenFile {
    path: PathBuf,
    /// The longest requests wait for a due read.
    wait: Duration,
    read: Reader,
    state: Mutex<State>,
}

struct State {
    /// `Bearer <token>`, marked sensitive.
    header: HeaderValue,
    /// When the last read ended (read or failed): the next is due [`RELOAD_AFTER`] later.
    read_at: Instant,
    /// The read under way, if any.
    reading: Option<Reading>,
}

struct Reading {
    started: Instant,
    /// Set to `true` when the read ends (or its task is dropped).
    done: watch::Receiver<bool>,
}

/// Why a token file's contents cannot be sent.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct InvalidToken;

/// `Bearer <token>` from a token file's bytes: surrounding whitespace trimmed (as client-go
/// does; kube would send a trailing newline and fail every request), neither empty nor holding
/// anything a header value cannot.
pub(crate) fn bearer(bytes: &[u8]) -> Result<HeaderValue, InvalidToken> {
    let token = trim_space(bytes);
    if token.is_empty() {
        return Err(InvalidToken);
    }
    let mut value = Vec::with_capacity(7 + token.len());
    value.extend_from_slice(b"Bearer ");
    value.extend_from_slice(token);
    let mut header = HeaderValue::from_bytes(&value).map_err(|_| InvalidToken)?;
    header.set_sensitive(true);
    Ok(header)
}

/// `bytes` without surrounding white space, as Go's `strings.TrimSpace` (client-go's) trims
/// it: Unicode's white space (a no-break space, U+2003 …) when the bytes are UTF-8, ASCII's
/// (the vertical tab included, which `trim_ascii` keeps) when they are not.
fn trim_space(bytes: &[u8]) -> &[u8] {
    match std::str::from_utf8(bytes) {
        Ok(text) => text.trim().as_bytes(),
        Err(_) => {
            let space = |b: &u8| matches!(b, b' ' | b'\t' | b'\n' | b'\r' | b'\x0b' | b'\x0c');
            let start = bytes.iter().position(|b| !space(b)).unwrap_or(bytes.len());
            let end = bytes
                .iter()
                .rposition(|b| !space(b))
                .map_or(start, |i| i + 1);
            &bytes[start..end]
        }
    }
}

impl TokenFile {
    /// The token file at `path`, whose first read (made while the session was built) gave
    /// `header`.
    pub(crate) fn new(path: PathBuf, header: HeaderValue, wait: Duration) -> Arc<Self> {
        Self::with_reader(
            path,
            header,
            wait,
            Arc::new(|path: PathBuf| {
                Box::pin(async move { read_limited(&path, MAX_FILE_BYTES).await })
            }),
        )
    }

    fn with_reader(path: PathBuf, header: HeaderValue, wait: Duration, read: Reader) -> Arc<Self> {
        Arc::new(Self {
            path,
            wait,
            read,
            state: Mutex::new(State {
                header,
                read_at: Instant::now(),
                reading: None,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update leaves the state whole: a panic elsewhere cannot spoil it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The header to send now.
    fn header(&self) -> HeaderValue {
        self.lock().header.clone()
    }

    /// Start a read if one is due (the last read 50 s old, none under way). Then, if `may_wait`,
    /// what a request waits on: the read under way, until the bound has passed since it started.
    fn check(self: &Arc<Self>, may_wait: bool) -> Option<BoxFuture<'static, ()>> {
        let now = Instant::now();
        let mut state = self.lock();
        let age = now.saturating_duration_since(state.read_at);
        let mut start = None;
        if state.reading.is_none() {
            if age < RELOAD_AFTER {
                return None;
            }
            // Outside a runtime (not reached through kube's client), nothing can be spawned:
            // the last token is sent.
            let runtime = tokio::runtime::Handle::try_current().ok()?;
            let (done, waiting) = watch::channel(false);
            state.reading = Some(Reading {
                started: now,
                done: waiting,
            });
            start = Some((
                runtime,
                Ending {
                    file: Arc::clone(self),
                    done,
                },
            ));
        }
        let wait = match &state.reading {
            Some(reading) if may_wait => {
                let deadline = reading.started + self.wait;
                let mut done = reading.done.clone();
                (now < deadline).then(|| -> BoxFuture<'static, ()> {
                    Box::pin(async move {
                        // Ends when the read does, or at the deadline.
                        let _ =
                            tokio::time::timeout_at(deadline, done.wait_for(|done| *done)).await;
                    })
                })
            }
            _ => None,
        };
        // Spawned with the lock released: a runtime shutting down drops the task at once, and
        // its `Ending` takes the lock.
        drop(state);
        if let Some((runtime, ending)) = start {
            runtime.spawn(ending.read());
        }
        wait
    }
}

/// A read under way, and its end however it ends (finished, its task dropped before or while
/// it runs, a panic): the next read is due [`RELOAD_AFTER`] from then, and requests waiting
/// for it go on.
struct Ending {
    file: Arc<TokenFile>,
    done: watch::Sender<bool>,
}

impl Ending {
    /// One read: the new token, or the last one kept (a file removed, unreadable or holding no
    /// valid token, as client-go keeps it; kubernetes/kubernetes#68164). A read that never
    /// returns keeps every later one from starting.
    async fn read(self) {
        let file = &self.file;
        let read = (file.read)(file.path.clone()).await;
        let mut state = file.lock();
        match read.map(|bytes| bearer(&bytes)) {
            Ok(Ok(header)) => state.header = header,
            Ok(Err(InvalidToken)) => tracing::warn!(
                path = %file.path.display(),
                "the token file holds no valid bearer token; the last token read is sent"
            ),
            Err(error) => tracing::warn!(
                path = %file.path.display(),
                %error,
                "re-reading the token file failed; the last token read is sent"
            ),
        }
        // Before `self` drops: its `Ending` takes the lock again.
        drop(state);
    }
}

impl Drop for Ending {
    fn drop(&mut self) {
        {
            let mut state = self.file.lock();
            state.read_at = Instant::now();
            state.reading = None;
        }
        self.done.send_replace(true);
    }
}

impl fmt::Debug for TokenFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The token is a secret: only the path is shown.
        f.debug_struct("TokenFile")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// Sets `Authorization` from a session's [`TokenFile`] (a pass-through without one).
#[derive(Debug, Clone)]
pub(crate) struct TokenFileLayer(Option<Arc<TokenFile>>);

impl TokenFileLayer {
    pub(crate) fn new(file: Option<Arc<TokenFile>>) -> Self {
        Self(file)
    }
}

impl<S> Layer<S> for TokenFileLayer {
    type Service = TokenFileAuth<S>;

    fn layer(&self, inner: S) -> TokenFileAuth<S> {
        TokenFileAuth {
            inner,
            file: self.0.clone(),
            waiting: None,
            inner_pending: false,
        }
    }
}

/// The service of [`TokenFileLayer`]: starts due reads, and is not ready while one is under way
/// (until it ends or the bound passes), so that the request after a rotation carries the new
/// token. kube's `Client` puts the whole stack behind one `Buffer` worker: every request of the
/// session queues behind that wait, at most the bound. It waits before asking the services
/// below to be ready, and never once one of them has been asked and is not ready yet (a slot
/// queued for over HTTP/1.1 is not left idle while it waits).
pub(crate) struct TokenFileAuth<S> {
    inner: S,
    file: Option<Arc<TokenFile>>,
    waiting: Option<BoxFuture<'static, ()>>,
    /// The service below was asked to be ready and was not.
    inner_pending: bool,
}

impl<S, B> Service<Request<B>> for TokenFileAuth<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        if let Some(file) = &self.file {
            // A wait left by a request that was cancelled ends at once if its read has ended or
            // its bound passed; the state is then checked again (never skipped).
            loop {
                if self.waiting.is_none() {
                    self.waiting = file.check(!self.inner_pending);
                }
                let Some(waiting) = &mut self.waiting else {
                    break;
                };
                ready!(Pin::new(waiting).poll(cx));
                self.waiting = None;
            }
        }
        let ready = self.inner.poll_ready(cx);
        self.inner_pending = ready.is_pending();
        ready
    }

    fn call(&mut self, mut request: Request<B>) -> S::Future {
        if let Some(file) = &self.file {
            request.headers_mut().insert(AUTHORIZATION, file.header());
        }
        self.inner_pending = false;
        self.inner.call(request)
    }
}

impl<S: fmt::Debug> fmt::Debug for TokenFileAuth<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenFileAuth")
            .field("inner", &self.inner)
            .field("file", &self.file)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests;
