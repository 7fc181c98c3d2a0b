//! `cargo xtask package` and `cargo xtask check-latest`: the crates as a user gets them.
//!
//! `package` packages the eight library crates together with verification (each one compiled
//! from its `.crate`, as a user would build it) after the listing check; `cargo xtask test`
//! runs the cheap form ([`check_listing`] and `cargo package --no-verify`). `check-latest`
//! builds and lints a copy of the workspace after `cargo update`, so a warning or a break from
//! the newest semver-compatible dependencies shows up before a user's fresh resolve does.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::shell::{cargo, root, step};

/// The crates users depend on, in dependency order.
pub(crate) const LIBRARY_CRATES: [&str; 8] = [
    "pool-core",
    "token-refresh",
    "retry-transport",
    "blob-pool",
    "k8s-session",
    "warmup-fanout",
    "request-inspector",
    "apikey-cache",
];

/// Every packaged file must be one of these (relative to the crate): what compiles for a user.
/// Tests and benches are not shipped: they use `testkit`, which is not published.
fn allowed(path: &str) -> bool {
    matches!(
        path,
        "Cargo.toml"
            | "Cargo.toml.orig"
            | "Cargo.lock"
            | "README.md"
            | "LICENSE-MIT"
            | "LICENSE-APACHE"
            | ".cargo_vcs_info.json"
    ) || path.starts_with("src/")
        || path.starts_with("examples/")
}

/// Shipped Rust code must not name an unpublished crate.
const UNPUBLISHED: [&str; 3] = ["testkit", "integration_tests", "dashboard"];

pub(crate) fn run_package(args: &[String]) -> Result<()> {
    match args {
        [] => {}
        [flag] if flag == "--no-verify" => return run_quick(),
        [extra, ..] => bail!("usage: cargo xtask package [--no-verify] (got `{extra}`)"),
    }
    check_listing()?;
    check_lean()?;
    step(
        "cargo package (the library crates, verified)",
        &mut package_command(&["--locked", "--allow-dirty"]),
    )
}

/// The packaging step of `cargo xtask test`: the listing and lean-features checks, then
/// `--no-verify`.
pub(crate) fn run_quick() -> Result<()> {
    check_listing()?;
    check_lean()?;
    step(
        "cargo package --no-verify (the library crates)",
        &mut package_command(&["--no-verify", "--locked", "--allow-dirty"]),
    )
}

fn package_command(extra: &[&str]) -> Command {
    let mut command = cargo();
    command.arg("package").args(extra);
    for name in LIBRARY_CRATES {
        command.args(["-p", name]);
    }
    command
}

