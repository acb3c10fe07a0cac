"""The emulator's capacity model: a per-key rate limit in fixed windows, a FIFO capacity queue, and
the load read-out at /_admin/load."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from devkit.emulator.app import Emulator
from devkit.emulator.faults import FaultConfig, RateLimiter
from devkit.emulator.settings import EmulatorSettings
from tests.unit.test_emulator import HEADERS, client_for, request
from tests.unit.test_emulator_auth import EC_KEY, Clock, mint, public_pem

FAULTS = "/_admin/faults"
LOAD = "/_admin/load"
WINDOW = 1_700_000_000  # a window's start on the epoch clock (a multiple of 1 and of 10)
RATE_HEADERS = ("x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset")


def clock_at(now: float) -> Clock:
    clock = Clock()
    clock.now = now
    return clock


def emulator(clock: Clock | None = None, **settings: Any) -> Emulator:
    return Emulator(EmulatorSettings(**settings), clock=clock or Clock())


async def invoices(amili: httpx.AsyncClient, key: str | None = None) -> httpx.Response:
    headers = HEADERS if key is None else {"x-api-key": key}
    return await amili.get("/invoices", headers=headers)


def rate_headers(response: httpx.Response) -> tuple[str, str, str]:
    limit, remaining, reset = (response.headers[name] for name in RATE_HEADERS)
    return limit, remaining, reset


async def load(amili: httpx.AsyncClient) -> dict[str, int]:
    answer = await amili.get(LOAD)
    assert answer.status_code == 200
    body: dict[str, int] = answer.json()
    return body


# The rate limit


async def test_a_window_admits_its_allowance_then_answers_429_until_the_next() -> None:
    clock = clock_at(WINDOW + 0.25)
    async with client_for(emulator(clock, rate_limit=5)) as amili:
        for remaining in (4, 3, 2, 1, 0):
            admitted = await invoices(amili)
            assert admitted.status_code == 200
            assert rate_headers(admitted) == ("5", str(remaining), str(WINDOW + 1))
            assert "retry-after" not in admitted.headers
        refused = await invoices(amili)
        assert refused.status_code == 429
        assert refused.json() == {"_status": "ERR", "_error": {"code": 429, "message": "Rate limit exceeded"}}
        assert rate_headers(refused) == ("5", "0", str(WINDOW + 1))
        assert refused.headers["retry-after"] == "1"  # 0.75 s left, rounded up
        clock.now = WINDOW + 0.999
        assert (await invoices(amili)).status_code == 429  # a 429 used none of the allowance
        clock.now = WINDOW + 1.0
        again = await invoices(amili)
        assert again.status_code == 200
        assert rate_headers(again) == ("5", "4", str(WINDOW + 2))
        counts = await load(amili)
        assert counts == {
            "requests": 8,
            "rate_limited": 2,
            "in_service": 0,
            "queued": 0,
            "max_in_service": 1,
            "max_queued": 0,
            "served": 6,
            "service_seconds": counts["service_seconds"],
        }


async def test_windows_are_aligned_on_the_epoch_clock() -> None:
    clock = clock_at(WINDOW + 12.5)  # in the window [WINDOW + 10, WINDOW + 20)
    async with client_for(emulator(clock, rate_limit=0.2, rate_limit_window_seconds=10)) as amili:
        assert rate_headers(await invoices(amili)) == ("2", "1", str(WINDOW + 20))
        assert rate_headers(await invoices(amili)) == ("2", "0", str(WINDOW + 20))
        refused = await invoices(amili)
        assert refused.status_code == 429
        assert refused.headers["retry-after"] == "8"  # 7.5 s left, rounded up
        assert refused.headers["x-ratelimit-reset"] == str(WINDOW + 20)


def test_the_allowance_is_at_least_one_request_a_window() -> None:
    limiter = RateLimiter(clock_at(WINDOW + 0.5))
    first, second = limiter.take("client", 0.1, 1), limiter.take("client", 0.1, 1)
    assert (first.admitted, first.limit, first.remaining) == (True, 1, 0)
    assert (second.admitted, second.retry_after) == (False, 1)


async def test_retry_after_can_be_left_out() -> None:
    clock = clock_at(WINDOW + 0.5)
    async with client_for(emulator(clock, rate_limit=1, rate_limit_retry_after=False)) as amili:
        assert (await invoices(amili)).status_code == 200
        refused = await invoices(amili)
        assert refused.status_code == 429
        assert "retry-after" not in refused.headers
        assert rate_headers(refused) == ("1", "0", str(WINDOW + 1))


async def test_each_api_key_has_its_own_allowance_and_none_is_shown() -> None:
    clock = clock_at(WINDOW + 0.5)
    amili_emulator = emulator(clock, rate_limit=2, api_keys=["key-alpha", "key-beta"])
    async with client_for(amili_emulator) as amili:
        assert [(await invoices(amili, "key-alpha")).status_code for _ in range(3)] == [200, 200, 429]
        beta = [await invoices(amili, "key-beta") for _ in range(3)]
        assert [answer.status_code for answer in beta] == [200, 200, 429]
        assert rate_headers(beta[0]) == ("2", "1", str(WINDOW + 1))
        for answer in beta:
            assert "key-beta" not in answer.text
            assert all("key-beta" not in value for value in answer.headers.values())
        assert "key-" not in (await amili.get(LOAD)).text


async def test_the_access_tokens_of_an_api_code_share_its_allowance() -> None:
    clock = clock_at(int(time.time()) + 0.1)  # now, for the JWT's exp; held still, in one window
    settings: dict[str, Any] = {"api_code_keys": {"code-1": public_pem(EC_KEY)}, "rate_limit": 3}
    async with client_for(emulator(clock, **settings)) as amili:
        jwt_text = mint(EC_KEY, "ES256")
        exchanged = await amili.get("/authenticates/api-code", headers={"x-api-key": jwt_text})
        assert exchanged.status_code == 200, exchanged.text
        assert exchanged.headers["x-ratelimit-remaining"] == "2"  # the exchange is the api code's too
        token = exchanged.json()["access_token"]
        created = await amili.post("/invoice--registrations", json=request(), headers={"x-api-key": token})
        assert (created.status_code, created.headers["x-ratelimit-remaining"]) == (201, "1")
        second = (await amili.get("/authenticates/api-code", headers={"x-api-key": jwt_text})).json()
        assert (await invoices(amili, second["access_token"])).headers["x-ratelimit-remaining"] == "0"
        refused = await invoices(amili, token)
        assert refused.status_code == 429
        assert token not in refused.text
        assert (await invoices(amili)).status_code == 200  # the static key is another client


async def test_every_admitted_answer_carries_the_rate_headers_whatever_it_is() -> None:
    clock = clock_at(WINDOW + 0.5)
    async with client_for(emulator(clock, rate_limit=10, fail_next_count=1)) as amili:
        failed = await invoices(amili)
        assert (failed.status_code, rate_headers(failed)) == (503, ("10", "9", str(WINDOW + 1)))
        unauthorised = await invoices(amili, "not-a-key")
        assert (unauthorised.status_code, rate_headers(unauthorised)) == (401, ("10", "9", str(WINDOW + 1)))
        missing = await amili.get(f"/invoices/{'0' * 24}", headers=HEADERS)
        assert (missing.status_code, rate_headers(missing)) == (404, ("10", "8", str(WINDOW + 1)))
        await amili.patch(FAULTS, json={"throttle_rate": 1, "retry_after_seconds": 7})
        throttled = await invoices(amili)  # the injected 429: the rate limit's numbers, once each
        assert throttled.status_code == 429
        assert throttled.headers.get_list("x-ratelimit-limit") == ["10"]
        assert throttled.headers.get_list("x-ratelimit-remaining") == ["7"]
        assert throttled.headers["retry-after"] == "7"


async def test_the_rate_limit_answers_before_the_queue_and_the_latency() -> None:
    clock = clock_at(WINDOW + 0.5)
    amili_emulator = emulator(clock, rate_limit=1, capacity=1, latency_ms=300)
    async with client_for(amili_emulator) as amili:
        first = asyncio.create_task(invoices(amili))
        while amili_emulator.faults.capacity.in_service == 0:  # noqa: ASYNC110 - polled state of the emulator
            await asyncio.sleep(0.005)
        started = time.perf_counter()
        refused = await invoices(amili)
        assert refused.status_code == 429
        assert time.perf_counter() - started < 0.2  # not delayed, not queued behind the first
        assert (await first).status_code == 200
        counts = await load(amili)
        assert (counts["max_queued"], counts["max_in_service"], counts["rate_limited"]) == (0, 1, 1)


async def test_the_rate_limit_is_switched_on_and_off_at_run_time() -> None:
    clock = clock_at(WINDOW + 0.5)
    async with client_for(emulator(clock)) as amili:
        before = await invoices(amili)
        assert not any(name in before.headers for name in RATE_HEADERS)
        config = (await amili.patch(FAULTS, json={"rate_limit": 1, "rate_limit_window_seconds": 5})).json()
        assert (config["rate_limit"], config["rate_limit_window_seconds"]) == (1, 5)
        admitted = [await invoices(amili) for _ in range(5)]
        assert [answer.headers["x-ratelimit-remaining"] for answer in admitted] == ["4", "3", "2", "1", "0"]
        assert admitted[0].headers["x-ratelimit-reset"] == str(WINDOW + 5)
        assert (await invoices(amili)).status_code == 429
        await amili.patch(FAULTS, json={"rate_limit": 0})
        after = await invoices(amili)
        assert after.status_code == 200
        assert not any(name in after.headers for name in RATE_HEADERS)


async def test_with_everything_off_no_rate_headers_are_added() -> None:
    async with client_for(emulator()) as amili:
        for answer in (
            await invoices(amili),
            await invoices(amili, "not-a-key"),
            await amili.get(f"/cases/{'0' * 24}", headers=HEADERS),
            await amili.post("/invoice--registrations", json=request(), headers=HEADERS),
        ):
            assert not any(name in answer.headers for name in (*RATE_HEADERS, "retry-after")), answer
        assert (await load(amili))["requests"] == 4


# The capacity queue


async def concurrently(amili: httpx.AsyncClient, count: int) -> float:
    started = time.perf_counter()
    answers = await asyncio.gather(*(invoices(amili) for _ in range(count)))
    assert [answer.status_code for answer in answers] == [200] * count
    return time.perf_counter() - started


async def test_requests_beyond_the_capacity_wait_their_turn() -> None:
    async with client_for(emulator(capacity=2, latency_ms=100)) as amili:
        assert await concurrently(amili, 6) >= 0.25  # three rounds of two
        counts = await load(amili)
        assert counts == {
            "requests": 6,
            "rate_limited": 0,
            "in_service": 0,
            "queued": 0,
            "max_in_service": 2,
            "max_queued": counts["max_queued"],
            "served": 6,
            "service_seconds": counts["service_seconds"],
        }
        assert counts["max_queued"] >= 3
        # each held its place for the latency, not for its wait in the queue
        assert 0.6 <= counts["service_seconds"] < 0.6 + 6 * 0.1


async def test_without_a_capacity_all_are_served_at_once() -> None:
    async with client_for(emulator(latency_ms=100)) as amili:
        assert await concurrently(amili, 6) < 0.25  # one round
        counts = await load(amili)
        assert (counts["max_in_service"], counts["max_queued"]) == (6, 0)


async def test_the_queue_is_first_come_first_served() -> None:
    async with client_for(emulator(capacity=1, latency_ms=20)) as amili:
        finished: list[int] = []

        async def one(number: int) -> None:
            await invoices(amili)
            finished.append(number)

        await asyncio.gather(*(one(number) for number in range(5)))
        assert finished == [0, 1, 2, 3, 4]


async def test_raising_the_capacity_at_run_time_lets_the_queue_in() -> None:
    amili_emulator = emulator(capacity=1, latency_ms=400)
    async with client_for(amili_emulator) as amili:
        started = time.perf_counter()
        answers = asyncio.gather(*(invoices(amili) for _ in range(4)))
        while amili_emulator.faults.capacity.queued < 3:  # noqa: ASYNC110 - polled state of the emulator
            await asyncio.sleep(0.005)
        assert (await load(amili))["queued"] == 3
        assert (await amili.patch(FAULTS, json={"capacity": 0})).json()["capacity"] == 0
        assert [answer.status_code for answer in await answers] == [200] * 4
        assert time.perf_counter() - started < 1.0  # not four rounds of 0.4 s


async def test_a_hang_gives_its_place_back_once_handled() -> None:
    amili_emulator = emulator(capacity=1, hang_rate=1, hang_seconds=60)
    async with client_for(amili_emulator) as amili:
        held = asyncio.create_task(invoices(amili))
        while amili_emulator.faults.holding == 0:  # noqa: ASYNC110 - polled state of the emulator
            await asyncio.sleep(0.005)
        await amili.patch(FAULTS, json={"hang_rate": 0})
        assert (await asyncio.wait_for(invoices(amili), timeout=2)).status_code == 200
        amili_emulator.faults.release()
        assert (await held).status_code == 200
        assert (await load(amili))["max_in_service"] == 1


async def test_a_client_that_gives_up_in_the_queue_leaves_it() -> None:
    amili_emulator = emulator(capacity=1, latency_ms=200)
    async with client_for(amili_emulator) as amili:
        first = asyncio.create_task(invoices(amili))
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(invoices(amili), timeout=0.05)
        assert (await first).status_code == 200
        assert (await load(amili))["queued"] == 0
        assert (await invoices(amili)).status_code == 200
        assert amili_emulator.faults.capacity.in_service == 0


# The load read-out and the settings


async def test_deleting_the_load_counts_from_zero_again() -> None:
    clock = clock_at(WINDOW + 0.5)
    async with client_for(emulator(clock, rate_limit=1, capacity=3)) as amili:
        await invoices(amili)
        await invoices(amili)
        assert (await load(amili))["rate_limited"] == 1
        deleted = await amili.delete(LOAD)
        assert (deleted.status_code, deleted.content) == (204, b"")
        assert await load(amili) == dict.fromkeys(
            ("requests", "rate_limited", "in_service", "queued", "max_in_service", "max_queued", "served"),
            0,
        ) | {"service_seconds": 0.0}
        assert (await invoices(amili)).status_code == 429  # the rate limit's window is not the load's
        assert (await load(amili))["requests"] == 1


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"capacity": -1}, "capacity"),
        ({"capacity": 1.5}, "capacity"),
        ({"rate_limit": -0.5}, "rate_limit"),
        ({"rate_limit_window_seconds": 0}, "rate_limit_window_seconds"),
        ({"rate_limit_retry_after": "sometimes"}, "rate_limit_retry_after"),
    ],
)
async def test_an_invalid_capacity_setting_is_422(body: dict[str, Any], field: str) -> None:
    async with client_for(emulator()) as amili:
        response = await amili.patch(FAULTS, json=body)
        assert response.status_code == 422
        assert field in response.json()["_issues"]
        assert (await amili.get(FAULTS)).json() == FaultConfig().model_dump()


@pytest.mark.parametrize(
    "settings",
    [{"capacity": -1}, {"rate_limit": -1}, {"rate_limit_window_seconds": 0}],
)
def test_invalid_capacity_settings_are_refused_at_start(settings: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        EmulatorSettings(**settings)


def test_the_capacity_model_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "CAPACITY": "8",
        "RATE_LIMIT": "2.5",
        "RATE_LIMIT_WINDOW_SECONDS": "10",
        "RATE_LIMIT_RETRY_AFTER": "false",
    }.items():
        monkeypatch.setenv(f"AMILI_EMULATOR_{name}", value)
    config = Emulator(EmulatorSettings()).faults.config
    assert (config.capacity, config.rate_limit) == (8, 2.5)
    assert (config.rate_limit_window_seconds, config.rate_limit_retry_after) == (10, False)
    defaults = FaultConfig()
    assert (defaults.capacity, defaults.rate_limit, defaults.rate_limit_window_seconds) == (0, 0.0, 1)
    assert defaults.rate_limit_retry_after is True
