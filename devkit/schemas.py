"""The event contract as documents, generated from the models: JSON Schemas of the inbound ``data``
(the canonical invoice), of the whole ``registration-result`` CloudEvent and of the dead-letter
headers, and the service's AsyncAPI 3 document.

The committed copies are in ``schemas/``; a test fails when they drift. Regenerate them with::

    python -m devkit.schemas

(``--check`` only compares, exiting 1 on drift; ``--stdout NAME`` prints one document).

A development tool, not part of the service: the running service reads none of these documents and
needs none of the models here. Generating them takes the whole service (the registrar
``build_registrar`` wires, the dead-letter headers of ``service.kafka.publishing``), which a module
of the service's contract layer must not import.

The AsyncAPI document is FastStream's, generated from the broker ``build_registrar`` wires: its
servers, and the channels and operations of the two publishers (results, dead letters). The
consumption engine reads ``invoice-created`` through aiokafka, not a FastStream subscriber, so one is
declared here on that broker (never started) to put the consumed channel into the document. It
stays: FastStream documents a channel only through a subscriber or publisher declared on a broker
(its public API, used as meant), and declared here alone the running service has no such consumer;
writing the channel into the document by hand would leave its servers and bindings in two hands.
FastStream cannot know the messages themselves (results go out as ready-made bytes, dead letters
through the raw producer, the engine reads raw records) and its message model has no headers or
content type; so each channel's messages are replaced by ones built from the models here, their
schemas hoisted into ``components``. FastStream lists publishers in no fixed order between runs;
channels and operations are put in a fixed order.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import json
import sys
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, SecretStr
from pydantic.json_schema import DEFAULT_REF_TEMPLATE, GenerateJsonSchema, JsonSchemaMode
from pydantic_core import core_schema

from service.amili.mapping import seed_field_table
from service.domain.invoice import Invoice
from service.domain.outcomes import Outcome
from service.events.cloudevents import JSON_CONTENT_TYPE, STRUCTURED_CONTENT_TYPE
from service.events.contract import RESULT_TYPES, RegistrationResult
from service.kafka.publishing import TRUNCATED_VALUE_BYTES, DeadLetterHeaders, DeadLetterTruncation

Schema = dict[str, Any]

ROOT = Path(__file__).resolve().parents[1]
SCHEMA_DIR = ROOT / "schemas"
REGENERATE_COMMAND = "python -m devkit.schemas"
FIELD_MAPPING_DOC = ROOT / "docs" / "field-mapping.md"


def field_mapping_document() -> str:
    """``docs/field-mapping.md``: every field of Amili's registration and the event field it comes from."""
    return (
        "# Amili's registration fields and the event fields they come from\n\n"
        f"Generated from `service/amili/mapping.py` by `{REGENERATE_COMMAND}`; a test fails when "
        "it drifts. Amili's fields are those of its invoice registration (`POST "
        "/invoice--registrations`); event fields are paths in an `invoice-created` event "
        "(`schemas/invoice-created.data.schema.json`). A refusal, ours or Amili's, names the event "
        "field.\n\n" + seed_field_table()
    )


JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"

INVOICE_DATA_FILE = "invoice-created.data.schema.json"
RESULT_EVENT_FILE = "registration-result.schema.json"
DEAD_LETTER_HEADERS_FILE = "dead-letter-headers.schema.json"
ASYNCAPI_FILE = "asyncapi.json"

STRUCTURED_CONTENT_TYPE_PATTERN = r"^application/cloudevents\+json(;.*)?$"

if TYPE_CHECKING:
    ResultType = str
else:
    # A result event's types, one an outcome (``RESULT_TYPES``), as the Literal pydantic puts in the
    # schema as an enum; a type checker cannot read a Literal made at run time.
    ResultType = Literal[tuple(RESULT_TYPES.values())]


class ContractSchema(GenerateJsonSchema):
    """Pydantic's JSON Schema, with a pattern on decimals given as strings (amounts keep their
    ``max_digits``/``decimal_places``)."""

    def get_decimal_pattern(self, schema: core_schema.DecimalSchema) -> str | None:
        return self.build_decimal_pattern(schema)


