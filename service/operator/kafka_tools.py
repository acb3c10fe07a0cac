"""Kafka for the operator commands, with the service's own connection settings (bootstrap servers,
SASL/TLS from ``kafka_security``): a topic read from its beginning to the end offsets it had when the
read began, records fetched by their offsets, a producer, a topic made when it is missing. Kafka's
failures become one-line ``OperatorError``s."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError, for_code
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from service.config import Settings
from service.operator.errors import OperatorError
from service.operator.output import progress_console

CLIENT_ID = "amili-registrar-operator"
FETCH_BYTES = 64 * 1024 * 1024
"""Fetch sizes of the operator's consumers: a record larger than the service's limits (an original
that was dead-lettered truncated) is read whole."""
STALL_SECONDS = 60.0
"""A read that gets nothing for this long, short of the end offsets it aims at, fails."""

_TOPIC_NAME = re.compile(r"[a-zA-Z0-9._-]{1,249}")


def check_topic_name(name: str) -> str:
    """``name`` if Kafka takes it as a topic name; ``OperatorError`` otherwise."""
    if not _TOPIC_NAME.fullmatch(name) or name in (".", ".."):
        raise OperatorError(f"{name!r} is not a Kafka topic name: 1 to 249 of a-z A-Z 0-9 . _ -")
    return name


@dataclass(frozen=True, slots=True)
class Record:
    """A record as read: where it is and its bytes."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = field(default_factory=tuple)
    timestamp_ms: int | None = None

    @property
    def place(self) -> str:
        """``topic/partition/offset``."""
        return f"{self.topic}/{self.partition}/{self.offset}"


def _record(consumed: Any) -> Record:
    return Record(
        topic=consumed.topic,
        partition=consumed.partition,
        offset=consumed.offset,
        key=consumed.key,
        value=consumed.value,
        # A null header value reads as empty, as the service reads it.
        headers=tuple((name, bytes(value or b"")) for name, value in consumed.headers),
        timestamp_ms=consumed.timestamp,
    )


def security_options(settings: Settings) -> dict[str, Any]:
    """aiokafka's connection options for ``settings``: bootstrap servers, security protocol,
    SASL and TLS as the service uses them."""
    from service.bootstrap import kafka_security

    _, options = kafka_security(settings)
    return {
        "bootstrap_servers": settings.kafka_bootstrap_servers,
        "client_id": CLIENT_ID,
        "request_timeout_ms": settings.kafka_request_timeout_ms,
        **options,
    }


@contextlib.contextmanager
def quiet_aiokafka() -> Iterator[None]:
    """aiokafka logs every failed connection attempt; the command says what failed once."""
    logger = logging.getLogger("aiokafka")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


@contextlib.contextmanager
def kafka_errors(settings: Settings, doing: str) -> Iterator[None]:
    """Kafka's failures while ``doing`` something, as one ``OperatorError`` line."""
    from service.kafka.startup import describe_error

    try:
        yield
    except (KafkaError, OSError, TimeoutError) as error:
        raise OperatorError(
            f"{doing}: Kafka at {settings.kafka_bootstrap_servers}: {describe_error(error)}"
        ) from error


def progress(description: str) -> Progress:
    """A progress bar on stderr (nothing when stderr is not a terminal), gone when done."""
    console = progress_console()
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    )


async def _started_consumer(settings: Settings) -> AIOKafkaConsumer:
    consumer = AIOKafkaConsumer(
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=FETCH_BYTES,
        fetch_max_bytes=FETCH_BYTES,
        **security_options(settings),
    )
    try:
        async with asyncio.timeout(settings.kafka_request_timeout_seconds + 5):
            await consumer.start()
    except BaseException:
        await consumer.stop()
        raise
    return consumer


async def partitions_of(settings: Settings, topic: str) -> list[TopicPartition] | None:
    """The partitions of ``topic``, or ``None`` when it does not exist (asking never creates it)."""
    from aiokafka.errors import UnknownTopicOrPartitionError

    admin = AIOKafkaAdminClient(**security_options(settings))
    try:
        async with asyncio.timeout(settings.kafka_request_timeout_seconds + 5):
            await admin.start()
            # Asked for by name, a topic that does not exist may be created (auto-creation).
            if topic not in set(await admin.list_topics()):
                return None
            (described,) = await admin.describe_topics([topic])
    finally:
        await admin.close()
    error = for_code(described["error_code"])
    if error is UnknownTopicOrPartitionError:
        return None
    if described["error_code"]:
        raise error()
    return [
        TopicPartition(topic, p["partition"])
        for p in sorted(described["partitions"], key=lambda p: p["partition"])
    ]


async def topic_exists(settings: Settings, topic: str) -> bool:
    with quiet_aiokafka(), kafka_errors(settings, f"cannot look topic {topic} up"):
        return await partitions_of(settings, topic) is not None


