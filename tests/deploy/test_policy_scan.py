"""A third-party policy checker, checkov, on what roomshard puts into a cluster: the chart
rendered with every value set of conftest.VALUE_SETS, and the children the operator writes for
each file in examples/ (`roomshard-operator render`, the controller's own builders), scanned
together with the chart's NetworkPolicy for their namespace, as they run.

Every finding must be a documented exception in checkov/exceptions.yaml for its scope (chart or
children), and every exception must still match a finding. Each scan is a separate checkov run
over one directory, so that objects of one value set or example cannot satisfy a check of
another (checkov's NetworkPolicy check looks across every file it is given).
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import (
    EXAMPLES_DIR,
    KUBE_VERSIONS,
    REPO,
    VALUE_SETS,
    binary,
    render,
    run,
    validate_strict,
)

HERE = Path(__file__).resolve().parent
EXCEPTIONS_FILE = HERE / "checkov" / "exceptions.yaml"
SECURITY_DOC = REPO / "docs" / "security.md"
#: The namespace the examples' children are rendered into.
CHILD_NAMESPACE = "chat"
#: One checkov run takes about 3 s here; this bounds a hung one.
SCAN_TIMEOUT_SECONDS = 120

EXAMPLES = sorted(p.name for p in EXAMPLES_DIR.glob("*.yaml"))


@dataclass
class Scan:
    """One checkov run: what failed and what passed, as (check id, resource)."""

    failed: list[tuple[str, str]] = field(default_factory=list)
    passed: list[tuple[str, str]] = field(default_factory=list)


def checkov() -> str:
    path = os.environ.get("CHECKOV") or str(REPO / ".venv-checkov" / "bin" / "checkov")
    if not Path(path).is_file():
        pytest.fail(f"checkov is not installed at {path}: run tests/deploy/run.sh, which "
                    "installs it into .venv-checkov")
    return path


def scan(manifests: list[dict[str, Any]]) -> Scan:
    """checkov's Kubernetes checks on `manifests`, alone in a directory of their own."""
    with tempfile.TemporaryDirectory(prefix="roomshard-checkov-") as directory:
        (Path(directory) / "manifests.yaml").write_text(yaml.safe_dump_all(manifests))
        done = subprocess.run(
            [checkov(), "--directory", directory, "--framework", "kubernetes", "--output",
             "json", "--compact", "--skip-download"],
            capture_output=True, text=True, timeout=SCAN_TIMEOUT_SECONDS,
        )
    # 0: no finding; 1: findings, reported in the JSON. Anything else is checkov failing.
    assert done.returncode in (0, 1), f"checkov exited {done.returncode}: {done.stderr[-2000:]}"
    reports = yaml.safe_load(done.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    result = Scan()
    for report in reports:
        assert report["summary"]["parsing_errors"] == 0, report["summary"]
        assert report["summary"]["resource_count"] > 0, "checkov read no object"
        for check in report["results"]["failed_checks"]:
            result.failed.append((check["check_id"], check["resource"]))
        for check in report["results"]["passed_checks"]:
            result.passed.append((check["check_id"], check["resource"]))
    return result


def node_policy(namespace: str) -> dict[str, Any]:
    """The chart's NetworkPolicy for the node pods of `namespace`."""
    rendered = render({"networkPolicy": {"namespaces": [namespace]}})
    (policy,) = [p for p in rendered.of_kind("NetworkPolicy")
                 if p["metadata"]["name"].endswith("-nodes")]
    return policy


def children_of(example: str) -> list[dict[str, Any]]:
    operator = binary("roomshard-operator")
    if operator is None:
        pytest.skip("NOTICE: target/debug/roomshard-operator is not built (cargo build "
                    "--workspace --bins); the children scan runs once it is")
    done = run([str(operator), "render", "-f", str(EXAMPLES_DIR / example), "-n",
                CHILD_NAMESPACE])
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
@pytest.mark.parametrize("example", EXAMPLES)
def test_the_rendered_children_of_every_example_are_valid_kubernetes_objects(example, kube_version):
    children = children_of(example)
    kinds = [c["kind"] for c in children]
    assert kinds.count("StatefulSet") == 1 and kinds.count("ConfigMap") == 1, kinds
    for child in children:
        assert child["metadata"]["namespace"] == CHILD_NAMESPACE
        validate_strict(child, kube_version)


def test_the_minimal_examples_node_pods_get_the_default_resources_and_large_keeps_its_own():
    def resources(example: str) -> dict[str, Any]:
        (sts,) = [c for c in children_of(example) if c["kind"] == "StatefulSet"]
        return sts["spec"]["template"]["spec"]["containers"][0]["resources"]

    assert resources("minimal.yaml") == {"requests": {"cpu": "250m", "memory": "128Mi"},
                                         "limits": {"memory": "512Mi"}}
    large = yaml.safe_load_all((EXAMPLES_DIR / "large.yaml").read_text())
    (spec,) = [d["spec"] for d in large if d and d["kind"] == "ChatCluster"]
    assert resources("large.yaml") == spec["resources"]


@pytest.fixture(scope="session")
def exceptions() -> dict[str, dict[str, Any]]:
    return yaml.safe_load(EXCEPTIONS_FILE.read_text())


@pytest.fixture(scope="session")
def chart_scans() -> dict[str, Scan]:
    return {name: scan(render(values).manifests) for name, values in VALUE_SETS.items()}


@pytest.fixture(scope="session")
def children_scans() -> dict[str, Scan]:
    policy = node_policy(CHILD_NAMESPACE)
    return {example: scan(children_of(example) + [policy]) for example in EXAMPLES}


def excused(check: str, scope: str, name: str, exceptions: dict[str, dict[str, Any]]) -> bool:
    """Whether a failed `check` in the scan `name` of `scope` is a documented exception; an
    entry with `value_sets` covers the chart only when rendered with one of them."""
    entry = exceptions.get(check, {})
    if scope not in entry.get("scopes", []):
        return False
    return scope != "chart" or name in entry.get("value_sets", VALUE_SETS)


def unexcused(result: Scan, scope: str, name: str, exceptions: dict[str, dict[str, Any]]) -> list:
    return [(check, resource) for check, resource in result.failed
            if not excused(check, scope, name, exceptions)]


def assert_only_documented_findings(result: Scan, scope: str, name: str,
                                    exceptions: dict[str, dict[str, Any]]) -> None:
    """Prints the scan `name` of `scope` in brief and fails on any finding that is not a
    documented exception."""
    print(f"{name}: {len(result.passed)} passed, {len(result.failed)} failed:",
          sorted({c for c, _ in result.failed}))
    assert unexcused(result, scope, name, exceptions) == []


@pytest.mark.parametrize("value_set", sorted(VALUE_SETS))
def test_the_rendered_chart_has_no_finding_but_the_documented_exceptions(
        chart_scans, exceptions, value_set):
    assert_only_documented_findings(chart_scans[value_set], "chart", value_set, exceptions)


@pytest.mark.parametrize("example", EXAMPLES)
def test_the_children_of_every_example_have_no_finding_but_the_documented_exceptions(
        children_scans, exceptions, example):
    assert_only_documented_findings(children_scans[example], "children", example,
                                    exceptions)


def test_every_exception_still_matches_a_finding_in_each_of_its_scopes(
        chart_scans, children_scans, exceptions):
    scans = {"chart": chart_scans, "children": children_scans}
    for check, entry in exceptions.items():
        assert entry["scopes"] and set(entry["scopes"]) <= set(scans), (check, entry["scopes"])
        for scope in entry["scopes"]:
            names = entry.get("value_sets", VALUE_SETS) if scope == "chart" else scans[scope]
            assert any(c == check for name in names for c, _ in scans[scope][name].failed), (
                f"{check} no longer fails in {scope}: remove it from the exceptions")


def test_every_exception_has_a_reason_and_is_listed_in_the_security_doc(exceptions):
    doc = SECURITY_DOC.read_text()
    for check, entry in exceptions.items():
        assert len(entry["reason"].split()) >= 10, f"{check}: say why"
        assert entry["title"]
        assert f"`{check}`" in doc, f"docs/security.md does not list {check}"


def test_node_pods_have_requests_a_memory_limit_and_a_network_policy_by_default(children_scans):
    # What the default resources and the chart's NetworkPolicy fix: CPU and memory requests
    # (CKV_K8S_10, CKV_K8S_12), a memory limit (CKV_K8S_13), a policy for the pods (CKV2_K8S_6).
    result = children_scans["minimal.yaml"]
    for check in ("CKV_K8S_10", "CKV_K8S_12", "CKV_K8S_13"):
        assert (check, f"StatefulSet.{CHILD_NAMESPACE}.minimal") in result.passed, check
    assert any(c == "CKV2_K8S_6" for c, _ in result.passed)
    assert not any(c == "CKV2_K8S_6" for c, _ in result.failed)


def test_the_operator_pods_have_a_network_policy_only_while_the_chart_creates_it(chart_scans):
    assert any(c == "CKV2_K8S_6" for c, _ in chart_scans["defaults"].passed)
    assert not any(c == "CKV2_K8S_6" for c, _ in chart_scans["defaults"].failed)
    # `bare` turns the policies off: checkov sees that (an exception for that value set only).
    assert any(c == "CKV2_K8S_6" for c, _ in chart_scans["bare"].failed)
