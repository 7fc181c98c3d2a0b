//! Credential identity: one registration per live credential allocation, with an id never reused.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::hash::BuildHasherDefault;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock, Weak};

use azure_core::credentials::{AccessToken, TokenCredential};
use azure_core::error::ErrorKind;
use token_refresh::{CachingCredential, Fetched, RefreshConfig, TokenSource};

/// How many registrations one access checks for a dropped credential. With this many
/// credentials or fewer, every access checks them all, so a dropped one is evicted on the next
/// access (B4); with more, each is checked within `⌈n / 16⌉` accesses. A check is one load of
/// the credential's reference count (the `blob_pool` bench measures 16 of them on the hit path).
pub(crate) const OWNER_CHECKS_PER_ACCESS: usize = 16;

/// The identity the pool gives a credential: issued when the pool first sees the credential,
/// unique for the life of the process (a counter, never an address), never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CredentialId(u64);

impl CredentialId {
    /// The raw number, for logs.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for CredentialId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "credential#{}", self.0)
    }
}

/// The thin address of a credential's `Arc` allocation (the vtable part of the fat pointer is
/// ignored: one allocation may be seen through several vtables).
pub(crate) fn address(credential: &Arc<dyn TokenCredential>) -> usize {
    Arc::as_ptr(credential).cast::<()>() as usize
}

/// Whether `weak` points at the allocation behind `credential`. While `weak` exists that
/// allocation cannot be freed, so no other credential can be at the same address: equal
/// addresses mean the same credential.
pub(crate) fn same_allocation(
    weak: &Weak<dyn TokenCredential>,
    credential: &Arc<dyn TokenCredential>,
) -> bool {
    weak.as_ptr().cast::<()>() == Arc::as_ptr(credential).cast::<()>()
}

/// The token source behind a registration's shared cache: asks the user's credential through a
/// `Weak`, so the pool never keeps a credential alive.
pub(crate) struct OwnerSource {
    owner: Weak<dyn TokenCredential>,
    scopes: Vec<String>,
}

impl TokenSource for OwnerSource {
    type Token = AccessToken;
    type Error = azure_core::Error;

    async fn fetch(&self) -> Result<Fetched<AccessToken>, azure_core::Error> {
        let Some(owner) = self.owner.upgrade() else {
            return Err(azure_core::Error::with_message(
                ErrorKind::Credential,
                "the credential this Blob client was built for has been dropped; ask the pool for a client with a live credential",
            ));
        };
        let scopes: Vec<&str> = self.scopes.iter().map(String::as_str).collect();
        let token = owner.get_token(&scopes, None).await?;
        Ok(Fetched::from(token))
    }
}

/// The token cache every client of one credential shares (B8).
pub(crate) type SharedCredential = CachingCredential<OwnerSource>;

/// What the pool keeps per credential.
pub(crate) struct Registration {
    pub(crate) id: CredentialId,
    /// Pins the allocation (so its address cannot be reused) without keeping the credential
    /// alive; `strong_count() == 0` means the user dropped it.
    pub(crate) owner: Weak<dyn TokenCredential>,
    /// One token cache per scope for every client of this credential.
    pub(crate) credential: Arc<SharedCredential>,
}

impl Registration {
    pub(crate) fn is_alive(&self) -> bool {
        self.owner.strong_count() > 0
    }
}

/// Hashes an allocation address: drop the alignment bits, multiply by a 64-bit odd constant
/// (Fibonacci hashing). Addresses are not attacker-chosen, so no keyed hash is needed.
#[derive(Default, Clone, Copy)]
struct AddressHasher(u64);

