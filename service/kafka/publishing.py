"""Result events and dead letters onto their topics."""

from __future__ import annotations

import hashlib
import logging
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from service.events.cloudevents import STRUCTURED_CONTENT_TYPE, CloudEvent
from service.events.record import InboundRecord
from service.kafka.link import BrokerLink, RecordRefused

log = logging.getLogger(__name__)


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


RESULT_HEADERS: list[tuple[str, bytes]] = [("content-type", STRUCTURED_CONTENT_TYPE.encode())]
"""The headers of a result record: structured-mode CloudEvents."""


class KafkaResultPublisher(_TopicPublisher):
    """Publishes structured-mode CloudEvents.

    Not through FastStream's publish path: it (its middlewares, message and correlation ids, header
    encoding) costs more CPU than the rest of the send, and the result event carries its own id.
    """

    async def publish_result(self, event: CloudEvent, key: bytes) -> None:
        await self._send(key=key, value=event.to_structured(), headers=RESULT_HEADERS)


DEAD_LETTER_REASON_MAX_LENGTH = 2000


class DeadLetterHeaders(BaseModel):
    """The ``dlq.*`` headers a dead letter carries after the record's own, as UTF-8 text."""

    model_config = ConfigDict(frozen=True, populate_by_name=True, serialize_by_alias=True)

    rule: str = Field(
        alias="dlq.rule",
        description="Which check failed: an envelope rule (too_large, json, empty, content_type, "
        "cloudevents_attributes, type, data_schema: no invoice number to name the invoice by, ...), "
        "gave_up or processing_error",
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


TRUNCATED_VALUE_BYTES = 64 * 1024
"""How much of a value a dead letter keeps when the whole record is too large to be written."""
TRUNCATED_HEADERS_BYTES = 16 * 1024
"""The record's own headers are kept in a truncated dead letter only up to this size in all."""


class DeadLetterTruncation(BaseModel):
    """The headers a dead letter carries, after the ``dlq.*`` ones, when the record was too large
    to be written whole (the broker or the producer refused it): what is missing, and how to find
    and check the original in its source topic."""

    model_config = ConfigDict(frozen=True, populate_by_name=True, serialize_by_alias=True)

    truncated: Literal["value"] = Field(
        alias="dlq.truncated", description="value: the value holds only its first bytes; the original follows"
    )
    original_size: str = Field(
        alias="dlq.original_size", pattern=r"^[0-9]+$", description="The original value's size in bytes"
    )
    value_sha256: str = Field(
        alias="dlq.value_sha256", pattern=r"^[0-9a-f]{64}$", description="SHA-256 of the original value"
    )
    headers_dropped: str = Field(
        alias="dlq.headers_dropped",
        pattern=r"^[0-9]+$",
        description="How many of the record's own headers were left out (too large together)",
    )


def truncated_dead_letter(
    record: InboundRecord, headers: list[tuple[str, bytes]]
) -> tuple[bytes | None, list[tuple[str, bytes]]]:
    """The value and headers of a dead letter that fits: the value's first bytes, the record's own
    headers if they are small, the ``dlq.*`` headers, and what was left out (``DeadLetterTruncation``)."""
    value = record.value or b""
    own = list(record.headers)
    ours = headers[len(own) :]
    keep_own = sum(len(name) + len(content) for name, content in own) <= TRUNCATED_HEADERS_BYTES
    truncation = DeadLetterTruncation(
        truncated="value",
        original_size=str(len(value)),
        value_sha256=hashlib.sha256(value).hexdigest(),
        headers_dropped="0" if keep_own else str(len(own)),
    )
    kept = [*(own if keep_own else []), *ours]
    kept += [(name, text.encode()) for name, text in truncation.model_dump().items()]
    return value[:TRUNCATED_VALUE_BYTES], kept


class KafkaDeadLetterPublisher(_TopicPublisher):
    """Sends a record that cannot be processed to the dead-letter topic: key, value and headers
    byte for byte as they came, plus ``dlq.*`` headers.

    A record too large to be written whole (with our headers it can exceed what the producer or the
    broker takes) is written truncated rather than left to stall its partition: see
    ``truncated_dead_letter``; the original stays in its source topic at ``dlq.partition`` and
    ``dlq.offset`` for as long as that topic keeps it.

    Not through FastStream's publisher: it takes headers as text and adds a content-type of its own.
    """

    async def dead_letter(self, record: InboundRecord, rule: str, reason: str) -> None:
        headers = dead_letter_headers(record, rule, reason, datetime.now(UTC))
        try:
            await self._send(key=record.key, value=record.value, headers=headers)
        except RecordRefused:
            value, kept = truncated_dead_letter(record, headers)
            log.warning(
                "dead letter too large: written truncated",
                extra={"topic": record.topic, "partition": record.partition, "offset": record.offset,
                       "original_size": len(record.value or b"")},
            )  # fmt: skip
            await self._send(key=record.key, value=value, headers=kept)
