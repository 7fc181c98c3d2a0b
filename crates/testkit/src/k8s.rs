//! An in-process Kubernetes API test server over HTTPS (mTLS or bearer), with fixtures, faults,
//! a request log and an ARM endpoint for AKS credentials.
//!
//! [`K8sServer`] speaks the subset of the Kubernetes API the workspace's clients read, with real
//! Kubernetes JSON (k8s-openapi types, `List` envelopes, metav1 `Status` errors):
//!
//! - discovery: `/version`, `/api`, `/apis`, `/api/v1`, `/apis/batch[/v1]`, `/apis/apps[/v1]`;
//! - list and get: nodes, namespaces, pods, configmaps, events (core/v1), jobs (batch/v1),
//!   daemonsets (apps/v1), cluster-wide or per namespace, with `labelSelector` (`=`, `!=`, `in`,
//!   `notin`, exists, `!key`) and `fieldSelector` (`metadata.name`, `metadata.namespace`, pod
//!   `spec.nodeName`/`status.phase`, event `type`/`reason`/`involvedObject.*`; others get 400);
//! - pod logs: `…/pods/{name}/log` with `tailLines`, `limitBytes`, `container`;
//! - auth like kube-apiserver: a client certificate signed by the server's CA, or an accepted
//!   bearer token; otherwise 401 `Status`. A certificate from another CA fails the handshake;
//! - AKS: `POST /subscriptions/…/managedClusters/{name}/listClusterUserCredential` (and
//!   `…AdminCredential`), ARM bearer JWT and `api-version` required, answering
//!   `{"kubeconfigs":[{"name":…,"value":<base64 kubeconfig>}]}`: the user kubeconfig carries a
//!   bearer token, the admin one a client certificate;
//! - faults per route ([`Fault`]: latency, status with `Status` body, garbage body, connection
//!   reset, for N requests or forever), a request log ([`RequestRecord`]: method, path, query,
//!   auth, status, connection; the newest [`REQUEST_LOG_CAPACITY`] kept, counts exact), counts
//!   of TCP/TLS connections and failed handshakes, and gauges of connections open and requests
//!   in flight (now and at peak).
//!
//! **What it does not do**: no watch (`watch=true` gets 400), no pagination (`limit` is ignored,
//! no `continue` token), no `resourceVersion` semantics (lists report `"1"`), no writes (only the
//! ARM POST; other methods get 405), no RBAC (any authenticated user reads everything), fixtures
//! only. Latency is real time (the server sits on real sockets), so tests over it use real time
//! and assert lower bounds; exact request sequences belong in `tower_test::mock` unit tests.
//!
//! For suites that must also run on kind, use [`ContractCluster`].
//!
//! # Example
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use k8s_openapi::api::core::v1::Pod;
//! use kube::api::{Api, ListParams, LogParams};
//! use testkit::k8s::{Fault, K8sServer, SAMPLE_NAMESPACE, WARMUP_SELECTOR};
//!
//! let server = K8sServer::start().await?;
//! let client = server.client_cert().await?; // mTLS; or server.client_token()
//! let pods: Api<Pod> = Api::namespaced(client, SAMPLE_NAMESPACE);
//! let warmup = pods.list(&ListParams::default().labels(WARMUP_SELECTOR)).await?;
//! let log = pods
//!     .logs("warmup-0-pod", &LogParams { tail_lines: Some(1), ..LogParams::default() })
//!     .await?;
//! assert_eq!(log, "warmup-0: done\n");
//! server.inject("/api/v1/nodes", Fault::status(503).times(1));
//! assert_eq!(server.count("/api/v1/namespaces/testkit/pods"), 1);
//! assert_eq!(server.tls_connections(), 1);
//! # let _ = warmup;
//! # Ok(()) }
//! ```

mod arm;
mod contract;
mod discovery;
mod error;
mod faults;
mod fixtures;
mod handle;
mod kubeconfig;
mod log;
mod resources;
mod respond;
mod select;
mod server;

pub use arm::{arm_test_token, unsigned_jwt};
pub use contract::{ContractCluster, KUBECONFIG_ENV, TARGET_ENV};
pub use error::K8sError;
pub use faults::{AuthMethod, Fault, RequestRecord, Route};
pub use fixtures::{Fixtures, SAMPLE_NAMESPACE, WARMUP_SELECTOR};
pub use handle::{ADMIN_USER, K8sServer};
pub use kubeconfig::{KubeAuth, build_kubeconfig, kube_client, kubeconfig_text};
pub use log::REQUEST_LOG_CAPACITY;
