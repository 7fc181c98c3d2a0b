//! What a factory returns (`Created`) and what a caller holds (`Pooled`).

use std::fmt;
use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::Slot;
use crate::Retire;
use crate::retire::retire_detached;
use crate::stats::Counters;

/// A freshly built value, as returned by a factory passed to
/// [`KeyedPool::get_or_create`](crate::KeyedPool::get_or_create).
#[derive(Debug)]
pub struct Created<V> {
    pub(crate) value: V,
    pub(crate) deadline: Option<Instant>,
    pub(crate) poolable: bool,
}

impl<V> Created<V> {
    /// A value that may be pooled until the pool's own TTL.
    pub fn new(value: V) -> Self {
        Self {
            value,
            deadline: None,
            poolable: true,
        }
    }

    /// A value that must not be handed out after `deadline` (for example a credential's expiry
    /// minus a safety margin). The pool uses the sooner of this and its own TTL; a deadline that
    /// has already passed makes the value one-shot (P2, P6).
    pub fn until(value: V, deadline: Instant) -> Self {
        Self {
            value,
            deadline: Some(deadline),
            poolable: true,
        }
    }

    /// A value that must not be pooled at all: the caller gets it, and it is retired when the
    /// caller drops it (P6).
    pub fn one_shot(value: V) -> Self {
        Self {
            value,
            deadline: None,
            poolable: false,
        }
    }
}

/// A value handed out by a [`KeyedPool`](crate::KeyedPool); derefs to the value.
///
/// Dropping a pooled handle returns nothing and tears nothing down: the value stays in the pool
/// and only the pool retires it. Dropping a *one-shot* handle (see [`Created::one_shot`])
/// retires the value in the background.
pub struct Pooled<V: Retire> {
    pub(crate) slot: Arc<Slot<V>>,
    pub(crate) one_shot: Option<OneShot>,
}

pub(crate) struct OneShot {
    pub(crate) counters: Arc<Counters>,
    pub(crate) retire_timeout: Duration,
}

impl<V: Retire> Pooled<V> {
    /// Whether the value lives in the pool (`false`: a one-shot value retired on drop).
    pub fn is_pooled(&self) -> bool {
        self.one_shot.is_none()
    }

    /// When the pool stops handing this value out (`None`: no deadline).
    pub fn deadline(&self) -> Option<Instant> {
        self.slot.deadline
    }

    /// When the value was created.
    pub fn created(&self) -> Instant {
        self.slot.created
    }
}

impl<V: Retire> Deref for Pooled<V> {
    type Target = V;

    fn deref(&self) -> &V {
        &self.slot.value
    }
}

impl<V: Retire> Drop for Pooled<V> {
    fn drop(&mut self) {
        if let Some(one_shot) = self.one_shot.take() {
            retire_detached(
                vec![self.slot.clone()],
                one_shot.retire_timeout,
                one_shot.counters,
            );
        }
    }
}

impl<V: Retire> fmt::Debug for Pooled<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pooled")
            .field("pooled", &self.is_pooled())
            .field("deadline", &self.slot.deadline)
            .finish_non_exhaustive()
    }
}
