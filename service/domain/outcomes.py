"""What can become of one invoice, and why, as plain values: the one vocabulary of outcomes that
the result events, the ledger, the schemas and the ledgers' SQL all speak."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from pydantic import BaseModel, ConfigDict


class Outcome(StrEnum):
    REGISTERED = "registered"
    REJECTED = "rejected"
    CONFLICT = "conflict"
    FAILED = "failed"


# Why an invoice was refused, gave up or ended as a conflict, or what it was registered despite:
# a rule, located by a field path of the inbound event (``data.lines[0].vat_rate``) or of Amili's
# answer (``amili.ocr_number_ocr``). A broken business or schema rule is one (a violation); the
# result event carries them as they are. (No docstring: it would become the published schemas'
# description of ``Reason``.)
class Reason(BaseModel):
    model_config = ConfigDict(frozen=True)

    field: str
    rule: str
    message: str


@dataclass(frozen=True, slots=True)
class Rejection:
    """An invoice that must not be registered as it stands; retrying will not help."""

    violations: tuple[Reason, ...] = field(default_factory=tuple)
