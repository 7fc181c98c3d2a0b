//! The demo driver, run as `cargo xtask demo` runs it (the `demo` binary), for 2 ticks: its
//! summary must show what the crates promise.

use std::process::Command;

use serde_json::Value;

// covers K1/K5 (sessions ≤ clusters × session keys), R4 (no pool timeout under the 429 burst),
// I2/I3 (the POSTs are still in the inspector after all the polling) — and that the naive run
// of the same load shows the seeds' costs, so the comparison the demo prints is real.
#[test]
#[ignore = "needs Azurite: cargo xtask it"]
fn two_ticks_of_the_demo_keep_the_summary_invariants() {
    let json = std::env::temp_dir().join(format!("dashboard-demo-{}.json", std::process::id()));
    let output = Command::new(env!("CARGO_BIN_EXE_demo"))
        .args(["--ticks", "2", "--json"])
        .arg(&json)
        .output()
        .expect("the demo binary runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "demo failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("summary"), "{stdout}");
    let text = std::fs::read_to_string(&json).expect("the JSON summary");
    let _ = std::fs::remove_file(&json);
    let runs: Vec<Value> = serde_json::from_str(&text).unwrap();
    let [ours, naive] = runs.as_slice() else {
        panic!("expected two runs: {text}");
    };
    let n = |v: &Value, field: &str| v[field].as_u64().unwrap_or_else(|| panic!("{field}: {v}"));

    assert_eq!(ours["mode"], "pooled");
    assert_eq!(n(ours, "ticks"), 2);
    let per_tick = &ours["requests_per_tick"];
    assert!(
        per_tick[0].as_u64().unwrap() >= 15 && per_tick[1].as_u64().unwrap() <= 20,
        "{per_tick}"
    );
    assert_eq!(n(ours, "failed_gets"), 0, "{ours}");
    assert!(
        n(ours, "sessions_created") <= n(ours, "clusters") * n(ours, "session_keys_per_cluster"),
        "{ours}"
    );
    assert_eq!(n(ours, "pool_timeouts"), 0, "{ours}");
    assert!(n(ours, "posts_sent") > 0, "{ours}");
    assert_eq!(
        n(ours, "posts_in_inspector"),
        n(ours, "posts_sent"),
        "{ours}"
    );
    assert_eq!(n(ours, "posts_accepted"), n(ours, "posts_sent"), "{ours}");
    assert_eq!(
        n(ours, "retries"),
        n(ours, "posts_sent"),
        "one 429 per job: {ours}"
    );
    assert_eq!(n(ours, "blob_clients"), 1, "{ours}");
    assert_eq!(n(ours, "middleware_buffered_bytes"), 0, "{ours}");

    assert_eq!(naive["mode"], "naive");
    assert_eq!(
        n(naive, "kube_calls"),
        n(ours, "kube_calls"),
        "the same load"
    );
    assert!(
        n(naive, "sessions_created") > n(ours, "sessions_created") * 5,
        "{naive}"
    );
    assert!(n(naive, "blob_clients") > 1, "{naive}");
    assert!(n(naive, "middleware_buffered_bytes") > 0, "{naive}");
}
