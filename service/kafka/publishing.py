"""Result events and dead letters onto their topics, through FastStream publishers."""

from __future__ import annotations

from datetime import UTC, datetime

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


class KafkaDeadLetterPublisher:
    """Sends a record that cannot be processed to the dead-letter topic, with its key and value
    untouched and headers saying why, where it came from and when."""

    def __init__(self, publisher: DefaultPublisher) -> None:
        self._publisher = publisher

    async def dead_letter(self, record: InboundRecord, rule: str, reason: str) -> None:
        headers = {key: value.decode("utf-8", errors="replace") for key, value in record.headers}
        headers.update(
            {
                f"{DEAD_LETTER_HEADER_PREFIX}rule": rule,
                f"{DEAD_LETTER_HEADER_PREFIX}reason": reason[:2000],
                f"{DEAD_LETTER_HEADER_PREFIX}topic": record.topic,
                f"{DEAD_LETTER_HEADER_PREFIX}partition": str(record.partition),
                f"{DEAD_LETTER_HEADER_PREFIX}offset": str(record.offset),
                f"{DEAD_LETTER_HEADER_PREFIX}time": datetime.now(UTC).isoformat(),
            }
        )
        headers.setdefault("content-type", "")
        await self._publisher.publish(record.value or b"", key=record.key, headers=headers)
