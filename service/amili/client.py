"""The HTTP client of Amili's invoice registration API.

It speaks only what Amili documents (plus Eve's conventions where Amili is silent), so it works
against the real API as it does against our emulator. Errors become the port's exceptions; the API
key is sent in the ``x-api-key`` header and never appears in a message.

Two senders carry the calls and hand back the same ``_Answer``, so that statuses, bodies and
transport errors are judged once: aiohttp's ``ClientSession`` called directly (``transport="aiohttp"``,
the default; httpx's request and response objects cost about as much CPU per call as aiohttp
itself), or httpx (``transport="httpx"``, or any ``httpx.AsyncBaseTransport`` given, as tests give
recording ones). The api-code token exchange always goes through httpx: it is rare.

A path that does not exist at the base URL (404/405, or a 400 without validation issues: this
client always sends valid JSON) is ``AmiliMisconfigured``, never the invoice's rejection. Failed
calls are logged by ``CallLog``: a line for each kind of failure as it starts, one when calls
succeed again, a summary a minute in between; never a line per call.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Literal, Protocol

import aiohttp
import httpx
from pydantic import SecretStr, ValidationError
from yarl import URL

from service.amili.auth import ApiCodeTokenProvider, StaticToken, TokenSource
from service.amili.models import InvoiceRegistrationReceipt, InvoiceRegistrationRequest
from service.flow.budget import RateLimitAnswer
from service.flow.control import AmiliFlow, Call
from service.ports import (
    AmiliDuplicate,
    AmiliError,
    AmiliMisconfigured,
    AmiliOutcomeUnknown,
    AmiliRateLimited,
    AmiliRejected,
    AmiliUnauthorized,
    AmiliUnavailable,
)

log = logging.getLogger(__name__)

REGISTRATIONS_PATH = "/invoice--registrations"
MAX_RESULTS = 100  # the most Amili returns in one page
# Below the usual 5 s of servers, so an idle connection is never reused as it closes.
KEEPALIVE_SECONDS = 4.0
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


class CallLog:
    """Says when calls to Amili fail, in bounded lines (as the broker link does for Kafka).

    - The first failure of a kind (``HTTP 503``, ``ReadTimeout``, ``ClientConnectorError``...):
      one WARNING with the kind, host, method and path. Each kind is announced once until calls
      succeed again, and then again only ``summary_seconds`` after it last was (a flapping
      failure is left to the summary).
    - The first success after an announced failure: one WARNING, with how long calls failed and
      how many did, by kind.
    - In between, at most one summary every ``summary_seconds`` (N calls failed, by kind), written
      by the next call that ends after it is due.

    Never the key, the query (it names the invoice) nor a body. Refused credentials and a
    configuration error are counted here but said by the circuit, once per change.
    """

    def __init__(
        self,
        base_url: str,
        *,
        summary_seconds: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        url = URL(base_url.rstrip("/"))
        self.host = url.host_port_subcomponent or ""
        self.prefix = url.path.rstrip("/")
        self._summary_seconds = summary_seconds
        self._clock = clock
        self._announced: dict[str, float] = {}
        self._told: set[str] = set()  # the kinds announced since calls last succeeded
        self._failing_since: float | None = None  # the first announced failure not yet followed by a success
        self._counts: Counter[str] = Counter()  # failures since the last line that reported them
        self._counting_since: float | None = None

    def failed(self, method: str, path: str, error: AmiliError, *, announce: bool = True) -> None:
        now = self._clock()
        kind = failure_kind(error)
        self._counts[kind] += 1
        if self._counting_since is None:
            self._counting_since = now
        last = self._announced.get(kind)
        if announce and kind not in self._told and (last is None or now - last >= self._summary_seconds):
            self._announced[kind] = now
            self._told.add(kind)
            if self._failing_since is None:
                self._failing_since = now
            log.warning(
                "amili call failed",
                extra={
                    "error": kind,
                    "host": self.host,
                    "method": method,
                    "path": self.prefix + path,
                    "reason": str(error),
                },
            )
            return
        self._summarise(now)

    def succeeded(self) -> None:
        if self._failing_since is None and self._counting_since is None:
            return  # the usual case: nothing to say, no clock read
        now = self._clock()
        if self._failing_since is None:
            self._summarise(now)
            return
        log.warning(
            "amili calls succeed again",
            extra={
                "host": self.host,
                "failing_seconds": round(now - self._failing_since, 1),
                "failed": sum(self._counts.values()),
                "by_error": dict(self._counts),
            },
        )
        self._failing_since = None
        self._told.clear()
        self._counts.clear()
        self._counting_since = None

    def _summarise(self, now: float) -> None:
        since = self._counting_since
        if since is None or now - since < self._summary_seconds:
            return
        log.warning(
            "amili calls still failing" if self._failing_since is not None else "amili calls failed",
            extra={
                "host": self.host,
                "seconds": round(now - since, 1),
                "failed": sum(self._counts.values()),
                "by_error": dict(self._counts),
            },
        )
        self._counts.clear()
        self._counting_since = None


def failure_kind(error: AmiliError) -> str:
    """What failed, in a word: the status Amili answered, else the transport error's class."""
    if error.status is not None:
        return f"HTTP {error.status}"
    cause = error.__cause__
    return cause.__class__.__name__ if cause is not None else error.__class__.__name__


