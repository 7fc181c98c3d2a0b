//! The HTTP handlers: monitor cards, warmup chips, blast jobs, identity, admin, stats, the page.

use std::sync::atomic::Ordering;

use apikey_cache::{Identity, WriteError};
use axum::Json;
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use subtle::ConstantTimeEq;

use crate::app::Dashboard;
use crate::error::ApiError;

/// The page: static HTML and vanilla JS, no build step.
const INDEX_HTML: &str = include_str!("../static/index.html");

/// Header carrying the admin token.
pub const ADMIN_TOKEN_HEADER: &str = "x-admin-token";

pub(crate) async fn index() -> Response {
    ([(header::CACHE_CONTROL, "no-store")], Html(INDEX_HTML)).into_response()
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

pub(crate) async fn list_jobs(State(dashboard): State<Dashboard>) -> Result<Json<Value>, ApiError> {
    Ok(Json(
        json!({ "jobs": dashboard.inner.storage.list_jobs().await? }),
    ))
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
    let id = format!("job-{seq:04}-{:08x}", rand::random::<u32>());
    let document = json!({
        "id": id,
        "account": identity.account.as_str(),
        "request": request,
    });
    let bytes = serde_json::to_vec(&document).unwrap_or_default();
    inner.storage.put_job(&id, bytes.clone()).await?;
    let submitted = inner.upstream.submit(&id, bytes).await?;
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

/// `POST /api/admin/accounts` (header `x-admin-token`): create an account and issue its first
/// key. The answer holds the key's plaintext, the only time it is shown.
pub(crate) async fn create_account(
    State(dashboard): State<Dashboard>,
    headers: HeaderMap,
    Json(account): Json<NewAccount>,
) -> Result<Response, ApiError> {
    let expected = dashboard.inner.config.admin_token.as_ref();
    let presented = headers
        .get(ADMIN_TOKEN_HEADER)
        .map(|value| value.as_bytes());
    let allowed = match (expected, presented) {
        (Some(expected), Some(presented)) => {
            bool::from(expected.expose().as_bytes().ct_eq(presented))
        }
        _ => false,
    };
    if !allowed {
        return Err(ApiError::Forbidden);
    }
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
