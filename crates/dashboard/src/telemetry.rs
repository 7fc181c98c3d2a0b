//! What the dashboard itself records through the `metrics` facade (issue #19). The crates it
//! composes record their own series; the application (the `demo` binary) installs the exporter
//! and hands [`Dashboard::set_metrics_render`](crate::Dashboard::set_metrics_render) a closure
//! that renders them for `GET /metrics`.
//!
//! Handles are registered when the dashboard is built; the per-route duration histograms are
//! registered once per (method, route, status) — a bounded set: the route is axum's matched
//! template, never the raw path — and kept in a small map.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use metrics::{Counter, Gauge, Histogram, Unit};

/// `http.server.request.duration` (OpenTelemetry): seconds, per method, route and status.
pub(crate) const REQUEST_DURATION: &str = "http.server.request.duration";
/// `http.server.active_requests` (OpenTelemetry): requests being served now.
pub(crate) const ACTIVE_REQUESTS: &str = "http.server.active_requests";
/// `/api/*` requests the API-key layer answered 401 (counted, never stored).
pub(crate) const REJECTED: &str = "dashboard.requests.rejected";
/// Jobs submitted through `POST /api/blast/jobs`, by outcome.
pub(crate) const JOBS: &str = "dashboard.jobs.submitted";

fn describe() {
    metrics::describe_histogram!(
        REQUEST_DURATION,
        Unit::Seconds,
        "Duration of HTTP requests the dashboard served"
    );
    metrics::describe_gauge!(
        ACTIVE_REQUESTS,
        Unit::Count,
        "HTTP requests the dashboard is serving now"
    );
    metrics::describe_counter!(
        REJECTED,
        Unit::Count,
        "/api requests refused by the API-key layer (401)"
    );
    metrics::describe_counter!(
        JOBS,
        Unit::Count,
        "Jobs submitted through POST /api/blast/jobs, by outcome"
    );
}

/// HTTP methods kept as label values; any other is `_OTHER` (the OpenTelemetry rule).
fn method_label(method: &http::Method) -> &'static str {
    match *method {
        http::Method::GET => "GET",
        http::Method::HEAD => "HEAD",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::DELETE => "DELETE",
        http::Method::PATCH => "PATCH",
        http::Method::OPTIONS => "OPTIONS",
        _ => "_OTHER",
    }
}

type DurationKey = (&'static str, Arc<str>, u16);

/// The dashboard's own handles.
pub(crate) struct Telemetry {
    active: Gauge,
    rejected: Counter,
    jobs_accepted: Counter,
    jobs_failed: Counter,
    durations: Mutex<HashMap<DurationKey, Histogram>>,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry").finish_non_exhaustive()
    }
}

impl Telemetry {
    /// Register the handles with whatever recorder is installed now (none: they do nothing).
    pub(crate) fn new() -> Self {
        describe();
        Self {
            active: metrics::gauge!(ACTIVE_REQUESTS),
            rejected: metrics::counter!(REJECTED),
            jobs_accepted: metrics::counter!(JOBS, "outcome" => "accepted"),
            jobs_failed: metrics::counter!(JOBS, "outcome" => "failed"),
            durations: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn rejected(&self) {
        self.rejected.increment(1);
    }

    pub(crate) fn job(&self, accepted: bool) {
        if accepted {
            self.jobs_accepted.increment(1);
        } else {
            self.jobs_failed.increment(1);
        }
    }

    fn duration(&self, method: &'static str, route: Arc<str>, status: u16) -> Histogram {
        let mut durations = self
            .durations
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        durations
            .entry((method, route.clone(), status))
            .or_insert_with(|| {
                metrics::histogram!(
                    REQUEST_DURATION,
                    "http.request.method" => method,
                    "http.route" => route.to_string(),
                    "http.response.status_code" => status.to_string(),
                )
            })
            .clone()
    }
}

/// The outermost layer: every request's duration under its route template (`_unmatched` when
/// no route matched, so a scanner's paths never become label values) and the requests in
/// flight.
pub(crate) async fn record_requests(
    State(telemetry): State<Arc<Telemetry>>,
    request: Request,
    next: Next,
) -> Response {
    let method = method_label(request.method());
    let route: Arc<str> = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| Arc::from("_unmatched"), |path| Arc::from(path.as_str()));
    let _active = Active::enter(&telemetry.active);
    let started = Instant::now();
    let response = next.run(request).await;
    telemetry
        .duration(method, route, response.status().as_u16())
        .record(started.elapsed().as_secs_f64());
    response
}

/// One request in flight: counted while it lives, also when the client goes away mid-request
/// (the future is dropped).
struct Active<'a>(&'a Gauge);

impl<'a> Active<'a> {
    fn enter(gauge: &'a Gauge) -> Self {
        gauge.increment(1.0);
        Self(gauge)
    }
}

impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}
