//! The children of the ChatClusters in a manifest, built offline (`roomshard-operator render`).
//!
//! What the reconciler would write for a new cluster, from the same builders in
//! [`crate::k8s::children`], without an API server: to review it before applying, and to scan
//! it with a policy checker (the deploy checks run checkov on it for every file in
//! `examples/`). A new cluster's first pass writes exactly these objects: the StatefulSet at
//! `spec.replicas`, and the assignment ConfigMap with the empty table the nodes start from
//! (`operator/tests/render.rs` checks it for every example against the real API server).
//!
//! What the API server would add is filled in by hand and marked: the cluster's uid in the
//! owner references is [`PLACEHOLDER_UID`], and a cluster without a namespace gets the one
//! given (kubectl's `-n`). The peer-link Secret holds a fresh random key, as the operator's
//! does; the operator creates that Secret once and never rewrites it.

use k8s_openapi::api::core::v1::ConfigMap;
use serde::Deserialize;
use serde_json::Value;
use shard::AssignmentTable;

use super::checks;
use super::children::{Owner, access, config, network, statefulset, to_json};
use super::crd::ChatCluster;
use crate::Error;

/// The uid written into the owner references, which the API server assigns on create.
pub const PLACEHOLDER_UID: &str = "00000000-0000-0000-0000-000000000000";

/// Every child the reconciler's first pass writes for `cluster`, in the order it applies them:
/// the nodes' ServiceAccount, Role and RoleBinding, the peer-key Secret, the peer and client
/// Services, the PodDisruptionBudget, the Ingress when enabled, the assignment ConfigMap and
/// the StatefulSet.
///
/// # Errors
///
/// [`Error::Invalid`] when the cluster has no namespace or uid, or when its spec is one the
/// operator refuses (the message is the one its `Degraded` condition would carry).
pub fn children(cluster: &ChatCluster) -> Result<Vec<Value>, Error> {
    let owner = Owner::of(cluster)?;
    let spec = &cluster.spec;
    let checked = checks::check(spec)
        .map_err(|message| Error::Invalid(format!("{}: {message}", owner.name)))?;
    let table = AssignmentTable::empty(checked.shards);
    let mut objects = vec![
        to_json(&access::node_service_account(&owner)?)?,
        to_json(&access::node_role(&owner)?)?,
        to_json(&access::node_role_binding(&owner)?)?,
        to_json(&config::peer_secret(&owner)?)?,
        to_json(&network::peers_service(&owner)?)?,
        to_json(&network::client_service(&owner, spec)?)?,
        to_json(&config::disruption_budget(&owner)?)?,
    ];
    if let Some(ingress) = network::ingress(&owner, spec)? {
        objects.push(to_json(&ingress)?);
    }
    let configmap: ConfigMap = config::assignment_configmap(&owner, &table)?;
    objects.push(to_json(&configmap)?);
    objects.push(to_json(&statefulset::statefulset(
        &owner,
        spec,
        &checked,
        checked.replicas,
    )?)?);
    Ok(objects)
}

/// The ChatClusters of the YAML documents in `text` (other kinds are skipped), each given
/// `namespace` when it names none, and [`PLACEHOLDER_UID`].
///
/// # Errors
///
/// [`Error::Invalid`] when the text is not YAML, when a ChatCluster does not fit the CRD's
/// types, or when there is no ChatCluster at all.
pub fn clusters(text: &str, namespace: &str) -> Result<Vec<ChatCluster>, Error> {
    let mut found = Vec::new();
    for (index, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value = Value::deserialize(document)
            .map_err(|e| Error::Invalid(format!("document {}: {e}", index + 1)))?;
        if value.is_null() || value["kind"] != "ChatCluster" {
            continue;
        }
        let mut cluster: ChatCluster = serde_json::from_value(value)
            .map_err(|e| Error::Invalid(format!("document {}: {e}", index + 1)))?;
        if cluster.metadata.namespace.is_none() {
            cluster.metadata.namespace = Some(namespace.to_owned());
        }
        cluster.metadata.uid = Some(PLACEHOLDER_UID.to_owned());
        found.push(cluster);
    }
    if found.is_empty() {
        return Err(Error::Invalid("no ChatCluster in the input".into()));
    }
    Ok(found)
}

