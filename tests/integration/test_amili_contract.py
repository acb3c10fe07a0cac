"""Contract tests of ``AmiliClient`` against the emulator over real loopback HTTP (uvicorn).

1. Every validation rule of the emulator: (a) a raw JSON POST is answered 422 with Eve's issue at
   the rule's path, and (b) our request models refuse the same body before any HTTP call. Where only
   Amili can know (unknown or inactive creditor and account, uniqueness, Swedish id checksums), the
   models accept the body and the client reports a typed outcome instead; id checksums are the
   transform's job (``to_registration`` returns a ``Rejection``).
2. Every fault mode of the emulator and the typed outcome the client reports for it.
3. ``find_registrations`` walking pages, and the api-code token provider against the emulator's
   exchange, with a revoked token renewed once.

Every client test runs with both transports: ``aiohttp`` (aiohttp's session, called directly) and
``httpx`` (httpx's own pool). The tests that record the calls inject an httpx transport, so they go
through httpx either way (over httpx-aiohttp's ``AiohttpTransport`` or httpx's pool). One emulator
serves the module; each test starts from no faults, no registrations and no issued tokens.
"""

from __future__ import annotations

import asyncio
import copy
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, cast

import aiohttp
import httpx
import pytest
from httpx_aiohttp import AiohttpTransport
from pydantic import SecretStr, ValidationError

from devkit.emulator.app import INSERTION_FAILURE, Emulator
from devkit.emulator.faults import FaultConfig, Faults
from devkit.emulator.server import serve_emulator
from devkit.emulator.settings import DEMO_ACCOUNT, DEMO_API_KEY, DEMO_CREDITOR, EmulatorSettings
from devkit.localkafka import free_port
from service.amili import client as client_module
from service.amili.client import AmiliClient, ApiCodeCredentials, HttpSettings, Transport
from service.amili.mapping import to_registration
from service.amili.models import InvoiceRegistrationReceipt, InvoiceRegistrationRequest
from service.domain.invoice import Invoice
from service.domain.outcomes import Rejection
from service.domain.rules import TransformDefaults
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
from tests.unit.test_amili_auth import key_pair
from tests.unit.test_emulator import CUSTOMER_TYPE_ISSUE, request

KEY = DEMO_API_KEY
HEADERS = {"x-api-key": KEY}
UNKNOWN_ID = "0" * 24
INACTIVE_CREDITOR = "a" * 24
INACTIVE_ACCOUNT = "b" * 24
API_CODE = "contract-api-code"
PRIVATE_PEM, PUBLIC_PEM = key_pair("ES256")
PATH = "/invoice--registrations"
TRANSPORTS: tuple[Transport, ...] = ("aiohttp", "httpx")


@dataclass
class Served:
    url: str
    emulator: Emulator
    admin: httpx.AsyncClient  # raw HTTP, no faults on /_admin

    async def faults(self, **config: Any) -> None:
        """PUT /_admin/faults: replace the whole configuration (fields left out inject nothing)."""
        response = await self.admin.put("/_admin/faults", json=config)
        assert response.status_code == 200, response.text

    async def post(self, body: dict[str, Any]) -> httpx.Response:
        return await self.admin.post(PATH, json=body, headers=HEADERS)


@pytest.fixture(scope="module")
async def served() -> AsyncIterator[Served]:
    settings = EmulatorSettings(
        port=free_port(),
        api_keys=[KEY],
        accounts=[DEMO_ACCOUNT],
        creditors=[DEMO_CREDITOR],
        inactive_accounts=[INACTIVE_ACCOUNT],
        inactive_creditors=[INACTIVE_CREDITOR],
        check_id_numbers=True,
        api_code_keys={API_CODE: PUBLIC_PEM},
    )
    async with (
        serve_emulator(settings) as (url, emulator),
        httpx.AsyncClient(base_url=url, timeout=10) as admin,
    ):
        yield Served(url, emulator, admin)


@pytest.fixture
async def amili(served: Served) -> Served:
    """The module's emulator, reset: no faults, no registrations, no issued tokens."""
    served.emulator.faults.release()
    await served.faults()
    assert (await served.admin.delete("/_admin/registrations")).status_code == 204
    assert (await served.admin.delete("/_admin/tokens")).status_code == 204
    return served


@pytest.fixture(scope="module")
async def shared(served: Served) -> AsyncIterator[dict[Transport, AmiliClient]]:
    """One client per transport for the tests that inject no fault (a client costs an SSL context)."""
    clients = {name: client(served, name) for name in TRANSPORTS}
    yield clients
    for each in clients.values():
        await each.aclose()


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> Transport:
    return cast(Transport, request.param)


def client(
    served: Served,
    transport: Transport,
    *,
    key: str = KEY,
    total_timeout: float = 10.0,
) -> AmiliClient:
    settings = HttpSettings(
        connect_timeout_seconds=2,
        read_timeout_seconds=total_timeout,
        total_timeout_seconds=total_timeout,
        transport=transport,
    )
    return AmiliClient(served.url, SecretStr(key), settings)


