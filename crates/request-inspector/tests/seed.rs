//! Seed 001 black-box suite (issue #16): the promises of SPEC I1–I6 and X5, written from the
//! seed (`RequestIdMiddleware` drained every `/api/*` response body into memory; polling GETs
//! filled the inspector ring and pushed out POST/DELETE) and its upstream tests
//! (`test_inspector_exclude.py`: method-aware exclusion, single-arg call sites treated as
//! non-GET, polling vs non-polling GETs), through the public API only. In-process (tower
//! `oneshot`), virtual time.

mod common;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use futures::StreamExt;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use request_inspector::{
    Entry, InspectBody, Inspector, InspectorConfig, Outcome, PollingPrefixes, REDACTED,
    REQUEST_ID_HEADER, RequestId,
};
use tower::{ServiceBuilder, ServiceExt, service_fn};

/// The seed's `_INSPECTOR_EXCLUDE_GET_PREFIXES`.
const SEED_PREFIXES: [&str; 10] = [
    "/api/monitor/aks",
    "/api/monitor/storage",
    "/api/monitor/acr",
    "/api/monitor/terminal",
    "/api/monitor/cluster",
    "/api/monitor/jobs",
    "/api/blast/jobs",
    "/api/blast/databases",
    "/api/warmup",
    "/api/me",
];

fn seed_inspector(capacity: usize, body_limit: usize) -> Inspector {
    Inspector::new(
        InspectorConfig::new()
            .polling_prefixes(SEED_PREFIXES)
            .expect("the seed's prefixes are valid")
            .capacity(capacity)
            .body_limit(body_limit),
    )
}

/// What the inner service answers.
#[derive(Clone, Copy)]
enum Answer {
    /// Echo the request body back (read to its end).
    Echo,
    /// One chunk, then a body that never ends.
    Endless,
    /// `chunks` lazily made chunks of 64 KiB, counted in the given counter.
    Huge(usize),
    /// Ignore the request body; answer "ok".
    Ignore,
}

const CHUNK: usize = 64 * 1024;

/// Send one request through the inspector's layer over a tower service answering `answer`.
/// Returns the response with its body still unread, and the counter of a `Huge` body.
async fn send(
    inspector: &Inspector,
    request: Request<Body>,
    answer: Answer,
) -> (Response<InspectBody<Body>>, Arc<AtomicUsize>) {
    let made = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&made);
    let service = ServiceBuilder::new()
        .layer(inspector.layer())
        .service(service_fn(move |request: Request<InspectBody<Body>>| {
            let made = Arc::clone(&counter);
            async move {
                // The handler sees the request id on the header and in the extensions.
                let id = request
                    .extensions()
                    .get::<RequestId>()
                    .cloned()
                    .expect("RequestId extension");
                assert_eq!(request.headers()[REQUEST_ID_HEADER], id.as_str());
                let body = match answer {
                    Answer::Echo => Body::from(
                        request
                            .into_body()
                            .collect()
                            .await
                            .expect("request body")
                            .to_bytes(),
                    ),
                    Answer::Endless => Body::from_stream(
                        futures::stream::once(async {
                            Ok::<_, Infallible>(Bytes::from_static(b"first bytes"))
                        })
                        .chain(futures::stream::pending::<Result<Bytes, Infallible>>()),
                    ),
                    Answer::Huge(chunks) => {
                        Body::new(common::CountingBody::counting_into(chunks, CHUNK, made))
                    }
                    Answer::Ignore => Body::from("ok"),
                };
                let mut response = Response::new(body);
                // A handler's own id is overwritten by the layer.
                response
                    .headers_mut()
                    .insert(REQUEST_ID_HEADER, HeaderValue::from_static("handler-id"));
                Ok::<_, Infallible>(response)
            }
        }));
    let response = service.oneshot(request).await.expect("infallible");
    (response, made)
}

fn req(method: Method, uri: &str, body: impl Into<Body>) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri(uri)
        .body(body.into())
        .unwrap()
}

async fn read_all<B>(body: B) -> Bytes
where
    B: http_body::Body<Data = Bytes>,
    B::Error: std::fmt::Debug,
{
    body.collect().await.expect("body").to_bytes()
}

/// Send, read the whole response, return its body and x-request-id.
async fn exchange(
    inspector: &Inspector,
    request: Request<Body>,
    answer: Answer,
) -> (Bytes, String) {
    let (response, _) = send(inspector, request, answer).await;
    let id = response.headers()[REQUEST_ID_HEADER]
        .to_str()
        .unwrap()
        .to_string();
    (read_all(response.into_body()).await, id)
}

