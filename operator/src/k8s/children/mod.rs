//! The objects a `ChatCluster` owns, as pure builder functions: cluster in, object out.
//!
//! Nothing here talks to the API server; the reconciler applies what these functions return
//! with server-side apply. Every object carries the same labels ([`Owner::labels`]) and a
//! controller owner reference to its `ChatCluster`, so deleting the cluster garbage-collects
//! all of them.
//!
//! The objects are written as `serde_json::json!` documents and then read into the typed
//! `k8s-openapi` structs: that reads like the manifests a person would write, and the typed
//! round trip still catches a misspelt field (`deny_unknown_fields` is not set on k8s-openapi
//! types, so the unit tests assert on the typed fields that matter).
//!
//! - [`statefulset`](mod@statefulset): the node pods.
//! - [`network`]: the headless peer Service, the client Service and the optional Ingress.
//! - [`config`]: the assignment ConfigMap, the peer-key Secret and the PodDisruptionBudget.
//! - [`access`]: the nodes' ServiceAccount, and the Role that lets them watch the ConfigMap.

pub mod access;
pub mod config;
pub mod network;
pub mod statefulset;

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;

use super::crd::ChatCluster;
use crate::Error;

/// The port the node serves clients (`/ws`) and probes (`/readyz`, `/healthz`) on.
pub const CLIENT_PORT: u16 = 8080;
/// The port of peer links (`/peer`) and of `/status`, which the controller reads.
pub const PEER_PORT: u16 = 7070;
/// The ConfigMap key that holds the assignment table (`AssignmentTable::to_json`).
pub const TABLE_KEY: &str = "table.json";
/// The Secret key that holds the peer-link secret.
pub const PEER_SECRET_KEY: &str = "cluster-secret";
/// The field manager of every write the operator makes.
pub const FIELD_MANAGER: &str = "roomshard-operator";

/// The label keys every child carries; the first three also select the pods.
pub mod labels {
    /// `app.kubernetes.io/name`, always `roomshard`.
    pub const NAME: &str = "app.kubernetes.io/name";
    /// `app.kubernetes.io/instance`, the cluster's name.
    pub const INSTANCE: &str = "app.kubernetes.io/instance";
    /// `roomshard.dev/cluster`, the cluster's name; maps a pod back to its cluster.
    pub const CLUSTER: &str = "roomshard.dev/cluster";
    /// `app.kubernetes.io/managed-by`, always `roomshard-operator`; not in selectors.
    pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
}

/// The names of a cluster's children, all derived from the cluster's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    /// The StatefulSet; its pods are `{statefulset}-{ordinal}`, the node names.
    pub statefulset: String,
    /// The headless Service that gives pods stable DNS names (peer port).
    pub peers_service: String,
    /// The Service clients connect to.
    pub client_service: String,
    /// The optional Ingress.
    pub ingress: String,
    /// The ConfigMap with the assignment table.
    pub configmap: String,
    /// The Secret with the peer-link key.
    pub secret: String,
    /// The PodDisruptionBudget.
    pub pdb: String,
    /// The ServiceAccount, Role and RoleBinding of the node pods.
    pub node_access: String,
}

impl Names {
    /// The children's names for the cluster `cluster`.
    pub fn of(cluster: &str) -> Names {
        Names {
            statefulset: cluster.to_owned(),
            peers_service: format!("{cluster}-peers"),
            client_service: cluster.to_owned(),
            ingress: cluster.to_owned(),
            configmap: format!("{cluster}-assignments"),
            secret: format!("{cluster}-peer-key"),
            pdb: cluster.to_owned(),
            node_access: format!("{cluster}-node"),
        }
    }
}

/// What every child needs to know about its cluster: where it lives, what it is called, and the
/// owner reference that ties it to the cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct Owner {
    /// The cluster's name.
    pub name: String,
    /// The cluster's namespace; every child lives there too.
    pub namespace: String,
    /// The children's names.
    pub names: Names,
    /// A controller owner reference to the cluster (`blockOwnerDeletion` set).
    pub reference: OwnerReference,
}

