//! The retry budget (R9): retries add at most a ratio of recent first attempts plus a floor, per partition.
//!
//! The accounting is tower's [`TpsBudget`] (the one reqwest's own `retry` module and
//! Finagle/Linkerd use): every first attempt deposits, every retry withdraws, and deposits
//! and withdrawals expire after the window (ten slots of a tenth of the window each). It fits
//! the loop as it is — the loop asks `withdraw()` once it has decided to retry, before it
//! releases the response — so nothing here re-implements it; this module adds the knobs, the
//! clamps tower asserts on (X5), and one budget per partition.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pool_core::Knob;
use tower::retry::budget::{Budget as _, TpsBudget};

/// `RETRY_TRANSPORT_BUDGET_PERCENT`: retries may add this percentage of recent first attempts.
pub const BUDGET_PERCENT: Knob<u32> = Knob::new("RETRY_TRANSPORT_BUDGET_PERCENT", 20, 0, 1000);
/// `RETRY_TRANSPORT_BUDGET_FLOOR_PER_SECOND`: retries allowed per second on top of the ratio,
/// however few first attempts there were (so a quiet client can still retry).
pub const BUDGET_FLOOR_PER_SECOND: Knob<u32> =
    Knob::new("RETRY_TRANSPORT_BUDGET_FLOOR_PER_SECOND", 10, 0, 100_000);
/// `RETRY_TRANSPORT_BUDGET_WINDOW_SECONDS`: how long a first attempt or a retry counts.
pub const BUDGET_WINDOW_SECONDS: Knob<u64> =
    Knob::new("RETRY_TRANSPORT_BUDGET_WINDOW_SECONDS", 10, 1, 60);

/// More partitions than this share one overflow budget (the map stays bounded).
pub const MAX_PARTITIONS: usize = 1024;
const OVERFLOW: &str = "(overflow)";

/// The retry budget (R9), on by default: over the last `window`, retries in a partition may
/// number at most `ratio` × first attempts + `floor_per_second` × window seconds. Past it, a
/// retryable response (or error) goes back to the caller at once.
///
/// ```
/// use std::time::Duration;
/// use retry_transport::RetryBudget;
///
/// let budget = RetryBudget::default(); // 20 %, 10/s, 10 s (no environment read)
/// assert_eq!((budget.ratio, budget.floor_per_second, budget.window), (0.2, 10, Duration::from_secs(10)));
/// let strict = RetryBudget::default().ratio(0.1).floor_per_second(1);
/// assert!(RetryBudget::disabled().is_disabled());
/// # let _ = strict;
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct RetryBudget {
    /// Whether retries are budgeted at all (default true).
    pub enabled: bool,
    /// Retries allowed per first attempt: default 0.2. tower charges a retry a whole number of
    /// deposits, so ratios of the form 1/n (0.5, 0.25, 0.2, 0.1) are exact and others round
    /// up to the next 1/n (0.3 → 1/3). Clamped to [0, 10].
    pub ratio: f32,
    /// Retries allowed per second of the window regardless of traffic: default 10. At most
    /// 100 000.
    pub floor_per_second: u32,
    /// How long a first attempt or a retry counts: default 10 s, clamped to [1 s, 60 s].
    pub window: Duration,
}

impl Default for RetryBudget {
    fn default() -> Self {
        Self::from_env_with(|_| None)
    }
}

impl RetryBudget {
    /// The defaults, overridden by the `RETRY_TRANSPORT_BUDGET_*` environment variables.
    pub fn from_env() -> Self {
        Self::from_env_with(|name| std::env::var(name).ok())
    }

    /// Like [`RetryBudget::from_env`], reading variables through `lookup` (for tests).
    pub fn from_env_with(lookup: impl Fn(&str) -> Option<String>) -> Self {
        Self {
            enabled: true,
            ratio: BUDGET_PERCENT.read_with(&lookup) as f32 / 100.0,
            floor_per_second: BUDGET_FLOOR_PER_SECOND.read_with(&lookup),
            window: Duration::from_secs(BUDGET_WINDOW_SECONDS.read_with(&lookup)),
        }
    }