/// The first data frame, or a failure if it does not come within a (virtual) minute.
async fn first_frame<B>(body: &mut B) -> Bytes
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Debug,
{
    tokio::time::timeout(Duration::from_secs(60), body.frame())
        .await
        .expect("the first bytes reached the client (the body was not buffered)")
        .expect("a frame")
        .expect("not an error")
        .into_data()
        .expect("data")
}

/// Everything the inspector exposes about its entries, as text: Debug and the JSON handler.
async fn everything_recorded(inspector: &Inspector) -> String {
    let router = inspector.router::<()>();
    let response = router
        .oneshot(Request::get("/").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let json = read_all(response.into_body()).await;
    format!(
        "{:?}\n{}",
        inspector.entries(),
        String::from_utf8_lossy(&json)
    )
}

// ---------------------------------------------------------------------------------------------
// I2: polling GETs are never buffered and never enter the ring.
// ---------------------------------------------------------------------------------------------

// covers I2 (seed 001: the middleware drained every polling body before the first byte): a
// polling GET whose body never ends still delivers its first bytes, and the layer holds none.
#[tokio::test(start_paused = true)]
async fn seed001_polling_get_with_an_endless_body_streams_its_first_bytes() {
    let inspector = seed_inspector(16, 1024);
    for path in SEED_PREFIXES {
        let (response, _) = send(
            &inspector,
            req(Method::GET, &format!("{path}/x?cluster=a"), Body::empty()),
            Answer::Endless,
        )
        .await;
        assert_eq!(response.status(), StatusCode::OK);
        let mut body = response.into_body();
        assert_eq!(first_frame(&mut body).await, "first bytes", "{path}");
        assert_eq!(inspector.stats().retained_bytes, 0);
        drop(body);
    }
    let stats = inspector.stats();
    assert_eq!(stats.passed_through, SEED_PREFIXES.len() as u64);
    assert_eq!(
        (stats.captured, stats.ring_len, stats.peak_retained_bytes),
        (0, 0, 0)
    );
    assert!(
        inspector.entries().is_empty(),
        "a polling GET entered the ring"
    );
}

// covers I2, X4: a 64 MiB polling GET: the first chunk reaches the client when the producer has
// made one chunk, Content-Length survives, every byte arrives, the layer never holds a byte.
#[tokio::test(start_paused = true)]
async fn seed001_huge_polling_get_is_not_buffered() {
    let inspector = seed_inspector(16, 1024);
    let chunks = 1024;
    let (response, made) = send(
        &inspector,
        req(Method::GET, "/api/monitor/storage", Body::empty()),
        Answer::Huge(chunks),
    )
    .await;
    let mut body = response.into_body();
    assert_eq!(
        http_body::Body::size_hint(&body).exact(),
        Some((chunks * CHUNK) as u64)
    );
    let first = first_frame(&mut body).await;
    assert_eq!(first.len(), CHUNK);
    assert_eq!(made.load(Ordering::SeqCst), 1, "the layer read ahead");
    let rest = read_all(body).await;
    assert_eq!(first.len() + rest.len(), chunks * CHUNK);
    let stats = inspector.stats();
    assert_eq!(
        (
            stats.peak_retained_bytes,
            stats.ring_len,
            stats.truncated_bodies
        ),
        (0, 0, 0)
    );
}

// covers I2 (seed: polling payloads "dominate the ring buffer, pushing one-shot calls (POST
// submit, DELETE) out"): 1 000 polling GETs over every seed prefix leave a 2-entry ring holding
// exactly the POST and the DELETE.
#[tokio::test(start_paused = true)]
async fn seed001_polling_gets_never_push_one_shot_calls_out() {
    let inspector = seed_inspector(2, 1024);
    exchange(
        &inspector,
        req(Method::POST, "/api/blast/submit", "job"),
        Answer::Echo,
    )
    .await;
    exchange(
        &inspector,
        req(Method::DELETE, "/api/blast/jobs/7", ""),
        Answer::Echo,
    )
    .await;
    for i in 0..1_000 {
        let path = format!(
            "{}{}",
            SEED_PREFIXES[i % SEED_PREFIXES.len()],
            ["", "/", "/x", "?q=1"][i % 4]
        );
        exchange(
            &inspector,
            req(Method::GET, &path, Body::empty()),
            Answer::Ignore,
        )
        .await;
    }
    let entries = inspector.entries();
    let got: Vec<_> = entries
        .iter()
        .map(|e| (e.method.as_str(), e.path.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            ("DELETE", "/api/blast/jobs/7"),
            ("POST", "/api/blast/submit")
        ]
    );
    let stats = inspector.stats();
    assert_eq!(
        (stats.passed_through, stats.captured, stats.evicted),
        (1_000, 2, 0)
    );
}

// ---------------------------------------------------------------------------------------------
// I3, I4: what is captured.
// ---------------------------------------------------------------------------------------------

// covers I4 (seed: `_inspector_should_capture(path, method="POST")`; single-arg call sites and
// `method=None` count as non-GET) and the whole-segment rule.
#[test]
fn seed001_should_capture_is_method_aware_and_segment_exact() {
    let inspector = Inspector::new(
        InspectorConfig::new()
            .polling_prefixes(["/api/status", "/api/me", "/api/monitor/"])
            .unwrap(),
    );
    let polling = PollingPrefixes::new(["/api/status", "/api/me", "/api/monitor/"]).unwrap();
    let get = Some(&Method::GET);
    let cases: &[(&str, Option<&Method>, bool)] = &[
        ("/api/status", get, false),
        ("/api/status/", get, false),
        ("/api/status/deep/er", get, false),
        ("/api/status?verbose=1", get, false),
        ("/api/statusx", get, true),
        ("/api/status-old", get, true),
        ("/api/stat", get, true),
        ("/api/me", get, false),
        ("/api/meta", get, true),
        ("/api/members", get, true),
        ("/api/monitor", get, false),
        ("/api/monitoring", get, true),
        ("/API/status", get, true),
        ("/api//status", get, true),
        ("/api/status/../admin", get, true),
        ("api/status", get, true),
        ("", get, true),
        ("/api/status", None, true),
        ("/api/me", None, true),
        ("/api/status", Some(&Method::POST), true),
        ("/api/status", Some(&Method::PUT), true),
        ("/api/status", Some(&Method::PATCH), true),
        ("/api/status", Some(&Method::DELETE), true),
        ("/api/status", Some(&Method::HEAD), true),
        ("/api/status", Some(&Method::OPTIONS), true),
        ("/api/jobs", get, true),
    ];
    for &(path, method, expected) in cases {
        assert_eq!(
            inspector.should_capture(path, method),
            expected,
            "{path:?} {method:?}"
        );
        assert_eq!(
            polling.should_capture(path, method),
            expected,
            "{path:?} {method:?}"
        );
    }
}

// covers I3: every POST/PUT/PATCH/DELETE (and HEAD, OPTIONS) — even on a polling path — and every
// non-polling GET is captured, with bodies; the layer agrees with should_capture.
#[tokio::test(start_paused = true)]
async fn i3_every_one_shot_call_is_captured() {
    let inspector = seed_inspector(64, 1024);
    let calls = [
        (Method::POST, "/api/monitor/aks", true),
        (Method::PUT, "/api/warmup", true),
        (Method::PATCH, "/api/me", true),
        (Method::DELETE, "/api/blast/jobs/1", true),
        (Method::HEAD, "/api/monitor/acr", true),
        (Method::OPTIONS, "/api/blast/databases", true),
        (Method::GET, "/api/jobs", true),
        (Method::GET, "/api/meta", true),
        (Method::GET, "/api/warmups", true),
        (Method::GET, "/api/monitor/aksx", true),
        (Method::GET, "/api/monitor/aks/pods", false),
        (Method::GET, "/api/me", false),
    ];
    for (method, path, captured) in &calls {
        assert_eq!(
            inspector.should_capture(path, Some(method)),
            *captured,
            "{method} {path}"
        );
        let before = inspector.stats().captured;
        exchange(
            &inspector,
            req(method.clone(), path, format!("{method} body")),
            Answer::Echo,
        )
        .await;
        assert_eq!(
            inspector.stats().captured - before,
            u64::from(*captured),
            "{method} {path}"
        );
    }
    let entries = inspector.entries();
    assert_eq!(entries.len(), 10);
    let post = entries.iter().find(|e| e.method == "POST").unwrap();
    assert_eq!(post.request_body.text(), "POST body");
    assert_eq!(post.response_body.text(), "POST body");
    assert_eq!(post.outcome, Outcome::Complete);
    assert_eq!(post.status, Some(200));
}

// covers I5: a captured call whose response never ends still streams (tee, no materialisation);
// the entry is written when the client goes away, with what was seen.
#[tokio::test(start_paused = true)]
async fn i5_captured_post_with_an_endless_body_is_teed_while_streaming() {
    let inspector = seed_inspector(16, 1024);
    let (response, _) = send(
        &inspector,
        req(Method::POST, "/api/blast/submit", "go"),
        Answer::Endless,
    )
    .await;
    let mut body = response.into_body();
    assert_eq!(first_frame(&mut body).await, "first bytes");
    assert!(inspector.entries().is_empty(), "recorded before its end");
    drop(body);
    let entries = inspector.entries();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].outcome, Outcome::Aborted);
    assert_eq!(entries[0].response_body.text(), "first bytes");
    assert!(!entries[0].response_body.complete());
    assert_eq!(inspector.stats().in_flight_bytes, 0);
}

