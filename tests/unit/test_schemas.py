"""The committed contract documents (schemas/): generated from the models, not drifted, valid, and
true of what the service reads and writes. The AsyncAPI document is checked by the AsyncAPI
Initiative's own parser (node, @asyncapi/parser, installed into .cache/asyncapi-parser).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import typing
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any, NoReturn

import jsonschema
import pytest
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7

from devkit.demo import sample_events_path
from devkit.schemas import (
    ASYNCAPI_FILE,
    DEAD_LETTER_HEADERS_FILE,
    INVOICE_DATA_FILE,
    REGENERATE_COMMAND,
    RESULT_EVENT_FILE,
    ROOT,
    SCHEMA_DIR,
    InvoiceCreatedEvent,
    RegistrationResultEvent,
    drifted,
    generate_documents,
    render,
)
from service.domain.invoice import Invoice
from service.domain.outcomes import Outcome, Reason
from service.events.contract import (
    INVOICE_CREATED_TYPE,
    RESULT_SOURCE,
    RESULT_TYPES,
    AmiliIds,
    RegistrationResult,
    result_event,
)
from service.events.record import InboundRecord
from service.kafka.publishing import DeadLetterHeaders, dead_letter_headers
from service.operator.event_files import encode
from tests.ci import skip_or_fail

Schema = dict[str, Any]
Validator = jsonschema.protocols.Validator

PARSER_DIR = ROOT / ".cache" / "asyncapi-parser"
VALIDATE_SCRIPT = ROOT / "scripts" / "asyncapi-validate.mjs"
NPM_FILES = ("package.json", "package-lock.json")
ACCOUNT = "674dbeaf08847b9501cc9132"
CREDITOR = "674dbeb208847b9501cc9138"


def committed(name: str) -> Schema:
    document: Schema = json.loads((SCHEMA_DIR / name).read_text(encoding="utf-8"))
    return document


def validator(name: str) -> Validator:
    schema = committed(name)
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )


@cache
def asyncapi_registry() -> Registry[Any]:
    resource: Resource[Any] = Resource.from_contents(committed(ASYNCAPI_FILE), default_specification=DRAFT7)
    registry: Registry[Any] = Registry().with_resource("urn:asyncapi", resource)
    return registry


def component_validator(name: str) -> Validator:
    """A validator for ``components.schemas[name]`` of the committed AsyncAPI document."""
    return jsonschema.Draft7Validator(
        {"$ref": f"urn:asyncapi#/components/schemas/{name}"},
        registry=asyncapi_registry(),
        format_checker=jsonschema.Draft7Validator.FORMAT_CHECKER,
    )


def sample_events() -> list[Schema]:
    lines = sample_events_path().read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


# --- generated, not drifted ---------------------------------------------------------------------------


async def test_the_committed_documents_are_what_the_models_generate() -> None:
    generated = await generate_documents()
    assert set(generated) == {INVOICE_DATA_FILE, RESULT_EVENT_FILE, DEAD_LETTER_HEADERS_FILE, ASYNCAPI_FILE}
    stale = drifted(generated)
    assert not stale, (
        f"{', '.join(f'schemas/{name}' for name in stale)} drifted from the models; "
        f"regenerate with: {REGENERATE_COMMAND}"
    )


async def test_the_generation_ignores_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "kafka.example:9093")
    monkeypatch.setenv("INVOICE_CREATED_TOPIC", "other")
    monkeypatch.setenv("REGISTRATION_RESULT_TOPIC", "elsewhere")
    generated = await generate_documents()
    assert render(generated[ASYNCAPI_FILE]) == (SCHEMA_DIR / ASYNCAPI_FILE).read_text(encoding="utf-8")


def test_the_models_state_the_contracts_constants() -> None:
    type_hints = typing.get_type_hints(RegistrationResultEvent)
    assert set(typing.get_args(type_hints["type"])) == set(RESULT_TYPES.values())
    assert typing.get_args(type_hints["source"]) == (RESULT_SOURCE,)
    assert typing.get_args(typing.get_type_hints(InvoiceCreatedEvent)["type"]) == (INVOICE_CREATED_TYPE,)


@pytest.mark.parametrize("name", [INVOICE_DATA_FILE, RESULT_EVENT_FILE, DEAD_LETTER_HEADERS_FILE])
def test_each_json_schema_is_a_valid_draft_2020_12_schema(name: str) -> None:
    schema = committed(name)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["title"]
    assert schema["description"]


# --- inbound: the canonical invoice and the examples ---------------------------------------------------


def test_every_example_is_valid_against_the_json_schema_and_the_models() -> None:
    data_schema = validator(INVOICE_DATA_FILE)
    event_schema = component_validator("InvoiceCreatedEvent")
    for event in sample_events():
        number = event["data"]["invoice_number"]
        errors = [f"{list(e.absolute_path)}: {e.message}" for e in data_schema.iter_errors(event["data"])]
        assert not errors, (number, errors)
        errors = [f"{list(e.absolute_path)}: {e.message}" for e in event_schema.iter_errors(event)]
        assert not errors, (number, errors)
        InvoiceCreatedEvent.model_validate(event)


def test_the_examples_cover_every_kind_of_invoice() -> None:
    invoices = [Invoice.model_validate(event["data"]) for event in sample_events()]
    kinds = {invoice.customer.type and invoice.customer.type.value for invoice in invoices}
    assert kinds == {"person", "company", "foreign"}
    assert any(invoice.customer.car_registration for invoice in invoices)
    assert any(
        sum(line.is_discount for line in invoice.lines) >= 2
        and {line.vat_rate for line in invoice.lines} >= {0, 6, 12, 25}
        for invoice in invoices
    ), "an invoice with several discounts and every VAT rate"
    every_reference = [
        invoice
        for invoice in invoices
        if all(value is not None for value in invoice.references.model_dump().values())
    ]
    assert every_reference, "an invoice carrying every reference field"
    ids = [event["id"] for event in sample_events()]
    numbers = [invoice.invoice_number for invoice in invoices]
    assert len(set(ids)) == len(ids)
    assert len(set(numbers)) == len(numbers)


def test_binary_mode_headers_match_the_documented_ones() -> None:
    headers_schema = component_validator("InvoiceCreatedBinaryHeaders")
    invoice_schema = component_validator("Invoice")
    for event in sample_events():
        value, headers = encode(event, binary=True)
        headers_schema.validate({key: raw.decode() for key, raw in headers})
        invoice_schema.validate(json.loads(value))


@pytest.mark.parametrize(
    ("amount", "valid"),
    [(399, True), (399.5, True), ("399.50", True), ("-12.3", True), ("12.345", False), ("abc", False)],
)
def test_amounts_are_numbers_or_decimal_strings_with_two_decimals(amount: Any, valid: bool) -> None:
    data: Schema = {
        "invoice_number": "A-1",
        "issue_date": "2026-11-20",
        "due_date": "2026-12-20",
        "customer": {"type": "person", "name": "A"},
        "lines": [{"description": "x", "total_excluding_vat": amount}],
    }
    assert validator(INVOICE_DATA_FILE).is_valid(data) is valid
    if valid:
        Invoice.model_validate(data)


def test_the_invoice_schema_refuses_what_the_model_refuses() -> None:
    schema = validator(INVOICE_DATA_FILE)
    base = sample_events()[0]["data"]
    for broken in (
        {**base, "colour": "blue"},
        {**base, "lines": []},
        {**base, "due_date": "20 December"},
        {**base, "currency": "kronor"},
        {**base, "customer": {**base["customer"], "type": "robot"}},
    ):
        assert not schema.is_valid(broken), broken
        with pytest.raises(ValueError, match="validation error"):
            Invoice.model_validate(broken)


def test_the_invoice_schema_takes_what_the_model_takes() -> None:
    schema = validator(INVOICE_DATA_FILE)
    base = sample_events()[0]["data"]
    customer = {k: v for k, v in base["customer"].items() if k != "type"}
    line = {"description": "kWh", "quantity": 1.123456, "unit_price": 1.2345, "total_excluding_vat": 1.39}
    for accepted in (
        {**base, "currency": "sek"},
        {**base, "issue_date": "2024-01-21T10:11:22Z", "due_date": "2024-01-31T10:11:22+01:00"},
        {**base, "customer": customer},
        {**base, "lines": [line]},
    ):
        assert schema.is_valid(accepted), accepted
        Invoice.model_validate(accepted)


# --- outbound: results and dead letters ----------------------------------------------------------------


def result_events() -> list[Schema]:
    ids = AmiliIds(
        registration_id="a" * 24,
        invoice_id="b" * 24,
        case_id="c" * 24,
        ocr_number_id="d" * 24,
        ocr_number_ocr="20260000000000018",
    )
    reason = Reason(
        field="data.due_date", rule="due_after_issue", message="due date is before the issue date"
    )
    results = [
        RegistrationResult(
            outcome="registered", amili=ids, creditor=CREDITOR, invoice_number="A-1", inbound_event_id="e1"
        ),
        RegistrationResult(
            outcome="rejected",
            reasons=[reason],
            creditor=CREDITOR,
            invoice_number="A-2",
            inbound_event_id="e2",
        ),
        RegistrationResult(
            outcome="conflict",
            reasons=[reason],
            creditor=CREDITOR,
            invoice_number="A-3",
            inbound_event_id="e3",
        ),
        RegistrationResult(outcome="failed", creditor=CREDITOR, invoice_number="A-4", inbound_event_id="e4"),
        RegistrationResult(
            outcome="failed",
            amili=ids,
            reasons=[reason],
            creditor=CREDITOR,
            invoice_number="A-5",
            inbound_event_id="e5",
        ),
    ]
    now = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
    return [json.loads(result_event(result, time=now).to_structured()) for result in results]


def test_every_outcome_is_valid_against_the_result_schema() -> None:
    schema = validator(RESULT_EVENT_FILE)
    documented = component_validator("RegistrationResultEvent")
    events = result_events()
    assert {event["data"]["outcome"] for event in events} == {outcome.value for outcome in Outcome}
    for event in events:
        schema.validate(event)
        documented.validate(event)
        RegistrationResultEvent.model_validate(event)


def test_the_result_schema_ties_the_type_to_the_outcome() -> None:
    schema = validator(RESULT_EVENT_FILE)
    registered, rejected, *_ = result_events()
    assert not schema.is_valid({**registered, "type": RESULT_TYPES[Outcome.REJECTED]})
    assert not schema.is_valid({**rejected, "data": {**rejected["data"], "outcome": "registered"}})
    assert not schema.is_valid(
        {**registered, "data": {k: v for k, v in registered["data"].items() if k != "amili"}}
    )
    assert not schema.is_valid({**registered, "unknown": 1})
    assert not schema.is_valid({**registered, "time": 1764000000})


def test_dead_letter_headers_are_valid_against_their_schema() -> None:
    record = InboundRecord(
        topic="invoice-created",
        partition=3,
        offset=1234,
        key=b"k",
        value=b"not json",
        headers=(("trace", b"t-1"), ("raw", b"\xff\xfe")),
    )
    now = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
    headers = dead_letter_headers(record, "json", "x" * 5000, now)
    assert headers[:2] == list(record.headers)
    ours = {key: value.decode() for key, value in headers[2:]}
    assert list(ours) == [field.alias for field in DeadLetterHeaders.model_fields.values()]
    validator(DEAD_LETTER_HEADERS_FILE).validate(ours)
    component_validator("DeadLetterHeaders").validate(ours)
    assert ours["dlq.offset"] == "1234"
    assert len(ours["dlq.reason"]) == 2000
    assert not validator(DEAD_LETTER_HEADERS_FILE).is_valid({**ours, "dlq.offset": "-1"})
    assert not validator(DEAD_LETTER_HEADERS_FILE).is_valid(
        {k: v for k, v in ours.items() if k != "dlq.rule"}
    )


# --- the AsyncAPI document -------------------------------------------------------------------------------


def test_the_asyncapi_document_describes_every_message() -> None:
    document = committed(ASYNCAPI_FILE)
    assert document["asyncapi"] == "3.0.0"
    addresses = {channel["address"]: channel for channel in document["channels"].values()}
    assert set(addresses) == {"invoice-created", "registration-result", "invoice-created.dead-letter"}
    actions = {operation["action"] for operation in document["operations"].values()}
    assert actions == {"receive", "send"}
    messages = document["components"]["messages"]
    for channel in document["channels"].values():
        assert channel["description"]
        for reference in channel["messages"].values():
            message = messages[reference["$ref"].rsplit("/", 1)[-1]]
            assert message["payload"], message
            assert message["contentType"]
            assert message.get("headers") or message["contentType"] != "application/json"
    schemas = document["components"]["schemas"]
    referenced = {
        target.rsplit("/", 1)[-1]
        for target in _references(document)
        if target.startswith("#/components/schemas/")
    }
    assert referenced <= set(schemas), referenced - set(schemas)
    assert set(schemas) <= referenced | {"InvoiceCreatedEvent"}, "unreferenced schemas"


def _references(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [ref for value in node.values() for ref in _references(value)]
    if isinstance(node, list):
        return [ref for value in node for ref in _references(value)]
    return []


def _tool_missing(reason: str) -> NoReturn:
    skip_or_fail(reason, ci_reason=f"{reason} (CI must run the AsyncAPI parser)")


@pytest.fixture(scope="session")
def asyncapi_parser() -> list[str]:
    """The command that runs scripts/asyncapi-validate.mjs, its parser installed when missing."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        _tool_missing("node and npm are needed to run the AsyncAPI parser")
    assert node is not None
    assert npm is not None
    installed = PARSER_DIR / "node_modules" / "@asyncapi" / "parser" / "package.json"
    current = all(
        (PARSER_DIR / name).exists()
        and (PARSER_DIR / name).read_bytes() == (ROOT / "scripts" / name).read_bytes()
        for name in NPM_FILES
    )
    if not installed.exists() or not current:
        PARSER_DIR.mkdir(parents=True, exist_ok=True)
        for name in NPM_FILES:
            shutil.copyfile(ROOT / "scripts" / name, PARSER_DIR / name)
        done = subprocess.run(
            [npm, "ci", "--prefix", str(PARSER_DIR), "--ignore-scripts", "--no-audit", "--no-fund"],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert done.returncode == 0, f"npm ci failed:\n{done.stdout}\n{done.stderr}"
    return [node, str(VALIDATE_SCRIPT), "--strict", "--modules", str(PARSER_DIR)]


def test_the_asyncapi_parser_accepts_the_document(asyncapi_parser: list[str]) -> None:
    done = subprocess.run(
        [*asyncapi_parser, str(SCHEMA_DIR / ASYNCAPI_FILE)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    assert "valid AsyncAPI 3.0.0" in done.stdout


def test_the_asyncapi_parser_refuses_a_broken_document(asyncapi_parser: list[str], tmp_path: Path) -> None:
    broken = committed(ASYNCAPI_FILE)
    broken["operations"]["registration-result"]["action"] = "publish"  # AsyncAPI 2's word, not 3's
    broken["channels"]["registration-result"]["messages"]["RegistrationResult"]["$ref"] = "#/nowhere"
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(broken), encoding="utf-8")
    done = subprocess.run(
        [*asyncapi_parser, str(path)], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 1, f"{done.stdout}\n{done.stderr}"
    assert "error" in done.stdout
