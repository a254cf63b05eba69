//! Test support: a real Kubernetes control plane on this machine, with pods run as local
//! processes. Never shipped.
//!
//! roomshard's Kubernetes behaviour is tested against the real kube-apiserver, StatefulSet
//! controller, garbage collector, scheduler and RBAC authorizer, built from their source modules
//! by `testing/controlplane/build.sh`. There is no container runtime here, so a small process
//! kubelet of our own plays the node agent.
//!
//! - [`network`]: one Linux bridge per cluster and one network namespace per pod, so every pod has
//!   its own address and listens on the ports it would in a real cluster.
//! - [`pki`]: the certificate authority, serving and client certificates, and the service-account
//!   signing key the control plane needs, made fresh for each cluster.
//! - [`controlplane`]: starts etcd, kube-apiserver, kube-controller-manager and kube-scheduler,
//!   writes kubeconfigs, and stops them all.
//! - [`kubelet`]: registers Nodes, keeps their Leases fresh, and runs the pods bound to them as
//!   processes (env and downward API, volumes, service-account tokens, probes, graceful deletion,
//!   restart policy), writing pod status back as the kubelet does.
//! - [`service_proxy`]: what kube-proxy does for a Service, on loopback, from its EndpointSlices.
//! - [`cluster`]: the three together, as tests use them.

pub mod cluster;
pub mod controlplane;
pub mod kubelet;
pub mod network;
pub mod pki;
mod process;
pub mod service_proxy;

pub use cluster::{TestCluster, TestClusterOptions};

/// What can go wrong while starting or running the harness.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or process operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A command the harness runs (`ip`, `mount`, a control-plane binary) failed.
    #[error("{0}")]
    Command(String),
    /// Certificate generation failed.
    #[error("certificates: {0}")]
    Pki(#[from] rcgen::Error),
    /// The API server refused or failed a request.
    #[error("kubernetes: {0}")]
    Kube(#[from] kube::Error),
    /// A kubeconfig could not be read or built.
    #[error("kubeconfig: {0}")]
    Kubeconfig(String),
    /// Something did not happen in time.
    #[error("timed out: {0}")]
    Timeout(String),
}

impl Error {
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let what = what.into();
        move |source| Error::Io { what, source }
    }
}

/// The harness's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