// covers I5: bodies are cut at the limit in the ring, never on the wire; limit 0 keeps sizes.
#[tokio::test(start_paused = true)]
async fn i5_bodies_are_cut_at_the_limit_not_on_the_wire() {
    let payload: String = (0..1000)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    for limit in [0, 1, 10, 999, 1000, 1001] {
        let inspector = seed_inspector(4, limit);
        let (echoed, _) = exchange(
            &inspector,
            req(Method::POST, "/api/upload", payload.clone()),
            Answer::Echo,
        )
        .await;
        assert_eq!(echoed, payload.as_bytes(), "the client got every byte");
        let entry = inspector.entries()[0].clone();
        for body in [&entry.request_body, &entry.response_body] {
            assert_eq!(body.captured_bytes(), limit.min(1000), "limit {limit}");
            assert_eq!(
                body.bytes().as_ref(),
                &payload.as_bytes()[..limit.min(1000)]
            );
            assert_eq!(body.total_bytes(), 1000);
            assert_eq!(body.truncated(), limit < 1000, "limit {limit}");
            assert!(body.complete());
        }
        assert!(entry.retained_bytes() < 2 * limit + 4096);
    }
}

// covers I5: a request body the handler never reads is recorded as incomplete, not waited for.
#[tokio::test(start_paused = true)]
async fn i5_unread_request_body_is_recorded_incomplete() {
    let inspector = seed_inspector(4, 1024);
    let (body, _) = exchange(
        &inspector,
        req(Method::POST, "/api/x", "never read"),
        Answer::Ignore,
    )
    .await;
    assert_eq!(body, "ok");
    let entry = inspector.entries()[0].clone();
    assert!(!entry.request_body.complete());
    assert_eq!(entry.outcome, Outcome::Complete);
}

