"""Amili's validation rules for an invoice registration, answered in Eve/Cerberus words.

The schema is the reference table of Amili's documentation; the messages are Cerberus' own
(``required field``, ``unknown field``, ``must be of string type``, ...), nested the way Eve nests
``_issues``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from service.amili.wire import OBJECT_ID_PATTERN, RFC1123_PATTERN, VAT_PERCENTS

Issues = dict[str, Any]


@dataclass(frozen=True)
class Rule:
    type: str  # string, boolean, number, datetime, dict, list, objectid
    required: bool = False
    readonly: bool = False
    allowed: tuple[str, ...] | None = None
    regex: str | None = None
    schema: dict[str, Rule] | None = None  # for dicts
    items: Rule | None = None  # for lists
    excludes: tuple[str, ...] = field(default_factory=tuple)


def _s(**kw: Any) -> Rule:
    return Rule("string", **kw)


ADDRESS = {
    "address_line_1": _s(),
    "address_line_2": _s(),
    "address_line_3": _s(),
    "zip_code": _s(),
    "city": _s(),
    "country": _s(regex=r"^[A-Z]{2}$"),
    "gln": _s(),
}
CAR_REGISTRATION = {
    "number": _s(required=True),
    "country": _s(regex=r"^[A-Z]{2}$"),
    "ownership_date": Rule("datetime"),
}
CUSTOMER = {
    "name": _s(required=True),
    "customer_number": _s(excludes=("car_registration",)),
    "id_number": _s(),
    "is_person": Rule("boolean"),
    "is_company": Rule("boolean"),
    "is_foreign": Rule("boolean"),
    "address": Rule("dict", schema=ADDRESS),
    "mobile_number": _s(),
    "email": _s(),
    "car_registration": Rule("dict", schema=CAR_REGISTRATION, excludes=("customer_number",)),
}
MATRIX_ITEM = {
    "article_number": _s(),
    "article_description": _s(required=True),
    "unit_price": Rule("number"),
    "number_of_units": Rule("number"),
    "total_price_excluding_vat": Rule("number", required=True),
    "unit_vat_percent": _s(allowed=VAT_PERCENTS),
    "is_discount": Rule("boolean"),
    "cost_center": _s(),
    "article_date": Rule("datetime"),
    "order_line_reference": _s(),
    "custom_column_data": Rule("list", items=_s()),
    "extra_rows": Rule("list", items=_s()),
}
REGISTRATION: dict[str, Rule] = {
    "account": Rule("objectid", required=True),
    "creditor": Rule("objectid", required=True),
    "customer": Rule("dict", required=True, schema=CUSTOMER),
    "invoice_type": _s(required=True),
    "invoice_number": _s(required=True),
    "reference_number": _s(),
    "payout_reference": _s(),
    "invoice_date": Rule("datetime", required=True),
    "invoice_due_date": Rule("datetime", required=True),
    "invoice_delivery_date": Rule("datetime"),
    "invoice_headline": _s(),
    "invoice_body_text": _s(),
    "currency": _s(required=True, allowed=("SEK",)),
    "your_contact": _s(),
    "your_reference": _s(),
    "our_reference": _s(),
    "your_additional_reference": _s(),
    "order_reference": _s(),
    "contract_reference": _s(),
    "debt_description": _s(),
    "letter_template": _s(),
    "custom_column_headlines": Rule("list", items=_s()),
    "matrix": Rule("list", required=True, items=Rule("dict", schema=MATRIX_ITEM)),
    "preferred_invoice_distribution": _s(),
    "case_settings": Rule("dict"),
    "labels": Rule("list", items=_s()),
    "file_import_report": Rule("dict", readonly=True),
    "start_flow": Rule("boolean"),
}

_TYPE_CHECKS: dict[str, Callable[[Any], bool]] = {
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "dict": lambda v: isinstance(v, dict),
    "list": lambda v: isinstance(v, list),
    "datetime": lambda v: isinstance(v, str) and bool(RFC1123_PATTERN.match(v)),
    "objectid": lambda v: isinstance(v, str) and bool(re.match(OBJECT_ID_PATTERN, v)),
}


def validate_document(document: dict[str, Any], schema: dict[str, Rule]) -> Issues:
    """Eve-shaped ``_issues`` for ``document``; empty when it is valid."""
    issues: Issues = {}
    for name in document:
        if name not in schema:
            issues[name] = "unknown field"
    for name, rule in schema.items():
        if name not in document:
            if rule.required:
                issues[name] = "required field"
            continue
        problem = _validate_value(name, document[name], rule, document)
        if problem:
            issues[name] = problem
    return issues


def _validate_value(name: str, value: Any, rule: Rule, siblings: dict[str, Any]) -> Any:
    if rule.readonly:
        return "field is read-only"
    if value is None:
        return "null value not allowed"
    for other in rule.excludes:
        if other in siblings:
            return f"'{name}' must not be present with '{other}'"
    if not _TYPE_CHECKS[rule.type](value):
        return f"must be of {rule.type} type"
    if rule.allowed is not None and value not in rule.allowed:
        return f"unallowed value {value}"
    if rule.regex is not None and not re.match(rule.regex, value):
        return f"value does not match regex '{rule.regex}'"
    if rule.type == "dict" and rule.schema is not None:
        nested = validate_document(value, rule.schema)
        return nested or None
    if rule.type == "list" and rule.items is not None:
        item_issues = {
            str(index): problem
            for index, item in enumerate(value)
            if (problem := _validate_value(str(index), item, rule.items, {}))
        }
        return item_issues or None
    return None


def customer_type_issue(customer: dict[str, Any]) -> str | None:
    flags: Iterable[Any] = (customer.get(name) for name in ("is_person", "is_company", "is_foreign"))
    if sum(flag is True for flag in flags) != 1:
        return "exactly one of is_person, is_company, is_foreign must be true"
    return None
