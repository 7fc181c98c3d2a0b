//! What enters the ring: one-shot calls with their bodies, never polling GETs (I1–I5).

mod common;

use std::convert::Infallible;
use std::time::Duration;

use axum::body::Body;
use common::{app, inspector, read_all, request};
use http::{Method, Request, Response};
use request_inspector::{Inspector, InspectorConfig, Outcome, REDACTED};
use tower::{Service, ServiceBuilder, ServiceExt, service_fn};

async fn send(
    inspector: &Inspector,
    method: Method,
    uri: &str,
    body: &'static str,
) -> Response<Body> {
    let response = app(inspector)
        .oneshot(request(method, uri, body))
        .await
        .unwrap();
    let (parts, body) = response.into_parts();
    Response::from_parts(parts, Body::from(read_all(body).await))
}

// covers I1, I3: POST and DELETE are captured with method, path, status and both bodies.
#[tokio::test]
async fn post_and_delete_are_captured_with_bodies() {
    let inspector = inspector(16, 1024);
    send(
        &inspector,
        Method::POST,
        "/api/echo?dry_run=1",
        "submit job 7",
    )
    .await;
    send(&inspector, Method::DELETE, "/api/echo", "").await;
    send(&inspector, Method::PUT, "/api/echo", "put").await;
    send(&inspector, Method::PATCH, "/api/echo", "patch").await;
    send(&inspector, Method::GET, "/api/missing", "").await;

    let entries = inspector.entries();
    let summary: Vec<_> = entries
        .iter()
        .map(|e| (e.method.as_str(), e.path.as_str(), e.status))
        .collect();
    // Newest first; the query is not recorded.
    assert_eq!(
        summary,
        [
            ("GET", "/api/missing", Some(404)),
            ("PATCH", "/api/echo", Some(200)),
            ("PUT", "/api/echo", Some(200)),
            ("DELETE", "/api/echo", Some(200)),
            ("POST", "/api/echo", Some(200)),
        ]
    );
    let post = &entries[4];
    assert_eq!(post.request_body.text(), "submit job 7");
    assert_eq!(post.response_body.text(), "submit job 7");
    assert!(post.request_body.complete() && !post.request_body.truncated());
    assert_eq!(post.outcome, Outcome::Complete);
    assert_eq!(entries[3].request_body.total_bytes(), 0);
    assert!(entries[3].request_body.complete());
    assert_eq!(entries[0].response_body.text(), "no such thing");
    assert!(entries.windows(2).all(|w| w[0].id > w[1].id));
    assert_eq!(inspector.stats().captured, 5);
}

// covers I2: the ring keeps one-shot calls while 10 000 polling GETs pass through.
#[tokio::test]
async fn ring_keeps_one_shot_calls_while_10_000_polling_gets_pass() {
    let inspector = inspector(8, 1024);
    let app = app(&inspector);
    send(&inspector, Method::POST, "/api/echo", "job").await;
    send(&inspector, Method::DELETE, "/api/echo", "").await;
    for _ in 0..10_000 {
        let response = app
            .clone()
            .oneshot(request(Method::GET, "/api/monitor/aks", Body::empty()))
            .await
            .unwrap();
        assert_eq!(read_all(response.into_body()).await, "aks status");
    }
    let methods: Vec<_> = inspector
        .entries()
        .iter()
        .map(|e| e.method.clone())
        .collect();
    assert_eq!(methods, ["DELETE", "POST"]);
    let stats = inspector.stats();
    assert_eq!(stats.passed_through, 10_000);
    assert_eq!((stats.captured, stats.evicted), (2, 0));

    // The same traffic without the exemption (the seed's bug) pushes them out.
    let everything = Inspector::new(InspectorConfig::new().capacity(8));
    let app = common::app(&everything);
    send(&everything, Method::POST, "/api/echo", "job").await;
    for _ in 0..100 {
        let response = app
            .clone()
            .oneshot(request(Method::GET, "/api/monitor/aks", Body::empty()))
            .await
            .unwrap();
        read_all(response.into_body()).await;
    }
    assert!(everything.entries().iter().all(|e| e.method == "GET"));
    assert_eq!(everything.stats().evicted, 93);
}

