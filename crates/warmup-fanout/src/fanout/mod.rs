//! The generic phased fan-out: named reads under a bound, with timeouts, defaults and dependencies.

mod handle;
mod report;
mod run;
mod telemetry;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::Semaphore;
use tokio::task::{Id, JoinSet};

pub use handle::{Dependencies, Handle};
pub use report::{FanOutReport, Outcome, ReadReport};
pub use run::BoxError;
use run::Shared;

/// The longest timeout a read can have (1 hour). Longer timeouts, up to `Duration::MAX`, given
/// to [`FanOutConfig::default_timeout`], [`ReadSpec::timeout`] or the public field, are clamped to
/// it, so a read that never answers always ends (SPEC X5).
pub const MAX_READ_TIMEOUT: Duration = Duration::from_secs(3_600);

/// The largest bound on reads in flight (tokio's semaphore limit); larger values, up to
/// `usize::MAX`, are clamped to it instead of panicking (SPEC X5).
pub const MAX_IN_FLIGHT_LIMIT: usize = Semaphore::MAX_PERMITS;

/// A bound on reads in flight, clamped into `[1, MAX_IN_FLIGHT_LIMIT]`.
pub(crate) fn clamp_in_flight(n: usize) -> usize {
    n.clamp(1, MAX_IN_FLIGHT_LIMIT)
}

/// A read timeout, clamped to [`MAX_READ_TIMEOUT`].
pub(crate) fn clamp_timeout(timeout: Duration) -> Duration {
    timeout.min(MAX_READ_TIMEOUT)
}

/// Bounds for one [`FanOut`].
///
/// Any value is accepted, through the setters or the public fields: a bound of 0 is taken as 1,
/// one above [`MAX_IN_FLIGHT_LIMIT`] as that limit, and a timeout above [`MAX_READ_TIMEOUT`]
/// (e.g. `Duration::MAX`) as that maximum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct FanOutConfig {
    /// The most reads running at the same time, across all phases and groups
    /// (1 ..= [`MAX_IN_FLIGHT_LIMIT`]; default 12).
    pub max_in_flight: usize,
    /// The timeout of a read whose [`ReadSpec`] sets none (at most [`MAX_READ_TIMEOUT`];
    /// default 10 s).
    pub default_timeout: Duration,
}

impl Default for FanOutConfig {
    /// 12 reads in flight, 10 s per read.
    fn default() -> Self {
        Self {
            max_in_flight: 12,
            default_timeout: Duration::from_secs(10),
        }
    }
}

impl FanOutConfig {
    /// Set the bound on reads in flight (0 is taken as 1, more than [`MAX_IN_FLIGHT_LIMIT`] as
    /// that limit).
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = clamp_in_flight(n);
        self
    }

    /// Set the timeout of reads that set none (clamped to [`MAX_READ_TIMEOUT`]).
    pub fn default_timeout(mut self, timeout: Duration) -> Self {
        self.default_timeout = clamp_timeout(timeout);
        self
    }
}

/// A read's name, default and (optional) timeout.
#[derive(Debug, Clone)]
pub struct ReadSpec<T> {
    name: Arc<str>,
    default: T,
    timeout: Option<Duration>,
}

impl<T> ReadSpec<T> {
    /// A read called `name` that falls back to `default` when it fails.
    pub fn new(name: impl Into<Arc<str>>, default: T) -> Self {
        Self {
            name: name.into(),
            default,
            timeout: None,
        }
    }

    /// Give this read its own timeout instead of the fan-out's default (clamped to
    /// [`MAX_READ_TIMEOUT`]).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(clamp_timeout(timeout));
        self
    }

    /// The read's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// One read of a group made by [`FanOut::fan_after`]: its spec and its (not yet polled) future.
pub struct GroupRead<T> {
    spec: ReadSpec<T>,
    future: BoxFuture<'static, Result<T, BoxError>>,
}

