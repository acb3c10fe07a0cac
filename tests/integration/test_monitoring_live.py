"""The dashboard and the alerts against the real thing: every query they make finds data in a real
Prometheus scraping the running service after traffic.

Method. The service runs as its own process (as in test_operations.py) against the real broker and
the Amili emulator; a real Prometheus server scrapes its /metrics every second under the job
``amili-registrar``. The traffic: the shipped sample events (registered, and one rejected) and a
record that is not JSON (a dead letter). Once every result and the dead letter are out:

- every PromQL expression of the dashboard (each panel's targets, and the metric inside each
  template variable's ``label_values(...)``), with Grafana's variables filled in (``$namespace`` and
  ``$pod`` as ``.*``, ``$__rate_interval``, ``$__interval`` and ``$__range`` as ``1m``), must return a
  non-empty result;
- every alert expression must be accepted by the server, and each metric selector inside it must
  return data: an alert is meant to be empty while all is well, but the series it reads must exist;
- every alert expression with its comparisons against a number removed (``> 0``, ``== 2``...) must
  return data too, except where ``unless`` or ``absent(...)`` make it empty by design when healthy.

Nothing here names a metric: the queries come from deploy/grafana/amili-registrar.json and
deploy/prometheus/alerts.yaml. A series that only a fault would create (kafka errors, ledger errors,
conflicts, processing errors, Amili 5xx) passes because the service creates its known label values at
0 on start (service/ops/metrics.py); a query of a series nobody exports (FastStream's, a renamed
metric) fails here. Prometheus is polled until all hold or a minute passes (rates need two scrapes).
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
from pathlib import Path
from typing import Any

import httpx
import pytest

from devkit.emulator.app import Emulator
from devkit.produce import produce
from tests.fixtures.prometheus import query
from tests.integration.harness import kafka_producer, read_records, service_process, settings_for, wait_for
from tests.ops.test_monitoring import alert_rules, dashboard, dashboard_expressions

pytestmark = pytest.mark.kafka

GRAFANA_VARIABLES = {
    "$__rate_interval": "1m",
    "$__interval": "1m",
    "$__range": "1m",
    "$namespace": ".*",
    "$pod": ".*",
}
AGGREGATIONS = {
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk", "topk",
    "quantile", "limitk", "limit_ratio",
}  # fmt: skip
KEYWORDS = {"and", "or", "unless", "bool", "offset", "atan2", "inf", "nan"}
LABEL_LISTS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
COMPARISON = re.compile(r"\s*(?:==|!=|>=|<=|>|<)\s*(?:bool\s+)?-?\d+(?:\.\d+)?(?:e[+-]?\d+)?\b")
"""A comparison against a number literal: the filter that keeps an alert empty while all is well."""
_IDENTIFIER = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


def grafana_filled(expression: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expression = expression.replace(variable, value)
    assert "$" not in expression, f"a Grafana variable left unfilled: {expression}"
    return expression


def _closing(text: str, start: int, opening: str, closing: str) -> int:
    """The index just past the bracket matching ``text[start]`` (quoted strings skipped)."""
    depth, i = 0, start
    while i < len(text):
        char = text[i]
        if char in "\"'":
            i = text.index(char, i + 1)  # label values here hold no escaped quotes
        elif char == opening:
            depth += 1
        elif char == closing:
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    raise ValueError(f"unbalanced {opening} in {text!r}")


def selectors(expression: str) -> list[str]:
    """The vector selectors of a PromQL expression (metric name and label matchers, without
    ranges or offsets), by a small scanner: identifiers that are neither functions, aggregations,
    keywords nor label names of ``by (...)``, ``on (...)`` and the like."""
    found: list[str] = []
    i = 0
    while i < len(expression):
        char = expression[i]
        if char in "\"'":
            i = expression.index(char, i + 1) + 1
        elif char == "[":
            i = _closing(expression, i, "[", "]")
        elif char == "{":  # a selector without a metric name
            end = _closing(expression, i, "{", "}")
            found.append(expression[i:end])
            i = end
        elif char.isdigit() or (char == "." and expression[i + 1 : i + 2].isdigit()):
            while i < len(expression) and (expression[i].isalnum() or expression[i] in ".+-"):
                if expression[i] in "+-" and expression[i - 1] not in "eE":
                    break
                i += 1
        elif match := _IDENTIFIER.match(expression, i):
            name, i = match.group(), match.end()
            rest = expression[i:].lstrip()
            if name in LABEL_LISTS:
                i = _closing(expression, expression.index("(", i), "(", ")") if rest.startswith("(") else i
            elif name in AGGREGATIONS or name in KEYWORDS or rest.startswith("("):
                continue
            elif rest.startswith("{"):
                start = expression.index("{", i)
                i = _closing(expression, start, "{", "}")
                found.append(name + expression[start:i])
            else:
                found.append(name)
        else:
            i += 1
    return found


def test_the_selector_scanner() -> None:
    expression = (
        'sum by (namespace, le) (rate(a_bucket{x=~"1|2", y!="}"}[5m])) > 0.5 '
        "and on (namespace) (time() - max by (pod) (b)) > 300 unless c offset 10m "
        'or absent(up{job=~".*r.*"}) or histogram_quantile(0.99, d) / 1e3'
    )
    assert selectors(expression) == ['a_bucket{x=~"1|2", y!="}"}', "b", "c", 'up{job=~".*r.*"}', "d"]
    assert COMPARISON.sub("", "(x > 0) or y == 2 and z[5m] >= 1e3") == "(x) or y and z[5m]"


def dashboard_queries() -> list[str]:
    """Each panel's expressions, and the metric each template variable lists the values of."""
    queries = list(dashboard_expressions())
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            definition = (
                variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
            )
            match = re.fullmatch(r"label_values\((.*),\s*\w+\)", definition.strip())
            assert match, f"unexpected variable query: {definition}"
            queries.append(match.group(1))
    return [grafana_filled(expression) for expression in queries]