def model(number: str = "INV-2024-002", **changes: Any) -> InvoiceRegistrationRequest:
    return InvoiceRegistrationRequest.model_validate(request(invoice_number=number, **changes))


@dataclass(frozen=True)
class RawBody:
    """Stands in for a request model that let a value through: the client sends its body as it is."""

    body: dict[str, Any]

    def wire_json(self) -> bytes:
        return json.dumps(self.body, ensure_ascii=False, separators=(",", ":")).encode()


def raw(body: dict[str, Any]) -> InvoiceRegistrationRequest:
    return cast(InvoiceRegistrationRequest, RawBody(body))


# 1. Validation rules ------------------------------------------------------------------------------

Mutation = Callable[[dict[str, Any]], None]


def _parent(body: dict[str, Any], path: tuple[str | int, ...]) -> Any:
    """The dict or list in ``body`` that holds ``path``'s last step."""
    target: Any = body
    for step in path[:-1]:
        target = target[step]
    return target


def setting(*path: str | int, value: Any) -> Mutation:
    def mutate(body: dict[str, Any]) -> None:
        _parent(body, path)[path[-1]] = value

    return mutate


def without(*path: str | int) -> Mutation:
    def mutate(body: dict[str, Any]) -> None:
        del _parent(body, path)[path[-1]]

    return mutate


def both(*mutations: Mutation) -> Mutation:
    def mutate(body: dict[str, Any]) -> None:
        for mutation in mutations:
            mutation(body)

    return mutate


@dataclass(frozen=True)
class Rule:
    """A body breaking one rule, and the issue the emulator answers: ``_issues`` at ``path``."""

    id: str
    mutate: Mutation
    path: tuple[str, ...]
    message: str

    def body(self) -> dict[str, Any]:
        body = request()
        self.mutate(body)
        return body

    @property
    def dotted(self) -> str:
        return ".".join(self.path)


def rule(id: str, mutate: Mutation, path: str, message: str) -> Any:
    return pytest.param(Rule(id, mutate, tuple(path.split(".")), message), id=id)


REQUIRED = "required field"
UNKNOWN = "unknown field"
EXCLUDES = "'car_registration' must not be present with 'customer_number'"
DATETIME = "must be of datetime type"
NO_CUSTOMER_NUMBER = without("customer", "customer_number")

