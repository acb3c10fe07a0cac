"""Exactly one registration per invoice: the protocol over the ledger and Amili.

1. Claim the invoice in the ledger before any POST.
2. A new claim POSTs; a lapsed claim (a crash or a timeout left it in flight) looks the invoice up
   at Amili first and adopts what it finds. Amili's "not unique" is adopted the same way.
3. An invoice with a final outcome is never POSTed again; its stored result is published again.
   The same invoice number with a different fingerprint ends as a conflict, with nothing overwritten.
4. The outcome is written to the ledger before its result is published, except a registration's:
   given ``announce``, its result goes out while the ledger writes it, one wait for the ledger's
   disk (a group commit) fewer on the event's path. A crash in between leaves the claim in
   flight, and the replay's look-up adopts the same case: the same result, with the same event id,
   again. A rejection or a give-up waits for the ledger, since a replay may end otherwise (a POST
   that now succeeds) and a published "failed" must not be followed by a "registered".

At most so many invoices are at Amili at once (the flow's limit, adaptive or ``max_in_flight``),
each from its first call to Amili's final answer (retries included), taking their places in turn of
their creditors (``service.flow``). The claim before and the recording of the outcome after happen outside
that window, so an invoice never holds a place towards Amili while it waits for the ledger's disk;
a claim with less of its lease left than an attempt can last is renewed before the POST. An event
abandoned (by a rebalance or a stop that ran out of time) gives back a fresh claim it never took to
Amili, so that the next owner goes on at once instead of waiting for the lease.

Transient failures wait (capped backoff with jitter, ``Retry-After`` honoured) behind the circuit
breaker, so an outage pauses work instead of failing it; an invoice that keeps failing while Amili
is otherwise healthy gives up after ``max_attempts`` with a ``failed`` outcome. Refused credentials
and a configuration error (the endpoint answers 404/405/400: a wrong AMILI_BASE_URL) never count
towards that: the circuit holds every call back until they are over.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar

from service.amili.mapping import amili_ids, inbound_field_path
from service.amili.models import InvoiceRegistrationReceipt, InvoiceRegistrationRequest
from service.circuit import AmiliCircuit, CircuitState
from service.domain.checksums import is_valid_ocr
from service.domain.outcomes import Outcome, Reason
from service.events.contract import AmiliIds, RegistrationResult
from service.flow.fair import FairGate
from service.ledger.base import Claim, ClaimStatus, Ledger, LedgerError
from service.ports import (
    AmiliDuplicate,
    AmiliMisconfigured,
    AmiliPort,
    AmiliRateLimited,
    AmiliRejected,
    AmiliUnauthorized,
    AmiliUnavailable,
)

log = logging.getLogger(__name__)

T = TypeVar("T")
Sleep = Callable[[float], Awaitable[None]]
Clock = Callable[[], datetime]
Announce = Callable[[RegistrationResult], Awaitable[None]]


async def _both(first: Awaitable[None], second: Awaitable[None]) -> None:
    """Run both to their end, whatever either does, then raise the first failure: a failed
    publication must not leave the ledger's write behind, running on its own, when the event is
    tried again. Cancelled, both are cancelled (a write handed to the ledger commits all the same)."""
    tasks = [asyncio.ensure_future(first), asyncio.ensure_future(second)]
    try:
        await asyncio.wait(tasks)
    except asyncio.CancelledError:
        for task in tasks:
            task.cancel()
        raise
    failures = [error for task in tasks if (error := task.exception()) is not None]
    if failures:
        raise failures[0]


def fingerprint(request: InvoiceRegistrationRequest) -> str:
    """What identifies the content of an invoice: a hash of its canonical payload."""
    return hashlib.sha256(request.wire_json()).hexdigest()


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
class RegistrationPolicy:
    backoff: Backoff = field(default_factory=Backoff)
    max_attempts: int = 10
    """Failed attempts while Amili is otherwise healthy before an invoice gives up."""
    lease: timedelta = timedelta(minutes=2)
    """How long a claim holds without renewal; a claim older than this is taken to be abandoned."""
    max_in_flight: int = 128
    """Invoices at Amili at once, each from its first call to Amili's final answer (retries included)."""
    longest_attempt: timedelta = timedelta(minutes=1)
    """The longest one attempt at Amili can last (a look-up, then a POST). A claim is renewed before
    an attempt unless at least this much of its lease is left, so that no POST can still be open at
    Amili when the lease runs out and another instance looks the invoice up."""


