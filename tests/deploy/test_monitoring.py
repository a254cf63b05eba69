"""The chart's alerts (PrometheusRule) and Grafana dashboard: every expression parses with a real
PromQL parser (promql-parser, the Rust parser bound for Python), and every metric it reads is one
the code exports.

The exported names are tests/deploy/fixtures/metrics/{node,operator}.txt. They are not kept by
hand: the node's and the operator's unit tests render their real /metrics registries and fail
when a list differs from what a scrape shows (`ROOMSHARD_WRITE_METRICS=1 cargo test -p node
--lib metrics` and `... -p operator --lib metrics` rewrite them).
"""

from __future__ import annotations

import json
import re
from typing import Any

import promql_parser
import pytest

from conftest import FIXTURES, RELEASE_NAMESPACE, binary, render

METRIC_LISTS = {name: FIXTURES / "metrics" / f"{name}.txt" for name in ("node", "operator")}

#: Grafana's own variables, replaced by what Grafana would put there before parsing.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}


def exported() -> set[str]:
    names: set[str] = set()
    for path in METRIC_LISTS.values():
        names |= {line.strip() for line in path.read_text().splitlines() if line.strip()}
    return names


def metrics_of(expr: str) -> set[str]:
    """The metric names `expr` reads, from the parser's syntax tree (raises on a parse error)."""
    tree = promql_parser.parse(expr)
    found: set[str] = set()

    def visit(node: Any, *_: Any) -> bool:
        if isinstance(node, promql_parser.VectorSelector):
            if node.name:
                found.add(node.name)
            else:
                found.add(f"<no metric name in {node}>")
        return True

    promql_parser.walk(tree, visit)
    return found


def alert_rules(rendered) -> list[dict[str, Any]]:
    rule = rendered["monitoring"].one("PrometheusRule")
    return [r for group in rule["spec"]["groups"] for r in group["rules"]]


def dashboard(rendered) -> dict[str, Any]:
    cm = rendered["monitoring"].one("ConfigMap", "roomshard-roomshard-operator-dashboard")
    return json.loads(cm["data"]["roomshard.json"])