# Rules our request models enforce: the emulator refuses the body, and so do the models.
MODEL_RULES = [
    # required fields, at every level
    *(
        rule(f"required-{name}", without(name), name, REQUIRED)
        for name in (
            "account",
            "creditor",
            "customer",
            "invoice_type",
            "invoice_number",
            "invoice_date",
            "invoice_due_date",
            "matrix",
        )
    ),
    rule("required-customer.name", without("customer", "name"), "customer.name", REQUIRED),
    rule(
        "required-matrix.article_description",
        without("matrix", 0, "article_description"),
        "matrix.0.article_description",
        REQUIRED,
    ),
    rule(
        "required-matrix.total_price_excluding_vat",
        without("matrix", 0, "total_price_excluding_vat"),
        "matrix.0.total_price_excluding_vat",
        REQUIRED,
    ),
    rule(
        "required-car_registration.number",
        both(NO_CUSTOMER_NUMBER, setting("customer", "car_registration", value={"country": "SE"})),
        "customer.car_registration.number",
        REQUIRED,
    ),
    # empty values
    rule(
        "empty-invoice_number",
        setting("invoice_number", value=""),
        "invoice_number",
        "empty values not allowed",
    ),
    rule("empty-matrix", setting("matrix", value=[]), "matrix", "empty values not allowed"),
    rule(
        "empty-customer.name",
        setting("customer", "name", value=""),
        "customer.name",
        "empty values not allowed",
    ),
    # types
    rule(
        "type-invoice_number",
        setting("invoice_number", value=2024),
        "invoice_number",
        "must be of string type",
    ),
    rule("type-customer", setting("customer", value="Jane Doe"), "customer", "must be of dict type"),
    rule("type-matrix", setting("matrix", value={"0": {}}), "matrix", "must be of list type"),
    rule(
        "type-is_person",
        setting("customer", "is_person", value="maybe"),
        "customer.is_person",
        "must be of boolean type",
    ),
    rule(
        "type-total_price",
        setting("matrix", 0, "total_price_excluding_vat", value="five hundred"),
        "matrix.0.total_price_excluding_vat",
        "must be of number type",
    ),
    rule(
        "type-total_price-bool",
        setting("matrix", 0, "total_price_excluding_vat", value=True),
        "matrix.0.total_price_excluding_vat",
        "must be of number type",
    ),
    rule("type-creditor-objectid", setting("creditor", value="ACME"), "creditor", "must be of objectid type"),
    rule("type-labels-item", setting("labels", value=["a", 1]), "labels.1", "must be of string type"),
    rule(
        "type-address.country",
        setting("customer", "address", "country", value="se"),
        "customer.address.country",
        "value does not match regex '^[A-Z]{2}$'",
    ),
    # unknown fields, at every level
    rule("unknown-top", setting("colour", value="red"), "colour", UNKNOWN),
    rule("unknown-customer", setting("customer", "nickname", value="J"), "customer.nickname", UNKNOWN),
    rule(
        "unknown-address",
        setting("customer", "address", "floor", value="3"),
        "customer.address.floor",
        UNKNOWN,
    ),
    rule("unknown-matrix", setting("matrix", 0, "colour", value="red"), "matrix.0.colour", UNKNOWN),
    # the customer types exclude each other
    rule(
        "customer-type-two",
        setting("customer", "is_company", value=True),
        "customer.is_person",
        CUSTOMER_TYPE_ISSUE,
    ),
    # car_registration excludes customer_number
    rule(
        "car_registration-excludes-customer_number",
        setting("customer", "car_registration", value={"number": "ABC123"}),
        "customer.car_registration",
        EXCLUDES,
    ),
    # SEK only
    rule("currency-EUR", setting("currency", value="EUR"), "currency", "unallowed value EUR"),
    # RFC 1123 GMT dates
    rule("date-iso-day", setting("invoice_date", value="2024-01-21"), "invoice_date", DATETIME),
    rule("date-iso-time", setting("invoice_date", value="2024-01-21T10:11:22Z"), "invoice_date", DATETIME),
    rule(
        "date-offset-not-gmt",
        setting("invoice_due_date", value="Wed, 31 Jan 2024 10:11:22 +0000"),
        "invoice_due_date",
        DATETIME,
    ),
    rule(
        "date-does-not-exist",
        setting("invoice_due_date", value="Thu, 31 Feb 2024 10:11:22 GMT"),
        "invoice_due_date",
        DATETIME,
    ),
    rule("date-bool", setting("invoice_due_date", value=True), "invoice_due_date", DATETIME),
    rule(
        "date-matrix.article_date",
        setting("matrix", 0, "article_date", value="21/01/2024"),
        "matrix.0.article_date",
        DATETIME,
    ),
    rule(
        "date-car_registration.ownership_date",
        both(
            NO_CUSTOMER_NUMBER,
            setting(
                "customer", "car_registration", value={"number": "ABC123", "ownership_date": "2024-01-21"}
            ),
        ),
        "customer.car_registration.ownership_date",
        DATETIME,
    ),
    # allowed VAT rates
    rule(
        "vat-20",
        setting("matrix", 0, "unit_vat_percent", value="20%"),
        "matrix.0.unit_vat_percent",
        "unallowed value 20%",
    ),
    rule(
        "vat-no-percent",
        setting("matrix", 0, "unit_vat_percent", value="25"),
        "matrix.0.unit_vat_percent",
        "unallowed value 25",
    ),
    rule(
        "vat-number",
        setting("matrix", 0, "unit_vat_percent", value=25),
        "matrix.0.unit_vat_percent",
        "must be of string type",
    ),
    # read-only file_import_report
    rule(
        "read-only-file_import_report",
        setting("file_import_report", value={"file": "import.csv"}),
        "file_import_report",
        "field is read-only",
    ),
]

# Rules only Amili can know: the models accept the body; the client reports AmiliRejected.
AMILI_RULES = [
    # No customer type at all: the seed makes each flag optional, Amili's documentation wants one;
    # our models send it and leave the answer to Amili (a rejected result naming data.customer.type).
    rule("customer-type-none", without("customer", "is_person"), "customer.is_person", CUSTOMER_TYPE_ISSUE),
    rule(
        "customer-type-false",
        setting("customer", "is_person", value=False),
        "customer.is_person",
        CUSTOMER_TYPE_ISSUE,
    ),
    rule(
        "creditor-unknown",
        setting("creditor", value=UNKNOWN_ID),
        "creditor",
        f"value '{UNKNOWN_ID}' must exist in resource 'creditors'",
    ),
    rule(
        "creditor-inactive",
        setting("creditor", value=INACTIVE_CREDITOR),
        "creditor",
        f"creditor '{INACTIVE_CREDITOR}' is not active",
    ),
    rule(
        "account-unknown",
        setting("account", value=UNKNOWN_ID),
        "account",
        f"value '{UNKNOWN_ID}' must exist in resource 'accounts'",
    ),
    rule(
        "account-inactive",
        setting("account", value=INACTIVE_ACCOUNT),
        "account",
        f"account '{INACTIVE_ACCOUNT}' is not active",
    ),
    # The transform checks id numbers (test_the_transform_rejects_what_fails_the_id_checksum below).
    rule(
        "personnummer-checksum",
        setting("customer", "id_number", value="811218-9875"),
        "customer.id_number",
        "personnummer check digit does not match",
    ),
    rule(
        "organisationsnummer-checksum",
        both(
            without("customer", "is_person"),
            setting("customer", "is_company", value=True),
            setting("customer", "id_number", value="556036-0794"),
        ),
        "customer.id_number",
        "organisationsnummer check digit does not match",
    ),
    # Amili documents no bounds on amounts; the emulator keeps them within 10^12 [open], the models
    # set no bound (see docs/amili-client.md).
    rule(
        "amount-above-emulator-bound",
        setting("matrix", 0, "total_price_excluding_vat", value=10**13),
        "matrix.0.total_price_excluding_vat",
        "max value is 1000000000000",
    ),
]


