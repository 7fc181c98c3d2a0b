//! A tower layer that gives every request an id and records one-shot calls (POST, PUT, PATCH,
//! DELETE, non-polling GETs) into a bounded ring for an HTTP inspector panel, while polling GETs
//! stream through untouched.
//!
//! Seed 001: a request-id middleware drained every `/api/*` response body into memory so the
//! inspector could show it. The dashboard's polling GETs paid that cost on every tick (the
//! whole body buffered before the first byte reached the client), and their identical payloads
//! filled the ring, pushing out the POST and DELETE calls users wanted to inspect. Here:
//!
//! - every request gets an `x-request-id`: a valid incoming one (1–128 bytes of visible ASCII)
//!   is propagated, anything else is replaced by a fresh id; it is set on the request, the
//!   response, the request's extensions ([`RequestId`]; opt out with
//!   [`InspectorConfig::request_id_extension`]) and the `request` tracing span (I1); with the
//!   feature `axum`, a handler takes it as an argument (`id: RequestId`);
//! - a `GET` under a polling prefix (matched on whole path segments: `/api/monitor/aks` is under
//!   `/api/monitor`, `/api/monitoring` is not — see [`PollingPrefixes`]) is passed through with
//!   no copy and no ring entry (I2); everything else is captured (I3); [`Inspector::should_capture`]
//!   and [`PollingPrefixes::should_capture`] are public, and an unknown method counts as non-GET
//!   (I4);
//! - captured bodies are *tee'd* while they stream: each frame goes on at once, only the first
//!   `body_limit` bytes are copied aside and a cut is flagged `truncated`; `authorization`,
//!   `proxy-authorization`, `cookie`, `set-cookie`, `x-api-key` (and any header you add) are
//!   redacted (I5), and so is any header whose name mentions a token, secret, key, signature or
//!   SAS ([`REDACTED_NAME_WORDS`], [`REDACTED_NAME_SEGMENTS`]); the query string is recorded
//!   with credential parameters' values redacted ([`REDACTED_QUERY_PARAMS`]), and recorded
//!   headers are cut at [`HEADER_LIMIT`] bytes per list (I6);
//! - placed inside an authentication layer with [`InspectorConfig::owner_from`] and
//!   [`InspectorConfig::require_owner`], each entry names its owner, a request without one is
//!   counted, never stored, and [`EntryFilter::owner`] serves each caller only its own entries
//!   (I6);
//! - the ring has a fixed capacity, newest first, and no lock over it: a push takes an id and
//!   locks only that id's slot, a reader copies the handles slot by slot (every list a run of
//!   consecutive ids), no lock is ever held across an `.await`, and [`Inspector::stats`] reads
//!   atomics only; [`InspectorStats`] counts the bytes the layer holds as the allocator
//!   sees them, so "how much memory does the inspector cost" is a number, not a guess;
//! - a polling GET costs little: no allocation beyond its request id's (a generated id is a
//!   slice of a per-thread buffer written 16 ids at a time), no string building;
//!   a full ring reuses the evicted records (and their arenas) for the next captures;
//! - with the feature `metrics` (default), `inspector.*` series (requests by mode, bytes
//!   captured, evictions, the ring's entries and bytes) are recorded through the `metrics`
//!   facade with handles registered in [`Inspector::new`]; the application installs the
//!   recorder.
//!
//! The layer works with any tower service over `http::Request<B>` / `http::Response<B>` with
//! [`http_body`] 1.x bodies whose data is [`bytes::Bytes`] (hyper, axum). The
//! feature `axum` (default) adds [`Inspector::axum_layer`], the same layer with axum's `Body`
//! on both sides (a polling GET's bodies are handed on unwrapped, with no box on the way to the
//! handler and back), and [`Inspector::router`] / [`entries_handler`], which serve the ring as
//! JSON with `?method=` / `?status=` / `?limit=` filters.
//!
//! # Example
//!
//! ```
//! use axum::body::{Body, to_bytes};
//! use axum::routing::{get, post};
//! use axum::Router;
//! use http::Request;
//! use request_inspector::{Inspector, InspectorConfig};
//! use tower::ServiceExt;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let inspector = Inspector::new(
//!     InspectorConfig::new()
//!         // The panel polls the inspector itself too: exempt it as well.
//!         .polling_prefixes(["/api/monitor/", "/api/inspector"])?
//!         .capacity(200)
//!         .body_limit(16 * 1024),
//! );
//! let app = Router::new()
//!     .route("/api/monitor/aks", get(|| async { "cluster status" }))
//!     .route("/api/jobs", post(|body: String| async move { format!("submitted {body}") }))
//!     .nest("/api/inspector", inspector.router())
//!     // `axum_layer()` for axum; `layer()` for any other tower stack.
//!     .layer(inspector.axum_layer());
//!
//! let response = app
//!     .clone()
//!     .oneshot(Request::post("/api/jobs").header("x-request-id", "req-1").body(Body::from("job-1"))?)
//!     .await?;
//! assert_eq!(response.headers()["x-request-id"], "req-1");
//! to_bytes(response.into_body(), usize::MAX).await?; // the entry is recorded at the body's end
//!
//! let response = app.clone().oneshot(Request::get("/api/monitor/aks").body(Body::empty())?).await?;
//! to_bytes(response.into_body(), usize::MAX).await?; // streamed through, not recorded
//!
//! let entries = inspector.entries();
//! assert_eq!(entries.len(), 1);
//! assert_eq!(entries[0].request_body.text(), "job-1");
//! assert_eq!(entries[0].response_body.text(), "submitted job-1");
//! assert_eq!(inspector.stats().passed_through, 1);
//! # Ok(())
//! # }
//! ```

// The README's example compiles (and runs) as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

#[cfg(feature = "axum")]
mod axum_layer;
mod body;
mod capture;
mod config;
mod entry;
mod error;
#[cfg(feature = "axum")]
mod handler;
mod inspector;
mod matcher;
mod record;
mod request_id;
mod ring;
mod service;
mod telemetry;

#[cfg(feature = "axum")]
pub use axum_layer::{AxumInspectorLayer, AxumInspectorService, AxumResponseFuture};
pub use body::InspectBody;
pub use config::{
    BODY_LIMIT, CAPACITY, DEFAULT_REDACTED_HEADERS, HEADER_LIMIT, HEADERS_CUT, InspectorConfig,
    OwnerFn, REDACTED, REDACTED_NAME_SEGMENTS, REDACTED_NAME_WORDS, REDACTED_QUERY_PARAMS,
};
pub use entry::{CapturedBody, Entry, Header, Outcome};
pub use error::{ConfigError, FilterError, RequestIdError};
#[cfg(feature = "axum")]
pub use handler::{EntryQuery, entries_handler};
pub use inspector::{EntryFilter, Inspector};
pub use matcher::PollingPrefixes;
pub use request_id::{MAX_REQUEST_ID_LEN, REQUEST_ID_HEADER, RequestId};
pub use ring::InspectorStats;
pub use service::{InspectorLayer, InspectorService, ResponseFuture};
