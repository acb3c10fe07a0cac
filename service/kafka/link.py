"""The service's link to the Kafka broker for what it writes: results and dead letters.

A broker that cannot be reached is an outage, like Amili's, never a failure of the event that
happens to be publishing: a send waits, however long the broker is away, and is sent again once it
is back (the same record: a result keeps its CloudEvents id, so a send that timed out but was
written after all is a harmless repeat). Only a record the broker refuses for what it is (too
large) fails its event, as ``RecordRefused``.

- **One producer at a time.** A send not acknowledged within ``request_timeout_seconds`` is taken as
  an outage, and so is a send that failed: that producer is discarded, and the send goes again
  through a fresh one once the broker is back. aiokafka's idempotent producer would otherwise retry
  a batch forever while the partition's leader is known, and expire it while it is not, leaving a
  gap in its sequence numbers after which every send to that partition fails with
  ``OutOfOrderSequenceNumber``; a fresh producer has a fresh producer id and no such history. The
  discarded producer is closed in the background: what it still holds after a moment is dropped (the
  sends waiting for it go again through the next producer).
- **While the broker is away, one probe talks to it**, with capped, jittered backoff, and the
  senders wait for it: no hot loop of reconnects. The probe is a fresh producer that must start
  and see a leader for every partition of the topics written to. (aiokafka's sender refreshes
  metadata without pause while a leader is unknown: thousands of connection attempts a second.)
- **Bounded logs**: one line when the broker goes away, one when it is back, and a summary every
  ``summary_seconds`` in between.
- The engine reports commits and their connection failures here too, so that the link is the one
  place that says whether the broker is reachable: readiness, metrics and the pause of consumption
  read it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Sequence

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import (
    KafkaError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    RecordTooLargeError,
)

from service.registration import Backoff

log = logging.getLogger(__name__)

# Refused because of the record itself: sending it again would fail again.
REFUSED_RECORD_ERRORS = (MessageSizeTooLargeError, RecordTooLargeError, RecordListTooLargeError)
# What a broker that cannot be reached raises through aiokafka: its own errors, socket errors, and
# timeouts (a send whose batch expired, a start that never connected).
BROKER_ERRORS = (KafkaError, OSError, TimeoutError)

PROBE_BACKOFF = Backoff(initial_seconds=0.5, max_seconds=5.0)
"""Between probes of a broker that is away: soon back to work, never a hot loop."""


class RecordRefused(Exception):
    """The broker refused the record for what it is (too large): the event's own failure."""


class LinkObserver:
    """Hooks for metrics; the default does nothing."""

    def broker_up(self, up: bool) -> None: ...

    def produced(self) -> None: ...

    def committed(self) -> None: ...

    def kafka_error(self, operation: str) -> None: ...


