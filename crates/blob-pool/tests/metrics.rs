//! The metrics blob-pool records (issue 19), read back from `metrics`' debugging recorder:
//! pool-core's series under `pool.name = "blob-pool"` and blob-pool's own counters, driven
//! through the public API (no IO: building a client sends nothing).

use std::sync::Arc;

use azure_core::credentials::{AccessToken, TokenCredential, TokenRequestOptions};
use azure_core::time::{Duration as AzDuration, OffsetDateTime};
use blob_pool::{BlobPool, BlobPoolConfig, Endpoint};
use metrics_util::MetricKind;
use metrics_util::debugging::DebugValue;
use testkit::metrics::{counter, recorded, series};

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
        series(&recorded, MetricKind::Gauge, "pool.entries", &[POOL]),
        Some(&DebugValue::Gauge(0.0.into()))
    );
}
