//! The axum handler that serves the ring as JSON (feature `axum`).

use axum::Json;
use axum::Router;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::{Deserialize, Serialize};

use crate::{Entry, EntryFilter, Inspector, InspectorStats};

/// The query string of [`entries_handler`]: `?method=POST&status=4xx&limit=20`.
#[derive(Debug, Clone, Default, Deserialize)]
#[non_exhaustive]
pub struct EntryQuery {
    /// Keep only this method (case-insensitive).
    pub method: Option<String>,
    /// Keep only this status code (`404`) or class (`4xx`).
    pub status: Option<String>,
    /// Return at most this many entries (the newest).
    pub limit: Option<usize>,
}

/// The JSON document [`entries_handler`] serves.
#[derive(Debug, Serialize)]
struct Page<'a> {
    capacity: usize,
    stats: InspectorStats,
    entries: Vec<&'a Entry>,
}

#[derive(Debug, Serialize)]
struct ErrorBody {
    error: String,
}

/// `GET` handler: the ring as JSON, newest first, filtered by `method` / `status`, with the
/// inspector's counters. An invalid filter gets `400` with `{"error": "..."}`.
///
/// The document is `{"capacity": n, "stats": {...}, "entries": [Entry, ...]}`.
pub async fn entries_handler(
    State(inspector): State<Inspector>,
    Query(query): Query<EntryQuery>,
) -> Response {
    let filter = match EntryFilter::parse(query.method.as_deref(), query.status.as_deref()) {
        Ok(filter) => filter,
        Err(err) => {
            return (
                StatusCode::BAD_REQUEST,
                Json(ErrorBody {
                    error: err.to_string(),
                }),
            )
                .into_response();
        }
    };
    let filter = match query.limit {
        Some(limit) => filter.limit(limit),
        None => filter,
    };
    let entries = inspector.entries_matching(&filter);
    Json(Page {
        capacity: inspector.capacity(),
        stats: inspector.stats(),
        entries: entries.iter().map(|e| &**e).collect(),
    })
    .into_response()
}

impl Inspector {
    /// A router serving [`entries_handler`] at `/`; nest it where the panel expects it, e.g.
    /// `.nest("/api/inspector", inspector.router())`. Add that path to the polling prefixes, or
    /// the panel's own polling fills the ring.
    pub fn router<S>(&self) -> Router<S>
    where
        S: Clone + Send + Sync + 'static,
    {
        Router::new()
            .route("/", get(entries_handler))
            .with_state(self.clone())
    }
}
