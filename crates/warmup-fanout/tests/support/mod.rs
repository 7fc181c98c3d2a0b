//! Fixtures and request-log helpers shared by the suites over testkit's Kubernetes API server.

#![allow(
    dead_code,
    reason = "each suite uses a different subset of the helpers"
)]

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::{JobCondition, JobStatus};
use testkit::k8s::{Fixtures, K8sServer};

/// The namespace the fixtures live in.
pub(crate) const NS: &str = "warm";
/// The default warmup selector of `WarmupOptions`.
pub(crate) const WARMUP: &str = "app.kubernetes.io/component=warmup";

/// The progress log of a healthy warmup pod.
pub(crate) const HEALTHY_LOG: &str = "2026-05-22T10:00:00Z INFO warmup db=orders state=staging pct=10\n\
     2026-05-22T10:00:05Z INFO warmup db=orders state=ready pct=100\n\
     2026-05-22T10:00:06Z INFO warmup db=users state=staging pct=40\n";

/// Four nodes and a warmup namespace:
/// - `node-0`: current job (generation 3, succeeded); `node-1`: job for generation 2 (outdated);
///   `node-2`: NotReady, no job (missing); `node-3`: its job failed;
/// - configmap `warmup` (`databases: orders, users`, `generation: 3`), daemonset `warmup`;
/// - `pods` running warmup pods `warmup-pod-NN` on `node-(NN % 4)` with progress logs;
/// - one unrelated job, pod and Normal event, and one Warning event.
pub(crate) fn fixtures(pods: usize) -> Fixtures {
    let mut f = Fixtures::empty();
    f.node("node-0", "pool=warm", true)
        .node("node-1", "pool=warm", true)
        .node("node-2", "pool=warm", false)
        .node("node-3", "pool=warm", true)
        .configmap(
            NS,
            "warmup",
            &[("databases", "orders\nusers"), ("generation", "3")],
        )
        .daemonset(NS, "warmup", "app.kubernetes.io/component=warmup-agent");
    warmup_job(&mut f, "node-0", 3, true);
    warmup_job(&mut f, "node-1", 2, true);
    warmup_job(&mut f, "node-3", 3, false);
    f.job(NS, "other", "app=other");
    for i in 0..pods {
        let node = i % 4;
        let log = if node == 3 {
            "warmup db=orders state=failed\n"
        } else {
            HEALTHY_LOG
        };
        f.pod(
            NS,
            &format!("warmup-pod-{i:02}"),
            WARMUP,
            &format!("node-{node}"),
            Some(log),
        );
    }
    f.pod(NS, "other-pod", "app=other", "node-0", Some("other\n"))
        .event(
            NS,
            "Warning",
            "BackOff",
            ("Pod", "warmup-pod-00"),
            "Back-off restarting failed container",
        )
        .event(NS, "Normal", "Scheduled", ("Pod", "other-pod"), "Assigned");
    f
}

fn warmup_job(f: &mut Fixtures, node: &str, generation: u64, succeeded: bool) {
    let labels = format!("{WARMUP},warmup/node={node},warmup/generation={generation}");
    f.job(NS, &format!("warmup-{node}"), &labels);
    let condition = if succeeded { "Complete" } else { "Failed" };
    f.jobs.last_mut().expect("just added").status = Some(JobStatus {
        succeeded: Some(i32::from(succeeded)),
        failed: Some(i32::from(!succeeded)),
        conditions: Some(vec![JobCondition {
            type_: condition.into(),
            status: "True".into(),
            ..JobCondition::default()
        }]),
        ..JobStatus::default()
    });
}

/// A server over `fixtures(pods)` and a fresh mTLS client for it (retries off).
pub(crate) async fn serve(pods: usize) -> (K8sServer, kube::Client) {
    let server = K8sServer::with_fixtures(fixtures(pods))
        .await
        .expect("start the test server");
    let client = server.client_cert().await.expect("build a kube client");
    (server, client)
}

/// One request: method, path and decoded query parameters (empty keys dropped).
pub(crate) type Seen = (String, String, BTreeMap<String, String>);

/// Every request the server saw, decoded, sorted.
pub(crate) fn seen(server: &K8sServer) -> Vec<Seen> {
    let mut seen: Vec<Seen> = server
        .requests()
        .into_iter()
        .map(|r| {
            let query = url::form_urlencoded::parse(r.query.unwrap_or_default().as_bytes())
                .filter(|(k, _)| !k.is_empty())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect();
            (r.method, r.path, query)
        })
        .collect();
    seen.sort();
    seen
}

/// A GET of `path` with `query` pairs.
pub(crate) fn get(path: &str, query: &[(&str, &str)]) -> Seen {
    (
        "GET".into(),
        path.into(),
        query
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect(),
    )
}

/// A read's name, its path and its query pairs.
pub(crate) type Expected = (&'static str, String, Vec<(&'static str, &'static str)>);

/// The six phase-1 reads.
pub(crate) fn top_level_reads() -> Vec<Expected> {
    vec![
        (
            "jobs",
            format!("/apis/batch/v1/namespaces/{NS}/jobs"),
            vec![("labelSelector", WARMUP)],
        ),
        ("nodes", "/api/v1/nodes".to_string(), vec![]),
        (
            "daemonset",
            format!("/apis/apps/v1/namespaces/{NS}/daemonsets/warmup"),
            vec![],
        ),
        (
            "configmap",
            format!("/api/v1/namespaces/{NS}/configmaps/warmup"),
            vec![],
        ),
        (
            "warnings",
            format!("/api/v1/namespaces/{NS}/events"),
            vec![("fieldSelector", "type=Warning")],
        ),
        (
            "pods",
            format!("/api/v1/namespaces/{NS}/pods"),
            vec![("labelSelector", WARMUP)],
        ),
    ]
}

/// The log route of a pod.
pub(crate) fn log_path(pod: &str) -> String {
    format!("/api/v1/namespaces/{NS}/pods/{pod}/log")
}
