"""The Helm chart, rendered and linted by the real Helm engine (helm-python-sdk: Helm v4 as a
library), with its defaults and with each set of non-default values in conftest.VALUE_SETS."""

from __future__ import annotations

import helm_python
import pytest
import yaml

from conftest import (
    CHART_CRD_FILE,
    CHART_DIR,
    CRD_FILE,
    FIXTURES,
    KUBE_VERSIONS,
    RELEASE_NAMESPACE,
    REPO,
    VALUE_SETS,
    Rendered,
    crd_missing_reason,
    expected_field,
    render,
)


@pytest.mark.parametrize("value_set", sorted(VALUE_SETS))
def test_every_value_set_renders_to_well_formed_manifests(rendered, value_set):
    r: Rendered = rendered[value_set]
    assert r.manifests, "nothing rendered"
    names = set()
    for m in r.manifests:
        assert {"apiVersion", "kind", "metadata"} <= set(m), m
        key = (m["kind"], m["metadata"].get("namespace"), m["metadata"]["name"])
        assert key not in names, f"{key} rendered twice"
        names.add(key)
    print(f"{value_set}: {len(r.manifests)} manifests:",
          ", ".join(sorted(f"{k}/{n}" for k, _, n in names)))


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
@pytest.mark.parametrize("value_set", sorted(VALUE_SETS))
def test_helm_lint_finds_no_error(value_set, kube_version):
    report = helm_python.lint(
        CHART_DIR, VALUE_SETS[value_set], namespace=RELEASE_NAMESPACE,
        kube_version=f"v{kube_version}.0",
    )
    for message in report["messages"]:
        print(f"lint severity {message['severity']}: {message['path']}: {message['error']}")
    errors = [m for m in report["messages"] if m["severity"] >= 3] + report["errors"]
    assert not errors, errors
    # Warnings too: the chart is meant to lint clean.
    assert not [m for m in report["messages"] if m["severity"] == 2]


def test_the_default_values_pass_the_values_schema():
    with helm_python.Chart.load(CHART_DIR) as chart:
        assert chart.schema is not None, "values.schema.json is missing"
        chart.validate_schema(chart.values)
        for name, values in VALUE_SETS.items():
            chart.validate_schema(chart.merge_values(values))


#: The node pods' NetworkPolicy (one per node namespace) and the operator pods' one.
NODE_POLICY = "roomshard-roomshard-operator-nodes"
OPERATOR_POLICY = "roomshard-roomshard-operator"


BROKEN = sorted(p.name for p in (FIXTURES / "values").glob("broken-*.yaml"))


@pytest.mark.parametrize("name", BROKEN)
def test_a_broken_values_file_is_refused_by_the_schema_with_the_field_named(name):
    path = FIXTURES / "values" / name
    values = helm_python.values_from_yaml(path.read_text())
    field = expected_field(path)
    with helm_python.Chart.load(CHART_DIR) as chart:
        with pytest.raises(helm_python.HelmValuesError) as refused:
            chart.render(values, name="roomshard", namespace=RELEASE_NAMESPACE, is_install=True)
    print(f"{name}: {refused.value}")
    assert field in str(refused.value), f"the refusal does not name {field}: {refused.value}"
    report = helm_python.lint(CHART_DIR, values, namespace=RELEASE_NAMESPACE)
    assert any(m["severity"] >= 3 and field in m["error"] for m in report["messages"]), report


def test_there_are_broken_values_fixtures_for_type_unknown_key_and_range():
    assert {"broken-wrong-type.yaml", "broken-unknown-key.yaml",
            "broken-negative-replicas.yaml"} <= set(BROKEN)


def test_the_operator_runs_two_locked_down_replicas_with_probes(rendered):
    d = rendered["defaults"].one("Deployment")
    spec = d["spec"]
    assert spec["replicas"] == 2
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (c,) = pod["containers"]
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert c["resources"]["requests"]["cpu"] and c["resources"]["requests"]["memory"]
    assert c["resources"]["limits"]["memory"]
    port = {p["name"]: p["containerPort"] for p in c["ports"]}["metrics"]
    assert port == 9090
    for probe in ("livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"] == {"path": "/healthz", "port": "metrics"}, probe
    args = c["args"]
    assert args[0] == "controller"
    assert "--metrics-listen=0.0.0.0:9090" in args
    assert "--lease-name=roomshard-roomshard-operator" in args
    assert "--lease-namespace=$(POD_NAMESPACE)" in args
    assert not any(a.startswith("--watch-namespace") for a in args)
    env = {e["name"]: e for e in c["env"]}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    # The two replicas prefer different Kubernetes nodes, and a PDB keeps one through drains.
    anti = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert anti[0]["podAffinityTerm"]["labelSelector"]["matchLabels"] == \
        spec["selector"]["matchLabels"]
    pdb = rendered["defaults"].one("PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"] == spec["selector"]["matchLabels"]
    assert pdb["spec"]["maxUnavailable"] == 1


