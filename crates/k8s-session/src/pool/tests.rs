//! Unit tests of the session pool in virtual time (no network: kube clients connect lazily).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::config::Kubeconfig;

use super::*;
use crate::testutil::{
    FakeCredential, MapSource, cert_kubeconfig, exec_kubeconfig, jwt, token_kubeconfig, wall_now,
};
use crate::{FixedClock, TtlBound};

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn key(cluster: &str) -> SessionKey {
    SessionKey::new("sub", "rg", cluster)
}

fn pool_over(source: MapSource) -> (SessionPool, Arc<MapSource>) {
    let source = Arc::new(source);
    let pool = SessionPool::builder_arc(source.clone())
        .clock(Arc::new(FixedClock::new(wall_now())))
        .knobs_from(|_| None)
        .build();
    (pool, source)
}

fn calls(source: &MapSource) -> usize {
    source.calls.load(Ordering::SeqCst)
}

fn cert_in(s: u64) -> Kubeconfig {
    cert_kubeconfig(wall_now() + secs(s))
}

// covers K1, K6: the second lookup is a hit; dropping or closing a handle returns it.
#[tokio::test(start_paused = true)]
async fn one_session_per_key_reused_after_drop_and_close() {
    let (pool, source) = pool_over(MapSource::default().with(&key("a"), cert_in(3600)));
    let first = pool.session(&key("a")).await.unwrap();
    assert!(first.is_pooled());
    first.close();
    let second = pool.session(&key("a")).await.unwrap();
    drop(second);
    let _third = pool.session(&key("a")).await.unwrap();
    let stats = pool.stats();
    assert_eq!((stats.creations, stats.hits), (1, 2));
    assert_eq!(calls(&source), 1);
    assert_eq!(pool.len(), 1);
    assert_eq!(
        stats.evictions.total(),
        0,
        "closing must not retire a pooled session"
    );
}

// covers K1: admin and user sessions, and different clusters, never share a session.
#[tokio::test(start_paused = true)]
async fn keys_are_isolated_by_cluster_and_admin() {
    let user = key("a");
    let admin = key("a").admin(true);
    let other = SessionKey::new("sub", "rg2", "a");
    let source = MapSource::default()
        .with(&user, cert_in(3600))
        .with(&admin, token_kubeconfig("admin-token"))
        .with(&other, cert_in(3600));
    let (pool, source) = pool_over(source);
    let u = pool.session(&user).await.unwrap();
    let a = pool.session(&admin).await.unwrap();
    let o = pool.session(&other).await.unwrap();
    assert_eq!(
        (u.auth(), a.auth()),
        (AuthKind::Certificate, AuthKind::StaticToken)
    );
    assert_eq!((u.key(), a.key(), o.key()), (&user, &admin, &other));
    assert_eq!((pool.len(), calls(&source)), (3, 3));
    assert_eq!(
        pool.session(&admin).await.unwrap().auth(),
        AuthKind::StaticToken
    );
    assert_eq!(calls(&source), 3);
}

// covers K3: default TTL 300 s when credentials outlive it.
#[tokio::test(start_paused = true)]
async fn pool_ttl_applies_when_credentials_outlive_it() {
    let (pool, source) = pool_over(MapSource::default().with(&key("a"), cert_in(86_400)));
    let session = pool.session(&key("a")).await.unwrap();
    assert_eq!(session.effective_ttl().bound, TtlBound::PoolTtl);
    assert_eq!(session.deadline(), Some(Instant::now() + secs(300)));
    drop(session);
    tokio::time::advance(secs(299)).await;
    pool.session(&key("a")).await.unwrap();
    tokio::time::advance(secs(1)).await;
    pool.session(&key("a")).await.unwrap();
    assert_eq!(calls(&source), 2, "rebuilt exactly at the pool TTL");
}

// covers K3: the certificate's notAfter clamps the session's deadline.
#[tokio::test(start_paused = true)]
async fn certificate_not_after_clamps_the_deadline() {
    let (pool, source) = pool_over(MapSource::default().with(&key("a"), cert_in(90)));
    let session = pool.session(&key("a")).await.unwrap();
    assert_eq!(session.effective_ttl().bound, TtlBound::Certificate);
    assert_eq!(session.deadline(), Some(Instant::now() + secs(90)));
    drop(session);
    tokio::time::advance(secs(89)).await;
    pool.session(&key("a")).await.unwrap();
    assert_eq!(calls(&source), 1);
    tokio::time::advance(secs(1)).await;
    pool.session(&key("a")).await.unwrap();
    assert_eq!(calls(&source), 2, "never handed out at or after notAfter");
    assert_eq!(pool.stats().evictions.expired, 1);
}

