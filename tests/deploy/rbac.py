"""What the chart grants, compared with what the code calls.

The code's side is a JSON document (printed by `roomshard-operator rbac`):

    {
      "operator": [
        {"apiGroup": "apps", "resource": "statefulsets", "verbs": ["get", "list", "watch", "patch"]},
        {"apiGroup": "coordination.k8s.io", "resource": "leases", "verbs": ["get", "create", "update"],
         "scope": "own"}
      ],
      "node": [
        {"apiGroup": "", "resource": "configmaps", "verbs": ["get", "list", "watch"],
         "resourceNames": ["{cluster}-assignments"]}
      ]
    }

- `apiGroup`: "" for the core group; `resource`: the plural, with `/subresource` when the call
  is on one (`chatclusters/status`); `verbs`: Kubernetes RBAC verbs (a server-side apply is
  `patch`, a watch is `watch`, a controller's cache of a kind is `list` + `watch`);
- `scope` (operator only): `watched` (the default) for calls in the namespaces whose
  ChatClusters it manages, `own` for calls in the operator's own namespace (its Lease);
- `resourceNames` (optional): the call is limited to these names (`{cluster}` stands for the
  ChatCluster's name).
The node's calls are in its own namespace, granted by the Role the operator creates per cluster.

The chart's side is the rules of the Roles and ClusterRoles bound to the operator's
ServiceAccount in a rendered chart, followed through the bindings. Both become sets of single
grants (scope, apiGroup, resource, verb, resourceNames) and must be equal: a grant the code does
not use is as much a failure as a call the chart does not allow. The node's calls must be held
by the operator itself in the watched namespaces: Kubernetes lets the operator create the nodes'
Role only then (RBAC escalation prevention), since the chart grants it neither `escalate` nor
`bind`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

WATCHED = "watched"
OWN = "own"
NODE = "node"


@dataclass(frozen=True, order=True)
class Grant:
    """One verb on one resource, in one scope."""

    who: str  # "operator" or "node"
    scope: str  # WATCHED, OWN or NODE
    api_group: str
    resource: str
    verb: str
    resource_names: tuple[str, ...] = ()

    def __str__(self) -> str:
        group = self.api_group or "core"
        names = f" (names {', '.join(self.resource_names)})" if self.resource_names else ""
        return f"{self.who} [{self.scope}] {self.verb} {group}/{self.resource}{names}"


def grants_from_calls(calls: dict[str, Any]) -> set[Grant]:
    """The code's calls (the JSON above) as grants; raises ValueError on a malformed document."""
    if not isinstance(calls, dict) or set(calls) - {"operator", "node"}:
        raise ValueError('expected an object with the keys "operator" and "node"')
    out: set[Grant] = set()
    for who in ("operator", "node"):
        for entry in calls.get(who, []):
            unknown = set(entry) - {"apiGroup", "resource", "verbs", "scope", "resourceNames"}
            if unknown:
                raise ValueError(f"{who} entry {entry}: unknown keys {sorted(unknown)}")
            if who == "node":
                scope = NODE
                if entry.get("scope", NODE) not in (NODE, OWN):
                    raise ValueError(f"node entry {entry}: a node only calls in its namespace")
            else:
                scope = entry.get("scope", WATCHED)
                if scope not in (WATCHED, OWN):
                    raise ValueError(f"operator entry {entry}: scope must be watched or own")
            names = tuple(sorted(entry.get("resourceNames", [])))
            for verb in entry["verbs"]:
                out.add(Grant(who, scope, entry["apiGroup"], entry["resource"], verb, names))
    return out


def _rules_to_grants(who: str, scope: str, rules: Iterable[dict[str, Any]]) -> set[Grant]:
    out: set[Grant] = set()
    for rule in rules:
        if rule.get("nonResourceURLs"):
            raise ValueError(f"{who}: nonResourceURLs are not expected: {rule}")
        names = tuple(sorted(rule.get("resourceNames", [])))
        for group in rule.get("apiGroups", []):
            for resource in rule.get("resources", []):
                for verb in rule.get("verbs", []):
                    out.add(Grant(who, scope, group, resource, verb, names))
    return out


