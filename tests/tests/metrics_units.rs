//! pool-core's series carry their units. A crate describes each series once per process, to
//! whichever recorder is current then; this file is its own test binary with one test, so its
//! recorder is the first and only one to see the descriptions (blackbox_metrics.rs runs many
//! recorders in parallel and can only check units when they happen to arrive).

use metrics::Unit;
use metrics_util::debugging::DebuggingRecorder;
use pool_core::{Created, KeyedPool, PoolConfig, Retire};

#[derive(Debug)]
struct Plain;

impl Retire for Plain {}

#[test]
fn pool_series_are_described_with_their_units() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _pool = metrics::with_local_recorder(&recorder, || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .expect("runtime")
            .block_on(async {
                let pool: KeyedPool<String, Plain> =
                    KeyedPool::new(PoolConfig::default().name("units"));
                pool.get_or_create(&"k".to_owned(), || async {
                    Ok::<_, std::io::Error>(Created::new(Plain))
                })
                .await
                .expect("created");
                pool
            })
    });
    let described: Vec<(String, Option<Unit>)> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter(|(key, ..)| key.key().name().starts_with("pool."))
        .map(|(key, unit, ..)| (key.key().name().to_string(), unit))
        .collect();
    assert!(
        described.iter().any(|(name, _)| name == "pool.creations"),
        "{described:?}"
    );
    for (name, unit) in described {
        let want = if name == "pool.create.duration" {
            Unit::Seconds
        } else {
            Unit::Count
        };
        assert_eq!(unit, Some(want), "{name}");
    }
}
