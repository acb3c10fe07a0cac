"""A ledger from a URL (SQLAlchemy's spelling for SQLite, libpq's URI for PostgreSQL).

- ``sqlite:///ledger.db``, ``sqlite:///data/ledger.db``: a file relative to the working directory
  (three slashes, then the relative path);
- ``sqlite:////var/lib/registrar/ledger.db``: an absolute path (four slashes);
- ``sqlite://`` or ``sqlite:///:memory:``: in memory, private to the ledger, gone when it closes;
- ``postgresql://user:password@host:5432/database`` (or ``postgres://``): PostgreSQL, with
  whatever libpq URI options asyncpg understands (``?sslmode=require``...), passed on verbatim.
"""

from __future__ import annotations

from urllib.parse import unquote

from service.ledger.base import Ledger
from service.ledger.postgres import PostgresLedger
from service.ledger.sqlite import SqliteLedger

_SQLITE = "sqlite://"


def open_ledger(url: str) -> Ledger:
    """The ledger ``url`` names, not yet opened (``await ledger.open()`` connects and migrates)."""
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresLedger(url)
    if url.startswith(_SQLITE):
        rest = url.removeprefix(_SQLITE)
        if rest in ("", "/:memory:"):
            return SqliteLedger(":memory:")
        if rest.startswith("/") and len(rest) > 1 and "?" not in rest:
            return SqliteLedger(unquote(rest[1:]))
    scheme = url.split(":", 1)[0] if ":" in url else ""
    # Never echo the URL itself: it may hold a password.
    raise ValueError(
        f"unsupported ledger URL (scheme {scheme!r}); expected sqlite:///relative.db, "
        "sqlite:////absolute.db, sqlite:// (memory) or postgresql://user:password@host:port/database"
    )
