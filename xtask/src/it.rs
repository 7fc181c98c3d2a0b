//! `cargo xtask it`: every test, including the suites that need live local backends.

use anyhow::{Result, bail};

use crate::shell::{cargo, step};

pub(crate) fn run(args: &[String]) -> Result<()> {
    let k8s = match args {
        [] => "local".to_string(),
        [flag, value] if flag == "--k8s" && (value == "local" || value == "kind") => value.clone(),
        _ => bail!("usage: cargo xtask it [--k8s local|kind]"),
    };
    crate::setup::ensure_installed()?;
    if k8s == "kind" {
        crate::kind::require_cluster()?;
    }
    run_suites(&k8s)
}

/// `cargo test --workspace` with the backend suites included. Suites marked
/// `#[ignore = "needs …: cargo xtask it"]` run here; `TESTKIT_REQUIRE_BACKENDS=1` makes testkit
/// fail loudly (never skip) when a backend it needs is missing.
pub(crate) fn run_suites(k8s: &str) -> Result<()> {
    step(
        &format!("cargo test --workspace (backend suites included, k8s: {k8s})"),
        cargo()
            .args(["test", "--workspace", "--locked", "--", "--include-ignored"])
            .env("TESTKIT_REQUIRE_BACKENDS", "1")
            .env("TESTKIT_K8S", k8s)
            .env("TESTKIT_AZURITE_BIN", crate::setup::azurite_blob()),
    )
}
