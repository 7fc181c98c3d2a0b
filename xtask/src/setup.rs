//! `cargo xtask setup`: install the local backends' tools under `target/tools` (idempotent).

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::shell::{root, step};

/// The npm package and major version testkit runs.
const AZURITE: &str = "azurite@3";

/// Where Azurite is installed; testkit looks in the same place.
pub(crate) fn azurite_dir() -> PathBuf {
    root().join("target").join("tools").join("azurite")
}

/// The `azurite-blob` entry point.
pub(crate) fn azurite_blob() -> PathBuf {
    azurite_dir()
        .join("node_modules")
        .join(".bin")
        .join("azurite-blob")
}

pub(crate) fn run(args: &[String]) -> Result<()> {
    let force = match args {
        [] => false,
        [flag] if flag == "--force" => true,
        _ => bail!("usage: cargo xtask setup [--force]"),
    };
    if force {
        let _ = std::fs::remove_dir_all(azurite_dir());
    }
    ensure_installed()
}

/// Install Azurite unless it is already there.
pub(crate) fn ensure_installed() -> Result<()> {
    let entry = azurite_blob();
    if entry.exists() {
        println!("==> azurite: already installed at {}", entry.display());
        return Ok(());
    }
    let node_works = Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|out| out.status.success());
    if !node_works {
        bail!(
            "node not found: Azurite runs on Node.js 20 or newer; install it with npm \
             (Debian: `apt-get install nodejs npm`), then run `cargo xtask setup`"
        );
    }
    let npm_works = Command::new("npm")
        .arg("--version")
        .output()
        .is_ok_and(|out| out.status.success());
    if !npm_works {
        bail!(
            "npm not found: install Node.js 20 or newer with npm (Debian: `apt-get install nodejs npm`), \
             then run `cargo xtask setup`"
        );
    }
    let dir = azurite_dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    step(
        &format!("npm install {AZURITE} into {}", dir.display()),
        Command::new("npm")
            .args([
                "install",
                "--no-audit",
                "--no-fund",
                "--loglevel=error",
                "--prefix",
            ])
            .arg(&dir)
            .arg(AZURITE),
    )?;
    if !entry.exists() {
        bail!(
            "npm finished but {} is missing: run `cargo xtask setup --force`",
            entry.display()
        );
    }
    Ok(())
}
