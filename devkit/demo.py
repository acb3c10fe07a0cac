"""The end-to-end demo: a local Kafka broker, the Amili emulator and the service, fed with sample
invoices; each result is printed as it arrives, then everything is shut down."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import tempfile
from importlib import resources
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer
from pydantic import SecretStr
from rich.console import Console
from rich.live import Live
from rich.table import Table

from devkit.emulator.server import serve_emulator
from devkit.emulator.settings import DEMO_API_KEY, EmulatorSettings
from devkit.localkafka import LocalKafka, default_version, free_port
from devkit.produce import create_topics, produce
from service.bootstrap import build_registrar
from service.config import Settings
from service.operator.event_files import read_events

RESULT_TIMEOUT_SECONDS = 90.0


def sample_events_path() -> Path:
    return Path(str(resources.files("service.examples").joinpath("invoices.ndjson")))


async def run_demo(*, kafka_version: str | None = None, events_file: Path | None = None) -> int:
    # Piped output has no width of its own; give the table room rather than 80 columns.
    console = Console() if sys.stdout.isatty() else Console(width=180)
    # The table is the demo's output; the service's own logs would only interleave with it.
    logging.getLogger("service").setLevel(logging.WARNING)
    events = read_events(events_file or sample_events_path())
    kafka = LocalKafka(name="demo", version=kafka_version or default_version())
    console.print(f"[bold]Starting Apache Kafka {kafka.version}[/] (first run downloads its jars)…")
    bootstrap = await asyncio.to_thread(kafka.start)
    workdir = tempfile.TemporaryDirectory(prefix="amili-registrar-demo-")
    try:
        emulator_settings = EmulatorSettings(port=free_port(), api_keys=[DEMO_API_KEY])
        async with serve_emulator(emulator_settings) as (amili_url, _):
            console.print(f"Kafka at {bootstrap}, Amili emulator at {amili_url}")
            settings = Settings(
                kafka_bootstrap_servers=bootstrap,
                amili_base_url=amili_url,
                amili_api_key=SecretStr(DEMO_API_KEY),
                consumer_group_id="amili-registrar-demo",
                shutdown_grace_seconds=5,
                ledger_url=SecretStr(f"sqlite:///{workdir.name}/ledger.db"),
            )
            await create_topics(
                bootstrap,
                {
                    settings.invoice_created_topic: 3,
                    settings.registration_result_topic: 3,
                    settings.dead_letter_topic: 1,
                },
            )
            registrar = build_registrar(settings)
            async with registrar.app:
                await produce(bootstrap, settings.invoice_created_topic, events)
                received = await _show_results(console, settings, len(events))
        console.print(f"{received} of {len(events)} results received; shutting down.")
        return 0 if received == len(events) else 1
    finally:
        workdir.cleanup()
        await asyncio.to_thread(kafka.stop)
        console.print("Everything stopped.")


async def _show_results(console: Console, settings: Settings, expected: int) -> int:
    consumer = AIOKafkaConsumer(
        settings.registration_result_topic,
        bootstrap_servers=settings.kafka_bootstrap_servers,
        auto_offset_reset="earliest",
        group_id=None,
    )
    await consumer.start()
    table = _results_table()
    received = 0
    try:
        with Live(table, console=console, refresh_per_second=8):
            loop = asyncio.get_running_loop()
            deadline = loop.time() + RESULT_TIMEOUT_SECONDS
            while received < expected and loop.time() < deadline:
                batches = await consumer.getmany(timeout_ms=500)
                for records in batches.values():
                    for record in records:
                        _add_row(table, json.loads(record.value))
                        received += 1
    finally:
        await consumer.stop()
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
