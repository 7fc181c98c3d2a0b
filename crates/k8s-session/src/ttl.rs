//! The effective TTL of a session: the pool TTL clamped by every credential expiry (K3, K4).

use std::time::{Duration, SystemTime};

/// How long before a bearer token's expiry a session stops being handed out (K3).
pub const TOKEN_EXPIRY_MARGIN: Duration = Duration::from_secs(60);

/// Seconds since the Unix epoch as a [`SystemTime`], without overflow: a time before 1970
/// becomes the epoch (already past either way); a time the platform cannot represent (far
/// future) is `None`, i.e. no bound beyond the pool TTL.
pub(crate) fn system_time_from_unix(secs: i64) -> Option<SystemTime> {
    match u64::try_from(secs) {
        Ok(secs) => SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(secs)),
        Err(_) => Some(SystemTime::UNIX_EPOCH),
    }
}

/// The wall-clock expiries known for a session's credentials. `None`: no such expiry.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use k8s_session::Expiries;
///
/// let now = SystemTime::now();
/// let expiries = Expiries::default().token_expires_on(now + Duration::from_secs(3600));
/// assert!(expiries.cert_not_after.is_none());
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Expiries {
    /// The client certificate's `notAfter`.
    pub cert_not_after: Option<SystemTime>,
    /// The expiry the credential source reported for the material as a whole.
    pub material_expires_at: Option<SystemTime>,
    /// The bearer token's expiry (`expires_on`, or a JWT's `exp`).
    pub token_expires_on: Option<SystemTime>,
}

impl Expiries {
    /// With the client certificate's `notAfter`.
    #[must_use]
    pub fn cert_not_after(mut self, at: SystemTime) -> Self {
        self.cert_not_after = Some(at);
        self
    }

    /// With the material's own expiry.
    #[must_use]
    pub fn material_expires_at(mut self, at: SystemTime) -> Self {
        self.material_expires_at = Some(at);
        self
    }

    /// With the bearer token's expiry.
    #[must_use]
    pub fn token_expires_on(mut self, at: SystemTime) -> Self {
        self.token_expires_on = Some(at);
        self
    }
}

/// Which limit decided a session's TTL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TtlBound {
    /// The pool TTL (`K8S_SESSION_POOL_TTL_SECONDS`).
    PoolTtl,
    /// The client certificate's `notAfter`.
    Certificate,
    /// The material's own expiry.
    Material,
    /// The bearer token's expiry minus [`TOKEN_EXPIRY_MARGIN`].
    Token,
}

/// The result of [`effective_ttl`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct EffectiveTtl {
    /// How long the session may be handed out from now. Zero: not at all.
    pub ttl: Duration,
    /// The limit that decided it.
    pub bound: TtlBound,
}

impl EffectiveTtl {
    /// Whether the session may be pooled. A collapsed (zero) TTL means a one-shot session,
    /// torn down when its handle is dropped and never pooled (K4).
    pub fn is_poolable(&self) -> bool {
        !self.ttl.is_zero()
    }
}

