"""The consumption engine on the real broker: concurrency, per-invoice order, safe commits,
backpressure, rebalances and shutdown. The processor is a stand-in: these tests are about how
events are fed and committed, not what is done with them."""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from functools import partial

import pytest
from aiokafka import AIOKafkaConsumer

from devkit.produce import create_topics
from service.events.record import InboundRecord
from service.kafka.engine import ConsumptionEngine
from service.processing import Handled, Prepared, Route
from tests.fakes import passed_on
from tests.integration.harness import committed, kafka_producer, wait_for

pytestmark = pytest.mark.kafka


class StandInProcessor:
    """Orders by the record key, takes a random short time, and records what it saw."""

    def __init__(self, *, seed: int = 7, max_delay: float = 0.02) -> None:
        self.rng = random.Random(seed)
        self.max_delay = max_delay
        self.order: dict[str, list[int]] = defaultdict(list)
        self.done: set[tuple[int, int]] = set()
        self.running = 0
        self.most_running = 0
        self.block: dict[tuple[int, int], asyncio.Event] = {}

    def route(self, record: InboundRecord) -> Route:
        return Route((record.key or b"").decode(), "")

    def prepare(self, record: InboundRecord) -> Prepared:
        return passed_on(record)

    async def handle(self, prepared: Prepared) -> Handled:
        record = prepared.record
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            gate = self.block.get((record.partition, record.offset))
            if gate is not None:
                await gate.wait()
            await asyncio.sleep(self.rng.uniform(0, self.max_delay))
            self.order[(prepared.record.key or b"").decode()].append(int(record.value or b"0"))
            self.done.add((record.partition, record.offset))
        finally:
            self.running -= 1
        return Handled(outcome=None)

    async def give_up(self, prepared: Prepared, error: BaseException) -> Handled:
        raise AssertionError(f"the stand-in never fails: {error!r}")


async def produce(bootstrap: str, topic: str, records: Sequence[tuple[bytes, bytes, int | None]]) -> None:
    async with kafka_producer(bootstrap, linger_ms=5) as producer:
        futures = [await producer.send(topic, value=v, key=k, partition=p) for k, v, p in records]
        await asyncio.gather(*futures)


@asynccontextmanager
async def running_engine(
    bootstrap: str, topic: str, group: str, processor: StandInProcessor, **options: float
) -> AsyncIterator[ConsumptionEngine]:
    consumer = partial(
        AIOKafkaConsumer,
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=10000,
        heartbeat_interval_ms=500,
    )
    settings: dict[str, float] = {"commit_interval_seconds": 0.2, "drain_seconds": 5.0} | options
    engine = ConsumptionEngine(
        consumer=consumer,
        topic=topic,
        processor=processor,
        max_events=int(settings.pop("max_events", 128)),
        **settings,  # type: ignore[arg-type]
    )
    await engine.start()
    try:
        yield engine
    finally:
        await engine.stop()


async def test_many_in_flight_with_per_invoice_order(kafka_bootstrap_servers: str, unique_name: str) -> None:
    topic, group = f"engine-order-{unique_name}", f"g-{unique_name}"
    await create_topics(kafka_bootstrap_servers, {topic: 3})
    # 40 invoices x 10 events, each invoice on one partition, sequence numbers as values.
    records = [(f"inv-{i}".encode(), str(n).encode(), i % 3) for n in range(10) for i in range(40)]
    await produce(kafka_bootstrap_servers, topic, records)
    processor = StandInProcessor()
    async with running_engine(kafka_bootstrap_servers, topic, group, processor, max_events=64) as engine:
        await wait_for(lambda: len(processor.done) == 400)
        await wait_for(lambda: engine.in_flight == 0)
    assert processor.most_running >= 8  # genuinely concurrent, more than the 3 partitions
    for key, sequence in processor.order.items():
        assert sequence == list(range(10)), key
    assert await committed(kafka_bootstrap_servers, group, topic, 3) == {0: 140, 1: 130, 2: 130}


async def test_commits_never_pass_an_unfinished_event(kafka_bootstrap_servers: str, unique_name: str) -> None:
    topic, group = f"engine-commit-{unique_name}", f"g-{unique_name}"
    await create_topics(kafka_bootstrap_servers, {topic: 1})
    await produce(kafka_bootstrap_servers, topic, [(f"k{n}".encode(), b"0", 0) for n in range(30)])
    processor = StandInProcessor()
    processor.block[(0, 7)] = asyncio.Event()
    async with running_engine(kafka_bootstrap_servers, topic, group, processor):
        await wait_for(lambda: len(processor.done) == 29)
        await asyncio.sleep(0.6)  # several commit intervals
        assert await committed(kafka_bootstrap_servers, group, topic, 1) == {0: 7}
        processor.block[(0, 7)].set()
        await wait_for(lambda: len(processor.done) == 30)
        await asyncio.sleep(0.6)
        assert await committed(kafka_bootstrap_servers, group, topic, 1) == {0: 30}


