//! Black-box seed suite for k8s-session: seed 001 (a new `requests.Session` and temp cert/key
//! files per Kubernetes call, no connection reuse) and SPEC K1–K7 and X5, through the public API
//! only, against testkit's in-process Kubernetes API server. Scenarios that talk to the server
//! run in real time; the others run in virtual time (a session connects lazily, so building
//! one does no I/O).

#[path = "against_server/support.rs"]
#[allow(
    dead_code,
    reason = "shared with the against_server suite; this suite uses part of it"
)]
mod support;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use k8s_session::{
    AuthKind, FixedClock, KubeconfigSource, SessionKey, SessionPool, TtlBound, WallClock,
};
use kube::config::Kubeconfig;
use testkit::k8s::{Fault, K8sServer, KubeAuth, kube_client, unsigned_jwt};
use tokio::time::Instant;

use support::{
    FakeCredential, PerKey, cert_not_after, key, kubelogin_kubeconfig, list_pods, remember,
};

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// A wall clock `left` before the kubeconfig's client certificate expires.
fn clock_before_not_after(kubeconfig: &Kubeconfig, left: Duration) -> Arc<dyn WallClock> {
    Arc::new(FixedClock::new(cert_not_after(kubeconfig) - left))
}

/// Keys of retired sessions, in order.
type Retired = Arc<Mutex<Vec<SessionKey>>>;

fn observed(
    builder: k8s_session::SessionPoolBuilder,
) -> (k8s_session::SessionPoolBuilder, Retired) {
    let retired = Retired::default();
    let sink = retired.clone();
    let builder = builder.on_retire(move |key| sink.lock().unwrap().push(key.clone()));
    (builder, retired)
}

/// Let background retires run (virtual time).
async fn settle() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

// seed 001, K1, K6: a dashboard tick made 7+ Kubernetes calls, each with a brand-new session.
// Through the pool, three ticks of seven calls build ONE session and use ONE TLS connection;
// a client per call opens a connection per call.
#[tokio::test]
async fn seed001_one_session_per_cluster_reused_across_calls() {
    let server = K8sServer::start().await.unwrap();
    let kubeconfig = server.kubeconfig_cert().unwrap();
    remember(&kubeconfig);
    let pool = SessionPool::builder(KubeconfigSource::from_kubeconfig(kubeconfig.clone()))
        .knobs_from(|_| None)
        .build();
    for _tick in 0..3 {
        for _call in 0..7 {
            let session = pool.session(&key("east")).await.unwrap();
            assert!(list_pods(&session).await.unwrap() > 0);
            session.close(); // the seed's `finally: session.close()` returns it to the pool
        }
    }
    let stats = pool.stats();
    assert_eq!((stats.creations, stats.hits), (1, 20), "{stats:?}");
    assert_eq!(
        stats.evictions.total(),
        0,
        "closing never retires a pooled session"
    );
    assert_eq!(
        server.tls_connections(),
        1,
        "one TLS connection for 21 calls"
    );

    for _ in 0..2 {
        list_pods(&kube_client(kubeconfig.clone()).await.unwrap())
            .await
            .unwrap();
    }
    assert_eq!(
        server.tls_connections(),
        3,
        "a client per call: a connection per call"
    );
}