def issue_at(body: dict[str, Any], path: tuple[str, ...]) -> Any:
    found: Any = body["_issues"]
    for step in path:
        assert isinstance(found, dict), f"no issue at {path}: {body['_issues']}"
        found = found[step]
    return found


async def assert_emulator_refuses(served: Served, broken: Rule) -> None:
    response = await served.post(broken.body())
    assert response.status_code == 422, response.text
    answer = response.json()
    assert answer["_status"] == "ERR"
    assert answer["_error"] == {"code": 422, "message": INSERTION_FAILURE}
    assert issue_at(answer, broken.path) == broken.message


@pytest.mark.parametrize("broken", [*MODEL_RULES, *AMILI_RULES])
async def test_the_emulator_answers_422_with_the_eve_issue_at_the_rules_path(
    amili: Served, broken: Rule
) -> None:
    await assert_emulator_refuses(amili, broken)
    assert amili.emulator.store.all() == []


@pytest.mark.parametrize("broken", MODEL_RULES)
def test_our_models_refuse_the_same_body_before_any_http_call(broken: Rule) -> None:
    with pytest.raises(ValidationError) as refused:
        InvoiceRegistrationRequest.model_validate(broken.body())
    # The models point at the same field (a customer-level rule is reported on ``customer``).
    assert broken.path[0] in {str(error["loc"][0]) for error in refused.value.errors()}


@pytest.mark.parametrize("broken", AMILI_RULES)
def test_our_models_cannot_know_what_only_amili_knows(broken: Rule) -> None:
    InvoiceRegistrationRequest.model_validate(broken.body())


@pytest.mark.parametrize("broken", [*MODEL_RULES, *AMILI_RULES])
async def test_the_client_reports_each_refusal_as_rejected_with_the_issue_mapped(
    amili: Served, shared: dict[Transport, AmiliClient], transport: Transport, broken: Rule
) -> None:
    # MODEL_RULES: as if a model had let the body through (the client sends what it is given).
    with pytest.raises(AmiliRejected) as rejected:
        await shared[transport].register(raw(broken.body()))
    assert rejected.value.status == 422
    assert rejected.value.issues[broken.dotted] == broken.message
    assert not isinstance(rejected.value, AmiliUnavailable)


@pytest.mark.parametrize(
    ("id", "mutate"),
    [
        ("currency-left-out", without("currency")),  # the model's default, SEK, goes out
        ("null-optional", setting("reference_number", value=None)),  # omitted, never sent as null
        ("amount-as-text", setting("matrix", 0, "total_price_excluding_vat", value="500")),  # a number
        ("boolean-as-text", setting("start_flow", value="true")),  # a JSON boolean
        ("date-as-unix-time", setting("invoice_due_date", value=1706695882)),  # an RFC 1123 date
    ],
)
async def test_what_the_models_accept_and_normalise_the_emulator_accepts(
    amili: Served, shared: dict[Transport, AmiliClient], transport: Transport, id: str, mutate: Mutation
) -> None:
    body = request()
    mutate(body)
    assert (await amili.post(body)).status_code == 422  # as it stands: refused
    normalised = InvoiceRegistrationRequest.model_validate(body)  # our models accept and normalise it
    receipt = await shared[transport].register(normalised)
    assert amili.emulator.store.get(receipt.id) is not None


async def test_the_documented_request_and_a_valid_id_number_are_registered(
    amili: Served, transport: Transport
) -> None:
    valid = model(customer={**request()["customer"], "id_number": "811218-9876"})
    async with client(amili, transport) as amili_client:
        receipt = await amili_client.register(valid)
        assert await amili_client.get_registration(receipt.id) is not None


async def test_the_same_invoice_number_twice_is_a_duplicate(amili: Served, transport: Transport) -> None:
    first = model()
    async with client(amili, transport) as amili_client:
        receipt = await amili_client.register(first)
        # The raw answer: Eve's unique rule.
        response = await amili.post(first.to_wire())
        assert response.status_code == 422
        assert response.json()["_issues"] == {"invoice_number": "value 'INV-2024-002' is not unique"}
        # The client: a typed duplicate, and the look-up adopts the first registration.
        with pytest.raises(AmiliDuplicate):
            await amili_client.register(first)
        found = await amili_client.find_registration(first.creditor, first.invoice_number)
        # The same number for another creditor is another invoice (inactive: refused, not duplicate).
        with pytest.raises(AmiliRejected):
            await amili_client.register(model(creditor=INACTIVE_CREDITOR))
    assert found is not None
    assert found.id == receipt.id
    assert len(amili.emulator.store.all()) == 1


