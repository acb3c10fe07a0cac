"""The client against the emulator (in-process), against scripted HTTP failures, and over a socket
against a scripted server with both transports."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import traceback
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Literal

import aiohttp
import httpx
import pytest
from aiohttp.client_reqrep import ConnectionKey
from httpx_aiohttp import AiohttpTransport
from pydantic import SecretStr

from devkit.emulator.app import Emulator
from devkit.emulator.settings import DEMO_API_KEY, EmulatorSettings
from service.amili.client import AmiliClient, AnswerUnreadable, CallLog, HttpSettings, Transport
from service.amili.models import InvoiceRegistrationRequest
from service.flow.budget import RateBudget, RateLimitAnswer
from service.flow.control import AmiliFlow
from service.flow.limit import FixedLimit
from service.ports import (
    AmiliDuplicate,
    AmiliMisconfigured,
    AmiliOutcomeUnknown,
    AmiliRateLimited,
    AmiliRejected,
    AmiliUnauthorized,
    AmiliUnavailable,
)
from tests.unit.test_emulator import request

REQUEST = InvoiceRegistrationRequest.model_validate(request())


def client(transport: httpx.AsyncBaseTransport, key: str = DEMO_API_KEY) -> AmiliClient:
    return AmiliClient(
        "http://amili", SecretStr(key), HttpSettings(total_timeout_seconds=2), transport=transport
    )


def emulator_transport() -> httpx.ASGITransport:
    return httpx.ASGITransport(app=Emulator(EmulatorSettings()).app())


async def test_register_then_find_and_get() -> None:
    async with client(emulator_transport()) as amili:
        receipt = await amili.register(REQUEST)
        assert await amili.find_registration(REQUEST.creditor, REQUEST.invoice_number) == receipt.model_copy(
            update={"creditor": REQUEST.creditor, "invoice_number": REQUEST.invoice_number}
        )
        assert await amili.find_registration(REQUEST.creditor, "other") is None
        fetched = await amili.get_registration(receipt.id)
        assert fetched is not None
        assert fetched.case == receipt.case
        assert await amili.get_registration("f" * 24) is None
        with pytest.raises(AmiliDuplicate):
            await amili.register(REQUEST)


async def test_a_registrations_case_is_read_and_an_unknown_case_is_none() -> None:
    async with client(emulator_transport()) as amili:
        receipt = await amili.register(REQUEST)
        case = await amili.get_case(receipt.case)
        assert case is not None
        assert case["_id"] == receipt.case
        assert isinstance(case["state"], str)
        assert await amili.get_case("f" * 24) is None


async def test_wrong_key_is_unauthorized_and_never_echoed() -> None:
    async with client(emulator_transport(), key="s3cr3t-key") as amili:
        with pytest.raises(AmiliUnauthorized) as caught:
            await amili.register(REQUEST)
    assert "s3cr3t-key" not in str(caught.value)


def scripted(handler: Callable[[httpx.Request], httpx.Response]) -> httpx.MockTransport:
    return httpx.MockTransport(handler)


async def test_429_carries_retry_after() -> None:
    transport = scripted(lambda _: httpx.Response(429, headers={"Retry-After": "3"}, json={"_status": "ERR"}))
    async with client(transport) as amili:
        with pytest.raises(AmiliUnavailable) as caught:
            await amili.register(REQUEST)
    assert caught.value.retry_after == 3.0
    assert not caught.value.outcome_unknown


async def test_5xx_on_post_leaves_the_outcome_unknown() -> None:
    async with client(scripted(lambda _: httpx.Response(502))) as amili:
        with pytest.raises(AmiliUnavailable) as caught:
            await amili.register(REQUEST)
    assert caught.value.outcome_unknown


async def test_a_timeout_leaves_the_outcome_unknown() -> None:
    def timeout(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    async with client(scripted(timeout)) as amili:
        with pytest.raises(AmiliUnavailable) as caught:
            await amili.register(REQUEST)
    assert caught.value.outcome_unknown


async def test_409_is_a_duplicate_and_422_issues_are_flattened() -> None:
    async with client(scripted(lambda _: httpx.Response(409, json={"_status": "ERR"}))) as amili:
        with pytest.raises(AmiliDuplicate):
            await amili.register(REQUEST)
    body = {
        "_status": "ERR",
        "_issues": {"customer": {"name": "required field"}, "matrix": {"0": {"x": "bad"}}},
    }
    async with client(scripted(lambda _: httpx.Response(422, json=body))) as amili:
        with pytest.raises(AmiliRejected) as caught:
            await amili.register(REQUEST)
    assert caught.value.issues == {"customer.name": "required field", "matrix.0.x": "bad"}


async def test_the_key_goes_in_the_x_api_key_header() -> None:
    seen: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"_items": [], "_meta": {"total": 0}})

    async with client(scripted(record)) as amili:
        assert await amili.find_registration("c", "n") is None
    assert seen[0].headers["x-api-key"] == DEMO_API_KEY
    assert seen[0].url.params["where"] == '{"creditor":"c","invoice_number":"n"}'


async def test_a_pool_or_connect_timeout_is_unavailable_and_a_read_timeout_outcome_unknown() -> None:
    def timing_out(error: type[httpx.TimeoutException]) -> httpx.MockTransport:
        def answer(request: httpx.Request) -> httpx.Response:
            raise error("timed out", request=request)

        return scripted(answer)

    for never_sent in (httpx.PoolTimeout, httpx.ConnectTimeout):
        async with client(timing_out(never_sent)) as amili:
            with pytest.raises(AmiliUnavailable) as caught:
                await amili.register(REQUEST)
        assert not caught.value.outcome_unknown, never_sent
    async with client(timing_out(httpx.ReadTimeout)) as amili:
        with pytest.raises(AmiliOutcomeUnknown):
            await amili.register(REQUEST)


@pytest.mark.parametrize(
    ("aiohttp_error", "outcome_unknown"),
    [
        (aiohttp.ConnectionTimeoutError("Connection timeout to host"), False),
        (
            aiohttp.ClientConnectorError(
                ConnectionKey("amili", 80, False, True, None, None, None), OSError(111, "refused")
            ),
            False,
        ),
        (aiohttp.ServerDisconnectedError(), True),
        (aiohttp.ClientPayloadError("Response payload is not completed"), True),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, Exception) else str(value),
)
async def test_an_injected_aiohttp_transport_is_judged_by_aiohttps_error(
    aiohttp_error: aiohttp.ClientError, outcome_unknown: bool
) -> None:
    """httpx-aiohttp reports aiohttp's connection errors as ``httpx.ConnectTimeout``, its cause kept."""

    def answer(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectTimeout(str(aiohttp_error), request=request) from aiohttp_error

    async with client(scripted(answer)) as amili:
        with pytest.raises(AmiliUnavailable) as caught:
            await amili.register(REQUEST)
    assert caught.value.outcome_unknown is outcome_unknown


# Over a socket, against a scripted server: both transports, aiohttp's own path included -------------

# "httpx-aiohttp": httpx over an injected ``AiohttpTransport``, as the contract tests' recording ones.
OnSocket = Literal[Transport, "httpx-aiohttp"]
TRANSPORTS: tuple[OnSocket, ...] = ("aiohttp", "httpx", "httpx-aiohttp")
RECEIPT = {
    "_id": "6" * 24,
    "_invoice": "7" * 24,
    "_case": "8" * 24,
    "_ocr_number": "9" * 24,
    "ocr_number_ocr": "1234567897",
}


@dataclass(frozen=True)
class Seen:
    method: str
    target: str
    headers: dict[str, str]  # names in lower case
    body: bytes


Reply = Callable[[Seen], bytes | None]  # None: close the connection without answering


def http(status: int, body: object = None, headers: dict[str, str] | None = None) -> bytes:
    content = b"" if body is None else json.dumps(body).encode()
    lines = [
        f"HTTP/1.1 {status} Scripted",
        f"content-length: {len(content)}",
        "content-type: application/json",
    ]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + content


@contextlib.asynccontextmanager
async def scripted_server(reply: Reply) -> AsyncIterator[tuple[str, list[Seen]]]:
    """An HTTP/1.1 server on loopback that answers each request with ``reply``'s bytes."""
    seen: list[Seen] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
                method, target, _ = head[0].split(" ", 2)
                headers = {
                    name.strip().lower(): value.strip()
                    for name, value in (line.split(":", 1) for line in head[1:] if line)
                }
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                request = Seen(method, target, headers, body)
                seen.append(request)
                answer = reply(request)
                if answer is None:
                    break
                writer.write(answer)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the client closed the connection
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        yield f"http://127.0.0.1:{port}", seen


def over(url: str, transport: OnSocket) -> AmiliClient:
    if transport == "httpx-aiohttp":
        settings = HttpSettings(total_timeout_seconds=5)
        return AmiliClient(url, SecretStr(DEMO_API_KEY), settings, transport=AiohttpTransport())
    settings = HttpSettings(total_timeout_seconds=5, transport=transport)
    return AmiliClient(url, SecretStr(DEMO_API_KEY), settings)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_both_transports_send_the_same_request(transport: OnSocket) -> None:
    async with scripted_server(lambda _: http(201, RECEIPT)) as (url, seen), over(url, transport) as amili:
        receipt = await amili.register(REQUEST)
    assert receipt.id == RECEIPT["_id"]
    (sent,) = seen
    assert (sent.method, sent.target) == ("POST", "/invoice--registrations")
    assert sent.headers["x-api-key"] == DEMO_API_KEY
    assert sent.headers["accept"] == "application/json"
    assert sent.headers["content-type"] == "application/json"
    assert "cookie" not in sent.headers
    assert sent.body == json.dumps(REQUEST.to_wire(), separators=(",", ":"), ensure_ascii=False).encode()


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_retry_after_as_an_http_date_and_in_any_case(transport: OnSocket) -> None:
    in_30_seconds = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)

    def reply(request: Seen) -> bytes:
        if request.method == "POST":
            return http(429, {"_status": "ERR"}, {"Retry-After": in_30_seconds})
        return http(503, None, {"RETRY-AFTER": "12"})

    async with scripted_server(reply) as (url, _), over(url, transport) as amili:
        with pytest.raises(AmiliRateLimited) as throttled:
            await amili.register(REQUEST)
        with pytest.raises(AmiliUnavailable) as unavailable:
            await amili.get_registration("6" * 24)
    assert throttled.value.retry_after is not None
    assert 20 < throttled.value.retry_after <= 30
    assert unavailable.value.retry_after == 12.0


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_redirect_is_not_followed(transport: OnSocket) -> None:
    def reply(request: Seen) -> bytes:
        return http(302, None, {"location": "/elsewhere"})

    async with scripted_server(reply) as (url, seen), over(url, transport) as amili:
        with pytest.raises(AmiliUnavailable) as caught:
            await amili.get_registration("6" * 24)
    assert str(caught.value) == "Amili answered HTTP 302"
    assert [request.target for request in seen] == [f"/invoice--registrations/{'6' * 24}"]


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_connection_closed_without_an_answer_leaves_a_post_unknown(transport: OnSocket) -> None:
    async with scripted_server(lambda _: None) as (url, _), over(url, transport) as amili:
        with pytest.raises(AmiliOutcomeUnknown):
            await amili.register(REQUEST)
        with pytest.raises(AmiliUnavailable) as lost_get:
            await amili.get_registration("6" * 24)
    assert not lost_get.value.outcome_unknown


