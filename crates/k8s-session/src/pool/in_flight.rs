//! A per-session bound on requests in flight, each slot held until its response body is done.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::PollSemaphore;
use tower_layer::Layer;
use tower_service::Service;

/// At most N requests in flight through one built client (all its clones share the bound).
///
/// kube's connector speaks HTTP/1.1, so every request in flight needs its own connection, and a
/// connection stays busy until its response body has been read. The slot taken in `poll_ready`
/// therefore travels with the response and is released only when the body reaches its end,
/// fails, or is dropped unread; releasing it at the headers would not bound connections.
#[derive(Debug, Clone)]
pub(crate) struct InFlightLayer {
    semaphore: Arc<Semaphore>,
}

impl InFlightLayer {
    /// A bound of `max` requests in flight (at least 1).
    pub(crate) fn new(max: usize) -> Self {
        Self {
            semaphore: Arc::new(Semaphore::new(max.max(1))),
        }
    }
}

impl<S> Layer<S> for InFlightLayer {
    type Service = InFlight<S>;

    fn layer(&self, inner: S) -> InFlight<S> {
        InFlight {
            inner,
            semaphore: PollSemaphore::new(Arc::clone(&self.semaphore)),
            permit: None,
        }
    }
}

/// The service: not ready until it holds a slot; the slot moves into the response body.
#[derive(Debug)]
pub(crate) struct InFlight<S> {
    inner: S,
    semaphore: PollSemaphore,
    /// Taken in `poll_ready`, handed to the request in `call`.
    permit: Option<OwnedSemaphorePermit>,
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for InFlight<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    S::Future: Send + 'static,
    ResB: Body,
{
    type Response = Response<PermitBody<ResB>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        if self.permit.is_none() {
            // Waiting here is the bound: callers queue (kube's buffer in front of this service
            // holds their requests) until a slot frees. The semaphore is never closed, so
            // `None` cannot come back; if it did, requests would pass unbounded, not fail.
            self.permit = ready!(self.semaphore.poll_acquire(cx));
        }
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqB>) -> Self::Future {
        let permit = self.permit.take();
        let response = self.inner.call(request);
        Box::pin(async move {
            // An error drops the permit here; a response carries it in its body.
            let response = response.await?;
            Ok(response.map(|body| PermitBody::new(body, permit)))
        })
    }
}

pin_project_lite::pin_project! {
    /// A response body holding its request's slot until it ends, fails, or is dropped.
    #[derive(Debug)]
    pub(crate) struct PermitBody<B> {
        #[pin]
        inner: B,
        permit: Option<OwnedSemaphorePermit>,
    }
}

impl<B: Body> PermitBody<B> {
    fn new(inner: B, permit: Option<OwnedSemaphorePermit>) -> Self {
        // An empty body (204, HEAD, Content-Length: 0) frees its slot now.
        let permit = permit.filter(|_| !inner.is_end_stream());
        Self { inner, permit }
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

#[cfg(test)]
mod tests;
