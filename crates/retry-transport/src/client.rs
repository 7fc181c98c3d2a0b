//! `RetryClient`: the attempt loop — acquire a slot, send, release before sleeping, retry.

use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use http::{HeaderValue, StatusCode};
use reqwest::{Method, Request, RequestBuilder, Response, Url};
use tokio::time::Instant;
use tracing::Instrument as _;

use crate::budget::{Budgets, RetryBudget};
use crate::config::{Builder, ClientConfig, Limits};
use crate::error::Error;
use crate::hooks::{Credential, Sleeper};
use crate::permit::{Limiter, Released, Slot, attach, release};
use crate::policy::{Attempt, Decision, RetryPolicy};
use crate::stats::{Counters, GiveUpReason, RetryCause, TransportStats, bump};
use crate::telemetry::{self, Host};
use crate::throttle::Throttles;

/// What every clone and policy view of one client shares.
#[derive(Debug)]
struct Shared {
    config: ClientConfig,
    /// The reqwest client now in use; `reset()` swaps it. Never held across an await.
    current: RwLock<reqwest::Client>,
    limiter: Limiter,
    counters: Counters,
    credential: Option<Arc<dyn Credential>>,
    sleeper: Arc<dyn Sleeper>,
    /// R9: one retry budget per partition.
    budgets: Budgets,
    /// R10: adaptive throttling, when turned on.
    throttles: Option<Throttles>,
}

/// An HTTP client over reqwest that never hangs its pool (seed 002).
///
/// Cloning is cheap and shares everything: the connection pool, the slot limit, the stats.
/// See the [crate docs](crate) for the guarantees and an example.
#[derive(Debug, Clone)]
pub struct RetryClient {
    shared: Arc<Shared>,
    policy: Arc<RetryPolicy>,
    /// A caller-named partition for the budget and throttling; `None`: the URL's host:port.
    partition: Option<Arc<str>>,
}

impl RetryClient {
    /// A builder, with limits from the `RETRY_TRANSPORT_*` environment variables.
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// A client with the default policy and limits from the environment.
    pub fn new() -> Result<Self, Error> {
        Builder::default().build()
    }

    pub(crate) fn from_builder(builder: Builder) -> Result<Self, Error> {
        let client = builder.config.build()?;
        Ok(Self {
            shared: Arc::new(Shared {
                limiter: Limiter::new(
                    builder.config.limits.max_in_use,
                    builder
                        .config
                        .limits
                        .max_in_use_per_host
                        .min(builder.config.limits.max_in_use),
                ),
                budgets: Budgets::new(builder.retry_budget),
                throttles: builder.adaptive_throttle.map(Throttles::new),
                config: builder.config,
                current: RwLock::new(client),
                counters: Counters::default(),
                credential: builder.credential,
                sleeper: builder.sleeper,
            }),
            policy: Arc::new(builder.policy),
            partition: None,
        })
    }

