//! Every Kubernetes API call the operator and the node make, in one machine-readable list.
//!
//! `roomshard-operator rbac` prints it as JSON; the Helm chart's ClusterRole (operator) and
//! the per-cluster Role the operator creates for nodes (see [`super::children::access`]) are
//! checked against it. When code starts making a new call, add it here, or the check fails in
//! a real cluster with a 403 instead of in CI.

use serde::Serialize;

/// Who makes a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Component {
    /// `roomshard-operator run`.
    Operator,
    /// `roomshard-node --table-configmap`.
    Node,
}

/// One resource and the verbs used on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiCall {
    /// Who calls.
    pub component: Component,
    /// API group (`""` for core).
    pub group: &'static str,
    /// Resource (plural, with `/subresource` where one is used).
    pub resource: &'static str,
    /// Verbs, as RBAC names them: server-side apply is `patch`, and also needs `create` when
    /// the object does not exist yet (the API server authorizes that apply as a create).
    pub verbs: &'static [&'static str],
    /// Why.
    pub why: &'static str,
}

const fn call(
    component: Component,
    group: &'static str,
    resource: &'static str,
    verbs: &'static [&'static str],
    why: &'static str,
) -> ApiCall {
    ApiCall {
        component,
        group,
        resource,
        verbs,
        why,
    }
}

use Component::{Node, Operator};

/// The calls of the operator (cluster-wide, or in its watched namespace).
pub const OPERATOR: &[ApiCall] = &[
    call(
        Operator,
        "roomshard.dev",
        "chatclusters",
        &["get", "list", "watch"],
        "the clusters it reconciles",
    ),
    call(
        Operator,
        "roomshard.dev",
        "chatclusters/status",
        &["patch"],
        "status by server-side apply",
    ),
    call(
        Operator,
        "apps",
        "statefulsets",
        &["get", "list", "watch", "create", "patch"],
        "the node pods",
    ),
    call(
        Operator,
        "",
        "pods",
        &["get", "list", "watch"],
        "membership from readiness, pod IPs",
    ),
    call(
        Operator,
        "",
        "configmaps",
        &["get", "list", "watch", "create", "patch"],
        "the assignment table",
    ),
    call(
        Operator,
        "",
        "services",
        &["create", "patch"],
        "peer and client Services",
    ),
    call(
        Operator,
        "",
        "secrets",
        &["get", "create"],
        "the peer-link key, created once",
    ),
    call(
        Operator,
        "",
        "serviceaccounts",
        &["create", "patch"],
        "the nodes' identity",
    ),
    call(
        Operator,
        "rbac.authorization.k8s.io",
        "roles",
        &["create", "patch"],
        "nodes may read their ConfigMap",
    ),
    call(
        Operator,
        "rbac.authorization.k8s.io",
        "rolebindings",
        &["create", "patch"],
        "binds that Role",
    ),
    call(
        Operator,
        "networking.k8s.io",
        "ingresses",
        &["get", "create", "patch", "delete"],
        "the optional Ingress",
    ),
    call(
        Operator,
        "policy",
        "poddisruptionbudgets",
        &["create", "patch"],
        "one pod down at a time",
    ),
    call(
        Operator,
        "events.k8s.io",
        "events",
        &["create", "patch"],
        "events on transitions",
    ),
    call(
        Operator,
        "coordination.k8s.io",
        "leases",
        &["get", "create", "update"],
        "leader election",
    ),
];

/// The calls of a node (in its own namespace, on its cluster's ConfigMap only).
pub const NODE: &[ApiCall] = &[call(
    Node,
    "",
    "configmaps",
    &["get", "list", "watch"],
    "follows the assignment table",
)];

/// Both lists as one JSON document: `{"operator": [...], "node": [...]}`.
pub fn to_json() -> serde_json::Value {
    serde_json::json!({"operator": OPERATOR, "node": NODE})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::k8s::children::access::node_role;
    use crate::k8s::children::tests::owner;

    #[test]
    fn the_role_the_operator_gives_nodes_grants_exactly_the_node_calls() {
        let role = node_role(&owner()).expect("role");
        let rules = role.rules.expect("rules");
        assert_eq!(rules.len(), NODE.len());
        for (rule, call) in rules.iter().zip(NODE) {
            assert_eq!(rule.api_groups, Some(vec![call.group.to_owned()]));
            assert_eq!(rule.resources, Some(vec![call.resource.to_owned()]));
            assert_eq!(rule.verbs, call.verbs);
        }
    }

    #[test]
    fn the_operator_may_grant_what_the_node_role_grants() {
        // RBAC refuses to create a Role granting more than its creator holds.
        for node in NODE {
            let held = OPERATOR
                .iter()
                .find(|c| c.group == node.group && c.resource == node.resource)
                .expect("operator holds the resource");
            for verb in node.verbs {
                assert!(
                    held.verbs.contains(verb),
                    "operator lacks {verb} {}",
                    node.resource
                );
            }
        }
    }

    #[test]
    fn the_json_lists_every_call_with_group_resource_and_verbs() {
        let json = to_json();
        let operator = json["operator"].as_array().expect("operator calls");
        assert_eq!(operator.len(), OPERATOR.len());
        assert_eq!(operator[0]["group"], "roomshard.dev");
        assert_eq!(
            operator[0]["verbs"],
            serde_json::json!(["get", "list", "watch"])
        );
        assert_eq!(json["node"][0]["resource"], "configmaps");
    }
}
