//! Black-box review of issue 19 (metrics across the crates): every promised series exists with
//! its documented type, unit and labels; label values stay bounded under hostile inputs; the
//! counters agree with each crate's own `stats()`; nothing panics without a recorder.
//!
//! Each test installs a `metrics_util::debugging::DebuggingRecorder` for its own thread
//! (`metrics::with_local_recorder`) around a current-thread runtime.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use metrics::Unit;
use metrics_util::MetricKind;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use pool_core::{Created, KeyedPool, PoolConfig, Retire};

/// One observed series.
#[derive(Debug)]
struct Series {
    kind: MetricKind,
    name: String,
    labels: BTreeMap<String, String>,
    unit: Option<Unit>,
    value: DebugValue,
}

impl Series {
    fn counter(&self) -> u64 {
        match &self.value {
            DebugValue::Counter(v) => *v,
            other => panic!("{} is not a counter: {other:?}", self.name),
        }
    }
    fn gauge(&self) -> f64 {
        match &self.value {
            DebugValue::Gauge(v) => v.into_inner(),
            other => panic!("{} is not a gauge: {other:?}", self.name),
        }
    }
    fn samples(&self) -> Vec<f64> {
        match &self.value {
            DebugValue::Histogram(v) => v.iter().map(|x| x.into_inner()).collect(),
            other => panic!("{} is not a histogram: {other:?}", self.name),
        }
    }
}

struct Observed(Vec<Series>);

impl Observed {
    fn named(&self, name: &str) -> Vec<&Series> {
        self.0.iter().filter(|s| s.name == name).collect()
    }
    /// The series `name` whose labels include every pair of `labels`.
    fn find(&self, name: &str, labels: &[(&str, &str)]) -> Vec<&Series> {
        self.0
            .iter()
            .filter(|s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .collect()
    }
    fn counter_sum(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        self.find(name, labels).iter().map(|s| s.counter()).sum()
    }
    fn gauge_of(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let found = self.find(name, labels);
        assert!(
            found.len() <= 1,
            "{name} {labels:?}: several series {found:#?}"
        );
        found.first().map(|s| s.gauge())
    }
    fn all_label_values(&self) -> Vec<(String, String, String)> {
        self.0
            .iter()
            .flat_map(|s| {
                s.labels
                    .iter()
                    .map(|(k, v)| (s.name.clone(), k.clone(), v.clone()))
            })
            .collect()
    }
    /// The type promised by the guide, and the unit if the recorder got a description (described
    /// once per process: a recorder installed for a later test may see no description at all).
    fn assert_shape(&self, name: &str, kind: MetricKind, unit: Option<Unit>) {
        let found = self.named(name);
        assert!(
            !found.is_empty(),
            "promised series {name} missing; have {:?}",
            self.names()
        );
        for s in found {
            assert_eq!(s.kind, kind, "{name}: type");
            if let (Some(got), Some(want)) = (&s.unit, &unit) {
                assert_eq!(got, want, "{name}: unit");
            }
        }
    }
    fn names(&self) -> BTreeSet<String> {
        self.0.iter().map(|s| s.name.clone()).collect()
    }
}

/// Run `f` on a fresh current-thread runtime under a local debugging recorder.
fn observe<F, Fut, T>(paused: bool, f: F) -> (T, Observed)
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = T>,
{
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let out = metrics::with_local_recorder(&recorder, || {
        let mut b = tokio::runtime::Builder::new_current_thread();
        b.enable_all();
        if paused {
            b.start_paused(true);
        }
        let rt = b.build().expect("runtime");
        let out = rt.block_on(f());
        drop(rt);
        out
    });
    let series = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(ck, unit, _desc, value)| {
            let (kind, key) = ck.into_parts();
            let labels = key
                .labels()
                .map(|l| (l.key().to_owned(), l.value().to_owned()))
                .collect();
            Series {
                kind,
                name: key.name().to_owned(),
                labels,
                unit,
                value,
            }
        })
        .collect();
    (out, Observed(series))
}

#[derive(Debug)]
struct Plain;
impl Retire for Plain {}

type Pool = KeyedPool<String, Plain>;

async fn ok_created() -> Result<Created<Plain>, std::io::Error> {
    Ok(Created::new(Plain))
}

/// Values a request controls that must never show up as a label value.
const HOSTILE: &[&str] = &[
    "sk_live_4f9c2b7e11aa",
    "acct-93c1f2d7",
    "Bearer eyJhbGciOiJIUzI1NiJ9.tok",
    "../../etc/passwd",
    "a\"b,c=d}",
    "\u{1F4A5}x\u{0}y",
];

fn assert_no_hostile_label(obs: &Observed, extra: &[&str]) {
    for (name, key, value) in obs.all_label_values() {
        for h in HOSTILE.iter().chain(extra) {
            assert!(
                !value.contains(h),
                "{name}{{{key}={value:?}}} carries request-controlled text {h:?}"
            );
        }
    }
}

// ---------------------------------------------------------------- pool-core

#[test]
fn pool_1000_cold_callers_are_one_creation_and_999_coalesced() {
    let (stats, obs) = observe(true, || async {
        let pool: Arc<Pool> = Arc::new(KeyedPool::new(PoolConfig::default().name("cold")));
        let calls = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..1000 {
            let pool = pool.clone();
            let calls = calls.clone();
            tasks.push(tokio::spawn(async move {
                pool.get_or_create(&"k".to_owned(), || async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    Ok::<_, std::io::Error>(Created::new(Plain))
                })
                .await
                .map(|_| ())
                .expect("created")
            }));
        }
        for t in tasks {
            t.await.expect("join");
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1, "factory calls");
        (pool.stats(), pool)
    });
    let (stats, _pool) = stats;
    let l = [("pool.name", "cold")];
    assert_eq!(stats.creations, 1);
    assert_eq!(stats.coalesced, 999);
    assert_eq!(obs.counter_sum("pool.creations", &l), 1);
    assert_eq!(obs.counter_sum("pool.coalesced", &l), 999);
    assert_eq!(obs.counter_sum("pool.misses", &l), stats.misses);
    assert_eq!(obs.counter_sum("pool.hits", &l), stats.hits);
    assert_eq!(obs.gauge_of("pool.entries", &l), Some(1.0));
    let durations: Vec<f64> = obs
        .find(
            "pool.create.duration",
            &[("pool.name", "cold"), ("outcome", "ok")],
        )
        .iter()
        .flat_map(|s| s.samples())
        .collect();
    assert_eq!(durations.len(), 1, "one create.duration sample");
    assert!(
        (durations[0] - 0.1).abs() < 0.01,
        "create.duration in seconds: {durations:?}"
    );
}

