"""Pydantic models of Amili's invoice registration, in Amili's own field names and wire format.

Unset optional fields are omitted on the wire (``to_wire``), never sent as null; the read-only
``file_import_report`` has no place in the request model, so it can never be sent.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from service.amili.wire import Money, ObjectId, Rfc1123Date, VatPercent


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def to_wire(self) -> dict[str, Any]:
        """The JSON body Amili expects."""
        return self.model_dump(mode="json", exclude_none=True)

    def wire_json(self) -> bytes:
        """``to_wire`` as UTF-8 JSON, the request's body, written by pydantic in one step (fields in
        the model's order, so the same content gives the same bytes)."""
        return self.model_dump_json(exclude_none=True).encode()


class Address(_Request):
    address_line_1: str | None = None
    address_line_2: str | None = None
    address_line_3: str | None = None
    zip_code: str | None = None
    city: str | None = None
    country: str | None = Field(default=None, pattern=r"^[A-Z]{2}$")
    gln: str | None = None


class CarRegistration(_Request):
    number: str = Field(min_length=1)
    country: str | None = Field(default=None, pattern=r"^[A-Z]{2}$")
    ownership_date: Rfc1123Date | None = None


class Customer(_Request):
    name: str = Field(min_length=1)
    customer_number: str | None = None
    id_number: str | None = None
    is_person: bool | None = None
    is_company: bool | None = None
    is_foreign: bool | None = None
    address: Address | None = None
    mobile_number: str | None = None
    email: str | None = None
    car_registration: CarRegistration | None = None


class MatrixItem(_Request):
    article_number: str | None = None
    article_description: str = Field(min_length=1)
    unit_price: Money | None = None
    number_of_units: Money | None = None
    total_price_excluding_vat: Money
    unit_vat_percent: VatPercent | None = None
    is_discount: bool | None = None
    cost_center: str | None = None
    article_date: Rfc1123Date | None = None
    order_line_reference: str | None = None
    custom_column_data: list[str] | None = None
    extra_rows: list[str] | None = None


class InvoiceRegistrationRequest(_Request):
    account: ObjectId
    creditor: ObjectId
    customer: Customer
    invoice_type: str = Field(min_length=1)
    invoice_number: str = Field(min_length=1)
    reference_number: str | None = None
    payout_reference: str | None = None
    invoice_date: Rfc1123Date
    invoice_due_date: Rfc1123Date
    invoice_delivery_date: Rfc1123Date | None = None
    invoice_headline: str | None = None
    invoice_body_text: str | None = None
    currency: Literal["SEK"] = "SEK"
    your_contact: str | None = None
    your_reference: str | None = None
    our_reference: str | None = None
    your_additional_reference: str | None = None
    order_reference: str | None = None
    contract_reference: str | None = None
    debt_description: str | None = None
    letter_template: str | None = None
    custom_column_headlines: list[str] | None = None
    matrix: list[MatrixItem] = Field(min_length=1)
    preferred_invoice_distribution: str | None = None
    case_settings: dict[str, Any] | None = None
    labels: list[str] | None = None
    start_flow: bool | None = None

    # The customer's rules are checked here, not by a model validator of ``Customer``: that would
    # run again on the instance passed in, twice for every request the transform builds.
    @field_validator("customer")
    @classmethod
    def _customer_rules(cls, customer: Customer) -> Customer:
        # Each flag excludes the others (the seed); whether none at all is acceptable is Amili's to
        # say (it expects one), so a request with none is sent and Amili's answer reported.
        flags = [customer.is_person, customer.is_company, customer.is_foreign]
        if sum(flag is True for flag in flags) > 1:
            raise ValueError("at most one of is_person, is_company, is_foreign may be true")
        if customer.car_registration is not None and customer.customer_number is not None:
            raise ValueError("'car_registration' must not be present with 'customer_number'")
        return customer


class InvoiceRegistrationReceipt(BaseModel):
    """What Amili answers for a stored registration (201 body, or one item of a look-up).

    Unknown fields are ignored so that a richer answer from the real API never breaks us.
    """

    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    id: ObjectId = Field(alias="_id")
    invoice: ObjectId = Field(alias="_invoice")
    case: ObjectId = Field(alias="_case")
    ocr_number: ObjectId = Field(alias="_ocr_number")
    ocr_number_ocr: str = Field(pattern=r"^\d{2,25}$")
    created: str | None = Field(default=None, alias="_created")
    creditor: str | None = None
    invoice_number: str | None = None
