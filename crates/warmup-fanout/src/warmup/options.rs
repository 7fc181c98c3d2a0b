//! `WarmupOptions`: names, selectors, bounds and timeouts of a warmup status read.

use std::time::Duration;

use pool_core::Knob;

/// The most pod-log tails one status reads (SPEC W3); also their concurrency bound.
pub const MAX_LOG_TAILS: usize = 12;

const MAX_IN_FLIGHT: Knob<usize> = Knob::new("WARMUP_FANOUT_MAX_IN_FLIGHT", 12, 1, 64);
const READ_TIMEOUT_MS: Knob<u64> = Knob::new("WARMUP_FANOUT_READ_TIMEOUT_MS", 10_000, 50, 120_000);
const MAX_LOGS: Knob<usize> = Knob::new("WARMUP_FANOUT_MAX_LOGS", MAX_LOG_TAILS, 0, MAX_LOG_TAILS);
const LOG_TAIL_LINES: Knob<i64> = Knob::new("WARMUP_FANOUT_LOG_TAIL_LINES", 50, 1, 5_000);
const MAX_WARNINGS: Knob<usize> = Knob::new("WARMUP_FANOUT_MAX_WARNINGS", 20, 0, 500);

/// How [`warmup_status`](crate::warmup_status) reads a namespace. See docs/warmup-fanout.md
/// for the conventions (labels, configmap keys, log lines) these names refer to.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct WarmupOptions {
    /// Label selector of warmup jobs and pods. Default `app.kubernetes.io/component=warmup`.
    pub selector: String,
    /// Label selector of the nodes to report; `None` (default): every node.
    pub node_selector: Option<String>,
    /// The warmup daemonset's name. Default `warmup`.
    pub daemonset: String,
    /// The warmup configmap's name. Default `warmup`.
    pub configmap: String,
    /// The container whose log is read, for multi-container pods. Default: the first one.
    pub log_container: Option<String>,
    /// The most requests in flight at once. Default 12 (`WARMUP_FANOUT_MAX_IN_FLIGHT`, 1–64).
    pub max_in_flight: usize,
    /// Timeout of each read. Default 10 s (`WARMUP_FANOUT_READ_TIMEOUT_MS`, 50 ms–120 s).
    pub read_timeout: Duration,
    /// The most log tails read. Default 12 (`WARMUP_FANOUT_MAX_LOGS`, 0–12).
    pub max_logs: usize,
    /// Lines per log tail (`tailLines`). Default 50 (`WARMUP_FANOUT_LOG_TAIL_LINES`, 1–5000).
    pub tail_lines: i64,
    /// The most warning events kept. Default 20 (`WARMUP_FANOUT_MAX_WARNINGS`, 0–500).
    pub max_warnings: usize,
}

impl Default for WarmupOptions {
    fn default() -> Self {
        Self::from_lookup(|_| None)
    }
}

impl WarmupOptions {
    /// Defaults, with the knobs read from the process environment.
    pub fn from_env() -> Self {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Defaults, with the knobs read through `lookup` (given a variable's name). Unparseable
    /// values log a warning and use the default; out-of-range values are clamped.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Self {
        Self {
            selector: "app.kubernetes.io/component=warmup".to_string(),
            node_selector: None,
            daemonset: "warmup".to_string(),
            configmap: "warmup".to_string(),
            log_container: None,
            max_in_flight: MAX_IN_FLIGHT.read_with(&lookup),
            read_timeout: Duration::from_millis(READ_TIMEOUT_MS.read_with(&lookup)),
            max_logs: MAX_LOGS.read_with(&lookup),
            tail_lines: LOG_TAIL_LINES.read_with(&lookup),
            max_warnings: MAX_WARNINGS.read_with(&lookup),
        }
    }

    /// Set the label selector of warmup jobs and pods.
    pub fn selector(mut self, selector: impl Into<String>) -> Self {
        self.selector = selector.into();
        self
    }

    /// Report only nodes matching this label selector.
    pub fn node_selector(mut self, selector: impl Into<String>) -> Self {
        self.node_selector = Some(selector.into());
        self
    }

    /// Set the warmup daemonset's name.
    pub fn daemonset(mut self, name: impl Into<String>) -> Self {
        self.daemonset = name.into();
        self
    }

    /// Set the warmup configmap's name.
    pub fn configmap(mut self, name: impl Into<String>) -> Self {
        self.configmap = name.into();
        self
    }

    /// Read this container's log in multi-container pods.
    pub fn log_container(mut self, name: impl Into<String>) -> Self {
        self.log_container = Some(name.into());
        self
    }

    /// Set the bound on requests in flight, clamped to 1–64 (0 is taken as 1).
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = clamp(MAX_IN_FLIGHT, n);
        self
    }

