//! `RefreshConfig`: skew, stale window, back-off, load timeout, jitter and clock (T2, T4).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use pool_core::Knob;
use tokio::time::Instant;

use crate::clock::{SystemClock, WallClock};

/// How the stale window (the advisory refresh window before expiry) is computed (T2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StaleWindow {
    /// `window = min(ttl / 2, max)` where `ttl` is the token's lifetime left when it is
    /// installed: a 60 min token goes stale at +40 min, a 10 min one at +5 min, a 90 s one at
    /// +45 s. The default, with `max` = 20 min.
    Dynamic {
        /// The longest stale window.
        max: Duration,
    },
    /// Legacy: a fixed window, `stale_after = expiry - window`. Zero means never stale: the
    /// token is served until it expires, then refreshed blocking.
    Fixed(Duration),
    /// The static-stability advisory window (T8), tiered by the token's lifetime left when it
    /// is installed: ≤ 20 min → 5 min, < 90 min → 15 min, otherwise 60 min.
    Tiered,
}

impl StaleWindow {
    /// The tiered advisory window for a token with `lifetime` left (T8).
    pub fn tier(lifetime: Duration) -> Duration {
        const MIN: u64 = 60;
        if lifetime <= Duration::from_secs(20 * MIN) {
            Duration::from_secs(5 * MIN)
        } else if lifetime < Duration::from_secs(90 * MIN) {
            Duration::from_secs(15 * MIN)
        } else {
            Duration::from_secs(60 * MIN)
        }
    }
}

/// A source of uniform samples in `[0, 1)` for jitter.
pub type JitterSource = Arc<dyn Fn() -> f64 + Send + Sync>;

/// How a [`TokenCache`](crate::TokenCache) decides fresh / stale / expired, and how it
/// refreshes.
///
/// [`RefreshConfig::default`] uses the built-in defaults; [`RefreshConfig::from_env`] reads the
/// environment knobs ([`RefreshConfig::SKEW`] …) on top of them. Every setter clamps
/// nonsensical input rather than panicking.
///
/// ```
/// use std::time::Duration;
/// use token_refresh::RefreshConfig;
///
/// let config = RefreshConfig::default()
///     .skew(Duration::from_secs(30))
///     .backoff(Duration::from_secs(10))
///     .jitter(0.0); // deterministic, e.g. for tests
/// assert_eq!(config.skew_value(), Duration::from_secs(30));
/// ```
#[derive(Clone)]
pub struct RefreshConfig {
    pub(crate) skew: Duration,
    pub(crate) backoff: Duration,
    pub(crate) load_timeout: Duration,
    pub(crate) stale_window: StaleWindow,
    pub(crate) jitter: f64,
    pub(crate) jitter_source: JitterSource,
    pub(crate) wall_clock: Arc<dyn WallClock>,
    /// Some: a failed refresh backs off uniformly in `[backoff, backoff_max]` (T8).
    pub(crate) backoff_max: Option<Duration>,
    /// The static-stability preset's failure rule (T9): a failed refresh serves the cached
    /// token, even an expired one, and the cache waits out a back-off.
    pub(crate) static_stability: bool,
}

impl Default for RefreshConfig {
    /// Skew 40 s, back-off 60 s, load timeout 30 s, dynamic stale window up to 20 min, jitter
    /// 10 %, the system wall clock.
    fn default() -> Self {
        Self {
            skew: Self::SKEW.read_secs_with(|_| None),
            backoff: Self::BACKOFF.read_secs_with(|_| None),
            load_timeout: Self::LOAD_TIMEOUT.read_secs_with(|_| None),
            stale_window: StaleWindow::Dynamic {
                max: Self::MAX_STALE_WINDOW.read_secs_with(|_| None),
            },
            jitter: percent(Self::JITTER_PERCENT.default_value()),
            jitter_source: Arc::new(rand::random::<f64>),
            wall_clock: Arc::new(SystemClock),
            backoff_max: None,
            static_stability: false,
        }
    }
}

