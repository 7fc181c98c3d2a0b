//! Turning Kubernetes objects into the small summaries the status is built from.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Event, Node, Pod};

use super::model::{DaemonSetSummary, JobState, JobSummary, WarningEvent};

/// The label naming the node a warmup job pre-stages.
pub const NODE_LABEL: &str = "warmup/node";
/// The label naming the configmap generation a warmup job was built for.
pub const GENERATION_LABEL: &str = "warmup/generation";

/// What the warmup configmap says.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct WarmupConfig {
    pub(crate) generation: Option<u64>,
    pub(crate) databases: Vec<String>,
}

/// A node's name and readiness.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NodeInfo {
    pub(crate) name: String,
    pub(crate) ready: bool,
}

/// What the status needs of a warmup pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PodInfo {
    pub(crate) name: String,
    pub(crate) node: Option<String>,
    pub(crate) phase: Option<String>,
    pub(crate) containers: Vec<String>,
}

/// Keys `databases` (names separated by newlines or commas; blanks and `#` lines ignored,
/// duplicates dropped) and `generation` (an unsigned integer; absent or invalid → `None`).
pub(crate) fn config(cm: &ConfigMap) -> WarmupConfig {
    let data = cm.data.as_ref();
    let get = |key: &str| data.and_then(|d| d.get(key)).map(String::as_str);
    let mut databases: Vec<String> = Vec::new();
    for line in get("databases").unwrap_or("").lines() {
        let line = line.trim();
        if line.starts_with('#') {
            continue;
        }
        for name in line.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if !databases.iter().any(|d| d == name) {
                databases.push(name.to_string());
            }
        }
    }
    WarmupConfig {
        generation: get("generation").and_then(|g| g.trim().parse().ok()),
        databases,
    }
}

pub(crate) fn node(node: &Node) -> NodeInfo {
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    NodeInfo {
        name: node.metadata.name.clone().unwrap_or_default(),
        ready,
    }
}

pub(crate) fn pod(pod: &Pod) -> PodInfo {
    let labels = pod.metadata.labels.as_ref();
    PodInfo {
        name: pod.metadata.name.clone().unwrap_or_default(),
        // An empty `spec.nodeName` is no node (a real API server leaves it out; the label
        // then says where the pod runs).
        node: pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .filter(|node| !node.is_empty())
            .or_else(|| labels.and_then(|l| l.get(NODE_LABEL).cloned()))
            .filter(|node| !node.is_empty()),
        phase: pod.status.as_ref().and_then(|s| s.phase.clone()),
        containers: pod
            .spec
            .as_ref()
            .map(|s| s.containers.iter().map(|c| c.name.clone()).collect())
            .unwrap_or_default(),
    }
}

/// Jobs, newest first (by creation time, then name).
pub(crate) fn jobs(jobs: &[Job]) -> Vec<JobSummary> {
    let mut sorted: Vec<&Job> = jobs.iter().collect();
    sorted.sort_by(|a, b| {
        let key = |j: &Job| j.metadata.creation_timestamp.as_ref().map(|t| t.0);
        key(b)
            .cmp(&key(a))
            .then_with(|| a.metadata.name.cmp(&b.metadata.name))
    });
    sorted.into_iter().map(job).collect()
}

fn job(job: &Job) -> JobSummary {
    let labels: BTreeMap<String, String> = job.metadata.labels.clone().unwrap_or_default();
    JobSummary {
        name: job.metadata.name.clone().unwrap_or_default(),
        node: labels.get(NODE_LABEL).cloned(),
        generation: labels
            .get(GENERATION_LABEL)
            .and_then(|g| g.trim().parse().ok()),
        state: job_state(job),
        created: job
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0.to_string()),
    }
}

fn job_state(job: &Job) -> JobState {
    let Some(status) = job.status.as_ref() else {
        return JobState::Pending;
    };
    let condition = |kind: &str| {
        status
            .conditions
            .as_ref()
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == kind && c.status == "True"))
    };
    let (active, succeeded, failed) = (
        status.active.unwrap_or(0),
        status.succeeded.unwrap_or(0),
        status.failed.unwrap_or(0),
    );
    if condition("Failed") {
        JobState::Failed
    } else if condition("Complete") {
        JobState::Succeeded
    } else if active > 0 {
        JobState::Running
    } else if succeeded > 0 {
        JobState::Succeeded
    } else if failed > 0 {
        JobState::Failed
    } else {
        JobState::Pending
    }
}

