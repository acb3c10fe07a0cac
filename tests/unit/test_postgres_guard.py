"""``PostgresLedger._guard``: what the driver raises when the database goes away is a ``LedgerError``
(an outage to retry), without the DSN's password; errors of our own stay what they are.

No database: the guard is given calls that raise what asyncpg raises. The same errors from a real server
restart are in ``tests/integration/test_postgres_restart.py``.
"""

from __future__ import annotations

import asyncio
import traceback

import asyncpg
import pytest

from service.ledger import LedgerError
from service.ledger.postgres import PostgresLedger

# Percent-encoded in the DSN; the driver may quote it either way, so both spellings must go.
PASSWORD = "s3cr%40t-Pa55"
DECODED = "s3cr@t-Pa55"
DSN = f"postgresql://registrar:{PASSWORD}@db.internal:5432/registrar"

OUTAGES: list[Exception] = [
    # Seen in the field during a server restart: neither PostgresError nor InterfaceError.
    asyncpg.InternalClientError("cannot switch to state 12; another operation (2) is in progress"),
    asyncpg.ProtocolError("unexpected message"),
    asyncpg.TargetServerAttributeNotMatched("None of the hosts match the target attribute requirement"),
    asyncpg.OutdatedSchemaCacheError("type changed", schema="public", data_type="ledger_state", position="1"),
    asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
    asyncpg.CannotConnectNowError("the database system is starting up"),
    asyncpg.CannotConnectNowError("the database system is shutting down"),
    asyncpg.AdminShutdownError("terminating connection due to administrator command"),
    asyncpg.ConnectionFailureError("server closed the connection unexpectedly"),
    asyncpg.InterfaceError("connection is closed"),
    ConnectionResetError(104, "Connection reset by peer"),
    ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 5432)"),
    TimeoutError(),
]


def _name(error: BaseException) -> str:
    return type(error).__name__


async def _guarded(error: BaseException) -> BaseException:
    """What ``_guard`` raises for a call that raises ``error``."""

    async def call() -> None:
        raise error

    try:
        await PostgresLedger(DSN)._guard("claim", call)
    except BaseException as raised:  # CancelledError too: it must come out unchanged
        return raised
    raise AssertionError("_guard raised nothing")


@pytest.mark.parametrize("error", OUTAGES, ids=_name)
async def test_a_driver_error_is_a_ledger_error_caused_by_it(error: Exception) -> None:
    raised = await _guarded(error)

    assert isinstance(raised, LedgerError)
    assert str(raised) == f"postgres claim: {str(error) or _name(error)}"
    assert raised.__cause__ is error  # kept for the logs: nothing secret in it


@pytest.mark.parametrize("error_type", [type(e) for e in OUTAGES], ids=lambda t: t.__name__)
async def test_a_driver_error_showing_the_password_is_a_ledger_error_without_it(
    error_type: type[Exception],
) -> None:
    raised = await _guarded(error_type(f"cannot reach {DSN} (password {DECODED})"))

    assert isinstance(raised, LedgerError)
    assert "postgresql://registrar:***@db.internal:5432/registrar" in str(raised)
    shown = "".join(traceback.format_exception(raised))
    assert PASSWORD not in shown
    assert DECODED not in shown


@pytest.mark.parametrize(
    "error",
    [KeyError("no ledger record"), ValueError("a bug of ours"), asyncio.CancelledError()],
    ids=_name,
)
async def test_anything_else_is_raised_as_it_is(error: BaseException) -> None:
    """A bug must surface, not be retried forever as an outage; a cancellation must cancel."""
    assert await _guarded(error) is error
