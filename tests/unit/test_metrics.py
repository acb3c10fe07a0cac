"""The service's own metrics (service/ops/metrics.py): what time to result measures, the build
info, and the series that exist at 0 before their first event. That the README, the dashboard and
the alerts agree with the registry is tests/ops/test_monitoring.py's business; that a running service
exports what they query, tests/integration/test_monitoring_live.py's."""

from __future__ import annotations

import copy
import importlib.metadata
import platform
import re
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from service.domain.outcomes import Outcome
from service.domain.rules import TransformDefaults
from service.events.record import InboundRecord
from service.ops.metrics import (
    AMILI_ENDPOINTS,
    AMILI_STATUS_CLASSES,
    DEAD_LETTER_RULES,
    EVENT_OUTCOMES,
    KAFKA_OPERATIONS,
    LEDGER_OPERATIONS,
    OVERFLOW_LABEL,
    REGISTRATION_OUTCOMES,
    RETRY_REASONS,
    Metrics,
    MetricsObserver,
)
from service.processing import GAVE_UP_RULE, TOO_LARGE_RULE, InvoiceProcessor, Prepared
from tests.fakes import structured_record
from tests.unit.test_engine_failures import FailingProcessor, FakeConsumer, eventually, make_engine
from tests.unit.test_processing import ACCOUNT, BACKOFF, CREDITOR, World

SERVICE = Path(__file__).resolve().parents[2] / "service"


def processor(world: World, metrics: Metrics) -> InvoiceProcessor:
    observer = MetricsObserver(metrics)
    return InvoiceProcessor(
        registration=world.registration(observer=observer),
        ledger=world.ledger,
        results=world.results,
        dead_letters=world.dead_letters,
        defaults=TransformDefaults(account=ACCOUNT, creditor=CREDITOR),
        clock=world.clock,
        backoff=BACKOFF,
        sleep=world.sleep,
        observer=observer,
    )


def taken(record: InboundRecord, seconds_ago: float) -> InboundRecord:
    """The record as the engine hands it over, taken from Kafka ``seconds_ago``."""
    return InboundRecord(
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        key=record.key,
        value=record.value,
        headers=record.headers,
        taken_at=time.monotonic() - seconds_ago,
    )


def sample(metrics: Metrics, name: str, labels: dict[str, str] | None = None) -> float | None:
    return metrics.registry.get_sample_value(name, labels or {})


async def test_time_to_result_counts_from_the_record_being_taken_not_from_the_event_time(
    sample_events: list[dict[str, Any]],
) -> None:
    """An event produced an hour ago and taken two seconds ago: its time to result is about two
    seconds; the hour shows only in the event's age at its result."""
    metrics = Metrics()
    event = copy.deepcopy(sample_events[0])
    event["time"] = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    await processor(World(), metrics).process(taken(structured_record(event), seconds_ago=2.0))

    assert sample(metrics, "registrar_results_published_total", {"outcome": "registered"}) == 1
    assert sample(metrics, "registrar_time_to_result_seconds_count") == 1
    time_to_result = sample(metrics, "registrar_time_to_result_seconds_sum")
    assert time_to_result is not None
    assert 2.0 <= time_to_result < 60
    assert sample(metrics, "registrar_event_age_at_result_seconds_count") == 1
    age = sample(metrics, "registrar_event_age_at_result_seconds_sum")
    assert age is not None
    assert 3600 <= age < 3660


async def test_a_rejected_result_counts_too_and_a_record_not_from_the_engine_has_no_time_to_result(
    sample_events: list[dict[str, Any]],
) -> None:
    metrics = Metrics()
    event = copy.deepcopy(sample_events[0])
    event["data"]["currency"] = "EUR"
    await processor(World(), metrics).process(structured_record(event))  # no taken_at

    assert sample(metrics, "registrar_results_published_total", {"outcome": "rejected"}) == 1
    assert sample(metrics, "registrar_time_to_result_seconds_count") == 0
    assert sample(metrics, "registrar_event_age_at_result_seconds_count") == 1


