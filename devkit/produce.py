"""Send invoice-created events from a JSON or NDJSON file to Kafka (and make the topics first).

What a file means (whole CloudEvents, or bare invoices to wrap) and the records its events become
are the service's own (``service.operator.event_files``), shared with ``validate``; this module
adds the topics and the sending.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from rich.progress import Progress

from service.operator.event_files import encode, event_key


async def create_topics(
    bootstrap_servers: str, partitions: Mapping[str, int], *, security: Mapping[str, Any] | None = None
) -> None:
    """Create each topic with its number of partitions (replication factor 1), so that the first
    produce and subscribe need no auto-creation (and log no errors). ``security`` is aiokafka's
    connection options (``kafka_security(settings)``: protocol, TLS context, SASL)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, **(security or {}))
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(topic, count, replication_factor=1) for topic, count in partitions.items()]
        )
    finally:
        await admin.close()


async def create_missing_topics(
    bootstrap_servers: str, partitions: Mapping[str, int], *, security: Mapping[str, Any] | None = None
) -> list[str]:
    """Create those of the topics that do not exist yet; the names of those created."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, **(security or {}))
    try:
        await admin.start()
        existing = set(await admin.list_topics())
        missing = {topic: count for topic, count in partitions.items() if topic not in existing}
        if missing:
            await admin.create_topics([NewTopic(t, n, replication_factor=1) for t, n in missing.items()])
        return sorted(missing)
    finally:
        await admin.close()


async def produce(
    bootstrap_servers: str,
    topic: str,
    events: Sequence[dict[str, Any]],
    *,
    binary: bool = False,
    show_progress: bool = True,
    timeout_seconds: float | None = None,
    security: Mapping[str, Any] | None = None,
) -> int:
    """Send ``events`` and wait for the broker to have them all; a broker that has not taken them
    within ``timeout_seconds`` (if given) is a ``TimeoutError``. ``security`` as for
    ``create_topics``."""
    async with asyncio.timeout(timeout_seconds):
        return await _produce(
            bootstrap_servers, topic, events, binary=binary, show_progress=show_progress, security=security
        )


async def _produce(
    bootstrap_servers: str,
    topic: str,
    events: Sequence[dict[str, Any]],
    *,
    binary: bool,
    show_progress: bool,
    security: Mapping[str, Any] | None = None,
) -> int:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap_servers, acks="all", enable_idempotence=True, **(security or {})
    )
    try:
        await producer.start()
        with Progress(disable=not show_progress, transient=False) as progress:
            task = progress.add_task(f"sending to {topic}", total=len(events))
            for chunk in _chunks(events, 500):
                futures = []
                for event in chunk:
                    value, headers = encode(event, binary=binary)
                    futures.append(
                        await producer.send(topic, value=value, key=event_key(event), headers=headers)
                    )
                for future in futures:
                    await future
                progress.advance(task, len(chunk))
    finally:
        await producer.stop()
    return len(events)


def _chunks(items: Sequence[dict[str, Any]], size: int) -> Iterable[Sequence[dict[str, Any]]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
