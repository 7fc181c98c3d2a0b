//! `cargo xtask setup`: install the local backends' tools under `target/tools` (idempotent):
//! Azurite from npm, cargo-fuzz from crates.io (for the fuzz smoke run and campaigns), and the
//! browser suite's Playwright (`playwright-core` from npm, no browser download) and Chromium
//! (Debian's `chromium` package, installed with apt-get when running as root on Debian).

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::shell::{root, step};

/// The npm package and major version testkit runs.
const AZURITE: &str = "azurite@3";

/// The cargo-fuzz release installed for `cargo xtask fuzz` (and the smoke run in `test`).
const CARGO_FUZZ: (&str, &str) = ("cargo-fuzz", "0.13.2");

/// The npm package the browser suite drives Chromium with (no bundled browser download).
const PLAYWRIGHT: &str = "playwright-core@1";

/// The Chromium the browser suite drives (Debian's `chromium` package).
pub(crate) const CHROMIUM: &str = "/usr/bin/chromium";

/// Where cargo-fuzz is installed (`<dir>/bin/cargo-fuzz`).
pub(crate) fn cargo_fuzz_dir() -> PathBuf {
    root().join("target").join("tools").join("cargo-fuzz")
}

/// Where Azurite is installed; testkit looks in the same place.
pub(crate) fn azurite_dir() -> PathBuf {
    root().join("target").join("tools").join("azurite")
}

/// Where `playwright-core` is installed (`<dir>/node_modules/playwright-core`).
pub(crate) fn playwright_dir() -> PathBuf {
    root().join("target").join("tools").join("playwright")
}

/// The `playwright-core` module the browser suite `require`s.
pub(crate) fn playwright_module() -> PathBuf {
    playwright_dir()
        .join("node_modules")
        .join("playwright-core")
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
        let _ = std::fs::remove_dir_all(playwright_dir());
    }
    ensure_installed()?;
    ensure_cargo_fuzz()?;
    ensure_browser()
}

/// Make sure the browser suite can run: Chromium at [`CHROMIUM`] (installed with `apt-get`
/// when missing, on Debian as root — CI's case — else an error naming the command) and
/// `playwright-core` under `target/tools/playwright`.
pub(crate) fn ensure_browser() -> Result<()> {
    ensure_chromium()?;
    ensure_playwright()
}

fn chromium_works() -> bool {
    Command::new(CHROMIUM)
        .arg("--version")
        .output()
        .is_ok_and(|out| out.status.success())
}

fn apt_install_chromium() -> Command {
    let mut command = Command::new("apt-get");
    command
        .args(["install", "-y", "--no-install-recommends", "chromium"])
        .env("DEBIAN_FRONTEND", "noninteractive");
    command
}

fn ensure_chromium() -> Result<()> {
    if chromium_works() {
        println!("==> chromium: already installed at {CHROMIUM}");
        return Ok(());
    }
    let debian = std::path::Path::new("/etc/debian_version").exists();
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0");
    if !(debian && root) {
        bail!(
            "Chromium not found at {CHROMIUM}: the browser suite drives Debian's Chromium. \
             Install it with `sudo apt-get install -y chromium` (Debian/Ubuntu), then run \
             `cargo xtask setup`"
        );
    }
    let name = "apt-get install -y chromium (the browser suite's browser)";
    if step(name, &mut apt_install_chromium()).is_err() {
        // A fresh image has no package lists yet.
        step("apt-get update", Command::new("apt-get").arg("update"))?;
        step(name, &mut apt_install_chromium())?;
    }
    if !chromium_works() {
        bail!("apt-get installed chromium but `{CHROMIUM} --version` fails");
    }
    Ok(())
}

fn ensure_playwright() -> Result<()> {
    let module = playwright_module();
    if module.join("package.json").exists() {
        println!(
            "==> playwright-core: already installed at {}",
            module.display()
        );
        return Ok(());
    }
    require_node()?;
    let dir = playwright_dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    step(
        &format!("npm install {PLAYWRIGHT} into {}", dir.display()),
        Command::new("npm")
            .args([
                "install",
                "--no-audit",
                "--no-fund",
                "--loglevel=error",
                "--prefix",
            ])
            .arg(&dir)
            .arg(PLAYWRIGHT),
    )?;
    if !module.join("package.json").exists() {
        bail!(
            "npm finished but {} is missing: run `cargo xtask setup --force`",
            module.display()
        );
    }
    Ok(())
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
    require_node()?;
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

/// Node.js and npm (Azurite and Playwright are npm packages).
fn require_node() -> Result<()> {
    let node_works = Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|out| out.status.success());
    if !node_works {
        bail!(
            "node not found: Azurite and Playwright run on Node.js 20 or newer; install it with npm \
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
    Ok(())
}
