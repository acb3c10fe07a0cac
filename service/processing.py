"""The processing of one event: decode → transform → register → publish the result.

It does not know how events reach it (one at a time, or many in flight): the caller feeds it a
record and may commit that record's offset once ``process`` returns.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from service.amili.mapping import to_registration
from service.amili.models import InvoiceRegistrationRequest
from service.domain.invoice import InvoiceKey
from service.domain.outcomes import Outcome, Reason, Rejection
from service.domain.rules import TransformDefaults, registration_warnings
from service.events.cloudevents import CloudEvent, EnvelopeError
from service.events.contract import (
    InvalidInvoice,
    RegistrationResult,
    UnknownFields,
    decode_invoice_created,
    result_event,
    result_key,
)
from service.events.record import InboundRecord
from service.ledger.base import Ledger, LedgerError
from service.ports import Committed, DeadLetterPublisher, ResultPublisher
from service.registration import Backoff, InvoiceRegistration

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]
GAVE_UP_RULE = "gave_up"
TOO_LARGE_RULE = "too_large"


def record_size(record: InboundRecord) -> int:
    """The bytes a record carries: key, value and headers."""
    headers = sum(len(name) + len(value) for name, value in record.headers)
    return len(record.key or b"") + len(record.value or b"") + headers


@dataclass(frozen=True, slots=True)
class Handled:
    """What became of one record: an outcome published, or a dead letter."""

    outcome: Outcome | None
    dead_letter_rule: str | None = None
    attempts: int = 0
    key: InvoiceKey | None = None
    """The invoice, when the record could be read as one."""


@dataclass(frozen=True, slots=True)
class Route:
    """Which records must not overtake each other (``ordering_key``) and whose turn a record
    waits for (``creditor``), read before the record is decoded in full."""

    ordering_key: str
    creditor: str


class _RoutingData(BaseModel):
    model_config = ConfigDict(extra="ignore")

    invoice_number: Any = None
    creditor: Any = None


class _RoutingEnvelope(BaseModel):
    model_config = ConfigDict(extra="ignore")

    data: _RoutingData | None = None


def _routing_data(record: InboundRecord) -> _RoutingData | None:
    """The invoice number and creditor of a record, as far as a glance tells: pydantic's JSON
    reader skips the rest of the document without building it."""
    try:
        if record.header("ce_specversion") is not None:  # binary mode: the value is the data
            return _RoutingData.model_validate_json(record.value or b"")
        return _RoutingEnvelope.model_validate_json(record.value or b"").data
    except ValidationError:
        return None


@dataclass(frozen=True, slots=True)
class Undecodable:
    """A record that is no invoice-created event naming its invoice: it goes to dead letters, as
    ``error`` says."""

    record: InboundRecord
    error: EnvelopeError


@dataclass(frozen=True, slots=True)
class Answerable:
    """An event naming its invoice, decoded and transformed: its result will say what became of
    ``payload`` (what to register, or why not)."""

    record: InboundRecord
    key: InvoiceKey
    """The invoice, its creditor from the event or the configured default."""
    event: CloudEvent
    payload: InvoiceRegistrationRequest | Rejection
    warnings: tuple[Reason, ...] = ()
    """What a registrable invoice is registered despite (``ID_NUMBER_CHECK=warn``)."""
    unknown_fields: tuple[str, ...] = ()
    """Fields of ``data`` the invoice does not know, dropped (``UNKNOWN_FIELDS=ignore``)."""


Prepared = Undecodable | Answerable
"""A record ready to be handled: a dead letter, or an event to answer with a result."""


class ProcessingObserver:
    """Hooks for metrics; the default does nothing."""

    def dead_letter(self, rule: str) -> None: ...

    def result_published(
        self, outcome: str, event_time: datetime | None, since_taken: float | None = None
    ) -> None:
        """A result went out: ``event_time`` is the inbound event's own ``time`` (the producer's
        clock), ``since_taken`` the seconds since the engine took its record from Kafka (``None``
        for a result published again after a restart, or a record not from the engine)."""

    def ledger_error(self, operation: str) -> None: ...

    def unknown_fields(self, paths: tuple[str, ...]) -> None: ...


class InvoiceProcessor:
    def __init__(
        self,
        *,
        registration: InvoiceRegistration,
        ledger: Ledger,
        results: ResultPublisher,
        dead_letters: DeadLetterPublisher,
        defaults: TransformDefaults,
        clock: Clock = lambda: datetime.now(UTC),
        backoff: Backoff | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        observer: ProcessingObserver | None = None,
        unknown_fields: UnknownFields = "ignore",
        max_event_bytes: int | None = None,
    ) -> None:
        self._unknown_fields: UnknownFields = unknown_fields
        self._max_event_bytes = max_event_bytes
        self._registration = registration
        self._ledger = ledger
        self._results = results
        self._dead_letters = dead_letters
        self._defaults = defaults
        self._clock = clock
        self._backoff = backoff or Backoff()
        self._sleep = sleep
        self._rng = random.Random()
        self._observer = observer or ProcessingObserver()
        self._marking: set[asyncio.Task[None]] = set()

    def route(self, record: InboundRecord) -> Route:
        """Where a record queues, without decoding it (events wait to be handled as records: an
        event decoded in full weighs about ten times its record). The key is the one ``prepare``
        gives whenever the record names its invoice; a record that does not is a dead letter
        whatever its place, and waits in no invoice's line."""
        data = _routing_data(record)
        number = data.invoice_number if data is not None else None
        if data is None or not isinstance(number, str) or not number:
            return Route(f"{record.topic}:{record.partition}:{record.offset}", "")
        creditor = self._defaults.creditor_for(data.creditor if isinstance(data.creditor, str) else None)
        return Route(str(InvoiceKey(creditor, number)), creditor)

    def prepare(self, record: InboundRecord) -> Prepared:
        """Decode and transform (pure, no I/O)."""
        size = record_size(record)
        if self._max_event_bytes is not None and size > self._max_event_bytes:
            reason = f"the record has {size} bytes, more than MAX_EVENT_BYTES ({self._max_event_bytes})"
            return Undecodable(record, EnvelopeError(TOO_LARGE_RULE, reason))
        try:
            decoded = decode_invoice_created(record, unknown_fields=self._unknown_fields)
        except EnvelopeError as error:
            return Undecodable(record, error)
        except Exception as error:  # whatever the bytes, a record must end somewhere: here, dead letters
            reason = f"the record could not be decoded: {error.__class__.__name__}"
            return Undecodable(record, EnvelopeError("undecodable", reason))
        if isinstance(decoded, InvalidInvoice):
            key = InvoiceKey(self._defaults.creditor_for(decoded.creditor), decoded.invoice_number)
            return Answerable(record, key, decoded.event, Rejection(decoded.violations))
        invoice = decoded.invoice
        key = InvoiceKey(self._defaults.creditor_for(invoice.creditor), invoice.invoice_number)
        payload = to_registration(invoice, self._defaults)
        warnings: tuple[Reason, ...] = ()
        if not isinstance(payload, Rejection):
            warnings = tuple(registration_warnings(invoice, self._defaults))
        return Answerable(record, key, decoded.event, payload, warnings, decoded.unknown_fields)

    async def process(self, record: InboundRecord) -> Handled:
        return await self.handle(self.prepare(record))

    async def handle(self, prepared: Prepared) -> Handled:
        record = prepared.record
        if isinstance(prepared, Undecodable):
            error = prepared.error
            await self._dead_letters.dead_letter(record, error.rule, str(error))
            self._observer.dead_letter(error.rule)
            return Handled(outcome=None, dead_letter_rule=error.rule)

        event, payload, key = prepared.event, prepared.payload, prepared.key
        creditor, invoice_number = key
        if prepared.unknown_fields:
            # Names only, never values: a producer added fields this service does not know yet.
            log.debug("ignored unknown fields in data", extra={"fields": list(prepared.unknown_fields)})
            self._observer.unknown_fields(prepared.unknown_fields)
        if isinstance(payload, Rejection):
            result = RegistrationResult(
                outcome=Outcome.REJECTED,
                creditor=creditor,
                invoice_number=invoice_number,
                inbound_event_id=event.id,
                reasons=list(payload.violations),
            )
            # Not recorded: a corrected invoice under the same number must still be registrable.
            await self._publish(result, event.time, record.taken_at)
            return Handled(Outcome.REJECTED, key=key)

        committed: Committed | None = None

        async def announce(result: RegistrationResult) -> None:
            nonlocal committed
            committed = await self._publish(result, event.time, record.taken_at)

        decision = await self._registration.register(
            payload, event_id=event.id, warnings=prepared.warnings, announce=announce
        )
        if not decision.announced:
            await announce(decision.result)
        if decision.recorded and not decision.already_published:
            self._mark_published_later(decision.result, committed)
        dead_letter_rule = None
        if decision.gave_up:
            dead_letter_rule = GAVE_UP_RULE
            reason = "; ".join(r.message for r in decision.result.reasons)
            await self._dead_letters.dead_letter(record, GAVE_UP_RULE, reason)
            self._observer.dead_letter(GAVE_UP_RULE)
        return Handled(
            decision.result.outcome,
            dead_letter_rule=dead_letter_rule,
            attempts=decision.attempts,
            key=key,
        )

    async def give_up(self, prepared: Prepared, error: BaseException) -> Handled:
        """An event that keeps failing for a reason of ours goes to dead letters, so the stream
        moves on; the reason names the error, never its content."""
        rule = "processing_error"
        await self._dead_letters.dead_letter(
            prepared.record, rule, f"processing kept failing: {error.__class__.__name__}"
        )
        self._observer.dead_letter(rule)
        return Handled(outcome=None, dead_letter_rule=rule)

    async def publish_pending(self, *, batch: int = 100) -> int:
        """Publish the results recorded but never published (a crash came in between)."""
        published = 0
        while True:
            entries = await self._ledger.unpublished(limit=batch)
            if not entries:
                return published
            for entry in entries:
                assert entry.result is not None
                result = RegistrationResult.model_validate(entry.result)
                await self._publish(result, None)
                await self._mark_published(result)
                published += 1

    async def _publish(
        self, result: RegistrationResult, event_time: datetime | None, taken_at: float | None = None
    ) -> Committed | None:
        event = result_event(result, time=self._clock())
        committed = await self._results.publish_result(event, result_key(result.key))
        since_taken = None if taken_at is None else max(0.0, time.monotonic() - taken_at)
        self._observer.result_published(result.outcome, event_time, since_taken)
        return committed

    def _mark_published_later(self, result: RegistrationResult, committed: Committed | None = None) -> None:
        """Mark the result published without holding up its event: the mark waits for a ledger
        commit (an fsync), and losing it to a crash only publishes the same result (same event
        id) again on restart, which ``publish_pending`` does anyway. With transactions it waits
        for the one carrying the result, and is not made if that one is dropped."""
        marking = asyncio.create_task(self._mark_published(result, committed))
        self._marking.add(marking)
        marking.add_done_callback(self._marked)

    def _marked(self, marking: asyncio.Task[None]) -> None:
        self._marking.discard(marking)
        if not marking.cancelled() and marking.exception() is not None:
            log.error("marking a result published failed", exc_info=marking.exception())

    async def settle(self) -> None:
        """Wait for the results still being marked published (before the ledger closes)."""
        while self._marking:
            await asyncio.wait(set(self._marking))

    async def _mark_published(self, result: RegistrationResult, committed: Committed | None = None) -> None:
        if committed is not None and not await committed:
            return
        failures = 0
        while True:
            try:
                await self._ledger.mark_published(
                    creditor=result.creditor, invoice_number=result.invoice_number, now=self._clock()
                )
                return
            except LedgerError:
                # Publishing again later is harmless (same event id); losing track is not.
                failures += 1
                self._observer.ledger_error("mark_published")
                log.warning("ledger unavailable while marking a result published; retrying")
                await self._sleep(self._backoff.delay(failures, self._rng))
