"""``invoice show``'s verdict and ``reconcile``'s settlements, on the fake ledger and a fake Amili."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from service.amili.mapping import amili_ids
from service.amili.models import InvoiceRegistrationReceipt
from service.domain.checksums import luhn_check_digit
from service.domain.outcomes import Outcome
from service.events.contract import RegistrationResult, result_event
from service.ledger.base import LedgerEntry
from service.operator.errors import OperatorError
from service.operator.invoices import (
    EXIT_AGREE,
    EXIT_DISAGREE,
    EXIT_NOT_FOUND,
    Reconciler,
    compare,
    lapsed,
    ledger_view,
    table_rows,
)
from service.ports import AmiliError, AmiliUnauthorized, AmiliUnavailable
from tests.fakes import FakeLedger, FakeResults, fake_object_id

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
LEASE = timedelta(minutes=2)
CREDITOR = "5561234567"


def receipt(number: str, *, valid_ocr: bool = True) -> InvoiceRegistrationReceipt:
    body = f"2026{abs(hash(number)) % 10**12:012d}"
    digit = luhn_check_digit(body)
    return InvoiceRegistrationReceipt.model_validate(
        {
            "_id": fake_object_id(),
            "_invoice": fake_object_id(),
            "_case": fake_object_id(),
            "_ocr_number": fake_object_id(),
            "ocr_number_ocr": body + str(digit if valid_ocr else (digit + 1) % 10),
            "creditor": CREDITOR,
            "invoice_number": number,
        }
    )


class LookUps:
    """Amili as far as reconcile uses it: look-ups only (a POST would fail the test)."""

    def __init__(self) -> None:
        self.registrations: dict[tuple[str, str], InvoiceRegistrationReceipt] = {}
        self.errors: dict[tuple[str, str], AmiliError] = {}
        self.lookups = 0

    async def find_registration(
        self, creditor: str, invoice_number: str
    ) -> InvoiceRegistrationReceipt | None:
        self.lookups += 1
        if (error := self.errors.get((creditor, invoice_number))) is not None:
            raise error
        return self.registrations.get((creditor, invoice_number))

    async def register(self, request: Any) -> InvoiceRegistrationReceipt:
        raise AssertionError("reconcile never POSTs")


def entry(
    number: str,
    outcome: Outcome | None,
    *,
    claimed_at: datetime | None = NOW - timedelta(minutes=10),
    owner: str | None = "replica-a",
    result: dict[str, Any] | None = None,
) -> LedgerEntry:
    final = outcome is not None
    return LedgerEntry(
        creditor=CREDITOR,
        invoice_number=number,
        fingerprint=f"fp-{number}",
        outcome=outcome,
        attempts=1,
        event_id=f"evt-{number}",
        claimed_by=None if final else owner,
        claimed_at=claimed_at,
        result=result,
        result_published=final,
        created_at=NOW - timedelta(hours=1),
        updated_at=NOW - timedelta(minutes=10),
    )


def failed_result(number: str) -> dict[str, Any]:
    return RegistrationResult(
        outcome="failed", creditor=CREDITOR, invoice_number=number, inbound_event_id=f"evt-{number}"
    ).model_dump(mode="json")


def put(ledger: FakeLedger, *entries: LedgerEntry) -> None:
    for item in entries:
        ledger.entries[(item.creditor, item.invoice_number)] = item


def reconciler(ledger: FakeLedger, amili: LookUps, results: FakeResults | None) -> Reconciler:
    return Reconciler(
        ledger=ledger, amili=amili, publisher=results, owner="reconcile@test", lease=LEASE, clock=lambda: NOW
    )


# -- reconcile


async def test_an_invoice_in_flight_past_its_lease_that_amili_holds_is_settled_and_published() -> None:
    ledger, amili, results = FakeLedger(), LookUps(), FakeResults()
    put(ledger, entry("INV-1", None))
    found = amili.registrations[(CREDITOR, "INV-1")] = receipt("INV-1")

    [settlement] = await reconciler(ledger, amili, results).run()

    assert settlement.status == "settled"
    stored = ledger.entries[(CREDITOR, "INV-1")]
    assert stored.outcome is Outcome.REGISTERED
    assert stored.result_published
    assert stored.attempts == 2  # claimed as the service claims
    expected = RegistrationResult(
        outcome="registered",
        creditor=CREDITOR,
        invoice_number="INV-1",
        inbound_event_id="evt-INV-1",
        amili=amili_ids(found),
    )
    assert stored.result == expected.model_dump(mode="json")
    [(event, key)] = results.published
    assert event.id == result_event(expected, time=NOW).id == settlement.event_id
    assert event.type == "amili-registrar.registration.registered.v1"
    assert key == b"5561234567/INV-1"
    assert event.data == expected.model_dump(mode="json", exclude_none=True)


async def test_a_failed_invoice_that_amili_holds_is_settled() -> None:
    ledger, amili, results = FakeLedger(), LookUps(), FakeResults()
    put(ledger, entry("INV-2", Outcome.FAILED, result=failed_result("INV-2")))
    amili.registrations[(CREDITOR, "INV-2")] = receipt("INV-2")

    [settlement] = await reconciler(ledger, amili, results).run()

    assert (settlement.was, settlement.status) == ("failed", "settled")
    assert ledger.entries[(CREDITOR, "INV-2")].outcome is Outcome.REGISTERED
    assert [event.type for event, _ in results.published] == ["amili-registrar.registration.registered.v1"]


async def test_invoices_absent_at_amili_are_left_as_they_are() -> None:
    ledger, amili, results = FakeLedger(), LookUps(), FakeResults()
    in_flight = entry("INV-1", None)
    failed = entry("INV-2", Outcome.FAILED, result=failed_result("INV-2"))
    put(ledger, in_flight, failed)

    settlements = await reconciler(ledger, amili, results).run()

    assert [(s.invoice_number, s.status) for s in settlements] == [("INV-1", "left"), ("INV-2", "left")]
    assert "next attempt" in settlements[0].note
    assert "replay" in settlements[1].note
    assert ledger.entries[(CREDITOR, "INV-1")] == in_flight
    assert ledger.entries[(CREDITOR, "INV-2")] == failed
    assert results.published == []


async def test_live_claims_and_final_records_are_not_looked_at() -> None:
    ledger, amili, results = FakeLedger(), LookUps(), FakeResults()
    live = entry("INV-1", None, claimed_at=NOW - timedelta(seconds=30))
    done = entry("INV-2", Outcome.REGISTERED, result=failed_result("INV-2"))
    put(ledger, live, done)
    amili.registrations[(CREDITOR, "INV-1")] = receipt("INV-1")

    assert await reconciler(ledger, amili, results).run() == []
    assert amili.lookups == 0
    assert ledger.entries[(CREDITOR, "INV-1")] == live


async def test_a_claim_given_back_is_taken_over_at_once() -> None:
    ledger, amili, results = FakeLedger(), LookUps(), FakeResults()
    put(ledger, entry("INV-1", None, claimed_at=None, owner=None))
    amili.registrations[(CREDITOR, "INV-1")] = receipt("INV-1")

    [settlement] = await reconciler(ledger, amili, results).run()

    assert settlement.status == "settled"


class RacedLedger(FakeLedger):
    """An instance of the service claims each record between reconcile's look-up and its claim."""

    async def claim(self, **arguments: Any) -> Any:
        key = (arguments["creditor"], arguments["invoice_number"])
        self.entries[key] = dataclasses.replace(self.entries[key], claimed_by="replica-b", claimed_at=NOW)
        return await super().claim(**arguments)


