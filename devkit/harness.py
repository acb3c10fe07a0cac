"""What the chaos run and the benchmarks share to run the service on one machine: a Kafka broker,
the Amili emulator and the service as processes of their own, the topics of a run, and reading back
what the service writes to them.

Both start the same things the same way, so that a figure of a benchmark and a verdict of a chaos
run are about the same service: ``python -m service run`` and ``python -m service emulator`` with an
environment cleaned of the caller's settings (``clean_environment``), the service's topics and
connection settings from one place (``service_env``), the emulator waited for until it answers,
topics created before anyone produces, and topics read from their beginning by a reader that
survives a broker outage (``TopicReader``). What each adds stays with it: the chaos run's kills,
broker outage and verdict (``devkit/chaos/``), the benchmarks' sampling and figures (``bench/``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from devkit.emulator.settings import DEMO_API_KEY
from devkit.localkafka import LocalKafka, LocalKafkaError, default_version, free_port
from devkit.produce import create_topics
from service.config import Settings

LOOPBACK = "127.0.0.1"
EMULATOR_START_SECONDS = 30.0
LEADER_ELECTION_SECONDS = 0.5


class HarnessError(Exception):
    """Something the run needs did not start (the emulator, a service process)."""


def clean_environment() -> dict[str, str]:
    """This process's environment without any of the service's or the emulator's settings, so
    nothing set in the caller's shell changes the run."""
    ours = {name.upper() for name in Settings.model_fields}
    return {
        name: value
        for name, value in os.environ.items()
        if name.upper() not in ours and not name.upper().startswith("AMILI_EMULATOR_")
    }


def service_command(*arguments: str) -> list[str]:
    """``amili-registrar ARGUMENTS`` as this interpreter runs it (``run``, ``emulator``)."""
    return [sys.executable, "-m", "service", *arguments]


