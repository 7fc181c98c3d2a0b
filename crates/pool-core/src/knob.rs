//! `Knob`: a setting read from the environment, with a default and a clamp range.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// A numeric setting read from an environment variable (P8).
///
/// - unset or blank → the default;
/// - unparseable → a `warn` event naming the variable, and the default: also a negative value
///   for an unsigned knob and a number too long for its type (`-5` seconds is a typo, not a
///   request for the minimum);
/// - out of range → a `warn` event, and the value clamped into `[min, max]`.
///
/// Surrounding whitespace is ignored.
///
/// Reading never panics. [`Knob::read_with`] takes the lookup as a function, so tests exercise
/// every case without mutating the process environment.
///
/// ```
/// use pool_core::Knob;
///
/// const MAX_ENTRIES: Knob<usize> = Knob::new("K8S_SESSION_POOL_MAX_ENTRIES", 32, 1, 4096);
///
/// assert_eq!(MAX_ENTRIES.read_with(|_| None), 32);
/// assert_eq!(MAX_ENTRIES.read_with(|_| Some("64".into())), 64);
/// assert_eq!(MAX_ENTRIES.read_with(|_| Some("100000".into())), 4096);
/// assert_eq!(MAX_ENTRIES.read_with(|_| Some("0".into())), 1);
/// assert_eq!(MAX_ENTRIES.read_with(|_| Some("lots".into())), 32);
/// ```
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Knob<T> {
    name: &'static str,
    default: T,
    min: T,
    max: T,
}

impl<T: fmt::Debug> fmt::Debug for Knob<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Knob({} = {:?} in [{:?}, {:?}])",
            self.name, self.default, self.min, self.max
        )
    }
}

impl<T> Knob<T>
where
    T: FromStr + PartialOrd + Copy + fmt::Debug,
{
    /// A knob named after its environment variable. `default` should lie within `[min, max]`.
    pub const fn new(name: &'static str, default: T, min: T, max: T) -> Self {
        Self {
            name,
            default,
            min,
            max,
        }
    }

    /// The environment variable's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The value used when the variable is unset or unparseable.
    pub fn default_value(&self) -> T {
        self.default
    }

    /// The clamp range, inclusive.
    pub fn range(&self) -> (T, T) {
        (self.min, self.max)
    }

    /// `value` clamped into `[min, max]`, as a setting read from the environment is (for the
    /// same setting given in code or in a file); an unordered value (NaN) gives the default.
    ///
    /// ```
    /// use pool_core::Knob;
    ///
    /// const MAX_ENTRIES: Knob<usize> = Knob::new("K8S_SESSION_POOL_MAX_ENTRIES", 32, 1, 4096);
    /// assert_eq!(MAX_ENTRIES.clamp(0), 1);
    /// assert_eq!(MAX_ENTRIES.clamp(usize::MAX), 4096);
    /// assert_eq!(MAX_ENTRIES.clamp(64), 64);
    /// ```
    pub fn clamp(&self, value: T) -> T {
        if value >= self.min && value <= self.max {
            value
        } else if value < self.min {
            self.min
        } else if value > self.max {
            self.max
        } else {
            self.default
        }
    }

    /// Read the knob from the process environment.
    pub fn read(&self) -> T {
        self.read_with(|name| std::env::var(name).ok())
    }

    /// Read the knob through `lookup` (given the variable's name).
    pub fn read_with(&self, lookup: impl FnOnce(&str) -> Option<String>) -> T {
        let Some(raw) = lookup(self.name) else {
            return self.default;
        };
        let raw = raw.trim();
        if raw.is_empty() {
            return self.default;
        }
        let Ok(value) = raw.parse::<T>() else {
            tracing::warn!(
                knob = self.name,
                value = raw,
                default = ?self.default,
                "ignoring unparseable setting; using the default"
            );
            return self.default;
        };
        // NaN (unordered) falls back to the default instead of passing through.
        let used = self.clamp(value);
        if used == value {
            value
        } else {
            self.warn_clamped(raw, used)
        }
    }

    fn warn_clamped(&self, raw: &str, used: T) -> T {
        tracing::warn!(
            knob = self.name,
            value = raw,
            used = ?used,
            min = ?self.min,
            max = ?self.max,
            "setting out of range; clamped"
        );
        used
    }
}

impl Knob<u64> {
    /// Read a knob holding whole seconds as a [`Duration`].
    pub fn read_secs(&self) -> Duration {
        Duration::from_secs(self.read())
    }

    /// [`Knob::read_secs`] through `lookup`.
    pub fn read_secs_with(&self, lookup: impl FnOnce(&str) -> Option<String>) -> Duration {
        Duration::from_secs(self.read_with(lookup))
    }

    /// A duration clamped into the knob's range of whole seconds (`Duration::MAX` included).
    pub fn clamp_secs(&self, value: Duration) -> Duration {
        value.clamp(Duration::from_secs(self.min), Duration::from_secs(self.max))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Knob<u64> = Knob::new("K8S_SESSION_POOL_TTL_SECONDS", 300, 0, 86_400);
    const MAX: Knob<usize> = Knob::new("K8S_SESSION_POOL_MAX_ENTRIES", 32, 1, 4096);

    fn env(value: &str) -> impl FnOnce(&str) -> Option<String> + '_ {
        move |_| Some(value.to_string())
    }

    // covers P8: defaults, valid values, clamping and garbage.
    #[test]
    fn knob_clamps_out_of_range_values_into_the_range() {
        assert_eq!(MAX.read_with(env("0")), 1);
        assert_eq!(MAX.read_with(env("4097")), 4096);
        assert_eq!(MAX.read_with(env("4096")), 4096);
        assert_eq!(MAX.read_with(env(" 17 ")), 17);
    }

    // covers P8
    #[test]
    fn knob_ignores_garbage_and_uses_the_default() {
        for garbage in [
            "lots",
            "-1",
            "3.5",
            "0x20",
            "99999999999999999999999",
            "\u{0}",
        ] {
            assert_eq!(MAX.read_with(env(garbage)), 32, "{garbage:?}");
        }
        assert_eq!(MAX.read_with(env("")), 32);
        assert_eq!(MAX.read_with(|_| None), 32);
    }

    // covers P8
    #[test]
    fn knob_reads_durations_in_seconds() {
        assert_eq!(TTL.read_secs_with(env("45")), Duration::from_secs(45));
        assert_eq!(TTL.read_secs_with(|_| None), Duration::from_secs(300));
        assert_eq!(TTL.read_secs_with(env("-5")), Duration::from_secs(300));
    }

    // covers P8: a float knob never lets NaN through.
    #[test]
    fn knob_rejects_nan() {
        const RATIO: Knob<f64> = Knob::new("RATIO", 0.5, 0.0, 1.0);
        assert_eq!(RATIO.read_with(env("NaN")), 0.5);
        assert_eq!(RATIO.read_with(env("inf")), 1.0);
        assert_eq!(RATIO.read_with(env("0.25")), 0.25);
    }

    // covers P8: the knob reads the real process environment by its name.
    #[test]
    fn knob_reads_the_process_environment() {
        const UNSET: Knob<u32> = Knob::new("POOL_CORE_TEST_SURELY_UNSET_KNOB", 9, 1, 10);
        assert_eq!(UNSET.read(), 9);
        assert_eq!(UNSET.name(), "POOL_CORE_TEST_SURELY_UNSET_KNOB");
        assert_eq!(UNSET.range(), (1, 10));
    }
}
