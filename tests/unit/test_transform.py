from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Any

import pytest

from service.amili.mapping import to_registration
from service.amili.models import InvoiceRegistrationRequest
from service.domain.invoice import Invoice
from service.domain.outcomes import Rejection
from service.domain.rules import TransformDefaults

ACCOUNT = "674dbeaf08847b9501cc9132"
CREDITOR = "674dbeb208847b9501cc9138"
DEFAULTS = TransformDefaults(account=ACCOUNT, creditor=CREDITOR)


def invoice(**overrides: Any) -> Invoice:
    data: dict[str, Any] = {
        "invoice_number": "INV-1",
        "issue_date": "2026-11-20",
        "due_date": "2026-12-20",
        "customer": {"type": "person", "name": "Astrid Lindqvist", "id_number": "811218-9876"},
        "lines": [{"description": "Broadband", "quantity": 2, "unit_price": 100, "total_excluding_vat": 200}],
    }
    data.update(overrides)
    return Invoice.model_validate(data)


def wire(result: InvoiceRegistrationRequest | Rejection) -> dict[str, Any]:
    assert isinstance(result, InvoiceRegistrationRequest), result
    return result.to_wire()


def rules(result: InvoiceRegistrationRequest | Rejection) -> set[tuple[str, str]]:
    assert isinstance(result, Rejection), result
    return {(v.field, v.rule) for v in result.violations}


def test_every_sample_invoice_transforms(sample_events: list[dict[str, Any]]) -> None:
    outcomes = [to_registration(Invoice.model_validate(e["data"]), DEFAULTS) for e in sample_events]
    valid = [isinstance(o, InvoiceRegistrationRequest) for o in outcomes]
    assert valid == [index != 5 for index in range(len(sample_events))]  # the sixth is invalid on purpose


def test_wire_format_follows_amili() -> None:
    body = wire(to_registration(invoice(), DEFAULTS))
    assert body["invoice_date"] == "Fri, 20 Nov 2026 00:00:00 GMT"
    assert body["invoice_due_date"] == "Sun, 20 Dec 2026 00:00:00 GMT"
    assert body["currency"] == "SEK"
    assert body["account"] == ACCOUNT
    assert body["creditor"] == CREDITOR
    assert body["customer"] == {"name": "Astrid Lindqvist", "id_number": "811218-9876", "is_person": True}
    assert body["matrix"] == [
        {
            "article_description": "Broadband",
            "unit_price": 100,
            "number_of_units": 2,
            "total_price_excluding_vat": 200,
            "unit_vat_percent": "25%",
        }
    ]
    assert "file_import_report" not in body
    assert not any(value is None for value in body.values())


def test_every_canonical_field_reaches_amili(sample_events: list[dict[str, Any]]) -> None:
    company = wire(to_registration(Invoice.model_validate(sample_events[1]["data"]), DEFAULTS))
    assert company["customer"]["is_company"] is True
    assert company["customer"]["address"] == {
        "address_line_1": "Industrivägen 4",
        "address_line_2": "Box 118",
        "zip_code": "41250",
        "city": "Göteborg",
        "country": "SE",
        "gln": "7350012345678",
    }
    assert [item["unit_vat_percent"] for item in company["matrix"]] == ["25%", "6%", "12%", "25%"]
    assert company["matrix"][3]["is_discount"] is True
    assert company["matrix"][2]["unit_price"] == 95.5
    assert company["order_reference"] == "PO-88812"
    assert company["invoice_delivery_date"] == "Wed, 18 Nov 2026 00:00:00 GMT"
    assert company["preferred_invoice_distribution"] == "email"

    car = wire(to_registration(Invoice.model_validate(sample_events[3]["data"]), DEFAULTS))
    assert car["customer"]["car_registration"] == {
        "number": "ABC123",
        "country": "SE",
        "ownership_date": "Mon, 02 Nov 2026 00:00:00 GMT",
    }
    columns = wire(to_registration(Invoice.model_validate(sample_events[4]["data"]), DEFAULTS))
    assert columns["custom_column_headlines"] == ["Period", "Meter"]
    assert columns["matrix"][0]["custom_column_data"] == ["2026-10", "M-8812"]
    assert columns["matrix"][0]["extra_rows"] == ["Spot price average 1.20 SEK/kWh"]
    assert columns["case_settings"] == {"reminder": True}
    assert columns["start_flow"] is True


def test_what_only_amili_refuses_is_named_by_the_events_field() -> None:
    # The canonical schema takes any account text; Amili's model wants an ObjectId.
    refused = to_registration(invoice(account="not-an-object-id"), DEFAULTS)
    assert rules(refused) == {("data.account", "string_pattern_mismatch")}


def test_event_account_and_creditor_win_over_defaults() -> None:
    other = "0" * 23 + "1"
    body = wire(to_registration(invoice(account=other, creditor=other), DEFAULTS))
    assert (body["account"], body["creditor"]) == (other, other)


