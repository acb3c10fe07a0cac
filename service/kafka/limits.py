"""Size limits: the service's own (``MAX_EVENT_BYTES``, ``KAFKA_MAX_REQUEST_BYTES``) against what the
broker takes on each topic (``max.message.bytes``), checked once at start.

Settings the broker cannot honour would otherwise show only when a large event comes: a dead letter
that can be written neither whole nor truncated stalls its partition, and so does a result. Those
refuse the start; limits that merely decide what becomes of large events are noted once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import UnknownTopicOrPartitionError, for_code

from service.config import Settings
from service.kafka.link import BROKER_ERRORS
from service.kafka.publishing import TRUNCATED_HEADERS_BYTES, TRUNCATED_VALUE_BYTES
from service.kafka.startup import admin_client

log = logging.getLogger(__name__)

TOPIC_LIMIT = "max.message.bytes"
BROKER_LIMIT = "message.max.bytes"
"""The broker's default for a topic's ``max.message.bytes``: what a topic not created yet gets."""

RECORD_BATCH_HEADER_BYTES = 61
"""What a topic's limit counts besides its records: a batch's header (magic v2). A topic of the
broker's default limit (1048588) thus takes no record of more than 1 MiB, and the default
MAX_EVENT_BYTES is no note."""
DEAD_LETTER_OVERHEAD_BYTES = 12 * 1024
"""What a dead letter carries besides the record's key, value and headers: the ``dlq.*`` headers (a
reason of up to 2000 characters is up to 8000 bytes of UTF-8; then the truncation's), the batch's
and the record's framing, and room for a key of a few KiB."""
TRUNCATED_DEAD_LETTER_BYTES = TRUNCATED_VALUE_BYTES + TRUNCATED_HEADERS_BYTES + DEAD_LETTER_OVERHEAD_BYTES
"""The most a truncated dead letter takes: the dead-letter topic and the producer must take this
much, or a dead letter can be written neither whole nor truncated and its partition stalls."""
MIN_RESULT_BYTES = 64 * 1024
"""What the result topic must take at least: a result is a few KiB (its reasons and warnings are
bounded), and one the broker refused would stall its partition for good."""


@dataclass(frozen=True, slots=True)
class TopicLimit:
    """What the broker takes on one of the service's topics."""

    topic: str
    setting: str
    """The env var that names the topic (``DEAD_LETTER_TOPIC``)."""
    max_message_bytes: int
    broker_default: bool = False
    """The topic does not exist yet: it will be created with the broker's ``message.max.bytes``."""

    def described(self) -> str:
        """The topic, its env var and where its limit comes from."""
        if self.broker_default:
            source = f"the broker's {BROKER_LIMIT}: the topic does not exist yet"
        else:
            source = TOPIC_LIMIT
        return (
            f"topic {self.topic} ({self.setting}) takes records of up to {self.max_message_bytes} "
            f"bytes ({source})"
        )

    def raise_to(self, needed: int) -> str:
        """What the operator does about a limit too low."""
        if self.broker_default:
            return f"create the topic with {TOPIC_LIMIT} of at least {needed}"
        return f"raise the topic's {TOPIC_LIMIT} to at least {needed}"


@dataclass(frozen=True, slots=True)
class TopicLimits:
    invoice_created: TopicLimit
    registration_result: TopicLimit
    dead_letter: TopicLimit


@dataclass(frozen=True, slots=True)
class Finding:
    """One line for the operator: a refusal (the service must not start) or a note (logged)."""

    refusal: bool
    line: str
    figures: Mapping[str, int | str] = field(default_factory=dict)
    """The line's numbers and topic as log fields too, for queries over the logs."""
    level: int = logging.WARNING
    """How a note is logged: a warning when it may surprise, info when it only describes (the
    default limits truncate dead letters of events near 1 MiB: no warning at every start)."""