// covers I3: GETs outside the prefixes (or not on a segment boundary) are captured.
#[tokio::test]
async fn non_polling_gets_are_captured() {
    let inspector = inspector(16, 1024);
    for uri in [
        "/api/monitoring",
        "/api/monitor",
        "/API/monitor/aks",
        "/api/echo",
    ] {
        app(&inspector)
            .oneshot(request(Method::GET, uri, Body::empty()))
            .await
            .unwrap();
    }
    // The prefix `/api/monitor/` is normalised to `/api/monitor`, so `/api/monitor` itself
    // is a polling path (it answers 404 here, untouched).
    let paths: Vec<_> = inspector.entries().iter().map(|e| e.path.clone()).collect();
    assert_eq!(paths, ["/api/echo", "/API/monitor/aks", "/api/monitoring"]);
    assert_eq!(inspector.stats().passed_through, 1);
}

// covers I4: `should_capture` is public and `None` counts as non-GET.
#[test]
fn should_capture_is_public_and_none_is_captured() {
    let inspector = inspector(16, 1024);
    assert!(!inspector.should_capture("/api/monitor/aks", Some(&Method::GET)));
    assert!(inspector.should_capture("/api/monitor/aks", None));
    assert!(inspector.should_capture("/api/monitor/aks", Some(&Method::POST)));
    assert!(inspector.should_capture("/api/monitoring", Some(&Method::GET)));
}

// covers I5: secrets are redacted in requests and responses, including configured headers.
#[tokio::test]
async fn secrets_are_redacted() {
    let inspector = Inspector::new(
        InspectorConfig::new()
            .redact_header("X-Session-Token")
            .unwrap(),
    );
    let service = ServiceBuilder::new()
        .layer(inspector.layer())
        .service(service_fn(|_request: Request<_>| async {
            Ok::<_, Infallible>(
                Response::builder()
                    .header("set-cookie", "session=resp-secret-1")
                    .header("content-type", "text/plain")
                    .body(Body::from("ok"))
                    .unwrap(),
            )
        }));
    let request = Request::post("/api/login")
        .header("authorization", "Bearer req-secret-1")
        .header("Cookie", "a=req-secret-2")
        .header("x-api-key", "req-secret-3")
        .header("proxy-authorization", "Basic req-secret-4")
        .header("x-session-token", "req-secret-5")
        .header("x-trace", "visible")
        .body(Body::from("{}"))
        .unwrap();
    let response = service.oneshot(request).await.unwrap();
    read_all(response.into_body()).await;

    let entry = inspector.entries()[0].clone();
    let value = |headers: &[request_inspector::Header], name: &str| {
        headers
            .iter()
            .find(|h| h.name == name)
            .map(|h| h.value.clone())
            .unwrap()
    };
    for name in [
        "authorization",
        "cookie",
        "x-api-key",
        "proxy-authorization",
        "x-session-token",
    ] {
        assert_eq!(value(&entry.request_headers, name), REDACTED, "{name}");
    }
    assert_eq!(value(&entry.request_headers, "x-trace"), "visible");
    assert_eq!(value(&entry.response_headers, "set-cookie"), REDACTED);
    assert_eq!(value(&entry.response_headers, "content-type"), "text/plain");
    let json = serde_json::to_string(&*entry).unwrap();
    let debug = format!("{entry:?}");
    for text in [json, debug] {
        assert!(!text.contains("secret"), "{text}");
    }
}

