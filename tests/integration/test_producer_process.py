"""KAFKA_TRANSACTION_PRODUCERS=process on a real broker: the producers' process killed under a
running service, and the service stopped or killed under its producers' process."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
from collections import Counter
from pathlib import Path
from typing import Any

import psutil
import pytest
from pydantic import SecretStr

from devkit.emulator.app import Emulator
from devkit.produce import produce
from service.bootstrap import build_registrar
from service.kafka.producer_process import CHILD_MODULE
from tests.integration.harness import (
    committed,
    numbered,
    read_records,
    service_process,
    settings_for,
    wait_for,
)

pytestmark = pytest.mark.kafka


def producer_processes(parent: psutil.Process) -> list[psutil.Process]:
    return [child for child in parent.children(recursive=True) if CHILD_MODULE in " ".join(child.cmdline())]


async def test_a_killed_producers_process_is_replaced_and_nothing_is_published_twice(
    kafka_bootstrap_servers: str,
    emulator: tuple[str, Emulator],
    sample_events: list[dict[str, Any]],
    unique_name: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    amili_url, amili = emulator
    settings = settings_for(
        kafka_bootstrap_servers,
        amili_url,
        unique_name,
        kafka_transactions=True,
        kafka_transaction_producers="process",
    )
    topic, group = settings.invoice_created_topic, settings.consumer_group_id
    first = [numbered(sample_events[0], f"PP-{n}") for n in range(10)]
    second = [numbered(sample_events[0], f"PP-{n}") for n in range(10, 20)]
    await produce(kafka_bootstrap_servers, topic, first, show_progress=False)

    caplog.set_level(logging.INFO, logger="service")
    async with build_registrar(settings).app:

        async def committed_up_to(offset: int) -> bool:
            return (await committed(kafka_bootstrap_servers, group, topic, 1))[0] == offset

        await wait_for(lambda: committed_up_to(10))
        [child] = producer_processes(psutil.Process())
        child.kill()
        await wait_for(lambda: "the transactional producers' process exited" in caplog.text)

        await produce(kafka_bootstrap_servers, topic, second, show_progress=False)
        await wait_for(lambda: committed_up_to(20), wait_seconds=60)
        [replacement] = producer_processes(psutil.Process())
        assert replacement.pid != child.pid

    results = await read_records(
        kafka_bootstrap_servers,
        settings.registration_result_topic,
        count=40,
        wait_seconds=3,
        isolation_level="read_committed",
    )
    numbers = Counter(json.loads(record.value)["data"]["invoice_number"] for record in results)
    assert numbers == Counter({f"PP-{n}": 1 for n in range(20)})
    assert len(amili.store.all()) == 20
    assert producer_processes(psutil.Process()) == []  # stopped with the service


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL], ids=["stopped", "killed"])
async def test_the_producers_process_ends_with_the_service(
    kafka_bootstrap_servers: str,
    emulator: tuple[str, Emulator],
    sample_events: list[dict[str, Any]],
    unique_name: str,
    tmp_path: Path,
    stop: signal.Signals,
) -> None:
    amili_url, _ = emulator
    settings = settings_for(
        kafka_bootstrap_servers,
        amili_url,
        unique_name,
        kafka_transactions=True,
        kafka_transaction_producers="process",
        ledger_url=SecretStr(f"sqlite:///{tmp_path}/ledger.db"),
    )
    topic, group = settings.invoice_created_topic, settings.consumer_group_id
    await produce(
        kafka_bootstrap_servers,
        topic,
        [numbered(sample_events[0], f"END-{n}") for n in range(5)],
        show_progress=False,
    )
    process = service_process(settings, tmp_path / "service.log")
    try:

        async def all_committed() -> bool:
            return (await committed(kafka_bootstrap_servers, group, topic, 1))[0] == 5

        await wait_for(all_committed, wait_seconds=60)
        [child] = producer_processes(psutil.Process(process.pid))
        process.send_signal(stop)
        await asyncio.to_thread(process.wait, 30)
        await asyncio.to_thread(child.wait, 10)  # raises psutil.TimeoutExpired if it lingers
    finally:
        process.kill()
        process.wait()
    assert not child.is_running()
    if stop == signal.SIGTERM:
        assert process.returncode == 0