def links(error: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_an_answer_that_is_not_http_leaves_a_post_unknown_and_quotes_no_key(
    transport: Transport,
) -> None:
    """aiohttp's error for it holds the request, the key among its headers: it is left out of the chain."""
    garbage = b"HTTP/1.1 200 OK\r\nthis is no header\r\n\r\n"
    async with scripted_server(lambda _: garbage) as (url, _), over(url, transport) as amili:
        with pytest.raises(AmiliOutcomeUnknown) as lost_post:
            await amili.register(REQUEST)
        with pytest.raises(AmiliUnavailable) as lost_get:
            await amili.find_registration(REQUEST.creditor, REQUEST.invoice_number)
    assert not lost_get.value.outcome_unknown
    if transport != "httpx":
        assert isinstance(lost_post.value.__cause__, AnswerUnreadable)
    for error in (lost_post.value, lost_get.value):
        for link in links(error):
            assert DEMO_API_KEY not in f"{link} {link!r} {link.args!r}", type(link).__name__
        assert DEMO_API_KEY not in "".join(traceback.format_exception(error))


@pytest.mark.parametrize(
    "body",
    [
        {"_items": ["not an object"]},
        {"_items": [None]},
        {"_items": [], "_meta": "not an object"},
        {"_items": "not a list"},
        ["not an object"],
    ],
)
async def test_a_look_up_answer_of_the_wrong_shape_is_unavailable(body: object) -> None:
    async with client(scripted(lambda _: httpx.Response(200, json=body))) as amili:
        with pytest.raises(AmiliUnavailable) as caught:
            await amili.find_registration("674dbeb208847b9501cc9138", "INV-1")
    assert not caught.value.outcome_unknown


async def test_json_nested_past_what_python_reads_is_unreadable_not_a_crash() -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    async with client(scripted(lambda _: httpx.Response(201, content=deep))) as amili:
        with pytest.raises(AmiliUnavailable) as posted:
            await amili.register(REQUEST)
    assert posted.value.outcome_unknown  # 201: most likely stored; the look-up will tell
    async with client(scripted(lambda _: httpx.Response(200, content=deep))) as amili:
        with pytest.raises(AmiliUnavailable):
            await amili.find_registration("674dbeb208847b9501cc9138", "INV-1")
    nested_issues = b'{"_issues": ' + b'{"a": ' * 900 + b'"x"' + b"}" * 900 + b"}"
    async with client(scripted(lambda _: httpx.Response(422, content=nested_issues))) as amili:
        with pytest.raises(AmiliRejected) as rejected:
            await amili.register(REQUEST)
    assert list(rejected.value.issues) in (["_error"], ["a" + ".a" * 899])


# A wrong base URL is a configuration error, never the invoice's rejection --------------------------

EVE_NOT_FOUND = {"_status": "ERR", "_error": {"code": 404, "message": "The requested URL was not found"}}


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (404, EVE_NOT_FOUND),
        (405, {"_status": "ERR", "_error": {"code": 405, "message": "The method is not allowed"}}),
        (400, {"_status": "ERR", "_error": {"code": 400, "message": "The browser (or proxy) sent ..."}}),
        (400, None),  # a proxy's page, not JSON
    ],
)
async def test_404_405_and_a_400_without_issues_on_post_are_a_configuration_error(
    status: int, body: object
) -> None:
    answer = httpx.Response(status, json=body) if body is not None else httpx.Response(status, text="<html>")
    amili = AmiliClient(
        "https://user:pw@amili.example:8443/wrong/",
        SecretStr(DEMO_API_KEY),
        transport=scripted(lambda _: answer),
    )
    async with amili:
        with pytest.raises(AmiliMisconfigured) as caught:
            await amili.register(REQUEST)
    assert str(caught.value) == (
        f"POST https://amili.example:8443/wrong/invoice--registrations answered {status}: "
        "check AMILI_BASE_URL"
    )
    assert caught.value.status == status