#[test]
fn pool_counters_match_stats_and_have_documented_shape() {
    let (stats, obs) = observe(true, || async {
        let pool: Pool = KeyedPool::new(
            PoolConfig::default()
                .name("shape")
                .max_entries(4)
                .ttl(Duration::from_secs(60)),
        );
        // misses and hits on many keys, including hostile ones
        for round in 0..3 {
            for (i, h) in HOSTILE.iter().enumerate() {
                let key = format!("{h}/{i}");
                let _ = pool.get_or_create(&key, ok_created).await.unwrap();
                let _ = pool.get(&key);
                let _ = round;
            }
        }
        // 200 hits on one key (crosses the 64-hit flush more than once)
        let _ = pool
            .get_or_create(&"hot".to_owned(), ok_created)
            .await
            .unwrap();
        for _ in 0..200 {
            assert!(pool.get(&"hot".to_owned()).is_some());
        }
        // a failing factory
        let err = pool
            .get_or_create(&"bad".to_owned(), || async {
                Err::<Created<Plain>, _>(std::io::Error::other("boom sk_live_4f9c2b7e11aa"))
            })
            .await;
        assert!(err.is_err());
        // a one-shot
        let _ = pool
            .get_or_create(&"once".to_owned(), || async {
                Ok::<_, std::io::Error>(Created::one_shot(Plain))
            })
            .await
            .unwrap();
        // expiry, invalidation, reset
        pool.invalidate(&"hot".to_owned()).await;
        let _ = pool
            .get_or_create(&"x".to_owned(), ok_created)
            .await
            .unwrap();
        tokio::time::advance(Duration::from_secs(61)).await;
        let _ = pool.get(&"x".to_owned());
        let _ = pool
            .get_or_create(&"y".to_owned(), ok_created)
            .await
            .unwrap();
        pool.reset().await;
        tokio::task::yield_now().await;
        (pool.stats(), pool)
    });
    let (stats, _pool) = stats;
    let l = [("pool.name", "shape")];
    for (name, want) in [
        ("pool.hits", stats.hits),
        ("pool.misses", stats.misses),
        ("pool.coalesced", stats.coalesced),
        ("pool.creations", stats.creations),
        ("pool.creation_failures", stats.creation_failures),
        ("pool.one_shots", stats.one_shots),
        ("pool.thrashing", stats.thrashing),
        ("pool.retire_failures", stats.retire_failures),
    ] {
        assert_eq!(obs.counter_sum(name, &l), want, "{name} vs stats()");
    }
    assert!(stats.hits >= 200, "{stats:?}");
    assert!(
        stats.creation_failures >= 1 && stats.one_shots >= 1,
        "{stats:?}"
    );
    let ev = &stats.evictions;
    for (cause, want) in [
        ("idle", ev.idle),
        ("expired", ev.expired),
        ("capacity", ev.capacity),
        ("owner_gone", ev.owner_gone),
        ("reset", ev.reset),
        ("invalidated", ev.invalidated),
    ] {
        assert_eq!(
            obs.counter_sum(
                "pool.evictions",
                &[("pool.name", "shape"), ("cause", cause)]
            ),
            want,
            "pool.evictions{{cause={cause}}} vs stats()"
        );
    }
    assert!(
        ev.capacity > 0 && ev.reset > 0 && ev.invalidated > 0,
        "{ev:?}"
    );
    assert_eq!(obs.gauge_of("pool.entries", &l), Some(stats.entries as f64));
    assert_eq!(
        obs.find(
            "pool.create.duration",
            &[("pool.name", "shape"), ("outcome", "error")]
        )
        .iter()
        .map(|s| s.samples().len())
        .sum::<usize>(),
        stats.creation_failures as usize
    );
    use MetricKind::*;
    for (name, kind, unit) in [
        ("pool.entries", Gauge, Some(Unit::Count)),
        ("pool.hits", Counter, Some(Unit::Count)),
        ("pool.misses", Counter, Some(Unit::Count)),
        ("pool.coalesced", Counter, Some(Unit::Count)),
        ("pool.creations", Counter, Some(Unit::Count)),
        ("pool.creation_failures", Counter, Some(Unit::Count)),
        ("pool.one_shots", Counter, Some(Unit::Count)),
        ("pool.create.duration", Histogram, Some(Unit::Seconds)),
        ("pool.evictions", Counter, Some(Unit::Count)),
        ("pool.retire_failures", Counter, Some(Unit::Count)),
        ("pool.thrashing", Counter, Some(Unit::Count)),
    ] {
        obs.assert_shape(name, kind, unit);
    }
    // labels: only pool.name everywhere, plus outcome / cause from their fixed sets
    for s in &obs.0 {
        assert!(s.name.starts_with("pool."), "unexpected series {}", s.name);
        for (k, v) in &s.labels {
            match k.as_str() {
                "pool.name" => assert_eq!(v, "shape"),
                "outcome" => assert!(["ok", "error"].contains(&v.as_str()), "{v}"),
                "cause" => assert!(
                    [
                        "idle",
                        "expired",
                        "capacity",
                        "owner_gone",
                        "reset",
                        "invalidated"
                    ]
                    .contains(&v.as_str()),
                    "{v}"
                ),
                other => panic!("{}: undocumented label {other}={v}", s.name),
            }
        }
    }
    assert_no_hostile_label(&obs, &["boom"]);
}

#[test]
fn pool_hits_reach_the_metric_on_the_next_miss_without_a_stats_read() {
    let (_, obs) = observe(true, || async {
        let pool: Pool = KeyedPool::new(PoolConfig::default().name("flush"));
        let _ = pool
            .get_or_create(&"a".to_owned(), ok_created)
            .await
            .unwrap();
        for _ in 0..10 {
            assert!(pool.get(&"a".to_owned()).is_some());
        }
        // a miss publishes the striped hits ("exactly on each miss")
        let _ = pool
            .get_or_create(&"b".to_owned(), ok_created)
            .await
            .unwrap();
    });
    assert_eq!(obs.counter_sum("pool.hits", &[("pool.name", "flush")]), 10);
    assert_eq!(obs.counter_sum("pool.misses", &[("pool.name", "flush")]), 2);
}

#[test]
fn two_pools_with_different_names_have_separate_series_same_name_adds_up() {
    let (_, obs) = observe(true, || async {
        let a: Pool = KeyedPool::new(PoolConfig::default().name("alpha"));
        let b: Pool = KeyedPool::new(PoolConfig::default().name("beta"));
        let b2: Pool = KeyedPool::new(PoolConfig::default().name("beta"));
        let gone: Pool = KeyedPool::new(PoolConfig::default().name("beta"));
        for i in 0..3 {
            let _ = a.get_or_create(&format!("a{i}"), ok_created).await.unwrap();
        }
        for i in 0..5 {
            let _ = b.get_or_create(&format!("b{i}"), ok_created).await.unwrap();
        }
        for i in 0..2 {
            let _ = b2
                .get_or_create(&format!("c{i}"), ok_created)
                .await
                .unwrap();
        }
        for i in 0..7 {
            let _ = gone
                .get_or_create(&format!("d{i}"), ok_created)
                .await
                .unwrap();
        }
        let _ = a.get(&"a0".to_owned());
        let _ = (a.stats(), b.stats(), b2.stats());
        drop(gone); // takes its 7 entries back
        tokio::task::yield_now().await;
        (a, b, b2)
    });
    assert_eq!(
        obs.gauge_of("pool.entries", &[("pool.name", "alpha")]),
        Some(3.0)
    );
    assert_eq!(
        obs.gauge_of("pool.entries", &[("pool.name", "beta")]),
        Some(7.0)
    );
    assert_eq!(
        obs.counter_sum("pool.creations", &[("pool.name", "alpha")]),
        3
    );
    assert_eq!(
        obs.counter_sum("pool.creations", &[("pool.name", "beta")]),
        14
    );
    assert_eq!(obs.counter_sum("pool.hits", &[("pool.name", "alpha")]), 1);
    assert_eq!(obs.counter_sum("pool.hits", &[("pool.name", "beta")]), 0);
    let names: BTreeSet<_> = obs
        .named("pool.creations")
        .iter()
        .map(|s| s.labels["pool.name"].clone())
        .collect();
    assert_eq!(
        names,
        BTreeSet::from(["alpha".to_owned(), "beta".to_owned()])
    );
}

#[test]
fn pool_default_name_is_pool() {
    let (_, obs) = observe(true, || async {
        let p: Pool = KeyedPool::new(PoolConfig::default());
        let _ = p.get_or_create(&"k".to_owned(), ok_created).await.unwrap();
    });
    assert_eq!(
        obs.counter_sum("pool.creations", &[("pool.name", "pool")]),
        1
    );
}

#[test]
fn nothing_panics_without_a_recorder() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let pool: Pool = KeyedPool::new(PoolConfig::default().name("none").max_entries(2));
        for i in 0..10 {
            let _ = pool
                .get_or_create(&format!("{i}"), ok_created)
                .await
                .unwrap();
            let _ = pool.get(&format!("{i}"));
        }
        pool.reset().await;
        let _ = pool.stats();
        pool.shutdown().await;

        let server = testkit::ratelimit::RateLimitServer::start().await.unwrap();
        server.script(
            "/x",
            [
                Answer::status(429).retry_after(RetryAfter::Seconds(0)),
                Answer::ok(3),
            ],
        );
        let client = RetryClient::new().unwrap();
        let r = client
            .send(client.get(server.url("/x").parse().unwrap()))
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let _ = r.bytes().await;
    });
}

// ---------------------------------------------------------------- retry-transport

use retry_transport::{RetryClient, RetryPolicy};
use testkit::ratelimit::{Answer, RateLimitServer, RetryAfter};

