//! The in-memory objects the test server serves: nodes, pods (and their logs), jobs, daemonsets,
//! configmaps and events, as k8s-openapi types.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetSpec, DaemonSetStatus};
use k8s_openapi::api::batch::v1::{Job, JobSpec, JobStatus};
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, Event, Node, NodeCondition, NodeStatus, ObjectReference, Pod, PodSpec,
    PodStatus, PodTemplateSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, Time};
use k8s_openapi::jiff::{SignedDuration, Timestamp};

/// The namespace of [`Fixtures::sample`] (and of the objects `cargo xtask kind up` loads).
pub const SAMPLE_NAMESPACE: &str = "testkit";
/// The label selector matching the sample's warmup jobs and their pods.
pub const WARMUP_SELECTOR: &str = "app=warmup";

/// Everything the server knows. Fields are public: add any k8s-openapi object you need, or use
/// the builder methods, which fill in the boilerplate (uid, resourceVersion, timestamps).
///
/// Logs are keyed by `(namespace, pod name)`.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct Fixtures {
    /// Cluster-scoped nodes.
    pub nodes: Vec<Node>,
    /// Pods, any namespace.
    pub pods: Vec<Pod>,
    /// Log text per `(namespace, pod)`, served by `…/pods/{name}/log`.
    pub logs: BTreeMap<(String, String), String>,
    /// batch/v1 jobs.
    pub jobs: Vec<Job>,
    /// apps/v1 daemonsets.
    pub daemonsets: Vec<DaemonSet>,
    /// Config maps.
    pub configmaps: Vec<ConfigMap>,
    /// core/v1 events.
    pub events: Vec<Event>,
    next_version: u64,
}

