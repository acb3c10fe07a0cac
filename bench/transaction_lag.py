"""What a partition's transaction costs when the event loop is busy (``KAFKA_TRANSACTIONS=true``).
(A benchmark, not a test.)

The service's own transactions (``kafka_transactions``, as its composition root makes them) with
real transactional producers, one per partition of a fresh topic, on a real broker, fed finished
events at a steady rate; nothing else runs in the process but a task that keeps the event loop
busy for ``--busy-ms`` at each of its turns, as a service handling hundreds of events a second
does (its loop runs 3-12 ms late then). Printed for
each busy time: the transactions per second, a commit's mean duration, and how long an event's
records wait from its finish to its commit (p50, p99).

aiokafka sends a transaction's requests one after another (AddPartitionsToTxn, the records,
AddOffsetsToTxn, TxnOffsetCommit, EndTxn), each a few turns of the loop (a task made, the request
written, the answer read, the task done, the sender woken): with the loop late at each turn, a
commit costs that many delays whatever the broker does.

    .venv/bin/python -m bench.transaction_lag                 # about a minute

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

from aiokafka import TopicPartition

from devkit.harness import broker
from devkit.produce import create_topics
from service.bootstrap import kafka_transactions
from service.config import Settings
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
    # The producers, their settings and the transactions as the service makes them.
    settings = Settings(kafka_bootstrap_servers=bootstrap, consumer_group_id=f"lag-{run}")
    transactions = kafka_transactions(settings, {}, None, Backoff(), commits)
    channels: list[PartitionTransactions] = []
    for number in range(partitions):
        channel = await transactions.open(
            TopicPartition(source, number),
            owned=lambda: True,
            on_committed=lambda offset, events: None,
            stopping=lambda: False,
        )
        assert channel is not None  # given up only when stopping or no longer owned
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
        await transactions.close(channel.partition, commit_seconds=5.0)
    await transactions.stop()
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
        for busy in (float(value) / 1000 for value in args.busy_ms.split(",")):
            line = await measure(
                kafka.bootstrap, partitions=args.partitions, rate=args.rate, seconds=args.seconds, busy=busy
            )
            print(line, flush=True)


if __name__ == "__main__":
    asyncio.run(main())
