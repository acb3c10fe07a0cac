"""The input contract against the real broker and the emulator, records produced by a plain Kafka
client: what the seed allows reaches Amili as the seed sends it, and the routing rule holds (an
event that names its invoice gets a result, registered or rejected; one that names none, or is not
JSON by its content type, is a dead letter), with every partition committed to its end."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from devkit.emulator.app import Emulator
from devkit.produce import create_topics
from service.bootstrap import build_registrar
from tests.integration.harness import (
    committed,
    kafka_producer,
    numbered,
    read_records,
    settings_for,
    wait_for,
)

pytestmark = pytest.mark.kafka

STRUCTURED = [("content-type", b"application/cloudevents+json")]
PARTITIONS = 3

Case = tuple[str, bytes, list[tuple[str, bytes]], str, str]
"""(invoice number or label, value, headers, expected outcome or dead-letter rule, a field path
the result's reasons or warnings must name, or "")."""


def _structured(event: dict[str, Any]) -> bytes:
    return json.dumps(event).encode()


def _binary(event: dict[str, Any], content_type: bytes) -> tuple[bytes, list[tuple[str, bytes]]]:
    headers = [(f"ce_{name}", str(value).encode()) for name, value in event.items() if name != "data"]
    return json.dumps(event["data"]).encode(), [*headers, ("content-type", content_type)]


def _seed_event(template: dict[str, Any]) -> dict[str, Any]:
    """The seed's example request as an event: times of day, the seed's id number."""
    event = numbered(template, "SEED-1")
    data = event["data"]
    data.update(
        issue_date="2024-01-21T10:11:22Z",
        delivery_date="2024-01-21T10:11:22Z",
        due_date="2024-01-31T10:11:22Z",
    )
    data["customer"].update(type="person", id_number="556789-1234")
    return event


def cases(template: dict[str, Any]) -> list[Case]:
    def event(number: str, **changes: Any) -> dict[str, Any]:
        copied = numbered(template, number)
        copied["data"].update(changes)
        return copied

    kwh = event("KWH-1")
    kwh["data"]["lines"] = [
        {
            "description": "El",
            "quantity": "1234.567891",
            "unit_price": "1.2345",
            "total_excluding_vat": "1524.07",
        }
    ]
    no_type = event("NOTYPE-1")
    del no_type["data"]["customer"]["type"]
    no_due = event("NODUE-1")
    del no_due["data"]["due_date"]
    no_number = event("x")
    del no_number["data"]["invoice_number"]
    text_data = {**event("TEXT-1"), "datacontenttype": "text/plain"}
    binary_text_value, binary_text_headers = _binary(event("BINTEXT-1"), b"text/plain")
    binary_value, binary_headers = _binary(event("BIN-1"), b"application/json; charset=utf-8")
    unknown = event("UNKNOWN-1", loyalty_tier="gold")
    return [
        ("SEED-1", _structured(_seed_event(template)), STRUCTURED, "registered", "data.customer.id_number"),
        ("KWH-1", _structured(kwh), STRUCTURED, "registered", ""),
        ("NOTYPE-1", _structured(no_type), STRUCTURED, "rejected", "data.customer.type"),
        ("SEK-LOWER-1", _structured(event("SEK-LOWER-1", currency="sek")), STRUCTURED, "registered", ""),
        ("EUR-1", _structured(event("EUR-1", currency="EUR")), STRUCTURED, "rejected", "data.currency"),
        (
            "EUR-LOWER-1",
            _structured(event("EUR-LOWER-1", currency="eur")),
            STRUCTURED,
            "rejected",
            "data.currency",
        ),
        (
            "CODE-BAD-1",
            _structured(event("CODE-BAD-1", currency="kronor")),
            STRUCTURED,
            "rejected",
            "data.currency",
        ),
        ("NODUE-1", _structured(no_due), STRUCTURED, "rejected", "data.due_date"),
        (
            "LETTER-1",
            _structured(event("LETTER-1", letter_template="t")),
            STRUCTURED,
            "rejected",
            "data.letter_template",
        ),
        ("NOHEADERS-1", _structured(event("NOHEADERS-1")), [], "registered", ""),
        ("BIN-1", binary_value, binary_headers, "registered", ""),
        ("UNKNOWN-1", _structured(unknown), STRUCTURED, "registered", ""),
        ("no invoice number", _structured(no_number), STRUCTURED, "data_schema", ""),
        ("structured text/plain", _structured(text_data), STRUCTURED, "content_type", ""),
        ("binary text/plain", binary_text_value, binary_text_headers, "content_type", ""),
    ]


async def test_every_case_ends_as_the_routing_rule_says(
    kafka_bootstrap_servers: str,
    emulator: tuple[str, Emulator],
    sample_events: list[dict[str, Any]],
    unique_name: str,
) -> None:
    amili_url, amili = emulator
    settings = settings_for(kafka_bootstrap_servers, amili_url, unique_name, id_number_check="warn")
    await create_topics(kafka_bootstrap_servers, {settings.invoice_created_topic: PARTITIONS})
    template = copy.deepcopy(sample_events[0])
    all_cases = cases(template)
    async with kafka_producer(kafka_bootstrap_servers) as producer:
        for index, (_, value, headers, _, _) in enumerate(all_cases):
            await producer.send_and_wait(
                settings.invoice_created_topic, value, key=f"k-{index}".encode(), headers=headers
            )
    named = [case for case in all_cases if case[3] in ("registered", "rejected")]
    dead = [case for case in all_cases if case not in named]

    async with build_registrar(settings).app:
        results = await read_records(
            kafka_bootstrap_servers, settings.registration_result_topic, count=len(named)
        )
        letters = await read_records(kafka_bootstrap_servers, settings.dead_letter_topic, count=len(dead))
        consumer_ends = await _end_offsets(kafka_bootstrap_servers, settings.invoice_created_topic)

        async def all_committed() -> bool:
            done = await committed(
                kafka_bootstrap_servers,
                settings.consumer_group_id,
                settings.invoice_created_topic,
                PARTITIONS,
            )
            return all(done[p] == consumer_ends[p] for p in range(PARTITIONS))

        await wait_for(all_committed, wait_seconds=20)

    by_number = {json.loads(r.value)["data"]["invoice_number"]: json.loads(r.value)["data"] for r in results}
    assert sorted(by_number) == sorted(case[0] for case in named)
    for number, _, _, outcome, field in named:
        data = by_number[number]
        assert data["outcome"] == outcome, (number, data)
        if field:
            named_fields = {r["field"] for r in data.get("reasons", []) + data.get("warnings", [])}
            assert field in named_fields, (number, data)
    rules = sorted(dict(r.headers)["dlq.rule"].decode() for r in letters)
    assert rules == sorted(case[3] for case in dead)

    stored = {doc["invoice_number"]: doc for doc in amili.store.all()}
    assert sorted(stored) == sorted(case[0] for case in named if case[3] == "registered")
    seed = stored["SEED-1"]
    assert (seed["invoice_date"], seed["invoice_due_date"]) == (
        "Sun, 21 Jan 2024 10:11:22 GMT",
        "Wed, 31 Jan 2024 10:11:22 GMT",
    )
    assert seed["customer"]["id_number"] == "556789-1234"
    assert (stored["KWH-1"]["matrix"][0]["unit_price"], stored["KWH-1"]["matrix"][0]["number_of_units"]) == (
        1.2345,
        1234.567891,
    )
    assert stored["SEK-LOWER-1"]["currency"] == "SEK"


async def _end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        ends = await consumer.end_offsets([TopicPartition(topic, p) for p in range(PARTITIONS)])
        return {tp.partition: offset for tp, offset in ends.items()}
    finally:
        await consumer.stop()
