"""The canonical invoice → Amili's registration payload, with the business rules checked first.

Pure: no I/O, no clock. A broken rule yields a ``Rejection`` with field paths of the inbound event;
nothing here raises for bad input.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Literal

from pydantic import ValidationError

from service.amili import models as amili
from service.domain.field_paths import inbound_field_path
from service.domain.invoice import CustomerType, Invoice, InvoiceLine
from service.domain.outcomes import Rejection, Violation
from service.domain.swedish_ids import organisationsnummer_problem, personnummer_problem

ALLOWED_VAT_RATES: frozenset[Decimal] = frozenset(Decimal(rate) for rate in (0, 6, 12, 25))
SUPPORTED_CURRENCIES: frozenset[str] = frozenset({"SEK"})
_SWEDISH_PLATE = re.compile(r"[A-Z]{3} ?[0-9]{2}[A-Z0-9]", re.ASCII)
_ROUNDING_TOLERANCE = Decimal("0.01")

Broken = Callable[[str, str, str], None]

IdNumberCheck = Literal["strict", "warn", "off"]
"""How a Swedish id number (``customer.id_number``) is checked: ``strict`` rejects an invalid one,
``warn`` registers it as given with a warning, ``off`` does not check it."""


@dataclass(frozen=True, slots=True)
class TransformDefaults:
    """Where an event leaves ``account`` or ``creditor`` out, these are used; ``id_number_check``
    says what an invalid Swedish id number does (see ``IdNumberCheck``)."""

    account: str | None = None
    creditor: str | None = None
    id_number_check: IdNumberCheck = "strict"


def _id_number_findings(invoice: Invoice) -> list[Violation]:
    """What is wrong with the customer's Swedish id number, if anything."""
    customer = invoice.customer
    if customer.id_number is None:
        return []
    problem: str | None = None
    if customer.type is CustomerType.PERSON:
        rule = "personnummer"
        problem = personnummer_problem(customer.id_number)
    elif customer.type is CustomerType.COMPANY:
        rule = "organisationsnummer"
        problem = organisationsnummer_problem(customer.id_number)
    if not problem:
        return []
    return [Violation(field="data.customer.id_number", rule=rule, message=f"{rule} {problem}")]


def registration_warnings(invoice: Invoice, defaults: TransformDefaults) -> list[Violation]:
    """What a registrable ``invoice`` is registered despite: under ``warn``, an invalid id number."""
    return _id_number_findings(invoice) if defaults.id_number_check == "warn" else []


def check_business_rules(invoice: Invoice, defaults: TransformDefaults) -> list[Violation]:
    violations: list[Violation] = []

    def broken(path: str, rule: str, message: str) -> None:
        violations.append(Violation(field=f"data.{path}", rule=rule, message=message))

    if invoice.account is None and defaults.account is None:
        broken("account", "required", "no account in the event and no default configured")
    if invoice.creditor is None and defaults.creditor is None:
        broken("creditor", "required", "no creditor in the event and no default configured")
    if invoice.currency not in SUPPORTED_CURRENCIES:
        broken("currency", "currency", f"only SEK is supported, not {invoice.currency}")
    if _utc_day(invoice.due_date) < _utc_day(invoice.issue_date):
        broken("due_date", "due_after_issue", "due date is before the issue date")
    if invoice.letter_template is not None:
        broken(
            "letter_template",
            "deprecated",
            "letter_template was deprecated by Amili on 2025-06-13 and is not sent; leave it out",
        )

    customer = invoice.customer
    if defaults.id_number_check == "strict":
        violations.extend(_id_number_findings(invoice))
    car = customer.car_registration
    if car is not None:
        if customer.customer_number is not None:
            broken(
                "customer.car_registration",
                "car_registration_excludes_customer_number",
                "car_registration must not be given together with customer_number",
            )
        if (car.country in (None, "SE")) and not _SWEDISH_PLATE.fullmatch(car.number):
            broken("customer.car_registration.number", "swedish_plate", "must be like ABC123 or ABC12A")

    for index, line in enumerate(invoice.lines):
        _check_line(line, f"lines[{index}]", broken)
    return violations


def _check_line(line: InvoiceLine, path: str, broken: Broken) -> None:
    if line.vat_rate not in ALLOWED_VAT_RATES:
        broken(f"{path}.vat_rate", "vat_rate", f"VAT rate {line.vat_rate} is not one of 0, 6, 12, 25")
    if line.quantity is not None and line.unit_price is not None:
        expected = (line.quantity * line.unit_price).quantize(Decimal("0.01"))
        if abs(expected - line.total_excluding_vat) > _ROUNDING_TOLERANCE:
            broken(
                f"{path}.total_excluding_vat",
                "line_total",
                f"{line.total_excluding_vat} differs from quantity x unit price ({expected})",
            )


