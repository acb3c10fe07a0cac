"""In-memory fakes of the ports, for tests of the core (fakes, not mocks)."""

from __future__ import annotations

import dataclasses
import itertools
import json
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any

from service.amili.models import InvoiceRegistrationReceipt, InvoiceRegistrationRequest
from service.domain.checksums import luhn_check_digit
from service.domain.outcomes import Outcome
from service.events.cloudevents import CloudEvent, EnvelopeError
from service.events.record import InboundRecord
from service.ledger.base import Claim, ClaimStatus, InvoiceKey, LedgerEntry, LedgerError
from service.ledger.claims import decide_claim
from service.ports import AmiliDuplicate, AmiliError, Committed
from service.processing import Prepared, Undecodable

_ids = itertools.count(1)
Stored = tuple[InvoiceRegistrationRequest, InvoiceRegistrationReceipt]


def fake_object_id() -> str:
    return f"{next(_ids):024x}"


class FakeAmili:
    """Keeps registrations per (creditor, invoice_number). ``faults`` are raised one per call, in
    order; a fault marked ``store_first`` is raised after the registration was stored, the way a
    timeout after Amili stored it looks to the client."""

    def __init__(self) -> None:
        self.registrations: dict[tuple[str, str], Stored] = {}
        self.posts = 0
        self.lookups = 0
        self.faults: list[tuple[AmiliError, bool]] = []

    def fail_next(self, error: AmiliError, *, store_first: bool = False) -> None:
        self.faults.append((error, store_first))

    async def register(self, request: InvoiceRegistrationRequest) -> InvoiceRegistrationReceipt:
        self.posts += 1
        fault = self.faults.pop(0) if self.faults else None
        if fault is not None and not fault[1]:
            raise fault[0]
        key = (request.creditor, request.invoice_number)
        if key in self.registrations:
            raise AmiliDuplicate("not unique")
        body = "2026" + f"{next(_ids):015d}"
        receipt = InvoiceRegistrationReceipt.model_validate(
            {
                "_id": fake_object_id(),
                "_invoice": fake_object_id(),
                "_case": fake_object_id(),
                "_ocr_number": fake_object_id(),
                "ocr_number_ocr": body + str(luhn_check_digit(body)),
                "creditor": request.creditor,
                "invoice_number": request.invoice_number,
            }
        )
        self.registrations[key] = (request, receipt)
        if fault is not None:
            raise fault[0]
        return receipt

    async def find_registration(
        self, creditor: str, invoice_number: str
    ) -> InvoiceRegistrationReceipt | None:
        self.lookups += 1
        found = self.registrations.get((creditor, invoice_number))
        return None if found is None else found[1]


class FakeResults:
    def __init__(self) -> None:
        self.published: list[tuple[CloudEvent, bytes]] = []

    async def publish_result(self, event: CloudEvent, key: bytes) -> Committed | None:
        self.published.append((event, key))
        return None


class FakeDeadLetters:
    def __init__(self) -> None:
        self.letters: list[tuple[InboundRecord, str, str]] = []

    async def dead_letter(self, record: InboundRecord, rule: str, reason: str) -> None:
        self.letters.append((record, rule, reason))


