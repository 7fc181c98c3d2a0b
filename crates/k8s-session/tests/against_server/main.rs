//! The k8s-session suite against testkit's in-process Kubernetes API server (and its ARM
//! endpoint), with a check around the WHOLE suite that no TLS material reached the temp dir.
//!
//! A custom runner (`harness = false`): libtest has no "after all tests" hook, and the temp-dir
//! check must bracket every scenario. Each scenario runs on its own current-thread runtime (a
//! `kube::Client` is bound to the runtime it was built on), in real time except where it moves
//! virtual time with no I/O in flight. Arguments: an optional name filter; flags (such as
//! `--include-ignored` from `cargo xtask it`) are accepted and ignored.

mod aks;
mod http2;
mod in_flight;
mod pool;
mod rejection;
mod support;

use std::collections::BTreeSet;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::ExitCode;

type Scenario = fn() -> Pin<Box<dyn Future<Output = anyhow::Result<()>>>>;

macro_rules! scenarios {
    ($($path:path),* $(,)?) => {
        [$((stringify!($path), (|| Box::pin($path()) as Pin<Box<dyn Future<Output = _>>>) as Scenario)),*]
    };
}

fn main() -> ExitCode {
    let filter = std::env::args().skip(1).find(|arg| !arg.starts_with('-'));
    let all = scenarios![
        pool::pooled_session_reuses_one_tls_connection,
        pool::keys_are_isolated,
        pool::ttl_clamped_by_certificate_not_after,
        pool::ttl_clamped_by_token_expiry,
        pool::one_shot_when_ttl_collapses,
        pool::capacity_evicts_the_soonest_expiry,
        pool::retire_never_under_the_lock,
        in_flight::concurrent_calls_stay_within_the_in_flight_bound,
        in_flight::slow_readers_hold_their_slots_until_their_bodies_are_read,
        in_flight::a_dropped_unread_body_frees_its_slot,
        http2::concurrent_calls_share_one_tls_connection,
        http2::an_http1_only_server_still_answers,
        http2::exec_upgrades_over_http1,
        http2::a_killed_connection_fails_only_its_streams,
        http2::a_stalled_connection_is_replaced,
        http2::the_read_timeout_holds_over_http2,
        aks::aks_source_end_to_end,
        aks::aks_errors_are_typed,
        rejection::a_401_retires_the_session_and_its_aad_token,
    ];
    support::record_open_temp_baseline();
    let temp = std::env::temp_dir();
    let before = listing(&temp);
    let mut failed = Vec::new();
    let mut ran = 0;
    for (name, scenario) in all {
        if filter.as_deref().is_some_and(|f| !name.contains(f)) {
            continue;
        }
        ran += 1;
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(scenario())
        }));
        let result = match outcome {
            Ok(Ok(())) => support::open_temp_files(),
            Ok(Err(error)) => Err(format!("{error:#}")),
            Err(_) => Err("panicked".to_string()),
        };
        match result {
            Ok(()) => println!("test {name} ... ok"),
            Err(error) => {
                println!("test {name} ... FAILED: {error}");
                failed.push(name);
            }
        }
    }
    // covers K2: no file holding our certificates, keys or tokens appeared in the temp dir.
    let created = new_files_with_secrets(&temp, &before);
    let name = "no_tls_material_written_under_the_temp_dir";
    if created.is_empty() {
        println!("test {name} ... ok");
    } else {
        println!("test {name} ... FAILED: {created:?}");
        failed.push(name);
    }
    println!(
        "\ntest result: {}. {} passed; {} failed",
        if failed.is_empty() { "ok" } else { "FAILED" },
        ran + 1 - failed.len(),
        failed.len()
    );
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Every path under `dir`, two levels deep (temp-file helpers write at the top level or in one
/// fresh subdirectory).
fn listing(dir: &Path) -> BTreeSet<PathBuf> {
    let mut paths = BTreeSet::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            for inner in std::fs::read_dir(&path).into_iter().flatten().flatten() {
                paths.insert(inner.path());
            }
        }
        paths.insert(path);
    }
    paths
}

/// New files (since `before`) that contain any secret the suite handed to the pool. The
/// machine is shared, so other processes may create unrelated temp files meanwhile: a new file
/// fails the suite only if it holds OUR material (a PEM line, a token).
fn new_files_with_secrets(dir: &Path, before: &BTreeSet<PathBuf>) -> Vec<PathBuf> {
    let secrets = support::secrets().lock().unwrap().clone();
    assert!(!secrets.is_empty(), "the suite registered its secrets");
    let after = listing(dir);
    let new: Vec<_> = after.difference(before).collect();
    println!(
        "temp dir: {} new entries during the suite (any process)",
        new.len()
    );
    new.into_iter()
        .filter(|path| {
            let small = std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.len() < 1 << 20);
            small
                && std::fs::read(path).is_ok_and(|bytes| {
                    let text = String::from_utf8_lossy(&bytes);
                    secrets.iter().any(|secret| text.contains(secret.as_str()))
                })
        })
        .cloned()
        .collect()
}