impl<T> GroupRead<T> {
    /// A group member; `future` does nothing until the group runs it.
    pub fn new<Fut, E>(spec: ReadSpec<T>, future: Fut) -> Self
    where
        Fut: Future<Output = Result<T, E>> + Send + 'static,
        E: Into<BoxError>,
    {
        use futures::FutureExt;
        Self {
            spec,
            future: async move { future.await.map_err(Into::into) }.boxed(),
        }
    }
}

impl<T> fmt::Debug for GroupRead<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GroupRead")
            .field("name", &self.spec.name)
            .field("timeout", &self.spec.timeout)
            .finish_non_exhaustive()
    }
}

/// The sort key of a report row: (registration index, position in its group).
type Key = (u32, u32);

/// A set of named reads run concurrently under one bound.
///
/// Reads start as soon as they are registered (inside a Tokio runtime) and their dependencies
/// are resolved; [`FanOut::join`] waits for all of them. A failing, panicking or slow read
/// never cancels another: it resolves to its default and is reported. Dropping a `FanOut`
/// before `join` cancels its reads.
pub struct FanOut {
    shared: Arc<Shared>,
    tasks: JoinSet<Vec<(Key, ReadReport)>>,
    /// Who each task is, to report it if its task ends without an answer.
    pending: HashMap<Id, (Key, Arc<str>, u32)>,
    next: u32,
    metrics: telemetry::FanOutMetrics,
}

impl fmt::Debug for FanOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FanOut")
            .field("reads", &self.next)
            .field("running", &self.tasks.len())
            .finish_non_exhaustive()
    }
}

impl FanOut {
    /// An empty fan-out; its clock (for [`ReadReport::started_after`]) starts now.
    pub fn new(config: FanOutConfig) -> Self {
        Self {
            shared: Arc::new(Shared::new(
                clamp_in_flight(config.max_in_flight),
                clamp_timeout(config.default_timeout),
            )),
            tasks: JoinSet::new(),
            pending: HashMap::new(),
            next: 0,
            metrics: telemetry::FanOutMetrics::new(),
        }
    }

    /// A phase-1 read: starts now (once a permit is free).
    ///
    /// # Panics
    /// If called outside a Tokio runtime (like `tokio::spawn`).
    pub fn read<T, Fut, E>(&mut self, spec: ReadSpec<T>, read: Fut) -> Handle<T>
    where
        T: Send + Sync + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
        E: Into<BoxError>,
    {
        self.read_after(spec, (), move |()| read)
    }

    /// A dependent read: starts when every handle in `deps` is resolved (not when the whole
    /// previous phase is), and gets their values. Its phase is one more than its deepest
    /// dependency's.
    ///
    /// # Panics
    /// If called outside a Tokio runtime (like `tokio::spawn`).
    pub fn read_after<D, T, F, Fut, E>(&mut self, spec: ReadSpec<T>, deps: D, read: F) -> Handle<T>
    where
        D: Dependencies,
        T: Send + Sync + 'static,
        F: FnOnce(D::Output) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
        E: Into<BoxError>,
    {
        let key = (self.next_index(), 0);
        let phase = deps.phase().saturating_add(1);
        let ReadSpec {
            name,
            default,
            timeout,
        } = spec;
        let default = Arc::new(default);
        let (resolver, handle) = Handle::channel(Arc::clone(&name), phase, Arc::clone(&default));
        let shared = Arc::clone(&self.shared);
        let task_name = Arc::clone(&name);
        let id = self
            .tasks
            .spawn(async move {
                let inputs = deps.wait().await;
                let (value, report) = shared
                    .run_one(&task_name, phase, timeout, None, move || read(inputs))
                    .await;
                resolver.send_replace(Some(value.map_or(default, Arc::new)));
                vec![(key, report)]
            })
            .id();
        self.pending.insert(id, (key, name, phase));
        handle
    }