impl Owner {
    /// The owner facts of a stored cluster.
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`] when the object lacks a name, namespace or uid (it was not read from
    /// the API server).
    pub fn of(cluster: &ChatCluster) -> Result<Owner, Error> {
        let name = cluster.name_any();
        let namespace = cluster
            .namespace()
            .ok_or_else(|| Error::Invalid(format!("{name} has no namespace")))?;
        let reference = cluster
            .controller_owner_ref(&())
            .ok_or_else(|| Error::Invalid(format!("{name} has no uid")))?;
        Ok(Owner {
            names: Names::of(&name),
            name,
            namespace,
            reference,
        })
    }

    /// The labels that select the cluster's pods.
    pub fn selector(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            (labels::NAME.to_owned(), "roomshard".to_owned()),
            (labels::INSTANCE.to_owned(), self.name.clone()),
            (labels::CLUSTER.to_owned(), self.name.clone()),
        ])
    }

    /// The selector as a label-selector string, for listing the pods.
    pub fn selector_string(&self) -> String {
        let parts: Vec<String> = self
            .selector()
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        parts.join(",")
    }

    /// The labels every child carries: the selector plus `managed-by`.
    pub fn labels(&self) -> BTreeMap<String, String> {
        let mut labels = self.selector();
        labels.insert(labels::MANAGED_BY.to_owned(), FIELD_MANAGER.to_owned());
        labels
    }

    /// Metadata for the child `name`: namespace, labels and the owner reference.
    pub fn meta(&self, name: &str) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.to_owned()),
            namespace: Some(self.namespace.clone()),
            labels: Some(self.labels()),
            owner_references: Some(vec![self.reference.clone()]),
            ..ObjectMeta::default()
        }
    }
}

/// Reads a `json!` document into the typed object `K`.
///
/// # Errors
///
/// [`Error::Invalid`] when the document does not fit the type: a bug in a builder, reported
/// instead of panicking because the document embeds values from the spec.
pub(crate) fn typed<K: DeserializeOwned>(doc: serde_json::Value) -> Result<K, Error> {
    serde_json::from_value(doc)
        .map_err(|e| Error::Invalid(format!("cannot build {}: {e}", std::any::type_name::<K>())))
}

/// Serializes `value` for embedding in a `json!` document.
pub(crate) fn to_json<T: serde::Serialize>(value: &T) -> Result<serde_json::Value, Error> {
    serde_json::to_value(value).map_err(|e| Error::Invalid(format!("cannot serialize: {e}")))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::k8s::crd::ChatClusterSpec;

    /// A stored-looking cluster `chat` in namespace `ns` with `spec` (JSON) and uid `u-1`.
    pub(crate) fn cluster(spec: serde_json::Value) -> ChatCluster {
        let spec: ChatClusterSpec = serde_json::from_value(spec).expect("test spec");
        let mut cluster = ChatCluster::new("chat", spec);
        cluster.metadata.namespace = Some("ns".into());
        cluster.metadata.uid = Some("u-1".into());
        cluster
    }

    pub(crate) fn owner() -> Owner {
        Owner::of(&cluster(serde_json::json!({"replicas": 3}))).expect("owner")
    }

    /// Asserts the common metadata of a child.
    pub(crate) fn assert_owned(meta: &ObjectMeta, name: &str) {
        assert_eq!(meta.name.as_deref(), Some(name));
        assert_eq!(meta.namespace.as_deref(), Some("ns"));
        let labels = meta.labels.clone().unwrap_or_default();
        assert_eq!(
            labels.get(labels::NAME).map(String::as_str),
            Some("roomshard")
        );
        assert_eq!(
            labels.get(labels::INSTANCE).map(String::as_str),
            Some("chat")
        );
        assert_eq!(
            labels.get(labels::CLUSTER).map(String::as_str),
            Some("chat")
        );
        let owners = meta.owner_references.clone().unwrap_or_default();
        assert_eq!(owners.len(), 1);
        assert_eq!(owners[0].kind, "ChatCluster");
        assert_eq!(owners[0].api_version, "roomshard.dev/v1alpha1");
        assert_eq!(owners[0].name, "chat");
        assert_eq!(owners[0].uid, "u-1");
        assert_eq!(owners[0].controller, Some(true));
    }

    #[test]
    fn a_cluster_without_uid_has_no_owner() {
        let mut cluster = cluster(serde_json::json!({"replicas": 1}));
        cluster.metadata.uid = None;
        assert!(matches!(Owner::of(&cluster), Err(Error::Invalid(_))));
    }

    #[test]
    fn children_names_derive_from_the_cluster_name() {
        let names = Names::of("chat");
        assert_eq!(names.statefulset, "chat");
        assert_eq!(names.configmap, "chat-assignments");
        assert_eq!(names.secret, "chat-peer-key");
        assert_eq!(names.peers_service, "chat-peers");
        assert_eq!(
            owner().selector_string(),
            "app.kubernetes.io/instance=chat,app.kubernetes.io/name=roomshard,roomshard.dev/cluster=chat"
        );
    }
}
