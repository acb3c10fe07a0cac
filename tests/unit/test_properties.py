"""Properties of the transform, checked on generated invoices (hypothesis).

- Every valid canonical invoice transforms into a payload the Amili emulator accepts (201), with
  the emulator checking Swedish id numbers.
- Every invoice that breaks exactly one business rule is rejected by the transform, with a
  violation naming the broken ``data.`` field, and never reaches Amili.

The strategies build the ``data`` of an ``invoice-created`` event as a billing system would send it
(JSON: absent keys, numbers or decimal strings), so they are also checked against the committed
JSON Schema.
"""

from __future__ import annotations

import json
import re
import string
import uuid
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from email.utils import format_datetime
from functools import cache
from typing import Any

import httpx
import jsonschema
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devkit.emulator.app import Emulator
from devkit.emulator.settings import DEMO_ACCOUNT, DEMO_API_KEY, DEMO_CREDITOR, EmulatorSettings
from devkit.schemas import INVOICE_DATA_FILE, SCHEMA_DIR
from service.amili.mapping import to_registration
from service.amili.models import InvoiceRegistrationRequest
from service.domain.invoice import Invoice, References
from service.domain.outcomes import Outcome, Rejection
from service.domain.rules import TransformDefaults
from service.events.contract import INVOICE_CREATED_TYPE
from tests.fakes import structured_record
from tests.unit.test_decoder_fuzz import world

Data = dict[str, Any]
Draw = Callable[[st.SearchStrategy[Any]], Any]

DEFAULTS = TransformDefaults(account=DEMO_ACCOUNT, creditor=DEMO_CREDITOR)
VAT_RATES = (0, 6, 12, 25)
SWEDISH_PLATE = re.compile(r"^[A-Z]{3} ?\d{2}[A-Z0-9]$")  # the rule as the service states it
CENT = Decimal("0.01")
PROPERTY_SETTINGS = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)

# --- Swedish numbers, from the public rules (not the service's code) ---------------------------


def luhn(digits: str) -> int:
    """The mod-10 check digit of ``digits``: every other digit doubled, from the right."""
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char) * (2 if position % 2 == 0 else 1)
        total += value - 9 if value > 9 else value
    return (10 - total % 10) % 10


@st.composite
def personnummer(draw: Draw, *, check_offset: int = 0) -> str:
    """YYMMDD-NNNC, YYMMDDNNNC, YYYYMMDD-NNNC or YYYYMMDDNNNC; sometimes a samordningsnummer
    (day + 60). ``check_offset`` (1-9) makes the check digit wrong by that much."""
    long_form = draw(st.booleans())
    # The short form is read as 19YY: keep its dates valid in that century.
    born = draw(st.dates(date(1901, 1, 1), date(2025, 12, 31) if long_form else date(1999, 12, 31)))
    day = born.day + (60 if draw(st.booleans()) else 0)
    serial = draw(st.integers(0, 999))
    yymmdd = f"{born.year % 100:02d}{born.month:02d}{day:02d}"
    check = (luhn(f"{yymmdd}{serial:03d}") + check_offset) % 10
    separator = draw(st.sampled_from(["-", ""]))
    head = f"{born.year}{born.month:02d}{day:02d}" if long_form else yymmdd
    return f"{head}{separator}{serial:03d}{check}"


@st.composite
def organisationsnummer(draw: Draw, *, check_offset: int = 0) -> str:
    """NNNNNN-NNNN with the third digit 2 or more, optionally prefixed 16 or without the dash."""
    digits = [draw(st.integers(0, 9)) for _ in range(9)]
    digits[2] = draw(st.integers(2, 9))
    body = "".join(map(str, digits))
    number = body + str((luhn(body) + check_offset) % 10)
    prefix = draw(st.sampled_from(["", "16"]))
    separator = draw(st.sampled_from(["-", ""]))
    return f"{prefix}{number[:6]}{separator}{number[6:]}"


