"""The ledger's contract (``service.ledger.base``), on SQLite and on PostgreSQL alike."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import threading
import traceback
from collections.abc import AsyncIterator, Callable, Coroutine
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from devkit.localkafka import free_port
from service.domain.outcomes import Outcome
from service.ledger import Claim, ClaimStatus, Ledger, LedgerEntry, LedgerError
from service.ledger.factory import open_ledger
from service.ledger.postgres import PostgresLedger
from service.ledger.sqlite import SqliteLedger
from tests.fixtures.ledger import LedgerFactory, opened

T0 = datetime(2025, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)
LEASE = timedelta(minutes=2)
CREDITOR, NUMBER = "5561234567", "INV-1001"
RESULT: dict[str, Any] = {
    "outcome": "registered",
    "amili": {"invoice_id": 42, "ocr": "1234567890"},
    "reasons": [],
    "note": "Åsa's faktura ✓",
    "ratio": 0.5,
    "flag": True,
    "nothing": None,
}


async def claim(
    ledger: Ledger,
    *,
    owner: str = "replica-a",
    fingerprint: str = "fp-1",
    event_id: str = "event-1",
    now: datetime = T0,
    number: str = NUMBER,
) -> Claim:
    return await ledger.claim(
        creditor=CREDITOR,
        invoice_number=number,
        fingerprint=fingerprint,
        event_id=event_id,
        owner=owner,
        now=now,
        lease=LEASE,
    )


async def finished(
    ledger: Ledger, outcome: Outcome, *, number: str = NUMBER, now: datetime = T0
) -> LedgerEntry:
    await claim(ledger, number=number, now=now)
    await ledger.finish(
        creditor=CREDITOR,
        invoice_number=number,
        outcome=outcome,
        result=RESULT,
        now=now + timedelta(seconds=1),
    )
    return await stored(ledger, number)


async def stored(ledger: Ledger, number: str = NUMBER) -> LedgerEntry:
    entry = await ledger.get(creditor=CREDITOR, invoice_number=number)
    assert entry is not None
    return entry


# -- claim


async def test_claiming_a_new_invoice_records_it_in_flight(ledger: Ledger) -> None:
    assert await ledger.get(creditor=CREDITOR, invoice_number=NUMBER) is None

    result = await claim(ledger)

    assert result.status is ClaimStatus.CLAIMED
    assert result.entry == LedgerEntry(
        creditor=CREDITOR,
        invoice_number=NUMBER,
        fingerprint="fp-1",
        outcome=None,
        attempts=1,
        event_id="event-1",
        claimed_by="replica-a",
        claimed_at=T0,
        result=None,
        result_published=False,
        created_at=T0,
        updated_at=T0,
    )
    assert await stored(ledger) == result.entry


async def test_a_live_claim_of_another_owner_holds(ledger: Ledger) -> None:
    first = await claim(ledger)
    just_before_expiry = T0 + LEASE - timedelta(microseconds=1)

    result = await claim(ledger, owner="replica-b", event_id="event-2", now=just_before_expiry)

    assert result.status is ClaimStatus.HELD
    assert result.entry == first.entry
    assert await stored(ledger) == first.entry


async def test_the_owner_reclaims_its_own_claim(ledger: Ledger) -> None:
    await claim(ledger)
    later = T0 + timedelta(seconds=5)

    result = await claim(ledger, event_id="event-2", now=later)

    assert result.status is ClaimStatus.RECLAIMED
    assert (result.entry.claimed_by, result.entry.claimed_at, result.entry.attempts) == (
        "replica-a",
        later,
        2,
    )
    assert (result.entry.event_id, result.entry.created_at, result.entry.updated_at) == ("event-1", T0, later)
    assert await stored(ledger) == result.entry


async def test_a_lapsed_claim_is_taken_over_at_expiry(ledger: Ledger) -> None:
    await claim(ledger)
    expiry = T0 + LEASE

    result = await claim(ledger, owner="replica-b", event_id="event-2", now=expiry)

    assert result.status is ClaimStatus.RECLAIMED
    assert result.entry.outcome is None
    assert (result.entry.claimed_by, result.entry.claimed_at, result.entry.attempts) == (
        "replica-b",
        expiry,
        2,
    )
    assert await stored(ledger) == result.entry
    held = await claim(ledger, owner="replica-a", now=expiry + timedelta(seconds=1))
    assert held.status is ClaimStatus.HELD


async def test_another_fingerprint_is_a_conflict_and_changes_nothing(ledger: Ledger) -> None:
    in_flight = await claim(ledger)
    registered = await finished(ledger, Outcome.REGISTERED, number="INV-2")

    for number, before in ((NUMBER, in_flight.entry), ("INV-2", registered)):
        result = await claim(ledger, number=number, owner="replica-b", fingerprint="fp-other", now=T0 + LEASE)
        assert result.status is ClaimStatus.CONFLICT
        assert result.entry == before
        assert await stored(ledger, number) == before


@pytest.mark.parametrize("outcome", [Outcome.REGISTERED, Outcome.REJECTED, Outcome.CONFLICT])
async def test_a_final_record_is_final_and_unchanged(ledger: Ledger, outcome: Outcome) -> None:
    before = await finished(ledger, outcome)

    result = await claim(ledger, owner="replica-b", event_id="event-2", now=T0 + timedelta(hours=1))

    assert result.status is ClaimStatus.FINAL
    assert result.entry == before
    assert result.entry.result == RESULT
    assert await stored(ledger) == before


async def test_a_rejected_invoice_corrected_is_claimed_afresh(ledger: Ledger) -> None:
    await finished(ledger, Outcome.REJECTED)
    await ledger.mark_published(creditor=CREDITOR, invoice_number=NUMBER, now=T0 + timedelta(seconds=2))
    later = T0 + timedelta(hours=1)

    result = await claim(ledger, owner="replica-b", fingerprint="fp-2", event_id="event-2", now=later)

    assert result.status is ClaimStatus.CLAIMED
    assert result.entry == LedgerEntry(
        creditor=CREDITOR,
        invoice_number=NUMBER,
        fingerprint="fp-2",
        outcome=None,
        attempts=1,
        event_id="event-2",
        claimed_by="replica-b",
        claimed_at=later,
        result=None,
        result_published=False,
        created_at=later,
        updated_at=later,
    )
    assert await stored(ledger) == result.entry


async def test_a_failed_invoice_is_reclaimed_on_replay(ledger: Ledger) -> None:
    before = await finished(ledger, Outcome.FAILED)
    later = T0 + timedelta(hours=1)

    result = await claim(ledger, owner="replica-b", event_id="event-2", now=later)

    assert result.status is ClaimStatus.RECLAIMED
    assert result.entry == dataclasses.replace(
        before,
        outcome=None,
        claimed_by="replica-b",
        claimed_at=later,
        attempts=2,
        result=None,
        result_published=False,
        updated_at=later,
    )
    assert await stored(ledger) == result.entry
    other = await claim(ledger, owner="replica-c", fingerprint="fp-other", now=later)
    assert other.status is ClaimStatus.CONFLICT


async def test_a_failed_invoice_with_other_content_is_a_conflict(ledger: Ledger) -> None:
    before = await finished(ledger, Outcome.FAILED)

    result = await claim(ledger, fingerprint="fp-other", now=T0 + timedelta(hours=1))

    assert result.status is ClaimStatus.CONFLICT
    assert await stored(ledger) == before


async def test_naive_datetimes_are_refused(ledger: Ledger) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        await claim(ledger, now=datetime(2025, 3, 1, 12))


# -- renew, finish, publish


async def test_renew_extends_only_the_holders_claim(ledger: Ledger) -> None:
    await claim(ledger)
    later = T0 + timedelta(seconds=30)

    assert not await ledger.renew(creditor=CREDITOR, invoice_number=NUMBER, owner="replica-b", now=later)
    assert (await stored(ledger)).attempts == 1
    assert await ledger.renew(creditor=CREDITOR, invoice_number=NUMBER, owner="replica-a", now=later)
    entry = await stored(ledger)
    assert (entry.claimed_by, entry.claimed_at, entry.attempts, entry.updated_at) == (
        "replica-a",
        later,
        2,
        later,
    )
    assert not await ledger.renew(
        creditor=CREDITOR, invoice_number="INV-absent", owner="replica-a", now=later
    )

    await ledger.finish(
        creditor=CREDITOR, invoice_number=NUMBER, outcome=Outcome.REGISTERED, result=RESULT, now=later
    )
    assert not await ledger.renew(creditor=CREDITOR, invoice_number=NUMBER, owner="replica-a", now=later)


async def test_a_released_claim_is_taken_over_at_once_and_only_its_owner_releases(ledger: Ledger) -> None:
    await claim(ledger)
    later = T0 + timedelta(seconds=5)
    assert not await ledger.release(creditor=CREDITOR, invoice_number=NUMBER, owner="replica-b", now=later)
    assert (await claim(ledger, owner="replica-b", now=later)).status is ClaimStatus.HELD

    assert await ledger.release(creditor=CREDITOR, invoice_number=NUMBER, owner="replica-a", now=later)
    released = await stored(ledger)
    assert (released.outcome, released.claimed_by, released.claimed_at) == (None, None, None)
    taken = await claim(ledger, owner="replica-b", now=later)
    assert taken.status is ClaimStatus.RECLAIMED  # looked up at Amili first, like any claim taken over
    assert taken.entry.claimed_by == "replica-b"

    await ledger.finish(
        creditor=CREDITOR, invoice_number=NUMBER, outcome=Outcome.REGISTERED, result=RESULT, now=later
    )
    assert not await ledger.release(creditor=CREDITOR, invoice_number=NUMBER, owner="replica-b", now=later)
    assert (await stored(ledger)).outcome is Outcome.REGISTERED
    assert not await ledger.release(
        creditor=CREDITOR, invoice_number="INV-absent", owner="replica-a", now=later
    )


async def test_renewal_keeps_a_claim_from_lapsing(ledger: Ledger) -> None:
    await claim(ledger)
    renewed_at = T0 + LEASE - timedelta(seconds=1)
    assert await ledger.renew(creditor=CREDITOR, invoice_number=NUMBER, owner="replica-a", now=renewed_at)

    result = await claim(ledger, owner="replica-b", now=T0 + LEASE)

    assert result.status is ClaimStatus.HELD


async def test_finish_then_publish(ledger: Ledger) -> None:
    claimed = await claim(ledger)
    done_at = T0 + timedelta(seconds=3)

    await ledger.finish(
        creditor=CREDITOR, invoice_number=NUMBER, outcome=Outcome.REGISTERED, result=RESULT, now=done_at
    )

    entry = await stored(ledger)
    assert entry == dataclasses.replace(
        claimed.entry,
        outcome=Outcome.REGISTERED,
        result=RESULT,
        result_published=False,
        claimed_by=None,
        updated_at=done_at,
    )
    assert await ledger.unpublished() == [entry]

    published_at = done_at + timedelta(seconds=1)
    await ledger.mark_published(creditor=CREDITOR, invoice_number=NUMBER, now=published_at)

    assert await ledger.unpublished() == []
    assert await stored(ledger) == dataclasses.replace(entry, result_published=True, updated_at=published_at)


async def test_unpublished_lists_final_records_oldest_first(ledger: Ledger) -> None:
    await claim(ledger, number="INV-in-flight")
    for minute, number in ((3, "INV-c"), (1, "INV-a"), (2, "INV-b"), (4, "INV-d")):
        await finished(ledger, Outcome.REGISTERED, number=number, now=T0 + timedelta(minutes=minute))
    await ledger.mark_published(creditor=CREDITOR, invoice_number="INV-d", now=T0 + timedelta(minutes=5))

    assert [e.invoice_number for e in await ledger.unpublished()] == ["INV-a", "INV-b", "INV-c"]
    assert [e.invoice_number for e in await ledger.unpublished(limit=2)] == ["INV-a", "INV-b"]


async def test_finish_and_publish_need_a_record(ledger: Ledger) -> None:
    with pytest.raises(KeyError):
        await ledger.finish(
            creditor=CREDITOR, invoice_number=NUMBER, outcome=Outcome.REGISTERED, result=RESULT, now=T0
        )
    with pytest.raises(KeyError):
        await ledger.mark_published(creditor=CREDITOR, invoice_number=NUMBER, now=T0)


# -- lifecycle


async def test_ping(ledger: Ledger, make_ledger: LedgerFactory) -> None:
    await ledger.ping()
    closed = make_ledger()
    with pytest.raises(LedgerError):
        await closed.ping()


async def test_opening_again_migrates_nothing_and_keeps_the_data(
    ledger: Ledger, make_ledger: LedgerFactory
) -> None:
    entry = await finished(ledger, Outcome.REGISTERED)
    async with opened(make_ledger()) as again:
        await again.open()  # a second open() of the same ledger is a no-op
        assert await stored(again) == entry


async def test_replicas_starting_together_migrate_once(make_ledger: LedgerFactory) -> None:
    replicas = [make_ledger() for _ in range(5)]
    await asyncio.gather(*(replica.open() for replica in replicas))
    try:
        claims = [await claim(replica, number=f"INV-{i}") for i, replica in enumerate(replicas)]
        assert {c.status for c in claims} == {ClaimStatus.CLAIMED}
    finally:
        await asyncio.gather(*(replica.close() for replica in replicas))


async def test_records_survive_close_and_reopen(make_ledger: LedgerFactory) -> None:
    async with opened(make_ledger()) as first:
        entry = await finished(first, Outcome.REJECTED)
        held = await claim(first, number="INV-2")

    async with opened(make_ledger()) as reopened:
        assert await stored(reopened) == entry
        assert await stored(reopened, "INV-2") == held.entry
        assert await reopened.unpublished() == [entry]


async def test_twenty_owners_race_and_exactly_one_wins(make_ledger: LedgerFactory) -> None:
    """Each owner on its own connection (its own ledger), all claiming at once."""
    replicas = [make_ledger() for _ in range(20)]
    await asyncio.gather(*(replica.open() for replica in replicas))
    try:
        results = await asyncio.gather(
            *(
                claim(replica, owner=f"replica-{i}", event_id=f"event-{i}")
                for i, replica in enumerate(replicas)
            )
        )
    finally:
        await asyncio.gather(*(replica.close() for replica in replicas))

    statuses = [r.status for r in results]
    assert statuses.count(ClaimStatus.CLAIMED) == 1
    assert statuses.count(ClaimStatus.HELD) == 19
    winner = next(r.entry for r in results if r.status is ClaimStatus.CLAIMED)
    assert all(r.entry == winner for r in results)


async def test_twenty_owners_race_through_one_ledger(ledger: Ledger) -> None:
    """Through one ledger: for PostgreSQL, the claims spread over its pool's connections."""
    results = await asyncio.gather(*(claim(ledger, owner=f"replica-{i}") for i in range(20)))

    statuses = [r.status for r in results]
    assert (statuses.count(ClaimStatus.CLAIMED), statuses.count(ClaimStatus.HELD)) == (1, 19)
    assert (await stored(ledger)).attempts == 1


