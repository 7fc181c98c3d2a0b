//! The response body the server streams: paced, stallable, and counted as in flight until done.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper::body::{Body, Bytes, Frame, SizeHint};
use tokio::time::Sleep;

use super::Shared;
use super::answer::{Answer, Pace};

/// The bytes bodies are cut from.
static FILL: [u8; 64 * 1024] = [b'x'; 64 * 1024];

/// Counts one request as in flight until dropped.
#[derive(Debug)]
pub(crate) struct InFlight(Arc<Shared>);

impl InFlight {
    pub(crate) fn start(shared: Arc<Shared>) -> Self {
        shared.request_started();
        Self(shared)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.request_finished();
    }
}

/// A body of `x` bytes sent as scripted; the request stops being in flight when the last byte
/// is handed to hyper or the body is dropped.
#[derive(Debug)]
pub(crate) struct ScriptedBody {
    remaining: usize,
    sent: usize,
    pace: Pace,
    pause: Option<Pin<Box<Sleep>>>,
    in_flight: Option<InFlight>,
}

impl ScriptedBody {
    pub(crate) fn new(answer: &Answer, in_flight: InFlight) -> Self {
        let mut body = Self {
            remaining: answer.body_len,
            sent: 0,
            pace: answer.pace,
            pause: None,
            in_flight: Some(in_flight),
        };
        if body.remaining == 0 {
            body.in_flight = None;
        }
        body
    }
}

impl Body for ScriptedBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let this = self.get_mut();
        if this.remaining == 0 {
            this.in_flight = None;
            return Poll::Ready(None);
        }
        let chunk = match this.pace {
            Pace::Whole => this.remaining,
            Pace::Slow { chunk, .. } => chunk,
            Pace::StallAfter { sent } => {
                if this.sent >= sent {
                    // Stalled for good: never woken, held until hyper drops the connection.
                    return Poll::Pending;
                }
                sent - this.sent
            }
        };
        if let Some(pause) = this.pause.as_mut() {
            if pause.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            this.pause = None;
        }
        let n = chunk.min(this.remaining).min(FILL.len());
        this.remaining -= n;
        this.sent += n;
        if let Pace::Slow { interval, .. } = this.pace
            && this.remaining > 0
            && !interval.is_zero()
        {
            this.pause = Some(Box::pin(tokio::time::sleep(interval)));
        }
        if this.remaining == 0 {
            this.in_flight = None;
        }
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(&FILL[..n])))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining as u64)
    }
}
