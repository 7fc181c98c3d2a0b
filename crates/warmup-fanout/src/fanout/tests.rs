//! Unit tests of the engine in paused virtual time, with fake reads that count.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::{Instant, sleep};

use super::*;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Counts calls, reads in flight and the peak of reads in flight.
#[derive(Debug, Default)]
struct Probe {
    calls: AtomicUsize,
    now: AtomicUsize,
    peak: AtomicUsize,
}

impl Probe {
    /// A read that takes `delay` and returns `value`.
    fn read<T: Send + 'static>(
        self: &Arc<Self>,
        delay: Duration,
        value: T,
    ) -> impl Future<Output = Result<T, BoxError>> + Send + use<T> {
        let probe = Arc::clone(self);
        async move {
            probe.calls.fetch_add(1, Ordering::SeqCst);
            let now = probe.now.fetch_add(1, Ordering::SeqCst) + 1;
            probe.peak.fetch_max(now, Ordering::SeqCst);
            sleep(delay).await;
            probe.now.fetch_sub(1, Ordering::SeqCst);
            Ok(value)
        }
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn peak(&self) -> usize {
        self.peak.load(Ordering::SeqCst)
    }
}

fn fan(max_in_flight: usize) -> FanOut {
    FanOut::new(
        FanOutConfig::default()
            .max_in_flight(max_in_flight)
            .default_timeout(Duration::from_secs(10)),
    )
}

// covers W1, W4: independent reads overlap; wall time is the slowest read, not the sum.
#[tokio::test(start_paused = true)]
async fn independent_reads_run_concurrently_so_wall_time_is_the_slowest() {
    let probe = Arc::new(Probe::default());
    let mut fan = fan(6);
    let handles: Vec<_> = (1..=6_u64)
        .map(|i| fan.read(ReadSpec::new(format!("r{i}"), 0), probe.read(ms(10 * i), i)))
        .collect();
    let start = Instant::now();
    let report = fan.join().await;

    assert_eq!(start.elapsed(), ms(60));
    assert_eq!(probe.calls(), 6);
    assert_eq!(probe.peak(), 6);
    assert!(report.is_complete());
    assert_eq!(report.phases(), 1);
    let values: Vec<u64> = handles.iter().map(|h| *h.value()).collect();
    assert_eq!(values, [1, 2, 3, 4, 5, 6]);
    assert_eq!(report.get("r4").unwrap().duration, ms(40));
}

// covers W1: never more than the bound in flight, counted by the reads themselves.
#[tokio::test(start_paused = true)]
async fn the_bound_limits_reads_in_flight() {
    let probe = Arc::new(Probe::default());
    let mut fan = fan(3);
    for i in 0..20 {
        fan.read(ReadSpec::new(format!("r{i}"), ()), probe.read(ms(10), ()));
    }
    let start = Instant::now();
    let report = fan.join().await;

    assert_eq!(probe.calls(), 20);
    assert_eq!(probe.peak(), 3);
    assert_eq!(report.peak_in_flight, 3);
    // ceil(20 / 3) rounds of 10 ms.
    assert_eq!(start.elapsed(), ms(70));
}

// covers W1: a dependent read starts when *its* dependency is in, not when the phase ends.
#[tokio::test(start_paused = true)]
async fn a_dependent_read_starts_when_its_dependency_is_in_not_when_the_phase_ends() {
    let probe = Arc::new(Probe::default());
    let mut fan = fan(8);
    let fast = fan.read(ReadSpec::new("fast", 0), probe.read(ms(10), 21));
    let _slow = fan.read(ReadSpec::new("slow", 0), probe.read(ms(100), 1));
    let p = Arc::clone(&probe);
    let doubled = fan.read_after(ReadSpec::new("doubled", 0), fast, move |fast| {
        p.read(ms(5), *fast * 2)
    });
    assert!(!doubled.is_resolved());
    let report = fan.join().await;

    assert_eq!(*doubled.value(), 42);
    let row = report.get("doubled").unwrap();
    assert_eq!(row.phase, 2);
    assert_eq!(row.started_after, ms(10));
    assert_eq!(row.duration, ms(5));
    assert_eq!(report.elapsed, ms(100));
    assert_eq!(report.phases(), 2);
}

