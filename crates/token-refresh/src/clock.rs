//! Expiries in every form a source may report, and the one conversion into an `Instant` (T6).

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use time::OffsetDateTime;
use tokio::time::Instant;

/// When a fetched token expires, in whichever form its source reports it.
///
/// Sources disagree: Azure reports a wall-clock `OffsetDateTime` (with any UTC offset), OAuth
/// endpoints an `expires_in` duration, a JWT a naive UTC `exp` in Unix seconds, a test a
/// monotonic instant. The cache converts every form exactly once, when the token is
/// installed, into a [`tokio::time::Instant`] deadline, using its [`WallClock`] for the
/// wall-clock forms (T6). After that, only monotonic time is compared.
#[derive(Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Expiry {
    /// The token never expires: it is always fresh and never refreshed.
    Never,
    /// A monotonic deadline.
    At(Instant),
    /// Relative to the moment the token is installed (an OAuth `expires_in`).
    In(Duration),
    /// A wall-clock instant with any UTC offset (Azure's `AccessToken::expires_on`).
    On(OffsetDateTime),
    /// A wall-clock instant as a [`SystemTime`].
    OnSystem(SystemTime),
}

impl Expiry {
    /// A naive UTC timestamp in Unix seconds (a JWT's `exp`). Values beyond the representable
    /// range count as "already expired" (far past) or [`Expiry::Never`] (far future).
    pub fn unix_seconds(seconds: i64) -> Self {
        match OffsetDateTime::from_unix_timestamp(seconds) {
            Ok(at) => Self::On(at),
            Err(_) if seconds > 0 => Self::Never,
            Err(_) => Self::In(Duration::ZERO),
        }
    }

    /// The monotonic deadline this expiry means, given the monotonic `now` and the wall clock
    /// `clock`. `None` means "never expires". An expiry in the past is `now`.
    pub fn deadline(&self, now: Instant, clock: &dyn WallClock) -> Option<Instant> {
        match *self {
            Self::Never => None,
            Self::At(at) => Some(at.max(now)),
            Self::In(ttl) => now.checked_add(ttl),
            Self::On(at) => remaining(at, clock.now()).map_or(Some(now), |d| now.checked_add(d)),
            Self::OnSystem(at) => match system_to_offset(at) {
                Some(at) => remaining(at, clock.now()).map_or(Some(now), |d| now.checked_add(d)),
                None if at > UNIX_EPOCH => None,
                None => Some(now),
            },
        }
    }
}

impl fmt::Debug for Expiry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Never => f.write_str("Never"),
            Self::At(at) => {
                let left = at.saturating_duration_since(Instant::now());
                write!(f, "At(in {left:?})")
            }
            Self::In(ttl) => write!(f, "In({ttl:?})"),
            Self::On(at) => write!(f, "On({at})"),
            Self::OnSystem(at) => write!(f, "OnSystem({at:?})"),
        }
    }
}

/// `at - now` if `at` is in the future, else `None`.
fn remaining(at: OffsetDateTime, now: OffsetDateTime) -> Option<Duration> {
    Duration::try_from(at - now).ok().filter(|d| !d.is_zero())
}

/// A `SystemTime` as an `OffsetDateTime` (UTC), or `None` outside the representable range.
fn system_to_offset(at: SystemTime) -> Option<OffsetDateTime> {
    let nanos = match at.duration_since(UNIX_EPOCH) {
        Ok(after) => i128::try_from(after.as_nanos()).ok()?,
        Err(before) => -i128::try_from(before.duration().as_nanos()).ok()?,
    };
    OffsetDateTime::from_unix_timestamp_nanos(nanos).ok()
}

/// The wall clock used to convert wall-clock expiries into monotonic deadlines.
///
/// Injectable so that tests running in paused virtual time get deterministic conversions:
/// see [`VirtualClock`].
pub trait WallClock: Send + Sync + fmt::Debug {
    /// The current wall-clock time.
    fn now(&self) -> OffsetDateTime;
}

