//! Scenario `inspector_readers` (issue #23, session 38): what a reader listing a full ring at the
//! capacity maximum costs the requests being recorded. One thread captures 1 KiB POSTs into a
//! full 100 000-entry ring through a tower service, each request timed, while another lists the
//! whole ring with `Inspector::entries()` in a loop; against the same writer with no reader,
//! and one list against the same list with no writer. A scenario of its own: in the `inspector`
//! bench binary, this code moved the per-request rows by 0.2–0.4× (code layout), so it is kept
//! apart. Run with `cargo xtask bench inspector_readers`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use request_inspector::{Inspector, InspectorConfig};
use testkit::bench::{Comparison, emit, median, percentile};
use tower::ServiceExt;

const SCENARIO: &str = "inspector_readers";
const CAPACITY: usize = 100_000;
const WRITES: usize = 100_000;
static POST_1K: [u8; 1024] = [b'{'; 1024];

/// A handler that reads the request body and answers a short JSON.
async fn handler<B>(
    request: http::Request<B>,
) -> Result<http::Response<Full<Bytes>>, std::convert::Infallible>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: std::fmt::Debug,
{
    let body = request
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    Ok(http::Response::new(Full::new(Bytes::from(format!(
        "{{\"accepted\":{}}}",
        body.len()
    )))))
}

/// One captured POST through `app`, its response body read to the end.
async fn send<S, B>(app: &S)
where
    S: tower::Service<http::Request<Full<Bytes>>, Response = http::Response<B>> + Clone,
    S::Error: std::fmt::Debug,
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Debug,
{
    let request = http::Request::post("/api/jobs")
        .header(http::header::HOST, "dashboard.local")
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from_static(&POST_1K)))
        .expect("request");
    let response = app.clone().oneshot(request).await.expect("response");
    let _ = response.into_body().collect().await.expect("body");
}

fn current() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime")
}

fn main() {
    let inspector = Inspector::new(InspectorConfig::new().capacity(CAPACITY).body_limit(1024));
    let app = tower::ServiceBuilder::new()
        .layer(inspector.layer())
        .service(tower::service_fn(handler));
    current().block_on(async {
        for _ in 0..CAPACITY {
            send(&app).await;
        }
    });
    let list = || {
        let start = Instant::now();
        let listed = inspector.entries().len();
        (start.elapsed().as_secs_f64() * 1e3, listed)
    };
    // The writer's latencies (ns), and the reader's list times (ms) if one ran beside it.
    let run = |reading: bool| -> (Vec<f64>, Vec<f64>) {
        let done = AtomicBool::new(false);
        std::thread::scope(|scope| {
            let reader = reading.then(|| {
                scope.spawn(|| {
                    let mut times = Vec::new();
                    while !done.load(Ordering::Relaxed) {
                        let (ms, listed) = list();
                        assert!(listed <= CAPACITY);
                        times.push(ms);
                    }
                    times
                })
            });
            let latencies = scope
                .spawn(|| {
                    current().block_on(async {
                        let mut latencies = Vec::with_capacity(WRITES);
                        for _ in 0..WRITES {
                            let start = Instant::now();
                            send(&app).await;
                            latencies.push(start.elapsed().as_secs_f64() * 1e9);
                        }
                        latencies
                    })
                })
                .join()
                .expect("writer");
            done.store(true, Ordering::Relaxed);
            let lists = reader.map_or_else(Vec::new, |r| r.join().expect("reader"));
            (latencies, lists)
        })
    };
    let (mut quiet, _) = run(false);
    let (mut busy, mut lists) = run(true);
    let mut alone: Vec<f64> = (0..5)
        .map(|_| {
            let (ms, listed) = list();
            assert_eq!(listed, CAPACITY, "a quiet ring lists every entry");
            ms
        })
        .collect();
    assert!(
        !lists.is_empty(),
        "the reader listed the ring while the writer ran"
    );
    let p99 = (percentile(&mut busy, 99.0), percentile(&mut quiet, 99.0));
    let p999 = (percentile(&mut busy, 99.9), percentile(&mut quiet, 99.9));
    let (list_busy, list_alone) = (median(&mut lists), median(&mut alone));
    println!(
        "100 000-entry ring: writer p99 {:.0} ns with a reader listing it ({} lists, median \
         {list_busy:.1} ms), {:.0} ns without; p99.9 {:.0} vs {:.0} ns; a list alone \
         {list_alone:.1} ms",
        p99.0,
        lists.len(),
        p99.1,
        p999.0,
        p999.1,
    );
    let row = |baseline: &str, metric: &'static str, unit, (ours, base): (f64, f64)| {
        Comparison::lower_is_better(SCENARIO, baseline.to_string(), metric, unit, ours, base)
    };
    emit(&[
        row(
            "the same writer, no reader",
            "100 000-entry ring, a reader listing it in a loop: writer's captured POST p99 latency",
            "ns",
            p99,
        ),
        row(
            "the same writer, no reader",
            "100 000-entry ring, a reader listing it in a loop: writer's captured POST p99.9 latency",
            "ns",
            p999,
        ),
        row(
            "the same list, no writer",
            "100 000-entry ring, a writer capturing: time of one entries()",
            "ms",
            (list_busy, list_alone),
        ),
    ]);
}
