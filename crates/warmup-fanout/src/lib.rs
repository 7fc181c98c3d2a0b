//! Phased, bounded, parallel reads that degrade to defaults instead of failing.
//!
//! Seed 001: a dashboard's `k8s_warmup_status` made up to 18 *sequential* Kubernetes calls per
//! refresh (six independent top-level reads, then lists and up to 12 pod-log tails), so its wall
//! time was the sum of 18 round trips, and one failing call failed the whole status. The fix fans
//! the independent reads out, starts each dependent read as soon as the result it needs is in,
//! bounds how many run at once, and turns any failure into that read's default plus a report.
//!
//! - [`FanOut`]: the generic engine. Named reads ([`ReadSpec`]: name, default, timeout) run
//!   concurrently under one bound (a semaphore over a `JoinSet`); [`FanOut::read_after`] starts
//!   a read when the [`Handle`]s it depends on resolve; [`FanOut::fan_after`] turns resolved
//!   values into a group of reads (one per pod, say) with its own bound. Errors, timeouts and
//!   panics are contained per read: the read resolves to its default, siblings carry on, and
//!   the [`FanOutReport`] says which read degraded, why, and how long each took.
//! - [`warmup_status`]: the seed's read over a `kube::Client`. Six independent reads (warmup
//!   jobs, nodes, the warmup daemonset, the warmup configmap, warning events, warmup pods), then
//!   stale-node marking and up to [`MAX_LOG_TAILS`] pod-log tails, each URL requested once, into
//!   a serialisable [`WarmupStatus`] (per-node, per-database chips). The conventions it reads
//!   (labels, configmap keys, log lines) are in docs/warmup-fanout.md.
//!
//! ```no_run
//! # async fn demo(client: kube::Client) {
//! use warmup_fanout::{WarmupOptions, warmup_status};
//!
//! // Never fails: a read that fails is its default, and is listed in `status.reads`.
//! let status = warmup_status(client, "warmup", &WarmupOptions::from_env()).await;
//! for node in &status.nodes {
//!     println!("{} stale={:?} chips={:?}", node.name, node.stale, node.databases);
//! }
//! for failed in status.reads.failures() {
//!     println!("{} degraded: {}", failed.name, failed.outcome.describe());
//! }
//! # }
//! ```
//!
//! # Example: the engine
//!
//! ```
//! use std::time::Duration;
//! use warmup_fanout::{FanOut, FanOutConfig, Outcome, ReadSpec};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let mut fan = FanOut::new(FanOutConfig::default().max_in_flight(6));
//! let nodes = fan.read(ReadSpec::new("nodes", Vec::<String>::new()), async {
//!     Ok::<_, std::io::Error>(vec!["node-a".to_string(), "node-b".to_string()])
//! });
//! let config = fan.read(
//!     ReadSpec::new("config", 0_u32).timeout(Duration::from_millis(50)),
//!     async { Err::<u32, _>(std::io::Error::other("HTTP 500")) },
//! );
//! // Starts as soon as `nodes` and `config` are in; gets their values (or defaults).
//! let summary = fan.read_after(
//!     ReadSpec::new("summary", String::new()),
//!     (nodes.clone(), config.clone()),
//!     |(nodes, generation)| async move {
//!         Ok::<_, std::io::Error>(format!("{} nodes at generation {generation}", nodes.len()))
//!     },
//! );
//! let report = fan.join().await;
//!
//! assert_eq!(*summary.value(), "2 nodes at generation 0");
//! assert!(matches!(report.get("config").unwrap().outcome, Outcome::Degraded { .. }));
//! assert_eq!(report.get("summary").unwrap().phase, 2);
//! assert_eq!(report.phases(), 2);
//! # }
//! ```

// The README's example compiles (and runs) as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

mod error;
mod fanout;
mod warmup;

pub use error::ReadError;
pub use fanout::{
    BoxError, Dependencies, FanOut, FanOutConfig, FanOutReport, GroupRead, Handle,
    MAX_IN_FLIGHT_LIMIT, MAX_READ_TIMEOUT, Outcome, ReadReport, ReadSpec,
};
pub use warmup::{
    ChipState, DaemonSetSummary, DatabaseChip, GENERATION_LABEL, JobState, JobSummary, LogsSummary,
    MAX_LOG_TAILS, NODE_LABEL, NodeWarmup, StaleReason, WarmupOptions, WarmupStatus, WarningEvent,
    warmup_status,
};