async def test_backpressure_keeps_the_window_bounded(kafka_bootstrap_servers: str, unique_name: str) -> None:
    topic, group = f"engine-window-{unique_name}", f"g-{unique_name}"
    await create_topics(kafka_bootstrap_servers, {topic: 2})
    await produce(kafka_bootstrap_servers, topic, [(f"k{n}".encode(), b"0", n % 2) for n in range(2000)])
    processor = StandInProcessor(max_delay=0.002)
    release = asyncio.Event()
    for offset in range(1000):
        processor.block[(0, offset)] = release
        processor.block[(1, offset)] = release
    most_in_flight = 0
    async with running_engine(kafka_bootstrap_servers, topic, group, processor, max_events=16) as engine:
        for _ in range(40):
            most_in_flight = max(most_in_flight, engine.in_flight)
            await asyncio.sleep(0.025)
        assert most_in_flight == 16  # filled, and never more
        assert processor.done == set()
        release.set()
        await wait_for(lambda: len(processor.done) == 2000)


async def test_shutdown_drains_what_it_can_and_commits_only_that(
    kafka_bootstrap_servers: str, unique_name: str
) -> None:
    topic, group = f"engine-stop-{unique_name}", f"g-{unique_name}"
    await create_topics(kafka_bootstrap_servers, {topic: 1})
    await produce(kafka_bootstrap_servers, topic, [(f"k{n}".encode(), b"0", 0) for n in range(10)])
    processor = StandInProcessor()
    processor.block[(0, 4)] = asyncio.Event()  # never released: abandoned at shutdown
    async with running_engine(kafka_bootstrap_servers, topic, group, processor, drain_seconds=0.5):
        await wait_for(lambda: len(processor.done) == 9)
    assert await committed(kafka_bootstrap_servers, group, topic, 1) == {0: 4}

    # The next run starts at the abandoned event and takes it (and only what follows) again.
    again = StandInProcessor()
    async with running_engine(kafka_bootstrap_servers, topic, group, again):
        await wait_for(lambda: len(again.done) == 6)
    assert again.done == {(0, offset) for offset in range(4, 10)}
    assert await committed(kafka_bootstrap_servers, group, topic, 1) == {0: 10}


async def test_a_rebalance_loses_nothing(kafka_bootstrap_servers: str, unique_name: str) -> None:
    topic, group = f"engine-rebalance-{unique_name}", f"g-{unique_name}"
    partitions = 4
    await create_topics(kafka_bootstrap_servers, {topic: partitions})
    total = 1200
    await produce(
        kafka_bootstrap_servers, topic, [(f"k{n}".encode(), b"0", n % partitions) for n in range(total)]
    )
    # The first is slow (about 160 events/s) so that the second joins while most are still to do.
    first, second = StandInProcessor(max_delay=0.1), StandInProcessor(max_delay=0.01, seed=8)
    async with running_engine(kafka_bootstrap_servers, topic, group, first, max_events=8):
        await wait_for(lambda: len(first.done) >= 100)
        async with running_engine(kafka_bootstrap_servers, topic, group, second, max_events=32):
            await wait_for(lambda: len(first.done | second.done) == total, wait_seconds=60)
            await asyncio.sleep(0.5)
    assert second.done, "the second instance never received partitions"
    assert first.done | second.done == {(n % partitions, n // partitions) for n in range(total)}
    offsets = await committed(kafka_bootstrap_servers, group, topic, partitions)
    assert offsets == {p: total // partitions for p in range(partitions)}


async def test_a_window_full_for_long_pauses_fetching_and_resumes_after(
    kafka_bootstrap_servers: str, unique_name: str
) -> None:
    topic, group = f"engine-pause-{unique_name}", f"g-{unique_name}"
    await create_topics(kafka_bootstrap_servers, {topic: 2})
    await produce(kafka_bootstrap_servers, topic, [(f"k{n}".encode(), b"0", n % 2) for n in range(40)])
    processor = StandInProcessor(max_delay=0.001)
    gates = {(p, o): asyncio.Event() for p in range(2) for o in range(2)}
    processor.block.update(gates)  # the first two events of each partition hang
    async with running_engine(
        kafka_bootstrap_servers, topic, group, processor, max_events=4, pause_after_seconds=1.0
    ) as engine:
        consumer = engine._consumer
        await wait_for(lambda: processor.running == 4)
        assert not consumer.paused()  # full for a moment only: nothing paused yet
        await wait_for(lambda: consumer.paused() == consumer.assignment(), wait_seconds=5)
        assert processor.running == 4  # nothing taken beyond the window while paused
        for gate in gates.values():
            gate.set()
        await wait_for(lambda: len(processor.done) == 40)
        assert not consumer.paused()


async def test_a_loop_paused_by_an_open_circuit_stays_alive(
    kafka_bootstrap_servers: str, unique_name: str
) -> None:
    """Liveness reads ``last_progress``: an Amili outage pauses consumption, it must not look like
    a dead loop (and get the instance restarted)."""
    topic, group = f"engine-alive-{unique_name}", f"g-{unique_name}"
    await create_topics(kafka_bootstrap_servers, {topic: 1})
    processor = StandInProcessor()
    engine = ConsumptionEngine(
        consumer=partial(
            AIOKafkaConsumer,
            bootstrap_servers=kafka_bootstrap_servers,
            group_id=group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        ),
        topic=topic,
        processor=processor,
        accepting=lambda: False,
    )
    await engine.start()
    try:
        before = engine.last_progress
        await wait_for(lambda: engine.last_progress > before + 0.5, wait_seconds=10)
        assert not processor.done
    finally:
        await engine.stop()


async def test_an_engine_stopped_before_it_started_stops_quietly() -> None:
    engine = ConsumptionEngine(consumer=AIOKafkaConsumer, topic="never", processor=StandInProcessor())
    await engine.stop()
    assert not engine.connected
