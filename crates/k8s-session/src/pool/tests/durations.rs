//! Extreme durations and expiries (X5, issue #16): no setting or credential expiry panics.

use std::time::SystemTime;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::*;

/// An unsigned JWT whose `exp` claim is the raw JSON `exp`.
fn jwt_raw(exp: &str) -> String {
    format!(
        "{}.{}.sig",
        URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#),
        URL_SAFE_NO_PAD.encode(format!(r#"{{"exp":{exp}}}"#))
    )
}

fn pool_with(
    source: MapSource,
    build: impl FnOnce(SessionPoolBuilder) -> SessionPoolBuilder,
) -> SessionPool {
    build(
        SessionPool::builder(source)
            .clock(Arc::new(FixedClock::new(wall_now())))
            .knobs_from(|_| None),
    )
    .build()
}

/// 9999-12-31T23:59:59Z, the latest time an X.509 certificate can state.
fn year_9999() -> SystemTime {
    SystemTime::UNIX_EPOCH + secs(253_402_300_799)
}

// covers K3, X5: `ttl(Duration::MAX)` used to panic on the first session (`Instant::now() +
// ttl`) for material without expiries. It is clamped to the knob's range (86 400 s).
#[tokio::test(start_paused = true)]
async fn builder_ttl_duration_max_is_clamped_and_never_panics() {
    let pool = pool_with(
        MapSource::default().with(&key("a"), token_kubeconfig("opaque-token")),
        |b| b.ttl(Duration::MAX),
    );
    let session = pool.session(&key("a")).await.unwrap();
    assert!(session.is_pooled());
    assert_eq!(session.deadline(), Some(Instant::now() + secs(86_400)));
    assert_eq!(session.effective_ttl().bound, TtlBound::PoolTtl);
    assert_eq!(pool.ttl(), secs(86_400));
}

// covers K3, X5: every builder duration accepts Duration::MAX without a panic.
#[tokio::test(start_paused = true)]
async fn every_builder_duration_accepts_duration_max() {
    let pool = pool_with(
        MapSource::default().with(&key("a"), cert_kubeconfig(year_9999())),
        |b| {
            b.ttl(Duration::MAX)
                .sweep_interval(Duration::MAX)
                .connect_timeout(Some(Duration::MAX))
                .read_timeout(Some(Duration::MAX))
        },
    );
    let session = pool.session(&key("a")).await.unwrap();
    assert!(session.is_pooled());
    drop(session);
    tokio::time::advance(secs(86_400 * 365)).await;
    assert!(pool.session(&key("a")).await.unwrap().is_pooled());
    assert_eq!(pool.connect_timeout(), Some(secs(86_400)));
    assert_eq!(pool.read_timeout(), Some(secs(86_400)));
}

// covers K3, X5: a static JWT whose `exp` does not fit the clock used to panic
// (`UNIX_EPOCH + Duration::from_secs(u64::MAX)`). Far future: the pool TTL decides.
#[tokio::test(start_paused = true)]
async fn static_jwt_with_unrepresentable_exp_never_panics() {
    for exp in ["18446744073709551615", "9223372036854775807", "1e300"] {
        let pool = pool_with(
            MapSource::default().with(&key("a"), token_kubeconfig(&jwt_raw(exp))),
            |b| b,
        );
        let session = pool.session(&key("a")).await.unwrap();
        assert!(session.is_pooled(), "exp {exp}");
        assert_eq!(session.effective_ttl().ttl, secs(300), "exp {exp}");
    }
}

// covers K3, K4: a static JWT that expired before 1970 (negative or fractional `exp`) is a
// past expiry, not "no expiry": one-shot. A fractional `exp` in the future still clamps.
#[tokio::test(start_paused = true)]
async fn static_jwt_with_negative_or_fractional_exp() {
    let expired = pool_with(
        MapSource::default().with(&key("a"), token_kubeconfig(&jwt_raw("-5"))),
        |b| b,
    );
    assert!(!expired.session(&key("a")).await.unwrap().is_pooled());

    let at = wall_now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 200;
    let fractional = pool_with(
        MapSource::default().with(&key("a"), token_kubeconfig(&jwt_raw(&format!("{at}.75")))),
        |b| b,
    );
    let session = fractional.session(&key("a")).await.unwrap();
    assert_eq!(
        (session.effective_ttl().ttl, session.effective_ttl().bound),
        (secs(140), TtlBound::Token)
    );
}

// covers K3, X5: a certificate valid until 9999 and an AAD token expiring in 9999: the pool
// TTL decides, nothing overflows.
#[tokio::test(start_paused = true)]
async fn year_9999_expiries_leave_the_pool_ttl_in_force() {
    let cert = pool_with(
        MapSource::default().with(&key("a"), cert_kubeconfig(year_9999())),
        |b| b,
    );
    let session = cert.session(&key("a")).await.unwrap();
    assert_eq!(session.effective_ttl().bound, TtlBound::PoolTtl);
    assert_eq!(session.deadline(), Some(Instant::now() + secs(300)));

    let kubelogin = exec_kubeconfig(
        "kubelogin",
        &[
            "get-token",
            "--server-id",
            "6dae42f8-4368-4678-94ff-3960e28e3630",
        ],
    );
    let aad = pool_with(
        MapSource::default().with(&key("a"), kubelogin.clone()),
        |b| b.aad_credential(Arc::new(FakeCredential::new("aad-token", year_9999()))),
    );
    let session = aad.session(&key("a")).await.unwrap();
    assert_eq!(session.effective_ttl().bound, TtlBound::PoolTtl);
    assert!(session.is_pooled());

    // An AAD token that expired long ago: one-shot (K4).
    let past = SystemTime::UNIX_EPOCH + secs(1);
    let expired = pool_with(MapSource::default().with(&key("a"), kubelogin), |b| {
        b.aad_credential(Arc::new(FakeCredential::new("aad-token", past)))
    });
    assert!(!expired.session(&key("a")).await.unwrap().is_pooled());
}

// covers X5: defaults are finite and documented; zero and huge timeouts are clamped.
#[tokio::test(start_paused = true)]
async fn defaults_are_finite_and_timeouts_clamp() {
    let pool = pool_with(MapSource::default(), |b| b);
    assert_eq!(pool.ttl(), secs(300));
    assert_eq!(pool.max_entries(), 32);
    assert_eq!(pool.max_in_flight_per_session(), 32);
    assert_eq!(pool.connect_timeout(), Some(secs(30)));
    assert_eq!(pool.read_timeout(), Some(secs(295)));

    let zero = pool_with(MapSource::default(), |b| {
        b.connect_timeout(Some(Duration::ZERO))
            .read_timeout(Some(Duration::ZERO))
            .ttl(Duration::ZERO)
    });
    assert_eq!(zero.connect_timeout(), Some(Duration::from_millis(1)));
    assert_eq!(zero.read_timeout(), Some(Duration::from_millis(1)));
    assert_eq!(
        zero.ttl(),
        Duration::ZERO,
        "zero TTL: every session one-shot (K4)"
    );

    let off = pool_with(MapSource::default(), |b| {
        b.connect_timeout(None).read_timeout(None)
    });
    assert_eq!((off.connect_timeout(), off.read_timeout()), (None, None));
}