class Stamps(FailingProcessor):
    def __init__(self) -> None:
        super().__init__(failing=set())
        self.taken_at: list[float | None] = []

    def prepare(self, record: InboundRecord) -> Prepared:
        self.taken_at.append(record.taken_at)
        return super().prepare(record)


async def test_the_engine_stamps_each_record_with_when_it_took_it() -> None:
    processor, consumer = Stamps(), FakeConsumer()
    engine = make_engine(processor, consumer)
    before = time.monotonic()
    await engine.start()
    try:
        consumer.deliver(0, 1, 2)
        await eventually(lambda: processor.handle_calls == 3, "the three records handled")
    finally:
        await engine.stop()
    assert len(processor.taken_at) == 3
    assert all(stamp is not None and before <= stamp <= time.monotonic() for stamp in processor.taken_at)


def test_build_info_names_the_installed_version() -> None:
    metrics = Metrics()
    (family,) = [m for m in metrics.registry.collect() if m.name == "registrar_build_info"]
    (build,) = family.samples
    assert build.value == 1
    assert build.labels["version"] == importlib.metadata.version("amili-registrar")
    assert build.labels["python"] == platform.python_version()
    assert build.labels["faststream"] == importlib.metadata.version("faststream")
    assert build.labels["aiokafka"] == importlib.metadata.version("aiokafka")


def test_known_label_values_exist_at_zero_before_any_event() -> None:
    metrics = Metrics()
    expected: list[tuple[str, dict[str, str]]] = [
        *(("registrar_events_consumed_total", {"outcome": o}) for o in EVENT_OUTCOMES),
        *(("registrar_registrations_total", {"outcome": o}) for o in REGISTRATION_OUTCOMES),
        *(("registrar_results_published_total", {"outcome": o.value}) for o in Outcome),
        *(("registrar_retries_total", {"reason": r}) for r in RETRY_REASONS),
        *(("registrar_dead_letters_total", {"reason": r}) for r in DEAD_LETTER_RULES),
        *(("registrar_ledger_errors_total", {"operation": o}) for o in LEDGER_OPERATIONS),
        *(("registrar_kafka_errors_total", {"operation": o}) for o in KAFKA_OPERATIONS),
        ("registrar_processing_errors_total", {"error": OVERFLOW_LABEL}),
        ("registrar_unknown_fields_total", {"field": OVERFLOW_LABEL}),
        *(
            ("registrar_amili_request_duration_seconds_count", {"endpoint": e, "status_class": s})
            for e in AMILI_ENDPOINTS
            for s in AMILI_STATUS_CLASSES
        ),
    ]
    for name, labels in expected:
        assert sample(metrics, name, labels) == 0, (name, labels)


def _literals(pattern: str) -> set[str]:
    """The string literals the pattern's first group captures, across the service's source."""
    found: set[str] = set()
    for path in SERVICE.rglob("*.py"):
        found |= set(re.findall(pattern, path.read_text(encoding="utf-8")))
    return found


def test_the_known_label_values_cover_what_the_code_reports() -> None:
    """Read from the source: a new dead-letter rule, ledger operation, broker operation, Amili
    endpoint or retry reason must join the values created at 0 (else its alert misses the first)."""
    rules = _literals(r'EnvelopeError\(\s*"(\w+)"') - {"internal"}  # "nothing decoded": unreachable
    assert rules | {TOO_LARGE_RULE, GAVE_UP_RULE, "processing_error"} <= set(DEAD_LETTER_RULES)
    assert _literals(r'ledger_error\(\s*"(\w+)"') | _literals(r'_ledger_call\(\s*"(\w+)"') <= set(
        LEDGER_OPERATIONS
    )
    assert _literals(r'\b(?:failed|kafka_error)\(\s*"(\w+)"') <= set(KAFKA_OPERATIONS)
    assert _literals(r'_send\(\s*"(\w+)"') <= set(AMILI_ENDPOINTS)
    registration = (SERVICE / "registration.py").read_text(encoding="utf-8")
    reasons = {
        word for line in re.findall(r"reason = (.*)", registration) for word in re.findall(r'"(\w+)"', line)
    }
    assert reasons <= set(RETRY_REASONS)
    assert set(EVENT_OUTCOMES) == {o.value for o in Outcome} | {"dead_lettered"}