def to_registration(
    invoice: Invoice, defaults: TransformDefaults
) -> amili.InvoiceRegistrationRequest | Rejection:
    """The registration payload for ``invoice``, or why it cannot be registered."""
    violations = check_business_rules(invoice, defaults)
    if violations:
        return Rejection(tuple(violations))
    try:
        return _build(invoice, defaults)
    except ValidationError as error:
        return Rejection(
            tuple(
                Violation(
                    field=inbound_field_path(".".join(str(part) for part in issue["loc"])),
                    rule=issue["type"],
                    message=issue["msg"],
                )
                for issue in error.errors(include_url=False, include_input=False)
            )
        )


def _instant(day: date | None) -> datetime | None:
    """When ``day`` is in UTC: a date is its midnight, a date and time is itself."""
    if day is None:
        return None
    if isinstance(day, datetime):
        return day.astimezone(UTC)
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def _utc_day(day: date) -> date:
    return day.astimezone(UTC).date() if isinstance(day, datetime) else day


def _vat_percent(rate: Decimal) -> str:
    return f"{rate.normalize():f}%"


def _build(invoice: Invoice, defaults: TransformDefaults) -> amili.InvoiceRegistrationRequest:
    # One validation of the whole document rather than a model per nested object: a refusal's
    # location is then the whole path (``customer.address.country``), which maps back to the event.
    customer = invoice.customer
    address = customer.address
    car = customer.car_registration
    refs = invoice.references
    lines = address.lines if address is not None else []
    return amili.InvoiceRegistrationRequest.model_validate(
        {
            "account": invoice.account or defaults.account or "",
            "creditor": invoice.creditor or defaults.creditor or "",
            "customer": {
                "name": customer.name,
                "customer_number": customer.customer_number,
                "id_number": customer.id_number,
                # No type, no flag: Amili expects exactly one, and says so if it does.
                "is_person": True if customer.type is CustomerType.PERSON else None,
                "is_company": True if customer.type is CustomerType.COMPANY else None,
                "is_foreign": True if customer.type is CustomerType.FOREIGN else None,
                "address": None
                if address is None
                else {
                    "address_line_1": lines[0] if len(lines) > 0 else None,
                    "address_line_2": lines[1] if len(lines) > 1 else None,
                    "address_line_3": lines[2] if len(lines) > 2 else None,
                    "zip_code": address.postal_code,
                    "city": address.city,
                    "country": address.country,
                    "gln": address.gln,
                },
                "mobile_number": customer.mobile_number,
                "email": customer.email,
                "car_registration": None
                if car is None
                else {
                    "number": car.number,
                    "country": car.country,
                    "ownership_date": _instant(car.ownership_date),
                },
            },
            "invoice_type": invoice.invoice_type,
            "invoice_number": invoice.invoice_number,
            "reference_number": refs.reference_number,
            "payout_reference": refs.payout_reference,
            "invoice_date": _instant(invoice.issue_date),
            "invoice_due_date": _instant(invoice.due_date),
            "invoice_delivery_date": _instant(invoice.delivery_date),
            "invoice_headline": invoice.headline,
            "invoice_body_text": invoice.body_text,
            "currency": "SEK",
            "your_contact": refs.your_contact,
            "your_reference": refs.your_reference,
            "our_reference": refs.our_reference,
            "your_additional_reference": refs.your_additional_reference,
            "order_reference": refs.order_reference,
            "contract_reference": refs.contract_reference,
            "debt_description": invoice.debt_description,
            "custom_column_headlines": invoice.custom_column_headlines or None,
            "matrix": [
                {
                    "article_number": line.article_number,
                    "article_description": line.description,
                    "unit_price": line.unit_price,
                    "number_of_units": line.quantity,
                    "total_price_excluding_vat": line.total_excluding_vat,
                    "unit_vat_percent": _vat_percent(line.vat_rate),
                    "is_discount": True if line.is_discount else None,
                    "cost_center": line.cost_center,
                    "article_date": _instant(line.article_date),
                    "order_line_reference": line.order_line_reference,
                    "custom_column_data": line.custom_columns or None,
                    "extra_rows": line.extra_rows or None,
                }
                for line in invoice.lines
            ],
            "preferred_invoice_distribution": invoice.preferred_distribution,
            "case_settings": invoice.case_settings,
            "labels": invoice.labels or None,
            "start_flow": invoice.start_flow,
        }
    )
