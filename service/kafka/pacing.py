"""A pause after a failed metadata refresh in aiokafka's clients.

While a partition has no known leader, aiokafka's producer (its sender) and consumer (its fetcher)
ask for a metadata refresh and wait for it; when the broker cannot be reached the refresh fails at
once, and they ask again without pause (compare aio-libs/aiokafka#1155 for the fetcher). A broker
that stops with a controlled shutdown tells its clients that its partitions have no leader just
before it goes, so a broker outage can keep a client refreshing about 9,000 times a second, a full
core, for as long as it lasts (measured against the local broker; a chaos run with one replica
spent 0.996 of a core during a 60 s outage).

aiokafka offers no setting for it, so each client the service makes has its refresh wrapped: a
refresh that failed is followed by a pause before its waiters are told. Everyone waiting for the
refresh waits with it, which is the back-off aiokafka's own ``retry_backoff_ms`` applies elsewhere.
This reaches into the client's one method that every refresh goes through; the test of this module
fails if a new aiokafka moves it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

FAILED_REFRESH_PAUSE_SECONDS = 0.5


def pace_failed_metadata_refresh(client: Any, pause_seconds: float = FAILED_REFRESH_PAUSE_SECONDS) -> None:
    """Make ``client`` (an ``aiokafka.AIOKafkaClient``) pause after a metadata refresh that failed."""
    refresh: Callable[..., Awaitable[bool]] = client._metadata_update

    async def paced(*arguments: Any, **keywords: Any) -> bool:
        updated = await refresh(*arguments, **keywords)
        if not updated:
            await asyncio.sleep(pause_seconds)
        return updated

    client._metadata_update = paced


def paced_consumer(make: Callable[[], AIOKafkaConsumer]) -> Callable[[], AIOKafkaConsumer]:
    def make_paced() -> AIOKafkaConsumer:
        consumer = make()
        pace_failed_metadata_refresh(consumer._client)
        return consumer

    return make_paced


def paced_producer(make: Callable[[], AIOKafkaProducer]) -> Callable[[], AIOKafkaProducer]:
    def make_paced() -> AIOKafkaProducer:
        producer = make()
        pace_failed_metadata_refresh(producer.client)
        return producer

    return make_paced


def paced_transactional_producer(make: Callable[..., AIOKafkaProducer]) -> Callable[[str], AIOKafkaProducer]:
    """Transactional producers, one per transactional id, paced alike."""

    def make_paced(transactional_id: str) -> AIOKafkaProducer:
        producer = make(transactional_id=transactional_id)
        pace_failed_metadata_refresh(producer.client)
        return producer

    return make_paced
