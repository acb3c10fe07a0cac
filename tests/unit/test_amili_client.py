"""The client against the emulator (in-process) and against scripted HTTP failures."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest
from pydantic import SecretStr

from service.amili.client import AmiliClient, HttpSettings
from service.amili.models import InvoiceRegistrationRequest
from service.config import DEMO_API_KEY, EmulatorSettings
from service.emulator.app import Emulator
from service.ports import AmiliDuplicate, AmiliRejected, AmiliUnauthorized, AmiliUnavailable
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
