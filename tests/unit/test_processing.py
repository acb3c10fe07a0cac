"""The processing of one event and the exactly-once protocol, on fakes of every port."""

from __future__ import annotations

import asyncio
import copy
import json
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from service.amili.mapping import to_registration
from service.amili.models import InvoiceRegistrationRequest
from service.circuit import AmiliCircuit, CircuitState
from service.domain.checksums import is_valid_ocr
from service.domain.invoice import Invoice
from service.domain.outcomes import Outcome
from service.domain.rules import TransformDefaults
from service.events.cloudevents import CloudEvent
from service.ledger.base import ClaimStatus, LedgerError
from service.ops.metrics import Metrics, MetricsObserver
from service.ports import (
    AmiliMisconfigured,
    AmiliPort,
    AmiliRateLimited,
    AmiliRejected,
    AmiliUnauthorized,
    AmiliUnavailable,
    Committed,
)
from service.processing import InvoiceProcessor, ProcessingObserver
from service.registration import (
    Backoff,
    Decision,
    InvoiceRegistration,
    RegistrationObserver,
    RegistrationPolicy,
    fingerprint,
)
from tests.fakes import (
    FakeAmili,
    FakeDeadLetters,
    FakeLedger,
    FakeResults,
    RecordingSleep,
    structured_record,
)

ACCOUNT = "674dbeaf08847b9501cc9132"
CREDITOR = "674dbeb208847b9501cc9138"


Sleep = Callable[[float], Awaitable[None]]


class Crash(Exception):
    """Stands for the process dying at that point."""


class LedgerErrors(ProcessingObserver):
    def __init__(self) -> None:
        self.operations: list[str] = []

    def ledger_error(self, operation: str) -> None:
        self.operations.append(operation)


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


BACKOFF = Backoff(initial_seconds=1, max_seconds=8)


class World:
    def __init__(self, *, owner: str = "replica-a", max_attempts: int = 4, threshold: int = 50) -> None:
        self.amili = FakeAmili()
        self.ledger = FakeLedger()
        self.results = FakeResults()
        self.dead_letters = FakeDeadLetters()
        self.sleep = RecordingSleep()
        self.clock = Clock()
        self.circuit = AmiliCircuit(failure_threshold=threshold, open_seconds=0, unauthorized_retry_seconds=0)
        self.owner = owner
        self.max_attempts = max_attempts
        self.observed = LedgerErrors()
        self.processor = self.build(owner)

    def build(
        self, owner: str, sleep: Sleep | None = None, amili: AmiliPort | None = None
    ) -> InvoiceProcessor:
        """A processor over this world's fakes (``amili`` in place of its fake Amili, if given), its
        registration waiting with ``sleep`` (else the recording one)."""
        return InvoiceProcessor(
            registration=self.registration(owner, sleep=sleep, amili=amili),
            ledger=self.ledger,
            results=self.results,
            dead_letters=self.dead_letters,
            defaults=TransformDefaults(account=ACCOUNT, creditor=CREDITOR),
            clock=self.clock,
            backoff=BACKOFF,
            sleep=self.sleep,
            observer=self.observed,
        )

    def registration(
        self,
        owner: str = "replica-a",
        *,
        sleep: Sleep | None = None,
        amili: AmiliPort | None = None,
        max_in_flight: int = 128,
        observer: RegistrationObserver | None = None,
    ) -> InvoiceRegistration:
        """The registration protocol over this world's fakes (``amili`` in place of its fake Amili,
        if given), waiting with ``sleep`` (else the recording one)."""
        return InvoiceRegistration(
            amili=amili or self.amili,
            ledger=self.ledger,
            circuit=self.circuit,
            owner=owner,
            clock=self.clock,
            policy=RegistrationPolicy(
                backoff=BACKOFF, max_attempts=self.max_attempts, max_in_flight=max_in_flight
            ),
            sleep=sleep or self.sleep,
            rng=random.Random(1),
            observer=observer,
        )

    def data(self, index: int = -1) -> dict[str, Any]:
        event, _ = self.results.published[index]
        data: dict[str, Any] = event.data
        return data


@pytest.fixture
def world() -> World:
    return World()


@pytest.fixture
def event(sample_events: list[dict[str, Any]]) -> dict[str, Any]:
    return copy.deepcopy(sample_events[0])


