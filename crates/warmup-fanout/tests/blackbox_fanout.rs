//! Black-box attacks on `warmup-fanout` through its public API only, asserting what SPEC W1–W3,
//! X2, X5, the seed-001 write-up and docs/warmup-fanout.md promise.
//!
//! The engine tests run in paused virtual time; the `warmup_status` tests use testkit's
//! in-process Kubernetes API server on real sockets and assert orderings and generous bounds.

mod support;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::batch::v1::{JobCondition, JobStatus};
use k8s_openapi::api::core::v1::{Container, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use testkit::k8s::{Fault, Fixtures, K8sServer, Route};
use warmup_fanout::{
    BoxError, ChipState, FanOut, FanOutConfig, FanOutReport, GroupRead, Handle, MAX_READ_TIMEOUT,
    Outcome, ReadSpec, StaleReason, WarmupOptions, WarmupStatus, warmup_status,
};

use support::{NS, WARMUP, log_path};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

// ---------------------------------------------------------------------------------------------
// Engine helpers
// ---------------------------------------------------------------------------------------------

/// Counts read bodies in flight (decremented on drop, so cancellation and panics count too).
#[derive(Clone, Default)]
struct Gauge {
    now: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
    started: Arc<AtomicUsize>,
    runs: Arc<Mutex<BTreeMap<String, usize>>>,
}

struct InFlight(Gauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What a fake read does after its work time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Ok,
    Err,
    Panic,
    Hang,
}

impl Gauge {
    fn enter(&self, name: &str) -> InFlight {
        *self
            .runs
            .lock()
            .unwrap()
            .entry(name.to_string())
            .or_default() += 1;
        self.started.fetch_add(1, Ordering::SeqCst);
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
        InFlight(self.clone())
    }

    /// A read called `name` that works `took` (virtual time), then behaves as `kind`.
    fn read<T: Send + 'static>(
        &self,
        name: &str,
        took: Duration,
        kind: Kind,
        value: T,
    ) -> impl Future<Output = Result<T, BoxError>> + Send + use<T> {
        let gauge = self.clone();
        let name = name.to_string();
        async move {
            let _guard = gauge.enter(&name);
            tokio::time::sleep(took).await;
            match kind {
                Kind::Ok => Ok(value),
                Kind::Err => Err(format!("{name} failed").into()),
                Kind::Panic => panic!("{name} exploded"),
                Kind::Hang => std::future::pending().await,
            }
        }
    }

    fn peak(&self) -> usize {
        self.peak.load(Ordering::SeqCst)
    }

    fn now(&self) -> usize {
        self.now.load(Ordering::SeqCst)
    }

    fn runs(&self) -> BTreeMap<String, usize> {
        self.runs.lock().unwrap().clone()
    }
}

/// Sets a flag when dropped: proves a read's future was dropped (cancelled).
struct DropFlag(Arc<AtomicBool>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

fn flag() -> (Arc<AtomicBool>, DropFlag) {
    let f = Arc::new(AtomicBool::new(false));
    (Arc::clone(&f), DropFlag(f))
}

/// Join, failing instead of hanging if the fan-out does not finish within a virtual day.
async fn join(fan: FanOut) -> FanOutReport {
    tokio::time::timeout(secs(86_400), fan.join())
        .await
        .expect("the fan-out finished")
}

fn alive_tasks() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

fn row<'a>(report: &'a FanOutReport, name: &str) -> &'a warmup_fanout::ReadReport {
    report
        .get(name)
        .unwrap_or_else(|| panic!("no row {name}: {report:?}"))
}

fn ok<T>(v: T) -> Result<T, Infallible> {
    Ok(v)
}

// ---------------------------------------------------------------------------------------------
// W1: the bound, timeouts, dependencies (virtual time)
// ---------------------------------------------------------------------------------------------

// W1: the bound is never exceeded across phase-1 reads, dependents, a group (whose own bound is
// higher) and reads that fail, panic or time out; the report's peak is what the reads saw.
#[tokio::test(start_paused = true)]
async fn w1_bound_holds_across_phases_groups_failures_panics_and_timeouts() {
    let gauge = Gauge::default();
    let mut fan = FanOut::new(
        FanOutConfig::default()
            .max_in_flight(3)
            .default_timeout(ms(50)),
    );
    let kinds = [Kind::Ok, Kind::Err, Kind::Panic, Kind::Hang];
    let mut phase1: Vec<Handle<u32>> = Vec::new();
    for i in 0..12 {
        let name = format!("p1-{i}");
        let kind = kinds[i % 4];
        phase1.push(fan.read(
            ReadSpec::new(name.clone(), 0_u32),
            gauge.read(&name, ms(5 + i as u64), kind, 1),
        ));
    }
    for (i, dep) in phase1.iter().enumerate().take(6) {
        let name = format!("p2-{i}");
        let g = gauge.clone();
        let kind = kinds[(i + 1) % 4];
        fan.read_after(ReadSpec::new(name.clone(), 0_u32), dep.clone(), move |v| {
            g.read(&name, ms(7), kind, *v + 1)
        });
    }
    let g = gauge.clone();
    let group = fan.fan_after("group", Some(12), phase1[0].clone(), move |_| {
        (0..10)
            .map(|i| {
                let name = format!("member-{i}");
                GroupRead::new(
                    ReadSpec::new(name.clone(), 0_u32),
                    g.read(&name, ms(3), kinds[i % 4], 9),
                )
            })
            .collect()
    });
    let g = gauge.clone();
    fan.read_after(ReadSpec::new("p3", 0_usize), group.clone(), move |v| {
        g.read("p3", ms(1), Kind::Ok, v.len())
    });
    let report = join(fan).await;

    assert!(gauge.peak() <= 3, "reads saw {} in flight", gauge.peak());
    assert!(report.peak_in_flight <= 3, "{}", report.peak_in_flight);
    assert_eq!(report.peak_in_flight, gauge.peak());
    assert_eq!(gauge.now(), 0, "a read body is still alive after join");
    assert_eq!(report.reads.len(), 12 + 6 + 10 + 1);
    let runs = gauge.runs();
    assert_eq!(runs.len(), 29, "{runs:?}");
    assert!(runs.values().all(|&n| n == 1), "a read ran twice: {runs:?}");
    assert_eq!(group.value().len(), 10);
    // Only the `Kind::Ok` reads keep their value: 9 + 5 + 7 failures; the phase-3 read is Ok.
    assert_eq!(report.failures().count(), 21, "{report:?}");
    assert!(row(&report, "p3").outcome.is_ok());
    assert_eq!(*group.value(), {
        let mut v = vec![0_u32; 10];
        for i in [0, 4, 8] {
            v[i] = 9;
        }
        v
    });
}

// W1 (docs: the timeout "covers the read's own run, not the wait for dependencies or a permit").
#[tokio::test(start_paused = true)]
async fn w1_timeout_excludes_the_wait_for_a_permit() {
    let gauge = Gauge::default();
    let mut fan = FanOut::new(FanOutConfig::default().max_in_flight(1));
    fan.read(
        ReadSpec::new("hog", ()).timeout(secs(10)),
        gauge.read("hog", secs(5), Kind::Ok, ()),
    );
    let short = fan.read(
        ReadSpec::new("short", 0_u8).timeout(secs(2)),
        gauge.read("short", secs(1), Kind::Ok, 7),
    );
    let report = join(fan).await;
    assert_eq!(row(&report, "short").outcome, Outcome::Ok, "{report:?}");
    assert_eq!(*short.value(), 7);
    assert!(row(&report, "short").started_after >= secs(5));
    assert_eq!(row(&report, "short").duration, secs(1));
    assert_eq!(report.elapsed, secs(6));
}

// W1: a dependent's timeout does not count the time its dependency took.
#[tokio::test(start_paused = true)]
async fn w1_timeout_excludes_the_wait_for_dependencies() {
    let gauge = Gauge::default();
    let mut fan = FanOut::new(FanOutConfig::default().default_timeout(secs(1)));
    let slow = fan.read(
        ReadSpec::new("slow", 1_u8).timeout(secs(10)),
        gauge.read("slow", secs(5), Kind::Ok, 2),
    );
    let g = gauge.clone();
    let dep = fan.read_after(ReadSpec::new("dep", 0_u8), slow, move |v| {
        g.read("dep", ms(500), Kind::Ok, *v * 10)
    });
    let report = join(fan).await;
    assert_eq!(row(&report, "dep").outcome, Outcome::Ok, "{report:?}");
    assert_eq!(*dep.value(), 20);
    assert!(row(&report, "dep").started_after >= secs(5));
}

// W1: a group member's timeout excludes the wait for the group's (and the fan-out's) permit.
#[tokio::test(start_paused = true)]
async fn w1_group_member_timeout_excludes_the_wait_for_the_group_permit() {
    let gauge = Gauge::default();
    let mut fan = FanOut::new(FanOutConfig::default());
    let g = gauge.clone();
    let members = fan.fan_after("serial", Some(1), (), move |()| {
        (0..4)
            .map(|i| {
                let name = format!("m{i}");
                GroupRead::new(
                    ReadSpec::new(name.clone(), 0_usize).timeout(ms(1_500)),
                    g.read(&name, secs(1), Kind::Ok, i + 1),
                )
            })
            .collect()
    });
    let report = join(fan).await;
    assert!(report.is_complete(), "{report:?}");
    assert_eq!(*members.value(), vec![1, 2, 3, 4]);
    assert_eq!(gauge.peak(), 1, "the group bound of 1 was exceeded");
    assert_eq!(report.elapsed, secs(4));
}

// W1/W2: a timed-out read is dropped at its timeout and gives its slot back at once.
#[tokio::test(start_paused = true)]
async fn w1_a_timed_out_read_is_cancelled_at_its_timeout_and_frees_its_slot() {
    let (dropped, guard) = flag();
    let mut fan = FanOut::new(FanOutConfig::default().max_in_flight(1));
    let hung = fan.read(ReadSpec::new("hung", 3_u8).timeout(secs(1)), async move {
        let _guard = guard;
        std::future::pending::<Result<u8, Infallible>>().await
    });
    let seen_dropped = Arc::clone(&dropped);
    let next = fan.read(ReadSpec::new("next", false), async move {
        ok(seen_dropped.load(Ordering::SeqCst))
    });
    let report = join(fan).await;
    assert_eq!(*hung.value(), 3);
    assert_eq!(
        row(&report, "hung").outcome,
        Outcome::TimedOut { after: secs(1) }
    );
    assert_eq!(row(&report, "hung").duration, secs(1));
    assert!(
        *next.value(),
        "the next read started before the hung one was dropped"
    );
    assert_eq!(row(&report, "next").started_after, secs(1));
    assert_eq!(report.elapsed, secs(1));
}

