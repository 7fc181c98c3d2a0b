//! `cargo xtask test`: everything CI checks, in order, stopping at the first failure: fmt,
//! clippy, docs, every test and backend suite, a 2-minute soak of the dashboard, then a short
//! fuzz run of every target.

use std::time::Instant;

use anyhow::{Result, bail};

use crate::shell::{cargo, step};

pub(crate) fn run(args: &[String]) -> Result<()> {
    if let Some(extra) = args.first() {
        bail!("`cargo xtask test` takes no arguments (got `{extra}`)");
    }
    let started = Instant::now();
    crate::setup::ensure_installed()?;
    crate::setup::ensure_cargo_fuzz()?;
    step(
        "cargo fmt --check",
        cargo().args(["fmt", "--all", "--check"]),
    )?;
    step(
        "cargo clippy (warnings are errors)",
        cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--locked",
            "--",
            "-D",
            "warnings",
        ]),
    )?;
    // The library crates as a user who turns the default features off builds them (their
    // lean cores, `cargo xtask package`'s lean check): dead code behind a feature shows here.
    let mut lean = cargo();
    lean.args(["clippy", "--locked", "--lib", "--no-default-features"]);
    for (name, _) in crate::package::LEAN {
        lean.args(["-p", name]);
    }
    step(
        "cargo clippy, libraries without default features (warnings are errors)",
        lean.args(["--", "-D", "warnings"]),
    )?;
    step(
        "cargo doc (warnings are errors)",
        cargo()
            .args(["doc", "--workspace", "--no-deps", "--locked"])
            .env("RUSTDOCFLAGS", "-D warnings"),
    )?;
    // Issue #20: what ships builds for a user (the full verify is `cargo xtask package`).
    crate::package::run_quick()?;
    crate::it::run_suites("local")?;
    // Issue #21: the page in headless Chromium against `demo --serve` (the debug binary the
    // suites just built; ~40 s).
    crate::browser::run_suite(&crate::browser::Browser {
        build: false,
        screenshot_docs: false,
    })?;
    // Issue #24: flat under the page's polling. 2 minutes on the debug `demo` binary the
    // suites just built (no extra compile), failing on any failed request or if RSS drifts more
    // than 10 % after the warm-up.
    crate::soak::run_soak(&crate::soak::Soak {
        minutes: 2.0,
        release: false,
        max_drift: 0.10,
        build: false,
    })?;
    crate::fuzz::run_smoke(crate::fuzz::SMOKE_SECS)?;
    println!(
        "==> cargo xtask test: all steps passed in {:.1}s; target/ holds {:.1} GB",
        started.elapsed().as_secs_f64(),
        dir_bytes(&crate::shell::root().join("target")) as f64 / 1e9
    );
    Ok(())
}

/// Bytes of the files under `dir` (a CI machine once ran out of disk in this run: the figure
/// shows how close the next one comes). Unreadable entries count as empty.
fn dir_bytes(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.file_type() {
            Ok(kind) if kind.is_dir() => dir_bytes(&entry.path()),
            Ok(kind) if kind.is_file() => entry.metadata().map_or(0, |m| m.len()),
            _ => 0,
        })
        .sum()
}
