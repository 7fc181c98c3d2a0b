//! Unit tests of the in-flight bound over a fake inner service: no network, no time.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::{Ready, ready};
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use futures::FutureExt as _;
use http::{Request, Response};
use http_body::{Body, Frame};
use tower_layer::Layer as _;
use tower_service::Service;

use super::{InFlight, InFlightLayer, PermitBody};

/// A body of N one-byte chunks.
#[derive(Debug)]
struct Chunks(VecDeque<Bytes>);

impl Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.pop_front().map(|chunk| Ok(Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_empty()
    }
}

/// Answers a request whose body is `Some(n)` with `n` chunks, and `None` with an error.
#[derive(Debug)]
struct Fake;

impl Service<Request<Option<usize>>> for Fake {
    type Response = Response<Chunks>;
    type Error = &'static str;
    type Future = Ready<Result<Response<Chunks>, &'static str>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Option<usize>>) -> Self::Future {
        ready(match *request.body() {
            Some(n) => Ok(Response::new(Chunks(
                (0..n).map(|_| Bytes::from_static(b"x")).collect(),
            ))),
            None => Err("refused"),
        })
    }
}

fn is_ready(service: &mut InFlight<Fake>) -> bool {
    let mut cx = Context::from_waker(Waker::noop());
    match service.poll_ready(&mut cx) {
        Poll::Ready(result) => result.is_ok(),
        Poll::Pending => false,
    }
}

/// `poll_ready` (which must succeed), then `call`; the fake answers at once.
fn send(
    service: &mut InFlight<Fake>,
    chunks: Option<usize>,
) -> Result<Response<PermitBody<Chunks>>, &'static str> {
    assert!(is_ready(service), "a slot is free");
    service
        .call(Request::new(chunks))
        .now_or_never()
        .expect("the fake answers at once")
}

fn next_frame(body: &mut PermitBody<Chunks>) -> Option<Bytes> {
    let mut cx = Context::from_waker(Waker::noop());
    match Pin::new(body).poll_frame(&mut cx) {
        Poll::Ready(Some(Ok(frame))) => frame.into_data().ok(),
        _ => None,
    }
}

// covers the per-session in-flight bound: the slot is held past the headers, through the body.
#[test]
fn slot_is_held_until_the_body_is_read_to_the_end() {
    let mut service = InFlightLayer::new(1).layer(Fake);
    let mut body = send(&mut service, Some(2)).unwrap().into_body();
    assert!(
        !is_ready(&mut service),
        "headers are in, body unread: slot still held"
    );
    assert!(next_frame(&mut body).is_some());
    assert!(!is_ready(&mut service), "half read: slot still held");
    assert!(next_frame(&mut body).is_some());
    assert!(is_ready(&mut service), "last chunk read: slot free");
    drop(body);
}

#[test]
fn dropping_an_unread_body_frees_its_slot() {
    let mut service = InFlightLayer::new(1).layer(Fake);
    let response = send(&mut service, Some(3)).unwrap();
    assert!(!is_ready(&mut service));
    drop(response);
    assert!(is_ready(&mut service));
}

#[test]
fn an_empty_body_frees_its_slot_at_once() {
    let mut service = InFlightLayer::new(1).layer(Fake);
    let response = send(&mut service, Some(0)).unwrap();
    assert!(
        is_ready(&mut service),
        "nothing to read: slot free with the headers"
    );
    drop(response);
}

#[test]
fn a_failed_request_frees_its_slot() {
    let mut service = InFlightLayer::new(1).layer(Fake);
    assert_eq!(send(&mut service, None).unwrap_err(), "refused");
    assert!(is_ready(&mut service));
}

#[test]
fn services_from_one_layer_share_the_bound_and_waiters_are_not_failed() {
    let layer = InFlightLayer::new(2);
    let (mut a, mut b) = (layer.layer(Fake), layer.layer(Fake));
    let first = send(&mut a, Some(1)).unwrap();
    let second = send(&mut b, Some(1)).unwrap();
    // Both slots taken: a third request waits (Pending), it does not get an error.
    let mut cx = Context::from_waker(Waker::noop());
    assert!(a.poll_ready(&mut cx).is_pending());
    drop(first);
    assert!(is_ready(&mut a));
    drop(second);
    assert!(is_ready(&mut b));
}

#[test]
fn a_zero_bound_is_raised_to_one() {
    let mut service = InFlightLayer::new(0).layer(Fake);
    let response = send(&mut service, Some(1)).unwrap();
    assert!(!is_ready(&mut service));
    drop(response);
}