# -- PostgreSQL errors and the factory


def _assert_hidden(error: LedgerError, password: str) -> None:
    assert password not in str(error)
    assert password not in "".join(traceback.format_exception(error))


async def test_an_unreachable_postgres_is_a_ledger_error_without_the_password() -> None:
    password = "s3cret-Pa55word"
    ledger = PostgresLedger(f"postgresql://registrar:{password}@127.0.0.1:{free_port()}/registrar")

    with pytest.raises(LedgerError, match="postgres connect") as raised:
        await ledger.open()

    _assert_hidden(raised.value, password)
    with pytest.raises(LedgerError):
        await ledger.ping()


async def test_a_wrong_password_is_a_ledger_error_without_the_password(postgres_dsn: str) -> None:
    password = "wrong-Pa55word"
    parts = urlsplit(postgres_dsn)
    netloc = f"{parts.username}:{password}@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    ledger = PostgresLedger(urlunsplit(parts._replace(netloc=netloc)))

    with pytest.raises(LedgerError, match="password authentication failed") as raised:
        await ledger.open()

    _assert_hidden(raised.value, password)


def test_the_factory_reads_urls() -> None:
    assert repr(open_ledger("sqlite:///data/ledger.db")) == "SqliteLedger('data/ledger.db')"
    assert repr(open_ledger("sqlite:////var/lib/ledger.db")) == "SqliteLedger('/var/lib/ledger.db')"
    assert repr(open_ledger("sqlite://")) == "SqliteLedger(':memory:')"
    assert repr(open_ledger("sqlite:///:memory:")) == "SqliteLedger(':memory:')"
    postgres = open_ledger("postgresql://registrar:hunter2@db:5432/registrar")
    assert isinstance(postgres, PostgresLedger)
    assert "hunter2" not in repr(postgres)
    for bad in ("mysql://u:hunter2@h/db", "sqlite:relative.db", "ledger.db"):
        with pytest.raises(ValueError, match="unsupported ledger URL") as raised:
            open_ledger(bad)
        assert "hunter2" not in str(raised.value)


