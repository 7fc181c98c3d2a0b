//! Fresh / stale / expired, with and without expiry, and where `stale_after` lands (T1, T2).

use super::*;
use crate::TokenState;

// covers T1: fresh → the cached token, no fetch.
#[tokio::test(start_paused = true)]
async fn fresh_token_is_served_from_the_cache() {
    let fake = Fake::new();
    let cache = cache(&fake, config());
    assert_eq!(cache.state(), TokenState::Empty);
    assert_eq!(secret(&cache).await, "t0");
    tokio::time::advance(39 * MIN).await;
    assert_eq!(cache.state(), TokenState::Fresh);
    for _ in 0..10 {
        assert_eq!(served_at_once(&cache), "t0");
    }
    assert_eq!(fake.calls(), 1);
    assert_eq!(cache.stats().fresh_hits, 10);
    assert_eq!(cache.stats().waits, 1);
}

// covers T1: a token without expiry is fresh forever and never refreshed.
#[tokio::test(start_paused = true)]
async fn token_without_expiry_is_always_fresh() {
    let fake = Fake::new().then(Duration::ZERO, Outcome::NoExpiry);
    let cache = cache(&fake, config());
    assert_eq!(secret(&cache).await, "t0");
    tokio::time::advance(24 * 365 * HOUR).await;
    assert_eq!(cache.state(), TokenState::Fresh);
    assert_eq!(served_at_once(&cache), "t0");
    settle().await;
    assert_eq!(fake.calls(), 1);
}

// covers T1: stale → the cached token at once, and a background refresh installs the next.
#[tokio::test(start_paused = true)]
async fn stale_token_is_served_and_refreshed_in_the_background() {
    let fake = Fake::new();
    let cache = cache(&fake, config());
    assert_eq!(secret(&cache).await, "t0");
    tokio::time::advance(40 * MIN).await;
    assert_eq!(cache.state(), TokenState::Stale);
    assert_eq!(served_at_once(&cache), "t0");
    settle().await;
    assert_eq!(cache.state(), TokenState::Fresh);
    assert_eq!(served_at_once(&cache), "t1");
    let stats = cache.stats();
    assert_eq!(
        (stats.background_started, stats.background_succeeded),
        (1, 1)
    );
    assert_eq!(stats.fetches(), 2);
}

// covers T1, T2: expired means within the skew (default 40 s) of expiry; callers then wait
// for a blocking refresh.
#[tokio::test(start_paused = true)]
async fn expired_means_within_the_skew_of_expiry() {
    let fake = Fake::new()
        .then(Duration::ZERO, Outcome::Ok(HOUR))
        .then(SEC, Outcome::Ok(HOUR));
    // Never stale: keeps the background refresh out of this test.
    let cache = cache(&fake, config().stale_duration(Duration::ZERO));
    assert_eq!(secret(&cache).await, "t0");
    tokio::time::advance(HOUR - 41 * SEC).await;
    assert_eq!(cache.state(), TokenState::Fresh);
    tokio::time::advance(SEC).await;
    assert_eq!(cache.state(), TokenState::Expired);
    let start = tokio::time::Instant::now();
    assert_eq!(secret(&cache).await, "t1");
    assert_eq!(
        start.elapsed(),
        SEC,
        "the caller waited for the blocking fetch"
    );
    assert_eq!(cache.stats().waits, 2);
}

// covers T2: the skew is configurable.
#[tokio::test(start_paused = true)]
async fn skew_is_configurable() {
    let fake = Fake::new().then(Duration::ZERO, Outcome::Ok(10 * MIN));
    let cache = cache(&fake, config().skew(2 * MIN));
    assert_eq!(secret(&cache).await, "t0");
    tokio::time::advance(8 * MIN - SEC).await;
    assert_ne!(cache.state(), TokenState::Expired);
    tokio::time::advance(SEC).await;
    assert_eq!(cache.state(), TokenState::Expired);
}

/// Install a token of `first` lifetime, let it expire, get a `second` one by a blocking
/// refresh, and return how long after that refresh the new token goes stale.
async fn stale_offset_after_blocking_refresh(first: Duration, second: Duration) -> Duration {
    let fake = Fake::new()
        .then(Duration::ZERO, Outcome::Ok(first))
        .then(Duration::ZERO, Outcome::Ok(second));
    let cache = cache(&fake, config().skew(Duration::ZERO));
    assert_eq!(secret(&cache).await, "t0");
    tokio::time::advance(first).await;
    assert_eq!(cache.state(), TokenState::Expired);
    assert_eq!(secret(&cache).await, "t1");
    let refreshed = tokio::time::Instant::now();
    let mut step = 0;
    while cache.state() == TokenState::Fresh {
        tokio::time::advance(SEC).await;
        step += 1;
        assert!(step < 100_000, "never went stale");
    }
    assert_eq!(cache.state(), TokenState::Stale);
    refreshed.elapsed()
}

