"""The ledger in PostgreSQL (asyncpg), shared by any number of replicas.

A claim is one transaction: ``INSERT ... ON CONFLICT DO NOTHING`` creates a new record (a
concurrent insert of the same key waits for the other transaction and then does nothing), and
otherwise ``SELECT ... FOR UPDATE`` locks the existing record while the claim rules decide and
the new state is written. Migrations run under a transaction-scoped advisory lock, so replicas
starting together apply each one exactly once.

Every driver error becomes ``LedgerError``; its message never contains the DSN's password.
"""

from __future__ import annotations

import functools
import itertools
import json
import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

import asyncpg

from service.domain.outcomes import Outcome
from service.ledger.base import Claim, ClaimStatus, InvoiceKey, LedgerEntry, LedgerError, outcome_of
from service.ledger.claims import decide_claim, utc

T = TypeVar("T")

MIGRATIONS: tuple[str, ...] = (
    # 1: the ledger
    """
    CREATE TABLE ledger_entries (
        creditor text NOT NULL,
        invoice_number text NOT NULL,
        fingerprint text NOT NULL,
        state text NOT NULL CHECK (state IN ('in_flight', 'registered', 'rejected', 'conflict', 'failed')),
        attempts integer NOT NULL CHECK (attempts >= 0),
        event_id text NOT NULL,
        claimed_by text,
        claimed_at timestamptz,
        result jsonb,
        result_published boolean NOT NULL DEFAULT false,
        created_at timestamptz NOT NULL,
        updated_at timestamptz NOT NULL,
        PRIMARY KEY (creditor, invoice_number)
    );
    CREATE INDEX ledger_entries_unpublished ON ledger_entries (updated_at)
        WHERE state <> 'in_flight' AND NOT result_published;
    """,
)
"""Migration ``n`` (1-based) is ``MIGRATIONS[n - 1]``; append only, never edit one that shipped."""

# pg_advisory_xact_lock(MIGRATION_LOCK, hashtext(schema)): one migration at a time per schema.
MIGRATION_LOCK = 0x4C454447  # "LEDG"

_COLUMNS = (
    "creditor, invoice_number, fingerprint, state, attempts, event_id, claimed_by, claimed_at,"
    " result, result_published, created_at, updated_at"
)
_KEY = "creditor = $1 AND invoice_number = $2"
_INSERT = (
    f"INSERT INTO ledger_entries ({_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
)
_UPDATE = (
    "UPDATE ledger_entries SET fingerprint = $3, state = $4, attempts = $5, event_id = $6, claimed_by = $7,"
    f" claimed_at = $8, result = $9, result_published = $10, created_at = $11, updated_at = $12 WHERE {_KEY}"
)
_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")

# What the driver raises when the database is unreachable, refuses us, drops the connection or fails a
# statement: all of it means "the ledger cannot be written now", to be retried, never an event's failure.
# - PostgresError: the server's own words, including its goodbyes while it restarts (AdminShutdownError,
#   CannotConnectNowError "the database system is starting up"/"shutting down") and a connection lost
#   mid-query (ConnectionDoesNotExistError, a PostgresConnectionError);
# - InterfaceError: the client's, e.g. "connection is closed", "pool is closing";
# - InternalClientError, which is neither of those: a query that meets a connection whose server has just
#   gone finds the protocol still waiting on the dead server's error ("cannot switch to state 12; another
#   operation (2) is in progress", MagicStack/asyncpg#784, #1069). Its subclasses are transient too: a
#   garbled or cut stream (ProtocolError), no host in the wanted role during a failover
#   (TargetServerAttributeNotMatched), a schema change under a cached statement (OutdatedSchemaCacheError);
# - OSError: the socket's (ConnectionRefusedError, ConnectionResetError, ssl.SSLError, DNS failures);
# - TimeoutError: the connect and command timeouts.
# Not Exception as a whole: a bug of ours must surface, not be retried forever as an outage. Nor EOFError
# or asyncio.IncompleteReadError: asyncpg reads no streams, so they never come from the driver.
_DRIVER_ERRORS = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    OSError,
    TimeoutError,
)


def _entry(row: asyncpg.Record) -> LedgerEntry:
    return LedgerEntry(
        creditor=row["creditor"],
        invoice_number=row["invoice_number"],
        fingerprint=row["fingerprint"],
        outcome=outcome_of(row["state"]),
        attempts=row["attempts"],
        event_id=row["event_id"],
        claimed_by=row["claimed_by"],
        claimed_at=None if row["claimed_at"] is None else row["claimed_at"].astimezone(UTC),
        result=row["result"],
        result_published=row["result_published"],
        created_at=row["created_at"].astimezone(UTC),
        updated_at=row["updated_at"].astimezone(UTC),
    )


def _values(entry: LedgerEntry) -> tuple[object, ...]:
    return (
        entry.creditor,
        entry.invoice_number,
        entry.fingerprint,
        entry.state,
        entry.attempts,
        entry.event_id,
        entry.claimed_by,
        entry.claimed_at,
        entry.result,
        entry.result_published,
        entry.created_at,
        entry.updated_at,
    )


