"""A Kafka record as the core sees it: bytes and where they came from, nothing of the client."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class InboundRecord:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = field(default_factory=tuple)
    timestamp_ms: int | None = None
    taken_at: float | None = field(default=None, compare=False)
    """When the consumption engine took the record (``time.monotonic()``); ``None`` elsewhere."""

    def header(self, name: str) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None
