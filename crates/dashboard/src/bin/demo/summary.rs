//! The demo's summary: one column per mode, and the ratios that matter.

use serde::Serialize;

/// What one mode's run cost.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ModeSummary {
    pub(crate) mode: &'static str,
    pub(crate) ticks: usize,
    pub(crate) requests_per_tick: (usize, usize),
    pub(crate) failed_gets: usize,
    pub(crate) tick_p50_ms: f64,
    pub(crate) tick_p95_ms: f64,
    pub(crate) posts_sent: usize,
    pub(crate) posts_accepted: usize,
    pub(crate) post_p50_ms: f64,
    pub(crate) post_max_ms: f64,
    pub(crate) clusters: usize,
    pub(crate) session_keys_per_cluster: usize,
    pub(crate) kube_calls: usize,
    pub(crate) arm_calls: usize,
    pub(crate) sessions_created: u64,
    pub(crate) tls_connections: u64,
    pub(crate) blob_clients: u64,
    pub(crate) token_fetches: u64,
    pub(crate) upstream_requests: u64,
    pub(crate) retries: u64,
    pub(crate) pool_timeouts: u64,
    pub(crate) key_store_reads: u64,
    pub(crate) inspector_entries: usize,
    pub(crate) posts_in_inspector: usize,
    pub(crate) middleware_buffered_bytes: u64,
    /// A few lines of the dashboard's `GET /metrics` at the end of the run.
    #[serde(skip)]
    pub(crate) metrics_excerpt: Vec<String>,
}

