//! The Kubernetes side of the operator, from the resource down to the running controller.
//!
//! - [`crd`]: the `ChatCluster` types (`roomshard.dev/v1alpha1`) and the CRD YAML they generate.
//! - [`checks`]: what the schema cannot refuse, checked before any child changes.
//! - [`children`]: the objects a cluster owns, as pure builder functions.
//! - [`observe`]: pods, readiness and the nodes' `/status` as [`crate::decide()`] sees them.
//! - [`rollout`]: the operator-driven rolling update: which pod to delete next.
//! - [`status`]: the status summary, condition types and reasons.
//! - [`reconcile`](mod@reconcile): one pass over a cluster, its [`reconcile::Context`] and
//!   error policy; its writes to the children and its status and events are in two files
//!   under it (`reconcile/apply.rs`, `reconcile/report.rs`).
//! - [`autoscaler`]: `spec.autoscaling`: the load-driven change of `spec.replicas`, through the
//!   scale subresource.
//! - [`metrics`]: reconcile counters and per-cluster gauges for `/metrics`.
//! - [`map`](mod@map): the rolling update's progress for the shard map ([`crate::map`]).
//! - [`controller`]: the kube `Controller` wiring and the `/metrics` server.
//! - [`lease`]: leader election with a Lease; only the leader reconciles.
//! - [`rbac`]: every API call the operator and the node make, for the Helm chart's RBAC.
//! - [`render`]: the children of the ChatClusters in a manifest, built offline.

pub mod autoscaler;
pub mod checks;
pub mod children;
pub mod controller;
pub mod crd;
pub mod lease;
pub mod map;
pub mod metrics;
pub mod observe;
pub mod rbac;
pub mod reconcile;
pub mod render;
pub mod rollout;
pub mod status;