INVOICE: dict[str, Any] = {
    "invoice_number": "T-1",
    "issue_date": "2026-11-20",
    "due_date": "2026-12-20",
    "customer": {"type": "person", "name": "Astrid Lindqvist", "id_number": "811218-9876"},
    "lines": [{"description": "Broadband", "total_excluding_vat": 399, "vat_rate": 25}],
}


@pytest.mark.parametrize(
    ("customer_type", "valid", "invalid", "checked_rule"),
    [
        ("person", "811218-9876", "811218-9875", "personnummer"),
        ("company", "556036-0793", "556036-0794", "organisationsnummer"),
    ],
)
async def test_the_transform_rejects_what_fails_the_id_checksum(
    amili: Served, transport: Transport, customer_type: str, valid: str, invalid: str, checked_rule: str
) -> None:
    defaults = TransformDefaults(account=DEMO_ACCOUNT, creditor=DEMO_CREDITOR)

    def invoice(id_number: str) -> Invoice:
        data = copy.deepcopy(INVOICE)
        data["customer"].update(type=customer_type, id_number=id_number)
        return Invoice.model_validate(data)

    rejection = to_registration(invoice(invalid), defaults)
    assert isinstance(rejection, Rejection)
    assert [(v.field, v.rule) for v in rejection.violations] == [("data.customer.id_number", checked_rule)]

    accepted = to_registration(invoice(valid), defaults)
    assert isinstance(accepted, InvoiceRegistrationRequest)
    async with client(amili, transport) as amili_client:  # the emulator checks id numbers here
        await amili_client.register(accepted)


# 2. Fault modes -----------------------------------------------------------------------------------


async def test_fixed_latency_makes_a_success_slower(amili: Served, transport: Transport) -> None:
    await amili.faults(latency_ms=150)
    async with client(amili, transport) as amili_client:
        started = time.perf_counter()
        receipt = await amili_client.register(model())
        elapsed = time.perf_counter() - started
    assert elapsed >= 0.15
    assert amili.emulator.store.get(receipt.id) is not None


async def test_log_normal_latency_makes_successes_slower_by_the_drawn_delays(
    amili: Served, transport: Transport
) -> None:
    config = {"latency_median_ms": 30, "latency_p99_ms": 300, "fault_seed": 11}
    oracle = Faults(FaultConfig.model_validate(config))  # the same draws as the emulator's
    expected = [oracle.decide().delay_seconds for _ in range(6)]
    assert max(expected) > 2 * min(expected)  # a spread, not a fixed delay
    await amili.faults(**config)
    async with client(amili, transport) as amili_client:
        for index, delay in enumerate(expected):
            started = time.perf_counter()
            await amili_client.register(model(f"LN-{index}"))
            elapsed = time.perf_counter() - started
            assert delay - 0.005 <= elapsed < delay + 1.0
    assert len(amili.emulator.store.all()) == len(expected)


@pytest.mark.parametrize("status", [500, 502, 503])
@pytest.mark.parametrize("stored", [False, True], ids=["before-handling", "after-store"])
async def test_5xx_leaves_a_post_outcome_unknown_and_a_get_unavailable(
    amili: Served, transport: Transport, status: int, stored: bool
) -> None:
    await amili.faults(**{f"error_{status}_rate": 1.0, "error_after_store_ratio": 1.0 if stored else 0.0})
    request_model = model()
    async with client(amili, transport) as amili_client:
        with pytest.raises(AmiliOutcomeUnknown) as unknown:
            await amili_client.register(request_model)
        assert unknown.value.outcome_unknown
        assert unknown.value.retry_after is None
        with pytest.raises(AmiliUnavailable) as unavailable:
            await amili_client.find_registration(request_model.creditor, request_model.invoice_number)
        assert type(unavailable.value) is AmiliUnavailable
        assert not unavailable.value.outcome_unknown
        await amili.faults()
        found = await amili_client.find_registration(request_model.creditor, request_model.invoice_number)
    assert (found is not None) is stored  # why a 5xx on a POST must be looked up before a retry


async def test_429_is_rate_limited_with_retry_after(amili: Served, transport: Transport) -> None:
    await amili.faults(throttle_rate=1.0, retry_after_seconds=7)
    async with client(amili, transport) as amili_client:
        with pytest.raises(AmiliRateLimited) as throttled:
            await amili_client.register(model())
        with pytest.raises(AmiliRateLimited) as throttled_get:
            await amili_client.find_registration(DEMO_CREDITOR, "INV-2024-002")
    for error in (throttled.value, throttled_get.value):
        assert error.retry_after == 7.0
        assert not error.outcome_unknown
    assert amili.emulator.store.all() == []