async def test_an_in_memory_sqlite_ledger_works() -> None:
    async with opened(SqliteLedger(":memory:")) as ledger:
        assert (await claim(ledger)).status is ClaimStatus.CLAIMED
        assert (await claim(ledger, owner="replica-b")).status is ClaimStatus.HELD


# -- SQLite's group commit


class _CountingSqliteLedger(SqliteLedger):
    """Counts the transactions the group commit makes; while ``gate`` is closed, a group waits for
    it on the ledger's thread (so that the writes made meanwhile all go in the next group)."""

    groups: list[int]

    def __init__(self, path: Any) -> None:
        super().__init__(path)
        self.groups = []
        self.gate = threading.Event()
        self.gate.set()
        self.held = threading.Event()

    def _group(self, conn: Any, works: list[Any]) -> list[object]:  # type: ignore[override]
        if not self.gate.is_set():
            self.held.set()
            self.gate.wait(timeout=10)
        self.groups.append(len(works))
        return SqliteLedger._group(conn, works)

    @contextlib.asynccontextmanager
    async def one_group(self) -> AsyncIterator[None]:
        """The writes started inside go in one group commit (a write of ``INV-gate`` goes first)."""
        self.gate.clear()
        self.held.clear()
        first = asyncio.create_task(claim(self, number="INV-gate", owner="gate"))
        assert await asyncio.to_thread(self.held.wait, 10)  # its group waits on the ledger's thread
        try:
            yield
            await asyncio.sleep(0.01)  # the writes started are handed over
        finally:
            self.gate.set()
            await first


