"""The end-to-end demo: a Kafka broker, the Amili emulator and the service, fed with sample invoices;
each result is printed as it arrives, then everything is shut down.

The broker is the one at ``KAFKA_BOOTSTRAP_SERVERS`` when it is set (the demo's topics and group then
get a name of their own, so that an earlier run's records are not read again), otherwise a local
broker started for the demo and removed after it (``devkit/harness.py``, as the chaos run and the
benchmarks start theirs). The emulator and the service run in this process."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import tempfile
import uuid
from importlib import resources
from pathlib import Path
from typing import Any

from aiokafka import ConsumerRecord, TopicPartition
from pydantic import SecretStr
from rich.console import Console
from rich.live import Live
from rich.table import Table

from devkit.emulator.server import serve_emulator
from devkit.emulator.settings import DEMO_API_KEY, EmulatorSettings
from devkit.harness import TopicReader, Topics, broker, create_run_topics
from devkit.localkafka import default_version, free_port
from devkit.produce import produce
from service.bootstrap import build_registrar
from service.config import Settings
from service.operator.event_files import read_events

RESULT_TIMEOUT_SECONDS = 90.0
PARTITIONS = 3


def sample_events_path() -> Path:
    return Path(str(resources.files("service.examples").joinpath("invoices.ndjson")))


def demo_topics(given_broker: bool) -> Topics:
    """The service's default topic names on the demo's own broker; on a given one, names of this
    run's own."""
    defaults = Settings.model_construct()
    suffix = f"-demo-{uuid.uuid4().hex[:8]}" if given_broker else ""
    return Topics(
        inbound=defaults.invoice_created_topic + suffix,
        results=defaults.registration_result_topic + suffix,
        dead_letters=defaults.dead_letter_topic + suffix,
        group="amili-registrar-demo" + suffix,
    )


async def run_demo(*, kafka_version: str | None = None, events_file: Path | None = None) -> int:
    # Piped output has no width of its own; give the table room rather than 80 columns.
    console = Console() if sys.stdout.isatty() else Console(width=180)
    # The table is the demo's output; the service's own logs would only interleave with it.
    logging.getLogger("service").setLevel(logging.WARNING)
    events = read_events(events_file or sample_events_path())
    given = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if given:
        console.print(f"[bold]Using the Kafka broker at {given}[/] (KAFKA_BOOTSTRAP_SERVERS)")
    else:
        version = kafka_version or default_version()
        console.print(f"[bold]Starting Apache Kafka {version}[/] (first run downloads its jars)…")
    topics = demo_topics(bool(given))
    try:
        async with broker("demo", given, version=kafka_version) as kafka:
            bootstrap = kafka.bootstrap
            with tempfile.TemporaryDirectory(prefix="amili-registrar-demo-") as workdir:
                emulator_settings = EmulatorSettings(port=free_port(), api_keys=[DEMO_API_KEY])
                async with serve_emulator(emulator_settings) as (amili_url, _):
                    console.print(f"Kafka at {bootstrap}, Amili emulator at {amili_url}")
                    settings = Settings(
                        kafka_bootstrap_servers=bootstrap,
                        invoice_created_topic=topics.inbound,
                        registration_result_topic=topics.results,
                        dead_letter_topic=topics.dead_letters,
                        consumer_group_id=topics.group,
                        amili_base_url=amili_url,
                        amili_api_key=SecretStr(DEMO_API_KEY),
                        shutdown_grace_seconds=5,
                        ledger_url=SecretStr(f"sqlite:///{workdir}/ledger.db"),
                    )
                    await create_run_topics(bootstrap, topics, PARTITIONS)
                    registrar = build_registrar(settings)
                    async with registrar.app:
                        await produce(bootstrap, topics.inbound, events)
                        received = await _show_results(console, bootstrap, topics.results, len(events))
        console.print(f"{received} of {len(events)} results received; shutting down.")
        return 0 if received == len(events) else 1
    finally:
        console.print("Everything stopped.")


async def _show_results(console: Console, bootstrap: str, topic: str, expected: int) -> int:
    table = _results_table()
    received = 0

    def take(record: ConsumerRecord[Any, Any]) -> None:
        nonlocal received
        _add_row(table, json.loads(record.value))
        received += 1

    reader = TopicReader(
        bootstrap, [TopicPartition(topic, p) for p in range(PARTITIONS)], take, name="demo-results"
    )
    await reader.start()
    try:
        with Live(table, console=console, refresh_per_second=8):
            loop = asyncio.get_running_loop()
            deadline = loop.time() + RESULT_TIMEOUT_SECONDS
            while received < expected and loop.time() < deadline:
                await reader.next_batch(0.5)
        if not console.is_terminal:
            console.line()  # a table rendered once, to a pipe, ends without one
    finally:
        await reader.stop()
    return received


def _results_table() -> Table:
    table = Table(title="registration-result", expand=False)
    for column in ("invoice", "outcome", "case id", "OCR number"):
        table.add_column(column, no_wrap=True)
    table.add_column("reason", overflow="fold", min_width=30)
    return table


def _add_row(table: Table, event: dict[str, Any]) -> None:
    data = event.get("data", {})
    amili = data.get("amili") or {}
    reasons = "; ".join(f"{r['field']}: {r['message']}" for r in data.get("reasons", []))
    style = {"registered": "green", "rejected": "yellow"}.get(data.get("outcome", ""), "red")
    table.add_row(
        data.get("invoice_number", "?"),
        f"[{style}]{data.get('outcome', '?')}[/]",
        amili.get("_case", ""),
        amili.get("ocr_number_ocr", ""),
        reasons,
    )
