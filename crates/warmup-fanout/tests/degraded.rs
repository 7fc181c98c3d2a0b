//! Each read failing in turn (500, 404, garbage JSON, timeout, reset): that read degrades to its
//! default and is reported, everything else is intact, and a status is always returned (W2).
//!
//! Real time (the server sits on real sockets); no upper bound on time is asserted.

mod support;

use std::time::{Duration, Instant};

use testkit::k8s::{Fault, K8sServer, Route};
use warmup_fanout::{Outcome, WarmupOptions, WarmupStatus, warmup_status};

use support::{NS, fixtures, log_path, serve, top_level_reads};

/// The reads whose value feeds each part of the status.
fn assert_intact(status: &WarmupStatus, baseline: &WarmupStatus, failed: &str) {
    let context = format!("with `{failed}` failing");
    for row in &status.reads.reads {
        if row.name == failed {
            assert!(!row.outcome.is_ok(), "{context}: {row:?}");
        } else {
            assert_eq!(row.outcome, Outcome::Ok, "{context}: {row:?}");
        }
    }
    assert_eq!(status.reads.failures().count(), 1, "{context}");
    assert!(!status.complete, "{context}");

    // The failed read's part is its default ...
    match failed {
        "jobs" => assert!(status.jobs.is_empty()),
        "nodes" => assert!(status.nodes.is_empty()),
        "daemonset" => assert!(status.daemonset.is_none()),
        "configmap" => assert!(status.generation.is_none() && status.databases.is_empty()),
        "warnings" => assert!(status.warnings.is_empty()),
        "pods" => assert_eq!((status.logs.pods, status.logs.requested), (0, 0)),
        other => panic!("unknown read {other}"),
    }
    // ... and every other part is what it is without faults.
    if failed != "jobs" {
        assert_eq!(status.jobs, baseline.jobs, "{context}");
    }
    if failed != "daemonset" {
        assert_eq!(status.daemonset, baseline.daemonset, "{context}");
    }
    if failed != "configmap" {
        assert_eq!(status.generation, baseline.generation, "{context}");
        assert_eq!(status.databases, baseline.databases, "{context}");
    }
    if failed != "warnings" {
        assert_eq!(status.warnings, baseline.warnings, "{context}");
    }
    if failed != "pods" {
        assert_eq!(status.logs, baseline.logs, "{context}");
    }
    if failed != "nodes" {
        let names = |s: &WarmupStatus| s.nodes.iter().map(|n| n.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(status), names(baseline), "{context}");
    }
    if failed == "daemonset" || failed == "warnings" {
        assert_eq!(status.nodes, baseline.nodes, "{context}");
    }
    if failed == "jobs" {
        // No evidence, no accusation: nothing is marked stale.
        assert!(status.nodes.iter().all(|n| n.stale.is_none()), "{context}");
    }
}

fn reason(status: &WarmupStatus, read: &str) -> String {
    status.reads.get(read).expect("reported").outcome.describe()
}

// covers W2: non-2xx (500, 404) and undecodable bodies, on each of the six reads in turn.
#[tokio::test]
async fn each_read_failing_in_turn_degrades_only_that_read() {
    let (server, client) = serve(4).await;
    let options = WarmupOptions::default();
    let baseline = warmup_status(client.clone(), NS, &options).await;
    assert!(baseline.complete);
    let requests_per_status = server.requests().len();

    let faults = [
        (Fault::status(500), "HTTP 500"),
        (Fault::status(404), "HTTP 404"),
        (Fault::garbage_body(), "undecodable response body"),
    ];
    for (read, path, _) in top_level_reads() {
        for (fault, expected) in &faults {
            server.clear_faults();
            server.clear_requests();
            server.inject(Route::exact(path.clone()), fault.clone());
            let status = warmup_status(client.clone(), NS, &options).await;

            assert_intact(&status, &baseline, read);
            let why = reason(&status, read);
            assert!(why.starts_with(expected), "{read}: {why}");
            // The failure is not retried and nothing else is re-requested.
            assert_eq!(server.count(&path), 1, "{read}");
            let expected_requests = if read == "pods" {
                requests_per_status - 4
            } else {
                requests_per_status
            };
            assert_eq!(server.requests().len(), expected_requests, "{read}");
        }
    }
}

