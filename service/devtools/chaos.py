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
SIGKILLed consumer stays in its group until its session times out (6 s as tuned here, 10 s by
default), and the next one is only given partitions then.

Several replicas (``replicas``) run in one consumer group, each with its own HTTP port and log file
(one replica needs no more than SQLite; several need the PostgreSQL ledger). A kill then takes one
replica at random. Without kills (``kills=False``) a replica that exits is counted and started
again, as an orchestrator would.

A broker outage (``broker_outage`` s) stops the run's own broker ``outage_after`` s after the first
result or dead letter, with SIGTERM (a controlled shutdown) or SIGKILL, while events are in flight
and results pending, and starts it again on the same port and data dir after that long; the
service is never restarted for it. The run's producer pauses meanwhile (and carries on at its
rate), and its topic reader reconnects. Besides the usual checks, the report then tells how many
log lines each replica wrote from the stop until 30 s after the broker was back, how much CPU each
used while the broker was away, and how long every result took to come in after it was back.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import logging
import math
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from rich.console import Console
from rich.table import Table

from service.amili.mapping import to_registration
from service.config import DEMO_ACCOUNT, DEMO_API_KEY, DEMO_CREDITOR, Settings
from service.devtools.produce import create_topics, encode, event_key
from service.domain.invoice import Invoice
from service.domain.outcomes import Rejection
from service.domain.rules import TransformDefaults
from service.events.cloudevents import JSON_CONTENT_TYPE, STRUCTURED_CONTENT_TYPE
from service.events.contract import INVOICE_CREATED_TYPE
from service.localkafka import LocalKafka, LocalKafkaError, default_version, free_port, project_root

Headers = list[tuple[str, bytes]]
Kind = Literal["invoice", "duplicate", "conflict", "poison"]

SOURCE = "urn:amili-registrar:chaos"
REGISTERED = "registered"
REJECTED = "rejected"
CONFLICT = "conflict"

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
    # Short Kafka client timeouts, so that a broker outage of 20 s or more outlasts every one of them
    # (request, delivery, session): the outage is then more than a hiccup the clients ride out.
    "KAFKA_REQUEST_TIMEOUT_MS": "5000",
    "KAFKA_SESSION_TIMEOUT_MS": "6000",
}
# Amili's latency during a broker-outage run: slow enough that events are in flight when it stops.
OUTAGE_LATENCY: dict[str, str] = {
    "AMILI_EMULATOR_LATENCY_MEDIAN_MS": "50",
    "AMILI_EMULATOR_LATENCY_P99_MS": "200",
}
POISON_KINDS = ("json", "empty", "content_type", "cloudevents", "type", "data_schema")
# Dead-letter rules that are not about the event itself: a valid invoice dead-lettered.
NON_POISON_RULES = frozenset({"gave_up", "processing_error"})
STALL_SECONDS = 90.0  # a life that shows no work for this long is reported, then killed anyway
SETTLE_SECONDS = 60.0  # after the last result: how long the service may take to commit everything
TIMED_OUT_SETTLE_SECONDS = 10.0  # the same when the run timed out: a look at the lag, no more
PROCESS_START_SECONDS = 30.0
# The broker outage: what is measured and the bounds the report holds it to.
LOG_WINDOW_AFTER_BACK = 30.0  # log lines are counted from the stop until this long after it is back
LOG_LINES_PER_MINUTE = 200  # per replica and minute of outage
IDLE_CPU_CORES = 0.10  # per replica, while the broker is away
CPU_SAMPLE_SECONDS = 0.5
BROKER_STOP_SECONDS = 60.0  # SIGTERM: how long the controlled shutdown may take before SIGKILL
BROKER_START_SECONDS = 120.0
PORT_BUSY_RETRY_SECONDS = 30.0  # a restart finding its port held retries this long
MARKER = "----- chaos:"  # lines the run writes into the service logs (not counted as the service's)
MAX_REPLICAS = 16


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
    replicas: int = 1
    kills: bool = True
    broker_outage: float = 0.0  # seconds the broker stays down; 0: no outage
    outage_after: float = 10.0  # seconds after the first result or dead letter
    outage_signal: Literal["term", "kill"] = "term"
    conflict_share: float = 0.0  # events re-using an invoice number with other content
    amili_faults: bool = True  # 5xx, hangs and 429 at the emulator (its latency stays)


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
    conflicted: frozenset[str] = frozenset()  # registrable invoices re-sent with other content

    @property
    def invoices(self) -> frozenset[str]:
        return self.registrable | self.rejectable

    @property
    def conflicts(self) -> int:
        return sum(1 for event in self.events if event.kind == "conflict")

    def expected_outcomes(self, key: str) -> set[str]:
        """The outcomes the results of an invoice must show: registered (and conflict, for the
        re-send with other content), or rejected by the business rules."""
        if key in self.registrable:
            return {REGISTERED, CONFLICT} if key in self.conflicted else {REGISTERED}
        return {REJECTED}

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
    conflict_share: float = 0.0,
) -> Plan:
    """``invoices`` invoice-created events with unique invoice numbers, plus re-sends of earlier
    events (half byte for byte, half under a new event id), poison events and conflicts (an earlier
    registrable invoice's number with other content: a ``conflict`` result, never a registration),
    in a seeded order."""
    rng = random.Random(seed)
    duplicates = round(invoices * duplicate_share)
    poison = round(invoices * poison_share)
    conflicts = round(invoices * conflict_share)
    total = invoices + duplicates + poison + conflicts
    extra_slots = rng.sample(range(1, total), duplicates + poison + conflicts) if invoices else []
    duplicate_slots = set(extra_slots[:duplicates])
    poison_slots = set(extra_slots[duplicates : duplicates + poison])
    conflict_slots = set(extra_slots[duplicates + poison :])

    events: list[OutboundEvent] = []
    sent: list[tuple[dict[str, Any], OutboundEvent]] = []
    registrable: set[str] = set()
    rejectable: set[str] = set()
    conflicted: set[str] = set()
    same_id = new_id = poisoned = 0
    for slot in range(total):
        candidates: list[tuple[dict[str, Any], OutboundEvent]] = []
        if slot in conflict_slots:
            candidates = [
                (envelope, event)
                for envelope, event in sent
                if event.invoice in registrable and event.invoice not in conflicted
            ]
        if candidates:
            envelope, original = rng.choice(candidates)
            events.append(
                _invoice_event(_other_content(envelope, rng), "conflict", binary=rng.random() < binary_share)
            )
            assert original.invoice is not None
            conflicted.add(original.invoice)
        elif slot in duplicate_slots or slot in conflict_slots:  # no invoice to conflict with yet: a re-send
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
    return Plan(events, frozenset(registrable), frozenset(rejectable), same_id, new_id, frozenset(conflicted))


