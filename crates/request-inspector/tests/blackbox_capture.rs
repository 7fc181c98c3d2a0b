//! Black-box review of the rewritten capture path (issue #23: the ring keeps a compact record and
//! builds `Entry` only when read): what `entries()` and the JSON handler report must equal the
//! exchange exactly, bodies must be tee'd and cut correctly whatever the framing, the ring's
//! byte counters must match `Entry::retained_bytes`, and bad input must never panic.
//!
//! Written from SPEC I1–I6/X4/X5, seed 001, docs/request-inspector.md and issue #23 only, through
//! the public API. In-process (tower `oneshot`), virtual time where time matters.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body as AxumBody;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use request_inspector::{
    Entry, HEADERS_CUT, Header, InspectBody, Inspector, InspectorConfig, Outcome, REDACTED,
    REQUEST_ID_HEADER, RequestId,
};
use serde_json::Value;
use tokio::sync::mpsc;
use tower::{Service, ServiceBuilder, ServiceExt, service_fn};

// A counting allocator for `alloc_probe` (run alone, in a child process: the counts are
// process-wide). The other tests only pay the counting.
#[global_allocator]
static GLOBAL: &stats_alloc::StatsAlloc<std::alloc::System> = &stats_alloc::INSTRUMENTED_SYSTEM;

// ---------------------------------------------------------------------------------------------
// Bodies
// ---------------------------------------------------------------------------------------------

/// A body that yields a scripted list of frames (data, trailers, errors), with an optional
/// size hint that may lie.
#[derive(Debug, Default)]
struct Script {
    frames: VecDeque<Result<Frame<Bytes>, io::Error>>,
    hint: Option<SizeHint>,
}

impl Script {
    fn data<I, B>(chunks: I) -> Self
    where
        I: IntoIterator<Item = B>,
        B: Into<Bytes>,
    {
        Self {
            frames: chunks
                .into_iter()
                .map(|c| Ok(Frame::data(c.into())))
                .collect(),
            hint: None,
        }
    }

    fn empty() -> Self {
        Self::default()
    }

    /// `body` cut into frames of `frame` bytes.
    fn framed(body: &[u8], frame: usize) -> Self {
        Self::data(
            body.chunks(frame.max(1))
                .map(Bytes::copy_from_slice)
                .collect::<Vec<_>>(),
        )
    }

    fn hint(mut self, hint: SizeHint) -> Self {
        self.hint = Some(hint);
        self
    }

    fn trailers(mut self, trailers: HeaderMap) -> Self {
        self.frames.push_back(Ok(Frame::trailers(trailers)));
        self
    }

    fn error(mut self) -> Self {
        self.frames
            .push_back(Err(io::Error::other("the body broke part-way")));
        self
    }
}

impl Body for Script {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        Poll::Ready(self.get_mut().frames.pop_front())
    }

    fn is_end_stream(&self) -> bool {
        self.frames.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        match &self.hint {
            Some(hint) => *hint,
            None => {
                let n: usize = self
                    .frames
                    .iter()
                    .filter_map(|f| f.as_ref().ok().and_then(|f| f.data_ref()).map(Bytes::len))
                    .sum();
                SizeHint::with_exact(n as u64)
            }
        }
    }
}

type Tx = mpsc::UnboundedSender<Result<Frame<Bytes>, io::Error>>;

/// A body fed by the test through a channel: it ends when the sender is dropped.
#[derive(Debug)]
struct Chan {
    rx: mpsc::UnboundedReceiver<Result<Frame<Bytes>, io::Error>>,
}

fn chan() -> (Tx, Chan) {
    let (tx, rx) = mpsc::unbounded_channel();
    (tx, Chan { rx })
}

fn send_data(tx: &Tx, data: &'static [u8]) {
    tx.send(Ok(Frame::data(Bytes::from_static(data))))
        .expect("body alive");
}

impl Body for Chan {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        self.get_mut().rx.poll_recv(cx)
    }
}

/// Bytes whose allocation is counted while alive, to see whether the layer keeps the
/// producer's buffers (it must copy, not slice).
struct Tracked {
    data: Vec<u8>,
    live: Arc<AtomicUsize>,
}

impl AsRef<[u8]> for Tracked {
    fn as_ref(&self) -> &[u8] {
        &self.data
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.live.fetch_sub(1, Ordering::SeqCst);
    }
}

fn tracked(data: &[u8], live: &Arc<AtomicUsize>) -> Bytes {
    live.fetch_add(1, Ordering::SeqCst);
    Bytes::from_owner(Tracked {
        data: data.to_vec(),
        live: Arc::clone(live),
    })
}

async fn next_data<B>(body: &mut B) -> Option<Bytes>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Debug,
{
    loop {
        match body.frame().await? {
            Ok(frame) => {
                if let Ok(data) = frame.into_data() {
                    return Some(data);
                }
            }
            Err(e) => panic!("unexpected body error {e:?}"),
        }
    }
}

async fn read_all<B>(body: B) -> Bytes
where
    B: Body<Data = Bytes>,
    B::Error: std::fmt::Debug,
{
    body.collect().await.expect("body").to_bytes()
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

const POLLING: [&str; 3] = ["/api/monitor", "/api/warmup", "/api/inspector"];

fn config() -> InspectorConfig {
    InspectorConfig::new()
        .polling_prefixes(POLLING)
        .expect("valid prefixes")
}

fn request<B>(method: Method, uri: &str, body: B) -> Request<B> {
    Request::builder()
        .method(method)
        .uri(uri)
        .body(body)
        .expect("request")
}

fn only(inspector: &Inspector) -> Arc<Entry> {
    let entries = inspector.entries();
    assert_eq!(entries.len(), 1, "{entries:#?}");
    Arc::clone(&entries[0])
}

/// Send `req` through the layer over a handler that reads the whole request body and answers
/// `answer`; returns the whole response body, the response headers and what the handler read.
async fn roundtrip(
    inspector: &Inspector,
    req: Request<Script>,
    answer: Script,
) -> (Bytes, HeaderMap, Bytes) {
    let seen = Arc::new(Mutex::new(Bytes::new()));
    let seen2 = Arc::clone(&seen);
    let answer = Arc::new(Mutex::new(Some(answer)));
    let service = ServiceBuilder::new()
        .layer(inspector.layer())
        .service(service_fn(move |req: Request<InspectBody<Script>>| {
            let seen = Arc::clone(&seen2);
            let answer = answer.lock().unwrap().take().expect("one call");
            async move {
                *seen.lock().unwrap() = read_all(req.into_body()).await;
                Ok::<_, io::Error>(Response::new(answer))
            }
        }));
    let response = service.oneshot(req).await.expect("response");
    let headers = response.headers().clone();
    let body = read_all(response.into_body()).await;
    let seen = seen.lock().unwrap().clone();
    (body, headers, seen)
}

/// The recorded headers as (name, value) pairs.
fn recorded(headers: &[Header]) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|h| (h.name.clone(), h.value.clone()))
        .collect()
}

/// A header map as the inspector should record it: in map order, duplicates kept, values as
/// lossy UTF-8, the names in `secret` redacted.
fn expected(map: &HeaderMap, secret: &[&str]) -> Vec<(String, String)> {
    map.iter()
        .map(|(name, value)| {
            let value = if secret.contains(&name.as_str()) {
                REDACTED.to_string()
            } else {
                String::from_utf8_lossy(value.as_bytes()).into_owned()
            };
            (name.as_str().to_string(), value)
        })
        .collect()
}

fn without_request_id(list: Vec<(String, String)>) -> Vec<(String, String)> {
    list.into_iter()
        .filter(|(n, _)| n != "x-request-id")
        .collect()
}

/// Recorded headers equal the real ones (the layer's x-request-id aside: if recorded, it is the
/// exchange's id).
fn assert_headers(recorded_list: &[Header], map: &HeaderMap, secret: &[&str], id: &str) {
    for h in recorded_list {
        if h.name == "x-request-id" {
            assert_eq!(h.value, id);
        }
    }
    assert_eq!(
        without_request_id(recorded(recorded_list)),
        without_request_id(expected(map, secret))
    );
}

/// Check the header-limit cut against the real list: recorded in order until the limit would
/// be passed, then one `:not-recorded` pseudo-header counting the rest (I6). No secrets in
/// `map` (their recorded length is not the wire length).
fn assert_cut(recorded_list: &[Header], map: &HeaderMap, limit: usize) {
    // The x-request-id the layer set is a header of the exchange like any other.
    let actual: Vec<(String, String, usize)> = map
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
                n.as_str().len() + v.len(),
            )
        })
        .collect();
    let got = recorded(recorded_list);
    match got.last() {
        Some((name, value)) if name == HEADERS_CUT => {
            let k = got.len() - 1;
            let kept: Vec<_> = actual[..k]
                .iter()
                .map(|(n, v, _)| (n.clone(), v.clone()))
                .collect();
            assert_eq!(
                got[..k],
                kept[..],
                "recorded headers are the first ones, in order"
            );
            let kept_bytes: usize = actual[..k].iter().map(|a| a.2).sum();
            assert!(kept_bytes <= limit, "{kept_bytes} > {limit}");
            assert!(k < actual.len(), "a cut with nothing left out");
            assert!(
                kept_bytes + actual[k].2 > limit,
                "header {} would have fitted ({kept_bytes} + {} <= {limit})",
                actual[k].0,
                actual[k].2
            );
            let rest: usize = actual[k..].iter().map(|a| a.2).sum();
            assert_eq!(
                *value,
                format!("{} headers ({} bytes) not recorded", actual.len() - k, rest)
            );
        }
        _ => {
            let all: Vec<_> = actual
                .iter()
                .map(|(n, v, _)| (n.clone(), v.clone()))
                .collect();
            assert_eq!(got, all);
            let bytes: usize = actual.iter().map(|a| a.2).sum();
            assert!(
                bytes <= limit,
                "{bytes} bytes recorded past the limit {limit}"
            );
        }
    }
}

fn outcome_name(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Complete => "complete",
        Outcome::BodyError => "body_error",
        Outcome::Aborted => "aborted",
        Outcome::ServiceError => "service_error",
        Outcome::Cancelled => "cancelled",
        _ => "unknown",
    }
}

