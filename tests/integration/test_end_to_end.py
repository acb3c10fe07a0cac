"""invoice-created → the service → Amili (emulator) → registration-result, on a real broker."""

from __future__ import annotations

import copy
from typing import Any

import httpx
import pytest

from devkit.emulator.app import Emulator
from devkit.emulator.settings import DEMO_API_KEY
from devkit.produce import produce
from service.bootstrap import build_registrar
from service.domain.checksums import is_valid_ocr
from tests.integration.harness import (
    committed_offset,
    kafka_producer,
    read_records,
    read_topic,
    settings_for,
)

pytestmark = pytest.mark.kafka


async def test_an_event_becomes_one_registration_and_one_result(
    kafka_bootstrap_servers: str,
    emulator: tuple[str, Emulator],
    sample_events: list[dict[str, Any]],
    unique_name: str,
) -> None:
    amili_url, amili = emulator
    settings = settings_for(kafka_bootstrap_servers, amili_url, unique_name)
    event = copy.deepcopy(sample_events[1])  # a company with four lines and mixed VAT
    await produce(kafka_bootstrap_servers, settings.invoice_created_topic, [event], show_progress=False)

    async with build_registrar(settings).app:
        results = await read_topic(kafka_bootstrap_servers, settings.registration_result_topic, 1)

    assert len(results) == 1
    result = results[0]
    assert result["type"] == "amili-registrar.registration.registered.v1"
    data = result["data"]
    assert data["inbound_event_id"] == event["id"]
    assert data["invoice_number"] == "DEMO-1002"

    stored = amili.store.all()
    assert len(stored) == 1
    registration = stored[0]
    assert data["amili"] == {
        "_id": registration["_id"],
        "_invoice": registration["_invoice"],
        "_case": registration["_case"],
        "_ocr_number": registration["_ocr_number"],
        "ocr_number_ocr": registration["ocr_number_ocr"],
    }
    assert is_valid_ocr(data["amili"]["ocr_number_ocr"])
    assert registration["customer"] == {
        "name": "Nordic Timber AB",
        "customer_number": "C-30001",
        "id_number": "556036-0793",
        "is_company": True,
        "address": {
            "address_line_1": "Industrivägen 4",
            "address_line_2": "Box 118",
            "zip_code": "41250",
            "city": "Göteborg",
            "country": "SE",
            "gln": "7350012345678",
        },
        "email": "invoices@nordictimber.example",
    }
    assert [line["total_price_excluding_vat"] for line in registration["matrix"]] == [13800, 747, 955, -500]
    assert registration["invoice_due_date"] == "Fri, 04 Dec 2026 00:00:00 GMT"

    # Looked up over HTTP too, the way downstream would.
    async with httpx.AsyncClient(base_url=amili_url, headers={"x-api-key": DEMO_API_KEY}) as http:
        fetched = await http.get(f"/invoice--registrations/{data['amili']['_id']}")
    assert fetched.json()["invoice_number"] == "DEMO-1002"
    # The offset was committed after the result was published.
    assert (
        await committed_offset(
            kafka_bootstrap_servers, settings.consumer_group_id, settings.invoice_created_topic
        )
        == 1
    )


async def test_undecodable_events_go_to_dead_letters_and_the_stream_moves_on(
    kafka_bootstrap_servers: str,
    emulator: tuple[str, Emulator],
    sample_events: list[dict[str, Any]],
    unique_name: str,
) -> None:
    amili_url, amili = emulator
    settings = settings_for(kafka_bootstrap_servers, amili_url, unique_name)
    async with kafka_producer(kafka_bootstrap_servers) as producer:
        await producer.send_and_wait(
            settings.invoice_created_topic,
            b"not json",
            key=b"k1",
            headers=[("trace", b"t-1"), ("raw", b"\xff\xfe"), ("trace", b"t-2")],
        )
    await produce(
        kafka_bootstrap_servers, settings.invoice_created_topic, [sample_events[0]], show_progress=False
    )

    async with build_registrar(settings).app:
        results = await read_topic(kafka_bootstrap_servers, settings.registration_result_topic, 1)
        consumer_records = await read_records(kafka_bootstrap_servers, settings.dead_letter_topic, count=1)

    assert [r["data"]["invoice_number"] for r in results] == ["DEMO-1001"]
    assert len(amili.store.all()) == 1
    assert len(consumer_records) == 1
    letter = consumer_records[0]
    assert letter.value == b"not json"
    assert letter.key == b"k1"
    assert list(letter.headers)[:3] == [("trace", b"t-1"), ("raw", b"\xff\xfe"), ("trace", b"t-2")]
    headers = dict(letter.headers)
    assert headers["dlq.rule"] == b"json"
    assert headers["dlq.topic"] == settings.invoice_created_topic.encode()
    assert headers["dlq.offset"] == b"0"