// seed 001, K1, K8: the dashboard's tick, as its server runs it: 18 Kubernetes GETs at once on a
// multi-threaded runtime (each answered in 20 ms), tick after tick, for 30 clusters. Each cluster's first tick opens ONE
// TLS connection and the next ticks reuse it (the seed opened 18 per tick; hyper-util's pool
// opened a second one for about one cold tick in forty).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed001_concurrent_ticks_on_threads_share_one_connection_per_cluster() {
    let server = K8sServer::start().await.unwrap();
    server.inject(
        "/api/v1/namespaces/testkit/pods",
        Fault::latency(Duration::from_millis(20)),
    );
    let pool = Arc::new(
        SessionPool::builder(KubeconfigSource::from_kubeconfig(server.kubeconfig_token()))
            .knobs_from(|_| None)
            .build(),
    );
    const CLUSTERS: u64 = 30;
    for cluster in 0..CLUSTERS {
        let cluster = format!("cluster-{cluster}");
        for _tick in 0..3 {
            let calls: Vec<_> = (0..18)
                .map(|_| {
                    let (pool, cluster) = (Arc::clone(&pool), cluster.clone());
                    tokio::spawn(async move {
                        let session = pool.session(&key(&cluster)).await.unwrap();
                        list_pods(&session).await
                    })
                })
                .collect();
            for call in calls {
                let listed = tokio::time::timeout(secs(20), call)
                    .await
                    .expect("a tick hung");
                assert!(listed.unwrap().unwrap() > 0);
            }
        }
    }
    assert_eq!(
        server.tls_connections(),
        CLUSTERS,
        "one TLS connection per cluster"
    );
    assert_eq!(pool.stats().creations, CLUSTERS);
}

// seed 001, K2: TLS material stays in memory. While pooled sessions are alive the process holds
// no file open under the temp dir, and no new temp file holds our certificate, key or token.
#[tokio::test]
async fn seed001_no_temp_files_for_tls_material() {
    support::record_open_temp_baseline();
    let temp = std::env::temp_dir();
    let listing = |dir: &PathBuf| -> BTreeSet<PathBuf> {
        std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .collect()
    };
    let before = listing(&temp);
    let server = K8sServer::start().await.unwrap();
    let (cert, token) = (server.kubeconfig_cert().unwrap(), server.kubeconfig_token());
    let source = PerKey::default()
        .with(&key("cert"), cert)
        .with(&key("token"), token);
    let pool = SessionPool::builder(source).knobs_from(|_| None).build();
    let sessions = [
        pool.session(&key("cert")).await.unwrap(),
        pool.session(&key("token")).await.unwrap(),
    ];
    for session in &sessions {
        list_pods(session).await.unwrap();
    }
    support::open_temp_files().unwrap();
    let secrets = support::secrets().lock().unwrap().clone();
    let leaked: Vec<_> = listing(&temp)
        .difference(&before)
        .filter(|path| {
            std::fs::read(path).is_ok_and(|bytes| {
                let text = String::from_utf8_lossy(&bytes);
                secrets.iter().any(|secret| text.contains(secret.as_str()))
            })
        })
        .cloned()
        .collect();
    assert!(leaked.is_empty(), "TLS material written to {leaked:?}");
}

// K1: the key is (subscription, resource group, cluster, admin): admin and user sessions of one
// cluster, and other clusters, never share a session; each key is built once.
#[tokio::test(start_paused = true)]
async fn k1_sessions_are_keyed_by_cluster_and_role() {
    let server = K8sServer::start().await.unwrap();
    let (user, admin) = (key("east"), key("east").admin(true));
    let other_rg = SessionKey::new("00000000-0000-0000-0000-000000000001", "rg-other", "east");
    let source = Arc::new(
        PerKey::default()
            .with(&user, server.kubeconfig_token())
            .with(&admin, server.kubeconfig_cert().unwrap())
            .with(&other_rg, server.kubeconfig_token()),
    );
    let pool = SessionPool::builder_arc(source.clone())
        .knobs_from(|_| None)
        .build();
    for _ in 0..3 {
        for k in [&user, &admin, &other_rg] {
            assert_eq!(pool.session(k).await.unwrap().key(), k);
        }
    }
    assert_eq!(source.calls(), 3, "one build per key");
    assert_eq!(
        pool.session(&user).await.unwrap().auth(),
        AuthKind::StaticToken
    );
    assert_eq!(
        pool.session(&admin).await.unwrap().auth(),
        AuthKind::Certificate
    );
    assert_eq!(pool.len(), 3);
}

