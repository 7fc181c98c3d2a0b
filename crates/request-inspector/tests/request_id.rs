//! `x-request-id`: propagated when valid, generated otherwise, on request and response (I1).

mod common;

use std::convert::Infallible;

use axum::body::Body;
use common::{app, inspector, read_all, request};
use http::{Method, Request, Response};
use request_inspector::RequestId;
use tower::{ServiceBuilder, ServiceExt, service_fn};

/// A service that answers with the id it saw in its request header and extension.
fn echo_id(
    inspector: &request_inspector::Inspector,
) -> impl tower::Service<
    Request<Body>,
    Response = Response<request_inspector::InspectBody<Body>>,
    Error = Infallible,
> + Clone {
    ServiceBuilder::new()
        .layer(inspector.layer())
        .service(service_fn(|request: Request<_>| async move {
            let header = request.headers()["x-request-id"]
                .to_str()
                .unwrap()
                .to_string();
            let extension = request.extensions().get::<RequestId>().unwrap().to_string();
            // The handler sees exactly one `x-request-id`: replaced ids are gone, not shadowed.
            let values = request.headers().get_all("x-request-id").iter().count();
            assert_eq!(values, 1, "x-request-id values the handler sees");
            Ok::<_, Infallible>(Response::new(Body::from(format!("{header} {extension}"))))
        }))
}

async fn call(inspector: &request_inspector::Inspector, ids: &[&str]) -> (String, String) {
    let mut builder = Request::post("/api/jobs");
    for id in ids {
        builder = builder.header("x-request-id", *id);
    }
    let response = echo_id(inspector)
        .oneshot(builder.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let on_response = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    let seen = String::from_utf8(read_all(response.into_body()).await.to_vec()).unwrap();
    (on_response, seen)
}

// covers I1: a valid incoming id is propagated to the handler, the response and the entry.
#[tokio::test]
async fn valid_incoming_id_is_propagated() {
    let inspector = inspector(16, 1024);
    let (on_response, seen) = call(&inspector, &["dashboard-7f3a"]).await;
    assert_eq!(on_response, "dashboard-7f3a");
    assert_eq!(seen, "dashboard-7f3a dashboard-7f3a");
    assert_eq!(inspector.entries()[0].request_id, "dashboard-7f3a");
}

// covers I1: no id, an invalid id (space, too long, non-ASCII) or two ids → a fresh one, the
// same one everywhere.
#[tokio::test]
async fn missing_or_invalid_ids_are_replaced_by_a_fresh_one() {
    let inspector = inspector(16, 1024);
    let too_long = "a".repeat(129);
    let cases: [&[&str]; 5] = [
        &[],
        &["has space"],
        &[&too_long],
        &["caf\u{e9}"],
        &["a", "b"],
    ];
    let mut fresh = Vec::new();
    for ids in cases {
        let (on_response, seen) = call(&inspector, ids).await;
        assert_eq!(on_response.len(), 32, "{ids:?}");
        assert!(on_response.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(seen, format!("{on_response} {on_response}"));
        fresh.push(on_response);
    }
    fresh.sort();
    fresh.dedup();
    assert_eq!(fresh.len(), 5, "every generated id is new");
    let recorded: Vec<_> = inspector
        .entries()
        .iter()
        .map(|e| e.request_id.len())
        .collect();
    assert_eq!(recorded, [32; 5]);
}

// covers I1, I2: polling GETs get ids too, though they are not recorded.
#[tokio::test]
async fn polling_gets_also_get_a_request_id() {
    let inspector = inspector(16, 1024);
    let response = app(&inspector)
        .oneshot(
            Request::get("/api/monitor/aks")
                .header("x-request-id", "poll-1")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], "poll-1");
    let response = app(&inspector)
        .oneshot(request(Method::GET, "/api/monitor/aks", Body::empty()))
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"].len(), 32);
    assert!(inspector.entries().is_empty());
}

// covers I1: an id the inner service set on its response is overwritten with the request's.
#[tokio::test]
async fn response_carries_the_request_id_even_if_the_handler_set_another() {
    let inspector = inspector(16, 1024);
    let service = ServiceBuilder::new()
        .layer(inspector.layer())
        .service(service_fn(|_request: Request<_>| async {
            let mut response = Response::new(Body::empty());
            response
                .headers_mut()
                .insert("x-request-id", "handler-made".parse().unwrap());
            Ok::<_, Infallible>(response)
        }));
    let response = service
        .oneshot(
            Request::delete("/api/jobs/1")
                .header("x-request-id", "client-1")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], "client-1");
}

