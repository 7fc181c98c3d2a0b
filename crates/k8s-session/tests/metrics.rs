//! The metrics a session pool records (issue 19), read back from `metrics`' debugging recorder:
//! series names, the `k8s.cluster.name` and `pool.name` labels and their values, driven through
//! the public API against testkit's Kubernetes API server (real sockets, so real time).

use k8s_openapi::api::core::v1::Pod;
use k8s_session::{KubeconfigSource, SessionKey, SessionPool};
use kube::Api;
use metrics::Unit;
use testkit::k8s::{K8sServer, SAMPLE_NAMESPACE};
use testkit::metrics::{counter, gauge, recorded_real_time, unit};

const EAST: &[(&str, &str)] = &[("k8s.cluster.name", "east")];
const WEST: &[(&str, &str)] = &[("k8s.cluster.name", "west")];

// Cluster "east" speaks HTTP/2: 50 concurrent lists, one connection counted with protocol "2",
// no fallback, no request left active, and the session still held counts 1 in use. Cluster
// "west" speaks HTTP/1.1 only: one fallback, its connections counted "1.1", a response whose
// body is held unread counts 1 active request, and its dropped session 0 in use. The pool's own
// series carry `pool.name = k8s-session`.
#[test]
fn sessions_requests_connections_and_fallbacks_per_cluster() {
    let recorded = recorded_real_time(|| async {
        let east_server = K8sServer::start().await.unwrap();
        let west_server = K8sServer::start().await.unwrap();
        west_server.serve_http2(false);
        let source = KubeconfigSource::from_kubeconfig(east_server.kubeconfig_token());
        let pool = SessionPool::builder(source).knobs_from(|_| None).build();
        let east = pool
            .session(&SessionKey::new("sub", "rg", "east"))
            .await
            .unwrap();
        let pods: Api<Pod> = Api::namespaced(east.client().clone(), SAMPLE_NAMESPACE);
        let params = kube::api::ListParams::default();
        let lists = futures::future::join_all((0..50).map(|_| pods.list(&params))).await;
        assert!(lists.iter().all(Result::is_ok));

        let west_pool = SessionPool::builder(KubeconfigSource::from_kubeconfig(
            west_server.kubeconfig_token(),
        ))
        .knobs_from(|_| None)
        .build();
        let west = west_pool
            .session(&SessionKey::new("sub", "rg", "west"))
            .await
            .unwrap();
        let path = format!("/api/v1/namespaces/{SAMPLE_NAMESPACE}/pods");
        let request = http::Request::get(path)
            .body(kube::client::Body::empty())
            .unwrap();
        let unread = west.client().send(request).await.unwrap();
        drop(west);
        (east_server, west_server, pool, west_pool, east, unread)
    });

    assert_eq!(
        counter(
            &recorded,
            "k8s.session.connections",
            &[
                ("k8s.cluster.name", "east"),
                ("network.protocol.version", "2")
            ]
        ),
        1
    );
    assert_eq!(
        counter(
            &recorded,
            "k8s.session.connections",
            &[
                ("k8s.cluster.name", "east"),
                ("network.protocol.version", "1.1")
            ]
        ),
        0
    );
    assert_eq!(counter(&recorded, "k8s.session.http1_fallbacks", EAST), 0);
    assert_eq!(gauge(&recorded, "k8s.session.active_requests", EAST), 0.0);
    assert_eq!(gauge(&recorded, "k8s.session.sessions.in_use", EAST), 1.0);

    assert_eq!(counter(&recorded, "k8s.session.http1_fallbacks", WEST), 1);
    assert_eq!(
        counter(
            &recorded,
            "k8s.session.connections",
            &[
                ("k8s.cluster.name", "west"),
                ("network.protocol.version", "1.1")
            ]
        ),
        1
    );
    assert_eq!(gauge(&recorded, "k8s.session.active_requests", WEST), 1.0);
    assert_eq!(gauge(&recorded, "k8s.session.sessions.in_use", WEST), 0.0);

    let pool = &[("pool.name", "k8s-session")];
    assert_eq!(counter(&recorded, "pool.creations", pool), 2);
    assert_eq!(
        unit(&recorded, "k8s.session.connections"),
        Some(Unit::Count)
    );
}