async def test_an_invoice_is_registered_recorded_and_its_result_published(
    world: World, event: dict[str, Any]
) -> None:
    handled = await world.processor.process(structured_record(event))
    assert handled.outcome is Outcome.REGISTERED
    assert world.amili.posts == 1
    data = world.data()
    assert data["outcome"] == "registered"
    assert data["invoice_number"] == "DEMO-1001"
    assert is_valid_ocr(data["amili"]["ocr_number_ocr"])
    _, receipt = world.amili.registrations[(CREDITOR, "DEMO-1001")]
    assert data["amili"]["_case"] == receipt.case
    assert world.results.published[0][1] == f"{CREDITOR}/DEMO-1001".encode()
    await world.processor.settle()  # marked published off the event's path
    entry = world.ledger.entries[(CREDITOR, "DEMO-1001")]
    assert entry.outcome is Outcome.REGISTERED
    assert entry.result_published
    assert entry.result == data


async def test_a_broken_business_rule_is_rejected_without_calling_amili_or_recording(
    world: World, sample_events: list[dict[str, Any]]
) -> None:
    handled = await world.processor.process(structured_record(sample_events[5]))
    assert handled.outcome is Outcome.REJECTED
    assert world.amili.posts == 0
    assert world.ledger.entries == {}
    fields = {reason["field"] for reason in world.data()["reasons"]}
    assert fields == {"data.due_date", "data.customer.id_number", "data.lines[0].vat_rate"}


async def test_an_unreadable_event_goes_to_dead_letters_and_publishes_nothing(world: World) -> None:
    record = structured_record({"specversion": "1.0"})
    handled = await world.processor.process(record)
    assert handled.outcome is None
    assert handled.dead_letter_rule == "cloudevents_attributes"
    assert world.results.published == []
    assert world.dead_letters.letters[0][0] is record


async def test_amili_validation_errors_become_a_recorded_rejection(
    world: World, event: dict[str, Any]
) -> None:
    world.amili.fail_next(AmiliRejected(422, {"customer.name": "required field"}))
    await world.processor.process(structured_record(event))
    assert world.data()["outcome"] == "rejected"
    assert world.data()["reasons"] == [
        {"field": "data.customer.name", "rule": "amili_validation", "message": "required field"}
    ]
    assert world.sleep.waits == []
    assert world.ledger.entries[(CREDITOR, "DEMO-1001")].outcome is Outcome.REJECTED


async def test_a_corrected_invoice_after_an_amili_rejection_is_registered(
    world: World, event: dict[str, Any]
) -> None:
    world.amili.fail_next(AmiliRejected(422, {"customer.name": "required field"}))
    await world.processor.process(structured_record(event))
    corrected = copy.deepcopy(event)
    corrected["data"]["customer"]["name"] = "Astrid M. Lindqvist"
    await world.processor.process(structured_record(corrected, offset=1))
    assert world.data()["outcome"] == "registered"
    assert len(world.amili.registrations) == 1


async def test_transient_failures_wait_and_retry(world: World, event: dict[str, Any]) -> None:
    world.amili.fail_next(AmiliUnavailable("HTTP 503"))
    world.amili.fail_next(AmiliUnavailable("HTTP 429", retry_after=7.0))
    handled = await world.processor.process(structured_record(event))
    assert handled.outcome is Outcome.REGISTERED
    assert handled.attempts == 3
    assert 0.5 <= world.sleep.waits[0] <= 1.0
    assert world.sleep.waits[1] == 7.0  # Retry-After is honoured
    assert world.ledger.entries[(CREDITOR, "DEMO-1001")].attempts == 3  # renewed before each retry


async def test_rate_limits_never_give_an_invoice_up_nor_open_the_circuit(event: dict[str, Any]) -> None:
    world = World(max_attempts=2, threshold=2)
    for _ in range(6):  # three times max_attempts, three times the circuit's threshold
        world.amili.fail_next(AmiliRateLimited("HTTP 429"))
    world.amili.fail_next(AmiliRateLimited("HTTP 429", retry_after=3.0))
    handled = await world.processor.process(structured_record(event))
    assert handled.outcome is Outcome.REGISTERED
    assert handled.attempts == 8
    assert world.circuit.state is CircuitState.CLOSED
    assert all(0.5 <= wait <= 1.0 for wait in world.sleep.waits[:6])  # a first backoff, never longer
    assert world.sleep.waits[6] == 3.0


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