#[test]
fn retry_429_then_200_is_one_throttled_retry() {
    let (stats, obs) = observe(false, || async {
        let server = RateLimitServer::start().await.unwrap();
        server.script(
            "/r",
            [
                Answer::status(429).retry_after(RetryAfter::Seconds(0)),
                Answer::ok(5),
            ],
        );
        let client = RetryClient::new().unwrap();
        let resp = client
            .send(client.get(server.url("/r").parse().unwrap()))
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        resp.bytes().await.unwrap();
        (client.stats(), client)
    });
    let (stats, _client) = stats;
    let host = [("server.address", "127.0.0.1")];
    assert_eq!(stats.retries.throttled, 1, "{stats:?}");
    assert_eq!(
        obs.counter_sum(
            "http.client.retries",
            &[("server.address", "127.0.0.1"), ("cause", "throttled")]
        ),
        1
    );
    assert_eq!(
        obs.counter_sum("http.client.retries", &[]),
        1,
        "no other cause"
    );
    assert_eq!(obs.counter_sum("http.client.attempts", &host), 2);
    assert_eq!(
        obs.counter_sum("http.client.attempts", &host),
        stats.attempts
    );
    let d = obs.find(
        "http.client.request.duration",
        &[
            ("server.address", "127.0.0.1"),
            ("http.request.method", "GET"),
            ("http.response.status_code", "200"),
        ],
    );
    assert_eq!(
        d.len(),
        1,
        "{:#?}",
        obs.named("http.client.request.duration")
    );
    assert_eq!(d[0].samples().len(), 1, "one duration sample per send");
    assert!(
        !d[0].labels.contains_key("error.type"),
        "no error.type on a 200"
    );
    assert_eq!(
        obs.gauge_of("http.client.active_requests", &host),
        Some(0.0)
    );
    use MetricKind::*;
    for (name, kind, unit) in [
        (
            "http.client.request.duration",
            Histogram,
            Some(Unit::Seconds),
        ),
        ("http.client.active_requests", Gauge, Some(Unit::Count)),
        ("http.client.attempts", Counter, Some(Unit::Count)),
        ("http.client.retries", Counter, Some(Unit::Count)),
        ("http.client.slot.count", Gauge, Some(Unit::Count)),
        ("http.client.slot.max", Gauge, Some(Unit::Count)),
        (
            "http.client.slot.pending_requests",
            Gauge,
            Some(Unit::Count),
        ),
        ("http.client.slot.wait_time", Histogram, Some(Unit::Seconds)),
    ] {
        obs.assert_shape(name, kind, unit);
    }
    // slots: all idle once the body is read
    assert_eq!(
        obs.gauge_of("http.client.slot.count", &[("state", "used")]),
        Some(0.0)
    );
    assert_eq!(
        obs.gauge_of("http.client.slot.max", &[]),
        Some(stats.max_in_use as f64)
    );
}

#[test]
fn retry_503_to_the_end_is_one_attempts_exhausted_give_up() {
    let (stats, obs) = observe(false, || async {
        let server = RateLimitServer::start().await.unwrap();
        server.set_default(Answer::status(503).retry_after(RetryAfter::Seconds(0)));
        let client = RetryClient::builder()
            .policy(RetryPolicy::default().max_attempts(3))
            .build()
            .unwrap();
        let resp = client
            .send(client.get(server.url("/u").parse().unwrap()))
            .await
            .unwrap();
        assert_eq!(resp.status(), 503);
        drop(resp);
        client.stats()
    });
    assert_eq!(stats.gave_up.attempts_exhausted, 1, "{stats:?}");
    assert_eq!(
        obs.counter_sum("http.client.give_ups", &[("reason", "attempts_exhausted")]),
        1
    );
    assert_eq!(
        obs.counter_sum("http.client.retries", &[("cause", "unavailable")]),
        stats.retries.unavailable
    );
    assert_eq!(obs.counter_sum("http.client.attempts", &[]), 3);
    let d = obs.find(
        "http.client.request.duration",
        &[("error.type", "503"), ("http.response.status_code", "503")],
    );
    assert_eq!(
        d.len(),
        1,
        "{:#?}",
        obs.named("http.client.request.duration")
    );
}

#[test]
fn hostile_paths_queries_headers_and_methods_never_become_labels() {
    let (_, obs) = observe(false, || async {
        let server = RateLimitServer::start().await.unwrap();
        server.set_default(Answer::status(404));
        let client = RetryClient::builder()
            .policy(RetryPolicy::never())
            .build()
            .unwrap();
        for (i, h) in HOSTILE.iter().enumerate() {
            let path = format!(
                "/accounts/acct-93c1f2d7/keys/sk_live_4f9c2b7e11aa/{i}?token={}&x=1",
                urlencode(h)
            );
            let url: reqwest::Url = server.url(&path).parse().unwrap();
            let req = client
                .get(url.clone())
                .header("x-api-key", "sk_live_4f9c2b7e11aa")
                .header("authorization", "Bearer eyJhbGciOiJIUzI1NiJ9.tok");
            let r = client.send(req).await.unwrap();
            assert_eq!(r.status(), 404);
            drop(r);
            // a custom method
            let method = reqwest::Method::from_bytes(b"ACCT93C1F2D7").unwrap();
            let r = client.send(client.request(method, url)).await.unwrap();
            drop(r);
        }
    });
    assert_no_hostile_label(
        &obs,
        &["ACCT93C1F2D7", "acct93c1f2d7", "/accounts", "token="],
    );
    for s in obs.named("http.client.request.duration") {
        let m = s.labels.get("http.request.method").map(String::as_str);
        assert!(matches!(m, Some("GET") | Some("_OTHER")), "{:?}", s.labels);
        assert_eq!(
            s.labels.get("server.address").map(String::as_str),
            Some("127.0.0.1")
        );
        assert_eq!(s.labels.get("error.type").map(String::as_str), Some("404"));
    }
    assert!(
        !obs.find(
            "http.client.request.duration",
            &[("http.request.method", "_OTHER")]
        )
        .is_empty(),
        "an unknown method is _OTHER"
    );
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[test]
fn more_than_64_hosts_share_other() {
    let (_, obs) = observe(false, || async {
        // nothing listens on 127.0.0.N:1 -> connection refused at once; one attempt each
        let client = RetryClient::builder()
            .policy(RetryPolicy::never())
            .build()
            .unwrap();
        for n in 2..=101u32 {
            let url: reqwest::Url = format!("http://127.0.0.{n}:1/acct-93c1f2d7")
                .parse()
                .unwrap();
            let _ = client.send(client.get(url)).await;
        }
    });
    let hosts: BTreeSet<String> = obs
        .0
        .iter()
        .filter_map(|s| s.labels.get("server.address").cloned())
        .collect();
    assert!(
        hosts.len() <= 65,
        "{} distinct hosts: {hosts:?}",
        hosts.len()
    );
    assert!(hosts.contains("_OTHER"), "{hosts:?}");
    let total: usize = obs
        .named("http.client.request.duration")
        .iter()
        .map(|s| s.samples().len())
        .sum();
    assert_eq!(total, 100, "every send has one duration sample");
    for s in obs.named("http.client.request.duration") {
        assert_eq!(
            s.labels.get("error.type").map(String::as_str),
            Some("transport"),
            "{:?}",
            s.labels
        );
        assert!(!s.labels.contains_key("http.response.status_code"));
    }
}

// ---------------------------------------------------------------- pool-core, several threads

#[test]
fn pool_hits_from_many_threads_add_up_after_a_stats_read() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let (stats, _pool) = metrics::with_local_recorder(&recorder, || {
        // the pool registers its handles here, on this thread, under the local recorder
        let pool: Arc<Pool> = Arc::new(KeyedPool::new(PoolConfig::default().name("mt")));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .enable_all()
            .build()
            .unwrap();
        let stats = rt.block_on({
            let pool = pool.clone();
            async move {
                for k in 0..8 {
                    let _ = pool
                        .get_or_create(&format!("k{k}"), ok_created)
                        .await
                        .unwrap();
                }
                let mut tasks = Vec::new();
                for t in 0..8 {
                    let pool = pool.clone();
                    tasks.push(tokio::spawn(async move {
                        for i in 0..1_003u32 {
                            assert!(pool.get(&format!("k{}", (i + t) % 8)).is_some());
                            if i % 97 == 0 {
                                tokio::task::yield_now().await;
                            }
                        }
                    }));
                }
                for t in tasks {
                    t.await.unwrap();
                }
                pool.stats()
            }
        });
        drop(rt);
        (stats, pool)
    });
    let obs = Observed(
        snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .map(|(ck, unit, _, value)| {
                let (kind, key) = ck.into_parts();
                Series {
                    kind,
                    labels: key
                        .labels()
                        .map(|l| (l.key().to_owned(), l.value().to_owned()))
                        .collect(),
                    name: key.name().to_owned(),
                    unit,
                    value,
                }
            })
            .collect(),
    );
    assert_eq!(stats.hits, 8 * 1_003);
    assert_eq!(
        obs.counter_sum("pool.hits", &[("pool.name", "mt")]),
        stats.hits,
        "hits published exactly on a stats() read"
    );
    assert_eq!(obs.counter_sum("pool.misses", &[("pool.name", "mt")]), 8);
}

