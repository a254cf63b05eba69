//! # roomshard operator
//!
//! The operator decides which node owns which shard, publishes that as the assignment table,
//! and scales the cluster up and down without losing a room: a node leaves only after its
//! shards have been handed off. It runs two ways with the same decision code: as a Kubernetes
//! controller (`roomshard-operator run`, see [`k8s`]), and as the local driver
//! (`roomshard-operator local --nodes 3` starts `roomshard-node` processes on loopback, with
//! no Kubernetes).
//!
//! A tour:
//! - [`decide`](mod@decide): the pure reconcile pass: observed pods, reports and the published table in,
//!   the next table, the scale-down step and the pods to start or stop out. Built on the `shard`
//!   crate's planner and drain logic; no processes, no HTTP, no Kubernetes.
//! - [`autoscale`]: the pure autoscaling decision: per-pod loads, a policy and the recent
//!   recommendations in, the replica count to have and why out. Both drivers act on it through
//!   their ordinary scale paths.
//! - [`local`]: the local cluster driver: node processes ([`local::LocalCluster`]), their
//!   readiness probes and `/status` reports, the admin and table HTTP server, and the reconcile
//!   loop that acts on [`decide()`].
//! - [`k8s`]: the Kubernetes controller: the `ChatCluster` CRD, its children, the reconciler
//!   that acts on [`decide()`] with a ConfigMap and a StatefulSet, leader election, metrics
//!   and the list of API calls for RBAC.
//! - [`placement`]: the per-shard loads the nodes report, merged for load-aware planning.
//! - [`replication`]: how many shards have a live follower (replication 2), the `Replicated`
//!   condition, and which nodes a drain still waits on while they copy shards.
//! - [`http`]: the small HTTP/1.1 client the driver, the CLI and tests use on loopback.
//! - [`map`]: the live shard map (`GET /map`, `GET /map.json`) both drivers serve: pods,
//!   shards by owner, moves, drain and rollout progress, load.
//!
//! Every fallible function returns [`Error`].

pub mod autoscale;
pub mod decide;
pub mod http;
pub mod k8s;
pub mod local;
pub mod map;
pub mod placement;
pub mod replication;

pub use decide::{Decision, Inputs, PodView, Report, Stuck, decide};
pub use local::{ClusterView, LocalCluster, LocalOptions, NodeView};

/// Everything that can go wrong in the operator.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An option is out of range or inconsistent.
    #[error("invalid option: {0}")]
    Config(String),
    /// The `roomshard-node` binary was not found.
    #[error("cannot find the roomshard-node binary: {0}")]
    NodeBinary(String),
    /// A file, socket or process operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// An HTTP request failed or got an unexpected answer.
    #[error("http: {0}")]
    Http(String),
    /// A wait ran out of time; says what was awaited and what was seen last.
    #[error("timed out: {0}")]
    Timeout(String),
    /// A node name or table was invalid.
    #[error(transparent)]
    Shard(#[from] shard::ShardError),
    /// A Kubernetes API call failed.
    #[error("kubernetes api: {0}")]
    Kube(#[from] kube::Error),
    /// A `ChatCluster` lacks something the controller needs (metadata set by the API server,
    /// or a spec the schema cannot refuse); the message says what.
    #[error("invalid ChatCluster: {0}")]
    Invalid(String),
}

impl Error {
    /// An [`Error::Io`] with what was being done.
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Error {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}