def _outcome_matches_type(schema: Schema) -> None:
    """A result event's ``type`` names its ``data.outcome``; a registered one carries Amili's ids."""
    rules: list[Schema] = []
    for outcome, event_type in RESULT_TYPES.items():
        data: Schema = {"properties": {"outcome": {"const": outcome.value}}}
        if outcome is Outcome.REGISTERED:
            data["required"] = ["amili"]
        rules.append(
            {
                "if": {"properties": {"type": {"const": event_type}}, "required": ["type"]},
                "then": {"properties": {"data": data}},
            }
        )
    schema["allOf"] = rules


class RegistrationResultEvent(BaseModel):
    """A ``registration-result`` CloudEvent (structured mode, the record value): what became of one
    invoice. The record key is ``creditor/invoice_number``; ``type`` names the outcome."""

    model_config = ConfigDict(frozen=True, extra="forbid", json_schema_extra=_outcome_matches_type)

    specversion: Literal["1.0"]
    id: uuid.UUID = Field(description="Derived from creditor, invoice number and outcome: a repeat keeps it")
    source: Literal["amili-registrar"]
    type: ResultType
    time: AwareDatetime = Field(description="When the result was published")
    subject: str = Field(min_length=1, description="creditor/invoice_number")
    datacontenttype: Literal["application/json"]
    data: RegistrationResult


class InvoiceCreatedEvent(BaseModel):
    """An ``invoice-created`` CloudEvent in structured mode (the record value, content type
    ``application/cloudevents+json``). Other CloudEvents attributes (extensions) are allowed."""

    model_config = ConfigDict(frozen=True, extra="allow")

    specversion: Literal["1.0"]
    id: str = Field(min_length=1, description="Unique per event of its source")
    source: str = Field(min_length=1, description="The billing system, as a URI reference")
    type: Literal["billing.invoice.created.v1"]
    time: AwareDatetime
    subject: str | None = None
    datacontenttype: str | None = Field(default=None, description="application/json when given")
    data: Invoice


class InvoiceCreatedBinaryHeaders(BaseModel):
    """The record headers of an ``invoice-created`` CloudEvent in binary mode (the value is the
    ``data`` alone); other ``ce_*`` headers (extensions) are allowed."""

    model_config = ConfigDict(frozen=True, extra="allow", populate_by_name=True, serialize_by_alias=True)

    specversion: Literal["1.0"] = Field(alias="ce_specversion")
    id: str = Field(alias="ce_id", min_length=1)
    source: str = Field(alias="ce_source", min_length=1)
    type: Literal["billing.invoice.created.v1"] = Field(alias="ce_type")
    time: AwareDatetime = Field(alias="ce_time")
    subject: str | None = Field(default=None, alias="ce_subject")
    content_type: str | None = Field(default=None, alias="content-type", pattern=r"^application/json(;.*)?$")


def _project_version() -> str:
    try:
        return importlib.metadata.version("amili-registrar")
    except importlib.metadata.PackageNotFoundError:
        return "0.0.0"


def model_schema(
    model: type[BaseModel], *, mode: JsonSchemaMode, ref_template: str = DEFAULT_REF_TEMPLATE
) -> Schema:
    return model.model_json_schema(mode=mode, ref_template=ref_template, schema_generator=ContractSchema)


def _standalone(model: type[BaseModel], *, mode: JsonSchemaMode, title: str, description: str) -> Schema:
    body = model_schema(model, mode=mode)
    body.pop("title", None)
    body.pop("description", None)
    return {"$schema": JSON_SCHEMA_DIALECT, "title": title, "description": description, **body}


UNKNOWN_FIELDS_NOTE = (
    "Unknown fields in data (at any level) are ignored by default (UNKNOWN_FIELDS=ignore: dropped, "
    "counted, the event processed); under UNKNOWN_FIELDS=reject the event is dead-lettered."
)