/// The children of every ChatCluster in `text`, as one YAML stream (`---` between objects).
///
/// # Errors
///
/// As [`clusters`] and [`children`].
pub fn render_yaml(text: &str, namespace: &str) -> Result<String, Error> {
    let mut out = String::new();
    for cluster in clusters(text, namespace)? {
        for object in children(&cluster)? {
            let yaml = serde_yaml::to_string(&object)
                .map_err(|e| Error::Invalid(format!("cannot write YAML: {e}")))?;
            out.push_str("---\n");
            out.push_str(&yaml);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO: &str = "\
apiVersion: v1
kind: Secret
metadata: {name: other}
stringData: {k: v}
---
apiVersion: roomshard.dev/v1alpha1
kind: ChatCluster
metadata: {name: a}
spec: {replicas: 2, ingress: {enabled: true, host: chat.example.com}}
---
apiVersion: roomshard.dev/v1alpha1
kind: ChatCluster
metadata: {name: b, namespace: team}
spec: {replicas: 5, shards: 64}
";

    fn kinds(objects: &[Value]) -> Vec<String> {
        objects
            .iter()
            .map(|o| {
                let name = o["metadata"]["name"].as_str().unwrap_or("?");
                format!("{}/{name}", o["kind"].as_str().unwrap_or("?"))
            })
            .collect()
    }

    #[test]
    fn only_chat_clusters_are_read_and_a_missing_namespace_is_filled_in() {
        let found = clusters(TWO, "chat").expect("clusters");
        let names: Vec<(Option<&str>, Option<&str>)> = found
            .iter()
            .map(|c| (c.metadata.name.as_deref(), c.metadata.namespace.as_deref()))
            .collect();
        assert_eq!(
            names,
            [(Some("a"), Some("chat")), (Some("b"), Some("team"))]
        );
        assert!(
            found
                .iter()
                .all(|c| c.metadata.uid.as_deref() == Some(PLACEHOLDER_UID))
        );
    }

    #[test]
    fn a_cluster_gets_every_child_the_first_pass_applies_and_the_ingress_only_when_enabled() {
        let found = clusters(TWO, "chat").expect("clusters");
        let a = children(&found[0]).expect("children of a");
        assert_eq!(
            kinds(&a),
            [
                "ServiceAccount/a-node",
                "Role/a-node",
                "RoleBinding/a-node",
                "Secret/a-peer-key",
                "Service/a-peers",
                "Service/a",
                "PodDisruptionBudget/a",
                "Ingress/a",
                "ConfigMap/a-assignments",
                "StatefulSet/a",
            ]
        );
        let b = children(&found[1]).expect("children of b");
        assert!(!kinds(&b).iter().any(|k| k.starts_with("Ingress/")));
        let sts = b.last().expect("statefulset");
        assert_eq!(sts["spec"]["replicas"], 5);
        assert_eq!(sts["metadata"]["namespace"], "team");
        assert_eq!(
            sts["metadata"]["ownerReferences"][0]["uid"],
            PLACEHOLDER_UID
        );
        let table = b[b.len() - 2]["data"]["table.json"]
            .as_str()
            .expect("table");
        assert_eq!(
            AssignmentTable::from_json(table).expect("table json"),
            AssignmentTable::empty(64)
        );
    }

    #[test]
    fn a_spec_the_operator_refuses_is_an_error_naming_the_cluster() {
        let text = "apiVersion: roomshard.dev/v1alpha1\nkind: ChatCluster\nmetadata: {name: x}\n\
                    spec: {replicas: 1, auth: {mode: Token}}\n";
        let found = clusters(text, "default").expect("clusters");
        let error = children(&found[0]).expect_err("refused");
        assert!(error.to_string().contains("x: "), "{error}");
    }

    #[test]
    fn input_without_a_chat_cluster_is_an_error() {
        assert!(clusters("apiVersion: v1\nkind: Secret\n", "default").is_err());
        assert!(clusters("not: [valid", "default").is_err());
    }

    #[test]
    fn the_yaml_stream_holds_one_document_per_child() {
        let yaml = render_yaml(TWO, "chat").expect("render");
        let documents: Vec<Value> = serde_yaml::Deserializer::from_str(&yaml)
            .map(|d| Value::deserialize(d).expect("document"))
            .collect();
        assert_eq!(documents.len(), 10 + 9);
        assert!(documents.iter().all(|d| d["apiVersion"].is_string()));
    }
}