def _secrets(dsn: str) -> list[str]:
    """The password(s) in ``dsn``, as written and decoded, to scrub from error messages."""
    try:
        parts = urlsplit(dsn)
        found = [parts.password or ""]
        found += parse_qs(parts.query).get("password", [])
    except ValueError:  # unparseable: we cannot know the password, so hide the whole DSN
        return [dsn]
    return sorted({s for p in found if p for s in (p, unquote(p))}, key=len, reverse=True)


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


class PostgresLedger:
    def __init__(
        self,
        dsn: str,
        *,
        min_size: int = 1,
        max_size: int = 10,
        schema: str = "public",
        connect_timeout: float = 10.0,
        command_timeout: float = 30.0,
    ) -> None:
        """``dsn``: ``postgresql://user:password@host:port/database`` (libpq URI; asyncpg's options).
        ``schema`` holds the tables; it is created if missing."""
        if not _SCHEMA_NAME.fullmatch(schema):
            raise ValueError(f"schema must be a lower-case SQL identifier, got {schema!r}")
        self._dsn = dsn
        self._min_size = min_size
        self._max_size = max_size
        self._schema = schema
        self._connect_timeout = connect_timeout
        self._command_timeout = command_timeout
        self._pool: asyncpg.Pool | None = None

    def __repr__(self) -> str:
        return f"PostgresLedger({self._redact(self._dsn)!r}, schema={self._schema!r})"

    async def open(self) -> None:
        if self._pool is not None:
            return
        pool = await self._guard(
            "connect",
            lambda: asyncpg.create_pool(
                self._dsn,
                min_size=self._min_size,
                max_size=self._max_size,
                timeout=self._connect_timeout,
                command_timeout=self._command_timeout,
                init=_init_connection,
                server_settings={"search_path": self._schema, "application_name": "amili-registrar"},
            ),
        )
        try:
            await self._guard("migrate", lambda: self._migrate(pool))
        except BaseException:
            pool.terminate()
            raise
        self._pool = pool

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await self._guard("close", pool.close)

    async def ping(self) -> None:
        await self._guard("ping", lambda: self._require().fetchval("SELECT 1"))

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
        decide = functools.partial(
            decide_claim,
            creditor=creditor,
            invoice_number=invoice_number,
            fingerprint=fingerprint,
            event_id=event_id,
            owner=owner,
            now=utc(now),
            lease=lease,
        )

        async def work() -> Claim:
            async with self._require().acquire() as conn, conn.transaction():
                fresh = decide(None)
                inserted = await conn.fetchrow(
                    f"{_INSERT} ON CONFLICT DO NOTHING RETURNING 1", *_values(fresh.entry)
                )
                if inserted is not None:
                    return fresh
                row = await conn.fetchrow(
                    f"SELECT {_COLUMNS} FROM ledger_entries WHERE {_KEY} FOR UPDATE", creditor, invoice_number
                )
                if row is None:  # records are never deleted
                    raise LedgerError(f"postgres claim: {creditor}/{invoice_number} vanished")
                claim = decide(_entry(row))
                if claim.status in (ClaimStatus.CLAIMED, ClaimStatus.RECLAIMED):
                    await conn.execute(_UPDATE, *_values(claim.entry))
                return claim

        return await self._guard("claim", work)

    async def renew(self, *, creditor: str, invoice_number: str, owner: str, now: datetime) -> bool:
        return await self._change_own_claim(
            "renew", "claimed_at = $3, attempts = attempts + 1", creditor, invoice_number, owner, now
        )

    async def release(self, *, creditor: str, invoice_number: str, owner: str, now: datetime) -> bool:
        return await self._change_own_claim(
            "release", "claimed_by = NULL, claimed_at = NULL", creditor, invoice_number, owner, now
        )

    async def _change_own_claim(
        self, operation: str, assignments: str, creditor: str, invoice_number: str, owner: str, now: datetime
    ) -> bool:
        """Apply ``assignments`` ($3 is ``now``) to the record if ``owner`` holds its claim."""
        now = utc(now)
        status = await self._guard(
            operation,
            lambda: self._require().execute(
                f"UPDATE ledger_entries SET {assignments}, updated_at = $3"
                f" WHERE {_KEY} AND state = 'in_flight' AND claimed_by = $4",
                creditor,
                invoice_number,
                now,
                owner,
            ),
        )
        return status == "UPDATE 1"

    async def finish(
        self,
        *,
        creditor: str,
        invoice_number: str,
        outcome: Outcome,
        result: dict[str, Any],
        now: datetime,
    ) -> None:
        now = utc(now)
        status = await self._guard(
            "finish",
            lambda: self._require().execute(
                "UPDATE ledger_entries SET state = $3, result = $4, result_published = false,"
                f" claimed_by = NULL, updated_at = $5 WHERE {_KEY}",
                creditor,
                invoice_number,
                outcome.value,
                result,
                now,
            ),
        )
        if status != "UPDATE 1":
            raise KeyError(f"no ledger record for {creditor}/{invoice_number}")

    async def mark_published(self, *, creditor: str, invoice_number: str, now: datetime) -> None:
        now = utc(now)
        status = await self._guard(
            "mark_published",
            lambda: self._require().execute(
                f"UPDATE ledger_entries SET result_published = true, updated_at = $3 WHERE {_KEY}",
                creditor,
                invoice_number,
                now,
            ),
        )
        if status != "UPDATE 1":
            raise KeyError(f"no ledger record for {creditor}/{invoice_number}")

    async def unpublished(self, *, limit: int = 100) -> list[LedgerEntry]:
        rows = await self._guard(
            "unpublished",
            lambda: self._require().fetch(
                f"SELECT {_COLUMNS} FROM ledger_entries WHERE state <> 'in_flight' AND NOT result_published"
                " ORDER BY updated_at, creditor, invoice_number LIMIT $1",
                limit,
            ),
        )
        return [_entry(row) for row in rows]

    async def get(self, *, creditor: str, invoice_number: str) -> LedgerEntry | None:
        row = await self._guard(
            "get",
            lambda: self._require().fetchrow(
                f"SELECT {_COLUMNS} FROM ledger_entries WHERE {_KEY}", creditor, invoice_number
            ),
        )
        return None if row is None else _entry(row)

    async def unsettled(
        self, *, now: datetime, lease: timedelta, limit: int = 100, after: InvoiceKey | None = None
    ) -> list[LedgerEntry]:
        condition = "(state = 'in_flight' AND (claimed_at IS NULL OR claimed_at <= {}) OR state = 'failed')"
        return await self._page("unsettled", [condition], [utc(now) - lease], limit, after)

    async def final_entries(
        self,
        *,
        creditor: str | None = None,
        updated_since: datetime | None = None,
        updated_until: datetime | None = None,
        limit: int = 100,
        after: InvoiceKey | None = None,
    ) -> list[LedgerEntry]:
        conditions: list[str] = ["state <> 'in_flight'"]
        parameters: list[object] = []
        if creditor is not None:
            conditions.append("creditor = {}")
            parameters.append(creditor)
        if updated_since is not None:
            conditions.append("updated_at >= {}")
            parameters.append(utc(updated_since))
        if updated_until is not None:
            conditions.append("updated_at < {}")
            parameters.append(utc(updated_until))
        return await self._page("final_entries", conditions, parameters, limit, after)

    async def _page(
        self,
        operation: str,
        conditions: list[str],
        parameters: list[object],
        limit: int,
        after: InvoiceKey | None,
    ) -> list[LedgerEntry]:
        """The records meeting every condition (each ``{}`` one parameter, in order), in key order
        after ``after``: by the primary key, so a page costs the rows it passes."""
        if after is not None:
            conditions = [*conditions, "(creditor, invoice_number) > ({}, {})"]
            parameters = [*parameters, *after]
        placeholders = (f"${number}" for number in itertools.count(1))
        where = " AND ".join(c.format(*itertools.islice(placeholders, c.count("{}"))) for c in conditions)
        query = (
            f"SELECT {_COLUMNS} FROM ledger_entries WHERE {where}"
            f" ORDER BY creditor, invoice_number LIMIT {next(placeholders)}"
        )
        rows = await self._guard(operation, lambda: self._require().fetch(query, *parameters, limit))
        return [_entry(row) for row in rows]

    async def _migrate(self, pool: asyncpg.Pool) -> None:
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1, hashtext($2))", MIGRATION_LOCK, self._schema)
            # Under the lock: CREATE ... IF NOT EXISTS is not safe against a concurrent CREATE.
            await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self._schema}"')
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations"
                " (version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            applied = {row["version"] for row in await conn.fetch("SELECT version FROM schema_migrations")}
            for version, script in enumerate(MIGRATIONS, start=1):
                if version not in applied:
                    await conn.execute(script)
                    await conn.execute("INSERT INTO schema_migrations (version) VALUES ($1)", version)

    def _require(self) -> asyncpg.Pool:
        if self._pool is None:
            raise LedgerError("postgres: the ledger is not open")
        return self._pool

    def _redact(self, text: str) -> str:
        for secret in _secrets(self._dsn):
            text = text.replace(secret, "***")
        return text

    async def _guard(self, operation: str, call: Callable[[], Awaitable[T]]) -> T:
        try:
            return await call()
        except _DRIVER_ERRORS as error:
            detail = str(error) or type(error).__name__
            message = self._redact(f"postgres {operation}: {detail}")
            leaked = self._redact(repr(error)) != repr(error)
            # The driver's exception is kept as the cause unless it shows the password itself.
            raise LedgerError(message) from (None if leaked else error)
