//! Extreme durations (X5, issue #16): no setting and no deadline overflows `Instant + Duration`.

use super::*;

/// Effectively "never": the setters clamp anything longer to [`PoolConfig::MAX_DURATION`].
const HUGE: Duration = Duration::MAX;

// covers P2, X5: `ttl(Duration::MAX)` used to panic on the first creation (`now + ttl`).
#[tokio::test(start_paused = true)]
async fn ttl_duration_max_never_panics_and_never_expires() {
    let pool = Pool::new(PoolConfig::default().ttl(HUGE));
    let probe = Probe::default();
    let first = make(&pool, "a", &probe).await;
    assert!(first.is_pooled());
    let deadline = first.deadline().expect("the clamped TTL gives a deadline");
    assert!(deadline >= Instant::now() + Duration::from_secs(86_400 * 365 * 29));
    drop(first);
    advance(Duration::from_secs(86_400 * 365)).await;
    assert!(pool.get(&"a").is_some(), "a year later it is still pooled");
    assert_eq!(probe.created.load(Ordering::SeqCst), 1);
    assert_eq!(pool.config().ttl_value(), Some(PoolConfig::MAX_DURATION));
}

// covers P2, X5: a huge TTL combined with a factory deadline: the factory's wins.
#[tokio::test(start_paused = true)]
async fn ttl_duration_max_still_yields_to_the_factory_deadline() {
    let pool = Pool::new(PoolConfig::default().ttl(HUGE));
    let probe = Probe::default();
    let until = Instant::now() + Duration::from_secs(30);
    let value = pool
        .get_or_create(&"a", || async {
            Ok::<_, FactoryError>(Created::until(conn("a", &probe), until))
        })
        .await
        .unwrap();
    assert_eq!(value.deadline(), Some(until));
    drop(value);
    advance(Duration::from_secs(30)).await;
    assert!(
        pool.get(&"a").is_none(),
        "expired at the factory's deadline"
    );
}

// covers P3, X5: `sweep_interval(Duration::MAX)` used to panic in the sweeper task
// (`Instant::now() + every`), so the sweeper never ran. Clamped, it sweeps once per
// `MAX_DURATION`.
#[tokio::test(start_paused = true)]
async fn sweep_interval_duration_max_is_clamped_and_the_sweeper_runs() {
    let pool = Pool::new(
        PoolConfig::default()
            .ttl(Duration::from_secs(1))
            .sweep_interval(HUGE),
    );
    let probe = Probe::default();
    drop(make(&pool, "a", &probe).await);
    settle().await;
    advance(PoolConfig::MAX_DURATION + Duration::from_secs(1)).await;
    settle().await;
    assert_eq!(
        pool.len(),
        0,
        "the sweeper ran and retired the expired entry"
    );
    assert_eq!(probe.retired.load(Ordering::SeqCst), 1);
    assert_eq!(
        pool.config().sweep_interval_value(),
        Some(PoolConfig::MAX_DURATION)
    );
}

// covers P3, X5: an idle TTL longer than u64::MAX milliseconds used to wrap around when
// converted (`as_millis() as u64`): 18 446 744 073 709 552 s became 384 ms, so an entry idle
// for one second was pruned.
#[tokio::test(start_paused = true)]
async fn huge_idle_ttl_never_wraps_to_a_short_one() {
    let pool = Pool::new(PoolConfig::default());
    let probe = Probe::default();
    drop(make(&pool, "a", &probe).await);
    advance(Duration::from_secs(1)).await;
    for idle_ttl in [Duration::from_secs(18_446_744_073_709_552), HUGE] {
        let report = pool.prune_idle(idle_ttl).await;
        assert_eq!(report.total(), 0, "{idle_ttl:?}");
    }
    assert_eq!(pool.len(), 1);
}

// covers P3, X5: the sweeper with a huge idle TTL keeps used entries.
#[tokio::test(start_paused = true)]
async fn sweeper_with_huge_idle_ttl_keeps_entries() {
    let pool = Pool::new(
        PoolConfig::default()
            .idle_ttl(Duration::from_secs(18_446_744_073_709_552))
            .sweep_interval(Duration::from_secs(1)),
    );
    let probe = Probe::default();
    drop(make(&pool, "a", &probe).await);
    settle().await; // the sweeper task starts its interval
    for _ in 0..5 {
        advance(Duration::from_secs(1)).await;
        settle().await;
    }
    assert_eq!(pool.len(), 1, "{:?}", pool.stats());
    assert_eq!(
        pool.config().idle_ttl_value(),
        Some(PoolConfig::MAX_DURATION)
    );
}

// covers P5, X5: a huge retire timeout is clamped and retires still complete.
#[tokio::test(start_paused = true)]
async fn retire_timeout_duration_max_is_clamped() {
    let pool = Pool::new(PoolConfig::default().retire_timeout(HUGE));
    let probe = Probe::default();
    drop(make(&pool, "a", &probe).await);
    let report = pool.reset().await;
    assert_eq!((report.retired, report.failed), (1, 0));
    assert_eq!(
        pool.config().retire_timeout_value(),
        PoolConfig::MAX_DURATION
    );
}

// covers P2, X5: a factory deadline far in the future (a certificate valid until 9999) is
// kept as is; a deadline already in the past makes a one-shot value.
#[tokio::test(start_paused = true)]
async fn far_and_past_factory_deadlines() {
    let pool = Pool::new(PoolConfig::default().ttl(Duration::from_secs(300)));
    let probe = Probe::default();
    let far = Instant::now() + Duration::from_secs(253_402_300_799);
    let value = pool
        .get_or_create(&"far", || async {
            Ok::<_, FactoryError>(Created::until(conn("far", &probe), far))
        })
        .await
        .unwrap();
    assert_eq!(
        value.deadline(),
        Some(Instant::now() + Duration::from_secs(300)),
        "the pool TTL wins over a far deadline"
    );
    let past = Instant::now();
    advance(Duration::from_secs(1)).await;
    let once = pool
        .get_or_create(&"past", || async {
            Ok::<_, FactoryError>(Created::until(conn("past", &probe), past))
        })
        .await
        .unwrap();
    assert!(!once.is_pooled());
}

// covers X5: the defaults are finite where they bound work (capacity, retire timeout), and
// every clamp is documented by `MAX_DURATION`.
#[test]
fn defaults_are_finite() {
    let config = PoolConfig::default();
    assert_eq!(config.max_entries_value(), 1024);
    assert_eq!(config.retire_timeout_value(), Duration::from_secs(10));
    assert_eq!(config.sweep_interval_value(), None);
    assert_eq!(
        PoolConfig::MAX_DURATION,
        Duration::from_secs(30 * 365 * 86_400)
    );
    assert_eq!(
        PoolConfig::default()
            .sweep_interval(Duration::ZERO)
            .sweep_interval_value(),
        None,
        "zero disables the sweeper"
    );
}
