"""A consumer stopped after handling an event, before committing it, gets the event again."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from devkit.emulator.app import Emulator
from devkit.produce import produce
from service.bootstrap import build_registrar
from service.events.record import InboundRecord
from service.kafka.engine import Processor
from service.processing import Handled, Prepared, Route
from tests.integration.harness import committed_offset, read_topic, settings_for

pytestmark = pytest.mark.kafka


class StopsBeforeCommit:
    """Handles the record fully (registered, result published), then never returns: the consumer
    is stopped at the point between publishing the result and committing the offset."""

    def __init__(self, inner: Processor) -> None:
        self.inner = inner
        self.handled = asyncio.Event()

    def route(self, record: InboundRecord) -> Route:
        return self.inner.route(record)

    def prepare(self, record: InboundRecord) -> Prepared:
        return self.inner.prepare(record)

    async def give_up(self, prepared: Prepared, error: BaseException) -> Handled:
        return await self.inner.give_up(prepared, error)

    async def handle(self, prepared: Prepared) -> Handled:
        await self.inner.handle(prepared)
        self.handled.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


async def test_an_event_handled_but_not_committed_is_delivered_again(
    kafka_bootstrap_servers: str,
    emulator: tuple[str, Emulator],
    sample_events: list[dict[str, Any]],
    unique_name: str,
) -> None:
    amili_url, amili = emulator
    settings = settings_for(kafka_bootstrap_servers, amili_url, unique_name)
    await produce(
        kafka_bootstrap_servers, settings.invoice_created_topic, [sample_events[2]], show_progress=False
    )

    stopper: list[StopsBeforeCommit] = []

    def stop_before_commit(inner: Processor) -> Processor:
        stopper.append(StopsBeforeCommit(inner))
        return stopper[0]

    first = build_registrar(settings, around_processor=stop_before_commit)
    async with first.app:
        await asyncio.wait_for(stopper[0].handled.wait(), timeout=30)
    # Stopped: the handler was cancelled after its result went out, before the commit.
    topic = settings.invoice_created_topic
    # Nothing past the unfinished event (offset 0) was committed.
    assert await committed_offset(kafka_bootstrap_servers, settings.consumer_group_id, topic) in (None, 0)
    assert len(await read_topic(kafka_bootstrap_servers, settings.registration_result_topic, 1)) == 1

    async with build_registrar(settings).app:
        results = await read_topic(kafka_bootstrap_servers, settings.registration_result_topic, 2)

    assert len(results) == 2, "the event was not delivered again"
    assert results[0]["id"] == results[1]["id"]  # the same outcome, the same result event id
    assert results[0]["data"] == results[1]["data"]
    assert len(amili.store.all()) == 1  # redelivered, yet registered once
    assert await committed_offset(kafka_bootstrap_servers, settings.consumer_group_id, topic) == 1