@st.composite
def swedish_plates(draw: Draw) -> str:
    letters = draw(st.text(string.ascii_uppercase, min_size=3, max_size=3))
    digits = draw(st.text(string.digits, min_size=2, max_size=2))
    last = draw(st.sampled_from(string.ascii_uppercase + string.digits))
    return f"{letters}{draw(st.sampled_from(['', ' ']))}{digits}{last}"


# --- the canonical invoice ------------------------------------------------------------------------

texts = st.text(min_size=1, max_size=30)
short_texts = st.text(max_size=20)
foreign_countries = st.sampled_from(["NO", "DK", "FI", "DE", "GB", "PL", "EE", "US"])


def put_optional(draw: Draw, target: Data, key: str, strategy: st.SearchStrategy[Any]) -> None:
    """Sets ``target[key]`` or leaves the key out, as the draw decides."""
    if draw(st.booleans()):
        target[key] = draw(strategy)


def as_event_day(draw: Draw, day: date) -> str:
    """``day`` as a billing system may write it: an ISO date, or an instant on that day (UTC) with
    a time of day, written with some UTC offset."""
    if draw(st.booleans()):
        return str(day)
    seconds = draw(st.integers(0, 24 * 3600 - 1))
    instant = datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(seconds=seconds)
    offset = timezone(timedelta(minutes=draw(st.integers(-14 * 4, 14 * 4)) * 15))
    return instant.astimezone(offset).isoformat()


def as_json_amount(draw: Draw, value: Decimal) -> Any:
    """An amount as a billing system may write it: a JSON number or a decimal string."""
    if draw(st.booleans()):
        return str(value)
    return int(value) if value == value.to_integral_value() else float(value)


@st.composite
def addresses(draw: Draw, *, country: st.SearchStrategy[str]) -> Data:
    address: Data = {}
    put_optional(draw, address, "lines", st.lists(texts, max_size=3))
    put_optional(draw, address, "postal_code", st.from_regex(r"\A[0-9]{3} ?[0-9]{2}\Z"))
    put_optional(draw, address, "city", texts)
    put_optional(draw, address, "country", country)
    put_optional(draw, address, "gln", st.from_regex(r"\A[0-9]{13}\Z"))
    return address


@st.composite
def car_registrations(draw: Draw) -> Data:
    if draw(st.booleans()):
        car: Data = {"number": draw(swedish_plates())}
        put_optional(draw, car, "country", st.just("SE"))
    else:
        car = {"number": draw(texts), "country": draw(foreign_countries)}
    if draw(st.booleans()):
        car["ownership_date"] = as_event_day(draw, draw(st.dates(date(2000, 1, 1), date(2030, 12, 31))))
    return car


@st.composite
def customers(draw: Draw) -> Data:
    kind = draw(st.sampled_from(["person", "company", "foreign"]))
    customer: Data = {"type": kind, "name": draw(texts)}
    id_numbers = {
        "person": personnummer(),
        "company": organisationsnummer(),
        "foreign": st.text(string.ascii_uppercase + string.digits + "-", min_size=1, max_size=20),
    }[kind]
    put_optional(draw, customer, "id_number", id_numbers)
    if draw(st.integers(0, 3)) == 0:
        customer["car_registration"] = draw(car_registrations())
    else:
        put_optional(draw, customer, "customer_number", st.from_regex(r"\AC-[0-9]{1,8}\Z"))
    country = foreign_countries if kind == "foreign" else st.just("SE")
    put_optional(draw, customer, "address", addresses(country=country))
    put_optional(draw, customer, "mobile_number", st.from_regex(r"\A\+[0-9]{8,13}\Z"))
    put_optional(draw, customer, "email", st.emails())
    return customer