def answering(status: int, body: object) -> Callable[[httpx.Request], httpx.Response]:
    return lambda _: httpx.Response(status, json=body)


async def test_a_400_or_422_naming_issues_stays_the_invoices_rejection() -> None:
    body = {"_status": "ERR", "_issues": {"customer": {"name": "required field"}}}
    for status in (400, 422):
        async with client(scripted(answering(status, body))) as amili:
            with pytest.raises(AmiliRejected) as caught:
                await amili.register(REQUEST)
        assert caught.value.issues == {"customer.name": "required field"}


async def test_a_404_on_the_look_up_is_a_configuration_error_and_on_an_item_not_found() -> None:
    async with client(scripted(lambda _: httpx.Response(404, json=EVE_NOT_FOUND))) as amili:
        with pytest.raises(AmiliMisconfigured) as caught:
            await amili.find_registration("674dbeb208847b9501cc9138", "INV-1")
        assert (
            str(caught.value) == "GET http://amili/invoice--registrations answered 404: check AMILI_BASE_URL"
        )
        assert await amili.get_registration("f" * 24) is None  # an item's 404 is "no such registration"
    async with client(scripted(lambda _: httpx.Response(405, json=EVE_NOT_FOUND))) as amili:
        with pytest.raises(AmiliMisconfigured):
            await amili.find_registration("674dbeb208847b9501cc9138", "INV-1")


