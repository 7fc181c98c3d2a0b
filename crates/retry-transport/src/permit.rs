//! Connection slots: a semaphore permit per request that lives exactly as long as its response body.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http_body::{Body, Frame, SizeHint};
use reqwest::ResponseBuilderExt as _;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::Error;

/// The connection-slot limit (R4): `max_in_use` permits, acquired with a timeout.
#[derive(Debug)]
pub(crate) struct Limiter {
    semaphore: Arc<Semaphore>,
    max_in_use: usize,
}

impl Limiter {
    pub(crate) fn new(max_in_use: usize) -> Self {
        Self {
            semaphore: Arc::new(Semaphore::new(max_in_use)),
            max_in_use,
        }
    }

    /// A slot, or [`Error::PoolTimeout`] after `timeout` (tokio time).
    pub(crate) async fn acquire(&self, timeout: Duration) -> Result<OwnedSemaphorePermit, Error> {
        let acquire = Arc::clone(&self.semaphore).acquire_owned();
        match tokio::time::timeout(timeout, acquire).await {
            Ok(Ok(permit)) => Ok(permit),
            // The semaphore is never closed; treat a closed one like a timeout rather than panic.
            Ok(Err(_)) | Err(_) => Err(Error::PoolTimeout {
                waited: timeout,
                max_in_use: self.max_in_use,
            }),
        }
    }

    pub(crate) fn in_use(&self) -> usize {
        self.max_in_use
            .saturating_sub(self.semaphore.available_permits())
    }

    pub(crate) fn max_in_use(&self) -> usize {
        self.max_in_use
    }
}

pin_project_lite::pin_project! {
    /// A response body that holds its connection slot until it is read to the end, fails, or is
    /// dropped.
    #[derive(Debug)]
    pub(crate) struct PermitBody<B> {
        #[pin]
        inner: B,
        permit: Option<OwnedSemaphorePermit>,
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
pub(crate) fn attach(
    response: reqwest::Response,
    permit: OwnedSemaphorePermit,
) -> reqwest::Response {
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
