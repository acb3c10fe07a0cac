"""Amili's rules for an invoice registration, answered in Eve/Cerberus words.

The schema is the reference table of Amili's documentation; the messages are Cerberus' own
(``required field``, ``unknown field``, ``must be of string type``, ...), nested the way Eve nests
``_issues``. The rules that are not a field's own (one customer type, known and active creditor and
account, a unique invoice number per creditor, Swedish id numbers) follow in ``registration_issues``.

Dates are RFC 1123 GMT strings, read the way Eve reads them (``datetime.strptime`` with
``"%a, %d %b %Y %H:%M:%S GMT"``): the weekday must be a weekday's name but need not be the right one
(Amili's own example dates ``Wed, 21 Jan 2024``, a Sunday), and the date must exist. Eve keeps dates
as datetimes and writes them back in its own format, so a stored registration shows its dates
normalised (``Sun, 21 Jan 2024 10:11:22 GMT``); ``normalise_dates`` does that.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

from devkit.emulator.swedish import organisationsnummer_problem, personnummer_problem

Issues = dict[str, Any]

OBJECT_ID_PATTERN = r"^[0-9a-f]{24}$"
COUNTRY_PATTERN = r"^[A-Z]{2}$"
RFC1123_FORMAT = "%a, %d %b %Y %H:%M:%S GMT"
VAT_PERCENTS: tuple[str, ...] = ("0%", "6%", "12%", "25%")
DEFAULT_VAT_PERCENT = "25%"
CUSTOMER_TYPES: tuple[str, ...] = ("is_person", "is_company", "is_foreign")
# Amili documents no bounds; the emulator keeps amounts where sums stay exact [open].
AMOUNT_LIMIT = 10**12


@dataclass(frozen=True)
class Rule:
    type: str  # string, boolean, number, datetime, dict, list, objectid
    required: bool = False
    readonly: bool = False
    empty: bool = True  # Cerberus: may a string or list be empty
    allowed: tuple[str, ...] | None = None
    min: int | None = None  # for numbers
    max: int | None = None
    regex: str | None = None
    schema: Mapping[str, Rule] | None = None  # for dicts
    items: Rule | None = None  # for lists
    excludes: tuple[str, ...] = ()
    description: str = ""


def _s(description: str = "", **kw: Any) -> Rule:
    return Rule("string", description=description, **kw)


def _amount(description: str, **kw: Any) -> Rule:
    return Rule("number", min=-AMOUNT_LIMIT, max=AMOUNT_LIMIT, description=description, **kw)


ADDRESS: dict[str, Rule] = {
    "address_line_1": _s("Primary address line"),
    "address_line_2": _s("Secondary address line"),
    "address_line_3": _s("Tertiary address line"),
    "zip_code": _s("Postal code"),
    "city": _s("City name"),
    "country": _s("Country code, ISO 3166-1 alpha-2 (e.g. SE)", regex=COUNTRY_PATTERN),
    "gln": _s("Global Location Number"),
}
CAR_REGISTRATION: dict[str, Rule] = {
    "number": _s("Car registration number", required=True, empty=False),
    "country": _s("Country of the car (defaults to SE)", regex=COUNTRY_PATTERN),
    "ownership_date": Rule("datetime", description="Date for the ownership check (defaults to invoice_date)"),
}
CUSTOMER: dict[str, Rule] = {
    "name": _s("Customer's full name", required=True, empty=False),
    "customer_number": _s("Customer's reference number", excludes=("car_registration",)),
    "id_number": _s("Personnummer or organisationsnummer (optional at registration)"),
    "is_person": Rule("boolean", description="A Swedish person (excludes is_company, is_foreign)"),
    "is_company": Rule("boolean", description="A Swedish company (excludes is_person, is_foreign)"),
    "is_foreign": Rule("boolean", description="A foreign customer (excludes is_person, is_company)"),
    "address": Rule("dict", schema=ADDRESS, description="Customer's address"),
    "mobile_number": _s("Contact phone number"),
    "email": _s("Contact email address"),
    "car_registration": Rule(
        "dict",
        schema=CAR_REGISTRATION,
        excludes=("customer_number",),
        description="Car registration details (excludes customer_number)",
    ),
}
MATRIX_ITEM: dict[str, Rule] = {
    "article_number": _s("Article identifier"),
    "article_description": _s("Description of the item", required=True, empty=False),
    "unit_price": _amount("Price per unit"),
    "number_of_units": _amount("Number of units"),
    "total_price_excluding_vat": _amount("Total amount before VAT", required=True),
    "unit_vat_percent": _s("VAT percentage, defaults to 25%", allowed=VAT_PERCENTS),
    "is_discount": Rule("boolean", description="Discount flag (not shown on invoice)"),
    "cost_center": _s("Cost center (not shown on invoice)"),
    "article_date": Rule("datetime", description="Article acquisition date (not shown on invoice)"),
    "order_line_reference": _s("Links to a purchase order line"),
    "custom_column_data": Rule("list", items=_s(), description="Custom column data"),
    "extra_rows": Rule("list", items=_s(), description="Extra rows"),
}
REGISTRATION: dict[str, Rule] = {
    "account": Rule("objectid", required=True, description="Account id (known and active)"),
    "creditor": Rule("objectid", required=True, description="Creditor id (known and active)"),
    "customer": Rule("dict", required=True, schema=CUSTOMER, description="Customer information"),
    "invoice_type": _s("Type of invoice (e.g. invoice)", required=True, empty=False),
    "invoice_number": _s("Invoice number from the creditor, unique per creditor", required=True, empty=False),
    "reference_number": _s("Reference number from the creditor"),
    "payout_reference": _s("Reference for payout tracking"),
    "invoice_date": Rule("datetime", required=True, description="Date the invoice was issued"),
    "invoice_due_date": Rule("datetime", required=True, description="Due date for payment"),
    "invoice_delivery_date": Rule("datetime", description="Date the invoice was delivered"),
    "invoice_headline": _s("Invoice headline text"),
    "invoice_body_text": _s("Invoice body text"),
    "currency": _s("Currency code (only SEK)", required=True, allowed=("SEK",)),
    "your_contact": _s("Contact person at the creditor"),
    "your_reference": _s("Reference from the creditor"),
    "our_reference": _s("Reference from Amili"),
    "your_additional_reference": _s("Additional reference"),
    "order_reference": _s("Order reference"),
    "contract_reference": _s("Contract reference"),
    "debt_description": _s("Description of the debt"),
    "letter_template": _s("Letter template (deprecated 2025-06-13)"),
    "custom_column_headlines": Rule("list", items=_s(), description="Custom column headers"),
    "matrix": Rule(
        "list",
        required=True,
        empty=False,
        items=Rule("dict", schema=MATRIX_ITEM),
        description="Invoice line items",
    ),
    "preferred_invoice_distribution": _s("Preferred distribution method"),
    "case_settings": Rule("dict", description="Case-specific settings"),
    "labels": Rule("list", items=_s(), description="Labels for categorisation"),
    "file_import_report": Rule("dict", readonly=True, description="File import metadata (read-only)"),
    "start_flow": Rule("boolean", description="Whether to start the case flow immediately"),
}


def parse_rfc1123(value: object) -> datetime | None:
    """The moment an RFC 1123 GMT string names, read as Eve reads it; None when it is not one."""
    if not isinstance(value, str) or not value.isascii():
        return None
    return _parse_rfc1123_text(value)


# Remembered: ``strptime`` is the costliest step of a registration, and invoices share their dates.
@functools.lru_cache(maxsize=4096)
def _parse_rfc1123_text(value: str) -> datetime | None:
    try:
        return datetime.strptime(value, RFC1123_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        return None


def _normalised_rfc1123(value: object) -> str | None:
    """The date ``value`` names, in Eve's format (weekday corrected); None when it is not one."""
    if not isinstance(value, str) or not value.isascii():
        return None
    return _normalised_rfc1123_text(value)


