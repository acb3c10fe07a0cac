"""Helpers for tests against the real broker: unique topics, settings, reading results."""

from __future__ import annotations

import asyncio
import json
import tempfile
from typing import Any

from aiokafka import AIOKafkaConsumer
from pydantic import SecretStr

from service.config import DEMO_API_KEY, Settings


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
