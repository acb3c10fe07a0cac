from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from typing import Any

import pytest

from service.events.cloudevents import EnvelopeError, read_cloudevent
from service.events.contract import (
    AmiliIds,
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


def record(value: bytes | None, headers: tuple[tuple[str, bytes], ...] = ()) -> InboundRecord:
    return InboundRecord(topic="t", partition=0, offset=7, key=None, value=value, headers=headers)


def test_structured_mode() -> None:
    decoded = decode_invoice_created(structured_record(EVENT))
    assert decoded.event.id == "e-1"
    assert decoded.invoice.invoice_number == "INV-1"


def test_binary_mode() -> None:
    headers = tuple((f"ce_{k}", str(v).encode()) for k, v in EVENT.items() if k != "data")
    headers += (("content-type", b"application/json"),)
    decoded = decode_invoice_created(record(json.dumps(INVOICE).encode(), headers))
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
        (json.dumps({**EVENT, "data": {"invoice_number": "x"}}).encode(), (), "data_schema"),
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