// ---------------------------------------------------------------------------------------------
// I5, I6: secrets.
// ---------------------------------------------------------------------------------------------

// covers I5 (by name) and I6 (by pattern: any header naming a token, secret, key, signature or
// SAS): no secret value reaches an entry, its Debug or the JSON handler.
#[tokio::test(start_paused = true)]
async fn i5_i6_secret_headers_are_redacted_by_name_and_by_pattern() {
    let inspector = Inspector::new(
        InspectorConfig::new()
            .redact_header("X-Session-Id")
            .unwrap()
            .capacity(8)
            .body_limit(64),
    );
    let secret_request_headers = [
        ("authorization", "Bearer SECRET-authorization"),
        ("proxy-authorization", "Basic SECRET-proxy"),
        ("cookie", "session=SECRET-cookie"),
        ("x-api-key", "SECRET-apikey"),
        ("x-session-id", "SECRET-configured"),
        ("x-auth-token", "SECRET-auth-token"),
        ("x-amz-security-token", "SECRET-amz"),
        ("x-client-secret", "SECRET-client-secret"),
        ("ocp-apim-subscription-key", "SECRET-apim-key"),
        ("x-goog-api-key", "SECRET-goog"),
        ("x-hub-signature-256", "SECRET-signature"),
        ("x-ms-sas", "SECRET-sas"),
        ("x-sas-token", "SECRET-sas-token"),
        ("X-Refresh-Token", "SECRET-refresh"),
        ("private-key", "SECRET-private-key"),
    ];
    let mut request = req(Method::POST, "/api/jobs", "job");
    for (name, value) in secret_request_headers {
        request.headers_mut().insert(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_static(value),
        );
    }
    request
        .headers_mut()
        .insert("content-type", HeaderValue::from_static("text/plain"));
    exchange(&inspector, request, Answer::Echo).await;

    let entry = inspector.entries()[0].clone();
    for (name, _) in secret_request_headers {
        let lower = name.to_ascii_lowercase();
        let recorded = entry.request_headers.iter().find(|h| h.name == lower);
        if let Some(h) = recorded {
            assert_eq!(h.value, REDACTED, "{name} not redacted");
        }
    }
    let content_type = entry
        .request_headers
        .iter()
        .find(|h| h.name == "content-type")
        .unwrap();
    assert_eq!(
        content_type.value, "text/plain",
        "a harmless header was redacted"
    );
    let everything = everything_recorded(&inspector).await;
    assert!(
        !everything.contains("SECRET"),
        "a secret leaked: {everything}"
    );
}