@dataclass(frozen=True, slots=True)
class _Answer:
    """An answer read in full, whichever library carried it."""

    status: int
    headers: Mapping[str, str]  # case-insensitive (httpx's ``Headers``, aiohttp's ``CIMultiDictProxy``)
    content: bytes


class _Sender(Protocol):
    async def send(
        self,
        method: str,
        path: str,
        headers: Mapping[str, str],
        params: Mapping[str, str] | None,
        body: bytes | None,
    ) -> _Answer: ...

    def never_sent(self, error: BaseException) -> bool:
        """Whether the request certainly never reached Amili: no connection was ever had for it."""
        ...

    async def aclose(self) -> None: ...


class AnswerUnreadable(aiohttp.ClientError):
    """Stands in for aiohttp's error on an answer it cannot parse (``ClientResponseError``), which
    quotes the request, its headers (our key among them) included, in its repr."""


class _AiohttpSender:
    """aiohttp's ``ClientSession``, called directly: no httpx object is built per call."""

    def __init__(self, base_url: str, settings: HttpSettings) -> None:
        self._base_url = base_url
        self._settings = settings
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    def _open(self) -> aiohttp.ClientSession:
        # Opened on first use: a session belongs to the running loop, and the client may be built
        # before there is one.
        if self._closed:
            raise RuntimeError("the Amili client is closed")
        settings = self._settings
        url = URL(self._base_url)
        connector = aiohttp.TCPConnector(
            limit=settings.max_connections,
            keepalive_timeout=KEEPALIVE_SECONDS,
            # httpx's context: the same trust store (certifi, or SSL_CERT_FILE / SSL_CERT_DIR) as the
            # httpx path and the token exchange.
            ssl=httpx.create_ssl_context() if url.scheme == "https" else True,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            headers={"accept": "application/json"},
            # ``connect`` covers the wait for a free connection too: either way nothing was sent.
            # The total is the caller's ``asyncio.timeout``.
            timeout=aiohttp.ClientTimeout(
                total=None, connect=settings.connect_timeout_seconds, sock_read=settings.read_timeout_seconds
            ),
            cookie_jar=aiohttp.DummyCookieJar(),  # Amili authenticates by header; no state to keep
            raise_for_status=False,  # every status is the client's to judge
            auto_decompress=True,  # aiohttp asks for gzip and deflate, as httpx does
        )
        return self._session

    async def send(
        self,
        method: str,
        path: str,
        headers: Mapping[str, str],
        params: Mapping[str, str] | None,
        body: bytes | None,
    ) -> _Answer:
        session = self._session or self._open()
        try:
            async with session.request(
                method,
                self._base_url + path,
                params=params,
                data=body,
                headers=headers,
                allow_redirects=False,  # as httpx: a redirect is an unexpected status
            ) as response:
                return _Answer(response.status, response.headers, await response.read())
        except aiohttp.ClientResponseError:
            unreadable = AnswerUnreadable("an answer aiohttp cannot parse")
        raise unreadable  # outside the handler, so that aiohttp's error is in no chain

    def never_sent(self, error: BaseException) -> bool:
        return _aiohttp_never_sent(error)

    async def aclose(self) -> None:
        self._closed = True
        if self._session is not None:
            await self._session.close()


