"""The chaos run: many invoices through the real service while it is killed and Amili misbehaves.

``amili-registrar chaos`` sends N invoice-created events (5% of them sent again, 1% poison) to a
real Kafka broker, runs the service as a subprocess and kills it with SIGKILL at random moments
(restarting it at once), while the Amili emulator, also a subprocess, answers 5% of requests with
a 5xx (half of them after storing the registration), holds 2% back after storing them (past the
service's timeout, or dropping the connection halfway) and throttles 1% with 429. When every
invoice has its result it stops killing, lets the service finish, and checks the outcome against
Amili's records and the topics: one registration per invoice, a result for every invoice, a dead
letter for every poison event and for nothing else. It prints a table and returns 1 if a check
failed.

Each life of the service lasts a random time (``kill_every_min``..``kill_every_max`` s) counted
from its first sign of work (a result or a dead letter), so that every life does some: a
SIGKILLed consumer stays in its group until its session times out (10 s), and the next one is only
given partitions then.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from rich.console import Console
from rich.table import Table

from service.config import DEMO_ACCOUNT, DEMO_API_KEY, DEMO_CREDITOR, Settings
from service.devtools.produce import create_topics, encode, event_key
from service.domain.invoice import Invoice
from service.domain.outcomes import Rejection
from service.domain.transform import TransformDefaults, to_registration
from service.events.cloudevents import JSON_CONTENT_TYPE, STRUCTURED_CONTENT_TYPE
from service.events.contract import INVOICE_CREATED_TYPE
from service.localkafka import LocalKafka, default_version, free_port, project_root

Headers = list[tuple[str, bytes]]
Kind = Literal["invoice", "duplicate", "poison"]

SOURCE = "urn:amili-registrar:chaos"
REGISTERED = "registered"
REJECTED = "rejected"

# What the emulator injects: 5% 5xx (half of them after the registration was stored), 2% stored and
# never answered in time (HANG_SECONDS beyond the service's total timeout), 1% 429.
EMULATOR_FAULTS: dict[str, str] = {
    "AMILI_EMULATOR_ERROR_500_RATE": "0.02",
    "AMILI_EMULATOR_ERROR_502_RATE": "0.015",
    "AMILI_EMULATOR_ERROR_503_RATE": "0.015",
    "AMILI_EMULATOR_ERROR_AFTER_STORE_RATIO": "0.5",
    "AMILI_EMULATOR_HANG_RATE": "0.02",
    "AMILI_EMULATOR_HANG_MODE": "sleep",
    "AMILI_EMULATOR_HANG_SECONDS": "3",
    "AMILI_EMULATOR_THROTTLE_RATE": "0.01",
    "AMILI_EMULATOR_RETRY_AFTER_SECONDS": "1",
    "AMILI_EMULATOR_LATENCY_MEDIAN_MS": "5",
    "AMILI_EMULATOR_LATENCY_P99_MS": "100",
}
# The service, tuned for a run that should take minutes: short Amili timeouts (below the hang), short
# backoff, and a claim lease that lets the next life take over a killed life's claims soon.
SERVICE_TUNING: dict[str, str] = {
    "AMILI_CONNECT_TIMEOUT_SECONDS": "1",
    "AMILI_READ_TIMEOUT_SECONDS": "2",
    "AMILI_TOTAL_TIMEOUT_SECONDS": "2",
    "RETRY_INITIAL_SECONDS": "0.1",
    "RETRY_MAX_SECONDS": "2",
    "SHUTDOWN_GRACE_SECONDS": "2",
    "CLAIM_LEASE_SECONDS": "10",
    "CIRCUIT_OPEN_SECONDS": "1",
    "LOG_LEVEL": "WARNING",
    "HTTP_HOST": "127.0.0.1",
}
POISON_KINDS = ("json", "empty", "content_type", "cloudevents", "type", "data_schema")
STALL_SECONDS = 90.0  # a life that shows no work for this long is reported, then killed anyway
SETTLE_SECONDS = 60.0  # after the last result: how long the service may take to commit everything
PROCESS_START_SECONDS = 30.0


class ChaosError(Exception):
    """The run could not be set up (no broker, the emulator did not start, ...)."""


@dataclass(frozen=True, slots=True)
class ChaosOptions:
    invoices: int = 2000
    duplicate_share: float = 0.05
    poison_share: float = 0.01
    binary_share: float = 0.2
    kill_every_min: float = 2.0
    kill_every_max: float = 6.0
    seed: int = 1
    ledger: Literal["sqlite", "postgres"] = "sqlite"
    postgres_dsn: str | None = None
    kafka_bootstrap: str | None = None
    timeout_seconds: float = 1800.0
    rate: float = 250.0
    partitions: int = 3
    max_in_flight: int = 64
    workdir: Path | None = None


# --------------------------------------------------------------------------- the events


@dataclass(frozen=True, slots=True)
class OutboundEvent:
    value: bytes | None
    key: bytes | None
    headers: Headers
    kind: Kind
    invoice: str | None = None  # "creditor/invoice_number" of the invoice it carries
    rule: str | None = None  # for poison: what is wrong with it


@dataclass(frozen=True, slots=True)
class Plan:
    events: list[OutboundEvent]
    registrable: frozenset[str]
    rejectable: frozenset[str]  # refused by the business rules: a rejected result, no registration
    duplicates_same_id: int
    duplicates_new_id: int

    @property
    def invoices(self) -> frozenset[str]:
        return self.registrable | self.rejectable

    @property
    def poison(self) -> int:
        return sum(1 for event in self.events if event.kind == "poison")


@dataclass(frozen=True, slots=True)
class Template:
    event: dict[str, Any]  # a sample invoice-created CloudEvent
    registrable: bool

    @property
    def data(self) -> dict[str, Any]:
        data: dict[str, Any] = self.event["data"]
        return data


def sample_templates() -> list[Template]:
    """The shipped sample events, each marked registrable or not by the service's own rules."""
    from service.devtools.demo import sample_events_path

    templates = []
    for line in sample_events_path().read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        event = json.loads(line)
        data = event["data"]
        data.setdefault("account", DEMO_ACCOUNT)
        data.setdefault("creditor", DEMO_CREDITOR)
        outcome = to_registration(Invoice.model_validate(data), TransformDefaults())
        templates.append(Template(event=event, registrable=not isinstance(outcome, Rejection)))
    return templates


