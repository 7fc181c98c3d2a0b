//! `Endpoint`: a validated, normalised Blob service URL (real Azure or Azurite path-style).

use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use azure_core::http::Url;

use crate::error::BlobPoolError;

struct Inner {
    text: Box<str>,
    url: Url,
    /// A digest of `text`, computed once, so hashing a pool key never rehashes the URL.
    digest: u64,
}

/// FNV-1a: stable, cheap, and only a pre-hash — the pool's own hasher (randomly keyed) mixes it.
fn digest(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A Blob service endpoint, validated once and cheap to clone (an `Arc`).
///
/// - Real Azure: [`Endpoint::azure`]`("myaccount")` → `https://myaccount.blob.core.windows.net/`.
/// - Azurite and other path-style hosts: [`Endpoint::parse`]`("https://127.0.0.1:10000/devstoreaccount1")`.
///
/// Normalisation: the host is lower-cased (by URL parsing) and trailing slashes after a
/// path are removed — a trailing slash would double the slash in every container URL the SDK
/// builds (see BACKENDS.md). Two spellings of one endpoint are therefore one pool key.
///
/// Rejected, with a typed [`BlobPoolError::InvalidEndpoint`]: anything but `https` (the Azure
/// SDK refuses to send a bearer token over plain HTTP), a query or fragment (a SAS token has no
/// place in a bearer-token pool key), user info, and URLs that cannot be a base.
///
/// ```
/// use blob_pool::Endpoint;
///
/// let azure = Endpoint::azure("myaccount")?;
/// assert_eq!(azure.as_str(), "https://myaccount.blob.core.windows.net/");
///
/// let azurite = Endpoint::parse("https://127.0.0.1:10000/devstoreaccount1/")?;
/// assert_eq!(azurite.as_str(), "https://127.0.0.1:10000/devstoreaccount1");
///
/// assert!(Endpoint::parse("http://127.0.0.1:10000/devstoreaccount1").is_err());
/// # Ok::<(), blob_pool::BlobPoolError>(())
/// ```
#[derive(Clone)]
pub struct Endpoint(Arc<Inner>);

impl Endpoint {
    /// Parse and validate a Blob service URL.
    pub fn parse(url: &str) -> Result<Self, BlobPoolError> {
        let invalid = |reason| BlobPoolError::InvalidEndpoint { reason };
        let mut url = Url::parse(url.trim()).map_err(|_| invalid("not a valid URL"))?;
        if url.scheme() != "https" {
            return Err(invalid(
                "bearer-token clients need https (the Azure SDK refuses plain http)",
            ));
        }
        if url.cannot_be_a_base() || url.host_str().is_none_or(str::is_empty) {
            return Err(invalid("the URL has no host"));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(invalid(
                "no query or fragment allowed (SAS tokens are not used: the pool authenticates with bearer tokens)",
            ));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(invalid("no user name or password allowed in the URL"));
        }
        let trimmed = url.path().trim_end_matches('/').to_owned();
        if trimmed.is_empty() {
            url.set_path("/");
        } else {
            url.set_path(&trimmed);
        }
        Ok(Self(Arc::new(Inner {
            text: url.as_str().into(),
            digest: digest(url.as_str()),
            url,
        })))
    }

    /// The public Azure endpoint of a storage account: `https://{account}.blob.core.windows.net/`.
    /// The account name must be 3–24 lowercase letters and digits.
    pub fn azure(account: &str) -> Result<Self, BlobPoolError> {
        let valid = (3..=24).contains(&account.len())
            && account
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        if !valid {
            return Err(BlobPoolError::InvalidAccountName);
        }
        Self::parse(&format!("https://{account}.blob.core.windows.net"))
    }

    /// The normalised URL as text (the pool key).
    pub fn as_str(&self) -> &str {
        &self.0.text
    }

    /// The normalised URL.
    pub fn url(&self) -> &Url {
        &self.0.url
    }
}

impl PartialEq for Endpoint {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || self.0.text == other.0.text
    }
}

impl Eq for Endpoint {}

impl Hash for Endpoint {
    /// Hashes the digest computed at parse time (equal endpoints have equal text, hence equal
    /// digests); equality still compares the text.
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.0.digest);
    }
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Validated: no query, no user info, so nothing secret to hide.
        f.debug_tuple("Endpoint").field(&self.as_str()).finish()
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Endpoint {
    type Err = BlobPoolError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // covers B7: real Azure and Azurite path-style endpoints, normalised to one key each.
    #[test]
    fn endpoints_are_normalised_into_one_key() {
        let a = Endpoint::parse("https://127.0.0.1:10000/devstoreaccount1").unwrap();
        let b = Endpoint::parse("https://127.0.0.1:10000/devstoreaccount1//").unwrap();
        assert_eq!(a, b);
        assert_eq!(b.as_str(), "https://127.0.0.1:10000/devstoreaccount1");
        let azure = Endpoint::azure("acct01").unwrap();
        assert_eq!(
            azure,
            Endpoint::parse("https://ACCT01.blob.core.windows.net/").unwrap()
        );
        assert_eq!(
            azure.as_str(),
            "https://acct01.blob.core.windows.net/",
            "the root path stays '/'"
        );
    }

    #[test]
    fn bad_endpoints_are_typed_errors_without_the_url() {
        for bad in [
            "",
            "not a url",
            "http://127.0.0.1:10000/devstoreaccount1",
            "https://acct.blob.core.windows.net/?sv=2024&sig=SECRET",
            "https://acct.blob.core.windows.net/#frag",
            "https://user:SECRET@acct.blob.core.windows.net/",
            "mailto:someone@example.com",
        ] {
            let error = Endpoint::parse(bad).unwrap_err();
            assert!(
                matches!(error, BlobPoolError::InvalidEndpoint { .. }),
                "{bad}"
            );
            assert!(!error.to_string().contains("SECRET"), "{error}");
        }
        for bad in ["ab", "UPPER", "has-dash", "abcdefghijklmnopqrstuvwxy"] {
            assert!(matches!(
                Endpoint::azure(bad),
                Err(BlobPoolError::InvalidAccountName)
            ));
        }
    }
}