// K3: the pool TTL defaults to 300 s (K8S_SESSION_POOL_TTL_SECONDS, clamped to [0, 86 400]);
// a session is handed out until then and rebuilt exactly at it.
#[tokio::test(start_paused = true)]
async fn k3_ttl_defaults_to_300_seconds_and_the_knob_clamps() {
    let server = K8sServer::start().await.unwrap();
    let kubeconfig = server.kubeconfig_cert().unwrap();
    let source = Arc::new(PerKey::default().with(&key("east"), kubeconfig.clone()));
    let pool = SessionPool::builder_arc(source.clone())
        .clock(clock_before_not_after(&kubeconfig, secs(86_400)))
        .knobs_from(|_| None)
        .build();
    assert_eq!(pool.ttl(), secs(300));
    let session = pool.session(&key("east")).await.unwrap();
    assert_eq!(session.effective_ttl().bound, TtlBound::PoolTtl);
    assert_eq!(session.deadline(), Some(Instant::now() + secs(300)));
    drop(session);
    tokio::time::advance(secs(299)).await;
    pool.session(&key("east")).await.unwrap();
    assert_eq!(source.calls(), 1);
    tokio::time::advance(secs(1)).await;
    pool.session(&key("east")).await.unwrap();
    assert_eq!(source.calls(), 2, "never handed out at or after the TTL");

    let ttl_from = |raw: &'static str| {
        SessionPool::builder(KubeconfigSource::from_kubeconfig(kubeconfig.clone()))
            .knobs_from(move |name| (name == "K8S_SESSION_POOL_TTL_SECONDS").then(|| raw.into()))
            .build()
            .ttl()
    };
    assert_eq!(ttl_from("45"), secs(45));
    assert_eq!(ttl_from("100000"), secs(86_400));
    assert_eq!(ttl_from("forever"), secs(300));
    assert_eq!(ttl_from("-1"), secs(300));
}

// K3: the TTL is clamped by the client certificate's notAfter.
#[tokio::test(start_paused = true)]
async fn k3_ttl_clamped_by_certificate_not_after() {
    let server = K8sServer::start().await.unwrap();
    let kubeconfig = server.kubeconfig_cert().unwrap();
    let pool = SessionPool::builder(KubeconfigSource::from_kubeconfig(kubeconfig.clone()))
        .clock(clock_before_not_after(&kubeconfig, secs(90)))
        .knobs_from(|_| None)
        .build();
    let session = pool.session(&key("east")).await.unwrap();
    let ttl = session.effective_ttl();
    assert_eq!((ttl.ttl, ttl.bound), (secs(90), TtlBound::Certificate));
    assert_eq!(session.deadline(), Some(Instant::now() + secs(90)));
}

// K3: bearer sessions are clamped by the token's expiry minus 60 s: a static JWT and a
// kubelogin user served by an Azure credential; the sessions work against the server.
#[tokio::test]
async fn k3_ttl_clamped_by_token_expiry_minus_60_seconds() {
    let server = K8sServer::start().await.unwrap();
    let jwt = unsigned_jwt("6dae42f8-4368-4678-94ff-3960e28e3630", 200, "seed-suite");
    server.add_token(&jwt);
    let source = PerKey::default()
        .with(
            &key("static"),
            server.kubeconfig_with(KubeAuth::Token(&jwt)),
        )
        .with(&key("aad"), kubelogin_kubeconfig(&server));
    let pool = SessionPool::builder(source)
        .aad_credential(FakeCredential::new(&jwt, secs(200)))
        .knobs_from(|_| None)
        .build();
    for cluster in ["static", "aad"] {
        let session = pool.session(&key(cluster)).await.unwrap();
        let ttl = session.effective_ttl();
        assert_eq!(ttl.bound, TtlBound::Token, "{cluster}");
        assert!(ttl.ttl.abs_diff(secs(140)) <= secs(5), "{cluster}: {ttl:?}");
        list_pods(&session).await.unwrap();
    }
}

