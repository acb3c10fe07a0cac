"""``invoice show``, ``reconcile`` and ``results republish`` as an operator runs them (``main``, with
the service's environment variables), against a real broker, the Amili emulator and both ledgers."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from devkit.emulator.app import Emulator
from devkit.emulator.settings import DEMO_API_KEY
from devkit.produce import create_missing_topics, produce
from service.amili.client import AmiliClient
from service.amili.mapping import amili_ids, to_registration
from service.amili.models import InvoiceRegistrationRequest
from service.bootstrap import build_registrar
from service.cli import main
from service.config import Settings
from service.domain.outcomes import Outcome
from service.domain.rules import TransformDefaults
from service.events.contract import (
    InvoiceCreated,
    RegistrationResult,
    decode_invoice_created,
    result_event,
)
from service.ledger.factory import open_ledger
from service.registration import fingerprint
from tests.fakes import structured_record
from tests.fixtures.ledger import opened
from tests.integration.harness import fresh_ledger_url, numbered, read_records, read_topic, settings_for

pytestmark = pytest.mark.kafka

Served = tuple[str, Emulator]


@pytest.fixture(params=["sqlite", "postgres"])
async def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    async with fresh_ledger_url(
        request.param, tmp_path, lambda: str(request.getfixturevalue("postgres_dsn"))
    ) as url:
        yield url


def configure(monkeypatch: pytest.MonkeyPatch, settings: Settings) -> None:
    """The environment of the service configured like ``settings``, for the command."""
    for name, value in settings.model_dump().items():
        if value is None:
            monkeypatch.delenv(name.upper(), raising=False)
            continue
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        monkeypatch.setenv(name.upper(), str(value))


async def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[dict[str, Any]]]:
    """``amili-registrar ARGV --json`` in-process (on a thread of its own: it runs its own loop);
    its exit code and JSON lines."""
    capsys.readouterr()
    code = await asyncio.to_thread(main, [*argv, "--json"])
    captured = capsys.readouterr()
    lines = [json.loads(line) for line in captured.out.splitlines() if line.strip()]
    assert code in (0, 3, 4), captured.err
    return code, lines


def registration_of(event: dict[str, Any]) -> InvoiceRegistrationRequest:
    decoded = decode_invoice_created(structured_record(event))
    assert isinstance(decoded, InvoiceCreated)
    request = to_registration(decoded.invoice, TransformDefaults())
    assert isinstance(request, InvoiceRegistrationRequest)
    return request


async def test_republished_results_keep_the_ids_and_keys_of_the_originals(
    kafka_bootstrap_servers: str,
    emulator: Served,
    sample_events: list[dict[str, Any]],
    unique_name: str,
    ledger_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    amili_url, _ = emulator
    settings = settings_for(kafka_bootstrap_servers, amili_url, unique_name, ledger_url=ledger_url)
    topic = settings.registration_result_topic
    events = [numbered(sample_events[0], f"RP-{n}") for n in range(3)]
    await produce(kafka_bootstrap_servers, settings.invoice_created_topic, events, show_progress=False)
    async with build_registrar(settings).app:
        await read_topic(kafka_bootstrap_servers, topic, 3)
    originals = await read_records(kafka_bootstrap_servers, topic, count=3)
    creditor = json.loads(originals[0].value)["data"]["creditor"]
    configure(monkeypatch, settings)

    code, named = await run(capsys, "results", "republish", "--invoice", f"{creditor}/RP-1")
    assert code == 0
    assert [line["invoice_number"] for line in named] == ["RP-1"]
    code, filtered = await run(
        capsys, "results", "republish", "--since", "2000-01-01", "--creditor", creditor
    )
    assert code == 0
    assert sorted(line["invoice_number"] for line in filtered) == ["RP-0", "RP-1", "RP-2"]

    records = await read_records(kafka_bootstrap_servers, topic, count=8, wait_seconds=5)
    assert len(records) == 7  # three originals, one named, three filtered: nothing else
    first = {json.loads(record.value)["id"]: record for record in originals}
    ids = Counter(json.loads(record.value)["id"] for record in records)
    number_of = {
        event_id: json.loads(record.value)["data"]["invoice_number"] for event_id, record in first.items()
    }
    assert {number_of[event_id]: count for event_id, count in ids.items()} == {
        "RP-0": 2,
        "RP-1": 3,
        "RP-2": 2,
    }
    for record in records:
        event = json.loads(record.value)
        original = first[event["id"]]
        assert record.key == original.key == f"{creditor}/{event['data']['invoice_number']}".encode()
        assert list(record.headers) == list(original.headers)
        assert event["data"] == json.loads(original.value)["data"]
        assert event["type"] == "amili-registrar.registration.registered.v1"
    assert {line["event_id"] for line in filtered} == set(first)

    # Those results agree with Amili.
    code, [shown] = await run(capsys, "invoice", "show", creditor, "RP-2")
    assert code == 0
    assert shown["agreement"] == "agree"
    ids = shown["ledger"]["amili"]
    assert ids == {name: shown["amili"][name] for name in ids}
    assert shown["amili"]["case"]["state"]  # the emulator answers GET /cases/{id}
    assert shown["ledger"]["result_published"] is True


async def test_reconcile_settles_an_invoice_whose_answer_was_lost(
    kafka_bootstrap_servers: str,
    emulator: Served,
    sample_events: list[dict[str, Any]],
    unique_name: str,
    ledger_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    amili_url, amili = emulator
    settings = settings_for(kafka_bootstrap_servers, amili_url, unique_name, ledger_url=ledger_url)
    topic = settings.registration_result_topic
    await create_missing_topics(kafka_bootstrap_servers, {topic: 1})
    event = numbered(sample_events[0], "LOST-1")
    request = registration_of(event)
    creditor = request.creditor
    lease = timedelta(seconds=settings.claim_lease_seconds)
    # An instance claimed the invoice, POSTed it, Amili stored it, and the instance died before the
    # answer came: the record is in flight, its lease long over.
    async with opened(open_ledger(ledger_url)) as ledger:
        await ledger.claim(
            creditor=creditor,
            invoice_number="LOST-1",
            fingerprint=fingerprint(request),
            event_id=event["id"],
            owner="replica-gone",
            now=datetime.now(UTC) - lease - timedelta(minutes=1),
            lease=lease,
        )
    async with AmiliClient(amili_url, SecretStr(DEMO_API_KEY)) as client:
        receipt = await client.register(request)
    configure(monkeypatch, settings)

    code, [shown] = await run(capsys, "invoice", "show", creditor, "LOST-1")
    assert (code, shown["agreement"]) == (3, "disagree")
    assert shown["ledger"]["state"] == "in_flight"
    assert shown["ledger"]["owner"] == "replica-gone"
    assert shown["ledger"]["lease_left_seconds"] < 0
    assert "reconcile" in shown["detail"]
    code, [_, dry] = await run(capsys, "reconcile", "--dry-run")
    assert (code, dry["settled"]) == (0, 1)

    code, lines = await run(capsys, "reconcile")

    assert code == 0
    [settled, summary] = lines
    assert (settled["invoice_number"], settled["status"]) == ("LOST-1", "settled")
    assert summary == {"kind": "summary", "settled": 1, "left": 0, "held": 0, "error": 0}
    expected = RegistrationResult(
        outcome="registered",
        creditor=creditor,
        invoice_number="LOST-1",
        inbound_event_id=event["id"],
        amili=amili_ids(receipt),
    )
    records = await read_records(kafka_bootstrap_servers, topic, count=2, wait_seconds=5)
    assert len(records) == 1
    published = json.loads(records[0].value)
    assert published["id"] == result_event(expected, time=datetime.now(UTC)).id == settled["event_id"]
    assert published["data"] == expected.model_dump(mode="json", exclude_none=True)
    assert records[0].key == f"{creditor}/LOST-1".encode()
    async with opened(open_ledger(ledger_url)) as ledger:
        entry = await ledger.get(creditor=creditor, invoice_number="LOST-1")
    assert entry is not None
    assert (entry.outcome, entry.result_published) == (Outcome.REGISTERED, True)
    assert len(amili.store.all()) == 1  # looked up, never POSTed

    # Settled: the ledger and Amili agree, and another run finds nothing to do.
    code, [shown] = await run(capsys, "invoice", "show", creditor, "LOST-1")
    assert (code, shown["agreement"]) == (0, "agree")
    code, [summary] = await run(capsys, "reconcile")
    assert summary["settled"] == 0
    assert len(await read_records(kafka_bootstrap_servers, topic, count=2, wait_seconds=3)) == 1

    # Amili loses it: the ledger alone says registered.
    async with httpx.AsyncClient(base_url=amili_url) as http:
        (await http.delete("/_admin/registrations")).raise_for_status()
    code, [shown] = await run(capsys, "invoice", "show", creditor, "LOST-1")
    assert (code, shown["agreement"], shown["amili"]) == (3, "disagree", None)

    # Neither knows it.
    code, [shown] = await run(capsys, "invoice", "show", creditor, "NEVER-SEEN")
    assert (code, shown["agreement"], shown["ledger"], shown["amili"]) == (4, "not_found", None, None)


async def test_reconcile_leaves_an_invoice_amili_never_got(
    kafka_bootstrap_servers: str,
    emulator: Served,
    sample_events: list[dict[str, Any]],
    unique_name: str,
    ledger_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    amili_url, _ = emulator
    settings = settings_for(kafka_bootstrap_servers, amili_url, unique_name, ledger_url=ledger_url)
    await create_missing_topics(kafka_bootstrap_servers, {settings.registration_result_topic: 1})
    event = numbered(sample_events[0], "NEVER-POSTED")
    request = registration_of(event)
    async with opened(open_ledger(ledger_url)) as ledger:
        await ledger.claim(
            creditor=request.creditor,
            invoice_number="NEVER-POSTED",
            fingerprint=fingerprint(request),
            event_id=event["id"],
            owner="replica-gone",
            now=datetime.now(UTC) - timedelta(hours=1),
            lease=timedelta(seconds=settings.claim_lease_seconds),
        )
    configure(monkeypatch, settings)

    code, [shown] = await run(capsys, "invoice", "show", request.creditor, "NEVER-POSTED")
    assert (code, shown["agreement"]) == (0, "agree")  # registered in neither
    code, [left, summary] = await run(capsys, "reconcile")

    assert code == 0
    assert (left["status"], summary["left"]) == ("left", 1)
    async with opened(open_ledger(ledger_url)) as ledger:
        entry = await ledger.get(creditor=request.creditor, invoice_number="NEVER-POSTED")
    assert entry is not None
    assert (entry.outcome, entry.claimed_by) == (None, "replica-gone")
    records = await read_records(
        kafka_bootstrap_servers, settings.registration_result_topic, count=1, wait_seconds=3
    )
    assert records == []