async def test_concurrent_sqlite_writes_share_commits_and_are_each_durable(tmp_path: Any) -> None:
    path = tmp_path / "ledger.db"
    async with opened(_CountingSqliteLedger(path)) as ledger:
        claims = await asyncio.gather(*(claim(ledger, number=f"INV-{i}") for i in range(200)))

    assert {c.status for c in claims} == {ClaimStatus.CLAIMED}
    assert sum(ledger.groups) == 200
    assert len(ledger.groups) < 20, ledger.groups  # one fsync per write would be 200 transactions
    async with opened(SqliteLedger(path)) as reopened:
        assert [await stored(reopened, f"INV-{i}") for i in range(200)] == [c.entry for c in claims]


async def test_a_failing_write_in_a_group_undoes_only_itself(tmp_path: Any) -> None:
    async with opened(_CountingSqliteLedger(tmp_path / "ledger.db")) as ledger:
        outcomes = await asyncio.gather(
            claim(ledger, number="INV-1"),
            ledger.finish(  # no such record: fails in the middle of the group
                creditor=CREDITOR,
                invoice_number="INV-404",
                outcome=Outcome.REGISTERED,
                result=RESULT,
                now=T0,
            ),
            claim(ledger, number="INV-2"),
            return_exceptions=True,
        )
        assert isinstance(outcomes[1], KeyError)
        assert [o.status for o in (outcomes[0], outcomes[2]) if isinstance(o, Claim)] == [
            ClaimStatus.CLAIMED
        ] * 2
        assert ledger.groups == [3]
        assert await ledger.get(creditor=CREDITOR, invoice_number="INV-404") is None
        assert (await stored(ledger, "INV-1")).outcome is None
        assert (await stored(ledger, "INV-2")).outcome is None


