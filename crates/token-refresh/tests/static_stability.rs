//! T8–T12, table-driven: each case is a script of calls, clock moves, invalidations and the
//! source's answers, run in virtual time against the real cache, for the static-stability
//! preset and for the seed-004 default. Every `get` says which token (or error) it must see and
//! whether the source may be contacted for it; a fetch the script did not plan fails the case.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use token_refresh::{
    BearerToken, Expiry, Fetched, RefreshConfig, RefreshError, RefreshStats, StaleWindow,
    TokenCache, TokenSource, TokenState,
};

const SEC: Duration = Duration::from_secs(1);
const MIN: Duration = Duration::from_secs(60);
/// A minute in seconds, for the table (`Duration` arithmetic is not `const`).
const M: u64 = 60;

/// What the identity endpoint answers to one fetch.
#[derive(Debug, Clone, Copy)]
enum Reply {
    /// A token valid for this long.
    Token(Duration),
    /// A recoverable failure (a timeout, a 5xx).
    Fail,
    /// A non-recoverable failure (a bad client secret).
    Fatal,
}

#[derive(Debug, thiserror::Error)]
enum EndpointError {
    #[error("identity endpoint unavailable")]
    Down,
    #[error("invalid_client")]
    InvalidClient,
}

/// Answers fetches from a queue; token `n` is the `n`-th fetch.
#[derive(Debug, Default)]
struct Endpoint {
    replies: Mutex<VecDeque<Reply>>,
    calls: AtomicUsize,
}

impl TokenSource for Endpoint {
    type Token = BearerToken;
    type Error = EndpointError;

    async fn fetch(&self) -> Result<Fetched<BearerToken>, EndpointError> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        let reply = self.replies.lock().unwrap().pop_front();
        match reply {
            Some(Reply::Token(lifetime)) => Ok(Fetched::new(
                BearerToken::new(format!("t{n}")),
                Expiry::In(lifetime),
            )),
            Some(Reply::Fail) => Err(EndpointError::Down),
            Some(Reply::Fatal) => Err(EndpointError::InvalidClient),
            None => panic!("fetch {n} was not planned by the script"),
        }
    }

    fn is_recoverable(&self, error: &EndpointError) -> bool {
        !matches!(error, EndpointError::InvalidClient)
    }
}

/// What a `get` must see.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Sees {
    Token(&'static str),
    Error,
    NonRecoverable,
}

