//! The seed's naive middleware: drain every response body into memory, then rebuild the response.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::body::{Body, to_bytes};
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// Bytes buffered so far, and the largest single body.
#[derive(Debug, Default)]
pub(crate) struct Buffered {
    pub(crate) bytes: AtomicU64,
    pub(crate) largest: AtomicU64,
}

/// Materialise the whole body before the first byte goes out (what `RequestIdMiddleware` did
/// for the inspector, on every `/api/*` response). Comparison only.
pub(crate) async fn buffer_every_body(
    State(buffered): State<Arc<Buffered>>,
    request: Request,
    next: Next,
) -> Response {
    let response = next.run(request).await;
    let (parts, body) = response.into_parts();
    match to_bytes(body, usize::MAX).await {
        Ok(bytes) => {
            let len = bytes.len() as u64;
            buffered.bytes.fetch_add(len, Ordering::Relaxed);
            buffered.largest.fetch_max(len, Ordering::Relaxed);
            Response::from_parts(parts, Body::from(bytes))
        }
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "response body failed").into_response(),
    }
}