@st.composite
def invoice_lines(draw: Draw) -> Data:
    """A line whose total is quantity x unit price (to the öre) when both are given."""
    line: Data = {"description": draw(texts)}
    vat = draw(st.sampled_from(VAT_RATES))
    line["vat_rate"] = draw(st.sampled_from([vat, str(vat), float(vat)]))
    if vat == 25 and draw(st.booleans()):
        del line["vat_rate"]  # 25 is the default
    discount = draw(st.integers(0, 4)) == 0
    sign = -1 if discount else 1
    # Up to six decimals (kWh, minutes), within Amili's bound (pydantic's decimal_places).
    quantity = Decimal(draw(st.integers(1, 100_000))).scaleb(-draw(st.integers(0, 6)))
    unit_price = sign * Decimal(draw(st.integers(0, 10_000_000))).scaleb(-draw(st.integers(0, 6)))
    shape = draw(st.sampled_from(["priced", "priced", "total only", "quantity only", "price only"]))
    if shape == "priced":
        total = (quantity * unit_price).quantize(CENT)
        line["quantity"] = as_json_amount(draw, quantity)
        line["unit_price"] = as_json_amount(draw, unit_price)
    else:
        total = sign * Decimal(draw(st.integers(0, 10**9))).scaleb(-2)
        if shape == "quantity only":
            line["quantity"] = as_json_amount(draw, quantity)
        elif shape == "price only":
            line["unit_price"] = as_json_amount(draw, unit_price)
    line["total_excluding_vat"] = as_json_amount(draw, total)
    if discount:
        line["is_discount"] = True
    put_optional(draw, line, "article_number", st.from_regex(r"\A[A-Z]{2,4}-[0-9]{1,5}\Z"))
    put_optional(draw, line, "cost_center", short_texts)
    if draw(st.booleans()):
        line["article_date"] = as_event_day(draw, draw(st.dates(date(2020, 1, 1), date(2030, 12, 31))))
    put_optional(draw, line, "order_line_reference", short_texts)
    put_optional(draw, line, "custom_columns", st.lists(short_texts, max_size=3))
    put_optional(draw, line, "extra_rows", st.lists(short_texts, max_size=2))
    return line


REFERENCE_FIELDS = tuple(References.model_fields)  # the event's own, as a billing system sends them
json_scalars = st.none() | st.booleans() | st.integers(-(10**6), 10**6) | short_texts


@st.composite
def valid_invoices(draw: Draw) -> Data:
    """The ``data`` of a valid invoice-created event."""
    issue = draw(st.dates(date(2020, 1, 1), date(2030, 12, 31)))
    data: Data = {
        "invoice_number": draw(st.from_regex(r"\A[A-Z]{1,4}-[0-9]{1,8}\Z")),
        "issue_date": as_event_day(draw, issue),
        "due_date": as_event_day(draw, issue + timedelta(days=draw(st.integers(0, 180)))),
        "customer": draw(customers()),
        "lines": draw(st.lists(invoice_lines(), min_size=1, max_size=6)),
    }
    put_optional(draw, data, "account", st.just(DEMO_ACCOUNT))
    put_optional(draw, data, "creditor", st.just(DEMO_CREDITOR))
    put_optional(draw, data, "invoice_type", st.just("invoice"))
    put_optional(draw, data, "currency", st.sampled_from(["SEK", "sek", "Sek"]))
    if draw(st.booleans()):
        data["delivery_date"] = as_event_day(draw, issue - timedelta(days=draw(st.integers(0, 60))))
    for key in ("headline", "body_text", "debt_description", "preferred_distribution"):
        put_optional(draw, data, key, texts)
    if draw(st.booleans()):
        fields = draw(st.lists(st.sampled_from(REFERENCE_FIELDS), unique=True))
        data["references"] = {name: draw(texts) for name in fields}
    put_optional(draw, data, "custom_column_headlines", st.lists(short_texts, max_size=3))
    put_optional(draw, data, "labels", st.lists(texts, max_size=3))
    put_optional(draw, data, "case_settings", st.dictionaries(short_texts, json_scalars, max_size=3))
    put_optional(draw, data, "start_flow", st.booleans())
    # As it arrives: through JSON.
    parsed: Data = json.loads(json.dumps(data))
    return parsed


# --- invoices that break exactly one rule ---------------------------------------------------------

Breakage = Callable[[Draw, Data], str]
"""Breaks one rule of ``data`` in place; returns the field path the rejection must name."""


