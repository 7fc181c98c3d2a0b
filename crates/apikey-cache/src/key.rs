//! Key material: generated secrets, their SHA-256 hashes, ids and the authenticated identity.

use std::fmt;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore as _;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq as _;

/// Prefix of every key this crate issues (helps secret scanners; not a security boundary).
pub const KEY_PREFIX: &str = "ak_";

/// Longest presented key considered at all; longer input is [`AuthError::Malformed`](crate::AuthError::Malformed).
pub const MAX_KEY_LEN: usize = 256;

/// The SHA-256 of an API key: what the store holds and what the cache indexes.
///
/// Issued keys carry 256 random bits, so a fast hash is enough: nobody can enumerate the key
/// space, and a slow password hash would only turn every request into a CPU cost an attacker
/// could multiply. `Debug` shows only the first 4 bytes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct KeyHash([u8; 32]);

/// Hashes as its first 8 bytes: already a uniformly distributed SHA-256 prefix, so hashing all
/// 32 bytes again buys nothing (equal hashes have equal prefixes, as `Hash` requires).
impl std::hash::Hash for KeyHash {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(self.bucket());
    }
}

/// A `BuildHasher` for maps keyed by [`KeyHash`] alone: passes its 8-byte prefix through
/// instead of SipHashing it. Only for maps whose keys an attacker cannot choose (the cache
/// of verified keys: an entry exists only for a key the store holds).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct PrefixHasher(u64);

impl std::hash::Hasher for PrefixHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Not reached for KeyHash (write_u64); a fallback that stays a valid hasher.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 ^= n;
    }
}

impl std::hash::BuildHasher for PrefixHasher {
    type Hasher = PrefixHasher;

    fn build_hasher(&self) -> PrefixHasher {
        PrefixHasher(0)
    }
}

impl KeyHash {
    /// Hash a presented or freshly generated key.
    pub fn of(key: &str) -> Self {
        Self(Sha256::digest(key.as_bytes()).into())
    }

    /// The raw digest.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lower-case hex, as stored in the key document.
    pub fn to_hex(&self) -> String {
        let mut out = String::with_capacity(64);
        for byte in self.0 {
            out.push(char::from(HEX[usize::from(byte >> 4)]));
            out.push(char::from(HEX[usize::from(byte & 0xf)]));
        }
        out
    }

    /// Parse 64 hex digits; `None` for anything else.
    pub fn from_hex(hex: &str) -> Option<Self> {
        let bytes = hex.as_bytes();
        if bytes.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (slot, pair) in out.iter_mut().zip(bytes.chunks_exact(2)) {
            *slot = (nibble(pair[0])? << 4) | nibble(pair[1])?;
        }
        Some(Self(out))
    }

    /// Constant-time equality (the final comparison of every lookup).
    pub fn ct_eq(&self, other: &KeyHash) -> bool {
        self.0.ct_eq(&other.0).into()
    }

    /// The first 8 bytes, used to pick a bucket. Knowing how long a lookup took can at most
    /// reveal something about a *hash* prefix, which does not help anyone find a key.
    pub(crate) fn bucket(&self) -> u64 {
        let mut prefix = [0u8; 8];
        prefix.copy_from_slice(&self.0[..8]);
        u64::from_le_bytes(prefix)
    }
}

impl fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyHash({}…)", &self.to_hex()[..8])
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// A plaintext API key, handed out once by [`ApiKeyCache::issue_key`](crate::ApiKeyCache::issue_key).
///
/// Neither the store nor the cache keeps it; `Debug` prints `<redacted>` and there is no
/// `Display`. Call [`ApiKeySecret::expose`] exactly where it is shown to its owner.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKeySecret(String);

