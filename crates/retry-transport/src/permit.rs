//! Connection slots: a semaphore permit per request that lives exactly as long as its response body.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http_body::{Body, Frame, SizeHint};
use reqwest::ResponseBuilderExt as _;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::error::Error;
use crate::telemetry::{ClientMetrics, Host, SlotUse};

/// More hosts than this: idle per-host counters are dropped (the map stays bounded).
const PRUNE_HOSTS_ABOVE: usize = 1024;

/// A connection slot: a permit of the total limit and one of its host's limit (R4, R11).
/// Dropping it releases both.
#[derive(Debug)]
pub(crate) struct Slot {
    _host: OwnedSemaphorePermit,
    _total: OwnedSemaphorePermit,
    _metrics: SlotUse,
}

/// The connection-slot limits: `max_in_use` permits in all (R4) and `max_in_use_per_host`
/// per host (R11), acquired within one acquire timeout.
#[derive(Debug)]
pub(crate) struct Limiter {
    semaphore: Arc<Semaphore>,
    max_in_use: usize,
    max_in_use_per_host: usize,
    hosts: Mutex<HashMap<String, Arc<Semaphore>>>,
    metrics: ClientMetrics,
}

impl Limiter {
    pub(crate) fn new(max_in_use: usize, max_in_use_per_host: usize) -> Self {
        Self {
            semaphore: Arc::new(Semaphore::new(max_in_use)),
            max_in_use,
            max_in_use_per_host,
            hosts: Mutex::new(HashMap::new()),
            metrics: ClientMetrics::new(max_in_use, max_in_use_per_host),
        }
    }

    /// The client's metrics handles.
    pub(crate) fn metrics(&self) -> &ClientMetrics {
        &self.metrics
    }

    fn host(&self, host: &str) -> Arc<Semaphore> {
        let mut hosts = self
            .hosts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(semaphore) = hosts.get(host) {
            return Arc::clone(semaphore);
        }
        if hosts.len() >= PRUNE_HOSTS_ABOVE {
            // Only counters nobody holds or waits on (the map's Arc is the only one) go.
            hosts.retain(|_, semaphore| Arc::strong_count(semaphore) > 1);
        }
        Arc::clone(
            hosts
                .entry(host.to_string())
                .or_insert_with(|| Arc::new(Semaphore::new(self.max_in_use_per_host))),
        )
    }

    /// A slot for `host` — its host's permit first, then the total one, so a request queued
    /// behind a busy host holds nothing of the total — or [`Error::PoolTimeout`] once
    /// `timeout` (tokio time) has passed in all. The error's `max_in_use` is the limit that
    /// was full.
    pub(crate) async fn acquire(
        &self,
        host: &str,
        timeout: Duration,
        metrics: &Host,
    ) -> Result<Slot, Error> {
        let started = Instant::now();
        let deadline = started + timeout;
        let _pending = self.metrics.pending();
        let per_host = self.host(host);
        let host_permit = match tokio::time::timeout_at(deadline, per_host.acquire_owned()).await {
            Ok(Ok(permit)) => permit,
            // The semaphore is never closed; treat a closed one like a timeout rather than panic.
            Ok(Err(_)) | Err(_) => {
                self.metrics.timed_out(timeout);
                tracing::debug!(
                    host,
                    max_in_use_per_host = self.max_in_use_per_host,
                    "retry-transport: no slot free for this host"
                );
                return Err(Error::PoolTimeout {
                    waited: timeout,
                    max_in_use: self.max_in_use_per_host,
                });
            }
        };
        let acquire = Arc::clone(&self.semaphore).acquire_owned();
        match tokio::time::timeout_at(deadline, acquire).await {
            Ok(Ok(permit)) => Ok(Slot {
                _host: host_permit,
                _total: permit,
                _metrics: self.metrics.acquired(metrics, started.elapsed()),
            }),
            Ok(Err(_)) | Err(_) => {
                self.metrics.timed_out(timeout);
                Err(Error::PoolTimeout {
                    waited: timeout,
                    max_in_use: self.max_in_use,
                })
            }
        }
    }

    pub(crate) fn in_use(&self) -> usize {
        self.max_in_use
            .saturating_sub(self.semaphore.available_permits())
    }

    /// Slots held now for `host`.
    pub(crate) fn in_use_for(&self, host: &str) -> usize {
        let hosts = self
            .hosts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        hosts.get(host).map_or(0, |semaphore| {
            self.max_in_use_per_host
                .saturating_sub(semaphore.available_permits())
        })
    }

    pub(crate) fn max_in_use(&self) -> usize {
        self.max_in_use
    }

    pub(crate) fn max_in_use_per_host(&self) -> usize {
        self.max_in_use_per_host
    }
}

pin_project_lite::pin_project! {
    /// A response body that holds its connection slot until it is read to the end, fails, or is
    /// dropped.
    #[derive(Debug)]
    pub(crate) struct PermitBody<B> {
        #[pin]
        inner: B,
        permit: Option<Slot>,
    }
}

impl<B: Body> Body for PermitBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let mut this = self.project();
        let polled = this.inner.as_mut().poll_frame(cx);
        match &polled {
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => *this.permit = None,
            Poll::Ready(Some(Ok(_))) if this.inner.is_end_stream() => *this.permit = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Move `permit` into `response`'s body, so the slot is released with the body (R4).
pub(crate) fn attach(response: reqwest::Response, permit: Slot) -> reqwest::Response {
    let url = response.url().clone();
    let (mut parts, body) = http::Response::<reqwest::Body>::from(response).into_parts();
    // An empty body (204, HEAD, Content-Length: 0) frees its slot now.
    let permit = (!body.is_end_stream()).then_some(permit);
    // Keep `Response::url()`: reqwest reads it from an extension only its builder can set.
    if let Ok(with_url) = http::Response::builder().url(url).body(()) {
        parts.extensions.extend(with_url.into_parts().0.extensions);
    }
    let body = reqwest::Body::wrap(PermitBody {
        inner: body,
        permit,
    });
    reqwest::Response::from(http::Response::from_parts(parts, body))
}

/// What happened to a retryable response before the sleep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Released {
    /// Read to the end: hyper put the keep-alive connection back in its pool.
    Drained,
    /// Dropped unread (too big, too slow, or failed): the connection was closed.
    Discarded,
}

/// Read and discard up to `limit` bytes of `response` within `timeout`, then drop it (R1).
pub(crate) async fn release(
    mut response: reqwest::Response,
    limit: usize,
    timeout: Duration,
) -> Released {
    if response
        .content_length()
        .is_some_and(|len| len > limit as u64)
    {
        return Released::Discarded;
    }
    let drain = async {
        let mut read = 0usize;
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    read = read.saturating_add(chunk.len());
                    if read > limit {
                        return Released::Discarded;
                    }
                }
                Ok(None) => return Released::Drained,
                Err(_) => return Released::Discarded,
            }
        }
    };
    tokio::time::timeout(timeout, drain)
        .await
        .unwrap_or(Released::Discarded)
}
