//! `cargo xtask it`: every test, including the suites that need live local backends.

use anyhow::{Result, bail};

use crate::shell::{cargo, step};

pub(crate) fn run(args: &[String]) -> Result<()> {
    let k8s = match args {
        [] => "local".to_string(),
        [flag, value] if flag == "--k8s" && (value == "local" || value == "kind") => value.clone(),
        _ => bail!("usage: cargo xtask it [--k8s local|kind]"),
    };
    if k8s == "kind" {
        crate::kind::check_available(crate::kind::unavailable())?;
        if !crate::kind::kubeconfig_path().exists() {
            bail!("no kind cluster: run `cargo xtask kind up` first");
        }
    }
    crate::setup::ensure_installed()?;
    run_suites(&k8s)
}

/// `cargo test --workspace` with the backend suites included. Suites marked
/// `#[ignore = "needs …: cargo xtask it"]` run here; a backend they need that is missing makes
/// them fail (testkit never skips). `TESTKIT_K8S` picks the cluster of the k8s contract suites
/// (`local`: testkit's in-process server; `kind`: the cluster at `TESTKIT_KUBECONFIG`).
pub(crate) fn run_suites(k8s: &str) -> Result<()> {
    let mut command = cargo();
    command
        .args([
            "test",
            "--workspace",
            "--locked",
            "--no-fail-fast",
            "--",
            "--include-ignored",
        ])
        .env("TESTKIT_REQUIRE_BACKENDS", "1")
        .env("TESTKIT_K8S", k8s)
        .env("TESTKIT_AZURITE_BIN", crate::setup::azurite_blob());
    if k8s == "kind" {
        command.env("TESTKIT_KUBECONFIG", crate::kind::kubeconfig_path());
    }
    step(
        &format!("cargo test --workspace (backend suites included, k8s: {k8s})"),
        &mut command,
    )
}
