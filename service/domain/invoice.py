"""The canonical invoice: the ``data`` of an ``invoice-created`` event.

Designed for billing systems rather than copied from Amili: ISO 8601 dates (a date, or a date and
time with its UTC offset), amounts as JSON numbers with at most two decimals (unit prices and
quantities with up to six), VAT as a rate, and one customer type. ISO codes (currency, countries) are
read in any letter case. The transform turns it into Amili's registration
payload.
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any, NamedTuple

from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    TypeAdapter,
    ValidationError,
    WithJsonSchema,
)

Amount = Annotated[Decimal, Field(max_digits=15, decimal_places=2, allow_inf_nan=False)]
# Amili's "number" is a JSON number, which its readers hold as a binary double: 15 significant
# digits survive that exactly, so 15 is the bound; six decimals cover prices per kWh or per minute.
FINE_DECIMAL_PLACES = 6
Fine = Annotated[Decimal, Field(max_digits=15, decimal_places=FINE_DECIMAL_PLACES, allow_inf_nan=False)]
Text = Annotated[str, Field(min_length=1, max_length=1000)]
INVOICE_NUMBER_MAX_LENGTH = 100
_DATE: TypeAdapter[date] = TypeAdapter(date)
_DATE_AND_TIME: TypeAdapter[date] = TypeAdapter(AwareDatetime)  # a datetime is a date


def _day(value: object) -> date:
    # One error naming what was expected, rather than one per member of a union.
    adapter: TypeAdapter[date] = _DATE
    expected = "an ISO 8601 date"
    if not isinstance(value, str | date):
        raise ValueError(f"expected {expected} as a string")
    if isinstance(value, datetime) or (isinstance(value, str) and len(value) > len("2024-01-21")):
        adapter, expected = _DATE_AND_TIME, "an ISO 8601 date and time with a UTC offset"
    try:
        return adapter.validate_python(value)
    except ValidationError as error:
        raise ValueError(f"expected {expected}: {error.errors()[0]['msg'].lower()}") from None


Day = Annotated[
    date,
    PlainValidator(_day),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "format": "date", "pattern": r"^\d{4}-\d{2}-\d{2}$"},
                {
                    "type": "string",
                    "format": "date-time",
                    "pattern": r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?([Zz]|[+-]\d{2}:?\d{2})$",
                },
            ],
            "description": "An ISO 8601 date (sent to Amili as midnight UTC), or a date and time with "
            "its UTC offset (sent as that instant in UTC)",
        }
    ),
]
"""A date, with a time of day when the billing system has one."""


def _upper(value: object) -> object:
    return value.upper() if isinstance(value, str) else value


CountryCode = Annotated[
    str,
    Field(pattern=r"^[A-Za-z]{2}$", description="ISO 3166-1 alpha-2, in any letter case (sent upper case)"),
    BeforeValidator(_upper),
]
CurrencyCode = Annotated[
    str,
    Field(pattern=r"^[A-Za-z]{3}$", description="ISO 4217, in any letter case (sent upper case)"),
    BeforeValidator(_upper),
]


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
    country: CountryCode | None = None
    gln: str | None = Field(default=None, description="Global Location Number")


class CarRegistration(_Canonical):
    number: Text
    country: CountryCode | None = None
    ownership_date: Day | None = Field(
        default=None, description="Date for the ownership check; Amili defaults it to the invoice date"
    )


class Customer(_Canonical):
    type: CustomerType | None = Field(
        default=None,
        description="Which of Amili's is_person, is_company, is_foreign is sent; none when left out "
        "(Amili expects exactly one: it decides)",
    )
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
    quantity: Fine | None = None
    unit_price: Fine | None = None
    total_excluding_vat: Amount
    vat_rate: Decimal = Field(default=Decimal(25), description="VAT in percent: 0, 6, 12 or 25")
    is_discount: bool = False
    cost_center: str | None = None
    article_date: Day | None = None
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
    invoice_number: Annotated[str, Field(min_length=1, max_length=INVOICE_NUMBER_MAX_LENGTH)]
    account: str | None = Field(default=None, description="Amili account id; else the configured default")
    creditor: str | None = Field(default=None, description="Amili creditor id; else the configured default")
    invoice_type: str = "invoice"
    issue_date: Day
    due_date: Day
    delivery_date: Day | None = None
    currency: CurrencyCode = "SEK"
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
    letter_template: str | None = Field(
        default=None,
        description="Deprecated by Amili on 2025-06-13: an invoice that carries it is rejected "
        "(rule deprecated) rather than registered without it",
    )


class InvoiceKey(NamedTuple):
    """What an invoice is known by everywhere: its ledger record, its result's record key and
    subject, the line its events wait in. A tuple, so keys sort by creditor, then number (the
    order of the ledger's pages), and ``creditor/invoice_number`` as text."""

    creditor: str
    invoice_number: str

    def __str__(self) -> str:
        return f"{self.creditor}/{self.invoice_number}"

    @classmethod
    def parse(cls, text: str) -> InvoiceKey:
        """``creditor/invoice_number`` back, split at the first ``/`` (a creditor id holds none, an
        invoice number may); ``ValueError`` unless both parts are there."""
        creditor, slash, number = text.partition("/")
        if not slash or not creditor or not number:
            raise ValueError(f"{text!r} is not creditor/invoice_number")
        return cls(creditor, number)
