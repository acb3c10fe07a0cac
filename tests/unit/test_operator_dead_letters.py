"""The dead-letter operator commands without a broker: reading dead letters tolerantly, choosing
them, and what a redrive would send."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from service.cli import build_parser, main
from service.events.record import InboundRecord
from service.kafka.publishing import dead_letter_headers, truncated_dead_letter
from service.operator.dead_letters_model import (
    DeadLetter,
    Invoice,
    Origin,
    Selection,
    in_order,
    read_origins,
    shorten,
)
from service.operator.dead_letters_redrive import Planned, RedriveOptions, _refusal, choose, prepare
from service.operator.errors import OperatorError
from service.operator.kafka_tools import Missing, Record

T0 = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
EVENT = {
    "specversion": "1.0",
    "id": "evt-1",
    "source": "urn:billing:test",
    "type": "billing.invoice.created.v1",
    "datacontenttype": "application/json",
    "data": {"invoice_number": "INV-1", "creditor": "cred-1"},
}


def letter(
    *,
    value: bytes | None = None,
    rule: str = "gave_up",
    at: datetime = T0,
    source_partition: int = 0,
    source_offset: int = 7,
    offset: int = 0,
    own: tuple[tuple[str, bytes], ...] = (("content-type", b"application/cloudevents+json"),),
    key: bytes | None = b"cred-1/INV-1",
) -> DeadLetter:
    value = json.dumps(EVENT).encode() if value is None else value
    inbound = InboundRecord("invoice-created", source_partition, source_offset, key, value, own)
    headers = dead_letter_headers(inbound, rule, f"why {rule}", at)
    return DeadLetter.of(Record("dlq", 0, offset, key, value, tuple(headers)))


def options(**overrides: Any) -> RedriveOptions:
    values: dict[str, Any] = {
        "selection": Selection(),
        "to": "invoice-created",
        "memory_topic": "dlq.redriven",
    }
    values["everything"] = True
    values.update(overrides)
    return RedriveOptions(**values)


def test_a_dead_letter_says_why_whence_when_and_which_invoice() -> None:
    dead = letter()
    assert dead.rule == "gave_up"
    assert dead.reason == "why gave_up"
    assert dead.time == T0
    assert dead.origin == Origin("invoice-created", 0, 7)
    assert str(dead.origin) == "invoice-created/0/7"
    assert dead.own_headers == (("content-type", b"application/cloudevents+json"),)
    assert dead.invoice == Invoice("cred-1", "INV-1")
    assert str(dead.invoice) == "cred-1/INV-1"
    assert not dead.truncated


def test_an_unreadable_event_that_names_its_invoice_still_shows_it() -> None:
    other_type = {**EVENT, "type": "billing.invoice.deleted.v1"}
    assert letter(value=json.dumps(other_type).encode(), rule="type").invoice == Invoice("cred-1", "INV-1")
    binary_data = json.dumps({"invoice_number": "INV-2"}).encode()
    assert letter(value=binary_data, own=(("content-type", b"text/plain"),)).invoice == Invoice(None, "INV-2")


@pytest.mark.parametrize(
    "value",
    [
        b"",
        b"\xff\xfe not json",
        b"[1, 2]",
        b'{"data": 3}',
        b"[" * 100_000,
        b'{"data": {"invoice_number": 5}}',
    ],
)
def test_anything_in_a_dead_letter_is_tolerated(value: bytes) -> None:
    assert letter(value=value, rule="json").invoice is None


def test_headers_written_by_hand_are_tolerated() -> None:
    record = Record(
        "dlq",
        0,
        3,
        None,
        None,
        (("dlq.rule", b"\xff\xfe"), ("dlq.partition", b"x"), ("dlq.time", b"yesterday"), ("odd", b"\x00")),
    )
    dead = DeadLetter.of(record)
    assert dead.rule == "\ufffd\ufffd"
    assert dead.origin is None
    assert dead.time is None
    assert dead.own_headers == (("odd", b"\x00"),)
    assert dead.invoice is None
    assert not Selection(since=T0).holds(dead)
    assert not Selection(partitions=frozenset({0})).holds(dead)
    assert Selection(rules=frozenset({"\ufffd\ufffd"})).holds(dead)


def test_the_last_dlq_header_of_a_name_is_ours() -> None:
    # A dead letter redriven by hand with its dlq.* headers, and dead-lettered again.
    first = letter(rule="json")
    again = InboundRecord("invoice-created", 1, 9, None, b"x", tuple(first.record.headers))
    headers = dead_letter_headers(again, "type", "again", T0 + timedelta(hours=1))
    dead = DeadLetter.of(Record("dlq", 0, 1, None, b"x", tuple(headers)))
    assert (dead.rule, dead.origin) == ("type", Origin("invoice-created", 1, 9))
    assert dead.own_headers == (("content-type", b"application/cloudevents+json"),)


def test_a_truncated_dead_letter_says_so() -> None:
    value = b"v" * 100_000
    inbound = InboundRecord("invoice-created", 2, 5, b"k", value, (("h", b"1"),))
    cut, headers = truncated_dead_letter(inbound, dead_letter_headers(inbound, "too_large", "big", T0))
    dead = DeadLetter.of(Record("dlq", 0, 0, b"k", cut, tuple(headers)))
    assert dead.truncated
    assert dead.original_size == 100_000
    assert dead.value_sha256 == hashlib.sha256(value).hexdigest()
    assert dead.headers_dropped == 0
    assert dead.invoice is None
    assert _refusal(dead, Record("invoice-created", 2, 5, b"k", value)) is None
    other = _refusal(dead, Record("invoice-created", 2, 5, b"k", value + b"!"))
    assert other is not None
    assert "another one" in other
    gone = _refusal(dead, Missing("invoice-created partition 2 now begins at offset 9 (retention)"))
    assert gone == (
        "truncated dead letter and its original is gone: invoice-created partition 2 now begins at "
        "offset 9 (retention)"
    )


def test_filters() -> None:
    a = letter(rule="gave_up", at=T0, source_partition=0, offset=0)
    b = letter(rule="json", at=T0 + timedelta(hours=1), source_partition=1, offset=1, source_offset=8)
    c = letter(rule="type", at=T0 + timedelta(hours=2), source_partition=2, offset=2, source_offset=9)
    every = [a, b, c]

    def chosen(selection: Selection) -> list[int]:
        return [d.record.offset for d in every if selection.holds(d)]

    assert chosen(Selection()) == [0, 1, 2]
    assert chosen(Selection(rules=frozenset({"json", "type"}))) == [1, 2]
    assert chosen(Selection(since=T0 + timedelta(hours=1))) == [1, 2]
    assert chosen(Selection(until=T0 + timedelta(hours=1))) == [0]
    assert chosen(Selection(partitions=frozenset({0, 2}))) == [0, 2]
    assert chosen(Selection(origins=frozenset({Origin("invoice-created", 1, 8)}))) == [1]
    assert chosen(Selection(rules=frozenset({"json"}), partitions=frozenset({2}))) == []
    assert [d.record.offset for d in in_order([c, a, b])] == [0, 1, 2]


def test_origins_from_a_file_or_from_list_json() -> None:
    text = "# picked\ninvoice-created/0/7\n\n" + json.dumps({"origin": "invoice-created/2/9", "rule": "x"})
    assert read_origins("f", text) == [Origin("invoice-created", 0, 7), Origin("invoice-created", 2, 9)]
    with pytest.raises(OperatorError, match="f line 1: 'nope' is not topic/partition/offset"):
        read_origins("f", "nope")
    with pytest.raises(OperatorError, match="line 1: a JSON line without an origin"):
        read_origins("f", '{"rule": "x"}')


def test_choose_skips_what_was_redriven_and_duplicates_and_stops_at_the_limit() -> None:
    a = letter(source_offset=1, offset=0)
    duplicate = letter(source_offset=1, offset=1, at=T0 + timedelta(seconds=1))
    b = letter(source_offset=2, offset=2, at=T0 + timedelta(seconds=2))
    c = letter(source_offset=3, offset=3, at=T0 + timedelta(seconds=3))
    marks = {"invoice-created/0/2": {"time": "t", "sent_to": "invoice-created/1/40"}}
    plans = choose([c, b, duplicate, a], options(), marks)
    assert [(p.letter.place if p.letter else None, p.action) for p in plans] == [
        ("0/0", "send"),
        ("0/1", "skip"),
        ("0/2", "skip"),
        ("0/3", "send"),
    ]
    assert plans[1].detail == "the same origin as dead letter 0/0"
    assert plans[2].detail == "already redriven t to invoice-created/1/40"

    forced = choose([a, b, c], options(force=True), marks)
    assert [p.action for p in forced] == ["send", "send", "send"]
    assert "sent again (--force)" in forced[1].detail

    limited = choose([a, b, c], options(limit=1), marks)
    assert [(p.letter.place if p.letter else None, p.action) for p in limited] == [
        ("0/0", "send"),
        ("0/2", "skip"),
    ]


def test_choose_refuses_what_it_cannot_and_needs_a_selection() -> None:
    unknown = Origin("invoice-created", 0, 99)
    plans = choose(
        [letter()], options(everything=False, selection=Selection(origins=frozenset({unknown}))), {}
    )
    assert [(str(p.origin), p.action, p.detail) for p in plans] == [
        ("invoice-created/0/99", "refuse", "no dead letter has this origin (or it is filtered out)")
    ]
    with pytest.raises(OperatorError, match="say which dead letters"):
        choose([letter()], options(everything=False), {})
    two = [letter(source_offset=1), letter(source_offset=2, offset=1)]
    with pytest.raises(OperatorError, match="--edit replaces the value of one dead letter, and 2 are"):
        choose(two, options(edit=b"{}"), {})


async def test_what_a_redrive_sends_is_the_record_without_dlq_headers_plus_redrive_headers() -> None:
    own = (
        ("content-type", b"application/cloudevents+json"),
        ("redrive.origin", b"old"),
        ("x-bin", b"\x00\xff"),
    )
    dead = letter(own=own)
    plans = choose([dead], options(), {})
    await prepare(None, plans, options())  # type: ignore[arg-type]  # nothing to fetch
    (plan,) = plans
    assert plan.key == dead.record.key
    assert plan.value == dead.record.value
    names = [name for name, _ in plan.headers]
    assert names == ["content-type", "x-bin", "redrive.origin", "redrive.dead_letter", "redrive.time"]
    assert plan.headers[:2] == [("content-type", b"application/cloudevents+json"), ("x-bin", b"\x00\xff")]
    assert dict(plan.headers)["redrive.origin"] == b"invoice-created/0/7"
    assert dict(plan.headers)["redrive.dead_letter"] == b"dlq/0/0"

    edited = choose([dead], options(edit=b'{"fixed": true}'), {})
    await prepare(None, edited, options(edit=b'{"fixed": true}'))  # type: ignore[arg-type]
    assert edited[0].value == b'{"fixed": true}'
    assert dict(edited[0].headers)["redrive.edited"] == b"value"
    row = edited[0].row(dry_run=True, to="invoice-created")
    assert row["action"] == "would send"
    assert row["headers"][1] == ["x-bin", "\x00\\xff"]  # not UTF-8: escaped
    assert row["invoice"] == "cred-1/INV-1"


def test_a_planned_row_for_an_origin_without_dead_letter() -> None:
    row = Planned(Origin("t", 1, 2), None, "refuse", "none").row(dry_run=False, to="x")
    assert row == {
        "origin": "t/1/2",
        "dead_letter": None,
        "rule": None,
        "invoice": None,
        "action": "refused",
        "detail": "none",
        "to": None,
        "sent_to": None,
    }


def test_shorten() -> None:
    assert shorten("a" * 10, 10) == "a" * 10
    assert shorten("a" * 11, 10) == "a" * 9 + "…"
    assert shorten(None) is None


@pytest.mark.parametrize(
    "argv",
    [
        ["dead-letters", "list", "--since", "yesterday"],
        ["dead-letters", "redrive", "--origin", "topic-without-offset/0"],
        ["dead-letters", "list", "--limit", "0"],
        ["dead-letters", "list", "--partition", "-1"],
    ],
)
def test_bad_arguments_are_refused_by_the_parser(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(argv)
    assert exited.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("amili-registrar dead-letters")


def test_an_unreachable_broker_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from devkit.localkafka import free_port

    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", f"127.0.0.1:{free_port()}")
    monkeypatch.setenv("KAFKA_REQUEST_TIMEOUT_MS", "1000")
    assert main(["dead-letters", "list"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(
        "amili-registrar dead-letters: cannot read invoice-created.dead-letter: Kafka at 127.0.0.1:"
    )


def test_a_redrive_needs_a_selection_and_a_json_edit(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Any
) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert main(["dead-letters", "redrive", "--origin", "t/0/1", "--edit", str(bad)]) == 1
    assert capsys.readouterr().err.startswith(f"amili-registrar dead-letters: {bad} is not JSON:")
    assert main(["dead-letters", "redrive", "--file", str(tmp_path / "absent")]) == 1
    assert "cannot read the origins in" in capsys.readouterr().err


async def test_the_commands_connect_with_the_services_kafka_security() -> None:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
    from aiokafka.admin import AIOKafkaAdminClient
    from pydantic import SecretStr

    from service.config import Settings
    from service.operator.kafka_tools import security_options

    settings = Settings(
        kafka_bootstrap_servers="kafka-0:9093,kafka-1:9093",
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="operator",
        kafka_sasl_password=SecretStr("s3cret"),
    )
    options = security_options(settings)
    assert options["bootstrap_servers"] == "kafka-0:9093,kafka-1:9093"
    assert options["security_protocol"] == "SASL_SSL"
    assert options["ssl_context"] is not None
    assert (options["sasl_mechanism"], options["sasl_plain_username"]) == ("SCRAM-SHA-512", "operator")
    assert options["sasl_plain_password"] == "s3cret"
    # Each client the commands make takes them (nothing is connected here).
    AIOKafkaConsumer(group_id=None, **options)
    AIOKafkaProducer(acks="all", enable_idempotence=True, **options)
    AIOKafkaAdminClient(**options)
