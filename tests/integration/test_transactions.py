"""KAFKA_TRANSACTIONS=true on a real broker: results, dead letters and offsets in one transaction,
a transaction left open by a crash aborted and redone, a frozen instance fenced."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from aiokafka import TopicPartition
from pydantic import SecretStr

from devkit.emulator.app import Emulator
from devkit.localkafka import free_port
from devkit.produce import create_topics, produce
from service.bootstrap import build_registrar
from service.events.record import InboundRecord
from service.kafka.engine import Processor
from service.processing import Answerable, Handled, Prepared, Route
from tests.integration.harness import (
    committed,
    kafka_producer,
    numbered,
    read_records,
    service_process,
    settings_for,
    wait_for,
)

pytestmark = pytest.mark.kafka

READ_COMMITTED = "read_committed"


def invoice_numbers(records: list[Any]) -> Counter[str]:
    return Counter(json.loads(record.value)["data"]["invoice_number"] for record in records)


async def test_results_dead_letters_and_offsets_are_committed_together(
    kafka_bootstrap_servers: str,
    emulator: tuple[str, Emulator],
    sample_events: list[dict[str, Any]],
    unique_name: str,
) -> None:
    amili_url, amili = emulator
    settings = settings_for(kafka_bootstrap_servers, amili_url, unique_name, kafka_transactions=True)
    events = [numbered(sample_events[0], f"TX-{n}") for n in range(20)]
    await produce(kafka_bootstrap_servers, settings.invoice_created_topic, events, show_progress=False)
    async with kafka_producer(kafka_bootstrap_servers) as producer:
        await producer.send_and_wait(settings.invoice_created_topic, b"not json")

    async with build_registrar(settings).app:
        results = await read_records(
            kafka_bootstrap_servers,
            settings.registration_result_topic,
            count=20,
            isolation_level=READ_COMMITTED,
        )
        dead = await read_records(
            kafka_bootstrap_servers, settings.dead_letter_topic, count=1, isolation_level=READ_COMMITTED
        )
        group, topic = settings.consumer_group_id, settings.invoice_created_topic

        async def all_committed() -> bool:
            return (await committed(kafka_bootstrap_servers, group, topic, 1))[0] == 21

        await wait_for(all_committed)

    assert invoice_numbers(results) == Counter({f"TX-{n}": 1 for n in range(20)})
    assert [record.value for record in dead] == [b"not json"]
    assert len(amili.store.all()) == 20


async def test_a_transaction_left_open_by_a_crash_is_aborted_and_its_events_redone(
    kafka_bootstrap_servers: str,
    emulator: tuple[str, Emulator],
    sample_events: list[dict[str, Any]],
    unique_name: str,
) -> None:
    """What a crash in the middle of a transaction leaves at the broker: results written and the
    offsets sent under the partition's transactional id, no commit. The next owner's
    initialisation aborts it: a read_committed consumer never sees those records, the offsets
    are not taken, and the events are processed and published again."""
    amili_url, amili = emulator
    settings = settings_for(kafka_bootstrap_servers, amili_url, unique_name, kafka_transactions=True)
    events = [numbered(sample_events[0], f"CRASH-{n}") for n in range(10)]
    topic, group = settings.invoice_created_topic, settings.consumer_group_id
    await produce(kafka_bootstrap_servers, topic, events, show_progress=False)

    crashed = kafka_producer(
        kafka_bootstrap_servers, transactional_id=f"{settings.transactional_id_prefix}-{topic}-0"
    )
    async with crashed as producer:
        await producer.begin_transaction()
        for n in range(10):
            value = json.dumps({"data": {"invoice_number": f"CRASH-{n}"}, "id": "from-the-crash"})
            await producer.send_and_wait(settings.registration_result_topic, value.encode())
        offsets = {TopicPartition(topic, 0): 10}
        await producer.send_offsets_to_transaction(offsets, group)
        # Neither commit nor abort: the instance is gone (stopping the producer sends no EndTxn).

    async with build_registrar(settings).app:

        async def all_committed() -> bool:
            return (await committed(kafka_bootstrap_servers, group, topic, 1))[0] == 10

        await wait_for(all_committed)
        results = await read_records(
            kafka_bootstrap_servers,
            settings.registration_result_topic,
            count=20,
            wait_seconds=3,
            isolation_level=READ_COMMITTED,
        )
        everything = await read_records(
            kafka_bootstrap_servers, settings.registration_result_topic, count=30, wait_seconds=3
        )

    assert invoice_numbers(results) == Counter({f"CRASH-{n}": 1 for n in range(10)})
    assert all(json.loads(record.value)["id"] != "from-the-crash" for record in results)
    assert len(everything) == 20  # the aborted records are in the log, read_uncommitted sees them
    assert len(amili.store.all()) == 10


async def test_a_killed_instance_publishes_nothing_twice(
    kafka_bootstrap_servers: str,
    emulator: tuple[str, Emulator],
    sample_events: list[dict[str, Any]],
    unique_name: str,
    tmp_path: Path,
) -> None:
    """SIGKILL after every event was registered, before their transaction: nothing of them is
    visible to a read_committed consumer, and the next instance publishes each result once."""
    amili_url, amili = emulator
    settings = settings_for(
        kafka_bootstrap_servers,
        amili_url,
        unique_name,
        kafka_transactions=True,
        kafka_transaction_interval_ms=60_000,
        ledger_url=SecretStr(f"sqlite:///{tmp_path}/ledger.db"),
    )
    events = [numbered(sample_events[0], f"KILL-{n}") for n in range(10)]
    topic, group = settings.invoice_created_topic, settings.consumer_group_id
    await produce(kafka_bootstrap_servers, topic, events, show_progress=False)
    process = service_process(settings, tmp_path / "service.log")
    try:
        await wait_for(lambda: len(amili.store.all()) == 10, wait_seconds=60)
        await asyncio.sleep(0.5)  # the last outcomes recorded
    finally:
        process.kill()
        process.wait()
    assert (
        await read_records(
            kafka_bootstrap_servers,
            settings.registration_result_topic,
            count=1,
            wait_seconds=2,
            isolation_level=READ_COMMITTED,
        )
        == []
    )

    async with build_registrar(settings.model_copy(update={"kafka_transaction_interval_ms": 100})).app:

        async def all_committed() -> bool:
            return (await committed(kafka_bootstrap_servers, group, topic, 1))[0] == 10

        await wait_for(all_committed)
    results = await read_records(
        kafka_bootstrap_servers,
        settings.registration_result_topic,
        count=20,
        wait_seconds=3,
        isolation_level=READ_COMMITTED,
    )
    assert invoice_numbers(results) == Counter({f"KILL-{n}": 1 for n in range(10)})
    assert len(amili.store.all()) == 10  # the ledger returned the recorded outcomes


async def test_an_instance_frozen_past_its_session_is_fenced(
    kafka_bootstrap_servers: str,
    emulator: tuple[str, Emulator],
    sample_events: list[dict[str, Any]],
    unique_name: str,
    tmp_path: Path,
) -> None:
    """Instance A finishes every event, then is frozen (SIGSTOP) before its transactions commit.
    The group gives its partitions to B, whose producers fence A's transactional ids; B publishes
    every result. Woken (SIGCONT), A tries to commit what it held and is refused: a read_committed
    consumer sees each result once, and the committed offsets stay B's."""
    amili_url, amili = emulator
    settings = settings_for(
        kafka_bootstrap_servers,
        amili_url,
        unique_name,
        kafka_transactions=True,
        kafka_transaction_interval_ms=60_000,
        kafka_session_timeout_ms=6000,
        ledger_url=SecretStr(f"sqlite:///{tmp_path}/ledger.db"),
    )
    topic, group = settings.invoice_created_topic, settings.consumer_group_id
    await create_topics(
        kafka_bootstrap_servers,
        {topic: 2, settings.registration_result_topic: 1, settings.dead_letter_topic: 1},
    )
    events = [numbered(sample_events[0], f"FROZEN-{n}") for n in range(20)]
    await produce(kafka_bootstrap_servers, topic, events, show_progress=False)
    log_file = tmp_path / "frozen.log"
    frozen = service_process(settings, log_file)
    try:
        await wait_for(lambda: len(amili.store.all()) == 20, wait_seconds=60)
        await asyncio.sleep(0.5)  # the last outcomes recorded
        os.kill(frozen.pid, signal.SIGSTOP)

        other = settings.model_copy(update={"kafka_transaction_interval_ms": 100, "http_port": free_port()})
        async with build_registrar(other).app:

            async def all_committed() -> bool:
                offsets = await committed(kafka_bootstrap_servers, group, topic, 2)
                return sum(offset or 0 for offset in offsets.values()) == 20

            await wait_for(all_committed, wait_seconds=60)
            os.kill(frozen.pid, signal.SIGCONT)
            await wait_for(lambda: "fenced" in log_file.read_text(), wait_seconds=30)
            await asyncio.sleep(2)  # whatever the woken instance does next
            offsets = await committed(kafka_bootstrap_servers, group, topic, 2)
    finally:
        os.kill(frozen.pid, signal.SIGCONT)
        frozen.terminate()
        frozen.wait(timeout=30)

    results = await read_records(
        kafka_bootstrap_servers,
        settings.registration_result_topic,
        count=40,
        wait_seconds=3,
        isolation_level=READ_COMMITTED,
    )
    assert invoice_numbers(results) == Counter({f"FROZEN-{n}": 1 for n in range(20)})
    assert sum(offset or 0 for offset in offsets.values()) == 20
    assert len(amili.store.all()) == 20