def check_size_limits(limits: TopicLimits, *, max_event_bytes: int, max_request_bytes: int) -> list[Finding]:
    """The refusals and notes of the service's size limits against the broker's (pure)."""
    findings: list[Finding] = []
    source, result, dead_letter = limits.invoice_created, limits.registration_result, limits.dead_letter
    if dead_letter.max_message_bytes < TRUNCATED_DEAD_LETTER_BYTES:
        findings.append(
            Finding(
                refusal=True,
                line=f"dead-letter {dead_letter.described()}, less than a truncated dead letter needs "
                f"({TRUNCATED_DEAD_LETTER_BYTES}): {dead_letter.raise_to(TRUNCATED_DEAD_LETTER_BYTES)}",
                figures=_figures(dead_letter, needed_bytes=TRUNCATED_DEAD_LETTER_BYTES),
            )
        )
    if max_request_bytes < TRUNCATED_DEAD_LETTER_BYTES:
        findings.append(
            Finding(
                refusal=True,
                line=f"KAFKA_MAX_REQUEST_BYTES ({max_request_bytes}) is less than a truncated dead letter "
                f"to {dead_letter.topic} needs ({TRUNCATED_DEAD_LETTER_BYTES}): raise it to at least "
                f"{TRUNCATED_DEAD_LETTER_BYTES}",
                figures={"max_request_bytes": max_request_bytes, "needed_bytes": TRUNCATED_DEAD_LETTER_BYTES},
            )
        )
    if result.max_message_bytes < MIN_RESULT_BYTES:
        findings.append(
            Finding(
                refusal=True,
                line=f"registration-result {result.described()}, less than results need "
                f"({MIN_RESULT_BYTES}): {result.raise_to(MIN_RESULT_BYTES)}",
                figures=_figures(result, needed_bytes=MIN_RESULT_BYTES),
            )
        )
    if source.max_message_bytes - RECORD_BATCH_HEADER_BYTES > max_event_bytes:
        findings.append(
            Finding(
                refusal=False,
                line=f"events over {max_event_bytes} bytes go to dead letters as too_large, undecoded: "
                f"MAX_EVENT_BYTES is {max_event_bytes}, and {source.described()}",
                figures=_figures(source, max_event_bytes=max_event_bytes),
            )
        )
    # Whichever of the producer and the topic takes less decides how large a dead letter can be.
    if max_request_bytes < dead_letter.max_message_bytes:
        tightest, tightest_bytes = f"KAFKA_MAX_REQUEST_BYTES is {max_request_bytes}", max_request_bytes
    else:
        tightest, tightest_bytes = f"dead-letter {dead_letter.described()}", dead_letter.max_message_bytes
    whole_up_to = tightest_bytes - DEAD_LETTER_OVERHEAD_BYTES
    if max_event_bytes > whole_up_to:
        findings.append(
            Finding(
                refusal=False,
                level=logging.INFO,
                line=f"dead letters of events over {whole_up_to} bytes are written truncated (the value's "
                f"first {TRUNCATED_VALUE_BYTES} bytes): {tightest}, less than MAX_EVENT_BYTES "
                f"({max_event_bytes}) plus {DEAD_LETTER_OVERHEAD_BYTES} for the dlq.* headers",
                figures={
                    **_figures(dead_letter),
                    "max_request_bytes": max_request_bytes,
                    "max_event_bytes": max_event_bytes,
                    "whole_up_to_bytes": whole_up_to,
                },
            )
        )
    return findings


def _figures(limit: TopicLimit, **more: int) -> dict[str, int | str]:
    return {"topic": limit.topic, "max_message_bytes": limit.max_message_bytes, **more}


class LimitsUnreadable(Exception):
    """The broker answered, but not with a topic's limit (an ACL refused it, say)."""


