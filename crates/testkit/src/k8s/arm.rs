//! The ARM endpoint for AKS `listClusterUserCredential` / `listClusterAdminCredential`, and
//! unsigned test tokens for it.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::{Value, json};

use super::respond::{Resp, arm_error};

/// The audiences ARM accepts.
const ARM_AUDIENCES: [&str; 4] = [
    "https://management.azure.com",
    "https://management.azure.com/",
    "https://management.core.windows.net",
    "https://management.core.windows.net/",
];

/// The ARM provider path segment of an AKS cluster.
const PROVIDER: &str = "Microsoft.ContainerService";

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// An unsigned (`alg: none`) Entra-style JWT for `audience`, valid from a minute ago until
/// `expires_in_secs` from now (negative: already expired). Both Azurite and this server's ARM
/// endpoint accept such tokens; no real service does.
pub fn unsigned_jwt(audience: &str, expires_in_secs: i64, object_id: &str) -> String {
    let now = now_secs();
    let header = json!({ "alg": "none", "typ": "JWT" });
    let claims = json!({
        "aud": audience,
        "iss": "https://sts.windows.net/00000000-0000-0000-0000-00000000test/",
        "iat": now - 60,
        "nbf": now - 60,
        "exp": now + expires_in_secs,
        "oid": object_id,
        "tid": "00000000-0000-0000-0000-00000000test",
    });
    let enc = |v: &Value| URL_SAFE_NO_PAD.encode(v.to_string());
    format!("{}.{}.", enc(&header), enc(&claims))
}

/// A token the ARM endpoint accepts, expiring in `expires_in_secs` (negative: expired).
pub fn arm_test_token(expires_in_secs: i64) -> String {
    unsigned_jwt(
        "https://management.azure.com",
        expires_in_secs,
        "testkit-arm-caller",
    )
}

/// Check a bearer token as ARM would (minus the signature): audience, issuer, lifetime.
fn check_token(token: &str) -> Result<(), (&'static str, String)> {
    let invalid = |msg: &str| ("InvalidAuthenticationToken", msg.to_owned());
    let payload = token
        .split('.')
        .nth(1)
        .ok_or_else(|| invalid("not a JWT"))?;
    let bytes = URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|_| invalid("the token payload is not base64url"))?;
    let claims: Value =
        serde_json::from_slice(&bytes).map_err(|_| invalid("the token payload is not JSON"))?;
    let aud = claims["aud"].as_str().unwrap_or_default();
    if !ARM_AUDIENCES.contains(&aud) {
        return Err(invalid(&format!("the token audience {aud:?} is not ARM")));
    }
    let iss = claims["iss"].as_str().unwrap_or_default();
    if !iss.starts_with("https://sts.windows.net/")
        && !iss.starts_with("https://login.microsoftonline.com/")
    {
        return Err(invalid("the token issuer is not Entra ID"));
    }
    let now = now_secs();
    match (claims["nbf"].as_i64(), claims["exp"].as_i64()) {
        (Some(nbf), Some(exp)) if nbf <= now && now < exp => Ok(()),
        (Some(_), Some(exp)) if exp <= now => Err((
            "ExpiredAuthenticationToken",
            "The access token expiry UTC time is earlier than current UTC time.".to_owned(),
        )),
        _ => Err(invalid("the token is not yet valid or has no lifetime")),
    }
}

/// An AKS credential request, parsed from its path.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct CredentialRequest {
    /// The cluster name (used as the kubeconfig's cluster/context name).
    pub(crate) cluster: String,
    /// `listClusterAdminCredential` rather than `listClusterUserCredential`.
    pub(crate) admin: bool,
}

/// `Some` when `path` is an AKS credential action (whatever the method), else `None`.
pub(crate) fn parse_path(path: &str) -> Option<CredentialRequest> {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let eq = |a: &str, b: &str| a.eq_ignore_ascii_case(b);
    match segments.as_slice() {
        [s, _sub, r, _rg, p, provider, m, cluster, action]
            if eq(s, "subscriptions")
                && eq(r, "resourceGroups")
                && eq(p, "providers")
                && eq(provider, PROVIDER)
                && eq(m, "managedClusters") =>
        {
            let admin = if eq(action, "listClusterAdminCredential") {
                true
            } else if eq(action, "listClusterUserCredential") {
                false
            } else {
                return None;
            };
            Some(CredentialRequest {
                cluster: (*cluster).to_owned(),
                admin,
            })
        }
        _ => None,
    }
}

/// Check method, `api-version` and the bearer token: `Some` is the refusal to send, `None`
/// means: answer with the kubeconfig.
pub(crate) fn refusal(
    method: &http::Method,
    query: Option<&str>,
    bearer: Option<&str>,
) -> Option<Resp> {
    if method != http::Method::POST {
        let msg = "The requested resource does not support this HTTP method.";
        return Some(arm_error(405, "MethodNotAllowed", msg));
    }
    let has_version = url::form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .any(|(k, v)| k == "api-version" && !v.is_empty());
    if !has_version {
        let msg = "The api-version query parameter (?api-version=) is required for all requests.";
        return Some(arm_error(400, "MissingApiVersionParameter", msg));
    }
    let Some(token) = bearer else {
        let msg = "The request does not have an Authorization header with a Bearer token.";
        return Some(arm_error(401, "AuthenticationFailed", msg));
    };
    check_token(token)
        .err()
        .map(|(code, msg)| arm_error(401, code, &msg))
}

/// The answer body: `{"kubeconfigs":[{"name":…,"value":<base64 kubeconfig>}]}`.
pub(crate) fn credential_results(admin: bool, kubeconfig_text: &str) -> Value {
    let name = if admin { "clusterAdmin" } else { "clusterUser" };
    json!({ "kubeconfigs": [{ "name": name, "value": STANDARD.encode(kubeconfig_text) }] })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_checked_for_audience_and_lifetime() {
        assert!(check_token(&arm_test_token(3600)).is_ok());
        assert_eq!(
            check_token(&arm_test_token(-10)).unwrap_err().0,
            "ExpiredAuthenticationToken"
        );
        let storage = unsigned_jwt("https://storage.azure.com", 3600, "x");
        assert_eq!(
            check_token(&storage).unwrap_err().0,
            "InvalidAuthenticationToken"
        );
        assert!(check_token("opaque").is_err());
    }

    #[test]
    fn credential_paths_are_parsed_case_insensitively() {
        let p = "/subscriptions/s/resourcegroups/rg/providers/microsoft.containerservice/managedClusters/c1/listClusterAdminCredential";
        assert_eq!(
            parse_path(p),
            Some(CredentialRequest {
                cluster: "c1".into(),
                admin: true
            })
        );
        assert!(parse_path("/subscriptions/s/resourceGroups/rg/providers/X/managedClusters/c/listClusterUserCredential").is_none());
        assert!(parse_path("/api/v1/nodes").is_none());
    }
}
