"""A Kafka outage longer than every client timeout pauses the service: against a broker of the
test's own, stopped mid-run and started again on the same data and port, the service (never
restarted) dead-letters no valid invoice, publishes every result, commits everything, registers
each invoice once, stays quiet and idle while it waits, and stops within its grace period."""

from __future__ import annotations

import asyncio
import copy
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from devkit.emulator.app import Emulator
from devkit.localkafka import LocalKafka, default_version
from devkit.produce import create_topics, produce
from service.config import Settings
from tests.integration.harness import (
    committed,
    kafka_producer,
    numbered,
    read_records,
    service_process,
    set_faults,
    settings_for,
    wait_for,
)

pytestmark = pytest.mark.kafka

PARTITIONS = 3
INVOICES = 120
# Longer than every client timeout below (request, delivery, session), so that every one of them
# expires while the broker is away.
OUTAGE_SECONDS = 15.0
TIMEOUTS = {"kafka_request_timeout_ms": 3000, "kafka_session_timeout_ms": 6000}
GRACE_SECONDS = 6.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _stable_ports(count: int) -> list[int]:
    """Free loopback ports below the ephemeral range: a client reconnecting to a stopped broker
    can otherwise be handed the broker's port as its own and connect to itself, and the broker
    then cannot bind it again."""
    rng = random.Random()
    ports: list[int] = []
    while len(ports) < count:
        port = rng.randrange(20000, 30000)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        if port not in ports:
            ports.append(port)
    return ports


@pytest.fixture
def own_broker() -> Iterator[LocalKafka]:
    port, controller_port = _stable_ports(2)
    broker = LocalKafka(
        name=f"outage-{uuid.uuid4().hex[:8]}",
        version=default_version(),
        port=port,
        controller_port=controller_port,
        keep_data=True,
    )
    broker.start(timeout=120.0)
    try:
        yield broker
    finally:
        broker.stop()
        shutil.rmtree(broker.run_dir, ignore_errors=True)


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime


def _log_lines(log_file: Path) -> int:
    return len(log_file.read_bytes().splitlines())


async def _get(url: str) -> tuple[int, str]:
    async with httpx.AsyncClient(timeout=5.0) as http:
        response = await http.get(url)
        return response.status_code, response.text


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not exported")


async def _results(bootstrap: str, topic: str) -> list[dict[str, Any]]:
    records = await read_records(bootstrap, topic, count=10**6, wait_seconds=2.0)
    return [json.loads(record.value) for record in records]


async def _end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await consumer.start()
    try:
        ends = await consumer.end_offsets([TopicPartition(topic, p) for p in range(PARTITIONS)])
        return {partition.partition: offset for partition, offset in ends.items()}
    finally:
        await consumer.stop()


def _settings(bootstrap: str, amili_url: str, suffix: str, tmp_path: Path, *, max_in_flight: int) -> Settings:
    return settings_for(
        bootstrap,
        amili_url,
        suffix,
        **TIMEOUTS,
        max_in_flight=max_in_flight,
        shutdown_grace_seconds=GRACE_SECONDS,
        amili_total_timeout_seconds=5.0,
        claim_lease_seconds=20.0,
        ledger_url=f"sqlite:///{tmp_path}/ledger.db",
    )