async def test_a_cancelled_writer_still_has_its_write_committed(tmp_path: Any) -> None:
    async with opened(SqliteLedger(tmp_path / "ledger.db")) as ledger:
        task = asyncio.create_task(claim(ledger))
        await asyncio.sleep(0)  # the write is handed over
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await claim(ledger, number="INV-later")  # committed in the same group or a later one
        assert (await stored(ledger)).outcome is None


async def test_reads_get_their_turn_while_writes_keep_coming(tmp_path: Any) -> None:
    async with opened(_CountingSqliteLedger(tmp_path / "ledger.db")) as ledger:
        stop = asyncio.Event()

        async def keep_writing() -> list[Claim]:
            writes: list[asyncio.Task[Claim]] = []
            while not stop.is_set():
                writes.append(asyncio.create_task(claim(ledger, number=f"INV-{len(writes)}")))
                await asyncio.sleep(0)
            return await asyncio.gather(*writes)

        writer = asyncio.create_task(keep_writing())
        await asyncio.sleep(0.05)  # group commits follow each other on the ledger's thread
        await asyncio.wait_for(ledger.ping(), timeout=5)  # behind at most two of them
        assert not writer.done()
        stop.set()
        claims = await writer
        assert {c.status for c in claims} == {ClaimStatus.CLAIMED}
        assert sum(ledger.groups) == len(claims)
        assert len(ledger.groups) > 2


