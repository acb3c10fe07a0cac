"""Result events and dead letters onto their topics."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field

from service.events.cloudevents import STRUCTURED_CONTENT_TYPE, CloudEvent
from service.events.record import InboundRecord
from service.kafka.link import BrokerLink


class _TopicPublisher:
    """Sends records to one topic through the broker link, returning once the broker has them
    (acks=all), however long it is away. The FastStream publisher of the topic documents it in the
    AsyncAPI schema."""

    def __init__(self, link: BrokerLink, topic: str) -> None:
        self._link = link
        self._topic = topic

    async def _send(
        self, *, key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]]
    ) -> None:
        await self._link.send(self._topic, value=value, key=key, headers=headers)


class KafkaResultPublisher(_TopicPublisher):
    """Publishes structured-mode CloudEvents.

    Not through FastStream's publish path: it (its middlewares, message and correlation ids, header
    encoding) costs more CPU than the rest of the send, and the result event carries its own id.
    """

    _HEADERS: ClassVar[list[tuple[str, bytes]]] = [("content-type", STRUCTURED_CONTENT_TYPE.encode())]

    async def publish_result(self, event: CloudEvent, key: bytes) -> None:
        await self._send(key=key, value=event.to_structured(), headers=self._HEADERS)


DEAD_LETTER_REASON_MAX_LENGTH = 2000


class DeadLetterHeaders(BaseModel):
    """The ``dlq.*`` headers a dead letter carries after the record's own, as UTF-8 text."""

    model_config = ConfigDict(frozen=True, populate_by_name=True, serialize_by_alias=True)

    rule: str = Field(
        alias="dlq.rule",
        description="Which check failed: an envelope rule (json, content_type, cloudevents_attributes, "
        "type, data_schema, ...) or gave_up",
    )
    reason: str = Field(
        alias="dlq.reason", max_length=DEAD_LETTER_REASON_MAX_LENGTH, description="What was wrong, for people"
    )
    topic: str = Field(alias="dlq.topic", description="The topic the record was read from")
    partition: str = Field(alias="dlq.partition", pattern=r"^[0-9]+$", description="Its partition")
    offset: str = Field(alias="dlq.offset", pattern=r"^[0-9]+$", description="Its offset")
    time: str = Field(
        alias="dlq.time",
        json_schema_extra={"format": "date-time"},
        description="When it was dead-lettered (ISO 8601, with offset)",
    )


def dead_letter_headers(
    record: InboundRecord, rule: str, reason: str, now: datetime
) -> list[tuple[str, bytes]]:
    """The record's own headers, untouched and in order, then ours saying why, whence and when."""
    ours = DeadLetterHeaders(
        rule=rule,
        reason=reason[:DEAD_LETTER_REASON_MAX_LENGTH],
        topic=record.topic,
        partition=str(record.partition),
        offset=str(record.offset),
        time=now.isoformat(),
    )
    return [*record.headers, *((name, value.encode()) for name, value in ours.model_dump().items())]


class KafkaDeadLetterPublisher(_TopicPublisher):
    """Sends a record that cannot be processed to the dead-letter topic: key, value and headers
    byte for byte as they came, plus ``dlq.*`` headers.

    Not through FastStream's publisher: it takes headers as text and adds a content-type of its own.
    """

    async def dead_letter(self, record: InboundRecord, rule: str, reason: str) -> None:
        headers = dead_letter_headers(record, rule, reason, datetime.now(UTC))
        await self._send(key=record.key, value=record.value, headers=headers)
