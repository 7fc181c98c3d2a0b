//! `Handle`: a read's eventual value, and `Dependencies`: what a dependent read waits for.

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use tokio::sync::watch;

/// The eventual value of a read (its own value, or its default if it failed).
///
/// Cheap to clone. Pass handles to [`FanOut::read_after`](crate::FanOut::read_after) to make
/// a dependent read; read the value with [`Handle::value`] once the fan-out is joined.
pub struct Handle<T> {
    name: Arc<str>,
    phase: u32,
    rx: watch::Receiver<Option<Arc<T>>>,
    default: Arc<T>,
}

impl<T> Clone for Handle<T> {
    fn clone(&self) -> Self {
        Self {
            name: Arc::clone(&self.name),
            phase: self.phase,
            rx: self.rx.clone(),
            default: Arc::clone(&self.default),
        }
    }
}

impl<T> fmt::Debug for Handle<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handle")
            .field("name", &self.name)
            .field("phase", &self.phase)
            .field("resolved", &self.is_resolved())
            .finish_non_exhaustive()
    }
}

/// The sending half, kept by the task that runs the read.
pub(crate) type Resolver<T> = watch::Sender<Option<Arc<T>>>;

impl<T> Handle<T> {
    pub(crate) fn channel(name: Arc<str>, phase: u32, default: Arc<T>) -> (Resolver<T>, Self) {
        let (tx, rx) = watch::channel(None);
        let handle = Self {
            name,
            phase,
            rx,
            default,
        };
        (tx, handle)
    }

    /// The read's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The read's phase (1 for a read with no dependency).
    pub fn phase(&self) -> u32 {
        self.phase
    }

    /// Whether the read has finished (with its value or its default).
    pub fn is_resolved(&self) -> bool {
        self.rx.borrow().is_some()
    }

    /// The value now: the read's result once it has finished, its default before that.
    /// After [`FanOut::join`](crate::FanOut::join) every handle is resolved.
    pub fn value(&self) -> Arc<T> {
        self.rx
            .borrow()
            .as_ref()
            .map_or_else(|| Arc::clone(&self.default), Arc::clone)
    }

    /// Wait until the read has finished; its value, or its default if it failed or its task
    /// went away without an answer.
    pub async fn resolved(&self) -> Arc<T> {
        let mut rx = self.rx.clone();
        // An error means the sender was dropped (the fan-out was dropped): fall back.
        let _ = rx.wait_for(Option::is_some).await;
        self.value()
    }
}

/// What a dependent read waits for: `()`, one [`Handle`], or a tuple of up to six handles.
///
/// The read starts as soon as *these* handles are resolved, not when every read of the
/// previous phase is done, and receives their values (`Arc<T>` each).
pub trait Dependencies: Send + 'static {
    /// The resolved values handed to the dependent read.
    type Output: Send + 'static;

    /// The deepest phase among the dependencies (0 for none).
    fn phase(&self) -> u32;

    /// Wait for every dependency.
    fn wait(self) -> impl Future<Output = Self::Output> + Send;
}

impl Dependencies for () {
    type Output = ();

    fn phase(&self) -> u32 {
        0
    }

    async fn wait(self) -> Self::Output {}
}

impl<A: Send + Sync + 'static> Dependencies for Handle<A> {
    type Output = Arc<A>;

    fn phase(&self) -> u32 {
        self.phase
    }

    async fn wait(self) -> Self::Output {
        self.resolved().await
    }
}

macro_rules! tuple_dependencies {
    ($($ty:ident $idx:tt),+) => {
        impl<$($ty: Send + Sync + 'static),+> Dependencies for ($(Handle<$ty>,)+) {
            type Output = ($(Arc<$ty>,)+);

            fn phase(&self) -> u32 {
                0 $(.max(self.$idx.phase))+
            }

            async fn wait(self) -> Self::Output {
                // Sequential awaits are fine: the read needs all of them anyway.
                ($(self.$idx.resolved().await,)+)
            }
        }
    };
}

tuple_dependencies!(A 0);
tuple_dependencies!(A 0, B 1);
tuple_dependencies!(A 0, B 1, C 2);
tuple_dependencies!(A 0, B 1, C 2, D 3);
tuple_dependencies!(A 0, B 1, C 2, D 3, E 4);
tuple_dependencies!(A 0, B 1, C 2, D 3, E 4, F 5);
