"""The emulator's OpenAPI 3.1 document, built from its code: the request schema from the validation
rules (``validation.py``), the fault configuration from ``FaultConfig``, the rest written here.

The committed copy is ``schemas/amili-emulator.openapi.json``; a test fails when it drifts.
Regenerate it with::

    python -m devkit.emulator.openapi schemas/amili-emulator.openapi.json

(without a path the document goes to standard output). The emulator serves it at ``/openapi.json``.

What the schema cannot say is in the descriptions: exactly one of ``is_person``, ``is_company``,
``is_foreign`` is true; the account and creditor must be known and active; an invoice number is
unique per creditor; Swedish id numbers are checked when the emulator is told to; dates are also
accepted with a wrong weekday, and come back normalised.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from devkit.emulator.faults import FaultConfig
from devkit.emulator.query import DEFAULT_MAX_RESULTS, MAX_RESULTS_LIMIT
from devkit.emulator.settings import DEMO_ACCOUNT, DEMO_CREDITOR
from devkit.emulator.validation import OBJECT_ID_PATTERN, REGISTRATION, Rule

RFC1123_PATTERN = (
    r"^(Mon|Tue|Wed|Thu|Fri|Sat|Sun), (0[1-9]|[12][0-9]|3[01]) "
    r"(Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) [0-9]{4} "
    r"([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9] GMT$"
)
DOCUMENT_PATH = "schemas/amili-emulator.openapi.json"

Schema = dict[str, Any]


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def rule_schema(rule: Rule) -> Schema:
    """The JSON Schema of one validation rule."""
    schema: Schema
    if rule.type == "string":
        schema = {"type": "string"}
        if rule.allowed is not None:
            schema["enum"] = list(rule.allowed)
        if rule.regex is not None:
            schema["pattern"] = rule.regex
        if not rule.empty:
            schema["minLength"] = 1
    elif rule.type == "number":
        schema = {"type": "number"}
        if rule.min is not None:
            schema["minimum"] = rule.min
        if rule.max is not None:
            schema["maximum"] = rule.max
    elif rule.type == "boolean":
        schema = {"type": "boolean"}
    elif rule.type == "datetime":
        schema = {"type": "string", "pattern": RFC1123_PATTERN}
    elif rule.type == "objectid":
        schema = {"type": "string", "pattern": OBJECT_ID_PATTERN}
    elif rule.type == "dict":
        schema = object_schema(rule.schema) if rule.schema is not None else {"type": "object"}
    elif rule.type == "list":
        schema = {"type": "array", "items": rule_schema(rule.items) if rule.items else {}}
        if not rule.empty:
            schema["minItems"] = 1
    else:  # pragma: no cover - every rule type is above
        raise ValueError(f"no JSON Schema for rule type {rule.type}")
    if rule.readonly:
        schema["readOnly"] = True
    if rule.description:
        schema = {"description": rule.description, **schema}
    return schema


def object_schema(fields: Mapping[str, Rule], *, requirements: bool = True) -> Schema:
    schema: Schema = {
        "type": "object",
        "properties": {name: rule_schema(rule) for name, rule in fields.items()},
    }
    required = [name for name, rule in fields.items() if rule.required]
    if required and requirements:
        schema["required"] = required
    schema["additionalProperties"] = False
    excluded = sorted(
        {tuple(sorted((name, other))) for name, rule in fields.items() for other in rule.excludes}
    )
    if excluded:
        schema["not"] = {"anyOf": [{"required": list(pair)} for pair in excluded]}
    return schema


_OBJECT_ID: Schema = {"type": "string", "pattern": OBJECT_ID_PATTERN}
_DATE: Schema = {"type": "string", "pattern": RFC1123_PATTERN}
_PROJECTION: Schema = {"type": "object", "additionalProperties": {"type": "integer", "enum": [0, 1]}}


def _meta(id_description: str) -> Schema:
    return {
        "_id": {**_OBJECT_ID, "description": id_description},
        "_created": _DATE,
        "_updated": _DATE,
        "_etag": {"type": "string"},
    }


_OCR: Schema = {"type": "string", "pattern": "^[0-9]{2,25}$"}
_META_REQUIRED = ["_id", "_created", "_updated", "_etag"]
_RECEIPT_IDS: Schema = {
    "_invoice": {**_OBJECT_ID, "description": "The invoice created (same id as the registration)"},
    "_case": {**_OBJECT_ID, "description": "The case created"},
    "_ocr_number": {**_OBJECT_ID, "description": "The OCR-number document (an id, not digits)"},
    "ocr_number_ocr": {**_OCR, "description": "The OCR number the debtor pays with (mod-10 check digit)"},
}


def _registration_schema() -> Schema:
    stored = {name: rule for name, rule in REGISTRATION.items() if not rule.readonly}
    schema = object_schema(stored, requirements=False)
    schema["properties"] = {**_meta("The registration"), **_RECEIPT_IDS, **schema["properties"]}
    schema["required"] = _META_REQUIRED
    schema["description"] = "A stored registration: the request, dates normalised, with meta fields"
    return schema


def _invoice_schema() -> Schema:
    money = {"type": "number"}
    properties: Schema = {
        **_meta("The invoice (same id as its registration)"),
        "account": _OBJECT_ID,
        "creditor": _OBJECT_ID,
        "invoice_number": {"type": "string"},
        "invoice_type": {"type": "string"},
        "invoice_date": _DATE,
        "invoice_due_date": _DATE,
        "currency": {"type": "string", "enum": ["SEK"]},
        "total_amount_excluding_vat": money,
        "total_vat_25_percent": money,
        "total_vat_12_percent": money,
        "total_vat_6_percent": money,
        "total_vat": money,
        "total_amount_including_vat": money,
        "case": _OBJECT_ID,
        "ocr_number": {**_OBJECT_ID, "description": "The OCR-number document's id"},
        "ocr_number_ocr": _OCR,
        "invoice_registration": _OBJECT_ID,
        "case_status": {"type": "string"},
        "case_state": {"type": "string"},
    }
    return {"type": "object", "properties": properties, "required": _META_REQUIRED}


def _case_schema() -> Schema:
    def history(name: str) -> Schema:
        item = {
            "type": "object",
            "properties": {name: {"type": "string"}, "date": _DATE},
            "required": [name, "date"],
        }
        return {"type": "array", "items": item}

    properties: Schema = {
        **_meta("The case"),
        "account": _OBJECT_ID,
        "creditor": _OBJECT_ID,
        "invoice_number": {"type": "string"},
        "state": {"type": "string", "description": "invoice after a registration"},
        "status": {"type": "string", "description": "initialized after a registration"},
        "state_history": history("state"),
        "status_history": history("status"),
        "invoice": _OBJECT_ID,
        "invoice_registration": _OBJECT_ID,
        "ocr_number": _OBJECT_ID,
        "ocr_number_ocr": _OCR,
    }
    return {"type": "object", "properties": properties, "required": _META_REQUIRED}


def _list_schema(item: str) -> Schema:
    return {
        "type": "object",
        "properties": {
            "_items": {"type": "array", "items": _ref(item)},
            "_meta": {
                "type": "object",
                "properties": {
                    "total": {"type": "integer", "minimum": 0},
                    "max_results": {"type": "integer", "minimum": 1, "maximum": MAX_RESULTS_LIMIT},
                    "page": {"type": "integer", "minimum": 1},
                },
                "required": ["total", "max_results", "page"],
            },
        },
        "required": ["_items", "_meta"],
    }


def _error_schema(with_issues: bool) -> Schema:
    properties: Schema = {
        "_status": {"type": "string", "enum": ["ERR"]},
        "_error": {
            "type": "object",
            "properties": {"code": {"type": "integer"}, "message": {"type": "string"}},
            "required": ["code", "message"],
        },
    }
    required = ["_status", "_error"]
    if with_issues:
        properties["_issues"] = {
            "type": "object",
            "description": "Per field: a message, or the issues of a nested object or list",
        }
        required.append("_issues")
    return {"type": "object", "properties": properties, "required": required}


def _schemas() -> Schema:
    fault_config = FaultConfig.model_json_schema()
    fault_config.pop("title", None)
    return {
        "InvoiceRegistrationRequest": {
            "description": "What a client posts. Exactly one of customer.is_person, is_company, is_foreign "
            "must be true; account and creditor must be known and active; invoice_number is unique per "
            "creditor; dates are RFC 1123 GMT (a wrong weekday is accepted, as Eve accepts it).",
            **object_schema(REGISTRATION),
        },
        "Receipt": {
            "type": "object",
            "properties": {**_meta("The registration"), "_status": {"enum": ["OK"]}, **_RECEIPT_IDS},
            "required": [*_META_REQUIRED, "_status", *_RECEIPT_IDS],
            "additionalProperties": False,
        },
        "Registration": _registration_schema(),
        "RegistrationList": _list_schema("Registration"),
        "Invoice": _invoice_schema(),
        "InvoiceList": _list_schema("Invoice"),
        "Case": _case_schema(),
        "CaseList": _list_schema("Case"),
        "AccessToken": {
            "type": "object",
            "properties": {
                "_status": {"enum": ["OK"]},
                "access_token": {"type": "string", "minLength": 1},
                "expires_in": {"type": "integer", "minimum": 1, "description": "Seconds"},
            },
            "required": ["_status", "access_token", "expires_in"],
        },
        "Error": _error_schema(False),
        "ValidationError": _error_schema(True),
        "FaultConfig": fault_config,
        "Load": {
            "type": "object",
            "description": "The load on the API since start or the last DELETE /_admin/load",
            "properties": {
                "requests": {"type": "integer", "minimum": 0, "description": "API requests"},
                "rate_limited": {
                    "type": "integer",
                    "minimum": 0,
                    "description": "Of those, answered 429 by the rate limit",
                },
                "in_service": {"type": "integer", "minimum": 0, "description": "Worked on now"},
                "queued": {"type": "integer", "minimum": 0, "description": "Waiting for a place now"},
                "max_in_service": {"type": "integer", "minimum": 0},
                "max_queued": {"type": "integer", "minimum": 0},
                "served": {
                    "type": "integer",
                    "minimum": 0,
                    "description": "Requests that held a place and were answered",
                },
                "service_seconds": {
                    "type": "number",
                    "minimum": 0,
                    "description": "The seconds those requests held their places, all together",
                },
            },
            "required": [
                "requests",
                "rate_limited",
                "in_service",
                "queued",
                "max_in_service",
                "max_queued",
                "served",
                "service_seconds",
            ],
            "additionalProperties": False,
        },
        "RegistrationCounts": {
            "type": "object",
            "properties": {
                "total": {"type": "integer", "minimum": 0},
                "per_invoice": {
                    "type": "object",
                    "description": "creditor/invoice_number -> number of registrations",
                    "additionalProperties": {"type": "integer", "minimum": 1},
                },
            },
            "required": ["total", "per_invoice"],
        },
    }


def _json(schema: Schema, description: str) -> Schema:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str) -> Schema:
    return _json(_ref("Error"), description)


_GATEWAY_PAGE: Schema = {"text/html": {"schema": {"type": "string"}}}
FAULT_RESPONSES: Schema = {
    "429": {
        **_error("Throttled (only when faults are injected)"),
        "headers": {
            name: {"schema": {"type": "string"}}
            for name in ("Retry-After", "X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset")
        },
    },
    "500": _error("Internal error (only when faults are injected)"),
    "502": {"description": "Bad gateway (only when faults are injected)", "content": _GATEWAY_PAGE},
    "503": {"description": "Unavailable (only when faults are injected)", "content": _GATEWAY_PAGE},
}
_UNAUTHORISED = _error("The x-api-key is missing, unknown or expired")


def _query_parameters() -> list[Schema]:
    json_object = {"type": "object"}
    return [
        {
            "name": "where",
            "in": "query",
            "description": "MongoDB query, dot notation for nested fields "
            "($eq $ne $gt $gte $lt $lte $in $nin $exists $and $or $nor)",
            "content": {"application/json": {"schema": json_object}},
        },
        {
            "name": "sort",
            "in": "query",
            "description": 'Eve\'s "-field,other" or [("field", -1), ("other", 1)]; default _created',
            "schema": {"type": "string"},
        },
        {
            "name": "projection",
            "in": "query",
            "description": "Top-level fields, all 1 (only these) or all 0 (all but these)",
            "content": {"application/json": {"schema": _PROJECTION}},
        },
        {"name": "page", "in": "query", "schema": {"type": "integer", "minimum": 1, "default": 1}},
        {
            "name": "max_results",
            "in": "query",
            "description": f"At most {MAX_RESULTS_LIMIT} (larger values are capped)",
            "schema": {"type": "integer", "minimum": 1, "default": DEFAULT_MAX_RESULTS},
        },
    ]


def _list_operation(summary: str, item: str, tag: str) -> Schema:
    return {
        "get": {
            "tags": [tag],
            "summary": summary,
            "operationId": f"list{item}s",
            "parameters": _query_parameters(),
            "responses": {
                "200": _json(_ref(f"{item}List"), "A page of documents"),
                "400": _error("A query parameter cannot be read"),
                "401": _UNAUTHORISED,
                **FAULT_RESPONSES,
            },
        }
    }


def _item_operation(summary: str, item: str, tag: str) -> Schema:
    return {
        "get": {
            "tags": [tag],
            "summary": summary,
            "operationId": f"get{item}",
            "parameters": [
                {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}},
                {
                    "name": "projection",
                    "in": "query",
                    "content": {"application/json": {"schema": _PROJECTION}},
                },
            ],
            "responses": {
                "200": {
                    **_json(_ref(item), "The document"),
                    "headers": {"ETag": {"schema": {"type": "string"}}},
                },
                "304": {"description": "Not modified (If-None-Match holds the current ETag)"},
                "400": _error("The projection cannot be read"),
                "401": _UNAUTHORISED,
                "404": _error("Unknown or malformed id"),
                **FAULT_RESPONSES,
            },
        }
    }


_EXAMPLE_REQUEST: Schema = {
    "customer": {
        "name": "Jane Doe",
        "customer_number": "12345",
        "is_person": True,
        "address": {"address_line_1": "Business Street 456", "zip_code": "54321", "city": "Gothenburg"},
        "mobile_number": "+46709876543",
        "email": "jane.doe@domain.se",
    },
    "account": DEMO_ACCOUNT,
    "creditor": DEMO_CREDITOR,
    "invoice_type": "invoice",
    "invoice_number": "INV-2024-002",
    "invoice_date": "Wed, 21 Jan 2024 10:11:22 GMT",
    "invoice_due_date": "Wed, 31 Jan 2024 10:11:22 GMT",
    "currency": "SEK",
    "matrix": [
        {
            "article_description": "Consulting hours",
            "unit_price": 500,
            "total_price_excluding_vat": 500,
            "unit_vat_percent": "0%",
        }
    ],
}


_RECEIPT_LINKS: Schema = {
    name: {"operationId": f"get{name}", "parameters": {"id": f"$response.body#/{field}"}}
    for name, field in (("Registration", "_id"), ("Invoice", "_invoice"), ("Case", "_case"))
}


def _paths() -> Schema:
    no_key: list[Schema] = []
    return {
        "/invoice--registrations": {
            "post": {
                "tags": ["invoice registrations"],
                "summary": "Register an invoice (creates an invoice, a case and an OCR number)",
                "operationId": "createInvoiceRegistration",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": _ref("InvoiceRegistrationRequest"),
                            "example": _EXAMPLE_REQUEST,
                        }
                    },
                },
                "responses": {
                    "201": {**_json(_ref("Receipt"), "Registered"), "links": _RECEIPT_LINKS},
                    "400": _error("The body is not a JSON object"),
                    "401": _UNAUTHORISED,
                    "422": _json(_ref("ValidationError"), "Insertion failure: the issues per field"),
                    **FAULT_RESPONSES,
                },
            },
            **_list_operation("List registrations", "Registration", "invoice registrations"),
        },
        "/invoice--registrations/{id}": _item_operation(
            "Get a registration", "Registration", "invoice registrations"
        ),
        "/invoices": _list_operation("List invoices", "Invoice", "invoices"),
        "/invoices/{id}": _item_operation("Get the invoice a registration created", "Invoice", "invoices"),
        "/cases": _list_operation("List cases", "Case", "cases"),
        "/cases/{id}": _item_operation("Get the case a registration created", "Case", "cases"),
        "/authenticates/api-code": {
            "get": {
                "tags": ["authentication"],
                "summary": "Exchange an api code's JWT (in x-api-key) for an access token",
                "description": "The JWT carries the claims api_code and exp and is signed (ES256/384/512 or "
                "RS256/384/512) with the key registered for the api code. The body of the answer is the "
                "emulator's choice (Amili does not document it).",
                "operationId": "exchangeApiCode",
                "security": [{"ApiKey": []}],
                "responses": {
                    "200": _json(_ref("AccessToken"), "An access token to send as x-api-key"),
                    "401": _error("The JWT is missing, malformed, badly signed, expired or unknown"),
                    **FAULT_RESPONSES,
                },
            }
        },
        "/_admin/registrations": {
            "get": {
                "tags": ["admin"],
                "summary": "How many registrations each (creditor, invoice_number) has",
                "operationId": "countRegistrations",
                "security": no_key,
                "responses": {"200": _json(_ref("RegistrationCounts"), "The counts")},
            },
            "delete": {
                "tags": ["admin"],
                "summary": "Forget every registration (and its file)",
                "operationId": "clearRegistrations",
                "security": no_key,
                "responses": {"204": {"description": "Cleared"}},
            },
        },
        "/_admin/faults": {
            "get": {
                "tags": ["admin"],
                "summary": "The fault injector's configuration",
                "operationId": "getFaults",
                "security": no_key,
                "responses": {"200": _json(_ref("FaultConfig"), "The configuration")},
            },
            **{
                method: {
                    "tags": ["admin"],
                    "summary": summary,
                    "operationId": f"{method}Faults",
                    "security": no_key,
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": _ref("FaultConfig")}},
                    },
                    "responses": {
                        "200": _json(_ref("FaultConfig"), "The configuration now"),
                        "400": _error("The body is not a JSON object"),
                        "422": _json(_ref("ValidationError"), "An invalid configuration"),
                    },
                }
                for method, summary in (
                    ("put", "Replace the configuration (fields left out take their defaults)"),
                    ("patch", "Change the fields given"),
                )
            },
        },
        "/_admin/load": {
            "get": {
                "tags": ["admin"],
                "summary": "The load on the API: requests, rate-limited 429s, in service and queued",
                "operationId": "getLoad",
                "security": no_key,
                "responses": {"200": _json(_ref("Load"), "The counts")},
            },
            "delete": {
                "tags": ["admin"],
                "summary": "Count from zero again",
                "operationId": "resetLoad",
                "security": no_key,
                "responses": {"204": {"description": "Reset"}},
            },
        },
        "/_admin/tokens": {
            "get": {
                "tags": ["admin"],
                "summary": "How many issued access tokens are live",
                "operationId": "countTokens",
                "security": no_key,
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "properties": {"active": {"type": "integer", "minimum": 0}},
                            "required": ["active"],
                        },
                        "The count",
                    )
                },
            },
            "delete": {
                "tags": ["admin"],
                "summary": "Revoke every issued access token",
                "operationId": "revokeTokens",
                "security": no_key,
                "responses": {"204": {"description": "Revoked"}},
            },
        },
        "/openapi.json": {
            "get": {
                "tags": ["admin"],
                "summary": "This document",
                "operationId": "getOpenApi",
                "security": no_key,
                "responses": {"200": _json({"type": "object"}, "The OpenAPI document")},
            }
        },
    }


def build_document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Amili emulator",
            "version": "1",
            "description": "An emulator of Visma Amili's invoice registration API (Eve conventions), "
            "with fault injection and admin routes for tests. Generated by devkit/emulator/openapi.py.",
        },
        "security": [{"ApiKey": []}],
        "tags": [
            {"name": "invoice registrations"},
            {"name": "invoices"},
            {"name": "cases"},
            {"name": "authentication"},
            {"name": "admin", "description": "The emulator's own routes: no x-api-key, no faults"},
        ],
        "paths": _paths(),
        "components": {
            "securitySchemes": {"ApiKey": {"type": "apiKey", "in": "header", "name": "x-api-key"}},
            "schemas": _schemas(),
        },
    }


def render() -> str:
    return json.dumps(build_document(), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        print("usage: python -m devkit.emulator.openapi [PATH]", file=sys.stderr)
        return 2
    if argv:
        Path(argv[0]).write_text(render(), encoding="utf-8")
    else:
        sys.stdout.write(render())
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
