"""RBAC covers exactly what the code calls: the Roles and ClusterRoles the chart binds to the
operator, against the list of API calls the code makes (rbac.py describes both sides and the
JSON shape); and the node pods' calls, which the operator grants them per cluster, are ones the
operator holds itself. Checked for both ways of watching: every namespace (ClusterRole) and one
namespace (Role)."""

from __future__ import annotations

import json

import pytest

import rbac
from conftest import RELEASE_NAMESPACE, VALUE_SETS, binary, run

OPERATOR_SA = "roomshard-roomshard-operator"
SCOPES = ["defaults", "watch-namespace"]


@pytest.fixture(scope="session")
def code_calls(request) -> dict:
    """The code's API calls: --rbac-json / ROOMSHARD_RBAC_JSON, else `roomshard-operator rbac`."""
    path = request.config.getoption("--rbac-json")
    if path:
        with open(path) as f:
            return json.load(f)
    operator = binary("roomshard-operator")
    if operator is None:
        pytest.skip("NOTICE: target/debug/roomshard-operator is not built (cargo build "
                    "--workspace --bins); the RBAC check needs its `rbac` subcommand")
    result = run([str(operator), "rbac"])
    if result.returncode != 0 and "unrecognized subcommand" in result.stderr:
        pytest.skip("NOTICE: `roomshard-operator rbac` does not exist yet (issue 4); the chart's "
                    "RBAC is compared with it as soon as it does (or pass --rbac-json=FILE)")
    assert result.returncode == 0, f"roomshard-operator rbac failed: {result.stderr}"
    return json.loads(result.stdout)


def chart_grants(rendered, value_set: str) -> set[rbac.Grant]:
    return rbac.grants_from_chart(
        rendered[value_set].manifests,
        release_namespace=RELEASE_NAMESPACE,
        operator_sa=OPERATOR_SA,
        watch_namespace=VALUE_SETS[value_set].get("watchNamespace") or None,
    )


@pytest.mark.parametrize("value_set", SCOPES)
def test_the_chart_grants_the_operator_exactly_what_its_code_calls(rendered, code_calls,
                                                                    value_set):
    code = rbac.operator_grants(rbac.grants_from_calls(code_calls))
    chart = chart_grants(rendered, value_set)
    diff = rbac.compare(code, chart)
    print(f"{value_set}: {len(chart)} grants in the chart, {len(code)} calls in the code")
    assert diff.empty, f"\n{diff}"


@pytest.mark.parametrize("value_set", SCOPES)
def test_the_operator_holds_every_right_it_gives_the_node_pods(rendered, code_calls, value_set):
    calls = rbac.grants_from_calls(code_calls)
    assert any(g.who == "node" for g in calls), "the code lists no node call"
    missing = rbac.not_delegable(calls, chart_grants(rendered, value_set))
    assert missing == [], "the operator cannot create a Role granting: " + \
        ", ".join(map(str, missing))


@pytest.mark.parametrize("value_set", SCOPES)
def test_the_chart_grants_no_wildcard(rendered, value_set):
    assert rbac.wildcards(chart_grants(rendered, value_set)) == []


def test_the_operator_holds_the_lease_only_in_its_own_namespace(rendered):
    for value_set in SCOPES:
        grants = chart_grants(rendered, value_set)
        assert {g.resource for g in grants if g.scope == rbac.OWN} == {"leases"}
        assert "leases" not in {g.resource for g in grants if g.scope == rbac.WATCHED}


def test_the_operator_cannot_read_secrets_in_bulk_or_escalate(rendered):
    for value_set in SCOPES:
        grants = chart_grants(rendered, value_set)
        assert {g.verb for g in grants if g.resource == "secrets"} == {"get", "create"}
        assert not {"escalate", "bind", "impersonate"} & {g.verb for g in grants}


# The comparison itself, on a made-up list: it must catch a missing and an extra grant.
SAMPLE = {
    "operator": [
        {"apiGroup": "apps", "resource": "statefulsets", "verbs": ["get", "patch"]},
        {"apiGroup": "coordination.k8s.io", "resource": "leases", "verbs": ["get"],
         "scope": "own"},
    ],
    "node": [{"apiGroup": "apps", "resource": "statefulsets", "verbs": ["get"],
              "resourceNames": ["{cluster}"]}],
}


def sample_manifests(operator_verbs: list[str]) -> list[dict]:
    def meta(name, ns=None):
        return {"name": name, **({"namespace": ns} if ns else {})}

    sa = {"kind": "ServiceAccount", "name": OPERATOR_SA, "namespace": RELEASE_NAMESPACE}
    return [
        {"kind": "ClusterRole", "metadata": meta("op"),
         "rules": [{"apiGroups": ["apps"], "resources": ["statefulsets"],
                    "verbs": operator_verbs}]},
        {"kind": "ClusterRoleBinding", "metadata": meta("op"),
         "roleRef": {"kind": "ClusterRole", "name": "op"}, "subjects": [sa]},
        {"kind": "Role", "metadata": meta("lease", RELEASE_NAMESPACE),
         "rules": [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
                    "verbs": ["get"]}]},
        {"kind": "RoleBinding", "metadata": meta("lease", RELEASE_NAMESPACE),
         "roleRef": {"kind": "Role", "name": "lease"}, "subjects": [sa]},
    ]


def sample_chart(operator_verbs: list[str]) -> set[rbac.Grant]:
    return rbac.grants_from_chart(sample_manifests(operator_verbs),
                                  release_namespace=RELEASE_NAMESPACE,
                                  operator_sa=OPERATOR_SA, watch_namespace=None)


def test_the_comparison_accepts_an_exact_match():
    calls = rbac.grants_from_calls(SAMPLE)
    chart = sample_chart(["get", "patch"])
    assert rbac.compare(rbac.operator_grants(calls), chart).empty
    assert rbac.not_delegable(calls, chart) == []


def test_the_comparison_names_a_verb_the_chart_lacks_and_one_no_code_uses():
    calls = rbac.grants_from_calls(SAMPLE)
    chart = sample_chart(["patch", "delete"])
    diff = rbac.compare(rbac.operator_grants(calls), chart)
    assert [str(g) for g in diff.missing] == ["operator [watched] get apps/statefulsets"]
    assert [str(g) for g in diff.unused] == ["operator [watched] delete apps/statefulsets"]
    assert "the chart grants what no code calls: operator [watched] delete" in str(diff)
    # ... and the node's `get` can no longer be delegated.
    assert [str(g) for g in rbac.not_delegable(calls, chart)] == \
        ["node [node] get apps/statefulsets (names {cluster})"]


def test_the_comparison_refuses_a_binding_to_anyone_but_the_operator():
    manifests = sample_manifests(["get"])
    manifests[1]["subjects"].append({"kind": "ServiceAccount", "name": "x", "namespace": "y"})
    with pytest.raises(ValueError, match="not only the operator"):
        rbac.grants_from_chart(manifests, release_namespace=RELEASE_NAMESPACE,
                               operator_sa=OPERATOR_SA, watch_namespace=None)


def test_the_comparison_refuses_a_malformed_call_list():
    with pytest.raises(ValueError):
        rbac.grants_from_calls({"operator": [{"apiGroup": "", "resource": "pods",
                                              "verbs": ["get"], "namespace": "x"}]})
    with pytest.raises(ValueError):
        rbac.grants_from_calls({"controller": []})
