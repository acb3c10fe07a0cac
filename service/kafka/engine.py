"""The consumption engine: many events in flight, per-invoice order, and safe commits.

FastStream's subscribers process one event at a time per consumer (or one consumer per partition),
and commit either too early or everything at once, so the engine is built on aiokafka directly:

- Up to ``max_events`` events are held at once, across partitions and within one partition, and
  up to ``max_active`` of them are handled at a time (how many of those may be registering with
  Amili is the processor's own limit; the rest wait for a place there or are finishing). Events with
  the same ordering key (creditor + invoice number) run one after another, in order.
- Fair order: held events ready to run start in turn of their creditors (``FairQueue``), so that
  a creditor's backlog read ahead takes no more than its share of the running events while
  another creditor's events wait; how far the engine reads ahead (``max_events``) is how far
  behind a backlog another creditor's events can be and still overtake it.
- Per partition the committed offset is the lowest offset not yet finished: never past an
  unfinished event, whatever finishes first.
- Backpressure: at the limit of events held nothing more is taken; when the window stays full for
  ``pause_after_seconds``, or while ``accepting()`` says no (the circuit towards Amili is open), the
  assigned partitions are paused, so that nothing more is fetched either. Before that the consumer
  holds at most one fetched batch per partition (its fetch sizes bound it): pausing at every brief
  saturation would discard those batches and fetch them again.
- Rebalance and shutdown: revoked partitions stop being fed, their events get ``drain_seconds``
  to finish, what is finished is committed, and the rest is abandoned uncommitted (the next owner
  processes it again, which the ledger makes harmless). A stop takes ``drain_seconds`` plus
  ``close_seconds`` at most, whether the broker answers or not.
- Transactions (``transactions`` given, ``KAFKA_TRANSACTIONS=true``): the consumer commits nothing
  itself. What an event publishes is held and committed by its partition's transactional producer
  together with the partition's offset, whose metadata lists the events past it that are out
  (``service.kafka.transactions``); a partition's records are processed only once its producer is
  initialised and the consumer positioned at the offset committed after that, and listed events
  are skipped. Finished events waiting for their transaction count among those held.
- Failures: an event whose handling keeps failing (a fault of ours, never an outage: the processor
  waits out Kafka, Amili and ledger outages itself) goes to dead letters after ``max_failures``
  tries; if dead-lettering fails too, it is tried again with backoff, logged each time, and the
  partition visibly stops at that offset rather than skip it. No task ends with an exception.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from aiokafka.errors import (
    CommitFailedError,
    IllegalGenerationError,
    KafkaError,
    RebalanceInProgressError,
    UnknownMemberIdError,
)
from aiokafka.structs import OffsetAndMetadata

from service.events.record import InboundRecord
from service.flow.fair import FairQueue
from service.kafka.link import BROKER_ERRORS
from service.kafka.transactions import EventOutputs, Transactions, event_outputs
from service.processing import Handled, Prepared, Route
from service.registration import Backoff

log = logging.getLogger(__name__)


class Processor(Protocol):
    def route(self, record: InboundRecord) -> Route: ...

    def prepare(self, record: InboundRecord) -> Prepared: ...

    async def handle(self, prepared: Prepared) -> Handled: ...

    async def give_up(self, prepared: Prepared, error: BaseException) -> Handled: ...


# A commit refused because the group moved on (a rebalance): not an outage of the broker.
_GROUP_CHANGED = (CommitFailedError, IllegalGenerationError, RebalanceInProgressError, UnknownMemberIdError)
COMMIT_TIMEOUT_SECONDS = 10.0
"""A commit that takes longer than this is abandoned (and tried again at the next interval)."""
LOOP_ERROR_SUMMARY_SECONDS = 60.0


class BrokerReports(Protocol):
    """Where the engine reports how its commits went (the broker link), and learns whether the
    broker is reachable: while it is not, no commit is tried (each would wait for its timeout)."""

    @property
    def up(self) -> bool: ...

    def committed(self) -> None: ...

    def failed(self, operation: str, error: BaseException) -> None: ...


class EngineObserver:
    """Hooks for metrics; the default does nothing."""

    def dead_letter_failed(self) -> None: ...

    def processing_failed(self, error: BaseException) -> None: ...

    def in_flight(self, count: int) -> None: ...

    def handled(self, handled: Handled, seconds: float) -> None: ...

    def lag(self, topic: str, partition: int, lag: int) -> None: ...

    def oldest_unfinished(self, topic: str, partition: int, seconds: float) -> None: ...

    def progress(self) -> None: ...


@dataclass
class PartitionProgress:
    """Offsets taken from one partition, in order, and which of them are finished."""

    pending: deque[int] = field(default_factory=deque)
    taken_at: deque[float] = field(default_factory=deque)
    """When each pending offset was taken (monotonic), in the same order."""
    finished: set[int] = field(default_factory=set)
    next_offset: int | None = None
    committed: int | None = None

    def take(self, offset: int, now: float = 0.0) -> None:
        self.pending.append(offset)
        self.taken_at.append(now)
        self.next_offset = offset + 1

    def finish(self, offset: int) -> None:
        self.finished.add(offset)
        while self.pending and self.pending[0] in self.finished:
            self.finished.discard(self.pending.popleft())
            self.taken_at.popleft()

    def oldest_unfinished_seconds(self, now: float) -> float:
        """How long the event the commits wait for has been under way (0: none is)."""
        return now - self.taken_at[0] if self.taken_at else 0.0

    @property
    def committable(self) -> int | None:
        """The offset to commit: the first unfinished one, or past everything taken."""
        return self.pending[0] if self.pending else self.next_offset

    @property
    def busy(self) -> int:
        return len(self.pending)


@dataclass(frozen=True, slots=True)
class _Held:
    """An event taken and not yet started: its record (decoded only when it starts) and route."""

    partition: TopicPartition
    record: InboundRecord
    route: Route


def _where(partition: TopicPartition, prepared: Prepared) -> dict[str, object]:
    return {"topic": partition.topic, "partition": partition.partition, "offset": prepared.record.offset}


def outcome_label(handled: Handled) -> str:
    """The outcome as logs and metrics name it: a dead letter has none of its own."""
    return handled.outcome.value if handled.outcome is not None else "dead_lettered"


def to_inbound_record(record: ConsumerRecord[bytes, bytes], taken_at: float | None = None) -> InboundRecord:
    return InboundRecord(
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        key=record.key,
        value=record.value,
        headers=tuple((key, value or b"") for key, value in record.headers),
        timestamp_ms=record.timestamp,
        taken_at=taken_at,
    )


class ConsumptionEngine:
    def __init__(
        self,
        *,
        consumer: Callable[[], AIOKafkaConsumer],
        topic: str,
        processor: Processor,
        max_events: int = 256,
        max_active: int | None = None,
        accepting: Callable[[], bool] = lambda: True,
        commit_interval_seconds: float = 1.0,
        drain_seconds: float = 15.0,
        backoff: Backoff | None = None,
        observer: EngineObserver | None = None,
        max_failures: int = 5,
        pause_after_seconds: float = 1.0,
        close_seconds: float = 5.0,
        commit_timeout_seconds: float = COMMIT_TIMEOUT_SECONDS,
        broker: BrokerReports | None = None,
        transactions: Transactions | None = None,
    ) -> None:
        # aiokafka clients must be made inside the running loop: the engine makes its own on start.
        self._make_consumer = consumer
        self._consumer: AIOKafkaConsumer = None
        self._topic = topic
        self._processor = processor
        self._max_events = max_events
        self._max_active = max_events if max_active is None else min(max_active, max_events)
        # Near the limit, slots are refilled a batch at a time: one fetch per freed slot would
        # cost a poll (and a pause and resume) per event.
        self._refill_batch = max(1, min(16, max_events // 8))
        self._accepting = accepting
        self._commit_interval = commit_interval_seconds
        self._drain_seconds = drain_seconds
        self._backoff = backoff or Backoff()
        self._observer = observer or EngineObserver()
        self._max_failures = max_failures
        self._pause_after = pause_after_seconds
        self._close_seconds = close_seconds
        self._commit_timeout = commit_timeout_seconds
        self._broker = broker
        self._transactions = transactions
        self._loop_errors = 0
        self._loop_error_logged_at = 0.0
        self._full_since: float | None = None
        self._rng = random.Random()
        self._progress: dict[TopicPartition, PartitionProgress] = {}
        self._tasks: dict[TopicPartition, set[asyncio.Task[None]]] = {}
        self._chains: dict[str, deque[_Held]] = {}
        self._ready: FairQueue[_Held] = FairQueue()
        self._active = 0
        self._revoking: set[TopicPartition] = set()
        self._in_flight = 0
        self._slots_freed = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._stopping = False
        self.connected = False
        self.last_progress = time.monotonic()

    @property
    def in_flight(self) -> int:
        """Events held: taken from Kafka and not yet finished (running or waiting to run)."""
        return self._in_flight

    @property
    def active(self) -> int:
        """Events being handled now."""
        return self._active

    @property
    def loop_failure(self) -> str | None:
        """Why the fetch loop ended though nobody stopped it; ``None`` while it runs. Liveness
        fails on it at once: an instance that no longer consumes must be restarted."""
        task = self._loop_task
        if task is None or not task.done() or self._stopping:
            return None
        if task.cancelled():
            return "the consumption loop was cancelled"
        error = task.exception()
        return f"the consumption loop ended: {error!r}" if error else "the consumption loop ended"

    # life cycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        self._consumer = self._make_consumer()
        self._consumer.subscribe([self._topic], listener=_Rebalance(self))
        await self._consumer.start()
        self.connected = True
        self._loop_task = asyncio.create_task(self._run(), name="consumption-engine")

    async def stop(self) -> None:
        """Stop fetching, give events in flight ``drain_seconds`` to finish, commit, leave the
        group: ``close_seconds`` more at most for the last two, answered or not (a broker that is
        away would hold them for its timeouts, past any grace period)."""
        self._stopping = True
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        self._revoking |= set(self._progress)
        self._abandon_ready(lambda _: True)
        loop = asyncio.get_running_loop()
        closed_by = loop.time() + self._drain_seconds + self._close_seconds
        await self._drain(list(self._progress), commit_seconds=self._close_seconds / 2)
        if self._transactions is not None:
            await self._transactions.stop()
        self.connected = False
        if self._consumer is None:  # stopped before it ever started
            return
        try:
            async with asyncio.timeout(max(0.1, closed_by - loop.time())):
                await self._consumer.stop()
        except BROKER_ERRORS as error:
            log.warning("the consumer did not leave its group cleanly", extra={"error": repr(error)})

    # the fetch loop -------------------------------------------------------------------------

    async def _run(self) -> None:
        next_commit = time.monotonic() + self._commit_interval
        while not self._stopping:
            try:
                await self._fetch_once()
                if time.monotonic() >= next_commit and (self._broker is None or self._broker.up):
                    if self._transactions is None:  # otherwise each partition's transactions commit
                        await self._commit(list(self._progress))
                    self._report_lag()
                    next_commit = time.monotonic() + self._commit_interval
                self._loop_errors = 0
            except asyncio.CancelledError:
                raise
            except Exception as error:
                # The client reconnects by itself, and a dead loop would stop the service silently:
                # say so (the first time, then once a minute) and go on.
                self._loop_error(error)
                await asyncio.sleep(1.0)

    async def _fetch_once(self) -> None:
        room = self._max_events - self._in_flight
        if self._transactions is not None:
            room -= self._transactions.waiting
        accepting = self._accepting()
        if accepting and room >= self._refill_batch:
            await self._take(room)
            return
        # Wait for slots. Cleared before any await, so that a slot freed meanwhile is not missed.
        self._slots_freed.clear()
        # Full only for a moment, as between refills, nothing is paused: meanwhile the consumer
        # holds at most one fetched batch per partition (bounded by its fetch sizes), and a pause
        # would throw those batches away, to be fetched and parsed again on resume.
        pausing = not accepting or self._full_for_long()
        if pausing:
            self._consumer.pause(*self._consumer.assignment())
            # Keep polling while paused, without waiting: it keeps the consumer in its group
            # (max.poll.interval). A partition assigned since the pause can still deliver: put such
            # records back.
            for partition, records in (await self._consumer.getmany(timeout_ms=0)).items():
                self._consumer.seek(partition, records[0].offset)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._slots_freed.wait(), timeout=0.2)
        if pausing:
            self._alive()

    async def _take(self, room: int) -> None:
        """Fetch up to ``room`` records (resuming paused partitions) and set them going."""
        self._full_since = None
        paused = self._consumer.paused()
        if paused:
            self._consumer.resume(*paused)
        batches = await self._consumer.getmany(timeout_ms=200, max_records=room)
        if not batches:
            self._alive()
        assignment = self._consumer.assignment()
        for partition, records in batches.items():
            if partition not in assignment:  # revoked while the fetch was under way: not ours
                continue
            if self._transactions is not None and not self._transactions.ready(partition):
                # Assigned, its producer not initialised yet: the offset to start from is read
                # once it is (and fenced whoever held the partition before). Put them back.
                self._consumer.seek(partition, records[0].offset)
                continue
            progress = self._progress.setdefault(partition, PartitionProgress())
            now = time.monotonic()
            for raw in records:
                progress.take(raw.offset, now)
                if self._transactions is not None and self._transactions.already_out(partition, raw.offset):
                    # Its results went out in a committed transaction past the committed offset:
                    # finished, not processed again.
                    progress.finish(raw.offset)
                    channel = self._transactions.get(partition)
                    if channel is not None:
                        channel.advance(progress.committable)
                    continue
                record = to_inbound_record(raw, now)
                self._admit(_Held(partition, record, self._processor.route(record)))

    def _loop_error(self, error: Exception) -> None:
        self._loop_errors += 1
        now = time.monotonic()
        if self._loop_errors > 1 and now - self._loop_error_logged_at < LOOP_ERROR_SUMMARY_SECONDS:
            return
        self._loop_error_logged_at = now
        if isinstance(error, KafkaError):
            extra = {"error": repr(error), "errors_in_a_row": self._loop_errors}
            log.warning("kafka error in the consume loop", extra=extra)
        else:
            log.error("unexpected error in the consume loop", exc_info=error)

    def _full_for_long(self) -> bool:
        """Whether the window has been full for longer than ``pause_after_seconds`` (Amili slow,
        say): then the partitions are paused, so that nothing more is fetched."""
        now = time.monotonic()
        if self._full_since is None:
            self._full_since = now
        return now - self._full_since >= self._pause_after

    def _admit(self, held: _Held) -> None:
        self._in_flight += 1
        self._observer.in_flight(self._in_flight)
        chain = self._chains.get(held.route.ordering_key)
        if chain is not None:  # an earlier event of this invoice is still running: queue behind it
            chain.append(held)
            return
        self._chains[held.route.ordering_key] = deque()
        self._ready.push(held.route.creditor, held)
        self._dispatch()

    def _owned(self, partition: TopicPartition) -> bool:
        if partition not in self._progress or partition in self._revoking:
            return False
        # A fenced partition belongs to another instance already: its events are not started here.
        return self._transactions is None or self._transactions.ready(partition)

    def _dispatch(self) -> None:
        """Start ready events, in turn of their creditors, while fewer than ``max_active`` run."""
        while self._ready and self._active < self._max_active:
            held = self._ready.pop()
            if not self._owned(held.partition):  # revoked while it waited: abandoned
                self._release()
                self._next_in_chain(held.route.ordering_key)
                continue
            self._active += 1
            self._spawn(held)

    def _abandon_ready(self, which: Callable[[TopicPartition], bool]) -> None:
        """Events of partitions given up that had not started: dropped, with what queued behind them."""
        for held in self._ready.remove(lambda item: which(item.partition)):
            self._release()
            self._next_in_chain(held.route.ordering_key)
        self._dispatch()

    def _spawn(self, held: _Held) -> None:
        partition = held.partition
        task = asyncio.create_task(self._handle(held))
        self._tasks.setdefault(partition, set()).add(task)
        task.add_done_callback(self._tasks[partition].discard)

    async def _handle(self, held: _Held) -> None:
        if self._transactions is None:
            await self._handle_event(held, None)
            return
        with event_outputs() as outputs:
            await self._handle_event(held, outputs)

    async def _handle_event(self, held: _Held, outputs: EventOutputs | None) -> None:
        started = time.monotonic()
        partition = held.partition
        handed = False
        try:
            prepared = self._processor.prepare(held.record)
            handled = await self._outcome(partition, prepared)
        except Exception:
            # Unreachable by design (prepare and _outcome end every event); were it reached, the
            # event stays unfinished: its partition's commits stop there, visibly, and it is
            # redelivered.
            log.exception("an event could not be ended", extra={"offset": held.record.offset})
        else:
            seconds = time.monotonic() - started
            self._observer.handled(handled, seconds)
            if log.isEnabledFor(logging.INFO):
                self._log_handled(partition, prepared, handled, seconds)
            progress = self._progress.get(partition)
            if progress is not None:
                progress.finish(held.record.offset)
                if outputs is not None and self._transactions is not None:
                    channel = self._transactions.get(partition)
                    if channel is not None:
                        channel.finished(held.record.offset, outputs, progress.committable)
                        handed = True
        finally:
            if outputs is not None and not handed:
                outputs.settle(False)  # abandoned: its records are dropped, the event redelivered
            # Finished, or cancelled (by a drain) wherever it was, even asleep between retries:
            # the slot is freed and what queued behind it goes on if its partition is still ours.
            self._active -= 1
            self._release()
            self._next_in_chain(held.route.ordering_key)
            self._dispatch()

    async def _outcome(self, partition: TopicPartition, prepared: Prepared) -> Handled:
        failures = 0
        while True:
            try:
                return await self._processor.handle(prepared)
            except Exception as error:
                # A fault of ours, not of the event: try again after a pause; an event that keeps
                # failing goes to dead letters rather than stall its partition.
                failures += 1
                self._observer.processing_failed(error)
                if failures >= self._max_failures:
                    return await self._give_up(partition, prepared, error)
                log.exception("processing failed; retrying", extra=_where(partition, prepared))
                await asyncio.sleep(self._backoff.delay(failures, self._rng))

    async def _give_up(self, partition: TopicPartition, prepared: Prepared, error: Exception) -> Handled:
        """Dead-letter an event that keeps failing. Should that fail too (the broker refuses the
        dead letter), it is tried again with backoff and said each time: the partition waits at
        this offset, in the logs and in ``registrar_dead_letter_failures_total``, never skipping it."""
        failures = 0
        while True:
            try:
                return await self._processor.give_up(prepared, error)
            except Exception as failure:
                failures += 1
                self._observer.dead_letter_failed()
                log.error(
                    "dead-lettering failed; retrying",
                    extra={**_where(partition, prepared), "error": repr(failure), "failures": failures},
                )
                await asyncio.sleep(self._backoff.delay(failures, self._rng))

    @staticmethod
    def _log_handled(partition: TopicPartition, prepared: Prepared, handled: Handled, seconds: float) -> None:
        log.info(
            "event handled",
            extra={
                "creditor": handled.key.creditor if handled.key else None,
                "invoice_number": handled.key.invoice_number if handled.key else None,
                "topic": partition.topic,
                "partition": partition.partition,
                "offset": prepared.record.offset,
                "outcome": outcome_label(handled),
                "dead_letter_rule": handled.dead_letter_rule,
                "attempts": handled.attempts,
                "duration_ms": round(seconds * 1000, 1),
            },
        )

    def _alive(self) -> None:
        """The loop went round: it finished an event, found nothing to fetch, or waits paused
        (Amili down, say). Liveness reads this; an outage must not get the instance restarted."""
        self.last_progress = time.monotonic()
        self._observer.progress()

    def _next_in_chain(self, key: str) -> None:
        """The next event of an invoice whose previous one ended becomes ready (in its creditor's
        turn, behind what that creditor already has ready)."""
        chain = self._chains.get(key)
        while chain:
            held = chain.popleft()
            if self._owned(held.partition):
                self._ready.push(held.route.creditor, held)
                return
            self._release()  # its partition was revoked: abandoned
        self._chains.pop(key, None)

    def _release(self) -> None:
        self._in_flight -= 1
        self._observer.in_flight(self._in_flight)
        self._alive()
        if self._max_events - self._in_flight >= self._refill_batch:
            self._slots_freed.set()

    # commits, rebalances, drains ------------------------------------------------------------------

    async def _commit(
        self, partitions: Iterable[TopicPartition], *, timeout_seconds: float | None = None
    ) -> None:
        offsets: dict[TopicPartition, OffsetAndMetadata] = {}
        for partition in partitions:
            progress = self._progress.get(partition)
            if progress is None:
                continue
            target = progress.committable
            if target is not None and target != progress.committed:
                offsets[partition] = OffsetAndMetadata(target, "")
        if not offsets:
            return
        try:
            async with asyncio.timeout(self._commit_timeout if timeout_seconds is None else timeout_seconds):
                await self._consumer.commit(offsets)
        except _GROUP_CHANGED as error:
            # Not fatal: the events are processed again by whoever owns them next.
            log.warning("commit refused (the group is rebalancing)", extra={"error": repr(error)})
            return
        except BROKER_ERRORS as error:
            # The broker cannot be reached: an outage, which pauses consumption until it is back.
            # Nothing is lost: the offsets are committed again at the next interval.
            if self._broker is not None:
                self._broker.failed("commit", error)
            else:
                log.warning("commit failed", extra={"error": repr(error)})
            return
        if self._broker is not None:
            self._broker.committed()
        for partition, committed in offsets.items():
            if partition in self._progress:
                self._progress[partition].committed = committed.offset

    def _report_lag(self) -> None:
        assignment = self._consumer.assignment()
        now = time.monotonic()
        for partition, progress in self._progress.items():
            if partition not in assignment:
                continue
            # A partition whose commits wait behind one event shows here, whatever holds it.
            seconds = progress.oldest_unfinished_seconds(now)
            self._observer.oldest_unfinished(partition.topic, partition.partition, seconds)
            end = self._consumer.highwater(partition)
            if end is not None and progress.committed is not None:
                self._observer.lag(partition.topic, partition.partition, max(0, end - progress.committed))

    async def _drain(self, partitions: list[TopicPartition], *, commit_seconds: float | None = None) -> None:
        tasks = {task for partition in partitions for task in self._tasks.get(partition, set())}
        if tasks:
            _, unfinished = await asyncio.wait(tasks, timeout=self._drain_seconds)
            for task in unfinished:
                task.cancel()
            if unfinished:
                await asyncio.wait(unfinished)
                log.warning(
                    "abandoned unfinished events (they will be redelivered)", extra={"count": len(unfinished)}
                )
        if self._transactions is None:
            await self._commit(partitions, timeout_seconds=commit_seconds)
            return
        seconds = self._commit_timeout if commit_seconds is None else commit_seconds
        transactions = self._transactions
        await asyncio.gather(*(transactions.close(p, commit_seconds=seconds) for p in partitions))

    async def on_revoked(self, revoked: set[TopicPartition]) -> None:
        self._revoking |= revoked
        self._abandon_ready(lambda partition: partition in revoked)
        try:
            if revoked:
                await self._drain(list(revoked))
        finally:
            for partition in revoked:
                self._progress.pop(partition, None)
                self._tasks.pop(partition, None)
            self._revoking -= revoked

    async def on_assigned(self, assigned: set[TopicPartition]) -> None:
        for partition in assigned:
            self._progress.setdefault(partition, PartitionProgress())
        if self._transactions is not None and assigned:
            await asyncio.gather(*(self._open_transactions(partition) for partition in assigned))

    async def _open_transactions(self, partition: TopicPartition) -> None:
        """Initialise the partition's transactional producer, then start from the offset committed
        after that: a previous holder's transaction is over by then, committed or aborted."""
        assert self._transactions is not None

        def assigned() -> bool:
            return partition in self._consumer.assignment() and not self._stopping

        channel = await self._transactions.open(
            partition,
            owned=assigned,
            on_committed=lambda offset, events: self._committed_in_transaction(partition, offset),
            stopping=lambda: self._stopping,
        )
        if channel is None or not assigned():
            return
        failures = 0
        while True:
            try:
                committed, metadata = await self._transactions.committed_offset(partition)
                break
            except BROKER_ERRORS as error:
                # Until it is read the partition stays unready (its records are put back): an
                # offset read before the initialisation may be older than the previous holder's
                # last commit.
                failures += 1
                log.warning("committed offset unreadable; retrying", extra={"error": repr(error)})
                await asyncio.sleep(self._backoff.delay(failures, self._rng))
                if not assigned():
                    return
        if not assigned():
            return
        if committed is None:
            await self._consumer.seek_to_beginning(partition)
        else:
            self._consumer.seek(partition, committed)
        progress = self._progress.setdefault(partition, PartitionProgress())
        progress.committed = committed
        channel.positioned(committed, metadata)

    def _committed_in_transaction(self, partition: TopicPartition, offset: int) -> None:
        progress = self._progress.get(partition)
        if progress is not None:
            progress.committed = offset
        if self._broker is not None:
            self._broker.committed()
        self._slots_freed.set()


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, engine: ConsumptionEngine) -> None:
        self._engine = engine

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._engine.on_revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self._engine.on_assigned(assigned)
