"""Helpers for tests against the real broker: settings, producing and reading records, committed
offsets, the emulator's faults, the service as its own process, and polling."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import inspect
import json
import os
import subprocess
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from pydantic import SecretStr

from devkit.emulator.settings import DEMO_API_KEY
from devkit.localkafka import free_port
from service.config import Settings


def settings_for(bootstrap: str, amili_url: str, suffix: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "kafka_bootstrap_servers": bootstrap,
        "amili_base_url": amili_url,
        "amili_api_key": SecretStr(DEMO_API_KEY),
        "invoice_created_topic": f"invoice-created-{suffix}",
        "registration_result_topic": f"registration-result-{suffix}",
        "dead_letter_topic": f"dead-letter-{suffix}",
        "consumer_group_id": f"registrar-{suffix}",
        "shutdown_grace_seconds": 1.0,
        "retry_initial_seconds": 0.05,
        "retry_max_seconds": 0.5,
        "ledger_url": SecretStr(f"sqlite:///{tempfile.gettempdir()}/ledger-{suffix}.db"),
        # Not the default 0.0.0.0:8000, which any other service on the machine may hold.
        "http_host": "127.0.0.1",
        "http_port": free_port(),
        # Tests name topics of their own and often start the service before producing to them.
        "kafka_allow_auto_create_topics": True,
    }
    values.update(overrides)
    return Settings(**values)


@contextlib.asynccontextmanager
async def kafka_producer(bootstrap: str, **options: Any) -> AsyncIterator[AIOKafkaProducer]:
    """A started producer (all replicas acknowledge, idempotent), for records as they are."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, **options)
    await producer.start()
    try:
        yield producer
    finally:
        await producer.stop()


async def read_records(
    bootstrap: str,
    *topics: str,
    count: int,
    wait_seconds: float = 30.0,
    isolation_level: str = "read_uncommitted",
) -> list[ConsumerRecord[bytes, bytes]]:
    """The first ``count`` records of ``topics``, from the start and as they are (fewer if
    ``wait_seconds`` pass first); ``read_committed``: only those of committed transactions."""
    consumer = AIOKafkaConsumer(
        *topics,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        group_id=None,
        isolation_level=isolation_level,
    )
    await consumer.start()
    found: list[ConsumerRecord[bytes, bytes]] = []
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_seconds
        while len(found) < count and loop.time() < deadline:
            for records in (await consumer.getmany(timeout_ms=200)).values():
                found.extend(records)
    finally:
        await consumer.stop()
    return found


async def read_topic(
    bootstrap: str, topic: str, count: int, wait_seconds: float = 30.0
) -> list[dict[str, Any]]:
    """The first ``count`` JSON values of ``topic`` (fewer if ``wait_seconds`` pass first)."""
    records = await read_records(bootstrap, topic, count=count, wait_seconds=wait_seconds)
    return [json.loads(record.value) for record in records]


async def committed(bootstrap: str, group: str, topic: str, partitions: int) -> dict[int, int | None]:
    """The offset ``group`` committed on each partition of ``topic`` (``None``: nothing yet)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        return {p: await consumer.committed(TopicPartition(topic, p)) for p in range(partitions)}
    finally:
        await consumer.stop()


async def committed_offset(bootstrap: str, group: str, topic: str) -> int | None:
    """The offset ``group`` committed on partition 0 of ``topic``."""
    return (await committed(bootstrap, group, topic, 1))[0]


async def set_faults(amili_url: str, **faults: Any) -> None:
    """Changes the named fault settings of the emulator at ``amili_url`` (the others stay)."""
    async with httpx.AsyncClient(base_url=amili_url) as http:
        response = await http.patch("/_admin/faults", json=faults)
        response.raise_for_status()


def numbered(event: dict[str, Any], number: str, event_id: str | None = None) -> dict[str, Any]:
    """A copy of ``event`` for invoice ``number``, with its own event id."""
    copied = copy.deepcopy(event)
    copied["data"]["invoice_number"] = number
    copied["id"] = event_id or f"evt-{number}"
    return copied


@contextlib.asynccontextmanager
async def fresh_ledger_url(kind: str, tmp_path: Path, postgres_dsn: Callable[[], str]) -> AsyncIterator[str]:
    """A LEDGER_URL of an empty ledger: a SQLite file, or a PostgreSQL database of its own."""
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path}/ledger.db"
        return
    import asyncpg

    dsn = postgres_dsn()
    name = f"registrar_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    base, _, _ = dsn.rpartition("/")
    try:
        yield f"{base}/{name}"
    finally:
        admin = await asyncpg.connect(dsn)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


def service_process(settings: Settings, log_file: Path) -> subprocess.Popen[bytes]:
    """The service as its own process (``python -m service run``), configured like ``settings``."""
    env = {**os.environ, "LOG_LEVEL": "INFO"}
    for name, value in settings.model_dump().items():
        if value is None:
            continue
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        env[name.upper()] = str(value)
    with log_file.open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "service", "run"], env=env, stdout=log, stderr=subprocess.STDOUT
        )


async def wait_for(condition: Callable[[], bool | Awaitable[bool]], wait_seconds: float = 30.0) -> None:
    """Polls ``condition`` (plain or async) until it holds; fails after ``wait_seconds``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_seconds
    while True:
        held = condition()
        if inspect.isawaitable(held):
            held = await held
        if held:
            return
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)
