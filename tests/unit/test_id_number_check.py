"""ID_NUMBER_CHECK: strict rejects an invalid Swedish id number, warn registers it as given with a
warning on the result, off does not check it; the seed's own example request (a person with
556789-1234) is registrable under warn."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import httpx
import pytest

from devkit.emulator.app import Emulator
from devkit.emulator.settings import DEMO_API_KEY, EmulatorSettings
from service.amili.mapping import to_registration
from service.amili.models import InvoiceRegistrationRequest
from service.config import Settings
from service.domain.invoice import CustomerType, Invoice
from service.domain.outcomes import Outcome, Rejection
from service.domain.rules import IdNumberCheck, TransformDefaults, registration_warnings
from service.processing import InvoiceProcessor
from tests.fakes import structured_record
from tests.unit.test_amili_models import SEED_REQUEST
from tests.unit.test_processing import ACCOUNT, BACKOFF, CREDITOR, World

SEED_ID_NUMBER = "556789-1234"  # the seed's example request: a person, failing the personnummer check
WARNING = {
    "field": "data.customer.id_number",
    "rule": "personnummer",
    "message": "personnummer does not hold a valid date of birth",  # month 67,
}


def defaults(mode: IdNumberCheck) -> TransformDefaults:
    return TransformDefaults(account=ACCOUNT, creditor=CREDITOR, id_number_check=mode)


def seed_invoice() -> Invoice:
    """The seed's example request, as an invoice-created event's data."""
    return Invoice.model_validate(
        {
            "invoice_number": "INV-2024-002",
            "account": "674dbeaf08847b9501cc9132",
            "creditor": "674dbeb208847b9501cc9138",
            "invoice_type": "invoice",
            "issue_date": "2024-01-21T10:11:22Z",
            "delivery_date": "2024-01-21T11:11:22+01:00",
            "due_date": "2024-01-31T10:11:22Z",
            "currency": "SEK",
            "customer": {
                "type": "person",
                "name": "Jane Doe",
                "customer_number": "12345",
                "id_number": SEED_ID_NUMBER,
                "address": {"lines": ["Business Street 456"], "postal_code": "54321", "city": "Gothenburg"},
                "mobile_number": "+46709876543",
                "email": "jane.doe@domain.se",
            },
            "headline": "Consulting Services",
            "body_text": "Thank you for your business",
            "debt_description": "Professional consulting services",
            "references": {
                "reference_number": "REF002",
                "payout_reference": "PAY002",
                "your_contact": "Contact Person",
                "your_reference": "YOUR-REF-001",
                "our_reference": "OUR-REF-001",
            },
            "lines": [
                {
                    "description": "Consulting hours",
                    "unit_price": 500,
                    "total_excluding_vat": 500,
                    "vat_rate": 0,
                }
            ],
        }
    )


def test_the_setting_defaults_to_strict() -> None:
    assert Settings.model_fields["id_number_check"].default == "strict"
    assert TransformDefaults().id_number_check == "strict"


def test_strict_rejects_the_seed_id_number_naming_the_field() -> None:
    outcome = to_registration(seed_invoice(), defaults("strict"))
    assert isinstance(outcome, Rejection)
    assert {(v.field, v.rule) for v in outcome.violations} == {("data.customer.id_number", "personnummer")}


def test_warn_registers_the_id_number_unchanged_with_a_warning() -> None:
    invoice = seed_invoice()
    outcome = to_registration(invoice, defaults("warn"))
    assert isinstance(outcome, InvoiceRegistrationRequest)
    assert outcome.to_wire()["customer"]["id_number"] == SEED_ID_NUMBER
    warnings = registration_warnings(invoice, defaults("warn"))
    assert [(w.field, w.rule, w.message) for w in warnings] == [tuple(WARNING.values())]


@pytest.mark.parametrize("check", ["warn", "off"])
def test_the_seed_request_goes_out_as_the_seed_sends_it(check: IdNumberCheck) -> None:
    outcome = to_registration(seed_invoice(), defaults(check))
    assert isinstance(outcome, InvoiceRegistrationRequest)
    # The seed's weekdays are wrong (21 January 2024 was a Sunday): Amili's own dates are right.
    expected = {
        **SEED_REQUEST,
        "invoice_date": "Sun, 21 Jan 2024 10:11:22 GMT",
        "invoice_delivery_date": "Sun, 21 Jan 2024 10:11:22 GMT",
    }
    assert outcome.to_wire() == expected


def test_off_registers_without_a_warning() -> None:
    invoice = seed_invoice()
    outcome = to_registration(invoice, defaults("off"))
    assert isinstance(outcome, InvoiceRegistrationRequest)
    assert outcome.to_wire()["customer"]["id_number"] == SEED_ID_NUMBER
    assert registration_warnings(invoice, defaults("off")) == []


def test_warn_still_reports_a_company_number_problem_and_strict_rules_stay() -> None:
    customer = seed_invoice().customer.model_copy(update={"type": CustomerType.COMPANY, "id_number": "12"})
    invoice = seed_invoice().model_copy(update={"customer": customer})
    assert [w.rule for w in registration_warnings(invoice, defaults("warn"))] == ["organisationsnummer"]
    assert registration_warnings(seed_invoice(), defaults("strict")) == []


def warn_processor(world: World) -> InvoiceProcessor:
    return InvoiceProcessor(
        registration=world.registration(),
        ledger=world.ledger,
        results=world.results,
        dead_letters=world.dead_letters,
        defaults=defaults("warn"),
        clock=world.clock,
        backoff=BACKOFF,
        sleep=world.sleep,
        observer=world.observed,
    )


async def test_under_warn_the_published_and_stored_result_carries_the_warning(
    sample_events: list[dict[str, Any]],
) -> None:
    world = World()
    processor = warn_processor(world)
    event = copy.deepcopy(sample_events[0])
    event["data"]["customer"]["id_number"] = SEED_ID_NUMBER
    handled = await processor.process(structured_record(event))
    assert handled.outcome is Outcome.REGISTERED
    assert world.amili.posts == 1
    data = world.data()
    assert data["outcome"] == "registered"
    assert data["warnings"] == [WARNING]
    await processor.settle()
    entry = world.ledger.entries[(CREDITOR, data["invoice_number"])]
    assert entry.result is not None
    assert entry.result["warnings"] == [WARNING]
    # The same event again: the stored result is published again, warning included.
    await processor.process(structured_record(event, offset=1))
    assert world.amili.posts == 1
    assert world.data()["warnings"] == [WARNING]


async def test_a_valid_id_number_under_warn_has_no_warnings(sample_events: list[dict[str, Any]]) -> None:
    world = World()
    handled = await warn_processor(world).process(structured_record(copy.deepcopy(sample_events[0])))
    assert handled.outcome is Outcome.REGISTERED
    assert world.data()["warnings"] == []


async def test_the_seed_example_request_is_registrable_under_warn(tmp_path: Path) -> None:
    outcome = to_registration(seed_invoice(), defaults("warn"))
    assert isinstance(outcome, InvoiceRegistrationRequest)
    emulator = Emulator(EmulatorSettings(store_path=str(tmp_path / "store.jsonl")))
    assert not emulator_checks_id_numbers()
    transport = httpx.ASGITransport(app=emulator.app())
    async with httpx.AsyncClient(transport=transport, base_url="http://amili") as amili:
        response = await amili.post(
            "/invoice--registrations", json=outcome.to_wire(), headers={"x-api-key": DEMO_API_KEY}
        )
    assert response.status_code == 201, response.text
    assert response.json()["_status"] == "OK"


def emulator_checks_id_numbers() -> bool:
    return bool(EmulatorSettings.model_fields["check_id_numbers"].default)