async fn json(inspector: &Inspector) -> Value {
    let response = inspector
        .router::<()>()
        .oneshot(
            Request::get("/?limit=100000")
                .body(AxumBody::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    serde_json::from_slice(&read_all(response.into_body()).await).expect("JSON")
}

/// Every field the JSON handler reports equals `entries()`.
async fn assert_json_matches_entries(inspector: &Inspector) {
    let page = json(inspector).await;
    let entries = inspector.entries();
    let stats = inspector.stats();
    assert_eq!(page["capacity"], inspector.capacity());
    assert_eq!(page["stats"]["captured"], stats.captured);
    assert_eq!(page["stats"]["passed_through"], stats.passed_through);
    assert_eq!(page["stats"]["evicted"], stats.evicted);
    assert_eq!(page["stats"]["ring_len"], stats.ring_len);
    assert_eq!(page["stats"]["ring_bytes"], stats.ring_bytes);
    assert_eq!(page["stats"]["retained_bytes"], stats.retained_bytes);
    let listed = page["entries"].as_array().expect("entries array");
    assert_eq!(listed.len(), entries.len());
    for (j, e) in listed.iter().zip(&entries) {
        assert_eq!(j["id"], e.id);
        assert_eq!(j["request_id"], e.request_id.as_str());
        assert_eq!(j["method"], e.method.as_str());
        assert_eq!(j["path"], e.path.as_str());
        assert_eq!(j["query"], serde_json::to_value(&e.query).unwrap());
        assert_eq!(j["owner"], serde_json::to_value(&e.owner).unwrap());
        assert_eq!(j["status"], serde_json::to_value(e.status).unwrap());
        assert_eq!(j["started_at_unix_ms"], e.started_at_unix_ms);
        assert_eq!(
            j["response_after_us"],
            serde_json::to_value(e.response_after_us).unwrap()
        );
        assert_eq!(j["duration_us"], e.duration_us);
        assert_eq!(j["outcome"], outcome_name(e.outcome));
        for (key, list) in [
            ("request_headers", &e.request_headers),
            ("response_headers", &e.response_headers),
        ] {
            let got: Vec<(String, String)> = j[key]
                .as_array()
                .expect("header list")
                .iter()
                .map(|h| {
                    (
                        h["name"].as_str().unwrap().to_string(),
                        h["value"].as_str().unwrap().to_string(),
                    )
                })
                .collect();
            assert_eq!(got, recorded(list), "{key}");
        }
        for (key, body) in [
            ("request_body", &e.request_body),
            ("response_body", &e.response_body),
        ] {
            assert_eq!(j[key]["text"], body.text().as_str(), "{key}");
            assert_eq!(j[key]["captured_bytes"], body.captured_bytes(), "{key}");
            assert_eq!(j[key]["total_bytes"], body.total_bytes(), "{key}");
            assert_eq!(j[key]["truncated"], body.truncated(), "{key}");
            assert_eq!(j[key]["complete"], body.complete(), "{key}");
        }
    }
}

/// The ring's byte counters agree with its entries and nothing is in flight.
fn assert_accounting(inspector: &Inspector) {
    let stats = inspector.stats();
    let entries = inspector.entries();
    assert_eq!(stats.ring_len, entries.len());
    assert!(entries.len() <= inspector.capacity());
    assert_eq!(
        stats.ring_bytes,
        entries.iter().map(|e| e.retained_bytes()).sum::<usize>(),
        "ring_bytes is the sum of Entry::retained_bytes"
    );
    assert_eq!(stats.in_flight_bytes, 0, "nothing is in flight");
    assert_eq!(
        stats.retained_bytes,
        stats.in_flight_bytes + stats.ring_bytes + stats.ring_slot_bytes + stats.spare_bytes
    );
    assert!(stats.peak_retained_bytes >= stats.retained_bytes);
    // Sequential exchanges: newest first is also decreasing ids.
    assert!(
        entries.windows(2).all(|w| w[0].id > w[1].id),
        "newest first: {:?}",
        entries.iter().map(|e| e.id).collect::<Vec<_>>()
    );
}

#[derive(Clone, Debug)]
struct Account(String);

fn owner(ext: &http::Extensions) -> Option<String> {
    ext.get::<Account>().map(|a| a.0.clone())
}

// ---------------------------------------------------------------------------------------------
// Fidelity: the entry equals the exchange
// ---------------------------------------------------------------------------------------------

/// Request header names (lowercase) that must read `[redacted]` (I5, I6 and the configured one).
const SECRET_REQUEST_HEADERS: [&str; 10] = [
    "authorization",
    "proxy-authorization",
    "cookie",
    "x-api-key",
    "x-auth-token",
    "x-auth",
    "x-ms-sas",
    "x-hub-signature-256",
    "ocp-apim-subscription-key",
    "x-session",
];

const SECRET_RESPONSE_HEADERS: [&str; 3] = ["set-cookie", "x-upstream-token", "x-client-secret"];

// covers I1, I5, I6: method, path, query (credentials redacted, percent-encoded names too),
// owner, status, request id, every header in order with duplicates, non-UTF-8 and empty values,
// secrets redacted, bodies; the JSON handler says the same.
#[tokio::test]
async fn entry_equals_the_exchange_field_by_field() {
    let inspector = Inspector::new(
        config()
            .body_limit(1024)
            .redact_header("x-session")
            .unwrap()
            .owner_from(owner),
    );
    let query = "sv=2020-01-01&sig=SeCrEt1&limit=20&%73ig=SeCrEt2&access%5Ftoken=SeCrEt3\
                 &my+token=SeCrEt4&SIG=SeCrEt5&X-Amz-Signature=SeCrEt6&code=SeCrEt7\
                 &client_secret=SeCrEt8&%2573ig=kept&%ZZ=ok&plain=%E9&flag&sig=a=SeCrEt9";
    let want_query = "sv=[redacted]&sig=[redacted]&limit=20&%73ig=[redacted]\
                      &access%5Ftoken=[redacted]&my+token=[redacted]&SIG=[redacted]\
                      &X-Amz-Signature=[redacted]&code=[redacted]&client_secret=[redacted]\
                      &%2573ig=kept&%ZZ=ok&plain=%E9&flag&sig=[redacted]";
    let mut req = Request::builder()
        .method(Method::POST)
        .uri(format!("/api/jobs/7?{query}"))
        .header("accept", "application/json")
        .header("x-trace", "one")
        .header("authorization", "Bearer SeCrEt")
        .header("x-trace", "two")
        .header("cookie", "a=SeCrEt")
        .header("cookie", "b=SeCrEt")
        .header("x-empty", "")
        .header("x-bin", HeaderValue::from_bytes(b"caf\xe9 \xff").unwrap())
        .header("x-author", "visible")
        .header("x-auth", "SeCrEt")
        .header("x-auth-token", "SeCrEt")
        .header("x-ms-sas", "SeCrEt")
        .header("x-hub-signature-256", "sha256=SeCrEt")
        .header("ocp-apim-subscription-key", "SeCrEt")
        .header("x-api-key", "SeCrEt")
        .header("proxy-authorization", "Basic SeCrEt")
        .header("x-session", "SeCrEt")
        .header("x-request-id", "client-id-1")
        .header("x-trace", "three")
        .body(Script::data(["submit ", "job 7"]))
        .unwrap();
    req.extensions_mut().insert(Account("alice".into()));

    let seen_headers = Arc::new(Mutex::new(HeaderMap::new()));
    let seen = Arc::clone(&seen_headers);
    let service = ServiceBuilder::new()
        .layer(inspector.layer())
        .service(service_fn(move |req: Request<InspectBody<Script>>| {
            let seen = Arc::clone(&seen);
            async move {
                let id = req.extensions().get::<RequestId>().cloned().expect("id");
                assert_eq!(id.as_str(), "client-id-1");
                assert_eq!(req.headers()[REQUEST_ID_HEADER], "client-id-1");
                *seen.lock().unwrap() = req.headers().clone();
                let body = read_all(req.into_body()).await;
                assert_eq!(body, "submit job 7");
                let response = Response::builder()
                    .status(StatusCode::CREATED)
                    .header("content-type", "text/plain")
                    .header("set-cookie", "s=SeCrEt; HttpOnly")
                    .header("x-trace", "r1")
                    .header("set-cookie", "t=SeCrEt")
                    .header("x-trace", "r2")
                    .header("x-empty", "")
                    .header("x-bin", HeaderValue::from_bytes(b"\x80\xfe").unwrap())
                    .header("x-upstream-token", "SeCrEt")
                    .header("x-client-secret", "SeCrEt")
                    .header("x-request-id", "handler-id")
                    .body(Script::data(["created ", "job ", "7"]))
                    .unwrap();
                Ok::<_, io::Error>(response)
            }
        }));
    let response = service.oneshot(req).await.unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let response_headers = response.headers().clone();
    assert_eq!(response_headers[REQUEST_ID_HEADER], "client-id-1");
    assert_eq!(read_all(response.into_body()).await, "created job 7");

    let e = only(&inspector);
    assert_eq!(e.method, "POST");
    assert_eq!(e.path, "/api/jobs/7");
    assert_eq!(e.query.as_deref(), Some(want_query));
    assert_eq!(e.owner.as_deref(), Some("alice"));
    assert_eq!(e.status, Some(201));
    assert_eq!(e.request_id, "client-id-1");
    assert_eq!(e.outcome, Outcome::Complete);
    assert_headers(
        &e.request_headers,
        &seen_headers.lock().unwrap(),
        &SECRET_REQUEST_HEADERS,
        "client-id-1",
    );
    assert_headers(
        &e.response_headers,
        &response_headers,
        &SECRET_RESPONSE_HEADERS,
        "client-id-1",
    );
    assert_eq!(e.request_body.bytes(), "submit job 7");
    assert_eq!(e.response_body.bytes(), "created job 7");
    for body in [&e.request_body, &e.response_body] {
        assert!(body.complete() && !body.truncated());
        assert_eq!(body.total_bytes(), body.captured_bytes() as u64);
    }

    let everything = format!("{e:?}\n{}", json(&inspector).await);
    assert!(
        !everything.contains("SeCrEt"),
        "a secret leaked: {everything}"
    );
    assert_json_matches_entries(&inspector).await;
    assert_accounting(&inspector);
}

// covers I1: ids are propagated when valid, generated otherwise, and the same id is on the
// request header, the extension, the response and the entry.
#[tokio::test]
async fn request_ids_are_the_same_everywhere() {
    let inspector = Inspector::new(config().capacity(100));
    let max = "a".repeat(128);
    let cases: Vec<(Vec<HeaderValue>, Option<&str>)> = vec![
        (vec![], None),
        (
            vec![HeaderValue::from_static("ok-id_1.2:3")],
            Some("ok-id_1.2:3"),
        ),
        (
            vec![HeaderValue::from_str(&max).unwrap()],
            Some(max.as_str()),
        ),
        (vec![HeaderValue::from_str(&"a".repeat(129)).unwrap()], None),
        (vec![HeaderValue::from_static("")], None),
        (vec![HeaderValue::from_static("has space")], None),
        (vec![HeaderValue::from_bytes(b"caf\xe9").unwrap()], None),
        (
            vec![HeaderValue::from_static("a"), HeaderValue::from_static("a")],
            None,
        ),
    ];
    let mut generated = std::collections::HashSet::new();
    for (i, (values, want)) in cases.iter().enumerate() {
        for method in [Method::POST, Method::GET] {
            let path = if method == Method::GET {
                "/api/monitor/aks"
            } else {
                "/api/x"
            };
            let mut req = request(method.clone(), path, Script::empty());
            for v in values {
                req.headers_mut().append(REQUEST_ID_HEADER, v.clone());
            }
            let inner = Arc::new(Mutex::new(String::new()));
            let inner2 = Arc::clone(&inner);
            let service = ServiceBuilder::new()
                .layer(inspector.layer())
                .service(service_fn(move |req: Request<InspectBody<Script>>| {
                    let inner = Arc::clone(&inner2);
                    async move {
                        let ids: Vec<_> = req.headers().get_all(REQUEST_ID_HEADER).iter().collect();
                        assert_eq!(ids.len(), 1, "one id on the request");
                        let ext = req.extensions().get::<RequestId>().expect("extension");
                        assert_eq!(ids[0], ext.as_str());
                        *inner.lock().unwrap() = ext.as_str().to_string();
                        Ok::<_, io::Error>(Response::new(Script::data(["ok"])))
                    }
                }));
            let response = service.oneshot(req).await.unwrap();
            let on_response: Vec<_> = response
                .headers()
                .get_all(REQUEST_ID_HEADER)
                .iter()
                .map(|v| v.to_str().unwrap().to_string())
                .collect();
            read_all(response.into_body()).await;
            let inner = inner.lock().unwrap().clone();
            assert_eq!(on_response, std::slice::from_ref(&inner), "case {i}");
            match want {
                Some(w) => assert_eq!(inner, *w, "case {i}"),
                None => {
                    assert_eq!(inner.len(), 32, "case {i}: {inner}");
                    assert!(inner.bytes().all(|b| b.is_ascii_hexdigit()), "{inner}");
                    assert!(generated.insert(inner.clone()), "a generated id repeated");
                }
            }
            if method == Method::POST {
                assert_eq!(inspector.entries()[0].request_id, inner, "case {i}");
            }
        }
    }
    assert_eq!(inspector.stats().passed_through, cases.len() as u64);
    assert_eq!(inspector.stats().captured, cases.len() as u64);
}

// covers I6: owner recorded; with require_owner an unowned request is counted, not stored, and
// still gets its id and its bytes untouched.
#[tokio::test]
async fn unowned_requests_are_counted_not_stored() {
    let inspector = Inspector::new(config().owner_from(owner).require_owner(true));
    let (body, headers, seen) = roundtrip(
        &inspector,
        request(Method::POST, "/api/x", Script::data(["in"])),
        Script::data(["out"]),
    )
    .await;
    assert_eq!((&body[..], &seen[..]), (&b"out"[..], &b"in"[..]));
    assert!(headers.contains_key(REQUEST_ID_HEADER));
    assert!(inspector.entries().is_empty());
    let stats = inspector.stats();
    assert_eq!((stats.not_recorded_unowned, stats.captured), (1, 0));
    assert_eq!(stats.retained_bytes, 0);

    let mut req = request(Method::POST, "/api/x", Script::data(["in"]));
    req.extensions_mut().insert(Account("bob".into()));
    roundtrip(&inspector, req, Script::data(["out"])).await;
    assert_eq!(only(&inspector).owner.as_deref(), Some("bob"));
    assert_accounting(&inspector);
}

// ---------------------------------------------------------------------------------------------
// Header limit (I6)
// ---------------------------------------------------------------------------------------------

// covers I6: headers recorded in order until the limit would be passed, then one pseudo-header
// with the count and bytes of the rest — at every limit around the boundaries.
#[tokio::test]
async fn header_limit_cuts_in_order_with_the_pseudo_header() {
    for limit in [0, 1, 9, 10, 11, 19, 20, 21, 55, 100, 1000] {
        let inspector = Inspector::new(config().header_limit(limit));
        let mut req = request(Method::POST, "/api/x", Script::empty());
        let mut answer = Response::new(Script::empty());
        for i in 0..10 {
            // 10 bytes each: "h0" + "12345678".
            let name = HeaderName::from_bytes(format!("h{i}").as_bytes()).unwrap();
            req.headers_mut()
                .append(name.clone(), HeaderValue::from_static("12345678"));
            answer
                .headers_mut()
                .append(name, HeaderValue::from_static("abcdefgh"));
        }
        // A duplicate after the others: grouped with h3 by the map, in map order.
        req.headers_mut()
            .append("h3", HeaderValue::from_static("dup45678"));
        let seen = Arc::new(Mutex::new(HeaderMap::new()));
        let seen2 = Arc::clone(&seen);
        let answer = Arc::new(Mutex::new(Some(answer)));
        let service = ServiceBuilder::new()
            .layer(inspector.layer())
            .service(service_fn(move |req: Request<InspectBody<Script>>| {
                *seen2.lock().unwrap() = req.headers().clone();
                let answer = answer.lock().unwrap().take().unwrap();
                async move { Ok::<_, io::Error>(answer) }
            }));
        let response = service.oneshot(req).await.unwrap();
        let response_headers = response.headers().clone();
        read_all(response.into_body()).await;
        let e = only(&inspector);
        assert_cut(&e.request_headers, &seen.lock().unwrap(), limit);
        assert_cut(&e.response_headers, &response_headers, limit);
        assert_json_matches_entries(&inspector).await;
        assert_accounting(&inspector);
    }
}

// covers I6, X5: 10 000 headers and 1 MiB header values never panic and stay within the limit.
#[tokio::test]
async fn ten_thousand_headers_and_huge_values_are_bounded() {
    let inspector = Inspector::new(config().capacity(4));
    let mut req = request(Method::PUT, "/api/x", Script::empty());
    let mut answer = Response::new(Script::data(["ok"]));
    for i in 0..10_000 {
        let name = HeaderName::from_bytes(format!("x-h{i}").as_bytes()).unwrap();
        req.headers_mut()
            .append(name.clone(), HeaderValue::from_static("v"));
        answer
            .headers_mut()
            .append(name, HeaderValue::from_static("w"));
    }
    let seen = Arc::new(Mutex::new(HeaderMap::new()));
    let seen2 = Arc::clone(&seen);
    let answer = Arc::new(Mutex::new(Some(answer)));
    let service = ServiceBuilder::new()
        .layer(inspector.layer())
        .service(service_fn(move |req: Request<InspectBody<Script>>| {
            *seen2.lock().unwrap() = req.headers().clone();
            let answer = answer.lock().unwrap().take().unwrap();
            async move { Ok::<_, io::Error>(answer) }
        }));
    let response = service.oneshot(req).await.unwrap();
    let response_headers = response.headers().clone();
    read_all(response.into_body()).await;
    let e = only(&inspector);
    let limit = inspector.config().header_limit_bytes();
    assert_eq!(limit, 16 * 1024);
    assert_cut(&e.request_headers, &seen.lock().unwrap(), limit);
    assert_cut(&e.response_headers, &response_headers, limit);
    assert!(e.retained_bytes() < 200 * 1024, "{}", e.retained_bytes());

    // One huge value (plain and secret), first in the list.
    let huge = "v".repeat(1024 * 1024);
    let req = Request::builder()
        .method(Method::POST)
        .uri("/api/huge")
        .header("x-huge", huge.as_str())
        .header("cookie", huge.as_str())
        .header("accept", "*/*")
        .body(Script::empty())
        .unwrap();
    roundtrip(&inspector, req, Script::empty()).await;
    let e = &inspector.entries()[0];
    assert_eq!(e.path, "/api/huge");
    let names: Vec<_> = e.request_headers.iter().map(|h| h.name.as_str()).collect();
    assert!(!names.contains(&"x-huge"), "{names:?}");
    assert_eq!(names.last(), Some(&HEADERS_CUT));
    assert!(e.retained_bytes() < 100 * 1024, "{}", e.retained_bytes());
    assert_accounting(&inspector);
}

// ---------------------------------------------------------------------------------------------
// Query (I6) and extreme inputs
// ---------------------------------------------------------------------------------------------

// covers I6: the recorded query is cut at the header limit and a cut never exposes part of a
// credential value (redaction before the cut).
#[tokio::test]
async fn query_cut_never_exposes_part_of_a_secret() {
    let query = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa=1&sig=QQQQQQQQQQQQ&token=QQQQQQQ&z=1";
    for limit in 0..=query.len() + 10 {
        let inspector = Inspector::new(config().header_limit(limit));
        roundtrip(
            &inspector,
            request(Method::POST, &format!("/api/x?{query}"), Script::empty()),
            Script::empty(),
        )
        .await;
        let e = only(&inspector);
        let q = e.query.clone().unwrap_or_default();
        assert!(!q.contains('Q'), "limit {limit}: {q}");
        assert!(q.len() <= limit, "limit {limit}: {} bytes: {q}", q.len());
    }
}

// covers I6, X5: long paths, long queries and malformed percent-encoding never panic; paths are
// recorded as sent; no secret value survives.
#[tokio::test]
async fn malformed_and_long_targets_never_panic() {
    let inspector = Inspector::new(config().capacity(64));
    let long_path = format!("/api/{}", "p".repeat(60_000));
    let many_secrets = "sig=QQ&".repeat(8_000);
    let targets: Vec<String> = vec![
        long_path.clone(),
        format!("/api/x?{many_secrets}"),
        format!("/api/x?{}", "a".repeat(60_000)),
        "/api/x?%".into(),
        "/api/x?%4".into(),
        "/api/x?%G1=2".into(),
        "/api/x?%e9%80=1".into(),
        "/api/x?%00sig=1".into(),
        "/api/x?s%69g=QQ".into(),
        "/api/x?%53%49%47=QQ".into(),
        "/api/x?&&&".into(),
        "/api/x?=".into(),
        "/api/x?==1".into(),
        "/api/x?sig".into(),
        "/api/x?sig=".into(),
        "/api/x?sig==QQ".into(),
        "/api/x?a=%".into(),
        "/api/x?token%=QQ".into(),
        "/api/x?".into(),
        "/api/%zz/%".into(),
        "/api/monitor/../x".into(),
        "*".into(),
    ];
    for target in &targets {
        let uri: http::Uri = match target.parse() {
            Ok(u) => u,
            Err(_) => continue,
        };
        let method = if target == "*" {
            Method::OPTIONS
        } else {
            Method::DELETE
        };
        let (body, headers, _) = roundtrip(
            &inspector,
            request(method, &uri.to_string(), Script::data(["b"])),
            Script::data(["r"]),
        )
        .await;
        assert_eq!(body, "r");
        assert!(headers.contains_key(REQUEST_ID_HEADER));
        let e = &inspector.entries()[0];
        assert_eq!(e.path, uri.path(), "{target}");
        let q = e.query.clone().unwrap_or_default();
        assert!(!q.contains("QQ"), "{target} recorded as {q}");
        assert!(q.len() <= inspector.config().header_limit_bytes());
        if uri.query().is_none() {
            assert_eq!(e.query, None, "{target}");
        }
    }
    assert_json_matches_entries(&inspector).await;
    assert_accounting(&inspector);
}

// ---------------------------------------------------------------------------------------------
// Bodies (I5)
// ---------------------------------------------------------------------------------------------

// covers I5: every framing (1-byte frames, frames straddling the limit, frames ending on it),
// every size around the limit, limit 0: the bytes pass unchanged, the first `limit` are kept,
// totals and flags are right, in both directions.
#[tokio::test]
async fn body_limit_is_exact_for_every_framing() {
    let data: Vec<u8> = (0..200u8).map(|i| b'a' + (i % 26)).collect();
    for limit in [0usize, 1, 7, 10, 11, 64] {
        let inspector = Inspector::new(config().body_limit(limit).capacity(1));
        for frame in [1usize, 3, 7, 10, 64, 1000] {
            for len in [0usize, 1, 6, 7, 9, 10, 11, 20, 63, 64, 65, 200] {
                let body = &data[..len];
                let (got, _, seen) = roundtrip(
                    &inspector,
                    request(Method::POST, "/api/x", Script::framed(body, frame)),
                    Script::framed(body, frame),
                )
                .await;
                assert_eq!(&seen[..], body);
                assert_eq!(&got[..], body);
                let e = only(&inspector);
                let ctx = format!("limit {limit}, frame {frame}, len {len}");
                for b in [&e.request_body, &e.response_body] {
                    assert_eq!(&b.bytes()[..], &body[..len.min(limit)], "{ctx}");
                    assert_eq!(b.captured_bytes(), len.min(limit), "{ctx}");
                    assert_eq!(b.total_bytes(), len as u64, "{ctx}");
                    assert_eq!(b.truncated(), len > limit, "{ctx}");
                    assert!(b.complete(), "{ctx}");
                }
                assert_eq!(e.outcome, Outcome::Complete, "{ctx}");
                assert_accounting(&inspector);
            }
        }
    }
}

// covers I5: empty data frames, no frames, and a body that is empty from the start are all
// complete, zero-byte bodies; an empty response that is never polled is still recorded.
#[tokio::test]
async fn empty_bodies_are_complete_and_zero() {
    let inspector = Inspector::new(config());
    roundtrip(
        &inspector,
        request(
            Method::POST,
            "/api/x",
            Script::data([Bytes::new(), Bytes::new()]),
        ),
        Script::data([Bytes::new(), Bytes::from_static(b""), Bytes::new()]),
    )
    .await;
    let e = only(&inspector);
    for b in [&e.request_body, &e.response_body] {
        assert_eq!((b.captured_bytes(), b.total_bytes()), (0, 0));
        assert!(b.complete() && !b.truncated());
    }
    assert_eq!(e.outcome, Outcome::Complete);

    // A response whose body is already at its end, dropped without a poll (a server may never
    // poll an empty body): still one complete entry.
    inspector.clear();
    let service = ServiceBuilder::new()
        .layer(inspector.layer())
        .service(service_fn(|req: Request<InspectBody<Script>>| async move {
            read_all(req.into_body()).await;
            Ok::<_, io::Error>(Response::new(Script::empty()))
        }));
    let response = service
        .oneshot(request(Method::DELETE, "/api/y", Script::empty()))
        .await
        .unwrap();
    assert!(response.body().is_end_stream());
    drop(response);
    let e = only(&inspector);
    assert_eq!(e.path, "/api/y");
    assert_eq!(e.outcome, Outcome::Complete);
    assert_eq!(e.response_body.total_bytes(), 0);
    assert!(e.response_body.complete());
    assert_accounting(&inspector);
}

// covers I5: trailers pass through unchanged in both directions; only data is captured.
#[tokio::test]
async fn trailers_pass_through_and_are_not_captured_as_data() {
    let inspector = Inspector::new(config());
    let mut trailers = HeaderMap::new();
    trailers.insert("x-checksum", HeaderValue::from_static("abc"));
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    let request_trailers = trailers.clone();
    let response_trailers = trailers.clone();
    let service = ServiceBuilder::new()
        .layer(inspector.layer())
        .service(service_fn(move |req: Request<InspectBody<Script>>| {
            let want = request_trailers.clone();
            let answer = response_trailers.clone();
            async move {
                let collected = req.into_body().collect().await.unwrap();
                assert_eq!(collected.trailers(), Some(&want));
                assert_eq!(collected.to_bytes(), "hello");
                Ok::<_, io::Error>(Response::new(Script::data(["wor", "ld"]).trailers(answer)))
            }
        }));
    let response = service
        .oneshot(request(
            Method::POST,
            "/api/x",
            Script::data(["he", "llo"]).trailers(trailers.clone()),
        ))
        .await
        .unwrap();
    let collected = response.into_body().collect().await.unwrap();
    assert_eq!(collected.trailers(), Some(&trailers));
    assert_eq!(collected.to_bytes(), "world");
    let e = only(&inspector);
    assert_eq!(e.request_body.bytes(), "hello");
    assert_eq!(e.response_body.bytes(), "world");
    assert_eq!(e.request_body.total_bytes(), 5);
    assert_eq!(e.response_body.total_bytes(), 5);
    assert!(e.request_body.complete() && e.response_body.complete());
    assert_eq!(e.outcome, Outcome::Complete);
    assert_accounting(&inspector);
}

// covers I5: size_hint is forwarded unchanged (Content-Length survives), and a hint that lies
// changes nothing in what is captured or counted.
#[tokio::test]
async fn lying_size_hints_change_nothing() {
    let mib = 1024 * 1024;
    let big = vec![b'z'; mib];
    let inspector = Inspector::new(config().body_limit(1024).capacity(8));

    // Says 10 bytes, sends 1 MiB.
    let chunks: Vec<Bytes> = big.chunks(64 * 1024).map(Bytes::copy_from_slice).collect();
    let service = ServiceBuilder::new()
        .layer(inspector.layer())
        .service(service_fn(move |req: Request<InspectBody<Script>>| {
            let chunks = chunks.clone();
            async move {
                assert_eq!(req.body().size_hint().exact(), Some(10));
                let n = read_all(req.into_body()).await.len();
                assert_eq!(n, 1024 * 1024);
                Ok::<_, io::Error>(Response::new(
                    Script::data(chunks).hint(SizeHint::with_exact(10)),
                ))
            }
        }));
    let response = service
        .oneshot(request(
            Method::POST,
            "/api/liar-small",
            Script::framed(&big, 4096).hint(SizeHint::with_exact(10)),
        ))
        .await
        .unwrap();
    assert_eq!(
        response.body().size_hint().exact(),
        Some(10),
        "hint forwarded"
    );
    assert_eq!(read_all(response.into_body()).await.len(), mib);
    let e = &inspector.entries()[0];
    for b in [&e.request_body, &e.response_body] {
        assert_eq!(b.total_bytes(), mib as u64);
        assert_eq!(b.captured_bytes(), 1024);
        assert!(b.truncated() && b.complete());
    }
    assert_accounting(&inspector);

    // Says 1 MiB (or more than memory), sends 10 bytes: the entry holds 10 bytes, not a buffer
    // sized from the hint.
    for hint in [mib as u64, u64::MAX] {
        let inspector = Inspector::new(config().capacity(8)); // default 16 KiB limit
        let (got, _, seen) = roundtrip(
            &inspector,
            request(
                Method::POST,
                "/api/liar-big",
                Script::data(["0123456789"]).hint(SizeHint::with_exact(hint)),
            ),
            Script::data(["abcdefghij"]).hint(SizeHint::with_exact(hint)),
        )
        .await;
        assert_eq!(
            (&got[..], &seen[..]),
            (&b"abcdefghij"[..], &b"0123456789"[..])
        );
        let e = only(&inspector);
        for b in [&e.request_body, &e.response_body] {
            assert_eq!((b.captured_bytes(), b.total_bytes()), (10, 10));
            assert!(!b.truncated() && b.complete());
        }
        assert_accounting(&inspector);
        assert!(
            e.retained_bytes() < 4096,
            "hint {hint}: a 10-byte exchange retains {} bytes in the ring",
            e.retained_bytes()
        );
    }
}

// covers I5: a request body the handler drops half-way is recorded incomplete with what was
// read; an unread one is incomplete.
#[tokio::test]
async fn request_body_dropped_half_way_is_incomplete() {
    let inspector = Inspector::new(config());
    let service = ServiceBuilder::new()
        .layer(inspector.layer())
        .service(service_fn(|req: Request<InspectBody<Script>>| async move {
            let mut body = req.into_body();
            let first = next_data(&mut body).await.unwrap();
            assert_eq!(first, "part1");
            drop(body);
            Ok::<_, io::Error>(Response::new(Script::data(["ok"])))
        }));
    let response = service
        .oneshot(request(
            Method::POST,
            "/api/x",
            Script::data(["part1", "part2", "part3"]),
        ))
        .await
        .unwrap();
    read_all(response.into_body()).await;
    let e = only(&inspector);
    assert_eq!(e.request_body.bytes(), "part1");
    assert_eq!(e.request_body.total_bytes(), 5);
    assert!(!e.request_body.complete());
    assert_eq!(e.outcome, Outcome::Complete);
    assert!(e.response_body.complete());
    assert_accounting(&inspector);

    inspector.clear();
    let service = ServiceBuilder::new()
        .layer(inspector.layer())
        .service(service_fn(
            |_req: Request<InspectBody<Script>>| async move {
                Ok::<_, io::Error>(Response::new(Script::data(["ok"])))
            },
        ));
    let response = service
        .oneshot(request(Method::POST, "/api/x", Script::data(["unread"])))
        .await
        .unwrap();
    read_all(response.into_body()).await;
    let e = only(&inspector);
    assert!(!e.request_body.complete());
    assert_eq!(e.request_body.total_bytes(), 0);
    assert_accounting(&inspector);
}

// ---------------------------------------------------------------------------------------------
// Outcomes
// ---------------------------------------------------------------------------------------------

// covers I1: body error, abort, service error and cancellation each give one entry with the
// right outcome, status and partial body, the error reaches the caller, nothing stays in flight.
#[tokio::test]
async fn every_outcome_is_recorded_and_nothing_stays_in_flight() {
    let inspector = Inspector::new(config().capacity(16));

    // Body error part-way.
    let service = ServiceBuilder::new()
        .layer(inspector.layer())
        .service(service_fn(
            |_req: Request<InspectBody<Script>>| async move {
                Ok::<_, io::Error>(Response::new(Script::data(["abc"]).error()))
            },
        ));
    let response = service
        .oneshot(request(Method::POST, "/api/body-error", Script::empty()))
        .await
        .unwrap();
    let mut body = response.into_body();
    assert_eq!(next_data(&mut body).await.unwrap(), "abc");
    let err = body.frame().await.expect("a frame").expect_err("the error");
    assert_eq!(err.to_string(), "the body broke part-way");
    drop(body);
    let e = &inspector.entries()[0];
    assert_eq!(
        (e.path.as_str(), e.outcome),
        ("/api/body-error", Outcome::BodyError)
    );
    assert_eq!(e.status, Some(200));
    assert_eq!(e.response_body.bytes(), "abc");
    assert!(!e.response_body.complete());
    assert_eq!(inspector.entries().len(), 1, "recorded once");
    assert_accounting(&inspector);

    // Aborted: the client reads one frame and goes away.
    let service = ServiceBuilder::new()
        .layer(inspector.layer())
        .service(service_fn(
            |_req: Request<InspectBody<Script>>| async move {
                Ok::<_, io::Error>(Response::new(Script::data(["one", "two", "three"])))
            },
        ));
    let response = service
        .oneshot(request(Method::POST, "/api/aborted", Script::empty()))
        .await
        .unwrap();
    let mut body = response.into_body();
    assert_eq!(next_data(&mut body).await.unwrap(), "one");
    assert!(
        inspector.entries().len() == 1,
        "not recorded before the exchange ends"
    );
    assert!(
        inspector.stats().in_flight_bytes > 0,
        "the capture in flight is counted"
    );
    drop(body);
    let e = &inspector.entries()[0];
    assert_eq!(
        (e.path.as_str(), e.outcome),
        ("/api/aborted", Outcome::Aborted)
    );
    assert_eq!(e.response_body.bytes(), "one");
    assert_eq!(e.response_body.total_bytes(), 3);
    assert!(!e.response_body.complete());
    assert_accounting(&inspector);

    // Service error.
    let service = ServiceBuilder::new()
        .layer(inspector.layer())
        .service(service_fn(|req: Request<InspectBody<Script>>| async move {
            read_all(req.into_body()).await;
            Err::<Response<Script>, _>(io::Error::other("inner failed"))
        }));
    let err = service
        .oneshot(request(
            Method::PUT,
            "/api/service-error",
            Script::data(["x"]),
        ))
        .await
        .expect_err("the inner error");
    assert_eq!(err.to_string(), "inner failed");
    let e = &inspector.entries()[0];
    assert_eq!(
        (e.path.as_str(), e.outcome, e.status),
        ("/api/service-error", Outcome::ServiceError, None)
    );
    assert_eq!(e.request_body.bytes(), "x");
    assert!(e.response_headers.is_empty());
    assert_eq!(e.response_body.total_bytes(), 0);
    assert_eq!(e.response_after_us, None);
    assert_accounting(&inspector);

    // Cancelled: the response future is dropped before the head.
    let mut service = ServiceBuilder::new()
        .layer(inspector.layer())
        .service(service_fn(
            |_req: Request<InspectBody<Script>>| async move {
                std::future::pending::<()>().await;
                Ok::<_, io::Error>(Response::new(Script::empty()))
            },
        ));
    service.ready().await.unwrap();
    let mut future = Box::pin(service.call(request(
        Method::PATCH,
        "/api/cancelled",
        Script::data(["y"]),
    )));
    assert!(futures::poll!(&mut future).is_pending());
    drop(future);
    let e = &inspector.entries()[0];
    assert_eq!(
        (e.path.as_str(), e.outcome, e.status),
        ("/api/cancelled", Outcome::Cancelled, None)
    );
    assert_eq!(e.method, "PATCH");
    assert_accounting(&inspector);

    let kinds: Vec<_> = inspector.entries().iter().map(|e| e.outcome).collect();
    assert_eq!(
        kinds,
        [
            Outcome::Cancelled,
            Outcome::ServiceError,
            Outcome::Aborted,
            Outcome::BodyError
        ]
    );
    assert_eq!(inspector.stats().captured, 4);
    assert_json_matches_entries(&inspector).await;
}

// covers I1: durations in virtual time: head after the handler's wait, duration at the body end.
#[tokio::test(start_paused = true)]
async fn durations_follow_virtual_time() {
    let inspector = Inspector::new(config());
    let (tx, body) = chan();
    let body = Arc::new(Mutex::new(Some(body)));
    let service = ServiceBuilder::new()
        .layer(inspector.layer())
        .service(service_fn(move |_req: Request<InspectBody<Script>>| {
            let body = body.lock().unwrap().take().unwrap();
            async move {
                tokio::time::sleep(Duration::from_millis(250)).await;
                Ok::<_, io::Error>(Response::new(body))
            }
        }));
    let producer = tokio::spawn(async move {
        send_data(&tx, b"a");
        tokio::time::sleep(Duration::from_secs(10)).await;
        send_data(&tx, b"b");
    });
    let start = tokio::time::Instant::now();
    let response = service
        .oneshot(request(Method::POST, "/api/slow", Script::empty()))
        .await
        .unwrap();
    let mut body = response.into_body();
    assert_eq!(next_data(&mut body).await.unwrap(), "a");
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "first frame did not wait"
    );
    assert!(inspector.entries().is_empty(), "recorded only at the end");
    assert_eq!(read_all(body).await, "b");
    producer.await.unwrap();
    let e = only(&inspector);
    let head = e.response_after_us.unwrap();
    assert!((250_000..=260_000).contains(&head), "{head}");
    assert!(
        (10_000_000..=10_050_000).contains(&e.duration_us),
        "{}",
        e.duration_us
    );
    assert_eq!(e.response_body.bytes(), "ab");
}

// ---------------------------------------------------------------------------------------------
// Streaming (I2, I5)
// ---------------------------------------------------------------------------------------------

// covers I2: a polling GET's frames reach the client as they are produced; nothing is held,
// nothing recorded.
#[tokio::test(start_paused = true)]
async fn polling_get_frames_arrive_before_the_body_ends() {
    let inspector = Inspector::new(config());
    let (tx, body) = chan();
    let body = Arc::new(Mutex::new(Some(body)));
    let service = ServiceBuilder::new()
        .layer(inspector.layer())
        .service(service_fn(move |_req: Request<InspectBody<Script>>| {
            let body = body.lock().unwrap().take().unwrap();
            async move { Ok::<_, io::Error>(Response::new(body)) }
        }));
    send_data(&tx, b"first");
    let response = service
        .oneshot(request(
            Method::GET,
            "/api/monitor/aks?cluster=a",
            Script::empty(),
        ))
        .await
        .unwrap();
    assert!(response.headers().contains_key(REQUEST_ID_HEADER));
    let mut body = response.into_body();
    let start = tokio::time::Instant::now();
    assert_eq!(next_data(&mut body).await.unwrap(), "first");
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(inspector.stats().retained_bytes, 0);
    let producer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(3600)).await;
        send_data(&tx, b"second");
    });
    assert_eq!(next_data(&mut body).await.unwrap(), "second");
    assert!(next_data(&mut body).await.is_none());
    producer.await.unwrap();
    assert!(inspector.entries().is_empty());
    let stats = inspector.stats();
    assert_eq!((stats.passed_through, stats.captured), (1, 0));
    assert_eq!(stats.peak_retained_bytes, 0);
}

