//! Start one dashboard over fresh simulated clusters and drive UI-like polling against it.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use dashboard::local::{LocalStorage, Simulation, SimulationOptions};
use dashboard::{ADMIN_TOKEN_HEADER, AdminToken, Dashboard, Mode, Running};
use futures::future::join_all;
use serde_json::{Value, json};
use tokio::task::JoinSet;

use crate::summary::{ModeSummary, percentile};

/// Upstream limits of the demo: few slots and a short slot wait, so a burst of throttled
/// submissions shows whether retries hold their slot while they sleep.
const UPSTREAM_SLOTS: usize = 2;
const UPSTREAM_ACQUIRE_TIMEOUT_MS: u64 = 500;
/// Every third tick the user submits a burst of this many jobs.
const POST_BURST: usize = 3;

/// A running dashboard over its own simulation, with an account and key to poll with.
struct Stage {
    sim: Simulation,
    dashboard: Dashboard,
    running: Running,
    http: reqwest::Client,
    key: String,
}

async fn start(storage: &LocalStorage, options: &SimulationOptions, mode: Mode) -> Result<Stage> {
    let sim = Simulation::start(options)
        .await
        .context("starting the simulated clusters")?;
    let mut config = sim.dashboard_config(storage, mode)?;
    config.upstream.max_connections = UPSTREAM_SLOTS;
    config.upstream.acquire_timeout_ms = UPSTREAM_ACQUIRE_TIMEOUT_MS;
    let admin = AdminToken::new(format!("{:032x}", rand::random::<u128>()));
    config.admin_token = Some(admin.clone());
    let dashboard = Dashboard::new(config, dashboard::local::credential())?;
    if let Some(render) = crate::metrics_render() {
        dashboard.set_metrics_render(render);
    }
    dashboard
        .prepare()
        .await
        .context("creating the storage containers")?;
    let running = dashboard.serve().await?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(32)
        .build()
        .context("building the driver's HTTP client")?;
    let response = http
        .post(format!("{}/api/admin/accounts", running.url()))
        .header(ADMIN_TOKEN_HEADER, admin.expose())
        .header("content-type", "application/json")
        .body(json!({ "id": format!("demo-{}", mode.as_str()), "name": "Demo user" }).to_string())
        .send()
        .await
        .context("creating the demo account")?;
    if !response.status().is_success() {
        bail!(
            "creating the demo account failed: {} {}",
            response.status(),
            response.text().await.unwrap_or_default()
        );
    }
    let created: Value = serde_json::from_slice(&response.bytes().await?)?;
    let key = created["api_key"]
        .as_str()
        .context("the admin answer has no api_key")?
        .to_string();
    Ok(Stage {
        sim,
        dashboard,
        running,
        http,
        key,
    })
}

/// The GETs of one tick, like the page's components each polling their card: 15 fixed ones
/// plus 0–5 extra detail reads, so a tick is 15–20 parallel requests.
pub(crate) fn tick_paths(clusters: &[String], tick: usize) -> Vec<String> {
    let mut paths = vec![
        "/api/monitor/aks".to_string(),
        "/api/monitor/jobs".to_string(),
        "/api/monitor/storage".to_string(),
        "/api/blast/jobs".to_string(),
        "/api/me".to_string(),
        "/api/inspector?limit=20".to_string(),
    ];
    for cluster in clusters {
        paths.push(format!("/api/monitor/aks/{cluster}"));
        paths.push(format!("/api/monitor/jobs?cluster={cluster}"));
        paths.push(format!("/api/warmup/{cluster}"));
    }
    let extra = if clusters.is_empty() {
        0
    } else {
        (tick * 7 + 3) % 6
    };
    for i in 0..extra {
        let cluster = &clusters[(tick + i) % clusters.len()];
        paths.push(if i % 2 == 0 {
            format!("/api/monitor/aks/{cluster}")
        } else {
            format!("/api/warmup/{cluster}")
        });
    }
    paths
}

async fn get(stage: &Stage, path: &str) -> bool {
    let url = format!("{}{path}", stage.running.url());
    match stage
        .http
        .get(url)
        .header("x-api-key", &stage.key)
        .send()
        .await
    {
        Ok(response) => {
            let ok = response.status().is_success();
            // Read to the end: a tick is over when the page has its data.
            ok && response.bytes().await.is_ok()
        }
        Err(_) => false,
    }
}

fn progress(mode: Mode, done: usize, total: usize, last: Duration) {
    let width = 20;
    let filled = (done * width).checked_div(total).unwrap_or(width);
    let bar = format!("{}{}", "#".repeat(filled), "-".repeat(width - filled));
    let line = format!(
        "    {:<6} [{bar}] tick {done}/{total}  last {:>5} ms",
        mode.as_str(),
        last.as_millis()
    );
    let mut out = std::io::stdout();
    if out.is_terminal() {
        let _ = write!(out, "\r{line}");
        if done == total {
            let _ = writeln!(out);
        }
    } else {
        let _ = writeln!(out, "{line}");
    }
    let _ = out.flush();
}