fn labels(selector: &str) -> BTreeMap<String, String> {
    selector
        .split(',')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

impl Fixtures {
    /// No objects at all.
    pub fn empty() -> Self {
        Self::default()
    }

    /// A small warmup cluster: [`Fixtures::warmup_cluster`] with 3 warmup pods.
    pub fn sample() -> Self {
        Self::warmup_cluster(3)
    }

    /// A cluster shaped like the seed-001 dashboard's: 3 nodes (`node-2` NotReady with a stale
    /// heartbeat), in [`SAMPLE_NAMESPACE`] one job `warmup-<i>` per warmup pod (labels
    /// `app=warmup`, `job-name=warmup-<i>`), each pod with a 3-line log, one unrelated job and
    /// pod (`app=other`), a daemonset `warmup-agent`, a configmap `warmup-config`, a Warning
    /// event (`BackOff` on `warmup-0-pod`) and a Normal one.
    pub fn warmup_cluster(warmup_pods: usize) -> Self {
        let ns = SAMPLE_NAMESPACE;
        let mut f = Self::empty();
        f.node("node-0", "agentpool=warmup", true)
            .node("node-1", "agentpool=warmup", true)
            .node("node-2", "agentpool=system", false);
        for i in 0..warmup_pods {
            let job = format!("warmup-{i}");
            let pod = format!("{job}-pod");
            let log = format!("{job}: step 1\n{job}: step 2\n{job}: done\n");
            f.job(ns, &job, &format!("app=warmup,job-name={job}")).pod(
                ns,
                &pod,
                &format!("app=warmup,job-name={job}"),
                &format!("node-{}", i % 2),
                Some(&log),
            );
        }
        f.job(ns, "other", "app=other,job-name=other")
            .pod(
                ns,
                "other-pod",
                "app=other,job-name=other",
                "node-0",
                Some("other\n"),
            )
            .daemonset(ns, "warmup-agent", "app=warmup-agent")
            .configmap(ns, "warmup-config", &[("targets", "db-0,db-1")])
            .event(
                ns,
                "Warning",
                "BackOff",
                ("Pod", "warmup-0-pod"),
                "Back-off restarting failed container",
            )
            .event(
                ns,
                "Normal",
                "Scheduled",
                ("Pod", "other-pod"),
                "Successfully assigned",
            );
        f
    }

    fn meta(&mut self, namespace: Option<&str>, name: &str, label_text: &str) -> ObjectMeta {
        self.next_version += 1;
        ObjectMeta {
            name: Some(name.to_owned()),
            namespace: namespace.map(str::to_owned),
            labels: Some(labels(label_text)).filter(|l| !l.is_empty()),
            uid: Some(format!("00000000-0000-4000-8000-{:012}", self.next_version)),
            resource_version: Some(self.next_version.to_string()),
            creation_timestamp: Some(Time(Timestamp::now())),
            ..ObjectMeta::default()
        }
    }

    /// Add a node with labels (`k=v,k2=v2`); a not-ready node's heartbeat is 10 minutes old.
    pub fn node(&mut self, name: &str, labels: &str, ready: bool) -> &mut Self {
        let heartbeat = if ready {
            Timestamp::now()
        } else {
            Timestamp::now() - SignedDuration::from_secs(600)
        };
        let node = Node {
            metadata: self.meta(None, name, labels),
            status: Some(NodeStatus {
                conditions: Some(vec![NodeCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "Unknown" }.into(),
                    last_heartbeat_time: Some(Time(heartbeat)),
                    reason: Some(
                        if ready {
                            "KubeletReady"
                        } else {
                            "NodeStatusUnknown"
                        }
                        .into(),
                    ),
                    ..NodeCondition::default()
                }]),
                ..NodeStatus::default()
            }),
            ..Node::default()
        };
        self.nodes.push(node);
        self
    }

    /// Add a running pod on `node`, and its log if given.
    pub fn pod(
        &mut self,
        namespace: &str,
        name: &str,
        labels: &str,
        node: &str,
        log: Option<&str>,
    ) -> &mut Self {
        let pod = Pod {
            metadata: self.meta(Some(namespace), name, labels),
            spec: Some(PodSpec {
                node_name: Some(node.to_owned()),
                containers: vec![Container {
                    name: "main".into(),
                    image: Some("busybox:1.36".into()),
                    ..Container::default()
                }],
                ..PodSpec::default()
            }),
            status: Some(PodStatus {
                phase: Some("Running".into()),
                ..PodStatus::default()
            }),
        };
        self.pods.push(pod);
        if let Some(log) = log {
            self.logs
                .insert((namespace.to_owned(), name.to_owned()), log.to_owned());
        }
        self
    }

    /// Add a job with one active pod's worth of status.
    pub fn job(&mut self, namespace: &str, name: &str, labels: &str) -> &mut Self {
        let metadata = self.meta(Some(namespace), name, labels);
        let job = Job {
            spec: Some(JobSpec {
                template: PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        labels: metadata.labels.clone(),
                        ..ObjectMeta::default()
                    }),
                    spec: None,
                },
                ..JobSpec::default()
            }),
            status: Some(JobStatus {
                active: Some(1),
                ..JobStatus::default()
            }),
            metadata,
        };
        self.jobs.push(job);
        self
    }

    /// Add a daemonset scheduled on every node.
    pub fn daemonset(&mut self, namespace: &str, name: &str, labels: &str) -> &mut Self {
        let metadata = self.meta(Some(namespace), name, labels);
        let nodes = self.nodes.len() as i32;
        let ds = DaemonSet {
            spec: Some(DaemonSetSpec {
                selector: LabelSelector {
                    match_labels: metadata.labels.clone(),
                    ..LabelSelector::default()
                },
                ..DaemonSetSpec::default()
            }),
            status: Some(DaemonSetStatus {
                desired_number_scheduled: nodes,
                current_number_scheduled: nodes,
                number_ready: nodes,
                ..DaemonSetStatus::default()
            }),
            metadata,
        };
        self.daemonsets.push(ds);
        self
    }

    /// Add a config map with `data`.
    pub fn configmap(&mut self, namespace: &str, name: &str, data: &[(&str, &str)]) -> &mut Self {
        let cm = ConfigMap {
            metadata: self.meta(Some(namespace), name, ""),
            data: Some(
                data.iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            ),
            ..ConfigMap::default()
        };
        self.configmaps.push(cm);
        self
    }

    /// Add an event of `type_` (`Normal`/`Warning`) about `involved = (kind, name)`.
    pub fn event(
        &mut self,
        namespace: &str,
        type_: &str,
        reason: &str,
        involved: (&str, &str),
        message: &str,
    ) -> &mut Self {
        let name = format!("{}.{}", involved.1, self.next_version + 1);
        let event = Event {
            metadata: self.meta(Some(namespace), &name, ""),
            type_: Some(type_.to_owned()),
            reason: Some(reason.to_owned()),
            message: Some(message.to_owned()),
            involved_object: ObjectReference {
                kind: Some(involved.0.to_owned()),
                name: Some(involved.1.to_owned()),
                namespace: Some(namespace.to_owned()),
                ..ObjectReference::default()
            },
            last_timestamp: Some(Time(Timestamp::now())),
            ..Event::default()
        };
        self.events.push(event);
        self
    }

    /// Every namespace any object lives in, plus `default` and `kube-system`.
    pub fn namespaces(&self) -> BTreeSet<String> {
        let mut out: BTreeSet<String> = ["default", "kube-system"].map(String::from).into();
        let metas = self
            .pods
            .iter()
            .map(|o| &o.metadata)
            .chain(self.jobs.iter().map(|o| &o.metadata))
            .chain(self.daemonsets.iter().map(|o| &o.metadata))
            .chain(self.configmaps.iter().map(|o| &o.metadata))
            .chain(self.events.iter().map(|o| &o.metadata));
        out.extend(metas.filter_map(|m| m.namespace.clone()));
        out
    }
}