async def test_the_emulator_under_a_wrong_path_prefix_is_a_configuration_error() -> None:
    amili = AmiliClient("http://amili/api/v1", SecretStr(DEMO_API_KEY), transport=emulator_transport())
    async with amili:
        with pytest.raises(AmiliMisconfigured) as posted:
            await amili.register(REQUEST)
        with pytest.raises(AmiliMisconfigured) as looked_up:
            await amili.find_registration(REQUEST.creditor, REQUEST.invoice_number)
    assert "POST http://amili/api/v1/invoice--registrations answered 404" in str(posted.value)
    assert "GET http://amili/api/v1/invoice--registrations answered 404" in str(looked_up.value)


# Failed calls are logged in bounded lines --------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def call_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "service.amili.client"]


class Scripted:
    """Answers each request as ``answer`` says at the time."""

    def __init__(self) -> None:
        self.answer: Callable[[httpx.Request], httpx.Response] = lambda _: httpx.Response(503)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        return self.answer(request)


def logged_client(script: Scripted, clock: FakeClock) -> AmiliClient:
    return AmiliClient(
        "http://amili.example/base",
        SecretStr(DEMO_API_KEY),
        transport=scripted(script),
        call_log=CallLog("http://amili.example/base", clock=clock),
    )


async def test_an_outage_logs_a_line_as_it_starts_a_summary_a_minute_and_a_line_as_it_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    clock, script = FakeClock(), Scripted()
    async with logged_client(script, clock) as amili:
        for i in range(1000):  # 1000 failed calls over 125 s
            clock.now += 0.125
            if i == 500:
                script.answer = lambda _: httpx.Response(502)
            if i == 700:

                def refuse(request: httpx.Request) -> httpx.Response:
                    raise httpx.ConnectError("refused", request=request)

                script.answer = refuse
            call = amili.register(REQUEST) if i % 2 else amili.find_registrations(REQUEST.creditor, "INV-1")
            with pytest.raises(AmiliUnavailable):
                await call
        script.answer = lambda _: httpx.Response(201, json=receipt_body())
        await amili.register(REQUEST)
        await amili.register(REQUEST)
    lines = call_lines(caplog)
    assert [(r.levelname, r.getMessage(), r.__dict__.get("error")) for r in lines] == [
        ("WARNING", "amili call failed", "HTTP 503"),
        ("WARNING", "amili calls still failing", None),  # 60 s after the first
        ("WARNING", "amili call failed", "HTTP 502"),
        ("WARNING", "amili call failed", "ConnectError"),
        ("WARNING", "amili calls still failing", None),  # 60 s after the last summary
        ("WARNING", "amili calls succeed again", None),
    ]
    first, summary, _, _, _, recovered = lines
    assert (first.__dict__["host"], first.__dict__["method"], first.__dict__["path"]) == (
        "amili.example",
        "GET",
        "/base/invoice--registrations",
    )
    assert summary.__dict__["by_error"] == {"HTTP 503": 481}
    # Every failure is counted in exactly one summary or in the line that ends the outage.
    assert sum(line.__dict__.get("failed", 0) for line in lines) == 1000
    assert recovered.__dict__["by_error"] == {"ConnectError": 38}
    assert recovered.__dict__["failing_seconds"] == 124.9
    text = " ".join(f"{r.getMessage()} {r.__dict__}" for r in lines)
    assert DEMO_API_KEY not in text
    assert REQUEST.invoice_number not in text  # the look-up's query names the invoice
    assert REQUEST.customer.name not in text


