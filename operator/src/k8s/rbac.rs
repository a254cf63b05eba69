//! Every Kubernetes API call the operator and the node make, in one machine-readable list.
//!
//! `roomshard-operator rbac` prints it as JSON (the shape `tests/deploy/rbac.py` describes);
//! the Helm chart's rules (operator) and the per-cluster Role the operator creates for nodes
//! (see [`super::children::access`]) are checked against it, both ways. When code starts
//! making a new call, add it here, or the check fails in a real cluster with a 403 instead of
//! in CI.
//!
//! Verbs are RBAC's names for what the code does:
//! - a controller's cache (`Controller::new`, `owns`, `watches`, a `watcher`) is `list` +
//!   `watch`; `Api::get_opt` is `get`; `Api::list` is `list`; `Api::replace` is `update`;
//! - server-side apply (`Api::patch` with `Patch::Apply`) is `patch`, and also `create` when
//!   the object does not exist yet: the API server authorizes that apply as a create
//!   (Kubernetes docs, Server-Side Apply, RBAC). A status apply only ever patches an existing
//!   object, so `chatclusters/status` needs `patch` alone;
//! - the event recorder creates an Event, then patches it when the same event repeats.

use serde_json::{Value, json};

/// Where a call is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The operator, in the namespaces whose ChatClusters it reconciles (every namespace, or
    /// its `--watch-namespace`).
    Watched,
    /// The operator, in its own namespace (`--lease-namespace`).
    Own,
    /// A node, in its own namespace, under the Role the operator creates for its cluster.
    Node,
}

/// One resource and the verbs used on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiCall {
    /// Who calls, and where.
    pub scope: Scope,
    /// API group (`""` for core).
    pub group: &'static str,
    /// Resource (plural, with `/subresource` where one is used).
    pub resource: &'static str,
    /// Verbs, as RBAC names them (see the module doc).
    pub verbs: &'static [&'static str],
    /// The names the call is limited to (`{cluster}` stands for the ChatCluster's name); empty
    /// for any name.
    pub resource_names: &'static [&'static str],
    /// Which code makes the call, and why.
    pub why: &'static str,
}

const fn call(
    scope: Scope,
    group: &'static str,
    resource: &'static str,
    verbs: &'static [&'static str],
    why: &'static str,
) -> ApiCall {
    ApiCall {
        scope,
        group,
        resource,
        verbs,
        resource_names: &[],
        why,
    }
}

use Scope::{Own, Watched};

/// The calls of the operator.
pub const OPERATOR: &[ApiCall] = &[
    call(
        Watched,
        "roomshard.dev",
        "chatclusters",
        &["list", "watch"],
        "controller.rs: the Controller's cache of the clusters it reconciles",
    ),
    call(
        Watched,
        "roomshard.dev",
        "chatclusters/status",
        &["patch"],
        "reconcile.rs write_status: status by server-side apply",
    ),
    call(
        Watched,
        "roomshard.dev",
        "chatclusters/scale",
        &["patch"],
        "autoscaler.rs: the autoscaler sets spec.replicas through the scale subresource, \
         as kubectl scale or a HorizontalPodAutoscaler would",
    ),
    call(
        Watched,
        "roomshard.dev",
        "chatclusters/finalizers",
        &["update"],
        "children: every child has a controller owner reference with blockOwnerDeletion, \
         which the OwnerReferencesPermissionEnforcement admission plugin allows only then",
    ),
    call(
        Watched,
        "apps",
        "statefulsets",
        &["get", "list", "watch", "create", "patch"],
        "controller.rs owns (list, watch); reconcile.rs get_opt, server-side apply",
    ),
    call(
        Watched,
        "",
        "pods",
        &["list", "watch", "delete"],
        "controller.rs watches, reconcile.rs list: membership from readiness, pod IPs; \
         reconcile.rs delete: the rollout replaces one outdated pod at a time (OnDelete)",
    ),
    call(
        Watched,
        "",
        "configmaps",
        &["get", "list", "watch", "create", "patch"],
        "the assignment table: controller.rs owns (list, watch); reconcile.rs get_opt, \
         server-side apply",
    ),
    call(
        Watched,
        "",
        "services",
        &["create", "patch"],
        "peer and client Services, by server-side apply",
    ),
    call(
        Watched,
        "",
        "secrets",
        &["get", "create"],
        "the peer-link key: get_opt, then created once (never listed)",
    ),
    call(
        Watched,
        "",
        "serviceaccounts",
        &["create", "patch"],
        "the nodes' identity, by server-side apply",
    ),
    call(
        Watched,
        "rbac.authorization.k8s.io",
        "roles",
        &["create", "patch"],
        "nodes may read their ConfigMap, by server-side apply",
    ),
    call(
        Watched,
        "rbac.authorization.k8s.io",
        "rolebindings",
        &["create", "patch"],
        "binds that Role, by server-side apply",
    ),
    call(
        Watched,
        "networking.k8s.io",
        "ingresses",
        &["get", "create", "patch", "delete"],
        "the optional Ingress: server-side apply; get_opt and delete when turned off",
    ),
    call(
        Watched,
        "policy",
        "poddisruptionbudgets",
        &["create", "patch"],
        "one pod down at a time, by server-side apply",
    ),
    call(
        Watched,
        "events.k8s.io",
        "events",
        &["create", "patch"],
        "the event recorder: events on transitions, patched when repeated",
    ),
    call(
        Own,
        "coordination.k8s.io",
        "leases",
        &["get", "create", "update"],
        "lease.rs: leader election (get_opt, create, replace)",
    ),
];

