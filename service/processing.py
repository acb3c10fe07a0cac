"""The processing of one event: decode → transform → register → publish the result.

It does not know how events reach it (one at a time, or many in flight): the caller feeds it a
record and may commit that record's offset once ``process`` returns.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from service.amili.models import InvoiceRegistrationReceipt, InvoiceRegistrationRequest
from service.domain.field_paths import inbound_field_path
from service.domain.outcomes import Outcome, Rejection
from service.domain.transform import TransformDefaults, to_registration
from service.events.cloudevents import EnvelopeError
from service.events.contract import (
    AmiliIds,
    Reason,
    RegistrationResult,
    decode_invoice_created,
    result_event,
    result_key,
)
from service.events.record import InboundRecord
from service.ports import (
    AmiliDuplicate,
    AmiliPort,
    AmiliRejected,
    AmiliUnauthorized,
    AmiliUnavailable,
    DeadLetterPublisher,
    ResultPublisher,
)

log = logging.getLogger(__name__)

Sleep = Callable[[float], Awaitable[None]]
Clock = Callable[[], datetime]


@dataclass(frozen=True, slots=True)
class Backoff:
    """Capped exponential backoff with full jitter."""

    initial_seconds: float = 0.5
    max_seconds: float = 30.0
    multiplier: float = 2.0

    def delay(self, attempt: int, rng: random.Random) -> float:
        ceiling = min(self.max_seconds, self.initial_seconds * self.multiplier ** max(0, attempt - 1))
        return rng.uniform(ceiling / 2, ceiling)


@dataclass(frozen=True, slots=True)
class Handled:
    """What became of one record: an outcome published, or a dead letter."""

    outcome: Outcome | None
    dead_letter_rule: str | None = None
    attempts: int = 0


class InvoiceProcessor:
    def __init__(
        self,
        *,
        amili: AmiliPort,
        results: ResultPublisher,
        dead_letters: DeadLetterPublisher,
        defaults: TransformDefaults,
        backoff: Backoff | None = None,
        sleep: Sleep = asyncio.sleep,
        clock: Clock = lambda: datetime.now(UTC),
        rng: random.Random | None = None,
    ) -> None:
        self._amili = amili
        self._results = results
        self._dead_letters = dead_letters
        self._defaults = defaults
        self._backoff = backoff or Backoff()
        self._sleep = sleep
        self._clock = clock
        self._rng = rng or random.Random()

    async def process(self, record: InboundRecord) -> Handled:
        try:
            created = decode_invoice_created(record)
        except EnvelopeError as error:
            await self._dead_letters.dead_letter(record, error.rule, str(error))
            return Handled(outcome=None, dead_letter_rule=error.rule)

        invoice = created.invoice
        creditor = invoice.creditor or self._defaults.creditor or ""
        payload = to_registration(invoice, self._defaults)
        attempts = 0
        if isinstance(payload, Rejection):
            result = RegistrationResult(
                outcome=Outcome.REJECTED.value,
                creditor=creditor,
                invoice_number=invoice.invoice_number,
                inbound_event_id=created.event.id,
                reasons=[Reason.from_violation(v) for v in payload.violations],
            )
        else:
            registered, attempts = await self._register(payload)
            if isinstance(registered, AmiliRejected):
                result = RegistrationResult(
                    outcome=Outcome.REJECTED.value,
                    creditor=creditor,
                    invoice_number=invoice.invoice_number,
                    inbound_event_id=created.event.id,
                    reasons=[
                        Reason(field=inbound_field_path(path), rule="amili_validation", message=message)
                        for path, message in sorted(registered.issues.items())
                    ],
                )
            else:
                result = RegistrationResult(
                    outcome=Outcome.REGISTERED.value,
                    creditor=creditor,
                    invoice_number=invoice.invoice_number,
                    inbound_event_id=created.event.id,
                    amili=AmiliIds.from_receipt(registered),
                )
        event = result_event(result, time=self._clock())
        await self._results.publish_result(event, result_key(creditor, invoice.invoice_number))
        return Handled(outcome=Outcome(result.outcome), attempts=attempts)

    async def _register(
        self, payload: InvoiceRegistrationRequest
    ) -> tuple[InvoiceRegistrationReceipt | AmiliRejected, int]:
        """Register ``payload`` once, whatever it takes: an outage waits, it never drops the invoice.

        After an answer that leaves the outcome unknown (timeout, reset connection), the registration
        is looked up before any new POST, so that Amili never holds it twice.
        """
        attempt = 0
        look_up_first = False
        duplicate_reported = False
        while True:
            attempt += 1
            try:
                if look_up_first:
                    found = await self._amili.find_registration(payload.creditor, payload.invoice_number)
                    if found is not None:
                        return found, attempt
                    if duplicate_reported:
                        raise AmiliUnavailable("Amili reports a duplicate that its look-up does not show")
                    look_up_first = False
                return await self._amili.register(payload), attempt
            except AmiliDuplicate:
                look_up_first = duplicate_reported = True
                continue
            except AmiliRejected as rejected:
                return rejected, attempt
            except AmiliUnavailable as unavailable:
                look_up_first = look_up_first or unavailable.outcome_unknown
                delay = unavailable.retry_after
                reason = unavailable.reason
            except AmiliUnauthorized:
                delay = None
                reason = "credentials refused"
            wait = delay if delay is not None else self._backoff.delay(attempt, self._rng)
            log.warning(
                "amili call failed, retrying",
                extra={"reason": reason, "attempt": attempt, "retry_in_seconds": round(wait, 3)},
            )
            await self._sleep(wait)
