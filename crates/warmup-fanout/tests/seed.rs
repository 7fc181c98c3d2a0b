//! Seed 001 black-box suite (issue #16): the promises of SPEC W1–W3 and X5, written from the
//! seed (`k8s_warmup_status` made up to 18 serial Kubernetes GETs per tick; one failing call
//! failed the whole status) and its upstream tests (`test_k8s_warmup_status_parallel.py`: every
//! expected URL exactly once, non-200 degrades to an empty default instead of raising, log
//! fan-out well under serial time), through the public API only.
//!
//! The engine tests run in paused virtual time with fake reads that count calls and
//! concurrency. The `warmup_status` tests use testkit's in-process Kubernetes API server on real
//! sockets, so they run in real time and only assert orderings and lower bounds.

mod support;

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use testkit::k8s::{Fault, Route};
use warmup_fanout::{
    FanOut, FanOutConfig, FanOutReport, GroupRead, MAX_LOG_TAILS, Outcome, ReadSpec, WarmupOptions,
    warmup_status,
};

use support::{NS, get, log_path, seen, serve, top_level_reads};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Counts reads in flight and the most seen at once, independently of the engine's report.
#[derive(Clone, Default)]
struct Gauge {
    now: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
    calls: Arc<Mutex<HashMap<String, usize>>>,
}

impl Gauge {
    /// A read called `name` that takes `took` (virtual time) and returns `value`.
    fn read<T: Send + 'static>(
        &self,
        name: &str,
        took: Duration,
        value: T,
    ) -> impl Future<Output = Result<T, Infallible>> + Send + 'static {
        let gauge = self.clone();
        let name = name.to_string();
        async move {
            *gauge.calls.lock().unwrap().entry(name).or_default() += 1;
            let now = gauge.now.fetch_add(1, Ordering::SeqCst) + 1;
            gauge.peak.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(took).await;
            gauge.now.fetch_sub(1, Ordering::SeqCst);
            Ok(value)
        }
    }

    fn peak(&self) -> usize {
        self.peak.load(Ordering::SeqCst)
    }

    fn calls(&self) -> HashMap<String, usize> {
        self.calls.lock().unwrap().clone()
    }
}

