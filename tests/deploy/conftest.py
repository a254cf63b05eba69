"""Shared fixtures of the deploy checks: where things are, the chart rendered by the real Helm
engine for each set of values, the CRD, and the binaries built by `cargo build`.

A check whose input does not exist yet (the generated CRD, a subcommand of the operator) is
skipped with the reason printed in pytest's summary (`-ra`), never passed quietly.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import helm_python
import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import latest_version

REPO = Path(__file__).resolve().parents[2]
CHART_DIR = REPO / "charts" / "roomshard-operator"
EXAMPLES_DIR = REPO / "examples"
FIXTURES = Path(__file__).resolve().parent / "fixtures"
TARGET_DIR = REPO / os.environ.get("CARGO_TARGET_DIR", "target")  # absolute wins over REPO

#: The generated CRD (issue 4: `roomshard-operator crd > crds/chatcluster.yaml`). ROOMSHARD_CRD
#: points the checks at another file, e.g. one generated but not yet committed.
CRD_FILE = Path(os.environ.get("ROOMSHARD_CRD", REPO / "crds" / "chatcluster.yaml"))
#: The chart's copy of it, which Helm installs.
CHART_CRD_FILE = CHART_DIR / "crds" / "chatcluster.yaml"

#: Kubernetes versions the manifests are validated for: the oldest the chart supports
#: (Chart.yaml's kubeVersion) and the newest kubernetes-validate knows.
OLDEST_KUBE = "1.30"
NEWEST_KUBE = ".".join(latest_version().split(".")[:2])
KUBE_VERSIONS = [OLDEST_KUBE, NEWEST_KUBE]

RELEASE = "roomshard"
RELEASE_NAMESPACE = "roomshard-system"

#: The value sets the chart is rendered, linted and validated with: the defaults and one set
#: for each optional part, so every template branch is rendered at least once.
VALUE_SETS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "service-monitor": {
        "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}}},
    },
    # The PodMonitor, the PrometheusRule and the Grafana dashboard, in Grafana's namespace.
    "monitoring": {
        "metrics": {
            "serviceMonitor": {"enabled": True},
            "podMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
        },
        "prometheusRule": {"enabled": True, "additionalLabels": {"release": "prometheus"}},
        "grafanaDashboard": {"enabled": True, "namespace": "grafana"},
    },
    "watch-namespace": {"watchNamespace": "team-chat"},
    "custom-resources": {
        "replicaCount": 3,
        "image": {"tag": "0.1.0-rc.1", "pullPolicy": "Always"},
        "imagePullSecrets": [{"name": "registry"}],
        "resources": {
            "requests": {"cpu": "200m", "memory": "128Mi"},
            "limits": {"cpu": "1", "memory": "512Mi"},
        },
        "nodeSelector": {"pool": "system"},
        "tolerations": [{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}],
        "topologySpreadConstraints": [
            {
                "maxSkew": 1,
                "topologyKey": "topology.kubernetes.io/zone",
                "whenUnsatisfiable": "ScheduleAnyway",
                "labelSelector": {"matchLabels": {"app.kubernetes.io/name": "roomshard-operator"}},
            }
        ],
        "priorityClassName": "system-cluster-critical",
        "extraArgs": ["--requeue-after=5m"],
        "extraEnv": [{"name": "TZ", "value": "UTC"}],
        "log": {"level": "operator=debug,info"},
        "metrics": {"port": 9443, "service": {"port": 8443}},
    },
    # Clients only through an Ingress controller, and node pods in two namespaces.
    "ingress-clients-only": {
        "networkPolicy": {
            "namespaces": ["chat-a", "chat-b"],
            "clients": {
                "from": [
                    {
                        "namespaceSelector": {
                            "matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}
                        }
                    }
                ]
            }
        },
    },
    # The operator's NetworkPolicy narrowed: Prometheus only, the API server's address, DNS.
    "operator-network": {
        "networkPolicy": {
            "namespaces": ["chat-a", "chat-b"],
            "operator": {
                "metrics": {
                    "from": [
                        {
                            "namespaceSelector": {
                                "matchLabels": {"kubernetes.io/metadata.name": "monitoring"}
                            }
                        }
                    ]
                },
                "apiServer": {"to": [{"ipBlock": {"cidr": "10.0.0.10/32"}}], "ports": [6443]},
                "extraEgress": [
                    {"ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]}
                ],
            },
        },
    },
    "bare": {
        "replicaCount": 1,
        "rbac": {"create": False},
        "serviceAccount": {"create": False, "name": "existing"},
        "networkPolicy": {"enabled": False},
        "podDisruptionBudget": {"enabled": False},
    },
}


@dataclass
class Rendered:
    """One render of the chart: its manifests (parsed) and NOTES.txt."""

    values: dict[str, Any]
    manifests: list[dict[str, Any]]
    notes: str

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.manifests if m["kind"] == kind]

    def one(self, kind: str, name: str | None = None) -> dict[str, Any]:
        found = [m for m in self.of_kind(kind) if name is None or m["metadata"]["name"] == name]
        assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
        return found[0]


def render(values: dict[str, Any] | None = None, namespace: str = RELEASE_NAMESPACE) -> Rendered:
    """Render the chart with Helm's engine, as `helm install` would, and parse every document."""
    with helm_python.Chart.load(CHART_DIR) as chart:
        files = chart.render(values or {}, name=RELEASE, namespace=namespace, is_install=True)
    manifests: list[dict[str, Any]] = []
    notes = ""
    for path, text in sorted(files.items()):
        if path.endswith("NOTES.txt"):
            notes = text
            continue
        for doc in yaml.safe_load_all(text):
            if doc is not None:
                manifests.append(doc)
    return Rendered(values or {}, manifests, notes)