/// The calls of a node (in its own namespace, on its cluster's ConfigMap only).
pub const NODE: &[ApiCall] = &[ApiCall {
    scope: Scope::Node,
    group: "",
    resource: "configmaps",
    verbs: &["get", "list", "watch"],
    resource_names: &["{cluster}-assignments"],
    why: "node configmap_source.rs: follows the assignment table",
}];

fn entry(call: &ApiCall) -> Value {
    let mut out = json!({
        "apiGroup": call.group,
        "resource": call.resource,
        "verbs": call.verbs,
    });
    match call.scope {
        Scope::Watched => out["scope"] = json!("watched"),
        Scope::Own => out["scope"] = json!("own"),
        Scope::Node => {}
    }
    if !call.resource_names.is_empty() {
        out["resourceNames"] = json!(call.resource_names);
    }
    out
}

/// Both lists as one JSON document, in the shape `tests/deploy/rbac.py` reads:
/// `{"operator": [{"apiGroup", "resource", "verbs", "scope"}], "node": [{"apiGroup",
/// "resource", "verbs", "resourceNames"}]}`.
pub fn to_json() -> Value {
    json!({
        "operator": OPERATOR.iter().map(entry).collect::<Vec<_>>(),
        "node": NODE.iter().map(entry).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::k8s::children::access::node_role;
    use crate::k8s::children::tests::owner;

    #[test]
    fn the_role_the_operator_gives_nodes_grants_exactly_the_node_calls() {
        let owner = owner();
        let role = node_role(&owner).expect("role");
        let rules = role.rules.expect("rules");
        assert_eq!(rules.len(), NODE.len());
        for (rule, call) in rules.iter().zip(NODE) {
            assert_eq!(rule.api_groups, Some(vec![call.group.to_owned()]));
            assert_eq!(rule.resources, Some(vec![call.resource.to_owned()]));
            assert_eq!(rule.verbs, call.verbs);
            let names: Vec<String> = call
                .resource_names
                .iter()
                .map(|n| n.replace("{cluster}", &owner.name))
                .collect();
            assert_eq!(rule.resource_names, Some(names));
        }
    }

    #[test]
    fn the_operator_may_grant_what_the_node_role_grants() {
        // RBAC refuses to create a Role granting more than its creator holds.
        for node in NODE {
            let held = OPERATOR
                .iter()
                .find(|c| {
                    c.scope == Watched && c.group == node.group && c.resource == node.resource
                })
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
    fn server_side_apply_of_a_child_is_also_a_create() {
        for call in OPERATOR {
            if call.verbs.contains(&"patch") && !call.resource.contains('/') {
                assert!(
                    call.verbs.contains(&"create"),
                    "{} is applied but not created",
                    call.resource
                );
            }
        }
    }

    #[test]
    fn the_json_has_the_shape_the_deploy_check_reads() {
        let json = to_json();
        let operator = json["operator"].as_array().expect("operator calls");
        assert_eq!(operator.len(), OPERATOR.len());
        assert_eq!(operator[0]["apiGroup"], "roomshard.dev");
        assert_eq!(operator[0]["resource"], "chatclusters");
        assert_eq!(operator[0]["scope"], "watched");
        assert_eq!(operator[0]["verbs"], json!(["list", "watch"]));
        let lease = operator
            .iter()
            .find(|c| c["resource"] == "leases")
            .expect("lease");
        assert_eq!(lease["scope"], "own");
        let node = &json["node"][0];
        assert_eq!(node["resource"], "configmaps");
        assert_eq!(node["resourceNames"], json!(["{cluster}-assignments"]));
        assert!(node.get("scope").is_none());
        for call in operator
            .iter()
            .chain(json["node"].as_array().expect("node"))
        {
            for key in call.as_object().expect("object").keys() {
                assert!(
                    ["apiGroup", "resource", "verbs", "scope", "resourceNames"]
                        .contains(&key.as_str()),
                    "unexpected key {key}"
                );
            }
        }
    }
}
