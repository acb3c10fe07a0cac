"""The benchmark's workload: realistic invoice-created events, a backlog and paced traffic.

Events are the sample invoices of ``service/examples/invoices.ndjson`` (those the service's own
rules accept, as the chaos run sorts them; the deliberately invalid sixth line is left out), each
sent with a unique invoice number, a fresh event id and the time it was produced, in CloudEvents
structured mode, keyed ``creditor/invoice_number`` as billing systems do (so they spread over the
partitions).
"""

from __future__ import annotations

import asyncio
import copy
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaProducer

from devkit.chaos.plan import sample_templates
from service.events.cloudevents import STRUCTURED_CONTENT_TYPE
from service.events.contract import INVOICE_CREATED_TYPE

HEADERS = [("content-type", STRUCTURED_CONTENT_TYPE.encode())]

Progress = Callable[[int], None]


def load_templates() -> list[dict[str, Any]]:
    """The sample events whose invoice the service would register (not reject): the invalid
    sixth line of the samples, and any other the business rules refuse, are left out."""
    templates = [template.event for template in sample_templates() if template.registrable]
    if not templates:
        raise RuntimeError("no sample invoice the service would register")
    return templates


@dataclass(frozen=True, slots=True)
class Event:
    event_id: str
    key: bytes
    value: bytes
    time: float


class EventFactory:
    """Events from the templates in turn, numbered ``<prefix>-000001`` onwards."""

    def __init__(self, templates: list[dict[str, Any]], prefix: str) -> None:
        self._templates = templates
        self._prefix = prefix
        self._next = 0

    def make(self) -> Event:
        template = self._templates[self._next % len(self._templates)]
        self._next += 1
        event = copy.deepcopy(template)
        number = f"{self._prefix}-{self._next:06d}"
        now = time.time()
        event["id"] = str(uuid.uuid4())
        event["time"] = datetime.fromtimestamp(now, UTC).isoformat(timespec="microseconds")
        event["subject"] = number
        data = event["data"]
        data["invoice_number"] = number
        event["type"] = INVOICE_CREATED_TYPE
        key = f"{data.get('creditor', '')}/{number}".encode()
        return Event(event["id"], key, json.dumps(event).encode(), now)


def _producer(bootstrap: str, linger_ms: int) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=True,
        linger_ms=linger_ms,
        max_batch_size=256 * 1024,
    )


async def produce_backlog(
    bootstrap: str, topic: str, factory: EventFactory, count: int, progress: Progress
) -> dict[str, float]:
    """Send ``count`` events as fast as the broker takes them; event id → event time."""
    sent: dict[str, float] = {}
    producer = _producer(bootstrap, linger_ms=5)
    await producer.start()
    try:
        remaining = count
        while remaining:
            chunk = min(remaining, 1000)
            futures = []
            for _ in range(chunk):
                event = factory.make()
                sent[event.event_id] = event.time
                futures.append(await producer.send(topic, value=event.value, key=event.key, headers=HEADERS))
            await asyncio.gather(*futures)
            remaining -= chunk
            progress(chunk)
    finally:
        await producer.stop()
    return sent


async def produce_paced(
    bootstrap: str,
    topic: str,
    factory: EventFactory,
    rate: float,
    seconds: float,
    progress: Progress,
) -> dict[str, float]:
    """Send events at ``rate`` per second for ``seconds``, each stamped with its send time."""
    sent: dict[str, float] = {}
    producer = _producer(bootstrap, linger_ms=0)  # no batching delay inside the measured latency
    await producer.start()
    try:
        total = max(1, round(rate * seconds))
        started = time.monotonic()
        futures = []
        done = 0
        while done < total:
            due = min(total, int((time.monotonic() - started) * rate) + 1)
            batch = 0
            while done < due:
                event = factory.make()
                sent[event.event_id] = event.time
                futures.append(await producer.send(topic, value=event.value, key=event.key, headers=HEADERS))
                done += 1
                batch += 1
            if batch:
                progress(batch)
            await asyncio.sleep(0.005)
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return sent
