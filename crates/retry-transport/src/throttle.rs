//! Adaptive client-side throttling (R10): reject locally with Google SRE's probability, per partition.
//!
//! From "Handling Overload" (Site Reliability Engineering, ch. 21): each client keeps, over a
//! trailing window, the requests it attempted and the requests the backend accepted, and
//! rejects a new request locally with probability
//! `max(0, (requests − K × accepts) / (requests + 1))`. A backend that accepts everything
//! is never throttled; one that rejects everything sees the client's traffic fall towards
//! `K × accepts`. No Rust crate ships this, so it is implemented here: a 12-slot sliding
//! window of the two counts (tokio time, so tests advance it), and a seedable RNG.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// More partitions than this share one overflow window (the map stays bounded).
const MAX_PARTITIONS: usize = crate::budget::MAX_PARTITIONS;
const OVERFLOW: &str = "(overflow)";
const SLOTS: usize = 12;

/// Adaptive client-side throttling (R10), off by default: turn it on with
/// [`Builder::adaptive_throttle`](crate::Builder::adaptive_throttle).
///
/// An *accept* is a response whose status is not 429 or 503 (the backend's "I am overloaded"
/// answers); a transport error is not an accept. Every attempt — first try or retry, sent or
/// rejected locally — is a *request*. A first attempt rejected locally fails with
/// [`Error::Throttled`](crate::Error::Throttled) before it takes a slot or a connection; a
/// retry rejected locally ends the retries and the last response (or error) goes back.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct AdaptiveThrottle {
    /// Requests allowed per accept before local rejection starts: default 2 (SRE). Lower
    /// sheds sooner; clamped to [1, 100] (NaN: 2).
    pub k: f64,
    /// How long requests and accepts count: default 2 minutes, clamped to [1 s, 1 h]. The
    /// window slides in 12 steps.
    pub window: Duration,
    /// Seed for the rejection draws (one draw per request). `None` (default): a random seed.
    pub seed: Option<u64>,
}

impl Default for AdaptiveThrottle {
    fn default() -> Self {
        Self {
            k: 2.0,
            window: Duration::from_secs(120),
            seed: None,
        }
    }
}

impl AdaptiveThrottle {
    /// Set `k`.
    pub fn k(mut self, k: f64) -> Self {
        self.k = k;
        self
    }

    /// Set `window`.
    pub fn window(mut self, window: Duration) -> Self {
        self.window = window;
        self
    }

    /// Seed the rejection draws (for tests and reproducible benchmarks).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    pub(crate) fn checked(mut self) -> Self {
        self.k = if self.k.is_nan() {
            2.0
        } else {
            self.k.clamp(1.0, 100.0)
        };
        self.window = self
            .window
            .clamp(Duration::from_secs(1), Duration::from_secs(3600));
        self
    }
}

/// The SRE rejection probability.
pub(crate) fn probability(requests: u64, accepts: u64, k: f64) -> f64 {
    let requests = requests as f64;
    ((requests - k * accepts as f64) / (requests + 1.0)).max(0.0)
}

#[derive(Debug)]
struct Window {
    slots: [(u64, u64); SLOTS],
    head: usize,
    head_start: Instant,
}

impl Window {
    fn new(now: Instant) -> Self {
        Self {
            slots: [(0, 0); SLOTS],
            head: 0,
            head_start: now,
        }
    }

    fn roll(&mut self, now: Instant, width: Duration) {
        let elapsed = now.saturating_duration_since(self.head_start);
        let steps = (elapsed.as_nanos() / width.as_nanos().max(1)) as usize;
        if steps == 0 {
            return;
        }
        if steps >= SLOTS {
            self.slots = [(0, 0); SLOTS];
            self.head_start = now;
            return;
        }
        for _ in 0..steps {
            self.head = (self.head + 1) % SLOTS;
            self.slots[self.head] = (0, 0);
        }
        self.head_start += width * steps as u32;
    }

    fn totals(&self) -> (u64, u64) {
        self.slots
            .iter()
            .fold((0, 0), |(r, a), (sr, sa)| (r + sr, a + sa))
    }
}

#[derive(Debug)]
struct State {
    rng: fastrand::Rng,
    partitions: HashMap<String, Window>,
}

/// Per-partition windows and the draws. `None` in the client when throttling is off.
#[derive(Debug)]
pub(crate) struct Throttles {
    config: AdaptiveThrottle,
    state: Mutex<State>,
}

