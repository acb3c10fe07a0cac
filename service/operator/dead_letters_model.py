"""Dead letters as the operator commands read them: a record of the dead-letter topic and what its
``dlq.*`` headers say (``service.kafka.publishing``), read tolerantly (a dead letter may hold
anything, and its headers may have been written by hand), and the choice of some of them."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from service.events.record import InboundRecord
from service.operator.errors import OperatorError
from service.operator.kafka_tools import Record

DLQ_PREFIX = "dlq."
REDRIVE_PREFIX = "redrive."


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a dead letter's record was read from: ``topic/partition/offset``."""

    topic: str
    partition: int
    offset: int

    def __str__(self) -> str:
        return f"{self.topic}/{self.partition}/{self.offset}"

    @classmethod
    def parse(cls, text: str) -> Origin:
        """``topic/partition/offset`` (a topic name holds no ``/``); ``ValueError`` otherwise."""
        topic, _, rest = text.strip().partition("/")
        partition, _, offset = rest.partition("/")
        if not topic or not partition.isdigit() or not offset.isdigit():
            raise ValueError(f"{text.strip()!r} is not topic/partition/offset (as invoice-created/0/42)")
        return cls(topic, int(partition), int(offset))


@dataclass(frozen=True, slots=True)
class Invoice:
    creditor: str | None
    invoice_number: str

    def __str__(self) -> str:
        return f"{self.creditor}/{self.invoice_number}" if self.creditor else self.invoice_number


def parse_time(text: str) -> datetime:
    """An ISO 8601 date or date and time; without an offset it is UTC."""
    moment = datetime.fromisoformat(text.strip())
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _text(value: bytes) -> str:
    return value.decode("utf-8", errors="replace")


def _number(text: str | None) -> int | None:
    return int(text) if text is not None and text.isdigit() else None


@dataclass(frozen=True, slots=True)
class DeadLetter:
    record: Record
    """The record on the dead-letter topic."""
    dlq: dict[str, str]
    """Its ``dlq.*`` headers as text (the last of each name: ours come after the record's own)."""
    own_headers: tuple[tuple[str, bytes], ...]
    """The record's own headers, in order, byte for byte: all but the ``dlq.*`` ones."""
    invoice: Invoice | None

    @classmethod
    def of(cls, record: Record) -> DeadLetter:
        dlq = {name: _text(value) for name, value in record.headers if name.startswith(DLQ_PREFIX)}
        own = tuple((name, value) for name, value in record.headers if not name.startswith(DLQ_PREFIX))
        letter = cls(record, dlq, own, None)
        return cls(record, dlq, own, _invoice_of(letter))

    @property
    def rule(self) -> str | None:
        return self.dlq.get("dlq.rule")

    @property
    def reason(self) -> str | None:
        return self.dlq.get("dlq.reason")

    @property
    def time_text(self) -> str | None:
        return self.dlq.get("dlq.time")

    @property
    def time(self) -> datetime | None:
        text = self.time_text
        if text is None:
            return None
        try:
            return parse_time(text)
        except ValueError:
            return None

    @property
    def origin(self) -> Origin | None:
        topic = self.dlq.get("dlq.topic")
        partition, offset = _number(self.dlq.get("dlq.partition")), _number(self.dlq.get("dlq.offset"))
        if not topic or partition is None or offset is None:
            return None
        return Origin(topic, partition, offset)

    @property
    def truncated(self) -> bool:
        return "dlq.truncated" in self.dlq

    @property
    def original_size(self) -> int | None:
        return _number(self.dlq.get("dlq.original_size"))

    @property
    def value_sha256(self) -> str | None:
        return self.dlq.get("dlq.value_sha256")

    @property
    def headers_dropped(self) -> int:
        return _number(self.dlq.get("dlq.headers_dropped")) or 0

    @property
    def place(self) -> str:
        """Where the dead letter is: ``partition/offset`` of the dead-letter topic."""
        return f"{self.record.partition}/{self.record.offset}"


