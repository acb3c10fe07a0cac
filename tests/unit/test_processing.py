from __future__ import annotations

import copy
import json
import random
from typing import Any

import pytest

from service.domain.checksums import is_valid_ocr
from service.domain.outcomes import Outcome
from service.domain.transform import TransformDefaults
from service.ports import AmiliRejected, AmiliUnauthorized, AmiliUnavailable
from service.processing import Backoff, InvoiceProcessor
from tests.fakes import FakeAmili, FakeDeadLetters, FakeResults, RecordingSleep, structured_record

ACCOUNT = "674dbeaf08847b9501cc9132"
CREDITOR = "674dbeb208847b9501cc9138"


class World:
    def __init__(self) -> None:
        self.amili = FakeAmili()
        self.results = FakeResults()
        self.dead_letters = FakeDeadLetters()
        self.sleep = RecordingSleep()
        self.processor = InvoiceProcessor(
            amili=self.amili,
            results=self.results,
            dead_letters=self.dead_letters,
            defaults=TransformDefaults(account=ACCOUNT, creditor=CREDITOR),
            backoff=Backoff(initial_seconds=1, max_seconds=8),
            sleep=self.sleep,
            rng=random.Random(1),
        )

    def data(self, index: int = 0) -> dict[str, Any]:
        event, _ = self.results.published[index]
        data: dict[str, Any] = event.data
        return data


@pytest.fixture
def world() -> World:
    return World()


@pytest.fixture
def event(sample_events: list[dict[str, Any]]) -> dict[str, Any]:
    return copy.deepcopy(sample_events[0])


async def test_an_invoice_is_registered_and_its_result_published(world: World, event: dict[str, Any]) -> None:
    handled = await world.processor.process(structured_record(event))
    assert handled.outcome is Outcome.REGISTERED
    assert world.amili.posts == 1
    data = world.data()
    assert data["outcome"] == "registered"
    assert data["invoice_number"] == "DEMO-1001"
    assert is_valid_ocr(data["amili"]["ocr_number_ocr"])
    stored_request, receipt = world.amili.registrations[(CREDITOR, "DEMO-1001")]
    assert data["amili"]["_case"] == receipt.case
    assert stored_request.customer.name == "Astrid Lindqvist"
    assert world.results.published[0][1] == f"{CREDITOR}/DEMO-1001".encode()


async def test_a_broken_business_rule_is_rejected_without_calling_amili(
    world: World, sample_events: list[dict[str, Any]]
) -> None:
    handled = await world.processor.process(structured_record(sample_events[5]))
    assert handled.outcome is Outcome.REJECTED
    assert world.amili.posts == 0
    fields = {reason["field"] for reason in world.data()["reasons"]}
    assert fields == {"data.due_date", "data.customer.id_number", "data.lines[0].vat_rate"}


async def test_an_unreadable_event_goes_to_dead_letters_and_publishes_nothing(world: World) -> None:
    record = structured_record({"specversion": "1.0"})
    handled = await world.processor.process(record)
    assert handled.outcome is None
    assert handled.dead_letter_rule == "cloudevents_attributes"
    assert world.results.published == []
    assert world.dead_letters.letters[0][0] is record


async def test_amili_validation_errors_become_a_rejection(world: World, event: dict[str, Any]) -> None:
    world.amili.fail_next(AmiliRejected(422, {"customer.name": "required field"}))
    await world.processor.process(structured_record(event))
    assert world.data()["outcome"] == "rejected"
    assert world.data()["reasons"] == [
        {"field": "data.customer.name", "rule": "amili_validation", "message": "required field"}
    ]
    assert world.sleep.waits == []


async def test_transient_failures_wait_and_retry(world: World, event: dict[str, Any]) -> None:
    world.amili.fail_next(AmiliUnavailable("HTTP 503"))
    world.amili.fail_next(AmiliUnavailable("HTTP 429", retry_after=7.0))
    world.amili.fail_next(AmiliUnauthorized("401"))
    handled = await world.processor.process(structured_record(event))
    assert handled.outcome is Outcome.REGISTERED
    assert handled.attempts == 4
    assert world.sleep.waits[1] == 7.0  # Retry-After is honoured
    assert 0.5 <= world.sleep.waits[0] <= 1.0
    assert 2.0 <= world.sleep.waits[2] <= 4.0


async def test_timeout_after_amili_stored_is_reconciled_without_a_second_post(
    world: World, event: dict[str, Any]
) -> None:
    world.amili.fail_next(AmiliUnavailable("timed out", outcome_unknown=True), store_first=True)
    handled = await world.processor.process(structured_record(event))
    assert handled.outcome is Outcome.REGISTERED
    assert world.amili.posts == 1
    assert world.amili.lookups == 1
    assert len(world.amili.registrations) == 1


async def test_an_unknown_outcome_that_did_not_store_is_posted_again(
    world: World, event: dict[str, Any]
) -> None:
    world.amili.fail_next(AmiliUnavailable("reset", outcome_unknown=True))
    await world.processor.process(structured_record(event))
    assert world.amili.posts == 2
    assert world.amili.lookups == 1
    assert world.data()["outcome"] == "registered"


async def test_the_same_event_twice_registers_once_and_repeats_the_result(
    world: World, event: dict[str, Any]
) -> None:
    await world.processor.process(structured_record(event, offset=1))
    await world.processor.process(structured_record(event, offset=2))
    assert len(world.amili.registrations) == 1
    first, second = world.data(0), world.data(1)
    assert first == second
    assert world.results.published[0][0].id == world.results.published[1][0].id


async def test_result_payload_is_json(world: World, event: dict[str, Any]) -> None:
    await world.processor.process(structured_record(event))
    document = json.loads(world.results.published[0][0].to_structured())
    assert document["specversion"] == "1.0"
    assert document["source"] == "amili-registrar"