def plan_events(
    invoices: int,
    *,
    seed: int,
    run_tag: str,
    templates: Sequence[Template],
    duplicate_share: float = 0.05,
    poison_share: float = 0.01,
    binary_share: float = 0.2,
) -> Plan:
    """``invoices`` invoice-created events with unique invoice numbers, plus re-sends of earlier
    events (half byte for byte, half under a new event id) and poison events, in a seeded order."""
    rng = random.Random(seed)
    duplicates = round(invoices * duplicate_share)
    poison = round(invoices * poison_share)
    total = invoices + duplicates + poison
    extra_slots = rng.sample(range(1, total), duplicates + poison) if invoices else []
    duplicate_slots = set(extra_slots[:duplicates])
    poison_slots = set(extra_slots[duplicates:])

    events: list[OutboundEvent] = []
    sent: list[tuple[dict[str, Any], OutboundEvent]] = []
    registrable: set[str] = set()
    rejectable: set[str] = set()
    same_id = new_id = poisoned = 0
    for slot in range(total):
        if slot in duplicate_slots:
            envelope, original = rng.choice(sent)
            if (same_id + new_id) % 2 == 0:
                events.append(
                    OutboundEvent(
                        original.value, original.key, original.headers, "duplicate", original.invoice
                    )
                )
                same_id += 1
            else:
                again = {**envelope, "id": _event_id(rng), "time": _now()}
                events.append(_invoice_event(again, "duplicate", binary=rng.random() < binary_share))
                new_id += 1
        elif slot in poison_slots:
            events.append(_poison_event(POISON_KINDS[poisoned % len(POISON_KINDS)], rng, run_tag, slot))
            poisoned += 1
        else:
            template = rng.choice(templates)
            data = copy.deepcopy(template.data)
            data["invoice_number"] = f"CHAOS-{run_tag}-{len(sent) + 1:06d}"
            envelope = {**_envelope(rng), "subject": data["invoice_number"], "data": data}
            event = _invoice_event(envelope, "invoice", binary=rng.random() < binary_share)
            assert event.invoice is not None
            (registrable if template.registrable else rejectable).add(event.invoice)
            sent.append((envelope, event))
            events.append(event)
    return Plan(events, frozenset(registrable), frozenset(rejectable), same_id, new_id)