@pytest.fixture(scope="session")
def rendered() -> dict[str, Rendered]:
    """The chart rendered once per value set."""
    return {name: render(values) for name, values in VALUE_SETS.items()}


def crd_missing_reason() -> str:
    return (
        f"NOTICE: {CRD_FILE.relative_to(REPO) if CRD_FILE.is_relative_to(REPO) else CRD_FILE} "
        "does not exist yet: issue 4 generates it (`roomshard-operator crd > "
        "crds/chatcluster.yaml`); the CRD checks run as soon as it is committed"
    )


@pytest.fixture(scope="session")
def crd() -> dict[str, Any]:
    """The ChatCluster CRD, parsed; skips (with a notice) while it has not been generated."""
    if not CRD_FILE.is_file():
        pytest.skip(crd_missing_reason())
    docs = [d for d in yaml.safe_load_all(CRD_FILE.read_text()) if d]
    assert len(docs) == 1, f"{CRD_FILE} should hold exactly one document, has {len(docs)}"
    return docs[0]


def binary(name: str) -> Path | None:
    """A workspace binary built by `cargo build --workspace --bins`, or None."""
    path = TARGET_DIR / "debug" / name
    return path if path.is_file() and os.access(path, os.X_OK) else None


def venv_tool(name: str) -> str:
    """An executable installed into this virtual environment (kubectl, hadolint)."""
    import sys
    import sysconfig

    for directory in (sysconfig.get_path("scripts"), str(Path(sys.executable).parent)):
        candidate = Path(directory) / name
        if candidate.is_file():
            return str(candidate)
    found = shutil.which(name)
    if not found:
        pytest.fail(f"{name} is not installed: run tests/deploy/run.sh, which installs it")
    return found


def run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run a command, capturing its output as text; never raises on a non-zero exit."""
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, **kwargs)


def validate_strict(manifest: dict[str, Any], version: str) -> None:
    """kubernetes-validate in strict mode (unknown fields are errors), failing the test with the
    field path and the message."""
    try:
        validated = kubernetes_validate.validate(manifest, version, strict=True)
    except kubernetes_validate.ValidationError as e:
        path = "/".join(str(p) for p in e.absolute_path)
        pytest.fail(f"{manifest['kind']}/{manifest['metadata']['name']} at {path}: "
                    f"{e.message} (Kubernetes {e.version})")
    assert validated == version, f"validated against {validated}, not {version}"


def expected_field(path: Path) -> str:
    """The `# expect: FIELD` line of a fixture: the field its refusal must name."""
    for line in path.read_text().splitlines():
        if line.startswith("# expect:"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"{path} has no '# expect:' line")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--rbac-json",
        default=os.environ.get("ROOMSHARD_RBAC_JSON"),
        help="the operator's and node's API calls as JSON (tests/deploy/rbac.py describes the "
        "shape); default: the output of `roomshard-operator rbac`",
    )
