//! `warmup_status` against testkit's in-process Kubernetes API server: URLs, content, caps (W3).
//!
//! The server sits on real sockets, so these tests run in real time; they assert what was
//! requested and returned, never an upper bound on time.

mod support;

use std::time::{Duration, Instant};

use testkit::k8s::{Fault, Route};
use warmup_fanout::{
    ChipState, JobState, Outcome, StaleReason, WarmupOptions, WarmupStatus, warmup_status,
};

use support::{NS, get, log_path, seen, serve, top_level_reads};

fn chips(status: &WarmupStatus, node: &str) -> Vec<(String, ChipState, Option<u8>)> {
    let node = status.nodes.iter().find(|n| n.name == node).expect("node");
    node.databases
        .iter()
        .map(|c| (c.name.clone(), c.state, c.percent))
        .collect()
}

// covers W3: the six top-level reads and one log tail per pod, each URL exactly once.
#[tokio::test]
async fn every_expected_url_is_requested_exactly_once() {
    let (server, client) = serve(4).await;
    let status = warmup_status(client, NS, &WarmupOptions::default()).await;

    let mut expected: Vec<_> = top_level_reads()
        .iter()
        .map(|(_, path, query)| get(path, query))
        .collect();
    for i in 0..4 {
        expected.push(get(
            &log_path(&format!("warmup-pod-{i:02}")),
            &[("tailLines", "50")],
        ));
    }
    expected.sort();
    assert_eq!(seen(&server), expected);
    assert!(status.complete, "{:?}", status.reads);
}

// covers W3: the status a dashboard renders: stale marking, chips from logs and jobs.
#[tokio::test]
async fn the_status_marks_stale_nodes_and_renders_chips() {
    let (_server, client) = serve(4).await;
    let status = warmup_status(client, NS, &WarmupOptions::default()).await;

    assert_eq!(status.namespace, NS);
    assert_eq!(status.generation, Some(3));
    assert_eq!(status.databases, ["orders", "users"]);
    let names: Vec<_> = status.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["node-0", "node-1", "node-2", "node-3"]);
    let stale: Vec<_> = status.nodes.iter().map(|n| n.stale.clone()).collect();
    assert_eq!(
        stale,
        [
            None,
            Some(StaleReason::Outdated {
                job: "warmup-node-1".into(),
                job_generation: Some(2),
                current: 3
            }),
            Some(StaleReason::Missing),
            Some(StaleReason::Failed {
                job: "warmup-node-3".into()
            }),
        ]
    );
    assert!(!status.nodes[2].ready);
    assert_eq!(status.nodes[0].pods, ["warmup-pod-00"]);
    assert_eq!(status.nodes[0].job.as_deref(), Some("warmup-node-0"));
    assert_eq!(
        chips(&status, "node-0"),
        [
            ("orders".into(), ChipState::Ready, Some(100)),
            ("users".into(), ChipState::Staging, Some(40)),
        ]
    );
    assert!(
        chips(&status, "node-1")
            .iter()
            .all(|c| c.1 == ChipState::Stale)
    );
    assert!(
        chips(&status, "node-2")
            .iter()
            .all(|c| c.1 == ChipState::Missing)
    );
    // node-3: its log says orders failed; users is not in the log, so the failed job decides.
    assert_eq!(
        chips(&status, "node-3"),
        [
            ("orders".into(), ChipState::Failed, None),
            ("users".into(), ChipState::Failed, None),
        ]
    );

    let jobs: Vec<_> = status
        .jobs
        .iter()
        .map(|j| (j.name.as_str(), j.state))
        .collect();
    assert_eq!(jobs.len(), 3, "the unrelated job is not selected: {jobs:?}");
    assert!(jobs.contains(&("warmup-node-3", JobState::Failed)));
    let ds = status.daemonset.as_ref().expect("daemonset");
    assert_eq!((ds.desired, ds.ready, ds.name.as_str()), (4, 4, "warmup"));
    assert_eq!(status.warnings.len(), 1);
    assert_eq!(status.warnings[0].reason, "BackOff");
    assert_eq!(status.warnings[0].object, "Pod/warmup-pod-00");
    assert_eq!(
        (
            status.logs.pods,
            status.logs.requested,
            status.logs.read,
            status.logs.skipped
        ),
        (4, 4, 4, 0)
    );

    // Every read reported; the dependents are phase 2.
    assert_eq!(status.reads.reads.len(), 6 + 1 + 4);
    assert_eq!(status.reads.phases(), 2);
    assert_eq!(status.reads.get("stale_nodes").unwrap().phase, 2);
    assert_eq!(status.reads.get("log/warmup-pod-03").unwrap().phase, 2);
    assert!(status.reads.reads.iter().all(|r| r.outcome == Outcome::Ok));

    // Serialisable, and it reads back the same.
    let json = serde_json::to_string(&status).unwrap();
    let back: WarmupStatus = serde_json::from_str(&json).unwrap();
    assert_eq!(back, status);
}

// covers W3: at most 12 log tails, whatever the number of pods; running pods by name first.
#[tokio::test]
async fn log_tails_are_capped_at_twelve_with_thirty_pods() {
    let (server, client) = serve(30).await;
    let status = warmup_status(client, NS, &WarmupOptions::default()).await;

    let logs: Vec<String> = server
        .requests()
        .into_iter()
        .filter(|r| r.path.ends_with("/log"))
        .map(|r| r.path)
        .collect();
    assert_eq!(logs.len(), 12);
    let mut expected: Vec<String> = (0..12)
        .map(|i| log_path(&format!("warmup-pod-{i:02}")))
        .collect();
    let mut sorted = logs.clone();
    sorted.sort();
    expected.sort();
    assert_eq!(sorted, expected);
    assert_eq!(
        (
            status.logs.pods,
            status.logs.requested,
            status.logs.read,
            status.logs.skipped
        ),
        (30, 12, 12, 18)
    );
    assert_eq!(server.count(&format!("/api/v1/namespaces/{NS}/pods")), 1);

    // A lower cap is honoured too.
    let (server, client) = serve(30).await;
    let status = warmup_status(client, NS, &WarmupOptions::default().max_logs(5)).await;
    let logs = server
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("/log"))
        .count();
    assert_eq!(
        (logs, status.logs.requested, status.logs.skipped),
        (5, 5, 25)
    );
}

// covers W1, W3: the bound on requests in flight holds at the server. Every request is held
// 100 ms by the server, so N requests through at most B slots take at least N × 100 ms / B;
// without the bound the 6 top-level reads, then the 4 logs, would overlap (about 200 ms).
#[tokio::test]
async fn the_in_flight_bound_holds_at_the_server() {
    let (server, client) = serve(4).await;
    let latency = Duration::from_millis(100);
    server.inject(Route::Any, Fault::latency(latency));
    let bound = 3;
    let started = Instant::now();
    let status = warmup_status(client, NS, &WarmupOptions::default().max_in_flight(bound)).await;
    let elapsed = started.elapsed();

    assert!(status.complete, "{:?}", status.reads);
    let requests = server.requests();
    assert_eq!(requests.len(), 10);
    assert!(status.reads.peak_in_flight <= bound);
    let min = latency * requests.len() as u32 / bound as u32;
    assert!(
        elapsed >= min,
        "{elapsed:?} < {min:?}: more than {bound} in flight"
    );
}
