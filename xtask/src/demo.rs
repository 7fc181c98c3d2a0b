//! `cargo xtask demo [args]`: install Azurite if needed, then build and run the dashboard demo
//! (`crates/dashboard`, binary `demo`), which does the orchestration in Rust.
//!
//! A thin runner on purpose: xtask keeps its two dependencies, and the demo binary owns every
//! process it starts (Ctrl-C reaches it too, and it drops — and so stops — all of them).

use anyhow::Result;

use crate::shell::{cargo, step};

/// The profile the demo is built with; see `PROFILE_ARGS`.
const PROFILE: &str = "release";

/// `--release`: the demo measures latency, and a debug build's TLS and JSON work adds hundreds
/// of milliseconds per tick that are not the behaviour under comparison.
const PROFILE_ARGS: &[&str] = &["--release"];

pub(crate) fn run(args: &[String]) -> Result<()> {
    crate::setup::ensure_installed()?;
    let mut command = cargo();
    command
        .args(["run", "--locked"])
        .args(PROFILE_ARGS)
        .args(["-p", "dashboard", "--bin", "demo", "--"])
        .args(args)
        .env("TESTKIT_AZURITE_BIN", crate::setup::azurite_blob());
    step(
        &format!("cargo run ({PROFILE}) -p dashboard --bin demo"),
        &mut command,
    )
}
