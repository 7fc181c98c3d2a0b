//! What the layer allocates, counted by a counting global allocator (issue #23): a polling GET
//! costs only the allocations its request id needs, and `InspectorStats` counts exactly the
//! bytes the ring keeps alive.
//!
//! The allocator's counts are process-wide, so this binary has one `#[test]`, which runs the
//! checks one after the other on its own thread, on a current-thread runtime, with no spawned
//! task. The harness's main thread allocates as the test starts (and when it ends): on a busy
//! machine that landed in the first window of 500 exchanges about half the time (4 allocations
//! more), so allocation counts take the fewest of several windows — other threads only ever
//! add to them.

use std::alloc::System;
use std::convert::Infallible;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response};
use http_body_util::{BodyExt, Full};
use request_inspector::{InspectBody, Inspector, InspectorConfig, InspectorStats};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use tower::{Service, ServiceExt, service_fn};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

#[test]
fn the_layer_allocates_what_it_needs_and_counts_what_it_keeps() {
    polling_get_allocates_only_for_its_request_id();
    axum_layer_hands_polling_bodies_on_unwrapped();
    captures_in_a_full_ring_reuse_the_evicted_records();
    retained_bytes_match_a_counting_allocator();
    retained_bytes_stay_exact_for_streamed_and_interleaved_bodies();
    the_peak_counts_captures_that_were_in_flight_together();
    everything_is_freed_once_the_inspector_and_its_services_are_dropped();
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime")
}

fn inspector(capacity: usize) -> Inspector {
    Inspector::new(
        InspectorConfig::new()
            .polling_prefixes(["/api/monitor/", "/api/warmup"])
            .expect("prefixes")
            .capacity(capacity)
            .body_limit(4096),
    )
}

/// The request a browser's poll or submit looks like once hyper parsed it: a few headers whose
/// values are shared with the read buffer (`from_static` here), so cloning one costs nothing.
fn request(
    method: Method,
    uri: &'static str,
    body: &'static [u8],
    id: Option<&'static str>,
) -> Request<Full<Bytes>> {
    let mut request = Request::builder()
        .method(method)
        .uri(http::Uri::from_static(uri))
        .header("host", HeaderValue::from_static("dashboard.local"))
        .header("accept", HeaderValue::from_static("application/json"))
        .header(
            "authorization",
            HeaderValue::from_static("Bearer not-a-real-token"),
        )
        .body(Full::new(Bytes::from_static(body)))
        .expect("request");
    if let Some(id) = id {
        request
            .headers_mut()
            .insert("x-request-id", HeaderValue::from_static(id));
    }
    request
}

/// The app behind the layer: a fixed JSON answer that reads the request body.
async fn handler<B>(request: Request<B>) -> Result<Response<Full<Bytes>>, Infallible>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: std::fmt::Debug,
{
    let _ = request.into_body().collect().await.expect("request body");
    let mut response = Response::new(Full::new(Bytes::from_static(
        br#"{"clusters":[{"name":"aks-1","status":"ok"},{"name":"aks-2","status":"ok"}]}"#,
    )));
    response
        .headers_mut()
        .insert("content-type", HeaderValue::from_static("application/json"));
    Ok(response)
}

/// Send `make()` through `service` and read the response to its end.
async fn exchange<S, B>(service: &mut S, request: Request<Full<Bytes>>)
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>, Error = Infallible>,
    B: http_body::Body<Data = Bytes>,
    B::Error: std::fmt::Debug,
{
    let response = service.ready().await.unwrap().call(request).await.unwrap();
    let _ = response.into_body().collect().await.expect("response body");
}

/// Allocations per exchange: `make` builds each request (its own allocations are the same on
/// both sides, the layer's are the difference), counted over `n` exchanges after a warm-up; the
/// fewest of [`WINDOWS`] windows (another thread's allocations can only add to one).
fn allocations_per_exchange<S, B>(
    runtime: &tokio::runtime::Runtime,
    service: &mut S,
    n: usize,
    make: impl Fn() -> Request<Full<Bytes>>,
) -> f64
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>, Error = Infallible>,
    B: http_body::Body<Data = Bytes>,
    B::Error: std::fmt::Debug,
{
    runtime.block_on(async {
        for _ in 0..10 {
            exchange(service, make()).await;
        }
        let mut fewest = usize::MAX;
        for _ in 0..WINDOWS {
            let region = Region::new(GLOBAL);
            for _ in 0..n {
                exchange(service, make()).await;
            }
            fewest = fewest.min(region.change().allocations);
        }
        fewest as f64 / n as f64
    })
}