class RegistrationObserver:
    """Hooks for metrics; the default does nothing."""

    def retry(self, reason: str) -> None: ...

    def registration(self, outcome: str) -> None: ...

    def ledger_error(self, operation: str) -> None: ...

    def registrations_in_flight(self, count: int) -> None: ...


RELEASE_SECONDS = 5.0
"""How long an abandoned event may take to give its claim back."""


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome for one invoice, ready to publish. ``recorded`` is false only for a conflict,
    which belongs to the event that caused it and changes nothing in the ledger.
    ``already_published``: a final outcome from the ledger whose result was published before, so
    it needs no second mark in the ledger once published again. ``announced``: the result went
    out through ``announce`` already."""

    result: RegistrationResult
    attempts: int
    recorded: bool = True
    gave_up: bool = False
    already_published: bool = False
    announced: bool = False


@dataclass(frozen=True, slots=True)
class Attempt:
    """How one claim's go at Amili ended: the ``result`` to record, after ``tries`` tries (a look-up
    and the POST after it are one); ``gave_up`` when Amili kept failing for it."""

    result: RegistrationResult
    tries: int
    gave_up: bool = False


class InvoiceRegistration:
    def __init__(
        self,
        *,
        amili: AmiliPort,
        ledger: Ledger,
        circuit: AmiliCircuit,
        owner: str,
        clock: Clock,
        policy: RegistrationPolicy | None = None,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
        observer: RegistrationObserver | None = None,
        places: FairGate | None = None,
    ) -> None:
        self._amili = amili
        self._ledger = ledger
        self._circuit = circuit
        self._owner = owner
        self._clock = clock
        self._policy = policy or RegistrationPolicy()
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._observer = observer or RegistrationObserver()
        max_in_flight = self._policy.max_in_flight
        self._places = places if places is not None else FairGate(lambda: max_in_flight)
        self._in_flight = 0

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @contextlib.asynccontextmanager
    async def _slot(self, creditor: str) -> AsyncIterator[None]:
        """A place in the window of invoices at Amili (waits for one, in turn of its creditor)."""
        async with self._places.place(creditor):
            self._in_flight += 1
            self._observer.registrations_in_flight(self._in_flight)
            try:
                yield
            finally:
                self._in_flight -= 1
                self._observer.registrations_in_flight(self._in_flight)

    async def register(
        self,
        request: InvoiceRegistrationRequest,
        *,
        event_id: str,
        warnings: Sequence[Reason] = (),
        announce: Announce | None = None,
    ) -> Decision:
        """Register ``request`` once; a registered result carries ``warnings`` (and keeps them in
        the ledger, so a republished result does too). ``announce`` publishes a new registration's
        result while the ledger records it (point 4 of the module's docstring); either way this
        returns once the outcome is recorded."""
        creditor, number = request.creditor, request.invoice_number
        digest = fingerprint(request)
        waits = 0
        while True:
            claim = await self._ledger_call(
                "claim",
                self._ledger.claim,
                creditor=creditor,
                invoice_number=number,
                fingerprint=digest,
                event_id=event_id,
                owner=self._owner,
                lease=self._policy.lease,
            )
            if claim.status is ClaimStatus.FINAL:
                assert claim.entry.result is not None
                return Decision(
                    RegistrationResult.model_validate(claim.entry.result),
                    attempts=0,
                    already_published=claim.entry.result_published,
                )
            if claim.status is ClaimStatus.CONFLICT:
                self._observer.registration(Outcome.CONFLICT.value)
                return Decision(self._conflict(request, event_id), attempts=0, recorded=False)
            if claim.status is ClaimStatus.HELD:
                # Another instance is registering it right now; its result will follow.
                waits += 1
                await self._sleep(self._policy.backoff.delay(waits, self._rng))
                continue
            attempt = await self._attempt(request, event_id, claim)
            if attempt is None:  # the claim lapsed or was lost to another owner: claim again
                continue
            result = attempt.result
            if warnings and result.outcome is Outcome.REGISTERED:
                result = result.model_copy(update={"warnings": list(warnings)})
            recording = self._ledger_call(
                "finish",
                self._ledger.finish,
                creditor=creditor,
                invoice_number=number,
                outcome=result.outcome,  # giving up is a failed outcome
                result=result.model_dump(mode="json"),
            )
            announced = announce is not None and result.outcome is Outcome.REGISTERED
            if announced:
                assert announce is not None
                await _both(recording, announce(result))
            else:
                await recording
            return Decision(result, attempts=attempt.tries, gave_up=attempt.gave_up, announced=announced)

    def _aged(self, claim: Claim) -> bool:
        """Whether the claim waited for a place so long that it must be renewed before a POST (an
        Amili outage holds the window full): less of its lease is left than an attempt can last."""
        claimed_at = claim.entry.claimed_at
        policy = self._policy
        return claimed_at is None or self._clock() - claimed_at >= policy.lease - policy.longest_attempt

    async def _release(self, request: InvoiceRegistrationRequest) -> None:
        """Give the claim back: one try, bounded, since its event is being abandoned."""
        try:
            async with asyncio.timeout(RELEASE_SECONDS):
                await self._ledger.release(
                    creditor=request.creditor,
                    invoice_number=request.invoice_number,
                    owner=self._owner,
                    now=self._clock(),
                )
        except (LedgerError, TimeoutError):
            self._observer.ledger_error("release")
            log.warning("an abandoned claim could not be given back; it lapses with its lease")

    async def _attempt(
        self, request: InvoiceRegistrationRequest, event_id: str, claim: Claim
    ) -> Attempt | None:
        """Take a place at Amili and register under ``claim``; ``None`` when the claim lapsed or
        was lost meanwhile."""
        posted = False  # once a POST went out under the claim, it is never given back
        try:
            async with self._slot(request.creditor):
                if self._aged(claim) and not await self._renew(request):
                    return None  # it waited so long for a place that its claim lapsed
                look_up_first = claim.status is ClaimStatus.RECLAIMED
                attempt = 0
                unhealthy_failures = 0
                duplicate_reported = False
                while True:
                    attempt += 1
                    if attempt > 1 and not await self._renew(request):
                        return None
                    try:
                        async with self._circuit.attempt():
                            receipt: InvoiceRegistrationReceipt | None = None
                            if look_up_first:
                                receipt = await self._amili.find_registration(
                                    request.creditor, request.invoice_number
                                )
                                if receipt is None and duplicate_reported:
                                    raise AmiliUnavailable(
                                        "Amili reports a duplicate that its look-up does not show"
                                    )
                                look_up_first = False
                            adopted = receipt is not None
                            if receipt is None:
                                posted = True
                                receipt = await self._amili.register(request)
                        self._observer.registration("adopted" if adopted else Outcome.REGISTERED.value)
                        return Attempt(self._registered(request, event_id, receipt), attempt)
                    except AmiliDuplicate:
                        look_up_first = duplicate_reported = True
                        continue
                    except AmiliRejected as rejected:
                        self._observer.registration(Outcome.REJECTED.value)
                        return Attempt(self._rejected(request, event_id, rejected), attempt)
                    except AmiliRateLimited as limited:
                        # Amili asks for less, not the invoice's failure: it waits and never gives up for it.
                        # With the rate budget the client says 0 (the next call waits in the budget until
                        # Amili's window ends); without Retry-After, a first backoff's pause.
                        wait = limited.retry_after
                        if wait is None:
                            wait = self._policy.backoff.delay(1, self._rng)
                        reason = "rate_limited"
                    except AmiliUnavailable as unavailable:
                        look_up_first = look_up_first or unavailable.outcome_unknown
                        wait = unavailable.retry_after
                        reason = "rate_limited" if unavailable.retry_after is not None else "unavailable"
                        if unavailable.outcome_unknown:
                            reason = "outcome_unknown"
                        if self._circuit.state is CircuitState.CLOSED:
                            unhealthy_failures += 1
                    except AmiliUnauthorized:
                        wait, reason = 0.0, "unauthorized"  # the circuit holds the next attempt back
                    except AmiliMisconfigured:
                        # Amili is called at the wrong place: never the invoice's fault, never its failure.
                        wait, reason = 0.0, "misconfigured"  # the circuit holds the next attempt back
                    if unhealthy_failures >= self._policy.max_attempts:
                        self._observer.registration(Outcome.FAILED.value)
                        return Attempt(
                            self._failed(request, event_id, attempt, reason), attempt, gave_up=True
                        )
                    self._observer.retry(reason)
                    delay = wait if wait is not None else self._policy.backoff.delay(attempt, self._rng)
                    # Per invoice, so DEBUG: the Amili client and the circuit say what fails, once per change.
                    log.debug("amili call failed, retrying", extra={"reason": reason, "attempt": attempt})
                    await self._sleep(delay)
        except asyncio.CancelledError:
            # Abandoned (a rebalance or a stop ran out of time). A fresh claim that never went to
            # Amili is given back, so that the next owner need not wait for its lease.
            if claim.status is ClaimStatus.CLAIMED and not posted:
                await self._release(request)
            raise

    async def _renew(self, request: InvoiceRegistrationRequest) -> bool:
        return await self._ledger_call(
            "renew",
            self._ledger.renew,
            creditor=request.creditor,
            invoice_number=request.invoice_number,
            owner=self._owner,
        )

    async def _ledger_call(self, operation: str, call: Callable[..., Awaitable[T]], **arguments: Any) -> T:
        """A ledger that cannot be reached pauses the invoice; it is never skipped. ``now`` is
        supplied afresh on every try."""
        failures = 0
        while True:
            try:
                return await call(**arguments, now=self._clock())
            except LedgerError as error:
                failures += 1
                self._observer.ledger_error(operation)
                log.warning(
                    "ledger unavailable, retrying", extra={"operation": operation, "error": str(error)}
                )
                await self._sleep(self._policy.backoff.delay(failures, self._rng))

    @staticmethod
    def _registered(
        request: InvoiceRegistrationRequest, event_id: str, receipt: InvoiceRegistrationReceipt
    ) -> RegistrationResult:
        ids = amili_ids(receipt)
        if is_valid_ocr(receipt.ocr_number_ocr):
            return _result(Outcome.REGISTERED, request, event_id, amili=ids)
        # Registered, but with OCR digits a payment could never be matched against.
        return _result(
            Outcome.FAILED,
            request,
            event_id,
            Reason(
                field="amili.ocr_number_ocr",
                rule="ocr_check_digit",
                message="the OCR number Amili returned fails its mod-10 check digit",
            ),
            amili=ids,
        )

    @staticmethod
    def _rejected(
        request: InvoiceRegistrationRequest, event_id: str, rejected: AmiliRejected
    ) -> RegistrationResult:
        return _result(
            Outcome.REJECTED,
            request,
            event_id,
            *(
                Reason(field=inbound_field_path(path), rule="amili_validation", message=message)
                for path, message in sorted(rejected.issues.items())
            ),
        )

    @staticmethod
    def _conflict(request: InvoiceRegistrationRequest, event_id: str) -> RegistrationResult:
        return _result(
            Outcome.CONFLICT,
            request,
            event_id,
            Reason(
                field="data.invoice_number",
                rule="same_number_other_content",
                message="this invoice number was already taken by an invoice with other content",
            ),
        )

    @staticmethod
    def _failed(
        request: InvoiceRegistrationRequest, event_id: str, attempts: int, reason: str
    ) -> RegistrationResult:
        return _result(
            Outcome.FAILED,
            request,
            event_id,
            Reason(
                field="amili",
                rule="gave_up",
                message=f"Amili kept failing for this invoice ({reason}) after {attempts} attempts",
            ),
        )


def _result(
    outcome: Outcome,
    request: InvoiceRegistrationRequest,
    event_id: str,
    *reasons: Reason,
    amili: AmiliIds | None = None,
) -> RegistrationResult:
    return RegistrationResult(
        outcome=outcome.value,
        creditor=request.creditor,
        invoice_number=request.invoice_number,
        inbound_event_id=event_id,
        amili=amili,
        reasons=list(reasons),
    )
