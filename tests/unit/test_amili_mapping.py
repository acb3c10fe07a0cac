from __future__ import annotations

import typing
from typing import Any

import pytest
from pydantic import BaseModel

from devkit.schemas import FIELD_MAPPING_DOC, field_mapping_document
from service.amili.mapping import (
    NOT_SENT,
    Section,
    Sent,
    inbound_field_path,
    seed_field_rows,
    seed_field_table,
    to_registration,
)
from service.amili.models import InvoiceRegistrationRequest
from service.domain.invoice import Invoice, References
from service.domain.rules import TransformDefaults


@pytest.mark.parametrize(
    ("amili", "inbound"),
    [
        ("invoice_date", "data.issue_date"),
        ("invoice_due_date", "data.due_date"),
        ("preferred_invoice_distribution", "data.preferred_distribution"),
        ("our_reference", "data.references.our_reference"),
        ("customer", "data.customer"),
        ("customer.is_company", "data.customer.type"),
        ("customer.address.zip_code", "data.customer.address.postal_code"),
        ("customer.address.address_line_2", "data.customer.address.lines[1]"),
        ("customer.car_registration.number", "data.customer.car_registration.number"),
        ("matrix", "data.lines"),
        ("matrix.2", "data.lines[2]"),
        ("matrix.2.unit_vat_percent", "data.lines[2].vat_rate"),
        ("matrix.0.number_of_units", "data.lines[0].quantity"),
        ("matrix.1.extra_rows.3", "data.lines[1].extra_rows[3]"),
        ("labels.4", "data.labels[4]"),
        ("case_settings.reminder", "data.case_settings.reminder"),
        ("file_import_report", "amili.file_import_report"),
        ("letter_template", "amili.letter_template"),
        ("customer.unknown", "amili.customer.unknown"),
        ("matrix.x.y", "amili.matrix.x.y"),
        ("_error", "amili._error"),
    ],
)
def test_amili_paths_map_to_inbound_paths(amili: str, inbound: str) -> None:
    assert inbound_field_path(amili) == inbound


def _request_fields(model: type[BaseModel], prefix: str = "") -> set[str]:
    """Every field of a request model, nested ones by path, list items as ``name[]``."""
    fields: set[str] = set()
    for name, info in model.model_fields.items():
        path = f"{prefix}{name}"
        fields.add(path)
        for inner in typing.get_args(info.annotation) or (info.annotation,):
            is_list = typing.get_origin(inner) is list or typing.get_origin(info.annotation) is list
            for candidate in typing.get_args(inner) or (inner,):
                if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                    fields |= _request_fields(candidate, f"{path}{'[]' if is_list else ''}.")
    return fields


def test_the_table_names_every_field_of_amilis_registration() -> None:
    named = {name for name, _, _ in seed_field_rows()}
    assert named == _request_fields(InvoiceRegistrationRequest) | set(NOT_SENT)


def _full_event_data(customer_type: str) -> dict[str, Any]:
    """An invoice with every event field set."""
    customer: dict[str, Any] = {
        "type": customer_type,
        "name": "A",
        "id_number": "811218-9876" if customer_type == "person" else "556036-0793",
        "address": {"lines": ["1", "2", "3"], "postal_code": "1", "city": "c", "country": "se", "gln": "g"},
        "mobile_number": "+46700000000",
        "email": "a@example.se",
    }
    if customer_type == "person":
        customer["car_registration"] = {"number": "ABC123", "country": "SE", "ownership_date": "2024-01-02"}
    else:
        customer["customer_number"] = "C-1"
    line = {
        "description": "d",
        "article_number": "a",
        "quantity": "1.5",
        "unit_price": "2.123456",
        "total_excluding_vat": "3.19",
        "vat_rate": 12,
        "is_discount": True,
        "cost_center": "cc",
        "article_date": "2024-01-03T10:00:00+01:00",
        "order_line_reference": "o",
        "custom_columns": ["x"],
        "extra_rows": ["y"],
    }
    return {
        "invoice_number": "INV-1",
        "account": "674dbeaf08847b9501cc9132",
        "creditor": "674dbeb208847b9501cc9138",
        "invoice_type": "invoice",
        "issue_date": "2024-01-21T10:11:22Z",
        "due_date": "2024-01-31",
        "delivery_date": "2024-01-21",
        "currency": "sek",
        "customer": customer,
        "lines": [line],
        "headline": "h",
        "body_text": "b",
        "debt_description": "d",
        "references": {name: name for name in References.model_fields},
        "custom_column_headlines": ["c"],
        "labels": ["l"],
        "preferred_distribution": "email",
        "case_settings": {"k": 1},
        "start_flow": True,
    }


def _wire_paths(document: Any, prefix: str = "") -> set[str]:
    paths: set[str] = set()
    if isinstance(document, dict):
        for name, value in document.items():
            paths.add(f"{prefix}{name}")
            if name != "case_settings":
                paths |= _wire_paths(value, f"{prefix}{name}.")
    elif isinstance(document, list):
        for item in document:
            if isinstance(item, dict):
                paths |= _wire_paths(item, prefix[:-1] + "[].")
    return paths


def test_every_field_the_table_maps_is_reached_from_the_event() -> None:
    sent: set[str] = set()
    for customer_type in ("person", "company", "foreign"):
        payload = to_registration(
            Invoice.model_validate(_full_event_data(customer_type)),
            TransformDefaults(id_number_check="strict"),
        )
        assert isinstance(payload, InvoiceRegistrationRequest), payload
        sent |= _wire_paths(payload.to_wire())
    mapped = {name for name, event, _ in seed_field_rows() if event}
    assert mapped == sent


def test_the_docs_table_is_the_generated_one() -> None:
    assert FIELD_MAPPING_DOC.read_text(encoding="utf-8") == field_mapping_document()
    assert seed_field_table() in field_mapping_document()


@pytest.mark.parametrize("event", ["postal-code", "address.", "lines[0]]", "__import__('os')"])
def test_a_table_path_that_is_no_attribute_path_is_refused_when_the_builder_is_made(event: str) -> None:
    with pytest.raises(ValueError, match="not an attribute path"):
        Section(Sent("zip_code", event)).builder(TransformDefaults())