def invoice_data_schema() -> Schema:
    """What an ``invoice-created`` event's ``data`` may be: the canonical invoice, as read."""
    return _standalone(
        Invoice,
        mode="validation",
        title="invoice-created data: the canonical invoice",
        description=(
            "The data of a billing.invoice.created.v1 CloudEvent. Amounts are JSON numbers (or decimal "
            "strings) with at most two decimals, unit prices and quantities with at most six; dates "
            "are ISO 8601 dates, or dates and times with a UTC offset; ISO codes in any letter case. "
            "Data without an invoice_number is dead-lettered (no result could name the invoice); an "
            "event that names its invoice but breaks this schema, or a business rule the schema "
            "cannot state (SEK only, VAT 0/6/12/25, due date not before the issue date, line totals, "
            "Swedish id numbers and plates), is answered with a rejected result. "
            "additionalProperties is false here to name the known fields, but by default "
            "(UNKNOWN_FIELDS=ignore) the service ignores unknown fields at any level and processes the "
            "event; under UNKNOWN_FIELDS=reject an event with one is rejected."
        ),
    )


def registration_result_schema() -> Schema:
    """The whole ``registration-result`` CloudEvent, as written."""
    return _standalone(
        RegistrationResultEvent,
        mode="serialization",
        title="registration-result: a CloudEvent with the outcome of one invoice",
        description=(
            "One event per invoice outcome, in structured mode (application/cloudevents+json), keyed "
            "creditor/invoice_number. type is amili-registrar.registration.<outcome>.v1 and "
            "data.outcome the same outcome: registered (with Amili's ids, and warnings under "
            "ID_NUMBER_CHECK=warn), rejected (with reasons naming data.* fields of the inbound "
            "event), conflict or failed."
        ),
    )


def dead_letter_headers_schema() -> Schema:
    """The ``dlq.*`` headers of a dead letter (after the record's own headers, kept as they came),
    with those of a truncated one."""
    schema = _standalone(
        DeadLetterHeaders,
        mode="serialization",
        title="dead-letter headers",
        description=(
            "A dead letter is the inbound record byte for byte (key, value, headers in order) plus these "
            "headers, UTF-8 text, saying why, whence and when. Other headers are the record's own. A "
            "record too large to be dead-lettered whole is written truncated: its value's first "
            f"{TRUNCATED_VALUE_BYTES} bytes, its own headers only if small, and the dlq.truncated "
            "headers; the original stays in its source topic at dlq.partition and dlq.offset."
        ),
    )
    truncation = model_schema(DeadLetterTruncation, mode="serialization")
    schema["properties"].update(truncation["properties"])
    schema["dependentRequired"] = {
        "dlq.truncated": [n for n in truncation["required"] if n != "dlq.truncated"]
    }
    return schema


def _component(components: Schema, name: str, model: type[BaseModel], mode: JsonSchemaMode) -> Schema:
    """Put ``model``'s schema (and those it refers to) into ``components``; a reference to it."""
    body = model_schema(model, mode=mode, ref_template="#/components/schemas/{model}")
    for def_name, definition in {**body.pop("$defs", {}), name: body}.items():
        known = components.setdefault(def_name, definition)
        if known != definition:
            raise ValueError(f"two different schemas are named {def_name!r}")
    return {"$ref": f"#/components/schemas/{name}"}


