"""The invoice and the case that a registration creates, as ``GET /invoices/{id}`` and
``GET /cases/{id}`` show them.

Both are derived from the stored registration alone (its ``_invoice``, ``_case``, ``_ocr_number`` ids
and its ``_created`` stamp), so they are the same after a restart of the emulator as before it.

What Amili documents: an invoice's totals (``total_amount_excluding_vat``, ``total_vat_25_percent``,
``total_vat_12_percent``, ``total_vat_6_percent``, ``total_vat``, ``total_amount_including_vat``) and
its ``case``, ``ocr_number``, ``invoice_registration``, ``case_status`` and ``case_state``; a case's
``state`` and ``status``, each with a history. What it does not (the emulator's choice) [open]:
the names ``state_history`` and ``status_history``, their items ``{"state"|"status": ..., "date": ...}``,
the copied registration fields, ``ocr_number`` being the OCR-number document's id (as ``_ocr_number``
of the registration) with its digits beside it in ``ocr_number_ocr``, and the rounding: VAT is summed
per rate over the lines (``unit_vat_percent``, 25 % when absent) and rounded half up to öre.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from decimal import ROUND_HALF_UP, Decimal, localcontext
from typing import Any

from devkit.emulator.ids import etag
from devkit.emulator.validation import DEFAULT_VAT_PERCENT, VAT_PERCENTS

CASE_STATE = "invoice"
CASE_STATUS = "initialized"
_ORE = Decimal("0.01")
_COPIED = (
    "account",
    "creditor",
    "invoice_number",
    "invoice_type",
    "invoice_date",
    "invoice_due_date",
    "currency",
)


def _money(value: Decimal) -> int | float:
    rounded = value.quantize(_ORE, rounding=ROUND_HALF_UP)
    return int(rounded) if rounded == rounded.to_integral_value() else float(rounded)


def totals(matrix: Sequence[Mapping[str, Any]]) -> dict[str, int | float]:
    """An invoice's totals from its lines."""
    with localcontext(prec=60):
        return _totals(matrix)


def _totals(matrix: Sequence[Mapping[str, Any]]) -> dict[str, int | float]:
    excluding = Decimal(0)
    per_rate = {percent: Decimal(0) for percent in VAT_PERCENTS}
    for line in matrix:
        amount = Decimal(str(line["total_price_excluding_vat"]))
        excluding += amount
        per_rate[line.get("unit_vat_percent", DEFAULT_VAT_PERCENT)] += amount
    vat = {
        percent: (amount * Decimal(percent.rstrip("%")) / 100).quantize(_ORE, rounding=ROUND_HALF_UP)
        for percent, amount in per_rate.items()
    }
    total_vat = sum(vat.values(), Decimal(0))
    return {
        "total_amount_excluding_vat": _money(excluding),
        "total_vat_25_percent": _money(vat["25%"]),
        "total_vat_12_percent": _money(vat["12%"]),
        "total_vat_6_percent": _money(vat["6%"]),
        "total_vat": _money(total_vat),
        "total_amount_including_vat": _money(excluding + total_vat),
    }


def _with_meta(registration: Mapping[str, Any], document_id: str, body: dict[str, Any]) -> dict[str, Any]:
    document = {
        "_id": document_id,
        "_created": registration["_created"],
        "_updated": registration["_updated"],
        **body,
    }
    document["_etag"] = etag(document)
    return document


def invoice_view(registration: Mapping[str, Any]) -> dict[str, Any]:
    body: dict[str, Any] = {name: registration[name] for name in _COPIED if name in registration}
    body.update(totals(registration["matrix"]))
    body.update(
        {
            "case": registration["_case"],
            "ocr_number": registration["_ocr_number"],
            "ocr_number_ocr": registration["ocr_number_ocr"],
            "invoice_registration": registration["_id"],
            "case_status": CASE_STATUS,
            "case_state": CASE_STATE,
        }
    )
    return _with_meta(registration, registration["_invoice"], body)


def case_view(registration: Mapping[str, Any]) -> dict[str, Any]:
    created = registration["_created"]
    body: dict[str, Any] = {name: registration[name] for name in ("account", "creditor", "invoice_number")}
    body.update(
        {
            "state": CASE_STATE,
            "status": CASE_STATUS,
            "state_history": [
                {"state": "initializing", "date": created},
                {"state": CASE_STATE, "date": created},
            ],
            "status_history": [{"status": CASE_STATUS, "date": created}],
            "invoice": registration["_invoice"],
            "invoice_registration": registration["_id"],
            "ocr_number": registration["_ocr_number"],
            "ocr_number_ocr": registration["ocr_number_ocr"],
        }
    )
    return _with_meta(registration, registration["_case"], body)
