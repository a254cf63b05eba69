//! The cluster's configuration objects: the assignment ConfigMap, the peer-key Secret, and the
//! PodDisruptionBudget.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use serde_json::json;
use shard::AssignmentTable;

use super::{Owner, PEER_SECRET_KEY, TABLE_KEY, to_json, typed};
use crate::Error;

/// Bytes of randomness in a new peer-link secret.
const PEER_SECRET_BYTES: usize = 32;

/// The ConfigMap that publishes `table` to the nodes, under [`TABLE_KEY`].
///
/// # Errors
///
/// [`Error::Invalid`] on a builder bug (the objects are built from JSON documents; see the module doc).
pub fn assignment_configmap(owner: &Owner, table: &AssignmentTable) -> Result<ConfigMap, Error> {
    typed(json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": to_json(&owner.meta(&owner.names.configmap))?,
        "data": {TABLE_KEY: table.to_json()},
    }))
}

/// The Secret with a fresh random peer-link key (hex). The reconciler creates it once and never
/// applies it again: a new key on every pass would break every peer link.
///
/// # Errors
///
/// [`Error::Invalid`] on a builder bug (the objects are built from JSON documents; see the module doc).
pub fn peer_secret(owner: &Owner) -> Result<Secret, Error> {
    let key = hex::encode(rand::random::<[u8; PEER_SECRET_BYTES]>());
    // `data`, not `stringData`: the API server folds `stringData` into `data` on write, so a
    // Secret read back would never equal one built with it.
    Ok(Secret {
        metadata: owner.meta(&owner.names.secret),
        type_: Some("Opaque".to_owned()),
        data: Some(BTreeMap::from([(
            PEER_SECRET_KEY.to_owned(),
            ByteString(key.into_bytes()),
        )])),
        ..Secret::default()
    })
}

/// The PodDisruptionBudget: voluntary evictions (node drains, upgrades) take one pod at a time,
/// so at most one pod's rooms restart elsewhere at once.
///
/// # Errors
///
/// [`Error::Invalid`] on a builder bug (the objects are built from JSON documents; see the module doc).
pub fn disruption_budget(owner: &Owner) -> Result<PodDisruptionBudget, Error> {
    typed(json!({
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": to_json(&owner.meta(&owner.names.pdb))?,
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": owner.selector()},
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::k8s::children::tests::{assert_owned, owner};
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

    #[test]
    fn the_configmap_holds_the_table_json_under_table_json() {
        let table = AssignmentTable::empty(16);
        let cm = assignment_configmap(&owner(), &table).expect("configmap");
        assert_owned(&cm.metadata, "chat-assignments");
        let data = cm.data.expect("data");
        let text = data.get("table.json").expect("table.json");
        assert_eq!(
            AssignmentTable::from_json(text).expect("valid table"),
            table
        );
    }

    #[test]
    fn each_peer_secret_is_a_new_random_key() {
        let a = peer_secret(&owner()).expect("secret");
        let b = peer_secret(&owner()).expect("secret");
        assert_owned(&a.metadata, "chat-peer-key");
        let key = |s: &Secret| s.data.clone().expect("data")[PEER_SECRET_KEY].0.clone();
        assert_eq!(key(&a).len(), PEER_SECRET_BYTES * 2);
        assert_ne!(key(&a), key(&b));
    }

    #[test]
    fn the_disruption_budget_allows_one_pod_down_at_a_time() {
        let pdb = disruption_budget(&owner()).expect("pdb");
        assert_owned(&pdb.metadata, "chat");
        let spec = pdb.spec.expect("spec");
        assert_eq!(spec.max_unavailable, Some(IntOrString::Int(1)));
        let selector = spec.selector.and_then(|s| s.match_labels);
        assert_eq!(selector, Some(owner().selector()));
    }
}
