//! The result line every benchmark scenario prints, and small timing helpers.

use serde_json::json;

/// One comparison of ours against one baseline, measured in the same run.
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    /// The scenario, as named by its bench target (`cargo xtask bench <scenario>`).
    pub scenario: &'static str,
    /// What ours is compared with.
    pub baseline_name: String,
    /// What is measured, e.g. "hit latency".
    pub metric: &'static str,
    /// The unit of `ours` and `baseline`, e.g. "ns/op".
    pub unit: &'static str,
    /// Our figure.
    pub ours: f64,
    /// The baseline's figure.
    pub baseline: f64,
    /// Whether a smaller figure is better (latency, count) or a larger one (throughput).
    pub lower_is_better: bool,
}

impl Comparison {
    /// A row where a smaller figure is better (a latency, a count, bytes): `ours` against
    /// `baseline`, the figure of `baseline_name`, both in `unit`.
    pub fn lower_is_better(
        scenario: &'static str,
        baseline_name: impl Into<String>,
        metric: &'static str,
        unit: &'static str,
        ours: f64,
        baseline: f64,
    ) -> Self {
        Self {
            scenario,
            baseline_name: baseline_name.into(),
            metric,
            unit,
            ours,
            baseline,
            lower_is_better: true,
        }
    }

    /// A row where a larger figure is better (a throughput, a hit rate).
    pub fn higher_is_better(
        scenario: &'static str,
        baseline_name: impl Into<String>,
        metric: &'static str,
        unit: &'static str,
        ours: f64,
        baseline: f64,
    ) -> Self {
        Self {
            lower_is_better: false,
            ..Self::lower_is_better(scenario, baseline_name, metric, unit, ours, baseline)
        }
    }

    /// How many times better ours is than the baseline (> 1: ours is better). A zero on the
    /// "good" side (e.g. 0 timeouts vs some) is reported against 1, so the ratio stays finite.
    pub fn ratio(&self) -> f64 {
        let (good, bad) = if self.lower_is_better {
            (self.ours, self.baseline)
        } else {
            (self.baseline, self.ours)
        };
        if good == 0.0 {
            if bad == 0.0 { 1.0 } else { bad.max(1.0) }
        } else {
            bad / good
        }
    }

    /// The JSON line `cargo xtask bench` collects.
    pub fn json_line(&self) -> String {
        json!({
            "scenario": self.scenario,
            "baseline_name": self.baseline_name,
            "metric": self.metric,
            "unit": self.unit,
            "ours": round(self.ours),
            "baseline": round(self.baseline),
            "ratio": round(self.ratio()),
        })
        .to_string()
    }
}

/// Print every comparison's JSON line (call last: the lines end the scenario's output).
pub fn emit(comparisons: &[Comparison]) {
    for comparison in comparisons {
        println!("{}", comparison.json_line());
    }
}

/// The median of `samples` (which it sorts); 0 for none.
pub fn median(samples: &mut [f64]) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

/// The `p`-th percentile (0–100, nearest rank) of `samples` (which it sorts); 0 for none.
pub fn percentile(samples: &mut [f64], p: f64) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    samples.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * samples.len() as f64).ceil() as usize;
    samples[rank.clamp(1, samples.len()) - 1]
}

fn round(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmp(ours: f64, baseline: f64, lower_is_better: bool) -> Comparison {
        if lower_is_better {
            Comparison::lower_is_better("s", "b", "m", "u", ours, baseline)
        } else {
            Comparison::higher_is_better("s", "b", "m", "u", ours, baseline)
        }
    }

    #[test]
    fn ratio_is_times_better_whatever_the_direction() {
        assert_eq!(cmp(10.0, 20.0, true).ratio(), 2.0);
        assert_eq!(cmp(20.0, 10.0, false).ratio(), 2.0);
        assert_eq!(cmp(0.0, 7.0, true).ratio(), 7.0);
        assert_eq!(cmp(0.0, 0.0, true).ratio(), 1.0);
    }

    #[test]
    fn percentiles_use_nearest_rank() {
        let mut samples: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&mut samples, 99.0), 99.0);
        assert_eq!(percentile(&mut samples, 50.0), 50.0);
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
    }
}