    /// A view of this client with another retry policy. It shares the connection pool, the
    /// slot limit and the stats, so a "with more retries" client can never escape the limits
    /// (R5).
    pub fn with_policy(&self, policy: RetryPolicy) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
            policy: Arc::new(policy),
            partition: self.partition.clone(),
        }
    }

    /// A view of this client whose requests count against the partition `name` for the
    /// retry budget (R9) and adaptive throttling (R10), instead of their URL's host and port
    /// — e.g. one partition per upstream service behind several hosts, or per tenant. Like
    /// [`with_policy`](RetryClient::with_policy) it shares the pool, the limits, the stats
    /// and every partition's state with this client. Connection slots stay per host (R11).
    pub fn with_partition(&self, name: impl Into<String>) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
            policy: Arc::clone(&self.policy),
            partition: Some(Arc::from(name.into())),
        }
    }

    /// The partition a request to `url` counts against through this view: the view's name
    /// (see [`with_partition`](RetryClient::with_partition)), else `host:port`.
    pub fn partition_for(&self, url: &Url) -> String {
        match &self.partition {
            Some(name) => name.to_string(),
            None => authority(url),
        }
    }

    /// The retry budget's configuration, as clamped.
    pub fn retry_budget(&self) -> &RetryBudget {
        self.shared.budgets.config()
    }

    /// Retries `partition`'s budget allows now (R9); `None` if the budget is disabled or the
    /// partition has sent nothing yet (a fresh partition has the whole floor).
    pub fn retry_budget_balance(&self, partition: &str) -> Option<f64> {
        self.shared.budgets.balance(partition)
    }

    /// The probability that adaptive throttling rejects `partition`'s next request (R10);
    /// `None` when throttling is off.
    pub fn throttle_probability(&self, partition: &str) -> Option<f64> {
        self.shared
            .throttles
            .as_ref()
            .map(|t| t.probability(partition))
    }

    /// Connection slots held now for `host` (`host:port`, as [`partition_for`] gives for a
    /// view without a partition name), R11.
    ///
    /// [`partition_for`]: RetryClient::partition_for
    pub fn permits_in_use_for(&self, host: &str) -> usize {
        self.shared.limiter.in_use_for(host)
    }

    /// The retry policy of this view.
    pub fn policy(&self) -> &RetryPolicy {
        &self.policy
    }

    /// The limits.
    pub fn limits(&self) -> &Limits {
        &self.shared.config.limits
    }

    /// The counters now.
    pub fn stats(&self) -> TransportStats {
        let limiter = &self.shared.limiter;
        self.shared.counters.snapshot(
            limiter.in_use(),
            limiter.max_in_use(),
            limiter.max_in_use_per_host(),
        )
    }

    /// Rebuild the underlying reqwest client — a fresh connection pool — with the same
    /// configuration: proxy, TLS roots, default headers, customizations and limits (R6).
    /// Requests in flight finish on the old client, whose pool closes when the last of them
    /// is done. The slot limit spans both: it is one semaphore.
    pub fn reset(&self) -> Result<(), Error> {
        let fresh = self.shared.config.build()?;
        let old = {
            let mut current = self
                .shared
                .current
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            std::mem::replace(&mut *current, fresh)
        };
        drop(old);
        bump(&self.shared.counters.resets);
        tracing::info!("retry-transport: HTTP client reset, new connection pool");
        Ok(())
    }

    fn current(&self) -> reqwest::Client {
        self.shared
            .current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Start a request (send it with [`RetryClient::send`]).
    pub fn request(&self, method: Method, url: Url) -> RequestBuilder {
        self.current().request(method, url)
    }

    /// Start a GET (send it with [`RetryClient::send`]).
    pub fn get(&self, url: Url) -> RequestBuilder {
        self.request(Method::GET, url)
    }

    /// Build and [`execute`](RetryClient::execute) a request.
    pub async fn send(&self, request: RequestBuilder) -> Result<Response, Error> {
        let request = request.build().map_err(Error::Request)?;
        self.execute(request).await
    }

    /// Send `request`, retrying as the policy says. The returned response holds its connection
    /// slot until its body is read to the end or it is dropped.
    pub async fn execute(&self, request: Request) -> Result<Response, Error> {
        let metrics = self
            .shared
            .limiter
            .metrics()
            .host(request.url().host_str().unwrap_or(""));
        let method = telemetry::method_label(request.method());
        let _active = metrics.active();
        let started = Instant::now();
        let result = self.execute_with(request, &metrics).await;
        let outcome = match &result {
            Ok(response) => Ok(response.status().as_u16()),
            Err(error) => Err(telemetry::error_label(error)),
        };
        metrics.request_duration(method, outcome, started.elapsed());
        result
    }

    /// [`execute`](Self::execute), recording into `metrics` (the request's host).
    async fn execute_with(&self, request: Request, metrics: &Host) -> Result<Response, Error> {
        let counters = &self.shared.counters;
        bump(&counters.requests);
        let started = Instant::now();
        let method = request.method().clone();
        let partition = self.partition_for(request.url());
        let host = authority(request.url());
        let mut schedule = self.policy.schedule();
        // R7: one refresh per send. `refreshed` remembers that it happened (a second 401 is
        // returned); `refresh_next` asks for it on the next attempt only, so later retries of
        // this send (a 429 or 503 after the refresh) read the cache again.
        let mut refreshed = false;
        let mut refresh_next = false;
        let mut number = 0u32;
        let mut current = request;
        loop {
            number += 1;
            // The copy for a possible next attempt. R8: a streaming body cannot be cloned, so
            // `next` is None and this attempt is the only one.
            let next = current.try_clone();
            let span = tracing::info_span!(
                "http_attempt",
                attempt = number,
                method = %method,
                host = current.url().host_str().unwrap_or(""),
                path = current.url().path(),
                status = tracing::field::Empty,
            );
            // R10: a first attempt the throttle rejects is not sent: no credential, no slot,
            // no connection. (Retries are admitted below, when they are decided.)
            if number == 1
                && let Some(throttles) = &self.shared.throttles
                && let Err(probability) = throttles.admit(&partition)
            {
                bump(&counters.locally_rejected);
                metrics.rejected();
                metrics.throttle_probability(probability);
                tracing::debug!(parent: &span, partition, probability, "rejected locally by adaptive throttling");
                return Err(Error::Throttled {
                    partition,
                    probability,
                });
            }
            let (result, permit, authorization) = match self
                .attempt(current, &host, std::mem::take(&mut refresh_next), metrics)
                .instrument(span.clone())
                .await
            {
                Ok(sent) => sent,
                Err(error) => {
                    if error.is_pool_timeout() {
                        bump(&counters.pool_timeouts);
                    }
                    return Err(error);
                }
            };
            if number == 1 {
                // R9: every first attempt sent earns the partition's budget its ratio.
                self.shared.budgets.deposit(&partition);
                metrics.budget_balance(self.shared.budgets.balance(&partition));
                if let Some(throttles) = &self.shared.throttles {
                    metrics.throttle_probability(throttles.probability(&partition));
                }
            }
            let ctx = Attempt {
                method: &method,
                number,
                elapsed: started.elapsed(),
                wall_now: SystemTime::now(),
            };
            match result {
                Ok(response) => {
                    let status = response.status();
                    span.record("status", status.as_u16());
                    if let Some(throttles) = &self.shared.throttles
                        && !matches!(
                            status,
                            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
                        )
                    {
                        throttles.accepted(&partition);
                    }
                    let decision = if status == StatusCode::UNAUTHORIZED
                        && self.shared.credential.is_some()
                        && !refreshed
                    {
                        // R7: refresh the credential and retry once, at once. T11: first tell
                        // it which value the server rejected, so a cache drops that token by
                        // identity (and keeps a newer one another request already fetched).
                        if let (Some(credential), Some(value)) =
                            (&self.shared.credential, &authorization)
                        {
                            credential.rejected(value);
                        }
                        refreshed = true;
                        refresh_next = true;
                        Decision::Retry {
                            delay: std::time::Duration::ZERO,
                            cause: RetryCause::Unauthorized,
                        }
                    } else {
                        self.policy
                            .on_status(&ctx, status, response.headers(), &mut schedule)
                    };
                    let retry = self.settle(decision, metrics);
                    let retry = retry.filter(|(_, cause)| {
                        next.is_none() || self.admit_retry(&partition, *cause, &span, metrics)
                    });
                    match (retry, next) {
                        (Some((delay, cause)), Some(next)) => {
                            // R1: nothing is held while sleeping: the body is drained (or the
                            // connection dropped) and the slot released first.
                            self.release(response).await;
                            drop(permit);
                            counters.retry(cause);
                            metrics.retry(cause);
                            tracing::debug!(parent: &span, ?delay, ?cause, "retrying; response released");
                            if !delay.is_zero() {
                                self.shared.sleeper.sleep(delay).await;
                            }
                            current = next;
                        }
                        (Some(_), None) => {
                            self.gave_up(GiveUpReason::BodyNotCloneable, metrics);
                            return Ok(attach(response, permit));
                        }
                        (None, _) => return Ok(attach(response, permit)),
                    }
                }
                Err(error) => {
                    drop(permit);
                    if error.is_timeout() {
                        bump(&counters.timeouts);
                    }
                    let decision =
                        self.policy
                            .on_transport_error(&ctx, error.is_connect(), &mut schedule);
                    let retry = self.settle(decision, metrics);
                    let retry = retry.filter(|(_, cause)| {
                        next.is_none() || self.admit_retry(&partition, *cause, &span, metrics)
                    });
                    match (retry, next) {
                        (Some((delay, cause)), Some(next)) => {
                            counters.retry(cause);
                            metrics.retry(cause);
                            tracing::debug!(parent: &span, ?delay, error = %error, "retrying after a transport error");
                            self.shared.sleeper.sleep(delay).await;
                            current = next;
                        }
                        (retry, _) => {
                            if retry.is_some() {
                                self.gave_up(GiveUpReason::BodyNotCloneable, metrics);
                            }
                            if error.is_timeout() {
                                return Err(Error::Timeout {
                                    attempts: number,
                                    source: error,
                                });
                            }
                            return Err(Error::Transport {
                                attempts: number,
                                source: error,
                            });
                        }
                    }
                }
            }
        }
    }

    /// One attempt: the credential, a slot, the send. The slot comes back with the result.
    ///
    /// The `Authorization` value is fetched *before* the slot is acquired (R4): a slot covers a
    /// connection, not a token fetch, so a slow credential (IMDS, a blocking refresh at
    /// expiry) cannot starve other requests of slots.
    async fn attempt(
        &self,
        mut request: Request,
        host: &str,
        refresh: bool,
        metrics: &Host,
    ) -> Result<(reqwest::Result<Response>, Slot, Option<HeaderValue>), Error> {
        let limits = &self.shared.config.limits;
        let mut authorization = None;
        if let Some(credential) = &self.shared.credential {
            let waited = limits.credential_timeout;
            let mut value: HeaderValue =
                tokio::time::timeout(waited, credential.authorization(refresh))
                    .await
                    .map_err(|_| Error::CredentialTimeout { waited })?
                    .map_err(Error::Credential)?;
            value.set_sensitive(true);
            authorization = Some(value.clone());
            request
                .headers_mut()
                .insert(http::header::AUTHORIZATION, value);
        }
        let permit = self
            .shared
            .limiter
            .acquire(host, limits.acquire_timeout, metrics)
            .await?;
        bump(&self.shared.counters.attempts);
        metrics.attempt();
        // The query may hold a SAS token: keep it out of errors (and so out of logs).
        let result = self.current().execute(request).await.map_err(|mut error| {
            if let Some(url) = error.url_mut() {
                url.set_query(None);
                url.set_fragment(None);
            }
            error
        });
        Ok((result, permit, authorization))
    }

    /// Turn a decision into "sleep this long for this cause", counting give-ups.
    fn settle(
        &self,
        decision: Decision,
        metrics: &Host,
    ) -> Option<(std::time::Duration, RetryCause)> {
        match decision {
            Decision::Done => None,
            Decision::GiveUp(reason) => {
                self.gave_up(reason, metrics);
                None
            }
            Decision::Retry { delay, cause } => Some((delay, cause)),
        }
    }

    /// R9, R10: may a retry the policy wants be sent? Adaptive throttling (if on) draws
    /// first, then the partition's budget is asked for one retry. A refusal is counted as its
    /// own give-up reason and the retryable outcome goes back to the caller at once. The 401
    /// refresh retry (R7) is a credential repair, not load: neither applies to it.
    fn admit_retry(
        &self,
        partition: &str,
        cause: RetryCause,
        span: &tracing::Span,
        metrics: &Host,
    ) -> bool {
        if cause == RetryCause::Unauthorized {
            return true;
        }
        if let Some(throttles) = &self.shared.throttles
            && let Err(probability) = throttles.admit(partition)
        {
            self.gave_up(GiveUpReason::Throttled, metrics);
            metrics.throttle_probability(probability);
            tracing::debug!(parent: span, partition, probability, "retry rejected locally by adaptive throttling");
            return false;
        }
        let withdrawn = self.shared.budgets.withdraw(partition);
        metrics.budget_balance(self.shared.budgets.balance(partition));
        if !withdrawn {
            self.gave_up(GiveUpReason::RetryBudgetExhausted, metrics);
            tracing::debug!(
                parent: span,
                partition,
                balance = self.shared.budgets.balance(partition),
                "retry budget exhausted; returning the retryable outcome"
            );
            return false;
        }
        true
    }

    /// Count a give-up in the stats and the metrics.
    fn gave_up(&self, reason: GiveUpReason, metrics: &Host) {
        self.shared.counters.gave_up(reason);
        metrics.gave_up(reason);
    }

    async fn release(&self, response: Response) {
        let limits = &self.shared.config.limits;
        match release(response, limits.drain_limit, limits.drain_timeout).await {
            Released::Drained => bump(&self.shared.counters.drained),
            Released::Discarded => bump(&self.shared.counters.discarded),
        }
    }
}

/// `host:port` of `url` (the default port of its scheme when none is given): the default
/// partition (R9, R10) and the key of the per-host slot limit (R11).
fn authority(url: &Url) -> String {
    let host = url.host_str().unwrap_or("");
    match url.port_or_known_default() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_string(),
    }
}