def dashboard_queries(board: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target and every query variable, Grafana variables
    replaced; `label_values(EXPR, label)` variables contribute their EXPR."""
    queries = []
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            queries.append((f"panel {panel['title']!r} {target['refId']}", target["expr"]))
    for var in board["templating"]["list"]:
        if var["type"] != "query":
            continue
        query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        inner = re.fullmatch(r"label_values\((.*),\s*[a-zA-Z_]+\)", query)
        assert inner, f"variable {var['name']}: not a label_values query: {query}"
        queries.append((f"variable {var['name']}", inner.group(1)))
    replaced = []
    for where, expr in queries:
        for variable, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, value)
        replaced.append((where, expr))
    return replaced


def test_the_committed_metric_lists_hold_the_histograms_an_operator_needs():
    names = exported()
    for histogram in (
        "roomshard_handoff_duration_seconds",
        "roomshard_send_fanout_seconds",
        "roomshard_operator_reconcile_duration_seconds",
        "roomshard_cluster_drain_duration_seconds",
    ):
        for suffix in ("_bucket", "_sum", "_count"):
            assert histogram + suffix in names, f"{histogram}{suffix} is not exported"


def test_monitoring_is_off_by_default(rendered):
    kinds = {m["kind"] for m in rendered["defaults"].manifests}
    assert not kinds & {"PrometheusRule", "PodMonitor"}, kinds
    assert [m for m in rendered["defaults"].of_kind("ConfigMap")
            if m["metadata"]["name"].endswith("-dashboard")] == []


def test_the_rule_carries_the_additional_labels(rendered):
    rule = rendered["monitoring"].one("PrometheusRule")
    assert rule["metadata"]["namespace"] == RELEASE_NAMESPACE
    assert rule["metadata"]["labels"]["release"] == "prometheus"
    notes = rendered["monitoring"].notes
    assert "get prometheusrule roomshard-roomshard-operator" in notes, notes
    assert "roomshard-roomshard-operator-dashboard in namespace grafana" in notes, notes
    assert "Monitoring:" not in rendered["defaults"].notes


def test_there_are_alerts_for_drains_owners_slow_consumers_and_peer_links(rendered):
    names = {r["alert"] for r in alert_rules(rendered)}
    assert {"RoomshardDrainStuck", "RoomshardShardsWithoutOwner", "RoomshardSlowConsumersRising",
            "RoomshardPeerLinksDown"} <= names, names


def test_every_alert_expression_parses_and_reads_only_exported_metrics(rendered):
    names = exported()
    for rule in alert_rules(rendered):
        used = metrics_of(rule["expr"])
        assert used, f"{rule['alert']} reads no metric: {rule['expr']}"
        unknown = used - names
        assert not unknown, f"{rule['alert']} reads {sorted(unknown)}, which nothing exports"
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]


def test_the_slow_consumer_threshold_comes_from_the_values():
    r = render({"prometheusRule": {"enabled": True, "slowConsumersPerSecond": 2.5}})
    rules = {x["alert"]: x for g in r.one("PrometheusRule")["spec"]["groups"] for x in g["rules"]}
    expr = rules["RoomshardSlowConsumersRising"]["expr"]
    assert expr.endswith("> 2.5"), expr
    metrics_of(expr)


def test_the_check_catches_a_broken_expression_and_an_unknown_metric():
    # The checks above would be worthless if the parser accepted anything.
    with pytest.raises(ValueError):
        metrics_of("sum(rate(roomshard_frames_in_total[5m])")
    with pytest.raises(ValueError):
        metrics_of("rat(roomshard_frames_in_total[5m])")
    assert metrics_of("roomshard_peers_connected < roomshard_peer_links") - exported() == {
        "roomshard_peer_links"
    }


def test_the_dashboard_config_map_is_labelled_for_the_grafana_sidecar(rendered):
    cm = rendered["monitoring"].one("ConfigMap", "roomshard-roomshard-operator-dashboard")
    assert cm["metadata"]["namespace"] == "grafana"
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    other = render({"grafanaDashboard": {"enabled": True, "labels": {"dashboards": "roomshard"}}})
    cm = other.one("ConfigMap", "roomshard-roomshard-operator-dashboard")
    assert cm["metadata"]["namespace"] == RELEASE_NAMESPACE
    assert cm["metadata"]["labels"]["dashboards"] == "roomshard"


def test_every_dashboard_query_parses_and_reads_only_exported_metrics(rendered):
    board = dashboard(rendered)
    names = exported()
    queries = dashboard_queries(board)
    assert len(queries) >= 20, len(queries)
    used_everywhere: set[str] = set()
    for where, expr in queries:
        try:
            used = metrics_of(expr)
        except ValueError as e:
            pytest.fail(f"{where}: {e}: {expr}")
        unknown = used - names
        assert not unknown, f"{where} reads {sorted(unknown)}, which nothing exports: {expr}"
        used_everywhere |= used
    # The four histograms the dashboard exists for are on it.
    for histogram in ("roomshard_handoff_duration_seconds_bucket", "roomshard_send_fanout_seconds_bucket",
                      "roomshard_operator_reconcile_duration_seconds_bucket",
                      "roomshard_cluster_drain_duration_seconds_bucket"):
        assert histogram in used_everywhere, histogram


def test_dashboard_panels_have_unique_ids_and_a_datasource_variable(rendered):
    board = dashboard(rendered)
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids)), ids
    assert board["uid"] == "roomshard"
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    for panel in board["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
            assert panel.get("description"), f"panel {panel['title']!r} has no description"


def scraped_names(text: str) -> set[str]:
    """Series names of a Prometheus text scrape (the Rust tests' `exported_names`)."""
    return {re.split(r"[{ ]", line, maxsplit=1)[0] for line in text.splitlines()
            if line.strip() and not line.startswith("#")}


def test_a_running_node_exports_what_the_committed_list_says():
    # The list again, from a real process: a standalone node started here and scraped.
    import subprocess
    import urllib.request

    node = binary("roomshard-node")
    if node is None:
        pytest.skip("NOTICE: target/debug/roomshard-node is not built")
    process = subprocess.Popen([str(node), "--listen", "127.0.0.1:0"], stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True)
    try:
        # The node prints its address once its listener is bound (the kernel queues the
        # connection until the server accepts it).
        first = process.stdout.readline() if process.stdout else ""
        found = re.search(r"listening on http://(\S+) ", first)
        assert found, f"roomshard-node printed {first!r}"
        with urllib.request.urlopen(f"http://{found.group(1)}/metrics", timeout=30) as response:
            content_type = response.headers["Content-Type"]
            text = response.read().decode()
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert content_type.startswith("text/plain; version=0.0.4"), content_type
    listed = {line.strip() for line in METRIC_LISTS["node"].read_text().splitlines() if line.strip()}
    live = scraped_names(text)
    assert live <= listed, f"scraped but not in the list: {sorted(live - listed)}"
    # Only the per-shard hand-off histogram waits for its first hand-off to appear.
    missing = {n for n in listed - live if not n.startswith("roomshard_handoff_duration_seconds")}
    assert missing == set(), f"in the list but not scraped: {sorted(missing)}"