impl fmt::Debug for RefreshConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RefreshConfig")
            .field("skew", &self.skew)
            .field("backoff", &self.backoff)
            .field("load_timeout", &self.load_timeout)
            .field("stale_window", &self.stale_window)
            .field("jitter", &self.jitter)
            .field("wall_clock", &self.wall_clock)
            .field("backoff_max", &self.backoff_max)
            .field("static_stability", &self.static_stability)
            .finish_non_exhaustive()
    }
}

fn percent(p: u64) -> f64 {
    p as f64 / 100.0
}

impl RefreshConfig {
    /// `TOKEN_REFRESH_SKEW_SECONDS`: a token counts as expired this long before its expiry.
    pub const SKEW: Knob<u64> = Knob::new("TOKEN_REFRESH_SKEW_SECONDS", 40, 0, 3600);
    /// `TOKEN_REFRESH_BACKOFF_SECONDS`: after a failed background refresh, the next one waits
    /// this long (T4).
    pub const BACKOFF: Knob<u64> = Knob::new("TOKEN_REFRESH_BACKOFF_SECONDS", 60, 1, 3600);
    /// `TOKEN_REFRESH_LOAD_TIMEOUT_SECONDS`: a fetch that takes longer fails with
    /// [`RefreshError::Timeout`](crate::RefreshError::Timeout).
    pub const LOAD_TIMEOUT: Knob<u64> = Knob::new("TOKEN_REFRESH_LOAD_TIMEOUT_SECONDS", 30, 1, 600);
    /// `TOKEN_REFRESH_MAX_STALE_WINDOW_SECONDS`: the cap of the dynamic stale window.
    pub const MAX_STALE_WINDOW: Knob<u64> =
        Knob::new("TOKEN_REFRESH_MAX_STALE_WINDOW_SECONDS", 1200, 0, 86_400);
    /// `TOKEN_REFRESH_JITTER_PERCENT`: how much of the stale window (and of the back-off) is
    /// randomised, so a fleet does not refresh in lock-step.
    pub const JITTER_PERCENT: Knob<u64> = Knob::new("TOKEN_REFRESH_JITTER_PERCENT", 10, 0, 50);

    /// `TOKEN_REFRESH_PRESET`: `seed` (the default, T12) or `static-stability` (T8–T10). Other
    /// values log a warning and keep the default.
    pub const PRESET_ENV: &'static str = "TOKEN_REFRESH_PRESET";

    /// The static-stability preset (T8–T10), the credential-refresh behaviour the AWS SDKs
    /// converged on, for services that must keep working through an identity outage:
    ///
    /// - an **advisory** window tiered by the token's lifetime ([`StaleWindow::Tiered`]:
    ///   ≤ 20 min → 5 min, < 90 min → 15 min, otherwise 60 min), recomputed for every new
    ///   token, where callers get the cached token and one background refresh runs; a
    ///   configured window ([`RefreshConfig::stale_duration`]) overrides the table;
    /// - a **mandatory** window of 60 s before expiry (the skew), the only place callers wait;
    /// - after a failed refresh a back-off drawn uniformly from [300 s, 600 s], during which
    ///   the cache serves the token it has — even past its expiry — and does not contact the
    ///   source; a refresh that fails, or returns a token already inside the mandatory window,
    ///   hands waiters the cached token rather than an error (with no cached token, the error).
    ///
    /// Every setter still applies on top (e.g. `.jitter(0.0)` in tests).
    pub fn static_stability() -> Self {
        Self {
            skew: Duration::from_secs(60),
            backoff: Duration::from_secs(300),
            backoff_max: Some(Duration::from_secs(600)),
            stale_window: StaleWindow::Tiered,
            static_stability: true,
            ..Self::default()
        }
    }

    /// The defaults, overridden by any of the knobs set in the process environment.
    pub fn from_env() -> Self {
        Self::from_env_with(|name| std::env::var(name).ok())
    }

