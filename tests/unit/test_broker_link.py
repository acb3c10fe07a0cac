"""BrokerLink against a fake broker: a send waits out an outage and goes again through a fresh
producer, one probe brings the link back, records too large are refused, logs stay bounded and a
stop ends in time. Fakes, no broker: tests/integration/test_broker_outage.py has the real one."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import (
    KafkaConnectionError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    RecordTooLargeError,
)

from service.kafka import link as link_module
from service.kafka.link import BrokerLink, LinkObserver, RecordRefused
from service.registration import Backoff

FAST = Backoff(initial_seconds=0.01, max_seconds=0.02)
GOING_DOWN = "kafka unreachable: consumption paused, results and dead letters wait"
STILL_DOWN = "kafka still unreachable"
BACK = "kafka reachable again: consumption resumes"


class FakeBroker:
    """What the fake producers talk to: each test scripts it."""

    def __init__(self) -> None:
        self.reachable = True
        self.partitions = {"results": 3, "dead-letters": 1}
        # (topic, partition) -> what the cluster metadata says of its leader: None (unknown) or -1.
        self.leaderless: dict[tuple[str, int], int | None] = {}
        # How a send to an unreachable broker ends: "fail" at once, or "hang" until ``answer`` is
        # set (then it fails: a request that timed out at last).
        self.unreachable_send = "fail"
        self.answer = asyncio.Event()
        self.refuse: Exception | None = None
        self.stop_hangs = False  # a producer holding unsent batches flushes them until they expire
        self.producers: list[FakeProducer] = []
        self.received: list[tuple[int, str, bytes | None]] = []  # (producer number, topic, value)

    def make_producer(self) -> FakeProducer:
        producer = FakeProducer(self, number=len(self.producers))
        self.producers.append(producer)
        return producer


class FakeCluster:
    def __init__(self, broker: FakeBroker) -> None:
        self._broker = broker

    def leader_for_partition(self, partition: TopicPartition) -> int | None:
        return self._broker.leaderless.get((partition.topic, partition.partition), 1)


class FakeClient:
    def __init__(self, broker: FakeBroker) -> None:
        self.cluster = FakeCluster(broker)
        self.closed = False

    async def close(self) -> None:
        self.closed = True


class FakeProducer:
    """The part of AIOKafkaProducer that BrokerLink uses."""

    def __init__(self, broker: FakeBroker, number: int) -> None:
        self.broker = broker
        self.number = number
        self.client = FakeClient(broker)
        self.started = False
        self.stop_calls = 0
        self.sends_pending = 0

    async def start(self) -> None:
        await asyncio.sleep(0)
        if not self.broker.reachable:
            raise KafkaConnectionError("Unable to bootstrap from [('127.0.0.1', 9092)]")
        self.started = True

    async def stop(self) -> None:
        self.stop_calls += 1
        if self.broker.stop_hangs:
            await asyncio.Event().wait()

    async def partitions_for(self, topic: str) -> set[int]:
        return set(range(self.broker.partitions[topic]))

    async def send_and_wait(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        # The link never sends through a producer it has not started, nor one it has discarded.
        assert self.started, f"producer {self.number} used before it started"
        assert self.stop_calls == 0, f"producer {self.number} used after it was stopped"
        self.sends_pending += 1
        try:
            await asyncio.sleep(0)
            if self.broker.refuse is not None:
                raise self.broker.refuse
            if not self.broker.reachable:
                if self.broker.unreachable_send == "hang":
                    await self.broker.answer.wait()
                raise KafkaConnectionError("Connection at 127.0.0.1:9092 closed")
            self.broker.received.append((self.number, topic, value))
        finally:
            self.sends_pending -= 1


class RecordingObserver(LinkObserver):
    def __init__(self) -> None:
        self.ups: list[bool] = []
        self.produced_count = 0
        self.committed_count = 0
        self.errors: list[str] = []

    def broker_up(self, up: bool) -> None:
        self.ups.append(up)

    def produced(self) -> None:
        self.produced_count += 1

    def committed(self) -> None:
        self.committed_count += 1

    def kafka_error(self, operation: str) -> None:
        self.errors.append(operation)

    @property
    def probes_failed(self) -> int:
        return self.errors.count("probe")


class MakeLink(Protocol):
    async def __call__(
        self,
        *,
        observer: LinkObserver | None = ...,
        send_timeout_seconds: float = ...,
        summary_seconds: float = ...,
    ) -> BrokerLink: ...


async def eventually(condition: Callable[[], bool], what: str, within: float = 2.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {within}s: {what}")
        await asyncio.sleep(0.002)


def probe_tasks() -> list[asyncio.Task[Any]]:
    return [task for task in asyncio.all_tasks() if task.get_name() == "kafka-probe" and not task.done()]


def send(link: BrokerLink, value: bytes, topic: str = "results") -> asyncio.Task[None]:
    return asyncio.create_task(link.send(topic, key=b"key", value=value, headers=[("h", b"1")]))


async def cancelled(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


@pytest.fixture
def broker() -> FakeBroker:
    return FakeBroker()


@pytest.fixture
async def make_link(broker: FakeBroker) -> AsyncIterator[MakeLink]:
    """Started links on the fake broker, stopped after the test."""
    links: list[BrokerLink] = []

    async def make(
        *,
        observer: LinkObserver | None = None,
        send_timeout_seconds: float = 1.0,
        summary_seconds: float = 60.0,
    ) -> BrokerLink:
        link = BrokerLink(
            broker.make_producer,
            topics=["results", "dead-letters"],
            request_timeout_seconds=send_timeout_seconds,
            backoff=FAST,
            summary_seconds=summary_seconds,
            observer=observer,
        )
        links.append(link)
        await link.start()
        return link

    yield make
    broker.stop_hangs = False
    for link in links:
        await link.stop(timeout_seconds=0.1)


async def test_a_send_while_reachable_reaches_the_broker_once(
    broker: FakeBroker, make_link: MakeLink
) -> None:
    observer = RecordingObserver()
    link = await make_link(observer=observer)
    assert link.up
    await link.send("results", key=b"key", value=b"v", headers=[])
    assert broker.received == [(0, "results", b"v")]
    assert observer.produced_count == 1
    assert observer.ups == [True]
    assert observer.errors == []
    assert (link.waiting, link.down_seconds) == (0, 0.0)


@pytest.mark.parametrize("outage", ["fail", "hang"])
async def test_a_send_waits_out_an_outage_and_goes_again_through_a_new_producer(
    broker: FakeBroker, make_link: MakeLink, outage: str
) -> None:
    observer = RecordingObserver()
    link = await make_link(observer=observer, send_timeout_seconds=0.05)
    first = broker.producers[0]
    broker.reachable, broker.unreachable_send = False, outage

    sending = send(link, b"v1")
    await eventually(lambda: link.waiting == 1, "the send waits for the broker")
    assert not link.up
    assert observer.ups == [True, False]
    assert observer.errors[0] == "produce"
    await eventually(lambda: first.stop_calls == 1, "the producer that failed is closed in the background")
    await eventually(lambda: observer.probes_failed >= 2, "the probe keeps trying")
    assert not sending.done()  # waiting, not failed
    assert link.down_seconds > 0
    assert broker.received == []

    broker.reachable = True
    await asyncio.wait_for(sending, 2)
    assert link.up
    assert link.waiting == 0
    assert observer.ups == [True, False, True]
    new = broker.producers[-1]
    assert new is not first
    assert broker.received == [(new.number, "results", b"v1")]  # exactly once, through the new one
    assert observer.produced_count == 1
    assert new.stop_calls == 0
    # Every producer made along the way but the one in use was closed: none leaks.
    assert [p.stop_calls for p in broker.producers[:-1]] == [1] * (len(broker.producers) - 1)


async def test_many_sends_during_an_outage_share_one_probe(broker: FakeBroker, make_link: MakeLink) -> None:
    observer = RecordingObserver()
    link = await make_link(observer=observer)
    broker.reachable = False

    sends = [send(link, str(n).encode()) for n in range(50)]
    await eventually(lambda: link.waiting == 50, "all the sends wait")
    probes_running: list[int] = []
    while observer.probes_failed < 5:
        probes_running.append(len(probe_tasks()))
        await asyncio.sleep(0.002)
    assert set(probes_running) == {1}

    broker.reachable = True
    await asyncio.wait_for(asyncio.gather(*sends), 2)
    assert sorted(int(value or b"") for _, _, value in broker.received) == list(range(50))
    assert {number for number, _, _ in broker.received} == {broker.producers[-1].number}
    assert observer.ups == [True, False, True]
    # Every failed send is counted as a Kafka error, yet the link went down (and probed) once.
    assert observer.errors.count("produce") == 50
    # The first producer, one per failed probe, and the one that got through: not one per send.
    assert len(broker.producers) == 1 + observer.probes_failed + 1
    assert probe_tasks() == []


async def test_a_failure_from_a_discarded_producer_does_not_take_the_link_down_again(
    broker: FakeBroker, make_link: MakeLink
) -> None:
    observer = RecordingObserver()
    link = await make_link(observer=observer, send_timeout_seconds=5.0)
    first = broker.producers[0]
    broker.reachable, broker.unreachable_send = False, "hang"
    late = send(link, b"late")  # hangs in the first producer
    await eventually(lambda: first.sends_pending == 1, "a send hangs in the first producer")
    broker.unreachable_send = "fail"
    early = send(link, b"early")  # fails at once: the first producer is discarded
    await eventually(lambda: not link.up, "the link goes down")

    broker.reachable = True
    await asyncio.wait_for(early, 2)
    assert link.up
    current = broker.producers[-1]

    broker.answer.set()  # the discarded producer's request fails at last, the broker being back
    await asyncio.wait_for(late, 2)
    assert link.up
    assert observer.ups == [True, False, True]
    assert broker.producers[-1] is current
    assert current.stop_calls == 0
    assert sorted(broker.received) == [
        (current.number, "results", b"early"),
        (current.number, "results", b"late"),
    ]
    assert probe_tasks() == []


@pytest.mark.parametrize("leader", [None, -1])
async def test_the_link_stays_down_until_every_partition_of_every_topic_has_a_leader(
    broker: FakeBroker, make_link: MakeLink, leader: int | None
) -> None:
    observer = RecordingObserver()
    broker.leaderless = {("dead-letters", 0): leader}
    link = await make_link(observer=observer)
    assert not link.up
    await eventually(lambda: observer.probes_failed >= 3, "probes fail while a leader is missing")
    assert not link.up

    broker.leaderless = {("results", 2): leader}
    seen = observer.probes_failed
    await eventually(lambda: observer.probes_failed >= seen + 3, "probes fail while a leader is missing")
    assert not link.up

    broker.leaderless = {}
    await eventually(lambda: link.up, "the link comes up once every partition has a leader")
    assert observer.ups == [False, True]
    await link.send("dead-letters", key=None, value=b"v", headers=[])
    assert broker.received == [(broker.producers[-1].number, "dead-letters", b"v")]


@pytest.mark.parametrize(
    "error",
    [MessageSizeTooLargeError(), RecordTooLargeError(), RecordListTooLargeError()],
    ids=lambda error: type(error).__name__,
)
async def test_a_record_too_large_is_refused_and_the_link_stays_up(
    broker: FakeBroker, make_link: MakeLink, error: Exception
) -> None:
    observer = RecordingObserver()
    link = await make_link(observer=observer)
    broker.refuse = error
    with pytest.raises(RecordRefused) as refused:
        await asyncio.wait_for(link.send("results", key=None, value=b"x" * 100, headers=[]), 1)
    assert refused.value.__cause__ is error
    assert link.up
    assert observer.ups == [True]
    assert observer.errors == []
    assert len(broker.producers) == 1
    assert broker.producers[0].stop_calls == 0

    broker.refuse = None
    await link.send("results", key=None, value=b"small", headers=[])
    assert broker.received == [(0, "results", b"small")]


async def test_a_commit_failure_takes_the_link_down_and_the_probe_brings_it_back(
    broker: FakeBroker, make_link: MakeLink
) -> None:
    observer = RecordingObserver()
    link = await make_link(observer=observer)
    broker.reachable = False
    link.failed("commit", KafkaConnectionError("commit not answered"))
    assert not link.up
    link.failed("commit", KafkaConnectionError("commit not answered"))  # again, while down
    await eventually(lambda: observer.probes_failed >= 2, "the probe is trying")
    assert observer.ups == [True, False]
    assert len(probe_tasks()) == 1

    broker.reachable = True
    await eventually(lambda: link.up, "the probe brings the link back")
    assert observer.ups == [True, False, True]
    assert observer.errors.count("commit") == 2
    await eventually(lambda: broker.producers[0].stop_calls == 1, "the old producer is replaced")
    await link.send("results", key=None, value=b"v", headers=[])
    assert broker.received == [(broker.producers[-1].number, "results", b"v")]

    link.committed()
    assert observer.committed_count == 1


async def test_a_link_started_while_the_broker_is_away_comes_up_by_itself(
    broker: FakeBroker, make_link: MakeLink
) -> None:
    observer = RecordingObserver()
    broker.reachable = False
    link = await make_link(observer=observer)  # no exception
    assert not link.up
    assert observer.ups == [False]
    assert observer.errors[0] == "connect"
    sending = send(link, b"v")
    await eventually(lambda: link.waiting == 1, "the send waits")

    broker.reachable = True
    await asyncio.wait_for(sending, 2)
    assert link.up
    assert observer.ups == [False, True]
    assert broker.received == [(broker.producers[-1].number, "results", b"v")]


@pytest.mark.parametrize("holder", ["current", "discarded"])
async def test_stop_returns_within_its_timeout_while_the_broker_is_away(
    broker: FakeBroker, make_link: MakeLink, holder: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A producer holding unsent batches would flush them until they expire: its stop never
    returns while the broker is away."""
    link = await make_link(send_timeout_seconds=0.05)
    broker.reachable, broker.stop_hangs = False, True
    waiting: asyncio.Task[None] | None = None
    if holder == "discarded":  # the producer with the batches was discarded; the probe is running
        broker.unreachable_send = "hang"
        waiting = send(link, b"v")
        await eventually(lambda: broker.producers[0].stop_calls == 1, "the producer is discarded")
        await eventually(lambda: len(broker.producers) >= 3, "the probe is trying")

    started = time.monotonic()
    await asyncio.wait_for(link.stop(timeout_seconds=0.1), 1)
    assert time.monotonic() - started < 0.3
    assert broker.producers[0].stop_calls == 1
    assert "kafka producer closed without flushing (broker unreachable)" in caplog.messages
    assert probe_tasks() == []
    closing = [t for t in asyncio.all_tasks() if getattr(t.get_coro(), "__name__", "") == "_close_quietly"]
    assert closing == []
    if waiting is not None:
        await cancelled(waiting)


