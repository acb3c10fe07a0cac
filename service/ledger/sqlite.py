"""The ledger in a SQLite file: one instance, or a few processes on one machine sharing a file.

Every sqlite3 call runs in one dedicated worker thread per ledger (sqlite3 blocks), so the event
loop never waits on the disk and the connection is only ever used by the thread that made it.

- WAL journal: readers never block the writer, and a write is a single append to the log.
- ``synchronous=FULL``: a transaction is on disk when ``claim`` returns. With NORMAL a power cut
  or OS crash may lose the last commits; a lost claim whose POST already went out would be POSTed
  again on replay, which is exactly the duplicate this service exists to prevent.
- Group commit: the price of FULL is one fsync per commit, and with many invoices in flight one
  writer thread doing one fsync per write caps the service at a few hundred writes a second. So
  writes that arrive while a commit is under way wait for it, and then all go in the next
  transaction together, the writes of one kind (claims, outcomes, marks) in one statement; should
  one write fail, the group runs again one write at a time, each in a savepoint of its own, so
  that it does not undo the others. Every caller still returns only once its write is on disk.
- ``BEGIN IMMEDIATE`` takes the write lock before reading, so a claim's read-decide-write cannot
  interleave with another connection's; ``busy_timeout`` makes a second writer wait for it.

Datetimes are stored as fixed-width ISO-8601 UTC text (so text order is time order), ``result``
as JSON text.

The claim rules (``decide_claim``) and the datetime check (``utc``) are backend-neutral and shared
with the PostgreSQL ledger.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from service.domain.outcomes import Outcome
from service.ledger.base import Claim, ClaimStatus, InvoiceKey, LedgerEntry, LedgerError, outcome_of
from service.ledger.claims import decide_claim, utc

T = TypeVar("T")

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    # 1: the ledger
    (
        """
        CREATE TABLE ledger_entries (
            creditor TEXT NOT NULL,
            invoice_number TEXT NOT NULL,
            fingerprint TEXT NOT NULL,
            state TEXT NOT NULL
                CHECK (state IN ('in_flight', 'registered', 'rejected', 'conflict', 'failed')),
            attempts INTEGER NOT NULL CHECK (attempts >= 0),
            event_id TEXT NOT NULL,
            claimed_by TEXT,
            claimed_at TEXT,
            result TEXT,
            result_published INTEGER NOT NULL DEFAULT 0 CHECK (result_published IN (0, 1)),
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            PRIMARY KEY (creditor, invoice_number)
        ) WITHOUT ROWID
        """,
        """
        CREATE INDEX ledger_entries_unpublished ON ledger_entries (updated_at)
            WHERE state <> 'in_flight' AND result_published = 0
        """,
    ),
)
"""Migration ``n`` (1-based) is ``MIGRATIONS[n - 1]``; append only, never edit one that shipped."""

_COLUMNS = (
    "creditor, invoice_number, fingerprint, state, attempts, event_id, claimed_by, claimed_at,"
    " result, result_published, created_at, updated_at"
)
_KEY = "creditor = ? AND invoice_number = ?"
MAX_GROUP = 512
"""The most writes one group commit takes (bounds how long a transaction holds the file's lock)."""


@dataclass(frozen=True, slots=True)
class _Done:
    value: object


@dataclass(frozen=True, slots=True)
class _Failed:
    error: BaseException


_Waiting = tuple["_Write", "asyncio.Future[object]"]


def _text(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def _entry(row: sqlite3.Row) -> LedgerEntry:
    return LedgerEntry(
        creditor=row["creditor"],
        invoice_number=row["invoice_number"],
        fingerprint=row["fingerprint"],
        outcome=outcome_of(row["state"]),
        attempts=row["attempts"],
        event_id=row["event_id"],
        claimed_by=row["claimed_by"],
        claimed_at=None if row["claimed_at"] is None else datetime.fromisoformat(row["claimed_at"]),
        result=None if row["result"] is None else json.loads(row["result"]),
        result_published=bool(row["result_published"]),
        created_at=datetime.fromisoformat(row["created_at"]),
        updated_at=datetime.fromisoformat(row["updated_at"]),
    )


def _json(result: dict[str, Any]) -> str:
    return json.dumps(result, ensure_ascii=False, separators=(",", ":"))


class SqliteLedger:
    def __init__(
        self, path: str | os.PathLike[str], *, busy_timeout: timedelta = timedelta(seconds=10)
    ) -> None:
        """``path`` is a file (created if missing) or ``":memory:"`` (private to this instance)."""
        self._path = os.fspath(path)
        self._busy_timeout = busy_timeout
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None
        # Writes waiting for a group commit; the ledger's thread takes them (under the lock).
        self._waiting: list[_Waiting] = []
        self._waiting_lock = threading.Lock()
        self._commits: set[asyncio.Future[None]] = set()  # handed to the thread, not yet done

    def __repr__(self) -> str:
        return f"SqliteLedger({self._path!r})"

    async def open(self) -> None:
        if self._executor is not None:
            return
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ledger-sqlite")
        try:
            self._conn = await self._call(self._connect)
        except BaseException:
            self._executor.shutdown(wait=False)
            self._executor = None
            raise

    async def close(self) -> None:
        while self._commits:  # writes already handed over are finished, not dropped
            await asyncio.wait(set(self._commits))
        executor, conn = self._executor, self._conn
        if executor is None:
            return
        self._executor = self._conn = None
        with self._waiting_lock:
            waiting, self._waiting = self._waiting, []
        _fail(waiting, "sqlite: the ledger was closed before this write", None)
        try:
            if conn is not None:
                await asyncio.get_running_loop().run_in_executor(executor, conn.close)
        finally:
            executor.shutdown(wait=False)

    async def ping(self) -> None:
        await self._run(lambda conn: conn.execute("SELECT 1").fetchone())

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
        write = _ClaimWrite(creditor, invoice_number, fingerprint, event_id, owner, utc(now), lease)
        claim = await self._transaction(write)
        assert isinstance(claim, Claim)
        return claim

    async def renew(self, *, creditor: str, invoice_number: str, owner: str, now: datetime) -> bool:
        write = _OwnClaimWrite(creditor, invoice_number, owner, _text(utc(now)), _RENEW)
        return bool(await self._transaction(write))

    async def release(self, *, creditor: str, invoice_number: str, owner: str, now: datetime) -> bool:
        write = _OwnClaimWrite(creditor, invoice_number, owner, _text(utc(now)), _RELEASE)
        return bool(await self._transaction(write))

    async def finish(
        self,
        *,
        creditor: str,
        invoice_number: str,
        outcome: Outcome,
        result: dict[str, Any],
        now: datetime,
    ) -> None:
        document, stamp = _json(result), _text(utc(now))
        await self._transaction(_FinishWrite(creditor, invoice_number, outcome.value, document, stamp))

    async def mark_published(self, *, creditor: str, invoice_number: str, now: datetime) -> None:
        await self._transaction(_MarkWrite(creditor, invoice_number, _text(utc(now))))

    async def unpublished(self, *, limit: int = 100) -> list[LedgerEntry]:
        def work(conn: sqlite3.Connection) -> list[LedgerEntry]:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM ledger_entries WHERE state <> 'in_flight' AND result_published = 0"
                " ORDER BY updated_at, creditor, invoice_number LIMIT ?",
                (limit,),
            ).fetchall()
            return [_entry(row) for row in rows]

        return await self._run(work)

    async def get(self, *, creditor: str, invoice_number: str) -> LedgerEntry | None:
        def work(conn: sqlite3.Connection) -> LedgerEntry | None:
            row = conn.execute(
                f"SELECT {_COLUMNS} FROM ledger_entries WHERE {_KEY}", (creditor, invoice_number)
            ).fetchone()
            return None if row is None else _entry(row)

        return await self._run(work)

    async def unsettled(
        self, *, now: datetime, lease: timedelta, limit: int = 100, after: InvoiceKey | None = None
    ) -> list[LedgerEntry]:
        lapsed = _text(utc(now) - lease)
        condition = "(state = 'in_flight' AND (claimed_at IS NULL OR claimed_at <= ?) OR state = 'failed')"
        return await self._page([condition], [lapsed], limit, after)

    async def final_entries(
        self,
        *,
        creditor: str | None = None,
        updated_since: datetime | None = None,
        updated_until: datetime | None = None,
        limit: int = 100,
        after: InvoiceKey | None = None,
    ) -> list[LedgerEntry]:
        conditions, parameters = ["state <> 'in_flight'"], []
        if creditor is not None:
            conditions.append("creditor = ?")
            parameters.append(creditor)
        if updated_since is not None:
            conditions.append("updated_at >= ?")
            parameters.append(_text(utc(updated_since)))
        if updated_until is not None:
            conditions.append("updated_at < ?")
            parameters.append(_text(utc(updated_until)))
        return await self._page(conditions, parameters, limit, after)

    async def _page(
        self, conditions: list[str], parameters: list[str], limit: int, after: InvoiceKey | None
    ) -> list[LedgerEntry]:
        """The records meeting every condition, in key order after ``after``: by the primary key,
        so a page costs the rows it passes, however large the ledger."""
        if after is not None:
            conditions = [*conditions, "(creditor, invoice_number) > (?, ?)"]
            parameters = [*parameters, *after]
        query = (
            f"SELECT {_COLUMNS} FROM ledger_entries WHERE {' AND '.join(conditions)}"
            " ORDER BY creditor, invoice_number LIMIT ?"
        )

        def work(conn: sqlite3.Connection) -> list[LedgerEntry]:
            return [_entry(row) for row in conn.execute(query, (*parameters, limit)).fetchall()]

        return await self._run(work)

    # -- in the worker thread

    def _connect(self) -> sqlite3.Connection:
        seconds = self._busy_timeout.total_seconds()
        # isolation_level=None: no implicit transactions; every write is an explicit BEGIN IMMEDIATE.
        conn = sqlite3.connect(self._path, timeout=seconds, isolation_level=None)
        try:
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout = {int(seconds * 1000)}")
            mode = self._enable_wal(conn, deadline=time.monotonic() + seconds)
            if mode not in ("wal", "memory"):
                raise LedgerError(f"sqlite: {self._path} cannot use WAL (journal mode stays {mode})")
            conn.execute("PRAGMA synchronous = FULL")
            self._in_transaction(conn, self._migrate)
        except BaseException:
            conn.close()
            raise
        return conn

    @staticmethod
    def _enable_wal(conn: sqlite3.Connection, *, deadline: float) -> str:
        """Switch to WAL (it sticks to the file) and return the journal mode now in force."""
        while True:
            try:
                return str(conn.execute("PRAGMA journal_mode = WAL").fetchone()[0])
            except sqlite3.OperationalError as error:
                # While another connection switches the file to WAL, this fails at once, without
                # waiting in the busy handler.
                if "locked" not in str(error) or time.monotonic() >= deadline:
                    raise
                time.sleep(0.01)

    @staticmethod
    def _migrate(conn: sqlite3.Connection) -> None:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations"
            " (version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)"
        )
        applied = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
        for version, statements in enumerate(MIGRATIONS, start=1):
            if version in applied:
                continue
            for statement in statements:
                conn.execute(statement)
            conn.execute(
                "INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)",
                (version, _text(datetime.now(UTC))),
            )

    @staticmethod
    def _in_transaction(conn: sqlite3.Connection, work: Callable[[sqlite3.Connection], T]) -> T:
        conn.execute("BEGIN IMMEDIATE")
        try:
            result = work(conn)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:  # SQLite may already have rolled back (SQLITE_FULL, ...)
                conn.execute("ROLLBACK")
            raise
        return result

    @staticmethod
    def _group(conn: sqlite3.Connection, works: list[_Write]) -> list[object]:
        """Run ``works`` in one transaction: one commit (one fsync) for them all.

        First all together, the writes of one kind in one statement (``_batched``); only if one of
        them fails is the transaction rolled back and the group run again, each write alone in its
        own savepoint, so that a failing write undoes only itself. On this thread every statement
        waits for the GIL while the event loop is busy, so statements are what a group commit
        saves on. A write decides from what it reads, so running it again after the roll-back is
        safe.
        """
        try:
            return SqliteLedger._in_transaction(conn, lambda conn: _batched(conn, works))
        except Exception:
            return SqliteLedger._in_transaction(conn, lambda conn: [_savepoint(conn, work) for work in works])

    # -- on the event loop

    async def _transaction(self, work: _Write) -> object:
        """Write in the next group commit; return once it is on disk."""
        if self._conn is None:
            raise LedgerError("sqlite: the ledger is not open")
        future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        with self._waiting_lock:
            self._waiting.append((work, future))
        self._schedule_commit()
        # A cancelled caller does not stop its write: it is committed (or not) with its group.
        return await future

    def _schedule_commit(self) -> None:
        """Keep a group commit queued on the ledger's thread behind the one running there.

        The queued one takes, when it starts, every write that waits by then: the thread goes from
        one commit to the next without a turn of the event loop in between, and each group's
        writers are answered by the thread directly, not by a task of the loop.
        """
        if len(self._commits) >= 2 or self._executor is None or self._conn is None:
            return
        loop = asyncio.get_running_loop()
        commit = loop.run_in_executor(self._executor, self._commit_waiting, self._conn, loop)
        self._commits.add(commit)
        commit.add_done_callback(self._commit_done)

    def _commit_done(self, commit: asyncio.Future[None]) -> None:
        self._commits.discard(commit)
        if not commit.cancelled() and commit.exception() is not None:  # not raised by a group's work
            with self._waiting_lock:
                waiting, self._waiting = self._waiting, []
            _fail(waiting, f"sqlite: {commit.exception()!r}", commit.exception())
            return
        with self._waiting_lock:
            left = bool(self._waiting)
        if left:
            self._schedule_commit()

    def _commit_waiting(self, conn: sqlite3.Connection, loop: asyncio.AbstractEventLoop) -> None:
        """On the ledger's thread: commit the writes waiting now as one group, then answer them."""
        with self._waiting_lock:
            group, self._waiting = self._waiting[:MAX_GROUP], self._waiting[MAX_GROUP:]
        if not group:
            return
        try:
            outcomes: list[object] | None = self._group(conn, [work for work, _ in group])
            failure: BaseException | None = None
        except BaseException as error:  # nothing of the group was committed: every write failed
            outcomes, failure = None, error
        loop.call_soon_threadsafe(_answer, group, outcomes, failure)

    async def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._conn
        if conn is None:
            raise LedgerError("sqlite: the ledger is not open")
        return await self._call(functools.partial(work, conn))

    async def _call(self, work: Callable[[], T]) -> T:
        if self._executor is None:
            raise LedgerError("sqlite: the ledger is not open")
        try:
            # A cancelled caller does not stop the thread: a transaction always runs to its end.
            return await asyncio.get_running_loop().run_in_executor(self._executor, work)
        except sqlite3.Error as error:
            raise LedgerError(f"sqlite: {error}") from error