// Docs: "A timeout of zero times a read out unless it is ready on its first poll."
#[tokio::test(start_paused = true)]
async fn x5_zero_timeout_ready_on_first_poll_is_ok_else_times_out() {
    for via_default in [false, true] {
        let config = if via_default {
            FanOutConfig::default().default_timeout(Duration::ZERO)
        } else {
            FanOutConfig::default()
        };
        let spec = |name: &str| {
            let s = ReadSpec::new(name.to_string(), 0_u8);
            if via_default {
                s
            } else {
                s.timeout(Duration::ZERO)
            }
        };
        let mut fan = FanOut::new(config);
        let ready = fan.read(spec("ready"), async { ok(1_u8) });
        let yields = fan.read(spec("yields"), async {
            tokio::task::yield_now().await;
            ok(2_u8)
        });
        let report = join(fan).await;
        assert_eq!(*ready.value(), 1, "via_default={via_default}: {report:?}");
        assert_eq!(row(&report, "ready").outcome, Outcome::Ok);
        assert_eq!(*yields.value(), 0);
        assert_eq!(
            row(&report, "yields").outcome,
            Outcome::TimedOut {
                after: Duration::ZERO
            }
        );
    }
}

// X5: Duration::MAX is taken as MAX_READ_TIMEOUT (1 h) — reported as such, ending at 1 h.
#[tokio::test(start_paused = true)]
async fn x5_duration_max_timeout_is_clamped_to_exactly_one_hour() {
    assert_eq!(MAX_READ_TIMEOUT, secs(3_600));
    let mut field = FanOutConfig::default();
    field.default_timeout = Duration::MAX;
    for config in [
        FanOutConfig::default().default_timeout(Duration::MAX),
        field,
    ] {
        let mut fan = FanOut::new(config);
        fan.read(
            ReadSpec::new("hung-default", ()),
            std::future::pending::<Result<(), Infallible>>(),
        );
        fan.read(
            ReadSpec::new("hung-own", ()).timeout(Duration::MAX),
            std::future::pending::<Result<(), Infallible>>(),
        );
        let report = join(fan).await;
        for r in &report.reads {
            assert_eq!(
                r.outcome,
                Outcome::TimedOut {
                    after: MAX_READ_TIMEOUT
                },
                "{r:?}"
            );
        }
        assert_eq!(report.elapsed, MAX_READ_TIMEOUT);
    }
}

// X5 / docs: "a bound of 0 is taken as 1" (builder, public field, and a group's own bound).
#[tokio::test(start_paused = true)]
async fn x5_a_zero_bound_runs_exactly_one_read_at_a_time() {
    let mut field = FanOutConfig::default();
    field.max_in_flight = 0;
    for config in [FanOutConfig::default().max_in_flight(0), field] {
        let gauge = Gauge::default();
        let mut fan = FanOut::new(config);
        for i in 0..5 {
            let name = format!("r{i}");
            fan.read(
                ReadSpec::new(name.clone(), ()),
                gauge.read(&name, ms(10), Kind::Ok, ()),
            );
        }
        let report = join(fan).await;
        assert!(report.is_complete());
        assert_eq!(gauge.peak(), 1, "{config:?}");
        assert_eq!(report.peak_in_flight, 1);
        assert_eq!(report.elapsed, ms(50));
    }
    let gauge = Gauge::default();
    let mut fan = FanOut::new(FanOutConfig::default().max_in_flight(64));
    let g = gauge.clone();
    fan.fan_after("zero", Some(0), (), move |()| {
        (0..5)
            .map(|i| {
                let name = format!("g{i}");
                GroupRead::new(
                    ReadSpec::new(name.clone(), ()),
                    g.read(&name, ms(10), Kind::Ok, ()),
                )
            })
            .collect()
    });
    let report = join(fan).await;
    assert!(report.is_complete());
    assert_eq!(gauge.peak(), 1, "group bound 0 must be taken as 1");
    assert_eq!(report.elapsed, ms(50));
}

// W1: phases follow the deepest dependency, for reads, groups and handles alike; deep chains
// and six-handle tuples work.
#[tokio::test(start_paused = true)]
async fn w1_phases_follow_the_deepest_dependency() {
    let mut fan = FanOut::new(FanOutConfig::default());
    let a = fan.read(ReadSpec::new("a", 1_u32), async { ok(1_u32) });
    let b = fan.read_after(ReadSpec::new("b", 0_u32), a.clone(), |a| async move {
        ok(*a + 1)
    });
    let c = fan.read_after(
        ReadSpec::new("c", 0_u32),
        (a.clone(), b.clone()),
        |(a, b)| async move { ok(*a + *b) },
    );
    let d = fan.read_after(ReadSpec::new("d", 5_u32), (), |()| async { ok(4_u32) });
    let g = fan.fan_after("g", None, c.clone(), |c| {
        vec![GroupRead::new(ReadSpec::new("g0", 0_u32), async move {
            ok(*c * 2)
        })]
    });
    let six = fan.read_after(
        ReadSpec::new("six", 0_u32),
        (
            a.clone(),
            b.clone(),
            c.clone(),
            d.clone(),
            a.clone(),
            b.clone(),
        ),
        |(a, b, c, d, e, f)| async move { ok(*a + *b + *c + *d + *e + *f) },
    );
    let mut last = a.clone();
    for i in 0..100 {
        last = fan.read_after(
            ReadSpec::new(format!("chain-{i}"), 0_u32),
            last,
            |v| async move { ok(*v + 1) },
        );
    }
    assert_eq!(
        (a.phase(), b.phase(), c.phase(), d.phase(), g.phase()),
        (1, 2, 3, 1, 4)
    );
    assert_eq!(six.phase(), 4);
    assert_eq!(last.phase(), 101);
    let report = join(fan).await;
    assert!(report.is_complete(), "{report:?}");
    assert_eq!(row(&report, "g0").phase, 4);
    assert_eq!(row(&report, "d").phase, 1);
    assert_eq!(row(&report, "six").phase, 4);
    assert_eq!(report.phases(), 101);
    assert_eq!(
        (*c.value(), *d.value(), *six.value()),
        (3, 4, 1 + 2 + 3 + 4 + 1 + 2)
    );
    assert_eq!(*g.value(), vec![6]);
    assert_eq!(*last.value(), 101);
}

// W1: a group's handle gives the members' values in member order (defaults for failures),
// rows sit where the group was registered, in the group's order.
#[tokio::test(start_paused = true)]
async fn w1_group_values_and_rows_keep_member_and_registration_order() {
    let gauge = Gauge::default();
    let mut fan = FanOut::new(FanOutConfig::default().default_timeout(secs(1)));
    let before = fan.read(ReadSpec::new("before", 0_u8).timeout(secs(10)), async {
        tokio::time::sleep(secs(3)).await;
        ok(1_u8)
    });
    let g = gauge.clone();
    let kinds = [
        Kind::Ok,
        Kind::Err,
        Kind::Ok,
        Kind::Panic,
        Kind::Hang,
        Kind::Ok,
    ];
    let group = fan.fan_after("grp", None, (), move |()| {
        kinds
            .iter()
            .enumerate()
            .map(|(i, kind)| {
                let name = format!("m{i}");
                // Later members finish first.
                GroupRead::new(
                    ReadSpec::new(name.clone(), 100 + i),
                    g.read(&name, ms(100 * (6 - i as u64)), *kind, i),
                )
            })
            .collect()
    });
    fan.read(ReadSpec::new("after", ()), async { ok(()) });
    let report = join(fan).await;
    assert_eq!(*before.value(), 1);
    assert_eq!(*group.value(), vec![0, 101, 2, 103, 104, 5]);
    let names: Vec<_> = report.reads.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        names,
        ["before", "m0", "m1", "m2", "m3", "m4", "m5", "after"]
    );
    assert!(matches!(
        row(&report, "m1").outcome,
        Outcome::Degraded { .. }
    ));
    assert!(matches!(
        row(&report, "m3").outcome,
        Outcome::Degraded { .. }
    ));
    assert_eq!(
        row(&report, "m4").outcome,
        Outcome::TimedOut { after: secs(1) }
    );
    let failed: Vec<_> = report.failures().map(|r| r.name.as_str()).collect();
    assert_eq!(failed, ["m1", "m3", "m4"]);
}

// W1: an empty group resolves to an empty Vec and its dependents run.
#[tokio::test(start_paused = true)]
async fn w1_an_empty_group_resolves_to_an_empty_vec() {
    let mut fan = FanOut::new(FanOutConfig::default());
    let pods = fan.read(ReadSpec::new("pods", vec!["x".to_string()]), async {
        ok(Vec::<String>::new())
    });
    let logs = fan.fan_after("logs", Some(12), pods, |pods: Arc<Vec<String>>| {
        pods.iter()
            .map(|p| GroupRead::new(ReadSpec::new(p.clone(), 0_u8), async { ok(1_u8) }))
            .collect()
    });
    let count = fan.read_after(
        ReadSpec::new("count", 99_usize),
        logs.clone(),
        |l| async move { ok(l.len()) },
    );
    let report = join(fan).await;
    assert!(report.is_complete(), "{report:?}");
    assert!(logs.is_resolved());
    assert!(logs.value().is_empty());
    assert_eq!(*count.value(), 0);
}

