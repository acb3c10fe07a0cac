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

from devkit.emulator.app import NOT_FOUND, UNAUTHORISED, Emulator
from devkit.emulator.settings import DEMO_API_KEY, DEMO_CREDITOR, EmulatorSettings
from service.domain.checksums import is_valid_ocr
from tests.unit.test_amili_models import SEED_REQUEST

HEADERS = {"x-api-key": DEMO_API_KEY}
CUSTOMER_TYPE_ISSUE = "exactly one of is_person, is_company, is_foreign must be true"
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


# The reference's rules, one by one


async def post(amili: httpx.AsyncClient, body: Any) -> httpx.Response:
    return await amili.post("/invoice--registrations", json=body, headers=HEADERS)


async def test_a_wrong_weekday_is_accepted_as_eve_does_and_stored_normalised(
    amili: httpx.AsyncClient,
) -> None:
    # Amili's own example dates "Wed, 21 Jan 2024", a Sunday; Eve's strptime does not check the weekday.
    body = request(
        invoice_date="Wed, 21 Jan 2024 10:11:22 GMT", invoice_due_date="Mon, 31 Jan 2024 10:11:22 GMT"
    )
    created = await post(amili, body)
    assert created.status_code == 201
    stored = (await amili.get(f"/invoice--registrations/{created.json()['_id']}", headers=HEADERS)).json()
    assert stored["invoice_date"] == "Sun, 21 Jan 2024 10:11:22 GMT"
    assert stored["invoice_due_date"] == "Wed, 31 Jan 2024 10:11:22 GMT"
    assert stored["invoice_delivery_date"] == "Sun, 21 Jan 2024 10:11:22 GMT"


@pytest.mark.parametrize(
    "value",
    [
        "Wed, 32 Jan 2024 10:11:22 GMT",  # no such day
        "Thu, 29 Feb 2023 10:11:22 GMT",  # not a leap year
        "Wed, 21 Jan 2024 24:00:00 GMT",
        "Xyz, 21 Jan 2024 10:11:22 GMT",  # not a weekday's name
        "Wed, 21 Jan 2024 10:11:22 CET",
        "Wed, 21 Jan 2024",
        "2024-01-21T10:11:22Z",
        "",
    ],
)
async def test_dates_must_be_rfc_1123_gmt(amili: httpx.AsyncClient, value: str) -> None:
    response = await post(amili, request(invoice_due_date=value))
    assert response.status_code == 422
    assert response.json()["_issues"] == {"invoice_due_date": "must be of datetime type"}


async def test_nested_dates_are_checked_too(amili: httpx.AsyncClient) -> None:
    line = {"article_description": "x", "total_price_excluding_vat": 1, "article_date": "yesterday"}
    customer = {
        "name": "A",
        "is_person": True,
        "car_registration": {"number": "ABC123", "ownership_date": "1/1"},
    }
    response = await post(amili, request(matrix=[line], customer=customer))
    assert response.json()["_issues"] == {
        "matrix": {"0": {"article_date": "must be of datetime type"}},
        "customer": {"car_registration": {"ownership_date": "must be of datetime type"}},
    }


@pytest.mark.parametrize(
    ("changes", "issues"),
    [
        ({"invoice_number": 12}, {"invoice_number": "must be of string type"}),
        ({"invoice_number": ""}, {"invoice_number": "empty values not allowed"}),
        ({"invoice_number": None}, {"invoice_number": "null value not allowed"}),
        ({"start_flow": "yes"}, {"start_flow": "must be of boolean type"}),
        ({"labels": ["a", 1]}, {"labels": {"1": "must be of string type"}}),
        ({"matrix": []}, {"matrix": "empty values not allowed"}),
        ({"matrix": {}}, {"matrix": "must be of list type"}),
        ({"account": "not-an-id"}, {"account": "must be of objectid type"}),
        ({"account": "1" * 24}, {"account": f"value '{'1' * 24}' must exist in resource 'accounts'"}),
        ({"currency": "sek"}, {"currency": "unallowed value sek"}),
        ({"customer": {"name": "A", "is_foreign": True, "x": 1}}, {"customer": {"x": "unknown field"}}),
        (
            {"customer": {"name": "A", "is_company": True, "address": {"country": "Sweden"}}},
            {"customer": {"address": {"country": "value does not match regex '^[A-Z]{2}$'"}}},
        ),
        ({"customer": {"name": "A"}}, {"customer": {"is_person": CUSTOMER_TYPE_ISSUE}}),
        ({"customer": {"name": "A", "is_person": False}}, {"customer": {"is_person": CUSTOMER_TYPE_ISSUE}}),
        (
            {"customer": {"name": "A", "is_person": True, "is_company": False, "is_foreign": True}},
            {"customer": {"is_person": CUSTOMER_TYPE_ISSUE}},
        ),
        (
            {"matrix": [{"article_description": "x", "total_price_excluding_vat": True}]},
            {"matrix": {"0": {"total_price_excluding_vat": "must be of number type"}}},
        ),
        (
            {"matrix": [{"article_description": "x", "total_price_excluding_vat": 10**13}]},
            {"matrix": {"0": {"total_price_excluding_vat": "max value is 1000000000000"}}},
        ),
    ],
)
async def test_each_rule_answers_with_cerberus_words(
    amili: httpx.AsyncClient, changes: dict[str, Any], issues: dict[str, Any]
) -> None:
    response = await post(amili, request(**changes))
    assert response.status_code == 422
    assert response.json()["_issues"] == issues


