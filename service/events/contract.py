"""The service's event contract: which CloudEvents it reads and which it writes."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from service.amili.models import InvoiceRegistrationReceipt
from service.domain.invoice import Invoice
from service.domain.outcomes import Outcome, Violation
from service.events.cloudevents import CloudEvent, EnvelopeError, read_cloudevent, validation_problems
from service.events.record import InboundRecord

INVOICE_CREATED_TYPE = "billing.invoice.created.v1"
RESULT_SOURCE = "amili-registrar"
RESULT_TYPES: dict[Outcome, str] = {
    outcome: f"amili-registrar.registration.{outcome.value}.v1" for outcome in Outcome
}
# Result event ids are derived from what they report, so a repeated outcome keeps its id.
_RESULT_ID_NAMESPACE = uuid.UUID("6f1b2f5e-2f43-4c35-9c1e-5d2f3b8c7a10")


@dataclass(frozen=True, slots=True)
class InvoiceCreated:
    """A decoded inbound event: its envelope and the canonical invoice it carries."""

    event: CloudEvent
    invoice: Invoice


def decode_invoice_created(record: InboundRecord) -> InvoiceCreated:
    """The invoice carried by ``record``; ``EnvelopeError`` when it cannot be read."""
    event = read_cloudevent(record)
    if event.type != INVOICE_CREATED_TYPE:
        raise EnvelopeError("type", f"unknown event type {event.type!r}, expected {INVOICE_CREATED_TYPE!r}")
    try:
        invoice = Invoice.model_validate(event.data)
    except ValidationError as error:
        problems = validation_problems(error, prefix="data.")
        raise EnvelopeError("data_schema", f"data does not match the invoice schema: {problems}") from error
    return InvoiceCreated(event=event, invoice=invoice)


class AmiliIds(BaseModel):
    """What Amili created, in Amili's own field names."""

    model_config = ConfigDict(frozen=True, populate_by_name=True, serialize_by_alias=True)

    registration_id: str = Field(alias="_id")
    invoice_id: str = Field(alias="_invoice")
    case_id: str = Field(alias="_case")
    ocr_number_id: str = Field(alias="_ocr_number")
    ocr_number_ocr: str = Field(description="The OCR digits the debtor pays with")

    @classmethod
    def from_receipt(cls, receipt: InvoiceRegistrationReceipt) -> AmiliIds:
        return cls(
            registration_id=receipt.id,
            invoice_id=receipt.invoice,
            case_id=receipt.case,
            ocr_number_id=receipt.ocr_number,
            ocr_number_ocr=receipt.ocr_number_ocr,
        )


class Reason(BaseModel):
    model_config = ConfigDict(frozen=True)

    field: str
    rule: str
    message: str

    @classmethod
    def from_violation(cls, violation: Violation) -> Reason:
        return cls(field=violation.field, rule=violation.rule, message=violation.message)


class RegistrationResult(BaseModel):
    """The ``data`` of a ``registration-result`` event."""

    model_config = ConfigDict(frozen=True, serialize_by_alias=True)

    outcome: Literal["registered", "rejected", "conflict", "failed"]
    creditor: str
    invoice_number: str
    inbound_event_id: str
    amili: AmiliIds | None = None
    reasons: list[Reason] = Field(default_factory=list)


def result_key(creditor: str, invoice_number: str) -> bytes:
    """Results are keyed by creditor and invoice number, so one invoice's results stay in order."""
    return f"{creditor}/{invoice_number}".encode()


def result_event(result: RegistrationResult, *, time: datetime) -> CloudEvent:
    outcome = Outcome(result.outcome)
    event_id = uuid.uuid5(
        _RESULT_ID_NAMESPACE, f"{result.creditor}\x1f{result.invoice_number}\x1f{outcome.value}"
    )
    return CloudEvent(
        specversion="1.0",
        id=str(event_id),
        source=RESULT_SOURCE,
        type=RESULT_TYPES[outcome],
        time=time,
        subject=f"{result.creditor}/{result.invoice_number}",
        datacontenttype="application/json",
        data=result.model_dump(mode="json", exclude_none=True),
    )
