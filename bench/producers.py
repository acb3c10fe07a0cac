"""What one transactional producer per consumed partition costs (``KAFKA_TRANSACTIONS=true``): the
service's memory, idle CPU and broker connections against the number of partitions it consumes,
with and without transactions. (A benchmark, not a test.)

For each partition count (``--partitions``, default 6,24,96) and each mode, the service runs as its
own process on a fresh topic of that many partitions, alone in its group; once it holds every
partition (its transactional producers all initialised), it is watched idle for ``--seconds``:
RSS at the end, CPU per second over the window, and its TCP connections to the broker. Then
``--events`` events go through it (the Amili emulator answering at once), and the RSS after them is
read too.

    .venv/bin/python -m bench.producers                      # about 3 minutes

Uses ``KAFKA_BOOTSTRAP_SERVERS`` when set, else starts a local broker and stops it at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.table import Table

from bench.workload import EventFactory, load_templates, produce_backlog
from devkit.harness import Child, Topics, broker, emulator, service_command, service_env
from devkit.localkafka import free_port
from devkit.produce import create_topics


@dataclass(frozen=True)
class Figures:
    partitions: int
    transactions: bool
    producers: int
    rss_idle_mb: float
    cpu_idle: float  # share of one core
    connections: int
    rss_after_mb: float
    seconds_to_assign: float


async def _metric(http: httpx.AsyncClient, name: str) -> float | None:
    try:
        text = (await http.get("/metrics")).text
    except httpx.HTTPError:
        return None
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                return float(sample.value)
    return None


async def _consumed(http: httpx.AsyncClient) -> float:
    """Events handled so far, whatever their outcome."""
    text = (await http.get("/metrics")).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "registrar_events_consumed_total"
    )


def _log(workdir: str, name: str) -> Path:
    return Path(workdir) / f"{name}.log"


async def measure(
    bootstrap: str,
    amili_url: str,
    partitions: int,
    transactions: bool,
    seconds: float,
    events: int,
    workdir: str,
) -> Figures:
    tag = f"producers-{uuid.uuid4().hex[:6]}-{partitions}-{'tx' if transactions else 'plain'}"
    topics = {f"{tag}-in": partitions, f"{tag}-results": 6, f"{tag}-dead": 1}
    await create_topics(bootstrap, topics)
    port = free_port()
    env = service_env(
        bootstrap,
        Topics(
            inbound=f"{tag}-in", results=f"{tag}-results", dead_letters=f"{tag}-dead", group=f"{tag}-group"
        ),
        amili_url,
        ledger_url=f"sqlite:///{workdir}/{tag}.db",
        max_in_flight=128,
        tuning={"HTTP_PORT": str(port), "KAFKA_TRANSACTIONS": "true" if transactions else "false"},
    )
    started = time.monotonic()
    child = Child.start(tag, service_command("run"), env, _log(workdir, tag))
    try:
        service = psutil.Process(child.pid)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:
            deadline = time.monotonic() + 120
            while True:
                if not child.running:
                    raise RuntimeError(f"the service exited: see {_log(workdir, tag)}")
                if transactions:
                    ready = await _metric(http, "registrar_kafka_transactional_producers") == partitions
                else:
                    ready = (await _metric(http, "registrar_kafka_broker_up")) == 1 and (
                        (await http.get("/readyz")).status_code == 200
                    )
                if ready:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError("the service did not take its partitions in 120 s")
                await asyncio.sleep(0.2)
            assigned = time.monotonic() - started
            await asyncio.sleep(2.0)  # the start's own work done
            before = service.cpu_times()
            await asyncio.sleep(seconds)
            after = service.cpu_times()
            cpu = (after.user + after.system - before.user - before.system) / seconds
            rss_idle = service.memory_info().rss / 2**20
            _, _, broker_port = bootstrap.partition(",")[0].rpartition(":")
            connections = sum(
                1
                for connection in service.net_connections(kind="tcp")
                if connection.raddr and connection.raddr.port == int(broker_port)
            )
            producers = int(await _metric(http, "registrar_kafka_transactional_producers") or 0)
            factory = EventFactory(load_templates(), f"PR{partitions}{'T' if transactions else 'P'}")
            await produce_backlog(bootstrap, f"{tag}-in", factory, events, lambda _: None)
            for _ in range(240):  # two minutes at most
                if await _consumed(http) >= events:
                    break
                await asyncio.sleep(0.5)
            rss_after = service.memory_info().rss / 2**20
    finally:
        await child.stop()
    return Figures(partitions, transactions, producers, rss_idle, cpu, connections, rss_after, assigned)


async def main_async(
    partition_counts: list[int], seconds: float, events: int, console: Console
) -> list[Figures]:
    workdir = tempfile.mkdtemp(prefix="bench-producers-")
    figures: list[Figures] = []
    async with (
        broker("bench-producers", os.environ.get("KAFKA_BOOTSTRAP_SERVERS")) as kafka,
        emulator({"AMILI_EMULATOR_ACCESS_LOG": "false"}, _log(workdir, "emulator")) as amili,
    ):
        bootstrap, amili_url = kafka.bootstrap, amili.url
        for partitions in partition_counts:
            for transactions in (False, True):
                found = await measure(
                    bootstrap, amili_url, partitions, transactions, seconds, events, workdir
                )
                console.print(found)
                figures.append(found)
    table = Table(title="one transactional producer per consumed partition: what it costs")
    for header in (
        "partitions", "transactions", "producers", "RSS idle MB", "CPU idle (core)",
        "connections to the broker", f"RSS after {events} events MB", "s to take the partitions",
    ):  # fmt: skip
        table.add_column(header)
    for f in figures:
        table.add_row(
            str(f.partitions), "on" if f.transactions else "off", str(f.producers), f"{f.rss_idle_mb:.0f}",
            f"{f.cpu_idle:.3f}", str(f.connections), f"{f.rss_after_mb:.0f}", f"{f.seconds_to_assign:.1f}",
        )  # fmt: skip
    console.print(table)
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.producers", description=__doc__.splitlines()[0])
    parser.add_argument("--partitions", default="6,24,96", help="partition counts, comma separated")
    parser.add_argument("--seconds", type=float, default=10.0, help="idle window per run")
    parser.add_argument("--events", type=int, default=2000, help="events through the service after it")
    args = parser.parse_args()
    counts = [int(part) for part in args.partitions.split(",") if part]
    asyncio.run(main_async(counts, args.seconds, args.events, Console(width=200)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