// covers T2: stale_after is recomputed from the new token after a blocking refresh
// (10 min → 60 min: +40 min; 60 min → 10 min: +5 min; 60 min → 90 s: +45 s).
#[tokio::test(start_paused = true)]
async fn stale_after_is_recomputed_after_a_blocking_refresh() {
    assert_eq!(
        stale_offset_after_blocking_refresh(10 * MIN, HOUR).await,
        40 * MIN
    );
    assert_eq!(
        stale_offset_after_blocking_refresh(HOUR, 10 * MIN).await,
        5 * MIN
    );
    assert_eq!(
        stale_offset_after_blocking_refresh(HOUR, 90 * SEC).await,
        45 * SEC
    );
}

// covers T2: legacy stale_duration 0 → never stale; served until expired, then blocking.
#[tokio::test(start_paused = true)]
async fn legacy_zero_stale_duration_is_never_stale() {
    let fake = Fake::new();
    let cache = cache(&fake, config().stale_duration(Duration::ZERO));
    assert_eq!(secret(&cache).await, "t0");
    tokio::time::advance(HOUR - 41 * SEC).await;
    assert_eq!(cache.state(), TokenState::Fresh);
    assert_eq!(served_at_once(&cache), "t0");
    settle().await;
    assert_eq!(fake.calls(), 1, "no background refresh");
    tokio::time::advance(SEC).await;
    assert_eq!(secret(&cache).await, "t1");
    assert_eq!(cache.stats().background_started, 0);
}

// covers T2: legacy explicit stale_duration puts stale_after at expiry - stale_duration.
#[tokio::test(start_paused = true)]
async fn legacy_stale_duration_is_a_fixed_window() {
    let fake = Fake::new();
    let cache = cache(&fake, config().stale_duration(5 * MIN));
    assert_eq!(secret(&cache).await, "t0");
    tokio::time::advance(55 * MIN - SEC).await;
    assert_eq!(cache.state(), TokenState::Fresh);
    tokio::time::advance(SEC).await;
    assert_eq!(cache.state(), TokenState::Stale);
}

// covers T2: jitter spreads stale_after within its fraction of the window.
#[tokio::test(start_paused = true)]
async fn jitter_spreads_the_stale_threshold() {
    let early = cache(&Fake::new(), config().jitter(0.1).jitter_source(|| 0.0));
    let late = cache(
        &Fake::new(),
        config().jitter(0.1).jitter_source(|| 0.999_999),
    );
    assert_eq!(secret(&early).await, "t0");
    assert_eq!(secret(&late).await, "t0");
    tokio::time::advance(40 * MIN).await;
    assert_eq!(early.state(), TokenState::Stale);
    assert_eq!(
        late.state(),
        TokenState::Fresh,
        "window shrunk by up to 10 %"
    );
    tokio::time::advance(2 * MIN).await;
    assert_eq!(late.state(), TokenState::Stale);
}

// covers T6 at the cache: a wall-clock expiry is converted with the injected clock.
#[tokio::test(start_paused = true)]
async fn wall_clock_expiry_uses_the_injected_clock() {
    use time::{Duration as WallDuration, OffsetDateTime};

    #[derive(Debug)]
    struct Wall(OffsetDateTime);
    impl TokenSource for Wall {
        type Token = BearerToken;
        type Error = Down;
        async fn fetch(&self) -> Result<Fetched<BearerToken>, Down> {
            let expiry = Expiry::On(self.0 + WallDuration::hours(1));
            Ok(Fetched::new(BearerToken::new("w"), expiry))
        }
    }
    // By the system clock, an expiry one hour after September 2020 is long past.
    let past = OffsetDateTime::from_unix_timestamp(1_600_000_000).expect("date");
    let real = TokenCache::new(Wall(past), config());
    real.token().await.expect("token");
    assert_eq!(real.state(), TokenState::Expired);
    // The same source under a virtual clock reading 2020: a fresh 60 min token.
    let virt = TokenCache::new(
        Wall(past),
        config().wall_clock(crate::VirtualClock::starting_at(past)),
    );
    let (_, deadline) = virt.token_and_deadline().await.expect("token");
    assert_eq!(deadline, Some(tokio::time::Instant::now() + HOUR));
    tokio::time::advance(40 * MIN).await;
    assert_eq!(virt.state(), TokenState::Stale);
}
