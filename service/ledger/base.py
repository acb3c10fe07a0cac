"""The ledger's interface: what the registration protocol needs from durable storage.

One record per ``(creditor, invoice_number)``. A record is claimed atomically before any POST to
Amili, holds the fingerprint of the canonical payload it was claimed for, and ends in a final state
with the result to publish; whether that result has been published is recorded too, so a crash
between recording and publishing is repaired on restart.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol

from service.domain.invoice import InvoiceKey as InvoiceKey  # what a record is known by
from service.domain.outcomes import Outcome


class LedgerError(Exception):
    """The ledger could not be read or written (the database is down, a constraint failed...)."""


IN_FLIGHT = "in_flight"
"""The state of a record with no outcome yet; a final record's state is its outcome's value."""

STATES: tuple[str, ...] = (IN_FLIGHT, *(outcome.value for outcome in Outcome))
"""Every state a record can be in, as the ledgers store it (their CHECK constraints list these)."""


def state_of(outcome: Outcome | None) -> str:
    """The stored state of a record with ``outcome`` (none: in flight)."""
    return IN_FLIGHT if outcome is None else outcome.value


def outcome_of(state: str) -> Outcome | None:
    """The outcome of a record in the stored ``state`` (none: in flight)."""
    return None if state == IN_FLIGHT else Outcome(state)


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    creditor: str
    invoice_number: str
    fingerprint: str
    outcome: Outcome | None
    """The final outcome; none while the invoice is in flight (claimed, or being registered)."""
    attempts: int
    event_id: str
    """The inbound event id that first claimed this invoice."""
    claimed_by: str | None
    claimed_at: datetime | None
    result: dict[str, Any] | None
    """The data of the registration-result event, once the state is final."""
    result_published: bool
    created_at: datetime
    updated_at: datetime

    @property
    def key(self) -> InvoiceKey:
        return InvoiceKey(self.creditor, self.invoice_number)

    @property
    def state(self) -> str:
        """``in_flight`` or the outcome's value, as stored and shown."""
        return state_of(self.outcome)

    @property
    def is_final(self) -> bool:
        return self.outcome is not None


class ClaimStatus(StrEnum):
    CLAIMED = "claimed"
    """New: nobody has tried to register this invoice; a POST may go ahead."""
    RECLAIMED = "reclaimed"
    """It was in flight and its claim lapsed (a crash, a timeout): look it up at Amili first."""
    HELD = "held"
    """In flight under another owner's live claim: try again later."""
    FINAL = "final"
    """It has a final outcome: publish the stored result again; never POST."""
    CONFLICT = "conflict"
    """Recorded with a different fingerprint: the same invoice number with other content."""


@dataclass(frozen=True, slots=True)
class Claim:
    status: ClaimStatus
    entry: LedgerEntry


class Ledger(Protocol):
    async def open(self) -> None:
        """Connect and bring the schema up to date (migrations)."""

    async def close(self) -> None: ...

    async def ping(self) -> None:
        """Raise ``LedgerError`` unless the database answers (for readiness)."""

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
        """Atomically claim the invoice for ``owner``.

        - absent: insert ``in_flight``, attempts 1, claimed by ``owner`` → ``CLAIMED``;
        - ``rejected`` with a different fingerprint (a corrected invoice: it never reached Amili's
          books) → replace it: new fingerprint and event id, ``in_flight``, attempts 1, no result,
          claimed by ``owner`` → ``CLAIMED``;
        - fingerprint differs from the record's → ``CONFLICT`` (record unchanged);
        - ``failed`` (it gave up; a replay of the event tries again, and an earlier attempt may have
          stored it) → ``in_flight``, claimed by ``owner``, attempts + 1, no result,
          not published → ``RECLAIMED``;
        - any other final state → ``FINAL`` (record unchanged);
        - ``in_flight`` claimed by ``owner`` or with ``claimed_at + lease <= now`` → take it over
          (claimed_by ``owner``, claimed_at ``now``, attempts + 1) → ``RECLAIMED``;
        - otherwise → ``HELD`` (record unchanged).
        """

    async def renew(self, *, creditor: str, invoice_number: str, owner: str, now: datetime) -> bool:
        """Extend ``owner``'s claim (claimed_at = now, attempts + 1) before another attempt;
        False when ``owner`` no longer holds it."""

    async def release(self, *, creditor: str, invoice_number: str, owner: str, now: datetime) -> bool:
        """Give up ``owner``'s claim of an invoice it never POSTed (its event was abandoned): the
        record stays in flight, claimed by no one, so the next claim takes it over at once (and,
        as for any claim taken over, looks the invoice up first). False when ``owner`` does not
        hold it."""

    async def finish(
        self,
        *,
        creditor: str,
        invoice_number: str,
        outcome: Outcome,
        result: dict[str, Any],
        now: datetime,
    ) -> None:
        """Record the ``outcome`` and the result to publish (``result_published`` false);
        ``KeyError`` when there is no such record."""

    async def mark_published(self, *, creditor: str, invoice_number: str, now: datetime) -> None: ...

    async def unpublished(self, *, limit: int = 100) -> list[LedgerEntry]:
        """Final records whose result has not been published yet, oldest first."""

    async def get(self, *, creditor: str, invoice_number: str) -> LedgerEntry | None: ...

    # -- for the operator commands (reconcile, results republish): pages in key order

    async def unsettled(
        self, *, now: datetime, lease: timedelta, limit: int = 100, after: InvoiceKey | None = None
    ) -> list[LedgerEntry]:
        """Records a reconciliation may settle: ``in_flight`` whose claim a ``claim`` at ``now``
        would take over (claimed by no one, or ``claimed_at + lease <= now``), and ``failed``; at
        most ``limit``, in ``(creditor, invoice_number)`` order, after the key ``after``."""

    async def final_entries(
        self,
        *,
        creditor: str | None = None,
        updated_since: datetime | None = None,
        updated_until: datetime | None = None,
        limit: int = 100,
        after: InvoiceKey | None = None,
    ) -> list[LedgerEntry]:
        """Records in a final state, of ``creditor`` when given, updated at or after
        ``updated_since`` and before ``updated_until`` when given; at most ``limit``, in
        ``(creditor, invoice_number)`` order, after the key ``after`` (a page's order does not
        change when a record of it is marked published meanwhile)."""