def due_before_issue(draw: Draw, data: Data) -> str:
    issue = utc_day(data["issue_date"])
    data["due_date"] = as_event_day(draw, issue - timedelta(days=draw(st.integers(1, 400))))
    return "data.due_date"


def utc_day(text: str) -> date:
    """The day (in UTC) an event's date names."""
    if len(text) == len("2024-01-21"):
        return date.fromisoformat(text)
    return datetime.fromisoformat(text).astimezone(UTC).date()


def vat_not_allowed(draw: Draw, data: Data) -> str:
    index = draw(st.integers(0, len(data["lines"]) - 1))
    rate = draw(st.sampled_from([1, 5, 7.5, 10, 18, 20, 24, 30, 100, -25]))
    data["lines"][index]["vat_rate"] = draw(st.sampled_from([rate, str(rate)]))
    return f"data.lines[{index}].vat_rate"


def currency_not_sek(draw: Draw, data: Data) -> str:
    data["currency"] = draw(st.sampled_from(["EUR", "NOK", "DKK", "USD", "GBP", "eur", "Nok"]))
    return "data.currency"


def inconsistent_line_total(draw: Draw, data: Data) -> str:
    index = draw(st.integers(0, len(data["lines"]) - 1))
    line = data["lines"][index]
    quantity = Decimal(draw(st.integers(1, 1000)))
    unit_price = Decimal(draw(st.integers(1, 10**6))).scaleb(-2)
    off_by = Decimal(draw(st.integers(2, 10**6))).scaleb(-2) * draw(st.sampled_from([1, -1]))
    line["quantity"] = str(quantity)
    line["unit_price"] = str(unit_price)
    line["total_excluding_vat"] = str(quantity * unit_price + off_by)
    return f"data.lines[{index}].total_excluding_vat"


def bad_check_digit(draw: Draw, data: Data) -> str:
    customer = data["customer"]
    offset = draw(st.integers(1, 9))
    if draw(st.booleans()):
        customer["type"] = "person"
        customer["id_number"] = draw(personnummer(check_offset=offset))
    else:
        customer["type"] = "company"
        customer["id_number"] = draw(organisationsnummer(check_offset=offset))
    address = customer.get("address")
    if address is not None and "country" in address:
        address["country"] = "SE"
    return "data.customer.id_number"


def car_with_customer_number(draw: Draw, data: Data) -> str:
    customer = data["customer"]
    customer.setdefault("car_registration", draw(car_registrations()))
    customer["customer_number"] = draw(st.from_regex(r"\AC-[0-9]{1,8}\Z"))
    return "data.customer.car_registration"


def non_swedish_plate(draw: Draw, data: Data) -> str:
    customer = data["customer"]
    customer.pop("customer_number", None)
    plate = draw(
        st.sampled_from(["AB123", "ABCD123", "abc123", "ABC-123", "123ABC", "ABC 1234", "ÅÄÖ12A", "ABC12"])
        | texts.filter(lambda text: not SWEDISH_PLATE.match(text))
    )
    customer["car_registration"] = {"number": plate, **draw(st.sampled_from([{}, {"country": "SE"}]))}
    return "data.customer.car_registration.number"


BREAKAGES: dict[str, Breakage] = {
    "due before issue": due_before_issue,
    "VAT not 0/6/12/25": vat_not_allowed,
    "currency not SEK": currency_not_sek,
    "line total not quantity x price": inconsistent_line_total,
    "bad id check digit": bad_check_digit,
    "car registration with customer number": car_with_customer_number,
    "not a Swedish plate": non_swedish_plate,
}


# --- the properties -------------------------------------------------------------------------------


@cache
def data_schema_validator() -> jsonschema.Draft202012Validator:
    schema = json.loads((SCHEMA_DIR / INVOICE_DATA_FILE).read_text(encoding="utf-8"))
    return jsonschema.Draft202012Validator(
        schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
    )


@cache
def emulator() -> Emulator:
    """One emulator for the module, checking id numbers; invoice numbers are made unique per example."""
    return Emulator(EmulatorSettings(check_id_numbers=True))


