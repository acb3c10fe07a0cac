"""The ledger's queries for the operator commands (``unsettled``, ``final_entries``), on SQLite and
PostgreSQL alike."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from service.domain.outcomes import Outcome
from service.ledger import Ledger, LedgerEntry
from service.ledger.base import InvoiceKey

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
LEASE = timedelta(minutes=2)


async def claim(
    ledger: Ledger, creditor: str, number: str, *, at: datetime, owner: str = "replica-a"
) -> None:
    await ledger.claim(
        creditor=creditor,
        invoice_number=number,
        fingerprint="fp",
        event_id=f"evt-{number}",
        owner=owner,
        now=at,
        lease=LEASE,
    )


async def final(ledger: Ledger, creditor: str, number: str, outcome: Outcome, *, at: datetime) -> None:
    await claim(ledger, creditor, number, at=at - timedelta(seconds=1))
    await ledger.finish(
        creditor=creditor, invoice_number=number, outcome=outcome, result={"outcome": outcome.value}, now=at
    )


def keys(entries: list[LedgerEntry]) -> list[InvoiceKey]:
    return [entry.key for entry in entries]


async def test_unsettled_records_are_lapsed_claims_and_failures_in_key_order(ledger: Ledger) -> None:
    now = T0 + timedelta(minutes=10)
    await claim(ledger, "c1", "lapsed", at=now - LEASE)  # lapses exactly now, as claim() decides
    await claim(ledger, "c1", "live", at=now - LEASE + timedelta(seconds=1))
    await claim(ledger, "c2", "given-back", at=now)
    assert await ledger.release(creditor="c2", invoice_number="given-back", owner="replica-a", now=now)
    await final(ledger, "c0", "failed", Outcome.FAILED, at=T0)
    await final(ledger, "c0", "registered", Outcome.REGISTERED, at=T0)
    await final(ledger, "c0", "rejected", Outcome.REJECTED, at=T0)

    found = await ledger.unsettled(now=now, lease=LEASE)

    assert keys(found) == [("c0", "failed"), ("c1", "lapsed"), ("c2", "given-back")]
    assert [entry.outcome for entry in found] == [
        Outcome.FAILED,
        None,
        None,
    ]


async def test_unsettled_records_come_in_pages(ledger: Ledger) -> None:
    for number in ("a", "b", "c", "d", "e"):
        await claim(ledger, "c1", number, at=T0)
    now = T0 + timedelta(hours=1)

    first = await ledger.unsettled(now=now, lease=LEASE, limit=2)
    second = await ledger.unsettled(now=now, lease=LEASE, limit=2, after=keys(first)[-1])
    third = await ledger.unsettled(now=now, lease=LEASE, limit=2, after=keys(second)[-1])

    assert [keys(page) for page in (first, second, third)] == [
        [("c1", "a"), ("c1", "b")],
        [("c1", "c"), ("c1", "d")],
        [("c1", "e")],
    ]


async def test_final_entries_by_creditor_and_update_time(ledger: Ledger) -> None:
    await final(ledger, "c1", "early", Outcome.REGISTERED, at=T0 - timedelta(hours=1))
    await final(ledger, "c1", "since", Outcome.REJECTED, at=T0)  # --since is inclusive
    await final(ledger, "c1", "within", Outcome.FAILED, at=T0 + timedelta(minutes=30))
    await final(ledger, "c1", "until", Outcome.REGISTERED, at=T0 + timedelta(hours=1))  # exclusive
    await final(ledger, "c2", "other", Outcome.REGISTERED, at=T0 + timedelta(minutes=30))
    await claim(ledger, "c1", "in-flight", at=T0 + timedelta(minutes=30))

    everything = await ledger.final_entries()
    assert keys(everything) == [
        ("c1", "early"),
        ("c1", "since"),
        ("c1", "until"),
        ("c1", "within"),
        ("c2", "other"),
    ]
    window = await ledger.final_entries(updated_since=T0, updated_until=T0 + timedelta(hours=1))
    assert keys(window) == [("c1", "since"), ("c1", "within"), ("c2", "other")]
    assert keys(await ledger.final_entries(creditor="c2")) == [("c2", "other")]
    assert keys(await ledger.final_entries(creditor="c1", updated_since=T0 + timedelta(minutes=1))) == [
        ("c1", "until"),
        ("c1", "within"),
    ]
    assert window[0].result == {"outcome": "rejected"}


async def test_final_entries_come_in_pages_that_marking_does_not_reorder(ledger: Ledger) -> None:
    for number in ("a", "b", "c"):
        await final(ledger, "c1", number, Outcome.REGISTERED, at=T0)

    first = await ledger.final_entries(limit=2, updated_since=T0)
    await ledger.mark_published(creditor="c1", invoice_number="a", now=T0 + timedelta(hours=1))
    second = await ledger.final_entries(limit=2, updated_since=T0, after=keys(first)[-1])

    assert keys(first) + keys(second) == [("c1", "a"), ("c1", "b"), ("c1", "c")]
