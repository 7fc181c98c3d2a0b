//! Stale-node marking, log-pod selection and per-node, per-database chips (pure functions).

use std::collections::BTreeMap;

use super::model::{ChipState, DatabaseChip, JobState, JobSummary, StaleReason};
use super::progress::Progress;
use super::summarize::{NodeInfo, PodInfo};

/// What stale marking found for one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NodeMark {
    /// The node's newest warmup job and its state.
    pub(crate) job: Option<(String, JobState)>,
    pub(crate) stale: Option<StaleReason>,
}

/// Mark every node: its newest job (jobs are newest first) decides. `jobs: None` (the jobs
/// read failed) marks nothing: a node is not called stale on missing evidence. Without a
/// configmap generation, "outdated" cannot be judged and is not reported.
pub(crate) fn mark_stale(
    nodes: &[NodeInfo],
    jobs: Option<&[JobSummary]>,
    generation: Option<u64>,
) -> BTreeMap<String, NodeMark> {
    let Some(jobs) = jobs else {
        return BTreeMap::new();
    };
    nodes
        .iter()
        .map(|node| {
            let newest = jobs.iter().find(|j| j.node.as_deref() == Some(&node.name));
            let mark = match newest {
                None => NodeMark {
                    job: None,
                    stale: Some(StaleReason::Missing),
                },
                Some(job) => NodeMark {
                    job: Some((job.name.clone(), job.state)),
                    stale: staleness(job, generation),
                },
            };
            (node.name.clone(), mark)
        })
        .collect()
}

fn staleness(job: &JobSummary, generation: Option<u64>) -> Option<StaleReason> {
    if job.state == JobState::Failed {
        return Some(StaleReason::Failed {
            job: job.name.clone(),
        });
    }
    let current = generation?;
    let behind = job.generation.is_none_or(|g| g < current);
    behind.then(|| StaleReason::Outdated {
        job: job.name.clone(),
        job_generation: job.generation,
        current,
    })
}

/// The pods whose logs are read: running first, then finished, then the rest, by name within
/// each; at most `max`. Returns the chosen pods and how many were left out.
pub(crate) fn select_log_pods(pods: &[PodInfo], max: usize) -> (Vec<PodInfo>, usize) {
    let rank = |p: &PodInfo| match p.phase.as_deref() {
        Some("Running") => 0,
        Some("Failed") | Some("Succeeded") => 1,
        _ => 2,
    };
    let mut sorted: Vec<&PodInfo> = pods.iter().collect();
    sorted.sort_by(|a, b| rank(a).cmp(&rank(b)).then_with(|| a.name.cmp(&b.name)));
    let chosen: Vec<PodInfo> = sorted.into_iter().take(max).cloned().collect();
    let skipped = pods.len() - chosen.len();
    (chosen, skipped)
}

/// One chip per database for a node. Missing or outdated warmup decides the chip; otherwise
/// the node's log progress (if read), else the job's state, else unknown.
pub(crate) fn chips(
    databases: &[String],
    mark: Option<&NodeMark>,
    progress: &BTreeMap<String, Progress>,
) -> Vec<DatabaseChip> {
    databases
        .iter()
        .map(|db| {
            let (state, percent) = match (mark, progress.get(db)) {
                (
                    Some(NodeMark {
                        stale: Some(StaleReason::Missing),
                        ..
                    }),
                    _,
                ) => (ChipState::Missing, None),
                (
                    Some(NodeMark {
                        stale: Some(StaleReason::Outdated { .. }),
                        ..
                    }),
                    _,
                ) => (ChipState::Stale, None),
                (_, Some(p)) => (p.state, p.percent),
                (
                    Some(NodeMark {
                        job: Some((_, state)),
                        ..
                    }),
                    None,
                ) => (from_job(*state), None),
                _ => (ChipState::Unknown, None),
            };
            DatabaseChip {
                name: db.clone(),
                state,
                percent,
            }
        })
        .collect()
}

