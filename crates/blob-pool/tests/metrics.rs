//! The metrics blob-pool records (issue 19), read back from `metrics`' debugging recorder:
//! pool-core's series under `pool.name = "blob-pool"` and blob-pool's own counters, driven
//! through the public API (no IO: building a client sends nothing).

use std::future::Future;
use std::sync::Arc;

use azure_core::credentials::{AccessToken, TokenCredential, TokenRequestOptions};
use azure_core::time::{Duration as AzDuration, OffsetDateTime};
use blob_pool::{BlobPool, BlobPoolConfig, Endpoint};
use metrics::{SharedString, Unit};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use metrics_util::{CompositeKey, MetricKind};

#[derive(Debug)]
struct Cred;

#[async_trait::async_trait]
impl TokenCredential for Cred {
    async fn get_token(
        &self,
        _scopes: &[&str],
        _options: Option<TokenRequestOptions<'_>>,
    ) -> azure_core::Result<AccessToken> {
        Ok(AccessToken::new(
            "token",
            OffsetDateTime::now_utc() + AzDuration::hours(1),
        ))
    }
}

type Recorded = Vec<(CompositeKey, Option<Unit>, Option<SharedString>, DebugValue)>;

/// Run `test` on a paused current-thread runtime with a fresh debugging recorder for this
/// thread only; what it returns stays alive until the snapshot is taken.
fn recorded<F, Fut, T>(test: F) -> Recorded
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = T>,
{
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _kept = metrics::with_local_recorder(&recorder, || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .expect("runtime")
            .block_on(test())
    });
    snapshotter.snapshot().into_vec()
}

fn value<'a>(
    recorded: &'a Recorded,
    kind: MetricKind,
    name: &str,
    labels: &[(&str, &str)],
) -> Option<&'a DebugValue> {
    recorded
        .iter()
        .find(|(key, ..)| {
            let mut found: Vec<(&str, &str)> =
                key.key().labels().map(|l| (l.key(), l.value())).collect();
            let mut wanted = labels.to_vec();
            found.sort();
            wanted.sort();
            key.kind() == kind && key.key().name() == name && found == wanted
        })
        .map(|(.., value)| value)
}

fn counter(recorded: &Recorded, name: &str, labels: &[(&str, &str)]) -> u64 {
    match value(recorded, MetricKind::Counter, name, labels) {
        Some(DebugValue::Counter(value)) => *value,
        other => panic!("counter {name} {labels:?}: {other:?}"),
    }
}

const POOL: (&str, &str) = ("pool.name", "blob-pool");

// covers B1, B4 and issue 19: clients are pool-core entries named "blob-pool"; a dropped
// credential's client is evicted with cause owner_gone and counted as a dropped credential.
#[test]
fn pool_series_are_named_blob_pool_and_dropped_credentials_are_counted() {
    let recorded = recorded(|| async {
        let pool = BlobPool::builder()
            .config(BlobPoolConfig::default().sweep_interval(None))
            .build()
            .expect("pool");
        let endpoint = Endpoint::parse("https://127.0.0.1:10000/account1").expect("endpoint");
        let credential: Arc<dyn TokenCredential> = Arc::new(Cred);
        for _ in 0..3 {
            pool.client(&credential, &endpoint).await.expect("client");
        }
        drop(credential);
        pool.evict_dropped().await;
        assert_eq!(pool.stats().credentials_dropped, 1);
        pool
    });
    assert_eq!(counter(&recorded, "pool.creations", &[POOL]), 1);
    assert_eq!(counter(&recorded, "pool.misses", &[POOL]), 1);
    assert_eq!(
        counter(
            &recorded,
            "pool.evictions",
            &[POOL, ("cause", "owner_gone")]
        ),
        1
    );
    assert_eq!(
        counter(&recorded, "blob_pool.credentials_dropped", &[POOL]),
        1
    );
    assert_eq!(counter(&recorded, "blob_pool.tokens_rejected", &[POOL]), 0);
    assert_eq!(
        value(&recorded, MetricKind::Gauge, "pool.entries", &[POOL]),
        Some(&DebugValue::Gauge(0.0.into()))
    );
}