// covers W2: a read slower than its timeout degrades to its default; the status comes back
// without waiting for it. The six cases run side by side, one server each. The timeout is
// generous (the other reads must beat it on a loaded machine); the slow read is held 120 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_read_timing_out_in_turn_degrades_only_that_read() {
    let timeout = Duration::from_secs(5);
    let options = WarmupOptions::default().read_timeout(timeout);
    // One fixture set cloned into every server: fixtures stamp objects with the time they are
    // built, so separately built sets could differ by a second and break the comparison.
    let shared = fixtures(4);
    let baseline_server = K8sServer::with_fixtures(shared.clone()).await.unwrap();
    let client = baseline_server.client_cert().await.unwrap();
    let baseline = warmup_status(client, NS, &options).await;

    let cases = top_level_reads().into_iter().map(|(read, path, _)| {
        let options = options.clone();
        let shared = shared.clone();
        async move {
            let server = K8sServer::with_fixtures(shared).await.unwrap();
            server.inject(Route::exact(path), Fault::latency(Duration::from_secs(120)));
            let client = server.client_cert().await.unwrap();
            let started = Instant::now();
            let status = warmup_status(client, NS, &options).await;
            (read, status, started.elapsed())
        }
    });
    for (read, status, elapsed) in futures::future::join_all(cases).await {
        assert_intact(&status, &baseline, read);
        assert_eq!(
            status.reads.get(read).unwrap().outcome,
            Outcome::TimedOut { after: timeout },
            "{read}"
        );
        assert!(
            elapsed < Duration::from_secs(120),
            "{read} waited for the slow read"
        );
    }
}

// covers W2: a log tail failing (500, connection reset) degrades only that pod's log.
#[tokio::test]
async fn a_failing_log_tail_degrades_only_that_pod() {
    let (server, client) = serve(4).await;
    server.inject(Route::exact(log_path("warmup-pod-01")), Fault::status(500));
    server.inject(Route::exact(log_path("warmup-pod-02")), Fault::reset());
    let status = warmup_status(client, NS, &WarmupOptions::default()).await;

    let failed: Vec<_> = status.reads.failures().map(|r| r.name.as_str()).collect();
    assert_eq!(failed, ["log/warmup-pod-01", "log/warmup-pod-02"]);
    assert!(reason(&status, "log/warmup-pod-01").starts_with("HTTP 500"));
    assert!(
        reason(&status, "log/warmup-pod-02").starts_with("request failed"),
        "{}",
        reason(&status, "log/warmup-pod-02")
    );
    assert_eq!((status.logs.requested, status.logs.read), (4, 2));
    // node-0's pod was read: its chips still come from its log.
    let node0 = &status.nodes[0];
    assert_eq!(node0.databases[0].percent, Some(100));
}

// covers W2: with every request failing, a status still comes back, fully degraded.
#[tokio::test]
async fn a_status_is_returned_when_every_read_fails() {
    let (server, client) = serve(4).await;
    server.inject(Route::Any, Fault::status(503));
    let status = warmup_status(client, NS, &WarmupOptions::default()).await;

    assert!(!status.complete);
    assert_eq!(status.reads.failures().count(), 6);
    assert!(status.reads.get("stale_nodes").unwrap().outcome.is_ok());
    assert!(status.nodes.is_empty() && status.jobs.is_empty() && status.warnings.is_empty());
    assert_eq!(status.logs.requested, 0);
    assert_eq!(server.requests().len(), 6, "no retries, no log requests");
}
