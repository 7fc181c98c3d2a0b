//! `Inspector::axum_layer` (feature `axum`): the same layer with axum's `Body` on both sides. It
//! must do everything `layer()` does (I1–I5) in both placements — `Router::layer` and around a
//! `Router` — and hand a polling GET's bodies on unwrapped (what it is for: no body boxed on
//! the way to the handler and back; `tests/memory.rs` counts those allocations).

mod common;

use std::convert::Infallible;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::routing::{any, get};
use common::{CountingBody, inspector, read_all, request};
use http::{HeaderValue, Method, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use request_inspector::{Inspector, Outcome, REQUEST_ID_HEADER, RequestId};
use tower::{Layer, ServiceExt};

const LIMIT: usize = 1024;

/// The routes both placements serve: a polling GET that answers the id the handler saw, an
/// echo, and a streamed polling GET of `chunks` chunks.
fn routes() -> Router {
    Router::new()
        .route(
            "/api/monitor/aks",
            get(|id: RequestId| async move { format!("seen {id}") }),
        )
        .route(
            "/api/echo",
            any(|request: Request| async move { Body::new(request.into_body()) }),
        )
}

/// The app with the axum layer, through `Router::layer` (`true`) or around the router.
fn app(inspector: &Inspector, route_layer: bool) -> Router {
    if route_layer {
        routes().layer(inspector.axum_layer())
    } else {
        Router::new().fallback_service(inspector.axum_layer().layer(routes()))
    }
}

// covers I1, I2: a polling GET gets an id (the handler's extractor, the response header) and
// passes through: not recorded, counted as passed through; in both placements.
#[tokio::test]
async fn polling_get_gets_an_id_and_passes_through() {
    for route_layer in [true, false] {
        let inspector = inspector(8, LIMIT);
        let response = app(&inspector, route_layer)
            .oneshot(request(Method::GET, "/api/monitor/aks", Body::empty()))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let id = response.headers()[REQUEST_ID_HEADER]
            .to_str()
            .unwrap()
            .to_owned();
        assert_eq!(id.len(), 32, "a generated id");
        assert_eq!(read_all(response.into_body()).await, format!("seen {id}"));
        let stats = inspector.stats();
        assert_eq!(
            (stats.passed_through, stats.captured),
            (1, 0),
            "{route_layer}"
        );
        assert!(inspector.entries().is_empty());
    }
}

// covers I1, I3, I5: a captured POST is recorded with both bodies, its status, its id (the
// incoming one, propagated) and its headers; in both placements.
#[tokio::test]
async fn captured_post_is_recorded_with_both_bodies() {
    for route_layer in [true, false] {
        let inspector = inspector(8, LIMIT);
        let mut post = request(Method::POST, "/api/echo", "payload-1");
        post.headers_mut()
            .insert(REQUEST_ID_HEADER, HeaderValue::from_static("client-7"));
        let response = app(&inspector, route_layer).oneshot(post).await.unwrap();
        assert_eq!(response.headers()[REQUEST_ID_HEADER], "client-7");
        assert_eq!(read_all(response.into_body()).await, "payload-1");
        let entries = inspector.entries();
        assert_eq!(entries.len(), 1, "{route_layer}");
        let entry = &entries[0];
        assert_eq!(entry.request_id, "client-7");
        assert_eq!(
            (entry.method.as_str(), entry.path.as_str()),
            ("POST", "/api/echo")
        );
        assert_eq!(entry.status, Some(200));
        assert_eq!(entry.outcome, Outcome::Complete);
        assert_eq!(entry.request_body.text(), "payload-1");
        assert_eq!(entry.response_body.text(), "payload-1");
        assert!(
            entry
                .response_headers
                .iter()
                .any(|h| h.name == "x-request-id" && h.value == "client-7")
        );
        assert_eq!(inspector.stats().in_flight_bytes, 0);
    }
}

// covers I2: a streamed polling GET is handed on frame by frame: the first frame arrives
// after one chunk was produced, and the layer holds nothing.
#[tokio::test]
async fn polling_get_streams_without_buffering() {
    for route_layer in [true, false] {
        let inspector = inspector(8, LIMIT);
        let (body, produced) = CountingBody::new(64, 4096);
        let body = std::sync::Arc::new(std::sync::Mutex::new(Some(body)));
        let streamed = Router::new().route(
            "/api/monitor/stream",
            get(move || {
                let body = body.lock().unwrap().take().expect("called once");
                async move { Body::new(body) }
            }),
        );
        let app = if route_layer {
            streamed.layer(inspector.axum_layer())
        } else {
            Router::new().fallback_service(inspector.axum_layer().layer(streamed))
        };
        let response = app
            .oneshot(request(Method::GET, "/api/monitor/stream", Body::empty()))
            .await
            .unwrap();
        let mut body = response.into_body();
        assert_eq!(http_body::Body::size_hint(&body).exact(), Some(64 * 4096));
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(first.len(), 4096);
        assert_eq!(produced.load(Ordering::SeqCst), 1, "nothing read ahead");
        let mut received = first.len();
        while let Some(frame) = body.frame().await {
            received += frame.unwrap().into_data().unwrap().len();
        }
        assert_eq!(received, 64 * 4096);
        let stats = inspector.stats();
        assert_eq!((stats.peak_retained_bytes, stats.captured), (0, 0));
    }
}

// The extension setting and the extractor behave as with `layer()`: with the extension off the
// extractor reads the header, and the handler's id is the response's.
#[tokio::test]
async fn extractor_sees_the_response_id_with_the_extension_off() {
    let inspector = Inspector::new(
        request_inspector::InspectorConfig::new()
            .polling_prefixes(["/api/monitor"])
            .unwrap()
            .request_id_extension(false),
    );
    let response = routes()
        .layer(inspector.axum_layer())
        .oneshot(request(Method::GET, "/api/monitor/aks", Body::empty()))
        .await
        .unwrap();
    let id = response.headers()[REQUEST_ID_HEADER]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(read_all(response.into_body()).await, format!("seen {id}"));
}

// Any response body type and a failing service, over a plain tower service (not a router): a
// `Full` body is boxed into axum's `Body` and captured; a service error is recorded as such.
#[tokio::test]
async fn plain_services_and_errors() {
    let inspector = inspector(8, LIMIT);
    let full = inspector
        .axum_layer()
        .layer(tower::service_fn(|_: http::Request<Body>| async {
            Ok::<_, Infallible>(Response::new(Full::new(bytes::Bytes::from_static(b"full"))))
        }));
    let response = full
        .oneshot(request(Method::POST, "/api/jobs", "x"))
        .await
        .unwrap();
    assert_eq!(read_all(response.into_body()).await, "full");
    assert_eq!(inspector.entries()[0].response_body.text(), "full");

    let failing = inspector
        .axum_layer()
        .layer(tower::service_fn(|_: http::Request<Body>| async {
            Err::<Response<Body>, _>("boom")
        }));
    let error = failing
        .oneshot(request(Method::DELETE, "/api/jobs/1", Body::empty()))
        .await
        .unwrap_err();
    assert_eq!(error, "boom");
    let entries = inspector.entries();
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[0].outcome, Outcome::ServiceError);
    assert_eq!(inspector.stats().in_flight_bytes, 0);
}
