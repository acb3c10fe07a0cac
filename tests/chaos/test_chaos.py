"""The chaos run (``amili-registrar chaos``): a short one against the real broker, one with three
replicas on PostgreSQL through a broker outage, and its event plan."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from devkit.chaos.plan import POISON_KINDS, plan_events, sample_templates
from devkit.chaos.verdict import Observed, OutageStats, once_checks, outage_checks

SHORT_RUN_SECONDS = 180
OUTAGE_RUN_SECONDS = 200  # the run gives up at --timeout 100 and then reports; this is a backstop


def test_the_plan_has_unique_invoices_re_sends_of_earlier_events_and_poison() -> None:
    plan = plan_events(1000, seed=7, run_tag="t", templates=sample_templates())

    kinds = Counter(event.kind for event in plan.events)
    assert kinds == {"invoice": 1000, "duplicate": 50, "poison": 10}
    originals = [event for event in plan.events if event.kind == "invoice"]
    assert len({event.invoice for event in originals}) == 1000
    assert {event.invoice for event in originals} == plan.invoices
    assert plan.registrable
    assert plan.rejectable  # the samples include an invoice the business rules refuse
    assert not plan.registrable & plan.rejectable
    assert plan.duplicates_same_id + plan.duplicates_new_id == 50
    assert plan.duplicates_same_id == plan.duplicates_new_id == 25
    seen: set[str | None] = set()
    for event in plan.events:
        if event.kind == "invoice":
            seen.add(event.invoice)
        elif event.kind == "duplicate":
            assert event.invoice in seen  # a re-send of an event sent before
    assert {event.rule for event in plan.events if event.kind == "poison"} == set(POISON_KINDS)
    again = plan_events(1000, seed=7, run_tag="t", templates=sample_templates())
    assert [(e.kind, e.invoice, e.key) for e in again.events] == [
        (e.kind, e.invoice, e.key) for e in plan.events
    ]


@pytest.mark.kafka
def test_a_short_chaos_run_passes_every_check(kafka_bootstrap_servers: str, tmp_path: Path) -> None:
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap_servers, "COLUMNS": "160"}
    command = [
        sys.executable, "-m", "service", "chaos",
        "--invoices", "300", "--kill-every-min", "1", "--kill-every-max", "3", "--rate", "60",
        "--timeout", "120", "--workdir", str(tmp_path),
    ]  # fmt: skip
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = process.communicate(timeout=SHORT_RUN_SECONDS)
    except subprocess.TimeoutExpired:
        process.terminate()  # SIGTERM: the run stops what it started before it exits
        stdout, stderr = process.communicate(timeout=60)
    output = stdout + stderr
    assert process.returncode == 0, output

    rows = [line for line in stdout.splitlines() if line.startswith("│")]
    verdicts = {cells[0]: cells[3] for cells in (_cells(row) for row in rows)}
    checked = {name: verdict for name, verdict in verdicts.items() if verdict}
    assert set(checked.values()) == {"PASS"}, output
    for name in (
        "invoices sent",
        "distinct registrations at Amili",
        "duplicate registrations at Amili",
        "invoices without a result",
        "dead letters (distinct events)",
    ):
        assert checked.get(name) == "PASS", output
    kills = re.search(r"kills (\d+) \(SIGKILL\)", stdout)
    assert kills is not None, output
    assert int(kills.group(1)) >= 1, output


def test_the_plan_can_re_send_registrable_invoices_with_other_content() -> None:
    templates = sample_templates()
    plan = plan_events(1000, seed=7, run_tag="t", templates=templates, conflict_share=0.02)
    conflicts = [event for event in plan.events if event.kind == "conflict"]
    assert len(conflicts) == plan.conflicts == len(plan.conflicted) == 20
    assert plan.conflicted <= plan.registrable
    for key in plan.conflicted:
        assert plan.expected_outcomes(key) == {"registered", "conflict"}
    first_seen: dict[str | None, int] = {}
    for index, event in enumerate(plan.events):
        first_seen.setdefault(event.invoice, index)
        if event.kind == "conflict":
            assert first_seen[event.invoice] < index  # after the invoice it conflicts with
    without = plan_events(1000, seed=7, run_tag="t", templates=templates)
    assert [(e.kind, e.invoice) for e in without.events] == [
        (e.kind, e.invoice)
        for e in plan_events(1000, seed=7, run_tag="t", templates=templates, conflict_share=0).events
    ]


def test_the_outage_checks_hold_the_service_to_its_bounds() -> None:
    outage = OutageStats(signal="SIGTERM", planned_seconds=25, started_at=10.0, back_at=40.0)
    outage.pending_invoices = 12
    outage.log_lines = {"r1": 100, "r2": 3}  # 30 s down: at most 100 lines a replica
    outage.log_window_seconds, outage.log_window_complete = 60.0, True
    outage.away_seconds, outage.cpu_cores = 25.0, {"r1": 0.10, "r2": 0.01}
    checks = {check.name: check for check in outage_checks(outage, all_in_seconds=52.5)}
    assert checks["invoices waiting for a result when the broker stopped"].passed is True
    lines = checks["log lines of the service during the outage"]
    assert (lines.expected, lines.passed) == ("<= 100/replica (200/min down)", True)
    assert checks["CPU of the service while the broker was away"].passed is True
    assert checks["time from broker back to every result in"].actual == "12.5s"

    outage.log_lines["r2"], outage.cpu_cores["r1"] = 101, 0.11
    checks = {check.name: check for check in outage_checks(outage, all_in_seconds=None)}
    assert checks["log lines of the service during the outage"].passed is False
    assert checks["CPU of the service while the broker was away"].passed is False
    assert checks["time from broker back to every result in"].actual == "never (timed out)"

    never = OutageStats(signal="SIGTERM", planned_seconds=25, not_started="the run timed out before it")
    (only,) = outage_checks(never, all_in_seconds=None)
    assert only.passed is False
    assert "never started" in only.actual


def _result(key: str) -> bytes:
    creditor, number = key.split("/")
    return json.dumps(
        {"data": {"creditor": creditor, "invoice_number": number, "outcome": "registered"}}
    ).encode()


def _dead_letter(offset: int) -> list[tuple[str, bytes]]:
    return [
        ("dlq.rule", b"json"),
        ("dlq.topic", b"in"),
        ("dlq.partition", b"0"),
        ("dlq.offset", str(offset).encode()),
    ]


def test_with_transactions_every_event_must_have_exactly_one_record() -> None:
    plan = plan_events(100, seed=3, run_tag="t", templates=sample_templates())
    observed = Observed()
    for event in plan.events:
        if event.kind == "poison":
            observed.add_dead_letter(_dead_letter(plan.events.index(event)), "in")
        else:
            assert event.invoice is not None
            observed.add_result(_result(event.invoice))
    checks = {check.name.split(" (")[0]: check for check in once_checks(plan, observed, transactions=True)}
    assert {name: check.passed for name, check in checks.items()} == {
        "result records": True,
        "duplicate result records": True,
        "events without their own result record": True,
        "duplicate dead-letter records": True,
    }

    some = next(event for event in plan.events if event.kind == "invoice")
    poison = next(event for event in plan.events if event.kind == "poison")
    assert some.invoice is not None
    observed.add_result(_result(some.invoice))  # a kill published it again
    observed.add_dead_letter(_dead_letter(plan.events.index(poison)), "in")
    checks = {check.name.split(" (")[0]: check for check in once_checks(plan, observed, transactions=True)}
    assert checks["duplicate result records"].actual == "1"
    assert checks["duplicate result records"].passed is False
    assert checks["duplicate dead-letter records"].passed is False
    assert checks["result records"].passed is False
    # Without transactions the same figures are for information only (at least once).
    assert {check.passed for check in once_checks(plan, observed, transactions=False)} == {None}


@pytest.mark.kafka
def test_a_short_chaos_run_with_transactions_has_one_record_per_event(
    kafka_bootstrap_servers: str, tmp_path: Path
) -> None:
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap_servers, "COLUMNS": "250"}
    command = [
        sys.executable, "-m", "service", "chaos", "--transactions",
        "--invoices", "300", "--kill-every-min", "1", "--kill-every-max", "3", "--rate", "30",
        "--timeout", "150", "--workdir", str(tmp_path),
    ]  # fmt: skip
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = process.communicate(timeout=SHORT_RUN_SECONDS + 30)
    except subprocess.TimeoutExpired:
        process.terminate()
        stdout, stderr = process.communicate(timeout=60)
    output = stdout + stderr
    rows = [line for line in stdout.splitlines() if line.startswith("│")]
    verdicts = {cells[0]: cells[3] for cells in (_cells(row) for row in rows)}
    for name in (
        "result records (one per event; read_committed)",
        "duplicate result records (read_committed)",
        "duplicate dead-letter records (read_committed)",
        "invoices without a result",
        "duplicate registrations at Amili",
    ):
        assert verdicts.get(name) == "PASS", f"{name}: {verdicts.get(name)}\n{output}"
    assert process.returncode == 0, output
    kills = re.search(r"kills (\d+) \(SIGKILL\)", stdout)
    assert kills is not None, output
    assert int(kills.group(1)) >= 1, output


@pytest.mark.kafka
def test_a_broker_outage_with_three_replicas_on_postgres(postgres_dsn: str, tmp_path: Path) -> None:
    """The run's own broker is stopped (SIGTERM) mid-run for 25 s and started again on its port and
    data; three replicas in one group must get through it without a restart, a lost invoice, a dead
    letter of a valid invoice or a duplicate, quietly and idle while it is away."""
    env = {key: value for key, value in os.environ.items() if key != "KAFKA_BOOTSTRAP_SERVERS"}
    env["COLUMNS"] = "250"  # one table row a line
    command = [
        sys.executable, "-m", "service", "chaos",
        "--invoices", "300", "--conflicts", "0.01", "--replicas", "3", "--ledger", "postgres",
        "--postgres-dsn", postgres_dsn, "--no-kills", "--broker-outage", "25", "--outage-after", "3",
        "--rate", "30", "--timeout", "100", "--workdir", str(tmp_path),
    ]  # fmt: skip
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = process.communicate(timeout=OUTAGE_RUN_SECONDS)
    except subprocess.TimeoutExpired:
        process.terminate()  # SIGTERM: the run stops what it started before it exits
        stdout, stderr = process.communicate(timeout=60)
    output = stdout + stderr
    rows = [line for line in stdout.splitlines() if line.startswith("│")]
    verdicts = {cells[0]: cells[3] for cells in (_cells(row) for row in rows)}
    assert "broker outage: SIGTERM at" in stdout, output
    for name in (
        "invoices waiting for a result when the broker stopped",
        "log lines of the service during the outage",
        "CPU of the service while the broker was away",
        "service restarts (3 replicas)",
        "dead letters for valid invoices",
        "invoices without a result",
        "events left unconsumed at the end",
        "duplicate registrations at Amili",
    ):
        assert verdicts.get(name) == "PASS", f"{name}: {verdicts.get(name)}\n{output}"
    assert process.returncode == 0, output


def _cells(row: str) -> list[str]:
    return [cell.strip() for cell in row.strip("│").split("│")]