/// The real wall clock ([`OffsetDateTime::now_utc`]). The default.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl WallClock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }
}

/// A wall clock that starts at a given time and then advances with Tokio's clock, so that
/// `tokio::time::advance` moves it too. For tests in paused time.
///
/// ```
/// use time::OffsetDateTime;
/// use token_refresh::{VirtualClock, WallClock};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let start = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
/// let clock = VirtualClock::starting_at(start);
/// tokio::time::advance(std::time::Duration::from_secs(90)).await;
/// assert_eq!(clock.now(), start + time::Duration::seconds(90));
/// # }
/// ```
#[derive(Debug, Clone, Copy)]
pub struct VirtualClock {
    wall: OffsetDateTime,
    origin: Instant,
}

impl VirtualClock {
    /// A clock reading `wall` now, and `wall + d` once Tokio's clock has moved by `d`.
    pub fn starting_at(wall: OffsetDateTime) -> Self {
        Self {
            wall,
            origin: Instant::now(),
        }
    }
}

impl WallClock for VirtualClock {
    fn now(&self) -> OffsetDateTime {
        let elapsed = Instant::now().saturating_duration_since(self.origin);
        let elapsed = time::Duration::try_from(elapsed).unwrap_or(time::Duration::MAX);
        self.wall.saturating_add(elapsed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::Duration as WallDuration;

    fn start() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_700_000_000).expect("in range")
    }

    // covers T6: the same moment reported as an aware UTC time, an aware +02:00 time, a
    // SystemTime, naive Unix seconds and a relative duration gives one and the same deadline.
    #[tokio::test(start_paused = true)]
    async fn every_expiry_form_converts_to_the_same_deadline() {
        let clock = VirtualClock::starting_at(start());
        let now = Instant::now();
        let expected = Some(now + Duration::from_secs(3600));
        let utc = start() + WallDuration::hours(1);
        // 1_700_000_000 is 2023-11-14T22:13:20Z; one hour later, written at +02:00.
        let plus_two = time::macros::datetime!(2023-11-15 01:13:20 +02:00);
        assert_eq!(plus_two, utc);
        let system = UNIX_EPOCH + Duration::from_secs(1_700_000_000 + 3600);
        for expiry in [
            Expiry::On(utc),
            Expiry::On(plus_two),
            Expiry::OnSystem(system),
            Expiry::unix_seconds(1_700_000_000 + 3600),
            Expiry::In(Duration::from_secs(3600)),
            Expiry::At(now + Duration::from_secs(3600)),
        ] {
            assert_eq!(expiry.deadline(now, &clock), expected, "{expiry:?}");
        }
    }

    // covers T6: past expiries are "now", out-of-range ones never panic.
    #[tokio::test(start_paused = true)]
    async fn past_and_out_of_range_expiries_do_not_panic() {
        let clock = VirtualClock::starting_at(start());
        let now = Instant::now();
        let past = start() - WallDuration::minutes(5);
        assert_eq!(Expiry::On(past).deadline(now, &clock), Some(now));
        assert_eq!(Expiry::On(start()).deadline(now, &clock), Some(now));
        assert_eq!(
            Expiry::unix_seconds(i64::MIN).deadline(now, &clock),
            Some(now)
        );
        assert_eq!(Expiry::unix_seconds(i64::MAX).deadline(now, &clock), None);
        assert_eq!(
            Expiry::OnSystem(UNIX_EPOCH).deadline(now, &clock),
            Some(now)
        );
        assert_eq!(Expiry::Never.deadline(now, &clock), None);
        assert_eq!(Expiry::In(Duration::MAX).deadline(now, &clock), None);
    }

    #[tokio::test(start_paused = true)]
    async fn virtual_clock_follows_tokio_time() {
        let clock = VirtualClock::starting_at(start());
        tokio::time::advance(Duration::from_secs(61)).await;
        assert_eq!(clock.now(), start() + WallDuration::seconds(61));
        assert!(
            SystemClock.now() > start(),
            "the system clock is after 2023"
        );
    }
}
