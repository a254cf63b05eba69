//! What the node pods may do in the API: read their own cluster's assignment ConfigMap and
//! nothing else. A ServiceAccount per cluster, a Role limited to that one ConfigMap by name, and
//! the RoleBinding between them.

use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use serde_json::json;

use super::{Owner, to_json, typed};
use crate::Error;

/// The nodes' ServiceAccount.
///
/// # Errors
///
/// [`Error::Invalid`] on a builder bug (the objects are built from JSON documents; see the module doc).
pub fn node_service_account(owner: &Owner) -> Result<ServiceAccount, Error> {
    typed(json!({
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": to_json(&owner.meta(&owner.names.node_access))?,
    }))
}

/// The Role: get, list and watch the cluster's assignment ConfigMap (see
/// `crate::k8s::rbac`, which lists the same calls).
///
/// # Errors
///
/// [`Error::Invalid`] on a builder bug (the objects are built from JSON documents; see the module doc).
pub fn node_role(owner: &Owner) -> Result<Role, Error> {
    typed(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": to_json(&owner.meta(&owner.names.node_access))?,
        "rules": [{
            "apiGroups": [""],
            "resources": ["configmaps"],
            "resourceNames": [owner.names.configmap],
            "verbs": ["get", "list", "watch"],
        }],
    }))
}

/// The RoleBinding of [`node_role`] to [`node_service_account`].
///
/// # Errors
///
/// [`Error::Invalid`] on a builder bug (the objects are built from JSON documents; see the module doc).
pub fn node_role_binding(owner: &Owner) -> Result<RoleBinding, Error> {
    typed(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": to_json(&owner.meta(&owner.names.node_access))?,
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                    "name": owner.names.node_access},
        "subjects": [{"kind": "ServiceAccount", "name": owner.names.node_access,
                      "namespace": owner.namespace}],
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::k8s::children::tests::{assert_owned, owner};

    #[test]
    fn nodes_may_only_read_their_own_configmap() {
        let role = node_role(&owner()).expect("role");
        assert_owned(&role.metadata, "chat-node");
        let rules = role.rules.expect("rules");
        assert_eq!(rules.len(), 1);
        assert_eq!(rules[0].resources, Some(vec!["configmaps".to_owned()]));
        assert_eq!(
            rules[0].resource_names,
            Some(vec!["chat-assignments".to_owned()])
        );
        assert_eq!(rules[0].verbs, ["get", "list", "watch"]);
    }

    #[test]
    fn the_binding_ties_the_role_to_the_nodes_service_account() {
        let sa = node_service_account(&owner()).expect("service account");
        assert_owned(&sa.metadata, "chat-node");
        let binding = node_role_binding(&owner()).expect("binding");
        assert_owned(&binding.metadata, "chat-node");
        assert_eq!(binding.role_ref.name, "chat-node");
        let subject = &binding.subjects.expect("subjects")[0];
        assert_eq!(subject.name, "chat-node");
        assert_eq!(subject.namespace.as_deref(), Some("ns"));
    }
}
