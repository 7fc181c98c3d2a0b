//! What each simulated cluster holds, and how slow each of its routes answers.

use std::time::Duration;

use k8s_openapi::api::batch::v1::{JobCondition, JobStatus};
use testkit::k8s::{Fault, Fixtures, K8sServer, Route};
use warmup_fanout::{GENERATION_LABEL, NODE_LABEL};

/// The namespace the warmup objects live in (the dashboard's default).
pub const NAMESPACE: &str = "warmup";
/// warmup-fanout's default selector of warmup jobs and pods.
const WARMUP: &str = "app.kubernetes.io/component=warmup";
/// The databases every node pre-stages.
const DATABASES: &[&str] = &["orders", "users", "inventory"];
/// The configmap's current generation.
const GENERATION: u64 = 3;

/// Cluster `index`: `3 + index` nodes (the last one NotReady on the biggest cluster), two
/// warmup pods per node with progress logs, one warmup job per node (one outdated, one
/// failed), the warmup daemonset and configmap, some system pods and a warning event.
pub(super) fn cluster(index: usize) -> Fixtures {
    let mut f = Fixtures::empty();
    let nodes = 3 + index;
    for n in 0..nodes {
        let ready = !(index == 2 && n == nodes - 1);
        f.node(&format!("node-{n}"), "agentpool=warmup", ready);
    }
    f.configmap(
        NAMESPACE,
        "warmup",
        &[
            ("databases", &DATABASES.join("\n")),
            ("generation", &GENERATION.to_string()),
        ],
    )
    .daemonset(
        NAMESPACE,
        "warmup",
        "app.kubernetes.io/component=warmup-agent",
    );
    for n in 0..nodes {
        let node = format!("node-{n}");
        let (generation, succeeded) = match n {
            1 => (GENERATION - 1, true),
            2 => (GENERATION, false),
            _ => (GENERATION, true),
        };
        warmup_job(&mut f, &node, generation, succeeded);
        for p in 0..2 {
            let pod = format!("warmup-{node}-{p}");
            f.pod(
                NAMESPACE,
                &pod,
                WARMUP,
                &node,
                Some(&progress_log(index, n, p)),
            );
        }
        f.pod(
            "kube-system",
            &format!("kube-proxy-{n}"),
            "k8s-app=kube-proxy",
            &node,
            None,
        );
    }
    f.event(
        NAMESPACE,
        "Warning",
        "BackOff",
        ("Pod", "warmup-node-2-0"),
        "Back-off restarting failed container",
    );
    f
}

fn warmup_job(f: &mut Fixtures, node: &str, generation: u64, succeeded: bool) {
    let labels = format!("{WARMUP},{NODE_LABEL}={node},{GENERATION_LABEL}={generation}");
    f.job(NAMESPACE, &format!("warmup-{node}"), &labels);
    if let Some(job) = f.jobs.last_mut() {
        job.status = Some(JobStatus {
            succeeded: Some(i32::from(succeeded)),
            failed: Some(i32::from(!succeeded)),
            conditions: Some(vec![JobCondition {
                type_: if succeeded { "Complete" } else { "Failed" }.into(),
                status: "True".into(),
                ..JobCondition::default()
            }]),
            ..JobStatus::default()
        });
    }
}

/// A warmup pod's log: progress lines the chips are made of.
fn progress_log(cluster: usize, node: usize, pod: usize) -> String {
    let mut log = String::new();
    for (d, db) in DATABASES.iter().enumerate() {
        let pct = (cluster * 37 + node * 23 + pod * 11 + d * 29) % 130;
        let line = match pct {
            100.. => format!("warmup db={db} state=ready pct=100\n"),
            0..=9 => format!("warmup db={db} state=queued\n"),
            _ => format!("warmup db={db} state=staging pct={pct}\n"),
        };
        log.push_str(&format!("2026-05-22T10:00:{d:02}Z INFO {line}"));
    }
    log
}

/// A latency in `[min, max]` ms for `route` on cluster `index`: deterministic (a hash), so
/// runs compare, and spread, so parallel reads finish at different times.
fn latency(index: usize, route: &str, (min, max): (u64, u64)) -> Duration {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ index as u64;
    for b in route.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    let span = max.saturating_sub(min) + 1;
    Duration::from_millis(min + h % span)
}

/// Give every route the server answers a latency in `[min, max]` ms (`(0, 0)`: none).
pub(super) fn inject_latency(
    server: &K8sServer,
    index: usize,
    fixtures: &Fixtures,
    range: (u64, u64),
) {
    if range.1 == 0 {
        return;
    }
    let ns = NAMESPACE;
    let mut routes: Vec<String> = [
        "/api/v1/nodes".to_string(),
        "/api/v1/pods".to_string(),
        format!("/api/v1/namespaces/{ns}/pods"),
        format!("/apis/batch/v1/namespaces/{ns}/jobs"),
        format!("/apis/apps/v1/namespaces/{ns}/daemonsets/warmup"),
        format!("/api/v1/namespaces/{ns}/configmaps/warmup"),
        format!("/api/v1/namespaces/{ns}/events"),
    ]
    .into();
    routes.extend(fixtures.pods.iter().filter_map(|pod| {
        let name = pod.metadata.name.as_deref()?;
        let namespace = pod.metadata.namespace.as_deref()?;
        Some(format!("/api/v1/namespaces/{namespace}/pods/{name}/log"))
    }));
    for route in routes {
        let delay = latency(index, &route, range);
        server.inject(Route::exact(route), Fault::latency(delay));
    }
    // Everything else (discovery, ARM's credential action): the middle of the range.
    server.inject(
        Route::Any,
        Fault::latency(Duration::from_millis((range.0 + range.1) / 2)),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latencies_stay_in_range_and_differ_between_routes() {
        let all: Vec<u64> = (0..3)
            .flat_map(|i| {
                ["/api/v1/nodes", "/api/v1/pods", "/x/log", "/y/log"]
                    .map(|r| latency(i, r, (20, 80)).as_millis() as u64)
            })
            .collect();
        assert!(all.iter().all(|ms| (20..=80).contains(ms)), "{all:?}");
        let distinct: std::collections::BTreeSet<_> = all.iter().collect();
        assert!(distinct.len() > 4, "{all:?}");
    }

    #[test]
    fn clusters_grow_and_logs_carry_progress() {
        for index in 0..3 {
            let f = cluster(index);
            assert_eq!(f.nodes.len(), 3 + index);
            let warmup_pods = f
                .pods
                .iter()
                .filter(|p| p.metadata.namespace.as_deref() == Some(NAMESPACE))
                .count();
            assert_eq!(warmup_pods, 2 * (3 + index));
            assert!(f.logs.values().all(|log| log.contains("warmup db=orders")));
        }
    }
}
