//! `cargo xtask fuzz <target> [--secs N] [--cmin]`: run one cargo-fuzz target on its corpus.
//!
//! The fuzz crate (`fuzz/`) is its own workspace and needs the nightly toolchain and
//! cargo-fuzz; this command checks both first and says how to install what is missing. The
//! corpus is `fuzz/corpus/<target>` (committed); new inputs libFuzzer finds are added to it, and
//! `--cmin` minimises it afterwards (`cargo fuzz cmin`). Crashes land in `fuzz/artifacts/`.
//! Not part of `cargo xtask test`: see docs/reliability.md for why.

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

const USAGE: &str = "usage: cargo xtask fuzz <target> [--secs N] [--cmin]   (N defaults to 60)";

pub(crate) fn run(args: &[String]) -> Result<()> {
    let mut target = None;
    let mut secs: u64 = 60;
    let mut cmin = false;
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--secs" => {
                let value = args.next().context(USAGE)?;
                secs = value
                    .parse()
                    .with_context(|| format!("--secs takes a number of seconds, not `{value}`"))?;
            }
            "--cmin" => cmin = true,
            name if target.is_none() && !name.starts_with('-') => target = Some(name.to_string()),
            other => bail!("unexpected argument `{other}`\n{USAGE}"),
        }
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
    check_tools()?;
    let corpus = format!("corpus/{target}");
    step(
        &format!("cargo +nightly fuzz run {target} ({secs} s)"),
        nightly_cargo()
            .args(["fuzz", "run", &target, &corpus, "--"])
            .arg(format!("-max_total_time={secs}"))
            .arg("-print_final_stats=1"),
    )?;
    if cmin {
        step(
            &format!("cargo +nightly fuzz cmin {target}"),
            nightly_cargo().args(["fuzz", "cmin", &target, &corpus]),
        )?;
    }
    Ok(())
}

/// `cargo +nightly` in `fuzz/`, without the variables the outer (pinned, stable) `cargo run`
/// set: `CARGO`/`RUSTUP_TOOLCHAIN` would make cargo-fuzz call the stable toolchain, and
/// `CARGO_PKG_*`/`CARGO_MANIFEST_*` change build-script fingerprints (ring reruns on them), which
/// would make every `cargo xtask fuzz` rebuild what a direct `cargo +nightly fuzz` built.
fn nightly_cargo() -> Command {
    let mut command = Command::new("cargo");
    command.arg("+nightly").current_dir(root().join("fuzz"));
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
    command
}

/// Fail with the install command if the nightly toolchain or cargo-fuzz is missing.
fn check_tools() -> Result<()> {
    let nightly = nightly_cargo().arg("--version").output();
    if !nightly.as_ref().is_ok_and(|o| o.status.success()) {
        bail!(
            "the nightly toolchain is missing (cargo-fuzz needs it): \
             run `rustup toolchain install nightly`"
        );
    }
    let fuzz = nightly_cargo().args(["fuzz", "--version"]).output();
    if !fuzz.as_ref().is_ok_and(|o| o.status.success()) {
        bail!("cargo-fuzz is missing: run `cargo +nightly install cargo-fuzz --locked`");
    }
    Ok(())
}