async def read_to_end(settings: Settings, topic: str, *, label: str | None = None) -> list[Record] | None:
    """Every record of ``topic`` from its beginning to the end offsets it had when the read began
    (those written since are left for the next read), in partition and offset order; ``None`` when
    the topic does not exist. A progress bar says how far it got."""
    with quiet_aiokafka(), kafka_errors(settings, f"cannot read {topic}"):
        partitions = await partitions_of(settings, topic)
        if partitions is None:
            return None
        consumer = await _started_consumer(settings)
        try:
            beginnings = await consumer.beginning_offsets(partitions)
            ends = await consumer.end_offsets(partitions)
            left = {tp: ends[tp] for tp in partitions if ends[tp] > beginnings[tp]}
            records: list[Record] = []
            if not left:
                return records
            consumer.assign(list(left))
            for tp in left:
                consumer.seek(tp, beginnings[tp])
            total = sum(ends[tp] - beginnings[tp] for tp in left)
            with progress(label or f"reading {topic}") as bar:
                task = bar.add_task(label or f"reading {topic}", total=total)
                await _read_until(consumer, left, records, lambda done: bar.update(task, completed=done))
            records.sort(key=lambda record: (record.partition, record.offset))
            return records
        finally:
            await consumer.stop()


async def _read_until(
    consumer: AIOKafkaConsumer,
    ends: Mapping[TopicPartition, int],
    into: list[Record],
    report: Any,
) -> None:
    left = dict(ends)
    done = 0
    loop = asyncio.get_running_loop()
    last_progress = loop.time()
    while left:
        batches = await consumer.getmany(*left, timeout_ms=500)
        for tp, consumed in batches.items():
            end = left.get(tp)
            if end is None:
                continue
            for item in consumed:
                if item.offset < end:
                    into.append(_record(item))
                    done += 1
        for tp in list(left):
            # The position passes gaps (compaction, transaction markers) that yield no record.
            if await consumer.position(tp) >= left[tp]:
                del left[tp]
                consumer.pause(tp)
        if batches:
            last_progress = loop.time()
            report(done)
        elif loop.time() - last_progress > STALL_SECONDS:
            where = ", ".join(f"partition {tp.partition} short of offset {end}" for tp, end in left.items())
            raise OperatorError(f"reading {next(iter(left)).topic} stalled: {where}")


@dataclass(frozen=True, slots=True)
class Missing:
    """Why a record asked for by its offset cannot be had."""

    reason: str


class RecordFetcher:
    """Fetches single records by topic, partition and offset (one consumer for all of them)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._consumer: AIOKafkaConsumer | None = None
        self._partitions: dict[str, list[TopicPartition] | None] = {}

    async def __aenter__(self) -> RecordFetcher:
        self._consumer = await _started_consumer(self._settings)
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._consumer is not None:
            await self._consumer.stop()

    async def fetch(self, topic: str, partition: int, offset: int) -> Record | Missing:
        consumer = self._consumer
        assert consumer is not None, "use RecordFetcher as an async context manager"
        if topic not in self._partitions:
            self._partitions[topic] = await partitions_of(self._settings, topic)
        partitions = self._partitions[topic]
        if partitions is None:
            return Missing(f"topic {topic} does not exist any more")
        tp = TopicPartition(topic, partition)
        if tp not in partitions:
            return Missing(f"topic {topic} has no partition {partition}")
        consumer.assign([tp])
        beginning = (await consumer.beginning_offsets([tp]))[tp]
        end = (await consumer.end_offsets([tp]))[tp]
        if offset < beginning:
            return Missing(f"{topic} partition {partition} now begins at offset {beginning} (retention)")
        if offset >= end:
            return Missing(f"{topic} partition {partition} ends at offset {end}")
        consumer.seek(tp, offset)
        found: list[Record] = []
        await _read_until(consumer, {tp: offset + 1}, found, lambda _: None)
        if not found or found[0].offset != offset:
            return Missing(f"{topic} partition {partition} has no record at offset {offset} any more")
        return found[0]


@contextlib.asynccontextmanager
async def producer(settings: Settings, *, max_request_size: int) -> AsyncIterator[AIOKafkaProducer]:
    """A started producer as the service's (all replicas acknowledge, idempotent). One that fails
    to start is stopped too, so that aiokafka has no "Unclosed AIOKafkaProducer" to add to the
    command's one line."""
    started = AIOKafkaProducer(
        acks="all",
        enable_idempotence=True,
        max_request_size=max_request_size,
        **security_options(settings),
    )
    try:
        async with asyncio.timeout(settings.kafka_request_timeout_seconds + 5):
            await started.start()
        yield started
    finally:
        with contextlib.suppress(KafkaError, OSError, TimeoutError):
            await started.stop()


async def create_topic(settings: Settings, topic: str, *, configs: Mapping[str, str]) -> bool:
    """Makes ``topic`` (one partition, replicated like the cluster allows, up to 3) unless it
    exists; whether it was made."""
    options = security_options(settings)
    admin = AIOKafkaAdminClient(**options)
    with quiet_aiokafka(), kafka_errors(settings, f"cannot create topic {topic}"):
        try:
            async with asyncio.timeout(settings.kafka_request_timeout_seconds + 5):
                await admin.start()
            if topic in set(await admin.list_topics()):
                return False
            cluster = await admin.describe_cluster()
            replicas = max(1, min(3, len(cluster.get("brokers", ()))))
            response = await admin.create_topics([NewTopic(topic, 1, replicas, topic_configs=dict(configs))])
            for _name, code, *rest in response.topic_errors:
                error = for_code(code)
                if error is TopicAlreadyExistsError:  # made meanwhile by someone else
                    return False
                if code:
                    message = rest[0] if rest and rest[0] else error.__name__
                    raise OperatorError(f"cannot create topic {topic}: {message}")
            return True
        finally:
            await admin.close()
