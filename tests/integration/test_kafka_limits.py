"""The size limits against a real broker: a topic's max.message.bytes as the broker reports it, the
broker's default for a topic not created yet, and a start refused for a dead-letter topic too small,
both in process and as the service's own process (one line, exit code 2)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from service.bootstrap import ConfigurationError, build_registrar, kafka_security
from service.config import Settings
from service.kafka.limits import TopicLimit, check_at_start, read_topic_limits
from tests.integration.harness import service_process, settings_for

pytestmark = pytest.mark.kafka

MiB = 1024 * 1024
NO_AMILI = "http://127.0.0.1:9"  # never called: these starts end before the first event


async def _create(bootstrap: str, topics: dict[str, int | None]) -> None:
    """Create each topic, with its max.message.bytes where one is given."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [
                NewTopic(name, 1, 1, topic_configs={"max.message.bytes": str(limit)} if limit else {})
                for name, limit in topics.items()
            ]
        )
    finally:
        await admin.close()


async def _broker_default(bootstrap: str) -> int:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        broker = str((await admin.describe_cluster())["brokers"][0]["node_id"])
        (response,) = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.BROKER, broker, {"message.max.bytes": None})]
        )
        return int(response.resources[0][4][0][1])
    finally:
        await admin.close()


async def _topic_exists(bootstrap: str, topic: str) -> bool:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return topic in await admin.list_topics()
    finally:
        await admin.close()


def _settings(bootstrap: str, unique_name: str) -> Settings:
    return settings_for(bootstrap, NO_AMILI, unique_name)


async def test_the_limits_of_topics_created_with_max_message_bytes_are_read(
    kafka_bootstrap_servers: str, unique_name: str
) -> None:
    settings = _settings(kafka_bootstrap_servers, unique_name)
    await _create(
        kafka_bootstrap_servers,
        {
            settings.invoice_created_topic: 3 * MiB,
            settings.registration_result_topic: 200_000,
            settings.dead_letter_topic: 2 * MiB,
        },
    )

    limits = await read_topic_limits(settings, kafka_security(settings)[1])

    assert limits.invoice_created == TopicLimit(
        settings.invoice_created_topic, "INVOICE_CREATED_TOPIC", 3 * MiB
    )
    assert limits.registration_result == TopicLimit(
        settings.registration_result_topic, "REGISTRATION_RESULT_TOPIC", 200_000
    )
    assert limits.dead_letter == TopicLimit(settings.dead_letter_topic, "DEAD_LETTER_TOPIC", 2 * MiB)


async def test_a_topic_not_created_yet_has_the_broker_default_and_is_not_created_by_the_check(
    kafka_bootstrap_servers: str, unique_name: str
) -> None:
    settings = _settings(kafka_bootstrap_servers, unique_name)
    await _create(kafka_bootstrap_servers, {settings.invoice_created_topic: None})
    broker_default = await _broker_default(kafka_bootstrap_servers)

    limits = await read_topic_limits(settings, kafka_security(settings)[1])

    # A topic created without max.message.bytes reports the broker's; one missing gets it too.
    assert limits.invoice_created == TopicLimit(
        settings.invoice_created_topic, "INVOICE_CREATED_TOPIC", broker_default
    )
    assert limits.dead_letter == TopicLimit(
        settings.dead_letter_topic, "DEAD_LETTER_TOPIC", broker_default, broker_default=True
    )
    assert limits.registration_result.broker_default
    assert not await _topic_exists(kafka_bootstrap_servers, settings.dead_letter_topic)


async def test_notes_are_logged_against_the_real_broker(
    kafka_bootstrap_servers: str, unique_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = _settings(kafka_bootstrap_servers, unique_name)
    await _create(kafka_bootstrap_servers, {settings.invoice_created_topic: 3 * MiB})
    caplog.set_level(logging.INFO, logger="service.kafka.limits")

    refusals = await check_at_start(settings, kafka_security(settings)[1])

    assert refusals == []
    lines = [record.getMessage() for record in caplog.records if record.name == "service.kafka.limits"]
    assert lines[0] == (
        f"events over {MiB} bytes go to dead letters as too_large, undecoded: MAX_EVENT_BYTES is "
        f"{MiB}, and topic {settings.invoice_created_topic} (INVOICE_CREATED_TOPIC) takes records of up "
        f"to {3 * MiB} bytes (max.message.bytes)"
    )
    assert len(lines) == 2
    assert lines[1].startswith("dead letters of events over")


def _refusal(settings: Settings) -> str:
    return (
        f"dead-letter topic {settings.dead_letter_topic} (DEAD_LETTER_TOPIC) takes records of up to 50000 "
        "bytes (max.message.bytes), less than a truncated dead letter needs (94208): raise the topic's "
        "max.message.bytes to at least 94208"
    )


async def test_a_dead_letter_topic_too_small_refuses_the_start_in_process(
    kafka_bootstrap_servers: str, unique_name: str
) -> None:
    settings = _settings(kafka_bootstrap_servers, unique_name)
    await _create(kafka_bootstrap_servers, {settings.dead_letter_topic: 50_000})

    with pytest.raises(ConfigurationError) as refused:
        async with build_registrar(settings).app:
            pytest.fail("the service started")

    assert str(refused.value) == _refusal(settings)


async def test_a_dead_letter_topic_too_small_ends_the_service_with_one_line_and_exit_code_2(
    kafka_bootstrap_servers: str, unique_name: str, tmp_path: Path
) -> None:
    settings = _settings(kafka_bootstrap_servers, unique_name)
    await _create(kafka_bootstrap_servers, {settings.dead_letter_topic: 50_000})
    output = tmp_path / "service.log"

    process = service_process(settings, output)
    try:
        code = await asyncio.to_thread(process.wait, 60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    lines = output.read_text(encoding="utf-8").splitlines()
    assert code == 2, lines
    assert lines.count(f"amili-registrar: {_refusal(settings)}") == 1
    assert [line for line in lines if "94208" in line] == [f"amili-registrar: {_refusal(settings)}"]
    assert not [line for line in lines if "Traceback" in line]
