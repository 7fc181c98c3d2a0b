//! The HTTP handlers: monitor cards, warmup chips, blast jobs, identity, admin, stats, the page.

use std::sync::atomic::Ordering;

use apikey_cache::{Identity, WriteError};
use axum::Json;
use axum::extract::{Extension, Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use request_inspector::{Entry, EntryFilter, EntryQuery};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::app::Dashboard;
use crate::error::ApiError;

/// The page: static HTML and vanilla JS, no build step.
const INDEX_HTML: &str = include_str!("../static/index.html");

/// Header carrying the admin token.
pub const ADMIN_TOKEN_HEADER: &str = "x-admin-token";

pub(crate) async fn index() -> Response {
    (
        [
            (header::CACHE_CONTROL, "no-store"),
            (header::CONTENT_SECURITY_POLICY, page_csp()),
            (header::X_FRAME_OPTIONS, "DENY"),
        ],
        Html(INDEX_HTML),
    )
        .into_response()
}

/// The page's Content-Security-Policy: nothing but its own inline script and style (named by
/// their SHA-256), fetches to its own origin, no framing, no forms, no base URI.
pub(crate) fn page_csp() -> &'static str {
    static CSP: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    CSP.get_or_init(|| {
        let hash = |open: &str, close: &str| {
            let start = INDEX_HTML.find(open).map_or(0, |i| i + open.len());
            let end = INDEX_HTML[start..].find(close).map_or(start, |i| start + i);
            let digest = Sha256::digest(&INDEX_HTML.as_bytes()[start..end]);
            format!(
                "'sha256-{}'",
                base64::Engine::encode(&base64::engine::general_purpose::STANDARD, digest)
            )
        };
        format!(
            "default-src 'none'; script-src {}; style-src {}; connect-src 'self'; \
             img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
            hash("<script>", "</script>"),
            hash("<style>", "</style>"),
        )
    })
}

/// On every answer: `X-Content-Type-Options: nosniff` and `Referrer-Policy: no-referrer`;
/// on `/api/*` answers also `Cache-Control: no-store` (they carry account data).
/// 413 at once for a request whose `content-length` is over the body limit (`limit`), before
/// authentication, routing or any read of the body.
pub(crate) async fn refuse_declared_oversize(
    State(limit): State<usize>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit as u64) {
        return ApiError::PayloadTooLarge { limit }.into_response();
    }
    next.run(request).await
}

pub(crate) async fn security_headers(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let api = request.uri().path().starts_with("/api/");
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        header::HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        header::HeaderValue::from_static("no-referrer"),
    );
    if api {
        headers.insert(
            header::CACHE_CONTROL,
            header::HeaderValue::from_static("no-store"),
        );
    }
    response
}

/// `GET /favicon.ico`: nothing, said cheaply (204, cached for a day), without a key — the
/// browser asks on every load, and a 401 there was noise in the console (issue #21).
pub(crate) async fn favicon() -> Response {
    (
        StatusCode::NO_CONTENT,
        [(header::CACHE_CONTROL, "public, max-age=86400")],
    )
        .into_response()
}

/// The fallback of every path no route has: the JSON `not_found` 404.
pub(crate) async fn not_found() -> ApiError {
    ApiError::NotFound
}

/// `GET /metrics`: the process's metrics in the Prometheus text format, rendered by the
/// exporter the application installed ([`Dashboard::set_metrics_render`]); 404 without one.
/// Unauthenticated, like a health check: the series carry no key, token or account.
pub(crate) async fn metrics(State(dashboard): State<Dashboard>) -> Response {
    match dashboard.inner.metrics_render.get() {
        Some(render) => (
            [
                (
                    header::CONTENT_TYPE,
                    "text/plain; version=0.0.4; charset=utf-8",
                ),
                (header::CACHE_CONTROL, "no-store"),
            ],
            render(),
        )
            .into_response(),
        None => (
            StatusCode::NOT_FOUND,
            [(header::CACHE_CONTROL, "no-store")],
            "no metrics exporter installed\n",
        )
            .into_response(),
    }
}

