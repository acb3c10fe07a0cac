"""The FastStream application: one subscriber on ``invoice-created`` feeding the processor.

FastStream's default policy commits before processing (at-most-once), so the subscriber takes
``AckPolicy.MANUAL`` and commits only once the processor has published the event's result.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from aiokafka import ConsumerRecord
from faststream import AckPolicy
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage
from faststream.message import StreamMessage

from service.events.record import InboundRecord
from service.processing import Backoff, Handled


class RecordProcessor(Protocol):
    """What the consumer feeds: returns once the record's outcome is published."""

    async def process(self, record: InboundRecord) -> Handled: ...


log = logging.getLogger(__name__)


def to_inbound_record(message: KafkaMessage) -> InboundRecord:
    raw = message.raw_message
    if isinstance(raw, tuple):  # batches are not subscribed to; guard the type for the checker
        raw = raw[0]
    return InboundRecord(
        topic=raw.topic,
        partition=raw.partition,
        offset=raw.offset,
        key=raw.key,
        value=raw.value,
        headers=tuple((key, value or b"") for key, value in raw.headers),
        timestamp_ms=raw.timestamp,
    )


async def tolerant_parser(
    record: ConsumerRecord[bytes, bytes],
    original: Callable[[ConsumerRecord[bytes, bytes]], Awaitable[StreamMessage[Any]]],
) -> StreamMessage[Any]:
    """FastStream's parser decodes every header as UTF-8 and fails on anything else, before the
    handler could dead-letter the record. Parse a stand-in with decodable headers instead and keep
    the real record (its bytes untouched) as the raw message."""
    try:
        return await original(record)
    except UnicodeDecodeError:
        readable = tuple(
            (key, value.decode("utf-8", errors="replace").encode()) for key, value in record.headers
        )
        message = await original(dataclasses.replace(record, headers=readable))
        message.raw_message = record
        return message


def subscribe_processor(
    broker: KafkaBroker,
    *,
    topic: str,
    group_id: str,
    processor: RecordProcessor,
    backoff: Backoff,
) -> None:
    """Wire ``invoice-created`` to the processor with commit-after-publish semantics."""
    failures = 0
    rng = random.Random()

    @broker.subscriber(
        topic,
        group_id=group_id,
        auto_offset_reset="earliest",
        ack_policy=AckPolicy.MANUAL,
        parser=tolerant_parser,
        title="invoice-created",
        description="Invoices to register at Amili (CloudEvents, structured or binary mode)",
    )
    async def on_invoice_created(message: KafkaMessage) -> None:
        nonlocal failures
        record = to_inbound_record(message)
        try:
            handled = await processor.process(record)
        except asyncio.CancelledError:
            raise  # shutting down: not committed, so the event comes again
        except Exception:
            # A fault of ours, not of the event: rewind to it and try again after a pause,
            # rather than commit past it.
            failures += 1
            log.exception(
                "processing failed; the event will be retried",
                extra={"topic": record.topic, "partition": record.partition, "offset": record.offset},
            )
            await asyncio.sleep(backoff.delay(failures, rng))
            await message.nack()
            return
        failures = 0
        await message.ack()
        log.info(
            "event handled",
            extra={
                "topic": record.topic,
                "partition": record.partition,
                "offset": record.offset,
                "outcome": handled.outcome.value if handled.outcome else "dead_lettered",
                "attempts": handled.attempts,
            },
        )