async def test_closing_finishes_the_writes_handed_over_and_refuses_the_rest(tmp_path: Any) -> None:
    path = tmp_path / "ledger.db"
    ledger = SqliteLedger(path)
    await ledger.open()
    writes = [asyncio.create_task(claim(ledger, number=f"INV-{i}")) for i in range(300)]
    await asyncio.sleep(0)
    await ledger.close()
    outcomes = await asyncio.wait_for(asyncio.gather(*writes, return_exceptions=True), timeout=5)
    done = [i for i, outcome in enumerate(outcomes) if isinstance(outcome, Claim)]
    refused = [outcome for outcome in outcomes if not isinstance(outcome, Claim)]
    assert done  # at least what was handed over before the close
    assert all(isinstance(error, LedgerError) for error in refused)
    async with opened(SqliteLedger(path)) as reopened:
        for i in done:  # each answered write is on disk
            assert (await stored(reopened, f"INV-{i}")).outcome is None


async def test_writes_after_close_fail_clearly(tmp_path: Any) -> None:
    ledger = SqliteLedger(tmp_path / "ledger.db")
    await ledger.open()
    await ledger.close()
    with pytest.raises(LedgerError, match="not open"):
        await claim(ledger)


async def _records_of_every_kind(ledger: Ledger) -> None:
    """Records in each state a write of a group can meet (the same on every ledger it is run on)."""
    for number, outcome in (
        ("INV-reg", Outcome.REGISTERED),
        ("INV-reg-pub", Outcome.REGISTERED),
        ("INV-rej", Outcome.REJECTED),
        ("INV-failed", Outcome.FAILED),
    ):
        await finished(ledger, outcome, number=number)
    await mark(ledger, "INV-reg-pub", T0 + timedelta(seconds=2))
    await claim(ledger, number="INV-held", owner="replica-b")
    await claim(ledger, number="INV-lapsed", owner="replica-b", now=T0 - timedelta(minutes=3))
    for number in ("INV-own", "INV-renew", *(f"INV-fin-{i}" for i in range(3))):
        await claim(ledger, number=number)
    for i in range(3):
        await finished(ledger, Outcome.REGISTERED, number=f"INV-mark-{i}")


async def mark(ledger: Ledger, number: str, now: datetime) -> None:
    await ledger.mark_published(creditor=CREDITOR, invoice_number=number, now=now)


async def finish(ledger: Ledger, number: str, now: datetime) -> None:
    await ledger.finish(
        creditor=CREDITOR, invoice_number=number, outcome=Outcome.REGISTERED, result=RESULT, now=now
    )


Write = Callable[[Ledger], Coroutine[Any, Any, object]]


