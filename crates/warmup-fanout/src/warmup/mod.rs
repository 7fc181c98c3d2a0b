//! `warmup_status`: the seed's warmup read as a phased fan-out over a `kube::Client`.

mod model;
mod options;
mod progress;
mod stale;
mod summarize;

use std::collections::BTreeMap;
use std::convert::Infallible;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Event, Node, Pod};
use kube::Api;
use kube::api::{ListParams, LogParams};

pub use model::{
    ChipState, DaemonSetSummary, DatabaseChip, JobState, JobSummary, LogsSummary, NodeWarmup,
    StaleReason, WarmupStatus, WarningEvent,
};
pub use options::{MAX_LOG_TAILS, WarmupOptions};
pub use summarize::{GENERATION_LABEL, NODE_LABEL};

use crate::{FanOut, FanOutConfig, GroupRead, ReadError, ReadSpec};
use progress::{Progress, parse_log};
use summarize::PodInfo;

/// A log tail that was read: the pod's node and what its progress lines say.
#[derive(Debug)]
struct PodLog {
    node: Option<String>,
    progress: BTreeMap<String, Progress>,
}

/// Read the warmup state of `namespace` and never fail.
///
/// Phase 1, concurrently: warmup jobs, nodes, the warmup daemonset, the warmup configmap,
/// warning events and warmup pods (reads `jobs`, `nodes`, `daemonset`, `configmap`,
/// `warnings`, `pods`). Phase 2, each as soon as its inputs are in: stale-node marking
/// (`stale_nodes`, after nodes, jobs and the configmap; no request) and the log tails of up to
/// [`WarmupOptions::max_logs`] warmup pods, at most [`MAX_LOG_TAILS`] at a time (`log/<pod>`,
/// after the pod list). At most [`WarmupOptions::max_in_flight`] requests are in flight; each
/// URL is requested once. A read that answers non-2xx, times out or cannot be decoded
/// degrades to its default and is reported in [`WarmupStatus::reads`].
///
/// Give it a client with retries off (or few): a read's timeout covers kube's retries too.
pub async fn warmup_status(
    client: kube::Client,
    namespace: &str,
    options: &WarmupOptions,
) -> WarmupStatus {
    // The fields are public: clamp whatever was written into them (SPEC X5, W3's cap of 12).
    let options = &options.clamped();
    let mut fan = FanOut::new(
        FanOutConfig::default()
            .max_in_flight(options.max_in_flight)
            .default_timeout(options.read_timeout),
    );
    let warmup = ListParams::default().labels(&options.selector);

    let api: Api<Job> = Api::namespaced(client.clone(), namespace);
    let params = warmup.clone();
    let jobs = fan.read(ReadSpec::new("jobs", None), async move {
        let list = api.list(&params).await.map_err(ReadError::from)?;
        Ok::<_, ReadError>(Some(summarize::jobs(&list.items)))
    });

    let api: Api<Node> = Api::all(client.clone());
    let params = match &options.node_selector {
        Some(selector) => ListParams::default().labels(selector),
        None => ListParams::default(),
    };
    let nodes = fan.read(ReadSpec::new("nodes", Vec::new()), async move {
        let list = api.list(&params).await.map_err(ReadError::from)?;
        Ok::<_, ReadError>(list.items.iter().map(summarize::node).collect::<Vec<_>>())
    });

    let api: Api<DaemonSet> = Api::namespaced(client.clone(), namespace);
    let name = options.daemonset.clone();
    let daemonset = fan.read(ReadSpec::new("daemonset", None), async move {
        let ds = api.get(&name).await.map_err(ReadError::from)?;
        Ok::<_, ReadError>(Some(summarize::daemonset(&ds)))
    });

    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let name = options.configmap.clone();
    let configmap = fan.read(ReadSpec::new("configmap", None), async move {
        let cm = api.get(&name).await.map_err(ReadError::from)?;
        Ok::<_, ReadError>(Some(summarize::config(&cm)))
    });

    let api: Api<Event> = Api::namespaced(client.clone(), namespace);
    let max_warnings = options.max_warnings;
    let warnings = fan.read(ReadSpec::new("warnings", Vec::new()), async move {
        let params = ListParams::default().fields("type=Warning");
        let list = api.list(&params).await.map_err(ReadError::from)?;
        Ok::<_, ReadError>(summarize::warnings(&list.items, max_warnings))
    });

    let pods_api: Api<Pod> = Api::namespaced(client, namespace);
    let api = pods_api.clone();
    let pods = fan.read(ReadSpec::new("pods", Vec::new()), async move {
        let list = api.list(&warmup).await.map_err(ReadError::from)?;
        Ok::<_, ReadError>(list.items.iter().map(summarize::pod).collect::<Vec<_>>())
    });

    let stale = fan.read_after(
        ReadSpec::new("stale_nodes", BTreeMap::new()),
        (nodes.clone(), jobs.clone(), configmap.clone()),
        |(nodes, jobs, config)| async move {
            let generation = config.as_ref().as_ref().and_then(|c| c.generation);
            Ok::<_, Infallible>(stale::mark_stale(&nodes, jobs.as_deref(), generation))
        },
    );

    let (max_logs, tail_lines) = (options.max_logs, options.tail_lines);
    let container = options.log_container.clone();
    let logs = fan.fan_after("logs", Some(MAX_LOG_TAILS), pods.clone(), move |pods| {
        let (chosen, _skipped) = stale::select_log_pods(&pods, max_logs);
        chosen
            .into_iter()
            .map(|pod| log_tail(&pods_api, pod, tail_lines, container.as_deref()))
            .collect()
    });

    let reads = fan.join().await;

    let config = configmap.value();
    let config = config.as_ref().as_ref();
    let databases = config.map(|c| c.databases.clone()).unwrap_or_default();
    let (pods, logs, marks) = (pods.value(), logs.value(), stale.value());
    let mut progress_by_node: BTreeMap<&str, BTreeMap<String, Progress>> = BTreeMap::new();
    for log in logs.iter().flatten() {
        if let Some(node) = &log.node {
            let merged = progress_by_node.entry(node).or_default();
            for (db, progress) in &log.progress {
                // Logs come in selection order (running pods first): the first report wins.
                merged.entry(db.clone()).or_insert(*progress);
            }
        }
    }
    let no_progress = BTreeMap::new();
    let mut nodes: Vec<NodeWarmup> = nodes
        .value()
        .iter()
        .map(|node| {
            let mark = marks.get(&node.name);
            NodeWarmup {
                name: node.name.clone(),
                ready: node.ready,
                stale: mark.and_then(|m| m.stale.clone()),
                job: mark.and_then(|m| m.job.as_ref().map(|(name, _)| name.clone())),
                pods: pods
                    .iter()
                    .filter(|p| p.node.as_deref() == Some(node.name.as_str()))
                    .map(|p| p.name.clone())
                    .collect(),
                databases: stale::chips(
                    &databases,
                    mark,
                    progress_by_node
                        .get(node.name.as_str())
                        .unwrap_or(&no_progress),
                ),
            }
        })
        .collect();
    nodes.sort_by(|a, b| a.name.cmp(&b.name));

    WarmupStatus {
        namespace: namespace.to_string(),
        generation: config.and_then(|c| c.generation),
        databases,
        nodes,
        daemonset: daemonset.value().as_ref().clone(),
        jobs: jobs.value().as_ref().clone().unwrap_or_default(),
        warnings: warnings.value().as_ref().clone(),
        logs: LogsSummary {
            pods: pods.len(),
            requested: logs.len(),
            read: logs.iter().filter(|l| l.is_some()).count(),
            skipped: pods.len() - logs.len(),
        },
        complete: reads.is_complete(),
        reads,
    }
}

/// One pod's log tail, as a group member named `log/<pod>`.
fn log_tail(
    api: &Api<Pod>,
    pod: PodInfo,
    tail_lines: i64,
    container: Option<&str>,
) -> GroupRead<Option<PodLog>> {
    // Name a container only when the API needs one (several containers) or we were told to.
    let container = container.map(str::to_string).or_else(|| {
        (pod.containers.len() > 1)
            .then(|| pod.containers.first().cloned())
            .flatten()
    });
    let params = LogParams {
        tail_lines: Some(tail_lines),
        container,
        ..LogParams::default()
    };
    let api = api.clone();
    let spec = ReadSpec::new(format!("log/{}", pod.name), None);
    GroupRead::new(spec, async move {
        let text = api
            .logs(&pod.name, &params)
            .await
            .map_err(ReadError::from)?;
        Ok::<_, ReadError>(Some(PodLog {
            node: pod.node,
            progress: parse_log(&text),
        }))
    })
}
