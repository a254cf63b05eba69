"""The examples: every ChatCluster against the CRD's own openAPIV3Schema (structural.py), every
other object against the Kubernetes schemas; and invalid ChatClusters refused with the field at
fault named."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

import structural
from conftest import EXAMPLES_DIR, FIXTURES, KUBE_VERSIONS, expected_field, validate_strict

EXAMPLES = sorted(p.name for p in EXAMPLES_DIR.glob("*.yaml"))
INVALID = sorted(p.name for p in (FIXTURES / "invalid").glob("*.yaml"))


def docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def test_the_three_examples_are_there():
    assert set(EXAMPLES) == {"minimal.yaml", "ingress-auth.yaml", "large.yaml"}


@pytest.mark.parametrize("name", EXAMPLES)
def test_each_example_explains_itself_in_comments(name):
    lines = (EXAMPLES_DIR / name).read_text().splitlines()
    head = [line for line in lines[:12] if line.startswith("#")]
    assert len(head) >= 3, f"{name} should open with a comment saying what it is and how to use it"
    assert any("kubectl apply -f examples/" in line for line in lines), name


@pytest.mark.parametrize("name", EXAMPLES)
def test_each_example_chat_cluster_satisfies_the_crd_schema(crd, name):
    clusters = [d for d in docs(EXAMPLES_DIR / name) if d["kind"] == "ChatCluster"]
    assert len(clusters) == 1, name
    assert structural.errors(crd, clusters[0]) == []


@pytest.mark.parametrize("version", KUBE_VERSIONS)
@pytest.mark.parametrize("name", EXAMPLES)
def test_each_example_s_other_objects_are_valid_kubernetes(name, version):
    for doc in docs(EXAMPLES_DIR / name):
        if doc["kind"] != "ChatCluster":
            validate_strict(doc, version)


def test_the_examples_show_what_they_are_for():
    minimal = docs(EXAMPLES_DIR / "minimal.yaml")[0]
    assert minimal["spec"] == {"replicas": 3}

    secret, cluster = docs(EXAMPLES_DIR / "ingress-auth.yaml")
    assert secret["kind"] == "Secret"
    ingress = cluster["spec"]["ingress"]
    assert ingress["enabled"] and ingress["className"] == "nginx" and ingress["tlsSecretName"]
    timeouts = {k: int(v) for k, v in ingress["annotations"].items() if "timeout" in k}
    assert timeouts and all(t >= 3600 for t in timeouts.values()), \
        "WebSockets need long proxy read/send timeouts"
    auth = cluster["spec"]["auth"]
    assert auth["mode"] == "Token"
    assert auth["secretRef"]["name"] == secret["metadata"]["name"]
    assert auth["secretRef"]["key"] in secret["stringData"]
    assert "REPLACE-ME" in secret["stringData"][auth["secretRef"]["key"]], \
        "the example's key must be an obvious placeholder"

    large = docs(EXAMPLES_DIR / "large.yaml")[0]["spec"]
    assert large["replicas"] == 24 and large["shards"] == 4096
    assert large["resources"]["requests"] and large["topologySpreadConstraints"]
    assert large["affinity"]["podAntiAffinity"]
    assert "PodDisruptionBudget" in (EXAMPLES_DIR / "large.yaml").read_text()


@pytest.mark.parametrize("name", INVALID)
def test_an_invalid_chat_cluster_is_refused_with_the_field_named(crd, name):
    path = FIXTURES / "invalid" / name
    (cluster,) = docs(path)
    found = structural.errors(crd, cluster)
    print(f"{name}: {found}")
    field = expected_field(path)
    assert found, f"{name} was accepted"
    assert any(e.startswith(f"{field}:") for e in found), f"no error names {field}: {found}"


def test_there_are_invalid_examples_for_range_unknown_field_and_type():
    assert {"negative-replicas.yaml", "unknown-field.yaml", "wrong-type.yaml"} <= set(INVALID)


def test_the_schema_conversion_keeps_kubernetes_semantics():
    # A tiny CRD exercising each rule of structural.py.
    crd = {
        "metadata": {"name": "things.example.com"},
        "spec": {"versions": [{"name": "v1", "schema": {"openAPIV3Schema": {
            "type": "object",
            "properties": {"spec": {"type": "object", "properties": {
                "size": {"x-kubernetes-int-or-string": True},
                "note": {"type": "string", "nullable": True},
                "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": True,
                         "properties": {"a": {"type": "integer"}}},
                "rule": {"type": "integer", "x-kubernetes-validations": [
                    {"rule": "self == oldSelf", "message": "immutable"}]},
            }}},
        }}}]},
    }
    ok = {"apiVersion": "example.com/v1", "kind": "Thing", "metadata": {"name": "t"},
          "spec": {"size": "50%", "note": None, "free": {"a": 1, "anything": True}, "rule": 1}}
    assert structural.errors(crd, ok) == []
    assert structural.errors(crd, dict(ok, spec=dict(ok["spec"], size=5))) == []
    assert structural.errors(crd, dict(ok, spec=dict(ok["spec"], size=[1]))) != []
    assert structural.errors(crd, dict(ok, spec=dict(ok["spec"], extra=1))) == \
        ["spec.extra: unknown field"]
    assert structural.errors(crd, dict(ok, status={})) == ["status: unknown field"]
