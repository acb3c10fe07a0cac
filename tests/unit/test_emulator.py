"""The emulator's contract, through its ASGI app (no sockets)."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import AsyncIterator
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.config import DEMO_API_KEY, EmulatorSettings
from service.domain.checksums import is_valid_ocr
from service.emulator.app import Emulator
from tests.unit.test_amili_models import SEED_REQUEST

HEADERS = {"x-api-key": DEMO_API_KEY}
OBJECT_ID = re.compile(r"^[0-9a-f]{24}$")


def client_for(emulator: Emulator) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=emulator.app()), base_url="http://amili")


@pytest.fixture
async def amili(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    emulator = Emulator(EmulatorSettings(store_path=str(tmp_path / "store.jsonl")))
    async with client_for(emulator) as client:
        yield client


def request(**changes: Any) -> dict[str, Any]:
    body = copy.deepcopy(SEED_REQUEST)
    body["customer"].pop("id_number")  # the documented example fails the checksum
    body.update(changes)
    return body


async def test_a_registration_is_created_in_amilis_shape(amili: httpx.AsyncClient) -> None:
    response = await amili.post("/invoice--registrations", json=request(), headers=HEADERS)
    assert response.status_code == 201
    body = response.json()
    assert set(body) == {
        "_updated",
        "_created",
        "_etag",
        "_id",
        "_status",
        "_invoice",
        "_case",
        "_ocr_number",
        "ocr_number_ocr",
    }
    assert body["_status"] == "OK"
    for key in ("_id", "_invoice", "_case", "_ocr_number"):
        assert OBJECT_ID.match(body[key])
    assert parsedate_to_datetime(body["_created"]).tzinfo is not None
    assert body["_created"].endswith(" GMT")
    assert is_valid_ocr(body["ocr_number_ocr"])

    stored = await amili.get(f"/invoice--registrations/{body['_id']}", headers=HEADERS)
    assert stored.status_code == 200
    assert stored.json()["invoice_number"] == "INV-2024-002"
    assert stored.json()["_case"] == body["_case"]


async def test_the_api_key_is_required(amili: httpx.AsyncClient) -> None:
    for headers in ({}, {"x-api-key": "wrong"}):
        response = await amili.post("/invoice--registrations", json=request(), headers=headers)
        assert response.status_code == 401
        assert response.json()["_status"] == "ERR"
    response = await amili.post(
        "/invoice--registrations", json=request(), headers={"X-API-KEY": DEMO_API_KEY}
    )
    assert response.status_code == 201


@pytest.mark.parametrize(
    ("body", "issues"),
    [
        (request(currency="EUR"), {"currency": "unallowed value EUR"}),
        (request(invoice_date="2024-01-21"), {"invoice_date": "must be of datetime type"}),
        (request(extra=1), {"extra": "unknown field"}),
        (request(file_import_report={}), {"file_import_report": "field is read-only"}),
        (
            {k: v for k, v in request().items() if k != "invoice_number"},
            {"invoice_number": "required field"},
        ),
        (
            request(matrix=[{"article_description": "x"}]),
            {"matrix": {"0": {"total_price_excluding_vat": "required field"}}},
        ),
        (
            request(
                matrix=[
                    {"article_description": "x", "total_price_excluding_vat": 1, "unit_vat_percent": "20%"}
                ]
            ),
            {"matrix": {"0": {"unit_vat_percent": "unallowed value 20%"}}},
        ),
        (
            request(customer={"name": "A", "is_person": True, "is_company": True}),
            {"customer": {"is_person": "exactly one of is_person, is_company, is_foreign must be true"}},
        ),
        (
            request(creditor="0" * 24),
            {"creditor": f"value '{'0' * 24}' must exist in resource 'creditors'"},
        ),
    ],
)
async def test_validation_answers_in_eve_shape(
    amili: httpx.AsyncClient, body: dict[str, Any], issues: dict[str, Any]
) -> None:
    response = await amili.post("/invoice--registrations", json=body, headers=HEADERS)
    assert response.status_code == 422
    assert response.json() == {
        "_status": "ERR",
        "_issues": issues,
        "_error": {"code": 422, "message": "Insertion failure: 1 document(s) contain(s) error(s)"},
    }


async def test_car_registration_excludes_customer_number(amili: httpx.AsyncClient) -> None:
    customer = {
        "name": "A",
        "is_person": True,
        "customer_number": "1",
        "car_registration": {"number": "ABC123"},
    }
    response = await amili.post("/invoice--registrations", json=request(customer=customer), headers=HEADERS)
    assert response.status_code == 422
    issues = response.json()["_issues"]["customer"]
    assert issues["car_registration"] == "'car_registration' must not be present with 'customer_number'"


async def test_a_non_json_body_is_400(amili: httpx.AsyncClient) -> None:
    response = await amili.post("/invoice--registrations", content=b"{nope", headers=HEADERS)
    assert response.status_code == 400


async def test_an_invoice_number_is_unique_per_creditor(amili: httpx.AsyncClient) -> None:
    assert (await amili.post("/invoice--registrations", json=request(), headers=HEADERS)).status_code == 201
    again = await amili.post("/invoice--registrations", json=request(), headers=HEADERS)
    assert again.status_code == 422
    assert again.json()["_issues"] == {"invoice_number": "value 'INV-2024-002' is not unique"}


async def test_unknown_and_malformed_ids_are_404(amili: httpx.AsyncClient) -> None:
    for registration_id in ("0" * 24, "not-an-id"):
        response = await amili.get(f"/invoice--registrations/{registration_id}", headers=HEADERS)
        assert response.status_code == 404


async def test_listing_with_where_and_pagination(amili: httpx.AsyncClient) -> None:
    for number in range(5):
        body = request(invoice_number=f"N-{number}")
        assert (await amili.post("/invoice--registrations", json=body, headers=HEADERS)).status_code == 201
    where = json.dumps({"creditor": SEED_REQUEST["creditor"], "invoice_number": "N-3"})
    found = (await amili.get("/invoice--registrations", params={"where": where}, headers=HEADERS)).json()
    assert [item["invoice_number"] for item in found["_items"]] == ["N-3"]
    assert found["_meta"] == {"total": 1, "max_results": 25, "page": 1}

    nested = json.dumps({"customer.name": "Jane Doe"})
    page = await amili.get(
        "/invoice--registrations",
        params={"where": nested, "max_results": "2", "page": "2", "sort": "-invoice_number"},
        headers=HEADERS,
    )
    assert [item["invoice_number"] for item in page.json()["_items"]] == ["N-2", "N-1"]
    assert page.json()["_meta"] == {"total": 5, "max_results": 2, "page": 2}

    capped = await amili.get("/invoice--registrations", params={"max_results": "1000"}, headers=HEADERS)
    assert capped.json()["_meta"]["max_results"] == 100
    bad = await amili.get("/invoice--registrations", params={"where": "{nope"}, headers=HEADERS)
    assert bad.status_code == 400


async def test_registrations_survive_a_restart_with_a_store_file(tmp_path: Path) -> None:
    settings = EmulatorSettings(store_path=str(tmp_path / "store.jsonl"))
    async with client_for(Emulator(settings)) as first:
        created = (await first.post("/invoice--registrations", json=request(), headers=HEADERS)).json()
    async with client_for(Emulator(settings)) as second:
        again = await second.get(f"/invoice--registrations/{created['_id']}", headers=HEADERS)
        assert again.status_code == 200
        duplicate = await second.post("/invoice--registrations", json=request(), headers=HEADERS)
        assert duplicate.status_code == 422
        counts = (await second.get("/_admin/registrations")).json()
        assert counts == {"total": 1, "per_invoice": {f"{SEED_REQUEST['creditor']}/INV-2024-002": 1}}