def _event_id(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _envelope(rng: random.Random) -> dict[str, Any]:
    """The attributes of a new invoice-created CloudEvent, without subject and data."""
    return {
        "specversion": "1.0",
        "id": _event_id(rng),
        "source": SOURCE,
        "type": INVOICE_CREATED_TYPE,
        "time": _now(),
        "datacontenttype": JSON_CONTENT_TYPE,
    }


def _invoice_event(envelope: dict[str, Any], kind: Kind, *, binary: bool) -> OutboundEvent:
    value, headers = encode(envelope, binary=binary)
    key = event_key(envelope)
    return OutboundEvent(value, key, headers, kind, key.decode() if key else None)


def _poison_event(rule: str, rng: random.Random, run_tag: str, slot: int) -> OutboundEvent:
    structured: Headers = [("content-type", STRUCTURED_CONTENT_TYPE.encode())]
    # Some keyed, some not; a record with neither key nor value cannot be sent.
    key = f"poison-{slot}".encode() if rule == "empty" or rng.random() < 0.5 else None
    envelope = _envelope(rng)
    # Poison that carries an invoice carries one no other event has: were it registered, it shows.
    invoice = {
        "invoice_number": f"POISON-{run_tag}-{slot:06d}",
        "account": DEMO_ACCOUNT,
        "creditor": DEMO_CREDITOR,
        "issue_date": "2026-11-20",
        "due_date": "2026-12-20",
        "customer": {"type": "person", "name": "Poison Test", "id_number": "811218-9876"},
        "lines": [{"description": "x", "total_excluding_vat": 100.0, "vat_rate": 25}],
    }
    value: bytes | None
    if rule == "json":
        value = b'{"specversion": "1.0", "id": "cut-short'
    elif rule == "empty":
        value = None
    elif rule == "content_type":
        value, structured = (
            json.dumps({**envelope, "data": invoice}).encode(),
            [("content-type", b"text/csv")],
        )
    elif rule == "cloudevents":
        value = json.dumps({**envelope, "specversion": "0.3", "time": None, "data": invoice}).encode()
    elif rule == "type":
        value = json.dumps({**envelope, "type": "billing.invoice.deleted.v1", "data": invoice}).encode()
    else:  # data_schema
        value = json.dumps({**envelope, "data": {**invoice, "lines": "none", "due_date": "soon"}}).encode()
    return OutboundEvent(value, key, structured, "poison", rule=rule)


# --------------------------------------------------------------------------- watching the topics


@dataclass
class Observed:
    """What came out of the service, as read from its topics."""

    results: dict[str, list[tuple[str, str | None]]] = field(default_factory=dict)  # key → (outcome, case)
    result_records: int = 0
    dead_letter_sources: Counter[tuple[int, int]] = field(default_factory=Counter)  # (partition, offset)
    dead_letter_rules: Counter[str] = field(default_factory=Counter)
    dead_letter_records: int = 0
    activity: int = 0  # records seen on either topic

    def add_result(self, value: bytes | None) -> None:
        self.result_records += 1
        self.activity += 1
        try:
            data = json.loads(value or b"")["data"]
            key = f"{data['creditor']}/{data['invoice_number']}"
            case = (data.get("amili") or {}).get("_case")
            self.results.setdefault(key, []).append((str(data["outcome"]), case))
        except (ValueError, KeyError, TypeError):
            self.results.setdefault("<unreadable>", []).append(("unreadable", None))

    def add_dead_letter(self, headers: Iterable[tuple[str, bytes]], inbound_topic: str) -> None:
        self.dead_letter_records += 1
        self.activity += 1
        found = {name: value.decode("utf-8", "replace") for name, value in headers if name.startswith("dlq.")}
        self.dead_letter_rules[found.get("dlq.rule", "?")] += 1
        if found.get("dlq.topic") == inbound_topic:
            self.dead_letter_sources[(int(found["dlq.partition"]), int(found["dlq.offset"]))] += 1
        else:
            self.dead_letter_sources[(-1, self.dead_letter_records)] += 1


class TopicWatcher:
    """Reads the result and dead-letter topics from the start, for the whole run."""

    def __init__(self, bootstrap: str, topics: Topics) -> None:
        self.observed = Observed()
        self._topics = topics
        self._consumer = AIOKafkaConsumer(
            topics.results,
            topics.dead_letters,
            bootstrap_servers=bootstrap,
            group_id=None,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        self._task: asyncio.Task[None] | None = None
        self._batch = asyncio.Event()

    async def next_batch(self, wait_seconds: float) -> None:
        """Wait until more records were read (or ``wait_seconds`` passed)."""
        self._batch.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._batch.wait(), wait_seconds)

    async def start(self) -> None:
        await self._consumer.start()
        self._task = asyncio.create_task(self._run(), name="chaos-topic-watcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._consumer.stop()

    async def _run(self) -> None:
        while True:
            batches = await self._consumer.getmany(timeout_ms=200)
            for partition, records in batches.items():
                for record in records:
                    if partition.topic == self._topics.results:
                        self.observed.add_result(record.value)
                    else:
                        self.observed.add_dead_letter(record.headers, self._topics.inbound)
            if batches:
                self._batch.set()

    async def caught_up(self, ends: dict[Any, int]) -> bool:
        """Whether everything up to ``ends`` (partition → end offset) has been read."""
        for partition, end in ends.items():
            if partition.topic in (self._topics.results, self._topics.dead_letters):
                with contextlib.suppress(Exception):
                    if await self._consumer.position(partition) < end:
                        return False
        return True


@dataclass(frozen=True, slots=True)
class Topics:
    inbound: str
    results: str
    dead_letters: str
    group: str

    @classmethod
    def for_run(cls, tag: str) -> Topics:
        return cls(
            inbound=f"chaos-{tag}.invoice-created",
            results=f"chaos-{tag}.registration-result",
            dead_letters=f"chaos-{tag}.invoice-created.dead-letter",
            group=f"amili-registrar-chaos-{tag}",
        )


# --------------------------------------------------------------------------- processes


def clean_environment() -> dict[str, str]:
    """This process's environment without any of the service's or the emulator's settings, so
    nothing set in the caller's shell changes the run."""
    ours = {name.upper() for name in Settings.model_fields}
    return {
        name: value
        for name, value in os.environ.items()
        if name.upper() not in ours and not name.upper().startswith("AMILI_EMULATOR_")
    }


def _spawn(arguments: list[str], env: dict[str, str], log_file: Path) -> subprocess.Popen[bytes]:
    with log_file.open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "service", *arguments],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C in the terminal reaches only the chaos run
        )


