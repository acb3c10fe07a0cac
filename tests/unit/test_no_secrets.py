"""No key, token or personal data in an exception's text or in a log line.

The client is driven through every error path (401/403, 400/409/422 with issues that echo values,
429, 5xx, unreadable answers, timeouts, dropped and refused connections, a failing token exchange,
a broken private key) with a secret key and a payload full of personal data, against a scripted Amili
that echoes whatever it was sent. Every log record (all loggers, DEBUG) is formatted with the
service's ``JsonFormatter``; every exception's ``str``, ``repr`` and ``args`` are checked, and so is
the line ``log.exception`` would write for it. Then the processor, whose result events may carry
Amili's issues (that is the contract to billing) but whose log lines must not.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import secrets
import traceback
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx
import pytest
from httpx_aiohttp import AiohttpTransport
from pydantic import SecretStr

from devkit.emulator.server import serve_emulator
from devkit.emulator.settings import DEMO_ACCOUNT, DEMO_CREDITOR, EmulatorSettings
from devkit.localkafka import free_port
from service.amili.client import AmiliClient, ApiCodeCredentials, HttpSettings
from service.amili.models import InvoiceRegistrationRequest
from service.domain.outcomes import Outcome
from service.ops.logging import JsonFormatter
from service.ports import AmiliOutcomeUnknown, AmiliRejected, AmiliUnauthorized, AmiliUnavailable
from tests.fakes import structured_record
from tests.unit.test_amili_auth import key_pair
from tests.unit.test_amili_client import links
from tests.unit.test_processing import World

# Letters only: a run of digits in the key could be redacted as a phone number by chance, which
# would make the vacuity check below fail for no reason of the code's.
API_KEY = "amili-live-key-" + "".join(secrets.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(32))
PRIVATE_PEM, PUBLIC_PEM = key_pair("ES256")
BROKEN_PEM = "\n".join(
    (
        "-----BEGIN PRIVATE KEY-----",
        "bm90LWEta2V5LWJ1dC1zZWNyZXQtYWxsLXRoZS1zYW1lCg==",
        "-----END PRIVATE KEY-----",
        "",
    )
)
API_CODE = "api-code-1"
PERSONNUMMER = "811218-9876"
PERSONAL_DATA = (
    PERSONNUMMER,
    "198112189876",
    "8112189876",
    "astrid.lindqvist@example.se",
    "+46701234567",
    "070-123 45 67",
)

PAYLOAD: dict[str, Any] = {
    "account": DEMO_ACCOUNT,
    "creditor": DEMO_CREDITOR,
    "customer": {
        "name": "Astrid Lindqvist",
        "customer_number": "C-20931",
        "id_number": PERSONNUMMER,
        "is_person": True,
        "address": {"address_line_1": "Storgatan 12", "zip_code": "11122", "city": "Stockholm"},
        "mobile_number": "+46701234567",
        "email": "astrid.lindqvist@example.se",
    },
    "invoice_type": "invoice",
    "invoice_number": "NS-1001",
    "invoice_date": "Fri, 20 Nov 2026 00:00:00 GMT",
    "invoice_due_date": "Sun, 20 Dec 2026 00:00:00 GMT",
    "currency": "SEK",
    "your_reference": "198112189876",
    "invoice_body_text": "Questions? Call 070-123 45 67 or write to astrid.lindqvist@example.se",
    "matrix": [{"article_description": "Broadband", "total_price_excluding_vat": 399}],
}
REQUEST = InvoiceRegistrationRequest.model_validate(PAYLOAD)


def pem_fragments(pem: str) -> list[str]:
    return [pem, *(line for line in pem.splitlines() if len(line) >= 16 and "-----" not in line)]


@dataclass
class Secrets:
    """What must never show: the key, the private key, and every JWT and access token handed out."""

    jwts: list[str] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)

    def all(self) -> list[str]:
        signatures = [jwt.rsplit(".", 1)[-1] for jwt in self.jwts]
        return [
            API_KEY,
            *pem_fragments(PRIVATE_PEM),
            *pem_fragments(BROKEN_PEM),
            *self.jwts,
            *signatures,
            *self.tokens,
        ]


def leaks(text: str, forbidden: Iterable[str]) -> list[str]:
    return [value for value in forbidden if value and value in text]


# A scripted Amili that echoes -----------------------------------------------------------------------

Answer = Callable[[httpx.Request], Awaitable[httpx.Response]]


def echo(request: httpx.Request) -> str:
    """Everything the request carried: the key, the URL and the body (the personal data)."""
    return f"x-api-key={request.headers.get('x-api-key')} {request.url} {request.content.decode()}"


def eve(status: int, message: str, issues: dict[str, Any] | None = None) -> httpx.Response:
    body: dict[str, Any] = {"_status": "ERR", "_error": {"code": status, "message": message}}
    if issues is not None:
        body["_issues"] = issues
    return httpx.Response(status, json=body)


def answering(make: Callable[[httpx.Request], httpx.Response]) -> Answer:
    async def answer(request: httpx.Request) -> httpx.Response:
        return make(request)

    return answer


def raising(error: type[httpx.TransportError], message: str) -> Answer:
    async def answer(request: httpx.Request) -> httpx.Response:
        raise error(message, request=request)

    return answer


async def never(request: httpx.Request) -> httpx.Response:
    await asyncio.sleep(30)  # beyond the client's total timeout
    raise AssertionError("not reached")


ECHOED_ID_NUMBER_ISSUE = f"value '{PERSONNUMMER}' is not unique"
ECHOED_ISSUES: dict[str, Any] = {
    "customer": {
        "id_number": ECHOED_ID_NUMBER_ISSUE,
        "email": "value 'astrid.lindqvist@example.se' is not a valid email",
        "mobile_number": "value '+46701234567' does not match regex '^07'",
    },
    "your_reference": "value '198112189876' is not allowed",
}


def unreadable_registration(request: httpx.Request) -> dict[str, Any]:
    """A registration this client cannot read, echoing what it was sent. JSON fields come in the
    server's order: here the customer last, its phone number last of all."""
    body: dict[str, Any] = json.loads(request.content) if request.content else copy.deepcopy(PAYLOAD)
    customer = body.pop("customer")
    customer["mobile_number"] = customer.pop("mobile_number")
    return {
        "x-api-key": request.headers.get("x-api-key"),
        "_id": "not-an-id",
        "ocr_number_ocr": "12",
        **body,
        "customer": customer,
    }


