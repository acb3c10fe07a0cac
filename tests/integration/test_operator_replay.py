"""``replay`` against the real broker and the emulator: the service registers N invoices, stops, its
group is moved back, and the second run registers nothing again (the ledger) while publishing the
same results (same event ids) again."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from devkit.emulator.app import Emulator
from devkit.produce import create_topics, produce
from service.bootstrap import build_registrar
from service.cli import main
from service.operator.errors import OperatorError
from service.operator.replay import Start, parse_from, replay
from tests.integration.harness import committed, numbered, read_topic, set_faults, settings_for, wait_for

pytestmark = pytest.mark.kafka

INVOICES = 6


async def amili_api_calls_left(amili_url: str) -> int:
    """The emulator's ``fail_next_count``: each API call to it takes one off."""
    async with httpx.AsyncClient(base_url=amili_url) as http:
        return int((await http.get("/_admin/faults")).json()["fail_next_count"])


async def test_replay_from_earliest_registers_nothing_twice_and_publishes_the_same_results_again(
    kafka_bootstrap_servers: str,
    emulator: tuple[str, Emulator],
    sample_events: list[dict[str, Any]],
    unique_name: str,
) -> None:
    amili_url, amili = emulator
    settings = settings_for(kafka_bootstrap_servers, amili_url, unique_name)
    topic, results_topic = settings.invoice_created_topic, settings.registration_result_topic
    await create_topics(kafka_bootstrap_servers, {topic: 2, results_topic: 1, settings.dead_letter_topic: 1})
    events = [numbered(sample_events[i % 5], f"REPLAY-{i}") for i in range(INVOICES)]
    await produce(kafka_bootstrap_servers, topic, events, show_progress=False)

    async def all_committed() -> bool:
        found = await committed(kafka_bootstrap_servers, settings.consumer_group_id, topic, 2)
        return sum(offset or 0 for offset in found.values()) == INVOICES

    async with build_registrar(settings).app:
        first = await read_topic(kafka_bootstrap_servers, results_topic, INVOICES)
        await wait_for(all_committed)
        # While the service runs its group has a member: replay refuses, a dry run shows the plan.
        with pytest.raises(OperatorError, match=r"has 1 active member\(s\).*stop the service first"):
            await replay(settings, Start("earliest"))
        dry = await replay(settings, Start("earliest"), dry_run=True)
        assert (dry.applied, dry.rereads, len(dry.group_state.members)) == (False, INVOICES, 1)
    assert len(first) == INVOICES
    assert {r["data"]["outcome"] for r in first} == {"registered"}
    assert len(amili.store.all()) == INVOICES

    report = await replay(settings, parse_from("earliest"), wait_seconds=15)
    assert report.applied
    assert (report.moved, report.rereads) == (2, INVOICES)
    assert all(plan.new_offset == 0 for plan in report.plans)
    assert await committed(kafka_bootstrap_servers, settings.consumer_group_id, topic, 2) == {0: 0, 1: 0}

    # Any call to Amili from now on would be answered 503: the second run must need none.
    await set_faults(amili_url, fail_next_count=1000, fail_next_status=503)
    async with build_registrar(settings).app:
        both = await read_topic(kafka_bootstrap_servers, results_topic, 2 * INVOICES)
        await wait_for(all_committed)
    again = both[INVOICES:]
    assert len(again) == INVOICES
    assert len(amili.store.all()) == INVOICES  # N registrations, not 2N
    assert await amili_api_calls_left(amili_url) == 1000  # and no call to Amili at all

    def by_invoice(results: list[dict[str, Any]]) -> dict[str, tuple[str, str, str]]:
        return {r["data"]["invoice_number"]: (r["id"], r["type"], r["data"]["amili"]["_id"]) for r in results}

    assert by_invoice(again) == by_invoice(first)  # same event ids, same Amili ids


async def test_replay_from_a_time_through_the_command(
    kafka_bootstrap_servers: str,
    emulator: tuple[str, Emulator],
    sample_events: list[dict[str, Any]],
    unique_name: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    amili_url, amili = emulator
    settings = settings_for(kafka_bootstrap_servers, amili_url, unique_name)
    topic, results_topic = settings.invoice_created_topic, settings.registration_result_topic
    await create_topics(kafka_bootstrap_servers, {topic: 1, results_topic: 1, settings.dead_letter_topic: 1})
    before = [numbered(sample_events[0], f"EARLY-{i}") for i in range(2)]
    after = [numbered(sample_events[1], f"LATE-{i}") for i in range(3)]
    await produce(kafka_bootstrap_servers, topic, before, show_progress=False)
    await asyncio.sleep(0.3)
    since = datetime.now(UTC)
    await asyncio.sleep(0.3)
    await produce(kafka_bootstrap_servers, topic, after, show_progress=False)

    async with build_registrar(settings).app:
        first = await read_topic(kafka_bootstrap_servers, results_topic, 5)
    assert len(first) == 5

    for name, value in {
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap_servers,
        "INVOICE_CREATED_TOPIC": topic,
        "CONSUMER_GROUP_ID": settings.consumer_group_id,
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("KAFKA_SECURITY_PROTOCOL", raising=False)
    stamp = since.isoformat().replace("+00:00", "Z")

    assert (
        await asyncio.to_thread(main, ["replay", "--from", stamp, "--dry-run", "--json", "--wait", "15"]) == 0
    )
    (planned,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert (planned["committed"], planned["new_offset"], planned["records_to_reread"]) == (5, 2, 3)
    assert planned["applied"] is False

    assert await asyncio.to_thread(main, ["replay", "--from", stamp, "--wait", "15"]) == 0
    out = capsys.readouterr().out
    assert "moved 1 partition(s) back: 3 record(s) are read again" in out

    async with build_registrar(settings).app:
        results = await read_topic(kafka_bootstrap_servers, results_topic, 8)
    # Only the events at or after the time were read again; their results keep their event ids.
    ids = {r["data"]["invoice_number"]: r["id"] for r in first}
    again = {r["data"]["invoice_number"]: r["id"] for r in results[5:]}
    assert sorted(again) == ["LATE-0", "LATE-1", "LATE-2"]
    assert all(ids[number] == event_id for number, event_id in again.items())
    assert len(amili.store.all()) == 5

    # An offset on one partition; then nothing to move, and the group is left as it is.
    assert await asyncio.to_thread(main, ["replay", "--from", "9", "--partition", "0", "--json"]) == 0
    (unchanged,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert (unchanged["new_offset"], unchanged["applied"]) == (None, False)
    assert "past the end (5)" in unchanged["note"]