/// Windows of exchanges [`allocations_per_exchange`] counts, keeping the fewest.
const WINDOWS: usize = 3;

/// `extra` allocations per exchange are `whole` plus a generated id's share: one buffer per 16
/// ids (`RequestId::generate` writes 16 at a time), so over `n` exchanges `n / 16` buffers,
/// give or take the one a window starts or ends in.
fn assert_batched_id(extra: f64, whole: f64, n: usize, what: &str) {
    let batches = n as f64 / 16.0;
    let (low, high) = (
        whole + (batches - 1.0) / n as f64,
        whole + (batches + 1.0) / n as f64,
    );
    assert!(
        (low..=high).contains(&extra),
        "{what}: {extra} extra allocations, not {whole} and one per 16 ids ({low}..={high})"
    );
}

// Issue #23: the pass-through path allocates only what the request id needs. A generated id
// costs a sixteenth of an allocation (its 32 digits are a slice of a buffer written for 16 ids,
// shared by the request header, the extension and the response header) and one for its place
// in the request's extensions (plus the extension map's own two when the request had none yet:
// every router makes that map anyway). An accepted incoming id is shared, not copied. Before:
// two Strings per path segment in the dot check (8 for this path), `format!`, a copy of the id
// and a second one on its first clone; then one allocation per generated id.
fn polling_get_allocates_only_for_its_request_id() {
    let runtime = runtime();
    let inspector = inspector(16);
    let mut bare = service_fn(handler::<Full<Bytes>>);
    let mut layered = tower::ServiceBuilder::new()
        .layer(inspector.layer())
        .service(service_fn(handler));
    let poll = || request(Method::GET, "/api/monitor/aks/clusters", b"", None);
    let n = 500;
    let base = allocations_per_exchange(&runtime, &mut bare, n, poll);
    let with_layer = allocations_per_exchange(&runtime, &mut layered, n, poll);
    assert_batched_id(
        with_layer - base,
        3.0,
        n,
        "generated id: {with_layer} allocations per polling GET vs {base} without the layer",
    );
    let poll_with_id = || {
        request(
            Method::GET,
            "/api/monitor/aks/clusters",
            b"",
            Some("0f3c-client-id"),
        )
    };
    let base = allocations_per_exchange(&runtime, &mut bare, n, poll_with_id);
    let with_layer = allocations_per_exchange(&runtime, &mut layered, n, poll_with_id);
    assert_eq!(
        with_layer - base,
        3.0,
        "incoming id: {with_layer} allocations per polling GET vs {base} without the layer"
    );
    let stats = inspector.stats();
    assert_eq!(
        (stats.captured, stats.passed_through),
        (0, 2 * (WINDOWS * n + 10) as u64)
    );

    // Without the extension (`request_id_extension(false)`): a generated id costs its share of
    // a batch, an accepted incoming id nothing at all.
    let headers_only = Inspector::new(
        InspectorConfig::new()
            .polling_prefixes(["/api/monitor"])
            .expect("prefix")
            .request_id_extension(false),
    );
    let mut layered = tower::ServiceBuilder::new()
        .layer(headers_only.layer())
        .service(service_fn(handler));
    let base = allocations_per_exchange(&runtime, &mut bare, n, poll);
    let with_layer = allocations_per_exchange(&runtime, &mut layered, n, poll);
    assert_batched_id(
        with_layer - base,
        0.0,
        n,
        "generated id, no extension: {with_layer} allocations per polling GET vs {base}",
    );
    let base = allocations_per_exchange(&runtime, &mut bare, n, poll_with_id);
    let with_layer = allocations_per_exchange(&runtime, &mut layered, n, poll_with_id);
    assert_eq!(
        with_layer - base,
        0.0,
        "incoming id, no extension: {with_layer} allocations per polling GET vs {base}"
    );
}

