//! The Kubernetes test server seen through a real `kube::Client`: auth (mTLS, token, refusals),
//! lists, selectors, logs, discovery, faults, request log and connection counts.

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Event, Node, Pod};
use kube::api::{Api, ListParams, LogParams};
use testkit::k8s::{
    AuthMethod, Fault, K8sServer, KubeAuth, Route, SAMPLE_NAMESPACE, WARMUP_SELECTOR, kube_client,
};
use testkit::tls::TestCa;

const NS: &str = SAMPLE_NAMESPACE;

fn api_status(err: kube::Error) -> (u16, String) {
    match err {
        kube::Error::Api(status) => (status.code, status.reason.clone()),
        other => panic!("expected an API error (metav1 Status), got {other:?}"),
    }
}

/// The reads warmup-fanout makes, in order, with what each must return.
async fn warmup_reads(client: kube::Client) {
    let nodes = Api::<Node>::all(client.clone());
    assert_eq!(
        nodes
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .len(),
        3
    );
    let pods = Api::<Pod>::namespaced(client.clone(), NS);
    let warmup = pods
        .list(&ListParams::default().labels(WARMUP_SELECTOR))
        .await
        .unwrap();
    let names: Vec<_> = warmup
        .iter()
        .map(|p| p.metadata.name.clone().unwrap())
        .collect();
    assert_eq!(names, ["warmup-0-pod", "warmup-1-pod", "warmup-2-pod"]);
    let jobs = Api::<Job>::namespaced(client.clone(), NS);
    assert_eq!(
        jobs.list(&ListParams::default().labels(WARMUP_SELECTOR))
            .await
            .unwrap()
            .items
            .len(),
        3
    );
    let ds = Api::<DaemonSet>::namespaced(client.clone(), NS);
    assert_eq!(
        ds.list(&ListParams::default()).await.unwrap().items.len(),
        1
    );
    let cms = Api::<ConfigMap>::namespaced(client.clone(), NS);
    let cm = cms.get("warmup-config").await.unwrap();
    assert_eq!(cm.data.unwrap()["targets"], "db-0,db-1");
    let events = Api::<Event>::namespaced(client.clone(), NS);
    let warnings = events
        .list(&ListParams::default().fields("type=Warning"))
        .await
        .unwrap();
    assert_eq!(warnings.items.len(), 1);
    assert_eq!(warnings.items[0].reason.as_deref(), Some("BackOff"));
    let tail = LogParams {
        tail_lines: Some(2),
        ..LogParams::default()
    };
    let log = pods.logs("warmup-1-pod", &tail).await.unwrap();
    assert_eq!(log, "warmup-1: step 2\nwarmup-1: done\n");
}

#[tokio::test]
async fn kube_reads_over_mtls_each_url_once_on_one_connection() {
    let server = K8sServer::start().await.unwrap();
    warmup_reads(server.client_cert().await.unwrap()).await;
    let log = server.requests();
    assert!(
        log.iter()
            .all(|r| r.auth == AuthMethod::ClientCert && r.status == 200)
    );
    let urls: Vec<String> = log.iter().map(|r| r.url()).collect();
    let unique: std::collections::BTreeSet<_> = urls.iter().collect();
    assert_eq!(
        unique.len(),
        urls.len(),
        "a URL was requested twice: {urls:?}"
    );
    assert_eq!(
        server.count("/api/v1/namespaces/testkit/pods/warmup-1-pod/log"),
        1
    );
    assert_eq!(
        server.tls_connections(),
        1,
        "sequential calls share one connection"
    );
}

#[tokio::test]
async fn kube_reads_over_a_bearer_token() {
    let server = K8sServer::start().await.unwrap();
    warmup_reads(server.client_token().await.unwrap()).await;
    assert!(
        server
            .requests()
            .iter()
            .all(|r| r.auth == AuthMethod::Bearer)
    );
}

#[tokio::test]
async fn unknown_or_revoked_token_gets_401_status() {
    let server = K8sServer::start().await.unwrap();
    let stranger = kube_client(server.kubeconfig_with(KubeAuth::Token("nope")))
        .await
        .unwrap();
    let err = Api::<Node>::all(stranger)
        .list(&ListParams::default())
        .await
        .unwrap_err();
    assert_eq!(api_status(err), (401, "Unauthorized".into()));

    server.add_token("short-lived");
    let client = kube_client(server.kubeconfig_with(KubeAuth::Token("short-lived")))
        .await
        .unwrap();
    let nodes = Api::<Node>::all(client);
    nodes.list(&ListParams::default()).await.unwrap();
    server.revoke_token("short-lived");
    let err = nodes.list(&ListParams::default()).await.unwrap_err();
    assert_eq!(api_status(err).0, 401);
}

#[tokio::test]
async fn a_client_trusting_another_ca_is_refused() {
    let server = K8sServer::start().await.unwrap();
    let wrong = TestCa::new("wrong").unwrap();
    let kubeconfig = testkit::k8s::build_kubeconfig(
        server.url(),
        wrong.cert_pem(),
        "wrong-ca",
        KubeAuth::Token(server.token()),
    );
    let client = kube_client(kubeconfig).await.unwrap();
    let err = Api::<Node>::all(client).list(&ListParams::default()).await;
    assert!(
        err.is_err(),
        "a server certificate from an untrusted CA was accepted"
    );
    assert_eq!(server.tls_connections(), 0);
    assert!(server.requests().is_empty());
}

