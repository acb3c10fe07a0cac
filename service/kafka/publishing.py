"""Result events and dead letters onto their topics."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaProducer
from faststream.kafka import KafkaBroker
from faststream.kafka.publisher.usecase import DefaultPublisher

from service.events.cloudevents import STRUCTURED_CONTENT_TYPE, CloudEvent
from service.events.record import InboundRecord

DEAD_LETTER_HEADER_PREFIX = "dlq."


class KafkaResultPublisher:
    """Publishes structured-mode CloudEvents and returns once the broker has them (acks=all)."""

    def __init__(self, publisher: DefaultPublisher) -> None:
        self._publisher = publisher

    async def publish_result(self, event: CloudEvent, key: bytes) -> None:
        await self._publisher.publish(
            event.to_structured(), key=key, headers={"content-type": STRUCTURED_CONTENT_TYPE}
        )


def dead_letter_headers(
    record: InboundRecord, rule: str, reason: str, now: datetime
) -> list[tuple[str, bytes]]:
    """The record's own headers, untouched and in order, then ours saying why, whence and when."""
    ours = {
        "rule": rule,
        "reason": reason[:2000],
        "topic": record.topic,
        "partition": str(record.partition),
        "offset": str(record.offset),
        "time": now.isoformat(),
    }
    return [*record.headers, *((DEAD_LETTER_HEADER_PREFIX + k, v.encode()) for k, v in ours.items())]


class KafkaDeadLetterPublisher:
    """Sends a record that cannot be processed to the dead-letter topic: key, value and headers
    byte for byte as they came, plus ``dlq.*`` headers.

    FastStream's publishers take headers as text and add a content-type of their own, so the
    record goes out through the broker's underlying aiokafka producer instead; the FastStream
    publisher of the topic still documents it in the AsyncAPI schema.
    """

    def __init__(self, broker: KafkaBroker, topic: str) -> None:
        self._broker = broker
        self._topic = topic

    async def dead_letter(self, record: InboundRecord, rule: str, reason: str) -> None:
        producer = underlying_producer(self._broker)
        await producer.send_and_wait(
            self._topic,
            value=record.value,
            key=record.key,
            headers=dead_letter_headers(record, rule, reason, datetime.now(UTC)),
        )


def underlying_producer(broker: KafkaBroker) -> AIOKafkaProducer:
    state: Any = getattr(broker.config.producer, "_producer", None)
    producer = getattr(state, "producer", None)
    if not isinstance(producer, AIOKafkaProducer):
        raise RuntimeError("the Kafka broker is not connected (no producer)")
    return producer