/// The effective TTL (K3): the minimum of `pool_ttl`, the time left until the certificate's
/// `notAfter`, until the material's expiry, and until the token's expiry minus
/// [`TOKEN_EXPIRY_MARGIN`]. Expiries at or before `now` give zero. On a tie the pool TTL wins,
/// then certificate, material, token.
///
/// A pure function of its inputs: `now` is the wall clock read once at the boundary.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use k8s_session::{effective_ttl, Expiries, TtlBound};
///
/// let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
/// let token_in_3_min = Expiries::default().token_expires_on(now + Duration::from_secs(180));
/// let ttl = effective_ttl(Duration::from_secs(300), now, &token_in_3_min);
/// assert_eq!(ttl.ttl, Duration::from_secs(120));
/// assert_eq!(ttl.bound, TtlBound::Token);
/// ```
pub fn effective_ttl(pool_ttl: Duration, now: SystemTime, expiries: &Expiries) -> EffectiveTtl {
    let left = |at: SystemTime| at.duration_since(now).unwrap_or(Duration::ZERO);
    let candidates = [
        (Some(pool_ttl), TtlBound::PoolTtl),
        (expiries.cert_not_after.map(left), TtlBound::Certificate),
        (expiries.material_expires_at.map(left), TtlBound::Material),
        (
            expiries
                .token_expires_on
                .map(|at| left(at).saturating_sub(TOKEN_EXPIRY_MARGIN)),
            TtlBound::Token,
        ),
    ];
    let mut best = EffectiveTtl {
        ttl: pool_ttl,
        bound: TtlBound::PoolTtl,
    };
    for (ttl, bound) in candidates {
        if let Some(ttl) = ttl
            && ttl < best.ttl
        {
            best = EffectiveTtl { ttl, bound };
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    const POOL_TTL: Duration = Duration::from_secs(300);

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    // covers K3: nothing expires soon → the pool TTL.
    #[test]
    fn no_expiries_give_the_pool_ttl() {
        let ttl = effective_ttl(POOL_TTL, now(), &Expiries::default());
        assert_eq!(ttl.ttl, POOL_TTL);
        assert_eq!(ttl.bound, TtlBound::PoolTtl);
        assert!(ttl.is_poolable());
    }

    // covers K3: far-away expiries do not lengthen the pool TTL.
    #[test]
    fn far_expiries_never_lengthen_the_pool_ttl() {
        let far = now() + secs(86_400);
        let expiries = Expiries::default()
            .cert_not_after(far)
            .material_expires_at(far)
            .token_expires_on(far);
        assert_eq!(effective_ttl(POOL_TTL, now(), &expiries).ttl, POOL_TTL);
    }

    // covers K3: clamped by the certificate's notAfter.
    #[test]
    fn certificate_not_after_clamps_the_ttl() {
        let expiries = Expiries::default().cert_not_after(now() + secs(90));
        let ttl = effective_ttl(POOL_TTL, now(), &expiries);
        assert_eq!((ttl.ttl, ttl.bound), (secs(90), TtlBound::Certificate));
    }

    // covers K3: clamped by the material's own expiry.
    #[test]
    fn material_expiry_clamps_the_ttl() {
        let expiries = Expiries::default()
            .cert_not_after(now() + secs(200))
            .material_expires_at(now() + secs(150));
        let ttl = effective_ttl(POOL_TTL, now(), &expiries);
        assert_eq!((ttl.ttl, ttl.bound), (secs(150), TtlBound::Material));
    }

    // covers K3: clamped by token expiry minus the 60 s margin.
    #[test]
    fn token_expiry_minus_margin_clamps_the_ttl() {
        let expiries = Expiries::default().token_expires_on(now() + secs(200));
        let ttl = effective_ttl(POOL_TTL, now(), &expiries);
        assert_eq!((ttl.ttl, ttl.bound), (secs(140), TtlBound::Token));
        assert_eq!(TOKEN_EXPIRY_MARGIN, secs(60));
    }

    // covers K3, K4: a token within the margin collapses the TTL to zero (one-shot).
    #[test]
    fn token_within_margin_collapses_the_ttl() {
        for left in [0, 1, 59, 60] {
            let expiries = Expiries::default().token_expires_on(now() + secs(left));
            let ttl = effective_ttl(POOL_TTL, now(), &expiries);
            assert_eq!(ttl.ttl, Duration::ZERO, "{left} s left");
            assert_eq!(ttl.bound, TtlBound::Token);
            assert!(!ttl.is_poolable());
        }
        let just_over = Expiries::default().token_expires_on(now() + secs(61));
        assert_eq!(effective_ttl(POOL_TTL, now(), &just_over).ttl, secs(1));
    }

    // covers K4: anything already expired collapses the TTL; nothing underflows.
    #[test]
    fn past_expiries_collapse_to_zero() {
        let past = now() - secs(3600);
        for expiries in [
            Expiries::default().cert_not_after(past),
            Expiries::default().material_expires_at(past),
            Expiries::default().token_expires_on(past),
            Expiries::default().cert_not_after(now()),
        ] {
            assert!(!effective_ttl(POOL_TTL, now(), &expiries).is_poolable());
        }
    }

    // covers K3, K4: a zero pool TTL disables pooling whatever the credentials say.
    #[test]
    fn zero_pool_ttl_is_never_poolable() {
        let ttl = effective_ttl(Duration::ZERO, now(), &Expiries::default());
        assert!(!ttl.is_poolable());
        assert_eq!(ttl.bound, TtlBound::PoolTtl);
    }

    // covers K3: the soonest of several bounds wins.
    #[test]
    fn the_soonest_bound_wins() {
        let expiries = Expiries::default()
            .cert_not_after(now() + secs(250))
            .material_expires_at(now() + secs(240))
            .token_expires_on(now() + secs(290));
        let ttl = effective_ttl(POOL_TTL, now(), &expiries);
        assert_eq!((ttl.ttl, ttl.bound), (secs(230), TtlBound::Token));
    }
}