def _savepoint(conn: sqlite3.Connection, work: _Write) -> _Done | _Failed:
    """Run ``work`` in a savepoint of the open transaction; if it fails, undo only its changes."""
    conn.execute("SAVEPOINT write")
    try:
        value = work(conn)
    except Exception as error:
        if not conn.in_transaction:  # SQLite rolled back the whole transaction itself
            raise
        conn.execute("ROLLBACK TO write")
        conn.execute("RELEASE write")
        return _Failed(error)
    conn.execute("RELEASE write")
    return _Done(value)


def _answer(group: list[_Waiting], outcomes: list[object] | None, failure: BaseException | None) -> None:
    """On the event loop: settle each write of a group with what became of it."""
    if outcomes is None:
        message = str(failure) if isinstance(failure, LedgerError) else f"sqlite: {failure!r}"
        _fail(group, message, failure)
        return
    for (_, future), outcome in zip(group, outcomes, strict=True):
        if future.done():  # its writer was cancelled; the write is committed all the same
            continue
        if isinstance(outcome, _Done):
            future.set_result(outcome.value)
        else:
            assert isinstance(outcome, _Failed)
            error = outcome.error
            future.set_exception(
                LedgerError(f"sqlite: {error}") if isinstance(error, sqlite3.Error) else error
            )