API_ANSWERS: dict[str, Answer] = {
    "401-echoing-the-key": answering(lambda r: eve(401, echo(r))),
    "403-html-echo": answering(lambda r: httpx.Response(403, text=f"<h1>Forbidden</h1>{echo(r)}")),
    "400-echo": answering(lambda r: eve(400, echo(r))),
    "409-echo": answering(lambda r: eve(409, echo(r))),
    "422-issues-echoing-personal-data": answering(lambda r: eve(422, "Insertion failure", ECHOED_ISSUES)),
    "422-not-unique-echo": answering(
        lambda r: eve(422, echo(r), {"invoice_number": f"value '{PERSONNUMMER}' is not unique"})
    ),
    "429-echo": answering(lambda r: httpx.Response(429, headers={"Retry-After": "2"}, text=echo(r))),
    "500-echo": answering(lambda r: eve(500, echo(r))),
    "502-html-echo": answering(lambda r: httpx.Response(502, text=f"<h1>Bad Gateway</h1>{echo(r)}")),
    "503-echo": answering(lambda r: httpx.Response(503, text=echo(r))),
    "200-unreadable-echo": answering(
        lambda r: httpx.Response(
            201 if r.method == "POST" else 200,
            json=(
                unreadable_registration(r)
                if r.method == "POST" or not r.url.path.endswith("registrations")
                else {"_items": [unreadable_registration(r)], "_meta": {"total": 1}}
            ),
        )
    ),
    "200-not-json-echo": answering(lambda r: httpx.Response(200, text=f"<html>{echo(r)}</html>")),
    "read-timeout": raising(httpx.ReadTimeout, "timed out"),
    "total-timeout": never,
    "connect-error": raising(httpx.ConnectError, "All connection attempts failed"),
    "connection-dropped": raising(
        httpx.RemoteProtocolError, "peer closed connection without sending complete message body"
    ),
}
TRANSPORT_ERRORS = frozenset({"read-timeout", "total-timeout", "connect-error", "connection-dropped"})
EXCHANGE_ANSWERS: dict[str, Answer] = {
    "exchange-401-echoing-the-jwt": answering(lambda r: eve(401, echo(r))),
    "exchange-403-html-echo": answering(lambda r: httpx.Response(403, text=echo(r))),
    "exchange-500-echo": answering(lambda r: eve(500, echo(r))),
    "exchange-unreadable-200": answering(lambda r: httpx.Response(200, json={"echo": echo(r)})),
    "exchange-empty-200": answering(lambda r: httpx.Response(200, text="")),
    "exchange-read-timeout": raising(httpx.ReadTimeout, "timed out"),
    "exchange-connect-error": raising(httpx.ConnectError, "All connection attempts failed"),
}


