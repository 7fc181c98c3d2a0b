//! 50 MB streamed through the layer: polling GETs are never buffered or copied, captured
//! calls are tee'd while they stream (I2, I5). Memory is the layer's own counted bytes.

mod common;

use std::sync::atomic::Ordering;

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::routing::{get, post};
use common::{CountingBody, MIB, inspector, request};
use http::Method;
use http_body_util::BodyExt;
use request_inspector::Outcome;
use tower::ServiceExt;

const CHUNK: usize = 64 * 1024;
const CHUNKS: usize = 50 * MIB / CHUNK; // 800 chunks = 50 MiB
const LIMIT: usize = 16 * 1024;

// covers I2: a 50 MB polling GET streams through: first chunk before the last is produced, no
// byte copied or held by the layer, no ring entry.
#[tokio::test]
async fn polling_get_of_50_mb_streams_without_buffering() {
    let inspector = inspector(16, LIMIT);
    let (body, produced) = CountingBody::new(CHUNKS, CHUNK);
    let body = std::sync::Arc::new(std::sync::Mutex::new(Some(body)));
    let app = Router::new()
        .route(
            "/api/monitor/aks",
            get(move || {
                let body = body.lock().unwrap().take().expect("called once");
                async move { Body::new(body) }
            }),
        )
        .layer(inspector.layer());

    let response = app
        .oneshot(request(Method::GET, "/api/monitor/aks", Body::empty()))
        .await
        .unwrap();
    // The length survives the layer: it forwards the exact size hint.
    assert_eq!(response.headers()["x-request-id"].len(), 32);
    let mut body = response.into_body();
    assert_eq!(
        http_body::Body::size_hint(&body).exact(),
        Some((CHUNKS * CHUNK) as u64)
    );

    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(first.len(), CHUNK);
    let made = produced.load(Ordering::SeqCst);
    assert!(
        made < CHUNKS,
        "first chunk arrived after {made} of {CHUNKS} chunks were produced"
    );
    assert_eq!(made, 1, "nothing is read ahead");

    let mut received = first.len();
    while let Some(frame) = body.frame().await {
        received += frame.unwrap().into_data().unwrap().len();
        assert_eq!(inspector.stats().retained_bytes, 0);
    }
    assert_eq!(received, CHUNKS * CHUNK);

    let stats = inspector.stats();
    assert!(stats.peak_retained_bytes < LIMIT);
    assert_eq!(stats.peak_retained_bytes, 0);
    assert_eq!(stats.passed_through, 1);
    assert_eq!(stats.captured, 0);
    assert!(inspector.entries().is_empty());
}

// covers I5: a captured 50 MB POST echoed back is tee'd both ways while streaming: the first
// response chunk arrives while the client has produced one request chunk, and the layer never
// holds more than the two body limits (plus recorded headers).
#[tokio::test]
async fn captured_post_of_50_mb_is_teed_while_streaming_and_cut_at_the_limit() {
    let inspector = inspector(16, LIMIT);
    let app = Router::new()
        .route(
            "/api/upload",
            post(|request: Request| async move { Body::new(request.into_body()) }),
        )
        .layer(inspector.layer());
    let (upload, produced) = CountingBody::new(CHUNKS, CHUNK);

    let response = app
        .oneshot(request(Method::POST, "/api/upload", Body::new(upload)))
        .await
        .unwrap();
    let mut body = response.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(first.len(), CHUNK);
    assert_eq!(produced.load(Ordering::SeqCst), 1);
    assert!(
        inspector.entries().is_empty(),
        "recorded at the end, not before"
    );

    let mut received = first.len();
    let mut peak_in_flight = 0;
    while let Some(frame) = body.frame().await {
        received += frame.unwrap().into_data().unwrap().len();
        peak_in_flight = peak_in_flight.max(inspector.stats().in_flight_bytes);
    }
    assert_eq!(received, CHUNKS * CHUNK);
    // Both body copies are full, plus a few hundred bytes of recorded headers.
    assert!(peak_in_flight >= 2 * LIMIT, "{peak_in_flight}");
    let stats = inspector.stats();
    // Counted as the allocator sees it (#23): the two copies, the recorded headers, the entry
    // itself and the ring's first chunk of slots.
    assert!(
        stats.peak_retained_bytes < 2 * LIMIT + 2048,
        "{}",
        stats.peak_retained_bytes
    );
    assert_eq!(stats.in_flight_bytes, 0);
    assert_eq!(stats.truncated_bodies, 2);

    let entries = inspector.entries();
    assert_eq!(entries.len(), 1);
    let entry = &entries[0];
    assert_eq!(entry.outcome, Outcome::Complete);
    for captured in [&entry.request_body, &entry.response_body] {
        assert_eq!(captured.captured_bytes(), LIMIT);
        assert_eq!(captured.total_bytes(), (CHUNKS * CHUNK) as u64);
        assert!(captured.truncated());
        assert!(captured.complete());
    }
    assert_eq!(stats.ring_bytes, entry.retained_bytes());
}

// covers I5: a body that stops part-way still records what passed, as aborted.
#[tokio::test]
async fn response_dropped_part_way_is_recorded_as_aborted() {
    let inspector = inspector(16, LIMIT);
    let (body, produced) = CountingBody::new(CHUNKS, CHUNK);
    let body = std::sync::Arc::new(std::sync::Mutex::new(Some(body)));
    let app = Router::new()
        .route(
            "/api/export",
            get(move || {
                let body = body.lock().unwrap().take().expect("called once");
                async move { Body::new(body) }
            }),
        )
        .layer(inspector.layer());
    let response = app
        .oneshot(request(Method::GET, "/api/export", Body::empty()))
        .await
        .unwrap();
    let mut body = response.into_body();
    for _ in 0..3 {
        body.frame().await.unwrap().unwrap();
    }
    drop(body);
    assert_eq!(produced.load(Ordering::SeqCst), 3);

    let entries = inspector.entries();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].outcome, Outcome::Aborted);
    assert_eq!(entries[0].status, Some(200));
    assert_eq!(entries[0].response_body.total_bytes(), 3 * CHUNK as u64);
    assert!(!entries[0].response_body.complete());
    assert_eq!(inspector.stats().in_flight_bytes, 0);
}
