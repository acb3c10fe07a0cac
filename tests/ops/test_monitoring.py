"""The alerting rules (promtool) and the Grafana dashboard, and that every metric they name exists:
in the service's registry (service.ops.metrics.Metrics) or among FastStream's own metrics."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest

from service.ops.metrics import Metrics
from tests.ops.support import DEPLOY, load_yaml, run

ALERTS = DEPLOY / "prometheus" / "alerts.yaml"
ALERT_TESTS = DEPLOY / "prometheus" / "alerts.test.yaml"
DASHBOARD = DEPLOY / "grafana" / "amili-registrar.json"

# FastStream's Prometheus middleware: name -> type.
FASTSTREAM_METRICS = {
    "faststream_received_messages_total": "counter",
    "faststream_processed_messages_duration_seconds": "histogram",
    "faststream_published_messages_total": "counter",
}
_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("", "_count", "_sum", "_created"),
}
METRIC_NAME = re.compile(r"\b((?:registrar|faststream)_[a-zA-Z0-9_]+)")


def _series_names(name: str, kind: str) -> set[str]:
    base = name.removesuffix("_total") if kind == "counter" else name
    return {base + suffix for suffix in _SUFFIXES.get(kind, ("",))}


def known_series() -> set[str]:
    """Every series name the service's registry and FastStream expose."""
    exposition = generate_latest(Metrics().registry).decode()
    names: set[str] = set()
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            names |= _series_names(name, kind)
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    for name, kind in FASTSTREAM_METRICS.items():
        names |= _series_names(name, kind)
    return names


def alert_rules() -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = [rule for group in load_yaml(ALERTS)["groups"] for rule in group["rules"]]
    return rules


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return loaded


def dashboard_panels() -> list[dict[str, Any]]:
    panels: list[dict[str, Any]] = []
    for panel in dashboard()["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))  # collapsed rows keep theirs inside
    return panels


def dashboard_expressions() -> list[str]:
    return [target["expr"] for panel in dashboard_panels() for target in panel.get("targets", [])]


# --- alerts ----------------------------------------------------------------------------------------


def test_promtool_check_rules(promtool: str) -> None:
    result = run([promtool, "check", "rules", str(ALERTS)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 8 rules found" in result.stdout


def test_promtool_test_rules(promtool: str) -> None:
    result = run([promtool, "test", "rules", ALERT_TESTS.name], cwd=ALERT_TESTS.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_alerts_are_documented() -> None:
    rules = alert_rules()
    assert {rule["alert"] for rule in rules} == {
        "AmiliRegistrarConsumerLagGrowing",
        "AmiliRegistrarNoProgress",
        "AmiliRegistrarCircuitOpen",
        "AmiliRegistrarAuthenticationFailing",
        "AmiliRegistrarDeadLetters",
        "AmiliRegistrarKafkaUnreachable",
        "AmiliRegistrarDeadLetteringFailing",
        "AmiliRegistrarPartitionStuck",
    }
    for rule in rules:
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert {"summary", "description", "runbook"} <= set(rule["annotations"]), rule["alert"]


def test_every_alert_is_tested_firing_and_some_not_firing() -> None:
    cases = [case for test in load_yaml(ALERT_TESTS)["tests"] for case in test.get("alert_rule_test", [])]
    firing = {case["alertname"] for case in cases if case.get("exp_alerts")}
    silent = {case["alertname"] for case in cases if not case.get("exp_alerts")}
    alerts = {rule["alert"] for rule in alert_rules()}
    assert firing == alerts, f"not tested firing: {alerts - firing}"
    assert silent, "at least one case where an alert must not fire"


# --- dashboard -------------------------------------------------------------------------------------


def test_dashboard_structure() -> None:
    board = dashboard()
    assert board["schemaVersion"] >= 36
    assert board["uid"] == "amili-registrar"
    variables = {variable["name"]: variable for variable in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    panels = dashboard_panels()
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    for panel in panels:
        if panel.get("targets"):
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
            assert all(target["datasource"]["uid"] == "${datasource}" for target in panel["targets"])
            assert all(target["expr"].strip() for target in panel["targets"]), panel["title"]


@pytest.mark.parametrize(
    "metric",
    [
        "registrar_events_consumed_total",
        "registrar_registrations_total",
        "registrar_amili_request_duration_seconds_bucket",
        "registrar_consumer_lag",
        "registrar_event_to_result_seconds_bucket",
        "registrar_retries_total",
        "registrar_dead_letters_total",
        "registrar_circuit_state",
        "registrar_amili_auth_ok",
        "registrar_events_in_flight",
        "registrar_registrations_in_flight",
        "registrar_ledger_errors_total",
        "registrar_kafka_broker_up",
        "registrar_kafka_sends_waiting",
        "registrar_kafka_errors_total",
        "registrar_kafka_last_commit_timestamp_seconds",
        "registrar_kafka_last_produce_timestamp_seconds",
        "registrar_dead_letter_failures_total",
        "registrar_oldest_unfinished_event_seconds",
        "registrar_processing_errors_total",
    ],
)
def test_dashboard_has_a_panel_for(metric: str) -> None:
    assert any(metric in expr for expr in dashboard_expressions()), f"no panel shows {metric}"


def test_dashboard_shows_latency_percentiles() -> None:
    for histogram in ("registrar_amili_request_duration_seconds", "registrar_event_to_result_seconds"):
        quantiles = {
            match
            for expr in dashboard_expressions()
            if f"{histogram}_bucket" in expr
            for match in re.findall(r"histogram_quantile\((0\.\d+)", expr)
        }
        assert quantiles == {"0.5", "0.95", "0.99"}, histogram


def test_dashboard_expressions_are_valid_promql(promtool: str, tmp_path: Path) -> None:
    """promtool parses each panel query, written as a recording rule with Grafana's variables filled."""
    substitutions = {"$__rate_interval": "5m", "$__interval": "1m", "$namespace": ".*", "$pod": ".*"}
    rules = []
    for index, expr in enumerate(dashboard_expressions()):
        for variable, value in substitutions.items():
            expr = expr.replace(variable, value)
        assert "$" not in expr, expr
        rules.append({"record": f"dashboard:query_{index}", "expr": expr})
    rule_file = tmp_path / "dashboard-rules.yaml"
    rule_file.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}), encoding="utf-8")
    result = run([promtool, "check", "rules", str(rule_file)])
    assert result.returncode == 0, result.stdout + result.stderr


# --- metric names ----------------------------------------------------------------------------------


def test_the_registry_exposes_the_documented_metrics() -> None:
    names = known_series()
    assert "registrar_events_consumed_total" in names
    assert "registrar_amili_request_duration_seconds_bucket" in names
    assert "registrar_last_progress_timestamp_seconds" in names


@pytest.mark.parametrize("source", ["dashboard", "alerts"])
def test_every_metric_used_exists(source: str) -> None:
    if source == "dashboard":
        expressions = dashboard_expressions()
    else:
        expressions = [rule["expr"] for rule in alert_rules()]
    used = {name for expr in expressions for name in METRIC_NAME.findall(expr)}
    assert used, "the expressions name metrics"
    unknown = used - known_series()
    assert not unknown, f"{source} uses metrics that nothing exposes: {sorted(unknown)}"