#[test]
fn pool_hits_are_not_lost_when_the_pool_is_dropped() {
    // A pool dropped with fewer than 64 unpublished hits publishes them (found by this suite,
    // fixed in 6c1a818).
    let (_, obs) = observe(true, || async {
        let pool: Pool = KeyedPool::new(PoolConfig::default().name("dropped"));
        let _ = pool
            .get_or_create(&"a".to_owned(), ok_created)
            .await
            .unwrap();
        for _ in 0..10 {
            assert!(pool.get(&"a".to_owned()).is_some());
        }
        drop(pool);
    });
    assert_eq!(
        obs.counter_sum("pool.hits", &[("pool.name", "dropped")]),
        10
    );
}

// ---------------------------------------------------------------- token-refresh

use token_refresh::{BearerToken, Expiry, Fetched, RefreshConfig, TokenCache, TokenSource};

const SECRET: &str = "eyJ0eXAiOiJKV1QiLCJhbGciOi.SECRETTOKEN";

#[derive(Debug)]
struct SlowSource {
    calls: AtomicUsize,
    fail: bool,
}

impl TokenSource for SlowSource {
    type Token = BearerToken;
    type Error = std::io::Error;
    async fn fetch(&self) -> Result<Fetched<BearerToken>, std::io::Error> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(100)).await;
        if self.fail {
            return Err(std::io::Error::other(format!(
                "AADSTS7000215 invalid secret for acct-93c1f2d7 {SECRET}"
            )));
        }
        Ok(Fetched::new(
            BearerToken::new(SECRET),
            Expiry::In(Duration::from_secs(3600)),
        ))
    }
}

#[test]
fn token_100_cold_callers_are_one_blocking_refresh_and_100_waits() {
    let (stats, obs) = observe(true, || async {
        let cache = Arc::new(TokenCache::new(
            SlowSource {
                calls: AtomicUsize::new(0),
                fail: false,
            },
            RefreshConfig::default(),
        ));
        let mut tasks = Vec::new();
        for _ in 0..100 {
            let cache = cache.clone();
            tasks.push(tokio::spawn(async move { cache.token().await.unwrap() }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap().secret(), SECRET);
        }
        for _ in 0..5 {
            cache.token().await.unwrap();
        }
        assert_eq!(cache.source().calls.load(Ordering::SeqCst), 1);
        (cache.stats(), cache)
    });
    let (stats, _cache) = stats;
    assert_eq!(stats.blocking_fetches, 1, "{stats:?}");
    assert_eq!(
        obs.counter_sum("token.refresh.started", &[("mode", "blocking")]),
        1
    );
    assert_eq!(
        obs.counter_sum(
            "token.refreshes",
            &[("mode", "blocking"), ("outcome", "ok")]
        ),
        1
    );
    assert_eq!(
        obs.counter_sum("token.calls", &[("outcome", "waited")]),
        stats.waits
    );
    assert_eq!(
        obs.counter_sum("token.calls", &[("outcome", "waited")]),
        100
    );
    assert_eq!(
        obs.counter_sum("token.calls", &[("outcome", "fresh")]),
        stats.fresh_hits
    );
    assert_eq!(stats.fresh_hits, 5);
    let waits: Vec<f64> = obs
        .named("token.wait.duration")
        .iter()
        .flat_map(|s| s.samples())
        .collect();
    assert_eq!(waits.len(), 100);
    assert!(waits.iter().all(|w| (w - 0.1).abs() < 0.01), "{waits:?}");
    let exp = obs
        .gauge_of("token.expires_in", &[])
        .expect("token.expires_in");
    assert!((3590.0..=3600.0).contains(&exp), "expires_in {exp}");
    assert_eq!(
        obs.gauge_of("token.backoff.active", &[]).unwrap_or(0.0),
        0.0
    );
    use MetricKind::*;
    for (name, kind, unit) in [
        ("token.calls", Counter, Some(Unit::Count)),
        ("token.refresh.started", Counter, Some(Unit::Count)),
        ("token.refreshes", Counter, Some(Unit::Count)),
        ("token.expires_in", Gauge, Some(Unit::Seconds)),
        ("token.wait.duration", Histogram, Some(Unit::Seconds)),
    ] {
        obs.assert_shape(name, kind, unit);
    }
    assert_no_hostile_label(&obs, &[SECRET, "SECRETTOKEN"]);
}

#[test]
fn token_failed_refresh_error_text_is_no_label() {
    let (stats, obs) = observe(true, || async {
        let cache = TokenCache::new(
            SlowSource {
                calls: AtomicUsize::new(0),
                fail: true,
            },
            RefreshConfig::default(),
        );
        for _ in 0..3 {
            assert!(cache.token().await.is_err());
            tokio::time::advance(Duration::from_secs(30)).await;
        }
        cache.stats()
    });
    assert!(stats.blocking_failures >= 1, "{stats:?}");
    assert_eq!(
        obs.counter_sum(
            "token.refreshes",
            &[("mode", "blocking"), ("outcome", "failed")]
        ),
        stats.blocking_failures
    );
    for (name, key, value) in obs.all_label_values() {
        assert!(
            ["mode", "outcome"].contains(&key.as_str()),
            "{name}: undocumented label {key}={value}"
        );
        assert!(
            [
                "blocking",
                "background",
                "ok",
                "failed",
                "superseded",
                "discarded",
                "fresh",
                "stale",
                "waited",
                "served_during_backoff",
                "cached_error",
                "matched",
                "ignored"
            ]
            .contains(&value.as_str()),
            "{name}{{{key}={value}}}"
        );
    }
}

// ---------------------------------------------------------------- warmup-fanout

use warmup_fanout::{FanOut, FanOutConfig, ReadSpec};

#[test]
fn fanout_read_names_and_error_text_are_no_labels() {
    let (_, obs) = observe(true, || async {
        let mut fan = FanOut::new(FanOutConfig::default().default_timeout(Duration::from_secs(1)));
        let ok = fan.read(
            ReadSpec::new("log/acct-93c1f2d7/pod-sk_live_4f9c2b7e11aa", 0u32),
            async {
                tokio::time::sleep(Duration::from_millis(20)).await;
                Ok::<_, std::io::Error>(7u32)
            },
        );
        let bad = fan.read(
            ReadSpec::new("node/Bearer eyJhbGciOiJIUzI1NiJ9.tok", 0u32),
            async {
                Err::<u32, _>(std::io::Error::other(
                    "403 for acct-93c1f2d7 ../../etc/passwd",
                ))
            },
        );
        let slow = fan.read(ReadSpec::new("slow/\u{1F4A5}x\u{0}y", 0u32), async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok::<_, std::io::Error>(1u32)
        });
        let report = fan.join().await;
        assert_eq!(*ok.value(), 7);
        assert_eq!(*bad.value(), 0);
        assert_eq!(*slow.value(), 0);
        report
    });
    assert_eq!(obs.counter_sum("fanout.reads", &[("outcome", "ok")]), 1);
    assert_eq!(
        obs.counter_sum(
            "fanout.reads",
            &[("outcome", "degraded"), ("reason", "error")]
        ),
        1
    );
    assert_eq!(
        obs.counter_sum(
            "fanout.reads",
            &[("outcome", "degraded"), ("reason", "timeout")]
        ),
        1
    );
    for s in obs.find("fanout.reads", &[("outcome", "ok")]) {
        assert!(!s.labels.contains_key("reason"), "{:?}", s.labels);
    }
    assert_no_hostile_label(&obs, &["log/", "node/", "slow/", "403"]);
    for (name, key, value) in obs.all_label_values() {
        match key.as_str() {
            "outcome" => assert!(["ok", "degraded"].contains(&value.as_str())),
            "reason" => {
                assert!(["error", "timeout", "panic", "cancelled"].contains(&value.as_str()))
            }
            "phase" => {
                assert!(value == "16+" || value.parse::<u8>().is_ok_and(|p| (1..=15).contains(&p)))
            }
            other => panic!("{name}: undocumented label {other}={value}"),
        }
    }
    let phase1: Vec<f64> = obs
        .find("fanout.phase.duration", &[("phase", "1")])
        .iter()
        .flat_map(|s| s.samples())
        .collect();
    assert_eq!(phase1.len(), 1, "{:#?}", obs.named("fanout.phase.duration"));
    assert!(
        (phase1[0] - 1.0).abs() < 0.01,
        "phase 1 ends at the 1 s timeout: {phase1:?}"
    );
    let reads: usize = obs
        .named("fanout.read.duration")
        .iter()
        .map(|s| s.samples().len())
        .sum();
    assert_eq!(reads, 3);
    use MetricKind::*;
    for (name, kind, unit) in [
        ("fanout.reads", Counter, Some(Unit::Count)),
        ("fanout.read.duration", Histogram, Some(Unit::Seconds)),
        ("fanout.phase.duration", Histogram, Some(Unit::Seconds)),
        ("fanout.duration", Histogram, Some(Unit::Seconds)),
    ] {
        obs.assert_shape(name, kind, unit);
    }
}