// covers I5: bodies are cut at the limit and the cut is recorded; a body exactly at the limit
// is not truncated; a limit of 0 keeps sizes only.
#[tokio::test]
async fn bodies_are_cut_at_the_limit() {
    let inspector = inspector(16, 8);
    send(&inspector, Method::POST, "/api/echo", "0123456789abcdef").await;
    send(&inspector, Method::POST, "/api/echo", "01234567").await;
    let entries = inspector.entries();
    let (exact, long) = (&entries[0], &entries[1]);
    assert_eq!(long.request_body.text(), "01234567");
    assert_eq!(long.request_body.total_bytes(), 16);
    assert!(long.request_body.truncated() && long.response_body.truncated());
    assert_eq!(exact.request_body.text(), "01234567");
    assert!(!exact.request_body.truncated() && !exact.response_body.truncated());
    assert_eq!(inspector.stats().truncated_bodies, 2);

    let sizes_only = common::inspector(16, 0);
    send(&sizes_only, Method::POST, "/api/echo", "hello").await;
    let entry = &sizes_only.entries()[0];
    assert_eq!(entry.request_body.captured_bytes(), 0);
    assert_eq!(entry.request_body.total_bytes(), 5);
    assert!(entry.request_body.truncated());
}

// covers I1: duration is measured on tokio's clock (virtual here), to the response head and
// to the end of the body.
#[tokio::test(start_paused = true)]
async fn duration_is_recorded() {
    let inspector = inspector(16, 1024);
    let service = ServiceBuilder::new()
        .layer(inspector.layer())
        .service(service_fn(|_request: Request<_>| async {
            tokio::time::sleep(Duration::from_secs(2)).await;
            Ok::<_, Infallible>(Response::new(Body::from("slow")))
        }));
    let response = service
        .oneshot(request(Method::POST, "/api/slow", ""))
        .await
        .unwrap();
    tokio::time::advance(Duration::from_millis(500)).await;
    read_all(response.into_body()).await;
    let entry = &inspector.entries()[0];
    assert_eq!(entry.response_after_us, Some(2_000_000));
    assert_eq!(entry.duration_us, 2_500_000);
}

// covers I1: a failing or cancelled inner service still leaves an entry.
#[tokio::test]
async fn service_errors_and_cancellations_are_recorded() {
    let inspector = inspector(16, 1024);
    let failing = ServiceBuilder::new()
        .layer(inspector.layer())
        .service(service_fn(|_request: Request<_>| async {
            Err::<Response<Body>, _>(std::io::Error::other("backend down"))
        }));
    let err = failing
        .oneshot(request(Method::POST, "/api/fail", "x"))
        .await;
    assert!(err.is_err());

    let mut pending = ServiceBuilder::new()
        .layer(inspector.layer())
        .service(service_fn(|_request: Request<_>| {
            std::future::pending::<Result<Response<Body>, Infallible>>()
        }));
    let future = pending.call(request(Method::DELETE, "/api/hang", ""));
    drop(future);

    let outcomes: Vec<_> = inspector
        .entries()
        .iter()
        .map(|e| (e.method.clone(), e.status, e.outcome))
        .collect();
    assert_eq!(
        outcomes,
        [
            ("DELETE".to_string(), None, Outcome::Cancelled),
            ("POST".to_string(), None, Outcome::ServiceError),
        ]
    );
}

// The ring is bounded and the byte counters follow it.
#[tokio::test]
async fn ring_is_bounded_and_counts_its_bytes() {
    let inspector = inspector(3, 1024);
    for body in ["a", "bb", "ccc", "dddd", "eeeee"] {
        send(&inspector, Method::POST, "/api/echo", body).await;
    }
    let entries = inspector.entries();
    let bodies: Vec<_> = entries.iter().map(|e| e.request_body.text()).collect();
    assert_eq!(bodies, ["eeeee", "dddd", "ccc"]);
    let stats = inspector.stats();
    assert_eq!((stats.ring_len, stats.evicted), (3, 2));
    assert_eq!(stats.in_flight_bytes, 0);
    assert_eq!(
        stats.ring_bytes,
        entries.iter().map(|e| e.retained_bytes()).sum::<usize>()
    );
    inspector.clear();
    let stats = inspector.stats();
    assert_eq!(
        stats.retained_bytes, stats.ring_slot_bytes,
        "clear keeps only the slots"
    );
    assert!(inspector.entries().is_empty());
}
