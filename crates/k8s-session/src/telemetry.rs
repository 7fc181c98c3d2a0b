//! Metrics through the `metrics` facade (feature `metrics`): handles registered once per session
//! build, labelled with the operator-configured cluster name.
//!
//! Without the feature every type here is empty and every call compiles to nothing. With it,
//! nothing is recorded unless the application installed a recorder before the session was built.

/// Sessions handed out and not yet returned, per cluster.
#[cfg(feature = "metrics")]
const SESSIONS_IN_USE: &str = "k8s.session.sessions.in_use";
/// Requests holding an in-flight slot or an HTTP/2 stream, per cluster.
#[cfg(feature = "metrics")]
const ACTIVE_REQUESTS: &str = "k8s.session.active_requests";
/// TLS connections opened by sessions, per cluster and protocol.
#[cfg(feature = "metrics")]
const CONNECTIONS: &str = "k8s.session.connections";
/// Sessions whose API server answered HTTP/1.1 although HTTP/2 was offered, per cluster.
#[cfg(feature = "metrics")]
const HTTP1_FALLBACKS: &str = "k8s.session.http1_fallbacks";

/// The label every series here carries.
#[cfg(feature = "metrics")]
const CLUSTER: &str = "k8s.cluster.name";

#[cfg(feature = "metrics")]
fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge};
    describe_gauge!(
        SESSIONS_IN_USE,
        Unit::Count,
        "Kubernetes sessions handed out by the pool and not yet returned"
    );
    describe_gauge!(
        ACTIVE_REQUESTS,
        Unit::Count,
        "Kubernetes API requests in flight (holding a slot or an HTTP/2 stream) until their response body ends"
    );
    describe_counter!(
        CONNECTIONS,
        Unit::Count,
        "TLS connections opened to Kubernetes API servers, by negotiated protocol"
    );
    describe_counter!(
        HTTP1_FALLBACKS,
        Unit::Count,
        "times an API server answered HTTP/1.1 when HTTP/2 was offered"
    );
}

/// The handles of one cluster's series, registered when a session is built.
#[derive(Clone)]
pub(crate) struct ClusterMetrics {
    #[cfg(feature = "metrics")]
    sessions_in_use: metrics::Gauge,
    #[cfg(feature = "metrics")]
    active_requests: metrics::Gauge,
    #[cfg(feature = "metrics")]
    h2_connections: metrics::Counter,
    #[cfg(feature = "metrics")]
    http1_connections: metrics::Counter,
    #[cfg(feature = "metrics")]
    fallbacks: metrics::Counter,
}

impl ClusterMetrics {
    /// Handles for `cluster` (an operator-configured name: a bounded label).
    pub(crate) fn new(cluster: &str) -> Self {
        #[cfg(feature = "metrics")]
        {
            describe();
            let cluster = cluster.to_string();
            let connections = |version: &'static str| metrics::counter!(CONNECTIONS, CLUSTER => cluster.clone(), "network.protocol.version" => version);
            Self {
                sessions_in_use: metrics::gauge!(SESSIONS_IN_USE, CLUSTER => cluster.clone()),
                active_requests: metrics::gauge!(ACTIVE_REQUESTS, CLUSTER => cluster.clone()),
                h2_connections: connections("2"),
                http1_connections: connections("1.1"),
                fallbacks: metrics::counter!(HTTP1_FALLBACKS, CLUSTER => cluster.clone()),
            }
        }
        #[cfg(not(feature = "metrics"))]
        {
            let _ = cluster;
            Self {}
        }
    }

    /// A session handed out: counted in use until the guard drops.
    pub(crate) fn session_in_use(&self) -> InUse {
        InUse::enter(
            #[cfg(feature = "metrics")]
            &self.sessions_in_use,
        )
    }

    /// A request in flight until the guard drops.
    pub(crate) fn request_active(&self) -> InUse {
        InUse::enter(
            #[cfg(feature = "metrics")]
            &self.active_requests,
        )
    }

    /// A TLS connection opened, HTTP/2 or not.
    #[inline]
    pub(crate) fn connection(&self, h2: bool) {
        #[cfg(feature = "metrics")]
        if h2 {
            self.h2_connections.increment(1);
        } else {
            self.http1_connections.increment(1);
        }
        #[cfg(not(feature = "metrics"))]
        let _ = h2;
    }

    /// An API server answered HTTP/1.1 to an HTTP/2 offer.
    #[inline]
    pub(crate) fn fallback(&self) {
        #[cfg(feature = "metrics")]
        self.fallbacks.increment(1);
    }
}

/// One unit of a gauge, given back when dropped.
pub(crate) struct InUse {
    #[cfg(feature = "metrics")]
    gauge: metrics::Gauge,
}

impl InUse {
    fn enter(#[cfg(feature = "metrics")] gauge: &metrics::Gauge) -> Self {
        #[cfg(feature = "metrics")]
        {
            gauge.increment(1.0);
            Self {
                gauge: gauge.clone(),
            }
        }
        #[cfg(not(feature = "metrics"))]
        Self {}
    }
}

impl Drop for InUse {
    fn drop(&mut self) {
        #[cfg(feature = "metrics")]
        self.gauge.decrement(1.0);
    }
}

impl std::fmt::Debug for InUse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InUse")
    }
}
