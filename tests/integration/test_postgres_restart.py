"""PostgreSQL restarting under load: the ledger reports the outage as ``LedgerError`` only, and recovers
by itself once the server is back.

The server restarted here is a cluster of this test's own (``scripts/postgres.sh`` in a folder of its
own, on a port of its own), not the session's shared ``postgres_dsn`` one: every test session of this
checkout shares that cluster (``tests/fixtures/ledger.py`` derives its folder from the checkout's path), so
restarting it would break whatever another session is running on it at that moment; and a server given by
``$LEDGER_POSTGRES_DSN`` is not ours to restart at all. A private cluster starts in about a second.
"""

from __future__ import annotations

import asyncio
import itertools
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from devkit.localkafka import free_port
from service.domain.outcomes import Outcome
from service.ledger import ClaimStatus, Ledger, LedgerError
from service.ledger.postgres import PostgresLedger
from tests.ci import skip_or_fail
from tests.fixtures.ledger import SCRIPT, SCRIPT_TIMEOUT, opened

CREDITOR = "5561234567"
OWNER = "replica-a"
LEASE = timedelta(minutes=2)
WORKERS = 8
RESTARTS = 3
# Long enough for the workers to hit the refused port, and (up) to run on the fresh server before the
# next restart, so that connections made after a restart are broken by the next one too.
DOWN_SECONDS = 0.3
UP_SECONDS = 0.5
PAUSE_SECONDS = 0.01  # a retry's backoff: without it a worker spins on the refused port
RECOVERY_SECONDS = 30.0


@dataclass(frozen=True)
class Cluster:
    folder: Path
    port: int
    dsn: str


def _postgres_sh(*arguments: str | Path | int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT), *map(str, arguments)],
        capture_output=True,
        text=True,
        timeout=SCRIPT_TIMEOUT,
        check=False,
    )


def _start(cluster: Cluster) -> None:
    """Start the cluster unless it runs; when this returns, it accepts connections (``pg_ctl -w``,
    then the script's own ``psql``). Not on another port: the ledger's DSN names this one."""
    started = _postgres_sh("start", cluster.folder, cluster.port)
    assert started.returncode == 0, f"{SCRIPT.name} start failed: {started.stderr.strip()}"
    assert started.stdout.strip().splitlines()[-1] == cluster.dsn, started.stdout


def _stop(cluster: Cluster) -> None:
    stopped = _postgres_sh("stop", cluster.folder)
    assert stopped.returncode == 0, f"{SCRIPT.name} stop failed: {stopped.stderr.strip()}"


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    """A running PostgreSQL cluster private to the test, removed afterwards."""
    # In the system temporary folder (mkdtemp's default), which the `postgres` user may traverse; the
    # script hands the folder itself to that user.
    folder = Path(tempfile.mkdtemp(prefix="amili-registrar-restart-"))
    try:
        port = free_port()
        try:
            started = _postgres_sh("start", folder, port)
        except (OSError, subprocess.TimeoutExpired) as exc:
            skip_or_fail(f"no PostgreSQL cluster of its own: {SCRIPT.name} could not run: {exc}")
        if started.returncode != 0 or not started.stdout.strip():
            detail = started.stderr.strip().splitlines()[-1:] or [f"exit status {started.returncode}"]
            skip_or_fail(f"no PostgreSQL cluster of its own: {SCRIPT.name} start failed: {detail[0]}")
        yield Cluster(folder, port, started.stdout.strip().splitlines()[-1])
    finally:
        _postgres_sh("stop", folder)
        shutil.rmtree(folder, ignore_errors=True)


async def _lifecycle(ledger: Ledger, number: str) -> None:
    """One invoice through every operation of the ledger, the way the service uses them."""
    now = datetime.now(UTC)
    invoice = {"creditor": CREDITOR, "invoice_number": number}
    await ledger.claim(
        **invoice, fingerprint="fp-1", event_id=f"event-{number}", owner=OWNER, now=now, lease=LEASE
    )
    await ledger.renew(**invoice, owner=OWNER, now=now)
    await ledger.release(**invoice, owner=OWNER, now=now)
    await ledger.claim(
        **invoice, fingerprint="fp-1", event_id=f"event-{number}", owner=OWNER, now=now, lease=LEASE
    )
    await ledger.finish(**invoice, outcome=Outcome.REGISTERED, result={"outcome": "registered"}, now=now)
    await ledger.unpublished(limit=10)
    await ledger.mark_published(**invoice, now=now)
    await ledger.get(**invoice)
    await ledger.ping()