async def test_every_issue_comes_in_one_answer(amili: httpx.AsyncClient) -> None:
    body = request(currency="EUR", creditor="0" * 24, extra=True, customer={"name": "A"})
    del body["invoice_number"]
    response = await post(amili, body)
    assert response.json()["_issues"] == {
        "extra": "unknown field",
        "invoice_number": "required field",
        "currency": "unallowed value EUR",
        "creditor": f"value '{'0' * 24}' must exist in resource 'creditors'",
        "customer": {"is_person": CUSTOMER_TYPE_ISSUE},
    }


async def test_inactive_creditors_and_accounts_are_refused(tmp_path: Path) -> None:
    inactive_creditor, inactive_account = "a" * 24, "b" * 24
    settings = EmulatorSettings(inactive_creditors=[inactive_creditor], inactive_accounts=[inactive_account])
    async with client_for(Emulator(settings)) as amili:
        response = await post(amili, request(creditor=inactive_creditor, account=inactive_account))
    assert response.status_code == 422
    assert response.json()["_issues"] == {
        "account": f"account '{inactive_account}' is not active",
        "creditor": f"creditor '{inactive_creditor}' is not active",
    }


def test_inactive_creditors_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AMILI_EMULATOR_INACTIVE_CREDITORS", f"{'a' * 24}, {'b' * 24}")
    monkeypatch.setenv("AMILI_EMULATOR_INACTIVE_ACCOUNTS", "c" * 24)
    settings = EmulatorSettings()
    assert settings.inactive_creditors == ["a" * 24, "b" * 24]
    assert settings.inactive_accounts == ["c" * 24]


async def test_an_invoice_number_may_repeat_under_another_creditor(tmp_path: Path) -> None:
    other = "c" * 24
    async with client_for(Emulator(EmulatorSettings(creditors=[DEMO_CREDITOR, other]))) as amili:
        assert (await post(amili, request())).status_code == 201
        assert (await post(amili, request(creditor=other))).status_code == 201
        again = await post(amili, request(creditor=other, currency="EUR"))
    assert again.json()["_issues"] == {
        "currency": "unallowed value EUR",
        "invoice_number": "value 'INV-2024-002' is not unique",
    }


@pytest.mark.parametrize(
    ("customer", "problem"),
    [
        ({"is_person": True, "id_number": "19811218-9876"}, None),
        ({"is_person": True, "id_number": "811218-9876"}, None),
        ({"is_person": True, "id_number": "811278-9873"}, None),  # samordningsnummer (day + 60)
        ({"is_person": True, "id_number": "811218-9875"}, "personnummer check digit does not match"),
        ({"is_person": True, "id_number": "811318-9876"}, "personnummer does not hold a valid date of birth"),
        ({"is_person": True, "id_number": "81121-9876"}, "personnummer must be YYMMDD-NNNC or YYYYMMDDNNNC"),
        ({"is_company": True, "id_number": "556036-0793"}, None),
        ({"is_company": True, "id_number": "5560360793"}, None),
        ({"is_company": True, "id_number": "556036-0794"}, "organisationsnummer check digit does not match"),
        (
            {"is_company": True, "id_number": "551036-0793"},
            "organisationsnummer third digit must be 2 or more",
        ),
        ({"is_foreign": True, "id_number": "anything"}, None),
    ],
)
async def test_swedish_id_numbers_are_checked_when_enabled(
    customer: dict[str, Any], problem: str | None
) -> None:
    body = request(customer={"name": "A", **customer})
    async with client_for(Emulator(EmulatorSettings(check_id_numbers=True))) as amili:
        response = await post(amili, body)
    if problem is None:
        assert response.status_code == 201, response.text
    else:
        assert response.json()["_issues"] == {"customer": {"id_number": problem}}
    async with client_for(Emulator(EmulatorSettings(check_id_numbers=False))) as lenient:
        assert (await post(lenient, body)).status_code == 201


