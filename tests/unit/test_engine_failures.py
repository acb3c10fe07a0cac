"""ConsumptionEngine's failure paths with fakes: dead-lettering that fails is retried and never
escapes, the partition waits at that offset meanwhile, commits report an unreachable broker (and
only that) to the link and are bounded in time, a stop is bounded whatever the consumer does.
The real broker is in tests/integration/test_engine.py and test_broker_outage.py."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest
from aiokafka import ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from aiokafka.errors import (
    CommitFailedError,
    KafkaConnectionError,
    NodeNotReadyError,
    RebalanceInProgressError,
)
from aiokafka.structs import OffsetAndMetadata

from service.domain.outcomes import Outcome
from service.events.record import InboundRecord
from service.kafka.engine import ConsumptionEngine, EngineObserver, _Held
from service.processing import Handled, Prepared, Route
from service.registration import Backoff
from tests.fakes import passed_on

TOPIC = "invoices"
TP = TopicPartition(TOPIC, 0)
FAST = Backoff(initial_seconds=0.001, max_seconds=0.002)
DEAD_LETTER = Handled(outcome=None, dead_letter_rule="gave_up")


class FailingProcessor:
    """``handle`` fails for the offsets in ``failing`` and registers the others; ``give_up``
    fails ``give_up_failures`` times (the broker refuses the dead letter), then dead-letters."""

    def __init__(self, *, failing: set[int], give_up_failures: int = 0) -> None:
        self.failing = failing
        self.give_up_failures = give_up_failures
        self.handle_calls = 0
        self.give_up_calls = 0
        self.given_up_with: list[BaseException] = []
        self.dead_letters: list[int] = []
        self.hang = asyncio.Event()  # set: every handle hangs (an event that never finishes)

    def route(self, record: InboundRecord) -> Route:
        return Route((record.key or b"").decode(), "")

    def prepare(self, record: InboundRecord) -> Prepared:
        return passed_on(record)

    async def handle(self, prepared: Prepared) -> Handled:
        self.handle_calls += 1
        if self.hang.is_set():
            await asyncio.Event().wait()
        if prepared.record.offset in self.failing:
            raise RuntimeError("a fault of ours")
        return Handled(outcome=Outcome.REGISTERED)

    async def give_up(self, prepared: Prepared, error: BaseException) -> Handled:
        self.give_up_calls += 1
        self.given_up_with.append(error)
        if self.give_up_calls <= self.give_up_failures:
            raise KafkaConnectionError("the dead letter was not acknowledged")
        self.dead_letters.append(prepared.record.offset)
        return DEAD_LETTER


class CountingObserver(EngineObserver):
    def __init__(self) -> None:
        self.dead_letters_failed = 0
        self.processing_errors: list[str] = []
        self.handled_events: list[Handled] = []
        self.oldest: dict[int, float] = {}

    def dead_letter_failed(self) -> None:
        self.dead_letters_failed += 1

    def processing_failed(self, error: BaseException) -> None:
        self.processing_errors.append(type(error).__name__)

    def handled(self, handled: Handled, seconds: float) -> None:
        self.handled_events.append(handled)

    def oldest_unfinished(self, topic: str, partition: int, seconds: float) -> None:
        self.oldest[partition] = seconds


class FakeLink:
    """The BrokerReports side of the broker link."""

    def __init__(self) -> None:
        self.up = True
        self.commits = 0
        self.failures: list[tuple[str, BaseException]] = []

    def committed(self) -> None:
        self.commits += 1

    def failed(self, operation: str, error: BaseException) -> None:
        self.failures.append((operation, error))


class FakeConsumer:
    """The part of AIOKafkaConsumer the engine uses, one partition assigned; ``deliver`` queues
    records for the next fetch. ``commit_error`` / ``stop_error`` are raised, or with
    ``commit_hangs`` / ``stop_hangs`` the call never returns (a broker that is away)."""

    def __init__(self) -> None:
        self.listener: ConsumerRebalanceListener | None = None
        self.queued: list[ConsumerRecord[bytes, bytes]] = []
        self.paused_partitions: set[TopicPartition] = set()
        self.commit_error: Exception | None = None
        self.commit_hangs = False
        self.commit_attempts: list[dict[TopicPartition, OffsetAndMetadata]] = []
        self.stop_error: Exception | None = None
        self.stop_hangs = False
        self.stop_calls = 0

    def deliver(self, *offsets: int, key: Callable[[int], bytes] = lambda offset: b"inv-%d" % offset) -> None:
        for offset in offsets:
            self.queued.append(
                ConsumerRecord(
                    topic=TOPIC,
                    partition=TP.partition,
                    offset=offset,
                    timestamp=0,
                    timestamp_type=0,
                    key=key(offset),
                    value=b"{}",
                    checksum=None,
                    serialized_key_size=0,
                    serialized_value_size=2,
                    headers=[],
                )
            )

    def subscribe(self, topics: list[str], listener: ConsumerRebalanceListener) -> None:
        assert topics == [TOPIC]
        self.listener = listener

    async def start(self) -> None:
        assert self.listener is not None
        await self.listener.on_partitions_assigned({TP})

    def assignment(self) -> set[TopicPartition]:
        return {TP}

    def paused(self) -> set[TopicPartition]:
        return set(self.paused_partitions)

    def pause(self, *partitions: TopicPartition) -> None:
        self.paused_partitions |= set(partitions)

    def resume(self, *partitions: TopicPartition) -> None:
        self.paused_partitions -= set(partitions)

    def seek(self, partition: TopicPartition, offset: int) -> None:
        raise AssertionError("nothing is fetched while paused here")

    def highwater(self, partition: TopicPartition) -> int | None:
        return None

    async def getmany(
        self, timeout_ms: int = 0, max_records: int | None = None
    ) -> dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]:
        if self.paused_partitions or not self.queued:
            await asyncio.sleep(0.002)  # shorter than the engine asks for: the tests stay fast
            return {}
        taken, self.queued = self.queued[:max_records], self.queued[max_records:]
        return {TP: taken}

    async def commit(self, offsets: dict[TopicPartition, OffsetAndMetadata]) -> None:
        self.commit_attempts.append(dict(offsets))
        if self.commit_hangs:
            await asyncio.Event().wait()
        if self.commit_error is not None:
            raise self.commit_error

    async def stop(self) -> None:
        self.stop_calls += 1
        if self.stop_hangs:
            await asyncio.Event().wait()
        if self.stop_error is not None:
            raise self.stop_error

    @property
    def committed_offsets(self) -> list[int]:
        return [attempt[TP].offset for attempt in self.commit_attempts]


def make_engine(
    processor: FailingProcessor,
    consumer: FakeConsumer | None = None,
    *,
    observer: EngineObserver | None = None,
    broker: FakeLink | None = None,
    commit_interval_seconds: float = 3600.0,
    commit_timeout_seconds: float = 1.0,
    drain_seconds: float = 1.0,
    close_seconds: float = 1.0,
) -> ConsumptionEngine:
    fake = consumer or FakeConsumer()
    return ConsumptionEngine(
        consumer=lambda: fake,
        topic=TOPIC,
        processor=processor,
        max_events=16,
        commit_interval_seconds=commit_interval_seconds,
        commit_timeout_seconds=commit_timeout_seconds,
        drain_seconds=drain_seconds,
        close_seconds=close_seconds,
        backoff=FAST,
        max_failures=3,
        observer=observer,
        broker=broker,
    )


async def eventually(condition: Callable[[], bool], what: str, within: float = 2.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {within}s: {what}")
        await asyncio.sleep(0.002)


def record(offset: int) -> InboundRecord:
    return InboundRecord(topic=TOPIC, partition=TP.partition, offset=offset, key=b"inv-1", value=b"{}")


# dead letters ---------------------------------------------------------------------------------


async def test_dead_lettering_that_fails_is_retried_until_it_succeeds(
    caplog: pytest.LogCaptureFixture,
) -> None:
    processor = FailingProcessor(failing={7}, give_up_failures=2)
    observer = CountingObserver()
    engine = make_engine(processor, observer=observer)
    await engine.on_assigned({TP})
    # As the fetch loop takes a record: its offset taken, the event admitted.
    engine._progress[TP].take(7)
    engine._admit(_Held(TP, record(7), processor.route(record(7))))
    assert engine.in_flight == 1
    (task,) = engine._tasks[TP]

    await asyncio.wait_for(task, 2)  # an exception escaping the event's task would be raised here

    assert processor.handle_calls == 3  # max_failures
    assert processor.give_up_calls == 3
    assert all(isinstance(error, RuntimeError) for error in processor.given_up_with)
    assert processor.dead_letters == [7]
    assert observer.processing_errors == ["RuntimeError"] * 3  # each failure counted
    assert observer.dead_letters_failed == 2
    assert observer.handled_events == [DEAD_LETTER]
    assert engine.in_flight == 0  # the slot is released
    assert engine._progress[TP].committable == 8  # the event is finished
    failures = [r for r in caplog.records if r.getMessage() == "dead-lettering failed; retrying"]
    assert [r.__dict__["failures"] for r in failures] == [1, 2]
    assert all(r.__dict__["offset"] == 7 for r in failures)
    assert "an event could not be ended" not in caplog.messages


async def test_the_partition_waits_at_an_event_whose_dead_letter_keeps_failing() -> None:
    processor = FailingProcessor(failing={1}, give_up_failures=10**9)
    observer = CountingObserver()
    consumer = FakeConsumer()
    engine = make_engine(processor, consumer, observer=observer, commit_interval_seconds=0.01)
    consumer.deliver(0, 1, 2)  # three invoices: independent of one another
    await engine.start()
    try:
        await eventually(lambda: processor.give_up_calls >= 5, "dead-lettering keeps failing")
        await eventually(lambda: consumer.committed_offsets[-1:] == [1], "what is finished is committed")
        await asyncio.sleep(0.05)  # several commit intervals
        assert max(consumer.committed_offsets) == 1  # never past the event that is not finished
        assert engine.in_flight == 1
        assert observer.dead_letters_failed == processor.give_up_calls
        # The stuck partition shows: the event its commits wait for is ever older.
        stuck_for = observer.oldest[TP.partition]
        assert stuck_for >= 0.05
        await eventually(lambda: observer.oldest[TP.partition] > stuck_for, "it keeps ageing")

        processor.give_up_failures = 0  # the broker takes the dead letter again
        await eventually(lambda: consumer.committed_offsets[-1:] == [3], "the partition goes on")
        assert processor.dead_letters == [1]
        assert engine.in_flight == 0
        await eventually(lambda: observer.oldest[TP.partition] == 0.0, "nothing waits any more")
    finally:
        await asyncio.wait_for(engine.stop(), 2)


# commits --------------------------------------------------------------------------------------


async def committing_engine(
    consumer: FakeConsumer, link: FakeLink, *, commit_timeout_seconds: float = 1.0
) -> ConsumptionEngine:
    """A started engine that has finished offsets 0-2 and leaves committing to the test."""
    processor = FailingProcessor(failing=set())
    engine = make_engine(
        processor,
        consumer,
        broker=link,
        commit_timeout_seconds=commit_timeout_seconds,
        drain_seconds=0.05,
        close_seconds=0.1,
    )
    consumer.deliver(0, 1, 2)
    await engine.start()
    await eventually(lambda: processor.handle_calls == 3 and engine.in_flight == 0, "events finished")
    return engine


async def test_a_commit_that_cannot_reach_the_broker_is_reported_to_the_link() -> None:
    consumer, link = FakeConsumer(), FakeLink()
    engine = await committing_engine(consumer, link)
    error = KafkaConnectionError("coordinator unreachable")
    consumer.commit_error = error
    try:
        await asyncio.wait_for(engine._commit([TP]), 1)
        assert link.failures == [("commit", error)]
        assert link.commits == 0
        consumer.commit_error = None
        await asyncio.wait_for(engine._commit([TP]), 1)  # not marked committed: tried again
        assert consumer.committed_offsets == [3, 3]
        assert link.commits == 1
        assert link.failures == [("commit", error)]
    finally:
        await asyncio.wait_for(engine.stop(), 2)


@pytest.mark.parametrize(
    "error", [CommitFailedError(), RebalanceInProgressError()], ids=lambda e: type(e).__name__
)
async def test_a_commit_refused_by_a_rebalance_is_not_an_outage(error: Exception) -> None:
    consumer, link = FakeConsumer(), FakeLink()
    engine = await committing_engine(consumer, link)
    consumer.commit_error = error
    try:
        await asyncio.wait_for(engine._commit([TP]), 1)
        assert link.failures == []
        assert link.commits == 0
        assert engine._progress[TP].committed is None
    finally:
        await asyncio.wait_for(engine.stop(), 2)


async def test_a_commit_that_succeeds_is_reported_and_not_repeated() -> None:
    consumer, link = FakeConsumer(), FakeLink()
    engine = await committing_engine(consumer, link)
    try:
        await asyncio.wait_for(engine._commit([TP]), 1)
        assert consumer.commit_attempts == [{TP: OffsetAndMetadata(3, "")}]
        assert link.commits == 1
        assert link.failures == []
        await asyncio.wait_for(engine._commit([TP]), 1)  # nothing new finished: nothing to commit
        assert len(consumer.commit_attempts) == 1
    finally:
        await asyncio.wait_for(engine.stop(), 2)


async def test_a_commit_that_hangs_is_abandoned_after_its_timeout() -> None:
    consumer, link = FakeConsumer(), FakeLink()
    engine = await committing_engine(consumer, link, commit_timeout_seconds=0.05)
    consumer.commit_hangs = True
    try:
        started = time.monotonic()
        await asyncio.wait_for(engine._commit([TP]), 1)
        assert 0.04 <= time.monotonic() - started < 0.5
        [(operation, error)] = link.failures
        assert operation == "commit"
        assert isinstance(error, TimeoutError)
        assert link.commits == 0
        assert engine._progress[TP].committed is None
    finally:
        await asyncio.wait_for(engine.stop(), 2)


async def test_no_commit_is_tried_while_the_broker_is_away() -> None:
    consumer, link = FakeConsumer(), FakeLink()
    link.up = False
    engine = make_engine(FailingProcessor(failing=set()), consumer, broker=link, commit_interval_seconds=0.01)
    consumer.deliver(0, 1, 2)
    await engine.start()
    try:
        await eventually(lambda: engine.in_flight == 0 and not consumer.queued, "events finished")
        await asyncio.sleep(0.05)  # several commit intervals
        assert consumer.commit_attempts == []
        link.up = True
        await eventually(lambda: consumer.committed_offsets == [3], "committed once the broker is back")
    finally:
        await asyncio.wait_for(engine.stop(), 2)


# stop -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("consumer_stop", ["hangs", "raises"])
async def test_stop_ends_within_drain_and_close_seconds_when_the_broker_is_away(
    consumer_stop: str, caplog: pytest.LogCaptureFixture
) -> None:
    drain_seconds, close_seconds = 0.1, 0.2
    consumer, link = FakeConsumer(), FakeLink()
    processor = FailingProcessor(failing=set())
    engine = make_engine(
        processor, consumer, broker=link, drain_seconds=drain_seconds, close_seconds=close_seconds
    )
    await engine.start()
    # The worst case: an event that never finishes, a commit that hangs, a consumer that will not
    # leave its group.
    consumer.deliver(0)
    processor.hang.set()
    await eventually(lambda: engine.in_flight == 1 and processor.handle_calls == 1, "an event in flight")
    consumer.commit_hangs = True
    if consumer_stop == "hangs":
        consumer.stop_hangs = True
    else:
        consumer.stop_error = NodeNotReadyError("coordinator not available")

    started = time.monotonic()
    await asyncio.wait_for(engine.stop(), 2)
    elapsed = time.monotonic() - started

    assert elapsed < drain_seconds + close_seconds + 0.15
    assert consumer.stop_calls == 1
    assert not engine.connected
    assert engine.in_flight == 0
    assert "abandoned unfinished events (they will be redelivered)" in caplog.messages
    assert "the consumer did not leave its group cleanly" in caplog.messages
    assert [operation for operation, _ in link.failures] == ["commit"]
    assert [t for t in asyncio.all_tasks() if t.get_name() == "consumption-engine" and not t.done()] == []


async def test_a_fetch_loop_that_ends_unasked_fails_liveness_at_once() -> None:
    engine = make_engine(FailingProcessor(failing=set()))

    async def ended() -> None:
        raise SystemError("the loop broke")

    assert engine.loop_failure is None  # never started
    engine._loop_task = asyncio.create_task(ended())
    await asyncio.sleep(0)
    assert engine.loop_failure is not None
    assert "the loop broke" in engine.loop_failure
    engine._stopping = True  # a stop asked for it: not a failure
    assert engine.loop_failure is None