def _other_content(envelope: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """A new event for the same invoice number with other, still valid, content."""
    data = copy.deepcopy(envelope["data"])
    first_line = data["lines"][0]
    first_line["description"] = f"{first_line.get('description', 'line')} (amended)"
    return {**envelope, "id": _event_id(rng), "time": _now(), "data": data}


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
    else:  # data_schema: with no invoice number to name in a result, it is a dead letter
        unnamed = {field: content for field, content in invoice.items() if field != "invoice_number"}
        value = json.dumps({**envelope, "data": {**unnamed, "lines": "none", "due_date": "soon"}}).encode()
    return OutboundEvent(value, key, structured, "poison", rule=rule)


# --------------------------------------------------------------------------- watching the topics


@dataclass
class Observed:
    """What came out of the service, as read from its topics."""

    results: dict[str, list[tuple[str, str | None]]] = field(default_factory=dict)  # key → (outcome, case)
    result_records: int = 0
    dead_letter_sources: Counter[tuple[int, int]] = field(default_factory=Counter)  # (partition, offset)
    dead_letter_rules: Counter[str] = field(default_factory=Counter)
    source_rules: dict[tuple[int, int], set[str]] = field(default_factory=dict)  # source → its rules
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
        rule = found.get("dlq.rule", "?")
        self.dead_letter_rules[rule] += 1
        source = (-1, self.dead_letter_records)
        if found.get("dlq.topic") == inbound_topic:
            with contextlib.suppress(KeyError, ValueError):
                source = (int(found["dlq.partition"]), int(found["dlq.offset"]))
        self.dead_letter_sources[source] += 1
        self.source_rules.setdefault(source, set()).add(rule)

    def outcomes(self, key: str) -> set[str]:
        return {outcome for outcome, _ in self.results.get(key, [])}


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


class TopicWatcher:
    """Reads the result and dead-letter topics from the start, for the whole run.

    It assigns the partitions itself and keeps the next offset of each, so that it can drop its
    consumer and make a new one where the old one stopped: after an error, and when the run asks
    (the broker is back from an outage)."""

    RETRY_SECONDS = 1.0
    CLOSE_SECONDS = 10.0

    def __init__(self, bootstrap: str, topics: Topics, partitions: dict[str, int]) -> None:
        self.observed = Observed()
        self.errors = 0
        self.reconnects = 0
        self._bootstrap = bootstrap
        self._topics = topics
        self._partitions = [
            TopicPartition(topic, number)
            for topic in (topics.results, topics.dead_letters)
            for number in range(partitions[topic])
        ]
        self._next: dict[TopicPartition, int] = {}
        self._consumer: AIOKafkaConsumer | None = None
        self._reconnect = False
        self._task: asyncio.Task[None] | None = None
        self._batch = asyncio.Event()

    async def next_batch(self, wait_seconds: float) -> None:
        """Wait until more records were read (or ``wait_seconds`` passed)."""
        self._batch.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._batch.wait(), wait_seconds)

    async def start(self) -> None:
        await self._connect()
        self._task = asyncio.create_task(self._run(), name="chaos-topic-watcher")

    def reconnect(self) -> None:
        """Read on with a new consumer (from where the old one stopped)."""
        self._reconnect = True

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
                batches = await self._consumer.getmany(timeout_ms=200)
            except asyncio.CancelledError:
                raise
            except Exception:  # the broker is away, or the consumer broke: a new one, a little later
                self.errors += 1
                await self._disconnect()
                await asyncio.sleep(self.RETRY_SECONDS)
                continue
            for partition, records in batches.items():
                for record in records:
                    if partition.topic == self._topics.results:
                        self.observed.add_result(record.value)
                    else:
                        self.observed.add_dead_letter(record.headers, self._topics.inbound)
                    self._next[partition] = record.offset + 1
            if batches:
                self._batch.set()

    def caught_up(self, ends: dict[Any, int]) -> bool:
        """Whether everything up to ``ends`` (partition → end offset) has been read."""
        return all(
            self._next.get(partition, 0) >= end
            for partition, end in ends.items()
            if partition.topic in (self._topics.results, self._topics.dead_letters)
        )


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


CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_ticks(pid: int) -> int | None:
    """The CPU a process used so far (utime + stime, in clock ticks), from ``/proc/PID/stat``;
    None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()  # after "pid (comm)": state is field 3 of stat(5)
    try:
        return int(fields[11]) + int(fields[12])  # utime is field 14, stime field 15
    except (IndexError, ValueError):
        return None


def file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def lines_since(path: Path, offset: int) -> int:
    """Lines written to ``path`` after byte ``offset``, without the run's own markers."""
    count = 0
    with contextlib.suppress(OSError), path.open("rb") as log:
        log.seek(offset)
        for line in log:
            if not line.startswith(MARKER.encode()):
                count += 1
    return count


