//! Pool scenarios against testkit's Kubernetes API server (K1, K3–K7).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::{Context, ensure};
use k8s_session::{AuthKind, FixedClock, KubeconfigSource, SessionKey, SessionPool, TtlBound};
use testkit::k8s::{AuthMethod, K8sServer, KubeAuth, kube_client, unsigned_jwt};

use crate::support::{
    FakeCredential, PerKey, cert_not_after, key, kubelogin_kubeconfig, list_pods, open_temp_files,
    remember,
};

/// Move virtual time with no I/O in flight (the server is on real sockets, so time only
/// stands still while nothing waits on the network).
async fn advance(by: Duration) {
    tokio::time::pause();
    tokio::time::advance(by).await;
    tokio::time::resume();
}

fn close_to(actual: Duration, expected: Duration) -> bool {
    actual.abs_diff(expected) <= Duration::from_secs(5)
}

// covers K1, K6: many calls through pooled sessions share ONE TLS connection; a client per call
// opens one connection per call.
pub(crate) async fn pooled_session_reuses_one_tls_connection() -> anyhow::Result<()> {
    let server = K8sServer::start().await?;
    let kubeconfig = server.kubeconfig_cert()?;
    remember(&kubeconfig);
    let pool = SessionPool::builder(KubeconfigSource::from_kubeconfig(kubeconfig.clone()))
        .knobs_from(|_| None)
        .build();
    for _ in 0..20 {
        let session = pool.session(&key("east")).await?;
        ensure!(
            list_pods(&session).await? > 0,
            "the sample namespace has pods"
        );
        open_temp_files().map_err(anyhow::Error::msg)?; // while a session is alive
        session.close();
    }
    let stats = pool.stats();
    ensure!(
        stats.creations == 1 && stats.hits == 19,
        "one build, 19 hits: {stats:?}"
    );
    ensure!(
        server.tls_connections() == 1,
        "pooled: {} TLS connections",
        server.tls_connections()
    );
    ensure!(server.requests().iter().all(|r| r.connection == 1));

    for _ in 0..3 {
        list_pods(&kube_client(kubeconfig.clone()).await?).await?;
    }
    ensure!(
        server.tls_connections() == 4,
        "a client per call: one connection each"
    );
    Ok(())
}

// covers K1: admin vs user sessions, and two clusters, never share a session or a connection.
pub(crate) async fn keys_are_isolated() -> anyhow::Result<()> {
    let east = K8sServer::start().await?;
    let west = K8sServer::start().await?;
    let (user, admin, other) = (key("east"), key("east").admin(true), key("west"));
    let source = Arc::new(
        PerKey::default()
            .with(&user, east.kubeconfig_token())
            .with(&admin, east.kubeconfig_cert()?)
            .with(&other, west.kubeconfig_token()),
    );
    let pool = SessionPool::builder_arc(source.clone())
        .knobs_from(|_| None)
        .build();
    for _ in 0..3 {
        for k in [&user, &admin, &other] {
            let session = pool.session(k).await?;
            ensure!(session.key() == k);
            list_pods(&session).await?;
        }
    }
    ensure!(source.calls() == 3, "one build per key: {}", source.calls());
    ensure!(pool.session(&user).await?.auth() == AuthKind::StaticToken);
    ensure!(pool.session(&admin).await?.auth() == AuthKind::Certificate);
    let auths: Vec<_> = east
        .requests()
        .iter()
        .map(|r| (r.connection, r.auth))
        .collect();
    ensure!(auths.len() == 6 && west.requests().len() == 3);
    // Each session has its own connection, and a connection carries one identity.
    for (connection, auth) in &auths {
        let same = auths.iter().filter(|(c, _)| c == connection);
        ensure!(
            same.clone().all(|(_, a)| a == auth),
            "mixed identities on one connection"
        );
    }
    ensure!(auths.iter().any(|(_, a)| *a == AuthMethod::Bearer));
    ensure!(auths.iter().any(|(_, a)| *a == AuthMethod::ClientCert));
    ensure!(east.tls_connections() == 2 && west.tls_connections() == 1);
    Ok(())
}

