"""The HTTP client of Amili's invoice registration API.

It speaks only what Amili documents (plus Eve's conventions where Amili is silent), so it works
against the real API as it does against our emulator. Errors become the port's exceptions; the API
key is sent in the ``x-api-key`` header and never appears in a message.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Literal

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport
from pydantic import SecretStr, ValidationError

from service.amili.auth import ApiCodeTokenProvider, StaticToken, TokenSource
from service.amili.models import InvoiceRegistrationReceipt, InvoiceRegistrationRequest
from service.ports import (
    AmiliDuplicate,
    AmiliOutcomeUnknown,
    AmiliRateLimited,
    AmiliRejected,
    AmiliUnauthorized,
    AmiliUnavailable,
)

REGISTRATIONS_PATH = "/invoice--registrations"
MAX_RESULTS = 100  # the most Amili returns in one page
Transport = Literal["aiohttp", "httpx"]


@dataclass(frozen=True, slots=True)
class ApiCodeCredentials:
    """Mint a JWT for ``api_code`` with ``private_key`` (PEM) and exchange it for access tokens."""

    api_code: str
    private_key: SecretStr
    algorithm: str = "ES256"


# endpoint ("register", "find", "get", "token"), status class ("2xx", "4xx", "timeout"...), seconds
RequestObserver = Callable[[str, str, float], None]


@dataclass(frozen=True, slots=True)
class HttpSettings:
    connect_timeout_seconds: float = 5.0
    read_timeout_seconds: float = 30.0
    total_timeout_seconds: float = 45.0
    max_connections: int = 200
    transport: Transport = "aiohttp"


class AmiliClient:
    """``async with AmiliClient(...) as amili: await amili.register(request)``."""

    def __init__(
        self,
        base_url: str,
        credentials: SecretStr | ApiCodeCredentials,
        settings: HttpSettings | None = None,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        observe: RequestObserver | None = None,
    ) -> None:
        self._settings = settings or HttpSettings()
        self._observe = observe
        limits = httpx.Limits(
            max_connections=self._settings.max_connections,
            max_keepalive_connections=self._settings.max_connections,
            # Below the usual 5 s of servers, so an idle connection is never reused as it closes.
            keepalive_expiry=4.0,
        )
        if transport is None and self._settings.transport == "aiohttp":
            transport = AiohttpTransport(limits=limits)
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            timeout=httpx.Timeout(
                self._settings.read_timeout_seconds, connect=self._settings.connect_timeout_seconds
            ),
            limits=limits,
            transport=transport,
            headers={"accept": "application/json"},
        )
        self._tokens: TokenSource
        if isinstance(credentials, ApiCodeCredentials):
            self._tokens = ApiCodeTokenProvider(
                http=self._http,
                api_code=credentials.api_code,
                private_key=credentials.private_key,
                algorithm=credentials.algorithm,
                timeout_seconds=self._settings.total_timeout_seconds,
            )
        else:
            self._tokens = StaticToken(credentials)

    async def __aenter__(self) -> AmiliClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def register(self, request: InvoiceRegistrationRequest) -> InvoiceRegistrationReceipt:
        response = await self._send(
            "register", "POST", REGISTRATIONS_PATH, json_body=request.to_wire(), mutating=True
        )
        if response.status_code in (200, 201):
            # Stored, most likely, but unreadable: the look-up will tell.
            return _receipt(_json_body(response, unreadable=AmiliOutcomeUnknown))
        if response.status_code == 409:
            raise AmiliDuplicate("Amili already holds this invoice number for the creditor")
        if response.status_code in (400, 422):
            issues = _issues(response)
            if any("not unique" in message for path, message in issues.items() if path == "invoice_number"):
                raise AmiliDuplicate("Amili already holds this invoice number for the creditor")
            raise AmiliRejected(response.status_code, issues)
        raise _unexpected(response, mutating=True)

    async def find_registration(
        self, creditor: str, invoice_number: str
    ) -> InvoiceRegistrationReceipt | None:
        """The registration of this invoice, if Amili holds one (the oldest, should there be more)."""
        found = await self.find_registrations(creditor, invoice_number)
        return found[0] if found else None

    async def find_registrations(
        self, creditor: str, invoice_number: str
    ) -> list[InvoiceRegistrationReceipt]:
        """Every registration Amili holds for this invoice, walking all pages, oldest first."""
        where = json.dumps({"creditor": creditor, "invoice_number": invoice_number}, separators=(",", ":"))
        found: list[InvoiceRegistrationReceipt] = []
        page = 1
        while True:
            params = {"where": where, "max_results": str(MAX_RESULTS), "page": str(page), "sort": "_created"}
            response = await self._send("find", "GET", REGISTRATIONS_PATH, params=params, mutating=False)
            if response.status_code != 200:
                raise _unexpected(response, mutating=False)
            body = _json_body(response, unreadable=AmiliUnavailable)
            items = body.get("_items", []) if isinstance(body, dict) else None
            if not isinstance(items, list):
                raise AmiliUnavailable("Amili answered a look-up this client cannot read")
            # Filter again: a server that ignores an unknown ``where`` field must not hand us another invoice.
            found.extend(
                _receipt(item)
                for item in items
                if item.get("creditor") == creditor and item.get("invoice_number") == invoice_number
            )
            total = body.get("_meta", {}).get("total")
            if (
                not items
                or len(items) < MAX_RESULTS
                or (isinstance(total, int) and page * MAX_RESULTS >= total)
            ):
                return found
            page += 1

    async def get_registration(self, registration_id: str) -> InvoiceRegistrationReceipt | None:
        response = await self._send("get", "GET", f"{REGISTRATIONS_PATH}/{registration_id}", mutating=False)
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise _unexpected(response, mutating=False)
        return _receipt(_json_body(response, unreadable=AmiliUnavailable))

    async def _send(
        self,
        endpoint: str,
        method: str,
        path: str,
        *,
        mutating: bool,
        json_body: Mapping[str, Any] | None = None,
        params: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        token = await self._tokens.token()
        response = await self._attempt(endpoint, method, path, token, mutating, json_body, params)
        if response.status_code in (401, 403):
            # A token may expire or be revoked at any time: renew it once, then give up.
            renewed = await self._tokens.refresh(token)
            if renewed is not None:
                response = await self._attempt(endpoint, method, path, renewed, mutating, json_body, params)
        if response.status_code in (401, 403):
            raise AmiliUnauthorized(f"Amili refused the credentials ({response.status_code})")
        return response

    async def _attempt(
        self,
        endpoint: str,
        method: str,
        path: str,
        token: SecretStr,
        mutating: bool,
        json_body: Mapping[str, Any] | None,
        params: Mapping[str, str] | None,
    ) -> httpx.Response:
        started = time.perf_counter()
        status_class = "error"
        try:
            async with asyncio.timeout(self._settings.total_timeout_seconds):
                response = await self._http.request(
                    method,
                    path,
                    json=json_body,
                    params=params,
                    headers={"x-api-key": token.get_secret_value()},
                )
                await response.aread()
            status_class = f"{response.status_code // 100}xx"
            return response
        except (TimeoutError, httpx.TransportError) as error:
            status_class = "timeout" if isinstance(error, TimeoutError | httpx.TimeoutException) else "error"
            if never_sent(error):
                raise AmiliUnavailable(
                    f"{method} {path}: no connection ({error.__class__.__name__})"
                ) from error
            reason = f"{method} {path} failed: {error.__class__.__name__}"
            # The request may have been stored before the answer was lost.
            raise (AmiliOutcomeUnknown(reason) if mutating else AmiliUnavailable(reason)) from error
        finally:
            if self._observe is not None:
                self._observe(endpoint, status_class, time.perf_counter() - started)


def never_sent(error: BaseException) -> bool:
    """Whether the request certainly never reached Amili: the connection was never made.

    httpx-aiohttp reports every aiohttp connection error, including a connection reset after
    the request went out, as ``httpx.ConnectTimeout``; only aiohttp's connector error (the
    connection could not be opened) proves nothing was sent.
    """
    if isinstance(error.__cause__, aiohttp.ClientConnectorError):
        return True
    return isinstance(error, httpx.ConnectError | httpx.ConnectTimeout) and not isinstance(
        error.__cause__, aiohttp.ClientError
    )


def _json_body(response: httpx.Response, *, unreadable: type[AmiliUnavailable]) -> Any:
    try:
        return response.json()
    except ValueError:
        raise unreadable(f"Amili answered HTTP {response.status_code} without a JSON body") from None


def _receipt(body: Any) -> InvoiceRegistrationReceipt:
    try:
        return InvoiceRegistrationReceipt.model_validate(body)
    except ValidationError as error:
        problems = error.error_count()
    # Raised outside the handler, so no exception in the chain quotes the answer's personal data.
    raise AmiliUnavailable(f"Amili answered a registration this client cannot read ({problems} problems)")


def _issues(response: httpx.Response) -> dict[str, str]:
    """Eve's ``_issues`` flattened to dot paths; a body without them becomes one ``_error`` issue."""
    try:
        body = response.json()
    except ValueError:
        return {"_error": f"HTTP {response.status_code} without a JSON body"}
    flat: dict[str, str] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), inner)
        elif isinstance(value, list):
            flat[prefix] = "; ".join(str(item) for item in value)
        else:
            flat[prefix] = str(value)

    if isinstance(body, dict) and isinstance(body.get("_issues"), dict):
        walk("", body["_issues"])
    elif isinstance(body, dict) and isinstance(body.get("_error"), dict):
        flat["_error"] = str(body["_error"].get("message", ""))
    return flat or {"_error": f"HTTP {response.status_code}"}


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None

    return max(0.0, (moment - datetime.now(UTC)).total_seconds())


def _unexpected(response: httpx.Response, *, mutating: bool) -> AmiliUnavailable:
    status = response.status_code
    reason = f"Amili answered HTTP {status}"
    if status == 429:
        return AmiliRateLimited(reason, retry_after=_retry_after(response))
    if mutating and status >= 500:
        # A 5xx on a POST may come from a gateway after the registration was stored.
        return AmiliOutcomeUnknown(reason)
    return AmiliUnavailable(reason, retry_after=_retry_after(response) if status == 503 else None)
