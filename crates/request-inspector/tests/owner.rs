//! Owners (I6): placed inside an authentication layer, the inspector records who sent each
//! request, never stores a request without an owner (it counts it), and serves each owner only
//! its own entries.

mod common;

use axum::Router;
use axum::body::Body;
use axum::middleware::{Next, from_fn};
use axum::routing::post;
use http::{Method, Request};
use request_inspector::{EntryFilter, Inspector, InspectorConfig};
use tower::ServiceExt;

use common::{read_all, request};

/// What an authentication layer inserts.
#[derive(Clone)]
struct Account(String);

fn account(extensions: &http::Extensions) -> Option<String> {
    extensions.get::<Account>().map(|a| a.0.clone())
}

/// `x-user: <name>` authenticates as `<name>`; no header: no identity (a real layer would 401).
async fn authenticate(mut request: axum::extract::Request, next: Next) -> axum::response::Response {
    let user = request
        .headers()
        .get("x-user")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    if let Some(user) = user {
        request.extensions_mut().insert(Account(user));
    }
    next.run(request).await
}

fn app(inspector: &Inspector) -> Router {
    Router::new()
        .route("/api/jobs", post(|| async { "ok" }))
        .layer(inspector.layer())
        .layer(from_fn(authenticate))
}

async fn send(app: &Router, user: Option<&str>, junk: usize) {
    let mut req: Request<Body> = request(Method::POST, "/api/jobs?sig=SECRET&page=1", "job");
    if let Some(user) = user {
        req.headers_mut().insert("x-user", user.parse().unwrap());
    }
    for i in 0..junk {
        req.headers_mut().insert(
            http::HeaderName::from_bytes(format!("x-junk-{i}").as_bytes()).unwrap(),
            "j".repeat(1000).parse().unwrap(),
        );
    }
    let response = app.clone().oneshot(req).await.unwrap();
    read_all(response.into_body()).await;
}

// covers I6: requests without an owner are counted, not stored — a keyless flood of junk
// headers leaves the ring and the layer's memory as they were.
#[tokio::test(start_paused = true)]
async fn requests_without_an_owner_are_counted_not_stored() {
    let inspector = Inspector::new(
        InspectorConfig::new()
            .owner_from(account)
            .require_owner(true),
    );
    let app = app(&inspector);
    send(&app, Some("alice"), 0).await;
    let before = inspector.stats();
    for _ in 0..150 {
        send(&app, None, 50).await;
    }
    let after = inspector.stats();
    assert_eq!(after.ring_len, 1);
    assert_eq!(after.captured, 1);
    assert_eq!(after.not_recorded_unowned, 150);
    assert_eq!(after.ring_bytes, before.ring_bytes);
    assert_eq!(after.peak_retained_bytes, before.peak_retained_bytes);
    let entry = &inspector.entries()[0];
    assert_eq!(entry.owner.as_deref(), Some("alice"));
    assert_eq!(entry.query.as_deref(), Some("sig=[redacted]&page=1"));
}

// covers I6: each owner reads only its own entries.
#[tokio::test(start_paused = true)]
async fn the_owner_filter_serves_each_caller_its_own_entries() {
    let inspector = Inspector::new(InspectorConfig::new().owner_from(account));
    let app = app(&inspector);
    send(&app, Some("alice"), 0).await;
    send(&app, Some("bob"), 0).await;
    send(&app, None, 0).await;
    assert_eq!(inspector.entries().len(), 3, "not required: stored");
    let alice = inspector.entries_matching(&EntryFilter::new().owner("alice"));
    assert_eq!(alice.len(), 1);
    assert_eq!(alice[0].owner.as_deref(), Some("alice"));
    assert!(
        inspector
            .entries_matching(&EntryFilter::new().owner("carol"))
            .is_empty()
    );
}
