"""Fault injection: latency, error rates, throttling, hangs, and the admin endpoint that sets them."""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from devkit.emulator.app import Emulator
from devkit.emulator.faults import ConnectionDropped, FaultConfig, Faults
from devkit.emulator.settings import EmulatorSettings
from tests.unit.test_emulator import HEADERS, client_for, request

FAULTS = "/_admin/faults"


async def post(amili: httpx.AsyncClient, **changes: Any) -> httpx.Response:
    return await amili.post("/invoice--registrations", json=request(**changes), headers=HEADERS)


async def stored(amili: httpx.AsyncClient) -> int:
    total: int = (await amili.get("/_admin/registrations")).json()["total"]
    return total


async def test_fixed_latency() -> None:
    async with client_for(Emulator(EmulatorSettings(latency_ms=60))) as amili:
        started = time.perf_counter()
        assert (await amili.get("/invoices", headers=HEADERS)).status_code == 200
        assert time.perf_counter() - started >= 0.06
        started = time.perf_counter()
        await amili.get("/_admin/faults")  # admin routes are never delayed
        assert time.perf_counter() - started < 0.05


def test_heavy_tailed_latency_has_the_median_and_p99_asked_for() -> None:
    faults = Faults(FaultConfig(latency_median_ms=50, latency_p99_ms=500, fault_seed=3))
    delays = sorted(faults.decide().delay_seconds for _ in range(20_000))
    assert statistics.median(delays) == pytest.approx(0.050, rel=0.05)
    assert delays[int(len(delays) * 0.99)] == pytest.approx(0.500, rel=0.15)
    assert max(delays) > 1.0  # a heavy tail


def test_a_median_without_p99_is_a_fixed_extra_delay() -> None:
    faults = Faults(FaultConfig(latency_ms=10, latency_median_ms=20))
    assert [faults.decide().delay_seconds for _ in range(10)] == [pytest.approx(0.030)] * 10


async def statuses(seed: int, count: int) -> list[int]:
    settings = EmulatorSettings(
        error_500_rate=0.1, error_502_rate=0.1, error_503_rate=0.1, throttle_rate=0.1, fault_seed=seed
    )
    async with client_for(Emulator(settings)) as amili:
        return [(await amili.get("/invoices", headers=HEADERS)).status_code for _ in range(count)]


async def test_error_rates_are_reproducible_with_a_seed() -> None:
    first, again, other = await statuses(7, 400), await statuses(7, 400), await statuses(8, 400)
    assert first == again
    assert first != other
    for status in (200, 429, 500, 502, 503):
        share = first.count(status) / len(first)
        assert share == pytest.approx(0.6 if status == 200 else 0.1, abs=0.06), status


async def test_throttling_says_when_to_come_back() -> None:
    async with client_for(Emulator(EmulatorSettings(throttle_rate=1, retry_after_seconds=7))) as amili:
        response = await post(amili)
        assert response.status_code == 429
        assert response.headers["retry-after"] == "7"
        assert response.headers["x-ratelimit-remaining"] == "0"
        assert int(response.headers["x-ratelimit-reset"]) >= int(time.time()) + 6
        assert response.json()["_error"]["code"] == 429
        assert await stored(amili) == 0


async def test_gateway_errors_come_as_html_and_500_in_eves_shape() -> None:
    async with client_for(Emulator(EmulatorSettings(error_502_rate=1))) as amili:
        gateway = await post(amili)
        assert gateway.status_code == 502
        assert gateway.headers["content-type"].startswith("text/html")
        assert "502 Bad Gateway" in gateway.text
        await amili.put(FAULTS, json={"error_500_rate": 1})
        internal = await post(amili)
        assert internal.status_code == 500
        assert internal.json()["_status"] == "ERR"
        assert await stored(amili) == 0


async def test_an_error_after_the_registration_was_stored() -> None:
    settings = EmulatorSettings(error_503_rate=1, error_after_store_ratio=1)
    async with client_for(Emulator(settings)) as amili:
        assert (await post(amili)).status_code == 503
        assert await stored(amili) == 1
        await amili.put(FAULTS, json={})
        assert (await post(amili)).json()["_issues"] == {
            "invoice_number": "value 'INV-2024-002' is not unique"
        }


async def test_fail_the_next_n_requests() -> None:
    async with client_for(Emulator(EmulatorSettings())) as amili:
        config = (await amili.patch(FAULTS, json={"fail_next_count": 2, "fail_next_status": 500})).json()
        assert config["fail_next_count"] == 2
        assert (await post(amili)).status_code == 500
        assert (await amili.get(FAULTS)).json()["fail_next_count"] == 1  # admin calls do not count
        assert (await amili.get("/invoices", headers=HEADERS)).status_code == 500
        assert (await post(amili)).status_code == 201


async def test_a_hang_stores_the_registration_and_never_answers() -> None:
    amili_emulator = Emulator(EmulatorSettings(hang_rate=1, hang_seconds=60))
    async with client_for(amili_emulator) as amili:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(post(amili), timeout=0.3)
        assert await stored(amili) == 1
        assert amili_emulator.faults.holding == 0  # the client gave up; nothing is held for it


