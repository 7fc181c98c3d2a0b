//! The axum JSON handler: the ring newest first, filtered by method and status.

mod common;

use axum::body::Body;
use common::{app, inspector, read_all, request};
use http::{Method, StatusCode};
use serde_json::Value;
use tower::ServiceExt;

async fn fill(inspector: &request_inspector::Inspector) {
    for (method, uri) in [
        (Method::POST, "/api/echo"),
        (Method::GET, "/api/missing"),
        (Method::DELETE, "/api/echo"),
        (Method::POST, "/api/echo"),
        (Method::GET, "/api/monitor/aks"),
    ] {
        let response = app(inspector)
            .oneshot(request(method, uri, "body"))
            .await
            .unwrap();
        read_all(response.into_body()).await;
    }
}

async fn get_json(inspector: &request_inspector::Inspector, uri: &str) -> (StatusCode, Value) {
    let response = app(inspector)
        .oneshot(request(Method::GET, uri, Body::empty()))
        .await
        .unwrap();
    let status = response.status();
    let body = read_all(response.into_body()).await;
    (status, serde_json::from_slice(&body).unwrap())
}

fn summary(page: &Value) -> Vec<(String, u64)> {
    page["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["method"].as_str().unwrap().to_string(),
                e["status"].as_u64().unwrap(),
            )
        })
        .collect()
}

// covers I1, I2: the ring as JSON, newest first; the polling GET and the panel's own GETs
// (under the `/api/inspector` polling prefix) are not in it.
#[tokio::test]
async fn serves_the_ring_newest_first() {
    let inspector = inspector(16, 1024);
    fill(&inspector).await;
    let (status, page) = get_json(&inspector, "/api/inspector").await;
    assert_eq!(status, StatusCode::OK);
    let expected = [("POST", 200), ("DELETE", 200), ("GET", 404), ("POST", 200)];
    let expected: Vec<_> = expected.iter().map(|(m, s)| (m.to_string(), *s)).collect();
    assert_eq!(summary(&page), expected);
    assert_eq!(page["capacity"], 16);
    assert_eq!(page["stats"]["passed_through"], 2); // the polling GET and this very call
    let newest = &page["entries"][0];
    assert_eq!(newest["request_body"]["text"], "body");
    assert_eq!(newest["request_body"]["truncated"], false);
    assert_eq!(newest["outcome"], "complete");
    assert_eq!(newest["request_id"].as_str().unwrap().len(), 32);
}

#[tokio::test]
async fn filters_by_method_status_and_limit() {
    let inspector = inspector(16, 1024);
    fill(&inspector).await;
    let (_, page) = get_json(&inspector, "/api/inspector?method=post").await;
    assert_eq!(summary(&page), [("POST".into(), 200), ("POST".into(), 200)]);
    let (_, page) = get_json(&inspector, "/api/inspector?status=4xx").await;
    assert_eq!(summary(&page), [("GET".into(), 404)]);
    let (_, page) = get_json(&inspector, "/api/inspector?status=200&method=DELETE").await;
    assert_eq!(summary(&page), [("DELETE".into(), 200)]);
    let (_, page) = get_json(&inspector, "/api/inspector?limit=1").await;
    assert_eq!(summary(&page), [("POST".into(), 200)]);
}

#[tokio::test]
async fn invalid_filters_are_a_400_with_a_json_error() {
    let inspector = inspector(16, 1024);
    let (status, page) = get_json(&inspector, "/api/inspector?status=abc").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(page["error"].as_str().unwrap().contains("abc"));
    let (status, page) = get_json(&inspector, "/api/inspector?method=G%20T").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(page["error"].as_str().unwrap().contains("method"));
}