    /// [`RefreshConfig::from_env`] through `lookup` (given a variable's name), for tests.
    ///
    /// With `TOKEN_REFRESH_PRESET=static-stability` the preset is the base, and only the knobs
    /// that are set override it.
    pub fn from_env_with(lookup: impl Fn(&str) -> Option<String>) -> Self {
        let preset = match lookup(Self::PRESET_ENV).as_deref().map(str::trim) {
            None | Some("" | "seed") => false,
            Some("static-stability" | "static_stability") => true,
            Some(other) => {
                tracing::warn!(
                    variable = Self::PRESET_ENV,
                    value = other,
                    "unknown token-refresh preset (expected `seed` or `static-stability`); using `seed`"
                );
                false
            }
        };
        let base = if preset {
            Self::static_stability()
        } else {
            Self::default()
        };
        let set = |name: &str| lookup(name).is_some();
        let secs = |knob: Knob<u64>, current: Duration| {
            if set(knob.name()) {
                knob.read_secs_with(&lookup)
            } else {
                current
            }
        };
        Self {
            skew: secs(Self::SKEW, base.skew),
            backoff: secs(Self::BACKOFF, base.backoff),
            backoff_max: if set(Self::BACKOFF_MAX.name()) {
                Some(Self::BACKOFF_MAX.read_secs_with(&lookup))
            } else {
                base.backoff_max
            },
            load_timeout: secs(Self::LOAD_TIMEOUT, base.load_timeout),
            stale_window: if set(Self::MAX_STALE_WINDOW.name()) {
                StaleWindow::Dynamic {
                    max: Self::MAX_STALE_WINDOW.read_secs_with(&lookup),
                }
            } else {
                base.stale_window
            },
            jitter: percent(Self::JITTER_PERCENT.read_with(&lookup)),
            ..base
        }
    }

    /// `TOKEN_REFRESH_BACKOFF_MAX_SECONDS`: with it set, a failed refresh backs off uniformly
    /// in `[backoff, backoff_max]` instead of `backoff` plus jitter (the preset: 300–600 s).
    pub const BACKOFF_MAX: Knob<u64> = Knob::new("TOKEN_REFRESH_BACKOFF_MAX_SECONDS", 600, 1, 3600);

    /// Back off uniformly in `[min, max]` after a failed refresh (T8; both clamped into
    /// [1 ms, 1 h], and `max` to at least `min`).
    #[must_use]
    pub fn backoff_range(mut self, min: Duration, max: Duration) -> Self {
        self = self.backoff(min);
        self.backoff_max = Some(max.clamp(self.backoff, knob_max(Self::BACKOFF)));
        self
    }

    /// Whether the static-stability failure rule is on (T9).
    pub fn is_static_stability(&self) -> bool {
        self.static_stability
    }

    /// A token counts as expired `skew` before its expiry (default 40 s): callers then wait for
    /// a blocking refresh instead of being handed a token about to be rejected. Clamped to at
    /// most 1 h (the knob's range), so no value makes every token count as expired forever.
    #[must_use]
    pub fn skew(mut self, skew: Duration) -> Self {
        self.skew = skew.min(knob_max(Self::SKEW));
        self
    }

    /// How far a failed background refresh pushes the next one (default 60 s, plus up to the
    /// jitter fraction of it; clamped into [1 ms, 1 h], jitter included, so a failed refresh is
    /// always retried within the hour).
    #[must_use]
    pub fn backoff(mut self, backoff: Duration) -> Self {
        self.backoff = backoff.clamp(Duration::from_millis(1), knob_max(Self::BACKOFF));
        self
    }

    /// Upper bound on one fetch (default 30 s; clamped into [1 ms, 1 h], so no fetch waits
    /// forever on an identity endpoint that never answers).
    #[must_use]
    pub fn load_timeout(mut self, timeout: Duration) -> Self {
        self.load_timeout = timeout.clamp(Duration::from_millis(1), MAX_LOAD_TIMEOUT);
        self
    }

    /// Dynamic stale window capped at `max` (the default, with 20 min; clamped to at most
    /// 24 h, the knob's range).
    #[must_use]
    pub fn max_stale_window(mut self, max: Duration) -> Self {
        self.stale_window = StaleWindow::Dynamic {
            max: max.min(knob_max(Self::MAX_STALE_WINDOW)),
        };
        self
    }

    /// Legacy fixed stale window: `stale_after = expiry - stale_duration`; zero → never stale.
    #[must_use]
    pub fn stale_duration(mut self, stale_duration: Duration) -> Self {
        self.stale_window = StaleWindow::Fixed(stale_duration);
        self
    }

