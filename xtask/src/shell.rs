//! Running commands from the repository root, with a step banner and timing.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};

/// The repository root (xtask lives in `<root>/xtask`).
///
/// `cargo run` sets `CARGO_MANIFEST_DIR` for the process it starts, so the runtime value is
/// preferred: a binary built from another checkout sharing the target dir still finds this one.
pub(crate) fn root() -> PathBuf {
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    manifest_dir
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or(manifest_dir)
}

/// `cargo` as invoked by `cargo xtask` (respects the pinned toolchain).
pub(crate) fn cargo() -> Command {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command.current_dir(root());
    command
}

/// Run `command` as a named step: print a banner, run it with inherited stdio, print the time,
/// and fail with the step's name if it fails.
pub(crate) fn step(name: &str, command: &mut Command) -> Result<()> {
    println!("==> {name}");
    let started = Instant::now();
    let status = command
        .status()
        .with_context(|| format!("could not start `{name}`"))?;
    let secs = started.elapsed().as_secs_f64();
    if !status.success() {
        bail!("step `{name}` failed after {secs:.1}s ({status})");
    }
    println!("==> {name}: ok in {secs:.1}s");
    Ok(())
}