#[tokio::test]
async fn a_rogue_client_certificate_is_refused_at_the_handshake() {
    let server = K8sServer::start().await.unwrap();
    let rogue = TestCa::new("rogue").unwrap();
    let leaf = rogue.client_leaf("mallory", &["system:masters"]).unwrap();
    let client = kube_client(server.kubeconfig_with(KubeAuth::ClientCert(&leaf)))
        .await
        .unwrap();
    let err = Api::<Node>::all(client).list(&ListParams::default()).await;
    assert!(
        err.is_err(),
        "a client certificate from another CA was accepted"
    );
    assert_eq!(server.tls_connections(), 0);
    assert_eq!(server.tls_handshake_failures(), 1);
    assert!(server.requests().is_empty());
}

#[tokio::test]
async fn injected_latency_is_observed_by_the_client() {
    let server = K8sServer::start().await.unwrap();
    let nodes = Api::<Node>::all(server.client_token().await.unwrap());
    server.inject("/api/v1/nodes", Fault::latency(Duration::from_millis(300)));
    let started = Instant::now();
    nodes.list(&ListParams::default()).await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(300));
}

#[tokio::test]
async fn injected_status_is_a_status_error_and_runs_out() {
    let server = K8sServer::start().await.unwrap();
    let nodes = Api::<Node>::all(server.client_token().await.unwrap());
    server.inject(
        "/api/v1/nodes",
        Fault::status(503).with_retry_after(1).times(1),
    );
    let err = nodes.list(&ListParams::default()).await.unwrap_err();
    assert_eq!(api_status(err), (503, "ServiceUnavailable".into()));
    nodes.list(&ListParams::default()).await.unwrap();
    // kube's own retries are off: exactly one request per call.
    assert_eq!(server.count("/api/v1/nodes"), 2);
}

#[tokio::test]
async fn garbage_bodies_fail_to_decode() {
    let server = K8sServer::start().await.unwrap();
    let nodes = Api::<Node>::all(server.client_token().await.unwrap());
    server.inject(Route::prefix("/api/v1/"), Fault::garbage_body().times(1));
    let err = nodes.list(&ListParams::default()).await.unwrap_err();
    assert!(matches!(err, kube::Error::SerdeError(_)), "{err:?}");
}

#[tokio::test]
async fn a_reset_connection_is_a_transport_error_and_a_new_connection_follows() {
    let server = K8sServer::start().await.unwrap();
    let nodes = Api::<Node>::all(server.client_token().await.unwrap());
    nodes.list(&ListParams::default()).await.unwrap();
    server.inject("/api/v1/nodes", Fault::reset().times(1));
    let err = nodes.list(&ListParams::default()).await.unwrap_err();
    assert!(
        !matches!(err, kube::Error::Api(_)),
        "expected a transport error, got {err:?}"
    );
    nodes.list(&ListParams::default()).await.unwrap();
    let statuses: Vec<u16> = server.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [200, 0, 200]);
    assert_eq!(server.tls_connections(), 2);
}

#[tokio::test]
async fn discovery_and_version_answer_like_an_apiserver() {
    let server = K8sServer::start().await.unwrap();
    let client = server.client_cert().await.unwrap();
    assert_eq!(client.apiserver_version().await.unwrap().major, "1");
    let core = client.list_core_api_versions().await.unwrap();
    assert_eq!(core.versions, ["v1"]);
    let groups = client.list_api_groups().await.unwrap();
    let names: Vec<_> = groups.groups.iter().map(|g| g.name.as_str()).collect();
    assert_eq!(names, ["batch", "apps"]);
    let batch = client.list_api_group_resources("batch/v1").await.unwrap();
    assert_eq!(batch.resources[0].kind, "Job");
    let v1 = client.list_core_api_resources("v1").await.unwrap();
    assert!(v1.resources.iter().any(|r| r.name == "pods/log"));
}

#[tokio::test]
async fn selectors_and_unsupported_requests_get_kubernetes_errors() {
    let server = K8sServer::start().await.unwrap();
    let client = server.client_token().await.unwrap();
    let pods = Api::<Pod>::namespaced(client.clone(), NS);
    let on_node = pods
        .list(&ListParams::default().fields("spec.nodeName=node-1"))
        .await
        .unwrap();
    assert!(
        on_node
            .items
            .iter()
            .all(|p| p.spec.as_ref().unwrap().node_name.as_deref() == Some("node-1"))
    );
    let not_warmup = pods
        .list(&ListParams::default().labels("app notin (warmup)"))
        .await
        .unwrap();
    assert_eq!(not_warmup.items.len(), 1);
    let err = pods
        .list(&ListParams::default().fields("spec.bogus=1"))
        .await
        .unwrap_err();
    assert_eq!(api_status(err).0, 400);
    let err = pods.get("missing").await.unwrap_err();
    assert_eq!(api_status(err), (404, "NotFound".into()));
    let err = pods
        .logs("missing", &LogParams::default())
        .await
        .unwrap_err();
    assert_eq!(api_status(err).0, 404);
    let all_pods = Api::<Pod>::all(client)
        .list(&ListParams::default())
        .await
        .unwrap();
    assert_eq!(all_pods.items.len(), 4);
    server.update_fixtures(|f| {
        f.pod("other-ns", "late", "app=warmup", "node-0", None);
    });
    assert_eq!(server.count("/api/v1/pods"), 1);
}

#[tokio::test]
async fn watch_is_refused_rather_than_faked() {
    let server = K8sServer::start().await.unwrap();
    let nodes = Api::<Node>::all(server.client_token().await.unwrap());
    let err = nodes
        .watch(&kube::api::WatchParams::default(), "0")
        .await
        .err()
        .expect("watch must fail");
    assert_eq!(api_status(err).0, 400);
}