@dataclass
class Seen:
    """What the ledger did under load: finished lifecycles, and every exception a call raised."""

    lifecycles: int = 0
    outages: list[LedgerError] = field(default_factory=list)
    escaped: list[Exception] = field(default_factory=list)

    def describe_escaped(self) -> str:
        return "; ".join(f"{type(e).__module__}.{type(e).__qualname__}: {e}" for e in self.escaped)


async def _load(ledger: Ledger, name: str, stop: asyncio.Event, seen: Seen) -> None:
    """Lifecycles until ``stop``, each on a fresh invoice (so a failed one leaves nothing to trip over)."""
    for n in itertools.count():
        if stop.is_set():
            return
        try:
            await _lifecycle(ledger, f"{name}-{n}")
            seen.lifecycles += 1
        except LedgerError as error:
            seen.outages.append(error)
            await asyncio.sleep(PAUSE_SECONDS)
        except Exception as error:  # the bug under test: anything else counts against an event
            seen.escaped.append(error)
            await asyncio.sleep(PAUSE_SECONDS)


async def _answers(ledger: Ledger, seen: Seen) -> None:
    """Wait for the ledger to answer again; what it raises meanwhile is kept like the load's."""
    deadline = time.monotonic() + RECOVERY_SECONDS
    while True:
        try:
            await ledger.ping()
            return
        except LedgerError as error:
            seen.outages.append(error)
        except Exception as error:
            seen.escaped.append(error)
        assert time.monotonic() < deadline, f"the ledger did not answer within {RECOVERY_SECONDS} s"
        await asyncio.sleep(0.1)


async def test_a_postgres_restart_under_load_raises_only_ledger_errors_and_the_ledger_recovers(
    cluster: Cluster,
) -> None:
    seen = Seen()
    stop = asyncio.Event()
    ledger = PostgresLedger(
        cluster.dsn, min_size=2, max_size=WORKERS, connect_timeout=2.0, command_timeout=5.0
    )
    async with opened(ledger):
        workers = [asyncio.create_task(_load(ledger, f"w{i}", stop, seen)) for i in range(WORKERS)]
        try:
            await asyncio.sleep(UP_SECONDS)
            before = seen.lifecycles
            for _ in range(RESTARTS):
                # In a thread: the load must go on while the server stops and starts.
                await asyncio.to_thread(_stop, cluster)
                await asyncio.sleep(DOWN_SECONDS)
                await asyncio.to_thread(_start, cluster)
                await asyncio.sleep(UP_SECONDS)
        finally:
            stop.set()
            await asyncio.gather(*workers)
            # The ledger closes on a server that is up, whatever failed above.
            await asyncio.to_thread(_start, cluster)

        assert not seen.escaped, f"not LedgerError during the restarts: {seen.describe_escaped()}"
        assert seen.outages, "no ledger call failed: the restarts never reached the ledger"
        assert seen.lifecycles > before, "no invoice went through after the first restart"

        # Back without being reopened: the same ledger, every operation, on several pool connections.
        await _answers(ledger, seen)
        numbers = [f"after-{i}" for i in range(WORKERS)]
        await asyncio.gather(*(_lifecycle(ledger, number) for number in numbers))
        for number in numbers:
            entry = await ledger.get(creditor=CREDITOR, invoice_number=number)
            assert entry is not None
            assert (entry.outcome, entry.result_published, entry.attempts) == (Outcome.REGISTERED, True, 3)
        again = await ledger.claim(
            creditor=CREDITOR,
            invoice_number=numbers[0],
            fingerprint="fp-1",
            event_id="event-replayed",
            owner="replica-b",
            now=datetime.now(UTC),
            lease=LEASE,
        )
        assert again.status is ClaimStatus.FINAL
        assert not seen.escaped, f"not LedgerError while recovering: {seen.describe_escaped()}"