class _HttpxSender:
    """httpx's API, over its own pool or over the transport given."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self._http = http

    async def send(
        self,
        method: str,
        path: str,
        headers: Mapping[str, str],
        params: Mapping[str, str] | None,
        body: bytes | None,
    ) -> _Answer:
        try:
            response = await self._http.request(method, path, content=body, params=params, headers=headers)
        except aiohttp.ClientResponseError:  # httpx-aiohttp lets these through unmapped
            unreadable = AnswerUnreadable("an answer aiohttp cannot parse")
        else:
            return _Answer(response.status_code, response.headers, response.content)
        raise unreadable  # outside the handler, so that aiohttp's error is in no chain

    def never_sent(self, error: BaseException) -> bool:
        # httpx-aiohttp (an ``AiohttpTransport`` given) reports every aiohttp connection error, a
        # reset after the request went out included, as ``httpx.ConnectTimeout``: judge its cause.
        if isinstance(error.__cause__, aiohttp.ClientError):
            return _aiohttp_never_sent(error.__cause__)
        return isinstance(error, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)

    async def aclose(self) -> None:
        await self._http.aclose()


def _aiohttp_never_sent(error: BaseException) -> bool:
    # Both are raised before the request is written: no connection was had for it (aiohttp's
    # connect timeout includes the wait for a free connection of the pool).
    return isinstance(error, aiohttp.ClientConnectorError | aiohttp.ConnectionTimeoutError)


def _httpx_client(
    base_url: str, settings: HttpSettings, transport: httpx.AsyncBaseTransport | None
) -> httpx.AsyncClient:
    limits = httpx.Limits(
        max_connections=settings.max_connections,
        max_keepalive_connections=settings.max_connections,
        keepalive_expiry=KEEPALIVE_SECONDS,
    )
    return httpx.AsyncClient(
        base_url=base_url,
        timeout=httpx.Timeout(settings.read_timeout_seconds, connect=settings.connect_timeout_seconds),
        limits=limits,
        transport=transport,
        headers={"accept": "application/json"},
    )


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
        call_log: CallLog | None = None,
        flow: AmiliFlow | None = None,
    ) -> None:
        self._settings = settings or HttpSettings()
        self._observe = observe
        self._flow = flow
        self._keeps_rate_budget = flow is not None and flow.keeps_rate_budget
        base_url = base_url.rstrip("/")
        self._log = call_log or CallLog(base_url)
        # Where calls go, as a configuration error names it: no user info, no query.
        self._location = f"{URL(base_url).scheme}://{self._log.host}{self._log.prefix}"
        http: httpx.AsyncClient | None = None
        self._sender: _Sender
        if transport is None and self._settings.transport == "aiohttp":
            self._sender = _AiohttpSender(base_url, self._settings)
        else:
            http = _httpx_client(base_url, self._settings, transport)
            self._sender = _HttpxSender(http)
        self._exchange_http: httpx.AsyncClient | None = None  # its own only beside the aiohttp sender
        self._tokens: TokenSource
        if isinstance(credentials, ApiCodeCredentials):
            if http is None:
                # A transport given, so that httpx takes no proxy from the environment: the calls
                # over aiohttp take none either.
                http = self._exchange_http = _httpx_client(
                    base_url, self._settings, httpx.AsyncHTTPTransport()
                )
            self._tokens = ApiCodeTokenProvider(
                http=http,
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
        await self._sender.aclose()
        if self._exchange_http is not None:
            await self._exchange_http.aclose()

    async def register(self, request: InvoiceRegistrationRequest) -> InvoiceRegistrationReceipt:
        try:
            receipt = await self._register(request)
        except (AmiliRejected, AmiliDuplicate):
            self._log.succeeded()  # Amili answered as it should
            raise
        except AmiliError as error:
            self._failed("POST", REGISTRATIONS_PATH, error)
            raise
        self._log.succeeded()
        return receipt

    async def _register(self, request: InvoiceRegistrationRequest) -> InvoiceRegistrationReceipt:
        answer = await self._send(
            "register", "POST", REGISTRATIONS_PATH, body=request.wire_json(), mutating=True
        )
        if answer.status in (200, 201):
            # Stored, most likely, but unreadable: the look-up will tell.
            return _receipt(_json_body(answer, unreadable=AmiliOutcomeUnknown), answer.status)
        if answer.status == 409:
            raise AmiliDuplicate("Amili already holds this invoice number for the creditor")
        if answer.status == 422 or (answer.status == 400 and _has_issues(answer)):
            # 422 is Eve's validation error (400 where Eve is configured so: it names the issues).
            issues = _issues(answer)
            if any("not unique" in message for path, message in issues.items() if path == "invoice_number"):
                raise AmiliDuplicate("Amili already holds this invoice number for the creditor")
            raise AmiliRejected(answer.status, issues)
        if answer.status in (400, 404, 405):
            # No such endpoint here, or a 400 without issues, which Eve gives a body that is not
            # JSON: ours always is, so something between us and Amili is not what we think.
            raise self._misconfigured("POST", REGISTRATIONS_PATH, answer.status)
        raise _unexpected(answer, mutating=True, budget=self._keeps_rate_budget)

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
        try:
            found = await self._find_registrations(creditor, invoice_number)
        except AmiliError as error:
            self._failed("GET", REGISTRATIONS_PATH, error)
            raise
        self._log.succeeded()
        return found

    async def _find_registrations(
        self, creditor: str, invoice_number: str
    ) -> list[InvoiceRegistrationReceipt]:
        where = json.dumps({"creditor": creditor, "invoice_number": invoice_number}, separators=(",", ":"))
        found: list[InvoiceRegistrationReceipt] = []
        page = 1
        while True:
            params = {"where": where, "max_results": str(MAX_RESULTS), "page": str(page), "sort": "_created"}
            answer = await self._send("find", "GET", REGISTRATIONS_PATH, params=params, mutating=False)
            if answer.status in (404, 405):
                # A look-up that finds nothing is an empty ``_items`` (Eve): a 404 means that the
                # path itself does not exist.
                raise self._misconfigured("GET", REGISTRATIONS_PATH, answer.status)
            if answer.status != 200:
                raise _unexpected(answer, mutating=False, budget=self._keeps_rate_budget)
            body = _json_body(answer, unreadable=AmiliUnavailable)
            items = body.get("_items", []) if isinstance(body, dict) else None
            meta = body.get("_meta", {}) if isinstance(body, dict) else None
            if (
                not isinstance(items, list)
                or not all(isinstance(item, dict) for item in items)
                or not isinstance(meta, dict)
            ):
                raise AmiliUnavailable("Amili answered a look-up this client cannot read")
            # Filter again: a server that ignores an unknown ``where`` field must not hand us another invoice.
            found.extend(
                _receipt(item)
                for item in items
                if item.get("creditor") == creditor and item.get("invoice_number") == invoice_number
            )
            total = meta.get("total")
            if (
                not items
                or len(items) < MAX_RESULTS
                or (isinstance(total, int) and page * MAX_RESULTS >= total)
            ):
                return found
            page += 1

    async def get_registration(self, registration_id: str) -> InvoiceRegistrationReceipt | None:
        try:
            found = await self._get_registration(registration_id)
        except AmiliError as error:
            self._failed("GET", f"{REGISTRATIONS_PATH}/{{id}}", error)
            raise
        self._log.succeeded()
        return found

    async def _get_registration(self, registration_id: str) -> InvoiceRegistrationReceipt | None:
        answer = await self._send("get", "GET", f"{REGISTRATIONS_PATH}/{registration_id}", mutating=False)
        if answer.status == 404:
            return None  # no such registration (an item's 404 cannot tell a wrong base URL apart)
        if answer.status == 405:
            raise self._misconfigured("GET", f"{REGISTRATIONS_PATH}/{{id}}", answer.status)
        if answer.status != 200:
            raise _unexpected(answer, mutating=False, budget=self._keeps_rate_budget)
        return _receipt(_json_body(answer, unreadable=AmiliUnavailable), answer.status)

    async def get_case(self, case_id: str) -> dict[str, Any] | None:
        """Amili's case ``case_id`` (``GET /cases/{id}``) as Amili answers it, or ``None`` when the
        answer is no case (any status but 200, or a body that is not a JSON object). Refused
        credentials and an Amili that cannot be reached raise, as every call does."""
        answer = await self._send("case", "GET", f"/cases/{case_id}", mutating=False)
        if answer.status != 200:
            return None
        try:
            body = json.loads(answer.content)
        except (ValueError, RecursionError):
            return None
        return body if isinstance(body, dict) else None

    def _misconfigured(self, method: str, path: str, status: int) -> AmiliMisconfigured:
        return AmiliMisconfigured(method, self._location + path, status)

    def _failed(self, method: str, path: str, error: AmiliError) -> None:
        # Refused credentials and a configuration error are counted here, but said by the circuit
        # (once per change, at ERROR): they hold every call back until they are over.
        held = isinstance(error, AmiliUnauthorized | AmiliMisconfigured)
        self._log.failed(method, path, error, announce=not held)

    async def _send(
        self,
        endpoint: str,
        method: str,
        path: str,
        *,
        mutating: bool,
        body: bytes | None = None,
        params: Mapping[str, str] | None = None,
    ) -> _Answer:
        token = await self._tokens.token()
        answer = await self._attempt(endpoint, method, path, token, mutating, body, params)
        if answer.status in (401, 403):
            # A token may expire or be revoked at any time: renew it once, then give up.
            renewed = await self._tokens.refresh(token)
            if renewed is not None:
                answer = await self._attempt(endpoint, method, path, renewed, mutating, body, params)
        if answer.status in (401, 403):
            refused = AmiliUnauthorized(
                f"{method} {self._location}{path}: Amili refused the credentials ({answer.status})"
            )
            refused.status = answer.status
            raise refused
        return answer

    async def _attempt(
        self,
        endpoint: str,
        method: str,
        path: str,
        token: SecretStr,
        mutating: bool,
        body: bytes | None,
        params: Mapping[str, str] | None,
    ) -> _Answer:
        headers = {"x-api-key": token.get_secret_value()}
        if body is not None:
            headers["content-type"] = "application/json"
        async with self._flow.call() if self._flow is not None else _unmetered() as call:
            return await self._timed(endpoint, method, path, headers, mutating, body, params, call)

    async def _timed(
        self,
        endpoint: str,
        method: str,
        path: str,
        headers: Mapping[str, str],
        mutating: bool,
        body: bytes | None,
        params: Mapping[str, str] | None,
        call: Call,
    ) -> _Answer:
        started = time.perf_counter()
        status_class = "error"
        try:
            async with asyncio.timeout(self._settings.total_timeout_seconds):
                answer = await self._sender.send(method, path, headers, params, body)
            status_class = f"{answer.status // 100}xx"
            call.answered(answer.status, rate_limit_answer(answer.headers, answer.status))
            return answer
        except (TimeoutError, httpx.TransportError, aiohttp.ClientError) as error:
            status_class = "timeout" if isinstance(error, TimeoutError | httpx.TimeoutException) else "error"
            if status_class == "timeout":
                call.timeout()
            if self._sender.never_sent(error):
                raise AmiliUnavailable(
                    f"{method} {path}: no connection ({error.__class__.__name__})"
                ) from error
            reason = f"{method} {path} failed: {error.__class__.__name__}"
            # The request may have been stored before the answer was lost.
            raise (AmiliOutcomeUnknown(reason) if mutating else AmiliUnavailable(reason)) from error
        finally:
            if self._observe is not None:
                self._observe(endpoint, status_class, time.perf_counter() - started)


def _json_body(answer: _Answer, *, unreadable: type[AmiliUnavailable]) -> Any:
    try:
        return json.loads(answer.content)
    except (ValueError, RecursionError):  # not JSON, or nested past what Python can read
        error = unreadable(f"Amili answered HTTP {answer.status} without a JSON body")
    error.status = answer.status
    raise error


def _receipt(body: Any, status: int | None = None) -> InvoiceRegistrationReceipt:
    try:
        return InvoiceRegistrationReceipt.model_validate(body)
    except ValidationError as error:
        problems = error.error_count()
    # Raised outside the handler, so no exception in the chain quotes the answer's personal data.
    unreadable = AmiliUnavailable(
        f"Amili answered a registration this client cannot read ({problems} problems)"
    )
    unreadable.status = status
    raise unreadable


def _has_issues(answer: _Answer) -> bool:
    """Whether the answer names validation issues (Eve's ``_issues``), as a rejection does."""
    try:
        body = json.loads(answer.content)
    except (ValueError, RecursionError):
        return False
    return isinstance(body, dict) and isinstance(body.get("_issues"), dict) and bool(body["_issues"])


def _issues(answer: _Answer) -> dict[str, str]:
    """Eve's ``_issues`` flattened to dot paths; a body without them becomes one ``_error`` issue."""
    try:
        body = json.loads(answer.content)
    except (ValueError, RecursionError):
        return {"_error": f"HTTP {answer.status} without a JSON body"}
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
        try:
            walk("", body["_issues"])
        except RecursionError:
            return {"_error": f"HTTP {answer.status} with issues nested too deep to read"}
    elif isinstance(body, dict) and isinstance(body.get("_error"), dict):
        flat["_error"] = str(body["_error"].get("message", ""))
    return flat or {"_error": f"HTTP {answer.status}"}


@contextlib.asynccontextmanager
async def _unmetered() -> AsyncIterator[Call]:
    yield Call()


EPOCH_THRESHOLD = 1_000_000_000
"""An ``X-RateLimit-Reset`` above this is a moment (seconds since the epoch, as GitHub sends it);
below, seconds from now (as the IETF RateLimit draft counts)."""


def rate_limit_answer(headers: Mapping[str, str], status: int) -> RateLimitAnswer:
    """What an answer's ``X-RateLimit-*`` (and a 429's ``Retry-After``) say; unreadable values
    count as unsaid."""
    limit = _header_number(headers, "x-ratelimit-limit")
    remaining = _header_number(headers, "x-ratelimit-remaining")
    reset = _header_number(headers, "x-ratelimit-reset")
    if limit is None and remaining is None and reset is None and status != 429:
        return RateLimitAnswer()
    resets_at = None
    if reset is not None:
        resets_at = reset if reset > EPOCH_THRESHOLD else time.time() + reset
    return RateLimitAnswer(
        limit=None if limit is None else int(limit),
        remaining=None if remaining is None else int(remaining),
        resets_at=resets_at,
        retry_after=_retry_after_value(headers.get("retry-after")) if status == 429 else None,
    )


def _header_number(headers: Mapping[str, str], name: str) -> float | None:
    value = headers.get(name)
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if number >= 0 and math.isfinite(number) else None


def _retry_after(answer: _Answer) -> float | None:
    return _retry_after_value(answer.headers.get("retry-after"))


def _retry_after_value(value: str | None) -> float | None:
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


def _unexpected(answer: _Answer, *, mutating: bool, budget: bool) -> AmiliUnavailable:
    """``budget``: the flow's rate budget holds every call back after a 429, until the window's
    end; the refused call may then be tried again at once (it waits in the budget, to the
    millisecond, where Retry-After counts whole seconds)."""
    status = answer.status
    reason = f"Amili answered HTTP {status}"
    error: AmiliUnavailable
    if status == 429:
        error = AmiliRateLimited(reason, retry_after=0.0 if budget else _retry_after(answer))
    elif mutating and status >= 500:
        # A 5xx on a POST may come from a gateway after the registration was stored.
        error = AmiliOutcomeUnknown(reason)
    else:
        error = AmiliUnavailable(reason, retry_after=_retry_after(answer) if status == 503 else None)
    error.status = status
    return error