@dataclass
class ScriptedAmili:
    """Issues access tokens for JWTs and answers API calls as told; records what it handed out."""

    api_answer: Answer | None = None
    exchange_answer: Answer | None = None
    secrets: Secrets = field(default_factory=Secrets)

    async def handle(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/authenticates/api-code":
            self.secrets.jwts.append(request.headers["x-api-key"])
            if self.exchange_answer is not None:
                return await self.exchange_answer(request)
            token = f"amili-access-{secrets.token_hex(16)}"
            self.secrets.tokens.append(token)
            return httpx.Response(200, json={"_status": "OK", "access_token": token, "expires_in": 3600})
        assert self.api_answer is not None
        return await self.api_answer(request)


Credentials = Literal["static", "api-code", "broken-private-key"]


def credentials_for(kind: Credentials) -> SecretStr | ApiCodeCredentials:
    if kind == "static":
        return SecretStr(API_KEY)
    pem = PRIVATE_PEM if kind == "api-code" else BROKEN_PEM
    return ApiCodeCredentials(API_CODE, SecretStr(pem), "ES256")


async def drive(client: AmiliClient) -> list[BaseException]:
    """Every call of the client once; the exceptions they raised."""
    calls: list[Callable[[], Awaitable[object]]] = [
        lambda: client.register(REQUEST),
        lambda: client.find_registration(REQUEST.creditor, REQUEST.invoice_number),
        lambda: client.get_registration("6" * 24),
    ]
    raised: list[BaseException] = []
    for call in calls:
        try:
            await call()
        except Exception as error:
            raised.append(error)
    return raised


def exception_texts(error: BaseException) -> str:
    return f"{error}\n{error!r}\n{error.args!r}"


def as_logged(error: BaseException) -> str:
    """The line ``log.exception`` would write for it (the consume loop logs what escapes)."""
    record = logging.LogRecord(
        "service.kafka.engine", logging.ERROR, __file__, 0, "processing failed; retrying", None, None
    )
    record.exc_info = (type(error), error, error.__traceback__)
    return JsonFormatter().format(record)


@dataclass
class Captured:
    errors: list[BaseException]
    records: list[logging.LogRecord]
    secrets: Secrets


async def run_scenario(caplog: pytest.LogCaptureFixture, kind: Credentials, amili: ScriptedAmili) -> Captured:
    caplog.clear()
    settings = HttpSettings(total_timeout_seconds=0.1, read_timeout_seconds=0.1)
    transport = httpx.MockTransport(amili.handle)
    async with AmiliClient(
        "http://amili.test", credentials_for(kind), settings, transport=transport
    ) as client:
        errors = await drive(client)
    return Captured(errors, list(caplog.records), amili.secrets)


def assert_clean(captured: Captured) -> None:
    forbidden_secrets = captured.secrets.all()
    forbidden = [*forbidden_secrets, *PERSONAL_DATA]
    assert captured.errors, "the scenario raised nothing: it tests nothing"
    formatter = JsonFormatter()
    for record in captured.records:
        line = formatter.format(record)
        assert not leaks(line, forbidden), f"log line leaks: {line}"
        # The formatter redacts personal data by pattern; it cannot know a key or a token.
        assert not leaks(record.getMessage(), forbidden_secrets), f"log message leaks: {record.getMessage()}"
    for error in captured.errors:
        assert not leaks(exception_texts(error), forbidden), f"{type(error).__name__} leaks: {error!r}"
        assert not leaks(as_logged(error), forbidden), f"logging {type(error).__name__} leaks"


@pytest.fixture(autouse=True)
def debug_everything(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)


@pytest.mark.parametrize("kind", ["static", "api-code"])
@pytest.mark.parametrize("scenario", sorted(API_ANSWERS))
async def test_the_clients_error_paths_leak_nothing(
    caplog: pytest.LogCaptureFixture, kind: Credentials, scenario: str
) -> None:
    captured = await run_scenario(caplog, kind, ScriptedAmili(api_answer=API_ANSWERS[scenario]))
    assert_clean(captured)
    assert len(captured.errors) == 3  # every call failed, one way or another
    if kind == "api-code":
        assert captured.secrets.jwts
        assert captured.secrets.tokens  # there was a token to leak
    if scenario not in TRANSPORT_ERRORS:
        assert any(record.name == "httpx" for record in captured.records)  # there were log lines


@pytest.mark.parametrize("scenario", sorted(EXCHANGE_ANSWERS))
async def test_a_failing_token_exchange_leaks_nothing(
    caplog: pytest.LogCaptureFixture, scenario: str
) -> None:
    amili = ScriptedAmili(
        api_answer=answering(lambda r: eve(500, echo(r))), exchange_answer=EXCHANGE_ANSWERS[scenario]
    )
    captured = await run_scenario(caplog, "api-code", amili)
    assert_clean(captured)
    assert captured.secrets.jwts  # a JWT was minted and sent: there was one to leak
    assert all(isinstance(error, AmiliUnauthorized | AmiliUnavailable) for error in captured.errors)


async def test_a_broken_private_key_leaks_nothing(caplog: pytest.LogCaptureFixture) -> None:
    captured = await run_scenario(caplog, "broken-private-key", ScriptedAmili())
    assert_clean(captured)


async def test_a_refused_renewal_leaks_neither_token(caplog: pytest.LogCaptureFixture) -> None:
    """The exchange hands out tokens, the API refuses each: one renewal, then unauthorized."""
    captured = await run_scenario(
        caplog, "api-code", ScriptedAmili(api_answer=answering(lambda r: eve(401, echo(r))))
    )
    assert_clean(captured)
    assert all(isinstance(error, AmiliUnauthorized) for error in captured.errors)
    assert len(captured.secrets.tokens) >= 2


@pytest.mark.parametrize("scenario", sorted(API_ANSWERS))
async def test_no_exception_in_the_chain_quotes_personal_data_or_secrets(
    caplog: pytest.LogCaptureFixture, scenario: str
) -> None:
    """Stricter than the log line, which redacts by pattern: the raw chain of causes, as a traceback
    printed anywhere else (a test runner, a crash report) would show it."""
    captured = await run_scenario(caplog, "api-code", ScriptedAmili(api_answer=API_ANSWERS[scenario]))
    forbidden = [*captured.secrets.all(), *PERSONAL_DATA]
    for error in captured.errors:
        for link in links(error):
            assert not leaks(exception_texts(link), forbidden), f"{type(link).__name__} in the chain leaks"
        printed = "".join(traceback.format_exception(error))
        assert not leaks(printed, forbidden)


# Over a real socket: the transports' own debug logs -------------------------------------------------


@dataclass
class Recording(httpx.AsyncBaseTransport):
    """A real transport underneath; keeps every ``x-api-key`` sent (JWTs and access tokens)."""

    inner: httpx.AsyncBaseTransport
    sent: set[str] = field(default_factory=set)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.sent.add(request.headers.get("x-api-key", ""))
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
async def test_over_a_real_socket_the_transports_log_no_secrets(
    caplog: pytest.LogCaptureFixture, transport: Literal["aiohttp", "httpx"]
) -> None:
    settings = HttpSettings(total_timeout_seconds=0.3, read_timeout_seconds=0.3, transport=transport)
    inner: Callable[[], httpx.AsyncBaseTransport] = (
        AiohttpTransport if transport == "aiohttp" else httpx.AsyncHTTPTransport
    )
    errors: list[BaseException] = []
    configured = EmulatorSettings(
        port=free_port(), api_keys=[API_KEY], api_code_keys={API_CODE: PUBLIC_PEM}, check_id_numbers=True
    )
    async with serve_emulator(configured) as (url, _), httpx.AsyncClient(base_url=url) as admin:
        wrong = SecretStr(API_KEY + "-wrong")
        async with AmiliClient(url, wrong, settings) as refused:
            errors += await drive(refused)
        recording = Recording(inner())
        async with AmiliClient(url, credentials_for("api-code"), settings, transport=recording) as client:
            # A rejection (the id checksum), a success, a hang and a reset, a revoked token renewed.
            bad_customer = REQUEST.customer.model_copy(update={"id_number": "811218-9875"})
            with pytest.raises(AmiliRejected) as rejected:
                await client.register(REQUEST.model_copy(update={"customer": bad_customer}))
            errors.append(rejected.value)
            await client.register(REQUEST)
            for mode in ("sleep", "reset"):
                await admin.put("/_admin/faults", json={"hang_rate": 1, "hang_mode": mode, "hang_seconds": 5})
                with pytest.raises(AmiliOutcomeUnknown) as lost:
                    await client.register(REQUEST)
                errors.append(lost.value)
            await admin.put("/_admin/faults", json={})
            await admin.delete("/_admin/tokens")
            assert await client.find_registration(REQUEST.creditor, REQUEST.invoice_number) is not None
    jwts = [value for value in recording.sent if value.count(".") == 2]
    tokens = [value for value in recording.sent if value not in jwts]
    assert len(jwts) == 2  # exchanged, then renewed after the revocation
    assert tokens
    records = [record for record in caplog.records if not record.name.startswith("uvicorn")]  # the emulator's
    assert any(record.levelno == logging.DEBUG for record in records)  # the transports did log
    assert_clean(Captured(errors, records, Secrets(jwts=jwts, tokens=[*tokens, wrong.get_secret_value()])))


# The processor: result events may carry Amili's echo, log lines must not -----------------------------


def invoice_event(invoice_number: str, id_number: str = PERSONNUMMER) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": f"evt-{invoice_number}",
        "source": "urn:billing:test",
        "type": "billing.invoice.created.v1",
        "time": "2026-11-20T09:00:00Z",
        "datacontenttype": "application/json",
        "subject": invoice_number,
        "data": {
            "invoice_number": invoice_number,
            "issue_date": "2026-11-20",
            "due_date": "2026-12-20",
            "customer": {
                "type": "person",
                "name": "Astrid Lindqvist",
                "id_number": id_number,
                "address": {"lines": ["Storgatan 12"], "postal_code": "11122", "city": "Stockholm"},
                "mobile_number": "+46701234567",
                "email": "astrid.lindqvist@example.se",
            },
            "lines": [{"description": "Broadband", "total_excluding_vat": 399.0, "vat_rate": 25}],
            "references": {"your_reference": "198112189876"},
            "body_text": "Questions? Call 070-123 45 67",
        },
    }


