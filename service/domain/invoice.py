"""The canonical invoice: the ``data`` of an ``invoice-created`` event.

Designed for billing systems rather than copied from Amili: ISO 8601 dates, amounts as JSON numbers
with at most two decimals, VAT as a rate, and one customer type. The transform turns it into Amili's
registration payload.
"""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

Amount = Annotated[Decimal, Field(max_digits=15, decimal_places=2, allow_inf_nan=False)]
Quantity = Annotated[Decimal, Field(max_digits=15, decimal_places=4, allow_inf_nan=False)]
Text = Annotated[str, Field(min_length=1, max_length=1000)]


class _Canonical(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CustomerType(StrEnum):
    PERSON = "person"
    COMPANY = "company"
    FOREIGN = "foreign"


class Address(_Canonical):
    lines: list[Text] = Field(default_factory=list, max_length=3)
    postal_code: str | None = None
    city: str | None = None
    country: str | None = Field(default=None, pattern=r"^[A-Z]{2}$", description="ISO 3166-1 alpha-2")
    gln: str | None = Field(default=None, description="Global Location Number")


class CarRegistration(_Canonical):
    number: Text
    country: str | None = Field(default=None, pattern=r"^[A-Z]{2}$")
    ownership_date: date | None = Field(
        default=None, description="Date for the ownership check; Amili defaults it to the invoice date"
    )


class Customer(_Canonical):
    type: CustomerType
    name: Text
    customer_number: str | None = None
    id_number: str | None = Field(default=None, description="Swedish personnummer or organisationsnummer")
    address: Address | None = None
    mobile_number: str | None = None
    email: str | None = None
    car_registration: CarRegistration | None = None


class InvoiceLine(_Canonical):
    description: Text
    article_number: str | None = None
    quantity: Quantity | None = None
    unit_price: Amount | None = None
    total_excluding_vat: Amount
    vat_rate: Decimal = Field(default=Decimal(25), description="VAT in percent: 0, 6, 12 or 25")
    is_discount: bool = False
    cost_center: str | None = None
    article_date: date | None = None
    order_line_reference: str | None = None
    custom_columns: list[str] = Field(default_factory=list)
    extra_rows: list[str] = Field(default_factory=list)


class References(_Canonical):
    reference_number: str | None = None
    payout_reference: str | None = None
    your_contact: str | None = None
    your_reference: str | None = None
    our_reference: str | None = None
    your_additional_reference: str | None = None
    order_reference: str | None = None
    contract_reference: str | None = None


class Invoice(_Canonical):
    invoice_number: Annotated[str, Field(min_length=1, max_length=100)]
    account: str | None = Field(default=None, description="Amili account id; else the configured default")
    creditor: str | None = Field(default=None, description="Amili creditor id; else the configured default")
    invoice_type: str = "invoice"
    issue_date: date
    due_date: date
    delivery_date: date | None = None
    currency: str = Field(default="SEK", pattern=r"^[A-Z]{3}$")
    customer: Customer
    lines: list[InvoiceLine] = Field(min_length=1)
    headline: str | None = None
    body_text: str | None = None
    debt_description: str | None = None
    references: References = Field(default_factory=References)
    custom_column_headlines: list[str] = Field(default_factory=list)
    labels: list[str] = Field(default_factory=list)
    preferred_distribution: str | None = None
    case_settings: dict[str, Any] | None = None
    start_flow: bool | None = None
