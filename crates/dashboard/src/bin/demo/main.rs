//! `cargo xtask demo`: start the local backends and the dashboard, drive UI-like polling
//! against it, and print what each behaviour cost — ours and the seeds' naive one side by side.
//!
//! Everything it starts (Azurite, the Kubernetes API test servers, the upstream, the
//! dashboard) is owned by the demo future: Ctrl-C drops that future, and with it every
//! fixture — testkit kills Azurite when its handle is dropped.

mod driver;
mod summary;

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use dashboard::local::{LocalStorage, SimulationOptions};
use dashboard::{MetricsRender, Mode};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

const USAGE: &str = "\
usage: demo [--naive | --pooled] [--ticks N] [--serve] [--latency-ms MIN-MAX] [--json PATH]
            [--evolve-secs N]

  (default)          run the load with our crates, then with the seeds' naive behaviours,
                     and print both side by side
  --pooled           only our crates
  --naive            only the naive behaviours
  --ticks N          polling ticks to drive (default 10)
  --serve            keep the dashboard up and print its URL (Ctrl-C stops everything)
  --latency-ms A-B   per-call latency of the simulated clusters (default 20-80; 0-0: none)
  --json PATH        also write the summary as JSON
  --evolve-secs N    let the simulated clusters evolve every N s (warmup progress, a node
                     going NotReady and back, jobs finishing); default 5 with --serve, else
                     off (0: off)
";

/// The parsed command line.
#[derive(Debug, Clone)]
pub(crate) struct Args {
    pub(crate) modes: Vec<Mode>,
    pub(crate) ticks: usize,
    pub(crate) serve: bool,
    pub(crate) latency_ms: (u64, u64),
    pub(crate) json: Option<PathBuf>,
    pub(crate) evolve_secs: Option<f64>,
}

fn parse(args: &[String]) -> Result<Args> {
    let mut parsed = Args {
        modes: vec![Mode::Pooled, Mode::Naive],
        ticks: 10,
        serve: false,
        latency_ms: (20, 80),
        json: None,
        evolve_secs: None,
    };
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .cloned()
                .with_context(|| format!("{name} needs a value\n\n{USAGE}"))
        };
        match arg.as_str() {
            "--naive" => parsed.modes = vec![Mode::Naive],
            "--pooled" => parsed.modes = vec![Mode::Pooled],
            "--serve" => parsed.serve = true,
            "--ticks" => {
                parsed.ticks = value("--ticks")?
                    .parse()
                    .context("--ticks takes a number")?;
            }
            "--latency-ms" => {
                let text = value("--latency-ms")?;
                let (min, max) = text
                    .split_once('-')
                    .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
                    .context("--latency-ms takes MIN-MAX, e.g. 20-80")?;
                if min > max {
                    bail!("--latency-ms: MIN must not exceed MAX");
                }
                parsed.latency_ms = (min, max);
            }
            "--json" => parsed.json = Some(value("--json")?.into()),
            "--evolve-secs" => {
                let secs: f64 = value("--evolve-secs")?
                    .parse()
                    .context("--evolve-secs takes a number of seconds")?;
                if !secs.is_finite() || !(0.0..=3600.0).contains(&secs) {
                    bail!("--evolve-secs takes 0 to 3600 seconds");
                }
                parsed.evolve_secs = Some(secs);
            }
            "-h" | "--help" => {
                print!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument `{other}`\n\n{USAGE}"),
        }
    }
    if parsed.serve && parsed.modes.len() > 1 {
        parsed.modes = vec![Mode::Pooled];
    }
    Ok(parsed)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let outcome = parse(&args).and_then(|args| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .context("starting the tokio runtime")?
            .block_on(run_until_interrupted(args))
    });
    if let Err(error) = outcome {
        eprintln!("demo: error: {error:#}");
        std::process::exit(1);
    }
}

async fn run_until_interrupted(args: Args) -> Result<()> {
    tokio::select! {
        outcome = run(args) => outcome,
        _ = tokio::signal::ctrl_c() => {
            // Dropping `run` dropped every fixture it owned: Azurite, servers, dashboard.
            eprintln!("\ndemo: interrupted; stopped Azurite, the test servers and the dashboard");
            Ok(())
        }
    }
}

/// The Prometheus exporter this binary installed (the library never installs one).
static PROMETHEUS: OnceLock<PrometheusHandle> = OnceLock::new();

/// Install the Prometheus recorder (once): every crate's series, and the dashboard's own, from
/// here on; histograms as Prometheus histograms with these bounds (seconds).
fn install_metrics() -> Result<()> {
    if PROMETHEUS.get().is_some() {
        return Ok(());
    }
    let handle = PrometheusBuilder::new()
        .with_recommended_naming(true)
        .set_buckets(&[
            0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ])
        .context("histogram buckets")?
        .install_recorder()
        .context("installing the Prometheus recorder")?;
    let _ = PROMETHEUS.set(handle);
    Ok(())
}

/// What `GET /metrics` renders: the installed exporter's text.
pub(crate) fn metrics_render() -> Option<MetricsRender> {
    let handle = PROMETHEUS.get()?.clone();
    Some(Arc::new(move || handle.render()))
}

async fn run(args: Args) -> Result<()> {
    dashboard::ensure_crypto_provider();
    install_metrics()?;
    if let Some(handle) = PROMETHEUS.get().cloned() {
        // The exporter's upkeep (draining histogram buckets) is the application's job.
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(5));
            loop {
                every.tick().await;
                handle.run_upkeep();
            }
        });
    }
    let started = Instant::now();
    println!("==> starting Azurite (HTTPS, OAuth)");
    let storage = LocalStorage::start()
        .await
        .context("Azurite did not start (run `cargo xtask setup`)")?;
    println!(
        "    Azurite on {} (pid {}) in {:.1}s",
        storage.azurite().endpoint(),
        storage.azurite().pid(),
        started.elapsed().as_secs_f64()
    );
    let evolve = match args.evolve_secs {
        Some(secs) if secs > 0.0 => Some(Duration::from_secs_f64(secs)),
        Some(_) => None,
        None if args.serve => Some(Duration::from_secs(5)),
        None => None,
    };
    let options = SimulationOptions::default()
        .latency_ms(args.latency_ms)
        .evolve_every(evolve);
    if args.serve {
        let mode = args.modes.first().copied().unwrap_or_default();
        return driver::serve(&storage, &options, mode).await;
    }
    let mut results = Vec::new();
    for mode in &args.modes {
        results.push(driver::drive(&storage, &options, *mode, args.ticks).await?);
    }
    println!();
    summary::print(&results);
    // The first run's scrape: taken before the next run added to the process-wide recorder.
    if let Some(first) = results.first() {
        summary::print_metrics_excerpt(first);
    }
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&results)?;
        std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))?;
    }
    println!(
        "\n==> demo finished in {:.1}s; Azurite and every test server stopped",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
