//! `cargo xtask demo`: start the local backends and the dashboard, drive UI-like polling
//! against it, and print what each behaviour cost — ours and the seeds' naive one side by side.
//!
//! Everything it starts (Azurite, the Kubernetes API test servers, the upstream, the
//! dashboard) is owned by the demo future: Ctrl-C drops that future, and with it every
//! fixture — testkit kills Azurite when its handle is dropped.

mod driver;
mod summary;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use dashboard::Mode;
use dashboard::local::{LocalStorage, SimulationOptions};

const USAGE: &str = "\
usage: demo [--naive | --pooled] [--ticks N] [--serve] [--latency-ms MIN-MAX] [--json PATH]

  (default)          run the load with our crates, then with the seeds' naive behaviours,
                     and print both side by side
  --pooled           only our crates
  --naive            only the naive behaviours
  --ticks N          polling ticks to drive (default 10)
  --serve            keep the dashboard up and print its URL (Ctrl-C stops everything)
  --latency-ms A-B   per-call latency of the simulated clusters (default 20-80; 0-0: none)
  --json PATH        also write the summary as JSON
";

/// The parsed command line.
#[derive(Debug, Clone)]
pub(crate) struct Args {
    pub(crate) modes: Vec<Mode>,
    pub(crate) ticks: usize,
    pub(crate) serve: bool,
    pub(crate) latency_ms: (u64, u64),
    pub(crate) json: Option<PathBuf>,
}

fn parse(args: &[String]) -> Result<Args> {
    let mut parsed = Args {
        modes: vec![Mode::Pooled, Mode::Naive],
        ticks: 10,
        serve: false,
        latency_ms: (20, 80),
        json: None,
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

async fn run(args: Args) -> Result<()> {
    dashboard::ensure_crypto_provider();
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
    let options = SimulationOptions::default().latency_ms(args.latency_ms);
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
