//! `cargo xtask setup`: install the local backends' tools under `target/tools` (idempotent):
//! Azurite from npm, and cargo-fuzz from crates.io (for the fuzz smoke run and campaigns).

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::shell::{root, step};

/// The npm package and major version testkit runs.
const AZURITE: &str = "azurite@3";

/// The cargo-fuzz release installed for `cargo xtask fuzz` (and the smoke run in `test`).
const CARGO_FUZZ: (&str, &str) = ("cargo-fuzz", "0.13.2");

/// Where cargo-fuzz is installed (`<dir>/bin/cargo-fuzz`).
pub(crate) fn cargo_fuzz_dir() -> PathBuf {
    root().join("target").join("tools").join("cargo-fuzz")
}

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
        let _ = std::fs::remove_dir_all(cargo_fuzz_dir());
    }
    ensure_installed()?;
    ensure_cargo_fuzz()
}

/// Install cargo-fuzz under `target/tools` unless that version is already there.
pub(crate) fn ensure_cargo_fuzz() -> Result<()> {
    let (name, version) = CARGO_FUZZ;
    let bin = cargo_fuzz_dir().join("bin").join(name);
    let installed = Command::new(&bin)
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|out| {
            out.status.success() && String::from_utf8_lossy(&out.stdout).contains(version)
        });
    if installed {
        println!(
            "==> {name}: {version} already installed at {}",
            bin.display()
        );
        return Ok(());
    }
    step(
        &format!(
            "cargo install {name} {version} into {}",
            cargo_fuzz_dir().display()
        ),
        crate::shell::cargo()
            .args([
                "install",
                "--locked",
                "--quiet",
                "--version",
                version,
                "--root",
            ])
            .arg(cargo_fuzz_dir())
            .arg(name),
    )
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