// covers I5: set-cookie and pattern-named secrets in *responses* are redacted too.
#[tokio::test(start_paused = true)]
async fn i5_i6_secret_response_headers_are_redacted() {
    let inspector = seed_inspector(4, 64);
    let service = ServiceBuilder::new()
        .layer(inspector.layer())
        .service(service_fn(|_req: Request<InspectBody<Body>>| async {
            let mut response = Response::new(Body::from("ok"));
            for (name, value) in [
                ("set-cookie", "session=SECRET-set-cookie"),
                ("x-new-access-token", "SECRET-access-token"),
                ("x-upload-signature", "SECRET-upload-signature"),
            ] {
                response
                    .headers_mut()
                    .insert(name, HeaderValue::from_static(value));
            }
            Ok::<_, Infallible>(response)
        }));
    let response = service
        .oneshot(req(Method::POST, "/api/login", "u"))
        .await
        .unwrap();
    assert_eq!(
        response.headers()["set-cookie"],
        "session=SECRET-set-cookie",
        "the client's copy is untouched"
    );
    read_all(response.into_body()).await;
    let everything = everything_recorded(&inspector).await;
    assert!(
        !everything.contains("SECRET"),
        "a secret leaked: {everything}"
    );
}

// covers I6: credential query parameters never reach the recorded URL.
#[tokio::test(start_paused = true)]
async fn i6_credential_query_parameters_are_not_recorded() {
    let inspector = seed_inspector(4, 64);
    let uri = "/api/blob/read?sv=2024&sig=SECRET-sig&se=2030&code=SECRET-code&access_token=SECRET-at&api-key=SECRET-key&token=SECRET-token&page=2";
    exchange(&inspector, req(Method::POST, uri, "x"), Answer::Echo).await;
    let entry = inspector.entries()[0].clone();
    assert!(entry.path.starts_with("/api/blob/read"), "{}", entry.path);
    let everything = everything_recorded(&inspector).await;
    assert!(
        !everything.contains("SECRET"),
        "a credential leaked: {everything}"
    );
}

// covers I6: the header bytes recorded per entry are bounded, however many and however large the
// headers a client sends (1 MiB here).
#[tokio::test(start_paused = true)]
async fn i6_recorded_header_bytes_are_bounded_per_entry() {
    let inspector = seed_inspector(4, 1024);
    let mut request = req(Method::POST, "/api/jobs", "job");
    let value = HeaderValue::from_str(&"v".repeat(4096)).unwrap();
    for i in 0..256 {
        request.headers_mut().insert(
            http::HeaderName::from_bytes(format!("x-h-{i}").as_bytes()).unwrap(),
            value.clone(),
        );
    }
    exchange(&inspector, request, Answer::Echo).await;
    let entry = inspector.entries()[0].clone();
    let header_bytes: usize = entry
        .request_headers
        .iter()
        .map(|h| h.name.len() + h.value.len())
        .sum();
    assert!(
        header_bytes <= 64 * 1024,
        "{header_bytes} header bytes recorded for one entry"
    );
    assert!(
        entry.retained_bytes() <= 2 * 1024 + 64 * 1024 + 4096,
        "{}",
        entry.retained_bytes()
    );
    assert!(inspector.stats().peak_retained_bytes <= 2 * 1024 + 64 * 1024 + 4096);
}

// ---------------------------------------------------------------------------------------------
// I1: request ids.
// ---------------------------------------------------------------------------------------------

