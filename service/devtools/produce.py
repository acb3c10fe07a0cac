"""Send invoice-created events from a JSON or NDJSON file to Kafka (and make the topics first).

Each item is either a whole CloudEvent (it has ``specversion``) or a bare canonical invoice, which
is wrapped into a new ``invoice-created`` CloudEvent.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from rich.progress import Progress

from service.events.cloudevents import JSON_CONTENT_TYPE, STRUCTURED_CONTENT_TYPE
from service.events.contract import INVOICE_CREATED_TYPE

Headers = list[tuple[str, bytes]]


def read_events(path: Path) -> list[dict[str, Any]]:
    text = path.read_text(encoding="utf-8")
    stripped = text.lstrip()
    if stripped.startswith("["):
        items = json.loads(text)
    elif path.suffix == ".json" and stripped.startswith("{"):
        try:
            items = [json.loads(text)]
        except json.JSONDecodeError:
            items = [json.loads(line) for line in text.splitlines() if line.strip()]
    else:
        items = [json.loads(line) for line in text.splitlines() if line.strip()]
    if not all(isinstance(item, dict) for item in items):
        raise ValueError(f"{path.name}: every item must be a JSON object")
    return [as_cloudevent(item) for item in items]


def as_cloudevent(item: dict[str, Any]) -> dict[str, Any]:
    if "specversion" in item:
        return item
    return {
        "specversion": "1.0",
        "id": str(uuid.uuid4()),
        "source": "urn:amili-registrar:produce",
        "type": INVOICE_CREATED_TYPE,
        "time": datetime.now(UTC).isoformat(),
        "datacontenttype": JSON_CONTENT_TYPE,
        "data": item,
    }


def event_key(event: dict[str, Any]) -> bytes | None:
    data = event.get("data")
    if isinstance(data, dict) and "invoice_number" in data:
        return f"{data.get('creditor', '')}/{data['invoice_number']}".encode()
    return None


def encode(event: dict[str, Any], *, binary: bool) -> tuple[bytes, Headers]:
    """The record value and headers of ``event`` in structured or binary CloudEvents mode."""
    if not binary:
        return json.dumps(event).encode(), [("content-type", STRUCTURED_CONTENT_TYPE.encode())]
    headers: Headers = [
        (f"ce_{name}", str(value).encode())
        for name, value in event.items()
        if name not in ("data", "datacontenttype")
    ]
    headers.append(("content-type", JSON_CONTENT_TYPE.encode()))
    return json.dumps(event.get("data")).encode(), headers


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
