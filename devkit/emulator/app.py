"""The emulator's HTTP API (an ASGI app), in Amili's paths, shapes and Eve conventions.

API routes (``x-api-key`` required, faults applied):
  POST /invoice--registrations, GET /invoice--registrations[/{id}], GET /invoices[/{id}],
  GET /cases[/{id}], GET /authenticates/api-code (the JWT in ``x-api-key``; see ``auth.py``).
Admin routes (no key, no faults): GET/DELETE /_admin/registrations, GET/PUT/PATCH /_admin/faults,
  GET/DELETE /_admin/load, GET/DELETE /_admin/tokens, and GET /openapi.json (the document of all of
  them, see ``openapi.py``).

Errors are Eve's: ``{"_status": "ERR", "_error": {"code", "message"}}``, plus ``_issues`` for 422.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from devkit.emulator.auth import Authenticator, AuthError
from devkit.emulator.faults import FaultConfig, FaultMiddleware, Faults
from devkit.emulator.ids import etag, object_id, ocr_number, rfc1123_now
from devkit.emulator.query import ListQuery, QueryError, parse_projection, project
from devkit.emulator.settings import EmulatorSettings
from devkit.emulator.store import DuplicateInvoiceNumber, RegistrationStore
from devkit.emulator.validation import Directory, is_object_id, normalise_dates, registration_issues

Handler = Callable[[Request], Awaitable[Response]]

NOT_FOUND = "The requested URL was not found on the server."
BAD_REQUEST = "The browser (or proxy) sent a request that this server could not understand."
UNAUTHORISED = "Please provide proper credentials"
INSERTION_FAILURE = "Insertion failure: 1 document(s) contain(s) error(s)"


def error(
    status: int,
    message: str,
    issues: dict[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {"_status": "ERR", "_error": {"code": status, "message": message}}
    if issues is not None:
        body["_issues"] = issues
    return JSONResponse(body, status_code=status, headers=headers)


def insertion_failure(issues: dict[str, Any]) -> JSONResponse:
    return error(422, INSERTION_FAILURE, issues)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


async def _json_object(request: Request) -> dict[str, Any] | Response:
    """The request's JSON object, or the 400 that answers a body that is not one (NaN and Infinity
    are not JSON)."""
    try:
        body = json.loads(await request.body(), parse_constant=_reject_constant)
    except (ValueError, RecursionError):  # a ValueError: not UTF-8, not JSON, or NaN/Infinity
        return error(400, BAD_REQUEST)
    if not isinstance(body, dict):
        return error(400, "The request body must be a JSON object")
    return body


class Emulator:
    def __init__(self, settings: EmulatorSettings, *, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.store = RegistrationStore(Path(settings.store_path) if settings.store_path else None)
        self.directory = Directory(
            accounts=frozenset(settings.accounts),
            creditors=frozenset(settings.creditors),
            inactive_accounts=frozenset(settings.inactive_accounts),
            inactive_creditors=frozenset(settings.inactive_creditors),
        )
        self.auth = Authenticator(
            settings.api_keys, settings.api_code_keys, settings.access_token_lifetime_seconds, clock
        )
        self.faults = Faults(FaultConfig.from_settings(settings), clock=clock, client_of=self.auth.client_of)

    def app(self) -> Starlette:
        guarded = self._guarded
        return Starlette(
            routes=[
                Route("/invoice--registrations", guarded(self.registrations), methods=["GET", "POST"]),
                Route("/invoice--registrations/{id}", guarded(self.get_registration), methods=["GET"]),
                Route("/invoices", guarded(self.list_invoices), methods=["GET"]),
                Route("/invoices/{id}", guarded(self.get_invoice), methods=["GET"]),
                Route("/cases", guarded(self.list_cases), methods=["GET"]),
                Route("/cases/{id}", guarded(self.get_case), methods=["GET"]),
                Route("/authenticates/api-code", self.exchange_api_code, methods=["GET"]),
                Route("/_admin/registrations", self.admin_registrations, methods=["GET", "DELETE"]),
                Route("/_admin/faults", self.admin_faults, methods=["GET", "PUT", "PATCH"]),
                Route("/_admin/load", self.admin_load, methods=["GET", "DELETE"]),
                Route("/_admin/tokens", self.admin_tokens, methods=["GET", "DELETE"]),
                Route("/openapi.json", self.openapi, methods=["GET"]),
            ],
            middleware=[Middleware(FaultMiddleware, faults=self.faults)],
            exception_handlers={HTTPException: _http_exception},
        )

    def _guarded(self, handler: Handler) -> Handler:
        async def guarded(request: Request) -> Response:
            if not self.auth.accepts(request.headers.get("x-api-key", "")):
                return error(401, UNAUTHORISED)
            return await handler(request)

        guarded.__name__ = handler.__name__
        return guarded

    # Invoice registrations

    async def registrations(self, request: Request) -> Response:
        if request.method == "POST":
            return await self.create_registration(request)
        return await self.list_registrations(request)

    async def create_registration(self, request: Request) -> Response:
        document = await _json_object(request)
        if isinstance(document, Response):
            return document
        issues = registration_issues(
            document,
            self.directory,
            check_id_numbers=self.settings.check_id_numbers,
            is_registered=self.store.contains,
        )
        if issues:
            return insertion_failure(issues)
        now = rfc1123_now()
        registration_id = object_id()
        stored = {
            **normalise_dates(document),
            "_id": registration_id,
            "_created": now,
            "_updated": now,
            "_invoice": registration_id,  # as in Amili's example: the invoice shares the id
            "_case": object_id(),
            "_ocr_number": object_id(),
            "ocr_number_ocr": ocr_number(),
        }
        stored["_etag"] = etag(stored)
        try:
            self.store.add(stored)
        except DuplicateInvoiceNumber:  # not reached while validation and add run without a pause
            issue = f"value '{document['invoice_number']}' is not unique"
            return insertion_failure({"invoice_number": issue})
        receipt = {
            "_updated": now,
            "_created": now,
            "_etag": stored["_etag"],
            "_id": registration_id,
            "_status": "OK",
            "_invoice": stored["_invoice"],
            "_case": stored["_case"],
            "_ocr_number": stored["_ocr_number"],
            "ocr_number_ocr": stored["ocr_number_ocr"],
        }
        return JSONResponse(receipt, status_code=201)

    async def get_registration(self, request: Request) -> Response:
        return _item(request, self.store.get)

    async def list_registrations(self, request: Request) -> Response:
        return _list(request, self._registration_candidates)

    def _registration_candidates(self, query: ListQuery) -> Iterable[dict[str, Any]]:
        creditor, number = query.where.get("creditor"), query.where.get("invoice_number")
        if isinstance(creditor, str) and isinstance(number, str):  # the client's look-up, indexed
            found = self.store.by_invoice(creditor, number)
            return [] if found is None else [found]
        return self.store.all()

    # Invoices and cases

    async def get_invoice(self, request: Request) -> Response:
        return _item(request, self.store.invoice)

    async def list_invoices(self, request: Request) -> Response:
        return _list(request, lambda _: self.store.invoices())

    async def get_case(self, request: Request) -> Response:
        return _item(request, self.store.case)

    async def list_cases(self, request: Request) -> Response:
        return _list(request, lambda _: self.store.cases())

    # Authentication

    async def exchange_api_code(self, request: Request) -> Response:
        token = request.headers.get("x-api-key", "")
        if not token:
            return error(401, UNAUTHORISED)
        try:
            issued = self.auth.exchange(token)
        except AuthError as refused:
            return error(401, str(refused))
        return JSONResponse(issued.body())

    # Admin

    async def admin_registrations(self, request: Request) -> Response:
        """A read-out for tests: how many registrations each (creditor, invoice_number) has."""
        if request.method == "DELETE":
            self.store.clear()
            return Response(status_code=204)
        documents = self.store.all()
        counts: dict[str, int] = {}
        for doc in documents:
            key = f"{doc['creditor']}/{doc['invoice_number']}"
            counts[key] = counts.get(key, 0) + 1
        return JSONResponse({"total": len(documents), "per_invoice": counts})

    async def admin_faults(self, request: Request) -> Response:
        """The fault injector's configuration: GET reads it, PUT replaces it, PATCH changes fields."""
        if request.method != "GET":
            changes = await _json_object(request)
            if isinstance(changes, Response):
                return changes
            base = self.faults.config.model_dump() if request.method == "PATCH" else {}
            try:
                config = FaultConfig.model_validate({**base, **changes})
            except ValidationError as invalid:
                return error(422, "Invalid fault configuration", _pydantic_issues(invalid))
            self.faults.replace(config, reseed=request.method == "PUT" or "fault_seed" in changes)
        return JSONResponse(self.faults.config.model_dump())

    async def admin_load(self, request: Request) -> Response:
        """The load on the API since start or the last DELETE: requests, rate-limited 429s, requests
        in service and queued now, and the maxima of those two. DELETE counts from 0 again."""
        if request.method == "DELETE":
            self.faults.reset_load()
            return Response(status_code=204)
        return JSONResponse(self.faults.load())

    async def admin_tokens(self, request: Request) -> Response:
        """Access tokens issued by the exchange: GET counts the live ones, DELETE revokes them all."""
        if request.method == "DELETE":
            self.auth.revoke_all()
            return Response(status_code=204)
        return JSONResponse({"active": self.auth.active_tokens()})

    async def openapi(self, request: Request) -> Response:
        from devkit.emulator.openapi import build_document

        return JSONResponse(build_document())


