//! `cargo xtask test`: everything CI checks, in order, stopping at the first failure: fmt,
//! clippy, docs, every test and backend suite, then a short fuzz run of every target.

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
    step(
        "cargo doc (warnings are errors)",
        cargo()
            .args(["doc", "--workspace", "--no-deps", "--locked"])
            .env("RUSTDOCFLAGS", "-D warnings"),
    )?;
    crate::it::run_suites("local")?;
    crate::fuzz::run_smoke(crate::fuzz::SMOKE_SECS)?;
    println!(
        "==> cargo xtask test: all steps passed in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