impl ApiKeySecret {
    /// `ak_` + base64url(32 bytes from the OS-seeded CSPRNG ‖ their CRC-32, little endian):
    /// [`CHECKED_KEY_LEN`] characters. The checksum lets [`has_valid_checksum`] reject typos
    /// and random junk offline, before any store read (A12); it is not a secret.
    pub(crate) fn generate() -> Self {
        let mut bytes = [0u8; 36];
        rand::rng().fill_bytes(&mut bytes[..32]);
        let crc = crc32(&bytes[..32]).to_le_bytes();
        bytes[32..].copy_from_slice(&crc);
        Self(format!("{KEY_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes)))
    }

    /// The plaintext. Show it to the key's owner once; never log or store it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The hash the store keeps.
    pub fn hash(&self) -> KeyHash {
        KeyHash::of(&self.0)
    }
}

impl fmt::Debug for ApiKeySecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKeySecret(<redacted>)")
    }
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Arc<str>);

        impl $name {
            /// Wrap an id (no validation: ids are not secrets).
            pub fn new(id: impl Into<Arc<str>>) -> Self {
                Self(id.into())
            }

            /// The id as a string.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), &*self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

id_type!(
    /// An account's id (public; e.g. `acme`).
    AccountId
);
id_type!(
    /// A key's public id (`key_` + 16 hex digits), used to list and revoke it. Not a secret.
    KeyId
);

impl KeyId {
    pub(crate) fn generate() -> Self {
        let mut bytes = [0u8; 8];
        rand::rng().fill_bytes(&mut bytes);
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        Self::new(format!("key_{hex}"))
    }
}

/// Who a request is from: put into request extensions by [`ApiKeyLayer`](crate::ApiKeyLayer).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    /// The account the key belongs to.
    pub account: AccountId,
    /// The key that was presented (its public id, not the key).
    pub key: KeyId,
}

/// A newly issued key: the only time the plaintext exists outside its owner.
#[derive(Debug, Clone)]
pub struct IssuedKey {
    /// The account and key id.
    pub identity: Identity,
    /// The plaintext (redacted in `Debug`).
    pub secret: ApiKeySecret,
}

/// Length of a key issued with a checksum: `ak_` + 48 base64url characters (36 bytes).
pub const CHECKED_KEY_LEN: usize = 51;

/// Whether `key` has the shape of a key this crate issues *and* its CRC-32 matches (A12):
/// an offline check, no allocation, no store read. Random or mistyped input fails it with
/// probability 1 − 2⁻³². Keys issued before checksums existed (`ak_` + 43 characters) fail it
/// too: see [`CacheConfig::legacy_keys`](crate::CacheConfig::legacy_keys).
pub fn has_valid_checksum(key: &str) -> bool {
    let Some(body) = key.strip_prefix(KEY_PREFIX) else {
        return false;
    };
    if key.len() != CHECKED_KEY_LEN {
        return false;
    }
    let mut bytes = [0u8; 36];
    match URL_SAFE_NO_PAD.decode_slice(body, &mut bytes) {
        Ok(36) => {}
        _ => return false,
    }
    let (random, crc) = bytes.split_at(32);
    crc == crc32(random).to_le_bytes()
}

/// CRC-32 (IEEE 802.3, the one zlib and PNG use), table-driven.
fn crc32(bytes: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut table = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 == 1 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
                k += 1;
            }
            table[i] = c;
            i += 1;
        }
        table
    };
    let mut crc = !0u32;
    for &b in bytes {
        crc = TABLE[usize::from((crc as u8) ^ b)] ^ (crc >> 8);
    }
    !crc
}

