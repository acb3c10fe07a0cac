"""The engine's fair order with fakes: held events start in turn of their creditors, within each
invoice's order and the commit rule; events of a partition given up that had not started are
dropped. (Registration places at Amili are fair too: tests/unit/test_flow.py.)"""

from __future__ import annotations

import asyncio
import itertools

from aiokafka import TopicPartition

from service.domain.outcomes import Outcome
from service.events.record import InboundRecord
from service.kafka.engine import ConsumptionEngine
from service.processing import Handled, Prepared, Route
from tests.fakes import passed_on
from tests.unit.test_engine_failures import FAST, TOPIC, TP, FakeConsumer, eventually


class CreditorProcessor:
    """Records keyed ``creditor/invoice``; each takes ``seconds`` (a registration at Amili)."""

    def __init__(self, seconds: float = 0.002) -> None:
        self.seconds = seconds
        self.started: list[str] = []
        self.finished: list[str] = []
        self.timeline: list[str] = []
        self.release: asyncio.Event | None = None

    def route(self, record: InboundRecord) -> Route:
        key = (record.key or b"").decode()
        return Route(key, key.split("/")[0])

    def prepare(self, record: InboundRecord) -> Prepared:
        return passed_on(record)

    async def handle(self, prepared: Prepared) -> Handled:
        name = f"{(prepared.record.key or b'').decode()}@{prepared.record.offset}"
        self.started.append(name)
        self.timeline.append(f"start {name}")
        if self.release is not None:
            await self.release.wait()
        await asyncio.sleep(self.seconds)
        self.finished.append(name)
        self.timeline.append(f"end {name}")
        return Handled(outcome=Outcome.REGISTERED)

    async def give_up(self, prepared: Prepared, error: BaseException) -> Handled:
        raise AssertionError("nothing fails here")


def engine_for(
    processor: CreditorProcessor, consumer: FakeConsumer, *, held: int, active: int
) -> ConsumptionEngine:
    return ConsumptionEngine(
        consumer=lambda: consumer,
        topic=TOPIC,
        processor=processor,
        max_events=held,
        max_active=active,
        commit_interval_seconds=0.01,
        backoff=FAST,
        drain_seconds=1.0,
        close_seconds=1.0,
    )


def keyed(keys: dict[int, str]) -> dict[int, bytes]:
    return {offset: key.encode() for offset, key in keys.items()}


async def test_a_small_creditor_overtakes_a_backlog_read_ahead() -> None:
    consumer, processor = FakeConsumer(), CreditorProcessor()
    keys = {offset: f"big/{offset}" for offset in range(300)}
    keys |= {300 + n: f"small/{n}" for n in range(5)}  # behind the whole backlog in the partition
    encoded = keyed(keys)
    consumer.deliver(*sorted(keys), key=encoded.__getitem__)
    engine = engine_for(processor, consumer, held=1000, active=4)
    await engine.start()
    try:
        await eventually(lambda: len(processor.finished) == len(keys), "everything handled", within=10)
        small_at = [index for index, name in enumerate(processor.started) if name.startswith("small/")]
        # Every other start once the backlog and the small creditor are both read: not after 300.
        assert max(small_at) < 30
        assert processor.started[-1].startswith("big/")
        await eventually(lambda: consumer.committed_offsets[-1:] == [305], "all committed")
        committed = consumer.committed_offsets
        assert committed == sorted(committed)  # never back, never past an unfinished event
    finally:
        await engine.stop()


async def test_fairness_reaches_no_further_than_the_read_ahead() -> None:
    consumer, processor = FakeConsumer(), CreditorProcessor()
    keys = {offset: f"big/{offset}" for offset in range(300)} | {300: "small/0"}
    encoded = keyed(keys)
    consumer.deliver(*sorted(keys), key=encoded.__getitem__)
    engine = engine_for(processor, consumer, held=16, active=4)
    await engine.start()
    try:
        await eventually(lambda: len(processor.finished) == len(keys), "everything handled", within=10)
        assert processor.started.index("small/0@300") > 280  # it was read only at the end
    finally:
        await engine.stop()


async def test_events_of_one_invoice_stay_in_order_whatever_the_turns() -> None:
    consumer, processor = FakeConsumer(), CreditorProcessor()
    keys = {0: "a/1", 1: "b/1", 2: "a/1", 3: "a/2", 4: "a/1", 5: "b/1"}
    encoded = keyed(keys)
    consumer.deliver(*sorted(keys), key=encoded.__getitem__)
    engine = engine_for(processor, consumer, held=100, active=10)
    await engine.start()
    try:
        await eventually(lambda: len(processor.finished) == len(keys), "everything handled")
        for key in ("a/1", "b/1"):
            runs = [name for name in processor.started if name.startswith(key + "@")]
            assert runs == [f"{key}@{offset}" for offset in sorted(o for o, k in keys.items() if k == key)]
            # one at a time: each started after the previous one finished
            timeline = processor.timeline
            for before, after in itertools.pairwise(runs):
                assert timeline.index(f"end {before}") < timeline.index(f"start {after}")
        assert engine.active == 0
        assert engine.in_flight == 0
    finally:
        await engine.stop()


async def test_at_most_max_active_run_while_more_are_held() -> None:
    consumer, processor = FakeConsumer(), CreditorProcessor()
    processor.release = asyncio.Event()
    keys = {offset: f"c{offset % 3}/{offset}" for offset in range(50)}
    encoded = keyed(keys)
    consumer.deliver(*sorted(keys), key=encoded.__getitem__)
    engine = engine_for(processor, consumer, held=40, active=5)
    await engine.start()
    try:
        await eventually(lambda: engine.in_flight == 40, "the read-ahead filled")
        assert engine.active == 5
        assert len(processor.started) == 5
        assert {name.split("/")[0] for name in processor.started} == {"c0", "c1", "c2"}
        processor.release.set()
        await eventually(lambda: len(processor.finished) == 50, "everything handled")
    finally:
        await engine.stop()


async def test_a_revoked_partition_drops_its_events_that_had_not_started() -> None:
    consumer, processor = FakeConsumer(), CreditorProcessor()
    processor.release = asyncio.Event()
    keys = {offset: f"c{offset % 2}/{offset}" for offset in range(20)}
    encoded = keyed(keys)
    consumer.deliver(*sorted(keys), key=encoded.__getitem__)
    engine = engine_for(processor, consumer, held=100, active=2)
    await engine.start()
    try:
        await eventually(lambda: engine.in_flight == 20, "all held")
        revoking = asyncio.create_task(engine.on_revoked({TP}))
        await asyncio.sleep(0.01)
        processor.release.set()  # the two running finish within the drain
        await revoking
        await asyncio.sleep(0.05)
        assert len(processor.started) == 2  # nothing else of the partition started
        assert engine.in_flight == 0
        assert engine.active == 0
        assert TopicPartition(TOPIC, 0) not in engine._progress
    finally:
        await engine.stop()
