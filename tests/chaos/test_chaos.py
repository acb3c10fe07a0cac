"""The chaos run (``amili-registrar chaos``): a short one against the real broker, and its event plan."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from service.devtools.chaos import POISON_KINDS, plan_events, sample_templates

SHORT_RUN_SECONDS = 180


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


def _cells(row: str) -> list[str]:
    return [cell.strip() for cell in row.strip("│").split("│")]