def _fail(writes: list[_Waiting], message: str, cause: BaseException | None) -> None:
    for _, future in writes:
        if not future.done():
            error = LedgerError(message)
            error.__cause__ = cause
            future.set_exception(error)


def _values(entry: LedgerEntry) -> Sequence[object]:
    return (
        entry.creditor,
        entry.invoice_number,
        entry.fingerprint,
        entry.state,
        entry.attempts,
        entry.event_id,
        entry.claimed_by,
        None if entry.claimed_at is None else _text(entry.claimed_at),
        None if entry.result is None else _json(entry.result),
        int(entry.result_published),
        _text(entry.created_at),
        _text(entry.updated_at),
    )


# -- the writes: each runs alone, or with the others of its kind in a group in one statement.
# A batch passes its rows as one JSON parameter (``json_each``): one statement, whatever the size
# of the group, and one statement text, which SQLite prepares once.


@dataclass(frozen=True, slots=True)
class _Write:
    """A write of one record, waiting for a group commit."""

    creditor: str
    invoice_number: str

    @property
    def key(self) -> tuple[str, str]:
        return self.creditor, self.invoice_number

    def __call__(self, conn: sqlite3.Connection) -> object:
        """Run alone."""
        raise NotImplementedError

    @classmethod
    def run_batch(cls, conn: sqlite3.Connection, writes: Sequence[_Write]) -> list[object]:
        """Run ``writes`` (all of this kind, each of another record) together."""
        return [write(conn) for write in writes]

    def require_one(self, cursor: sqlite3.Cursor) -> None:
        if cursor.rowcount != 1:
            raise KeyError(f"no ledger record for {self.creditor}/{self.invoice_number}")


