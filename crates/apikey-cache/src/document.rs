//! The stored document: accounts and key hashes, serialised as one JSON object.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::StoreError;

/// Format number written into every document.
pub const DOCUMENT_FORMAT: u32 = 1;

/// Everything a store holds: one JSON document of accounts and key hashes (never plaintext).
///
/// ```json
/// {"format":1,
///  "accounts":{"acme":{"name":"Acme Ltd","created_unix":1767225600}},
///  "keys":{"key_0f1e2d3c4b5a6978":{"account":"acme","sha256":"9f86…","created_unix":1767225600}}}
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyDocument {
    /// [`DOCUMENT_FORMAT`].
    #[serde(default = "format_default")]
    pub format: u32,
    /// Accounts by id.
    #[serde(default)]
    pub accounts: BTreeMap<String, AccountRecord>,
    /// Keys by public key id.
    #[serde(default)]
    pub keys: BTreeMap<String, KeyRecord>,
}

impl Default for KeyDocument {
    fn default() -> Self {
        Self {
            format: DOCUMENT_FORMAT,
            accounts: BTreeMap::new(),
            keys: BTreeMap::new(),
        }
    }
}

fn format_default() -> u32 {
    DOCUMENT_FORMAT
}

/// One account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountRecord {
    /// Display name.
    pub name: String,
    /// Creation time, seconds since the Unix epoch (informational).
    #[serde(default)]
    pub created_unix: u64,
}

/// One key: its account and the SHA-256 of the key, never the key.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    /// Owning account id.
    pub account: String,
    /// Lower-case hex SHA-256 of the key.
    pub sha256: String,
    /// Creation time, seconds since the Unix epoch (informational).
    #[serde(default)]
    pub created_unix: u64,
    /// When the key was revoked, seconds since the Unix epoch; `None` while it is valid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_unix: Option<u64>,
}

impl fmt::Debug for KeyRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let prefix: String = self.sha256.chars().take(8).collect();
        f.debug_struct("KeyRecord")
            .field("account", &self.account)
            .field("sha256", &format_args!("{prefix}…"))
            .field("created_unix", &self.created_unix)
            .field("revoked_unix", &self.revoked_unix)
            .finish()
    }
}

impl KeyDocument {
    /// An empty document (what a store that has never been written holds).
    pub fn empty() -> Self {
        Self::default()
    }

    /// Serialise as pretty JSON (what the file and Blob stores write).
    pub fn to_json(&self) -> Vec<u8> {
        // Maps with string keys and plain fields: serialisation cannot fail.
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }

    /// Parse a stored document.
    pub fn from_json(bytes: &[u8]) -> Result<Self, StoreError> {
        serde_json::from_slice(bytes).map_err(|source| StoreError::Corrupt { source })
    }
}

pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn document_round_trips_and_tolerates_missing_fields() {
        let mut doc = KeyDocument::empty();
        doc.accounts.insert(
            "acme".into(),
            AccountRecord {
                name: "Acme".into(),
                created_unix: 1,
            },
        );
        doc.keys.insert(
            "key_1".into(),
            KeyRecord {
                account: "acme".into(),
                sha256: "ab".repeat(32),
                created_unix: 2,
                revoked_unix: None,
            },
        );
        assert_eq!(KeyDocument::from_json(&doc.to_json()).expect("parse"), doc);
        let minimal = KeyDocument::from_json(b"{}").expect("parse");
        assert_eq!(minimal, KeyDocument::empty());
        assert!(matches!(
            KeyDocument::from_json(b"not json"),
            Err(StoreError::Corrupt { .. })
        ));
        assert!(!format!("{:?}", doc.keys["key_1"]).contains(&"ab".repeat(32)));
    }
}
