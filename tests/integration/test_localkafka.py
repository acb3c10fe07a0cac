"""The session's Kafka broker really stores and serves records (aiokafka admin, producer, consumer),
and a jar broker's life cycle: start, status, a second start, stop, a broker that cannot start."""

from __future__ import annotations

import asyncio
import shutil
import socket

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from service.localkafka import (
    LocalKafka,
    LocalKafkaError,
    default_cache_dir,
    default_version,
    free_port,
)

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
