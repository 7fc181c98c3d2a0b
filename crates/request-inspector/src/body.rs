//! `InspectBody`: forwards every frame unchanged, copying a bounded prefix when capturing.

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::Outcome;
use crate::capture::Finisher;
use crate::record::Record;

pin_project! {
    /// The request and response body type of [`InspectorService`](crate::InspectorService).
    ///
    /// Every frame of the wrapped body is forwarded as it arrives, unchanged, with the same
    /// `size_hint` and `is_end_stream` (so `Content-Length` survives). For a captured exchange
    /// the first `body_limit` bytes are also copied aside (a tee, I5); for a polling GET nothing
    /// is copied at all (I2).
    pub struct InspectBody<B> {
        #[pin]
        inner: B,
        tap: Tap,
    }
}

pub(crate) enum Tap {
    /// Not captured: frames are only forwarded.
    None,
    /// A captured request's body, read by the inner service.
    Request(Arc<Record>),
    /// A captured response's body; its end records the entry.
    Response(Finisher),
}

impl<B> InspectBody<B> {
    /// The wrapped body.
    pub fn into_inner(self) -> B {
        self.inner
    }
}

impl<B: Body> InspectBody<B> {
    /// `inner` with `tap`, its end recorded at once when it is already empty (a server may never
    /// poll it).
    pub(crate) fn tapped(inner: B, mut tap: Tap) -> Self {
        if inner.is_end_stream() {
            tap.on_end();
        }
        Self { inner, tap }
    }
}

impl Tap {
    /// `remaining`: the body's announced rest (`size_hint().lower()`) after this frame; `end`:
    /// the body ended with it (one lock on the record for both, for a request body).
    fn on_data(&mut self, data: &[u8], remaining: u64, end: bool) {
        match self {
            Tap::None => {}
            Tap::Request(record) => record.append(false, data, remaining, end),
            Tap::Response(finisher) => finisher.append(data, remaining, end),
        }
    }

    fn on_end(&mut self) {
        match self {
            Tap::None => {}
            Tap::Request(record) => record.body_complete(false),
            Tap::Response(finisher) => finisher.finish(Outcome::Complete),
        }
    }

    fn on_error(&mut self) {
        if let Tap::Response(finisher) = self {
            finisher.finish(Outcome::BodyError);
        }
    }
}

impl<B> Body for InspectBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let mut this = self.project();
        let polled = ready!(this.inner.as_mut().poll_frame(cx));
        match &polled {
            Some(Ok(frame)) => {
                // Servers stop polling once `is_end_stream` says so: record the end now.
                let end = this.inner.is_end_stream();
                match frame.data_ref() {
                    Some(data) if !matches!(this.tap, Tap::None) => {
                        let remaining = this.inner.size_hint().lower();
                        this.tap.on_data(data, remaining, end);
                    }
                    _ if end => this.tap.on_end(),
                    _ => {}
                }
            }
            Some(Err(_)) => this.tap.on_error(),
            None => this.tap.on_end(),
        }
        Poll::Ready(polled)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> fmt::Debug for InspectBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tap = match self.tap {
            Tap::None => "none",
            Tap::Request(_) => "request",
            Tap::Response(_) => "response",
        };
        f.debug_struct("InspectBody")
            .field("tap", &tap)
            .finish_non_exhaustive()
    }
}