// covers W1: a tuple of dependencies; phase = deepest + 1.
#[tokio::test(start_paused = true)]
async fn a_read_waits_for_every_dependency_and_gets_their_values() {
    let probe = Arc::new(Probe::default());
    let mut fan = fan(8);
    let a = fan.read(ReadSpec::new("a", 0), probe.read(ms(10), 1));
    let b = fan.read(ReadSpec::new("b", 0), probe.read(ms(30), 2));
    let c = fan.read_after(ReadSpec::new("c", 0), b.clone(), |b| async move {
        Ok::<_, BoxError>(*b + 10)
    });
    let sum = fan.read_after(ReadSpec::new("sum", 0), (a, b, c), |(a, b, c)| async move {
        Ok::<_, BoxError>(*a + *b + *c)
    });
    let report = fan.join().await;

    assert_eq!(*sum.value(), 1 + 2 + 12);
    assert_eq!(report.get("c").unwrap().phase, 2);
    assert_eq!(report.get("sum").unwrap().phase, 3);
    assert_eq!(report.get("sum").unwrap().started_after, ms(30));
    let names: Vec<&str> = report.reads.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["a", "b", "c", "sum"]);
}

// covers W2: an error degrades that read to its default; siblings (slower ones too) finish.
#[tokio::test(start_paused = true)]
async fn a_failed_read_degrades_to_its_default_and_siblings_finish() {
    let probe = Arc::new(Probe::default());
    let mut fan = fan(8);
    let failed = fan.read(ReadSpec::new("failed", vec![7]), async {
        sleep(ms(5)).await;
        Err::<Vec<i32>, _>(std::io::Error::other("HTTP 500 Internal Server Error"))
    });
    let slow = fan.read(ReadSpec::new("slow", 0), probe.read(ms(50), 5));
    let dependent = fan.read_after(
        ReadSpec::new("dependent", 0),
        failed.clone(),
        |v| async move { Ok::<_, BoxError>(v.len()) },
    );
    let report = fan.join().await;

    assert_eq!(*failed.value(), vec![7]);
    assert_eq!(*slow.value(), 5);
    assert_eq!(*dependent.value(), 1, "the dependent got the default");
    assert_eq!(
        report.get("failed").unwrap().outcome,
        Outcome::Degraded {
            reason: "HTTP 500 Internal Server Error".into()
        }
    );
    assert!(report.get("slow").unwrap().outcome.is_ok());
    assert_eq!(report.failures().count(), 1);
    assert!(!report.is_complete());
}

// covers W1, W2: per-read timeout and the default timeout; a timeout cancels only that read.
#[tokio::test(start_paused = true)]
async fn a_slow_read_times_out_to_its_default_without_cancelling_siblings() {
    let probe = Arc::new(Probe::default());
    let mut fan = FanOut::new(FanOutConfig::default().default_timeout(ms(200)));
    let own = fan.read(
        ReadSpec::new("own-timeout", 1).timeout(ms(50)),
        probe.read(Duration::from_secs(3600), 2),
    );
    let default = fan.read(
        ReadSpec::new("default-timeout", 3),
        probe.read(Duration::from_secs(3600), 4),
    );
    let sibling = fan.read(ReadSpec::new("sibling", 0), probe.read(ms(150), 6));
    let report = fan.join().await;

    assert_eq!(
        (*own.value(), *default.value(), *sibling.value()),
        (1, 3, 6)
    );
    let row = report.get("own-timeout").unwrap();
    assert_eq!(row.outcome, Outcome::TimedOut { after: ms(50) });
    assert_eq!(row.duration, ms(50));
    assert_eq!(
        report.get("default-timeout").unwrap().outcome,
        Outcome::TimedOut { after: ms(200) }
    );
    assert!(report.get("sibling").unwrap().outcome.is_ok());
    assert_eq!(report.elapsed, ms(200));
}

async fn panicking_future() -> Result<u32, BoxError> {
    sleep(ms(1)).await;
    panic!("boom in the future");
}

// covers W2: panics in a read, in a dependent's closure and in a group's builder are contained.
#[tokio::test(start_paused = true)]
async fn panics_are_contained_per_read() {
    let probe = Arc::new(Probe::default());
    let mut fan = fan(4);
    let in_future = fan.read(ReadSpec::new("in-future", 1_u32), panicking_future());
    let ok = fan.read(ReadSpec::new("ok", 0_u32), probe.read(ms(20), 9));
    let in_closure = fan.read_after(
        ReadSpec::new("in-closure", 2_u32),
        ok.clone(),
        |_| -> futures::future::Ready<Result<u32, BoxError>> { panic!("boom in the closure") },
    );
    let group = fan.fan_after("group", None, ok.clone(), |_| -> Vec<GroupRead<u32>> {
        panic!("boom in the builder")
    });
    let after_panic = fan.read_after(
        ReadSpec::new("after", 0_u32),
        in_future.clone(),
        |v| async move { Ok::<_, BoxError>(*v + 1) },
    );
    let report = fan.join().await;

    assert_eq!(*in_future.value(), 1);
    assert_eq!(*in_closure.value(), 2);
    assert!(group.value().is_empty());
    assert_eq!(*after_panic.value(), 2);
    assert_eq!(*ok.value(), 9);
    let reason = |name: &str| report.get(name).unwrap().outcome.describe();
    assert_eq!(reason("in-future"), "read panicked: boom in the future");
    assert_eq!(reason("in-closure"), "read panicked: boom in the closure");
    assert!(reason("group").contains("panicked"), "{}", reason("group"));
    assert_eq!(report.failures().count(), 3);
}

