"""An event too large to be dead-lettered whole (its value plus the ``dlq.*`` headers exceed what
the producer or the broker takes) is dead-lettered truncated, and its partition moves on."""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from devkit.emulator.app import Emulator
from devkit.schemas import DEAD_LETTER_HEADERS_FILE
from service.bootstrap import build_registrar
from service.kafka.publishing import TRUNCATED_VALUE_BYTES
from tests.integration.harness import (
    committed_offset,
    kafka_producer,
    numbered,
    read_records,
    read_topic,
    settings_for,
    wait_for,
)
from tests.integration.test_contract_kafka import schema_validator

pytestmark = pytest.mark.kafka

MiB = 1024 * 1024


def _oversize_event(template: dict[str, Any], size: int) -> bytes:
    """A structured event of about ``size`` bytes that names no invoice (no invoice number): a dead
    letter, as no result could name it."""
    event = numbered(template, "HUGE-1")
    del event["data"]["invoice_number"]
    event["data"]["headline"] = ""
    padding = size - len(json.dumps(event).encode())
    event["data"]["headline"] = "x" * padding
    encoded = json.dumps(event).encode()
    assert abs(len(encoded) - size) < 16
    return encoded


@pytest.mark.parametrize(
    ("topic_limit", "event_size"),
    [(None, 1_048_300), (3 * MiB, 2 * MiB)],
    ids=["default-limits", "topic-of-3-MiB"],
)
async def test_an_event_too_large_to_dead_letter_whole_is_dead_lettered_truncated(
    kafka_bootstrap_servers: str,
    emulator: tuple[str, Emulator],
    sample_events: list[dict[str, Any]],
    unique_name: str,
    topic_limit: int | None,
    event_size: int,
) -> None:
    amili_url, amili = emulator
    settings = settings_for(kafka_bootstrap_servers, amili_url, unique_name)
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap_servers)
    await admin.start()
    try:
        configs = {"max.message.bytes": str(topic_limit)} if topic_limit else {}
        await admin.create_topics(
            [
                NewTopic(settings.invoice_created_topic, 1, 1, topic_configs=configs),
                NewTopic(settings.registration_result_topic, 1, 1),
                NewTopic(settings.dead_letter_topic, 1, 1),
            ]
        )
    finally:
        await admin.close()
    huge = _oversize_event(sample_events[2], event_size)
    before, after = (copy.deepcopy(numbered(sample_events[2], n)) for n in ("BEFORE-1", "AFTER-1"))
    async with kafka_producer(kafka_bootstrap_servers, max_request_size=4 * MiB) as producer:
        for value in (json.dumps(before).encode(), huge, json.dumps(after).encode()):
            await producer.send_and_wait(
                settings.invoice_created_topic,
                value,
                headers=[("content-type", b"application/cloudevents+json")],
            )

    async with build_registrar(settings).app:
        results = await read_topic(kafka_bootstrap_servers, settings.registration_result_topic, 2)

        async def all_committed() -> bool:
            topic, group = settings.invoice_created_topic, settings.consumer_group_id
            return await committed_offset(kafka_bootstrap_servers, group, topic) == 3

        await wait_for(all_committed, wait_seconds=30)

    assert sorted(r["data"]["invoice_number"] for r in results) == ["AFTER-1", "BEFORE-1"]
    assert len(amili.store.all()) == 2
    (dead_letter,) = await read_records(kafka_bootstrap_servers, settings.dead_letter_topic, count=1)
    headers = {name: value.decode() for name, value in dead_letter.headers}
    # Over MAX_EVENT_BYTES (1 MiB by default) it is not even read.
    assert headers["dlq.rule"] == ("too_large" if event_size > MiB else "data_schema")
    assert headers["dlq.offset"] == "1"
    assert headers["dlq.truncated"] == "value"
    assert headers["dlq.original_size"] == str(len(huge))
    assert headers["dlq.value_sha256"] == hashlib.sha256(huge).hexdigest()
    assert headers["dlq.headers_dropped"] == "0"
    assert headers["content-type"] == "application/cloudevents+json"  # the record's own, kept
    assert dead_letter.value == huge[:TRUNCATED_VALUE_BYTES]
    ours = {name: value for name, value in headers.items() if name.startswith("dlq.")}
    schema_validator(DEAD_LETTER_HEADERS_FILE).validate(ours)
    incomplete = {name: value for name, value in ours.items() if name != "dlq.value_sha256"}
    assert not schema_validator(DEAD_LETTER_HEADERS_FILE).is_valid(incomplete)
