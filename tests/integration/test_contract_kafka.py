"""The event contract on a real broker, through the real service (Amili: the emulator).

- A fixed, seeded sample of undecodable records (tests/unit/test_decoder_fuzz.py) all land on the
  dead-letter topic with key, value and headers untouched, and the valid event among them still
  yields its result.
- An invoice-created event in structured mode and one in binary mode both end registered.
- Every result is valid against schemas/registration-result.schema.json, every dead letter's
  ``dlq.*`` headers against schemas/dead-letter-headers.schema.json.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import jsonschema
import pytest
from aiokafka import ConsumerRecord

from devkit.emulator.app import Emulator
from devkit.produce import produce
from devkit.schemas import DEAD_LETTER_HEADERS_FILE, RESULT_EVENT_FILE, SCHEMA_DIR
from service.bootstrap import build_registrar
from service.domain.checksums import is_valid_ocr
from service.domain.outcomes import Outcome
from service.events.cloudevents import EnvelopeError
from service.events.contract import RESULT_TYPES, decode_invoice_created
from service.events.record import InboundRecord
from service.operator.event_files import encode
from tests.integration.harness import kafka_producer, read_records, read_topic, settings_for
from tests.unit.test_decoder_fuzz import PATHOLOGICAL, WIRE_HOSTILE, Garbage, garbage_records

pytestmark = pytest.mark.kafka


def schema_validator(name: str) -> jsonschema.Draft202012Validator:
    schema = json.loads((SCHEMA_DIR / name).read_text(encoding="utf-8"))
    return jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )


async def read_until_settled(
    bootstrap: str, results_topic: str, dead_letter_topic: str
) -> tuple[list[dict[str, Any]], list[ConsumerRecord[bytes, bytes]]]:
    """Results and dead letters until there are two of them together (or 20 s pass)."""
    records = await read_records(bootstrap, results_topic, dead_letter_topic, count=2, wait_seconds=20.0)
    results = [json.loads(record.value) for record in records if record.topic == results_topic]
    return results, [record for record in records if record.topic != results_topic]


def expected_rule(garbage: Garbage, topic: str) -> str:
    try:
        decode_invoice_created(InboundRecord(topic, 0, 0, garbage.key, garbage.value, garbage.headers))
    except EnvelopeError as error:
        return error.rule
    raise AssertionError(f"{garbage.kind} decodes")


def check_registered(result: dict[str, Any], event: dict[str, Any]) -> None:
    schema_validator(RESULT_EVENT_FILE).validate(result)
    assert result["type"] == RESULT_TYPES[Outcome.REGISTERED]
    data = result["data"]
    assert data["outcome"] == "registered", data
    assert data["inbound_event_id"] == event["id"]
    assert data["invoice_number"] == event["data"]["invoice_number"]
    assert set(data["amili"]) == {"_id", "_invoice", "_case", "_ocr_number", "ocr_number_ocr"}
    assert is_valid_ocr(data["amili"]["ocr_number_ocr"])


async def test_garbage_is_dead_lettered_untouched_and_a_valid_event_still_registers(
    kafka_bootstrap_servers: str,
    emulator: tuple[str, Emulator],
    sample_events: list[dict[str, Any]],
    unique_name: str,
) -> None:
    amili_url, amili = emulator
    settings = settings_for(kafka_bootstrap_servers, amili_url, unique_name)
    topic = settings.invoice_created_topic
    garbage = garbage_records()
    valid = copy.deepcopy(sample_events[0])
    valid_value, valid_headers = encode(valid, binary=False)

    produced: dict[tuple[int, int], Garbage] = {}
    async with kafka_producer(kafka_bootstrap_servers) as producer:
        for index, item in enumerate(garbage):
            if index == len(garbage) // 2:  # the valid event amid the garbage
                await producer.send_and_wait(topic, value=valid_value, key=b"valid", headers=valid_headers)
            sent = await producer.send_and_wait(
                topic, value=item.value, key=item.key, headers=list(item.headers)
            )
            produced[(sent.partition, sent.offset)] = item

    async with build_registrar(settings).app:
        results = await read_topic(kafka_bootstrap_servers, settings.registration_result_topic, 1)
        letters = await read_records(
            kafka_bootstrap_servers, settings.dead_letter_topic, count=len(garbage), wait_seconds=60.0
        )

    assert len(results) == 1, results
    check_registered(results[0], valid)
    assert len(amili.store.all()) == 1

    assert len(letters) == len(garbage), f"{len(letters)} of {len(garbage)} dead letters"
    dlq_schema = schema_validator(DEAD_LETTER_HEADERS_FILE)
    seen = set()
    for letter in letters:
        ours = {key: value.decode() for key, value in letter.headers if key.startswith("dlq.")}
        dlq_schema.validate(ours)
        origin = (int(ours["dlq.partition"]), int(ours["dlq.offset"]))
        item = produced[origin]
        seen.add(origin)
        assert ours["dlq.topic"] == topic
        assert ours["dlq.rule"] == expected_rule(item, topic), item.kind
        assert letter.key == item.key, item.kind
        assert letter.value == item.value, item.kind
        own = [(key, value) for key, value in letter.headers if not key.startswith("dlq.")]
        assert own == list(item.headers), item.kind
        assert list(letter.headers)[: len(item.headers)] == list(item.headers), item.kind
    assert seen == set(produced)


async def test_structured_and_binary_mode_events_are_both_registered(
    kafka_bootstrap_servers: str,
    emulator: tuple[str, Emulator],
    sample_events: list[dict[str, Any]],
    unique_name: str,
) -> None:
    amili_url, amili = emulator
    settings = settings_for(kafka_bootstrap_servers, amili_url, unique_name)
    structured = copy.deepcopy(sample_events[1])  # a company, four lines, mixed VAT
    binary = copy.deepcopy(sample_events[2])  # a foreign customer
    topic = settings.invoice_created_topic
    await produce(kafka_bootstrap_servers, topic, [structured], show_progress=False)
    await produce(kafka_bootstrap_servers, topic, [binary], binary=True, show_progress=False)

    async with build_registrar(settings).app:
        results = await read_topic(kafka_bootstrap_servers, settings.registration_result_topic, 2)

    by_number = {result["data"]["invoice_number"]: result for result in results}
    assert len(results) == 2, results
    check_registered(by_number[structured["data"]["invoice_number"]], structured)
    check_registered(by_number[binary["data"]["invoice_number"]], binary)
    stored = {registration["invoice_number"]: registration for registration in amili.store.all()}
    assert set(stored) == set(by_number)
    for number, result in by_number.items():
        assert result["data"]["amili"]["_id"] == stored[number]["_id"]
    assert stored[binary["data"]["invoice_number"]]["customer"]["is_foreign"] is True


@pytest.mark.parametrize(
    "value", [*PATHOLOGICAL.values(), *WIRE_HOSTILE.values()], ids=[*PATHOLOGICAL, *WIRE_HOSTILE]
)
async def test_a_record_the_json_parser_or_amilis_wire_cannot_take_does_not_stop_the_service(
    value: bytes,
    kafka_bootstrap_servers: str,
    emulator: tuple[str, Emulator],
    sample_events: list[dict[str, Any]],
    unique_name: str,
) -> None:
    """One such record, then a valid event: the record ends as a dead letter (or a rejected result),
    and the valid event is registered. Were decoding or registering it to raise, the consumption
    engine would stop fetching, or retry the record forever and never commit past it."""
    amili_url, amili = emulator
    settings = settings_for(kafka_bootstrap_servers, amili_url, unique_name)
    async with kafka_producer(kafka_bootstrap_servers) as producer:
        await producer.send_and_wait(
            settings.invoice_created_topic,
            value=value,
            headers=[("content-type", b"application/cloudevents+json")],
        )
    valid = copy.deepcopy(sample_events[0])
    await produce(kafka_bootstrap_servers, settings.invoice_created_topic, [valid], show_progress=False)

    async with build_registrar(settings).app:
        results, letters = await read_until_settled(
            kafka_bootstrap_servers, settings.registration_result_topic, settings.dead_letter_topic
        )

    registered = [r for r in results if r["data"]["invoice_number"] == valid["data"]["invoice_number"]]
    assert len(registered) == 1, results
    check_registered(registered[0], valid)
    outcomes = [r["data"]["outcome"] for r in results if r not in registered]
    dead_lettered = [letter.value for letter in letters] == [value]
    assert dead_lettered or outcomes == ["rejected"], (outcomes, letters)
    assert len(amili.store.all()) == 1
