//! Replays every committed fuzz input (`fuzz/corpus/<target>/*`) through the same target
//! functions the libFuzzer binaries run (`fuzz/src/lib.rs`), on stable Rust: CI checks the
//! minimised corpora without nightly or cargo-fuzz (SPEC R2, I2–I4, K2, K3, A5, A6, A8, A9).

#[allow(
    unreachable_pub,
    reason = "the fuzz crate's public functions, compiled here as a private module"
)]
#[path = "../../fuzz/src/lib.rs"]
mod targets;

use std::path::Path;

// covers R2, I2, I3, I4, K2, K3, A5, A6, A8, A9: the corpora pass their targets.
#[test]
fn every_committed_fuzz_input_passes_its_target() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    let mut report = Vec::new();
    for target in targets::TARGETS {
        let dir = root.join(target);
        let mut inputs: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|entry| entry.unwrap().path())
            .collect();
        inputs.sort();
        assert!(!inputs.is_empty(), "{target}: no corpus committed");
        for input in &inputs {
            let data = std::fs::read(input).unwrap();
            assert!(targets::run(target, &data), "unknown target {target}");
        }
        report.push(format!("{target}: {}", inputs.len()));
    }
    println!("fuzz corpora replayed: {}", report.join(", "));
}