// K4: a non-positive effective TTL (token within 60 s of expiry, or TTL 0) gives a one-shot
// session: it works, is never pooled, and is torn down when dropped.
#[tokio::test]
async fn k4_one_shot_when_the_ttl_is_not_positive() {
    let server = K8sServer::start().await.unwrap();
    let jwt = unsigned_jwt("k8s", 30, "seed-suite");
    server.add_token(&jwt);
    let (builder, retired) = observed(
        SessionPool::builder(KubeconfigSource::from_kubeconfig(
            server.kubeconfig_with(KubeAuth::Token(&jwt)),
        ))
        .knobs_from(|_| None),
    );
    let pool = builder.build();
    for _ in 0..2 {
        let session = pool.session(&key("east")).await.unwrap();
        assert!(!session.is_pooled());
        assert_eq!(session.effective_ttl().ttl, Duration::ZERO);
        list_pods(&session).await.unwrap();
        assert!(pool.is_empty(), "never pooled");
        drop(session);
        tokio::task::yield_now().await;
    }
    assert_eq!(pool.stats().one_shots, 2);
    assert_eq!(retired.lock().unwrap().len(), 2, "each torn down on drop");

    let (builder, retired) = observed(
        SessionPool::builder(KubeconfigSource::from_kubeconfig(server.kubeconfig_token()))
            .knobs_from(|name| (name == "K8S_SESSION_POOL_TTL_SECONDS").then(|| "0".into())),
    );
    let zero = builder.build();
    let session = zero.session(&key("east")).await.unwrap();
    assert!(!session.is_pooled());
    list_pods(&session).await.unwrap();
    session.close();
    tokio::task::yield_now().await;
    assert!(zero.is_empty());
    assert_eq!(retired.lock().unwrap().len(), 1);
}

// K5: at most 32 sessions by default (K8S_SESSION_POOL_MAX_ENTRIES, clamped to [1, 4096]);
// the 33rd evicts the session that expires soonest, not the oldest.
#[tokio::test(start_paused = true)]
async fn k5_max_entries_32_evicts_the_soonest_expiring() {
    let server = K8sServer::start().await.unwrap();
    let now = SystemTime::UNIX_EPOCH + secs(1_900_000_000);
    let mut source = PerKey::default();
    for i in 0..33u64 {
        // Cluster 20 expires first; the others in order of creation.
        let left = if i == 20 { 60 } else { 120 + i };
        source = source.expiring(
            &key(&format!("c{i}")),
            server.kubeconfig_token(),
            now + secs(left),
        );
    }
    let (builder, retired) = observed(
        SessionPool::builder(source)
            .clock(Arc::new(FixedClock::new(now)))
            .knobs_from(|_| None),
    );
    let pool = builder.build();
    assert_eq!(pool.max_entries(), 32);
    for i in 0..33 {
        drop(pool.session(&key(&format!("c{i}"))).await.unwrap());
    }
    settle().await;
    assert_eq!(pool.len(), 32);
    assert_eq!(*retired.lock().unwrap(), [key("c20")]);
    assert_eq!(pool.stats().evictions.capacity, 1);

    let capacity = |raw: &'static str| {
        SessionPool::builder(KubeconfigSource::from_kubeconfig(server.kubeconfig_token()))
            .knobs_from(move |name| (name == "K8S_SESSION_POOL_MAX_ENTRIES").then(|| raw.into()))
            .build()
            .max_entries()
    };
    assert_eq!(
        (
            capacity("0"),
            capacity("100000"),
            capacity("8"),
            capacity("many")
        ),
        (1, 4096, 8, 32)
    );
}