/// The `p`-th percentile (nearest rank) of `values`; 0 when empty.
pub(crate) fn percentile(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn bytes(n: u64) -> String {
    match n {
        0..1_024 => format!("{n} B"),
        1_024..1_048_576 => format!("{:.1} KiB", n as f64 / 1024.0),
        _ => format!("{:.1} MiB", n as f64 / 1_048_576.0),
    }
}

fn rows(s: &ModeSummary) -> Vec<(&'static str, String)> {
    vec![
        (
            "polling requests per tick",
            format!(
                "{}-{} ({} failed)",
                s.requests_per_tick.0, s.requests_per_tick.1, s.failed_gets
            ),
        ),
        (
            "tick latency p50 / p95",
            format!("{:.0} / {:.0} ms", s.tick_p50_ms, s.tick_p95_ms),
        ),
        ("Kubernetes API calls", s.kube_calls.to_string()),
        (
            "k8s sessions created",
            format!(
                "{} (limit {}x{})",
                s.sessions_created, s.clusters, s.session_keys_per_cluster
            ),
        ),
        ("k8s TLS connections", s.tls_connections.to_string()),
        ("ARM credential calls", s.arm_calls.to_string()),
        ("blob clients created", s.blob_clients.to_string()),
        ("Azure token fetches", s.token_fetches.to_string()),
        (
            "job POSTs accepted",
            format!("{}/{}", s.posts_accepted, s.posts_sent),
        ),
        (
            "POST latency p50 / max",
            format!("{:.0} / {:.0} ms", s.post_p50_ms, s.post_max_ms),
        ),
        ("upstream retries (429)", s.retries.to_string()),
        ("upstream pool timeouts", s.pool_timeouts.to_string()),
        ("API-key store reads", s.key_store_reads.to_string()),
        (
            "inspector: entries / POSTs kept",
            format!(
                "{} / {} of {}",
                s.inspector_entries, s.posts_in_inspector, s.posts_sent
            ),
        ),
        (
            "bodies buffered by middleware",
            bytes(s.middleware_buffered_bytes),
        ),
    ]
}

/// Series of a scrape worth showing at the end of the demo (Prometheus names).
const EXCERPT_PREFIXES: &[&str] = &[
    "pool_hits",
    "pool_misses",
    "pool_creations",
    "http_client_request_duration_seconds_count",
    "http_client_retries_total",
    "http_server_request_duration_seconds_count{http_request_method=\"POST\"",
    "dashboard_",
    "token_refreshes_total",
    "apikey_",
    "inspector_requests",
    "warmup_",
    "k8s_session_connections",
];
/// At most this many lines of it.
const EXCERPT_LINES: usize = 16;

/// Non-zero samples of each series above kept in the excerpt, at most.
const EXCERPT_PER_PREFIX: usize = 2;

/// Pick the lines of a scrape the excerpt shows: non-zero samples (no comments, no histogram
/// buckets) of the series above, in that order, a couple each.
pub(crate) fn excerpt(scrape: &str) -> Vec<String> {
    let samples: Vec<&str> = scrape
        .lines()
        .filter(|line| !line.starts_with('#') && !line.contains("_bucket{"))
        .filter(|line| {
            line.rsplit_once(' ')
                .and_then(|(_, value)| value.parse::<f64>().ok())
                .is_some_and(|value| value != 0.0)
        })
        .collect();
    EXCERPT_PREFIXES
        .iter()
        .flat_map(|prefix| {
            samples
                .iter()
                .filter(move |line| line.starts_with(prefix))
                .take(EXCERPT_PER_PREFIX)
        })
        .take(EXCERPT_LINES)
        .map(|line| (*line).to_string())
        .collect()
}

/// Print the excerpt of a dashboard's `/metrics` scrape (taken at the end of its run).
pub(crate) fn print_metrics_excerpt(run: &ModeSummary) {
    if run.metrics_excerpt.is_empty() {
        return;
    }
    println!(
        "\n`GET /metrics` at the end of the {} run (excerpt: non-zero samples, Prometheus text format):",
        run.mode
    );
    for line in &run.metrics_excerpt {
        println!("    {line}");
    }
}

/// Print the summary: one column per mode.
pub(crate) fn print(results: &[ModeSummary]) {
    let columns: Vec<Vec<(&str, String)>> = results.iter().map(rows).collect();
    let Some(first) = columns.first() else {
        return;
    };
    let label_width = first.iter().map(|(l, _)| l.len()).max().unwrap_or(0);
    let value_width = columns
        .iter()
        .flat_map(|c| c.iter().map(|(_, v)| v.len()))
        .max()
        .unwrap_or(0)
        .max(8);
    print!("{:<label_width$}", "summary");
    for result in results {
        let title = match result.mode {
            "pooled" => "ours (pooled)",
            other => other,
        };
        print!("   {title:>value_width$}");
    }
    println!();
    for (row, (label, _)) in first.iter().enumerate() {
        print!("{label:<label_width$}");
        for column in &columns {
            print!("   {:>value_width$}", column[row].1);
        }
        println!();
    }
    if let [ours, naive] = results {
        let ratio = |a: f64, b: f64| if a > 0.0 { b / a } else { 0.0 };
        println!(
            "\nnaive / ours: tick p50 x{:.1}, p95 x{:.1}; sessions x{:.0}; TLS connections x{:.0}; \
             token fetches x{:.0}",
            ratio(ours.tick_p50_ms, naive.tick_p50_ms),
            ratio(ours.tick_p95_ms, naive.tick_p95_ms),
            ratio(ours.sessions_created as f64, naive.sessions_created as f64),
            ratio(ours.tls_connections as f64, naive.tls_connections as f64),
            ratio(ours.token_fetches as f64, naive.token_fetches as f64),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v = [5.0, 1.0, 4.0, 2.0, 3.0];
        assert_eq!(percentile(&v, 50.0), 3.0);
        assert_eq!(percentile(&v, 95.0), 5.0);
        assert_eq!(percentile(&v, 100.0), 5.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
    }

    #[test]
    fn the_excerpt_keeps_non_zero_samples_of_known_series_in_order() {
        let scrape = "\
# TYPE token_refreshes_total counter
token_refreshes_total{outcome=\"ok\"} 3
token_refreshes_total{outcome=\"failed\"} 0
pool_hits_total{pool_name=\"k8s-session\"} 40
pool_hits_total{pool_name=\"blob\"} 2
pool_hits_total{pool_name=\"third\"} 1
http_server_request_duration_seconds_bucket{le=\"0.1\"} 5
unrelated_total 9
";
        assert_eq!(
            excerpt(scrape),
            [
                "pool_hits_total{pool_name=\"k8s-session\"} 40",
                "pool_hits_total{pool_name=\"blob\"} 2",
                "token_refreshes_total{outcome=\"ok\"} 3",
            ]
        );
    }
}
