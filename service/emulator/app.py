"""The emulator's HTTP API (an ASGI app), in Amili's paths, shapes and Eve conventions."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from service.amili.wire import OBJECT_ID_PATTERN, RFC1123_PATTERN
from service.config import EmulatorSettings
from service.domain.swedish_ids import organisationsnummer_problem, personnummer_problem
from service.emulator.ids import etag, object_id, ocr_number, rfc1123_now
from service.emulator.store import DuplicateInvoiceNumber, RegistrationStore, matches
from service.emulator.validation import REGISTRATION, customer_type_issue, validate_document

MAX_RESULTS_LIMIT = 100
DEFAULT_MAX_RESULTS = 25


def error(status: int, message: str, issues: dict[str, Any] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"_status": "ERR", "_error": {"code": status, "message": message}}
    if issues is not None:
        body["_issues"] = issues
    return JSONResponse(body, status_code=status)


def insertion_failure(issues: dict[str, Any]) -> JSONResponse:
    return error(422, "Insertion failure: 1 document(s) contain(s) error(s)", issues)


class Emulator:
    def __init__(self, settings: EmulatorSettings) -> None:
        self.settings = settings
        self.store = RegistrationStore(Path(settings.store_path) if settings.store_path else None)

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/invoice--registrations", self.create_registration, methods=["POST"]),
                Route("/invoice--registrations", self.list_registrations, methods=["GET"]),
                Route("/invoice--registrations/{id}", self.get_registration, methods=["GET"]),
                Route("/_admin/registrations", self.admin_registrations, methods=["GET", "DELETE"]),
            ]
        )

    def _authorised(self, request: Request) -> bool:
        return request.headers.get("x-api-key", "") in self.settings.api_keys

    async def _delay(self) -> None:
        if self.settings.latency_ms > 0:
            await asyncio.sleep(self.settings.latency_ms / 1000)

    async def create_registration(self, request: Request) -> Response:
        await self._delay()
        if not self._authorised(request):
            return error(401, "Please provide proper credentials")
        try:
            document = json.loads(await request.body())
        except (UnicodeDecodeError, json.JSONDecodeError):
            return error(400, "The browser (or proxy) sent a request that this server could not understand.")
        if not isinstance(document, dict):
            return error(400, "The request body must be a JSON object")
        issues = self._issues(document)
        if issues:
            return insertion_failure(issues)
        now = rfc1123_now()
        registration_id = object_id()
        stored = {
            **document,
            "_id": registration_id,
            "_created": now,
            "_updated": now,
            "_invoice": registration_id,
            "_case": object_id(),
            "_ocr_number": object_id(),
            "ocr_number_ocr": ocr_number(),
        }
        stored["_etag"] = etag(stored)
        try:
            self.store.add(stored)
        except DuplicateInvoiceNumber:
            return insertion_failure(
                {"invoice_number": f"value '{document['invoice_number']}' is not unique"}
            )
        return JSONResponse(
            {
                "_updated": now,
                "_created": now,
                "_etag": stored["_etag"],
                "_id": registration_id,
                "_status": "OK",
                "_invoice": stored["_invoice"],
                "_case": stored["_case"],
                "_ocr_number": stored["_ocr_number"],
                "ocr_number_ocr": stored["ocr_number_ocr"],
            },
            status_code=201,
        )

    def _issues(self, document: dict[str, Any]) -> dict[str, Any]:
        issues = validate_document(document, REGISTRATION)
        if issues:
            return issues
        if document["account"] not in self.settings.accounts:
            issues["account"] = f"value '{document['account']}' must exist in resource 'accounts'"
        if document["creditor"] not in self.settings.creditors:
            issues["creditor"] = f"value '{document['creditor']}' must exist in resource 'creditors'"
        customer = document["customer"]
        customer_issues: dict[str, Any] = {}
        if problem := customer_type_issue(customer):
            customer_issues["is_person"] = problem
        id_number = customer.get("id_number")
        if self.settings.check_id_numbers and id_number is not None:
            if customer.get("is_person") is True and (problem := personnummer_problem(id_number)):
                customer_issues["id_number"] = f"personnummer {problem}"
            if customer.get("is_company") is True and (problem := organisationsnummer_problem(id_number)):
                customer_issues["id_number"] = f"organisationsnummer {problem}"
        if customer_issues:
            issues["customer"] = customer_issues
        if not document["matrix"]:
            issues["matrix"] = "empty values not allowed"
        return issues

    async def get_registration(self, request: Request) -> Response:
        await self._delay()
        if not self._authorised(request):
            return error(401, "Please provide proper credentials")
        registration_id = request.path_params["id"]
        document = self.store.get(registration_id) if _is_object_id(registration_id) else None
        if document is None:
            return error(404, "The requested URL was not found on the server.")
        return JSONResponse(document)

    async def list_registrations(self, request: Request) -> Response:
        await self._delay()
        if not self._authorised(request):
            return error(401, "Please provide proper credentials")
        try:
            where = json.loads(request.query_params.get("where", "{}"))
            page = int(request.query_params.get("page", "1"))
            max_results = int(request.query_params.get("max_results", str(DEFAULT_MAX_RESULTS)))
        except (json.JSONDecodeError, ValueError):
            return error(400, "Unable to parse the query parameters")
        if not isinstance(where, dict) or page < 1 or max_results < 1:
            return error(400, "Unable to parse the query parameters")
        max_results = min(max_results, MAX_RESULTS_LIMIT)
        items = [doc for doc in self.store.all() if matches(doc, where)]
        for field, descending in reversed(_sort_keys(request.query_params.get("sort"))):
            items.sort(key=_sort_value(field), reverse=descending)
        start = (page - 1) * max_results
        return JSONResponse(
            {
                "_items": items[start : start + max_results],
                "_meta": {"total": len(items), "max_results": max_results, "page": page},
            }
        )

    async def admin_registrations(self, request: Request) -> Response:
        """A read-out for tests: how many registrations each (creditor, invoice_number) has."""
        if request.method == "DELETE":
            self.store.clear()
            return Response(status_code=204)
        counts: dict[str, int] = {}
        for doc in self.store.all():
            key = f"{doc['creditor']}/{doc['invoice_number']}"
            counts[key] = counts.get(key, 0) + 1
        return JSONResponse({"total": len(self.store.all()), "per_invoice": counts})


def _is_object_id(value: str) -> bool:

    return re.match(OBJECT_ID_PATTERN, value) is not None


def _sort_keys(sort: str | None) -> list[tuple[str, bool]]:
    if not sort:
        return [("_created", False)]
    return [(part.lstrip("-"), part.startswith("-")) for part in sort.split(",") if part.strip("-")]


def _sort_value(field: str) -> Callable[[dict[str, Any]], tuple[int, str]]:
    def key(document: dict[str, Any]) -> tuple[int, str]:
        value = document.get(field)
        if isinstance(value, str) and RFC1123_PATTERN.match(value):
            return (1, parsedate_to_datetime(value).isoformat())
        return (0 if value is None else 1, "" if value is None else str(value))

    return key


def create_app(settings: EmulatorSettings | None = None) -> Starlette:
    return Emulator(settings or EmulatorSettings()).app()
