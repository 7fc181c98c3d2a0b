//! What each simulated cluster holds, and how slow each of its routes answers.

use std::time::Duration;

use k8s_openapi::api::batch::v1::{JobCondition, JobStatus};
use k8s_openapi::api::core::v1::NodeCondition;
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
        job.status = Some(finished(succeeded));
    }
}

/// A warmup pod's log: progress lines the chips are made of.
fn progress_log(cluster: usize, node: usize, pod: usize) -> String {
    progress_log_at(cluster, node, pod, 0)
}

/// The same log at evolution step `step`: every database moves 9 points a step through
/// queued, staging 10–99 % and ready, then starts over (a new generation staging).
fn progress_log_at(cluster: usize, node: usize, pod: usize, step: u64) -> String {
    let mut log = String::new();
    for (d, db) in DATABASES.iter().enumerate() {
        let base = (cluster * 37 + node * 23 + pod * 11 + d * 29) as u64;
        let pct = (base + step * 9) % 130;
        let line = match pct {
            100.. => format!("warmup db={db} state=ready pct=100\n"),
            0..=9 => format!("warmup db={db} state=queued\n"),
            _ => format!("warmup db={db} state=staging pct={pct}\n"),
        };
        log.push_str(&format!("2026-05-22T10:00:{d:02}Z INFO {line}"));
    }
    log
}

/// Steps a flapping node stays NotReady, out of every [`FLAP_PERIOD`].
const FLAP_DOWN: u64 = 2;
/// A node of each cluster goes NotReady for [`FLAP_DOWN`] steps out of this many.
const FLAP_PERIOD: u64 = 8;
/// A maintenance job starts every this many steps on each cluster...
const JOB_EVERY: u64 = 6;
/// ...and succeeds this many steps later.
const JOB_RUNS: u64 = 3;
/// Finished maintenance jobs kept (older ones are deleted, so the fixtures stay bounded).
const JOBS_KEPT: usize = 3;
/// The label of the maintenance jobs (not warmup-fanout's selector: they only show in the
/// jobs card).
const MAINTENANCE: &str = "app.kubernetes.io/component=reindex";

/// Cluster `index` at evolution step `step` (1, 2, …): warmup progress advances in every pod
/// log, `node-1` goes NotReady for 2 steps out of 8 (each cluster at its own phase), and a
/// maintenance job starts every 6 steps and succeeds 3 steps later. A pure function of the
/// step, so a page polled twice a step later always shows a change.
pub(super) fn evolve(f: &mut Fixtures, index: usize, step: u64) {
    let nodes = f.nodes.len();
    for n in 0..nodes {
        for p in 0..2 {
            let key = (NAMESPACE.to_string(), format!("warmup-node-{n}-{p}"));
            if let Some(log) = f.logs.get_mut(&key) {
                *log = progress_log_at(index, n, p, step);
            }
        }
    }
    let phase = (step + index as u64 * 3) % FLAP_PERIOD;
    let flapping_ready = phase < FLAP_PERIOD - FLAP_DOWN;
    if let Some(node) = f
        .nodes
        .iter_mut()
        .find(|node| node.metadata.name.as_deref() == Some("node-1"))
    {
        set_ready(node, flapping_ready);
    }
    for job in &mut f.jobs {
        let started = job
            .metadata
            .name
            .as_deref()
            .and_then(|name| name.strip_prefix("reindex-"))
            .and_then(|n| n.parse::<u64>().ok());
        let running = job.status.as_ref().and_then(|s| s.active).unwrap_or(0) > 0;
        if let Some(started) = started
            && running
            && step >= started + JOB_RUNS
        {
            job.status = Some(finished(true));
        }
    }
    if (step + index as u64).is_multiple_of(JOB_EVERY) {
        f.job(NAMESPACE, &format!("reindex-{step}"), MAINTENANCE);
        if let Some(job) = f.jobs.last_mut() {
            job.status = Some(JobStatus {
                active: Some(1),
                ..JobStatus::default()
            });
        }
        let maintenance: Vec<String> = f
            .jobs
            .iter()
            .filter_map(|job| job.metadata.name.clone())
            .filter(|name| name.starts_with("reindex-"))
            .collect();
        let excess = maintenance.len().saturating_sub(JOBS_KEPT + 1);
        let drop: Vec<&String> = maintenance.iter().take(excess).collect();
        f.jobs.retain(|job| {
            !job.metadata
                .name
                .as_ref()
                .is_some_and(|n| drop.contains(&n))
        });
    }
}