async def test_a_claim_left_in_flight_by_a_crash_is_looked_up_before_any_post(
    world: World, event: dict[str, Any]
) -> None:
    # A replica claimed it, POSTed, Amili stored it, the answer was lost, and the replica died.
    async def die(_: float) -> None:
        raise Crash

    crashed = world.build("replica-dead", sleep=die)
    world.amili.fail_next(AmiliUnavailable("killed", outcome_unknown=True), store_first=True)
    with pytest.raises(Crash):
        await crashed.process(structured_record(event))
    assert world.ledger.entries[(CREDITOR, "DEMO-1001")].outcome is None

    world.clock.now += timedelta(minutes=3)  # the dead replica's lease ran out
    handled = await world.processor.process(structured_record(event))
    assert handled.outcome is Outcome.REGISTERED
    assert world.amili.posts == 1  # adopted, not posted again
    assert world.amili.lookups == 1


async def claimed_by_replica_b(world: World, request: InvoiceRegistrationRequest) -> None:
    """Another replica claims the invoice now (its lease: 2 minutes)."""
    await world.ledger.claim(
        creditor=request.creditor,
        invoice_number=request.invoice_number,
        fingerprint=fingerprint(request),
        event_id="e",
        owner="replica-b",
        now=world.clock.now,
        lease=timedelta(minutes=2),
    )


async def test_a_live_claim_of_another_replica_is_waited_for(world: World, event: dict[str, Any]) -> None:
    await claimed_by_replica_b(world, _request(event, "DEMO-1001"))

    async def advance(seconds: float) -> None:
        world.sleep.waits.append(seconds)
        world.clock.now += timedelta(seconds=seconds)

    handled = await world.build("replica-a", sleep=advance).process(structured_record(event))
    assert handled.outcome is Outcome.REGISTERED
    assert sum(world.sleep.waits) >= 120  # held until replica-b's lease lapsed
    assert world.amili.lookups == 1  # then reconciled: replica-b might have stored it


async def test_the_same_event_twice_registers_once_and_repeats_the_same_result(
    world: World, event: dict[str, Any]
) -> None:
    await world.processor.process(structured_record(event, offset=1))
    await world.processor.process(structured_record(event, offset=2))
    assert world.amili.posts == 1
    assert world.data(0) == world.data(1)
    assert world.results.published[0][0].id == world.results.published[1][0].id


async def test_the_same_invoice_as_a_different_event_registers_once(
    world: World, event: dict[str, Any]
) -> None:
    await world.processor.process(structured_record(event, offset=1))
    again = copy.deepcopy(event)
    again["id"] = "another-event-id"
    await world.processor.process(structured_record(again, offset=2))
    assert world.amili.posts == 1
    assert world.data(1)["outcome"] == "registered"
    assert world.data(1)["inbound_event_id"] == event["id"]  # the stored result, unchanged


async def test_the_same_number_with_other_content_is_a_conflict(world: World, event: dict[str, Any]) -> None:
    await world.processor.process(structured_record(event, offset=1))
    changed = copy.deepcopy(event)
    changed["id"] = "changed-event"
    changed["data"]["lines"][0]["unit_price"] = 499.0
    changed["data"]["lines"][0]["total_excluding_vat"] = 499.0
    handled = await world.processor.process(structured_record(changed, offset=2))
    assert handled.outcome is Outcome.CONFLICT
    assert world.amili.posts == 1
    assert world.data()["outcome"] == "conflict"
    assert world.data()["inbound_event_id"] == "changed-event"
    assert world.results.published[-1][0].type == "amili-registrar.registration.conflict.v1"
    stored, _ = world.amili.registrations[(CREDITOR, "DEMO-1001")]
    assert stored.matrix[0].unit_price == 399  # nothing overwritten
    assert world.ledger.entries[(CREDITOR, "DEMO-1001")].outcome is Outcome.REGISTERED


async def test_an_invoice_that_keeps_failing_gives_up_and_is_dead_lettered(
    world: World, event: dict[str, Any]
) -> None:
    for _ in range(4):
        world.amili.fail_next(AmiliUnavailable("HTTP 500"))
    record = structured_record(event)
    handled = await world.processor.process(record)
    assert handled.outcome is Outcome.FAILED
    assert handled.dead_letter_rule == "gave_up"
    assert world.data()["outcome"] == "failed"
    assert world.dead_letters.letters[0][0] is record
    assert world.ledger.entries[(CREDITOR, "DEMO-1001")].outcome is Outcome.FAILED
    # A replay of the dead letter tries again (looking up first) and registers it.
    await world.processor.process(record)
    assert world.data()["outcome"] == "registered"
    assert world.amili.lookups == 1