impl Throttles {
    pub(crate) fn new(config: AdaptiveThrottle) -> Self {
        let config = config.checked();
        let rng = config
            .seed
            .map_or_else(fastrand::Rng::new, fastrand::Rng::with_seed);
        Self {
            config,
            state: Mutex::new(State {
                rng,
                partitions: HashMap::new(),
            }),
        }
    }

    fn with<T>(&self, partition: &str, f: impl FnOnce(&mut Window, &mut fastrand::Rng) -> T) -> T {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let now = Instant::now();
        let width = self.config.window / SLOTS as u32;
        let State { rng, partitions } = &mut *state;
        let key = if partitions.len() >= MAX_PARTITIONS && !partitions.contains_key(partition) {
            OVERFLOW
        } else {
            partition
        };
        let window = partitions
            .entry(key.to_string())
            .or_insert_with(|| Window::new(now));
        window.roll(now, width);
        f(window, rng)
    }

    /// Count a request and decide: `Err(p)` to reject it locally (drawn with probability `p`).
    pub(crate) fn admit(&self, partition: &str) -> Result<(), f64> {
        let k = self.config.k;
        self.with(partition, |window, rng| {
            let (requests, accepts) = window.totals();
            let p = probability(requests, accepts, k);
            window.slots[window.head].0 += 1;
            // One draw per request, always, so a seeded sequence is reproducible.
            if rng.f64() < p { Err(p) } else { Ok(()) }
        })
    }

    /// The backend accepted a request.
    pub(crate) fn accepted(&self, partition: &str) {
        self.with(partition, |window, _| window.slots[window.head].1 += 1);
    }

    /// The rejection probability for the next request now.
    pub(crate) fn probability(&self, partition: &str) -> f64 {
        let k = self.config.k;
        self.with(partition, |window, _| {
            let (requests, accepts) = window.totals();
            probability(requests, accepts, k)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // covers R10: the formula, and a rejection rate matching it over many seeded draws.
    #[tokio::test(start_paused = true)]
    async fn rejects_with_the_formulas_probability() {
        assert_eq!(probability(0, 0, 2.0), 0.0);
        assert_eq!(probability(10, 5, 2.0), 0.0);
        assert_eq!(probability(9, 0, 2.0), 0.9);
        assert_eq!(probability(99, 20, 2.0), 0.59);

        // Hold the counts at 99 requests / 20 accepts: p = 0.59 for every draw.
        let mut rejected = 0;
        for seed in 0..4000 {
            let t = Throttles::new(AdaptiveThrottle::default().seed(seed));
            for _ in 0..20 {
                t.accepted("h");
            }
            for _ in 0..99 {
                t.with("h", |w, _| w.slots[w.head].0 += 1);
            }
            assert!((t.probability("h") - 0.59).abs() < 1e-12);
            rejected += usize::from(t.admit("h").is_err());
        }
        let rate = rejected as f64 / 4000.0;
        assert!((rate - 0.59).abs() < 0.03, "rejection rate {rate}");
    }

    // covers R10: accepts bring the probability back to zero; so does the window passing.
    #[tokio::test(start_paused = true)]
    async fn recovers_as_accepts_return_and_as_the_window_passes() {
        let t = Throttles::new(AdaptiveThrottle::default().seed(7));
        for _ in 0..100 {
            let _ = t.admit("h");
        }
        assert!(t.probability("h") > 0.98);
        for _ in 0..50 {
            t.accepted("h");
        }
        assert_eq!(t.probability("h"), 0.0, "100 requests, 50 accepts, K = 2");

        let t = Throttles::new(AdaptiveThrottle::default().seed(7));
        for _ in 0..100 {
            let _ = t.admit("h");
        }
        tokio::time::advance(Duration::from_secs(60)).await;
        assert!(t.probability("h") > 0.98, "half the window: still counted");
        tokio::time::advance(Duration::from_secs(61)).await;
        assert_eq!(t.probability("h"), 0.0, "the window has passed");
        assert!(t.admit("other").is_ok(), "another partition starts clean");
    }

    #[test]
    fn extreme_values_are_clamped() {
        let c = AdaptiveThrottle::default()
            .k(f64::NAN)
            .window(Duration::MAX)
            .checked();
        assert_eq!((c.k, c.window), (2.0, Duration::from_secs(3600)));
        let c = AdaptiveThrottle::default()
            .k(0.0)
            .window(Duration::ZERO)
            .checked();
        assert_eq!((c.k, c.window), (1.0, Duration::from_secs(1)));
    }
}
