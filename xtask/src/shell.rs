//! Running commands from the repository root, with a step banner and timing.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};

/// The repository root (xtask lives in `<root>/xtask`).
pub(crate) fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask is one level below the root")
        .to_path_buf()
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
