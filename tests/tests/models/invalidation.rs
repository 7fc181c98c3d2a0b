//! The token cache's invalidation (T11) racing its background refresh (T3, T5).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use shuttle::future::{self, block_on, yield_now};
use token_refresh::{RefreshConfig, TokenCache};

use super::{LIFETIME, Stepped, drain, exhaustive, paused_runtime, random, spawn_driver};

/// Runs in which an invalidation matched the cached token.
static MATCHED: AtomicUsize = AtomicUsize::new(0);
/// Runs in which an invalidation found a newer token already cached (and changed nothing).
static IGNORED: AtomicUsize = AtomicUsize::new(0);

/// `callers` tasks make `calls` calls each on a cold cache whose tokens are stale as soon as
/// they are installed (so background refreshes run); an *invalidator* task, at a point the
/// scheduler picks, reports the newest token any caller has seen as rejected by a server; a
/// *driver* steps the tokio runtime the background refresh runs on. Checks, in every schedule:
/// - a call that begins after an invalidation of token n matched never gets token n or an
///   older one: the rejected token is not served again, and neither is a token fetched before
///   it (T11, T5);
/// - tokens never go backwards for a caller (T5);
/// - one blocking and one background fetch at most at a time (T1, T3: asserted in `Stepped`).
fn token_invalidation_model(callers: usize, calls: usize, steps: usize) {
    let runtime = Arc::new(paused_runtime());
    let context = runtime.enter();
    let config = RefreshConfig::default()
        .stale_duration(2 * LIFETIME)
        .load_timeout(std::time::Duration::from_secs(3600));
    let cache = TokenCache::new(Stepped::default(), config);
    let newest_seen = Arc::new(AtomicU64::new(0));
    let rejected_floor = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..callers {
        let (cache, newest_seen, rejected_floor) =
            (cache.clone(), newest_seen.clone(), rejected_floor.clone());
        tasks.push(future::spawn(async move {
            let mut seen = 0;
            for call in 0..calls {
                if call > 0 {
                    yield_now().await;
                }
                let floor = rejected_floor.load(Ordering::SeqCst);
                let token = cache.token().await.expect("the source never fails");
                assert!(token >= seen, "token {token} older than {seen} (T5)");
                assert!(
                    token > floor,
                    "token {token} served after token {floor} was rejected (T11)"
                );
                seen = token;
                newest_seen.fetch_max(token, Ordering::SeqCst);
            }
        }));
    }
    let invalidator = {
        let (cache, newest_seen, rejected_floor) =
            (cache.clone(), newest_seen.clone(), rejected_floor.clone());
        future::spawn(async move {
            let rejected = newest_seen.load(Ordering::SeqCst);
            if rejected == 0 {
                return;
            }
            if cache.invalidate_token(&rejected) {
                rejected_floor.fetch_max(rejected, Ordering::SeqCst);
                MATCHED.fetch_add(1, Ordering::Relaxed);
            } else {
                IGNORED.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let driver = spawn_driver(&runtime, steps);
    for task in tasks {
        block_on(task).expect("caller finished");
    }
    block_on(invalidator).expect("invalidator finished");
    block_on(driver).expect("driver finished");
    drop(cache);
    drain(&runtime);
    drop(context);
}

// covers T11 with T3, T5: every schedule of one caller making three calls while a background
// refresh runs and a server's rejection of the newest token arrives.
#[test]
fn token_cache_every_schedule_of_an_invalidation_racing_a_background_refresh() {
    exhaustive(
        "token cache, 1 caller x 3 calls, background + invalidate",
        100_000,
        || token_invalidation_model(1, 3, 3),
    );
    assert!(
        MATCHED.load(Ordering::Relaxed) > 0,
        "no schedule reached a matching invalidation"
    );
}

// covers T11 on a larger configuration, random schedules: two callers, three calls each.
#[test]
fn token_cache_invalidation_two_callers_random() {
    random(
        "token cache, 2 callers x 3 calls, background + invalidate",
        10_000,
        || token_invalidation_model(2, 3, 5),
    );
    assert!(
        MATCHED.load(Ordering::Relaxed) > 0 && IGNORED.load(Ordering::Relaxed) > 0,
        "the schedules reached a matching and a stale invalidation: {} / {}",
        MATCHED.load(Ordering::Relaxed),
        IGNORED.load(Ordering::Relaxed)
    );
}
