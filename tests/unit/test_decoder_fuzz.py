"""Fuzzing the decoder of ``invoice-created`` records.

Whatever a record holds (random bytes, JSON of any shape, CloudEvents with one thing wrong, headers
with random keys and non-UTF-8 values, in structured or binary mode), ``decode_invoice_created``
either decodes it or raises ``EnvelopeError``, nothing else; and the processor sends every record
it cannot decode to the dead letters, untouched, and never publishes a result for it.

``garbage_records`` makes a fixed, seeded sample of such records; the contract test on the real
broker (tests/integration/test_contract_kafka.py) sends the same sample through the service, and
the ``PATHOLOGICAL`` and ``WIRE_HOSTILE`` records too: JSON beyond the parser's limits, and events
that decode but that Amili's wire cannot carry. Either kind must end as a dead letter (or a rejected
result), never as an exception: the consumption engine retries an exception forever.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple

import httpx
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from devkit.emulator.app import Emulator
from devkit.emulator.settings import DEMO_ACCOUNT, DEMO_API_KEY, DEMO_CREDITOR, EmulatorSettings
from service.amili.client import AmiliClient, HttpSettings
from service.circuit import AmiliCircuit
from service.domain.outcomes import Outcome
from service.domain.rules import TransformDefaults
from service.events.cloudevents import EnvelopeError
from service.events.contract import INVOICE_CREATED_TYPE, decode_invoice_created
from service.events.record import InboundRecord
from service.ports import AmiliPort
from service.processing import InvoiceProcessor
from service.registration import InvoiceRegistration, RegistrationPolicy
from tests.fakes import FakeAmili, FakeDeadLetters, FakeLedger, FakeResults, RecordingSleep

Headers = tuple[tuple[str, bytes], ...]
STRUCTURED = b"application/cloudevents+json"
BINARY = b"application/json"
FUZZ_SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

VALID_DATA: dict[str, Any] = {
    "invoice_number": "FUZZ-1",
    "account": DEMO_ACCOUNT,
    "creditor": DEMO_CREDITOR,
    "issue_date": "2026-11-20",
    "due_date": "2026-12-20",
    "customer": {"type": "person", "name": "Astrid Lindqvist", "id_number": "811218-9876"},
    "lines": [{"description": "Broadband", "quantity": 1, "unit_price": 399, "total_excluding_vat": 399}],
}
VALID_EVENT: dict[str, Any] = {
    "specversion": "1.0",
    "id": "fuzz-0001",
    "source": "urn:billing:fuzz",
    "type": INVOICE_CREATED_TYPE,
    "time": "2026-11-20T09:00:00Z",
    "datacontenttype": "application/json",
    "data": VALID_DATA,
}
BINARY_ATTRIBUTES: dict[str, bytes] = {
    f"ce_{name}": str(VALID_EVENT[name]).encode() for name in ("specversion", "id", "source", "type", "time")
}


def record(
    value: bytes | None, headers: Headers = (), key: bytes | None = None, offset: int = 0
) -> InboundRecord:
    return InboundRecord(
        topic="invoice-created", partition=0, offset=offset, key=key, value=value, headers=headers
    )


def decodes(candidate: InboundRecord) -> bool:
    """True when the record decodes; False on ``EnvelopeError`` (anything else propagates)."""
    try:
        decode_invoice_created(candidate)
    except EnvelopeError:
        return False
    return True


# --- strategies -------------------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
header_keys = st.sampled_from(
    ["content-type", *BINARY_ATTRIBUTES, "ce_subject", "ce_", "ce_data", "traceparent"]
) | st.text(max_size=16)
header_values = (
    st.binary(max_size=32)
    | st.sampled_from([STRUCTURED, BINARY, b"text/plain", b"1.0", INVOICE_CREATED_TYPE.encode(), b"\xff\xfe"])
    | st.text(max_size=16).map(str.encode)
)
random_headers = st.lists(st.tuples(header_keys, header_values), max_size=6).map(tuple)


@st.composite
def mutated_events(draw: Callable[[st.SearchStrategy[Any]], Any]) -> bytes:
    """A valid structured event with one thing changed: an attribute or the data replaced, removed
    or retyped, or the bytes cut or flipped."""
    event = json.loads(json.dumps(VALID_EVENT))
    how = draw(st.sampled_from(["drop", "replace", "data field", "cut", "flip"]))
    if how == "drop":
        del event[draw(st.sampled_from(sorted(event)))]
    elif how == "replace":
        event[draw(st.sampled_from(sorted(event)))] = draw(json_values)
    elif how == "data field":
        field = draw(st.sampled_from([*sorted(VALID_DATA), "unknown"]))
        event["data"][field] = draw(json_values)
    encoded = json.dumps(event).encode()
    if how == "cut":
        return encoded[: draw(st.integers(0, len(encoded) - 1))]
    if how == "flip":
        position = draw(st.integers(0, len(encoded) - 1))
        return (
            encoded[:position]
            + bytes([encoded[position] ^ draw(st.integers(1, 255))])
            + encoded[position + 1 :]
        )
    return encoded


record_values = (
    st.none()
    | st.binary(max_size=200)
    | json_values.map(lambda value: json.dumps(value).encode())
    | mutated_events()
)


@st.composite
def records(draw: Callable[[st.SearchStrategy[Any]], Any]) -> InboundRecord:
    """Structured-ish or binary-ish records with random values and headers."""
    headers: Headers = draw(random_headers)
    if draw(st.booleans()):  # binary mode: some of the ce_* attributes, maybe broken
        attributes = dict(BINARY_ATTRIBUTES)
        for name in draw(st.lists(st.sampled_from(sorted(attributes)), unique=True, max_size=3)):
            if draw(st.booleans()):
                del attributes[name]
            else:
                attributes[name] = draw(header_values)
        headers = (*attributes.items(), *headers)
    key = draw(st.none() | st.binary(max_size=16))
    return record(draw(record_values), headers, key=key)


# --- a processor on fakes ---------------------------------------------------------------------------


class World(NamedTuple):
    processor: InvoiceProcessor
    amili: FakeAmili
    results: FakeResults
    dead_letters: FakeDeadLetters


def world(amili: AmiliPort | None = None) -> World:
    fake = FakeAmili()
    ledger, results, dead_letters = FakeLedger(), FakeResults(), FakeDeadLetters()
    registration = InvoiceRegistration(
        amili=amili or fake,
        ledger=ledger,
        circuit=AmiliCircuit(failure_threshold=50, open_seconds=0, unauthorized_retry_seconds=0),
        owner="fuzz",
        clock=lambda: datetime.now(UTC),
        policy=RegistrationPolicy(max_attempts=1),
        sleep=RecordingSleep(),
    )
    processor = InvoiceProcessor(
        registration=registration,
        ledger=ledger,
        results=results,
        dead_letters=dead_letters,
        defaults=TransformDefaults(account=DEMO_ACCOUNT, creditor=DEMO_CREDITOR),
        sleep=RecordingSleep(),
    )
    return World(processor, fake, results, dead_letters)


async def assert_dead_lettered(garbage: InboundRecord) -> None:
    try:
        decode_invoice_created(garbage)
    except EnvelopeError as error:
        rule = error.rule
    else:
        raise AssertionError(f"decodes: {garbage!r}")
    fakes = world()
    handled = await fakes.processor.process(garbage)
    assert handled.outcome is None
    assert handled.dead_letter_rule == rule
    [(letter, letter_rule, reason)] = fakes.dead_letters.letters
    assert letter == garbage  # key, value and headers as they came
    assert letter_rule == rule
    assert reason
    assert fakes.results.published == []
    assert fakes.amili.posts == 0


# --- the properties ---------------------------------------------------------------------------------


@FUZZ_SETTINGS
@given(candidate=records())
def test_the_decoder_raises_only_envelope_errors(candidate: InboundRecord) -> None:
    problem: EnvelopeError | None = None
    try:
        decode_invoice_created(candidate)
    except EnvelopeError as error:
        problem = error
    if problem is not None:
        assert problem.rule
        assert str(problem)


@FUZZ_SETTINGS
@given(value=st.none() | st.binary(max_size=300), headers=random_headers)
def test_random_bytes_and_headers_never_decode(value: bytes | None, headers: Headers) -> None:
    assert not decodes(record(value, headers))


@FUZZ_SETTINGS
@given(candidate=records())
async def test_every_undecodable_record_ends_in_the_dead_letters_and_never_in_a_result(
    candidate: InboundRecord,
) -> None:
    assume(not decodes(candidate))
    await assert_dead_lettered(candidate)


# --- a fixed sample, for the real broker too --------------------------------------------------------


@dataclass(frozen=True)
class Garbage:
    """A record the service cannot decode, as produced onto a topic."""

    kind: str
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]


def _structured(event: dict[str, Any]) -> bytes:
    return json.dumps(event).encode()


def _without(name: str) -> dict[str, Any]:
    return {k: v for k, v in VALID_EVENT.items() if k != name}


def _with_data(**changes: Any) -> dict[str, Any]:
    return {**VALID_EVENT, "data": {**VALID_DATA, **changes}}


def _binary(**changes: bytes | None) -> tuple[tuple[str, bytes], ...]:
    attributes = {**BINARY_ATTRIBUTES, **changes}
    return (*((k, v) for k, v in attributes.items() if v is not None), ("content-type", BINARY))


# (kind, value, headers) makers; each takes the generator, so the sample is fixed by its seed.
_KINDS: list[tuple[str, Callable[[random.Random], tuple[bytes | None, Headers]]]] = [
    ("random bytes", lambda r: (r.randbytes(r.randint(1, 64)), ())),
    ("not JSON", lambda r: (b"invoice " + str(r.random()).encode(), ())),
    ("JSON array", lambda r: (json.dumps([r.random(), "x"]).encode(), (("content-type", STRUCTURED),))),
    ("JSON scalar", lambda r: (json.dumps(r.randint(0, 10**6)).encode(), ())),
    ("empty value", lambda r: (b"", (("content-type", STRUCTURED),))),
    ("tombstone", lambda r: (None, ())),
    ("no id", lambda r: (_structured(_without("id")), (("content-type", STRUCTURED),))),
    ("no time", lambda r: (_structured(_without("time")), ())),
    ("naive time", lambda r: (_structured({**VALID_EVENT, "time": "2026-11-20T09:00:00"}), ())),
    ("specversion 0.3", lambda r: (_structured({**VALID_EVENT, "specversion": "0.3"}), ())),
    ("other type", lambda r: (_structured({**VALID_EVENT, "type": "billing.invoice.paid.v1"}), ())),
    ("data not an invoice", lambda r: (_structured({**VALID_EVENT, "data": [1, 2, 3]}), ())),
    # Data that breaks the schema but names its invoice gets a rejected result; without a name
    # for the invoice nobody can be told by invoice, so it is a dead letter.
    ("no invoice number", lambda r: (_structured(_with_data(invoice_number=None)), ())),
    # An unknown field alone is ignored (UNKNOWN_FIELDS=ignore); it must not hide a real violation.
    (
        "unknown field, empty number",
        lambda r: (_structured(_with_data(colour="blue", invoice_number="")), ()),
    ),
    ("invoice number not text", lambda r: (_structured(_with_data(invoice_number=12345, lines=[])), ())),
    ("creditor not text", lambda r: (_structured(_with_data(creditor=["a"], due_date="2026-02-30")), ())),
    (
        "datacontenttype text/plain",
        lambda r: (
            _structured({**VALID_EVENT, "datacontenttype": "text/plain"}),
            (("content-type", STRUCTURED),),
        ),
    ),
    ("content-type text/plain", lambda r: (_structured(VALID_EVENT), (("content-type", b"text/plain"),))),
    ("binary, value not JSON", lambda r: (r.randbytes(16) + b"\xff", _binary())),
    (
        "binary, ce_time not a time",
        lambda r: (json.dumps(VALID_DATA).encode(), _binary(ce_time=b"yesterday")),
    ),
    ("binary, ce_id missing", lambda r: (json.dumps(VALID_DATA).encode(), _binary(ce_id=None))),
    ("binary, ce_type not UTF-8", lambda r: (json.dumps(VALID_DATA).encode(), _binary(ce_type=b"\xc3\x28"))),
    (
        "binary, content-type xml",
        lambda r: (json.dumps(VALID_DATA).encode(), (*_binary()[:-1], ("content-type", b"application/xml"))),
    ),
]


def garbage_records(seed: int = 20261124, count: int = 30) -> list[Garbage]:
    """``count`` undecodable records, every kind above at least once when ``count`` allows, each
    with a random key (or none) and random extra headers, some of them not UTF-8."""
    rng = random.Random(seed)
    sample = []
    for index in range(count):
        kind, make = _KINDS[index] if index < len(_KINDS) else rng.choice(_KINDS)
        value, headers = make(rng)
        extra = tuple(
            (
                rng.choice(["trace", "x-origin", "reply_to", f"h{rng.randint(0, 99)}"]),
                rng.randbytes(rng.randint(0, 8)),
            )
            for _ in range(rng.randint(0, 3))
        )
        key = None if rng.random() < 0.3 else rng.randbytes(rng.randint(1, 12))
        if key is None and value is None:  # a record needs one of them
            key = b"tombstone"
        sample.append(Garbage(kind, key, value, (*headers, *extra)))
    return sample


def _is_utf8(value: bytes) -> bool:
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def test_the_seeded_sample_is_fixed_and_covers_every_kind() -> None:
    sample = garbage_records()
    assert sample == garbage_records()
    assert len(sample) == 30
    assert {garbage.kind for garbage in sample} == {kind for kind, _ in _KINDS}
    non_utf8 = [value for garbage in sample for _, value in garbage.headers if not _is_utf8(value)]
    assert non_utf8, "some headers must not be UTF-8"


@pytest.mark.parametrize("garbage", garbage_records(), ids=lambda garbage: garbage.kind)
async def test_the_seeded_sample_ends_in_the_dead_letters(garbage: Garbage) -> None:
    await assert_dead_lettered(record(garbage.value, garbage.headers, key=garbage.key))


# Records that are JSON by the letter, but more than Python's json module takes: a number of more
# than 4300 digits (ValueError) and nesting deeper than the recursion limit (RecursionError).
PATHOLOGICAL: dict[str, bytes] = {
    "huge integer": b'{"specversion": "1.0", "n": ' + b"9" * 5000 + b"}",
    "deep nesting": b'{"data": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
}


@pytest.mark.parametrize("value", PATHOLOGICAL.values(), ids=list(PATHOLOGICAL))
async def test_json_beyond_the_parsers_limits_is_dead_lettered_too(value: bytes) -> None:
    await assert_dead_lettered(record(value, (("content-type", STRUCTURED),)))
    await assert_dead_lettered(record(value, (*BINARY_ATTRIBUTES.items(), ("content-type", BINARY))))


def _event_with(**data: Any) -> bytes:
    return json.dumps({**VALID_EVENT, "data": {**VALID_DATA, **data}}).encode()


def _nested(depth: int) -> Any:
    value: Any = []
    for _ in range(depth - 1):
        value = [value]
    return value


# Events that decode, but that Amili's wire cannot carry: a lone surrogate (valid JSON, "\ud800",
# yet no UTF-8 encoding) and nesting the registration payload cannot be serialized with.
WIRE_HOSTILE: dict[str, bytes] = {
    "lone surrogate": _event_with(headline="Broadband \ud800"),
    "nested 300 deep": _event_with(case_settings={"deep": _nested(300)}),
}


@pytest.mark.parametrize("value", WIRE_HOSTILE.values(), ids=list(WIRE_HOSTILE))
async def test_an_event_amili_cannot_be_sent_is_not_retried_forever(value: bytes) -> None:
    """The real client against the emulator (in-process): the record ends as a dead letter or a
    rejected result; an exception would make the consumption engine retry it forever."""
    emulator = Emulator(EmulatorSettings())
    client = AmiliClient(
        "http://amili",
        SecretStr(DEMO_API_KEY),
        HttpSettings(transport="httpx"),
        transport=httpx.ASGITransport(app=emulator.app()),
    )
    fakes = world(amili=client)
    async with client:
        handled = await asyncio.wait_for(
            fakes.processor.process(record(value, (("content-type", STRUCTURED),))), 10
        )
    assert handled.outcome in (None, Outcome.REJECTED)
    assert emulator.store.all() == []