def assert_log_lines_clean(records: list[logging.LogRecord]) -> None:
    formatter = JsonFormatter()
    for record in records:
        line = formatter.format(record)
        assert not leaks(line, [API_KEY, *PERSONAL_DATA]), f"log line leaks: {line}"


async def test_the_processor_logs_no_personal_data_that_amili_echoes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    world = World(max_attempts=5)
    world.ledger.failures_to_inject = 1
    world.amili.fail_next(AmiliOutcomeUnknown("POST /invoice--registrations timed out"))
    world.amili.fail_next(AmiliUnauthorized("Amili refused the credentials (401)"))
    world.amili.fail_next(AmiliRejected(422, {"customer.id_number": ECHOED_ID_NUMBER_ISSUE}))
    handled = await world.processor.process(structured_record(invoice_event("NS-1")))
    transformed = await world.processor.process(structured_record(invoice_event("NS-2", "811218-9875")))

    assert handled.outcome is Outcome.REJECTED
    assert transformed.outcome is Outcome.REJECTED
    records = list(caplog.records)
    assert {record.getMessage() for record in records} >= {
        "amili call failed, retrying",
        "ledger unavailable, retrying",
    }
    assert_log_lines_clean(records)
    # The result event carries Amili's words to billing, as the contract says.
    assert PERSONNUMMER in json.dumps(world.data(0))