// covers K3: the client certificate's notAfter clamps the TTL; the session is rebuilt (a new
// connection) once it passes.
pub(crate) async fn ttl_clamped_by_certificate_not_after() -> anyhow::Result<()> {
    let server = K8sServer::start().await?;
    let kubeconfig = server.kubeconfig_cert()?;
    remember(&kubeconfig);
    // The wall clock says the certificate has 90 s left.
    let clock = FixedClock::new(cert_not_after(&kubeconfig) - Duration::from_secs(90));
    let pool = SessionPool::builder(KubeconfigSource::from_kubeconfig(kubeconfig))
        .clock(Arc::new(clock))
        .knobs_from(|_| None)
        .build();
    let session = pool.session(&key("east")).await?;
    let ttl = session.effective_ttl();
    ensure!(
        ttl.bound == TtlBound::Certificate && ttl.ttl == Duration::from_secs(90),
        "{ttl:?}"
    );
    list_pods(&session).await?;
    drop(session);

    advance(Duration::from_secs(89)).await;
    list_pods(&*pool.session(&key("east")).await?).await?;
    ensure!(pool.stats().creations == 1);
    advance(Duration::from_secs(1)).await;
    list_pods(&*pool.session(&key("east")).await?).await?;
    ensure!(
        pool.stats().creations == 2,
        "rebuilt at notAfter: {:?}",
        pool.stats()
    );
    ensure!(server.tls_connections() == 2);
    Ok(())
}

// covers K3: a bearer token's expiry minus 60 s clamps the TTL, for a static JWT and for a
// kubelogin user served by an Azure credential (whose token the server then accepts).
pub(crate) async fn ttl_clamped_by_token_expiry() -> anyhow::Result<()> {
    let server = K8sServer::start().await?;
    let jwt = unsigned_jwt(
        "6dae42f8-4368-4678-94ff-3960e28e3630",
        200,
        "k8s-session-test",
    );
    server.add_token(&jwt);
    let static_user = server.kubeconfig_with(KubeAuth::Token(&jwt));
    let aad = kubelogin_kubeconfig(&server);
    let source = PerKey::default()
        .with(&key("static"), static_user)
        .with(&key("aad"), aad);
    let credential = FakeCredential::new(&jwt, Duration::from_secs(200));
    let pool = SessionPool::builder(source)
        .aad_credential(credential.clone())
        .knobs_from(|_| None)
        .build();
    for (cluster, auth) in [
        ("static", AuthKind::StaticToken),
        ("aad", AuthKind::AadToken),
    ] {
        let session = pool.session(&key(cluster)).await?;
        let ttl = session.effective_ttl();
        ensure!(session.auth() == auth, "{cluster}: {:?}", session.auth());
        ensure!(ttl.bound == TtlBound::Token, "{cluster}: {ttl:?}");
        ensure!(
            close_to(ttl.ttl, Duration::from_secs(140)),
            "{cluster}: {ttl:?}"
        );
        list_pods(&session).await.context(cluster)?;
    }
    let scopes = credential.scopes.lock().unwrap().clone();
    ensure!(
        scopes == ["6dae42f8-4368-4678-94ff-3960e28e3630/.default"],
        "{scopes:?}"
    );
    ensure!(
        server
            .requests()
            .iter()
            .all(|r| r.auth == AuthMethod::Bearer && r.status == 200)
    );
    Ok(())
}

// covers K4: a token within the margin gives one-shot sessions: they work, are never pooled,
// and are retired on drop.
pub(crate) async fn one_shot_when_ttl_collapses() -> anyhow::Result<()> {
    let server = K8sServer::start().await?;
    let jwt = unsigned_jwt("k8s", 30, "k8s-session-test");
    server.add_token(&jwt);
    let kubeconfig = server.kubeconfig_with(KubeAuth::Token(&jwt));
    remember(&kubeconfig);
    let retired = Arc::new(AtomicUsize::new(0));
    let count = retired.clone();
    let pool = SessionPool::builder(KubeconfigSource::from_kubeconfig(kubeconfig))
        .knobs_from(|_| None)
        .on_retire(move |_| {
            count.fetch_add(1, Ordering::SeqCst);
        })
        .build();
    for _ in 0..2 {
        let session = pool.session(&key("east")).await?;
        ensure!(!session.is_pooled() && session.effective_ttl().ttl.is_zero());
        ensure!(pool.is_empty());
        list_pods(&session).await?;
    }
    tokio::task::yield_now().await;
    let stats = pool.stats();
    ensure!(stats.one_shots == 2 && stats.creations == 0, "{stats:?}");
    ensure!(
        retired.load(Ordering::SeqCst) == 2,
        "both one-shot sessions retired"
    );
    ensure!(
        server.tls_connections() == 2,
        "one-shot sessions are not reused"
    );
    Ok(())
}

