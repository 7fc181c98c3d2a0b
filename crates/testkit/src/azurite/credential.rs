//! [`TestCredential`]: an `azure_core` `TokenCredential` minting unsigned JWTs that Azurite
//! (and the k8s test server's ARM endpoint) accept, switchable to expired tokens or failures.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use azure_core::credentials::{AccessToken, TokenCredential, TokenRequestOptions};
use azure_core::error::ErrorKind;
use azure_core::time::OffsetDateTime;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

/// The tenant in every minted token's issuer (`https://sts.windows.net/<tenant>/`).
pub const TEST_TENANT: &str = "00000000-0000-0000-0000-0000000000aa";

/// What [`TestCredential::get_token`](TokenCredential::get_token) hands out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TokenMode {
    /// A token valid for the credential's lifetime.
    Valid,
    /// A token that expired 10 minutes ago, and says so in `expires_on`.
    Expired,
    /// A token the server refuses (its JWT expired 10 minutes ago) while `expires_on` still
    /// claims the full lifetime: what a revoked token or a skewed clock looks like to a client.
    Rejected,
    /// No token: `get_token` returns a credential error.
    Fail,
}

struct State {
    lifetime: Duration,
    mode: TokenMode,
    scopes: Vec<String>,
}

/// A `TokenCredential` for tests. Clones share their state (mode, lifetime, call count).
///
/// The audience is the first scope without `/.default` (the storage SDK asks for
/// `https://storage.azure.com/.default`; an AKS source for `https://management.azure.com/.default`).
#[derive(Clone)]
pub struct TestCredential {
    object_id: Arc<str>,
    calls: Arc<AtomicU64>,
    state: Arc<Mutex<State>>,
}

impl std::fmt::Debug for TestCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCredential")
            .field("object_id", &self.object_id)
            .field("calls", &self.calls())
            .finish_non_exhaustive()
    }
}

impl Default for TestCredential {
    fn default() -> Self {
        Self::new()
    }
}

impl TestCredential {
    /// Valid tokens living one hour, object id `testkit-user`.
    pub fn new() -> Self {
        Self::with_lifetime(Duration::from_secs(3600))
    }

    /// Valid tokens living `lifetime`.
    pub fn with_lifetime(lifetime: Duration) -> Self {
        Self {
            object_id: Arc::from("testkit-user"),
            calls: Arc::new(AtomicU64::new(0)),
            state: Arc::new(Mutex::new(State {
                lifetime,
                mode: TokenMode::Valid,
                scopes: Vec::new(),
            })),
        }
    }

    /// The same credential with another `oid` claim (to tell identities apart in tests).
    pub fn with_object_id(mut self, object_id: &str) -> Self {
        self.object_id = Arc::from(object_id);
        self
    }

    /// The `oid` claim of every token.
    pub fn object_id(&self) -> &str {
        &self.object_id
    }

    /// Switch what the next calls hand out.
    pub fn set_mode(&self, mode: TokenMode) {
        self.lock().mode = mode;
    }

    /// Change the lifetime of the next tokens.
    pub fn set_lifetime(&self, lifetime: Duration) {
        self.lock().lifetime = lifetime;
    }

    /// How many times `get_token` was called (including failed calls).
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }

    /// The scopes of the last call.
    pub fn last_scopes(&self) -> Vec<String> {
        self.lock().scopes.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Mint a token for `scopes` as the current mode says (without counting a call).
    pub fn mint(&self, scopes: &[&str]) -> azure_core::Result<AccessToken> {
        let (lifetime, mode) = {
            let state = self.lock();
            (state.lifetime, state.mode)
        };
        let audience = scopes
            .first()
            .map(|s| s.trim_end_matches("/.default"))
            .unwrap_or("https://storage.azure.com");
        let lifetime = i64::try_from(lifetime.as_secs()).unwrap_or(i64::MAX / 4);
        let (jwt_expires_in, claimed_expires_in) = match mode {
            TokenMode::Valid => (lifetime, lifetime),
            TokenMode::Expired => (-600, -600),
            TokenMode::Rejected => (-600, lifetime),
            TokenMode::Fail => {
                return Err(azure_core::Error::with_message(
                    ErrorKind::Credential,
                    "testkit TestCredential is set to fail",
                ));
            }
        };
        let now = unix_now();
        let token = unsigned_jwt(audience, now, now + jwt_expires_in, &self.object_id);
        let expires_on = OffsetDateTime::from_unix_timestamp(now + claimed_expires_in)
            .unwrap_or(OffsetDateTime::UNIX_EPOCH);
        Ok(AccessToken::new(token, expires_on))
    }
}

#[async_trait::async_trait]
impl TokenCredential for TestCredential {
    async fn get_token(
        &self,
        scopes: &[&str],
        _options: Option<TokenRequestOptions<'_>>,
    ) -> azure_core::Result<AccessToken> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.lock().scopes = scopes.iter().map(|s| (*s).to_owned()).collect();
        self.mint(scopes)
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// An unsigned (`alg: none`) JWT with the claims Azurite checks: `aud`, `iss` under
/// `https://sts.windows.net/`, `iat`/`nbf` a minute before `now`, `exp`.
fn unsigned_jwt(audience: &str, now: i64, expires: i64, object_id: &str) -> String {
    let header = json!({ "alg": "none", "typ": "JWT" });
    let claims = json!({
        "aud": audience,
        "iss": format!("https://sts.windows.net/{TEST_TENANT}/"),
        "iat": now.min(expires) - 60,
        "nbf": now.min(expires) - 60,
        "exp": expires,
        "oid": object_id,
        "tid": TEST_TENANT,
    });
    let enc = |v: &Value| URL_SAFE_NO_PAD.encode(v.to_string());
    format!("{}.{}.", enc(&header), enc(&claims))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(token: &AccessToken) -> Value {
        let payload = token.token.secret().split('.').nth(1).unwrap();
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
    }

    #[tokio::test]
    async fn modes_shape_the_token_and_calls_are_counted() {
        let cred = TestCredential::with_lifetime(Duration::from_secs(600)).with_object_id("a");
        let scope = ["https://storage.azure.com/.default"];
        let now = unix_now();

        let valid = cred.get_token(&scope, None).await.unwrap();
        let c = claims(&valid);
        assert_eq!(c["aud"], "https://storage.azure.com");
        assert_eq!(c["oid"], "a");
        assert!(c["exp"].as_i64().unwrap() >= now + 600);
        assert!(c["nbf"].as_i64().unwrap() < now);

        cred.set_mode(TokenMode::Rejected);
        let rejected = cred.get_token(&scope, None).await.unwrap();
        assert!(claims(&rejected)["exp"].as_i64().unwrap() < now);
        assert!(rejected.expires_on > OffsetDateTime::now_utc());

        cred.set_mode(TokenMode::Expired);
        let expired = cred.get_token(&scope, None).await.unwrap();
        assert!(expired.expires_on < OffsetDateTime::now_utc());

        cred.set_mode(TokenMode::Fail);
        assert!(cred.get_token(&scope, None).await.is_err());
        assert_eq!(cred.calls(), 4);
        assert_eq!(cred.last_scopes(), scope);
    }

    #[test]
    fn debug_shows_no_token() {
        let cred = TestCredential::new();
        assert!(!format!("{cred:?}").contains("ey"));
    }
}
