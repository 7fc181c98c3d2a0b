//! The serialisable `WarmupStatus` a dashboard renders as per-node, per-database chips.

use serde::{Deserialize, Serialize};

use crate::FanOutReport;

/// The warmup state of one namespace, assembled from whatever reads succeeded.
///
/// Always produced: a read that failed contributes its default (nothing, or "unknown") and is
/// listed in [`WarmupStatus::reads`] with its reason.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct WarmupStatus {
    /// The namespace read.
    pub namespace: String,
    /// The configmap's `generation`; `None` when the configmap could not be read.
    pub generation: Option<u64>,
    /// The databases to pre-stage, from the configmap, in its order.
    pub databases: Vec<String>,
    /// One entry per node, sorted by name.
    pub nodes: Vec<NodeWarmup>,
    /// The warmup daemonset's rollout, if it could be read.
    pub daemonset: Option<DaemonSetSummary>,
    /// Every warmup job, newest first; empty when the jobs read failed (see `reads`).
    pub jobs: Vec<JobSummary>,
    /// The newest warning events in the namespace (at most the configured number).
    pub warnings: Vec<WarningEvent>,
    /// How many warmup pods there were and how many log tails were read.
    pub logs: LogsSummary,
    /// Every read's outcome and timing.
    pub reads: FanOutReport,
    /// Whether every read succeeded (nothing in this status is a default).
    pub complete: bool,
}

/// The warmup of one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct NodeWarmup {
    /// The node's name.
    pub name: String,
    /// Whether the node reports condition `Ready=True`.
    pub ready: bool,
    /// Why the node's warmup is stale; `None` when it is current (or unknown, see `job`).
    pub stale: Option<StaleReason>,
    /// The newest warmup job for this node, if any.
    pub job: Option<String>,
    /// The warmup pods scheduled on this node.
    pub pods: Vec<String>,
    /// One chip per configmap database, in the configmap's order.
    pub databases: Vec<DatabaseChip>,
}

/// Why a node's warmup is stale.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
#[non_exhaustive]
pub enum StaleReason {
    /// No warmup job targets this node.
    Missing,
    /// The node's newest warmup job failed.
    Failed {
        /// The failed job.
        job: String,
    },
    /// The node's newest warmup job ran for an older configmap generation (or none).
    Outdated {
        /// The job.
        job: String,
        /// The generation the job was built for (`None`: unlabelled).
        job_generation: Option<u64>,
        /// The configmap's current generation.
        current: u64,
    },
}

/// One database on one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct DatabaseChip {
    /// The database's name.
    pub name: String,
    /// Its state on this node.
    pub state: ChipState,
    /// Progress in percent, when a log line reported it.
    pub percent: Option<u8>,
}

/// The state of one database on one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ChipState {
    /// Staged for the current generation.
    Ready,
    /// Being staged now.
    Staging,
    /// Waiting to be staged.
    Queued,
    /// Staging failed.
    Failed,
    /// Staged for an older generation.
    Stale,
    /// No warmup job for this node.
    Missing,
    /// Not known (the reads that would tell failed, or nothing reported it).
    Unknown,
}

/// A warmup job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct JobSummary {
    /// The job's name.
    pub name: String,
    /// The node it pre-stages (label `warmup/node`).
    pub node: Option<String>,
    /// The configmap generation it was built for (label `warmup/generation`).
    pub generation: Option<u64>,
    /// Where it is.
    pub state: JobState,
    /// Its creation time (RFC 3339), if set.
    pub created: Option<String>,
}

/// Where a job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum JobState {
    /// Pods are active.
    Running,
    /// Completed successfully.
    Succeeded,
    /// Failed (a `Failed` condition, or failed pods and nothing else).
    Failed,
    /// Nothing reported yet.
    Pending,
}

/// The warmup daemonset's rollout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct DaemonSetSummary {
    /// The daemonset's name.
    pub name: String,
    /// Nodes that should run a warmup agent.
    pub desired: i32,
    /// Nodes whose agent is ready.
    pub ready: i32,
    /// Nodes whose agent runs the current template.
    pub updated: i32,
    /// Whether the controller has observed the newest spec and every agent is ready and current.
    pub rolled_out: bool,
}

/// A warning event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct WarningEvent {
    /// `Kind/name` of the object it is about.
    pub object: String,
    /// The machine-readable reason, e.g. `BackOff`.
    pub reason: String,
    /// The human-readable message.
    pub message: String,
    /// How many times it happened.
    pub count: i32,
    /// When it last happened (RFC 3339), if known.
    pub last_seen: Option<String>,
}

/// The warmup pods and their log tails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[non_exhaustive]
pub struct LogsSummary {
    /// Warmup pods listed.
    pub pods: usize,
    /// Log tails requested (at most the cap).
    pub requested: usize,
    /// Log tails read successfully.
    pub read: usize,
    /// Pods left out by the cap.
    pub skipped: usize,
}
