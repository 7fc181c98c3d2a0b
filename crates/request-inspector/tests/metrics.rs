//! The `inspector.*` series (issue #19), recorded through the `metrics` facade with the
//! debugging recorder installed for this test only.

use std::convert::Infallible;

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::{BodyExt, Full};
use metrics::SharedString;
use metrics::Unit;
use metrics_util::CompositeKey;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use request_inspector::{Inspector, InspectorConfig};
use tower::{Service, ServiceExt, service_fn};

/// The caller an authentication layer would have put in the extensions.
#[derive(Clone)]
struct Account(&'static str);

fn owner(extensions: &http::Extensions) -> Option<String> {
    extensions.get::<Account>().map(|a| a.0.to_owned())
}

async fn echo(
    request: Request<request_inspector::InspectBody<Full<Bytes>>>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let body = request
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    Ok(Response::new(Full::new(body)))
}

async fn send<S>(
    service: &mut S,
    method: Method,
    path: &'static str,
    body: &'static str,
    account: bool,
) where
    S: Service<
            Request<Full<Bytes>>,
            Response = Response<request_inspector::InspectBody<Full<Bytes>>>,
            Error = Infallible,
        >,
{
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .expect("request");
    if account {
        request.extensions_mut().insert(Account("acct-1"));
    }
    let response = service.ready().await.unwrap().call(request).await.unwrap();
    let _ = response.into_body().collect().await.expect("body");
}

/// One snapshot of the recorder (taking it resets the debugging recorder's values).
type Snapshot = Vec<(CompositeKey, Option<Unit>, Option<SharedString>, DebugValue)>;

/// `(value, unit)` of the series `name` with the labels `labels`.
fn series<'a>(
    snapshot: &'a Snapshot,
    name: &str,
    labels: &[(&str, &str)],
) -> (&'a DebugValue, Option<Unit>) {
    snapshot
        .iter()
        .find(|(key, ..)| {
            let key = key.key();
            key.name() == name
                && key.labels().count() == labels.len()
                && labels
                    .iter()
                    .all(|(k, v)| key.labels().any(|l| l.key() == *k && l.value() == *v))
        })
        .map(|(_, unit, _, value)| (value, *unit))
        .unwrap_or_else(|| panic!("no series {name} {labels:?}"))
}

fn counter(snapshot: &Snapshot, name: &str, labels: &[(&str, &str)]) -> u64 {
    match series(snapshot, name, labels).0 {
        DebugValue::Counter(n) => *n,
        other => panic!("{name} is not a counter: {other:?}"),
    }
}

fn gauge(snapshot: &Snapshot, name: &str) -> f64 {
    match series(snapshot, name, &[]).0 {
        DebugValue::Gauge(v) => v.into_inner(),
        other => panic!("{name} is not a gauge: {other:?}"),
    }
}

// Issue #19: requests by mode (captured / streamed / unowned), body bytes captured by body,
// truncated bodies, evictions, and the ring's entries and bytes, with the units promised in the
// guide; labels are bounded words, never a path, id or owner.
#[test]
fn inspector_series_count_modes_bytes_and_evictions() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap()
            .block_on(async {
                let inspector = Inspector::new(
                    InspectorConfig::new()
                        .polling_prefixes(["/api/monitor/"])
                        .unwrap()
                        .capacity(2)
                        .body_limit(8)
                        .owner_from(owner)
                        .require_owner(true),
                );
                let mut app = tower::ServiceBuilder::new()
                    .layer(inspector.layer())
                    .service(service_fn(echo));
                for _ in 0..3 {
                    send(&mut app, Method::GET, "/api/monitor/aks", "", false).await;
                }
                // Captured: 5 + 5 bytes, then 8 + 8 of a 12-byte body (both cut), then 3 + 3.
                send(&mut app, Method::POST, "/api/jobs", "job-1", true).await;
                send(&mut app, Method::POST, "/api/jobs", "job-2-longer", true).await;
                send(&mut app, Method::DELETE, "/api/jobs/1", "del", true).await;
                // No owner: counted, not stored.
                send(&mut app, Method::POST, "/api/jobs", "keyless", false).await;

                let snap = snapshotter.snapshot().into_vec();
                let requests = "inspector.requests";
                assert_eq!(counter(&snap, requests, &[("mode", "streamed")]), 3);
                assert_eq!(counter(&snap, requests, &[("mode", "captured")]), 3);
                assert_eq!(counter(&snap, requests, &[("mode", "unowned")]), 1);
                let bytes = "inspector.captured.bytes";
                assert_eq!(counter(&snap, bytes, &[("body", "request")]), 16);
                assert_eq!(counter(&snap, bytes, &[("body", "response")]), 16);
                assert_eq!(
                    series(&snap, bytes, &[("body", "request")]).1,
                    Some(Unit::Bytes)
                );
                assert_eq!(counter(&snap, "inspector.bodies.truncated", &[]), 2);
                assert_eq!(counter(&snap, "inspector.ring.evictions", &[]), 1);
                assert_eq!(gauge(&snap, "inspector.ring.entries"), 2.0);
                let stats = inspector.stats();
                let bytes_before = gauge(&snap, "inspector.ring.bytes");
                assert_eq!(
                    bytes_before,
                    (stats.ring_bytes + stats.ring_slot_bytes) as f64
                );
                assert_eq!(
                    series(&snap, "inspector.ring.bytes", &[]).1,
                    Some(Unit::Bytes)
                );
                // The counters agree with InspectorStats.
                assert_eq!(
                    (
                        stats.passed_through,
                        stats.captured,
                        stats.not_recorded_unowned
                    ),
                    (3, 3, 1)
                );
                assert_eq!((stats.evicted, stats.truncated_bodies), (1, 2));

                // After a clear the gauges follow the emptied ring: one entry, its bytes. The
                // layer moves its gauges up and down (a Prometheus recorder keeps the running
                // value); the debugging recorder's snapshot resets them, so this snapshot holds
                // what moved since the first: the two add up to the ring.
                inspector.clear();
                send(&mut app, Method::POST, "/api/jobs", "job-3", true).await;
                let snap = snapshotter.snapshot().into_vec();
                assert_eq!(2.0 + gauge(&snap, "inspector.ring.entries"), 1.0);
                let stats = inspector.stats();
                assert_eq!(
                    bytes_before + gauge(&snap, "inspector.ring.bytes"),
                    (stats.ring_bytes + stats.ring_slot_bytes) as f64
                );
                // An inspector that goes takes its part out of the gauges (they are summed
                // over a process's inspectors): what it held, since the last snapshot.
                drop((app, inspector));
                let snap = snapshotter.snapshot().into_vec();
                assert_eq!(gauge(&snap, "inspector.ring.entries"), -1.0);
                assert_eq!(
                    gauge(&snap, "inspector.ring.bytes"),
                    -((stats.ring_bytes + stats.ring_slot_bytes) as f64)
                );
            });
    });
}