class Child:
    """A process of the run, its output in a log file, in a session of its own: a Ctrl-C in the
    terminal reaches only the run, which stops its children in order."""

    def __init__(self, name: str, process: subprocess.Popen[bytes], log: Path) -> None:
        self.name = name
        self.process = process
        self.log = log

    @classmethod
    def start(
        cls,
        name: str,
        argv: Sequence[str],
        env: Mapping[str, str],
        log: Path,
        *,
        cwd: Path | None = None,
        append: bool = False,
    ) -> Child:
        """Start ``argv`` with exactly ``env``; its output goes to ``log`` (appended to with
        ``append``, as a replica's lives share one log)."""
        with log.open("ab" if append else "wb") as output:
            process = subprocess.Popen(
                list(argv),
                cwd=cwd,
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return cls(name, process, log)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.process.poll()

    async def stop(self, sig: int = signal.SIGTERM, grace_seconds: float = 30.0) -> None:
        """Stop it with ``sig``, then SIGKILL after ``grace_seconds``, and reap it."""
        if not self.running:
            return
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(sig)
        try:
            await asyncio.to_thread(self.process.wait, grace_seconds)
        except subprocess.TimeoutExpired:
            await self.kill()

    async def kill(self) -> None:
        """SIGKILL, as a crash would end it, and reap it."""
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()
        await asyncio.to_thread(self.process.wait)

    def tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


# the broker ---------------------------------------------------------------------------------------


def local_broker(name: str, version: str | None = None) -> LocalKafka:
    """A local broker of the run's own, on ports free now (``name`` keeps it apart from others)."""
    return LocalKafka(name=name, version=version or default_version(), port=0)


def remove_broker(kafka: LocalKafka) -> None:
    """Stop the broker and remove its data (the run's topics only)."""
    kafka.stop()
    shutil.rmtree(kafka.run_dir, ignore_errors=True)


@dataclass(frozen=True, slots=True)
class Broker:
    bootstrap: str
    kafka: LocalKafka | None
    """``None`` when the broker was given (``KAFKA_BOOTSTRAP_SERVERS``): not ours to measure or stop."""

    @property
    def pid(self) -> int | None:
        pid = (self.kafka.status() or {}).get("pid") if self.kafka is not None else None
        return pid if isinstance(pid, int) else None


@contextlib.asynccontextmanager
async def broker(name: str, given: str | None = None, *, version: str | None = None) -> AsyncIterator[Broker]:
    """The broker at ``given``, or (when none is given) a local one of ``version`` started here and
    removed at the end."""
    if given:
        yield Broker(given, None)
        return
    kafka = local_broker(name, version)
    bootstrap = await asyncio.to_thread(kafka.start)
    try:
        await coordinators_ready(bootstrap)
        yield Broker(bootstrap, kafka)
    finally:
        await asyncio.to_thread(remove_broker, kafka)


GROUP, TRANSACTION = 0, 1
"""FindCoordinator's kinds of coordinator."""


async def coordinators_ready(bootstrap: str, within_seconds: float = 30.0) -> None:
    """Wait until a fresh broker's group and transaction coordinators answer. Each comes with an
    internal topic the broker makes on the first question for it; a consumer or a transactional
    producer that asks first is told GroupCoordinatorNotAvailable and logs it as an error before
    asking again (a raw line in the demo's output)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        await admin.start()
        deadline = time.monotonic() + within_seconds
        for kind in (GROUP, TRANSACTION):
            while True:
                try:
                    await admin.find_coordinator("amili-registrar-readiness", kind)
                    break
                except KafkaError as error:
                    if time.monotonic() >= deadline:
                        which = "group" if kind == GROUP else "transaction"
                        raise LocalKafkaError(
                            f"the broker at {bootstrap} has no {which} coordinator after "
                            f"{within_seconds:g} s: {error}"
                        ) from error
                    await asyncio.sleep(0.1)
    finally:
        await admin.close()


# the emulator -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Emulator:
    url: str
    child: Child

    async def stop(self) -> None:
        await self.child.stop()


async def start_emulator(
    env: Mapping[str, str], log: Path, *, timeout_seconds: float = EMULATOR_START_SECONDS
) -> Emulator:
    """``amili-registrar emulator`` on a free loopback port, accepting the demo key, configured by
    ``env`` (``AMILI_EMULATOR_*``: latency, faults, capacity); returns once it answers."""
    port = free_port()
    child = Child.start(
        "emulator",
        service_command("emulator"),
        {
            **clean_environment(),
            "AMILI_EMULATOR_API_KEYS": DEMO_API_KEY,
            **env,
            "AMILI_EMULATOR_HOST": LOOPBACK,
            "AMILI_EMULATOR_PORT": str(port),
        },
        log,
    )
    emulator = Emulator(f"http://{LOOPBACK}:{port}", child)
    deadline = time.monotonic() + timeout_seconds
    async with httpx.AsyncClient(base_url=emulator.url, timeout=2.0) as http:
        while True:
            if not child.running:
                raise HarnessError(f"the emulator exited at start-up; see {log}:\n{child.tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if (await http.get("/_admin/faults")).status_code == 200:
                    return emulator
            if time.monotonic() > deadline:
                await child.stop()
                raise HarnessError(f"the emulator did not answer in time; see {log}")
            await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def emulator(env: Mapping[str, str], log: Path) -> AsyncIterator[Emulator]:
    """``start_emulator``, stopped at the end."""
    started = await start_emulator(env, log)
    try:
        yield started
    finally:
        await started.stop()


# topics and the service ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Topics:
    """The service's three topics and its consumer group, for one run."""

    inbound: str
    results: str
    dead_letters: str
    group: str

    def partitions(self, count: int) -> dict[str, int]:
        """Each topic's partitions: ``count`` for events and results, one for dead letters."""
        return {self.inbound: count, self.results: count, self.dead_letters: 1}


async def create_run_topics(bootstrap: str, topics: Topics, partitions: int) -> None:
    """Create the run's topics, then give the broker a moment to elect their leaders, so that the
    first produce and subscribe find them."""
    await create_topics(bootstrap, topics.partitions(partitions))
    await asyncio.sleep(LEADER_ELECTION_SECONDS)


def service_env(
    bootstrap: str,
    topics: Topics,
    amili_url: str,
    *,
    ledger_url: str,
    max_in_flight: int,
    tuning: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The environment of ``amili-registrar run`` for a run: the caller's settings left out, the
    run's broker, topics, emulator (with the demo key) and ledger, logging at WARNING on loopback,
    then ``tuning`` (each process adds its own ``HTTP_PORT``)."""
    return {
        **clean_environment(),
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "INVOICE_CREATED_TOPIC": topics.inbound,
        "REGISTRATION_RESULT_TOPIC": topics.results,
        "DEAD_LETTER_TOPIC": topics.dead_letters,
        "CONSUMER_GROUP_ID": topics.group,
        "AMILI_BASE_URL": amili_url,
        "AMILI_API_KEY": DEMO_API_KEY,
        "LEDGER_URL": ledger_url,
        "MAX_IN_FLIGHT": str(max_in_flight),
        "HTTP_HOST": LOOPBACK,
        "LOG_LEVEL": "WARNING",
        **(tuning or {}),
    }


# reading what the service writes ------------------------------------------------------------------


async def close_quietly(closing: Coroutine[Any, Any, Any], seconds: float) -> None:
    """Run ``closing`` (a Kafka client's stop) for up to ``seconds``, whatever it raises: aiokafka's
    consumer, stopped while a fetch waits out its backoff (the broker is away), re-raises that
    fetch's CancelledError, which must not pass for a cancellation of the caller."""
    task = asyncio.ensure_future(closing)
    await asyncio.wait({task}, timeout=seconds)
    if not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=1.0)
    if task.done() and not task.cancelled():
        task.exception()  # retrieved: not reported as never retrieved


class TopicReader:
    """Reads partitions from their beginning for the whole run, handing each record to ``take``.

    It assigns the partitions itself (no consumer group) and keeps the next offset of each, so that
    it can drop its consumer and make a new one where the old one stopped: after an error (the
    broker is away), and when asked (``reconnect``: the broker is back from an outage).
    ``read_committed``: only what committed transactions wrote, as a consumer of the service's
    transactional mode reads."""

    RETRY_SECONDS = 1.0
    CLOSE_SECONDS = 10.0
    MAX_RECORDS = 5000

    def __init__(
        self,
        bootstrap: str,
        partitions: Sequence[TopicPartition],
        take: Callable[[ConsumerRecord[Any, Any]], object],
        *,
        name: str = "topic-reader",
        read_committed: bool = False,
    ) -> None:
        self.errors = 0
        self._isolation = "read_committed" if read_committed else "read_uncommitted"
        self.reconnects = 0
        self._bootstrap = bootstrap
        self._partitions = list(partitions)
        self._take = take
        self._name = name
        self._next: dict[TopicPartition, int] = {}
        self._consumer: AIOKafkaConsumer | None = None
        self._reconnect = False
        self._task: asyncio.Task[None] | None = None
        self._batch = asyncio.Event()

    async def start(self) -> None:
        await self._connect()
        self._task = asyncio.create_task(self._run(), name=self._name)

    def reconnect(self) -> None:
        """Read on with a new consumer (from where the old one stopped)."""
        self._reconnect = True

    async def next_batch(self, wait_seconds: float) -> None:
        """Wait until more records were read (or ``wait_seconds`` passed)."""
        self._batch.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._batch.wait(), wait_seconds)

    def caught_up(self, ends: Mapping[TopicPartition, int]) -> bool:
        """Whether everything up to ``ends`` (partition → end offset) of its partitions was read."""
        return all(
            self._next.get(partition, 0) >= end
            for partition, end in ends.items()
            if partition in self._partitions
        )

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._disconnect()

    async def _connect(self) -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self._bootstrap,
            group_id=None,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            isolation_level=self._isolation,
        )
        await consumer.start()
        self._consumer = consumer
        consumer.assign(self._partitions)
        for partition in self._partitions:
            if partition in self._next:
                consumer.seek(partition, self._next[partition])
            else:
                await consumer.seek_to_beginning(partition)

    async def _disconnect(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await close_quietly(consumer.stop(), self.CLOSE_SECONDS)

    async def _run(self) -> None:
        while True:  # until stopped (cancelled) at the end of the run
            try:
                if self._reconnect or self._consumer is None:
                    self._reconnect = False
                    await self._disconnect()
                    self.reconnects += 1
                    await self._connect()
                assert self._consumer is not None
                batches = await self._consumer.getmany(timeout_ms=200, max_records=self.MAX_RECORDS)
            except asyncio.CancelledError:
                raise
            except Exception:  # the broker is away, or the consumer broke: a new one, a little later
                self.errors += 1
                await self._disconnect()
                await asyncio.sleep(self.RETRY_SECONDS)
                continue
            for partition, records in batches.items():
                for record in records:
                    self._take(record)
                    self._next[partition] = record.offset + 1
            if self._isolation == "read_committed":
                # Transactions leave commit markers no record shows: the position passes them.
                with contextlib.suppress(Exception):
                    for partition in self._partitions:
                        self._next[partition] = await self._consumer.position(partition)
            if batches:
                self._batch.set()