class BrokerLink:
    def __init__(
        self,
        make_producer: Callable[[], AIOKafkaProducer],
        *,
        topics: Sequence[str],
        request_timeout_seconds: float = 30.0,
        backoff: Backoff = PROBE_BACKOFF,
        summary_seconds: float = 60.0,
        observer: LinkObserver | None = None,
    ) -> None:
        self._make_producer = make_producer
        self._topics = tuple(topics)
        # How long a send waits for its acknowledgement, and a probe for a producer to start and
        # see every leader, before the broker is taken to be away.
        self._timeout = request_timeout_seconds
        self._backoff = backoff
        self._summary_seconds = summary_seconds
        self._observer = observer or LinkObserver()
        self._rng = random.Random()
        self._producer: AIOKafkaProducer | None = None
        self._up = asyncio.Event()
        self._down_since: float | None = None
        self._probe_task: asyncio.Task[None] | None = None
        self._closing: set[asyncio.Task[None]] = set()
        self._waiting = 0
        self._stopped = False

    # state ----------------------------------------------------------------------------------

    @property
    def up(self) -> bool:
        return self._up.is_set()

    async def wait_up(self) -> None:
        """Return once the broker is reachable."""
        await self._up.wait()

    @property
    def down_seconds(self) -> float:
        """How long the broker has been away (0 while it is reachable)."""
        return 0.0 if self._down_since is None else time.monotonic() - self._down_since

    @property
    def waiting(self) -> int:
        """Sends waiting for the broker to come back."""
        return self._waiting

    # life cycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect. A broker that is away at start is an outage like any other: the link starts
        down and probes until it is back."""
        try:
            await self._connect()
        except BROKER_ERRORS as error:
            self.failed("connect", error)
            return
        self._came_back()

    async def stop(self, timeout_seconds: float = 2.0) -> None:
        """Stop probing and close the producer, flushing what it holds for ``timeout_seconds``
        at most (a broker that is away would hold the flush until every batch expired)."""
        self._stopped = True
        if self._probe_task is not None:
            self._probe_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._probe_task
        producer, self._producer = self._producer, None
        closing = set(self._closing)
        if producer is not None:
            closing.add(asyncio.create_task(_close_quietly(producer)))
        if closing:
            _, unfinished = await asyncio.wait(closing, timeout=timeout_seconds)
            for task in unfinished:
                task.cancel()
            if unfinished:
                await asyncio.wait(unfinished)
                log.warning("kafka producer closed without flushing (broker unreachable)")

    # sending ----------------------------------------------------------------------------------

    async def send(
        self, topic: str, *, key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]]
    ) -> None:
        """Send one record and return once the broker has it (acks=all), however long that takes;
        raises ``RecordRefused`` only for a record the broker will never take."""
        while True:
            if self._stopped:
                raise RuntimeError("the broker link is stopped")
            producer = self._producer
            if producer is None or not self._up.is_set():
                self._waiting += 1
                try:
                    await self._up.wait()
                finally:
                    self._waiting -= 1
                continue
            try:
                async with asyncio.timeout(self._timeout):
                    await producer.send_and_wait(topic, value=value, key=key, headers=headers)
            except REFUSED_RECORD_ERRORS as error:
                raise RecordRefused(f"the broker refused the record: {error.__class__.__name__}") from error
            except BROKER_ERRORS as error:
                self.failed("produce", error, producer)
                continue
            self._observer.produced()
            return

    # what the engine reports ----------------------------------------------------------------

    def committed(self) -> None:
        self._observer.committed()

    def failed(self, operation: str, error: BaseException, producer: AIOKafkaProducer | None = None) -> None:
        """The broker could not be reached for ``operation``: the link goes down (once) and the
        probe takes over. A producer that failed is discarded."""
        self._observer.kafka_error(operation)
        if producer is not None:
            if producer is not self._producer:
                return  # discarded already (an earlier failure): the retry uses the current one
            self._producer = None
            self._close_later(producer)
        if self._stopped or (not self._up.is_set() and self._probe_task is not None):
            return
        self._up.clear()
        self._down_since = time.monotonic()
        self._observer.broker_up(False)
        log.warning(
            "kafka unreachable: consumption paused, results and dead letters wait",
            extra={"operation": operation, "error": _describe(error)},
        )
        self._probe_task = asyncio.create_task(self._probe(), name="kafka-probe")

    # internals --------------------------------------------------------------------------------

    async def _connect(self) -> None:
        """A fresh producer, started, that sees a leader for every partition written to."""
        producer = self._make_producer()
        try:
            async with asyncio.timeout(self._timeout):
                await producer.start()
                for topic in self._topics:
                    partitions = await producer.partitions_for(topic)
                    leader = producer.client.cluster.leader_for_partition
                    leaderless = [p for p in partitions if leader(TopicPartition(topic, p)) in (None, -1)]
                    if leaderless:
                        raise KafkaError(f"{topic} has partitions without a leader: {sorted(leaderless)}")
        except BaseException:
            self._close_later(producer)
            raise
        old, self._producer = self._producer, producer
        if old is not None:
            self._close_later(old)

    async def _probe(self) -> None:
        attempt = 0
        next_summary = time.monotonic() + self._summary_seconds
        while not self._stopped:
            attempt += 1
            try:
                await self._connect()
            except Exception as error:  # whatever it is: a probe that ended would leave the link down
                self._observer.kafka_error("probe")
                if time.monotonic() >= next_summary:
                    next_summary = time.monotonic() + self._summary_seconds
                    log.warning(
                        "kafka still unreachable",
                        extra={
                            "down_seconds": round(self.down_seconds, 1),
                            "probes": attempt,
                            "sends_waiting": self._waiting,
                            "error": _describe(error),
                        },
                    )
                await asyncio.sleep(self._backoff.delay(attempt, self._rng))
                continue
            self._came_back()
            return

    def _came_back(self) -> None:
        if self._down_since is not None:
            log.warning(
                "kafka reachable again: consumption resumes",
                extra={"down_seconds": round(self.down_seconds, 1), "sends_waiting": self._waiting},
            )
        self._down_since = None
        self._probe_task = None
        self._up.set()
        self._observer.broker_up(True)

    def _close_later(self, producer: AIOKafkaProducer) -> None:
        """Close a discarded producer in the background: its batches held while the broker is
        away end when they expire (the request timeout), and nobody needs to wait for that."""
        task = asyncio.create_task(_close_quietly(producer))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)


DISCARD_FLUSH_SECONDS = 1.0


async def _close_quietly(producer: AIOKafkaProducer) -> None:
    """Stop a producer, giving what it holds a moment to be flushed. A producer still holding
    batches for a broker that is away never stops by itself: its sender retries them, refreshing
    metadata without pause (about 9,000 attempts a second, measured), until the broker takes them.
    Closing its client ends that; what it held is sent again by the sends waiting for it."""
    try:
        async with asyncio.timeout(DISCARD_FLUSH_SECONDS):
            await producer.stop()
    except TimeoutError:
        with contextlib.suppress(*BROKER_ERRORS):
            await producer.client.close()
    except BROKER_ERRORS:
        pass


def _describe(error: BaseException) -> str:
    """The error's kind and text, on one line, for a log field."""
    text = " ".join(str(error).split())[:300]
    return f"{error.__class__.__name__}: {text}" if text else error.__class__.__name__