fn from_job(state: JobState) -> ChipState {
    match state {
        JobState::Succeeded => ChipState::Ready,
        JobState::Running => ChipState::Staging,
        JobState::Failed => ChipState::Failed,
        JobState::Pending => ChipState::Queued,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str) -> NodeInfo {
        NodeInfo {
            name: name.into(),
            ready: true,
        }
    }

    fn job(name: &str, node: &str, generation: Option<u64>, state: JobState) -> JobSummary {
        JobSummary {
            name: name.into(),
            node: Some(node.into()),
            generation,
            state,
            created: None,
        }
    }

    #[test]
    fn nodes_are_stale_when_warmup_is_missing_failed_or_outdated() {
        let nodes = [node("a"), node("b"), node("c"), node("d"), node("e")];
        // Newest first: b's newest job failed even though an older one succeeded.
        let jobs = [
            job("b-2", "b", Some(3), JobState::Failed),
            job("b-1", "b", Some(3), JobState::Succeeded),
            job("c-1", "c", Some(2), JobState::Succeeded),
            job("d-1", "d", Some(3), JobState::Running),
            job("e-1", "e", None, JobState::Succeeded),
        ];
        let marks = mark_stale(&nodes, Some(&jobs), Some(3));
        assert_eq!(marks["a"].stale, Some(StaleReason::Missing));
        assert_eq!(
            marks["b"].stale,
            Some(StaleReason::Failed { job: "b-2".into() })
        );
        assert_eq!(
            marks["c"].stale,
            Some(StaleReason::Outdated {
                job: "c-1".into(),
                job_generation: Some(2),
                current: 3
            })
        );
        assert_eq!(marks["d"].stale, None);
        assert_eq!(marks["d"].job, Some(("d-1".into(), JobState::Running)));
        assert!(matches!(
            marks["e"].stale,
            Some(StaleReason::Outdated {
                job_generation: None,
                ..
            })
        ));
    }

    #[test]
    fn no_evidence_marks_nothing_stale() {
        let nodes = [node("a"), node("c")];
        assert!(mark_stale(&nodes, None, Some(3)).is_empty(), "jobs unknown");
        let jobs = [job("c-1", "c", Some(1), JobState::Succeeded)];
        let marks = mark_stale(&nodes, Some(&jobs), None);
        assert_eq!(marks["c"].stale, None, "generation unknown: not outdated");
        assert_eq!(marks["a"].stale, Some(StaleReason::Missing));
    }

    fn pod(name: &str, phase: Option<&str>) -> PodInfo {
        PodInfo {
            name: name.into(),
            node: None,
            phase: phase.map(str::to_string),
            containers: vec!["main".into()],
        }
    }

    #[test]
    fn log_pods_prefer_running_then_finished_and_respect_the_cap() {
        let pods = [
            pod("p-pending", Some("Pending")),
            pod("p-done", Some("Succeeded")),
            pod("p-run-b", Some("Running")),
            pod("p-run-a", Some("Running")),
            pod("p-none", None),
        ];
        let (chosen, skipped) = select_log_pods(&pods, 3);
        let names: Vec<_> = chosen.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["p-run-a", "p-run-b", "p-done"]);
        assert_eq!(skipped, 2);
        assert_eq!(select_log_pods(&pods, 0), (vec![], 5));
    }

    #[test]
    fn chips_combine_staleness_progress_and_job_state() {
        let dbs = ["orders".to_string(), "users".to_string()];
        let progress = BTreeMap::from([(
            "orders".to_string(),
            Progress {
                state: ChipState::Staging,
                percent: Some(40),
            },
        )]);
        let running = NodeMark {
            job: Some(("j".into(), JobState::Running)),
            stale: None,
        };
        let chips_of = |mark: Option<&NodeMark>| -> Vec<(ChipState, Option<u8>)> {
            chips(&dbs, mark, &progress)
                .into_iter()
                .map(|c| (c.state, c.percent))
                .collect()
        };
        assert_eq!(
            chips_of(Some(&running)),
            [(ChipState::Staging, Some(40)), (ChipState::Staging, None)]
        );
        let missing = NodeMark {
            job: None,
            stale: Some(StaleReason::Missing),
        };
        assert_eq!(chips_of(Some(&missing)), [(ChipState::Missing, None); 2]);
        let outdated = NodeMark {
            job: Some(("j".into(), JobState::Succeeded)),
            stale: Some(StaleReason::Outdated {
                job: "j".into(),
                job_generation: Some(1),
                current: 2,
            }),
        };
        assert_eq!(chips_of(Some(&outdated)), [(ChipState::Stale, None); 2]);
        assert_eq!(
            chips_of(None),
            [(ChipState::Staging, Some(40)), (ChipState::Unknown, None)]
        );
    }
}