// covers I5: a captured POST echoed frame by frame: each request frame reaches the client
// before the next is produced; the entry appears only at the end, with both bodies.
#[tokio::test(start_paused = true)]
async fn captured_echo_is_teed_while_streaming() {
    let inspector = Inspector::new(config().body_limit(8));
    let service = ServiceBuilder::new()
        .layer(inspector.layer())
        .service(service_fn(|req: Request<InspectBody<Chan>>| async move {
            // The request body itself is the response body: a true streaming echo.
            Ok::<_, io::Error>(Response::new(req.into_body()))
        }));
    let (tx, body) = chan();
    let response = service
        .oneshot(request(Method::POST, "/api/echo", body))
        .await
        .unwrap();
    let mut body = response.into_body();
    for chunk in [&b"frame1"[..], b"frame2", b"frame3"] {
        tx.send(Ok(Frame::data(Bytes::from_static(chunk)))).unwrap();
        let got = tokio::time::timeout(Duration::from_secs(60), next_data(&mut body))
            .await
            .expect("the frame was forwarded without waiting for the end");
        assert_eq!(got.unwrap(), chunk);
        assert!(inspector.entries().is_empty());
        let stats = inspector.stats();
        assert!(stats.in_flight_bytes > 0);
        assert!(
            stats.in_flight_bytes <= 2 * 8 + 2 * 16 * 1024 + 2048,
            "{}",
            stats.in_flight_bytes
        );
    }
    drop(tx);
    assert!(next_data(&mut body).await.is_none());
    let e = only(&inspector);
    assert_eq!(e.request_body.bytes(), "frame1fr");
    assert_eq!(e.response_body.bytes(), "frame1fr");
    for b in [&e.request_body, &e.response_body] {
        assert_eq!(b.total_bytes(), 18);
        assert!(b.truncated() && b.complete());
    }
    assert_accounting(&inspector);
}