pub(crate) fn daemonset(ds: &DaemonSet) -> DaemonSetSummary {
    let status = ds.status.clone().unwrap_or_default();
    let updated = status.updated_number_scheduled.unwrap_or(0);
    let observed = match (status.observed_generation, ds.metadata.generation) {
        (Some(seen), Some(current)) => seen >= current,
        _ => true,
    };
    DaemonSetSummary {
        name: ds.metadata.name.clone().unwrap_or_default(),
        desired: status.desired_number_scheduled,
        ready: status.number_ready,
        updated,
        rolled_out: observed
            && status.number_ready == status.desired_number_scheduled
            && updated == status.desired_number_scheduled,
    }
}

/// Warning events only (whatever the server did with the field selector), newest first, at
/// most `max`.
pub(crate) fn warnings(events: &[Event], max: usize) -> Vec<WarningEvent> {
    let mut warnings: Vec<&Event> = events
        .iter()
        .filter(|e| e.type_.as_deref() == Some("Warning"))
        .collect();
    let seen = |e: &Event| {
        e.last_timestamp
            .as_ref()
            .map(|t| t.0)
            .or_else(|| e.event_time.as_ref().map(|t| t.0))
            .or_else(|| e.metadata.creation_timestamp.as_ref().map(|t| t.0))
    };
    warnings.sort_by_key(|e| std::cmp::Reverse(seen(e)));
    warnings
        .into_iter()
        .take(max)
        .map(|e| WarningEvent {
            object: format!(
                "{}/{}",
                e.involved_object.kind.as_deref().unwrap_or("?"),
                e.involved_object.name.as_deref().unwrap_or("?")
            ),
            reason: e.reason.clone().unwrap_or_default(),
            message: e.message.clone().unwrap_or_default(),
            count: e.count.unwrap_or(1),
            last_seen: seen(e).map(|t| t.to_string()),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::batch::v1::{JobCondition, JobStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;

    fn cm(pairs: &[(&str, &str)]) -> ConfigMap {
        ConfigMap {
            data: Some(
                pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..ConfigMap::default()
        }
    }

    #[test]
    fn configmap_lists_databases_in_order_without_blanks_comments_or_duplicates() {
        let parsed = config(&cm(&[
            (
                "databases",
                "orders, users\n# retired: legacy\n\ninventory\nusers,",
            ),
            ("generation", " 7 "),
        ]));
        assert_eq!(parsed.databases, ["orders", "users", "inventory"]);
        assert_eq!(parsed.generation, Some(7));

        let bad = config(&cm(&[("generation", "seven")]));
        assert_eq!(bad, WarmupConfig::default());
        assert_eq!(config(&ConfigMap::default()), WarmupConfig::default());
    }

    fn job_with(status: JobStatus) -> Job {
        Job {
            metadata: ObjectMeta {
                name: Some("j".into()),
                ..ObjectMeta::default()
            },
            status: Some(status),
            ..Job::default()
        }
    }

    #[test]
    fn job_states_follow_conditions_then_counts() {
        let failed_condition = JobStatus {
            active: Some(1),
            conditions: Some(vec![JobCondition {
                type_: "Failed".into(),
                status: "True".into(),
                ..JobCondition::default()
            }]),
            ..JobStatus::default()
        };
        assert_eq!(job_state(&job_with(failed_condition)), JobState::Failed);
        let running = JobStatus {
            active: Some(1),
            failed: Some(1),
            ..JobStatus::default()
        };
        assert_eq!(job_state(&job_with(running)), JobState::Running);
        let done = JobStatus {
            succeeded: Some(1),
            failed: Some(2),
            ..JobStatus::default()
        };
        assert_eq!(job_state(&job_with(done)), JobState::Succeeded);
        let failed = JobStatus {
            failed: Some(1),
            ..JobStatus::default()
        };
        assert_eq!(job_state(&job_with(failed)), JobState::Failed);
        assert_eq!(job_state(&Job::default()), JobState::Pending);
    }
}
