"""A producer adding fields to data does not stop registrations (UNKNOWN_FIELDS=ignore)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from devkit.emulator.app import Emulator
from devkit.produce import produce
from service.bootstrap import build_registrar
from tests.integration.harness import read_topic, settings_for

pytestmark = pytest.mark.kafka


async def test_an_event_with_unknown_fields_is_registered_and_not_dead_lettered(
    kafka_bootstrap_servers: str,
    emulator: tuple[str, Emulator],
    sample_events: list[dict[str, Any]],
    unique_name: str,
) -> None:
    amili_url, amili = emulator
    settings = settings_for(kafka_bootstrap_servers, amili_url, unique_name)
    event = copy.deepcopy(sample_events[0])
    event["data"]["loyalty_tier"] = "gold"
    event["data"]["customer"]["nickname"] = "Annie"
    event["data"]["lines"][0]["colour"] = "red"
    await produce(kafka_bootstrap_servers, settings.invoice_created_topic, [event], show_progress=False)

    async with build_registrar(settings).app:
        results = await read_topic(kafka_bootstrap_servers, settings.registration_result_topic, 1)

    assert [r["type"] for r in results] == ["amili-registrar.registration.registered.v1"]
    assert results[0]["data"]["inbound_event_id"] == event["id"]
    assert len(amili.store.all()) == 1
    assert await read_topic(kafka_bootstrap_servers, settings.dead_letter_topic, 1, wait_seconds=2) == []