// covers W1, W3 (shape): a group runs one read per input under its own bound, each reported.
#[tokio::test(start_paused = true)]
async fn a_group_runs_members_under_its_own_bound_and_reports_each() {
    let probe = Arc::new(Probe::default());
    let mut fan = fan(20);
    let pods = fan.read(
        ReadSpec::new("pods", Vec::new()),
        probe.read(ms(10), (0..30).collect::<Vec<u32>>()),
    );
    let p = Arc::clone(&probe);
    let logs = fan.fan_after("logs", Some(12), pods, move |pods| {
        pods.iter()
            .map(|&pod| {
                let spec = ReadSpec::new(format!("log/{pod}"), u32::MAX);
                if pod == 7 {
                    GroupRead::new(spec, async { Err::<u32, _>(std::io::Error::other("gone")) })
                } else {
                    GroupRead::new(spec, p.read(ms(10), pod * 10))
                }
            })
            .collect()
    });
    let report = fan.join().await;

    assert_eq!(probe.calls(), 1 + 29);
    assert_eq!(probe.peak(), 12);
    let values = logs.value();
    assert_eq!(values.len(), 30);
    assert_eq!(values[3], 30);
    assert_eq!(values[7], u32::MAX, "the failed member has its default");
    assert_eq!(report.reads.len(), 31);
    assert_eq!(report.reads[1].name, "log/0");
    assert_eq!(report.reads[30].name, "log/29");
    assert_eq!(report.get("log/5").unwrap().phase, 2);
    assert_eq!(report.failures().count(), 1);
    // pods at 10 ms, then 29 timed members in rounds of 12 (the failing one takes no time).
    assert_eq!(report.elapsed, ms(40));
}

// covers W1: the group bound and the global bound both hold.
#[tokio::test(start_paused = true)]
async fn the_global_bound_also_caps_a_group() {
    let probe = Arc::new(Probe::default());
    let mut fan = fan(4);
    let p = Arc::clone(&probe);
    fan.fan_after("group", Some(12), (), move |()| {
        (0..12)
            .map(|i| GroupRead::new(ReadSpec::new(format!("m{i}"), ()), p.read(ms(10), ())))
            .collect()
    });
    let report = fan.join().await;
    assert_eq!(probe.calls(), 12);
    assert_eq!(probe.peak(), 4);
    assert_eq!(report.elapsed, ms(30));
}

#[tokio::test(start_paused = true)]
async fn a_handle_holds_the_default_until_its_read_finishes() {
    let mut fan = fan(1);
    let slow = fan.read(ReadSpec::new("slow", 1), async {
        sleep(ms(10)).await;
        Ok::<_, BoxError>(2)
    });
    assert_eq!(*slow.value(), 1);
    assert_eq!(slow.phase(), 1);
    assert_eq!(slow.name(), "slow");
    fan.join().await;
    assert!(slow.is_resolved());
    assert_eq!(*slow.value(), 2);
}

#[tokio::test(start_paused = true)]
async fn an_empty_fan_out_reports_nothing() {
    let report = fan(1).join().await;
    assert_eq!(report, FanOutReport::default());
    assert_eq!(report.phases(), 0);
    assert!(report.is_complete());
}

#[test]
fn reports_serialise_with_status_tags_and_milliseconds() {
    let row = ReadReport {
        name: "configmap".into(),
        phase: 1,
        outcome: Outcome::TimedOut { after: ms(250) },
        started_after: ms(0),
        duration: Duration::from_micros(250_500),
    };
    let json = serde_json::to_value(&row).unwrap();
    assert_eq!(
        json,
        serde_json::json!({
            "name": "configmap", "phase": 1, "status": "timed_out", "after_ms": 250.0,
            "started_after_ms": 0.0, "duration_ms": 250.5
        })
    );
    let back: ReadReport = serde_json::from_value(json).unwrap();
    assert_eq!(back, row);
}

#[test]
fn error_chains_name_every_cause_once() {
    #[derive(Debug)]
    struct Outer(std::io::Error);
    impl std::fmt::Display for Outer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("listing nodes")
        }
    }
    impl std::error::Error for Outer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }
    let error = Outer(std::io::Error::other("connection reset"));
    assert_eq!(run::error_chain(&error), "listing nodes: connection reset");
}
