//! A tower/axum layer: `x-api-key` → [`Identity`] in request extensions, or a JSON 401.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::Json;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue, Request, StatusCode, header};
use serde_json::json;
use tower_layer::Layer;
use tower_service::Service;

use crate::cache::ApiKeyCache;
use crate::error::AuthError;
use crate::key::Identity;
use crate::store::KeyStore;

/// The header the layer reads.
pub const API_KEY_HEADER: &str = "x-api-key";

/// Authenticates every request by its `x-api-key` header (A8).
///
/// - Accepted: the header is **removed** (so nothing downstream can log it) and the
///   [`Identity`] is inserted into the request extensions (`axum::Extension<Identity>`).
/// - Missing, repeated, non-visible-ASCII, unknown or revoked key: `401` with a JSON body
///   `{"error": "<code>", "message": "<text>"}` (see [`AuthError::code`]). Unknown and
///   revoked keys share one code and one message, so a response never tells whether a
///   guessed or leaked key existed.
/// - Store unavailable and no snapshot to answer from: `503` with `retry-after: 1`.
///
/// Malformed input is a rejection, never a panic.
#[derive(Clone)]
pub struct ApiKeyLayer<S> {
    cache: ApiKeyCache<S>,
}

impl<S: KeyStore> ApiKeyLayer<S> {
    /// A layer authenticating against `cache`.
    pub fn new(cache: ApiKeyCache<S>) -> Self {
        Self { cache }
    }
}

impl<S: KeyStore> fmt::Debug for ApiKeyLayer<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKeyLayer")
            .field("cache", &self.cache)
            .finish()
    }
}

impl<S: KeyStore, I> Layer<I> for ApiKeyLayer<S> {
    type Service = ApiKeyService<S, I>;

    fn layer(&self, inner: I) -> Self::Service {
        ApiKeyService {
            cache: self.cache.clone(),
            inner,
        }
    }
}

/// The service made by [`ApiKeyLayer`].
#[derive(Clone)]
pub struct ApiKeyService<S, I> {
    cache: ApiKeyCache<S>,
    inner: I,
}

impl<S: KeyStore, I> fmt::Debug for ApiKeyService<S, I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKeyService")
            .field("cache", &self.cache)
            .finish_non_exhaustive()
    }
}

/// The single `x-api-key` value as text.
fn presented(headers: &HeaderMap) -> Result<&str, AuthError> {
    let mut values = headers.get_all(API_KEY_HEADER).iter();
    let value = values.next().ok_or(AuthError::Missing)?;
    if values.next().is_some() {
        return Err(AuthError::Malformed);
    }
    value.to_str().map_err(|_| AuthError::Malformed)
}

/// The response for a rejection: JSON, and never the presented key.
pub fn rejection_response(error: &AuthError) -> Response {
    let status = match error {
        AuthError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::UNAUTHORIZED,
    };
    // Unknown and revoked keys share the code *and* the message: a client holding an old or
    // leaked key must not learn that it was real (the log keeps the distinction).
    let message = match error {
        AuthError::Unknown | AuthError::Revoked => "invalid API key".to_string(),
        other => other.to_string(),
    };
    let body = Json(json!({ "error": error.code(), "message": message }));
    let mut response = (status, body).into_response();
    if status == StatusCode::SERVICE_UNAVAILABLE {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}

impl<S, I, B> Service<Request<B>> for ApiKeyService<S, I>
where
    S: KeyStore,
    I: Service<Request<B>> + Clone + Send + 'static,
    I::Response: IntoResponse,
    I::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response;
    type Error = I::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response, I::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let cache = self.cache.clone();
        // The clone that was driven to readiness serves this request; the fresh clone stays.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let verdict = match presented(request.headers()) {
                Ok(key) => cache.authenticate(key).await,
                Err(error) => Err(error),
            };
            match verdict {
                Ok(identity) => {
                    request.headers_mut().remove(API_KEY_HEADER);
                    request.extensions_mut().insert::<Identity>(identity);
                    inner.call(request).await.map(IntoResponse::into_response)
                }
                Err(error) => Ok(rejection_response(&error)),
            }
        })
    }
}