    /// Randomise up to `fraction` of the stale window (it shrinks by up to that much, so the
    /// refresh starts a little later) and of the back-off (it grows by up to that much).
    /// Clamped into `[0, 0.5]`; `0` disables jitter. Default `0.1`.
    #[must_use]
    pub fn jitter(mut self, fraction: f64) -> Self {
        self.jitter = if fraction.is_nan() {
            0.0
        } else {
            fraction.clamp(0.0, 0.5)
        };
        self
    }

    /// Where jitter samples come from (uniform in `[0, 1)`; out-of-range samples are clamped).
    /// Default: `rand::random`.
    #[must_use]
    pub fn jitter_source(mut self, source: impl Fn() -> f64 + Send + Sync + 'static) -> Self {
        self.jitter_source = Arc::new(source);
        self
    }

    /// The wall clock used to convert wall-clock expiries into deadlines (T6). Default: the
    /// system clock; tests in paused time use [`VirtualClock`](crate::VirtualClock).
    #[must_use]
    pub fn wall_clock(mut self, clock: impl WallClock + 'static) -> Self {
        self.wall_clock = Arc::new(clock);
        self
    }

    /// The configured skew.
    pub fn skew_value(&self) -> Duration {
        self.skew
    }

    /// The configured back-off.
    pub fn backoff_value(&self) -> Duration {
        self.backoff
    }

    /// The configured load timeout.
    pub fn load_timeout_value(&self) -> Duration {
        self.load_timeout
    }

    /// The configured stale window.
    pub fn stale_window_value(&self) -> StaleWindow {
        self.stale_window
    }

    /// The configured jitter fraction.
    pub fn jitter_value(&self) -> f64 {
        self.jitter
    }

    /// A jitter amount in `[0, jitter]`.
    fn spread(&self) -> f64 {
        if self.jitter == 0.0 {
            return 0.0;
        }
        self.jitter * sample(&self.jitter_source)
    }

    /// How long a non-recoverable error is repeated to callers (T10): uniform in [1 s, 5 s].
    pub(crate) fn error_cache_for(&self) -> Duration {
        Duration::from_secs(1) + scale(Duration::from_secs(4), sample(&self.jitter_source))
    }

    /// When a token installed at `now` and expiring at `expires_at` goes stale (T2); `None`:
    /// never.
    pub(crate) fn stale_after(&self, now: Instant, expires_at: Instant) -> Option<Instant> {
        let window = match self.stale_window {
            StaleWindow::Dynamic { max } => {
                (expires_at.saturating_duration_since(now) / 2).min(max)
            }
            StaleWindow::Tiered => StaleWindow::tier(expires_at.saturating_duration_since(now)),
            StaleWindow::Fixed(window) if window.is_zero() => return None,
            StaleWindow::Fixed(window) => window,
        };
        let window = scale(window, 1.0 - self.spread());
        Some(expires_at.checked_sub(window).unwrap_or(now))
    }

    /// Until when a refresh that failed at `now` backs off (T4; uniform in the range, T8).
    pub(crate) fn backoff_until(&self, now: Instant) -> Instant {
        let backoff = match self.backoff_max {
            // `max` is at least `backoff` (the setters clamp it): `[min, min]` is `min`.
            Some(max) => {
                let sample = sample(&self.jitter_source);
                self.backoff + scale(max.saturating_sub(self.backoff), sample)
            }
            // The jitter never takes it past the hour the setters promise.
            None => scale(self.backoff, 1.0 + self.spread()).min(knob_max(Self::BACKOFF)),
        };
        // At most 1 h; the fallback only matters for a clock at the very end of `Instant`'s
        // range, where it must not panic either.
        now.checked_add(backoff).unwrap_or(now)
    }
}

/// The longest load timeout a builder accepts (the environment knob stops at 10 min).
const MAX_LOAD_TIMEOUT: Duration = Duration::from_secs(3600);

/// A seconds knob's upper bound as a `Duration`.
fn knob_max(knob: Knob<u64>) -> Duration {
    Duration::from_secs(knob.range().1)
}

