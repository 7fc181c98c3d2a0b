//! What a fan-out reports: each read's outcome, phase, start offset and duration.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How one read ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Outcome {
    /// The read returned a value; that value is used.
    Ok,
    /// The read failed (an error, a panic, or its task ended without a result as the runtime
    /// shut down); its default is used instead. A read that ran on a failed dependency's
    /// default reports its own outcome.
    Degraded {
        /// Why, as the error's chain of messages (`outer: inner: …`).
        reason: String,
    },
    /// The read did not finish within its timeout and was cancelled; its default is used.
    TimedOut {
        /// The timeout that expired.
        #[serde(rename = "after_ms", with = "millis")]
        after: Duration,
    },
}

impl Outcome {
    /// Whether the read's own value is used (not its default).
    pub fn is_ok(&self) -> bool {
        matches!(self, Outcome::Ok)
    }

    /// A short text for dashboards and logs: `ok`, the degradation reason, or `timed out after …`.
    pub fn describe(&self) -> String {
        match self {
            Outcome::Ok => "ok".to_string(),
            Outcome::Degraded { reason } => reason.clone(),
            Outcome::TimedOut { after } => format!("timed out after {after:?}"),
        }
    }
}

/// The record of one read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ReadReport {
    /// The read's name, as given in its [`ReadSpec`](crate::ReadSpec).
    pub name: String,
    /// 1 for a read with no dependency, else one more than its deepest dependency.
    pub phase: u32,
    /// How it ended.
    #[serde(flatten)]
    pub outcome: Outcome,
    /// When it started (after its dependencies resolved and it got a permit), measured from
    /// the creation of the [`FanOut`](crate::FanOut).
    #[serde(rename = "started_after_ms", with = "millis")]
    pub started_after: Duration,
    /// How long it ran (its own time, not the wait for dependencies or a permit).
    #[serde(rename = "duration_ms", with = "millis")]
    pub duration: Duration,
}

/// Everything a finished fan-out reports, reads in registration order.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[non_exhaustive]
pub struct FanOutReport {
    /// One row per read, in the order the reads were registered; a group's reads sit where
    /// the group was registered, in the group's order.
    pub reads: Vec<ReadReport>,
    /// From the creation of the fan-out to the end of its last read.
    #[serde(rename = "elapsed_ms", with = "millis")]
    pub elapsed: Duration,
    /// The most reads that ran at the same time (never more than the configured bound).
    pub peak_in_flight: usize,
}

impl FanOutReport {
    /// The row of the read called `name`.
    pub fn get(&self, name: &str) -> Option<&ReadReport> {
        self.reads.iter().find(|r| r.name == name)
    }

    /// The reads whose default was used (degraded or timed out).
    pub fn failures(&self) -> impl Iterator<Item = &ReadReport> {
        self.reads.iter().filter(|r| !r.outcome.is_ok())
    }

    /// Whether every read returned its own value.
    pub fn is_complete(&self) -> bool {
        self.reads.iter().all(|r| r.outcome.is_ok())
    }

    /// The number of dependent phases (the deepest read's phase; 0 for no reads).
    pub fn phases(&self) -> u32 {
        self.reads.iter().map(|r| r.phase).max().unwrap_or(0)
    }
}

/// Serde for a [`Duration`] as fractional milliseconds.
pub(crate) mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64() * 1000.0)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let ms = f64::deserialize(d)?;
        Duration::try_from_secs_f64(ms / 1000.0).map_err(serde::de::Error::custom)
    }
}
