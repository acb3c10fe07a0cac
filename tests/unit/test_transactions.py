"""The list of events committed past a partition's offset, as the offset commit's metadata; a
partition's transactions closing while the broker is away."""

from __future__ import annotations

import asyncio
import random

import pytest
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from devkit.localkafka import free_port
from service.kafka.link import BROKER_ERRORS
from service.kafka.transactions import (
    DONE_PREFIX,
    EventOutputs,
    GroupOffsets,
    PartitionTransactions,
    TransactionObserver,
    decode_done,
    encode_done,
)
from service.registration import Backoff


@pytest.mark.parametrize(
    "done",
    [
        set(),
        {100},
        {101, 102, 103},
        {100, 101, 105, 106, 107, 200},
        set(range(100, 25_100)),
    ],
)
def test_the_offsets_come_back_as_they_went(done: set[int]) -> None:
    metadata = encode_done(100, done)
    assert decode_done(100, metadata) == done


def test_offsets_before_the_base_are_left_out_and_runs_stay_short() -> None:
    assert decode_done(100, encode_done(100, {98, 99, 100, 102})) == {100, 102}
    # One held-up event and everything after it finished: one range, whatever its length.
    assert len(encode_done(1000, range(1001, 26_000))) < 40


def test_random_holes_round_trip() -> None:
    rng = random.Random(7)
    done = {offset for offset in range(5000, 7000) if rng.random() < 0.7}
    assert decode_done(5000, encode_done(5000, done)) == done


@pytest.mark.parametrize("metadata", ["", "something else", f"{DONE_PREFIX}zz.1", f"{DONE_PREFIX}1"])
def test_metadata_of_another_kind_or_unreadable_lists_nothing(metadata: str) -> None:
    assert decode_done(100, metadata) == set()


class _Producer:
    """Stands in for aiokafka's transactional producer: every call succeeds at once."""

    def __init__(self) -> None:
        self.transactions = 0

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def begin_transaction(self) -> None: ...

    async def commit_transaction(self) -> None:
        self.transactions += 1


class _BrokerAway:
    """A broker link whose broker never comes back."""

    up = False

    async def wait_up(self) -> None:
        await asyncio.Event().wait()

    def failed(self, operation: str, error: BaseException) -> None: ...


async def test_a_partition_closes_in_time_while_the_broker_is_away() -> None:
    producer = _Producer()
    channel = PartitionTransactions(
        TopicPartition("in", 0),
        make_producer=lambda transactional_id: producer,
        transactional_id="group-in-0",
        group_id="group",
        link=_BrokerAway(),
        owned=lambda: True,
        interval_seconds=0.01,
        max_events=100,
        timeout_seconds=1.0,
        reinit_delay_seconds=0.0,
        backoff=Backoff(),
        observer=TransactionObserver(),
        on_committed=lambda offset, events: None,
        committed_offset=_nothing_committed,
    )
    await channel.open()
    channel.positioned(None, "")
    outputs = EventOutputs()
    channel.finished(0, outputs, 1)
    await asyncio.sleep(0.05)  # the loop now waits for the broker

    async with asyncio.timeout(2.0):
        await channel.close(commit_seconds=0.2)

    assert outputs.committed.done()
    assert outputs.committed.result() is False  # not committed: its event is processed again
    assert producer.transactions == 1  # the initialisation's empty one; nothing since


async def _nothing_committed() -> tuple[int | None, str]:
    return None, ""


async def test_group_offsets_raise_while_the_broker_is_away_and_try_again_on_the_next_read() -> None:
    made: list[AIOKafkaAdminClient] = []

    def make_admin() -> AIOKafkaAdminClient:
        made.append(
            AIOKafkaAdminClient(bootstrap_servers=f"127.0.0.1:{free_port()}", request_timeout_ms=1000)
        )
        return made[-1]

    offsets = GroupOffsets(make_admin, "group")
    for _ in range(2):
        with pytest.raises(BROKER_ERRORS):
            await offsets.read(TopicPartition("in", 0))
    assert len(made) == 2  # a client that never started is not kept
    await offsets.close()