def _end(process: subprocess.Popen[bytes] | None, *, grace: float = 10.0) -> None:
    """Stop ``process`` (SIGTERM, then SIGKILL) and reap it."""
    if process is None or process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


@contextlib.asynccontextmanager
async def _postgres_ledger(admin_dsn: str | None, console: Console) -> AsyncIterator[str]:
    """A LEDGER_URL of a fresh PostgreSQL database, dropped afterwards. Without ``admin_dsn`` a local
    cluster is started with ``scripts/postgres.sh`` (and stopped afterwards if it was not running)."""
    import asyncpg

    script = project_root() / "scripts" / "postgres.sh"
    cluster = project_root() / ".cache" / "postgres"
    stop_cluster = False
    if admin_dsn is None:
        console.print("Starting a local PostgreSQL (scripts/postgres.sh)…")
        status = await asyncio.to_thread(
            subprocess.run, ["bash", str(script), "status", str(cluster)], capture_output=True, check=False
        )
        started = await asyncio.to_thread(
            subprocess.run,
            ["bash", str(script), "start", str(cluster), str(free_port())],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if started.returncode != 0 or not started.stdout.strip():
            raise ChaosError(f"scripts/postgres.sh start failed: {started.stderr.strip()[-300:]}")
        admin_dsn = started.stdout.strip().splitlines()[-1]
        stop_cluster = status.returncode != 0
    name = f"chaos_{uuid.uuid4().hex[:12]}"
    connection = await asyncpg.connect(admin_dsn)
    try:
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()
    base, _, _ = admin_dsn.partition("?")[0].rpartition("/")
    try:
        yield f"{base}/{name}"
    finally:
        with contextlib.suppress(Exception):
            connection = await asyncpg.connect(admin_dsn)
            try:
                await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            finally:
                await connection.close()
        if stop_cluster:
            await asyncio.to_thread(
                subprocess.run, ["bash", str(script), "stop", str(cluster)], capture_output=True, check=False
            )


# --------------------------------------------------------------------------- the run


@dataclass
class RunStats:
    lives: int = 0
    unexpected_exits: int = 0
    stalls: int = 0
    events_sent: int = 0
    invoices_sent: int = 0
    produced_seconds: float = 0.0
    all_in_seconds: float | None = None
    settle_seconds: float = 0.0
    total_seconds: float = 0.0
    unconsumed: int | None = None
    life_seconds: list[float] = field(default_factory=list)  # of each life ended by a kill

    @property
    def kills(self) -> int:
        return len(self.life_seconds)


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    expected: str
    actual: str
    passed: bool | None  # None: for information
    detail: str = ""


class ChaosRun:
    def __init__(self, options: ChaosOptions, console: Console) -> None:
        self.options = options
        self.console = console
        self.tag = f"{options.seed}-{uuid.uuid4().hex[:6]}"
        self.topics = Topics.for_run(self.tag)
        self.stats = RunStats()
        self.kill_rng = random.Random(options.seed + 1)
        self.workdir = options.workdir or Path(tempfile.mkdtemp(prefix=f"amili-chaos-{self.tag}-"))
        self.workdir = self.workdir.resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.store_path = self.workdir / "amili-registrations.jsonl"
        self.service_log = self.workdir / "service.log"
        self.emulator_log = self.workdir / "emulator.log"
        self.service: subprocess.Popen[bytes] | None = None
        self.emulator: subprocess.Popen[bytes] | None = None
        self.emulator_url = ""
        self.poison_sources: dict[tuple[int, int], str] = {}
        self._t0 = time.monotonic()
        self._all_in = asyncio.Event()
        self._producing_done = False

    def elapsed(self) -> float:
        return time.monotonic() - self._t0

    def say(self, message: str) -> None:
        self.console.print(f"[dim][{self.elapsed():7.1f}s][/] {message}", highlight=False)

    # set-up ---------------------------------------------------------------------------------

    def _partitions(self) -> dict[str, int]:
        """The run's topics and their numbers of partitions."""
        return {
            self.topics.inbound: self.options.partitions,
            self.topics.results: self.options.partitions,
            self.topics.dead_letters: 1,
        }

    async def _start_emulator(self) -> None:
        port = free_port()
        env = {
            **clean_environment(),
            **EMULATOR_FAULTS,
            "AMILI_EMULATOR_HOST": "127.0.0.1",
            "AMILI_EMULATOR_PORT": str(port),
            "AMILI_EMULATOR_API_KEYS": DEMO_API_KEY,
            "AMILI_EMULATOR_STORE_PATH": str(self.store_path),
            "AMILI_EMULATOR_FAULT_SEED": str(self.options.seed),
        }
        self.emulator = _spawn(["emulator"], env, self.emulator_log)
        self.emulator_url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + PROCESS_START_SECONDS
        async with httpx.AsyncClient(base_url=self.emulator_url, timeout=2.0) as http:
            while True:
                if self.emulator.poll() is not None:
                    raise ChaosError(f"the emulator exited at start-up; see {self.emulator_log}")
                with contextlib.suppress(httpx.HTTPError):
                    if (await http.get("/_admin/faults")).status_code == 200:
                        return
                if time.monotonic() > deadline:
                    raise ChaosError(f"the emulator did not answer in time; see {self.emulator_log}")
                await asyncio.sleep(0.1)

    def _service_env(self, bootstrap: str, ledger_url: str) -> dict[str, str]:
        return {
            **clean_environment(),
            **SERVICE_TUNING,
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "INVOICE_CREATED_TOPIC": self.topics.inbound,
            "REGISTRATION_RESULT_TOPIC": self.topics.results,
            "DEAD_LETTER_TOPIC": self.topics.dead_letters,
            "CONSUMER_GROUP_ID": self.topics.group,
            "AMILI_BASE_URL": self.emulator_url,
            "AMILI_API_KEY": DEMO_API_KEY,
            "LEDGER_URL": ledger_url,
            "MAX_IN_FLIGHT": str(self.options.max_in_flight),
        }

    def _start_service(self, env: dict[str, str]) -> subprocess.Popen[bytes]:
        self.stats.lives += 1
        with self.service_log.open("a", encoding="utf-8") as log:
            log.write(f"----- chaos: life {self.stats.lives} starts at {self.elapsed():.1f}s\n")
        self.service = _spawn(["run"], {**env, "HTTP_PORT": str(free_port())}, self.service_log)
        return self.service

    # the phases -------------------------------------------------------------------------------

    async def _produce(self, bootstrap: str, plan: Plan) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
        await producer.start()
        try:
            started = time.monotonic()
            chunk = max(1, round(self.options.rate / 10)) if self.options.rate > 0 else 500
            for index in range(0, len(plan.events), chunk):
                batch = plan.events[index : index + chunk]
                futures = [
                    await producer.send(self.topics.inbound, value=e.value, key=e.key, headers=e.headers)
                    for e in batch
                ]
                for event, future in zip(batch, futures, strict=True):
                    metadata = await future
                    if event.kind == "poison":
                        self.poison_sources[(metadata.partition, metadata.offset)] = event.rule or "?"
                self.stats.events_sent += len(batch)
                self.stats.invoices_sent += sum(1 for event in batch if event.kind == "invoice")
                if self.options.rate > 0:
                    ahead = started + self.stats.events_sent / self.options.rate - time.monotonic()
                    if ahead > 0:
                        await asyncio.sleep(ahead)
            self.stats.produced_seconds = time.monotonic() - started
        finally:
            await producer.stop()
        self.say(f"sent {self.stats.events_sent} events in {self.stats.produced_seconds:.1f}s")
        self._producing_done = True

    def _everything_in(self, plan: Plan, observed: Observed) -> bool:
        return (
            self._producing_done
            and all(key in observed.results for key in plan.invoices)
            and set(self.poison_sources) <= set(observed.dead_letter_sources)
        )

    async def _watch_completion(self, plan: Plan, watcher: TopicWatcher) -> None:
        while not self._everything_in(plan, watcher.observed):
            await watcher.next_batch(0.2)
        self.stats.all_in_seconds = self.elapsed()
        self._all_in.set()

    async def _wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; True if everything came in meanwhile."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._all_in.wait(), timeout=max(0.0, seconds))
        return self._all_in.is_set()

    async def _kill_loop(self, env: dict[str, str], observed: Observed, deadline: float) -> None:
        options = self.options
        while not self._all_in.is_set() and time.monotonic() < deadline:
            service = self.service
            if service is None or service.poll() is not None:
                service = self._start_service(env)
            born, activity = time.monotonic(), observed.activity
            # Wait for this life's first sign of work.
            while observed.activity == activity and service.poll() is None:
                if await self._wait(0.1) or time.monotonic() >= deadline:
                    return
                if time.monotonic() - born > STALL_SECONDS:
                    self.stats.stalls += 1
                    self.say(f"[yellow]life {self.stats.lives} showed no work for {STALL_SECONDS:.0f}s[/]")
                    break
            if service.poll() is None:
                life = self.kill_rng.uniform(options.kill_every_min, options.kill_every_max)
                if await self._wait(min(life, deadline - time.monotonic())):
                    return
            if service.poll() is not None:
                self.stats.unexpected_exits += 1
                self.say(f"[red]the service exited by itself (status {service.returncode})[/]")
                continue
            if time.monotonic() >= deadline:
                return
            os.kill(service.pid, signal.SIGKILL)
            await asyncio.to_thread(service.wait)
            self.stats.life_seconds.append(time.monotonic() - born)
            self.say(
                f"kill #{self.stats.kills} (pid {service.pid}) after {time.monotonic() - born:.1f}s; "
                f"invoices with a result {len(observed.results)}, "
                f"dead letters {len(observed.dead_letter_sources)}"
            )
            await self._switch_hang_mode()
            self._start_service(env)

    async def _switch_hang_mode(self) -> None:
        """Alternate the emulator's hangs between "no answer in time" and "connection dropped"."""
        mode = "reset" if self.stats.kills % 2 else "sleep"
        with contextlib.suppress(httpx.HTTPError):
            async with httpx.AsyncClient(base_url=self.emulator_url, timeout=5.0) as http:
                await http.patch("/_admin/faults", json={"hang_mode": mode})

    async def _unconsumed(self, bootstrap: str, ends: dict[Any, int]) -> int:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            committed = await admin.list_consumer_group_offsets(self.topics.group)
        finally:
            await admin.close()
        left = 0
        for partition, end in ends.items():
            if partition.topic == self.topics.inbound:
                position = committed.get(partition)
                left += end - (position.offset if position is not None and position.offset >= 0 else 0)
        return left

    async def _end_offsets(self, bootstrap: str) -> dict[Any, int]:
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
        await consumer.start()
        try:
            partitions = [
                TopicPartition(topic, n) for topic, count in self._partitions().items() for n in range(count)
            ]
            ends: dict[Any, int] = await consumer.end_offsets(partitions)
            return ends
        finally:
            await consumer.stop()

    async def _settle(self, bootstrap: str, env: dict[str, str], watcher: TopicWatcher) -> None:
        """Let the last life finish: everything consumed and committed, then a clean stop."""
        started = time.monotonic()
        if self.service is None or self.service.poll() is not None:
            self._start_service(env)
        deadline = started + SETTLE_SECONDS
        while True:
            ends = await self._end_offsets(bootstrap)
            self.stats.unconsumed = await self._unconsumed(bootstrap, ends)
            if self.stats.unconsumed == 0 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        await asyncio.to_thread(_end, self.service, grace=15.0)
        ends = await self._end_offsets(bootstrap)
        for _ in range(100):  # 20 s at most
            if await watcher.caught_up(ends):
                break
            await asyncio.sleep(0.2)
        self.stats.unconsumed = await self._unconsumed(bootstrap, ends)
        self.stats.settle_seconds = time.monotonic() - started

    async def run(self) -> int:
        options = self.options
        console = self.console
        console.print(
            f"[bold]Chaos run[/] {self.tag}: {options.invoices} invoices, seed {options.seed}, "
            f"kills every {options.kill_every_min:g}-{options.kill_every_max:g}s of work, "
            f"ledger {options.ledger}; files in {self.workdir}"
        )
        plan = plan_events(
            options.invoices,
            seed=options.seed,
            run_tag=self.tag,
            templates=sample_templates(),
            duplicate_share=options.duplicate_share,
            poison_share=options.poison_share,
            binary_share=options.binary_share,
        )
        kafka: LocalKafka | None = None
        watcher: TopicWatcher | None = None
        try:
            async with contextlib.AsyncExitStack() as stack:
                bootstrap = options.kafka_bootstrap
                if not bootstrap:
                    kafka = LocalKafka(name=f"chaos-{os.getpid()}", version=default_version(), port=0)
                    console.print(f"Starting Apache Kafka {kafka.version} (first run downloads its jars)…")
                    bootstrap = await asyncio.to_thread(kafka.start, 120.0)
                if options.ledger == "postgres":
                    ledger_url = await stack.enter_async_context(
                        _postgres_ledger(options.postgres_dsn, console)
                    )
                else:
                    ledger_url = f"sqlite:///{self.workdir / 'ledger.db'}"
                await create_topics(bootstrap, self._partitions())
                await self._start_emulator()
                console.print(f"Kafka at {bootstrap}, Amili emulator at {self.emulator_url}")
                watcher = TopicWatcher(bootstrap, self.topics)
                await watcher.start()
                env = self._service_env(bootstrap, ledger_url)
                self._t0 = time.monotonic()
                deadline = self._t0 + options.timeout_seconds
                completion = asyncio.create_task(self._watch_completion(plan, watcher))
                producing = asyncio.create_task(self._produce(bootstrap, plan))
                killing = asyncio.create_task(self._kill_loop(env, watcher.observed, deadline))
                tasks = (completion, producing, killing)
                try:
                    await asyncio.wait({producing, killing}, return_when=asyncio.FIRST_EXCEPTION)
                    if producing.done() and producing.exception() is not None:
                        await producing  # sending failed: the run is void
                    await killing
                    if not self._all_in.is_set():
                        self.say("[red]timed out before every invoice had its result[/]")
                    await producing
                finally:
                    for task in tasks:
                        task.cancel()
                    await asyncio.gather(*tasks, return_exceptions=True)
                self.say(
                    "every invoice has its result; no more kills, letting the service finish"
                    if self._all_in.is_set()
                    else "stopping"
                )
                await self._settle(bootstrap, env, watcher)
                self.stats.total_seconds = self.elapsed()
                registrations = await self._amili_registrations()
                answers = emulator_answers(self.emulator_log)
                checks = evaluate(
                    plan, watcher.observed, registrations, self.poison_sources, self.stats, answers
                )
                self._report(plan, checks, watcher.observed, answers)
                return 0 if all(check.passed is not False for check in checks) else 1
        finally:
            if watcher is not None:
                await watcher.stop()
            await asyncio.to_thread(_end, self.service)
            await asyncio.to_thread(_end, self.emulator)
            if kafka is not None:
                await asyncio.to_thread(kafka.stop)
                shutil.rmtree(kafka.run_dir, ignore_errors=True)  # its data: this run's topics only

    async def _amili_registrations(self) -> AmiliRecords:
        async with httpx.AsyncClient(base_url=self.emulator_url, timeout=30.0) as http:
            counted = (await http.get("/_admin/registrations")).json()
        cases: dict[str, str] = {}
        if self.store_path.exists():
            for line in self.store_path.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    document = json.loads(line)
                    cases[f"{document['creditor']}/{document['invoice_number']}"] = document["_case"]
        return AmiliRecords(per_invoice=dict(counted["per_invoice"]), cases=cases)

    def _report(self, plan: Plan, checks: list[Check], observed: Observed, answers: dict[str, int]) -> None:
        table = Table(title=f"chaos run {self.tag}")
        for column in ("check", "expected", "actual", "result"):
            table.add_column(column, justify="right" if column in ("expected", "actual") else "left")
        for check in checks:
            verdict = {True: "[green]PASS[/]", False: "[red]FAIL[/]", None: ""}[check.passed]
            table.add_row(check.name, check.expected, check.actual, verdict)
        self.console.print(table)
        for check in checks:
            if check.passed is False and check.detail:
                self.console.print(f"[red]{check.name}[/]: {check.detail}", highlight=False)
        stats = self.stats
        all_in = stats.all_in_seconds
        lives = stats.life_seconds
        self.console.print(
            f"duration {stats.total_seconds:.1f}s (events sent in {stats.produced_seconds:.1f}s; "
            f"every result in after {all_in:.1f}s; settled in {stats.settle_seconds:.1f}s)"
            if all_in is not None
            else f"duration {stats.total_seconds:.1f}s (timed out)",
            highlight=False,
        )
        rate = f"{len(plan.registrable) / all_in:.1f} registrations/s" if all_in else "-"
        mean_life = f"{sum(lives) / len(lives):.1f}s" if lives else "-"
        self.console.print(
            f"kills {stats.kills} (SIGKILL), lives {stats.lives}, mean life {mean_life}, "
            f"unexpected exits {stats.unexpected_exits}, stalls {stats.stalls}; {rate}",
            highlight=False,
        )
        self.console.print(
            f"events: {len(plan.invoices)} invoices ({len(plan.registrable)} registrable, "
            f"{len(plan.rejectable)} refused by the business rules), {plan.duplicates_same_id} re-sent "
            f"under the same id, {plan.duplicates_new_id} under a new id, {plan.poison} poison "
            f"({', '.join(f'{k} {v}' for k, v in sorted(Counter(self.poison_sources.values()).items()))})",
            highlight=False,
        )
        self.console.print(
            f"topics: {observed.result_records} result records, {observed.dead_letter_records} dead-letter "
            f"records (re-deliveries after a kill included)",
            highlight=False,
        )
        if answers:
            summary = ", ".join(f"{name} {count}" for name, count in sorted(answers.items()))
            self.console.print(f"Amili answers (emulator log): {summary}", highlight=False)
        self.console.print(f"logs: {self.service_log}, {self.emulator_log}", highlight=False)


_ACCESS_LINE = re.compile(r'"(GET|POST) (/invoice--registrations)\S* HTTP/[0-9.]+" (\d{3})')


def emulator_answers(log_file: Path) -> dict[str, int]:
    """Answers to registration calls by method and status, from the emulator's access log."""
    counts: Counter[str] = Counter()
    if not log_file.exists():
        return {}
    with log_file.open(encoding="utf-8", errors="replace") as log:
        for line in log:
            match = _ACCESS_LINE.search(line)
            if match:
                method, _, status = match.groups()
                counts[f"{'POST' if method == 'POST' else 'look-up'} {status}"] += 1
    return dict(counts)


# --------------------------------------------------------------------------- the checks


@dataclass(frozen=True, slots=True)
class AmiliRecords:
    per_invoice: dict[str, int]  # "creditor/invoice_number" → registrations
    cases: dict[str, str]  # "creditor/invoice_number" → case id (from the emulator's store)


def _sample(keys: Iterable[Any], limit: int = 5) -> str:
    items = sorted(str(key) for key in keys)
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def evaluate(
    plan: Plan,
    observed: Observed,
    amili: AmiliRecords,
    poison_sources: dict[tuple[int, int], str],
    stats: RunStats,
    answers: dict[str, int] | None = None,
) -> list[Check]:
    """The run's checks: what was sent against what Amili holds and what the topics carry."""
    checks: list[Check] = []

    def add(name: str, expected: Any, actual: Any, passed: bool | None, detail: str = "") -> None:
        checks.append(Check(name, str(expected), str(actual), passed, detail))

    add("invoices sent", len(plan.invoices), stats.invoices_sent, stats.invoices_sent == len(plan.invoices))
    add("events sent (with re-sends and poison)", len(plan.events), stats.events_sent, None)

    registered_at_amili = set(amili.per_invoice)
    missing = plan.registrable - registered_at_amili
    unexpected = registered_at_amili - plan.registrable
    add(
        "distinct registrations at Amili",
        len(plan.registrable),
        len(registered_at_amili),
        not missing and not unexpected,
        f"missing {_sample(missing)}; not meant to be registered {_sample(unexpected)}",
    )
    duplicates = {key: count for key, count in amili.per_invoice.items() if count > 1}
    add(
        "duplicate registrations at Amili",
        0,
        sum(count - 1 for count in duplicates.values()),
        not duplicates,
        _sample(duplicates),
    )

    without = plan.invoices - set(observed.results)
    add("invoices without a result", 0, len(without), not without, _sample(without))
    wrong = {
        key: sorted({outcome for outcome, _ in observed.results.get(key, [])})
        for key in plan.invoices
        if key in observed.results
        and {outcome for outcome, _ in observed.results[key]}
        != {REGISTERED if key in plan.registrable else REJECTED}
    }
    strays = set(observed.results) - plan.invoices
    add(
        "invoices with another outcome than expected",
        0,
        len(wrong) + len(strays),
        not wrong and not strays,
        f"{_sample(f'{k}: {v}' for k, v in wrong.items())}; results for unknown invoices {_sample(strays)}",
    )
    two_cases = {
        key: cases
        for key, results in observed.results.items()
        if len(cases := {case for outcome, case in results if outcome == REGISTERED}) > 1
    }
    add("invoices with two different case ids", 0, len(two_cases), not two_cases, _sample(two_cases))
    disagreeing = {
        key
        for key, results in observed.results.items()
        for outcome, case in results
        if outcome == REGISTERED and amili.cases.get(key) != case
    }
    add(
        "registered results disagreeing with Amili",
        0,
        len(disagreeing),
        not disagreeing,
        _sample(disagreeing),
    )

    sources = set(observed.dead_letter_sources)
    poisoned = set(poison_sources)
    add(
        "dead letters (distinct events)",
        len(poisoned),
        len(sources),
        sources == poisoned,
        f"poison without a dead letter {_sample(poisoned - sources)}; dead letters of other events "
        f"{_sample(sources - poisoned)} (rules: {dict(observed.dead_letter_rules)})",
    )
    add("dead-letter records (re-deliveries included)", "-", observed.dead_letter_records, None)
    add(
        "events left unconsumed at the end",
        0,
        "?" if stats.unconsumed is None else stats.unconsumed,
        stats.unconsumed == 0,
    )
    add("service exits not caused by a kill", 0, stats.unexpected_exits, stats.unexpected_exits == 0)
    # The emulator, like Amili, refuses a second registration of an invoice number (422, "not
    # unique"); the service adopts the first. Each such answer is a duplicate the service attempted.
    add("POSTs Amili refused as not unique", "-", (answers or {}).get("POST 422", 0), None)
    add("SIGKILLs", ">= 1", stats.kills, None)
    return checks


async def run_chaos(options: ChaosOptions, console: Console | None = None) -> int:
    """The chaos run; 0 if every check passed, 1 if not. SIGTERM stops it as Ctrl-C does, with
    everything it started stopped."""
    console = console or Console()
    if options.invoices < 1:
        raise ChaosError("--invoices must be at least 1")
    if not 0 < options.kill_every_min <= options.kill_every_max:
        raise ChaosError("need 0 < --kill-every-min <= --kill-every-max")
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    if main is not None:
        loop.add_signal_handler(signal.SIGTERM, main.cancel)
    try:
        return await ChaosRun(options, console).run()
    except asyncio.CancelledError:
        console.print("[red]chaos run interrupted[/]")
        return 130
    finally:
        loop.remove_signal_handler(signal.SIGTERM)