// covers K3: a static JWT's exp minus 60 s clamps the deadline.
#[tokio::test(start_paused = true)]
async fn static_token_expiry_minus_margin_clamps_the_deadline() {
    let token = jwt(wall_now() + secs(200));
    let (pool, _) = pool_over(MapSource::default().with(&key("a"), token_kubeconfig(&token)));
    let session = pool.session(&key("a")).await.unwrap();
    assert_eq!(session.effective_ttl().bound, TtlBound::Token);
    assert_eq!(session.deadline(), Some(Instant::now() + secs(140)));
}

// covers K3: an AAD (kubelogin) session's deadline follows its token's expiry minus 60 s, and
// the next session after it gets a new token.
#[tokio::test(start_paused = true)]
async fn aad_session_deadline_follows_the_token() {
    let fake = Arc::new(FakeCredential::new("aad", wall_now() + secs(180)));
    let source = Arc::new(
        MapSource::default().with(&key("a"), exec_kubeconfig("kubelogin", &["get-token"])),
    );
    let pool = SessionPool::builder_arc(source.clone())
        .aad_credential(fake.clone())
        .clock(Arc::new(FixedClock::new(wall_now())))
        .knobs_from(|_| None)
        .build();
    let session = pool.session(&key("a")).await.unwrap();
    assert_eq!(session.auth(), AuthKind::AadToken);
    assert_eq!(session.deadline(), Some(Instant::now() + secs(120)));
    drop(session);
    tokio::time::advance(secs(120)).await;
    pool.session(&key("a")).await.unwrap();
    assert_eq!(
        fake.scopes.lock().unwrap().len(),
        2,
        "a new token for the new session"
    );
}

// covers K4: a collapsed TTL hands out a one-shot session, never pooled, retired on drop.
#[tokio::test(start_paused = true)]
async fn collapsed_ttl_gives_a_one_shot_session() {
    let retired = Arc::new(Mutex::new(Vec::new()));
    let log = retired.clone();
    let token = jwt(wall_now() + secs(30));
    let source = MapSource::default().with(&key("a"), token_kubeconfig(&token));
    let pool = SessionPool::builder(source)
        .clock(Arc::new(FixedClock::new(wall_now())))
        .knobs_from(|_| None)
        .on_retire(move |key| log.lock().unwrap().push(key.clone()))
        .build();
    let session = pool.session(&key("a")).await.unwrap();
    assert!(!session.is_pooled());
    assert_eq!(session.effective_ttl().ttl, Duration::ZERO);
    assert!(pool.is_empty());
    drop(session);
    tokio::task::yield_now().await; // the one-shot retire runs in the background
    assert_eq!(*retired.lock().unwrap(), vec![key("a")]);
    let again = pool.session(&key("a")).await.unwrap();
    assert!(
        !again.is_pooled(),
        "each caller gets its own one-shot session"
    );
    let stats = pool.stats();
    assert_eq!((stats.one_shots, stats.creations, stats.entries), (2, 0, 0));
}

// covers K4: a zero pool TTL (K8S_SESSION_POOL_TTL_SECONDS=0) disables pooling.
#[tokio::test(start_paused = true)]
async fn zero_ttl_knob_makes_every_session_one_shot() {
    let source = MapSource::default().with(&key("a"), cert_in(3600));
    let pool = SessionPool::builder(source)
        .knobs_from(|name| (name == "K8S_SESSION_POOL_TTL_SECONDS").then(|| "0".to_string()))
        .build();
    assert!(!pool.session(&key("a")).await.unwrap().is_pooled());
    assert!(pool.is_empty());
}

// covers K5: beyond max entries the soonest-expiring session is evicted.
#[tokio::test(start_paused = true)]
async fn capacity_evicts_the_soonest_expiring_session() {
    let retired = Arc::new(Mutex::new(Vec::new()));
    let log = retired.clone();
    let source = MapSource::default()
        .with(&key("late"), cert_in(250))
        .with(&key("soon"), cert_in(100))
        .with(&key("new"), cert_in(200));
    let pool = SessionPool::builder(source)
        .clock(Arc::new(FixedClock::new(wall_now())))
        .knobs_from(|name| (name == "K8S_SESSION_POOL_MAX_ENTRIES").then(|| "2".to_string()))
        .on_retire(move |key| log.lock().unwrap().push(key.clone()))
        .build();
    assert_eq!(pool.max_entries(), 2);
    for cluster in ["late", "soon", "new"] {
        pool.session(&key(cluster)).await.unwrap();
    }
    tokio::task::yield_now().await; // capacity victims retire in the background
    assert_eq!(*retired.lock().unwrap(), vec![key("soon")]);
    assert_eq!(pool.len(), 2);
    assert_eq!(pool.stats().evictions.capacity, 1);
}