// ---------------------------------------------------------------- request-inspector

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use request_inspector::{InspectBody, Inspector, InspectorConfig};
use tower::{Layer, ServiceExt};

#[test]
fn inspector_series_match_stats_and_paths_are_no_labels() {
    let (out, obs) = observe(true, || async {
        let inspector = Inspector::new(
            InspectorConfig::new()
                .capacity(4)
                .body_limit(16)
                .polling_prefixes(["/api/monitor/"])
                .unwrap(),
        );
        let inner = tower::service_fn(|req: http::Request<InspectBody<Full<Bytes>>>| async move {
            let _ = req.into_body().collect().await;
            Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from(vec![
                b'r';
                50
            ]))))
        });
        let svc = inspector.layer().layer(inner);
        for (i, h) in HOSTILE.iter().enumerate() {
            for j in 0..2 {
                let path = format!(
                    "/api/accounts/acct-93c1f2d7/keys/sk_live_4f9c2b7e11aa/{i}{j}?k={}",
                    urlencode(h)
                );
                let req = http::Request::post(path)
                    .header("x-api-key", "sk_live_4f9c2b7e11aa")
                    .header("x-owner", "acct-93c1f2d7")
                    .body(Full::new(Bytes::from(vec![b'q'; 100])))
                    .unwrap();
                let resp = svc.clone().oneshot(req).await.unwrap();
                let _ = resp.into_body().collect().await.unwrap();
            }
        }
        for n in 0..3 {
            let req = http::Request::get(format!("/api/monitor/acct-93c1f2d7/{n}"))
                .body(Full::new(Bytes::new()))
                .unwrap();
            let resp = svc.clone().oneshot(req).await.unwrap();
            let _ = resp.into_body().collect().await.unwrap();
        }
        tokio::task::yield_now().await;
        let limit = inspector.stats();
        (limit, inspector)
    });
    let (stats, inspector) = out;
    let n = 2 * HOSTILE.len() as u64;
    assert_eq!(stats.captured, n, "{stats:?}");
    assert_eq!(stats.passed_through, 3, "{stats:?}");
    assert_eq!(
        obs.counter_sum("inspector.requests", &[("mode", "captured")]),
        stats.captured
    );
    assert_eq!(
        obs.counter_sum("inspector.requests", &[("mode", "streamed")]),
        stats.passed_through
    );
    assert_eq!(
        obs.counter_sum("inspector.ring.evictions", &[]),
        stats.evicted
    );
    assert_eq!(stats.evicted, n - 4);
    assert_eq!(
        obs.counter_sum("inspector.bodies.truncated", &[]),
        stats.truncated_bodies
    );
    assert_eq!(
        stats.truncated_bodies,
        2 * n,
        "request and response bodies are cut"
    );
    let limit = inspector_body_limit(&inspector);
    assert_eq!(
        obs.counter_sum("inspector.captured.bytes", &[("body", "request")]),
        n * limit
    );
    assert_eq!(
        obs.counter_sum("inspector.captured.bytes", &[("body", "response")]),
        n * limit
    );
    assert_eq!(
        obs.gauge_of("inspector.ring.entries", &[]),
        Some(stats.ring_len as f64)
    );
    assert_eq!(
        obs.gauge_of("inspector.ring.bytes", &[]),
        Some((stats.ring_bytes + stats.ring_slot_bytes) as f64)
    );
    assert_no_hostile_label(&obs, &["/api/", "monitor"]);
    for (name, key, value) in obs.all_label_values() {
        match key.as_str() {
            "mode" => assert!(["captured", "streamed", "unowned"].contains(&value.as_str())),
            "body" => assert!(["request", "response"].contains(&value.as_str())),
            other => panic!("{name}: undocumented label {other}={value}"),
        }
    }
    use MetricKind::*;
    for (name, kind, unit) in [
        ("inspector.requests", Counter, Some(Unit::Count)),
        ("inspector.captured.bytes", Counter, Some(Unit::Bytes)),
        ("inspector.bodies.truncated", Counter, Some(Unit::Count)),
        ("inspector.ring.evictions", Counter, Some(Unit::Count)),
        ("inspector.ring.entries", Gauge, Some(Unit::Count)),
        ("inspector.ring.bytes", Gauge, Some(Unit::Bytes)),
    ] {
        obs.assert_shape(name, kind, unit);
    }
}

/// The configured body limit (16, unless the crate clamps it: then what it reports).
fn inspector_body_limit(_inspector: &Inspector) -> u64 {
    InspectorConfig::new().body_limit(16).body_limit_bytes() as u64
}

// ---------------------------------------------------------------- apikey-cache

use apikey_cache::{ApiKeyCache, AuthError, CacheConfig, MemoryStore};

/// A well-formed key issued by another store: unknown to the cache under test.
fn foreign_key() -> String {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let other = ApiKeyCache::new(MemoryStore::new(), CacheConfig::default());
        let acct = other.create_account("other", "Other").await.unwrap();
        other
            .issue_key(&acct)
            .await
            .unwrap()
            .secret
            .expose()
            .to_owned()
    })
}

#[test]
fn apikey_outcomes_match_stats_and_keys_are_no_labels() {
    let foreign = foreign_key();
    let (out, obs) = observe(true, || {
        let foreign = foreign.clone();
        async move {
            let cache = ApiKeyCache::new(MemoryStore::new(), CacheConfig::default());
            cache.refresh().await.unwrap();
            let acct = cache.create_account("acct-93c1f2d7", "Acme").await.unwrap();
            let good = cache.issue_key(&acct).await.unwrap();
            let bad = cache.issue_key(&acct).await.unwrap();
            cache.revoke_key(&bad.identity.key).await.unwrap();
            let mut seen = (0u64, 0u64, 0u64, 0u64);
            for _ in 0..3 {
                match cache.authenticate(good.secret.expose()).await {
                    Ok(_) => seen.0 += 1,
                    Err(e) => panic!("good key: {e:?}"),
                }
                match cache.authenticate(bad.secret.expose()).await {
                    Err(AuthError::Revoked) => seen.1 += 1,
                    other => panic!("revoked key: {other:?}"),
                }
                match cache.authenticate(&foreign).await {
                    Err(AuthError::Unknown) => seen.2 += 1,
                    other => panic!("foreign key: {other:?}"),
                }
                for h in HOSTILE {
                    match cache.authenticate(h).await {
                        Err(AuthError::Malformed | AuthError::Unknown) => seen.3 += 1,
                        other => panic!("hostile {h:?}: {other:?}"),
                    }
                }
            }
            let secrets = [
                good.secret.expose().to_owned(),
                bad.secret.expose().to_owned(),
            ];
            (cache.stats(), seen, secrets, cache)
        }
    });
    let (stats, seen, secrets, _cache) = out;
    assert_eq!(
        obs.counter_sum("apikey.authentications", &[("outcome", "ok")]),
        seen.0
    );
    assert_eq!(
        obs.counter_sum("apikey.authentications", &[("outcome", "revoked")]),
        stats.rejected_revoked
    );
    assert_eq!(stats.rejected_revoked, seen.1);
    assert_eq!(
        obs.counter_sum("apikey.authentications", &[("outcome", "unknown")]),
        stats.rejected_unknown
    );
    assert_eq!(
        obs.counter_sum("apikey.authentications", &[("outcome", "malformed")]),
        stats.rejected_malformed
    );
    assert_eq!(
        obs.counter_sum("apikey.authentications", &[]),
        seen.0 + seen.1 + seen.2 + seen.3,
        "every authenticate answer counted once"
    );
    assert_eq!(
        obs.gauge_of("apikey.negative_cache.entries", &[])
            .unwrap_or(0.0),
        stats.negative_entries as f64
    );
    assert_eq!(
        obs.counter_sum("apikey.reload.failures", &[]),
        stats.reload_failures
    );
    let extra: Vec<&str> = secrets
        .iter()
        .map(String::as_str)
        .chain([foreign.as_str(), "acct-93c1f2d7", "Acme"])
        .collect();
    assert_no_hostile_label(&obs, &extra);
    for (name, key, value) in obs.all_label_values() {
        match key.as_str() {
            "outcome" => assert!(
                [
                    "ok",
                    "unknown",
                    "revoked",
                    "unavailable",
                    "malformed",
                    "error"
                ]
                .contains(&value.as_str()),
                "{name} {value}"
            ),
            "operation" => assert!(
                ["load", "get_record", "read_feed"].contains(&value.as_str()),
                "{name} {value}"
            ),
            other => panic!("{name}: undocumented label {other}={value}"),
        }
    }
    use MetricKind::*;
    for (name, kind, unit) in [
        ("apikey.authentications", Counter, Some(Unit::Count)),
        ("apikey.store.reads", Counter, Some(Unit::Count)),
        ("apikey.store.read.duration", Histogram, Some(Unit::Seconds)),
    ] {
        obs.assert_shape(name, kind, unit);
    }
}

