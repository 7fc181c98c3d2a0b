//! `cargo xtask kind up|down`: a kind cluster with the contract fixtures, for
//! `cargo xtask it --k8s kind` (needs Docker).
//!
//! Without Docker (or kind, or kubectl) every kind command fails with one line saying why: a
//! command asked to bring a cluster up must not report success having done nothing, or a
//! script running `kind up` then `it --k8s kind` would believe a cluster is there. Only
//! `cargo xtask test`, which never asks for kind, runs without it.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

use crate::shell::{root, step};

/// The cluster's name.
const CLUSTER: &str = "cloud-client-infra";
/// The image the fixture jobs run; pulled on the host and loaded into the cluster.
const IMAGE: &str = "busybox:1.36";
/// The namespace of the fixtures (testkit's `SAMPLE_NAMESPACE`).
const NAMESPACE: &str = "testkit";
/// How many `warmup-<i>` jobs to create (testkit's `Fixtures::sample` has 3).
const WARMUP_JOBS: usize = 3;

/// Where `kind up` writes the cluster's kubeconfig; `it --k8s kind` hands it to the suites.
pub(crate) fn kubeconfig_path() -> PathBuf {
    root().join("target").join("kind").join("kubeconfig")
}

pub(crate) fn run(args: &[String]) -> Result<()> {
    let up = parse(args)?;
    check_available(unavailable())?;
    if up { self::up() } else { down() }
}

/// `up` → true, `down` → false.
fn parse(args: &[String]) -> Result<bool> {
    match args {
        [cmd] if cmd == "up" => Ok(true),
        [cmd] if cmd == "down" => Ok(false),
        _ => bail!("usage: cargo xtask kind up|down"),
    }
}

/// An error with the one-line reason when kind cannot run here: a kind command never succeeds
/// having done nothing.
pub(crate) fn check_available(unavailable: Option<String>) -> Result<()> {
    match unavailable {
        Some(reason) => bail!("kind cannot run here: {reason}"),
        None => Ok(()),
    }
}

fn works(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Why kind cannot run here, if it cannot.
pub(crate) fn unavailable() -> Option<String> {
    if !works("docker", &["info"]) {
        return Some(
            "no Docker engine (`docker info` failed): kind needs one; this machine can only use `--k8s local`".into(),
        );
    }
    if !works("kind", &["version"]) {
        return Some(
            "kind not found: install kind (https://kind.sigs.k8s.io) to use `--k8s kind`".into(),
        );
    }
    if !works("kubectl", &["version", "--client"]) {
        return Some("kubectl not found: install kubectl to load the kind fixtures".into());
    }
    None
}

fn kubectl() -> Command {
    let mut command = Command::new("kubectl");
    command.arg("--kubeconfig").arg(kubeconfig_path());
    command
}

fn up() -> Result<()> {
    let exists = Command::new("kind")
        .args(["get", "clusters"])
        .output()
        .is_ok_and(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l == CLUSTER)
        });
    if !exists {
        step(
            "kind create cluster",
            Command::new("kind").args(["create", "cluster", "--name", CLUSTER, "--wait", "120s"]),
        )?;
    }
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
    let dir = path.parent().context("the kubeconfig path has a parent")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(&path, &out.stdout).with_context(|| format!("writing {}", path.display()))?;
    println!("==> kubeconfig written to {}", path.display());
    load_fixtures()
}

/// The fixtures: namespace, a config map, and `warmup-<i>` jobs (labels `app=warmup`) whose
/// pods log `warmup-<i>: step 1`, `… step 2`, `… done` — what testkit's sample fixtures serve.
fn manifest() -> String {
    let mut docs = vec![
        format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {NAMESPACE}\n"),
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: warmup-config\n  namespace: {NAMESPACE}\ndata:\n  targets: db-0,db-1\n"
        ),
    ];
    for i in 0..WARMUP_JOBS {
        let job = format!("warmup-{i}");
        docs.push(format!(
            r#"apiVersion: batch/v1
kind: Job
metadata:
  name: {job}
  namespace: {NAMESPACE}
  labels: {{app: warmup}}
spec:
  backoffLimit: 0
  template:
    metadata:
      labels: {{app: warmup}}
    spec:
      restartPolicy: Never
      containers:
        - name: main
          image: {IMAGE}
          imagePullPolicy: IfNotPresent
          command: ["sh", "-c", "echo '{job}: step 1'; echo '{job}: step 2'; echo '{job}: done'"]
"#
        ));
    }
    docs.join("---\n")
}

fn load_fixtures() -> Result<()> {
    step("docker pull", Command::new("docker").args(["pull", IMAGE]))?;
    step(
        "kind load docker-image",
        Command::new("kind").args(["load", "docker-image", IMAGE, "--name", CLUSTER]),
    )?;
    let path = root().join("target").join("kind").join("fixtures.yaml");
    std::fs::write(&path, manifest()).with_context(|| format!("writing {}", path.display()))?;
    step(
        "kubectl apply fixtures",
        kubectl().arg("apply").arg("-f").arg(&path),
    )?;
    step(
        "kubectl wait for the warmup jobs",
        kubectl().args([
            "wait",
            "--for=condition=complete",
            "job",
            "-l",
            "app=warmup",
            "-n",
            NAMESPACE,
            "--timeout=180s",
        ]),
    )
}

fn down() -> Result<()> {
    step(
        "kind delete cluster",
        Command::new("kind").args(["delete", "cluster", "--name", CLUSTER]),
    )?;
    let _ = std::fs::remove_file(kubeconfig_path());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_has_the_namespace_and_labelled_jobs() {
        let m = manifest();
        assert!(m.contains("kind: Namespace\nmetadata:\n  name: testkit"));
        assert_eq!(m.matches("kind: Job").count(), WARMUP_JOBS);
        assert!(m.contains("echo 'warmup-2: done'"));
        assert_eq!(m.matches("labels: {app: warmup}").count(), 2 * WARMUP_JOBS);
    }

    // Issue #16 behaviour 8: asked explicitly for kind on a machine that cannot run it, a kind
    // command fails with the one-line reason; it never reports a skip as success.
    #[test]
    fn kind_commands_fail_when_kind_cannot_run() {
        assert!(parse(&["up".into()]).unwrap());
        assert!(!parse(&["down".into()]).unwrap());
        assert!(parse(&["sideways".into()]).is_err());
        let error = check_available(Some("no Docker engine".into())).unwrap_err();
        assert_eq!(error.to_string(), "kind cannot run here: no Docker engine");
        assert!(check_available(None).is_ok());
    }
}