async def test_a_flapping_failure_is_left_to_the_summary(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    clock, script = FakeClock(), Scripted()
    async with logged_client(script, clock) as amili:
        for i in range(1000):  # every other call fails, over 125 s
            clock.now += 0.125
            if i % 2:
                script.answer = lambda _: httpx.Response(201, json=receipt_body())
                await amili.register(REQUEST)
            else:
                script.answer = lambda _: httpx.Response(503)
                with pytest.raises(AmiliUnavailable):
                    await amili.register(REQUEST)
    lines = call_lines(caplog)
    # The failure told and its end, then again only a minute after it last was told (the failures
    # in between are counted in the next line that ends one): 6 lines for 500 failures in 125 s.
    assert [r.getMessage() for r in lines] == ["amili call failed", "amili calls succeed again"] * 3
    told = sum(line.__dict__.get("failed", 0) for line in lines)
    assert 450 < told < 500  # the failures since the last line wait for the next one


async def test_refused_credentials_and_a_wrong_path_are_left_to_the_circuit(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    clock, script = FakeClock(), Scripted()
    async with logged_client(script, clock) as amili:
        for status, error in ((401, AmiliUnauthorized), (404, AmiliMisconfigured)):
            script.answer = answering(status, EVE_NOT_FOUND)
            for _ in range(100):
                clock.now += 1
                with pytest.raises(error):
                    await amili.register(REQUEST)
    summaries = call_lines(caplog)
    assert [r.getMessage() for r in summaries] == [
        "amili calls failed",
        "amili calls failed",
        "amili calls failed",
    ]
    assert summaries[0].__dict__["by_error"] == {"HTTP 401": 61}
    assert summaries[1].__dict__["by_error"] == {"HTTP 401": 39, "HTTP 404": 22}


def receipt_body() -> dict[str, str]:
    return {
        "_id": "a" * 24,
        "_invoice": "b" * 24,
        "_case": "c" * 24,
        "_ocr_number": "d" * 24,
        "ocr_number_ocr": "20251852687013699044",
    }


async def test_with_the_rate_budget_a_429_is_tried_again_when_the_budget_lets_it() -> None:
    """Retry-After counts whole seconds (1 when the window ends in a few ms): with the rate budget
    the refused call waits there, until the window's end, instead of for Retry-After."""
    resets_at = int(time.time()) + 30
    headers = {"Retry-After": "30", "X-RateLimit-Limit": "5", "X-RateLimit-Remaining": "0"}
    headers["X-RateLimit-Reset"] = str(resets_at)

    def reply(request: Seen) -> bytes:
        return http(429, {"_status": "ERR"}, headers)

    flow = AmiliFlow(FixedLimit(4), budget=RateBudget())
    settings = HttpSettings(total_timeout_seconds=5)
    async with scripted_server(reply) as (url, _):
        async with AmiliClient(url, SecretStr(DEMO_API_KEY), settings, flow=flow) as amili:
            with pytest.raises(AmiliRateLimited) as budgeted:
                await amili.register(REQUEST)
        async with AmiliClient(url, SecretStr(DEMO_API_KEY), settings) as amili:
            with pytest.raises(AmiliRateLimited) as unbudgeted:
                await amili.register(REQUEST)
    assert budgeted.value.retry_after == 0.0
    assert flow.keeps_rate_budget
    assert unbudgeted.value.retry_after == 30.0
    # the budget holds the next call back until the window's end (Retry-After is its rounding here)
    wait = RateBudget()
    wait.learn(RateLimitAnswer(5, 0, float(resets_at), 30.0), ticket=wait.take(), refused=True)
    assert 28 < wait.wait_seconds() <= 30
