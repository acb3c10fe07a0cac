"""Amili's field paths → the inbound event's field paths.

A refusal then names what the billing system sent (``data.lines[2].vat_rate``) rather than what we
sent Amili (``matrix.2.unit_vat_percent``). The inverse of the transform's field mapping.
"""

from __future__ import annotations

_Mapping = dict[str, str]

_ADDRESS: _Mapping = {
    "address_line_1": "lines[0]",
    "address_line_2": "lines[1]",
    "address_line_3": "lines[2]",
    "zip_code": "postal_code",
    "city": "city",
    "country": "country",
    "gln": "gln",
}
_CAR_REGISTRATION: _Mapping = {"number": "number", "country": "country", "ownership_date": "ownership_date"}
_CUSTOMER: _Mapping = {
    "name": "name",
    "customer_number": "customer_number",
    "id_number": "id_number",
    "is_person": "type",
    "is_company": "type",
    "is_foreign": "type",
    "mobile_number": "mobile_number",
    "email": "email",
}
_MATRIX_ITEM: _Mapping = {
    "article_number": "article_number",
    "article_description": "description",
    "unit_price": "unit_price",
    "number_of_units": "quantity",
    "total_price_excluding_vat": "total_excluding_vat",
    "unit_vat_percent": "vat_rate",
    "is_discount": "is_discount",
    "cost_center": "cost_center",
    "article_date": "article_date",
    "order_line_reference": "order_line_reference",
    "custom_column_data": "custom_columns",
    "extra_rows": "extra_rows",
}
REFERENCE_FIELDS = (
    "reference_number",
    "payout_reference",
    "your_contact",
    "your_reference",
    "our_reference",
    "your_additional_reference",
    "order_reference",
    "contract_reference",
)
_TOP_LEVEL: _Mapping = {
    "account": "account",
    "creditor": "creditor",
    "invoice_type": "invoice_type",
    "invoice_number": "invoice_number",
    "invoice_date": "issue_date",
    "invoice_due_date": "due_date",
    "invoice_delivery_date": "delivery_date",
    "invoice_headline": "headline",
    "invoice_body_text": "body_text",
    "currency": "currency",
    "debt_description": "debt_description",
    "custom_column_headlines": "custom_column_headlines",
    "preferred_invoice_distribution": "preferred_distribution",
    "case_settings": "case_settings",
    "labels": "labels",
    "start_flow": "start_flow",
    **{name: f"references.{name}" for name in REFERENCE_FIELDS},
}


NOT_SENT: dict[str, str] = {
    "letter_template": "not sent: deprecated by Amili on 2025-06-13; an event carrying "
    "`data.letter_template` is rejected (rule `deprecated`)",
    "file_import_report": "not sent: read-only, set by Amili's own file imports",
}
"""Fields of Amili's registration that no event field reaches, and why."""

_DAY = "a date goes as midnight UTC, a date and time as that instant in UTC"
_NOTES: dict[str, str] = {
    "account": "or `AMILI_DEFAULT_ACCOUNT`",
    "creditor": "or `AMILI_DEFAULT_CREDITOR`",
    "currency": "any letter case, sent upper case; only SEK is accepted",
    "invoice_date": _DAY,
    "invoice_due_date": _DAY,
    "invoice_delivery_date": _DAY,
    "customer.is_person": "`type` = `person`; with no `type` none of the three is sent",
    "customer.is_company": "`type` = `company`",
    "customer.is_foreign": "`type` = `foreign`",
    "customer.address.country": "any letter case, sent upper case",
    "customer.car_registration.country": "any letter case, sent upper case",
    "customer.car_registration.ownership_date": _DAY,
    "matrix[].unit_price": "up to 6 decimals",
    "matrix[].number_of_units": "up to 6 decimals",
    "matrix[].total_price_excluding_vat": "up to 2 decimals",
    "matrix[].unit_vat_percent": 'a rate, 0/6/12/25, sent as `"25%"`; 25 when left out',
    "matrix[].is_discount": "sent only when true",
    "matrix[].article_date": _DAY,
}