def _batched(conn: sqlite3.Connection, writes: list[_Write]) -> list[object]:
    """Run a group: the writes of each kind together, unless one record is written twice (then
    each in turn, in order: a later write may depend on what an earlier one wrote)."""
    if len(writes) == 1 or len({write.key for write in writes}) < len(writes):
        return [_Done(write(conn)) for write in writes]
    kinds: dict[type[_Write], list[int]] = {}
    for index, write in enumerate(writes):
        kinds.setdefault(type(write), []).append(index)
    outcomes: list[object] = [None] * len(writes)
    for kind, indices in kinds.items():
        values = kind.run_batch(conn, [writes[index] for index in indices])
        for index, value in zip(indices, values, strict=True):
            outcomes[index] = _Done(value)
    return outcomes


def _rows(values: Sequence[Sequence[object]]) -> str:
    return json.dumps(values, ensure_ascii=False, separators=(",", ":"))


def _columns(count: int) -> str:
    return ", ".join(f"json_extract(value, '$[{index}]')" for index in range(count))


_UPSERT = (
    f"INSERT INTO ledger_entries ({_COLUMNS}) {{source}}"
    " ON CONFLICT (creditor, invoice_number) DO UPDATE SET fingerprint = excluded.fingerprint,"
    " state = excluded.state, attempts = excluded.attempts, event_id = excluded.event_id,"
    " claimed_by = excluded.claimed_by, claimed_at = excluded.claimed_at, result = excluded.result,"
    " result_published = excluded.result_published, created_at = excluded.created_at,"
    " updated_at = excluded.updated_at"
)
_UPSERT_ONE = _UPSERT.format(source="VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
# "WHERE true": without it SQLite would read ON CONFLICT as part of the SELECT's join.
_UPSERT_MANY = _UPSERT.format(source=f"SELECT {_columns(12)} FROM json_each(?) WHERE true")
_SELECT_MANY = (
    f"SELECT {', '.join(f'e.{column.strip()}' for column in _COLUMNS.split(','))}"
    " FROM json_each(?) AS k JOIN ledger_entries AS e"
    " ON e.creditor = json_extract(k.value, '$[0]') AND e.invoice_number = json_extract(k.value, '$[1]')"
)


def _update_many(assignments: str, columns: Sequence[str]) -> str:
    """An UPDATE of the records named by the JSON rows ``[creditor, invoice_number, *columns]``."""
    source = ", ".join(
        f"json_extract(value, '$[{index}]') AS {name}"
        for index, name in enumerate(("creditor", "invoice_number", *columns))
    )
    return (
        f"UPDATE ledger_entries SET {assignments} FROM (SELECT {source} FROM json_each(?)) AS v"
        " WHERE ledger_entries.creditor = v.creditor AND ledger_entries.invoice_number = v.invoice_number"
    )


def _upsert(conn: sqlite3.Connection, entries: Sequence[LedgerEntry]) -> None:
    if len(entries) == 1:
        conn.execute(_UPSERT_ONE, _values(entries[0]))
    elif entries:
        conn.execute(_UPSERT_MANY, (_rows([_values(entry) for entry in entries]),))


def _require_all(cursor: sqlite3.Cursor, writes: Sequence[_Write]) -> None:
    if cursor.rowcount != len(writes):
        # Which one is missing is for the write alone to say: the group runs again one by one.
        raise KeyError(f"{len(writes) - cursor.rowcount} of {len(writes)} ledger records are missing")


@dataclass(frozen=True, slots=True)
class _ClaimWrite(_Write):
    fingerprint: str
    event_id: str
    owner: str
    now: datetime
    lease: timedelta

    def decide(self, found: LedgerEntry | None) -> Claim:
        return decide_claim(
            found,
            creditor=self.creditor,
            invoice_number=self.invoice_number,
            fingerprint=self.fingerprint,
            event_id=self.event_id,
            owner=self.owner,
            now=self.now,
            lease=self.lease,
        )

    def __call__(self, conn: sqlite3.Connection) -> Claim:
        found = conn.execute(
            f"SELECT {_COLUMNS} FROM ledger_entries WHERE {_KEY}", (self.creditor, self.invoice_number)
        ).fetchone()
        claim = self.decide(None if found is None else _entry(found))
        if claim.status in _WRITTEN:
            _upsert(conn, [claim.entry])
        return claim

    @classmethod
    def run_batch(cls, conn: sqlite3.Connection, writes: Sequence[_Write]) -> list[object]:
        claims = [write for write in writes if isinstance(write, _ClaimWrite)]
        found = {
            (row["creditor"], row["invoice_number"]): _entry(row)
            for row in conn.execute(_SELECT_MANY, (_rows([claim.key for claim in claims]),))
        }
        decided = [claim.decide(found.get(claim.key)) for claim in claims]
        _upsert(conn, [claim.entry for claim in decided if claim.status in _WRITTEN])
        return list(decided)


_WRITTEN = (ClaimStatus.CLAIMED, ClaimStatus.RECLAIMED)


def _own_claim_update(assignments: str) -> str:
    """An UPDATE applying ``assignments`` (``:stamp`` is the time) if ``:owner`` holds the claim."""
    return (
        f"UPDATE ledger_entries SET {assignments}, updated_at = :stamp"
        " WHERE creditor = :creditor AND invoice_number = :number AND state = 'in_flight'"
        " AND claimed_by = :owner"
    )


_RENEW = _own_claim_update("claimed_at = :stamp, attempts = attempts + 1")
_RELEASE = _own_claim_update("claimed_by = NULL, claimed_at = NULL")


@dataclass(frozen=True, slots=True)
class _OwnClaimWrite(_Write):
    """Runs ``statement`` (``_RENEW`` or ``_RELEASE``); answers whether ``owner`` held the claim."""

    owner: str
    stamp: str
    statement: str

    def __call__(self, conn: sqlite3.Connection) -> bool:
        cursor = conn.execute(
            self.statement,
            {
                "stamp": self.stamp,
                "creditor": self.creditor,
                "number": self.invoice_number,
                "owner": self.owner,
            },
        )
        return cursor.rowcount == 1


_FINISH_ASSIGNMENTS = (
    "state = {state}, result = {result}, result_published = 0, claimed_by = NULL, updated_at = {stamp}"
)
_FINISH_ONE = (
    f"UPDATE ledger_entries SET {_FINISH_ASSIGNMENTS.format(state='?', result='?', stamp='?')} WHERE {_KEY}"
)
_FINISH_MANY = _update_many(
    _FINISH_ASSIGNMENTS.format(state="v.state", result="v.result", stamp="v.stamp"),
    ("state", "result", "stamp"),
)


@dataclass(frozen=True, slots=True)
class _FinishWrite(_Write):
    state: str
    document: str
    stamp: str

    def __call__(self, conn: sqlite3.Connection) -> None:
        cursor = conn.execute(
            _FINISH_ONE, (self.state, self.document, self.stamp, self.creditor, self.invoice_number)
        )
        self.require_one(cursor)

    @classmethod
    def run_batch(cls, conn: sqlite3.Connection, writes: Sequence[_Write]) -> list[object]:
        finishes = [write for write in writes if isinstance(write, _FinishWrite)]
        rows = [(w.creditor, w.invoice_number, w.state, w.document, w.stamp) for w in finishes]
        _require_all(conn.execute(_FINISH_MANY, (_rows(rows),)), finishes)
        return [None] * len(finishes)


_MARK_MANY = _update_many("result_published = 1, updated_at = v.stamp", ("stamp",))


@dataclass(frozen=True, slots=True)
class _MarkWrite(_Write):
    stamp: str

    def __call__(self, conn: sqlite3.Connection) -> None:
        cursor = conn.execute(
            f"UPDATE ledger_entries SET result_published = 1, updated_at = ? WHERE {_KEY}",
            (self.stamp, self.creditor, self.invoice_number),
        )
        self.require_one(cursor)

    @classmethod
    def run_batch(cls, conn: sqlite3.Connection, writes: Sequence[_Write]) -> list[object]:
        marks = [write for write in writes if isinstance(write, _MarkWrite)]
        _require_all(conn.execute(_MARK_MANY, (_rows([(*m.key, m.stamp) for m in marks]),)), marks)
        return [None] * len(marks)
