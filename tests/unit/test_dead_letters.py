"""A dead letter too large to be written whole keeps what identifies its original."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

from service.events.record import InboundRecord
from service.kafka.publishing import (
    TRUNCATED_HEADERS_BYTES,
    TRUNCATED_VALUE_BYTES,
    dead_letter_headers,
    truncated_dead_letter,
)


def _record(value: bytes, headers: tuple[tuple[str, bytes], ...]) -> InboundRecord:
    return InboundRecord(
        topic="in", partition=2, offset=7, key=b"k", value=value, headers=headers, timestamp_ms=0
    )


def _truncate(record: InboundRecord) -> tuple[bytes | None, dict[str, bytes], list[str]]:
    full = dead_letter_headers(record, "json", "not JSON", datetime(2026, 12, 5, tzinfo=UTC))
    value, headers = truncated_dead_letter(record, full)
    return value, dict(headers), [name for name, _ in headers]


def test_small_own_headers_are_kept_and_the_value_is_cut_with_its_size_and_hash() -> None:
    original = bytes(range(256)) * 4096  # 1 MiB
    value, headers, names = _truncate(_record(original, (("content-type", b"application/json"),)))

    assert value == original[:TRUNCATED_VALUE_BYTES]
    assert names[0] == "content-type"  # the record's own first, as in a whole dead letter
    assert headers["dlq.offset"] == b"7"
    assert headers["dlq.truncated"] == b"value"
    assert headers["dlq.original_size"] == str(len(original)).encode()
    assert headers["dlq.value_sha256"] == hashlib.sha256(original).hexdigest().encode()
    assert headers["dlq.headers_dropped"] == b"0"


def test_own_headers_too_large_together_are_left_out_and_counted() -> None:
    big = b"h" * TRUNCATED_HEADERS_BYTES
    value, headers, names = _truncate(_record(b"{", (("a", big), ("b", b"1"))))

    assert value == b"{"
    assert "a" not in names
    assert "b" not in names
    assert headers["dlq.headers_dropped"] == b"2"
    assert headers["dlq.rule"] == b"json"