    /// A dependent group: when `deps` are resolved, `make` turns their values into any number
    /// of reads (e.g. one log tail per pod), which run under the fan-out's bound and, if
    /// `max_in_flight` is set, under the group's own bound too (0 is taken as 1, more than
    /// [`MAX_IN_FLIGHT_LIMIT`] as that limit). Each member is reported under
    /// its own name; the handle resolves to the members' values (or defaults), in order.
    ///
    /// # Panics
    /// If called outside a Tokio runtime (like `tokio::spawn`).
    pub fn fan_after<D, T, F>(
        &mut self,
        name: impl Into<Arc<str>>,
        max_in_flight: Option<usize>,
        deps: D,
        make: F,
    ) -> Handle<Vec<T>>
    where
        D: Dependencies,
        T: Send + Sync + 'static,
        F: FnOnce(D::Output) -> Vec<GroupRead<T>> + Send + 'static,
    {
        let index = self.next_index();
        let phase = deps.phase().saturating_add(1);
        let name: Arc<str> = name.into();
        let (resolver, handle) = Handle::channel(Arc::clone(&name), phase, Arc::new(Vec::new()));
        let shared = Arc::clone(&self.shared);
        let group_name = Arc::clone(&name);
        let id = self
            .tasks
            .spawn(async move {
                let inputs = deps.wait().await;
                let members = match std::panic::catch_unwind(AssertUnwindSafe(|| make(inputs))) {
                    Ok(members) => members,
                    Err(_) => {
                        // Reported as a degraded read under the group's own name.
                        let (_, report) = shared
                            .run_one(&group_name, phase, None, None, || async {
                                Err::<Vec<T>, BoxError>(
                                    "building the group's reads panicked".into(),
                                )
                            })
                            .await;
                        resolver.send_replace(Some(Arc::new(Vec::new())));
                        return vec![((index, 0), report)];
                    }
                };
                let group = max_in_flight.map(|n| Semaphore::new(clamp_in_flight(n)));
                let runs = members.into_iter().enumerate().map(|(i, member)| {
                    let shared = &shared;
                    let group = group.as_ref();
                    async move {
                        let GroupRead { spec, future } = member;
                        let (value, report) = shared
                            .run_one(&spec.name, phase, spec.timeout, group, move || future)
                            .await;
                        (
                            value.unwrap_or(spec.default),
                            ((index, i as u32 + 1), report),
                        )
                    }
                });
                let (values, reports): (Vec<T>, Vec<_>) =
                    futures::future::join_all(runs).await.into_iter().unzip();
                resolver.send_replace(Some(Arc::new(values)));
                reports
            })
            .id();
        self.pending.insert(id, ((index, 0), name, phase));
        handle
    }

    /// Wait for every read; the report lists them in registration order. Every handle is
    /// resolved afterwards.
    pub async fn join(mut self) -> FanOutReport {
        let mut rows: Vec<(Key, ReadReport)> = Vec::new();
        while let Some(joined) = self.tasks.join_next_with_id().await {
            match joined {
                Ok((id, reports)) => {
                    self.pending.remove(&id);
                    rows.extend(reports);
                }
                Err(error) => {
                    // Reads catch their own panics, so this is a cancelled task (runtime
                    // shutting down): still report it.
                    if let Some((key, name, phase)) = self.pending.remove(&error.id()) {
                        rows.push((
                            key,
                            ReadReport {
                                name: name.to_string(),
                                phase,
                                outcome: Outcome::Degraded {
                                    reason: format!("read task ended without a result: {error}"),
                                },
                                started_after: Duration::ZERO,
                                duration: Duration::ZERO,
                            },
                        ));
                    }
                }
            }
        }
        rows.sort_by_key(|(key, _)| *key);
        let report = FanOutReport {
            reads: rows.into_iter().map(|(_, report)| report).collect(),
            elapsed: self.shared.started.elapsed(),
            peak_in_flight: self.shared.peak(),
        };
        self.metrics.joined(&report);
        report
    }

    fn next_index(&mut self) -> u32 {
        let index = self.next;
        self.next += 1;
        index
    }
}