async def test_a_discarded_producer_that_will_not_stop_has_its_client_closed(
    broker: FakeBroker, make_link: MakeLink, monkeypatch: pytest.MonkeyPatch
) -> None:
    """aiokafka's producer retries what it holds, refreshing metadata without pause, for as long as
    the broker is away: closing its client is what ends that."""
    monkeypatch.setattr(link_module, "DISCARD_FLUSH_SECONDS", 0.05)
    link = await make_link(send_timeout_seconds=0.05)
    broker.reachable, broker.stop_hangs, broker.unreachable_send = False, True, "hang"
    waiting = send(link, b"v")
    await eventually(lambda: broker.producers[0].stop_calls == 1, "the producer is discarded")
    await eventually(lambda: broker.producers[0].client.closed, "its client is closed")
    broker.reachable, broker.stop_hangs = True, False
    await asyncio.wait_for(waiting, 2)
    assert [number for number, _, _ in broker.received] == [len(broker.producers) - 1]
    await link.stop()


async def test_an_outage_logs_one_line_going_down_a_summary_now_and_then_and_one_coming_back(
    broker: FakeBroker, make_link: MakeLink, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="service.kafka.link")
    summary_seconds = 0.05
    observer = RecordingObserver()
    link = await make_link(observer=observer, summary_seconds=summary_seconds)
    broker.reachable = False
    went_down = time.monotonic()
    sending = send(link, b"v")
    await eventually(lambda: observer.probes_failed >= 20, "many probes fail")
    broker.reachable = True
    await asyncio.wait_for(sending, 2)
    down_for = time.monotonic() - went_down

    lines = [record for record in caplog.records if record.name == "service.kafka.link"]
    messages = [record.getMessage() for record in lines]
    summaries = messages.count(STILL_DOWN)
    assert messages[0] == GOING_DOWN
    assert messages[-1] == BACK
    assert messages.count(GOING_DOWN) == messages.count(BACK) == 1
    assert len(messages) == 2 + summaries
    assert 1 <= summaries <= down_for / summary_seconds
    assert summaries < observer.probes_failed
    summary = next(record for record in lines if record.getMessage() == STILL_DOWN)
    assert summary.__dict__["sends_waiting"] == 1
    assert summary.__dict__["error"].startswith("KafkaConnectionError")