// Issue #23: under axum's `Router::layer`, `layer()` hands the route an `InspectBody` request
// body and the router an `InspectBody` response body, and axum boxes each into its `Body` (one
// allocation each way, on every request). `axum_layer()` keeps axum's `Body` and wraps only
// captured bodies: a polling GET allocates exactly 2 times fewer.
fn axum_layer_hands_polling_bodies_on_unwrapped() {
    use axum::routing::get;
    let runtime = runtime();
    let inspector = inspector(16);
    let routes = || {
        axum::Router::new().route(
            "/api/monitor/aks/clusters",
            get(|| async { r#"{"clusters":[]}"# }),
        )
    };
    let mut wrapped = routes().layer(inspector.layer());
    let mut axum_native = routes().layer(inspector.axum_layer());
    let poll = || {
        request(
            Method::GET,
            "/api/monitor/aks/clusters",
            b"",
            Some("0f3c-id"),
        )
    };
    let n = 500;
    let with_layer = allocations_per_exchange(&runtime, &mut wrapped, n, poll);
    let with_axum_layer = allocations_per_exchange(&runtime, &mut axum_native, n, poll);
    assert_eq!(
        with_layer - with_axum_layer,
        2.0,
        "polling GET through Router::layer: {with_layer} allocations with layer(), \
         {with_axum_layer} with axum_layer()"
    );
    assert_eq!(inspector.stats().captured, 0);
}

// Issue #23: once the ring is full, every capture evicts a record; the record and its arena
// are kept for this thread's next capture instead of being freed (and new ones allocated), so
// a captured POST in a full ring allocates only for its request id and its extension (1/16 + 3):
// nothing for its record, its text or its bodies. No arena is freed either, which is what two
// threads evicting each other's records were seen parking on (glibc's arena locks).
fn captures_in_a_full_ring_reuse_the_evicted_records() {
    let runtime = runtime();
    let inspector = inspector(8);
    let mut bare = service_fn(handler::<Full<Bytes>>);
    let mut layered = tower::ServiceBuilder::new()
        .layer(inspector.layer())
        .service(service_fn(handler));
    let post = || request(Method::POST, "/api/jobs", br#"{"cluster":"aks-1"}"#, None);
    let n = 200;
    let base = allocations_per_exchange(&runtime, &mut bare, n, post);
    let with_layer = allocations_per_exchange(&runtime, &mut layered, n, post);
    assert_batched_id(
        with_layer - base,
        3.0,
        n,
        "{with_layer} allocations per captured POST in a full ring vs {base} without the layer",
    );
    let stats = inspector.stats();
    assert!(stats.evicted > 0);
    assert!(
        stats.spare_bytes > 0 && stats.spare_bytes <= 320 + 16 * 1024,
        "{stats:?}"
    );
    inspector.clear();
    assert_eq!(inspector.stats().spare_bytes, 0);
    let stats = inspector.stats();
    assert_eq!(
        stats.retained_bytes, stats.ring_slot_bytes,
        "clear keeps only the slots"
    );
}

/// Bytes allocated and not freed since `region` started (a reallocation's difference is
/// already in `bytes_allocated` or `bytes_deallocated`).
fn live(region: &Region<'_, System>) -> isize {
    let change = region.change();
    change.bytes_allocated as isize - change.bytes_deallocated as isize
}

fn held(stats: &InspectorStats) -> isize {
    stats.retained_bytes as isize
}

// Issue #23: `InspectorStats` counts what the ring really holds — the entries in their `Arc`s,
// every string's and header list's capacity, the body copies and the ring's chunks — so the
// bytes the allocator says are still live after N captured exchanges are exactly the bytes
// the stats say the inspector retains, while the ring fills and after it starts evicting.
fn retained_bytes_match_a_counting_allocator() {
    let runtime = runtime();
    let inspector = inspector(100);
    let mut layered = tower::ServiceBuilder::new()
        .layer(inspector.layer())
        .service(service_fn(handler));
    let submit = |i: usize| {
        let body: &'static [u8] = [
            br#"{"job":"blast","size":1}"#.as_slice(),
            br#"{"job":"blast","size":22,"note":"a longer body"}"#.as_slice(),
            b"".as_slice(),
        ][i % 3];
        let uri = [
            "/api/jobs",
            "/api/jobs/42?cluster=aks-1&sig=abc",
            "/api/keys",
        ][i % 3];
        request(Method::POST, uri, body, None)
    };
    runtime.block_on(async {
        // Warm-up: first-use initialisation (tracing call sites, the id prefix) is not the ring.
        exchange(&mut layered, submit(0)).await;
        inspector.clear();
        // The ring's first chunk of slots stays (a clear keeps the slots): allocated before.
        let pre = inspector.stats().ring_slot_bytes as isize;
        assert_eq!(held(&inspector.stats()), pre);

        let region = Region::new(GLOBAL);
        for i in 0..250 {
            exchange(&mut layered, submit(i)).await;
            let stats = inspector.stats();
            assert_eq!(stats.in_flight_bytes, 0);
            assert_eq!(
                live(&region),
                held(&stats) - pre,
                "after {} exchanges ({} in the ring, {} evicted)",
                i + 1,
                stats.ring_len,
                stats.evicted
            );
        }
        let stats = inspector.stats();
        assert_eq!((stats.ring_len, stats.evicted), (100, 150));
        // About 1.3 KB per entry here, of which the text lengths are about half.
        let per_entry = stats.ring_bytes / stats.ring_len;
        let text: usize = inspector
            .entries()
            .iter()
            .map(|e| {
                e.request_id.len()
                    + e.method.len()
                    + e.path.len()
                    + e.query.as_ref().map_or(0, String::len)
                    + e.request_body.captured_bytes()
                    + e.response_body.captured_bytes()
                    + e.request_headers
                        .iter()
                        .chain(&e.response_headers)
                        .map(|h| h.name.len() + h.value.len())
                        .sum::<usize>()
            })
            .sum::<usize>()
            / stats.ring_len;
        assert!(per_entry > text, "{per_entry} vs {text}");

        inspector.clear();
        let stats = inspector.stats();
        assert_eq!(live(&region), held(&stats) - pre);
        assert_eq!(
            stats.retained_bytes, stats.ring_slot_bytes,
            "clear keeps only the slots"
        );
    });
}

/// A body of `n` frames of 700 bytes each (`a`, `b`, … repeated), with no size announced.
type Frames = http_body_util::StreamBody<
    futures::stream::Iter<std::vec::IntoIter<Result<http_body::Frame<Bytes>, Infallible>>>,
>;

fn frames(n: usize) -> Frames {
    let frames: Vec<_> = (0..n)
        .map(|i| {
            Ok(http_body::Frame::data(Bytes::from(vec![
                b'a' + (i % 26)
                    as u8;
                700
            ])))
        })
        .collect();
    http_body_util::StreamBody::new(futures::stream::iter(frames))
}

/// A service answering with the request's body (an echo), behind `inspector`'s layer.
fn echo(
    inspector: &Inspector,
) -> impl Service<
    Request<Frames>,
    Response = Response<InspectBody<InspectBody<Frames>>>,
    Error = Infallible,
> {
    tower::ServiceBuilder::new()
        .layer(inspector.layer())
        .service(service_fn(
            |request: Request<InspectBody<Frames>>| async move {
                Ok::<_, Infallible>(Response::new(request.into_body()))
            },
        ))
}

// Issue #23: the record keeps bodies in its arena while they arrive one after the other, and a
// request body still streaming when the response started (an echo) continues in a buffer of its
// own. With bodies of many frames, no announced size, a cut at the limit, and both bodies
// interleaved frame by frame, the live bytes still equal `retained_bytes` after every exchange.
fn retained_bytes_stay_exact_for_streamed_and_interleaved_bodies() {
    let runtime = runtime();
    let inspector = inspector(8);
    let mut echo = echo(&inspector);
    runtime.block_on(async {
        let warm = Request::post("/api/echo").body(frames(2)).expect("request");
        let response = echo.ready().await.unwrap().call(warm).await.unwrap();
        let _ = response.into_body().collect().await.expect("echo");
        inspector.clear();
        let pre = inspector.stats().ring_slot_bytes as isize;

        let region = Region::new(GLOBAL);
        for i in 0..20 {
            // 3 to 12 frames of 700 bytes: under and over the 4 KiB limit.
            let n = 3 + i % 10;
            let request = Request::post("/api/echo").body(frames(n)).expect("request");
            let response = echo.ready().await.unwrap().call(request).await.unwrap();
            let echoed = response
                .into_body()
                .collect()
                .await
                .expect("echo")
                .to_bytes();
            assert_eq!(echoed.len(), 700 * n);
            drop(echoed);
            let stats = inspector.stats();
            assert_eq!(stats.in_flight_bytes, 0);
            assert_eq!(live(&region), held(&stats) - pre, "after {} echoes", i + 1);
        }
        let entries = inspector.entries();
        let expected: Vec<u8> = (0..12_usize)
            .flat_map(|i| vec![b'a' + (i % 26) as u8; 700])
            .take(4096)
            .collect();
        for entry in &entries {
            let (request, response) = (&entry.request_body, &entry.response_body);
            assert_eq!(request.bytes(), response.bytes(), "both bodies in order");
            let n = request.total_bytes() as usize;
            assert_eq!(request.bytes().as_ref(), &expected[..n.min(4096)]);
            assert_eq!(request.truncated(), n > 4096);
            assert!(request.complete() && response.complete());
        }
        drop((entries, expected));
        inspector.clear();
        assert_eq!(live(&region), 0);
    });
}

/// Eight echoes of 6 frames in flight together, each with 2 frames through, into a ring of
/// one entry (so that when they are done, the ring holds one); `read_midway` reads the stats
/// at that point. Returns the `retained_bytes` read midway (0 without) and the stats
/// read once all eight finished.
fn eight_echoes_in_flight(read_midway: bool) -> (usize, InspectorStats) {
    let runtime = runtime();
    let inspector = inspector(1);
    let mut echo = echo(&inspector);
    runtime.block_on(async {
        let mut bodies = Vec::new();
        for _ in 0..8 {
            let request = Request::post("/api/echo").body(frames(6)).expect("request");
            let response = echo.ready().await.unwrap().call(request).await.unwrap();
            bodies.push(response.into_body());
        }
        for body in &mut bodies {
            for _ in 0..2 {
                body.frame().await.expect("a frame").expect("echoed");
            }
        }
        let midway = if read_midway {
            inspector.stats().retained_bytes
        } else {
            0
        };
        for body in bodies {
            body.collect().await.expect("echo");
        }
        let stats = inspector.stats();
        assert_eq!((stats.captured, stats.in_flight_bytes), (8, 0));
        (midway, stats)
    })
}

// Issue #23: captures count their in-flight bytes on their thread's stripe and the peak is
// noted when a capture finishes (and by every read), not on every change. With no read while
// eight captures were in flight together, the peak still counts all eight: the first to
// finish notes the others' bytes too. The run that reads midway tells how much that was.
fn the_peak_counts_captures_that_were_in_flight_together() {
    let (in_flight_together, _) = eight_echoes_in_flight(true);
    let (_, after) = eight_echoes_in_flight(false);
    assert!(in_flight_together > 8 * 1400, "{in_flight_together}");
    // One in the ring and one kept as a spare: far less than the eight held together, so only
    // a peak noted while they were in flight can reach it.
    assert!(after.retained_bytes < in_flight_together / 2);
    let peak = after.peak_retained_bytes;
    assert!(
        peak >= in_flight_together,
        "peak {peak} < {in_flight_together} held while all eight were in flight"
    );
}

// Issue #23: a layer holds one shard per thread stripe, each holding the inspector's state; the
// clones made on other threads hold their thread's shard, and so do the records. None of them
// holds a shard back, so once the inspector, the layer and every service and clone are dropped,
// everything they allocated is freed (no reference cycle keeps the ring alive). Requests carry
// their id (a generated one would leave its thread's batch of ids allocated), and the threads
// are joined (their thread-locals freed) before the count.
fn everything_is_freed_once_the_inspector_and_its_services_are_dropped() {
    let post = || {
        request(
            Method::POST,
            "/api/jobs",
            br#"{"cluster":"aks-1"}"#,
            Some("id-1"),
        )
    };
    let poll = || request(Method::GET, "/api/monitor/aks", b"", Some("id-2"));
    let region = Region::new(GLOBAL);
    let inspector = inspector(4);
    let root = std::sync::Arc::new(
        tower::ServiceBuilder::new()
            .layer(inspector.layer())
            .service(service_fn(handler)),
    );
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let root = std::sync::Arc::clone(&root);
            std::thread::spawn(move || {
                let mut clone = (*root).clone();
                let runtime = runtime();
                for i in 0..20 {
                    let request = if i % 2 == 0 { post() } else { poll() };
                    runtime.block_on(exchange(&mut clone, request));
                }
                clone
            })
        })
        .collect();
    let clones: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let runtime = runtime();
    let mut clone = (*root).clone();
    runtime.block_on(exchange(&mut clone, post()));
    let stats = inspector.stats();
    assert_eq!((stats.captured, stats.passed_through), (21, 20));
    assert!(stats.retained_bytes > 0);
    drop((clones, clone, root, inspector, runtime));
    assert_eq!(
        live(&region),
        0,
        "bytes still allocated once the inspector and its services are gone"
    );
}
