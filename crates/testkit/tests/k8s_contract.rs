//! Contract suite over a `kube::Client`: runs against the in-process server by default and
//! against a kind cluster under `cargo xtask it --k8s kind` (TESTKIT_K8S=kind).

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, ListParams, LogParams};
use testkit::k8s::{ContractCluster, K8sError, KUBECONFIG_ENV, TARGET_ENV, WARMUP_SELECTOR};

#[tokio::test]
async fn warmup_pods_are_selectable_and_their_logs_name_their_job() {
    let cluster = ContractCluster::from_env().await.unwrap();
    let client = cluster.client().await.unwrap();
    let namespaces = Api::<Namespace>::all(client.clone());
    namespaces.get(cluster.namespace()).await.unwrap();

    let jobs = Api::<Job>::namespaced(client.clone(), cluster.namespace());
    let warmup_jobs = jobs
        .list(&ListParams::default().labels(WARMUP_SELECTOR))
        .await
        .unwrap();
    assert!(!warmup_jobs.items.is_empty());

    let pods = Api::<Pod>::namespaced(client, cluster.namespace());
    let warmup = pods
        .list(&ListParams::default().labels(WARMUP_SELECTOR))
        .await
        .unwrap();
    assert!(!warmup.items.is_empty());
    for pod in &warmup.items {
        let labels = pod.metadata.labels.as_ref().unwrap();
        assert_eq!(labels["app"], "warmup");
        let job = &labels["job-name"];
        let name = pod.metadata.name.as_deref().unwrap();
        let tail = LogParams {
            tail_lines: Some(1),
            ..LogParams::default()
        };
        let log = pods.logs(name, &tail).await.unwrap();
        assert!(log.contains(job.as_str()), "log of {name} is {log:?}");
        assert_eq!(log.lines().count(), 1);
    }
    if let Some(server) = cluster.local() {
        // One client, sequential calls: one connection (seed 001's per-call session is the bug).
        assert_eq!(server.tls_connections(), 1);
    }
}

#[tokio::test]
async fn the_target_is_chosen_from_the_environment() {
    let local = ContractCluster::from_lookup(|_| None).await.unwrap();
    assert!(local.local().is_some());
    let kind_without_config =
        ContractCluster::from_lookup(|k| (k == TARGET_ENV).then(|| "kind".to_owned())).await;
    assert!(matches!(
        kind_without_config,
        Err(K8sError::KindNotConfigured)
    ));
    let missing = ContractCluster::from_lookup(|k| match k {
        TARGET_ENV => Some("kind".to_owned()),
        KUBECONFIG_ENV => Some("/nonexistent/kubeconfig".to_owned()),
        _ => None,
    })
    .await;
    assert!(matches!(missing, Err(K8sError::ReadKubeconfig { .. })));
    let unknown = ContractCluster::from_lookup(|_| Some("minikube".to_owned())).await;
    assert!(matches!(unknown, Err(K8sError::UnknownTarget(_))));
}