async def _valid(prometheus_url: str, expression: str) -> str | None:
    """The server's error for ``expression``, or ``None`` when it evaluates it."""
    async with httpx.AsyncClient(base_url=prometheus_url) as http:
        response = await http.get("/api/v1/query", params={"query": expression})
    return None if response.status_code == 200 else response.text


async def _missing(prometheus_url: str) -> list[str]:
    """What the dashboard and the alerts query that finds no data (empty: everything does)."""
    missing: list[str] = []
    for expression in dashboard_queries():
        if not await query(prometheus_url, expression):
            missing.append(f"dashboard: {expression}")
    for rule in alert_rules():
        expression = rule["expr"]
        error = await _valid(prometheus_url, expression)
        if error is not None:
            missing.append(f"{rule['alert']}: refused: {error}")
        for selector in selectors(expression):
            if not await query(prometheus_url, selector):
                missing.append(f"{rule['alert']}: no series {selector}")
        empty_when_healthy = "unless" in expression or "absent(" in expression
        unfiltered = COMPARISON.sub("", expression)
        if not empty_when_healthy and not await query(prometheus_url, unfiltered):
            missing.append(f"{rule['alert']}: no data without its comparisons: {unfiltered}")
    return missing


async def test_every_dashboard_query_and_alert_series_has_data_from_the_running_service(
    kafka_bootstrap_servers: str,
    emulator: tuple[str, Emulator],
    sample_events: list[dict[str, Any]],
    unique_name: str,
    prometheus: tuple[str, Path],
    tmp_path: Path,
) -> None:
    amili_url, _ = emulator
    prometheus_url, targets = prometheus
    settings = settings_for(
        kafka_bootstrap_servers, amili_url, unique_name, ledger_url=f"sqlite:///{tmp_path}/ledger.db"
    )
    targets.write_text(json.dumps([{"targets": [f"127.0.0.1:{settings.http_port}"]}]))
    await produce(kafka_bootstrap_servers, settings.invoice_created_topic, sample_events, show_progress=False)
    async with kafka_producer(kafka_bootstrap_servers) as producer:
        await producer.send_and_wait(settings.invoice_created_topic, b"not json", key=b"poison")
    process = service_process(settings, tmp_path / "service.log")
    try:
        results = await read_records(
            kafka_bootstrap_servers,
            settings.registration_result_topic,
            count=len(sample_events),
            wait_seconds=90,
        )
        assert len(results) == len(sample_events)
        outcomes = {json.loads(record.value)["data"]["outcome"] for record in results}
        assert {"registered", "rejected"} <= outcomes
        dead = await read_records(
            kafka_bootstrap_servers, settings.dead_letter_topic, count=1, wait_seconds=30
        )
        assert len(dead) == 1

        missing: list[str] = []

        async def everything_found() -> bool:
            nonlocal missing
            missing = await _missing(prometheus_url)
            return not missing

        try:
            await wait_for(everything_found, 60)
        except AssertionError:
            pytest.fail("queries without data:\n" + "\n".join(missing))
    finally:
        process.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(process.wait, 60) in (0, -signal.SIGTERM)