pub(crate) async fn me(Extension(identity): Extension<Identity>) -> Json<Value> {
    Json(json!({
        "account": identity.account.as_str(),
        "key_id": identity.key.as_str(),
    }))
}

pub(crate) async fn stats(State(dashboard): State<Dashboard>) -> Json<Value> {
    Json(json!(dashboard.stats()))
}

pub(crate) async fn aks(State(dashboard): State<Dashboard>) -> Json<Value> {
    Json(json!({ "clusters": dashboard.inner.clusters.aks_overview().await }))
}

pub(crate) async fn aks_detail(
    State(dashboard): State<Dashboard>,
    Path(cluster): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!(
        dashboard.inner.clusters.aks_detail(&cluster).await?
    )))
}

/// `?cluster=<name>` narrows the jobs card to one cluster.
#[derive(Debug, Deserialize)]
pub(crate) struct ClusterQuery {
    cluster: Option<String>,
}

pub(crate) async fn jobs(
    State(dashboard): State<Dashboard>,
    Query(query): Query<ClusterQuery>,
) -> Result<Json<Value>, ApiError> {
    let jobs = dashboard
        .inner
        .clusters
        .jobs(query.cluster.as_deref())
        .await?;
    Ok(Json(json!({ "clusters": jobs })))
}

pub(crate) async fn storage(State(dashboard): State<Dashboard>) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!(dashboard.inner.storage.card().await?)))
}

pub(crate) async fn warmup_clusters(State(dashboard): State<Dashboard>) -> Json<Value> {
    Json(json!({ "clusters": dashboard.inner.clusters.names() }))
}

pub(crate) async fn warmup(
    State(dashboard): State<Dashboard>,
    Path(cluster): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let status = dashboard.inner.clusters.warmup(&cluster).await?;
    Ok(Json(json!({ "cluster": cluster, "status": status })))
}

/// `?limit=` of `GET /api/blast/jobs`.
#[derive(Debug, Deserialize)]
pub(crate) struct JobsQuery {
    limit: Option<usize>,
}

/// `GET /api/blast/jobs?limit=N`: the newest jobs, at most `limit` (default
/// [`JOBS_PAGE`](crate::JOBS_PAGE), at most [`JOBS_PAGE_MAX`](crate::JOBS_PAGE_MAX)); one
/// listing call whatever the container holds.
pub(crate) async fn list_jobs(
    State(dashboard): State<Dashboard>,
    Query(query): Query<JobsQuery>,
) -> Result<Json<Value>, ApiError> {
    let limit = query
        .limit
        .unwrap_or(crate::storage::JOBS_PAGE)
        .clamp(1, crate::storage::JOBS_PAGE_MAX);
    let (jobs, more) = dashboard.inner.storage.list_jobs(limit).await?;
    Ok(Json(json!({ "jobs": jobs, "limit": limit, "more": more })))
}

/// `GET /api/inspector`: the caller's own entries only (each entry records the account that
/// sent it), with the inspector's counters. Same query and document as
/// [`request_inspector::entries_handler`].
pub(crate) async fn inspector(
    State(dashboard): State<Dashboard>,
    Extension(identity): Extension<Identity>,
    Query(query): Query<EntryQuery>,
) -> Result<Json<Value>, ApiError> {
    let inspector = &dashboard.inner.inspector;
    let filter = EntryFilter::parse(query.method.as_deref(), query.status.as_deref())
        .map_err(|e| ApiError::BadRequest(e.to_string()))?
        .owner(identity.account.as_str());
    let filter = match query.limit {
        Some(limit) => filter.limit(limit),
        None => filter,
    };
    let entries = inspector.entries_matching(&filter);
    let entries: Vec<&Entry> = entries.iter().map(|e| &**e).collect();
    Ok(Json(json!({
        "capacity": inspector.capacity(),
        "stats": inspector.stats(),
        "entries": entries,
    })))
}