/// Run `ticks` polling ticks (plus a burst of job submissions every third tick) against a
/// dashboard in `mode`, and summarise what it cost.
pub(crate) async fn drive(
    storage: &LocalStorage,
    options: &SimulationOptions,
    mode: Mode,
    ticks: usize,
) -> Result<ModeSummary> {
    println!(
        "==> {}: {} simulated clusters ({}-{} ms per call), a 429-prone upstream, the dashboard",
        mode.as_str(),
        options.clusters,
        options.latency_ms.0,
        options.latency_ms.1
    );
    let stage = start(storage, options, mode).await?;
    println!(
        "    dashboard on {}; account `demo-{}` created; {ticks} ticks",
        stage.running.url(),
        mode.as_str()
    );
    let clusters: Vec<String> = stage
        .sim
        .clusters
        .iter()
        .map(|c| c.config.name.clone())
        .collect();
    let base = stage.running.url();
    let mut posts = JoinSet::new();
    let (mut tick_ms, mut requests, mut failed) = (Vec::new(), Vec::new(), 0usize);
    for tick in 0..ticks {
        if tick % 3 == 1 {
            for n in 0..POST_BURST {
                let (http, key, url) = (stage.http.clone(), stage.key.clone(), base.clone());
                let cluster = clusters.get(n % clusters.len().max(1));
                let body = json!({ "cluster": cluster, "database": "orders", "tick": tick });
                posts.spawn(async move {
                    let started = Instant::now();
                    let status = match http
                        .post(format!("{url}/api/blast/jobs"))
                        .header("x-api-key", key)
                        .header("content-type", "application/json")
                        .body(body.to_string())
                        .send()
                        .await
                    {
                        Ok(response) => response.status().as_u16(),
                        Err(_) => 0,
                    };
                    (started.elapsed(), status)
                });
            }
        }
        let paths = tick_paths(&clusters, tick);
        let started = Instant::now();
        let outcomes = join_all(paths.iter().map(|path| get(&stage, path))).await;
        let elapsed = started.elapsed();
        failed += outcomes.iter().filter(|ok| !**ok).count();
        requests.push(paths.len());
        tick_ms.push(elapsed.as_secs_f64() * 1000.0);
        progress(mode, tick + 1, ticks, elapsed);
    }
    let mut post_ms = Vec::new();
    let mut post_statuses = Vec::new();
    while let Some(done) = posts.join_next().await {
        let (elapsed, status) = done.context("a job submission task failed")?;
        post_ms.push(elapsed.as_secs_f64() * 1000.0);
        post_statuses.push(status);
    }
    let stats = stage.dashboard.stats();
    let posts_in_inspector = stage
        .dashboard
        .inspector()
        .entries()
        .iter()
        .filter(|e| e.method == "POST" && e.path == "/api/blast/jobs")
        .count();
    // What a Prometheus server would scrape, over HTTP like one (no key: like a health check).
    let metrics_excerpt = match stage.http.get(format!("{base}/metrics")).send().await {
        Ok(response) if response.status().is_success() => {
            crate::summary::excerpt(&response.text().await.unwrap_or_default())
        }
        _ => Vec::new(),
    };
    let summary = ModeSummary {
        mode: mode.as_str(),
        ticks,
        requests_per_tick: (
            requests.iter().copied().min().unwrap_or(0),
            requests.iter().copied().max().unwrap_or(0),
        ),
        failed_gets: failed,
        tick_p50_ms: percentile(&tick_ms, 50.0),
        tick_p95_ms: percentile(&tick_ms, 95.0),
        posts_sent: post_ms.len(),
        posts_accepted: post_statuses.iter().filter(|s| **s == 202).count(),
        post_p50_ms: percentile(&post_ms, 50.0),
        post_max_ms: percentile(&post_ms, 100.0),
        clusters: clusters.len(),
        session_keys_per_cluster: 1,
        kube_calls: stage.sim.kube_calls(),
        arm_calls: stage.sim.arm_calls(),
        sessions_created: stats.clusters.sessions_created,
        tls_connections: stage.sim.tls_connections(),
        blob_clients: stats.storage.clients_created,
        token_fetches: stats.token_fetches,
        upstream_requests: stage.sim.upstream.stats().requests_seen,
        retries: stats.upstream.retries,
        pool_timeouts: stats.upstream.pool_timeouts,
        key_store_reads: stats.key_store_loads,
        inspector_entries: stats.inspector_entries,
        posts_in_inspector,
        middleware_buffered_bytes: stats.middleware_buffered_bytes,
        metrics_excerpt,
    };
    stage.running.stop().await;
    Ok(summary)
}

/// `--serve`: start everything, create an account, print the URL, wait for Ctrl-C.
pub(crate) async fn serve(
    storage: &LocalStorage,
    options: &SimulationOptions,
    mode: Mode,
) -> Result<()> {
    let stage = start(storage, options, mode).await?;
    println!(
        "==> dashboard ({}) serving; open in a browser:\n\n    {}/#key={}\n\n    \
         (the key is in the URL fragment, which the browser never sends; the page keeps it in \
         localStorage). Metrics: {}/metrics. Press Ctrl-C to stop everything.",
        mode.as_str(),
        stage.running.url(),
        stage.key,
        stage.running.url()
    );
    std::future::pending::<()>().await;
    drop(stage);
    Ok(())
}
