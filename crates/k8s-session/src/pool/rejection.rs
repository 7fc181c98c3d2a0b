//! `RejectionLayer`: a 401 from the API server retires the session that sent it and
//! invalidates the token it carried (T11).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use http::{Request, Response, StatusCode};
use tower_layer::Layer;
use tower_service::Service;

/// What a session does when the API server rejects its credentials.
pub(crate) type OnRejected = Arc<dyn Fn() -> BoxFuture<'static, ()> + Send + Sync>;

/// Runs [`OnRejected`] on every `401 Unauthorized`, before the caller sees the response: by
/// then the pool no longer hands out the session (and, for an AAD user, the token cache no
/// longer serves the token), so the caller's retry gets a session built with a new token.
#[derive(Clone)]
pub(crate) struct RejectionLayer {
    on_rejected: OnRejected,
}

impl RejectionLayer {
    pub(crate) fn new(on_rejected: OnRejected) -> Self {
        Self { on_rejected }
    }
}

impl<S> Layer<S> for RejectionLayer {
    type Service = Rejection<S>;

    fn layer(&self, inner: S) -> Rejection<S> {
        Rejection {
            inner,
            on_rejected: Arc::clone(&self.on_rejected),
        }
    }
}

/// The service of [`RejectionLayer`].
#[derive(Clone)]
pub(crate) struct Rejection<S> {
    inner: S,
    on_rejected: OnRejected,
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for Rejection<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    S::Future: Send + 'static,
    S::Error: Send,
    ResB: Send,
{
    type Response = Response<ResB>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqB>) -> Self::Future {
        let response = self.inner.call(request);
        let on_rejected = Arc::clone(&self.on_rejected);
        Box::pin(async move {
            let response = response.await?;
            if response.status() == StatusCode::UNAUTHORIZED {
                on_rejected().await;
            }
            Ok(response)
        })
    }
}

impl fmt::Debug for RejectionLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RejectionLayer").finish_non_exhaustive()
    }
}

impl<S: fmt::Debug> fmt::Debug for Rejection<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rejection")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}
