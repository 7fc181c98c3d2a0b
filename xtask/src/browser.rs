//! `cargo xtask browser [--screenshot-docs]`: the dashboard page in a real browser (issue #21).
//!
//! Starts `demo --serve` (Azurite, the simulated clusters evolving every second, the upstream,
//! the dashboard), then runs `crates/dashboard/browser/suite.cjs` with Node: Playwright
//! (`playwright-core`, installed by `cargo xtask setup` under `target/tools/playwright`) driving
//! Debian's Chromium (`/usr/bin/chromium`). Screenshots go to `target/browser/`;
//! `--screenshot-docs` also copies the desktop one to `docs/dashboard.png`, the picture
//! docs/dashboard.md shows.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::shell::{cargo, root, step};

/// The suite's own bound is 120 s; this one catches a Node process that never exits.
const SUITE_TIMEOUT: Duration = Duration::from_secs(180);
/// `demo --serve` prints its URL after Azurite and the servers started.
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// Options of one run.
#[derive(Debug, Clone)]
pub(crate) struct Browser {
    /// Build the debug demo first; `false` uses the binary `cargo test --workspace` built.
    pub(crate) build: bool,
    /// Copy the desktop screenshot to docs/dashboard.png.
    pub(crate) screenshot_docs: bool,
}

pub(crate) fn run(args: &[String]) -> Result<()> {
    let mut browser = Browser {
        build: true,
        screenshot_docs: false,
    };
    for arg in args {
        match arg.as_str() {
            "--screenshot-docs" => browser.screenshot_docs = true,
            other => {
                bail!("unknown argument `{other}`\nusage: cargo xtask browser [--screenshot-docs]")
            }
        }
    }
    crate::setup::ensure_installed()?;
    run_suite(&browser)
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
}

pub(crate) fn run_suite(browser: &Browser) -> Result<()> {
    crate::setup::ensure_browser()?;
    if browser.build {
        step(
            "cargo build -p dashboard --bin demo (for the browser suite)",
            cargo().args(["build", "--locked", "-p", "dashboard", "--bin", "demo"]),
        )?;
    }
    let binary = target_dir().join("debug").join("demo");
    let out = target_dir().join("browser");
    let _ = std::fs::remove_dir_all(&out);
    println!("==> browser suite: Chromium + Playwright against `demo --serve`");
    let started = Instant::now();
    let mut demo = Command::new(&binary)
        .args([
            "--serve",
            "--pooled",
            "--latency-ms",
            "5-20",
            "--evolve-secs",
            "1",
        ])
        .env("TESTKIT_AZURITE_BIN", crate::setup::azurite_blob())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| {
            format!(
                "starting {} (build it: cargo build -p dashboard --bin demo)",
                binary.display()
            )
        })?;
    let outcome = drive(&mut demo, &out);
    stop(&mut demo);
    outcome?;
    println!(
        "==> browser suite: ok in {:.1}s; screenshots in {}",
        started.elapsed().as_secs_f64(),
        out.display()
    );
    if browser.screenshot_docs {
        let docs = root().join("docs").join("dashboard.png");
        std::fs::copy(out.join("desktop.png"), &docs)
            .with_context(|| format!("copying the screenshot to {}", docs.display()))?;
        println!("==> wrote {}", docs.display());
    }
    Ok(())
}

fn drive(demo: &mut Child, out: &std::path::Path) -> Result<()> {
    let stdout = demo.stdout.take().context("the demo's stdout")?;
    let (found, url) = std::sync::mpsc::channel();
    // Read the URL line, then keep draining so the demo never blocks on a full pipe.
    thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if !sent && let Some((base, key)) = line.trim().split_once("/#key=") {
                let _ = found.send((base.to_string(), key.to_string()));
                sent = true;
            }
        }
    });
    let (base, key) = url
        .recv_timeout(START_TIMEOUT)
        .context("`demo --serve` printed no URL (did it fail to start? see above)")?;
    println!("    dashboard at {base}");
    let mut node = Command::new("node")
        .arg(root().join("crates/dashboard/browser/suite.cjs"))
        .env("DASHBOARD_URL", &base)
        .env("DASHBOARD_KEY", &key)
        .env("PLAYWRIGHT_CORE", crate::setup::playwright_module())
        .env("CHROMIUM", crate::setup::CHROMIUM)
        .env("BROWSER_OUT", out)
        .spawn()
        .context("starting node (install Node.js 20+: `apt-get install nodejs npm`)")?;
    let deadline = Instant::now() + SUITE_TIMEOUT;
    loop {
        if let Some(status) = node.try_wait()? {
            if !status.success() {
                bail!(
                    "the browser suite failed ({status}); screenshots in {}",
                    out.display()
                );
            }
            return Ok(());
        }
        if Instant::now() > deadline {
            let _ = node.kill();
            let _ = node.wait();
            bail!(
                "the browser suite did not finish within {} s",
                SUITE_TIMEOUT.as_secs()
            );
        }
        thread::sleep(Duration::from_millis(200));
    }
}

/// Ask the demo to stop (SIGINT: it drops Azurite and the servers), then make sure.
fn stop(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
}