def _writes_of_every_kind(*, missing: bool) -> list[Write]:
    """Writes of each kind, each of another record."""
    later = T0 + timedelta(minutes=1)
    writes: list[Write] = [partial(claim, number=f"INV-new-{i}", now=later) for i in range(10)]
    writes += [
        partial(claim, number="INV-reg", now=later),  # final
        partial(claim, number="INV-reg-pub", fingerprint="fp-2", now=later),  # conflict
        partial(claim, number="INV-rej", fingerprint="fp-2", now=later),  # corrected
        partial(claim, number="INV-failed", now=later),  # tried again
        partial(claim, number="INV-held", now=later),  # another's live claim
        partial(claim, number="INV-lapsed", now=later),  # another's lapsed claim
        partial(claim, number="INV-own", now=later),  # its own
        lambda ledger: ledger.renew(
            creditor=CREDITOR, invoice_number="INV-renew", owner="replica-a", now=later
        ),
    ]
    writes += [partial(finish, number=f"INV-fin-{i}", now=later) for i in range(3)]
    writes += [partial(mark, number=f"INV-mark-{i}", now=later) for i in range(3)]
    if missing:  # fails: the group runs again, one by one
        writes.insert(5, partial(mark, number="INV-404", now=later))
    return writes


def _same(outcome: object) -> object:
    return type(outcome) if isinstance(outcome, BaseException) else outcome


@pytest.mark.parametrize("missing", [False, True], ids=["all-found", "one-missing"])
async def test_writes_grouped_in_one_commit_do_what_they_do_one_by_one(tmp_path: Any, missing: bool) -> None:
    """A group commit runs the writes of each kind in one statement: the outcomes and the records
    it leaves are those of the same writes one after another."""
    writes = _writes_of_every_kind(missing=missing)
    async with (
        opened(_CountingSqliteLedger(tmp_path / "grouped.db")) as grouped,
        opened(SqliteLedger(tmp_path / "one-by-one.db")) as one_by_one,
    ):
        await _records_of_every_kind(grouped)
        await _records_of_every_kind(one_by_one)
        grouped.groups.clear()
        async with grouped.one_group():
            started = [asyncio.create_task(write(grouped)) for write in writes]
        together = await asyncio.gather(*started, return_exceptions=True)
        in_turn: list[object] = []
        for write in writes:
            try:
                in_turn.append(await write(one_by_one))
            except Exception as error:
                in_turn.append(error)

        assert grouped.groups == [1, len(writes)]
        assert [_same(o) for o in together] == [_same(o) for o in in_turn]
        assert [isinstance(o, KeyError) for o in together].count(True) == int(missing)
        assert {o.status for o in together if isinstance(o, Claim)} == set(ClaimStatus)
        assert await grouped.unpublished(limit=1000) == await one_by_one.unpublished(limit=1000)
        numbers = [
            f"INV-{kind}-{i}" for kind in ("new", "fin", "mark") for i in range(10 if kind == "new" else 3)
        ]
        numbers += ["INV-reg", "INV-reg-pub", "INV-rej", "INV-failed", "INV-held", "INV-lapsed", "INV-own"]
        for number in [*numbers, "INV-renew", "INV-404"]:
            assert await grouped.get(creditor=CREDITOR, invoice_number=number) == await one_by_one.get(
                creditor=CREDITOR, invoice_number=number
            ), number


async def test_a_group_writing_one_record_twice_runs_its_writes_in_order(tmp_path: Any) -> None:
    async with opened(_CountingSqliteLedger(tmp_path / "ledger.db")) as ledger:
        for number in (NUMBER, "INV-2"):
            await finished(ledger, Outcome.REGISTERED, number=number)
        ledger.groups.clear()
        later = T0 + timedelta(seconds=5)
        async with ledger.one_group():
            # One by one, the record ends published; by kind (marks first), it would not.
            started: list[asyncio.Task[None]] = [
                asyncio.create_task(mark(ledger, "INV-2", later)),
                asyncio.create_task(finish(ledger, NUMBER, later)),
                asyncio.create_task(mark(ledger, NUMBER, later)),
            ]
        await asyncio.gather(*started)
        assert ledger.groups == [1, 3]
        assert (await stored(ledger)).result_published