/// Shape check before hashing: non-empty, at most [`MAX_KEY_LEN`] bytes, visible ASCII only.
pub(crate) fn well_formed(key: &str) -> bool {
    let bytes = key.as_bytes();
    if bytes.is_empty() || bytes.len() > MAX_KEY_LEN {
        return false;
    }
    // `is_ascii_graphic` (0x21..=0x7E) OR-ed over 16-byte chunks without an early exit, so
    // each chunk is a few vector instructions: the hit path's first step (a short-circuiting
    // byte loop cost a third of a SHA-256).
    let outside = |b: u8| u8::from(b.wrapping_sub(0x21) >= 0x5e);
    let mut bad = 0u8;
    let mut chunks = bytes.chunks_exact(16);
    for chunk in &mut chunks {
        for &b in chunk {
            bad |= outside(b);
        }
    }
    for &b in chunks.remainder() {
        bad |= outside(b);
    }
    bad == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    // covers A6: hex round trip and constant-time equality of hashes.
    #[test]
    fn hash_hex_round_trip_and_equality() {
        let hash = KeyHash::of("ak_example");
        assert_eq!(KeyHash::from_hex(&hash.to_hex()), Some(hash));
        assert_eq!(KeyHash::from_hex(&hash.to_hex().to_uppercase()), Some(hash));
        assert!(hash.ct_eq(&KeyHash::of("ak_example")));
        assert!(!hash.ct_eq(&KeyHash::of("ak_exampld")));
        assert_eq!(KeyHash::from_hex("zz"), None);
        assert_eq!(KeyHash::from_hex(&"g".repeat(64)), None);
        assert_eq!(KeyHash::from_hex("é".repeat(32).as_str()), None);
    }

    // covers A6: the secret never shows in Debug, and Debug of a hash is only a prefix.
    #[test]
    fn secrets_and_hashes_are_redacted_in_debug() {
        let secret = ApiKeySecret::generate();
        assert!(secret.expose().starts_with(KEY_PREFIX));
        assert_eq!(secret.expose().len(), CHECKED_KEY_LEN);
        assert!(has_valid_checksum(secret.expose()));
        assert!(well_formed(secret.expose()));
        let shown = format!("{secret:?}");
        assert!(!shown.contains(&secret.expose()[3..]), "{shown}");
        let hash = secret.hash();
        assert!(!format!("{hash:?}").contains(&hash.to_hex()));
        assert_ne!(ApiKeySecret::generate(), secret, "keys are random");
    }

    // covers A12: the checksum accepts issued keys and rejects junk, typos and legacy keys.
    #[test]
    fn checksum_accepts_issued_keys_and_rejects_junk() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926, "the standard check value");
        for _ in 0..100 {
            let key = ApiKeySecret::generate();
            assert!(has_valid_checksum(key.expose()));
            // One character changed anywhere after the prefix breaks it.
            let mut typo = key.expose().to_string().into_bytes();
            typo[10] = if typo[10] == b'A' { b'B' } else { b'A' };
            assert!(!has_valid_checksum(
                &String::from_utf8(typo).expect("ascii")
            ));
        }
        let legacy = format!("{KEY_PREFIX}{}", URL_SAFE_NO_PAD.encode([7u8; 32]));
        assert!(!has_valid_checksum(&legacy));
        assert!(!has_valid_checksum(""));
        assert!(!has_valid_checksum(&"ak_".repeat(17)));
        assert!(!has_valid_checksum(&format!(
            "xx_{}",
            &ApiKeySecret::generate().expose()[3..]
        )));
        let mut junk = 0;
        for i in 0..10_000u32 {
            let candidate = format!(
                "{KEY_PREFIX}{}",
                URL_SAFE_NO_PAD.encode(
                    Sha256::digest(i.to_le_bytes())
                        .iter()
                        .chain(&[1, 2, 3, 4])
                        .copied()
                        .collect::<Vec<u8>>()
                )
            );
            junk += usize::from(has_valid_checksum(&candidate));
        }
        assert_eq!(junk, 0, "random 36-byte keys essentially never pass");
    }

    #[test]
    fn shape_check_rejects_garbage_without_panicking() {
        assert!(!well_formed(""));
        assert!(!well_formed("has space"));
        assert!(!well_formed("ключ"));
        assert!(!well_formed(&"a".repeat(MAX_KEY_LEN + 1)));
        assert!(well_formed(&"a".repeat(MAX_KEY_LEN)));
    }
}
