"""What can become of one invoice, as plain values."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class Outcome(StrEnum):
    REGISTERED = "registered"
    REJECTED = "rejected"
    CONFLICT = "conflict"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Violation:
    """One broken rule, located by a field path of the inbound event (``data.lines[0].vat_rate``)."""

    field: str
    rule: str
    message: str


@dataclass(frozen=True, slots=True)
class Rejection:
    """An invoice that must not be registered as it stands; retrying will not help."""

    violations: tuple[Violation, ...] = field(default_factory=tuple)
