from __future__ import annotations

import email.utils
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import hypothesis
import hypothesis.strategies
import pytest
from pydantic import ValidationError

from service.amili.models import InvoiceRegistrationReceipt, InvoiceRegistrationRequest
from service.amili.wire import format_rfc1123

SEED_REQUEST: dict[str, Any] = {
    "customer": {
        "name": "Jane Doe",
        "customer_number": "12345",
        "id_number": "556789-1234",
        "is_person": True,
        "address": {"address_line_1": "Business Street 456", "zip_code": "54321", "city": "Gothenburg"},
        "mobile_number": "+46709876543",
        "email": "jane.doe@domain.se",
    },
    "account": "674dbeaf08847b9501cc9132",
    "creditor": "674dbeb208847b9501cc9138",
    "invoice_type": "invoice",
    "invoice_number": "INV-2024-002",
    "reference_number": "REF002",
    "payout_reference": "PAY002",
    "invoice_date": "Wed, 21 Jan 2024 10:11:22 GMT",
    "invoice_delivery_date": "Wed, 21 Jan 2024 10:11:22 GMT",
    "invoice_due_date": "Wed, 31 Jan 2024 10:11:22 GMT",
    "invoice_headline": "Consulting Services",
    "invoice_body_text": "Thank you for your business",
    "currency": "SEK",
    "your_contact": "Contact Person",
    "your_reference": "YOUR-REF-001",
    "our_reference": "OUR-REF-001",
    "debt_description": "Professional consulting services",
    "matrix": [
        {
            "article_description": "Consulting hours",
            "unit_price": 500,
            "total_price_excluding_vat": 500,
            "unit_vat_percent": "0%",
        }
    ],
}
SEED_RESPONSE = {
    "_updated": "Fri, 04 Jul 2025 08:20:41 GMT",
    "_created": "Fri, 04 Jul 2025 08:20:41 GMT",
    "_etag": "62d5a25b98fa0523ac22e81c09eb1f78d3a1dab9",
    "_id": "68678ed98d8dc95ece12793f",
    "_status": "OK",
    "_invoice": "68678ed98d8dc95ece12793f",
    "_case": "68678eda88b9226bb78d7169",
    "_ocr_number": "68678eda8d8dc95ece127944",
    "ocr_number_ocr": "20251855102634171529",
}


def test_the_documented_request_round_trips() -> None:
    # Amili's own example dates 21 Jan 2024 a Wednesday; it was a Sunday. The model reads the
    # example (as Eve's strptime does, ignoring the weekday) and writes the correct weekday.
    corrected = {
        **SEED_REQUEST,
        "invoice_date": "Sun, 21 Jan 2024 10:11:22 GMT",
        "invoice_delivery_date": "Sun, 21 Jan 2024 10:11:22 GMT",
    }
    assert InvoiceRegistrationRequest.model_validate(SEED_REQUEST).to_wire() == corrected


def test_the_documented_response_is_read() -> None:
    receipt = InvoiceRegistrationReceipt.model_validate(SEED_RESPONSE)
    assert receipt.case == "68678eda88b9226bb78d7169"
    assert receipt.ocr_number_ocr == "20251855102634171529"


@pytest.mark.parametrize(
    "change",
    [
        {"currency": "EUR"},
        {"invoice_date": "2024-01-21"},
        {"account": "not-an-id"},
        {"file_import_report": {}},
        {"unexpected": 1},
        {"matrix": []},
    ],
)
def test_client_side_validation_refuses_what_amili_refuses(change: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        InvoiceRegistrationRequest.model_validate({**SEED_REQUEST, **change})


def test_customer_types_exclude_each_other() -> None:
    customer = {**SEED_REQUEST["customer"], "is_company": True}
    with pytest.raises(ValidationError, match="at most one"):
        InvoiceRegistrationRequest.model_validate({**SEED_REQUEST, "customer": customer})


def test_a_customer_with_no_type_is_left_to_amili() -> None:
    customer = {k: v for k, v in SEED_REQUEST["customer"].items() if k != "is_person"}
    request = InvoiceRegistrationRequest.model_validate({**SEED_REQUEST, "customer": customer})
    assert not {"is_person", "is_company", "is_foreign"} & request.to_wire()["customer"].keys()


def test_car_registration_excludes_customer_number() -> None:
    customer = {**SEED_REQUEST["customer"], "car_registration": {"number": "ABC123"}}
    with pytest.raises(ValidationError, match="must not be present with 'customer_number'"):
        InvoiceRegistrationRequest.model_validate({**SEED_REQUEST, "customer": customer})


def test_rfc1123_formatting() -> None:
    assert format_rfc1123(datetime(2024, 1, 21, 10, 11, 22, tzinfo=UTC)) == "Sun, 21 Jan 2024 10:11:22 GMT"


@hypothesis.given(
    moment=hypothesis.strategies.datetimes(
        min_value=datetime(1000, 1, 1),
        max_value=datetime(9998, 12, 31),
        timezones=hypothesis.strategies.sampled_from(
            [UTC, timezone(timedelta(hours=2)), timezone(-timedelta(hours=9, minutes=30)), None]
        ),
    )
)
def test_rfc1123_dates_are_what_the_standard_library_writes(moment: datetime) -> None:
    aware = moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
    assert format_rfc1123(moment) == email.utils.format_datetime(aware.astimezone(UTC), usegmt=True)
    day = moment.date()
    assert format_rfc1123(day) == email.utils.format_datetime(
        datetime(day.year, day.month, day.day, tzinfo=UTC), usegmt=True
    )