class Stop(Exception):
    """Ends a run that would otherwise wait for Amili for ever (refused credentials pause, never fail)."""


def stopping_after(count: int) -> Callable[[float], Awaitable[None]]:
    calls = 0

    async def sleep(seconds: float) -> None:
        nonlocal calls
        calls += 1
        if calls > count:
            raise Stop("stopped by the test")

    return sleep


@pytest.mark.parametrize("scenario", sorted(API_ANSWERS))
async def test_the_processor_over_the_real_client_logs_nothing_it_should_not(
    caplog: pytest.LogCaptureFixture, scenario: str
) -> None:
    world = World(max_attempts=2)
    transport = httpx.MockTransport(ScriptedAmili(api_answer=API_ANSWERS[scenario]).handle)
    settings = HttpSettings(total_timeout_seconds=0.1, read_timeout_seconds=0.1)
    async with AmiliClient("http://amili.test", SecretStr(API_KEY), settings, transport=transport) as client:
        processor = world.build(world.owner, sleep=stopping_after(6), amili=client)
        escaped: Exception | None = None
        try:
            await processor.process(structured_record(invoice_event("NS-3")))
        except Exception as error:  # what the consume loop would log, with its traceback
            escaped = error
            logging.getLogger("service.kafka.engine").exception("processing failed; retrying")
    assert_log_lines_clean(list(caplog.records))
    if escaped is not None:
        assert not leaks(exception_texts(escaped), [API_KEY, *PERSONAL_DATA])


def test_the_checks_are_not_vacuous() -> None:
    """The formatter does redact the personal data by pattern; a key it cannot recognise."""
    record = logging.LogRecord(
        "t", logging.INFO, __file__, 0, " ".join((API_KEY, *PERSONAL_DATA)), None, None
    )
    line = JsonFormatter().format(record)
    assert leaks(line, [API_KEY, *PERSONAL_DATA]) == [API_KEY]