class HoldsOneInvoice:
    """Never finishes the event of one invoice: the events after it in its partition finish."""

    def __init__(self, inner: Processor, number: str) -> None:
        self.inner = inner
        self.number = number

    def route(self, record: InboundRecord) -> Route:
        return self.inner.route(record)

    def prepare(self, record: InboundRecord) -> Prepared:
        return self.inner.prepare(record)

    async def give_up(self, prepared: Prepared, error: BaseException) -> Handled:
        return await self.inner.give_up(prepared, error)

    async def handle(self, prepared: Prepared) -> Handled:
        if isinstance(prepared, Answerable) and prepared.key.invoice_number == self.number:
            await asyncio.Event().wait()
        return await self.inner.handle(prepared)


async def test_results_do_not_wait_for_an_earlier_event_and_are_not_published_again(
    kafka_bootstrap_servers: str,
    emulator: tuple[str, Emulator],
    sample_events: list[dict[str, Any]],
    unique_name: str,
) -> None:
    """The partition's first event is held: the offset stays at it, yet the nine after it are
    committed, listed in the offset's metadata. Stopped and started again, the service processes
    the held event and none of the nine a second time."""
    amili_url, amili = emulator
    settings = settings_for(kafka_bootstrap_servers, amili_url, unique_name, kafka_transactions=True)
    numbers = [f"HELD-{n}" for n in range(10)]
    topic, group = settings.invoice_created_topic, settings.consumer_group_id
    await produce(
        kafka_bootstrap_servers, topic, [numbered(sample_events[0], n) for n in numbers], show_progress=False
    )

    async with build_registrar(settings, around_processor=lambda inner: HoldsOneInvoice(inner, "HELD-0")).app:
        visible = await read_records(
            kafka_bootstrap_servers,
            settings.registration_result_topic,
            count=9,
            isolation_level=READ_COMMITTED,
        )
        assert invoice_numbers(visible) == Counter({number: 1 for number in numbers[1:]})
        assert (await committed(kafka_bootstrap_servers, group, topic, 1))[0] == 0

    async with build_registrar(settings).app:

        async def all_committed() -> bool:
            return (await committed(kafka_bootstrap_servers, group, topic, 1))[0] == 10

        await wait_for(all_committed)
    results = await read_records(
        kafka_bootstrap_servers,
        settings.registration_result_topic,
        count=20,
        wait_seconds=3,
        isolation_level=READ_COMMITTED,
    )
    assert invoice_numbers(results) == Counter({number: 1 for number in numbers})
    assert len(amili.store.all()) == 10