// ---------------------------------------------------------------------------------------------
// Memory
// ---------------------------------------------------------------------------------------------

// covers I1, X4 (issue #23): across filling and evicting a ring that spans two chunks, the
// ring keeps exactly the newest `capacity` exchanges (the right ones), its byte counters equal
// the entries' retained bytes, each entry stays under the documented per-exchange bound, and
// `clear()` frees everything.
#[tokio::test]
async fn ring_bytes_match_entries_through_fill_and_eviction() {
    let capacity = 70;
    let body_limit = 128;
    let header_limit = 256;
    let inspector = Inspector::new(
        config()
            .capacity(capacity)
            .body_limit(body_limit)
            .header_limit(header_limit),
    );
    for i in 0..200usize {
        let mut req = request(
            Method::POST,
            &format!("/api/n/{i}?page={i}"),
            Script::framed(&vec![b'q'; i * 3 % 400], 17),
        );
        for h in 0..(i % 30) {
            req.headers_mut().append(
                HeaderName::from_bytes(format!("x-h{h}").as_bytes()).unwrap(),
                HeaderValue::from_str(&"v".repeat(h)).unwrap(),
            );
        }
        roundtrip(
            &inspector,
            req,
            Script::framed(&vec![b'r'; i * 7 % 500], 33),
        )
        .await;
        let stats = inspector.stats();
        let n = i + 1;
        assert_eq!(stats.captured, n as u64);
        assert_eq!(stats.evicted, n.saturating_sub(capacity) as u64);
        assert_eq!(stats.ring_len, n.min(capacity));
        assert_accounting(&inspector);
        let entries = inspector.entries();
        let ids: Vec<u64> = entries.iter().map(|e| e.id).collect();
        let want: Vec<u64> = (n.saturating_sub(capacity) + 1..=n)
            .rev()
            .map(|x| x as u64)
            .collect();
        assert_eq!(ids, want, "the newest exchanges, newest first");
        for e in &entries {
            let k = (e.id - 1) as usize;
            assert_eq!(e.path, format!("/api/n/{k}"));
            assert_eq!(e.query.as_deref(), Some(format!("page={k}").as_str()));
            assert_eq!(e.request_body.total_bytes(), (k * 3 % 400) as u64);
            assert_eq!(e.response_body.total_bytes(), (k * 7 % 500) as u64);
            let headers = e.request_headers.len() + e.response_headers.len();
            let bound = 2 * body_limit + 2 * header_limit + 48 * headers + 400 + 64;
            assert!(
                e.retained_bytes() <= bound,
                "entry {k}: {} > {bound}",
                e.retained_bytes()
            );
        }
    }
    let stats = inspector.stats();
    assert_eq!(
        stats.ring_slot_bytes,
        2 * 1024,
        "two chunks of 64 slots (as documented)"
    );
    inspector.clear();
    let stats = inspector.stats();
    assert!(inspector.entries().is_empty());
    assert_eq!((stats.ring_len, stats.ring_bytes), (0, 0));
    assert_eq!(
        stats.retained_bytes,
        2 * 1024,
        "clear keeps only the slots: {stats:?}"
    );
    assert_eq!(stats.captured, 200, "clear keeps the counters");
}