/// `cargo package --list` for every library crate: only allowed files, a README and both
/// licences, and no shipped Rust file naming an unpublished crate.
pub(crate) fn check_listing() -> Result<()> {
    println!("==> package listing check");
    let mut problems = Vec::new();
    for name in LIBRARY_CRATES {
        let output = cargo()
            .args(["package", "--list", "--allow-dirty", "-p", name])
            .output()
            .with_context(|| format!("could not run `cargo package --list -p {name}`"))?;
        if !output.status.success() {
            bail!(
                "`cargo package --list -p {name}` failed:\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let listing = String::from_utf8_lossy(&output.stdout);
        let files: Vec<&str> = listing.lines().filter(|l| !l.is_empty()).collect();
        for required in ["README.md", "LICENSE-MIT", "LICENSE-APACHE"] {
            if !files.contains(&required) {
                problems.push(format!("{name}: {required} is not packaged"));
            }
        }
        let dir = root().join("crates").join(name);
        for file in &files {
            if !allowed(file) {
                problems.push(format!(
                    "{name}: ships {file} (only src/, examples/, README and licences build for a user)"
                ));
            } else if file.ends_with(".rs") {
                let text = std::fs::read_to_string(dir.join(file))
                    .with_context(|| format!("reading {name}/{file}"))?;
                for crate_name in UNPUBLISHED {
                    if names_crate(&text, crate_name) {
                        problems.push(format!(
                            "{name}: {file} uses `{crate_name}`, which is not published"
                        ));
                    }
                }
            }
        }
        println!("    {name}: {} files", files.len());
    }
    if !problems.is_empty() {
        bail!("package listing check failed:\n  {}", problems.join("\n  "));
    }
    println!("==> package listing check: ok");
    Ok(())
}

/// What each crate must not pull without its default features (its core; `metrics` is a
/// default feature everywhere), and what no crate pulls with them: ring (one crypto provider,
/// aws-lc-rs, is compiled by default).
pub(crate) const LEAN: [(&str, &[&str]); 8] = [
    (
        "pool-core",
        &["reqwest", "hyper", "kube", "azure_core", "axum", "metrics"],
    ),
    (
        "token-refresh",
        &["azure_core", "reqwest", "hyper", "metrics"],
    ),
    (
        "retry-transport",
        &[
            "azure_core",
            "token-refresh",
            "aws-lc-rs",
            "ring",
            "metrics",
        ],
    ),
    ("blob-pool", &["aws-lc-rs", "ring", "metrics"]),
    ("k8s-session", &["aws-lc-rs", "ring", "metrics"]),
    (
        "warmup-fanout",
        &[
            "rustls",
            "aws-lc-rs",
            "ring",
            "reqwest",
            "azure_core",
            "metrics",
        ],
    ),
    (
        "request-inspector",
        &["axum", "hyper", "reqwest", "metrics"],
    ),
    (
        "apikey-cache",
        &[
            "azure_core",
            "blob-pool",
            "reqwest",
            "aws-lc-rs",
            "ring",
            "metrics",
        ],
    ),
];

/// `cargo tree -e normal` per crate: without default features, none of its [`LEAN`] crates;
/// with them, no ring.
pub(crate) fn check_lean() -> Result<()> {
    println!("==> lean features check");
    let mut problems = Vec::new();
    for (name, forbidden) in LEAN {
        let lean = tree(name, true)?;
        for dep in forbidden {
            if lean.iter().any(|pulled| pulled == dep) {
                problems.push(format!("{name} --no-default-features pulls {dep}"));
            }
        }
        let full = tree(name, false)?;
        if full.iter().any(|pulled| pulled == "ring") {
            problems.push(format!(
                "{name} (default features) compiles ring beside aws-lc-rs"
            ));
        }
        println!(
            "    {name}: {} crates, {} without default features",
            full.len(),
            lean.len()
        );
    }
    if !problems.is_empty() {
        bail!("lean features check failed:\n  {}", problems.join("\n  "));
    }
    println!("==> lean features check: ok");
    Ok(())
}

/// The names of the crates `name` pulls (itself included), deduplicated.
fn tree(name: &str, no_default: bool) -> Result<Vec<String>> {
    let mut command = cargo();
    command.args([
        "tree", "--locked", "-e", "normal", "--prefix", "none", "--format", "{p}", "-p", name,
    ]);
    if no_default {
        command.arg("--no-default-features");
    }
    let output = command
        .output()
        .with_context(|| format!("could not run `cargo tree -p {name}`"))?;
    if !output.status.success() {
        bail!(
            "`cargo tree -p {name}` failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let mut names: Vec<String> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next().map(str::to_string))
        .collect();
    names.sort();
    names.dedup();
    Ok(names)
}

/// Whether Rust source `text` names `crate_name` as a path root (`use x::`, `x::`, `extern crate x`).
fn names_crate(text: &str, crate_name: &str) -> bool {
    text.lines().any(|line| {
        let code = line.split("//").next().unwrap_or("");
        code.match_indices(crate_name).any(|(at, _)| {
            let before = code[..at].chars().next_back();
            let after = &code[at + crate_name.len()..];
            !before.is_some_and(|c| c.is_alphanumeric() || c == '_')
                && (after.starts_with("::") || code.trim_start().starts_with("extern crate"))
        })
    })
}

/// `cargo xtask check-latest`: copy the workspace (tracked and new files, no `target/`) to a
/// temp dir, `cargo update` there, then clippy every target with warnings as errors, in
/// `target/check-latest` (kept between runs, so a re-run is incremental). The committed lock
/// is never touched; CI keeps using it.
pub(crate) fn run_check_latest(args: &[String]) -> Result<()> {
    if let Some(extra) = args.first() {
        bail!("`cargo xtask check-latest` takes no arguments (got `{extra}`)");
    }
    let root = root();
    let copy = std::env::temp_dir().join(format!("check-latest-{}", std::process::id()));
    let result = check_latest_in(&root, &copy);
    let _ = std::fs::remove_dir_all(&copy);
    result
}

fn check_latest_in(root: &Path, copy: &Path) -> Result<()> {
    copy_workspace(root, copy)?;
    let target = root.join("target").join("check-latest");
    let in_copy = |args: &[&str]| {
        let mut command = cargo();
        command
            .current_dir(copy)
            .args(args)
            .env("CARGO_TARGET_DIR", &target);
        command
    };
    step("cargo update (in a copy)", &mut in_copy(&["update"]))?;
    let diff = Command::new("git")
        .args(["diff", "--no-index", "--stat"])
        .arg(root.join("Cargo.lock"))
        .arg(copy.join("Cargo.lock"))
        .output()
        .context("could not run git diff")?;
    println!("{}", String::from_utf8_lossy(&diff.stdout));
    step(
        "cargo clippy on the newest dependencies (warnings are errors)",
        &mut in_copy(&[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]),
    )?;
    let mut doc = in_copy(&["doc", "--workspace", "--no-deps"]);
    doc.env("RUSTDOCFLAGS", "-D warnings");
    step(
        "cargo doc on the newest dependencies (warnings are errors)",
        &mut doc,
    )
}

/// Copy the files git knows about (tracked, or new and not ignored) into `to`.
fn copy_workspace(root: &Path, to: &Path) -> Result<()> {
    let output = Command::new("git")
        .current_dir(root)
        .args([
            "ls-files",
            "-z",
            "--cached",
            "--others",
            "--exclude-standard",
        ])
        .output()
        .context("could not run `git ls-files`")?;
    if !output.status.success() {
        bail!("`git ls-files` failed in {}", root.display());
    }
    let mut copied = 0;
    for name in output.stdout.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let relative = PathBuf::from(String::from_utf8_lossy(name).into_owned());
        let from = root.join(&relative);
        if !from.is_file() {
            continue; // deleted in the working tree
        }
        let dest = to.join(&relative);
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::copy(&from, &dest).with_context(|| format!("copying {}", from.display()))?;
        copied += 1;
    }
    println!("==> copied {copied} files to {}", to.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_sources_examples_readme_and_licences_ship() {
        for ok in [
            "src/lib.rs",
            "src/a/b.rs",
            "examples/x.rs",
            "README.md",
            "LICENSE-MIT",
        ] {
            assert!(allowed(ok), "{ok}");
        }
        for bad in [
            "tests/seed.rs",
            "benches/pool_hit.rs",
            "benches/support/mod.rs",
            "x.txt",
        ] {
            assert!(!allowed(bad), "{bad}");
        }
    }

    #[test]
    fn a_use_of_testkit_is_found_and_a_mention_is_not() {
        assert!(names_crate("use testkit::ratelimit::Server;", "testkit"));
        assert!(names_crate(
            "    let s = testkit::tls::TestCa::new();",
            "testkit"
        ));
        assert!(names_crate("extern crate testkit;", "testkit"));
        assert!(!names_crate("// see testkit::tls", "testkit"));
        assert!(!names_crate("let my_testkit = 1;", "testkit"));
        assert!(!names_crate("/// local servers (testkit)", "testkit"));
    }
}
