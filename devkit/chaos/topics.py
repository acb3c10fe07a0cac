"""The chaos run's topics, and reading what the service writes to them for the whole run."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from devkit.chaos.verdict import Observed


async def close_quietly(closing: Coroutine[Any, Any, Any], seconds: float) -> None:
    """Run ``closing`` (a Kafka client's stop) for up to ``seconds``, whatever it raises: aiokafka's
    consumer, stopped while a fetch waits out its backoff (the broker is away), re-raises that
    fetch's CancelledError, which must not pass for a cancellation of the caller."""
    task = asyncio.ensure_future(closing)
    await asyncio.wait({task}, timeout=seconds)
    if not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=1.0)
    if task.done() and not task.cancelled():
        task.exception()  # retrieved: not reported as never retrieved


class TopicWatcher:
    """Reads the result and dead-letter topics from the start, for the whole run.

    It assigns the partitions itself and keeps the next offset of each, so that it can drop its
    consumer and make a new one where the old one stopped: after an error, and when the run asks
    (the broker is back from an outage)."""

    RETRY_SECONDS = 1.0
    CLOSE_SECONDS = 10.0

    def __init__(
        self, bootstrap: str, topics: Topics, partitions: dict[str, int], *, read_committed: bool = False
    ) -> None:
        self.observed = Observed()
        self._isolation = "read_committed" if read_committed else "read_uncommitted"
        self.errors = 0
        self.reconnects = 0
        self._bootstrap = bootstrap
        self._topics = topics
        self._partitions = [
            TopicPartition(topic, number)
            for topic in (topics.results, topics.dead_letters)
            for number in range(partitions[topic])
        ]
        self._next: dict[TopicPartition, int] = {}
        self._consumer: AIOKafkaConsumer | None = None
        self._reconnect = False
        self._task: asyncio.Task[None] | None = None
        self._batch = asyncio.Event()

    async def next_batch(self, wait_seconds: float) -> None:
        """Wait until more records were read (or ``wait_seconds`` passed)."""
        self._batch.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._batch.wait(), wait_seconds)

    async def start(self) -> None:
        await self._connect()
        self._task = asyncio.create_task(self._run(), name="chaos-topic-watcher")

    def reconnect(self) -> None:
        """Read on with a new consumer (from where the old one stopped)."""
        self._reconnect = True

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._disconnect()

    async def _connect(self) -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self._bootstrap,
            group_id=None,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            isolation_level=self._isolation,
        )
        await consumer.start()
        self._consumer = consumer
        consumer.assign(self._partitions)
        for partition in self._partitions:
            if partition in self._next:
                consumer.seek(partition, self._next[partition])
            else:
                await consumer.seek_to_beginning(partition)

    async def _disconnect(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            await close_quietly(consumer.stop(), self.CLOSE_SECONDS)

    async def _run(self) -> None:
        while True:  # until stopped (cancelled) at the end of the run
            try:
                if self._reconnect or self._consumer is None:
                    self._reconnect = False
                    await self._disconnect()
                    self.reconnects += 1
                    await self._connect()
                assert self._consumer is not None
                batches = await self._consumer.getmany(timeout_ms=200)
            except asyncio.CancelledError:
                raise
            except Exception:  # the broker is away, or the consumer broke: a new one, a little later
                self.errors += 1
                await self._disconnect()
                await asyncio.sleep(self.RETRY_SECONDS)
                continue
            for partition, records in batches.items():
                for record in records:
                    if partition.topic == self._topics.results:
                        self.observed.add_result(record.value)
                    else:
                        self.observed.add_dead_letter(record.headers, self._topics.inbound)
                    self._next[partition] = record.offset + 1
            if self._isolation == "read_committed":
                # Transactions leave commit markers no record shows: the position passes them.
                with contextlib.suppress(Exception):
                    for partition in self._partitions:
                        self._next[partition] = await self._consumer.position(partition)
            if batches:
                self._batch.set()

    def caught_up(self, ends: dict[Any, int]) -> bool:
        """Whether everything up to ``ends`` (partition → end offset) has been read."""
        return all(
            self._next.get(partition, 0) >= end
            for partition, end in ends.items()
            if partition.topic in (self._topics.results, self._topics.dead_letters)
        )


@dataclass(frozen=True, slots=True)
class Topics:
    inbound: str
    results: str
    dead_letters: str
    group: str

    @classmethod
    def for_run(cls, tag: str) -> Topics:
        return cls(
            inbound=f"chaos-{tag}.invoice-created",
            results=f"chaos-{tag}.registration-result",
            dead_letters=f"chaos-{tag}.invoice-created.dead-letter",
            group=f"amili-registrar-chaos-{tag}",
        )
