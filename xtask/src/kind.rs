//! `cargo xtask kind up|down`: a kind cluster for `cargo xtask it --k8s kind` (needs Docker).

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::shell::{root, step};

/// The cluster's name.
const CLUSTER: &str = "cloud-client-infra";

/// Where `kind up` writes the cluster's kubeconfig; testkit reads it under `--k8s kind`.
pub(crate) fn kubeconfig_path() -> PathBuf {
    root().join("target").join("kind").join("kubeconfig")
}

pub(crate) fn run(args: &[String]) -> Result<()> {
    match args.first().map(String::as_str) {
        Some("up") => up(),
        Some("down") => down(),
        _ => bail!("usage: cargo xtask kind up|down"),
    }
}

/// Fail with one clear line unless Docker and kind are usable.
fn require_docker() -> Result<()> {
    let kind = Command::new("kind")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !kind {
        bail!(
            "kind not found: install kind (https://kind.sigs.k8s.io) and Docker to use `--k8s kind`"
        );
    }
    let docker = Command::new("docker")
        .arg("info")
        .output()
        .is_ok_and(|o| o.status.success());
    if !docker {
        bail!(
            "no Docker engine: kind needs a running Docker daemon; this machine can only use `--k8s local`"
        );
    }
    Ok(())
}

fn up() -> Result<()> {
    require_docker()?;
    step(
        "kind create cluster",
        Command::new("kind").args(["create", "cluster", "--name", CLUSTER, "--wait", "120s"]),
    )?;
    let out = Command::new("kind")
        .args(["get", "kubeconfig", "--name", CLUSTER])
        .output()
        .context("running `kind get kubeconfig`")?;
    if !out.status.success() {
        bail!(
            "`kind get kubeconfig` failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let path = kubeconfig_path();
    std::fs::create_dir_all(path.parent().expect("has a parent"))?;
    std::fs::write(&path, &out.stdout).with_context(|| format!("writing {}", path.display()))?;
    println!("==> kubeconfig written to {}", path.display());
    Ok(())
}

fn down() -> Result<()> {
    require_docker()?;
    step(
        "kind delete cluster",
        Command::new("kind").args(["delete", "cluster", "--name", CLUSTER]),
    )
}

/// `it --k8s kind` needs a cluster made by `kind up`.
pub(crate) fn require_cluster() -> Result<()> {
    require_docker()?;
    if !kubeconfig_path().exists() {
        bail!("no kind cluster: run `cargo xtask kind up` first");
    }
    Ok(())
}
