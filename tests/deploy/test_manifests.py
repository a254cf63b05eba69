"""Every rendered manifest and the CRD against the Kubernetes JSON schemas, offline and strict
(kubernetes-validate: unknown fields are errors), for the oldest Kubernetes the chart supports
(Chart.yaml's kubeVersion) and the newest the tool knows."""

from __future__ import annotations

import re

import jsonschema
import kubernetes_validate
import pytest
import yaml

from conftest import CHART_DIR, KUBE_VERSIONS, NEWEST_KUBE, OLDEST_KUBE, VALUE_SETS, validate_strict

# ServiceMonitor is a prometheus-operator CRD, not in the Kubernetes schemas: the fields the
# chart sets are checked against this subset of monitoring.coreos.com/v1 (written from its API
# reference; the duration pattern is the CRD's own).
PROM_DURATION = r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"
LABELS = {"type": "object", "additionalProperties": {"type": "string"}}
PROM_METADATA = {
    "type": "object",
    "required": ["name", "namespace"],
    "properties": {"name": {"type": "string"}, "namespace": {"type": "string"}, "labels": LABELS},
}
NAMESPACE_SELECTOR = {
    "type": "object", "additionalProperties": False,
    "properties": {"any": {"type": "boolean"},
                   "matchNames": {"type": "array", "items": {"type": "string"}}},
}
SELECTOR = {"type": "object", "additionalProperties": False,
            "properties": {"matchLabels": LABELS, "matchExpressions": {"type": "array"}}}
#: The fields a ServiceMonitor endpoint and a PodMonitor podMetricsEndpoint share.
SCRAPE_ENDPOINT = {
    "port": {"type": "string"},
    "path": {"type": "string"},
    "interval": {"type": "string", "pattern": PROM_DURATION},
    "scrapeTimeout": {"type": "string", "pattern": PROM_DURATION},
}


def prometheus_operator_kind(kind: str, spec: dict) -> dict:
    """The schema subset of a monitoring.coreos.com/v1 `kind` whose spec is checked against
    `spec`: the envelope (apiVersion, kind, metadata) is the same for every kind."""
    return {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "kind": {"const": kind},
            "metadata": PROM_METADATA,
            "spec": spec,
        },
    }


def closed_object(properties: dict, required: list[str] | None = None) -> dict:
    """A schema for an object with `required` of `properties` and no other field."""
    schema = {"type": "object", "additionalProperties": False}
    if required:
        schema["required"] = required
    schema["properties"] = properties
    return schema


def list_of(item_properties: dict, required: list[str] | None = None) -> dict:
    """A schema for a non-empty list of `closed_object(item_properties, required)`."""
    return {"type": "array", "minItems": 1, "items": closed_object(item_properties, required)}


SERVICE_MONITOR_SUBSET = prometheus_operator_kind("ServiceMonitor", closed_object({
    "namespaceSelector": NAMESPACE_SELECTOR,
    "selector": SELECTOR,
    "endpoints": list_of({**SCRAPE_ENDPOINT, "honorLabels": {"type": "boolean"}}),
}, required=["endpoints", "selector"]))

# PodMonitor and PrometheusRule, the other prometheus-operator CRDs the chart can render, are
# unknown to kubernetes-validate too (test_kubernetes_validate_knows_no_prometheus_operator_kind
# shows it): the same kind of subset, from the same API reference.
POD_MONITOR_SUBSET = prometheus_operator_kind("PodMonitor", closed_object({
    "namespaceSelector": NAMESPACE_SELECTOR,
    "selector": SELECTOR,
    "podMetricsEndpoints": list_of({
        **SCRAPE_ENDPOINT,
        "relabelings": {
            "type": "array",
            "items": closed_object({
                "sourceLabels": {"type": "array",
                                 "items": {"type": "string", "pattern": "^[a-zA-Z_][a-zA-Z0-9_]*$"}},
                "targetLabel": {"type": "string"},
                "action": {"type": "string"},
                "regex": {"type": "string"},
                "replacement": {"type": "string"},
            }),
        },
    }),
}, required=["podMetricsEndpoints", "selector"]))
PROMETHEUS_RULE_SUBSET = prometheus_operator_kind("PrometheusRule", closed_object({
    "groups": list_of({
        "name": {"type": "string", "minLength": 1},
        "interval": {"type": "string", "pattern": PROM_DURATION},
        "rules": list_of({
            "alert": {"type": "string", "pattern": "^[a-zA-Z_][a-zA-Z0-9_]*$"},
            "expr": {"type": "string", "minLength": 1},
            "for": {"type": "string", "pattern": PROM_DURATION},
            "labels": LABELS,
            "annotations": LABELS,
        }, required=["alert", "expr"]),
    }, required=["name", "rules"]),
}, required=["groups"]))
#: What each prometheus-operator kind is checked against instead of the Kubernetes schemas.
CRD_SUBSETS = {
    "ServiceMonitor": SERVICE_MONITOR_SUBSET,
    "PodMonitor": POD_MONITOR_SUBSET,
    "PrometheusRule": PROMETHEUS_RULE_SUBSET,
}


def test_the_supported_range_matches_the_charts_kube_version():
    chart = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())
    assert chart["kubeVersion"] == f">={OLDEST_KUBE}.0-0"
    assert tuple(map(int, NEWEST_KUBE.split("."))) >= (1, 37), f"the tool knows only up to {NEWEST_KUBE}"


@pytest.mark.parametrize("version", KUBE_VERSIONS)
@pytest.mark.parametrize("value_set", sorted(VALUE_SETS))
def test_every_rendered_manifest_is_valid_kubernetes(rendered, value_set, version):
    checked = []
    for manifest in rendered[value_set].manifests:
        if manifest["kind"] in CRD_SUBSETS:
            jsonschema.Draft202012Validator(CRD_SUBSETS[manifest["kind"]]).validate(manifest)
        else:
            validate_strict(manifest, version)
        checked.append(manifest["kind"])
    print(f"{value_set} @ {version}: {len(checked)} manifests valid ({', '.join(sorted(checked))})")


@pytest.mark.parametrize("version", KUBE_VERSIONS)
def test_the_crd_is_a_valid_custom_resource_definition(crd, version):
    validate_strict(crd, version)


def test_strict_validation_refuses_an_unknown_field(rendered):
    # The check above would be worthless if strict mode let a typo through.
    deployment = dict(rendered["defaults"].one("Deployment"))
    deployment["spec"] = dict(deployment["spec"], replica=2)
    with pytest.raises(kubernetes_validate.ValidationError) as refused:
        kubernetes_validate.validate(deployment, NEWEST_KUBE, strict=True)
    assert "replica" in refused.value.message


def test_the_service_monitor_subset_refuses_a_bad_interval(rendered):
    sm = rendered["service-monitor"].one("ServiceMonitor")
    bad = yaml.safe_load(yaml.safe_dump(sm))
    bad["spec"]["endpoints"][0]["interval"] = "30 seconds"
    with pytest.raises(jsonschema.ValidationError) as refused:
        jsonschema.Draft202012Validator(SERVICE_MONITOR_SUBSET).validate(bad)
    assert re.search("interval|30 seconds", str(refused.value))


@pytest.mark.parametrize("kind", sorted(CRD_SUBSETS))
def test_kubernetes_validate_knows_no_prometheus_operator_kind(rendered, kind):
    # Why those kinds get a subset above: the tool has no schema for them at all.
    manifest = rendered["monitoring"].one(kind)
    with pytest.raises(kubernetes_validate.SchemaNotFoundError):
        kubernetes_validate.validate(manifest, NEWEST_KUBE, strict=True)
