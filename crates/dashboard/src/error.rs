//! Errors: building the dashboard (`ConfigError`, `StartError`) and answering a request (`ApiError`).

use std::path::PathBuf;

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// A configuration that cannot be read or used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The configuration file could not be read.
    #[error("cannot read the dashboard configuration at {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The configuration is not valid JSON of the documented shape.
    #[error("the dashboard configuration does not parse (see docs/dashboard.md for its fields)")]
    Parse(#[source] serde_json::Error),
    /// The admin token is empty or too short (an empty token would match an empty header).
    #[error(
        "admin_token / DASHBOARD_ADMIN_TOKEN must be at least {min} bytes without surrounding \
         spaces (e.g. `openssl rand -hex 32`), or absent to disable the admin route"
    )]
    AdminToken {
        /// The shortest token accepted.
        min: usize,
    },
    /// A setting has a value the dashboard cannot use.
    #[error("{name}: {reason}")]
    Invalid {
        /// The setting (environment variable or field).
        name: &'static str,
        /// What is expected instead.
        reason: &'static str,
    },
}

/// The dashboard could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The configuration is unusable.
    #[error("invalid configuration")]
    Config(#[from] ConfigError),
    /// A CA certificate in the configuration is not PEM.
    #[error("the CA certificate for {what} is not valid PEM")]
    Certificate {
        /// Which backend it was for.
        what: String,
        /// The parse error.
        #[source]
        source: reqwest::Error,
    },
    /// An HTTP client could not be built.
    #[error("cannot build the HTTP client for {what}")]
    Http {
        /// Which backend it was for.
        what: String,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The storage endpoint or pool could not be set up.
    #[error("cannot set up Blob storage")]
    Storage(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The AKS credential source could not be built.
    #[error("cannot set up the AKS credential source for cluster {cluster}")]
    Clusters {
        /// The cluster.
        cluster: String,
        /// The cause.
        #[source]
        source: k8s_session::CredentialsError,
    },
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// A request that failed: answered as JSON `{"error": code, "message": text}`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// No cluster has this name.
    #[error("unknown cluster `{0}`")]
    UnknownCluster(String),
    /// The request was malformed.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The admin token was missing or wrong.
    #[error("admin token missing or wrong")]
    Forbidden,
    /// A backend (Kubernetes, storage, upstream, key store) failed.
    #[error("{backend} failed: {message}")]
    Backend {
        /// Which backend.
        backend: &'static str,
        /// What it said (never a secret).
        message: String,
    },
    /// The request took longer than the configured request timeout.
    #[error("the request took longer than the server's request timeout")]
    Timeout,
    /// The upstream's connection pool had no free slot in time.
    #[error("upstream busy: no connection slot within the acquire timeout")]
    UpstreamBusy,
    /// No route has this path (answered to a caller with a valid API key; without one, the
    /// key layer answers 401 first).
    #[error("no route has this path")]
    NotFound,
    /// The request declared a body longer than the body limit (`content-length`).
    #[error("the request body is longer than the limit of {limit} bytes")]
    PayloadTooLarge {
        /// The body limit.
        limit: usize,
    },
}

impl ApiError {
    /// A backend failure, keeping the whole error chain in the message.
    pub fn backend(backend: &'static str, error: &(dyn std::error::Error + 'static)) -> Self {
        let mut message = error.to_string();
        let mut source = error.source();
        while let Some(cause) = source {
            message.push_str(": ");
            message.push_str(&cause.to_string());
            source = cause.source();
        }
        Self::Backend { backend, message }
    }

    fn code(&self) -> (&'static str, StatusCode) {
        match self {
            Self::UnknownCluster(_) => ("unknown_cluster", StatusCode::NOT_FOUND),
            Self::NotFound => ("not_found", StatusCode::NOT_FOUND),
            Self::BadRequest(_) => ("bad_request", StatusCode::BAD_REQUEST),
            Self::Forbidden => ("forbidden", StatusCode::FORBIDDEN),
            Self::Backend { .. } => ("backend_failed", StatusCode::BAD_GATEWAY),
            Self::UpstreamBusy => ("upstream_busy", StatusCode::SERVICE_UNAVAILABLE),
            Self::Timeout => ("request_timeout", StatusCode::SERVICE_UNAVAILABLE),
            Self::PayloadTooLarge { .. } => ("payload_too_large", StatusCode::PAYLOAD_TOO_LARGE),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (code, status) = self.code();
        (
            status,
            Json(json!({ "error": code, "message": self.to_string() })),
        )
            .into_response()
    }
}