@pytest.mark.parametrize(
    "content", [b"", b"[]", b'"text"', b'{"unit": NaN}', b'{"a": Infinity}', b"\xff\xfe", b"[" * 100_000]
)
async def test_a_body_that_is_not_a_json_object_is_400(amili: httpx.AsyncClient, content: bytes) -> None:
    response = await amili.post("/invoice--registrations", content=content, headers=HEADERS)
    assert response.status_code == 400
    assert response.json()["_status"] == "ERR"


async def test_unknown_routes_and_methods_answer_in_eves_shape(amili: httpx.AsyncClient) -> None:
    missing = await amili.get("/no-such-resource", headers=HEADERS)
    assert missing.status_code == 404
    assert missing.json() == {"_status": "ERR", "_error": {"code": 404, "message": NOT_FOUND}}
    wrong = await amili.delete("/invoice--registrations", headers=HEADERS)
    assert wrong.status_code == 405
    assert wrong.json()["_error"]["code"] == 405
    assert "GET" in wrong.headers["allow"]


async def test_every_api_route_wants_the_key_and_admin_routes_do_not(amili: httpx.AsyncClient) -> None:
    for path in (
        "/invoice--registrations",
        f"/invoice--registrations/{'0' * 24}",
        "/invoices",
        f"/invoices/{'0' * 24}",
        "/cases",
        f"/cases/{'0' * 24}",
    ):
        response = await amili.get(path)
        assert response.status_code == 401, path
        assert response.json() == {"_status": "ERR", "_error": {"code": 401, "message": UNAUTHORISED}}
    for path in ("/_admin/registrations", "/_admin/faults", "/_admin/tokens", "/openapi.json"):
        assert (await amili.get(path)).status_code == 200, path


# Reading back: items, lists, where, sort, projection


async def create(amili: httpx.AsyncClient, **changes: Any) -> dict[str, Any]:
    response = await post(amili, request(**changes))
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def listing(amili: httpx.AsyncClient, path: str = "/invoice--registrations", **params: Any) -> Any:
    response = await amili.get(path, params=params, headers=HEADERS)
    assert response.status_code == 200, response.text
    return response.json()


def numbers(page: Any) -> list[str]:
    return [item["invoice_number"] for item in page["_items"]]


async def test_an_item_carries_its_etag(amili: httpx.AsyncClient) -> None:
    created = await create(amili)
    path = f"/invoice--registrations/{created['_id']}"
    item = await amili.get(path, headers=HEADERS)
    assert item.headers["etag"] == f'"{created["_etag"]}"'
    assert item.json()["_etag"] == created["_etag"]
    unchanged = await amili.get(path, headers={**HEADERS, "if-none-match": item.headers["etag"]})
    assert unchanged.status_code == 304


async def test_sort_in_both_of_eves_forms(amili: httpx.AsyncClient) -> None:
    for number, amount in (("A", 3), ("B", 1), ("C", 2), ("D", 1)):
        line = {"article_description": "x", "total_price_excluding_vat": amount}
        await create(amili, invoice_number=number, matrix=[line], your_reference=f"r{amount}")
    assert numbers(await listing(amili)) == ["A", "B", "C", "D"]
    assert numbers(await listing(amili, sort="-invoice_number")) == ["D", "C", "B", "A"]
    assert numbers(await listing(amili, sort="your_reference,-invoice_number")) == ["D", "B", "C", "A"]
    literal = '[("your_reference", 1), ("invoice_number", -1)]'
    assert numbers(await listing(amili, sort=literal)) == ["D", "B", "C", "A"]
    assert numbers(await listing(amili, sort='[("matrix.total_price_excluding_vat", -1)]')) == [
        "A",
        "C",
        "B",
        "D",
    ]
    for bad in ("[('x', 2)]", "[('x',)]", "[nope", "-", "[1, 2]"):
        response = await amili.get("/invoice--registrations", params={"sort": bad}, headers=HEADERS)
        assert response.status_code == 400, bad


async def test_numbers_sort_as_numbers(amili: httpx.AsyncClient) -> None:
    for number, amount in (("A", 10), ("B", 9), ("C", 100)):
        await create(
            amili,
            invoice_number=number,
            matrix=[{"article_description": "x", "total_price_excluding_vat": amount}],
        )
    assert numbers(await listing(amili, "/invoices", sort="total_amount_excluding_vat")) == ["B", "A", "C"]