async def test_failures_during_an_outage_do_not_count_towards_giving_up(event: dict[str, Any]) -> None:
    world = World(max_attempts=3, threshold=2)
    for _ in range(10):
        world.amili.fail_next(AmiliUnavailable("HTTP 503"))
    handled = await world.processor.process(structured_record(event))
    assert handled.outcome is Outcome.REGISTERED
    assert world.dead_letters.letters == []


async def test_refused_credentials_never_reject_or_dead_letter(world: World, event: dict[str, Any]) -> None:
    for _ in range(6):
        world.amili.fail_next(AmiliUnauthorized("401"))
    handled = await world.processor.process(structured_record(event))
    assert handled.outcome is Outcome.REGISTERED
    assert world.dead_letters.letters == []


async def test_a_configuration_error_never_rejects_fails_or_dead_letters(event: dict[str, Any]) -> None:
    world = World(max_attempts=2, threshold=1)
    wrong_path = AmiliMisconfigured("POST", "http://amili/wrong/invoice--registrations", 404)
    for _ in range(6):  # far more than max_attempts
        world.amili.fail_next(wrong_path)
    metrics = Metrics()
    world.processor = InvoiceProcessor(
        registration=world.registration(observer=MetricsObserver(metrics)),
        ledger=world.ledger,
        results=world.results,
        dead_letters=world.dead_letters,
        defaults=TransformDefaults(account=ACCOUNT, creditor=CREDITOR),
        clock=world.clock,
        backoff=BACKOFF,
        sleep=world.sleep,
    )
    handled = await world.processor.process(structured_record(event))
    assert handled.outcome is Outcome.REGISTERED  # the circuit held it until the endpoint answered
    assert handled.attempts == 7
    assert world.dead_letters.letters == []
    assert [data["outcome"] for data in (world.data(i) for i in range(len(world.results.published)))] == [
        "registered"
    ]
    assert metrics.registry.get_sample_value("registrar_retries_total", {"reason": "misconfigured"}) == 6
    assert world.circuit.config_error is None


async def test_a_ledger_outage_pauses_the_invoice(world: World, event: dict[str, Any]) -> None:
    world.ledger.failures_to_inject = 3
    handled = await world.processor.process(structured_record(event))
    assert handled.outcome is Outcome.REGISTERED
    assert len(world.sleep.waits) == 3


async def test_results_recorded_but_not_published_are_published_on_restart(
    world: World, event: dict[str, Any]
) -> None:
    class CrashOnPublish(FakeResults):
        async def publish_result(self, event: Any, key: bytes) -> None:
            raise ConnectionError("killed between recording and publishing")

    world.results = CrashOnPublish()
    world.processor = world.build("replica-a")
    with pytest.raises(ConnectionError):
        await world.processor.process(structured_record(event))
    assert not world.ledger.entries[(CREDITOR, "DEMO-1001")].result_published

    world.results = FakeResults()
    world.processor = world.build("replica-a")
    assert await world.processor.publish_pending() == 1
    assert world.data()["outcome"] == "registered"
    assert world.ledger.entries[(CREDITOR, "DEMO-1001")].result_published
    assert await world.processor.publish_pending() == 0


async def test_an_invalid_ocr_from_amili_is_not_published_as_registered(
    world: World, event: dict[str, Any]
) -> None:
    original = world.amili.register

    async def bad_ocr(request: Any) -> Any:
        receipt = await original(request)
        return receipt.model_copy(update={"ocr_number_ocr": "20251852687013699045"})

    world.amili.register = bad_ocr  # type: ignore[method-assign]
    handled = await world.processor.process(structured_record(event))
    assert handled.outcome is Outcome.FAILED
    assert world.data()["reasons"][0]["rule"] == "ocr_check_digit"


async def test_result_payload_is_a_cloudevent(world: World, event: dict[str, Any]) -> None:
    await world.processor.process(structured_record(event))
    document = json.loads(world.results.published[0][0].to_structured())
    assert document["specversion"] == "1.0"
    assert document["source"] == "amili-registrar"