fn is_generated(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

// covers I1: a valid incoming x-request-id is propagated (request, handler, response, entry);
// a missing or invalid one is replaced by a fresh, unique id; a handler's own id is overwritten.
#[tokio::test(start_paused = true)]
async fn i1_request_ids_are_propagated_or_generated() {
    let inspector = seed_inspector(64, 64);
    let mut with_id = req(Method::POST, "/api/jobs", "a");
    with_id
        .headers_mut()
        .insert(REQUEST_ID_HEADER, HeaderValue::from_static("abc-123"));
    let (_, id) = exchange(&inspector, with_id, Answer::Echo).await;
    assert_eq!(id, "abc-123");
    assert_eq!(inspector.entries()[0].request_id, "abc-123");

    let long = "a".repeat(129);
    let max = "b".repeat(128);
    let invalid: [&[&str]; 4] = [&[""], &[long.as_str()], &["has space"], &["one", "two"]];
    for values in invalid {
        let mut request = req(Method::POST, "/api/jobs", "a");
        for v in values {
            request
                .headers_mut()
                .append(REQUEST_ID_HEADER, HeaderValue::from_str(v).unwrap());
        }
        let (_, id) = exchange(&inspector, request, Answer::Echo).await;
        assert!(is_generated(&id), "{values:?} → {id}");
        assert_eq!(inspector.entries()[0].request_id, id);
    }
    let mut request = req(Method::POST, "/api/jobs", "a");
    request
        .headers_mut()
        .insert(REQUEST_ID_HEADER, HeaderValue::from_str(&max).unwrap());
    assert_eq!(exchange(&inspector, request, Answer::Echo).await.1, max);

    // Fresh ids never repeat; polling GETs get one too (and stay out of the ring).
    let mut ids = std::collections::HashSet::new();
    for i in 0..500 {
        let path = if i % 2 == 0 {
            "/api/monitor/aks"
        } else {
            "/api/jobs"
        };
        let (_, id) = exchange(
            &inspector,
            req(Method::GET, path, Body::empty()),
            Answer::Ignore,
        )
        .await;
        assert!(is_generated(&id), "{id}");
        assert!(ids.insert(id), "an id repeated");
    }
    assert_eq!(inspector.stats().passed_through, 250);
}

// ---------------------------------------------------------------------------------------------
// X5: no configuration value panics; every capacity is finite and clamped.
// ---------------------------------------------------------------------------------------------

// covers X5: capacities and limits at 0 and usize::MAX, by builder and by environment, are
// clamped into their documented ranges ([1, 100 000] entries, [0, 16 MiB] bytes) and work.
#[tokio::test(start_paused = true)]
async fn x5_capacity_and_body_limit_extremes_are_clamped_and_work() {
    let config = InspectorConfig::new()
        .capacity(usize::MAX)
        .body_limit(usize::MAX);
    assert_eq!(
        (config.ring_capacity(), config.body_limit_bytes()),
        (100_000, 16 * 1024 * 1024)
    );
    let config = InspectorConfig::new().capacity(0).body_limit(0);
    assert_eq!((config.ring_capacity(), config.body_limit_bytes()), (1, 0));
    let defaults = InspectorConfig::new();
    assert_eq!(
        (defaults.ring_capacity(), defaults.body_limit_bytes()),
        (200, 16 * 1024)
    );

    for raw in [
        "",
        "abc",
        "-1",
        "0",
        "18446744073709551615",
        "99999999999999999999999",
        "1e9",
    ] {
        let config = InspectorConfig::from_env_with(|name| {
            name.starts_with("REQUEST_INSPECTOR_")
                .then(|| raw.to_string())
        });
        assert!(
            (1..=100_000).contains(&config.ring_capacity()),
            "{raw}: {}",
            config.ring_capacity()
        );
        assert!(config.body_limit_bytes() <= 16 * 1024 * 1024, "{raw}");
    }

    // A one-entry ring keeps the newest; a zero limit keeps sizes only.
    let inspector = Inspector::new(InspectorConfig::new().capacity(0).body_limit(0));
    for i in 0..3 {
        exchange(
            &inspector,
            req(Method::POST, &format!("/api/{i}"), "body"),
            Answer::Echo,
        )
        .await;
    }
    let entries = inspector.entries();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].path, "/api/2");
    assert_eq!(
        (
            entries[0].request_body.captured_bytes(),
            entries[0].request_body.total_bytes()
        ),
        (0, 4)
    );
    assert_eq!(inspector.stats().evicted, 2);
}

