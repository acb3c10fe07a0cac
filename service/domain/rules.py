"""The business rules an invoice must keep to be registered, beyond what its schema states.

Pure: no I/O, no clock. A broken rule yields a ``Reason`` located by a field path of the inbound
event; nothing here raises for bad input. Turning a registrable invoice into Amili's request is the
Amili adapter's (``service.amili.mapping``), so the rules know nothing of Amili's wire format.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Literal

from service.domain.invoice import CustomerType, Invoice, InvoiceLine
from service.domain.outcomes import Reason
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

    def account_for(self, given: str | None) -> str:
        """The account an invoice is registered under: its own, else the default ("" when neither,
        which the rules reject)."""
        return given or self.account or ""

    def creditor_for(self, given: str | None) -> str:
        """The creditor an invoice is registered, recorded, ordered and answered under: its own,
        else the default ("" when neither, which the rules reject). The one place this is decided,
        for the Amili request and the invoice's key alike."""
        return given or self.creditor or ""


def _id_number_findings(invoice: Invoice) -> list[Reason]:
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
    return [Reason(field="data.customer.id_number", rule=rule, message=f"{rule} {problem}")]


def registration_warnings(invoice: Invoice, defaults: TransformDefaults) -> list[Reason]:
    """What a registrable ``invoice`` is registered despite: under ``warn``, an invalid id number."""
    return _id_number_findings(invoice) if defaults.id_number_check == "warn" else []


def check_business_rules(invoice: Invoice, defaults: TransformDefaults) -> list[Reason]:
    """Every rule ``invoice`` breaks that its schema cannot state; an empty list when none."""
    violations: list[Reason] = []

    def broken(path: str, rule: str, message: str) -> None:
        violations.append(Reason(field=f"data.{path}", rule=rule, message=message))

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


def _utc_day(day: date) -> date:
    return day.astimezone(UTC).date() if isinstance(day, datetime) else day
