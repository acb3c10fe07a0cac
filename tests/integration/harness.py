"""Helpers for tests against the real broker: unique topics, settings, reading results."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer
from pydantic import SecretStr

from service.config import DEMO_API_KEY, Settings
from service.localkafka import free_port


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
    }
    values.update(overrides)
    return Settings(**values)


async def read_topic(
    bootstrap: str, topic: str, count: int, wait_seconds: float = 30.0
) -> list[dict[str, Any]]:
    """The first ``count`` JSON values of ``topic`` (fewer if ``wait_seconds`` pass first)."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None
    )
    await consumer.start()
    found: list[dict[str, Any]] = []
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_seconds
        while len(found) < count and loop.time() < deadline:
            batches = await consumer.getmany(timeout_ms=200)
            for records in batches.values():
                found.extend(json.loads(record.value) for record in records)
    finally:
        await consumer.stop()
    return found


async def committed_offset(bootstrap: str, group: str, topic: str) -> int | None:
    from aiokafka import TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        return await consumer.committed(TopicPartition(topic, 0))  # type: ignore[no-any-return]
    finally:
        await consumer.stop()


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
    env = {**os.environ, "LOG_LEVEL": "INFO", "HTTP_PORT": str(free_port()), "HTTP_HOST": "127.0.0.1"}
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


async def wait_for(condition: Callable[[], Awaitable[bool]], wait_seconds: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_seconds
    while not await condition():
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.1)
