"""The size limits checked at start: each refusal and each note, with its numbers, and what the
start does when the broker cannot be asked. tests/integration/test_kafka_limits.py reads a real
broker's limits and runs a refused start."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from typing import Any

import pytest
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from devkit.localkafka import free_port
from service.config import Settings
from service.events.record import InboundRecord
from service.kafka import limits as limits_module
from service.kafka.limits import (
    DEAD_LETTER_OVERHEAD_BYTES,
    MIN_RESULT_BYTES,
    TRUNCATED_DEAD_LETTER_BYTES,
    Finding,
    TopicLimit,
    TopicLimits,
    check_at_start,
    check_size_limits,
)
from service.kafka.publishing import (
    DEAD_LETTER_REASON_MAX_LENGTH,
    TRUNCATED_HEADERS_BYTES,
    dead_letter_headers,
    truncated_dead_letter,
)

MiB = 1024 * 1024
BROKER_DEFAULT = 1_048_588  # Kafka's message.max.bytes: 1 MiB and the 12 bytes of a v0 record's framing


def _limits(
    *, source: int = BROKER_DEFAULT, result: int = BROKER_DEFAULT, dead_letter: int = BROKER_DEFAULT
) -> TopicLimits:
    return TopicLimits(
        invoice_created=TopicLimit("invoice-created", "INVOICE_CREATED_TOPIC", source),
        registration_result=TopicLimit("registration-result", "REGISTRATION_RESULT_TOPIC", result),
        dead_letter=TopicLimit("invoice-created.dead-letter", "DEAD_LETTER_TOPIC", dead_letter),
    )


def _lines(findings: list[Finding], *, refusal: bool) -> list[str]:
    return [finding.line for finding in findings if finding.refusal is refusal]


def test_a_truncated_dead_letter_at_its_largest_fits_the_figure_the_checks_require() -> None:
    # Own headers just small enough to be kept, the longest reason in 4-byte characters, the longest
    # topic name Kafka allows, the largest offset and a 1 KiB key.
    own = tuple((f"header-{i:09d}", b"x" * 240) for i in range(TRUNCATED_HEADERS_BYTES // 256))
    record = InboundRecord(
        topic="t" * 249, partition=2**31 - 1, offset=2**63 - 1, key=b"k" * 1024, value=b"v" * MiB, headers=own
    )
    reason = "\N{COLLISION SYMBOL}" * DEAD_LETTER_REASON_MAX_LENGTH
    full = dead_letter_headers(record, "cloudevents_attributes", reason, datetime(2026, 12, 5, tzinfo=UTC))
    value, headers = truncated_dead_letter(record, full)

    assert len(headers) > len(full)  # the record's own headers were kept
    assert DefaultRecordBatchBuilder.estimate_size_in_bytes(record.key, value, headers) <= (
        TRUNCATED_DEAD_LETTER_BYTES
    )


def test_the_defaults_note_only_that_dead_letters_of_the_largest_events_are_truncated() -> None:
    findings = check_size_limits(_limits(), max_event_bytes=MiB, max_request_bytes=MiB)

    assert _lines(findings, refusal=True) == []
    assert _lines(findings, refusal=False) == [
        "dead letters of events over 1036288 bytes are written truncated (the value's first 65536 "
        "bytes): KAFKA_MAX_REQUEST_BYTES is 1048576, less than MAX_EVENT_BYTES (1048576) plus 12288 "
        "for the dlq.* headers"
    ]
    assert findings[0].figures["whole_up_to_bytes"] == MiB - DEAD_LETTER_OVERHEAD_BYTES


def test_limits_that_agree_are_silent() -> None:
    limits = _limits(source=1_000_061, dead_letter=2 * MiB)

    assert check_size_limits(limits, max_event_bytes=1_000_000, max_request_bytes=2 * MiB) == []


def test_a_dead_letter_topic_too_small_for_a_truncated_dead_letter_refuses_the_start() -> None:
    findings = check_size_limits(_limits(dead_letter=50_000), max_event_bytes=MiB, max_request_bytes=MiB)

    assert _lines(findings, refusal=True) == [
        "dead-letter topic invoice-created.dead-letter (DEAD_LETTER_TOPIC) takes records of up to 50000 "
        "bytes (max.message.bytes), less than a truncated dead letter needs (94208): raise the topic's "
        "max.message.bytes to at least 94208"
    ]
    assert TRUNCATED_DEAD_LETTER_BYTES == 94208
    refusal = next(finding for finding in findings if finding.refusal)
    assert refusal.figures == {
        "topic": "invoice-created.dead-letter",
        "max_message_bytes": 50_000,
        "needed_bytes": 94_208,
    }


def test_a_dead_letter_topic_that_takes_exactly_a_truncated_dead_letter_is_enough() -> None:
    limits = _limits(dead_letter=TRUNCATED_DEAD_LETTER_BYTES)

    assert _lines(check_size_limits(limits, max_event_bytes=MiB, max_request_bytes=MiB), refusal=True) == []


def test_a_dead_letter_topic_not_created_yet_is_judged_by_the_broker_default_it_will_get() -> None:
    small_default = TopicLimit("dead", "DEAD_LETTER_TOPIC", 65_536, broker_default=True)
    limits = TopicLimits(_limits().invoice_created, _limits().registration_result, small_default)

    assert _lines(check_size_limits(limits, max_event_bytes=60_000, max_request_bytes=MiB), refusal=True) == [
        "dead-letter topic dead (DEAD_LETTER_TOPIC) takes records of up to 65536 bytes (the broker's "
        "message.max.bytes: the topic does not exist yet), less than a truncated dead letter needs "
        "(94208): create the topic with max.message.bytes of at least 94208"
    ]


def test_a_producer_request_too_small_for_a_truncated_dead_letter_refuses_the_start() -> None:
    # Settings hold KAFKA_MAX_REQUEST_BYTES at 128 KiB or more: the check stands on its own.
    findings = check_size_limits(_limits(), max_event_bytes=60_000, max_request_bytes=90_000)

    assert _lines(findings, refusal=True) == [
        "KAFKA_MAX_REQUEST_BYTES (90000) is less than a truncated dead letter to "
        "invoice-created.dead-letter needs (94208): raise it to at least 94208"
    ]


def test_a_result_topic_under_64_kib_refuses_the_start() -> None:
    findings = check_size_limits(_limits(result=50_000), max_event_bytes=MiB, max_request_bytes=2 * MiB)

    assert _lines(findings, refusal=True) == [
        "registration-result topic registration-result (REGISTRATION_RESULT_TOPIC) takes records of up "
        "to 50000 bytes (max.message.bytes), less than results need (65536): raise the topic's "
        "max.message.bytes to at least 65536"
    ]
    at_least = _limits(result=MIN_RESULT_BYTES)
    assert _lines(check_size_limits(at_least, max_event_bytes=MiB, max_request_bytes=MiB), refusal=True) == []


def test_every_refusal_is_found_at_once() -> None:
    findings = check_size_limits(
        _limits(result=1000, dead_letter=1000), max_event_bytes=MiB, max_request_bytes=1000
    )

    refused = _lines(findings, refusal=True)
    assert [line.split(" ")[0] for line in refused] == [
        "dead-letter",
        "KAFKA_MAX_REQUEST_BYTES",
        "registration-result",
    ]


def test_an_input_topic_that_takes_more_than_max_event_bytes_is_noted() -> None:
    findings = check_size_limits(
        _limits(source=3 * MiB, dead_letter=2 * MiB), max_event_bytes=512 * 1024, max_request_bytes=2 * MiB
    )

    assert _lines(findings, refusal=False) == [
        "events over 524288 bytes go to dead letters as too_large, undecoded: MAX_EVENT_BYTES is 524288, "
        "and topic invoice-created (INVOICE_CREATED_TOPIC) takes records of up to 3145728 bytes "
        "(max.message.bytes)"
    ]


def test_the_input_topic_limit_counts_a_batch_header_besides_the_record() -> None:
    def noted(source: int) -> bool:
        findings = check_size_limits(
            _limits(source=source, dead_letter=2 * MiB), max_event_bytes=500_000, max_request_bytes=2 * MiB
        )
        return any(finding.line.startswith("events over") for finding in findings)

    assert not noted(500_061)  # a record of 500000 bytes at most
    assert noted(500_062)


def test_a_dead_letter_topic_smaller_than_the_largest_dead_letter_is_noted() -> None:
    findings = check_size_limits(_limits(dead_letter=600_000), max_event_bytes=MiB, max_request_bytes=2 * MiB)

    assert _lines(findings, refusal=False) == [
        "dead letters of events over 587712 bytes are written truncated (the value's first 65536 bytes): "
        "dead-letter topic invoice-created.dead-letter (DEAD_LETTER_TOPIC) takes records of up to 600000 "
        "bytes (max.message.bytes), less than MAX_EVENT_BYTES (1048576) plus 12288 for the dlq.* headers"
    ]


def test_max_event_bytes_with_room_for_the_dlq_headers_keeps_every_dead_letter_whole() -> None:
    whole = MiB - DEAD_LETTER_OVERHEAD_BYTES
    limits = _limits(source=whole + 61)

    assert check_size_limits(limits, max_event_bytes=whole, max_request_bytes=MiB) == []
    assert len(check_size_limits(limits, max_event_bytes=whole + 1, max_request_bytes=MiB)) == 1


# check_at_start: what is logged and returned ------------------------------------------------


def _settings(**overrides: Any) -> Settings:
    return Settings(**{"kafka_request_timeout_ms": 1000, **overrides})


def _limit_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    """What the check logged (aiokafka logs its own connection errors besides)."""
    return [record.getMessage() for record in caplog.records if record.name == "service.kafka.limits"]


def _reading(limits: TopicLimits) -> Any:
    async def read(settings: Settings, security: Mapping[str, Any]) -> TopicLimits:
        return limits

    return read


async def test_notes_are_logged_once_each_with_their_figures(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(limits_module, "read_topic_limits", _reading(_limits(source=3 * MiB)))
    caplog.set_level(logging.INFO, logger="service.kafka.limits")

    refusals = await check_at_start(_settings(max_event_bytes=MiB), {})

    assert refusals == []
    # Truncation only describes what the limits do (the defaults truncate near 1 MiB): info.
    assert [record.levelno for record in caplog.records] == [logging.WARNING, logging.INFO]
    assert caplog.records[0].getMessage().startswith("events over 1048576 bytes go to dead letters")
    assert caplog.records[0].__dict__["max_message_bytes"] == 3 * MiB
    assert caplog.records[1].getMessage().startswith("dead letters of events over 1036288 bytes")


async def test_a_refusal_is_returned_and_nothing_else_is_logged(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(
        limits_module, "read_topic_limits", _reading(_limits(source=3 * MiB, dead_letter=1000))
    )
    caplog.set_level(logging.WARNING, logger="service.kafka.limits")

    refusals = await check_at_start(_settings(), {})

    assert [refusal.line.split(" ")[0] for refusal in refusals] == ["dead-letter"]
    assert caplog.records == []


async def test_a_broker_that_refuses_connections_is_one_warning_and_the_start_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="service.kafka.limits")

    refusals = await check_at_start(_settings(kafka_bootstrap_servers=f"127.0.0.1:{free_port()}"), {})

    assert refusals == []
    (line,) = _limit_lines(caplog)
    assert line.startswith("could not check topic size limits: KafkaConnectionError: Unable to bootstrap")


@pytest.fixture
async def silent_broker() -> AsyncIterator[str]:
    """A listener that takes connections and never answers: a broker hung or behind a black hole."""
    held: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0, family=socket.AF_INET)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"127.0.0.1:{port}"
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_a_broker_that_does_not_answer_is_given_the_request_timeout(
    silent_broker: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="service.kafka.limits")
    loop = asyncio.get_running_loop()
    started = loop.time()

    refusals = await check_at_start(_settings(kafka_bootstrap_servers=silent_broker), {})

    assert refusals == []
    assert loop.time() - started < 3.0
    assert _limit_lines(caplog) == ["could not check topic size limits: no answer within 1 s"]