/// `POST /api/blast/jobs`: store the job in Blob storage, then hand it to the upstream API.
pub(crate) async fn submit_job(
    State(dashboard): State<Dashboard>,
    Extension(identity): Extension<Identity>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let request: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("the job is not JSON: {e}")))?;
    if !request.is_object() {
        return Err(ApiError::BadRequest("the job must be a JSON object".into()));
    }
    let inner = &dashboard.inner;
    let seq = inner.jobs_submitted.fetch_add(1, Ordering::Relaxed) + 1;
    // Blob listings sort by name: an inverted timestamp first makes the newest job list first,
    // so `GET /api/blast/jobs` reads one bounded page.
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let id = format!(
        "job-{:013}-{seq:04}-{:08x}",
        9_999_999_999_999_u64.saturating_sub(now_ms),
        rand::random::<u32>()
    );
    let document = json!({
        "id": id,
        "account": identity.account.as_str(),
        "request": request,
    });
    let bytes = serde_json::to_vec(&document).unwrap_or_default();
    let outcome = async {
        inner.storage.put_job(&id, bytes.clone()).await?;
        inner.upstream.submit(&id, bytes).await
    }
    .await;
    inner.telemetry.job(outcome.is_ok());
    let submitted = outcome?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "id": id, "upstream_status": submitted.status })),
    )
        .into_response())
}

/// The body of `POST /api/admin/accounts`.
#[derive(Debug, Deserialize)]
pub(crate) struct NewAccount {
    id: String,
    name: Option<String>,
}

/// Guards `POST /api/admin/accounts`: runs before anything reads the body, so a request
/// without the token gets 403 whatever its body (not 400/415/422 from the JSON extractor).
/// Both tokens are hashed (SHA-256) and the digests compared in constant time, so neither the
/// comparison's time nor its length depends on the token's length.
pub(crate) async fn require_admin(
    State(dashboard): State<Dashboard>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let expected = dashboard.inner.admin_digest.as_ref();
    let presented = request
        .headers()
        .get(ADMIN_TOKEN_HEADER)
        .map(|value| value.as_bytes())
        .filter(|value| !value.is_empty());
    let allowed = match (expected, presented) {
        (Some(expected), Some(presented)) => {
            let presented: [u8; 32] = Sha256::digest(presented).into();
            bool::from(expected.ct_eq(&presented))
        }
        _ => false,
    };
    if !allowed {
        return ApiError::Forbidden.into_response();
    }
    next.run(request).await
}

/// `POST /api/admin/accounts` (header `x-admin-token`, checked by [`require_admin`] first):
/// create an account and issue its first key. The answer holds the key's plaintext, the only
/// time it is shown.
pub(crate) async fn create_account(
    State(dashboard): State<Dashboard>,
    Json(account): Json<NewAccount>,
) -> Result<Response, ApiError> {
    let keys = &dashboard.inner.keys;
    let name = account.name.as_deref().unwrap_or(&account.id);
    let id = match keys.create_account(&account.id, name).await {
        Ok(id) => id,
        Err(e @ (WriteError::AccountExists | WriteError::InvalidAccountId)) => {
            return Err(ApiError::BadRequest(e.to_string()));
        }
        Err(e) => return Err(ApiError::backend("key store", &e)),
    };
    let issued = keys
        .issue_key(&id)
        .await
        .map_err(|e| ApiError::backend("key store", &e))?;
    Ok((
        StatusCode::CREATED,
        [(header::CACHE_CONTROL, "no-store")],
        Json(json!({
            "account": issued.identity.account.as_str(),
            "key_id": issued.identity.key.as_str(),
            "api_key": issued.secret.expose(),
        })),
    )
        .into_response())
}