    /// Set the timeout of each read, clamped to 50 ms–120 s (so `Duration::MAX` is 120 s).
    pub fn read_timeout(mut self, timeout: Duration) -> Self {
        self.read_timeout = clamp_timeout(timeout);
        self
    }

    /// Set the most log tails read (clamped to [`MAX_LOG_TAILS`]).
    pub fn max_logs(mut self, n: usize) -> Self {
        self.max_logs = clamp(MAX_LOGS, n);
        self
    }

    /// Set the lines per log tail, clamped to 1–5000.
    pub fn tail_lines(mut self, n: i64) -> Self {
        self.tail_lines = clamp(LOG_TAIL_LINES, n);
        self
    }

    /// Set the most warning events kept, clamped to 0–500.
    pub fn max_warnings(mut self, n: usize) -> Self {
        self.max_warnings = clamp(MAX_WARNINGS, n);
        self
    }

    /// These options with every knob clamped into its range: the public fields can be written
    /// directly, bypassing the setters, so [`warmup_status`](crate::warmup_status) clamps again.
    pub(crate) fn clamped(&self) -> Self {
        Self {
            max_in_flight: clamp(MAX_IN_FLIGHT, self.max_in_flight),
            read_timeout: clamp_timeout(self.read_timeout),
            max_logs: clamp(MAX_LOGS, self.max_logs),
            tail_lines: clamp(LOG_TAIL_LINES, self.tail_lines),
            max_warnings: clamp(MAX_WARNINGS, self.max_warnings),
            ..self.clone()
        }
    }
}

/// `value` clamped into `knob`'s range.
fn clamp<T: Ord + Copy + std::str::FromStr + std::fmt::Debug>(knob: Knob<T>, value: T) -> T {
    let (min, max) = knob.range();
    value.clamp(min, max)
}

/// A read timeout clamped into `READ_TIMEOUT_MS`'s range (no overflow: the range is in ms).
fn clamp_timeout(timeout: Duration) -> Duration {
    let (min, max) = READ_TIMEOUT_MS.range();
    timeout.clamp(Duration::from_millis(min), Duration::from_millis(max))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn knobs_default_parse_and_clamp() {
        let defaults = WarmupOptions::from_lookup(|_| None);
        assert_eq!(defaults.max_in_flight, 12);
        assert_eq!(defaults.max_logs, 12);
        assert_eq!(defaults.read_timeout, Duration::from_secs(10));
        assert_eq!(defaults.tail_lines, 50);

        let set = WarmupOptions::from_lookup(|name| {
            match name {
                "WARMUP_FANOUT_MAX_IN_FLIGHT" => Some("4"),
                "WARMUP_FANOUT_MAX_LOGS" => Some("99"),
                "WARMUP_FANOUT_READ_TIMEOUT_MS" => Some("soon"),
                "WARMUP_FANOUT_LOG_TAIL_LINES" => Some("0"),
                _ => None,
            }
            .map(str::to_string)
        });
        assert_eq!(set.max_in_flight, 4);
        assert_eq!(set.max_logs, 12, "clamped to the W3 cap");
        assert_eq!(
            set.read_timeout,
            Duration::from_secs(10),
            "garbage → default"
        );
        assert_eq!(set.tail_lines, 1);
    }

    #[test]
    fn setters_keep_the_caps() {
        let options = WarmupOptions::default()
            .max_logs(30)
            .max_in_flight(0)
            .tail_lines(-5);
        assert_eq!(options.max_logs, MAX_LOG_TAILS);
        assert_eq!(options.max_in_flight, 1);
        assert_eq!(options.tail_lines, 1);
    }

    // covers X5: fields written directly are clamped before use.
    #[test]
    #[allow(
        clippy::field_reassign_with_default,
        reason = "the point is writing the public fields after construction"
    )]
    fn clamped_brings_every_field_into_range() {
        let mut options = WarmupOptions::default();
        options.max_in_flight = 0;
        options.read_timeout = Duration::MAX;
        options.max_logs = usize::MAX;
        options.tail_lines = i64::MIN;
        options.max_warnings = usize::MAX;
        let c = options.clamped();
        assert_eq!(
            (
                c.max_in_flight,
                c.read_timeout,
                c.max_logs,
                c.tail_lines,
                c.max_warnings
            ),
            (1, Duration::from_secs(120), MAX_LOG_TAILS, 1, 500)
        );
        options.max_in_flight = usize::MAX;
        options.read_timeout = Duration::ZERO;
        let c = options.clamped();
        assert_eq!(
            (c.max_in_flight, c.read_timeout),
            (64, Duration::from_millis(50))
        );
    }
}
