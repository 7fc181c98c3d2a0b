//! The JSON the cluster cards render: summaries of nodes, pods, events and jobs.

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Event, Node, Pod};
use serde::Serialize;

use crate::error::ApiError;

/// One cluster's AKS card: node and pod counts, or why they are missing.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct AksCard {
    /// The cluster.
    pub cluster: String,
    /// Nodes, if the node list worked.
    pub nodes: Option<usize>,
    /// Nodes reporting `Ready=True`.
    pub ready_nodes: Option<usize>,
    /// Pods in every namespace, if the pod list worked.
    pub pods: Option<usize>,
    /// Pods in phase `Running`.
    pub running_pods: Option<usize>,
    /// The errors of the reads that failed.
    pub errors: Vec<String>,
}

impl AksCard {
    pub(super) fn new(
        cluster: &str,
        nodes: Result<Vec<Node>, ApiError>,
        pods: Result<Vec<Pod>, ApiError>,
    ) -> Self {
        let mut errors = Vec::new();
        let nodes = nodes.map_err(|e| errors.push(e.to_string())).ok();
        let pods = pods.map_err(|e| errors.push(e.to_string())).ok();
        Self {
            cluster: cluster.to_string(),
            ready_nodes: nodes
                .as_ref()
                .map(|nodes| nodes.iter().filter(|n| node_ready(n)).count()),
            nodes: nodes.as_ref().map(Vec::len),
            running_pods: pods.as_ref().map(|pods| {
                pods.iter()
                    .filter(|p| {
                        p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
                    })
                    .count()
            }),
            pods: pods.as_ref().map(Vec::len),
            errors,
        }
    }
}

fn node_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|conditions| {
            conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        })
}

/// One node of a cluster detail.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct NodeRow {
    /// The node's name.
    pub name: String,
    /// `Ready=True`.
    pub ready: bool,
}

/// One warning event.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct WarningRow {
    /// The event's reason, e.g. `BackOff`.
    pub reason: String,
    /// The object it is about, `Kind/name`.
    pub object: String,
    /// The message.
    pub message: String,
}

/// A cluster's nodes and the warnings in its warmup namespace.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct AksDetail {
    /// The cluster.
    pub cluster: String,
    /// Its nodes, sorted by name.
    pub nodes: Vec<NodeRow>,
    /// Warning events in the warmup namespace.
    pub warnings: Vec<WarningRow>,
}

impl AksDetail {
    pub(super) fn new(cluster: &str, nodes: Vec<Node>, events: Vec<Event>) -> Self {
        let mut nodes: Vec<NodeRow> = nodes
            .iter()
            .map(|n| NodeRow {
                name: n.metadata.name.clone().unwrap_or_default(),
                ready: node_ready(n),
            })
            .collect();
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        let warnings = events
            .into_iter()
            .map(|e| WarningRow {
                reason: e.reason.unwrap_or_default(),
                object: format!(
                    "{}/{}",
                    e.involved_object.kind.unwrap_or_default(),
                    e.involved_object.name.unwrap_or_default()
                ),
                message: e.message.unwrap_or_default(),
            })
            .collect();
        Self {
            cluster: cluster.to_string(),
            nodes,
            warnings,
        }
    }
}

/// One Kubernetes job.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct JobRow {
    /// The job's name.
    pub name: String,
    /// `succeeded`, `failed` or `active`.
    pub state: &'static str,
}

/// The jobs of one cluster, or why they are missing.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct ClusterJobs {
    /// The cluster.
    pub cluster: String,
    /// Its jobs (empty when the read failed).
    pub jobs: Vec<JobRow>,
    /// The read's error, if it failed.
    pub error: Option<String>,
}

impl ClusterJobs {
    pub(super) fn new(cluster: &str, jobs: Result<Vec<Job>, ApiError>) -> Self {
        let (jobs, error) = match jobs {
            Ok(jobs) => (jobs.iter().map(job_row).collect(), None),
            Err(e) => (Vec::new(), Some(e.to_string())),
        };
        Self {
            cluster: cluster.to_string(),
            jobs,
            error,
        }
    }
}

fn job_row(job: &Job) -> JobRow {
    let status = job.status.as_ref();
    let count = |f: fn(&k8s_openapi::api::batch::v1::JobStatus) -> Option<i32>| {
        status.and_then(f).unwrap_or(0)
    };
    let state = if count(|s| s.succeeded) > 0 {
        "succeeded"
    } else if count(|s| s.failed) > 0 {
        "failed"
    } else {
        "active"
    };
    JobRow {
        name: job.metadata.name.clone().unwrap_or_default(),
        state,
    }
}