def _invoice_of(letter: DeadLetter) -> Invoice | None:
    """The invoice the dead letter's value names, when it can be read as an invoice-created event
    (anything else: ``None``)."""
    from service.events.contract import InvalidInvoice, decode_invoice_created

    if letter.truncated:
        return None
    origin = letter.origin
    record = letter.record
    inbound = InboundRecord(
        origin.topic if origin else record.topic,
        origin.partition if origin else record.partition,
        origin.offset if origin else record.offset,
        record.key,
        record.value,
        letter.own_headers,
    )
    try:
        decoded = decode_invoice_created(inbound)
    except Exception:  # it is a dead letter: anything may be wrong with it
        return _named_invoice(record.value)
    if isinstance(decoded, InvalidInvoice):
        return Invoice(decoded.creditor, decoded.invoice_number)
    return Invoice(decoded.invoice.creditor, decoded.invoice.invoice_number)


def _named_invoice(value: bytes | None) -> Invoice | None:
    """The invoice a value names although it is no readable event (another content type or event
    type, a CloudEvent missing attributes): a JSON object whose ``data`` (structured mode) or itself
    (binary mode) has a string ``invoice_number``."""
    try:
        document = json.loads(value) if value else None
    except (ValueError, RecursionError):
        return None
    if not isinstance(document, dict):
        return None
    data = document.get("data", document)
    if not isinstance(data, dict):
        return None
    number, creditor = data.get("invoice_number"), data.get("creditor")
    if not isinstance(number, str) or not number:
        return None
    return Invoice(creditor if isinstance(creditor, str) else None, number)


@dataclass(frozen=True, slots=True)
class Selection:
    """Which dead letters a command is about: every filter given must hold."""

    rules: frozenset[str] = frozenset()
    since: datetime | None = None
    until: datetime | None = None
    partitions: frozenset[int] = frozenset()
    origins: frozenset[Origin] = frozenset()

    @property
    def empty(self) -> bool:
        return not (self.rules or self.since or self.until or self.partitions or self.origins)

    def holds(self, letter: DeadLetter) -> bool:
        if self.rules and letter.rule not in self.rules:
            return False
        if self.since or self.until:
            moment = letter.time
            if moment is None:
                return False
            if self.since and moment < self.since:
                return False
            if self.until and moment >= self.until:
                return False
        origin = letter.origin
        if self.partitions and (origin is None or origin.partition not in self.partitions):
            return False
        return not self.origins or origin in self.origins


def in_order(letters: Iterable[DeadLetter]) -> list[DeadLetter]:
    """Oldest first by ``dlq.time`` (those without a readable one last), then by place."""
    far = datetime.max.replace(tzinfo=UTC)
    return sorted(letters, key=lambda d: (d.time or far, d.record.partition, d.record.offset))


def read_origins(source: Path | str, text: str) -> list[Origin]:
    """The origins listed in a file: one ``topic/partition/offset`` a line, or the JSON lines of
    ``dead-letters list --json`` (their ``origin``); blank lines and ``#`` comments are skipped."""
    origins = []
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        try:
            if stripped.startswith("{"):
                row: Any = json.loads(stripped)
                origin_text = row.get("origin") if isinstance(row, dict) else None
                if not isinstance(origin_text, str):
                    raise ValueError("a JSON line without an origin")
                origins.append(Origin.parse(origin_text))
            else:
                origins.append(Origin.parse(stripped))
        except ValueError as error:
            raise OperatorError(f"{source} line {number}: {error}") from error
    return origins


def compact_time(text: str | None) -> str | None:
    """An ISO time as ``2026-12-05 09:14:02`` (UTC), for tables; anything else as it is."""
    if text is None:
        return None
    try:
        moment = parse_time(text)
    except ValueError:
        return text
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def shorten(text: str | None, width: int = 60) -> str | None:
    if text is None or len(text) <= width:
        return text
    return text[: width - 1] + "…"


def header_text(headers: Sequence[tuple[str, bytes]]) -> list[list[str]]:
    """Headers for JSON: each name with its value as text (bytes that are not UTF-8 escaped)."""
    return [[name, value.decode("utf-8", errors="backslashreplace")] for name, value in headers]
