//! `cargo xtask fuzz`: fuzzing campaigns on one target, and the short smoke run of every target
//! that `cargo xtask test` includes.
//!
//! - `cargo xtask fuzz <target> [--secs N] [--cmin]`: a campaign with AddressSanitizer, on the
//!   nightly toolchain. New inputs go to the committed corpus `fuzz/corpus/<target>`; `--cmin`
//!   minimises it afterwards (`cargo fuzz cmin`). Crashes land in `fuzz/artifacts/`.
//! - `cargo xtask fuzz --smoke [--secs N]`: every target for N seconds (default 20) on the
//!   pinned stable toolchain, without a sanitizer (`-Zsanitizer` needs nightly), starting from
//!   the committed corpora and writing new inputs only under `target/fuzz-smoke/`, so the
//!   working tree stays clean. Any crash fails the step.
//!
//! Both use the cargo-fuzz that `cargo xtask setup` installs under `target/tools/cargo-fuzz`
//! (one pinned version, built from crates.io). The fuzz crate (`fuzz/`) is its own workspace;
//! see docs/reliability.md.

use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::shell::{root, step};

/// The targets in `fuzz/Cargo.toml` (kept in step with `fuzz/src/lib.rs`'s `TARGETS`).
const TARGETS: [&str; 6] = [
    "retry_after",
    "inspector_paths",
    "kubeconfig",
    "aks_credentials",
    "apikey_document",
    "apikey_header",
];

/// Seconds per target of the smoke run in `cargo xtask test`.
pub(crate) const SMOKE_SECS: u64 = 20;

const USAGE: &str = "usage: cargo xtask fuzz <target> [--secs N] [--cmin]   (N defaults to 60)\n       \
                     cargo xtask fuzz --smoke [--secs N]                 (every target, N defaults to 20)";

pub(crate) fn run(args: &[String]) -> Result<()> {
    let mut target = None;
    let mut secs = None;
    let mut cmin = false;
    let mut smoke = false;
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--secs" => {
                let value = args.next().context(USAGE)?;
                secs =
                    Some(value.parse().with_context(|| {
                        format!("--secs takes a number of seconds, not `{value}`")
                    })?);
            }
            "--cmin" => cmin = true,
            "--smoke" => smoke = true,
            name if target.is_none() && !name.starts_with('-') => target = Some(name.to_string()),
            other => bail!("unexpected argument `{other}`\n{USAGE}"),
        }
    }
    if smoke {
        if target.is_some() || cmin {
            bail!("--smoke runs every target and keeps no corpus\n{USAGE}");
        }
        crate::setup::ensure_cargo_fuzz()?;
        return run_smoke(secs.unwrap_or(SMOKE_SECS));
    }
    let Some(target) = target else {
        bail!("{USAGE}\ntargets: {}", TARGETS.join(", "));
    };
    if !TARGETS.contains(&target.as_str()) {
        bail!(
            "unknown fuzz target `{target}`; targets: {}",
            TARGETS.join(", ")
        );
    }
    crate::setup::ensure_cargo_fuzz()?;
    check_nightly()?;
    let secs = secs.unwrap_or(60);
    let corpus = format!("corpus/{target}");
    step(
        &format!("cargo +nightly fuzz run {target} ({secs} s)"),
        fuzz_cargo(Some("+nightly"))
            .args(["fuzz", "run", &target, &corpus, "--"])
            .arg(format!("-max_total_time={secs}"))
            .arg("-print_final_stats=1"),
    )?;
    if cmin {
        step(
            &format!("cargo +nightly fuzz cmin {target}"),
            fuzz_cargo(Some("+nightly")).args(["fuzz", "cmin", &target, &corpus]),
        )?;
    }
    Ok(())
}

/// Every target for `secs` seconds on the pinned toolchain, without a sanitizer.
pub(crate) fn run_smoke(secs: u64) -> Result<()> {
    let scratch = root().join("target").join("fuzz-smoke");
    let build_dir = scratch.join("build");
    for target in TARGETS {
        // libFuzzer writes new inputs to its first corpus directory and only reads the others.
        let found = scratch.join("corpus").join(target);
        std::fs::create_dir_all(&found).with_context(|| format!("creating {}", found.display()))?;
        let committed = root().join("fuzz").join("corpus").join(target);
        step(
            &format!("fuzz smoke: {target} ({secs} s, no sanitizer)"),
            fuzz_cargo(None)
                .args(["fuzz", "run", "--sanitizer", "none", "--target-dir"])
                .arg(&build_dir)
                .arg(target)
                .arg(&found)
                .arg(&committed)
                .arg("--")
                .arg(format!("-max_total_time={secs}"))
                // No line per new input (thousands of lines of CI log; libFuzzer has no flag
                // for those lines alone). A crash's report and input, and the final stats,
                // print at any verbosity.
                .arg("-verbosity=0")
                .arg("-print_final_stats=1"),
        )?;
    }
    Ok(())
}

/// `cargo [+toolchain]` in `fuzz/`, with the installed cargo-fuzz first on `PATH`, and without
/// the variables the outer `cargo run` set: `CARGO`/`RUSTUP_TOOLCHAIN` would pin cargo-fuzz's
/// inner cargo to the outer toolchain, and `CARGO_PKG_*`/`CARGO_MANIFEST_*` change build-script
/// fingerprints (ring reruns on them), which would make every run rebuild the fuzz tree.
fn fuzz_cargo(toolchain: Option<&str>) -> Command {
    let mut command = Command::new("cargo");
    if let Some(toolchain) = toolchain {
        command.arg(toolchain);
    }
    command.current_dir(root().join("fuzz"));
    for (name, _) in std::env::vars_os() {
        let Some(name) = name.to_str() else { continue };
        let outer = matches!(
            name,
            "CARGO"
                | "RUSTUP_TOOLCHAIN"
                | "RUSTUP_TOOLCHAIN_SOURCE"
                | "RUSTC"
                | "RUSTDOC"
                | "CARGO_CRATE_NAME"
                | "CARGO_BIN_NAME"
                | "CARGO_PRIMARY_PACKAGE"
        ) || name.starts_with("CARGO_PKG_")
            || name.starts_with("CARGO_MANIFEST_");
        if outer {
            command.env_remove(name);
        }
    }
    let mut path = vec![crate::setup::cargo_fuzz_dir().join("bin")];
    path.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    // A directory name with the path separator in it cannot be joined: then the inherited PATH
    // stays (cargo-fuzz must be found there), rather than an empty one that finds nothing.
    if let Ok(path) = std::env::join_paths(path) {
        command.env("PATH", path);
    }
    command
}

/// Fail with the install command if the nightly toolchain (AddressSanitizer) is missing.
fn check_nightly() -> Result<()> {
    let nightly = fuzz_cargo(Some("+nightly")).arg("--version").output();
    if !nightly.as_ref().is_ok_and(|o| o.status.success()) {
        bail!(
            "the nightly toolchain is missing (campaigns build with AddressSanitizer, which needs \
             it): run `rustup toolchain install nightly`, or use `cargo xtask fuzz --smoke` on the \
             pinned toolchain"
        );
    }
    Ok(())
}