async def test_an_invoice_claimed_meanwhile_by_the_service_is_held_for_it() -> None:
    ledger, amili, results = RacedLedger(), LookUps(), FakeResults()
    put(ledger, entry("INV-1", None))
    amili.registrations[(CREDITOR, "INV-1")] = receipt("INV-1")

    [settlement] = await reconciler(ledger, amili, results).run()

    assert settlement.status == "held"
    assert "replica-b" in settlement.note
    stored = ledger.entries[(CREDITOR, "INV-1")]
    assert (stored.outcome, stored.claimed_by) == (None, "replica-b")
    assert results.published == []


async def test_a_failed_look_up_is_an_error_of_that_invoice_only() -> None:
    ledger, amili, results = FakeLedger(), LookUps(), FakeResults()
    put(ledger, entry("INV-1", None), entry("INV-2", None))
    amili.errors[(CREDITOR, "INV-1")] = AmiliUnavailable("Amili answered HTTP 503")
    amili.registrations[(CREDITOR, "INV-2")] = receipt("INV-2")

    settlements = await reconciler(ledger, amili, results).run()

    assert [s.status for s in settlements] == ["error", "settled"]
    assert "503" in settlements[0].note
    assert ledger.entries[(CREDITOR, "INV-1")].outcome is None


async def test_refused_credentials_stop_the_run_in_one_line() -> None:
    ledger, amili = FakeLedger(), LookUps()
    put(ledger, entry("INV-1", None))
    amili.errors[(CREDITOR, "INV-1")] = AmiliUnauthorized("GET …: Amili refused the credentials (401)")

    with pytest.raises(OperatorError, match="refused the credentials"):
        await reconciler(ledger, amili, FakeResults()).run()


async def test_an_ocr_number_failing_its_check_digit_is_not_settled() -> None:
    ledger, amili, results = FakeLedger(), LookUps(), FakeResults()
    put(ledger, entry("INV-1", None))
    amili.registrations[(CREDITOR, "INV-1")] = receipt("INV-1", valid_ocr=False)

    [settlement] = await reconciler(ledger, amili, results).run()

    assert settlement.status == "left"
    assert "check digit" in settlement.note
    assert ledger.entries[(CREDITOR, "INV-1")].outcome is None