@functools.lru_cache(maxsize=4096)
def _normalised_rfc1123_text(value: str) -> str | None:
    moment = _parse_rfc1123_text(value)
    return None if moment is None else format_rfc1123(moment)


def is_object_id(value: object) -> bool:
    return isinstance(value, str) and re.fullmatch(OBJECT_ID_PATTERN, value) is not None


def format_rfc1123(moment: datetime) -> str:
    return format_datetime(moment.astimezone(UTC), usegmt=True)


_TYPE_CHECKS: dict[str, Callable[[Any], bool]] = {
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "dict": lambda v: isinstance(v, dict),
    "list": lambda v: isinstance(v, list),
    "datetime": lambda v: parse_rfc1123(v) is not None,
    "objectid": lambda v: is_object_id(v),
}


def validate_document(document: Mapping[str, Any], schema: Mapping[str, Rule]) -> Issues:
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


def _validate_value(name: str, value: Any, rule: Rule, siblings: Mapping[str, Any]) -> Any:
    if rule.readonly:
        return "field is read-only"
    if value is None:
        return "null value not allowed"
    for other in rule.excludes:
        if other in siblings:
            return f"'{name}' must not be present with '{other}'"
    if not _TYPE_CHECKS[rule.type](value):
        return f"must be of {rule.type} type"
    if not rule.empty and len(value) == 0:
        return "empty values not allowed"
    if rule.min is not None and value < rule.min:
        return f"min value is {rule.min}"
    if rule.max is not None and value > rule.max:
        return f"max value is {rule.max}"
    if rule.allowed is not None and value not in rule.allowed:
        return f"unallowed value {value}"
    if rule.regex is not None and not re.fullmatch(rule.regex, value):
        return f"value does not match regex '{rule.regex}'"
    if rule.type == "dict" and rule.schema is not None:
        return validate_document(value, rule.schema) or None
    if rule.type == "list" and rule.items is not None:
        item_issues = {
            str(index): problem
            for index, item in enumerate(value)
            if (problem := _validate_value(str(index), item, rule.items, {}))
        }
        return item_issues or None
    return None