def test_custom_values_reach_the_deployment(rendered):
    r = rendered["custom-resources"]
    pod = r.one("Deployment")["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["image"] == "ghcr.io/roomshard/roomshard-operator:0.1.0-rc.1"
    assert c["imagePullPolicy"] == "Always"
    assert c["resources"] == VALUE_SETS["custom-resources"]["resources"]
    assert c["args"][-1] == "--requeue-after=5m"
    assert "--metrics-listen=0.0.0.0:9443" in c["args"]
    assert {"name": "TZ", "value": "UTC"} in c["env"]
    assert pod["nodeSelector"] == {"pool": "system"}
    assert pod["imagePullSecrets"] == [{"name": "registry"}]
    assert pod["priorityClassName"] == "system-cluster-critical"
    assert pod["topologySpreadConstraints"][0]["topologyKey"] == "topology.kubernetes.io/zone"
    svc = r.one("Service")
    assert svc["spec"]["ports"][0]["port"] == 8443
    assert svc["spec"]["ports"][0]["targetPort"] == "metrics"


def test_an_image_digest_pins_the_operator_image_instead_of_the_tag():
    digest = "sha256:" + "ab" * 32
    r = render({"image": {"tag": "0.1.0", "digest": digest}})
    (c,) = r.one("Deployment")["spec"]["template"]["spec"]["containers"]
    assert c["image"] == f"ghcr.io/roomshard/roomshard-operator@{digest}"
    with pytest.raises(helm_python.HelmValuesError) as refused:
        render({"image": {"digest": "latest"}})
    assert "/image/digest" in str(refused.value)


def test_one_replica_gets_no_pod_disruption_budget(rendered):
    assert rendered["bare"].of_kind("PodDisruptionBudget") == []


def test_watching_every_namespace_uses_a_cluster_role(rendered):
    r = rendered["defaults"]
    assert [m["metadata"]["name"] for m in r.of_kind("ClusterRole")] == \
        ["roomshard-roomshard-operator"]
    crb = r.one("ClusterRoleBinding")
    assert crb["subjects"] == [{"kind": "ServiceAccount", "name": "roomshard-roomshard-operator",
                                "namespace": RELEASE_NAMESPACE}]


def test_watching_one_namespace_uses_a_role_there_and_no_cluster_role(rendered):
    r = rendered["watch-namespace"]
    assert r.of_kind("ClusterRole") == [] and r.of_kind("ClusterRoleBinding") == []
    role = r.one("Role", "roomshard-roomshard-operator")
    assert role["metadata"]["namespace"] == "team-chat"
    args = r.one("Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--watch-namespace=team-chat" in args
    # The node pods' network rules follow into the watched namespace.
    assert r.one("NetworkPolicy", NODE_POLICY)["metadata"]["namespace"] == "team-chat"


def test_a_node_namespace_outside_the_watched_one_is_refused():
    with pytest.raises(helm_python.HelmRenderError) as refused:
        render({"watchNamespace": "team-chat", "networkPolicy": {"namespaces": ["elsewhere"]}})
    assert "elsewhere" in str(refused.value) and "watchNamespace" in str(refused.value)


def test_the_chart_gives_rights_to_the_operator_only(rendered):
    # The node pods' ServiceAccount and Role come from the operator, one per ChatCluster, limited
    # to that cluster's ConfigMap; the chart creates no identity for them.
    for value_set, r in rendered.items():
        accounts = [m["metadata"]["name"] for m in r.of_kind("ServiceAccount")]
        assert accounts in ([], ["roomshard-roomshard-operator"]), (value_set, accounts)
        for binding in r.of_kind("RoleBinding") + r.of_kind("ClusterRoleBinding"):
            assert binding["subjects"] == [{"kind": "ServiceAccount",
                                            "name": "roomshard-roomshard-operator",
                                            "namespace": RELEASE_NAMESPACE}], value_set


def test_the_node_network_policy_opens_the_client_port_and_guards_the_peer_port(rendered):
    policy = rendered["defaults"].one("NetworkPolicy", NODE_POLICY)
    spec = policy["spec"]
    node_pods = {"matchLabels": {"app.kubernetes.io/name": "roomshard",
                                 "app.kubernetes.io/managed-by": "roomshard-operator"}}
    assert spec["podSelector"] == node_pods
    assert spec["policyTypes"] == ["Ingress"]
    by_port: dict[int, list] = {}
    for rule in spec["ingress"]:
        for port in rule["ports"]:
            by_port.setdefault(port["port"], []).append(rule.get("from"))
    assert set(by_port) == {8080, 7070}
    assert by_port[8080] == [None], "the client port is open to any client by default"
    peers = [peer for rule_from in by_port[7070] for peer in rule_from]
    assert {"podSelector": node_pods} in peers
    assert {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": RELEASE_NAMESPACE}},
        "podSelector": {"matchLabels": {"app.kubernetes.io/name": "roomshard-operator",
                                        "app.kubernetes.io/instance": "roomshard"}},
    } in peers
    assert len(peers) == 2, "nobody else reaches the peer port"


def test_clients_can_be_limited_to_the_ingress_controller_in_every_node_namespace(rendered):
    policies = [p for p in rendered["ingress-clients-only"].of_kind("NetworkPolicy")
                if p["metadata"]["name"] == NODE_POLICY]
    assert sorted(p["metadata"]["namespace"] for p in policies) == ["chat-a", "chat-b"]
    for p in policies:
        client_rule = [r for r in p["spec"]["ingress"] if r["ports"][0]["port"] == 8080][0]
        assert client_rule["from"] == VALUE_SETS["ingress-clients-only"]["networkPolicy"][
            "clients"]["from"]


def test_the_operator_network_policy_admits_only_the_metrics_port_and_lets_out_only_the_api_server_and_node_status(rendered):
    r = rendered["defaults"]
    policy = r.one("NetworkPolicy", OPERATOR_POLICY)
    assert policy["metadata"]["namespace"] == RELEASE_NAMESPACE
    spec = policy["spec"]
    assert spec["podSelector"] == r.one("Deployment")["spec"]["selector"]
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    # In: the metrics port (/metrics, /healthz, the probes' target), from anyone by default.
    (ingress,) = spec["ingress"]
    assert ingress["ports"] == [{"port": 9090, "protocol": "TCP"}]
    assert "from" not in ingress
    container = r.one("Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert [p["containerPort"] for p in container["ports"]] == [9090], "nothing else listens"
    # Out: the API server's ports to any address, and the node pods' peer port (/status) in
    # the node namespace; no DNS (the operator connects to addresses only).
    api, status = spec["egress"]
    assert api["ports"] == [{"port": 443, "protocol": "TCP"}, {"port": 6443, "protocol": "TCP"}]
    assert "to" not in api
    assert status["ports"] == [{"port": 7070, "protocol": "TCP"}]
    assert status["to"] == [{
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": RELEASE_NAMESPACE}},
        "podSelector": {"matchLabels": {"app.kubernetes.io/name": "roomshard",
                                        "app.kubernetes.io/managed-by": "roomshard-operator"}},
    }]
    assert not any(p["port"] == 53 for rule in spec["egress"] for p in rule["ports"])


def test_the_operator_network_policy_takes_its_sources_api_server_and_extra_rules_from_values(rendered):
    r = rendered["operator-network"]
    wanted = VALUE_SETS["operator-network"]["networkPolicy"]["operator"]
    spec = r.one("NetworkPolicy", OPERATOR_POLICY)["spec"]
    assert spec["ingress"][0]["from"] == wanted["metrics"]["from"]
    api, status, dns = spec["egress"]
    assert api == {"ports": [{"port": 6443, "protocol": "TCP"}], "to": wanted["apiServer"]["to"]}
    assert [t["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
            for t in status["to"]] == ["chat-a", "chat-b"]
    assert dns == wanted["extraEgress"][0]
    # The node pods' policies admit the operator's /status reads in both namespaces.
    assert sorted(p["metadata"]["namespace"] for p in r.of_kind("NetworkPolicy")
                  if p["metadata"]["name"] == NODE_POLICY) == ["chat-a", "chat-b"]


def test_the_operator_network_policy_can_be_left_out_alone():
    r = render({"networkPolicy": {"operator": {"enabled": False}}})
    assert [p["metadata"]["name"] for p in r.of_kind("NetworkPolicy")] == [NODE_POLICY]


def test_the_metrics_service_selects_the_operator_pods(rendered):
    r = rendered["defaults"]
    svc = r.one("Service")
    deployment = r.one("Deployment")
    assert svc["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert svc["spec"]["ports"] == [{"name": "metrics", "port": 9090, "targetPort": "metrics",
                                     "protocol": "TCP"}]


def test_the_service_monitor_is_rendered_only_when_enabled_and_scrapes_the_metrics_service(rendered):
    assert rendered["defaults"].of_kind("ServiceMonitor") == []
    r = rendered["service-monitor"]
    sm = r.one("ServiceMonitor")
    svc = r.one("Service")
    assert sm["metadata"]["labels"]["release"] == "prometheus"
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert sm["spec"]["namespaceSelector"] == {"matchNames": [RELEASE_NAMESPACE]}
    (endpoint,) = sm["spec"]["endpoints"]
    assert endpoint["port"] == svc["spec"]["ports"][0]["name"]
    assert endpoint["path"] == "/metrics"


def test_without_rbac_and_service_accounts_the_chart_creates_none(rendered):
    r = rendered["bare"]
    kinds = {m["kind"] for m in r.manifests}
    assert not kinds & {"Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding",
                        "ServiceAccount", "NetworkPolicy"}, kinds
    pod = r.one("Deployment")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "existing"


def test_notes_tell_the_user_the_next_commands(rendered):
    notes = rendered["defaults"].notes
    print(notes)
    assert "kubectl apply -n roomshard-system -f examples/minimal.yaml" in notes
    assert "kubectl get chat -n roomshard-system -w" in notes
    assert "port-forward service/minimal 8080:80" in notes
    assert "rollout status deployment/roomshard-roomshard-operator" in notes
    watched = rendered["watch-namespace"].notes
    assert "namespace team-chat" in watched
    assert "kubectl apply -n team-chat -f examples/minimal.yaml" in watched


def test_every_template_and_value_is_documented():
    for template in sorted((CHART_DIR / "templates").glob("*.yaml")):
        assert template.read_text().lstrip().startswith("{{- /*"), \
            f"{template.name} does not open with a comment saying what it is"
    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    text = (CHART_DIR / "values.yaml").read_text()

    def leaves(node, prefix=""):
        for key, value in node.items():
            # resources and podSelector are free-form maps, documented as a whole.
            if isinstance(value, dict) and value and key not in ("resources", "podSelector"):
                yield from leaves(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}", key

    lines = text.splitlines()
    for path, key in leaves(values):
        index = next(i for i, line in enumerate(lines) if line.strip().startswith(f"{key}:"))
        assert lines[index - 1].strip().startswith("#"), f"{path} has no comment above it"


def test_the_charts_crd_is_the_generated_crd_file(crd):
    assert CHART_CRD_FILE.is_file(), (
        f"{CHART_CRD_FILE.relative_to(REPO)} is missing; copy it: "
        f"cp crds/chatcluster.yaml {CHART_CRD_FILE.relative_to(REPO)}"
    )
    assert CHART_CRD_FILE.read_bytes() == CRD_FILE.read_bytes(), (
        f"{CHART_CRD_FILE.relative_to(REPO)} differs from {CRD_FILE.name}; copy it again: "
        f"cp crds/chatcluster.yaml {CHART_CRD_FILE.relative_to(REPO)}"
    )


def test_helm_loads_the_crd_from_the_chart(crd):
    with helm_python.Chart.load(CHART_DIR) as chart:
        crds = chart.crds
    assert [c["name"] for c in crds] == ["crds/chatcluster.yaml"], [c["name"] for c in crds]
    assert yaml.safe_load(crds[0]["data"]) == crd


def test_the_chart_has_no_crd_but_the_generated_one():
    extra = sorted(p.name for p in (CHART_DIR / "crds").glob("*") if p.name != "chatcluster.yaml")
    assert extra == [], f"unexpected files in the chart's crds/: {extra}"
    if not CRD_FILE.is_file():
        assert not CHART_CRD_FILE.exists(), (
            "the chart carries a CRD but crds/chatcluster.yaml does not exist: "
            + crd_missing_reason()
        )
