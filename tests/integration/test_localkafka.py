"""The session's Kafka broker really stores and serves records (aiokafka admin, producer, consumer),
and a jar broker's life cycle: start, status, a second start, stop, a restart on the same port and
data, a broker that cannot start."""

from __future__ import annotations

import asyncio
import shutil
import socket

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from devkit.localkafka import (
    LocalKafka,
    LocalKafkaError,
    default_cache_dir,
    default_version,
    free_port,
)
from devkit.localkafka.broker import ephemeral_port_range

pytestmark = pytest.mark.kafka


async def test_topic_produce_consume_roundtrip(kafka_bootstrap_servers: str, unique_name: str) -> None:
    topic = f"roundtrip-{unique_name}"
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap_servers)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name=topic, num_partitions=1, replication_factor=1)])
        assert topic in await admin.list_topics()
    finally:
        await admin.close()

    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap_servers, enable_idempotence=True)
    await producer.start()
    try:
        sent = await producer.send_and_wait(
            topic, b'{"hello": "kafka"}', key=b"k1", headers=[("h", b"\x00\xff")]
        )
    finally:
        await producer.stop()
    assert sent.offset == 0

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=kafka_bootstrap_servers,
        group_id=f"group-{unique_name}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        record = await asyncio.wait_for(consumer.getone(), timeout=60)
        await consumer.commit()
    finally:
        await consumer.stop()
    assert (record.key, record.value, list(record.headers)) == (
        b"k1",
        b'{"hello": "kafka"}',
        [("h", b"\x00\xff")],
    )


def _jar_broker_possible() -> bool:
    libs = default_cache_dir() / default_version() / "libs" / ".complete"
    return shutil.which("java") is not None and (libs.exists() or shutil.which("mvn") is not None)


jar_broker = pytest.mark.skipif(
    not _jar_broker_possible(), reason="needs java, and mvn unless the jars are cached"
)


@jar_broker
def test_jar_broker_life_cycle() -> None:
    broker = LocalKafka(name="pytest-lifecycle")
    broker.stop()
    try:
        bootstrap = broker.start(timeout=120)
        assert bootstrap == f"127.0.0.1:{broker.port}"
        with socket.create_connection(("127.0.0.1", broker.port), timeout=5):
            pass
        status = broker.status()
        assert status is not None
        assert status["running"] is True
        assert (status["bootstrap"], status["version"]) == (bootstrap, broker.version)
        assert broker.pid_file.read_text().strip() == str(status["pid"])

        # another handle on the same name sees the running broker and reuses it
        again = LocalKafka(name="pytest-lifecycle", version=broker.version)
        assert again.is_running()
        assert again.start() == bootstrap
    finally:
        assert broker.stop() is True
    assert broker.status() is None
    assert not broker.is_running()
    assert broker.stop() is False  # idempotent


@jar_broker
def test_jar_broker_that_cannot_bind_reports_one_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        controller_port = free_port()
        broker = LocalKafka(
            name="pytest-broken",
            controller_port=controller_port,
            extra_properties={  # the broker listener asks for the port held above
                "listeners": f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
            },
        )
        with pytest.raises(LocalKafkaError) as caught:
            broker.start(timeout=120)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("broker exited during start-up")
    assert broker.status() is None
    broker.stop()


async def _produce_one(bootstrap: str, topic: str) -> int:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        sent = await producer.send_and_wait(topic, b"kept across a restart", key=b"k")
    finally:
        await producer.stop()
    return int(sent.offset)


async def _read_all(bootstrap: str, topic: str) -> list[bytes | None]:
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        batches = await consumer.getmany(timeout_ms=30_000, max_records=10)
        return [record.value for records in batches.values() for record in records]
    finally:
        await consumer.stop()


@jar_broker
def test_jar_broker_restarts_on_its_port_with_its_data() -> None:
    broker = LocalKafka(name="pytest-restart")
    broker.stop()
    try:
        bootstrap = broker.start(timeout=120)
        ports = (broker.port, broker.controller_port)
        low, high = ephemeral_port_range()
        assert all(port < low or port > high for port in ports)
        assert asyncio.run(_produce_one(bootstrap, "restart")) == 0

        assert broker.stop() is True  # SIGTERM: a controlled shutdown
        assert not broker.is_running()
        assert broker.start(timeout=120) == bootstrap
        assert (broker.port, broker.controller_port) == ports
        assert asyncio.run(_read_all(bootstrap, "restart")) == [b"kept across a restart"]
    finally:
        broker.stop()
        shutil.rmtree(broker.run_dir, ignore_errors=True)
