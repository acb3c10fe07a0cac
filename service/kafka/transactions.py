"""Exactly-once results: an event's results, dead letters and consumed offset in one Kafka transaction.

With ``KAFKA_TRANSACTIONS=true`` nothing an event publishes is sent while it is handled: its records
are held (``EventOutputs``) and go to the broker in the partition's next transaction, together with
the partition's committed offset (its lowest unfinished event) and, in that offset's metadata, the
list of events past it whose records are committed too (``encode_done``). A ``read_committed``
consumer of the result or dead-letter topic thus sees each event's records exactly once, whatever
crashes, rebalances or frozen instances come between: a transaction not committed is aborted, its
events are neither below the committed offset nor in its list, so they are processed again (the
ledger returns their recorded outcomes, nothing is registered twice) and published in a later
transaction; the events in the list are skipped by whoever consumes the partition next.

**Which fencing model.** aiokafka 0.14 speaks version 0 of the transactional requests only
(``InitProducerId``, ``AddPartitionsToTxn``, ``AddOffsetsToTxn``, ``TxnOffsetCommit``, ``EndTxn``),
and ``send_offsets_to_transaction(offsets, group_id)`` sends the group id alone: no member id, no
generation. KIP-447's fencing by consumer-group metadata (``TxnOffsetCommit`` v3, Kafka 2.5) is
therefore not available. The classic model is: **one transactional id per consumed partition**
(``<prefix>-<topic>-<partition>``, the prefix being ``KAFKA_TRANSACTIONAL_ID_PREFIX`` or the group
id), whose producer is initialised when the partition is assigned. ``InitProducerId`` bumps the id's
epoch, aborts whatever transaction the previous holder left open and, from then on, refuses the
previous holder's requests (``INVALID_PRODUCER_EPOCH``: aiokafka's ``ProducerFenced``). An instance
frozen past its session timeout whose partitions went to another therefore commits neither results
nor offsets of those partitions once it wakes. Verified on Apache Kafka 3.9.2 and 4.1.0 (4.0 removed
old protocol versions, KIP-896, but not the version 0 transactional requests; KIP-890's stricter
transactions apply to newer request versions only): ``tests/integration/test_transactions.py``.

Consequences of the model, each handled here:

- The new owner reads the committed offset only after its producer is initialised (the
  initialisation waits for the previous holder's transaction to end), and seeks there: records
  fetched before are put back.
- A producer is re-initialised after a failure other than fencing (the broker away, a timeout) only
  while the partition is still assigned, after a pause of ``reinit_delay_seconds`` in which the
  consumer's heartbeat finds out whether the group moved on: re-initialising a partition that is no
  longer ours would fence its new owner.
- The list lets a result go out without waiting for the events before it in its partition (an
  invoice held up at Amili would otherwise hold back every result behind it). It is kept as
  ranges, so a long run of finished events costs a few characters; should it outgrow
  ``DONE_METADATA_CHARACTERS``, the events past the offset wait for it, as the offsets always did.
  Finished events waiting for their transaction count among the events held (``MAX_EVENTS_HELD``).
- The offset's metadata is read with the admin client's ``list_consumer_group_offsets``
  (``AIOKafkaConsumer.committed`` drops it): ``GroupOffsets``.
- One producer per assigned partition: each has its own connections and sender task (measured in
  ``docs/performance.md``).

Transactions are batched: each partition commits what it finished every ``interval_seconds``, or as
soon as ``max_events`` finished events wait. The ledger's "published" mark of a result waits for the
commit (``EventOutputs.committed``); a result recorded but never committed stays unpublished in the
ledger, and its event, whose offset was not committed either, publishes it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import InvalidProducerEpoch, ProducerFenced
from aiokafka.structs import OffsetAndMetadata

from service.events.cloudevents import CloudEvent
from service.events.record import InboundRecord
from service.kafka.link import BROKER_ERRORS, REFUSED_RECORD_ERRORS
from service.kafka.publishing import RESULT_HEADERS, dead_letter_headers, truncated_dead_letter
from service.registration import Backoff

log = logging.getLogger(__name__)

_FENCED = (ProducerFenced, InvalidProducerEpoch)


@dataclass(frozen=True, slots=True)
class Output:
    """One record an event publishes, and what to write instead should the broker refuse it for
    its size (a dead letter's truncated form)."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]
    smaller: Output | None = None


class EventOutputs:
    """What one event publishes, held until the transaction that commits its offset."""

    def __init__(self) -> None:
        self.records: list[Output] = []
        self.committed: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        """True once the transaction carrying the records committed; False when they were
        dropped (aborted, fenced, or the event abandoned): the event is processed again."""

    def settle(self, committed: bool) -> None:
        if not self.committed.done():
            self.committed.set_result(committed)


_current: ContextVar[EventOutputs | None] = ContextVar("event_outputs", default=None)


@contextlib.contextmanager
def event_outputs() -> Iterator[EventOutputs]:
    """Collect what the event handled in this task publishes (the engine runs each event in a task
    of its own, so the collection is the event's, wherever in the use case the publisher is
    called). Outputs never handed to a transaction are settled as dropped."""
    outputs = EventOutputs()
    token = _current.set(outputs)
    try:
        yield outputs
    finally:
        _current.reset(token)


def _collecting() -> EventOutputs:
    outputs = _current.get()
    if outputs is None:
        # Only the engine's events publish in transactional mode; a publish from elsewhere (the
        # start's publish_pending) would go out outside any transaction.
        raise RuntimeError("a transactional publish outside an event")
    return outputs


class TransactionalResultPublisher:
    """Holds an event's result for the transaction that commits the event's offset."""

    def __init__(self, topic: str) -> None:
        self._topic = topic

    async def publish_result(self, event: CloudEvent, key: bytes) -> Awaitable[bool]:
        outputs = _collecting()
        outputs.records.append(Output(self._topic, key, event.to_structured(), RESULT_HEADERS))
        return outputs.committed


class TransactionalDeadLetterPublisher:
    """Holds an event's dead letter for the transaction that commits the event's offset, with its
    truncated form should the broker refuse it whole (as ``KafkaDeadLetterPublisher`` does)."""

    def __init__(self, topic: str) -> None:
        self._topic = topic

    async def dead_letter(self, record: InboundRecord, rule: str, reason: str) -> None:
        headers = dead_letter_headers(record, rule, reason, datetime.now(UTC))
        value, kept = truncated_dead_letter(record, headers)
        smaller = Output(self._topic, record.key, value, kept)
        _collecting().records.append(Output(self._topic, record.key, record.value, headers, smaller))


class TransactionObserver:
    """Hooks for metrics; the default does nothing."""

    def transaction(self, outcome: str, events: int, seconds: float) -> None: ...

    def producers(self, count: int) -> None: ...


class LinkState(Protocol):
    """What the partitions' transactions need of the broker link: whether the broker is
    reachable, and where to report that it is not (consumption pauses, one probe runs)."""

    @property
    def up(self) -> bool: ...

    async def wait_up(self) -> None: ...

    def failed(self, operation: str, error: BaseException) -> None: ...


class _AlwaysUp:
    """No link to ask: every failure is tried again after the backoff."""

    @property
    def up(self) -> bool:
        return True

    async def wait_up(self) -> None:
        return None

    def failed(self, operation: str, error: BaseException) -> None:
        log.warning("transaction failed", extra={"operation": operation, "error": repr(error)})


@dataclass
class _Waiting:
    """Finished events of one partition not committed yet, by offset."""

    outputs: dict[int, EventOutputs] = field(default_factory=dict)
    target: int | None = None
    """The offset to commit: the partition's lowest unfinished one."""


DONE_PREFIX = "amili-registrar/done:"
DONE_METADATA_CHARACTERS = 1000
"""How long the list of events committed past the offset may grow in the offset's metadata (the
broker's ``offset.metadata.max.bytes`` is 4096 by default). Beyond it, results wait for the
offset to pass them, as the offsets always do."""


def encode_done(base: int, offsets: Iterable[int]) -> str:
    """The offsets at or after ``base`` whose records are committed, as the commit's metadata:
    ranges, each as its distance from the end of the one before and its length, in hex."""
    parts: list[str] = []
    end = base
    start: int | None = None
    previous = 0
    for offset in sorted(offset for offset in offsets if offset >= base):
        if start is not None and offset == previous + 1:
            previous = offset
            continue
        if start is not None:
            parts.append(f"{start - end:x}.{previous - start + 1:x}")
            end = previous + 1
        start = previous = offset
    if start is not None:
        parts.append(f"{start - end:x}.{previous - start + 1:x}")
    return DONE_PREFIX + ",".join(parts) if parts else ""


def decode_done(base: int, metadata: str) -> set[int]:
    """The offsets ``encode_done`` wrote; none for metadata of another kind (a commit made without
    transactions, or by another tool)."""
    if not metadata.startswith(DONE_PREFIX):
        return set()
    done: set[int] = set()
    end = base
    try:
        for part in metadata.removeprefix(DONE_PREFIX).split(","):
            gap, _, length = part.partition(".")
            start = end + int(gap, 16)
            end = start + int(length, 16)
            done.update(range(start, end))
    except ValueError:
        log.warning("unreadable offset metadata: every event after the offset is processed again")
        return set()
    return done


class GroupOffsets:
    """The group's committed offset of a partition, with its metadata.

    ``AIOKafkaConsumer.committed`` drops the metadata, so it is read with the admin client's
    ``list_consumer_group_offsets``: a client of its own, made on first use (aiokafka's clients
    belong to the loop they are made in) and closed with the transactions."""

    def __init__(self, make_admin: Callable[[], AIOKafkaAdminClient], group_id: str) -> None:
        self._make_admin = make_admin
        self._group_id = group_id
        self._admin: AIOKafkaAdminClient | None = None
        self._starting = asyncio.Lock()

    async def read(self, partition: TopicPartition) -> tuple[int | None, str]:
        admin = await self._started()
        found = await admin.list_consumer_group_offsets(self._group_id, partitions=[partition])
        committed = found.get(partition)
        if committed is None or committed.offset == -1:
            return None, ""
        return committed.offset, committed.metadata or ""

    async def _started(self) -> AIOKafkaAdminClient:
        async with self._starting:
            if self._admin is None:
                admin = self._make_admin()
                try:
                    await admin.start()
                except BaseException:
                    await admin.close()
                    raise
                self._admin = admin
            return self._admin

    async def close(self) -> None:
        admin, self._admin = self._admin, None
        if admin is not None:
            await admin.close()


class PartitionTransactions:
    """One consumed partition's transactional producer and the transactions it commits."""

    def __init__(
        self,
        partition: TopicPartition,
        *,
        make_producer: Callable[[str], AIOKafkaProducer],
        transactional_id: str,
        group_id: str,
        link: LinkState,
        owned: Callable[[], bool],
        interval_seconds: float,
        max_events: int,
        timeout_seconds: float,
        reinit_delay_seconds: float,
        backoff: Backoff,
        observer: TransactionObserver,
        on_committed: Callable[[int, int], None],
        committed_offset: Callable[[], Awaitable[tuple[int | None, str]]],
    ) -> None:
        self.partition = partition
        self._committed_offset = committed_offset
        self.transactional_id = transactional_id
        self._make_producer = make_producer
        self._group_id = group_id
        self._link = link
        self._owned = owned
        self._interval = interval_seconds
        self._max_events = max_events
        self._timeout = timeout_seconds
        self._reinit_delay = reinit_delay_seconds
        self._backoff = backoff
        self._observer = observer
        self._on_committed = on_committed
        self._rng = random.Random()
        self._producer: AIOKafkaProducer | None = None
        self._waiting = _Waiting()
        self._committed: int | None = None
        self._done: set[int] = set()
        """Offsets at or after the committed one whose records are committed (out of order)."""
        self._full = asyncio.Event()
        self._work = asyncio.Event()
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._unsure = False
        self._finished_since_commit = 0
        self.fenced = False
        self.ready = False
        """Initialised and positioned: the partition's records may be processed."""

    @property
    def waiting(self) -> int:
        """Finished events waiting for a transaction."""
        return len(self._waiting.outputs)

    # life cycle -------------------------------------------------------------------------------

    async def open(self) -> None:
        """Initialise the partition's producer (fencing any other holder of the transactional id,
        and waiting for its open transaction to be aborted) and start committing."""
        await self._initialise()
        self._task = asyncio.create_task(self._run(), name=f"transactions-{self.transactional_id}")

    async def close(self, *, commit_seconds: float) -> None:
        """Commit what is finished (within ``commit_seconds``), then stop: what is left is dropped,
        to be processed again by the partition's next owner."""
        self._closing = True
        self._full.set()
        self._work.set()
        stopped = True
        if self._task is not None:
            # The loop may be in a commit, or waiting for a broker that is away: bounded.
            done, _ = await asyncio.wait({self._task}, timeout=max(0.1, commit_seconds))
            if not done:
                self._task.cancel()
                await asyncio.wait({self._task})
                # A commit cut short may have gone through or not: nothing is sent again from
                # here; the next owner reads from the group which of the events are out.
                stopped = False
        if stopped and not self.fenced and self._producer is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.1, commit_seconds)):
                    await self.commit()
        self._drop_waiting()
        producer, self._producer = self._producer, None
        if producer is not None:
            await _stop_quietly(producer)

    def positioned(self, committed: int | None, metadata: str) -> None:
        """The group's committed offset and metadata, read after the initialisation: events listed
        there are out already and are not processed again."""
        self._committed = committed
        self._done = decode_done(committed, metadata) if committed is not None else set()
        self.ready = True

    def already_out(self, offset: int) -> bool:
        """Whether the event at ``offset`` had its records committed (before the last
        rebalance or crash), though the offset has not passed it yet."""
        return offset in self._done

    # what the engine reports ----------------------------------------------------------------

    def finished(self, offset: int, outputs: EventOutputs, target: int | None) -> None:
        """An event finished: its records wait for the transaction whose offset passes ``offset``;
        ``target`` is the partition's new committable offset."""
        if self.fenced or self._closing:
            outputs.settle(False)
            return
        self._waiting.outputs[offset] = outputs
        self._waiting.target = target
        # Counted as they finish, not as they become committable: counting those below the target
        # would walk every waiting event at each finish, and a partition held up by one invoice
        # can have thousands waiting. At worst a commit comes early with less in it.
        self._finished_since_commit += 1
        self._work.set()
        if self._finished_since_commit >= self._max_events:
            self._full.set()

    def advance(self, target: int | None) -> None:
        """The committable offset moved without an event of this instance finishing (one that
        was out already was skipped)."""
        if not self.fenced and not self._closing:
            self._waiting.target = target
            self._work.set()

    # committing ---------------------------------------------------------------------------------

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time() + self._interval
        while not self._closing and not self.fenced:
            if not self._pending():
                # Idle: no timer ticks (a hundred partitions ticking ten times a second cost 0.05 of
                # a core doing nothing). The first event to finish is committed at once if the last
                # commit is an interval ago.
                self._work.clear()
                if not self._pending():
                    await self._work.wait()
                if self._closing:
                    return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._full.wait(), timeout=max(0.0, due - loop.time()))
            # Every interval from the start of the last commit, not from its end: a result waits
            # for half an interval on average, whatever a commit takes.
            due = loop.time() + self._interval
            self._full.clear()
            self._finished_since_commit = 0
            if self._closing:
                return
            if not self._link.up:
                await self._link.wait_up()
            try:
                await self.commit()
            except asyncio.CancelledError:
                raise
            except Exception:  # a loop that ended would stop the partition's commits silently
                log.exception("transaction loop failed", extra=self._where())
                await asyncio.sleep(1.0)

    async def commit(self) -> None:
        """Commit, in one transaction, the records of the finished events and the partition's
        committable offset (its lowest unfinished one), whose metadata lists the events past it
        whose records are committed too (``encode_done``): so a result need not wait for the
        events before it in its partition, and none is published twice after a crash or a
        rebalance. A failure other than fencing leaves the records waiting for the next try;
        fencing drops them (another instance owns the partition and processes them again)."""
        async with self._lock:
            if self.fenced or not self._pending():
                return
            if self._producer is None and (self._closing or not await self._reinitialise()):
                return
            if self._unsure and not await self._learn_outcome():
                return
            target = self._waiting.target
            if target is None or not self._pending():
                return
            offsets, done, metadata = self._next_batch(target)
            batch = [self._waiting.outputs[offset] for offset in offsets]
            started = time.monotonic()
            try:
                await self._transaction(batch, target, metadata)
            except _FENCED as error:
                self._fence(error)
                return
            except REFUSED_RECORD_ERRORS as error:
                # A dead letter too large for the broker: written truncated in the next try, as
                # outside transactions, through a fresh producer (aiokafka keeps the sequence
                # numbers of records the broker refused, which a later batch would then skip).
                self._observer.transaction("refused", len(batch), time.monotonic() - started)
                self._shrink(batch, error)
                self._discard()
                return
            except (*BROKER_ERRORS, AssertionError) as error:
                # aiokafka asserts its transaction states: after a failure it may be in none that
                # lets the transaction go on. Either way the producer is replaced.
                self._observer.transaction("failed", len(batch), time.monotonic() - started)
                self._link.failed("transaction", error)
                self._discard()
                # A commit whose answer was lost may have been carried out all the same.
                self._unsure = True
                return
            self._observer.transaction("committed", len(batch), time.monotonic() - started)
            self._settle(target, done)

    def _pending(self) -> bool:
        """Whether there is anything to commit: records waiting, or an offset that moved."""
        target = self._waiting.target
        return bool(self._waiting.outputs) or (target is not None and target != self._committed)

    def _next_batch(self, target: int) -> tuple[list[int], set[int], str]:
        """Which waiting events go into the next transaction, the offsets past ``target`` that will
        then be out, and the metadata that says so: every waiting event, unless the list would
        outgrow the metadata; then those below ``target`` only."""
        waiting = sorted(self._waiting.outputs)
        done = {offset for offset in self._done if offset >= target}
        everything = done | {offset for offset in waiting if offset >= target}
        metadata = encode_done(target, everything)
        if len(metadata) <= DONE_METADATA_CHARACTERS:
            return waiting, everything, metadata
        return [offset for offset in waiting if offset < target], done, encode_done(target, done)

    def _settle(self, committed: int, done: set[int]) -> None:
        """``committed`` and the events of ``done`` past it are out: so are their records."""
        settled = [offset for offset in self._waiting.outputs if offset < committed or offset in done]
        for offset in settled:
            self._waiting.outputs.pop(offset).settle(True)
        self._committed = committed
        self._done = done
        self._on_committed(committed, len(settled))

    async def _learn_outcome(self) -> bool:
        """After a transaction whose end is unknown and a fresh producer (whose initialisation
        completed that transaction, one way or the other): the group's committed offset and its
        metadata say whether it was committed. If it was, its records are out and are not sent
        again."""
        try:
            async with asyncio.timeout(self._timeout):
                committed, metadata = await self._committed_offset()
        except BROKER_ERRORS as error:
            self._link.failed("transaction", error)
            return False
        self._unsure = False
        if committed is not None:
            self._settle(committed, decode_done(committed, metadata))
        return True

    async def _transaction(self, batch: list[EventOutputs], target: int, metadata: str) -> None:
        producer = self._producer
        assert producer is not None
        async with asyncio.timeout(self._timeout):
            await producer.begin_transaction()
            sent = [
                await producer.send(record.topic, value=record.value, key=record.key, headers=record.headers)
                for outputs in batch
                for record in outputs.records
            ]
            offsets = {self.partition: OffsetAndMetadata(target, metadata)}
            await producer.send_offsets_to_transaction(offsets, self._group_id)
            await producer.commit_transaction()
            # Committed: every send is acknowledged (a failed one fails the commit first).
            for future in sent:
                await future

    def _shrink(self, batch: list[EventOutputs], error: BaseException) -> None:
        shrunk = 0
        for outputs in batch:
            for index, record in enumerate(outputs.records):
                if record.smaller is not None:
                    outputs.records[index] = record.smaller
                    shrunk += 1
        log.warning(
            "the broker refused a record of a transaction: dead letters written truncated",
            extra={**self._where(), "error": repr(error), "truncated": shrunk},
        )

    # producers ------------------------------------------------------------------------------------

    async def _initialise(self) -> None:
        producer = self._make_producer(self.transactional_id)
        try:
            async with asyncio.timeout(self._timeout):
                await producer.start()
                # An empty transaction waits for the producer id: InitProducerId has bumped the
                # epoch (fencing the previous holder) and its open transaction has been aborted.
                await producer.begin_transaction()
                await producer.commit_transaction()
        except BaseException:
            await _stop_quietly(producer)
            raise
        self._producer = producer

    async def _reinitialise(self) -> bool:
        """A fresh producer after a failure, only for a partition still ours: wait a moment for the
        consumer's heartbeat to learn whether the group moved on (then the partition is revoked
        and closed meanwhile), and for the broker to be back."""
        await asyncio.sleep(self._reinit_delay)
        attempt = 0
        while not self._closing and not self.fenced and self._owned():
            if not self._link.up:
                await self._link.wait_up()
                continue
            attempt += 1
            try:
                await self._initialise()
            except BROKER_ERRORS as error:
                self._link.failed("transaction", error)
                await asyncio.sleep(self._backoff.delay(attempt, self._rng))
                continue
            log.info("transactional producer initialised again", extra=self._where())
            return True
        return False

    def _discard(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            task = asyncio.create_task(_stop_quietly(producer))
            _background.add(task)
            task.add_done_callback(_background.discard)

    def _fence(self, error: BaseException) -> None:
        if not self.fenced:
            log.warning(
                "fenced: another instance owns this partition now; its finished events are dropped "
                "here and processed again there",
                extra={**self._where(), "error": repr(error), "dropped": self.waiting},
            )
        self.fenced = True
        self._drop_waiting()
        self._discard()

    def _drop_waiting(self) -> None:
        for outputs in self._waiting.outputs.values():
            outputs.settle(False)
        self._waiting.outputs.clear()

    def _where(self) -> dict[str, object]:
        return {"topic": self.partition.topic, "partition": self.partition.partition}


_background: set[asyncio.Task[None]] = set()


async def _stop_quietly(producer: AIOKafkaProducer) -> None:
    try:
        async with asyncio.timeout(1.0):
            await producer.stop()
    except TimeoutError:
        with contextlib.suppress(*BROKER_ERRORS):
            await producer.client.close()
    except (*BROKER_ERRORS, AssertionError):
        pass


class Transactions:
    """The transactional producers of the partitions an instance consumes, one each."""

    def __init__(
        self,
        make_producer: Callable[[str], AIOKafkaProducer],
        *,
        offsets: GroupOffsets,
        group_id: str,
        id_prefix: str,
        link: LinkState | None = None,
        interval_seconds: float = 0.1,
        max_events: int = 1000,
        timeout_seconds: float = 10.0,
        reinit_delay_seconds: float = 3.0,
        backoff: Backoff | None = None,
        observer: TransactionObserver | None = None,
    ) -> None:
        self._make_producer = make_producer
        self._offsets = offsets
        self._group_id = group_id
        self._prefix = id_prefix
        self._link: LinkState = link or _AlwaysUp()
        self._interval = interval_seconds
        self._max_events = max_events
        self._timeout = timeout_seconds
        self._reinit_delay = reinit_delay_seconds
        self._backoff = backoff or Backoff(initial_seconds=0.5, max_seconds=5.0)
        self._observer = observer or TransactionObserver()
        self._rng = random.Random()
        self._partitions: dict[TopicPartition, PartitionTransactions] = {}

    async def committed_offset(self, partition: TopicPartition) -> tuple[int | None, str]:
        """The group's committed offset of ``partition`` and the metadata written with it."""
        return await self._offsets.read(partition)

    async def stop(self) -> None:
        """After every partition is closed: the client that reads the committed offsets."""
        await self._offsets.close()

    def transactional_id(self, partition: TopicPartition) -> str:
        return f"{self._prefix}-{partition.topic}-{partition.partition}"

    def get(self, partition: TopicPartition) -> PartitionTransactions | None:
        return self._partitions.get(partition)

    def ready(self, partition: TopicPartition) -> bool:
        channel = self._partitions.get(partition)
        return channel is not None and channel.ready and not channel.fenced

    def already_out(self, partition: TopicPartition, offset: int) -> bool:
        channel = self._partitions.get(partition)
        return channel is not None and channel.already_out(offset)

    @property
    def waiting(self) -> int:
        """Finished events of all partitions waiting for their transaction."""
        return sum(channel.waiting for channel in self._partitions.values())

    async def open(
        self,
        partition: TopicPartition,
        *,
        owned: Callable[[], bool],
        on_committed: Callable[[int, int], None],
        stopping: Callable[[], bool],
    ) -> PartitionTransactions | None:
        """The partition's producer, initialised (tried again with backoff while the broker is
        away, the partition still assigned and the instance not stopping); ``None`` if given up."""
        channel = PartitionTransactions(
            partition,
            make_producer=self._make_producer,
            transactional_id=self.transactional_id(partition),
            group_id=self._group_id,
            link=self._link,
            owned=owned,
            interval_seconds=self._interval,
            max_events=self._max_events,
            timeout_seconds=self._timeout,
            reinit_delay_seconds=self._reinit_delay,
            backoff=self._backoff,
            observer=self._observer,
            on_committed=on_committed,
            committed_offset=lambda: self.committed_offset(partition),
        )
        attempt = 0
        while True:
            attempt += 1
            try:
                await channel.open()
            except BROKER_ERRORS as error:
                self._link.failed("transaction", error)
                if stopping() or not owned():
                    return None
                await asyncio.sleep(self._backoff.delay(attempt, self._rng))
                continue
            break
        old = self._partitions.pop(partition, None)
        if old is not None:
            await old.close(commit_seconds=0)
        self._partitions[partition] = channel
        self._observer.producers(len(self._partitions))
        return channel

    async def close(self, partition: TopicPartition, *, commit_seconds: float) -> None:
        channel = self._partitions.pop(partition, None)
        if channel is not None:
            await channel.close(commit_seconds=commit_seconds)
        self._observer.producers(len(self._partitions))