// covers K5, X4: a round-robin over one cluster more than the capacity keeps hitting (≥ 90 %
// of calls after the first rounds), and thrashing is counted. The same loop with the thrashing
// protection off (an expiry margin as long as the TTL: soonest-deadline eviction alone, the
// policy before #23) misses on every call: that is the cliff this test guards against.
#[tokio::test(start_paused = true)]
async fn round_robin_one_cluster_past_capacity_keeps_hitting() {
    let clusters: Vec<String> = (0..33).map(|i| format!("c{i}")).collect();
    let source = clusters.iter().fold(MapSource::default(), |source, c| {
        source.with(&key(c), cert_in(3600))
    });
    let source = Arc::new(source);
    let run = |margin: Duration| {
        let source = source.clone();
        let clusters = clusters.clone();
        async move {
            let pool = SessionPool::builder_arc(source.clone())
                .clock(Arc::new(FixedClock::new(wall_now())))
                .knobs_from(|_| None)
                .expiry_margin(margin)
                .build();
            assert_eq!(pool.max_entries(), 32);
            for cluster in &clusters {
                pool.session(&key(cluster)).await.unwrap();
            }
            let (before, total) = (calls(&source), clusters.len() * 10);
            for _ in 0..10 {
                for cluster in &clusters {
                    tokio::time::advance(Duration::from_millis(10)).await;
                    pool.session(&key(cluster)).await.unwrap();
                }
            }
            let builds = calls(&source) - before;
            (1.0 - builds as f64 / total as f64, pool.stats())
        }
    };
    let (hit_rate, stats) = run(DEFAULT_EXPIRY_MARGIN).await;
    assert!(hit_rate >= 0.9, "hit rate {hit_rate:.3}");
    assert!(stats.thrashing > 0);
    assert_eq!(stats.entries, 32);
    let (fifo_rate, _) = run(secs(86_400)).await;
    assert_eq!(fifo_rate, 0.0, "soonest-deadline alone thrashes");
}

// covers K5 (P8): the env knobs are read with their defaults and clamp ranges.
#[tokio::test(start_paused = true)]
async fn knobs_default_and_clamp() {
    let build = |ttl: Option<&str>, max: Option<&str>| {
        let (ttl, max) = (ttl.map(str::to_string), max.map(str::to_string));
        SessionPool::builder(MapSource::default())
            .knobs_from(move |name| match name {
                "K8S_SESSION_POOL_TTL_SECONDS" => ttl.clone(),
                "K8S_SESSION_POOL_MAX_ENTRIES" => max.clone(),
                _ => None,
            })
            .build()
    };
    let defaults = build(None, None);
    assert_eq!((defaults.ttl(), defaults.max_entries()), (secs(300), 32));
    assert_eq!(build(None, Some("0")).max_entries(), 1);
    assert_eq!(build(None, Some("100000")).max_entries(), 4096);
    assert_eq!(build(None, Some("lots")).max_entries(), 32);
    assert_eq!(build(Some("45"), None).ttl(), secs(45));
    assert_eq!(build(Some("-1"), None).ttl(), secs(300));
    let explicit = SessionPool::builder(MapSource::default())
        .max_entries(0)
        .build();
    assert_eq!(explicit.max_entries(), 1);
}

// The per-session in-flight bound: knob default and clamps, explicit value clamped too.
#[tokio::test(start_paused = true)]
async fn in_flight_knob_default_and_clamp() {
    let build = |value: Option<&str>| {
        let value = value.map(str::to_string);
        SessionPool::builder(MapSource::default())
            .knobs_from(move |name| {
                (name == "K8S_SESSION_MAX_IN_FLIGHT")
                    .then(|| value.clone())
                    .flatten()
            })
            .build()
            .max_in_flight_per_session()
    };
    assert_eq!(build(None), 32);
    assert_eq!(build(Some("4")), 4);
    assert_eq!(build(Some("0")), 1);
    assert_eq!(build(Some("5000")), 1024);
    assert_eq!(build(Some("many")), 32);
    let explicit = |max| {
        SessionPool::builder(MapSource::default())
            .max_in_flight_per_session(max)
            .build()
            .max_in_flight_per_session()
    };
    assert_eq!((explicit(0), explicit(8), explicit(1 << 20)), (1, 8, 1024));
}

// covers K1 (P1): concurrent misses for one key share one build.
#[tokio::test(start_paused = true)]
async fn concurrent_misses_build_once() {
    let (pool, source) = pool_over(MapSource::default().with(&key("a"), cert_in(3600)));
    let a = key("a");
    let sessions = futures::future::join_all((0..8).map(|_| pool.session(&a))).await;
    assert!(
        sessions
            .iter()
            .all(|s| s.as_ref().is_ok_and(Session::is_pooled))
    );
    assert_eq!(calls(&source), 1);
    assert_eq!(pool.stats().creations, 1);
}