    /// No budget: every retry the policy allows is sent (not recommended for a fleet).
    pub fn disabled() -> Self {
        Self {
            enabled: false,
            ..Self::default()
        }
    }

    /// Whether this is [`RetryBudget::disabled`].
    pub fn is_disabled(&self) -> bool {
        !self.enabled
    }

    /// Set `ratio`.
    pub fn ratio(mut self, ratio: f32) -> Self {
        self.ratio = ratio;
        self
    }

    /// Set `floor_per_second`.
    pub fn floor_per_second(mut self, floor: u32) -> Self {
        self.floor_per_second = floor;
        self
    }

    /// Set `window`.
    pub fn window(mut self, window: Duration) -> Self {
        self.window = window;
        self
    }

    /// The values as used: NaN or negative ratio → 0, over 10 → 10; window into [1 s, 60 s]
    /// (tower asserts on anything else); floor ≤ 100 000. Never a panic (X5).
    pub(crate) fn checked(mut self) -> Self {
        self.ratio = if self.ratio.is_nan() {
            0.0
        } else {
            self.ratio.clamp(0.0, 10.0)
        };
        self.floor_per_second = self.floor_per_second.min(BUDGET_FLOOR_PER_SECOND.range().1);
        // Whole seconds: tower computes its reserve from `ttl.as_secs()`.
        let secs = self.window.as_secs().clamp(1, 60);
        self.window = Duration::from_secs(secs);
        self
    }

    fn tower(&self) -> TpsBudget {
        TpsBudget::new(self.window, self.floor_per_second, self.ratio)
    }
}

/// One budget per partition, shared by every clone and view of a client.
#[derive(Debug)]
pub(crate) struct Budgets {
    config: RetryBudget,
    partitions: Mutex<HashMap<String, Arc<TpsBudget>>>,
}

