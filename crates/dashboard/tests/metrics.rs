//! Issue #19, the dashboard's side: with metrics-exporter-prometheus installed (as the `demo`
//! binary does), `GET /metrics` on the dashboard's own listener, without a key, answers the
//! Prometheus text format, and after some traffic it parses and carries the series promised —
//! the dashboard's own and the pools'. No Azurite: the keys live in a file store.
//!
//! One test in this binary: the recorder is process-wide.

use std::collections::BTreeMap;
use std::sync::Arc;

use dashboard::local::{Simulation, SimulationOptions};
use dashboard::{
    ADMIN_TOKEN_HEADER, AdminToken, Dashboard, DashboardConfig, KeyStoreConfig, StorageConfig,
    UpstreamConfig,
};
use metrics_exporter_prometheus::PrometheusBuilder;
use serde_json::{Value, json};

const ADMIN: &str = "metrics-admin-token-0123456789ab";

/// One sample: `name{k="v",…} value`.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parse the Prometheus text format (samples only; `# HELP`/`# TYPE` lines are checked to be
/// comments). Panics on a line that is neither, so a malformed scrape fails the test.
fn parse(text: &str) -> Vec<Sample> {
    let mut samples = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        if line.starts_with("# HELP ") || line.starts_with("# TYPE ") {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("not a sample: {line}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value: {line}"));
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => {
                let rest = rest
                    .strip_suffix('}')
                    .unwrap_or_else(|| panic!("unclosed labels: {line}"));
                let labels = rest
                    .split("\",")
                    .filter(|kv| !kv.is_empty())
                    .map(|kv| {
                        let (k, v) = kv
                            .split_once("=\"")
                            .unwrap_or_else(|| panic!("bad label: {line}"));
                        (k.to_string(), v.trim_end_matches('"').to_string())
                    })
                    .collect();
                (name, labels)
            }
            None => (series, BTreeMap::new()),
        };
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name: {line}"
        );
        samples.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    samples
}

/// The sum of `name`'s samples whose labels include every `(key, value)` of `with`.
fn total(samples: &[Sample], name: &str, with: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            with.iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_scraped_without_a_key_and_parse_after_traffic() {
    let handle = PrometheusBuilder::new()
        .with_recommended_naming(true)
        .install_recorder()
        .expect("the only recorder of this test binary");
    let sim = Simulation::start(&SimulationOptions::default().latency_ms((0, 0)))
        .await
        .unwrap();
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "dashboard-metrics-{}-{:x}",
        std::process::id(),
        rand::random::<u64>()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let mut config = DashboardConfig::new(
        sim.clusters.iter().map(|c| c.config.clone()).collect(),
        // Never contacted by this test.
        StorageConfig::new("https://127.0.0.1:9/devstoreaccount1", None),
        UpstreamConfig::new(url::Url::parse(&sim.upstream.url("/")).unwrap()),
    );
    config.listen = ([127, 0, 0, 1], 0).into();
    config.keys = KeyStoreConfig::File {
        path: dir.join("keys.json"),
    };
    config.admin_token = Some(AdminToken::new(ADMIN));

    // Without a render function (no exporter handed over), `/metrics` is a 404.
    let bare = Dashboard::new(config.clone(), dashboard::local::credential()).unwrap();
    let bare = bare.serve().await.unwrap();
    let http = reqwest::Client::new();
    let response = http
        .get(format!("{}/metrics", bare.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    bare.stop().await;

    let dashboard = Dashboard::new(config, dashboard::local::credential()).unwrap();
    let render = handle.clone();
    assert!(dashboard.set_metrics_render(Arc::new(move || render.render())));
    assert!(
        !dashboard.set_metrics_render(Arc::new(String::new)),
        "set twice"
    );
    let running = dashboard.serve().await.unwrap();
    let url = |path: &str| format!("{}{path}", running.url());

    // Traffic: an account, 3 good and 2 keyless /api/me, 1 AKS card (the session pool), one
    // unmatched path with an id in it, the favicon.
    let created = http
        .post(url("/api/admin/accounts"))
        .header(ADMIN_TOKEN_HEADER, ADMIN)
        .header("content-type", "application/json")
        .body(json!({ "id": "metrics" }).to_string())
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let created: Value = serde_json::from_slice(&created).unwrap();
    let key = created["api_key"].as_str().unwrap().to_string();
    for _ in 0..3 {
        let r = http
            .get(url("/api/me"))
            .header("x-api-key", &key)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    for _ in 0..2 {
        assert_eq!(http.get(url("/api/me")).send().await.unwrap().status(), 401);
    }
    let aks = http
        .get(url("/api/monitor/aks"))
        .header("x-api-key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(aks.status(), 200);
    // (The API-key layer answers the router's fallback too: 401, not 404.)
    let unmatched = http.get(url("/no/such/path/8f3a9c")).send().await.unwrap();
    assert!(
        unmatched.status().is_client_error(),
        "{}",
        unmatched.status()
    );
    let favicon = http.get(url("/favicon.ico")).send().await.unwrap();
    assert_eq!(favicon.status(), 204, "the favicon needs no key");

    // The scrape: no key, the Prometheus text format, no-store.
    let response = http.get(url("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    assert_eq!(response.headers()["cache-control"], "no-store");
    let text = response.text().await.unwrap();
    let samples = parse(&text);
    assert!(!samples.is_empty());

    let requests = "http_server_request_duration_seconds_count";
    let me_ok = [
        ("http_request_method", "GET"),
        ("http_route", "/api/me"),
        ("http_response_status_code", "200"),
    ];
    assert_eq!(total(&samples, requests, &me_ok), 3.0, "{text}");
    let me_refused = [
        ("http_route", "/api/me"),
        ("http_response_status_code", "401"),
    ];
    assert_eq!(total(&samples, requests, &me_refused), 2.0, "{text}");
    assert_eq!(
        total(&samples, requests, &[("http_route", "/api/admin/accounts")]),
        1.0
    );
    assert_eq!(
        total(&samples, requests, &[("http_route", "_unmatched")]),
        1.0,
        "an unmatched path is one bounded label value"
    );
    assert!(
        !text.contains("8f3a9c") && !text.contains(&key),
        "a path or a key leaked into a label"
    );
    assert!(
        samples
            .iter()
            .any(|s| s.name == "http_server_request_duration_seconds"
                || s.name.starts_with("http_server_request_duration_seconds_")),
        "no duration histogram"
    );
    // The two keyless /api/me and the unmatched path (the API-key layer answers the fallback).
    assert_eq!(
        total(&samples, "dashboard_requests_rejected_total", &[]),
        3.0
    );
    // Only the scrape itself is in flight while it renders.
    assert_eq!(total(&samples, "http_server_active_requests", &[]), 1.0);
    // The pools the dashboard composes record under their pool.name: the Kubernetes session
    // pool made its sessions for the AKS card.
    let k8s = [("pool_name", "k8s-session")];
    let pool_series: Vec<&str> = samples
        .iter()
        .filter(|s| s.name.starts_with("pool_") && s.labels.contains_key("pool_name"))
        .map(|s| s.name.as_str())
        .collect();
    assert!(
        total(&samples, "pool_creations_total", &k8s) >= 1.0,
        "no k8s-session pool creations; pool series: {pool_series:?}"
    );
    assert!(
        text.contains("# TYPE pool_creations_total counter"),
        "{text}"
    );

    running.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}