// ---------------------------------------------------------------- retry-transport slots

use retry_transport::Limits;

#[test]
fn slot_gauges_follow_an_unread_body_and_a_pool_timeout() {
    let (out, obs_mid_and_end) = observe(false, || async {
        let server = RateLimitServer::start().await.unwrap();
        server.set_default(Answer::ok(10));
        let client = RetryClient::builder()
            .limits(
                Limits::default()
                    .max_in_use(1)
                    .acquire_timeout(Duration::from_millis(200)),
            )
            .policy(RetryPolicy::never())
            .build()
            .unwrap();
        let other = RetryClient::builder()
            .limits(Limits::default().max_in_use(3))
            .build()
            .unwrap();
        let url: reqwest::Url = server.url("/held").parse().unwrap();
        let held = client.send(client.get(url.clone())).await.unwrap();
        let err = client.send(client.get(url.clone())).await.unwrap_err();
        assert!(err.is_pool_timeout(), "{err:?}");
        let stats = client.stats();
        drop(held);
        drop(other);
        (stats, client)
    });
    let (stats, _client) = out;
    let obs = obs_mid_and_end;
    assert_eq!(stats.pool_timeouts, 1, "{stats:?}");
    assert_eq!(obs.counter_sum("http.client.slot.timeouts", &[]), 1);
    let d = obs.find(
        "http.client.request.duration",
        &[("error.type", "pool_timeout")],
    );
    assert_eq!(
        d.len(),
        1,
        "{:#?}",
        obs.named("http.client.request.duration")
    );
    assert!(!d[0].labels.contains_key("http.response.status_code"));
    let waits: Vec<f64> = obs
        .named("http.client.slot.wait_time")
        .iter()
        .flat_map(|s| s.samples())
        .collect();
    assert!(
        waits.iter().any(|w| (0.19..1.0).contains(w)),
        "the timed-out wait is in wait_time: {waits:?}"
    );
    // after the body is dropped and the other client is gone
    assert_eq!(
        obs.gauge_of("http.client.slot.count", &[("state", "used")]),
        Some(0.0)
    );
    assert_eq!(
        obs.gauge_of("http.client.slot.count", &[("state", "idle")]),
        Some(1.0)
    );
    assert_eq!(obs.gauge_of("http.client.slot.max", &[]), Some(1.0));
    assert_eq!(
        obs.gauge_of("http.client.slot.pending_requests", &[]),
        Some(0.0)
    );
    assert_eq!(
        obs.gauge_of(
            "http.client.active_requests",
            &[("server.address", "127.0.0.1")]
        ),
        Some(0.0)
    );
}

#[test]
fn url_userinfo_and_port_never_reach_server_address() {
    let (_, obs) = observe(false, || async {
        let server = RateLimitServer::start().await.unwrap();
        server.set_default(Answer::ok(1));
        let client = RetryClient::new().unwrap();
        let port = server.addr().port();
        let url: reqwest::Url = format!(
            "http://acct-93c1f2d7:sk_live_4f9c2b7e11aa@127.0.0.1:{port}/x#frag-acct-93c1f2d7"
        )
        .parse()
        .unwrap();
        let r = client.send(client.get(url)).await.unwrap();
        let _ = r.bytes().await;
        // the same host in upper case and as localhost
        let url: reqwest::Url = format!("http://LOCALHOST:{port}/y").parse().unwrap();
        if let Ok(r) = client.send(client.get(url)).await {
            let _ = r.bytes().await;
        }
    });
    assert_no_hostile_label(&obs, &[":sk_", "@", "frag"]);
    let hosts: BTreeSet<String> = obs
        .0
        .iter()
        .filter_map(|s| s.labels.get("server.address").cloned())
        .collect();
    for h in &hosts {
        assert!(!h.contains(':'), "server.address has no port: {h}");
    }
    assert!(hosts.contains("127.0.0.1"), "{hosts:?}");
}

#[test]
fn pool_1000_cold_callers_of_a_failing_factory_are_one_failure() {
    let (out, obs) = observe(true, || async {
        let pool: Arc<Pool> = Arc::new(KeyedPool::new(PoolConfig::default().name("failing")));
        let calls = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..1000 {
            let pool = pool.clone();
            let calls = calls.clone();
            tasks.push(tokio::spawn(async move {
                pool.get_or_create(&"sk_live_4f9c2b7e11aa".to_owned(), || async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Err::<Created<Plain>, _>(std::io::Error::other("acct-93c1f2d7 denied"))
                })
                .await
                .is_err()
            }));
        }
        for t in tasks {
            assert!(t.await.unwrap());
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1, "one factory call shared");
        (pool.stats(), pool)
    });
    let (stats, _pool) = out;
    let l = [("pool.name", "failing")];
    assert_eq!(stats.creation_failures, 1, "{stats:?}");
    assert_eq!(obs.counter_sum("pool.creation_failures", &l), 1);
    assert_eq!(obs.counter_sum("pool.creations", &l), 0);
    assert_eq!(obs.counter_sum("pool.coalesced", &l), stats.coalesced);
    assert_eq!(obs.counter_sum("pool.misses", &l), stats.misses);
    let errs: usize = obs
        .find(
            "pool.create.duration",
            &[("pool.name", "failing"), ("outcome", "error")],
        )
        .iter()
        .map(|s| s.samples().len())
        .sum();
    assert_eq!(errs, 1);
    assert_eq!(obs.gauge_of("pool.entries", &l).unwrap_or(0.0), 0.0);
    assert_no_hostile_label(&obs, &["denied"]);
}

#[test]
fn pool_entries_gauge_is_zero_after_shutdown_and_after_reset() {
    let (out, obs) = observe(true, || async {
        let a: Pool = KeyedPool::new(PoolConfig::default().name("shut"));
        let b: Pool = KeyedPool::new(PoolConfig::default().name("rst"));
        for i in 0..5 {
            let _ = a.get_or_create(&format!("{i}"), ok_created).await.unwrap();
            let _ = b.get_or_create(&format!("{i}"), ok_created).await.unwrap();
        }
        let report = a.shutdown().await;
        b.reset().await;
        tokio::task::yield_now().await;
        (report, a.stats(), b.stats(), a, b)
    });
    let (_report, sa, sb, _a, _b) = out;
    assert_eq!(sa.entries, 0);
    assert_eq!(sb.entries, 0);
    assert_eq!(
        obs.gauge_of("pool.entries", &[("pool.name", "shut")]),
        Some(0.0)
    );
    assert_eq!(
        obs.gauge_of("pool.entries", &[("pool.name", "rst")]),
        Some(0.0)
    );
    assert_eq!(
        obs.counter_sum(
            "pool.evictions",
            &[("pool.name", "rst"), ("cause", "reset")]
        ),
        5
    );
}

#[test]
fn pool_capacity_evictions_and_thrashing_match_stats() {
    let (out, obs) = observe(true, || async {
        let pool: Pool = KeyedPool::new(PoolConfig::default().name("cap").max_entries(3));
        for round in 0..5 {
            for k in 0..6 {
                let _ = pool
                    .get_or_create(&format!("k{k}"), ok_created)
                    .await
                    .unwrap();
                let _ = round;
            }
        }
        (pool.stats(), pool)
    });
    let (stats, _pool) = out;
    assert!(
        stats.evictions.capacity > 0 && stats.thrashing > 0,
        "{stats:?}"
    );
    assert_eq!(
        obs.counter_sum(
            "pool.evictions",
            &[("pool.name", "cap"), ("cause", "capacity")]
        ),
        stats.evictions.capacity
    );
    assert_eq!(
        obs.counter_sum("pool.thrashing", &[("pool.name", "cap")]),
        stats.thrashing
    );
    assert_eq!(
        obs.gauge_of("pool.entries", &[("pool.name", "cap")]),
        Some(3.0)
    );
}