// covers X4: many tasks on several threads capture at once while readers read: no entry is
// lost, mixed up or duplicated, ids are unique and newest first, the counters agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_capture_is_consistent() {
    let capacity = 100;
    let tasks = 16;
    let per_task = 100;
    let inspector = Inspector::new(config().capacity(capacity).body_limit(64));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut readers = Vec::new();
    for _ in 0..2 {
        let inspector = inspector.clone();
        let stop = Arc::clone(&stop);
        readers.push(tokio::spawn(async move {
            let mut reads = 0;
            let mut last_peak = 0;
            while !stop.load(Ordering::SeqCst) {
                let entries = inspector.entries();
                assert!(entries.len() <= capacity);
                let mut ids: Vec<u64> = entries.iter().map(|e| e.id).collect();
                ids.sort_unstable();
                ids.dedup();
                assert_eq!(ids.len(), entries.len(), "an entry listed twice");
                for e in &entries {
                    let tag = e.path.trim_start_matches("/api/t/");
                    assert_eq!(e.request_id, format!("rid-{tag}"));
                    assert_eq!(e.request_body.text(), format!("req-{tag}"));
                    assert_eq!(e.response_body.text(), format!("res-{tag}"));
                }
                let stats = inspector.stats();
                assert!(stats.ring_len <= capacity);
                assert!(stats.peak_retained_bytes >= last_peak, "the peak went down");
                last_peak = stats.peak_retained_bytes;
                assert!(
                    stats.peak_retained_bytes >= stats.retained_bytes,
                    "peak below the current bytes: {stats:?}"
                );
                reads += 1;
                tokio::task::yield_now().await;
            }
            reads
        }));
    }
    let mut writers = Vec::new();
    for t in 0..tasks {
        let inspector = inspector.clone();
        writers.push(tokio::spawn(async move {
            let service = ServiceBuilder::new()
                .layer(inspector.layer())
                .service(service_fn(|req: Request<InspectBody<Script>>| async move {
                    let tag = req.uri().path().trim_start_matches("/api/t/").to_string();
                    tokio::task::yield_now().await;
                    read_all(req.into_body()).await;
                    Ok::<_, io::Error>(Response::new(Script::data(["res-".to_string(), tag])))
                }));
            for i in 0..per_task {
                let tag = format!("{t}-{i}");
                let req = Request::builder()
                    .method(Method::POST)
                    .uri(format!("/api/t/{tag}"))
                    .header(REQUEST_ID_HEADER, format!("rid-{tag}"))
                    .body(Script::data(["req-".to_string(), tag.clone()]))
                    .unwrap();
                let response = service.clone().oneshot(req).await.unwrap();
                assert_eq!(
                    response.headers()[REQUEST_ID_HEADER],
                    format!("rid-{tag}").as_str()
                );
                let body = read_all(response.into_body()).await;
                assert_eq!(body, format!("res-{tag}"));
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    stop.store(true, Ordering::SeqCst);
    for r in readers {
        assert!(r.await.unwrap() > 0);
    }
    let total = (tasks * per_task) as u64;
    let stats = inspector.stats();
    assert_eq!(stats.captured, total);
    assert_eq!(stats.evicted, total - capacity as u64);
    assert_eq!(stats.ring_len, capacity);
    let entries = inspector.entries();
    assert_eq!(entries.len(), capacity);
    assert_eq!(
        stats.ring_bytes,
        entries.iter().map(|e| e.retained_bytes()).sum::<usize>()
    );
    assert_eq!(stats.in_flight_bytes, 0);
    assert_eq!(
        stats.retained_bytes,
        stats.ring_bytes + stats.ring_slot_bytes + stats.spare_bytes
    );
    let mut ids: Vec<u64> = entries.iter().map(|e| e.id).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), capacity);
    assert!(ids.iter().all(|&id| (1..=total).contains(&id)));
}

// covers I5, X4: the layer copies what it keeps (the producers' buffers are freed once the
// exchange is over, while the entry lives on), and once the inspector, its layer and every
// service are dropped nothing of the inner service is kept alive, even with a response body
// that outlived the inspector.
#[tokio::test]
async fn no_producer_buffer_or_service_outlives_its_use() {
    let live = Arc::new(AtomicUsize::new(0));
    let inspector = Inspector::new(config().body_limit(1024));
    let token = Arc::new(());
    let token2 = Arc::clone(&token);
    let live2 = Arc::clone(&live);
    let service = ServiceBuilder::new()
        .layer(inspector.layer())
        .service(service_fn(move |req: Request<InspectBody<Script>>| {
            let _held = Arc::clone(&token2);
            let live = Arc::clone(&live2);
            async move {
                read_all(req.into_body()).await;
                Ok::<_, io::Error>(Response::new(Script::data([
                    tracked(b"response part one ", &live),
                    tracked(b"and two", &live),
                ])))
            }
        }));
    let req = request(
        Method::POST,
        "/api/x",
        Script::data([tracked(b"request ", &live), tracked(b"body", &live)]),
    );
    let response = service.clone().oneshot(req).await.unwrap();
    assert_eq!(
        read_all(response.into_body()).await,
        "response part one and two"
    );
    let e = only(&inspector);
    assert_eq!(e.request_body.bytes(), "request body");
    assert_eq!(e.response_body.bytes(), "response part one and two");
    assert_eq!(
        live.load(Ordering::SeqCst),
        0,
        "the ring keeps a producer's buffer alive instead of a copy"
    );

    // A response body still being read when everything else is dropped.
    let response = service
        .clone()
        .oneshot(request(Method::POST, "/api/late", Script::empty()))
        .await
        .unwrap();
    drop(service);
    drop(e);
    drop(inspector);
    let mut body = response.into_body();
    assert_eq!(next_data(&mut body).await.unwrap(), "response part one ");
    assert_eq!(next_data(&mut body).await.unwrap(), "and two");
    assert!(next_data(&mut body).await.is_none());
    drop(body);
    assert_eq!(live.load(Ordering::SeqCst), 0);
    assert_eq!(Arc::strong_count(&token), 1, "the inner service leaked");
}

// covers X5: capacity 1 and body limit 0 keep sizes only and the newest exchange.
#[tokio::test]
async fn capacity_one_and_limit_zero_keep_sizes_only() {
    let inspector = Inspector::new(config().capacity(0).body_limit(0));
    assert_eq!(inspector.capacity(), 1);
    for i in 0..5u64 {
        roundtrip(
            &inspector,
            request(Method::POST, &format!("/api/{i}"), Script::data(["12345"])),
            Script::data(["abc"]),
        )
        .await;
        let e = only(&inspector);
        assert_eq!(e.path, format!("/api/{i}"));
        assert_eq!(e.id, i + 1);
        assert_eq!(
            (
                e.request_body.captured_bytes(),
                e.request_body.total_bytes()
            ),
            (0, 5)
        );
        assert_eq!(
            (
                e.response_body.captured_bytes(),
                e.response_body.total_bytes()
            ),
            (0, 3)
        );
        assert!(e.request_body.truncated() && e.response_body.truncated());
        assert_accounting(&inspector);
    }
    assert_eq!(inspector.stats().evicted, 4);
    assert_eq!(inspector.stats().truncated_bodies, 10);
}

// covers I1 (Entry::id: "later entries have larger ids"; the ring is newest first): an exchange
// that started first but ended last is the newest entry, and has the larger id.
#[tokio::test]
async fn ring_order_and_ids_agree_when_exchanges_overlap() {
    let inspector = Inspector::new(config());
    let (tx, slow_body) = chan();
    let slow_body = Arc::new(Mutex::new(Some(slow_body)));
    let service = ServiceBuilder::new()
        .layer(inspector.layer())
        .service(service_fn(move |req: Request<InspectBody<Script>>| {
            let slow = if req.uri().path() == "/api/slow" {
                slow_body.lock().unwrap().take()
            } else {
                None
            };
            async move {
                // Both handlers read their request bodies before answering.
                read_all(req.into_body()).await;
                Ok::<_, io::Error>(match slow {
                    Some(body) => Response::new(http_body_util::Either::Left(body)),
                    None => Response::new(http_body_util::Either::Right(Script::data(["fast"]))),
                })
            }
        }));
    // A starts, B starts and ends, then A ends.
    let a = service
        .clone()
        .oneshot(request(Method::POST, "/api/slow", Script::data(["a"])))
        .await
        .unwrap();
    let b = service
        .clone()
        .oneshot(request(Method::POST, "/api/fast", Script::data(["b"])))
        .await
        .unwrap();
    read_all(b.into_body()).await;
    send_data(&tx, b"slow");
    drop(tx);
    read_all(a.into_body()).await;
    let entries = inspector.entries();
    let listed: Vec<_> = entries.iter().map(|e| (e.path.as_str(), e.id)).collect();
    assert!(
        entries.windows(2).all(|w| w[0].id > w[1].id),
        "newest first, but ids not decreasing: {listed:?}"
    );
}

// covers I1 (Entry::id: "later entries have larger ids"), X4: with captures ending at the same
// time on several threads, `entries()` (newest first) must still list decreasing ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_entries_are_newest_first_by_id() {
    // The window is small: try up to 30 rounds of 8 threads × 500 captures.
    for round in 0..30 {
        let inspector = Inspector::new(config().capacity(10_000).body_limit(16));
        let mut writers = Vec::new();
        for t in 0..8 {
            let inspector = inspector.clone();
            writers.push(tokio::spawn(async move {
                let service = ServiceBuilder::new()
                    .layer(inspector.layer())
                    .service(service_fn(|req: Request<InspectBody<Script>>| async move {
                        tokio::task::yield_now().await;
                        read_all(req.into_body()).await;
                        Ok::<_, io::Error>(Response::new(Script::data(["ok"])))
                    }));
                for i in 0..500 {
                    let response = service
                        .clone()
                        .oneshot(request(
                            Method::POST,
                            &format!("/api/t/{t}-{i}"),
                            Script::data(["x"]),
                        ))
                        .await
                        .unwrap();
                    read_all(response.into_body()).await;
                }
            }));
        }
        for w in writers {
            w.await.unwrap();
        }
        let entries = inspector.entries();
        assert_eq!(entries.len(), 4000);
        let out_of_order: Vec<(u64, u64)> = entries
            .windows(2)
            .filter(|w| w[0].id <= w[1].id)
            .map(|w| (w[0].id, w[1].id))
            .collect();
        assert!(
            out_of_order.is_empty(),
            "round {round}: {} adjacent pairs out of id order, e.g. {:?}",
            out_of_order.len(),
            &out_of_order[..out_of_order.len().min(5)]
        );
    }
}

/// The documented header rule (I5, I6): a default name, a configured one, a secret word
/// anywhere in the lowercase name, or a secret segment between `-`, `_` or `.`.
fn documented_secret_header(name: &str, configured: &[&str]) -> bool {
    let name = name.to_ascii_lowercase();
    request_inspector::DEFAULT_REDACTED_HEADERS.contains(&name.as_str())
        || configured.contains(&name.as_str())
        || request_inspector::REDACTED_NAME_WORDS
            .iter()
            .any(|w| name.contains(w))
        || name
            .split(['-', '_', '.'])
            .any(|s| request_inspector::REDACTED_NAME_SEGMENTS.contains(&s))
}

// covers I5, I6: for every header name, common or not, the entry redacts exactly what the
// guide's rule and `InspectorConfig::is_redacted` say, in requests and responses (the rewrite's
// fast path for common names must agree with the rule).
#[tokio::test]
async fn header_redaction_follows_the_documented_rule_for_every_name() {
    let names = [
        "accept",
        "accept-encoding",
        "accept-language",
        "access-control-allow-credentials",
        "access-control-allow-headers",
        "access-control-request-headers",
        "age",
        "authorization",
        "cache-control",
        "connection",
        "content-length",
        "content-type",
        "cookie",
        "etag",
        "forwarded",
        "host",
        "if-none-match",
        "keep-alive",
        "location",
        "origin",
        "proxy-authorization",
        "proxy-authenticate",
        "referer",
        "sec-websocket-key",
        "sec-websocket-accept",
        "sec-fetch-mode",
        "server",
        "set-cookie",
        "traceparent",
        "user-agent",
        "vary",
        "www-authenticate",
        "x-api-key",
        "x-apikey",
        "x-auth",
        "x-auth-token",
        "x-author",
        "x-authorization",
        "x-client-secret",
        "x-csrf-token",
        "x-forwarded-for",
        "x-goog-signature",
        "x-hub-signature-256",
        "x-keystone",
        "x-ms-sas",
        "x-ms-custom-sas",
        "x-sasquatch",
        "x-sig",
        "x-sig.v2",
        "x_auth_mode",
        "x-password-hint",
        "x-upstream-credential",
        "x-amz-security-token",
        "x-amz-credential",
        "ocp-apim-subscription-key",
        "x-ms-client-request-id",
        "x-session",
        "sig",
        "auth",
        "sas",
        "token",
        "x-token",
        "x-tokenized",
        "x-secret-santa",
    ];
    let inspector = Inspector::new(config().redact_header("X-Session").unwrap());
    let mut req = request(Method::POST, "/api/x", Script::empty());
    let mut answer = Response::new(Script::empty());
    for name in names {
        let n = HeaderName::from_static(name);
        let value = HeaderValue::from_str(&format!("value-of-{name}")).unwrap();
        req.headers_mut().append(n.clone(), value.clone());
        answer.headers_mut().append(n, value);
    }
    let answer = Arc::new(Mutex::new(Some(answer)));
    let service = ServiceBuilder::new()
        .layer(inspector.layer())
        .service(service_fn(move |_req: Request<InspectBody<Script>>| {
            let answer = answer.lock().unwrap().take().unwrap();
            async move { Ok::<_, io::Error>(answer) }
        }));
    let response = service.oneshot(req).await.unwrap();
    read_all(response.into_body()).await;
    let e = only(&inspector);
    let mut wrong = Vec::new();
    for (side, list) in [
        ("request", &e.request_headers),
        ("response", &e.response_headers),
    ] {
        for name in names {
            let want = documented_secret_header(name, &["x-session"]);
            let predicate = inspector
                .config()
                .is_redacted(&HeaderName::from_static(name));
            let recorded = list
                .iter()
                .find(|h| h.name == name)
                .unwrap_or_else(|| panic!("{side} header {name} not recorded"));
            let redacted = recorded.value == REDACTED;
            if !redacted {
                assert_eq!(recorded.value, format!("value-of-{name}"));
            }
            if redacted != want || predicate != want {
                wrong.push(format!(
                    "{side} {name}: documented {want}, is_redacted {predicate}, recorded {redacted}"
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

/// Decode a query-parameter name once, as a server does: `+` is a space, `%XX` a byte, any
/// other `%` kept.
fn decode_name(raw: &str) -> String {
    let bytes = raw.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len()
                && bytes[i + 1].is_ascii_hexdigit()
                && bytes[i + 2].is_ascii_hexdigit() =>
            {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
                out.push(u8::from_str_radix(hex, 16).unwrap());
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn documented_secret_param(raw: &str) -> bool {
    let name = decode_name(raw).to_lowercase();
    request_inspector::REDACTED_QUERY_PARAMS.contains(&name.as_str())
        || request_inspector::REDACTED_NAME_WORDS
            .iter()
            .any(|w| name.contains(w))
}

// covers I6: every query parameter is redacted exactly when the guide's rule says so (names
// percent-decoded once, `+` a space, case-insensitive), and `is_redacted_query_param` agrees.
#[tokio::test]
async fn query_redaction_follows_the_documented_rule_for_every_name() {
    let names = [
        "sig",
        "SIG",
        "Sig",
        "%73ig",
        "%53IG",
        "s%69g",
        "%2573ig",
        "%ZZsig",
        "access_token",
        "access%5Ftoken",
        "id_token",
        "refresh_token",
        "api_key",
        "apikey",
        "ApiKey",
        "password",
        "passwd",
        "secret",
        "client_secret",
        "code",
        "codes",
        "state",
        "assertion",
        "auth",
        "author",
        "sas",
        "se",
        "st",
        "sp",
        "sr",
        "sv",
        "spr",
        "sip",
        "ss",
        "srt",
        "skoid",
        "sktid",
        "skt",
        "ske",
        "signature",
        "X-Amz-Credential",
        "X-Amz-Security-Token",
        "X-Goog-Signature",
        "key",
        "keyword",
        "monkey",
        "limit",
        "page",
        "stx",
        "sigma",
        "my+token",
        "my%20token",
        "token%3Dx",
        "%74%6F%6B%65%6E",
        "TOKEN",
        "q",
        "sort",
    ];
    let query: Vec<String> = names.iter().map(|n| format!("{n}=v")).collect();
    let inspector = Inspector::new(config().header_limit(1024 * 1024));
    roundtrip(
        &inspector,
        request(
            Method::POST,
            &format!("/api/x?{}", query.join("&")),
            Script::empty(),
        ),
        Script::empty(),
    )
    .await;
    let e = only(&inspector);
    let recorded = e.query.clone().expect("a query");
    let pairs: Vec<&str> = recorded.split('&').collect();
    assert_eq!(pairs.len(), names.len(), "{recorded}");
    let mut wrong = Vec::new();
    for (name, pair) in names.iter().zip(pairs) {
        let want = documented_secret_param(name);
        let got = match pair {
            p if p == format!("{name}=[redacted]") => true,
            p if p == format!("{name}=v") => false,
            other => {
                wrong.push(format!("{name}: recorded as {other}"));
                continue;
            }
        };
        let predicate = inspector.config().is_redacted_query_param(name);
        if got != want || predicate != want {
            wrong.push(format!(
                "{name}: documented {want}, recorded {got}, is_redacted_query_param {predicate}"
            ));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

// ---------------------------------------------------------------------------------------------
// Retained bytes against a counting allocator, for the inputs tests/memory.rs does not try
// ---------------------------------------------------------------------------------------------

/// Makes one scenario's request body.
type MakeBody = Box<dyn Fn() -> Script>;

const PROBE_ENV: &str = "BLACKBOX_CAPTURE_ALLOC_PROBE";

// covers X4 (issue #23: "memory accounting counts what an entry really holds"): after exchanges
// with lying size hints, 1-byte and straddling frames, trailers, every outcome and a header cut,
// the bytes the allocator says are live equal `InspectorStats::retained_bytes`, and a 10-byte
// body announced as 1 MiB does not keep a buffer sized from the announcement.
#[test]
fn retained_bytes_are_exact_for_lying_hints_odd_framing_and_every_outcome() {
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "alloc_probe", "--test-threads=1", "--nocapture"])
        .env(PROBE_ENV, "1")
        .output()
        .expect("run the probe");
    assert!(
        output.status.success(),
        "probe failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("1 passed"),
        "the probe did not run"
    );
}

fn live(region: &stats_alloc::Region<'_, std::alloc::System>) -> isize {
    let change = region.change();
    change.bytes_allocated as isize - change.bytes_deallocated as isize
}

/// Only meaningful alone in its process; see the test above.
#[test]
fn alloc_probe() {
    if std::env::var_os(PROBE_ENV).is_none() {
        return;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let inspector = Inspector::new(config().capacity(20).body_limit(1024));
    let service = ServiceBuilder::new()
        .layer(inspector.layer())
        .service(service_fn(|req: Request<InspectBody<Script>>| async move {
            let path = req.uri().path().to_string();
            let hint = req.body().size_hint();
            let mut body = req.into_body();
            // Read the request like the scenario wants.
            if path != "/unread" {
                while let Some(frame) = body.frame().await {
                    frame?;
                }
            }
            drop(body);
            let big: Vec<Bytes> = (0..3000).map(|_| Bytes::from_static(b"y")).collect();
            let answer = match path.as_str() {
                "/hint-big" => Script::data(["abcdefghij"]).hint(SizeHint::with_exact(1 << 20)),
                "/hint-max" => Script::data(["abcdefghij"]).hint(SizeHint::with_exact(u64::MAX)),
                "/hint-small" => Script::data(big).hint(SizeHint::with_exact(10)),
                "/one-byte" => Script::data(big),
                "/straddle" => Script::framed(&[b's'; 2000], 7),
                "/trailers" => {
                    let mut t = HeaderMap::new();
                    t.insert("x-sum", HeaderValue::from_static("1"));
                    Script::data(["t"]).trailers(t)
                }
                "/body-error" => Script::data(["part"]).error(),
                "/service-error" => return Err(io::Error::other("no")),
                _ => Script::data(["ok"]),
            };
            let _ = hint;
            let mut response = Response::new(answer);
            if path == "/many-headers" {
                for i in 0..3000 {
                    response.headers_mut().append(
                        HeaderName::from_bytes(format!("x-h{i}").as_bytes()).unwrap(),
                        HeaderValue::from_static("some value"),
                    );
                }
            }
            Ok(response)
        }));
    runtime.block_on(async {
        let run = |path: &'static str, body: Script| {
            let service = service.clone();
            async move {
                if let Ok(response) = service.oneshot(request(Method::POST, path, body)).await {
                    let mut body = response.into_body();
                    if path == "/aborted" {
                        let _ = body.frame().await;
                    } else {
                        while let Some(frame) = body.frame().await {
                            if frame.is_err() {
                                break;
                            }
                        }
                    }
                }
            }
        };
        // Warm-up: first-use initialisation is not the ring.
        run("/warm", Script::data(["w"])).await;
        inspector.clear();
        let slots = inspector.stats().ring_slot_bytes;
        assert_eq!(
            inspector.stats().retained_bytes,
            slots,
            "clear keeps only the slots"
        );

        let one_byte = || {
            Script::data(
                (0..3000)
                    .map(|_| Bytes::from_static(b"x"))
                    .collect::<Vec<_>>(),
            )
        };
        let scenarios: Vec<(&'static str, MakeBody)> = vec![
            (
                "/hint-big",
                Box::new(|| Script::data(["0123456789"]).hint(SizeHint::with_exact(1 << 20))),
            ),
            (
                "/hint-max",
                Box::new(|| Script::data(["0123456789"]).hint(SizeHint::with_exact(u64::MAX))),
            ),
            (
                "/hint-small",
                Box::new(move || one_byte().hint(SizeHint::with_exact(10))),
            ),
            ("/one-byte", Box::new(one_byte)),
            ("/straddle", Box::new(|| Script::framed(&[b'r'; 2000], 7))),
            (
                "/trailers",
                Box::new(|| {
                    let mut t = HeaderMap::new();
                    t.insert("x-sum", HeaderValue::from_static("1"));
                    Script::data(["t"]).trailers(t)
                }),
            ),
            ("/body-error", Box::new(|| Script::data(["q"]))),
            ("/service-error", Box::new(|| Script::data(["q"]))),
            ("/aborted", Box::new(|| Script::data(["q"]))),
            ("/unread", Box::new(|| Script::data(["never read"]))),
            ("/many-headers", Box::new(Script::empty)),
        ];
        // Everything the test itself keeps is allocated before measuring. Each step is measured
        // on its own (a new region per step): the harness's other thread may allocate once at a
        // random moment (its channel's waiter), so a step counts as wrong only when it is wrong
        // in at least two rounds.
        let mut measured: Vec<(usize, &'static str, isize, isize)> = Vec::with_capacity(128);
        let mut kept = 0;
        // Capacity 20, 11 scenarios per round: the ring evicts from round 1 on; it is cleared
        // after rounds 2 and 4.
        for round in 0..5 {
            for (path, make) in &scenarios {
                let before = inspector.stats().retained_bytes as isize;
                let region = stats_alloc::Region::new(GLOBAL);
                run(path, make()).await;
                let live = live(&region);
                let stats = inspector.stats();
                assert_eq!(stats.in_flight_bytes, 0, "{path}");
                measured.push((round, path, live, stats.retained_bytes as isize - before));
                if *path == "/hint-big" {
                    kept = inspector.entries()[0].retained_bytes();
                }
            }
            if round % 2 == 1 || round == 0 {
                continue;
            }
            let before = inspector.stats().retained_bytes as isize;
            let region = stats_alloc::Region::new(GLOBAL);
            inspector.clear();
            let after = inspector.stats().retained_bytes;
            measured.push((round, "clear()", live(&region), after as isize - before));
            assert_eq!(
                after,
                inspector.stats().ring_slot_bytes,
                "clear keeps only the slots"
            );
        }
        let mut failures: Vec<String> = Vec::new();
        for (_, path, _, _) in measured.iter().filter(|m| m.0 == 2) {
            let wrong: Vec<_> = measured
                .iter()
                .filter(|m| m.1 == *path && m.2 != m.3)
                .collect();
            if wrong.len() >= 2 {
                failures.push(format!(
                    "{path}: (round, allocator's live-byte change, retained_bytes change) {wrong:?}"
                ));
            }
        }
        assert!(failures.is_empty(), "{failures:#?}");
        assert!(
            kept < 2048,
            "a 10-byte exchange announced as 1 MiB keeps {kept} bytes"
        );
    });
}

// covers I1, I5: a server stops polling once `is_end_stream()` says the body is over (hyper
// does) and drops it: the exchange is complete, not aborted.
#[tokio::test]
async fn body_dropped_once_it_says_end_of_stream_is_complete() {
    let inspector = Inspector::new(config());
    let service = ServiceBuilder::new()
        .layer(inspector.layer())
        .service(service_fn(|req: Request<InspectBody<Script>>| async move {
            let mut body = req.into_body();
            let mut got = Vec::new();
            while !body.is_end_stream() {
                got.extend_from_slice(&next_data(&mut body).await.unwrap());
            }
            assert_eq!(got, b"abcdef");
            drop(body);
            Ok::<_, io::Error>(Response::new(Script::data(["one", "two"])))
        }));
    let response = service
        .oneshot(request(
            Method::POST,
            "/api/x",
            Script::data(["abc", "def"]),
        ))
        .await
        .unwrap();
    let mut body = response.into_body();
    let mut got = Vec::new();
    while !body.is_end_stream() {
        got.extend_from_slice(&next_data(&mut body).await.unwrap());
    }
    assert_eq!(got, b"onetwo");
    drop(body);
    let e = only(&inspector);
    assert_eq!(e.outcome, Outcome::Complete);
    assert!(e.response_body.complete(), "{:?}", e.response_body);
    assert!(e.request_body.complete(), "{:?}", e.request_body);
    assert_eq!(e.response_body.bytes(), "onetwo");
    assert_eq!(e.request_body.bytes(), "abcdef");
    assert_accounting(&inspector);
}

// covers I5: binary bodies and a limit that cuts a UTF-8 character are kept byte-exact;
// `text` is the lossy view, the same in the JSON.
#[tokio::test]
async fn binary_bodies_are_kept_byte_exact() {
    let inspector = Inspector::new(config().body_limit(5));
    roundtrip(
        &inspector,
        request(
            Method::POST,
            "/api/x",
            Script::data([&b"\xff\xfe"[..], b"\x00a", b"bc"]),
        ),
        Script::data(["caf\u{e9}\u{e9}"]),
    )
    .await;
    let e = only(&inspector);
    assert_eq!(&e.request_body.bytes()[..], b"\xff\xfe\x00ab");
    assert_eq!(e.request_body.text(), "\u{fffd}\u{fffd}\u{0}ab");
    assert_eq!(&e.response_body.bytes()[..], b"caf\xc3\xa9");
    // Six bytes: the limit falls inside the second é.
    assert_eq!(e.response_body.total_bytes(), 7);
    assert!(e.response_body.truncated());
    assert_json_matches_entries(&inspector).await;
}

// covers I1: the response carries exactly one x-request-id, the layer's, even when the handler
// set several; the recorded request headers carry the id the handler saw, not a rejected one.
#[tokio::test]
async fn one_request_id_on_the_response_and_in_the_record() {
    let inspector = Inspector::new(config());
    let service = ServiceBuilder::new()
        .layer(inspector.layer())
        .service(service_fn(|req: Request<InspectBody<Script>>| async move {
            let seen = req.headers()[REQUEST_ID_HEADER].clone();
            let mut response = Response::new(Script::data(["ok"]));
            response
                .headers_mut()
                .append(REQUEST_ID_HEADER, HeaderValue::from_static("h1"));
            response
                .headers_mut()
                .append(REQUEST_ID_HEADER, HeaderValue::from_static("h2"));
            response.headers_mut().insert("x-seen", seen);
            Ok::<_, io::Error>(response)
        }));
    for incoming in [vec![], vec!["bad id"], vec!["dup", "dup"], vec!["good-id"]] {
        inspector.clear();
        let mut req = request(Method::POST, "/api/x", Script::empty());
        for v in &incoming {
            req.headers_mut()
                .append(REQUEST_ID_HEADER, HeaderValue::from_str(v).unwrap());
        }
        let response = service.clone().oneshot(req).await.unwrap();
        let ids: Vec<_> = response
            .headers()
            .get_all(REQUEST_ID_HEADER)
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect();
        let seen = response.headers()["x-seen"].to_str().unwrap().to_string();
        read_all(response.into_body()).await;
        assert_eq!(ids, std::slice::from_ref(&seen), "{incoming:?}");
        let e = only(&inspector);
        assert_eq!(e.request_id, seen);
        for (side, list) in [
            ("request", &e.request_headers),
            ("response", &e.response_headers),
        ] {
            let recorded: Vec<_> = list
                .iter()
                .filter(|h| h.name == "x-request-id")
                .map(|h| h.value.as_str())
                .collect();
            assert!(
                recorded.iter().all(|v| *v == seen),
                "{incoming:?}: {side} headers record x-request-id {recorded:?}, the exchange's id is {seen}"
            );
        }
    }
}

// covers I1, X4: `clear()` while a capture is in flight: the capture still lands once, and the
// counters stay exact.
#[tokio::test]
async fn clear_during_an_in_flight_capture_keeps_the_counts_exact() {
    let inspector = Inspector::new(config().capacity(2));
    let (tx, slow) = chan();
    let slow = Arc::new(Mutex::new(Some(slow)));
    let service = ServiceBuilder::new()
        .layer(inspector.layer())
        .service(service_fn(move |_req: Request<InspectBody<Script>>| {
            let body = slow.lock().unwrap().take();
            async move {
                Ok::<_, io::Error>(match body {
                    Some(body) => Response::new(http_body_util::Either::Left(body)),
                    None => Response::new(http_body_util::Either::Right(Script::data(["fast"]))),
                })
            }
        }));
    let slow_response = service
        .clone()
        .oneshot(request(Method::POST, "/api/slow", Script::data(["s"])))
        .await
        .unwrap();
    let mut slow_body = slow_response.into_body();
    send_data(&tx, b"half");
    assert_eq!(next_data(&mut slow_body).await.unwrap(), "half");
    for _ in 0..3 {
        let r = service
            .clone()
            .oneshot(request(Method::POST, "/api/fast", Script::empty()))
            .await
            .unwrap();
        read_all(r.into_body()).await;
    }
    assert!(inspector.stats().in_flight_bytes > 0);
    inspector.clear();
    let stats = inspector.stats();
    assert_eq!((stats.ring_len, stats.ring_bytes), (0, 0));
    assert!(stats.in_flight_bytes > 0, "the slow capture is still held");
    assert_eq!(
        stats.retained_bytes,
        stats.in_flight_bytes + stats.ring_slot_bytes
    );
    send_data(&tx, b"-end");
    drop(tx);
    assert_eq!(next_data(&mut slow_body).await.unwrap(), "-end");
    assert!(next_data(&mut slow_body).await.is_none());
    let e = only(&inspector);
    assert_eq!(e.path, "/api/slow");
    assert_eq!(e.response_body.bytes(), "half-end");
    assert_accounting(&inspector);
    assert_eq!(inspector.stats().captured, 4);
}

fn big_owner(ext: &http::Extensions) -> Option<String> {
    ext.get::<Account>().map(|a| a.0.clone())
}

// covers I1, I6 (issue #23's compact record: one text arena with lengths): fields far longer
// than 64 KiB and 40 000 recorded headers in one entry come back exactly.
#[tokio::test]
async fn huge_fields_and_header_counts_survive_the_compact_record() {
    let inspector = Inspector::new(
        config()
            .header_limit(usize::MAX)
            .body_limit(usize::MAX)
            .owner_from(big_owner),
    );
    assert_eq!(inspector.config().header_limit_bytes(), 1024 * 1024);
    let owner = "\u{e5}lice-".repeat(40_000); // 280 000 bytes, non-ASCII
    let method = Method::from_bytes("PURGE".repeat(14_000).as_bytes()).unwrap(); // 70 000 bytes
    let path = format!("/api/{}", "p".repeat(65_000));
    let long_value = "v".repeat(200_000);
    let mut req = request(method.clone(), &path, Script::empty());
    req.extensions_mut().insert(Account(owner.clone()));
    req.headers_mut()
        .insert("x-long", HeaderValue::from_str(&long_value).unwrap());
    let mut answer = Response::new(Script::empty());
    answer
        .headers_mut()
        .insert("x-long", HeaderValue::from_str(&long_value).unwrap());
    for i in 0..20_000 {
        let name = HeaderName::from_bytes(format!("x-{i}").as_bytes()).unwrap();
        req.headers_mut()
            .append(name.clone(), HeaderValue::from_static("q"));
        answer
            .headers_mut()
            .append(name, HeaderValue::from_static("r"));
    }
    let body = vec![b'b'; 3 * 1024 * 1024];
    let seen = Arc::new(Mutex::new(HeaderMap::new()));
    let seen2 = Arc::clone(&seen);
    let answer = Arc::new(Mutex::new(Some(answer)));
    let service = ServiceBuilder::new()
        .layer(inspector.layer())
        .service(service_fn(move |req: Request<InspectBody<Script>>| {
            *seen2.lock().unwrap() = req.headers().clone();
            let answer = answer.lock().unwrap().take().unwrap();
            async move { Ok::<_, io::Error>(answer) }
        }));
    let response = service.oneshot(req).await.unwrap();
    let response_headers = response.headers().clone();
    read_all(response.into_body()).await;
    let e = only(&inspector);
    assert!(e.method == method.as_str(), "method differs");
    assert!(e.path == path, "path differs");
    assert!(e.owner.as_deref() == Some(owner.as_str()), "owner differs");
    let limit = 1024 * 1024;
    assert_cut(&e.request_headers, &seen.lock().unwrap(), limit);
    assert_cut(&e.response_headers, &response_headers, limit);
    assert_eq!(
        e.request_headers.len(),
        20_002,
        "all recorded (the id included)"
    );
    assert_eq!(e.response_headers.len(), 20_002);
    assert_accounting(&inspector);

    // A 3 MiB body under a 16 MiB limit is kept whole.
    inspector.clear();
    roundtrip(
        &inspector,
        request(Method::POST, "/api/big", Script::framed(&body, 100_000)),
        Script::framed(&body, 65_537),
    )
    .await;
    let e = only(&inspector);
    for b in [&e.request_body, &e.response_body] {
        assert!(b.bytes()[..] == body[..], "body differs");
        assert!(!b.truncated() && b.complete());
    }
    assert_accounting(&inspector);
}

/// method, status, owner, limit.
type FilterCase = (
    Option<&'static str>,
    Option<&'static str>,
    Option<&'static str>,
    Option<usize>,
);

// covers the JSON handler and `entries_matching` (filters now run on the compact records): every
// filter returns exactly what filtering `entries()` returns, newest first, limited.
#[tokio::test]
async fn filters_agree_with_entries() {
    let inspector = Inspector::new(config().capacity(50).owner_from(owner));
    let service = ServiceBuilder::new()
        .layer(inspector.layer())
        .service(service_fn(|req: Request<InspectBody<Script>>| async move {
            let status: u16 = req
                .uri()
                .path()
                .trim_start_matches("/api/s/")
                .parse()
                .unwrap();
            Ok::<_, io::Error>(
                Response::builder()
                    .status(status)
                    .body(Script::data(["x"]))
                    .unwrap(),
            )
        }));
    let methods = [
        Method::GET,
        Method::POST,
        Method::DELETE,
        Method::PUT,
        Method::from_bytes(b"PURGE").unwrap(),
    ];
    let statuses = [200u16, 201, 204, 302, 404, 418, 500, 503, 599, 999];
    for i in 0..70 {
        let mut req = request(
            methods[i % methods.len()].clone(),
            &format!("/api/s/{}", statuses[i % statuses.len()]),
            Script::empty(),
        );
        if i % 3 != 0 {
            req.extensions_mut()
                .insert(Account(["ann", "bob"][i % 2].into()));
        }
        let response = service.clone().oneshot(req).await.unwrap();
        read_all(response.into_body()).await;
    }
    let all = inspector.entries();
    assert_eq!(all.len(), 50);
    let ids = |v: &[Arc<Entry>]| v.iter().map(|e| e.id).collect::<Vec<_>>();
    let mut cases: Vec<FilterCase> = Vec::new();
    for m in [
        None,
        Some("get"),
        Some("POST"),
        Some("purge"),
        Some("patch"),
    ] {
        for st in [
            None,
            Some("4xx"),
            Some("5XX"),
            Some("404"),
            Some("999"),
            Some("9xx"),
        ] {
            for o in [None, Some("ann"), Some("nobody")] {
                for l in [None, Some(0), Some(1), Some(3), Some(1000)] {
                    cases.push((m, st, o, l));
                }
            }
        }
    }
    for (m, st, o, l) in cases {
        let mut filter = match request_inspector::EntryFilter::parse(m, st) {
            Ok(f) => f,
            Err(_) => continue,
        };
        if let Some(o) = o {
            filter = filter.owner(o);
        }
        let expect: Vec<Arc<Entry>> = all
            .iter()
            .filter(|e| filter.matches(e))
            .take(l.unwrap_or(usize::MAX))
            .cloned()
            .collect();
        // Independent check of the method/status/owner rule on the fields.
        for e in &all {
            let want = m.is_none_or(|m| e.method.eq_ignore_ascii_case(m))
                && st.is_none_or(|s| {
                    let code = e.status.map(|c| c.to_string()).unwrap_or_default();
                    if s.len() == 3 && s[1..].eq_ignore_ascii_case("xx") {
                        code.len() == 3 && code[..1] == s[..1]
                    } else {
                        code == s
                    }
                })
                && o.is_none_or(|o| e.owner.as_deref() == Some(o));
            assert_eq!(
                filter.matches(e),
                want,
                "{m:?} {st:?} {o:?} on {} {:?}",
                e.method,
                e.status
            );
        }
        if let Some(l) = l {
            filter = filter.limit(l);
        }
        let got = inspector.entries_matching(&filter);
        assert_eq!(ids(&got), ids(&expect), "{m:?} {st:?} {o:?} {l:?}");
        for (g, x) in got.iter().zip(&expect) {
            assert_eq!(format!("{g:?}"), format!("{x:?}"));
        }
        if o.is_none() {
            let mut uri = String::from("/?");
            if let Some(m) = m {
                uri.push_str(&format!("method={m}&"));
            }
            if let Some(s) = st {
                uri.push_str(&format!("status={s}&"));
            }
            uri.push_str(&format!("limit={}", l.unwrap_or(100_000)));
            let response = inspector
                .router::<()>()
                .oneshot(Request::get(uri.as_str()).body(AxumBody::empty()).unwrap())
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::OK, "{uri}");
            let page: Value =
                serde_json::from_slice(&read_all(response.into_body()).await).unwrap();
            let json_ids: Vec<u64> = page["entries"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["id"].as_u64().unwrap())
                .collect();
            assert_eq!(json_ids, ids(&expect), "{uri}");
        }
    }
}

/// A body that counts how many frames were pulled out of it.
#[derive(Debug)]
struct Counted {
    inner: Script,
    pulled: Arc<AtomicUsize>,
}

impl Body for Counted {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(_)) = &polled {
            this.pulled.fetch_add(1, Ordering::SeqCst);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

// covers I5 ("never holds a frame back and never reads ahead"; size_hint and is_end_stream
// forwarded): a captured response is pulled one frame per client poll, with the inner body's
// hint and end flag at every step; an unpolled response dropped is an aborted exchange with
// its status.
#[tokio::test]
async fn captured_bodies_are_pulled_frame_by_frame_with_hints_forwarded() {
    let inspector = Inspector::new(config().body_limit(4));
    let pulled = Arc::new(AtomicUsize::new(0));
    let pulled2 = Arc::clone(&pulled);
    let service = ServiceBuilder::new()
        .layer(inspector.layer())
        .service(service_fn(move |_req: Request<InspectBody<Script>>| {
            let pulled = Arc::clone(&pulled2);
            async move {
                Ok::<_, io::Error>(Response::new(Counted {
                    inner: Script::data(["aa", "bbb", "cccc"]),
                    pulled,
                }))
            }
        }));
    let response = service
        .clone()
        .oneshot(request(Method::POST, "/api/x", Script::empty()))
        .await
        .unwrap();
    let mut body = response.into_body();
    assert_eq!(
        pulled.load(Ordering::SeqCst),
        0,
        "read ahead before the client polled"
    );
    for (i, (chunk, rest)) in [("aa", 7u64), ("bbb", 4), ("cccc", 0)].iter().enumerate() {
        assert!(!body.is_end_stream());
        assert_eq!(body.size_hint().exact(), Some(rest + chunk.len() as u64));
        assert_eq!(next_data(&mut body).await.unwrap(), *chunk);
        assert_eq!(pulled.load(Ordering::SeqCst), i + 1, "read ahead");
        assert_eq!(body.size_hint().exact(), Some(*rest));
    }
    assert!(body.is_end_stream());
    assert!(next_data(&mut body).await.is_none());
    drop(body);
    let e = only(&inspector);
    assert_eq!(e.response_body.bytes(), "aabb");
    assert_eq!(e.response_body.total_bytes(), 9);

    // Dropped before the first poll of the body.
    inspector.clear();
    let response = service
        .oneshot(request(Method::POST, "/api/unpolled", Script::empty()))
        .await
        .unwrap();
    drop(response);
    let e = only(&inspector);
    assert_eq!(e.outcome, Outcome::Aborted);
    assert_eq!(e.status, Some(200));
    assert!(e.response_after_us.is_some());
    assert_eq!(e.response_body.total_bytes(), 0);
    assert!(!e.response_body.complete());
    assert_accounting(&inspector);
}

// covers I5: a request body that fails part-way: the handler sees the error unchanged, the
// entry keeps what was read, marked incomplete; the exchange itself completes.
#[tokio::test]
async fn request_body_error_is_forwarded_and_recorded_incomplete() {
    let inspector = Inspector::new(config());
    let service = ServiceBuilder::new()
        .layer(inspector.layer())
        .service(service_fn(|req: Request<InspectBody<Script>>| async move {
            let err = req.into_body().collect().await.expect_err("the body error");
            assert_eq!(err.to_string(), "the body broke part-way");
            Ok::<_, io::Error>(
                Response::builder()
                    .status(StatusCode::BAD_REQUEST)
                    .body(Script::data(["bad body"]))
                    .unwrap(),
            )
        }));
    let response = service
        .oneshot(request(
            Method::POST,
            "/api/x",
            Script::data(["good ", "part"]).error(),
        ))
        .await
        .unwrap();
    read_all(response.into_body()).await;
    let e = only(&inspector);
    assert_eq!((e.status, e.outcome), (Some(400), Outcome::Complete));
    assert_eq!(e.request_body.bytes(), "good part");
    assert_eq!(e.request_body.total_bytes(), 9);
    assert!(!e.request_body.complete());
    assert!(e.response_body.complete());
    assert_accounting(&inspector);
}

// covers X4: captures ending on several threads while another thread keeps calling `clear()`
// and reading: when everything is over, the byte counters still equal what the ring holds and
// nothing is counted in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clear_racing_with_captures_keeps_counters_exact() {
    for round in 0..5 {
        let inspector = Inspector::new(config().capacity(70).body_limit(32));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let clearer = {
            let inspector = inspector.clone();
            let stop = Arc::clone(&stop);
            tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    inspector.clear();
                    let _ = inspector.entries();
                    tokio::task::yield_now().await;
                }
            })
        };
        let mut writers = Vec::new();
        for t in 0..6 {
            let inspector = inspector.clone();
            writers.push(tokio::spawn(async move {
                let service = ServiceBuilder::new()
                    .layer(inspector.layer())
                    .service(service_fn(|req: Request<InspectBody<Script>>| async move {
                        read_all(req.into_body()).await;
                        tokio::task::yield_now().await;
                        Ok::<_, io::Error>(Response::new(Script::data(["a", "bb", "ccc"])))
                    }));
                for i in 0..150 {
                    let response = service
                        .clone()
                        .oneshot(request(
                            Method::POST,
                            &format!("/api/{t}/{i}"),
                            Script::framed(&[b'z'; 40], 9),
                        ))
                        .await
                        .unwrap();
                    let mut body = response.into_body();
                    // Some exchanges are aborted part-way.
                    if i % 5 == 0 {
                        next_data(&mut body).await;
                        drop(body);
                    } else {
                        read_all(body).await;
                    }
                }
            }));
        }
        for w in writers {
            w.await.unwrap();
        }
        stop.store(true, Ordering::SeqCst);
        clearer.await.unwrap();
        let stats = inspector.stats();
        let entries = inspector.entries();
        assert_eq!(stats.captured, 900, "round {round}");
        assert_eq!(stats.ring_len, entries.len(), "round {round}");
        assert_eq!(
            stats.ring_bytes,
            entries.iter().map(|e| e.retained_bytes()).sum::<usize>(),
            "round {round}"
        );
        assert_eq!(stats.in_flight_bytes, 0, "round {round}");
        assert_eq!(
            stats.retained_bytes,
            stats.ring_bytes + stats.ring_slot_bytes + stats.spare_bytes,
            "round {round}"
        );
        inspector.clear();
        let stats = inspector.stats();
        assert_eq!(
            (stats.ring_len, stats.ring_bytes, stats.retained_bytes),
            (0, 0, stats.ring_slot_bytes),
            "round {round}: clear keeps only the slots: {stats:?}"
        );
    }
}

fn empty_owner(_: &http::Extensions) -> Option<String> {
    Some(String::new())
}

// covers I1 (the compact record must not confuse "empty" with "absent"): an owner that is the
// empty string, an empty query (`?` alone) and a response head at 0 µs (virtual time) are
// recorded as such, not as `None`.
#[tokio::test(start_paused = true)]
async fn empty_values_are_not_confused_with_absent_ones() {
    let inspector = Inspector::new(config().owner_from(empty_owner));
    roundtrip(
        &inspector,
        request(Method::POST, "/api/x?", Script::empty()),
        Script::empty(),
    )
    .await;
    let e = only(&inspector);
    assert_eq!(e.owner.as_deref(), Some(""));
    let uri: http::Uri = "/api/x?".parse().unwrap();
    assert_eq!(
        e.query.as_deref(),
        uri.query(),
        "the request's query as http sees it"
    );
    assert_eq!(e.response_after_us, Some(0), "the head came at 0 µs");
    assert_eq!(e.duration_us, 0);
    assert_eq!(
        inspector
            .entries_matching(&request_inspector::EntryFilter::new().owner(""))
            .len(),
        1
    );
    assert_json_matches_entries(&inspector).await;
}

// covers I5: a request body that is empty from the start (a GET or DELETE without a body) is
// over even if the handler never reads it: complete, zero bytes — not "unread".
#[tokio::test]
async fn empty_unread_request_body_is_complete() {
    let inspector = Inspector::new(config());
    let service = ServiceBuilder::new()
        .layer(inspector.layer())
        .service(service_fn(|req: Request<InspectBody<Script>>| async move {
            assert!(req.body().is_end_stream());
            Ok::<_, io::Error>(Response::new(Script::data(["ok"])))
        }));
    for method in [Method::GET, Method::DELETE, Method::HEAD] {
        inspector.clear();
        let response = service
            .clone()
            .oneshot(request(method.clone(), "/api/x", Script::empty()))
            .await
            .unwrap();
        read_all(response.into_body()).await;
        let e = only(&inspector);
        assert_eq!(e.request_body.total_bytes(), 0, "{method}");
        assert!(e.request_body.complete(), "{method}: {:?}", e.request_body);
    }
}

// covers I1, X4 (issue #23: the ring in chunks of 64): at capacities around the chunk size the
// ring keeps exactly the newest exchanges, newest first, with exact byte counts, while entries
// read earlier stay intact.
#[tokio::test]
async fn eviction_is_exact_around_chunk_boundaries() {
    for capacity in [1usize, 2, 63, 64, 65, 127, 128, 129] {
        let inspector = Inspector::new(config().capacity(capacity).body_limit(8));
        let service = ServiceBuilder::new()
            .layer(inspector.layer())
            .service(service_fn(|req: Request<InspectBody<Script>>| async move {
                let body = read_all(req.into_body()).await;
                Ok::<_, io::Error>(Response::new(Script::data([body])))
            }));
        let mut held: Vec<Arc<Entry>> = Vec::new();
        let total = 2 * capacity + 70;
        for i in 1..=total {
            let response = service
                .clone()
                .oneshot(request(
                    Method::POST,
                    &format!("/api/{i}"),
                    Script::data([format!("{i}")]),
                ))
                .await
                .unwrap();
            read_all(response.into_body()).await;
            if i % 37 == 0 {
                held = inspector.entries();
            }
            let entries = inspector.entries();
            let want: Vec<u64> = (i.saturating_sub(capacity) + 1..=i)
                .rev()
                .map(|x| x as u64)
                .collect();
            assert_eq!(
                entries.iter().map(|e| e.id).collect::<Vec<_>>(),
                want,
                "capacity {capacity} after {i}"
            );
            for e in &entries {
                assert_eq!(e.path, format!("/api/{}", e.id));
                assert_eq!(e.request_body.text(), e.id.to_string());
                assert_eq!(e.response_body.text(), e.id.to_string());
            }
            for e in &held {
                assert_eq!(e.path, format!("/api/{}", e.id), "a held entry changed");
            }
            assert_accounting(&inspector);
            let stats = inspector.stats();
            assert_eq!(stats.evicted, i.saturating_sub(capacity) as u64);
        }
    }
}

// covers I2: a polling GET that fails, is cancelled or is aborted part-way still leaves no
// entry and holds nothing; the error reaches the caller unchanged.
#[tokio::test]
async fn failed_polling_gets_leave_nothing_behind() {
    let inspector = Inspector::new(config());
    let service = ServiceBuilder::new()
        .layer(inspector.layer())
        .service(service_fn(|req: Request<InspectBody<Script>>| async move {
            match req.uri().path() {
                "/api/monitor/fail" => Err(io::Error::other("inner failed")),
                "/api/monitor/hang" => {
                    std::future::pending::<()>().await;
                    unreachable!()
                }
                _ => Ok(Response::new(Script::data(["a", "b"]).error())),
            }
        }));
    let err = service
        .clone()
        .oneshot(request(Method::GET, "/api/monitor/fail", Script::empty()))
        .await
        .expect_err("the inner error");
    assert_eq!(err.to_string(), "inner failed");
    let mut hang = Box::pin(service.clone().oneshot(request(
        Method::GET,
        "/api/monitor/hang",
        Script::empty(),
    )));
    assert!(futures::poll!(&mut hang).is_pending());
    drop(hang);
    let response = service
        .clone()
        .oneshot(request(Method::GET, "/api/monitor/x", Script::empty()))
        .await
        .unwrap();
    let mut body = response.into_body();
    assert_eq!(next_data(&mut body).await.unwrap(), "a");
    drop(body);
    let response = service
        .oneshot(request(Method::GET, "/api/monitor/x", Script::empty()))
        .await
        .unwrap();
    let mut body = response.into_body();
    assert_eq!(next_data(&mut body).await.unwrap(), "a");
    assert_eq!(next_data(&mut body).await.unwrap(), "b");
    assert!(body.frame().await.unwrap().is_err());
    assert!(inspector.entries().is_empty());
    let stats = inspector.stats();
    assert_eq!(stats.captured, 0);
    assert_eq!(stats.passed_through, 4);
    assert_eq!((stats.retained_bytes, stats.peak_retained_bytes), (0, 0));
}
