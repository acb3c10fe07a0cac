from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from typing import Any

import pytest

from service.events.cloudevents import EnvelopeError, read_cloudevent
from service.events.contract import (
    AmiliIds,
    InvalidInvoice,
    InvoiceCreated,
    RegistrationResult,
    decode_invoice_created,
    result_event,
)
from service.events.record import InboundRecord
from tests.fakes import structured_record

INVOICE: dict[str, Any] = {
    "invoice_number": "INV-1",
    "issue_date": "2026-11-20",
    "due_date": "2026-12-20",
    "customer": {"type": "foreign", "name": "Fjord AS"},
    "lines": [{"description": "x", "total_excluding_vat": 10, "vat_rate": 0}],
}
EVENT = {
    "specversion": "1.0",
    "id": "e-1",
    "source": "urn:test",
    "type": "billing.invoice.created.v1",
    "time": "2026-11-20T09:00:00Z",
    "data": INVOICE,
}

BINARY_HEADERS: tuple[tuple[str, bytes], ...] = (
    ("ce_specversion", b"1.0"),
    ("ce_id", b"e-1"),
    ("ce_source", b"urn:test"),
    ("ce_type", b"billing.invoice.created.v1"),
    ("ce_time", b"2026-11-20T09:00:00Z"),
)


def record(value: bytes | None, headers: tuple[tuple[str, bytes], ...] = ()) -> InboundRecord:
    return InboundRecord(topic="t", partition=0, offset=7, key=None, value=value, headers=headers)


def test_structured_mode() -> None:
    decoded = decode_invoice_created(structured_record(EVENT))
    assert isinstance(decoded, InvoiceCreated)
    assert decoded.event.id == "e-1"
    assert decoded.invoice.invoice_number == "INV-1"


def test_binary_mode() -> None:
    headers = tuple((f"ce_{k}", str(v).encode()) for k, v in EVENT.items() if k != "data")
    headers += (("content-type", b"application/json"),)
    decoded = decode_invoice_created(record(json.dumps(INVOICE).encode(), headers))
    assert isinstance(decoded, InvoiceCreated)
    assert decoded.event.source == "urn:test"
    assert decoded.invoice.customer.name == "Fjord AS"


@pytest.mark.parametrize(
    ("value", "headers", "rule"),
    [
        (b"not json", (), "json"),
        (None, (), "empty"),
        (b"[1]", (), "json"),
        # Python reads these, JSON has none of them; passed on, they would reach Amili as null.
        (
            json.dumps({**EVENT, "data": {**INVOICE, "case_settings": {"x": math.nan}}}).encode(),
            (),
            "json",
        ),
        (
            json.dumps({**EVENT, "data": {**INVOICE, "case_settings": {"x": -math.inf}}}).encode(),
            (),
            "json",
        ),
        (json.dumps(EVENT).encode(), (("content-type", b"text/plain"),), "content_type"),
        (json.dumps({**EVENT, "specversion": "0.3"}).encode(), (), "cloudevents_attributes"),
        (json.dumps({k: v for k, v in EVENT.items() if k != "time"}).encode(), (), "cloudevents_attributes"),
        (json.dumps({**EVENT, "type": "something.else"}).encode(), (), "type"),
        (json.dumps({**EVENT, "data": {"lines": []}}).encode(), (), "data_schema"),
        (json.dumps({**EVENT, "data": {**INVOICE, "invoice_number": ""}}).encode(), (), "data_schema"),
        (json.dumps({**EVENT, "data": {**INVOICE, "creditor": 7}}).encode(), (), "data_schema"),
        (json.dumps({**EVENT, "data": "an invoice"}).encode(), (), "data_schema"),
        (json.dumps({**EVENT, "datacontenttype": "text/plain"}).encode(), (), "content_type"),
        (
            json.dumps(INVOICE).encode(),
            (*BINARY_HEADERS, ("content-type", b"text/plain")),
            "content_type",
        ),
    ],
)
def test_unreadable_records_name_the_rule(
    value: bytes | None, headers: tuple[tuple[str, bytes], ...], rule: str
) -> None:
    with pytest.raises(EnvelopeError) as caught:
        decode_invoice_created(record(value, headers))
    assert caught.value.rule == rule


def test_time_must_carry_a_zone() -> None:
    with pytest.raises(EnvelopeError):
        read_cloudevent(record(json.dumps({**EVENT, "time": "2026-11-20T09:00:00"}).encode()))