def customer_type_issue(customer: Mapping[str, Any]) -> str | None:
    if sum(customer.get(name) is True for name in CUSTOMER_TYPES) != 1:
        return "exactly one of is_person, is_company, is_foreign must be true"
    return None


@dataclass(frozen=True)
class Directory:
    """The accounts and creditors the emulator knows, and which of them are active."""

    accounts: frozenset[str]
    creditors: frozenset[str]
    inactive_accounts: frozenset[str] = frozenset()
    inactive_creditors: frozenset[str] = frozenset()

    def problem(self, resource: str, value: str) -> str | None:
        known, inactive = (
            (self.accounts | self.inactive_accounts, self.inactive_accounts)
            if resource == "accounts"
            else (self.creditors | self.inactive_creditors, self.inactive_creditors)
        )
        if value not in known:
            return f"value '{value}' must exist in resource '{resource}'"
        if value in inactive:
            return f"{resource[:-1]} '{value}' is not active"
        return None


def registration_issues(
    document: Mapping[str, Any],
    directory: Directory,
    *,
    check_id_numbers: bool,
    is_registered: Callable[[str, str], bool],
) -> Issues:
    """Every issue of a registration, as Eve would report them together in one 422."""
    issues = validate_document(document, REGISTRATION)
    for resource, name in (("accounts", "account"), ("creditors", "creditor")):
        if (
            name not in issues
            and name in document
            and (problem := directory.problem(resource, document[name]))
        ):
            issues[name] = problem
    creditor, invoice_number = document.get("creditor"), document.get("invoice_number")
    if (
        "invoice_number" not in issues
        and isinstance(creditor, str)
        and isinstance(invoice_number, str)
        and is_registered(creditor, invoice_number)
    ):
        issues["invoice_number"] = f"value '{invoice_number}' is not unique"
    customer = document.get("customer")
    if isinstance(customer, dict) and not isinstance(issues.get("customer"), str):
        customer_issues: Issues = dict(issues.get("customer") or {})
        if "is_person" not in customer_issues and (problem := customer_type_issue(customer)):
            customer_issues["is_person"] = problem
        if (
            check_id_numbers
            and "id_number" not in customer_issues
            and (problem := _id_number_problem(customer))
        ):
            customer_issues["id_number"] = problem
        if customer_issues:
            issues["customer"] = customer_issues
    return issues


def _id_number_problem(customer: Mapping[str, Any]) -> str | None:
    id_number = customer.get("id_number")
    if not isinstance(id_number, str):
        return None
    if customer.get("is_person") is True and (problem := personnummer_problem(id_number)):
        return f"personnummer {problem}"
    if customer.get("is_company") is True and (problem := organisationsnummer_problem(id_number)):
        return f"organisationsnummer {problem}"
    return None


def normalise_dates(document: Mapping[str, Any], schema: Mapping[str, Rule] = REGISTRATION) -> dict[str, Any]:
    """A copy of a valid ``document`` with every date written in Eve's format (weekday corrected)."""
    result: dict[str, Any] = {}
    for name, value in document.items():
        rule = schema.get(name)
        result[name] = _normalise(value, rule) if rule is not None else value
    return result


def _normalise(value: Any, rule: Rule) -> Any:
    if rule.type == "datetime" and (text := _normalised_rfc1123(value)) is not None:
        return text
    if rule.type == "dict" and rule.schema is not None and isinstance(value, dict):
        return normalise_dates(value, rule.schema)
    if rule.type == "list" and rule.items is not None and isinstance(value, list):
        return [_normalise(item, rule.items) for item in value]
    return value