def test_missing_creditor_without_default_is_rejected() -> None:
    assert ("data.creditor", "required") in rules(to_registration(invoice(), TransformDefaults(ACCOUNT)))


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"due_date": "2026-11-01"}, ("data.due_date", "due_after_issue")),
        ({"currency": "EUR"}, ("data.currency", "currency")),
        (
            {"lines": [{"description": "x", "total_excluding_vat": 10, "vat_rate": 20}]},
            ("data.lines[0].vat_rate", "vat_rate"),
        ),
        (
            {"lines": [{"description": "x", "quantity": 3, "unit_price": 10, "total_excluding_vat": 31}]},
            ("data.lines[0].total_excluding_vat", "line_total"),
        ),
        (
            {"customer": {"type": "person", "name": "A", "id_number": "811218-9877"}},
            ("data.customer.id_number", "personnummer"),
        ),
        (
            {"customer": {"type": "company", "name": "A", "id_number": "556789-1234"}},
            ("data.customer.id_number", "organisationsnummer"),
        ),
        (
            {
                "customer": {
                    "type": "person",
                    "name": "A",
                    "customer_number": "C1",
                    "car_registration": {"number": "ABC123"},
                }
            },
            ("data.customer.car_registration", "car_registration_excludes_customer_number"),
        ),
        (
            {"customer": {"type": "person", "name": "A", "car_registration": {"number": "AB-1"}}},
            ("data.customer.car_registration.number", "swedish_plate"),
        ),
    ],
)
def test_business_rules(overrides: dict[str, Any], expected: tuple[str, str]) -> None:
    assert expected in rules(to_registration(invoice(**overrides), DEFAULTS))


def test_rounding_within_a_cent_is_accepted() -> None:
    line = {"description": "x", "quantity": "3", "unit_price": "0.33", "total_excluding_vat": "1"}
    assert isinstance(to_registration(invoice(lines=[line]), DEFAULTS), InvoiceRegistrationRequest)


def test_foreign_car_plates_are_not_checked_against_swedish_rules() -> None:
    customer = {"type": "foreign", "name": "A", "car_registration": {"number": "AB-1234", "country": "NO"}}
    assert isinstance(to_registration(invoice(customer=customer), DEFAULTS), InvoiceRegistrationRequest)


def test_canonical_amounts_allow_at_most_two_decimals() -> None:
    with pytest.raises(ValueError, match="decimal places"):
        invoice(lines=[{"description": "x", "total_excluding_vat": "1.005"}])
    assert invoice().lines[0].total_excluding_vat == Decimal(200)
    assert invoice().issue_date == date(2026, 11, 20)


def test_a_date_with_a_time_of_day_goes_out_as_that_instant_in_utc() -> None:
    body = wire(
        to_registration(invoice(issue_date="2024-01-21T11:11:22+01:00", due_date="2024-01-31"), DEFAULTS)
    )
    assert body["invoice_date"] == "Sun, 21 Jan 2024 10:11:22 GMT"
    assert body["invoice_due_date"] == "Wed, 31 Jan 2024 00:00:00 GMT"


def test_a_date_with_a_time_must_say_its_offset() -> None:
    with pytest.raises(ValueError, match="UTC offset"):
        invoice(issue_date="2024-01-21T10:11:22")


def test_due_date_is_compared_by_day_in_utc() -> None:
    same_day = invoice(issue_date="2024-01-21T23:30:00+00:00", due_date="2024-01-21")
    assert isinstance(to_registration(same_day, DEFAULTS), InvoiceRegistrationRequest)
    day_before = invoice(issue_date="2024-01-21T00:30:00+02:00", due_date="2024-01-21")  # 20 Jan in UTC
    assert isinstance(to_registration(day_before, DEFAULTS), InvoiceRegistrationRequest)
    assert rules(
        to_registration(invoice(issue_date="2024-01-22T00:30:00Z", due_date="2024-01-21"), DEFAULTS)
    ) == {("data.due_date", "due_after_issue")}


def test_unit_prices_and_quantities_keep_six_decimals() -> None:
    line = {
        "description": "kWh",
        "quantity": "1234.567891",
        "unit_price": "1.2345",
        "total_excluding_vat": "1524.07",
    }
    body = wire(to_registration(invoice(lines=[line]), DEFAULTS))
    assert (body["matrix"][0]["number_of_units"], body["matrix"][0]["unit_price"]) == (1234.567891, 1.2345)
    with pytest.raises(ValueError, match="decimal places"):
        invoice(lines=[{**line, "unit_price": "1.2345678"}])


def test_a_customer_with_no_type_goes_without_a_flag() -> None:
    body = wire(to_registration(invoice(customer={"name": "A"}), DEFAULTS))
    assert body["customer"] == {"name": "A"}


def test_letter_template_is_rejected_as_deprecated() -> None:
    assert rules(to_registration(invoice(letter_template="reminder-1"), DEFAULTS)) == {
        ("data.letter_template", "deprecated")
    }