// W2 (docs: "A panic (in the future or in the closure that builds it) gives Degraded
// { reason: "read panicked: …" }"): a panic in a group's builder closure is contained and
// reported; the group resolves to no members and its dependents run.
#[tokio::test(start_paused = true)]
async fn w2_a_panic_in_the_group_builder_is_contained_and_reported() {
    let mut fan = FanOut::new(FanOutConfig::default());
    let sibling = fan.read(ReadSpec::new("sibling", 0_u8), async { ok(1_u8) });
    let group = fan.fan_after("builder", Some(2), (), |()| -> Vec<GroupRead<u8>> {
        panic!("the builder exploded")
    });
    let after = fan.read_after(
        ReadSpec::new("after", 9_usize),
        group.clone(),
        |g| async move { ok(g.len()) },
    );
    let report = join(fan).await;
    assert_eq!(*sibling.value(), 1);
    assert!(group.is_resolved());
    assert!(group.value().is_empty());
    assert_eq!(*after.value(), 0);
    assert!(
        !report.is_complete(),
        "the builder's panic went unreported: {report:?}"
    );
    assert!(
        report.failures().any(|r| matches!(&r.outcome,
            Outcome::Degraded { reason } if reason.contains("panicked"))),
        "{report:?}"
    );
}

// W2: a panicking read gives its slot back (bound 1), with any panic payload.
#[tokio::test(start_paused = true)]
async fn w2_panics_of_any_payload_free_their_slot_and_are_reported() {
    let mut fan = FanOut::new(FanOutConfig::default().max_in_flight(1));
    fan.read(ReadSpec::new("str", 1_u8), async {
        if true {
            panic!("static text");
        }
        ok(0_u8)
    });
    fan.read(ReadSpec::new("string", 2_u8), async {
        if true {
            panic!("formatted {}", 42);
        }
        ok(0_u8)
    });
    fan.read(ReadSpec::new("any", 3_u8), async {
        if true {
            std::panic::panic_any(42_u64);
        }
        ok(0_u8)
    });
    let last = fan.read(ReadSpec::new("last", 0_u8), async { ok(4_u8) });
    let report = join(fan).await;
    assert_eq!(*last.value(), 4);
    assert_eq!(row(&report, "last").outcome, Outcome::Ok);
    for (name, text) in [
        ("str", Some("static text")),
        ("string", Some("formatted 42")),
        ("any", None),
    ] {
        match &row(&report, name).outcome {
            Outcome::Degraded { reason } => {
                assert!(reason.starts_with("read panicked"), "{name}: {reason}");
                if let Some(text) = text {
                    assert!(reason.contains(text), "{name}: {reason}");
                }
            }
            other => panic!("{name}: {other:?}"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("outer layer")]
struct Outer(#[source] Middle);

#[derive(Debug, thiserror::Error)]
#[error("middle layer")]
struct Middle(#[source] std::io::Error);

// W2 (docs: "`reason` is the error's source chain"): every level, outermost first.
#[tokio::test(start_paused = true)]
async fn w2_the_reason_is_the_whole_source_chain_outermost_first() {
    let mut fan = FanOut::new(FanOutConfig::default());
    fan.read(ReadSpec::new("chain", ()), async {
        Err::<(), _>(Outer(Middle(std::io::Error::other("innermost cause"))))
    });
    fan.read(ReadSpec::new("boxed", ()), async {
        Err::<(), BoxError>("plain text".into())
    });
    let report = join(fan).await;
    match &row(&report, "chain").outcome {
        Outcome::Degraded { reason } => {
            let o = reason.find("outer layer").expect(reason);
            let m = reason.find("middle layer").expect(reason);
            let i = reason.find("innermost cause").expect(reason);
            assert!(o < m && m < i, "{reason}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        row(&report, "boxed").outcome,
        Outcome::Degraded {
            reason: "plain text".into()
        }
    );
    assert_eq!(report.failures().count(), 2);
}

// Handle: the default until resolved; `resolved()` can be awaited from outside the fan-out.
#[tokio::test(start_paused = true)]
async fn handle_value_is_the_default_until_resolved_and_resolved_waits() {
    let mut fan = FanOut::new(FanOutConfig::default());
    let h = fan.read(ReadSpec::new("h", 1_u8), async {
        tokio::time::sleep(secs(2)).await;
        ok(2_u8)
    });
    assert_eq!(h.name(), "h");
    assert!(!h.is_resolved());
    assert_eq!(*h.value(), 1);
    let waiter = tokio::spawn({
        let h = h.clone();
        async move { *h.resolved().await }
    });
    tokio::time::sleep(secs(1)).await;
    assert!(!h.is_resolved());
    assert_eq!(*h.value(), 1);
    let report = join(fan).await;
    assert!(report.is_complete());
    assert!(h.is_resolved());
    assert_eq!(*h.value(), 2);
    assert_eq!(waiter.await.unwrap(), 2);
}

// Report: started_after counts from the FanOut's creation, duration is the read's own time,
// elapsed ends with the last read; a timed-out read's duration is its timeout.
#[tokio::test(start_paused = true)]
async fn report_times_are_measured_from_creation() {
    let mut fan = FanOut::new(FanOutConfig::default());
    tokio::time::sleep(secs(1)).await;
    fan.read(ReadSpec::new("two", ()), async {
        tokio::time::sleep(secs(2)).await;
        ok(())
    });
    fan.read(
        ReadSpec::new("timeout", ()).timeout(ms(1_500)),
        std::future::pending::<Result<(), Infallible>>(),
    );
    let report = join(fan).await;
    let two = row(&report, "two");
    assert_eq!((two.started_after, two.duration), (secs(1), secs(2)));
    let t = row(&report, "timeout");
    assert_eq!((t.started_after, t.duration), (secs(1), ms(1_500)));
    assert_eq!(report.elapsed, secs(3));
}

// Report JSON matches the documented shape (status tag, reason / after_ms, *_ms fields).
#[tokio::test(start_paused = true)]
async fn report_json_has_the_documented_shape() {
    let mut fan = FanOut::new(FanOutConfig::default());
    fan.read(ReadSpec::new("ok", ()), async { ok(()) });
    fan.read(ReadSpec::new("bad", ()), async {
        Err::<(), BoxError>("nope".into())
    });
    fan.read(
        ReadSpec::new("slow", ()).timeout(secs(2)),
        std::future::pending::<Result<(), Infallible>>(),
    );
    let report = join(fan).await;
    let json = serde_json::to_value(&report).unwrap();
    let reads = json["reads"].as_array().unwrap();
    assert_eq!(reads[0]["status"], "ok");
    assert_eq!(reads[1]["status"], "degraded");
    assert_eq!(reads[1]["reason"], "nope");
    assert_eq!(reads[2]["status"], "timed_out");
    assert_eq!(reads[2]["after_ms"].as_f64(), Some(2_000.0));
    for r in reads {
        for key in ["name", "phase", "started_after_ms", "duration_ms"] {
            assert!(r.get(key).is_some(), "{key} missing in {r}");
        }
    }
    assert_eq!(json["elapsed_ms"].as_f64(), Some(2_000.0));
    assert!(json.get("peak_in_flight").is_some());
    let back: FanOutReport = serde_json::from_value(json).unwrap();
    assert_eq!(back, report);
}

// Scale: thousands of reads through 12 slots, bounded, each once, rows in order.
#[tokio::test(start_paused = true)]
async fn w1_five_thousand_reads_stay_bounded_and_in_order() {
    let gauge = Gauge::default();
    let mut fan = FanOut::new(FanOutConfig::default());
    for i in 0..5_000 {
        let name = format!("r{i:04}");
        fan.read(
            ReadSpec::new(name.clone(), ()),
            gauge.read(&name, ms(1), Kind::Ok, ()),
        );
    }
    let report = join(fan).await;
    assert_eq!(gauge.peak(), 12);
    assert_eq!(report.peak_in_flight, 12);
    assert_eq!(report.elapsed, ms(5_000_u64.div_ceil(12)));
    assert!(report.is_complete());
    assert!(
        report
            .reads
            .iter()
            .enumerate()
            .all(|(i, r)| r.name == format!("r{i:04}"))
    );
    assert_eq!(gauge.runs().len(), 5_000);
}

// Undocumented input: duplicate names never panic; each read keeps its own row and value.
#[tokio::test(start_paused = true)]
async fn duplicate_read_names_keep_separate_rows_and_values() {
    let mut fan = FanOut::new(FanOutConfig::default());
    let a = fan.read(ReadSpec::new("same", 0_u8), async { ok(1_u8) });
    let b = fan.read(ReadSpec::new("same", 0_u8), async {
        Err::<u8, BoxError>("second failed".into())
    });
    let report = join(fan).await;
    assert_eq!((*a.value(), *b.value()), (1, 0));
    assert_eq!(report.reads.len(), 2);
    assert!(report.reads.iter().all(|r| r.name == "same"));
    assert_eq!(report.failures().count(), 1);
}

// ---------------------------------------------------------------------------------------------
// Cancellation: dropping the FanOut or its join future stops every read, leaks no task
// ---------------------------------------------------------------------------------------------

// Docs: "Dropping a FanOut before join cancels its reads." Running reads are dropped, reads
// waiting for a permit or a dependency never start, and no task is left alive.
#[tokio::test(start_paused = true)]
async fn dropping_the_fanout_cancels_running_waiting_and_dependent_reads() {
    let baseline = alive_tasks();
    let started = Arc::new(AtomicUsize::new(0));
    let (dropped, guard) = flag();
    let mut fan = FanOut::new(FanOutConfig::default().max_in_flight(1));
    let running = fan.read(
        ReadSpec::new("running", 0_u8).timeout(secs(3_000)),
        async move {
            let _guard = guard;
            std::future::pending::<Result<u8, Infallible>>().await
        },
    );
    let s = Arc::clone(&started);
    fan.read(ReadSpec::new("waiting", ()), async move {
        s.fetch_add(1, Ordering::SeqCst);
        ok(())
    });
    let s = Arc::clone(&started);
    fan.read_after(
        ReadSpec::new("dependent", ()),
        running.clone(),
        move |_| async move {
            s.fetch_add(1, Ordering::SeqCst);
            ok(())
        },
    );
    let s = Arc::clone(&started);
    fan.fan_after("group", None, running.clone(), move |_| {
        vec![GroupRead::new(ReadSpec::new("member", ()), async move {
            s.fetch_add(1, Ordering::SeqCst);
            ok(())
        })]
    });
    tokio::time::sleep(ms(10)).await;
    assert!(alive_tasks() > baseline, "reads should be spawned tasks");
    drop(fan);
    tokio::time::sleep(secs(7_200)).await;
    assert!(
        dropped.load(Ordering::SeqCst),
        "the running read was not dropped"
    );
    assert_eq!(
        started.load(Ordering::SeqCst),
        0,
        "a read started after the drop"
    );
    assert_eq!(
        alive_tasks(),
        baseline,
        "tasks leaked after dropping the FanOut"
    );
    // The handle of a cancelled read still answers (its default), without hanging.
    let v = tokio::time::timeout(secs(1), running.resolved())
        .await
        .expect("resolved() hangs on a cancelled read");
    assert_eq!(*v, 0);
}

// Cancelling the join future (e.g. the caller's own timeout) cancels the reads too.
#[tokio::test(start_paused = true)]
async fn cancelling_the_join_future_cancels_the_reads() {
    let baseline = alive_tasks();
    let (dropped, guard) = flag();
    let started_late = Arc::new(AtomicBool::new(false));
    let mut fan = FanOut::new(FanOutConfig::default().max_in_flight(1));
    fan.read(ReadSpec::new("hung", ()).timeout(secs(3_000)), async move {
        let _guard = guard;
        std::future::pending::<Result<(), Infallible>>().await
    });
    let s = Arc::clone(&started_late);
    fan.read(ReadSpec::new("queued", ()), async move {
        s.store(true, Ordering::SeqCst);
        ok(())
    });
    let out = tokio::time::timeout(ms(100), fan.join()).await;
    assert!(out.is_err(), "join should still be waiting");
    tokio::time::sleep(secs(7_200)).await;
    assert!(
        dropped.load(Ordering::SeqCst),
        "the hung read outlived its join"
    );
    assert!(
        !started_late.load(Ordering::SeqCst),
        "a queued read ran after cancel"
    );
    assert_eq!(
        alive_tasks(),
        baseline,
        "tasks leaked after cancelling join"
    );
}

// A dependency on a handle of another fan-out that was dropped: the dependent never hangs.
#[tokio::test(start_paused = true)]
async fn a_dependency_on_a_dropped_fanouts_handle_does_not_hang() {
    let mut other = FanOut::new(FanOutConfig::default());
    let foreign = other.read(
        ReadSpec::new("foreign", 5_u8).timeout(secs(3_000)),
        std::future::pending::<Result<u8, Infallible>>(),
    );
    let mut fan = FanOut::new(FanOutConfig::default());
    let dep = fan.read_after(
        ReadSpec::new("dep", 0_u8),
        foreign.clone(),
        |f| async move { ok(*f + 1) },
    );
    tokio::time::sleep(ms(1)).await;
    drop(other);
    let report = tokio::time::timeout(secs(60), fan.join())
        .await
        .expect("a dependent waited on a read whose fan-out was dropped");
    assert_eq!(report.reads.len(), 1);
    assert_eq!(*foreign.value(), 5);
    // Either the dependent ran on the default (6) or it degraded to its own default (0).
    assert!([0, 6].contains(&*dep.value()), "{}", dep.value());
}

// X2: the crate makes no process-wide choice (no metrics recorder, no tracing subscriber).
#[tokio::test(start_paused = true)]
async fn x2_no_global_metrics_recorder_or_tracing_subscriber_is_installed() {
    let mut fan = FanOut::new(FanOutConfig::default());
    fan.read(ReadSpec::new("x", ()), async {
        Err::<(), BoxError>("x".into())
    });
    join(fan).await;
    let _ = WarmupOptions::from_lookup(|_| Some("garbage".into()));
    assert!(
        metrics::set_global_recorder(metrics::NoopRecorder).is_ok(),
        "a global metrics recorder was already installed"
    );
    assert!(
        tracing::subscriber::set_global_default(tracing::subscriber::NoSubscriber::default())
            .is_ok(),
        "a global tracing subscriber was already installed"
    );
}

// ---------------------------------------------------------------------------------------------
// warmup_status over testkit's Kubernetes API server (real time)
// ---------------------------------------------------------------------------------------------

async fn serve_fixtures(f: Fixtures) -> (K8sServer, kube::Client) {
    let server = K8sServer::with_fixtures(f).await.expect("start the server");
    let client = server.client_cert().await.expect("client");
    (server, client)
}

fn at(second: i64) -> Time {
    Time(Timestamp::from_second(1_780_000_000 + second).unwrap())
}

/// A warmup job for `node` (if any) at `generation` (if any), created at `created`.
fn job(
    f: &mut Fixtures,
    name: &str,
    node: Option<&str>,
    generation: Option<u64>,
    state: &str,
    created: i64,
) {
    let mut labels = WARMUP.to_string();
    if let Some(node) = node {
        labels.push_str(&format!(",warmup/node={node}"));
    }
    if let Some(g) = generation {
        labels.push_str(&format!(",warmup/generation={g}"));
    }
    f.job(NS, name, &labels);
    let job = f.jobs.last_mut().unwrap();
    job.metadata.creation_timestamp = Some(at(created));
    let condition = |type_: &str| {
        Some(vec![JobCondition {
            type_: type_.into(),
            status: "True".into(),
            ..JobCondition::default()
        }])
    };
    job.status = Some(match state {
        "succeeded" => JobStatus {
            succeeded: Some(1),
            conditions: condition("Complete"),
            ..JobStatus::default()
        },
        "failed" => JobStatus {
            failed: Some(1),
            conditions: condition("Failed"),
            ..JobStatus::default()
        },
        "running" => JobStatus {
            active: Some(1),
            ..JobStatus::default()
        },
        _ => JobStatus::default(),
    });
}

fn pod(f: &mut Fixtures, name: &str, node: &str, phase: &str, log: &str) {
    f.pod(NS, name, WARMUP, node, Some(log));
    let p = f.pods.last_mut().unwrap();
    p.status = Some(PodStatus {
        phase: Some(phase.into()),
        ..PodStatus::default()
    });
}

fn log_requests(server: &K8sServer) -> Vec<(String, BTreeMap<String, String>)> {
    let mut out: Vec<_> = support::seen(server)
        .into_iter()
        .filter(|(_, path, _)| path.ends_with("/log"))
        .map(|(_, path, query)| (path, query))
        .collect();
    out.sort();
    out
}

fn chips(status: &WarmupStatus, node: &str) -> Vec<(String, ChipState, Option<u8>)> {
    status
        .nodes
        .iter()
        .find(|n| n.name == node)
        .unwrap_or_else(|| panic!("no node {node}"))
        .databases
        .iter()
        .map(|c| (c.name.clone(), c.state, c.percent))
        .collect()
}

fn stale(status: &WarmupStatus, node: &str) -> Option<StaleReason> {
    status
        .nodes
        .iter()
        .find(|n| n.name == node)
        .unwrap_or_else(|| panic!("no node {node}"))
        .stale
        .clone()
}

fn assert_each_url_once(server: &K8sServer) {
    let urls: Vec<String> = server.requests().iter().map(|r| r.url()).collect();
    let mut dedup = urls.clone();
    dedup.sort();
    dedup.dedup();
    assert_eq!(
        urls.len(),
        dedup.len(),
        "a URL was requested twice: {urls:?}"
    );
}

// W2/W3: an empty namespace (no configmap, no daemonset, no nodes): a status, six requests,
// the 404s reported as such.
#[tokio::test]
async fn w3_an_empty_cluster_gives_a_status_with_each_url_once() {
    let mut f = Fixtures::empty();
    f.event(NS, "Normal", "Nothing", ("Pod", "none"), "nothing");
    let (server, client) = serve_fixtures(f).await;
    let status = warmup_status(client, NS, &WarmupOptions::default()).await;
    assert_eq!(server.requests().len(), 6, "{:?}", support::seen(&server));
    assert_each_url_once(&server);
    assert!(status.nodes.is_empty() && status.jobs.is_empty() && status.warnings.is_empty());
    assert_eq!((status.generation, status.databases.len()), (None, 0));
    assert!(status.daemonset.is_none());
    assert_eq!(
        (
            status.logs.pods,
            status.logs.requested,
            status.logs.read,
            status.logs.skipped
        ),
        (0, 0, 0, 0)
    );
    for read in ["configmap", "daemonset"] {
        let why = status.reads.get(read).unwrap().outcome.describe();
        assert!(why.starts_with("HTTP 404"), "{read}: {why}");
    }
    assert!(!status.complete);
}

// W3 (docs: "Pods for log tails are picked as Running first, then Succeeded or Failed, then the
// rest, by name within each group"), with hundreds of warmup pods: 12 tails, each once.
#[tokio::test]
async fn w3_hundreds_of_pods_give_twelve_tails_running_first_then_finished_by_name() {
    let mut f = Fixtures::empty();
    f.node("n", "", true);
    for i in 0..200 {
        pod(&mut f, &format!("a-pending-{i:03}"), "n", "Pending", "");
    }
    for i in 10..15 {
        pod(&mut f, &format!("r-{i}"), "n", "Running", "");
    }
    for i in 0..10 {
        pod(&mut f, &format!("s-{i:02}"), "n", "Succeeded", "");
        pod(&mut f, &format!("f-{i:02}"), "n", "Failed", "");
    }
    let (server, client) = serve_fixtures(f).await;
    let status = warmup_status(client, NS, &WarmupOptions::default()).await;
    let mut expected: Vec<String> = (10..15).map(|i| log_path(&format!("r-{i}"))).collect();
    expected.extend((0..7).map(|i| log_path(&format!("f-{i:02}"))));
    expected.sort();
    let got: Vec<String> = log_requests(&server).into_iter().map(|(p, _)| p).collect();
    assert_eq!(got, expected);
    assert_each_url_once(&server);
    assert_eq!(
        (
            status.logs.pods,
            status.logs.requested,
            status.logs.read,
            status.logs.skipped
        ),
        (225, 12, 12, 213)
    );
    assert_eq!(server.requests().len(), 6 + 12);
}

// W3: max_logs(0) reads no tail; the pods are still counted as skipped.
#[tokio::test]
async fn w3_max_logs_zero_reads_no_tails() {
    let (server, client) = support::serve(5).await;
    let status = warmup_status(client, NS, &WarmupOptions::default().max_logs(0)).await;
    assert!(log_requests(&server).is_empty());
    assert_eq!(server.requests().len(), 6);
    assert_eq!(
        (
            status.logs.pods,
            status.logs.requested,
            status.logs.read,
            status.logs.skipped
        ),
        (5, 0, 0, 5)
    );
    assert!(status.complete, "{:?}", status.reads);
}

// X5 / docs: "a value written into [the public fields] directly is clamped again by
// warmup_status before use" — the tailLines actually sent is within 1–5000.
#[tokio::test]
async fn x5_tail_lines_written_directly_are_clamped_in_the_request() {
    for (lines, expected) in [(i64::MAX, "5000"), (-5, "1"), (0, "1"), (77, "77")] {
        let (server, client) = support::serve(1).await;
        let mut options = WarmupOptions::default();
        options.tail_lines = lines;
        let _ = warmup_status(client, NS, &options).await;
        let logs = log_requests(&server);
        assert_eq!(logs.len(), 1, "{lines}");
        assert_eq!(
            logs[0].1.get("tailLines").map(String::as_str),
            Some(expected),
            "tail_lines {lines}"
        );
    }
}

// W3 (docs: "A pod with several containers gets the first container's log, unless
// log_container is set").
#[tokio::test]
async fn w3_multi_container_pods_log_the_first_container_or_the_configured_one() {
    let mut f = Fixtures::empty();
    f.node("n", "", true);
    pod(&mut f, "multi", "n", "Running", "warmup db=a state=ready\n");
    let spec = f.pods.last_mut().unwrap().spec.as_mut().unwrap();
    spec.containers = ["first", "agent"]
        .iter()
        .map(|n| Container {
            name: (*n).into(),
            ..Container::default()
        })
        .collect();
    for (options, container) in [
        (WarmupOptions::default(), "first"),
        (WarmupOptions::default().log_container("agent"), "agent"),
    ] {
        let (server, client) = serve_fixtures(f.clone()).await;
        let status = warmup_status(client, NS, &options).await;
        let logs = log_requests(&server);
        assert_eq!(logs.len(), 1);
        assert_eq!(
            logs[0].1.get("container").map(String::as_str),
            Some(container),
            "{logs:?}"
        );
        assert!(status.reads.get("log/multi").unwrap().outcome.is_ok());
    }
}

// W3: the node selector is sent on the nodes read only.
#[tokio::test]
async fn w3_the_node_selector_is_sent_on_the_nodes_read() {
    let (server, client) = support::serve(0).await;
    let status = warmup_status(
        client,
        NS,
        &WarmupOptions::default().node_selector("pool=warm"),
    )
    .await;
    let nodes: Vec<_> = support::seen(&server)
        .into_iter()
        .filter(|(_, p, _)| p == "/api/v1/nodes")
        .collect();
    assert_eq!(nodes.len(), 1);
    assert_eq!(
        nodes[0].2.get("labelSelector").map(String::as_str),
        Some("pool=warm")
    );
    assert_eq!(status.nodes.len(), 4);
    assert_eq!(server.requests().len(), 6);
}

// W3 stale marking: the newest job (by creation time) decides; unlabelled is outdated; a
// newer-generation job is current; no job is missing. Databases parsed per the docs.
#[tokio::test]
async fn w3_stale_marking_follows_the_newest_job() {
    let mut f = Fixtures::empty();
    for n in ["n-a", "n-b", "n-c", "n-d", "n-e"] {
        f.node(n, "", true);
    }
    f.daemonset(NS, "warmup", "app=warmup-agent");
    f.configmap(
        NS,
        "warmup",
        &[
            ("databases", "orders,users\n# a comment\n\norders\nitems"),
            ("generation", "5"),
        ],
    );
    // n-a: an old failed job, then a newer succeeded one.
    job(&mut f, "z-old-a", Some("n-a"), Some(5), "failed", 100);
    job(&mut f, "a-new-a", Some("n-a"), Some(5), "succeeded", 200);
    // n-b: an old succeeded job, then a newer failed one.
    job(&mut f, "a-old-b", Some("n-b"), Some(5), "succeeded", 100);
    job(&mut f, "z-new-b", Some("n-b"), Some(5), "failed", 200);
    // n-c: no generation label.
    job(&mut f, "job-c", Some("n-c"), None, "running", 150);
    // n-d: a generation above the configmap's.
    job(&mut f, "job-d", Some("n-d"), Some(6), "succeeded", 150);
    let (_server, client) = serve_fixtures(f).await;
    let status = warmup_status(client, NS, &WarmupOptions::default()).await;

    assert_eq!(status.generation, Some(5));
    assert_eq!(status.databases, ["orders", "users", "items"]);
    assert_eq!(stale(&status, "n-a"), None);
    assert_eq!(
        status
            .nodes
            .iter()
            .find(|n| n.name == "n-a")
            .unwrap()
            .job
            .as_deref(),
        Some("a-new-a")
    );
    assert_eq!(
        stale(&status, "n-b"),
        Some(StaleReason::Failed {
            job: "z-new-b".into()
        })
    );
    assert_eq!(
        stale(&status, "n-c"),
        Some(StaleReason::Outdated {
            job: "job-c".into(),
            job_generation: None,
            current: 5
        })
    );
    assert_eq!(stale(&status, "n-d"), None);
    assert_eq!(stale(&status, "n-e"), Some(StaleReason::Missing));
    let all = |s: ChipState| vec![s; 3];
    let states = |n: &str| {
        chips(&status, n)
            .into_iter()
            .map(|c| c.1)
            .collect::<Vec<_>>()
    };
    assert_eq!(states("n-a"), all(ChipState::Ready));
    assert_eq!(states("n-b"), all(ChipState::Failed));
    assert_eq!(states("n-c"), all(ChipState::Stale));
    assert_eq!(states("n-d"), all(ChipState::Ready));
    assert_eq!(states("n-e"), all(ChipState::Missing));
    // Jobs newest first.
    let created: Vec<_> = status.jobs.iter().map(|j| j.created.clone()).collect();
    let mut sorted = created.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(created, sorted, "jobs are not newest first");
    assert!(status.complete, "{:?}", status.reads);
}

// W3 (docs: generation "missing or invalid … no node is marked outdated"; the configmap's
// default on failure is "no generation"): missing/failed still hold, outdated does not.
#[tokio::test]
async fn w3_an_unknown_generation_marks_no_node_outdated() {
    let build = |generation: &str| {
        let mut f = Fixtures::empty();
        for n in ["n-a", "n-b", "n-c"] {
            f.node(n, "", true);
        }
        f.configmap(
            NS,
            "warmup",
            &[("databases", "orders"), ("generation", generation)],
        );
        job(&mut f, "job-a", Some("n-a"), Some(1), "succeeded", 100);
        job(&mut f, "job-b", Some("n-b"), None, "failed", 100);
        f
    };
    for (generation, fail_configmap) in [("not-a-number", false), ("-3", false), ("9", true)] {
        let (server, client) = serve_fixtures(build(generation)).await;
        if fail_configmap {
            server.inject(
                Route::exact(format!("/api/v1/namespaces/{NS}/configmaps/warmup")),
                Fault::status(500),
            );
        }
        let status = warmup_status(client, NS, &WarmupOptions::default()).await;
        let case = format!("generation {generation:?}, configmap failing {fail_configmap}");
        assert_eq!(status.generation, None, "{case}");
        assert_eq!(stale(&status, "n-a"), None, "{case}");
        assert_eq!(
            stale(&status, "n-b"),
            Some(StaleReason::Failed {
                job: "job-b".into()
            }),
            "{case}"
        );
        assert_eq!(stale(&status, "n-c"), Some(StaleReason::Missing), "{case}");
    }
}

// W3 log progress lines (docs: tokens after `warmup`; bad pct dropped; unknown state reads as
// unknown; no state + pct=100 is ready; last line wins; Running pods' logs preferred; a pod
// with no nodeName is placed by its `warmup/node` label).
#[tokio::test]
async fn w3_progress_lines_drive_the_chips() {
    let mut f = Fixtures::empty();
    f.node("n-a", "", true).node("n-b", "", true);
    f.daemonset(NS, "warmup", "app=warmup-agent");
    f.configmap(
        NS,
        "warmup",
        &[
            ("databases", "orders\nusers\nitems\nidle"),
            ("generation", "2"),
        ],
    );
    job(&mut f, "job-a", Some("n-a"), Some(2), "succeeded", 100);
    job(&mut f, "job-b", Some("n-b"), Some(2), "running", 100);
    let running = "2026-05-22T10:00:00Z INFO warmup db=orders state=staging pct=10\n\
                   warmup db=users pct=100\n\
                   noise db=users state=failed pct=3\n\
                   ts WARN warmup color=blue db=items state=staging pct=abc\n\
                   warmup db=orders state=bogus pct=50\n\
                   warmup db=not-configured state=ready\n";
    pod(&mut f, "pod-running", "n-a", "Running", running);
    pod(
        &mut f,
        "pod-done",
        "n-a",
        "Succeeded",
        "warmup db=orders state=ready pct=100\n",
    );
    // n-b: a pod without nodeName, placed by its label.
    f.pod(
        NS,
        "pod-labelled",
        &format!("{WARMUP},warmup/node=n-b"),
        "",
        Some("warmup db=idle pct=30\n"),
    );
    f.pods.last_mut().unwrap().spec.as_mut().unwrap().node_name = None;
    let (_server, client) = serve_fixtures(f).await;
    let status = warmup_status(client, NS, &WarmupOptions::default()).await;
    assert!(status.complete, "{:?}", status.reads);
    assert_eq!(
        chips(&status, "n-a"),
        [
            ("orders".into(), ChipState::Unknown, Some(50)),
            ("users".into(), ChipState::Ready, Some(100)),
            ("items".into(), ChipState::Staging, None),
            ("idle".into(), ChipState::Ready, None),
        ]
    );
    let n_b = status.nodes.iter().find(|n| n.name == "n-b").unwrap();
    assert_eq!(n_b.pods, ["pod-labelled"]);
    assert_eq!(
        chips(&status, "n-b"),
        [
            ("orders".into(), ChipState::Staging, None),
            ("users".into(), ChipState::Staging, None),
            ("items".into(), ChipState::Staging, None),
            ("idle".into(), ChipState::Staging, Some(30)),
        ]
    );
}

// W3: warnings are newest first and capped at max_warnings; Normal events are not warnings.
#[tokio::test]
async fn w3_warnings_are_newest_first_and_capped() {
    let mut f = Fixtures::empty();
    for i in 0..5 {
        f.event(NS, "Warning", &format!("R{i}"), ("Pod", "p"), "m");
        f.events.last_mut().unwrap().last_timestamp = Some(at(i));
    }
    f.event(NS, "Normal", "Fine", ("Pod", "p"), "m");
    f.events.last_mut().unwrap().last_timestamp = Some(at(99));
    let (_server, client) = serve_fixtures(f.clone()).await;
    let status = warmup_status(client, NS, &WarmupOptions::default().max_warnings(2)).await;
    let reasons: Vec<_> = status.warnings.iter().map(|w| w.reason.as_str()).collect();
    assert_eq!(reasons, ["R4", "R3"]);
    assert_eq!(status.warnings[0].object, "Pod/p");
    let (_server, client) = serve_fixtures(f).await;
    let status = warmup_status(client, NS, &WarmupOptions::default().max_warnings(0)).await;
    assert!(status.warnings.is_empty());
    assert!(status.reads.get("warnings").unwrap().outcome.is_ok());
}

// W2: garbage bodies on every route: each read degrades with the documented reason, the status
// comes back, nothing is retried.
#[tokio::test]
async fn w2_garbage_everywhere_degrades_every_read_with_its_reason() {
    let (server, client) = support::serve(4).await;
    server.inject(Route::Any, Fault::garbage_body());
    let status = warmup_status(client, NS, &WarmupOptions::default()).await;
    assert!(!status.complete);
    for read in [
        "jobs",
        "nodes",
        "daemonset",
        "configmap",
        "warnings",
        "pods",
    ] {
        let why = status.reads.get(read).unwrap().outcome.describe();
        assert!(
            why.starts_with("undecodable response body"),
            "{read}: {why}"
        );
    }
    assert!(status.reads.get("stale_nodes").unwrap().outcome.is_ok());
    assert_eq!(server.requests().len(), 6);
    assert!(status.nodes.is_empty());
}

// W2: no token ends up in a reason (or anywhere in the status), whatever fails and how.
#[tokio::test]
async fn w2_reasons_never_leak_the_bearer_token() {
    for reset in [false, true] {
        let (server, _) = support::serve(4).await;
        let client = server.client_token().await.expect("token client");
        let token = server.token().to_string();
        assert!(token.len() >= 8);
        if reset {
            server.inject(
                Route::exact(format!("/apis/apps/v1/namespaces/{NS}/daemonsets/warmup")),
                Fault::reset(),
            );
        } else {
            server.inject(
                Route::exact(format!("/api/v1/namespaces/{NS}/configmaps/warmup")),
                Fault::status(500),
            );
            server.inject(
                Route::exact(format!("/api/v1/namespaces/{NS}/pods")),
                Fault::garbage_body(),
            );
            server.inject(
                Route::exact(format!("/api/v1/namespaces/{NS}/events")),
                Fault::status(401),
            );
        }
        let status = warmup_status(client, NS, &WarmupOptions::default()).await;
        assert!(!status.complete);
        let json = serde_json::to_string(&status).unwrap();
        assert!(!json.contains(&token), "token leaked: {json}");
        assert!(!format!("{status:?}").contains(&token));
        for r in status.reads.failures() {
            let why = r.outcome.describe();
            assert!(
                [
                    "HTTP ",
                    "undecodable response body",
                    "request failed",
                    "timed out after"
                ]
                .iter()
                .any(|p| why.starts_with(p)),
                "{}: {why}",
                r.name
            );
            assert!(why.chars().count() <= 400, "{}: {why}", r.name);
        }
    }
}

// Docs: "with the defaults a warmup_status call takes at most about two read timeouts …
// whatever the API server does". Slow and stalled routes: the call ends in about two timeouts.
#[tokio::test]
async fn w1_slow_or_stalled_servers_cost_at_most_about_two_read_timeouts() {
    let timeout = ms(400);
    let options = WarmupOptions::default().read_timeout(timeout);
    let cases: [(&str, Vec<(Route, Fault)>); 2] = [
        (
            "slow",
            vec![
                (
                    Route::exact(format!("/api/v1/namespaces/{NS}/pods")),
                    Fault::latency(ms(250)),
                ),
                (
                    Route::exact(format!("/api/v1/namespaces/{NS}/configmaps/warmup")),
                    Fault::latency(secs(30)),
                ),
                (
                    Route::prefix(format!("/api/v1/namespaces/{NS}/pods/")),
                    Fault::latency(secs(30)),
                ),
            ],
        ),
        (
            "stalled",
            vec![(
                Route::exact(format!("/api/v1/namespaces/{NS}/configmaps/warmup")),
                Fault::stall_connection(),
            )],
        ),
    ];
    for (what, faults) in cases {
        let (server, client) = support::serve(4).await;
        for (route, fault) in faults {
            server.inject(route, fault);
        }
        let started = Instant::now();
        let status = tokio::time::timeout(secs(20), warmup_status(client, NS, &options))
            .await
            .unwrap_or_else(|_| panic!("{what}: warmup_status hung"));
        let elapsed = started.elapsed();
        assert!(
            elapsed < secs(3),
            "{what}: took {elapsed:?} with 400 ms timeouts"
        );
        assert_eq!(
            status.reads.get("configmap").unwrap().outcome,
            Outcome::TimedOut { after: timeout },
            "{what}"
        );
        assert!(!status.complete);
    }
}

// Dropping warmup_status's future mid-flight stops it: no dependent request is sent later.
#[tokio::test]
async fn dropping_warmup_status_mid_flight_sends_no_further_requests() {
    let (server, client) = support::serve(4).await;
    server.inject(
        Route::exact(format!("/api/v1/namespaces/{NS}/pods")),
        Fault::latency(ms(300)),
    );
    let out = tokio::time::timeout(
        ms(100),
        warmup_status(client, NS, &WarmupOptions::default()),
    )
    .await;
    assert!(
        out.is_err(),
        "the status should still be waiting for the pod list"
    );
    // Past the pod list's latency: had the fan-out survived, the log tails would start now.
    tokio::time::sleep(ms(600)).await;
    assert!(
        log_requests(&server).is_empty(),
        "log tails were requested after the status was dropped"
    );
}

// W3: the six top-level reads start together (not one after another), even at the server.
#[tokio::test]
async fn w3_the_six_top_level_reads_overlap_at_the_server() {
    let (server, client) = support::serve(0).await;
    server.inject(Route::Any, Fault::latency(ms(200)));
    let status = warmup_status(client, NS, &WarmupOptions::default()).await;
    assert!(status.complete, "{:?}", status.reads);
    // The server saw them together; the wall time is the benchmark's to measure (W4), not a
    // loaded test machine's.
    assert!(
        server.peak_in_flight() >= 6,
        "peak {}",
        server.peak_in_flight()
    );
    for r in status.reads.reads.iter().filter(|r| r.phase == 1) {
        assert!(r.started_after < ms(100), "{r:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// More attacks
// ---------------------------------------------------------------------------------------------

/// An error whose `Display` panics: user code the engine runs when it builds the reason.
#[derive(Debug)]
struct DisplayPanics;

impl std::fmt::Display for DisplayPanics {
    fn fmt(&self, _: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        panic!("Display exploded")
    }
}

impl std::error::Error for DisplayPanics {}

/// Panics when dropped: a read whose cancellation panics.
struct PanicOnDrop;

impl Drop for PanicOnDrop {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            panic!("drop exploded");
        }
    }
}

// W2: user code that panics while the engine handles a read (the error's Display, the future's
// Drop at its timeout) costs only that read; the fan-out still joins.
#[tokio::test(start_paused = true)]
async fn w2_panics_in_error_display_or_in_drop_on_timeout_are_contained() {
    let mut fan = FanOut::new(FanOutConfig::default().max_in_flight(1));
    let display = fan.read(ReadSpec::new("display", 1_u8), async {
        Err::<u8, _>(DisplayPanics)
    });
    let dropper = fan.read(ReadSpec::new("dropper", 2_u8).timeout(secs(1)), async {
        let _bomb = PanicOnDrop;
        std::future::pending::<Result<u8, Infallible>>().await
    });
    let sibling = fan.read(ReadSpec::new("sibling", 0_u8), async { ok(3_u8) });
    let report = join(fan).await;
    assert_eq!(
        (*display.value(), *dropper.value(), *sibling.value()),
        (1, 2, 3)
    );
    assert_eq!(report.reads.len(), 3, "{report:?}");
    assert!(!row(&report, "display").outcome.is_ok());
    assert!(!row(&report, "dropper").outcome.is_ok());
    assert_eq!(row(&report, "sibling").outcome, Outcome::Ok);
}

// Handle::resolved() of a read that panicked or timed out gives the default, never hangs.
#[tokio::test(start_paused = true)]
async fn handle_resolved_gives_the_default_for_panics_and_timeouts() {
    let mut fan = FanOut::new(FanOutConfig::default());
    let boom = fan.read(ReadSpec::new("boom", 7_u8), async {
        if true {
            panic!("boom");
        }
        ok(0_u8)
    });
    let slow = fan.read(
        ReadSpec::new("slow", 8_u8).timeout(secs(1)),
        std::future::pending::<Result<u8, Infallible>>(),
    );
    let (b, s) = tokio::time::timeout(secs(60), async {
        (*boom.resolved().await, *slow.resolved().await)
    })
    .await
    .expect("resolved() hangs");
    assert_eq!((b, s), (7, 8));
    join(fan).await;
}

fn assert_send<T: Send>(_: &T) {}

// Usability in a server (e.g. an axum handler): the futures and types are Send.
#[tokio::test]
async fn the_status_future_and_the_engine_are_send() {
    let (_server, client) = support::serve(0).await;
    let options = WarmupOptions::default();
    let status = warmup_status(client, NS, &options);
    assert_send(&status);
    let fan = FanOut::new(FanOutConfig::default());
    let joined = fan.join();
    assert_send(&joined);
    let status = tokio::spawn(async move {
        let (_server, client) = support::serve(1).await;
        warmup_status(client, NS, &WarmupOptions::default()).await
    })
    .await
    .unwrap();
    assert!(status.complete, "{:?}", status.reads);
    joined.await;
}

// X1: metric labels are bounded (no read name, no error text); phases past 15 share `16+`.
#[test]
fn x1_metric_labels_are_bounded_and_deep_phases_share_sixteen_plus() {
    let recorded = testkit::metrics::recorded(|| async {
        let mut fan = FanOut::new(FanOutConfig::default());
        let mut last = fan.read(ReadSpec::new("tenant-acme/phase-1", 0_u32), async {
            tokio::time::sleep(ms(10)).await;
            Ok::<_, BoxError>(1)
        });
        for i in 2..=20 {
            last = fan.read_after(
                ReadSpec::new(format!("tenant-acme/phase-{i}"), 0_u32),
                last,
                |v| async move {
                    tokio::time::sleep(ms(10)).await;
                    Ok::<_, BoxError>(*v + 1)
                },
            );
        }
        fan.read(ReadSpec::new("tenant-acme/fail", 0_u32), async {
            Err::<u32, BoxError>("token=hunter2 for account 4242".into())
        });
        let report = fan.join().await;
        assert_eq!(report.phases(), 20);
    });
    for (key, ..) in &recorded {
        for label in key.key().labels() {
            for secret in ["tenant-acme", "hunter2", "4242", "phase-"] {
                assert!(
                    !label.value().contains(secret),
                    "label {}={} on {}",
                    label.key(),
                    label.value(),
                    key.key().name()
                );
            }
        }
    }
    let mut phases: Vec<String> = recorded
        .iter()
        .filter(|(key, ..)| key.key().name() == "fanout.phase.duration")
        .flat_map(|(key, ..)| {
            key.key()
                .labels()
                .filter(|l| l.key() == "phase")
                .map(|l| l.value().to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    phases.sort();
    phases.dedup();
    let mut expected: Vec<String> = (1..=15).map(|p| p.to_string()).collect();
    expected.push("16+".into());
    expected.sort();
    assert_eq!(phases, expected);
    let reads =
        |labels: &[(&str, &str)]| testkit::metrics::counter(&recorded, "fanout.reads", labels);
    assert_eq!(reads(&[("outcome", "ok")]), 20);
    assert_eq!(reads(&[("outcome", "degraded"), ("reason", "error")]), 1);
}

// Seed 001 ("pod-log fan-out finishes in well under serial time"): twelve 200 ms tails run
// side by side (the server sees 12 at once), far under 12 × 200 ms.
#[tokio::test]
async fn seed001_log_tails_run_side_by_side() {
    let (server, client) = support::serve(12).await;
    server.inject(
        Route::prefix(format!("/api/v1/namespaces/{NS}/pods/")),
        Fault::latency(ms(200)),
    );
    let status = warmup_status(client, NS, &WarmupOptions::default()).await;
    assert!(status.complete, "{:?}", status.reads);
    assert_eq!(server.peak_in_flight(), 12);
    let logs: Vec<_> = status
        .reads
        .reads
        .iter()
        .filter(|r| r.name.starts_with("log/"))
        .collect();
    assert_eq!(logs.len(), 12);
    let first = logs.iter().map(|r| r.started_after).min().unwrap();
    let last_end = logs
        .iter()
        .map(|r| r.started_after + r.duration)
        .max()
        .unwrap();
    assert!(
        last_end - first < ms(1_200),
        "tails took {:?}",
        last_end - first
    );
}

// W3: job states (docs: failed = a `Failed` condition or only failed pods; nothing reported =
// pending → chip `queued`; active pods = running → `staging`).
#[tokio::test]
async fn w3_job_states_drive_stale_marking_and_chips() {
    let mut f = Fixtures::empty();
    for n in ["n-a", "n-b", "n-c"] {
        f.node(n, "", true);
    }
    f.daemonset(NS, "warmup", "app=warmup-agent");
    f.configmap(
        NS,
        "warmup",
        &[("databases", "orders"), ("generation", "1")],
    );
    job(
        &mut f,
        "only-failed-pods",
        Some("n-a"),
        Some(1),
        "none",
        100,
    );
    f.jobs.last_mut().unwrap().status = Some(JobStatus {
        failed: Some(2),
        ..JobStatus::default()
    });
    job(
        &mut f,
        "active-and-failed",
        Some("n-b"),
        Some(1),
        "none",
        100,
    );
    f.jobs.last_mut().unwrap().status = Some(JobStatus {
        active: Some(1),
        failed: Some(1),
        ..JobStatus::default()
    });
    job(&mut f, "nothing-yet", Some("n-c"), Some(1), "none", 100);
    let (_server, client) = serve_fixtures(f).await;
    let status = warmup_status(client, NS, &WarmupOptions::default()).await;
    assert!(status.complete, "{:?}", status.reads);
    assert_eq!(
        stale(&status, "n-a"),
        Some(StaleReason::Failed {
            job: "only-failed-pods".into()
        })
    );
    assert_eq!(stale(&status, "n-b"), None);
    assert_eq!(stale(&status, "n-c"), None);
    assert_eq!(chips(&status, "n-a")[0].1, ChipState::Failed);
    assert_eq!(chips(&status, "n-b")[0].1, ChipState::Staging);
    assert_eq!(chips(&status, "n-c")[0].1, ChipState::Queued);
}

// X5 / W2: odd namespaces and selectors never panic; a status comes back, each URL once.
#[tokio::test]
async fn x5_odd_namespaces_and_selectors_never_panic() {
    let (server, client) = support::serve(2).await;
    for ns in [
        "",
        "no-such-namespace",
        "bad ns/with?query#frag",
        "../../api",
    ] {
        server.clear_requests();
        let status = tokio::time::timeout(
            secs(30),
            warmup_status(client.clone(), ns, &WarmupOptions::default()),
        )
        .await
        .unwrap_or_else(|_| panic!("{ns:?}: hung"));
        assert_eq!(status.namespace, ns);
        assert_each_url_once(&server);
        assert!(server.requests().len() <= 6 + 12, "{ns:?}");
    }
    server.clear_requests();
    let selector = "app.kubernetes.io/component in (warmup,other),!legacy";
    let status = warmup_status(
        client.clone(),
        NS,
        &WarmupOptions::default().selector(selector),
    )
    .await;
    let jobs: Vec<_> = support::seen(&server)
        .into_iter()
        .filter(|(_, p, _)| p.ends_with("/jobs"))
        .collect();
    assert_eq!(jobs.len(), 1);
    assert_eq!(
        jobs[0].2.get("labelSelector").map(String::as_str),
        Some(selector)
    );
    assert_each_url_once(&server);
    let _ = status;
}

// W3 robustness: odd objects (no timestamps, no status, no spec, overflowing or negative
// generation labels, a job for an unknown node, a pod with no phase) never panic; the status
// is complete and the overflowing configmap generation reads as unknown.
#[tokio::test]
async fn w3_odd_objects_never_panic() {
    let mut f = Fixtures::empty();
    f.node("n-a", "", true);
    f.nodes.last_mut().unwrap().status = None;
    f.daemonset(NS, "warmup", "app=warmup-agent");
    f.daemonsets.last_mut().unwrap().status = None;
    f.configmap(
        NS,
        "warmup",
        &[
            ("databases", "orders"),
            ("generation", "18446744073709551616"),
        ],
    );
    job(&mut f, "no-time", Some("n-a"), None, "none", 0);
    let j = f.jobs.last_mut().unwrap();
    j.metadata.creation_timestamp = None;
    j.status = None;
    f.job(
        NS,
        "huge-gen",
        &format!("{WARMUP},warmup/node=n-a,warmup/generation=99999999999999999999999"),
    );
    f.job(
        NS,
        "neg-gen",
        &format!("{WARMUP},warmup/node=n-a,warmup/generation=-1"),
    );
    f.job(NS, "ghost", &format!("{WARMUP},warmup/node=ghost-node"));
    f.pod(
        NS,
        "no-phase",
        WARMUP,
        "n-a",
        Some("warmup\nwarmup db=\n\n"),
    );
    f.pods.last_mut().unwrap().status = None;
    f.pod(NS, "no-spec", WARMUP, "n-a", Some(""));
    f.pods.last_mut().unwrap().spec = None;
    f.event(NS, "Warning", "X", ("", ""), "");
    f.events.last_mut().unwrap().last_timestamp = None;
    let (_server, client) = serve_fixtures(f).await;
    let status = warmup_status(client, NS, &WarmupOptions::default()).await;
    assert_eq!(
        status.generation, None,
        "an overflowing generation is not a number"
    );
    assert_eq!(status.nodes.len(), 1);
    assert_eq!(status.jobs.len(), 4);
    assert_eq!(status.warnings.len(), 1);
    assert_eq!(status.logs.pods, 2);
    let failures: Vec<_> = status
        .reads
        .failures()
        .filter(|r| !r.name.starts_with("log/"))
        .map(|r| (r.name.clone(), r.outcome.describe()))
        .collect();
    assert!(failures.is_empty(), "{failures:?}");
}

// Docs: configmap `databases` are "names separated by newlines or commas. Blank lines and `#`
// lines are ignored, and so are duplicates." Names padded with spaces (as YAML authors write
// "orders, users") are the same names.
#[tokio::test]
async fn w3_configmap_database_names_are_trimmed() {
    let mut f = Fixtures::empty();
    f.node("n-a", "", true);
    f.configmap(
        NS,
        "warmup",
        &[
            (
                "databases",
                " orders , users\n  # indented comment\n\t\n users \nitems\n",
            ),
            ("generation", " 2 "),
        ],
    );
    let (_server, client) = serve_fixtures(f).await;
    let status = warmup_status(client, NS, &WarmupOptions::default()).await;
    assert_eq!(status.databases, ["orders", "users", "items"]);
}

// Docs (log progress line): "a whitespace-separated token `warmup`" — not a substring of
// another token; "pct=<0–100>", "A bad pct is dropped".
#[tokio::test]
async fn w3_progress_lines_need_a_warmup_token_and_a_percent_in_range() {
    let mut f = Fixtures::empty();
    f.node("n-a", "", true);
    f.daemonset(NS, "warmup", "app=warmup-agent");
    f.configmap(
        NS,
        "warmup",
        &[("databases", "orders\nusers\nitems"), ("generation", "1")],
    );
    job(&mut f, "job-a", Some("n-a"), Some(1), "running", 100);
    let log = "prewarmup db=orders state=ready pct=100\n\
               warmup db=users state=staging pct=101\n\
               warmup db=items state=staging pct=-1\n";
    pod(&mut f, "p", "n-a", "Running", log);
    let (_server, client) = serve_fixtures(f).await;
    let status = warmup_status(client, NS, &WarmupOptions::default()).await;
    assert!(status.complete, "{:?}", status.reads);
    assert_eq!(
        chips(&status, "n-a"),
        [
            // Not a progress line: the running job decides.
            ("orders".into(), ChipState::Staging, None),
            ("users".into(), ChipState::Staging, None),
            ("items".into(), ChipState::Staging, None),
        ]
    );
}

// W2 (docs: "A panic (in the future or in the closure that builds it) gives Degraded { reason:
// "read panicked: …" }"; ReadReport::duration is "how long it ran"; metrics label `panic`):
// a read whose future panics while it is dropped at its 1 s timeout held its slot for 1 s.
#[test]
fn w2_a_future_panicking_in_drop_at_its_timeout_is_reported_as_a_panic_that_ran_one_second() {
    let report = Arc::new(Mutex::new(None));
    let out = Arc::clone(&report);
    let recorded = testkit::metrics::recorded(|| async move {
        let mut fan = FanOut::new(FanOutConfig::default().max_in_flight(1));
        fan.read(ReadSpec::new("dropper", 2_u8).timeout(secs(1)), async {
            let _bomb = PanicOnDrop;
            std::future::pending::<Result<u8, Infallible>>().await
        });
        fan.read(ReadSpec::new("next", 0_u8), async { ok(3_u8) });
        *out.lock().unwrap() = Some(fan.join().await);
    });
    let report = report.lock().unwrap().take().unwrap();
    let dropper = row(&report, "dropper");
    let next = row(&report, "next");
    assert_eq!(next.started_after, secs(1), "{report:?}");
    let reason = dropper.outcome.describe();
    let panic_count = testkit::metrics::counter(
        &recorded,
        "fanout.reads",
        &[("outcome", "degraded"), ("reason", "panic")],
    );
    assert!(
        reason.starts_with("read panicked") && dropper.duration >= secs(1) && panic_count == 1,
        "the read held the only slot for 1 s (the next read started at 1 s), yet it is reported \
         as reason {reason:?}, duration {:?}, metrics reason=panic count {panic_count}",
        dropper.duration
    );
}

// The documented JSON model (docs "The model (`WarmupStatus`, JSON)"): key names and shapes.
#[tokio::test]
async fn w3_the_status_json_has_the_documented_shape() {
    let (server, client) = support::serve(4).await;
    server.inject(
        Route::exact(format!("/api/v1/namespaces/{NS}/pods/warmup-pod-03/log")),
        Fault::status(500),
    );
    let status = warmup_status(client, NS, &WarmupOptions::default()).await;
    let json = serde_json::to_value(&status).unwrap();
    let keys = |v: &serde_json::Value| {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    let sorted = |k: &[&str]| {
        let mut k: Vec<String> = k.iter().map(|s| (*s).to_string()).collect();
        k.sort();
        k
    };
    assert_eq!(
        keys(&json),
        sorted(&[
            "namespace",
            "generation",
            "databases",
            "nodes",
            "daemonset",
            "jobs",
            "warnings",
            "logs",
            "reads",
            "complete"
        ])
    );
    let node1 = &json["nodes"][1];
    assert_eq!(
        keys(node1),
        sorted(&["name", "ready", "stale", "job", "pods", "databases"])
    );
    assert_eq!(json["nodes"][0]["stale"], serde_json::Value::Null);
    assert_eq!(node1["stale"]["reason"], "outdated");
    assert_eq!(
        keys(&node1["stale"]),
        sorted(&["reason", "job", "job_generation", "current"])
    );
    assert_eq!(
        json["nodes"][2]["stale"],
        serde_json::json!({"reason": "missing"})
    );
    assert_eq!(keys(&json["nodes"][3]["stale"]), sorted(&["reason", "job"]));
    assert_eq!(
        keys(&node1["databases"][0]),
        sorted(&["name", "state", "percent"])
    );
    assert_eq!(node1["databases"][0]["state"], "stale");
    assert_eq!(
        keys(&json["daemonset"]),
        sorted(&["name", "desired", "ready", "updated", "rolled_out"])
    );
    assert_eq!(
        keys(&json["jobs"][0]),
        sorted(&["name", "node", "generation", "state", "created"])
    );
    assert_eq!(
        keys(&json["warnings"][0]),
        sorted(&["object", "reason", "message", "count", "last_seen"])
    );
    assert_eq!(
        json["logs"],
        serde_json::json!({"pods": 4, "requested": 4, "read": 3, "skipped": 0})
    );
    assert_eq!(
        keys(&json["reads"]),
        sorted(&["reads", "elapsed_ms", "peak_in_flight"])
    );
    let failed = json["reads"]["reads"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "log/warmup-pod-03")
        .unwrap();
    assert_eq!(failed["status"], "degraded");
    assert!(failed["reason"].as_str().unwrap().starts_with("HTTP 500"));
    assert_eq!(failed["phase"], 2);
    assert_eq!(json["complete"], false);
}

// Report helpers on an empty fan-out (docs: phases() is "0 for no reads").
#[tokio::test(start_paused = true)]
async fn an_empty_fanout_joins_at_once_with_an_empty_report() {
    let report = join(FanOut::new(FanOutConfig::default())).await;
    assert!(report.reads.is_empty());
    assert_eq!(report.phases(), 0);
    assert!(report.is_complete());
    assert_eq!(report.failures().count(), 0);
    assert!(report.get("anything").is_none());
    assert_eq!(FanOutReport::default().phases(), 0);
    assert_eq!(
        Outcome::TimedOut { after: secs(2) }.describe(),
        "timed out after 2s"
    );
    assert_eq!(Outcome::Ok.describe(), "ok");
}

// Building a FanOut (not registering reads) needs no runtime and never panics.
#[test]
fn a_fanout_can_be_built_and_dropped_outside_a_runtime() {
    let fan = FanOut::new(FanOutConfig::default().max_in_flight(usize::MAX));
    drop(fan);
}

// W3: `warnings` default cap is 20 (docs: "warnings kept (`max_warnings`) | 20").
#[tokio::test]
async fn w3_warnings_default_cap_is_twenty() {
    let mut f = Fixtures::empty();
    for i in 0..30 {
        f.event(NS, "Warning", &format!("R{i:02}"), ("Pod", "p"), "m");
        f.events.last_mut().unwrap().last_timestamp = Some(at(i));
    }
    let (_server, client) = serve_fixtures(f).await;
    let status = warmup_status(client, NS, &WarmupOptions::default()).await;
    assert_eq!(status.warnings.len(), 20);
    assert_eq!(status.warnings[0].reason, "R29");
    assert_eq!(status.warnings[19].reason, "R10");
}

// Docs: "a warmup_status call takes at most about two read timeouts (… then … the log tails,
// which start when the pod list is in), whatever the API server does". Worst case at the
// default bound of 12: five top-level reads and all twelve log tails hang, so five tails must
// wait for the hung top-level reads' slots. Scaled to a 1 s timeout: about 2 s, never ~3+ s.
#[tokio::test]
async fn w1_everything_hanging_costs_about_two_read_timeouts_at_the_default_bound() {
    let timeout = secs(1);
    let (server, client) = support::serve(12).await;
    server.inject(
        Route::exact(format!("/api/v1/namespaces/{NS}/pods")),
        Fault::latency(ms(100)),
    );
    server.inject(Route::Any, Fault::latency(secs(60)));
    let started = Instant::now();
    let status = warmup_status(client, NS, &WarmupOptions::default().read_timeout(timeout)).await;
    let elapsed = started.elapsed();
    assert!(status.reads.get("pods").unwrap().outcome.is_ok());
    let timed_out = status
        .reads
        .failures()
        .filter(|r| r.outcome == Outcome::TimedOut { after: timeout })
        .count();
    assert_eq!(timed_out, 5 + 12, "{:?}", status.reads);
    assert!(
        elapsed < timeout * 2 + ms(900),
        "took {elapsed:?}, more than about two read timeouts of {timeout:?}"
    );
}

// Docs: "A pod's node is its `spec.nodeName`; if that's empty, the same label is used." A pod
// whose nodeName is the empty string is placed by its `warmup/node` label like an unset one.
#[tokio::test]
async fn w3_a_pod_with_an_empty_string_node_name_is_placed_by_its_label() {
    let mut f = Fixtures::empty();
    f.node("n-b", "", true);
    f.daemonset(NS, "warmup", "app=warmup-agent");
    f.configmap(NS, "warmup", &[("databases", "idle"), ("generation", "1")]);
    job(&mut f, "job-b", Some("n-b"), Some(1), "running", 100);
    // testkit stores `Some("")` as this pod's spec.nodeName.
    f.pod(
        NS,
        "pod-empty-node",
        &format!("{WARMUP},warmup/node=n-b"),
        "",
        Some("warmup db=idle pct=30\n"),
    );
    assert_eq!(
        f.pods
            .last()
            .unwrap()
            .spec
            .as_ref()
            .unwrap()
            .node_name
            .as_deref(),
        Some("")
    );
    let (_server, client) = serve_fixtures(f).await;
    let status = warmup_status(client, NS, &WarmupOptions::default()).await;
    assert!(status.complete, "{:?}", status.reads);
    assert_eq!(status.logs.pods, 1, "the pod is listed");
    let n_b = status.nodes.iter().find(|n| n.name == "n-b").unwrap();
    assert_eq!(
        n_b.pods,
        ["pod-empty-node"],
        "a pod with spec.nodeName = \"\" was not placed by its warmup/node label"
    );
    assert_eq!(
        chips(&status, "n-b"),
        [("idle".into(), ChipState::Staging, Some(30))]
    );
}
