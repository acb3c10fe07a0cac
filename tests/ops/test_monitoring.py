"""The alerting rules (promtool) and the Grafana dashboard, and that every metric they name exists
in the service's registry (service.ops.metrics.Metrics); the README documents every metric of that
registry and every alert. None of it names a metric by hand: the registry says what exists.
That a running service exports the series they query: tests/integration/test_monitoring_live.py."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.metrics_core import Metric

from service.ops.metrics import Metrics
from tests.ops.support import DEPLOY, load_yaml, run

ALERTS = DEPLOY / "prometheus" / "alerts.yaml"
ALERT_TESTS = DEPLOY / "prometheus" / "alerts.test.yaml"
DASHBOARD = DEPLOY / "grafana" / "amili-registrar.json"
README = DEPLOY.parent / "README.md"

_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("", "_count", "_sum", "_created"),
}
# FastStream's faststream_* names too: its middleware declares them on /metrics, yet no series of
# them ever appears (consumption and publishing bypass FastStream), so nothing may query them.
METRIC_NAME = re.compile(r"\b((?:registrar|faststream)_[a-zA-Z0-9_]+)")


def _series_names(name: str, kind: str) -> set[str]:
    base = name.removesuffix("_total") if kind == "counter" else name
    return {base + suffix for suffix in _SUFFIXES.get(kind, ("",))}


def registry_metrics() -> list[Metric]:
    """The metric families of a fresh registry: what the service exports of its own."""
    return list(Metrics().registry.collect())


def exported_name(metric: Metric) -> str:
    """The name a metric goes by in queries and the README: a counter's with ``_total``."""
    return f"{metric.name}_total" if metric.type == "counter" else metric.name


def known_series() -> set[str]:
    """Every series name the service's registry exposes."""
    exposition = generate_latest(Metrics().registry).decode()
    names: set[str] = set()
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            names |= _series_names(name, kind)
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
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
    assert "SUCCESS: 18 rules found" in result.stdout


def test_promtool_test_rules(promtool: str) -> None:
    result = run([promtool, "test", "rules", ALERT_TESTS.name], cwd=ALERT_TESTS.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_alerts_are_documented() -> None:
    rules = alert_rules()
    assert {rule["alert"] for rule in rules} == {
        "AmiliRegistrarTargetDown",
        "AmiliRegistrarTargetMissing",
        "AmiliRegistrarConsumerLagGrowing",
        "AmiliRegistrarNoProgress",
        "AmiliRegistrarCircuitOpen",
        "AmiliRegistrarAuthenticationFailing",
        "AmiliRegistrarAmiliMisconfigured",
        "AmiliRegistrarDeadLetters",
        "AmiliRegistrarKafkaUnreachable",
        "AmiliRegistrarDeadLetteringFailing",
        "AmiliRegistrarPartitionStuck",
        "AmiliRegistrarEventsTooLarge",
        "AmiliRegistrarProcessingErrors",
        "AmiliRegistrarLedgerFailing",
        "AmiliRegistrarConflicts",
        "AmiliRegistrarAmiliErrors",
        "AmiliRegistrarAmiliSlow",
        "AmiliRegistrarAmiliRateLimited",
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


@pytest.mark.parametrize("metric", registry_metrics(), ids=exported_name)
def test_dashboard_has_a_panel_for_every_metric(metric: Metric) -> None:
    series = f"{metric.name}_bucket" if metric.type == "histogram" else exported_name(metric)
    assert any(re.search(rf"\b{series}\b", expr) for expr in dashboard_expressions()), (
        f"no panel shows {series}"
    )


def test_dashboard_shows_latency_percentiles() -> None:
    histograms = [metric.name for metric in registry_metrics() if metric.type == "histogram"]
    assert histograms
    for histogram in histograms:
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


def _readme_section(heading: str) -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index(f"\n### {heading}\n")
    end = text.find("\n#", start + 1)
    return text[start : end if end >= 0 else len(text)]


def _table_first_cells(section: str) -> set[str]:
    """The backquoted names in the first column of the section's tables (labels dropped)."""
    cells = re.findall(r"^\| `([a-zA-Z0-9_:]+)(?:\{[^`]*\})?` \|", section, flags=re.MULTILINE)
    return set(cells)


def test_the_readme_documents_every_metric_of_the_registry() -> None:
    documented = _table_first_cells(_readme_section("Metrics"))
    exported = {exported_name(metric) for metric in registry_metrics()}
    assert exported - documented == set(), "metrics missing from the README's metrics table"
    assert documented - exported == set(), "the README's metrics table names metrics that do not exist"


def test_the_readme_runbook_has_every_alert() -> None:
    documented = _table_first_cells(_readme_section("Runbook"))
    assert documented == {rule["alert"] for rule in alert_rules()}


def test_the_registry_has_no_faststream_series() -> None:
    """FastStream's middleware adds its own when the service is wired; the registry itself has none
    (they would count nothing: see METRIC_NAME)."""
    assert all(name.startswith("registrar_") for name in known_series())


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
