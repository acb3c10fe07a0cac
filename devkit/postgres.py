"""A scratch PostgreSQL database for one run (the chaos run's and the benchmarks' shared ledger).

On a server given by an admin DSN, else on a local cluster of ``scripts/postgres.sh``, started for
the run and stopped afterwards unless it was running already. The database is made fresh and
dropped at the end, whatever happened meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from devkit.localkafka import free_port, project_root


class PostgresUnavailable(Exception):
    """No server to be had, or no database could be made on it (the message says which)."""


def _postgres_sh(*arguments: str) -> list[str]:
    return ["bash", str(project_root() / "scripts" / "postgres.sh"), *arguments]


@contextlib.asynccontextmanager
async def scratch_database(
    prefix: str, *, admin_dsn: str | None, cluster: Path, say: Callable[[str], object]
) -> AsyncIterator[str]:
    """The DSN of a fresh database named ``prefix_…``: on ``admin_dsn``, else on the local cluster
    in ``cluster`` (``say`` tells when it is started)."""
    try:
        import asyncpg
    except ImportError as missing:
        raise PostgresUnavailable(f"asyncpg: {missing}") from None
    admin = admin_dsn
    stop_cluster = False
    if admin is None:
        say(f"starting a local PostgreSQL in {cluster} (scripts/postgres.sh)")
        status = await asyncio.to_thread(
            subprocess.run, _postgres_sh("status", str(cluster)), capture_output=True, check=False
        )
        started = await asyncio.to_thread(
            subprocess.run,
            _postgres_sh("start", str(cluster), str(free_port())),
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if started.returncode != 0 or not started.stdout.strip():
            raise PostgresUnavailable(f"scripts/postgres.sh start: {started.stderr.strip()[-300:]}")
        admin = started.stdout.strip().splitlines()[-1]
        stop_cluster = status.returncode != 0
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    try:
        try:
            connection = await asyncpg.connect(admin)
            try:
                await connection.execute(f'CREATE DATABASE "{name}"')
            finally:
                await connection.close()
        except (OSError, asyncpg.PostgresError) as failed:
            raise PostgresUnavailable(f"cannot create a database: {failed}") from None
        base = admin.partition("?")[0].rpartition("/")[0]
        try:
            yield f"{base}/{name}"
        finally:
            with contextlib.suppress(Exception):
                connection = await asyncpg.connect(admin)
                try:
                    await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                finally:
                    await connection.close()
    finally:
        if stop_cluster:
            await asyncio.to_thread(
                subprocess.run, _postgres_sh("stop", str(cluster)), capture_output=True, check=False
            )