// ---------------------------------------------------------------- k8s-session

use k8s_session::{KubeconfigSource, SessionKey, SessionPool};
use metrics_util::debugging::Snapshotter;
use testkit::k8s::{Fixtures, K8sServer};

fn observed_now(snapshotter: &Snapshotter) -> Observed {
    Observed(
        snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .map(|(ck, unit, _, value)| {
                let (kind, key) = ck.into_parts();
                Series {
                    kind,
                    labels: key
                        .labels()
                        .map(|l| (l.key().to_owned(), l.value().to_owned()))
                        .collect(),
                    name: key.name().to_owned(),
                    unit,
                    value,
                }
            })
            .collect(),
    )
}

/// One run against a fresh test API server: take `n` sessions, optionally use the first, then
/// either snapshot while they are held, or return them (drop or `close`) and snapshot. The
/// debugging recorder's snapshot swaps counters and gauges to 0, so each run snapshots once.
fn k8s_run(
    n: usize,
    use_client: bool,
    ret: Option<bool>,
) -> (Observed, pool_core::PoolStats, k8s_session::ConnectionStats) {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let server = K8sServer::with_fixtures(Fixtures::sample()).await.unwrap();
            let pool =
                SessionPool::builder(KubeconfigSource::from_kubeconfig(server.kubeconfig_token()))
                    .knobs_from(|_| None)
                    .build();
            let key = SessionKey::new("sub-93c1f2d7-0000", "rg-acct-93c1f2d7", "local");
            let mut sessions = Vec::new();
            for _ in 0..n {
                sessions.push(pool.session(&key).await.unwrap());
            }
            if use_client {
                let _ = sessions[0].client().apiserver_version().await.unwrap();
            }
            if let Some(close) = ret {
                for s in sessions.drain(..) {
                    if close {
                        s.close();
                    } else {
                        drop(s);
                    }
                }
                tokio::task::yield_now().await;
            }
            let stats = pool.stats();
            let conn = pool.connection_stats();
            let obs = observed_now(&snapshotter);
            drop(sessions);
            drop(pool);
            (obs, stats, conn)
        })
    })
}

#[test]
fn k8s_sessions_in_use_and_pool_series_are_labelled_by_cluster_only() {
    let c = [("k8s.cluster.name", "local")];
    let mut wrong = Vec::new();
    for (variant, n, use_client, ret) in [
        ("one held, unused", 1, false, None),
        ("two held, used", 2, true, None),
        ("one dropped, unused", 1, false, Some(false)),
        ("one dropped, used", 1, true, Some(false)),
        ("one closed, used", 1, true, Some(true)),
        ("two dropped, used", 2, true, Some(false)),
    ] {
        let (obs, stats, conn) = k8s_run(n, use_client, ret);
        let want = if ret.is_some() { 0.0 } else { n as f64 };
        let got = obs.gauge_of("k8s.session.sessions.in_use", &c);
        if got != Some(want) {
            wrong.push(format!("{variant}: sessions.in_use {got:?}, want {want}"));
        }
        let active = obs
            .gauge_of("k8s.session.active_requests", &c)
            .unwrap_or(0.0);
        if active != 0.0 {
            wrong.push(format!("{variant}: active_requests {active}"));
        }
        let p = [("pool.name", "k8s-session")];
        for (name, want) in [
            ("pool.creations", stats.creations),
            ("pool.misses", stats.misses),
            ("pool.hits", stats.hits),
            ("pool.coalesced", stats.coalesced),
        ] {
            let got = obs.counter_sum(name, &p);
            if got != want {
                wrong.push(format!("{variant}: {name} {got}, stats {want}"));
            }
        }
        let entries = obs.gauge_of("pool.entries", &p);
        if entries != Some(stats.entries as f64) {
            wrong.push(format!(
                "{variant}: pool.entries {entries:?}, stats {}",
                stats.entries
            ));
        }
        let conns = obs.counter_sum("k8s.session.connections", &c);
        if conns != conn.http2_connections + conn.http1_connections {
            wrong.push(format!("{variant}: connections {conns} vs {conn:?}"));
        }
        if use_client && conns == 0 {
            wrong.push(format!(
                "{variant}: a used session opened no counted connection"
            ));
        }
        let fallbacks = obs.counter_sum("k8s.session.http1_fallbacks", &c);
        if fallbacks != conn.http1_fallbacks {
            wrong.push(format!(
                "{variant}: http1_fallbacks {fallbacks} vs {conn:?}"
            ));
        }
        for s in &obs.0 {
            for (k, v) in &s.labels {
                match k.as_str() {
                    "k8s.cluster.name" => assert_eq!(v, "local"),
                    "pool.name" => assert_eq!(v, "k8s-session"),
                    "network.protocol.version" => assert!(v == "2" || v == "1.1", "{v}"),
                    "outcome" | "cause" => {}
                    other => panic!("{}: undocumented label {other}={v}", s.name),
                }
                assert!(!v.contains("93c1f2d7"), "{}: {k}={v}", s.name);
            }
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

#[test]
fn retry_after_over_cap_is_a_give_up_and_the_429_duration() {
    let (out, obs) = observe(false, || async {
        let server = RateLimitServer::start().await.unwrap();
        server.set_default(Answer::status(429).retry_after(RetryAfter::Seconds(3600)));
        let client = RetryClient::new().unwrap();
        let r = client
            .send(client.get(server.url("/acct-93c1f2d7/cap").parse().unwrap()))
            .await
            .unwrap();
        assert_eq!(r.status(), 429);
        drop(r);
        (client.stats(), client)
    });
    let (stats, _client) = out;
    assert_eq!(stats.gave_up.retry_after_over_cap, 1, "{stats:?}");
    assert_eq!(
        obs.counter_sum(
            "http.client.give_ups",
            &[("reason", "retry_after_over_cap")]
        ),
        1
    );
    assert_eq!(obs.counter_sum("http.client.retries", &[]), 0);
    let d = obs.find(
        "http.client.request.duration",
        &[("error.type", "429"), ("http.response.status_code", "429")],
    );
    assert_eq!(
        d.len(),
        1,
        "{:#?}",
        obs.named("http.client.request.duration")
    );
    assert_no_hostile_label(&obs, &["/cap"]);
}

#[test]
fn inspector_unowned_requests_are_counted_not_labelled() {
    let (out, obs) = observe(true, || async {
        fn owner(ext: &http::Extensions) -> Option<String> {
            ext.get::<String>().cloned()
        }
        let inspector =
            Inspector::new(InspectorConfig::new().owner_from(owner).require_owner(true));
        let inner = tower::service_fn(|req: http::Request<InspectBody<Full<Bytes>>>| async move {
            let _ = req.into_body().collect().await;
            Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from_static(
                b"ok",
            ))))
        });
        let svc = inspector.layer().layer(inner);
        for i in 0..5 {
            let mut req = http::Request::post(format!("/api/jobs/acct-93c1f2d7/{i}"))
                .body(Full::new(Bytes::from_static(b"x")))
                .unwrap();
            if i % 2 == 0 {
                req.extensions_mut().insert("acct-93c1f2d7".to_owned());
            }
            let resp = svc.clone().oneshot(req).await.unwrap();
            let _ = resp.into_body().collect().await.unwrap();
        }
        tokio::task::yield_now().await;
        (inspector.stats(), inspector)
    });
    let (stats, _inspector) = out;
    assert_eq!(stats.not_recorded_unowned, 2, "{stats:?}");
    assert_eq!(stats.captured, 3, "{stats:?}");
    assert_eq!(
        obs.counter_sum("inspector.requests", &[("mode", "unowned")]),
        2
    );
    assert_eq!(
        obs.counter_sum("inspector.requests", &[("mode", "captured")]),
        3
    );
    assert_no_hostile_label(&obs, &["/api/jobs"]);
    for (name, key, _) in obs.all_label_values() {
        assert!(key == "mode" || key == "body", "{name}: label {key}");
    }
}

