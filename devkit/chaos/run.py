"""Running a chaos run: the broker, the emulator and the service replicas, the sending, the kills
and the broker outage, then the verdict and its report (``run_chaos``; see ``devkit.chaos``)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import signal
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from rich.console import Console
from rich.table import Table

from devkit.chaos.plan import CONFLICT, Plan, plan_events, sample_templates
from devkit.chaos.processes import MARKER, CpuSampler, Replica, file_size, lines_since
from devkit.chaos.topics import TopicWatcher, run_topics
from devkit.chaos.verdict import (
    AmiliRecords,
    Check,
    Observed,
    OutageStats,
    RunStats,
    emulator_answers,
    evaluate,
)
from devkit.harness import (
    Child,
    Emulator,
    HarnessError,
    close_quietly,
    create_run_topics,
    local_broker,
    remove_broker,
    service_command,
    service_env,
    start_emulator,
)
from devkit.localkafka import LocalKafka, LocalKafkaError, free_port, project_root
from devkit.postgres import PostgresUnavailable, scratch_database

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
STALL_SECONDS = 90.0  # a life that shows no work for this long is reported, then killed anyway
SETTLE_SECONDS = 60.0  # after the last result: how long the service may take to commit everything
TIMED_OUT_SETTLE_SECONDS = 10.0  # the same when the run timed out: a look at the lag, no more
# The broker outage: how long it is watched once the broker is back, how long its stop and start take.
LOG_WINDOW_AFTER_BACK = 30.0  # log lines are counted from the stop until this long after it is back
BROKER_STOP_SECONDS = 60.0  # SIGTERM: how long the controlled shutdown may take before SIGKILL
BROKER_START_SECONDS = 120.0
PORT_BUSY_RETRY_SECONDS = 30.0  # a restart finding its port held retries this long
MAX_REPLICAS = 16


class ChaosError(HarnessError):
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
    transactions: bool = False  # KAFKA_TRANSACTIONS=true; the topics read with read_committed
    freeze: float = 0.0  # seconds one replica is frozen (SIGSTOP, then SIGCONT); 0: none
    freeze_after: float = 10.0  # seconds after the first result or dead letter


@contextlib.asynccontextmanager
async def _postgres_ledger(admin_dsn: str | None, console: Console) -> AsyncIterator[str]:
    """A LEDGER_URL of a fresh PostgreSQL database, dropped afterwards (``devkit.postgres``)."""
    cluster = project_root() / ".cache" / "postgres"
    try:
        async with scratch_database("chaos", admin_dsn=admin_dsn, cluster=cluster, say=console.print) as url:
            yield url
    except PostgresUnavailable as unavailable:
        raise ChaosError(str(unavailable)) from None


class ChaosRun:
    def __init__(self, options: ChaosOptions, console: Console) -> None:
        self.options = options
        self.console = console
        self.tag = f"{options.seed}-{uuid.uuid4().hex[:6]}"
        self.topics = run_topics(self.tag)
        self.stats = RunStats(
            replicas=options.replicas, kills_enabled=options.kills, transactions=options.transactions
        )
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
        self.emulator: Emulator | None = None
        self.poison_sources: dict[tuple[int, int], str] = {}
        self.kafka: LocalKafka | None = None
        self.watcher: TopicWatcher | None = None
        self._t0 = time.monotonic()
        self._all_in = asyncio.Event()
        self._frozen: Replica | None = None
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

    @property
    def emulator_url(self) -> str:
        return self.emulator.url if self.emulator is not None else ""

    def _partitions(self) -> int:
        """Partitions of the run's event and result topics: at least one per replica."""
        return max(self.options.partitions, self.options.replicas)

    async def _start_emulator(self) -> None:
        faults = (
            EMULATOR_FAULTS
            if self.options.amili_faults
            else {name: value for name, value in EMULATOR_FAULTS.items() if "_LATENCY_" in name}
        )
        env = {
            **faults,
            **(OUTAGE_LATENCY if self.options.broker_outage > 0 else {}),
            "AMILI_EMULATOR_STORE_PATH": str(self.store_path),
            "AMILI_EMULATOR_FAULT_SEED": str(self.options.seed),
        }
        self.emulator = await start_emulator(env, self.emulator_log)

    def _service_env(self, bootstrap: str, ledger_url: str) -> dict[str, str]:
        return service_env(
            bootstrap,
            self.topics,
            self.emulator_url,
            ledger_url=ledger_url,
            max_in_flight=self.options.max_in_flight,
            tuning={**SERVICE_TUNING, "KAFKA_TRANSACTIONS": "true" if self.options.transactions else "false"},
        )

    def _start_replica(self, replica: Replica, env: dict[str, str]) -> None:
        self.stats.lives += 1
        replica.lives += 1
        with replica.log.open("a", encoding="utf-8") as log:
            log.write(
                f"{MARKER} life {replica.lives} of replica {replica.name} starts at {self.elapsed():.1f}s\n"
            )
        replica.process = Child.start(
            replica.name,
            service_command("run"),
            {**env, "HTTP_PORT": str(free_port())},
            replica.log,
            append=True,
        )
        replica.started = time.monotonic()

    def _revive(self, env: dict[str, str]) -> None:
        """Start again every replica that exited by itself (each one counted), as an orchestrator
        would."""
        for replica in self.replicas:
            process = replica.process
            if process is not None and not process.running:
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
            *(replica.process.stop(grace_seconds=grace) for replica in self.replicas if replica.process)
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
            # A frozen replica is left frozen: killing it would end the freeze the run is showing.
            candidates = [
                replica for replica in self.replicas if replica is not self._frozen
            ] or self.replicas
            victim = (
                candidates[self.kill_rng.randrange(len(candidates))] if len(candidates) > 1 else candidates[0]
            )
            process = victim.process
            assert process is not None
            await process.kill()
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

    async def _freeze(self, observed: Observed, deadline: float) -> None:
        """Freeze one replica (SIGSTOP) ``freeze_after`` s after the first result or dead letter,
        for ``freeze`` s, then let it go on (SIGCONT): past its session timeout the group gives its
        partitions to others, and what it held must not be committed when it wakes."""
        options = self.options
        while observed.activity == 0:
            if await self._wait(0.1) or time.monotonic() >= deadline:
                return
        if await self._wait(options.freeze_after):
            return
        running = [replica for replica in self.replicas if replica.running()]
        if not running:
            return
        victim = running[self.kill_rng.randrange(len(running))]
        process = victim.process
        assert process is not None
        os.kill(process.pid, signal.SIGSTOP)
        self._frozen = victim
        frozen_at = time.monotonic()
        self.say(
            f"froze replica {victim.name} (pid {process.pid}) for {options.freeze:g}s; "
            f"invoices with a result {len(observed.results)}"
        )
        try:
            await asyncio.sleep(options.freeze)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGCONT)
            self._frozen = None
        self.stats.frozen.append(time.monotonic() - frozen_at)
        self.say(f"woke replica {victim.name} (pid {process.pid})")

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
                TopicPartition(topic, n)
                for topic, count in self.topics.partitions(self._partitions()).items()
                for n in range(count)
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
        transactions = ", Kafka transactions (read_committed)" if options.transactions else ""
        if options.freeze > 0:
            transactions += f", one replica frozen {options.freeze:g}s"
        return (
            f"[bold]Chaos run[/] {self.tag}: {options.invoices} invoices, seed {options.seed}, {replicas}, "
            f"{kills}{outage}{transactions}, ledger {options.ledger}; files in {self.workdir}"
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
                        kafka = local_broker(f"chaos-{os.getpid()}")
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
                    await create_run_topics(bootstrap, self.topics, self._partitions())
                    await self._start_emulator()
                    console.print(f"Kafka at {bootstrap}, Amili emulator at {self.emulator_url}")
                    self.watcher = watcher = TopicWatcher(
                        bootstrap,
                        self.topics,
                        self.topics.partitions(self._partitions()),
                        read_committed=options.transactions,
                    )
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
                    freezing = (
                        asyncio.create_task(self._freeze(watcher.observed, deadline))
                        if options.freeze > 0
                        else None
                    )
                    tasks = [
                        task
                        for task in (completion, producing, supervising, outage, freezing)
                        if task is not None
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
            ("emulator", lambda: self.emulator.stop() if self.emulator else asyncio.sleep(0)),
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
            await self._broker_call(remove_broker, kafka)

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
    if options.freeze < 0 or options.freeze_after < 0:
        raise ChaosError("--freeze and --freeze-after cannot be negative")


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
