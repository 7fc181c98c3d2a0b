//! The layer for axum (feature `axum`): the same layer, with axum's own body type on both sides,
//! so that a polling GET's bodies are handed on as they are, not wrapped.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use axum::body::Body;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::BodyExt;
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;
use tracing::Span;

use crate::body::Tap;
use crate::capture::Finisher;
use crate::inspector::{Handle, Shards};
use crate::service::{Begun, begin, on_head, on_service_error};
use crate::{InspectBody, RequestId};

/// The tower layer made by [`Inspector::axum_layer`](crate::Inspector::axum_layer): what
/// [`InspectorLayer`](crate::InspectorLayer) does, for axum's [`Body`] on both sides.
///
/// [`InspectorLayer`](crate::InspectorLayer) wraps every request and response body in an
/// [`InspectBody`], which axum boxes into its `Body` again on the way to the handler and back
/// (one allocation each way, on every request). This layer wraps only the bodies it captures: a
/// polling GET's bodies go through as they came, and a captured exchange's are wrapped and
/// boxed once. Use it with `Router::layer` and around a `Router` alike.
#[derive(Clone)]
pub struct AxumInspectorLayer {
    shards: Arc<Shards>,
}

impl AxumInspectorLayer {
    pub(crate) fn new(shards: Arc<Shards>) -> Self {
        Self { shards }
    }
}

impl fmt::Debug for AxumInspectorLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AxumInspectorLayer").finish_non_exhaustive()
    }
}

impl<S> Layer<S> for AxumInspectorLayer {
    type Service = AxumInspectorService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AxumInspectorService {
            inner,
            handle: Handle::root(&self.shards),
        }
    }
}

/// The service made by [`AxumInspectorLayer`].
#[derive(Clone)]
pub struct AxumInspectorService<S> {
    inner: S,
    handle: Handle,
}

impl<S> fmt::Debug for AxumInspectorService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AxumInspectorService")
            .finish_non_exhaustive()
    }
}

impl<S, ResBody> Service<Request<Body>> for AxumInspectorService<S>
where
    S: Service<Request<Body>, Response = Response<ResBody>>,
    ResBody: http_body::Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<axum::BoxError>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = AxumResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<Body>) -> Self::Future {
        let Begun {
            span,
            request_id,
            capture,
        } = begin(&self.handle, &mut request);
        let (request, finisher) = match capture {
            Some((record, finisher)) => {
                let request = request
                    .map(|body| into_axum_body(InspectBody::tapped(body, Tap::Request(record))));
                (request, Some(finisher))
            }
            // A polling GET: the body as it came.
            None => (request, None),
        };
        let inner = {
            let _enter = span.enter();
            self.inner.call(request)
        };
        AxumResponseFuture {
            inner,
            span,
            request_id: Some(request_id),
            finisher,
        }
    }
}

pin_project! {
    /// The future of [`AxumInspectorService`]: the inner response with `x-request-id` set and,
    /// for a captured exchange, a body that records the entry when it ends.
    pub struct AxumResponseFuture<F> {
        #[pin]
        inner: F,
        span: Span,
        request_id: Option<RequestId>,
        finisher: Option<Finisher>,
    }
}

impl<F> fmt::Debug for AxumResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AxumResponseFuture")
            .field("request_id", &self.request_id)
            .field("captured", &self.finisher.is_some())
            .finish_non_exhaustive()
    }
}

impl<F, B, E> Future for AxumResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Output = Result<Response<Body>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let _enter = this.span.enter();
        match ready!(this.inner.poll(cx)) {
            Ok(response) => {
                let (mut parts, body) = response.into_parts();
                let body =
                    match on_head(this.span, this.request_id, this.finisher, &mut parts, &body) {
                        Some(tap) => into_axum_body(InspectBody::tapped(body, tap)),
                        // Not captured: axum's `Body` is handed on as it is (`Body::new` boxes any
                        // other body type, as axum would).
                        None => Body::new(body),
                    };
                Poll::Ready(Ok(Response::from_parts(parts, body)))
            }
            Err(err) => {
                on_service_error(this.finisher);
                Poll::Ready(Err(err))
            }
        }
    }
}

/// A captured body as axum's `Body`, its errors as the body without the layer would give them.
///
/// `Body::new` wraps a foreign body's error in an `axum::Error`; the wrapped body's own error is
/// often one already (axum's `Body`), and an `axum::Error` in an `axum::Error` hides its cause
/// from axum's extractors: a request body cut by an outer length limit (tower-http's
/// `RequestBodyLimitLayer`) must answer `413`, not `400` (a helper's black-box review). So one
/// `axum::Error` is taken off first, and `Body::new` puts it back: one, as without the layer.
fn into_axum_body<B>(body: InspectBody<B>) -> Body
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    Body::new(body.map_err(|error| -> axum::BoxError {
        match error.into().downcast::<axum::Error>() {
            Ok(error) => error.into_inner(),
            Err(error) => error,
        }
    }))
}
