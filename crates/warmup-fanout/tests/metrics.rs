//! The metrics a fan-out records (issue 19), read back from `metrics`' debugging recorder: reads
//! by outcome (ok, degraded with a bounded reason) and phase durations, in virtual time.

use std::time::Duration;

use testkit::metrics::{counter, histogram, recorded, unit};
use tokio::time::sleep;
use warmup_fanout::{BoxError, FanOut, FanOutConfig, ReadSpec};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

// covers W2 and issue 19: two reads ok, one failing, one timing out, one panicking: each
// degraded read is counted under a bounded reason (never its error text); phase 1 spans its
// reads (0 to 1 s: the timeout), phase 2 runs 20 ms after it.
#[test]
fn reads_are_counted_by_outcome_and_phases_timed() {
    let recorded = recorded(|| async {
        let mut fan = FanOut::new(
            FanOutConfig::default()
                .max_in_flight(8)
                .default_timeout(Duration::from_secs(1)),
        );
        let first = fan.read(ReadSpec::new("jobs", 0u32), async {
            sleep(ms(100)).await;
            Ok::<_, BoxError>(1)
        });
        fan.read(ReadSpec::new("nodes", 0u32), async {
            sleep(ms(50)).await;
            Err::<u32, BoxError>("account 12345 not found".into())
        });
        fan.read(ReadSpec::new("slow", 0u32), async {
            sleep(Duration::from_secs(5)).await;
            Ok::<_, BoxError>(3)
        });
        fan.read(ReadSpec::new("broken", 0u32), async {
            if true {
                panic!("bug");
            }
            Ok::<_, BoxError>(4)
        });
        fan.read_after(ReadSpec::new("after", 0u32), first, |first| async move {
            sleep(ms(20)).await;
            Ok::<_, BoxError>(*first + 1)
        });
        let report = fan.join().await;
        assert_eq!(report.failures().count(), 3);
    });
    let reads = |labels: &[(&str, &str)]| counter(&recorded, "fanout.reads", labels);
    assert_eq!(reads(&[("outcome", "ok")]), 2);
    let degraded = |reason| reads(&[("outcome", "degraded"), ("reason", reason)]);
    assert_eq!(degraded("error"), 1);
    assert_eq!(degraded("timeout"), 1);
    assert_eq!(degraded("panic"), 1);
    assert_eq!(degraded("cancelled"), 0);
    assert!(
        recorded
            .iter()
            .all(|(key, ..)| key.key().labels().all(|l| !l.value().contains("12345"))),
        "no error text in a label"
    );
    assert_eq!(
        histogram(&recorded, "fanout.phase.duration", &[("phase", "1")]),
        [1.0]
    );
    assert_eq!(
        histogram(&recorded, "fanout.phase.duration", &[("phase", "2")]),
        [0.02]
    );
    assert_eq!(histogram(&recorded, "fanout.read.duration", &[]).len(), 5);
    assert_eq!(histogram(&recorded, "fanout.duration", &[]), [1.0]);
}

// covers X1: units and descriptions reach a recorder installed after another fan-out was built
// (they were described once per process: the first fan-out's recorder, here none, got them and
// a later recorder never saw a unit).
#[test]
fn a_recorder_installed_later_gets_the_units() {
    drop(FanOut::new(FanOutConfig::default()));
    let recorded = recorded(|| async {
        let mut fan = FanOut::new(FanOutConfig::default());
        fan.read(ReadSpec::new("one", 0u32), async { Ok::<_, BoxError>(1) });
        fan.join().await;
    });
    for name in [
        "fanout.read.duration",
        "fanout.phase.duration",
        "fanout.duration",
    ] {
        assert_eq!(
            unit(&recorded, name),
            Some(metrics::Unit::Seconds),
            "{name}"
        );
    }
    assert_eq!(unit(&recorded, "fanout.reads"), Some(metrics::Unit::Count));
}