/// One step of a case.
#[derive(Debug, Clone, Copy)]
enum Step {
    /// The next fetches answer these.
    Replies(&'static [Reply]),
    /// Call `token()`; then let a background refresh run. `contacted`: whether the source got
    /// a fetch during the call or its background refresh.
    Get { sees: Sees, contacted: bool },
    /// Move the clock by this many seconds.
    Advance(u64),
    /// Move the clock by this many milliseconds.
    AdvanceMs(u64),
    /// A server rejected token `secret`; whether it was still the cached one.
    Invalidate { secret: &'static str, matched: bool },
    /// The cache stands here now.
    State(TokenState),
    /// A stats check.
    Stats(fn(&RefreshStats) -> bool, &'static str),
}

use Step::*;

const fn get(secret: &'static str, contacted: bool) -> Step {
    Get {
        sees: Sees::Token(secret),
        contacted,
    }
}

/// The preset, deterministic: no jitter, back-off at the bottom of [300 s, 600 s], errors
/// cached 1 s.
fn preset() -> RefreshConfig {
    RefreshConfig::static_stability()
        .jitter(0.0)
        .jitter_source(|| 0.0)
}

/// The seed default, deterministic.
fn seed() -> RefreshConfig {
    RefreshConfig::default().jitter(0.0).jitter_source(|| 0.0)
}

async fn settle() {
    for _ in 0..16 {
        tokio::task::yield_now().await;
    }
}

async fn run(name: &str, config: RefreshConfig, steps: &[Step]) {
    let endpoint = Arc::new(Endpoint::default());
    let cache = TokenCache::from_arc(endpoint.clone(), config);
    for (i, step) in steps.iter().enumerate() {
        let at = format!("{name}, step {i} ({step:?})");
        match *step {
            Replies(replies) => endpoint.replies.lock().unwrap().extend(replies),
            Get { sees, contacted } => {
                let before = endpoint.calls.load(Ordering::SeqCst);
                let got = match cache.token().await {
                    Ok(token) => Sees::Token(leak(token.secret())),
                    Err(RefreshError::NonRecoverable(_)) => Sees::NonRecoverable,
                    Err(_) => Sees::Error,
                };
                settle().await;
                let after = endpoint.calls.load(Ordering::SeqCst);
                assert_eq!(got, sees, "{at}");
                assert_eq!(after > before, contacted, "{at}: source contacted?");
            }
            Advance(secs) => tokio::time::advance(Duration::from_secs(secs)).await,
            AdvanceMs(ms) => tokio::time::advance(Duration::from_millis(ms)).await,
            Invalidate { secret, matched } => {
                let rejected = BearerToken::new(secret);
                assert_eq!(cache.invalidate_token(&rejected), matched, "{at}");
            }
            State(state) => assert_eq!(cache.state(), state, "{at}"),
            Stats(check, what) => {
                assert!(check(&cache.stats()), "{at}: {what}: {:?}", cache.stats())
            }
        }
    }
    assert!(
        endpoint.replies.lock().unwrap().is_empty(),
        "{name}: planned replies left unused"
    );
}

fn leak(secret: &str) -> &'static str {
    Box::leak(secret.to_string().into_boxed_str())
}

const HOUR_TOKEN: Reply = Reply::Token(Duration::from_secs(3600));

/// (name, preset?, steps). A 60 min token in the preset: advisory from +45 min (15 min tier),
/// mandatory from +59 min; in the seed default: stale from +40 min, expired from +59:20.
#[rustfmt::skip]
const CASES: &[(&str, bool, &[Step])] = &[
    // --- the preset (T8–T11) ---
    ("none: an error is returned and the next call tries again (no back-off without a token)", true, &[
        Replies(&[Reply::Fail, Reply::Fail, HOUR_TOKEN]),
        Get { sees: Sees::Error, contacted: true },
        Get { sees: Sees::Error, contacted: true },
        get("t2", true),
        Stats(|s| s.backoffs == 0, "no back-off"),
    ]),
    ("none: a non-recoverable error at once, repeated for 1 s without contact (T10)", true, &[
        Replies(&[Reply::Fatal, HOUR_TOKEN]),
        Get { sees: Sees::NonRecoverable, contacted: true },
        Get { sees: Sees::NonRecoverable, contacted: false },
        AdvanceMs(999),
        Get { sees: Sees::NonRecoverable, contacted: false },
        AdvanceMs(1),
        get("t1", true),
        Stats(|s| s.cached_errors == 2 && s.non_recoverable == 1 && s.backoffs == 0, "cached, no back-off"),
    ]),
    ("valid: served without contact", true, &[
        Replies(&[HOUR_TOKEN]),
        get("t0", true),
        Advance(45 * M - 1),
        State(TokenState::Fresh),
        get("t0", false),
    ]),
    ("advisory (15 min tier for 60 min): served, one background refresh", true, &[
        Replies(&[HOUR_TOKEN, HOUR_TOKEN]),
        get("t0", true),
        Advance(45 * M),
        State(TokenState::Stale),
        get("t0", true),
        get("t1", false),
    ]),
    ("advisory failure: back-off of 300 s without contact, then a background retry (T8)", true, &[
        Replies(&[HOUR_TOKEN, Reply::Fail, HOUR_TOKEN]),
        get("t0", true),
        Advance(45 * M),
        get("t0", true),
        Advance(300 - 1),
        get("t0", false),
        Advance(1),
        get("t0", true),
        get("t2", false),
        Stats(|s| s.backoffs == 1 && s.waits == 1, "one back-off, nobody waited"),
    ]),
    ("mandatory failure: the waiter gets the cached token, the back-off holds off the source (T9)", true, &[
        Replies(&[HOUR_TOKEN, Reply::Fail]),
        get("t0", true),
        Advance(59 * M),
        State(TokenState::Expired),
        get("t0", true),
        Stats(|s| s.blocking_served_cached == 1 && s.backoffs == 1, "served cached, backing off"),
        Advance(2 * M),
        get("t0", false),
        Stats(|s| s.served_past_expiry == 1 && s.served_during_backoff >= 1, "past expiry, during the back-off"),
    ]),
    ("expired through a 30-minute outage: the cached token every call, the source once per back-off", true, &[
        Replies(&[HOUR_TOKEN, Reply::Fail, Reply::Fail, Reply::Fail, Reply::Fail, Reply::Fail, Reply::Fail, HOUR_TOKEN]),
        get("t0", true),
        Advance(59 * M),
        get("t0", true),  // +59:00 fails
        Advance(150), get("t0", false),
        Advance(150), get("t0", true),  // +64:00 fails
        Advance(300), get("t0", true),  // +69:00
        Advance(300), get("t0", true),  // +74:00
        Advance(300), get("t0", true),  // +79:00
        Advance(300), get("t0", true),  // +84:00
        Advance(300), get("t7", true),  // +89:00: the endpoint is back
        Stats(|s| s.backoffs == 6 && s.blocking_fetches == 8, "six back-offs; eight fetches: the first, six failed, one success"),
    ]),
    ("a refreshed token already inside the mandatory window is a failed refresh (T9)", true, &[
        Replies(&[HOUR_TOKEN, Reply::Token(Duration::from_secs(30)), HOUR_TOKEN]),
        get("t0", true),
        Advance(59 * M),
        get("t0", true),
        Stats(|s| s.unusable_refreshes == 1 && s.backoffs == 1, "counted as a failure"),
        Advance(300),
        get("t2", true),
    ]),
    ("invalidate the cached token: the next call takes the mandatory path (T11)", true, &[
        Replies(&[HOUR_TOKEN, HOUR_TOKEN]),
        get("t0", true),
        Invalidate { secret: "t0", matched: true },
        State(TokenState::Expired),
        get("t1", true),
        Stats(|s| s.invalidated_refreshes == 1, "an invalidated refresh"),
    ]),
    ("invalidate a token already replaced: nothing changes (T11)", true, &[
        Replies(&[HOUR_TOKEN, HOUR_TOKEN]),
        get("t0", true),
        Invalidate { secret: "t0", matched: true },
        get("t1", true),
        Invalidate { secret: "t0", matched: false },
        get("t1", false),
        Stats(|s| s.invalidations == 1 && s.invalidations_ignored == 1, "one matched, one ignored"),
    ]),
    ("invalidate during a back-off: the source waits for the back-off to end (T11)", true, &[
        Replies(&[HOUR_TOKEN, Reply::Fail, HOUR_TOKEN]),
        get("t0", true),
        Advance(45 * M),
        get("t0", true),  // background fails: back-off to +50 min
        Invalidate { secret: "t0", matched: true },
        get("t0", false),
        Advance(300 - 1),
        get("t0", false),
        Advance(1),
        get("t2", true),
    ]),
    ("a non-recoverable background failure: no back-off, no retry for 1 s (T10)", true, &[
        Replies(&[HOUR_TOKEN, Reply::Fatal, HOUR_TOKEN]),
        get("t0", true),
        Advance(45 * M),
        get("t0", true),
        get("t0", false),
        Advance(1),
        get("t0", true),
        get("t2", false),
        Stats(|s| s.backoffs == 0 && s.non_recoverable == 1, "no back-off"),
    ]),
    ("a non-recoverable failure in the mandatory window reaches the caller, not the cached token (T10)", true, &[
        Replies(&[HOUR_TOKEN, Reply::Fatal]),
        get("t0", true),
        Advance(59 * M),
        Get { sees: Sees::NonRecoverable, contacted: true },
        Get { sees: Sees::NonRecoverable, contacted: false },
    ]),
    ("tiers: 10 min → 5 min window, then a 6 h token → 60 min window, recomputed per token (T8)", true, &[
        Replies(&[Reply::Token(Duration::from_secs(600)), Reply::Token(Duration::from_secs(6 * 3600))]),
        get("t0", true),
        Advance(5 * M - 1), State(TokenState::Fresh),
        Advance(1), State(TokenState::Stale),
        get("t0", true),
        get("t1", false),
        Advance(5 * 60 * M - 1), State(TokenState::Fresh),
        Advance(1), State(TokenState::Stale),
    ]),
    ("tiers: 20.5 min → 15 min window (T8)", true, &[
        Replies(&[Reply::Token(Duration::from_secs(1230))]),
        get("t0", true),
        Advance(330 - 1), State(TokenState::Fresh),
        Advance(1), State(TokenState::Stale),
    ]),
    // --- the seed default (T12): unchanged ---
    ("seed: none, the error propagates and the next call tries again", false, &[
        Replies(&[Reply::Fail, HOUR_TOKEN]),
        Get { sees: Sees::Error, contacted: true },
        get("t1", true),
    ]),
    ("seed: stale at +40 min, a failed background refresh backs off 60 s", false, &[
        Replies(&[HOUR_TOKEN, Reply::Fail, HOUR_TOKEN]),
        get("t0", true),
        Advance(40 * M),
        get("t0", true),
        Advance(59), get("t0", false),
        Advance(1), get("t0", true),
        get("t2", false),
    ]),
    ("seed: expired, a failed blocking refresh is an error (no cached token served)", false, &[
        Replies(&[HOUR_TOKEN, Reply::Fail, HOUR_TOKEN]),
        get("t0", true),
        Advance(60 * M),
        Get { sees: Sees::Error, contacted: true },
        get("t2", true),
        Stats(|s| s.blocking_served_cached == 0 && s.served_past_expiry == 0, "nothing served past expiry"),
    ]),
    ("seed: invalidate the cached token, then a blocking refresh (T11)", false, &[
        Replies(&[HOUR_TOKEN, HOUR_TOKEN]),
        get("t0", true),
        Invalidate { secret: "t0", matched: true },
        get("t1", true),
        Invalidate { secret: "t0", matched: false },
        get("t1", false),
    ]),
    ("seed: invalidate during a back-off, the source waits for it (T11)", false, &[
        Replies(&[HOUR_TOKEN, Reply::Fail, HOUR_TOKEN]),
        get("t0", true),
        Advance(40 * M),
        get("t0", true),
        Invalidate { secret: "t0", matched: true },
        get("t0", false),
        Advance(60),
        get("t2", true),
    ]),
    ("seed: a non-recoverable error is returned at once and repeated for 1 s (T10)", false, &[
        Replies(&[Reply::Fatal, HOUR_TOKEN]),
        Get { sees: Sees::NonRecoverable, contacted: true },
        Get { sees: Sees::NonRecoverable, contacted: false },
        Advance(1),
        get("t1", true),
    ]),
];

// covers T8, T9, T10, T11, T12: every case of the table.
#[tokio::test(start_paused = true)]
async fn every_case_of_the_table() {
    for (name, preset_on, steps) in CASES {
        let config = if *preset_on { preset() } else { seed() };
        run(name, config, steps).await;
    }
}

// covers T8: the preset's knobs, and a configured window overriding the tier table.
#[tokio::test(start_paused = true)]
async fn the_preset_and_a_configured_window() {
    let config = RefreshConfig::static_stability();
    assert!(config.is_static_stability());
    assert_eq!(config.skew_value(), MIN, "a 60 s mandatory window");
    assert_eq!(config.backoff_value(), 300 * SEC);
    assert_eq!(config.stale_window_value(), StaleWindow::Tiered);
    for (lifetime, window) in [
        (10 * MIN, 5 * MIN),
        (20 * MIN, 5 * MIN),
        (Duration::from_secs(1230), 15 * MIN),
        (89 * MIN, 15 * MIN),
        (90 * MIN, 60 * MIN),
        (6 * 60 * MIN, 60 * MIN),
    ] {
        assert_eq!(StaleWindow::tier(lifetime), window, "{lifetime:?}");
    }
    run(
        "a configured 2 min window overrides the table",
        preset().stale_duration(2 * MIN),
        &[
            Replies(&[HOUR_TOKEN]),
            get("t0", true),
            Advance(58 * M - 1),
            State(TokenState::Fresh),
            Advance(1),
            State(TokenState::Stale),
        ],
    )
    .await;
}

// covers T8: the back-off is drawn uniformly from [300 s, 600 s].
#[tokio::test(start_paused = true)]
async fn the_backoff_is_uniform_between_300_and_600_seconds() {
    for (sample, backoff) in [(0.0, 300), (0.5, 450), (1.0, 600)] {
        let config = RefreshConfig::static_stability()
            .jitter(0.0)
            .jitter_source(move || sample);
        let endpoint = Arc::new(Endpoint::default());
        endpoint
            .replies
            .lock()
            .unwrap()
            .extend([HOUR_TOKEN, Reply::Fail]);
        let cache = TokenCache::from_arc(endpoint.clone(), config);
        cache.token().await.unwrap();
        tokio::time::advance(45 * MIN).await;
        cache.token().await.unwrap();
        settle().await;
        tokio::time::advance(Duration::from_secs(backoff) - SEC).await;
        assert_eq!(cache.state(), TokenState::Fresh, "sample {sample}");
        tokio::time::advance(SEC).await;
        assert_eq!(cache.state(), TokenState::Stale, "sample {sample}");
    }
}

// covers T8 knobs: the preset from the environment, with overrides on top.
#[test]
fn the_preset_comes_from_the_environment() {
    let env = |pairs: &'static [(&'static str, &'static str)]| {
        move |name: &str| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    };
    let preset = RefreshConfig::from_env_with(env(&[("TOKEN_REFRESH_PRESET", "static-stability")]));
    assert!(preset.is_static_stability());
    assert_eq!(preset.backoff_value(), 300 * SEC);
    assert_eq!(preset.skew_value(), MIN);
    let tuned = RefreshConfig::from_env_with(env(&[
        ("TOKEN_REFRESH_PRESET", "static-stability"),
        ("TOKEN_REFRESH_BACKOFF_SECONDS", "120"),
    ]));
    assert_eq!(tuned.backoff_value(), 120 * SEC);
    let seed = RefreshConfig::from_env_with(env(&[("TOKEN_REFRESH_PRESET", "sideways")]));
    assert!(!seed.is_static_stability(), "unknown → the seed default");
    assert_eq!(seed.backoff_value(), MIN);
}