// covers K5: with the pool full, a new session evicts the soonest-expiring one.
pub(crate) async fn capacity_evicts_the_soonest_expiry() -> anyhow::Result<()> {
    let server = K8sServer::start().await?;
    let now = SystemTime::now();
    let at = |s: u64| now + Duration::from_secs(s);
    let source = PerKey::default()
        .expiring(&key("late"), server.kubeconfig_token(), at(250))
        .expiring(&key("soon"), server.kubeconfig_token(), at(100))
        .expiring(&key("new"), server.kubeconfig_token(), at(200));
    let retired: Arc<Mutex<Vec<SessionKey>>> = Arc::default();
    let log = retired.clone();
    let pool = SessionPool::builder(source)
        .clock(Arc::new(FixedClock::new(now)))
        .knobs_from(|name| (name == "K8S_SESSION_POOL_MAX_ENTRIES").then(|| "2".into()))
        .on_retire(move |k| log.lock().unwrap().push(k.clone()))
        .build();
    for cluster in ["late", "soon", "new"] {
        list_pods(&*pool.session(&key(cluster)).await?).await?;
    }
    tokio::task::yield_now().await;
    ensure!(
        *retired.lock().unwrap() == [key("soon")],
        "{:?}",
        retired.lock().unwrap()
    );
    ensure!(pool.len() == 2 && pool.stats().evictions.capacity == 1);
    // The survivors are still hits.
    pool.session(&key("late")).await?;
    pool.session(&key("new")).await?;
    ensure!(pool.stats().hits == 2);
    Ok(())
}

// covers K7: every retire (expiry, capacity, invalidate, reset, shutdown) runs with no pool
// lock held; shutdown drains and refuses new sessions.
pub(crate) async fn retire_never_under_the_lock() -> anyhow::Result<()> {
    let server = K8sServer::start().await?;
    let now = SystemTime::now();
    let mut source = PerKey::default();
    for (cluster, secs) in [
        ("a", 10),
        ("b", 3600),
        ("c", 3600),
        ("d", 3600),
        ("e", 3600),
    ] {
        source = source.expiring(
            &key(cluster),
            server.kubeconfig_token(),
            now + Duration::from_secs(secs),
        );
    }
    let holder: Arc<Mutex<Option<SessionPool>>> = Arc::default();
    let (retires, locked) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (h, r, l) = (holder.clone(), retires.clone(), locked.clone());
    let pool = SessionPool::builder(source)
        .clock(Arc::new(FixedClock::new(now)))
        .max_entries(2)
        .on_retire(move |_| {
            r.fetch_add(1, Ordering::SeqCst);
            if h.lock()
                .unwrap()
                .as_ref()
                .is_some_and(SessionPool::is_locked)
            {
                l.fetch_add(1, Ordering::SeqCst);
            }
        })
        .build();
    *holder.lock().unwrap() = Some(pool.clone());
    for cluster in ["a", "b"] {
        list_pods(&*pool.session(&key(cluster)).await?).await?;
    }
    advance(Duration::from_secs(10)).await;
    list_pods(&*pool.session(&key("a")).await?).await?; // expired → retired
    list_pods(&*pool.session(&key("c")).await?).await?; // over capacity → retired
    tokio::task::yield_now().await;
    pool.invalidate(&key("c")).await;
    let reset = pool.reset().await;
    list_pods(&*pool.session(&key("d")).await?).await?;
    let shutdown = pool.shutdown().await;
    ensure!(
        shutdown.skipped_shards == 0 && shutdown.retire.retired == 1,
        "{shutdown:?}"
    );
    ensure!(reset.failed == 0);
    ensure!(pool.session(&key("e")).await.is_err(), "shut down");
    holder.lock().unwrap().take();
    ensure!(
        retires.load(Ordering::SeqCst) >= 5,
        "{} retires",
        retires.load(Ordering::SeqCst)
    );
    ensure!(
        locked.load(Ordering::SeqCst) == 0,
        "a retire ran under the pool lock"
    );
    Ok(())
}