impl Budgets {
    pub(crate) fn new(config: RetryBudget) -> Self {
        Self {
            config: config.checked(),
            partitions: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn config(&self) -> &RetryBudget {
        &self.config
    }

    fn get(&self, partition: &str) -> Option<Arc<TpsBudget>> {
        if !self.config.enabled {
            return None;
        }
        let mut map = self
            .partitions
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(budget) = map.get(partition) {
            return Some(Arc::clone(budget));
        }
        let key = if map.len() >= MAX_PARTITIONS {
            OVERFLOW
        } else {
            partition
        };
        Some(Arc::clone(
            map.entry(key.to_string())
                .or_insert_with(|| Arc::new(self.config.tower())),
        ))
    }

    /// A first attempt was sent.
    pub(crate) fn deposit(&self, partition: &str) {
        if let Some(budget) = self.get(partition) {
            budget.deposit();
        }
    }

    /// May one more retry be sent? (Always yes when the budget is disabled.)
    pub(crate) fn withdraw(&self, partition: &str) -> bool {
        self.get(partition).is_none_or(|budget| budget.withdraw())
    }

    /// Retries the partition's budget allows now (`None`: budget disabled or partition unseen).
    pub(crate) fn balance(&self, partition: &str) -> Option<f64> {
        if !self.config.enabled {
            return None;
        }
        let map = self
            .partitions
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        map.get(partition)
            .and_then(|budget| balance_of(&format!("{budget:?}")))
    }
}

/// tower exposes the balance only through `Debug` (`Budget { deposit: d, withdraw: w,
/// balance: b }`, in deposit units): retries available = b / w. The unit test
/// `balance_reads_towers_debug_output` fails if tower changes that format.
fn balance_of(debug: &str) -> Option<f64> {
    let field = |name: &str| -> Option<f64> {
        let start = debug.find(name)? + name.len();
        let rest = &debug[start..];
        let end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '-'))
            .unwrap_or(rest.len());
        rest[..end].parse().ok()
    };
    let withdraw = field("withdraw: ")?;
    let balance = field("balance: ")?;
    (withdraw > 0.0).then(|| (balance / withdraw).max(0.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budgets(ratio: f32, floor: u32, window: u64) -> Budgets {
        Budgets::new(
            RetryBudget::default()
                .ratio(ratio)
                .floor_per_second(floor)
                .window(Duration::from_secs(window)),
        )
    }

    fn drain(b: &Budgets, partition: &str) -> usize {
        (0..100_000).take_while(|_| b.withdraw(partition)).count()
    }

    // covers R9: exactly floor × window retries with no traffic, plus ratio × first attempts.
    #[tokio::test(start_paused = true)]
    async fn the_budget_allows_exactly_the_ratio_and_the_floor() {
        let b = budgets(0.2, 10, 10);
        assert_eq!(drain(&b, "h"), 100, "10/s × 10 s floor");
        for _ in 0..50 {
            b.deposit("h");
        }
        assert_eq!(drain(&b, "h"), 10, "20 % of 50 first attempts");
        let none = budgets(0.2, 0, 10);
        for _ in 0..49 {
            none.deposit("h");
        }
        assert_eq!(drain(&none, "h"), 9, "49 × 0.2 = 9.8: nine whole retries");
        let half = budgets(0.5, 0, 1);
        for _ in 0..10 {
            half.deposit("h");
        }
        assert_eq!(drain(&half, "h"), 5);
    }

    // covers R9: withdrawals and deposits expire after the window (virtual time).
    #[tokio::test(start_paused = true)]
    async fn the_budget_refills_over_its_window() {
        let b = budgets(0.2, 1, 10);
        assert_eq!(drain(&b, "h"), 10);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(drain(&b, "h"), 0, "half a window later, still spent");
        tokio::time::advance(Duration::from_millis(6_100)).await;
        assert_eq!(drain(&b, "h"), 10, "a window later, refilled");
        assert_eq!(b.balance("h"), Some(0.0));
    }

    // covers R9: each partition has its own budget.
    #[tokio::test(start_paused = true)]
    async fn partitions_do_not_share_a_budget() {
        let b = budgets(0.2, 1, 1);
        assert_eq!(drain(&b, "a"), 1);
        assert_eq!(drain(&b, "a"), 0);
        assert_eq!(drain(&b, "b"), 1);
    }

    #[test]
    fn balance_reads_towers_debug_output() {
        let b = budgets(0.2, 10, 10);
        b.deposit("h");
        assert_eq!(b.balance("h"), Some(100.2));
        assert!(b.withdraw("h"));
        assert_eq!(b.balance("h"), Some(99.2));
        assert_eq!(b.balance("unseen"), None);
        assert_eq!(Budgets::new(RetryBudget::disabled()).balance("h"), None);
    }

    // covers X5: values tower would assert on are clamped, never a panic.
    #[test]
    fn extreme_values_are_clamped() {
        for (ratio, floor, window) in [
            (f32::NAN, u32::MAX, Duration::MAX),
            (-1.0, 0, Duration::ZERO),
            (f32::INFINITY, 7, Duration::from_millis(1500)),
        ] {
            let b = Budgets::new(
                RetryBudget::default()
                    .ratio(ratio)
                    .floor_per_second(floor)
                    .window(window),
            );
            let c = b.config();
            assert!((0.0..=10.0).contains(&c.ratio));
            assert!((1..=60).contains(&c.window.as_secs()));
            b.deposit("h");
            let _ = b.withdraw("h");
        }
        let env = RetryBudget::from_env_with(|name| match name {
            "RETRY_TRANSPORT_BUDGET_PERCENT" => Some("50".into()),
            "RETRY_TRANSPORT_BUDGET_FLOOR_PER_SECOND" => Some("0".into()),
            "RETRY_TRANSPORT_BUDGET_WINDOW_SECONDS" => Some("999".into()),
            _ => None,
        });
        assert_eq!(
            (env.ratio, env.floor_per_second, env.window),
            (0.5, 0, Duration::from_secs(60))
        );
    }

    #[test]
    fn partitions_are_bounded() {
        let b = budgets(0.2, 1, 1);
        for i in 0..MAX_PARTITIONS + 10 {
            b.deposit(&format!("p{i}"));
        }
        assert_eq!(b.partitions.lock().unwrap().len(), MAX_PARTITIONS + 1);
    }
}