async def test_the_event_does_not_wait_for_its_result_to_be_marked_published(
    world: World, event: dict[str, Any]
) -> None:
    released = asyncio.Event()

    class SlowToMark(FakeLedger):
        async def mark_published(self, *, creditor: str, invoice_number: str, now: datetime) -> None:
            await released.wait()
            await super().mark_published(creditor=creditor, invoice_number=invoice_number, now=now)

    slow = SlowToMark()
    world.ledger = slow
    world.processor = world.build("replica-a")

    handled = await world.processor.process(structured_record(event))

    assert handled.outcome is Outcome.REGISTERED
    assert world.results.published
    assert not slow.entries[(CREDITOR, "DEMO-1001")].result_published
    released.set()
    await world.processor.settle()
    assert slow.entries[(CREDITOR, "DEMO-1001")].result_published


class InTransaction(FakeResults):
    """A transactional publisher: the result is held, and committed (or dropped) later."""

    def __init__(self) -> None:
        super().__init__()
        self.commit: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

    async def publish_result(self, event: CloudEvent, key: bytes) -> Committed | None:
        await super().publish_result(event, key)
        return self.commit


@pytest.mark.parametrize("committed", [True, False])
async def test_with_transactions_the_published_mark_follows_the_commit(
    world: World, event: dict[str, Any], committed: bool
) -> None:
    transaction = InTransaction()
    world.results = transaction
    world.processor = world.build("replica-a")

    handled = await world.processor.process(structured_record(event))
    await asyncio.sleep(0)  # the mark is under way, waiting for the transaction

    assert handled.outcome is Outcome.REGISTERED
    assert not world.ledger.entries[(CREDITOR, "DEMO-1001")].result_published
    transaction.commit.set_result(committed)
    await world.processor.settle()
    # Aborted: the event's offset was not committed either; it publishes the result again.
    assert world.ledger.entries[(CREDITOR, "DEMO-1001")].result_published is committed


async def test_a_failed_mark_is_retried_and_counted(world: World, event: dict[str, Any]) -> None:
    class FailsToMarkOnce(FakeLedger):
        failed = False

        async def mark_published(self, *, creditor: str, invoice_number: str, now: datetime) -> None:
            if not self.failed:
                self.failed = True
                raise LedgerError("database unavailable")
            await super().mark_published(creditor=creditor, invoice_number=invoice_number, now=now)

    world.ledger = FailsToMarkOnce()
    world.processor = world.build("replica-a")
    await world.processor.process(structured_record(event))
    await world.processor.settle()
    assert world.ledger.entries[(CREDITOR, "DEMO-1001")].result_published
    assert world.observed.operations == ["mark_published"]


def _request(event: dict[str, Any], number: str) -> InvoiceRegistrationRequest:
    data = copy.deepcopy(event["data"])
    data["invoice_number"] = number
    request = to_registration(Invoice.model_validate(data), TransformDefaults(ACCOUNT, CREDITOR))
    assert isinstance(request, InvoiceRegistrationRequest)
    return request


