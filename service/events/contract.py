"""The service's event contract: which CloudEvents it reads and which it writes."""

from __future__ import annotations

import copy
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, WithJsonSchema

from service.domain.invoice import INVOICE_NUMBER_MAX_LENGTH, Invoice, InvoiceKey
from service.domain.outcomes import Outcome, Reason
from service.events.cloudevents import CloudEvent, EnvelopeError, read_cloudevent
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
    unknown_fields: tuple[str, ...] = ()
    """Paths of the fields in ``data`` the invoice does not know (``data.lines[0].colour``), dropped
    under ``UNKNOWN_FIELDS=ignore``."""


@dataclass(frozen=True, slots=True)
class InvalidInvoice:
    """An inbound event that names its invoice but whose data breaks the invoice schema: it is
    answered with a ``rejected`` result, as a broken business rule is, so the billing system hears
    about every invoice it can be told about (see ``decode_invoice_created``)."""

    event: CloudEvent
    invoice_number: str
    creditor: str | None
    violations: tuple[Reason, ...]


Decoded = InvoiceCreated | InvalidInvoice

UnknownFields = Literal["ignore", "reject"]


def field_path(loc: tuple[int | str, ...]) -> str:
    """``("lines", 0, "colour")`` → ``data.lines[0].colour``."""
    path = "data"
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


def _without(data: Any, loc: tuple[int | str, ...]) -> None:
    """Remove the field at ``loc`` from ``data`` (in place)."""
    for part in loc[:-1]:
        data = data[part]
    del data[loc[-1]]


def decode_invoice_created(record: InboundRecord, *, unknown_fields: UnknownFields = "ignore") -> Decoded:
    """The invoice carried by ``record``; ``EnvelopeError`` when there is none to speak of.

    The routing rule: a record that cannot be read as an invoice-created event naming an invoice
    (not JSON, not a CloudEvent, another type or content type, data without an invoice number) is
    a dead letter, as nobody can be told about it by invoice; an event that names its invoice but
    breaks the schema is an ``InvalidInvoice``, answered with a ``rejected`` result like a broken
    business rule.

    The invoice models forbid unknown fields; under ``ignore`` the fields they name are dropped and
    the data read again, so only the known fields count and the unknown ones are reported by path.
    """
    event = read_cloudevent(record)
    if event.type != INVOICE_CREATED_TYPE:
        raise EnvelopeError("type", f"unknown event type {event.type!r}, expected {INVOICE_CREATED_TYPE!r}")
    data = event.data
    invoice_number, creditor = _invoice_identity(data)
    unknown: list[str] = []
    while True:
        try:
            invoice = Invoice.model_validate(data)
            break
        except ValidationError as error:
            extras = [e["loc"] for e in error.errors() if e["type"] == "extra_forbidden"]
            if unknown_fields == "reject" or not extras:
                return InvalidInvoice(event, invoice_number, creditor, schema_violations(error))
            if not unknown:
                data = copy.deepcopy(data)
            for loc in sorted(extras, key=len, reverse=True):
                _without(data, loc)
                unknown.append(field_path(loc))
    return InvoiceCreated(event=event, invoice=invoice, unknown_fields=tuple(unknown))


def _invoice_identity(data: Any) -> tuple[str, str | None]:
    """The invoice number and creditor a result would be keyed by, or ``EnvelopeError``."""
    if not isinstance(data, dict):
        raise EnvelopeError("data_schema", "data is not a JSON object, so it holds no invoice")
    number, creditor = data.get("invoice_number"), data.get("creditor")
    if not isinstance(number, str) or not 1 <= len(number) <= INVOICE_NUMBER_MAX_LENGTH:
        raise EnvelopeError(
            "data_schema",
            f"data.invoice_number must be a string of 1 to {INVOICE_NUMBER_MAX_LENGTH} characters: "
            "without it no result can name the invoice",
        )
    if creditor is not None and not isinstance(creditor, str):
        raise EnvelopeError(
            "data_schema", "data.creditor must be a string: without it no result can name the invoice"
        )
    return number, creditor


def schema_violations(error: ValidationError) -> tuple[Reason, ...]:
    """What the schema found wrong, each located by its event path, without the input."""
    return tuple(
        Reason(field=field_path(issue["loc"]), rule=issue["type"], message=issue["msg"])
        for issue in error.errors(include_url=False, include_input=False)
    )


# Read from Amili's receipt by the Amili adapter (``service.amili.mapping.amili_ids``), so that the
# contract does not depend on Amili's models. (The docstring is the schema's description.)
class AmiliIds(BaseModel):
    """What Amili created, in Amili's own field names."""

    model_config = ConfigDict(frozen=True, populate_by_name=True, serialize_by_alias=True)

    registration_id: str = Field(alias="_id")
    invoice_id: str = Field(alias="_invoice")
    case_id: str = Field(alias="_case")
    ocr_number_id: str = Field(alias="_ocr_number")
    ocr_number_ocr: str = Field(description="The OCR digits the debtor pays with")


# The outcome inline in the schemas, as its values: how they were published before the field took
# the enum (pydantic would otherwise move it into ``$defs``), so the documents keep their shape.
_OUTCOME_SCHEMA = WithJsonSchema(
    {"enum": [outcome.value for outcome in Outcome], "title": "Outcome", "type": "string"}
)


class RegistrationResult(BaseModel):
    """The ``data`` of a ``registration-result`` event."""

    model_config = ConfigDict(frozen=True, serialize_by_alias=True)

    outcome: Annotated[Outcome, _OUTCOME_SCHEMA]
    creditor: str
    invoice_number: str
    inbound_event_id: str
    amili: AmiliIds | None = None
    reasons: list[Reason] = Field(default_factory=list)
    warnings: list[Reason] = Field(
        default_factory=list,
        description="On a registered result: what the invoice was registered despite (an invalid "
        "Swedish id number under ID_NUMBER_CHECK=warn); empty when there is none",
    )

    @property
    def key(self) -> InvoiceKey:
        return InvoiceKey(self.creditor, self.invoice_number)


def result_key(key: InvoiceKey) -> bytes:
    """Results are keyed by the invoice, so one invoice's results stay in order."""
    return str(key).encode()


def result_event(result: RegistrationResult, *, time: datetime) -> CloudEvent:
    outcome = result.outcome
    event_id = uuid.uuid5(
        _RESULT_ID_NAMESPACE, f"{result.creditor}\x1f{result.invoice_number}\x1f{outcome.value}"
    )
    return CloudEvent(
        specversion="1.0",
        id=str(event_id),
        source=RESULT_SOURCE,
        type=RESULT_TYPES[outcome],
        time=time,
        subject=str(result.key),
        datacontenttype="application/json",
        data=result.model_dump(mode="json", exclude_none=True),
    )