def _bound_to(binding: dict[str, Any], sa_name: str, sa_namespace: str) -> bool:
    return any(
        s.get("kind") == "ServiceAccount"
        and s.get("name") == sa_name
        and s.get("namespace", binding["metadata"].get("namespace")) == sa_namespace
        for s in binding.get("subjects", [])
    )


def grants_from_chart(
    manifests: list[dict[str, Any]],
    *,
    release_namespace: str,
    operator_sa: str,
    watch_namespace: str | None,
) -> set[Grant]:
    """The rules bound to the operator's ServiceAccount in a rendered chart.

    They are `watched` when bound cluster-wide (ClusterRoleBinding) or, with a watchNamespace,
    by a RoleBinding in it; `own` when bound by a RoleBinding in the release namespace. A
    binding anywhere else, to a role not in the chart, or to any other subject is an error: the
    chart gives rights to the operator and to nobody else.
    """
    roles = {
        (m["kind"], m["metadata"].get("namespace"), m["metadata"]["name"]): m.get("rules", [])
        for m in manifests
        if m["kind"] in ("Role", "ClusterRole")
    }
    out: set[Grant] = set()
    for binding in manifests:
        kind = binding["kind"]
        if kind not in ("RoleBinding", "ClusterRoleBinding"):
            continue
        name = binding["metadata"]["name"]
        ref = binding["roleRef"]
        ns = binding["metadata"].get("namespace") if kind == "RoleBinding" else None
        key = (ref["kind"], ns if ref["kind"] == "Role" else None, ref["name"])
        if key not in roles:
            raise ValueError(f"{kind} {name} refers to {key}, which is not in the chart")
        subjects = binding.get("subjects", [])
        if len(subjects) != 1 or not _bound_to(binding, operator_sa, release_namespace):
            raise ValueError(f"{kind} {name} binds {subjects}, not only the operator")
        rules = roles[key]
        if kind == "ClusterRoleBinding":
            scope = WATCHED
        elif ns == watch_namespace and ns != release_namespace:
            scope = WATCHED
        elif ns == release_namespace:
            # With watchNamespace == the release namespace both Roles are here; the Lease is the
            # only own-namespace call, so a Role about leases is the own one.
            scope = OWN if any("leases" in r.get("resources", []) for r in rules) else WATCHED
        else:
            raise ValueError(f"{kind} {name}: the operator bound in unexpected namespace {ns}")
        out |= _rules_to_grants("operator", scope, rules)
    return out


def operator_grants(grants: set[Grant]) -> set[Grant]:
    return {g for g in grants if g.who == "operator"}


def not_delegable(node_calls: set[Grant], chart: set[Grant]) -> list[Grant]:
    """The node's calls the operator could not grant in a Role: those it does not hold itself
    in the watched namespaces (a grant without resourceNames covers one with them)."""
    held = {(g.api_group, g.resource, g.verb) for g in chart
            if g.scope == WATCHED and not g.resource_names}
    return sorted(g for g in node_calls if g.who == "node"
                  and (g.api_group, g.resource, g.verb) not in held)


@dataclass
class Diff:
    """Grants the code needs that the chart lacks, and grants the chart gives that no code uses."""

    missing: list[Grant]
    unused: list[Grant]

    @property
    def empty(self) -> bool:
        return not self.missing and not self.unused

    def __str__(self) -> str:
        lines = [f"the chart does not grant what the code calls: {g}" for g in self.missing]
        lines += [f"the chart grants what no code calls: {g}" for g in self.unused]
        return "\n".join(lines) or "the chart grants exactly what the code calls"


def compare(code: set[Grant], chart: set[Grant]) -> Diff:
    return Diff(sorted(code - chart), sorted(chart - code))


def wildcards(chart: set[Grant]) -> list[Grant]:
    """Grants with `*` anywhere: never least privilege."""
    return sorted(g for g in chart if "*" in (g.api_group, g.resource, g.verb))