def _messages(components: Schema) -> dict[str, Schema]:
    """The messages of the service, by the ``components.messages`` key they go under."""
    invoice_event = _component(components, "InvoiceCreatedEvent", InvoiceCreatedEvent, "validation")
    invoice = _component(components, "Invoice", Invoice, "validation")
    binary_headers = _component(
        components, "InvoiceCreatedBinaryHeaders", InvoiceCreatedBinaryHeaders, "validation"
    )
    result_event = _component(components, "RegistrationResultEvent", RegistrationResultEvent, "serialization")
    dead_letter_headers = _component(components, "DeadLetterHeaders", DeadLetterHeaders, "serialization")
    return {
        "InvoiceCreatedStructured": {
            "name": "InvoiceCreatedStructured",
            "title": "invoice-created, structured mode",
            "summary": "An invoice to register: the whole CloudEvent is the record value.",
            "description": UNKNOWN_FIELDS_NOTE,
            "contentType": STRUCTURED_CONTENT_TYPE,
            "headers": {
                "type": "object",
                "properties": {
                    "content-type": {"type": "string", "pattern": STRUCTURED_CONTENT_TYPE_PATTERN}
                },
            },
            "payload": invoice_event,
        },
        "InvoiceCreatedBinary": {
            "name": "InvoiceCreatedBinary",
            "title": "invoice-created, binary mode",
            "summary": "An invoice to register: CloudEvents attributes in ce_* headers, the data as value.",
            "description": UNKNOWN_FIELDS_NOTE,
            "contentType": JSON_CONTENT_TYPE,
            "headers": binary_headers,
            "payload": invoice,
        },
        "RegistrationResult": {
            "name": "RegistrationResult",
            "title": "registration-result",
            "summary": "The outcome of one invoice: registered, rejected, conflict or failed.",
            "contentType": STRUCTURED_CONTENT_TYPE,
            "headers": {
                "type": "object",
                "properties": {"content-type": {"type": "string", "const": STRUCTURED_CONTENT_TYPE}},
            },
            "payload": result_event,
        },
        "DeadLetter": {
            "name": "DeadLetter",
            "title": "dead letter",
            "summary": "An inbound record that could not be processed, untouched, with dlq.* headers.",
            "contentType": "application/octet-stream",
            "headers": dead_letter_headers,
            "payload": {
                "description": (
                    "The inbound record's value byte for byte: anything at all (it could not be read as "
                    "an invoice-created event, or registering it was given up)."
                )
            },
        },
    }


async def _faststream_document(settings: Any) -> Schema:
    from faststream.specification import AsyncAPI

    from service.bootstrap import build_registrar

    registrar = build_registrar(settings)  # within a running loop, as the service builds it
    try:
        # The engine consumes through aiokafka, not a FastStream subscriber; declaring one (never
        # started) puts the consumed channel into FastStream's document beside the publishers.
        registrar.broker.subscriber(
            settings.invoice_created_topic,
            group_id=settings.consumer_group_id,
            title="invoice-created",
            description=(
                "Invoices to register at Amili: CloudEvents of type billing.invoice.created.v1, in "
                "structured or binary mode. Offsets are committed once the outcome is published."
            ),
        )(_consumed)
        specification = AsyncAPI(
            registrar.broker,
            title="amili-registrar",
            version=_project_version(),
            description=(
                "Registers invoice-created events as invoices at Visma Amili, exactly once, and "
                "publishes the outcome of each as a registration-result CloudEvent. Events that "
                "cannot be read go, untouched, to the dead-letter topic."
            ),
            schema_version="3.0.0",
        ).to_specification()
        document: Schema = json.loads(specification.to_json())
    finally:
        await registrar.amili.aclose()  # nothing else was started
    return document


async def _consumed(message: bytes) -> None:
    """Stands for the consumption engine in the document; never called."""


def _document_settings() -> Any:
    """The default settings, stated explicitly so that no environment variable leaks into the document."""
    from service.config import Settings

    fields = Settings.model_fields
    explicit = {
        name: fields[name].default
        for name in (
            "kafka_bootstrap_servers",
            "kafka_security_protocol",
            "invoice_created_topic",
            "registration_result_topic",
            "dead_letter_topic",
            "consumer_group_id",
        )
    }
    return Settings(
        **explicit,
        amili_api_key=SecretStr("asyncapi"),
        amili_api_code=None,
        amili_http_transport="httpx",
        ledger_url=SecretStr("sqlite://"),
    )