/// Mark `node` Ready (a fresh heartbeat) or NotReady (`Unknown`, as when the kubelet stops
/// reporting).
fn set_ready(node: &mut k8s_openapi::api::core::v1::Node, ready: bool) {
    let status = node.status.get_or_insert_with(Default::default);
    let conditions = status.conditions.get_or_insert_with(Vec::new);
    conditions.retain(|c| c.type_ != "Ready");
    conditions.push(NodeCondition {
        type_: "Ready".into(),
        status: if ready { "True" } else { "Unknown" }.into(),
        reason: Some(
            if ready {
                "KubeletReady"
            } else {
                "NodeStatusUnknown"
            }
            .into(),
        ),
        ..NodeCondition::default()
    });
}

fn finished(succeeded: bool) -> JobStatus {
    JobStatus {
        succeeded: Some(i32::from(succeeded)),
        failed: Some(i32::from(!succeeded)),
        conditions: Some(vec![JobCondition {
            type_: if succeeded { "Complete" } else { "Failed" }.into(),
            status: "True".into(),
            ..JobCondition::default()
        }]),
        ..JobStatus::default()
    }
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

    fn logs(f: &Fixtures) -> Vec<String> {
        f.logs.values().cloned().collect()
    }

    fn node_ready(f: &Fixtures, name: &str) -> bool {
        f.nodes
            .iter()
            .find(|n| n.metadata.name.as_deref() == Some(name))
            .and_then(|n| n.status.as_ref()?.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
            .is_some_and(|c| c.status == "True")
    }

    fn job_counts(f: &Fixtures) -> (usize, usize) {
        let maintenance = f.jobs.iter().filter(|j| {
            j.metadata
                .name
                .as_deref()
                .is_some_and(|n| n.starts_with("reindex-"))
        });
        maintenance.fold((0, 0), |(active, done), job| {
            let status = job.status.as_ref();
            if status.and_then(|s| s.active).unwrap_or(0) > 0 {
                (active + 1, done)
            } else if status.and_then(|s| s.succeeded).unwrap_or(0) > 0 {
                (active, done + 1)
            } else {
                (active, done)
            }
        })
    }

    #[test]
    fn clusters_evolve_every_step_and_stay_bounded() {
        let mut f = cluster(0);
        let mut previous = logs(&f);
        let (mut went_down, mut came_back, mut finished_jobs) = (false, false, 0);
        for step in 1..=48 {
            let was_ready = node_ready(&f, "node-1");
            evolve(&mut f, 0, step);
            let now = logs(&f);
            assert_ne!(now, previous, "step {step}: warmup progress did not move");
            previous = now;
            let ready = node_ready(&f, "node-1");
            went_down |= was_ready && !ready;
            came_back |= !was_ready && ready;
            finished_jobs = finished_jobs.max(job_counts(&f).1);
            assert!(
                f.jobs.len() <= 3 + JOBS_KEPT + 1,
                "step {step}: {} jobs",
                f.jobs.len()
            );
        }
        assert!(went_down && came_back, "node-1 never flapped");
        assert!(finished_jobs > 0, "no maintenance job finished");
        // The warmup jobs (what warmup-fanout reads) are untouched.
        assert_eq!(
            f.jobs
                .iter()
                .filter(|j| j
                    .metadata
                    .name
                    .as_deref()
                    .is_some_and(|n| n.starts_with("warmup-")))
                .count(),
            3
        );
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
