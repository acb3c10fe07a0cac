"""What a partition's transaction costs when the event loop is busy (``KAFKA_TRANSACTIONS=true``).
(A benchmark, not a test.)

The service's own ``PartitionTransactions`` with real transactional producers, one per partition of
a fresh topic, on a real broker, fed finished events at a steady rate; nothing else runs in the
process but a task that keeps the event loop busy for ``--busy-ms`` at each of its turns, as a
service handling hundreds of events a second does (its loop runs 3-12 ms late then). Printed for
each busy time: the transactions per second, a commit's mean duration, and how long an event's
records wait from its finish to its commit (p50, p99).

aiokafka sends a transaction's requests one after another (AddPartitionsToTxn, the records,
AddOffsetsToTxn, TxnOffsetCommit, EndTxn), each a few turns of the loop (a task made, the request
written, the answer read, the task done, the sender woken): with the loop late at each turn, a
commit costs that many delays whatever the broker does.

    .venv/bin/python -m bench.transaction_lag                 # about 2 minutes

Uses ``KAFKA_BOOTSTRAP_SERVERS`` when set, else starts a local broker and stops it at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
import time
import uuid

from aiokafka import AIOKafkaProducer, TopicPartition

from devkit.harness import broker
from devkit.produce import create_topics
from service.kafka.transactions import EventOutputs, Output, PartitionTransactions, TransactionObserver
from service.registration import Backoff

RESULT_BYTES = 1200
"""About a registration-result record's size."""


class _Commits(TransactionObserver):
    def __init__(self) -> None:
        self.seconds: list[float] = []

    def transaction(self, outcome: str, events: int, seconds: float) -> None:
        if outcome == "committed":
            self.seconds.append(seconds)


class _Up:
    up = True

    async def wait_up(self) -> None:
        return None

    def failed(self, operation: str, error: BaseException) -> None:
        print(f"{operation} failed: {error!r}")


async def _nothing_committed() -> tuple[int | None, str]:
    return None, ""


async def _busy_loop(seconds: float) -> None:
    """Hold the event loop for ``seconds`` at each of its turns, as a busy service does."""
    while True:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            pass
        await asyncio.sleep(0)


async def measure(bootstrap: str, *, partitions: int, rate: float, seconds: float, busy: float) -> str:
    run = uuid.uuid4().hex[:8]
    source, results = f"lag-in-{run}", f"lag-results-{run}"
    await create_topics(bootstrap, {source: partitions, results: partitions})
    commits = _Commits()
    channels: list[PartitionTransactions] = []
    for number in range(partitions):
        channel = PartitionTransactions(
            TopicPartition(source, number),
            make_producer=lambda transactional_id: AIOKafkaProducer(
                bootstrap_servers=bootstrap,
                transactional_id=transactional_id,
                enable_idempotence=True,
                max_batch_size=64 * 1024,
            ),
            transactional_id=f"lag-{run}-{number}",
            group_id=f"lag-{run}",
            link=_Up(),
            owned=lambda: True,
            interval_seconds=0.1,
            max_events=1000,
            timeout_seconds=30.0,
            reinit_delay_seconds=0.0,
            backoff=Backoff(),
            observer=commits,
            on_committed=lambda offset, events: None,
            committed_offset=_nothing_committed,
        )
        await channel.open()
        channel.positioned(None, "")
        channels.append(channel)
    waits: list[float] = []
    pending: list[asyncio.Future[bool]] = []

    def timed(outputs: EventOutputs) -> None:
        finished = time.monotonic()

        def committed(_: asyncio.Future[bool]) -> None:
            waits.append(time.monotonic() - finished)

        outputs.committed.add_done_callback(committed)
        pending.append(outputs.committed)

    async def feed(channel: PartitionTransactions) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        offset = 0
        while offset < rate * seconds:
            outputs = EventOutputs()
            outputs.records.append(Output(results, b"%d" % offset, b"x" * RESULT_BYTES, []))
            timed(outputs)
            channel.finished(offset, outputs, offset + 1)
            offset += 1
            await asyncio.sleep(max(0.0, started + offset / rate - loop.time()))

    hog = asyncio.create_task(_busy_loop(busy)) if busy else None
    started = time.monotonic()
    await asyncio.gather(*(feed(channel) for channel in channels))
    fed = time.monotonic() - started
    await asyncio.wait(pending, timeout=30.0)
    if hog is not None:
        hog.cancel()
    for channel in channels:
        await channel.close(commit_seconds=5.0)
    waits.sort()
    return (
        f"busy {busy * 1000:4.1f} ms a turn: {len(commits.seconds) / fed / partitions:5.1f} transactions/s "
        f"a partition, a commit {statistics.mean(commits.seconds) * 1000:4.0f} ms, "
        f"finish → committed p50 {waits[len(waits) // 2] * 1000:4.0f} ms, "
        f"p99 {waits[int(len(waits) * 0.99)] * 1000:4.0f} ms ({len(waits)} events, fed in {fed:.1f} s)"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.transaction_lag", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--busy-ms", default="0,2,5", help="loop busy times to try, comma separated")
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--rate", type=float, default=80.0, help="events a second per partition")
    parser.add_argument("--seconds", type=float, default=15.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)  # aiokafka's retries while a fresh broker settles
    async with broker("bench-transaction-lag", os.environ.get("KAFKA_BOOTSTRAP_SERVERS")) as kafka:
        # A fresh broker makes its transaction log on the first transactional request: not timed.
        await measure(kafka.bootstrap, partitions=args.partitions, rate=args.rate, seconds=3.0, busy=0.0)
        for busy in (float(value) / 1000 for value in args.busy_ms.split(",")):
            line = await measure(
                kafka.bootstrap, partitions=args.partitions, rate=args.rate, seconds=args.seconds, busy=busy
            )
            print(line, flush=True)


if __name__ == "__main__":
    asyncio.run(main())