async def asyncapi_document() -> Schema:
    """The service's AsyncAPI 3 document: FastStream's, with the messages filled in."""
    settings = _document_settings()
    document = await _faststream_document(settings)
    components: Schema = {}
    messages = _messages(components)
    by_topic = {
        settings.invoice_created_topic: ["InvoiceCreatedStructured", "InvoiceCreatedBinary"],
        settings.registration_result_topic: ["RegistrationResult"],
        settings.dead_letter_topic: ["DeadLetter"],
    }
    seen: set[str] = set()
    for channel_key, channel in document["channels"].items():
        names = by_topic.get(channel["address"])
        if names is None:
            raise ValueError(f"FastStream documents a channel this module does not know: {channel_key}")
        seen.add(channel["address"])
        channel["messages"] = {name: {"$ref": f"#/components/messages/{name}"} for name in names}
        for operation in document["operations"].values():
            if operation["channel"] == {"$ref": f"#/channels/{channel_key}"}:
                operation["messages"] = [
                    {"$ref": f"#/channels/{channel_key}/messages/{name}"} for name in names
                ]
    if missing := set(by_topic) - seen:
        raise ValueError(f"FastStream's document lacks the channels of {sorted(missing)}")
    # FastStream lists publishers in no fixed order (it differs between runs): consumed first, then
    # results, then dead letters.
    rank = {topic: index for index, topic in enumerate(by_topic)}
    order = sorted(document["channels"], key=lambda key: rank[document["channels"][key]["address"]])
    document["channels"] = {key: document["channels"][key] for key in order}
    document["operations"] = dict(
        sorted(
            document["operations"].items(),
            key=lambda item: order.index(item[1]["channel"]["$ref"].removeprefix("#/channels/")),
        )
    )
    document["components"] = {"messages": messages, "schemas": dict(sorted(components.items()))}
    # The AsyncAPI version first, as readers expect.
    return {"asyncapi": document.pop("asyncapi"), **document}


async def generate_documents() -> dict[str, Schema]:
    """Every generated document, by its file name in ``schemas/``."""
    return {
        INVOICE_DATA_FILE: invoice_data_schema(),
        RESULT_EVENT_FILE: registration_result_schema(),
        DEAD_LETTER_HEADERS_FILE: dead_letter_headers_schema(),
        ASYNCAPI_FILE: await asyncapi_document(),
    }


def render(document: Mapping[str, Any]) -> str:
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def drifted(generated: Mapping[str, Schema], directory: Path = SCHEMA_DIR) -> list[str]:
    """The files in ``directory`` that differ from ``generated`` (or are missing)."""
    stale = []
    for name, document in generated.items():
        path = directory / name
        if not path.exists() or path.read_text(encoding="utf-8") != render(document):
            stale.append(name)
    return stale


def write_all(generated: Mapping[str, Schema], directory: Path = SCHEMA_DIR) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, document in generated.items():
        path = directory / name
        path.write_text(render(document), encoding="utf-8")
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devkit.schemas", description="Write the event contract's documents."
    )
    parser.add_argument("--dir", type=Path, default=SCHEMA_DIR, help="where the documents go (schemas/)")
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--check", action="store_true", help="only compare; exit 1 when a file drifted")
    action.add_argument("--stdout", metavar="NAME", help="print one document instead of writing files")
    args = parser.parse_args(argv)
    generated = asyncio.run(generate_documents())
    if args.stdout:
        if args.stdout not in generated:
            parser.error(f"unknown document {args.stdout!r}; one of {', '.join(generated)}")
        sys.stdout.write(render(generated[args.stdout]))
        return 0
    if args.check:
        stale = [args.dir / name for name in drifted(generated, args.dir)]
        if FIELD_MAPPING_DOC.read_text(encoding="utf-8") != field_mapping_document():
            stale.append(FIELD_MAPPING_DOC)
        for path in stale:
            print(f"{path} is out of date; regenerate: {REGENERATE_COMMAND}", file=sys.stderr)
        return 1 if stale else 0
    FIELD_MAPPING_DOC.write_text(field_mapping_document(), encoding="utf-8")
    for path in [*write_all(generated, args.dir), FIELD_MAPPING_DOC]:
        print(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