async def test_where_speaks_mongodb(amili: httpx.AsyncClient) -> None:
    for number, amount in (("A", 100), ("B", 200), ("C", 300)):
        line = {"article_description": f"line {number}", "total_price_excluding_vat": amount}
        await create(amili, invoice_number=number, matrix=[line], labels=[number.lower(), "all"])

    async def where(query: Any) -> list[str]:
        return numbers(await listing(amili, where=json.dumps(query)))

    assert await where({"invoice_number": {"$in": ["A", "C", "X"]}}) == ["A", "C"]
    assert await where({"invoice_number": {"$ne": "A"}}) == ["B", "C"]
    assert await where({"matrix.total_price_excluding_vat": {"$gte": 200}}) == ["B", "C"]
    assert await where({"matrix.0.article_description": "line B"}) == ["B"]
    assert await where({"labels": "c"}) == ["C"]
    assert await where({"$or": [{"invoice_number": "A"}, {"labels": "b"}]}) == ["A", "B"]
    assert await where({"reference_number": {"$exists": True}}) == ["A", "B", "C"]
    assert await where({"file_import_report": {"$exists": True}}) == []
    assert await where({"invoice_date": {"$lt": "Mon, 22 Jan 2024 00:00:00 GMT"}}) == ["A", "B", "C"]
    assert await where({"invoice_date": "Wed, 21 Jan 2024 10:11:22 GMT"}) == ["A", "B", "C"]  # as a date
    assert await where({"customer.is_person": 1}) == []  # a boolean is not a number
    bad_queries: list[dict[str, Any]] = [
        {"$where": "1"},
        {"a": {"$regex": "x"}},
        {"$or": {}},
        {"a": {"$in": 1}},
    ]
    for bad in bad_queries:
        response = await amili.get(
            "/invoice--registrations", params={"where": json.dumps(bad)}, headers=HEADERS
        )
        assert response.status_code == 400, bad
    for bad_text in ('["a"]', 'invoice_number=="A"', '{"a": NaN}'):
        response = await amili.get("/invoice--registrations", params={"where": bad_text}, headers=HEADERS)
        assert response.status_code == 400, bad_text


async def test_the_clients_look_up_finds_exactly_the_pair(amili: httpx.AsyncClient) -> None:
    await create(amili, invoice_number="A")
    await create(amili, invoice_number="B")
    where = json.dumps({"creditor": DEMO_CREDITOR, "invoice_number": "B"})
    assert numbers(await listing(amili, where=where, max_results="2")) == ["B"]
    other = json.dumps({"creditor": "f" * 24, "invoice_number": "B"})
    assert (await listing(amili, where=other, max_results="2"))["_items"] == []
    narrowed = json.dumps({"creditor": DEMO_CREDITOR, "invoice_number": "B", "currency": "EUR"})
    assert (await listing(amili, where=narrowed))["_items"] == []


async def test_pages_and_their_bounds(amili: httpx.AsyncClient) -> None:
    for number in range(3):
        await create(amili, invoice_number=f"N-{number}")
    assert (await listing(amili, page="5"))["_items"] == []
    assert (await listing(amili, page="5"))["_meta"] == {"total": 3, "max_results": 25, "page": 5}
    assert (await listing(amili, max_results="100"))["_meta"]["max_results"] == 100
    assert (await listing(amili, max_results="101"))["_meta"]["max_results"] == 100
    for params in ({"page": "0"}, {"page": "x"}, {"max_results": "0"}, {"max_results": "-3"}):
        response = await amili.get("/invoice--registrations", params=params, headers=HEADERS)
        assert response.status_code == 400, params


async def test_projection_keeps_the_meta_fields(amili: httpx.AsyncClient) -> None:
    created = await create(amili)
    only = await listing(amili, projection=json.dumps({"invoice_number": 1}))
    assert set(only["_items"][0]) == {"_id", "_created", "_updated", "_etag", "invoice_number"}
    without = await listing(amili, projection=json.dumps({"customer": 0, "matrix": 0}))
    assert "customer" not in without["_items"][0]
    assert "invoice_number" in without["_items"][0]
    item = await amili.get(
        f"/invoice--registrations/{created['_id']}", params={"projection": '{"currency": 1}'}, headers=HEADERS
    )
    assert set(item.json()) == {"_id", "_created", "_updated", "_etag", "currency"}
    mixed = await amili.get(
        "/invoice--registrations", params={"projection": '{"a": 1, "b": 0}'}, headers=HEADERS
    )
    assert mixed.status_code == 400
