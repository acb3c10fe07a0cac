"""Which fields of an invoice are personal data: the one list the logs are redacted by.

Every field of the canonical invoice (``service.domain.invoice``) and of Amili's registration
(``service.amili.models``) is classified here, field by field, as personal (``PERSONAL``) or
readable (``READABLE``); ``tests/unit/test_log_redaction.py`` fails when a model gains a field
that is in neither, so a new field is a decision, not an accident.

Personal: what names or reaches a person (name, street lines, postal code, city, id number,
e-mail, phone, car registration) and free text a person may be written into (headline, body
text, debt description, line descriptions, custom columns and extra rows, the contact and
reference fields, which billing systems fill with people's names); and, whole, the objects that
hold them (the customer, its address, its car registration), whose own fields are classified too.

Readable: what support needs to find an invoice and what became of it, and that names nobody:
invoice number, creditor, account, dates, amounts, codes, country, GLN, article numbers, the
creditor's references (order, contract, payout, OCR reference) and the customer number (the
creditor's own key, as pseudonymous as the invoice number). OCR numbers, offsets and topics are
not fields of the invoice and are never personal.
"""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import BaseModel

from service.amili import models as wire
from service.domain import invoice as canonical

PERSONAL: Mapping[type[BaseModel], frozenset[str]] = {
    canonical.Invoice: frozenset({"customer", "headline", "body_text", "debt_description"}),
    canonical.Customer: frozenset(
        {"name", "id_number", "address", "mobile_number", "email", "car_registration"}
    ),
    canonical.Address: frozenset({"lines", "postal_code", "city"}),
    canonical.CarRegistration: frozenset({"number"}),
    canonical.InvoiceLine: frozenset({"description", "custom_columns", "extra_rows"}),
    canonical.References: frozenset(
        {"your_contact", "your_reference", "our_reference", "your_additional_reference"}
    ),
    wire.InvoiceRegistrationRequest: frozenset(
        {
            "customer",
            "invoice_headline",
            "invoice_body_text",
            "debt_description",
            "your_contact",
            "your_reference",
            "our_reference",
            "your_additional_reference",
        }
    ),
    wire.Customer: frozenset({"name", "id_number", "address", "mobile_number", "email", "car_registration"}),
    wire.Address: frozenset({"address_line_1", "address_line_2", "address_line_3", "zip_code", "city"}),
    wire.CarRegistration: frozenset({"number"}),
    wire.MatrixItem: frozenset({"article_description", "custom_column_data", "extra_rows"}),
}
"""Per model, its personal fields."""

READABLE: Mapping[type[BaseModel], frozenset[str]] = {
    canonical.Invoice: frozenset(
        {
            "invoice_number",
            "account",
            "creditor",
            "invoice_type",
            "issue_date",
            "due_date",
            "delivery_date",
            "currency",
            "lines",  # a container (the invoice lines; an address's ``lines`` are personal)
            "references",  # a container
            "custom_column_headlines",
            "labels",
            "preferred_distribution",
            "case_settings",
            "start_flow",
            "letter_template",
        }
    ),
    canonical.Customer: frozenset({"type", "customer_number"}),
    canonical.Address: frozenset({"country", "gln"}),
    canonical.CarRegistration: frozenset({"country", "ownership_date"}),
    canonical.InvoiceLine: frozenset(
        {
            "article_number",
            "quantity",
            "unit_price",
            "total_excluding_vat",
            "vat_rate",
            "is_discount",
            "cost_center",
            "article_date",
            "order_line_reference",
        }
    ),
    canonical.References: frozenset(
        {"reference_number", "payout_reference", "order_reference", "contract_reference"}
    ),
    wire.InvoiceRegistrationRequest: frozenset(
        {
            "account",
            "creditor",
            "invoice_type",
            "invoice_number",
            "reference_number",
            "payout_reference",
            "invoice_date",
            "invoice_due_date",
            "invoice_delivery_date",
            "currency",
            "order_reference",
            "contract_reference",
            "letter_template",
            "custom_column_headlines",
            "matrix",  # a container
            "preferred_invoice_distribution",
            "case_settings",
            "labels",
            "start_flow",
        }
    ),
    wire.Customer: frozenset({"customer_number", "is_person", "is_company", "is_foreign"}),
    wire.Address: frozenset({"country", "gln"}),
    wire.CarRegistration: frozenset({"country", "ownership_date"}),
    wire.MatrixItem: frozenset(
        {
            "article_number",
            "unit_price",
            "number_of_units",
            "total_price_excluding_vat",
            "unit_vat_percent",
            "is_discount",
            "cost_center",
            "article_date",
            "order_line_reference",
        }
    ),
}
"""Per model, its fields that stay readable in logs."""

EXTRA_PERSONAL_KEYS = frozenset({"input", "input_value", "phone", "street"})
"""Not invoice fields, but their values are personal wherever they appear as keys: the value pydantic
quotes in a validation error (``input_value='...'``, ``'input': ...``), and common spellings."""


def personal_keys() -> frozenset[str]:
    """The names whose values never appear in a log: every personal field of both models, plus
    ``EXTRA_PERSONAL_KEYS``."""
    names = set(EXTRA_PERSONAL_KEYS)
    for fields in PERSONAL.values():
        names |= fields
    return frozenset(names)


def readable_keys() -> frozenset[str]:
    """The names readable in every model where they occur (their values stay as logged)."""
    names: set[str] = set()
    for fields in READABLE.values():
        names |= fields
    return frozenset(names - personal_keys())


def ambiguous_keys() -> frozenset[str]:
    """Names personal in one model and readable in another (``lines``: an address's street lines,
    an invoice's lines). In free text their value is redacted unless it is a list of objects or of
    numbers (an invoice's lines, whose own fields are scrubbed by their own names)."""
    readable: set[str] = set()
    for fields in READABLE.values():
        readable |= fields
    return frozenset(readable & personal_keys())


PERSONAL_KEYS = personal_keys()
STRING_LIST_ONLY_KEYS = ambiguous_keys()