async def test_a_dry_run_claims_records_and_publishes_nothing() -> None:
    ledger, amili = FakeLedger(), LookUps()
    original = entry("INV-1", None)
    put(ledger, original)
    amili.registrations[(CREDITOR, "INV-1")] = receipt("INV-1")

    [settlement] = await reconciler(ledger, amili, None).run()

    assert settlement.status == "settled"
    assert "dry run" in settlement.note
    assert settlement.event_id is not None
    assert ledger.entries[(CREDITOR, "INV-1")] == original


async def test_records_are_walked_page_by_page_up_to_the_limit() -> None:
    ledger, amili, results = FakeLedger(), LookUps(), FakeResults()
    numbers = [f"INV-{n}" for n in range(7)]
    put(ledger, *(entry(number, None) for number in numbers))
    for number in numbers:
        amili.registrations[(CREDITOR, number)] = receipt(number)

    limited = await reconciler(ledger, amili, results).run(limit=3, page=2)
    assert [s.invoice_number for s in limited] == numbers[:3]

    rest = await reconciler(ledger, amili, results).run(page=2)
    assert [s.invoice_number for s in rest] == numbers[3:]
    assert len(results.published) == 7


# -- invoice show


def registered(number: str, found: InvoiceRegistrationReceipt) -> LedgerEntry:
    result = RegistrationResult(
        outcome="registered",
        creditor=CREDITOR,
        invoice_number=number,
        inbound_event_id=f"evt-{number}",
        amili=amili_ids(found),
    )
    return entry(number, Outcome.REGISTERED, result=result.model_dump(mode="json"))


def test_the_verdict_of_invoice_show() -> None:
    found = receipt("INV-1")
    other = receipt("INV-1")
    in_flight = entry("INV-1", None)
    rejected = entry("INV-1", Outcome.REJECTED, result=failed_result("INV-1"))
    failed = entry("INV-1", Outcome.FAILED, result=failed_result("INV-1"))

    assert compare(None, None, lapsed=False).code == EXIT_NOT_FOUND
    assert compare(registered("INV-1", found), found, lapsed=False).code == EXIT_AGREE
    assert compare(rejected, None, lapsed=False).code == EXIT_AGREE
    assert compare(failed, None, lapsed=False).code == EXIT_AGREE
    assert compare(in_flight, None, lapsed=True).code == EXIT_AGREE
    disagreements = [
        compare(None, found, lapsed=False),
        compare(registered("INV-1", found), None, lapsed=False),
        compare(registered("INV-1", found), other, lapsed=False),
        compare(failed, found, lapsed=False),
        compare(rejected, found, lapsed=False),
        compare(in_flight, found, lapsed=True),
        compare(in_flight, found, lapsed=False),
    ]
    assert {verdict.code for verdict in disagreements} == {EXIT_DISAGREE}
    assert "reconcile" in compare(in_flight, found, lapsed=True).detail
    assert "live claim" in compare(in_flight, found, lapsed=False).detail
    assert "ids differ" in compare(registered("INV-1", found), other, lapsed=False).detail


def test_the_lease_left_of_a_claim() -> None:
    young = entry("INV-1", None, claimed_at=NOW - timedelta(seconds=30))
    old = entry("INV-1", None)
    given_back = entry("INV-1", None, claimed_at=None, owner=None)
    assert not lapsed(young, LEASE, NOW)
    assert lapsed(old, LEASE, NOW)
    assert lapsed(given_back, LEASE, NOW)
    assert ledger_view(young, LEASE, NOW)["lease_left_seconds"] == 90.0
    assert ledger_view(old, LEASE, NOW)["lease_left_seconds"] == -480.0


def test_the_table_puts_both_sides_side_by_side() -> None:
    found = receipt("INV-1")
    view = ledger_view(registered("INV-1", found), LEASE, NOW)
    amili = {**amili_ids(found).model_dump(mode="json"), "case": {"state": "active"}}

    rows = {row[""]: row for row in table_rows(CREDITOR, "INV-1", view, amili)}

    assert rows["state"]["ledger"] == "registered"
    assert rows["registration id"]["ledger"] == rows["registration id"]["amili"] == found.id
    assert rows["OCR number"]["amili"] == found.ocr_number_ocr
    assert rows["case state"]["amili"] == "active"
    assert rows["result published"]["ledger"] == "yes"
    assert rows["result event id"]["ledger"] == view["result_event_id"]
    assert rows["invoice"]["ledger"] == f"{CREDITOR}/INV-1"
    assert "owner" not in rows  # the claim of a final record is over
    assert table_rows(CREDITOR, "INV-1", None, None)[1:] == [
        {"": "record", "ledger": "none", "amili": "none"}
    ]
