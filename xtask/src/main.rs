//! `cargo xtask`: the workspace's task runner (the rust-analyzer convention).
//!
//! One file per subcommand; this file only parses the command line and dispatches.

mod bench;
mod browser;
mod demo;
mod fuzz;
mod it;
mod kind;
mod package;
mod setup;
mod shell;
mod soak;
mod test;

use anyhow::{Result, bail};

const USAGE: &str = "\
usage: cargo xtask <command> [args]

commands:
  setup              install the local backends' tools under target/tools (Azurite from npm,
                     cargo-fuzz from crates.io)
  test               fmt check, clippy -D warnings, docs, every test and backend suite,
                     20 s of fuzzing per target
  it [--k8s local|kind]
                     the integration suites against live local backends
  demo [--naive|--pooled] [--ticks N] [--serve]
                     run the dashboard against local backends and print what it cost
  soak [--minutes N] [--debug] [--max-drift-percent P]
                     run `demo --serve` under the page's polling for N minutes (default 10,
                     release build) and report RSS, fds, connections and latency per minute;
                     fails if RSS drifts more than P % (default 10) after the warm-up
  browser [--screenshot-docs]
                     the dashboard page in headless Chromium (Playwright) against
                     `demo --serve`; screenshots in target/browser/ (--screenshot-docs: also
                     docs/dashboard.png)
  bench [scenario..] run benchmarks (all, or the named scenarios); rewrites docs/benchmarks.md
  package [--no-verify]
                     the library crates as `cargo package` ships them: a listing check (no
                     test, bench or unpublished crate ships; README and licences do), a lean
                     features check (cargo tree), then every crate compiled from its .crate
                     (`--no-verify`: packaged only, what `cargo xtask test` runs)
  check-latest       clippy and docs on a copy of the workspace after `cargo update` (the
                     newest semver-compatible dependencies; the committed lock is untouched)
  kind up|down       create or delete a kind cluster for `it --k8s kind` (needs Docker)
  fuzz <target> [--secs N] [--cmin]
                     a fuzzing campaign on fuzz/corpus/<target> (AddressSanitizer: needs nightly)
  fuzz --smoke [--secs N]
                     every fuzz target N s (default 20) on the pinned toolchain, no sanitizer
";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Err(error) = run(&args) {
        eprintln!("xtask: error: {error:#}");
        std::process::exit(1);
    }
}

fn run(args: &[String]) -> Result<()> {
    let (command, rest) = match args.split_first() {
        Some((command, rest)) => (command.as_str(), rest),
        None => {
            print!("{USAGE}");
            return Ok(());
        }
    };
    match command {
        "setup" => setup::run(rest),
        "test" => test::run(rest),
        "it" => it::run(rest),
        "demo" => demo::run(rest),
        "bench" => bench::run(rest),
        "browser" => browser::run(rest),
        "soak" => soak::run(rest),
        "kind" => kind::run(rest),
        "package" => package::run_package(rest),
        "check-latest" => package::run_check_latest(rest),
        "fuzz" => fuzz::run(rest),
        "help" | "-h" | "--help" => {
            print!("{USAGE}");
            Ok(())
        }
        other => bail!("unknown command `{other}`\n\n{USAGE}"),
    }
}