async def read_topic_limits(settings: Settings, security: Mapping[str, Any]) -> TopicLimits:
    """``max.message.bytes`` of the three topics, as the broker reports them; a topic that does not
    exist yet (a broker that creates topics on first use) gets the broker's ``message.max.bytes``.

    ``security`` is aiokafka's connection options, as the producer has them. Raises what a broker
    that cannot be reached raises (``BROKER_ERRORS``), or ``LimitsUnreadable``."""
    topics = {
        "INVOICE_CREATED_TOPIC": settings.invoice_created_topic,
        "REGISTRATION_RESULT_TOPIC": settings.registration_result_topic,
        "DEAD_LETTER_TOPIC": settings.dead_letter_topic,
    }
    admin = admin_client(settings, security)
    try:
        await admin.start()
        names = sorted(set(topics.values()))
        found = await _describe(admin, ConfigResourceType.TOPIC, names, TOPIC_LIMIT)
        broker_limit: int | None = None
        if None in found.values():
            brokers = (await admin.describe_cluster())["brokers"]
            if not brokers:
                raise LimitsUnreadable("the cluster names no broker")
            broker = str(brokers[0]["node_id"])
            broker_limit = (await _describe(admin, ConfigResourceType.BROKER, [broker], BROKER_LIMIT))[broker]
    finally:
        with contextlib.suppress(*BROKER_ERRORS):
            await admin.close()

    def limit(setting: str) -> TopicLimit:
        topic = topics[setting]
        value = found[topic]
        if value is None:
            assert broker_limit is not None
            return TopicLimit(topic, setting, broker_limit, broker_default=True)
        return TopicLimit(topic, setting, value)

    return TopicLimits(
        invoice_created=limit("INVOICE_CREATED_TOPIC"),
        registration_result=limit("REGISTRATION_RESULT_TOPIC"),
        dead_letter=limit("DEAD_LETTER_TOPIC"),
    )


async def _describe(
    admin: AIOKafkaAdminClient, kind: ConfigResourceType, names: Sequence[str], config: str
) -> dict[str, int | None]:
    """One config of each named resource; ``None`` for a topic that does not exist. The admin
    client hands back the protocol's responses: errors are codes in them, not exceptions."""
    responses = await admin.describe_configs([ConfigResource(kind, name, {config: None}) for name in names])
    values: dict[str, int | None] = {}
    for response in responses:
        for error_code, error_message, _, name, entries in response.resources:
            if error_code:
                error = for_code(error_code)
                if error is UnknownTopicOrPartitionError and kind is ConfigResourceType.TOPIC:
                    values[name] = None
                    continue
                raise LimitsUnreadable(f"{name}: {error.__name__} {error_message or ''}".strip())
            reported = {entry[0]: entry[1] for entry in entries}
            if reported.get(config) is None:
                raise LimitsUnreadable(f"{name} does not report {config}")
            values[name] = int(reported[config])
    unanswered = set(names) - values.keys()
    if unanswered:
        raise LimitsUnreadable(f"no answer for {', '.join(sorted(unanswered))}")
    return values


async def check_at_start(settings: Settings, security: Mapping[str, Any]) -> list[Finding]:
    """Read the topics' limits and check the settings against them: the refusals are returned, and
    without any each note is logged once (a warning). Limits that cannot be read within the request
    timeout are one warning, and the start goes on: a broker away at start is an outage, not a
    setting to refuse."""
    try:
        async with asyncio.timeout(settings.kafka_request_timeout_seconds):
            limits = await read_topic_limits(settings, security)
    except (*BROKER_ERRORS, LimitsUnreadable) as error:
        kind, text = error.__class__.__name__, " ".join(str(error).split())[:300]
        if not text:
            timeout = settings.kafka_request_timeout_seconds
            described = f"no answer within {timeout:g} s" if isinstance(error, TimeoutError) else kind
        elif text.startswith(kind):  # aiokafka's errors name their class in their text already
            described = text
        else:
            described = f"{kind}: {text}"
        log.warning(f"could not check topic size limits: {described}")
        return []
    findings = check_size_limits(
        limits, max_event_bytes=settings.max_event_bytes, max_request_bytes=settings.kafka_max_request_bytes
    )
    refusals = [finding for finding in findings if finding.refusal]
    if not refusals:  # a refused start ends with its one line: notes would only bury it
        for finding in findings:
            log.log(finding.level, finding.line, extra=dict(finding.figures))
    return refusals