@pytest.mark.parametrize("mode", ["sleep", "reset"])
async def test_a_hang_leaves_the_outcome_unknown_and_the_registration_stored(
    amili: Served, transport: Transport, mode: str
) -> None:
    await amili.faults(hang_rate=1.0, hang_mode=mode, hang_seconds=60)
    request_model = model()
    async with client(amili, transport, total_timeout=0.3) as amili_client:
        started = time.perf_counter()
        with pytest.raises(AmiliOutcomeUnknown):
            await amili_client.register(request_model)
        assert time.perf_counter() - started < 5
        assert len(amili.emulator.store.all()) == 1  # stored, the answer lost
        with pytest.raises(AmiliUnavailable) as lost_get:  # a lost GET changed nothing
            await amili_client.find_registration(request_model.creditor, request_model.invoice_number)
        assert not lost_get.value.outcome_unknown
        await amili.faults()
        found = await amili_client.find_registration(request_model.creditor, request_model.invoice_number)
    assert found is not None
    assert found.id == amili.emulator.store.all()[0]["_id"]


@dataclass(frozen=True)
class Expected:
    error: type[AmiliError]
    outcome_unknown: bool = False
    retry_after: float | None = None
    issues: dict[str, str] | None = None


UNAVAILABLE = Expected(AmiliUnavailable)
UNKNOWN_OUTCOME = Expected(AmiliOutcomeUnknown, outcome_unknown=True)
UNAUTHORIZED = Expected(AmiliUnauthorized)
MISCONFIGURED = Expected(AmiliMisconfigured)  # the path is wrong: AMILI_BASE_URL
RATE_LIMITED = Expected(AmiliRateLimited, retry_after=1.0)


@pytest.mark.parametrize(
    ("status", "on_post", "on_get"),
    [
        (400, MISCONFIGURED, UNAVAILABLE),  # no _issues: our JSON is valid, the way to Amili is not
        (401, UNAUTHORIZED, UNAUTHORIZED),
        (403, UNAUTHORIZED, UNAUTHORIZED),
        (404, MISCONFIGURED, MISCONFIGURED),  # a look-up that finds nothing is an empty _items
        (405, MISCONFIGURED, MISCONFIGURED),
        (409, Expected(AmiliDuplicate), UNAVAILABLE),
        (422, Expected(AmiliRejected, issues={"_error": "Error"}), UNAVAILABLE),
        (429, RATE_LIMITED, RATE_LIMITED),
        (500, UNKNOWN_OUTCOME, UNAVAILABLE),
        (502, UNKNOWN_OUTCOME, UNAVAILABLE),
        (503, UNKNOWN_OUTCOME, UNAVAILABLE),
        (504, UNKNOWN_OUTCOME, UNAVAILABLE),
    ],
)
async def test_fail_next_status_becomes_the_typed_outcome(
    amili: Served, transport: Transport, status: int, on_post: Expected, on_get: Expected
) -> None:
    await amili.faults(fail_next_count=2, fail_next_status=status)
    request_model = model()
    async with client(amili, transport) as amili_client:
        with pytest.raises(AmiliError) as post_error:
            await amili_client.register(request_model)
        with pytest.raises(AmiliError) as get_error:
            await amili_client.find_registration(request_model.creditor, request_model.invoice_number)
        # The count is spent: the next call is served, and the failed POST had stored nothing.
        receipt = await amili_client.register(request_model)
    for caught, expected in ((post_error.value, on_post), (get_error.value, on_get)):
        assert type(caught) is expected.error, caught
        if isinstance(caught, AmiliUnavailable):
            assert caught.outcome_unknown is expected.outcome_unknown
            assert caught.retry_after == expected.retry_after
        if expected.issues is not None:
            assert isinstance(caught, AmiliRejected)
            assert caught.issues == expected.issues
    assert [doc["_id"] for doc in amili.emulator.store.all()] == [receipt.id]


async def test_a_wrong_key_is_unauthorized_and_never_echoed(amili: Served, transport: Transport) -> None:
    wrong = "wrong-key-3f9a1c"
    async with client(amili, transport, key=wrong) as amili_client:
        with pytest.raises(AmiliUnauthorized) as post_error:
            await amili_client.register(model())
        with pytest.raises(AmiliUnauthorized) as get_error:
            await amili_client.get_registration(UNKNOWN_ID)
    for error in (post_error.value, get_error.value):
        assert wrong not in f"{error} {error!r} {error.args}"
    assert amili.emulator.store.all() == []


async def test_a_refused_connection_is_unavailable_and_nothing_was_sent(transport: Transport) -> None:
    settings = HttpSettings(connect_timeout_seconds=2, total_timeout_seconds=5, transport=transport)
    async with AmiliClient(f"http://127.0.0.1:{free_port()}", SecretStr(KEY), settings) as amili_client:
        with pytest.raises(AmiliUnavailable) as get_error:
            await amili_client.find_registration(DEMO_CREDITOR, "INV-1")
        assert not get_error.value.outcome_unknown
        with pytest.raises(AmiliUnavailable) as post_error:
            await amili_client.register(model())
    assert not post_error.value.outcome_unknown  # the request never left: a plain retry is safe