def result(outcome: str = "registered", **extra: Any) -> RegistrationResult:
    return RegistrationResult(
        outcome=outcome,
        creditor="c",
        invoice_number="INV-1",
        inbound_event_id="e-1",
        **extra,
    )


def test_result_event_carries_amili_ids_in_amili_names() -> None:
    ids = AmiliIds(
        registration_id="a" * 24,
        invoice_id="b" * 24,
        case_id="c" * 24,
        ocr_number_id="d" * 24,
        ocr_number_ocr="20251855102634171529",
    )
    event = result_event(result(amili=ids), time=datetime(2026, 11, 20, tzinfo=UTC))
    document = json.loads(event.to_structured())
    assert document["type"] == "amili-registrar.registration.registered.v1"
    assert document["data"]["amili"] == {
        "_id": "a" * 24,
        "_invoice": "b" * 24,
        "_case": "c" * 24,
        "_ocr_number": "d" * 24,
        "ocr_number_ocr": "20251855102634171529",
    }
    assert document["data"]["inbound_event_id"] == "e-1"


def test_a_repeated_outcome_keeps_its_event_id() -> None:
    first = result_event(result(), time=datetime(2026, 11, 20, tzinfo=UTC))
    again = result_event(result(), time=datetime(2026, 11, 21, tzinfo=UTC))
    other = result_event(result("rejected"), time=datetime(2026, 11, 20, tzinfo=UTC))
    assert first.id == again.id
    assert first.id != other.id


@pytest.mark.parametrize(
    ("change", "field", "rule"),
    [
        ({"lines": []}, "data.lines", "too_short"),
        ({"due_date": "2026-02-30"}, "data.due_date", "value_error"),
        ({"due_date": "2026-02-03T10:00:00"}, "data.due_date", "value_error"),
        ({"currency": "kronor"}, "data.currency", "string_pattern_mismatch"),
        ({"colour": "blue"}, "data.colour", "extra_forbidden"),
    ],
)
def test_schema_violations_of_a_named_invoice_are_an_invalid_invoice(
    change: dict[str, Any], field: str, rule: str
) -> None:
    data = {**INVOICE, **change}
    decoded = decode_invoice_created(
        record(json.dumps({**EVENT, "data": data}).encode()), unknown_fields="reject"
    )
    assert isinstance(decoded, InvalidInvoice)
    assert (decoded.invoice_number, decoded.creditor) == ("INV-1", None)
    assert [(v.field, v.rule) for v in decoded.violations][:1] == [(field, rule)]


@pytest.mark.parametrize(
    "headers",
    [
        (),
        (("content-type", b"application/cloudevents+json; charset=utf-8"),),
    ],
    ids=["no headers", "structured content-type"],
)
@pytest.mark.parametrize(
    "datacontenttype",
    [None, "application/json", "Application/JSON; charset=utf-8", "application/vnd.billing+json"],
)
def test_structured_mode_with_json_data_is_read_with_or_without_headers(
    headers: tuple[tuple[str, bytes], ...], datacontenttype: str | None
) -> None:
    event = {**EVENT, "datacontenttype": datacontenttype} if datacontenttype else EVENT
    decoded = decode_invoice_created(record(json.dumps(event).encode(), headers))
    assert isinstance(decoded, InvoiceCreated)


@pytest.mark.parametrize(
    "content_type", [b"application/json", b"application/cloudevents+json", b"APPLICATION/JSON"]
)
def test_binary_mode_takes_any_json_content_type(content_type: bytes) -> None:
    decoded = decode_invoice_created(
        record(json.dumps(INVOICE).encode(), (*BINARY_HEADERS, ("content-type", content_type)))
    )
    assert isinstance(decoded, InvoiceCreated)


@pytest.mark.parametrize(("currency", "country"), [("sek", "se"), ("Sek", "sE"), ("SEK", "SE")])
def test_iso_codes_are_read_in_any_letter_case(currency: str, country: str) -> None:
    customer = {"type": "person", "name": "A", "address": {"country": country}}
    data = {**INVOICE, "currency": currency, "customer": customer}
    decoded = decode_invoice_created(record(json.dumps({**EVENT, "data": data}).encode()))
    assert isinstance(decoded, InvoiceCreated)
    invoice = decoded.invoice
    assert (invoice.currency, invoice.customer.address and invoice.customer.address.country) == ("SEK", "SE")