/// A sample of `source`, clamped into `[0, 1]` (NaN → 0).
fn sample(source: &JitterSource) -> f64 {
    let sample = source();
    if sample.is_nan() {
        0.0
    } else {
        sample.clamp(0.0, 1.0)
    }
}

/// `d * factor`, or `d` if that is not representable.
fn scale(d: Duration, factor: f64) -> Duration {
    Duration::try_from_secs_f64(d.as_secs_f64() * factor).unwrap_or(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(60);

    // covers T2: the dynamic window — 60 min → +40, 10 min → +5, 90 s → +45 s.
    #[tokio::test(start_paused = true)]
    async fn dynamic_stale_after_follows_the_spec_table() {
        let config = RefreshConfig::default().jitter(0.0);
        let now = Instant::now();
        for (ttl, stale_at) in [
            (60 * MIN, 40 * MIN),
            (10 * MIN, 5 * MIN),
            (Duration::from_secs(90), Duration::from_secs(45)),
            (Duration::ZERO, Duration::ZERO),
            (24 * 60 * MIN, 24 * 60 * MIN - 20 * MIN),
        ] {
            assert_eq!(
                config.stale_after(now, now + ttl),
                Some(now + stale_at),
                "{ttl:?}"
            );
        }
    }

    // covers T2: legacy explicit stale_duration, and 0 → never stale.
    #[tokio::test(start_paused = true)]
    async fn legacy_stale_duration_is_fixed_and_zero_means_never() {
        let now = Instant::now();
        let fixed = RefreshConfig::default().jitter(0.0).stale_duration(5 * MIN);
        assert_eq!(fixed.stale_after(now, now + 60 * MIN), Some(now + 55 * MIN));
        let never = RefreshConfig::default().stale_duration(Duration::ZERO);
        assert_eq!(never.stale_after(now, now + 60 * MIN), None);
    }

    // covers T2: jitter shrinks the window by at most its fraction, and is injectable.
    #[tokio::test(start_paused = true)]
    async fn jitter_moves_stale_after_within_its_fraction() {
        let now = Instant::now();
        let config = RefreshConfig::default().jitter(0.1).jitter_source(|| 0.5);
        // window 20 min shrunk by 5 % → stale at 40 min + 1 min.
        assert_eq!(
            config.stale_after(now, now + 60 * MIN),
            Some(now + 41 * MIN)
        );
        // back-off 60 s grown by 5 % → 63 s.
        assert_eq!(config.backoff_until(now), now + Duration::from_secs(63));
        let wild = RefreshConfig::default()
            .jitter(f64::NAN)
            .jitter_source(|| 7.0);
        assert_eq!(wild.jitter_value(), 0.0);
        let clamped = RefreshConfig::default()
            .jitter(3.0)
            .jitter_source(|| f64::NAN);
        assert_eq!(clamped.jitter_value(), 0.5);
        assert_eq!(clamped.backoff_until(now), now + MIN);
    }

    // covers T2/T4 knobs (P8 reuse): defaults, env overrides and clamping.
    #[test]
    fn knobs_read_the_environment_with_defaults_and_clamps() {
        let defaults = RefreshConfig::from_env_with(|_| None);
        assert_eq!(defaults.skew_value(), Duration::from_secs(40));
        assert_eq!(defaults.backoff_value(), MIN);
        assert_eq!(defaults.load_timeout_value(), Duration::from_secs(30));
        assert_eq!(
            defaults.stale_window_value(),
            StaleWindow::Dynamic { max: 20 * MIN }
        );
        assert_eq!(defaults.jitter_value(), 0.1);
        let set = RefreshConfig::from_env_with(|name| {
            Some(
                match name {
                    "TOKEN_REFRESH_SKEW_SECONDS" => "5",
                    "TOKEN_REFRESH_BACKOFF_SECONDS" => "0",
                    "TOKEN_REFRESH_JITTER_PERCENT" => "90",
                    _ => "garbage",
                }
                .to_string(),
            )
        });
        assert_eq!(set.skew_value(), Duration::from_secs(5));
        assert_eq!(set.backoff_value(), Duration::from_secs(1), "clamped");
        assert_eq!(set.jitter_value(), 0.5, "clamped");
        assert_eq!(set.load_timeout_value(), Duration::from_secs(30));
    }
}
