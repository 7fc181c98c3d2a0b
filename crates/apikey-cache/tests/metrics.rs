//! Issue 19: the series apikey-cache records through the `metrics` facade, with a local
//! debugging recorder, driven through the public API: authentications by outcome, store reads
//! by operation and outcome with their duration, reload failures, the snapshot (feed) age and
//! the negative cache's size. Labels are bounded: never a key, hash or account.
#![cfg(feature = "metrics")]

use std::time::Duration;

use apikey_cache::{ApiKeyCache, AuthError, CacheConfig, MemoryStore};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use metrics_util::{CompositeKey, MetricKind};

type Series = Vec<(
    CompositeKey,
    Option<metrics::Unit>,
    Option<metrics::SharedString>,
    DebugValue,
)>;

fn run(test: impl std::future::Future<Output = ()>) -> Series {
    let recorder = DebuggingRecorder::new();
    let snapshotter: Snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .expect("runtime")
            .block_on(test)
    });
    snapshotter.snapshot().into_vec()
}

fn labels(key: &CompositeKey) -> Vec<(String, String)> {
    key.key()
        .labels()
        .map(|l| (l.key().to_string(), l.value().to_string()))
        .collect()
}

/// The value of the series `name` whose labels include every pair of `with`.
fn value<'a>(
    series: &'a Series,
    kind: MetricKind,
    name: &str,
    with: &[(&str, &str)],
) -> Option<&'a DebugValue> {
    series
        .iter()
        .find(|(key, ..)| {
            key.kind() == kind
                && key.key().name() == name
                && with
                    .iter()
                    .all(|(k, v)| labels(key).iter().any(|(lk, lv)| lk == k && lv == v))
        })
        .map(|(.., value)| value)
}

fn counter(series: &Series, name: &str, with: &[(&str, &str)]) -> u64 {
    match value(series, MetricKind::Counter, name, with) {
        Some(DebugValue::Counter(n)) => *n,
        other => panic!("no counter {name} {with:?}: {other:?}"),
    }
}

fn gauge(series: &Series, name: &str) -> f64 {
    match value(series, MetricKind::Gauge, name, &[]) {
        Some(DebugValue::Gauge(v)) => v.into_inner(),
        other => panic!("no gauge {name}: {other:?}"),
    }
}

fn histogram_len(series: &Series, name: &str, with: &[(&str, &str)]) -> usize {
    match value(series, MetricKind::Histogram, name, with) {
        Some(DebugValue::Histogram(v)) => v.len(),
        other => panic!("no histogram {name} {with:?}: {other:?}"),
    }
}

// covers X1 / issue 19 (keyed layout): 3 ok, 1 revoked, 2 unknown, 1 malformed, 1 unavailable;
// point reads and feed reads counted by operation with one duration each; a failed feed read
// is a reload failure and the feed age grows; the negative cache's size follows.
#[test]
fn keyed_cache_records_outcomes_reads_failures_and_ages() {
    let store = MemoryStore::keyed();
    let secrets = std::sync::Mutex::new(Vec::new());
    let series = run(async {
        let writer = ApiKeyCache::new(store.clone(), CacheConfig::default());
        let account = writer.create_account("acme", "Acme").await.expect("create");
        let a = writer.issue_key(&account).await.expect("issue");
        let b = writer.issue_key(&account).await.expect("issue");
        let cache = ApiKeyCache::new(store.clone(), CacheConfig::default());
        for _ in 0..2 {
            assert!(cache.authenticate(a.secret.expose()).await.is_ok());
        }
        assert!(cache.authenticate(b.secret.expose()).await.is_ok());
        writer.revoke_key(&b.identity.key).await.expect("revoke");
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(matches!(
            cache.authenticate(b.secret.expose()).await,
            Err(AuthError::Revoked)
        ));
        // Two well-formed keys the store does not hold (valid checksums: fresh secrets of a
        // throwaway store's cache).
        let other = ApiKeyCache::new(MemoryStore::keyed(), CacheConfig::default());
        let ghost = other
            .create_account("ghost", "Ghost")
            .await
            .expect("create");
        for _ in 0..2 {
            let unknown = other.issue_key(&ghost).await.expect("issue");
            assert!(matches!(
                cache.authenticate(unknown.secret.expose()).await,
                Err(AuthError::Unknown)
            ));
            secrets
                .lock()
                .unwrap()
                .push(unknown.secret.expose().to_string());
        }
        assert!(matches!(
            cache.authenticate("not a key").await,
            Err(AuthError::Malformed)
        ));
        store.fail_loads(true);
        tokio::time::advance(Duration::from_secs(5)).await;
        let unknown = other.issue_key(&ghost).await.expect("issue");
        assert!(matches!(
            cache.authenticate(unknown.secret.expose()).await,
            Err(AuthError::Unavailable { .. })
        ));
        secrets
            .lock()
            .unwrap()
            .push(unknown.secret.expose().to_string());
        let _ = cache.stats();
    });
    let auth = |outcome| counter(&series, "apikey.authentications", &[("outcome", outcome)]);
    assert_eq!(auth("ok"), 3);
    assert_eq!(auth("revoked"), 1);
    assert_eq!(auth("unknown"), 2);
    assert_eq!(auth("malformed"), 1);
    assert_eq!(auth("unavailable"), 1);
    let reads = |op, outcome| {
        counter(
            &series,
            "apikey.store.reads",
            &[("operation", op), ("outcome", outcome)],
        )
    };
    // The reader's point reads: a, b and the 2 unknown keys (the revoked b was updated by the
    // feed, no read); then, with the store failing, the due feed read and one point read fail.
    assert_eq!(reads("get_record", "ok"), 4);
    assert_eq!(reads("get_record", "error"), 1);
    assert!(reads("read_feed", "ok") >= 2);
    assert!(reads("read_feed", "error") >= 1);
    assert!(counter(&series, "apikey.reload.failures", &[]) >= 2);
    assert!(
        histogram_len(
            &series,
            "apikey.store.read.duration",
            &[("operation", "get_record")]
        ) >= 4
    );
    assert_eq!(gauge(&series, "apikey.negative_cache.entries"), 2.0);
    assert!(
        gauge(&series, "apikey.snapshot.age") >= 5.0,
        "the feed is 5 s behind"
    );
    for (key, ..) in &series {
        for (k, v) in labels(key) {
            assert!(
                matches!(k.as_str(), "outcome" | "operation"),
                "unexpected label {k}"
            );
            assert!(v.len() <= 12, "bounded label values only: {k}={v}");
            // A value of 8+ characters found in a key would be a piece of it; shorter ones
            // ("ok", "feed") turn up in random base64 keys by chance (a flaky check before).
            assert!(
                v.len() < 8 || !secrets.lock().unwrap().iter().any(|s| s.contains(&v)),
                "a label value is a piece of a key: {k}={v}"
            );
        }
    }
}

