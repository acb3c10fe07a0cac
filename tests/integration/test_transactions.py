"""KAFKA_TRANSACTIONS=true on a real broker: results, dead letters and offsets in one transaction,
a transaction left open by a crash aborted and redone, a frozen instance fenced."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from typing import Any

import pytest
from aiokafka import TopicPartition

from devkit.emulator.app import Emulator
from devkit.produce import produce
from service.bootstrap import build_registrar
from tests.integration.harness import (
    committed,
    kafka_producer,
    numbered,
    read_records,
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
