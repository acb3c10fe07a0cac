"""One vocabulary of outcomes and one key of an invoice, spoken alike by the result events, the
schemas, the ledger and the ledgers' SQL."""

from __future__ import annotations

import inspect
import json
import re
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType

import pytest
from pydantic import ValidationError

from service.domain.invoice import InvoiceKey
from service.domain.outcomes import Outcome
from service.events.contract import RESULT_TYPES, RegistrationResult, result_event, result_key
from service.ledger import postgres, sqlite
from service.ledger.base import IN_FLIGHT, STATES, outcome_of, state_of

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
_CHECK = re.compile(r"CHECK \(state IN \(([^)]*)\)\)")
_COMPARED = re.compile(r"\bstate\s*(?:=|<>)\s*'([a-z_]+)'")


def _quoted(listed: str) -> list[str]:
    return [item.strip().strip("'") for item in listed.split(",")]


@pytest.mark.parametrize("module", [sqlite, postgres], ids=["sqlite", "postgres"])
def test_the_ledgers_constraint_lists_every_state_and_no_other(module: ModuleType) -> None:
    # Migrations are never edited once shipped, so the list is written out in SQL; a new outcome
    # fails here until a migration widens the constraint.
    migrations = json.dumps(module.MIGRATIONS)
    constraints = _CHECK.findall(migrations)
    assert constraints, "no CHECK on the state column"
    assert _quoted(constraints[-1]) == list(STATES)


@pytest.mark.parametrize("module", [sqlite, postgres], ids=["sqlite", "postgres"])
def test_every_state_the_ledgers_sql_names_is_a_state(module: ModuleType) -> None:
    named = set(_COMPARED.findall(inspect.getsource(module)))
    assert IN_FLIGHT in named
    assert named <= set(STATES)


def test_a_records_state_is_in_flight_or_its_outcome() -> None:
    assert STATES == ("in_flight", "registered", "rejected", "conflict", "failed")
    for state in STATES:
        assert state_of(outcome_of(state)) == state
    assert outcome_of("in_flight") is None
    assert outcome_of("failed") is Outcome.FAILED
    with pytest.raises(ValueError, match="done"):
        outcome_of("done")


def test_the_published_schemas_list_the_outcomes_and_their_event_types() -> None:
    schema = json.loads((SCHEMAS / "registration-result.schema.json").read_text())
    outcome = schema["$defs"]["RegistrationResult"]["properties"]["outcome"]
    assert outcome["enum"] == [o.value for o in Outcome]
    assert schema["properties"]["type"]["enum"] == [RESULT_TYPES[o] for o in Outcome]


def test_a_result_reads_and_writes_its_outcome_as_the_text_it_always_was() -> None:
    result = RegistrationResult.model_validate(
        {"outcome": "rejected", "creditor": "c1", "invoice_number": "A/7", "inbound_event_id": "e1"}
    )
    assert result.outcome is Outcome.REJECTED
    assert result.model_dump(mode="json")["outcome"] == "rejected"
    with pytest.raises(ValidationError, match="outcome"):
        RegistrationResult.model_validate({**result.model_dump(mode="json"), "outcome": "done"})


def test_an_invoice_key_is_glued_once_and_read_back() -> None:
    key = InvoiceKey("c1", "A/7")
    assert str(key) == "c1/A/7"
    assert InvoiceKey.parse(str(key)) == key  # split at the first slash: a number may hold one
    assert key == ("c1", "A/7")  # the ledger's page keys and orders compare it as a tuple
    assert sorted([InvoiceKey("c2", "A"), InvoiceKey("c1", "B"), InvoiceKey("c1", "A")]) == [
        ("c1", "A"),
        ("c1", "B"),
        ("c2", "A"),
    ]
    for text in ("c1", "/A-1", "c1/"):
        with pytest.raises(ValueError, match="is not creditor/invoice_number"):
            InvoiceKey.parse(text)


def test_a_results_record_key_and_subject_are_the_invoice_key() -> None:
    result = RegistrationResult(
        outcome=Outcome.REGISTERED, creditor="c1", invoice_number="A/7", inbound_event_id="e1"
    )
    event = result_event(result, time=datetime(2026, 1, 1, tzinfo=UTC))
    assert result_key(result.key) == b"c1/A/7"
    assert event.subject == "c1/A/7"
    assert event.type == "amili-registrar.registration.registered.v1"
