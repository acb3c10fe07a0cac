"""What a registration creates, seen through GET /invoices/{id} and GET /cases/{id}."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from devkit.emulator.app import Emulator
from devkit.emulator.settings import EmulatorSettings
from devkit.emulator.views import totals
from tests.unit.test_emulator import HEADERS, client_for, request

MIXED_VAT = [
    {"article_description": "a", "total_price_excluding_vat": 1000, "unit_vat_percent": "25%"},
    {"article_description": "b", "total_price_excluding_vat": 200, "unit_vat_percent": "12%"},
    {"article_description": "c", "total_price_excluding_vat": 100, "unit_vat_percent": "6%"},
    {"article_description": "d", "total_price_excluding_vat": 50, "unit_vat_percent": "0%"},
    {"article_description": "e", "total_price_excluding_vat": 33.33},  # 25 % when not given
    {
        "article_description": "f",
        "total_price_excluding_vat": -500,
        "unit_vat_percent": "25%",
        "is_discount": True,
    },
]


def test_totals_per_rate_from_the_matrix() -> None:
    assert totals(MIXED_VAT) == {
        "total_amount_excluding_vat": 883.33,
        "total_vat_25_percent": 133.33,  # 533.33 * 25 % = 133.3325
        "total_vat_12_percent": 24,
        "total_vat_6_percent": 6,
        "total_vat": 163.33,
        "total_amount_including_vat": 1046.66,
    }


@pytest.mark.parametrize(
    ("amount", "vat"),
    [(0.1, 0.03), (0.02, 0.01), (0.01, 0), (-0.1, -0.03), (10**12, 250_000_000_000)],
)
def test_vat_rounds_half_up_to_ore(amount: float, vat: float) -> None:
    assert totals([{"total_price_excluding_vat": amount}])["total_vat_25_percent"] == vat


async def registered(amili: httpx.AsyncClient, **changes: Any) -> dict[str, Any]:
    response = await amili.post("/invoice--registrations", json=request(**changes), headers=HEADERS)
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def fetch(amili: httpx.AsyncClient, path: str) -> dict[str, Any]:
    response = await amili.get(path, headers=HEADERS)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_the_invoice_a_registration_created(tmp_path: Path) -> None:
    async with client_for(Emulator(EmulatorSettings())) as amili:
        receipt = await registered(amili, matrix=MIXED_VAT)
        invoice = await fetch(amili, f"/invoices/{receipt['_invoice']}")
    assert invoice["_id"] == receipt["_invoice"] == receipt["_id"]
    assert invoice["_created"] == invoice["_updated"] == receipt["_created"]
    assert invoice["_etag"]
    assert invoice["case"] == receipt["_case"]
    assert invoice["ocr_number"] == receipt["_ocr_number"]
    assert invoice["ocr_number_ocr"] == receipt["ocr_number_ocr"]
    assert invoice["invoice_registration"] == receipt["_id"]
    assert invoice["case_status"] == "initialized"
    assert invoice["case_state"] == "invoice"
    assert invoice["invoice_number"] == "INV-2024-002"
    assert invoice["total_amount_including_vat"] == 1046.66
    assert invoice["total_vat_12_percent"] == 24


async def test_the_case_a_registration_created() -> None:
    async with client_for(Emulator(EmulatorSettings())) as amili:
        receipt = await registered(amili)
        case = await fetch(amili, f"/cases/{receipt['_case']}")
    assert case["_id"] == receipt["_case"]
    assert case["state"] == "invoice"
    assert case["status"] == "initialized"
    assert case["state_history"][-1] == {"state": "invoice", "date": receipt["_created"]}
    assert case["status_history"] == [{"status": "initialized", "date": receipt["_created"]}]
    assert case["invoice"] == receipt["_invoice"]
    assert case["invoice_registration"] == receipt["_id"]
    assert {case["_id"], case["_created"], case["_updated"], case["_etag"]}


async def test_unknown_invoices_and_cases_are_404() -> None:
    async with client_for(Emulator(EmulatorSettings())) as amili:
        receipt = await registered(amili)
        for path in (
            f"/invoices/{receipt['_case']}",
            f"/cases/{receipt['_invoice']}",
            "/cases/x",
            "/invoices/x",
        ):
            assert (await amili.get(path, headers=HEADERS)).status_code == 404, path


async def test_invoices_and_cases_are_listed_like_registrations() -> None:
    async with client_for(Emulator(EmulatorSettings())) as amili:
        for number in ("A", "B"):
            await registered(amili, invoice_number=number)
        invoices = await fetch(amili, '/invoices?where={"invoice_number":"B"}')
        cases = await fetch(amili, "/cases?sort=-invoice_number&max_results=1")
    assert [invoice["invoice_number"] for invoice in invoices["_items"]] == ["B"]
    assert [case["invoice_number"] for case in cases["_items"]] == ["B"]
    assert cases["_meta"] == {"total": 2, "max_results": 1, "page": 1}


async def test_views_survive_a_restart_unchanged(tmp_path: Path) -> None:
    settings = EmulatorSettings(store_path=str(tmp_path / "store.jsonl"))
    async with client_for(Emulator(settings)) as first:
        receipt = await registered(first, matrix=MIXED_VAT)
        before = [
            await fetch(first, path)
            for path in (f"/invoices/{receipt['_invoice']}", f"/cases/{receipt['_case']}")
        ]
    async with client_for(Emulator(settings)) as second:
        after = [
            await fetch(second, path)
            for path in (f"/invoices/{receipt['_invoice']}", f"/cases/{receipt['_case']}")
        ]
    assert after == before


async def test_a_line_cut_short_by_a_crash_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "store.jsonl"
    settings = EmulatorSettings(store_path=str(path))
    async with client_for(Emulator(settings)) as first:
        receipt = await registered(first, invoice_number="A")
    with path.open("a", encoding="utf-8") as file:
        file.write('{"_id": "cut sho')
    async with client_for(Emulator(settings)) as second:
        assert (
            await second.get(f"/invoice--registrations/{receipt['_id']}", headers=HEADERS)
        ).status_code == 200
        await registered(second, invoice_number="B")
    async with client_for(Emulator(settings)) as third:
        counts = (await third.get("/_admin/registrations")).json()
    assert counts["total"] == 2


async def test_clearing_forgets_views_too() -> None:
    async with client_for(Emulator(EmulatorSettings())) as amili:
        receipt = await registered(amili)
        assert (await amili.delete("/_admin/registrations")).status_code == 204
        assert (await amili.get(f"/cases/{receipt['_case']}", headers=HEADERS)).status_code == 404
        assert (await amili.get(f"/invoices/{receipt['_invoice']}", headers=HEADERS)).status_code == 404
        assert (await registered(amili))["_id"] != receipt["_id"]
