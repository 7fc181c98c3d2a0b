//! The wall clock, injectable so tests can pin "now" when converting credential expiries.

use std::fmt;
use std::time::SystemTime;

/// Where the pool reads wall-clock time.
///
/// Credential expiries (a certificate's `notAfter`, a token's `expires_on`) are wall-clock
/// times. The pool reads this clock exactly once per session build, turns every expiry into a
/// remaining [`Duration`](std::time::Duration), and from then on works only with
/// [`tokio::time::Instant`] deadlines — so tests pin this clock and drive the pool with
/// `tokio::time::advance`.
pub trait WallClock: Send + Sync + fmt::Debug + 'static {
    /// The current wall-clock time.
    fn now(&self) -> SystemTime;
}

/// The system clock ([`SystemTime::now`]); the default.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl WallClock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// A clock that always says the same time. Useful in tests and examples.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use k8s_session::{FixedClock, WallClock};
///
/// let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
/// assert_eq!(FixedClock::new(at).now(), at);
/// ```
#[derive(Debug, Clone, Copy)]
pub struct FixedClock(SystemTime);

impl FixedClock {
    /// A clock stopped at `at`.
    pub fn new(at: SystemTime) -> Self {
        Self(at)
    }
}

impl WallClock for FixedClock {
    fn now(&self) -> SystemTime {
        self.0
    }
}
