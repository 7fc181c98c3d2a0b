//! Reading a warmup pod's log tail: `warmup db=<name> state=<state> pct=<n>` progress lines.

use std::collections::BTreeMap;

use super::model::ChipState;

/// The last reported progress of one database in one log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Progress {
    pub(crate) state: ChipState,
    pub(crate) percent: Option<u8>,
}

/// Every database's latest progress in `log` (later lines win).
///
/// A progress line has a whitespace-separated token `warmup`, followed by `key=value` tokens:
/// `db` (required), `state` (`queued`, `staging`, `ready`, `failed`), `pct` (0–100). Whatever
/// precedes `warmup` (a timestamp, a log level) is ignored, unknown keys are ignored, a bad
/// `pct` is dropped, an unknown `state` reads as `Unknown`; a line without `db` is not a
/// progress line. Without `state`, `pct=100` means ready and any other `pct` staging.
pub(crate) fn parse_log(log: &str) -> BTreeMap<String, Progress> {
    let mut latest = BTreeMap::new();
    for line in log.lines() {
        if let Some((db, progress)) = parse_line(line) {
            latest.insert(db, progress);
        }
    }
    latest
}

fn parse_line(line: &str) -> Option<(String, Progress)> {
    let mut tokens = line.split_whitespace().skip_while(|t| *t != "warmup");
    tokens.next()?;
    let (mut db, mut state, mut percent) = (None, None, None);
    for token in tokens {
        let Some((key, value)) = token.split_once('=') else {
            continue;
        };
        match key {
            "db" if !value.is_empty() => db = Some(value.to_string()),
            "state" => state = Some(parse_state(value)),
            "pct" => percent = value.parse::<u8>().ok().filter(|p| *p <= 100),
            _ => {}
        }
    }
    let state = state.unwrap_or(match percent {
        Some(100) => ChipState::Ready,
        Some(_) => ChipState::Staging,
        None => ChipState::Unknown,
    });
    Some((db?, Progress { state, percent }))
}

fn parse_state(value: &str) -> ChipState {
    match value.to_ascii_lowercase().as_str() {
        "queued" => ChipState::Queued,
        "staging" => ChipState::Staging,
        "ready" => ChipState::Ready,
        "failed" => ChipState::Failed,
        _ => ChipState::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(state: ChipState, percent: Option<u8>) -> Progress {
        Progress { state, percent }
    }

    #[test]
    fn later_lines_win_per_database() {
        let log = "\
2026-05-22T10:00:00Z INFO warmup db=orders state=queued
2026-05-22T10:00:01Z INFO warmup db=orders state=staging pct=40
warmup db=users state=ready pct=100
some unrelated line with db=ignored
2026-05-22T10:00:02Z INFO warmup db=orders state=staging pct=75 bytes=123";
        let parsed = parse_log(log);
        assert_eq!(parsed.len(), 2);
        assert_eq!(parsed["orders"], p(ChipState::Staging, Some(75)));
        assert_eq!(parsed["users"], p(ChipState::Ready, Some(100)));
    }

    #[test]
    fn malformed_fields_are_dropped_not_fatal() {
        let log = "\
warmup db=a state=staging pct=250
warmup db=b state=exploded
warmup state=ready pct=100
warmup db= state=ready
warmup db=c pct=100
warmup db=d pct=3
warmup db=e
warmupdb=f state=ready
WARMUP db=g state=ready";
        let parsed = parse_log(log);
        assert_eq!(parsed["a"], p(ChipState::Staging, None));
        assert_eq!(parsed["b"], p(ChipState::Unknown, None));
        assert_eq!(parsed["c"], p(ChipState::Ready, Some(100)));
        assert_eq!(parsed["d"], p(ChipState::Staging, Some(3)));
        assert_eq!(parsed["e"], p(ChipState::Unknown, None));
        assert_eq!(parsed.keys().collect::<Vec<_>>(), ["a", "b", "c", "d", "e"]);
    }

    #[test]
    fn empty_and_binary_logs_parse_to_nothing() {
        assert!(parse_log("").is_empty());
        assert!(parse_log("\u{fffd}\u{0}\u{1}warmup\n\n   \n").is_empty());
    }
}