/// Sets a flag when dropped: proves a timed-out read's future was cancelled.
struct DropFlag(Arc<AtomicBool>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Join, but fail (instead of hanging) if the fan-out does not finish within a virtual year.
async fn join(fan: FanOut) -> FanOutReport {
    tokio::time::timeout(Duration::from_secs(366 * 86_400), fan.join())
        .await
        .expect("the fan-out finished (no read or permit waited forever)")
}

// ---------------------------------------------------------------------------------------------
// The engine (W1, W2, W4), in virtual time.
// ---------------------------------------------------------------------------------------------

// covers W1, W4 (seed 001: "sum of 18 serial GETs" → "max of one parallel fan-out"): the six
// independent top-level reads all start at once, and the wall time is the slowest one.
#[tokio::test(start_paused = true)]
async fn seed001_six_independent_reads_start_together_and_take_the_slowest_time() {
    let gauge = Gauge::default();
    let mut fan = FanOut::new(FanOutConfig::default());
    let names = [
        "jobs",
        "nodes",
        "daemonset",
        "configmap",
        "warnings",
        "pods",
    ];
    for (i, name) in names.iter().enumerate() {
        fan.read(
            ReadSpec::new(*name, 0_u64),
            gauge.read(name, ms(10 * (i as u64 + 1)), 1),
        );
    }
    let report = join(fan).await;

    assert_eq!(report.reads.len(), 6);
    for row in &report.reads {
        assert_eq!(row.outcome, Outcome::Ok, "{row:?}");
        assert_eq!(row.phase, 1);
        assert_eq!(row.started_after, Duration::ZERO, "{} waited", row.name);
    }
    assert!(
        report.elapsed >= ms(60) && report.elapsed < ms(61),
        "{:?}",
        report.elapsed
    );
    assert_eq!(gauge.peak(), 6);
    assert_eq!(report.peak_in_flight, 6);
    assert!(
        gauge.calls().values().all(|&n| n == 1),
        "{:?}",
        gauge.calls()
    );
}

// covers W1: a phase-2 read starts when *its* dependency is in — never before it, and not when
// the slowest read of phase 1 ends. It gets the dependency's value.
#[tokio::test(start_paused = true)]
async fn w1_phase_two_starts_after_its_dependency_only() {
    let gauge = Gauge::default();
    let mut fan = FanOut::new(FanOutConfig::default());
    let pods_done = Arc::new(AtomicBool::new(false));
    let done = Arc::clone(&pods_done);
    let pods = fan.read(ReadSpec::new("pods", Vec::<String>::new()), async move {
        tokio::time::sleep(ms(5)).await;
        done.store(true, Ordering::SeqCst);
        Ok::<_, Infallible>(vec!["pod-a".to_string(), "pod-b".to_string()])
    });
    let jobs = fan.read(ReadSpec::new("jobs", 0_u32), gauge.read("jobs", ms(30), 3));
    let nodes = fan.read(
        ReadSpec::new("nodes", 0_u32),
        gauge.read("nodes", ms(10), 4),
    );
    let configmap = fan.read(
        ReadSpec::new("configmap", 0_u32),
        gauge.read("configmap", ms(20), 5),
    );
    fan.read(ReadSpec::new("slow", ()), gauge.read("slow", ms(1_000), ()));

    let seen_pods_done = Arc::clone(&pods_done);
    let pods_handle = pods.clone();
    let logs = fan.read_after(
        ReadSpec::new("logs", 0_usize),
        pods.clone(),
        move |pods: Arc<Vec<String>>| async move {
            assert!(
                seen_pods_done.load(Ordering::SeqCst),
                "started before `pods` finished"
            );
            assert!(pods_handle.is_resolved());
            Ok::<_, Infallible>(pods.len())
        },
    );
    let stale = fan.read_after(
        ReadSpec::new("stale_nodes", 0_u32),
        (nodes.clone(), jobs.clone(), configmap.clone()),
        |(n, j, c)| async move { Ok::<_, Infallible>(*n + *j + *c) },
    );
    let third = fan.read_after(
        ReadSpec::new("third", 0_u32),
        stale.clone(),
        |s| async move { Ok::<_, Infallible>(*s * 2) },
    );
    let report = join(fan).await;

    assert_eq!(*logs.value(), 2);
    assert_eq!(*stale.value(), 12);
    assert_eq!(*third.value(), 24);
    let row = |name: &str| report.get(name).unwrap().clone();
    assert_eq!(row("logs").phase, 2);
    assert_eq!(row("stale_nodes").phase, 2);
    assert_eq!(row("third").phase, 3);
    assert_eq!(report.phases(), 3);
    // Not before the dependency ...
    assert!(row("logs").started_after >= ms(5), "{:?}", row("logs"));
    assert!(
        row("stale_nodes").started_after >= ms(30),
        "{:?}",
        row("stale_nodes")
    );
    // ... and not after the slowest read of the phase.
    assert!(row("logs").started_after < ms(30), "{:?}", row("logs"));
    assert!(
        row("stale_nodes").started_after < ms(1_000),
        "{:?}",
        row("stale_nodes")
    );
    assert!(row("third").started_after < ms(1_000), "{:?}", row("third"));
}

// covers W1 (bound honoured, and counted): 20 reads through 3 slots never run more than 3 at
// once; the report's peak equals what the reads themselves saw; wall time is ⌈20/3⌉ rounds.
#[tokio::test(start_paused = true)]
async fn w1_the_bound_is_honoured_and_counted() {
    let gauge = Gauge::default();
    let mut fan = FanOut::new(FanOutConfig::default().max_in_flight(3));
    for i in 0..20 {
        let name = format!("read-{i}");
        fan.read(
            ReadSpec::new(name.clone(), ()),
            gauge.read(&name, ms(10), ()),
        );
    }
    let report = join(fan).await;

    assert_eq!(gauge.peak(), 3);
    assert_eq!(report.peak_in_flight, 3);
    assert!(report.is_complete());
    assert_eq!(report.elapsed, ms(70));
    assert_eq!(gauge.calls().len(), 20);
    assert!(gauge.calls().values().all(|&n| n == 1));
}

// covers W1, W3: a group of 30 log tails under its own bound of 12 (seed:
// `max_workers=min(12, len(pod_names))`) runs every member exactly once, never more than 12 at a
// time, and the fan-out's own (lower) bound caps it too.
#[tokio::test(start_paused = true)]
async fn w1_a_group_runs_every_member_once_under_both_bounds() {
    for (global, group, expected_peak) in [(64, Some(12), 12), (5, Some(12), 5), (64, None, 30)] {
        let gauge = Gauge::default();
        let mut fan = FanOut::new(FanOutConfig::default().max_in_flight(global));
        let pods = fan.read(
            ReadSpec::new("pods", Vec::<String>::new()),
            gauge.read(
                "pods",
                ms(1),
                (0..30).map(|i| format!("pod-{i:02}")).collect(),
            ),
        );
        let g = gauge.clone();
        let logs = fan.fan_after("logs", group, pods, move |pods: Arc<Vec<String>>| {
            pods.iter()
                .map(|p| {
                    let name = format!("log/{p}");
                    GroupRead::new(
                        ReadSpec::new(name.clone(), None::<String>),
                        g.read(&name, ms(10), Some(p.clone())),
                    )
                })
                .collect()
        });
        let report = join(fan).await;

        assert_eq!(
            gauge.peak(),
            expected_peak,
            "global {global}, group {group:?}"
        );
        assert!(report.peak_in_flight <= global.min(group.unwrap_or(usize::MAX)));
        let calls = gauge.calls();
        assert_eq!(calls.len(), 31);
        assert!(calls.values().all(|&n| n == 1), "{calls:?}");
        assert_eq!(logs.value().len(), 30);
        assert!(logs.value().iter().all(Option::is_some));
        assert_eq!(report.reads.len(), 31);
        assert_eq!(report.get("log/pod-29").unwrap().phase, 2);
    }
}

// covers W1: a dependent waiting for its dependency holds no slot, so with a bound of 1 a chain
// of dependents and independents still finishes (it would deadlock otherwise).
#[tokio::test(start_paused = true)]
async fn w1_a_waiting_dependent_holds_no_slot() {
    let gauge = Gauge::default();
    let mut fan = FanOut::new(FanOutConfig::default().max_in_flight(1));
    let mut last = fan.read(ReadSpec::new("root", 0_u32), gauge.read("root", ms(10), 1));
    for i in 0..5 {
        last = fan.read_after(
            ReadSpec::new(format!("dep-{i}"), 0_u32),
            last,
            |v| async move { Ok::<_, Infallible>(*v + 1) },
        );
        fan.read(
            ReadSpec::new(format!("free-{i}"), ()),
            gauge.read("free", ms(10), ()),
        );
    }
    let report = join(fan).await;
    assert!(report.is_complete(), "{report:?}");
    assert_eq!(*last.value(), 6);
    assert_eq!(report.peak_in_flight, 1);
    assert_eq!(report.phases(), 6);
}

#[derive(Debug, thiserror::Error)]
#[error("configmap read failed")]
struct Outer(#[source] std::io::Error);

// covers W2 (seed: "non-200 responses degrade to empty defaults instead of raising"): a failing
// read resolves to its default with its reason (the whole source chain), its dependents run on
// the default, its siblings keep their values, and the report says what degraded.
#[tokio::test(start_paused = true)]
async fn w2_a_failing_read_degrades_to_its_default_with_its_reason() {
    let gauge = Gauge::default();
    let mut fan = FanOut::new(FanOutConfig::default());
    let nodes = fan.read(
        ReadSpec::new("nodes", 0_u32),
        gauge.read("nodes", ms(10), 4),
    );
    let configmap = fan.read(ReadSpec::new("configmap", 7_u32), async {
        tokio::time::sleep(ms(1)).await;
        Err::<u32, _>(Outer(std::io::Error::other(
            "HTTP 500 InternalError: etcd down",
        )))
    });
    let dependent = fan.read_after(
        ReadSpec::new("stale_nodes", 0_u32),
        (nodes.clone(), configmap.clone()),
        |(n, c)| async move { Ok::<_, Infallible>(*n * 100 + *c) },
    );
    let report = join(fan).await;

    assert_eq!(*configmap.value(), 7, "the default");
    assert_eq!(*nodes.value(), 4);
    assert_eq!(*dependent.value(), 407, "the dependent ran on the default");
    let row = report.get("configmap").unwrap();
    match &row.outcome {
        Outcome::Degraded { reason } => {
            assert!(reason.contains("configmap read failed"), "{reason}");
            assert!(
                reason.contains("etcd down"),
                "the cause is in the reason: {reason}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(row.outcome.describe().contains("etcd down"));
    assert!(!report.is_complete());
    let failed: Vec<_> = report.failures().map(|r| r.name.as_str()).collect();
    assert_eq!(failed, ["configmap"]);
    assert_eq!(report.get("stale_nodes").unwrap().outcome, Outcome::Ok);
}

// covers W2: a read that hangs forever times out at its own timeout to its default, its future
// is dropped (cancelled), its siblings are untouched and the fan-out ends at the timeout.
#[tokio::test(start_paused = true)]
async fn w2_a_hanging_read_times_out_to_its_default() {
    let gauge = Gauge::default();
    let cancelled = Arc::new(AtomicBool::new(false));
    let flag = DropFlag(Arc::clone(&cancelled));
    let mut fan = FanOut::new(FanOutConfig::default().default_timeout(ms(500)));
    let hung = fan.read(
        ReadSpec::new("daemonset", 9_u8).timeout(ms(2_000)),
        async move {
            let _flag = flag;
            std::future::pending::<Result<u8, Infallible>>().await
        },
    );
    let sibling = fan.read(
        ReadSpec::new("nodes", 0_u8),
        gauge.read("nodes", ms(400), 1),
    );
    let after = fan.read_after(ReadSpec::new("after", 0_u8), hung.clone(), |v| async move {
        Ok::<_, Infallible>(*v + 1)
    });
    let report = join(fan).await;

    assert!(
        cancelled.load(Ordering::SeqCst),
        "the hung future was not dropped"
    );
    assert_eq!(*hung.value(), 9);
    assert_eq!(*sibling.value(), 1);
    assert_eq!(*after.value(), 10);
    assert_eq!(
        report.get("daemonset").unwrap().outcome,
        Outcome::TimedOut { after: ms(2_000) }
    );
    assert_eq!(report.get("nodes").unwrap().outcome, Outcome::Ok);
    assert!(report.get("after").unwrap().started_after >= ms(2_000));
    assert!(
        report.elapsed >= ms(2_000) && report.elapsed < ms(2_001),
        "{:?}",
        report.elapsed
    );
    let describe = report.get("daemonset").unwrap().outcome.describe();
    assert!(describe.contains("timed out"), "{describe}");
}

// covers W2: a panic in a read, or in the closure that builds a dependent read, costs only that
// read.
#[tokio::test(start_paused = true)]
async fn w2_panics_are_contained_to_their_read() {
    let mut fan = FanOut::new(FanOutConfig::default());
    let ok = fan.read(ReadSpec::new("ok", 0_u8), async { Ok::<_, Infallible>(1) });
    let boom = fan.read(ReadSpec::new("boom", 5_u8), async {
        if true {
            panic!("read exploded");
        }
        Ok::<u8, Infallible>(0)
    });
    let builder = fan.read_after(ReadSpec::new("builder", 6_u8), ok.clone(), |_| {
        if true {
            panic!("closure exploded");
        }
        async { Ok::<u8, Infallible>(0) }
    });
    let after = fan.read_after(
        ReadSpec::new("after", 0_u8),
        (boom.clone(), builder.clone()),
        |(a, b)| async move { Ok::<_, Infallible>(*a + *b) },
    );
    let report = join(fan).await;

    assert_eq!(
        (*boom.value(), *builder.value(), *after.value()),
        (5, 6, 11)
    );
    for name in ["boom", "builder"] {
        match &report.get(name).unwrap().outcome {
            Outcome::Degraded { reason } => assert!(reason.contains("panicked"), "{reason}"),
            other => panic!("{name}: {other:?}"),
        }
    }
    assert_eq!(report.get("after").unwrap().outcome, Outcome::Ok);
}

// ---------------------------------------------------------------------------------------------
// X5 on the engine: no configuration value panics, deadlocks or waits forever.
// ---------------------------------------------------------------------------------------------

fn extreme_durations() -> [Duration; 6] {
    [
        Duration::ZERO,
        Duration::from_nanos(1),
        Duration::from_secs(u64::from(u32::MAX)),
        Duration::from_secs(u64::MAX),
        Duration::new(u64::MAX, 999_999_999),
        Duration::MAX,
    ]
}

// covers X5: every Duration the engine accepts, as the fan-out's default or a read's own
// timeout, neither panics at build nor at first use; a read that finishes in time is Ok.
#[tokio::test(start_paused = true)]
async fn x5_every_timeout_value_is_accepted_without_panicking() {
    for timeout in extreme_durations() {
        let mut config = FanOutConfig::default().default_timeout(timeout);
        let mut fan = FanOut::new(config);
        let a = fan.read(ReadSpec::new("default-timeout", 0_u8), async {
            tokio::time::sleep(ms(5)).await;
            Ok::<_, Infallible>(1)
        });
        let b = fan.read(ReadSpec::new("own-timeout", 0_u8).timeout(timeout), async {
            tokio::time::sleep(ms(5)).await;
            Ok::<_, Infallible>(1)
        });
        let report = join(fan).await;
        if timeout >= Duration::from_secs(1) {
            assert!(report.is_complete(), "{timeout:?}: {report:?}");
            assert_eq!((*a.value(), *b.value()), (1, 1));
        } else {
            // Too short for a 5 ms read: a timeout, never a panic.
            assert!(
                report
                    .failures()
                    .all(|r| matches!(r.outcome, Outcome::TimedOut { .. }))
            );
        }
        let _ = serde_json::to_string(&report).expect("the report serialises");

        // The public field bypasses the builder: same promise.
        config.default_timeout = timeout;
        let mut fan = FanOut::new(config);
        fan.read(ReadSpec::new("field", ()), async {
            Ok::<_, Infallible>(())
        });
        assert!(join(fan).await.is_complete(), "{timeout:?}");
    }
}

// covers X5: the largest timeout the engine accepts is still finite — a read that never answers
// ends (as a timeout, with its default) instead of holding its caller forever.
#[tokio::test(start_paused = true)]
async fn x5_a_hanging_read_ends_even_with_duration_max() {
    for timeout in [Duration::from_secs(u64::MAX), Duration::MAX] {
        let mut fan = FanOut::new(FanOutConfig::default().default_timeout(timeout));
        let a = fan.read(
            ReadSpec::new("hung-default", 3_u8),
            std::future::pending::<Result<u8, Infallible>>(),
        );
        let b = fan.read(
            ReadSpec::new("hung-own", 4_u8).timeout(timeout),
            std::future::pending::<Result<u8, Infallible>>(),
        );
        let report = join(fan).await;
        assert_eq!((*a.value(), *b.value()), (3, 4));
        for row in &report.reads {
            match row.outcome {
                Outcome::TimedOut { after } => assert!(after < Duration::MAX, "{row:?}"),
                ref other => panic!("{other:?}"),
            }
            let _ = row.outcome.describe();
        }
    }
}

// covers X5: bounds of 0 and usize::MAX, on the fan-out (builder and public field) and on a
// group, neither panic nor deadlock; every read runs once.
#[tokio::test(start_paused = true)]
async fn x5_extreme_bounds_neither_panic_nor_deadlock() {
    let mut field_zero = FanOutConfig::default();
    field_zero.max_in_flight = 0;
    let mut field_max = FanOutConfig::default();
    field_max.max_in_flight = usize::MAX;
    let configs = [
        FanOutConfig::default().max_in_flight(0),
        FanOutConfig::default().max_in_flight(usize::MAX),
        FanOutConfig::default().max_in_flight(usize::MAX >> 3),
        field_zero,
        field_max,
    ];
    for config in configs {
        for group in [Some(0), Some(1), Some(usize::MAX), None] {
            let gauge = Gauge::default();
            let mut fan = FanOut::new(config);
            let root = fan.read(ReadSpec::new("root", 3_usize), gauge.read("root", ms(1), 3));
            let g = gauge.clone();
            let members = fan.fan_after("group", group, root, move |n: Arc<usize>| {
                (0..*n)
                    .map(|i| {
                        GroupRead::new(
                            ReadSpec::new(format!("m{i}"), 0_usize),
                            g.read(&format!("m{i}"), ms(1), i + 1),
                        )
                    })
                    .collect()
            });
            for i in 0..3 {
                fan.read(
                    ReadSpec::new(format!("r{i}"), ()),
                    gauge.read(&format!("r{i}"), ms(1), ()),
                );
            }
            let report = join(fan).await;
            assert!(report.is_complete(), "{config:?} {group:?}: {report:?}");
            assert_eq!(*members.value(), vec![1, 2, 3]);
            assert!(report.peak_in_flight >= 1);
            assert_eq!(gauge.calls().len(), 7);
        }
    }
}

// covers X5: the report's Deserialize impl (it is public) never panics on out-of-range
// durations — negative, huge or beyond Duration::MAX — it returns an error or a value.
#[tokio::test(start_paused = true)]
async fn x5_deserialising_a_report_with_extreme_durations_never_panics() {
    let mut fan = FanOut::new(FanOutConfig::default());
    fan.read(ReadSpec::new("ok", ()), async { Ok::<_, Infallible>(()) });
    fan.read(
        ReadSpec::new("hung", ()).timeout(ms(10)),
        std::future::pending::<Result<(), Infallible>>(),
    );
    fan.read(ReadSpec::new("bad", ()), async {
        Err::<(), _>(std::io::Error::other("no"))
    });
    let report = join(fan).await;
    let json = serde_json::to_value(&report).unwrap();
    let back: FanOutReport = serde_json::from_value(json.clone()).expect("round trip");
    assert_eq!(back.reads.len(), 3);

    for extreme in [-1.0, -1e300, 1e300, 1.8446744073709552e22, f64::MAX] {
        let mut value = json.clone();
        set_numbers(&mut value, extreme);
        let outcome = std::panic::catch_unwind(|| serde_json::from_value::<FanOutReport>(value));
        assert!(
            outcome.is_ok(),
            "deserialising durations of {extreme} panicked"
        );
    }
}

/// Set every float in `value` (the `*_ms` fields) to `x`.
fn set_numbers(value: &mut serde_json::Value, x: f64) {
    match value {
        serde_json::Value::Number(n) if n.is_f64() => *value = serde_json::json!(x),
        serde_json::Value::Array(items) => items.iter_mut().for_each(|v| set_numbers(v, x)),
        serde_json::Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                if key.ends_with("_ms") {
                    *v = serde_json::json!(x);
                } else {
                    set_numbers(v, x);
                }
            }
        }
        _ => {}
    }
}

// ---------------------------------------------------------------------------------------------
// warmup_status over testkit's Kubernetes API server (W2, W3, X5), in real time.
// ---------------------------------------------------------------------------------------------

// covers W3, W2 (seed: "every expected Kubernetes URL is issued exactly once across the parallel
// fan-out", "non-200 responses degrade to empty defaults instead of raising"): with 30 pods, a
// 500 on the configmap and one log tail that never answers, every other URL is still requested
// exactly once, the hung one at most once, the two failures degrade with a reason, and the
// status comes back.
#[tokio::test]
async fn seed001_every_url_once_while_one_read_fails_and_one_hangs() {
    let (server, client) = serve(30).await;
    let hung = log_path("warmup-pod-03");
    server.inject(
        Route::exact(format!("/api/v1/namespaces/{NS}/configmaps/warmup")),
        Fault::status(500),
    );
    server.inject(
        Route::exact(hung.clone()),
        Fault::latency(Duration::from_secs(120)),
    );
    let timeout = Duration::from_secs(3);
    let status = tokio::time::timeout(
        Duration::from_secs(60),
        warmup_status(client, NS, &WarmupOptions::default().read_timeout(timeout)),
    )
    .await
    .expect("the status came back without waiting for the hung read");

    let mut expected: Vec<_> = top_level_reads()
        .iter()
        .map(|(_, path, query)| get(path, query))
        .collect();
    for i in 0..12 {
        let path = log_path(&format!("warmup-pod-{i:02}"));
        if path != hung {
            expected.push(get(&path, &[("tailLines", "50")]));
        }
    }
    expected.sort();
    let seen_all = seen(&server);
    let others: Vec<_> = seen_all.iter().filter(|s| s.1 != hung).cloned().collect();
    assert_eq!(others, expected);
    assert!(server.count(&hung) <= 1, "the hung log was retried");

    assert!(!status.complete);
    let configmap = status.reads.get("configmap").unwrap();
    assert!(
        configmap.outcome.describe().starts_with("HTTP 500"),
        "{configmap:?}"
    );
    assert_eq!(
        status.reads.get("log/warmup-pod-03").unwrap().outcome,
        Outcome::TimedOut { after: timeout }
    );
    let failed: Vec<_> = status.reads.failures().map(|r| r.name.as_str()).collect();
    assert_eq!(failed, ["configmap", "log/warmup-pod-03"]);
    // The defaults: no generation, no databases; everything else is there.
    assert_eq!((status.generation, status.databases.len()), (None, 0));
    assert_eq!(status.nodes.len(), 4);
    assert_eq!(status.jobs.len(), 3);
    assert_eq!(
        (
            status.logs.pods,
            status.logs.requested,
            status.logs.read,
            status.logs.skipped
        ),
        (30, 12, 11, 18)
    );
}

// covers W1, W3: the log tails start once the pod list is in — after it, and before a slow
// unrelated top-level read (the configmap) ends; stale marking starts only after the configmap.
#[tokio::test]
async fn w3_log_tails_start_after_the_pod_list_not_after_the_slowest_read() {
    let (server, client) = serve(4).await;
    server.inject(
        Route::exact(format!("/api/v1/namespaces/{NS}/pods")),
        Fault::latency(ms(300)),
    );
    server.inject(
        Route::exact(format!("/api/v1/namespaces/{NS}/configmaps/warmup")),
        Fault::latency(Duration::from_secs(4)),
    );
    let status = warmup_status(
        client,
        NS,
        &WarmupOptions::default().read_timeout(Duration::from_secs(30)),
    )
    .await;
    assert!(status.complete, "{:?}", status.reads);

    let end = |name: &str| {
        let row = status.reads.get(name).unwrap();
        row.started_after + row.duration
    };
    let pods_end = end("pods");
    let configmap_end = end("configmap");
    assert!(pods_end >= ms(300));
    assert!(configmap_end >= Duration::from_secs(4));
    for i in 0..4 {
        let row = status.reads.get(&format!("log/warmup-pod-{i:02}")).unwrap();
        assert_eq!(row.phase, 2);
        assert!(
            row.started_after >= pods_end,
            "{row:?} started before the pod list was in"
        );
        assert!(
            row.started_after < configmap_end,
            "{row:?} waited for the configmap"
        );
    }
    let stale = status.reads.get("stale_nodes").unwrap();
    assert!(stale.started_after >= configmap_end, "{stale:?}");
    assert!(stale.started_after >= end("jobs") && stale.started_after >= end("nodes"));
}

// covers W1 (counted at the server): with a bound of 2 and every request held 50 ms, the server
// never sees more than 2 requests at once, and every URL is still requested once.
#[tokio::test]
async fn w1_the_bound_holds_at_the_server_counted() {
    let (server, client) = serve(8).await;
    server.inject(Route::Any, Fault::latency(ms(50)));
    let status = warmup_status(client, NS, &WarmupOptions::default().max_in_flight(2)).await;
    assert!(status.complete, "{:?}", status.reads);
    assert!(
        server.peak_in_flight() <= 2,
        "server saw {}",
        server.peak_in_flight()
    );
    assert!(status.reads.peak_in_flight <= 2);
    assert_eq!(server.requests().len(), 6 + 8);
    let mut urls: Vec<_> = server.requests().iter().map(|r| r.url()).collect();
    urls.sort();
    urls.dedup();
    assert_eq!(urls.len(), 6 + 8, "a URL was requested twice");
}

// covers W3, X5: at most 12 log tails with 30 pods, however the options ask for more — through
// the builder or by writing the public field directly.
#[tokio::test]
async fn w3_never_more_than_twelve_log_tails_whatever_the_options() {
    let mut field = WarmupOptions::default();
    field.max_logs = 1_000;
    for options in [WarmupOptions::default().max_logs(usize::MAX), field] {
        let (server, client) = serve(30).await;
        let status = warmup_status(client, NS, &options).await;
        let logs = server
            .requests()
            .iter()
            .filter(|r| r.path.ends_with("/log"))
            .count();
        assert_eq!(logs, MAX_LOG_TAILS, "{options:?}");
        assert_eq!((status.logs.requested, status.logs.skipped), (12, 18));
        assert!(
            status
                .reads
                .reads
                .iter()
                .filter(|r| r.name.starts_with("log/"))
                .count()
                <= 12
        );
    }
}

// covers X5: the builders clamp every knob into its documented range (SPEC X5: "any value a
// builder accepts, including Duration::MAX, is clamped or rejected"): 1–64 requests in flight,
// 50 ms–120 s per read, 0–12 log tails, 1–5000 lines, 0–500 warnings.
#[test]
fn x5_builders_clamp_into_the_documented_ranges() {
    let high = WarmupOptions::default()
        .max_in_flight(usize::MAX)
        .read_timeout(Duration::MAX)
        .max_logs(usize::MAX)
        .tail_lines(i64::MAX)
        .max_warnings(usize::MAX);
    assert_eq!(high.max_in_flight, 64);
    assert_eq!(high.read_timeout, Duration::from_secs(120));
    assert_eq!(high.max_logs, 12);
    assert_eq!(high.tail_lines, 5_000);
    assert_eq!(high.max_warnings, 500);

    let low = WarmupOptions::default()
        .max_in_flight(0)
        .read_timeout(Duration::ZERO)
        .max_logs(0)
        .tail_lines(i64::MIN)
        .max_warnings(0);
    assert_eq!(low.max_in_flight, 1);
    assert_eq!(low.read_timeout, ms(50));
    assert_eq!(low.max_logs, 0);
    assert_eq!(low.tail_lines, 1);
    assert_eq!(low.max_warnings, 0);

    // The defaults are finite and documented.
    let d = WarmupOptions::default();
    assert_eq!(
        (
            d.max_in_flight,
            d.read_timeout,
            d.max_logs,
            d.tail_lines,
            d.max_warnings
        ),
        (12, Duration::from_secs(10), 12, 50, 20)
    );
    let c = FanOutConfig::default();
    assert_eq!(
        (c.max_in_flight, c.default_timeout),
        (12, Duration::from_secs(10))
    );
}

// covers X5, P8: environment values never panic; out of range is clamped into the documented
// range, garbage is the default.
#[test]
fn x5_environment_knobs_never_panic_and_clamp() {
    let defaults = (12, Duration::from_secs(10), 12, 50, 20);
    for raw in [
        "99999999999999999999999999",
        "18446744073709551615",
        "9223372036854775807",
        "-1",
        "",
        "abc",
        "0",
        "1e9",
    ] {
        let o = WarmupOptions::from_lookup(|name| {
            name.starts_with("WARMUP_FANOUT_").then(|| raw.to_string())
        });
        let got = (
            o.max_in_flight,
            o.read_timeout,
            o.max_logs,
            o.tail_lines,
            o.max_warnings,
        );
        assert!((1..=64).contains(&o.max_in_flight), "{raw:?}: {got:?}");
        assert!(
            o.read_timeout >= ms(50) && o.read_timeout <= Duration::from_secs(120),
            "{raw:?}: {got:?}"
        );
        assert!(
            o.max_logs <= 12 && (1..=5_000).contains(&o.tail_lines) && o.max_warnings <= 500,
            "{raw:?}: {got:?}"
        );
        match raw {
            "0" => assert_eq!(got, (1, ms(50), 0, 1, 0)),
            // -1 parses as tail lines (an i64) and is clamped; the unsigned knobs ignore it.
            "-1" => assert_eq!(got, (12, Duration::from_secs(10), 12, 1, 20)),
            "" | "abc" | "1e9" => assert_eq!(got, defaults, "{raw:?}"),
            "9223372036854775807" => {
                assert_eq!(got, (64, Duration::from_secs(120), 12, 5_000, 500))
            }
            _ => {}
        }
    }
}

// covers X5: options whose public fields bypass the builders (0 requests in flight, Duration::MAX
// or ZERO per read, 0 or negative tail lines) still give a status: no panic, no deadlock.
#[tokio::test]
async fn x5_options_written_directly_never_panic_or_hang() {
    let (_server, client) = serve(4).await;
    let mut cases = Vec::new();
    let mut o = WarmupOptions::default();
    o.max_in_flight = 0;
    cases.push(("max_in_flight = 0", o));
    let mut o = WarmupOptions::default();
    o.max_in_flight = usize::MAX;
    cases.push(("max_in_flight = usize::MAX", o));
    let mut o = WarmupOptions::default();
    o.read_timeout = Duration::MAX;
    cases.push(("read_timeout = MAX", o));
    let mut o = WarmupOptions::default();
    o.tail_lines = 0;
    cases.push(("tail_lines = 0", o));
    let mut o = WarmupOptions::default();
    o.tail_lines = -7;
    cases.push(("tail_lines = -7", o));
    let mut o = WarmupOptions::default();
    o.max_warnings = usize::MAX;
    cases.push(("max_warnings = MAX", o));
    for (what, options) in cases {
        let status = tokio::time::timeout(
            Duration::from_secs(60),
            warmup_status(client.clone(), NS, &options),
        )
        .await
        .unwrap_or_else(|_| panic!("{what}: warmup_status hung"));
        assert_eq!(status.nodes.len(), 4, "{what}: {:?}", status.reads);
        assert!(status.reads.get("jobs").unwrap().outcome.is_ok(), "{what}");
    }

    let mut o = WarmupOptions::default();
    o.read_timeout = Duration::ZERO;
    let status = tokio::time::timeout(
        Duration::from_secs(60),
        warmup_status(client.clone(), NS, &o),
    )
    .await
    .expect("read_timeout = 0: warmup_status hung");
    assert_eq!(
        status.reads.reads.iter().filter(|r| r.phase == 1).count(),
        6
    );
}