@dataclass
class Replica:
    """One instance of the service; all of them consume in the run's consumer group."""

    index: int
    log: Path
    process: subprocess.Popen[bytes] | None = None
    started: float = 0.0  # time.monotonic() of its current life
    lives: int = 0

    @property
    def name(self) -> str:
        return f"r{self.index}"

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


class CpuSampler:
    """The CPU each replica uses over a window, sampled from ``/proc``: a replica started again
    within the window counts its new process from its start."""

    def __init__(self, replicas: Sequence[Replica]) -> None:
        self._replicas = replicas
        self._spans: dict[tuple[str, int], list[int]] = {}  # (replica, pid) → [first, last] ticks
        self._started = False

    def sample(self) -> None:
        for replica in self._replicas:
            if replica.process is None:
                continue
            ticks = cpu_ticks(replica.process.pid)
            if ticks is None:
                continue
            span = self._spans.setdefault(
                (replica.name, replica.process.pid), [ticks if not self._started else 0, ticks]
            )
            span[1] = ticks
        self._started = True

    async def run(self) -> None:
        while True:  # until cancelled at the end of the window
            await asyncio.sleep(CPU_SAMPLE_SECONDS)
            self.sample()

    def cores(self, seconds: float) -> dict[str, float]:
        """Cores used per replica over a window of ``seconds``."""
        self.sample()
        if seconds <= 0:
            return {}
        ticks = dict.fromkeys((replica.name for replica in self._replicas), 0)
        for (name, _), (first, last) in self._spans.items():
            ticks[name] += max(0, last - first)
        return {name: used / CLOCK_TICKS / seconds for name, used in ticks.items()}


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
class OutageStats:
    """What happened around the broker outage; times are seconds into the run."""

    signal: str
    planned_seconds: float
    started_at: float | None = None  # when the signal was sent
    not_started: str = ""  # why it never started
    events_sent: int = 0  # when it started
    pending_invoices: int = 0  # invoices sent without a result when it started
    stop_seconds: float = 0.0  # from the signal until the broker process was gone
    away_seconds: float = 0.0  # from then until it was started again (the CPU window)
    restart_seconds: float = 0.0  # from then until its port accepted connections
    back_at: float | None = None
    first_result_after_back: float | None = None  # seconds from back to the next result
    port_busy_retries: int = 0
    log_lines: dict[str, int] = field(default_factory=dict)  # per replica, from the signal to back + 30 s
    log_window_seconds: float = 0.0
    log_window_complete: bool = False
    cpu_cores: dict[str, float] = field(default_factory=dict)  # per replica, while the broker was away

    @property
    def down_seconds(self) -> float | None:
        if self.started_at is None or self.back_at is None:
            return None
        return self.back_at - self.started_at


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
    replicas: int = 1
    kills_enabled: bool = True
    outage: OutageStats | None = None

    @property
    def kills(self) -> int:
        return len(self.life_seconds)

    @property
    def restarts(self) -> int:
        """Replicas started again, after a kill or an exit of their own."""
        return max(0, self.lives - self.replicas)


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
        self.stats = RunStats(replicas=options.replicas, kills_enabled=options.kills)
        if options.broker_outage > 0:
            self.stats.outage = OutageStats(
                signal="SIGTERM" if options.outage_signal == "term" else "SIGKILL",
                planned_seconds=options.broker_outage,
            )
        self.kill_rng = random.Random(options.seed + 1)
        self.workdir = options.workdir or Path(tempfile.mkdtemp(prefix=f"amili-chaos-{self.tag}-"))
        self.workdir = self.workdir.resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.store_path = self.workdir / "amili-registrations.jsonl"
        self.emulator_log = self.workdir / "emulator.log"
        self.client_log = self.workdir / "chaos-kafka-clients.log"
        single = options.replicas == 1
        self.replicas = [
            Replica(index, self.workdir / ("service.log" if single else f"service-{index}.log"))
            for index in range(1, options.replicas + 1)
        ]
        self.emulator: subprocess.Popen[bytes] | None = None
        self.emulator_url = ""
        self.poison_sources: dict[tuple[int, int], str] = {}
        self.kafka: LocalKafka | None = None
        self.watcher: TopicWatcher | None = None
        self._t0 = time.monotonic()
        self._all_in = asyncio.Event()
        self._producing_done = False
        # The broker outage: the producer sends only while the broker is up, and never while it is
        # being stopped; after it is back it sends through a new producer.
        self._broker_up = asyncio.Event()
        self._broker_up.set()
        self._broker_generation = 0
        self._kafka_lock = asyncio.Lock()
        self._broker_thread_lock = threading.Lock()  # one start or stop of the broker at a time

    def elapsed(self) -> float:
        return time.monotonic() - self._t0

    def say(self, message: str) -> None:
        self.console.print(f"[dim][{self.elapsed():7.1f}s][/] {message}", highlight=False)

    # set-up ---------------------------------------------------------------------------------

    def _partitions(self) -> dict[str, int]:
        """The run's topics and their numbers of partitions (at least one per replica)."""
        partitions = max(self.options.partitions, self.options.replicas)
        return {
            self.topics.inbound: partitions,
            self.topics.results: partitions,
            self.topics.dead_letters: 1,
        }

    async def _start_emulator(self) -> None:
        port = free_port()
        faults = (
            EMULATOR_FAULTS
            if self.options.amili_faults
            else {name: value for name, value in EMULATOR_FAULTS.items() if "_LATENCY_" in name}
        )
        env = {
            **clean_environment(),
            **faults,
            **(OUTAGE_LATENCY if self.options.broker_outage > 0 else {}),
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

    def _start_replica(self, replica: Replica, env: dict[str, str]) -> None:
        self.stats.lives += 1
        replica.lives += 1
        with replica.log.open("a", encoding="utf-8") as log:
            log.write(
                f"{MARKER} life {replica.lives} of replica {replica.name} starts at {self.elapsed():.1f}s\n"
            )
        replica.process = _spawn(["run"], {**env, "HTTP_PORT": str(free_port())}, replica.log)
        replica.started = time.monotonic()

    def _revive(self, env: dict[str, str]) -> None:
        """Start again every replica that exited by itself (each one counted), as an orchestrator
        would."""
        for replica in self.replicas:
            process = replica.process
            if process is not None and process.poll() is not None:
                self.stats.unexpected_exits += 1
                self.say(
                    f"[red]replica {replica.name} exited by itself (status {process.returncode}) after "
                    f"{time.monotonic() - replica.started:.1f}s; starting it again[/]"
                )
                self._start_replica(replica, env)

    def _all_running(self) -> bool:
        return all(replica.running() for replica in self.replicas)

    async def _stop_replicas(self, grace: float) -> None:
        await asyncio.gather(
            *(asyncio.to_thread(_end, replica.process, grace=grace) for replica in self.replicas)
        )

    async def _broker_call(self, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """A blocking start or stop of the broker, in a thread, one at a time (the final stop waits
        for a start in progress instead of racing it)."""

        def locked() -> Any:
            with self._broker_thread_lock:
                return call(*args, **kwargs)

        return await asyncio.to_thread(locked)

    @contextlib.contextmanager
    def _client_logs(self) -> Iterator[None]:
        """The run's own Kafka clients log to a file, not the terminal (a broker outage makes them
        loud)."""
        logger = logging.getLogger("aiokafka")
        handler = logging.FileHandler(self.client_log, encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        saved = (logger.level, logger.propagate)
        logger.addHandler(handler)
        logger.setLevel(logging.WARNING)
        logger.propagate = False
        try:
            yield
        finally:
            logger.removeHandler(handler)
            handler.close()
            logger.setLevel(saved[0])
            logger.propagate = saved[1]

    # the phases -------------------------------------------------------------------------------

    async def _take_broker(self) -> float:
        """Wait until the broker is up and hold the Kafka lock (the caller releases it); returns how
        long it waited for the broker."""
        waited = 0.0
        for _ in range(10_000):  # each round waits for the broker; it comes back within minutes
            if not self._broker_up.is_set():
                began = time.monotonic()
                await self._broker_up.wait()
                waited += time.monotonic() - began
            await self._kafka_lock.acquire()
            if self._broker_up.is_set():
                return waited
            self._kafka_lock.release()  # it went away while this waited for the lock
        raise ChaosError("the broker never came back for the producer")

    async def _produce(self, bootstrap: str, plan: Plan) -> None:
        producer: AIOKafkaProducer | None = None
        generation = -1
        try:
            started = time.monotonic()
            paused = 0.0
            chunk = max(1, round(self.options.rate / 10)) if self.options.rate > 0 else 500
            for index in range(0, len(plan.events), chunk):
                batch = plan.events[index : index + chunk]
                paused += await self._take_broker()
                try:
                    if producer is None or generation != self._broker_generation:
                        if producer is not None:  # its broker went away: a new producer
                            await close_quietly(producer.stop(), 10.0)
                        producer = AIOKafkaProducer(
                            bootstrap_servers=bootstrap, acks="all", enable_idempotence=True
                        )
                        generation = self._broker_generation
                        await producer.start()
                    futures = [
                        await producer.send(self.topics.inbound, value=e.value, key=e.key, headers=e.headers)
                        for e in batch
                    ]
                    for event, future in zip(batch, futures, strict=True):
                        metadata = await future
                        if event.kind == "poison":
                            self.poison_sources[(metadata.partition, metadata.offset)] = event.rule or "?"
                finally:
                    self._kafka_lock.release()
                self.stats.events_sent += len(batch)
                self.stats.invoices_sent += sum(1 for event in batch if event.kind == "invoice")
                if self.options.rate > 0:  # the rate holds; the time the broker was away is not made up
                    ahead = started + paused + self.stats.events_sent / self.options.rate - time.monotonic()
                    if ahead > 0:
                        await asyncio.sleep(ahead)
            self.stats.produced_seconds = time.monotonic() - started
        finally:
            if producer is not None:
                await close_quietly(producer.stop(), 10.0)
        self.say(f"sent {self.stats.events_sent} events in {self.stats.produced_seconds:.1f}s")
        self._producing_done = True

    def _everything_in(self, plan: Plan, observed: Observed) -> bool:
        return (
            self._producing_done
            and all(key in observed.results for key in plan.invoices)
            and all(CONFLICT in observed.outcomes(key) for key in plan.conflicted)
            and set(self.poison_sources) <= set(observed.dead_letter_sources)
        )

    async def _watch_completion(self, plan: Plan, watcher: TopicWatcher) -> None:
        while not self._everything_in(plan, watcher.observed):
            await watcher.next_batch(0.2)
        self.stats.all_in_seconds = self.elapsed()
        self._all_in.set()
        self.say("every invoice has its result")

    async def _wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; True if everything came in meanwhile."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._all_in.wait(), timeout=max(0.0, seconds))
        return self._all_in.is_set()

    async def _supervise(self, env: dict[str, str], observed: Observed, deadline: float) -> None:
        """Run the replicas until every result is in (or the time is up): with kills, killing one at
        random moments; without, only starting again those that exit by themselves."""
        for replica in self.replicas:
            self._start_replica(replica, env)
        if self.options.kills:
            await self._kill_loop(env, observed, deadline)
            return
        while time.monotonic() < deadline:
            if await self._wait(min(0.2, deadline - time.monotonic())):
                return
            self._revive(env)

    async def _kill_loop(self, env: dict[str, str], observed: Observed, deadline: float) -> None:
        options = self.options
        while not self._all_in.is_set() and time.monotonic() < deadline:
            self._revive(env)
            born, activity = time.monotonic(), observed.activity
            # Wait for this round's first sign of work.
            while observed.activity == activity and self._all_running():
                if await self._wait(0.1) or time.monotonic() >= deadline:
                    return
                if time.monotonic() - born > STALL_SECONDS:
                    self.stats.stalls += 1
                    self.say(f"[yellow]the service showed no work for {STALL_SECONDS:.0f}s[/]")
                    break
            if self._all_running():
                life = self.kill_rng.uniform(options.kill_every_min, options.kill_every_max)
                if await self._wait(min(life, deadline - time.monotonic())):
                    return
            if not self._all_running():
                continue  # one exited by itself: counted and started again above
            if time.monotonic() >= deadline:
                return
            victim = (
                self.replicas[self.kill_rng.randrange(len(self.replicas))]
                if len(self.replicas) > 1
                else self.replicas[0]
            )
            process = victim.process
            assert process is not None
            os.kill(process.pid, signal.SIGKILL)
            await asyncio.to_thread(process.wait)
            self.stats.life_seconds.append(time.monotonic() - victim.started)
            who = f"replica {victim.name}, " if len(self.replicas) > 1 else ""
            self.say(
                f"kill #{self.stats.kills} ({who}pid {process.pid}) after "
                f"{time.monotonic() - victim.started:.1f}s; "
                f"invoices with a result {len(observed.results)}, "
                f"dead letters {len(observed.dead_letter_sources)}"
            )
            await self._switch_hang_mode()
            self._start_replica(victim, env)

    async def _switch_hang_mode(self) -> None:
        """Alternate the emulator's hangs between "no answer in time" and "connection dropped"."""
        mode = "reset" if self.stats.kills % 2 else "sleep"
        with contextlib.suppress(httpx.HTTPError):
            async with httpx.AsyncClient(base_url=self.emulator_url, timeout=5.0) as http:
                await http.patch("/_admin/faults", json={"hang_mode": mode})

    # the broker outage ------------------------------------------------------------------------

    async def _outage(self, kafka: LocalKafka, plan: Plan, observed: Observed, deadline: float) -> None:
        """Stop the broker ``outage_after`` s after the first result or dead letter, keep it down
        ``broker_outage`` s, start it again on the same port and data; measure the service's log
        lines and CPU meanwhile."""
        options = self.options
        stats = self.stats.outage
        assert stats is not None
        while observed.activity == 0:  # bounded by the deadline
            if self._all_in.is_set() or time.monotonic() >= deadline:
                return
            await asyncio.sleep(0.1)
        if await self._wait(min(options.outage_after, deadline - time.monotonic())):
            return
        if time.monotonic() >= deadline:
            return
        sig = signal.SIGTERM if options.outage_signal == "term" else signal.SIGKILL
        self._broker_up.clear()
        async with self._kafka_lock:  # the producer is between two sends
            stats.started_at = self.elapsed()
            stats.events_sent = self.stats.events_sent
            sent = {
                event.invoice for event in plan.events[: self.stats.events_sent] if event.kind == "invoice"
            }
            stats.pending_invoices = sum(1 for key in sent if key not in observed.results)
            marks = {replica.name: file_size(replica.log) for replica in self.replicas}
            self.say(
                f"[yellow]broker outage: {sig.name} to the broker with {stats.pending_invoices} invoices "
                f"waiting for their result ({stats.events_sent} events sent); back in "
                f"{options.broker_outage:g}s[/]"
            )
            signalled = time.monotonic()
            await self._broker_call(kafka.stop, BROKER_STOP_SECONDS, sig=sig)
            gone = time.monotonic()
        stats.stop_seconds = gone - signalled
        sampler = CpuSampler(self.replicas)
        sampler.sample()
        sampling = asyncio.create_task(sampler.run(), name="chaos-cpu-sampler")
        try:
            await asyncio.sleep(max(0.0, signalled + options.broker_outage - time.monotonic()))
        finally:
            sampling.cancel()
            await asyncio.gather(sampling, return_exceptions=True)
        restarting = time.monotonic()
        stats.away_seconds = restarting - gone
        stats.cpu_cores = sampler.cores(stats.away_seconds)
        try:
            self.say(
                f"broker process gone after {stats.stop_seconds:.1f}s; starting it again on port {kafka.port}"
            )
            await self._restart_broker(kafka)
            back = time.monotonic()
            stats.restart_seconds = back - restarting
            stats.back_at = self.elapsed()
            self._broker_generation += 1
            self._broker_up.set()
            if self.watcher is not None:
                self.watcher.reconnect()
            self.say(
                f"broker back after {back - signalled:.1f}s (started in {stats.restart_seconds:.1f}s); "
                f"invoices with a result {len(observed.results)}; counting log lines "
                f"{LOG_WINDOW_AFTER_BACK:.0f}s more"
            )
            results = observed.result_records
            for _ in range(round(LOG_WINDOW_AFTER_BACK / 0.1)):
                if stats.first_result_after_back is None and observed.result_records > results:
                    stats.first_result_after_back = time.monotonic() - back
                await asyncio.sleep(max(0.0, min(0.1, back + LOG_WINDOW_AFTER_BACK - time.monotonic())))
            stats.log_window_complete = True
        finally:
            stats.log_window_seconds = time.monotonic() - signalled
            stats.log_lines = {
                replica.name: lines_since(replica.log, marks[replica.name]) for replica in self.replicas
            }

    async def _restart_broker(self, kafka: LocalKafka) -> None:
        stats = self.stats.outage
        assert stats is not None
        began = time.monotonic()
        for _ in range(round(PORT_BUSY_RETRY_SECONDS) + 1):
            try:
                await self._broker_call(kafka.start, BROKER_START_SECONDS)
                return
            except LocalKafkaError as error:
                if "already in use" not in str(error) or time.monotonic() - began > PORT_BUSY_RETRY_SECONDS:
                    raise ChaosError(f"the broker did not start again: {error}") from error
                stats.port_busy_retries += 1
                if stats.port_busy_retries == 1:
                    self.say(f"[yellow]{error}; trying again for up to {PORT_BUSY_RETRY_SECONDS:.0f}s[/]")
                await asyncio.sleep(1.0)
        raise ChaosError(
            f"the broker did not start again: its port stayed in use {PORT_BUSY_RETRY_SECONDS:.0f}s"
        )

    def _outage_under_way(self, outage: asyncio.Task[None] | None) -> bool:
        started = self.stats.outage is not None and self.stats.outage.started_at is not None
        return outage is not None and not outage.done() and started

    async def _finish_outage(self, outage: asyncio.Task[None] | None) -> None:
        """After the supervision: let the outage finish (the broker must be back for the checks),
        or call it off if it never began."""
        stats = self.stats.outage
        if outage is None or stats is None:
            return
        if not outage.done() and stats.started_at is None:
            outage.cancel()
            await asyncio.gather(outage, return_exceptions=True)
        if stats.started_at is None:
            stats.not_started = (
                "every result was in before it (lower --outage-after, or send longer: --rate)"
                if self._all_in.is_set()
                else "the run timed out before it"
            )
            return
        await outage  # bounded: the broker's stop and start time out, then the 30 s of log counting

    # the end ------------------------------------------------------------------------------------

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

    async def _lag(self, bootstrap: str) -> tuple[dict[Any, int], int | None]:
        """End offsets of the run's topics and the events left unconsumed (None if the broker did
        not answer within 30 s)."""
        try:
            ends = await asyncio.wait_for(self._end_offsets(bootstrap), 30.0)
            return ends, await asyncio.wait_for(self._unconsumed(bootstrap, ends), 30.0)
        except Exception as error:  # reported as "?" in the table
            self.say(f"[yellow]could not read the lag: {error.__class__.__name__}: {error}[/]")
            return {}, None

    async def _settle(self, bootstrap: str, env: dict[str, str], watcher: TopicWatcher) -> None:
        """Let the last lives finish: everything consumed and committed, then a clean stop."""
        started = time.monotonic()
        self._revive(env)
        deadline = started + (SETTLE_SECONDS if self._all_in.is_set() else TIMED_OUT_SETTLE_SECONDS)
        while True:
            _, self.stats.unconsumed = await self._lag(bootstrap)
            if self.stats.unconsumed == 0 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        await self._stop_replicas(grace=15.0)
        ends, _ = await self._lag(bootstrap)
        for _ in range(100):  # 20 s at most
            if watcher.caught_up(ends):
                break
            await asyncio.sleep(0.2)
        _, self.stats.unconsumed = await self._lag(bootstrap)
        self.stats.settle_seconds = time.monotonic() - started

    async def _until_supervised(
        self, supervising: asyncio.Task[None], *others: asyncio.Task[None] | None
    ) -> None:
        """Wait for the supervision to end; a failure of another task (sending, the outage) ends the
        run at once."""
        waiting: set[asyncio.Task[None]] = {supervising, *(task for task in others if task is not None)}
        while not supervising.done():
            done, waiting = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if not task.cancelled() and task.exception() is not None:
                    await task  # sending failed, or the broker did not come back: the run is void
        await supervising

    def _banner(self) -> str:
        options = self.options
        kills = (
            f"kills every {options.kill_every_min:g}-{options.kill_every_max:g}s of work"
            if options.kills
            else "no kills"
        )
        outage = (
            f", broker outage of {options.broker_outage:g}s ({options.outage_signal.upper()}) "
            f"{options.outage_after:g}s after the first result"
            if options.broker_outage > 0
            else ""
        )
        replicas = f"{options.replicas} replicas" if options.replicas > 1 else "1 replica"
        return (
            f"[bold]Chaos run[/] {self.tag}: {options.invoices} invoices, seed {options.seed}, {replicas}, "
            f"{kills}{outage}, ledger {options.ledger}; files in {self.workdir}"
        )

    async def run(self) -> int:
        options = self.options
        console = self.console
        console.print(self._banner())
        plan = plan_events(
            options.invoices,
            seed=options.seed,
            run_tag=self.tag,
            templates=sample_templates(),
            duplicate_share=options.duplicate_share,
            poison_share=options.poison_share,
            binary_share=options.binary_share,
            conflict_share=options.conflict_share,
        )
        kafka: LocalKafka | None = None
        try:
            with self._client_logs():
                async with contextlib.AsyncExitStack() as stack:
                    bootstrap = options.kafka_bootstrap
                    if not bootstrap:
                        kafka = LocalKafka(name=f"chaos-{os.getpid()}", version=default_version(), port=0)
                        self.kafka = kafka
                        console.print(
                            f"Starting Apache Kafka {kafka.version} (first run downloads its jars)…"
                        )
                        bootstrap = str(await self._broker_call(kafka.start, BROKER_START_SECONDS))
                    if options.ledger == "postgres":
                        ledger_url = await stack.enter_async_context(
                            _postgres_ledger(options.postgres_dsn, console)
                        )
                    else:
                        ledger_url = f"sqlite:///{self.workdir / 'ledger.db'}"
                    await create_topics(bootstrap, self._partitions())
                    await self._start_emulator()
                    console.print(f"Kafka at {bootstrap}, Amili emulator at {self.emulator_url}")
                    self.watcher = watcher = TopicWatcher(bootstrap, self.topics, self._partitions())
                    await watcher.start()
                    env = self._service_env(bootstrap, ledger_url)
                    self._t0 = time.monotonic()
                    deadline = self._t0 + options.timeout_seconds
                    completion = asyncio.create_task(self._watch_completion(plan, watcher))
                    producing = asyncio.create_task(self._produce(bootstrap, plan))
                    supervising = asyncio.create_task(self._supervise(env, watcher.observed, deadline))
                    outage = (
                        asyncio.create_task(self._outage(kafka, plan, watcher.observed, deadline))
                        if kafka is not None and options.broker_outage > 0
                        else None
                    )
                    tasks = [
                        task for task in (completion, producing, supervising, outage) if task is not None
                    ]
                    try:
                        await self._until_supervised(supervising, producing, outage)
                        if not self._all_in.is_set():
                            self.say("[red]timed out before every invoice had its result[/]")
                            if self._outage_under_way(outage):
                                self.say(
                                    "waiting for the broker outage to end (back + 30 s) before the checks"
                                )
                        await self._finish_outage(outage)
                        if not producing.done():  # timed out while sending: the rest is never sent
                            producing.cancel()
                            self.say(f"[red]stopped sending after {self.stats.events_sent} events[/]")
                        elif producing.exception() is not None:
                            await producing
                    finally:
                        for task in tasks:
                            task.cancel()
                        await asyncio.gather(*tasks, return_exceptions=True)
                    self.say(
                        "no more kills; letting the service finish" if self._all_in.is_set() else "stopping"
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
            await self.clean_up()

    async def clean_up(self) -> None:
        """Stop everything the run started: the topic reader, the replicas, the emulator and the
        broker (its data dir removed). Each step runs whatever the others raise; calling it again
        finishes what an interrupted call left."""
        steps: list[tuple[str, Callable[[], Coroutine[Any, Any, Any]]]] = [
            ("topic reader", lambda: self.watcher.stop() if self.watcher else asyncio.sleep(0)),
            ("service", lambda: self._stop_replicas(grace=10.0)),
            ("emulator", lambda: asyncio.to_thread(_end, self.emulator)),
            ("broker", self._remove_broker),
        ]
        for name, step in steps:
            try:
                await step()
            except Exception as error:  # the next step runs all the same
                self.console.print(f"[yellow]stopping the {name} failed: {error!r}[/]", highlight=False)

    async def _remove_broker(self) -> None:
        kafka = self.kafka
        if kafka is not None:
            await self._broker_call(kafka.stop)
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
        if len(self.replicas) > 1:
            self.console.print(
                "replicas: "
                + ", ".join(
                    f"{replica.name} {replica.lives} {'life' if replica.lives == 1 else 'lives'} "
                    f"{lines_since(replica.log, 0)} log lines"
                    for replica in self.replicas
                ),
                highlight=False,
            )
        outage = stats.outage
        if outage is not None and outage.started_at is not None:
            back = (
                f"back at {outage.back_at:.1f}s after {outage.down_seconds:.1f}s down (stopped in "
                f"{outage.stop_seconds:.1f}s, away {outage.away_seconds:.1f}s, started in "
                f"{outage.restart_seconds:.1f}s"
                + (
                    f", {outage.port_busy_retries} retries for a busy port"
                    if outage.port_busy_retries
                    else ""
                )
                + ")"
                if outage.back_at is not None and outage.down_seconds is not None
                else "never back"
            )
            watcher = self.watcher
            self.console.print(
                f"broker outage: {outage.signal} at {outage.started_at:.1f}s with "
                f"{outage.pending_invoices} invoices waiting for a result ({outage.events_sent} events "
                f"sent); {back}; the run's topic reader reconnected "
                f"{max(0, watcher.reconnects) if watcher else 0} times",
                highlight=False,
            )
        self.console.print(
            f"events: {len(plan.invoices)} invoices ({len(plan.registrable)} registrable, "
            f"{len(plan.rejectable)} refused by the business rules), {plan.duplicates_same_id} re-sent "
            f"under the same id, {plan.duplicates_new_id} under a new id, {plan.conflicts} with other "
            f"content (conflicts), {plan.poison} poison "
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
        logs = ", ".join(str(replica.log) for replica in self.replicas)
        self.console.print(f"logs: {logs}, {self.emulator_log}", highlight=False)


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
        key: sorted(observed.outcomes(key))
        for key in plan.invoices
        if key in observed.results and observed.outcomes(key) != plan.expected_outcomes(key)
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
    # A dead letter of a valid invoice: given up or failed processing, not anything wrong with the event.
    valid = {
        source: rules
        for source, rules in observed.source_rules.items()
        if rules & NON_POISON_RULES or source not in poisoned
    }
    add(
        "dead letters for valid invoices",
        0,
        len(valid),
        not valid,
        _sample(f"{source}: {'/'.join(sorted(rules))}" for source, rules in valid.items()),
    )
    add(
        "events left unconsumed at the end",
        0,
        "?" if stats.unconsumed is None else stats.unconsumed,
        stats.unconsumed == 0,
    )
    add("service exits not caused by a kill", 0, stats.unexpected_exits, stats.unexpected_exits == 0)
    replicas = f" ({stats.replicas} replicas)" if stats.replicas > 1 else ""
    if stats.kills_enabled:
        add(
            f"service restarts{replicas}",
            f"{stats.kills} (one per kill)",
            stats.restarts,
            stats.restarts == stats.kills,
        )
    else:
        add(f"service restarts{replicas}", 0, stats.restarts, stats.restarts == 0)
    # The emulator, like Amili, refuses a second registration of an invoice number (422, "not
    # unique"); the service adopts the first. Each such answer is a duplicate the service attempted.
    add("POSTs Amili refused as not unique", "-", (answers or {}).get("POST 422", 0), None)
    add("SIGKILLs", ">= 1" if stats.kills_enabled else "0 (--no-kills)", stats.kills, None)
    if stats.outage is not None:
        checks.extend(outage_checks(stats.outage, stats.all_in_seconds))
    return checks


def outage_checks(outage: OutageStats, all_in_seconds: float | None) -> list[Check]:
    """The broker outage: did it hit mid-run, and how did the service behave while it lasted."""
    name = "invoices waiting for a result when the broker stopped"
    if outage.started_at is None:
        return [Check(name, "> 0", f"never started: {outage.not_started}", False)]
    checks = [Check(name, "> 0", str(outage.pending_invoices), outage.pending_invoices > 0)]
    down = outage.down_seconds
    checks.append(
        Check(
            f"broker down ({outage.signal}, then started again)",
            f"{outage.planned_seconds:g}s + start",
            "never back" if down is None else f"{down:.1f}s",
            False if down is None else None,
        )
    )

    def per_replica(values: dict[str, float], form: str) -> str:
        return ", ".join(f"{name} {form.format(value)}" for name, value in sorted(values.items()))

    minutes = (down if down is not None else outage.log_window_seconds) / 60
    bound = math.ceil(LOG_LINES_PER_MINUTE * minutes)
    worst_lines = max(outage.log_lines.values(), default=0)
    cut = "" if outage.log_window_complete else ", window cut short"
    checks.append(
        Check(
            "log lines of the service during the outage",
            f"<= {bound}/replica ({LOG_LINES_PER_MINUTE}/min down)",
            f"max {worst_lines} ({per_replica(dict(outage.log_lines), '{:.0f}')}) in "
            f"{outage.log_window_seconds:.0f}s{cut}",
            worst_lines <= bound,
        )
    )
    if outage.cpu_cores:
        worst_cpu = max(outage.cpu_cores.values())
        checks.append(
            Check(
                "CPU of the service while the broker was away",
                f"<= {IDLE_CPU_CORES:.2f} core/replica",
                f"max {worst_cpu:.3f} ({per_replica(outage.cpu_cores, '{:.3f}')}) "
                f"over {outage.away_seconds:.0f}s",
                worst_cpu <= IDLE_CPU_CORES,
            )
        )
    else:
        checks.append(
            Check(
                "CPU of the service while the broker was away",
                f"<= {IDLE_CPU_CORES:.2f} core/replica",
                f"not measured: away {outage.away_seconds:.1f}s",
                None,
            )
        )
    if outage.back_at is None:
        recovered = "-"
    elif all_in_seconds is None:
        recovered = "never (timed out)"
    else:
        recovered = f"{max(0.0, all_in_seconds - outage.back_at):.1f}s"
    if outage.first_result_after_back is not None:
        recovered += f" (first result {outage.first_result_after_back:.1f}s)"
    checks.append(Check("time from broker back to every result in", "-", recovered, None))
    return checks


def check_options(options: ChaosOptions) -> None:
    """The combinations a run cannot honour, refused with a one-line :class:`ChaosError`."""
    if not 1 <= options.replicas <= MAX_REPLICAS:
        raise ChaosError(f"--replicas must be between 1 and {MAX_REPLICAS}")
    if options.replicas > 1 and options.ledger != "postgres":
        raise ChaosError(
            f"--replicas {options.replicas} needs --ledger postgres: the SQLite ledger is one file "
            "for a single instance"
        )
    if options.broker_outage < 0 or options.outage_after < 0:
        raise ChaosError("--broker-outage and --outage-after cannot be negative")
    if options.broker_outage > 0 and options.kafka_bootstrap:
        raise ChaosError(
            "--broker-outage stops and restarts the run's own broker: drop --kafka-bootstrap and "
            "unset KAFKA_BOOTSTRAP_SERVERS"
        )
    if not 0 <= options.conflict_share <= 0.5:
        raise ChaosError("--conflicts must be a share between 0 and 0.5")


async def run_chaos(options: ChaosOptions, console: Console | None = None) -> int:
    """The chaos run; 0 if every check passed, 1 if not. SIGTERM stops it as Ctrl-C does, with
    everything it started stopped."""
    console = console or Console()
    if options.invoices < 1:
        raise ChaosError("--invoices must be at least 1")
    if not 0 < options.kill_every_min <= options.kill_every_max:
        raise ChaosError("need 0 < --kill-every-min <= --kill-every-max")
    check_options(options)
    loop = asyncio.get_running_loop()
    chaos = ChaosRun(options, console)
    # The run is a task of its own, which SIGTERM and Ctrl-C cancel; what it started is stopped
    # from here too, by a task that was not cancelled (so no await of the clean-up is cut short).
    work = asyncio.create_task(chaos.run(), name="chaos-run")
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, work.cancel)
    try:
        return await work
    except asyncio.CancelledError:
        console.print("[red]chaos run interrupted[/]")
        return 130
    finally:
        try:
            await chaos.clean_up()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
