"""The rules of ``Ledger.claim``, shared by every ledger: each backend reads the record under its
own write lock, asks ``decide_claim`` what to do, and writes what it answers."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

from service.domain.outcomes import Outcome
from service.ledger.base import Claim, ClaimStatus, LedgerEntry


def utc(moment: datetime) -> datetime:
    """``moment`` in UTC; a naive datetime is refused rather than guessed to be local or UTC."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"the ledger needs timezone-aware datetimes, got {moment!r}")
    return moment.astimezone(UTC)


def decide_claim(
    entry: LedgerEntry | None,
    *,
    creditor: str,
    invoice_number: str,
    fingerprint: str,
    event_id: str,
    owner: str,
    now: datetime,
    lease: timedelta,
) -> Claim:
    """The rules of ``Ledger.claim`` given the current record (read under a write lock).

    The claim's entry is what the record must be afterwards: the caller writes it when the status
    is ``CLAIMED`` or ``RECLAIMED`` and leaves the record alone otherwise.
    """
    if entry is None or (entry.outcome is Outcome.REJECTED and entry.fingerprint != fingerprint):
        fresh = LedgerEntry(
            creditor=creditor,
            invoice_number=invoice_number,
            fingerprint=fingerprint,
            outcome=None,
            attempts=1,
            event_id=event_id,
            claimed_by=owner,
            claimed_at=now,
            result=None,
            result_published=False,
            created_at=now,
            updated_at=now,
        )
        return Claim(ClaimStatus.CLAIMED, fresh)
    if entry.fingerprint != fingerprint:
        return Claim(ClaimStatus.CONFLICT, entry)
    taken_over = dataclasses.replace(
        entry,
        outcome=None,
        claimed_by=owner,
        claimed_at=now,
        attempts=entry.attempts + 1,
        result=None,
        result_published=False,
        updated_at=now,
    )
    if entry.outcome is Outcome.FAILED:
        return Claim(ClaimStatus.RECLAIMED, taken_over)
    if entry.is_final:
        return Claim(ClaimStatus.FINAL, entry)
    if entry.claimed_by == owner or entry.claimed_at is None or entry.claimed_at + lease <= now:
        return Claim(ClaimStatus.RECLAIMED, taken_over)
    return Claim(ClaimStatus.HELD, entry)
