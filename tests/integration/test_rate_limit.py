"""The service under Amili's rate limit, on a real broker and the emulator: it learns the limit
from X-RateLimit-* and keeps to it, with few refusals and no invoice lost or registered twice."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest

from devkit.emulator.app import Emulator
from devkit.produce import produce
from service.bootstrap import build_registrar
from tests.integration.harness import numbered, read_topic, set_faults, settings_for

pytestmark = pytest.mark.kafka

RATE = 25  # calls a second the emulator allows the API key
INVOICES = 250


async def load(amili_url: str) -> dict[str, int]:
    async with httpx.AsyncClient(base_url=amili_url) as http:
        response = await http.get("/_admin/load")
        response.raise_for_status()
        counts: dict[str, int] = response.json()
        return counts


async def test_a_low_rate_limit_is_kept_with_hardly_a_refusal(
    kafka_bootstrap_servers: str,
    emulator: tuple[str, Emulator],
    sample_events: list[dict[str, Any]],
    unique_name: str,
) -> None:
    amili_url, amili = emulator
    await set_faults(amili_url, rate_limit=RATE, latency_ms=20)
    settings = settings_for(kafka_bootstrap_servers, amili_url, unique_name)
    events = [numbered(sample_events[1], f"RL-{number:04d}") for number in range(INVOICES)]
    await produce(kafka_bootstrap_servers, settings.invoice_created_topic, events, show_progress=False)

    registrar = build_registrar(settings)
    started = time.monotonic()
    async with registrar.app:
        await asyncio.sleep(3)  # the first windows: the budget learns the limit from the answers
        early = await load(amili_url)
        results = await read_topic(
            kafka_bootstrap_servers, settings.registration_result_topic, INVOICES, wait_seconds=60
        )
        elapsed = time.monotonic() - started
        lowest_limit = registrar.flow.limit
    final = await load(amili_url)

    assert len(results) == INVOICES
    assert {result["data"]["outcome"] for result in results} == {"registered"}
    assert len(amili.store.all()) == INVOICES  # each invoice once
    assert elapsed >= INVOICES / RATE - 2  # the limit held (the emulator refuses the excess)
    # Refusals only while the budget knew nothing yet: after that, it stops before being refused.
    assert final["rate_limited"] - early["rate_limited"] <= 2, (early, final)
    assert final["rate_limited"] <= 0.05 * final["requests"], final
    # Calls wait for the budget, so latency rises and the limit comes down from its start.
    assert lowest_limit < settings.amili_initial_limit