class RecordingSleep:
    """An ``asyncio.sleep`` stand-in that only records how long it was asked to wait."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


def passed_on(record: InboundRecord) -> Prepared:
    """A record as a fake processor's ``prepare`` hands it to the engine, which looks at nothing but
    the record (the fake's ``handle`` decides what becomes of it)."""
    return Undecodable(record, EnvelopeError("fake", "handled by a fake processor"))


def structured_record(
    event: Mapping[str, object], *, offset: int = 0, topic: str = "invoice-created"
) -> InboundRecord:
    return InboundRecord(
        topic=topic,
        partition=0,
        offset=offset,
        key=None,
        value=json.dumps(event).encode(),
        headers=(("content-type", b"application/cloudevents+json"),),
    )


class FakeLedger:
    """The ledger's contract in memory (the real ones share a test suite in tests/integration)."""

    def __init__(self) -> None:
        self.entries: dict[tuple[str, str], LedgerEntry] = {}
        self.failures_to_inject = 0

    def _maybe_fail(self) -> None:
        if self.failures_to_inject > 0:
            self.failures_to_inject -= 1
            raise LedgerError("database unavailable")

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def ping(self) -> None:
        self._maybe_fail()

    async def claim(
        self,
        *,
        creditor: str,
        invoice_number: str,
        fingerprint: str,
        event_id: str,
        owner: str,
        now: datetime,
        lease: timedelta,
    ) -> Claim:
        self._maybe_fail()
        key = (creditor, invoice_number)
        claim = decide_claim(
            self.entries.get(key),
            creditor=creditor,
            invoice_number=invoice_number,
            fingerprint=fingerprint,
            event_id=event_id,
            owner=owner,
            now=now,
            lease=lease,
        )
        if claim.status in (ClaimStatus.CLAIMED, ClaimStatus.RECLAIMED):
            self.entries[key] = claim.entry
        return claim

    async def renew(self, *, creditor: str, invoice_number: str, owner: str, now: datetime) -> bool:
        return self._change_own_claim(
            creditor, invoice_number, owner, claimed_at=now, updated_at=now, renewed=True
        )

    async def release(self, *, creditor: str, invoice_number: str, owner: str, now: datetime) -> bool:
        return self._change_own_claim(
            creditor, invoice_number, owner, claimed_by=None, claimed_at=None, updated_at=now
        )

    def _change_own_claim(
        self, creditor: str, invoice_number: str, owner: str, *, renewed: bool = False, **changes: Any
    ) -> bool:
        self._maybe_fail()
        entry = self.entries[(creditor, invoice_number)]
        if entry.claimed_by != owner or entry.outcome is not None:
            return False
        attempts = entry.attempts + 1 if renewed else entry.attempts
        self.entries[(creditor, invoice_number)] = dataclasses.replace(entry, attempts=attempts, **changes)
        return True

    async def finish(
        self, *, creditor: str, invoice_number: str, outcome: Outcome, result: dict[str, Any], now: datetime
    ) -> None:
        self._maybe_fail()
        entry = dataclasses.replace(
            self.entries[(creditor, invoice_number)],
            outcome=outcome,
            result=result,
            result_published=False,
            claimed_by=None,
            updated_at=now,
        )
        self.entries[(creditor, invoice_number)] = entry

    async def mark_published(self, *, creditor: str, invoice_number: str, now: datetime) -> None:
        self._maybe_fail()
        key = (creditor, invoice_number)
        self.entries[key] = dataclasses.replace(self.entries[key], result_published=True, updated_at=now)

    async def unpublished(self, *, limit: int = 100) -> list[LedgerEntry]:
        self._maybe_fail()
        pending = [e for e in self.entries.values() if e.is_final and not e.result_published]
        return sorted(pending, key=lambda e: e.updated_at)[:limit]

    async def get(self, *, creditor: str, invoice_number: str) -> LedgerEntry | None:
        return self.entries.get((creditor, invoice_number))

    async def unsettled(
        self, *, now: datetime, lease: timedelta, limit: int = 100, after: InvoiceKey | None = None
    ) -> list[LedgerEntry]:
        self._maybe_fail()

        def lapsed(entry: LedgerEntry) -> bool:
            return entry.claimed_at is None or entry.claimed_at + lease <= now

        return self._page(
            lambda e: e.outcome is Outcome.FAILED or (e.outcome is None and lapsed(e)),
            limit,
            after,
        )

    async def final_entries(
        self,
        *,
        creditor: str | None = None,
        updated_since: datetime | None = None,
        updated_until: datetime | None = None,
        limit: int = 100,
        after: InvoiceKey | None = None,
    ) -> list[LedgerEntry]:
        self._maybe_fail()
        return self._page(
            lambda e: (
                e.is_final
                and (creditor is None or e.creditor == creditor)
                and (updated_since is None or e.updated_at >= updated_since)
                and (updated_until is None or e.updated_at < updated_until)
            ),
            limit,
            after,
        )

    def _page(
        self, wanted: Callable[[LedgerEntry], bool], limit: int, after: InvoiceKey | None
    ) -> list[LedgerEntry]:
        keys = sorted(k for k, e in self.entries.items() if wanted(e) and (after is None or k > after))
        return [self.entries[key] for key in keys[:limit]]