// covers K7: retire runs with no pool lock held, for every eviction path.
#[tokio::test(start_paused = true)]
async fn retire_never_runs_under_the_pool_lock() {
    let slot: Arc<Mutex<Option<SessionPool>>> = Arc::default();
    let seen = Arc::new(AtomicUsize::new(0));
    let locked = Arc::new(AtomicUsize::new(0));
    let (pool_ref, seen2, locked2) = (slot.clone(), seen.clone(), locked.clone());
    let source = MapSource::default()
        .with(&key("a"), cert_in(10))
        .with(&key("b"), cert_in(3600))
        .with(&key("c"), cert_in(3600))
        .with(&key("d"), cert_in(3600));
    let pool = SessionPool::builder(source)
        .clock(Arc::new(FixedClock::new(wall_now())))
        .max_entries(2)
        .on_retire(move |_| {
            seen2.fetch_add(1, Ordering::SeqCst);
            if let Some(pool) = pool_ref.lock().unwrap().as_ref()
                && pool.is_locked()
            {
                locked2.fetch_add(1, Ordering::SeqCst);
            }
        })
        .build();
    *slot.lock().unwrap() = Some(pool.clone());
    pool.session(&key("a")).await.unwrap();
    pool.session(&key("b")).await.unwrap();
    tokio::time::advance(secs(10)).await;
    pool.session(&key("a")).await.unwrap(); // expired a → evicted on lookup
    pool.session(&key("c")).await.unwrap(); // over capacity → evicted
    tokio::task::yield_now().await;
    pool.invalidate(&key("c")).await;
    pool.session(&key("d")).await.unwrap();
    pool.reset().await;
    assert!(
        seen.load(Ordering::SeqCst) >= 4,
        "every path retired something"
    );
    assert_eq!(locked.load(Ordering::SeqCst), 0);
    slot.lock().unwrap().take();
}

// covers K7: reset isolates failures; the pool stays usable; shutdown refuses new sessions.
#[tokio::test(start_paused = true)]
async fn reset_isolates_failures_and_shutdown_closes() {
    let source = MapSource::default()
        .with(&key("a"), cert_in(3600))
        .with(&key("bad"), cert_in(3600))
        .with(&key("c"), cert_in(3600));
    let retired = Arc::new(AtomicUsize::new(0));
    let count = retired.clone();
    let pool = SessionPool::builder(source)
        .clock(Arc::new(FixedClock::new(wall_now())))
        .knobs_from(|_| None)
        .on_retire(move |key| {
            assert_ne!(key.cluster_name(), "bad", "simulated retire failure");
            count.fetch_add(1, Ordering::SeqCst);
        })
        .build();
    for cluster in ["a", "bad", "c"] {
        pool.session(&key(cluster)).await.unwrap();
    }
    let report = pool.reset().await;
    assert_eq!((report.retired, report.failed), (2, 1));
    assert_eq!(retired.load(Ordering::SeqCst), 2);
    assert!(pool.is_empty());
    assert!(pool.session(&key("a")).await.unwrap().is_pooled());

    let shutdown = pool.shutdown().await;
    assert_eq!((shutdown.retire.total(), shutdown.skipped_shards), (1, 0));
    assert!(matches!(
        pool.session(&key("a")).await,
        Err(SessionError::ShutDown)
    ));
}

// covers K2: a failing source is a typed, shared error, and nothing is pooled.
#[tokio::test(start_paused = true)]
async fn source_failures_are_typed_errors() {
    let (pool, _) = pool_over(MapSource::default());
    let error = pool.session(&key("missing")).await.unwrap_err();
    assert!(matches!(
        error.build_error(),
        Some(BuildError::Credentials(
            crate::CredentialsError::UnknownCluster { .. }
        ))
    ));
    assert!(error.to_string().contains("missing"));
    assert!(pool.is_empty());
}

// Secrets never reach Debug output.
#[tokio::test(start_paused = true)]
async fn debug_output_holds_no_secrets() {
    let token = jwt(wall_now() + secs(3600));
    let (pool, _) = pool_over(MapSource::default().with(&key("a"), token_kubeconfig(&token)));
    let session = pool.session(&key("a")).await.unwrap();
    for text in [format!("{session:?}"), format!("{pool:?}")] {
        assert!(!text.contains(&token), "{text}");
    }
    let material = crate::ClusterMaterial::new(token_kubeconfig(&token));
    assert!(!format!("{material:?}").contains(&token));
}

mod durations;