def _item(request: Request, lookup: Callable[[str], dict[str, Any] | None]) -> Response:
    document_id = request.path_params["id"]
    document = lookup(document_id) if is_object_id(document_id) else None
    if document is None:
        return error(404, NOT_FOUND)
    tag = f'"{document["_etag"]}"'
    if request.headers.get("if-none-match") in (tag, document["_etag"]):
        return Response(status_code=304, headers={"ETag": tag})
    try:
        projection = parse_projection(request.query_params.get("projection"))
    except QueryError as bad:
        return error(400, str(bad))
    return JSONResponse(project(document, projection), headers={"ETag": tag})


def _list(request: Request, candidates: Callable[[ListQuery], Iterable[dict[str, Any]]]) -> Response:
    try:
        query = ListQuery.parse(request.query_params)
    except QueryError as bad:
        return error(400, str(bad))
    return JSONResponse(query.run(candidates(query)))


def _pydantic_issues(invalid: ValidationError) -> dict[str, Any]:
    issues: dict[str, Any] = {}
    for problem in invalid.errors():
        field = ".".join(str(part) for part in problem["loc"]) or "_schema"
        issues[field] = "unknown field" if problem["type"] == "extra_forbidden" else problem["msg"]
    return issues


async def _http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    messages = {404: NOT_FOUND, 405: "The method is not allowed for the requested URL."}
    return error(exc.status_code, messages.get(exc.status_code, exc.detail), headers=exc.headers)


def create_app(settings: EmulatorSettings | None = None) -> Starlette:
    return Emulator(settings or EmulatorSettings()).app()