// K6, K7: dropping or closing a handle returns it to the pool; only the pool retires, and it
// never does so under its lock (checked from the retire observer on every path).
#[tokio::test(start_paused = true)]
async fn k6_k7_handles_return_and_retire_happens_outside_the_lock() {
    let server = K8sServer::start().await.unwrap();
    let mut source = PerKey::default();
    for cluster in ["a", "b", "c", "d"] {
        source = source.with(&key(cluster), server.kubeconfig_token());
    }
    let pool_slot: Arc<OnceLock<SessionPool>> = Arc::default();
    let saw_lock = Arc::new(AtomicBool::new(false));
    let retired = Retired::default();
    let pool = {
        let (slot, saw_lock, retired) = (pool_slot.clone(), saw_lock.clone(), retired.clone());
        SessionPool::builder(source)
            .knobs_from(|_| None)
            .max_entries(2)
            .ttl(secs(60))
            .on_retire(move |key| {
                if slot.get().is_some_and(SessionPool::is_locked) {
                    saw_lock.store(true, Ordering::SeqCst);
                }
                retired.lock().unwrap().push(key.clone());
            })
            .build()
    };
    pool_slot.set(pool.clone()).unwrap();

    let session = pool.session(&key("a")).await.unwrap();
    session.close();
    drop(pool.session(&key("a")).await.unwrap());
    settle().await;
    assert!(
        retired.lock().unwrap().is_empty(),
        "close and drop never retire"
    );
    assert_eq!((pool.len(), pool.stats().hits), (1, 1));

    drop(pool.session(&key("b")).await.unwrap());
    drop(pool.session(&key("c")).await.unwrap()); // capacity
    assert!(pool.invalidate(&key("b")).await); // invalidate
    tokio::time::advance(secs(60)).await;
    drop(pool.session(&key("c")).await.unwrap()); // expiry, then a rebuild
    drop(pool.session(&key("d")).await.unwrap());
    let report = pool.reset().await; // reset
    settle().await;
    assert_eq!(report.failed, 0);
    // a (capacity), b (invalidate), c (expired), the rebuilt c (capacity: it ties with d on
    // the deadline and was used less recently), d (reset).
    // Background retires (capacity) may finish after inline ones: compare in key order.
    let mut retired = retired.lock().unwrap().clone();
    retired.sort_by(|a, b| a.cluster_name().cmp(b.cluster_name()));
    assert_eq!(
        retired,
        [key("a"), key("b"), key("c"), key("c"), key("d")],
        "every path retired through the pool"
    );
    assert!(
        !saw_lock.load(Ordering::SeqCst),
        "a retire ran under the pool lock"
    );
    let report = pool.shutdown().await;
    assert_eq!(report.skipped_shards, 0);
    assert!(pool.session(&key("a")).await.is_err());
}

// X5, issue #16: `ttl(Duration::MAX)` used to panic on the first session, and
// `read_timeout(Some(Duration::MAX))` on the first read (hyper-timeout adds it to
// `Instant::now()`). Every duration the builder takes accepts `Duration::MAX`: calls succeed
// through one pooled session whose deadline is at most a day away.
#[tokio::test]
async fn x5_duration_max_everywhere_against_the_server() {
    let server = K8sServer::start().await.unwrap();
    let kubeconfig = server.kubeconfig_token();
    remember(&kubeconfig);
    let pool = SessionPool::builder(KubeconfigSource::from_kubeconfig(kubeconfig))
        .knobs_from(|_| None)
        .ttl(Duration::MAX)
        .sweep_interval(Duration::MAX)
        .connect_timeout(Some(Duration::MAX))
        .read_timeout(Some(Duration::MAX))
        .build();
    for _ in 0..3 {
        let session = pool.session(&key("east")).await.unwrap();
        assert!(session.is_pooled());
        let deadline = session.deadline().expect("a pooled session has a deadline");
        assert!(deadline <= Instant::now() + secs(86_400));
        list_pods(&session).await.unwrap();
    }
    assert_eq!(pool.stats().creations, 1);
    assert_eq!(server.tls_connections(), 1);
}
