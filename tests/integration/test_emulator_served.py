"""The emulator on a real loopback socket (uvicorn): the faults that only a socket shows, and a
restart on the same store file. Needs no broker."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal

import httpx
import pytest

from devkit.emulator.app import Emulator
from devkit.emulator.server import serve_emulator
from devkit.emulator.settings import DEMO_API_KEY, EmulatorSettings
from devkit.localkafka import free_port
from tests.unit.test_emulator import HEADERS, request


@asynccontextmanager
async def served(**settings: Any) -> AsyncIterator[tuple[httpx.AsyncClient, Emulator]]:
    configured = EmulatorSettings(port=free_port(), **settings)
    async with serve_emulator(configured) as (url, emulator), httpx.AsyncClient(base_url=url) as http:
        yield http, emulator


async def test_a_reset_drops_the_connection_after_storing(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="uvicorn.error")
    async with served(hang_rate=1, hang_mode="reset") as (http, emulator):
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
            await http.post("/invoice--registrations", json=request(), headers=HEADERS)
        assert len(emulator.store.all()) == 1
    assert not [record for record in caplog.records if "Exception in ASGI application" in record.message]


async def test_a_hang_outlasts_the_client_and_does_not_hold_up_the_stop() -> None:
    async with httpx.AsyncClient() as patient:
        async with served(hang_rate=1, hang_seconds=3600) as (http, emulator):
            with pytest.raises(httpx.ReadTimeout):
                await http.post("/invoice--registrations", json=request(), headers=HEADERS, timeout=0.3)
            assert len(emulator.store.all()) == 1
            while emulator.faults.holding > 0:  # noqa: ASYNC110 - until the emulator saw the client go
                await asyncio.sleep(0.01)
            held = asyncio.create_task(
                patient.get(http.base_url.join("/invoices"), headers=HEADERS, timeout=30)
            )
            while emulator.faults.holding < 1:  # noqa: ASYNC110 - polled state of the emulator
                await asyncio.sleep(0.01)
            stopping = time.perf_counter()
        assert time.perf_counter() - stopping < 3  # the held answer went out at the stop
        assert (await held).status_code == 200


async def test_a_restart_on_the_same_file_keeps_registrations_and_views(tmp_path: Path) -> None:
    store = str(tmp_path / "amili.jsonl")
    async with served(store_path=store) as (http, _):
        receipt = (await http.post("/invoice--registrations", json=request(), headers=HEADERS)).json()
        paths = (
            f"/invoice--registrations/{receipt['_id']}",
            f"/invoices/{receipt['_invoice']}",
            f"/cases/{receipt['_case']}",
        )
        before = [(await http.get(path, headers=HEADERS)).json() for path in paths]
    async with served(store_path=store) as (http, _):
        after = [(await http.get(path, headers=HEADERS)).json() for path in paths]
        duplicate = await http.post("/invoice--registrations", json=request(), headers=HEADERS)
    assert after == before
    assert duplicate.status_code == 422


async def test_faults_can_be_switched_at_run_time_over_http() -> None:
    async with served() as (http, _):
        await http.put("/_admin/faults", json={"fail_next_count": 1, "fail_next_status": 429})
        throttled = await http.get("/invoices", headers=HEADERS)
        assert throttled.status_code == 429
        assert throttled.headers["retry-after"] == "1"
        assert (await http.get("/invoices", headers=HEADERS)).status_code == 200


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
@pytest.mark.parametrize("mode", ["reset", "sleep"])
async def test_the_service_client_sees_a_lost_answer_as_outcome_unknown(
    transport: Literal["aiohttp", "httpx"], mode: str
) -> None:
    from pydantic import SecretStr

    from service.amili.client import AmiliClient, HttpSettings
    from service.amili.models import InvoiceRegistrationRequest
    from service.ports import AmiliUnavailable

    body = InvoiceRegistrationRequest.model_validate(request())
    timeouts = HttpSettings(read_timeout_seconds=0.5, total_timeout_seconds=1, transport=transport)
    async with served(hang_rate=1, hang_mode=mode) as (http, emulator):
        async with AmiliClient(str(http.base_url), SecretStr(DEMO_API_KEY), timeouts) as client:
            with pytest.raises(AmiliUnavailable) as lost:
                await client.register(body)
            assert lost.value.outcome_unknown
            emulator.faults.replace(emulator.faults.config.model_copy(update={"hang_rate": 0}), reseed=False)
            found = await client.find_registration(body.creditor, body.invoice_number)
        assert found is not None
        assert found.id == emulator.store.all()[0]["_id"]
