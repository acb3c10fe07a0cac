"""Exactly one registration per invoice, whatever fails: proofs on the real broker, the emulator
with its faults, and both ledgers (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import copy
import os
import signal
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from devkit.emulator.app import Emulator
from devkit.produce import create_topics, produce
from service.bootstrap import build_registrar
from service.circuit import CircuitState
from service.config import Settings
from service.ledger.factory import open_ledger
from tests.integration.harness import (
    fresh_ledger_url,
    numbered,
    read_topic,
    service_process,
    set_faults,
    settings_for,
    wait_for,
)

pytestmark = pytest.mark.kafka

Served = tuple[str, Emulator]


@pytest.fixture(params=["sqlite", "postgres"])
async def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    async with fresh_ledger_url(
        request.param, tmp_path, lambda: str(request.getfixturevalue("postgres_dsn"))
    ) as url:
        yield url


def registrations(amili: Emulator) -> Counter[str]:
    return Counter(f"{doc['creditor']}/{doc['invoice_number']}" for doc in amili.store.all())


async def with_amili_hanging(
    bootstrap: str, amili_url: str, suffix: str, *, ledger_url: str, **overrides: Any
) -> Settings:
    """Amili stores every registration and never answers; settings of a service that waits on its
    POSTs (55 s, within what the default lease allows) meanwhile."""
    await set_faults(amili_url, hang_rate=1.0, hang_mode="sleep", hang_seconds=600)
    waiting = {"amili_total_timeout_seconds": 55, "amili_read_timeout_seconds": 55}
    return settings_for(bootstrap, amili_url, suffix, ledger_url=ledger_url, **(waiting | overrides))


async def test_kill_9_after_amili_stored_it_then_restart_registers_once(
    kafka_bootstrap_servers: str,
    emulator: Served,
    sample_events: list[dict[str, Any]],
    unique_name: str,
    ledger_url: str,
    tmp_path: Path,
) -> None:
    amili_url, amili = emulator
    # A claim of a dead instance is taken over once its lease has run out. The lease must outlast
    # an attempt (a look-up and a POST): the first instance is killed long before its POST times out.
    settings = await with_amili_hanging(
        kafka_bootstrap_servers, amili_url, unique_name, ledger_url=ledger_url, claim_lease_seconds=3,
        amili_total_timeout_seconds=1.4, amili_read_timeout_seconds=1.4,
    )  # fmt: skip
    await produce(
        kafka_bootstrap_servers, settings.invoice_created_topic, [sample_events[0]], show_progress=False
    )
    first = service_process(settings, tmp_path / "first.log")
    try:
        await wait_for(lambda: sum(registrations(amili).values()) == 1, wait_seconds=60)
    finally:
        os.kill(first.pid, signal.SIGKILL)  # between Amili storing it and the ledger recording it
        first.wait()

    await set_faults(amili_url, hang_rate=0.0)
    second = service_process(settings, tmp_path / "second.log")
    try:
        results = await read_topic(kafka_bootstrap_servers, settings.registration_result_topic, 1, 60)
        await asyncio.sleep(1.0)  # room for a second result, were one coming
        results = await read_topic(kafka_bootstrap_servers, settings.registration_result_topic, 2, 2)
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(30)
    assert registrations(amili) == {f"{sample_events[0]['data']['creditor']}/DEMO-1001": 1}
    assert [r["data"]["outcome"] for r in results] == ["registered"]
    assert results[0]["data"]["amili"]["_id"] == amili.store.all()[0]["_id"]


async def test_a_stop_that_runs_out_of_time_gives_back_the_claims_that_never_went_to_amili(
    kafka_bootstrap_servers: str,
    emulator: Served,
    sample_events: list[dict[str, Any]],
    unique_name: str,
    ledger_url: str,
    tmp_path: Path,
) -> None:
    amili_url, amili = emulator
    # The two POSTs hold both places at Amili; two more events are held, claimed, waiting for one.
    settings = await with_amili_hanging(
        kafka_bootstrap_servers, amili_url, unique_name, ledger_url=ledger_url, max_in_flight=2,
        shutdown_grace_seconds=0.5,
    )  # fmt: skip
    numbers = [f"GIVE-BACK-{i}" for i in range(4)]
    events = [numbered(sample_events[0], number) for number in numbers]
    await produce(kafka_bootstrap_servers, settings.invoice_created_topic, events, show_progress=False)
    creditor = sample_events[0]["data"]["creditor"]
    ledger = open_ledger(ledger_url)
    service = service_process(settings, tmp_path / "service.log")
    try:
        await wait_for(lambda: sum(registrations(amili).values()) == 2, wait_seconds=60)
        await ledger.open()  # the service made it by now

        async def all_claimed() -> bool:
            entries = [await ledger.get(creditor=creditor, invoice_number=n) for n in numbers]
            return all(entry is not None for entry in entries)

        await wait_for(all_claimed, wait_seconds=30)
    finally:
        service.send_signal(signal.SIGTERM)  # the grace of 0.5 s runs out: all four are abandoned
        await asyncio.to_thread(service.wait, 30)
    try:
        posted = {doc["invoice_number"] for doc in amili.store.all()}
        entries = {n: await ledger.get(creditor=creditor, invoice_number=n) for n in numbers}
    finally:
        await ledger.close()
    assert len(posted) == 2
    for number, entry in entries.items():
        assert entry is not None
        assert entry.state == "in_flight"
        if number in posted:  # its POST reached Amili: the claim stays until its lease lapses
            assert entry.claimed_by is not None
        else:  # it never went to Amili: given back, the next owner takes it over at once
            assert entry.claimed_by is None
            assert entry.claimed_at is None


async def test_duplicates_register_once_and_other_content_is_a_conflict(
    kafka_bootstrap_servers: str,
    emulator: Served,
    sample_events: list[dict[str, Any]],
    unique_name: str,
    ledger_url: str,
) -> None:
    amili_url, amili = emulator
    settings = settings_for(kafka_bootstrap_servers, amili_url, unique_name, ledger_url=ledger_url)
    original = numbered(sample_events[0], "EO-1")
    same_event_again = copy.deepcopy(original)
    same_invoice_new_event = numbered(sample_events[0], "EO-1", event_id="evt-EO-1-resent")
    other_content = numbered(sample_events[0], "EO-1", event_id="evt-EO-1-changed")
    other_content["data"]["lines"][0]["unit_price"] = 1.0
    other_content["data"]["lines"][0]["total_excluding_vat"] = 1.0
    events = [original, same_event_again, same_invoice_new_event, other_content]
    await produce(kafka_bootstrap_servers, settings.invoice_created_topic, events, show_progress=False)

    async with build_registrar(settings).app:
        results = await read_topic(kafka_bootstrap_servers, settings.registration_result_topic, 4, 60)

    assert sum(registrations(amili).values()) == 1
    outcomes = [r["data"]["outcome"] for r in results]
    assert outcomes == ["registered", "registered", "registered", "conflict"]
    registered = [r for r in results if r["data"]["outcome"] == "registered"]
    assert len({r["id"] for r in registered}) == 1  # one outcome, one event id: consumers deduplicate
    assert len({r["data"]["amili"]["_case"] for r in registered}) == 1
    assert results[3]["data"]["inbound_event_id"] == "evt-EO-1-changed"
    assert amili.store.all()[0]["matrix"][0]["unit_price"] == 399  # nothing overwritten


async def test_an_outage_of_amili_pauses_and_everything_is_registered_after(
    kafka_bootstrap_servers: str,
    emulator: Served,
    sample_events: list[dict[str, Any]],
    unique_name: str,
    tmp_path: Path,
) -> None:
    amili_url, amili = emulator
    settings = settings_for(
        kafka_bootstrap_servers,
        amili_url,
        unique_name,
        ledger_url=f"sqlite:///{tmp_path}/ledger.db",
        max_attempts=3,
        circuit_failure_threshold=3,
        circuit_open_seconds=1,
        retry_max_seconds=1,
    )
    events = [numbered(sample_events[i % 5], f"OUT-{i}") for i in range(20)]
    await set_faults(amili_url, error_503_rate=1.0)
    await produce(kafka_bootstrap_servers, settings.invoice_created_topic, events, show_progress=False)
    registrar = build_registrar(settings)
    async with registrar.app:
        states: set[CircuitState] = set()
        for _ in range(300):  # Amili is down for 30 s
            states.add(registrar.circuit.state)
            await asyncio.sleep(0.1)
        assert CircuitState.OPEN in states
        assert registrations(amili) == Counter()
        await set_faults(amili_url, error_503_rate=0.0)
        results = await read_topic(kafka_bootstrap_servers, settings.registration_result_topic, 20, 60)
        letters = await read_topic(kafka_bootstrap_servers, settings.dead_letter_topic, 1, 1)
    assert Counter(r["data"]["outcome"] for r in results) == {"registered": 20}
    assert letters == []
    assert len(registrations(amili)) == 20


async def test_refused_credentials_pause_consumption_until_the_key_works(
    kafka_bootstrap_servers: str,
    emulator: Served,
    sample_events: list[dict[str, Any]],
    unique_name: str,
    tmp_path: Path,
) -> None:
    amili_url, amili = emulator
    settings = settings_for(
        kafka_bootstrap_servers,
        amili_url,
        unique_name,
        ledger_url=f"sqlite:///{tmp_path}/ledger.db",
        unauthorized_retry_seconds=1,
    )
    await set_faults(amili_url, fail_next_count=6, fail_next_status=401)
    events = [numbered(sample_events[i % 5], f"AUTH-{i}") for i in range(5)]
    await produce(kafka_bootstrap_servers, settings.invoice_created_topic, events, show_progress=False)
    registrar = build_registrar(settings)
    async with registrar.app:
        await wait_for(lambda: not registrar.circuit.authorized)
        assert not registrar.circuit.accepting or registrar.circuit.state is CircuitState.HALF_OPEN
        results = await read_topic(kafka_bootstrap_servers, settings.registration_result_topic, 5, 60)
        assert registrar.circuit.authorized
    assert Counter(r["data"]["outcome"] for r in results) == {"registered": 5}
    assert len(registrations(amili)) == 5


async def test_two_instances_sharing_postgres_across_a_rebalance_register_each_invoice_once(
    kafka_bootstrap_servers: str,
    emulator: Served,
    sample_events: list[dict[str, Any]],
    unique_name: str,
    tmp_path: Path,
    postgres_dsn: str,
) -> None:
    amili_url, amili = emulator
    async with fresh_ledger_url("postgres", tmp_path, lambda: postgres_dsn) as url:
        settings = settings_for(
            kafka_bootstrap_servers, amili_url, unique_name, ledger_url=url, max_in_flight=16
        )
        await create_topics(kafka_bootstrap_servers, {settings.invoice_created_topic: 6})
        total = 300
        events = [numbered(sample_events[i % 5], f"TWO-{i}") for i in range(total)]
        # Every invoice twice, under different event ids, so both instances may see it.
        events += [numbered(e, e["data"]["invoice_number"], event_id=f"{e['id']}-again") for e in events]
        await set_faults(amili_url, latency_ms=20)
        await produce(kafka_bootstrap_servers, settings.invoice_created_topic, events, show_progress=False)

        first = build_registrar(settings)
        async with first.app:
            await wait_for(lambda: sum(registrations(amili).values()) >= 50, 60)
            second = build_registrar(settings)
            async with second.app:  # joins the group: a rebalance in the middle of the stream
                results = await read_topic(
                    kafka_bootstrap_servers, settings.registration_result_topic, 2 * total, 120
                )
    counts = registrations(amili)
    assert len(counts) == total
    assert max(counts.values()) == 1
    assert len(results) >= 2 * total
    by_invoice: dict[str, set[str]] = {}
    for result in results:
        data = result["data"]
        assert data["outcome"] == "registered"
        by_invoice.setdefault(data["invoice_number"], set()).add(data["amili"]["_id"])
    assert all(len(ids) == 1 for ids in by_invoice.values())