async def test_a_held_answer_goes_out_when_the_emulator_releases_it() -> None:
    amili_emulator = Emulator(EmulatorSettings(hang_rate=1, hang_seconds=60))
    async with client_for(amili_emulator) as amili:
        answer = asyncio.create_task(post(amili))
        while amili_emulator.faults.holding == 0:  # noqa: ASYNC110 - polled state of the emulator
            await asyncio.sleep(0.01)
        amili_emulator.faults.release()
        assert (await answer).status_code == 201


async def test_a_hang_ends_by_itself_after_hang_seconds() -> None:
    async with client_for(Emulator(EmulatorSettings(hang_rate=1, hang_seconds=0.2))) as amili:
        started = time.perf_counter()
        assert (await post(amili)).status_code == 201
        assert time.perf_counter() - started >= 0.2


async def test_a_reset_stores_the_registration_and_drops_the_connection() -> None:
    async with client_for(Emulator(EmulatorSettings(hang_rate=1, hang_mode="reset"))) as amili:
        with pytest.raises(httpx.RemoteProtocolError) as dropped:
            await post(amili)
        assert isinstance(dropped.value, ConnectionDropped)
        assert await stored(amili) == 1


async def test_faults_never_touch_admin_routes() -> None:
    settings = EmulatorSettings(error_500_rate=1, fail_next_count=3)
    async with client_for(Emulator(settings)) as amili:
        for path in ("/_admin/registrations", "/_admin/faults", "/_admin/tokens", "/openapi.json"):
            assert (await amili.get(path)).status_code == 200, path
        assert (await amili.get(FAULTS)).json()["fail_next_count"] == 3


async def test_the_admin_endpoint_reads_replaces_and_changes() -> None:
    async with client_for(Emulator(EmulatorSettings(latency_ms=5, throttle_rate=0.5))) as amili:
        config = (await amili.get(FAULTS)).json()
        assert config == {**FaultConfig().model_dump(), "latency_ms": 5, "throttle_rate": 0.5}
        changed = (await amili.patch(FAULTS, json={"error_502_rate": 0.25})).json()
        assert (changed["latency_ms"], changed["throttle_rate"], changed["error_502_rate"]) == (5, 0.5, 0.25)
        replaced = (await amili.put(FAULTS, json={"hang_rate": 0.1, "hang_mode": "reset"})).json()
        assert replaced == {**FaultConfig().model_dump(), "hang_rate": 0.1, "hang_mode": "reset"}
        assert (await amili.get(FAULTS)).json() == replaced


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"error_500_rate": 0.6, "throttle_rate": 0.5}, "_schema"),
        ({"error_500_rate": 2}, "error_500_rate"),
        ({"latency_ms": -1}, "latency_ms"),
        ({"hang_mode": "explode"}, "hang_mode"),
        ({"fail_next_status": 200}, "fail_next_status"),
        ({"latency_median_ms": 100, "latency_p99_ms": 50}, "_schema"),
        ({"no_such_fault": 1}, "no_such_fault"),
    ],
)
async def test_an_invalid_fault_configuration_is_422(body: dict[str, Any], field: str) -> None:
    async with client_for(Emulator(EmulatorSettings())) as amili:
        response = await amili.put(FAULTS, json=body)
        assert response.status_code == 422
        assert field in response.json()["_issues"]
        assert (await amili.get(FAULTS)).json() == FaultConfig().model_dump()  # unchanged


async def test_a_fault_body_must_be_a_json_object() -> None:
    async with client_for(Emulator(EmulatorSettings())) as amili:
        assert (await amili.put(FAULTS, content=b"{nope")).status_code == 400
        assert (await amili.patch(FAULTS, json=[1])).status_code == 400


def test_faults_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "LATENCY_MEDIAN_MS": "50",
        "LATENCY_P99_MS": "500",
        "ERROR_500_RATE": "0.01",
        "ERROR_502_RATE": "0.02",
        "ERROR_503_RATE": "0.03",
        "ERROR_AFTER_STORE_RATIO": "0.5",
        "THROTTLE_RATE": "0.04",
        "RETRY_AFTER_SECONDS": "2",
        "HANG_RATE": "0.05",
        "HANG_MODE": "reset",
        "HANG_SECONDS": "120",
        "FAIL_NEXT_COUNT": "3",
        "FAIL_NEXT_STATUS": "429",
        "FAULT_SEED": "42",
    }.items():
        monkeypatch.setenv(f"AMILI_EMULATOR_{name}", value)
    config = Emulator(EmulatorSettings()).faults.config
    assert config.model_dump() == {
        "latency_ms": 0.0,
        "latency_median_ms": 50.0,
        "latency_p99_ms": 500.0,
        "error_500_rate": 0.01,
        "error_502_rate": 0.02,
        "error_503_rate": 0.03,
        "error_after_store_ratio": 0.5,
        "throttle_rate": 0.04,
        "retry_after_seconds": 2,
        "hang_rate": 0.05,
        "hang_mode": "reset",
        "hang_seconds": 120.0,
        "fail_next_count": 3,
        "fail_next_status": 429,
        "fault_seed": 42,
        "capacity": 0,
        "rate_limit": 0.0,
        "rate_limit_window_seconds": 1,
        "rate_limit_retry_after": True,
    }


def test_rates_adding_up_to_more_than_one_are_refused_at_start() -> None:
    with pytest.raises(ValidationError):
        Emulator(EmulatorSettings(error_500_rate=0.7, hang_rate=0.7))