// covers X1 / issue 19 (document layout): loads are store reads with operation "load"; a
// failed load is a reload failure and the snapshot age is how old the kept snapshot is.
#[test]
fn document_cache_records_loads_and_snapshot_age() {
    let store = MemoryStore::new();
    let series = run(async {
        let cache = ApiKeyCache::new(store.clone(), CacheConfig::default());
        let account = cache.create_account("acme", "Acme").await.expect("create");
        let issued = cache.issue_key(&account).await.expect("issue");
        let other = ApiKeyCache::new(store.clone(), CacheConfig::default());
        assert!(other.authenticate(issued.secret.expose()).await.is_ok());
        store.fail_loads(true);
        tokio::time::advance(Duration::from_secs(31)).await;
        assert!(
            other.authenticate(issued.secret.expose()).await.is_ok(),
            "stale served"
        );
    });
    assert!(
        counter(
            &series,
            "apikey.store.reads",
            &[("operation", "load"), ("outcome", "ok")]
        ) >= 1
    );
    assert!(
        counter(
            &series,
            "apikey.store.reads",
            &[("operation", "load"), ("outcome", "error")]
        ) >= 1
    );
    assert!(counter(&series, "apikey.reload.failures", &[]) >= 1);
    assert_eq!(
        counter(&series, "apikey.authentications", &[("outcome", "ok")]),
        2
    );
    assert!(gauge(&series, "apikey.snapshot.age") >= 31.0);
}

// covers issue 19 + A12: `apikey.cache.idle_evictions` counts the keys the idle sweep freed
// (two keys cached, one kept in use past 3 × key_idle: one freed), with no labels.
#[test]
fn idle_sweep_is_counted() {
    let series = run(async {
        let store = MemoryStore::keyed();
        let writer = ApiKeyCache::new(store.clone(), CacheConfig::default());
        let account = writer.create_account("acme", "Acme").await.expect("create");
        let used = writer.issue_key(&account).await.expect("issue");
        let idle = writer.issue_key(&account).await.expect("issue");
        let reader = ApiKeyCache::new(
            store,
            CacheConfig::default().key_idle(Duration::from_secs(30)),
        );
        assert!(reader.authenticate(used.secret.expose()).await.is_ok());
        assert!(reader.authenticate(idle.secret.expose()).await.is_ok());
        for _ in 0..20 {
            tokio::time::advance(Duration::from_secs(5)).await;
            assert!(reader.authenticate(used.secret.expose()).await.is_ok());
        }
        assert_eq!(reader.stats().idle_evictions, 1);
    });
    assert_eq!(counter(&series, "apikey.cache.idle_evictions", &[]), 1);
    // (Its unit is described once per process, to whichever recorder was current then.)
    let (key, ..) = series
        .iter()
        .find(|(key, ..)| key.key().name() == "apikey.cache.idle_evictions")
        .expect("series");
    assert_eq!(key.key().labels().count(), 0);
}