def seed_field_rows() -> list[tuple[str, str, str]]:
    """Every field of Amili's registration request (``customer.address.zip_code``, lists as
    ``matrix[]``), the event field it comes from, and a note: the docs table of the mapping."""
    mapped: list[tuple[str, str]] = [(name, f"data.{event}") for name, event in _TOP_LEVEL.items()]
    mapped += [(f"customer.{name}", f"data.customer.{event}") for name, event in _CUSTOMER.items()]
    mapped += [(f"customer.{name}", f"data.customer.{name}") for name in ("address", "car_registration")]
    mapped += [(f"customer.address.{n}", f"data.customer.address.{e}") for n, e in _ADDRESS.items()]
    mapped += [
        (f"customer.car_registration.{n}", f"data.customer.car_registration.{e}")
        for n, e in _CAR_REGISTRATION.items()
    ]
    mapped += [("customer", "data.customer"), ("matrix", "data.lines")]
    mapped += [(f"matrix[].{n}", f"data.lines[].{e}") for n, e in _MATRIX_ITEM.items()]
    rows = [(name, event, _NOTES.get(name, "")) for name, event in mapped]
    rows += [(name, "", why) for name, why in NOT_SENT.items()]
    order = {name: index for index, name in enumerate(("", "customer", "customer.address"))}
    return sorted(rows, key=lambda row: (order.get(row[0].rpartition(".")[0], 9), row[0]))


def seed_field_table() -> str:
    """``seed_field_rows`` as a Markdown table."""
    lines = ["| Amili field | Event field | Note |", "|---|---|---|"]
    for name, event, note in seed_field_rows():
        lines.append(f"| `{name}` | {f'`{event}`' if event else '—'} | {note} |")
    return "\n".join(lines) + "\n"


def inbound_field_path(amili_path: str) -> str:
    """``customer.address.zip_code`` → ``data.customer.address.postal_code``; a path we do not send
    (or cannot place) stays Amili's, prefixed ``amili.``."""
    parts = amili_path.split(".")
    head, rest = parts[0], parts[1:]
    if head == "customer":
        mapped = _customer_path(rest)
    elif head == "matrix":
        mapped = _matrix_path(rest)
    else:
        mapped = _top_level_path(head, rest)
    return f"data.{mapped}" if mapped is not None else f"amili.{amili_path}"


def _top_level_path(head: str, rest: list[str]) -> str | None:
    mapped = _TOP_LEVEL.get(head)
    if mapped is None or not rest:
        return mapped
    if head == "case_settings":  # free-form: its keys are the event's own
        return ".".join([mapped, *rest])
    if head in ("labels", "custom_column_headlines") and len(rest) == 1 and rest[0].isdigit():
        return f"{mapped}[{rest[0]}]"
    return None


def _customer_path(rest: list[str]) -> str | None:
    if not rest:
        return "customer"
    field, inner = rest[0], rest[1:]
    if field == "address":
        return _nested("customer.address", _ADDRESS, inner)
    if field == "car_registration":
        return _nested("customer.car_registration", _CAR_REGISTRATION, inner)
    mapped = _CUSTOMER.get(field)
    return f"customer.{mapped}" if mapped is not None and not inner else None


def _matrix_path(rest: list[str]) -> str | None:
    if not rest:
        return "lines"
    if not rest[0].isdigit():
        return None
    line = f"lines[{rest[0]}]"
    if len(rest) == 1:
        return line
    mapped = _MATRIX_ITEM.get(rest[1])
    if mapped is None:
        return None
    if len(rest) == 3 and rest[2].isdigit() and mapped in ("custom_columns", "extra_rows"):
        return f"{line}.{mapped}[{rest[2]}]"
    return f"{line}.{mapped}" if len(rest) == 2 else None


def _nested(prefix: str, mapping: _Mapping, inner: list[str]) -> str | None:
    if not inner:
        return prefix
    mapped = mapping.get(inner[0])
    return f"{prefix}.{mapped}" if mapped is not None and len(inner) == 1 else None