impl std::hash::Hasher for AddressHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_usize(&mut self, address: usize) {
        self.0 = ((address as u64) >> 3).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

type ByAddress = HashMap<usize, Arc<Registration>, BuildHasherDefault<AddressHasher>>;

#[derive(Default)]
struct State {
    by_address: ByAddress,
    /// The same registrations, in a list the accesses walk round-robin.
    list: Vec<Arc<Registration>>,
}

/// The registrations, keyed by allocation address.
pub(crate) struct Registry {
    state: RwLock<State>,
    /// Where the next access's round-robin checks start, when there are more registrations
    /// than one access checks. The pool's own: a cursor shared by several pools (as a
    /// thread-local one was) lets one pool's accesses skip the same registrations of another
    /// every time.
    cursor: AtomicUsize,
    next_id: AtomicU64,
    refresh: RefreshConfig,
}

/// What a hot-path lookup found.
pub(crate) struct Lookup {
    /// The credential's id, if it is registered.
    pub(crate) id: Option<CredentialId>,
    /// Whether a dropped credential was seen among the registrations checked.
    pub(crate) saw_dropped: bool,
}

impl Registry {
    pub(crate) fn new(refresh: RefreshConfig) -> Self {
        Self {
            state: RwLock::default(),
            cursor: AtomicUsize::new(0),
            next_id: AtomicU64::new(1),
            refresh,
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// The hot path: the id of `credential` if registered, and whether any of up to
    /// [`OWNER_CHECKS_PER_ACCESS`] registrations (all of them when there are that few) belongs
    /// to a dropped credential. One read lock, no allocation.
    pub(crate) fn lookup(&self, credential: &Arc<dyn TokenCredential>) -> Lookup {
        let state = self.read();
        let id = state
            .by_address
            .get(&address(credential))
            .filter(|r| r.is_alive())
            .map(|r| r.id);
        let n = state.list.len();
        let saw_dropped = if n <= OWNER_CHECKS_PER_ACCESS {
            state.list.iter().any(|r| !r.is_alive())
        } else {
            // Concurrent accesses take consecutive windows.
            let start = self
                .cursor
                .fetch_add(OWNER_CHECKS_PER_ACCESS, Ordering::Relaxed)
                % n;
            (0..OWNER_CHECKS_PER_ACCESS).any(|i| !state.list[(start + i) % n].is_alive())
        };
        Lookup { id, saw_dropped }
    }

    /// The registration of `credential`, made on first sight. The caller holds a strong
    /// reference, so an entry found at its address is this credential (see [`same_allocation`]).
    pub(crate) fn register(&self, credential: &Arc<dyn TokenCredential>) -> Arc<Registration> {
        let addr = address(credential);
        if let Some(found) = self.read().by_address.get(&addr)
            && found.is_alive()
            && same_allocation(&found.owner, credential)
        {
            return found.clone();
        }
        let mut state = self.write();
        if let Some(found) = state.by_address.get(&addr) {
            if found.is_alive() && same_allocation(&found.owner, credential) {
                return found.clone();
            }
            // Unreachable while the registration's Weak pins the address, but never hand a
            // stale registration to another credential.
            let stale = found.id;
            state.by_address.remove(&addr);
            state.list.retain(|r| r.id != stale);
        }
        let owner = Arc::downgrade(credential);
        let source_owner = owner.clone();
        let registration = Arc::new(Registration {
            id: CredentialId(self.next_id.fetch_add(1, Ordering::Relaxed)),
            owner,
            credential: Arc::new(CachingCredential::new(
                self.refresh.clone(),
                move |scopes| OwnerSource {
                    owner: source_owner.clone(),
                    scopes: scopes.to_vec(),
                },
            )),
        });
        state.by_address.insert(addr, registration.clone());
        state.list.push(registration.clone());
        tracing::debug!(credential = %registration.id, "blob-pool: credential registered");
        registration
    }

    /// The registration of `credential`, if any (no registration is made).
    pub(crate) fn get(&self, credential: &Arc<dyn TokenCredential>) -> Option<Arc<Registration>> {
        self.read()
            .by_address
            .get(&address(credential))
            .filter(|r| r.is_alive() && same_allocation(&r.owner, credential))
            .cloned()
    }

    /// Remove every registration whose credential was dropped; their ids.
    pub(crate) fn remove_dropped(&self) -> Vec<CredentialId> {
        if !self.read().list.iter().any(|r| !r.is_alive()) {
            return Vec::new();
        }
        let mut state = self.write();
        let mut gone = Vec::new();
        state.list.retain(|r| {
            let alive = r.is_alive();
            if !alive {
                gone.push(r.id);
            }
            alive
        });
        state.by_address.retain(|_, r| r.is_alive());
        gone
    }

    /// Remove the registration of `credential` (its clients get a fresh one on next use).
    pub(crate) fn remove(&self, credential: &Arc<dyn TokenCredential>) -> Option<CredentialId> {
        let mut state = self.write();
        let addr = address(credential);
        let found = state.by_address.get(&addr)?;
        if !same_allocation(&found.owner, credential) {
            return None;
        }
        let id = found.id;
        state.by_address.remove(&addr);
        state.list.retain(|r| r.id != id);
        Some(id)
    }

    /// Drop every registration (and with them their token caches, once no client uses them).
    pub(crate) fn clear(&self) -> usize {
        let mut state = self.write();
        let n = state.list.len();
        *state = State::default();
        n
    }

    /// The live ids, and the first id not yet issued: an entry whose id is below the bound and
    /// not in the set belongs to a registration that no longer exists.
    pub(crate) fn snapshot(&self) -> (HashSet<CredentialId>, CredentialId) {
        let state = self.read();
        let bound = CredentialId(self.next_id.load(Ordering::Acquire));
        (state.list.iter().map(|r| r.id).collect(), bound)
    }

    /// Registrations now.
    pub(crate) fn len(&self) -> usize {
        self.read().list.len()
    }

    /// Registrations ever made.
    pub(crate) fn issued(&self) -> u64 {
        self.next_id.load(Ordering::Relaxed) - 1
    }
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("credentials", &self.len())
            .field("issued", &self.issued())
            .finish_non_exhaustive()
    }
}