async def test_a_connection_dropped_after_the_post_was_stored_is_outcome_unknown_at_once(
    amili: Served, transport: Transport
) -> None:
    """The answer's headers, then half its body, then the connection closes: an error, not a timeout."""
    await amili.faults(hang_rate=1.0, hang_mode="reset")
    observed: list[tuple[str, str, float]] = []
    settings = HttpSettings(total_timeout_seconds=10, transport=transport)
    async with AmiliClient(
        amili.url, SecretStr(KEY), settings, observe=lambda *seen: observed.append(seen)
    ) as amili_client:
        with pytest.raises(AmiliOutcomeUnknown):
            await amili_client.register(model())
    assert [(endpoint, status) for endpoint, status, _ in observed] == [("register", "error")]
    assert observed[0][2] < 5
    assert len(amili.emulator.store.all()) == 1


async def test_a_wait_for_a_free_connection_beyond_the_connect_timeout_sends_nothing(amili: Served) -> None:
    """aiohttp's connect timeout covers the wait for a connection of the pool: nothing went out."""
    await amili.faults(hang_rate=1.0, hang_mode="sleep", hang_seconds=60)
    settings = HttpSettings(
        connect_timeout_seconds=0.2,
        read_timeout_seconds=2,
        total_timeout_seconds=5,
        max_connections=1,
        transport="aiohttp",
    )
    async with AmiliClient(amili.url, SecretStr(KEY), settings) as amili_client:
        holding = asyncio.create_task(amili_client.register(model("HOLDS-1")))  # the only connection
        for _ in range(500):  # until the emulator holds it (and the connection)
            if amili.emulator.store.all():
                break
            await asyncio.sleep(0.01)
        assert amili.emulator.store.all()
        started = time.perf_counter()
        with pytest.raises(AmiliUnavailable) as waited:
            await amili_client.register(model("WAITS-1"))
        assert time.perf_counter() - started < 1.5
        assert not waited.value.outcome_unknown  # a plain retry is safe
        with pytest.raises(AmiliOutcomeUnknown):
            await holding
    assert [doc["invoice_number"] for doc in amili.emulator.store.all()] == ["HOLDS-1"]


