"""The pause after a failed metadata refresh, and that aiokafka still refreshes where it is paced."""

from __future__ import annotations

import asyncio
import inspect
import time

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.client import AIOKafkaClient

from service.kafka.pacing import pace_failed_metadata_refresh, paced_consumer, paced_producer


class FakeClient:
    def __init__(self, answers: list[bool]) -> None:
        self.answers = answers
        self.calls = 0

    async def _metadata_update(self, cluster: object, topics: object) -> bool:
        self.calls += 1
        return self.answers.pop(0)


async def test_a_failed_refresh_is_followed_by_a_pause_and_a_good_one_is_not() -> None:
    client = FakeClient([False, True])
    pace_failed_metadata_refresh(client, pause_seconds=0.2)

    started = time.monotonic()
    assert await client._metadata_update(None, None) is False
    failed_took = time.monotonic() - started
    started = time.monotonic()
    assert await client._metadata_update(None, None) is True
    good_took = time.monotonic() - started

    assert failed_took >= 0.2
    assert good_took < 0.1
    assert client.calls == 2


async def test_refreshes_against_an_unreachable_broker_are_paced() -> None:
    """A real client against a closed port: every refresh fails at once; paced, a few a second."""
    client = AIOKafkaClient(bootstrap_servers="127.0.0.1:1")
    pace_failed_metadata_refresh(client, pause_seconds=0.2)
    refreshes = 0
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        await client._metadata_update(client.cluster, [])
        refreshes += 1
    await client.close()
    assert refreshes <= 6


async def test_the_clients_made_by_the_service_are_paced() -> None:
    consumer = paced_consumer(lambda: AIOKafkaConsumer(bootstrap_servers="127.0.0.1:1"))()
    producer = paced_producer(lambda: AIOKafkaProducer(bootstrap_servers="127.0.0.1:1"))()
    for client in (consumer._client, producer.client):
        assert client._metadata_update.__name__ == "paced"
    await asyncio.sleep(0)


def test_aiokafka_refreshes_metadata_through_the_method_that_is_paced() -> None:
    """If a new aiokafka refreshes another way, the pacing would silently do nothing."""
    synchronizer = inspect.getsource(AIOKafkaClient._md_synchronizer)
    assert "self._metadata_update(" in synchronizer