class GatedAmili(FakeAmili):
    """Holds every POST until ``gate`` opens, counting the calls under way."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.under_way = 0
        self.most_under_way = 0

    async def register(self, request: InvoiceRegistrationRequest) -> Any:
        self.under_way += 1
        self.most_under_way = max(self.most_under_way, self.under_way)
        try:
            await self.gate.wait()
            return await super().register(request)
        finally:
            self.under_way -= 1


async def _settle_loop() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def test_at_most_max_in_flight_registrations_are_under_way(world: World, event: dict[str, Any]) -> None:
    amili = GatedAmili()
    metrics = Metrics()
    registration = world.registration(max_in_flight=2, amili=amili, observer=MetricsObserver(metrics))
    requests = [_request(event, f"N-{i}") for i in range(5)]
    tasks = [asyncio.create_task(registration.register(r, event_id=r.invoice_number)) for r in requests]
    await _settle_loop()
    assert amili.under_way == 2
    assert registration.in_flight == 2
    assert metrics.registry.get_sample_value("registrar_registrations_in_flight") == 2
    assert len(world.ledger.entries) == 5  # claimed, the others waiting for a place
    amili.gate.set()
    decisions = await asyncio.gather(*tasks)
    assert [d.result.outcome for d in decisions] == ["registered"] * 5
    assert amili.most_under_way == 2
    assert registration.in_flight == 0
    assert metrics.registry.get_sample_value("registrar_registrations_in_flight") == 0


async def test_recording_an_outcome_does_not_hold_a_place(world: World, event: dict[str, Any]) -> None:
    recorded = asyncio.Event()

    class SlowToRecord(FakeLedger):
        async def finish(self, **arguments: Any) -> Any:
            await recorded.wait()
            return await super().finish(**arguments)

    world.ledger = SlowToRecord()
    registration = world.registration(max_in_flight=1)
    first = asyncio.create_task(registration.register(_request(event, "N-1"), event_id="e-1"))
    second = asyncio.create_task(registration.register(_request(event, "N-2"), event_id="e-2"))
    await _settle_loop()
    assert world.amili.posts == 2  # the second went to Amili while the first's outcome waits for the disk
    assert not first.done()
    recorded.set()
    assert (await first).result.outcome == (await second).result.outcome == "registered"
    assert world.ledger.entries[(CREDITOR, "N-1")].outcome is Outcome.REGISTERED


async def test_waiting_for_another_replicas_claim_does_not_hold_a_place(
    world: World, event: dict[str, Any]
) -> None:
    held = _request(event, "N-HELD")
    await claimed_by_replica_b(world, held)
    lapse = asyncio.Event()

    async def wait_for_lapse(seconds: float) -> None:
        await lapse.wait()
        world.clock.now += timedelta(minutes=3)

    registration = world.registration(max_in_flight=1, sleep=wait_for_lapse)
    waiting = asyncio.create_task(registration.register(held, event_id="e-held"))
    await _settle_loop()
    other = await asyncio.wait_for(registration.register(_request(event, "N-2"), event_id="e-2"), 5)
    assert other.result.outcome == "registered"
    assert not waiting.done()
    lapse.set()
    assert (await waiting).result.outcome == "registered"


@dataclass
class OneAtAmiliOneWaiting:
    """One place at Amili: N-1's POST holds it (until ``amili.gate`` opens), N-2 is claimed and
    waits for it."""

    amili: GatedAmili
    at_amili: asyncio.Task[Decision]
    waiting: asyncio.Task[Decision]
    waiting_request: InvoiceRegistrationRequest


async def one_at_amili_one_waiting(
    world: World, event: dict[str, Any], sleep: Sleep | None = None
) -> OneAtAmiliOneWaiting:
    amili = GatedAmili()
    registration = world.registration(max_in_flight=1, amili=amili, sleep=sleep)
    at_amili = asyncio.create_task(registration.register(_request(event, "N-1"), event_id="e-1"))
    waiting_request = _request(event, "N-2")
    waiting = asyncio.create_task(registration.register(waiting_request, event_id="e-2"))
    await _settle_loop()
    assert amili.under_way == 1
    assert (CREDITOR, "N-2") in world.ledger.entries
    return OneAtAmiliOneWaiting(amili, at_amili, waiting, waiting_request)


async def test_a_claim_that_waited_long_for_a_place_is_renewed_before_the_post(
    world: World, event: dict[str, Any]
) -> None:
    places = await one_at_amili_one_waiting(world, event)
    world.clock.now += timedelta(seconds=61)  # more than half the 2-minute lease
    places.amili.gate.set()
    await asyncio.gather(places.at_amili, places.waiting)
    assert world.ledger.entries[(CREDITOR, "N-1")].attempts == 1
    assert world.ledger.entries[(CREDITOR, "N-2")].attempts == 2  # renewed before its POST
    assert places.amili.posts == 2


async def test_a_claim_lost_while_waiting_for_a_place_is_not_posted_blindly(
    world: World, event: dict[str, Any]
) -> None:
    async def advance(seconds: float) -> None:
        world.clock.now += timedelta(seconds=seconds)

    places = await one_at_amili_one_waiting(world, event, sleep=advance)
    world.clock.now += timedelta(minutes=3)  # its claim lapsed, and another replica took it over
    await claimed_by_replica_b(world, places.waiting_request)
    assert world.ledger.entries[(CREDITOR, "N-2")].claimed_by == "replica-b"
    places.amili.gate.set()
    decisions = await asyncio.gather(places.at_amili, places.waiting)
    assert [d.result.outcome for d in decisions] == ["registered", "registered"]
    # It waited for replica-b's claim to lapse, then looked the invoice up before its POST.
    assert places.amili.lookups == 1
    assert places.amili.posts == 2


async def test_an_abandoned_claim_is_given_back_only_if_it_never_went_to_amili(
    world: World, event: dict[str, Any]
) -> None:
    places = await one_at_amili_one_waiting(world, event)
    for task in (places.waiting, places.at_amili):  # both abandoned, as by a drain out of time
        task.cancel()
    await asyncio.gather(places.waiting, places.at_amili, return_exceptions=True)

    async def claimed_by_b(number: str) -> ClaimStatus:
        claim = await world.ledger.claim(
            creditor=CREDITOR,
            invoice_number=number,
            fingerprint=world.ledger.entries[(CREDITOR, number)].fingerprint,
            event_id="e",
            owner="replica-b",
            now=world.clock.now,
            lease=timedelta(minutes=2),
        )
        return claim.status

    assert await claimed_by_b("N-2") is ClaimStatus.RECLAIMED  # given back: taken over at once
    assert await claimed_by_b("N-1") is ClaimStatus.HELD  # its POST may have reached Amili: kept


class _LedgerWatchingResults(FakeResults):
    """Results that note, at each publication, the ledger's outcome for the invoice then."""

    def __init__(self, ledger: FakeLedger, *, refuse: bool = False) -> None:
        super().__init__()
        self.ledger = ledger
        self.refuse = refuse
        self.outcomes_seen: list[Outcome | None] = []
        self.published_once = asyncio.Event()

    async def publish_result(self, event: Any, key: bytes) -> None:
        entry = self.ledger.entries.get((CREDITOR, "DEMO-1001"))
        self.outcomes_seen.append(None if entry is None else entry.outcome)
        self.published_once.set()
        if self.refuse:
            raise RuntimeError("the broker refused the record")
        await super().publish_result(event, key)