async def test_the_aiohttp_transport_sends_without_httpx_over_a_session_opened_on_first_use(
    amili: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened: list[aiohttp.ClientSession] = []
    original = aiohttp.ClientSession.__init__

    def recording(session: aiohttp.ClientSession, *args: Any, **kwargs: Any) -> None:
        original(session, *args, **kwargs)
        opened.append(session)

    async def no_httpx(*_: object, **__: object) -> httpx.Response:
        raise AssertionError("httpx on the aiohttp path")

    monkeypatch.setattr(aiohttp.ClientSession, "__init__", recording)
    monkeypatch.setattr(httpx.AsyncClient, "send", no_httpx)
    # Built where no loop runs, as a service may build it before starting one.
    amili_client = await asyncio.to_thread(client, amili, "aiohttp")
    assert opened == []
    receipt = await amili_client.register(model())
    assert await amili_client.get_registration(receipt.id) is not None
    assert await amili_client.find_registration(DEMO_CREDITOR, "INV-2024-002") is not None
    assert len(opened) == 1
    assert not opened[0].closed
    await amili_client.aclose()
    assert opened[0].closed
    with pytest.raises(RuntimeError):
        await amili_client.register(model("AFTER-CLOSE"))
    assert len(opened) == 1


@pytest.mark.parametrize("number", ["A+B &=#%/?ö 1", '{"$ne": null}', "INV 2024/002;page=2"])
async def test_an_invoice_number_the_url_must_escape_is_registered_and_found(
    amili: Served, shared: dict[Transport, AmiliClient], transport: Transport, number: str
) -> None:
    receipt = await shared[transport].register(model(number))
    found = await shared[transport].find_registration(DEMO_CREDITOR, number)
    assert found is not None
    assert found.id == receipt.id


# 3. Paging and the token provider -----------------------------------------------------------------


@dataclass
class Forwarding(httpx.AsyncBaseTransport):
    """A real transport underneath; records every request and answer. With ``ignore_invoice_number``
    it plays a server that ignores a ``where`` field it cannot filter on (the client filters again),
    so that a look-up walks every page of the creditor's registrations."""

    inner: httpx.AsyncBaseTransport
    ignore_invoice_number: bool = False
    seen: list[tuple[str, str, dict[str, str], int]] = field(default_factory=list)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self.ignore_invoice_number and "where" in request.url.params:
            where = json.loads(request.url.params["where"])
            where.pop("invoice_number", None)
            request.url = request.url.copy_set_param("where", json.dumps(where))
        response = await self.inner.handle_async_request(request)
        self.seen.append((request.method, request.url.path, dict(request.url.params), response.status_code))
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()

    def pages(self) -> list[int]:
        return [
            int(params["page"]) for method, path, params, _ in self.seen if method == "GET" and path == PATH
        ]


def real_transport(transport: Transport) -> httpx.AsyncBaseTransport:
    return AiohttpTransport() if transport == "aiohttp" else httpx.AsyncHTTPTransport()


async def register_many(served: Served, count: int) -> None:
    """Registrations to page through, sent in process to the same emulator (quicker than the socket)."""
    seeding = httpx.ASGITransport(app=served.emulator.app())
    async with httpx.AsyncClient(transport=seeding, base_url="http://amili", headers=HEADERS) as http:
        for number in range(count):
            response = await http.post(PATH, json=request(invoice_number=f"P-{number:04d}"))
            assert response.status_code == 201


@pytest.mark.parametrize(
    ("registered", "max_results", "pages"),
    # 250: three pages, the last one short; 40 in pages of 10: a full last page ends on ``_meta.total``
    [(250, None, [1, 2, 3]), (40, 10, [1, 2, 3, 4])],
)
async def test_find_registrations_walks_every_page(
    amili: Served,
    transport: Transport,
    monkeypatch: pytest.MonkeyPatch,
    registered: int,
    max_results: int | None,
    pages: list[int],
) -> None:
    if max_results is not None:
        monkeypatch.setattr(client_module, "MAX_RESULTS", max_results)
    await register_many(amili, registered)
    last = f"P-{registered - 1:04d}"
    forwarding = Forwarding(real_transport(transport), ignore_invoice_number=True)
    async with AmiliClient(amili.url, SecretStr(KEY), transport=forwarding) as amili_client:
        found = await amili_client.find_registrations(DEMO_CREDITOR, last)  # on the last page
        assert forwarding.pages() == pages
        forwarding.seen.clear()
        assert await amili_client.find_registrations(DEMO_CREDITOR, "P-none") == []
        assert forwarding.pages() == pages
    assert [receipt.invoice_number for receipt in found] == [last]
    stored = amili.emulator.store.by_invoice(DEMO_CREDITOR, last)
    assert stored is not None
    assert found[0].id == stored["_id"]


async def test_an_api_code_token_is_exchanged_cached_and_a_revoked_one_renewed_once(
    amili: Served, transport: Transport
) -> None:
    forwarding = Forwarding(real_transport(transport))
    credentials = ApiCodeCredentials(API_CODE, SecretStr(PRIVATE_PEM), "ES256")
    async with AmiliClient(amili.url, credentials, transport=forwarding) as amili_client:
        receipts: list[InvoiceRegistrationReceipt] = [await amili_client.register(model("TOK-1"))]
        receipts.append(await amili_client.register(model("TOK-2")))
        assert (await amili.admin.get("/_admin/tokens")).json() == {"active": 1}
        assert (await amili.admin.delete("/_admin/tokens")).status_code == 204  # Amili revokes it
        receipts.append(await amili_client.register(model("TOK-3")))  # renewed transparently
    calls = [(method, path, status) for method, path, _, status in forwarding.seen]
    exchange = ("GET", "/authenticates/api-code", 200)
    assert calls == [
        exchange,
        ("POST", PATH, 201),
        ("POST", PATH, 201),
        ("POST", PATH, 401),
        exchange,
        ("POST", PATH, 201),
    ]
    assert len({receipt.id for receipt in receipts}) == 3
    assert len(amili.emulator.store.all()) == 3


@pytest.mark.parametrize("refusal", ["unregistered-key", "unknown-api-code"])
async def test_a_refused_jwt_is_unauthorized(amili: Served, transport: Transport, refusal: str) -> None:
    other_private, _ = key_pair("ES256")
    credentials = (
        ApiCodeCredentials(API_CODE, SecretStr(other_private), "ES256")
        if refusal == "unregistered-key"
        else ApiCodeCredentials("not-registered", SecretStr(PRIVATE_PEM), "ES256")
    )
    settings = HttpSettings(transport=transport)
    async with AmiliClient(amili.url, credentials, settings) as amili_client:
        with pytest.raises(AmiliUnauthorized):
            await amili_client.register(model())
    assert amili.emulator.store.all() == []


async def test_a_failing_token_exchange_is_unavailable(amili: Served, transport: Transport) -> None:
    await amili.faults(fail_next_count=1, fail_next_status=503)
    credentials = ApiCodeCredentials(API_CODE, SecretStr(PRIVATE_PEM), "ES256")
    async with AmiliClient(amili.url, credentials, HttpSettings(transport=transport)) as amili_client:
        with pytest.raises(AmiliUnavailable) as failed:
            await amili_client.register(model())
        assert not failed.value.outcome_unknown  # the exchange failed: the POST was never sent
        await amili_client.register(model())  # the next call exchanges again
    assert len(amili.emulator.store.all()) == 1
