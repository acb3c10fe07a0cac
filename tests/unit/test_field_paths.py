from __future__ import annotations

import pytest

from service.domain.field_paths import inbound_field_path


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