/// "at most 64 per client, later ones share `_OTHER`": a client's views (`with_policy`,
/// `with_partition`) and its `reset()` are the same client, so the cap holds across them.
#[test]
fn host_cap_holds_across_views_and_resets() {
    let (_, obs) = observe(false, || async {
        let client = RetryClient::builder()
            .policy(RetryPolicy::never())
            .build()
            .unwrap();
        let mut n = 2u32;
        for round in 0..3 {
            for _ in 0..40 {
                let view = match n % 2 {
                    0 => client.with_policy(RetryPolicy::never()),
                    _ => client.with_partition(format!("p{n}")),
                };
                let url: reqwest::Url = format!("http://127.0.1.{n}:1/x").parse().unwrap();
                let _ = view.send(view.get(url)).await;
                n += 1;
            }
            if round < 2 {
                client.reset().unwrap();
            }
        }
    });
    let hosts: BTreeSet<String> = obs
        .0
        .iter()
        .filter_map(|s| s.labels.get("server.address").cloned())
        .collect();
    assert!(
        hosts.len() <= 65,
        "{} distinct server.address values",
        hosts.len()
    );
}

#[test]
fn token_invalidations_by_outcome_match_stats() {
    let (out, obs) = observe(true, || async {
        let cache = TokenCache::new(
            SlowSource {
                calls: AtomicUsize::new(0),
                fail: false,
            },
            RefreshConfig::default(),
        );
        let t = cache.token().await.unwrap();
        assert!(!cache.invalidate_token(&BearerToken::new("sk_live_4f9c2b7e11aa")));
        assert!(cache.invalidate_token(&t));
        let t2 = cache.token().await.unwrap();
        assert_eq!(t2.secret(), SECRET);
        (cache.stats(), cache)
    });
    let (stats, _cache) = out;
    assert_eq!(
        obs.counter_sum("token.invalidations", &[("outcome", "matched")]),
        stats.invalidations
    );
    assert_eq!(
        obs.counter_sum("token.invalidations", &[("outcome", "ignored")]),
        stats.invalidations_ignored
    );
    assert_eq!(stats.invalidations, 1, "{stats:?}");
    assert_eq!(stats.invalidations_ignored, 1, "{stats:?}");
    assert_eq!(
        obs.counter_sum("token.invalidated_refreshes", &[]),
        stats.invalidated_refreshes
    );
    assert_eq!(
        obs.counter_sum("token.refresh.started", &[("mode", "blocking")]),
        2
    );
    assert_no_hostile_label(&obs, &[SECRET]);
}

#[test]
fn apikey_negative_cache_gauge_is_bounded_by_its_capacity_under_a_scan() {
    // 200 well-formed keys from another store: a scan of unknown keys.
    let keys: Vec<String> = {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let other = ApiKeyCache::new(MemoryStore::new(), CacheConfig::default());
            let acct = other.create_account("other", "Other").await.unwrap();
            let mut keys = Vec::new();
            for _ in 0..200 {
                keys.push(
                    other
                        .issue_key(&acct)
                        .await
                        .unwrap()
                        .secret
                        .expose()
                        .to_owned(),
                );
            }
            keys
        })
    };
    let (out, obs) = observe(true, || {
        let keys = keys.clone();
        async move {
            let cache = ApiKeyCache::new(
                MemoryStore::new(),
                CacheConfig::default().negative_capacity(16),
            );
            cache.refresh().await.unwrap();
            let mut unknown = 0u64;
            for k in &keys {
                if matches!(cache.authenticate(k).await, Err(AuthError::Unknown)) {
                    unknown += 1;
                }
                tokio::time::advance(Duration::from_millis(100)).await;
            }
            (cache.stats(), unknown, cache)
        }
    });
    let (stats, unknown, _cache) = out;
    assert_eq!(unknown, 200);
    assert!(stats.negative_entries <= 16, "{stats:?}");
    let g = obs
        .gauge_of("apikey.negative_cache.entries", &[])
        .expect("negative_cache.entries");
    assert!((0.0..=16.0).contains(&g), "gauge {g}");
    assert_eq!(g, stats.negative_entries as f64);
    assert_eq!(
        obs.counter_sum("apikey.authentications", &[("outcome", "unknown")]),
        200
    );
    let extra: Vec<&str> = keys.iter().map(String::as_str).collect();
    assert_no_hostile_label(&obs, &extra);
}

#[test]
fn fanout_panics_and_deep_phases_are_bounded_labels() {
    let (_, obs) = observe(true, || async {
        let mut fan = FanOut::new(FanOutConfig::default().default_timeout(Duration::from_secs(5)));
        let _p = fan.read(ReadSpec::new("panics-acct-93c1f2d7", 0u32), async {
            if true {
                panic!("sk_live_4f9c2b7e11aa leaked in a panic");
            }
            Ok::<_, std::io::Error>(1u32)
        });
        // a chain of 20 dependent reads: phases 1 ..= 20
        let mut prev = fan.read(ReadSpec::new("step-0", 0u32), async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            Ok::<_, std::io::Error>(0u32)
        });
        for i in 1..20u32 {
            prev = fan.read_after(
                ReadSpec::new(format!("step-{i}"), 0u32),
                prev.clone(),
                move |v: Arc<u32>| async move {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    Ok::<_, std::io::Error>(*v + 1)
                },
            );
        }
        let _report = fan.join().await;
        assert_eq!(*prev.value(), 19);
    });
    assert_eq!(
        obs.counter_sum(
            "fanout.reads",
            &[("outcome", "degraded"), ("reason", "panic")]
        ),
        1
    );
    assert_eq!(obs.counter_sum("fanout.reads", &[("outcome", "ok")]), 20);
    let phases: BTreeSet<String> = obs
        .named("fanout.phase.duration")
        .iter()
        .filter(|s| !s.samples().is_empty())
        .map(|s| s.labels["phase"].clone())
        .collect();
    assert!(phases.contains("16+"), "{phases:?}");
    assert!(phases.len() <= 16, "{phases:?}");
    let deep: usize = obs
        .find("fanout.phase.duration", &[("phase", "16+")])
        .iter()
        .map(|s| s.samples().len())
        .sum();
    assert!(deep >= 1, "phases 16..=20 land in 16+");
    assert_no_hostile_label(&obs, &["leaked", "step-", "panics-"]);
}

#[derive(Debug)]
struct FailingThenOkCredential {
    calls: AtomicUsize,
    fail_all: bool,
}

impl retry_transport::Credential for FailingThenOkCredential {
    fn authorization(
        &self,
        _refresh: bool,
    ) -> futures::future::BoxFuture<'_, Result<http::HeaderValue, retry_transport::BoxError>> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        let fail = self.fail_all;
        Box::pin(async move {
            if fail {
                return Err("AADSTS700016 app acct-93c1f2d7 not found".into());
            }
            Ok(http::HeaderValue::from_str(&format!("Bearer sk_live_4f9c2b7e11aa{n}")).unwrap())
        })
    }
}

#[test]
fn a_401_is_one_unauthorized_retry_and_a_failing_credential_is_error_type_credential() {
    let (out, obs) = observe(false, || async {
        let server = RateLimitServer::start().await.unwrap();
        server.script("/auth", [Answer::status(401), Answer::ok(2)]);
        server.set_default(Answer::ok(1));
        let client = RetryClient::builder()
            .credential(Arc::new(FailingThenOkCredential {
                calls: AtomicUsize::new(0),
                fail_all: false,
            }))
            .build()
            .unwrap();
        let r = client
            .send(client.get(server.url("/auth").parse().unwrap()))
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let _ = r.bytes().await;
        let broken = RetryClient::builder()
            .credential(Arc::new(FailingThenOkCredential {
                calls: AtomicUsize::new(0),
                fail_all: true,
            }))
            .policy(RetryPolicy::never())
            .build()
            .unwrap();
        let e = broken
            .send(broken.get(server.url("/nope").parse().unwrap()))
            .await;
        assert!(e.is_err());
        (client.stats(), client, broken)
    });
    let (stats, _c, _b) = out;
    assert_eq!(stats.retries.unauthorized, 1, "{stats:?}");
    assert_eq!(
        obs.counter_sum("http.client.retries", &[("cause", "unauthorized")]),
        1
    );
    let cred = obs.find(
        "http.client.request.duration",
        &[("error.type", "credential")],
    );
    assert_eq!(
        cred.len(),
        1,
        "{:#?}",
        obs.named("http.client.request.duration")
    );
    assert_no_hostile_label(&obs, &["AADSTS", "Bearer"]);
}