/// The ids a handler sees through the `RequestId` extractor and in the extensions, and the
/// response's id, for one request through `app` (an axum router behind the layer).
async fn extracted(
    config: request_inspector::InspectorConfig,
    incoming: Option<&str>,
) -> (String, String, bool) {
    use axum::routing::get;
    let inspector = request_inspector::Inspector::new(config);
    let router = axum::Router::new().route(
        "/api/me",
        get(
            |id: RequestId, request: axum::extract::Request| async move {
                let extension = request.extensions().get::<RequestId>().is_some();
                format!("{id} {extension}")
            },
        ),
    );
    let app = tower::Layer::layer(&inspector.layer(), router);
    let mut builder = Request::get("/api/me");
    if let Some(id) = incoming {
        builder = builder.header("x-request-id", id);
    }
    let response = app
        .oneshot(builder.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let on_response = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    let seen = String::from_utf8(read_all(response.into_body()).await.to_vec()).unwrap();
    let (id, extension) = seen.split_once(' ').unwrap();
    assert_eq!(id, on_response, "the extractor's id is the response's");
    (on_response, id.to_string(), extension == "true")
}

// covers I1 (issue #23): the `RequestId` extractor reads the extension by default, and the
// header when `request_id_extension(false)` leaves the extensions alone; either way it is the
// id the response carries, generated or propagated.
#[tokio::test]
async fn the_extractor_reads_the_extension_or_the_header() {
    use request_inspector::InspectorConfig;
    let (_, id, extension) = extracted(InspectorConfig::new(), None).await;
    assert!(extension);
    assert_eq!(id.len(), 32);
    let (_, id, extension) = extracted(InspectorConfig::new(), Some("client-42")).await;
    assert!(extension);
    assert_eq!(id, "client-42");
    let off = || InspectorConfig::new().request_id_extension(false);
    let (_, id, extension) = extracted(off(), None).await;
    assert!(!extension, "no extension inserted");
    assert_eq!(id.len(), 32);
    let (_, id, extension) = extracted(off(), Some("client-43")).await;
    assert!(!extension);
    assert_eq!(id, "client-43");
    // Invalid or repeated incoming ids are replaced before the handler sees the header.
    let (_, id, _) = extracted(off(), Some("has space")).await;
    assert_eq!(id.len(), 32);
}

// A handler reached without the layer: the extractor reads a valid `x-request-id` a proxy in
// front may have set, and answers 500 when there is none or it is invalid; it does not panic or
// invent an id.
#[tokio::test]
async fn the_extractor_without_the_layer_reads_a_valid_header_or_answers_500() {
    use axum::routing::get;
    for (header, expected) in [
        (None, None),
        (Some("proxy-7"), Some("proxy-7")),
        (Some("bad id"), None),
    ] {
        let router = axum::Router::new().route(
            "/api/me",
            get(|id: RequestId| async move { id.to_string() }),
        );
        let mut builder = Request::get("/api/me");
        if let Some(value) = header {
            builder = builder.header("x-request-id", value);
        }
        let response = router
            .oneshot(builder.body(Body::empty()).unwrap())
            .await
            .unwrap();
        match expected {
            None => assert_eq!(
                response.status(),
                http::StatusCode::INTERNAL_SERVER_ERROR,
                "{header:?}"
            ),
            Some(id) => {
                assert_eq!(response.status(), http::StatusCode::OK);
                let body = read_all(response.into_body()).await;
                assert_eq!(&body[..], id.as_bytes());
            }
        }
    }
}