// covers X5, I1: durations are recorded in virtual time; an exchange that lasts a (virtual) year
// neither panics nor overflows its counters.
#[tokio::test(start_paused = true)]
async fn x5_very_long_exchanges_record_their_duration() {
    let inspector = seed_inspector(4, 64);
    let year = Duration::from_secs(365 * 86_400);
    let service = ServiceBuilder::new()
        .layer(inspector.layer())
        .service(service_fn(
            move |_req: Request<InspectBody<Body>>| async move {
                tokio::time::sleep(year).await;
                Ok::<_, Infallible>(Response::new(Body::from("late")))
            },
        ));
    let response = service
        .oneshot(req(Method::POST, "/api/slow", "x"))
        .await
        .unwrap();
    read_all(response.into_body()).await;
    let entry: Arc<Entry> = inspector.entries()[0].clone();
    let year_us = year.as_micros() as u64;
    assert!(entry.duration_us >= year_us, "{}", entry.duration_us);
    assert!(entry.response_after_us.unwrap() >= year_us);
}

// covers I2, I3 with axum's own layer (`axum_layer()`, what the dashboard uses), as the seed's
// app sat behind its middleware: one axum router with the seed's polling routes and its one-shot
// calls, the layer added with `Router::layer`. A 64 MiB polling GET reaches the client after one
// chunk was made, with nothing held by the layer; 300 polling GETs over every seed prefix leave
// the 2-entry ring holding exactly the POST and the DELETE, bodies and ids recorded.
#[tokio::test(start_paused = true)]
async fn seed001_dashboard_router_with_the_axum_layer() {
    use axum::routing::{delete, get, post};
    let inspector = seed_inspector(2, 1024);
    let made = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&made);
    let mut router = axum::Router::new().route(
        "/api/monitor/aks",
        get(move || {
            let made = Arc::clone(&counter);
            async move { Body::new(common::CountingBody::counting_into(1024, CHUNK, made)) }
        }),
    );
    for prefix in &SEED_PREFIXES[1..] {
        router = router.route(prefix, get(|| async { "[]" }));
    }
    let app = router
        .route(
            "/api/blast/submit",
            post(|body: String| async move { body }),
        )
        .route("/api/blast/jobs/{id}", delete(|| async { "deleted" }))
        .layer(inspector.axum_layer());

    let response = app
        .clone()
        .oneshot(req(Method::GET, "/api/monitor/aks", Body::empty()))
        .await
        .unwrap();
    assert_eq!(response.headers()[REQUEST_ID_HEADER].len(), 32);
    let mut body = response.into_body();
    assert_eq!(first_frame(&mut body).await.len(), CHUNK);
    assert_eq!(
        made.load(Ordering::SeqCst),
        1,
        "nothing buffered or read ahead"
    );
    assert_eq!(inspector.stats().retained_bytes, 0);
    drop(body);

    let submit = app
        .clone()
        .oneshot(req(Method::POST, "/api/blast/submit", "job-42"))
        .await
        .unwrap();
    let submit_id = submit.headers()[REQUEST_ID_HEADER]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(read_all(submit.into_body()).await, "job-42");
    let deleted = app
        .clone()
        .oneshot(req(Method::DELETE, "/api/blast/jobs/7", Body::empty()))
        .await
        .unwrap();
    assert_eq!(read_all(deleted.into_body()).await, "deleted");
    for i in 0..300 {
        let path = SEED_PREFIXES[1 + i % (SEED_PREFIXES.len() - 1)];
        let response = app
            .clone()
            .oneshot(req(Method::GET, path, Body::empty()))
            .await
            .unwrap();
        assert_eq!(read_all(response.into_body()).await, "[]");
    }
    let entries = inspector.entries();
    let got: Vec<_> = entries
        .iter()
        .map(|e| (e.method.as_str(), e.path.as_str(), e.response_body.text()))
        .collect();
    assert_eq!(
        got,
        [
            ("DELETE", "/api/blast/jobs/7", "deleted".to_string()),
            ("POST", "/api/blast/submit", "job-42".to_string())
        ]
    );
    assert_eq!(entries[1].request_body.text(), "job-42");
    assert_eq!(entries[1].request_id, submit_id);
    let stats = inspector.stats();
    assert_eq!(
        (stats.passed_through, stats.captured, stats.evicted),
        (301, 2, 0)
    );
}