class _SlowFinishLedger(FakeLedger):
    """A ledger whose outcome write waits for the result's publication (as a group commit under
    way would): run one after the other, the two would never end."""

    def __init__(self) -> None:
        super().__init__()
        self.published: asyncio.Event | None = None

    async def finish(self, **arguments: Any) -> None:
        if self.published is not None:
            await asyncio.wait_for(self.published.wait(), timeout=2)
        await super().finish(**arguments)


async def test_a_registrations_result_goes_out_while_the_ledger_records_it(
    world: World, event: dict[str, Any]
) -> None:
    ledger = _SlowFinishLedger()
    results = _LedgerWatchingResults(ledger)
    ledger.published = results.published_once
    world.ledger, world.results = ledger, results
    handled = await world.build("replica-a").process(structured_record(event))
    assert handled.outcome is Outcome.REGISTERED
    assert results.outcomes_seen == [None]  # published before the outcome was written...
    assert ledger.entries[(CREDITOR, "DEMO-1001")].outcome is Outcome.REGISTERED  # ...and recorded
    assert len(results.published) == 1


async def test_an_amili_rejection_is_recorded_before_its_result_goes_out(
    world: World, event: dict[str, Any]
) -> None:
    # A replay may end otherwise than a rejection or a give-up, so those keep the ledger first.
    results = _LedgerWatchingResults(world.ledger)
    world.results = results
    world.amili.fail_next(AmiliRejected(422, {"customer.name": "required field"}))
    await world.build("replica-a").process(structured_record(event))
    assert results.outcomes_seen == [Outcome.REJECTED]


async def test_a_refused_publication_still_leaves_the_outcome_recorded_and_the_retry_publishes_it(
    world: World, event: dict[str, Any]
) -> None:
    results = _LedgerWatchingResults(world.ledger, refuse=True)
    world.results = results
    processor = world.build("replica-a")
    with pytest.raises(RuntimeError, match="refused"):
        await processor.process(structured_record(event))
    entry = world.ledger.entries[(CREDITOR, "DEMO-1001")]
    assert entry.outcome is Outcome.REGISTERED  # the write ended though the publication failed
    assert not entry.result_published
    results.refuse = False
    handled = await processor.process(structured_record(event))  # the engine tries the event again
    assert handled.outcome is Outcome.REGISTERED
    assert world.amili.posts == 1
    assert len(results.published) == 1
    assert results.outcomes_seen[-1] is Outcome.REGISTERED