def unique(data: Data) -> Data:
    return {**data, "invoice_number": f"{data['invoice_number']}-{uuid.uuid4().hex[:12]}"}


@PROPERTY_SETTINGS
@given(data=valid_invoices())
async def test_every_valid_invoice_is_accepted_by_amili(data: Data) -> None:
    data = unique(data)
    data_schema_validator().validate(data)
    payload = to_registration(Invoice.model_validate(data), DEFAULTS)
    assert isinstance(payload, InvoiceRegistrationRequest), payload
    assert json.loads(payload.wire_json()) == payload.to_wire()  # the body sent is the model's wire form
    transport = httpx.ASGITransport(app=emulator().app())
    async with httpx.AsyncClient(transport=transport, base_url="http://amili") as amili:
        response = await amili.post(
            "/invoice--registrations", json=payload.to_wire(), headers={"x-api-key": DEMO_API_KEY}
        )
    assert response.status_code == 201, (response.status_code, response.text, payload.to_wire())


def invoice_created(data: Data) -> Data:
    return {
        "specversion": "1.0",
        "id": str(uuid.uuid4()),
        "source": "urn:billing:properties",
        "type": INVOICE_CREATED_TYPE,
        "time": "2026-11-20T09:00:00Z",
        "data": data,
    }


@PROPERTY_SETTINGS
@given(data=valid_invoices(), breakage=st.sampled_from(sorted(BREAKAGES)), draw=st.data())
async def test_an_invoice_breaking_one_rule_is_rejected_before_amili(
    data: Data, breakage: str, draw: Any
) -> None:
    field = BREAKAGES[breakage](draw.draw, data)
    data_schema_validator().validate(data)  # still the right shape: only a business rule is broken
    result = to_registration(Invoice.model_validate(data), DEFAULTS)
    assert isinstance(result, Rejection), f"{breakage}: not rejected"
    assert {violation.field for violation in result.violations} == {field}, (breakage, result.violations)
    assert all(violation.rule and violation.message for violation in result.violations)

    # Through the processor: a rejected result, and Amili never called.
    processor, amili, results, dead_letters = world()
    handled = await processor.process(structured_record(invoice_created(data)))
    assert handled.outcome is Outcome.REJECTED
    assert amili.posts == 0
    assert amili.lookups == 0
    assert dead_letters.letters == []
    [(event, _)] = results.published
    assert event.data["outcome"] == "rejected"
    assert {reason["field"] for reason in event.data["reasons"]} == {field}


def _instant(text: str) -> datetime:
    if len(text) == len("2024-01-21"):
        day = date.fromisoformat(text)
        return datetime(day.year, day.month, day.day, tzinfo=UTC)
    return datetime.fromisoformat(text).astimezone(UTC)


@PROPERTY_SETTINGS
@given(data=valid_invoices())
def test_dates_and_fine_decimals_reach_amili_exactly(data: Data) -> None:
    """Every date goes out as its instant in RFC 1123 GMT (a plain date as midnight), and every
    unit price and quantity as a JSON number that reads back as the decimal the event carried."""
    invoice = Invoice.model_validate(data)
    payload = to_registration(invoice, DEFAULTS)
    assert isinstance(payload, InvoiceRegistrationRequest), payload
    sent = json.loads(payload.wire_json())
    for event_field, amili_field in (
        ("issue_date", "invoice_date"),
        ("due_date", "invoice_due_date"),
        ("delivery_date", "invoice_delivery_date"),
    ):
        if event_field in data:
            assert sent[amili_field] == format_datetime(_instant(data[event_field]), usegmt=True)
    for line, item in zip(data["lines"], sent["matrix"], strict=True):
        for event_field, amili_field in (("unit_price", "unit_price"), ("quantity", "number_of_units")):
            if event_field in line:
                # As a JSON reader holding a double would see it, and back to decimal.
                assert Decimal(repr(float(item[amili_field]))) == Decimal(str(line[event_field]))
        if "article_date" in line:
            assert item["article_date"] == format_datetime(_instant(line["article_date"]), usegmt=True)