async def test_a_broker_outage_pauses_the_service_and_loses_nothing(
    own_broker: LocalKafka,
    emulator: tuple[str, Emulator],
    sample_events: list[dict[str, Any]],
    unique_name: str,
    tmp_path: Path,
) -> None:
    amili_url, amili = emulator
    bootstrap = own_broker.bootstrap_servers
    settings = _settings(bootstrap, amili_url, unique_name, tmp_path, max_in_flight=8)
    await create_topics(
        bootstrap,
        {
            settings.invoice_created_topic: PARTITIONS,
            settings.registration_result_topic: PARTITIONS,
            settings.dead_letter_topic: 1,
        },
    )
    # Slow enough that the outage finds invoices at Amili and results waiting to be published.
    await set_faults(amili_url, latency_ms=150)
    template = sample_events[2]
    invoices = [numbered(template, f"OUT-{n}") for n in range(INVOICES)]
    conflicts = []
    for n in (1, 2):
        other = copy.deepcopy(numbered(template, f"OUT-{n}", event_id=f"conflict-{n}"))
        other["data"]["headline"] = "other content under the same number"
        conflicts.append(other)
    await produce(bootstrap, settings.invoice_created_topic, invoices + conflicts, show_progress=False)
    async with kafka_producer(bootstrap) as producer:
        for n in range(2):  # poison: not JSON
            await producer.send_and_wait(settings.invoice_created_topic, b"{not json", key=f"p{n}".encode())

    log_file = tmp_path / "service.log"
    service = service_process(settings, log_file)
    base = f"http://127.0.0.1:{settings.http_port}"
    try:
        # Mid-run: some results out, many invoices still to go.
        await wait_for(lambda: len(amili.store.all()) >= 20, wait_seconds=60)
        await asyncio.to_thread(own_broker.stop)
        outage_started = time.monotonic()
        lines_before = _log_lines(log_file)

        await asyncio.sleep(OUTAGE_SECONDS / 3)  # past the request timeout: sends have failed by now
        cpu_before, cpu_from = _cpu_seconds(service.pid), time.monotonic()
        ready_status, ready_body = await _get(f"{base}/readyz")
        live_status, _ = await _get(f"{base}/healthz")
        _, metrics_during = await _get(f"{base}/metrics")
        await asyncio.sleep(OUTAGE_SECONDS - (time.monotonic() - outage_started))
        cpu_while_waiting = (_cpu_seconds(service.pid) - cpu_before) / (time.monotonic() - cpu_from)
        lines_during = _log_lines(log_file) - lines_before

        await asyncio.to_thread(own_broker.start, 120.0)
        back = time.monotonic()

        async def every_result_in() -> bool:
            results = await _results(bootstrap, settings.registration_result_topic)
            registered = {
                r["data"]["invoice_number"] for r in results if r["data"]["outcome"] == "registered"
            }
            conflicted = {
                r["data"]["inbound_event_id"] for r in results if r["data"]["outcome"] == "conflict"
            }
            return len(registered) == INVOICES and conflicted == {"conflict-1", "conflict-2"}

        await wait_for(every_result_in, wait_seconds=120)
        recovery_seconds = time.monotonic() - back

        ends = await _end_offsets(bootstrap, settings.invoice_created_topic)

        async def all_committed() -> bool:
            done = await committed(
                bootstrap, settings.consumer_group_id, settings.invoice_created_topic, PARTITIONS
            )
            return done == ends

        await wait_for(all_committed, wait_seconds=30)
        _, metrics_after = await _get(f"{base}/metrics")
        assert service.poll() is None, "the service exited"
    finally:
        service.send_signal(signal.SIGTERM)
        try:
            service.wait(timeout=30)
        except subprocess.TimeoutExpired:
            service.kill()
    log_text = log_file.read_text(errors="replace")

    # Paused, visibly, yet alive.
    assert ready_status == 503
    assert '"kafka": {"ok": false' in ready_body, ready_body
    assert live_status == 200
    assert _metric(metrics_during, "registrar_kafka_broker_up") == 0
    assert _metric(metrics_during, 'registrar_kafka_errors_total{operation="produce"}') >= 1
    # Quiet and idle while it waits (aiokafka's own loggers included).
    assert lines_during <= 60, log_text[-5000:]
    assert cpu_while_waiting <= 0.10, f"{cpu_while_waiting:.3f} of a core while the broker was away"
    # Back by itself, nothing lost, nothing dead-lettered that was valid, each invoice once at Amili.
    assert _metric(metrics_after, "registrar_kafka_broker_up") == 1
    dead_letters = await read_records(bootstrap, settings.dead_letter_topic, count=10**6, wait_seconds=2.0)
    rules = [dict(record.headers)["dlq.rule"].decode() for record in dead_letters]
    assert set(rules) == {"json"}, rules  # the poison only, perhaps twice (at least once)
    assert {record.key for record in dead_letters} == {b"p0", b"p1"}
    numbers = [registration["invoice_number"] for registration in amili.store.all()]
    assert len(numbers) == len(set(numbers)) == INVOICES
    assert recovery_seconds < 60
    assert "Task exception was never retrieved" not in log_text
    assert "OutOfOrderSequenceNumber" not in log_text


async def test_a_stop_while_the_broker_is_away_ends_within_the_grace_period(
    own_broker: LocalKafka,
    emulator: tuple[str, Emulator],
    sample_events: list[dict[str, Any]],
    unique_name: str,
    tmp_path: Path,
) -> None:
    amili_url, amili = emulator
    bootstrap = own_broker.bootstrap_servers
    settings = _settings(bootstrap, amili_url, unique_name, tmp_path, max_in_flight=4)
    await create_topics(bootstrap, {settings.invoice_created_topic: 1, settings.registration_result_topic: 1})
    await set_faults(amili_url, latency_ms=300)
    events = [numbered(sample_events[2], f"STOP-{n}") for n in range(40)]
    await produce(bootstrap, settings.invoice_created_topic, events, show_progress=False)
    log_file = tmp_path / "service.log"
    service = service_process(settings, log_file)
    try:
        await wait_for(lambda: len(amili.store.all()) >= 4, wait_seconds=60)
        await asyncio.to_thread(own_broker.stop)
        await asyncio.sleep(5.0)  # sends and commits are failing now, events wait in flight
        asked = time.monotonic()
        service.send_signal(signal.SIGTERM)
        await asyncio.to_thread(service.wait, GRACE_SECONDS + 10)
        took = time.monotonic() - asked
    finally:
        if service.poll() is None:
            service.kill()
    # The whole stop fits SHUTDOWN_GRACE_SECONDS; the interpreter's own exit adds a moment.
    assert took <= GRACE_SECONDS + 1.5, f"stopped after {took:.1f}s: {log_file.read_text()[-3000:]}"
    # uvicorn ends by raising the signal it stopped for again, once shut down.
    assert service.returncode in (0, -signal.SIGTERM), log_file.read_text()[-3000:]
    assert "Application shutdown complete" in log_file.read_text()
