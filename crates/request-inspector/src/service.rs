//! The tower `Layer`, its `Service` and response future.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;
use tracing::Span;

use crate::body::Tap;
use crate::capture::Finisher;
use crate::inspector::{Handle, Shards};
use crate::record::{Record, RequestParts};
use crate::{InspectBody, Outcome, REQUEST_ID_HEADER, RequestId};

/// The tower layer made by [`Inspector::layer`](crate::Inspector::layer).
#[derive(Clone)]
pub struct InspectorLayer {
    shards: Arc<Shards>,
}

impl InspectorLayer {
    pub(crate) fn new(shards: Arc<Shards>) -> Self {
        Self { shards }
    }
}

impl fmt::Debug for InspectorLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InspectorLayer").finish_non_exhaustive()
    }
}

impl<S> Layer<S> for InspectorLayer {
    type Service = InspectorService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        InspectorService {
            inner,
            handle: Handle::root(&self.shards),
        }
    }
}

/// The service made by [`InspectorLayer`]: request ids on every request; capture of every
/// request except polling GETs.
#[derive(Clone)]
pub struct InspectorService<S> {
    inner: S,
    handle: Handle,
}

impl<S> fmt::Debug for InspectorService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InspectorService").finish_non_exhaustive()
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for InspectorService<S>
where
    S: Service<Request<InspectBody<ReqBody>>, Response = Response<ResBody>>,
    ReqBody: Body<Data = Bytes>,
    ResBody: Body<Data = Bytes>,
{
    type Response = Response<InspectBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        let Begun {
            span,
            request_id,
            capture,
        } = begin(&self.handle, &mut request);
        let (tap, finisher) = match capture {
            Some((record, finisher)) => (Tap::Request(record), Some(finisher)),
            None => (Tap::None, None),
        };
        let request = request.map(|body| InspectBody::tapped(body, tap));
        let inner = {
            let _enter = span.enter();
            self.inner.call(request)
        };
        ResponseFuture {
            inner,
            span,
            request_id: Some(request_id),
            finisher,
        }
    }
}

/// What the layer decided and made for one request before its body is handed on: the same for
/// every kind of service the layer makes.
pub(crate) struct Begun {
    pub(crate) span: Span,
    pub(crate) request_id: RequestId,
    /// A captured exchange's record (the request body's tap) and its response side.
    pub(crate) capture: Option<(Arc<Record>, Finisher)>,
}

/// The request side of the layer: the id taken or generated and put into the header (and the
/// extensions), the capture decided, the span opened, the pass-through counted or the record
/// started.
// Always inlined: a call returning `Begun` through memory cost about 110 instructions per
// request on the bench's captured POST (callgrind), against the code before it was shared.
#[inline(always)]
pub(crate) fn begin<B: Body>(handle: &Handle, request: &mut Request<B>) -> Begun {
    let shared = handle.shard();
    let (id, rejected) = RequestId::take_or_insert(request.headers_mut());
    let path = request.uri().path();
    let config = &shared.config;
    let polling = !config.polling.should_capture(path, Some(request.method()));
    // The owner is derived only for requests that would be captured: a polling GET costs
    // nothing more than before.
    let owner = if polling {
        None
    } else {
        config.owner.and_then(|owner| owner(request.extensions()))
    };
    let unowned = !polling && config.require_owner && owner.is_none();
    let capture = !polling && !unowned;
    let span = tracing::info_span!(
        "request",
        request_id = %id,
        method = %request.method(),
        path = %path,
        captured = capture,
        status = tracing::field::Empty,
    );
    if let Some(reason) = rejected {
        let _enter = span.enter();
        tracing::debug!(%reason, "replaced the incoming x-request-id with a fresh one");
    }
    if config.request_id_extension {
        request.extensions_mut().insert(id.clone());
    } else {
        // An id another layer put there would shadow this one for the extractor (which
        // reads the extension first). Nothing to do, and no allocation, when there is none.
        request.extensions_mut().remove::<RequestId>();
    }
    let capture = if capture {
        let record = Record::start(
            handle.hold(),
            RequestParts {
                request_id: id.as_str(),
                method: request.method().as_str(),
                path: request.uri().path(),
                query: request.uri().query(),
                owner,
                headers: request.headers(),
                body_hint: request.body().size_hint().lower(),
            },
        );
        let finisher = Finisher::new(Arc::clone(&record));
        Some((record, finisher))
    } else {
        let (counter, metric) = if unowned {
            (&shared.counters.unowned, &shared.metrics.unowned)
        } else {
            (&shared.counters.passed_through, &shared.metrics.streamed)
        };
        counter.add(1);
        metric.add(1);
        None
    };
    Begun {
        span,
        request_id: id,
        capture,
    }
}

/// The response side of the layer when the inner service fails: a captured exchange is
/// recorded as `service_error`.
pub(crate) fn on_service_error(finisher: &mut Option<Finisher>) {
    if let Some(mut finisher) = finisher.take() {
        finisher.finish(Outcome::ServiceError);
    }
}

/// The response side of the layer, when the head arrives: the id moved into the response's
/// header, the status into the span; for a captured exchange the head is recorded and the
/// finisher becomes the response body's tap (`None`: not captured).
#[inline]
pub(crate) fn on_head<B: Body>(
    span: &Span,
    request_id: &mut Option<RequestId>,
    finisher: &mut Option<Finisher>,
    parts: &mut http::response::Parts,
    body: &B,
) -> Option<Tap> {
    if let Some(id) = request_id.take() {
        parts
            .headers
            .insert(REQUEST_ID_HEADER, id.into_header_value());
    }
    span.record("status", parts.status.as_u16());
    let mut finisher = finisher.take()?;
    let hint = body.size_hint().lower();
    finisher.response(parts.status.as_u16(), &parts.headers, hint);
    Some(Tap::Response(finisher))
}

pin_project! {
    /// The future of [`InspectorService`]: the inner response with `x-request-id` set and, for a
    /// captured exchange, a body that records the entry when it ends.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        span: Span,
        // Moved into the response's header when the response arrives (not cloned: issue #23).
        request_id: Option<RequestId>,
        finisher: Option<Finisher>,
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("request_id", &self.request_id)
            .field("captured", &self.finisher.is_some())
            .finish_non_exhaustive()
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Body<Data = Bytes>,
{
    type Output = Result<Response<InspectBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let _enter = this.span.enter();
        match ready!(this.inner.poll(cx)) {
            Ok(response) => {
                let (mut parts, body) = response.into_parts();
                let tap = on_head(this.span, this.request_id, this.finisher, &mut parts, &body);
                let body = InspectBody::tapped(body, tap.unwrap_or(Tap::None));
                Poll::Ready(Ok(Response::from_parts(parts, body)))
            }
            Err(err) => {
                on_service_error(this.finisher);
                Poll::Ready(Err(err))
            }
        }
    }
}
